//! The [`Store`] shell: one redb file holding the replica log, the checkpoints and a little metadata (§5.3).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use shoal_core::{apply_in_place, snapshot};
use shoal_types::wire::SnapshotBlob;
use shoal_types::{IndexedEvent, Pos, STATE_SCHEMA, State, codec};
use tracing::{info, warn};

use crate::StoreError;
use crate::policy::{checkpoint_due, checkpoints_to_drop, next_idx, prune_through, range_start, recovered_log_start};

/// `idx → [v][postcard(IndexedEvent)]`.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
/// `idx → snapshot::to_bytes(State at idx)`.
const CHECKPOINTS: TableDefinition<u64, &[u8]> = TableDefinition::new("checkpoints");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_STORE_SCHEMA: &str = "store_schema";
const META_MAX_TERM_SEEN: &str = "max_term_seen";
const META_LOG_START_IDX: &str = "log_start_idx";

/// The layout of the tables above. Bump when an older file would be misread; open refuses another value.
pub const STORE_SCHEMA: u64 = 1;

/// How durable a write must be before [`Store::append`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// fsync before returning: the master publishes only what is durable, so no follower holds an event the master
    /// could lose in a crash (§5.2 step 5).
    Fsync,
    /// redb's non-durable commit: visible at once, on disk at the next `Fsync` commit or a clean close; a crash loses
    /// it. Bulk loads (benchmarks, tests) use it; the cluster's followers fsync too, since a whole-cluster stop can
    /// leave no master to re-fetch from.
    Lazy,
}

/// The store's thresholds; the defaults are SYSTEM.md §13's, tests use small ones.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Checkpoint after this many applied events (bounds the replay at start-up to about this many events).
    pub checkpoint_every_events: u64,
    /// ...or after this long, if anything changed.
    pub checkpoint_every: Duration,
    /// Checkpoints kept; an older one is the fallback when the newest does not verify.
    pub keep_checkpoints: usize,
    /// Log entries retained before the newest checkpoint, for range fetches of lagging followers.
    pub retain_events: u64,
    /// Have redb verify every page checksum at open. redb trusts a cleanly closed file and panics on one altered
    /// behind its back (`tests/fuzz_file.rs` finds such panics within a few hundred cases); this turns that into an
    /// error, at the cost of reading the whole file once (BENCHMARKS.md: the 1M-event store's open).
    pub check_integrity_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            checkpoint_every_events: 10_000,
            checkpoint_every: Duration::from_secs(60),
            keep_checkpoints: 2,
            retain_events: 100_000,
            check_integrity_on_open: true,
        }
    }
}

/// What [`Store::open`] found and repaired, for the start-up log line and for tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// The checkpoint the State was loaded from; `None`: replayed from the empty State.
    pub checkpoint_idx: Option<u64>,
    /// Newer checkpoints that did not verify (idx, why), deleted.
    pub checkpoints_rejected: Vec<(u64, String)>,
    /// Log entries applied after the checkpoint.
    pub replayed: u64,
    /// The first log entry that did not decode or apply, and why; it and everything after it were deleted.
    pub truncated_from: Option<(u64, String)>,
    /// How many log entries were deleted.
    pub truncated: u64,
    /// The recovered position.
    pub pos: Pos,
    pub log_start_idx: u64,
    pub elapsed: Duration,
}

/// A node's durable store: the replica log of every event it applied, periodic checkpoints of State, and
/// `max_term_seen`, in one redb file. Owns the node's current State, which is always the fold of what is committed.
///
/// Synchronous by design: the caller runs it on a blocking thread (checkpoint encoding and fsync block).
pub struct Store {
    db: Database,
    /// The file, for [`Store::reopen`].
    path: PathBuf,
    cfg: StoreConfig,
    state: State,
    log_start_idx: u64,
    max_term_seen: u64,
    newest_checkpoint: Option<u64>,
    events_since_checkpoint: u64,
    last_checkpoint_at: Instant,
    poisoned: bool,
}

