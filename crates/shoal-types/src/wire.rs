//! Messages that cross the network between nodes (SYSTEM.md §4, §5, §6, §7) and the snapshot form on disk.

use serde::{Deserialize, Serialize};

use crate::chunk::Chunk;
use crate::command::RejectReason;
use crate::event::{Event, IndexedEvent};
use crate::ids::{CommandId, NodeId, Origin, Pos, SessionId, TaskId};
use crate::params::GenerationParams;

/// `seq` of an `Error` chunk sent by a worker rather than the last rank: accepted at any point of a stream.
pub const SEQ_OOB: u32 = u32::MAX;

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TransientEnvelope {
    pub from: NodeId,
    pub session: SessionId,
    pub body: Transient,
}

/// Never touches State or the log, carries no idx, is never retried by the transport.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Transient {
    Chunk {
        command_id: CommandId,
        task_id: TaskId,
        seq: u32,
        chunk: Chunk,
    },
    Acked {
        origin: Origin,
        through_seq: u64,
    },
    CommandRejected {
        command_id: CommandId,
        reason: RejectReason,
    },
    Trace {
        task_id: TaskId,
        rank: u32,
        spans: Vec<Span>,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Span {
    pub name: String,
    pub start_us: u64,
    pub duration_us: u64,
}

/// A producer's event on its way to the master (`s/<S>/up`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct UpMsg {
    pub origin: Origin,
    /// Within the current session, from 0.
    pub seq: u64,
    /// The oldest seq the producer still holds; lets the master skip seqs the producer dropped.
    pub floor: u64,
    pub event: Event,
}

/// From the master to every follower (`s/<S>/down`).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum DownMsg {
    Event(Box<IndexedEvent>),
    /// Sent when nothing else was published for 500 ms, so a follower learns it is behind.
    Head {
        idx: i64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RangeRequest {
    /// The requester's position.
    pub after: Pos,
    /// At most 10,000.
    pub max: u32,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum RangeReply {
    /// At most 1,000 events, in order.
    Events {
        events: Vec<IndexedEvent>,
    },
    End {
        head: i64,
    },
    /// The requester's position is not on the master's chain: bootstrap from a snapshot.
    Diverged,
    /// The requester's position precedes the master's retained log: bootstrap from a snapshot.
    Pruned,
    NotMaster,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub requester: NodeId,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub schema: u16,
    pub wire: u8,
    pub master_session: SessionId,
    pub pos: Pos,
    pub body_len: u64,
    /// sha256 of the compressed body.
    pub sha256: [u8; 32],
    pub chunks: u32,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub index: u32,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// A whole snapshot in one value: a store checkpoint, or a snapshot reassembled from its chunks.
/// `body = zstd(postcard(State))`; `sha256` covers the body.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBlob {
    pub schema: u16,
    pub pos: Pos,
    pub sha256: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

impl std::fmt::Debug for SnapshotBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotBlob")
            .field("schema", &self.schema)
            .field("pos", &self.pos)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Candidate {
    pub node: NodeId,
    /// `last.session` is the session of the last applied event.
    pub last: Pos,
    /// 1 with `--force-master`.
    pub priority: u8,
    /// Master of `last.session` and still serving.
    pub incumbent: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ElectionMsg {
    Campaign { term: u64, candidate: Candidate },
}

/// Rank 0's worker asks the API node that owns a task for its content (issue 15), on `t/<api node>/prompt`.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PromptRequest {
    /// The generation command whose content is wanted.
    pub command_id: CommandId,
    /// The node asking, for the API node's log.
    pub requester: NodeId,
}

/// The API node's answer to a [`PromptRequest`]. Transient: never logged, never written to disk.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum PromptReply {
    /// The full request and the salt of its digest (`PromptRef::digest`).
    Found {
        salt: [u8; 16],
        params: Box<GenerationParams>,
    },
    /// The API node holds no content for the command (its stream ended, or the node restarted).
    Missing,
}
