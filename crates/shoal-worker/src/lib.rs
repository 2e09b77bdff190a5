//! The worker shell (SYSTEM.md §10): one OS thread that runs the pure [`shoal_core::worker::plan`] on every State
//! change, every runner message, every download report and every 250 ms, and carries out what it returns with runner
//! processes (`shoal runner`, through [`shoal_runner::local::RunnerProcess`]) and the [`ModelStore`].
//!
//! Everything slow (spawning a runner waits for it to connect back, a download takes seconds, stopping a runner waits
//! for it to exit) runs on a short-lived thread of its own and reports back through the worker's one channel, so the
//! plan never waits on a runner. Runner statuses reach State only through rule 9 of the plan (`Emit`), so a status
//! that was lost on its way is asserted again.
//!
//! Generation (§10.3–§10.4): on rank 0's node `Submit` renders the task's messages with the chat template, tokenizes
//! them and hands the runner the task with its route (task id, command id, API node); the last rank's runner gives the
//! route back to its own worker (`Started`), whose node sends every chunk straight to the API node. Runner messages
//! become durable events: `Accepted` → `TaskStatusUpdated(Running)` (rank 0), the last chunk's `TaskDone(Complete)` →
//! `TaskStatusUpdated(Complete)` (last rank), `TaskDone(Failed)` → `TaskFailed` plus an out-of-band `Error` chunk. A
//! runner that dies or is reset fails the tasks it had and every `Running` task of its instance the same way, so a
//! client hears of it at once rather than when State catches up. `Cancel` goes to rank 0, which releases the sequence
//! on every rank. The runner protocol has no `Reset`, so a reset is a restart of the runner process that does not
//! count as a failure.

pub use shoal_models::prompt::{DEFAULT_MAX_TOKENS, Prompter, engine_params};

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_cluster::{ChunkMsg, ClusterHandle};
use shoal_core::worker::{Action, ActionKey, LocalRunner, LocalView, plan};
use shoal_models::ModelStore;
use shoal_runner::local::RunnerProcess;
use shoal_runner::proto::{self, ChunkEnd, FromRunner, LoadSpec, Outcome, TaskHandle, ToRunner};
use shoal_types::chunk::{Chunk, FinishReason, Usage};
use shoal_types::ids::{CommandId, InstanceId, ModelId, RunnerId, TaskId};
use shoal_types::model::{
    DownloadProgress, ErrorKind, Iface, RunnerStatus, ShardMetadata, TaskError, TaskProgress, TaskStatus,
};
use shoal_types::wire::SEQ_OOB;
use shoal_types::{Event, ModelCard, NodeId, State, codec};

/// The plan runs at least this often (§10.2).
const TICK: Duration = Duration::from_millis(250);
/// How often the files of a model this node was not found to hold are looked for again (an operator may copy them
/// into a models directory at any time).
const RESCAN_EVERY_MS: u64 = 30_000;

/// How this node runs its runners.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The `shoal` binary, started as `shoal runner --socket ...`.
    pub exe: PathBuf,
    /// Sequences a runner admits at once (`--max-seqs`).
    pub max_seqs: u32,
    /// Compute threads per runner.
    pub threads: usize,
    /// Where runners listen for their ring neighbours, and so which addresses go into `data_addrs`.
    pub data_plane: DataPlane,
    /// Told every download report of this node (the CLI's progress bar); State gets them throttled (§10.2).
    pub on_progress: Option<ProgressHook>,
}

/// Where this node's runners accept their previous rank (§10.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataPlane {
    /// Every interface; `data_addrs` lists the node's IPv4 interface addresses (loopback only if it has no other).
    AllInterfaces,
    /// These addresses only (a node whose cluster endpoints are pinned, e.g. to loopback in tests).
    Only(Vec<IpAddr>),
}

