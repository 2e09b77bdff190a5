//! The store against real redb files: round trips, recovery from corrupt tails and checkpoints, range reads,
//! pruning, metadata, refused batches and snapshot installs.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use redb::ReadableTable;
use shoal_core::testing::{Mix, fold, last_pos};
use shoal_store::{Commit, Store, StoreConfig, StoreError};
use shoal_types::{Pos, SessionId, State, codec};

fn append_all(store: &mut Store, events: &[shoal_types::IndexedEvent], max_batch: usize, commit: Commit) {
    for batch in batches(events, max_batch) {
        store.append(batch, commit).unwrap();
    }
}

#[test]
fn round_trip_replays_only_the_tail_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(7, Mix::Chaos, 1_000);
    let (mut store, rec) = open(&path, small_cfg(100, 150));
    assert_eq!((rec.pos, rec.checkpoint_idx, rec.replayed), (Pos::EMPTY, None, 0));
    append_all(&mut store, &evs, 37, Commit::Fsync);
    let expected = fold(&State::empty(), &evs).unwrap();
    assert_eq!(store.state(), &expected);
    assert_eq!(store.pos(), last_pos(&evs));
    let newest = store.newest_checkpoint().unwrap();
    assert!(newest >= 900, "a checkpoint every ~100 events: newest {newest}");
    assert_eq!(
        store.log_start_idx(),
        newest - 150 + 1,
        "pruned behind the retained window"
    );
    drop(store);

    let (store, rec) = open(&path, small_cfg(100, 150));
    assert_eq!(store.state(), &expected);
    assert_eq!(rec.checkpoint_idx, Some(newest));
    assert_eq!(rec.replayed, 999 - newest);
    assert_eq!((rec.truncated, rec.truncated_from.clone()), (0, None));
    assert!(rec.checkpoints_rejected.is_empty());
    assert_eq!(rec.log_start_idx, newest - 150 + 1);
}

#[test]
fn round_trip_without_checkpoints_replays_everything_and_lazy_commits_survive_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(8, Mix::Typical, 600);
    let (mut store, _) = open(&path, no_checkpoints());
    append_all(&mut store, &evs, 64, Commit::Lazy);
    assert_eq!(
        store.events_after(-1, 10_000).unwrap(),
        evs,
        "lazy commits are visible at once"
    );
    store.close().unwrap();
    let (store, rec) = open(&path, no_checkpoints());
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
    assert_eq!((rec.checkpoint_idx, rec.replayed, rec.log_start_idx), (None, 600, 0));
}

#[test]
fn garbage_entry_truncates_the_log_there_and_appending_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(11, Mix::Chaos, 300);
    let (mut store, _) = open(&path, no_checkpoints());
    append_all(&mut store, &evs, 25, Commit::Lazy);
    drop(store);
    tamper(&path, |txn| {
        txn.open_table(LOG)
            .unwrap()
            .insert(250, [0xde, 0xad, 0xbe, 0xef].as_slice())
            .unwrap();
    });

    let (mut store, rec) = open(&path, no_checkpoints());
    let (from, reason) = rec.truncated_from.clone().unwrap();
    assert_eq!(from, 250);
    assert!(reason.contains("decode"), "{reason}");
    assert_eq!((rec.replayed, rec.truncated), (250, 50));
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..250]).unwrap());
    assert_eq!(
        store.events_after(240, 100).unwrap(),
        evs[241..250].to_vec(),
        "nothing past the cut is served"
    );
    store.append(&evs[250..], Commit::Fsync).unwrap();
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
    drop(store);
    let (store, rec) = open(&path, no_checkpoints());
    assert_eq!((rec.replayed, rec.truncated), (300, 0));
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
}

