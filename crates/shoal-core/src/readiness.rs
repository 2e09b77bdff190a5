//! Whether a model can serve a request now, from State alone (issue 13 item 3: nothing waits on an instance that
//! cannot serve). The API waits on this, reconciled from State, for at most the stream TTL before it registers a
//! stream; a model still downloading or loading then gets an error naming where each stage stands, and a failed
//! deployment its reason, instead of a stream that never produces a token.

use shoal_types::ids::ModelId;
use shoal_types::model::{DeploymentStatus, DownloadProgress, Instance, RunnerStatus};
use shoal_types::state::State;

/// What State says about serving `model` now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// An instance has every runner serving.
    Serving,
    /// An instance (or a deployment being placed) exists but cannot serve yet: where each stage stands.
    NotReady { detail: String },
    /// The model's deployment failed and nothing else serves it: the failure's reason.
    Failed { reason: String },
    /// Nothing of the model is placed: the master decides (it rejects with `NoInstance`).
    Unplaced,
}

/// [`Readiness`] of `model` in `state`. An instance that serves wins over one that loads; the loading instance
/// described is the one with the most runners serving.
pub fn readiness(state: &State, model: &ModelId) -> Readiness {
    let instances: Vec<&Instance> = state
        .instances
        .values()
        .filter(|i| i.model.id == *model)
        .map(|i| i.as_ref())
        .collect();
    let serving = |i: &Instance| {
        i.assignments
            .shards
            .keys()
            .filter(|r| state.runners.get(*r).is_some_and(|rec| rec.status.is_serving()))
            .count()
    };
    if instances.iter().any(|i| serving(i) == i.assignments.shards.len()) {
        return Readiness::Serving;
    }
    if let Some(instance) = instances.iter().max_by_key(|i| serving(i)) {
        return Readiness::NotReady {
            detail: describe(state, instance),
        };
    }
    let deployments: Vec<_> = state.deployments.values().filter(|d| d.model_id == *model).collect();
    if let Some(reason) = deployments.iter().find_map(|d| match &d.status {
        DeploymentStatus::Waiting { reason } => Some(reason.clone()),
        _ => None,
    }) {
        return Readiness::NotReady {
            detail: format!("model {model} is waiting for a placement: {reason}"),
        };
    }
    if deployments.iter().any(|d| d.status == DeploymentStatus::Placing) {
        return Readiness::NotReady {
            detail: format!("model {model} is being placed"),
        };
    }
    if let Some(reason) = deployments.iter().find_map(|d| match &d.status {
        DeploymentStatus::Failed { reason } => Some(reason.clone()),
        _ => None,
    }) {
        return Readiness::Failed {
            reason: format!("model {model} failed to start: {reason}"),
        };
    }
    Readiness::Unplaced
}

