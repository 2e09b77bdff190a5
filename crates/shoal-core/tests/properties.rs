//! Property tests of the pure core over random valid event sequences (SYSTEM.md §3, §6).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use shoal_core::invariants::{check_invariants, check_transition};
use shoal_core::snapshot::{self, SnapshotError};
use shoal_core::testing::{EventGen, Mix, fold, last_pos};
use shoal_core::{apply, apply_in_place};
use shoal_types::model::{NodeInfo, RunnerRecord};
use shoal_types::wire::SnapshotBlob;
use shoal_types::{Event, IndexedEvent, Pos, State, codec};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

fn events(seed: u64, n: usize) -> Vec<IndexedEvent> {
    EventGen::new(seed, Mix::Chaos).take_events(n)
}

/// Zeroes the stamps a re-asserted fact may move (rule 3.3(b) allows exactly these to change).
fn without_stamps(s: &State) -> State {
    let mut s = s.clone();
    s.nodes = s
        .nodes
        .iter()
        .map(|(k, v)| {
            (
                *k,
                std::sync::Arc::new(NodeInfo {
                    updated_ms: 0,
                    ..(**v).clone()
                }),
            )
        })
        .collect();
    s.runners = s
        .runners
        .iter()
        .map(|(k, v)| {
            (
                *k,
                std::sync::Arc::new(RunnerRecord {
                    updated_ms: 0,
                    ..(**v).clone()
                }),
            )
        })
        .collect();
    s.pos = Pos::EMPTY;
    s
}

proptest! {
    // 64 cases per run unless PROPTEST_CASES says otherwise (e.g. PROPTEST_CASES=5000 for a long local run).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// I1–I6 hold after every event of random sequences, and `apply` agrees with `apply_in_place`.
    #[test]
    fn invariants_hold_after_every_event(seed in any::<u64>(), n in 1usize..600) {
        let mut state = State::empty();
        for e in events(seed, n) {
            let next = apply(&state, &e).unwrap();
            check_invariants(&next).map_err(TestCaseError::fail)?;
            check_transition(&state, &next).map_err(TestCaseError::fail)?;
            let mut in_place = state.clone();
            apply_in_place(&mut in_place, &e).unwrap();
            prop_assert_eq!(&in_place, &next);
            state = next;
        }
    }

    /// install(snapshot(apply(0..k))) then apply(k..n) == apply(0..n), for any cut point k.
    #[test]
    fn snapshot_at_any_cut_then_tail_equals_full_fold(seed in any::<u64>(), n in 1usize..500, cut in 0.0f64..=1.0) {
        let evs = events(seed, n);
        let k = ((n as f64) * cut) as usize;
        let full = fold(&State::empty(), &evs).unwrap();
        let prefix = fold(&State::empty(), &evs[..k]).unwrap();
        prop_assert_eq!(prefix.pos, last_pos(&evs[..k]));
        let installed = snapshot::from_bytes(&snapshot::to_bytes(&prefix).unwrap()).unwrap();
        prop_assert_eq!(&installed, &prefix);
        let resumed = fold(&installed, &evs[k..]).unwrap();
        prop_assert_eq!(resumed, full);
    }

    /// Rule 3.3(b): re-applying an in-order suffix of a producer's events changes nothing but `updated_ms` stamps
    /// (what the outbox's resend after a session change relies on). Only events that took effect when first applied
    /// count: one that was a no-op then (a fact about a node State did not know yet) legitimately takes effect when
    /// re-sent, which is how re-assertion restores lost facts (§10.2).
    #[test]
    fn reapplying_a_producer_suffix_changes_only_stamps(seed in any::<u64>(), n in 1usize..400, from in 0.0f64..1.0) {
        let evs = events(seed, n);
        let mut state = State::empty();
        let mut effective = Vec::new();
        for e in &evs {
            let before = without_stamps(&state);
            apply_in_place(&mut state, e).unwrap();
            if matches!(e.event, Event::NodeTimedOut { .. }) {
                // A node's facts may legitimately reappear after the master removed the node; resends after that
                // point are re-assertions of a live node, so the suffix starts after the last removal.
                effective.clear();
            } else if e.origin.is_some() && without_stamps(&state) != before {
                effective.push(e.event.clone());
            }
        }
        let start = ((effective.len() as f64) * from) as usize;
        let mut again = state.clone();
        for event in &effective[start..] {
            let e = IndexedEvent {
                idx: (again.pos.idx + 1) as u64,
                session: again.pos.session,
                prev: again.pos.session,
                time_ms: u64::MAX / 2,
                origin: None,
                event: event.clone(),
            };
            apply_in_place(&mut again, &e).unwrap();
        }
        prop_assert_eq!(without_stamps(&again), without_stamps(&state));
    }

    /// Garbage never panics a decoder; it is an error (or, rarely, a value that re-encodes).
    #[test]
    fn garbage_never_panics_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<IndexedEvent>(&bytes);
        let _ = codec::decode::<State>(&bytes);
        let _ = codec::decode::<shoal_types::CommandEnvelope>(&bytes);
        let _ = codec::decode::<shoal_types::wire::TransientEnvelope>(&bytes);
        let _ = codec::decode::<shoal_types::wire::UpMsg>(&bytes);
        let _ = codec::decode::<shoal_types::wire::DownMsg>(&bytes);
        let _ = codec::decode::<shoal_types::wire::RangeReply>(&bytes);
        let _ = codec::decode::<shoal_types::wire::ElectionMsg>(&bytes);
        let _ = codec::decode::<SnapshotBlob>(&bytes);
        let _ = snapshot::from_bytes(&bytes);
    }

    /// Valid messages that are truncated, bit-flipped or re-versioned decode to an error or a value, never a panic;
    /// truncation and a wrong version byte are always errors.
    #[test]
    fn mutated_messages_are_rejected_or_decoded(seed in any::<u64>(), n in 1usize..80, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        for e in events(seed, n) {
            let bytes = codec::encode(&e).unwrap();
            prop_assert_eq!(codec::decode::<IndexedEvent>(&bytes).unwrap(), e);
            let cut = at.index(bytes.len());
            prop_assert!(codec::decode::<IndexedEvent>(&bytes[..cut]).is_err(), "truncated at {} of {}", cut, bytes.len());
            let mut flipped = bytes.clone();
            flipped[at.index(bytes.len())] ^= 1 << bit;
            let _ = codec::decode::<IndexedEvent>(&flipped);
            let mut versioned = bytes.clone();
            versioned[0] = 2;
            prop_assert_eq!(codec::decode::<IndexedEvent>(&versioned), Err(shoal_types::DecodeError::Version { got: 2 }));
        }
    }

    /// A snapshot that is truncated or has any byte flipped is rejected with an error, never installed.
    #[test]
    fn corrupt_or_truncated_snapshots_are_rejected(seed in any::<u64>(), n in 1usize..300, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let state = fold(&State::empty(), &events(seed, n)).unwrap();
        let bytes = snapshot::to_bytes(&state).unwrap();
        let cut = at.index(bytes.len());
        prop_assert!(snapshot::from_bytes(&bytes[..cut]).is_err());
        let mut flipped = bytes.clone();
        flipped[at.index(bytes.len())] ^= 1 << bit;
        prop_assert!(snapshot::from_bytes(&flipped).is_err(), "flip at {} accepted", at.index(bytes.len()));
    }
}

