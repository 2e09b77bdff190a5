//! The master's decisions (SYSTEM.md §8): commands in, events out, and the plan loop that keeps every deployment
//! placed, deletes instances whose runners keep failing and sweeps finished tasks.
//!
//! Pure: the State, the clock, the set of live nodes and a source of fresh ids are arguments. The node core indexes
//! what these functions return, in order, through the same path as every producer's events (§5.2 step 4).
//! Node time-outs and the cancellation of tasks whose API node is gone live in [`crate::node`], next to the token
//! view they depend on.

use std::collections::{BTreeSet, HashMap, VecDeque};

use shoal_types::command::{Command, PlacementError, RejectReason};
use shoal_types::ids::{CommandId, DeploymentId, InstanceId, NodeId, RunnerId, TaskId};
use shoal_types::model::{
    DeleteReason, Deployment, DeploymentStatus, Instance, InstanceToken, ShardMetadata, Task, TaskProgress, TaskStatus,
};
use shoal_types::{Event, ModelCard, State};

use crate::apply::reduce;
use crate::placement::{Fresh, PlacementConfig, PlacementRequest, node_capacity, place, resolve_card};

/// A runner that failed this many times gets its instance deleted (§8).
pub const RUNNER_FAILURES_DELETE: u32 = 5;
/// A terminal task is deleted this long after it became terminal, if its API node never said `TaskFinished` (§8).
pub const TERMINAL_TASK_TTL_MS: u64 = 60_000;
/// How long a deployment that cannot be placed says so before the reason is re-stated (the retry itself happens on
/// every tick: a node that joins gets the model placed at once).
pub const DEPLOYMENT_WAIT_MS: u64 = 2_000;
pub const DEPLOYMENT_WAIT_MAX_MS: u64 = 60_000;
/// Command ids remembered for deduplication of commands that leave no trace of their id in State (§5.2 step 6).
pub const COMMAND_LRU: usize = 10_000;
/// Plan-loop decisions per call; the rest wait for the next tick.
pub const PLAN_DECISIONS_PER_TICK: usize = 1_000;

/// Fresh ids for what the master creates. A trait so the simulation and tests can use a seeded source.
pub trait FreshIds {
    fn bytes16(&mut self) -> [u8; 16];

    fn instance(&mut self) -> InstanceId {
        InstanceId::from_bytes(self.bytes16())
    }
    fn runner(&mut self) -> RunnerId {
        RunnerId::from_bytes(self.bytes16())
    }
    fn task(&mut self) -> TaskId {
        TaskId::from_bytes(self.bytes16())
    }
    /// An instance's data-plane secret (§10.4). Unlike ids it must not be guessable from the ids others see; a
    /// source whose `bytes16` is predictable overrides this.
    fn token(&mut self) -> InstanceToken {
        InstanceToken(self.bytes16())
    }
}

/// A deterministic id source (splitmix64). Seeded from the process's random boot id on a real node, from the seed
/// in the simulation: ids must not repeat across restarts, and must repeat across runs of a simulation.
///
/// Tokens come from a separate keyed stream: an id (public in `/state`) reveals the splitmix state, so tokens are
/// SHA-256 of a secret the shell draws from the OS ([`SeededIds::with_secret`]) and a counter.
#[derive(Clone)]
pub struct SeededIds {
    state: u64,
    secret: [u8; 32],
    tokens: u64,
}

impl std::fmt::Debug for SeededIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token secret.
        f.debug_struct("SeededIds").finish_non_exhaustive()
    }
}

impl SeededIds {
    /// A source whose token secret is derived from `seed` (simulation and tests: deterministic, not secret).
    pub fn new(seed: u64) -> Self {
        let mut secret = [0u8; 32];
        secret[..8].copy_from_slice(&seed.to_le_bytes());
        SeededIds::with_secret(seed, secret)
    }

