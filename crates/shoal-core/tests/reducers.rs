//! One test per reducer of SYSTEM.md §3.3, including every cascade, plus the ordering errors of `apply`.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use imbl::OrdMap;
use shoal_core::invariants::{check_invariants, check_transition};
use shoal_core::{ApplyError, apply};
use shoal_types::card::builtin_cards;
use shoal_types::model::*;
use shoal_types::*;

const T0: u64 = 1_000_000;

fn node(i: u8) -> NodeId {
    NodeId::from_bytes([0x10 + i; 16])
}
fn session(term: u64) -> SessionId {
    SessionId { term, master: node(0) }
}

/// Applies events with consecutive idx in one session, checking the invariants after each.
struct Log {
    state: State,
    time: u64,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            state: State::empty(),
            time: T0,
        };
        log.push(Event::SessionOpened {
            session: session(1),
            base: Pos::EMPTY,
        });
        log
    }
    fn next(&self, event: Event) -> IndexedEvent {
        let sess = match &event {
            Event::SessionOpened { session, .. } => *session,
            _ => self.state.session,
        };
        IndexedEvent {
            idx: (self.state.pos.idx + 1) as u64,
            session: sess,
            prev: self.state.pos.session,
            time_ms: self.time,
            origin: None,
            event,
        }
    }
    fn push(&mut self, event: Event) -> &State {
        self.time += 10;
        let e = self.next(event);
        let next = apply(&self.state, &e).unwrap();
        check_invariants(&next).unwrap();
        check_transition(&self.state, &next).unwrap();
        assert_eq!(
            next.pos,
            Pos {
                idx: e.idx as i64,
                session: e.session
            }
        );
        self.state = next;
        &self.state
    }
    /// Pushes an event that must change nothing but the position.
    fn push_noop(&mut self, event: Event) {
        let before = self.state.clone();
        let after = self.push(event).clone();
        assert_eq!(
            State {
                pos: before.pos,
                ..after
            },
            before,
            "expected a no-op"
        );
    }
    fn add_node(&mut self, n: NodeId, gib: u64) {
        self.push(Event::NodeGatheredInfo {
            node: n,
            info: NodeFact::Memory(Memory {
                total: gib << 30,
                available: gib << 29,
            }),
        });
    }
}

fn card() -> ModelCard {
    builtin_cards().remove(0)
}

fn instance(id: u128, nodes: &[NodeId], deployment: Option<DeploymentId>) -> Instance {
    let mut shards = OrdMap::new();
    let mut node_runner = OrdMap::new();
    let world = nodes.len() as u32;
    for (rank, n) in nodes.iter().enumerate() {
        let r = RunnerId::from_u128(id * 100 + rank as u128);
        let per = 30 / world;
        let start = rank as u32 * per;
        let end = if rank as u32 + 1 == world { 30 } else { start + per };
        shards.insert(
            r,
            ShardMetadata::Pipeline(PipelineShard {
                start_layer: start,
                end_layer: end,
                n_layers: 30,
                device_rank: rank as u32,
                world_size: world,
            }),
        );
        node_runner.insert(*n, r);
    }
    Instance {
        id: InstanceId::from_u128(id),
        deployment,
        model: card(),
        assignments: ShardAssignments { shards, node_runner },
        runner_failures: OrdMap::new(),
        created_ms: T0,
        token: Default::default(),
    }
}

fn runner_of(i: &Instance, n: &NodeId) -> RunnerId {
    i.assignments.node_runner[n]
}

fn deployment(id: u128) -> Deployment {
    Deployment {
        id: DeploymentId::from_u128(id),
        command_id: CommandId::from_u128(id + 5000),
        model_id: card().id,
        sharding: Sharding::Pipeline,
        min_nodes: 1,
        max_nodes: None,
        nodes: None,
        instance: None,
        status: DeploymentStatus::Placing,
        failures: 0,
        retry_at_ms: 0,
        created_ms: T0,
    }
}

fn task(id: u128, instance: InstanceId) -> Task {
    Task {
        id: TaskId::from_u128(id),
        command_id: CommandId::from_u128(id + 9000),
        instance,
        origin: node(1),
        status: TaskStatus::Pending,
        error: None,
        params: GenerationParams {
            model: card().id,
            messages: vec![Message::new(Role::User, "hi")],
            ..Default::default()
        },
        prompt: Default::default(),
        created_ms: T0,
        updated_ms: T0,
    }
}

