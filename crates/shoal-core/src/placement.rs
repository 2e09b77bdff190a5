//! Placement (SYSTEM.md §9): which nodes run a model, and which contiguous layer range each one holds. Pure and
//! O(n log n) in the nodes: sort by capacity, take the fewest nodes whose capacities cover the layers, split the
//! layers in proportion to capacity (or memory bandwidth) with largest remainders. Ids and time are arguments.

use imbl::OrdMap;
use shoal_types::card::{ModelCard, builtin_cards, find_card};
use shoal_types::command::PlacementError;
use shoal_types::ids::{DeploymentId, InstanceId, ModelId, NodeId, RunnerId};
use shoal_types::model::{
    DownloadProgress, Instance, NodeInfo, PipelineShard, RunnerStatus, ShardAssignments, ShardMetadata, Sharding,
};
use shoal_types::state::State;

/// What to place; the fields of `Command::PlaceInstance`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacementRequest {
    pub model_id: ModelId,
    pub sharding: Sharding,
    pub min_nodes: u32,
    pub max_nodes: Option<u32>,
    /// Restrict placement to these nodes.
    pub nodes: Option<Vec<NodeId>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlacementConfig {
    /// Memory a runner process needs beyond its weights and KV cache.
    pub runner_overhead: u64,
    /// Tokens of KV cache budgeted per layer.
    pub kv_budget_tokens: u64,
    /// Bytes per KV element (f16).
    pub kv_bytes: u64,
    /// Share of a node's available memory placement may use.
    pub memory_fraction: f64,
    /// Split by memory bandwidth instead of capacity when every chosen node reports it.
    pub bandwidth_weighting: bool,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            runner_overhead: 512 << 20,
            kv_budget_tokens: 32_768,
            kv_bytes: 2,
            memory_fraction: 0.9,
            bandwidth_weighting: false,
        }
    }
}

/// Why a node was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Not in the request's node list.
    NotRequested,
    /// It has not reported its memory yet.
    NoMemoryInfo,
    /// None of its backends runs this model.
    NoBackend,
    /// Not even one layer fits.
    NoCapacity,
}

/// One node's share, for previews.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeShare {
    pub node: NodeId,
    pub runner: RunnerId,
    pub layers: u32,
    pub weight_bytes: u64,
    pub kv_bytes: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    pub instance: Instance,
    /// In rank order.
    pub shares: Vec<NodeShare>,
    pub ineligible: Vec<(NodeId, Ineligible)>,
}

/// Ids and time the placement needs; passed in so `place` stays pure.
pub struct Fresh<'a> {
    pub instance: InstanceId,
    pub deployment: Option<DeploymentId>,
    pub now_ms: u64,
    pub runner_id: &'a mut dyn FnMut() -> RunnerId,
}

/// Bytes one layer of `card` costs on a node: its share of the weights plus its KV budget.
pub fn layer_cost(card: &ModelCard, cfg: &PlacementConfig) -> u64 {
    let head_dim = card
        .head_dim
        .unwrap_or(card.hidden_size / card.num_attention_heads.max(1));
    let kv = 2 * u64::from(card.num_key_value_heads) * u64::from(head_dim) * cfg.kv_bytes * cfg.kv_budget_tokens;
    card.storage_size / u64::from(card.n_layers.max(1)) + kv
}

struct Candidate<'a> {
    id: NodeId,
    info: &'a NodeInfo,
    cap: u32,
    downloaded: f64,
}

