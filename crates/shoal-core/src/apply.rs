//! `apply`: the one pure fold every node runs over the log (SYSTEM.md §3.2, §3.3).
//!
//! Reducers are total and deterministic: a reference to an unknown entity is a no-op (logged at debug), because every
//! node must reach the same State from the same events; validation belongs to the master before indexing.

use std::sync::Arc;

use shoal_types::model::{DeploymentStatus, ErrorKind, NodeFact, NodeInfo, RunnerRecord, RunnerStatus, TaskError};
use shoal_types::{DeleteReason, Event, IndexedEvent, InstanceId, NodeId, Pos, SessionId, State, TaskStatus};
use tracing::debug;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("event out of order: expected idx {expected}, got {got}")]
    OutOfOrder { expected: i64, got: u64 },
    #[error("event chain diverged: State is at {have:?} but the event follows session {prev}")]
    Diverged { have: Pos, prev: SessionId },
}

/// Consecutive runner-failure deletions after which a deployment is marked `Failed`.
pub const DEPLOYMENT_MAX_FAILURES: u32 = 3;
const DEPLOYMENT_BACKOFF_BASE_MS: u64 = 2_000;
const DEPLOYMENT_BACKOFF_CAP_MS: u64 = 60_000;

/// Re-place backoff after `failures` consecutive failures: 2 s doubling, capped at 60 s.
pub fn deployment_backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    (DEPLOYMENT_BACKOFF_BASE_MS << doublings).min(DEPLOYMENT_BACKOFF_CAP_MS)
}

/// Checks that `e` is the next event for `s`: its idx follows and its chain link names `s`'s session.
pub fn check_next(s: &State, e: &IndexedEvent) -> Result<(), ApplyError> {
    let expected = s.pos.idx + 1;
    if i64::try_from(e.idx).ok() != Some(expected) {
        return Err(ApplyError::OutOfOrder { expected, got: e.idx });
    }
    if e.prev != s.pos.session {
        return Err(ApplyError::Diverged {
            have: s.pos,
            prev: e.prev,
        });
    }
    Ok(())
}

/// The State after `e`. O(1) clone of `s` plus the reducer's path copies; `s` is never changed.
pub fn apply(s: &State, e: &IndexedEvent) -> Result<State, ApplyError> {
    check_next(s, e)?;
    let mut next = s.clone();
    reduce(&mut next, &e.event, e.time_ms);
    next.pos = Pos {
        idx: expected_idx(s),
        session: e.session,
    };
    Ok(next)
}

/// [`apply`] on an owned State: no clone, and maps not shared with another State are updated in place. On error the
/// State is unchanged.
pub fn apply_in_place(s: &mut State, e: &IndexedEvent) -> Result<(), ApplyError> {
    check_next(s, e)?;
    let idx = expected_idx(s);
    reduce(s, &e.event, e.time_ms);
    s.pos = Pos {
        idx,
        session: e.session,
    };
    Ok(())
}

fn expected_idx(s: &State) -> i64 {
    s.pos.idx + 1
}

