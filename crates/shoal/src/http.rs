//! The node's HTTP endpoints that belong to the cluster (§11.1): `GET /node_id`, `/state`, `/status`, `/events`,
//! `/metrics`, and the placement endpoints of [`crate::instances`]. The OpenAI API joins this router with its own
//! issue.

use std::fmt::Write as _;
use std::net::SocketAddr;

use axum::extract::{Query, State as AxumState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shoal_cluster::{ClusterHandle, EVENTS_MAX};

use crate::instances;

pub use shoal_api::error;

fn not_ready() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "this node has not caught up with the cluster yet",
    )
}

/// What `/metrics` reports beyond the cluster's own counters.
#[derive(Clone, Default)]
pub struct MetricsSources {
    pub api: Option<shoal_api::Api>,
    pub runners: Option<shoal_worker::RunnerReports>,
    pub worker: Option<std::sync::Arc<shoal_worker::WorkerCounters>>,
}

/// The node's whole HTTP surface: the cluster's endpoints, the placement endpoints and (unless `--no-api`) the
/// OpenAI API.
pub fn router(cluster: ClusterHandle, sources: MetricsSources) -> Router {
    let metrics_cluster = cluster.clone();
    let api = sources.api.clone();
    let mut router = Router::new()
        .route("/node_id", get(node_id))
        .route("/state", get(state))
        .route("/status", get(status))
        .route("/events", get(events))
        .route(
            "/metrics",
            get(move || metrics(metrics_cluster.clone(), sources.clone())),
        )
        .route("/place_instance", post(instances::place_instance))
        .route("/instance", post(instances::create_instance))
        .route("/instance/previews", get(instances::previews))
        .route("/instance/await", get(instances::await_instance))
        .route(
            "/instance/{id}",
            get(instances::get_instance).delete(instances::delete_instance),
        )
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(cluster.clone());
    if let Some(api) = api {
        router = router.merge(shoal_api::router(api));
    }
    router
}

/// Binds the API port; the caller logs the bound address (tests start nodes on port 0 and read it).
pub async fn bind(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--api-port {port}: cannot listen on {addr}: {e}"))
}

async fn node_id(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
    Json(cluster.view().status.node.to_string()).into_response()
}

async fn state(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
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

async fn status(AxumState(cluster): AxumState<ClusterHandle>) -> Response {
    Json(cluster.view().status).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
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

async fn events(
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

/// Prometheus text exposition.
async fn metrics(cluster: ClusterHandle, sources: MetricsSources) -> Response {
    let view = cluster.view();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TYPE shoal_state_idx gauge\nshoal_state_idx {}",
        view.status.pos.idx
    );
    let _ = writeln!(
        out,
        "# TYPE shoal_ready gauge\nshoal_ready {}",
        u8::from(view.status.ready)
    );
    let _ = writeln!(
        out,
        "# TYPE shoal_is_master gauge\nshoal_is_master {}",
        u8::from(view.status.role == "master")
    );
    let _ = writeln!(out, "# TYPE shoal_net_messages_total counter");
    for (key, c) in cluster.counters().snapshot() {
        for (outcome, value) in [
            ("received", c.received),
            ("dropped_full", c.dropped_full),
            ("malformed", c.malformed),
            ("incompatible", c.incompatible),
            ("oversized", c.oversized),
        ] {
            let _ = writeln!(
                out,
                "shoal_net_messages_total{{key=\"{key}\",outcome=\"{outcome}\"}} {value}"
            );
        }
    }
    if let Some(api) = &sources.api {
        out.push_str(&api.metrics());
    }
    if let Some(runners) = &sources.runners {
        let runners = runners.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let _ = writeln!(out, "# TYPE shoal_runner_weight_bytes gauge");
        for r in runners.values() {
            let _ = writeln!(
                out,
                "shoal_runner_weight_bytes{{runner=\"{}\",instance=\"{}\",layers=\"{}-{}\",pid=\"{}\"}} {}",
                r.runner, r.instance, r.layer_start, r.layer_end, r.pid, r.weight_bytes
            );
        }
        // Resident and peak resident memory of each runner process, to hold against its slice of the weights
        // (mapped, so a stage's resident memory is about its own layers plus its KV cache).
        let memory: Vec<_> = runners
            .values()
            .filter_map(|r| process_memory(r.pid).map(|m| (r, m)))
            .collect();
        for (name, pick) in [("shoal_runner_rss_bytes", 0usize), ("shoal_runner_peak_rss_bytes", 1)] {
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (r, m) in &memory {
                let _ = writeln!(
                    out,
                    "{name}{{runner=\"{}\",instance=\"{}\",layers=\"{}-{}\",pid=\"{}\"}} {}",
                    r.runner, r.instance, r.layer_start, r.layer_end, r.pid, m[pick]
                );
            }
        }
    }
    if let Some(worker) = &sources.worker {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = writeln!(
            out,
            "# TYPE shoal_worker_chunks_total counter\nshoal_worker_chunks_total {}",
            worker.chunks.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE shoal_worker_chunks_after_cancel_total counter\nshoal_worker_chunks_after_cancel_total {}",
            worker.chunks_after_cancel.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# TYPE shoal_chunks_unrouted_total counter\nshoal_chunks_unrouted_total {}",
        cluster.chunks_unrouted()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// [resident, peak resident] bytes of a process (`VmRSS`, `VmHWM` of /proc/PID/status); `None` where there is no
/// procfs or the process is gone.
fn process_memory(pid: u32) -> Option<[u64; 2]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some([field("VmRSS:")?, field("VmHWM:")?])
}
