//! The stream registry's pure decisions (SYSTEM.md §11.3): one or more tests per numbered case that `reconcile`,
//! `on_chunk` or the close-reason table decides, the deadlines, the container, and a property over random States.
//! States are built by applying events, as every node does; a "snapshot install" is just a State the registry never
//! saw the events of.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use imbl::OrdMap;
use proptest::prelude::*;
use shoal_core::apply;
use shoal_core::invariants::check_invariants;
use shoal_core::registry::{
    COMPLETE_GRACE_MS, ChunkVerdict, CloseReason, Registry, STREAM_TTL_MS, StreamAction, StreamEntry, next_deadline,
    on_chunk, reconcile,
};
use shoal_core::testing::{EventGen, Mix};
use shoal_types::card::builtin_cards;
use shoal_types::chunk::FinishReason;
use shoal_types::model::*;
use shoal_types::wire::SEQ_OOB;
use shoal_types::*;

const T0: u64 = 1_000_000;
const TTL: u64 = STREAM_TTL_MS;
const GRACE: u64 = COMPLETE_GRACE_MS;

fn node(i: u8) -> NodeId {
    NodeId::from_bytes([0x10 + i; 16])
}

fn session(term: u64) -> SessionId {
    SessionId { term, master: node(0) }
}

/// Applies events with consecutive idx in one session, checking the invariants after each.
#[derive(Clone)]
struct Log {
    state: State,
    time: u64,
}

impl Log {
    fn new(term: u64) -> Log {
        let mut log = Log {
            state: State::empty(),
            time: T0,
        };
        log.push(Event::SessionOpened {
            session: session(term),
            base: Pos::EMPTY,
        });
        log
    }

    fn push(&mut self, event: Event) -> &State {
        self.time += 10;
        let session = match &event {
            Event::SessionOpened { session, .. } => *session,
            _ => self.state.session,
        };
        let e = IndexedEvent {
            idx: (self.state.pos.idx + 1) as u64,
            session,
            prev: self.state.pos.session,
            time_ms: self.time,
            origin: None,
            event,
        };
        self.state = apply(&self.state, &e).unwrap();
        check_invariants(&self.state).unwrap();
        &self.state
    }

    fn add_node(&mut self, n: NodeId) {
        self.push(Event::NodeGatheredInfo {
            node: n,
            info: NodeFact::Memory(Memory {
                total: 16 << 30,
                available: 8 << 30,
            }),
        });
    }
}

fn card() -> ModelCard {
    builtin_cards().remove(0)
}

fn instance(id: u128, n: NodeId) -> Instance {
    let runner = RunnerId::from_u128(id * 100);
    let mut shards = OrdMap::new();
    shards.insert(
        runner,
        ShardMetadata::Pipeline(PipelineShard {
            start_layer: 0,
            end_layer: 30,
            n_layers: 30,
            device_rank: 0,
            world_size: 1,
        }),
    );
    let mut node_runner = OrdMap::new();
    node_runner.insert(n, runner);
    Instance {
        id: InstanceId::from_u128(id),
        deployment: None,
        model: card(),
        assignments: ShardAssignments { shards, node_runner },
        runner_failures: OrdMap::new(),
        created_ms: T0,
        token: Default::default(),
    }
}

fn cmd(task: u128) -> CommandId {
    CommandId::from_u128(task + 9000)
}

fn tid(task: u128) -> TaskId {
    TaskId::from_u128(task)
}

fn iid(instance: u128) -> InstanceId {
    InstanceId::from_u128(instance)
}

