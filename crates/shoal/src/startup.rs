//! What `shoal run --model` does at start: add the model's card (a path or `hf:` model) and place it, reconciled from
//! State so a restart or a second node started with the same `--model` changes nothing.

use std::time::Duration;

use shoal_api::commands::command_and_wait;
use shoal_cluster::ClusterHandle;
use shoal_core::placement::resolve_card;
use shoal_types::command::Command;
use shoal_types::ids::{CommandId, DeploymentId, ModelId};
use shoal_types::model::Sharding;

/// The deployment id `shoal run --model` uses for `model`: the same on every node, so nodes started with the same
/// `--model` keep one deployment between them (the master treats a known deployment id as already placed).
pub fn deployment_for_model(model: &ModelId) -> DeploymentId {
    let name = format!("shoal:deployment:{}", model.0);
    DeploymentId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes()))
}

/// A custom card of `shoal run --model` (a path or an `hf:` source): added to State once this node is ready, unless
/// State has a card of that id already (a restart, or another node started with the same `--model`).
async fn add_at_start(cluster: &ClusterHandle, card: &shoal_types::ModelCard) {
    let mut views = cluster.watch();
    loop {
        let present = {
            let view = views.borrow_and_update();
            if view.status.ready {
                Some(resolve_card(&view.state, &card.id).is_some())
            } else {
                None
            }
        };
        match present {
            Some(true) => return,
            Some(false) => {
                let wanted = card.id.clone();
                let command = Command::AddModelCard { card: card.clone() };
                let added = command_and_wait(cluster, CommandId::new_random(), command, |state| {
                    state.model_cards.contains_key(&wanted).then_some(())
                })
                .await;
                match added {
                    Ok(()) => {
                        tracing::info!(model = %card.id, "model card added");
                        return;
                    }
                    Err(refusal) => {
                        tracing::warn!(model = %card.id, reason = %refusal.message, "cannot add the model card yet");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            None => {
                if views.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// `shoal run --model`: once this node is ready (and, with a worker, its facts are in State), keeps asking the
/// master to place `card` until State holds a deployment of it. Reconciled from State: after a restart, a
/// deployment already in State means there is nothing to do, and a deployment deleted later by a user stays deleted.
pub async fn place_at_start(cluster: ClusterHandle, card: shoal_types::ModelCard, custom: bool, worker: bool) {
    let deployment_id = deployment_for_model(&card.id);
    let mut views = cluster.watch();
    let mut last_refusal = String::new();
    if custom {
        add_at_start(&cluster, &card).await;
    }
    loop {
        let ready = {
            let view = views.borrow_and_update();
            let me = view.status.node;
            let facts_in = !worker
                || view
                    .state
                    .nodes
                    .get(&me)
                    .is_some_and(|n| n.memory.is_some() && !n.backends.is_empty());
            if view.state.deployments.values().any(|d| d.model_id == card.id) {
                tracing::info!(model = %card.id, "the model is already deployed");
                return;
            }
            view.status.ready && facts_in
        };
        if !ready {
            if views.changed().await.is_err() {
                return;
            }
            continue;
        }
        let command = Command::PlaceInstance {
            deployment_id,
            model_id: card.id.clone(),
            sharding: Sharding::Pipeline,
            min_nodes: 1,
            max_nodes: None,
            nodes: None,
        };
        let placed = command_and_wait(&cluster, CommandId::new_random(), command, |state| {
            let deployment = state.deployments.get(&deployment_id)?;
            Some(deployment.instance)
        })
        .await;
        match placed {
            Ok(instance) => {
                tracing::info!(model = %card.id, %deployment_id, ?instance, "model placed");
                return;
            }
            Err(refusal) => {
                if refusal.message != last_refusal {
                    tracing::warn!(model = %card.id, reason = %refusal.message, "cannot place the model yet; retrying");
                    last_refusal = refusal.message;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}
