//! Portable scalar reference: dequantization, activation quantization and dot products for every type. Written for
//! clarity, it is the oracle the SIMD paths are tested against, and the fallback where no SIMD path exists.

use super::{Acts, BlockQ8, BlockQ8K, QK, QK_K, QMatrix, WeightType};

#[inline]
pub(crate) fn f16_at(b: &[u8], off: usize) -> f32 {
    half::f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

#[inline]
pub(crate) fn bf16_at(b: &[u8], off: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([b[off], b[off + 1]]) as u32) << 16)
}

/// The unsigned 5-bit value (0..32) of element `j` (0..32) of a Q5_0/Q5_1 block whose u32 of fifth bits starts at
/// byte `qh`: the nibble is the low (j < 16) or high (j ≥ 16) half of byte `qh + 4 + j % 16`, the fifth bit is bit
/// j of the little-endian u32.
#[inline]
pub(crate) fn q5_at(blk: &[u8], qh: usize, j: usize) -> i32 {
    let bits = u32::from_le_bytes([blk[qh], blk[qh + 1], blk[qh + 2], blk[qh + 3]]);
    let byte = blk[qh + 4 + j % 16];
    let nib = if j < 16 { byte & 0x0F } else { byte >> 4 };
    nib as i32 | (((bits >> j) & 1) as i32) << 4
}

/// Element `e` (0..256) of a Q2_K block: its 2-bit value (0..4) and its scale byte (low nibble scale, high nibble
/// min). Each half of 128 elements uses 32 bytes of `qs`; element `128h + 32j + l` (j in 0..4, l in 0..32) is bits
/// `2j..2j+2` of `qs[32h + l]`. Scales are per 16 elements.
#[inline]
pub(crate) fn q2k_at(blk: &[u8], e: usize) -> (i32, u8) {
    let (h, r) = (e / 128, e % 128);
    let (j, l) = (r / 32, r % 32);
    let q = (blk[16 + 32 * h + l] >> (2 * j)) & 3;
    (q as i32, blk[e / 16])
}