fn task(id: u128, instance: InstanceId) -> Task {
    Task {
        id: tid(id),
        command_id: cmd(id),
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

/// A cluster of two nodes with instance 1 on node 1 and instance 2 on node 2, and no task.
fn cluster(term: u64) -> Log {
    let mut log = Log::new(term);
    log.add_node(node(1));
    log.add_node(node(2));
    log.push(Event::InstanceCreated {
        instance: instance(1, node(1)),
    });
    log.push(Event::InstanceCreated {
        instance: instance(2, node(2)),
    });
    log
}

fn create_task(log: &mut Log, id: u128, instance: u128) {
    log.push(Event::TaskCreated {
        task: task(id, iid(instance)),
    });
}

fn set_status(log: &mut Log, id: u128, status: TaskProgress) {
    log.push(Event::TaskStatusUpdated {
        task_id: tid(id),
        status,
    });
}

/// `cluster(1)` with task 7 running on instance 1.
fn running() -> Log {
    let mut log = cluster(1);
    create_task(&mut log, 7, 1);
    set_status(&mut log, 7, TaskProgress::Running);
    log
}

fn token(text: &str, finish: Option<FinishReason>) -> Chunk {
    Chunk::Token {
        text: text.to_owned(),
        token_id: 1,
        is_thinking: false,
        logprob: None,
        top_logprobs: Vec::new(),
        finish,
        usage: None,
        stats: None,
        token_bytes: Vec::new(),
    }
}

fn error_chunk(message: &str) -> Chunk {
    Chunk::Error {
        kind: ErrorKind::Runner,
        message: message.to_owned(),
    }
}

fn observe(command_id: CommandId, task: TaskId) -> StreamAction {
    StreamAction::MarkObserved { command_id, task }
}

fn close(command_id: CommandId, reason: CloseReason) -> StreamAction {
    StreamAction::Close { command_id, reason }
}

fn registry_with(streams: &[(CommandId, u64)]) -> Registry {
    let mut reg = Registry::new();
    for (c, at) in streams {
        assert!(reg.register(*c, *at));
    }
    reg
}

/// What the shell does after each State: reconcile, then apply every action. Returns the actions and, per action,
/// what `apply` answered.
fn step(reg: &mut Registry, state: &State, now_ms: u64) -> Vec<StreamAction> {
    let actions = reg.reconcile(state, now_ms, TTL, GRACE);
    for a in &actions {
        assert!(reg.apply(a), "every action names an open stream: {a:?}");
    }
    actions
}

/// A stream registered at T0 for task 7's command and already observed in `running()`.
fn observed_stream() -> Registry {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let actions = step(&mut reg, &running().state, T0 + 1);
    assert_eq!(actions, vec![observe(cmd(7), tid(7))]);
    reg
}

fn failed_message(log: &State, id: u128) -> String {
    log.tasks[&tid(id)].error.as_ref().unwrap().message.clone()
}

// ---- Case 1: register first; chunks before `TaskCreated` are delivered in order. ----

#[test]
fn case1_chunks_before_task_created_are_delivered_in_order() {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    // The API has not applied `TaskCreated` yet: its State has no task for the command.
    let before = cluster(1).state;
    assert_eq!(step(&mut reg, &before, T0 + 5), vec![]);

    let chunks = [
        token("Hello", None),
        Chunk::PrefillProgress {
            processed_tokens: 3,
            total_tokens: 3,
        },
        token(" world", None),
        token("!", Some(FinishReason::Stop)),
    ];
    for (seq, chunk) in chunks.iter().enumerate() {
        let verdict = reg.on_chunk(&cmd(7), seq as u32, chunk).unwrap();
        assert_eq!(
            verdict,
            ChunkVerdict::Deliver {
                is_final: seq == chunks.len() - 1
            }
        );
        assert!(reg.delivered(&cmd(7)));
        assert_eq!(reg.get(&cmd(7)).unwrap().observed, None, "still unobserved");
        // Unrelated States in between keep the stream.
        assert_eq!(step(&mut reg, &before, T0 + 10 + seq as u64), vec![]);
    }
    assert_eq!(reg.get(&cmd(7)).unwrap().next_seq, 4);
}

#[test]
fn case1_an_unregistered_command_id_is_not_the_pure_core_s_business() {
    let reg = registry_with(&[(cmd(7), T0)]);
    assert_eq!(reg.on_chunk(&cmd(8), 0, &token("x", None)), None);
}

// ---- Case 2: an unobserved stream survives unrelated State changes and snapshot installs, until the TTL. ----

#[test]
fn case2_unobserved_stream_survives_many_unrelated_states_and_snapshot_installs() {
    let reg = registry_with(&[(cmd(7), T0)]);
    let mut generator = EventGen::new(11, Mix::Chaos);
    for i in 0..2_000u64 {
        generator.next_event();
        let now = T0 + i * (TTL - 1) / 2_000;
        assert_eq!(reconcile(&reg, generator.state(), now, TTL, GRACE), vec![], "event {i}");
    }
    // Snapshot installs: whole States from other histories, never seen event by event.
    for seed in 0..20 {
        let mut other = EventGen::new(100 + seed, Mix::Typical);
        other.take_events(300);
        assert_eq!(reconcile(&reg, other.state(), T0 + TTL - 1, TTL, GRACE), vec![]);
        assert_eq!(reconcile(&reg, &cluster(2).state, T0 + TTL - 1, TTL, GRACE), vec![]);
    }
}

#[test]
fn case2_unobserved_stream_is_kept_until_the_ttl_and_closes_not_accepted_exactly_at_it() {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let state = cluster(1).state;
    for now in [T0, T0 + 1, T0 + TTL / 2, T0 + TTL - 1] {
        assert_eq!(step(&mut reg, &state, now), vec![], "at {now}");
    }
    assert_eq!(reg.next_deadline(TTL, GRACE), Some(T0 + TTL));
    assert_eq!(
        step(&mut reg, &state, T0 + TTL),
        vec![close(cmd(7), CloseReason::NotAccepted)]
    );
    assert!(reg.is_empty());
}

#[test]
fn case2_a_clock_behind_registration_never_closes() {
    let reg = registry_with(&[(cmd(7), T0)]);
    assert_eq!(reconcile(&reg, &State::empty(), 0, TTL, GRACE), vec![]);
}

// ---- Case 3: observed task, then its instance is deleted. ----

#[test]
fn case3_instance_deleted_closes_an_observed_stream_once() {
    let mut reg = observed_stream();
    let mut log = running();
    log.push(Event::InstanceDeleted {
        instance_id: iid(1),
        reason: DeleteReason::User,
    });
    // The cascade fails the task, and Failed is checked first: the close carries the cascade's message.
    let message = failed_message(&log.state, 7);
    assert!(message.contains("deleted"), "{message}");
    let actions = reg.reconcile(&log.state, T0 + 100, TTL, GRACE);
    assert_eq!(actions, vec![close(cmd(7), CloseReason::Failed { message })]);
    assert!(closed_reason(&actions).finished(), "TaskFinished is sent");
    assert!(reg.apply(&actions[0]), "the first close ends the stream");
    assert!(
        !reg.apply(&actions[0]),
        "a second close finds nothing: TaskFinished once"
    );
    // Later States (the sweep deleting the task) close nothing again.
    log.push(Event::TaskDeleted { task_id: tid(7) });
    assert_eq!(step(&mut reg, &log.state, T0 + 200), vec![]);
}

fn closed_reason(actions: &[StreamAction]) -> &CloseReason {
    actions
        .iter()
        .find_map(|a| match a {
            StreamAction::Close { reason, .. } => Some(reason),
            _ => None,
        })
        .unwrap()
}

#[test]
fn case3_an_unfinished_task_whose_instance_is_absent_closes_instance_gone() {
    // A State where the cascade never ran (an inconsistent snapshot): the task is still Running, its instance gone.
    let mut reg = observed_stream();
    let mut state = running().state;
    state.instances.remove(&iid(1));
    assert_eq!(
        step(&mut reg, &state, T0 + 100),
        vec![close(cmd(7), CloseReason::InstanceGone)]
    );
    // Same for a Pending task, observed in the same pass.
    let mut log = cluster(1);
    create_task(&mut log, 8, 2);
    let mut state = log.state;
    state.instances.remove(&iid(2));
    let reg = registry_with(&[(cmd(8), T0)]);
    assert_eq!(
        reconcile(&reg, &state, T0 + 1, TTL, GRACE),
        vec![observe(cmd(8), tid(8)), close(cmd(8), CloseReason::InstanceGone)]
    );
}

#[test]
fn a_healthy_task_is_observed_and_kept() {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let mut log = cluster(1);
    create_task(&mut log, 7, 1);
    assert_eq!(step(&mut reg, &log.state, T0 + 1), vec![observe(cmd(7), tid(7))]);
    set_status(&mut log, 7, TaskProgress::Running);
    // Far beyond the TTL: an observed, healthy stream has no deadline.
    assert_eq!(step(&mut reg, &log.state, T0 + 100 * TTL), vec![]);
    assert_eq!(reg.next_deadline(TTL, GRACE), None);
    // Unrelated changes, including the other instance's deletion, close nothing.
    log.push(Event::InstanceDeleted {
        instance_id: iid(2),
        reason: DeleteReason::User,
    });
    assert_eq!(step(&mut reg, &log.state, T0 + 100 * TTL), vec![]);
}

// ---- Case 4: the instance deletion is seen only through a snapshot install. ----

#[test]
fn case4_instance_deletion_seen_only_through_a_snapshot_install_closes() {
    let mut reg = observed_stream();
    // The master's history went on without this node: the instance was deleted by user, then its node timed out.
    let mut master = running();
    master.push(Event::InstanceDeleted {
        instance_id: iid(1),
        reason: DeleteReason::User,
    });
    let snapshot = master.state.clone();
    let message = failed_message(&snapshot, 7);
    assert_eq!(
        step(&mut reg, &snapshot, T0 + 50),
        vec![close(cmd(7), CloseReason::Failed { message })]
    );

    // The same through a node loss the API never applied.
    let mut reg = observed_stream();
    let mut master = running();
    master.push(Event::NodeTimedOut {
        node: node(1),
        reason: "lease expired".into(),
    });
    let snapshot = master.state;
    assert!(!snapshot.instances.contains_key(&iid(1)));
    let message = failed_message(&snapshot, 7);
    assert!(message.contains("was lost"), "{message}");
    assert_eq!(
        step(&mut reg, &snapshot, T0 + 50),
        vec![close(cmd(7), CloseReason::Failed { message })]
    );
}

#[test]
fn case4_a_snapshot_that_has_the_task_but_not_its_instance_closes_instance_gone() {
    let mut reg = observed_stream();
    // Built without ever seeing `InstanceDeleted`: the task Running, the instance simply absent.
    let mut snapshot = running().state;
    snapshot.instances.remove(&iid(1));
    snapshot.runners = OrdMap::new();
    assert_eq!(
        step(&mut reg, &snapshot, T0 + 50),
        vec![close(cmd(7), CloseReason::InstanceGone)]
    );
}

// ---- Case 5: the observed task leaves State. ----

#[test]
fn case5_observed_task_deleted_closes_task_gone() {
    let mut reg = observed_stream();
    let mut log = running();
    log.push(Event::TaskDeleted { task_id: tid(7) });
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100),
        vec![close(cmd(7), CloseReason::TaskGone)]
    );
    assert!(reg.is_empty());
}

