//! Shared by the transfer tests and the benchmark: generated files, servers on loopback, cluster certificates.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use shoal_net::cluster_key::ClusterKey;
use shoal_share::{FileServer, ServerOptions, ShareTls};

/// The token every test server accepts (unless a test says otherwise).
pub const TOKEN: &str = "instance-token";

/// Writes `size` pseudo-random bytes (xorshift from `seed`) to `path`; returns their sha256 as hex.
pub fn generate(path: &Path, size: u64, seed: u64) -> String {
    const PIECE: usize = 8 << 20;
    let mut file = File::create(path).unwrap();
    let mut sha = Sha256::new();
    let mut state = seed | 1;
    let mut buf = vec![0u8; PIECE];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap().min(PIECE);
        for word in buf[..n].chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        sha.update(&buf[..n]);
        file.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    file.sync_all().unwrap();
    hex::encode(sha.finalize())
}

/// A server on 127.0.0.1 holding `path` under `sha`, accepting [`TOKEN`] for it.
pub fn serve(path: PathBuf, sha: &str, tls: Option<ShareTls>) -> FileServer {
    let held = sha.to_owned();
    let catalogue: shoal_share::Catalogue = Arc::new(move |s: &str| (s == held).then(|| path.clone()));
    let authorise: shoal_share::Authoriser = Arc::new(|token: &str, _sha: &str| token == TOKEN);
    FileServer::start(
        "127.0.0.1:0".parse().unwrap(),
        ServerOptions::new(catalogue, authorise).with_tls(tls),
    )
    .unwrap()
}

/// This node's transfer TLS from `key` (node number `n` picks the node id).
pub fn tls(key: &ClusterKey, n: u8) -> ShareTls {
    let id = shoal_types::NodeId::from_random([0x80 | n; 16]).unwrap();
    ShareTls::new(&key.issue_node_cert(id).unwrap()).unwrap()
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// A request as it goes on the wire (see the crate's `wire` module), for tests that speak the protocol by hand.
pub fn raw_request(sha: &str, offset: u64, length: u64, token: &str) -> Vec<u8> {
    let mut request = vec![1u8];
    request.extend_from_slice(&shoal_share::parse_sha256(sha).unwrap());
    request.extend_from_slice(&offset.to_le_bytes());
    request.extend_from_slice(&length.to_le_bytes());
    request.extend_from_slice(&u16::try_from(token.len()).unwrap().to_le_bytes());
    request.extend_from_slice(token.as_bytes());
    request
}
