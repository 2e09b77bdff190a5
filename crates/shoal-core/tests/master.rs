//! The master's decisions (§8): each command's events or its refusal, deduplication, and the plan loop that keeps a
//! deployment placed through node loss and runner failures. Pure: State, time, the live set and ids are arguments.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use shoal_core::apply::apply_in_place;
use shoal_core::master::{
    CommandLru, DecideCtx, RUNNER_FAILURES_DELETE, SeededIds, TERMINAL_TASK_TTL_MS, decide_command, plan,
};
use shoal_core::node::{MASTER_LIVENESS_GRACE_MS, NodeConfig, NodeCore, NodeInput, NodeOutput, Outgoing};
use shoal_core::placement::{PlacementConfig, layer_cost};
use shoal_types::card::{Backend, ModelCard, builtin_cards};
use shoal_types::command::{Command, CommandEnvelope, PlacementError, RejectReason};
use shoal_types::ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, RunnerId};
use shoal_types::model::{
    DeleteReason, DeploymentStatus, Instance, InstanceToken, Memory, NodeFact, PipelineShard, RunnerStatus,
    ShardAssignments, ShardMetadata, Sharding, TaskProgress, TaskStatus,
};
use shoal_types::params::GenerationParams;
use shoal_types::{Event, IndexedEvent, SessionId, State};

fn card() -> ModelCard {
    builtin_cards()
        .into_iter()
        .find(|c| c.aliases.iter().any(|a| a == "smollm2-135m"))
        .unwrap()
}

fn node_id(i: u8) -> NodeId {
    NodeId::from_random([0x10 + i; 16]).unwrap()
}

/// Available memory that gives exactly `cap` layers of the test card.
fn memory_for(cap: u64) -> Memory {
    let cfg = PlacementConfig::default();
    let need = cap * layer_cost(&card(), &cfg) + cfg.runner_overhead;
    let available = (need as f64 / cfg.memory_fraction).ceil() as u64 + 1;
    Memory {
        total: available * 2,
        available,
    }
}

const SESSION: SessionId = SessionId {
    term: 1,
    master: NodeId::from_bytes([0x77; 16]),
};

/// Applies `events` as the master would index them.
fn fold(state: &mut State, events: &[Event], time_ms: u64) {
    for event in events {
        let indexed = IndexedEvent {
            idx: (state.pos.idx + 1) as u64,
            session: SESSION,
            prev: state.pos.session,
            time_ms,
            origin: None,
            event: event.clone(),
        };
        apply_in_place(state, &indexed).unwrap();
    }
}

/// A State with one node per capacity (in layers of the test card).
fn cluster(caps: &[u64]) -> State {
    let mut state = State::empty();
    let base = state.pos;
    fold(&mut state, &[Event::SessionOpened { session: SESSION, base }], 0);
    for (i, cap) in caps.iter().enumerate() {
        let node = node_id(i as u8);
        fold(
            &mut state,
            &[
                Event::NodeGatheredInfo {
                    node,
                    info: NodeFact::Memory(memory_for(*cap)),
                },
                Event::NodeGatheredInfo {
                    node,
                    info: NodeFact::Backends(vec![Backend::Cpu]),
                },
            ],
            0,
        );
    }
    state
}

fn live(state: &State) -> BTreeSet<NodeId> {
    state.nodes.keys().copied().collect()
}

struct Master {
    state: State,
    live: BTreeSet<NodeId>,
    ids: SeededIds,
    now: u64,
}

impl Master {
    fn new(caps: &[u64]) -> Self {
        let state = cluster(caps);
        Master {
            live: live(&state),
            state,
            ids: SeededIds::new(1),
            now: 1_000,
        }
    }

    fn decide(&mut self, command_id: CommandId, command: Command) -> Result<Vec<Event>, RejectReason> {
        let placement = PlacementConfig::default();
        let ctx = DecideCtx {
            now_ms: self.now,
            live: &self.live,
            placement: &placement,
        };
        let events = decide_command(&self.state, command_id, node_id(0), &command, &ctx, &mut self.ids)?;
        fold(&mut self.state, &events, self.now);
        Ok(events)
    }

    fn plan(&mut self) -> Vec<Event> {
        let placement = PlacementConfig::default();
        let ctx = DecideCtx {
            now_ms: self.now,
            live: &self.live,
            placement: &placement,
        };
        let events = plan(&self.state, &ctx, &mut self.ids);
        fold(&mut self.state, &events, self.now);
        events
    }