/// The signed 6-bit scale (−32..32) of group `g` (0..16) of a Q3_K block's 12 packed bytes: the low 4 bits are the
/// low (g < 8) or high (g ≥ 8) nibble of byte `g % 8`; the top 2 bits are bits `2·(g / 4)..` of byte `8 + g % 4`.
#[inline]
pub(crate) fn q3k_scale(sc: &[u8], g: usize) -> i32 {
    let lo = if g < 8 { sc[g] & 0x0F } else { sc[g - 8] >> 4 };
    let hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Element `e` (0..256) of a Q3_K block: its signed 3-bit value (−4..4) and its group scale. The low 2 bits are
/// laid out as Q2_K's (in `qs` at byte 32); the third bit of element `128h + 32j + l` is bit `4h + j` of
/// `hmask[l]`, and a clear bit means "minus 4".
#[inline]
pub(crate) fn q3k_at(blk: &[u8], e: usize) -> (i32, i32) {
    let (h, r) = (e / 128, e % 128);
    let (j, l) = (r / 32, r % 32);
    let lo = (blk[32 + 32 * h + l] >> (2 * j)) & 3;
    let hbit = (blk[l] >> (4 * h + j)) & 1;
    (lo as i32 + 4 * hbit as i32 - 4, q3k_scale(&blk[96..108], e / 16))
}

/// The unsigned 5-bit value (0..32) of element `e` (0..256) of a Q5_K block: its nibble is placed as in Q4_K
/// (byte `48 + 32·(e / 64) + e % 32`, low nibble for the first 32 of each 64), its fifth bit is bit `e / 32` of
/// `qh[e % 32]`.
#[inline]
pub(crate) fn q5k_at(blk: &[u8], e: usize) -> i32 {
    let byte = blk[48 + 32 * (e / 64) + e % 32];
    let nib = if e % 64 < 32 { byte & 0x0F } else { byte >> 4 };
    let hbit = (blk[16 + e % 32] >> (e / 32)) & 1;
    (nib | (hbit << 4)) as i32
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block's 12 packed bytes (ggml's get_scale_min_k4):
/// sub-blocks 0..4 keep their scale and min in the low 6 bits of bytes j and j+4; sub-blocks 4..8 keep their low
/// 4 bits in the nibbles of byte j+4 and their high 2 bits in the top bits of bytes j-4 (scale) and j (min).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Dequantizes one row of blocks.
pub(crate) fn dequantize_row(ty: WeightType, row: &[u8], out: &mut [f32]) {
    match ty {
        WeightType::F32 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        WeightType::F16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16_at(b, 0);
            }
        }
        WeightType::BF16 => {
            for (o, b) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16_at(b, 0);
            }
        }
        WeightType::Q5_0 => {
            for (blk, o) in row.chunks_exact(22).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(blk, 0);
                for (j, v) in o.iter_mut().enumerate() {
                    *v = (q5_at(blk, 2, j) - 16) as f32 * d;
                }
            }
        }
        WeightType::Q5_1 => {
            for (blk, o) in row.chunks_exact(24).zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for (j, v) in o.iter_mut().enumerate() {
                    *v = q5_at(blk, 4, j) as f32 * d + m;
                }
            }
        }
        WeightType::Q2K => {
            for (blk, o) in row.chunks_exact(84).zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
                for (e, v) in o.iter_mut().enumerate() {
                    let (q, sc) = q2k_at(blk, e);
                    *v = d * (sc & 0x0F) as f32 * q as f32 - dmin * (sc >> 4) as f32;
                }
            }
        }
        WeightType::Q3K => {
            for (blk, o) in row.chunks_exact(110).zip(out.chunks_exact_mut(QK_K)) {
                let d = f16_at(blk, 108);
                for (e, v) in o.iter_mut().enumerate() {
                    let (q, sc) = q3k_at(blk, e);
                    *v = d * sc as f32 * q as f32;
                }
            }
        }
        WeightType::Q5K => {
            for (blk, o) in row.chunks_exact(176).zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                for (e, v) in o.iter_mut().enumerate() {
                    let (sc, m) = scale_min_k4(e / 32, &blk[4..16]);
                    *v = d * sc as f32 * q5k_at(blk, e) as f32 - dmin * m as f32;
                }
            }
        }
        WeightType::Q4_0 => {
            for (blk, o) in row.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(blk, 0);
                for j in 0..16 {
                    let q = blk[2 + j];
                    o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        WeightType::Q4_1 => {
            for (blk, o) in row.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                for j in 0..16 {
                    let q = blk[4 + j];
                    o[j] = (q & 0x0F) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        WeightType::Q8_0 => {
            for (blk, o) in row.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
                let d = f16_at(blk, 0);
                for j in 0..QK {
                    o[j] = blk[2 + j] as i8 as f32 * d;
                }
            }
        }
        WeightType::Q4K => {
            for (blk, o) in row.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
                let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
                let scales = &blk[4..16];
                let qs = &blk[16..144];
                for c in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * c, scales);
                    let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        o[64 * c + l] = d1 * (q & 0x0F) as f32 - m1;
                        o[64 * c + 32 + l] = d2 * (q >> 4) as f32 - m2;
                    }
                }
            }
        }
        WeightType::Q6K => {
            for (blk, o) in row.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
                let d = f16_at(blk, 208);
                for (i, v) in o.iter_mut().enumerate() {
                    let (q, sc) = q6k_at(blk, i);
                    *v = d * sc as f32 * q as f32;
                }
            }
        }
    }
}

/// Element `i` (0..256) of a Q6_K block: its signed 6-bit value (q - 32) and its group scale.
///
/// Each half of 128 elements uses 64 bytes of `ql` and 32 of `qh`; within a half, element `32k + l` (k in 0..4,
/// l in 0..32) takes the low nibble of `ql[l]` (k=0), of `ql[32+l]` (k=1), the high nibble of `ql[l]` (k=2) or of
/// `ql[32+l]` (k=3), and bits `2k..2k+2` of `qh[l]` as its top two bits. Scales are per 16 elements.
#[inline]
pub(crate) fn q6k_at(blk: &[u8], i: usize) -> (i32, i8) {
    let (h, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let ql = &blk[64 * h..64 * h + 64];
    let qh = blk[128 + 32 * h + l];
    let lo = match k {
        0 => ql[l] & 0x0F,
        1 => ql[32 + l] & 0x0F,
        2 => ql[l] >> 4,
        _ => ql[32 + l] >> 4,
    };
    let hi = (qh >> (2 * k)) & 3;
    let q = (lo | (hi << 4)) as i32 - 32;
    (q, blk[192 + i / 16] as i8)
}

/// Quantizes one activation row into blocks of 32: `d = amax / 127`, `q = round_ties_even(x · 127 / amax)`,
/// `s = d · Σq`.
pub(crate) fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, blk) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in blk.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        blk.d = amax / 127.0;
        blk.s = blk.d * sum as f32;
    }
}

