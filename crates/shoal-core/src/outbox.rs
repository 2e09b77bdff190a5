//! A node's producer outbox (SYSTEM.md §5.1): numbers, sends, resends and forgets the events this node asserts.
//!
//! The shell publishes every returned [`UpMsg`] on `s/<session>/up` (or hands it to its own indexer when it is the
//! master of that session), calls [`Outbox::poll`] by [`Outbox::next_due_ms`], and reports acknowledgements:
//! [`Outbox::on_applied`] for every event the node applies, [`Outbox::on_acked`] for `Transient::Acked`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use shoal_types::wire::UpMsg;
use shoal_types::{Event, IndexedEvent, ModelId, NodeId, Origin, SessionId};

/// Entries held at most (§13).
pub const OUTBOX_CAPACITY: usize = 65_536;
/// First resend after this long (§13), doubling per attempt...
pub const RESEND_FIRST_MS: u64 = 1_000;
/// ...capped here (§13).
pub const RESEND_CAP_MS: u64 = 5_000;
/// Sessions whose numbering the outbox remembers (see [`Outbox::set_session`]); the least recently left one is
/// forgotten first.
pub const REMEMBERED_SESSIONS: usize = 64;
/// Resend delays vary by ±20 % so producers that lost the same master do not resend in lockstep (§13).
pub const RESEND_JITTER_PERCENT: u64 = 20;

#[derive(Clone, Copy, Debug, PartialEq)]
struct PastSession {
    next_seq: u64,
    /// The session change at which this process last left it.
    left_at: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    seq: u64,
    event: Event,
    last_sent_ms: u64,
    /// Sends so far in the current session.
    attempts: u32,
    next_send_ms: u64,
}

/// The identity of a fact an event asserts, for the supersession rule of the drop policy.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum FactKey {
    NodeFact(NodeId, u8),
    Download(NodeId, ModelId),
}

fn fact_key(event: &Event) -> Option<FactKey> {
    match event {
        Event::NodeGatheredInfo { node, info } => Some(FactKey::NodeFact(*node, info.kind())),
        Event::DownloadUpdated { node, model_id, .. } => Some(FactKey::Download(*node, model_id.clone())),
        _ => None,
    }
}

/// splitmix64, seeded by the shell: the outbox stays deterministic while its jitter is random in production.
#[derive(Clone, Debug)]
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `base` scaled by a uniform factor in [80 %, 120 %].
    fn apply(&mut self, base: u64) -> u64 {
        let percent = 100 - RESEND_JITTER_PERCENT + self.next() % (2 * RESEND_JITTER_PERCENT + 1);
        base.saturating_mul(percent) / 100
    }
}

/// The resend delay after the `attempts`-th send, before jitter: 1 s, 2 s, 4 s, then 5 s.
pub fn resend_delay_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    (RESEND_FIRST_MS << doublings).min(RESEND_CAP_MS)
}

#[derive(Clone, Debug)]
pub struct Outbox {
    origin: Origin,
    capacity: usize,
    /// The session events are numbered in; `None` until the node follows or serves one (events wait).
    session: Option<SessionId>,
    /// Unacknowledged entries, ascending by seq (not necessarily contiguous: the drop rule may cut holes, which
    /// the master skips once `floor` passes them).
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// Every session this process numbered in before: its next seq, and when it was last left (a count of
    /// session changes, for forgetting the least recently left first).
    past_sessions: BTreeMap<SessionId, PastSession>,
    /// Session changes so far.
    changes: u64,
    jitter: Jitter,
    superseded_total: u64,
    dropped_total: u64,
}

impl Outbox {
    /// `jitter_seed` comes from the shell's randomness; tests pass a fixed one.
    pub fn new(origin: Origin, jitter_seed: u64) -> Self {
        Outbox::with_capacity(origin, jitter_seed, OUTBOX_CAPACITY)
    }