    fn place(&mut self, min_nodes: u32) -> (DeploymentId, Result<Vec<Event>, RejectReason>) {
        let deployment_id = DeploymentId::new_random();
        let command = Command::PlaceInstance {
            deployment_id,
            model_id: ModelId("smollm2-135m".into()),
            sharding: Sharding::Pipeline,
            min_nodes,
            max_nodes: None,
            nodes: None,
        };
        (deployment_id, self.decide(CommandId::new_random(), command))
    }

    fn instance_of(&self, deployment: DeploymentId) -> Option<Arc<Instance>> {
        let id = self.state.deployments.get(&deployment)?.instance?;
        self.state.instances.get(&id).cloned()
    }
}

fn layers(instance: &Instance) -> Vec<(NodeId, u32, u32)> {
    let mut out: Vec<_> = instance
        .assignments
        .node_runner
        .iter()
        .map(
            |(node, runner)| match instance.assignments.shards.get(runner).unwrap() {
                ShardMetadata::Pipeline(s) => (*node, s.start_layer, s.end_layer),
                ShardMetadata::Tensor(_) => unreachable!(),
            },
        )
        .collect();
    out.sort_by_key(|(_, start, _)| *start);
    out
}

#[test]
fn place_instance_creates_a_deployment_and_its_instance_once() {
    let mut m = Master::new(&[30, 30]);
    let deployment_id = DeploymentId::new_random();
    let command_id = CommandId::new_random();
    let command = Command::PlaceInstance {
        deployment_id,
        model_id: ModelId("smollm2-135m".into()),
        sharding: Sharding::Pipeline,
        min_nodes: 2,
        max_nodes: None,
        nodes: None,
    };
    let events = m.decide(command_id, command.clone()).unwrap();
    assert!(matches!(
        events.as_slice(),
        [Event::DeploymentCreated { .. }, Event::InstanceCreated { .. }]
    ));
    let deployment = m.state.deployments.get(&deployment_id).unwrap();
    assert_eq!(deployment.status, DeploymentStatus::Running);
    assert_eq!(deployment.model_id, card().id, "the alias is resolved to the card's id");
    let instance = m.instance_of(deployment_id).unwrap();
    let split = layers(&instance);
    assert_eq!(split.len(), 2);
    assert_eq!((split[0].1, split[1].2), (0, 30));
    assert_eq!(split[0].2, split[1].1, "contiguous");

    assert_eq!(
        m.decide(command_id, command).unwrap(),
        vec![],
        "a repeat changes nothing"
    );
    assert_eq!(m.state.instances.len(), 1);
}

#[test]
fn placement_refusals_name_the_reason_and_store_nothing() {
    let mut m = Master::new(&[10, 10]);
    let unknown = Command::PlaceInstance {
        deployment_id: DeploymentId::new_random(),
        model_id: ModelId("no-such-model".into()),
        sharding: Sharding::Pipeline,
        min_nodes: 1,
        max_nodes: None,
        nodes: None,
    };
    assert_eq!(
        m.decide(CommandId::new_random(), unknown),
        Err(RejectReason::UnknownModel {
            model: ModelId("no-such-model".into())
        })
    );
    assert!(matches!(
        m.place(3).1,
        Err(RejectReason::Placement(PlacementError::MinNodes {
            min_nodes: 3,
            eligible: 2
        }))
    ));
    assert!(matches!(
        m.place(1).1,
        Err(RejectReason::Placement(PlacementError::InsufficientMemory { .. }))
    ));
    assert!(m.state.deployments.is_empty() && m.state.instances.is_empty());
}

#[test]
fn nodes_whose_token_is_gone_get_no_shards() {
    let mut m = Master::new(&[30, 30]);
    m.live.remove(&node_id(1));
    let (deployment, placed) = m.place(1);
    placed.unwrap();
    let split = layers(&m.instance_of(deployment).unwrap());
    assert_eq!(split, vec![(node_id(0), 0, 30)]);
    assert!(matches!(
        m.place(2).1,
        Err(RejectReason::Placement(PlacementError::MinNodes { .. }))
    ));
}

