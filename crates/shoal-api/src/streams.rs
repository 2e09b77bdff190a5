//! The stream registry's shell (SYSTEM.md §11.2–§11.3): the pure [`shoal_core::registry`] decides, this carries out.
//!
//! A request registers its stream *before* its command is sent, so a chunk that overtakes `TaskCreated` is still
//! delivered. Reconciliation runs after every State change the node loop broadcasts (an applied event or an installed
//! snapshot; on broadcast lag, against the newest State) and when a stream's deadline fires, never on a polling
//! timer. Every way a stream ends goes through [`Streams::end`], so the client always hears how it ended and
//! `TaskFinished` is sent at most once per stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_cluster::{ChunkMsg, ClusterHandle};
use shoal_core::registry::{ChunkVerdict, CloseReason, Registry, StreamAction};
use shoal_types::State;
use shoal_types::chunk::Chunk;
use shoal_types::command::Command;
use shoal_types::ids::CommandId;
use tokio::sync::{Notify, mpsc};

/// A stream's command is sent again this often until State shows its task (§11.2 step 3).
const RESEND_EVERY: Duration = Duration::from_secs(1);
/// `TaskCancelled` and `TaskFinished` are sent again while State still shows their effect missing, this long at most.
const FOLLOW_UP_FOR: Duration = Duration::from_secs(10);

/// What a request's handler receives.
#[derive(Debug)]
pub enum StreamEvent {
    /// State shows the task (the handler may send its headers now).
    Observed,
    Chunk(Chunk),
    /// The last event of every stream.
    End(End),
}