    pub fn with_capacity(origin: Origin, jitter_seed: u64, capacity: usize) -> Self {
        Outbox {
            origin,
            capacity: capacity.max(1),
            session: None,
            entries: VecDeque::new(),
            next_seq: 0,
            past_sessions: BTreeMap::new(),
            changes: 0,
            jitter: Jitter(jitter_seed),
            superseded_total: 0,
            dropped_total: 0,
        }
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Events dropped while full with no newer copy of their fact held: `shoal_outbox_dropped_total`.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Events dropped while full because a newer entry asserts the same fact (nothing is lost).
    pub fn superseded_total(&self) -> u64 {
        self.superseded_total
    }

    /// The oldest seq still held (the next seq when empty): lets the master skip what was dropped.
    pub fn floor(&self) -> u64 {
        self.entries.front().map_or(self.next_seq, |e| e.seq)
    }

    /// Queues `event`; returns its first send unless no session is known yet.
    pub fn push(&mut self, event: Event, now_ms: u64) -> Option<UpMsg> {
        if self.entries.len() >= self.capacity {
            self.make_room(&event);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            event,
            last_sent_ms: now_ms,
            attempts: 0,
            next_send_ms: now_ms,
        });
        self.session?;
        let floor = self.floor();
        let entry = self.entries.back_mut()?;
        Some(Self::send(self.origin, floor, entry, &mut self.jitter, now_ms))
    }

    /// Drops one entry: the oldest fact that a newer entry (or `incoming`) supersedes, else the oldest.
    fn make_room(&mut self, incoming: &Event) {
        let mut newer: BTreeSet<FactKey> = fact_key(incoming).into_iter().collect();
        let mut victim = None;
        // Walk newest to oldest, remembering facts seen: the last hit is the oldest superseded entry.
        for (i, entry) in self.entries.iter().enumerate().rev() {
            if let Some(key) = fact_key(&entry.event) {
                if newer.contains(&key) {
                    victim = Some(i);
                } else {
                    newer.insert(key);
                }
            }
        }
        match victim {
            Some(i) => {
                self.entries.remove(i);
                self.superseded_total += 1;
            }
            None => {
                self.entries.pop_front();
                self.dropped_total += 1;
                tracing::warn!("outbox full: oldest event dropped");
            }
        }
    }

    fn send(origin: Origin, floor: u64, entry: &mut Entry, jitter: &mut Jitter, now_ms: u64) -> UpMsg {
        entry.attempts = entry.attempts.saturating_add(1);
        entry.last_sent_ms = now_ms;
        entry.next_send_ms = now_ms.saturating_add(jitter.apply(resend_delay_ms(entry.attempts)));
        UpMsg {
            origin,
            seq: entry.seq,
            floor,
            event: entry.event.clone(),
        }
    }

    /// The followed (or served) session changed: renumber every unacknowledged entry and send all at once (safe:
    /// re-applying producers' assertions changes nothing but `updated_ms`, §3.3(b)).
    ///
    /// Numbering restarts at 0 in a session new to this process. Coming back to a session it numbered in before
    /// (it followed another master for a while), it continues after the last seq used there: that session's master
    /// kept its cursor, and restarting at 0 would make the new events look like duplicates, acknowledged and lost.
    /// A seq the master never received leaves a hole that `floor` lets it skip.
    pub fn set_session(&mut self, session: SessionId, now_ms: u64) -> Vec<UpMsg> {
        if self.session == Some(session) {
            return Vec::new();
        }
        self.changes += 1;
        if let Some(previous) = self.session.replace(session) {
            let past = PastSession {
                next_seq: self.next_seq,
                left_at: self.changes,
            };
            self.past_sessions.insert(previous, past);
            // Forget the session left longest ago, never by order: a node that leaves its long-lived master's
            // session again and again (each partition makes it the master of a new term of its own) must still
            // continue that session's numbering when it returns, or its events would look like duplicates there.
            if self.past_sessions.len() > REMEMBERED_SESSIONS
                && let Some(oldest) = self
                    .past_sessions
                    .iter()
                    .min_by_key(|(_, p)| p.left_at)
                    .map(|(s, _)| *s)
            {
                self.past_sessions.remove(&oldest);
            }
        }
        self.next_seq = self.past_sessions.get(&session).map_or(0, |p| p.next_seq);
        for entry in &mut self.entries {
            entry.seq = self.next_seq;
            entry.attempts = 0;
            self.next_seq += 1;
        }
        let floor = self.floor();
        let (origin, jitter) = (self.origin, &mut self.jitter);
        self.entries
            .iter_mut()
            .map(|entry| Self::send(origin, floor, entry, jitter, now_ms))
            .collect()
    }

