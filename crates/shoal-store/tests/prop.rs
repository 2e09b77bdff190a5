//! Property tests: whatever the history (snapshot install at any point, any batching, restarts anywhere), the
//! reopened store's State is the fold of exactly the events appended.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use proptest::prelude::*;
use shoal_core::snapshot;
use shoal_core::testing::{Mix, fold};
use shoal_store::Commit;
use shoal_types::State;

/// Irregular batches of the given sizes (cycled).
fn append_in(store: &mut shoal_store::Store, events: &[shoal_types::IndexedEvent], sizes: &[usize], commit: Commit) {
    let mut rest = events;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (head, tail) = rest.split_at((*size).min(rest.len()));
        store.append(head, commit).unwrap();
        rest = tail;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn install_then_append_then_reopen_is_the_fold(
        seed in any::<u64>(),
        n in 1usize..400,
        cut in 0.0f64..=1.0,
        sizes in prop::collection::vec(1usize..60, 1..8),
        every in 1u64..80,
        retain in 0u64..120,
    ) {
        let k = ((n as f64) * cut) as usize;
        let evs = events(seed, Mix::Chaos, n);
        let expected = fold(&State::empty(), &evs).unwrap();
        // The State a snapshot bootstrap would deliver: folded, then through the snapshot codec.
        let at_k = fold(&State::empty(), &evs[..k]).unwrap();
        let installed = snapshot::from_bytes(&snapshot::to_bytes(&at_k).unwrap()).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let (mut store, _) = open(&path, small_cfg(every, retain));
        store.install_snapshot(installed).unwrap();
        append_in(&mut store, &evs[k..], &sizes, Commit::Lazy);
        prop_assert_eq!(store.state(), &expected);
        store.close().unwrap();

        let (store, rec) = open(&path, small_cfg(every, retain));
        prop_assert_eq!(rec.truncated, 0);
        prop_assert_eq!(store.state(), &expected);
        let start = store.log_start_idx() as usize;
        prop_assert!(start >= k, "the log before the snapshot is gone");
        prop_assert_eq!(store.events_after(start as i64 - 1, 1_000).unwrap(), evs[start..].to_vec());
    }

    #[test]
    fn append_restart_append_is_the_fold(
        seed in any::<u64>(),
        n in 1usize..400,
        cut in 0.0f64..=1.0,
        sizes in prop::collection::vec(1usize..60, 1..8),
        every in 1u64..80,
        retain in 0u64..120,
        fsync in any::<bool>(),
    ) {
        let k = ((n as f64) * cut) as usize;
        let evs = events(seed, Mix::Chaos, n);
        let commit = if fsync { Commit::Fsync } else { Commit::Lazy };
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);

        let (mut store, _) = open(&path, small_cfg(every, retain));
        append_in(&mut store, &evs[..k], &sizes, commit);
        drop(store);
        let (mut store, rec) = open(&path, small_cfg(every, retain));
        prop_assert_eq!(rec.truncated, 0);
        prop_assert_eq!(store.state(), &fold(&State::empty(), &evs[..k]).unwrap());
        append_in(&mut store, &evs[k..], &sizes, commit);
        drop(store);
        let (store, rec) = open(&path, small_cfg(every, retain));
        prop_assert_eq!(rec.truncated, 0);
        prop_assert!(rec.replayed < every, "a checkpoint bounds the replay: {} >= {}", rec.replayed, every);
        prop_assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
    }
}
