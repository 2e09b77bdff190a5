//! Election and sessions (SYSTEM.md §7) as a sans-IO state machine.
//!
//! The shell feeds [`ElectionInput`]s (liveliness token changes, campaign messages, its own position, timer ticks)
//! into [`Election::step`] and carries out the returned [`ElectionOutput`]s in order. Time is the `now_ms` argument;
//! the shell calls `step(Tick, ..)` at least by [`Election::next_deadline_ms`].
//!
//! Tokens are the only source of truth about who is master: `shoal/<ns>/master/<term>/<node>` (one per serving
//! master) and `shoal/<ns>/follows/<term>.<master>/<node>` (one per member of a session, the master included), which
//! the shell reports as [`ElectionInput::MasterTokenAppeared`] / [`ElectionInput::MemberAppeared`] and their `Gone`
//! counterparts.

use std::collections::{BTreeMap, BTreeSet};

use shoal_types::wire::{Candidate, ElectionMsg};
use shoal_types::{NodeId, Pos, SessionId};

/// Start-up: how long to wait for a master token before campaigning (§13).
pub const STARTUP_MASTER_WAIT_MS: u64 = 600;
/// The followed master's token must stay gone this long before it counts as lost (§13).
pub const MASTER_LOSS_DEBOUNCE_MS: u64 = 100;
/// Default campaign window (§13: 400 ms, configurable 300–500 ms).
pub const CAMPAIGN_WINDOW_MS: u64 = 400;
/// Bounds of the configurable campaign window.
pub const CAMPAIGN_WINDOW_RANGE_MS: std::ops::RangeInclusive<u64> = 300..=500;
/// After losing a campaign: how long to wait for the winner's master token (§13), doubled per consecutive failure.
pub const WINNER_WAIT_MS: u64 = 1_500;
/// Cap of the doubled winner wait, so a node with a broken view cannot drag the cluster into an election storm.
pub const WINNER_WAIT_CAP_MS: u64 = 30_000;
/// How often a node whose store cannot write looks again for a master to follow (it never campaigns meanwhile).
pub const STORAGE_FAILED_WAIT_MS: u64 = 1_000;

/// The comparison key of a candidate: `(last.session.term, last.session.master, last.idx, priority, incumbent,
/// node)`, each ascending, the greatest wins. The most up-to-date State wins first; `--force-master` and incumbency
/// only decide between equally up-to-date candidates; the node id breaks the final tie.
fn candidate_rank(c: &Candidate) -> (u64, NodeId, i64, u8, bool, NodeId) {
    (
        c.last.session.term,
        c.last.session.master,
        c.last.idx,
        c.priority,
        c.incumbent,
        c.node,
    )
}

/// The winner of a campaign: the greatest candidate under the comparison order of §7. `None` only for no candidates.
pub fn choose(candidates: &[Candidate]) -> Option<NodeId> {
    candidates.iter().max_by_key(|c| candidate_rank(c)).map(|c| c.node)
}

/// The two-masters rule of §7 step 7: among the sessions whose master token is visible, the one with more live
/// members wins; ties go to the higher term, then the higher master id (which is exactly `SessionId`'s order).
/// `sessions` yields each visible master's session with its live member count.
pub fn winning_session(sessions: impl IntoIterator<Item = (SessionId, usize)>) -> Option<SessionId> {
    sessions
        .into_iter()
        .max_by_key(|&(session, members)| (members, session))
        .map(|(session, _)| session)
}

/// Static settings of one node's election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    pub node: NodeId,
    /// 1 with `--force-master`, else 0.
    pub priority: u8,
    /// The campaign window; clamped to [`CAMPAIGN_WINDOW_RANGE_MS`].
    pub window_ms: u64,
}

