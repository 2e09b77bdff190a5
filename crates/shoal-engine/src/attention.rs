//! The KV cache of one layer and causal grouped-query attention over it.
//!
//! The cache stores its element type ([`KvType`]): f32 (the default, whose greedy output matches llama.cpp's
//! `-ctk f32 -ctv f32`) or f16 (half the memory, what the placement budgets; llama.cpp's default). Attention reads an
//! f16 cache in place through [`crate::kernels::f16`]: no f32 copy of the cache is ever made.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::kernels::f16;
use crate::ops::dot;

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

/// One layer's keys and values for one sequence: `len` rows of (kv_heads × head_dim) values each, appended in place.
#[derive(Debug, Clone)]
pub struct LayerKv {
    store: Store,
    len: usize,
}

impl Default for LayerKv {
    fn default() -> Self {
        Self::new(KvType::F32)
    }
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
        Self { store, len: 0 }
    }

    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32 { .. } => KvType::F32,
            Store::F16 { .. } => KvType::F16,
        }
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
        match &mut self.store {
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
        let elements = match &self.store {
            Store::F32 { k, v } => k.capacity() + v.capacity(),
            Store::F16 { k, v } => k.capacity() + v.capacity(),
        };
        elements * self.kv_type().element_bytes()
    }
}

/// Shapes of grouped-query attention.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Below this many query-key pairs a call stays on one thread: spawning costs tens of microseconds, which only a
/// prefill chunk's attention repays.
const PARALLEL_ATTENTION_PAIRS: usize = 1 << 16;

/// Causal grouped-query attention of `n` new queries at positions `past..past + n` over a cache holding positions
/// `0..past + n`. q: (n, heads, head_dim); returns (n, heads × head_dim). Query head h reads kv head h / group, as
/// llama.cpp does. A large call (a prefill chunk) is split by query rows over `threads` scoped threads, at row
/// boundaries that balance the causal work; every row is computed the same way whatever the split.
pub fn causal_attention(
    q: &[f32],
    kv: &LayerKv,
    past: usize,
    shape: AttnShape,
    scale: f32,
    out: &mut [f32],
    threads: usize,
) {
    causal_attention_windowed(q, kv, past, shape, scale, None, out, threads);
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
    threads: usize,
) {
    let width = shape.heads * shape.head_dim;
    let n = q.len() / width.max(1);
    let pairs = n * past + n * (n + 1) / 2;
    if threads < 2 || n < 2 || pairs < PARALLEL_ATTENTION_PAIRS {
        return attention_rows(q, kv, past, shape, scale, window, out);
    }
    // Row i costs past + i + 1 keys; cut where the running cost reaches each thread's share.
    let share = pairs.div_ceil(threads);
    let mut cuts = vec![0];
    let mut acc = 0;
    for i in 0..n {
        acc += past + i + 1;
        if acc >= share * cuts.len() && cuts.len() < threads {
            cuts.push(i + 1);
        }
    }
    cuts.push(n);
    cuts.dedup();
    std::thread::scope(|scope| {
        let mut rest = out;
        let mut handles = Vec::new();
        for w in cuts.windows(2) {
            let (chunk, tail) = rest.split_at_mut((w[1] - w[0]) * width);
            rest = tail;
            let q = &q[w[0] * width..w[1] * width];
            let first = past + w[0];
            if w[1] == n {
                attention_rows(q, kv, first, shape, scale, window, chunk);
            } else {
                handles.push(scope.spawn(move || attention_rows(q, kv, first, shape, scale, window, chunk)));
            }
        }
        for h in handles {
            // A panic in a worker is a bug in this function; surface it on the caller's thread.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
    });
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
        for (t, s) in out.iter_mut().enumerate() {
            let at = start + t * stride;
            *s = dot(q, &self.k[at..at + q.len()]) * scale;
        }
    }

    fn accumulate(&self, w: &[f32], start: usize, stride: usize, out: &mut [f32]) {
        let d = out.len();
        for (t, &w) in w.iter().enumerate() {
            let at = start + t * stride;
            for (o, &v) in out.iter_mut().zip(&self.v[at..at + d]) {
                *o += w * v;
            }
        }
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

/// [`causal_attention`] on one thread: query row i sits at position `past + i`.
fn attention_rows(
    q: &[f32],
    kv: &LayerKv,
    past: usize,
    shape: AttnShape,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) {
    match &kv.store {
        Store::F32 { k, v } => attention_rows_of(&F32Rows { k, v }, q, past, shape, scale, window, out),
        Store::F16 { k, v } => attention_rows_of(&F16Rows { k, v }, q, past, shape, scale, window, out),
    }
}

fn attention_rows_of(
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
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            scores.iter_mut().for_each(|p| *p *= inv);
            let o = &mut out_row[h * d..(h + 1) * d];
            o.fill(0.0);
            rows.accumulate(&scores, start, kv_width, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_type_names_round_trip() {
        for t in KvType::ALL {
            assert_eq!(t.name().parse::<KvType>(), Ok(t));
            assert_eq!(t.to_string().to_uppercase().parse::<KvType>(), Ok(t));
        }
        let err = "q8_0".parse::<KvType>().unwrap_err();
        assert_eq!(err.to_string(), "unknown KV cache type \"q8_0\": expected f32 or f16");
        assert_eq!(KvType::default(), KvType::F32);
    }
}
