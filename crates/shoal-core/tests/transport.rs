//! The event transport cores (SYSTEM.md §5): follower buffer, gap detection and re-sync, master reorder buffer, and
//! the election's choice, by example and by property.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shoal_core::election::{choose, winning_session};
use shoal_core::follower::{
    Follower, FollowerInput, FollowerLimits, FollowerOutput, GAP_GRACE_MS, RANGE_QUERY_TIMEOUT_MS, RANGE_RETRY_MAX_MS,
    RANGE_RETRY_MIN_MS,
};
use shoal_core::indexer::{Indexer, IndexerOutput, RANGE_MAX_EVENTS, ReorderBuffer, serve_range};
use shoal_core::testing::{EventGen, Mix, fold, last_pos};
use shoal_types::model::{Memory, NodeFact};
use shoal_types::wire::{Candidate, DownMsg, RangeReply, RangeRequest, UpMsg};
use shoal_types::{Event, IndexedEvent, NodeId, Origin, Pos, SessionId, State};

fn events(seed: u64, n: usize) -> Vec<IndexedEvent> {
    EventGen::new(seed, Mix::Typical).take_events(n)
}

fn follower_of(events: &[IndexedEvent]) -> Follower {
    let mut f = Follower::default();
    let mut state = State::empty();
    f.step(&mut state, FollowerInput::Follow(events[0].session), 0);
    f
}

fn down(e: &IndexedEvent) -> FollowerInput {
    FollowerInput::Down(DownMsg::Event(Box::new(e.clone())))
}

fn fetches(out: &[FollowerOutput]) -> Vec<RangeRequest> {
    out.iter()
        .filter_map(|o| match o {
            FollowerOutput::FetchRange(r) => Some(*r),
            _ => None,
        })
        .collect()
}

#[test]
fn follow_sends_the_chain_check_at_once() {
    let log = events(1, 3);
    let mut f = Follower::default();
    let mut state = State::empty();
    let out = f.step(&mut state, FollowerInput::Follow(log[0].session), 0);
    assert_eq!(
        fetches(&out),
        vec![RangeRequest {
            after: Pos::EMPTY,
            max: RANGE_MAX_EVENTS
        }]
    );
}

#[test]
fn gap_waits_for_the_grace_then_fetches_with_backoff() {
    let log = events(2, 10);
    let mut f = follower_of(&log);
    let mut state = State::empty();
    // The chain check completes: nothing to fetch.
    f.step(
        &mut state,
        FollowerInput::Range {
            after: Pos::EMPTY,
            reply: RangeReply::End { head: -1 },
        },
        1,
    );
    let out = f.step(&mut state, down(&log[0]), 10);
    assert!(matches!(out.as_slice(), [FollowerOutput::Applied(_)]));
    // Event 1 is lost; 2 arrives.
    assert!(f.step(&mut state, down(&log[2]), 20).is_empty());
    assert!(
        f.step(&mut state, FollowerInput::Tick, 20 + GAP_GRACE_MS - 1)
            .is_empty()
    );
    let out = f.step(&mut state, FollowerInput::Tick, 20 + GAP_GRACE_MS);
    let after = last_pos(&log[..1]);
    assert_eq!(
        fetches(&out),
        vec![RangeRequest {
            after,
            max: RANGE_MAX_EVENTS
        }]
    );
    // One query at a time; a timeout retries after the backoff, which doubles to its cap.
    let mut now = 20 + GAP_GRACE_MS;
    assert!(f.step(&mut state, FollowerInput::Tick, now + 10).is_empty());
    let mut delay = RANGE_RETRY_MIN_MS;
    for _ in 0..6 {
        now += RANGE_QUERY_TIMEOUT_MS;
        assert!(fetches(&f.step(&mut state, FollowerInput::Tick, now)).is_empty());
        assert!(fetches(&f.step(&mut state, FollowerInput::Tick, now + delay - 1)).is_empty());
        now += delay;
        assert_eq!(fetches(&f.step(&mut state, FollowerInput::Tick, now)).len(), 1);
        delay = (delay * 2).min(RANGE_RETRY_MAX_MS);
    }
    // The answer fills the gap and drains the buffer.
    let out = f.step(
        &mut state,
        FollowerInput::Range {
            after,
            reply: RangeReply::Events {
                events: log[1..2].to_vec(),
            },
        },
        now + 1,
    );
    assert_eq!(out.len(), 2, "1 from the range, 2 from the buffer");
    assert_eq!(state.pos, last_pos(&log[..3]));
    f.step(
        &mut state,
        FollowerInput::Range {
            after,
            reply: RangeReply::End { head: 2 },
        },
        now + 2,
    );
    assert!(f.caught_up(&state));
}

