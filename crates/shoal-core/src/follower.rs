//! The follower side of the event transport (SYSTEM.md §5.4) and the decision to re-sync by snapshot (§6).
//!
//! A [`Follower`] holds the `OrderedBuffer` of events of the followed session, drains it through `apply` into the
//! node's State (passed to every step, since the store owns it), detects gaps and drives range fetches and snapshot
//! requests. The shell carries [`FollowerOutput`]s out: `Applied` to the replica log and the outbox, `FetchRange` as a
//! query to `s/<session>/range`, `RequestSnapshot` as the §6 procedure (whose result comes back as
//! [`FollowerInput::Snapshot`] or [`FollowerInput::SnapshotFailed`]), `NotMaster` to the election.

use std::collections::BTreeMap;

use shoal_types::wire::{DownMsg, RangeReply, RangeRequest};
use shoal_types::{IndexedEvent, Pos, SessionId, State};

use crate::apply::{ApplyError, apply_in_place};
use crate::indexer::RANGE_MAX_EVENTS;

/// The ordered buffer holds at most this many events (§13)...
pub const BUFFER_MAX_EVENTS: usize = 100_000;
/// ...and at most this many bytes of encoded events (§13); beyond either, the node re-syncs by snapshot.
pub const BUFFER_MAX_BYTES: usize = 256 << 20;
/// A gap must persist this long before a range fetch, so ordinary reordering on the wire does not trigger one (§13).
pub const GAP_GRACE_MS: u64 = 50;
/// Range fetch retry backoff: 50 ms doubling to 1 s (§13).
pub const RANGE_RETRY_MIN_MS: u64 = 50;
pub const RANGE_RETRY_MAX_MS: u64 = 1_000;
/// A range query without its `End` after this long has failed (§13).
pub const RANGE_QUERY_TIMEOUT_MS: u64 = 5_000;
/// Snapshot retry backoff: 100 ms doubling to 2 s (§13).
pub const SNAPSHOT_RETRY_MIN_MS: u64 = 100;
pub const SNAPSHOT_RETRY_MAX_MS: u64 = 2_000;

/// Bounds of the ordered buffer; [`FollowerLimits::default`] is §13's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerLimits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// A node with the empty State bootstraps from a snapshot (§6) rather than replaying the master's retained log
    /// by range queries. Real nodes set it ([`FollowerLimits::node`]); the unit tests of the range path do not.
    pub snapshot_when_empty: bool,
}

impl Default for FollowerLimits {
    fn default() -> Self {
        FollowerLimits {
            max_events: BUFFER_MAX_EVENTS,
            max_bytes: BUFFER_MAX_BYTES,
            snapshot_when_empty: false,
        }
    }
}

