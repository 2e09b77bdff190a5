//! NEON kernels for aarch64, one for every weight type, with widening multiplies (no `dotprod` extension needed).
//! The module is compiled only where the target enables NEON (every aarch64 target with an FPU), so no run-time
//! detection is needed.
//!
//! F32/F16/BF16 rows are f32 fused multiply-adds (f16 and bf16 widened with integer operations, so no `fp16`
//! extension either). The 32-wide formats multiply their block with the Q8 block directly. A K-quant block is first
//! unpacked once into 256 small integers and 16 group scales (and mins), which every activation row of the product
//! then reuses.
//!
//! Memory accesses go through fixed-size arrays (`as_chunks`) with the offsets stated next to each load, so no load
//! or store can leave its array.

use std::arch::aarch64::*;

use super::scalar::{f16_at, q3k_scale, scale_min_k4};
use super::{Acts, BlockQ8, BlockQ8K, QK_K, QMatrix, WeightType};

/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)`.
pub(crate) fn rows(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
    // SAFETY: this module is compiled only when the target enables NEON (`cfg(target_feature = "neon")`).
    unsafe { rows_neon(m, acts, r0, r1, out) }
}

#[target_feature(enable = "neon")]
fn rows_neon(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let len = r1 - r0;
    let mut y = vec![0.0f32; acts.n];
    for r in r0..r1 {
        let w = m.row_data(r);
        match m.ty() {
            WeightType::Q2K => kquant_row::<84>(w, acts, &mut y, unpack_q2k),
            WeightType::Q3K => kquant_row::<110>(w, acts, &mut y, unpack_q3k),
            WeightType::Q4K => kquant_row::<144>(w, acts, &mut y, unpack_q4k),
            WeightType::Q5K => kquant_row::<176>(w, acts, &mut y, unpack_q5k),
            WeightType::Q6K => kquant_row::<210>(w, acts, &mut y, unpack_q6k),
            ty => {
                for (i, y) in y.iter_mut().enumerate() {
                    *y = dot(ty, w, acts, i);
                }
            }
        }
        for (i, &v) in y.iter().enumerate() {
            out[i * len + r - r0] = v;
        }
    }
}

/// Weight row `w` (of a float or 32-wide type) · activation row `i`.
#[inline]
#[target_feature(enable = "neon")]
fn dot(ty: WeightType, w: &[u8], acts: &Acts, i: usize) -> f32 {
    match ty {
        WeightType::F32 => dot_f32(w, acts.x_row(i)),
        WeightType::F16 => dot_f16(w, acts.x_row(i)),
        WeightType::BF16 => dot_bf16(w, acts.x_row(i)),
        WeightType::Q4_0 => dot_q4_0(w, acts.q8_row(i)),
        WeightType::Q4_1 => dot_q4_1(w, acts.q8_row(i)),
        WeightType::Q5_0 => dot_q5::<22>(w, acts.q8_row(i)),
        WeightType::Q5_1 => dot_q5::<24>(w, acts.q8_row(i)),
        WeightType::Q8_0 => dot_q8_0(w, acts.q8_row(i)),
        // The K-quants go through `kquant_row`; this arm is never taken.
        _ => super::scalar::dot_row(ty, w, acts, i),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Float rows

/// 4 f16 (as u16 bits) to f32, exactly: the exponent and mantissa shifted into f32 position and rescaled by 2^112
/// (exact for normal and subnormal values alike), infinities and NaNs given the f32 all-ones exponent.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(h: uint16x4_t) -> float32x4_t {
    let h = vmovl_u16(h);
    let sign = vshlq_n_u32::<16>(vandq_u32(h, vdupq_n_u32(0x8000)));
    let em = vandq_u32(h, vdupq_n_u32(0x7FFF));
    let shifted = vshlq_n_u32::<13>(em);
    let scaled = vmulq_f32(vreinterpretq_f32_u32(shifted), vdupq_n_f32(f32::from_bits(0x7780_0000)));
    let inf_nan = vcgeq_u32(em, vdupq_n_u32(0x7C00));
    let bits = vbslq_u32(
        inf_nan,
        vorrq_u32(shifted, vdupq_n_u32(0x7F80_0000)),
        vreinterpretq_u32_f32(scaled),
    );
    vreinterpretq_f32_u32(vorrq_u32(bits, sign))
}

/// Σ w·x over rows of f32 weights stored as `BW` bytes per 4 (4: f32, 2: f16/bf16), 8 values per step in two
/// accumulators; `widen` turns the bytes of 4 weights into f32 and `one` a single weight.
#[inline]
#[target_feature(enable = "neon")]
fn dot_float<const B4: usize>(
    w: &[u8],
    x: &[f32],
    widen: impl Fn(&[u8; B4]) -> float32x4_t,
    one: impl Fn(&[u8]) -> f32,
) -> f32 {
    let bw = B4 / 4;
    let cols = w.len() / bw;
    let x = &x[..cols];
    let (wc, _) = w.as_chunks::<B4>();
    let (xc, _) = x.as_chunks::<4>();
    let mut acc = [vdupq_n_f32(0.0); 2];
    for (k, (wb, xb)) in wc.iter().zip(xc).enumerate() {
        // SAFETY: reads exactly the 4 f32 of `xb`.
        let xv = unsafe { vld1q_f32(xb.as_ptr()) };
        acc[k % 2] = vfmaq_f32(acc[k % 2], widen(wb), xv);
    }
    let full = xc.len() * 4;
    let tail: f32 = (full..cols).map(|c| one(&w[c * bw..]) * x[c]).sum();
    vaddvq_f32(vaddq_f32(acc[0], acc[1])) + tail
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    dot_float::<16>(
        w,
        x,
        // SAFETY: reads exactly the 16 bytes of `b` (4 unaligned f32).
        |b| unsafe { vreinterpretq_f32_u8(vld1q_u8(b.as_ptr())) },
        |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    dot_float::<8>(
        w,
        x,
        // SAFETY: reads exactly the 8 bytes of `b`; the conversion needs only NEON, which this module's target has.
        |b| unsafe { f16x4_to_f32(vreinterpret_u16_u8(vld1_u8(b.as_ptr()))) },
        |b| f16_at(b, 0),
    )
}

#[inline]
#[target_feature(enable = "neon")]
fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    dot_float::<8>(
        w,
        x,
        // SAFETY: reads exactly the 8 bytes of `b`; a bf16 is the top half of an f32, so widening by 16 bits
        // places it.
        |b| unsafe { vreinterpretq_f32_u32(vshll_n_u16::<16>(vreinterpret_u16_u8(vld1_u8(b.as_ptr())))) },
        |b| super::scalar::bf16_at(b, 0),
    )
}

// ---------------------------------------------------------------------------------------------------------------
// Blocks of 32 against Q8 blocks

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

/// The 32 nibbles of a Q4/Q5 block of `BB` bytes (nibbles in its last 16 bytes) as unsigned values 0..16 in i8
/// lanes: (elements 0..16, elements 16..32).
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

/// 0x10 in byte j of the result where bit j of `b0` (j < 8) or bit j − 8 of `b1` (j ≥ 8) is set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(b0: u8, b1: u8) -> int8x16_t {
    let v = vcombine_u8(vdup_n_u8(b0), vdup_n_u8(b1));
    let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    vreinterpretq_s8_u8(vandq_u8(vtstq_u8(v, bit), vdupq_n_u8(0x10)))
}

/// Q5_0 (`BB` = 22: value (q − 16)·d) and Q5_1 (`BB` = 24: value q·d + m, m times the activations' scaled sum).
#[inline]
#[target_feature(enable = "neon")]
fn dot_q5<const BB: usize>(w: &[u8], act: &[BlockQ8]) -> f32 {
    const { assert!(BB == 22 || BB == 24) };
    let sixteen = vdupq_n_s8(if BB == 22 { 16 } else { 0 });
    let mut acc = 0.0f32;
    for (blk, ab) in w.as_chunks::<BB>().0.iter().zip(act) {
        let (lo, hi) = nibbles(blk);
        let h = BB - 20;
        let lo = vsubq_s8(vorrq_s8(lo, fifth_bits(blk[h], blk[h + 1])), sixteen);
        let hi = vsubq_s8(vorrq_s8(hi, fifth_bits(blk[h + 2], blk[h + 3])), sixteen);
        let (a0, a1) = load_act(&ab.qs);
        let isum = mul_acc(hi, a1, mul_acc(lo, a0, vdupq_n_s32(0)));
        acc += f16_at(blk, 0) * ab.d * vaddvq_s32(isum) as f32;
        if BB == 24 {
            acc += f16_at(blk, 2) * ab.s;
        }
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

// ---------------------------------------------------------------------------------------------------------------
// K-quants: unpack a block once, then multiply it with every activation row

/// A K-quant block unpacked: value `e` is `d · scale[e / 16] · q[e] − dmin · min[e / 16]`, with every |q| ≤ 32 so
/// that a pair of products with Q8_K activations fits in i16.
struct KBlock {
    q: [[i8; 16]; QK_K / 16],
    scale: [i32; QK_K / 16],
    min: [i32; QK_K / 16],
    d: f32,
    dmin: f32,
}

impl KBlock {
    fn new() -> Self {
        KBlock {
            q: [[0; 16]; QK_K / 16],
            scale: [0; QK_K / 16],
            min: [0; QK_K / 16],
            d: 0.0,
            dmin: 0.0,
        }
    }

    #[inline]
    #[target_feature(enable = "neon")]
    fn store(&mut self, g: usize, v: uint8x16_t) {
        // SAFETY: writes exactly the 16 bytes of group `g`.
        unsafe { vst1q_s8(self.q[g].as_mut_ptr(), vreinterpretq_s8_u8(v)) }
    }

    /// Σ_e value(e) · a(e) for one Q8_K block of activations (the mins through its sums of 16).
    #[inline]
    #[target_feature(enable = "neon")]
    fn dot(&self, ab: &BlockQ8K) -> f32 {
        let (a16, _) = ab.qs.as_chunks::<16>();
        let mut isum = vdupq_n_s32(0);
        for ((q, a), &sc) in self.q.iter().zip(a16).zip(&self.scale) {
            // SAFETY: reads exactly the 16 bytes of `q` and of `a`.
            let (qv, av) = unsafe { (vld1q_s8(q.as_ptr()), vld1q_s8(a.as_ptr())) };
            isum = vmlaq_n_s32(isum, mul_acc(qv, av, vdupq_n_s32(0)), sc);
        }
        let msum: i32 = self.min.iter().zip(&ab.bsums).map(|(&m, &s)| m * s as i32).sum();
        ab.d * (self.d * vaddvq_s32(isum) as f32 - self.dmin * msum as f32)
    }
}

/// One weight row of `B`-byte K-quant blocks against every activation row, each block unpacked once.
#[inline]
#[target_feature(enable = "neon")]
fn kquant_row<const B: usize>(w: &[u8], acts: &Acts, y: &mut [f32], unpack: fn(&[u8; B], &mut KBlock)) {
    y.fill(0.0);
    let mut kb = KBlock::new();
    for (b, blk) in w.as_chunks::<B>().0.iter().enumerate() {
        unpack(blk, &mut kb);
        for (i, y) in y.iter_mut().enumerate() {
            *y += kb.dot(&acts.q8k_row(i)[b]);
        }
    }
}

/// 16 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "neon")]
fn load16<const B: usize>(b: &[u8; B], off: usize) -> uint8x16_t {
    assert!(off + 16 <= B);
    // SAFETY: off + 16 <= B (asserted; the callers pass constants, so the check folds away).
    unsafe { vld1q_u8(b.as_ptr().add(off)) }
}

/// Bits `shift..shift + 2` of every byte of `v`.
#[inline]
#[target_feature(enable = "neon")]
fn crumb(v: uint8x16_t, shift: usize) -> uint8x16_t {
    vandq_u8(vshlq_u8(v, vdupq_n_s8(-(shift as i8))), vdupq_n_u8(3))
}

/// `value` in every byte of `v` whose bit `bit` is set, else 0.
#[inline]
#[target_feature(enable = "neon")]
fn bit_to(v: uint8x16_t, bit: usize, value: u8) -> uint8x16_t {
    vandq_u8(vtstq_u8(v, vdupq_n_u8(1 << bit)), vdupq_n_u8(value))
}

/// Q2_K: scale/min nibbles per 16 in bytes 0..16, 2-bit values in 16..80 (element 128h + 32j + l is bits 2j.. of
/// byte 16 + 32h + l), d and dmin at 80.
#[target_feature(enable = "neon")]
fn unpack_q2k(blk: &[u8; 84], kb: &mut KBlock) {
    for (g, &sc) in blk[..16].iter().enumerate() {
        kb.scale[g] = (sc & 0x0F) as i32;
        kb.min[g] = (sc >> 4) as i32;
    }
    kb.d = f16_at(blk, 80);
    kb.dmin = f16_at(blk, 82);
    for h in 0..2 {
        let q = [load16(blk, 16 + 32 * h), load16(blk, 16 + 32 * h + 16)];
        for j in 0..4 {
            for (half, &v) in q.iter().enumerate() {
                kb.store(8 * h + 2 * j + half, crumb(v, 2 * j));
            }
        }
    }
}

/// Q3_K: hmask in bytes 0..32 (bit 4h + j of byte l is the third bit of element 128h + 32j + l), low 2 bits in
/// 32..96 (laid out as Q2_K's), sixteen 6-bit scales in 96..108, d at 108; value (q − 4) with the third bit set
/// meaning "no −4".
#[target_feature(enable = "neon")]
fn unpack_q3k(blk: &[u8; 110], kb: &mut KBlock) {
    for g in 0..16 {
        kb.scale[g] = q3k_scale(&blk[96..108], g);
    }
    kb.min = [0; 16];
    kb.d = f16_at(blk, 108);
    kb.dmin = 0.0;
    let hm = [load16(blk, 0), load16(blk, 16)];
    let four = vdupq_n_u8(4);
    for h in 0..2 {
        let q = [load16(blk, 32 + 32 * h), load16(blk, 32 + 32 * h + 16)];
        for j in 0..4 {
            for half in 0..2 {
                let u = vorrq_u8(crumb(q[half], 2 * j), bit_to(hm[half], 4 * h + j, 4));
                kb.store(8 * h + 2 * j + half, vsubq_u8(u, four));
            }
        }
    }
}

/// The Q4_K/Q5_K header: d, dmin, and the 6-bit scales and mins of the 8 sub-blocks of 32 (each used for two
/// groups of 16).
#[inline]
fn k4_header<const B: usize>(blk: &[u8; B], kb: &mut KBlock) {
    kb.d = f16_at(blk, 0);
    kb.dmin = f16_at(blk, 2);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &blk[4..16]);
        kb.scale[2 * j..2 * j + 2].fill(sc as i32);
        kb.min[2 * j..2 * j + 2].fill(m as i32);
    }
}

/// Q4_K: nibbles in bytes 16..144; the 32 bytes of chunk c hold elements 64c..64c+32 (low nibbles) and
/// 64c+32..64c+64 (high nibbles).
#[target_feature(enable = "neon")]
fn unpack_q4k(blk: &[u8; 144], kb: &mut KBlock) {
    k4_header(blk, kb);
    let mask = vdupq_n_u8(0x0F);
    for c in 0..4 {
        for half in 0..2 {
            let v = load16(blk, 16 + 32 * c + 16 * half);
            kb.store(4 * c + half, vandq_u8(v, mask));
            kb.store(4 * c + 2 + half, vshrq_n_u8::<4>(v));
        }
    }
}

/// Q5_K: as Q4_K with the nibbles at 48..176 and the fifth bit of element e in bit e / 32 of byte 16 + e % 32.
#[target_feature(enable = "neon")]
fn unpack_q5k(blk: &[u8; 176], kb: &mut KBlock) {
    k4_header(blk, kb);
    let mask = vdupq_n_u8(0x0F);
    let qh = [load16(blk, 16), load16(blk, 32)];
    for c in 0..4 {
        for (half, &h) in qh.iter().enumerate() {
            let v = load16(blk, 48 + 32 * c + 16 * half);
            let lo = vorrq_u8(vandq_u8(v, mask), bit_to(h, 2 * c, 0x10));
            let hi = vorrq_u8(vshrq_n_u8::<4>(v), bit_to(h, 2 * c + 1, 0x10));
            kb.store(4 * c + half, lo);
            kb.store(4 * c + 2 + half, hi);
        }
    }
}

/// Q6_K: see `scalar::q6k_at` for the layout; values q − 32 with the 6-bit q, i8 scales per 16 at 192, d at 208.
#[target_feature(enable = "neon")]
fn unpack_q6k(blk: &[u8; 210], kb: &mut KBlock) {
    for g in 0..16 {
        kb.scale[g] = blk[192 + g] as i8 as i32;
    }
    kb.min = [0; 16];
    kb.d = f16_at(blk, 208);
    kb.dmin = 0.0;
    let mask = vdupq_n_u8(0x0F);
    let thirty_two = vdupq_n_u8(32);
    for h in 0..2 {
        for half in 0..2 {
            let ql0 = load16(blk, 64 * h + 16 * half);
            let ql1 = load16(blk, 64 * h + 32 + 16 * half);
            let qh = load16(blk, 128 + 32 * h + 16 * half);
            let top = |k: usize| vshlq_n_u8::<4>(crumb(qh, 2 * k));
            let q = [
                vorrq_u8(vandq_u8(ql0, mask), top(0)),
                vorrq_u8(vandq_u8(ql1, mask), top(1)),
                vorrq_u8(vshrq_n_u8::<4>(ql0), top(2)),
                vorrq_u8(vshrq_n_u8::<4>(ql1), top(3)),
            ];
            for (k, v) in q.into_iter().enumerate() {
                kb.store(8 * h + 2 * k + half, vsubq_u8(v, thirty_two));
            }
        }
    }
}
