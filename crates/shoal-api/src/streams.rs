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

use axum::http::StatusCode;
use prometheus_client::metrics::histogram::Histogram;
use shoal_cluster::{ChunkMsg, ClusterHandle};
use shoal_core::registry::{ChunkVerdict, CloseReason, Registry, StreamAction};
use shoal_types::State;
use shoal_types::chunk::Chunk;
use shoal_types::command::Command;
use shoal_types::ids::CommandId;
use shoal_types::params::GenerationParams;

use crate::error::ApiError;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::commands;

/// `TaskCancelled` and `TaskFinished` are sent again while State still shows their effect missing, this long at most.
const FOLLOW_UP_FOR: Duration = Duration::from_secs(10);

/// Events a stream's queue holds before its client must have read some (issue 15 "bounded everything"). A chunk is
/// one token, so this is minutes of output for a client that reads a little late, yet bounds what a client that stops
/// reading can make the node hold. Past it the stream ends with `client_too_slow` and its task is cancelled: the
/// producer is zenoh's callback thread (or the local worker's), which must never wait on one client.
pub const STREAM_QUEUE: usize = 4_096;

/// Test knob, not a user setting (and not in `--help`): overrides [`STREAM_QUEUE`] so a test can fill a stream's
/// queue with a few tokens.
pub const STREAM_QUEUE_ENV: &str = "SHOAL_STREAM_QUEUE";

/// The per-stream queue length: [`STREAM_QUEUE`] unless the test knob [`STREAM_QUEUE_ENV`] names a positive number.
fn stream_queue(knob: Option<&str>) -> usize {
    knob.and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(STREAM_QUEUE)
}

/// Whether an event fits a stream's queue that has `free` slots left; if not, the client is too slow. No slot is kept
/// back for the `End`: it travels beside the queue, so a full queue never hides how the stream ended.
fn fits(free: usize) -> bool {
    free > 0
}

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

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BOUNDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BOUNDS)
}

struct Inner {
    registry: Registry,
    /// When each stream opened and when its last chunk came, for the latency histograms.
    timing: HashMap<CommandId, (Instant, Option<Instant>)>,
    tokens: u64,
    outs: HashMap<CommandId, Out>,
    closes: BTreeMap<&'static str, u64>,
    finished: u64,
    chunks_unknown: u64,
}

/// A stream's way to its handler: a bounded queue of events, and beside it the `End`, which must always get through.
/// The handler reads the `End` once the queue is drained and closed, so it still comes after every queued event.
struct Out {
    events: mpsc::Sender<StreamEvent>,
    end: oneshot::Sender<End>,
}

/// The node's stream registry.
pub struct Streams {
    /// From registration (the request) to the first chunk, and between consecutive chunks of a stream (seconds).
    pub ttft: Histogram,
    pub inter_token: Histogram,
    inner: Mutex<Inner>,
    cluster: ClusterHandle,
    runtime: tokio::runtime::Handle,
    /// A new stream may have an earlier deadline than the reconcile loop sleeps towards.
    wake: Notify,
    /// Set once the node stops: no new stream opens, every open one has been closed.
    stopping: std::sync::atomic::AtomicBool,
    /// Set on the fatal path: no more commands are sent (see [`Streams::stop_all`]).
    silent: std::sync::atomic::AtomicBool,
    ttl_ms: u64,
    grace_ms: u64,
    /// New generations are refused with 429 while this many streams are open (`--max-streams`).
    max_open: std::sync::atomic::AtomicUsize,
    /// Each stream's queue length ([`STREAM_QUEUE`]).
    queue: usize,
}

/// Streams a node holds open at once unless `--max-streams` says otherwise.
pub const DEFAULT_MAX_STREAMS: usize = 4_096;