fn runner_status(i: &Instance, n: NodeId, status: RunnerStatus) -> Event {
    Event::RunnerStatusUpdated {
        runner_id: runner_of(i, &n),
        instance_id: i.id,
        node: n,
        status,
        data_addrs: vec![],
    }
}

#[test]
fn apply_rejects_a_wrong_idx_and_leaves_state_unchanged() {
    let log = Log::new();
    let before = log.state.clone();
    let mut e = log.next(Event::ModelCardAdded { card: card() });
    e.idx = 5;
    assert_eq!(
        apply(&log.state, &e),
        Err(ApplyError::OutOfOrder { expected: 1, got: 5 })
    );
    e.idx = 0;
    assert_eq!(
        apply(&log.state, &e),
        Err(ApplyError::OutOfOrder { expected: 1, got: 0 })
    );
    e.idx = u64::MAX;
    assert!(matches!(apply(&log.state, &e), Err(ApplyError::OutOfOrder { .. })));
    assert_eq!(log.state, before);
    let mut in_place = log.state.clone();
    assert!(shoal_core::apply_in_place(&mut in_place, &e).is_err());
    assert_eq!(in_place, before);
}

#[test]
fn apply_rejects_a_diverged_chain() {
    let log = Log::new();
    let mut e = log.next(Event::ModelCardAdded { card: card() });
    e.prev = session(9);
    assert_eq!(
        apply(&log.state, &e),
        Err(ApplyError::Diverged {
            have: log.state.pos,
            prev: session(9)
        })
    );
}

#[test]
fn session_opened_sets_the_session_and_chains() {
    let mut log = Log::new();
    assert_eq!(log.state.session, session(1));
    assert_eq!(
        log.state.pos,
        Pos {
            idx: 0,
            session: session(1)
        }
    );
    log.push(Event::SessionOpened {
        session: session(2),
        base: log.state.pos,
    });
    assert_eq!(log.state.session, session(2));
    assert_eq!(log.state.pos.session, session(2));
}

#[test]
fn node_gathered_info_inserts_then_sets_each_fact() {
    let mut log = Log::new();
    let n = node(1);
    log.add_node(n, 16);
    let first_seen = log.time;
    assert_eq!(log.state.nodes[&n].first_seen_ms, first_seen);
    let identity = Identity {
        friendly_name: "a".into(),
        os: "linux".into(),
        arch: "x86_64".into(),
        chip: "epyc".into(),
        version: "0.1".into(),
    };
    log.push(Event::NodeGatheredInfo {
        node: n,
        info: NodeFact::Identity(identity.clone()),
    });
    log.push(Event::NodeGatheredInfo {
        node: n,
        info: NodeFact::Disk(Disk {
            total: 10,
            available: 5,
        }),
    });
    let iface = Iface {
        name: "lo".into(),
        addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    };
    log.push(Event::NodeGatheredInfo {
        node: n,
        info: NodeFact::Interfaces(vec![iface.clone()]),
    });
    log.push(Event::NodeGatheredInfo {
        node: n,
        info: NodeFact::Backends(vec![Backend::Cpu]),
    });
    log.push(Event::NodeGatheredInfo {
        node: n,
        info: NodeFact::MemBandwidth(28.5),
    });
    let info = &log.state.nodes[&n];
    assert_eq!(info.identity, Some(identity));
    assert_eq!(
        info.memory,
        Some(Memory {
            total: 16 << 30,
            available: 16 << 29
        })
    );
    assert_eq!(
        info.disk,
        Some(Disk {
            total: 10,
            available: 5
        })
    );
    assert_eq!(info.interfaces, vec![iface]);
    assert_eq!(info.backends, vec![Backend::Cpu]);
    assert_eq!(info.mem_bandwidth_gbps, Some(28.5));
    assert_eq!(info.first_seen_ms, first_seen, "first_seen is kept");
    assert_eq!(info.updated_ms, log.time);
}

