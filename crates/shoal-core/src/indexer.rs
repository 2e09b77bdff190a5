//! The master's indexing core (SYSTEM.md §5.2 steps 2–4) and its range answers (§5.4).
//!
//! The shell drops `UpMsg`s of other sessions (step 1, by key), feeds the rest to [`Indexer::on_up`], appends every
//! [`IndexerOutput::Indexed`] to the store's batch and publishes it after commit (step 5), and sends every
//! [`IndexerOutput::Ack`] as `Transient::Acked` to `origin.node` (after the commit that covers it).

use std::collections::BTreeMap;

use shoal_types::wire::{RangeReply, RangeRequest, UpMsg};
use shoal_types::{Event, IndexedEvent, Origin, Pos, SessionId, State};

use crate::apply::{ApplyError, apply_in_place};

/// Events buffered per origin while waiting for a missing seq (§13).
pub const REORDER_BUFFER_PER_ORIGIN: usize = 10_000;
/// Most events one range request may ask for (§13).
pub const RANGE_MAX_EVENTS: u32 = 10_000;
/// Most events in one `RangeReply::Events` (§13).
pub const RANGE_EVENTS_PER_REPLY: usize = 1_000;

/// One producer's reorder buffer: `cursor` is the next seq to release.
#[derive(Clone, Debug, Default)]
pub struct ReorderBuffer {
    cursor: u64,
    pending: BTreeMap<u64, Event>,
}

/// What a producer's message led to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// A duplicate of something already released: answer `Acked { through_seq }`.
    Duplicate { through_seq: u64 },
    /// Buffered, or dropped as a second copy of a buffered seq or for room; [`ReorderBuffer::release`] next.
    Buffered,
}

