//! One node's whole control plane as a single sans-IO state machine: the election, the follower, the master's
//! indexer, the outbox, the master's liveness loop (§8) and the re-assertion of the node's own facts (§10.2 rule 9),
//! wired together the one way they must be. The shell (`shoal-cluster`) feeds it what zenoh delivers and carries out
//! what it returns; the deterministic simulation (`tests/simulation.rs`) drives the very same type over a simulated
//! network, so the code the simulation checks is the code a real node runs.
//!
//! Range and snapshot queries addressed to this node as master are answered by the shell, which owns the replica
//! log; [`NodeCore::master_of`] says whether to answer.

use std::collections::{BTreeMap, BTreeSet};

use shoal_types::command::{Command, CommandEnvelope, RejectReason};
use shoal_types::ids::CommandId;
use shoal_types::model::NodeFact;
use shoal_types::wire::{DownMsg, ElectionMsg, RangeReply, RangeRequest, UpMsg};
use shoal_types::{Event, IndexedEvent, NodeId, Origin, Pos, SessionId, State, TaskProgress};

use crate::election::{Election, ElectionConfig, ElectionInput, ElectionOutput};
use crate::follower::{Follower, FollowerInput, FollowerLimits, FollowerOutput};
use crate::indexer::{Indexer, IndexerOutput};
use crate::master::{CommandLru, DecideCtx, SeededIds, decide_command, deduplicated_by_state, plan};
use crate::outbox::Outbox;
use crate::placement::PlacementConfig;

/// The master publishes `Head` when it has published nothing else for this long (§5.4).
pub const HEAD_EVERY_MS: u64 = 500;
/// A node whose token has been gone this long is timed out (§8).
pub const NODE_LOSS_DEBOUNCE_MS: u64 = 500;
/// A new master waits this long before timing nodes out, so its view of the tokens is complete (§8, §13).
pub const MASTER_LIVENESS_GRACE_MS: u64 = 2_000;
/// At most this many liveness decisions are indexed per tick.
pub const LIVENESS_DECISIONS_PER_TICK: usize = 1_000;
/// The master's plan loop runs when State changed since its last run, and at least this often for its timed
/// conditions (§8's 1 s tick): not on every 20 ms turn of the node loop, where it would rescan every deployment,
/// instance and task for nothing.
pub const PLAN_EVERY_MS: u64 = 1_000;
/// A fact is re-asserted at most this often (§10.2 rule 9, §13).
pub const REASSERT_EVERY_MS: u64 = 2_000;

/// What the node core needs to know about itself.
#[derive(Clone, Copy)]
pub struct NodeConfig {
    pub node: NodeId,
    /// Random per process start (§2.2 `Origin.boot`); also seeds the outbox's resend jitter.
    pub boot: u64,
    /// 1 with `--force-master`.
    pub priority: u8,
    pub window_ms: u64,
    /// Keys the instances' data-plane tokens (§10.4); the shell draws it from the OS. `new` derives it from `boot`
    /// (deterministic tests and simulations).
    pub token_secret: [u8; 32],
}

impl NodeConfig {
    pub fn new(node: NodeId, boot: u64) -> Self {
        NodeConfig {
            node,
            boot,
            priority: 0,
            window_ms: crate::election::CAMPAIGN_WINDOW_MS,
            token_secret: {
                let mut secret = [0u8; 32];
                secret[..8].copy_from_slice(&boot.to_le_bytes());
                secret
            },
        }
    }
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token secret.
        f.debug_struct("NodeConfig")
            .field("node", &self.node)
            .field("boot", &self.boot)
            .field("priority", &self.priority)
            .field("window_ms", &self.window_ms)
            .finish_non_exhaustive()
    }
}

