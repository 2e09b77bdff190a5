//! Deterministic generators of valid event sequences (feature `testing`), shared by property tests, the store's
//! tests and the benchmarks. "Valid" means what a master could index: the generator keeps a shadow State and mostly
//! refers to entities that exist, but it also emits references to unknown ones and duplicates, which reducers must
//! absorb as no-ops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use imbl::OrdMap;
use shoal_types::card::builtin_cards;
use shoal_types::model::{
    Deployment, DeploymentStatus, DownloadProgress, ErrorKind, Identity, Iface, Memory, NodeFact, PipelineShard,
    RunnerStatus, ShardAssignments, ShardMetadata, Sharding, Task, TaskError, TaskProgress, TaskStatus,
};
use shoal_types::params::PromptRef;
use shoal_types::{
    Backend, CommandId, DeleteReason, DeploymentId, Event, GenerationParams, IndexedEvent, Instance, InstanceId,
    ModelCard, NodeId, Origin, Pos, RunnerId, SessionId, State, TaskId,
};

use crate::apply::apply_in_place;

/// splitmix64: tiny, seedable, good enough to drive generators; no dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len() as u64) as usize)
        }
    }
    pub fn bytes16(&mut self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        out[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        out
    }
}

/// Which events to favour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// Every kind of event, including cascades, session changes and references to unknown entities.
    Chaos,
    /// A serving cluster in steady state: generation tasks created, run, finished and deleted, with node facts and
    /// runner statuses in between. The "typical events" of the benchmarks.
    Typical,
}

/// Produces an endless, deterministic stream of valid [`IndexedEvent`]s for a seed.
pub struct EventGen {
    rng: Rng,
    mix: Mix,
    shadow: State,
    time_ms: u64,
    origin: Origin,
    seq: u64,
    node_pool: Vec<NodeId>,
    card: ModelCard,
    task_cap: usize,
}

impl EventGen {
    pub fn new(seed: u64, mix: Mix) -> Self {
        let mut rng = Rng::new(seed);
        let node_pool = (0..6u8)
            .map(|i| {
                let mut b = rng.bytes16();
                b[0] = 0x10 + i;
                NodeId::from_bytes(b)
            })
            .collect();
        let origin = Origin {
            node: NodeId::from_bytes([0x11; 16]),
            boot: rng.next_u64(),
        };
        let card = builtin_cards().into_iter().next().unwrap_or_else(unreachable_card);
        let task_cap = match mix {
            Mix::Chaos => 2_000,
            Mix::Typical => 64,
        };
        EventGen {
            rng,
            mix,
            shadow: State::empty(),
            time_ms: 1_700_000_000_000,
            origin,
            seq: 0,
            node_pool,
            card,
            task_cap,
        }
    }

    /// Changes how many tasks State holds at most (the typical mix keeps up to 64 in flight; a large cap builds a
    /// large State for snapshot benchmarks).
    pub fn with_task_cap(mut self, cap: usize) -> Self {
        self.task_cap = cap;
        self
    }

    /// The State after every event generated so far.
    pub fn state(&self) -> &State {
        &self.shadow
    }

    pub fn take_events(&mut self, n: usize) -> Vec<IndexedEvent> {
        (0..n).map(|_| self.next_event()).collect()
    }

    pub fn next_event(&mut self) -> IndexedEvent {
        self.time_ms += 1 + self.rng.below(20);
        let event = if self.shadow.pos.idx < 0 {
            self.session_opened(1)
        } else {
            match self.mix {
                Mix::Chaos => self.chaos_event(),
                Mix::Typical => self.typical_event(),
            }
        };
        let session = match &event {
            Event::SessionOpened { session, .. } => *session,
            _ => self.shadow.session,
        };
        let origin = match &event {
            Event::NodeGatheredInfo { .. } | Event::DownloadUpdated { .. } | Event::RunnerStatusUpdated { .. } => {
                self.seq += 1;
                Some((self.origin, self.seq))
            }
            _ => None,
        };
        let indexed = IndexedEvent {
            idx: (self.shadow.pos.idx + 1) as u64,
            session,
            prev: self.shadow.pos.session,
            time_ms: self.time_ms,
            origin,
            event,
        };
        // The generator only produces the next event of its own shadow, so this cannot fail.
        let applied = apply_in_place(&mut self.shadow, &indexed);
        debug_assert!(applied.is_ok(), "generator produced an unappliable event: {applied:?}");
        indexed
    }

    fn session_opened(&mut self, term: u64) -> Event {
        let master = *self
            .rng
            .pick(&self.node_pool)
            .unwrap_or(&NodeId::from_bytes([0x12; 16]));
        Event::SessionOpened {
            session: SessionId { term, master },
            base: self.shadow.pos,
        }
    }

