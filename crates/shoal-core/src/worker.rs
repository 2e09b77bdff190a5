//! The worker's decisions (SYSTEM.md §10.2): which runners this node must spawn, shut down, load, warm up, reset or
//! feed, which tasks they must drop, which models to download, and which of its own facts to (re-)assert.
//!
//! Pure: the cluster's State, what this node knows locally ([`LocalView`]) and the clock are arguments. [`plan`]
//! returns **every** action that applies, not the first; the shell carries them out concurrently and marks each one
//! in flight ([`LocalView::start`]) so the next tick does not repeat it, and clears the mark when it is done
//! ([`LocalView::finish`]). The plan never waits on a runner: a slow `Load` on one runner holds nothing else up.
//!
//! The node's own [`NodeFact`](shoal_types::model::NodeFact)s are re-asserted by [`crate::node::NodeCore`], next to
//! the outbox it dedupes against; rule 9 here covers the facts only the worker knows: its runners' statuses and its
//! downloads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use shoal_types::ids::{InstanceId, ModelId, NodeId, RunnerId, TaskId};
use shoal_types::model::{DownloadProgress, Instance, RunnerStatus, TaskStatus};
use shoal_types::{Event, State};

use crate::prompts::PromptBook;

/// A runner that has failed this many times is not respawned; the master deletes its instance at the same count
/// (§8), so the worker stops at the point the cluster gives up on the placement.
pub const RUNNER_ATTEMPTS: u32 = crate::master::RUNNER_FAILURES_DELETE;
/// A runner that served this long before it failed starts counting its failures from 1 again.
pub const RUNNER_STABLE_MS: u64 = 60_000;
/// The wait before respawning a runner after its first failure; it doubles with every further failure (§13).
pub const RESPAWN_BACKOFF_BASE_MS: u64 = 1_000;
/// The longest wait before a respawn, however often the runner failed (§13).
pub const RESPAWN_BACKOFF_MAX_MS: u64 = 30_000;
/// An unchanged fact that State still lacks is re-asserted at most this often (§10.2 rule 9, §13): the outbox
/// resends what it has not seen acknowledged, so this only covers a State that lost or never applied the event.
pub const REASSERT_EVERY_MS: u64 = crate::node::REASSERT_EVERY_MS;
/// A download's progress (`Ongoing` to `Ongoing`) is reported at most this often; a change of status (started,
/// completed, failed) goes out at once (§10.2, §13). Progress is for the UI and placement's tie-break, not worth
/// one durable event per chunk.
pub const DOWNLOAD_PROGRESS_EVERY_MS: u64 = 5_000;
/// Sequences rank 0 admits at once by default (§10.4, §13).
pub const DEFAULT_MAX_SEQS: u32 = 8;
/// Sequences rank 0 may hold queued beyond `max_seqs` (§10.4, §13). Tasks beyond that stay `Pending` in State, where
/// the master's instance choice sees them, rather than in a runner's private queue.
pub const QUEUE_SLACK: u32 = 64;

/// One runner process this node runs (or ran, while it waits to be respawned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalRunner {
    pub instance: InstanceId,
    /// The status the runner last reported, or the worker's `Failed` after the process died; `None` from the spawn
    /// until the new process reports its first status, so a process that is still starting gets no `Load`.
    pub status: Option<RunnerStatus>,
    /// The process is running.
    pub alive: bool,
    /// Failures so far (the last `Failed { attempt }`), seeded from `Instance::runner_failures` when the worker first
    /// sees the runner, so a restarted worker keeps counting where the cluster is.
    pub attempts: u32,
    /// When the process last exited; the respawn backoff runs from here.
    pub last_exit_ms: Option<u64>,
    /// The data-plane listener the runner reported (`Listening`), one address per interface of this node.
    pub data_addrs: Vec<SocketAddr>,
    /// When the current process last became `Ready` (cleared when it exits): a runner that served this long before
    /// it failed starts counting its failures again ([`LocalRunner::attempt_after_failure`]).
    pub serving_since_ms: Option<u64>,
    /// The next rank's addresses the runner was last told to dial (`Connect`), set by the shell when it sends one;
    /// empty before the first warm-up of this process. Rule 6 compares it with State's current record.
    pub dialing: Vec<SocketAddr>,
    /// Tasks submitted to the runner or seen from it that it has not finished (`TaskDone`); the shell removes them
    /// on `TaskDone` and clears the set when the process exits. Rule 3 cancels the ones State dropped; rule 8 counts
    /// them against the queue limit.
    pub open_tasks: BTreeSet<TaskId>,
    /// Every task ever submitted to the runner, so a task whose `Running` has not reached State yet is not submitted
    /// twice. The shell may prune ids that State no longer holds.
    pub submitted: BTreeSet<TaskId>,
}

