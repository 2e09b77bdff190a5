//! The node loop: zenoh in, [`NodeCore`] in the middle, store and zenoh out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_core::election::Role;
use shoal_core::node::{NodeCore, NodeInput, NodeOutput, Outgoing, RoleChange, Tokens};
use shoal_net::keys::{self, Token};
use shoal_net::zenoh::liveliness::LivelinessToken;
use shoal_net::zenoh::pubsub::Subscriber;
use shoal_net::zenoh::qos::{CongestionControl, Priority};
use shoal_net::zenoh::query::{ConsolidationMode, Query, Queryable};
use shoal_net::zenoh::sample::{Locality, Sample, SampleKind};
use shoal_net::zenoh::{Session, Wait};
use shoal_net::{Counters, SUBSCRIBER_CHANNEL, decode_counted};
use shoal_store::{Commit, Store};
use shoal_types::codec;
use shoal_types::command::{Command, CommandEnvelope};
use shoal_types::ids::CommandId;
use shoal_types::wire::{DownMsg, ElectionMsg, RangeReply, RangeRequest, Transient, TransientEnvelope, UpMsg};
use shoal_types::{IndexedEvent, SessionId, State};
use tokio::sync::{broadcast, watch};

use crate::faults::Faults;
use crate::snapshot::SnapshotServer;
use crate::storage::Storage;
use crate::{
    ChangeCause, ClusterConfig, ClusterError, ClusterHandle, NetCounters, NodeStatus, Rejection, Request, StateChange,
    View,
};

/// The loop ticks the core at least this often.
const TICK: Duration = Duration::from_millis(20);
/// Followers commit their replica log, fsync'd, in batches of ≤ 1,000 events or 50 ms. §5.3 says without fsync, but
/// when the whole cluster stops at once (a power cut) the first nodes back elect a master from what their logs hold:
/// with lazy commits that was the last checkpoint, up to a minute old, and the old master's newer log was then
/// replaced by a snapshot of the older State (deployments placed in that minute gone for good).
const FOLLOWER_COMMIT_EVENTS: usize = 1_000;
const FOLLOWER_COMMIT_AFTER: Duration = Duration::from_millis(50);
/// Inputs handled before the loop commits and sends (the master's group commit, §5.2 step 5).
const BATCH_INPUTS: usize = 1_000;
/// How long a start-up waits for an answer to the duplicate-id query (§2.2).
const DUPLICATE_CHECK: Duration = Duration::from_millis(500);
/// How long the duplicate-id check waits for a first peer.
const PEER_WAIT: Duration = Duration::from_secs(1);
const RANGE_QUERY_TIMEOUT: Duration = Duration::from_millis(shoal_core::follower::RANGE_QUERY_TIMEOUT_MS);
const CHECKPOINT_CHECK_EVERY: Duration = Duration::from_secs(1);

pub(crate) enum LoopInput {
    /// Boxed: an input with an event is large, and the channel holds thousands.
    Node(Box<NodeInput>),
    /// A range query on `s/<session>/range` addressed to this node as master.
    RangeQuery(SessionId, Query),
    /// A snapshot query on `s/<session>/snapshot`.
    SnapshotQuery(SessionId, Query),
    Request(Request),
}

impl LoopInput {
    pub(crate) fn node(input: NodeInput) -> LoopInput {
        LoopInput::Node(Box::new(input))
    }
}

/// Subscribers and queryables of one session, re-declared on every session change (§12).
#[derive(Default)]
struct SessionDecls {
    down: Option<(SessionId, Subscriber<()>)>,
    master: Option<MasterDecls>,
}

/// What only the master of a session declares: the `up` subscriber and the range and snapshot queryables.
struct MasterDecls {
    _up: Subscriber<()>,
    _cmd: Subscriber<()>,
    _queryables: Vec<Queryable<()>>,
}

struct DeclaredTokens {
    master: Option<(SessionId, LivelinessToken)>,
    follows: Option<(SessionId, LivelinessToken)>,
}

