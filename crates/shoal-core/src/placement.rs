//! Placement (SYSTEM.md §9): which nodes run a model, and which contiguous layer range each one holds. Pure and
//! O(n log n) in the nodes: sort by capacity, take the fewest nodes whose capacities cover the layers, split the
//! layers in proportion to capacity (or memory bandwidth) with largest remainders. Ids and time are arguments.
//!
//! A card derived from its GGUF header knows the bytes of every layer, of the embedding and of the head
//! (`layer_bytes`, `embedding_bytes`, `head_bytes`): such a model is split by bytes instead of layer counts, the
//! embedding counted on the first stage and the head on the last, so a stage of MoE layers gets fewer of them than
//! a stage of dense ones. A card typed by hand (no per-layer bytes) keeps the even split of §9.

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
    /// Place a model whose files only `path` sources name on the nodes that hold them (State's download facts)
    /// only. Off for "would it fit at all" checks made before any node has reported the files.
    pub require_files: bool,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            runner_overhead: 512 << 20,
            kv_budget_tokens: 32_768,
            kv_bytes: 2,
            memory_fraction: 0.9,
            bandwidth_weighting: false,
            require_files: true,
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
    /// The model's files can only be found where they are (a `path` source), this node has not reported them, and
    /// no node that holds them serves files to its peers.
    NoModelFiles,
    /// Its store cannot write (a full disk): it takes no new work until it can (issue 15).
    StoreFails,
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

/// Bytes of KV cache one layer of `card` is budgeted.
pub fn kv_per_layer(card: &ModelCard, cfg: &PlacementConfig) -> u64 {
    let head_dim = card
        .head_dim
        .unwrap_or(card.hidden_size / card.num_attention_heads.max(1));
    2 * u64::from(card.num_key_value_heads) * u64::from(head_dim) * cfg.kv_bytes * cfg.kv_budget_tokens
}

/// Bytes one layer of `card` costs on a node on average: its share of the weights plus its KV budget.
pub fn layer_cost(card: &ModelCard, cfg: &PlacementConfig) -> u64 {
    card.storage_size / u64::from(card.n_layers.max(1)) + kv_per_layer(card, cfg)
}

/// Whether the card knows its per-layer bytes (derived from the GGUF): placement then splits by bytes.
fn by_bytes(card: &ModelCard) -> bool {
    !card.layer_bytes.is_empty()
}

/// What each layer costs a stage, with the embedding folded into layer 0 and the head into the last layer: the
/// stage that holds layer 0 is the first and holds the embedding, the one that holds the last layer holds the head.
pub fn layer_costs(card: &ModelCard, cfg: &PlacementConfig) -> Vec<u64> {
    let kv = kv_per_layer(card, cfg);
    let n = card.n_layers;
    let mut costs: Vec<u64> = (0..n).map(|i| card.layer_weight_bytes(i).saturating_add(kv)).collect();
    if let Some(first) = costs.first_mut() {
        *first = first.saturating_add(card.embedding_bytes);
    }
    if let Some(last) = costs.last_mut() {
        *last = last.saturating_add(card.head_bytes);
    }
    costs
}