#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The final chunk was delivered.
    Finished,
    Closed(CloseReason),
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A Prometheus histogram of durations (seconds), with fixed buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds in seconds; the `+Inf` bucket is implied.
    pub bounds: &'static [f64],
    /// Per bucket (not cumulative), plus one for `+Inf`.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl Histogram {
    fn latency() -> Histogram {
        Histogram {
            bounds: LATENCY_BOUNDS,
            counts: vec![0; LATENCY_BOUNDS.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.iter().position(|b| s <= *b).unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += s;
        self.count += 1;
    }

    /// Prometheus text lines for `name`.
    pub fn render(&self, name: &str, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

struct Inner {
    registry: Registry,
    /// When each stream opened and when its last chunk came, for the latency histograms.
    timing: HashMap<CommandId, (Instant, Option<Instant>)>,
    ttft: Histogram,
    inter_token: Histogram,
    tokens: u64,
    outs: HashMap<CommandId, mpsc::UnboundedSender<StreamEvent>>,
    /// The command of each stream not yet observed, for resending.
    unobserved: HashMap<CommandId, Command>,
    closes: BTreeMap<&'static str, u64>,
    finished: u64,
    chunks_unknown: u64,
}

/// The node's stream registry.
pub struct Streams {
    inner: Mutex<Inner>,
    cluster: ClusterHandle,
    runtime: tokio::runtime::Handle,
    /// A new stream may have an earlier deadline than the reconcile loop sleeps towards.
    wake: Notify,
    ttl_ms: u64,
    grace_ms: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub open: usize,
    /// Chunks delivered to clients.
    pub tokens: u64,
    /// From registration (the request) to the first chunk.
    pub ttft: Histogram,
    /// Between consecutive chunks of a stream.
    pub inter_token: Histogram,
    pub finished: u64,
    pub closes: BTreeMap<&'static str, u64>,
    pub chunks_unknown: u64,
}

impl Streams {
    /// Installs the chunk sink and starts the reconcile, rejection and resend loops on the current tokio runtime.
    pub fn start(cluster: ClusterHandle, ttl_ms: u64) -> Arc<Streams> {
        let streams = Arc::new(Streams {
            inner: Mutex::new(Inner {
                registry: Registry::new(),
                timing: HashMap::new(),
                ttft: Histogram::latency(),
                inter_token: Histogram::latency(),
                tokens: 0,
                outs: HashMap::new(),
                unobserved: HashMap::new(),
                closes: BTreeMap::new(),
                finished: 0,
                chunks_unknown: 0,
            }),
            cluster: cluster.clone(),
            runtime: tokio::runtime::Handle::current(),
            wake: Notify::new(),
            ttl_ms,
            grace_ms: shoal_core::registry::COMPLETE_GRACE_MS,
        });
        let sink = Arc::downgrade(&streams);
        cluster.set_chunk_sink(Arc::new(move |msg: ChunkMsg| {
            if let Some(streams) = sink.upgrade() {
                streams.on_chunk(msg);
            }
        }));
        // The loops live as long as the node (so does the registry).
        tokio::spawn(reconcile_loop(streams.clone(), cluster.clone()));
        tokio::spawn(rejection_loop(streams.clone(), cluster.clone()));
        tokio::spawn(resend_loop(streams.clone()));
        streams
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a stream for `command` and only then sends it (§11.2 step 2).
    pub fn open(self: &Arc<Self>, command: Command) -> StreamHandle {
        let command_id = CommandId::new_random();
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut inner = self.lock();
            inner.registry.register(command_id, unix_ms());
            inner.timing.insert(command_id, (Instant::now(), None));
            inner.outs.insert(command_id, tx);
            inner.unobserved.insert(command_id, command.clone());
        }
        self.wake.notify_one();
        tracing::debug!(%command_id, "stream registered; sending its command");
        self.send_command(command_id, command);
        StreamHandle {
            command_id,
            rx,
            streams: self.clone(),
            ended: false,
        }
    }

    fn send_command(&self, command_id: CommandId, command: Command) {
        if let Err(error) = self.cluster.command(command_id, command) {
            tracing::warn!(%error, "cannot hand a command to the node loop");
        }
    }

    pub fn mark_bytes_sent(&self, command_id: &CommandId) {
        self.lock().registry.mark_bytes_sent(command_id);
    }

    pub fn is_open(&self, command_id: &CommandId) -> bool {
        self.lock().registry.contains(command_id)
    }

    pub fn stats(&self) -> StreamStats {
        let inner = self.lock();
        StreamStats {
            open: inner.registry.len(),
            tokens: inner.tokens,
            ttft: inner.ttft.clone(),
            inter_token: inner.inter_token.clone(),
            finished: inner.finished,
            closes: inner.closes.clone(),
            chunks_unknown: inner.chunks_unknown,
        }
    }

    /// `on_chunk` of §11.3; runs on zenoh's callback thread or the local worker's.
    fn on_chunk(&self, msg: ChunkMsg) {
        let mut inner = self.lock();
        let Some(verdict) = inner.registry.on_chunk(&msg.command_id, msg.seq, &msg.chunk) else {
            inner.chunks_unknown += 1;
            return;
        };
        match verdict {
            ChunkVerdict::Deliver { is_final } => {
                inner.registry.delivered(&msg.command_id);
                let now = Instant::now();
                let state = &mut *inner;
                if let Some((opened, last)) = state.timing.get_mut(&msg.command_id) {
                    match last {
                        None => {
                            tracing::debug!(command_id = %msg.command_id, "first chunk delivered");
                            state.ttft.observe(now - *opened)
                        }
                        Some(last) => state.inter_token.observe(now - *last),
                    }
                    *last = Some(now);
                }
                state.tokens += 1;
                if let Some(out) = inner.outs.get(&msg.command_id) {
                    let _ = out.send(StreamEvent::Chunk(msg.chunk));
                }
                if is_final {
                    self.end(&mut inner, msg.command_id, End::Finished);
                }
            }
            ChunkVerdict::Close(reason) => self.end(&mut inner, msg.command_id, End::Closed(reason)),
        }
    }

    /// Runs §11.3's `reconcile` against `state` and carries out what it says.
    fn reconcile(&self, state: &State) {
        let mut inner = self.lock();
        if inner.registry.is_empty() {
            return;
        }
        let actions = inner.registry.reconcile(state, unix_ms(), self.ttl_ms, self.grace_ms);
        for action in actions {
            match &action {
                StreamAction::MarkObserved { command_id, .. } => {
                    tracing::debug!(%command_id, "stream observed in State");
                    inner.registry.apply(&action);
                    inner.unobserved.remove(command_id);
                    if let Some(out) = inner.outs.get(command_id) {
                        let _ = out.send(StreamEvent::Observed);
                    }
                }
                StreamAction::MarkComplete { .. } => {
                    inner.registry.apply(&action);
                }
                StreamAction::Close { command_id, reason } => {
                    self.end(&mut inner, *command_id, End::Closed(reason.clone()));
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        self.lock().registry.next_deadline(self.ttl_ms, self.grace_ms)
    }

    /// `on_cancel_request`: the client asked (`POST /v1/cancel/{id}`). False if no stream of that id is open here.
    pub fn cancel(&self, command_id: CommandId) -> bool {
        let mut inner = self.lock();
        if !inner.registry.contains(&command_id) {
            return false;
        }
        self.cancel_task(command_id);
        self.end(&mut inner, command_id, End::Closed(CloseReason::Cancelled));
        true
    }

    /// `on_client_gone`: the handler's future or body was dropped before the stream ended.
    fn client_gone(&self, command_id: CommandId) {
        let mut inner = self.lock();
        if !inner.registry.contains(&command_id) {
            return;
        }
        self.cancel_task(command_id);
        self.end(&mut inner, command_id, End::Closed(CloseReason::ClientGone));
    }

    /// Sends `TaskCancelled`, again while State still shows the task running (a command lost to an election).
    pub fn cancel_task(&self, target: CommandId) {
        self.follow_up(Command::TaskCancelled { target }, move |state| {
            state.task_for_command(&target).is_some_and(|t| !t.status.is_terminal())
        });
    }

    /// `EndOnce` of §11.3: removes the stream, tells its handler how it ended, and sends `TaskFinished` once.
    fn end(&self, inner: &mut Inner, command_id: CommandId, end: End) {
        if inner.registry.remove(&command_id).is_none() {
            return;
        }
        inner.unobserved.remove(&command_id);
        inner.timing.remove(&command_id);
        let finished = match &end {
            End::Finished => {
                inner.finished += 1;
                true
            }
            End::Closed(reason) => {
                *inner.closes.entry(reason.code()).or_default() += 1;
                reason.finished()
            }
        };
        if let Some(out) = inner.outs.remove(&command_id) {
            let _ = out.send(StreamEvent::End(end));
        }
        if finished {
            self.follow_up(Command::TaskFinished { target: command_id }, move |state| {
                state.task_for_command(&command_id).is_some()
            });
        }
    }

    /// Sends `command` now, then every second while `pending(State)` holds, for at most [`FOLLOW_UP_FOR`]. Commands
    /// are idempotent by id, so a repeat is harmless.
    fn follow_up(&self, command: Command, pending: impl Fn(&State) -> bool + Send + 'static) {
        let command_id = CommandId::new_random();
        self.send_command(command_id, command.clone());
        let cluster = self.cluster.clone();
        self.runtime.spawn(async move {
            let deadline = tokio::time::Instant::now() + FOLLOW_UP_FOR;
            loop {
                tokio::time::sleep(RESEND_EVERY).await;
                if tokio::time::Instant::now() >= deadline || !pending(&cluster.view().state) {
                    return;
                }
                let _ = cluster.command(command_id, command.clone());
            }
        });
    }
}

/// A registered stream as its handler holds it. Dropping it before its `End` is the client going away.
pub struct StreamHandle {
    pub command_id: CommandId,
    rx: mpsc::UnboundedReceiver<StreamEvent>,
    streams: Arc<Streams>,
    ended: bool,
}

impl StreamHandle {
    /// The next event; after `End` (or if the registry is gone) `None`.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        let event = self.rx.recv().await;
        match &event {
            Some(StreamEvent::End(_)) | None => self.ended = true,
            _ => {}
        }
        event
    }

    pub fn mark_bytes_sent(&self) {
        self.streams.mark_bytes_sent(&self.command_id);
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if !self.ended {
            self.streams.client_gone(self.command_id);
        }
    }
}

async fn reconcile_loop(streams: Arc<Streams>, cluster: ClusterHandle) {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = cluster.subscribe();
    loop {
        let sleep = streams
            .next_deadline()
            .map(|at| Duration::from_millis(at.saturating_sub(unix_ms())));
        tokio::select! {
            change = changes.recv() => match change {
                Ok(change) => streams.reconcile(&change.state),
                // Lagged: the newest State has the same outcomes (§11.3 case 16).
                Err(RecvError::Lagged(_)) => streams.reconcile(&cluster.view().state),
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(sleep.unwrap_or(Duration::from_secs(3600))), if sleep.is_some() => {
                streams.reconcile(&cluster.view().state);
            }
            // A stream opened: its deadline may be the earliest now (a permit is kept if nobody waits).
            _ = streams.wake.notified() => {}
        }
    }
}

async fn rejection_loop(streams: Arc<Streams>, cluster: ClusterHandle) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rejections = cluster.rejections();
    loop {
        match rejections.recv().await {
            Ok(rejection) => {
                let mut inner = streams.lock();
                if inner.registry.contains(&rejection.command_id) {
                    streams.end(
                        &mut inner,
                        rejection.command_id,
                        End::Closed(CloseReason::Rejected(rejection.reason)),
                    );
                }
            }
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

async fn resend_loop(streams: Arc<Streams>) {
    loop {
        tokio::time::sleep(RESEND_EVERY).await;
        let now = unix_ms();
        let due: Vec<(CommandId, Command)> = {
            let inner = streams.lock();
            inner
                .unobserved
                .iter()
                .filter(|(id, _)| {
                    inner
                        .registry
                        .get(id)
                        .is_some_and(|e| now.saturating_sub(e.registered_ms) >= RESEND_EVERY.as_millis() as u64)
                })
                .map(|(id, c)| (*id, c.clone()))
                .collect()
        };
        for (command_id, command) in due {
            streams.send_command(command_id, command);
        }
    }
}
