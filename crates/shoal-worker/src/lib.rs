//! The worker shell (SYSTEM.md §10): one OS thread that runs the pure [`shoal_core::worker::plan`] on every State
//! change, every runner message, every download report and every 250 ms, and carries out what it returns with runner
//! processes (`shoal runner`, through [`shoal_runner::local::RunnerProcess`]) and the [`ModelStore`].
//!
//! Everything slow (spawning a runner waits for it to connect back, a download takes seconds, stopping a runner waits
//! for it to exit) runs on a short-lived thread of its own and reports back through the worker's one channel, so the
//! plan never waits on a runner. Runner statuses reach State only through rule 9 of the plan (`Emit`), so a status
//! that was lost on its way is asserted again.
//!
//! Generation (§10.3–§10.4): State holds a task without its content (issue 15); rank 0's node fetches the content
//! from the task's API node first (`prompts`, as `shoal_core::prompts::plan` decides, checked against the task's
//! digest, kept in memory until submitted). `Submit` then renders the task's messages with the chat template, tokenizes
//! them and hands the runner the task with its route (task id, command id, API node); the last rank's runner gives the
//! route back to its own worker (`Started`), whose node sends every chunk straight to the API node. Runner messages
//! become durable events: `Accepted` → `TaskStatusUpdated(Running)` (rank 0), the last chunk's `TaskDone(Complete)` →
//! `TaskStatusUpdated(Complete)` (last rank), `TaskDone(Failed)` → `TaskFailed` plus an out-of-band `Error` chunk. A
//! runner that dies or is reset fails the tasks it had and every `Running` task of its instance the same way, so a
//! client hears of it at once rather than when State catches up; so does a runner's spawn, which leaves its ring a
//! gap (after a restart of this worker nothing else would fail them). `Cancel` goes to rank 0, which releases the
//! sequence on every rank. The runner protocol has no `Reset`, so a reset is a restart of the runner process that does
//! not count as a failure.
//!
//! A runner silent for [`RUNNER_HUNG_AFTER`] (its heartbeat comes every second from a thread of its own, so a
//! SIGSTOPped process falls silent), or inside one forward step that long, is hung (§13): it is SIGKILLed, its tasks
//! fail like a dead runner's, and it is respawned after the usual backoff (`health`). The decisions (which tasks
//! fail, when a runner is hung) are pure, in `shoal_core::runner_health`.
//!
//! The modules, by job: `lifecycle` (spawn, load, warm up, reset, stop runners), `health` (the hang watch),
//! `prompts` (task contents from API nodes), `tasks` (task routing and chunk translation), `downloads`, `data_plane` (addresses); this file wires them to
//! the worker's one thread.

mod data_plane;
mod downloads;
mod health;
mod lifecycle;
mod prompts;
mod share_client;
mod sharing;
mod tasks;

pub use data_plane::DataPlane;
pub use shoal_models::prompt::{DEFAULT_MAX_TOKENS, Prompter, engine_params};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_cluster::ClusterHandle;
use shoal_core::worker::{Action, ActionKey, LocalView, plan};
use shoal_models::ModelStore;
use shoal_runner::local::RunnerProcess;
use shoal_runner::proto::{DataPlaneTls, FromRunner, TaskHandle};
use shoal_types::ids::{InstanceId, ModelId, RunnerId, TaskId};
use shoal_types::model::DownloadProgress;
use shoal_types::params::GenerationParams;
use shoal_types::{NodeId, State};

use tasks::RunnerTasks;

/// A runner silent or stuck in one step this long is hung (§13); see [`WorkerConfig::hung_after`].
pub const RUNNER_HUNG_AFTER: Duration = Duration::from_millis(shoal_core::runner_health::RUNNER_HUNG_AFTER_MS);

/// Inputs the worker thread's queue holds. Most producers wait when it is full (back-pressure: the runners' socket
/// readers, so a runner's writes stall rather than lose a chunk; the spawner; fetch results); what only says
/// "something changed" is dropped and counted instead (see [`Overflow`]). The worker thread drains the queue between
/// steps of microseconds, so this binds only a runaway producer, far above what normal work keeps in flight.
pub const WORKER_INPUTS: usize = 8_192;

/// Runner forks the spawner thread may have queued. The worker thread must never wait on it (the spawner reports
/// back through the worker's own queue), so a full queue defers the spawn to a later plan, counted.
pub const SPAWN_QUEUE: usize = 64;

