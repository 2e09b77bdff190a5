//! Qwen2 blocks: the llama block with biases on the q, k and v projections and neox rope (llama.cpp rotates halves
//! of each head for qwen2, LLAMA_ROPE_TYPE_NEOX, because its converter keeps HF's q/k layout).

use super::llama::{AttnOptions, Ffn, PreNormBlock};
use super::{Architecture, HParams, Layer, rope_scaling};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::ops::{Activation, GatedFfn, Rope, RopeScaling, RopeStyle};

#[derive(Debug)]
pub struct Qwen2 {
    hp: HParams,
    scaling: RopeScaling,
}

impl Qwen2 {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        let hp = HParams::read_common(gguf, "qwen2")?;
        if hp.rope_dim != hp.head_dim {
            return Err(EngineError::InvalidMetadata {
                key: "qwen2.rope.dimension_count".into(),
                reason: format!("rope dim {} differs from head dim {}", hp.rope_dim, hp.head_dim),
            });
        }
        let scaling = rope_scaling(gguf, "qwen2")?;
        Ok(Self { hp, scaling })
    }
}

impl Architecture for Qwen2 {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        // Qwen2's biases are loaded by the shared attention loader, which takes them wherever the file has them.
        for t in ["attn_q", "attn_k", "attn_v"] {
            let name = format!("blk.{layer}.{t}.bias");
            if !gguf.has_tensor(&name) {
                return Err(EngineError::MissingTensor(name));
            }
        }
        let opts = AttnOptions {
            style: RopeStyle::Neox,
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
}
