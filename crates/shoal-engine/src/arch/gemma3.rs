//! Gemma 3 blocks, as llama.cpp runs `gemma3` GGUFs:
//! - token embeddings scaled by √hidden;
//! - RMS norms before *and after* attention and the feed-forward (`attn_norm`, `post_attention_norm`, `ffn_norm`,
//!   `post_ffw_norm`); the converter already stores gemma's (1 + w) norm weights as w + 1, so they multiply as is;
//! - per-head RMS norms of q and k before rope, neox rope (halves);
//! - local layers attend within `attention.sliding_window` positions with their own rope (base
//!   `rope.freq_base_swa`, 10,000 when absent, never scaled); every 6th layer (5, 11, 17, …; or as
//!   `attention.sliding_window_pattern` says) is global, with `rope.freq_base` and the file's rope scaling;
//! - attention scale 1/√key_length (the query_pre_attn_scalar of every size but 27B, which llama.cpp recognizes by its
//!   62 layers and scales by 1/√(hidden / heads));
//! - GeGLU feed-forward (tanh-approximated gelu);
//! - final logit soft-capping when the file has `final_logit_softcapping`.

use super::qwen3::check_value_length;
use super::{Architecture, BatchRows, HParams, Layer, StepCtx, rope_scaling};
use crate::error::{EngineError, Result};
use crate::gguf::{GgufFile, Value};
use crate::kernels::Pool;
use crate::ops::{Activation, GatedFfn, LayerKv, RmsNorm, Rope, RopeScaling, RopeStyle, add_in_place};

const ARCH: &str = "gemma3";
/// Every n-th layer is global when the file names no pattern (llama.cpp's default for gemma3).
const DEFAULT_SWA_PATTERN: usize = 6;
/// Rope base of the local layers when `rope.freq_base_swa` is absent.
const DEFAULT_LOCAL_ROPE_BASE: f32 = 10_000.0;
/// Layer count of Gemma 3 27B, whose attention scale llama.cpp derives from hidden / heads instead of key_length.
const GEMMA3_27B_LAYERS: usize = 62;

#[derive(Debug)]
pub struct Gemma3 {
    hp: HParams,
    /// Frequency scale of the global layers' rope.
    scaling: RopeScaling,
    /// Sliding window of the local layers and which layers are local; `None` when the file has no window.
    swa: Option<(usize, Vec<bool>)>,
    local_rope_base: f32,
    attn_scale: f32,
    softcap: Option<f32>,
}

impl Gemma3 {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        let k = |s: &str| format!("{ARCH}.{s}");
        let hp = HParams::read_common(gguf, ARCH)?;
        if hp.rope_dim != hp.head_dim {
            return Err(EngineError::InvalidMetadata {
                key: k("rope.dimension_count"),
                reason: format!("rope dim {} differs from head dim {}", hp.rope_dim, hp.head_dim),
            });
        }
        check_value_length(gguf, &hp)?;
        let scaling = rope_scaling(gguf, ARCH)?;
        let window = if gguf.has_key(&k("attention.sliding_window")) {
            gguf.get_usize(&k("attention.sliding_window"))?
        } else {
            0
        };
        let swa = if window > 0 {
            Some((window, swa_layers(gguf, hp.n_layers)?))
        } else {
            None
        };
        let local_rope_base = if gguf.has_key(&k("rope.freq_base_swa")) {
            gguf.get_f32(&k("rope.freq_base_swa"))?
        } else {
            DEFAULT_LOCAL_ROPE_BASE
        };
        let attn_scale = if hp.n_layers == GEMMA3_27B_LAYERS {
            1.0 / ((hp.hidden / hp.n_heads) as f32).sqrt()
        } else {
            1.0 / (hp.head_dim as f32).sqrt()
        };
        let softcap = if gguf.has_key(&k("final_logit_softcapping")) {
            Some(gguf.get_f32(&k("final_logit_softcapping"))?).filter(|&c| c != 0.0)
        } else {
            None
        };
        Ok(Self {
            hp,
            scaling,
            swa,
            local_rope_base,
            attn_scale,
            softcap,
        })
    }

    /// The local layers' window and, per layer, whether it is local (`None` when the file has no window).
    pub fn sliding_window(&self) -> Option<(usize, &[bool])> {
        self.swa.as_ref().map(|(w, local)| (*w, local.as_slice()))
    }

    /// The local layers' rope: never stretched (llama.cpp's `rope_freq_scale_train_swa` is 1, which also makes YaRN
    /// a no-op), but the file's attention factor scales every rope.
    fn local_rope(&self) -> Rope {
        let scaling = RopeScaling {
            attn_factor: self.scaling.attn_factor,
            ..RopeScaling::NONE
        };
        Rope::scaled(self.hp.rope_dim, self.local_rope_base, &scaling, None)
    }
}