pub fn place(
    req: &PlacementRequest,
    state: &State,
    cfg: &PlacementConfig,
    fresh: Fresh<'_>,
) -> Result<Placement, PlacementError> {
    if req.sharding != Sharding::Pipeline {
        return Err(PlacementError::UnsupportedSharding);
    }
    let card = resolve_card(state, &req.model_id).ok_or_else(|| PlacementError::UnknownModel(req.model_id.clone()))?;
    let card = &card;
    if let Some(named) = &req.nodes
        && let Some(unknown) = named.iter().find(|n| !state.nodes.contains_key(*n))
    {
        return Err(PlacementError::NodeNotFound(*unknown));
    }
    let n_layers = card.n_layers;
    let cost = layer_cost(card, cfg).max(1);

    let mut eligible = Vec::new();
    let mut ineligible = Vec::new();
    for (id, info) in &state.nodes {
        let verdict = if req.nodes.as_ref().is_some_and(|named| !named.contains(id)) {
            Err(Ineligible::NotRequested)
        } else {
            node_capacity(state, id, info, card, cfg)
        };
        match verdict {
            Ok(cap) => eligible.push(Candidate {
                id: *id,
                info,
                cap,
                downloaded: download_fraction(info.downloads.get(&card.id)),
            }),
            Err(why) => ineligible.push((*id, why)),
        }
    }
    eligible.sort_by(|a, b| {
        b.cap
            .cmp(&a.cap)
            .then(b.downloaded.total_cmp(&a.downloaded))
            .then(a.id.cmp(&b.id))
    });

    let min_nodes = req.min_nodes.max(1);
    if (eligible.len() as u64) < u64::from(min_nodes) {
        return Err(PlacementError::MinNodes {
            min_nodes,
            eligible: eligible.len() as u32,
        });
    }
    let mut covered = 0u64;
    let mut k = None;
    for (i, c) in eligible.iter().enumerate() {
        covered += u64::from(c.cap);
        if i + 1 >= min_nodes as usize && covered >= u64::from(n_layers) {
            k = Some(i + 1);
            break;
        }
    }
    let Some(k) = k else {
        return Err(PlacementError::InsufficientMemory {
            need: u64::from(n_layers) * cost,
            have: covered * cost,
        });
    };
    if req.max_nodes.is_some_and(|max| k as u64 > u64::from(max)) {
        return Err(PlacementError::MaxNodes { needed: k as u32 });
    }
    if k as u64 > u64::from(n_layers) {
        return Err(PlacementError::TooFewLayers);
    }
    let chosen = &eligible[..k];
    let layers =
        split_layers(chosen, n_layers, cfg.bandwidth_weighting).ok_or_else(|| PlacementError::InsufficientMemory {
            need: u64::from(n_layers) * cost,
            have: chosen.iter().map(|c| u64::from(c.cap)).sum::<u64>() * cost,
        })?;

    let mut shards = OrdMap::new();
    let mut node_runner = OrdMap::new();
    let mut shares = Vec::with_capacity(k);
    let mut start = 0;
    let kv_per_layer = cost - card.storage_size / u64::from(n_layers.max(1));
    for (rank, (c, &x)) in chosen.iter().zip(&layers).enumerate() {
        let runner = (fresh.runner_id)();
        shards.insert(
            runner,
            ShardMetadata::Pipeline(PipelineShard {
                start_layer: start,
                end_layer: start + x,
                n_layers,
                device_rank: rank as u32,
                world_size: k as u32,
            }),
        );
        node_runner.insert(c.id, runner);
        shares.push(NodeShare {
            node: c.id,
            runner,
            layers: x,
            weight_bytes: card.storage_size / u64::from(n_layers.max(1)) * u64::from(x),
            kv_bytes: kv_per_layer * u64::from(x),
        });
        start += x;
    }
    Ok(Placement {
        instance: Instance {
            id: fresh.instance,
            deployment: fresh.deployment,
            model: card.clone(),
            assignments: ShardAssignments { shards, node_runner },
            runner_failures: OrdMap::new(),
            created_ms: fresh.now_ms,
        },
        shares,
        ineligible,
    })
}

/// The card `name` (an id or an alias) names: a custom card in State first, then a built-in.
pub fn resolve_card(state: &State, name: &ModelId) -> Option<ModelCard> {
    if let Some(card) = state.model_cards.get(name) {
        return Some(card.as_ref().clone());
    }
    if let Some(card) = find_card(state.model_cards.values().map(|c| c.as_ref()), &name.0) {
        return Some(card.clone());
    }
    find_card(&builtin_cards(), &name.0).cloned()
}