#[test]
fn case5_observed_task_lost_in_a_partition_heal_closes_task_gone() {
    let mut reg = observed_stream();
    // The healed State comes from a history that never had the task.
    let healed = cluster(2).state;
    assert!(healed.task_for_command(&cmd(7)).is_none());
    assert_eq!(
        step(&mut reg, &healed, T0 + 100),
        vec![close(cmd(7), CloseReason::TaskGone)]
    );
}

#[test]
fn case5_task_gone_does_not_wait_for_the_ttl() {
    let mut reg = observed_stream();
    let healed = cluster(2).state;
    // Well inside the TTL: observation, not time, decides.
    assert_eq!(
        step(&mut reg, &healed, T0 + 2),
        vec![close(cmd(7), CloseReason::TaskGone)]
    );
}

// ---- Case 6: the task fails; the runner's error chunk may come first. ----

#[test]
fn case6_failed_task_closes_with_its_error_message() {
    let mut reg = observed_stream();
    let mut log = running();
    log.push(Event::TaskFailed {
        task_id: tid(7),
        error: TaskError {
            kind: ErrorKind::Runner,
            message: "runner exited with signal 9".into(),
        },
    });
    let actions = step(&mut reg, &log.state, T0 + 100);
    assert_eq!(
        actions,
        vec![close(
            cmd(7),
            CloseReason::Failed {
                message: "runner exited with signal 9".into()
            }
        )]
    );
    let reason = closed_reason(&actions);
    assert_eq!(reason.message(), "runner exited with signal 9");
}

#[test]
fn case6_failed_without_an_error_record_still_closes_failed() {
    let mut reg = observed_stream();
    let mut state = running().state;
    let t = state.tasks.get_mut(&tid(7)).unwrap();
    let t = std::sync::Arc::make_mut(t);
    t.status = TaskStatus::Failed;
    t.error = None;
    let actions = step(&mut reg, &state, T0 + 100);
    assert!(matches!(closed_reason(&actions), CloseReason::Failed { message } if !message.is_empty()));
}

