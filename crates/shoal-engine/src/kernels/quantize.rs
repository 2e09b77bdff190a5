//! Simple weight quantizers: f32 rows into GGML block encodings. Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 follow ggml's
//! reference quantizers (`quantize_row_*_ref`), BF16 ggml's round-to-nearest-even; the K-quants use a plain
//! min/max (resp. absmax) per sub-block, not ggml's error-minimizing search, so they are for tests, benches and
//! load-time re-quantization, not for making models.

use super::{QK, QK_K, WeightType};

fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Appends the blocks of one row (`row.len()` a multiple of the type's block) to `out`.
pub fn quantize_row(ty: WeightType, row: &[f32], out: &mut Vec<u8>) {
    match ty {
        WeightType::F32 => row.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        WeightType::F16 => row.iter().for_each(|&v| out.extend_from_slice(&f16_bytes(v))),
        WeightType::BF16 => row
            .iter()
            .for_each(|&v| out.extend_from_slice(&bf16_bits(v).to_le_bytes())),
        WeightType::Q5_0 => row.chunks_exact(QK).for_each(|b| q5_0_block(b, out)),
        WeightType::Q5_1 => row.chunks_exact(QK).for_each(|b| q5_1_block(b, out)),
        WeightType::Q2K => row.chunks_exact(QK_K).for_each(|b| q2k_block(b, out)),
        WeightType::Q3K => row.chunks_exact(QK_K).for_each(|b| q3k_block(b, out)),
        WeightType::Q5K => row.chunks_exact(QK_K).for_each(|b| q5k_block(b, out)),
        WeightType::Q4_0 => row.chunks_exact(QK).for_each(|b| q4_0_block(b, out)),
        WeightType::Q4_1 => row.chunks_exact(QK).for_each(|b| q4_1_block(b, out)),
        WeightType::Q8_0 => row.chunks_exact(QK).for_each(|b| q8_0_block(b, out)),
        WeightType::Q4K => row.chunks_exact(QK_K).for_each(|b| q4k_block(b, out)),
        WeightType::Q6K => row.chunks_exact(QK_K).for_each(|b| q6k_block(b, out)),
    }
}

/// f32 → bf16 rounding to nearest even, NaN kept quiet (as ggml's `ggml_compute_fp32_to_bf16`).
fn bf16_bits(v: f32) -> u16 {
    let u = v.to_bits();
    if v.is_nan() {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7FFF + ((u >> 16) & 1))) >> 16) as u16
}

/// The 5-bit values `q` of a block of 32 as a u32 of fifth bits and 16 bytes of nibbles.
fn pack_q5(q: &[u8; QK], out: &mut Vec<u8>) {
    let qh = q
        .iter()
        .enumerate()
        .fold(0u32, |h, (j, &v)| h | (((v >> 4) as u32 & 1) << j));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)));
}

fn q5_0_block(x: &[f32], out: &mut Vec<u8>) {
    // The value of largest magnitude maps to -16, as in ggml.
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    let q: [u8; QK] = std::array::from_fn(|j| ((x[j] * id + 16.5) as u8).min(31));
    pack_q5(&q, out);
}

fn q5_1_block(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(min));
    let q: [u8; QK] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as u8).min(31));
    pack_q5(&q, out);
}

/// Per sub-block of `sub` values: value = scale·q − min with q in `0..=levels`, min ≥ 0. Returns the sub-blocks'
/// (scale, min) as f32.
fn min_max_scales(x: &[f32], sub: usize, levels: f32) -> (Vec<f32>, Vec<f32>) {
    x.chunks_exact(sub)
        .map(|sb| {
            let lo = sb.iter().copied().fold(0.0f32, f32::min);
            let hi = sb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((hi - lo) / levels, -lo)
        })
        .unzip()
}

/// `v / step` rounded into `0..=max` (0 when the step is 0).
fn level(v: f32, step: f32, max: f32) -> u8 {
    if step > 0.0 {
        (v / step).round().clamp(0.0, max) as u8
    } else {
        0
    }
}

