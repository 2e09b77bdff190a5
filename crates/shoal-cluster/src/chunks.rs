//! Chunks (SYSTEM.md §2.5, §4): the transient stream from a pipeline's last rank (or a worker, for an out-of-band
//! error) to the one API node that owns the request, on `t/<dest>/chunk`. They never pass through the node loop:
//! a chunk is published from the worker's thread and delivered from zenoh's callback straight into the sink the API
//! installed, so a token costs one hop and no queue. A chunk for this node itself is handed over in-process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use shoal_net::keys;
use shoal_net::zenoh::qos::{CongestionControl, Priority};
use shoal_net::zenoh::{Session, Wait};
use shoal_types::NodeId;
use shoal_types::chunk::Chunk;
use shoal_types::codec;
use shoal_types::ids::{CommandId, TaskId};
use shoal_types::wire::{Transient, TransientEnvelope};
use tokio::sync::watch;

use crate::View;

/// One chunk as the API's stream registry sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChunkMsg {
    /// The node that sent it.
    pub from: NodeId,
    pub command_id: CommandId,
    pub task_id: TaskId,
    /// Per task from 0; [`shoal_types::wire::SEQ_OOB`] for a worker's error chunk.
    pub seq: u32,
    pub chunk: Chunk,
}

/// Where this node's incoming chunks go (the API's registry); without one they are counted and dropped.
pub type ChunkSink = Arc<dyn Fn(ChunkMsg) + Send + Sync>;

#[derive(Clone)]
pub(crate) struct ChunkRoute {
    pub(crate) session: Session,
    pub(crate) ns: String,
    pub(crate) node: NodeId,
    pub(crate) sink: Arc<RwLock<Option<ChunkSink>>>,
    /// Chunks that found no sink.
    pub(crate) unrouted: Arc<AtomicU64>,
    pub(crate) view: watch::Receiver<View>,
    /// Fault injection (tests only): chunks with this `seq` are lost.
    pub(crate) drop_seq: Option<u32>,
}

impl ChunkRoute {
    pub(crate) fn deliver(&self, msg: ChunkMsg) {
        let sink = self.sink.read().unwrap_or_else(|e| e.into_inner()).clone();
        match sink {
            Some(sink) => sink(msg),
            // No API on this node (`--no-api`), or not started yet: nobody waits for it.
            None => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Sends a chunk to `to` (in-process when it is this node). Never retried (§4): a lost chunk shows up at the
    /// receiver as a gap in `seq`, which closes the stream with an error rather than garbling it.
    pub(crate) fn send(&self, to: NodeId, msg: ChunkMsg) {
        if self.drop_seq == Some(msg.seq) {
            tracing::warn!(seq = msg.seq, "fault injection: a chunk is dropped");
            return;
        }
        if to == self.node {
            self.deliver(msg);
            return;
        }
        // Chunks are matched by command id and seq, not by session (§4); the session only says where we stand.
        let session = self.view.borrow().status.session.unwrap_or_default();
        let envelope = TransientEnvelope {
            from: self.node,
            session,
            body: Transient::Chunk {
                command_id: msg.command_id,
                task_id: msg.task_id,
                seq: msg.seq,
                chunk: msg.chunk,
            },
        };
        let bytes = match codec::encode(&envelope) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "cannot encode a chunk");
                return;
            }
        };
        let result = self
            .session
            .put(keys::chunk(&self.ns, to), bytes)
            .priority(Priority::InteractiveHigh)
            .congestion_control(CongestionControl::Block)
            .express(true)
            .wait();
        if let Err(error) = result {
            tracing::warn!(%error, %to, "cannot publish a chunk");
        }
    }
}

/// Decodes what arrived on `t/<this node>/chunk`; anything else on that key is malformed.
pub(crate) fn from_envelope(envelope: TransientEnvelope) -> Option<ChunkMsg> {
    match envelope.body {
        Transient::Chunk {
            command_id,
            task_id,
            seq,
            chunk,
        } => Some(ChunkMsg {
            from: envelope.from,
            command_id,
            task_id,
            seq,
            chunk,
        }),
        _ => None,
    }
}
