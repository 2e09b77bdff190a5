//! NEON kernels for aarch64: Q4_0, Q4_1 and Q8_0 dot products with widening multiplies (no `dotprod` extension
//! needed). Other types use the scalar reference. The module is compiled only where the target enables NEON (every
//! aarch64 target with an FPU), so no run-time detection is needed.

use std::arch::aarch64::*;

use super::scalar::f16_at;
use super::{Acts, BlockQ8, QMatrix, WeightType};

/// Whether [`rows`] has a NEON path for `ty`.
pub(crate) fn supports(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0)
}

/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)`.
pub(crate) fn rows(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    if !supports(m.ty()) {
        return super::scalar::rows(m, acts, r0, r1, out);
    }
    // SAFETY: this module is compiled only when the target enables NEON (`cfg(target_feature = "neon")`).
    unsafe { rows_neon(m, acts, r0, r1, out) }
}

#[target_feature(enable = "neon")]
fn rows_neon(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let len = r1 - r0;
    for r in r0..r1 {
        let w = m.row_data(r);
        for i in 0..acts.n {
            let a = acts.q8_row(i);
            out[i * len + r - r0] = match m.ty() {
                WeightType::Q4_0 => dot_q4_0(w, a),
                WeightType::Q4_1 => dot_q4_1(w, a),
                _ => dot_q8_0(w, a),
            };
        }
    }
}

/// acc + Σ w·a over 16 signed bytes (pairs of products fit in i16: |w| ≤ 128, |a| ≤ 127).
#[inline]
#[target_feature(enable = "neon")]
fn mul_acc(w: int8x16_t, a: int8x16_t, acc: int32x4_t) -> int32x4_t {
    let p = vmull_s8(vget_low_s8(w), vget_low_s8(a));
    let p = vmlal_s8(p, vget_high_s8(w), vget_high_s8(a));
    vpadalq_s16(acc, p)
}

#[inline]
#[target_feature(enable = "neon")]
fn load_act(a: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    // SAFETY: reads bytes 0..16 and 16..32 of the 32-byte array `a`.
    unsafe { (vld1q_s8(a.as_ptr()), vld1q_s8(a.as_ptr().add(16))) }
}

/// The 32 nibbles of a Q4 block of `BB` bytes (nibbles in its last 16 bytes) as unsigned values 0..16 in i8 lanes:
/// (elements 0..16, elements 16..32).
#[inline]
#[target_feature(enable = "neon")]
fn nibbles<const BB: usize>(blk: &[u8; BB]) -> (int8x16_t, int8x16_t) {
    const { assert!(BB >= 16) };
    // SAFETY: reads bytes BB-16..BB of the BB-byte array `blk`.
    let v = unsafe { vld1q_u8(blk.as_ptr().add(BB - 16)) };
    (
        vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_0(w: &[u8], act: &[BlockQ8]) -> f32 {
    let eight = vdupq_n_s8(8);
    let mut acc = 0.0f32;
    for (blk, ab) in w.as_chunks::<18>().0.iter().zip(act) {
        let (lo, hi) = nibbles(blk);
        let (a0, a1) = load_act(&ab.qs);
        let s = mul_acc(
            vsubq_s8(hi, eight),
            a1,
            mul_acc(vsubq_s8(lo, eight), a0, vdupq_n_s32(0)),
        );
        acc += f16_at(blk, 0) * ab.d * vaddvq_s32(s) as f32;
    }
    acc
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q4_1(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.as_chunks::<20>().0.iter().zip(act) {
        let (lo, hi) = nibbles(blk);
        let (a0, a1) = load_act(&ab.qs);
        let isum = mul_acc(hi, a1, mul_acc(lo, a0, vdupq_n_s32(0)));
        acc += f16_at(blk, 0) * ab.d * vaddvq_s32(isum) as f32 + f16_at(blk, 2) * ab.s;
    }
    acc
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_q8_0(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.as_chunks::<34>().0.iter().zip(act) {
        // SAFETY: reads bytes 2..18 and 18..34 of the 34-byte array `blk`.
        let (w0, w1) = unsafe {
            (
                vld1q_s8(blk.as_ptr().add(2).cast()),
                vld1q_s8(blk.as_ptr().add(18).cast()),
            )
        };
        let (a0, a1) = load_act(&ab.qs);
        let isum = mul_acc(w1, a1, mul_acc(w0, a0, vdupq_n_s32(0)));
        acc += f16_at(blk, 0) * ab.d * vaddvq_s32(isum) as f32;
    }
    acc
}