/// The reducer of each durable event. Never fails, never panics.
pub(crate) fn reduce(s: &mut State, event: &Event, time_ms: u64) {
    match event {
        Event::SessionOpened { session, .. } => s.session = *session,
        Event::NodeGatheredInfo { node, info } => {
            let entry = Arc::make_mut(s.nodes.entry(*node).or_insert_with(|| {
                Arc::new(NodeInfo {
                    first_seen_ms: time_ms,
                    ..NodeInfo::default()
                })
            }));
            match info.clone() {
                NodeFact::Identity(v) => entry.identity = Some(v),
                NodeFact::Memory(v) => entry.memory = Some(v),
                NodeFact::Disk(v) => entry.disk = Some(v),
                NodeFact::Interfaces(v) => entry.interfaces = v,
                NodeFact::Backends(v) => entry.backends = v,
                NodeFact::MemBandwidth(v) => entry.mem_bandwidth_gbps = Some(v),
                NodeFact::StoreFault(v) => entry.store_fault = v,
                NodeFact::FileServer(v) => entry.file_server = v,
            }
            entry.updated_ms = time_ms;
        }
        Event::DownloadUpdated {
            node,
            model_id,
            progress,
        } => match s.nodes.get_mut(node) {
            Some(info) => {
                Arc::make_mut(info).downloads.insert(model_id.clone(), progress.clone());
            }
            None => debug!(%node, "DownloadUpdated for an unknown node ignored"),
        },
        Event::NodeTimedOut { node, .. } => remove_node(s, node, time_ms),
        Event::ModelCardAdded { card } => {
            s.model_cards.insert(card.id.clone(), Arc::new(card.clone()));
        }
        Event::ModelCardDeleted { model_id } => {
            s.model_cards.remove(model_id);
        }
        Event::DeploymentCreated { deployment } => {
            if s.deployments.contains_key(&deployment.id) {
                debug!(deployment = %deployment.id, "DeploymentCreated for an existing deployment ignored");
                return;
            }
            // A new deployment owns no instance yet; InstanceCreated links them (keeps I5 by construction).
            let mut d = deployment.clone();
            d.instance = None;
            d.status = DeploymentStatus::Placing;
            s.deployments.insert(d.id, Arc::new(d));
        }
        Event::DeploymentWaiting {
            deployment_id,
            reason,
            retry_at_ms,
        } => match s.deployments.get_mut(deployment_id) {
            Some(d) => {
                let d = Arc::make_mut(d);
                d.status = DeploymentStatus::Waiting { reason: reason.clone() };
                d.retry_at_ms = *retry_at_ms;
            }
            None => debug!(deployment = %deployment_id, "DeploymentWaiting for an unknown deployment ignored"),
        },
        Event::DeploymentDeleted { deployment_id } => {
            s.deployments.remove(deployment_id);
        }
        Event::InstanceCreated { instance } => {
            if s.instances.contains_key(&instance.id) {
                debug!(instance = %instance.id, "InstanceCreated for an existing instance ignored");
                return;
            }
            if let Some(node) = instance.nodes().find(|n| !s.nodes.contains_key(*n)) {
                debug!(instance = %instance.id, %node, "InstanceCreated on an unknown node ignored");
                return;
            }
            if let Some(d) = instance.deployment.and_then(|d| s.deployments.get(&d))
                && let Some(other) = d.instance
                && s.instances.contains_key(&other)
            {
                debug!(instance = %instance.id, deployment = %d.id, "deployment already has an instance; ignored");
                return;
            }
            s.instances.insert(instance.id, Arc::new(instance.clone()));
            if let Some(d) = instance.deployment.and_then(|d| s.deployments.get_mut(&d)) {
                let d = Arc::make_mut(d);
                d.instance = Some(instance.id);
                d.status = DeploymentStatus::Running;
            }
        }
        Event::InstanceDeleted { instance_id, reason } => delete_instance(s, instance_id, *reason, time_ms),
        Event::RunnerStatusUpdated {
            runner_id,
            instance_id,
            node,
            status,
            data_addrs,
        } => {
            let Some(instance) = s.instances.get(instance_id) else {
                debug!(runner = %runner_id, "RunnerStatusUpdated for an unknown instance ignored");
                return;
            };
            if !instance.assigns(runner_id, node) {
                debug!(runner = %runner_id, %node, "RunnerStatusUpdated for an unassigned runner ignored");
                return;
            }
            if let RunnerStatus::Failed { attempt, .. } = status
                && instance.runner_failures.get(runner_id) != Some(attempt)
                && let Some(instance) = s.instances.get_mut(instance_id)
            {
                // The latest attempt, lower too: a worker counts again from 1 after its runner served a while
                // (`LocalRunner::attempt_after_failure`). Only a change copies the instance: repeats are free.
                Arc::make_mut(instance).runner_failures.insert(*runner_id, *attempt);
            }
            if *status == RunnerStatus::Shutdown {
                s.runners.remove(runner_id);
                return;
            }
            let record = Arc::make_mut(s.runners.entry(*runner_id).or_insert_with(|| {
                Arc::new(RunnerRecord {
                    instance: *instance_id,
                    node: *node,
                    status: status.clone(),
                    data_addrs: Vec::new(),
                    updated_ms: time_ms,
                })
            }));
            record.status = status.clone();
            if !data_addrs.is_empty() {
                record.data_addrs = data_addrs.clone();
            }
            record.updated_ms = time_ms;
            if status.is_serving() {
                deployment_recovered(s, instance_id);
            }
        }
        Event::TaskCreated { task } => {
            if !s.instances.contains_key(&task.instance) {
                debug!(task = %task.id, "TaskCreated on an unknown instance ignored");
                return;
            }
            if s.task_by_command.contains_key(&task.command_id) || s.tasks.contains_key(&task.id) {
                debug!(task = %task.id, "TaskCreated for a known command or task ignored");
                return;
            }
            s.task_by_command.insert(task.command_id, task.id);
            s.tasks.insert(task.id, Arc::new(task.clone()));
        }
        Event::TaskStatusUpdated { task_id, status } => match s.tasks.get_mut(task_id) {
            Some(task) if !task.status.is_terminal() => {
                let task = Arc::make_mut(task);
                task.status = (*status).into();
                task.updated_ms = time_ms;
            }
            _ => debug!(task = %task_id, "TaskStatusUpdated for an unknown or finished task ignored"),
        },
        Event::TaskFailed { task_id, error } => match s.tasks.get_mut(task_id) {
            Some(task) if !task.status.is_terminal() => {
                let task = Arc::make_mut(task);
                task.status = TaskStatus::Failed;
                task.error = Some(error.clone());
                task.updated_ms = time_ms;
            }
            _ => debug!(task = %task_id, "TaskFailed for an unknown or finished task ignored"),
        },
        Event::TaskDeleted { task_id } => {
            if let Some(task) = s.tasks.remove(task_id)
                && s.task_by_command.get(&task.command_id) == Some(task_id)
            {
                s.task_by_command.remove(&task.command_id);
            }
        }
    }
}

