//! The worker's plan (§10.2): each rule of the table on its own, every applicable action in one call, and no action
//! repeated while it is in flight. Pure: State, the local view and time are arguments.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use imbl::OrdMap;
use shoal_core::apply::apply_in_place;
use shoal_core::worker::{
    Action, ActionKey, DEFAULT_MAX_SEQS, DOWNLOAD_PROGRESS_EVERY_MS, LocalModel, LocalRunner, LocalView, QUEUE_SLACK,
    REASSERT_EVERY_MS, RESPAWN_BACKOFF_MAX_MS, RUNNER_ATTEMPTS, RUNNER_STABLE_MS, plan, respawn_backoff_ms,
};
use shoal_types::card::{Backend, ModelCard, builtin_cards};
use shoal_types::ids::{CommandId, InstanceId, ModelId, NodeId, RunnerId, TaskId};
use shoal_types::model::{
    DeleteReason, DownloadProgress, ErrorKind, Instance, NodeFact, PipelineShard, RunnerStatus, ShardAssignments,
    ShardMetadata, Task, TaskError, TaskProgress, TaskStatus,
};
use shoal_types::params::GenerationParams;
use shoal_types::{Event, IndexedEvent, SessionId, State};

const SESSION: SessionId = SessionId {
    term: 1,
    master: NodeId::from_bytes([0x77; 16]),
};
const NOW: u64 = 100_000;

fn card() -> ModelCard {
    builtin_cards()
        .into_iter()
        .find(|c| c.aliases.iter().any(|a| a == "smollm2-135m"))
        .unwrap()
}

fn model() -> ModelId {
    card().id
}

fn node_id(i: u8) -> NodeId {
    NodeId::from_random([0x10 + i; 16]).unwrap()
}

/// This node.
fn me() -> NodeId {
    node_id(0)
}

/// The data address a runner on node `i` listens on.
fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 5000 + u16::from(i)))
}

/// Applies `events` as the master would index them.
fn fold(state: &mut State, events: &[Event]) {
    for event in events {
        let indexed = IndexedEvent {
            idx: (state.pos.idx + 1) as u64,
            session: SESSION,
            prev: state.pos.session,
            time_ms: NOW,
            origin: None,
            event: event.clone(),
        };
        apply_in_place(state, &indexed).unwrap();
    }
}

/// A State with nodes 0..n.
fn cluster(n: u8) -> State {
    let mut state = State::empty();
    let base = state.pos;
    fold(&mut state, &[Event::SessionOpened { session: SESSION, base }]);
    for i in 0..n {
        fold(
            &mut state,
            &[Event::NodeGatheredInfo {
                node: node_id(i),
                info: NodeFact::Backends(vec![Backend::Cpu]),
            }],
        );
    }
    state
}

/// The runner of instance number `inst` on node `i`.
fn runner_id(inst: u8, i: u8) -> RunnerId {
    RunnerId::from_u128(u128::from(inst) << 8 | u128::from(i))
}

fn instance_id(inst: u8) -> InstanceId {
    InstanceId::from_u128(0x1000 + u128::from(inst))
}

/// Instance number `inst` of the test model over `nodes`, rank = position in `nodes`, layers split evenly.
fn instance(inst: u8, nodes: &[u8]) -> Instance {
    let card = card();
    let world = nodes.len() as u32;
    let mut assignments = ShardAssignments::default();
    for (rank, i) in nodes.iter().enumerate() {
        let rank = rank as u32;
        let per = card.n_layers / world;
        let start = rank * per;
        let end = if rank + 1 == world { card.n_layers } else { start + per };
        let shard = PipelineShard {
            start_layer: start,
            end_layer: end,
            n_layers: card.n_layers,
            device_rank: rank,
            world_size: world,
        };
        assignments
            .shards
            .insert(runner_id(inst, *i), ShardMetadata::Pipeline(shard));
        assignments.node_runner.insert(node_id(*i), runner_id(inst, *i));
    }
    Instance {
        id: instance_id(inst),
        deployment: None,
        model: card,
        assignments,
        runner_failures: OrdMap::new(),
        created_ms: 0,
        token: Default::default(),
    }
}

fn create(state: &mut State, inst: u8, nodes: &[u8]) {
    fold(
        state,
        &[Event::InstanceCreated {
            instance: instance(inst, nodes),
        }],
    );
}

/// Records in State the status of instance `inst`'s runner on node `i` (with its address unless `Idle`).
fn report(state: &mut State, inst: u8, i: u8, status: RunnerStatus) {
    let data_addrs = if status == RunnerStatus::Idle {
        Vec::new()
    } else {
        vec![addr(i)]
    };
    fold(
        state,
        &[Event::RunnerStatusUpdated {
            runner_id: runner_id(inst, i),
            instance_id: instance_id(inst),
            node: node_id(i),
            status,
            data_addrs,
        }],
    );
}