#[test]
fn case6_error_chunk_first_closes_the_same_way_and_only_once() {
    let mut reg = observed_stream();
    assert_eq!(
        reg.on_chunk(&cmd(7), 0, &token("a", None)),
        Some(ChunkVerdict::Deliver { is_final: false })
    );
    reg.delivered(&cmd(7));
    // The worker's error chunk, out of band.
    let verdict = reg.on_chunk(&cmd(7), SEQ_OOB, &error_chunk("runner exited")).unwrap();
    let ChunkVerdict::Close(reason) = verdict else {
        panic!("an error chunk closes")
    };
    assert_eq!(
        reason,
        CloseReason::Failed {
            message: "runner exited".into()
        }
    );
    assert!(reg.apply(&close(cmd(7), reason.clone())), "closes once");
    // Then `TaskFailed` is applied: the stream is gone, nothing closes again.
    let mut log = running();
    log.push(Event::TaskFailed {
        task_id: tid(7),
        error: TaskError {
            kind: ErrorKind::Runner,
            message: "runner exited".into(),
        },
    });
    assert_eq!(step(&mut reg, &log.state, T0 + 100), vec![]);
    assert!(!reg.apply(&close(cmd(7), reason)), "a second close finds nothing");
    // The State path would have produced the very same reason.
    let fresh = observed_stream();
    assert_eq!(
        fresh.reconcile(&log.state, T0 + 100, TTL, GRACE),
        vec![close(
            cmd(7),
            CloseReason::Failed {
                message: "runner exited".into()
            }
        )]
    );
}

#[test]
fn case6_a_request_the_model_cannot_take_closes_refused_by_either_path() {
    let message = "the prompt is at least 9000 tokens";
    let mut log = running();
    log.push(Event::TaskFailed {
        task_id: tid(7),
        error: TaskError {
            kind: ErrorKind::Invalid,
            message: message.into(),
        },
    });
    let refused = CloseReason::Refused {
        message: message.into(),
    };
    let mut reg = observed_stream();
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100),
        vec![close(cmd(7), refused.clone())]
    );
    let chunk = Chunk::Error {
        kind: ErrorKind::Invalid,
        message: message.into(),
    };
    assert_eq!(
        on_chunk(&StreamEntry::new(cmd(7), T0), SEQ_OOB, &chunk),
        ChunkVerdict::Close(refused.clone())
    );
    assert_eq!(refused.message(), message);
}

#[test]
fn case6_error_chunk_closes_at_any_seq() {
    let entry = StreamEntry {
        next_seq: 3,
        ..StreamEntry::new(cmd(7), T0)
    };
    for seq in [0, 2, 3, 4, 1_000, SEQ_OOB] {
        assert_eq!(
            on_chunk(&entry, seq, &error_chunk("boom")),
            ChunkVerdict::Close(CloseReason::Failed { message: "boom".into() }),
            "seq {seq}"
        );
    }
}

// ---- Case 7: never observed for the TTL. ----

#[test]
fn case7_never_observed_for_the_ttl_is_a_504_whatever_was_sent() {
    for bytes_sent in [false, true] {
        let mut reg = registry_with(&[(cmd(7), T0)]);
        if bytes_sent {
            assert!(reg.mark_bytes_sent(&cmd(7)));
        }
        let actions = step(&mut reg, &cluster(1).state, T0 + STREAM_TTL_MS);
        assert_eq!(actions, vec![close(cmd(7), CloseReason::NotAccepted)]);
        let r = closed_reason(&actions);
        assert!(r.finished(), "TaskFinished is still sent: the task may appear later");
    }
}

#[test]
fn case7_each_stream_has_its_own_ttl() {
    let mut reg = registry_with(&[(cmd(1), T0), (cmd(2), T0 + 3_000)]);
    let state = cluster(1).state;
    assert_eq!(reg.next_deadline(TTL, GRACE), Some(T0 + TTL));
    assert_eq!(
        step(&mut reg, &state, T0 + TTL),
        vec![close(cmd(1), CloseReason::NotAccepted)]
    );
    assert_eq!(reg.next_deadline(TTL, GRACE), Some(T0 + 3_000 + TTL));
    assert_eq!(step(&mut reg, &state, T0 + 3_000 + TTL - 1), vec![]);
    assert_eq!(
        step(&mut reg, &state, T0 + 3_000 + TTL),
        vec![close(cmd(2), CloseReason::NotAccepted)]
    );
}

// ---- Case 8: rejection (decided by the shell; the reason's mapping is pure). ----

#[test]
fn case8_rejections_send_no_task_finished() {
    let model = ModelId::from("org/model");
    let cases = [
        RejectReason::NoInstance { model: model.clone() },
        RejectReason::UnknownModel { model },
        RejectReason::NotFound,
        RejectReason::Placement(PlacementError::TooFewLayers),
        RejectReason::Invalid { message: "bad".into() },
        RejectReason::InvalidInstance { message: "bad".into() },
    ];
    for reject in cases {
        let r = CloseReason::Rejected(reject.clone());
        assert_eq!(r.message(), reject.to_string());
        assert!(!r.finished(), "no task exists: no TaskFinished");
        assert!(r.writes_response());
    }
}

#[test]
fn case8_a_rejected_stream_is_removed_once() {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let rejected = close(
        cmd(7),
        CloseReason::Rejected(RejectReason::NoInstance {
            model: ModelId::from("org/model"),
        }),
    );
    assert!(reg.apply(&rejected));
    assert!(!reg.apply(&rejected));
    assert_eq!(reg.reconcile(&State::empty(), T0 + 2 * TTL, TTL, GRACE), vec![]);
}

// ---- Case 10: the new master lacks the task (it diverged); the snapshot install closes the stream. ----

