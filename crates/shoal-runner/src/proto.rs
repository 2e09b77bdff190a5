//! Messages of the worker ↔ runner channel (SYSTEM.md §10.3) and of the pipeline data plane (§10.4).
//!
//! Differences from the spec's tables, kept small and named here: the worker sends `Load` with the shard inline
//! (the spec's `Init` + `Load`), `Connect` carries the next rank's addresses (the spec's `Warmup { next }`), and a
//! task is identified by a `u64` handle the worker chooses (the cluster's task ids map onto it in the worker).
//! A forward frame says per sequence whether the last rank samples after it (`sample`), which the spec leaves
//! implicit, and carries the prompt in `SeqStart` so the last rank can apply repetition penalties. `SeqStart` also
//! carries the task's `route` (opaque bytes: the cluster's task id, command id and API node), which the last rank hands
//! its own worker in `Started`, so the worker on the last rank's node can address chunks without waiting for State.
//! The data-plane handshake names the model by file name and carries the instance's secret token from State instead
//! of the spec's runner id; with a cluster key it runs inside mutual TLS 1.3 (`secure.rs`), whose certificate and key
//! the worker hands over in `Load`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shoal_engine::output::ParsedCall;
use shoal_engine::{FinishReason, GenerateParams, KvType, SeqSlot};

/// Protocol revision exchanged in `Hello`; a worker refuses a runner of another revision. 4: `GenerateParams`
/// carries a grammar constraint and how to read the output (reasoning, tool calls); `ToolCalls`, `Chunk.thinking`;
/// 5: a logprobs request, answered in `Chunk::logprobs`; 6: `Load` carries the instance's token and the data plane's
/// TLS material, the data-plane handshake the token.
/// 7: `OutputSpec::call_grammar` (`tool_choice: auto`). 8: `LoadSpec::sha256`, `FromRunner::FileCorrupt`.
/// 9: `LoadSpec::kv_cache`.
pub const PROTOCOL: u32 = 9;

/// A task handle chosen by the worker, unique among the runner's live tasks.
pub type TaskHandle = u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadSpec {
    pub model_path: PathBuf,
    /// The file's sha256 (lowercase hex) from its model card, when the card lists one: a rank whose weights produce
    /// non-finite numbers hashes the file again and compares (`integrity.rs`).
    pub sha256: Option<String>,
    /// Identifies the instance in the data-plane handshake, so ranks of different instances never pair up.
    pub instance: String,
    pub layer_start: usize,
    pub layer_end: usize,
    pub rank: u32,
    pub world_size: u32,
    /// Sequences batched per forward pass (continuous batching).
    pub max_seqs: usize,
    /// Kernel threads.
    pub threads: usize,
    /// Element type of the stage's KV cache (`shoal run --kv-cache`).
    #[serde(default)]
    pub kv_cache: KvType,
    /// The address the data-plane listener binds (port chosen by the OS): the node's own interfaces, or loopback
    /// for a node that listens on loopback only.
    pub bind: std::net::IpAddr,
    /// The instance's secret, which both ends of a ring edge prove in the handshake.
    pub token: Token,
    /// With a cluster key: the data plane is mutual TLS 1.3 with this material. It travels on the worker's socket,
    /// never on the command line or in the environment, where other users could read it.
    pub tls: Option<DataPlaneTls>,
}

/// An instance's data-plane secret (16 bytes). `Debug` hides it; equality takes the same time whatever the bytes.
#[derive(Clone, Copy, Default, Serialize, Deserialize)]
pub struct Token(pub [u8; 16]);

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.0.iter().zip(other.0.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl Eq for Token {}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The TLS identity of a runner: the cluster CA, a certificate it issued and that certificate's key, all PEM, and
/// the DNS name every certificate of the cluster carries (ranks dial each other by IP; the name is what the client
/// checks, next to the chain to the CA).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPlaneTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub server_name: String,
}