fn task_id(n: u8) -> TaskId {
    TaskId::from_u128(0x5000 + u128::from(n))
}

/// Creates task `n` on instance `inst`, created at `n` ms (so tasks are ordered by number).
fn add_task(state: &mut State, inst: u8, n: u8) {
    let task = Task {
        id: task_id(n),
        command_id: CommandId::from_u128(0x6000 + u128::from(n)),
        instance: instance_id(inst),
        origin: node_id(0),
        status: TaskStatus::Pending,
        error: None,
        params: GenerationParams::default(),
        prompt: Default::default(),
        created_ms: u64::from(n),
        updated_ms: u64::from(n),
    };
    fold(state, &[Event::TaskCreated { task }]);
}

/// A live local runner of instance `inst` on this node with `status`, listening on this node's address.
fn live_runner(inst: u8, status: RunnerStatus) -> LocalRunner {
    LocalRunner {
        instance: instance_id(inst),
        status: Some(status),
        alive: true,
        attempts: 0,
        last_exit_ms: None,
        data_addrs: vec![addr(0)],
        dialing: Vec::new(),
        serving_since_ms: None,
        open_tasks: Default::default(),
        submitted: Default::default(),
    }
}

/// A local view with one live runner of instance `inst` and the model on disk.
fn local_with(inst: u8, status: RunnerStatus) -> LocalView {
    let mut local = LocalView::new(me());
    local.runners.insert(runner_id(inst, 0), live_runner(inst, status));
    local.models.insert(
        model(),
        LocalModel {
            verified: true,
            ..Default::default()
        },
    );
    local
}

/// The plan without rule 9's re-assertions, for tests of the other rules.
fn plan_no_emit(state: &State, local: &LocalView, now: u64) -> Vec<Action> {
    plan(state, local, now)
        .into_iter()
        .filter(|a| !matches!(a, Action::Emit(_)))
        .collect()
}

// Rule 1.

#[test]
fn spawns_the_runner_state_assigns_to_this_node() {
    let mut state = cluster(3);
    create(&mut state, 1, &[0, 1]);
    create(&mut state, 2, &[1, 2]); // not on this node
    let local = LocalView::new(me());
    assert_eq!(
        plan(&state, &local, NOW),
        vec![Action::Spawn {
            runner: runner_id(1, 0),
            instance: instance_id(1),
        }]
    );

    // A live process is not spawned again.
    let local = local_with(1, RunnerStatus::Idle);
    assert!(
        !plan(&state, &local, NOW)
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. }))
    );
}

#[test]
fn respawn_waits_for_the_backoff() {
    assert_eq!(respawn_backoff_ms(0), 0);
    assert_eq!(respawn_backoff_ms(1), 1_000);
    assert_eq!(respawn_backoff_ms(2), 2_000);
    assert_eq!(respawn_backoff_ms(4), 8_000);
    assert_eq!(respawn_backoff_ms(5), 16_000);
    assert_eq!(respawn_backoff_ms(6), RESPAWN_BACKOFF_MAX_MS);
    assert_eq!(respawn_backoff_ms(u32::MAX), RESPAWN_BACKOFF_MAX_MS);

    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    let mut local = LocalView::new(me());
    let mut runner = live_runner(
        1,
        RunnerStatus::Failed {
            error: "crashed".into(),
            attempt: 3,
        },
    );
    runner.alive = false;
    runner.attempts = 3;
    runner.last_exit_ms = Some(NOW);
    local.runners.insert(runner_id(1, 0), runner);
    let spawn = Action::Spawn {
        runner: runner_id(1, 0),
        instance: instance_id(1),
    };
    assert!(
        !plan(&state, &local, NOW + 3_999).contains(&spawn),
        "3rd failure: 4 s backoff"
    );
    assert!(plan(&state, &local, NOW + 4_000).contains(&spawn));

    // The count State holds is the floor of the local one (a restarted worker keeps the cluster's count).
    local.runners.get_mut(&runner_id(1, 0)).unwrap().attempts = 1;
    fold(
        &mut state,
        &[Event::RunnerStatusUpdated {
            runner_id: runner_id(1, 0),
            instance_id: instance_id(1),
            node: me(),
            status: RunnerStatus::Failed {
                error: "crashed".into(),
                attempt: 3,
            },
            data_addrs: Vec::new(),
        }],
    );
    assert!(!plan(&state, &local, NOW + 1_000).contains(&spawn));
    assert!(plan(&state, &local, NOW + 4_000).contains(&spawn));
}

