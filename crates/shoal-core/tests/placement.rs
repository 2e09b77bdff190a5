//! Placement (§9): the fewest nodes that hold the model, contiguous layer ranges in proportion to capacity, and a
//! clear error for every way it can fail.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use proptest::prelude::*;
use shoal_core::placement::{Fresh, Ineligible, PlacementConfig, PlacementRequest, layer_cost, place};
use shoal_types::card::{Backend, ModelCard, builtin_cards};
use shoal_types::command::PlacementError;
use shoal_types::ids::{InstanceId, ModelId, NodeId, RunnerId};
use shoal_types::model::{
    Memory, NodeInfo, PipelineShard, RunnerRecord, RunnerStatus, ShardAssignments, ShardMetadata, Sharding,
};
use shoal_types::state::State;

fn card() -> ModelCard {
    builtin_cards()
        .into_iter()
        .find(|c| c.aliases.iter().any(|a| a == "smollm2-135m"))
        .unwrap()
}

fn node_id(i: u8) -> NodeId {
    NodeId::from_random([0x10 + i; 16]).unwrap()
}

/// Available memory that gives exactly `cap` layers of the test card under the default config.
fn memory_for(cap: u64) -> u64 {
    let cfg = PlacementConfig::default();
    let need = cap * layer_cost(&card(), &cfg) + cfg.runner_overhead;
    (need as f64 / cfg.memory_fraction).ceil() as u64 + 1
}

fn node(cap: u64) -> NodeInfo {
    let available = memory_for(cap);
    NodeInfo {
        memory: Some(Memory {
            total: available * 2,
            available,
        }),
        backends: vec![Backend::Cpu],
        ..NodeInfo::default()
    }
}

fn state(nodes: &[NodeInfo]) -> State {
    let mut s = State::empty();
    for (i, n) in nodes.iter().enumerate() {
        s.nodes.insert(node_id(i as u8), Arc::new(n.clone()));
    }
    s
}

fn request(min_nodes: u32, max_nodes: Option<u32>) -> PlacementRequest {
    PlacementRequest {
        model_id: card().id,
        sharding: Sharding::Pipeline,
        min_nodes,
        max_nodes,
        nodes: None,
    }
}

fn run(
    req: &PlacementRequest,
    s: &State,
    cfg: &PlacementConfig,
) -> Result<shoal_core::placement::Placement, PlacementError> {
    let mut next = 0u128;
    let mut ids = || {
        next += 1;
        RunnerId::from_u128(next)
    };
    place(
        req,
        s,
        cfg,
        Fresh {
            instance: InstanceId::from_u128(99),
            deployment: None,
            now_ms: 5,
            runner_id: &mut ids,
        },
    )
}

/// (node, start, end) in rank order, checking the shard fields agree with each other.
fn ranges(p: &shoal_core::placement::Placement) -> Vec<(NodeId, u32, u32)> {
    let a = &p.instance.assignments;
    let mut out: Vec<(u32, NodeId, PipelineShard)> = a
        .node_runner
        .iter()
        .map(|(n, r)| match a.shards[r] {
            ShardMetadata::Pipeline(s) => (s.device_rank, *n, s),
            ShardMetadata::Tensor(_) => panic!("tensor shard"),
        })
        .collect();
    out.sort_by_key(|(rank, _, _)| *rank);
    out.iter().map(|(_, n, s)| (*n, s.start_layer, s.end_layer)).collect()
}

#[test]
fn one_node_that_fits_takes_every_layer() {
    let s = state(&[node(100), node(5)]);
    let p = run(&request(1, None), &s, &PlacementConfig::default()).unwrap();
    assert_eq!(ranges(&p), [(node_id(0), 0, 30)]);
    assert_eq!(p.shares[0].layers, 30);
    assert_eq!(p.instance.created_ms, 5);
}

