//! shoal's model-file transfer layer (issue 18): nodes fetch model files from the peers that hold them, at LAN speed,
//! on a bulk channel of their own (a dedicated TCP listener, never zenoh, so a transfer cannot delay control traffic).
//!
//! * [`FileServer`]: serves byte ranges of the files the node holds, looked up by sha256 through a catalogue the
//!   caller supplies (so what the node holds can change at any time). With a cluster key every connection is TLS 1.3
//!   with mutual certificates from the cluster CA; without one, every request carries a token the caller's
//!   authoriser must accept.
//! * [`fetch`]: one file from several peers at once, in chunks, resumable across calls, verified by sha256 before
//!   the atomic rename into place; a failing peer's chunks go to another and a corrupt peer is identified.
//!
//! Blocking std threads throughout: a transfer is a few long-lived connections, and the plain path's `sendfile`
//! (through `std::io::copy`) needs a blocking socket anyway. Linux (unix) only: positional file I/O.
//!
//! Depends on `shoal-net` (the cluster key's `NodeTls`), rustls (ring), sha2; not on the State, the worker or the
//! runner: the node decides what it holds, whom to authorise and which peers to ask.

mod fetch;
mod partial;
mod server;
mod spec;
mod tls;
mod wire;

pub use fetch::fetch;
pub use partial::{LocalIoError, MAX_CHUNKS};
pub use server::{
    Authoriser, Catalogue, FileServer, IDLE_TIMEOUT, MAX_UPLOAD_CONNECTIONS, SEND_TIMEOUT, ServerOptions, ServerStats,
};
pub use spec::{
    CHUNK_SIZE, CONNECT_TIMEOUT, DropReason, DroppedPeer, FetchError, FetchOptions, FetchReport, FileSpec, IO_TIMEOUT,
    MAX_PARALLEL_PEERS, Peer,
};
pub use tls::{HANDSHAKE_TIMEOUT, ShareTls, TlsSetupError};
pub use wire::{MAGIC, MAX_REQUEST_LENGTH, MAX_TOKEN_LEN, Status, VERSION, parse_sha256};

/// The partial file a fetch of `dest` writes (`<dest>.part`), e.g. to sweep or show it.
pub fn partial_path(dest: &std::path::Path) -> std::path::PathBuf {
    partial::part_path(dest)
}

/// The workspace's shared fuzzing helpers (`wire`'s fuzz tests).
#[cfg(test)]
#[path = "../../shoal-types/tests/fuzz_support/mod.rs"]
mod fuzz_support;
