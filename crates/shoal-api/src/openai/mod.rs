//! OpenAI's dialects: Chat Completions ([`chat`]), Completions ([`completions`]) and Responses ([`responses`]). They
//! share the error shape ([`crate::error::Dialect::OpenAi`]), the sampling fields and the finish reasons.

pub mod chat;
pub mod chat_request;
pub mod completions;
pub mod responses;
mod responses_events;
pub mod responses_request;

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
        "completion_tokens_details": { "reasoning_tokens": usage.reasoning_tokens },
    })
}

/// The OpenAI routes beyond Chat Completions (which lib.rs registers): Completions and Responses.
pub fn routes() -> axum::Router<crate::Api> {
    use axum::routing::post;
    axum::Router::new()
        .route("/v1/completions", post(completions::create))
        .route("/v1/responses", post(responses::create))
        // The handlers read the body with their own limit, so an oversized body is a 413 in the OpenAI shape.
        .layer(axum::extract::DefaultBodyLimit::disable())
}