impl ElectionConfig {
    pub fn new(node: NodeId) -> Self {
        ElectionConfig {
            node,
            priority: 0,
            window_ms: CAMPAIGN_WINDOW_MS,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionInput {
    /// Timer: deadlines (start-up wait, debounce, window end, winner wait) are checked here.
    Tick,
    /// A `master/<term>/<node>` token became visible (also the node's own, which is ignored unless it serves it).
    MasterTokenAppeared {
        session: SessionId,
    },
    MasterTokenGone {
        session: SessionId,
    },
    /// A `follows/<session>/<node>` token became visible.
    MemberAppeared {
        session: SessionId,
        node: NodeId,
    },
    MemberGone {
        session: SessionId,
        node: NodeId,
    },
    /// A campaign message from another node (the node's own echoes are ignored).
    Campaign {
        term: u64,
        candidate: Candidate,
    },
    /// The master of `session` answered a range query with `NotMaster` (a trigger of §7 step 2).
    RangeNotMaster {
        session: SessionId,
    },
    /// The position of the last event this node applied; kept current by the shell (cheap, no outputs).
    SelfPos(Pos),
    /// The node's store cannot write (a full disk): a master steps down, and the node neither campaigns nor joins a
    /// campaign (a term it cannot persist could be reused after a crash, and a master must commit) until
    /// [`ElectionInput::StorageRecovered`]. It goes on following whoever wins.
    StorageFailed,
    StorageRecovered,
}

/// What the shell must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionOutput {
    /// Persist `max_term_seen` before the `Publish` that follows, so a restart never reuses a term.
    PersistMaxTerm(u64),
    /// Publish on `shoal/<ns>/election`.
    Publish(ElectionMsg),
    /// This node is master and joined a campaign: keep buffering inputs but index nothing, so the position it
    /// advertised stays exact.
    FreezeIndexing,
    /// End of a freeze for a master that won: resume indexing (under the session of the `OpenSession` just before).
    Unfreeze,
    /// This node won: open session `S` (declare `up`/`cmd` subscribers and `range`/`snapshot` queryables for it,
    /// index and commit `SessionOpened { S, base: pos }`, declare the master token and its own `follows` token).
    OpenSession(SessionId),
    /// This node stops being master of the session: undeclare its master token, drop buffered inputs (producers
    /// resend). Always followed by a `Follow` or by a wait for the next master.
    StepDown(SessionId),
    /// Follow session `S`: subscribe to `s/S/down`, range-fetch from the own position (the chain check), declare the
    /// `follows/S` token in place of the previous one, renumber the outbox.
    Follow(SessionId),
}

/// Where a node stands; exposed for the shell's status and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Start-up: waiting up to `until_ms` for a master token.
    Starting { until_ms: u64 },
    /// Following `session`; `lost_since_ms` is set while its master token is gone (the debounce).
    Following {
        session: SessionId,
        lost_since_ms: Option<u64>,
    },
    /// Collecting candidates for `term` until `until_ms`. `frozen_session` is set for a master that joined.
    Campaigning {
        term: u64,
        until_ms: u64,
        candidates: BTreeMap<NodeId, Candidate>,
        frozen_session: Option<SessionId>,
    },
    /// Lost the campaign for `term`; waiting until `until_ms` for a master token with a term ≥ `term`.
    AwaitingWinner { term: u64, until_ms: u64 },
    /// Serving `session`.
    Master { session: SessionId },
}

/// One node's election state machine (§7 steps 1–7).
#[derive(Clone, Debug)]
pub struct Election {
    config: ElectionConfig,
    role: Role,
    /// The highest term seen in any campaign, token or session; its persisted copy is `persisted_max_term`.
    max_term_seen: u64,
    persisted_max_term: u64,
    pos: Pos,
    /// Consecutive campaigns lost without the winner showing up: doubles the winner wait.
    failed_campaigns: u32,
    /// Visible master tokens.
    masters: BTreeSet<SessionId>,
    /// Visible `follows` tokens by session.
    members: BTreeMap<SessionId, BTreeSet<NodeId>>,
    /// See [`ElectionInput::StorageFailed`].
    storage_failed: bool,
}

impl Election {
    /// A node at start-up: `max_term_seen` is the persisted value, `pos` the position of the loaded State.
    pub fn new(config: ElectionConfig, max_term_seen: u64, pos: Pos, now_ms: u64) -> Self {
        let config = ElectionConfig {
            window_ms: config
                .window_ms
                .clamp(*CAMPAIGN_WINDOW_RANGE_MS.start(), *CAMPAIGN_WINDOW_RANGE_MS.end()),
            ..config
        };
        Election {
            config,
            role: Role::Starting {
                until_ms: now_ms.saturating_add(STARTUP_MASTER_WAIT_MS),
            },
            max_term_seen: max_term_seen.max(pos.session.term),
            persisted_max_term: max_term_seen,
            pos,
            failed_campaigns: 0,
            masters: BTreeSet::new(),
            members: BTreeMap::new(),
            storage_failed: false,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn max_term_seen(&self) -> u64 {
        self.max_term_seen
    }

    /// The session this node serves, if master.
    pub fn master_of(&self) -> Option<SessionId> {
        match self.role {
            Role::Master { session } => Some(session),
            _ => None,
        }
    }

    /// The session this node follows, if following.
    pub fn following(&self) -> Option<SessionId> {
        match self.role {
            Role::Following { session, .. } => Some(session),
            _ => None,
        }
    }

    /// The next time a `Tick` can change anything, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        match &self.role {
            Role::Starting { until_ms } => Some(*until_ms),
            Role::Following { lost_since_ms, .. } => lost_since_ms.map(|t| t.saturating_add(MASTER_LOSS_DEBOUNCE_MS)),
            Role::Campaigning { until_ms, .. } | Role::AwaitingWinner { until_ms, .. } => Some(*until_ms),
            Role::Master { .. } => None,
        }
    }

