//! Snapshot bootstrap over zenoh (§6): the master's side (encode once, reply with a header and ≤ 8 MiB chunks) and
//! the requester's side (collect, verify, decode, hand the State to the loop).

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_core::node::NodeInput;
use shoal_net::keys;
use shoal_net::zenoh::query::{ConsolidationMode, Query};
use shoal_net::zenoh::{Session, Wait};
use shoal_net::{Counters, decode_counted};
use shoal_types::wire::{SnapshotBlob, SnapshotChunk, SnapshotHeader, SnapshotRequest};
use shoal_types::{NodeId, SessionId, State, codec};

use crate::NetCounters;
use crate::shell::LoopInput;

pub const CHUNK_BYTES: usize = 8 << 20;
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// An encoding is reused while younger than this and at most [`REUSE_MAX_BEHIND`] events behind the head.
const REUSE_FOR: Duration = Duration::from_secs(2);
const REUSE_MAX_BEHIND: i64 = 1_000;

struct Cached {
    at: Instant,
    session: SessionId,
    blob: Arc<SnapshotBlob>,
}

/// The master's side. Concurrent requests share one encoding: the lock is held while encoding, so a second request
/// waits for the first one's result and reuses it.
#[derive(Default, Clone)]
pub(crate) struct SnapshotServer {
    cache: Arc<Mutex<Option<Cached>>>,
}

impl SnapshotServer {
    /// Answers on a thread of its own (encoding a large State takes a while), from `state`, an O(1) clone of the
    /// master's committed State.
    pub(crate) fn serve(&self, ns: String, session: SessionId, state: State, query: Query) {
        let cache = self.cache.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-snapshot".into())
            .spawn(move || {
                let Some(blob) = encoding(&cache, session, &state) else {
                    return;
                };
                reply(&ns, session, &blob, &query);
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the snapshot encoder");
        }
    }
}

fn encoding(cache: &Mutex<Option<Cached>>, session: SessionId, state: &State) -> Option<Arc<SnapshotBlob>> {
    let mut guard = match cache.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(cached) = guard.as_ref()
        && cached.session == session
        && cached.at.elapsed() < REUSE_FOR
        && cached.blob.pos.idx <= state.pos.idx
        && state.pos.idx - cached.blob.pos.idx <= REUSE_MAX_BEHIND
    {
        return Some(cached.blob.clone());
    }
    let started = Instant::now();
    match shoal_core::snapshot::encode(state) {
        Ok(blob) => {
            tracing::info!(
                pos = ?blob.pos,
                bytes = blob.body.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot encoded"
            );
            let blob = Arc::new(blob);
            *guard = Some(Cached {
                at: Instant::now(),
                session,
                blob: blob.clone(),
            });
            Some(blob)
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode a snapshot");
            None
        }
    }
}

fn reply(ns: &str, session: SessionId, blob: &SnapshotBlob, query: &Query) {
    let chunks: Vec<&[u8]> = blob.body.chunks(CHUNK_BYTES).collect();
    let header = SnapshotHeader {
        schema: blob.schema,
        wire: codec::WIRE_VERSION,
        master_session: session,
        pos: blob.pos,
        body_len: blob.body.len() as u64,
        sha256: blob.sha256,
        chunks: chunks.len() as u32,
    };
    let send = |key: String, bytes: Vec<u8>| query.reply(key, bytes).wait();
    let Ok(bytes) = codec::encode(&header) else { return };
    if let Err(error) = send(keys::snapshot(ns, session), bytes) {
        tracing::debug!(%error, "snapshot header reply failed");
        return;
    }
    for (index, chunk) in chunks.into_iter().enumerate() {
        let chunk = SnapshotChunk {
            index: index as u32,
            bytes: chunk.to_vec(),
        };
        let Ok(bytes) = codec::encode(&chunk) else { return };
        if let Err(error) = send(keys::snapshot_reply(ns, session, index as u32), bytes) {
            tracing::debug!(%error, "snapshot chunk reply failed");
            return;
        }
    }
}

/// The requester's side, on a thread of its own; the outcome reaches the loop as [`NodeInput::Snapshot`].
pub(crate) fn fetch(
    zenoh: Session,
    ns: &str,
    session: SessionId,
    requester: NodeId,
    inputs: SyncSender<LoopInput>,
    counters: Arc<NetCounters>,
) {
    let ns = ns.to_owned();
    let spawned = std::thread::Builder::new()
        .name("shoal-bootstrap".into())
        .spawn(move || {
            let started = Instant::now();
            let state = match fetch_blocking(&zenoh, &ns, session, requester, &counters.snapshot) {
                Ok(state) => {
                    tracing::info!(
                        pos = ?state.pos,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "snapshot received"
                    );
                    Some(Box::new(state))
                }
                Err(why) => {
                    tracing::warn!(%session, "snapshot bootstrap failed: {why}; retrying");
                    None
                }
            };
            // Must reach the loop even when its channel is busy: the follower waits for it.
            let _ = inputs.send(LoopInput::node(NodeInput::Snapshot { session, state }));
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the snapshot fetch");
    }
}

fn fetch_blocking(
    zenoh: &Session,
    ns: &str,
    session: SessionId,
    requester: NodeId,
    counters: &Counters,
) -> Result<State, String> {
    let request = codec::encode(&SnapshotRequest { requester }).map_err(|e| e.to_string())?;
    let header_key = keys::snapshot(ns, session);
    let replies = zenoh
        .get(keys::snapshot_queryable(ns, session))
        .payload(request)
        .consolidation(ConsolidationMode::None)
        .timeout(QUERY_TIMEOUT)
        .wait()
        .map_err(|e| e.to_string())?;
    let mut header: Option<SnapshotHeader> = None;
    let mut chunks: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    while let Ok(reply) = replies.recv() {
        let Ok(sample) = reply.result() else { continue };
        let bytes = sample.payload().to_bytes();
        if sample.key_expr().as_str() == header_key {
            header = decode_counted::<SnapshotHeader>(&bytes, &header_key, counters);
        } else if let Some(chunk) = decode_counted::<SnapshotChunk>(&bytes, &header_key, counters) {
            chunks.insert(chunk.index, chunk.bytes);
        }
        if let Some(h) = &header
            && chunks.len() as u64 >= u64::from(h.chunks)
        {
            break;
        }
    }
    let header = header.ok_or("no snapshot header (timeout, or the node is not master)")?;
    if header.master_session != session {
        return Err(format!("answered by session {}", header.master_session));
    }
    if (0..header.chunks).any(|i| !chunks.contains_key(&i)) || chunks.len() as u64 != u64::from(header.chunks) {
        return Err(format!("{} of {} chunks", chunks.len(), header.chunks));
    }
    let body_len = usize::try_from(header.body_len).map_err(|_| "body too large")?;
    if chunks.values().map(Vec::len).sum::<usize>() != body_len {
        return Err("chunks do not add up to the announced length".into());
    }
    let mut body = Vec::with_capacity(body_len);
    for chunk in chunks.into_values() {
        body.extend_from_slice(&chunk);
    }
    let blob = SnapshotBlob {
        schema: header.schema,
        pos: header.pos,
        sha256: header.sha256,
        body,
    };
    // Hash, decompression cap, schema and position are checked by the core (§6 step 4).
    shoal_core::snapshot::decode(&blob).map_err(|e| match e {
        shoal_core::snapshot::SnapshotError::Schema { .. } => format!("incompatible shoal version: {e}"),
        e => e.to_string(),
    })
}
