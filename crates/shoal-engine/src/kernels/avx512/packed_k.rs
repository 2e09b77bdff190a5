//! The K-quant row-group kernel: Q4_K, Q5_K and Q6_K weight rows packed 16 to a group ([`PackedRows`], layout in
//! `kernels/packed_k.rs`) against Q8_K activation rows, one f32 lane per weight row.
//!
//! Bit for bit what the row kernels (`kquants.rs`, themselves AVX2's) compute. Per product they keep eight f32 lane
//! sums; lane `l` takes, from each super-block, the pieces `t ≡ l (mod 8)` (weights `4t..4t + 4`):
//! - Q4_K/Q5_K: the exact integer `sumi_l = Σ_{t ≡ l} sc_{t/8} · Σ_i q·a` (maddubs pairs, then `vpdpwssd` with the
//!   sub-block scale) and `mp_l = m_l · bsums[2l] + m_l · bsums[2l + 1]` (`madd` of the mins against the activations'
//!   sums of 16); then `acc = fma(d·d_a, sumi_l, acc)` and `acc = fnmadd(dmin·d_a, mp_l, acc)`.
//! - Q6_K: `sumi_l = Σ_{t ≡ l} sc_{t/4} · Σ_i q·a` with the 6-bit q unsigned, less `32 · (sc_{2l}·bsums[2l] +
//!   sc_{2l+1}·bsums[2l + 1])`; then `acc = fma(d·d_a, sumi_l, acc)`.
//!
//! and the result is AVX2's horizontal sum `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, plus 0.0. No float step mixes
//! lanes before that sum, so here register `l` holds lane `l` of 16 rows' products side by side: the same integer
//! values (the same `maddubs` pairs, so even saturation would agree), the same f32 products, fused multiply-adds and
//! final additions in the same order. What packing saves is the rest: each weight byte is unpacked once for 16 rows
//! and up to [`ACT_ROWS`] activation rows, the scales are decoded 16 rows at a time, and no shuffles pair rows into
//! register halves.
//!
//! Soundness: as the parent module's; every load goes through [`load_512`] or [`load_f16x16`], which assert the
//! range inside the slice.

use std::arch::x86_64::*;

use super::super::packed::GROUP_ROWS;
use super::super::packed::PackedRows;
use super::super::packed_k::{K4Offsets, Q6K_D, Q6K_SCALES, k4_offsets};
use super::super::{Acts, BlockQ8K, QK_K, QMatrix, WeightType};
use super::packed::{finish, load_512, load_f16x16, walk_groups};

/// Activation rows computed together against one group's unpacked super-block: each unpacked weight vector then
/// feeds this many `maddubs` + `vpdpwssd` pairs. 4 against 2 (`mod bench`, 2026-12-06, 1024×2048, n = 64): Q4_K
/// 1.44 against 1.70 ms, Q6_K 1.63 against 1.94 ms.
const ACT_ROWS: usize = 4;
const _: () = assert!(ACT_ROWS >= 1 && ACT_ROWS <= 4, "`rows` has tiles for 1 to 4");

