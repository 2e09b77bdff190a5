//! The KV cache of one layer and causal grouped-query attention over it.
//!
//! The cache stores its element type ([`KvType`]): f32 (the default, whose greedy output matches llama.cpp's
//! `-ctk f32 -ctv f32`) or f16 (half the memory, what the placement budgets; llama.cpp's default). Attention reads an
//! f16 cache in place through [`crate::kernels::f16`]: no f32 copy of the cache is ever made.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::kernels::pool::{self, ItemJob};
use crate::kernels::{self, Pool, f16};
use crate::ops::SeqRows;

/// The element type of a KV cache.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// Keys and values as computed: greedy output identical to llama.cpp's `-ctk f32 -ctv f32`.
    #[default]
    F32,
    /// IEEE half precision, rounded to nearest even on append: half the bytes of F32.
    F16,
}

impl KvType {
    pub const ALL: [KvType; 2] = [KvType::F32, KvType::F16];

    /// Bytes of one stored key or value element.
    pub fn element_bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// The name a flag takes (`f32`, `f16`), as llama.cpp's `--cache-type-k` spells them.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A KV cache type name that is not one of [`KvType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown KV cache type {0:?}: expected f32 or f16")]
pub struct UnknownKvType(pub String);

impl FromStr for KvType {
    type Err = UnknownKvType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownKvType(s.to_string()))
    }
}

#[derive(Debug, Clone)]
enum Store {
    F32 {
        k: Vec<f32>,
        v: Vec<f32>,
    },
    /// f16 bits.
    F16 {
        k: Vec<u16>,
        v: Vec<u16>,
    },
}

impl Store {
    fn kv_type(&self) -> KvType {
        match self {
            Store::F32 { .. } => KvType::F32,
            Store::F16 { .. } => KvType::F16,
        }
    }
}

/// One layer's keys and values for one sequence: `len` rows of (kv_heads × head_dim) values each, appended in place.
///
/// The rows sit behind an `Arc<RwLock>` so that the kernel pool's long-lived workers can read them during attention
/// (their jobs must own what they read); only [`LayerKv::append`] writes, on the caller's thread, between steps.
#[derive(Debug)]
pub struct LayerKv {
    store: Arc<RwLock<Store>>,
    len: usize,
}

impl Clone for LayerKv {
    /// A deep copy: the clone's rows are its own.
    fn clone(&self) -> Self {
        Self {
            store: Arc::new(RwLock::new(read(&self.store).clone())),
            len: self.len,
        }
    }
}

impl Default for LayerKv {
    fn default() -> Self {
        Self::new(KvType::F32)
    }
}

fn read(store: &RwLock<Store>) -> RwLockReadGuard<'_, Store> {
    store.read().unwrap_or_else(|e| e.into_inner())
}

impl LayerKv {
    pub fn new(ty: KvType) -> Self {
        let store = match ty {
            KvType::F32 => Store::F32 {
                k: Vec::new(),
                v: Vec::new(),
            },
            KvType::F16 => Store::F16 {
                k: Vec::new(),
                v: Vec::new(),
            },
        };
        Self {
            store: Arc::new(RwLock::new(store)),
            len: 0,
        }
    }

