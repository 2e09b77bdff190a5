//! shoal's per-node model store (SYSTEM.md §2.6, §10.2): finds the files a model card names, verifies them (size,
//! sha256) and fetches them from the card's sources when they are missing.
//!
//! * [`ModelStore::locate`] looks in the operator's read-only models directories (`--models-dir`) first, then in the
//!   store's own `<data_dir>/models/<model dir>/`; it never writes. Digests are cached in memory per (path, size,
//!   mtime), so asking again every worker tick reads an unchanged file once per process.
//! * [`ModelStore::fetch`] tries the card's sources in order (`path`, `pip`, `hf`; a `peer` entry is skipped: peers
//!   come first, through [`ModelStore::fetch_from_peers`] and a caller's [`PeerFetcher`], when the cluster's plan
//!   says so), reporting [`shoal_types::DownloadProgress`]. Files are produced in a scratch directory (the `hf`
//!   source's in partial files that a later fetch resumes) and reach their final names only by an atomic rename
//!   after verification.
//!
//! Pure rules (which files, what they must hash to, directory names, accepted pip requirements and hf repositories,
//! the Hub's URLs) are in [`plan`], apart from the IO, so they are unit-tested without a filesystem.

mod add;
pub mod derive;
mod error;
mod hf;
mod peers;
mod pip;
pub mod plan;
pub mod prompt;
mod store;
mod verify;

pub use add::{AddError, MAX_HEADER_BYTES, SourceSpec, read_local_header};
pub use error::{ModelError, SourceError, SourceFailure};
pub use peers::{PeerFetcher, PeerFile};
pub use store::{ModelFile, ModelFiles, ModelStore};
pub use verify::verify_digest_now;