/// "model m is not ready: stage 1/2 on node 1a2b3c4d: loading layer 12 of 30; …"
fn describe(state: &State, instance: &Instance) -> String {
    let mut stages: Vec<(u32, String)> = instance
        .assignments
        .shards
        .iter()
        .map(|(runner, shard)| {
            let record = state.runners.get(runner);
            let node = record.map(|r| r.node).or_else(|| {
                let assigned = instance.assignments.node_runner.iter();
                assigned.filter(|(_, r)| *r == runner).map(|(n, _)| *n).next()
            });
            let what = match record.map(|r| &r.status) {
                None => "starting".to_owned(),
                Some(RunnerStatus::Idle) => {
                    let download = node
                        .and_then(|n| state.nodes.get(&n))
                        .and_then(|n| n.downloads.get(&instance.model.id).cloned());
                    match download {
                        Some(DownloadProgress::Ongoing { done, total }) => {
                            let percent = done.saturating_mul(100).checked_div(total).unwrap_or(0);
                            format!("downloading the model, {percent}% ({done} of {total} bytes)")
                        }
                        Some(DownloadProgress::Pending) => "waiting to download the model".to_owned(),
                        Some(DownloadProgress::Failed { error }) => format!("download failed: {error}"),
                        Some(DownloadProgress::Gone) => "the model's files are gone; fetching them again".to_owned(),
                        Some(DownloadProgress::Completed { .. }) | None => "starting".to_owned(),
                    }
                }
                Some(RunnerStatus::Loading {
                    layers_loaded,
                    total_layers,
                }) => format!("loading layer {layers_loaded} of {total_layers}"),
                Some(RunnerStatus::Loaded | RunnerStatus::WarmingUp) => "warming up".to_owned(),
                Some(RunnerStatus::Ready | RunnerStatus::Running) => "ready".to_owned(),
                Some(RunnerStatus::ShuttingDown | RunnerStatus::Shutdown) => "stopping".to_owned(),
                Some(RunnerStatus::Failed { error, attempt }) => format!("failed (attempt {attempt}): {error}"),
            };
            let node = node.map_or_else(|| "?".to_owned(), |n| n.to_string().chars().take(8).collect());
            (shard.device_rank(), format!("on node {node}: {what}"))
        })
        .collect();
    stages.sort();
    let n = stages.len();
    let parts: Vec<String> = stages
        .into_iter()
        .map(|(rank, what)| format!("stage {}/{n} {what}", rank + 1))
        .collect();
    format!("model {} is not ready: {}", instance.model.id, parts.join("; "))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use imbl::OrdMap;
    use shoal_types::ids::{DeploymentId, InstanceId, NodeId, RunnerId};
    use shoal_types::model::{
        Deployment, NodeInfo, PipelineShard, RunnerRecord, ShardAssignments, ShardMetadata, Sharding,
    };

    use super::*;

    const NODE: NodeId = NodeId::from_bytes([0x1a; 16]);

    /// A State with one single-stage instance of the first built-in model whose runner reports `status`.
    fn with_runner(status: Option<RunnerStatus>) -> (State, ModelId) {
        let card = shoal_types::card::builtin_cards().remove(0);
        let runner = RunnerId::from_u128(7);
        let mut shards = OrdMap::new();
        shards.insert(
            runner,
            ShardMetadata::Pipeline(PipelineShard {
                start_layer: 0,
                end_layer: card.n_layers,
                n_layers: card.n_layers,
                device_rank: 0,
                world_size: 1,
            }),
        );
        let mut node_runner = OrdMap::new();
        node_runner.insert(NODE, runner);
        let instance = Instance {
            id: InstanceId::from_u128(1),
            deployment: None,
            model: card.clone(),
            assignments: ShardAssignments { shards, node_runner },
            runner_failures: OrdMap::new(),
            created_ms: 0,
            token: Default::default(),
        };
        let mut state = State::empty();
        state.instances.insert(instance.id, Arc::new(instance));
        if let Some(status) = status {
            let record = RunnerRecord {
                instance: InstanceId::from_u128(1),
                node: NODE,
                status,
                data_addrs: Vec::new(),
                updated_ms: 0,
            };
            state.runners.insert(runner, Arc::new(record));
        }
        (state, card.id)
    }

    fn detail(state: &State, model: &ModelId) -> String {
        match readiness(state, model) {
            Readiness::NotReady { detail } => detail,
            other => panic!("not NotReady: {other:?}"),
        }
    }

    #[test]
    fn a_model_nothing_places_is_left_to_the_master() {
        assert_eq!(
            readiness(&State::empty(), &ModelId::from("nothing")),
            Readiness::Unplaced
        );
    }

    #[test]
    fn a_serving_instance_is_serving() {
        let (state, model) = with_runner(Some(RunnerStatus::Ready));
        assert_eq!(readiness(&state, &model), Readiness::Serving);
        let (state, model) = with_runner(Some(RunnerStatus::Running));
        assert_eq!(readiness(&state, &model), Readiness::Serving);
    }

    #[test]
    fn a_loading_instance_says_where_each_stage_stands() {
        let (state, model) = with_runner(None);
        assert!(detail(&state, &model).contains("stage 1/1 on node 1a1a1a1a: starting"));
        let loading = RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 30,
        };
        let (state, model) = with_runner(Some(loading));
        assert!(detail(&state, &model).contains("loading layer 3 of 30"));
        let failed = RunnerStatus::Failed {
            error: "model.gguf: bad magic".into(),
            attempt: 2,
        };
        let (state, model) = with_runner(Some(failed));
        assert!(detail(&state, &model).contains("failed (attempt 2): model.gguf: bad magic"));
    }

    #[test]
    fn an_idle_runner_reports_its_nodes_download() {
        let (mut state, model) = with_runner(Some(RunnerStatus::Idle));
        let mut info = NodeInfo::default();
        info.downloads
            .insert(model.clone(), DownloadProgress::Ongoing { done: 25, total: 100 });
        state.nodes.insert(NODE, Arc::new(info));
        assert!(detail(&state, &model).contains("downloading the model, 25% (25 of 100 bytes)"));
    }

    #[test]
    fn deployments_without_an_instance_are_placing_waiting_or_failed() {
        let model = ModelId::from("m");
        let deployment = |status| Deployment {
            id: DeploymentId::from_u128(3),
            command_id: shoal_types::ids::CommandId::from_u128(4),
            model_id: model.clone(),
            sharding: Sharding::Pipeline,
            min_nodes: 1,
            max_nodes: None,
            nodes: None,
            status,
            instance: None,
            failures: 0,
            retry_at_ms: 0,
            created_ms: 0,
        };
        let mut state = State::empty();
        state.deployments.insert(
            DeploymentId::from_u128(3),
            Arc::new(deployment(DeploymentStatus::Placing)),
        );
        assert!(detail(&state, &model).contains("being placed"));
        let waiting = DeploymentStatus::Waiting {
            reason: "too few nodes".into(),
        };
        state
            .deployments
            .insert(DeploymentId::from_u128(3), Arc::new(deployment(waiting)));
        assert!(detail(&state, &model).contains("too few nodes"));
        let failed = DeploymentStatus::Failed {
            reason: "runner failed 5 times: bad magic".into(),
        };
        state
            .deployments
            .insert(DeploymentId::from_u128(3), Arc::new(deployment(failed)));
        match readiness(&state, &model) {
            Readiness::Failed { reason } => assert!(reason.contains("bad magic"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
