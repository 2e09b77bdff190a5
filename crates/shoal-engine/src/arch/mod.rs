//! Model families. Each family is one file implementing [`Architecture`] (hyper-parameters and how to load a layer)
//! and [`Layer`] (one transformer block's forward pass); the stage, KV cache, embedding and head are shared.

use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Pool;
use crate::ops::{LayerKv, Rope};

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
}

impl StepCtx {
    pub fn new(rope: &Rope, seqs: Vec<BatchRows>) -> Self {
        let positions: Vec<usize> = seqs.iter().flat_map(|s| s.pos..s.pos + s.n_tokens).collect();
        let (cos, sin) = rope.tables(&positions);
        Self {
            n_rows: positions.len(),
            seqs,
            cos,
            sin,
        }
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

    fn step_ctx(&self, rope: &Rope, seqs: Vec<BatchRows>) -> StepCtx {
        StepCtx::new(rope, seqs)
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