impl LocalRunner {
    /// A runner of `instance` first seen now, its attempt count seeded from State.
    pub fn seeded(instance: &Instance, runner: &RunnerId) -> Self {
        LocalRunner {
            instance: instance.id,
            status: None,
            alive: false,
            attempts: instance.runner_failures.get(runner).copied().unwrap_or(0),
            last_exit_ms: None,
            data_addrs: Vec::new(),
            dialing: Vec::new(),
            serving_since_ms: None,
            open_tasks: BTreeSet::new(),
            submitted: BTreeSet::new(),
        }
    }
}

impl LocalRunner {
    /// The attempt number of a failure at `now_ms`: one more than the last, or 1 when the process had served for
    /// [`RUNNER_STABLE_MS`]. Failures count while they come in a row: a runner that crashes once a day must not have
    /// its instance deleted on the fifth day (the master deletes at [`RUNNER_ATTEMPTS`]).
    pub fn attempt_after_failure(&self, now_ms: u64) -> u32 {
        let served_long = self
            .serving_since_ms
            .is_some_and(|since| now_ms >= since.saturating_add(RUNNER_STABLE_MS));
        if served_long {
            1
        } else {
            self.attempts.saturating_add(1)
        }
    }
}

/// What this node has on disk of one model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalModel {
    /// Every file of the model is present and verified (size and any listed sha256).
    pub verified: bool,
    /// A download of the model is running.
    pub downloading: bool,
    /// The local download status, asserted to State by rule 9; `None` when this node never downloaded the model.
    pub progress: Option<DownloadProgress>,
    /// Downloads of the model that failed in a row (reset on success); they back off like respawns.
    pub failures: u32,
    /// When the last download failed.
    pub last_failure_ms: Option<u64>,
    /// Waiting for the cluster's downloader of this model (`crate::fetch`): no download before this time.
    pub wait_until_ms: Option<u64>,
}

/// A local fact that rule 9 asserts to State.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fact {
    /// `RunnerStatusUpdated` of this node's runner.
    Runner(RunnerId),
    /// `DownloadUpdated` of this node's download of a model.
    Download(ModelId),
}

impl Fact {
    /// The fact an event asserts, if it is one rule 9 tracks.
    pub fn of(event: &Event) -> Option<Fact> {
        match event {
            Event::RunnerStatusUpdated { runner_id, .. } => Some(Fact::Runner(*runner_id)),
            Event::DownloadUpdated { model_id, .. } => Some(Fact::Download(model_id.clone())),
            _ => None,
        }
    }
}

/// The last assertion of a fact: what was said and when.
#[derive(Clone, Debug, PartialEq)]
pub struct Asserted {
    pub event: Event,
    pub at_ms: u64,
}

/// Everything this node's worker knows that State does not say (or says late). The shell owns it and updates the
/// fields as runners, downloads and its own actions report; [`plan`] only reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalView {
    pub node: NodeId,
    /// Sequences a runner admits at once; rule 8 queues up to `max_seqs + QUEUE_SLACK` per runner.
    pub max_seqs: u32,
    pub runners: BTreeMap<RunnerId, LocalRunner>,
    pub models: BTreeMap<ModelId, LocalModel>,
    /// Actions started and not finished; [`plan`] does not return them again.
    pub in_flight: BTreeSet<ActionKey>,
    /// The last assertion of each local fact (rule 9).
    pub asserted: BTreeMap<Fact, Asserted>,
    /// Which tasks' contents this node holds or is fetching (rank 0; [`crate::prompts`]). Rule 8 submits only a
    /// task whose content is held.
    pub prompts: PromptBook,
}

impl LocalView {
    pub fn new(node: NodeId) -> Self {
        LocalView {
            node,
            max_seqs: DEFAULT_MAX_SEQS,
            runners: BTreeMap::new(),
            models: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            asserted: BTreeMap::new(),
            prompts: PromptBook::default(),
        }
    }

    /// Records that the shell started `action`: an `Emit` is done once it is in the outbox, so it is recorded as
    /// asserted now; anything else is in flight until [`LocalView::finish`].
    pub fn start(&mut self, action: &Action, now_ms: u64) {
        match action {
            Action::Emit(event) => {
                if let Some(fact) = Fact::of(event) {
                    let event = (**event).clone();
                    self.asserted.insert(fact, Asserted { event, at_ms: now_ms });
                }
            }
            other => {
                self.in_flight.insert(other.key());
            }
        }
    }