impl Store {
    /// Creates or opens the store file at `path` and recovers State: the newest checkpoint that verifies (older ones
    /// are the fallback), then the log after it through `apply`. The first entry that does not decode or apply is
    /// deleted with everything after it (the node re-fetches those events); so is a log that cannot follow any
    /// verified checkpoint, leaving the empty State. Bad content is reported in [`Recovery`], never a panic; the
    /// errors are redb's own and a store schema mismatch.
    pub fn open(path: impl AsRef<Path>, cfg: StoreConfig) -> Result<(Store, Recovery), StoreError> {
        let started = Instant::now();
        let path = path.as_ref().to_path_buf();
        let db = Database::builder()
            .set_check_integrity_on_open(cfg.check_integrity_on_open)
            .create(&path)?;
        let txn = db.begin_write()?;
        let found = recover(&txn)?;
        txn.commit()?;
        let recovery = Recovery {
            checkpoint_idx: found.checkpoint_idx,
            checkpoints_rejected: found.checkpoints_rejected,
            replayed: found.replayed,
            truncated_from: found.truncated_from,
            truncated: found.truncated,
            pos: found.state.pos,
            log_start_idx: found.log_start_idx,
            elapsed: started.elapsed(),
        };
        if recovery.truncated > 0 || !recovery.checkpoints_rejected.is_empty() {
            warn!(?recovery, "store recovered with repairs");
        } else {
            info!(pos = ?recovery.pos, checkpoint = ?recovery.checkpoint_idx, replayed = recovery.replayed,
                  elapsed_ms = recovery.elapsed.as_millis() as u64, "store opened");
        }
        let store = Store {
            db,
            path,
            cfg,
            state: found.state,
            log_start_idx: found.log_start_idx,
            max_term_seen: found.max_term_seen,
            newest_checkpoint: found.checkpoint_idx,
            events_since_checkpoint: found.replayed,
            last_checkpoint_at: Instant::now(),
            poisoned: false,
        };
        Ok((store, recovery))
    }

    /// The store's file (its directory is the node's data dir).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a failed commit left the store refusing writes until [`Store::reopen`].
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Closes the file and opens it again, recovering State from what is on disk: the way out of
    /// [`StoreError::Poisoned`] once the cause (a full disk) is gone. If the open fails the store stays poisoned, its
    /// file closed (reads fail too), and a later call tries again.
    pub fn reopen(&mut self) -> Result<Recovery, StoreError> {
        // redb refuses a second handle on an open file: the old one is closed first, a placeholder standing in.
        let placeholder = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        drop(std::mem::replace(&mut self.db, placeholder));
        self.poisoned = true;
        let (store, recovery) = Store::open(&self.path, self.cfg.clone())?;
        *self = store;
        Ok(recovery)
    }

    /// The State after every committed event.
    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn pos(&self) -> Pos {
        self.state.pos
    }

    /// The lowest idx the log still holds (or the next idx to append when it is empty): ranges starting earlier are
    /// [`StoreError::Pruned`].
    pub fn log_start_idx(&self) -> u64 {
        self.log_start_idx
    }

    /// The newest checkpoint on disk.
    pub fn newest_checkpoint(&self) -> Option<u64> {
        self.newest_checkpoint
    }