/// Quantizes one activation row into Q8_K blocks of 256 (one scale per block) with the sums of each 16 values.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, blk) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let id = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        for (q, v) in blk.qs.iter_mut().zip(xb) {
            *q = (v * id).round_ties_even() as i8;
        }
        for (bs, q16) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            *bs = q16.iter().map(|&q| q as i16).sum();
        }
        blk.d = amax / 127.0;
    }
}

pub(crate) fn dot_f32(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(4)
        .zip(x)
        .map(|(b, x)| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x)
        .sum()
}

pub(crate) fn dot_f16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(b, x)| f16_at(b, 0) * x).sum()
}

pub(crate) fn dot_bf16(w: &[u8], x: &[f32]) -> f32 {
    w.chunks_exact(2).zip(x).map(|(b, x)| bf16_at(b, 0) * x).sum()
}

pub(crate) fn dot_q5_0(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(22).zip(act) {
        let isum: i32 = (0..QK).map(|j| (q5_at(blk, 2, j) - 16) * ab.qs[j] as i32).sum();
        acc += f16_at(blk, 0) * ab.d * isum as f32;
    }
    acc
}

pub(crate) fn dot_q5_1(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(24).zip(act) {
        let isum: i32 = (0..QK).map(|j| q5_at(blk, 4, j) * ab.qs[j] as i32).sum();
        acc += f16_at(blk, 0) * ab.d * isum as f32 + f16_at(blk, 2) * ab.s;
    }
    acc
}

pub(crate) fn dot_q2k(w: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(84).zip(act) {
        let (mut isum, mut msum) = (0i32, 0i32);
        for g in 0..QK_K / 16 {
            let sc = blk[g];
            let gsum: i32 = (16 * g..16 * g + 16).map(|e| q2k_at(blk, e).0 * ab.qs[e] as i32).sum();
            isum += (sc & 0x0F) as i32 * gsum;
            msum += (sc >> 4) as i32 * ab.bsums[g] as i32;
        }
        acc += ab.d * (f16_at(blk, 80) * isum as f32 - f16_at(blk, 82) * msum as f32);
    }
    acc
}

pub(crate) fn dot_q3k(w: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(110).zip(act) {
        let mut isum = 0i32;
        for g in 0..QK_K / 16 {
            let gsum: i32 = (16 * g..16 * g + 16).map(|e| q3k_at(blk, e).0 * ab.qs[e] as i32).sum();
            isum += q3k_scale(&blk[96..108], g) * gsum;
        }
        acc += f16_at(blk, 108) * ab.d * isum as f32;
    }
    acc
}

pub(crate) fn dot_q5k(w: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(176).zip(act) {
        let (mut isum, mut msum) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &blk[4..16]);
            let s: i32 = (32 * j..32 * j + 32).map(|e| q5k_at(blk, e) * ab.qs[e] as i32).sum();
            isum += sc as i32 * s;
            msum += m as i32 * (ab.bsums[2 * j] as i32 + ab.bsums[2 * j + 1] as i32);
        }
        acc += ab.d * (f16_at(blk, 0) * isum as f32 - f16_at(blk, 2) * msum as f32);
    }
    acc
}

pub(crate) fn dot_q4_0(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(18).zip(act) {
        let (a, da) = (&ab.qs, ab.d);
        let mut isum = 0i32;
        for j in 0..16 {
            let q = blk[2 + j];
            isum += ((q & 0x0F) as i32 - 8) * a[j] as i32 + ((q >> 4) as i32 - 8) * a[j + 16] as i32;
        }
        acc += f16_at(blk, 0) * da * isum as f32;
    }
    acc
}