#[test]
fn snapshot_errors_name_the_cause() {
    let state = fold(&State::empty(), &events(7, 200)).unwrap();
    let blob = snapshot::encode(&state).unwrap();
    assert_eq!(snapshot::decode(&blob).unwrap(), state);

    let mut wrong_schema = blob.clone();
    wrong_schema.schema += 1;
    assert!(matches!(
        snapshot::decode(&wrong_schema),
        Err(SnapshotError::Schema { .. })
    ));

    let mut corrupt = blob.clone();
    corrupt.body[0] ^= 0xff;
    assert_eq!(snapshot::decode(&corrupt), Err(SnapshotError::Hash));

    let mut wrong_pos = blob.clone();
    wrong_pos.pos.idx += 1;
    assert!(matches!(snapshot::decode(&wrong_pos), Err(SnapshotError::Pos { .. })));

    // A body whose hash matches but which is not zstd (a bug or a hostile peer) is a decompression error.
    let mut not_zstd = blob.clone();
    not_zstd.body = b"definitely not zstd".to_vec();
    not_zstd.sha256 = snapshot::sha256(&not_zstd.body);
    assert!(matches!(snapshot::decode(&not_zstd), Err(SnapshotError::Decompress(_))));

    // Valid zstd of something that is not a State is a decode error.
    let mut not_state = blob.clone();
    not_state.body = zstd::bulk::compress(&[0xff; 64], 3).unwrap();
    not_state.sha256 = snapshot::sha256(&not_state.body);
    assert!(matches!(snapshot::decode(&not_state), Err(SnapshotError::Decode(_))));

    // The empty State (a fresh master's answer) round-trips too.
    let empty = State::empty();
    assert_eq!(
        snapshot::from_bytes(&snapshot::to_bytes(&empty).unwrap()).unwrap(),
        empty
    );
}

#[test]
fn a_zstd_bomb_is_capped() {
    // 1 GiB + 1 of zeros compresses to a few tens of KiB; decoding must stop at the cap, not allocate it all.
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1025 {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    let body = encoder.finish().unwrap();
    let blob = SnapshotBlob {
        schema: shoal_types::STATE_SCHEMA,
        pos: Pos::EMPTY,
        sha256: snapshot::sha256(&body),
        body,
    };
    assert_eq!(snapshot::decode(&blob), Err(SnapshotError::TooLarge));
}

/// Regression: a map length prefix of 2^35 entries (a flipped bit on the wire) is an error, not a 4 PB allocation
/// that aborts the process (imbl's own deserializer preallocated from the length prefix).
#[test]
fn a_huge_map_length_prefix_is_an_error_not_an_abort() {
    let state = State::empty();
    let header = postcard::to_allocvec(&(state.schema, state.pos, state.session)).unwrap();
    let mut bytes = codec::encode(&state).unwrap();
    // [version][schema, pos, session][nodes: length 0]... → replace the `nodes` length with a huge varint.
    let at = 1 + header.len();
    assert_eq!(bytes[at], 0, "the empty nodes map's length");
    bytes.splice(at..=at, [0xff, 0xff, 0xff, 0xff, 0x7f]);
    assert!(codec::decode::<State>(&bytes).is_err());
    assert!(snapshot::from_bytes(&bytes).is_err());
}