/// Counters for `/metrics`.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub open: usize,
    /// Chunks delivered to clients.
    pub tokens: u64,
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
                tokens: 0,
                outs: HashMap::new(),
                closes: BTreeMap::new(),
                finished: 0,
                chunks_unknown: 0,
            }),
            ttft: latency_histogram(),
            inter_token: latency_histogram(),
            cluster: cluster.clone(),
            runtime: tokio::runtime::Handle::current(),
            wake: Notify::new(),
            ttl_ms,
            grace_ms: shoal_core::registry::COMPLETE_GRACE_MS,
            stopping: std::sync::atomic::AtomicBool::new(false),
            silent: std::sync::atomic::AtomicBool::new(false),
            max_open: std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_STREAMS),
            queue: stream_queue(std::env::var(STREAM_QUEUE_ENV).ok().as_deref()),
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
        streams
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a generation stream and sends its command (§11.2 step 2). The command and so State carry the request
    /// without its content; the content waits on this node's prompt shelf, in memory, until the stream ends, for
    /// rank 0 to fetch (issue 15). A node holding as much content as its limits allow refuses with 503.
    pub fn open_generation(self: &Arc<Self>, params: GenerationParams) -> Result<StreamHandle, ApiError> {
        let command_id = CommandId::new_random();
        let salt = CommandId::new_random().0.into_bytes();
        let prompt = shoal_core::prompts::prompt_ref(&salt, &params).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                format!("cannot encode the request: {e}"),
            )
        })?;
        let command = Command::TextGeneration {
            params: params.without_content(),
            prompt,
        };
        self.cluster
            .prompt_shelf()
            .hold(command_id, salt, Arc::new(params), prompt.bytes as usize)
            .map_err(|full| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", full.to_string()))?;
        Ok(self.open_as(command_id, command))
    }

    /// Registers a stream for `command` and only then sends it (§11.2 step 2).
    fn open_as(self: &Arc<Self>, command_id: CommandId, command: Command) -> StreamHandle {
        let (events, rx) = mpsc::channel(self.queue);
        let (end, end_rx) = oneshot::channel();
        {
            let mut inner = self.lock();
            inner.registry.register(command_id, unix_ms());
            inner.timing.insert(command_id, (Instant::now(), None));
            inner.outs.insert(command_id, Out { events, end });
        }
        self.wake.notify_one();
        tracing::debug!(%command_id, "stream registered; sending its command");
        // Sent now and every second until State shows the task (§11.2 step 3), the stream closes, or the TTL passes.
        self.send_command(command_id, command.clone());
        let streams = Arc::downgrade(self);
        let cluster = self.cluster.clone();
        let ttl = Duration::from_millis(self.ttl_ms);
        self.runtime.spawn(async move {
            let effect = |state: &State| {
                let open = streams.upgrade().is_some_and(|s| s.is_open(&command_id));
                (!open || state.task_for_command(&command_id).is_some()).then_some(())
            };
            let _ = commands::command_and_wait_for(&cluster, command_id, command, effect, ttl).await;
        });
        StreamHandle {
            command_id,
            rx,
            end: end_rx,
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

    /// How long a request may wait for the cluster to take it (`--stream-ttl`).
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// Sets `--max-streams`.
    pub fn set_max_open(&self, limit: usize) {
        self.max_open.store(limit.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// `Some(limit)` when `limit` streams are already open, so a new one must be refused. Checked before a stream
    /// registers, so concurrent requests may pass it together: the cap is exact to within the requests in flight.
    pub fn full(&self) -> Option<usize> {
        let limit = self.max_open.load(std::sync::atomic::Ordering::Relaxed);
        (self.lock().outs.len() >= limit).then_some(limit)
    }

    /// Whether the node is stopping (new generations are refused with 503 `shutting_down`).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The node is stopping (SIGTERM, or a fatal error): refuses new streams and closes every open one with
    /// `message`, so each client reads an error and its dialect's terminator before the node exits. With `cancel`,
    /// each stream's task is cancelled too; without it no command is sent at all (the fatal path runs on the node
    /// loop's own thread, which must not wait on its own input queue), leaving the tasks to the master's sweep of a
    /// lost API node.
    /// Returns how many streams it closed.
    pub fn stop_all(&self, message: &str, cancel: bool) -> usize {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.silent.store(!cancel, std::sync::atomic::Ordering::SeqCst);
        let mut inner = self.lock();
        let open: Vec<CommandId> = inner.outs.keys().copied().collect();
        for command_id in &open {
            if cancel {
                self.cancel_task(*command_id);
            }
            let reason = CloseReason::NodeStopping {
                message: message.to_owned(),
            };
            self.end(&mut inner, *command_id, End::Closed(reason));
        }
        open.len()
    }

    pub fn is_open(&self, command_id: &CommandId) -> bool {
        self.lock().registry.contains(command_id)
    }

    pub fn stats(&self) -> StreamStats {
        let inner = self.lock();
        StreamStats {
            open: inner.registry.len(),
            tokens: inner.tokens,
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
                            self.ttft.observe((now - *opened).as_secs_f64())
                        }
                        Some(last) => self.inter_token.observe((now - *last).as_secs_f64()),
                    }
                    *last = Some(now);
                }
                if !self.push(&mut inner, msg.command_id, StreamEvent::Chunk(msg.chunk)) {
                    return;
                }
                inner.tokens += 1;
                if is_final {
                    self.end(&mut inner, msg.command_id, End::Finished);
                }
            }
            ChunkVerdict::Close(reason) => self.end(&mut inner, msg.command_id, End::Closed(reason)),
        }
    }

    /// Queues `event` for its stream's handler without ever waiting (the caller may be zenoh's callback thread). A
    /// full queue means the client stopped reading: the stream ends with `client_too_slow` (counted among the
    /// closes in `/metrics`) and its task is cancelled, as when a client disconnects. False if the event was not
    /// queued (the stream is gone or was just ended).
    fn push(&self, inner: &mut Inner, command_id: CommandId, event: StreamEvent) -> bool {
        let Some(out) = inner.outs.get(&command_id) else {
            return false;
        };
        if !fits(out.events.capacity()) {
            tracing::warn!(%command_id, queue = self.queue, "client stopped reading; ending its stream");
            self.cancel_task(command_id);
            self.end(inner, command_id, End::Closed(CloseReason::ClientTooSlow));
            return false;
        }
        // Cannot be full (checked under the lock every sender holds); closed means the handler is being dropped,
        // which ends the stream as `client_gone`.
        out.events.try_send(event).is_ok()
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
                    self.push(&mut inner, *command_id, StreamEvent::Observed);
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
        // The request's content goes with its stream: rank 0 has it by now, or the task fails for want of it.
        self.cluster.prompt_shelf().release(&command_id);
        inner.timing.remove(&command_id);
        let finished = match &end {
            End::Finished => {
                inner.finished += 1;
                true
            }
            End::Closed(reason) => {
                *inner
                    .closes
                    .entry(crate::error::ApiError::from_close(reason).code)
                    .or_default() += 1;
                reason.finished()
            }
        };
        if let Some(out) = inner.outs.remove(&command_id) {
            // Dropping `out.events` closes the queue: the handler reads what it holds, then this.
            let _ = out.end.send(end);
        }
        if finished {
            self.follow_up(Command::TaskFinished { target: command_id }, move |state| {
                state.task_for_command(&command_id).is_some()
            });
        }
    }

    /// Sends `command` now, then every second while `pending(State)` holds, for at most [`FOLLOW_UP_FOR`].
    fn follow_up(&self, command: Command, pending: impl Fn(&State) -> bool + Send + Sync + 'static) {
        if self.silent.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let command_id = CommandId::new_random();
        self.send_command(command_id, command.clone());
        let cluster = self.cluster.clone();
        self.runtime.spawn(async move {
            let effect = |state: &State| (!pending(state)).then_some(());
            let _ = commands::command_and_wait_for(&cluster, command_id, command, effect, FOLLOW_UP_FOR).await;
        });
    }
}

