//! Task routing and chunk translation (§10.3–§10.4): rank 0 renders, tokenizes and submits a task with its route;
//! the last rank's chunks go straight to the task's API node; runner task messages become durable events; a failure
//! reaches the client out of band at once and State as `TaskFailed`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_cluster::ChunkMsg;
use shoal_core::runner_health::tasks_to_fail;
use shoal_runner::proto::{ChunkEnd, FromRunner, Outcome, TaskHandle, ToRunner};
use shoal_types::chunk::{Chunk, FinishReason, Usage};
use shoal_types::ids::{CommandId, InstanceId, RunnerId, TaskId};
use shoal_types::model::{ErrorKind, Task, TaskError, TaskProgress, TaskStatus};
use shoal_types::params::ToolCall;
use shoal_types::wire::SEQ_OOB;
use shoal_types::{Event, ModelCard, NodeId, State, codec};

use crate::{Prompter, Shell};

/// Where a task's chunks and events go; travels with the sequence from rank 0 to the last rank (opaque to runners).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Route {
    task_id: TaskId,
    command_id: CommandId,
    origin: NodeId,
    instance: InstanceId,
}

impl Route {
    pub(crate) fn of(task: &Task) -> Route {
        Route {
            task_id: task.id,
            command_id: task.command_id,
            origin: task.origin,
            instance: task.instance,
        }
    }
}

/// The tasks one runner holds, by the handle the runner knows them by.
#[derive(Default)]
pub(crate) struct RunnerTasks {
    routes: HashMap<TaskHandle, Route>,
    handles: HashMap<TaskId, TaskHandle>,
}

impl RunnerTasks {
    fn insert(&mut self, handle: TaskHandle, route: Route) {
        self.handles.insert(route.task_id, handle);
        self.routes.insert(handle, route);
    }

    fn remove(&mut self, handle: TaskHandle) -> Option<Route> {
        let route = self.routes.remove(&handle)?;
        self.handles.remove(&route.task_id);
        Some(route)
    }
}