impl DataPlane {
    /// The address a runner binds.
    pub fn bind(&self) -> IpAddr {
        match self {
            DataPlane::Only(ips) if ips.len() == 1 => ips[0],
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// The addresses a ring neighbour dials, given the node's interfaces: routable ones first, loopback only when
    /// there is nothing else (a remote node dialing 127.0.0.1 would reach its own machine).
    pub fn advertised(&self, interfaces: &[Iface], port: u16) -> Vec<SocketAddr> {
        let ips: Vec<IpAddr> = match self {
            DataPlane::Only(ips) => ips.clone(),
            DataPlane::AllInterfaces => {
                let routable: Vec<IpAddr> = interfaces
                    .iter()
                    .flat_map(|i| &i.addrs)
                    .filter(|ip| matches!(ip, IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified()))
                    .copied()
                    .collect();
                if routable.is_empty() {
                    vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
                } else {
                    routable
                }
            }
        };
        ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect()
    }
}

/// A watcher of this node's downloads.
pub type ProgressHook = Arc<dyn Fn(&ModelId, &DownloadProgress) + Send + Sync>;

/// What reaches the worker thread.
enum Input {
    /// A message of the runner spawned with this tag.
    Runner(u32, FromRunner),
    Spawned {
        runner: RunnerId,
        tag: u32,
        result: Result<RunnerProcess, String>,
    },
    Progress(ModelId, DownloadProgress),
    Fetched(ModelId, Result<PathBuf, String>),
    /// State changed (an applied event or an installed snapshot): plan again.
    StateChanged,
    Stop,
}

/// Where a task's chunks and events go; travels with the sequence from rank 0 to the last rank (opaque to runners).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Route {
    task_id: TaskId,
    command_id: CommandId,
    origin: NodeId,
    instance: InstanceId,
}

/// The tasks one runner holds, by the handle the runner knows them by.
#[derive(Default)]
struct RunnerTasks {
    routes: HashMap<TaskHandle, Route>,
    handles: HashMap<TaskId, TaskHandle>,
}

impl RunnerTasks {
    fn insert(&mut self, handle: TaskHandle, route: Route) {
        self.handles.insert(route.task_id, handle);
        self.routes.insert(handle, route);
    }

    fn remove(&mut self, handle: TaskHandle) -> Option<Route> {
        let route = self.routes.remove(&handle)?;
        self.handles.remove(&route.task_id);
        Some(route)
    }
}

/// What this node's runners report about themselves beyond State (for `/metrics` and the shard tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunnerReport {
    pub runner: RunnerId,
    pub instance: InstanceId,
    pub layer_start: u32,
    pub layer_end: u32,
    pub pid: u32,
    /// Bytes of weights the runner's stage loaded.
    pub weight_bytes: u64,
}

/// Counts of what this node's runners produced, for `/metrics` and the cancellation tests.
#[derive(Debug, Default)]
pub struct WorkerCounters {
    /// Chunks forwarded to API nodes.
    pub chunks: std::sync::atomic::AtomicU64,
    /// Chunks produced for a task that State already shows cancelled, failed or gone: what a cancellation cost
    /// beyond the step in flight.
    pub chunks_after_cancel: std::sync::atomic::AtomicU64,
}

/// The live reports of this node's runners, shared with the HTTP layer.
pub type RunnerReports = Arc<std::sync::Mutex<BTreeMap<RunnerId, RunnerReport>>>;

/// A running worker; dropping it stops the thread (its runners are stopped with it).
pub struct Worker {
    inputs: Sender<Input>,
    thread: Option<JoinHandle<()>>,
    reports: RunnerReports,
    counters: Arc<WorkerCounters>,
}

impl Worker {
    pub fn start(cluster: ClusterHandle, models: ModelStore, config: WorkerConfig) -> std::io::Result<Worker> {
        let (inputs, rx) = channel();
        let node = cluster.view().status.node;
        let mut local = LocalView::new(node);
        local.max_seqs = config.max_seqs;
        let reports = RunnerReports::default();
        let counters = Arc::new(WorkerCounters::default());
        let mut shell = Shell {
            counters: counters.clone(),
            node,
            tasks: BTreeMap::new(),
            next_handle: 1,
            prompters: BTreeMap::new(),
            reports: reports.clone(),
            cluster,
            models: Arc::new(models),
            config,
            inputs: inputs.clone(),
            local,
            processes: BTreeMap::new(),
            tags: HashMap::new(),
            next_tag: 0,
            gguf: BTreeMap::new(),
        };
        let thread = std::thread::Builder::new()
            .name("shoal-worker".into())
            .spawn(move || shell.run(rx))?;
        Ok(Worker {
            inputs,
            thread: Some(thread),
            reports,
            counters,
        })
    }

    /// What this node's runners report (weights loaded, pids), shared and kept current.
    pub fn reports(&self) -> RunnerReports {
        self.reports.clone()
    }

