//! The worker's decisions about a runner that went wrong (SYSTEM.md §10.2, §13): which tasks fail when a runner dies,
//! hangs, is reset or is (re)spawned, and when a runner counts as hung.
//!
//! Pure: State, what the shell knows of the runner and the clock are arguments. The shell (`shoal-worker`) records
//! when each runner last spoke and last made progress, asks [`hang`] on every tick, and carries out the verdict
//! (SIGKILL, fail the tasks [`tasks_to_fail`] names, respawn with the usual backoff).

use std::collections::BTreeSet;

use shoal_types::State;
use shoal_types::ids::{InstanceId, TaskId};
use shoal_types::model::TaskStatus;

/// A runner silent this long (no heartbeat, sent every second, nor any other message), or stuck this long inside a
/// step it has started, is hung (§13). Slow hardware whose single step takes longer raises it (`shoal run
/// --runner-hung-after`).
pub const RUNNER_HUNG_AFTER_MS: u64 = 5_000;

/// The tasks to fail when a runner of `instance` dies, hangs, is reset or is (re)spawned: every task the shell says the
/// runner held (submitted at rank 0, started at the last rank) and every task of its instance that State shows
/// `Running` (a middle rank holds sequences its worker never hears of, and a client must hear of the failure at once
/// rather than when State catches up), less those State already ended. In task-id order, each once. A held task State
/// does not know (yet) fails too.
///
/// A spawn holds nothing, but the ring has a gap while one of its runners has no process, so no running task of the
/// instance can finish. It is the only moment a restarted worker can fail them: after a whole-cluster restart no
/// shell remembers what it held and no process survives to report, and a node that crashed after failing its tasks
/// lost the `TaskFailed`s with its outbox; State kept those tasks `Running` for good (found by
/// `tests/worker_simulation.rs`).
pub fn tasks_to_fail(state: &State, instance: Option<InstanceId>, held: &BTreeSet<TaskId>) -> Vec<TaskId> {
    let mut fail: BTreeSet<TaskId> = held.clone();
    if let Some(instance) = instance {
        fail.extend(
            state
                .tasks
                .values()
                .filter(|t| t.instance == instance && t.status == TaskStatus::Running)
                .map(|t| t.id),
        );
    }
    fail.into_iter()
        .filter(|id| !state.tasks.get(id).is_some_and(|t| t.status.is_terminal()))
        .collect()
}

/// What the shell knows of a live runner's health, all times in the shell's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// When the runner last sent anything (a heartbeat, a status, a chunk), or the process was started.
    pub last_heard_ms: u64,
    /// The runner is inside a step (a forward pass of a prefill chunk or a decode step) on its last report. A runner
    /// that waits for its neighbours, or has nothing to do, holds up nothing of its own.
    pub stepping: bool,
    /// When the runner last made progress: finished a step, produced a token, or reported that it was not stepping.
    pub last_progress_ms: u64,
}

impl Liveness {
    /// A runner that has just started (or just spoken for the first time).
    pub fn started(now_ms: u64) -> Self {
        Liveness {
            last_heard_ms: now_ms,
            stepping: false,
            last_progress_ms: now_ms,
        }
    }
}

/// Why a runner counts as hung.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hang {
    /// Nothing heard from the runner for `silent_ms` (its heartbeat thread stopped: the process is stopped or gone).
    Silent { silent_ms: u64 },
    /// Inside one step for `stalled_ms` while it holds sequences (a compute loop that stopped advancing).
    Stalled { stalled_ms: u64 },
}

impl std::fmt::Display for Hang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hang::Silent { silent_ms } => write!(f, "the runner hung: no heartbeat for {silent_ms} ms"),
            Hang::Stalled { stalled_ms } => write!(f, "the runner hung: no progress for {stalled_ms} ms"),
        }
    }
}