    /// Appends `events` (the next ones after [`Self::pos`], in order) in one write transaction (group commit).
    ///
    /// They are applied to a copy of State first: if any does not follow, its `ApplyError` is returned and neither
    /// State nor disk changes. State is replaced only once the commit succeeded, so it never runs ahead of the disk.
    /// A checkpoint that is due (and the pruning it allows) rides in the same transaction.
    pub fn append(&mut self, events: &[IndexedEvent], commit: Commit) -> Result<(), StoreError> {
        self.check_usable()?;
        if events.is_empty() {
            return Ok(());
        }
        let mut next = self.state.clone();
        for e in events {
            apply_in_place(&mut next, e)?;
        }
        let encoded = events
            .iter()
            .map(|e| Ok((e.idx, codec::encode(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let events_since = self.events_since_checkpoint.saturating_add(events.len() as u64);
        let checkpoint = if checkpoint_due(&self.cfg, events_since, self.last_checkpoint_at.elapsed()) {
            encode_checkpoint(&next)
        } else {
            None
        };

        let txn = self.begin(commit)?;
        {
            let mut log = txn.open_table(LOG)?;
            for (idx, bytes) in &encoded {
                log.insert(idx, bytes.as_slice())?;
            }
        }
        let log_start = match &checkpoint {
            Some((idx, bytes)) => self.write_checkpoint(&txn, *idx, bytes)?,
            None => self.log_start_idx,
        };
        self.commit(txn)?;

        self.state = next;
        self.log_start_idx = log_start;
        match checkpoint {
            Some((idx, _)) => self.checkpointed(idx),
            None => self.events_since_checkpoint = events_since,
        }
        Ok(())
    }

    /// Writes a checkpoint if one is due by time (the shell calls this on a timer so a quiet cluster still gets its
    /// 60 s checkpoint); returns whether it wrote one.
    pub fn checkpoint_if_due(&mut self) -> Result<bool, StoreError> {
        if checkpoint_due(
            &self.cfg,
            self.events_since_checkpoint,
            self.last_checkpoint_at.elapsed(),
        ) {
            return self.checkpoint_now().map(|written| written.is_some());
        }
        Ok(false)
    }

    /// Checkpoints the current State now (fsync'd), unless it already is one; returns the checkpoint's idx, `None`
    /// for the empty State. For shutdown and tests.
    pub fn checkpoint_now(&mut self) -> Result<Option<u64>, StoreError> {
        self.check_usable()?;
        let Ok(idx) = u64::try_from(self.state.pos.idx) else {
            return Ok(None);
        };
        if self.newest_checkpoint == Some(idx) {
            return Ok(Some(idx));
        }
        let bytes = snapshot::to_bytes(&self.state)?;
        let txn = self.begin(Commit::Fsync)?;
        let log_start = self.write_checkpoint(&txn, idx, &bytes)?;
        self.commit(txn)?;
        self.log_start_idx = log_start;
        self.checkpointed(idx);
        Ok(Some(idx))
    }

    /// Installs a snapshot's State (§6 step 5), atomically: one fsync'd transaction replaces every checkpoint with
    /// this State's, deletes the whole log (it belongs to the history being replaced) and sets `log_start_idx` to
    /// `pos.idx + 1`. A crash leaves either the old store or the new one.
    pub fn install_snapshot(&mut self, state: State) -> Result<(), StoreError> {
        self.check_usable()?;
        if state.schema != STATE_SCHEMA {
            return Err(StoreError::StateSchema {
                got: state.schema,
                want: STATE_SCHEMA,
            });
        }
        let checkpoint = match u64::try_from(state.pos.idx) {
            Ok(idx) => Some((idx, snapshot::to_bytes(&state)?)),
            Err(_) => None, // the empty State: nothing to checkpoint
        };
        let log_start = next_idx(&state);
        let txn = self.begin(Commit::Fsync)?;
        txn.delete_table(LOG)?;
        txn.delete_table(CHECKPOINTS)?;
        {
            txn.open_table(LOG)?;
            let mut checkpoints = txn.open_table(CHECKPOINTS)?;
            if let Some((idx, bytes)) = &checkpoint {
                checkpoints.insert(idx, bytes.as_slice())?;
            }
            txn.open_table(META)?.insert(META_LOG_START_IDX, log_start)?;
        }
        self.commit(txn)?;
        self.state = state;
        self.log_start_idx = log_start;
        self.newest_checkpoint = checkpoint.map(|(idx, _)| idx);
        self.events_since_checkpoint = 0;
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }

    /// Up to `max` events with idx > `after_idx`, in order, from the retained log: range fetches and `GET /events`.
    /// Empty when `after_idx` is at or past the head; [`StoreError::Pruned`] when the range starts before the log.
    pub fn events_after(&self, after_idx: i64, max: usize) -> Result<Vec<IndexedEvent>, StoreError> {
        let start = range_start(after_idx, self.log_start_idx).map_err(|log_start_idx| StoreError::Pruned {
            after_idx,
            log_start_idx,
        })?;
        let end = next_idx(&self.state);
        let want = usize::try_from(end.saturating_sub(start))
            .unwrap_or(usize::MAX)
            .min(max);
        if want == 0 {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut out = Vec::with_capacity(want);
        for item in log.range(start..end)?.take(want) {
            let (key, value) = item?;
            let expected = start + out.len() as u64;
            if key.value() != expected {
                return Err(StoreError::Corrupt {
                    idx: expected,
                    reason: "missing".into(),
                });
            }
            let event: IndexedEvent = codec::decode(value.value()).map_err(|e| StoreError::Corrupt {
                idx: expected,
                reason: e.to_string(),
            })?;
            if event.idx != expected {
                return Err(StoreError::Corrupt {
                    idx: expected,
                    reason: format!("holds idx {}", event.idx),
                });
            }
            out.push(event);
        }
        if out.len() < want {
            return Err(StoreError::Corrupt {
                idx: start + out.len() as u64,
                reason: "missing".into(),
            });
        }
        Ok(out)
    }

    /// The position after event `idx` in this store's history (its idx and the session that indexed it), for the
    /// range responder's chain check (§5.4): from State at the head, the log, or a checkpoint. `None` when `idx` is
    /// past the head; [`StoreError::Pruned`] when it is neither retained nor a checkpoint.
    pub fn pos_at(&self, idx: i64) -> Result<Option<Pos>, StoreError> {
        if idx > self.state.pos.idx {
            return Ok(None);
        }
        if idx == self.state.pos.idx {
            return Ok(Some(self.state.pos));
        }
        let Ok(key) = u64::try_from(idx) else {
            return Ok(Some(Pos::EMPTY));
        };
        let txn = self.db.begin_read()?;
        if key >= self.log_start_idx {
            let log = txn.open_table(LOG)?;
            let Some(value) = log.get(key)? else {
                return Err(StoreError::Corrupt {
                    idx: key,
                    reason: "missing".into(),
                });
            };
            let event: IndexedEvent = codec::decode(value.value()).map_err(|e| StoreError::Corrupt {
                idx: key,
                reason: e.to_string(),
            })?;
            return Ok(Some(Pos {
                idx,
                session: event.session,
            }));
        }
        let checkpoints = txn.open_table(CHECKPOINTS)?;
        if let Some(value) = checkpoints.get(key)?
            && let Ok(blob) = codec::decode::<SnapshotBlob>(value.value())
            && blob.pos.idx == idx
        {
            return Ok(Some(blob.pos));
        }
        Err(StoreError::Pruned {
            after_idx: idx,
            log_start_idx: self.log_start_idx,
        })
    }

    /// The highest election term this node has seen or voted in (§7).
    pub fn max_term_seen(&self) -> u64 {
        self.max_term_seen
    }

    /// Persists `term` as [`Self::max_term_seen`] durably (fsync) before returning: a node must not forget a term it
    /// acted on across a crash.
    pub fn set_max_term_seen(&mut self, term: u64) -> Result<(), StoreError> {
        self.check_usable()?;
        let txn = self.begin(Commit::Fsync)?;
        txn.open_table(META)?.insert(META_MAX_TERM_SEEN, term)?;
        self.commit(txn)?;
        self.max_term_seen = term;
        Ok(())
    }

    /// Closes the file, making any `Lazy` commits durable; dropping the Store does the same but ignores errors.
    pub fn close(self) -> Result<(), StoreError> {
        Ok(self.db.close()?)
    }

    fn check_usable(&self) -> Result<(), StoreError> {
        if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn begin(&self, commit: Commit) -> Result<WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(match commit {
            Commit::Fsync => Durability::Immediate,
            Commit::Lazy => Durability::None,
        })?;
        Ok(txn)
    }

    /// Commits; a failed commit may or may not be on disk, so the Store refuses further work (reopen recovers).
    fn commit(&mut self, txn: WriteTransaction) -> Result<(), StoreError> {
        txn.commit().map_err(|e| {
            self.poisoned = true;
            e.into()
        })
    }

    /// Writes the checkpoint at `idx`, drops the ones beyond `keep_checkpoints` and prunes the log behind the
    /// retained window, all in `txn`; returns the new log start.
    fn write_checkpoint(&self, txn: &WriteTransaction, idx: u64, bytes: &[u8]) -> Result<u64, StoreError> {
        let mut checkpoints = txn.open_table(CHECKPOINTS)?;
        checkpoints.insert(idx, bytes)?;
        let keys = checkpoints
            .iter()?
            .map(|item| item.map(|(k, _)| k.value()))
            .collect::<Result<Vec<u64>, _>>()?;
        for key in checkpoints_to_drop(&keys, self.cfg.keep_checkpoints) {
            checkpoints.remove(key)?;
        }
        let mut log_start = self.log_start_idx;
        if let Some(through) = prune_through(idx, self.cfg.retain_events)
            && through >= log_start
        {
            txn.open_table(LOG)?.retain_in(..=through, |_, _| false)?;
            log_start = through + 1;
            txn.open_table(META)?.insert(META_LOG_START_IDX, log_start)?;
        }
        Ok(log_start)
    }

    fn checkpointed(&mut self, idx: u64) {
        self.newest_checkpoint = Some(idx);
        self.events_since_checkpoint = 0;
        self.last_checkpoint_at = Instant::now();
    }
}

/// A checkpoint of `state` for the append path. An encoding failure only postpones the checkpoint (the log still
/// holds every event), so it is logged rather than failing the append.
fn encode_checkpoint(state: &State) -> Option<(u64, Vec<u8>)> {
    let idx = u64::try_from(state.pos.idx).ok()?;
    match snapshot::to_bytes(state) {
        Ok(bytes) => Some((idx, bytes)),
        Err(e) => {
            warn!(idx, error = %e, "checkpoint postponed: State does not encode");
            None
        }
    }
}

/// What `recover` found; `Store::open` turns it into a Store and a [`Recovery`].
struct Recovered {
    state: State,
    checkpoint_idx: Option<u64>,
    checkpoints_rejected: Vec<(u64, String)>,
    replayed: u64,
    truncated_from: Option<(u64, String)>,
    truncated: u64,
    log_start_idx: u64,
    max_term_seen: u64,
}

/// Start-up recovery inside the open's write transaction, so the repairs (rejected checkpoints and the truncated
/// tail deleted, `log_start_idx` reconciled) commit together.
fn recover(txn: &WriteTransaction) -> Result<Recovered, StoreError> {
    let max_term_seen;
    {
        let mut meta = txn.open_table(META)?;
        let schema = meta.get(META_STORE_SCHEMA)?.map(|v| v.value());
        match schema {
            Some(found) if found != STORE_SCHEMA => {
                return Err(StoreError::SchemaMismatch {
                    found,
                    want: STORE_SCHEMA,
                });
            }
            Some(_) => {}
            None => {
                meta.insert(META_STORE_SCHEMA, STORE_SCHEMA)?;
            }
        }
        max_term_seen = meta.get(META_MAX_TERM_SEEN)?.map_or(0, |v| v.value());
    }

    let mut checkpoints_rejected = Vec::new();
    let mut base = None;
    {
        let mut checkpoints = txn.open_table(CHECKPOINTS)?;
        let keys = checkpoints
            .iter()?
            .map(|item| item.map(|(k, _)| k.value()))
            .collect::<Result<Vec<u64>, _>>()?;
        for &key in keys.iter().rev() {
            let Some(value) = checkpoints.get(key)? else { continue };
            match verify_checkpoint(key, value.value()) {
                Ok(state) => {
                    base = Some((key, state));
                    break;
                }
                Err(reason) => checkpoints_rejected.push((key, reason)),
            }
        }
        for (key, _) in &checkpoints_rejected {
            checkpoints.remove(key)?;
        }
    }
    let checkpoint_idx = base.as_ref().map(|(idx, _)| *idx);
    let mut state = base.map_or_else(State::empty, |(_, state)| state);

    let mut log = txn.open_table(LOG)?;
    let mut replayed = 0;
    let mut truncated_from = None;
    for item in log.range(next_idx(&state)..)? {
        let (key, value) = item?;
        if let Err(reason) = replay_one(&mut state, key.value(), value.value()) {
            truncated_from = Some((key.value(), reason));
            break;
        }
        replayed += 1;
    }
    let mut truncated = 0;
    if let Some((from, _)) = &truncated_from {
        log.retain_in(*from.., |_, _| {
            truncated += 1;
            false
        })?;
    }
    let first = log.first()?.map(|(k, _)| k.value());
    let log_start_idx = recovered_log_start(first, next_idx(&state));
    let mut meta = txn.open_table(META)?;
    if meta.get(META_LOG_START_IDX)?.map(|v| v.value()) != Some(log_start_idx) {
        meta.insert(META_LOG_START_IDX, log_start_idx)?;
    }
    Ok(Recovered {
        state,
        checkpoint_idx,
        checkpoints_rejected,
        replayed,
        truncated_from,
        truncated,
        log_start_idx,
        max_term_seen,
    })
}

/// Decodes and verifies a checkpoint (schema, hash, decode, its position against its key).
fn verify_checkpoint(key: u64, bytes: &[u8]) -> Result<State, String> {
    let state = snapshot::from_bytes(bytes).map_err(|e| e.to_string())?;
    if i64::try_from(key).ok() != Some(state.pos.idx) {
        return Err(format!("checkpoint under key {key} holds State at {:?}", state.pos));
    }
    Ok(state)
}

/// Replays one log entry onto `state`; the error says why the log must be cut here.
fn replay_one(state: &mut State, key: u64, bytes: &[u8]) -> Result<(), String> {
    let event: IndexedEvent = codec::decode(bytes).map_err(|e| format!("does not decode: {e}"))?;
    if event.idx != key {
        return Err(format!("entry under key {key} holds idx {}", event.idx));
    }
    apply_in_place(state, &event).map_err(|e| e.to_string())
}