#[test]
fn case10_new_master_without_the_task_closes_task_gone_after_snapshot_install() {
    let mut reg = observed_stream();
    // The new master's history: the same cluster, other tasks, but not ours.
    let mut new_master = cluster(2);
    create_task(&mut new_master, 8, 1);
    set_status(&mut new_master, 8, TaskProgress::Running);
    let installed = new_master.state;
    assert_eq!(
        step(&mut reg, &installed, T0 + 300),
        vec![close(cmd(7), CloseReason::TaskGone)]
    );
}

#[test]
fn case10_a_new_master_that_kept_the_task_keeps_the_stream() {
    // State handover (case 9's pure part): the new master's State continues the old one; nothing closes.
    let mut reg = observed_stream();
    let mut log = running();
    log.push(Event::SessionOpened {
        session: session(2),
        base: log.state.pos,
    });
    assert_eq!(step(&mut reg, &log.state, T0 + 300), vec![]);
    assert_eq!(
        reg.on_chunk(&cmd(7), 0, &token("a", None)),
        Some(ChunkVerdict::Deliver { is_final: false })
    );
}

// ---- Cases 11 and 12: cancel and client gone (decided by the shell; the reasons' mapping is pure). ----

#[test]
fn case11_cancel_is_409_cancelled_and_sends_task_finished() {
    let r = CloseReason::Cancelled;
    assert!(r.finished());
    assert!(r.writes_response());
}

#[test]
fn case11_cancelled_in_state_closes_cancelled() {
    let mut reg = observed_stream();
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Cancelled);
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100),
        vec![close(cmd(7), CloseReason::Cancelled)]
    );
}

#[test]
fn case12_client_gone_writes_nothing_and_sends_task_finished() {
    let r = CloseReason::ClientGone;
    assert!(r.finished());
    assert!(!r.writes_response());
    let mut reg = observed_stream();
    assert!(reg.apply(&close(cmd(7), r.clone())));
    assert!(!reg.apply(&close(cmd(7), r)));
}

// ---- Case 13: normal end. ----

#[test]
fn case13_final_chunk_finishes_and_later_states_close_nothing() {
    let mut reg = observed_stream();
    assert!(reg.mark_bytes_sent(&cmd(7)));
    for (seq, text) in ["a", "b"].into_iter().enumerate() {
        assert_eq!(
            reg.on_chunk(&cmd(7), seq as u32, &token(text, None)),
            Some(ChunkVerdict::Deliver { is_final: false })
        );
        reg.delivered(&cmd(7));
    }
    assert_eq!(
        reg.on_chunk(&cmd(7), 2, &token("c", Some(FinishReason::Stop))),
        Some(ChunkVerdict::Deliver { is_final: true })
    );
    // Finish: the shell writes the terminator, sends TaskFinished and removes the stream.
    assert_eq!(reg.remove(&cmd(7)).map(|e| e.next_seq), Some(2));
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    assert_eq!(step(&mut reg, &log.state, T0 + 100), vec![]);
    log.push(Event::TaskDeleted { task_id: tid(7) });
    assert_eq!(step(&mut reg, &log.state, T0 + 200), vec![]);
    assert_eq!(reg.next_deadline(TTL, GRACE), None);
}

#[test]
fn case13_complete_in_state_before_the_final_chunk_waits_for_it() {
    let mut reg = observed_stream();
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100),
        vec![StreamAction::MarkComplete {
            command_id: cmd(7),
            at_ms: T0 + 100
        }]
    );
    // Further States inside the grace change nothing, and do not move the deadline.
    assert_eq!(step(&mut reg, &log.state, T0 + 100 + GRACE - 1), vec![]);
    assert_eq!(reg.get(&cmd(7)).unwrap().complete_seen_ms, Some(T0 + 100));
    // The final chunk arrives in time.
    assert_eq!(
        reg.on_chunk(
            &cmd(7),
            0,
            &Chunk::ToolCall {
                calls: Vec::new(),
                usage: None,
                stats: None
            }
        ),
        Some(ChunkVerdict::Deliver { is_final: true })
    );
    assert!(reg.remove(&cmd(7)).is_some());
    assert_eq!(step(&mut reg, &log.state, T0 + 100 + GRACE), vec![]);
}

// ---- Case 14: complete without the final chunk, or a skipped seq. ----

#[test]
fn case14_complete_without_final_chunk_closes_incomplete_exactly_at_the_grace() {
    let mut reg = observed_stream();
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    let seen = T0 + 100;
    step(&mut reg, &log.state, seen);
    assert_eq!(reg.next_deadline(TTL, GRACE), Some(seen + GRACE));
    assert_eq!(step(&mut reg, &log.state, seen + GRACE - 1), vec![]);
    let actions = step(&mut reg, &log.state, seen + GRACE);
    assert_eq!(actions, vec![close(cmd(7), CloseReason::Incomplete)]);
}

#[test]
fn case14_complete_seen_on_first_observation_arms_the_grace_then_closes() {
    // A lagged API first sees the task already Complete: observe and arm the grace in one pass.
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    assert_eq!(
        step(&mut reg, &log.state, T0 + 1),
        vec![
            observe(cmd(7), tid(7)),
            StreamAction::MarkComplete {
                command_id: cmd(7),
                at_ms: T0 + 1
            }
        ]
    );
    assert_eq!(
        step(&mut reg, &log.state, T0 + 1 + GRACE),
        vec![close(cmd(7), CloseReason::Incomplete)]
    );
}

#[test]
fn case14_skipped_or_repeated_seq_closes_stream_gap() {
    let entry = StreamEntry {
        next_seq: 3,
        ..StreamEntry::new(cmd(7), T0)
    };
    assert_eq!(
        on_chunk(&entry, 3, &token("x", None)),
        ChunkVerdict::Deliver { is_final: false }
    );
    for seq in [0, 2, 4, 5, SEQ_OOB] {
        assert_eq!(
            on_chunk(&entry, seq, &token("x", None)),
            ChunkVerdict::Close(CloseReason::StreamGap),
            "seq {seq}"
        );
        assert_eq!(
            on_chunk(&entry, seq, &token("x", Some(FinishReason::Length))),
            ChunkVerdict::Close(CloseReason::StreamGap),
            "a final chunk after a gap is not delivered either (seq {seq})"
        );
    }
}