struct Shell {
    ns: String,
    session: Session,
    core: NodeCore,
    store: Store,
    inputs: SyncSender<LoopInput>,
    counters: Arc<NetCounters>,
    faults: Faults,
    decls: SessionDecls,
    tokens: DeclaredTokens,
    /// The master's indexed events awaiting their fsync'd commit, then their publication.
    to_commit: Vec<IndexedEvent>,
    /// A follower's applied events awaiting their lazy commit.
    to_log: Vec<IndexedEvent>,
    to_log_since: Option<Instant>,
    /// Sends held until the commit of what was indexed before them.
    to_send: Vec<Outgoing>,
    /// Events applied (a follower's at once, the master's once committed) not yet announced to the node's consumers.
    to_broadcast: Vec<IndexedEvent>,
    /// The State as last announced: each announced event is applied to it, so every consumer sees the State after
    /// *each* event (§11.3 case 15: a `TaskCreated` and its `TaskDeleted` in one batch must both be seen).
    announced: State,
    view: watch::Sender<View>,
    changes: broadcast::Sender<StateChange>,
    last_view: Option<(shoal_types::Pos, &'static str, Option<SessionId>, bool, bool)>,
    snapshots: SnapshotServer,
    rejections: broadcast::Sender<Rejection>,
    started: Instant,
    last_checkpoint_check: Instant,
    stop: bool,
    beats: Arc<AtomicU64>,
    /// Whether the store writes, and what it could not write (see [`crate::storage`]).
    storage: Storage,
}

pub(crate) fn start(config: ClusterConfig, store: Store) -> Result<(ClusterHandle, JoinHandle<()>), ClusterError> {
    let zenoh_config = config.net.zenoh_config()?;
    let session = shoal_net::zenoh::open(zenoh_config).wait()?;
    let ns = config.net.namespace.clone();
    let node = config.node.node;
    let drop_chunk_seq = config.faults.drop_chunk_seq;

    let (inputs, rx) = sync_channel(SUBSCRIBER_CHANNEL);
    let counters = Arc::new(NetCounters::default());
    let now = unix_ms();
    let state = store.state().clone();
    let core = NodeCore::new(config.node, state.clone(), store.max_term_seen(), now);
    let initial = state.clone();
    let status = status_of(&core, &Storage::new());
    let (view_tx, view_rx) = watch::channel(View {
        state: Arc::new(state),
        status,
    });
    let (changes, _) = broadcast::channel(crate::STATE_CHANGES);
    let (rejections, _) = broadcast::channel(crate::REJECTIONS);

    let mut shell = Shell {
        ns: ns.clone(),
        session: session.clone(),
        core,
        store,
        inputs: inputs.clone(),
        counters: counters.clone(),
        faults: config.faults,
        decls: SessionDecls::default(),
        tokens: DeclaredTokens {
            master: None,
            follows: None,
        },
        to_commit: Vec::new(),
        to_log: Vec::new(),
        to_log_since: None,
        to_send: Vec::new(),
        to_broadcast: Vec::new(),
        announced: initial,
        view: view_tx,
        changes: changes.clone(),
        last_view: None,
        snapshots: SnapshotServer::default(),
        rejections: rejections.clone(),
        started: Instant::now(),
        last_checkpoint_check: Instant::now(),
        stop: false,
        beats: Arc::new(AtomicU64::new(0)),
        storage: Storage::new(),
    };
    let static_decls = shell.declare_static()?;
    // The node token is declared once the duplicate-id check has passed (§2.2), off the start-up path: the check
    // waits for the first peers to connect.
    let node_token = Arc::new(std::sync::Mutex::new(None));
    spawn_identity_check(session.clone(), ns.clone(), node, node_token.clone())?;
    tracing::info!(%node, namespace = %ns, "joined the zenoh network");

    let chunks = crate::chunks::ChunkRoute {
        session: session.clone(),
        ns: ns.clone(),
        node,
        sink: Default::default(),
        unrouted: Default::default(),
        view: view_rx.clone(),
        drop_seq: drop_chunk_seq,
    };
    let chunk_subscriber = declare_chunks(&session, chunks.clone(), counters.clone())?;
    let prompts = crate::prompts::PromptRoute {
        session: session.clone(),
        ns: ns.clone(),
        node,
        shelf: Default::default(),
        counters: counters.clone(),
    };
    let prompt_queryable = crate::prompts::declare(&prompts)?;
    let handle = ClusterHandle {
        inputs,
        view: view_rx,
        changes,
        rejections,
        counters,
        beats: shell.beats.clone(),
        chunks,
        prompts,
    };
    let thread = std::thread::Builder::new().name("shoal-node".into()).spawn(move || {
        shell.run(rx);
        drop(chunk_subscriber);
        drop(prompt_queryable);
        drop(static_decls);
        drop(node_token);
        shell.finish();
    })?;
    Ok((handle, thread))
}

/// §2.2: a cloned data directory must not make two live nodes with one id. Waits up to [`PEER_WAIT`] for a first
/// peer (a lone node has nobody to collide with), asks for `node/<own id>`, and exits the process if a live node
/// holds it; otherwise declares the token. zenoh ids are random per process, so the clone's transport to the
/// original is not refused as a "connection to itself" and the query can reach it.
fn spawn_identity_check(
    session: Session,
    ns: String,
    node: shoal_types::NodeId,
    slot: Arc<std::sync::Mutex<Option<LivelinessToken>>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("shoal-idcheck".into())
        .spawn(move || {
            let deadline = Instant::now() + PEER_WAIT;
            while Instant::now() < deadline && session.info().peers_zid().wait().next().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let key = keys::node_token(&ns, node);
            if let Ok(replies) = session.liveliness().get(key.clone()).timeout(DUPLICATE_CHECK).wait() {
                while let Ok(reply) = replies.recv() {
                    if reply.result().is_ok() {
                        let error = crate::ClusterError::DuplicateId(node);
                        tracing::error!("{error}");
                        eprintln!("shoal: {error}");
                        std::process::exit(1);
                    }
                }
            }
            match session.liveliness().declare_token(key).wait() {
                Ok(token) => {
                    if let Ok(mut slot) = slot.lock() {
                        *slot = Some(token);
                    }
                }
                Err(error) => tracing::error!(%error, "cannot declare the node token"),
            }
        })?;
    Ok(())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

fn status_of(core: &NodeCore, storage: &Storage) -> NodeStatus {
    let (role, session) = match core.election().role() {
        Role::Master { session } => ("master", Some(*session)),
        Role::Following { session, .. } => ("follower", Some(*session)),
        Role::Campaigning { .. } | Role::AwaitingWinner { .. } => ("campaigning", None),
        Role::Starting { .. } => ("starting", None),
    };
    NodeStatus {
        node: core.node(),
        role,
        session,
        ready: core.ready(),
        pos: core.state().pos,
        storage: storage.fault().cloned(),
    }
}

/// `t/<this node>/chunk`: decoded in zenoh's callback and handed straight to the API's sink (§4).
fn declare_chunks(
    session: &Session,
    route: crate::chunks::ChunkRoute,
    counters: Arc<NetCounters>,
) -> Result<Subscriber<()>, ClusterError> {
    let key = keys::chunk(&route.ns, route.node);
    Ok(session
        .declare_subscriber(key.clone())
        .allowed_origin(Locality::Remote)
        .callback(move |sample: Sample| {
            let bytes = sample.payload().to_bytes();
            let Some(envelope) = decode_counted::<TransientEnvelope>(&bytes, &key, &counters.chunk) else {
                return;
            };
            match crate::chunks::from_envelope(envelope) {
                Some(msg) => route.deliver(msg),
                None => Counters::bump(&counters.chunk.malformed),
            }
        })
        .wait()?)
}

/// Forwards from a zenoh callback into the loop; never blocks, counts what it drops.
fn hand_over(inputs: &SyncSender<LoopInput>, input: LoopInput, counters: &Counters) {
    match inputs.try_send(input) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => Counters::bump(&counters.dropped_full),
        Err(TrySendError::Disconnected(_)) => {}
    }
}

impl Shell {
    /// Declarations that live as long as the node: election, liveliness, this node's control key.
    fn declare_static(&self) -> Result<(Vec<Subscriber<()>>, Subscriber<()>), ClusterError> {
        let mut subscribers = Vec::new();
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let key = keys::election(&self.ns);
        subscribers.push(
            self.session
                .declare_subscriber(key.clone())
                .allowed_origin(Locality::Remote)
                .callback(move |sample: Sample| {
                    let bytes = sample.payload().to_bytes();
                    if let Some(msg) = decode_counted::<ElectionMsg>(&bytes, &key, &counters.election) {
                        hand_over(&inputs, LoopInput::node(NodeInput::Campaign(msg)), &counters.election);
                    }
                })
                .wait()?,
        );
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let rejections = self.rejections.clone();
        let key = keys::ctl(&self.ns, self.core.node());
        subscribers.push(
            self.session
                .declare_subscriber(key.clone())
                .allowed_origin(Locality::Remote)
                .callback(move |sample: Sample| {
                    let bytes = sample.payload().to_bytes();
                    let Some(envelope) = decode_counted::<TransientEnvelope>(&bytes, &key, &counters.ctl) else {
                        return;
                    };
                    match envelope.body {
                        Transient::Acked { origin, through_seq } => {
                            let input = NodeInput::Acked {
                                session: envelope.session,
                                origin,
                                through_seq,
                            };
                            hand_over(&inputs, LoopInput::node(input), &counters.ctl);
                        }
                        // Matched by command id by whoever waits for it; never blocks.
                        Transient::CommandRejected { command_id, reason } => {
                            let _ = rejections.send(Rejection { command_id, reason });
                        }
                        Transient::Chunk { .. } | Transient::Trace { .. } => {}
                    }
                })
                .wait()?,
        );
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let ns = self.ns.clone();
        // History: tokens declared before this node started are reported too (§7 step 1).
        let tokens = self
            .session
            .liveliness()
            .declare_subscriber(keys::all_tokens(&self.ns))
            .history(true)
            .callback(move |sample: Sample| {
                Counters::bump(&counters.tokens.received);
                let Some(token) = keys::parse_token(&ns, sample.key_expr().as_str()) else {
                    Counters::bump(&counters.tokens.malformed);
                    return;
                };
                let put = sample.kind() == SampleKind::Put;
                let input = match (token, put) {
                    (Token::Node(node), true) => NodeInput::NodeTokenAppeared(node),
                    (Token::Node(node), false) => NodeInput::NodeTokenGone(node),
                    (Token::Master(session), true) => NodeInput::MasterTokenAppeared(session),
                    (Token::Master(session), false) => NodeInput::MasterTokenGone(session),
                    (Token::Follows(session, node), true) => NodeInput::MemberAppeared { session, node },
                    (Token::Follows(session, node), false) => NodeInput::MemberGone { session, node },
                };
                hand_over(&inputs, LoopInput::node(input), &counters.tokens);
            })
            .wait()?;
        Ok((subscribers, tokens))
    }

