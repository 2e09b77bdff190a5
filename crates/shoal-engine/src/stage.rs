//! One pipeline stage: a half-open range of blocks plus, on the first stage, the token embedding and, on the last,
//! the final norm and output head. Only the tensors the stage needs are read from the file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::arch::{self, Architecture, BatchRows, HParams, Layer};
use crate::attention::KvType;
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::{Pool, QMatrix};
use crate::ops::{LayerKv, Linear, RmsNorm, Rope};

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
    /// (n_tokens, hidden) f32 activations from the previous stage, row-major.
    Hidden(&'a [f32]),
}

#[derive(Debug, Clone, PartialEq)]
pub enum StageOutput {
    /// (n_tokens, hidden) f32 activations for the next stage, row-major.
    Hidden(Vec<f32>),
    /// Logits of the last position of each sequence of the batch (vocab_size floats each), in batch order; only the
    /// last stage produces them.
    Logits(Vec<Vec<f32>>),
}

/// One sequence's share of a batched forward pass: its next `n_tokens` rows of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqChunk {
    pub slot: SeqSlot,
    pub n_tokens: usize,
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
    embedding: Option<Arc<QMatrix>>,
    head: Option<Head>,
    rope: Rope,
    pool: Arc<Pool>,
    seqs: HashMap<SeqSlot, SeqCache>,
    /// Bytes of weights read from the file for this stage (its layers, plus the embedding and head it needs).
    weight_bytes: u64,
    /// Counts every layer this stage runs, for a watcher on another thread (the runner's heartbeat): progress
    /// inside one long forward pass, so a 512-token prefill on slow hardware is not taken for a hang.
    layer_progress: Option<Arc<AtomicU64>>,
    /// Element type of the KV caches of sequences started from now on.
    kv_type: KvType,
}

impl Stage {
    pub fn load(path: impl AsRef<Path>, range: LayerRange, pool: Arc<Pool>) -> Result<Self> {
        let mut gguf = GgufFile::open(path)?;
        Self::load_from(&mut gguf, range, pool)
    }

    /// Loads from an already opened file, so several stages of one process share the header parse.
    pub fn load_from(gguf: &mut GgufFile, range: LayerRange, pool: Arc<Pool>) -> Result<Self> {
        let read_before = gguf.tensor_bytes_read();
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
        tracing::info!(arch = %hp.arch, start = range.start, end = range.end, n_layers = hp.n_layers, isa = crate::kernels::isa(), "loading stage");

        let mut embedding = None;
        if is_first {
            embedding = Some(load_embedding(gguf, &hp)?);
        }
        let mut layers = Vec::with_capacity(range.len());
        for l in range.start..range.end {
            layers.push(arch.load_layer(gguf, l)?);
        }
        let head = if is_last {
            let norm = RmsNorm::load(gguf, "output_norm.weight", hp.rms_eps, hp.hidden)?;
            let proj = if gguf.has_tensor("output.weight") {
                Linear::load(gguf, "output.weight")?
            } else {
                // Tied head: reuse the embedding already loaded on a single-stage instance instead of a second copy.
                let w = match &embedding {
                    Some(e) => e.clone(),
                    None => load_embedding(gguf, &hp)?,
                };
                // The head's product reads a packed copy; the embedding's lookups read the mapped rows.
                Linear::from_matrix(Arc::new(gguf.pack_rows("token_embd.weight", 0, QMatrix::clone(&w))))
            };
            if proj.out_features() != hp.vocab_size || proj.in_features() != hp.hidden {
                return Err(EngineError::InvalidTensor {
                    name: "output".into(),
                    reason: format!(
                        "head maps {} to {} features, expected {} to the vocabulary's {}",
                        proj.in_features(),
                        proj.out_features(),
                        hp.hidden,
                        hp.vocab_size
                    ),
                });
            }
            Some(Head { norm, proj })
        } else {
            None
        };
        let rope = arch.load_rope(gguf)?;
        Ok(Self {
            rope,
            arch,
            range,
            layers,
            embedding,
            head,
            pool,
            seqs: HashMap::new(),
            weight_bytes: gguf.tensor_bytes_read() - read_before,
            layer_progress: None,
            kv_type: KvType::default(),
        })
    }

    /// Bytes of weights this stage read from the model file: only its own layer range (plus the embedding on the
    /// first stage and the norm and head on the last).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Stores the keys and values of sequences started from now on as `kv_type` (running sequences keep theirs).
    pub fn set_kv_type(&mut self, kv_type: KvType) {
        self.kv_type = kv_type;
    }

