//! Several stages chained in one process. Activations cross each stage boundary as a plain `Vec<f32>`, exactly what
//! the network data plane will carry, so in-process results match a multi-node run.

use std::path::Path;
use std::sync::Arc;

use crate::attention::KvType;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Pool;
use crate::stage::{LayerRange, SeqChunk, SeqSlot, Stage, StageInput, StageOutput};

/// Prefill is split into chunks of this many tokens so that one long prompt cannot hold a stage for long.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<Stage>,
}

impl Pipeline {
    /// Loads the model split at the given block indices: `splits = [15]` gives stages [0,15) and [15,n).
    pub fn load(path: impl AsRef<Path>, splits: &[usize], pool: Arc<Pool>) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        let n_layers = crate::arch::from_gguf(&gguf)?.hparams().n_layers;
        let mut bounds = vec![0];
        bounds.extend_from_slice(splits);
        bounds.push(n_layers);
        let mut stages = Vec::with_capacity(bounds.len() - 1);
        for w in bounds.windows(2) {
            stages.push(Stage::load_from(&mut gguf, LayerRange::new(w[0], w[1]), pool.clone())?);
        }
        Self::from_stages(stages)
    }

    /// Chains stages that together cover every block exactly once, in order.
    pub fn from_stages(stages: Vec<Stage>) -> Result<Self> {
        let (Some(first), Some(last)) = (stages.first(), stages.last()) else {
            return Err(EngineError::InvalidRequest(
                "a pipeline needs at least one stage".into(),
            ));
        };
        let n_layers = first.hparams().n_layers;
        let mut expected = 0;
        for s in &stages {
            if s.range().start != expected || s.hparams() != first.hparams() {
                return Err(EngineError::InvalidLayerRange {
                    start: s.range().start,
                    end: s.range().end,
                    n_layers,
                });
            }
            expected = s.range().end;
        }
        if !first.is_first() || !last.is_last() {
            return Err(EngineError::InvalidLayerRange {
                start: 0,
                end: expected,
                n_layers,
            });
        }
        Ok(Self { stages })
    }

    /// Stores the KV caches of sequences started from now on, on every stage, as `kv_type`.
    pub fn set_kv_type(&mut self, kv_type: KvType) {
        for s in &mut self.stages {
            s.set_kv_type(kv_type);
        }
    }

    /// [`set_kv_type`](Self::set_kv_type), by value.
    pub fn with_kv_type(mut self, kv_type: KvType) -> Self {
        self.set_kv_type(kv_type);
        self
    }

    /// Bytes held by the KV caches of every sequence on every stage.
    pub fn kv_bytes(&self) -> usize {
        self.stages.iter().map(Stage::kv_bytes).sum()
    }

    pub fn stages(&self) -> &[Stage] {
        &self.stages
    }

    pub fn hparams(&self) -> &crate::arch::HParams {
        self.stages[0].hparams()
    }

    pub fn seq_len(&self, slot: SeqSlot) -> usize {
        self.stages[0].seq_len(slot)
    }

    pub fn release(&mut self, slot: SeqSlot) {
        for s in &mut self.stages {
            s.release(slot);
        }
    }

    /// Feeds new tokens of `slot` through every stage (chunked) and returns the logits of the last one.
    pub fn forward(&mut self, slot: SeqSlot, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(EngineError::InvalidRequest("no tokens to process".into()));
        }
        let limit = self.hparams().context_length;
        let needed = self.seq_len(slot) + tokens.len();
        if needed > limit {
            return Err(EngineError::ContextOverflow { needed, limit });
        }
        let mut logits = None;
        for chunk in tokens.chunks(PREFILL_CHUNK) {
            logits = Some(self.forward_chunk(slot, chunk)?);
        }
        logits.ok_or_else(|| EngineError::InvalidRequest("no tokens to process".into()))
    }

    fn forward_chunk(&mut self, slot: SeqSlot, tokens: &[u32]) -> Result<Vec<f32>> {
        let chunk = SeqChunk {
            slot,
            n_tokens: tokens.len(),
        };
        let mut logits = self.forward_batch(&[chunk], tokens)?;
        logits
            .pop()
            .ok_or_else(|| EngineError::InvalidRequest("the last stage produced no logits".into()))
    }

    /// One batched step through every stage: `tokens` holds the new tokens of each sequence of `batch`, back to back.
    /// Returns the logits of each sequence's last token, in batch order. Callers chunk long prompts themselves.
    pub fn forward_batch(&mut self, batch: &[SeqChunk], tokens: &[u32]) -> Result<Vec<Vec<f32>>> {
        let mut out = self.stages[0].forward_batch(batch, StageInput::Tokens(tokens))?;
        for stage in &mut self.stages[1..] {
            let StageOutput::Hidden(h) = out else {
                return Err(EngineError::InvalidRequest("a non-final stage produced logits".into()));
            };
            out = stage.forward_batch(batch, StageInput::Hidden(&h))?;
        }
        match out {
            StageOutput::Logits(l) => Ok(l),
            StageOutput::Hidden(_) => Err(EngineError::InvalidRequest("the last stage produced no logits".into())),
        }
    }
}
