//! Model families. Each family is one file implementing [`Architecture`] (hyper-parameters and how to load a layer)
//! and [`Layer`] (one transformer block's forward pass); the stage, KV cache, embedding and head are shared.

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Pool;
use crate::ops::{LayerKv, Rope, RopeScaling, SeqRows};

pub mod gemma3;
pub mod llama;
pub mod qwen2;
pub mod qwen3;
pub mod qwen3moe;

/// Architectures (`general.architecture`) this build can run.
pub const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3", "qwen3moe", "gemma3"];

/// Hyper-parameters common to decoder-only transformers, read from `<arch>.*` GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub arch: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl HParams {
    /// Reads the keys every llama-like family shares, prefixed by the architecture name.
    pub fn read_common(gguf: &GgufFile, arch: &str) -> Result<Self> {
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = gguf.get_usize(&k("embedding_length"))?;
        let n_heads = gguf.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = if gguf.has_key(&k("attention.head_count_kv")) {
            gguf.get_usize(&k("attention.head_count_kv"))?
        } else {
            n_heads
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(EngineError::InvalidMetadata {
                key: k("attention.head_count_kv"),
                reason: format!("{n_heads} query heads cannot be grouped over {n_kv_heads} kv heads"),
            });
        }
        let head_dim = if gguf.has_key(&k("attention.key_length")) {
            gguf.get_usize(&k("attention.key_length"))?
        } else {
            hidden / n_heads
        };
        let rope_dim = if gguf.has_key(&k("rope.dimension_count")) {
            gguf.get_usize(&k("rope.dimension_count"))?
        } else {
            head_dim
        };
        let rope_base = if gguf.has_key(&k("rope.freq_base")) {
            gguf.get_f32(&k("rope.freq_base"))?
        } else {
            10_000.0
        };
        let vocab_size = if gguf.has_key(&k("vocab_size")) {
            gguf.get_usize(&k("vocab_size"))?
        } else {
            gguf.get_str_array("tokenizer.ggml.tokens")?.len()
        };
        let hp = Self {
            arch: arch.to_string(),
            n_layers: gguf.get_usize(&k("block_count"))?,
            hidden,
            ffn: gguf.get_usize(&k("feed_forward_length"))?,
            n_heads,
            n_kv_heads,
            head_dim,
            rope_dim,
            rope_base,
            rms_eps: gguf.get_f32(&k("attention.layer_norm_rms_epsilon"))?,
            context_length: gguf.get_usize(&k("context_length"))?,
            vocab_size,
        };
        if !hp.head_dim.is_multiple_of(2) || hp.rope_dim > hp.head_dim || !hp.rope_dim.is_multiple_of(2) {
            return Err(EngineError::InvalidMetadata {
                key: k("rope.dimension_count"),
                reason: format!("rope dim {} does not fit head dim {}", hp.rope_dim, hp.head_dim),
            });
        }
        Ok(hp)
    }
}

/// One sequence's rows inside a batched forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRows {
    /// First row of this sequence in the batch's activations.
    pub row: usize,
    pub n_tokens: usize,
    /// Position of the first new token in the sequence (tokens already in its KV cache).
    pub pos: usize,
}

/// Per-call inputs every layer of a stage shares, built once per forward instead of once per layer.
#[derive(Debug)]
pub struct StepCtx {
    pub seqs: Vec<BatchRows>,
    pub n_rows: usize,
    /// Rope (cos, sin) per row: n_rows × rope_dim / 2.
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// A second rope's tables for the layers that use another base (gemma3's sliding-window layers); empty when the
    /// family has one rope.
    pub cos_local: Vec<f32>,
    pub sin_local: Vec<f32>,
}

impl StepCtx {
    pub fn new(rope: &Rope, seqs: Vec<BatchRows>) -> Self {
        let positions = Self::positions(&seqs);
        let (cos, sin) = rope.tables(&positions);
        Self {
            n_rows: positions.len(),
            seqs,
            cos,
            sin,
            cos_local: Vec::new(),
            sin_local: Vec::new(),
        }
    }

    /// With a second rope for the layers that ask for [`Self::local_tables`].
    pub fn with_local(rope: &Rope, local: &Rope, seqs: Vec<BatchRows>) -> Self {
        let mut ctx = Self::new(rope, seqs);
        let (cos, sin) = local.tables(&Self::positions(&ctx.seqs));
        ctx.cos_local = cos;
        ctx.sin_local = sin;
        ctx
    }

    fn positions(seqs: &[BatchRows]) -> Vec<usize> {
        seqs.iter().flat_map(|s| s.pos..s.pos + s.n_tokens).collect()
    }

    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// The second rope's tables, or the main ones when the family has a single rope.
    pub fn local_tables(&self) -> (&[f32], &[f32]) {
        if self.cos_local.is_empty() {
            self.tables()
        } else {
            (&self.cos_local, &self.sin_local)
        }
    }

    /// (first row, rows, first position) of every sequence, in batch order, as [`crate::ops::Attention`] takes them.
    pub fn seq_rows(&self) -> Vec<SeqRows> {
        self.seqs.iter().map(|s| (s.row, s.n_tokens, s.pos)).collect()
    }
}