    /// A source whose tokens derive from `secret` (a real node: OS randomness).
    pub fn with_secret(seed: u64, secret: [u8; 32]) -> Self {
        SeededIds {
            state: seed,
            secret,
            tokens: 0,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl FreshIds for SeededIds {
    fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        // RFC 4122 version 4 / variant bits, so the ids look like the uuids the API hands out.
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        out
    }

    fn token(&mut self) -> InstanceToken {
        use sha2::{Digest, Sha256};
        self.tokens += 1;
        let digest = Sha256::new()
            .chain_update(self.secret)
            .chain_update(self.tokens.to_le_bytes())
            .finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        InstanceToken(out)
    }
}

/// What the master's decisions read besides State.
pub struct DecideCtx<'a> {
    pub now_ms: u64,
    /// Nodes whose `node/<id>` token is visible (the master's own included).
    pub live: &'a BTreeSet<NodeId>,
    pub placement: &'a PlacementConfig,
}

/// The command ids seen lately and how each was answered (`Some`: rejected), for the commands whose effect does not
/// record their id (§5.2 step 6). Bounded at [`COMMAND_LRU`] ids, oldest first out.
#[derive(Clone, Debug, Default)]
pub struct CommandLru {
    order: VecDeque<CommandId>,
    answers: HashMap<CommandId, Option<RejectReason>>,
}

impl CommandLru {
    /// Records how `id` was answered.
    pub fn insert(&mut self, id: CommandId, answer: Option<RejectReason>) {
        if self.answers.insert(id, answer).is_some() {
            return;
        }
        self.order.push_back(id);
        if self.order.len() > COMMAND_LRU
            && let Some(old) = self.order.pop_front()
        {
            self.answers.remove(&old);
        }
    }