// ---- Case 15: `TaskCreated` and its `TaskDeleted` back to back. ----

#[test]
fn case15_created_and_deleted_back_to_back_is_observed_then_closed_when_reconciled_per_event() {
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let mut log = cluster(1);
    // One drained batch of two events; the shell reconciles after each applied event.
    create_task(&mut log, 7, 1);
    assert_eq!(step(&mut reg, &log.state, T0 + 1), vec![observe(cmd(7), tid(7))]);
    log.push(Event::TaskDeleted { task_id: tid(7) });
    assert_eq!(
        step(&mut reg, &log.state, T0 + 1),
        vec![close(cmd(7), CloseReason::TaskGone)]
    );
}

#[test]
fn case15_reconciling_only_after_the_batch_would_leave_it_to_the_ttl() {
    // Why the shell must run reconcile on every intermediate State: the batch's final State alone never shows the
    // task, so the stream would wait for the TTL and answer 504 instead of 503 at once.
    let mut reg = registry_with(&[(cmd(7), T0)]);
    let mut log = cluster(1);
    create_task(&mut log, 7, 1);
    log.push(Event::TaskDeleted { task_id: tid(7) });
    assert_eq!(step(&mut reg, &log.state, T0 + 1), vec![]);
    assert_eq!(
        step(&mut reg, &log.state, T0 + TTL),
        vec![close(cmd(7), CloseReason::NotAccepted)]
    );
}

// ---- Case 16: broadcast lag; reconcile against the newest State only. ----

#[test]
fn case16_lagged_reconcile_against_the_newest_state_has_the_outcomes_of_3_to_5() {
    // Three observed streams: task 1 on instance 1, task 2 on instance 2, task 3 on instance 2; and one unobserved
    // stream whose task was created, started and failed entirely inside the lag.
    let mut log = cluster(1);
    for (t, i) in [(1, 1), (2, 2), (3, 2)] {
        create_task(&mut log, t, i);
        set_status(&mut log, t, TaskProgress::Running);
    }
    let mut reg = registry_with(&[(cmd(1), T0), (cmd(2), T0), (cmd(3), T0), (cmd(4), T0)]);
    assert_eq!(step(&mut reg, &log.state, T0 + 1).len(), 3);
    // The events the API missed while lagging.
    log.push(Event::InstanceDeleted {
        instance_id: iid(1),
        reason: DeleteReason::NodeLost(node(1)),
    });
    log.push(Event::TaskDeleted { task_id: tid(3) });
    create_task(&mut log, 4, 2);
    set_status(&mut log, 4, TaskProgress::Running);
    log.push(Event::TaskFailed {
        task_id: tid(4),
        error: TaskError {
            kind: ErrorKind::Pipeline,
            message: "peer closed the ring".into(),
        },
    });
    let newest = log.state.clone();
    let m1 = failed_message(&newest, 1);
    assert_eq!(
        step(&mut reg, &newest, T0 + 500),
        vec![
            close(cmd(1), CloseReason::Failed { message: m1 }),
            // Task 2 is healthy: kept.
            close(cmd(3), CloseReason::TaskGone),
            observe(cmd(4), tid(4)),
            close(
                cmd(4),
                CloseReason::Failed {
                    message: "peer closed the ring".into()
                }
            ),
        ]
    );
    assert_eq!(reg.iter().map(|e| e.command_id).collect::<Vec<_>>(), vec![cmd(2)]);
}

// ---- The order of the checks. ----

#[test]
fn complete_is_checked_before_the_instance() {
    // The instance's deletion leaves a Complete task Complete: the final chunk may still be in flight.
    let mut reg = observed_stream();
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    log.push(Event::InstanceDeleted {
        instance_id: iid(1),
        reason: DeleteReason::User,
    });
    assert_eq!(log.state.tasks[&tid(7)].status, TaskStatus::Complete);
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100),
        vec![StreamAction::MarkComplete {
            command_id: cmd(7),
            at_ms: T0 + 100
        }]
    );
    assert_eq!(
        step(&mut reg, &log.state, T0 + 100 + GRACE),
        vec![close(cmd(7), CloseReason::Incomplete)]
    );
}

#[test]
fn failed_and_cancelled_are_checked_before_the_instance() {
    for (status, expected) in [
        (
            TaskStatus::Failed,
            CloseReason::Failed {
                message: "generation failed".into(),
            },
        ),
        (TaskStatus::Cancelled, CloseReason::Cancelled),
    ] {
        let mut state = running().state;
        let t = std::sync::Arc::make_mut(state.tasks.get_mut(&tid(7)).unwrap());
        t.status = status;
        t.error = None;
        state.instances.remove(&iid(1));
        let reg = observed_stream();
        assert_eq!(
            reg.reconcile(&state, T0 + 100, TTL, GRACE),
            vec![close(cmd(7), expected)]
        );
    }
}

#[test]
fn observe_comes_before_close_in_one_pass() {
    let mut log = cluster(1);
    create_task(&mut log, 7, 1);
    set_status(&mut log, 7, TaskProgress::Cancelled);
    let reg = registry_with(&[(cmd(7), T0)]);
    assert_eq!(
        reg.reconcile(&log.state, T0 + 1, TTL, GRACE),
        vec![observe(cmd(7), tid(7)), close(cmd(7), CloseReason::Cancelled)]
    );
}

