//! The node's HTTP endpoints that belong to the cluster (§11.1): `GET /node_id`, `/state`, `/status`, `/events` and
//! `/health` (200 once the node is ready and has caught up, 503 before; open even with `--api-key`, for probes).

use axum::Json;
use axum::extract::{Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_cluster::{ClusterHandle, EVENTS_MAX, NodeStatus};

use crate::error;
use crate::error::ApiError;

fn not_ready() -> Response {
    ApiError::not_ready().into_response()
}

/// `GET /health`: 200 `{"status":"ok",…}` once the node is ready (it follows a master and has caught up with its
/// State), 503 in the same shape before.
pub async fn health(AxumState(api): AxumState<crate::Api>) -> Response {
    let (code, body) = health_of(&api.cluster.view().status, api.streams.is_stopping());
    (code, Json(body)).into_response()
}

/// 503 while starting and once stopping (load balancers move on), 200 in between.
fn health_of(status: &NodeStatus, stopping: bool) -> (StatusCode, serde_json::Value) {
    let ready = status.ready && !stopping;
    let body = serde_json::json!({
        "status": if stopping { "stopping" } else if status.ready { "ok" } else { "starting" },
        "node_id": status.node.to_string(),
        "role": status.role,
        "idx": status.pos.idx,
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

pub async fn node_id(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
    Json(cluster.view().status.node.to_string()).into_response()
}

pub async fn state(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
    let view = cluster.view();
    if !view.status.ready {
        return not_ready();
    }
    let headers = [
        ("x-shoal-idx", view.state.pos.idx.to_string()),
        ("x-shoal-session", view.state.session.to_string()),
    ];
    (headers, Json(&*view.state)).into_response()
}

pub async fn status(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
    Json(cluster.view().status).into_response()
}

#[derive(Deserialize)]
pub struct EventsQuery {
    /// Events with idx > after; default: from the start of this node's retained log (a node that bootstrapped
    /// from a snapshot holds only what followed it). `since` is §11.1's name for it.
    #[serde(alias = "since")]
    after: Option<i64>,
    #[serde(default = "events_max", alias = "limit")]
    max: usize,
}

fn events_max() -> usize {
    EVENTS_MAX
}

pub async fn events(
    AxumState(cluster): AxumState<ClusterHandle>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(q) => q,
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("after/max: {}", rejection.body_text()),
            );
        }
    };
    if !cluster.view().status.ready {
        return not_ready();
    }
    if query.after.is_some_and(|a| a < -1) {
        return error(StatusCode::BAD_REQUEST, "invalid_request_error", "after: must be ≥ -1");
    }
    match cluster.events(query.after, query.max.min(EVENTS_MAX)).await {
        Ok(Ok(events)) => Json(events).into_response(),
        Ok(Err(message)) => error(StatusCode::GONE, "pruned", message),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "stopping", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_503_until_the_node_is_ready_and_once_it_stops() {
        let mut status = NodeStatus {
            node: shoal_types::ids::NodeId::from_bytes([0x17; 16]),
            role: "campaigning",
            session: None,
            ready: false,
            pos: shoal_types::ids::Pos::EMPTY,
            storage: None,
        };
        let (code, body) = health_of(&status, false);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "starting");
        status.ready = true;
        status.role = "follower";
        let (code, body) = health_of(&status, false);
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            (body["status"].as_str(), body["role"].as_str()),
            (Some("ok"), Some("follower"))
        );
        let (code, body) = health_of(&status, true);
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "stopping");
    }
}