/// Is the runner hung at `now_ms`? Silence longer than `limit_ms`, or a step that has not advanced for longer than
/// `limit_ms`. Exactly `limit_ms` is not yet a hang. A clock that went backwards never makes one.
pub fn hang(liveness: &Liveness, now_ms: u64, limit_ms: u64) -> Option<Hang> {
    let silent_ms = now_ms.saturating_sub(liveness.last_heard_ms);
    if silent_ms > limit_ms {
        return Some(Hang::Silent { silent_ms });
    }
    let stalled_ms = now_ms.saturating_sub(liveness.last_progress_ms);
    if liveness.stepping && stalled_ms > limit_ms {
        return Some(Hang::Stalled { stalled_ms });
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use shoal_types::ids::{CommandId, NodeId};
    use shoal_types::model::Task;
    use shoal_types::params::GenerationParams;

    use super::*;

    const NOW: u64 = 1_000_000;
    const LIMIT: u64 = RUNNER_HUNG_AFTER_MS;

    fn add_task(state: &mut State, instance: InstanceId, status: TaskStatus) -> TaskId {
        let id = TaskId::new_random();
        let task = Task {
            id,
            command_id: CommandId::new_random(),
            instance,
            origin: NodeId::from_random([0x17; 16]).unwrap(),
            status,
            error: None,
            params: GenerationParams::default(),
            prompt: Default::default(),
            created_ms: 0,
            updated_ms: 0,
        };
        state.tasks.insert(id, Arc::new(task));
        id
    }

    fn set(ids: &[TaskId]) -> BTreeSet<TaskId> {
        ids.iter().copied().collect()
    }

    fn sorted(mut ids: Vec<TaskId>) -> Vec<TaskId> {
        ids.sort();
        ids
    }

    #[test]
    fn a_held_task_fails() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let t = add_task(&mut state, instance, TaskStatus::Running);
        assert_eq!(tasks_to_fail(&state, Some(instance), &set(&[t])), vec![t]);
    }

    #[test]
    fn a_running_task_of_the_instance_fails_though_not_held() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let t = add_task(&mut state, instance, TaskStatus::Running);
        assert_eq!(tasks_to_fail(&state, Some(instance), &BTreeSet::new()), vec![t]);
    }

    #[test]
    fn a_pending_task_not_held_stays_for_the_next_runner() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        add_task(&mut state, instance, TaskStatus::Pending);
        assert!(tasks_to_fail(&state, Some(instance), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_pending_task_held_fails() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let t = add_task(&mut state, instance, TaskStatus::Pending);
        assert_eq!(tasks_to_fail(&state, Some(instance), &set(&[t])), vec![t]);
    }

    #[test]
    fn a_task_of_another_instance_is_untouched() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        add_task(&mut state, InstanceId::new_random(), TaskStatus::Running);
        assert!(tasks_to_fail(&state, Some(instance), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_task_state_already_ended_is_not_failed_again() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let ended: Vec<TaskId> = [TaskStatus::Complete, TaskStatus::Failed, TaskStatus::Cancelled]
            .into_iter()
            .map(|s| add_task(&mut state, instance, s))
            .collect();
        assert!(tasks_to_fail(&state, Some(instance), &set(&ended)).is_empty());
    }

    #[test]
    fn a_held_task_state_does_not_know_yet_fails() {
        let state = State::empty();
        let t = TaskId::new_random();
        assert_eq!(
            tasks_to_fail(&state, Some(InstanceId::new_random()), &set(&[t])),
            vec![t]
        );
    }

    #[test]
    fn a_spawn_fails_the_running_tasks_of_its_instance_it_never_held() {
        // What a worker restarted with the whole cluster finds: State's running tasks, nothing held.
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let running = add_task(&mut state, instance, TaskStatus::Running);
        add_task(&mut state, instance, TaskStatus::Pending);
        add_task(&mut state, instance, TaskStatus::Complete);
        add_task(&mut state, InstanceId::new_random(), TaskStatus::Running);
        assert_eq!(tasks_to_fail(&state, Some(instance), &BTreeSet::new()), vec![running]);
    }

    #[test]
    fn without_an_instance_only_the_held_tasks_fail() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        add_task(&mut state, instance, TaskStatus::Running);
        let held = add_task(&mut state, instance, TaskStatus::Pending);
        assert_eq!(tasks_to_fail(&state, None, &set(&[held])), vec![held]);
    }

    #[test]
    fn each_task_fails_once_in_id_order() {
        let mut state = State::empty();
        let instance = InstanceId::new_random();
        let a = add_task(&mut state, instance, TaskStatus::Running);
        let b = add_task(&mut state, instance, TaskStatus::Running);
        let got = tasks_to_fail(&state, Some(instance), &set(&[a, b]));
        assert_eq!(got, sorted(vec![a, b]));
    }

    #[test]
    fn a_runner_heard_within_the_limit_is_not_hung() {
        let l = Liveness::started(NOW);
        assert_eq!(hang(&l, NOW + LIMIT, LIMIT), None);
    }

    #[test]
    fn a_runner_silent_past_the_limit_is_hung() {
        let l = Liveness::started(NOW);
        assert_eq!(
            hang(&l, NOW + LIMIT + 1, LIMIT),
            Some(Hang::Silent { silent_ms: LIMIT + 1 })
        );
    }

    #[test]
    fn a_runner_stuck_in_a_step_past_the_limit_is_hung() {
        let l = Liveness {
            last_heard_ms: NOW + LIMIT,
            stepping: true,
            last_progress_ms: NOW,
        };
        assert_eq!(
            hang(&l, NOW + LIMIT + 1, LIMIT),
            Some(Hang::Stalled { stalled_ms: LIMIT + 1 })
        );
    }

    #[test]
    fn a_runner_that_waits_on_its_neighbours_is_not_hung() {
        let l = Liveness {
            last_heard_ms: NOW + LIMIT,
            stepping: false,
            last_progress_ms: NOW,
        };
        assert_eq!(hang(&l, NOW + LIMIT + 1, LIMIT), None);
    }

    #[test]
    fn a_long_prefill_that_keeps_stepping_is_not_hung() {
        // Every prefill chunk is a finished step: progress moves with each heartbeat.
        let mut l = Liveness::started(NOW);
        for s in 1..=20 {
            let t = NOW + s * 1_000;
            l = Liveness {
                last_heard_ms: t,
                stepping: true,
                last_progress_ms: t,
            };
            assert_eq!(hang(&l, t + 999, LIMIT), None);
        }
        assert_eq!(hang(&l, l.last_heard_ms + LIMIT, LIMIT), None);
    }

    #[test]
    fn a_clock_that_went_back_makes_no_hang() {
        let l = Liveness::started(NOW);
        assert_eq!(hang(&l, NOW - 10_000, LIMIT), None);
    }

    #[test]
    fn a_raised_limit_tolerates_a_slow_step() {
        let l = Liveness {
            last_heard_ms: NOW + 9_000,
            stepping: true,
            last_progress_ms: NOW,
        };
        assert_eq!(hang(&l, NOW + 9_500, 20_000), None);
        assert!(hang(&l, NOW + 9_500, LIMIT).is_some());
    }

    #[test]
    fn the_hang_names_itself() {
        let silent = Hang::Silent { silent_ms: 5_200 }.to_string();
        assert!(silent.contains("hung") && silent.contains("heartbeat"), "{silent}");
        let stalled = Hang::Stalled { stalled_ms: 5_200 }.to_string();
        assert!(stalled.contains("hung") && stalled.contains("progress"), "{stalled}");
    }
}
