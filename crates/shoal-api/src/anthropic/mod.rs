//! Anthropic Messages (SYSTEM.md §11.1): `POST /v1/messages`, streaming (SSE with named events) or not, and
//! `POST /v1/messages/count_tokens`. Errors are in Anthropic's shape ([`Dialect::Anthropic`]). The `x-api-key` and
//! `anthropic-version` headers Anthropic's clients send are accepted (and `x-api-key` checked where the node needs a
//! key, by the shared authentication).

pub mod reply;
pub mod request;

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use self::reply::{MessageStream, Reply, message_json};
use self::request::{parse_count_tokens, parse_messages};
use crate::error::{ApiError, Dialect};
use crate::prompts::Count;
use crate::{Api, generation, read_body};

/// The Anthropic routes.
pub fn routes() -> axum::Router<Api> {
    axum::Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

async fn messages(AxumState(api): AxumState<Api>, request: Request) -> Response {
    answer(api, request)
        .await
        .unwrap_or_else(|e| Dialect::Anthropic.error_response(&e))
}

async fn answer(api: Api, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let parsed = parse_messages(&body)?;
    let stops = parsed.params.stop.clone();
    let started = generation::start(&api, parsed.params).await?;
    let reply = Reply {
        id: format!("msg_{}", started.handle.command_id),
        model: parsed.model_name,
        stops,
        input_tokens: started.prompt_tokens,
    };
    if parsed.stream {
        return Ok(generation::stream(started.handle, MessageStream::new(reply)).await);
    }
    let mut handle = started.handle;
    let done = generation::collect(&mut handle).await?;
    Ok(Json(message_json(&reply, &done)).into_response())
}

async fn count_tokens(AxumState(api): AxumState<Api>, request: Request) -> Response {
    count(api, request)
        .await
        .unwrap_or_else(|e| Dialect::Anthropic.error_response(&e))
}

/// The prompt's length as the model's tokenizer and chat template make it: the `input_tokens` a generation with the
/// same body reports.
async fn count(api: Api, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let mut params = parse_count_tokens(&body)?.params;
    let card = {
        let state = api.cluster.view().state;
        shoal_core::placement::resolve_card(&state, &params.model)
            .ok_or_else(|| ApiError::model_not_found(params.model.as_str()))?
    };
    generation::fill_defaults(&mut params, &card);
    // Counted whatever its length, as the client asks for the count (the body limit bounds it).
    match api.prompts.count(&card, &params, usize::MAX).await? {
        Some(Count::Exactly(n) | Count::AtLeast(n)) => Ok(Json(json!({ "input_tokens": n })).into_response()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "cannot_count",
            format!(
                "this node does not hold the file of `{}`, so it cannot count its tokens; ask a node that serves it",
                card.id
            ),
        )),
    }
}