    fn chaos_event(&mut self) -> Event {
        // A real cluster deletes finished tasks within 60 s, so State holds a bounded number of them.
        if self.shadow.tasks.len() >= self.task_cap && self.rng.chance(50) {
            return self.task_deleted();
        }
        match self.rng.below(100) {
            0..=1 => self.session_opened(self.shadow.session.term + 1),
            2..=14 => self.node_fact(),
            15..=18 => self.download(),
            19..=20 => self.node_timed_out(),
            21..=23 => self.card_event(),
            24..=28 => self.deployment_created(),
            29..=30 => self.deployment_waiting(),
            31..=32 => self.deployment_deleted(),
            33..=40 => self.instance_created(),
            41..=44 => self.instance_deleted(),
            45..=56 => self.runner_status(),
            57..=72 => self.task_created(),
            73..=84 => self.task_status(),
            85..=89 => self.task_failed(),
            _ => self.task_deleted(),
        }
    }

    fn typical_event(&mut self) -> Event {
        if self.shadow.nodes.len() < 3 {
            return self.node_fact();
        }
        if self.shadow.instances.is_empty() {
            return self.instance_created();
        }
        let live_tasks = self.shadow.tasks.len();
        match self.rng.below(100) {
            0..=4 => self.node_fact(),
            5..=9 => self.runner_status(),
            10..=34 if live_tasks < self.task_cap => self.task_created(),
            10..=34 => self.task_deleted(),
            35..=84 => self.task_status(),
            85..=86 => self.task_failed(),
            _ => self.task_deleted(),
        }
    }

    fn any_node(&mut self) -> NodeId {
        *self
            .rng
            .pick(&self.node_pool)
            .unwrap_or(&NodeId::from_bytes([0x13; 16]))
    }

    /// A key of `map` near a random probe: O(log n), roughly uniform for random ids.
    fn near<K: Ord + Clone, V: Clone>(map: &OrdMap<K, V>, probe: K) -> Option<K> {
        map.range(probe..)
            .next()
            .or_else(|| map.iter().next())
            .map(|(k, _)| k.clone())
    }

