//! Llama-architecture blocks (also SmolLM, Mistral-without-sliding-window and other GGUFs tagged `llama`):
//! pre-norm RMSNorm, interleaved ("normal") rope, grouped-query attention without biases, SwiGLU MLP.

use candle_core::{Device, Tensor};

use super::{Architecture, HParams, Layer, StepCtx};
use crate::error::Result;
use crate::gguf::GgufFile;
use crate::ops::{LayerKv, Linear, RmsNorm, gqa_attention, swiglu};

#[derive(Debug)]
pub struct Llama {
    hp: HParams,
}

impl Llama {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        let hp = HParams::read_common(gguf, "llama")?;
        // Partial rotary (rope on a prefix of each head) is not a llama feature; refuse instead of mis-rotating.
        if hp.rope_dim != hp.head_dim {
            return Err(crate::error::EngineError::InvalidMetadata {
                key: "llama.rope.dimension_count".into(),
                reason: format!("rope dim {} differs from head dim {}", hp.rope_dim, hp.head_dim),
            });
        }
        Ok(Self { hp })
    }
}

impl Architecture for Llama {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize, device: &Device) -> Result<Box<dyn Layer>> {
        let p = |s: &str| format!("blk.{layer}.{s}.weight");
        let eps = self.hp.rms_eps;
        Ok(Box::new(LlamaBlock {
            attn_norm: RmsNorm::load(gguf, &p("attn_norm"), eps, device)?,
            wq: Linear::load(gguf, &p("attn_q"), device)?,
            wk: Linear::load(gguf, &p("attn_k"), device)?,
            wv: Linear::load(gguf, &p("attn_v"), device)?,
            wo: Linear::load(gguf, &p("attn_output"), device)?,
            ffn_norm: RmsNorm::load(gguf, &p("ffn_norm"), eps, device)?,
            gate: Linear::load(gguf, &p("ffn_gate"), device)?,
            up: Linear::load(gguf, &p("ffn_up"), device)?,
            down: Linear::load(gguf, &p("ffn_down"), device)?,
            n_heads: self.hp.n_heads,
            n_kv_heads: self.hp.n_kv_heads,
            head_dim: self.hp.head_dim,
        }))
    }
}

#[derive(Debug)]
struct LlamaBlock {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Layer for LlamaBlock {
    fn forward(&self, x: &Tensor, kv: &mut LayerKv, ctx: &StepCtx) -> Result<Tensor> {
        let n = ctx.n_tokens;
        let h = self.attn_norm.forward(x)?;
        let q = self.wq.forward(&h)?.reshape((n, self.n_heads, self.head_dim))?;
        let k = self.wk.forward(&h)?.reshape((n, self.n_kv_heads, self.head_dim))?;
        let v = self.wv.forward(&h)?.reshape((n, self.n_kv_heads, self.head_dim))?;
        let q = ctx.rope.apply_interleaved(&q)?;
        let k = ctx.rope.apply_interleaved(&k)?;
        let (k_all, v_all) = kv.append(&k.transpose(0, 1)?, &v.transpose(0, 1)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let attn = gqa_attention(&q, &k_all, &v_all, ctx.mask.as_ref(), scale)?;
        let x = (x + self.wo.forward(&attn)?)?;
        let h = self.ffn_norm.forward(&x)?;
        let mlp = self
            .down
            .forward(&swiglu(&self.gate.forward(&h)?, &self.up.forward(&h)?)?)?;
        Ok((x + mlp)?)
    }
}
