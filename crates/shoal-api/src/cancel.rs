//! `POST /v1/cancel/{command_id}` (§11.1): a stream open here is cancelled and closed (its client sees `cancelled`);
//! a task known only to State is cancelled; anything else is 404.

use axum::Json;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use shoal_types::ids::CommandId;

use crate::{Api, error};

/// The prefixes each dialect puts before a command id in the ids it answers with; `cancel` accepts them all.
const ID_PREFIXES: [&str; 4] = ["chatcmpl-", "cmpl-", "msg_", "resp_"];

/// Accepts the ids the dialects answer with (`chatcmpl-<command id>`, `msg_<command id>`, ...) too.
pub async fn cancel(AxumState(api): AxumState<Api>, Path(raw): Path<String>) -> Response {
    let text = ID_PREFIXES.iter().find_map(|p| raw.strip_prefix(p)).unwrap_or(&raw);
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