/// Everything that can happen to a node, as the shell observes it.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeInput {
    /// Timer; the shell calls it at [`NodeCore::next_deadline_ms`] or at least every 50 ms.
    Tick,
    /// From `shoal/<ns>/election`.
    Campaign(ElectionMsg),
    /// From `s/<session>/up` (only delivered to the session's master by routing; checked again here).
    Up {
        session: SessionId,
        msg: UpMsg,
    },
    /// From `s/<session>/down`.
    Down {
        session: SessionId,
        msg: DownMsg,
    },
    /// `Transient::Acked` from the master of `session`.
    Acked {
        session: SessionId,
        origin: Origin,
        through_seq: u64,
    },
    /// One reply of the range query sent with `after` to the master of `session`, in arrival order.
    Range {
        session: SessionId,
        after: Pos,
        reply: RangeReply,
    },
    /// The snapshot requested from the master of `session`, verified and decoded by the shell; `None`: the query
    /// failed (timeout, bad hash, not master, ...).
    Snapshot {
        session: SessionId,
        state: Option<Box<State>>,
    },
    MasterTokenAppeared(SessionId),
    MasterTokenGone(SessionId),
    MemberAppeared {
        session: SessionId,
        node: NodeId,
    },
    MemberGone {
        session: SessionId,
        node: NodeId,
    },
    /// A `node/<id>` liveliness token (every node's, this one's included).
    NodeTokenAppeared(NodeId),
    NodeTokenGone(NodeId),
    /// The facts this node currently holds true about itself (the worker's latest sample). Each one that State does
    /// not hold is asserted, and re-asserted while State differs.
    Facts(Vec<NodeFact>),
    /// Any other event this node produces (the worker's runner statuses, task updates, ...).
    Produce(Event),
    /// From `s/<session>/cmd` (or in-process when this node is the master): decided if this node serves
    /// `envelope.session`, dropped otherwise (the sender resends to whoever is master).
    Command(Box<CommandEnvelope>),
    /// The store failed to write (a full disk): a master steps down, no campaign is started or joined, and the
    /// node keeps following (its State in memory stays right; the shell keeps what it could not write). `lost`: the
    /// master's batch that failed to commit; this node's own events in it go back to its outbox for the next
    /// master (other producers were not acknowledged and resend theirs; the master's decisions are made again).
    StorageFailed {
        /// The store's error, which State then holds for this node (no new placement comes to it).
        error: String,
        lost: Vec<IndexedEvent>,
    },
    /// The store writes again (the shell's probe succeeded and the store reopened).
    StorageRecovered,
}

/// A message for the network.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// On `shoal/<ns>/election`.
    Campaign(ElectionMsg),
    /// On `s/<session>/up`.
    Up(SessionId, Box<UpMsg>),
    /// On `s/<session>/down` (`Head` only; events go out as [`NodeOutput::Indexed`] after their commit).
    Down(SessionId, DownMsg),
    /// `Transient::Acked` on `t/<to>/ctl`.
    Acked {
        to: NodeId,
        session: SessionId,
        origin: Origin,
        through_seq: u64,
    },
    /// `Transient::CommandRejected` on `t/<to>/ctl` (in-process when `to` is this node).
    Rejected {
        to: NodeId,
        session: SessionId,
        command_id: CommandId,
        reason: RejectReason,
    },
}

/// What the shell must do, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum NodeOutput {
    /// Persist before carrying out anything after it.
    PersistMaxTerm(u64),
    /// Send after the commit of every `Indexed` output returned before it (a master never acknowledges or
    /// announces what it could still lose).
    Send(Outgoing),
    /// Master: indexed and applied to [`NodeCore::state`]; commit with fsync (group commit), then publish it on
    /// `s/<event.session>/down`.
    Indexed(Box<IndexedEvent>),
    /// Follower: applied to [`NodeCore::state`]; append to the replica log (no fsync).
    Applied(Box<IndexedEvent>),
    /// Follower: State was replaced by this snapshot; install it in the store. Events drained from the buffer on
    /// top of it follow as `Applied`.
    Installed(Box<State>),
    /// Query `s/<session>/range` with `request`; deliver the replies as [`NodeInput::Range`].
    FetchRange { session: SessionId, request: RangeRequest },
    /// Query `s/<session>/snapshot`; deliver the outcome as [`NodeInput::Snapshot`].
    RequestSnapshot { session: SessionId },
    /// Informational: the role changed (for logs and status).
    Role(RoleChange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleChange {
    Opened(SessionId),
    SteppedDown(SessionId),
    Following(SessionId),
}

/// The liveliness tokens this node must hold now (beyond its `node/<id>` token); the shell declares and undeclares
/// to match.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    pub master: Option<SessionId>,
    pub follows: Option<SessionId>,
}

