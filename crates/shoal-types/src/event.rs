//! Durable events: exactly the transitions of State (SYSTEM.md §3.3).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::card::ModelCard;
use crate::ids::{DeploymentId, InstanceId, ModelId, NodeId, Origin, Pos, RunnerId, SessionId, TaskId};
use crate::model::{
    DeleteReason, Deployment, DownloadProgress, Instance, NodeFact, RunnerStatus, Task, TaskError, TaskProgress,
};

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Event {
    /// The first event of a master's session.
    SessionOpened {
        session: SessionId,
        base: Pos,
    },
    NodeGatheredInfo {
        node: NodeId,
        info: NodeFact,
    },
    DownloadUpdated {
        node: NodeId,
        model_id: ModelId,
        progress: DownloadProgress,
    },
    /// Cascades: deletes every instance with a shard on the node, its runners, and the node's facts.
    NodeTimedOut {
        node: NodeId,
        reason: String,
    },
    ModelCardAdded {
        card: ModelCard,
    },
    ModelCardDeleted {
        model_id: ModelId,
    },
    DeploymentCreated {
        deployment: Deployment,
    },
    DeploymentWaiting {
        deployment_id: DeploymentId,
        reason: String,
        retry_at_ms: u64,
    },
    DeploymentDeleted {
        deployment_id: DeploymentId,
    },
    InstanceCreated {
        instance: Instance,
    },
    /// Cascades: removes the instance's runners and fails its unfinished tasks.
    InstanceDeleted {
        instance_id: InstanceId,
        reason: DeleteReason,
    },
    RunnerStatusUpdated {
        runner_id: RunnerId,
        instance_id: InstanceId,
        node: NodeId,
        status: RunnerStatus,
        data_addrs: Vec<SocketAddr>,
    },
    TaskCreated {
        task: Task,
    },
    TaskStatusUpdated {
        task_id: TaskId,
        status: TaskProgress,
    },
    TaskFailed {
        task_id: TaskId,
        error: TaskError,
    },
    TaskDeleted {
        task_id: TaskId,
    },
}

impl Event {
    /// The variant's name, for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Event::SessionOpened { .. } => "SessionOpened",
            Event::NodeGatheredInfo { .. } => "NodeGatheredInfo",
            Event::DownloadUpdated { .. } => "DownloadUpdated",
            Event::NodeTimedOut { .. } => "NodeTimedOut",
            Event::ModelCardAdded { .. } => "ModelCardAdded",
            Event::ModelCardDeleted { .. } => "ModelCardDeleted",
            Event::DeploymentCreated { .. } => "DeploymentCreated",
            Event::DeploymentWaiting { .. } => "DeploymentWaiting",
            Event::DeploymentDeleted { .. } => "DeploymentDeleted",
            Event::InstanceCreated { .. } => "InstanceCreated",
            Event::InstanceDeleted { .. } => "InstanceDeleted",
            Event::RunnerStatusUpdated { .. } => "RunnerStatusUpdated",
            Event::TaskCreated { .. } => "TaskCreated",
            Event::TaskStatusUpdated { .. } => "TaskStatusUpdated",
            Event::TaskFailed { .. } => "TaskFailed",
            Event::TaskDeleted { .. } => "TaskDeleted",
        }
    }
}

/// An event with its place in the global log, as the master indexed it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct IndexedEvent {
    pub idx: u64,
    /// The session that indexed this event.
    pub session: SessionId,
    /// The session of event `idx - 1` (the chain link that detects divergence).
    pub prev: SessionId,
    /// Stamped by the master; reducers never read a clock.
    pub time_ms: u64,
    /// The producer and its sequence number; `None` for the master's own decisions.
    pub origin: Option<(Origin, u64)>,
    pub event: Event,
}