struct Candidate<'a> {
    id: NodeId,
    info: &'a NodeInfo,
    cap: u32,
    /// Bytes the node can give the model's weights and KV (after the runner's overhead).
    budget: u64,
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
            node_budget(state, id, info, card, cfg)
                .and_then(|budget| capacity(budget, card, cfg).map(|cap| (budget, cap)))
        };
        match verdict {
            Ok((budget, cap)) => eligible.push(Candidate {
                id: *id,
                info,
                cap,
                budget,
                downloaded: download_fraction(info.downloads.get(&card.id)),
            }),
            Err(why) => ineligible.push((*id, why)),
        }
    }
    // Largest first: by budget for a byte split (the first stage, with the embedding, goes to the largest node).
    let bytes = by_bytes(card);
    eligible.sort_by(|a, b| {
        let (a_size, b_size) = if bytes {
            (a.budget, b.budget)
        } else {
            (u64::from(a.cap), u64::from(b.cap))
        };
        b_size
            .cmp(&a_size)
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
    if by_bytes(card) {
        let (chosen, layers) = choose_by_bytes(req, card, cfg, &eligible, min_nodes)?;
        return Ok(finish(card, cfg, fresh, chosen, &layers, ineligible));
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
    Ok(finish(card, cfg, fresh, chosen, &layers, ineligible))
}

/// The instance of `layers[r]` layers on `chosen[r]`, in rank order, with each node's share.
fn finish(
    card: &ModelCard,
    cfg: &PlacementConfig,
    fresh: Fresh<'_>,
    chosen: &[Candidate<'_>],
    layers: &[u32],
    ineligible: Vec<(NodeId, Ineligible)>,
) -> Placement {
    let n_layers = card.n_layers;
    let k = chosen.len();
    let kv_per_layer = kv_per_layer(card, cfg);
    let mut shards = OrdMap::new();
    let mut node_runner = OrdMap::new();
    let mut shares = Vec::with_capacity(k);
    let mut start = 0;
    for (rank, (c, &x)) in chosen.iter().zip(layers).enumerate() {
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
            weight_bytes: card.stage_weight_bytes(start, start + x),
            kv_bytes: kv_per_layer * u64::from(x),
        });
        start += x;
    }
    Placement {
        instance: Instance {
            id: fresh.instance,
            deployment: fresh.deployment,
            model: card.clone(),
            assignments: ShardAssignments { shards, node_runner },
            runner_failures: OrdMap::new(),
            created_ms: fresh.now_ms,
            // The master sets the secret after placing (`FreshIds::token`); previews never show it.
            token: Default::default(),
        },
        shares,
        ineligible,
    }
}

/// Byte placement: nodes sorted by what they can hold; the fewest (at least `min_nodes`) over which the layers'
/// real costs split contiguously within each node's budget.
fn choose_by_bytes<'c, 'a>(
    req: &PlacementRequest,
    card: &ModelCard,
    cfg: &PlacementConfig,
    eligible: &'c [Candidate<'a>],
    min_nodes: u32,
) -> Result<(&'c [Candidate<'a>], Vec<u32>), PlacementError> {
    let costs = layer_costs(card, cfg);
    let need: u64 = costs.iter().sum();
    let n_layers = card.n_layers as usize;
    let first_k = (min_nodes as usize).min(eligible.len());
    if first_k > n_layers {
        return Err(PlacementError::TooFewLayers);
    }
    // More stages than layers cannot help: a model that no `n_layers` nodes hold is short of memory.
    for k in first_k..=eligible.len().min(n_layers) {
        let chosen = &eligible[..k];
        let budgets: Vec<u64> = chosen.iter().map(|c| c.budget).collect();
        if budgets.iter().sum::<u64>() < need {
            continue;
        }
        let weights = weights(chosen, cfg.bandwidth_weighting, |c| c.budget as f64);
        if let Some(layers) = split_bytes(&costs, &budgets, &weights) {
            if req.max_nodes.is_some_and(|max| k as u64 > u64::from(max)) {
                return Err(PlacementError::MaxNodes { needed: k as u32 });
            }
            return Ok((chosen, layers));
        }
    }
    Err(PlacementError::InsufficientMemory {
        need,
        have: eligible.iter().map(|c| c.budget).sum(),
    })
}

/// Split weights: memory (`by_memory`) unless bandwidth weighting is on and every chosen node reports bandwidth.
fn weights(chosen: &[Candidate<'_>], by_bandwidth: bool, by_memory: impl Fn(&Candidate<'_>) -> f64) -> Vec<f64> {
    let bandwidths: Option<Vec<f64>> = chosen
        .iter()
        .map(|c| c.info.mem_bandwidth_gbps.filter(|b| *b > 0.0).map(f64::from))
        .collect();
    match (by_bandwidth, bandwidths) {
        (true, Some(b)) => b,
        _ => chosen.iter().map(by_memory).collect(),
    }
}

