//! The API node's stream registry (SYSTEM.md §11.3): the pure decisions about every open client stream.
//!
//! Pure: the State, the clock (`now_ms`) and the registry's entries are arguments; the actions come back as data. The
//! shell (HTTP handlers, channels, the `TaskFinished` command) carries them out and owns the per-stream output.
//!
//! **Reconciliation is a function of a State, not of an event.** [`reconcile`] never asks which event just happened;
//! it only compares each open stream with what the State in hand says about its task (present? which status? is its
//! instance still there?). So the outcome is the same however that State was reached: one applied event, a drained
//! batch, an installed snapshot after divergence or pruning, or lag recovery that skipped events the node will never
//! see (the API may never apply the `InstanceDeleted` or `TaskDeleted` that changed things). Matching on events would
//! miss exactly those cases. The shell runs it on *every* State it passes through (after each applied event, not once
//! per batch; see SYSTEM.md §11.3 case 15: a `TaskCreated` and its `TaskDeleted` in one batch must be observed, then
//! closed, never left to the TTL), after every snapshot install, and when a deadline of [`next_deadline`] fires; never
//! on a polling timer.

use std::collections::BTreeMap;

use shoal_types::chunk::Chunk;
use shoal_types::command::RejectReason;
use shoal_types::ids::{CommandId, TaskId};
use shoal_types::model::{ErrorKind, TaskStatus};
use shoal_types::state::State;

/// How long a stream whose command was never observed in State waits before it closes `NotAccepted` (`--stream-ttl`).
pub const STREAM_TTL_MS: u64 = 10_000;
/// How long a stream whose task is `Complete` in State waits for the final chunk before it closes `Incomplete`.
pub const COMPLETE_GRACE_MS: u64 = 5_000;

/// Why a stream ends other than by its final chunk (SYSTEM.md §11.3). The API crate maps each to an HTTP status and
/// error code (the response when no byte was sent yet, the in-band error otherwise); the core only says why.
#[derive(Clone, Debug, PartialEq)]
pub enum CloseReason {
    /// The master refused the command (`CommandRejected`, session-filtered by the shell).
    Rejected(RejectReason),
    /// The command was never observed in State within the TTL.
    NotAccepted,
    /// The task is unfinished but its instance is not in State.
    InstanceGone,
    /// The task was observed, then left State (deleted, lost in a partition heal, absent from an installed snapshot).
    TaskGone,
    /// The task failed in State, or an `Error` chunk arrived; carries the error's message.
    Failed { message: String },
    /// As `Failed`, for an error of kind `Invalid`: the model cannot take the request as it is (a prompt past the
    /// context, messages its template refuses), which is the client's to fix.
    Refused { message: String },
    /// The task was cancelled (in State, or by `POST /v1/cancel/{id}`).
    Cancelled,
    /// The task is `Complete` in State but its final chunk did not arrive within the grace period.
    Incomplete,
    /// A chunk arrived with a `seq` other than the next expected one.
    StreamGap,
    /// The client disconnected; nothing is written.
    ClientGone,
    /// The client stopped reading and its stream's queue filled up; the error is written in band (issue 15).
    ClientTooSlow,
    /// The API node is stopping (SIGTERM, or a fatal error such as a full disk); carries why.
    NodeStopping { message: String },
}

impl CloseReason {
    /// Human text for the error object; `Failed` carries the task's (or the error chunk's) message.
    pub fn message(&self) -> String {
        match self {
            CloseReason::Rejected(r) => r.to_string(),
            CloseReason::NotAccepted => "the cluster did not accept the request in time".to_owned(),
            CloseReason::InstanceGone => "the instance serving this request is gone".to_owned(),
            CloseReason::TaskGone => "the generation task is no longer in the cluster state".to_owned(),
            CloseReason::Failed { message } | CloseReason::Refused { message } => message.clone(),
            CloseReason::Cancelled => "the request was cancelled".to_owned(),
            CloseReason::Incomplete => "the generation completed but its final chunk never arrived".to_owned(),
            CloseReason::StreamGap => "the stream lost a chunk".to_owned(),
            CloseReason::ClientGone => "the client disconnected".to_owned(),
            CloseReason::ClientTooSlow => {
                "the client stopped reading the stream; the node does not queue more".to_owned()
            }
            CloseReason::NodeStopping { message } => message.clone(),
        }
    }

    /// `EndOnce`'s `finished`: whether the close sends `TaskFinished`. False only for a rejection (no task exists).
    pub fn finished(&self) -> bool {
        !matches!(self, CloseReason::Rejected(_))
    }

    /// Whether the close writes anything to the client (an error response or an in-band error and terminator).
    /// False only for `ClientGone`.
    pub fn writes_response(&self) -> bool {
        !matches!(self, CloseReason::ClientGone)
    }
}

