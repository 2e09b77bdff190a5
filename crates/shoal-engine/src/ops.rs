//! Building blocks shared by the architectures: each architecture file composes these instead of re-deriving them,
//! so a new family is mostly a matter of naming its tensors and wiring its quirks.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};
use std::sync::Arc;

use crate::error::Result;
use crate::gguf::GgufFile;

/// A projection whose weight stays in its GGUF quantization.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    out_features: usize,
}

impl Linear {
    pub fn load(gguf: &mut GgufFile, name: &str, device: &Device) -> Result<Self> {
        Self::from_qtensor(gguf.load(name, device)?)
    }

    pub fn from_qtensor(t: Arc<QTensor>) -> Result<Self> {
        // GGUF stores a linear as (out, in); candle's shape follows that order after reversing the ggml dims.
        let out_features = t.shape().dims().first().copied().unwrap_or(0);
        Ok(Self {
            inner: QMatMul::from_arc(t)?,
            out_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(x)?)
    }
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn load(gguf: &mut GgufFile, name: &str, eps: f32, device: &Device) -> Result<Self> {
        let weight = gguf.load(name, device)?.dequantize(device)?;
        Ok(Self {
            weight,
            eps: f64::from(eps),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean_sq = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (mean_sq + self.eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)?)
    }
}

/// Rotary position tables for one forward call (positions `pos..pos + n`).
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// (n, 1, head_dim / 2, 1), broadcastable against (n, heads, head_dim / 2, 2) pairs.
    cos: Tensor,
    sin: Tensor,
}

impl RopeTables {
    pub fn new(pos: usize, n: usize, rot_dim: usize, base: f32, device: &Device) -> Result<Self> {
        let half = rot_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / f64::from(base).powf((2 * i) as f64 / rot_dim as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in pos..pos + n {
            for f in &inv_freq {
                let angle = p as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, 1, half, 1), device)?,
            sin: Tensor::from_vec(sin, (n, 1, half, 1), device)?,
        })
    }

    /// GGUF "normal" rope (llama.cpp's LLAMA_ROPE_TYPE_NORM): rotates adjacent pairs (x[2i], x[2i+1]), because the
    /// converter permutes HF's q/k weights into that layout. x: (n, heads, head_dim).
    pub fn apply_interleaved(&self, x: &Tensor) -> Result<Tensor> {
        let (n, h, d) = x.dims3()?;
        let pairs = x.reshape((n, h, d / 2, 2))?;
        let x0 = pairs.narrow(3, 0, 1)?;
        let x1 = pairs.narrow(3, 1, 1)?;
        let r0 = (x0.broadcast_mul(&self.cos)? - x1.broadcast_mul(&self.sin)?)?;
        let r1 = (x0.broadcast_mul(&self.sin)? + x1.broadcast_mul(&self.cos)?)?;
        Ok(Tensor::cat(&[r0, r1], 3)?.reshape((n, h, d))?)
    }
}

/// One layer's keys and values for one sequence, stored as (kv_heads, capacity, head_dim) so appending a token is an
/// in-place copy and attention reads a narrowed view without concatenating the whole history every step.
#[derive(Debug, Default)]
pub struct LayerKv {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

impl LayerKv {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends k, v of shape (kv_heads, n, head_dim) and returns views of the whole history.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (h, n, d) = k.dims3()?;
        let needed = self.len + n;
        let cap = self.k.as_ref().map(|t| t.dims()[1]).unwrap_or(0);
        if needed > cap {
            let new_cap = needed.max(cap * 2).max(64);
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let t = Tensor::zeros((h, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old
                    && self.len > 0
                {
                    t.slice_set(&old.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                Ok(t)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (Some(kc), Some(vc)) = (&self.k, &self.v) else {
            unreachable!("allocated above");
        };
        kc.slice_set(&k.contiguous()?, 1, self.len)?;
        vc.slice_set(&v.contiguous()?, 1, self.len)?;
        self.len = needed;
        Ok((kc.narrow(1, 0, needed)?, vc.narrow(1, 0, needed)?))
    }

    /// Drops everything after `len` tokens (used to roll back a failed step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Causal mask for `n` new queries after `past` cached tokens: (n, past + n), -inf where the key is in the future.
pub fn causal_mask(past: usize, n: usize, device: &Device) -> Result<Tensor> {
    let total = past + n;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (n, total), device)?)
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Grouped-query attention. q: (n, heads, d) after rope; k, v: (kv_heads, total, d) cache views.
/// Query heads sharing a KV head are folded into the row dimension so no KV copy per head is needed.
pub fn gqa_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let (n, heads, d) = q.dims3()?;
    let (kv_heads, total, _) = k.dims3()?;
    let group = heads / kv_heads;
    // llama.cpp maps query head h to kv head h / group, so consecutive heads share a kv head.
    let q = q.transpose(0, 1)?.contiguous()?.reshape((kv_heads, group * n, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores
            .reshape((kv_heads, group, n, total))?
            .broadcast_add(m)?
            .reshape((kv_heads, group * n, total))?,
        None => scores,
    };
    let probs = softmax_last_dim(&scores)?;
    let out = probs.matmul(v)?; // (kv_heads, group * n, d)
    Ok(out
        .reshape((heads, n, d))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, heads * d))?)
}

pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    Ok(if x.dtype() == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    })
}