#[test]
fn after_a_node_loss_the_deployment_is_re_placed_on_the_survivors() {
    let mut m = Master::new(&[20, 20, 30]);
    let (deployment, placed) = m.place(2);
    placed.unwrap();
    let first = m.instance_of(deployment).unwrap();
    let lost = layers(&first)[0].0;

    m.now += 5_000;
    m.live.remove(&lost);
    fold(
        &mut m.state,
        &[Event::NodeTimedOut {
            node: lost,
            reason: "test".into(),
        }],
        m.now,
    );
    assert!(m.instance_of(deployment).is_none(), "the instance went with the node");
    let events = m.plan();
    assert!(
        matches!(events.as_slice(), [Event::InstanceCreated { .. }]),
        "{events:?}"
    );
    let second = m.instance_of(deployment).unwrap();
    assert_ne!(second.id, first.id);
    assert!(layers(&second).iter().all(|(node, _, _)| *node != lost));
    assert_eq!(
        m.state.deployments.get(&deployment).unwrap().status,
        DeploymentStatus::Running
    );
    assert!(m.plan().is_empty(), "a placed deployment is left alone");
}

#[test]
fn a_deployment_that_no_longer_fits_waits_and_is_placed_when_memory_appears() {
    let mut m = Master::new(&[20, 20]);
    let (deployment, placed) = m.place(2);
    placed.unwrap();
    m.now += 5_000;
    let lost = node_id(1);
    m.live.remove(&lost);
    fold(
        &mut m.state,
        &[Event::NodeTimedOut {
            node: lost,
            reason: "test".into(),
        }],
        m.now,
    );
    let events = m.plan();
    assert!(
        matches!(events.as_slice(), [Event::DeploymentWaiting { .. }]),
        "{events:?}"
    );
    assert!(matches!(
        m.state.deployments.get(&deployment).unwrap().status,
        DeploymentStatus::Waiting { .. }
    ));
    m.now += 100;
    assert!(m.plan().is_empty(), "the same reason is not re-stated every tick");

    // A node joins: placed on the next tick, without waiting for the backoff.
    let joined = node_id(7);
    fold(
        &mut m.state,
        &[
            Event::NodeGatheredInfo {
                node: joined,
                info: NodeFact::Memory(memory_for(30)),
            },
            Event::NodeGatheredInfo {
                node: joined,
                info: NodeFact::Backends(vec![Backend::Cpu]),
            },
        ],
        m.now,
    );
    m.live.insert(joined);
    m.now += 10;
    let events = m.plan();
    assert!(
        matches!(events.as_slice(), [Event::InstanceCreated { .. }]),
        "{events:?}"
    );
    assert!(m.instance_of(deployment).is_some());
}

#[test]
fn delete_instance_deletes_its_deployment_and_unknown_ones_are_not_found() {
    let mut m = Master::new(&[30]);
    let (deployment, placed) = m.place(1);
    placed.unwrap();
    let instance = m.instance_of(deployment).unwrap().id;
    let events = m
        .decide(
            CommandId::new_random(),
            Command::DeleteInstance { instance_id: instance },
        )
        .unwrap();
    assert_eq!(
        events,
        vec![
            Event::InstanceDeleted {
                instance_id: instance,
                reason: DeleteReason::User
            },
            Event::DeploymentDeleted {
                deployment_id: deployment
            },
        ]
    );
    assert!(m.state.instances.is_empty() && m.state.deployments.is_empty());
    assert!(m.plan().is_empty(), "nothing is re-placed");
    assert_eq!(
        m.decide(
            CommandId::new_random(),
            Command::DeleteInstance { instance_id: instance }
        ),
        Err(RejectReason::NotFound)
    );
}

/// An explicit instance over `nodes` with the given layer ranges.
fn explicit(ranges: &[(NodeId, u32, u32)], n_layers: u32) -> Instance {
    let mut shards = imbl::OrdMap::new();
    let mut node_runner = imbl::OrdMap::new();
    for (rank, (node, start, end)) in ranges.iter().enumerate() {
        let runner = RunnerId::new_random();
        shards.insert(
            runner,
            ShardMetadata::Pipeline(PipelineShard {
                start_layer: *start,
                end_layer: *end,
                n_layers,
                device_rank: rank as u32,
                world_size: ranges.len() as u32,
            }),
        );
        node_runner.insert(*node, runner);
    }
    Instance {
        id: InstanceId::new_random(),
        deployment: None,
        model: card(),
        assignments: ShardAssignments { shards, node_runner },
        runner_failures: imbl::OrdMap::new(),
        created_ms: 0,
        token: Default::default(),
    }
}