    pub fn step(&mut self, input: ElectionInput, now_ms: u64) -> Vec<ElectionOutput> {
        let mut out = Vec::new();
        match input {
            ElectionInput::Tick => self.on_tick(now_ms, &mut out),
            ElectionInput::MasterTokenAppeared { session } => {
                self.see_term(session.term);
                self.masters.insert(session);
                self.reconsider_masters(now_ms, &mut out);
            }
            ElectionInput::MasterTokenGone { session } => {
                self.masters.remove(&session);
                self.reconsider_masters(now_ms, &mut out);
            }
            ElectionInput::MemberAppeared { session, node } => {
                self.members.entry(session).or_default().insert(node);
                self.reconsider_masters(now_ms, &mut out);
            }
            ElectionInput::MemberGone { session, node } => {
                if let Some(set) = self.members.get_mut(&session) {
                    set.remove(&node);
                    if set.is_empty() {
                        self.members.remove(&session);
                    }
                }
                self.reconsider_masters(now_ms, &mut out);
            }
            ElectionInput::Campaign { term, candidate } => self.on_campaign(term, candidate, now_ms, &mut out),
            ElectionInput::RangeNotMaster { session } => {
                if self.following() == Some(session) {
                    self.campaign(now_ms, None, &mut out);
                }
            }
            ElectionInput::SelfPos(pos) => {
                self.pos = pos;
                self.see_term(pos.session.term);
            }
            ElectionInput::StorageFailed => self.on_storage_failed(now_ms, &mut out),
            ElectionInput::StorageRecovered => self.storage_failed = false,
        }
        out
    }

    /// Whether the node stands aside from elections because its store cannot write.
    pub fn storage_failed(&self) -> bool {
        self.storage_failed
    }

    fn on_storage_failed(&mut self, now_ms: u64, out: &mut Vec<ElectionOutput>) {
        self.storage_failed = true;
        match self.role.clone() {
            Role::Following { .. } => return,
            Role::Master { session } => out.push(ElectionOutput::StepDown(session)),
            Role::Campaigning {
                frozen_session: Some(old),
                ..
            } => out.push(ElectionOutput::StepDown(old)),
            Role::Campaigning { .. } | Role::AwaitingWinner { .. } | Role::Starting { .. } => {}
        }
        self.stand_aside(now_ms);
        // Another master may already be visible.
        self.reconsider_masters(now_ms, out);
    }

