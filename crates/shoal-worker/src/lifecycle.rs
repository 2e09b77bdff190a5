//! Runner lifecycle (§10.2 rules 1, 2, 5–7): spawning, loading, warming up, resetting and stopping runner processes,
//! and folding their status messages into the local view.

use std::collections::BTreeMap;
use std::sync::mpsc::{SyncSender, TrySendError};

use shoal_core::worker::{ActionKey, LocalRunner};
use shoal_runner::local::RunnerProcess;
use shoal_runner::proto::{self, FromRunner, LoadSpec, ToRunner};
use shoal_types::State;
use shoal_types::ids::{InstanceId, RunnerId};
use shoal_types::model::{ErrorKind, RunnerStatus, ShardMetadata};

use crate::{RunnerReport, Shell};

impl Shell {
    /// Rule 1: a runner process for `instance`, forked by the spawner thread (which reports `Spawned`).
    pub(crate) fn spawn(
        &mut self,
        runner: RunnerId,
        instance: InstanceId,
        state: &State,
        spawner: &SyncSender<(RunnerId, u32)>,
    ) {
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
        // The instance's ring has a gap until this process joins it, so none of its running tasks can finish; after
        // a restart of this worker nothing else would fail them (`runner_health::tasks_to_fail`).
        self.fail_tasks_of(runner, state, ErrorKind::Runner, "a runner of the instance restarted");
        // Never waits: the spawner answers through this thread's own queue. Unsent, the spawn is planned again.
        match spawner.try_send((runner, tag)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(%runner, "the spawner's queue is full; the spawn waits for a later plan");
                self.counters
                    .spawns_deferred
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.tags.remove(&tag);
                self.local.finish(&ActionKey::Spawn(runner));
            }
            Err(TrySendError::Disconnected(_)) => self.local.finish(&ActionKey::Spawn(runner)),
        }
    }

    /// Rule 2: stops a runner whose instance is gone or no longer assigns it here.
    pub(crate) fn shutdown(&mut self, runner: RunnerId) {
        tracing::info!(%runner, "stopping a runner whose instance is gone");
        if let Some(process) = self.processes.remove(&runner) {
            stop_in_background(process);
        }
        self.local.runners.remove(&runner);
        self.tags.retain(|_, r| *r != runner);
        self.tasks.remove(&runner);
        self.lock_reports().remove(&runner);
        self.local.process_gone(&runner);
        self.local.finish(&ActionKey::Shutdown(runner));
    }

    /// Rule 7: the ring is broken.
    pub(crate) fn reset(&mut self, runner: RunnerId, state: &State) {
        // No Reset in the runner protocol: restart the process (not a failure, so no backoff). Its sequences die
        // with it (§10.1: a reset fails its in-flight sequences).
        if let Some(process) = self.processes.remove(&runner) {
            stop_in_background(process);
        }
        // Forget the old process's tag: its reader reports the closed channel once the process is gone, and that must
        // not read as the failure of the process that replaces it (which it would kill, and count as a failure).
        self.tags.retain(|_, r| *r != runner);
        self.local.process_gone(&runner);
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
            r.serving_since_ms = None;
        }
        self.local.finish(&ActionKey::Reset(runner));
    }

    /// Rule 6: joins the ring by dialing the next rank.
    pub(crate) fn warmup(&mut self, runner: RunnerId, next: Vec<std::net::SocketAddr>) {
        let Some(r) = self.local.runners.get_mut(&runner) else {
            self.local.finish(&ActionKey::Warmup(runner));
            return;
        };
        // A ring of one closes on itself.
        let next = if next.is_empty() { r.data_addrs.clone() } else { next };
        r.status = Some(RunnerStatus::WarmingUp);
        r.dialing = next.clone();
        let sent = self
            .processes
            .get_mut(&runner)
            .map(|p| p.send(&ToRunner::Connect { next }));
        if !matches!(sent, Some(Ok(()))) {
            self.local.finish(&ActionKey::Warmup(runner));
        }
    }

    /// Points a warm-up at the next rank's current listener (rule 6); the runner drops its dial of the old one.
    pub(crate) fn redial(&mut self, runner: RunnerId, next: Vec<std::net::SocketAddr>) {
        self.local.finish(&ActionKey::Redial(runner));
        let Some(r) = self.local.runners.get_mut(&runner) else {
            return;
        };
        tracing::info!(%runner, ?next, old = ?r.dialing, "the next rank moved; redialling");
        r.dialing = next.clone();
        if let Some(p) = self.processes.get_mut(&runner) {
            let _ = p.send(&ToRunner::Connect { next });
        }
    }

    /// The spawner thread's answer: the process is up, or it failed to start (a failure, so it backs off).
    pub(crate) fn on_spawned(&mut self, runner: RunnerId, tag: u32, result: Result<RunnerProcess, String>, now: u64) {
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
                r.dialing.clear();
                r.serving_since_ms = None;
                r.open_tasks.clear();
                self.processes.insert(runner, process);
                self.watch_started(runner, self.mono_ms());
            }
            Err(error) => {
                self.tags.remove(&tag);
                Self::failed(r, now, format!("cannot start the runner: {error}"));
            }
        }
    }

    pub(crate) fn lock_reports(&self) -> std::sync::MutexGuard<'_, BTreeMap<RunnerId, RunnerReport>> {
        self.reports.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn stop_all(&mut self) {
        self.lock_reports().clear();
        for (_, process) in std::mem::take(&mut self.processes) {
            stop_in_background(process);
        }
    }

    pub(crate) fn load(&mut self, runner: RunnerId, state: &State) {
        let spec = (|| {
            let r = self.local.runners.get(&runner)?;
            let instance = state.instances.get(&r.instance)?;
            let Some(ShardMetadata::Pipeline(shard)) = instance.assignments.shards.get(&runner) else {
                return None;
            };
            let model_path = self.gguf.get(&instance.model.id)?.clone();
            let sha256 = gguf_sha256(&instance.model, &model_path);
            Some(LoadSpec {
                model_path,
                sha256,
                instance: instance.id.to_string(),
                layer_start: shard.start_layer as usize,
                layer_end: shard.end_layer as usize,
                rank: shard.device_rank,
                world_size: shard.world_size,
                max_seqs: self.config.max_seqs as usize,
                threads: self.config.threads,
                kv_cache: self.config.kv_cache,
                bind: self.config.data_plane.bind(),
                token: proto::Token(instance.token.0),
                tls: self.config.data_plane_tls.clone(),
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

    pub(crate) fn on_runner(&mut self, runner: RunnerId, tag: u32, msg: FromRunner, now: u64) {
        if matches!(
            msg,
            FromRunner::Accepted { .. }
                | FromRunner::Started { .. }
                | FromRunner::Chunk { .. }
                | FromRunner::ToolCalls { .. }
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
        if let FromRunner::FileCorrupt { path } = &msg {
            self.on_file_corrupt(path);
            return;
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
                r.serving_since_ms = Some(now);
                self.local.finish(&ActionKey::Warmup(runner));
            }
            FromRunner::Status(proto::RunnerStatus::Failed(error)) => {
                tracing::warn!(%runner, %error, "runner failed");
                Self::failed(r, now, error);
                self.tags.remove(&tag);
                self.local.process_gone(&runner);
                if let Some(process) = self.processes.remove(&runner) {
                    stop_in_background(process);
                }
            }
            FromRunner::Hello { .. }
            | FromRunner::Heartbeat { .. }
            | FromRunner::Weights { .. }
            | FromRunner::Listening { .. }
            | FromRunner::FileCorrupt { .. }
            | FromRunner::Accepted { .. }
            | FromRunner::Started { .. }
            | FromRunner::Chunk { .. }
            | FromRunner::ToolCalls { .. }
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

    pub(crate) fn failed(r: &mut LocalRunner, now: u64, error: String) {
        r.alive = false;
        r.attempts = r.attempt_after_failure(now);
        r.serving_since_ms = None;
        r.last_exit_ms = Some(now);
        r.data_addrs.clear();
        r.open_tasks.clear();
        r.status = Some(RunnerStatus::Failed {
            error,
            attempt: r.attempts,
        });
    }
}

/// The card's sha256 for the weights file a runner loads (matched by file name), which the runner checks the file
/// against again if its weights produce non-finite numbers. The first part only for a split model: the runner is
/// handed that part's path.
fn gguf_sha256(card: &shoal_types::ModelCard, path: &std::path::Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    shoal_models::plan::expected_files(card)
        .ok()?
        .into_iter()
        .find(|f| f.name == name || f.name.rsplit('/').next() == Some(name))
        .and_then(|f| f.sha256)
}

/// Stops a runner off the worker thread: `Shutdown`, then SIGKILL after its grace (the process's `Drop`).
pub(crate) fn stop_in_background(process: RunnerProcess) {
    std::thread::spawn(move || drop(process));
}