#[test]
fn no_spawn_after_the_attempt_limit() {
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    let mut local = LocalView::new(me());
    let mut runner = live_runner(
        1,
        RunnerStatus::Failed {
            error: "crashed".into(),
            attempt: RUNNER_ATTEMPTS,
        },
    );
    runner.alive = false;
    runner.attempts = RUNNER_ATTEMPTS;
    runner.last_exit_ms = Some(NOW);
    local.runners.insert(runner_id(1, 0), runner);
    assert!(
        !plan(&state, &local, NOW + 3_600_000)
            .iter()
            .any(|a| matches!(a, Action::Spawn { .. }))
    );

    // Seeded from State when the worker has never seen the runner.
    let mut exhausted = instance(2, &[0]);
    exhausted.runner_failures.insert(runner_id(2, 0), RUNNER_ATTEMPTS);
    let mut state = cluster(1);
    fold(&mut state, &[Event::InstanceCreated { instance: exhausted }]);
    assert!(plan(&state, &LocalView::new(me()), NOW).is_empty());

    // One attempt short of the limit it is still spawned.
    let mut last_try = instance(3, &[0]);
    last_try.runner_failures.insert(runner_id(3, 0), RUNNER_ATTEMPTS - 1);
    let mut state = cluster(1);
    fold(&mut state, &[Event::InstanceCreated { instance: last_try }]);
    assert_eq!(
        plan(&state, &LocalView::new(me()), NOW),
        vec![Action::Spawn {
            runner: runner_id(3, 0),
            instance: instance_id(3),
        }]
    );
}

// Rule 2.

#[test]
fn shuts_down_a_runner_whose_instance_is_gone() {
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    let local = local_with(1, RunnerStatus::Ready);
    let shutdown = Action::Shutdown {
        runner: runner_id(1, 0),
    };
    assert!(!plan(&state, &local, NOW).contains(&shutdown));

    fold(
        &mut state,
        &[Event::InstanceDeleted {
            instance_id: instance_id(1),
            reason: DeleteReason::User,
        }],
    );
    assert_eq!(plan(&state, &local, NOW), vec![shutdown.clone()]);

    // A runner whose id State gives to another node (or to no one) is not this node's to run.
    let mut state = cluster(2);
    create(&mut state, 1, &[1]);
    assert!(plan(&state, &local, NOW).contains(&shutdown));

    // One already shutting down, or already dead, is left alone.
    let mut stopping = local.clone();
    stopping.runners.get_mut(&runner_id(1, 0)).unwrap().status = Some(RunnerStatus::ShuttingDown);
    assert!(plan(&state, &stopping, NOW).is_empty());
    let mut dead = local.clone();
    dead.runners.get_mut(&runner_id(1, 0)).unwrap().alive = false;
    assert!(plan(&state, &dead, NOW).is_empty());
}

// Rule 3.

#[test]
fn cancels_tasks_state_no_longer_wants_run() {
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    report(&mut state, 1, 0, RunnerStatus::Running);
    for n in 1..=6 {
        add_task(&mut state, 1, n);
    }
    fold(
        &mut state,
        &[
            Event::TaskStatusUpdated {
                task_id: task_id(2),
                status: TaskProgress::Cancelled,
            },
            Event::TaskFailed {
                task_id: task_id(3),
                error: TaskError {
                    kind: ErrorKind::Pipeline,
                    message: "ring broke".into(),
                },
            },
            Event::TaskStatusUpdated {
                task_id: task_id(4),
                status: TaskProgress::Running,
            },
            Event::TaskStatusUpdated {
                task_id: task_id(5),
                status: TaskProgress::Complete,
            },
            Event::TaskDeleted { task_id: task_id(6) },
        ],
    );
    let mut local = local_with(1, RunnerStatus::Running);
    let runner = local.runners.get_mut(&runner_id(1, 0)).unwrap();
    // 1 pending, 2 cancelled, 3 failed, 4 running, 5 complete, 6 deleted, 7 never in State.
    for n in 1..=7 {
        runner.open_tasks.insert(task_id(n));
        runner.submitted.insert(task_id(n));
    }
    let cancels: Vec<TaskId> = plan(&state, &local, NOW)
        .into_iter()
        .filter_map(|a| match a {
            Action::Cancel { runner, task } => {
                assert_eq!(runner, runner_id(1, 0));
                Some(task)
            }
            _ => None,
        })
        .collect();
    assert_eq!(cancels, vec![task_id(2), task_id(3), task_id(6), task_id(7)]);
}

// Rules 4 and 5.