    pub fn kv_type(&self) -> KvType {
        read(&self.store).kv_type()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `n` rows of keys and values (each `n × width`), converted to the cache's type.
    pub fn append(&mut self, k: &[f32], v: &[f32], width: usize) {
        debug_assert_eq!(k.len(), v.len());
        let keep = self.len * width;
        // Readers are attention jobs of earlier steps, all finished: this never waits.
        match &mut *self.store.write().unwrap_or_else(|e| e.into_inner()) {
            Store::F32 { k: ks, v: vs } => {
                ks.truncate(keep);
                vs.truncate(keep);
                ks.extend_from_slice(k);
                vs.extend_from_slice(v);
            }
            Store::F16 { k: ks, v: vs } => {
                ks.truncate(keep);
                vs.truncate(keep);
                f16::extend_f16(ks, k);
                f16::extend_f16(vs, v);
            }
        }
        self.len += k.len() / width.max(1);
    }

    /// Drops everything after `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Bytes held by this cache (capacity, not length).
    pub fn bytes(&self) -> usize {
        let store = read(&self.store);
        let elements = match &*store {
            Store::F32 { k, v } => k.capacity() + v.capacity(),
            Store::F16 { k, v } => k.capacity() + v.capacity(),
        };
        elements * store.kv_type().element_bytes()
    }
}

/// Shapes of grouped-query attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Keys (and values) per tile: one tile stays in L1 while every query of a work unit reads it (64 keys of 64 f32
/// are 16 KiB), so a unit reads its kv head's rows from memory once, not once per query.
const KEYS_PER_TILE: usize = 64;
/// Query rows per work unit in a prefill chunk: with a group of 3 query heads, 24 queries share each tile.
const ROWS_PER_UNIT: usize = 8;
/// The most scores a unit holds at once (4 MiB of f32); long contexts get fewer rows per unit.
const MAX_UNIT_SCORES: usize = 1 << 20;
/// Below this many (query head, key) pairs a call runs on the caller alone: handing out work costs about a
/// microsecond, which a few thousand scores repay.
const POOL_MIN_PAIRS: usize = 1 << 11;
/// Work units per thread to aim for, so that uneven units (causal rows cost more the later they sit) balance.
const UNITS_PER_THREAD: usize = 3;

/// Causal grouped-query attention of `n` new queries at positions `past..past + n` over a cache holding positions
/// `0..past + n`. q: (n, heads, head_dim); returns (n, heads × head_dim). Query head h reads kv head h / group, as
/// llama.cpp does. Split over the pool's threads; every row is computed the same way whatever the split.
pub fn causal_attention(
    q: &[f32],
    kv: &LayerKv,
    past: usize,
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    pool: &Pool,
) {
    causal_attention_windowed(q, kv, past, shape, scale, None, out, pool);
}

/// [`causal_attention`] where, with `window` = Some(w), the query at position p sees only keys at positions
/// `p - w + 1 ..= p` (llama.cpp's LLAMA_SWA_TYPE_STANDARD mask: key p0 is hidden when p - p0 >= w), as gemma3's
/// local layers attend.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_windowed(
    q: &[f32],
    kv: &LayerKv,
    past: usize,
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
    pool: &Pool,
) {
    let n = q.len() / (shape.heads * shape.head_dim).max(1);
    batch_attention(q, &[kv], &[(0, n, past)], shape, scale, window, out, pool);
}

/// Attention of a whole batch: `seqs[s]` = (first row, rows, position of the first row) of the sequence whose cache is
/// `caches[s]`, each row attending causally over its own sequence only. The work is cut into units of (sequence, query
/// rows, query heads of one kv head) and handed to the pool, so decode steps of many sequences, a decode step over a
/// long context, and prefill chunks all use every thread. Bit for bit what [`causal_attention_reference`] computes.
#[allow(clippy::too_many_arguments)]
pub fn batch_attention(
    q: &[f32],
    caches: &[&LayerKv],
    seqs: &[SeqRows],
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
    pool: &Pool,
) {
    assert_eq!(caches.len(), seqs.len(), "one cache per sequence");
    assert_eq!(q.len(), out.len(), "q and out have the same shape");
    let q_width = shape.heads * shape.head_dim;
    for (&(row, n, past), cache) in seqs.iter().zip(caches) {
        assert!((row + n) * q_width <= q.len(), "sequence rows outside the batch");
        assert!(past + n <= cache.len(), "queries past the cache's end");
    }
    let plan = Plan {
        shape,
        scale,
        window,
        seqs: seqs.to_vec(),
    };
    let units = plan.units(pool.threads());
    let pairs: usize = units.iter().map(|u| plan.cost(u)).sum();
    if pool.threads() < 2 || units.len() < 2 || pairs < POOL_MIN_PAIRS {
        let stores: Vec<_> = caches.iter().map(|c| read(&c.store)).collect();
        UNIT_SCRATCH.with(|scratch| {
            let (scores, result) = &mut *scratch.borrow_mut();
            for u in &units {
                plan.compute(&stores[u.seq], q, u, scores, result);
                plan.place(u, result, |at, v| out[at] = v);
            }
        });
        return;
    }
    let job = Arc::new(AttentionJob {
        q: q.to_vec(),
        stores: caches.iter().map(|c| c.store.clone()).collect(),
        plan,
        items: pool::Items::new(units.len()),
        units,
        failed: AtomicBool::new(false),
        out: pool.slab(out.len()),
    });
    pool.run_items(&job);
    assert!(!job.failed.load(Ordering::Relaxed), "an attention work item panicked");
    for (d, v) in out.iter_mut().zip(job.out.iter()) {
        *d = f32::from_bits(v.load(Ordering::Relaxed));
    }
}