impl std::fmt::Debug for DataPlaneTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataPlaneTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToRunner {
    /// Load the shard and open the data-plane listener (answered by `Listening`, then `Status(Loaded)`).
    Load(LoadSpec),
    /// Dial the next rank of the ring (answered by `Status(Ready)` once the ring edge into this rank is up too).
    Connect {
        next: Vec<SocketAddr>,
    },
    /// Rank 0 only: start generating.
    Submit {
        task: TaskHandle,
        prompt: Vec<u32>,
        params: GenerateParams,
        /// Opaque to the runner: travels to the last rank in `SeqStart` and comes back in `Started`.
        route: Vec<u8>,
    },
    Cancel {
        task: TaskHandle,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunnerStatus {
    Loading,
    Loaded,
    Ready,
    Failed(String),
}

/// How a sequence ended, on its last chunk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ChunkEnd {
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Of the completion, the tokens that were reasoning (`<think>…</think>`).
    pub reasoning_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Complete {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromRunner {
    Hello {
        pid: u32,
        protocol: u32,
    },
    Listening {
        port: u16,
    },
    /// Bytes of weights the loaded stage holds (sent before `Status(Loaded)`).
    Weights {
        bytes: u64,
    },
    Status(RunnerStatus),
    /// The model file no longer matches its sha256 (found after non-finite output); a `Status(Failed)` naming it
    /// follows. The worker stops trusting its verification of the file, so the next runner does not load it.
    FileCorrupt {
        path: PathBuf,
    },
    /// Rank 0 admitted the task.
    Accepted {
        task: TaskHandle,
    },
    /// Last rank: a sequence reached it for the first time, with the route rank 0's worker gave it.
    Started {
        task: TaskHandle,
        route: Vec<u8>,
    },
    /// Last rank: one sampled token and the text it made safe to show; `seq` counts from 0 per task. The last chunk
    /// of a finished sequence carries `end` (a `TaskDone` follows it). A token whose text is part reasoning, part
    /// answer comes as two chunks with the same token.
    Chunk {
        task: TaskHandle,
        seq: u64,
        token: u32,
        text: String,
        end: Option<ChunkEnd>,
        /// When the sequence asked for logprobs (`GenerateParams::logprobs`); never on an end-of-generation token,
        /// which no dialect shows.
        logprobs: Option<ChunkLogprobs>,
        /// The text is the model's reasoning (`<think>…</think>`), not its answer.
        thinking: bool,
    },
    /// Last rank: the sequence ended in tool calls (its last chunk, instead of a `Chunk` with `end`).
    ToolCalls {
        task: TaskHandle,
        seq: u64,
        calls: Vec<ParsedCall>,
        end: ChunkEnd,
    },
    TaskDone {
        task: TaskHandle,
        outcome: Outcome,
    },
    /// Every second, from a thread independent of compute: the runner is alive, and how far its compute loop got.
    /// The worker declares it hung when these stop, or when it sits inside one step for too long (§13).
    Heartbeat {
        /// Units of progress this rank has made: forward passes (prefill chunks and decode steps) finished and every
        /// layer run inside one, so a long prefill moves it layer by layer and is never mistaken for a hang.
        steps: u64,
        /// The rank is inside a step now (not waiting for its neighbours or for work).
        stepping: bool,
    },
}

/// One token's log-probability with its bytes (the API node has no tokenizer to spell it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobEntry {
    pub token: u32,
    /// What the token prints as; may be part of a UTF-8 character.
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The sampled token's entry and the most likely alternatives, most likely first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkLogprobs {
    pub chosen: LogprobEntry,
    pub top: Vec<LogprobEntry>,
}

/// Sent by the dialing rank on a new ring edge (inside TLS with a cluster key); the acceptor closes the edge on any
/// mismatch, a wrong token included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    pub instance: String,
    pub rank: u32,
    pub world_size: u32,
    pub model: String,
    pub token: Token,
}

/// What rank 0 tells every later rank the first time a sequence appears.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqStart {
    pub task: TaskHandle,
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub route: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FwdSeq {
    pub slot: SeqSlot,
    pub pos_start: usize,
    pub n_tokens: usize,
    /// The last rank samples a token for this sequence after this step (its prompt is then fully fed).
    pub sample: bool,
    pub start: Option<SeqStart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DataFrame {
    Handshake(Handshake),
    /// Rank i → i+1: activations of every sequence's new tokens, back to back (n_tokens × hidden each).
    Forward {
        microbatch: u64,
        seqs: Vec<FwdSeq>,
        activations: Vec<f32>,
    },
    /// Last rank → rank 0: the token sampled for each sequence that sampled; `done` ends the sequence.
    Back {
        microbatch: u64,
        tokens: Vec<(SeqSlot, u32, bool)>,
    },
    /// Frees a sequence's state on every rank it passes.
    Release {
        slot: SeqSlot,
    },
}