    pub fn counters(&self) -> Arc<WorkerCounters> {
        self.counters.clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.inputs.send(Input::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shell {
    node: NodeId,
    /// Tasks each local runner holds (rank 0: submitted; last rank: started).
    tasks: BTreeMap<RunnerId, RunnerTasks>,
    next_handle: TaskHandle,
    /// Rank 0's tokenizer and chat template per model.
    prompters: BTreeMap<ModelId, Arc<Prompter>>,
    reports: RunnerReports,
    counters: Arc<WorkerCounters>,
    cluster: ClusterHandle,
    models: Arc<ModelStore>,
    config: WorkerConfig,
    inputs: Sender<Input>,
    local: LocalView,
    processes: BTreeMap<RunnerId, RunnerProcess>,
    /// Spawn tag → runner: runner messages arrive tagged.
    tags: HashMap<u32, RunnerId>,
    next_tag: u32,
    /// The verified weights file of each model this node holds.
    gguf: BTreeMap<ModelId, PathBuf>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shell {
    fn run(&mut self, rx: Receiver<Input>) {
        let (runner_tx, runner_rx) = channel::<(u32, FromRunner)>();
        let forward = self.inputs.clone();
        // Runner processes report on a channel of their own; one thread folds it into the worker's.
        std::thread::Builder::new()
            .name("shoal-worker-runners".into())
            .spawn(move || {
                while let Ok((tag, msg)) = runner_rx.recv() {
                    if forward.send(Input::Runner(tag, msg)).is_err() {
                        return;
                    }
                }
            })
            .ok();
        // Runners are forked by one thread that lives as long as the worker: a runner's PR_SET_PDEATHSIG fires when
        // the *thread* that forked it exits, so a short-lived spawning thread would kill its runner at once.
        let (spawner, spawns) = channel::<(RunnerId, u32)>();
        let exe = self.config.exe.clone();
        let spawned = self.inputs.clone();
        std::thread::Builder::new()
            .name("shoal-worker-spawn".into())
            .spawn(move || {
                while let Ok((runner, tag)) = spawns.recv() {
                    let result = RunnerProcess::spawn(&exe, tag, runner_tx.clone()).map_err(|e| e.to_string());
                    if spawned.send(Input::Spawned { runner, tag, result }).is_err() {
                        return;
                    }
                }
            })
            .ok();
        // Every State change wakes the plan (§10.2), not only the 250 ms tick.
        let mut changes = self.cluster.subscribe();
        let wake = self.inputs.clone();
        std::thread::Builder::new()
            .name("shoal-worker-state".into())
            .spawn(move || {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match changes.blocking_recv() {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            if wake.send(Input::StateChanged).is_err() {
                                return;
                            }
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
            })
            .ok();
        loop {
            match rx.recv_timeout(TICK) {
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
            }
            while let Ok(input) = rx.try_recv() {
                if matches!(input, Input::Stop) {
                    self.stop_all();
                    return;
                }
                self.handle(input);
            }
            let state = self.cluster.view().state;
            self.step(&state, &spawner);
        }
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.lock_reports().clear();
        for (_, process) in std::mem::take(&mut self.processes) {
            stop_in_background(process);
        }
    }

    fn step(&mut self, state: &State, spawner: &Sender<(RunnerId, u32)>) {
        let now = unix_ms();
        self.scan_held_files(state, now);
        for action in plan(state, &self.local, now) {
            self.local.start(&action, now);
            self.carry_out(action, state, spawner);
        }
    }

    fn carry_out(&mut self, action: Action, state: &State, spawner: &Sender<(RunnerId, u32)>) {
        match action {
            Action::Spawn { runner, instance } => {
                let Some(instance) = state.instances.get(&instance) else {
                    self.local.finish(&ActionKey::Spawn(runner));
                    return;
                };
                let entry = self
                    .local
                    .runners
                    .entry(runner)
                    .or_insert_with(|| LocalRunner::seeded(instance, &runner));
                entry.instance = instance.id;
                let tag = self.next_tag;
                self.next_tag = self.next_tag.wrapping_add(1);
                self.tags.insert(tag, runner);
                tracing::info!(%runner, instance = %instance.id, "spawning a runner");
                if spawner.send((runner, tag)).is_err() {
                    self.local.finish(&ActionKey::Spawn(runner));
                }
            }
            Action::Shutdown { runner } => {
                tracing::info!(%runner, "stopping a runner whose instance is gone");
                if let Some(process) = self.processes.remove(&runner) {
                    stop_in_background(process);
                }
                self.local.runners.remove(&runner);
                self.tags.retain(|_, r| *r != runner);
                self.tasks.remove(&runner);
                self.lock_reports().remove(&runner);
                self.local.finish(&ActionKey::Shutdown(runner));
            }
            Action::Reset { runner } => {
                // No Reset in the runner protocol: restart the process (not a failure, so no backoff). Its sequences die
                // with it (§10.1: a reset fails its in-flight sequences).
                if let Some(process) = self.processes.remove(&runner) {
                    stop_in_background(process);
                }
                self.fail_tasks_of(
                    runner,
                    state,
                    ErrorKind::Pipeline,
                    "the pipeline was reset: a sibling runner failed",
                );
                self.lock_reports().remove(&runner);
                if let Some(r) = self.local.runners.get_mut(&runner) {
                    r.alive = false;
                    r.status = None;
                    r.data_addrs.clear();
                }
                self.local.finish(&ActionKey::Reset(runner));
            }
            Action::Download { model } => self.download(model, state),
            Action::Load { runner } => self.load(runner, state),
            Action::Warmup { runner, next } => {
                let Some(r) = self.local.runners.get_mut(&runner) else {
                    self.local.finish(&ActionKey::Warmup(runner));
                    return;
                };
                // A ring of one closes on itself.
                let next = if next.is_empty() { r.data_addrs.clone() } else { next };
                r.status = Some(RunnerStatus::WarmingUp);
                let sent = self
                    .processes
                    .get_mut(&runner)
                    .map(|p| p.send(&ToRunner::Connect { next }));
                if !matches!(sent, Some(Ok(()))) {
                    self.local.finish(&ActionKey::Warmup(runner));
                }
            }
            Action::Emit(event) => {
                if let Err(error) = self.cluster.produce(*event) {
                    tracing::warn!(%error, "cannot hand an event to the outbox");
                }
            }
            Action::Submit { runner, task } => {
                self.submit(runner, task, state);
                self.local.finish(&ActionKey::Submit(runner, task));
            }
            Action::Cancel { runner, task } => {
                self.cancel(runner, task);
                self.local.finish(&ActionKey::Cancel(runner, task));
            }
        }
    }

    fn lock_reports(&self) -> std::sync::MutexGuard<'_, BTreeMap<RunnerId, RunnerReport>> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rule 8: renders and tokenizes the task on this (rank 0) node and hands it to the runner. A request the model
    /// cannot take (the template refuses it, the prompt is too long) fails here with `Invalid`.
    fn submit(&mut self, runner: RunnerId, task_id: TaskId, state: &State) {
        tracing::debug!(task = %task_id, "submitting");
        let Some(task) = state.tasks.get(&task_id).cloned() else {
            return;
        };
        let Some(instance) = state.instances.get(&task.instance) else {
            return;
        };
        let route = Route {
            task_id,
            command_id: task.command_id,
            origin: task.origin,
            instance: task.instance,
        };
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.submitted.insert(task_id);
        }
        let prepared = self.prompter(&instance.model).and_then(|p| p.prepare(&task.params));
        let (prompt, params) = match prepared {
            Ok(x) => x,
            Err(message) => {
                tracing::info!(task = %task_id, %message, "request refused at rank 0");
                self.fail_task(route, ErrorKind::Invalid, message);
                return;
            }
        };
        let route_bytes = match codec::encode(&route) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.fail_task(
                    route,
                    ErrorKind::Internal,
                    format!("cannot encode the task's route: {error}"),
                );
                return;
            }
        };
        let handle = self.next_handle;
        self.next_handle += 1;
        let sent = self.processes.get_mut(&runner).map(|p| {
            p.send(&ToRunner::Submit {
                task: handle,
                prompt,
                params,
                route: route_bytes,
            })
        });
        if !matches!(sent, Some(Ok(()))) {
            self.fail_task(route, ErrorKind::Runner, "the runner is gone".into());
            return;
        }
        self.tasks.entry(runner).or_default().insert(handle, route);
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.open_tasks.insert(task_id);
        }
        tracing::debug!(task = %task_id, "submitted to the runner");
    }

    /// Rule 3: rank 0 stops feeding the sequence and releases it on every rank; another rank only forgets it.
    fn cancel(&mut self, runner: RunnerId, task_id: TaskId) {
        tracing::debug!(%runner, task = %task_id, "cancelling");
        if let Some(r) = self.local.runners.get_mut(&runner) {
            r.open_tasks.remove(&task_id);
        }
        let Some(tasks) = self.tasks.get_mut(&runner) else {
            return;
        };
        let Some(handle) = tasks.handles.get(&task_id).copied() else {
            return;
        };
        tasks.remove(handle);
        if let Some(process) = self.processes.get_mut(&runner)
            && let Err(error) = process.send(&ToRunner::Cancel { task: handle })
        {
            tracing::debug!(%runner, %error, "cannot send Cancel (the runner is going away)");
        }
    }

    fn prompter(&mut self, card: &ModelCard) -> Result<Arc<Prompter>, String> {
        if let Some(p) = self.prompters.get(&card.id) {
            return Ok(p.clone());
        }
        let gguf = self
            .gguf
            .get(&card.id)
            .ok_or_else(|| format!("model {} is not on this node", card.id))?;
        let prompter = Arc::new(Prompter::load(gguf, card)?);
        self.prompters.insert(card.id.clone(), prompter.clone());
        Ok(prompter)
    }

    /// The client hears of a failure at once (an out-of-band `Error` chunk to its API node), and State records it
    /// (`TaskFailed`), which also closes the stream should the chunk be lost.
    fn fail_task(&self, route: Route, kind: ErrorKind, message: String) {
        let chunk = Chunk::Error {
            kind,
            message: message.clone(),
        };
        self.send_to_origin(route, SEQ_OOB, chunk);
        let event = Event::TaskFailed {
            task_id: route.task_id,
            error: TaskError { kind, message },
        };
        if let Err(error) = self.cluster.produce(event) {
            tracing::warn!(%error, "cannot hand TaskFailed to the outbox");
        }
    }

    /// A chunk of `route`'s task, straight to its API node (in-process when that is this node).
    fn send_to_origin(&self, route: Route, seq: u32, chunk: Chunk) {
        let msg = ChunkMsg {
            from: self.node,
            command_id: route.command_id,
            task_id: route.task_id,
            seq,
            chunk,
        };
        self.cluster.send_chunk(route.origin, msg);
    }

    /// A runner died or was reset: fails what it held and every task of its instance that State says is running.
    fn fail_tasks_of(&mut self, runner: RunnerId, state: &State, kind: ErrorKind, message: &str) {
        let held = self.tasks.remove(&runner).unwrap_or_default();
        let instance = self.local.runners.get(&runner).map(|r| r.instance);
        let mut routes: BTreeMap<TaskId, Route> = held.routes.into_values().map(|r| (r.task_id, r)).collect();
        if let Some(instance) = instance {
            for task in state.tasks.values() {
                if task.instance == instance && task.status == TaskStatus::Running {
                    routes.entry(task.id).or_insert(Route {
                        task_id: task.id,
                        command_id: task.command_id,
                        origin: task.origin,
                        instance,
                    });
                }
            }
        }
        for route in routes.into_values() {
            let terminal = state.tasks.get(&route.task_id).is_some_and(|t| t.status.is_terminal());
            if !terminal {
                self.fail_task(route, kind, message.to_string());
            }
        }
    }

    fn on_task_message(&mut self, runner: RunnerId, msg: FromRunner) {
        match msg {
            FromRunner::Accepted { task } => {
                let Some(route) = self.tasks.get(&runner).and_then(|t| t.routes.get(&task)).copied() else {
                    return;
                };
                tracing::debug!(task = %route.task_id, "accepted by the runner");
                self.produce(Event::TaskStatusUpdated {
                    task_id: route.task_id,
                    status: TaskProgress::Running,
                });
            }
            FromRunner::Started { task, route } => match codec::decode::<Route>(&route) {
                Ok(route) => {
                    if let Some(r) = self.local.runners.get_mut(&runner) {
                        r.open_tasks.insert(route.task_id);
                    }
                    self.tasks.entry(runner).or_default().insert(task, route);
                }
                Err(error) => tracing::warn!(%runner, %error, "a task's route does not decode; its chunks are dropped"),
            },
            FromRunner::Chunk {
                task,
                seq,
                token,
                text,
                end,
            } => {
                let Some(route) = self.tasks.get(&runner).and_then(|t| t.routes.get(&task)).copied() else {
                    tracing::debug!(%runner, task, seq, "a chunk of a task no longer held; dropped");
                    return; // cancelled since
                };
                use std::sync::atomic::Ordering::Relaxed;
                self.counters.chunks.fetch_add(1, Relaxed);
                let stopped = self
                    .cluster
                    .view()
                    .state
                    .tasks
                    .get(&route.task_id)
                    .is_none_or(|t| matches!(t.status, TaskStatus::Cancelled | TaskStatus::Failed));
                if stopped {
                    self.counters.chunks_after_cancel.fetch_add(1, Relaxed);
                }
                if seq == 0 {
                    tracing::debug!(task = %route.task_id, "first chunk from the runner");
                }
                let (finish, usage) = match end {
                    Some(end) => (Some(finish_reason(end)), Some(usage(end))),
                    None => (None, None),
                };
                let chunk = Chunk::Token {
                    text,
                    token_id: token,
                    is_thinking: false,
                    logprob: None,
                    top_logprobs: Vec::new(),
                    finish,
                    usage,
                    stats: None,
                };
                self.send_to_origin(route, u32::try_from(seq).unwrap_or(SEQ_OOB - 1), chunk);
            }
            FromRunner::TaskDone { task, outcome } => {
                tracing::debug!(%runner, task, ?outcome, "task done");
                let Some(route) = self.tasks.get_mut(&runner).and_then(|t| t.remove(task)) else {
                    return;
                };
                if let Some(r) = self.local.runners.get_mut(&runner) {
                    r.open_tasks.remove(&route.task_id);
                }
                match outcome {
                    Outcome::Complete { .. } => self.produce(Event::TaskStatusUpdated {
                        task_id: route.task_id,
                        status: TaskProgress::Complete,
                    }),
                    Outcome::Failed(message) => self.fail_task(route, ErrorKind::Runner, message),
                    // State already says so (that is why it was cancelled).
                    Outcome::Cancelled => {}
                }
            }
            _ => {}
        }
    }

    fn produce(&self, event: Event) {
        if let Err(error) = self.cluster.produce(event) {
            tracing::warn!(%error, "cannot hand an event to the outbox");
        }
    }

    fn card_of(state: &State, model: &ModelId) -> Option<ModelCard> {
        state
            .instances
            .values()
            .find(|i| i.model.id == *model)
            .map(|i| i.model.clone())
            .or_else(|| state.model_cards.get(model).map(|c| c.as_ref().clone()))
    }

    fn download(&mut self, model: ModelId, state: &State) {
        let Some(card) = Self::card_of(state, &model) else {
            self.local.finish(&ActionKey::Download(model));
            return;
        };
        let entry = self.local.models.entry(model.clone()).or_default();
        entry.downloading = true;
        entry.progress = Some(DownloadProgress::Pending);
        let store = self.models.clone();
        let inputs = self.inputs.clone();
        std::thread::spawn(move || {
            let progress_to = inputs.clone();
            let id = model.clone();
            let mut progress = move |p: DownloadProgress| {
                let _ = progress_to.send(Input::Progress(id.clone(), p));
            };
            let result = store
                .fetch(&card, &mut progress)
                .map_err(|e| e.to_string())
                .and_then(|files| {
                    files
                        .gguf()
                        .map(|p| p.to_path_buf())
                        .ok_or_else(|| format!("model {} has no .gguf file", card.id))
                });
            let _ = inputs.send(Input::Fetched(model, result));
        });
    }

    /// Reconciles "which models' files does this node hold" with State's custom cards: a model that only `path`
    /// sources name can be placed only where its files are (no node can fetch them), so each node fetches it as
    /// the store does any model (found by name and sha256 in its models directories, else copied from the source
    /// directory when this node has it) and reports the result as its download (rule 9), which placement reads.
    /// A node without the files retries every 30 s (an operator may copy them in). Never against an empty State.
    fn scan_held_files(&mut self, state: &State, now: u64) {
        let wanted: Vec<ModelId> = state
            .model_cards
            .values()
            .filter(|card| card.files_only_where_held())
            .filter(|card| {
                self.local.models.get(&card.id).is_none_or(|m| {
                    !m.verified
                        && !m.downloading
                        && m.last_failure_ms
                            .is_none_or(|at| now.saturating_sub(at) >= RESCAN_EVERY_MS)
                })
            })
            .map(|card| card.id.clone())
            .collect();
        for model in wanted {
            self.download(model, state);
        }
    }

    fn load(&mut self, runner: RunnerId, state: &State) {
        let spec = (|| {
            let r = self.local.runners.get(&runner)?;
            let instance = state.instances.get(&r.instance)?;
            let Some(ShardMetadata::Pipeline(shard)) = instance.assignments.shards.get(&runner) else {
                return None;
            };
            let model_path = self.gguf.get(&instance.model.id)?.clone();
            Some(LoadSpec {
                model_path,
                instance: instance.id.to_string(),
                layer_start: shard.start_layer as usize,
                layer_end: shard.end_layer as usize,
                rank: shard.device_rank,
                world_size: shard.world_size,
                max_seqs: self.config.max_seqs as usize,
                threads: self.config.threads,
                bind: self.config.data_plane.bind(),
            })
        })();
        let sent = match (spec, self.processes.get_mut(&runner)) {
            (Some(spec), Some(process)) => {
                let total = (spec.layer_end - spec.layer_start) as u32;
                let sent = process.send(&ToRunner::Load(spec)).is_ok();
                if sent && let Some(r) = self.local.runners.get_mut(&runner) {
                    r.status = Some(RunnerStatus::Loading {
                        layers_loaded: 0,
                        total_layers: total,
                    });
                }
                sent
            }
            _ => false,
        };
        self.local.finish(&ActionKey::Load(runner));
        if !sent {
            tracing::warn!(%runner, "cannot send Load to the runner");
        }
    }

    fn handle(&mut self, input: Input) {
        let now = unix_ms();
        match input {
            Input::Stop | Input::StateChanged => {}
            Input::Spawned { runner, tag, result } => {
                self.local.finish(&ActionKey::Spawn(runner));
                let Some(r) = self.local.runners.get_mut(&runner) else {
                    // Shut down while it started.
                    if let Ok(process) = result {
                        stop_in_background(process);
                    }
                    return;
                };
                match result {
                    Ok(process) => {
                        tracing::info!(%runner, pid = process.pid(), "runner started");
                        r.alive = true;
                        r.status = Some(RunnerStatus::Idle);
                        r.data_addrs.clear();
                        r.open_tasks.clear();
                        self.processes.insert(runner, process);
                    }
                    Err(error) => {
                        self.tags.remove(&tag);
                        Self::failed(r, now, format!("cannot start the runner: {error}"));
                    }
                }
            }
            Input::Runner(tag, msg) => {
                let Some(runner) = self.tags.get(&tag).copied() else {
                    return; // a runner that was stopped since
                };
                self.on_runner(runner, tag, msg, now);
            }
            Input::Progress(model, progress) => {
                if let Some(hook) = &self.config.on_progress {
                    hook(&model, &progress);
                }
                let entry = self.local.models.entry(model).or_default();
                entry.progress = Some(progress);
            }
            Input::Fetched(model, result) => {
                self.local.finish(&ActionKey::Download(model.clone()));
                let entry = self.local.models.entry(model.clone()).or_default();
                entry.downloading = false;
                match result {
                    Ok(path) => {
                        tracing::info!(model = %model, path = %path.display(), "model files verified");
                        entry.verified = true;
                        entry.failures = 0;
                        self.gguf.insert(model, path);
                    }
                    Err(error) => {
                        tracing::warn!(model = %model, %error, "model download failed");
                        entry.failures = entry.failures.saturating_add(1);
                        entry.last_failure_ms = Some(now);
                        entry.progress = Some(DownloadProgress::Failed { error });
                    }
                }
            }
        }
    }

    fn on_runner(&mut self, runner: RunnerId, tag: u32, msg: FromRunner, now: u64) {
        if matches!(
            msg,
            FromRunner::Accepted { .. }
                | FromRunner::Started { .. }
                | FromRunner::Chunk { .. }
                | FromRunner::TaskDone { .. }
        ) {
            self.on_task_message(runner, msg);
            return;
        }
        if let FromRunner::Status(proto::RunnerStatus::Failed(error)) = &msg {
            let state = self.cluster.view().state;
            let message = format!("runner failed: {error}");
            self.fail_tasks_of(runner, &state, ErrorKind::Runner, &message);
            self.lock_reports().remove(&runner);
        }
        if let FromRunner::Weights { bytes } = msg {
            self.report_weights(runner, bytes);
            return;
        }
        if let FromRunner::Listening { port } = msg {
            let state = self.cluster.view().state;
            let interfaces = state
                .nodes
                .get(&self.node)
                .map(|n| n.interfaces.clone())
                .unwrap_or_default();
            let addrs = self.config.data_plane.advertised(&interfaces, port);
            if let Some(r) = self.local.runners.get_mut(&runner) {
                r.data_addrs = addrs;
            }
            return;
        }
        let Some(r) = self.local.runners.get_mut(&runner) else {
            return;
        };
        match msg {
            FromRunner::Status(proto::RunnerStatus::Loading) => {}
            FromRunner::Status(proto::RunnerStatus::Loaded) => {
                r.status = Some(RunnerStatus::Loaded);
                self.local.finish(&ActionKey::Load(runner));
            }
            FromRunner::Status(proto::RunnerStatus::Ready) => {
                r.status = Some(RunnerStatus::Ready);
                self.local.finish(&ActionKey::Warmup(runner));
            }
            FromRunner::Status(proto::RunnerStatus::Failed(error)) => {
                tracing::warn!(%runner, %error, "runner failed");
                Self::failed(r, now, error);
                self.tags.remove(&tag);
                self.local.finish(&ActionKey::Load(runner));
                self.local.finish(&ActionKey::Warmup(runner));
                if let Some(process) = self.processes.remove(&runner) {
                    stop_in_background(process);
                }
            }
            FromRunner::Hello { .. }
            | FromRunner::Heartbeat
            | FromRunner::Weights { .. }
            | FromRunner::Listening { .. }
            | FromRunner::Accepted { .. }
            | FromRunner::Started { .. }
            | FromRunner::Chunk { .. }
            | FromRunner::TaskDone { .. } => {}
        }
    }

    fn report_weights(&mut self, runner: RunnerId, bytes: u64) {
        let state = self.cluster.view().state;
        let Some(r) = self.local.runners.get(&runner) else {
            return;
        };
        let shard = state
            .instances
            .get(&r.instance)
            .and_then(|i| i.assignments.shards.get(&runner));
        let (layer_start, layer_end) = match shard {
            Some(ShardMetadata::Pipeline(p)) => (p.start_layer, p.end_layer),
            _ => (0, 0),
        };
        let pid = self.processes.get(&runner).map_or(0, |p| p.pid());
        let report = RunnerReport {
            runner,
            instance: r.instance,
            layer_start,
            layer_end,
            pid,
            weight_bytes: bytes,
        };
        self.lock_reports().insert(runner, report);
    }

    fn failed(r: &mut LocalRunner, now: u64, error: String) {
        r.alive = false;
        r.attempts = r.attempts.saturating_add(1);
        r.last_exit_ms = Some(now);
        r.data_addrs.clear();
        r.open_tasks.clear();
        r.status = Some(RunnerStatus::Failed {
            error,
            attempt: r.attempts,
        });
    }
}

/// Stops a runner off the worker thread: `Shutdown`, then SIGKILL after its grace (the process's `Drop`).
fn stop_in_background(process: RunnerProcess) {
    std::thread::spawn(move || drop(process));
}

fn finish_reason(end: ChunkEnd) -> FinishReason {
    match end.finish {
        shoal_engine::FinishReason::Stop => FinishReason::Stop,
        shoal_engine::FinishReason::StopSequence(index) => FinishReason::StopSequence(index),
        shoal_engine::FinishReason::Length | shoal_engine::FinishReason::ContextLength => FinishReason::Length,
    }
}

fn usage(end: ChunkEnd) -> Usage {
    let prompt = u32::try_from(end.prompt_tokens).unwrap_or(u32::MAX);
    let completion = u32::try_from(end.completion_tokens).unwrap_or(u32::MAX);
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt.saturating_add(completion),
        ..Usage::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, addrs: &[&str]) -> Iface {
        Iface {
            name: name.into(),
            addrs: addrs
                .iter()
                .map(|a| a.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)))
                .collect(),
        }
    }

    #[test]
    fn advertised_addresses_are_routable_ipv4_first_and_loopback_only_alone() {
        let all = DataPlane::AllInterfaces;
        let ifaces = [
            iface("lo", &["127.0.0.1", "::1"]),
            iface("eth0", &["192.168.1.5", "fe80::1"]),
            iface("wlan0", &["10.0.0.7", "169.254.3.4"]),
        ];
        let got = all.advertised(&ifaces, 4000);
        let want: Vec<SocketAddr> = ["192.168.1.5:4000", "10.0.0.7:4000"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        assert_eq!(got, want);
        assert_eq!(all.bind(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let lonely = all.advertised(&[iface("lo", &["127.0.0.1"])], 4000);
        assert_eq!(lonely, vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 4000))]);
        assert_eq!(all.advertised(&[], 7).len(), 1, "no interfaces known yet: loopback");
    }

    #[test]
    fn a_pinned_node_binds_and_advertises_only_its_addresses() {
        let pinned = DataPlane::Only(vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert_eq!(pinned.bind(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let ifaces = [iface("eth0", &["192.168.1.5"])];
        assert_eq!(
            pinned.advertised(&ifaces, 9),
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 9))]
        );
    }
}
