//! The worker's side of runners: spawn `shoal runner` child processes, speak the §10.3 channel to them, and (for
//! `shoal generate --stages K` and the tests) wire K of them into a loopback ring that runs one model.

use std::io::{BufReader, BufWriter};
use std::net::SocketAddr;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use shoal_engine::{FinishReason, GenerateParams, KvType};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::proto::{DataPlaneTls, FromRunner, LoadSpec, Outcome, PROTOCOL, RunnerStatus, TaskHandle, ToRunner, Token};

/// How long a runner may take to connect back after being spawned, and to load its shard.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// A runner that has not sent a heartbeat (or anything else) for this long is considered failed.
pub const SILENT_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("runner {rank}: {reason}")]
    Runner { rank: u32, reason: String },
    #[error("cannot start a runner: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("runner channel: {0}")]
    Frame(#[from] FrameError),
}

/// One spawned runner and the writing half of its channel. Its messages arrive on the receiver given to
/// [`RunnerProcess::spawn`], tagged with its rank. The child is killed when this is dropped.
pub struct RunnerProcess {
    rank: u32,
    child: Child,
    writer: BufWriter<UnixStream>,
    _dir: TempDir,
}

/// Reports from runner processes queued for their reader (the worker, or a [`LocalPipeline`]). Each producer is the
/// reader thread of a runner's socket, so a full queue blocks it and the runner's writes stall behind it:
/// back-pressure, never a lost report (a lost chunk would cut a client's stream). A runner has at most a few hundred
/// sequences (`--max-seqs` plus [`crate::runner::MAX_WAITING`]), each with one report per step in flight, so the limit
/// only binds a runner that floods its parent.
pub const RUNNER_EVENTS: usize = 4_096;

