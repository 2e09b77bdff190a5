//! The cluster shell (SYSTEM.md §5–§8): one node loop that owns the node's [`NodeCore`] and its [`Store`], fed by
//! zenoh callbacks through one bounded channel, and carrying out what the core decides.
//!
//! Threads: the node loop is one dedicated OS thread, so ordering is by construction and the store's blocking calls
//! (fsync, checkpoints) never stall an async runtime. zenoh's callbacks only decode and `try_send`; snapshot encoding
//! and snapshot fetching run on short-lived threads of their own. Everything else (HTTP, the worker) talks to the
//! loop through [`ClusterHandle`]: State and status through a `watch`, every State change through a `broadcast`
//! (§6), requests through the same channel as the network.

mod chunks;
mod faults;
mod prompts;
mod range;
mod shell;
mod snapshot;
mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::thread::JoinHandle;

use shoal_core::node::NodeConfig;
use shoal_net::{Counters, CountersSnapshot, NetConfig};
use shoal_store::Store;
use shoal_types::command::{Command, RejectReason};
use shoal_types::ids::CommandId;
use shoal_types::model::NodeFact;
use shoal_types::{Event, IndexedEvent, NodeId, Pos, SessionId, State};
use tokio::sync::{broadcast, oneshot, watch};

pub use chunks::{ChunkMsg, ChunkSink};
pub use prompts::{FETCH_TIMEOUT, FetchError, MAX_HELD_PROMPT_BYTES, MAX_HELD_PROMPTS, PromptShelf, ShelfFull};

pub use faults::Faults;
pub use storage::StorageFault;

/// Capacity of the State-change broadcast (§6, §13).
pub const STATE_CHANGES: usize = 4_096;
/// At most this many events per `GET /events` call (§13).
pub const EVENTS_MAX: usize = 10_000;
/// Capacity of the broadcast of command rejections addressed to this node.
pub const REJECTIONS: usize = 1_024;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Net(#[from] shoal_net::NetError),
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error(
        "node id {0} is already in use by a live node; run `shoal reset-id` on one of the two (cloned data directory?)"
    )]
    DuplicateId(NodeId),
    #[error("the node loop has stopped")]
    Stopped,
    #[error("store: {0}")]
    Store(#[from] shoal_store::StoreError),
    #[error("cannot start the node loop: {0}")]
    Thread(#[from] std::io::Error),
}

impl From<shoal_net::zenoh::Error> for ClusterError {
    fn from(e: shoal_net::zenoh::Error) -> Self {
        ClusterError::Zenoh(e.to_string())
    }
}

/// How to run the node's control plane.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub net: NetConfig,
    pub node: NodeConfig,
    /// Fault injection for tests (drops and duplicates of outgoing events); off by default.
    pub faults: Faults,
    /// Where the node writes nothing but which it names in logs.
    pub data_dir: PathBuf,
}

/// What the node is doing, for `/state`, logs and tests.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeStatus {
    pub node: NodeId,
    /// `starting`, `campaigning`, `master`, `follower`.
    pub role: &'static str,
    /// The session this node serves or follows.
    pub session: Option<SessionId>,
    /// §6 step 6.
    pub ready: bool,
    pub pos: Pos,
    /// Set while the node's store cannot write (a full disk): it is then never master and refuses new work.
    pub storage: Option<StorageFault>,
}

/// The latest State with the status it was seen under.
#[derive(Clone, Debug)]
pub struct View {
    pub state: Arc<State>,
    pub status: NodeStatus,
}

/// What every consumer of State reacts to (§6): the State after an applied event or an installed snapshot.
#[derive(Clone, Debug)]
pub struct StateChange {
    pub state: Arc<State>,
    pub cause: ChangeCause,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeCause {
    Applied(i64),
    Installed(Pos),
}

/// Per-key counters of what the node did not take from the network.
#[derive(Debug, Default)]
pub struct NetCounters {
    pub election: Counters,
    pub up: Counters,
    pub down: Counters,
    pub ctl: Counters,
    pub chunk: Counters,
    pub cmd: Counters,
    pub range: Counters,
    pub snapshot: Counters,
    pub tokens: Counters,
    pub prompt: Counters,
}

impl NetCounters {
    pub fn snapshot(&self) -> Vec<(&'static str, CountersSnapshot)> {
        vec![
            ("election", self.election.snapshot()),
            ("up", self.up.snapshot()),
            ("down", self.down.snapshot()),
            ("ctl", self.ctl.snapshot()),
            ("chunk", self.chunk.snapshot()),
            ("cmd", self.cmd.snapshot()),
            ("range", self.range.snapshot()),
            ("snapshot", self.snapshot.snapshot()),
            ("tokens", self.tokens.snapshot()),
            ("prompt", self.prompt.snapshot()),
        ]
    }
}

/// The master refused a command this node sent (§5.2 step 6).
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    pub command_id: CommandId,
    pub reason: RejectReason,
}