#[test]
fn head_beyond_position_is_a_gap() {
    let log = events(3, 5);
    let mut f = follower_of(&log);
    let mut state = State::empty();
    f.step(
        &mut state,
        FollowerInput::Range {
            after: Pos::EMPTY,
            reply: RangeReply::End { head: -1 },
        },
        1,
    );
    f.step(&mut state, FollowerInput::Down(DownMsg::Head { idx: 4 }), 10);
    assert!(!f.caught_up(&state));
    assert_eq!(
        fetches(&f.step(&mut state, FollowerInput::Tick, 10 + GAP_GRACE_MS)).len(),
        1
    );
}

#[test]
fn divergence_and_pruned_lead_to_snapshot_and_install_drains() {
    let log = events(4, 20);
    let mut f = follower_of(&log);
    let mut state = State::empty();
    let out = f.step(
        &mut state,
        FollowerInput::Range {
            after: Pos::EMPTY,
            reply: RangeReply::Pruned,
        },
        5,
    );
    assert_eq!(out, vec![FollowerOutput::RequestSnapshot]);
    assert!(f.needs_snapshot());
    // Live events keep being buffered while waiting, and nothing is fetched.
    for e in &log[10..] {
        assert!(f.step(&mut state, down(e), 6).is_empty());
    }
    assert!(f.step(&mut state, FollowerInput::SnapshotFailed, 7).is_empty());
    assert!(f.step(&mut state, FollowerInput::Tick, 7 + 99).is_empty());
    assert_eq!(
        f.step(&mut state, FollowerInput::Tick, 7 + 100),
        vec![FollowerOutput::RequestSnapshot]
    );
    let snapshot = fold(&State::empty(), &log[..12]).unwrap();
    let out = f.step(&mut state, FollowerInput::Snapshot(Box::new(snapshot)), 200);
    assert_eq!(out.first(), Some(&FollowerOutput::Installed(last_pos(&log[..12]))));
    assert_eq!(out.len(), 1 + 8);
    assert_eq!(state, fold(&State::empty(), &log).unwrap());
    // A snapshot nobody asked for is never installed.
    f.step(&mut state, FollowerInput::Snapshot(Box::new(State::empty())), 300);
    assert_eq!(state.pos, last_pos(&log));
}

#[test]
fn apply_divergence_requests_snapshot() {
    let log = events(5, 6);
    let mut f = follower_of(&log);
    let mut state = fold(&State::empty(), &log[..3]).unwrap();
    let mut forged = log[3].clone();
    forged.prev = SessionId {
        term: 99,
        master: NodeId::from_bytes([0x77; 16]),
    };
    let out = f.step(&mut state, FollowerInput::Down(DownMsg::Event(Box::new(forged))), 1);
    assert_eq!(out, vec![FollowerOutput::RequestSnapshot]);
    assert_eq!(state.pos, last_pos(&log[..3]), "State unchanged");
}

#[test]
fn overflow_drops_the_buffer_and_resyncs() {
    let log = events(6, 30);
    let limits = FollowerLimits {
        max_events: 5,
        max_bytes: usize::MAX,
        snapshot_when_empty: false,
    };
    let mut f = Follower::new(limits);
    let mut state = State::empty();
    f.step(&mut state, FollowerInput::Follow(log[0].session), 0);
    let mut outputs = vec![];
    for e in &log[1..8] {
        outputs.extend(f.step(&mut state, down(e), 1));
    }
    assert!(outputs.contains(&FollowerOutput::RequestSnapshot));
    assert!(f.buffered() <= 5);
}

#[test]
fn not_master_is_handed_to_the_election_and_stale_replies_ignored() {
    let log = events(7, 3);
    let mut f = follower_of(&log);
    let mut state = State::empty();
    let stale = Pos {
        idx: 5,
        session: log[0].session,
    };
    assert!(
        f.step(
            &mut state,
            FollowerInput::Range {
                after: stale,
                reply: RangeReply::Diverged
            },
            1
        )
        .is_empty()
    );
    let out = f.step(
        &mut state,
        FollowerInput::Range {
            after: Pos::EMPTY,
            reply: RangeReply::NotMaster,
        },
        2,
    );
    assert_eq!(out, vec![FollowerOutput::NotMaster(log[0].session)]);
}