#[test]
fn create_instance_checks_ranges_nodes_and_capacity() {
    let mut m = Master::new(&[30, 10]);
    let (a, b) = (node_id(0), node_id(1));
    let invalid = |m: &mut Master, instance: Instance| -> String {
        match m.decide(CommandId::new_random(), Command::CreateInstance { instance }) {
            Err(RejectReason::InvalidInstance { message }) => message,
            other => panic!("expected InvalidInstance, got {other:?}"),
        }
    };
    assert!(invalid(&mut m, explicit(&[(a, 0, 10), (b, 12, 30)], 30)).contains("contiguous"));
    assert!(invalid(&mut m, explicit(&[(a, 0, 20)], 30)).contains("end at 20"));
    assert!(invalid(&mut m, explicit(&[(a, 0, 10), (b, 10, 30)], 30)).contains("can hold 10"));
    assert!(invalid(&mut m, explicit(&[(a, 0, 15), (node_id(9), 15, 30)], 30)).contains("not a live member"));
    m.live.remove(&b);
    assert!(invalid(&mut m, explicit(&[(a, 20, 30), (b, 0, 20)], 30)).contains("not a live member"));
    assert!(m.state.instances.is_empty(), "nothing stored");

    m.live.insert(b);
    let ok = explicit(&[(a, 0, 25), (b, 25, 30)], 30);
    let events = m
        .decide(
            CommandId::new_random(),
            Command::CreateInstance { instance: ok.clone() },
        )
        .unwrap();
    // Stored as asked, with a token the master chose (the request's is ignored).
    let [Event::InstanceCreated { instance: created }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_ne!(created.token, ok.token);
    assert_eq!(
        Instance {
            token: ok.token,
            ..created.clone()
        },
        ok
    );
    assert!(invalid(&mut m, ok).contains("already exists"));
}

#[test]
fn instances_get_a_token_the_ids_do_not_reveal() {
    let placed = |secret: [u8; 32]| {
        let mut m = Master::new(&[30, 30]);
        m.ids = SeededIds::with_secret(1, secret);
        let (a, _) = m.place(1);
        let (b, _) = m.place(1);
        let (a, b) = (m.instance_of(a).unwrap(), m.instance_of(b).unwrap());
        ((a.id, a.token), (b.id, b.token))
    };
    let ((a_id, a_token), (b_id, b_token)) = placed([1; 32]);
    assert_ne!(a_token, InstanceToken::default());
    assert_ne!(a_token, b_token);
    assert_ne!(a_token.0, *a_id.0.as_bytes(), "not the id's bytes");
    // The same id stream with another secret: the same ids, other tokens (the tokens are not a function of the ids).
    let ((a_id2, a_token2), (b_id2, b_token2)) = placed([2; 32]);
    assert_eq!((a_id, b_id), (a_id2, b_id2));
    assert_ne!(a_token, a_token2);
    assert_ne!(b_token, b_token2);
    // Deterministic for a given secret (simulations replay).
    assert_eq!(placed([1; 32]).0.1, a_token);
}

fn generation(model: &str) -> Command {
    Command::TextGeneration {
        params: GenerationParams {
            model: ModelId(model.into()),
            ..GenerationParams::default()
        },
        prompt: Default::default(),
    }
}

#[test]
fn generations_go_to_a_serving_instance_and_are_created_once() {
    let mut m = Master::new(&[30, 30]);
    assert_eq!(
        m.decide(CommandId::new_random(), generation("smollm2-135m")),
        Err(RejectReason::NoInstance {
            model: ModelId("smollm2-135m".into())
        })
    );
    let (d1, _) = m.place(1);
    let (d2, _) = m.place(1);
    let (i1, i2) = (m.instance_of(d1).unwrap(), m.instance_of(d2).unwrap());
    // Only the second instance's runner is Ready.
    for (node, runner) in &i2.assignments.node_runner {
        fold(
            &mut m.state,
            &[Event::RunnerStatusUpdated {
                runner_id: *runner,
                instance_id: i2.id,
                node: *node,
                status: RunnerStatus::Ready,
                data_addrs: vec![],
            }],
            m.now,
        );
    }
    let command_id = CommandId::new_random();
    let events = m.decide(command_id, generation(&card().id.0)).unwrap();
    let [Event::TaskCreated { task }] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(task.instance, i2.id, "the serving instance wins over {}", i1.id);
    assert_eq!(task.status, TaskStatus::Pending);
    assert_eq!(task.origin, node_id(0));
    assert_eq!(m.decide(command_id, generation("smollm2-135m")).unwrap(), vec![]);

    let cancel = m
        .decide(CommandId::new_random(), Command::TaskCancelled { target: command_id })
        .unwrap();
    assert_eq!(
        cancel,
        vec![Event::TaskStatusUpdated {
            task_id: task.id,
            status: TaskProgress::Cancelled
        }]
    );
    assert_eq!(
        m.decide(CommandId::new_random(), Command::TaskCancelled { target: command_id })
            .unwrap(),
        vec![],
        "a terminal task is not cancelled twice"
    );
    let finished = m
        .decide(CommandId::new_random(), Command::TaskFinished { target: command_id })
        .unwrap();
    assert_eq!(finished, vec![Event::TaskDeleted { task_id: task.id }]);
    assert!(m.state.tasks.is_empty());
}

#[test]
fn the_plan_deletes_failing_instances_and_sweeps_finished_tasks() {
    let mut m = Master::new(&[30]);
    let (deployment, _) = m.place(1);
    let instance = m.instance_of(deployment).unwrap();
    let (node, runner) = instance
        .assignments
        .node_runner
        .iter()
        .next()
        .map(|(n, r)| (*n, *r))
        .unwrap();
    let command_id = CommandId::new_random();
    m.decide(command_id, generation("smollm2-135m")).unwrap();
    let task = m.state.task_for_command(&command_id).unwrap().id;
    fold(
        &mut m.state,
        &[Event::TaskStatusUpdated {
            task_id: task,
            status: TaskProgress::Complete,
        }],
        m.now,
    );
    m.now += TERMINAL_TASK_TTL_MS - 1;
    assert!(m.plan().is_empty());
    m.now += 1;
    assert_eq!(m.plan(), vec![Event::TaskDeleted { task_id: task }]);

    fold(
        &mut m.state,
        &[Event::RunnerStatusUpdated {
            runner_id: runner,
            instance_id: instance.id,
            node,
            status: RunnerStatus::Failed {
                error: "test".into(),
                attempt: RUNNER_FAILURES_DELETE,
            },
            data_addrs: vec![],
        }],
        m.now,
    );
    let events = m.plan();
    assert_eq!(
        events.first(),
        Some(&Event::InstanceDeleted {
            instance_id: instance.id,
            reason: DeleteReason::RunnerFailures
        })
    );
    // The deployment backs off before it is placed again.
    assert!(m.instance_of(deployment).is_none());
    assert_eq!(m.state.deployments.get(&deployment).unwrap().failures, 1);
    m.now += 60_000;
    assert!(matches!(m.plan().as_slice(), [Event::InstanceCreated { .. }]));
}

#[test]
fn the_command_lru_is_bounded() {
    let mut lru = CommandLru::default();
    let first = CommandId::from_u128(0);
    for i in 0..(shoal_core::master::COMMAND_LRU as u128 + 5) {
        lru.insert(CommandId::from_u128(i), None);
    }
    assert_eq!(lru.len(), shoal_core::master::COMMAND_LRU);
    assert!(lru.answer(&first).is_none(), "the oldest id left first");
    assert!(lru.answer(&CommandId::from_u128(4)).is_none(), "the five oldest left");
    assert!(lru.answer(&CommandId::from_u128(5)).is_some());
    assert!(lru.answer(&CommandId::from_u128(10_004)).is_some());
}

/// A node core elected alone, past its liveness grace.
fn lone_master() -> (NodeCore, SessionId, u64) {
    let me = node_id(0);
    let mut core = NodeCore::new(NodeConfig::new(me, 3), State::empty(), 0, 0);
    let mut t = 0;
    while core.master_of().is_none() {
        core.step(NodeInput::Tick, t);
        t += 10;
    }
    core.step(NodeInput::NodeTokenAppeared(me), t);
    let facts = vec![NodeFact::Memory(memory_for(30)), NodeFact::Backends(vec![Backend::Cpu])];
    core.step(NodeInput::Facts(facts), t);
    let session = core.master_of().unwrap();
    (core, session, t + MASTER_LIVENESS_GRACE_MS)
}

#[test]
fn the_node_core_decides_commands_of_its_own_session_and_answers_refusals() {
    let (mut core, session, now) = lone_master();
    let envelope = |session, command| {
        Box::new(CommandEnvelope {
            session,
            origin: node_id(4),
            command_id: CommandId::new_random(),
            sent_ms: now,
            command,
        })
    };
    let place = Command::PlaceInstance {
        deployment_id: DeploymentId::new_random(),
        model_id: ModelId("smollm2-135m".into()),
        sharding: Sharding::Pipeline,
        min_nodes: 1,
        max_nodes: None,
        nodes: None,
    };
    let other = SessionId {
        term: session.term + 1,
        master: node_id(5),
    };
    assert!(
        core.step(NodeInput::Command(envelope(other, place.clone())), now)
            .is_empty()
    );

    let out = core.step(NodeInput::Command(envelope(session, place)), now);
    let indexed: Vec<&Event> = out
        .iter()
        .filter_map(|o| match o {
            NodeOutput::Indexed(e) => Some(&e.event),
            _ => None,
        })
        .collect();
    assert!(matches!(
        indexed.as_slice(),
        [Event::DeploymentCreated { .. }, Event::InstanceCreated { .. }]
    ));
    assert_eq!(core.state().instances.len(), 1);

    let missing = Command::DeleteInstance {
        instance_id: InstanceId::new_random(),
    };
    let repeated = envelope(session, missing);
    for _ in 0..2 {
        let out = core.step(NodeInput::Command(repeated.clone()), now);
        assert!(
            out.iter().any(|o| matches!(
                o,
                NodeOutput::Send(Outgoing::Rejected { to, reason: RejectReason::NotFound, .. }) if *to == node_id(4)
            )),
            "{out:?}"
        );
    }
}

#[test]
fn a_known_deployment_id_is_already_placed_for_its_model_and_refused_for_another() {
    let mut m = Master::new(&[30]);
    let deployment_id = DeploymentId::new_random();
    let place = |model: &str| Command::PlaceInstance {
        deployment_id,
        model_id: ModelId(model.into()),
        sharding: Sharding::Pipeline,
        min_nodes: 1,
        max_nodes: None,
        nodes: None,
    };
    assert_eq!(
        m.decide(CommandId::new_random(), place("smollm2-135m")).unwrap().len(),
        2
    );
    // Another command id, same deployment (two nodes started with the same `--model`): nothing new.
    assert_eq!(m.decide(CommandId::new_random(), place(&card().id.0)).unwrap(), vec![]);
    let mut other = card();
    other.id = ModelId("custom/other".into());
    other.aliases = vec![];
    m.decide(CommandId::new_random(), Command::AddModelCard { card: other })
        .unwrap();
    assert!(matches!(
        m.decide(CommandId::new_random(), place("custom/other")),
        Err(RejectReason::Invalid { .. })
    ));
    assert_eq!(m.state.deployments.len(), 1);
}

#[test]
fn a_custom_card_is_deleted_only_once_no_instance_uses_it() {
    let mut m = Master::new(&[30]);
    let mut custom = card();
    custom.id = ModelId("custom/derived".into());
    custom.aliases = vec![];
    custom.layer_bytes = vec![custom.storage_size / 30; 30];
    let delete = || Command::DeleteModelCard {
        model_id: ModelId("custom/derived".into()),
    };
    assert_eq!(m.decide(CommandId::new_random(), delete()), Err(RejectReason::NotFound));
    m.decide(CommandId::new_random(), Command::AddModelCard { card: custom.clone() })
        .unwrap();
    assert_eq!(m.state.model_cards.get(&custom.id).map(|c| c.as_ref()), Some(&custom));
    let placed = m
        .decide(
            CommandId::new_random(),
            Command::PlaceInstance {
                deployment_id: DeploymentId::new_random(),
                model_id: custom.id.clone(),
                sharding: Sharding::Pipeline,
                min_nodes: 1,
                max_nodes: None,
                nodes: None,
            },
        )
        .unwrap();
    let instance = placed
        .iter()
        .find_map(|e| match e {
            Event::InstanceCreated { instance } => Some(instance.id),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        m.decide(CommandId::new_random(), delete()),
        Err(RejectReason::InUse {
            model: custom.id.clone()
        })
    );
    assert!(m.state.model_cards.contains_key(&custom.id));
    m.decide(
        CommandId::new_random(),
        Command::DeleteInstance { instance_id: instance },
    )
    .unwrap();
    assert_eq!(
        m.decide(CommandId::new_random(), delete()).unwrap(),
        vec![Event::ModelCardDeleted {
            model_id: custom.id.clone()
        }]
    );
    assert!(!m.state.model_cards.contains_key(&custom.id));
    // A built-in card is not State's to delete.
    assert_eq!(
        m.decide(
            CommandId::new_random(),
            Command::DeleteModelCard { model_id: card().id }
        ),
        Err(RejectReason::NotFound)
    );
}