    /// Records that the action with `key` is done (or failed), so the plan may choose it again.
    pub fn finish(&mut self, key: &ActionKey) {
        self.in_flight.remove(key);
    }

    /// Records that `runner`'s process is gone (reset, killed, failed or replaced): what was sent to it will never be
    /// answered, so nothing sent to it stays in flight. Otherwise a warm-up cut short by a reset would block the new
    /// process's warm-up for good (issue 13: a pipeline stuck `Loaded` after a restart).
    pub fn process_gone(&mut self, runner: &RunnerId) {
        self.in_flight.retain(|key| match key {
            ActionKey::Load(r) | ActionKey::Warmup(r) | ActionKey::Redial(r) => r != runner,
            ActionKey::Submit(r, _) | ActionKey::Cancel(r, _) => r != runner,
            ActionKey::Spawn(_)
            | ActionKey::Shutdown(_)
            | ActionKey::Reset(_)
            | ActionKey::Download(_)
            | ActionKey::Emit(_) => true,
        });
    }
}

/// What the worker does. Each variant says when the shell should consider it finished (and clear the in-flight mark):
/// not before the effect is visible in [`LocalView`], or the next tick would repeat it.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Start a runner process for `instance` (rule 1); it gets its shard, model directory and `max_seqs` in `Init`
    /// from the instance in State. Done when the process is up (`alive`) or failed to start.
    Spawn { runner: RunnerId, instance: InstanceId },
    /// Stop a runner whose instance is gone or no longer assigns it here (rule 2); SIGKILL after the grace period.
    /// Done when the process has exited.
    Shutdown { runner: RunnerId },
    /// Tell a runner to drop a task State no longer wants run (rule 3). Done when the runner says `TaskDone`.
    Cancel { runner: RunnerId, task: TaskId },
    /// Fetch a model's files (rule 4). Done when the download ends, either way (`downloading` covers it meanwhile).
    Download { model: ModelId },
    /// Load the shard's layers (rule 5). Done when the runner's status leaves `Idle`.
    Load { runner: RunnerId },
    /// Connect the ring and run the warm-up pass (rule 6): dial `next`, the data addresses of rank + 1 (the last rank
    /// dials rank 0; empty for a single-rank instance). Done when the status leaves `Loaded`.
    Warmup { runner: RunnerId, next: Vec<SocketAddr> },
    /// Dial `next` instead of the addresses a warm-up is dialling (rule 6): the next rank re-reported its listener,
    /// so the old ones are stale (a record from before a restart). Done once sent.
    Redial { runner: RunnerId, next: Vec<SocketAddr> },
    /// Drop connections and KV because the ring is broken (rule 7). Done when the status is `Loaded` again.
    Reset { runner: RunnerId },
    /// Hand a `Pending` task to rank 0 (rule 8). Done when the runner says `Accepted` (or the task is in
    /// `open_tasks` and `submitted`).
    Submit { runner: RunnerId, task: TaskId },
    /// Put an event in the outbox (rule 9): a local fact that State does not hold. See [`LocalView::start`].
    Emit(Box<Event>),
}

/// An action without its payload: what "the same action" means for the in-flight marks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKey {
    Spawn(RunnerId),
    Shutdown(RunnerId),
    Cancel(RunnerId, TaskId),
    Download(ModelId),
    Load(RunnerId),
    /// Whatever the addresses: a warm-up in progress is not restarted when a sibling re-reports its addresses; it
    /// is redirected ([`Action::Redial`]).
    Warmup(RunnerId),
    Redial(RunnerId),
    Reset(RunnerId),
    Submit(RunnerId, TaskId),
    /// Emits are not normally marked (see [`LocalView::start`]); a shell that does mark one holds its fact back.
    Emit(Option<Fact>),
}

impl Action {
    pub fn key(&self) -> ActionKey {
        match self {
            Action::Spawn { runner, .. } => ActionKey::Spawn(*runner),
            Action::Shutdown { runner } => ActionKey::Shutdown(*runner),
            Action::Cancel { runner, task } => ActionKey::Cancel(*runner, *task),
            Action::Download { model } => ActionKey::Download(model.clone()),
            Action::Load { runner } => ActionKey::Load(*runner),
            Action::Warmup { runner, .. } => ActionKey::Warmup(*runner),
            Action::Redial { runner, .. } => ActionKey::Redial(*runner),
            Action::Reset { runner } => ActionKey::Reset(*runner),
            Action::Submit { runner, task } => ActionKey::Submit(*runner, *task),
            Action::Emit(event) => ActionKey::Emit(Fact::of(event)),
        }
    }
}

