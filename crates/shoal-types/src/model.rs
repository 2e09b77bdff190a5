//! Instances, shards, runners, deployments, generation tasks and node facts (SYSTEM.md §2.3, §3.1).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::card::{Backend, ModelCard};
use crate::ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, RunnerId, TaskId};
use crate::params::{GenerationParams, PromptRef};

/// A model loaded on a set of nodes, one runner per node, each holding a contiguous layer range.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Instance {
    pub id: InstanceId,
    /// The deployment that keeps this instance placed; `None` for an explicit, unmanaged instance.
    pub deployment: Option<DeploymentId>,
    /// The card is embedded once so every node reads the same model facts even for custom cards.
    pub model: ModelCard,
    pub assignments: ShardAssignments,
    /// Highest failure attempt reported per runner; 5 makes the master delete the instance.
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub runner_failures: OrdMap<RunnerId, u32>,
    pub created_ms: u64,
    /// The secret a runner of this instance proves in its data-plane handshake (SYSTEM.md §10.4), chosen by the
    /// master. Never shown in JSON; an instance created through the API gets a fresh one.
    #[serde(default)]
    pub token: InstanceToken,
}

/// 16 secret bytes. JSON (`/state`, `/events`, the instances API) shows `"redacted"` and reads back as zero bytes;
/// the compact encoding (the log, snapshots, the wire between nodes) carries the bytes. `Debug` never shows them.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct InstanceToken(pub [u8; 16]);

impl fmt::Debug for InstanceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceToken(..)")
    }
}

/// What JSON shows in place of a token.
const REDACTED: &str = "redacted";

impl Serialize for InstanceToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(REDACTED)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for InstanceToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            serde::de::IgnoredAny::deserialize(d)?;
            Ok(InstanceToken::default())
        } else {
            <[u8; 16]>::deserialize(d).map(InstanceToken)
        }
    }
}

