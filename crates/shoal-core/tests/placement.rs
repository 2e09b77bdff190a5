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
        token: Default::default(),
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

/// A card derived from a GGUF header: per-layer bytes with heavy (MoE-like) layers, an embedding and a head.
fn bytes_card(layer_bytes: Vec<u64>, embedding: u64, head: u64) -> ModelCard {
    let mut c = card();
    c.id = ModelId::new("test/bytes");
    c.aliases.clear();
    c.n_layers = layer_bytes.len() as u32;
    c.storage_size = layer_bytes.iter().sum::<u64>() + embedding + head;
    c.layer_bytes = layer_bytes;
    c.embedding_bytes = embedding;
    c.head_bytes = head;
    c
}

/// No KV budget and no overhead, so budgets are plain weight bytes.
fn bytes_cfg() -> PlacementConfig {
    PlacementConfig {
        runner_overhead: 0,
        kv_budget_tokens: 0,
        memory_fraction: 1.0,
        ..PlacementConfig::default()
    }
}

fn bytes_node(available: u64) -> NodeInfo {
    NodeInfo {
        memory: Some(Memory {
            total: available,
            available,
        }),
        backends: vec![Backend::Cpu],
        ..NodeInfo::default()
    }
}

fn bytes_state(card: &ModelCard, budgets: &[u64]) -> State {
    let mut s = state(&budgets.iter().map(|&b| bytes_node(b)).collect::<Vec<_>>());
    s.model_cards.insert(card.id.clone(), Arc::new(card.clone()));
    s
}

fn bytes_request(card: &ModelCard, min_nodes: u32) -> PlacementRequest {
    PlacementRequest {
        model_id: card.id.clone(),
        ..request(min_nodes, None)
    }
}