/// The wait before the next spawn of a runner that failed `attempts` times: none before the first failure, then
/// 1 s · 2^(attempts − 1), at most 30 s (§10.2 rule 1).
pub fn respawn_backoff_ms(attempts: u32) -> u64 {
    if attempts == 0 {
        return 0;
    }
    let doublings = attempts - 1;
    // 2^5 s already passes the cap; clamping the shift keeps it from overflowing.
    RESPAWN_BACKOFF_BASE_MS
        .saturating_mul(1u64 << doublings.min(16))
        .min(RESPAWN_BACKOFF_MAX_MS)
}

/// Every action of the §10.2 table that applies now, grouped by rule in table order (within a rule: by instance,
/// runner, then task or model id), leaving out those in flight.
pub fn plan(state: &State, local: &LocalView, now_ms: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    let push = |action: Action, actions: &mut Vec<Action>| {
        if !local.in_flight.contains(&action.key()) {
            actions.push(action);
        }
    };

    // Rule 1: a runner State assigns to this node that has no process, under the attempt limit, after its backoff.
    for instance in state.instances.values() {
        let Some(runner) = instance.assignments.node_runner.get(&local.node) else {
            continue;
        };
        if !instance.assigns(runner, &local.node) {
            continue;
        }
        let seeded = instance.runner_failures.get(runner).copied().unwrap_or(0);
        let (attempts, last_exit_ms) = match local.runners.get(runner) {
            Some(r) if r.alive => continue,
            Some(r) => (r.attempts.max(seeded), r.last_exit_ms),
            None => (seeded, None),
        };
        if attempts >= RUNNER_ATTEMPTS {
            continue;
        }
        if last_exit_ms.is_some_and(|exit| now_ms < exit.saturating_add(respawn_backoff_ms(attempts))) {
            continue;
        }
        let spawn = Action::Spawn {
            runner: *runner,
            instance: instance.id,
        };
        push(spawn, &mut actions);
    }

    // Rule 2: a process whose instance is gone or no longer assigns it here.
    for (runner, r) in &local.runners {
        let stopping = matches!(r.status, Some(RunnerStatus::ShuttingDown | RunnerStatus::Shutdown));
        if r.alive && !stopping && assigned(state, local, runner, r).is_none() {
            push(Action::Shutdown { runner: *runner }, &mut actions);
        }
    }

    // Rule 3: a task the runner has that State no longer wants run.
    for (runner, r) in local.runners.iter().filter(|(_, r)| r.alive) {
        for task in &r.open_tasks {
            let dropped = state
                .tasks
                .get(task)
                .is_none_or(|t| matches!(t.status, TaskStatus::Cancelled | TaskStatus::Failed));
            if dropped {
                let cancel = Action::Cancel {
                    runner: *runner,
                    task: *task,
                };
                push(cancel, &mut actions);
            }
        }
    }

    // Rules 4 and 5: an idle runner loads its shard, or its model is fetched first. One download per model, however
    // many instances of it this node runs.
    let mut downloads = BTreeSet::new();
    for (runner, r, instance) in live_runners(state, local) {
        if r.status != Some(RunnerStatus::Idle) {
            continue;
        }
        let model = &instance.model.id;
        let files = local.models.get(model);
        if files.is_some_and(|m| m.verified) {
            push(Action::Load { runner: *runner }, &mut actions);
        } else if files.is_none_or(|m| !m.downloading && download_backoff_elapsed(m, now_ms))
            && downloads.insert(model.clone())
        {
            let download = Action::Download { model: model.clone() };
            push(download, &mut actions);
        }
    }

    // Rule 6: a loaded runner joins the ring once every runner of its instance is loaded and listening.
    for (runner, r, instance) in live_runners(state, local) {
        if r.status != Some(RunnerStatus::Loaded) {
            continue;
        }
        let all_loaded = instance.assignments.shards.keys().all(|sibling| {
            state.runners.get(sibling).is_some_and(|rec| {
                !rec.data_addrs.is_empty()
                    && matches!(
                        rec.status,
                        RunnerStatus::Loaded | RunnerStatus::WarmingUp | RunnerStatus::Ready | RunnerStatus::Running
                    )
            })
        });
        if !all_loaded {
            continue;
        }
        let Some(next) = next_rank_addrs(state, instance, runner) else {
            continue;
        };
        push(Action::Warmup { runner: *runner, next }, &mut actions);
    }
    // … and a runner still joining it dials where its next rank listens now. After a whole-cluster restart State
    // names each sibling's listener from before the crash until that sibling reports its new one; a warm-up that
    // started against the old record would otherwise dial a dead port until its dial gives up (issue 13 item 5).
    for (runner, r, instance) in live_runners(state, local) {
        if r.status != Some(RunnerStatus::WarmingUp) {
            continue;
        }
        let Some(next) = next_rank_addrs(state, instance, runner) else {
            continue;
        };
        if !next.is_empty() && next != r.dialing {
            push(Action::Redial { runner: *runner, next }, &mut actions);
        }
    }

    // Rule 7: a runner in the ring resets when a sibling has dropped out of it.
    for (runner, r, instance) in live_runners(state, local) {
        let in_ring = matches!(
            r.status,
            Some(RunnerStatus::WarmingUp | RunnerStatus::Ready | RunnerStatus::Running)
        );
        if !in_ring {
            continue;
        }
        let broken = instance
            .assignments
            .shards
            .keys()
            .filter(|s| *s != runner)
            .any(|sibling| {
                state.runners.get(sibling).is_none_or(|rec| {
                    matches!(
                        rec.status,
                        RunnerStatus::Failed { .. } | RunnerStatus::Idle | RunnerStatus::Loading { .. }
                    )
                })
            });
        if broken {
            push(Action::Reset { runner: *runner }, &mut actions);
        }
    }

    // Rule 8: rank 0 of a serving instance takes its pending tasks, oldest first, up to the queue limit.
    let limit = local.max_seqs.saturating_add(QUEUE_SLACK) as usize;
    for (runner, r, instance) in live_runners(state, local) {
        let is_rank0 = instance
            .assignments
            .shards
            .get(runner)
            .is_some_and(|s| s.device_rank() == 0);
        if !is_rank0 || !r.status.as_ref().is_some_and(RunnerStatus::is_serving) {
            continue;
        }
        let all_serving = instance
            .assignments
            .shards
            .keys()
            .all(|s| state.runners.get(s).is_some_and(|rec| rec.status.is_serving()));
        if !all_serving {
            continue;
        }
        let (mut open, pending) = rank0_queue(state, local, runner, r, &instance.id);
        // Only a task whose content has arrived (`crate::prompts` fetches them in this same order); the others wait
        // without holding a slot.
        for task in pending.into_iter().filter(|t| local.prompts.held.contains(t)) {
            if open.len() >= limit {
                break;
            }
            open.insert(task);
            actions.push(Action::Submit { runner: *runner, task });
        }
    }

    // Rule 9: own runner statuses and downloads that State does not hold. A dead runner's `Failed` (set by the shell
    // when the process exits) is reported too.
    for (runner, r, instance) in assigned_runners(state, local) {
        let Some(status) = &r.status else { continue };
        let differs = match state.runners.get(runner) {
            None => *status != RunnerStatus::Shutdown,
            Some(rec) => rec.status != *status || (!r.data_addrs.is_empty() && rec.data_addrs != r.data_addrs),
        };
        if !differs {
            continue;
        }
        let event = Event::RunnerStatusUpdated {
            runner_id: *runner,
            instance_id: instance.id,
            node: local.node,
            status: status.clone(),
            data_addrs: r.data_addrs.clone(),
        };
        if may_assert(local, Fact::Runner(*runner), &event, 0, now_ms) {
            push(Action::Emit(Box::new(event)), &mut actions);
        }
    }
    if let Some(info) = state.nodes.get(&local.node) {
        for (model, m) in &local.models {
            let Some(progress) = &m.progress else { continue };
            if info.downloads.get(model) == Some(progress) {
                continue;
            }
            let fact = Fact::Download(model.clone());
            let change_gap = match (progress, local.asserted.get(&fact).map(|a| &a.event)) {
                (
                    DownloadProgress::Ongoing { .. },
                    Some(Event::DownloadUpdated {
                        progress: DownloadProgress::Ongoing { .. },
                        ..
                    }),
                ) => DOWNLOAD_PROGRESS_EVERY_MS,
                _ => 0,
            };
            let event = Event::DownloadUpdated {
                node: local.node,
                model_id: model.clone(),
                progress: progress.clone(),
            };
            if may_assert(local, fact, &event, change_gap, now_ms) {
                push(Action::Emit(Box::new(event)), &mut actions);
            }
        }
    }
    actions
}