// ---- The close reasons (their HTTP statuses and codes are the API crate's: shoal-api's error.rs). ----

#[test]
fn every_close_reason_has_a_message_and_only_a_rejection_skips_task_finished() {
    let reasons = [
        CloseReason::NotAccepted,
        CloseReason::InstanceGone,
        CloseReason::TaskGone,
        CloseReason::Failed {
            message: "oom while decoding".into(),
        },
        CloseReason::Cancelled,
        CloseReason::Incomplete,
        CloseReason::StreamGap,
        CloseReason::ClientGone,
        CloseReason::ClientTooSlow,
        CloseReason::Rejected(RejectReason::NotFound),
    ];
    for reason in reasons {
        assert!(!reason.message().is_empty(), "{reason:?}");
        assert_eq!(reason.finished(), !matches!(reason, CloseReason::Rejected(_)));
        assert_eq!(reason.writes_response(), reason != CloseReason::ClientGone);
    }
    assert_eq!(
        CloseReason::Failed {
            message: "oom while decoding".into()
        }
        .message(),
        "oom while decoding"
    );
}

// ---- Deadlines. ----

#[test]
fn next_deadline_is_the_earliest_ttl_or_grace() {
    assert_eq!(next_deadline(&Registry::new(), TTL, GRACE), None);
    let unobserved = StreamEntry::new(cmd(1), T0);
    let observed = StreamEntry {
        observed: Some(tid(2)),
        ..StreamEntry::new(cmd(2), T0 - 50_000)
    };
    let complete = StreamEntry {
        observed: Some(tid(3)),
        complete_seen_ms: Some(T0 + 7_000),
        ..StreamEntry::new(cmd(3), T0 - 50_000)
    };
    assert_eq!(next_deadline([&unobserved], TTL, GRACE), Some(T0 + TTL));
    assert_eq!(
        next_deadline([&observed], TTL, GRACE),
        None,
        "an observed stream has no TTL"
    );
    assert_eq!(next_deadline([&complete], TTL, GRACE), Some(T0 + 7_000 + GRACE));
    assert_eq!(
        next_deadline([&unobserved, &observed, &complete], TTL, GRACE),
        Some(T0 + TTL)
    );
    assert_eq!(
        next_deadline([&unobserved, &complete], TTL, 1_000),
        Some(T0 + 8_000),
        "grace earlier than ttl"
    );
    let late = StreamEntry::new(cmd(4), u64::MAX - 1);
    assert_eq!(next_deadline([&late], TTL, GRACE), Some(u64::MAX), "saturates");
}

#[test]
fn reconcile_at_the_deadline_acts_on_the_stream_that_set_it() {
    // Whatever next_deadline says, reconcile at that time (with an unchanged State) closes or marks something.
    let mut reg = registry_with(&[(cmd(1), T0), (cmd(7), T0 + 2_000)]);
    let mut log = running();
    set_status(&mut log, 7, TaskProgress::Complete);
    let mut now = T0 + 2_001;
    step(&mut reg, &log.state, now);
    while let Some(deadline) = reg.next_deadline(TTL, GRACE) {
        assert!(deadline >= now);
        now = deadline;
        assert!(!step(&mut reg, &log.state, now).is_empty(), "at {now}");
    }
    assert!(reg.is_empty());
    assert_eq!(
        now,
        T0 + TTL,
        "stream 1's TTL fires last (stream 7's grace fired at T0 + 7001)"
    );
}

// ---- The container. ----

#[test]
fn registry_container_operations() {
    let mut reg = Registry::new();
    assert!(reg.is_empty());
    assert!(reg.register(cmd(2), T0));
    assert!(reg.register(cmd(1), T0 + 5));
    assert!(
        !reg.register(cmd(1), T0 + 99),
        "a duplicate registration changes nothing"
    );
    assert_eq!(reg.get(&cmd(1)).unwrap().registered_ms, T0 + 5);
    assert_eq!(reg.len(), 2);
    assert_eq!(
        reg.iter().map(|e| e.command_id).collect::<Vec<_>>(),
        vec![cmd(1), cmd(2)]
    );
    assert_eq!(*reg.get(&cmd(1)).unwrap(), StreamEntry::new(cmd(1), T0 + 5));

    assert!(reg.apply(&observe(cmd(1), tid(1))));
    assert_eq!(reg.get(&cmd(1)).unwrap().observed, Some(tid(1)));
    let mark = |at_ms| StreamAction::MarkComplete {
        command_id: cmd(1),
        at_ms,
    };
    assert!(reg.apply(&mark(T0 + 10)));
    assert!(reg.apply(&mark(T0 + 20)));
    assert_eq!(
        reg.get(&cmd(1)).unwrap().complete_seen_ms,
        Some(T0 + 10),
        "the first mark holds"
    );
    assert!(reg.delivered(&cmd(1)));
    assert!(reg.delivered(&cmd(1)));
    assert_eq!(reg.get(&cmd(1)).unwrap().next_seq, 2);
    assert!(reg.mark_bytes_sent(&cmd(1)));
    assert!(reg.get(&cmd(1)).unwrap().bytes_sent);
    assert_eq!(observe(cmd(1), tid(1)).command_id(), cmd(1));

    // Nothing happens to a stream that is not open.
    assert!(!reg.apply(&observe(cmd(9), tid(9))));
    assert!(!reg.apply(&StreamAction::MarkComplete {
        command_id: cmd(9),
        at_ms: 0
    }));
    assert!(!reg.delivered(&cmd(9)));
    assert!(!reg.mark_bytes_sent(&cmd(9)));
    assert!(!reg.contains(&cmd(9)));
    assert_eq!(reg.remove(&cmd(9)), None);

    assert!(reg.apply(&close(cmd(2), CloseReason::Cancelled)));
    assert!(!reg.contains(&cmd(2)));
    let removed = reg.remove(&cmd(1)).unwrap();
    assert_eq!((removed.next_seq, removed.bytes_sent), (2, true));
    assert!(reg.is_empty());
}