/// Contiguous split of layers with per-layer `costs` over stages with `budgets`, in order, each stage at least one
/// layer and within its budget, each stage boundary as close as it can be to where `weights` put it. `None` when no
/// split fits (as far as a greedy fill can tell).
pub fn split_bytes(costs: &[u64], budgets: &[u64], weights: &[f64]) -> Option<Vec<u32>> {
    let (n, k) = (costs.len(), budgets.len());
    if k == 0 || k > n {
        return None;
    }
    let mut prefix = vec![0u64; n + 1];
    for (i, c) in costs.iter().enumerate() {
        prefix[i + 1] = prefix[i].saturating_add(*c);
    }
    let total = prefix[n] as f64;
    let wsum: f64 = weights.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    // Whether layers [from, n) fit stages r.. (each at least one layer): fill each stage as far as it goes.
    let fits = |mut from: usize, r: usize| -> bool {
        for (s, budget) in budgets.iter().enumerate().skip(r) {
            let later = k - s - 1;
            let mut end = from;
            while end < n - later && prefix[end + 1] - prefix[from] <= *budget {
                end += 1;
            }
            if end == from {
                return false;
            }
            from = end;
        }
        from == n
    };
    if !fits(0, 0) {
        return None;
    }
    let mut layers = Vec::with_capacity(k);
    let mut start = 0usize;
    let mut cumulative_weight = 0.0;
    for (r, budget) in budgets.iter().enumerate().take(k - 1) {
        cumulative_weight += weights.get(r).copied().unwrap_or(0.0);
        let target = total * cumulative_weight / wsum;
        let later = k - r - 1;
        let mut best: Option<(f64, usize)> = None;
        for end in start + 1..=n - later {
            if prefix[end] - prefix[start] > *budget {
                break;
            }
            if !fits(end, r + 1) {
                continue;
            }
            let distance = (prefix[end] as f64 - target).abs();
            if best.is_none_or(|(d, _)| distance < d) {
                best = Some((distance, end));
            }
        }
        let (_, end) = best?;
        layers.push((end - start) as u32);
        start = end;
    }
    if prefix[n] - prefix[start] > budgets[k - 1] {
        return None;
    }
    layers.push((n - start) as u32);
    Some(layers)
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

/// How many layers of `card` node `id` can take now (§9 step 4), or why it can take none. For a card with per-layer
/// bytes, layers of average size.
pub fn node_capacity(
    state: &State,
    id: &NodeId,
    info: &NodeInfo,
    card: &ModelCard,
    cfg: &PlacementConfig,
) -> Result<u32, Ineligible> {
    capacity(node_budget(state, id, info, card, cfg)?, card, cfg)
}

/// Layers (of average cost) that fit a budget. For a card with per-layer bytes any budget counts (at least one
/// layer): whether the layers really fit is the byte split's to find, and a model too large for every node is then
/// `InsufficientMemory` with its bytes, not "no eligible node".
fn capacity(budget: u64, card: &ModelCard, cfg: &PlacementConfig) -> Result<u32, Ineligible> {
    let cost = if by_bytes(card) {
        if budget == 0 {
            return Err(Ineligible::NoCapacity);
        }
        let costs = layer_costs(card, cfg);
        (costs.iter().sum::<u64>() / u64::from(card.n_layers.max(1))).max(1)
    } else {
        layer_cost(card, cfg).max(1)
    };
    match u32::try_from((budget / cost).min(u64::from(u32::MAX))) {
        Ok(0) if !by_bytes(card) => Err(Ineligible::NoCapacity),
        Ok(cap) => Ok(cap.max(1)),
        Err(_) => Err(Ineligible::NoCapacity),
    }
}

/// Bytes node `id` can give `card`'s weights and KV now (§9 step 4: 90 % of its available memory, less what runners
/// not yet loaded will take and one runner's overhead), or why it can give none.
pub fn node_budget(
    state: &State,
    id: &NodeId,
    info: &NodeInfo,
    card: &ModelCard,
    cfg: &PlacementConfig,
) -> Result<u64, Ineligible> {
    if info.store_fault.is_some() {
        return Err(Ineligible::StoreFails);
    }
    if !info.backends.iter().any(|b| card.backends.contains(b)) {
        return Err(Ineligible::NoBackend);
    }
    let Some(mem) = info.memory else {
        return Err(Ineligible::NoMemoryInfo);
    };
    if cfg.require_files && card.files_only_where_held() && !holds_files(info, card) && !shared_by_a_peer(state, card) {
        return Err(Ineligible::NoModelFiles);
    }
    let avail = (mem.available as f64 * cfg.memory_fraction) as u64;
    let avail = avail.saturating_sub(reserved(state, id, cfg));
    Ok(avail.saturating_sub(cfg.runner_overhead))
}

/// Whether the node reported the model's files present and verified.
fn holds_files(info: &NodeInfo, card: &ModelCard) -> bool {
    matches!(info.downloads.get(&card.id), Some(DownloadProgress::Completed { .. }))
}

/// Whether some node holds the model's files and serves model files to its peers, so any node can fetch them from
/// it (issue 18; `crate::fetch`).
fn shared_by_a_peer(state: &State, card: &ModelCard) -> bool {
    state
        .nodes
        .values()
        .any(|info| !info.file_server.is_empty() && holds_files(info, card))
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
            let card = &instance.model;
            let weights = card.stage_weight_bytes(shard.start_layer, shard.end_layer);
            Some(weights + u64::from(shard.layers()) * kv_per_layer(card, cfg) + cfg.runner_overhead)
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
    let weights = weights(chosen, by_bandwidth, |c| f64::from(c.cap));
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