/// The instance that `runner` belongs to, if State still has it and still assigns the runner to this node.
fn assigned<'a>(state: &'a State, local: &LocalView, runner: &RunnerId, r: &LocalRunner) -> Option<&'a Instance> {
    state
        .instances
        .get(&r.instance)
        .map(|i| &**i)
        .filter(|i| i.assigns(runner, &local.node))
}

/// The local runners whose instance State still assigns here, with that instance: the ones rules 4–9 act on
/// (rules 4–8 only on those with a live process; rule 9 also reports a dead one's `Failed`).
fn assigned_runners<'a>(
    state: &'a State,
    local: &'a LocalView,
) -> impl Iterator<Item = (&'a RunnerId, &'a LocalRunner, &'a Instance)> {
    local
        .runners
        .iter()
        .filter_map(move |(runner, r)| assigned(state, local, runner, r).map(|i| (runner, r, i)))
}

/// [`assigned_runners`] with a live process.
fn live_runners<'a>(
    state: &'a State,
    local: &'a LocalView,
) -> impl Iterator<Item = (&'a RunnerId, &'a LocalRunner, &'a Instance)> {
    assigned_runners(state, local).filter(|(_, r, _)| r.alive)
}

/// The data addresses of the runner after `runner` in the ring (rank + 1, the last rank's next is rank 0), or an
/// empty list for a single-rank instance; `None` when the instance has no such rank (a malformed instance).
fn next_rank_addrs(state: &State, instance: &Instance, runner: &RunnerId) -> Option<Vec<SocketAddr>> {
    let shard = instance.assignments.shards.get(runner)?;
    let world = shard.world_size();
    if world <= 1 {
        return Some(Vec::new());
    }
    let next_rank = (shard.device_rank() + 1) % world;
    let (next, _) = instance
        .assignments
        .shards
        .iter()
        .find(|(_, s)| s.device_rank() == next_rank)?;
    state.runners.get(next).map(|rec| rec.data_addrs.clone())
}