    fn node_fact(&mut self) -> Event {
        let node = self.any_node();
        let gib = 1u64 << 30;
        let info = match self.rng.below(7) {
            0 => NodeFact::Identity(Identity {
                friendly_name: format!("node-{}", &node.to_string()[..6]),
                os: "linux".into(),
                arch: "x86_64".into(),
                chip: "epyc".into(),
                version: "0.1.0".into(),
            }),
            1 | 2 => {
                let total = (8 + self.rng.below(56)) * gib;
                NodeFact::Memory(Memory {
                    total,
                    available: total / 2 + self.rng.below(total / 2),
                })
            }
            3 => NodeFact::Interfaces(vec![Iface {
                name: "eth0".into(),
                addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, self.rng.below(250) as u8 + 1))],
            }]),
            4 => NodeFact::Backends(vec![Backend::Cpu]),
            5 => NodeFact::MemBandwidth(20.0 + self.rng.below(100) as f32),
            // Mostly a recovery: a node that cannot write takes no placement.
            _ => NodeFact::StoreFault((self.rng.below(4) == 0).then(|| "No space left on device".to_owned())),
        };
        Event::NodeGatheredInfo { node, info }
    }

    fn download(&mut self) -> Event {
        let probe = NodeId::from_bytes(self.rng.bytes16());
        let node = Self::near(&self.shadow.nodes, probe).unwrap_or_else(|| self.any_node());
        let total = self.card.storage_size;
        let progress = match self.rng.below(4) {
            0 => DownloadProgress::Pending,
            1 => DownloadProgress::Ongoing {
                done: self.rng.below(total),
                total,
            },
            2 => DownloadProgress::Completed { total },
            _ => DownloadProgress::Failed {
                error: "connection reset".into(),
            },
        };
        Event::DownloadUpdated {
            node,
            model_id: self.card.id.clone(),
            progress,
        }
    }

    fn node_timed_out(&mut self) -> Event {
        let probe = NodeId::from_bytes(self.rng.bytes16());
        let node = Self::near(&self.shadow.nodes, probe).unwrap_or_else(|| self.any_node());
        Event::NodeTimedOut {
            node,
            reason: "liveliness token lost".into(),
        }
    }

    fn card_event(&mut self) -> Event {
        let mut card = self.card.clone();
        card.id = format!("custom/model-{}", self.rng.below(3)).as_str().into();
        if self.rng.chance(70) {
            Event::ModelCardAdded { card }
        } else {
            Event::ModelCardDeleted { model_id: card.id }
        }
    }

    fn deployment_created(&mut self) -> Event {
        let id = DeploymentId::from_bytes(self.rng.bytes16());
        Event::DeploymentCreated {
            deployment: Deployment {
                id,
                command_id: CommandId::from_bytes(self.rng.bytes16()),
                model_id: self.card.id.clone(),
                sharding: Sharding::Pipeline,
                min_nodes: 1,
                max_nodes: None,
                nodes: None,
                instance: None,
                status: DeploymentStatus::Placing,
                failures: 0,
                retry_at_ms: self.time_ms,
                created_ms: self.time_ms,
            },
        }
    }

    fn deployment_waiting(&mut self) -> Event {
        let probe = DeploymentId::from_bytes(self.rng.bytes16());
        let deployment_id = Self::near(&self.shadow.deployments, probe)
            .filter(|_| self.rng.chance(95))
            .unwrap_or(probe);
        Event::DeploymentWaiting {
            deployment_id,
            reason: "not enough memory".into(),
            retry_at_ms: self.time_ms + 2_000,
        }
    }

    fn deployment_deleted(&mut self) -> Event {
        let probe = DeploymentId::from_bytes(self.rng.bytes16());
        let deployment_id = Self::near(&self.shadow.deployments, probe)
            .filter(|_| self.rng.chance(95))
            .unwrap_or(probe);
        Event::DeploymentDeleted { deployment_id }
    }

    fn instance_created(&mut self) -> Event {
        let known: Vec<NodeId> = self.shadow.nodes.keys().copied().collect();
        let mut nodes: Vec<NodeId> = if known.is_empty() || self.rng.chance(5) {
            vec![self.any_node()] // possibly unknown: the reducer must ignore it
        } else {
            let k = 1 + self.rng.below(known.len().min(3) as u64) as usize;
            let start = self.rng.below(known.len() as u64) as usize;
            (0..k).map(|i| known[(start + i) % known.len()]).collect()
        };
        nodes.dedup();
        let n_layers = self.card.n_layers;
        let world = nodes.len() as u32;
        let mut shards = OrdMap::new();
        let mut node_runner = OrdMap::new();
        let mut start = 0;
        for (rank, node) in nodes.iter().enumerate() {
            let rank = rank as u32;
            let end = if rank + 1 == world {
                n_layers
            } else {
                start + n_layers / world
            };
            let runner = RunnerId::from_bytes(self.rng.bytes16());
            shards.insert(
                runner,
                ShardMetadata::Pipeline(PipelineShard {
                    start_layer: start,
                    end_layer: end,
                    n_layers,
                    device_rank: rank,
                    world_size: world,
                }),
            );
            node_runner.insert(*node, runner);
            start = end;
        }
        let deployment = self
            .shadow
            .deployments
            .iter()
            .find(|(_, d)| d.instance.is_none() && !matches!(d.status, DeploymentStatus::Failed { .. }))
            .map(|(id, _)| *id)
            .filter(|_| self.rng.chance(60));
        Event::InstanceCreated {
            instance: Instance {
                id: InstanceId::from_bytes(self.rng.bytes16()),
                deployment,
                model: self.card.clone(),
                assignments: ShardAssignments { shards, node_runner },
                runner_failures: OrdMap::new(),
                created_ms: self.time_ms,
                token: Default::default(),
            },
        }
    }

    fn instance_deleted(&mut self) -> Event {
        let probe = InstanceId::from_bytes(self.rng.bytes16());
        let instance_id = Self::near(&self.shadow.instances, probe)
            .filter(|_| self.rng.chance(95))
            .unwrap_or(probe);
        let reason = match self.rng.below(3) {
            0 => DeleteReason::User,
            1 => DeleteReason::RunnerFailures,
            _ => DeleteReason::NodeLost(self.any_node()),
        };
        Event::InstanceDeleted { instance_id, reason }
    }

    fn runner_status(&mut self) -> Event {
        let Some(instance_id) = Self::near(&self.shadow.instances, InstanceId::from_bytes(self.rng.bytes16())) else {
            return self.node_fact();
        };
        let Some(instance) = self.shadow.instances.get(&instance_id).cloned() else {
            return self.node_fact();
        };
        let probe = NodeId::from_bytes(self.rng.bytes16());
        let Some((node, runner_id)) = Self::near(&instance.assignments.node_runner, probe)
            .and_then(|n| instance.assignments.node_runner.get(&n).map(|r| (n, *r)))
        else {
            return self.node_fact();
        };
        let status = match self.rng.below(12) {
            0 => RunnerStatus::Idle,
            1 => RunnerStatus::Loading {
                layers_loaded: self.rng.below(30) as u32,
                total_layers: 30,
            },
            2 => RunnerStatus::Loaded,
            3 => RunnerStatus::WarmingUp,
            4..=6 => RunnerStatus::Ready,
            7 | 8 => RunnerStatus::Running,
            9 => RunnerStatus::ShuttingDown,
            10 => RunnerStatus::Shutdown,
            _ => RunnerStatus::Failed {
                error: "exit status 137".into(),
                attempt: 1 + self.rng.below(5) as u32,
            },
        };
        let data_addrs = if self.rng.chance(30) {
            vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                40_000 + self.rng.below(1000) as u16,
            )]
        } else {
            Vec::new()
        };
        Event::RunnerStatusUpdated {
            runner_id,
            instance_id,
            node,
            status,
            data_addrs,
        }
    }

    fn task_created(&mut self) -> Event {
        let probe = InstanceId::from_bytes(self.rng.bytes16());
        let instance = Self::near(&self.shadow.instances, probe)
            .filter(|_| self.rng.chance(97))
            .unwrap_or(probe);
        // Now and then a duplicate command: the reducer must keep the first task.
        let fresh = CommandId::from_bytes(self.rng.bytes16());
        let command_id = match Self::near(&self.shadow.task_by_command, fresh) {
            Some(c) if self.rng.chance(3) => c,
            _ => fresh,
        };
        let origin = self.any_node();
        Event::TaskCreated {
            task: Task {
                id: TaskId::from_bytes(self.rng.bytes16()),
                command_id,
                instance,
                origin,
                status: TaskStatus::Pending,
                error: None,
                // Content never reaches the log (issue 15): a task holds its size and digest instead.
                params: GenerationParams {
                    model: self.card.id.clone(),
                    max_output_tokens: Some(64),
                    temperature: Some(0.7),
                    ..GenerationParams::default()
                },
                prompt: PromptRef {
                    bytes: 64,
                    messages: 1,
                    digest: [self.rng.bytes16(), self.rng.bytes16()]
                        .concat()
                        .try_into()
                        .unwrap_or([0; 32]),
                },
                created_ms: self.time_ms,
                updated_ms: self.time_ms,
            },
        }
    }

    fn some_task(&mut self) -> TaskId {
        let probe = TaskId::from_bytes(self.rng.bytes16());
        Self::near(&self.shadow.tasks, probe)
            .filter(|_| self.rng.chance(97))
            .unwrap_or(probe)
    }

    fn task_status(&mut self) -> Event {
        let task_id = self.some_task();
        let status = match self.shadow.tasks.get(&task_id).map(|t| t.status) {
            Some(TaskStatus::Pending) => TaskProgress::Running,
            Some(TaskStatus::Running) if self.rng.chance(85) => TaskProgress::Complete,
            _ if self.rng.chance(50) => TaskProgress::Cancelled,
            _ => TaskProgress::Running,
        };
        Event::TaskStatusUpdated { task_id, status }
    }

    fn task_failed(&mut self) -> Event {
        let task_id = self.some_task();
        Event::TaskFailed {
            task_id,
            error: TaskError {
                kind: ErrorKind::Runner,
                message: "runner exited".into(),
            },
        }
    }

    fn task_deleted(&mut self) -> Event {
        // Prefer finished tasks, as the master's sweep does: probe a few random ones.
        let mut task_id = self.some_task();
        for _ in 0..4 {
            if self.shadow.tasks.get(&task_id).is_some_and(|t| t.status.is_terminal()) {
                break;
            }
            task_id = self.some_task();
        }
        Event::TaskDeleted { task_id }
    }
}

/// Applies `events` to `state` in order, stopping at the first error.
pub fn fold(state: &State, events: &[IndexedEvent]) -> Result<State, crate::ApplyError> {
    let mut s = state.clone();
    for e in events {
        apply_in_place(&mut s, e)?;
    }
    Ok(s)
}

/// The position reached after `events` (for assertions).
pub fn last_pos(events: &[IndexedEvent]) -> Pos {
    events
        .last()
        .map(|e| Pos {
            idx: e.idx as i64,
            session: e.session,
        })
        .unwrap_or(Pos::EMPTY)
}

fn unreachable_card() -> ModelCard {
    // The built-in card set is pinned non-empty by a shoal-types test; this keeps the generator total anyway.
    ModelCard::from_toml(
        "id=\"x/y\"\nfamily=\"llama\"\nformat=\"gguf\"\nquantization=\"Q4_1\"\nn_layers=4\nhidden_size=8\n\
         num_attention_heads=1\nnum_key_value_heads=1\nvocab_size=8\ncontext_length=8\nstorage_size=1\n\
         [[sources]]\nkind=\"path\"\npath=\"/\"\nfiles=[\"x\"]\n",
    )
    .unwrap_or_else(|e| panic!("fallback card: {e}"))
}