impl Shell {
    /// Rule 8: renders and tokenizes the task on this (rank 0) node and hands it to the runner. A request the model
    /// cannot take (the template refuses it, the prompt is too long) fails here with `Invalid`.
    pub(crate) fn submit(&mut self, runner: RunnerId, task_id: TaskId, state: &State) {
        tracing::debug!(task = %task_id, "submitting");
        let Some(task) = state.tasks.get(&task_id).cloned() else {
            return;
        };
        let Some(instance) = state.instances.get(&task.instance) else {
            return;
        };
        let route = Route::of(&task);
        // The content fetched from the API node (rule 8 submits only a task whose content is held); dropped here, as
        // the runner holds the tokens from now on.
        self.local.prompts.forget(&task_id);
        let Some(content) = self.contents.remove(&task_id) else {
            return;
        };
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.submitted.insert(task_id);
        }
        let prepared = self.prompter(&instance.model).and_then(|p| p.prepare(&content));
        let (prompt, params) = match prepared {
            Ok(x) => x,
            Err(message) => {
                tracing::info!(task = %task_id, %message, "request refused at rank 0");
                self.fail_task(route, ErrorKind::Invalid, message);
                return;
            }
        };
        let route_bytes = match codec::encode(&route) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.fail_task(
                    route,
                    ErrorKind::Internal,
                    format!("cannot encode the task's route: {error}"),
                );
                return;
            }
        };
        let handle = self.next_handle;
        self.next_handle += 1;
        let sent = self.processes.get_mut(&runner).map(|p| {
            p.send(&ToRunner::Submit {
                task: handle,
                prompt,
                params,
                route: route_bytes,
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            self.fail_task(route, ErrorKind::Runner, "the runner is gone".into());
            return;
        }
        self.tasks.entry(runner).or_default().insert(handle, route);
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.open_tasks.insert(task_id);
        }
        tracing::debug!(task = %task_id, "submitted to the runner");
    }

    /// Rule 3: rank 0 stops feeding the sequence and releases it on every rank; another rank only forgets it.
    pub(crate) fn cancel(&mut self, runner: RunnerId, task_id: TaskId) {
        tracing::debug!(%runner, task = %task_id, "cancelling");
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.open_tasks.remove(&task_id);
        }
        let Some(tasks) = self.tasks.get_mut(&runner) else {
            return;
        };
        let Some(handle) = tasks.handles.get(&task_id).copied() else {
            return;
        };
        tasks.remove(handle);
        if let Some(process) = self.processes.get_mut(&runner)
            && let Err(error) = process.send(&ToRunner::Cancel { task: handle })
        {
            tracing::debug!(%runner, %error, "cannot send Cancel (the runner is going away)");
        }
    }

    fn prompter(&mut self, card: &ModelCard) -> Result<Arc<Prompter>, String> {
        if let Some(p) = self.prompters.get(&card.id) {
            return Ok(p.clone());
        }
        let gguf = self
            .gguf
            .get(&card.id)
            .ok_or_else(|| format!("model {} is not on this node", card.id))?;
        let prompter = Arc::new(Prompter::load(gguf, card)?);
        self.prompters.insert(card.id.clone(), prompter.clone());
        Ok(prompter)
    }

    /// The client hears of a failure at once (an out-of-band `Error` chunk to its API node), and State records it
    /// (`TaskFailed`), which also closes the stream should the chunk be lost.
    pub(crate) fn fail_task(&self, route: Route, kind: ErrorKind, message: String) {
        let chunk = Chunk::Error {
            kind,
            message: message.clone(),
        };
        self.send_to_origin(route, SEQ_OOB, chunk);
        let event = Event::TaskFailed {
            task_id: route.task_id,
            error: TaskError { kind, message },
        };
        if let Err(error) = self.cluster.produce(event) {
            tracing::warn!(%error, "cannot hand TaskFailed to the outbox");
        }
    }

    /// A chunk of `route`'s task, straight to its API node (in-process when that is this node).
    fn send_to_origin(&self, route: Route, seq: u32, chunk: Chunk) {
        let msg = ChunkMsg {
            from: self.node,
            command_id: route.command_id,
            task_id: route.task_id,
            seq,
            chunk,
        };
        self.cluster.send_chunk(route.origin, msg);
    }

    /// A runner died or was reset: fails what it held and every task of its instance that State says is running.
    pub(crate) fn fail_tasks_of(&mut self, runner: RunnerId, state: &State, kind: ErrorKind, message: &str) {
        let held = self.tasks.remove(&runner).unwrap_or_default();
        let instance = self.local.runners.get(&runner).map(|r| r.instance);
        let mut routes: BTreeMap<TaskId, Route> = held.routes.into_values().map(|r| (r.task_id, r)).collect();
        let held_ids: BTreeSet<TaskId> = routes.keys().copied().collect();
        for task_id in tasks_to_fail(state, instance, &held_ids) {
            // A held task goes where its route says; one only State names, where State says.
            let route = routes.remove(&task_id).or_else(|| {
                let task = state.tasks.get(&task_id)?;
                Some(Route {
                    task_id,
                    command_id: task.command_id,
                    origin: task.origin,
                    instance: task.instance,
                })
            });
            if let Some(route) = route {
                self.fail_task(route, kind, message.to_string());
            }
        }
    }

    pub(crate) fn on_task_message(&mut self, runner: RunnerId, msg: FromRunner) {
        match msg {
            FromRunner::Accepted { task } => {
                let Some(route) = self.tasks.get(&runner).and_then(|t| t.routes.get(&task)).copied() else {
                    return;
                };
                tracing::debug!(task = %route.task_id, "accepted by the runner");
                self.produce(Event::TaskStatusUpdated {
                    task_id: route.task_id,
                    status: TaskProgress::Running,
                });
            }
            FromRunner::Started { task, route } => match codec::decode::<Route>(&route) {
                Ok(route) => {
                    if let Some(r) = self.local.runners.get_mut(&runner) {
                        r.open_tasks.insert(route.task_id);
                    }
                    self.tasks.entry(runner).or_default().insert(task, route);
                }
                Err(error) => tracing::warn!(%runner, %error, "a task's route does not decode; its chunks are dropped"),
            },
            FromRunner::Chunk {
                task,
                seq,
                token,
                text,
                end,
                logprobs,
                thinking,
            } => {
                let Some(route) = self.tasks.get(&runner).and_then(|t| t.routes.get(&task)).copied() else {
                    tracing::debug!(%runner, task, seq, "a chunk of a task no longer held; dropped");
                    return; // cancelled since
                };
                use std::sync::atomic::Ordering::Relaxed;
                self.counters.chunks.fetch_add(1, Relaxed);
                let stopped = self
                    .cluster
                    .view()
                    .state
                    .tasks
                    .get(&route.task_id)
                    .is_none_or(|t| matches!(t.status, TaskStatus::Cancelled | TaskStatus::Failed));
                if stopped {
                    self.counters.chunks_after_cancel.fetch_add(1, Relaxed);
                }
                if seq == 0 {
                    tracing::debug!(task = %route.task_id, "first chunk from the runner");
                }
                let (finish, usage) = match end {
                    Some(end) => (Some(finish_reason(end)), Some(usage(end))),
                    None => (None, None),
                };
                let (logprob, top_logprobs, token_bytes) = chunk_logprobs(logprobs);
                let chunk = Chunk::Token {
                    text,
                    token_id: token,
                    is_thinking: thinking,
                    logprob,
                    top_logprobs,
                    finish,
                    usage,
                    stats: None,
                    token_bytes,
                };
                self.send_to_origin(route, u32::try_from(seq).unwrap_or(SEQ_OOB - 1), chunk);
            }
            FromRunner::ToolCalls { task, seq, calls, end } => {
                let Some(route) = self.tasks.get(&runner).and_then(|t| t.routes.get(&task)).copied() else {
                    return;
                };
                // Fresh ids, unique across the cluster: the task's id and the call's place.
                let calls = calls
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| ToolCall {
                        id: format!("call_{}_{i}", route.task_id.to_string().replace('-', "")),
                        name: c.name,
                        arguments: c.arguments,
                    })
                    .collect();
                let chunk = Chunk::ToolCall {
                    calls,
                    usage: Some(usage(end)),
                    stats: None,
                };
                self.send_to_origin(route, u32::try_from(seq).unwrap_or(SEQ_OOB - 1), chunk);
            }
            FromRunner::TaskDone { task, outcome } => {
                tracing::debug!(%runner, task, ?outcome, "task done");
                let Some(route) = self.tasks.get_mut(&runner).and_then(|t| t.remove(task)) else {
                    return;
                };
                if let Some(r) = self.local.runners.get_mut(&runner) {
                    r.open_tasks.remove(&route.task_id);
                }
                match outcome {
                    Outcome::Complete { .. } => self.produce(Event::TaskStatusUpdated {
                        task_id: route.task_id,
                        status: TaskProgress::Complete,
                    }),
                    Outcome::Failed(message) => self.fail_task(route, ErrorKind::Runner, message),
                    // State already says so (that is why it was cancelled).
                    Outcome::Cancelled => {}
                }
            }
            _ => {}
        }
    }

    pub(crate) fn produce(&self, event: Event) {
        if let Err(error) = self.cluster.produce(event) {
            tracing::warn!(%error, "cannot hand an event to the outbox");
        }
    }
}

