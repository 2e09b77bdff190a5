//! Every error the API answers with, described once ([`ApiError`]: status, machine code, message, field) and written
//! in each dialect's shape ([`Dialect`]): OpenAI's `{"error":{"message","type","param","code"}}` (Chat Completions,
//! Completions, Responses and the cluster's own endpoints), Anthropic's `{"type":"error","error":{"type","message"}}`
//! and Ollama's `{"error":"…"}`.
//!
//! The mapping from the registry's close reasons and the master's rejections to HTTP statuses (SYSTEM.md §11.3's
//! table) lives here, in the HTTP crate; the pure core only says *why* a stream closed.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_core::registry::CloseReason;
use shoal_types::command::RejectReason;

/// A request that cannot be served as sent: 400 naming the field (`messages[1].role`, `temperature`).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub field: String,
    pub message: String,
}

impl BadRequest {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error under a parent field (`stream_options` + `include_usage` → `stream_options.include_usage`).
    pub fn within(self, parent: &str) -> Self {
        if self.field.is_empty() {
            return BadRequest::new(parent, self.message);
        }
        BadRequest::new(format!("{parent}.{}", self.field), self.message)
    }
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

/// `Retry-After` of a node whose store cannot write: it probes every second, but space rarely returns that fast.
const STORAGE_RETRY_AFTER_S: u32 = 5;

/// One error, before a dialect writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Machine-readable: `model_not_found`, `context_length_exceeded`, `invalid_request`, `cancelled`, ...
    pub code: &'static str,
    pub message: String,
    /// The request field at fault, where one is.
    pub param: Option<String>,
    /// Seconds the client should wait before trying again (`Retry-After`), for an error that passes by itself.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::from(BadRequest::new(field, message))
    }

    pub fn model_not_found(name: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!("`model`: no model card is named `{name}`"),
            )
        }
    }

    /// The prompt does not leave room for one generated token in the model's context (checked before any runner
    /// sees the request).
    /// `at_least`: the count stops once past the context, so it is a lower bound.
    pub fn context_length_exceeded(at_least: usize, context_length: u32) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            shoal_models::prompt::too_long(at_least, context_length as usize),
        )
    }

    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    }

    /// The node already holds `limit` open streams (`--max-streams`).
    pub fn too_many_streams(limit: usize) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                format!("this node already serves {limit} streams (its --max-streams); retry shortly"),
            )
        }
    }

    /// The client took longer than the server's read timeout to send the request's body.
    pub fn body_timeout() -> Self {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive in time (the node's --http-read-timeout)",
        )
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "this node needs an API key: send `Authorization: Bearer <key>` or `x-api-key: <key>`",
        )
    }

    /// The node's store cannot write (a full disk); `/status` names the cause until it recovers by itself.
    pub fn storage_failed(cause: &str) -> Self {
        ApiError {
            retry_after: Some(STORAGE_RETRY_AFTER_S),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                format!(
                    "this node cannot write its store and takes no new work until it can ({cause}); another node of the cluster can serve this request"
                ),
            )
        }
    }

    pub fn not_ready() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this node has not caught up with the cluster yet",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// A request that arrives while the node is stopping.
    pub fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "this node is shutting down; send the request to another node",
        )
    }

    /// The registry went away under a handler: the node is stopping.
    pub fn stopping() -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopping", "the node is stopping")
    }

    /// SYSTEM.md §11.3's table: how a stream that closed before its final chunk is answered.
    pub fn from_close(reason: &CloseReason) -> Self {
        let (status, code) = match reason {
            // A generation for a model nothing serves (or the master does not know) is the client's 404.
            CloseReason::Rejected(RejectReason::NoInstance { .. } | RejectReason::UnknownModel { .. }) => {
                (StatusCode::NOT_FOUND, "model_not_found")
            }
            CloseReason::Rejected(reject) => return ApiError::from_reject(reject),
            CloseReason::NotAccepted => (StatusCode::GATEWAY_TIMEOUT, "not_accepted"),
            CloseReason::InstanceGone | CloseReason::TaskGone => {
                (StatusCode::SERVICE_UNAVAILABLE, "instance_unavailable")
            }
            CloseReason::Failed { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "generation_failed"),
            CloseReason::Refused { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            CloseReason::Cancelled => (StatusCode::CONFLICT, "cancelled"),
            CloseReason::Incomplete | CloseReason::StreamGap => (StatusCode::BAD_GATEWAY, "stream_incomplete"),
            CloseReason::NodeStopping { .. } => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            // The client is the cause: it did not read in time (written in band, as the stream is well under way).
            CloseReason::ClientTooSlow => (StatusCode::REQUEST_TIMEOUT, "client_too_slow"),
            // Nothing is written to a client that is gone; nginx's 499 is for logs only.
            CloseReason::ClientGone => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "client_gone",
            ),
        };
        ApiError::new(status, code, reason.message())
    }

    /// The master's refusal of a placement or model command: 404 for what does not exist, 409 for what is in use,
    /// 400 otherwise (placing a model the master does not know is a placement error, §11.1).
    pub fn from_reject(reason: &RejectReason) -> Self {
        let (status, code) = match reason {
            RejectReason::NoInstance { .. } => (StatusCode::NOT_FOUND, "model_not_found"),
            RejectReason::UnknownModel { .. } | RejectReason::Placement(_) => {
                (StatusCode::BAD_REQUEST, "placement_error")
            }
            RejectReason::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            RejectReason::InUse { .. } => (StatusCode::CONFLICT, "in_use"),
            RejectReason::InvalidInstance { .. } | RejectReason::Invalid { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
        };
        ApiError::new(status, code, reason.to_string())
    }

    /// OpenAI's error `type`: by status, as OpenAI's own server sets it.
    fn openai_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 if self.code == "model_not_found" => "invalid_request_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "requests",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// Anthropic's error `type`s (<https://docs.anthropic.com/en/api/errors>).
    fn anthropic_type(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(bad: BadRequest) -> Self {
        ApiError {
            message: bad.to_string(),
            param: Some(bad.field),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "")
        }
    }
}