#[test]
fn layers_split_in_proportion_to_capacity_with_largest_remainders() {
    let s = state(&[node(10), node(12), node(10), node(3)]);
    let p = run(&request(1, None), &s, &PlacementConfig::default()).unwrap();
    // Caps 12, 10, 10 (sorted; ties by node id) cover 30: ideal 11.25, 9.375, 9.375 → 11, 10, 9.
    assert_eq!(
        ranges(&p),
        [(node_id(1), 0, 11), (node_id(0), 11, 21), (node_id(2), 21, 30)]
    );
    let world: Vec<u32> = p
        .instance
        .assignments
        .shards
        .values()
        .map(|s| match s {
            ShardMetadata::Pipeline(s) => s.world_size,
            ShardMetadata::Tensor(_) => 0,
        })
        .collect();
    assert_eq!(world, [3, 3, 3]);
}

#[test]
fn min_nodes_spreads_a_model_that_would_fit_on_one() {
    let s = state(&[node(100), node(100)]);
    let p = run(&request(2, None), &s, &PlacementConfig::default()).unwrap();
    assert_eq!(ranges(&p), [(node_id(0), 0, 15), (node_id(1), 15, 30)]);
}

#[test]
fn bandwidth_weighting_splits_by_bandwidth_when_every_node_reports_it() {
    let mut a = node(30);
    a.mem_bandwidth_gbps = Some(100.0);
    let mut b = node(30);
    b.mem_bandwidth_gbps = Some(50.0);
    let s = state(&[a, b]);
    let cfg = PlacementConfig {
        bandwidth_weighting: true,
        ..PlacementConfig::default()
    };
    let p = run(&request(2, None), &s, &cfg).unwrap();
    assert_eq!(ranges(&p), [(node_id(0), 0, 20), (node_id(1), 20, 30)]);
}

#[test]
fn ineligible_nodes_are_listed_with_their_reason() {
    let mut metal = node(50);
    metal.backends = vec![Backend::Metal];
    let mut unknown_memory = node(50);
    unknown_memory.memory = None;
    let tiny = node(0);
    let s = state(&[node(50), metal, unknown_memory, tiny, node(50)]);
    let mut req = request(1, None);
    req.nodes = Some(vec![node_id(0), node_id(1), node_id(2), node_id(3)]);
    let p = run(&req, &s, &PlacementConfig::default()).unwrap();
    assert_eq!(
        p.ineligible,
        [
            (node_id(1), Ineligible::NoBackend),
            (node_id(2), Ineligible::NoMemoryInfo),
            (node_id(3), Ineligible::NoCapacity),
            (node_id(4), Ineligible::NotRequested),
        ]
    );
}

#[test]
fn runners_not_yet_loaded_reserve_their_memory() {
    let mut s = state(&[node(40)]);
    // An instance whose runner on node 0 is still loading 20 layers.
    let runner = RunnerId::from_u128(500);
    let instance = shoal_types::model::Instance {
        id: InstanceId::from_u128(501),
        deployment: None,
        model: card(),
        assignments: ShardAssignments {
            shards: [(
                runner,
                ShardMetadata::Pipeline(PipelineShard {
                    start_layer: 0,
                    end_layer: 20,
                    n_layers: 30,
                    device_rank: 0,
                    world_size: 2,
                }),
            )]
            .into_iter()
            .collect(),
            node_runner: [(node_id(0), runner)].into_iter().collect(),
        },
        runner_failures: Default::default(),
        created_ms: 0,
    };
    s.instances.insert(instance.id, Arc::new(instance.clone()));
    let record = |status| RunnerRecord {
        instance: instance.id,
        node: node_id(0),
        status,
        data_addrs: vec![],
        updated_ms: 0,
    };
    s.runners.insert(
        runner,
        Arc::new(record(RunnerStatus::Loading {
            layers_loaded: 3,
            total_layers: 20,
        })),
    );
    let err = run(&request(1, None), &s, &PlacementConfig::default()).unwrap_err();
    assert!(matches!(err, PlacementError::InsufficientMemory { .. }), "{err}");
    // Once loaded, its memory shows in `available` instead, so nothing is reserved any more.
    s.runners.insert(runner, Arc::new(record(RunnerStatus::Loaded)));
    assert!(run(&request(1, None), &s, &PlacementConfig::default()).is_ok());
}

