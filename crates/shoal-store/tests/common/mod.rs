//! Helpers shared by the store's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{Database, TableDefinition, WriteTransaction};
use shoal_core::testing::{EventGen, Mix};
use shoal_store::{Recovery, Store, StoreConfig};
use shoal_types::IndexedEvent;

/// The store's tables, named and typed as the store declares them, for tests that tamper with the file.
pub const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Small thresholds so a few hundred events exercise checkpoints and pruning; no time-based checkpoints.
pub fn small_cfg(every: u64, retain: u64) -> StoreConfig {
    StoreConfig {
        checkpoint_every_events: every,
        checkpoint_every: Duration::from_secs(3600),
        keep_checkpoints: 2,
        retain_events: retain,
        check_integrity_on_open: false,
    }
}

/// A config that never checkpoints, so the whole log is replayed from idx 0.
pub fn no_checkpoints() -> StoreConfig {
    small_cfg(u64::MAX, u64::MAX)
}

pub fn store_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.redb")
}

pub fn open(path: &Path, cfg: StoreConfig) -> (Store, Recovery) {
    Store::open(path, cfg).expect("store opens")
}

pub fn events(seed: u64, mix: Mix, n: usize) -> Vec<IndexedEvent> {
    EventGen::new(seed, mix).take_events(n)
}

/// Runs `f` in a write transaction on the raw redb file (the Store must be closed).
pub fn tamper(path: &Path, f: impl FnOnce(&WriteTransaction)) {
    let db = Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    f(&txn);
    txn.commit().unwrap();
}

/// Deterministic irregular batch sizes in `1..=max`.
pub fn batches(events: &[IndexedEvent], max: usize) -> Vec<&[IndexedEvent]> {
    let mut out = Vec::new();
    let mut rest = events;
    let mut i = 0usize;
    while !rest.is_empty() {
        i += 1;
        let size = (i * 7919 % max + 1).min(rest.len());
        let (head, tail) = rest.split_at(size);
        out.push(head);
        rest = tail;
    }
    out
}