    /// Waits for any master (term 0: whichever session wins) instead of campaigning, looking again every
    /// [`STORAGE_FAILED_WAIT_MS`].
    fn stand_aside(&mut self, now_ms: u64) {
        self.role = Role::AwaitingWinner {
            term: 0,
            until_ms: now_ms.saturating_add(STORAGE_FAILED_WAIT_MS),
        };
    }

    fn see_term(&mut self, term: u64) {
        self.max_term_seen = self.max_term_seen.max(term);
    }

    fn own_candidate(&self) -> Candidate {
        let incumbent = match self.role {
            Role::Master { session } => self.pos.session == session,
            Role::Campaigning { frozen_session, .. } => frozen_session == Some(self.pos.session),
            _ => false,
        };
        Candidate {
            node: self.config.node,
            last: self.pos,
            priority: self.config.priority,
            incumbent,
        }
    }

    /// The session that should be served now by the step-7 rule, among the visible master tokens (plus this node's
    /// own session while it serves one). A token naming this node but not served by it is a leftover of its previous
    /// life and is never followed.
    fn best_visible_master(&self) -> Option<SessionId> {
        let own = self.master_of();
        let visible = self
            .masters
            .iter()
            .copied()
            .filter(|s| s.master != self.config.node || Some(*s) == own)
            .chain(own);
        winning_session(visible.map(|s| (s, self.members.get(&s).map_or(0, BTreeSet::len))))
    }

    /// Re-evaluates who to follow after any token change (§7 steps 1, 2, 5, 6, 7).
    fn reconsider_masters(&mut self, now_ms: u64, out: &mut Vec<ElectionOutput>) {
        let best = self.best_visible_master();
        match self.role.clone() {
            Role::Starting { .. } => {
                if let Some(session) = best {
                    self.follow(session, out);
                }
            }
            Role::Following { session, lost_since_ms } => match best {
                Some(best) if best != session => self.follow(best, out),
                Some(_) => {
                    self.role = Role::Following {
                        session,
                        lost_since_ms: None,
                    }
                }
                None => {
                    self.role = Role::Following {
                        session,
                        lost_since_ms: lost_since_ms.or(Some(now_ms)),
                    }
                }
            },
            Role::Campaigning {
                term, frozen_session, ..
            } => {
                // A master token of this term or a later one is an outcome we did not see the campaign of: follow.
                if let Some(best) = best.filter(|b| b.term >= term) {
                    if let Some(old) = frozen_session {
                        out.push(ElectionOutput::StepDown(old));
                    }
                    self.follow(best, out);
                }
            }
            Role::AwaitingWinner { term, .. } => {
                if let Some(best) = best.filter(|b| b.term >= term) {
                    self.follow(best, out);
                }
            }
            Role::Master { session } => {
                if let Some(best) = best.filter(|b| *b != session) {
                    out.push(ElectionOutput::StepDown(session));
                    self.follow(best, out);
                }
            }
        }
    }

    fn follow(&mut self, session: SessionId, out: &mut Vec<ElectionOutput>) {
        self.see_term(session.term);
        self.failed_campaigns = 0;
        self.role = Role::Following {
            session,
            lost_since_ms: None,
        };
        out.push(ElectionOutput::Follow(session));
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<ElectionOutput>) {
        match self.role.clone() {
            Role::Starting { until_ms } if now_ms >= until_ms => self.campaign(now_ms, None, out),
            Role::Following {
                lost_since_ms: Some(since),
                ..
            } if now_ms >= since.saturating_add(MASTER_LOSS_DEBOUNCE_MS) => self.campaign(now_ms, None, out),
            Role::Campaigning {
                term,
                until_ms,
                candidates,
                frozen_session,
            } if now_ms >= until_ms => self.decide(term, &candidates, frozen_session, now_ms, out),
            Role::AwaitingWinner { until_ms, .. } if now_ms >= until_ms => {
                if !self.storage_failed {
                    self.failed_campaigns = self.failed_campaigns.saturating_add(1);
                }
                self.campaign(now_ms, None, out);
            }
            _ => {}
        }
    }