/// One node's control plane.
#[derive(Clone, Debug)]
pub struct NodeCore {
    config: NodeConfig,
    origin: Origin,
    state: State,
    election: Election,
    follower: Follower,
    indexer: Option<Indexer>,
    outbox: Outbox,
    tokens: Tokens,
    /// When this node last published anything on `down` as master.
    last_published_ms: u64,
    /// When this node's current session opened (the liveness grace runs from it).
    master_since_ms: u64,
    /// The session a snapshot was requested from, awaiting its answer.
    snapshot_from: Option<SessionId>,
    /// Visible `node/<id>` tokens.
    live: BTreeSet<NodeId>,
    /// Nodes in State whose token is gone, since when (master only).
    absent_since: BTreeMap<NodeId, u64>,
    /// The facts this node holds true, by kind, with when each was last asserted.
    facts: BTreeMap<u8, (NodeFact, Option<u64>)>,
    /// The snapshot being handed to the follower, so that `Installed` can carry the State itself.
    installing: Option<Box<State>>,
    /// The followed session in which this node was last caught up (ready is sticky within it).
    ready_in: Option<SessionId>,
    /// Fresh ids for what the master creates.
    ids: SeededIds,
    /// Recent command ids and how each was answered, for commands State does not deduplicate (§5.2 step 6).
    commands_seen: CommandLru,
    placement: PlacementConfig,
    /// The State position and time of the plan loop's last run.
    planned: Option<(Pos, u64)>,
}

impl NodeCore {
    /// A node at start-up with the State its store recovered and the persisted `max_term_seen`.
    pub fn new(config: NodeConfig, state: State, max_term_seen: u64, now_ms: u64) -> Self {
        let origin = Origin {
            node: config.node,
            boot: config.boot,
        };
        let election_config = ElectionConfig {
            node: config.node,
            priority: config.priority,
            window_ms: config.window_ms,
        };
        NodeCore {
            config,
            origin,
            election: Election::new(election_config, max_term_seen, state.pos, now_ms),
            state,
            follower: Follower::new(FollowerLimits::node()),
            indexer: None,
            outbox: Outbox::new(origin, config.boot),
            tokens: Tokens::default(),
            last_published_ms: now_ms,
            master_since_ms: now_ms,
            snapshot_from: None,
            live: BTreeSet::new(),
            absent_since: BTreeMap::new(),
            facts: BTreeMap::new(),
            installing: None,
            ready_in: None,
            ids: SeededIds::with_secret(
                config.boot ^ u64::from_le_bytes(id_prefix(config.node)),
                config.token_secret,
            ),
            commands_seen: CommandLru::default(),
            placement: PlacementConfig::default(),
            planned: None,
        }
    }

