//! Where a node gets a model's files (issue 18): from peers that hold them first, and from the internet at most once
//! per cluster.
//!
//! Pure over State: the worker asks [`plan`] each time it starts a download of a model its runners need and found
//! no copy on its own disk. The answer is one of:
//! - [`FetchPlan::Peers`]: nodes that hold the files verified (`Completed` in their downloads) and serve them
//!   (a file server address in State). The transfer pulls from all of them at once.
//! - [`FetchPlan::WaitFor`]: no peer holds them yet, and another node is the cluster's one downloader of this model:
//!   wait and ask again, then fetch from that node.
//! - [`FetchPlan::Sources`]: this node is the downloader: the card's own sources (`pip`, `hf`, ...).
//!
//! The downloader is chosen without any message: the lowest node id among the nodes that need the model (State
//! assigns them a runner of an instance of it) and did not fail their last fetch of it. Every node computes
//! the same answer from the same State, so two nodes never both start from the internet because their
//! announcements crossed. The downloader's `DownloadUpdated` progress is what the others see meanwhile; when its
//! download fails (`Failed` in State) the next node in order takes over.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use shoal_types::State;
use shoal_types::ids::{ModelId, NodeId};
use shoal_types::model::DownloadProgress;

/// How long a node waiting for the cluster's downloader waits before asking [`plan`] again.
pub const WAIT_FOR_DOWNLOADER_MS: u64 = 2_000;
/// How long a peer that served bad bytes or failed a transfer is left out of this node's plans.
pub const BAD_PEER_MS: u64 = 60_000;

/// A node that holds the model's files, and where it serves them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub node: NodeId,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchPlan {
    /// Fetch from these peers at once (never empty), in node-id order.
    Peers(Vec<Holder>),
    /// Another node is the cluster's downloader of this model: wait for it.
    WaitFor(NodeId),
    /// This node downloads the model from its card's own sources.
    Sources,
}

/// Where `me` should fetch `model` from now. `avoid` are peers this node saw fail a transfer recently (they are
/// neither holders nor downloaders to it).
pub fn plan(state: &State, me: NodeId, model: &ModelId, avoid: &BTreeSet<NodeId>) -> FetchPlan {
    let holders: Vec<Holder> = state
        .nodes
        .iter()
        .filter(|(node, info)| {
            **node != me
                && !avoid.contains(node)
                && !info.file_server.is_empty()
                && matches!(info.downloads.get(model), Some(DownloadProgress::Completed { .. }))
        })
        .map(|(node, info)| Holder {
            node: *node,
            addrs: info.file_server.clone(),
        })
        .collect();
    if !holders.is_empty() {
        return FetchPlan::Peers(holders);
    }
    match downloader(state, me, model, avoid) {
        node if node == me => FetchPlan::Sources,
        node => FetchPlan::WaitFor(node),
    }
}

/// The cluster's one downloader of `model` as `me` sees it: the lowest id among the nodes that need the model (a
/// runner of an instance of it is assigned to them, or it is `me`), are in State, serve files (so the others can
/// fetch from them afterwards), have not failed their last fetch of it and are not in `avoid`. When every one of them
/// failed, `me` tries again (after its own backoff): someone must.
fn downloader(state: &State, me: NodeId, model: &ModelId, avoid: &BTreeSet<NodeId>) -> NodeId {
    let needing: BTreeSet<NodeId> = state
        .instances
        .values()
        .filter(|instance| instance.model.id == *model)
        .flat_map(|instance| instance.assignments.node_runner.keys().copied())
        .chain([me])
        .collect();
    let failed = |node: &NodeId| {
        state
            .nodes
            .get(node)
            .is_some_and(|info| matches!(info.downloads.get(model), Some(DownloadProgress::Failed { .. })))
    };
    needing
        .into_iter()
        .filter(|node| *node == me || !avoid.contains(node))
        .filter(|node| *node == me || state.nodes.get(node).is_some_and(|info| !info.file_server.is_empty()))
        .find(|node| !failed(node))
        .unwrap_or(me)
}
