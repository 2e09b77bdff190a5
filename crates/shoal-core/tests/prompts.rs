//! Prompts off the log (issue 15): the digest that ties fetched content to its task, and the pure rule that decides
//! when rank 0's worker fetches a task's content, retries, gives up (failing the task) or forgets it.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use imbl::OrdMap;
use shoal_core::apply::apply_in_place;
use shoal_core::prompts::{
    FETCH_ATTEMPTS, FETCHES_IN_FLIGHT, FetchOutcome, PromptAction, fetch_backoff_ms, plan, prompt_ref, verify,
};
use shoal_core::worker::{ActionKey, LocalModel, LocalRunner, LocalView};
use shoal_types::card::{Backend, ModelCard, builtin_cards};
use shoal_types::ids::{CommandId, InstanceId, ModelId, NodeId, RunnerId, TaskId};
use shoal_types::model::{
    ErrorKind, Instance, NodeFact, PipelineShard, RunnerStatus, ShardAssignments, ShardMetadata, Task, TaskProgress,
    TaskStatus,
};
use shoal_types::params::{Constraint, GenerationParams, Message, Role};
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
        origin: node_id(1),
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

fn fetches(actions: &[PromptAction]) -> Vec<TaskId> {
    actions
        .iter()
        .filter_map(|a| match a {
            PromptAction::Fetch { task, .. } => Some(*task),
            _ => None,
        })
        .collect()
}

/// A serving single-node instance 1 on this node with tasks 1..=n pending, from API node 1.
fn serving(n: u8) -> (State, LocalView) {
    let mut state = cluster(2);
    create(&mut state, 1, &[0]);
    report(&mut state, 1, 0, RunnerStatus::Ready);
    for i in 1..=n {
        add_task(&mut state, 1, i);
    }
    (state, local_with(1, RunnerStatus::Ready))
}

fn secret() -> GenerationParams {
    GenerationParams {
        model: model(),
        messages: vec![Message::new(Role::User, "the secret is 42")],
        instructions: Some("be brief".into()),
        tools: Some("[]".into()),
        stop: vec!["secret stop".into()],
        constraint: Some(Constraint::JsonSchema {
            schema: "{\"description\":\"secret\"}".into(),
            strict: true,
        }),
        temperature: Some(0.5),
        max_output_tokens: Some(9),
        ..GenerationParams::default()
    }
}

#[test]
fn the_digest_ties_content_to_its_task_and_state_keeps_no_content() {
    let params = secret();
    let salt = [7; 16];
    let reference = prompt_ref(&salt, &params).unwrap();
    let stored = params.without_content();
    assert!(stored.is_content_free() && !params.is_content_free());
    let text = format!("{stored:?}");
    assert!(!text.contains("secret") && !text.contains("brief"), "{text}");
    assert_eq!(stored.temperature, Some(0.5), "sampling stays");
    assert_eq!(stored.max_output_tokens, Some(9));
    assert_eq!(reference.messages, 1);
    assert!(reference.bytes as usize > "the secret is 42".len());

    assert!(verify(&reference, &stored, &salt, &params));
    assert!(!verify(&reference, &stored, &[8; 16], &params), "another salt");
    let mut other = params.clone();
    other.messages[0].content = "the secret is 43".into();
    assert!(!verify(&reference, &stored, &salt, &other), "other content");
    let mut hotter = stored.clone();
    hotter.temperature = Some(1.0);
    assert!(
        !verify(&reference, &hotter, &salt, &params),
        "content that disagrees with State's metadata"
    );
    // The same request under another salt has another digest: State's digest confirms no guess.
    assert_ne!(prompt_ref(&[8; 16], &params).unwrap().digest, reference.digest);
}

#[test]
fn rank_zero_fetches_the_contents_of_the_tasks_it_takes_next() {
    let (state, local) = serving(3);
    let actions = plan(&state, &local, NOW);
    assert_eq!(fetches(&actions), vec![task_id(1), task_id(2), task_id(3)]);
    assert!(
        actions
            .iter()
            .all(|a| matches!(a, PromptAction::Fetch { origin, .. } if *origin == node_id(1)))
    );

    // Held, submitted or open ones are not fetched; neither on a node that runs another rank.
    let mut local2 = local.clone();
    local2.prompts.held.insert(task_id(1));
    local2
        .runners
        .get_mut(&runner_id(1, 0))
        .unwrap()
        .submitted
        .insert(task_id(2));
    local2.in_flight.insert(ActionKey::Submit(runner_id(1, 0), task_id(3)));
    assert_eq!(fetches(&plan(&state, &local2, NOW)), Vec::<TaskId>::new());

    let mut state1 = cluster(2);
    create(&mut state1, 1, &[1, 0]);
    add_task(&mut state1, 1, 1);
    assert!(plan(&state1, &local, NOW).is_empty(), "rank 1 fetches nothing");
}