    /// How placement budgets memory (tests shrink the per-layer KV budget to fit small machines).
    pub fn set_placement(&mut self, placement: PlacementConfig) {
        self.placement = placement;
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The node's current State (the master's includes indexed events not yet committed).
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn election(&self) -> &Election {
        &self.election
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub fn tokens(&self) -> Tokens {
        self.tokens
    }

    /// The session this node serves as master.
    /// Whether the store cannot write (see [`NodeInput::StorageFailed`]).
    pub fn storage_failed(&self) -> bool {
        self.election.storage_failed()
    }

    pub fn master_of(&self) -> Option<SessionId> {
        self.election.master_of()
    }

    /// The session this node follows.
    pub fn following(&self) -> Option<SessionId> {
        self.election.following()
    }

    /// §6 step 6: the master is ready; a follower once it is on its master's chain and at or past every idx seen.
    /// Then it stays ready while it stays on that chain: a newer idx announced by the master is the normal tail, not a
    /// reason to answer 503 for the 50 ms it takes to arrive.
    pub fn ready(&self) -> bool {
        if self.master_of().is_some() {
            return true;
        }
        let Some(session) = self.following() else {
            return false;
        };
        self.follower.on_chain()
            && self.snapshot_from.is_none()
            && (self.ready_in == Some(session) || self.follower.caught_up(&self.state))
    }

    /// The next time a `Tick` has work, if sooner than the shell's regular tick.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        [self.election.next_deadline_ms(), self.outbox.next_due_ms()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn step(&mut self, input: NodeInput, now_ms: u64) -> Vec<NodeOutput> {
        let mut out = Vec::new();
        match input {
            NodeInput::Tick => self.tick(now_ms, &mut out),
            NodeInput::Campaign(ElectionMsg::Campaign { term, candidate }) => {
                if candidate.node != self.config.node {
                    self.drive_election(ElectionInput::Campaign { term, candidate }, now_ms, &mut out);
                }
            }
            NodeInput::Up { session, msg } => self.deliver_up(session, msg, now_ms, &mut out),
            NodeInput::Down { session, msg } => {
                if self.following() == Some(session) {
                    self.follower(FollowerInput::Down(msg), now_ms, &mut out);
                }
            }
            NodeInput::Acked {
                session,
                origin,
                through_seq,
            } => self.outbox.on_acked(session, origin, through_seq),
            NodeInput::Range { session, after, reply } => {
                if self.following() == Some(session) {
                    self.follower(FollowerInput::Range { after, reply }, now_ms, &mut out);
                }
            }
            NodeInput::Snapshot { session, state } => {
                if self.following() == Some(session) && self.snapshot_from == Some(session) {
                    self.snapshot_from = None;
                    let input = match state {
                        Some(state) => {
                            self.installing = Some(state.clone());
                            FollowerInput::Snapshot(state)
                        }
                        None => FollowerInput::SnapshotFailed,
                    };
                    self.follower(input, now_ms, &mut out);
                    self.installing = None;
                }
            }
            NodeInput::MasterTokenAppeared(session) => {
                self.drive_election(ElectionInput::MasterTokenAppeared { session }, now_ms, &mut out)
            }
            NodeInput::MasterTokenGone(session) => {
                self.drive_election(ElectionInput::MasterTokenGone { session }, now_ms, &mut out)
            }
            NodeInput::MemberAppeared { session, node } => {
                self.drive_election(ElectionInput::MemberAppeared { session, node }, now_ms, &mut out)
            }
            NodeInput::MemberGone { session, node } => {
                self.drive_election(ElectionInput::MemberGone { session, node }, now_ms, &mut out)
            }
            NodeInput::NodeTokenAppeared(node) => {
                self.live.insert(node);
                self.absent_since.remove(&node);
            }
            NodeInput::NodeTokenGone(node) => {
                self.live.remove(&node);
                self.absent_since.entry(node).or_insert(now_ms);
            }
            NodeInput::Facts(facts) => {
                for fact in facts {
                    self.keep_fact(fact);
                }
                self.assert_facts(now_ms, &mut out);
            }
            NodeInput::Produce(event) => {
                if let Some(up) = self.outbox.push(event, now_ms) {
                    self.route_ups(vec![up], now_ms, &mut out);
                }
            }
            NodeInput::Command(envelope) => self.on_command(*envelope, now_ms, &mut out),
            NodeInput::StorageFailed { error, lost } => {
                let own = lost
                    .into_iter()
                    .filter(|e| e.origin.is_some_and(|(origin, _)| origin == self.origin))
                    .map(|e| e.event)
                    .collect();
                self.outbox.requeue(own, now_ms);
                self.drive_election(ElectionInput::StorageFailed, now_ms, &mut out);
                self.hold_fact(NodeFact::StoreFault(Some(error)), now_ms, &mut out);
            }
            NodeInput::StorageRecovered => {
                self.drive_election(ElectionInput::StorageRecovered, now_ms, &mut out);
                self.hold_fact(NodeFact::StoreFault(None), now_ms, &mut out);
            }
        }
        match self.following() {
            Some(session) if self.follower.on_chain() => {
                if self.follower.caught_up(&self.state) {
                    self.ready_in = Some(session);
                }
            }
            _ => self.ready_in = None,
        }
        out
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<NodeOutput>) {
        self.drive_election(ElectionInput::Tick, now_ms, out);
        if self.following().is_some() {
            self.follower(FollowerInput::Tick, now_ms, out);
        }
        let ups = self.outbox.poll(now_ms);
        self.route_ups(ups, now_ms, out);
        if let Some(session) = self.master_of() {
            self.liveness(now_ms, out);
            self.plan(now_ms, out);
            if now_ms >= self.last_published_ms.saturating_add(HEAD_EVERY_MS) {
                self.last_published_ms = now_ms;
                let head = DownMsg::Head {
                    idx: self.state.pos.idx,
                };
                out.push(NodeOutput::Send(Outgoing::Down(session, head)));
            }
        }
        self.assert_facts(now_ms, out);
    }