impl ReorderBuffer {
    /// A buffer for an origin first heard from with `floor`.
    pub fn new(floor: u64) -> Self {
        ReorderBuffer {
            cursor: floor,
            pending: BTreeMap::new(),
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    pub fn receive(&mut self, seq: u64, floor: u64, event: Event) -> Received {
        if floor > self.cursor {
            // The producer dropped everything below `floor`: stop waiting for it.
            self.cursor = floor;
            self.pending = self.pending.split_off(&floor);
        }
        if seq < self.cursor {
            // seq < cursor implies cursor ≥ 1.
            return Received::Duplicate {
                through_seq: self.cursor - 1,
            };
        }
        self.pending.entry(seq).or_insert(event);
        if self.pending.len() > REORDER_BUFFER_PER_ORIGIN {
            // Drop the newest: the ones closest to the cursor are the ones that unblock the run; the producer
            // resends the rest.
            self.pending.pop_last();
        }
        Received::Buffered
    }

    /// Takes the contiguous run starting at the cursor, in seq order.
    pub fn release(&mut self) -> Vec<(u64, Event)> {
        let mut run = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.cursor {
                break;
            }
            run.push((self.cursor, entry.remove()));
            self.cursor += 1;
        }
        run
    }
}

/// Step 3: may `producer` assert `event`? Non-master producers only assert facts about what they own (§3.3): their
/// own node's facts, downloads and runners, and task progress/failures (which the reducers already confine to known,
/// non-terminal tasks). Everything else is the master's decision.
pub fn producer_may_emit(producer: &Origin, event: &Event) -> bool {
    use shoal_types::TaskProgress;
    match event {
        Event::NodeGatheredInfo { node, .. }
        | Event::DownloadUpdated { node, .. }
        | Event::RunnerStatusUpdated { node, .. } => *node == producer.node,
        Event::TaskStatusUpdated { status, .. } => *status != TaskProgress::Cancelled,
        Event::TaskFailed { .. } => true,
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum IndexerOutput {
    /// Applied to the master's State; append to the store batch, publish after commit.
    Indexed(Box<IndexedEvent>),
    /// Send `Transient::Acked { origin, through_seq }` to `origin.node`.
    Ack { origin: Origin, through_seq: u64 },
}

/// The master's indexing pipeline for one session. A new session gets a new `Indexer` (producers renumber from 0).
#[derive(Clone, Debug)]
pub struct Indexer {
    session: SessionId,
    origins: BTreeMap<Origin, ReorderBuffer>,
    /// While frozen (the master joined a campaign), producer events are buffered but not indexed.
    frozen: bool,
}

impl Indexer {
    pub fn new(session: SessionId) -> Self {
        Indexer {
            session,
            origins: BTreeMap::new(),
            frozen: false,
        }
    }

    pub fn session(&self) -> SessionId {
        self.session
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Indexes `SessionOpened { session, base: pos }`, the first event of the session (§7 step 5).
    pub fn open_session(&mut self, state: &mut State, now_ms: u64) -> Result<IndexedEvent, ApplyError> {
        let event = Event::SessionOpened {
            session: self.session,
            base: state.pos,
        };
        self.index(state, event, None, now_ms)
    }

    /// Step 4: the next event of the log, applied to `state`. Used for producers' events and the master's own
    /// decisions (`origin = None`). Fails only when `state` was changed behind the indexer's back.
    pub fn index(
        &mut self,
        state: &mut State,
        event: Event,
        origin: Option<(Origin, u64)>,
        now_ms: u64,
    ) -> Result<IndexedEvent, ApplyError> {
        let next = u64::try_from(state.pos.idx.saturating_add(1)).unwrap_or_default();
        let indexed = IndexedEvent {
            idx: next,
            session: self.session,
            prev: state.pos.session,
            time_ms: now_ms,
            origin,
            event,
        };
        apply_in_place(state, &indexed)?;
        Ok(indexed)
    }

    /// Steps 2–4 for one producer message of this session.
    pub fn on_up(&mut self, state: &mut State, msg: UpMsg, now_ms: u64) -> Vec<IndexerOutput> {
        let UpMsg {
            origin,
            seq,
            floor,
            event,
        } = msg;
        let buffer = self.origins.entry(origin).or_insert_with(|| ReorderBuffer::new(floor));
        match buffer.receive(seq, floor, event) {
            Received::Duplicate { through_seq } => vec![IndexerOutput::Ack { origin, through_seq }],
            // Frozen: keep buffering, release nothing; `unfreeze` drains it.
            Received::Buffered if self.frozen => Vec::new(),
            Received::Buffered => {
                let run = buffer.release();
                self.index_run(state, origin, run, now_ms)
            }
        }
    }

    fn index_run(
        &mut self,
        state: &mut State,
        origin: Origin,
        run: Vec<(u64, Event)>,
        now_ms: u64,
    ) -> Vec<IndexerOutput> {
        let mut out = Vec::with_capacity(run.len());
        let mut last_invalid = None;
        for (seq, event) in run {
            if !producer_may_emit(&origin, &event) {
                tracing::debug!(?origin, seq, event = event.name(), "invalid producer event dropped");
                last_invalid = Some(seq);
                continue;
            }
            match self.index(state, event, Some((origin, seq)), now_ms) {
                Ok(e) => out.push(IndexerOutput::Indexed(Box::new(e))),
                Err(error) => tracing::warn!(%error, "indexing failed; State changed outside the indexer"),
            }
        }
        // An invalid event is acknowledged so its producer stops resending it; the ack is cumulative, and every
        // seq before it was released in this run or earlier.
        if let Some(through_seq) = last_invalid {
            out.push(IndexerOutput::Ack { origin, through_seq });
        }
        out
    }

    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// Ends a freeze and indexes whatever became contiguous meanwhile.
    pub fn unfreeze(&mut self, state: &mut State, now_ms: u64) -> Vec<IndexerOutput> {
        self.frozen = false;
        let mut out = Vec::new();
        let origins: Vec<Origin> = self.origins.keys().copied().collect();
        for origin in origins {
            let run = match self.origins.get_mut(&origin) {
                Some(buffer) => buffer.release(),
                None => continue,
            };
            out.extend(self.index_run(state, origin, run, now_ms));
        }
        out
    }
}

/// The master's answer to a range query (§5.4), over its retained log: `retained[i].idx == base.idx + 1 + i`, where
/// `base` is the position the retained log starts after (a checkpoint, an installed snapshot, or `Pos::EMPTY`), and
/// `head` is the master's current position.
pub fn serve_range(retained: &[IndexedEvent], base: Pos, head: Pos, request: RangeRequest) -> Vec<RangeReply> {
    let after = request.after;
    let position_at = |idx: i64| -> Option<Pos> {
        if idx == base.idx {
            return Some(base);
        }
        let offset = usize::try_from(idx.checked_sub(base.idx)?.checked_sub(1)?).ok()?;
        retained.get(offset).map(|e| Pos {
            idx,
            session: e.session,
        })
    };
    if after.idx > head.idx {
        return vec![RangeReply::Diverged];
    }
    if after.idx < base.idx {
        return vec![RangeReply::Pruned];
    }
    match position_at(after.idx) {
        Some(p) if p == after => {}
        Some(_) => return vec![RangeReply::Diverged],
        // The retained log does not reach `after` although `after.idx <= head.idx`: treat as not servable.
        None => return vec![RangeReply::Pruned],
    }
    let max = request.max.min(RANGE_MAX_EVENTS) as usize;
    let start = usize::try_from(after.idx - base.idx).unwrap_or(usize::MAX);
    let events = retained.get(start..).unwrap_or_default();
    let events = &events[..events.len().min(max)];
    range_replies(events, head.idx)
}

/// The replies that carry `events` (already checked against the requester's position): `Events` of at most
/// [`RANGE_EVENTS_PER_REPLY`] each, then `End { head }`.
pub fn range_replies(events: &[IndexedEvent], head: i64) -> Vec<RangeReply> {
    let mut replies: Vec<RangeReply> = events
        .chunks(RANGE_EVENTS_PER_REPLY)
        .map(|chunk| RangeReply::Events { events: chunk.to_vec() })
        .collect();
    replies.push(RangeReply::End { head });
    replies
}

#[cfg(test)]
mod tests {
    use shoal_types::NodeId;
    use shoal_types::model::{Memory, NodeFact};

    use super::*;

    fn origin(b: u8) -> Origin {
        Origin {
            node: NodeId::from_bytes([b; 16]),
            boot: 1,
        }
    }

    fn fact(node: u8, available: u64) -> Event {
        Event::NodeGatheredInfo {
            node: NodeId::from_bytes([node; 16]),
            info: NodeFact::Memory(Memory { total: 100, available }),
        }
    }

    fn up(o: u8, seq: u64, floor: u64) -> UpMsg {
        UpMsg {
            origin: origin(o),
            seq,
            floor,
            event: fact(o, seq),
        }
    }

    fn seqs(out: &[IndexerOutput]) -> Vec<u64> {
        out.iter()
            .filter_map(|o| match o {
                IndexerOutput::Indexed(e) => e.origin.map(|(_, s)| s),
                IndexerOutput::Ack { .. } => None,
            })
            .collect()
    }

    fn opened() -> (Indexer, State) {
        let session = SessionId {
            term: 1,
            master: NodeId::from_bytes([0x50; 16]),
        };
        let mut state = State::empty();
        let mut indexer = Indexer::new(session);
        let first = indexer.open_session(&mut state, 7).ok();
        assert_eq!(first.map(|e| (e.idx, e.prev)), Some((0, SessionId::NONE)));
        (indexer, state)
    }

    #[test]
    fn reorders_per_origin_and_stamps_index_fields() {
        let (mut ix, mut state) = opened();
        assert!(seqs(&ix.on_up(&mut state, up(0x11, 1, 0), 10)).is_empty());
        assert!(
            seqs(&ix.on_up(&mut state, up(0x12, 5, 5), 11)).len() == 1,
            "first contact starts at floor"
        );
        let out = ix.on_up(&mut state, up(0x11, 0, 0), 12);
        assert_eq!(seqs(&out), vec![0, 1]);
        match out.first() {
            Some(IndexerOutput::Indexed(e)) => {
                assert_eq!(
                    (e.idx, e.time_ms, e.session, e.prev),
                    (2, 12, ix.session(), ix.session())
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(state.pos.idx, 3);
        // Duplicates below the cursor are acknowledged.
        assert_eq!(
            ix.on_up(&mut state, up(0x11, 0, 0), 13),
            vec![IndexerOutput::Ack {
                origin: origin(0x11),
                through_seq: 1
            }]
        );
    }

    #[test]
    fn floor_jump_skips_dropped_seqs() {
        let (mut ix, mut state) = opened();
        ix.on_up(&mut state, up(0x11, 0, 0), 1);
        assert!(seqs(&ix.on_up(&mut state, up(0x11, 5, 0), 2)).is_empty());
        assert_eq!(seqs(&ix.on_up(&mut state, up(0x11, 6, 5), 3)), vec![5, 6]);
    }

    #[test]
    fn invalid_events_are_dropped_and_acked() {
        let (mut ix, mut state) = opened();
        let mut msg = up(0x11, 0, 0);
        msg.event = fact(0x12, 1); // a fact about another node
        let out = ix.on_up(&mut state, msg, 1);
        assert_eq!(
            out,
            vec![IndexerOutput::Ack {
                origin: origin(0x11),
                through_seq: 0
            }]
        );
        assert_eq!(state.pos.idx, 0);
    }

    #[test]
    fn buffer_is_bounded_dropping_the_newest() {
        let mut buffer = ReorderBuffer::new(0);
        for seq in 1..=(REORDER_BUFFER_PER_ORIGIN as u64 + 5) {
            assert_eq!(buffer.receive(seq, 0, fact(1, seq)), Received::Buffered);
        }
        assert!(buffer.release().is_empty());
        assert_eq!(buffer.buffered(), REORDER_BUFFER_PER_ORIGIN);
        buffer.receive(0, 0, fact(1, 0));
        // Seq 0 made room for itself by dropping the newest buffered seq.
        assert_eq!(buffer.release().len(), REORDER_BUFFER_PER_ORIGIN);
        assert_eq!(buffer.cursor(), REORDER_BUFFER_PER_ORIGIN as u64);
    }

    #[test]
    fn frozen_indexer_buffers_then_drains() {
        let (mut ix, mut state) = opened();
        ix.freeze();
        assert!(ix.on_up(&mut state, up(0x11, 0, 0), 1).is_empty());
        assert!(ix.on_up(&mut state, up(0x11, 1, 0), 1).is_empty());
        assert_eq!(state.pos.idx, 0);
        assert_eq!(seqs(&ix.unfreeze(&mut state, 2)), vec![0, 1]);
    }

    #[test]
    fn range_answers() {
        let (mut ix, mut state) = opened();
        let mut log = vec![];
        for seq in 0..2_500 {
            for o in ix.on_up(&mut state, up(0x11, seq, 0), 1) {
                if let IndexerOutput::Indexed(e) = o {
                    log.push(*e);
                }
            }
        }
        let base = Pos::EMPTY;
        let opened_pos = Pos {
            idx: 0,
            session: ix.session(),
        };
        // The SessionOpened event is not in `log` here: serve from base = idx 0.
        let replies = serve_range(
            &log,
            opened_pos,
            state.pos,
            RangeRequest {
                after: opened_pos,
                max: 10_000,
            },
        );
        assert_eq!(replies.len(), 4);
        assert_eq!(replies.last(), Some(&RangeReply::End { head: 2_500 }));
        let limited = serve_range(
            &log,
            opened_pos,
            state.pos,
            RangeRequest {
                after: opened_pos,
                max: 10,
            },
        );
        assert!(matches!(&limited[0], RangeReply::Events { events } if events.len() == 10));
        assert_eq!(
            serve_range(&log, opened_pos, state.pos, RangeRequest { after: base, max: 1 }),
            vec![RangeReply::Pruned]
        );
        let ahead = Pos {
            idx: 9_999,
            session: ix.session(),
        };
        assert_eq!(
            serve_range(&log, opened_pos, state.pos, RangeRequest { after: ahead, max: 1 }),
            vec![RangeReply::Diverged]
        );
        let other = Pos {
            idx: 5,
            session: SessionId::NONE,
        };
        assert_eq!(
            serve_range(&log, opened_pos, state.pos, RangeRequest { after: other, max: 1 }),
            vec![RangeReply::Diverged]
        );
        assert_eq!(
            serve_range(
                &log,
                opened_pos,
                state.pos,
                RangeRequest {
                    after: state.pos,
                    max: 1
                }
            ),
            vec![RangeReply::End { head: 2_500 }]
        );
    }
}