pub(crate) fn dot_q4_1(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(20).zip(act) {
        let (a, da, sa) = (&ab.qs, ab.d, ab.s);
        let mut isum = 0i32;
        for j in 0..16 {
            let q = blk[4 + j];
            isum += (q & 0x0F) as i32 * a[j] as i32 + (q >> 4) as i32 * a[j + 16] as i32;
        }
        acc += f16_at(blk, 0) * da * isum as f32 + f16_at(blk, 2) * sa;
    }
    acc
}

pub(crate) fn dot_q8_0(w: &[u8], act: &[BlockQ8]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(34).zip(act) {
        let (a, da) = (&ab.qs, ab.d);
        let isum: i32 = blk[2..34].iter().zip(a).map(|(&q, &a)| q as i8 as i32 * a as i32).sum();
        acc += f16_at(blk, 0) * da * isum as f32;
    }
    acc
}

pub(crate) fn dot_q4k(w: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(144).zip(act) {
        let (a, da, bs) = (&ab.qs, ab.d, &ab.bsums);
        let scales = &blk[4..16];
        let q = &blk[16..144];
        let (mut isum, mut msum) = (0i32, 0i32);
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
            let (mut s1, mut s2) = (0i32, 0i32);
            for l in 0..32 {
                s1 += (q[32 * c + l] & 0x0F) as i32 * a[64 * c + l] as i32;
                s2 += (q[32 * c + l] >> 4) as i32 * a[64 * c + 32 + l] as i32;
            }
            isum += sc1 as i32 * s1 + sc2 as i32 * s2;
            msum += m1 as i32 * (bs[4 * c] as i32 + bs[4 * c + 1] as i32);
            msum += m2 as i32 * (bs[4 * c + 2] as i32 + bs[4 * c + 3] as i32);
        }
        acc += da * (f16_at(blk, 0) * isum as f32 - f16_at(blk, 2) * msum as f32);
    }
    acc
}

pub(crate) fn dot_q6k(w: &[u8], act: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, ab) in w.chunks_exact(210).zip(act) {
        let (a, da) = (&ab.qs, ab.d);
        let mut isum = 0i32;
        for (g, a16) in a.chunks_exact(16).enumerate() {
            let mut gsum = 0i32;
            let mut scale = 0i8;
            for (j, &av) in a16.iter().enumerate() {
                let (q, sc) = q6k_at(blk, 16 * g + j);
                gsum += q * av as i32;
                scale = sc;
            }
            isum += scale as i32 * gsum;
        }
        acc += f16_at(blk, 208) * da * isum as f32;
    }
    acc
}

/// Weight row `w` · activation row `i`.
pub(crate) fn dot_row(ty: WeightType, w: &[u8], acts: &Acts, i: usize) -> f32 {
    match ty {
        WeightType::F32 => dot_f32(w, acts.x_row(i)),
        WeightType::F16 => dot_f16(w, acts.x_row(i)),
        WeightType::BF16 => dot_bf16(w, acts.x_row(i)),
        WeightType::Q4_0 => dot_q4_0(w, acts.q8_row(i)),
        WeightType::Q4_1 => dot_q4_1(w, acts.q8_row(i)),
        WeightType::Q5_0 => dot_q5_0(w, acts.q8_row(i)),
        WeightType::Q5_1 => dot_q5_1(w, acts.q8_row(i)),
        WeightType::Q8_0 => dot_q8_0(w, acts.q8_row(i)),
        WeightType::Q2K => dot_q2k(w, acts.q8k_row(i)),
        WeightType::Q3K => dot_q3k(w, acts.q8k_row(i)),
        WeightType::Q4K => dot_q4k(w, acts.q8k_row(i)),
        WeightType::Q5K => dot_q5k(w, acts.q8k_row(i)),
        WeightType::Q6K => dot_q6k(w, acts.q8k_row(i)),
    }
}

/// The scalar product of weight rows `[r0, r1)` with every activation row:
/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]`.
pub(crate) fn rows(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let len = r1 - r0;
    for r in r0..r1 {
        let w = m.row_data(r);
        for i in 0..acts.n {
            out[i * len + r - r0] = dot_row(m.ty, w, acts, i);
        }
    }
}
