//! The runner process: one rank of a pipeline (SYSTEM.md §10.3–§10.4). It talks to its worker over a Unix socket,
//! to the previous and next ranks over TCP, and runs its stage with continuous batching: rank 0 admits and schedules
//! sequences and embeds their tokens, middle ranks run their layers, the last rank samples, decodes and reports
//! chunks. One micro-batch is in flight at a time.
//!
//! Everything arrives on one channel ([`Input`]) fed by reader threads, so the compute loop is a plain state
//! machine: it never blocks on a socket while it has work.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_engine::output::OutputParser;
use shoal_engine::{
    Decoding, EngineError, LayerRange, PREFILL_CHUNK, Pool, STEP_TARGET, ScheduledStep, Scheduler, SeqChunk, SeqSlot,
    Stage, StageInput, StageOutput, Tokenizer,
};

use crate::chunks::{Sampling, chunk_logprobs, chunk_messages};

use crate::edges::{Dials, spawn_acceptor};
use crate::frame::{FrameError, read_frame, write_frame};
use crate::integrity::{self, Verdict};
use crate::proto::{
    ChunkEnd, DataFrame, FromRunner, FwdSeq, Handshake, LoadSpec, Outcome, PROTOCOL, RunnerStatus, SeqStart,
    TaskHandle, ToRunner,
};
use crate::secure::{EdgeWriter, TlsConfigs};

/// How often the runner tells its worker it is alive, from a thread independent of compute.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Sequences rank 0 queues beyond the `max_seqs` it runs (§10.4); more are refused at once.
pub const MAX_WAITING: usize = 64;
/// Inputs the compute loop's queue holds (control frames from the worker, data frames from the previous rank, edge
/// news). Every producer is a reader thread of a socket (or a dial thread), so a full queue blocks it: back-pressure
/// that reaches the sender through the socket, never a dropped frame (a lost frame would corrupt a sequence). The
/// ring and the worker/runner pair are cycles, so the limit stays far above what normal work can have in flight
/// (at most 256 `--max-seqs` + [`MAX_WAITING`] sequences, each with a few control frames and one activation frame
/// in the ring per step) and only binds a runaway or hostile peer.
pub const RUNNER_INPUTS: usize = 4_096;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("worker channel: {0}")]
    Channel(#[from] FrameError),
    #[error("worker channel: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("data plane: {0}")]
    DataPlane(String),
    /// The model file failed verification after its weights produced non-finite numbers; names the file.
    #[error("{0}")]
    Corrupt(String),
}

pub(crate) enum Input {
    Control(ToRunner),
    ControlClosed(Option<FrameError>),
    /// A frame from the previous rank.
    Data(DataFrame),
    DataClosed(String),
    /// The previous rank's edge passed its handshake.
    PrevConnected,
    /// Dial number `dial` reached the next rank (a superseded dial's edge is dropped).
    NextConnected {
        dial: u64,
        edge: EdgeWriter,
    },
    /// Dial number `dial` gave up.
    DialFailed {
        dial: u64,
        reason: String,
    },
}

/// How far the compute loop got, read by the heartbeat thread (§13: a hung runner is one that stopped advancing).
#[derive(Default)]
struct Progress {
    /// Units of progress: forward passes finished, and every layer run inside one (the stage counts those).
    steps: Arc<AtomicU64>,
    stepping: AtomicBool,
}

/// Writes to the worker; shared by the compute loop and the heartbeat thread.
#[derive(Clone)]
struct Worker(Arc<Mutex<BufWriter<UnixStream>>>);

impl Worker {
    fn send(&self, msg: &FromRunner) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = write_frame(&mut *w, msg) {
            // The reader sees the same broken socket and ends the process; nothing to do here.
            tracing::debug!(error = %e, "cannot write to the worker");
        }
    }
}