/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)` from `m`'s packed rows `p` (the same
/// contract as [`super::packed::rows`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows(m: &QMatrix, p: &PackedRows, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
    let ty = m.ty();
    let nb = m.cols() / QK_K;
    let n = acts.n;
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let xs: Vec<&[BlockQ8K]> = (0..n).map(|i| acts.q8k_row(i)).collect();
    walk_groups::<ACT_ROWS>(p, r0, r1, n, out, |group, i, take| {
        let mut y = [[0.0f32; GROUP_ROWS]; ACT_ROWS];
        // SAFETY (all): `rows` runs only with the features the tiles need (its own target features).
        match take {
            1 => y[..1].copy_from_slice(&unsafe { tile::<1>(ty, group, nb, [xs[i]]) }),
            2 => y[..2].copy_from_slice(&unsafe { tile::<2>(ty, group, nb, [xs[i], xs[i + 1]]) }),
            3 => y[..3].copy_from_slice(&unsafe { tile::<3>(ty, group, nb, [xs[i], xs[i + 1], xs[i + 2]]) }),
            _ => y[..4].copy_from_slice(&unsafe { tile::<4>(ty, group, nb, [xs[i], xs[i + 1], xs[i + 2], xs[i + 3]]) }),
        }
        y
    });
}

/// One group against `A` activation rows, by type.
/// # Safety
/// The CPU must support the features of [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile<const A: usize>(ty: WeightType, group: &[u8], nb: usize, x: [&[BlockQ8K]; A]) -> [[f32; GROUP_ROWS]; A] {
    // SAFETY: the caller guarantees the features.
    unsafe {
        match ty {
            WeightType::Q6K => tile_q6k::<A>(group, nb, x),
            _ => tile_k4::<A>(k4_offsets(ty), group, nb, x),
        }
    }
}

/// The little-endian u64 of `b` at `off` (a Q5_K fifth-bit mask).
#[inline]
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(std::array::from_fn(|k| b[off + k]))
}

/// Activations `4t..4t + 4` of a block (piece `t`) in every i32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_piece(x: &BlockQ8K, t: usize) -> __m512i {
    let q = x.qs.as_chunks::<4>().0[t];
    _mm512_set1_epi32(i32::from_le_bytes(q.map(|v| v as u8)))
}

/// The activations' sums of 16 number `2l` and `2l + 1` as the two i16 words of every i32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn bsum_pair(x: &BlockQ8K, l: usize) -> __m512i {
    let [s0, s1] = x.bsums.as_chunks::<2>().0[l];
    _mm512_set1_epi32((s0 as u16 as u32 | (s1 as u16 as u32) << 16) as i32)
}

/// A `vpshufb` control that puts, in each i32 lane, byte `b[k]` of the same lane at byte `k` (0x80: zero).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn lane_bytes(b: [u8; 4]) -> __m512i {
    // vpshufb indexes within each 128-bit lane: lane ρ of four starts at byte 4ρ.
    let at = |rho: u8| i32::from_le_bytes(b.map(|v| if v & 0x80 != 0 { v } else { v + 4 * rho }));
    _mm512_broadcast_i32x4(_mm_setr_epi32(at(0), at(1), at(2), at(3)))
}

/// Q4_K and Q5_K (`at` saying which): one group of 16 rows against `A` activation rows.
/// # Safety
/// The CPU must support the features of [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_k4<const A: usize>(
    at: K4Offsets,
    group: &[u8],
    nb: usize,
    x: [&[BlockQ8K]; A],
) -> [[f32; GROUP_ROWS]; A] {
    let block = GROUP_ROWS * if at.high.is_some() { 176 } else { 144 };
    let low4 = _mm512_set1_epi8(0x0F);
    let fifth = _mm512_set1_epi8(0x10);
    // Byte j of each lane as both i16 words (zero-extended), for j = 0..4.
    let pick: [__m512i; 4] = std::array::from_fn(|j| lane_bytes([j as u8, 0x80, j as u8, 0x80]));
    let x = x.map(|x| &x[..nb]);
    let mut acc = [[_mm512_setzero_ps(); 8]; A];
    for b in 0..nb {
        let blk = &group[b * block..(b + 1) * block];
        let xb: [&BlockQ8K; A] = std::array::from_fn(|a| &x[a][b]);
        // The row kernels' `k4_scales_mins` on 16 rows' u32 words at once: lane r's byte j is row r's scale (min)
        // j of the low four, then of the high four.
        let w = [0, 1, 2].map(|k| load_512(blk, at.scales + 64 * k));
        let m3f = _mm512_set1_epi32(0x3f3f_3f3f);
        let m0f = _mm512_set1_epi32(0x0f0f_0f0f);
        let m03 = _mm512_set1_epi32(0x0303_0303);
        let top = |v: __m512i| _mm512_slli_epi32::<4>(_mm512_and_si512(_mm512_srli_epi32::<6>(v), m03));
        let sc_bytes = [
            _mm512_and_si512(w[0], m3f),
            _mm512_or_si512(_mm512_and_si512(w[2], m0f), top(w[0])),
        ];
        let mn_bytes = [
            _mm512_and_si512(w[1], m3f),
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32::<4>(w[2]), m0f), top(w[1])),
        ];
        let sc: [__m512i; 8] = std::array::from_fn(|j| _mm512_shuffle_epi8(sc_bytes[j / 4], pick[j % 4]));
        // (d·d_a, dmin·d_a) for 16 rows: the same f32 products the row kernels broadcast.
        let (d, dmin) = (load_f16x16(blk, at.d), load_f16x16(blk, at.dmin));
        let f = xb.map(|x| _mm512_mul_ps(d, _mm512_set1_ps(x.d)));
        let fm = xb.map(|x| _mm512_mul_ps(dmin, _mm512_set1_ps(x.d)));
        for l in 0..8 {
            // Two chains per activation row (even and odd sub-blocks), added at the end: integer, so exact.
            let mut s_lo = [_mm512_setzero_si512(); A];
            let mut s_hi = [_mm512_setzero_si512(); A];
            for c in 0..4 {
                let v = 8 * c + l;
                let q = load_512(blk, 64 * v);
                let mut lo = _mm512_and_si512(q, low4);
                let mut hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4);
                if let Some(h) = at.high {
                    lo = _mm512_mask_add_epi8(lo, u64_at(blk, h + 16 * v), lo, fifth);
                    hi = _mm512_mask_add_epi8(hi, u64_at(blk, h + 16 * v + 8), hi, fifth);
                }
                for a in 0..A {
                    // q ≤ 31, |a| ≤ 127: the pairs do not saturate; the i32 sums are exact.
                    let pl = _mm512_maddubs_epi16(lo, act_piece(xb[a], 16 * c + l));
                    let ph = _mm512_maddubs_epi16(hi, act_piece(xb[a], 16 * c + 8 + l));
                    s_lo[a] = _mm512_dpwssd_epi32(s_lo[a], pl, sc[2 * c]);
                    s_hi[a] = _mm512_dpwssd_epi32(s_hi[a], ph, sc[2 * c + 1]);
                }
            }
            let mins = _mm512_shuffle_epi8(mn_bytes[l / 4], pick[l % 4]);
            for a in 0..A {
                let sumi = _mm512_add_epi32(s_lo[a], s_hi[a]);
                let mp = _mm512_madd_epi16(mins, bsum_pair(xb[a], l));
                let t = _mm512_fmadd_ps(f[a], _mm512_cvtepi32_ps(sumi), acc[a][l]);
                acc[a][l] = _mm512_fnmadd_ps(fm[a], _mm512_cvtepi32_ps(mp), t);
            }
        }
    }
    // Plus 0.0, as the row kernels' final sum adds it too.
    std::array::from_fn(|a| finish(&acc[a], _mm512_setzero_ps()))
}

/// Q6_K: one group of 16 rows against `A` activation rows.
/// # Safety
/// The CPU must support the features of [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q6k<const A: usize>(group: &[u8], nb: usize, x: [&[BlockQ8K]; A]) -> [[f32; GROUP_ROWS]; A] {
    let block = GROUP_ROWS * 210;
    let m6 = _mm512_set1_epi8(0x3F);
    let m03 = _mm512_set1_epi8(0x03);
    let m0f = _mm512_set1_epi8(0x0F);
    // Byte j of each lane as both i16 words (sign-extended after the shift), and bytes j, j + 1 as words 0 and 1.
    let group_pick: [__m512i; 4] = std::array::from_fn(|j| lane_bytes([0x80, j as u8, 0x80, j as u8]));
    let pair_pick: [__m512i; 2] = std::array::from_fn(|k| lane_bytes([0x80, 2 * k as u8, 0x80, 2 * k as u8 + 1]));
    let x = x.map(|x| &x[..nb]);
    let mut acc = [[_mm512_setzero_ps(); 8]; A];
    for b in 0..nb {
        let blk = &group[b * block..(b + 1) * block];
        let xb: [&BlockQ8K; A] = std::array::from_fn(|a| &x[a][b]);
        let scales = [0, 1, 2, 3].map(|k| load_512(blk, Q6K_SCALES + 64 * k));
        // d·d_a for 16 rows: the same f32 product the row kernels broadcast.
        let d = load_f16x16(blk, Q6K_D);
        let f = xb.map(|x| _mm512_mul_ps(d, _mm512_set1_ps(x.d)));
        // Lanes 0–3, then 4–7: piece 4s + u goes to lane 4·(s mod 2) + u.
        for half in 0..2 {
            let mut sumi = [[_mm512_setzero_si512(); A]; 4];
            for s in (half..16).step_by(2) {
                let v = [0, 1, 2].map(|u| load_512(blk, 64 * (3 * s + u)));
                // Piece 4s + 3 from bits 6–7 of the three others: 16-bit shifts right keep each byte's bits 0–5 its
                // own; the selects and the mask drop what came from the next byte.
                let sel = |a: __m512i, b: __m512i, mask: __m512i| _mm512_ternarylogic_epi32::<0xE4>(a, b, mask);
                let v01 = sel(_mm512_srli_epi16::<6>(v[0]), _mm512_srli_epi16::<4>(v[1]), m03);
                let v3 = _mm512_and_si512(sel(v01, _mm512_srli_epi16::<2>(v[2]), m0f), m6);
                let q = [
                    _mm512_and_si512(v[0], m6),
                    _mm512_and_si512(v[1], m6),
                    _mm512_and_si512(v[2], m6),
                    v3,
                ];
                let scv = _mm512_srai_epi16::<8>(_mm512_shuffle_epi8(scales[s / 4], group_pick[s % 4]));
                for a in 0..A {
                    for (u, &qu) in q.iter().enumerate() {
                        // q ≤ 63, |a| ≤ 127: the pairs do not saturate; the i32 sums are exact.
                        let p = _mm512_maddubs_epi16(qu, act_piece(xb[a], 4 * s + u));
                        sumi[u][a] = _mm512_dpwssd_epi32(sumi[u][a], p, scv);
                    }
                }
            }
            for (u, su) in sumi.iter().enumerate() {
                let l = 4 * half + u;
                // Scales 2l and 2l + 1 (sign-extended) as words 0 and 1, against the sums of 16 of the same groups.
                let sc2 = _mm512_srai_epi16::<8>(_mm512_shuffle_epi8(scales[l / 2], pair_pick[l % 2]));
                for a in 0..A {
                    let corr = _mm512_madd_epi16(bsum_pair(xb[a], l), sc2);
                    let si = _mm512_sub_epi32(su[a], _mm512_slli_epi32::<5>(corr));
                    acc[a][l] = _mm512_fmadd_ps(f[a], _mm512_cvtepi32_ps(si), acc[a][l]);
                }
            }
        }
    }
    // Plus 0.0, as the row kernels' final sum adds it too.
    std::array::from_fn(|a| finish(&acc[a], _mm512_setzero_ps()))
}

#[cfg(test)]
mod tests {
    use super::super::super::{ActFormat, Isa};
    use super::super::Avx512;
    use super::super::kquants::tests::random_k_matrix;
    use super::super::tests::{assert_packed_equals_rows, values};
    use super::*;

    /// On a CPU with AVX-512 VNNI: for Q4_K, Q5_K and Q6_K, quantized and random-byte weights, every shape (rows not
    /// a multiple of 16, one super-block and several), activation count (1 to 8) and split of the rows, the
    /// row-group kernel gives exactly the bits of the row kernels.
    #[test]
    fn packed_k_rows_equal_the_row_kernels_bit_for_bit() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to check");
            return;
        };
        for ty in [WeightType::Q4K, WeightType::Q5K, WeightType::Q6K] {
            for (cols, rows) in [(256, 5), (512, 37), (1536, 16), (768, 33), (256, 1)] {
                let seed = cols as u64 * 3 + rows as u64;
                let quantized = QMatrix::quantize(ty, rows, cols, &values(seed, rows * cols, 0.2))
                    .unwrap_or_else(|e| panic!("{e}"));
                for m in [quantized, random_k_matrix(ty, rows, cols, seed)] {
                    for n in 1..=8 {
                        let mut x = values(cols as u64 + n as u64, n * cols, 4.0);
                        x[..256].fill(0.0); // an all-zero activation block (d = 0)
                        let acts = Acts::quantize(ActFormat::Q8K, &x, n, cols, Isa::Scalar);
                        assert_packed_equals_rows(t, &m, &acts);
                    }
                }
            }
        }
    }
}