    /// §8: nodes whose token has been gone ≥ 500 ms are timed out, and tasks whose API node is gone are cancelled.
    /// Only after this master has served ≥ 2 s, so that a token it has not yet seen is not mistaken for a loss.
    fn liveness(&mut self, now_ms: u64, out: &mut Vec<NodeOutput>) {
        if now_ms < self.master_since_ms.saturating_add(MASTER_LIVENESS_GRACE_MS) {
            return;
        }
        let absent_for = |node: &NodeId, absent_since: &BTreeMap<NodeId, u64>| -> Option<u64> {
            // A node never seen since this master started counts as gone since the master started.
            let since = absent_since.get(node).copied().unwrap_or(self.master_since_ms);
            Some(now_ms.saturating_sub(since))
        };
        let mut decisions = Vec::new();
        for node in self.state.nodes.keys() {
            if *node == self.config.node || self.live.contains(node) {
                continue;
            }
            if absent_for(node, &self.absent_since).is_some_and(|ms| ms >= NODE_LOSS_DEBOUNCE_MS) {
                decisions.push(Event::NodeTimedOut {
                    node: *node,
                    reason: "liveliness token gone".to_owned(),
                });
            }
        }
        for task in self.state.tasks.values() {
            let gone = task.origin != self.config.node && !self.live.contains(&task.origin);
            if !task.status.is_terminal()
                && gone
                && absent_for(&task.origin, &self.absent_since).is_some_and(|ms| ms >= NODE_LOSS_DEBOUNCE_MS)
            {
                decisions.push(Event::TaskStatusUpdated {
                    task_id: task.id,
                    status: TaskProgress::Cancelled,
                });
            }
        }
        // Bounded per tick so one sweep cannot hold the node loop (a master that inherits thousands of dead tasks);
        // the rest follow on the next ticks.
        decisions.truncate(LIVENESS_DECISIONS_PER_TICK);
        for event in decisions {
            self.index_own(event, now_ms, out);
        }
    }

    /// The visible node tokens, this node's own included.
    fn live_nodes(&self) -> BTreeSet<NodeId> {
        let mut live = self.live.clone();
        live.insert(self.config.node);
        live
    }