    /// §7 step 3: a new campaign with `term = max_term_seen + 1`. `frozen_session` is carried by a master.
    fn campaign(&mut self, now_ms: u64, frozen_session: Option<SessionId>, out: &mut Vec<ElectionOutput>) {
        if self.storage_failed {
            self.stand_aside(now_ms);
            return;
        }
        let term = self.max_term_seen.saturating_add(1);
        self.open_window(term, frozen_session, now_ms, out);
    }

    /// Publishes this node's candidate for `term` and collects candidates until the window ends.
    fn open_window(
        &mut self,
        term: u64,
        frozen_session: Option<SessionId>,
        now_ms: u64,
        out: &mut Vec<ElectionOutput>,
    ) {
        self.see_term(term);
        if self.max_term_seen > self.persisted_max_term {
            self.persisted_max_term = self.max_term_seen;
            out.push(ElectionOutput::PersistMaxTerm(self.max_term_seen));
        }
        // The candidate is computed before the role changes so a master still advertises itself as incumbent.
        let own = self.own_candidate();
        out.push(ElectionOutput::Publish(ElectionMsg::Campaign { term, candidate: own }));
        self.role = Role::Campaigning {
            term,
            until_ms: now_ms.saturating_add(self.config.window_ms),
            candidates: BTreeMap::from([(own.node, own)]),
            frozen_session,
        };
    }

    /// §7 step 4.
    fn on_campaign(&mut self, term: u64, candidate: Candidate, now_ms: u64, out: &mut Vec<ElectionOutput>) {
        if candidate.node == self.config.node {
            return;
        }
        if self.storage_failed {
            // Not a voter while it cannot persist the term; the others elect among themselves.
            self.see_term(term);
            return;
        }
        if let Role::Campaigning {
            term: current,
            candidates,
            ..
        } = &mut self.role
            && term == *current
        {
            candidates.insert(candidate.node, candidate);
            return;
        }
        // Anything at or below a term already seen is a decided (or abandoned) term.
        if term <= self.max_term_seen {
            return;
        }
        let frozen_session = match &self.role {
            Role::Master { session } => {
                out.push(ElectionOutput::FreezeIndexing);
                Some(*session)
            }
            // A higher term abandons the lower window; a frozen master stays frozen.
            Role::Campaigning { frozen_session, .. } => *frozen_session,
            _ => None,
        };
        self.open_window(term, frozen_session, now_ms, out);
        if let Role::Campaigning { candidates, .. } = &mut self.role {
            candidates.insert(candidate.node, candidate);
        }
    }