impl RunnerProcess {
    /// Starts `<exe> runner --socket <path>` and waits for its `Hello`.
    pub fn spawn(exe: &Path, rank: u32, events: SyncSender<(u32, FromRunner)>) -> Result<Self, LocalError> {
        let dir = TempDir::new(rank)?;
        let path = dir.0.join("runner.sock");
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let mut child = Command::new(exe)
            .arg("runner")
            .arg("--socket")
            .arg(&path)
            .stdin(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait()? {
                        return Err(LocalError::Runner {
                            rank,
                            reason: format!("exited at start ({status})"),
                        });
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(LocalError::Runner {
                            rank,
                            reason: "did not connect back in time".into(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        stream.set_nonblocking(false)?;
        let mut reader = BufReader::new(stream.try_clone()?);
        match read_frame::<FromRunner>(&mut reader)? {
            Some(FromRunner::Hello { protocol, .. }) if protocol == PROTOCOL => {}
            other => {
                let _ = child.kill();
                return Err(LocalError::Runner {
                    rank,
                    reason: format!("expected Hello with protocol {PROTOCOL}, got {other:?}"),
                });
            }
        }
        std::thread::spawn(move || {
            loop {
                match read_frame::<FromRunner>(&mut reader) {
                    Ok(Some(msg)) => {
                        if events.send((rank, msg)).is_err() {
                            return;
                        }
                    }
                    Ok(None) | Err(_) => {
                        let _ = events.send((rank, FromRunner::Status(RunnerStatus::Failed("channel closed".into()))));
                        return;
                    }
                }
            }
        });
        Ok(Self {
            rank,
            child,
            writer: BufWriter::new(stream),
            _dir: dir,
        })
    }

    pub fn send(&mut self, msg: &ToRunner) -> Result<(), LocalError> {
        Ok(write_frame(&mut self.writer, msg)?)
    }

    pub fn rank(&self) -> u32 {
        self.rank
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL at once, without the `Shutdown` grace: for a runner that is hung (it may be SIGSTOPped, and would
    /// never read a `Shutdown`). The process is reaped when this is dropped.
    pub fn kill(&mut self) {
        if let Err(error) = self.child.kill() {
            tracing::debug!(%error, pid = self.child.id(), "cannot SIGKILL the runner (it has exited)");
        }
    }
}

impl Drop for RunnerProcess {
    fn drop(&mut self) {
        let _ = self.send(&ToRunner::Shutdown);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private directory for a runner's socket, removed on drop.
/// Names tried for a runner's socket directory before giving up.
const TEMP_DIR_TRIES: u32 = 64;

struct TempDir(PathBuf);

impl TempDir {
    fn new(rank: u32) -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let mut tries = 0;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("shoal-runner-{}-{n}-{rank}", std::process::id()));
            // Private and new: the socket carries the instance's token and the data plane's TLS key, so no other
            // user may reach it, nor have made the directory first. One left by a killed process of the same pid
            // is skipped.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Self(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < TEMP_DIR_TRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for LocalPipeline {
    fn drop(&mut self) {
        // Tell every rank before waiting on any, so none mistakes a neighbour's exit for a broken ring.
        for r in &mut self.runners {
            let _ = r.send(&ToRunner::Shutdown);
        }
    }
}

/// What one generation through a [`LocalPipeline`] produced, with the timings the parent observed.
#[derive(Debug, Clone)]
pub struct LocalGeneration {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Submit to first token (prefill plus the first sample).
    pub time_to_first_token: Duration,
    /// First to last token.
    pub decode_time: Duration,
}

impl LocalGeneration {
    pub fn prefill_tok_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.time_to_first_token.as_secs_f64().max(1e-9)
    }

    pub fn decode_tok_per_s(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// A token for a pipeline of this process: std's hasher keys are drawn from the OS, so the hashes of two fresh
/// hashers are 128 bits no other process can guess (enough for a loopback ring that lives as long as this process).
fn local_token() -> Token {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for half in out.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    Token(out)
}

/// K runner processes on this machine, each holding a contiguous layer range, connected in a loopback TCP ring.
pub struct LocalPipeline {
    runners: Vec<RunnerProcess>,
    events: Receiver<(u32, FromRunner)>,
    next_task: TaskHandle,
}

impl LocalPipeline {
    /// Spawns one runner per range of `bounds` (`[0, a, b, n]` gives `[0,a) [a,b) [b,n)`), loads them and waits
    /// until the ring is up.
    pub fn start(
        exe: &Path,
        model: &Path,
        bounds: &[usize],
        threads: usize,
        max_seqs: usize,
    ) -> Result<Self, LocalError> {
        Self::start_with_tls(exe, model, bounds, threads, max_seqs, None)
    }

    /// [`LocalPipeline::start`] with the ring under mutual TLS (every rank with the same identity).
    pub fn start_with_tls(
        exe: &Path,
        model: &Path,
        bounds: &[usize],
        threads: usize,
        max_seqs: usize,
        tls: Option<DataPlaneTls>,
    ) -> Result<Self, LocalError> {
        Self::start_with_kv(exe, model, bounds, threads, max_seqs, tls, KvType::default())
    }

    /// [`LocalPipeline::start_with_tls`] with every rank's KV cache of type `kv_cache`.
    pub fn start_with_kv(
        exe: &Path,
        model: &Path,
        bounds: &[usize],
        threads: usize,
        max_seqs: usize,
        tls: Option<DataPlaneTls>,
        kv_cache: KvType,
    ) -> Result<Self, LocalError> {
        let (tx, events) = mpsc::sync_channel(RUNNER_EVENTS);
        let world_size = u32::try_from(bounds.len().saturating_sub(1)).unwrap_or(u32::MAX);
        let mut runners = Vec::new();
        for rank in 0..world_size {
            runners.push(RunnerProcess::spawn(exe, rank, tx.clone())?);
        }
        let instance = format!("local-{}", std::process::id());
        let token = local_token();
        for (r, w) in runners.iter_mut().zip(bounds.windows(2)) {
            let rank = r.rank();
            r.send(&ToRunner::Load(LoadSpec {
                model_path: model.to_path_buf(),
                // A bare file given to `shoal generate` has no card, so no digest to check it against.
                sha256: None,
                instance: instance.clone(),
                layer_start: w[0],
                layer_end: w[1],
                rank,
                world_size,
                max_seqs,
                threads,
                kv_cache,
                bind: std::net::Ipv4Addr::LOCALHOST.into(),
                token,
                tls: tls.clone(),
            }))?;
        }
        let mut pipeline = Self {
            runners,
            events,
            next_task: 0,
        };
        let mut ports = vec![None; world_size as usize];
        pipeline.wait_all(LOAD_TIMEOUT, |rank, msg| match msg {
            FromRunner::Listening { port } => {
                ports[rank as usize] = Some(*port);
                Ok(false)
            }
            FromRunner::Status(RunnerStatus::Loaded) => Ok(true),
            _ => Ok(false),
        })?;
        let ports: Vec<u16> = ports.into_iter().map(|p| p.unwrap_or(0)).collect();
        for (i, r) in pipeline.runners.iter_mut().enumerate() {
            let next_port = ports[(i + 1) % ports.len()];
            r.send(&ToRunner::Connect {
                next: vec![SocketAddr::from(([127, 0, 0, 1], next_port))],
            })?;
        }
        pipeline.wait_all(START_TIMEOUT, |_, msg| {
            Ok(matches!(msg, FromRunner::Status(RunnerStatus::Ready)))
        })?;
        Ok(pipeline)
    }

    pub fn runners(&self) -> &[RunnerProcess] {
        &self.runners
    }

    /// Waits until `done` has returned true once for every runner; a failed runner is an error.
    fn wait_all(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(u32, &FromRunner) -> Result<bool, LocalError>,
    ) -> Result<(), LocalError> {
        let mut pending: Vec<bool> = vec![true; self.runners.len()];
        let deadline = Instant::now() + timeout;
        while pending.iter().any(|p| *p) {
            let (rank, msg) = self.recv_until(deadline)?;
            if let FromRunner::Status(RunnerStatus::Failed(reason)) = &msg {
                return Err(LocalError::Runner {
                    rank,
                    reason: reason.clone(),
                });
            }
            if done(rank, &msg)? {
                pending[rank as usize] = false;
            }
        }
        Ok(())
    }

    fn recv_until(&self, deadline: Instant) -> Result<(u32, FromRunner), LocalError> {
        let wait = deadline.saturating_duration_since(Instant::now()).min(SILENT_LIMIT);
        match self.events.recv_timeout(wait) {
            Ok(x) => Ok(x),
            Err(RecvTimeoutError::Timeout) => Err(LocalError::Runner {
                rank: 0,
                reason: "no message from any runner in time".into(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(LocalError::Runner {
                rank: 0,
                reason: "every runner channel closed".into(),
            }),
        }
    }

    /// Starts a task on rank 0 and returns its handle; its chunks and end arrive through [`Self::next_event`].
    pub fn submit(&mut self, prompt: &[u32], params: &GenerateParams) -> Result<TaskHandle, LocalError> {
        let task = self.next_task;
        self.next_task += 1;
        self.runners[0].send(&ToRunner::Submit {
            task,
            prompt: prompt.to_vec(),
            params: params.clone(),
            route: Vec::new(),
        })?;
        Ok(task)
    }

    /// Asks rank 0 to cancel a task; it answers with `TaskDone { outcome: Cancelled }`.
    pub fn cancel(&mut self, task: TaskHandle) -> Result<(), LocalError> {
        self.runners[0].send(&ToRunner::Cancel { task })
    }

    /// The next message from any runner (heartbeats included), tagged with its rank; an error after `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Result<(u32, FromRunner), LocalError> {
        self.recv_until(Instant::now() + timeout)
    }

    /// Runs one generation to completion, streaming text through `on_text`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<LocalGeneration, LocalError> {
        let mut out = self.generate_batch(&[(prompt.to_vec(), params.clone())], &mut |_, s| on_text(s))?;
        out.pop().ok_or_else(|| LocalError::Runner {
            rank: 0,
            reason: "no result".into(),
        })
    }

    /// Submits every request at once (rank 0 batches them, `max_seqs` at a time) and waits for all of them;
    /// `on_text(i, text)` streams request `i`. Results are in request order.
    pub fn generate_batch(
        &mut self,
        requests: &[(Vec<u32>, GenerateParams)],
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<LocalGeneration>, LocalError> {
        struct Progress {
            tokens: Vec<u32>,
            text: String,
            first: Option<Instant>,
            last: Option<Instant>,
            result: Option<(FinishReason, usize)>,
        }
        let base = self.next_task;
        self.next_task += requests.len() as u64;
        let started = Instant::now();
        for (i, (prompt, params)) in requests.iter().enumerate() {
            self.runners[0].send(&ToRunner::Submit {
                task: base + i as u64,
                prompt: prompt.clone(),
                params: params.clone(),
                route: Vec::new(),
            })?;
        }
        let mut progress: Vec<Progress> = requests
            .iter()
            .map(|_| Progress {
                tokens: Vec::new(),
                text: String::new(),
                first: None,
                last: None,
                result: None,
            })
            .collect();
        let mut remaining = requests.len();
        while remaining > 0 {
            // Heartbeats arrive every second, so silence this long means the pipeline is stuck or dead.
            let (rank, msg) = self.recv_until(Instant::now() + SILENT_LIMIT)?;
            let index = |task: TaskHandle| {
                task.checked_sub(base)
                    .map(|i| i as usize)
                    .filter(|&i| i < requests.len())
            };
            match msg {
                FromRunner::Chunk {
                    task, seq, token, text, ..
                } => {
                    let Some(i) = index(task) else { continue };
                    let p = &mut progress[i];
                    if seq != p.tokens.len() as u64 {
                        return Err(LocalError::Runner {
                            rank,
                            reason: format!("task {task}: chunk {seq} arrived, expected {}", p.tokens.len()),
                        });
                    }
                    let now = Instant::now();
                    p.first.get_or_insert(now);
                    p.last = Some(now);
                    p.tokens.push(token);
                    if !text.is_empty() {
                        on_text(i, &text);
                        p.text.push_str(&text);
                    }
                }
                FromRunner::TaskDone { task, outcome } => {
                    let Some(i) = index(task) else { continue };
                    match outcome {
                        Outcome::Complete {
                            finish, prompt_tokens, ..
                        } => progress[i].result = Some((finish, prompt_tokens)),
                        Outcome::Failed(reason) => return Err(LocalError::Runner { rank, reason }),
                        Outcome::Cancelled => {
                            return Err(LocalError::Runner {
                                rank,
                                reason: format!("task {task} was cancelled"),
                            });
                        }
                    }
                    remaining -= 1;
                }
                FromRunner::Status(RunnerStatus::Failed(reason)) => return Err(LocalError::Runner { rank, reason }),
                _ => {}
            }
        }
        Ok(progress
            .into_iter()
            .map(|p| {
                let (finish, prompt_tokens) = p.result.unwrap_or((FinishReason::Length, 0));
                let first = p.first.unwrap_or(started);
                LocalGeneration {
                    tokens: p.tokens,
                    text: p.text,
                    finish,
                    prompt_tokens,
                    time_to_first_token: first - started,
                    decode_time: p.last.unwrap_or(first) - first,
                }
            })
            .collect())
    }
}