    /// Puts back, ahead of everything still pending and in their order, this node's events that a master indexed
    /// but never committed (its store failed): they go to the next master like any unacknowledged entry. The
    /// entries are renumbered from the current seq; the next session change renumbers them again.
    pub fn requeue(&mut self, events: Vec<Event>, now_ms: u64) {
        if events.is_empty() {
            return;
        }
        let back: Vec<Entry> = events
            .into_iter()
            .map(|event| Entry {
                seq: 0,
                event,
                last_sent_ms: now_ms,
                attempts: 0,
                next_send_ms: now_ms,
            })
            .collect();
        let rest = std::mem::take(&mut self.entries);
        self.entries = back.into_iter().chain(rest).collect();
        for entry in &mut self.entries {
            entry.seq = self.next_seq;
            self.next_seq += 1;
        }
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
            self.dropped_total += 1;
        }
    }

    /// Resends every entry that is due.
    pub fn poll(&mut self, now_ms: u64) -> Vec<UpMsg> {
        if self.session.is_none() {
            return Vec::new();
        }
        let floor = self.floor();
        let (origin, jitter) = (self.origin, &mut self.jitter);
        self.entries
            .iter_mut()
            .filter(|entry| entry.next_send_ms <= now_ms)
            .map(|entry| Self::send(origin, floor, entry, jitter, now_ms))
            .collect()
    }

    /// When `poll` next has something to send.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.session?;
        self.entries.iter().map(|e| e.next_send_ms).min()
    }

    /// The node applied `event`: if it is one of ours from the current session, everything through its seq is done.
    /// Clearing on apply rather than on receipt keeps every acknowledged event in some live node's State (§5.1).
    pub fn on_applied(&mut self, event: &IndexedEvent) {
        if let Some((origin, seq)) = event.origin
            && origin == self.origin
            && Some(event.session) == self.session
        {
            self.ack_through(seq);
        }
    }

    /// `Acked { origin, through_seq }` from the master of `session`.
    pub fn on_acked(&mut self, session: SessionId, origin: Origin, through_seq: u64) {
        if origin == self.origin && Some(session) == self.session {
            self.ack_through(through_seq);
        }
    }

    fn ack_through(&mut self, seq: u64) {
        while self.entries.front().is_some_and(|e| e.seq <= seq) {
            self.entries.pop_front();
        }
    }

    /// The events still waiting, oldest first (for status and tests).
    pub fn pending(&self) -> impl Iterator<Item = (u64, &Event)> {
        self.entries.iter().map(|e| (e.seq, &e.event))
    }
}

#[cfg(test)]
mod tests {
    use shoal_types::model::{Memory, NodeFact};

    use super::*;

    fn me() -> Origin {
        Origin {
            node: NodeId::from_bytes([0x11; 16]),
            boot: 9,
        }
    }

    fn session(term: u64) -> SessionId {
        SessionId {
            term,
            master: NodeId::from_bytes([0x20; 16]),
        }
    }

    fn memory(available: u64) -> Event {
        Event::NodeGatheredInfo {
            node: me().node,
            info: NodeFact::Memory(Memory { total: 100, available }),
        }
    }

    fn download(model: &str) -> Event {
        Event::DownloadUpdated {
            node: me().node,
            model_id: ModelId::from(model),
            progress: shoal_types::DownloadProgress::Pending,
        }
    }