#[test]
fn download_updated_needs_a_known_node() {
    let mut log = Log::new();
    let model_id = card().id;
    log.push_noop(Event::DownloadUpdated {
        node: node(1),
        model_id: model_id.clone(),
        progress: DownloadProgress::Pending,
    });
    log.add_node(node(1), 8);
    let progress = DownloadProgress::Ongoing { done: 5, total: 10 };
    log.push(Event::DownloadUpdated {
        node: node(1),
        model_id: model_id.clone(),
        progress: progress.clone(),
    });
    assert_eq!(log.state.nodes[&node(1)].downloads[&model_id], progress);
}

#[test]
fn model_card_added_and_deleted() {
    let mut log = Log::new();
    let mut c = card();
    c.id = ModelId::from("custom/x");
    log.push(Event::ModelCardAdded { card: c.clone() });
    assert_eq!(*log.state.model_cards[&c.id], c);
    c.n_layers = 12;
    log.push(Event::ModelCardAdded { card: c.clone() });
    assert_eq!(log.state.model_cards[&c.id].n_layers, 12, "upsert");
    log.push(Event::ModelCardDeleted { model_id: c.id.clone() });
    assert!(log.state.model_cards.is_empty());
    log.push_noop(Event::ModelCardDeleted { model_id: c.id });
}