    /// §7 step 5.
    fn decide(
        &mut self,
        term: u64,
        candidates: &BTreeMap<NodeId, Candidate>,
        frozen_session: Option<SessionId>,
        now_ms: u64,
        out: &mut Vec<ElectionOutput>,
    ) {
        let all: Vec<Candidate> = candidates.values().copied().collect();
        if choose(&all) == Some(self.config.node) {
            let session = SessionId {
                term,
                master: self.config.node,
            };
            self.failed_campaigns = 0;
            self.role = Role::Master { session };
            out.push(ElectionOutput::OpenSession(session));
            if frozen_session.is_some() {
                out.push(ElectionOutput::Unfreeze);
            }
            return;
        }
        if let Some(old) = frozen_session {
            out.push(ElectionOutput::StepDown(old));
        }
        let wait = WINNER_WAIT_MS
            .saturating_mul(1u64 << self.failed_campaigns.min(16))
            .min(WINNER_WAIT_CAP_MS);
        self.role = Role::AwaitingWinner {
            term,
            until_ms: now_ms.saturating_add(wait),
        };
        // The winner's token may already be visible.
        self.reconsider_masters(now_ms, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    fn session(term: u64, master: u8) -> SessionId {
        SessionId {
            term,
            master: node(master),
        }
    }

    fn cand(n: u8, term: u64, master: u8, idx: i64) -> Candidate {
        Candidate {
            node: node(n),
            last: Pos {
                idx,
                session: session(term, master),
            },
            priority: 0,
            incumbent: false,
        }
    }

    #[test]
    fn choose_follows_the_comparison_order() {
        assert_eq!(choose(&[]), None);
        // Term of the last applied event dominates the idx.
        assert_eq!(
            choose(&[cand(0x10, 2, 0x10, 5), cand(0x20, 1, 0x20, 99)]),
            Some(node(0x10))
        );
        // Then the master id of that session.
        assert_eq!(
            choose(&[cand(0x10, 2, 0x30, 5), cand(0x20, 2, 0x40, 1)]),
            Some(node(0x20))
        );
        // Then idx.
        assert_eq!(
            choose(&[cand(0x10, 2, 0x30, 5), cand(0x20, 2, 0x30, 4)]),
            Some(node(0x10))
        );
        // Then priority, then incumbency, then node id.
        let mut forced = cand(0x10, 2, 0x30, 5);
        forced.priority = 1;
        let mut incumbent = cand(0x20, 2, 0x30, 5);
        incumbent.incumbent = true;
        let plain = cand(0x30, 2, 0x30, 5);
        assert_eq!(choose(&[forced, incumbent, plain]), Some(node(0x10)));
        assert_eq!(choose(&[incumbent, plain]), Some(node(0x20)));
        assert_eq!(choose(&[cand(0x10, 2, 0x30, 5), plain]), Some(node(0x30)));
    }

    #[test]
    fn two_masters_resolved_by_members_then_term_then_master() {
        assert_eq!(winning_session([]), None);
        assert_eq!(
            winning_session([(session(5, 1), 3), (session(7, 2), 1)]),
            Some(session(5, 1))
        );
        assert_eq!(
            winning_session([(session(5, 9), 2), (session(7, 2), 2)]),
            Some(session(7, 2))
        );
        assert_eq!(
            winning_session([(session(7, 9), 2), (session(7, 2), 2)]),
            Some(session(7, 9))
        );
    }

    fn publishes_campaign(out: &[ElectionOutput]) -> Option<u64> {
        out.iter().find_map(|o| match o {
            ElectionOutput::Publish(ElectionMsg::Campaign { term, .. }) => Some(*term),
            _ => None,
        })
    }

    #[test]
    fn lone_node_campaigns_after_startup_wait_and_wins() {
        let me = node(0x10);
        let mut e = Election::new(ElectionConfig::new(me), 4, Pos::EMPTY, 0);
        assert!(e.step(ElectionInput::Tick, STARTUP_MASTER_WAIT_MS - 1).is_empty());
        let out = e.step(ElectionInput::Tick, STARTUP_MASTER_WAIT_MS);
        assert_eq!(
            out.first(),
            Some(&ElectionOutput::PersistMaxTerm(5)),
            "persist before publish"
        );
        assert_eq!(publishes_campaign(&out), Some(5));
        assert!(
            e.step(ElectionInput::Tick, STARTUP_MASTER_WAIT_MS + CAMPAIGN_WINDOW_MS - 1)
                .is_empty()
        );
        let out = e.step(ElectionInput::Tick, STARTUP_MASTER_WAIT_MS + CAMPAIGN_WINDOW_MS);
        assert_eq!(out, vec![ElectionOutput::OpenSession(session(5, 0x10))]);
        assert_eq!(e.master_of(), Some(session(5, 0x10)));
    }

    #[test]
    fn startup_follows_a_visible_master() {
        let mut e = Election::new(ElectionConfig::new(node(0x10)), 0, Pos::EMPTY, 0);
        let out = e.step(
            ElectionInput::MasterTokenAppeared {
                session: session(3, 0x20),
            },
            10,
        );
        assert_eq!(out, vec![ElectionOutput::Follow(session(3, 0x20))]);
        assert_eq!(e.max_term_seen(), 3);
        // Its own stale token from a previous life is not followed.
        let mut e = Election::new(ElectionConfig::new(node(0x10)), 3, Pos::EMPTY, 0);
        assert!(
            e.step(
                ElectionInput::MasterTokenAppeared {
                    session: session(3, 0x10)
                },
                10
            )
            .is_empty()
        );
    }

    #[test]
    fn master_loss_is_debounced() {
        let mut e = Election::new(ElectionConfig::new(node(0x10)), 0, Pos::EMPTY, 0);
        let s = session(3, 0x20);
        e.step(ElectionInput::MasterTokenAppeared { session: s }, 0);
        assert!(e.step(ElectionInput::MasterTokenGone { session: s }, 1_000).is_empty());
        // Reappearing within the debounce cancels the loss.
        assert!(e.step(ElectionInput::Tick, 1_050).is_empty());
        assert!(
            e.step(ElectionInput::MasterTokenAppeared { session: s }, 1_060)
                .is_empty()
        );
        assert!(e.step(ElectionInput::Tick, 1_200).is_empty());
        e.step(ElectionInput::MasterTokenGone { session: s }, 2_000);
        assert!(e.step(ElectionInput::Tick, 2_099).is_empty());
        let out = e.step(ElectionInput::Tick, 2_100);
        assert_eq!(publishes_campaign(&out), Some(4));
    }

    #[test]
    fn higher_term_campaign_is_joined_and_freezes_a_master() {
        let me = node(0x30);
        let mut e = Election::new(ElectionConfig::new(me), 0, Pos::EMPTY, 0);
        e.step(ElectionInput::Tick, 600);
        e.step(ElectionInput::Tick, 1_000);
        let mine = session(1, 0x30);
        assert_eq!(e.master_of(), Some(mine));
        e.step(ElectionInput::SelfPos(Pos { idx: 10, session: mine }), 1_001);
        // A lower or equal term is ignored.
        assert!(
            e.step(
                ElectionInput::Campaign {
                    term: 1,
                    candidate: cand(0x20, 0, 0, -1)
                },
                1_002
            )
            .is_empty()
        );
        let out = e.step(
            ElectionInput::Campaign {
                term: 2,
                candidate: cand(0x20, 0, 0, -1),
            },
            1_010,
        );
        assert_eq!(out.first(), Some(&ElectionOutput::FreezeIndexing));
        assert_eq!(out.get(1), Some(&ElectionOutput::PersistMaxTerm(2)));
        match out.get(2) {
            Some(ElectionOutput::Publish(ElectionMsg::Campaign { term: 2, candidate })) => {
                assert!(candidate.incumbent);
                assert_eq!(candidate.last.idx, 10);
            }
            other => panic!("expected own candidate, got {other:?}"),
        }
        // The master is more up to date, so it wins and resumes under the new session.
        let out = e.step(ElectionInput::Tick, 1_410);
        assert_eq!(
            out,
            vec![ElectionOutput::OpenSession(session(2, 0x30)), ElectionOutput::Unfreeze]
        );
    }

    #[test]
    fn frozen_master_that_loses_steps_down() {
        let me = node(0x30);
        let mut e = Election::new(ElectionConfig::new(me), 0, Pos::EMPTY, 0);
        e.step(ElectionInput::Tick, 600);
        e.step(ElectionInput::Tick, 1_000);
        let better = cand(0x20, 9, 0x20, 100);
        e.step(
            ElectionInput::Campaign {
                term: 2,
                candidate: better,
            },
            1_010,
        );
        let out = e.step(ElectionInput::Tick, 1_410);
        assert_eq!(out, vec![ElectionOutput::StepDown(session(1, 0x30))]);
        let out = e.step(
            ElectionInput::MasterTokenAppeared {
                session: session(2, 0x20),
            },
            1_500,
        );
        assert_eq!(out, vec![ElectionOutput::Follow(session(2, 0x20))]);
    }

    #[test]
    fn loser_waits_for_winner_then_recampaigns_with_doubling_wait() {
        let mut e = Election::new(ElectionConfig::new(node(0x10)), 0, Pos::EMPTY, 0);
        let better = cand(0x20, 9, 0x20, 100);
        let mut now = 600;
        let out = e.step(ElectionInput::Tick, now);
        let mut term = publishes_campaign(&out).unwrap_or_default();
        let mut wait = WINNER_WAIT_MS;
        for _ in 0..8 {
            e.step(
                ElectionInput::Campaign {
                    term,
                    candidate: better,
                },
                now + 1,
            );
            now += CAMPAIGN_WINDOW_MS;
            assert!(e.step(ElectionInput::Tick, now).is_empty(), "lost, waits");
            assert!(e.step(ElectionInput::Tick, now + wait - 1).is_empty());
            now += wait;
            let out = e.step(ElectionInput::Tick, now);
            assert_eq!(publishes_campaign(&out), Some(term + 1));
            term += 1;
            wait = (wait * 2).min(WINNER_WAIT_CAP_MS);
        }
        assert_eq!(wait, WINNER_WAIT_CAP_MS);
        // The winner's token ends the wait.
        e.step(
            ElectionInput::Campaign {
                term,
                candidate: better,
            },
            now + 1,
        );
        e.step(ElectionInput::Tick, now + CAMPAIGN_WINDOW_MS);
        let out = e.step(
            ElectionInput::MasterTokenAppeared {
                session: session(term, 0x20),
            },
            now + 500,
        );
        assert_eq!(out, vec![ElectionOutput::Follow(session(term, 0x20))]);
    }

    #[test]
    fn higher_term_abandons_window_and_stale_terms_are_ignored() {
        let mut e = Election::new(ElectionConfig::new(node(0x40)), 0, Pos::EMPTY, 0);
        e.step(ElectionInput::Tick, 600); // campaigns for term 1
        let out = e.step(
            ElectionInput::Campaign {
                term: 3,
                candidate: cand(0x10, 0, 0, -1),
            },
            700,
        );
        assert_eq!(publishes_campaign(&out), Some(3));
        assert!(matches!(
            e.role(),
            Role::Campaigning {
                term: 3,
                until_ms: 1_100,
                ..
            }
        ));
        assert!(
            e.step(
                ElectionInput::Campaign {
                    term: 1,
                    candidate: cand(0x20, 0, 0, -1)
                },
                710
            )
            .is_empty()
        );
        // Node 0x40 has the greatest id among equal candidates.
        let out = e.step(ElectionInput::Tick, 1_100);
        assert_eq!(out, vec![ElectionOutput::OpenSession(session(3, 0x40))]);
        // Term 3 is decided now.
        assert!(
            e.step(
                ElectionInput::Campaign {
                    term: 3,
                    candidate: cand(0x50, 0, 0, -1)
                },
                1_200
            )
            .is_empty()
        );
    }

    #[test]
    fn master_with_fewer_members_steps_down() {
        let me = node(0x30);
        let mut e = Election::new(ElectionConfig::new(me), 0, Pos::EMPTY, 0);
        e.step(ElectionInput::Tick, 600);
        e.step(ElectionInput::Tick, 1_000);
        let mine = session(1, 0x30);
        e.step(
            ElectionInput::MemberAppeared {
                session: mine,
                node: me,
            },
            1_001,
        );
        let other = session(1, 0x20);
        e.step(
            ElectionInput::MemberAppeared {
                session: other,
                node: node(0x20),
            },
            1_002,
        );
        // Equal members, equal term: the higher master id (this node) keeps it.
        assert!(
            e.step(ElectionInput::MasterTokenAppeared { session: other }, 1_003)
                .is_empty()
        );
        let out = e.step(
            ElectionInput::MemberAppeared {
                session: other,
                node: node(0x21),
            },
            1_004,
        );
        assert_eq!(out, vec![ElectionOutput::StepDown(mine), ElectionOutput::Follow(other)]);
    }

    #[test]
    fn not_master_reply_triggers_a_campaign() {
        let mut e = Election::new(ElectionConfig::new(node(0x10)), 0, Pos::EMPTY, 0);
        let s = session(3, 0x20);
        e.step(ElectionInput::MasterTokenAppeared { session: s }, 0);
        assert!(
            e.step(
                ElectionInput::RangeNotMaster {
                    session: session(2, 0x20)
                },
                5
            )
            .is_empty()
        );
        let out = e.step(ElectionInput::RangeNotMaster { session: s }, 5);
        assert_eq!(publishes_campaign(&out), Some(4));
    }
}
