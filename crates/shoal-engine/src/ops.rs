//! Building blocks shared by the architectures, on plain row-major `f32` slices: each architecture file composes
//! these instead of re-deriving them, so a new family is mostly a matter of naming its tensors and wiring its quirks.
//! The matrix products go through our own quantized kernels ([`crate::kernels`]); everything else here is small
//! next to them and written for clarity, with loops the compiler vectorizes.

use std::sync::Arc;

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::{Pool, QMatrix};

pub use crate::attention::{
    AttnShape, KvType, LayerKv, batch_attention, causal_attention, causal_attention_reference,
    causal_attention_windowed,
};

/// A projection whose weight stays in its GGUF quantization.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Arc<QMatrix>,
}

impl Linear {
    /// The projection `name`, its rows packed for this machine's row-group kernel where it has one
    /// ([`GgufFile::pack_rows`]: the same results, faster).
    pub fn load(gguf: &mut GgufFile, name: &str) -> Result<Self> {
        let m = gguf.read_matrix(name)?;
        Ok(Self::from_matrix(Arc::new(gguf.pack_rows(name, 0, m))))
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
    /// Multiplies every cos and sin: `rope.scaling.attn_factor`, times YaRN's magnitude correction under YaRN.
    mscale: f32,
}

/// How a GGUF's `rope.scaling.*` keys stretch the rope, as llama.cpp reads them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// 1 / `rope.scaling.factor` (1 without scaling).
    pub freq_scale: f32,
    /// `rope.scaling.original_context_length` when the scaling is YaRN (`None` for linear or no scaling).
    pub yarn_orig_ctx: Option<usize>,
    /// `rope.scaling.attn_factor` (1 when absent).
    pub attn_factor: f32,
}

impl RopeScaling {
    pub const NONE: Self = Self {
        freq_scale: 1.0,
        yarn_orig_ctx: None,
        attn_factor: 1.0,
    };
}

/// YaRN's defaults in llama.cpp (no GGUF key of these families overrides them): the rotation counts over the
/// original context that bound the blend between interpolated and extrapolated frequencies.
const YARN_BETA_FAST: f64 = 32.0;
const YARN_BETA_SLOW: f64 = 1.0;

impl Rope {
    pub fn new(rot_dim: usize, base: f32) -> Self {
        let half = rot_dim / 2;
        let inv_freq = (0..half)
            .map(|i| 1.0 / f64::from(base).powf((2 * i) as f64 / rot_dim as f64))
            .collect();
        Self { inv_freq, mscale: 1.0 }
    }

    /// Frequencies scaled as llama.cpp's rope (ggml's `rope_yarn`) scales them. Pair i's unscaled angle step is
    /// `base^(-2i/rot_dim) / factors[i]` (`factors`: the `rope_freqs` tensor, which Llama 3.x converters write for
    /// `llama3` scaling); linear scaling multiplies it by `freq_scale`; YaRN blends the scaled and unscaled steps with
    /// a ramp over the pairs between its correction dims and multiplies cos and sin by
    /// `attn_factor · (1 + 0.1 ln(1 / freq_scale))`. Every variant stays linear in the position, so it folds into
    /// one step per pair.
    pub fn scaled(rot_dim: usize, base: f32, scaling: &RopeScaling, factors: Option<&[f32]>) -> Self {
        let mut rope = Self::new(rot_dim, base);
        let freq_scale = f64::from(scaling.freq_scale);
        let ramp = scaling.yarn_orig_ctx.map(|orig_ctx| {
            // ggml_rope_yarn_corr_dims.
            let corr_dim = |rotations: f64| {
                rot_dim as f64 * (orig_ctx as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * f64::from(base).ln())
            };
            let low = corr_dim(YARN_BETA_FAST).floor().max(0.0);
            let high = corr_dim(YARN_BETA_SLOW).ceil().min(rot_dim as f64 - 1.0);
            move |i: usize| 1.0 - ((i as f64 - low) / (high - low).max(0.001)).clamp(0.0, 1.0)
        });
        for (i, f) in rope.inv_freq.iter_mut().enumerate() {
            let divisor = factors.and_then(|v| v.get(i)).map_or(1.0, |&d| f64::from(d));
            let mix = ramp.as_ref().map_or(0.0, |r| r(i));
            *f = *f / divisor * (freq_scale * (1.0 - mix) + mix);
        }
        rope.mscale = scaling.attn_factor;
        if scaling.yarn_orig_ctx.is_some() {
            rope.mscale *= (1.0 + 0.1 * (1.0 / freq_scale).ln()) as f32;
        }
        rope
    }