/// One transformer block.
pub trait Layer: Send + Sync + std::fmt::Debug {
    /// x: (n_rows, hidden), the rows of every sequence of the batch, updated in place. `kv[i]` is this layer's cache
    /// of `ctx.seqs[i]`; the step's keys and values are appended to it.
    fn forward(&self, x: &mut [f32], kv: &mut [&mut LayerKv], ctx: &StepCtx, pool: &Pool);
}

/// A model family: how to read its hyper-parameters and load one block. Embedding, final norm and head follow the
/// llama naming (`token_embd`, `output_norm`, `output`), which every GGUF family shares; families that differ
/// override the hooks.
pub trait Architecture: Send + Sync + std::fmt::Debug {
    fn hparams(&self) -> &HParams;

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>>;

    /// Multiplier applied to token embeddings (gemma scales by sqrt(hidden)).
    fn embedding_scale(&self) -> Option<f32> {
        None
    }

    /// The rotary frequencies; families with several rope bases (gemma3 local/global) override [`Self::step_ctx`].
    fn rope(&self) -> Rope {
        Rope::new(self.hparams().rope_dim, self.hparams().rope_base)
    }

    /// The rotary frequencies for a stage, which may read tensors of the file (llama's `rope_freqs`); by default
    /// [`Self::rope`].
    fn load_rope(&self, _gguf: &mut GgufFile) -> Result<Rope> {
        Ok(self.rope())
    }

    fn step_ctx(&self, rope: &Rope, seqs: Vec<BatchRows>) -> StepCtx {
        StepCtx::new(rope, seqs)
    }

    /// Final logit soft-capping c (logits ← c·tanh(logits / c)), applied by the last stage (gemma's
    /// `final_logit_softcapping`).
    fn final_logit_softcap(&self) -> Option<f32> {
        None
    }
}

/// The rope scaling llama.cpp gives `<arch>` from `rope.scaling.*`: the type (`none`, `linear`, `yarn`; llama.cpp
/// assumes linear when the key is absent), 1 / `rope.scaling.factor` (or the older `rope.scale_linear`; a factor of 0
/// or none means no scaling), YaRN's `original_context_length` (default: the context length) and `attn_factor`.
/// LongRoPE is refused rather than run with the wrong frequencies.
pub fn rope_scaling(gguf: &GgufFile, arch: &str) -> Result<RopeScaling> {
    let k = |s: &str| format!("{arch}.{s}");
    let type_key = k("rope.scaling.type");
    let kind = if gguf.has_key(&type_key) {
        gguf.get_str(&type_key)?
    } else {
        "linear"
    };
    let factor_key = [k("rope.scaling.factor"), k("rope.scale_linear")]
        .into_iter()
        .find(|key| gguf.has_key(key));
    let factor = match factor_key {
        Some(key) => {
            let f = gguf.get_f32(&key)?;
            if !f.is_finite() || f < 0.0 {
                return Err(EngineError::InvalidMetadata {
                    key,
                    reason: format!("rope scaling factor {f}"),
                });
            }
            f
        }
        None => 0.0,
    };
    let freq_scale = if factor == 0.0 { 1.0 } else { 1.0 / factor };
    let attn_factor = if gguf.has_key(&k("rope.scaling.attn_factor")) {
        gguf.get_f32(&k("rope.scaling.attn_factor"))?
    } else {
        1.0
    };
    match kind {
        "none" => Ok(RopeScaling {
            attn_factor,
            ..RopeScaling::NONE
        }),
        "linear" => Ok(RopeScaling {
            freq_scale,
            yarn_orig_ctx: None,
            attn_factor,
        }),
        "yarn" => {
            let orig = if gguf.has_key(&k("rope.scaling.original_context_length")) {
                gguf.get_usize(&k("rope.scaling.original_context_length"))?
            } else {
                gguf.get_usize(&k("context_length"))?
            };
            if orig == 0 {
                return Err(EngineError::InvalidMetadata {
                    key: k("rope.scaling.original_context_length"),
                    reason: "zero".into(),
                });
            }
            Ok(RopeScaling {
                freq_scale,
                yarn_orig_ctx: Some(orig),
                attn_factor,
            })
        }
        other => Err(EngineError::InvalidMetadata {
            key: type_key,
            reason: format!(
                "rope scaling `{other}` is not supported (supported: none, linear, yarn, and llama3 via rope_freqs)"
            ),
        }),
    }
}

/// Picks the family from `general.architecture`.
pub fn from_gguf(gguf: &GgufFile) -> Result<Box<dyn Architecture>> {
    let name = gguf.get_str("general.architecture")?;
    match name {
        "llama" => Ok(Box::new(llama::Llama::new(gguf)?)),
        "qwen2" => Ok(Box::new(qwen2::Qwen2::new(gguf)?)),
        "qwen3" => Ok(Box::new(qwen3::Qwen3::new(gguf)?)),
        "qwen3moe" => Ok(Box::new(qwen3moe::Qwen3Moe::new(gguf)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::new(gguf)?)),
        other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
    }
}