    fn run(&mut self, rx: Receiver<LoopInput>) {
        let mut next_tick = Instant::now();
        while !self.stop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            for _ in 0..BATCH_INPUTS {
                match rx.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.step(NodeInput::Tick);
                next_tick = Instant::now() + TICK;
                if let Some(deadline) = self.core.next_deadline_ms() {
                    let until = Duration::from_millis(deadline.saturating_sub(unix_ms()));
                    next_tick = next_tick.min(Instant::now() + until);
                }
            }
            self.flush();
            self.beats.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn handle(&mut self, input: LoopInput) {
        match input {
            LoopInput::Node(input) => self.step(*input),
            LoopInput::RangeQuery(session, query) => self.serve_range(session, query),
            LoopInput::SnapshotQuery(session, query) => self.serve_snapshot(session, query),
            LoopInput::Request(Request::Produce(event)) => self.step(NodeInput::Produce(*event)),
            LoopInput::Request(Request::Facts(facts)) => self.step(NodeInput::Facts(facts)),
            LoopInput::Request(Request::Command { command_id, command }) => self.submit_command(command_id, *command),
            LoopInput::Request(Request::Events { after, max, reply }) => {
                // What the log holds is what is committed: commit first so a reader sees its own node's events.
                self.commit();
                let after = after.unwrap_or(self.store.log_start_idx() as i64 - 1);
                let events = self.store.events_after(after, max).map_err(|e| e.to_string());
                let _ = reply.send(events);
            }
            LoopInput::Request(Request::Shutdown) => self.stop = true,
        }
    }

    fn step(&mut self, input: NodeInput) {
        let outputs = self.core.step(input, unix_ms());
        for output in outputs {
            match output {
                NodeOutput::PersistMaxTerm(term) => {
                    if !self.storage.failed()
                        && let Err(error) = self.store.set_max_term_seen(term)
                    {
                        self.storage_failed(format!("cannot persist max_term_seen: {error}"));
                    }
                }
                // A term that is not persisted is not campaigned in (the core stands aside once told).
                NodeOutput::Send(Outgoing::Campaign(_)) if self.storage.failed() => {}
                NodeOutput::Send(outgoing) => self.to_send.push(outgoing),
                NodeOutput::Indexed(event) => self.to_commit.push(*event),
                NodeOutput::Applied(event) => {
                    self.to_log_since.get_or_insert_with(Instant::now);
                    // A follower acts on what it applied now; only its own log is written lazily.
                    self.to_broadcast.push((*event).clone());
                    self.to_log.push(*event);
                }
                NodeOutput::Installed(state) => self.install(*state),
                NodeOutput::FetchRange { session, request } => self.fetch_range(session, request),
                NodeOutput::RequestSnapshot { session } => {
                    crate::snapshot::fetch(
                        self.session.clone(),
                        &self.ns,
                        session,
                        self.core.node(),
                        self.inputs.clone(),
                        self.counters.clone(),
                    );
                }
                NodeOutput::Role(change) => self.on_role(change),
            }
        }
    }

    fn on_role(&mut self, change: RoleChange) {
        match change {
            RoleChange::Opened(session) => {
                tracing::info!(%session, pos = ?self.core.state().pos, "elected: serving as master");
            }
            RoleChange::SteppedDown(session) => tracing::info!(%session, "stepped down"),
            RoleChange::Following(session) => tracing::info!(%session, "following"),
        }
    }

    fn install(&mut self, state: State) {
        // What was applied before the snapshot is announced before it.
        self.announce();
        let pos = state.pos;
        self.to_log.clear();
        self.to_log_since = None;
        let installed = if self.storage.failed() {
            self.storage.hold_snapshot(state.clone());
            Ok(())
        } else {
            self.store.install_snapshot(state.clone())
        };
        match installed {
            Ok(()) => tracing::info!(?pos, "installed a snapshot"),
            Err(error) => {
                self.storage.hold_snapshot(state.clone());
                self.storage_failed(format!("cannot install the snapshot: {error}"));
            }
        }
        self.announced = state.clone();
        self.publish_view();
        let _ = self.changes.send(StateChange {
            state: Arc::new(state),
            cause: ChangeCause::Installed(pos),
        });
    }

    /// Commits the follower's batch when due and the master's batch, both with fsync; publishes after the commit.
    fn commit(&mut self) {
        if !self.to_log.is_empty() {
            let events = std::mem::take(&mut self.to_log);
            self.to_log_since = None;
            if self.storage.failed() {
                self.storage.hold(events);
            } else if let Err(error) = self.store.append(&events, Commit::Fsync) {
                // The State in memory is right; what the log lacks is written once the store recovers.
                self.storage.hold(events);
                self.storage_failed(format!("replica log append failed: {error}"));
            }
        }
        if !self.to_commit.is_empty() {
            let events = std::mem::take(&mut self.to_commit);
            let appended = if self.storage.failed() {
                Err("the store is failing".to_owned())
            } else if self.faults.store_fails() {
                Err("injected store failure (SHOAL_FAULT_STORE_FAIL_FILE)".to_owned())
            } else {
                self.store.append(&events, Commit::Fsync).map_err(|e| e.to_string())
            };
            if let Err(error) = appended {
                // Publishing what is not durable would let followers hold what a crash loses (§5.2): the batch is
                // dropped unpublished and unacknowledged (producers resend it to the next master), and the node
                // steps down; whoever wins continues from what was committed.
                self.to_send
                    .retain(|o| !matches!(o, Outgoing::Acked { .. } | Outgoing::Down(..)));
                self.storage_failed_losing(format!("master commit failed: {error}"), events);
                return;
            }
            self.to_broadcast.extend(events.iter().cloned());
            for event in events {
                let session = event.session;
                let msg = DownMsg::Event(Box::new(event));
                self.publish_down(session, &msg);
            }
        }
    }

    /// Announces every applied event to the node's consumers (worker, API registry), one State per event, after
    /// publishing the view, so a consumer woken by a change never reads an older State from the view.
    fn announce(&mut self) {
        if self.to_broadcast.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.to_broadcast);
        self.publish_view();
        if self.changes.receiver_count() == 0 {
            self.announced = self.core.state().clone();
            return;
        }
        for event in &events {
            if let Err(error) = shoal_core::apply::apply_in_place(&mut self.announced, event) {
                // Cannot happen (the core applied the same events in the same order); resynchronise if it does.
                tracing::warn!(?error, "announced State out of step; resynchronising");
                self.announced = self.core.state().clone();
            }
            let _ = self.changes.send(StateChange {
                state: Arc::new(self.announced.clone()),
                cause: ChangeCause::Applied(event.idx as i64),
            });
        }
        if self.announced.pos != self.core.state().pos {
            self.announced = self.core.state().clone();
        }
    }