    /// §5.2 step 6: a command for the session this node serves, decided on its current State.
    fn on_command(&mut self, envelope: CommandEnvelope, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let CommandEnvelope {
            session,
            origin,
            command_id,
            command,
            ..
        } = envelope;
        if self.master_of() != Some(session) || self.indexer.as_ref().is_none_or(Indexer::is_frozen) {
            return; // not ours to decide (or not now): the sender resends to whoever is master
        }
        let by_state = deduplicated_by_state(&command);
        if let Some(answer) = self.commands_seen.answer(&command_id) {
            // A repeat, answered as the first copy was (or a generation whose task was already finished).
            if let Some(reason) = answer.clone() {
                out.push(NodeOutput::Send(Outgoing::Rejected {
                    to: origin,
                    session,
                    command_id,
                    reason,
                }));
            }
            return;
        }
        let live = self.live_nodes();
        let ctx = DecideCtx {
            now_ms,
            live: &live,
            placement: &self.placement,
        };
        let decided = decide_command(&self.state, command_id, origin, &command, &ctx, &mut self.ids);
        match decided {
            Ok(events) => {
                if !by_state {
                    self.commands_seen.insert(command_id, None);
                }
                if let Command::TaskFinished { target } = &command {
                    // A generation command that arrives after its own TaskFinished must not start a task.
                    self.commands_seen.insert(*target, None);
                }
                for event in events {
                    self.index_own(event, now_ms, out);
                }
            }
            Err(reason) => {
                tracing::info!(%command_id, %reason, "command rejected");
                if !by_state {
                    self.commands_seen.insert(command_id, Some(reason.clone()));
                }
                out.push(NodeOutput::Send(Outgoing::Rejected {
                    to: origin,
                    session,
                    command_id,
                    reason,
                }));
            }
        }
    }

    /// §8: the plan loop (deployments, failing runners, finished tasks), after the same grace as liveness so a
    /// placement sees every live node.
    fn plan(&mut self, now_ms: u64, out: &mut Vec<NodeOutput>) {
        if now_ms < self.master_since_ms.saturating_add(MASTER_LIVENESS_GRACE_MS) {
            return;
        }
        let unchanged = self
            .planned
            .is_some_and(|(pos, at)| pos == self.state.pos && now_ms < at.saturating_add(PLAN_EVERY_MS));
        if unchanged {
            return;
        }
        self.planned = Some((self.state.pos, now_ms));
        let live = self.live_nodes();
        let ctx = DecideCtx {
            now_ms,
            live: &live,
            placement: &self.placement,
        };
        let decisions = plan(&self.state, &ctx, &mut self.ids);
        for event in decisions {
            self.index_own(event, now_ms, out);
        }
    }

    /// Indexes one of the master's own decisions (`origin = None`).
    fn index_own(&mut self, event: Event, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let Some(indexer) = self.indexer.as_mut() else {
            return;
        };
        if indexer.is_frozen() {
            return; // decided again on the next tick, from the State of whoever wins
        }
        match indexer.index(&mut self.state, event, None, now_ms) {
            Ok(indexed) => self.publish(indexed, now_ms, out),
            Err(error) => tracing::warn!(%error, "master decision not indexed"),
        }
    }

    /// Holds `fact` true from now on, in place of the one of its kind (asserted again only if it changed).
    fn keep_fact(&mut self, fact: NodeFact) {
        match self.facts.get_mut(&fact.kind()) {
            Some((held, _)) if *held == fact => {}
            Some(entry) => *entry = (fact, None),
            None => {
                self.facts.insert(fact.kind(), (fact, None));
            }
        }
    }

    fn hold_fact(&mut self, fact: NodeFact, now_ms: u64, out: &mut Vec<NodeOutput>) {
        self.keep_fact(fact);
        self.assert_facts(now_ms, out);
    }

