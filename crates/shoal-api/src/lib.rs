//! The OpenAI-compatible API of every node (SYSTEM.md §11): `POST /v1/chat/completions` (streaming and not),
//! `GET /v1/models` and `/models`, `POST /models/add` and `DELETE /models/{id}` ([`models`]),
//! `POST /v1/cancel/{command_id}`, over the stream registry of [`streams`].
//!
//! A request becomes [`GenerationParams`](shoal_types::params::GenerationParams) ([`request`]), is registered, and
//! its `TextGeneration` command goes to the master. Chunks arrive from the pipeline's last rank straight into the
//! registry; the registry closes the stream when State says its task or instance is gone, whichever way this node
//! learned it.

pub mod anthropic;
pub mod commands;
pub mod error;
pub mod fields;
pub mod generation;
mod models;
pub mod ollama;
pub mod openai;
pub mod prompts;
pub mod streams;

use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use shoal_cluster::ClusterHandle;
use shoal_types::ids::CommandId;
use shoal_types::{ModelCard, State};

pub use error::{ApiError, BadRequest, Dialect};
pub use streams::{StreamStats, Streams};

/// The OpenAI error shape (§11.1) for the cluster's own endpoints.
pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// Reads a request body of at most [`openai::MAX_BODY_BYTES`]; more is a 413.
pub async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(request.into_body(), openai::MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::payload_too_large(openai::MAX_BODY_BYTES))
}

/// What the API's handlers share.
#[derive(Clone)]
pub struct Api {
    pub cluster: ClusterHandle,
    pub streams: Arc<Streams>,
    /// The node's model store, which `POST /models/add` reads headers and hashes files with; `None` on a node
    /// without one (the endpoint then answers 503).
    pub models: Option<Arc<shoal_models::ModelStore>>,
    /// Tokenizers of the models this node holds, to count prompts.
    pub prompts: Arc<prompts::Prompts>,
}

impl Api {
    /// Starts the registry (on the current tokio runtime) and installs its chunk sink.
    pub fn start(cluster: ClusterHandle, stream_ttl_ms: u64) -> Api {
        let streams = Streams::start(cluster.clone(), stream_ttl_ms);
        Api {
            cluster,
            streams,
            models: None,
            prompts: Arc::new(prompts::Prompts::new(None)),
        }
    }

    /// Gives `POST /models/add` the node's model store.
    pub fn with_models(mut self, models: Arc<shoal_models::ModelStore>) -> Api {
        self.prompts = Arc::new(prompts::Prompts::new(Some(models.clone())));
        self.models = Some(models);
        self
    }

    /// Lines for `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let stats = self.streams.stats();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# TYPE shoal_streams_open gauge\nshoal_streams_open {}",
            stats.open
        );
        let _ = writeln!(
            out,
            "# TYPE shoal_streams_finished_total counter\nshoal_streams_finished_total {}",
            stats.finished
        );
        let _ = writeln!(out, "# TYPE shoal_stream_closes_total counter");
        for (reason, n) in &stats.closes {
            let _ = writeln!(out, "shoal_stream_closes_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# TYPE shoal_chunks_unknown_total counter\nshoal_chunks_unknown_total {}",
            stats.chunks_unknown
        );
        let _ = writeln!(
            out,
            "# TYPE shoal_stream_tokens_total counter\nshoal_stream_tokens_total {}",
            stats.tokens
        );
        stats.ttft.render("shoal_time_to_first_token_seconds", &mut out);
        stats.inter_token.render("shoal_inter_token_seconds", &mut out);
        out
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat::completions))
        .route("/ollama/v1/chat/completions", post(openai::chat::completions))
        .route("/v1/models", get(models_openai))
        .route("/models", get(list_models))
        .route("/models/add", post(models::add))
        .route("/models/{*id}", axum::routing::delete(models::delete))
        .route("/v1/cancel/{command_id}", post(cancel))
        // The handler reads the body with its own limit, so an oversized body is a 413 in the OpenAI shape.
        .layer(DefaultBodyLimit::disable())
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(ollama::routes())
        .with_state(api)
}

/// Every card this node knows: built-ins, then custom cards from State.
pub fn all_cards(state: &State) -> Vec<ModelCard> {
    let mut cards = shoal_types::card::builtin_cards();
    for card in state.model_cards.values() {
        if !cards.iter().any(|c| c.id == card.id) {
            cards.push(card.as_ref().clone());
        }
    }
    cards
}

/// Whether an instance of the model has every runner serving.
fn ready(state: &State, card: &ModelCard) -> bool {
    state.instances.values().any(|i| {
        i.model.id == card.id
            && i.assignments
                .shards
                .keys()
                .all(|r| state.runners.get(r).is_some_and(|rec| rec.status.is_serving()))
    })
}

async fn models_openai(AxumState(api): AxumState<Api>) -> Response {
    let state = api.cluster.view().state;
    let data: Vec<serde_json::Value> = all_cards(&state)
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": c.id.as_str(),
                "object": "model",
                "created": 0,
                "owned_by": "shoal",
                "aliases": c.aliases,
                "n_layers": c.n_layers,
                "storage_size": c.storage_size,
                "context_length": c.context_length,
                "ready": ready(&state, c),
            })
        })
        .collect();
    Json(serde_json::json!({ "object": "list", "data": data })).into_response()
}

async fn list_models(AxumState(api): AxumState<Api>) -> Response {
    Json(all_cards(&api.cluster.view().state)).into_response()
}

/// `POST /v1/cancel/{command_id}` (§11.1): a stream open here is cancelled and closed (its client sees
/// `cancelled`); a task known only to State is cancelled; anything else is 404. Accepts the completion's `id`
/// (`chatcmpl-<command id>`) too.
async fn cancel(AxumState(api): AxumState<Api>, Path(raw): Path<String>) -> Response {
    let text = raw.strip_prefix("chatcmpl-").unwrap_or(&raw);
    let Ok(uuid) = uuid::Uuid::parse_str(text) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("`command_id`: `{raw}` is not a command id"),
        );
    };
    let command_id = CommandId(uuid);
    let body = |message: &str| {
        Json(serde_json::json!({ "message": message, "command_id": command_id.to_string() })).into_response()
    };
    if api.streams.cancel(command_id) {
        return body("cancelled");
    }
    let known = api
        .cluster
        .view()
        .state
        .task_for_command(&command_id)
        .is_some_and(|t| !t.status.is_terminal());
    if known {
        api.streams.cancel_task(command_id);
        return body("cancel requested");
    }
    error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("no running generation has command id {command_id}"),
    )
}