/// A piece of attention work: rows `rows` (relative to the sequence's first row) of sequence `seq`, query heads
/// `heads` (all reading the same kv head).
#[derive(Debug, Clone, Copy)]
struct Unit {
    seq: usize,
    rows: (usize, usize),
    heads: (usize, usize),
}

/// What every unit of one call shares.
#[derive(Debug)]
struct Plan {
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    seqs: Vec<SeqRows>,
}

thread_local! {
    /// A unit's scores and its result, kept per thread between calls.
    static UNIT_SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

impl Plan {
    /// Keys row `i` of sequence `seq` sees: `first..visible`.
    fn span(&self, seq: usize, i: usize) -> (usize, usize) {
        let visible = self.seqs[seq].2 + i + 1;
        (self.window.map_or(0, |w| visible.saturating_sub(w)), visible)
    }

    /// (query head, key) pairs of a unit.
    fn cost(&self, u: &Unit) -> usize {
        let keys: usize = (u.rows.0..u.rows.1)
            .map(|i| {
                let (a, b) = self.span(u.seq, i);
                b - a
            })
            .sum();
        keys * (u.heads.1 - u.heads.0)
    }

    /// The units of this call, costliest first: row blocks of every sequence and kv head, split further into single
    /// query heads when that is needed to give every thread some work.
    fn units(&self, threads: usize) -> Vec<Unit> {
        let AttnShape { heads, kv_heads, .. } = self.shape;
        let group = heads / kv_heads.max(1);
        let mut units = Vec::new();
        for (seq, &(_, n, _)) in self.seqs.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let (lo, _) = self.span(seq, 0);
            let (_, hi) = self.span(seq, n - 1);
            let fit = MAX_UNIT_SCORES / (group * (hi - lo + n)).max(1);
            let block = ROWS_PER_UNIT.min(fit).max(1);
            for r0 in (0..n).step_by(block) {
                for g in 0..kv_heads {
                    units.push(Unit {
                        seq,
                        rows: (r0, (r0 + block).min(n)),
                        heads: (g * group, (g + 1) * group),
                    });
                }
            }
        }
        if group > 1 && units.len() < threads * UNITS_PER_THREAD {
            units = units
                .iter()
                .flat_map(|u| {
                    (u.heads.0..u.heads.1).map(|h| Unit {
                        heads: (h, h + 1),
                        ..*u
                    })
                })
                .collect();
        }
        units.sort_by_key(|u| std::cmp::Reverse(self.cost(u)));
        units
    }

    /// Computes one unit into `result`: query (row i, head h) at `((i - rows.0) · heads + h - heads.0) · head_dim`.
    /// Scores first (tile by tile of keys, every query of the unit per tile), then each query's softmax, then the
    /// values tile by tile. Each query's keys are scored and its values summed in key order, exactly as
    /// [`causal_attention_reference`] does for one query at a time.
    fn compute(&self, store: &Store, q: &[f32], u: &Unit, scores: &mut Vec<f32>, result: &mut Vec<f32>) {
        match store {
            Store::F32 { k, v } => self.compute_with(&F32Rows { k, v }, q, u, scores, result),
            Store::F16 { k, v } => self.compute_with(&F16Rows { k, v }, q, u, scores, result),
        }
    }

    fn compute_with(&self, rows: &impl Rows, q: &[f32], u: &Unit, scores: &mut Vec<f32>, result: &mut Vec<f32>) {
        let AttnShape {
            heads,
            kv_heads,
            head_dim: d,
        } = self.shape;
        let (q_width, kv_width) = (heads * d, kv_heads * d);
        let kvh = u.heads.0 / (heads / kv_heads);
        let (first_row, _, _) = self.seqs[u.seq];
        let nh = u.heads.1 - u.heads.0;
        let queries = (u.rows.1 - u.rows.0) * nh;
        let (lo, _) = self.span(u.seq, u.rows.0);
        let (_, hi) = self.span(u.seq, u.rows.1 - 1);
        let width = hi - lo;
        scores.clear();
        scores.resize(queries * width, 0.0);
        result.clear();
        result.resize(queries * d, 0.0);
        // Query j's scores live at scores[j · width + t - lo] for its keys t.
        let query = |i: usize, h: usize| ((i - u.rows.0) * nh + h - u.heads.0, (first_row + i) * q_width + h * d);
        for t0 in (lo..hi).step_by(KEYS_PER_TILE) {
            let t1 = (t0 + KEYS_PER_TILE).min(hi);
            for i in u.rows.0..u.rows.1 {
                let (first, visible) = self.span(u.seq, i);
                let (a, b) = (t0.max(first), t1.min(visible));
                if a >= b {
                    continue;
                }
                for h in u.heads.0..u.heads.1 {
                    let (j, at) = query(i, h);
                    let s = &mut scores[j * width + a - lo..j * width + b - lo];
                    rows.scores(&q[at..at + d], a * kv_width + kvh * d, kv_width, self.scale, s);
                }
            }
        }
        for i in u.rows.0..u.rows.1 {
            let (first, visible) = self.span(u.seq, i);
            for h in u.heads.0..u.heads.1 {
                let (j, _) = query(i, h);
                softmax(&mut scores[j * width + first - lo..j * width + visible - lo]);
            }
        }
        for t0 in (lo..hi).step_by(KEYS_PER_TILE) {
            let t1 = (t0 + KEYS_PER_TILE).min(hi);
            for i in u.rows.0..u.rows.1 {
                let (first, visible) = self.span(u.seq, i);
                let (a, b) = (t0.max(first), t1.min(visible));
                if a >= b {
                    continue;
                }
                for h in u.heads.0..u.heads.1 {
                    let (j, _) = query(i, h);
                    let w = &scores[j * width + a - lo..j * width + b - lo];
                    rows.accumulate(w, a * kv_width + kvh * d, kv_width, &mut result[j * d..(j + 1) * d]);
                }
            }
        }
    }

    /// Hands each value of a computed unit to `put` with its offset in the batch's output.
    fn place(&self, u: &Unit, result: &[f32], mut put: impl FnMut(usize, f32)) {
        let d = self.shape.head_dim;
        let q_width = self.shape.heads * d;
        let (first_row, _, _) = self.seqs[u.seq];
        let nh = u.heads.1 - u.heads.0;
        for i in u.rows.0..u.rows.1 {
            for h in u.heads.0..u.heads.1 {
                let j = (i - u.rows.0) * nh + h - u.heads.0;
                let at = (first_row + i) * q_width + h * d;
                for (e, &v) in result[j * d..(j + 1) * d].iter().enumerate() {
                    put(at + e, v);
                }
            }
        }
    }
}