    /// Rotated pairs per head (rot_dim / 2).
    pub fn half_dim(&self) -> usize {
        self.inv_freq.len()
    }

    /// (cos, sin) tables for the given positions: `positions.len() × rot_dim / 2` each.
    pub fn tables(&self, positions: &[usize]) -> (Vec<f32>, Vec<f32>) {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for f in &self.inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32 * self.mscale);
                sin.push(angle.sin() as f32 * self.mscale);
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

/// GGUF "neox" rope (llama.cpp's LLAMA_ROPE_TYPE_NEOX, used by qwen2/qwen3/gemma3 and others whose converters keep
/// HF's q/k layout) in place: rotates x[i] with x[i + half] for i < half, the first `2 * half` values of every head.
/// x: (rows, heads, head_dim); cos/sin: (rows, half).
pub fn rope_neox(x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = cos.len() / (x.len() / (heads * head_dim)).max(1);
    for (r, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
        let (c, s) = (&cos[r * half..(r + 1) * half], &sin[r * half..(r + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = x0 * c[i] - x1 * s[i];
                head[i + half] = x0 * s[i] + x1 * c[i];
            }
        }
    }
}

/// Which pairs a family's rope rotates (llama.cpp's `llama_model_rope_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (llama, mistral): [`rope_interleaved`].
    Interleaved,
    /// Halves (qwen2, qwen3, qwen3moe, gemma3): [`rope_neox`].
    Neox,
}

impl RopeStyle {
    pub fn apply(self, x: &mut [f32], heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        match self {
            RopeStyle::Interleaved => rope_interleaved(x, heads, head_dim, cos, sin),
            RopeStyle::Neox => rope_neox(x, heads, head_dim, cos, sin),
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

/// GeGLU in place: gate ← gelu(gate) · up, with the tanh approximation of gelu that llama.cpp's `ggml_geglu` uses
/// (0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))). llama.cpp's CPU backend reads it from a table indexed by the f16
/// rounding of x, so its values differ from these by up to ~1e-3 relative. `tanh` is [`tanh_vectorizable`]:
/// libm's `tanhf`, a call per value, was 10 % of Gemma's prefill.
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const GELU_COEF_A: f32 = 0.044_715;
    for (g, &u) in gate.iter_mut().zip(up) {
        let x = *g;
        *g = 0.5 * x * (1.0 + tanh_vectorizable(SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x))) * u;
    }
}

/// tanh(y) = 1 − 2 / (e^{2y} + 1), with e^{2y} from [`exp_vectorizable`]: straight-line code a loop around it
/// turns into vector instructions. Within 2e-7 of `f32::tanh` everywhere (absolute; what `1 + tanh` in gelu
/// needs), tested. Saturates to ±1 past |y| = 9, where f32's tanh is ±1 too.
#[inline]
pub fn tanh_vectorizable(y: f32) -> f32 {
    let e = exp_vectorizable(2.0 * y.clamp(-9.0, 9.0));
    1.0 - 2.0 / (e + 1.0)
}

/// e^x for |x| ≤ 18 (the caller clamps): x = n·ln 2 + r with |r| ≤ ln 2 / 2, e^r by a degree-6 Taylor polynomial
/// (error below 2e-7 relative there), 2^n put straight into the exponent bits. Rounding to n uses the 1.5·2^23 trick
/// instead of `round`, which SSE2 has no instruction for.
#[inline]
fn exp_vectorizable(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split (Cephes' constants) so that n · LN2_HI is exact for the n this sees.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Adds `bias` to every row of `x` (rows of `bias.len()` values).
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len().max(1)) {
        add_in_place(row, bias);
    }
}

impl Linear {
    /// Loads a projection and checks it maps `inputs` to `outputs` features, so a malformed file fails at load with
    /// the tensor named instead of producing garbage.
    pub fn load_checked(gguf: &mut GgufFile, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        let l = Self::load(gguf, name)?;
        l.check(name, inputs, outputs)?;
        Ok(l)
    }