#[test]
fn deployment_created_waiting_deleted() {
    let mut log = Log::new();
    let mut d = deployment(1);
    d.status = DeploymentStatus::Running;
    d.instance = Some(InstanceId::from_u128(77));
    log.push(Event::DeploymentCreated { deployment: d.clone() });
    let stored = &log.state.deployments[&d.id];
    assert_eq!(stored.status, DeploymentStatus::Placing, "a new deployment is Placing");
    assert_eq!(stored.instance, None, "and owns no instance yet");
    log.push_noop(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    log.push(Event::DeploymentWaiting {
        deployment_id: d.id,
        reason: "no memory".into(),
        retry_at_ms: 42,
    });
    let stored = &log.state.deployments[&d.id];
    assert_eq!(
        stored.status,
        DeploymentStatus::Waiting {
            reason: "no memory".into()
        }
    );
    assert_eq!(stored.retry_at_ms, 42);
    log.push_noop(Event::DeploymentWaiting {
        deployment_id: DeploymentId::from_u128(9),
        reason: "x".into(),
        retry_at_ms: 1,
    });
    log.push(Event::DeploymentDeleted { deployment_id: d.id });
    assert!(log.state.deployments.is_empty());
}

#[test]
fn instance_created_links_its_deployment_and_ignores_unknown_nodes() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    log.push(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    log.push_noop(Event::InstanceCreated {
        instance: instance(1, &[node(1), node(2)], None),
    });
    let i = instance(2, &[node(1)], Some(DeploymentId::from_u128(1)));
    log.push(Event::InstanceCreated { instance: i.clone() });
    assert_eq!(*log.state.instances[&i.id], i);
    let d = &log.state.deployments[&DeploymentId::from_u128(1)];
    assert_eq!(d.instance, Some(i.id));
    assert_eq!(d.status, DeploymentStatus::Running);
    // A second instance for the same deployment, or the same id again, is ignored.
    log.push_noop(Event::InstanceCreated {
        instance: instance(3, &[node(1)], Some(DeploymentId::from_u128(1))),
    });
    log.push_noop(Event::InstanceCreated { instance: i });
}

#[test]
fn instance_deleted_cascades_to_runners_tasks_and_deployment() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    log.add_node(node(2), 8);
    log.push(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    let i = instance(1, &[node(1), node(2)], Some(DeploymentId::from_u128(1)));
    let other = instance(2, &[node(1)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    log.push(Event::InstanceCreated {
        instance: other.clone(),
    });
    log.push(runner_status(&i, node(1), RunnerStatus::Ready));
    log.push(runner_status(&i, node(2), RunnerStatus::Ready));
    log.push(runner_status(&other, node(1), RunnerStatus::Ready));
    log.push(Event::TaskCreated { task: task(1, i.id) });
    log.push(Event::TaskCreated { task: task(2, i.id) });
    log.push(Event::TaskCreated {
        task: task(3, other.id),
    });
    log.push(Event::TaskStatusUpdated {
        task_id: TaskId::from_u128(2),
        status: TaskProgress::Complete,
    });
    log.push(Event::InstanceDeleted {
        instance_id: i.id,
        reason: DeleteReason::User,
    });
    let s = &log.state;
    let deleted_at = log.time;
    assert!(!s.instances.contains_key(&i.id));
    assert!(s.instances.contains_key(&other.id));
    assert_eq!(s.runners.len(), 1, "only the other instance's runner is left");
    let t1 = &s.tasks[&TaskId::from_u128(1)];
    assert_eq!(t1.status, TaskStatus::Failed);
    let err = t1.error.clone().unwrap();
    assert_eq!(err.kind, ErrorKind::InstanceGone);
    assert_eq!(err.message, format!("instance {} deleted: deleted by the user", i.id));
    assert_eq!(t1.updated_ms, deleted_at);
    assert_eq!(
        s.tasks[&TaskId::from_u128(2)].status,
        TaskStatus::Complete,
        "terminal tasks keep their status"
    );
    assert_eq!(
        s.tasks[&TaskId::from_u128(3)].status,
        TaskStatus::Pending,
        "other instances are untouched"
    );
    let d = &s.deployments[&DeploymentId::from_u128(1)];
    assert_eq!(d.instance, None);
    log.push_noop(Event::InstanceDeleted {
        instance_id: i.id,
        reason: DeleteReason::User,
    });
}

#[test]
fn instance_deleted_for_runner_failures_backs_off_then_fails_the_deployment() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let did = DeploymentId::from_u128(1);
    log.push(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    for round in 1..=3u32 {
        let i = instance(u128::from(round), &[node(1)], Some(did));
        log.push(Event::InstanceCreated { instance: i.clone() });
        let failed = RunnerStatus::Failed {
            error: "cannot load /models/broken.gguf: bad magic".into(),
            attempt: 5,
        };
        log.push(runner_status(&i, node(1), failed));
        log.push(Event::InstanceDeleted {
            instance_id: i.id,
            reason: DeleteReason::RunnerFailures,
        });
        let d = &log.state.deployments[&did];
        assert_eq!(d.failures, round);
        assert_eq!(
            d.retry_at_ms,
            log.time + shoal_core::apply::deployment_backoff_ms(round)
        );
        if round < 3 {
            assert_eq!(d.status, DeploymentStatus::Placing);
        } else {
            match &d.status {
                DeploymentStatus::Failed { reason } => {
                    assert!(
                        reason.contains("/models/broken.gguf: bad magic"),
                        "the last error: {reason}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(shoal_core::apply::deployment_backoff_ms(1), 2_000);
    assert_eq!(shoal_core::apply::deployment_backoff_ms(2), 4_000);
    assert_eq!(shoal_core::apply::deployment_backoff_ms(10), 60_000);
}

#[test]
fn a_deployment_whose_instance_serves_again_counts_its_failures_from_zero() {
    // Deletions count while they come in a row: one that recovered each time is never given up.
    let mut log = Log::new();
    log.add_node(node(1), 8);
    log.add_node(node(2), 8);
    let did = DeploymentId::from_u128(1);
    log.push(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    let first = instance(1, &[node(1)], Some(did));
    log.push(Event::InstanceCreated {
        instance: first.clone(),
    });
    log.push(Event::InstanceDeleted {
        instance_id: first.id,
        reason: DeleteReason::RunnerFailures,
    });
    assert_eq!(log.state.deployments[&did].failures, 1);

    let second = instance(2, &[node(1), node(2)], Some(did));
    log.push(Event::InstanceCreated {
        instance: second.clone(),
    });
    // One runner serving is not enough: the instance is not up yet.
    log.push(runner_status(&second, node(1), RunnerStatus::Ready));
    assert_eq!(log.state.deployments[&did].failures, 1);
    log.push(runner_status(&second, node(2), RunnerStatus::Running));
    assert_eq!(
        log.state.deployments[&did].failures, 0,
        "the instance serves: a fresh count"
    );
    // Serving again changes nothing more.
    log.push(runner_status(&second, node(1), RunnerStatus::Running));
    assert_eq!(log.state.deployments[&did].failures, 0);
}

#[test]
fn node_timed_out_cascades_to_instances_runners_tasks_and_facts() {
    let mut log = Log::new();
    for n in 1..=3 {
        log.add_node(node(n), 8);
    }
    log.push(Event::DownloadUpdated {
        node: node(2),
        model_id: card().id,
        progress: DownloadProgress::Completed { total: 1 },
    });
    log.push(Event::DeploymentCreated {
        deployment: deployment(1),
    });
    let spans = instance(1, &[node(1), node(2)], Some(DeploymentId::from_u128(1)));
    let elsewhere = instance(2, &[node(1), node(3)], None);
    log.push(Event::InstanceCreated {
        instance: spans.clone(),
    });
    log.push(Event::InstanceCreated {
        instance: elsewhere.clone(),
    });
    log.push(runner_status(&spans, node(1), RunnerStatus::Running));
    log.push(runner_status(&spans, node(2), RunnerStatus::Running));
    log.push(runner_status(&elsewhere, node(3), RunnerStatus::Ready));
    log.push(Event::TaskCreated {
        task: task(1, spans.id),
    });
    log.push(Event::TaskCreated {
        task: task(2, elsewhere.id),
    });
    log.push(Event::NodeTimedOut {
        node: node(2),
        reason: "token lost".into(),
    });
    let s = &log.state;
    assert!(!s.nodes.contains_key(&node(2)), "facts and downloads go with the node");
    assert!(!s.instances.contains_key(&spans.id));
    assert!(s.instances.contains_key(&elsewhere.id));
    assert!(s.runners.values().all(|r| r.instance == elsewhere.id));
    let failed = &s.tasks[&TaskId::from_u128(1)];
    assert_eq!(failed.status, TaskStatus::Failed);
    assert!(
        failed
            .error
            .as_ref()
            .unwrap()
            .message
            .contains(&format!("node {} was lost", node(2)))
    );
    assert_eq!(s.tasks[&TaskId::from_u128(2)].status, TaskStatus::Pending);
    let d = &s.deployments[&DeploymentId::from_u128(1)];
    assert_eq!(
        (d.instance, &d.status, d.retry_at_ms),
        (None, &DeploymentStatus::Placing, log.time)
    );
    log.push_noop(Event::NodeTimedOut {
        node: node(2),
        reason: "again".into(),
    });
}

#[test]
fn runner_status_updated_upserts_removes_and_counts_failures() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    log.add_node(node(2), 8);
    let i = instance(1, &[node(1), node(2)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    let r1 = runner_of(&i, &node(1));
    // Wrong node for the runner, unknown instance: ignored.
    log.push_noop(Event::RunnerStatusUpdated {
        runner_id: r1,
        instance_id: i.id,
        node: node(2),
        status: RunnerStatus::Idle,
        data_addrs: vec![],
    });
    log.push_noop(Event::RunnerStatusUpdated {
        runner_id: r1,
        instance_id: InstanceId::from_u128(99),
        node: node(1),
        status: RunnerStatus::Idle,
        data_addrs: vec![],
    });
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4000);
    log.push(Event::RunnerStatusUpdated {
        runner_id: r1,
        instance_id: i.id,
        node: node(1),
        status: RunnerStatus::Idle,
        data_addrs: vec![addr],
    });
    log.push(runner_status(
        &i,
        node(1),
        RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 15,
        },
    ));
    let rec = &log.state.runners[&r1];
    assert_eq!(
        rec.status,
        RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 15
        }
    );
    assert_eq!(rec.data_addrs, vec![addr], "empty data_addrs keep the known ones");
    assert_eq!((rec.instance, rec.node), (i.id, node(1)));
    log.push(runner_status(
        &i,
        node(1),
        RunnerStatus::Failed {
            error: "boom".into(),
            attempt: 2,
        },
    ));
    log.push(runner_status(
        &i,
        node(1),
        RunnerStatus::Failed {
            error: "boom".into(),
            attempt: 1,
        },
    ));
    assert_eq!(
        log.state.instances[&i.id].runner_failures[&r1], 1,
        "the latest attempt: a worker counts from 1 again after its runner served a while"
    );

    log.push(runner_status(&i, node(1), RunnerStatus::Shutdown));
    assert!(!log.state.runners.contains_key(&r1));
}

#[test]
fn task_created_needs_its_instance_and_a_fresh_command() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let i = instance(1, &[node(1)], None);
    log.push_noop(Event::TaskCreated { task: task(1, i.id) });
    log.push(Event::InstanceCreated { instance: i.clone() });
    let t = task(1, i.id);
    log.push(Event::TaskCreated { task: t.clone() });
    assert_eq!(*log.state.tasks[&t.id], t);
    assert_eq!(log.state.task_by_command[&t.command_id], t.id);
    let mut dup = task(2, i.id);
    dup.command_id = t.command_id;
    log.push_noop(Event::TaskCreated { task: dup });
    let mut same_id = task(1, i.id);
    same_id.command_id = CommandId::from_u128(1);
    log.push_noop(Event::TaskCreated { task: same_id });
}

#[test]
fn task_status_updated_until_terminal() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let i = instance(1, &[node(1)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    let t = task(1, i.id);
    log.push(Event::TaskCreated { task: t.clone() });
    log.push(Event::TaskStatusUpdated {
        task_id: t.id,
        status: TaskProgress::Running,
    });
    assert_eq!(log.state.tasks[&t.id].status, TaskStatus::Running);
    assert_eq!(log.state.tasks[&t.id].updated_ms, log.time);
    log.push(Event::TaskStatusUpdated {
        task_id: t.id,
        status: TaskProgress::Complete,
    });
    assert_eq!(log.state.tasks[&t.id].status, TaskStatus::Complete);
    log.push_noop(Event::TaskStatusUpdated {
        task_id: t.id,
        status: TaskProgress::Cancelled,
    });
    log.push_noop(Event::TaskStatusUpdated {
        task_id: TaskId::from_u128(5),
        status: TaskProgress::Running,
    });
}

#[test]
fn task_failed_records_the_error_once() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let i = instance(1, &[node(1)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    let t = task(1, i.id);
    log.push(Event::TaskCreated { task: t.clone() });
    let error = TaskError {
        kind: ErrorKind::Runner,
        message: "runner exited".into(),
    };
    log.push(Event::TaskFailed {
        task_id: t.id,
        error: error.clone(),
    });
    assert_eq!(log.state.tasks[&t.id].status, TaskStatus::Failed);
    assert_eq!(log.state.tasks[&t.id].error, Some(error));
    log.push_noop(Event::TaskFailed {
        task_id: t.id,
        error: TaskError {
            kind: ErrorKind::Pipeline,
            message: "second report".into(),
        },
    });
    let cancelled = task(2, i.id);
    log.push(Event::TaskCreated {
        task: cancelled.clone(),
    });
    log.push(Event::TaskStatusUpdated {
        task_id: cancelled.id,
        status: TaskProgress::Cancelled,
    });
    log.push_noop(Event::TaskFailed {
        task_id: cancelled.id,
        error: TaskError {
            kind: ErrorKind::Runner,
            message: "late".into(),
        },
    });
}

#[test]
fn task_deleted_removes_task_and_index() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let i = instance(1, &[node(1)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    let t = task(1, i.id);
    log.push(Event::TaskCreated { task: t.clone() });
    log.push(Event::TaskDeleted { task_id: t.id });
    assert!(log.state.tasks.is_empty());
    assert!(log.state.task_by_command.is_empty());
    log.push_noop(Event::TaskDeleted { task_id: t.id });
    // The command may be used again after deletion only by a new TaskCreated the master chose to index.
    log.push(Event::TaskCreated { task: t.clone() });
    assert_eq!(log.state.task_by_command[&t.command_id], t.id);
}

#[test]
fn an_instance_deleted_for_runner_failures_tells_its_tasks_the_runners_error() {
    let mut log = Log::new();
    log.add_node(node(1), 8);
    let i = instance(1, &[node(1)], None);
    log.push(Event::InstanceCreated { instance: i.clone() });
    let error = "loading layers 0..30: tensor `blk.0.attn_q.weight` not found".to_string();
    log.push(runner_status(
        &i,
        node(1),
        RunnerStatus::Failed {
            error: error.clone(),
            attempt: 5,
        },
    ));
    log.push(Event::TaskCreated { task: task(1, i.id) });
    log.push(Event::InstanceDeleted {
        instance_id: i.id,
        reason: DeleteReason::RunnerFailures,
    });
    let err = log.state.tasks[&TaskId::from_u128(1)].error.clone().unwrap();
    assert_eq!(
        err.message,
        format!(
            "instance {} deleted: its runners failed too often; the last error: {error}",
            i.id
        )
    );
}