/// Softmax in place, in the order [`causal_attention_reference`] uses: max, exponentials and their running sum,
/// one multiplication by the inverse.
fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in s.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    s.iter_mut().for_each(|p| *p *= inv);
}

/// One call's units for the pool; results go to `out` through atomics, as [`crate::kernels`]' products do.
struct AttentionJob {
    q: Vec<f32>,
    stores: Vec<Arc<RwLock<Store>>>,
    plan: Plan,
    units: Vec<Unit>,
    items: pool::Items,
    failed: AtomicBool,
    out: Arc<[AtomicU32]>,
}

impl ItemJob for AttentionJob {
    fn items(&self) -> &pool::Items {
        &self.items
    }

    /// Computes unit `i` and stores its result.
    fn item(&self, i: usize) {
        let u = &self.units[i];
        UNIT_SCRATCH.with(|scratch| {
            let (scores, result) = &mut *scratch.borrow_mut();
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let store = read(&self.stores[u.seq]);
                self.plan.compute(&store, &self.q, u, scores, result);
            }));
            if ok.is_ok() {
                self.plan
                    .place(u, result, |at, v| self.out[at].store(v.to_bits(), Ordering::Relaxed));
            } else {
                self.failed.store(true, Ordering::Relaxed);
            }
        });
        self.items.finish(i);
    }
}

