//! Prompts off the durable log (issue 15): State holds a task's request without its content plus a [`PromptRef`]
//! (size and salted digest); the content stays on the API node while its stream is open, and rank 0's worker fetches
//! it as a transient message before it submits the task.
//!
//! The fetch is reconciled from State, never triggered by an event: whenever State shows a `Pending` task that a
//! local rank 0 would take next and whose content this node does not hold, [`plan`] says "fetch" (bounded attempts
//! with backoff, a bounded number at once). So a restarted worker, or a node that joined by snapshot, fetches what it
//! needs the same way. Content that fails its digest, or that the API node no longer holds, fails the task; so does an
//! API node that is gone from State. Content is dropped as soon as the task is submitted or State stops wanting it.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};
use shoal_types::State;
use shoal_types::codec::{self, EncodeError};
use shoal_types::ids::{CommandId, NodeId, TaskId};
use shoal_types::model::{ErrorKind, RunnerStatus, TaskStatus};
use shoal_types::params::{GenerationParams, PromptRef};

use crate::worker::{LocalView, QUEUE_SLACK};

/// A task's content is fetched at most this many times before the task fails.
pub const FETCH_ATTEMPTS: u32 = 5;
/// The wait after the first unanswered fetch; it doubles with each further one.
pub const FETCH_BACKOFF_BASE_MS: u64 = 250;
/// The longest wait between two fetches of one task.
pub const FETCH_BACKOFF_MAX_MS: u64 = 4_000;
/// Fetches one node runs at once: each may bring up to 4 MiB, and a burst of new tasks must not start hundreds of
/// queries.
pub const FETCHES_IN_FLIGHT: usize = 8;

/// The digest State records for a request: sha256 of `salt` followed by the encoded request.
pub fn digest(salt: &[u8; 16], params: &GenerationParams) -> Result<[u8; 32], EncodeError> {
    let bytes = codec::encode(params)?;
    Ok(digest_of_encoded(salt, &bytes))
}

fn digest_of_encoded(salt: &[u8; 16], encoded: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(encoded);
    hasher.finalize().into()
}

/// What the API node puts in the command for the full request `params` with this `salt`.
pub fn prompt_ref(salt: &[u8; 16], params: &GenerationParams) -> Result<PromptRef, EncodeError> {
    let bytes = codec::encode(params)?;
    Ok(PromptRef {
        bytes: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        messages: u32::try_from(params.messages.len()).unwrap_or(u32::MAX),
        digest: digest_of_encoded(salt, &bytes),
    })
}

/// Whether fetched content is the request State scheduled: same digest, and the same metadata as State shows (a
/// content that disagrees with the task's model or sampling is not the task's).
pub fn verify(expected: &PromptRef, scheduled: &GenerationParams, salt: &[u8; 16], params: &GenerationParams) -> bool {
    digest(salt, params).is_ok_and(|d| d == expected.digest) && params.without_content() == *scheduled
}

/// How a fetch ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The content arrived and matched its digest; the shell holds it.
    Found,
    /// The API node answered that it holds no content for the task (its stream ended, or it restarted).
    Missing,
    /// The content did not match the task's digest.
    Mismatch,
    /// No answer (timeout, the node unreachable): tried again after a backoff.
    Unanswered(String),
}

/// The fetch state of one task's content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetch {
    pub attempts: u32,
    pub in_flight: bool,
    pub retry_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The task was failed for want of its content; nothing more is tried.
    pub given_up: bool,
    /// The failure is final whatever the attempt count (missing or wrong content).
    pub hopeless: bool,
}

/// What this node knows of task contents (part of [`LocalView`]; the shell holds the content itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromptBook {
    /// Tasks whose verified content the shell holds.
    pub held: BTreeSet<TaskId>,
    /// Tasks whose content is being fetched or failed to come.
    pub fetches: BTreeMap<TaskId, Fetch>,
}

impl PromptBook {
    /// The shell started a fetch.
    pub fn started(&mut self, task: TaskId) {
        let fetch = self.fetches.entry(task).or_default();
        fetch.in_flight = true;
        fetch.attempts = fetch.attempts.saturating_add(1);
    }

    /// A fetch ended with `outcome` at `now_ms`.
    pub fn finished(&mut self, task: TaskId, outcome: FetchOutcome, now_ms: u64) {
        let (error, hopeless) = match outcome {
            FetchOutcome::Found => {
                self.fetches.remove(&task);
                self.held.insert(task);
                return;
            }
            FetchOutcome::Missing => ("the API node no longer holds the request's content".to_string(), true),
            FetchOutcome::Mismatch => ("the request's content does not match its digest".to_string(), true),
            FetchOutcome::Unanswered(why) => (format!("the API node did not answer for the content: {why}"), false),
        };
        let fetch = self.fetches.entry(task).or_default();
        fetch.in_flight = false;
        fetch.last_error = Some(error);
        fetch.hopeless |= hopeless;
        fetch.retry_at_ms = now_ms.saturating_add(fetch_backoff_ms(fetch.attempts));
    }

