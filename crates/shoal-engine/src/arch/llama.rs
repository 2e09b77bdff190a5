//! Llama-architecture blocks (also SmolLM, Llama 3.x, Mistral-without-sliding-window and other GGUFs tagged
//! `llama`): pre-norm RMSNorm, interleaved ("normal") rope, grouped-query attention without biases, SwiGLU MLP.
//!
//! Llama 3.x's `llama3` rope scaling reaches the file as the `rope_freqs` tensor (one divisor per rotated pair, which
//! the converter computes from the scaling parameters); linear scaling arrives as `llama.rope.scaling.*` keys. Both
//! are applied as llama.cpp does. The pre-norm block here is shared by the qwen families, which differ only in the
//! options of its attention and feed-forward.

use super::{Architecture, HParams, Layer, StepCtx, rope_scaling};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Pool;
use crate::ops::{
    Activation, Attention, AttnShape, GatedFfn, LayerKv, Linear, MoeFfn, RmsNorm, Rope, RopeScaling, RopeStyle,
    add_in_place, load_vector,
};

/// The single tensor holding llama3-style per-frequency rope divisors, shared by every layer.
const ROPE_FREQS: &str = "rope_freqs.weight";

#[derive(Debug)]
pub struct Llama {
    hp: HParams,
    scaling: RopeScaling,
}

impl Llama {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        let hp = HParams::read_common(gguf, "llama")?;
        // Partial rotary (rope on a prefix of each head) is not a llama feature; refuse instead of mis-rotating.
        if hp.rope_dim != hp.head_dim {
            return Err(EngineError::InvalidMetadata {
                key: "llama.rope.dimension_count".into(),
                reason: format!("rope dim {} differs from head dim {}", hp.rope_dim, hp.head_dim),
            });
        }
        let scaling = rope_scaling(gguf, "llama")?;
        Ok(Self { hp, scaling })
    }
}

impl Architecture for Llama {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        let opts = AttnOptions {
            style: RopeStyle::Interleaved,
            qk_norm: false,
        };
        let ffn = Ffn::Dense(GatedFfn::load(
            gguf,
            &format!("blk.{layer}.ffn"),
            self.hp.hidden,
            self.hp.ffn,
            Activation::Silu,
        )?);
        Ok(Box::new(PreNormBlock::load(gguf, &self.hp, layer, opts, ffn)?))
    }

    fn rope(&self) -> Rope {
        Rope::scaled(self.hp.rope_dim, self.hp.rope_base, &self.scaling, None)
    }

    fn load_rope(&self, gguf: &mut GgufFile) -> Result<Rope> {
        if !gguf.has_tensor(ROPE_FREQS) {
            return Ok(self.rope());
        }
        let factors = load_vector(gguf, ROPE_FREQS, self.hp.rope_dim / 2)?;
        if let Some(bad) = factors.iter().find(|f| !f.is_finite() || **f <= 0.0) {
            return Err(EngineError::InvalidTensor {
                name: ROPE_FREQS.into(),
                reason: format!("rope divisor {bad} is not a positive number"),
            });
        }
        Ok(Rope::scaled(
            self.hp.rope_dim,
            self.hp.rope_base,
            &self.scaling,
            Some(&factors),
        ))
    }
}

/// What varies in the attention of the pre-norm families.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnOptions {
    pub style: RopeStyle,
    /// `attn_q_norm`, `attn_k_norm` per-head RMS norms (qwen3, qwen3moe).
    pub qk_norm: bool,
}

/// Loads block `layer`'s attention: `blk.{layer}.attn_{q,k,v,output}`, the q/k norms `opts` asks for, and the
/// q, k, v biases where the file has them (as llama.cpp loads them for every family; qwen2's converter writes them).
pub(crate) fn load_attention(
    gguf: &mut GgufFile,
    hp: &HParams,
    layer: usize,
    opts: AttnOptions,
    scale: f32,
    window: Option<usize>,
) -> Result<Attention> {
    let w = |s: &str| format!("blk.{layer}.{s}.weight");
    let b = |s: &str| format!("blk.{layer}.{s}.bias");
    let q_width = hp.n_heads * hp.head_dim;
    let kv_width = hp.n_kv_heads * hp.head_dim;
    let mut bias = |name: &str, width: usize| -> Result<Option<Vec<f32>>> {
        let name = b(name);
        if gguf.has_tensor(&name) {
            load_vector(gguf, &name, width).map(Some)
        } else {
            Ok(None)
        }
    };
    let qkv_bias = [
        bias("attn_q", q_width)?,
        bias("attn_k", kv_width)?,
        bias("attn_v", kv_width)?,
    ];
    let qk_norm = if opts.qk_norm {
        Some((
            RmsNorm::load(gguf, &w("attn_q_norm"), hp.rms_eps, hp.head_dim)?,
            RmsNorm::load(gguf, &w("attn_k_norm"), hp.rms_eps, hp.head_dim)?,
        ))
    } else {
        None
    };
    Ok(Attention {
        wq: Linear::load_checked(gguf, &w("attn_q"), hp.hidden, q_width)?,
        wk: Linear::load_checked(gguf, &w("attn_k"), hp.hidden, kv_width)?,
        wv: Linear::load_checked(gguf, &w("attn_v"), hp.hidden, kv_width)?,
        wo: Linear::load_checked(gguf, &w("attn_output"), q_width, hp.hidden)?,
        qkv_bias,
        qk_norm,
        rope: opts.style,
        shape: AttnShape {
            heads: hp.n_heads,
            kv_heads: hp.n_kv_heads,
            head_dim: hp.head_dim,
        },
        scale,
        window,
    })
}

/// A block's feed-forward: one gated MLP, or a mixture of them.
#[derive(Debug)]
pub(crate) enum Ffn {
    Dense(GatedFfn),
    Moe(MoeFfn),
}

impl Ffn {
    fn forward(&self, x: &[f32], n: usize, pool: &Pool) -> Vec<f32> {
        match self {
            Ffn::Dense(f) => f.forward(x, n, pool),
            Ffn::Moe(f) => f.forward(x, n, pool),
        }
    }
}

/// x += attn(attn_norm(x)); x += ffn(ffn_norm(x)).
#[derive(Debug)]
pub(crate) struct PreNormBlock {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    ffn: Ffn,
}

impl PreNormBlock {
    pub(crate) fn load(gguf: &mut GgufFile, hp: &HParams, layer: usize, opts: AttnOptions, ffn: Ffn) -> Result<Self> {
        let p = |s: &str| format!("blk.{layer}.{s}.weight");
        let scale = 1.0 / (hp.head_dim as f32).sqrt();
        Ok(Self {
            attn_norm: RmsNorm::load(gguf, &p("attn_norm"), hp.rms_eps, hp.hidden)?,
            attn: load_attention(gguf, hp, layer, opts, scale, None)?,
            ffn_norm: RmsNorm::load(gguf, &p("ffn_norm"), hp.rms_eps, hp.hidden)?,
            ffn,
        })
    }
}

impl Layer for PreNormBlock {
    fn forward(&self, x: &mut [f32], kv: &mut [&mut LayerKv], ctx: &StepCtx, pool: &Pool) {
        let h = self.attn_norm.forward(x);
        add_in_place(x, &self.attn.forward(&h, kv, &ctx.seq_rows(), ctx.tables(), pool));
        let h = self.ffn_norm.forward(x);
        add_in_place(x, &self.ffn.forward(&h, ctx.n_rows, pool));
    }
}
