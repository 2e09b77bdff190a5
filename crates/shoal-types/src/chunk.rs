//! Chunks: what a runner streams back to the API node that owns a request (SYSTEM.md §2.5). Transient.

use serde::{Deserialize, Serialize};

use crate::model::ErrorKind;
use crate::params::ToolCall;

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub enum Chunk {
    Token {
        text: String,
        token_id: u32,
        is_thinking: bool,
        logprob: Option<f32>,
        top_logprobs: Vec<TopLogprob>,
        finish: Option<FinishReason>,
        usage: Option<Usage>,
        stats: Option<GenStats>,
        /// The sampled token's own bytes (`text` is what it made safe to show, not the token), filled only with
        /// `logprob`: dialects spell the token and its OpenAI `bytes` from it.
        token_bytes: Vec<u8>,
    },
    ToolCall {
        calls: Vec<ToolCall>,
        usage: Option<Usage>,
        stats: Option<GenStats>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
    PrefillProgress {
        processed_tokens: u32,
        total_tokens: u32,
    },
}

impl Chunk {
    /// A final chunk ends its stream: a token with a finish reason, a tool call, or an error.
    pub fn is_final(&self) -> bool {
        match self {
            Chunk::Token { finish, .. } => finish.is_some(),
            Chunk::ToolCall { .. } | Chunk::Error { .. } => true,
            Chunk::PrefillProgress { .. } => false,
        }
    }
}

#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub token_id: u32,
    pub logprob: f32,
    /// What the token prints as; may be part of a UTF-8 character (`token` is its lossy spelling).
    pub bytes: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum FinishReason {
    /// The model ended its answer (an end-of-generation token).
    Stop,
    Length,
    ContentFilter,
    /// One of the request's stop strings: its index in `GenerationParams::stop` (Anthropic's `stop_sequence` names
    /// it; OpenAI's dialects say `stop` for either). Last, so the encoding of the others is unchanged.
    StopSequence(u32),
}

/// Token counts as OpenAI reports them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub cached_tokens: u32,
    pub reasoning_tokens: u32,
}

#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct GenStats {
    pub prompt_tps: f32,
    pub generation_tps: f32,
    pub peak_memory_bytes: u64,
    pub prefix_cache_hit: PrefixCacheHit,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum PrefixCacheHit {
    None,
    Partial,
    Exact,
}