/// Requests from the rest of the node to the loop.
pub(crate) enum Request {
    Produce(Box<Event>),
    Facts(Vec<NodeFact>),
    Command {
        command_id: CommandId,
        command: Box<Command>,
    },
    Events {
        after: Option<i64>,
        max: usize,
        reply: oneshot::Sender<Result<Vec<IndexedEvent>, String>>,
    },
    Shutdown,
}

/// A cheap, cloneable way into the node loop.
#[derive(Clone)]
pub struct ClusterHandle {
    inputs: SyncSender<shell::LoopInput>,
    view: watch::Receiver<View>,
    changes: broadcast::Sender<StateChange>,
    rejections: broadcast::Sender<Rejection>,
    counters: Arc<NetCounters>,
    beats: Arc<std::sync::atomic::AtomicU64>,
    chunks: chunks::ChunkRoute,
    prompts: prompts::PromptRoute,
}

impl ClusterHandle {
    /// Bumped by every turn of the node loop (at least every 20 ms): the watchdog's proof that the loop runs.
    pub fn loop_beats(&self) -> u64 {
        self.beats.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The newest State and status.
    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// A receiver that sees every later State change.
    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }

    pub fn counters(&self) -> &NetCounters {
        &self.counters
    }

    /// Hands an event this node produces to its outbox.
    pub fn produce(&self, event: Event) -> Result<(), ClusterError> {
        self.send(Request::Produce(Box::new(event)))
    }

    /// Sends `command` to the master of the session this node follows (in-process when it is the master). Fire and
    /// forget: the effect shows in State, a refusal on [`Self::rejections`]; a caller that sees neither resends the
    /// same `command_id` (commands are idempotent by id, §2.4).
    pub fn command(&self, command_id: CommandId, command: Command) -> Result<(), ClusterError> {
        self.send(Request::Command {
            command_id,
            command: Box::new(command),
        })
    }

    /// Every later rejection of a command this node sent. Subscribe before sending so none is missed.
    pub fn rejections(&self) -> broadcast::Receiver<Rejection> {
        self.rejections.subscribe()
    }

    /// Sends a chunk of a generation to the API node `to` (in-process when that is this node). Never blocks on the
    /// node loop; never retried.
    pub fn send_chunk(&self, to: NodeId, chunk: ChunkMsg) {
        self.chunks.send(to, chunk);
    }

    /// The contents of this node's open streams, which rank 0 fetches (issue 15). Memory only.
    pub fn prompt_shelf(&self) -> &PromptShelf {
        &self.prompts.shelf
    }

    /// Fetches the content of generation `command_id` from its API node `origin` (this node's own shelf when it is
    /// this node). Blocks up to [`FETCH_TIMEOUT`]; call it from a thread that may wait.
    pub fn fetch_prompt(
        &self,
        origin: NodeId,
        command_id: CommandId,
    ) -> Result<([u8; 16], shoal_types::GenerationParams), FetchError> {
        self.prompts.fetch(origin, command_id)
    }

    /// Installs where this node's incoming chunks go (the API's stream registry). Called from zenoh's callback
    /// thread or the sender's thread: the sink must not block.
    pub fn set_chunk_sink(&self, sink: ChunkSink) {
        *self.chunks.sink.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// Chunks that arrived while no sink was installed.
    pub fn chunks_unrouted(&self) -> u64 {
        self.chunks.unrouted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The facts this node holds true about itself; the loop asserts what State lacks.
    pub fn set_facts(&self, facts: Vec<NodeFact>) -> Result<(), ClusterError> {
        self.send(Request::Facts(facts))
    }

    /// Up to `max` (≤ [`EVENTS_MAX`]) events after `after` (default: from the start of the retained log) from this
    /// node's replica log.
    pub async fn events(
        &self,
        after: Option<i64>,
        max: usize,
    ) -> Result<Result<Vec<IndexedEvent>, String>, ClusterError> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Events {
            after,
            max: max.min(EVENTS_MAX),
            reply,
        })?;
        rx.await.map_err(|_| ClusterError::Stopped)
    }

    fn send(&self, request: Request) -> Result<(), ClusterError> {
        // Requests wait for room rather than being dropped: they come from this node, not the network.
        self.inputs
            .send(shell::LoopInput::Request(request))
            .map_err(|_| ClusterError::Stopped)
    }
}

/// A running node control plane.
pub struct Cluster {
    handle: ClusterHandle,
    thread: Option<JoinHandle<()>>,
}

impl Cluster {
    /// Opens the zenoh session, checks that no live node holds this node's id, declares the node token and starts
    /// the node loop around `store`.
    pub fn start(config: ClusterConfig, store: Store) -> Result<Cluster, ClusterError> {
        let (handle, thread) = shell::start(config, store)?;
        Ok(Cluster {
            handle,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }

    /// Stops the loop (a final checkpoint is written) and closes the session.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.handle.inputs.send(shell::LoopInput::Request(Request::Shutdown));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}