fn finish_reason(end: ChunkEnd) -> FinishReason {
    match end.finish {
        shoal_engine::FinishReason::Stop => FinishReason::Stop,
        shoal_engine::FinishReason::StopSequence(index) => FinishReason::StopSequence(index),
        shoal_engine::FinishReason::Length | shoal_engine::FinishReason::ContextLength => FinishReason::Length,
    }
}

fn usage(end: ChunkEnd) -> Usage {
    let prompt = u32::try_from(end.prompt_tokens).unwrap_or(u32::MAX);
    let completion = u32::try_from(end.completion_tokens).unwrap_or(u32::MAX);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        reasoning_tokens: u32::try_from(end.reasoning_tokens).unwrap_or(u32::MAX),
        ..Usage::default()
    }
}

/// The runner's logprobs as the chunk carries them: the chosen token's value and bytes, and the alternatives.
fn chunk_logprobs(
    logprobs: Option<shoal_runner::proto::ChunkLogprobs>,
) -> (Option<f32>, Vec<shoal_types::chunk::TopLogprob>, Vec<u8>) {
    let Some(lp) = logprobs else {
        return (None, Vec::new(), Vec::new());
    };
    let top = lp
        .top
        .into_iter()
        .map(|e| shoal_types::chunk::TopLogprob {
            token: String::from_utf8_lossy(&e.bytes).into_owned(),
            token_id: e.token,
            logprob: e.logprob,
            bytes: e.bytes,
        })
        .collect();
    (Some(lp.chosen.logprob), top, lp.chosen.bytes)
}