    /// Pushes every held fact that State does not hold and that is not already on its way (§10.2 rule 9).
    fn assert_facts(&mut self, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let node = self.config.node;
        let mut ups = Vec::new();
        for (fact, last_asserted) in self.facts.values_mut() {
            if fact_in_state(&self.state, node, fact) {
                continue;
            }
            if last_asserted.is_some_and(|t| now_ms < t.saturating_add(REASSERT_EVERY_MS)) {
                continue;
            }
            let pending = self
                .outbox
                .pending()
                .any(|(_, e)| matches!(e, Event::NodeGatheredInfo { node: n, info } if *n == node && info == fact));
            *last_asserted = Some(now_ms);
            if pending {
                continue;
            }
            let event = Event::NodeGatheredInfo {
                node,
                info: fact.clone(),
            };
            if let Some(up) = self.outbox.push(event, now_ms) {
                ups.push(up);
            }
        }
        self.route_ups(ups, now_ms, out);
    }

    fn drive_election(&mut self, input: ElectionInput, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let outputs = self.election.step(input, now_ms);
        for output in outputs {
            self.on_election_output(output, now_ms, out);
        }
    }

    fn on_election_output(&mut self, output: ElectionOutput, now_ms: u64, out: &mut Vec<NodeOutput>) {
        match output {
            ElectionOutput::PersistMaxTerm(term) => out.push(NodeOutput::PersistMaxTerm(term)),
            ElectionOutput::Publish(msg) => out.push(NodeOutput::Send(Outgoing::Campaign(msg))),
            ElectionOutput::FreezeIndexing => {
                if let Some(indexer) = self.indexer.as_mut() {
                    indexer.freeze();
                }
            }
            ElectionOutput::Unfreeze => {
                if let Some(mut indexer) = self.indexer.take() {
                    let outputs = indexer.unfreeze(&mut self.state, now_ms);
                    self.indexer = Some(indexer);
                    self.on_indexer_outputs(outputs, now_ms, out);
                }
            }
            ElectionOutput::OpenSession(session) => {
                out.push(NodeOutput::Role(RoleChange::Opened(session)));
                self.tokens = Tokens {
                    master: Some(session),
                    follows: Some(session),
                };
                self.master_since_ms = now_ms;
                self.absent_since.clear();
                self.snapshot_from = None;
                let mut indexer = Indexer::new(session);
                match indexer.open_session(&mut self.state, now_ms) {
                    Ok(opened) => {
                        self.indexer = Some(indexer);
                        self.follower = Follower::new(FollowerLimits::node());
                        self.publish(opened, now_ms, out);
                        let ups = self.outbox.set_session(session, now_ms);
                        self.route_ups(ups, now_ms, out);
                    }
                    Err(error) => tracing::error!(%error, "cannot open the session: State does not follow itself"),
                }
            }
            ElectionOutput::StepDown(session) => {
                out.push(NodeOutput::Role(RoleChange::SteppedDown(session)));
                self.tokens.master = None;
                self.indexer = None;
            }
            ElectionOutput::Follow(session) => {
                out.push(NodeOutput::Role(RoleChange::Following(session)));
                self.tokens.follows = Some(session);
                self.indexer = None;
                self.snapshot_from = None;
                self.follower(FollowerInput::Follow(session), now_ms, out);
                let ups = self.outbox.set_session(session, now_ms);
                self.route_ups(ups, now_ms, out);
            }
        }
    }