    fn flush(&mut self) {
        let log_due = self.to_log.len() >= FOLLOWER_COMMIT_EVENTS
            || self.to_log_since.is_some_and(|t| t.elapsed() >= FOLLOWER_COMMIT_AFTER)
            || !self.to_commit.is_empty();
        if log_due || !self.to_commit.is_empty() {
            self.commit();
        }
        self.announce();
        for outgoing in std::mem::take(&mut self.to_send) {
            self.send(outgoing);
        }
        if self.storage.probe_due() {
            self.recover_storage();
        }
        self.reconcile_declarations();
        self.publish_view();
        if self.last_checkpoint_check.elapsed() >= CHECKPOINT_CHECK_EVERY {
            self.last_checkpoint_check = Instant::now();
            if self.to_log.is_empty()
                && !self.storage.failed()
                && let Err(error) = self.store.checkpoint_if_due()
            {
                tracing::warn!(%error, "checkpoint failed");
            }
        }
    }

    fn publish_view(&mut self) {
        let status = status_of(&self.core, &self.storage);
        let key = (
            status.pos,
            status.role,
            status.session,
            status.ready,
            status.storage.is_some(),
        );
        if self.last_view == Some(key) {
            return;
        }
        let was_ready = self.last_view.is_some_and(|v| v.3);
        self.last_view = Some(key);
        let became_ready = status.ready && !was_ready;
        let (pos, role) = (status.pos, status.role);
        self.view.send_replace(View {
            state: Arc::new(self.core.state().clone()),
            status,
        });
        // Logged after the view is published, so whoever reacts to the line sees the ready status.
        if became_ready {
            tracing::info!(
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                ?pos,
                role,
                "cluster ready"
            );
        }
    }