#[test]
fn wrong_idx_gap_or_diverged_entries_truncate_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(12, Mix::Chaos, 300);
    let (mut store, _) = open(&path, no_checkpoints());
    append_all(&mut store, &evs, 40, Commit::Lazy);
    drop(store);

    // An entry past the head whose chain link names another session.
    let mut diverged = evs[299].clone();
    diverged.idx = 300;
    diverged.prev = SessionId {
        term: 99,
        master: shoal_types::NodeId::from_bytes([0x42; 16]),
    };
    tamper(&path, |txn| {
        txn.open_table(LOG)
            .unwrap()
            .insert(300, codec::encode(&diverged).unwrap().as_slice())
            .unwrap();
    });
    let (store, rec) = open(&path, no_checkpoints());
    assert_eq!(
        rec.truncated_from.map(|(i, r)| (i, r.contains("diverged"))),
        Some((300, true))
    );
    assert_eq!((rec.replayed, rec.truncated), (300, 1));
    assert_eq!(store.pos(), last_pos(&evs));
    drop(store);

    // An entry holding another idx than its key.
    tamper(&path, |txn| {
        txn.open_table(LOG)
            .unwrap()
            .insert(200, codec::encode(&evs[210]).unwrap().as_slice())
            .unwrap();
    });
    let (store, rec) = open(&path, no_checkpoints());
    assert_eq!(rec.truncated_from.map(|(i, _)| i), Some(200));
    assert_eq!((rec.replayed, rec.truncated), (200, 100));
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..200]).unwrap());
    drop(store);

    // A hole: the entry after it is out of order.
    tamper(&path, |txn| {
        txn.open_table(LOG).unwrap().remove(150).unwrap();
    });
    let (mut store, rec) = open(&path, no_checkpoints());
    assert_eq!(
        rec.truncated_from.map(|(i, r)| (i, r.contains("out of order"))),
        Some((151, true))
    );
    assert_eq!((rec.replayed, rec.truncated), (150, 49));
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..150]).unwrap());
    store.append(&evs[150..], Commit::Fsync).unwrap();
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
}

/// Flips one byte in the middle of the checkpoint at `key`.
fn corrupt_checkpoint(path: &std::path::Path, key: u64) {
    tamper(path, |txn| {
        let mut table = txn.open_table(CHECKPOINTS).unwrap();
        let mut bytes = table.get(key).unwrap().unwrap().value().to_vec();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        table.insert(key, bytes.as_slice()).unwrap();
    });
}

fn checkpoint_keys(path: &std::path::Path) -> Vec<u64> {
    let mut keys = Vec::new();
    tamper(path, |txn| {
        let table = txn.open_table(CHECKPOINTS).unwrap();
        keys = table.iter().unwrap().map(|r| r.unwrap().0.value()).collect();
    });
    keys
}

#[test]
fn corrupt_newest_checkpoint_falls_back_to_the_older_one_then_to_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(13, Mix::Chaos, 450);
    let expected = fold(&State::empty(), &evs).unwrap();
    let cfg = || small_cfg(100, 1_000);
    let (mut store, _) = open(&path, cfg());
    append_all(&mut store, &evs, 30, Commit::Lazy);
    drop(store);
    let keys = checkpoint_keys(&path);
    assert_eq!(keys.len(), 2, "keeps the newest two: {keys:?}");

    corrupt_checkpoint(&path, keys[1]);
    let (store, rec) = open(&path, cfg());
    assert_eq!(store.state(), &expected);
    assert_eq!(rec.checkpoint_idx, Some(keys[0]));
    assert_eq!(
        rec.checkpoints_rejected.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        vec![keys[1]]
    );
    assert!(
        rec.checkpoints_rejected[0].1.contains("hash"),
        "{:?}",
        rec.checkpoints_rejected
    );
    assert_eq!(rec.replayed, 449 - keys[0]);
    drop(store);
    assert_eq!(
        checkpoint_keys(&path),
        vec![keys[0]],
        "the rejected checkpoint is deleted"
    );

    corrupt_checkpoint(&path, keys[0]);
    let (mut store, rec) = open(&path, cfg());
    assert_eq!(store.state(), &expected, "the unpruned log replays from idx 0");
    assert_eq!((rec.checkpoint_idx, rec.replayed), (None, 450));
    // Appending goes on and the next checkpoint is written normally.
    let more = {
        let mut g = shoal_core::testing::EventGen::new(13, Mix::Chaos);
        g.take_events(600)
    };
    store.append(&more[450..], Commit::Fsync).unwrap();
    assert_eq!(store.state(), &fold(&State::empty(), &more).unwrap());
    assert!(store.newest_checkpoint().is_some());
}

#[test]
fn no_verifiable_checkpoint_and_a_pruned_log_start_from_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(14, Mix::Chaos, 400);
    let (mut store, _) = open(&path, small_cfg(50, 60));
    append_all(&mut store, &evs, 20, Commit::Lazy);
    assert!(store.log_start_idx() > 0);
    drop(store);
    for key in checkpoint_keys(&path) {
        corrupt_checkpoint(&path, key);
    }
    let (mut store, rec) = open(&path, small_cfg(50, 60));
    assert_eq!(store.state(), &State::empty());
    assert_eq!(rec.checkpoints_rejected.len(), 2);
    assert!(rec.truncated > 0 && rec.truncated_from.is_some(), "{rec:?}");
    assert_eq!((rec.pos, rec.log_start_idx, store.log_start_idx()), (Pos::EMPTY, 0, 0));
    assert!(store.events_after(-1, 10).unwrap().is_empty());
    append_all(&mut store, &evs, 20, Commit::Fsync);
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
}

