//! shoal's per-node durable store (SYSTEM.md §5.3, §6): the replica log of every applied event, periodic
//! checkpoints of State and `max_term_seen`, in one redb file (`<data_dir>/store.redb`).
//!
//! Every node keeps the log, not only the master, so any node can become master and serve range fetches. The store
//! is an imperative shell around `shoal_core::apply` and the snapshot codec: its rules (when to checkpoint, what to
//! prune, where the log starts) are pure functions in [`policy`].
//!
//! Guarantees:
//! * State is always the fold of the committed log (after the checkpoint it started from); it is replaced only after
//!   a commit succeeded.
//! * Start-up never trusts disk content: a checkpoint must verify (hash, schema, position) and every replayed entry
//!   must decode and apply, else it and everything after it are deleted and the node re-fetches them.
//! * A restart replays at most `checkpoint_every_events` events, so a node with a 1M-event log starts in well under
//!   a second.

mod error;
pub mod policy;
mod store;

pub use error::StoreError;
pub use store::{Commit, Recovery, STORE_SCHEMA, Store, StoreConfig};