/// The plan runs at least this often (§10.2).
const TICK: Duration = Duration::from_millis(250);

/// How this node runs its runners.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The `shoal` binary, started as `shoal runner --socket ...`.
    pub exe: PathBuf,
    /// Sequences a runner admits at once (`--max-seqs`).
    pub max_seqs: u32,
    /// Compute threads per runner.
    pub threads: usize,
    /// Element type of every runner's KV cache (`shoal run --kv-cache`).
    pub kv_cache: shoal_engine::KvType,
    /// Where runners listen for their ring neighbours, and so which addresses go into `data_addrs`.
    pub data_plane: DataPlane,
    /// A runner silent this long, or stuck this long inside one step, is killed as hung (§13);
    /// [`RUNNER_HUNG_AFTER`] unless very slow hardware needs more (`shoal run --runner-hung-after`).
    pub hung_after: Duration,
    /// Told every download report of this node (the CLI's progress bar); State gets them throttled (§10.2).
    pub on_progress: Option<ProgressHook>,
    /// With a cluster key: the node's certificate from the cluster CA, which its runners use for the data plane's
    /// mutual TLS (handed to each runner in `Load`, over its private socket).
    pub data_plane_tls: Option<DataPlaneTls>,
    /// With a cluster key: the same certificate for the model-file server and the fetches from peers (issue 18).
    pub share_tls: Option<shoal_share::ShareTls>,
}

/// Reads the model-file server's counters.
pub type FileServerStats = Arc<dyn Fn() -> shoal_share::ServerStats + Send + Sync>;

/// A watcher of this node's downloads.
pub type ProgressHook = Arc<dyn Fn(&ModelId, &DownloadProgress) + Send + Sync>;

/// What happens to an input that finds the worker's queue full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// Its producer waits: losing it would lose work (a runner's chunk, a spawned process, a fetch's result).
    Wait,
    /// Dropped and counted: a later input says as much (a State wake-up: the plan also runs every [`TICK`]; a
    /// download's progress: the next report or the result supersedes it).
    Drop,
}

/// The decision for each input on a full queue.
pub(crate) fn overflow(input: &Input) -> Overflow {
    match input {
        Input::StateChanged | Input::Progress(..) => Overflow::Drop,
        Input::Runner(..) | Input::Spawned { .. } | Input::Fetched(..) | Input::Prompt { .. } | Input::Stop => {
            Overflow::Wait
        }
    }
}

/// The worker's queue as its producers hold it: bounded ([`WORKER_INPUTS`]), waiting or dropping per [`overflow`].
#[derive(Clone)]
pub(crate) struct Inputs {
    tx: SyncSender<Input>,
    counters: Arc<WorkerCounters>,
}

/// The worker thread is gone.
#[derive(Debug)]
pub(crate) struct WorkerGone;

impl Inputs {
    pub(crate) fn send(&self, input: Input) -> Result<(), WorkerGone> {
        match overflow(&input) {
            Overflow::Wait => self.tx.send(input).map_err(|_| WorkerGone),
            Overflow::Drop => match self.tx.try_send(input) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => {
                    self.counters
                        .inputs_dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
                Err(TrySendError::Disconnected(_)) => Err(WorkerGone),
            },
        }
    }
}

/// What reaches the worker thread.
pub(crate) enum Input {
    /// A message of the runner spawned with this tag.
    Runner(u32, FromRunner),
    Spawned {
        runner: RunnerId,
        tag: u32,
        result: Result<RunnerProcess, String>,
    },
    Progress(ModelId, DownloadProgress),
    Fetched(ModelId, downloads::Fetched),
    /// A task's content arrived from its API node, or did not.
    Prompt {
        task: TaskId,
        result: Box<Result<([u8; 16], GenerationParams), shoal_cluster::FetchError>>,
    },
    /// State changed (an applied event or an installed snapshot): plan again.
    StateChanged,
    Stop,
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
    /// Inputs dropped on a full worker queue ([`WORKER_INPUTS`]): State wake-ups and download progress only.
    pub inputs_dropped: std::sync::atomic::AtomicU64,
    /// Spawns put off to a later plan because the spawner's queue ([`SPAWN_QUEUE`]) was full.
    pub spawns_deferred: std::sync::atomic::AtomicU64,
}