    fn check(&self, name: &str, inputs: usize, outputs: usize) -> Result<()> {
        if self.in_features() != inputs || self.out_features() != outputs {
            return Err(EngineError::InvalidTensor {
                name: name.to_string(),
                reason: format!(
                    "maps {} to {} features, expected {inputs} to {outputs}",
                    self.in_features(),
                    self.out_features()
                ),
            });
        }
        Ok(())
    }
}

/// Reads a bias (or any 1-D tensor) of exactly `width` values.
pub fn load_vector(gguf: &mut GgufFile, name: &str, width: usize) -> Result<Vec<f32>> {
    let v = gguf.read_vector(name)?;
    if v.len() != width {
        return Err(EngineError::InvalidTensor {
            name: name.to_string(),
            reason: format!("{} elements, expected {width}", v.len()),
        });
    }
    Ok(v)
}

/// Self-attention of one block, as the llama-like families share it: projections (optionally with biases),
/// optional per-head RMS norms of q and k before rope, rope, grouped-query causal attention (optionally within a
/// sliding window), output projection.
#[derive(Debug)]
pub struct Attention {
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    /// Biases of q, k and v, where the file has them (qwen2 always does).
    pub qkv_bias: [Option<Vec<f32>>; 3],
    /// RMS norms over each head of q and k, weights of head_dim values (qwen3, gemma3).
    pub qk_norm: Option<(RmsNorm, RmsNorm)>,
    pub rope: RopeStyle,
    pub shape: AttnShape,
    /// Multiplies q·k before the softmax.
    pub scale: f32,
    /// Sliding window in positions (gemma3's local layers); `None` attends to the whole past.
    pub window: Option<usize>,
}

/// The rows of one sequence inside a batched call: first row, rows, position of the first row.
pub type SeqRows = (usize, usize, usize);

impl Attention {
    /// h: the normed input (n rows); `seqs[i]` are the rows of the sequence whose cache is `kv[i]`; cos/sin: the rope
    /// tables of every row. Returns the output projection (n, hidden).
    pub fn forward(
        &self,
        h: &[f32],
        kv: &mut [&mut LayerKv],
        seqs: &[SeqRows],
        (cos, sin): (&[f32], &[f32]),
        pool: &Pool,
    ) -> Vec<f32> {
        let AttnShape {
            heads,
            kv_heads,
            head_dim,
        } = self.shape;
        let n = h.len() / self.wq.in_features().max(1);
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let mut q = self.wq.forward(h, n, pool);
        let mut k = self.wk.forward(h, n, pool);
        let mut v = self.wv.forward(h, n, pool);
        for (x, b) in [&mut q, &mut k, &mut v].into_iter().zip(&self.qkv_bias) {
            if let Some(b) = b {
                add_bias(x, b);
            }
        }
        if let Some((qn, kn)) = &self.qk_norm {
            // The norms' weights are one head wide, so normalizing "rows" of that width is the per-head norm.
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        self.rope.apply(&mut q, heads, head_dim, cos, sin);
        self.rope.apply(&mut k, kv_heads, head_dim, cos, sin);
        for (&(row, n_tokens, pos), cache) in seqs.iter().zip(kv.iter_mut()) {
            let rows = row..row + n_tokens;
            cache.truncate(pos);
            cache.append(
                &k[rows.start * kv_width..rows.end * kv_width],
                &v[rows.start * kv_width..rows.end * kv_width],
                kv_width,
            );
        }
        let caches: Vec<&LayerKv> = kv.iter().map(|c| &**c).collect();
        let mut attn = vec![0.0; n * q_width];
        batch_attention(&q, &caches, seqs, self.shape, self.scale, self.window, &mut attn, pool);
        self.wo.forward(&attn, n, pool)
    }
}

/// The gate's nonlinearity in a gated feed-forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU (llama, qwen).
    Silu,
    /// GeGLU with tanh-approximated gelu (gemma).
    GeluTanh,
}

/// down(act(gate(x)) · up(x)).
#[derive(Debug)]
pub struct GatedFfn {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl GatedFfn {
    /// Loads `{prefix}_gate`, `{prefix}_up`, `{prefix}_down` weights (e.g. `blk.3.ffn`), checking their shapes.
    pub fn load(gguf: &mut GgufFile, prefix: &str, hidden: usize, ffn: usize, act: Activation) -> Result<Self> {
        Ok(Self {
            gate: Linear::load_checked(gguf, &format!("{prefix}_gate.weight"), hidden, ffn)?,
            up: Linear::load_checked(gguf, &format!("{prefix}_up.weight"), hidden, ffn)?,
            down: Linear::load_checked(gguf, &format!("{prefix}_down.weight"), ffn, hidden)?,
            act,
        })
    }

