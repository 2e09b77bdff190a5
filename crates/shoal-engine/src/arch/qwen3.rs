//! Qwen3 blocks: the llama block with a per-head RMS norm of q and k before rope (`attn_q_norm`, `attn_k_norm`),
//! neox rope (LLAMA_ROPE_TYPE_NEOX in llama.cpp) and no q/k/v biases. Qwen3's head size (`key_length`) need not be
//! hidden / heads.

use super::llama::{AttnOptions, Ffn, PreNormBlock};
use super::{Architecture, HParams, Layer, rope_scaling};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::ops::{Activation, GatedFfn, Rope, RopeScaling, RopeStyle};

#[derive(Debug)]
pub struct Qwen3 {
    hp: HParams,
    scaling: RopeScaling,
}

impl Qwen3 {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        let (hp, scaling) = read_qwen3_hparams(gguf, "qwen3")?;
        Ok(Self { hp, scaling })
    }
}

/// The hyper-parameters qwen3 and qwen3moe share, and their rope's frequency scale.
pub(crate) fn read_qwen3_hparams(gguf: &GgufFile, arch: &str) -> Result<(HParams, RopeScaling)> {
    let hp = HParams::read_common(gguf, arch)?;
    if hp.rope_dim != hp.head_dim {
        return Err(EngineError::InvalidMetadata {
            key: format!("{arch}.rope.dimension_count"),
            reason: format!("rope dim {} differs from head dim {}", hp.rope_dim, hp.head_dim),
        });
    }
    check_value_length(gguf, &hp)?;
    Ok((hp, rope_scaling(gguf, arch)?))
}

/// Values are as wide as keys in every family here; a file that says otherwise is refused at load.
pub(crate) fn check_value_length(gguf: &GgufFile, hp: &HParams) -> Result<()> {
    let key = format!("{}.attention.value_length", hp.arch);
    if gguf.has_key(&key) && gguf.get_usize(&key)? != hp.head_dim {
        return Err(EngineError::InvalidMetadata {
            reason: format!("value heads differ from the key length {}", hp.head_dim),
            key,
        });
    }
    Ok(())
}

pub(crate) const QWEN3_ATTENTION: AttnOptions = AttnOptions {
    style: RopeStyle::Neox,
    qk_norm: true,
};

impl Architecture for Qwen3 {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        let ffn = Ffn::Dense(GatedFfn::load(
            gguf,
            &format!("blk.{layer}.ffn"),
            self.hp.hidden,
            self.hp.ffn,
            Activation::Silu,
        )?);
        Ok(Box::new(PreNormBlock::load(
            gguf,
            &self.hp,
            layer,
            QWEN3_ATTENTION,
            ffn,
        )?))
    }

    fn rope(&self) -> Rope {
        Rope::scaled(self.hp.rope_dim, self.hp.rope_base, &self.scaling, None)
    }
}
