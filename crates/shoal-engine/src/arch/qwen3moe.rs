//! Qwen3-MoE blocks: qwen3's attention (per-head q/k RMS norms, neox rope) and a mixture-of-experts feed-forward.
//! The router (`ffn_gate_inp`) gives a softmax over all experts; each token runs the `expert_used_count` most probable
//! ones and sums their outputs weighted by those probabilities divided by their sum. llama.cpp always renormalizes
//! for qwen3moe (its graph passes norm_w = true whatever the file says) and applies no `expert_weights_scale`.
//! Expert weights are 3-D tensors `ffn_{gate,up,down}_exps` (ggml shape [cols, rows, n_expert]); a stage holds every
//! expert of its layers.

use std::sync::Arc;

use super::llama::{Ffn, PreNormBlock};
use super::qwen3::{QWEN3_ATTENTION, read_qwen3_hparams};
use super::{Architecture, HParams, Layer};
use crate::error::{EngineError, Result};
use crate::gguf::GgufFile;
use crate::ops::{Activation, GatedFfn, Linear, MoeFfn, Rope, RopeScaling};

#[derive(Debug)]
pub struct Qwen3Moe {
    hp: HParams,
    scaling: RopeScaling,
    n_experts: usize,
    n_used: usize,
    /// Each expert's intermediate size.
    expert_ffn: usize,
}

impl Qwen3Moe {
    pub fn new(gguf: &GgufFile) -> Result<Self> {
        const ARCH: &str = "qwen3moe";
        let (hp, scaling) = read_qwen3_hparams(gguf, ARCH)?;
        let n_experts = gguf.get_usize(&format!("{ARCH}.expert_count"))?;
        let n_used = gguf.get_usize(&format!("{ARCH}.expert_used_count"))?;
        if n_experts == 0 || n_used == 0 || n_used > n_experts {
            return Err(EngineError::InvalidMetadata {
                key: format!("{ARCH}.expert_used_count"),
                reason: format!("{n_used} experts used out of {n_experts}"),
            });
        }
        let key = format!("{ARCH}.expert_feed_forward_length");
        // llama.cpp's fallback when the key is absent.
        let expert_ffn = if gguf.has_key(&key) {
            gguf.get_usize(&key)?
        } else {
            hp.ffn / n_used
        };
        Ok(Self {
            hp,
            scaling,
            n_experts,
            n_used,
            expert_ffn,
        })
    }

    fn load_experts(&self, gguf: &mut GgufFile, layer: usize) -> Result<Vec<GatedFfn>> {
        let (hidden, ffn) = (self.hp.hidden, self.expert_ffn);
        let mut stack = |part: &str, inputs: usize, outputs: usize| -> Result<Vec<Linear>> {
            let name = format!("blk.{layer}.ffn_{part}_exps.weight");
            let mats = gguf.read_expert_matrices(&name)?;
            if mats.len() != self.n_experts {
                return Err(EngineError::InvalidTensor {
                    name,
                    reason: format!("{} experts, expected {}", mats.len(), self.n_experts),
                });
            }
            mats.into_iter()
                .enumerate()
                .map(|(i, m)| {
                    if m.cols() != inputs || m.rows() != outputs {
                        return Err(EngineError::InvalidTensor {
                            name: name.clone(),
                            reason: format!(
                                "an expert maps {} to {} features, expected {inputs} to {outputs}",
                                m.cols(),
                                m.rows()
                            ),
                        });
                    }
                    Ok(Linear::from_matrix(Arc::new(gguf.pack_rows(&name, i, m))))
                })
                .collect()
        };
        let gates = stack("gate", hidden, ffn)?;
        let ups = stack("up", hidden, ffn)?;
        let downs = stack("down", ffn, hidden)?;
        Ok(gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((gate, up), down)| GatedFfn {
                gate,
                up,
                down,
                act: Activation::Silu,
            })
            .collect())
    }
}

impl Architecture for Qwen3Moe {
    fn hparams(&self) -> &HParams {
        &self.hp
    }

    fn load_layer(&self, gguf: &mut GgufFile, layer: usize) -> Result<Box<dyn Layer>> {
        let router = Linear::load_checked(
            gguf,
            &format!("blk.{layer}.ffn_gate_inp.weight"),
            self.hp.hidden,
            self.n_experts,
        )?;
        let ffn = Ffn::Moe(MoeFfn {
            router,
            experts: self.load_experts(gguf, layer)?,
            n_used: self.n_used,
        });
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