#[test]
fn range_reads_and_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(15, Mix::Typical, 500);
    let (mut store, _) = open(&path, small_cfg(50, 100));
    append_all(&mut store, &evs, 10, Commit::Lazy);
    let start = store.log_start_idx();
    let newest = store.newest_checkpoint().unwrap();
    assert_eq!(start, newest - 100 + 1);
    let s = start as usize;
    let after = start as i64 - 1;
    assert_eq!(store.events_after(after, 10).unwrap(), evs[s..s + 10].to_vec());
    assert_eq!(store.events_after(after, 10_000).unwrap(), evs[s..].to_vec());
    assert_eq!(store.events_after(498, 10).unwrap(), evs[499..].to_vec());
    assert!(store.events_after(499, 10).unwrap().is_empty(), "at the head");
    assert!(store.events_after(1_000, 10).unwrap().is_empty(), "past the head");
    assert!(store.events_after(after, 0).unwrap().is_empty());
    assert!(matches!(
        store.events_after(after - 1, 10),
        Err(StoreError::Pruned { log_start_idx, .. }) if log_start_idx == start
    ));
    assert!(matches!(store.events_after(-1, 10), Err(StoreError::Pruned { .. })));

    // Chain positions: the head, the log, a checkpoint, past the head, pruned.
    assert_eq!(store.pos_at(499).unwrap(), Some(last_pos(&evs)));
    assert_eq!(store.pos_at(start as i64).unwrap(), Some(last_pos(&evs[..=s])));
    assert_eq!(store.pos_at(500).unwrap(), None);
    assert_eq!(store.pos_at(-1).unwrap(), Some(Pos::EMPTY));
    assert!(matches!(store.pos_at(0), Err(StoreError::Pruned { .. })));
    drop(store);
    let (store, rec) = open(&path, small_cfg(50, 100));
    assert_eq!(rec.log_start_idx, start, "log_start_idx persists");
    assert_eq!(store.events_after(after, 10_000).unwrap(), evs[s..].to_vec());
}

#[test]
fn pos_at_reads_a_checkpoint_below_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(16, Mix::Chaos, 210);
    let (mut store, _) = open(&path, small_cfg(50, 0));
    for batch in evs[..200].chunks(25) {
        store.append(batch, Commit::Lazy).unwrap();
    }
    store.append(&evs[200..], Commit::Lazy).unwrap();
    assert_eq!(store.newest_checkpoint(), Some(199));
    assert_eq!(store.log_start_idx(), 200, "retain 0 prunes through the checkpoint");
    assert_eq!(store.pos_at(199).unwrap(), Some(last_pos(&evs[..200])));
    assert_eq!(store.pos_at(200).unwrap(), Some(last_pos(&evs[..201])));
    assert!(matches!(store.pos_at(198), Err(StoreError::Pruned { .. })));
}

#[test]
fn max_term_seen_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let (mut store, _) = open(&path, StoreConfig::default());
    assert_eq!(store.max_term_seen(), 0);
    store.set_max_term_seen(7).unwrap();
    assert_eq!(store.max_term_seen(), 7);
    drop(store);
    let (store, _) = open(&path, StoreConfig::default());
    assert_eq!(store.max_term_seen(), 7);
}

#[test]
fn a_batch_that_does_not_follow_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(17, Mix::Chaos, 30);
    let (mut store, _) = open(&path, small_cfg(5, 100));
    store.append(&evs[..10], Commit::Fsync).unwrap();
    let before = store.state().clone();
    let checkpoint = store.newest_checkpoint();

    // Valid first event, then a gap: the whole batch is refused.
    let gap = [evs[10].clone(), evs[12].clone()];
    assert!(matches!(store.append(&gap, Commit::Fsync), Err(StoreError::Apply(_))));
    // A replay of old events.
    assert!(matches!(
        store.append(&evs[5..12], Commit::Fsync),
        Err(StoreError::Apply(_))
    ));
    // A diverged chain link.
    let mut diverged = evs[10].clone();
    diverged.prev = SessionId {
        term: 77,
        master: shoal_types::NodeId::from_bytes([0x77; 16]),
    };
    assert!(matches!(
        store.append(&[diverged], Commit::Fsync),
        Err(StoreError::Apply(_))
    ));

    assert_eq!(store.state(), &before);
    assert_eq!(store.newest_checkpoint(), checkpoint);
    assert_eq!(store.events_after(-1, 100).unwrap(), evs[..10].to_vec());
    store.append(&evs[10..], Commit::Fsync).unwrap();
    drop(store);
    let (store, rec) = open(&path, small_cfg(5, 100));
    assert_eq!(rec.truncated, 0);
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
}