#[test]
fn range_server_and_follower_agree() {
    let log = events(8, 2_500);
    let head = last_pos(&log);
    let mut f = follower_of(&log);
    let mut state = State::empty();
    let mut now = 0;
    let mut request = RangeRequest {
        after: Pos::EMPTY,
        max: RANGE_MAX_EVENTS,
    };
    // Follow the follower's own requests until it is caught up.
    for _ in 0..10 {
        for reply in serve_range(&log, Pos::EMPTY, head, request) {
            now += 1;
            let out = f.step(
                &mut state,
                FollowerInput::Range {
                    after: request.after,
                    reply,
                },
                now,
            );
            if let Some(next) = fetches(&out).pop() {
                request = next;
            }
        }
        if state.pos == head {
            break;
        }
        now += RANGE_RETRY_MAX_MS;
        if let Some(next) = fetches(&f.step(&mut state, FollowerInput::Tick, now)).pop() {
            request = next;
        }
    }
    assert_eq!(state, fold(&State::empty(), &log).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any delivery order with duplicates and losses, completed by range fetches, reaches the master's State.
    #[test]
    fn follower_reaches_the_master_state_under_any_delivery(
        seed in 0u64..1_000,
        n in 1usize..120,
        order in prop::collection::vec((0usize..1_000, 0u8..10), 0..300),
    ) {
        let log = events(seed, n);
        let head = last_pos(&log);
        let mut f = follower_of(&log);
        let mut state = State::empty();
        let mut now = 1;
        let mut applied = vec![];
        let mut pending_requests = vec![RangeRequest { after: Pos::EMPTY, max: RANGE_MAX_EVENTS }];
        for (i, action) in order {
            now += 3;
            let out = if action == 0 {
                f.step(&mut state, FollowerInput::Tick, now)
            } else {
                f.step(&mut state, down(&log[i % log.len()]), now)
            };
            pending_requests.extend(fetches(&out));
            applied.extend(out.into_iter().filter_map(|o| match o {
                FollowerOutput::Applied(e) => Some(*e),
                _ => None,
            }));
        }
        f.step(&mut state, FollowerInput::Down(DownMsg::Head { idx: head.idx }), now);
        // Serve every request (including the ones the loop issued) until none is left.
        for _ in 0..1_000 {
            let Some(request) = pending_requests.pop() else {
                now += RANGE_RETRY_MAX_MS;
                let out = f.step(&mut state, FollowerInput::Tick, now);
                pending_requests.extend(fetches(&out));
                if pending_requests.is_empty() { break } else { continue }
            };
            for reply in serve_range(&log, Pos::EMPTY, head, request) {
                now += 1;
                let out = f.step(&mut state, FollowerInput::Range { after: request.after, reply }, now);
                pending_requests.extend(fetches(&out));
                applied.extend(out.into_iter().filter_map(|o| match o {
                    FollowerOutput::Applied(e) => Some(*e),
                    _ => None,
                }));
            }
        }
        prop_assert_eq!(&applied[..], &log[..], "applied exactly the log, in order, once");
        prop_assert_eq!(state, fold(&State::empty(), &log).unwrap());
        prop_assert!(f.caught_up(&fold(&State::empty(), &log).unwrap()));
    }

    /// Whatever order, duplication and floor jumps the messages of one producer arrive in, the reorder buffer
    /// releases each seq at most once, in increasing order, and everything from the last floor on.
    #[test]
    fn reorder_buffer_releases_in_order_exactly_once(
        arrivals in prop::collection::vec((0u64..60, 0u64..20), 1..200),
    ) {
        let mut buffer = ReorderBuffer::new(0);
        let mut released = vec![];
        let mut max_floor = 0;
        for (seq, floor) in arrivals {
            // A producer's floor never exceeds a seq it sends and never decreases.
            let floor = floor.min(seq).max(max_floor);
            max_floor = floor;
            buffer.receive(seq, floor, Event::TaskDeleted { task_id: shoal_types::TaskId::from_u128(seq.into()) });
            released.extend(buffer.release().into_iter().map(|(s, _)| s));
        }
        prop_assert!(released.windows(2).all(|w| w[0] < w[1]));
        // The cursor is past everything released (further when a floor jumped it).
        if let Some(last) = released.last() {
            prop_assert!(buffer.cursor() > *last);
        }
        prop_assert!(buffer.cursor() >= max_floor);
    }

    /// The winner is a candidate, is unique under permutation, and is not beaten by any other candidate.
    #[test]
    fn choose_is_a_total_order_maximum(
        raw in prop::collection::vec((0u8..4, 0u64..3, 0u8..3, -1i64..4, 0u8..2, any::<bool>()), 1..8),
        rotate in 0usize..8,
    ) {
        let mut candidates: Vec<Candidate> = raw.iter().enumerate().map(|(i, &(_, term, m, idx, priority, incumbent))| {
            Candidate {
                node: NodeId::from_bytes([0x10 + i as u8; 16]),
                last: Pos { idx, session: SessionId { term, master: NodeId::from_bytes([m; 16]) } },
                priority,
                incumbent,
            }
        }).collect();
        let winner = choose(&candidates).unwrap();
        let key = |c: &Candidate| (c.last.session.term, c.last.session.master, c.last.idx, c.priority, c.incumbent, c.node);
        let w = candidates.iter().find(|c| c.node == winner).copied().unwrap();
        prop_assert!(candidates.iter().all(|c| key(c) <= key(&w)));
        let len = candidates.len();
        candidates.rotate_left(rotate % len);
        prop_assert_eq!(choose(&candidates), Some(winner));
    }

    #[test]
    fn winning_session_prefers_members_then_session(
        sessions in prop::collection::btree_map((0u64..5, 0u8..3), 0usize..4, 1..6),
    ) {
        let list: Vec<(SessionId, usize)> = sessions.iter().map(|(&(term, m), &count)| {
            (SessionId { term, master: NodeId::from_bytes([m; 16]) }, count)
        }).collect();
        let best = winning_session(list.iter().copied()).unwrap();
        let best_count = list.iter().find(|(s, _)| *s == best).map(|(_, c)| *c).unwrap();
        for (s, c) in &list {
            prop_assert!(*c < best_count || (*c == best_count && *s <= best));
        }
    }
}

/// The indexer and the outbox together: one producer's facts, reordered and duplicated, all end up in State once.
#[test]
fn producer_to_master_round_trip() {
    use shoal_core::outbox::Outbox;
    let master = SessionId {
        term: 1,
        master: NodeId::from_bytes([0x50; 16]),
    };
    let origin = Origin {
        node: NodeId::from_bytes([0x11; 16]),
        boot: 3,
    };
    let mut state = State::empty();
    let mut ix = Indexer::new(master);
    ix.open_session(&mut state, 0).unwrap();
    let mut outbox = Outbox::new(origin, 7);
    outbox.set_session(master, 0);
    let mut sent: Vec<UpMsg> = (0..50)
        .filter_map(|i| {
            let event = Event::NodeGatheredInfo {
                node: origin.node,
                info: NodeFact::Memory(Memory {
                    total: 100,
                    available: i,
                }),
            };
            outbox.push(event, i)
        })
        .collect();
    // Deliver in reverse with every other message twice.
    sent.reverse();
    let dupes: Vec<UpMsg> = sent.iter().step_by(2).cloned().collect();
    sent.extend(dupes);
    for msg in sent {
        for out in ix.on_up(&mut state, msg, 100) {
            match out {
                IndexerOutput::Indexed(e) => outbox.on_applied(&e),
                IndexerOutput::Ack { origin, through_seq } => outbox.on_acked(master, origin, through_seq),
            }
        }
    }
    assert!(outbox.is_empty());
    assert_eq!(state.pos.idx, 50);
    assert_eq!(
        state
            .nodes
            .get(&origin.node)
            .and_then(|n| n.memory)
            .map(|m| m.available),
        Some(49)
    );
}

#[test]
fn a_fresh_node_bootstraps_from_a_snapshot() {
    let mut f = Follower::new(FollowerLimits::node());
    let mut state = State::empty();
    let session = SessionId {
        term: 1,
        master: NodeId::from_bytes([0x31; 16]),
    };
    let out = f.step(&mut state, FollowerInput::Follow(session), 0);
    assert_eq!(out, vec![FollowerOutput::RequestSnapshot]);
}

#[test]
fn a_restarted_node_is_not_caught_up_before_its_chain_check_is_answered() {
    let log = events(3, 8);
    let mut state = fold(&State::empty(), &log).unwrap();
    let session = state.pos.session;
    let mut f = Follower::new(FollowerLimits::node());
    let out = f.step(&mut state, FollowerInput::Follow(session), 0);
    assert!(matches!(out.as_slice(), [FollowerOutput::FetchRange(_)]), "{out:?}");
    assert!(
        !f.caught_up(&state),
        "its position is not yet known to be on the master's chain"
    );
    let reply = RangeReply::End { head: state.pos.idx };
    let after = state.pos;
    f.step(&mut state, FollowerInput::Range { after, reply }, 5);
    assert!(f.caught_up(&state));
}