    #[test]
    fn numbers_from_zero_and_acks_cumulatively() {
        let mut o = Outbox::new(me(), 1);
        assert_eq!(o.push(memory(1), 0), None, "no session yet");
        let sent = o.set_session(session(1), 5);
        assert_eq!(sent.iter().map(|m| (m.seq, m.floor)).collect::<Vec<_>>(), vec![(0, 0)]);
        let m = o.push(memory(2), 6).map(|m| (m.seq, m.floor));
        assert_eq!(m, Some((1, 0)));
        o.push(memory(3), 7);
        o.on_acked(session(2), me(), 5);
        assert_eq!(o.len(), 3, "another session's ack is ignored");
        o.on_acked(session(1), me(), 0);
        assert_eq!(o.floor(), 1);
        let applied = IndexedEvent {
            idx: 4,
            session: session(1),
            prev: session(1),
            time_ms: 0,
            origin: Some((me(), 1)),
            event: memory(2),
        };
        o.on_applied(&applied);
        assert_eq!(o.pending().map(|(s, _)| s).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn resends_back_off_with_jitter_and_cap() {
        let mut o = Outbox::new(me(), 42);
        o.set_session(session(1), 0);
        o.push(memory(1), 0);
        let mut now = 0;
        let mut delays = vec![];
        for _ in 0..6 {
            let due = o.next_due_ms().unwrap_or(u64::MAX);
            assert!(o.poll(due - 1).is_empty());
            assert_eq!(o.poll(due).len(), 1);
            delays.push(due - now);
            now = due;
        }
        for (attempt, delay) in delays.iter().enumerate() {
            let base = resend_delay_ms(attempt as u32 + 1);
            assert!(
                *delay >= base * 80 / 100 && *delay <= base * 120 / 100,
                "{attempt}: {delay} vs {base}"
            );
        }
        assert_eq!(resend_delay_ms(4), RESEND_CAP_MS);
    }

    #[test]
    fn session_change_renumbers_and_resends_at_once() {
        let mut o = Outbox::new(me(), 1);
        o.set_session(session(1), 0);
        for i in 0..4 {
            o.push(memory(i), 0);
        }
        o.on_acked(session(1), me(), 1);
        let sent = o.set_session(session(2), 10);
        assert_eq!(sent.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(o.push(memory(9), 11).map(|m| m.seq), Some(2));
        // Back to session 1, whose master saw seqs up to 3: numbering continues there, floor skips the rest.
        let sent = o.set_session(session(1), 20);
        assert_eq!(
            sent.iter().map(|m| (m.seq, m.floor)).collect::<Vec<_>>(),
            vec![(4, 4), (5, 4), (6, 4)]
        );
    }

    /// The chaos bench's 65th partition trial: the victim had become the master of 64 terms of its own, one per
    /// partition, and each time came back to the cluster's session 1. Forgetting sessions by order forgot session
    /// 1 (the smallest) while it was the one in use; numbering restarted at 0 there, the master took the victim's
    /// facts for duplicates, and the victim never became eligible for a placement again.
    #[test]
    fn a_session_returned_to_again_and_again_is_never_forgotten() {
        let mut o = Outbox::new(me(), 1);
        o.set_session(session(1), 0);
        let mut next_in_1 = 0;
        for own_term in 2..(REMEMBERED_SESSIONS as u64 + 10) {
            assert_eq!(o.push(memory(own_term), 0).map(|m| m.seq), Some(next_in_1));
            o.on_acked(session(1), me(), next_in_1);
            next_in_1 += 1;
            o.set_session(session(own_term), 0);
            o.push(memory(own_term), 0);
            o.on_acked(session(own_term), me(), 0);
            o.set_session(session(1), 0);
        }
        assert_eq!(o.push(memory(0), 0).map(|m| m.seq), Some(next_in_1));
        assert!(o.past_sessions.len() <= REMEMBERED_SESSIONS);
        // The least recently left go first: own term 2 is long forgotten, so a return there starts at 0.
        o.set_session(session(2), 0);
        assert_eq!(o.push(memory(1), 0).map(|m| m.seq), Some(1));
    }

    #[test]
    fn full_outbox_drops_superseded_facts_first() {
        let mut o = Outbox::with_capacity(me(), 1, 3);
        o.set_session(session(1), 0);
        o.push(download("a"), 0);
        o.push(memory(1), 0);
        o.push(download("b"), 0);
        // memory(2) supersedes memory(1).
        o.push(memory(2), 0);
        assert_eq!(o.superseded_total(), 1);
        assert_eq!(o.pending().map(|(s, _)| s).collect::<Vec<_>>(), vec![0, 2, 3]);
        // Nothing superseded by download("c"): the oldest goes and is counted.
        o.push(download("c"), 0);
        assert_eq!(o.dropped_total(), 1);
        assert_eq!(o.floor(), 2);
    }
}