#[test]
fn install_snapshot_replaces_state_checkpoints_and_log_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let (mut store, _) = open(&path, small_cfg(40, 1_000));
    // A history that will be replaced (another seed: a diverged node).
    append_all(&mut store, &events(1, Mix::Chaos, 150), 20, Commit::Fsync);
    assert!(store.newest_checkpoint().is_some());

    let evs = events(18, Mix::Chaos, 300);
    let snap = fold(&State::empty(), &evs[..200]).unwrap();
    store.install_snapshot(snap.clone()).unwrap();
    assert_eq!(store.state(), &snap);
    assert_eq!((store.log_start_idx(), store.newest_checkpoint()), (200, Some(199)));
    assert!(matches!(store.events_after(198, 10), Err(StoreError::Pruned { .. })));
    assert!(store.events_after(199, 10).unwrap().is_empty());
    assert_eq!(store.pos_at(199).unwrap(), Some(last_pos(&evs[..200])));
    drop(store);
    assert_eq!(
        checkpoint_keys(&path),
        vec![199],
        "older checkpoints belong to the replaced history"
    );

    let (mut store, rec) = open(&path, small_cfg(40, 1_000));
    assert_eq!(
        (rec.checkpoint_idx, rec.replayed, rec.log_start_idx),
        (Some(199), 0, 200)
    );
    store.append(&evs[200..], Commit::Fsync).unwrap();
    assert_eq!(store.state(), &fold(&State::empty(), &evs).unwrap());
    assert_eq!(store.events_after(199, 1_000).unwrap(), evs[200..].to_vec());

    // Installing the empty State resets the store.
    store.install_snapshot(State::empty()).unwrap();
    assert_eq!(
        (store.pos(), store.log_start_idx(), store.newest_checkpoint()),
        (Pos::EMPTY, 0, None)
    );
    drop(store);
    let (store, rec) = open(&path, small_cfg(40, 1_000));
    assert_eq!((rec.pos, rec.replayed, rec.checkpoint_idx), (Pos::EMPTY, 0, None));
    assert_eq!(store.state(), &State::empty());
}

#[test]
fn install_snapshot_refuses_another_schema() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = open(&store_path(&dir), StoreConfig::default());
    let mut s = State::empty();
    s.schema += 1;
    assert!(matches!(store.install_snapshot(s), Err(StoreError::StateSchema { .. })));
}

#[test]
fn checkpoints_by_time_and_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let evs = events(19, Mix::Typical, 50);
    let cfg = StoreConfig {
        checkpoint_every: Duration::ZERO,
        ..small_cfg(u64::MAX, 1_000)
    };
    let (mut store, _) = open(&path, cfg);
    assert!(!store.checkpoint_if_due().unwrap(), "nothing changed");
    store.append(&evs[..10], Commit::Lazy).unwrap();
    assert_eq!(store.newest_checkpoint(), Some(9), "the timer is due at once");
    assert!(!store.checkpoint_if_due().unwrap(), "nothing changed since");
    drop(store);

    let (mut store, _) = open(&path, no_checkpoints());
    store.append(&evs[10..], Commit::Lazy).unwrap();
    assert_eq!(store.newest_checkpoint(), Some(9));
    assert_eq!(store.checkpoint_now().unwrap(), Some(49));
    drop(store);
    let (_, rec) = open(&path, no_checkpoints());
    assert_eq!((rec.checkpoint_idx, rec.replayed), (Some(49), 0));
}

#[test]
fn another_store_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    drop(open(&path, StoreConfig::default()));
    tamper(&path, |txn| {
        txn.open_table(META).unwrap().insert("store_schema", 99).unwrap();
    });
    assert!(matches!(
        Store::open(&path, StoreConfig::default()),
        Err(StoreError::SchemaMismatch { found: 99, want: 1 })
    ));
}
