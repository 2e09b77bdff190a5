//! Llama-architecture blocks (also SmolLM, Mistral-without-sliding-window and other GGUFs tagged `llama`):
//! pre-norm RMSNorm, interleaved ("normal") rope, grouped-query attention without biases, SwiGLU MLP.

use super::{Architecture, HParams, Layer, StepCtx};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::kernels::Pool;
use crate::ops::{AttnShape, LayerKv, Linear, RmsNorm, add_in_place, causal_attention, rope_interleaved, swiglu};

#[derive(Debug)]
pub struct Llama {
    hp: HParams,
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
        Ok(Self { hp })
    }
}

impl Architecture for Llama {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        let p = |s: &str| format!("blk.{layer}.{s}.weight");
        let hp = &self.hp;
        let (eps, hidden) = (hp.rms_eps, hp.hidden);
        let q_width = hp.n_heads * hp.head_dim;
        let kv_width = hp.n_kv_heads * hp.head_dim;
        let block = LlamaBlock {
            attn_norm: RmsNorm::load(gguf, &p("attn_norm"), eps, hidden)?,
            wq: load_linear(gguf, &p("attn_q"), hidden, q_width)?,
            wk: load_linear(gguf, &p("attn_k"), hidden, kv_width)?,
            wv: load_linear(gguf, &p("attn_v"), hidden, kv_width)?,
            wo: load_linear(gguf, &p("attn_output"), q_width, hidden)?,
            ffn_norm: RmsNorm::load(gguf, &p("ffn_norm"), eps, hidden)?,
            gate: load_linear(gguf, &p("ffn_gate"), hidden, hp.ffn)?,
            up: load_linear(gguf, &p("ffn_up"), hidden, hp.ffn)?,
            down: load_linear(gguf, &p("ffn_down"), hp.ffn, hidden)?,
            shape: AttnShape {
                heads: hp.n_heads,
                kv_heads: hp.n_kv_heads,
                head_dim: hp.head_dim,
            },
        };
        Ok(Box::new(block))
    }
}

/// Loads a projection and checks it maps `inputs` to `outputs` features, so a malformed file fails at load with the
/// tensor named instead of producing garbage.
fn load_linear(gguf: &mut GgufFile, name: &str, inputs: usize, outputs: usize) -> Result<Linear> {
    let l = Linear::load(gguf, name)?;
    if l.in_features() != inputs || l.out_features() != outputs {
        return Err(EngineError::InvalidTensor {
            name: name.to_string(),
            reason: format!(
                "maps {} to {} features, expected {inputs} to {outputs}",
                l.in_features(),
                l.out_features()
            ),
        });
    }
    Ok(l)
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
    shape: AttnShape,
}

impl Layer for LlamaBlock {
    fn forward(&self, x: &mut [f32], kv: &mut [&mut LayerKv], ctx: &StepCtx, pool: &Pool) {
        let n = ctx.n_rows;
        let AttnShape {
            heads,
            kv_heads,
            head_dim,
        } = self.shape;
        let (q_width, kv_width) = (heads * head_dim, kv_heads * head_dim);
        let h = self.attn_norm.forward(x);
        let mut q = self.wq.forward(&h, n, pool);
        let mut k = self.wk.forward(&h, n, pool);
        let v = self.wv.forward(&h, n, pool);
        rope_interleaved(&mut q, heads, head_dim, &ctx.cos, &ctx.sin);
        rope_interleaved(&mut k, kv_heads, head_dim, &ctx.cos, &ctx.sin);
        let mut attn = vec![0.0; n * q_width];
        let scale = 1.0 / (head_dim as f32).sqrt();
        for (seq, cache) in ctx.seqs.iter().zip(kv.iter_mut()) {
            let rows = seq.row..seq.row + seq.n_tokens;
            cache.truncate(seq.pos);
            cache.append(
                &k[rows.start * kv_width..rows.end * kv_width],
                &v[rows.start * kv_width..rows.end * kv_width],
                kv_width,
            );
            causal_attention(
                &q[rows.start * q_width..rows.end * q_width],
                cache,
                seq.pos,
                self.shape,
                scale,
                &mut attn[rows.start * q_width..rows.end * q_width],
                pool.threads(),
            );
        }
        add_in_place(x, &self.wo.forward(&attn, n, pool));
        let h = self.ffn_norm.forward(x);
        let mut gate = self.gate.forward(&h, n, pool);
        swiglu(&mut gate, &self.up.forward(&h, n, pool));
        add_in_place(x, &self.down.forward(&gate, n, pool));
    }
}
