//! The worker shell (SYSTEM.md §10): one OS thread that runs the pure [`shoal_core::worker::plan`] on every State
//! change, every runner message, every download report and every 250 ms, and carries out what it returns with runner
//! processes (`shoal runner`, through [`shoal_runner::local::RunnerProcess`]) and the [`ModelStore`].
//!
//! Everything slow (spawning a runner waits for it to connect back, a download takes seconds, stopping a runner waits
//! for it to exit) runs on a short-lived thread of its own and reports back through the worker's one channel, so the
//! plan never waits on a runner. Runner statuses reach State only through rule 9 of the plan (`Emit`), so a status
//! that was lost on its way is asserted again.
//!
//! Not yet carried out (the API issue brings the chunks' consumer): `Submit` and `Cancel`. The runner protocol has
//! no `Reset`, so a reset is a restart of the runner process that does not count as a failure.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_cluster::ClusterHandle;
use shoal_core::worker::{Action, ActionKey, LocalRunner, LocalView, plan};
use shoal_models::ModelStore;
use shoal_runner::local::RunnerProcess;
use shoal_runner::proto::{self, FromRunner, LoadSpec, ToRunner};
use shoal_types::ids::{ModelId, RunnerId};
use shoal_types::model::{DownloadProgress, RunnerStatus, ShardMetadata};
use shoal_types::{ModelCard, State};

/// The plan runs at least this often (§10.2).
const TICK: Duration = Duration::from_millis(250);

/// How this node runs its runners.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The `shoal` binary, started as `shoal runner --socket ...`.
    pub exe: PathBuf,
    /// Sequences a runner admits at once (`--max-seqs`).
    pub max_seqs: u32,
    /// Compute threads per runner.
    pub threads: usize,
}

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

/// A running worker; dropping it stops the thread (its runners are stopped with it).
pub struct Worker {
    inputs: Sender<Input>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn start(cluster: ClusterHandle, models: ModelStore, config: WorkerConfig) -> std::io::Result<Worker> {
        let (inputs, rx) = channel();
        let node = cluster.view().status.node;
        let mut local = LocalView::new(node);
        local.max_seqs = config.max_seqs;
        let mut shell = Shell {
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
        })
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
        for (_, process) in std::mem::take(&mut self.processes) {
            stop_in_background(process);
        }
    }

    fn step(&mut self, state: &State, spawner: &Sender<(RunnerId, u32)>) {
        let now = unix_ms();
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
                self.local.finish(&ActionKey::Shutdown(runner));
            }
            Action::Reset { runner } => {
                // No Reset in the runner protocol: restart the process (not a failure, so no backoff).
                if let Some(process) = self.processes.remove(&runner) {
                    stop_in_background(process);
                }
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
            // Generation is wired with the API's stream registry (issue 5).
            Action::Submit { runner, task } => self.local.finish(&ActionKey::Submit(runner, task)),
            Action::Cancel { runner, task } => self.local.finish(&ActionKey::Cancel(runner, task)),
        }
    }

    fn card_of(state: &State, model: &ModelId) -> Option<ModelCard> {
        state
            .instances
            .values()
            .find(|i| i.model.id == *model)
            .map(|i| i.model.clone())
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
        let Some(r) = self.local.runners.get_mut(&runner) else {
            return;
        };
        match msg {
            FromRunner::Listening { port } => {
                // The data plane binds loopback today; the addresses of every interface come with its TLS.
                r.data_addrs = vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))];
            }
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
            | FromRunner::Accepted { .. }
            | FromRunner::Chunk { .. }
            | FromRunner::TaskDone { .. } => {}
        }
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
