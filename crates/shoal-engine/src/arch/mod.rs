//! Model families. Each family is one file implementing [`Architecture`] (hyper-parameters and how to load a layer)
//! and [`Layer`] (one transformer block's forward pass); the stage, KV cache, embedding and head are shared.

use candle_core::{Device, Tensor};

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::ops::{LayerKv, RopeTables, causal_mask};

pub mod llama;

/// Architectures (`general.architecture`) this build can run.
pub const SUPPORTED: &[&str] = &["llama"];

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

/// Per-call inputs every layer of a stage shares, built once per forward instead of once per layer.
#[derive(Debug)]
pub struct StepCtx {
    /// Position of the first new token in the sequence.
    pub pos: usize,
    pub n_tokens: usize,
    pub rope: RopeTables,
    /// (n_tokens, pos + n_tokens); `None` for a single token, which may attend to everything cached.
    pub mask: Option<Tensor>,
}

impl StepCtx {
    pub fn new(hp: &HParams, pos: usize, n_tokens: usize, device: &Device) -> Result<Self> {
        let rope = RopeTables::new(pos, n_tokens, hp.rope_dim, hp.rope_base, device)?;
        let mask = if n_tokens > 1 {
            Some(causal_mask(pos, n_tokens, device)?)
        } else {
            None
        };
        Ok(Self {
            pos,
            n_tokens,
            rope,
            mask,
        })
    }
}

/// One transformer block.
pub trait Layer: Send + Sync + std::fmt::Debug {
    /// x: (n_tokens, hidden) f32. Appends this step's keys and values to `kv`.
    fn forward(&self, x: &Tensor, kv: &mut LayerKv, ctx: &StepCtx) -> Result<Tensor>;
}

/// A model family: how to read its hyper-parameters and load one block. Embedding, final norm and head follow the
/// llama naming (`token_embd`, `output_norm`, `output`), which every GGUF family shares; families that differ
/// override the hooks.
pub trait Architecture: Send + Sync + std::fmt::Debug {
    fn hparams(&self) -> &HParams;

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize, device: &Device) -> Result<Box<dyn Layer>>;

    /// Multiplier applied to token embeddings (gemma scales by sqrt(hidden)).
    fn embedding_scale(&self) -> Option<f64> {
        None
    }

    /// Builds the per-call context; families with several rope bases (gemma3 local/global) override this.
    fn step_ctx(&self, pos: usize, n_tokens: usize, device: &Device) -> Result<StepCtx> {
        StepCtx::new(self.hparams(), pos, n_tokens, device)
    }
}

/// Picks the family from `general.architecture`.
pub fn from_gguf(gguf: &GgufFile) -> Result<Box<dyn Architecture>> {
    let name = gguf.get_str("general.architecture")?;
    match name {
        "llama" => Ok(Box::new(llama::Llama::new(gguf)?)),
        other => Err(EngineError::UnsupportedArchitecture(other.to_string())),
    }
}