#[test]
fn every_failure_has_its_error() {
    let cfg = PlacementConfig::default();
    let s = state(&[node(10), node(10)]);
    let mut req = request(1, None);
    req.sharding = Sharding::Tensor;
    assert_eq!(run(&req, &s, &cfg), Err(PlacementError::UnsupportedSharding));
    let mut req = request(1, None);
    req.model_id = ModelId::new("no-such-model");
    assert_eq!(
        run(&req, &s, &cfg),
        Err(PlacementError::UnknownModel(ModelId::new("no-such-model")))
    );
    let mut req = request(1, None);
    req.nodes = Some(vec![node_id(0), node_id(9)]);
    assert_eq!(run(&req, &s, &cfg), Err(PlacementError::NodeNotFound(node_id(9))));
    assert_eq!(
        run(&request(3, None), &s, &cfg),
        Err(PlacementError::MinNodes {
            min_nodes: 3,
            eligible: 2
        })
    );
    assert!(matches!(
        run(&request(1, None), &s, &cfg),
        Err(PlacementError::InsufficientMemory { need, have }) if need > have
    ));
    let s = state(&[node(10), node(10), node(10)]);
    assert_eq!(
        run(&request(1, Some(2)), &s, &cfg),
        Err(PlacementError::MaxNodes { needed: 3 })
    );
    // A custom card with 2 layers cannot be spread over 3 nodes.
    let mut s = state(&[node(40), node(40), node(40)]);
    let mut tiny = card();
    tiny.id = ModelId::new("tiny");
    tiny.n_layers = 2;
    s.model_cards.insert(tiny.id.clone(), Arc::new(tiny));
    let mut req = request(3, None);
    req.model_id = ModelId::new("tiny");
    assert_eq!(run(&req, &s, &cfg), Err(PlacementError::TooFewLayers));
}

proptest! {
    /// Whatever the nodes: a placement covers every layer exactly once, in rank order, each node between 1 layer and
    /// its capacity, within min/max nodes; a failure to cover is `InsufficientMemory` only when the capacities truly
    /// cannot hold the model.
    #[test]
    fn placements_are_valid_covers(
        caps in proptest::collection::vec(0u64..40, 1..8),
        min_nodes in 1u32..4,
        max_nodes in proptest::option::of(1u32..8),
    ) {
        let s = state(&caps.iter().map(|&c| node(c)).collect::<Vec<_>>());
        let cfg = PlacementConfig::default();
        match run(&request(min_nodes, max_nodes), &s, &cfg) {
            Ok(p) => {
                let r = ranges(&p);
                prop_assert!(r.len() as u32 >= min_nodes);
                prop_assert!(max_nodes.is_none_or(|m| r.len() as u32 <= m));
                let mut expected_start = 0;
                for (n, start, end) in &r {
                    prop_assert_eq!(*start, expected_start);
                    prop_assert!(end > start);
                    let i = (0..caps.len()).find(|&i| node_id(i as u8) == *n).unwrap();
                    prop_assert!(u64::from(end - start) <= caps[i]);
                    expected_start = *end;
                }
                prop_assert_eq!(expected_start, 30);
            }
            Err(PlacementError::InsufficientMemory { .. }) => {
                let eligible: Vec<u64> = caps.iter().copied().filter(|&c| c > 0).collect();
                prop_assert!(eligible.iter().sum::<u64>() < 30);
            }
            Err(PlacementError::MinNodes { eligible, .. }) => {
                prop_assert!(eligible < min_nodes);
            }
            Err(PlacementError::MaxNodes { needed }) => {
                prop_assert!(max_nodes.is_some_and(|m| needed > m));
            }
            Err(other) => prop_assert!(false, "unexpected {other}"),
        }
    }
}
