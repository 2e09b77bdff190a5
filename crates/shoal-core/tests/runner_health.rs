//! Properties of the worker's runner-health decisions (`shoal_core::runner_health`) over generated States, held sets
//! and clocks. The worker simulation (`tests/worker_simulation.rs`) drives the same decisions through crashes, hangs
//! and restarts.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use shoal_core::runner_health::{Hang, Liveness, RUNNER_HUNG_AFTER_MS, hang, tasks_to_fail};
use shoal_types::State;
use shoal_types::ids::{CommandId, InstanceId, NodeId, TaskId};
use shoal_types::model::{Task, TaskStatus};
use shoal_types::params::GenerationParams;

const STATUSES: [TaskStatus; 5] = [
    TaskStatus::Pending,
    TaskStatus::Running,
    TaskStatus::Complete,
    TaskStatus::Failed,
    TaskStatus::Cancelled,
];

/// A State with tasks of two instances, `(instance 0 or 1, status index, held by the runner)` each, plus held tasks
/// State does not know; returns the instances and the held set.
fn build(tasks: &[(bool, usize, bool)], unknown_held: usize) -> (State, [InstanceId; 2], BTreeSet<TaskId>) {
    let mut state = State::empty();
    let instances = [InstanceId::new_random(), InstanceId::new_random()];
    let mut held = BTreeSet::new();
    for &(second, status, is_held) in tasks {
        let id = TaskId::new_random();
        let task = Task {
            id,
            command_id: CommandId::new_random(),
            instance: instances[usize::from(second)],
            origin: NodeId::from_random([0x13; 16]).unwrap(),
            status: STATUSES[status % STATUSES.len()],
            error: None,
            params: GenerationParams::default(),
            prompt: Default::default(),
            created_ms: 0,
            updated_ms: 0,
        };
        state.tasks.insert(id, Arc::new(task));
        if is_held {
            held.insert(id);
        }
    }
    for _ in 0..unknown_held {
        held.insert(TaskId::new_random());
    }
    (state, instances, held)
}

proptest! {
    /// Exactly the non-terminal held tasks and the running tasks of the runner's instance fail, each once, in order.
    #[test]
    fn the_failed_tasks_are_the_held_and_running_ones_not_yet_ended(
        tasks in proptest::collection::vec((any::<bool>(), 0usize..5, any::<bool>()), 0..24),
        unknown_held in 0usize..3,
        with_instance in any::<bool>(),
    ) {
        let (state, instances, held) = build(&tasks, unknown_held);
        let instance = with_instance.then_some(instances[0]);
        let got = tasks_to_fail(&state, instance, &held);
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&sorted, &got);
        for id in &got {
            let task = state.tasks.get(id);
            prop_assert!(!task.is_some_and(|t| t.status.is_terminal()), "an ended task failed again");
            let running_here = task.is_some_and(|t| Some(t.instance) == instance && t.status == TaskStatus::Running);
            prop_assert!(held.contains(id) || running_here, "a task neither held nor running failed");
        }
        for id in &held {
            let ended = state.tasks.get(id).is_some_and(|t| t.status.is_terminal());
            prop_assert_eq!(got.contains(id), !ended);
        }
        for task in state.tasks.values() {
            if Some(task.instance) == instance && task.status == TaskStatus::Running {
                prop_assert!(got.contains(&task.id), "a running task of the instance was left hanging");
            }
        }
    }

    /// A hang is declared once silence or a stalled step passes the limit, never before, and stays declared as time
    /// goes on; a runner heard from and not stepping is never hung within the limit.
    #[test]
    fn a_hang_is_declared_exactly_past_the_limit_and_stays(
        heard in 0u64..100_000,
        progress_back in 0u64..100_000,
        stepping in any::<bool>(),
        after in 0u64..20_000,
        later in 0u64..20_000,
        limit in 1u64..20_000,
    ) {
        let liveness = Liveness {
            last_heard_ms: heard,
            stepping,
            last_progress_ms: heard.saturating_sub(progress_back),
        };
        let now = heard + after;
        let verdict = hang(&liveness, now, limit);
        let stalled = now - liveness.last_progress_ms;
        let expect = after > limit || (stepping && stalled > limit);
        prop_assert_eq!(verdict.is_some(), expect);
        if verdict.is_some() {
            prop_assert!(hang(&liveness, now + later, limit).is_some());
        }
        if let Some(Hang::Silent { silent_ms }) = verdict {
            prop_assert_eq!(silent_ms, after);
        }
        prop_assert!(hang(&Liveness::started(now), now + RUNNER_HUNG_AFTER_MS, RUNNER_HUNG_AFTER_MS).is_none());
    }
}