/// The live reports of this node's runners, shared with the HTTP layer.
pub type RunnerReports = Arc<std::sync::Mutex<BTreeMap<RunnerId, RunnerReport>>>;

/// A running worker; dropping it stops the thread (its runners are stopped with it).
pub struct Worker {
    inputs: Inputs,
    thread: Option<JoinHandle<()>>,
    reports: RunnerReports,
    counters: Arc<WorkerCounters>,
    file_server: Option<Arc<sharing::Sharing>>,
}

impl Worker {
    pub fn start(cluster: ClusterHandle, models: ModelStore, config: WorkerConfig) -> std::io::Result<Worker> {
        let (tx, rx) = sync_channel(WORKER_INPUTS);
        let node = cluster.view().status.node;
        let mut local = LocalView::new(node);
        local.max_seqs = config.max_seqs;
        let reports = RunnerReports::default();
        let counters = Arc::new(WorkerCounters::default());
        let inputs = Inputs {
            tx,
            counters: counters.clone(),
        };
        // The model-file server binds where the runners do; a node that cannot bind one fetches only from sources.
        let bind = std::net::SocketAddr::new(config.data_plane.bind(), 0);
        let sharing = match sharing::Sharing::start(bind, config.share_tls.clone()) {
            Ok(sharing) => Some(Arc::new(sharing)),
            Err(error) => {
                tracing::warn!(%error, %bind, "cannot start the model-file server: this node will not share model files");
                None
            }
        };
        let file_server = sharing.clone();
        let mut shell = Shell {
            sharing,
            bad_peers: BTreeMap::new(),
            last_gone_check_ms: 0,
            last_disk_scan_ms: 0,
            counters: counters.clone(),
            node,
            tasks: BTreeMap::new(),
            contents: HashMap::new(),
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
            watches: BTreeMap::new(),
            last_watch_ms: None,
            epoch: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("shoal-worker".into())
            .spawn(move || shell.run(rx))?;
        Ok(Worker {
            inputs,
            thread: Some(thread),
            reports,
            counters,
            file_server,
        })
    }

    /// The port of this node's model-file server (on every address its runners advertise), if it runs.
    pub fn file_server_port(&self) -> Option<u16> {
        self.file_server.as_ref().map(|s| s.port())
    }

    /// Reads what this node's model-file server did so far (for `/metrics`), if it runs; the reader does not keep
    /// the worker alive.
    pub fn file_server_stats(&self) -> Option<FileServerStats> {
        let sharing = Arc::downgrade(self.file_server.as_ref()?);
        Some(Arc::new(move || {
            sharing.upgrade().map(|s| s.stats()).unwrap_or_default()
        }))
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

pub(crate) struct Shell {
    node: NodeId,
    /// The model-file server and its offer (issue 18); `None` when it could not start.
    sharing: Option<Arc<sharing::Sharing>>,
    /// Peers that failed a transfer, left out of fetch plans until the time given.
    bad_peers: BTreeMap<NodeId, u64>,
    /// When the held files were last checked for presence.
    last_gone_check_ms: u64,
    /// When the disk was last searched for the catalog's models.
    last_disk_scan_ms: u64,
    /// Tasks each local runner holds (rank 0: submitted; last rank: started).
    tasks: BTreeMap<RunnerId, RunnerTasks>,
    /// Rank 0: the fetched contents of tasks not yet submitted (memory only; issue 15).
    contents: HashMap<TaskId, GenerationParams>,
    next_handle: TaskHandle,
    /// Rank 0's tokenizer and chat template per model.
    prompters: BTreeMap<ModelId, Arc<Prompter>>,
    reports: RunnerReports,
    counters: Arc<WorkerCounters>,
    cluster: ClusterHandle,
    models: Arc<ModelStore>,
    config: WorkerConfig,
    inputs: Inputs,
    local: LocalView,
    processes: BTreeMap<RunnerId, RunnerProcess>,
    /// Spawn tag → runner: runner messages arrive tagged.
    tags: HashMap<u32, RunnerId>,
    next_tag: u32,
    /// The verified weights file of each model this node holds.
    gguf: BTreeMap<ModelId, PathBuf>,
    /// The progress of each live runner, for the hang check (§13).
    watches: BTreeMap<RunnerId, health::Watch>,
    /// When the hang check last ran (monotonic ms): a long gap means the worker itself was paused.
    last_watch_ms: Option<u64>,
    /// The origin of the monotonic clock the hang check runs on (a wall clock that jumps must not kill runners).
    epoch: Instant,
}

impl Shell {
    /// Milliseconds on the monotonic clock of the hang check.
    fn mono_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Shell {
    fn run(&mut self, rx: Receiver<Input>) {
        let (runner_tx, runner_rx) = sync_channel::<(u32, FromRunner)>(shoal_runner::local::RUNNER_EVENTS);
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
        let (spawner, spawns) = sync_channel::<(RunnerId, u32)>(SPAWN_QUEUE);
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

    fn step(&mut self, state: &State, spawner: &SyncSender<(RunnerId, u32)>) {
        let now = unix_ms();
        self.kill_hung(state, self.mono_ms());
        self.scan_held_files(state, now);
        self.check_held_files(now);
        self.scan_disk(state, now);
        if let Some(sharing) = &self.sharing {
            sharing.offer(sharing::Offer::from_state(state, &self.gguf));
        }
        for action in shoal_core::prompts::plan(state, &self.local, now) {
            self.carry_out_prompt(action, state);
        }
        for action in plan(state, &self.local, now) {
            self.local.start(&action, now);
            self.carry_out(action, state, spawner);
        }
    }
    /// Carries out one action of the plan; each job's module does the work.
    fn carry_out(&mut self, action: Action, state: &State, spawner: &SyncSender<(RunnerId, u32)>) {
        match action {
            Action::Spawn { runner, instance } => self.spawn(runner, instance, state, spawner),
            Action::Shutdown { runner } => self.shutdown(runner),
            Action::Reset { runner } => self.reset(runner, state),
            Action::Download { model } => self.download(model, state),
            Action::Load { runner } => self.load(runner, state),
            Action::Warmup { runner, next } => self.warmup(runner, next),
            Action::Redial { runner, next } => self.redial(runner, next),
            Action::Emit(event) => self.produce(*event),
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

    fn handle(&mut self, input: Input) {
        let now = unix_ms();
        match input {
            Input::Stop | Input::StateChanged => {}
            Input::Spawned { runner, tag, result } => self.on_spawned(runner, tag, result, now),
            Input::Runner(tag, msg) => {
                let Some(runner) = self.tags.get(&tag).copied() else {
                    return; // a runner that was stopped since
                };
                self.heard(runner, &msg, self.mono_ms());
                self.on_runner(runner, tag, msg, now);
            }
            Input::Progress(model, progress) => self.on_download_progress(model, progress),
            Input::Fetched(model, result) => self.on_fetched(model, result, now),
            Input::Prompt { task, result } => self.on_prompt(task, *result, now),
        }
    }
}

#[cfg(test)]
mod bounds_tests {
    use super::*;

    #[test]
    fn only_inputs_a_later_one_supersedes_are_dropped_on_a_full_queue() {
        let model = ModelId::new("m");
        assert_eq!(overflow(&Input::StateChanged), Overflow::Drop);
        assert_eq!(
            overflow(&Input::Progress(model.clone(), DownloadProgress::Pending)),
            Overflow::Drop
        );
        assert_eq!(
            overflow(&Input::Fetched(
                model,
                downloads::Fetched::Waiting(NodeId::from_bytes([1; 16]))
            )),
            Overflow::Wait
        );
        assert_eq!(
            overflow(&Input::Runner(
                0,
                FromRunner::Heartbeat {
                    steps: 0,
                    stepping: false
                }
            )),
            Overflow::Wait
        );
        assert_eq!(overflow(&Input::Stop), Overflow::Wait);
    }

    #[test]
    fn a_full_queue_drops_and_counts_a_wake_up_but_keeps_what_was_queued() {
        let (tx, rx) = sync_channel(1);
        let counters = Arc::new(WorkerCounters::default());
        let inputs = Inputs {
            tx,
            counters: counters.clone(),
        };
        inputs.send(Input::StateChanged).unwrap();
        // Full: the second wake-up is dropped at once (it would block otherwise), and counted.
        inputs.send(Input::StateChanged).unwrap();
        assert_eq!(counters.inputs_dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(matches!(rx.try_recv(), Ok(Input::StateChanged)));
        assert!(rx.try_recv().is_err());
        drop(rx);
        assert!(inputs.send(Input::StateChanged).is_err());
        assert!(inputs.send(Input::Stop).is_err());
    }
}