#[test]
fn downloads_missing_files_once() {
    let mut state = cluster(2);
    create(&mut state, 1, &[0]);
    create(&mut state, 2, &[0, 1]); // the same model again
    let mut local = LocalView::new(me());
    local
        .runners
        .insert(runner_id(1, 0), live_runner(1, RunnerStatus::Idle));
    local
        .runners
        .insert(runner_id(2, 0), live_runner(2, RunnerStatus::Idle));
    let download = Action::Download { model: model() };
    assert_eq!(plan_no_emit(&state, &local, NOW), vec![download.clone()]);

    // Not while a download runs, nor before the runner is idle.
    local.models.insert(
        model(),
        LocalModel {
            downloading: true,
            ..Default::default()
        },
    );
    assert!(plan_no_emit(&state, &local, NOW).is_empty());
    let mut starting = LocalView::new(me());
    starting.runners.insert(
        runner_id(1, 0),
        LocalRunner::seeded(&instance(1, &[0]), &runner_id(1, 0)),
    );
    starting.runners.get_mut(&runner_id(1, 0)).unwrap().alive = true;
    assert!(!plan_no_emit(&state, &starting, NOW).contains(&download));

    // A failed download is retried after a backoff.
    local.models.insert(
        model(),
        LocalModel {
            failures: 2,
            last_failure_ms: Some(NOW),
            progress: Some(DownloadProgress::Failed {
                error: "unreachable".into(),
            }),
            ..Default::default()
        },
    );
    assert!(plan_no_emit(&state, &local, NOW + 1_999).is_empty());
    assert_eq!(plan_no_emit(&state, &local, NOW + 2_000), vec![download.clone()]);

    // A node waiting for the cluster's downloader of the model (issue 18) asks again only when its wait is over.
    local.models.insert(
        model(),
        LocalModel {
            wait_until_ms: Some(NOW + 2_000),
            progress: Some(DownloadProgress::Pending),
            ..Default::default()
        },
    );
    assert!(plan_no_emit(&state, &local, NOW + 1_999).is_empty());
    assert_eq!(plan_no_emit(&state, &local, NOW + 2_000), vec![download]);
}

#[test]
fn loads_when_the_files_are_verified() {
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    let local = local_with(1, RunnerStatus::Idle);
    assert_eq!(
        plan_no_emit(&state, &local, NOW),
        vec![Action::Load {
            runner: runner_id(1, 0),
        }]
    );

    // Present but unverified is missing.
    let mut unverified = local.clone();
    unverified.models.get_mut(&model()).unwrap().verified = false;
    assert_eq!(
        plan_no_emit(&state, &unverified, NOW),
        vec![Action::Download { model: model() }]
    );

    // Only an idle runner loads.
    let loading = local_with(
        1,
        RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 30,
        },
    );
    assert!(plan_no_emit(&state, &loading, NOW).is_empty());
}

// Rule 6.

#[test]
fn warms_up_towards_the_next_rank_once_every_runner_is_loaded() {
    // This node is the last of three ranks: it dials rank 0.
    let mut state = cluster(3);
    create(&mut state, 1, &[1, 2, 0]);
    let local = local_with(1, RunnerStatus::Loaded);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    report(&mut state, 1, 1, RunnerStatus::Ready);
    report(
        &mut state,
        1,
        2,
        RunnerStatus::Loading {
            layers_loaded: 1,
            total_layers: 10,
        },
    );
    assert!(
        plan_no_emit(&state, &local, NOW).is_empty(),
        "a sibling is still loading"
    );

    report(&mut state, 1, 2, RunnerStatus::WarmingUp);
    let warmup = Action::Warmup {
        runner: runner_id(1, 0),
        next: vec![addr(1)],
    };
    assert_eq!(plan_no_emit(&state, &local, NOW), vec![warmup]);

    // Rank 0 dials rank 1.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    report(&mut state, 1, 1, RunnerStatus::Loaded);
    assert_eq!(
        plan_no_emit(&state, &local, NOW),
        vec![Action::Warmup {
            runner: runner_id(1, 0),
            next: vec![addr(1)],
        }]
    );

    // A sibling without data addresses cannot be dialled yet.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    fold(
        &mut state,
        &[Event::RunnerStatusUpdated {
            runner_id: runner_id(1, 1),
            instance_id: instance_id(1),
            node: node_id(1),
            status: RunnerStatus::Loaded,
            data_addrs: Vec::new(),
        }],
    );
    assert!(plan_no_emit(&state, &local, NOW).is_empty());

    // Nor before this runner's own Loaded (with its address) is in State.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 1, RunnerStatus::Loaded);
    assert!(plan_no_emit(&state, &local, NOW).is_empty());

    // World size 1: a local pass, nothing to dial.
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    assert_eq!(
        plan_no_emit(&state, &local, NOW),
        vec![Action::Warmup {
            runner: runner_id(1, 0),
            next: Vec::new(),
        }]
    );
}