    /// [`set_kv_type`](Self::set_kv_type), by value.
    pub fn with_kv_type(mut self, kv_type: KvType) -> Self {
        self.set_kv_type(kv_type);
        self
    }

    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Counts every layer run from now on into `counter` (see the field's comment).
    pub fn count_layers_into(&mut self, counter: Arc<AtomicU64>) {
        self.layer_progress = Some(counter);
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

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
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

    /// Bytes held by the KV caches of every sequence.
    pub fn kv_bytes(&self) -> usize {
        self.seqs.values().flat_map(|s| &s.layers).map(LayerKv::bytes).sum()
    }

    /// Runs the stage's blocks over new tokens of one sequence.
    pub fn forward(&mut self, slot: SeqSlot, input: StageInput<'_>) -> Result<StageOutput> {
        let n_tokens = match &input {
            StageInput::Tokens(ids) => ids.len(),
            StageInput::Hidden(x) => x.len() / self.hparams().hidden.max(1),
        };
        self.forward_batch(&[SeqChunk { slot, n_tokens }], input)
    }

    /// Runs the stage's blocks once over new tokens of several sequences: the input holds their rows back to back, in
    /// `batch` order, and every weight is streamed once for all of them. Each sequence appends to its own KV cache.
    /// Nothing changes when an error is returned.
    pub fn forward_batch(&mut self, batch: &[SeqChunk], input: StageInput<'_>) -> Result<StageOutput> {
        let hp = self.arch.hparams();
        let hidden = hp.hidden;
        let n_rows: usize = batch.iter().map(|c| c.n_tokens).sum();
        if batch.is_empty() || batch.iter().any(|c| c.n_tokens == 0) {
            return Err(EngineError::InvalidRequest(
                "every sequence of a batch needs at least one token".into(),
            ));
        }
        for (i, c) in batch.iter().enumerate() {
            if batch[..i].iter().any(|o| o.slot == c.slot) {
                return Err(EngineError::InvalidRequest(format!(
                    "slot {} appears twice in one batch",
                    c.slot
                )));
            }
            let needed = self.seq_len(c.slot) + c.n_tokens;
            if needed > hp.context_length {
                return Err(EngineError::ContextOverflow {
                    needed,
                    limit: hp.context_length,
                });
            }
        }
        let mut x = match input {
            StageInput::Tokens(ids) => {
                let Some(emb) = &self.embedding else {
                    return Err(EngineError::InvalidRequest(format!(
                        "stage [{}, {}) takes hidden states, not token ids",
                        self.range.start, self.range.end
                    )));
                };
                if ids.len() != n_rows {
                    return Err(EngineError::InvalidRequest(format!(
                        "{} token ids for a batch of {n_rows} tokens",
                        ids.len()
                    )));
                }
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= hp.vocab_size) {
                    return Err(EngineError::InvalidRequest(format!(
                        "token id {bad} is outside the vocabulary ({})",
                        hp.vocab_size
                    )));
                }
                let mut x = vec![0.0; n_rows * hidden];
                for (&id, row) in ids.iter().zip(x.chunks_exact_mut(hidden)) {
                    emb.dequantize_row(id as usize, row);
                }
                if let Some(s) = self.arch.embedding_scale() {
                    x.iter_mut().for_each(|v| *v *= s);
                }
                x
            }
            StageInput::Hidden(x) => {
                if self.embedding.is_some() {
                    return Err(EngineError::InvalidRequest("the first stage takes token ids".into()));
                }
                if x.len() != n_rows * hidden {
                    return Err(EngineError::InvalidRequest(format!(
                        "{} activation values for a batch of {n_rows} tokens of hidden size {hidden}",
                        x.len()
                    )));
                }
                if x.iter().any(|v| !v.is_finite()) {
                    return Err(EngineError::InvalidRequest(
                        "activations contain NaN or infinity".into(),
                    ));
                }
                x.to_vec()
            }
        };

        let (n_layers, kv_type) = (self.layers.len(), self.kv_type);
        let mut caches: Vec<SeqCache> = batch
            .iter()
            .map(|c| {
                self.seqs.remove(&c.slot).unwrap_or_else(|| SeqCache {
                    pos: 0,
                    layers: (0..n_layers).map(|_| LayerKv::new(kv_type)).collect(),
                })
            })
            .collect();
        let mut row = 0;
        let rows: Vec<BatchRows> = batch
            .iter()
            .zip(&caches)
            .map(|(c, cache)| {
                let r = BatchRows {
                    row,
                    n_tokens: c.n_tokens,
                    pos: cache.pos,
                };
                row += c.n_tokens;
                r
            })
            .collect();
        let ctx = self.arch.step_ctx(&self.rope, rows);
        for (l, layer) in self.layers.iter().enumerate() {
            let mut kvs: Vec<&mut LayerKv> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            layer.forward(&mut x, &mut kvs, &ctx, &self.pool);
            if let Some(progress) = &self.layer_progress {
                progress.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (c, mut cache) in batch.iter().zip(caches) {
            cache.pos += c.n_tokens;
            self.seqs.insert(c.slot, cache);
        }
        match &self.head {
            Some(head) => {
                let last_rows: Vec<f32> = ctx
                    .seqs
                    .iter()
                    .flat_map(|s| {
                        let last = s.row + s.n_tokens - 1;
                        x[last * hidden..(last + 1) * hidden].iter().copied()
                    })
                    .collect();
                let normed = head.norm.forward(&last_rows);
                let mut logits = head.proj.forward(&normed, batch.len(), &self.pool);
                if let Some(cap) = self.arch.final_logit_softcap() {
                    // Scale, tanh, scale back, in llama.cpp's order.
                    let inv = 1.0 / cap;
                    logits.iter_mut().for_each(|l| *l = cap * (*l * inv).tanh());
                }
                Ok(StageOutput::Logits(
                    logits.chunks_exact(hp.vocab_size).map(<[f32]>::to_vec).collect(),
                ))
            }
            None => Ok(StageOutput::Hidden(x)),
        }
    }
}

fn load_embedding(gguf: &mut GgufFile, hp: &HParams) -> Result<Arc<QMatrix>> {
    let emb = gguf.read_matrix("token_embd.weight")?;
    if emb.rows() != hp.vocab_size || emb.cols() != hp.hidden {
        return Err(EngineError::InvalidTensor {
            name: "token_embd.weight".into(),
            reason: format!(
                "shape [{}, {}], expected [{}, {}]",
                emb.rows(),
                emb.cols(),
                hp.vocab_size,
                hp.hidden
            ),
        });
    }
    Ok(Arc::new(emb))
}
