//! One pipeline stage: a half-open range of blocks plus, on the first stage, the token embedding and, on the last,
//! the final norm and output head. Only the tensors the stage needs are read from the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};

use crate::arch::{self, Architecture, HParams, Layer};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::ops::{LayerKv, Linear, RmsNorm};

/// Identifies a sequence inside a stage; the same slot names the same sequence on every stage of a pipeline.
pub type SeqSlot = u32;

/// Half-open block range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerRange {
    pub start: usize,
    pub end: usize,
}

impl LayerRange {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub enum StageInput<'a> {
    /// Token ids; only the first stage accepts them.
    Tokens(&'a [u32]),
    /// (n_tokens, hidden) f32 activations from the previous stage.
    Hidden(Tensor),
}

#[derive(Debug)]
pub enum StageOutput {
    /// (n_tokens, hidden) f32 activations for the next stage.
    Hidden(Tensor),
    /// Logits of the last position (vocab_size floats); only the last stage produces them.
    Logits(Vec<f32>),
}

#[derive(Debug)]
struct SeqCache {
    pos: usize,
    layers: Vec<LayerKv>,
}

#[derive(Debug)]
struct Head {
    norm: RmsNorm,
    proj: Linear,
}

#[derive(Debug)]
pub struct Stage {
    arch: Box<dyn Architecture>,
    range: LayerRange,
    layers: Vec<Box<dyn Layer>>,
    embedding: Option<Arc<QTensor>>,
    head: Option<Head>,
    device: Device,
    seqs: HashMap<SeqSlot, SeqCache>,
}

impl Stage {
    pub fn load(path: impl AsRef<Path>, range: LayerRange, device: &Device) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        Self::load_from(&mut gguf, range, device)
    }

    /// Loads from an already opened file, so several stages of one process share the header parse.
    pub fn load_from(gguf: &mut GgufFile, range: LayerRange, device: &Device) -> Result<Self> {
        let arch = arch::from_gguf(gguf)?;
        let hp = arch.hparams().clone();
        if range.start >= range.end || range.end > hp.n_layers {
            return Err(EngineError::InvalidLayerRange {
                start: range.start,
                end: range.end,
                n_layers: hp.n_layers,
            });
        }
        let is_first = range.start == 0;
        let is_last = range.end == hp.n_layers;
        tracing::info!(arch = %hp.arch, start = range.start, end = range.end, n_layers = hp.n_layers, "loading stage");

        let mut embedding = None;
        if is_first {
            embedding = Some(load_embedding(gguf, &hp, device)?);
        }
        let mut layers = Vec::with_capacity(range.len());
        for l in range.start..range.end {
            layers.push(arch.load_layer(gguf, l, device)?);
        }
        let head = if is_last {
            let norm = RmsNorm::load(gguf, "output_norm.weight", hp.rms_eps, device)?;
            let proj = if gguf.has_tensor("output.weight") {
                Linear::load(gguf, "output.weight", device)?
            } else {
                // Tied head: reuse the embedding already loaded on a single-stage instance instead of a second copy.
                let w = match &embedding {
                    Some(e) => e.clone(),
                    None => load_embedding(gguf, &hp, device)?,
                };
                Linear::from_qtensor(w)?
            };
            if proj.out_features() != hp.vocab_size {
                return Err(EngineError::InvalidTensor {
                    name: "output".into(),
                    reason: format!(
                        "head has {} rows, vocabulary has {}",
                        proj.out_features(),
                        hp.vocab_size
                    ),
                });
            }
            Some(Head { norm, proj })
        } else {
            None
        };
        Ok(Self {
            arch,
            range,
            layers,
            embedding,
            head,
            device: device.clone(),
            seqs: HashMap::new(),
        })
    }

    pub fn hparams(&self) -> &HParams {
        self.arch.hparams()
    }

    pub fn range(&self) -> LayerRange {
        self.range
    }

    pub fn is_first(&self) -> bool {
        self.embedding.is_some()
    }

    pub fn is_last(&self) -> bool {
        self.head.is_some()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Tokens already processed for `slot` (0 for an unknown slot).
    pub fn seq_len(&self, slot: SeqSlot) -> usize {
        self.seqs.get(&slot).map_or(0, |s| s.pos)
    }

    /// Frees the KV cache of `slot`; a later forward on the same slot starts a new sequence.
    pub fn release(&mut self, slot: SeqSlot) {
        self.seqs.remove(&slot);
    }

    pub fn active_slots(&self) -> impl Iterator<Item = SeqSlot> + '_ {
        self.seqs.keys().copied()
    }