fn q2k_block(x: &[f32], out: &mut Vec<u8>) {
    // Per group of 16: value = d·sc·q − dmin·m with q in 0..4, 4-bit sc and m.
    let (scale, min) = min_max_scales(x, 16, 3.0);
    let d = f16_round(scale.iter().copied().fold(0.0, f32::max) / 15.0);
    let dmin = f16_round(min.iter().copied().fold(0.0, f32::max) / 15.0);
    let sc: Vec<u8> = scale.iter().map(|&s| level(s, d, 15.0)).collect();
    let mn: Vec<u8> = min.iter().map(|&m| level(m, dmin, 15.0)).collect();
    out.extend(sc.iter().zip(&mn).map(|(&s, &m)| s | (m << 4)));
    let q: Vec<u8> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| level(v + dmin * mn[i / 16] as f32, d * sc[i / 16] as f32, 3.0))
        .collect();
    let mut qs = [0u8; 64];
    for (i, &v) in q.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        qs[32 * h + r % 32] |= v << (2 * (r / 32));
    }
    out.extend_from_slice(&qs);
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(dmin));
}

fn q3k_block(x: &[f32], out: &mut Vec<u8>) {
    // Per group of 16: value = d·(sc − 32)·q with q in −4..4; the scales used here are 0..32 (stored + 32).
    let gscale: Vec<f32> = x
        .chunks_exact(16)
        .map(|g| g.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 4.0)
        .collect();
    let d = f16_round(gscale.iter().copied().fold(0.0, f32::max) / 31.0);
    let sc: Vec<u8> = gscale.iter().map(|&g| level(g, d, 31.0) + 32).collect();
    let mut hmask = [0u8; 32];
    let mut qs = [0u8; 64];
    for (i, &v) in x.iter().enumerate() {
        let step = d * (sc[i / 16] as f32 - 32.0);
        let q = if step > 0.0 {
            (v / step).round().clamp(-4.0, 3.0) as i32 + 4
        } else {
            4
        } as u8;
        let (h, r) = (i / 128, i % 128);
        let (j, l) = (r / 32, r % 32);
        qs[32 * h + l] |= (q & 3) << (2 * j);
        hmask[l] |= (q >> 2) << (4 * h + j);
    }
    let mut packed = [0u8; 12];
    for (g, &s) in sc.iter().enumerate() {
        packed[g % 8] |= (s & 0x0F) << (4 * (g / 8));
        packed[8 + g % 4] |= (s >> 4) << (2 * (g / 4));
    }
    out.extend_from_slice(&hmask);
    out.extend_from_slice(&qs);
    out.extend_from_slice(&packed);
    out.extend_from_slice(&f16_bytes(d));
}

/// Packs eight 6-bit scales and mins the way Q4_K and Q5_K store them (see `scalar::scale_min_k4`).
fn pack_scale_min_k4(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
    }
    packed
}

fn q5k_block(x: &[f32], out: &mut Vec<u8>) {
    // Per sub-block of 32: value = scale·q − min with q in 0..32; scales and mins in 6 bits of d, dmin.
    let (scale, min) = min_max_scales(x, 32, 31.0);
    let d = f16_round(scale.iter().copied().fold(0.0, f32::max) / 63.0);
    let dmin = f16_round(min.iter().copied().fold(0.0, f32::max) / 63.0);
    let sc: [u8; 8] = std::array::from_fn(|j| level(scale[j], d, 63.0));
    let mn: [u8; 8] = std::array::from_fn(|j| level(min[j], dmin, 63.0));
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(dmin));
    out.extend_from_slice(&pack_scale_min_k4(&sc, &mn));
    let mut qh = [0u8; 32];
    let mut qs = [0u8; 128];
    for (i, &v) in x.iter().enumerate() {
        let j = i / 32;
        let q = level(v + dmin * mn[j] as f32, d * sc[j] as f32, 31.0);
        qh[i % 32] |= (q >> 4) << j;
        qs[32 * (i / 64) + i % 32] |= (q & 0x0F) << (4 * ((i % 64) / 32));
    }
    out.extend_from_slice(&qh);
    out.extend_from_slice(&qs);
}