/// A rank-0 runner's queue: the tasks it holds open (submits in flight count, whether or not the shell has added
/// them to `open_tasks` yet), and its instance's `Pending` tasks it has not taken, oldest first. Rule 8 submits from
/// it and `crate::prompts` fetches contents in the same order.
pub(crate) fn rank0_queue(
    state: &State,
    local: &LocalView,
    runner: &RunnerId,
    r: &LocalRunner,
    instance: &InstanceId,
) -> (BTreeSet<TaskId>, Vec<TaskId>) {
    let mut open: BTreeSet<TaskId> = r.open_tasks.clone();
    open.extend(local.in_flight.iter().filter_map(|k| match k {
        ActionKey::Submit(on, task) if on == runner => Some(*task),
        _ => None,
    }));
    let mut pending: Vec<_> = state
        .tasks
        .values()
        .filter(|t| t.instance == *instance && t.status == TaskStatus::Pending)
        .filter(|t| !r.submitted.contains(&t.id) && !open.contains(&t.id))
        .map(|t| (t.created_ms, t.id))
        .collect();
    pending.sort_unstable();
    (open, pending.into_iter().map(|(_, id)| id).collect())
}

/// A failed download is retried after the same backoff as a runner respawn, so a model that cannot be fetched (no
/// network, a bad checksum) does not restart the download on every 250 ms tick.
fn download_backoff_elapsed(m: &LocalModel, now_ms: u64) -> bool {
    m.last_failure_ms
        .is_none_or(|failed| now_ms >= failed.saturating_add(respawn_backoff_ms(m.failures)))
        && m.wait_until_ms.is_none_or(|until| now_ms >= until)
}

/// Rule 9's rate limit for `event`, the current value of `fact`: a value never asserted goes out after `change_gap_ms`
/// since the previous assertion (0: at once), the same value again only every [`REASSERT_EVERY_MS`].
fn may_assert(local: &LocalView, fact: Fact, event: &Event, change_gap_ms: u64, now_ms: u64) -> bool {
    match local.asserted.get(&fact) {
        None => true,
        Some(last) if last.event != *event => now_ms >= last.at_ms.saturating_add(change_gap_ms),
        Some(last) => now_ms >= last.at_ms.saturating_add(REASSERT_EVERY_MS),
    }
}