#[test]
fn a_warm_up_follows_the_next_rank_to_its_new_listener() {
    // After a whole-cluster restart this runner (rank 0 of 2) warms up against rank 1's record from before the
    // crash; rank 1 then reports its new listener, possibly with no Idle or Loading in between (rule 9 asserts at
    // tick granularity), so rule 7 never resets this runner. It must be redirected instead (issue 13 item 5).
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::WarmingUp);
    report(&mut state, 1, 1, RunnerStatus::Running);
    let mut local = local_with(1, RunnerStatus::WarmingUp);
    local.runners.get_mut(&runner_id(1, 0)).unwrap().dialing = vec![addr(1)];
    local.in_flight.insert(ActionKey::Warmup(runner_id(1, 0)));
    assert!(
        plan_no_emit(&state, &local, NOW).is_empty(),
        "dialling where State says the next rank is"
    );

    let moved = SocketAddr::from(([10, 0, 0, 1], 6001));
    fold(
        &mut state,
        &[Event::RunnerStatusUpdated {
            runner_id: runner_id(1, 1),
            instance_id: instance_id(1),
            node: node_id(1),
            status: RunnerStatus::Loaded,
            data_addrs: vec![moved],
        }],
    );
    let redial = Action::Redial {
        runner: runner_id(1, 0),
        next: vec![moved],
    };
    assert_eq!(plan_no_emit(&state, &local, NOW), vec![redial.clone()]);
    // Once sent (the shell records it), nothing more.
    local.start(&redial, NOW);
    local.finish(&ActionKey::Redial(runner_id(1, 0)));
    local.runners.get_mut(&runner_id(1, 0)).unwrap().dialing = vec![moved];
    assert!(plan_no_emit(&state, &local, NOW).is_empty());

    // A sibling that re-reports without a listener (a fresh process, `Idle`) is not dialled: rule 7 resets this
    // runner instead.
    report(&mut state, 1, 1, RunnerStatus::Idle);
    assert_eq!(
        plan_no_emit(&state, &local, NOW),
        vec![Action::Reset {
            runner: runner_id(1, 0),
        }]
    );

    // A runner that is only Loaded (its warm-up not sent yet) is not redialled.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    report(&mut state, 1, 1, RunnerStatus::Loaded);
    let mut local = local_with(1, RunnerStatus::Loaded);
    local.in_flight.insert(ActionKey::Warmup(runner_id(1, 0)));
    assert!(plan_no_emit(&state, &local, NOW).is_empty());
}

#[test]
fn a_reset_during_a_warm_up_leaves_nothing_in_flight_for_the_new_process() {
    // A runner reset (rule 7) while its warm-up was in flight: the new process must warm up in its turn. Before the
    // fix the old warm-up's mark stayed, and the pipeline sat `Loaded` for good after a restart.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::Loaded);
    report(&mut state, 1, 1, RunnerStatus::Loaded);
    let mut local = local_with(1, RunnerStatus::Loaded);
    let me = runner_id(1, 0);
    for key in [
        ActionKey::Load(me),
        ActionKey::Warmup(me),
        ActionKey::Redial(me),
        ActionKey::Submit(me, task_id(1)),
        ActionKey::Cancel(me, task_id(2)),
        ActionKey::Spawn(me),
        ActionKey::Warmup(runner_id(2, 0)),
    ] {
        local.in_flight.insert(key);
    }
    assert!(plan_no_emit(&state, &local, NOW).is_empty());
    local.process_gone(&me);
    // The spawn under way and the other runner's warm-up are untouched.
    assert_eq!(
        local.in_flight,
        [ActionKey::Spawn(me), ActionKey::Warmup(runner_id(2, 0))]
            .into_iter()
            .collect()
    );
    local.finish(&ActionKey::Spawn(me));
    assert_eq!(
        plan_no_emit(&state, &local, NOW),
        vec![Action::Warmup {
            runner: me,
            next: vec![addr(1)],
        }]
    );
}

#[test]
fn failures_count_in_a_row_and_start_again_after_a_runner_served_a_while() {
    let mut r = live_runner(1, RunnerStatus::Ready);
    r.attempts = 3;
    assert_eq!(r.attempt_after_failure(NOW), 4, "never served: the count goes on");
    r.serving_since_ms = Some(NOW);
    assert_eq!(
        r.attempt_after_failure(NOW + RUNNER_STABLE_MS - 1),
        4,
        "served too briefly"
    );
    assert_eq!(
        r.attempt_after_failure(NOW + RUNNER_STABLE_MS),
        1,
        "served a while: a fresh count"
    );
}

// Rule 7.

#[test]
fn resets_when_a_sibling_drops_out_of_the_ring() {
    let reset = Action::Reset {
        runner: runner_id(1, 0),
    };
    let failed = RunnerStatus::Failed {
        error: "ring broke".into(),
        attempt: 1,
    };
    let loading = RunnerStatus::Loading {
        layers_loaded: 0,
        total_layers: 10,
    };
    for mine in [RunnerStatus::WarmingUp, RunnerStatus::Ready, RunnerStatus::Running] {
        let local = local_with(1, mine.clone());
        for (sibling, resets) in [
            (Some(failed.clone()), true),
            (None, true),
            (Some(RunnerStatus::Idle), true),
            (Some(loading.clone()), true),
            (Some(RunnerStatus::Loaded), false),
            (Some(RunnerStatus::WarmingUp), false),
            (Some(RunnerStatus::Ready), false),
            (Some(RunnerStatus::Running), false),
        ] {
            let mut state = cluster(3);
            create(&mut state, 1, &[0, 1, 2]);
            report(&mut state, 1, 0, mine.clone());
            report(&mut state, 1, 1, RunnerStatus::Ready);
            if let Some(status) = sibling.clone() {
                report(&mut state, 1, 2, status);
            }
            let planned = plan_no_emit(&state, &local, NOW);
            assert_eq!(planned.contains(&reset), resets, "{mine:?} with a sibling {sibling:?}");
        }
    }

    // A runner out of the ring has nothing to reset.
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 1, failed);
    let local = local_with(1, RunnerStatus::Loaded);
    assert!(!plan_no_emit(&state, &local, NOW).contains(&reset));
}

