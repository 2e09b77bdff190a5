//! Building blocks shared by the architectures, on plain row-major `f32` slices: each architecture file composes
//! these instead of re-deriving them, so a new family is mostly a matter of naming its tensors and wiring its quirks.
//! The matrix products go through our own quantized kernels ([`crate::kernels`]); everything else here is small
//! next to them and written for clarity, with loops the compiler vectorizes.

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::{Pool, QMatrix};

/// A projection whose weight stays in its GGUF quantization.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<QMatrix>,
}

impl Linear {
    pub fn load(gguf: &mut GgufFile, name: &str) -> Result<Self> {
        Ok(Self::from_matrix(Arc::new(gguf.read_matrix(name)?)))
    }

    pub fn from_matrix(weight: Arc<QMatrix>) -> Self {
        Self { weight }
    }

    pub fn out_features(&self) -> usize {
        self.weight.rows()
    }

    pub fn in_features(&self) -> usize {
        self.weight.cols()
    }

    /// x: (n, in) → (n, out).
    pub fn forward(&self, x: &[f32], n: usize, pool: &Pool) -> Vec<f32> {
        let mut y = vec![0.0; n * self.weight.rows()];
        self.weight.matmul(x, n, &mut y, pool);
        y
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl RmsNorm {
    pub fn load(gguf: &mut GgufFile, name: &str, eps: f32, width: usize) -> Result<Self> {
        let weight = gguf.read_vector(name)?;
        if weight.len() != width {
            return Err(EngineError::InvalidTensor {
                name: name.to_string(),
                reason: format!("{} elements, expected {width}", weight.len()),
            });
        }
        Ok(Self { weight, eps })
    }

    /// Normalizes every row of `x` (rows of `weight.len()` values) into a new buffer.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; x.len()];
        let d = self.weight.len();
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            // Accumulate in f64: the mean of squares over hundreds of values is where f32 rounding would show.
            let mean_sq = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
            let inv = (1.0 / (mean_sq + f64::from(self.eps)).sqrt()) as f32;
            for ((o, &v), &w) in o.iter_mut().zip(row).zip(&self.weight) {
                *o = v * inv * w;
            }
        }
        out
    }
}

/// Rotary embedding frequencies of one model, computed once at load.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f64>,
}

impl Rope {
    pub fn new(rot_dim: usize, base: f32) -> Self {
        let half = rot_dim / 2;
        let inv_freq = (0..half)
            .map(|i| 1.0 / f64::from(base).powf((2 * i) as f64 / rot_dim as f64))
            .collect();
        Self { inv_freq }
    }

    /// (cos, sin) tables for the given positions: `positions.len() × rot_dim / 2` each.
    pub fn tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &self.inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        (cos, sin)
    }
}

/// GGUF "normal" rope (llama.cpp's LLAMA_ROPE_TYPE_NORM) in place: rotates adjacent pairs (x[2i], x[2i+1]) of the
/// first `2 * half` values of every head, because the converter permutes HF's q/k weights into that layout.
/// x: (rows, heads, head_dim); cos/sin: (rows, half).
pub fn rope_interleaved(x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len() / (x.len() / (heads * head_dim)).max(1);
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let (c, s) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * c[i] - x1 * s[i];
                head[2 * i + 1] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// One layer's keys and values for one sequence: `len` rows of (kv_heads × head_dim) values each, appended in place.
#[derive(Debug, Default, Clone)]
pub struct LayerKv {
    k: Vec<f32>,
    v: Vec<f32>,
    len: usize,
}

impl LayerKv {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `n` rows of keys and values (each `n × width`).
    pub fn append(&mut self, k: &[f32], v: &[f32], width: usize) {
        debug_assert_eq!(k.len(), v.len());
        let keep = self.len * width;
        self.k.truncate(keep);
        self.v.truncate(keep);
        self.k.extend_from_slice(k);
        self.v.extend_from_slice(v);
        self.len += k.len() / width;
    }

    /// Drops everything after `len` tokens.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn keys(&self) -> &[f32] {
        &self.k
    }

    pub fn values(&self) -> &[f32] {
        &self.v
    }

    /// Bytes held by this cache (capacity, not length).
    pub fn bytes(&self) -> usize {
        (self.k.capacity() + self.v.capacity()) * std::mem::size_of::<f32>()
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
    let width = shape.heads * shape.head_dim;
    let n = q.len() / width.max(1);
    let pairs = n * past + n * (n + 1) / 2;
    if threads < 2 || n < 2 || pairs < PARALLEL_ATTENTION_PAIRS {
        return attention_rows(q, kv, past, shape, scale, out);
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
                attention_rows(q, kv, first, shape, scale, chunk);
            } else {
                handles.push(scope.spawn(move || attention_rows(q, kv, first, shape, scale, chunk)));
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

/// [`causal_attention`] on one thread: query row i sits at position `past + i`.
fn attention_rows(q: &[f32], kv: &LayerKv, past: usize, shape: AttnShape, scale: f32, out: &mut [f32]) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim: d,
    } = shape;
    let group = heads / kv_heads;
    let kv_width = kv_heads * d;
    let (keys, values) = (kv.keys(), kv.values());
    let mut scores = Vec::with_capacity(past + q.len() / (heads * d));
    for (i, (q_row, out_row)) in q
        .chunks_exact(heads * d)
        .zip(out.chunks_exact_mut(heads * d))
        .enumerate()
    {
        let visible = past + i + 1;
        for h in 0..heads {
            let kvh = h / group;
            let qh = &q_row[h * d..(h + 1) * d];
            scores.clear();
            let mut max = f32::NEG_INFINITY;
            for t in 0..visible {
                let k = &keys[t * kv_width + kvh * d..t * kv_width + (kvh + 1) * d];
                let s = dot(qh, k) * scale;
                max = max.max(s);
                scores.push(s);
            }
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let o = &mut out_row[h * d..(h + 1) * d];
            o.fill(0.0);
            for (t, &p) in scores.iter().enumerate() {
                let v = &values[t * kv_width + kvh * d..t * kv_width + (kvh + 1) * d];
                let w = p * inv;
                for (o, &v) in o.iter_mut().zip(v) {
                    *o += w * v;
                }
            }
        }
    }
}

/// Dot product in 8 independent lanes so the compiler can keep it in vector registers.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// SwiGLU in place: gate ← silu(gate) · up.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (x, &y) in x.iter_mut().zip(y) {
        *x += y;
    }
}