    /// The shell failed the task (see [`PromptAction::Fail`]).
    pub fn gave_up(&mut self, task: TaskId) {
        self.fetches.entry(task).or_default().given_up = true;
    }

    /// The shell dropped the task's content and fetch record (submitted, or State no longer wants it).
    pub fn forget(&mut self, task: &TaskId) {
        self.held.remove(task);
        self.fetches.remove(task);
    }
}

/// The wait after `attempts` unanswered fetches: 250 ms · 2^(attempts − 1), at most 4 s.
pub fn fetch_backoff_ms(attempts: u32) -> u64 {
    let doublings = attempts.saturating_sub(1).min(16);
    FETCH_BACKOFF_BASE_MS
        .saturating_mul(1u64 << doublings)
        .min(FETCH_BACKOFF_MAX_MS)
}

/// What the worker shell does about task contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptAction {
    /// Ask `origin` (the task's API node) for the content of `command_id`.
    Fetch {
        task: TaskId,
        origin: NodeId,
        command_id: CommandId,
    },
    /// The content cannot be had: fail the task (`TaskFailed`), then record [`PromptBook::gave_up`].
    Fail {
        task: TaskId,
        kind: ErrorKind,
        message: String,
    },
    /// Drop the content and the fetch record: the task was submitted or State no longer wants it run.
    Forget { task: TaskId },
}

/// Every prompt action that applies now: forget what is no longer wanted, then fetch (or fail) the contents of the
/// tasks a local rank 0 takes next, in the order rule 8 submits them, within rule 8's queue limit.
pub fn plan(state: &State, local: &LocalView, now_ms: u64) -> Vec<PromptAction> {
    let mut actions = Vec::new();
    let submitted = |task: &TaskId| local.runners.values().any(|r| r.submitted.contains(task));

    let known = local.prompts.held.iter().chain(local.prompts.fetches.keys());
    for task in known.collect::<BTreeSet<_>>() {
        if local.prompts.fetches.get(task).is_some_and(|f| f.in_flight) {
            continue; // forgotten when it ends, should State have moved on
        }
        let pending = state.tasks.get(task).is_some_and(|t| t.status == TaskStatus::Pending);
        if !pending || submitted(task) {
            actions.push(PromptAction::Forget { task: *task });
        }
    }

    let mut in_flight = local.prompts.fetches.values().filter(|f| f.in_flight).count();
    let limit = local.max_seqs.saturating_add(QUEUE_SLACK) as usize;
    for (runner, r) in local.runners.iter().filter(|(_, r)| r.alive) {
        let Some(instance) = state.instances.get(&r.instance) else {
            continue;
        };
        let is_rank0 = instance.assigns(runner, &local.node)
            && instance
                .assignments
                .shards
                .get(runner)
                .is_some_and(|s| s.device_rank() == 0);
        let stopping = matches!(r.status, Some(RunnerStatus::ShuttingDown | RunnerStatus::Shutdown));
        if !is_rank0 || stopping {
            continue;
        }
        let (open, pending) = crate::worker::rank0_queue(state, local, runner, r, &instance.id);
        let room = limit.saturating_sub(open.len());
        for task_id in pending.into_iter().take(room) {
            let Some(task) = state.tasks.get(&task_id) else {
                continue;
            };
            if local.prompts.held.contains(&task_id) {
                continue;
            }
            let fetch = local.prompts.fetches.get(&task_id);
            if fetch.is_some_and(|f| f.in_flight || f.given_up) {
                continue;
            }
            if let Some(f) = fetch.filter(|f| f.hopeless || f.attempts >= FETCH_ATTEMPTS) {
                let message = f
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the request's content could not be fetched".to_string());
                actions.push(PromptAction::Fail {
                    task: task_id,
                    kind: ErrorKind::Internal,
                    message,
                });
                continue;
            }
            if !state.nodes.contains_key(&task.origin) {
                actions.push(PromptAction::Fail {
                    task: task_id,
                    kind: ErrorKind::NodeLost,
                    message: format!("the API node {} that holds the request is gone", task.origin),
                });
                continue;
            }
            if fetch.is_some_and(|f| now_ms < f.retry_at_ms) || in_flight >= FETCHES_IN_FLIGHT {
                continue;
            }
            in_flight += 1;
            actions.push(PromptAction::Fetch {
                task: task_id,
                origin: task.origin,
                command_id: task.command_id,
            });
        }
    }
    actions
}