// ---- Properties over random States. ----

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// One generated stream: either a command of the State (by index) or a foreign one, with random progress.
#[derive(Clone, Debug)]
struct EntrySpec {
    known: Option<prop::sample::Index>,
    foreign: u128,
    registered_ago: u64,
    observed: u8,
    complete_ago: Option<u64>,
    next_seq: u32,
    bytes_sent: bool,
}

fn entry_spec() -> impl Strategy<Value = EntrySpec> {
    (
        prop::option::weighted(0.8, any::<prop::sample::Index>()),
        any::<u128>(),
        0..3 * TTL,
        0u8..3,
        prop::option::of(0..3 * GRACE),
        0u32..10,
        any::<bool>(),
    )
        .prop_map(
            |(known, foreign, registered_ago, observed, complete_ago, next_seq, bytes_sent)| EntrySpec {
                known,
                foreign,
                registered_ago,
                observed,
                complete_ago,
                next_seq,
                bytes_sent,
            },
        )
}

fn build_entries(state: &State, specs: &[EntrySpec], now: u64) -> BTreeMap<CommandId, StreamEntry> {
    let commands: Vec<(CommandId, TaskId)> = state.task_by_command.iter().map(|(c, t)| (*c, *t)).collect();
    let mut entries = BTreeMap::new();
    for s in specs {
        let (command_id, task) = match s.known.as_ref().filter(|_| !commands.is_empty()) {
            Some(i) => *i.get(&commands),
            None => (CommandId::from_u128(s.foreign), TaskId::from_u128(s.foreign)),
        };
        let observed = match s.observed {
            0 => None,
            1 => Some(task),
            _ => Some(TaskId::from_u128(s.foreign ^ 1)),
        };
        entries.entry(command_id).or_insert(StreamEntry {
            command_id,
            registered_ms: now.saturating_sub(s.registered_ago),
            observed,
            complete_seen_ms: s.complete_ago.map(|a| now.saturating_sub(a)),
            next_seq: s.next_seq,
            bytes_sent: s.bytes_sent,
        });
    }
    entries
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// For random valid States (some made inconsistent, as a bad snapshot could be) and random open streams:
    /// reconcile never closes a stream whose task is Pending/Running on a present instance, emits at most one Close
    /// and one MarkObserved per stream, observes before anything else, never both marks complete and closes, and
    /// only names open streams.
    #[test]
    fn reconcile_never_closes_a_healthy_stream_nor_one_stream_twice(
        seed in any::<u64>(),
        n in 0usize..400,
        typical in any::<bool>(),
        drop_instance in prop::option::of(any::<prop::sample::Index>()),
        specs in prop::collection::vec(entry_spec(), 0..24),
        now in T0..T0 + 100 * TTL,
    ) {
        let mix = if typical { Mix::Typical } else { Mix::Chaos };
        let mut generator = EventGen::new(seed, mix);
        generator.take_events(n);
        let mut state = generator.state().clone();
        if let Some(i) = drop_instance {
            let ids: Vec<InstanceId> = state.instances.keys().copied().collect();
            if !ids.is_empty() {
                state.instances.remove(i.get(&ids));
            }
        }
        let entries = build_entries(&state, &specs, now);
        let actions = reconcile(entries.values(), &state, now, TTL, GRACE);

        let mut seen: BTreeMap<CommandId, Vec<&StreamAction>> = BTreeMap::new();
        for a in &actions {
            prop_assert!(entries.contains_key(&a.command_id()), "action for an unknown stream: {a:?}");
            seen.entry(a.command_id()).or_default().push(a);
        }
        for (command_id, per) in &seen {
            let entry = &entries[command_id];
            let task = state.task_for_command(command_id);
            let closes = per.iter().filter(|a| matches!(a, StreamAction::Close { .. })).count();
            let observes = per.iter().filter(|a| matches!(a, StreamAction::MarkObserved { .. })).count();
            let completes = per.iter().filter(|a| matches!(a, StreamAction::MarkComplete { .. })).count();
            prop_assert!(closes <= 1, "two closes for {command_id}: {per:?}");
            prop_assert!(observes <= 1 && completes <= 1, "{per:?}");
            prop_assert!(closes + completes <= 1, "marked complete and closed: {per:?}");
            if observes == 1 {
                prop_assert!(entry.observed.is_none(), "re-observed: {per:?}");
                prop_assert!(matches!(per[0], StreamAction::MarkObserved { .. }), "observe comes first: {per:?}");
                prop_assert_eq!(per[0], &observe(*command_id, task.map(|t| t.id).unwrap()));
            }
            if closes == 1
                && let Some(t) = task
            {
                let healthy = matches!(t.status, TaskStatus::Pending | TaskStatus::Running)
                    && state.instances.contains_key(&t.instance);
                prop_assert!(!healthy, "closed a healthy stream: {per:?} for {t:?}");
            }
        }
        // Every unobserved stream whose task is in State gets observed.
        for (command_id, entry) in &entries {
            if entry.observed.is_none() && state.task_for_command(command_id).is_some() {
                let first = seen.get(command_id).and_then(|per| per.first());
                let observed_first = matches!(first, Some(StreamAction::MarkObserved { .. }));
                prop_assert!(observed_first, "{command_id} not observed: {first:?}");
            }
        }
        // Applying the actions to a registry holding exactly these streams always succeeds; each close once.
        let mut reg = Registry::new();
        for e in entries.values() {
            reg.register(e.command_id, e.registered_ms);
        }
        for a in &actions {
            prop_assert!(reg.apply(a));
        }
    }
}