/// How many layers of `card` node `id` can take now (§9 step 4), or why it can take none.
pub fn node_capacity(
    state: &State,
    id: &NodeId,
    info: &NodeInfo,
    card: &ModelCard,
    cfg: &PlacementConfig,
) -> Result<u32, Ineligible> {
    if !info.backends.iter().any(|b| card.backends.contains(b)) {
        return Err(Ineligible::NoBackend);
    }
    let Some(mem) = info.memory else {
        return Err(Ineligible::NoMemoryInfo);
    };
    let cost = layer_cost(card, cfg).max(1);
    let avail = (mem.available as f64 * cfg.memory_fraction) as u64;
    let avail = avail.saturating_sub(reserved(state, id, cfg));
    let cap = avail.saturating_sub(cfg.runner_overhead) / cost;
    match u32::try_from(cap.min(u64::from(u32::MAX))) {
        Ok(0) | Err(_) => Err(Ineligible::NoCapacity),
        Ok(cap) => Ok(cap),
    }
}

/// Memory promised to runners on `node` that have not loaded yet (their use is not yet visible in `available`).
fn reserved(state: &State, node: &NodeId, cfg: &PlacementConfig) -> u64 {
    state
        .runners
        .iter()
        .filter(|(_, r)| r.node == *node && matches!(r.status, RunnerStatus::Idle | RunnerStatus::Loading { .. }))
        .filter_map(|(id, r)| {
            let instance = state.instances.get(&r.instance)?;
            let Some(ShardMetadata::Pipeline(shard)) = instance.assignments.shards.get(id) else {
                return None;
            };
            Some(u64::from(shard.layers()) * layer_cost(&instance.model, cfg) + cfg.runner_overhead)
        })
        .sum()
}

fn download_fraction(p: Option<&DownloadProgress>) -> f64 {
    match p {
        Some(DownloadProgress::Completed { .. }) => 1.0,
        Some(DownloadProgress::Ongoing { done, total }) if *total > 0 => *done as f64 / *total as f64,
        _ => 0.0,
    }
}

/// Largest-remainder split of `n_layers` over the chosen nodes, each between 1 and its capacity; `None` when the
/// capacities cannot hold them.
fn split_layers(chosen: &[Candidate<'_>], n_layers: u32, by_bandwidth: bool) -> Option<Vec<u32>> {
    let bandwidths: Option<Vec<f64>> = chosen
        .iter()
        .map(|c| c.info.mem_bandwidth_gbps.filter(|b| *b > 0.0).map(f64::from))
        .collect();
    let weights: Vec<f64> = match (by_bandwidth, bandwidths) {
        (true, Some(b)) => b,
        _ => chosen.iter().map(|c| f64::from(c.cap)).collect(),
    };
    let total: f64 = weights.iter().sum();
    let ideal: Vec<f64> = weights.iter().map(|w| f64::from(n_layers) * w / total).collect();
    let mut x: Vec<u32> = ideal
        .iter()
        .zip(chosen)
        .map(|(t, c)| (t.floor() as u32).min(c.cap).max(1))
        .collect();
    let mut sum: u32 = x.iter().sum();
    while sum < n_layers {
        let best = (0..x.len()).filter(|&i| x[i] < chosen[i].cap).max_by(|&a, &b| {
            (ideal[a] - f64::from(x[a]))
                .total_cmp(&(ideal[b] - f64::from(x[b])))
                .then(b.cmp(&a))
        })?;
        x[best] += 1;
        sum += 1;
    }
    while sum > n_layers {
        let most = (0..x.len())
            .filter(|&i| x[i] > 1)
            .max_by(|&a, &b| x[a].cmp(&x[b]).then(b.cmp(&a)))?;
        x[most] -= 1;
        sum -= 1;
    }
    Some(x)
}
