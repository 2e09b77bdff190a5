//! The fetch's public types: what to fetch, from whom, how, and what came of it.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::partial::LocalIoError;
use crate::tls::ShareTls;

/// Default chunk: the unit of work handed to a peer and of resume.
pub const CHUNK_SIZE: u64 = 8 << 20;
/// Default bound on peers pulled from at once (one connection and one thread each).
pub const MAX_PARALLEL_PEERS: usize = 8;
/// Dialling a peer gets this long (the handshake then has [`crate::HANDSHAKE_TIMEOUT`]).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default longest silence while waiting for a response or reading a chunk: a stalled peer is dropped after it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A node that holds the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// For reports and logs (the node id).
    pub node: String,
    pub addr: SocketAddr,
}

/// The file to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// 64 hex digits.
    pub sha256: String,
    pub size: u64,
    /// The final path; `<path>.part` and `<path>.part.chunks` hold the fetch in progress.
    pub path: PathBuf,
}

/// How to fetch.
pub struct FetchOptions<'a> {
    /// Sent with every request; the server's authoriser decides (at most [`crate::MAX_TOKEN_LEN`] bytes).
    pub token: String,
    /// With a cluster key: TLS with this node's cluster certificate. Must match the servers' mode.
    pub tls: Option<ShareTls>,
    pub chunk_size: u64,
    pub parallel: usize,
    pub io_timeout: Duration,
    /// Called with (bytes done, total) as bytes arrive, from the worker threads. Bytes of a chunk that fails are
    /// taken back, and a single-peer retry starts again from 0.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
    /// Set to stop: the fetch returns [`FetchError::Cancelled`] and the partial file stays for the next call.
    pub cancel: Option<&'a AtomicBool>,
}

impl Default for FetchOptions<'_> {
    fn default() -> Self {
        FetchOptions {
            token: String::new(),
            tls: None,
            chunk_size: CHUNK_SIZE,
            parallel: MAX_PARALLEL_PEERS,
            io_timeout: IO_TIMEOUT,
            progress: None,
            cancel: None,
        }
    }
}

/// Why a peer was dropped for this fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    Connect(String),
    /// TLS refused (another cluster, no key) or no hello in time.
    Handshake(String),
    Refused,
    NotHeld,
    BadRange,
    /// The peer's file of that sha256 has another size.
    SizeMismatch {
        served: u64,
    },
    /// Reset, timeout or short read while transferring.
    Transfer(String),
    Protocol(String),
    /// Served bytes that do not match the file's sha256.
    Corrupt,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::Connect(e) => write!(f, "cannot connect: {e}"),
            DropReason::Handshake(e) => write!(f, "handshake failed: {e}"),
            DropReason::Refused => f.write_str("refused our token"),
            DropReason::NotHeld => f.write_str("does not hold the file"),
            DropReason::BadRange => f.write_str("answered a valid range as bad"),
            DropReason::SizeMismatch { served } => write!(f, "holds a file of {served} bytes under that sha256"),
            DropReason::Transfer(e) => write!(f, "transfer failed: {e}"),
            DropReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DropReason::Corrupt => f.write_str("served bytes that fail the sha256"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPeer {
    pub node: String,
    pub addr: SocketAddr,
    pub reason: DropReason,
}

impl fmt::Display for DroppedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.node, self.addr, self.reason)
    }
}

/// A fetch that installed the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchReport {
    /// Bytes received from peers in this call (re-fetched ones included).
    pub fetched_bytes: u64,
    /// Bytes already on disk from an earlier call, taken from the sidecar.
    pub resumed_bytes: u64,
    /// Bytes received per peer (node, bytes), in the order the peers were given.
    pub received_from: Vec<(String, u64)>,
    pub dropped: Vec<DroppedPeer>,
    /// Single-peer rounds run after the multi-peer round failed the hash (0 normally).
    pub single_peer_rounds: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid sha256 {0:?}: expected 64 hex digits")]
    InvalidSha256(String),
    #[error("invalid fetch options: {0}")]
    InvalidOptions(String),
    #[error(transparent)]
    Local(#[from] LocalIoError),
    #[error("cancelled after {fetched_bytes} bytes (the partial file is kept for the next fetch)")]
    Cancelled {
        fetched_bytes: u64,
        dropped: Vec<DroppedPeer>,
    },
    #[error("no peer could serve the file ({})", list(dropped))]
    NoPeer { dropped: Vec<DroppedPeer> },
    #[error("no peer served the file intact ({})", list(dropped))]
    Corrupt { dropped: Vec<DroppedPeer> },
}

impl FetchError {
    /// The peers dropped before the fetch failed.
    pub fn dropped(&self) -> &[DroppedPeer] {
        match self {
            FetchError::Cancelled { dropped, .. }
            | FetchError::NoPeer { dropped }
            | FetchError::Corrupt { dropped } => dropped,
            _ => &[],
        }
    }
}

fn list(dropped: &[DroppedPeer]) -> String {
    if dropped.is_empty() {
        return "no peers".into();
    }
    dropped.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}