/// The pure part of one open stream (SYSTEM.md §11.3 `Stream`, less the adapter and the output channel).
#[derive(Clone, Debug, PartialEq)]
pub struct StreamEntry {
    pub command_id: CommandId,
    pub registered_ms: u64,
    /// The task first seen for the command in State.
    pub observed: Option<TaskId>,
    /// When the task was first seen `Complete` (arms the grace deadline).
    pub complete_seen_ms: Option<u64>,
    /// The `seq` the next chunk must carry.
    pub next_seq: u32,
    /// Whether the status line and headers went out; after that an error is written in band.
    pub bytes_sent: bool,
}

impl StreamEntry {
    /// A stream registered at `now_ms`, before its command is sent (§11.2 step 2).
    pub fn new(command_id: CommandId, now_ms: u64) -> Self {
        StreamEntry {
            command_id,
            registered_ms: now_ms,
            observed: None,
            complete_seen_ms: None,
            next_seq: 0,
            bytes_sent: false,
        }
    }
}

/// What [`reconcile`] asks the shell to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamAction {
    /// The command's task is in State: stop re-sending the command and remember the task.
    MarkObserved { command_id: CommandId, task: TaskId },
    /// The task is `Complete` in State; the final chunk may still be in flight: arm the grace deadline.
    MarkComplete { command_id: CommandId, at_ms: u64 },
    /// End the stream (SYSTEM.md §11.3 `Close`).
    Close { command_id: CommandId, reason: CloseReason },
}

impl StreamAction {
    pub fn command_id(&self) -> CommandId {
        match self {
            StreamAction::MarkObserved { command_id, .. }
            | StreamAction::MarkComplete { command_id, .. }
            | StreamAction::Close { command_id, .. } => *command_id,
        }
    }
}

/// SYSTEM.md §11.3 `reconcile`, over every open stream, against one State. Per stream: at most one `MarkObserved`
/// (when the task is first seen) followed by at most one of `MarkComplete` or `Close`. Checks, in order: task
/// `Failed`, `Cancelled`, `Complete` (before the instance: the final chunk may be in flight), then the instance.
pub fn reconcile<'a>(
    streams: impl IntoIterator<Item = &'a StreamEntry>,
    state: &State,
    now_ms: u64,
    ttl_ms: u64,
    grace_ms: u64,
) -> Vec<StreamAction> {
    let mut actions = Vec::new();
    for st in streams {
        let command_id = st.command_id;
        let close = |reason| StreamAction::Close { command_id, reason };
        let task = state
            .task_by_command
            .get(&command_id)
            .and_then(|id| state.tasks.get(id));
        match task {
            Some(t) => {
                if st.observed.is_none() {
                    actions.push(StreamAction::MarkObserved { command_id, task: t.id });
                }
                match t.status {
                    TaskStatus::Failed => {
                        let reason = match &t.error {
                            Some(e) => failure(e.kind, e.message.clone()),
                            None => CloseReason::Failed {
                                message: "generation failed".to_owned(),
                            },
                        };
                        actions.push(close(reason));
                    }
                    TaskStatus::Cancelled => actions.push(close(CloseReason::Cancelled)),
                    TaskStatus::Complete => match st.complete_seen_ms {
                        None => actions.push(StreamAction::MarkComplete {
                            command_id,
                            at_ms: now_ms,
                        }),
                        Some(seen) if now_ms.saturating_sub(seen) >= grace_ms => {
                            actions.push(close(CloseReason::Incomplete));
                        }
                        Some(_) => {}
                    },
                    TaskStatus::Pending | TaskStatus::Running => {
                        if !state.instances.contains_key(&t.instance) {
                            actions.push(close(CloseReason::InstanceGone));
                        }
                    }
                }
            }
            None => {
                if st.observed.is_some() {
                    actions.push(close(CloseReason::TaskGone));
                } else if now_ms.saturating_sub(st.registered_ms) >= ttl_ms {
                    actions.push(close(CloseReason::NotAccepted));
                }
                // Otherwise keep: `TaskCreated` may still be in flight, never close early.
            }
        }
    }
    actions
}

/// A task's error as a close: `Invalid` is the request's fault, anything else the cluster's.
fn failure(kind: ErrorKind, message: String) -> CloseReason {
    match kind {
        ErrorKind::Invalid => CloseReason::Refused { message },
        _ => CloseReason::Failed { message },
    }
}

/// What to do with a chunk for a registered stream.
#[derive(Clone, Debug, PartialEq)]
pub enum ChunkVerdict {
    /// Write it to the client and count it (`next_seq += 1`); a final chunk then finishes the stream.
    Deliver {
        is_final: bool,
    },
    Close(CloseReason),
}

/// SYSTEM.md §11.3 `on_chunk` for a registered stream (an unregistered command id is the shell's business: drop it
/// and count it). An `Error` chunk closes `Failed` at any `seq`, including [`shoal_types::wire::SEQ_OOB`]; any other
/// chunk must carry exactly `next_seq`, else the stream closes `StreamGap` (never silently garbled text).
pub fn on_chunk(entry: &StreamEntry, seq: u32, chunk: &Chunk) -> ChunkVerdict {
    if let Chunk::Error { kind, message } = chunk {
        return ChunkVerdict::Close(failure(*kind, message.clone()));
    }
    if seq != entry.next_seq {
        return ChunkVerdict::Close(CloseReason::StreamGap);
    }
    ChunkVerdict::Deliver {
        is_final: chunk.is_final(),
    }
}