    /// Wraps f32 activations received from another stage (row-major, n_tokens × hidden).
    pub fn hidden_from_vec(&self, data: Vec<f32>) -> Result<Tensor> {
        let hidden = self.hparams().hidden;
        if data.is_empty() || !data.len().is_multiple_of(hidden) {
            return Err(EngineError::InvalidRequest(format!(
                "activation length {} is not a positive multiple of hidden size {hidden}",
                data.len()
            )));
        }
        let n = data.len() / hidden;
        Ok(Tensor::from_vec(data, (n, hidden), &self.device)?)
    }

    /// Runs the stage's blocks over new tokens of sequence `slot`, appending to its KV cache.
    pub fn forward(&mut self, slot: SeqSlot, input: StageInput<'_>) -> Result<StageOutput> {
        let hp = self.arch.hparams();
        let x = match input {
            StageInput::Tokens(ids) => {
                let Some(emb) = &self.embedding else {
                    return Err(EngineError::InvalidRequest(format!(
                        "stage [{}, {}) takes hidden states, not token ids",
                        self.range.start, self.range.end
                    )));
                };
                if ids.is_empty() {
                    return Err(EngineError::InvalidRequest("no tokens to process".into()));
                }
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= hp.vocab_size) {
                    return Err(EngineError::InvalidRequest(format!(
                        "token id {bad} is outside the vocabulary ({})",
                        hp.vocab_size
                    )));
                }
                let ids_t = Tensor::new(ids, &self.device)?;
                let x = emb.embedding(&ids_t)?;
                match self.arch.embedding_scale() {
                    Some(s) => (x * s)?,
                    None => x,
                }
            }
            StageInput::Hidden(x) => {
                if self.embedding.is_some() {
                    return Err(EngineError::InvalidRequest("the first stage takes token ids".into()));
                }
                let (n, h) = x.dims2().map_err(|_| {
                    EngineError::InvalidRequest(format!("activations must be (n_tokens, hidden), got {:?}", x.dims()))
                })?;
                if n == 0 || h != hp.hidden {
                    return Err(EngineError::InvalidRequest(format!(
                        "activations must be (n_tokens > 0, {}), got ({n}, {h})",
                        hp.hidden
                    )));
                }
                x
            }
        };
        let n = x.dims()[0];
        let n_layers = self.layers.len();
        let seq = self.seqs.entry(slot).or_insert_with(|| SeqCache {
            pos: 0,
            layers: (0..n_layers).map(|_| LayerKv::default()).collect(),
        });
        let pos = seq.pos;
        if pos + n > hp.context_length {
            return Err(EngineError::ContextOverflow {
                needed: pos + n,
                limit: hp.context_length,
            });
        }
        let ctx = self.arch.step_ctx(pos, n, &self.device)?;
        let run = |seq: &mut SeqCache| -> Result<Tensor> {
            let mut x = x;
            for (layer, kv) in self.layers.iter().zip(seq.layers.iter_mut()) {
                x = layer.forward(&x, kv, &ctx)?;
            }
            Ok(x)
        };
        let x = match run(seq) {
            Ok(x) => x,
            Err(e) => {
                // Keep the cache consistent with `pos` so the sequence can be retried or released cleanly.
                for kv in &mut seq.layers {
                    kv.truncate(pos);
                }
                return Err(e);
            }
        };
        seq.pos = pos + n;
        match &self.head {
            Some(head) => {
                let last = x.narrow(0, n - 1, 1)?;
                let logits = head.proj.forward(&head.norm.forward(&last)?)?;
                Ok(StageOutput::Logits(logits.flatten_all()?.to_vec1::<f32>()?))
            }
            None => Ok(StageOutput::Hidden(x)),
        }
    }
}

fn load_embedding(gguf: &mut GgufFile, hp: &HParams, device: &Device) -> Result<Arc<QTensor>> {
    let emb = gguf.load("token_embd.weight", device)?;
    let dims = emb.shape().dims();
    if dims != [hp.vocab_size, hp.hidden] {
        return Err(EngineError::InvalidTensor {
            name: "token_embd.weight".into(),
            reason: format!("shape {dims:?}, expected [{}, {}]", hp.vocab_size, hp.hidden),
        });
    }
    Ok(emb)
}