#[test]
fn heavy_layers_and_the_embedding_and_head_count_their_real_bytes() {
    // 8 layers: 4 dense of 100 bytes, then 4 MoE of 1,000; embedding 500 on stage 0, head 300 on the last.
    let c = bytes_card(vec![100, 100, 100, 100, 1000, 1000, 1000, 1000], 500, 300);
    let cfg = bytes_cfg();
    // Two equal nodes of 3,000: by layer count each would take 4 layers (the second 4,300 bytes: over budget).
    let s = bytes_state(&c, &[3_000, 3_000]);
    let p = run(&bytes_request(&c, 2), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    let r = ranges(&p);
    // Total 5,200: the boundary nearest 2,600 within budget is after layer 5 (500 + 400 + 2,000 = 2,900).
    assert_eq!(r, [(node_id(0), 0, 6), (node_id(1), 6, 8)]);
    assert_eq!(p.shares[0].weight_bytes, 2_900);
    assert_eq!(p.shares[1].weight_bytes, 2_300);
    // One node cannot hold 5,200; two are needed even with min_nodes 1.
    let p = run(&bytes_request(&c, 1), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ranges(&p).len(), 2);
    // Nothing fits 2 × 2,000.
    let s = bytes_state(&c, &[2_000, 2_000]);
    assert!(matches!(
        run(&bytes_request(&c, 1), &s, &cfg),
        Err(PlacementError::InsufficientMemory {
            need: 5_200,
            have: 4_000
        })
    ));
}

#[test]
fn a_tied_head_weighs_on_the_last_stage() {
    // Uniform layers; the tied head (the embedding again, 2,000) makes the last stage the heavy one.
    let c = bytes_card(vec![100; 10], 2_000, 2_000);
    let cfg = bytes_cfg();
    let s = bytes_state(&c, &[10_000, 10_000]);
    let p = run(&bytes_request(&c, 2), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    // Each stage 2,500: rank 0 holds the embedding and 5 layers, rank 1 the head and 5 layers.
    assert_eq!(ranges(&p), [(node_id(0), 0, 5), (node_id(1), 5, 10)]);
    assert_eq!(p.shares[0].weight_bytes, 2_500);
    assert_eq!(p.shares[1].weight_bytes, 2_500);
}

#[test]
fn a_path_only_model_goes_only_to_nodes_that_hold_its_files_until_one_shares_them() {
    use shoal_types::card::SourceKind;
    use shoal_types::model::DownloadProgress;
    let mut c = bytes_card(vec![100; 4], 0, 0);
    for source in &mut c.sources {
        source.kind = SourceKind::Path;
        source.path = Some("/models".into());
    }
    let cfg = bytes_cfg();
    let mut s = bytes_state(&c, &[10_000, 10_000, 10_000]);
    assert!(matches!(
        run(&bytes_request(&c, 1), &s, &cfg),
        Err(PlacementError::MinNodes { eligible: 0, .. })
    ));
    let holder = node_id(2);
    let mut info = s.nodes[&holder].as_ref().clone();
    info.downloads
        .insert(c.id.clone(), DownloadProgress::Completed { total: 400 });
    s.nodes.insert(holder, Arc::new(info));
    let p = run(&bytes_request(&c, 1), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ranges(&p), [(holder, 0, 4)]);
    assert!(p.ineligible.contains(&(node_id(0), Ineligible::NoModelFiles)));
    // Two nodes asked for, one holds the files.
    assert!(matches!(
        run(&bytes_request(&c, 2), &s, &cfg),
        Err(PlacementError::MinNodes { eligible: 1, .. })
    ));
    // A fit check made before any node reported the files ignores where they are.
    let any = PlacementConfig {
        require_files: false,
        ..bytes_cfg()
    };
    assert!(run(&bytes_request(&c, 3), &s, &any).is_ok());
    // Once the holder serves files to its peers (issue 18), every node can fetch them from it: all are eligible.
    let mut info = s.nodes[&holder].as_ref().clone();
    info.file_server = vec![std::net::SocketAddr::from(([10, 0, 0, 2], 7000))];
    s.nodes.insert(holder, Arc::new(info));
    let p = run(&bytes_request(&c, 3), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.shares.len(), 3);
}

proptest! {
    /// Whatever the layer sizes and budgets: a byte placement covers every layer once, contiguously, each stage
    /// within its node's budget counting the embedding on the first and the head on the last; a failure is
    /// `InsufficientMemory` only if no node set checked could hold the bytes greedily either.
    #[test]
    fn byte_placements_fit_every_budget(
        layers in proptest::collection::vec(1u64..2_000, 1..24),
        embedding in 0u64..3_000,
        head in 0u64..3_000,
        budgets in proptest::collection::vec(0u64..20_000, 1..6),
        min_nodes in 1u32..3,
    ) {
        let c = bytes_card(layers.clone(), embedding, head);
        let cfg = bytes_cfg();
        let s = bytes_state(&c, &budgets);
        match run(&bytes_request(&c, min_nodes), &s, &cfg) {
            Ok(p) => {
                let r = ranges(&p);
                prop_assert!(r.len() as u32 >= min_nodes);
                let mut expected_start = 0;
                for (rank, (n, start, end)) in r.iter().enumerate() {
                    prop_assert_eq!(*start, expected_start);
                    prop_assert!(end > start);
                    let i = (0..budgets.len()).find(|&i| node_id(i as u8) == *n).unwrap();
                    let bytes = c.stage_weight_bytes(*start, *end);
                    prop_assert_eq!(bytes, p.shares[rank].weight_bytes);
                    prop_assert!(bytes <= budgets[i], "rank {} holds {} > {}", rank, bytes, budgets[i]);
                    expected_start = *end;
                }
                prop_assert_eq!(expected_start, layers.len() as u32);
            }
            Err(PlacementError::InsufficientMemory { need, .. }) => {
                prop_assert_eq!(need, c.storage_size);
            }
            Err(PlacementError::MinNodes { .. } | PlacementError::TooFewLayers) => {}
            Err(other) => prop_assert!(false, "unexpected {}", other),
        }
    }
}

#[test]
fn a_node_whose_store_cannot_write_takes_no_new_placement_until_it_can() {
    let c = bytes_card(vec![100; 4], 0, 0);
    let cfg = bytes_cfg();
    let mut s = bytes_state(&c, &[10_000, 10_000, 10_000]);
    let full = node_id(1);
    let mut info = s.nodes[&full].as_ref().clone();
    info.store_fault = Some("No space left on device (os error 28)".into());
    s.nodes.insert(full, Arc::new(info.clone()));
    let p = run(&bytes_request(&c, 2), &s, &cfg).unwrap_or_else(|e| panic!("{e}"));
    assert!(p.shares.iter().all(|share| share.node != full), "{:?}", ranges(&p));
    assert!(p.ineligible.contains(&(full, Ineligible::StoreFails)));
    assert!(matches!(
        run(&bytes_request(&c, 3), &s, &cfg),
        Err(PlacementError::MinNodes { eligible: 2, .. })
    ));
    info.store_fault = None;
    s.nodes.insert(full, Arc::new(info));
    assert!(
        run(&bytes_request(&c, 3), &s, &cfg).is_ok(),
        "eligible again once it writes"
    );
}