    fn send(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Campaign(msg) => {
                self.put(keys::election(&self.ns), &msg, Priority::InteractiveHigh, true);
            }
            Outgoing::Up(session, up) => {
                let key = keys::up(&self.ns, session);
                for _ in 0..self.faults.copies() {
                    self.put(key.clone(), &*up, Priority::Data, false);
                }
            }
            Outgoing::Down(session, msg) => self.publish_down(session, &msg),
            Outgoing::Acked {
                to,
                session,
                origin,
                through_seq,
            } => {
                let envelope = TransientEnvelope {
                    from: self.core.node(),
                    session,
                    body: Transient::Acked { origin, through_seq },
                };
                self.put(keys::ctl(&self.ns, to), &envelope, Priority::InteractiveLow, false);
            }
            Outgoing::Rejected {
                to,
                session,
                command_id,
                reason,
            } => {
                if to == self.core.node() {
                    let _ = self.rejections.send(Rejection { command_id, reason });
                    return;
                }
                let envelope = TransientEnvelope {
                    from: self.core.node(),
                    session,
                    body: Transient::CommandRejected { command_id, reason },
                };
                self.put(keys::ctl(&self.ns, to), &envelope, Priority::InteractiveHigh, false);
            }
        }
    }

    /// A command from this node's API: decided in-process when this node is the master, else published to the
    /// master of the session this node follows. Without a session it is dropped; the sender resends.
    fn submit_command(&mut self, command_id: CommandId, command: Command) {
        let Some(session) = self.core.master_of().or(self.core.following()) else {
            return;
        };
        let envelope = CommandEnvelope {
            session,
            origin: self.core.node(),
            command_id,
            sent_ms: unix_ms(),
            command,
        };
        if self.core.master_of() == Some(session) {
            self.step(NodeInput::Command(Box::new(envelope)));
        } else {
            self.put(
                keys::cmd(&self.ns, session),
                &envelope,
                Priority::InteractiveHigh,
                false,
            );
        }
    }