impl Instance {
    /// The nodes this instance has a shard on.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.assignments.node_runner.keys()
    }

    pub fn touches_node(&self, node: &NodeId) -> bool {
        self.assignments.node_runner.contains_key(node)
    }

    /// True when `runner` is this instance's runner on `node`.
    pub fn assigns(&self, runner: &RunnerId, node: &NodeId) -> bool {
        self.assignments.node_runner.get(node) == Some(runner) && self.assignments.shards.contains_key(runner)
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct ShardAssignments {
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub shards: OrdMap<RunnerId, ShardMetadata>,
    /// One runner per node.
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub node_runner: OrdMap<NodeId, RunnerId>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ShardMetadata {
    Pipeline(PipelineShard),
    /// Reserved for tensor parallelism; never placed in v1.
    Tensor(TensorShard),
}

impl ShardMetadata {
    pub fn device_rank(&self) -> u32 {
        match self {
            ShardMetadata::Pipeline(p) => p.device_rank,
            ShardMetadata::Tensor(t) => t.device_rank,
        }
    }

    pub fn world_size(&self) -> u32 {
        match self {
            ShardMetadata::Pipeline(p) => p.world_size,
            ShardMetadata::Tensor(t) => t.world_size,
        }
    }
}

/// Layers `[start_layer, end_layer)` of an `n_layers` model, at `device_rank` of a `world_size` pipeline.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PipelineShard {
    pub start_layer: u32,
    /// Exclusive.
    pub end_layer: u32,
    pub n_layers: u32,
    pub device_rank: u32,
    pub world_size: u32,
}

impl PipelineShard {
    pub fn layers(&self) -> u32 {
        self.end_layer.saturating_sub(self.start_layer)
    }
    pub fn is_first(&self) -> bool {
        self.device_rank == 0
    }
    pub fn is_last(&self) -> bool {
        self.device_rank + 1 == self.world_size
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TensorShard {
    pub device_rank: u32,
    pub world_size: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Sharding {
    #[default]
    Pipeline,
    Tensor,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub instance: InstanceId,
    pub node: NodeId,
    pub status: RunnerStatus,
    /// The data-plane listener: each interface address of the node with the runner's OS-assigned port.
    pub data_addrs: Vec<SocketAddr>,
    pub updated_ms: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RunnerStatus {
    Idle,
    Loading { layers_loaded: u32, total_layers: u32 },
    Loaded,
    WarmingUp,
    Ready,
    Running,
    ShuttingDown,
    Shutdown,
    Failed { error: String, attempt: u32 },
}

impl RunnerStatus {
    /// Ready to take sequences.
    pub fn is_serving(&self) -> bool {
        matches!(self, RunnerStatus::Ready | RunnerStatus::Running)
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Deployment {
    pub id: DeploymentId,
    pub command_id: CommandId,
    pub model_id: ModelId,
    pub sharding: Sharding,
    pub min_nodes: u32,
    pub max_nodes: Option<u32>,
    pub nodes: Option<Vec<NodeId>>,
    pub instance: Option<InstanceId>,
    pub status: DeploymentStatus,
    /// Consecutive runner-failure deletions of its instance; 3 mark the deployment `Failed`.
    pub failures: u32,
    pub retry_at_ms: u64,
    pub created_ms: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeploymentStatus {
    Placing,
    Running,
    Waiting { reason: String },
    Failed { reason: String },
}

/// A generation request accepted by the master. Only generation tasks live in State.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Task {
    pub id: TaskId,
    pub command_id: CommandId,
    pub instance: InstanceId,
    /// The API node that owns the client's stream; chunks are addressed to it.
    pub origin: NodeId,
    pub status: TaskStatus,
    pub error: Option<TaskError>,
    /// The request without its content ([`GenerationParams::without_content`]): State and the log never hold a
    /// prompt (issue 15). Rank 0 fetches the content from `origin`.
    pub params: GenerationParams,
    /// The size and digest of the full request.
    pub prompt: PromptRef,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum TaskStatus {
    Pending,
    Running,
    Complete,
    Failed,
    Cancelled,
}

impl TaskStatus {
    /// Complete, Failed and Cancelled are absorbing (invariant I6).
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Complete | TaskStatus::Failed | TaskStatus::Cancelled)
    }
}

/// The statuses `TaskStatusUpdated` may set. `Failed` is only ever recorded by `TaskFailed`, which carries the error.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum TaskProgress {
    Running,
    Complete,
    Cancelled,
}

impl From<TaskProgress> for TaskStatus {
    fn from(p: TaskProgress) -> Self {
        match p {
            TaskProgress::Running => TaskStatus::Running,
            TaskProgress::Complete => TaskStatus::Complete,
            TaskProgress::Cancelled => TaskStatus::Cancelled,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum ErrorKind {
    Runner,
    Pipeline,
    InstanceGone,
    NodeLost,
    Invalid,
    Internal,
}

/// Why an instance was deleted.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DeleteReason {
    User,
    NodeLost(NodeId),
    RunnerFailures,
}

impl fmt::Display for DeleteReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeleteReason::User => f.write_str("deleted by the user"),
            DeleteReason::NodeLost(n) => write!(f, "node {n} was lost"),
            DeleteReason::RunnerFailures => f.write_str("its runners failed too often"),
        }
    }
}

/// Everything the cluster knows about one node. All per-node facts live here, so removing the node purges them all.
#[derive(Clone, PartialEq, Debug, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub identity: Option<Identity>,
    pub memory: Option<Memory>,
    pub disk: Option<Disk>,
    pub interfaces: Vec<Iface>,
    pub backends: Vec<Backend>,
    pub mem_bandwidth_gbps: Option<f32>,
    /// Why the node's store cannot write (a full disk), while it cannot: it takes no new placement (issue 15).
    pub store_fault: Option<String>,
    /// Where the node serves the model files it holds to its peers (issue 18); empty: it serves none.
    pub file_server: Vec<SocketAddr>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub downloads: OrdMap<ModelId, DownloadProgress>,
    pub first_seen_ms: u64,
    pub updated_ms: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Identity {
    pub friendly_name: String,
    pub os: String,
    pub arch: String,
    pub chip: String,
    pub version: String,
}

/// Bytes of memory; `available` is what the node's preferred backend can use for weights and KV.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Disk {
    pub total: u64,
    pub available: u64,
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Iface {
    pub name: String,
    pub addrs: Vec<IpAddr>,
}

/// One fact a node reports about itself; each replaces the previous value of that fact (last writer wins).
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum NodeFact {
    Identity(Identity),
    Memory(Memory),
    Disk(Disk),
    Interfaces(Vec<Iface>),
    Backends(Vec<Backend>),
    MemBandwidth(f32),
    /// The node's store cannot write, and why (`None`: it writes). Asserted by the node core itself on a storage
    /// failure and on recovery, not by the fact gatherer.
    StoreFault(Option<String>),
    /// Where the node serves its verified model files to peers (every advertised address of its file server).
    FileServer(Vec<SocketAddr>),
}

impl NodeFact {
    /// Facts are last-writer-wins per kind; the kind is the variant.
    pub fn kind(&self) -> u8 {
        match self {
            NodeFact::Identity(_) => 0,
            NodeFact::Memory(_) => 1,
            NodeFact::Disk(_) => 2,
            NodeFact::Interfaces(_) => 3,
            NodeFact::Backends(_) => 4,
            NodeFact::MemBandwidth(_) => 5,
            NodeFact::StoreFault(_) => 6,
            NodeFact::FileServer(_) => 7,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum DownloadProgress {
    Pending,
    Ongoing {
        done: u64,
        total: u64,
    },
    /// The node holds the model's files, verified: peers may fetch them from it (issue 18).
    Completed {
        total: u64,
    },
    Failed {
        error: String,
    },
    /// The node held the files and they are gone (deleted or moved): it holds them no longer.
    Gone,
}

#[cfg(test)]
mod token_tests {
    use super::InstanceToken;

    #[test]
    fn a_token_is_redacted_in_json_and_kept_in_the_compact_encoding() {
        let token = InstanceToken([0xab; 16]);
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"redacted\"");
        assert_eq!(
            serde_json::from_str::<InstanceToken>("\"anything\"").unwrap(),
            InstanceToken::default()
        );
        let bytes = postcard::to_stdvec(&token).unwrap();
        assert_eq!(postcard::from_bytes::<InstanceToken>(&bytes).unwrap(), token);
        assert!(!format!("{token:?}").contains("ab"));
    }
}