// Rule 8.

#[test]
fn rank_zero_submits_pending_tasks_of_a_serving_instance() {
    let mut state = cluster(2);
    create(&mut state, 1, &[0, 1]);
    report(&mut state, 1, 0, RunnerStatus::Ready);
    report(&mut state, 1, 1, RunnerStatus::Ready);
    for n in 1..=4 {
        add_task(&mut state, 1, n);
    }
    fold(
        &mut state,
        &[Event::TaskStatusUpdated {
            task_id: task_id(2),
            status: TaskProgress::Running,
        }],
    );
    let mut local = local_with(1, RunnerStatus::Ready);
    local
        .runners
        .get_mut(&runner_id(1, 0))
        .unwrap()
        .submitted
        .insert(task_id(4));
    // Nothing is submitted before its content has arrived (issue 15) …
    let submits_now = |local: &LocalView| {
        plan(&state, local, NOW)
            .into_iter()
            .filter(|a| matches!(a, Action::Submit { .. }))
            .count()
    };
    assert_eq!(submits_now(&local), 0);
    // … and each task whose content is held is.
    local.prompts.held.insert(task_id(3));
    assert_eq!(submits_now(&local), 1);
    for n in 1..=4 {
        local.prompts.held.insert(task_id(n));
    }
    let submits = |planned: Vec<Action>| -> Vec<TaskId> {
        planned
            .into_iter()
            .filter_map(|a| match a {
                Action::Submit { runner, task } => {
                    assert_eq!(runner, runner_id(1, 0));
                    Some(task)
                }
                _ => None,
            })
            .collect()
    };
    // Pending and not yet submitted, oldest first.
    assert_eq!(submits(plan(&state, &local, NOW)), vec![task_id(1), task_id(3)]);

    // Not while a sibling is not serving.
    let mut warming = state.clone();
    report(&mut warming, 1, 1, RunnerStatus::WarmingUp);
    assert!(submits(plan(&warming, &local, NOW)).is_empty());

    // Not before this runner is serving.
    let mut local_loaded = local_with(1, RunnerStatus::Loaded);
    local_loaded.prompts = local.prompts.clone();
    assert!(submits(plan(&state, &local_loaded, NOW)).is_empty());

    // Only rank 0 takes tasks.
    let mut state1 = cluster(2);
    create(&mut state1, 1, &[1, 0]);
    report(&mut state1, 1, 0, RunnerStatus::Ready);
    report(&mut state1, 1, 1, RunnerStatus::Ready);
    add_task(&mut state1, 1, 1);
    assert!(submits(plan(&state1, &local, NOW)).is_empty());
}

#[test]
fn submission_stops_at_the_queue_limit() {
    assert_eq!(LocalView::new(me()).max_seqs, DEFAULT_MAX_SEQS);
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    report(&mut state, 1, 0, RunnerStatus::Running);
    for n in 1..=5 {
        add_task(&mut state, 1, n);
    }
    let mut local = local_with(1, RunnerStatus::Running);
    local.max_seqs = 2;
    for n in 1..=5 {
        local.prompts.held.insert(task_id(n));
    }
    let runner = local.runners.get_mut(&runner_id(1, 0)).unwrap();
    // Open tasks already on the runner (their ids are not in State's pending set).
    for n in 0..(2 + QUEUE_SLACK - 3) {
        runner.open_tasks.insert(TaskId::from_u128(0x9000 + u128::from(n)));
    }
    let count = |planned: &[Action]| planned.iter().filter(|a| matches!(a, Action::Submit { .. })).count();
    let planned = plan(&state, &local, NOW);
    assert_eq!(count(&planned), 3, "3 free slots of max_seqs + {QUEUE_SLACK}");
    assert!(planned.contains(&Action::Submit {
        runner: runner_id(1, 0),
        task: task_id(1),
    }));

    // Submits in flight take slots too.
    local.in_flight.insert(ActionKey::Submit(runner_id(1, 0), task_id(1)));
    let planned = plan(&state, &local, NOW);
    assert_eq!(count(&planned), 2);
    assert!(!planned.contains(&Action::Submit {
        runner: runner_id(1, 0),
        task: task_id(1),
    }));
}

// Rule 9.

