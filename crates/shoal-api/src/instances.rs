//! Placement and instance endpoints (SYSTEM.md §9, §11.1): `POST /place_instance`, `POST /instance`,
//! `GET/DELETE /instance/{id}`, `GET /instance/previews`, `GET /instance/await`.
//!
//! Every change is a command to the master (§2.4). The handler subscribes to State and to rejections, sends the
//! command, and answers once State shows its effect (reconciled from State, like every side effect) or the master
//! refuses it; it resends the same command id every second meanwhile (commands are idempotent by id), which also
//! carries it across a master change.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_cluster::ClusterHandle;
use shoal_core::placement::{Fresh, PlacementConfig, PlacementRequest, place, resolve_card};
use shoal_types::State;
use shoal_types::command::Command;
use shoal_types::ids::{CommandId, DeploymentId, InstanceId, ModelId, NodeId, RunnerId};
use shoal_types::model::{DeploymentStatus, Instance, Sharding};

use crate::commands::command_and_wait;
use crate::error;

fn invalid(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn not_found(message: impl Into<String>) -> Response {
    error(StatusCode::NOT_FOUND, "not_found", message)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceRequest {
    /// A model id or alias (`model` is accepted too, as in the OpenAI API).
    #[serde(alias = "model")]
    model_id: String,
    #[serde(default = "pipeline")]
    sharding: Sharding,
    #[serde(default = "one")]
    min_nodes: u32,
    #[serde(default)]
    max_nodes: Option<u32>,
    #[serde(default)]
    nodes: Option<Vec<NodeId>>,
}

fn pipeline() -> Sharding {
    Sharding::Pipeline
}

fn one() -> u32 {
    1
}

/// `POST /place_instance`: keep `model_id` placed (a deployment, §8); answers with the first instance.
pub async fn place_instance(
    AxumState(cluster): AxumState<ClusterHandle>,
    body: Result<Json<PlaceRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    if req.model_id.trim().is_empty() {
        return invalid("model_id: must name a model");
    }
    if req.min_nodes == 0 {
        return invalid("min_nodes: must be at least 1");
    }
    if req.max_nodes.is_some_and(|max| max < req.min_nodes) {
        return invalid("max_nodes: must be at least min_nodes");
    }
    let deployment_id = DeploymentId::new_random();
    let command_id = CommandId::new_random();
    let command = Command::PlaceInstance {
        deployment_id,
        model_id: ModelId(req.model_id),
        sharding: req.sharding,
        min_nodes: req.min_nodes,
        max_nodes: req.max_nodes,
        nodes: req.nodes,
    };
    let placed = command_and_wait(&cluster, command_id, command, |state| {
        let deployment = state.deployments.get(&deployment_id)?;
        let instance = deployment.instance.and_then(|id| state.instances.get(&id));
        // The master indexes the deployment and its instance together, but a follower may show the first before
        // the second arrives: answer with both (an instance only goes missing when the deployment is waiting).
        if instance.is_none() && matches!(deployment.status, DeploymentStatus::Placing | DeploymentStatus::Running) {
            return None;
        }
        Some(serde_json::json!({
            "command_id": command_id,
            "deployment_id": deployment_id,
            "instance_id": instance.map(|i| i.id),
            "instance": instance,
        }))
    })
    .await;
    match placed {
        Ok(body) => (StatusCode::CREATED, Json(body)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    instance: Instance,
}

/// `POST /instance`: an explicit, unmanaged instance (§2.4 `CreateInstance`), validated by the master.
pub async fn create_instance(
    AxumState(cluster): AxumState<ClusterHandle>,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    let id = req.instance.id;
    if cluster.view().state.instances.contains_key(&id) {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!("instance {id} already exists"),
        );
    }
    let command = Command::CreateInstance { instance: req.instance };
    let answer = command_and_wait(&cluster, CommandId::new_random(), command, |state| {
        state.instances.get(&id).cloned()
    });
    match answer.await {
        Ok(instance) => (StatusCode::CREATED, Json(&*instance)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn parse_instance_id(text: &str) -> Result<InstanceId, String> {
    text.parse().map_err(|_| format!("instance id {text:?} is not a uuid"))
}

/// `GET /instance/{id}`: the instance with its runners' records.
pub async fn get_instance(AxumState(cluster): AxumState<ClusterHandle>, Path(id): Path<String>) -> Response {
    let id = match parse_instance_id(&id) {
        Ok(id) => id,
        Err(message) => return invalid(message),
    };
    let state = cluster.view().state;
    let Some(instance) = state.instances.get(&id) else {
        return not_found(format!("no instance {id}"));
    };
    let runners: BTreeMap<RunnerId, _> = instance
        .assignments
        .shards
        .keys()
        .filter_map(|r| Some((*r, state.runners.get(r)?.clone())))
        .collect();
    Json(serde_json::json!({ "instance": instance, "runners": runners })).into_response()
}

/// `DELETE /instance/{id}`: deletes the instance and its deployment (§8).
pub async fn delete_instance(AxumState(cluster): AxumState<ClusterHandle>, Path(id): Path<String>) -> Response {
    let id = match parse_instance_id(&id) {
        Ok(id) => id,
        Err(message) => return invalid(message),
    };
    if !cluster.view().state.instances.contains_key(&id) {
        return not_found(format!("no instance {id}"));
    }
    let command = Command::DeleteInstance { instance_id: id };
    let answer = command_and_wait(&cluster, CommandId::new_random(), command, |state| {
        (!state.instances.contains_key(&id)).then_some(())
    });
    match answer.await {
        Ok(()) => Json(serde_json::json!({ "deleted": id })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviewQuery {
    #[serde(alias = "model")]
    model_id: String,
    /// Comma-separated node ids to restrict the previews to.
    #[serde(default)]
    node_ids: Option<String>,
}

/// `GET /instance/previews?model_id=`: `place` on this node's State for every node count `k` (§9), each with its
/// shares or its error. Nothing is sent to the master.
pub async fn previews(
    AxumState(cluster): AxumState<ClusterHandle>,
    query: Result<Query<PreviewQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    let state = cluster.view().state;
    let model_id = ModelId(query.model_id);
    let Some(card) = resolve_card(&state, &model_id) else {
        return not_found(format!("unknown model {model_id}"));
    };
    let nodes = match query.node_ids.as_deref().filter(|s| !s.trim().is_empty()) {
        None => None,
        Some(list) => match list.split(',').map(|n| n.trim().parse::<NodeId>()).collect() {
            Ok(nodes) => Some(nodes),
            Err(e) => return invalid(format!("node_ids: {e}")),
        },
    };
    let cfg = PlacementConfig::default();
    let count = nodes.as_ref().map_or(state.nodes.len(), Vec::len);
    let mut out = Vec::new();
    for k in 1..=count.max(1) as u32 {
        let request = PlacementRequest {
            model_id: card.id.clone(),
            sharding: Sharding::Pipeline,
            min_nodes: k,
            max_nodes: Some(k),
            nodes: nodes.clone(),
        };
        let mut runner_id = RunnerId::new_random;
        let fresh = Fresh {
            instance: InstanceId::new_random(),
            deployment: None,
            now_ms: 0,
            runner_id: &mut runner_id,
        };
        let entry = match place(&request, &state, &cfg, fresh) {
            Ok(placement) => serde_json::json!({
                "nodes": k,
                "shares": placement.shares.iter().map(|s| serde_json::json!({
                    "node": s.node,
                    "layers": s.layers,
                    "weight_bytes": s.weight_bytes,
                    "kv_bytes": s.kv_bytes,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => serde_json::json!({ "nodes": k, "error": e.to_string() }),
        };
        out.push(entry);
    }
    Json(serde_json::json!({ "model_id": card.id, "previews": out })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwaitQuery {
    #[serde(alias = "model")]
    model_id: String,
    #[serde(default = "await_default_seconds")]
    timeout_seconds: u64,
}

fn await_default_seconds() -> u64 {
    60
}

const AWAIT_MAX_SECONDS: u64 = 300;

/// What `GET /instance/await` says about `model` in `state`, if anything yet: an instance whose runners all serve
/// is ready; a failed deployment of the model (with none still trying) is a failure.
fn await_verdict(state: &State, model: &ModelId) -> Option<serde_json::Value> {
    let ready = state.instances.values().find(|i| {
        i.model.id == *model
            && i.assignments
                .shards
                .keys()
                .all(|r| state.runners.get(r).is_some_and(|record| record.status.is_serving()))
    });
    if let Some(instance) = ready {
        return Some(serde_json::json!({ "type": "ready", "instance": instance }));
    }
    let mut deployments = state.deployments.values().filter(|d| d.model_id == *model).peekable();
    deployments.peek()?;
    let mut failed = None;
    for deployment in deployments {
        match &deployment.status {
            DeploymentStatus::Failed { reason } => failed = Some(reason.clone()),
            _ => return None,
        }
    }
    failed.map(|reason| serde_json::json!({ "type": "failed", "reason": reason }))
}

/// `GET /instance/await?model_id=&timeout_seconds=` (0–300): one SSE event once an instance of the model is ready,
/// its deployment failed, or the time is up; re-evaluated on every State change, never on a timer.
pub async fn await_instance(
    AxumState(cluster): AxumState<ClusterHandle>,
    query: Result<Query<AwaitQuery>, QueryRejection>,
) -> Response {
    let Query(query) = match query {
        Ok(query) => query,
        Err(rejection) => return invalid(rejection.body_text()),
    };
    if query.timeout_seconds > AWAIT_MAX_SECONDS {
        return invalid(format!("timeout_seconds: at most {AWAIT_MAX_SECONDS}"));
    }
    let Some(card) = resolve_card(&cluster.view().state, &ModelId(query.model_id.clone())) else {
        return not_found(format!("unknown model {}", query.model_id));
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(query.timeout_seconds);
    let views = cluster.watch();
    let model = card.id;
    let verdicts = futures_util::stream::unfold(Some(views), move |views| {
        let model = model.clone();
        async move {
            let mut views = views?;
            loop {
                if let Some(verdict) = await_verdict(&views.borrow_and_update().state, &model) {
                    return Some((
                        Ok::<_, std::convert::Infallible>(Event::default().data(verdict.to_string())),
                        None,
                    ));
                }
                tokio::select! {
                    changed = views.changed() => if changed.is_err() { return None },
                    _ = tokio::time::sleep_until(deadline) => {
                        let timeout = serde_json::json!({ "type": "timeout" });
                        return Some((Ok(Event::default().data(timeout.to_string())), None));
                    }
                }
            }
        }
    });
    let sse = Sse::new(verdicts).keep_alive(KeepAlive::new().interval(Duration::from_secs(10)).text("keep-alive"));
    ([("x-accel-buffering", "no")], sse).into_response()
}