    /// x: (n, hidden) → (n, hidden).
    pub fn forward(&self, x: &[f32], n: usize, pool: &Pool) -> Vec<f32> {
        let mut gate = self.gate.forward(x, n, pool);
        let up = self.up.forward(x, n, pool);
        match self.act {
            Activation::Silu => swiglu(&mut gate, &up),
            Activation::GeluTanh => geglu(&mut gate, &up),
        }
        self.down.forward(&gate, n, pool)
    }
}

/// Mixture-of-experts feed-forward (qwen3moe): a router picks `n_used` of the experts for every row by softmax
/// probability, their outputs are summed weighted by those probabilities renormalized over the picked experts.
#[derive(Debug)]
pub struct MoeFfn {
    /// (hidden → n_experts) router logits: `ffn_gate_inp`.
    pub router: Linear,
    pub experts: Vec<GatedFfn>,
    pub n_used: usize,
}

/// Smallest sum of picked expert weights divided by, as llama.cpp clamps it (the smallest normal f16), so a row
/// whose picked probabilities underflow does not divide by zero.
const MOE_MIN_WEIGHT_SUM: f32 = 6.103_515_6e-5;

impl MoeFfn {
    /// x: (n, hidden) → (n, hidden). Rows are grouped by expert so each expert's weights are streamed once per call.
    pub fn forward(&self, x: &[f32], n: usize, pool: &Pool) -> Vec<f32> {
        let hidden = self.router.in_features();
        let n_experts = self.experts.len();
        let logits = self.router.forward(x, n, pool);
        // For every expert: (row, weight) of the rows that picked it.
        let mut routed: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts];
        let mut order: Vec<usize> = Vec::with_capacity(n_experts);
        for (r, l) in logits.chunks_exact(n_experts).enumerate() {
            let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let e: Vec<f32> = l.iter().map(|&v| (v - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            let probs: Vec<f32> = e.iter().map(|&v| v / sum).collect();
            order.clear();
            order.extend(0..n_experts);
            // Highest probability first; ties go to the lower index, deterministically.
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let picked = &order[..self.n_used.min(n_experts)];
            let total = picked.iter().map(|&i| probs[i]).sum::<f32>().max(MOE_MIN_WEIGHT_SUM);
            for &i in picked {
                routed[i].push((r, probs[i] / total));
            }
        }
        let mut out = vec![0.0; n * hidden];
        for (expert, rows) in self.experts.iter().zip(&routed) {
            if rows.is_empty() {
                continue;
            }
            let mut xs = Vec::with_capacity(rows.len() * hidden);
            for &(r, _) in rows {
                xs.extend_from_slice(&x[r * hidden..(r + 1) * hidden]);
            }
            let y = expert.forward(&xs, rows.len(), pool);
            for (&(r, w), y) in rows.iter().zip(y.chunks_exact(hidden)) {
                for (o, &v) in out[r * hidden..(r + 1) * hidden].iter_mut().zip(y) {
                    *o += w * v;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorizable tanh stays within 2e-7 of libm's over gelu's range and beyond, in steps finer than f16's.
    #[test]
    fn vectorizable_tanh_is_within_2e_7_of_libm() {
        let mut worst = (0.0f32, 0.0f32);
        let mut y = -12.0f32;
        while y <= 12.0 {
            let err = (tanh_vectorizable(y) - y.tanh()).abs();
            if err > worst.0 {
                worst = (err, y);
            }
            y += 1.0 / 4096.0;
        }
        for y in [0.0, -0.0, 1e-30, -1e-8, 9.0, -9.0, 1e30, -1e30, f32::MAX, f32::MIN] {
            let err = (tanh_vectorizable(y) - y.tanh()).abs();
            assert!(err <= 2e-7, "tanh({y}): {} against {}", tanh_vectorizable(y), y.tanh());
        }
        assert!(worst.0 <= 2e-7, "worst error {} at {}", worst.0, worst.1);
    }
}