/// The statuses of the `RunnerStatusUpdated` emits in `planned`.
fn emitted_statuses(planned: Vec<Action>) -> Vec<RunnerStatus> {
    planned
        .into_iter()
        .filter_map(|a| match a {
            Action::Emit(event) => match *event {
                Event::RunnerStatusUpdated { status, .. } => Some(status),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn reasserts_own_runner_status_at_most_every_two_seconds() {
    let mut state = cluster(1);
    create(&mut state, 1, &[0]);
    let mut local = local_with(1, RunnerStatus::Loaded);
    local.in_flight.insert(ActionKey::Warmup(runner_id(1, 0)));
    let emit = Action::Emit(Box::new(Event::RunnerStatusUpdated {
        runner_id: runner_id(1, 0),
        instance_id: instance_id(1),
        node: me(),
        status: RunnerStatus::Loaded,
        data_addrs: vec![addr(0)],
    }));
    assert_eq!(plan(&state, &local, NOW), vec![emit.clone()]);

    local.start(&emit, NOW);
    assert!(plan(&state, &local, NOW + REASSERT_EVERY_MS - 1).is_empty());
    assert_eq!(plan(&state, &local, NOW + REASSERT_EVERY_MS), vec![emit.clone()]);

    // A new status goes out at once, however recently the old one was asserted.
    local.runners.get_mut(&runner_id(1, 0)).unwrap().status = Some(RunnerStatus::WarmingUp);
    assert_eq!(
        emitted_statuses(plan(&state, &local, NOW + 1)),
        vec![RunnerStatus::WarmingUp]
    );

    // Nothing once State holds it.
    report(&mut state, 1, 0, RunnerStatus::WarmingUp);
    assert!(plan(&state, &local, NOW + 10 * REASSERT_EVERY_MS).is_empty());

    // A dead runner's failure is reported even though the process is gone.
    let failed = RunnerStatus::Failed {
        error: "exit 137".into(),
        attempt: 1,
    };
    let runner = local.runners.get_mut(&runner_id(1, 0)).unwrap();
    runner.alive = false;
    runner.status = Some(failed.clone());
    runner.attempts = 1;
    runner.last_exit_ms = Some(NOW);
    let planned = plan(&state, &local, NOW);
    assert_eq!(planned.len(), 1, "{planned:?}");
    assert_eq!(emitted_statuses(planned), vec![failed]);

    // Not for a runner State does not assign here (the reducer would ignore it).
    let gone = cluster(1);
    assert!(plan(&gone, &local, NOW).is_empty());
}

#[test]
fn reasserts_downloads_with_progress_rate_limited() {
    let state = cluster(1);
    let mut local = LocalView::new(me());
    let ongoing = |done| DownloadProgress::Ongoing { done, total: 100 };
    local.models.insert(
        model(),
        LocalModel {
            downloading: true,
            progress: Some(ongoing(10)),
            ..Default::default()
        },
    );
    let emit = |progress| {
        Action::Emit(Box::new(Event::DownloadUpdated {
            node: me(),
            model_id: model(),
            progress,
        }))
    };
    assert_eq!(plan(&state, &local, NOW), vec![emit(ongoing(10))]);
    local.start(&emit(ongoing(10)), NOW);

    // Progress waits 5 s; the same value is re-asserted after 2 s.
    local.models.get_mut(&model()).unwrap().progress = Some(ongoing(50));
    assert!(plan(&state, &local, NOW + DOWNLOAD_PROGRESS_EVERY_MS - 1).is_empty());
    assert_eq!(
        plan(&state, &local, NOW + DOWNLOAD_PROGRESS_EVERY_MS),
        vec![emit(ongoing(50))]
    );

    // A change of status goes out at once.
    let done = DownloadProgress::Completed { total: 100 };
    local.models.get_mut(&model()).unwrap().progress = Some(done.clone());
    assert_eq!(plan(&state, &local, NOW + 1), vec![emit(done.clone())]);
    local.start(&emit(done.clone()), NOW + 1);
    assert!(plan(&state, &local, NOW + REASSERT_EVERY_MS).is_empty());
    assert_eq!(
        plan(&state, &local, NOW + 1 + REASSERT_EVERY_MS),
        vec![emit(done.clone())]
    );

    // Nothing once State holds it.
    let mut state = state;
    fold(
        &mut state,
        &[Event::DownloadUpdated {
            node: me(),
            model_id: model(),
            progress: done,
        }],
    );
    assert!(plan(&state, &local, NOW + 1).is_empty());
}

// Every action, and in-flight marks.

/// A node with: instance 1 to spawn; a runner of deleted instance 9 to shut down; instance 2's rank 0 serving with
/// a cancelled task to drop and a pending one to take; instance 4's runner loaded in a loaded ring; instance 5's
/// runner ready beside a failed sibling; instance 6's runner idle on a model not on disk, not yet reported to State.
fn busy_node() -> (State, LocalView) {
    let mut state = cluster(2);
    create(&mut state, 1, &[0]);
    for inst in [2, 4, 5] {
        create(&mut state, inst, &[0, 1]);
    }
    let mut other_card = card();
    other_card.id = ModelId::new("test/other");
    let mut other = instance(6, &[0]);
    other.model = other_card;
    fold(&mut state, &[Event::InstanceCreated { instance: other }]);
    report(&mut state, 2, 0, RunnerStatus::Running);
    report(&mut state, 2, 1, RunnerStatus::Running);
    add_task(&mut state, 2, 1);
    add_task(&mut state, 2, 2);
    fold(
        &mut state,
        &[Event::TaskStatusUpdated {
            task_id: task_id(1),
            status: TaskProgress::Cancelled,
        }],
    );
    report(&mut state, 4, 0, RunnerStatus::Loaded);
    report(&mut state, 4, 1, RunnerStatus::Loaded);
    report(&mut state, 5, 0, RunnerStatus::Ready);
    report(
        &mut state,
        5,
        1,
        RunnerStatus::Failed {
            error: "oom".into(),
            attempt: 1,
        },
    );

    let mut local = LocalView::new(me());
    local.models.insert(
        model(),
        LocalModel {
            verified: true,
            ..Default::default()
        },
    );
    local
        .runners
        .insert(runner_id(9, 0), live_runner(9, RunnerStatus::Ready));
    let mut serving = live_runner(2, RunnerStatus::Running);
    serving.open_tasks.insert(task_id(1));
    serving.submitted.insert(task_id(1));
    local.runners.insert(runner_id(2, 0), serving);
    local.prompts.held.insert(task_id(2));
    local
        .runners
        .insert(runner_id(6, 0), live_runner(6, RunnerStatus::Idle));
    local
        .runners
        .insert(runner_id(4, 0), live_runner(4, RunnerStatus::Loaded));
    local
        .runners
        .insert(runner_id(5, 0), live_runner(5, RunnerStatus::Ready));
    (state, local)
}

#[test]
fn returns_every_applicable_action() {
    let (state, local) = busy_node();
    let planned = plan(&state, &local, NOW);
    let expected = [
        Action::Spawn {
            runner: runner_id(1, 0),
            instance: instance_id(1),
        },
        Action::Shutdown {
            runner: runner_id(9, 0),
        },
        Action::Cancel {
            runner: runner_id(2, 0),
            task: task_id(1),
        },
        Action::Download {
            model: ModelId::new("test/other"),
        },
        Action::Warmup {
            runner: runner_id(4, 0),
            next: vec![addr(1)],
        },
        Action::Reset {
            runner: runner_id(5, 0),
        },
        Action::Submit {
            runner: runner_id(2, 0),
            task: task_id(2),
        },
        // Instance 6's runner is idle locally but absent from State.
        Action::Emit(Box::new(Event::RunnerStatusUpdated {
            runner_id: runner_id(6, 0),
            instance_id: instance_id(6),
            node: me(),
            status: RunnerStatus::Idle,
            data_addrs: vec![addr(0)],
        })),
    ];
    for action in &expected {
        assert!(planned.contains(action), "missing {action:?} in {planned:#?}");
    }
    assert_eq!(planned.len(), expected.len(), "{planned:#?}");
    // Grouped by rule, in table order.
    assert_eq!(planned, expected);

    // Load (rule 5) too, once the other model is on disk.
    let mut local = local;
    local.models.insert(
        ModelId::new("test/other"),
        LocalModel {
            verified: true,
            ..Default::default()
        },
    );
    assert!(plan(&state, &local, NOW).contains(&Action::Load {
        runner: runner_id(6, 0),
    }));
}

#[test]
fn actions_in_flight_are_not_repeated() {
    let (state, mut local) = busy_node();
    let planned = plan(&state, &local, NOW);
    assert!(!planned.is_empty());
    for action in &planned {
        local.start(action, NOW);
    }
    assert!(plan(&state, &local, NOW).is_empty(), "{:#?}", plan(&state, &local, NOW));
    assert!(plan(&state, &local, NOW + 1_000).is_empty());

    // Finishing one makes it eligible again (its effect did not happen here).
    local.finish(&ActionKey::Reset(runner_id(5, 0)));
    assert_eq!(
        plan(&state, &local, NOW + 1_000),
        vec![Action::Reset {
            runner: runner_id(5, 0),
        }]
    );

    // A warm-up in flight is not restarted with other addresses.
    let mut moved = state.clone();
    fold(
        &mut moved,
        &[Event::RunnerStatusUpdated {
            runner_id: runner_id(4, 1),
            instance_id: instance_id(4),
            node: node_id(1),
            status: RunnerStatus::Loaded,
            data_addrs: vec![addr(7)],
        }],
    );
    assert!(
        !plan(&moved, &local, NOW + 1_000)
            .iter()
            .any(|a| matches!(a, Action::Warmup { .. }))
    );
}