/// A registered stream as its handler holds it. Dropping it before its `End` is the client going away.
pub struct StreamHandle {
    pub command_id: CommandId,
    rx: mpsc::Receiver<StreamEvent>,
    end: oneshot::Receiver<End>,
    streams: Arc<Streams>,
    ended: bool,
}

impl StreamHandle {
    /// The next event; after `End` (or if the registry is gone) `None`.
    pub async fn next(&mut self) -> Option<StreamEvent> {
        if self.ended {
            return None;
        }
        if let Some(event) = self.rx.recv().await {
            return Some(event);
        }
        // The queue closed: the stream ended, and its `End` was sent before the sender went (or the registry is gone).
        self.ended = true;
        (&mut self.end).await.ok().map(StreamEvent::End)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_length_is_the_constant_unless_the_test_knob_names_a_positive_number() {
        assert_eq!(stream_queue(None), STREAM_QUEUE);
        assert_eq!(stream_queue(Some("8")), 8);
        assert_eq!(stream_queue(Some(" 16 ")), 16);
        // A zero-length queue cannot exist (tokio would panic), and junk is no setting.
        assert_eq!(stream_queue(Some("0")), STREAM_QUEUE);
        assert_eq!(stream_queue(Some("-3")), STREAM_QUEUE);
        assert_eq!(stream_queue(Some("many")), STREAM_QUEUE);
    }

    #[test]
    fn an_event_fits_while_a_slot_is_free_and_the_end_needs_none() {
        assert!(fits(STREAM_QUEUE));
        assert!(fits(1));
        assert!(!fits(0));
    }

    #[tokio::test]
    async fn a_full_queue_still_delivers_its_events_then_the_end() {
        // The shape `open_as` builds: the `End` beside a full queue comes after every queued event.
        let (events, mut rx) = mpsc::channel(2);
        let (end, mut end_rx) = oneshot::channel::<End>();
        events.try_send(StreamEvent::Observed).unwrap();
        events.try_send(StreamEvent::Observed).unwrap();
        assert!(!fits(events.capacity()));
        end.send(End::Closed(CloseReason::ClientTooSlow)).unwrap();
        drop(events);
        assert!(matches!(rx.recv().await, Some(StreamEvent::Observed)));
        assert!(matches!(rx.recv().await, Some(StreamEvent::Observed)));
        assert!(rx.recv().await.is_none());
        assert_eq!((&mut end_rx).await.ok(), Some(End::Closed(CloseReason::ClientTooSlow)));
    }
}