/// The wire dialects; each writes errors (and streams) its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions, Completions, Responses, and the cluster's own endpoints.
    OpenAi,
    Anthropic,
    Ollama,
}

impl Dialect {
    /// The dialect of a request path, for answers given before any handler runs (authentication, unknown routes).
    pub fn of_path(path: &str) -> Dialect {
        if path.starts_with("/v1/messages") {
            Dialect::Anthropic
        } else if path.starts_with("/api/") || path.starts_with("/ollama/api/") {
            Dialect::Ollama
        } else {
            Dialect::OpenAi
        }
    }

    /// The error object, as the body of an error response and as an in-band stream error.
    pub fn error_body(self, e: &ApiError) -> Value {
        match self {
            Dialect::OpenAi => json!({ "error": {
                "message": e.message, "type": e.openai_type(), "param": e.param, "code": e.code,
            }}),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": { "type": e.anthropic_type(), "message": e.message },
            }),
            Dialect::Ollama => json!({ "error": e.message }),
        }
    }

    pub fn error_response(self, e: &ApiError) -> Response {
        let mut response = (e.status, Json(self.error_body(e))).into_response();
        if let Some(seconds) = e.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// An error for the OpenAI-shaped endpoints (the cluster's own and OpenAI's), so handlers can `?` and return it.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Dialect::OpenAi.error_response(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dialect_writes_its_own_shape() {
        let e = ApiError::bad_request("max_tokens", "is required");
        let openai = Dialect::OpenAi.error_body(&e);
        assert_eq!(openai["error"]["param"], "max_tokens");
        assert_eq!(openai["error"]["type"], "invalid_request_error");
        assert_eq!(openai["error"]["code"], "invalid_request");
        let anthropic = Dialect::Anthropic.error_body(&e);
        assert_eq!(anthropic["type"], "error");
        assert_eq!(anthropic["error"]["type"], "invalid_request_error");
        assert!(
            anthropic["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("max_tokens"))
        );
        let ollama = Dialect::Ollama.error_body(&e);
        assert!(ollama["error"].as_str().is_some_and(|m| m.contains("max_tokens")));
    }

    #[test]
    fn close_reasons_follow_the_spec_table() {
        let cases = [
            (CloseReason::NotAccepted, 504, "not_accepted"),
            (CloseReason::InstanceGone, 503, "instance_unavailable"),
            (CloseReason::TaskGone, 503, "instance_unavailable"),
            (CloseReason::Failed { message: "boom".into() }, 500, "generation_failed"),
            (
                CloseReason::Refused {
                    message: "too long".into(),
                },
                400,
                "invalid_request",
            ),
            (CloseReason::Cancelled, 409, "cancelled"),
            (CloseReason::Incomplete, 502, "stream_incomplete"),
            (CloseReason::StreamGap, 502, "stream_incomplete"),
            (CloseReason::ClientGone, 499, "client_gone"),
            (CloseReason::ClientTooSlow, 408, "client_too_slow"),
            (
                CloseReason::NodeStopping {
                    message: "the node is shutting down".into(),
                },
                503,
                "shutting_down",
            ),
            (
                CloseReason::Rejected(RejectReason::NoInstance {
                    model: shoal_types::ModelId::new("m"),
                }),
                404,
                "model_not_found",
            ),
            (
                CloseReason::Rejected(RejectReason::UnknownModel {
                    model: shoal_types::ModelId::new("m"),
                }),
                404,
                "model_not_found",
            ),
            (CloseReason::Rejected(RejectReason::NotFound), 404, "not_found"),
        ];
        for (reason, status, code) in cases {
            let e = ApiError::from_close(&reason);
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{reason:?}");
            assert_eq!(e.message, reason.message());
        }
        let failed = ApiError::from_close(&CloseReason::Failed {
            message: "the runner died".into(),
        });
        assert_eq!(failed.message, "the runner died");
        assert_eq!(Dialect::Anthropic.error_body(&failed)["error"]["type"], "api_error");
        assert_eq!(Dialect::OpenAi.error_body(&failed)["error"]["type"], "server_error");
    }

    #[test]
    fn rejected_commands_follow_the_placement_endpoints_table() {
        let model = shoal_types::ModelId::new("m");
        let cases = [
            (
                RejectReason::NoInstance { model: model.clone() },
                404,
                "model_not_found",
            ),
            (RejectReason::UnknownModel { model }, 400, "placement_error"),
            (RejectReason::NotFound, 404, "not_found"),
            (
                RejectReason::InUse {
                    model: shoal_types::ModelId::new("m"),
                },
                409,
                "in_use",
            ),
            (RejectReason::Invalid { message: "bad".into() }, 400, "invalid_request"),
        ];
        for (reason, status, code) in cases {
            let e = ApiError::from_reject(&reason);
            assert_eq!((e.status.as_u16(), e.code), (status, code), "{reason:?}");
            assert_eq!(e.message, reason.to_string());
        }
    }

    #[test]
    fn paths_pick_their_dialect() {
        assert_eq!(Dialect::of_path("/v1/messages/count_tokens"), Dialect::Anthropic);
        assert_eq!(Dialect::of_path("/api/chat"), Dialect::Ollama);
        assert_eq!(Dialect::of_path("/ollama/api/tags"), Dialect::Ollama);
        assert_eq!(Dialect::of_path("/v1/responses"), Dialect::OpenAi);
        assert_eq!(Dialect::of_path("/state"), Dialect::OpenAi);
    }
}