/// Runs a runner process connected to the worker's socket until `Shutdown` or the socket closes.
pub fn run(socket: &Path) -> Result<(), RunnerError> {
    let stream = UnixStream::connect(socket)?;
    let worker = Worker(Arc::new(Mutex::new(BufWriter::new(stream.try_clone()?))));
    worker.send(&FromRunner::Hello {
        pid: std::process::id(),
        protocol: PROTOCOL,
    });
    let (tx, rx) = mpsc::sync_channel(RUNNER_INPUTS);
    spawn_control_reader(stream, tx.clone());
    let heartbeat = worker.clone();
    let progress = Arc::new(Progress::default());
    let reported = progress.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(HEARTBEAT);
            heartbeat.send(&FromRunner::Heartbeat {
                steps: reported.steps.load(Ordering::Relaxed),
                stepping: reported.stepping.load(Ordering::Relaxed),
            });
        }
    });

    let spec = loop {
        match rx.recv() {
            Ok(Input::Control(ToRunner::Load(spec))) => break spec,
            Ok(Input::Control(ToRunner::Shutdown)) | Ok(Input::ControlClosed(None)) | Err(_) => return Ok(()),
            Ok(Input::ControlClosed(Some(e))) => return Err(e.into()),
            Ok(Input::Control(other)) => {
                return Err(RunnerError::Protocol(format!("expected Load first, got {other:?}")));
            }
            Ok(_) => {}
        }
    };
    worker.send(&FromRunner::Status(RunnerStatus::Loading));
    let loaded = load(&spec);
    let (stage, tokenizer) = match loaded {
        Ok(x) => x,
        Err(e) => {
            // The file's name goes with the reason: it reaches `/state`, the node's log and the client's error.
            let why = format!("cannot load {}: {e}", spec.model_path.display());
            worker.send(&FromRunner::Status(RunnerStatus::Failed(why)));
            return Err(e.into());
        }
    };
    let tls = match spec.tls.as_ref().map(TlsConfigs::new).transpose() {
        Ok(tls) => tls.map(Arc::new),
        Err(e) => {
            let why = format!("cannot secure the data plane: {e}");
            worker.send(&FromRunner::Status(RunnerStatus::Failed(why.clone())));
            return Err(RunnerError::DataPlane(why));
        }
    };
    let listener = TcpListener::bind((spec.bind, 0))?;
    let port = listener.local_addr()?.port();
    let model = model_name(&spec);
    spawn_acceptor(listener, expected_prev(&spec, &model), tls.clone(), tx.clone());
    worker.send(&FromRunner::Listening { port });
    worker.send(&FromRunner::Weights {
        bytes: stage.weight_bytes(),
    });
    worker.send(&FromRunner::Status(RunnerStatus::Loaded));
    let mut stage = stage;
    stage.count_layers_into(progress.steps.clone());

    let mut rank = Rank {
        // Prompt chunks beside decoding sequences are sized so a step (a running stream's gap) stays near the target.
        scheduler: Scheduler::new(spec.max_seqs, PREFILL_CHUNK).with_step_target(STEP_TARGET),
        spec,
        model,
        stage,
        worker,
        progress,
        next: None,
        dials: Dials::new(tx.clone(), tls),
        prev_up: false,
        ready: false,
        tasks: HashMap::new(),
        slots: HashMap::new(),
        free_slots: Vec::new(),
        pending_free: Vec::new(),
        next_slot: 0,
        in_flight: None,
        microbatch: 0,
        verdict: None,
    };
    let result = rank.serve(&rx, tokenizer.as_ref());
    if let Err(e) = &result {
        rank.worker
            .send(&FromRunner::Status(RunnerStatus::Failed(e.to_string())));
    }
    result
}

fn load(spec: &LoadSpec) -> Result<(Stage, Option<Tokenizer>), EngineError> {
    let pool = Arc::new(Pool::new(spec.threads.max(1)));
    let stage = Stage::load(
        &spec.model_path,
        LayerRange::new(spec.layer_start, spec.layer_end),
        pool,
    )?
    .with_kv_type(spec.kv_cache);
    tracing::info!(kv_cache = %spec.kv_cache, start = spec.layer_start, end = spec.layer_end, "stage loaded");
    let tokenizer = if stage.is_last() {
        Some(Tokenizer::from_gguf_path(&spec.model_path)?)
    } else {
        None
    };
    Ok((stage, tokenizer))
}

