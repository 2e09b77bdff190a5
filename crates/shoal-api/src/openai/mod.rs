//! OpenAI's dialects: Chat Completions ([`chat`]), Completions ([`completions`]) and Responses ([`responses`]). They
//! share the error shape ([`crate::error::Dialect::OpenAi`]), the sampling fields and the finish reasons.

pub mod chat;
pub mod chat_request;

use serde_json::{Value, json};
use shoal_types::chunk::{FinishReason, Usage};

/// Bodies larger than this are refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = shoal_types::params::MAX_PARAMS_BYTES;

/// `finish_reason` as Chat Completions and Completions write it.
pub fn finish_text(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
    }
}

/// `usage` as Chat Completions and Completions write it.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

/// The OpenAI routes beyond Chat Completions.
pub fn routes() -> axum::Router<crate::Api> {
    axum::Router::new()
}
