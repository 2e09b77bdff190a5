//! The cluster State every node folds from the same log (SYSTEM.md §3.1).

use std::sync::Arc;

use imbl::OrdMap;
use serde::{Deserialize, Serialize};

use crate::card::ModelCard;
use crate::ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, Pos, RunnerId, SessionId, TaskId};
use crate::model::{Deployment, Instance, NodeInfo, RunnerRecord, Task};

/// Bump when a snapshot or checkpoint of an older State would be unsafe to restore.
/// 2: model cards carry per-layer bytes, the embedding and head bytes, the weight formats and the model's template.
/// 3: generation parameters carry a raw prompt (OpenAI Completions, Ollama `raw`).
/// 5: instances carry their data-plane token.
/// 6: a task holds its request without content plus a `PromptRef` (issue 15: prompts are off the durable log).
/// 7: nodes carry a store fault. 8: nodes carry their file server's addresses; a download can be `Gone` (issue 18).
pub const STATE_SCHEMA: u16 = 8;

/// Persistent maps make `clone` O(1), so every consumer can hold its own copy of State cheaply. Values sit behind
/// `Arc` because a persistent map copies a whole node (up to 64 entries) on the path it changes: with `Arc` that copy
/// is 64 reference-count bumps instead of 64 deep clones of tasks and embedded model cards (10× faster `apply`,
/// see BENCHMARKS.md). serde's `rc` feature serializes `Arc<T>` exactly as `T`, so the wire and JSON shapes are
/// unchanged.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct State {
    pub schema: u16,
    /// The last applied event.
    pub pos: Pos,
    /// The session of the last `SessionOpened`.
    pub session: SessionId,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub nodes: OrdMap<NodeId, Arc<NodeInfo>>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub deployments: OrdMap<DeploymentId, Arc<Deployment>>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub instances: OrdMap<InstanceId, Arc<Instance>>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub runners: OrdMap<RunnerId, Arc<RunnerRecord>>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub tasks: OrdMap<TaskId, Arc<Task>>,
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub task_by_command: OrdMap<CommandId, TaskId>,
    /// Custom cards; built-ins are compiled in and not stored here.
    #[serde(deserialize_with = "crate::bounded::ordmap")]
    pub model_cards: OrdMap<ModelId, Arc<ModelCard>>,
}

impl State {
    pub fn empty() -> State {
        State {
            schema: STATE_SCHEMA,
            pos: Pos::EMPTY,
            session: SessionId::NONE,
            nodes: OrdMap::new(),
            deployments: OrdMap::new(),
            instances: OrdMap::new(),
            runners: OrdMap::new(),
            tasks: OrdMap::new(),
            task_by_command: OrdMap::new(),
            model_cards: OrdMap::new(),
        }
    }

    /// The task created for a generation command, if it is (still) in State.
    pub fn task_for_command(&self, command: &CommandId) -> Option<&Task> {
        self.task_by_command
            .get(command)
            .and_then(|id| self.tasks.get(id))
            .map(|t| &**t)
    }
}

impl Default for State {
    fn default() -> Self {
        State::empty()
    }
}
