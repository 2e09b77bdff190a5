//! Activations quantized once per product into the format a weight type's dot products take: Q8 blocks of 32 with
//! their scaled sum, Q8_K blocks of 256 with their sums of 16 (for the K-quants), or the f32 values as they are.

use std::borrow::Cow;

use super::{Isa, QK, QK_K, scalar};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ActFormat {
    /// The f32 activations as they are.
    F32,
    /// [`BlockQ8`]s of 32.
    Q8,
    /// [`BlockQ8K`]s of 256.
    Q8K,
}

/// 32 activations quantized to i8: `x ≈ d · qs`, and `s = d · Σqs` (for the offsets of Q4_0/Q4_1/Q5_0/Q5_1).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct BlockQ8 {
    pub qs: [i8; QK],
    pub d: f32,
    pub s: f32,
}

/// 256 activations quantized to i8 with one scale, and the sums of each 16 (for the K-quants' offsets).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct BlockQ8K {
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
    pub d: f32,
}

/// `n` activation rows, quantized once per product into the format the weight type pairs with.
pub(crate) struct Acts<'a> {
    pub n: usize,
    pub cols: usize,
    /// The f32 activations, kept only for F32/F16/BF16 weights.
    pub x: Cow<'a, [f32]>,
    pub q8: Vec<BlockQ8>,
    pub q8k: Vec<BlockQ8K>,
}

impl<'a> Acts<'a> {
    pub(crate) fn quantize(format: ActFormat, x: &'a [f32], n: usize, cols: usize, isa: Isa) -> Self {
        let mut acts = Acts {
            n,
            cols,
            x: Cow::Borrowed(&[]),
            q8: Vec::new(),
            q8k: Vec::new(),
        };
        if cols == 0 {
            return acts;
        }
        match format {
            ActFormat::F32 => acts.x = Cow::Borrowed(x),
            ActFormat::Q8 => {
                let nb = cols / QK;
                acts.q8 = vec![
                    BlockQ8 {
                        qs: [0; QK],
                        d: 0.0,
                        s: 0.0
                    };
                    n * nb
                ];
                for (xr, br) in x.chunks_exact(cols).zip(acts.q8.chunks_exact_mut(nb)) {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2(t) => t.quantize_q8(xr, br),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512(t) => t.avx2().quantize_q8(xr, br),
                        _ => scalar::quantize_q8(xr, br),
                    }
                }
            }
            ActFormat::Q8K => {
                let nb = cols / QK_K;
                acts.q8k = vec![
                    BlockQ8K {
                        qs: [0; QK_K],
                        bsums: [0; QK_K / 16],
                        d: 0.0
                    };
                    n * nb
                ];
                for (xr, br) in x.chunks_exact(cols).zip(acts.q8k.chunks_exact_mut(nb)) {
                    match isa {
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx2(t) => t.quantize_q8k(xr, br),
                        #[cfg(target_arch = "x86_64")]
                        Isa::Avx512(t) => t.avx2().quantize_q8k(xr, br),
                        _ => scalar::quantize_q8k(xr, br),
                    }
                }
            }
        }
        acts
    }

    pub(crate) fn into_owned(self) -> Acts<'static> {
        Acts {
            n: self.n,
            cols: self.cols,
            x: Cow::Owned(self.x.into_owned()),
            q8: self.q8,
            q8k: self.q8k,
        }
    }

    /// Activation row `i`'s values as f32.
    pub fn x_row(&self, i: usize) -> &[f32] {
        &self.x[i * self.cols..(i + 1) * self.cols]
    }

    /// Activation row `i` as Q8 blocks.
    pub fn q8_row(&self, i: usize) -> &[BlockQ8] {
        let nb = self.cols / QK;
        &self.q8[i * nb..(i + 1) * nb]
    }

    /// Activation row `i` as Q8_K blocks.
    pub fn q8k_row(&self, i: usize) -> &[BlockQ8K] {
        let nb = self.cols / QK_K;
        &self.q8k[i * nb..(i + 1) * nb]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dispatched activation quantizers are bit-identical to the scalar ones, ties included.
    #[test]
    fn activation_quantization_matches_scalar_exactly() {
        let cols = 512;
        let mut x: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173).collect();
        // A block whose amax is 127 makes x·127/amax = x, so these land exactly on .5 ties.
        for (j, v) in x[..32].iter_mut().enumerate() {
            *v = j as f32 - 15.5;
        }
        x[31] = 127.0;
        x[32..64].fill(0.0);
        x[64] = -1e-30;
        for format in [ActFormat::Q8, ActFormat::Q8K] {
            let want = Acts::quantize(format, &x, 1, cols, Isa::Scalar);
            let got = Acts::quantize(format, &x, 1, cols, Isa::get());
            for (a, b) in want.q8.iter().zip(&got.q8) {
                assert_eq!(
                    (a.qs, a.d.to_bits(), a.s.to_bits()),
                    (b.qs, b.d.to_bits(), b.s.to_bits())
                );
            }
            for (a, b) in want.q8k.iter().zip(&got.q8k) {
                assert_eq!((a.qs, a.bsums, a.d.to_bits()), (b.qs, b.bsums, b.d.to_bits()));
            }
        }
        let ties = Acts::quantize(ActFormat::Q8, &x, 1, cols, Isa::get());
        assert_eq!(&ties.q8[0].qs[..4], &[-16, -14, -14, -12], "round half to even");
    }
}