    fn publish_down(&mut self, session: SessionId, msg: &DownMsg) {
        let key = keys::down(&self.ns, session);
        let copies = match msg {
            DownMsg::Event(_) => self.faults.copies(),
            DownMsg::Head { .. } => 1,
        };
        for _ in 0..copies {
            self.put(key.clone(), msg, Priority::Data, false);
        }
    }

    fn put<T: serde::Serialize>(&self, key: String, value: &T, priority: Priority, express: bool) {
        let bytes = match codec::encode(value) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, key, "cannot encode an outgoing message");
                return;
            }
        };
        let result = self
            .session
            .put(key.clone(), bytes)
            .priority(priority)
            .congestion_control(CongestionControl::Block)
            .express(express)
            .wait();
        if let Err(error) = result {
            tracing::warn!(%error, key, "publish failed");
        }
    }

    fn fetch_range(&mut self, session: SessionId, request: RangeRequest) {
        let bytes = match codec::encode(&request) {
            Ok(bytes) => bytes,
            Err(_) => return,
        };
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let after = request.after;
        let key = keys::range_queryable(&self.ns, session);
        let result = self
            .session
            .get(key.clone())
            .payload(bytes)
            .consolidation(ConsolidationMode::None)
            .timeout(RANGE_QUERY_TIMEOUT)
            .callback(move |reply| {
                let Ok(sample) = reply.result() else {
                    return;
                };
                let bytes = sample.payload().to_bytes();
                if let Some(reply) = decode_counted::<RangeReply>(&bytes, &key, &counters.range) {
                    let input = NodeInput::Range { session, after, reply };
                    hand_over(&inputs, LoopInput::node(input), &counters.range);
                }
            })
            .wait();
        if let Err(error) = result {
            tracing::warn!(%error, "range query failed");
        }
    }

    /// §5.4: answered only to the requester, from the replica log, after the chain check of `after`.
    fn serve_range(&mut self, session: SessionId, query: Query) {
        self.commit();
        let key_base = keys::range(&self.ns, session);
        let Some(bytes) = query.payload().map(|p| p.to_bytes().into_owned()) else {
            Counters::bump(&self.counters.range.malformed);
            return;
        };
        let Some(request) = decode_counted::<RangeRequest>(&bytes, &key_base, &self.counters.range) else {
            return;
        };
        let replies = if self.core.master_of() == Some(session) {
            crate::range::answer(&self.store, request)
        } else {
            vec![RangeReply::NotMaster]
        };
        for (n, reply) in replies.iter().enumerate() {
            let Ok(bytes) = codec::encode(reply) else { continue };
            let key = keys::range_reply(&self.ns, session, n as u32);
            if let Err(error) = query.reply(key, bytes).wait() {
                tracing::debug!(%error, "range reply failed");
                return;
            }
        }
    }

    fn serve_snapshot(&mut self, session: SessionId, query: Query) {
        if self.core.master_of() != Some(session) {
            return; // the requester times out and follows whoever is master now
        }
        self.commit();
        let key_base = keys::snapshot(&self.ns, session);
        if let Some(bytes) = query.payload().map(|p| p.to_bytes().into_owned())
            && decode_counted::<shoal_types::wire::SnapshotRequest>(&bytes, &key_base, &self.counters.snapshot)
                .is_none()
        {
            return;
        }
        self.snapshots
            .serve(self.ns.clone(), session, self.store.state().clone(), query);
    }

    /// Declares and undeclares the per-session subscribers, queryables and tokens to match the core.
    fn reconcile_declarations(&mut self) {
        let Tokens { master, follows } = self.core.tokens();
        if self.tokens.master.as_ref().map(|(s, _)| *s) != master {
            self.tokens.master = None; // dropping undeclares
            if let Some(session) = master {
                self.declare_master(session);
                match self
                    .session
                    .liveliness()
                    .declare_token(keys::master_token(&self.ns, session))
                    .wait()
                {
                    Ok(token) => self.tokens.master = Some((session, token)),
                    Err(error) => tracing::error!(%error, "cannot declare the master token"),
                }
            } else {
                self.decls.master = None;
            }
        }
        if self.tokens.follows.as_ref().map(|(s, _)| *s) != follows {
            self.tokens.follows = None;
            if let Some(session) = follows {
                let key = keys::follows_token(&self.ns, session, self.core.node());
                match self.session.liveliness().declare_token(key).wait() {
                    Ok(token) => self.tokens.follows = Some((session, token)),
                    Err(error) => tracing::error!(%error, "cannot declare the follows token"),
                }
            }
        }
        let down_wanted = self.core.following();
        if self.decls.down.as_ref().map(|(s, _)| *s) != down_wanted {
            self.decls.down = None;
            if let Some(session) = down_wanted {
                match self.declare_down(session) {
                    Ok(sub) => self.decls.down = Some((session, sub)),
                    Err(error) => tracing::error!(%error, "cannot subscribe to the master's events"),
                }
            }
        }
        if master.is_none() {
            self.decls.master = None;
        }
    }

    fn declare_down(&self, session: SessionId) -> Result<Subscriber<()>, ClusterError> {
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let faults = self.faults.clone();
        let key = keys::down(&self.ns, session);
        Ok(self
            .session
            .declare_subscriber(key.clone())
            .allowed_origin(Locality::Remote)
            .callback(move |sample: Sample| {
                if faults.drop_incoming() || faults.blacked_out() {
                    return;
                }
                let bytes = sample.payload().to_bytes();
                if let Some(msg) = decode_counted::<DownMsg>(&bytes, &key, &counters.down) {
                    hand_over(
                        &inputs,
                        LoopInput::node(NodeInput::Down { session, msg }),
                        &counters.down,
                    );
                }
            })
            .wait()?)
    }

    fn declare_master(&mut self, session: SessionId) {
        match self.master_decls(session) {
            Ok(decls) => self.decls.master = Some(decls),
            Err(error) => tracing::error!(%error, %session, "cannot declare the master's subscribers"),
        }
    }

    fn master_decls(&self, session: SessionId) -> Result<MasterDecls, ClusterError> {
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let faults = self.faults.clone();
        let key = keys::up(&self.ns, session);
        let up = self
            .session
            .declare_subscriber(key.clone())
            .allowed_origin(Locality::Remote)
            .callback(move |sample: Sample| {
                if faults.drop_incoming() {
                    return;
                }
                let bytes = sample.payload().to_bytes();
                if let Some(msg) = decode_counted::<UpMsg>(&bytes, &key, &counters.up) {
                    hand_over(&inputs, LoopInput::node(NodeInput::Up { session, msg }), &counters.up);
                }
            })
            .wait()?;
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let key = keys::cmd(&self.ns, session);
        let cmd = self
            .session
            .declare_subscriber(key.clone())
            .allowed_origin(Locality::Remote)
            .callback(move |sample: Sample| {
                let bytes = sample.payload().to_bytes();
                if let Some(envelope) = decode_counted::<CommandEnvelope>(&bytes, &key, &counters.cmd) {
                    let input = NodeInput::Command(Box::new(envelope));
                    hand_over(&inputs, LoopInput::node(input), &counters.cmd);
                }
            })
            .wait()?;
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let range = self
            .session
            .declare_queryable(keys::range_queryable(&self.ns, session))
            .allowed_origin(Locality::Remote)
            .callback(move |query: Query| {
                hand_over(&inputs, LoopInput::RangeQuery(session, query), &counters.range);
            })
            .wait()?;
        let inputs = self.inputs.clone();
        let counters = self.counters.clone();
        let snapshot = self
            .session
            .declare_queryable(keys::snapshot_queryable(&self.ns, session))
            .allowed_origin(Locality::Remote)
            .callback(move |query: Query| {
                hand_over(&inputs, LoopInput::SnapshotQuery(session, query), &counters.snapshot);
            })
            .wait()?;
        Ok(MasterDecls {
            _up: up,
            _cmd: cmd,
            _queryables: vec![range, snapshot],
        })
    }

    /// The store cannot write: the node stays up, serving from memory, but commits nothing it could lose — a master
    /// steps down and nobody campaigns or votes here until [`Self::recover_storage`] succeeds.
    fn storage_failed(&mut self, error: String) {
        self.storage_failed_losing(error, Vec::new());
    }

    /// As [`Self::storage_failed`], for a master whose batch `lost` was not committed.
    fn storage_failed_losing(&mut self, error: String, lost: Vec<IndexedEvent>) {
        if self.storage.fail(error.clone(), unix_ms()) {
            tracing::error!(
                %error,
                probe_every_ms = crate::storage::STORAGE_PROBE_EVERY.as_millis() as u64,
                "the store cannot write: standing aside from mastership until it can"
            );
            self.step(NodeInput::StorageFailed { error, lost });
            self.publish_view();
        }
    }

    fn recover_storage(&mut self) {
        if self.faults.store_fails() {
            return; // the injected fault is a disk that stays full while its file exists
        }
        // Whatever is still batched joins what is held, so the store is written in order.
        let batched = std::mem::take(&mut self.to_log);
        self.to_log_since = None;
        self.storage.hold(batched);
        let max_term = self.core.election().max_term_seen();
        match self.storage.try_recover(&mut self.store, self.core.state(), max_term) {
            Ok(()) => {
                tracing::info!(pos = ?self.store.pos(), "the store writes again: resuming");
                self.step(NodeInput::StorageRecovered);
            }
            Err(error) => tracing::debug!(%error, "the store still cannot write"),
        }
    }

    fn finish(mut self) {
        self.commit();
        if self.storage.failed() {
            tracing::warn!("the store cannot write: no final checkpoint; the disk holds what was committed");
        } else if let Err(error) = self.store.checkpoint_now() {
            tracing::warn!(%error, "final checkpoint failed; the log still holds every event");
        }
        self.decls = SessionDecls::default();
        self.tokens.master = None;
        self.tokens.follows = None;
        let _ = self.session.close().wait();
    }
}
