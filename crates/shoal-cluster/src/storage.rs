//! A store that cannot write (a full disk, issue 15 item 4) is survived, not fatal: the node loop records the fault,
//! tells the core (a master steps down, nobody campaigns or votes while the term cannot be persisted), keeps what it
//! could not write in memory, and probes the data dir until a write succeeds. Then it reopens the store (redb refuses
//! writes after a failed commit) and writes what it held, or its current State as a snapshot, and tells the core.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use shoal_store::{Commit, Store};
use shoal_types::{IndexedEvent, State};

/// How often a node whose store failed checks whether it can write again.
pub(crate) const STORAGE_PROBE_EVERY: Duration = Duration::from_secs(1);
/// What the probe writes and fsyncs (then deletes) in the data dir: room for a few commits, so a disk with a few
/// bytes free is not taken for one that recovered.
const PROBE_BYTES: usize = 1 << 20;
/// The probe's file, in the data dir next to the store.
const PROBE_FILE: &str = ".shoal-write-probe";
/// Applied events held in memory while the store fails (a follower's). Past this they are dropped and the State
/// itself is written as a snapshot on recovery (the log then restarts after it).
const HELD_EVENTS: usize = 100_000;

/// Why the node's store cannot write, for `/status` (`storage`) and the logs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct StorageFault {
    /// The store's error, e.g. "master commit failed: ... No space left on device".
    pub error: String,
    /// When the first failure of this episode happened (unix ms).
    pub since_ms: u64,
}

/// The node loop's view of its store's health, and what it holds until the store writes again.
pub(crate) struct Storage {
    fault: Option<StorageFault>,
    last_probe: Instant,
    /// Applied events not yet written, in order.
    held: Vec<IndexedEvent>,
    /// A snapshot installed in memory but not yet on disk; the held events follow it.
    snapshot: Option<State>,
    /// Held events were dropped (more than [`HELD_EVENTS`]): recovery writes the current State instead.
    overflowed: bool,
}

impl Storage {
    pub(crate) fn new() -> Self {
        Storage {
            fault: None,
            last_probe: Instant::now(),
            held: Vec::new(),
            snapshot: None,
            overflowed: false,
        }
    }

    pub(crate) fn fault(&self) -> Option<&StorageFault> {
        self.fault.as_ref()
    }

    pub(crate) fn failed(&self) -> bool {
        self.fault.is_some()
    }

    /// Records a failure; true when it starts a new episode (the caller logs it and tells the core).
    pub(crate) fn fail(&mut self, error: String, now_ms: u64) -> bool {
        if self.fault.is_some() {
            return false;
        }
        self.fault = Some(StorageFault {
            error,
            since_ms: now_ms,
        });
        self.last_probe = Instant::now();
        true
    }

    /// Keeps applied events that could not be written.
    pub(crate) fn hold(&mut self, events: Vec<IndexedEvent>) {
        if self.overflowed {
            return;
        }
        self.held.extend(events);
        if self.held.len() > HELD_EVENTS {
            self.held = Vec::new();
            self.overflowed = true;
        }
    }

    /// Keeps a snapshot that could not be installed; what was held before it belongs to the replaced history.
    pub(crate) fn hold_snapshot(&mut self, state: State) {
        self.held.clear();
        self.overflowed = false;
        self.snapshot = Some(state);
    }

    pub(crate) fn probe_due(&self) -> bool {
        self.failed() && self.last_probe.elapsed() >= STORAGE_PROBE_EVERY
    }

    /// Tries to leave the failed state: a probe write in the data dir, a reopen of the store, then what was held
    /// (or `current`, the node's State, as a snapshot when the held events do not bring the store to it), and
    /// `max_term` if the store's is older. On success the fault is cleared; on failure everything stays held.
    pub(crate) fn try_recover(&mut self, store: &mut Store, current: &State, max_term: u64) -> Result<(), String> {
        self.last_probe = Instant::now();
        let dir = store.path().parent().unwrap_or(Path::new(".")).to_path_buf();
        probe(&dir).map_err(|e| format!("probe write in {}: {e}", dir.display()))?;
        store.reopen().map_err(|e| format!("reopening the store: {e}"))?;
        if max_term > store.max_term_seen() {
            store.set_max_term_seen(max_term).map_err(|e| e.to_string())?;
        }
        if let Some(snapshot) = &self.snapshot {
            store.install_snapshot(snapshot.clone()).map_err(|e| e.to_string())?;
        }
        let follows = self
            .held
            .first()
            .is_some_and(|first| i64::try_from(first.idx).is_ok_and(|idx| idx == store.pos().idx + 1));
        if follows
            && !self.overflowed
            && let Err(error) = store.append(&self.held, Commit::Fsync)
        {
            // Events that do not follow what reached the disk (a failed commit that landed after all): the State
            // itself is written below. A disk error poisons the store and fails here.
            if store.is_poisoned() {
                return Err(error.to_string());
            }
            tracing::warn!(%error, "held events not appended; writing the State instead");
        }
        if store.pos() != current.pos {
            store.install_snapshot(current.clone()).map_err(|e| e.to_string())?;
        }
        self.held = Vec::new();
        self.snapshot = None;
        self.overflowed = false;
        self.fault = None;
        Ok(())
    }
}

/// Writes and fsyncs [`PROBE_BYTES`] in `dir`, then deletes them.
fn probe(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_starts_one_episode_and_the_probe_waits_its_interval() {
        let mut storage = Storage::new();
        assert!(!storage.failed() && !storage.probe_due());
        assert!(storage.fail("disk full".into(), 5));
        assert!(!storage.fail("again".into(), 6), "one episode");
        assert_eq!(
            storage.fault().map(|f| (f.error.as_str(), f.since_ms)),
            Some(("disk full", 5))
        );
        assert!(!storage.probe_due(), "not before {STORAGE_PROBE_EVERY:?}");
    }

    #[test]
    fn held_events_past_the_bound_are_dropped_for_a_snapshot() {
        let mut storage = Storage::new();
        let event = |idx: u64| IndexedEvent {
            idx,
            session: shoal_types::SessionId::default(),
            prev: shoal_types::SessionId::default(),
            time_ms: 0,
            origin: None,
            event: shoal_types::Event::NodeTimedOut {
                node: shoal_types::NodeId::from_bytes([1; 16]),
                reason: String::new(),
            },
        };
        storage.hold((0..10).map(event).collect());
        assert_eq!(storage.held.len(), 10);
        storage.hold((10..10 + HELD_EVENTS as u64).map(event).collect());
        assert!(storage.overflowed && storage.held.is_empty());
        storage.hold_snapshot(State::empty());
        assert!(!storage.overflowed && storage.snapshot.is_some());
    }

    #[test]
    fn the_probe_writes_and_removes_its_file() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        probe(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(!dir.path().join(PROBE_FILE).exists());
        assert!(probe(&dir.path().join("missing")).is_err());
    }
}