/// An instance whose every runner serves clears its deployment's failure count: deletions count while they come in
/// a row (the deployment is `Failed` at `DEPLOYMENT_MAX_FAILURES`), so a deployment that recovered each time is
/// never given up.
fn deployment_recovered(s: &mut State, instance_id: &InstanceId) {
    let Some(instance) = s.instances.get(instance_id) else {
        return;
    };
    let Some(id) = instance.deployment else {
        return;
    };
    let recovering = s
        .deployments
        .get(&id)
        .is_some_and(|d| d.failures > 0 && d.instance == Some(*instance_id));
    let all_serving = || {
        instance
            .assignments
            .shards
            .keys()
            .all(|r| s.runners.get(r).is_some_and(|rec| rec.status.is_serving()))
    };
    if recovering
        && all_serving()
        && let Some(d) = s.deployments.get_mut(&id)
    {
        Arc::make_mut(d).failures = 0;
    }
}

/// The `InstanceDeleted` cascade: the instance, its runners, its unfinished tasks (failed), its deployment's link.
fn delete_instance(s: &mut State, instance_id: &InstanceId, reason: DeleteReason, time_ms: u64) {
    let Some(instance) = s.instances.remove(instance_id) else {
        debug!(instance = %instance_id, "InstanceDeleted for an unknown instance ignored");
        return;
    };
    // An instance deleted for its runners' failures tells its clients why they failed (a model file the engine
    // cannot load, ...): the first failed runner's error, in runner order, before the runners go.
    let runner_error = instance
        .assignments
        .shards
        .keys()
        .find_map(|r| match s.runners.get(r).map(|rec| &rec.status) {
            Some(RunnerStatus::Failed { error, .. }) => Some(error.clone()),
            _ => None,
        });
    for runner in instance.assignments.shards.keys() {
        s.runners.remove(runner);
    }
    let message = match (reason, runner_error.as_ref()) {
        (DeleteReason::RunnerFailures, Some(error)) => {
            format!("instance {instance_id} deleted: {reason}; the last error: {error}")
        }
        _ => format!("instance {instance_id} deleted: {reason}"),
    };
    let failing: Vec<_> = s
        .tasks
        .iter()
        .filter(|(_, t)| t.instance == *instance_id && !t.status.is_terminal())
        .map(|(id, _)| *id)
        .collect();
    for task_id in failing {
        if let Some(task) = s.tasks.get_mut(&task_id) {
            let task = Arc::make_mut(task);
            task.status = TaskStatus::Failed;
            task.error = Some(TaskError {
                kind: ErrorKind::InstanceGone,
                message: message.clone(),
            });
            task.updated_ms = time_ms;
        }
    }
    let Some(d) = instance.deployment.and_then(|d| s.deployments.get_mut(&d)) else {
        return;
    };
    if d.instance != Some(*instance_id) {
        return;
    }
    let d = Arc::make_mut(d);
    d.instance = None;
    match reason {
        DeleteReason::User => {}
        DeleteReason::RunnerFailures => {
            d.failures += 1;
            d.retry_at_ms = time_ms + deployment_backoff_ms(d.failures);
            d.status = if d.failures >= DEPLOYMENT_MAX_FAILURES {
                // The last runner error (a file the engine cannot load names the file) is what the operator needs.
                DeploymentStatus::Failed {
                    reason: match &runner_error {
                        Some(error) => format!(
                            "runners failed; instance deleted {} times; the last error: {error}",
                            d.failures
                        ),
                        None => format!("runners failed; instance deleted {} times", d.failures),
                    },
                }
            } else {
                DeploymentStatus::Placing
            };
        }
        DeleteReason::NodeLost(_) => {
            d.status = DeploymentStatus::Placing;
            d.retry_at_ms = time_ms;
        }
    }
}

/// The `NodeTimedOut` cascade: every instance touching the node, every runner on it, and all its facts.
fn remove_node(s: &mut State, node: &NodeId, time_ms: u64) {
    let touching: Vec<InstanceId> = s
        .instances
        .iter()
        .filter(|(_, i)| i.touches_node(node))
        .map(|(id, _)| *id)
        .collect();
    for instance_id in touching {
        delete_instance(s, &instance_id, DeleteReason::NodeLost(*node), time_ms);
    }
    let on_node: Vec<_> = s
        .runners
        .iter()
        .filter(|(_, r)| r.node == *node)
        .map(|(id, _)| *id)
        .collect();
    for runner in on_node {
        s.runners.remove(&runner);
    }
    s.nodes.remove(node);
}
