//! Commands: requests from API nodes to the master (SYSTEM.md §2.4). Every command is idempotent by `command_id`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::card::ModelCard;
use crate::ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, SessionId};
use crate::model::{Instance, Sharding};
use crate::params::{GenerationParams, PromptRef};

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct CommandEnvelope {
    /// The session the sender believes is current; the master drops commands of other sessions.
    pub session: SessionId,
    pub origin: NodeId,
    pub command_id: CommandId,
    pub sent_ms: u64,
    pub command: Command,
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Command {
    PlaceInstance {
        deployment_id: DeploymentId,
        model_id: ModelId,
        sharding: Sharding,
        min_nodes: u32,
        max_nodes: Option<u32>,
        nodes: Option<Vec<NodeId>>,
    },
    /// An explicit, unmanaged instance (no deployment, never re-placed).
    CreateInstance {
        instance: Instance,
    },
    /// Also deletes the instance's deployment.
    DeleteInstance {
        instance_id: InstanceId,
    },
    /// `params` without content ([`GenerationParams::without_content`]); the content stays on the API node until
    /// rank 0 fetches it (issue 15), so the master never sees a prompt.
    TextGeneration {
        params: GenerationParams,
        prompt: PromptRef,
    },
    /// Cancels the generation command `target`.
    TaskCancelled {
        target: CommandId,
    },
    TaskFinished {
        target: CommandId,
    },
    AddModelCard {
        card: ModelCard,
    },
    DeleteModelCard {
        model_id: ModelId,
    },
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum RejectReason {
    NoInstance {
        model: ModelId,
    },
    UnknownModel {
        model: ModelId,
    },
    Placement(PlacementError),
    InvalidInstance {
        message: String,
    },
    NotFound,
    Invalid {
        message: String,
    },
    /// The model's card cannot be deleted while an instance uses it.
    InUse {
        model: ModelId,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::NoInstance { model } => write!(f, "no instance serves model {model}"),
            RejectReason::UnknownModel { model } => write!(f, "unknown model {model}"),
            RejectReason::Placement(e) => write!(f, "cannot place the model: {e}"),
            RejectReason::InvalidInstance { message } => write!(f, "invalid instance: {message}"),
            RejectReason::NotFound => f.write_str("not found"),
            RejectReason::Invalid { message } => write!(f, "invalid command: {message}"),
            RejectReason::InUse { model } => {
                write!(f, "model {model} is in use by an instance; delete the instance first")
            }
        }
    }
}

/// Why `place` found no placement (SYSTEM.md §9).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, thiserror::Error)]
pub enum PlacementError {
    #[error("only pipeline sharding is supported")]
    UnsupportedSharding,
    #[error("unknown model {0}")]
    UnknownModel(ModelId),
    #[error("node {0} is not in the cluster")]
    NodeNotFound(NodeId),
    #[error("{min_nodes} nodes requested but only {eligible} are eligible")]
    MinNodes { min_nodes: u32, eligible: u32 },
    #[error("not enough memory: the model needs {need} bytes, the eligible nodes have {have}")]
    InsufficientMemory { need: u64, have: u64 },
    #[error("the model needs {needed} nodes, more than max_nodes")]
    MaxNodes { needed: u32 },
    #[error("the model has fewer layers than the nodes it needs")]
    TooFewLayers,
}