/// The earliest time [`reconcile`] must run again for a deadline: `registered_ms + ttl` of a never-observed stream,
/// `complete_seen_ms + grace` of a stream whose task was seen `Complete`. `None` when no stream has a deadline (every
/// other change reaches the registry as a new State).
pub fn next_deadline<'a>(
    streams: impl IntoIterator<Item = &'a StreamEntry>,
    ttl_ms: u64,
    grace_ms: u64,
) -> Option<u64> {
    streams
        .into_iter()
        .flat_map(|st| {
            let ttl = st.observed.is_none().then(|| st.registered_ms.saturating_add(ttl_ms));
            let grace = st.complete_seen_ms.map(|seen| seen.saturating_add(grace_ms));
            ttl.into_iter().chain(grace)
        })
        .min()
}

/// The open streams by command id: a small pure container the shell can keep next to its output channels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Registry {
    streams: BTreeMap<CommandId, StreamEntry>,
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Registers a stream at `now_ms` (before its command is sent). False, and nothing changes, when `command_id`
    /// is already registered.
    pub fn register(&mut self, command_id: CommandId, now_ms: u64) -> bool {
        if self.streams.contains_key(&command_id) {
            return false;
        }
        self.streams.insert(command_id, StreamEntry::new(command_id, now_ms));
        true
    }

    /// Applies one action of [`reconcile`]. `MarkObserved` sets `observed`; `MarkComplete` sets `complete_seen_ms`
    /// unless it is already set (the grace deadline does not move); both return whether the stream is open. `Close`
    /// removes the stream and returns whether it was open: the shell writes the close and sends `TaskFinished` only
    /// when this is true, so a stream ends exactly once.
    pub fn apply(&mut self, action: &StreamAction) -> bool {
        match action {
            StreamAction::MarkObserved { command_id, task } => match self.streams.get_mut(command_id) {
                Some(st) => {
                    st.observed = Some(*task);
                    true
                }
                None => false,
            },
            StreamAction::MarkComplete { command_id, at_ms } => match self.streams.get_mut(command_id) {
                Some(st) => {
                    st.complete_seen_ms.get_or_insert(*at_ms);
                    true
                }
                None => false,
            },
            StreamAction::Close { command_id, .. } => self.streams.remove(command_id).is_some(),
        }
    }

    /// Counts a delivered chunk (`next_seq += 1`). False when the stream is not open.
    pub fn delivered(&mut self, command_id: &CommandId) -> bool {
        match self.streams.get_mut(command_id) {
            Some(st) => {
                st.next_seq = st.next_seq.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Records that the status line and headers went out. False when the stream is not open.
    pub fn mark_bytes_sent(&mut self, command_id: &CommandId) -> bool {
        match self.streams.get_mut(command_id) {
            Some(st) => {
                st.bytes_sent = true;
                true
            }
            None => false,
        }
    }

    /// Removes a stream (after `Finish`, or any close the shell decided itself), returning it if it was open.
    pub fn remove(&mut self, command_id: &CommandId) -> Option<StreamEntry> {
        self.streams.remove(command_id)
    }

    pub fn get(&self, command_id: &CommandId) -> Option<&StreamEntry> {
        self.streams.get(command_id)
    }

    pub fn contains(&self, command_id: &CommandId) -> bool {
        self.streams.contains_key(command_id)
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The open streams in command-id order.
    pub fn iter(&self) -> impl Iterator<Item = &StreamEntry> {
        self.streams.values()
    }

    /// [`reconcile`] over every open stream.
    pub fn reconcile(&self, state: &State, now_ms: u64, ttl_ms: u64, grace_ms: u64) -> Vec<StreamAction> {
        reconcile(self.iter(), state, now_ms, ttl_ms, grace_ms)
    }

    /// [`on_chunk`] for `command_id`; `None` when no such stream is open (drop the chunk and count it).
    pub fn on_chunk(&self, command_id: &CommandId, seq: u32, chunk: &Chunk) -> Option<ChunkVerdict> {
        self.streams.get(command_id).map(|st| on_chunk(st, seq, chunk))
    }

    /// [`next_deadline`] over every open stream.
    pub fn next_deadline(&self, ttl_ms: u64, grace_ms: u64) -> Option<u64> {
        next_deadline(self.iter(), ttl_ms, grace_ms)
    }
}

impl<'a> IntoIterator for &'a Registry {
    type Item = &'a StreamEntry;
    type IntoIter = std::collections::btree_map::Values<'a, CommandId, StreamEntry>;

    fn into_iter(self) -> Self::IntoIter {
        self.streams.values()
    }
}
