//! Every HTTP endpoint of a node (SYSTEM.md §11): the dialects people's tools speak, each a module that parses its
//! request into `GenerationParams` and writes the stream's events its own way ([`openai`], [`anthropic`],
//! [`ollama`]), over one shared path ([`generation`]) and the stream registry ([`streams`]); the cluster's own
//! endpoints ([`cluster`], [`instances`], [`models`], [`cancel`], [`metrics`]); the web dashboard and its live feed
//! ([`dashboard`]); and access control ([`access`]).
//!
//! A request becomes [`GenerationParams`](shoal_types::params::GenerationParams), is registered, and its
//! `TextGeneration` command goes to the master. Chunks arrive from the pipeline's last rank straight into the
//! registry; the registry closes the stream when State says its task or instance is gone, whichever way this node
//! learned it.

pub mod access;
pub mod anthropic;
mod cancel;
pub mod cluster;
pub mod commands;
pub mod dashboard;
pub mod error;
pub mod fields;
pub mod generation;
pub mod instances;
pub mod logprobs;
pub mod metrics;
mod models;
pub mod ollama;
pub mod openai;
pub mod prompts;
pub mod server;
pub mod streams;
pub mod structured;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, Request};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use shoal_cluster::ClusterHandle;

pub use access::Access;
pub use error::{ApiError, BadRequest, Dialect};
pub use models::all_cards;
pub use streams::{StreamStats, Streams};

/// The OpenAI error shape (§11.1) for the cluster's own endpoints.
pub fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

/// Reads a request body of at most [`openai::MAX_BODY_BYTES`]; more is a 413.
pub async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let deadline = server::read_deadline(&request);
    let read = axum::body::to_bytes(request.into_body(), openai::MAX_BODY_BYTES);
    let read = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline.into(), read)
            .await
            .map_err(|_| ApiError::body_timeout())?,
        None => read.await,
    };
    read.map_err(|_| ApiError::payload_too_large(openai::MAX_BODY_BYTES))
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
    pub access: Arc<Access>,
    pub metrics: Arc<metrics::Metrics>,
}

/// The handlers of the cluster's own endpoints need only the cluster.
impl FromRef<Api> for ClusterHandle {
    fn from_ref(api: &Api) -> ClusterHandle {
        api.cluster.clone()
    }
}

impl Api {
    /// Starts the registry (on the current tokio runtime) and installs its chunk sink. `models`: the node's model
    /// store (for `POST /models/add`, Ollama's pull and prompt counting); `collectors`: the binary's own `/metrics`
    /// sources.
    pub fn start(
        cluster: ClusterHandle,
        stream_ttl_ms: u64,
        models: Option<Arc<shoal_models::ModelStore>>,
        access: Access,
        collectors: Vec<Box<dyn prometheus_client::collector::Collector>>,
    ) -> Api {
        let streams = Streams::start(cluster.clone(), stream_ttl_ms);
        let metrics = metrics::Metrics::new(cluster.clone(), streams.clone(), collectors);
        Api {
            cluster,
            streams,
            prompts: Arc::new(prompts::Prompts::new(models.clone())),
            models,
            access: Arc::new(access),
            metrics: Arc::new(metrics),
        }
    }
}

/// The node's whole HTTP surface.
pub fn router(api: Api) -> Router {
    let cors = api.access.cors();
    Router::new()
        .route("/node_id", get(cluster::node_id))
        .route("/state", get(cluster::state))
        .route("/status", get(cluster::status))
        .route("/events", get(cluster::events))
        .route("/health", get(cluster::health))
        .route("/metrics", get(metrics::metrics))
        .route("/place_instance", post(instances::place_instance))
        .route("/instance", post(instances::create_instance))
        .route("/instance/previews", get(instances::previews))
        .route("/instance/await", get(instances::await_instance))
        .route(
            "/instance/{id}",
            get(instances::get_instance).delete(instances::delete_instance),
        )
        .route("/v1/models", get(models::models_openai))
        .route("/models", get(models::list_models))
        .route("/models/add", post(models::add))
        .route("/models/{*id}", delete(models::delete))
        .route("/v1/cancel/{command_id}", post(cancel::cancel))
        .route("/v1/chat/completions", post(openai::chat::completions))
        .route("/ollama/v1/chat/completions", post(openai::chat::completions))
        .merge(openai::routes())
        .merge(anthropic::routes())
        .merge(ollama::routes())
        .merge(dashboard::routes())
        .fallback(not_found)
        // Handlers read bodies with their own limit, so an oversized body is a 413 in the dialect's shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(api.clone(), access::require_key))
        .layer(cors)
        .with_state(api)
}

async fn not_found(uri: Uri) -> Response {
    let e = ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {}", uri.path()),
    );
    Dialect::of_path(uri.path()).error_response(&e)
}