#[test]
fn fetches_are_bounded_by_the_queue_and_by_those_in_flight() {
    let (state, mut local) = serving(40);
    assert_eq!(fetches(&plan(&state, &local, NOW)).len(), FETCHES_IN_FLIGHT);
    local.max_seqs = 0; // room for QUEUE_SLACK only
    let open = &mut local.runners.get_mut(&runner_id(1, 0)).unwrap().open_tasks;
    for n in 0..(shoal_core::worker::QUEUE_SLACK - 2) {
        open.insert(TaskId::from_u128(0x9000 + u128::from(n)));
    }
    assert_eq!(fetches(&plan(&state, &local, NOW)), vec![task_id(1), task_id(2)]);
    local.prompts.started(task_id(1));
    assert_eq!(
        fetches(&plan(&state, &local, NOW)),
        vec![task_id(2)],
        "one in flight is not repeated"
    );
}

#[test]
fn an_unanswered_fetch_is_retried_with_backoff_then_the_task_fails() {
    let (state, mut local) = serving(1);
    let mut now = NOW;
    for attempt in 1..=FETCH_ATTEMPTS {
        assert_eq!(
            fetches(&plan(&state, &local, now)),
            vec![task_id(1)],
            "attempt {attempt}"
        );
        local.prompts.started(task_id(1));
        local
            .prompts
            .finished(task_id(1), FetchOutcome::Unanswered("timed out".into()), now);
        if attempt < FETCH_ATTEMPTS {
            assert!(plan(&state, &local, now).is_empty(), "backing off");
            now += fetch_backoff_ms(attempt);
        }
    }
    let actions = plan(&state, &local, now);
    let [PromptAction::Fail { task, kind, message }] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!((*task, *kind), (task_id(1), ErrorKind::Internal));
    assert!(message.contains("did not answer"), "{message}");
    local.prompts.gave_up(task_id(1));
    assert!(
        plan(&state, &local, now).is_empty(),
        "failed once; the outbox carries it"
    );
}

#[test]
fn missing_or_wrong_content_and_a_gone_api_node_fail_the_task_at_once() {
    for (outcome, words) in [
        (FetchOutcome::Missing, "no longer holds"),
        (FetchOutcome::Mismatch, "does not match"),
    ] {
        let (state, mut local) = serving(1);
        local.prompts.started(task_id(1));
        local.prompts.finished(task_id(1), outcome, NOW);
        let actions = plan(&state, &local, NOW);
        assert!(
            matches!(actions.as_slice(), [PromptAction::Fail { message, .. }] if message.contains(words)),
            "{actions:?}"
        );
    }
    let (mut state, local) = serving(1);
    fold(
        &mut state,
        &[Event::NodeTimedOut {
            node: node_id(1),
            reason: "gone".into(),
        }],
    );
    let actions = plan(&state, &local, NOW);
    assert!(
        matches!(
            actions.as_slice(),
            [PromptAction::Fail {
                kind: ErrorKind::NodeLost,
                ..
            }]
        ),
        "{actions:?}"
    );
}

#[test]
fn content_is_forgotten_once_submitted_or_no_longer_wanted() {
    let (mut state, mut local) = serving(3);
    for n in 1..=3 {
        local.prompts.started(task_id(n));
        local.prompts.finished(task_id(n), FetchOutcome::Found, NOW);
    }
    assert!(plan(&state, &local, NOW).is_empty(), "held and pending: kept");
    local
        .runners
        .get_mut(&runner_id(1, 0))
        .unwrap()
        .submitted
        .insert(task_id(1));
    fold(
        &mut state,
        &[
            Event::TaskStatusUpdated {
                task_id: task_id(2),
                status: TaskProgress::Cancelled,
            },
            Event::TaskDeleted { task_id: task_id(3) },
        ],
    );
    let mut forgotten: Vec<_> = plan(&state, &local, NOW)
        .into_iter()
        .filter_map(|a| match a {
            PromptAction::Forget { task } => Some(task),
            _ => None,
        })
        .collect();
    forgotten.sort();
    assert_eq!(forgotten, vec![task_id(1), task_id(2), task_id(3)]);
}
