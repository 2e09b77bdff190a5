//! Where a node fetches a model's files (issue 18): peers that hold them first; otherwise one node of the cluster, the
//! same one in every node's eyes, downloads from the card's sources while the others wait for it.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use imbl::OrdMap;
use shoal_core::apply::apply_in_place;
use shoal_core::fetch::{FetchPlan, Holder, plan};
use shoal_types::card::{ModelCard, builtin_cards};
use shoal_types::ids::{InstanceId, ModelId, NodeId, RunnerId};
use shoal_types::model::{DownloadProgress, Instance, NodeFact, PipelineShard, ShardAssignments, ShardMetadata};
use shoal_types::{Event, IndexedEvent, SessionId, State};

const SESSION: SessionId = SessionId {
    term: 1,
    master: NodeId::from_bytes([0x77; 16]),
};

fn card() -> ModelCard {
    builtin_cards()
        .into_iter()
        .find(|c| c.aliases.iter().any(|a| a == "smollm2-135m"))
        .unwrap()
}

fn model() -> ModelId {
    card().id
}

fn node(i: u8) -> NodeId {
    NodeId::from_random([0x10 + i; 16]).unwrap()
}

fn file_server(i: u8) -> Vec<SocketAddr> {
    vec![SocketAddr::from(([10, 0, 0, i], 7000))]
}

fn fold(state: &mut State, events: &[Event]) {
    for event in events {
        let indexed = IndexedEvent {
            idx: (state.pos.idx + 1) as u64,
            session: SESSION,
            prev: state.pos.session,
            time_ms: 1_000,
            origin: None,
            event: event.clone(),
        };
        apply_in_place(state, &indexed).unwrap();
    }
}

/// Nodes 0..n, each serving files; one instance of the test model over `placed`.
fn cluster(n: u8, placed: &[u8]) -> State {
    let mut state = State::empty();
    let base = state.pos;
    fold(&mut state, &[Event::SessionOpened { session: SESSION, base }]);
    for i in 0..n {
        let info = NodeFact::FileServer(file_server(i));
        fold(&mut state, &[Event::NodeGatheredInfo { node: node(i), info }]);
    }
    let card = card();
    let mut assignments = ShardAssignments::default();
    for (rank, i) in placed.iter().enumerate() {
        let runner = RunnerId::from_u128(0x100 + u128::from(*i));
        let shard = PipelineShard {
            start_layer: 0,
            end_layer: card.n_layers,
            n_layers: card.n_layers,
            device_rank: rank as u32,
            world_size: placed.len() as u32,
        };
        assignments.shards.insert(runner, ShardMetadata::Pipeline(shard));
        assignments.node_runner.insert(node(*i), runner);
    }
    let instance = Instance {
        id: InstanceId::from_u128(1),
        deployment: None,
        model: card,
        assignments,
        runner_failures: OrdMap::new(),
        created_ms: 0,
        token: Default::default(),
    };
    fold(&mut state, &[Event::InstanceCreated { instance }]);
    state
}

fn download(state: &mut State, i: u8, progress: DownloadProgress) {
    fold(
        state,
        &[Event::DownloadUpdated {
            node: node(i),
            model_id: model(),
            progress,
        }],
    );
}

fn holder(i: u8) -> Holder {
    Holder {
        node: node(i),
        addrs: file_server(i),
    }
}

const NONE: &BTreeSet<NodeId> = &BTreeSet::new();

#[test]
fn peers_that_hold_the_files_verified_come_first_all_of_them() {
    let mut state = cluster(4, &[0, 1, 2, 3]);
    download(&mut state, 1, DownloadProgress::Completed { total: 10 });
    download(&mut state, 2, DownloadProgress::Ongoing { done: 5, total: 10 });
    download(&mut state, 3, DownloadProgress::Completed { total: 10 });
    assert_eq!(
        plan(&state, node(0), &model(), NONE),
        FetchPlan::Peers(vec![holder(1), holder(3)])
    );
    // A holder is never asked for its own files.
    assert_eq!(plan(&state, node(1), &model(), NONE), FetchPlan::Peers(vec![holder(3)]));
}

#[test]
fn a_holder_that_serves_no_files_or_whose_files_are_gone_is_no_holder() {
    let mut state = cluster(3, &[0, 1, 2]);
    download(&mut state, 1, DownloadProgress::Completed { total: 10 });
    download(&mut state, 2, DownloadProgress::Completed { total: 10 });
    fold(
        &mut state,
        &[Event::NodeGatheredInfo {
            node: node(1),
            info: NodeFact::FileServer(vec![]),
        }],
    );
    download(&mut state, 2, DownloadProgress::Gone);
    // Nobody holds it: node 0, the lowest, downloads.
    assert_eq!(plan(&state, node(0), &model(), NONE), FetchPlan::Sources);
}

#[test]
fn with_no_holder_every_node_names_the_same_downloader_and_the_others_wait_for_it() {
    let state = cluster(3, &[0, 1, 2]);
    let lowest = (0..3).map(node).min().unwrap();
    for i in 0..3 {
        let want = if node(i) == lowest {
            FetchPlan::Sources
        } else {
            FetchPlan::WaitFor(lowest)
        };
        assert_eq!(plan(&state, node(i), &model(), NONE), want, "node {i}");
    }
}

#[test]
fn when_the_downloader_fails_the_next_node_takes_over() {
    let mut state = cluster(3, &[0, 1, 2]);
    let mut order: Vec<u8> = (0..3).collect();
    order.sort_by_key(|i| node(*i));
    download(
        &mut state,
        order[0],
        DownloadProgress::Failed {
            error: "no route".into(),
        },
    );
    assert_eq!(plan(&state, node(order[1]), &model(), NONE), FetchPlan::Sources);
    assert_eq!(
        plan(&state, node(order[2]), &model(), NONE),
        FetchPlan::WaitFor(node(order[1]))
    );
    // The failed node tries again itself only when it is the lowest that has not failed: here it waits.
    assert_eq!(
        plan(&state, node(order[0]), &model(), NONE),
        FetchPlan::WaitFor(node(order[1]))
    );
}

#[test]
fn a_node_that_does_not_need_the_model_is_never_the_downloader() {
    // Node 0 has no runner of the model; nodes 1 and 2 do.
    let state = cluster(3, &[1, 2]);
    let first = node(1).min(node(2));
    let second = node(1).max(node(2));
    assert_eq!(plan(&state, first, &model(), NONE), FetchPlan::Sources);
    assert_eq!(plan(&state, second, &model(), NONE), FetchPlan::WaitFor(first));
}

#[test]
fn peers_to_avoid_are_neither_holders_nor_downloaders() {
    let mut state = cluster(3, &[0, 1, 2]);
    download(&mut state, 1, DownloadProgress::Completed { total: 10 });
    let avoid: BTreeSet<NodeId> = [node(1)].into();
    let rest = node(0).min(node(2));
    let me = node(0).max(node(2));
    assert_eq!(plan(&state, me, &model(), &avoid), FetchPlan::WaitFor(rest));
    assert_eq!(plan(&state, rest, &model(), &avoid), FetchPlan::Sources);
}