    fn follower(&mut self, input: FollowerInput, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let outputs = self.follower.step(&mut self.state, input, now_ms);
        let session = self.follower.session();
        for output in outputs {
            match output {
                FollowerOutput::Applied(event) => {
                    self.outbox.on_applied(&event);
                    out.push(NodeOutput::Applied(event));
                }
                FollowerOutput::Installed(pos) => match self.installing.take() {
                    Some(state) if state.pos == pos => out.push(NodeOutput::Installed(state)),
                    _ => tracing::error!(?pos, "the follower installed a State it was not given"),
                },
                FollowerOutput::FetchRange(request) => {
                    if let Some(session) = session {
                        out.push(NodeOutput::FetchRange { session, request });
                    }
                }
                FollowerOutput::RequestSnapshot => {
                    if let Some(session) = session {
                        self.snapshot_from = Some(session);
                        out.push(NodeOutput::RequestSnapshot { session });
                    }
                }
                FollowerOutput::NotMaster(session) => {
                    self.drive_election(ElectionInput::RangeNotMaster { session }, now_ms, out)
                }
            }
        }
        self.election.step(ElectionInput::SelfPos(self.state.pos), now_ms);
    }

    fn publish(&mut self, event: IndexedEvent, now_ms: u64, out: &mut Vec<NodeOutput>) {
        self.outbox.on_applied(&event);
        self.last_published_ms = now_ms;
        self.election.step(ElectionInput::SelfPos(self.state.pos), now_ms);
        out.push(NodeOutput::Indexed(Box::new(event)));
    }

    fn on_indexer_outputs(&mut self, outputs: Vec<IndexerOutput>, now_ms: u64, out: &mut Vec<NodeOutput>) {
        for output in outputs {
            match output {
                IndexerOutput::Indexed(event) => self.publish(*event, now_ms, out),
                IndexerOutput::Ack { origin, through_seq } => {
                    let Some(session) = self.indexer.as_ref().map(Indexer::session) else {
                        continue;
                    };
                    if origin == self.origin {
                        self.outbox.on_acked(session, origin, through_seq);
                    } else {
                        out.push(NodeOutput::Send(Outgoing::Acked {
                            to: origin.node,
                            session,
                            origin,
                            through_seq,
                        }));
                    }
                }
            }
        }
    }

    /// Producer messages: in-process to the own indexer when this node serves the session, else over the network.
    fn route_ups(&mut self, ups: Vec<UpMsg>, now_ms: u64, out: &mut Vec<NodeOutput>) {
        let Some(session) = self.outbox.session() else {
            return;
        };
        for up in ups {
            self.deliver_up(session, up, now_ms, out);
        }
    }

    fn deliver_up(&mut self, session: SessionId, up: UpMsg, now_ms: u64, out: &mut Vec<NodeOutput>) {
        match self.indexer.as_mut().filter(|ix| ix.session() == session) {
            Some(indexer) => {
                let outputs = indexer.on_up(&mut self.state, up, now_ms);
                self.on_indexer_outputs(outputs, now_ms, out);
            }
            // A session this node no longer serves (or an up message for another master): producers resend.
            None if session.master == self.config.node => {}
            None if up.origin == self.origin => out.push(NodeOutput::Send(Outgoing::Up(session, Box::new(up)))),
            None => {}
        }
    }
}

fn id_prefix(node: NodeId) -> [u8; 8] {
    let bytes = node.as_bytes();
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&bytes[..8]);
    prefix
}

/// Whether State already holds `fact` for `node`.
pub fn fact_in_state(state: &State, node: NodeId, fact: &NodeFact) -> bool {
    let Some(info) = state.nodes.get(&node) else {
        return false;
    };
    match fact {
        NodeFact::Identity(identity) => info.identity.as_ref() == Some(identity),
        NodeFact::Memory(memory) => info.memory.as_ref() == Some(memory),
        NodeFact::Disk(disk) => info.disk.as_ref() == Some(disk),
        NodeFact::Interfaces(ifaces) => &info.interfaces == ifaces,
        NodeFact::Backends(backends) => &info.backends == backends,
        NodeFact::MemBandwidth(gbps) => info.mem_bandwidth_gbps == Some(*gbps),
        NodeFact::StoreFault(fault) => &info.store_fault == fault,
        NodeFact::FileServer(addrs) => &info.file_server == addrs,
    }
}