/// Which layers use the sliding window: `attention.sliding_window_pattern` as a per-layer bool array or as a period
/// n (layer l is local unless l % n == n - 1; n = 0 makes every layer local), else the default period.
fn swa_layers(gguf: &GgufFile, n_layers: usize) -> Result<Vec<bool>> {
    let key = format!("{ARCH}.attention.sliding_window_pattern");
    let array = gguf.metadata().find(|(k, _)| *k == key).and_then(|(_, v)| match v {
        Value::Array(items) => Some(items.clone()),
        _ => None,
    });
    if let Some(items) = array {
        let flags: Option<Vec<bool>> = items
            .iter()
            .map(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            })
            .collect();
        return match flags {
            Some(f) if f.len() >= n_layers => Ok(f[..n_layers].to_vec()),
            _ => Err(EngineError::InvalidMetadata {
                key,
                reason: format!("expected {n_layers} bools"),
            }),
        };
    }
    let period = if gguf.has_key(&key) {
        gguf.get_usize(&key)?
    } else {
        DEFAULT_SWA_PATTERN
    };
    Ok((0..n_layers).map(|l| period == 0 || l % period < period - 1).collect())
}

impl Architecture for Gemma3 {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        let p = |s: &str| format!("blk.{layer}.{s}.weight");
        let hp = &self.hp;
        let (eps, hidden) = (hp.rms_eps, hp.hidden);
        let window = self
            .swa
            .as_ref()
            .and_then(|(w, local)| local.get(layer).copied().unwrap_or(false).then_some(*w));
        let opts = super::llama::AttnOptions {
            style: RopeStyle::Neox,
            qk_norm: true,
        };
        Ok(Box::new(Gemma3Block {
            attn_norm: RmsNorm::load(gguf, &p("attn_norm"), eps, hidden)?,
            attn: super::llama::load_attention(gguf, hp, layer, opts, self.attn_scale, window)?,
            post_attn_norm: RmsNorm::load(gguf, &p("post_attention_norm"), eps, hidden)?,
            ffn_norm: RmsNorm::load(gguf, &p("ffn_norm"), eps, hidden)?,
            ffn: GatedFfn::load(gguf, &format!("blk.{layer}.ffn"), hidden, hp.ffn, Activation::GeluTanh)?,
            post_ffn_norm: RmsNorm::load(gguf, &p("post_ffw_norm"), eps, hidden)?,
        }))
    }

    fn embedding_scale(&self) -> Option<f32> {
        Some((self.hp.hidden as f32).sqrt())
    }

    fn rope(&self) -> Rope {
        Rope::scaled(self.hp.rope_dim, self.hp.rope_base, &self.scaling, None)
    }

    fn step_ctx(&self, rope: &Rope, seqs: Vec<BatchRows>) -> StepCtx {
        if self.swa.is_some() {
            StepCtx::with_local(rope, &self.local_rope(), seqs)
        } else {
            StepCtx::new(rope, seqs)
        }
    }

    fn final_logit_softcap(&self) -> Option<f32> {
        self.softcap
    }
}

/// x += post_attn_norm(attn(attn_norm(x))); x += post_ffn_norm(ffn(ffn_norm(x))).
#[derive(Debug)]
struct Gemma3Block {
    attn_norm: RmsNorm,
    attn: crate::ops::Attention,
    post_attn_norm: RmsNorm,
    ffn_norm: RmsNorm,
    ffn: GatedFfn,
    post_ffn_norm: RmsNorm,
}

impl Layer for Gemma3Block {
    fn forward(&self, x: &mut [f32], kv: &mut [&mut LayerKv], ctx: &StepCtx, pool: &Pool) {
        // Local layers rotate with the local rope; the window is what makes a layer local.
        let tables = if self.attn.window.is_some() {
            ctx.local_tables()
        } else {
            ctx.tables()
        };
        let h = self.attn_norm.forward(x);
        let a = self.attn.forward(&h, kv, &ctx.seq_rows(), tables, pool);
        add_in_place(x, &self.post_attn_norm.forward(&a));
        let h = self.ffn_norm.forward(x);
        let f = self.ffn.forward(&h, ctx.n_rows, pool);
        add_in_place(x, &self.post_ffn_norm.forward(&f));
    }
}
