//! Custom model cards (issue 11): `POST /models/add {"source": "<path>|hf:ORG/REPO/FILE.gguf", "id"?}` derives a
//! card from the GGUF header and adds it to State through the master (`AddModelCard`); `DELETE /models/{id}`
//! removes it (`DeleteModelCard`, refused with 409 while an instance uses it). Both answer once State shows the
//! effect.
//!
//! Everything that can be refused is refused here, before State changes: a source that does not exist or is not a
//! GGUF (4xx naming it), an architecture or weight format this build cannot run, a model that fits no set of
//! nodes of the cluster (placement run on local State with the files taken to be everywhere), an id already taken.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_core::placement::{Fresh, PlacementConfig, PlacementRequest, place, resolve_card};
use shoal_models::AddError;
use shoal_types::command::Command;
use shoal_types::ids::{CommandId, InstanceId, ModelId, RunnerId};
use shoal_types::model::Sharding;
use shoal_types::{ModelCard, State};

use crate::commands::command_and_wait;
use crate::{Api, error};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// A path on this node, or `hf:ORG/REPO/FILE.gguf`.
    source: String,
    /// The card's id; default: from the file name (`hf:` ids keep `ORG/REPO/`).
    #[serde(default)]
    id: Option<String>,
}

fn bad(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// The HTTP answer for a card that could not be made.
fn add_error(e: AddError) -> Response {
    let message = e.to_string();
    match e {
        AddError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", message),
        AddError::Unauthorized(_) => error(StatusCode::UNAUTHORIZED, "unauthorized", message),
        AddError::Upstream(_) => error(StatusCode::BAD_GATEWAY, "upstream_error", message),
        AddError::Invalid(_) | AddError::Derive(_) => bad(message),
    }
}

/// Whether `card` fits the cluster at all: placement over every node of local State, as if each held the files.
fn fits_somewhere(state: &State, card: &ModelCard) -> Result<(), String> {
    let mut state = state.clone();
    state.model_cards.insert(card.id.clone(), Arc::new(card.clone()));
    let cfg = PlacementConfig {
        require_files: false,
        ..PlacementConfig::default()
    };
    let req = PlacementRequest {
        model_id: card.id.clone(),
        sharding: Sharding::Pipeline,
        min_nodes: 1,
        max_nodes: None,
        nodes: None,
    };
    let mut next = 0u128;
    let mut ids = || {
        next += 1;
        RunnerId::from_u128(next)
    };
    let fresh = Fresh {
        instance: InstanceId::from_u128(0),
        deployment: None,
        now_ms: 0,
        runner_id: &mut ids,
    };
    place(&req, &state, &cfg, fresh).map(|_| ()).map_err(|e| e.to_string())
}

/// `POST /models/add`.
pub async fn add(AxumState(api): AxumState<Api>, body: Result<Json<AddRequest>, JsonRejection>) -> Response {
    let Json(req) = match body {
        Ok(body) => body,
        Err(rejection) => return bad(rejection.body_text()),
    };
    let Some(store) = api.models.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this node has no model store (it runs with --no-worker)",
        );
    };
    if req.id.as_deref().is_some_and(|id| id.trim().is_empty()) {
        return bad("`id`: must not be empty");
    }
    // Reading a header over HTTP and hashing a local file are blocking and may take seconds.
    let source = req.source.clone();
    let id = req.id.clone();
    let made = tokio::task::spawn_blocking(move || store.card_for_source(&source, id.as_deref())).await;
    let card = match made {
        Ok(Ok(card)) => card,
        Ok(Err(e)) => return add_error(e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", e.to_string()),
    };
    if let Err(e) = card.validate() {
        return bad(format!("the derived card is invalid: {e}"));
    }
    let state = api.cluster.view().state;
    if resolve_card(&state, &card.id).is_some()
        || card
            .aliases
            .iter()
            .any(|a| resolve_card(&state, &ModelId::new(a.clone())).is_some())
    {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!("a model with id {} exists already; give another `id`", card.id),
        );
    }
    if let Err(why) = fits_somewhere(&state, &card) {
        return bad(format!("model {} fits no set of nodes of this cluster: {why}", card.id));
    }
    let wanted = card.clone();
    let command = Command::AddModelCard { card: card.clone() };
    let added = command_and_wait(&api.cluster, CommandId::new_random(), command, move |state| {
        state
            .model_cards
            .get(&wanted.id)
            .filter(|c| c.as_ref() == &wanted)
            .map(|_| ())
    })
    .await;
    match added {
        Ok(()) => (StatusCode::CREATED, Json(card)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `DELETE /models/{id}`: 200 once the card is gone from State; 404 for an unknown or built-in id; 409 while an
/// instance uses the model.
pub async fn delete(AxumState(api): AxumState<Api>, Path(id): Path<String>) -> Response {
    let state = api.cluster.view().state;
    let Some(card) = resolve_card(&state, &ModelId::new(id.clone())) else {
        return error(StatusCode::NOT_FOUND, "not_found", format!("no model {id}"));
    };
    if !state.model_cards.contains_key(&card.id) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("model {} is built in and cannot be deleted", card.id),
        );
    }
    if let Some(instance) = state.instances.values().find(|i| i.model.id == card.id) {
        return error(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "model {} is in use by instance {}; delete the instance first",
                card.id, instance.id
            ),
        );
    }
    let model_id = card.id.clone();
    let command = Command::DeleteModelCard {
        model_id: model_id.clone(),
    };
    let gone = command_and_wait(&api.cluster, CommandId::new_random(), command, |state| {
        (!state.model_cards.contains_key(&model_id)).then_some(())
    })
    .await;
    match gone {
        Ok(()) => Json(serde_json::json!({ "deleted": card.id })).into_response(),
        Err(refusal) => refusal.into_response(),
    }
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

pub async fn models_openai(AxumState(api): AxumState<Api>) -> Response {
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

pub async fn list_models(AxumState(api): AxumState<Api>) -> Response {
    Json(all_cards(&api.cluster.view().state)).into_response()
}