/// Keys and values of one element type, read in place. Row t of a head starts at `start + t · stride`.
trait Rows: Sync {
    /// `out[t] = scale · q · key row t`.
    fn scores(&self, q: &[f32], start: usize, stride: usize, scale: f32, out: &mut [f32]);
    /// `out += Σ_t w[t] · value row t`.
    fn accumulate(&self, w: &[f32], start: usize, stride: usize, out: &mut [f32]);
}

struct F32Rows<'a> {
    k: &'a [f32],
    v: &'a [f32],
}

impl Rows for F32Rows<'_> {
    fn scores(&self, q: &[f32], start: usize, stride: usize, scale: f32, out: &mut [f32]) {
        kernels::f32::scores(q, &self.k[start..], stride, scale, out);
    }

    fn accumulate(&self, w: &[f32], start: usize, stride: usize, out: &mut [f32]) {
        kernels::f32::accumulate(w, &self.v[start..], stride, out);
    }
}

struct F16Rows<'a> {
    k: &'a [u16],
    v: &'a [u16],
}

impl Rows for F16Rows<'_> {
    fn scores(&self, q: &[f32], start: usize, stride: usize, scale: f32, out: &mut [f32]) {
        f16::scores(q, &self.k[start..], stride, scale, out);
    }

    fn accumulate(&self, w: &[f32], start: usize, stride: usize, out: &mut [f32]) {
        f16::accumulate(w, &self.v[start..], stride, out);
    }
}

/// The oracle for tests: one query and one head at a time on the caller's thread, the straightforward loop the
/// tiled, pooled [`batch_attention`] must reproduce bit for bit.
pub fn causal_attention_reference(
    q: &[f32],
    kv: &LayerKv,
    past: usize,
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    match &*read(&kv.store) {
        Store::F32 { k, v } => reference_rows(&F32Rows { k, v }, q, past, shape, scale, window, out),
        Store::F16 { k, v } => reference_rows(&F16Rows { k, v }, q, past, shape, scale, window, out),
    }
}

fn reference_rows(
    rows: &impl Rows,
    q: &[f32],
    past: usize,
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let group = heads / kv_heads;
    let kv_width = kv_heads * d;
    let mut scores = Vec::with_capacity(past + q.len() / (heads * d));
    for (i, (q_row, out_row)) in q
        .chunks_exact(heads * d)
        .zip(out.chunks_exact_mut(heads * d))
        .enumerate()
    {
        let visible = past + i + 1;
        let first = window.map_or(0, |w| visible.saturating_sub(w));
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q_row[h * d..(h + 1) * d];
            let start = first * kv_width + kvh * d;
            scores.clear();
            scores.resize(visible - first, 0.0);
            rows.scores(qh, start, kv_width, scale, &mut scores);
            softmax(&mut scores);
            let o = &mut out_row[h * d..(h + 1) * d];
            o.fill(0.0);
            rows.accumulate(&scores, start, kv_width, o);
        }
    }
}

#[cfg(test)]
mod tests;