fn model_name(spec: &LoadSpec) -> String {
    spec.model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The handshake this rank accepts on its incoming edge: the previous rank of the same instance and model.
fn expected_prev(spec: &LoadSpec, model: &str) -> Handshake {
    Handshake {
        instance: spec.instance.clone(),
        rank: (spec.rank + spec.world_size - 1) % spec.world_size.max(1),
        world_size: spec.world_size,
        model: model.to_string(),
        token: spec.token,
    }
}

fn spawn_control_reader(stream: UnixStream, tx: SyncSender<Input>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stream);
        loop {
            match read_frame::<ToRunner>(&mut r) {
                Ok(Some(msg)) => {
                    if tx.send(Input::Control(msg)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Input::ControlClosed(None));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Input::ControlClosed(Some(e)));
                    return;
                }
            }
        }
    });
}

/// Per-task bookkeeping on rank 0.
struct TaskEntry {
    slot: SeqSlot,
    /// Sent with the sequence's first forward frame, then cleared.
    start: Option<SeqStart>,
}

struct InFlight {
    step: ScheduledStep,
    /// When rank 0 started the step: its sampled tokens coming back end it (every rank and hop included).
    started: Instant,
}

struct Rank {
    spec: LoadSpec,
    model: String,
    stage: Stage,
    worker: Worker,
    progress: Arc<Progress>,
    next: Option<EdgeWriter>,
    /// Dials of the next rank; only the latest one counts.
    dials: Dials,
    prev_up: bool,
    ready: bool,
    scheduler: Scheduler,
    /// Rank 0: live tasks and the slot of each.
    tasks: HashMap<TaskHandle, TaskEntry>,
    slots: HashMap<SeqSlot, TaskHandle>,
    free_slots: Vec<SeqSlot>,
    /// Slots finished while a step holding them was in flight: reusable only after that step comes back.
    pending_free: Vec<SeqSlot>,
    next_slot: SeqSlot,
    in_flight: Option<InFlight>,
    microbatch: u64,
    /// What re-reading the model file after non-finite output found: hashed once per runner life (a sound file
    /// stays sound; a corrupt one ends the runner).
    verdict: Option<Verdict>,
}

impl Rank {
    fn is_first(&self) -> bool {
        self.spec.rank == 0
    }

    fn is_last(&self) -> bool {
        self.spec.rank + 1 == self.spec.world_size
    }

    fn single(&self) -> bool {
        self.spec.world_size <= 1
    }