impl FollowerLimits {
    /// What a node runs with.
    pub fn node() -> Self {
        FollowerLimits {
            snapshot_when_empty: true,
            ..FollowerLimits::default()
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum FollowerInput {
    /// Timer: gap grace, range timeouts and retries, snapshot retries.
    Tick,
    /// Follow `session` from now on (the election's `Follow`): the buffer of the previous session is dropped and a
    /// range fetch from the own position is sent at once (the chain check of §7 step 6).
    Follow(SessionId),
    /// A message from `s/<session>/down`.
    Down(DownMsg),
    /// One reply of the range query that was sent with `after`, in arrival order.
    Range { after: Pos, reply: RangeReply },
    /// The snapshot requested by `RequestSnapshot`, verified and decoded by the shell (§6 step 4).
    Snapshot(Box<State>),
    /// The snapshot query failed (timeout, bad hash, ...): retry with backoff.
    SnapshotFailed,
}

#[derive(Clone, Debug, PartialEq)]
pub enum FollowerOutput {
    /// Applied to State: append to the replica log; hand to the outbox (`on_applied`).
    Applied(Box<IndexedEvent>),
    /// State was replaced by a snapshot at this position: checkpoint it, restart the log after it.
    Installed(Pos),
    /// Query `s/<session>/range` with this request.
    FetchRange(RangeRequest),
    /// Start (or retry) the snapshot bootstrap of §6 from the followed session's master.
    RequestSnapshot,
    /// The followed master answered `NotMaster`: hand to the election.
    NotMaster(SessionId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InFlightRange {
    after: Pos,
    sent_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SnapshotWait {
    /// State is on the master's chain as far as we know.
    NotNeeded,
    /// State must be replaced; live events keep being buffered meanwhile (§6 step 1).
    Needed {
        in_flight: bool,
        not_before_ms: u64,
        retry_delay_ms: u64,
    },
}

/// The follower state machine.
#[derive(Clone, Debug)]
pub struct Follower {
    limits: FollowerLimits,
    session: Option<SessionId>,
    buffer: BTreeMap<u64, IndexedEvent>,
    buffered_bytes: usize,
    /// The highest idx the master announced (`Head` or an event).
    head: i64,
    gap_since_ms: Option<u64>,
    /// Our position is not yet known to be on the followed master's chain: set on `Follow` and when the master
    /// announces a head below our position; cleared by the `End` of a range query from our position. Until then the
    /// range query is retried like a gap, because a follower ahead of its master sees no gap at all.
    chain_unverified: bool,
    range: Option<InFlightRange>,
    range_not_before_ms: u64,
    range_retry_delay_ms: u64,
    snapshot: SnapshotWait,
}

impl Default for Follower {
    fn default() -> Self {
        Follower::new(FollowerLimits::default())
    }
}

impl Follower {
    pub fn new(limits: FollowerLimits) -> Self {
        Follower {
            limits,
            session: None,
            buffer: BTreeMap::new(),
            buffered_bytes: 0,
            head: -1,
            gap_since_ms: None,
            chain_unverified: false,
            range: None,
            range_not_before_ms: 0,
            range_retry_delay_ms: RANGE_RETRY_MIN_MS,
            snapshot: SnapshotWait::NotNeeded,
        }
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn needs_snapshot(&self) -> bool {
        matches!(self.snapshot, SnapshotWait::Needed { .. })
    }

    /// Ready in the sense of §6 step 6: on the master's chain (the chain check answered, or a snapshot installed)
    /// and at or past every idx seen.
    pub fn caught_up(&self, state: &State) -> bool {
        self.session.is_some() && !self.needs_snapshot() && !self.chain_unverified && state.pos.idx >= self.head
    }

    /// On the followed master's chain as far as the follower knows, whether or not it has seen the newest idx yet.
    pub fn on_chain(&self) -> bool {
        self.session.is_some() && !self.needs_snapshot() && !self.chain_unverified
    }

    pub fn step(&mut self, state: &mut State, input: FollowerInput, now_ms: u64) -> Vec<FollowerOutput> {
        let mut out = Vec::new();
        match input {
            FollowerInput::Tick => self.retry_snapshot(now_ms, &mut out),
            FollowerInput::Follow(session) => self.follow(session, state, now_ms, &mut out),
            FollowerInput::Down(DownMsg::Head { idx }) => {
                self.head = self.head.max(idx);
                if idx < state.pos.idx {
                    // Ahead of the master: diverged, or a Head overtaken by later events; the range query decides.
                    self.chain_unverified = true;
                }
            }
            FollowerInput::Down(DownMsg::Event(event)) => {
                if Some(event.session) == self.session {
                    self.head = self.head.max(i64::try_from(event.idx).unwrap_or(i64::MAX));
                    self.buffer_event(*event, state, now_ms, &mut out);
                }
            }
            FollowerInput::Range { after, reply } => self.on_range(after, reply, state, now_ms, &mut out),
            FollowerInput::Snapshot(snapshot) => self.install(*snapshot, state, &mut out),
            FollowerInput::SnapshotFailed => {
                if let SnapshotWait::Needed {
                    in_flight,
                    not_before_ms,
                    retry_delay_ms,
                } = &mut self.snapshot
                {
                    *in_flight = false;
                    *not_before_ms = now_ms.saturating_add(*retry_delay_ms);
                    *retry_delay_ms = (*retry_delay_ms * 2).min(SNAPSHOT_RETRY_MAX_MS);
                }
            }
        }
        self.drain(state, now_ms, &mut out);
        self.check_gap(state, now_ms, &mut out);
        out
    }

    fn follow(&mut self, session: SessionId, state: &State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        self.session = Some(session);
        self.clear_buffer();
        self.head = -1;
        self.gap_since_ms = None;
        self.chain_unverified = true;
        self.range = None;
        self.range_retry_delay_ms = RANGE_RETRY_MIN_MS;
        match &mut self.snapshot {
            SnapshotWait::Needed {
                in_flight,
                not_before_ms,
                ..
            } => {
                // The snapshot must now come from the new master.
                *in_flight = true;
                *not_before_ms = now_ms;
                out.push(FollowerOutput::RequestSnapshot);
            }
            // A fresh node bootstraps from a snapshot (§6) instead of replaying the master's whole retained log.
            SnapshotWait::NotNeeded if self.limits.snapshot_when_empty && state.pos == Pos::EMPTY => {
                self.need_snapshot(now_ms, out)
            }
            SnapshotWait::NotNeeded => self.send_range(state, now_ms, out),
        }
    }

    fn send_range(&mut self, state: &State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        let request = RangeRequest {
            after: state.pos,
            max: RANGE_MAX_EVENTS,
        };
        self.range = Some(InFlightRange {
            after: request.after,
            sent_ms: now_ms,
        });
        out.push(FollowerOutput::FetchRange(request));
    }

    fn clear_buffer(&mut self) {
        self.buffer.clear();
        self.buffered_bytes = 0;
    }

    fn buffer_event(&mut self, event: IndexedEvent, state: &State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        if i64::try_from(event.idx).is_ok_and(|idx| idx <= state.pos.idx) || self.buffer.contains_key(&event.idx) {
            return; // a duplicate
        }
        let size = postcard::experimental::serialized_size(&event).unwrap_or(0);
        if self.buffer.len() >= self.limits.max_events
            || self.buffered_bytes.saturating_add(size) > self.limits.max_bytes
        {
            // Too far behind to catch up event by event: drop the buffer and re-sync by snapshot (§5.4).
            tracing::warn!(
                buffered = self.buffer.len(),
                "ordered buffer overflow; re-sync by snapshot"
            );
            self.clear_buffer();
            self.need_snapshot(now_ms, out);
        }
        self.buffered_bytes = self.buffered_bytes.saturating_add(size);
        self.buffer.insert(event.idx, event);
    }

    fn on_range(&mut self, after: Pos, reply: RangeReply, state: &State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        let current = self.range.filter(|r| r.after == after).is_some();
        match reply {
            // Events are checked by `apply`, so even those of a stale query are safe to buffer.
            RangeReply::Events { events } => {
                for event in events {
                    self.buffer_event(event, state, now_ms, out);
                }
            }
            RangeReply::End { head } if current => {
                self.range = None;
                self.chain_unverified = false;
                self.head = self.head.max(head);
                if state.pos.idx > after.idx || state.pos.idx >= head {
                    // Progress, or nothing was missing: if a gap remains (the query was capped), fetch on at once.
                    self.range_retry_delay_ms = RANGE_RETRY_MIN_MS;
                    self.range_not_before_ms = now_ms;
                } else {
                    self.back_off_range(now_ms);
                }
            }
            RangeReply::Diverged | RangeReply::Pruned if current => {
                self.range = None;
                self.need_snapshot(now_ms, out);
            }
            RangeReply::NotMaster if current => {
                self.range = None;
                self.back_off_range(now_ms);
                if let Some(session) = self.session {
                    out.push(FollowerOutput::NotMaster(session));
                }
            }
            // A late answer to a query we no longer wait for.
            RangeReply::End { .. } | RangeReply::Diverged | RangeReply::Pruned | RangeReply::NotMaster => {}
        }
    }

    fn back_off_range(&mut self, now_ms: u64) {
        self.range_not_before_ms = now_ms.saturating_add(self.range_retry_delay_ms);
        self.range_retry_delay_ms = (self.range_retry_delay_ms * 2).min(RANGE_RETRY_MAX_MS);
    }

    fn need_snapshot(&mut self, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        self.range = None;
        if self.needs_snapshot() {
            return;
        }
        let in_flight = self.session.is_some();
        self.snapshot = SnapshotWait::Needed {
            in_flight,
            not_before_ms: now_ms,
            retry_delay_ms: SNAPSHOT_RETRY_MIN_MS,
        };
        if in_flight {
            out.push(FollowerOutput::RequestSnapshot);
        }
    }

    fn retry_snapshot(&mut self, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        if let SnapshotWait::Needed {
            in_flight,
            not_before_ms,
            ..
        } = &mut self.snapshot
            && !*in_flight
            && now_ms >= *not_before_ms
            && self.session.is_some()
        {
            *in_flight = true;
            out.push(FollowerOutput::RequestSnapshot);
        }
    }

    /// §6 step 5: replace State, drop buffered events it already covers, then drain the rest.
    fn install(&mut self, snapshot: State, state: &mut State, out: &mut Vec<FollowerOutput>) {
        if !self.needs_snapshot() {
            return; // not asked for (a late reply): never replace a State that is on the chain
        }
        *state = snapshot;
        self.snapshot = SnapshotWait::NotNeeded;
        self.chain_unverified = false;
        let covered = u64::try_from(state.pos.idx.saturating_add(1)).unwrap_or(0);
        self.buffer = self.buffer.split_off(&covered);
        self.buffered_bytes = self
            .buffer
            .values()
            .map(|e| postcard::experimental::serialized_size(e).unwrap_or(0))
            .sum();
        self.range_retry_delay_ms = RANGE_RETRY_MIN_MS;
        self.range_not_before_ms = 0;
        // A gap between the snapshot and the buffered tail is certain, not reordering: no grace (§6 step 5).
        self.gap_since_ms = Some(0);
        out.push(FollowerOutput::Installed(state.pos));
    }

    /// Applies the buffer's contiguous prefix in idx order.
    fn drain(&mut self, state: &mut State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        if self.needs_snapshot() {
            return;
        }
        while let Some(entry) = self.buffer.first_entry() {
            let idx = i64::try_from(*entry.key()).unwrap_or(i64::MAX);
            if idx > state.pos.idx + 1 {
                break;
            }
            let event = entry.remove();
            self.buffered_bytes = self
                .buffered_bytes
                .saturating_sub(postcard::experimental::serialized_size(&event).unwrap_or(0));
            if idx <= state.pos.idx {
                continue; // a duplicate
            }
            match apply_in_place(state, &event) {
                Ok(()) => out.push(FollowerOutput::Applied(Box::new(event))),
                Err(ApplyError::Diverged { have, prev }) => {
                    tracing::info!(?have, %prev, "State diverged from the master's chain; re-sync by snapshot");
                    self.buffer.insert(event.idx, event);
                    self.need_snapshot(now_ms, out);
                    return;
                }
                Err(ApplyError::OutOfOrder { .. }) => {} // excluded by the idx check above
            }
        }
    }

    /// §5.4 gap detection: the lowest buffered idx or the announced head is beyond `pos + 1` (or the chain is
    /// unverified) for longer than the grace → range fetch from `pos`, retried on timeout with backoff.
    fn check_gap(&mut self, state: &State, now_ms: u64, out: &mut Vec<FollowerOutput>) {
        if self.session.is_none() || self.needs_snapshot() {
            return;
        }
        let next = state.pos.idx + 1;
        let behind = self.chain_unverified
            || self.head > state.pos.idx
            || self
                .buffer
                .first_key_value()
                .is_some_and(|(idx, _)| i64::try_from(*idx).unwrap_or(i64::MAX) > next);
        if !behind {
            self.gap_since_ms = None;
            return;
        }
        let since = *self.gap_since_ms.get_or_insert(now_ms);
        if let Some(range) = self.range {
            if now_ms < range.sent_ms.saturating_add(RANGE_QUERY_TIMEOUT_MS) {
                return;
            }
            self.range = None;
            self.back_off_range(now_ms);
        }
        if now_ms >= since.saturating_add(GAP_GRACE_MS) && now_ms >= self.range_not_before_ms {
            self.send_range(state, now_ms, out);
        }
    }
}