    /// How `id` was answered, if it was seen.
    pub fn answer(&self, id: &CommandId) -> Option<&Option<RejectReason>> {
        self.answers.get(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// The events that carry out `command`, or why it is refused. A repeated command yields no events (its first copy's
/// effect is in State) and no rejection. `state` is the master's current State.
pub fn decide_command(
    state: &State,
    command_id: CommandId,
    origin: NodeId,
    command: &Command,
    ctx: &DecideCtx<'_>,
    ids: &mut dyn FreshIds,
) -> Result<Vec<Event>, RejectReason> {
    match command {
        Command::PlaceInstance {
            deployment_id,
            model_id,
            sharding,
            min_nodes,
            max_nodes,
            nodes,
        } => {
            if state.deployments.values().any(|d| d.command_id == command_id) {
                return Ok(Vec::new());
            }
            let card = resolve_card(state, model_id).ok_or_else(|| RejectReason::UnknownModel {
                model: model_id.clone(),
            })?;
            if let Some(existing) = state.deployments.get(deployment_id) {
                // The same desired state asked for twice (nodes started with the same `--model` share an id).
                if existing.model_id == card.id {
                    return Ok(Vec::new());
                }
                return Err(RejectReason::Invalid {
                    message: format!(
                        "deployment {deployment_id} already exists for model {}",
                        existing.model_id
                    ),
                });
            }
            let deployment = Deployment {
                id: *deployment_id,
                command_id,
                model_id: card.id.clone(),
                sharding: *sharding,
                min_nodes: (*min_nodes).max(1),
                max_nodes: *max_nodes,
                nodes: nodes.clone(),
                instance: None,
                status: DeploymentStatus::Placing,
                failures: 0,
                retry_at_ms: ctx.now_ms,
                created_ms: ctx.now_ms,
            };
            let instance = place_deployment(state, &deployment, ctx, ids).map_err(RejectReason::Placement)?;
            Ok(vec![
                Event::DeploymentCreated { deployment },
                Event::InstanceCreated { instance },
            ])
        }
        Command::CreateInstance { instance } => {
            validate_instance(state, instance, ctx).map_err(|message| RejectReason::InvalidInstance { message })?;
            // The token is the master's to choose: whatever the request carried (JSON reads it as zeros) is replaced.
            let mut instance = instance.clone();
            instance.token = ids.token();
            Ok(vec![Event::InstanceCreated { instance }])
        }
        Command::DeleteInstance { instance_id } => {
            let Some(instance) = state.instances.get(instance_id) else {
                return Err(RejectReason::NotFound);
            };
            let mut events = vec![Event::InstanceDeleted {
                instance_id: *instance_id,
                reason: DeleteReason::User,
            }];
            if let Some(deployment_id) = instance.deployment {
                events.push(Event::DeploymentDeleted { deployment_id });
            }
            Ok(events)
        }
        Command::TextGeneration { params, prompt } => {
            if state.task_by_command.contains_key(&command_id) {
                return Ok(Vec::new());
            }
            let instance = pick_instance(state, &params.model).ok_or_else(|| RejectReason::NoInstance {
                model: params.model.clone(),
            })?;
            Ok(vec![Event::TaskCreated {
                task: Task {
                    id: ids.task(),
                    command_id,
                    instance,
                    origin,
                    status: TaskStatus::Pending,
                    error: None,
                    // The API node sends no content; stripping it here too keeps any that a sender got wrong off
                    // the log (issue 15).
                    params: params.without_content(),
                    prompt: *prompt,
                    created_ms: ctx.now_ms,
                    updated_ms: ctx.now_ms,
                },
            }])
        }
        Command::TaskCancelled { target } => Ok(state
            .task_for_command(target)
            .filter(|t| !t.status.is_terminal())
            .map(|t| Event::TaskStatusUpdated {
                task_id: t.id,
                status: TaskProgress::Cancelled,
            })
            .into_iter()
            .collect()),
        Command::TaskFinished { target } => Ok(state
            .task_for_command(target)
            .map(|t| Event::TaskDeleted { task_id: t.id })
            .into_iter()
            .collect()),
        Command::AddModelCard { card } => {
            card.validate().map_err(|e| RejectReason::Invalid {
                message: format!("invalid model card: {e}"),
            })?;
            let builtin = shoal_types::card::builtin_cards()
                .into_iter()
                .find(|b| b.answers_to(&card.id.0) || card.aliases.iter().any(|a| b.answers_to(a)));
            if let Some(builtin) = builtin {
                return Err(RejectReason::Invalid {
                    message: format!("model {} is built in; choose another id or alias", builtin.id),
                });
            }
            Ok(vec![Event::ModelCardAdded { card: card.clone() }])
        }
        Command::DeleteModelCard { model_id } => {
            if !state.model_cards.contains_key(model_id) {
                return Err(RejectReason::NotFound);
            }
            if state.instances.values().any(|i| i.model.id == *model_id) {
                return Err(RejectReason::InUse {
                    model: model_id.clone(),
                });
            }
            Ok(vec![Event::ModelCardDeleted {
                model_id: model_id.clone(),
            }])
        }
    }
}

/// Whether the id of `command` is recorded in State by its effect, so State alone deduplicates it.
pub fn deduplicated_by_state(command: &Command) -> bool {
    matches!(command, Command::PlaceInstance { .. } | Command::TextGeneration { .. })
}

/// The plan loop's decisions (§8 table, rows 2–4), each folded into a scratch State so later ones see it.
pub fn plan(state: &State, ctx: &DecideCtx<'_>, ids: &mut dyn FreshIds) -> Vec<Event> {
    let mut scratch = state.clone();
    let mut events = Vec::new();
    let decide = |scratch: &mut State, event: Event, events: &mut Vec<Event>| {
        reduce(scratch, &event, ctx.now_ms);
        events.push(event);
    };

    let failing: Vec<InstanceId> = scratch
        .instances
        .values()
        .filter(|i| i.runner_failures.values().any(|n| *n >= RUNNER_FAILURES_DELETE))
        .map(|i| i.id)
        .collect();
    for instance_id in failing {
        let event = Event::InstanceDeleted {
            instance_id,
            reason: DeleteReason::RunnerFailures,
        };
        decide(&mut scratch, event, &mut events);
    }

    let unplaced: Vec<DeploymentId> = scratch
        .deployments
        .values()
        .filter(|d| d.instance.is_none() && !matches!(d.status, DeploymentStatus::Failed { .. }))
        .filter(|d| ctx.now_ms >= d.retry_at_ms || matches!(d.status, DeploymentStatus::Waiting { .. }))
        .map(|d| d.id)
        .collect();
    for deployment_id in unplaced {
        if events.len() >= PLAN_DECISIONS_PER_TICK {
            return events;
        }
        let Some(deployment) = scratch.deployments.get(&deployment_id).cloned() else {
            continue;
        };
        // Runner-failure backoff holds the retry; a waiting deployment is retried on every tick.
        if ctx.now_ms < deployment.retry_at_ms && !matches!(deployment.status, DeploymentStatus::Waiting { .. }) {
            continue;
        }
        match place_deployment(&scratch, &deployment, ctx, ids) {
            Ok(instance) => decide(&mut scratch, Event::InstanceCreated { instance }, &mut events),
            Err(error) => {
                let reason = error.to_string();
                let restate = match &deployment.status {
                    DeploymentStatus::Waiting { reason: said } => {
                        *said != reason || ctx.now_ms >= deployment.retry_at_ms
                    }
                    _ => true,
                };
                if restate {
                    let event = Event::DeploymentWaiting {
                        deployment_id,
                        reason,
                        retry_at_ms: ctx.now_ms.saturating_add(waiting_restate_ms(&deployment)),
                    };
                    decide(&mut scratch, event, &mut events);
                }
            }
        }
    }

    let expired: Vec<TaskId> = scratch
        .tasks
        .values()
        .filter(|t| t.status.is_terminal() && ctx.now_ms.saturating_sub(t.updated_ms) >= TERMINAL_TASK_TTL_MS)
        .map(|t| t.id)
        .take(PLAN_DECISIONS_PER_TICK.saturating_sub(events.len()))
        .collect();
    for task_id in expired {
        decide(&mut scratch, Event::TaskDeleted { task_id }, &mut events);
    }
    events
}

/// How long a waiting deployment goes before the master re-states why (the placement itself is retried on every
/// tick): 2 s after it starts waiting, then a minute, so a deployment that cannot be placed for an hour adds one
/// event a minute to the log, not one a tick.
fn waiting_restate_ms(deployment: &Deployment) -> u64 {
    match deployment.status {
        DeploymentStatus::Waiting { .. } => DEPLOYMENT_WAIT_MAX_MS,
        _ => DEPLOYMENT_WAIT_MS,
    }
}

/// Places `deployment` on the live nodes of `state`.
fn place_deployment(
    state: &State,
    deployment: &Deployment,
    ctx: &DecideCtx<'_>,
    ids: &mut dyn FreshIds,
) -> Result<Instance, PlacementError> {
    let request = PlacementRequest {
        model_id: deployment.model_id.clone(),
        sharding: deployment.sharding,
        min_nodes: deployment.min_nodes,
        max_nodes: deployment.max_nodes,
        nodes: deployment.nodes.clone(),
    };
    let live_view = live_only(state, ctx.live);
    let instance = ids.instance();
    let mut runner_ids = Vec::new();
    for _ in 0..live_view.nodes.len() {
        runner_ids.push(ids.runner());
    }
    let mut next_runner = runner_ids.into_iter();
    let mut runner_id = || next_runner.next().unwrap_or_else(|| RunnerId::from_bytes([0xff; 16]));
    let fresh = Fresh {
        instance,
        deployment: Some(deployment.id),
        now_ms: ctx.now_ms,
        runner_id: &mut runner_id,
    };
    let mut instance = place(&request, &live_view, ctx.placement, fresh)?.instance;
    instance.token = ids.token();
    Ok(instance)
}

/// `state` without the nodes whose token is gone: they are about to be timed out and must not get shards.
pub fn live_only(state: &State, live: &BTreeSet<NodeId>) -> State {
    let mut view = state.clone();
    let gone: Vec<NodeId> = view.nodes.keys().filter(|id| !live.contains(id)).copied().collect();
    for id in gone {
        view.nodes.remove(&id);
    }
    view
}

/// The instance a generation for `model` goes to (§8): serving instances first, then the fewest unfinished tasks,
/// then the smallest id.
pub fn pick_instance(state: &State, model: &shoal_types::ModelId) -> Option<InstanceId> {
    state
        .instances
        .values()
        .filter(|i| i.model.answers_to(&model.0))
        .min_by_key(|i| {
            let serving = i
                .assignments
                .shards
                .keys()
                .all(|r| state.runners.get(r).is_some_and(|record| record.status.is_serving()));
            let open = state
                .tasks
                .values()
                .filter(|t| t.instance == i.id && !t.status.is_terminal())
                .count();
            (!serving, open, i.id)
        })
        .map(|i| i.id)
}

/// `CreateInstance` checks (§8): a fresh id, a valid card, one runner per live node, pipeline shards that cover
/// `[0, n_layers)` contiguously in rank order, and each node able to hold its share.
pub fn validate_instance(state: &State, instance: &Instance, ctx: &DecideCtx<'_>) -> Result<(), String> {
    if state.instances.contains_key(&instance.id) {
        return Err(format!("instance {} already exists", instance.id));
    }
    if instance.deployment.is_some() {
        return Err("an explicit instance has no deployment (use place_instance for a managed one)".into());
    }
    let card: &ModelCard = &instance.model;
    card.validate().map_err(|e| format!("invalid model card: {e}"))?;
    let assignments = &instance.assignments;
    if assignments.shards.is_empty() {
        return Err("the instance has no shards".into());
    }
    if assignments.node_runner.len() != assignments.shards.len() {
        return Err(format!(
            "{} shards but {} nodes: each node runs exactly one runner",
            assignments.shards.len(),
            assignments.node_runner.len()
        ));
    }
    let mut runners_seen = BTreeSet::new();
    for (node, runner) in &assignments.node_runner {
        if !assignments.shards.contains_key(runner) {
            return Err(format!("node {node} is assigned runner {runner}, which has no shard"));
        }
        if !runners_seen.insert(*runner) {
            return Err(format!("runner {runner} is assigned to more than one node"));
        }
        if !state.nodes.contains_key(node) || !ctx.live.contains(node) {
            return Err(format!("node {node} is not a live member of the cluster"));
        }
        if state.runners.contains_key(runner) {
            return Err(format!("runner {runner} already exists"));
        }
    }
    let world = assignments.shards.len() as u32;
    let mut by_rank: Vec<(u32, u32, u32, RunnerId)> = Vec::with_capacity(assignments.shards.len());
    for (runner, shard) in &assignments.shards {
        let ShardMetadata::Pipeline(shard) = shard else {
            return Err("only pipeline shards are supported".into());
        };
        if shard.world_size != world {
            return Err(format!(
                "runner {runner} says world_size {} but the instance has {world} shards",
                shard.world_size
            ));
        }
        if shard.n_layers != card.n_layers {
            return Err(format!(
                "runner {runner} says n_layers {} but model {} has {}",
                shard.n_layers, card.id, card.n_layers
            ));
        }
        if shard.start_layer >= shard.end_layer {
            return Err(format!(
                "runner {runner} has an empty layer range [{}, {})",
                shard.start_layer, shard.end_layer
            ));
        }
        by_rank.push((shard.device_rank, shard.start_layer, shard.end_layer, *runner));
    }
    by_rank.sort();
    let mut next_layer = 0;
    for (expected_rank, (rank, start, end, runner)) in by_rank.iter().enumerate() {
        if *rank != expected_rank as u32 {
            return Err(format!(
                "device ranks must be 0..{world}, each once (runner {runner} has rank {rank})"
            ));
        }
        if *start != next_layer {
            return Err(format!(
                "layer ranges must be contiguous from 0: rank {rank} starts at {start}, expected {next_layer}"
            ));
        }
        next_layer = *end;
    }
    if next_layer != card.n_layers {
        return Err(format!(
            "layer ranges end at {next_layer} but model {} has {} layers",
            card.id, card.n_layers
        ));
    }
    for (node, runner) in &assignments.node_runner {
        let Some(info) = state.nodes.get(node) else { continue };
        let Some(ShardMetadata::Pipeline(shard)) = assignments.shards.get(runner) else {
            continue;
        };
        match node_capacity(state, node, info, card, ctx.placement) {
            Ok(cap) if cap >= shard.layers() => {}
            Ok(cap) => {
                return Err(format!(
                    "node {node} can hold {cap} layers of {} but is given {}",
                    card.id,
                    shard.layers()
                ));
            }
            Err(why) => return Err(format!("node {node} cannot run {}: {why:?}", card.id)),
        }
    }
    Ok(())
}