fn q4_0_block(x: &[f32], out: &mut Vec<u8>) {
    // The value of largest magnitude maps to -8, as in ggml.
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    for j in 0..16 {
        let q0 = ((x[j] * id + 8.5) as u8).min(15);
        let q1 = ((x[j + 16] * id + 8.5) as u8).min(15);
        out.push(q0 | (q1 << 4));
    }
}

fn q4_1_block(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(min));
    for j in 0..16 {
        let q0 = (((x[j] - min) * id + 0.5) as u8).min(15);
        let q1 = (((x[j + 16] - min) * id + 0.5) as u8).min(15);
        out.push(q0 | (q1 << 4));
    }
}

fn q8_0_block(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16_bytes(d));
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

fn q4k_block(x: &[f32], out: &mut Vec<u8>) {
    // Per sub-block of 32: value = scale·q - min with q in 0..16, min ≥ 0; scales and mins in 6 bits of d, dmin.
    let mut scale = [0.0f32; 8];
    let mut min = [0.0f32; 8];
    for (j, sb) in x.chunks_exact(32).enumerate() {
        let lo = sb.iter().copied().fold(0.0f32, f32::min);
        let hi = sb.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scale[j] = (hi - lo) / 15.0;
        min[j] = -lo;
    }
    let d = f16_round(scale.iter().copied().fold(0.0, f32::max) / 63.0);
    let dmin = f16_round(min.iter().copied().fold(0.0, f32::max) / 63.0);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        sc[j] = if d > 0.0 {
            (scale[j] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        mn[j] = if dmin > 0.0 {
            (min[j] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(dmin));
    out.extend_from_slice(&pack_scale_min_k4(&sc, &mn));
    let mut q = [0u8; QK_K];
    for (i, (qv, &v)) in q.iter_mut().zip(x).enumerate() {
        let j = i / 32;
        let step = d * sc[j] as f32;
        *qv = if step > 0.0 {
            ((v + dmin * mn[j] as f32) / step).round().clamp(0.0, 15.0) as u8
        } else {
            0
        };
    }
    for c in 0..4 {
        for l in 0..32 {
            out.push(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
        }
    }
}

fn q6k_block(x: &[f32], out: &mut Vec<u8>) {
    // Per group of 16: value = d·sc·(q - 32) with q in 0..64 and sc an i8.
    let mut gscale = [0.0f32; 16];
    for (g, gs) in x.chunks_exact(16).zip(gscale.iter_mut()) {
        *gs = g.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 31.0;
    }
    let d = f16_round(gscale.iter().copied().fold(0.0, f32::max) / 127.0);
    let mut sc = [0i8; 16];
    for (s, &g) in sc.iter_mut().zip(&gscale) {
        *s = if d > 0.0 {
            (g / d).round().clamp(-127.0, 127.0) as i8
        } else {
            0
        };
    }
    let mut q = [0u8; QK_K];
    for (i, (qv, &v)) in q.iter_mut().zip(x).enumerate() {
        let step = d * sc[i / 16] as f32;
        let s = if step != 0.0 {
            (v / step).round().clamp(-32.0, 31.0)
        } else {
            0.0
        };
        *qv = (s as i32 + 32) as u8;
    }
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (i, &qv) in q.iter().enumerate() {
        let (h, r) = (i / 128, i % 128);
        let (k, l) = (r / 32, r % 32);
        let lo = qv & 0x0F;
        match k {
            0 => ql[64 * h + l] |= lo,
            1 => ql[64 * h + 32 + l] |= lo,
            2 => ql[64 * h + l] |= lo << 4,
            _ => ql[64 * h + 32 + l] |= lo << 4,
        }
        qh[32 * h + l] |= (qv >> 4) << (2 * k);
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&f16_bytes(d));
}