    fn serve(&mut self, rx: &Receiver<Input>, tokenizer: Option<&Tokenizer>) -> Result<(), RunnerError> {
        let mut sampling: HashMap<SeqSlot, Sampling<'_>> = HashMap::new();
        loop {
            // With work to start, only peek at the inputs, so a single-rank pipeline keeps stepping; otherwise wait.
            let input = if self.can_step() {
                match rx.try_recv() {
                    Ok(input) => Some(input),
                    Err(mpsc::TryRecvError::Empty) => None,
                    Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
                }
            } else {
                match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return Ok(()),
                }
            };
            let Some(input) = input else {
                self.start_step(tokenizer, &mut sampling)?;
                continue;
            };
            match input {
                Input::Control(ToRunner::Shutdown) | Input::ControlClosed(None) => return Ok(()),
                Input::ControlClosed(Some(e)) => return Err(e.into()),
                Input::Control(ToRunner::Load(_)) => {
                    return Err(RunnerError::Protocol("Load received twice".into()));
                }
                Input::Control(ToRunner::Connect { next }) => {
                    if self.single() {
                        self.check_ready();
                    } else if self.ready {
                        // A ring that is up stays as it is: if the next rank really moved, its edge breaks.
                        tracing::debug!(?next, "Connect while the ring is up; ignored");
                    } else {
                        // A later Connect (the next rank re-reported its listener) supersedes a dial in progress.
                        let hello = Handshake {
                            instance: self.spec.instance.clone(),
                            rank: self.spec.rank,
                            world_size: self.spec.world_size,
                            model: self.model.clone(),
                            token: self.spec.token,
                        };
                        self.next = None;
                        self.dials.start(next, hello);
                    }
                }
                Input::NextConnected { dial, edge } => {
                    if self.dials.is_current(dial) {
                        self.next = Some(edge);
                        self.check_ready();
                    }
                }
                Input::DialFailed { dial, reason } => {
                    if self.dials.is_current(dial) {
                        return Err(RunnerError::DataPlane(reason));
                    }
                }
                Input::PrevConnected => {
                    self.prev_up = true;
                    self.check_ready();
                }
                Input::Control(ToRunner::Submit {
                    task,
                    prompt,
                    params,
                    route,
                }) => self.submit(task, prompt, params, route),
                Input::Control(ToRunner::Cancel { task }) => self.cancel(task),
                Input::DataClosed(reason) => {
                    // The sequences in flight cannot go on either way: fail them at once, so their clients hear of it
                    // now (after an orderly stop State has failed them already, and a repeat is harmless).
                    let why = format!("pipeline edge broken: {reason}");
                    self.fail_all(&why);
                    // The last rank knows its sequences too (rank 0 may be the one that died).
                    for (_, seq) in sampling.drain() {
                        self.worker.send(&FromRunner::TaskDone {
                            task: seq.task,
                            outcome: Outcome::Failed(why.clone()),
                        });
                    }
                    // When a worker stops a pipeline, the neighbour that exits first closes this edge just before
                    // our own Shutdown arrives: give it a moment, so an orderly stop is not reported as a failure.
                    if let Ok(Input::Control(ToRunner::Shutdown)) = rx.recv_timeout(Duration::from_millis(500)) {
                        return Ok(());
                    }
                    return Err(RunnerError::DataPlane(reason));
                }
                Input::Data(frame) => self.on_frame(frame, tokenizer, &mut sampling)?,
            }
            if self.can_step() {
                self.start_step(tokenizer, &mut sampling)?;
            }
        }
    }

    /// Rank 0 with the ring up, nothing in flight and a sequence to feed.
    fn can_step(&self) -> bool {
        self.is_first() && self.ready && self.in_flight.is_none() && !self.scheduler.is_idle()
    }

    fn check_ready(&mut self) {
        let edges_up = self.single() || (self.next.is_some() && self.prev_up);
        if edges_up && !self.ready {
            self.ready = true;
            self.worker.send(&FromRunner::Status(RunnerStatus::Ready));
        }
    }

    fn submit(&mut self, task: TaskHandle, prompt: Vec<u32>, params: shoal_engine::GenerateParams, route: Vec<u8>) {
        let refuse = |w: &Worker, why: String| {
            w.send(&FromRunner::TaskDone {
                task,
                outcome: Outcome::Failed(why),
            })
        };
        if !self.is_first() {
            return refuse(&self.worker, format!("rank {} cannot take tasks", self.spec.rank));
        }
        if self.tasks.contains_key(&task) {
            return refuse(&self.worker, format!("task {task} is already running"));
        }
        if let Err(e) = params.validate(prompt.len(), self.stage.hparams().context_length) {
            return refuse(&self.worker, e.to_string());
        }
        if self.scheduler.waiting() >= MAX_WAITING {
            return refuse(
                &self.worker,
                format!("busy: {MAX_WAITING} sequences are already waiting"),
            );
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        });
        self.scheduler.submit(slot, prompt.clone());
        self.tasks.insert(
            task,
            TaskEntry {
                slot,
                start: Some(SeqStart {
                    task,
                    prompt,
                    params,
                    route,
                }),
            },
        );
        self.slots.insert(slot, task);
        self.worker.send(&FromRunner::Accepted { task });
        tracing::debug!(task, "admitted");
    }

    fn cancel(&mut self, task: TaskHandle) {
        let Some(entry) = self.tasks.get(&task) else { return };
        let slot = entry.slot;
        self.finish_slot(slot);
        self.worker.send(&FromRunner::TaskDone {
            task,
            outcome: Outcome::Cancelled,
        });
    }

    /// Rank 0: forgets a sequence and tells the rest of the ring to free it.
    fn finish_slot(&mut self, slot: SeqSlot) {
        self.scheduler.cancel(slot);
        self.stage.release(slot);
        if let Some(task) = self.slots.remove(&slot) {
            self.tasks.remove(&task);
            let in_flight = self
                .in_flight
                .as_ref()
                .is_some_and(|f| f.step.chunks.iter().any(|c| c.slot == slot));
            if in_flight {
                self.pending_free.push(slot);
            } else {
                self.free_slots.push(slot);
            }
        }
        if let Some(next) = &mut self.next
            && let Err(e) = write_frame(next, &DataFrame::Release { slot })
        {
            tracing::warn!(error = %e, "cannot send Release to the next rank");
        }
    }

    fn fail_all(&mut self, why: &str) {
        let tasks: Vec<TaskHandle> = self.tasks.keys().copied().collect();
        for task in tasks {
            self.worker.send(&FromRunner::TaskDone {
                task,
                outcome: Outcome::Failed(why.to_string()),
            });
        }
        self.tasks.clear();
    }

    fn start_step<'t>(
        &mut self,
        tokenizer: Option<&'t Tokenizer>,
        sampling: &mut HashMap<SeqSlot, Sampling<'t>>,
    ) -> Result<(), RunnerError> {
        let Some(step) = self.scheduler.next_step() else {
            return Ok(());
        };
        let started = Instant::now();
        let out = match self.forward(&step.chunks, StageInput::Tokens(&step.tokens)) {
            Ok(out) => out,
            Err(e) => {
                self.fail_step(&step, &e.to_string());
                return Ok(());
            }
        };
        let seqs: Vec<FwdSeq> = step
            .chunks
            .iter()
            .zip(&step.positions)
            .zip(&step.sample)
            .map(|((c, &pos_start), &sample)| FwdSeq {
                slot: c.slot,
                pos_start,
                n_tokens: c.n_tokens,
                sample,
                start: self
                    .slots
                    .get(&c.slot)
                    .and_then(|t| self.tasks.get_mut(t))
                    .and_then(|e| e.start.take()),
            })
            .collect();
        self.microbatch += 1;
        self.in_flight = Some(InFlight { step, started });
        match out {
            StageOutput::Hidden(activations) => {
                self.check_hidden(&activations, None)?;
                let frame = DataFrame::Forward {
                    microbatch: self.microbatch,
                    seqs,
                    activations,
                };
                self.send_next(&frame)?;
            }
            StageOutput::Logits(logits) => {
                // A single-rank pipeline samples right here.
                let tokens = self.sample(&seqs, logits, tokenizer, sampling)?;
                self.on_back(tokens);
            }
        }
        Ok(())
    }

    /// One forward pass of this rank's layers, counted for the heartbeat.
    fn forward(&mut self, chunks: &[SeqChunk], input: StageInput<'_>) -> Result<StageOutput, EngineError> {
        self.progress.stepping.store(true, Ordering::Relaxed);
        let out = self.stage.forward_batch(chunks, input);
        self.progress.steps.fetch_add(1, Ordering::Relaxed);
        self.progress.stepping.store(false, Ordering::Relaxed);
        out
    }

    /// This rank's output was not finite: hashes the model file again (once per runner life) and judges it. A
    /// corrupt file is reported to the worker, which stops trusting its cached verification.
    fn non_finite(&mut self) -> Verdict {
        if let Some(verdict) = &self.verdict {
            return verdict.clone();
        }
        let path = self.spec.model_path.clone();
        tracing::warn!(path = %path.display(), "non-finite output: verifying the model file again");
        let check = self
            .spec
            .sha256
            .as_deref()
            .map(|sha| shoal_models::verify_digest_now(&path, sha));
        let verdict = integrity::verdict(&path, check);
        tracing::warn!(verdict = verdict.reason(), "model file verified again");
        if let Verdict::Corrupt(_) = &verdict {
            self.worker.send(&FromRunner::FileCorrupt { path });
        }
        self.verdict = Some(verdict.clone());
        verdict
    }

    /// A rank before the last: non-finite activations leaving it, made from finite ones (or tokens) entering it, come
    /// from its own layers. A corrupt file ends the runner; otherwise the last rank fails the sequences.
    fn check_hidden(&mut self, out: &[f32], input: Option<&[f32]>) -> Result<(), RunnerError> {
        if integrity::all_finite(out) || input.is_some_and(|i| !integrity::all_finite(i)) {
            return Ok(());
        }
        match self.non_finite() {
            Verdict::Corrupt(reason) => Err(RunnerError::Corrupt(reason)),
            Verdict::NotTheFile(_) => Ok(()),
        }
    }

    fn fail_step(&mut self, step: &ScheduledStep, why: &str) {
        for c in &step.chunks {
            if let Some(&task) = self.slots.get(&c.slot) {
                self.worker.send(&FromRunner::TaskDone {
                    task,
                    outcome: Outcome::Failed(why.to_string()),
                });
            }
            self.finish_slot(c.slot);
        }
    }

    fn send_next(&mut self, frame: &DataFrame) -> Result<(), RunnerError> {
        let Some(next) = &mut self.next else {
            return Err(RunnerError::DataPlane("no edge to the next rank".into()));
        };
        write_frame(next, frame).map_err(|e| RunnerError::DataPlane(e.to_string()))
    }

    fn on_frame<'t>(
        &mut self,
        frame: DataFrame,
        tokenizer: Option<&'t Tokenizer>,
        sampling: &mut HashMap<SeqSlot, Sampling<'t>>,
    ) -> Result<(), RunnerError> {
        match frame {
            DataFrame::Handshake(_) => Err(RunnerError::DataPlane("unexpected second handshake".into())),
            DataFrame::Back { tokens, .. } if self.is_first() => {
                self.on_back(tokens);
                Ok(())
            }
            DataFrame::Release { slot } => {
                self.stage.release(slot);
                sampling.remove(&slot);
                if !self.is_last() && !self.is_first() {
                    self.send_next(&DataFrame::Release { slot })?;
                }
                Ok(())
            }
            DataFrame::Forward {
                microbatch,
                seqs,
                activations,
            } if !self.is_first() => {
                let chunks: Vec<SeqChunk> = seqs
                    .iter()
                    .map(|s| SeqChunk {
                        slot: s.slot,
                        n_tokens: s.n_tokens,
                    })
                    .collect();
                for s in &seqs {
                    if self.stage.seq_len(s.slot) != s.pos_start {
                        // A position this rank did not see: the ring lost a frame. Start the sequence over here.
                        tracing::warn!(slot = s.slot, "sequence position mismatch; resetting its cache");
                        self.stage.release(s.slot);
                    }
                }
                let out = self
                    .forward(&chunks, StageInput::Hidden(&activations))
                    .map_err(|e| RunnerError::DataPlane(format!("forward frame {microbatch}: {e}")))?;
                match out {
                    StageOutput::Hidden(out) => {
                        self.check_hidden(&out, Some(&activations))?;
                        self.send_next(&DataFrame::Forward {
                            microbatch,
                            seqs,
                            activations: out,
                        })
                    }
                    StageOutput::Logits(logits) => {
                        let tokens = self.sample(&seqs, logits, tokenizer, sampling)?;
                        self.send_next(&DataFrame::Back { microbatch, tokens })
                    }
                }
            }
            other => Err(RunnerError::DataPlane(format!(
                "rank {} cannot take {other:?}",
                self.spec.rank
            ))),
        }
    }

    /// Last rank: samples every sequence that asked for it and reports chunks to the worker.
    fn sample<'t>(
        &mut self,
        seqs: &[FwdSeq],
        mut logits: Vec<Vec<f32>>,
        tokenizer: Option<&'t Tokenizer>,
        sampling: &mut HashMap<SeqSlot, Sampling<'t>>,
    ) -> Result<Vec<(SeqSlot, u32, bool)>, RunnerError> {
        let Some(tokenizer) = tokenizer else {
            return Err(RunnerError::Protocol("sampling needs the last rank's tokenizer".into()));
        };
        let limit = self.stage.hparams().context_length;
        let mut tokens = Vec::new();
        let mut corrupt = None;
        for (s, logits) in seqs.iter().zip(logits.iter_mut()) {
            if let Some(start) = &s.start {
                self.worker.send(&FromRunner::Started {
                    task: start.task,
                    route: start.route.clone(),
                });
                match Decoding::new(tokenizer, &start.prompt, &start.params, limit) {
                    Ok(decoding) => {
                        sampling.insert(
                            s.slot,
                            Sampling {
                                task: start.task,
                                decoding,
                                output: OutputParser::new(&start.params.output),
                                reasoning_tokens: 0,
                                seq: 0,
                            },
                        );
                    }
                    Err(e) => {
                        self.worker.send(&FromRunner::TaskDone {
                            task: start.task,
                            outcome: Outcome::Failed(e.to_string()),
                        });
                        tokens.push((s.slot, 0, true));
                        continue;
                    }
                }
            }
            if !s.sample {
                continue;
            }
            let Some(seq) = sampling.get_mut(&s.slot) else {
                tracing::debug!(slot = s.slot, "no sampling state for the slot; ending it");
                // Released (cancelled) while this step was in flight.
                tokens.push((s.slot, 0, true));
                continue;
            };
            if !integrity::all_finite(logits) {
                // Sampling NaN logits would print garbage: the sequence fails with what re-reading the file found.
                let task = seq.task;
                let verdict = self.non_finite();
                self.worker.send(&FromRunner::TaskDone {
                    task,
                    outcome: Outcome::Failed(verdict.reason().to_string()),
                });
                sampling.remove(&s.slot);
                tokens.push((s.slot, 0, true));
                if let Verdict::Corrupt(reason) = verdict {
                    corrupt = Some(reason);
                }
                continue;
            }
            let step = match seq.decoding.step(logits) {
                Ok(step) => step,
                Err(e) => {
                    let task = seq.task;
                    self.worker.send(&FromRunner::TaskDone {
                        task,
                        outcome: Outcome::Failed(e.to_string()),
                    });
                    sampling.remove(&s.slot);
                    tokens.push((s.slot, 0, true));
                    continue;
                }
            };
            if seq.seq == 0 {
                tracing::debug!(task = seq.task, "first token sampled");
            }
            let logprobs = chunk_logprobs(tokenizer, &step);
            let end = step.finish.map(|finish| ChunkEnd {
                finish,
                prompt_tokens: seq.decoding.prompt_tokens(),
                completion_tokens: seq.decoding.generated().len(),
                reasoning_tokens: 0,
            });
            // A control token the decoder leaves out of the text: the call parser may need it (Mistral's
            // `[TOOL_CALLS]name[ARGS]{…}`); it never reaches the text shown.
            let control = (tokenizer.is_special(step.token) && !tokenizer.is_end_of_generation(step.token))
                .then(|| tokenizer.token_text(step.token))
                .flatten();
            for msg in chunk_messages(seq, step.token, &step.text, control.as_deref(), end, logprobs) {
                self.worker.send(&msg);
            }
            let done = step.finish.is_some();
            if let Some(finish) = step.finish {
                self.worker.send(&FromRunner::TaskDone {
                    task: seq.task,
                    outcome: Outcome::Complete {
                        finish,
                        prompt_tokens: seq.decoding.prompt_tokens(),
                        completion_tokens: seq.decoding.generated().len(),
                    },
                });
                sampling.remove(&s.slot);
                if !self.single() {
                    self.stage.release(s.slot);
                }
            }
            tokens.push((s.slot, step.token, done));
        }
        if let Some(reason) = corrupt {
            return Err(RunnerError::Corrupt(reason));
        }
        Ok(tokens)
    }

    /// Rank 0: the sampled tokens of the step in flight came back.
    fn on_back(&mut self, tokens: Vec<(SeqSlot, u32, bool)>) {
        let Some(InFlight { step, started }) = self.in_flight.take() else {
            tracing::warn!("a back frame with no step in flight; ignored");
            return;
        };
        self.scheduler.observe(&step, started.elapsed());
        self.scheduler.complete(&step, &tokens);
        self.free_slots.append(&mut self.pending_free);
        for (slot, _, done) in tokens {
            if done {
                self.finish_slot(slot);
            }
        }
    }
}
