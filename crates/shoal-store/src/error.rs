//! The store's one error type.

use shoal_core::ApplyError;
use shoal_core::snapshot::SnapshotError;
use shoal_types::EncodeError;

/// Everything a [`crate::Store`] operation can fail with. Bad disk content is an error (or, at open, a
/// [`crate::Recovery`] entry), never a panic.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed (I/O, a corrupt file, a lock held by another process). Boxed: redb's error is large and this
    /// path is cold.
    #[error("store database: {0}")]
    Db(Box<redb::Error>),
    /// The events do not follow the State (wrong idx or a diverged chain); nothing was written.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The file was written by a store layout this build does not understand.
    #[error("store schema {found} is not this build's {want}: incompatible shoal version")]
    SchemaMismatch { found: u64, want: u64 },
    /// A State of another schema was offered to [`crate::Store::install_snapshot`].
    #[error("State schema {got} is not this build's {want}: incompatible shoal version")]
    StateSchema { got: u16, want: u16 },
    /// A retained log entry is missing or does not decode. Open truncates such entries after the checkpoint it
    /// starts from; this is a range read finding one in the retained prefix before it, which open does not read.
    #[error("log entry {idx} is corrupt: {reason}")]
    Corrupt { idx: u64, reason: String },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The requested range starts before the retained log: the requester needs a snapshot (§5.4, §6).
    #[error("events after {after_idx} are pruned; the log starts at {log_start_idx}")]
    Pruned { after_idx: i64, log_start_idx: u64 },
    /// A commit failed earlier. redb refuses further writes after a failed commit and the failed commit may or may
    /// not be on disk, so the in-memory State can no longer be trusted to match: reopen the store.
    #[error("the store failed to commit earlier; reopen it")]
    Poisoned,
}

macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        })*
    };
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);
