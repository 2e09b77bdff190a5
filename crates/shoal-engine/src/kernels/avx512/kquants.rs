//! AVX-512 kernels for the K-quants Q4_K, Q5_K and Q6_K (256-weight super-blocks against Q8_K activations), bit for
//! bit what the AVX2 kernels compute; the 32-weight block types are in the parent module, whose helpers (loads,
//! `finish`) and soundness argument these share.

use std::arch::x86_64::*;

use super::super::{Acts, BlockQ8K, QMatrix};
use super::*;

/// One K-quant weight type's kernel: `P` pairs of weight rows (one row per 256-bit half) against `N` activation rows,
/// `P · N` registers. Activation blocks are read straight from the [`BlockQ8K`]s: unlike Q8 blocks they need no
/// per-block preparation worth a table (their sums of 16 are stored).
pub(super) trait KKernel {
    type Row<'a>: Copy;
    fn row(m: &QMatrix, r: usize) -> Self::Row<'_>;
    /// Returns `[pair j][activation k] = [lo[j] · a[k], hi[j] · a[k]]`.
    /// # Safety
    /// The CPU must support the features of [`drive`].
    unsafe fn tile<const P: usize, const N: usize>(
        lo: [Self::Row<'_>; P],
        hi: [Self::Row<'_>; P],
        a: [&[BlockQ8K]; N],
    ) -> [[[f32; 2]; N]; P];
}

/// Walks weight rows `[r0, r1)` × all activation rows for a K-quant: one activation row (decode), 4 weight rows
/// (2 registers) at a time; more, 2 weight rows against 4 activation rows (4 registers), so each unpacked weight
/// super-block is used 4 times while in registers (as the AVX2 walk does). An odd last weight row pairs with itself.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn drive_k<K: KKernel>(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let n = acts.n;
    let len = r1 - r0;
    let xs: Vec<&[BlockQ8K]> = (0..n).map(|i| acts.q8k_row(i)).collect();
    let mut r = r0;
    if n == 1 {
        let x = xs[0];
        while r + 4 <= r1 {
            let w = [K::row(m, r), K::row(m, r + 1), K::row(m, r + 2), K::row(m, r + 3)];
            // SAFETY: `drive_k` runs only with the features `tile` needs (its own target features).
            let y = unsafe { K::tile::<2, 1>([w[0], w[2]], [w[1], w[3]], [x]) };
            out[r - r0..r - r0 + 4].copy_from_slice(&[y[0][0][0], y[0][0][1], y[1][0][0], y[1][0][1]]);
            r += 4;
        }
    }
    while r < r1 {
        let rb = (r + 1).min(r1 - 1);
        let (wa, wb) = (K::row(m, r), K::row(m, rb));
        let mut put = |i: usize, y: [f32; 2]| {
            out[i * len + r - r0] = y[0];
            out[i * len + rb - r0] = y[1];
        };
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: `drive_k` runs only with the features `tile` needs (its own target features).
            let y = unsafe { K::tile::<1, 4>([wa], [wb], [xs[i], xs[i + 1], xs[i + 2], xs[i + 3]]) };
            y[0].into_iter().enumerate().for_each(|(k, y)| put(i + k, y));
            i += 4;
        }
        match n - i {
            3 => {
                // SAFETY: as above.
                let y = unsafe { K::tile::<1, 3>([wa], [wb], [xs[i], xs[i + 1], xs[i + 2]]) };
                y[0].into_iter().enumerate().for_each(|(k, y)| put(i + k, y));
            }
            2 => {
                // SAFETY: as above.
                let y = unsafe { K::tile::<1, 2>([wa], [wb], [xs[i], xs[i + 1]]) };
                y[0].into_iter().enumerate().for_each(|(k, y)| put(i + k, y));
            }
            // SAFETY: as above.
            1 => put(i, unsafe { K::tile::<1, 1>([wa], [wb], [xs[i]]) }[0][0]),
            _ => {}
        }
        r += 2;
    }
}

/// The `j`-th 32 activations of a Q8_K block in both halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8k_chunk_both(b: &BlockQ8K, j: usize) -> __m512i {
    _mm512_broadcast_i64x4(load_i8x32(&b.qs.as_chunks::<32>().0[j]))
}

/// A Q8_K block's 16 sums of 16 in both halves.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q8k_bsums_both(b: &BlockQ8K) -> __m512i {
    // SAFETY: reads exactly the 32 bytes of `bsums`.
    _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(b.bsums.as_ptr().cast()) })
}

/// `[P][N]` accumulators through [`finish`] (nothing extra: AVX2 adds 0.0 too).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn finish_k<const P: usize, const N: usize>(acc: [[__m512; N]; P]) -> [[[f32; 2]; N]; P] {
    acc.map(|a| finish(a, [_mm_setzero_ps(); N]))
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K or Q5_K block (ggml's `get_scale_min_k4`), byte `j` for
/// sub-block `j`, as AVX2's `q4k_scales` unpacks them.
#[inline]
fn k4_scales_mins<const B: usize>(blk: &[u8; B]) -> (u64, u64) {
    const { assert!(B >= 16) };
    let w0 = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
    let w1 = u32::from_le_bytes([blk[8], blk[9], blk[10], blk[11]]);
    let w2 = u32::from_le_bytes([blk[12], blk[13], blk[14], blk[15]]);
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mn_lo = w1 & 0x3f3f_3f3f;
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    (
        ((sc_hi as u64) << 32) | sc_lo as u64,
        ((mn_hi as u64) << 32) | mn_lo as u64,
    )
}

/// The header of two Q4_K/Q5_K blocks (`b0` for the low half, `b1` the high): the scales as i16 words 0–7 (`b0`)
/// and 8–15 (`b1`) for [`k4_scale`], the mins each repeated twice (one per sum of 16 activations, AVX2's
/// `mins16`) per half, and (d, dmin) of `b0` in f32 lanes 0–1, of `b1` in 2–3.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_headers<const B: usize>(b0: &[u8; B], b1: &[u8; B]) -> (__m512i, __m512i, __m128) {
    let ((s0, m0), (s1, m1)) = (k4_scales_mins(b0), k4_scales_mins(b1));
    let scales = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_set_epi64x(s1 as i64, s0 as i64)));
    let mn = _mm_set_epi64x(m1 as i64, m0 as i64);
    let mins = _mm512_cvtepu8_epi16(_mm256_set_m128i(_mm_unpackhi_epi8(mn, mn), _mm_unpacklo_epi8(mn, mn)));
    (scales, mins, headers(b0, b1, true))
}

/// Sub-block `j`'s scale over the low half's 16 i16 lanes (from `b0`), and over the high half's (from `b1`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_scale(scales: __m512i, j: usize) -> __m512i {
    let idx = _mm512_mask_blend_epi16(
        0xFFFF_0000,
        _mm512_set1_epi16(j as i16),
        _mm512_set1_epi16(j as i16 + 8),
    );
    _mm512_permutexvar_epi16(idx, scales)
}

/// Adds a Q4_K/Q5_K super-block to each accumulator, as AVX2 does per 8 lanes: with `sumi` the exact integer
/// Σ_j sc_j Σ q·a and `mp` Σ_j m_j Σ a, acc = fma(d·d_a, sumi, acc), then acc = −(dmin·d_a)·mp + acc (fused).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn k4_accumulate(acc: __m512, dm: __m128, mins: __m512i, a: &BlockQ8K, sumi: __m512i) -> __m512 {
    let mp = _mm512_madd_epi16(q8k_bsums_both(a), mins);
    // (d·d_a, dmin·d_a) per half: the same f32 products AVX2 broadcasts.
    let f = _mm_mul_ps(dm, _mm_set1_ps(a.d));
    let acc = _mm512_fmadd_ps(halves(f), _mm512_cvtepi32_ps(sumi), acc);
    _mm512_fnmadd_ps(halves(_mm_movehdup_ps(f)), _mm512_cvtepi32_ps(mp), acc)
}

/// Q4_K, as AVX2 computes it: Σ_blocks d_a · (d · Σ_j sc_j Σ q·a − dmin · Σ_j m_j Σ a), integer inside a block.
/// AVX2's `madd(maddubs(q, a), sc)` + add becomes `maddubs` + `vpdpwssd`, the same exact i32 lanes.
pub(super) struct Q4K;

impl KKernel for Q4K {
    type Row<'a> = &'a [[u8; 144]];

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; 144]] {
        row_blocks::<144>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const P: usize, const N: usize>(
        lo: [&[[u8; 144]]; P],
        hi: [&[[u8; 144]]; P],
        a: [&[BlockQ8K]; N],
    ) -> [[[f32; 2]; N]; P] {
        let nb = lo[0].len();
        let (lo, hi, a) = (lo.map(|w| &w[..nb]), hi.map(|w| &w[..nb]), a.map(|a| &a[..nb]));
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [[_mm512_setzero_ps(); N]; P];
        for b in 0..nb {
            for j in 0..P {
                let (b0, b1) = (&lo[j][b], &hi[j][b]);
                let (scales, mins, dm) = k4_headers(b0, b1);
                let mut sumi = [_mm512_setzero_si512(); N];
                for c in 0..4 {
                    let qv = pair_256(load_32(b0, 16 + 32 * c), load_32(b1, 16 + 32 * c));
                    let ql = _mm512_and_si512(qv, mask);
                    let qh = _mm512_and_si512(_mm512_srli_epi16::<4>(qv), mask);
                    let (s1, s2) = (k4_scale(scales, 2 * c), k4_scale(scales, 2 * c + 1));
                    for k in 0..N {
                        // q ≤ 15, |a| ≤ 127: maddubs does not saturate; the i32 sums are exact.
                        let p1 = _mm512_maddubs_epi16(ql, q8k_chunk_both(&a[k][b], 2 * c));
                        let p2 = _mm512_maddubs_epi16(qh, q8k_chunk_both(&a[k][b], 2 * c + 1));
                        sumi[k] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[k], p1, s1), p2, s2);
                    }
                }
                for k in 0..N {
                    acc[j][k] = k4_accumulate(acc[j][k], dm, mins, &a[k][b], sumi[k]);
                }
            }
        }
        finish_k(acc)
    }
}

/// Q5_K: as Q4_K with a fifth bit per value from `qh`.
pub(super) struct Q5K;

impl KKernel for Q5K {
    type Row<'a> = &'a [[u8; 176]];

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; 176]] {
        row_blocks::<176>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const P: usize, const N: usize>(
        lo: [&[[u8; 176]]; P],
        hi: [&[[u8; 176]]; P],
        a: [&[BlockQ8K]; N],
    ) -> [[[f32; 2]; N]; P] {
        let nb = lo[0].len();
        let (lo, hi, a) = (lo.map(|w| &w[..nb]), hi.map(|w| &w[..nb]), a.map(|a| &a[..nb]));
        let mask = _mm512_set1_epi8(0x0F);
        let fifth = _mm512_set1_epi8(0x10);
        let mut acc = [[_mm512_setzero_ps(); N]; P];
        for b in 0..nb {
            for j in 0..P {
                let (b0, b1) = (&lo[j][b], &hi[j][b]);
                let (scales, mins, dm) = k4_headers(b0, b1);
                let qhv = pair_256(load_32(b0, 16), load_32(b1, 16));
                let mut sumi = [_mm512_setzero_si512(); N];
                for c in 0..4 {
                    let qv = pair_256(load_32(b0, 48 + 32 * c), load_32(b1, 48 + 32 * c));
                    // Values 0..32 (0x10 added to the nibble where the bit is set, AVX2's or): pairs of u8·i8
                    // products stay within i16 (2·31·127).
                    let with_bit = |v: __m512i, i: usize| {
                        _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(qhv, _mm512_set1_epi8(1 << i)), v, fifth)
                    };
                    let ql = with_bit(_mm512_and_si512(qv, mask), 2 * c);
                    let qh = with_bit(_mm512_and_si512(_mm512_srli_epi16::<4>(qv), mask), 2 * c + 1);
                    let (s1, s2) = (k4_scale(scales, 2 * c), k4_scale(scales, 2 * c + 1));
                    for k in 0..N {
                        let p1 = _mm512_maddubs_epi16(ql, q8k_chunk_both(&a[k][b], 2 * c));
                        let p2 = _mm512_maddubs_epi16(qh, q8k_chunk_both(&a[k][b], 2 * c + 1));
                        sumi[k] = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(sumi[k], p1, s1), p2, s2);
                    }
                }
                for k in 0..N {
                    acc[j][k] = k4_accumulate(acc[j][k], dm, mins, &a[k][b], sumi[k]);
                }
            }
        }
        finish_k(acc)
    }
}

/// Q6_K, as AVX2 computes it: Σ_blocks d·d_a · Σ_groups sc_g (Σ q·a − 32 Σ a), with the 6-bit q unsigned.
pub(super) struct Q6K;

/// The four 32-value quarters of half `h` (128 values) of two Q6_K blocks (`b0` in the low 256-bit half, `b1` in
/// the high) as unsigned 6-bit bytes: AVX2's `q6k_half` on both halves at once.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_half_pair(b0: &[u8; 210], b1: &[u8; 210], h: usize) -> [__m512i; 4] {
    let m4 = _mm512_set1_epi8(0x0F);
    let m2 = _mm512_set1_epi8(0x03);
    let ql0 = pair_256(load_32(b0, 64 * h), load_32(b1, 64 * h));
    let ql1 = pair_256(load_32(b0, 64 * h + 32), load_32(b1, 64 * h + 32));
    let qh = pair_256(load_32(b0, 128 + 32 * h), load_32(b1, 128 + 32 * h));
    // Shifting 16-bit lanes moves bits across bytes; the masks drop them again.
    let hi = |shift: __m512i| _mm512_slli_epi16::<4>(_mm512_and_si512(shift, m2));
    [
        _mm512_or_si512(_mm512_and_si512(ql0, m4), hi(qh)),
        _mm512_or_si512(_mm512_and_si512(ql1, m4), hi(_mm512_srli_epi16::<2>(qh))),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql0), m4),
            hi(_mm512_srli_epi16::<4>(qh)),
        ),
        _mm512_or_si512(
            _mm512_and_si512(_mm512_srli_epi16::<4>(ql1), m4),
            hi(_mm512_srli_epi16::<6>(qh)),
        ),
    ]
}

impl KKernel for Q6K {
    type Row<'a> = &'a [[u8; 210]];

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; 210]] {
        row_blocks::<210>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const P: usize, const N: usize>(
        lo: [&[[u8; 210]]; P],
        hi: [&[[u8; 210]]; P],
        a: [&[BlockQ8K]; N],
    ) -> [[[f32; 2]; N]; P] {
        let nb = lo[0].len();
        let (lo, hi, a) = (lo.map(|w| &w[..nb]), hi.map(|w| &w[..nb]), a.map(|a| &a[..nb]));
        // i16 word indices of a group scale g (low 128-bit lane of a quarter, from `b0`) and g + 1 (high lane), then
        // the same for `b1` (its 16 scales are words 16–31).
        let (g1, g16, g17) = (0x0001_0001_0001_0001, 0x0010_0010_0010_0010, 0x0011_0011_0011_0011);
        let group_idx = _mm512_set_epi64(g17, g17, g16, g16, g1, g1, 0, 0);
        let mut acc = [[_mm512_setzero_ps(); N]; P];
        for b in 0..nb {
            for j in 0..P {
                let (b0, b1) = (&lo[j][b], &hi[j][b]);
                // d of `b0` in f32 lane 0, of `b1` in lane 2 (f16 words 0 and 2).
                let d = |b: &[u8; 210]| u16::from_le_bytes([b[208], b[209]]) as i64;
                let dw = _mm_cvtph_ps(_mm_cvtsi64_si128(d(b0) | d(b1) << 32));
                // The 16 i8 group scales of each block as i16: words 0–15 from `b0`, 16–31 from `b1`.
                let sc16 = _mm512_cvtepi8_epi16(_mm256_set_m128i(load_16(b1, 192), load_16(b0, 192)));
                let mut sumi = [_mm512_setzero_si512(); N];
                for h in 0..2 {
                    for (q, qj) in q6k_half_pair(b0, b1, h).into_iter().enumerate() {
                        let g = (8 * h + 2 * q) as i16;
                        let scv = _mm512_permutexvar_epi16(_mm512_add_epi16(group_idx, _mm512_set1_epi16(g)), sc16);
                        for k in 0..N {
                            // q ≤ 63, |a| ≤ 127: maddubs does not saturate; the i32 sums are exact.
                            let p = _mm512_maddubs_epi16(qj, q8k_chunk_both(&a[k][b], 4 * h + q));
                            sumi[k] = _mm512_dpwssd_epi32(sumi[k], p, scv);
                        }
                    }
                }
                for k in 0..N {
                    let corr = _mm512_madd_epi16(q8k_bsums_both(&a[k][b]), sc16);
                    let si = _mm512_sub_epi32(sumi[k], _mm512_slli_epi32::<5>(corr));
                    // d·d_a per half: the same f32 product AVX2 broadcasts.
                    let f = _mm_mul_ps(dw, _mm_set1_ps(a[k][b].d));
                    acc[j][k] = _mm512_fmadd_ps(halves(f), _mm512_cvtepi32_ps(si), acc[j][k]);
                }
            }
        }
        finish_k(acc)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::super::{ActFormat, Isa, WeightType, scalar};
    use super::super::tests::values;
    use super::*;

    /// A K-quant matrix of random bytes (every scale, min and bit pattern, Q6_K's negative scales too), with finite
    /// f16 d (and dmin) of either sign.
    pub(in super::super) fn random_k_matrix(ty: WeightType, rows: usize, cols: usize, seed: u64) -> QMatrix {
        let mut data: Vec<u8> = values(seed, rows * ty.row_bytes(cols), 1.0)
            .iter()
            .map(|v| ((v + 0.5) * 256.0) as u8)
            .collect();
        let headers = values(seed + 1, data.len(), 0.02);
        let bb = ty.block_bytes();
        for (blk, h) in data.chunks_exact_mut(bb).zip(headers.chunks_exact(2)) {
            let at = if ty == WeightType::Q6K { bb - 2 } else { 0 };
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(h[0]).to_le_bytes());
            if ty != WeightType::Q6K {
                blk[2..4].copy_from_slice(&half::f16::from_f32(h[1]).to_le_bytes());
            }
        }
        QMatrix::new(ty, rows, cols, data).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a CPU with AVX-512 VNNI, the K-quants (Q4_K, Q5_K, Q6_K): every product is bit-identical to the AVX2
    /// kernel's (so equal to the scalar reference up to f32 summation order), for 1, odd and even row counts, 1 to
    /// 8 super-blocks, 1, 2, 3, 9 and 19 activation rows, every sub-range of the rows, and each activation row
    /// alone; for quantized and for random-byte weights.
    #[test]
    fn avx512_k_quants_equal_avx2_bit_for_bit_and_are_batch_invariant() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to check");
            return;
        };
        for ty in [WeightType::Q4K, WeightType::Q5K, WeightType::Q6K] {
            for (cols, rows) in [(256, 1), (256, 2), (512, 13), (1536, 8), (2048, 7), (256, 5)] {
                let seed = cols as u64 * 7 + rows as u64;
                let quantized = QMatrix::quantize(ty, rows, cols, &values(seed, rows * cols, 0.2))
                    .unwrap_or_else(|e| panic!("{e}"));
                for m in [quantized, random_k_matrix(ty, rows, cols, seed)] {
                    let n = 19;
                    let mut x = values(cols as u64, n * cols, 4.0);
                    x[..256].fill(0.0); // an all-zero activation block (d = 0)
                    let acts = Acts::quantize(ActFormat::Q8K, &x, n, cols, Isa::Scalar);
                    let mut got = vec![f32::NAN; n * rows];
                    t.rows(&m, &acts, 0, rows, &mut got);
                    let mut avx2 = vec![f32::NAN; n * rows];
                    t.avx2().rows(&m, &acts, 0, rows, &mut avx2);
                    for (j, (g, a)) in got.iter().zip(&avx2).enumerate() {
                        let (i, r) = (j / rows, j % rows);
                        assert_eq!(g.to_bits(), a.to_bits(), "{ty} {rows}×{cols}: y[{i}][{r}] against AVX2");
                    }
                    let mut want = vec![0.0; n * rows];
                    scalar::rows(&m, &acts, 0, rows, &mut want);
                    let mut w = vec![0.0; cols];
                    for r in 0..rows {
                        m.dequantize_row(r, &mut w);
                        for i in 0..n {
                            let xr = &x[i * cols..(i + 1) * cols];
                            let mag: f32 = w.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                            let (g, e) = (got[i * rows + r], want[i * rows + r]);
                            assert!(
                                (g - e).abs() <= 1e-4 * mag + 1e-12,
                                "{ty} {rows}×{cols}: y[{i}][{r}] = {g}, reference {e}"
                            );
                        }
                    }
                    // The first nb activation rows as a batch, over every sub-range of the weight rows (the decode
                    // tile, odd remainders, work item boundaries anywhere).
                    for nb in [1, 2, 3, 9, 19] {
                        let part = Acts::quantize(ActFormat::Q8K, &x[..nb * cols], nb, cols, Isa::Scalar);
                        for r0 in 0..rows {
                            for r1 in r0 + 1..=rows {
                                let len = r1 - r0;
                                let mut y = vec![f32::NAN; nb * len];
                                t.rows(&m, &part, r0, r1, &mut y);
                                for (j, v) in y.iter().enumerate() {
                                    let (i, r) = (j / len, r0 + j % len);
                                    assert_eq!(
                                        v.to_bits(),
                                        got[i * rows + r].to_bits(),
                                        "{ty} {rows}×{cols} n={nb} rows {r0}..{r1}: y[{i}][{r}]"
                                    );
                                }
                            }
                        }
                    }
                    // Each activation row alone gives the same bits as in the batch.
                    for i in 0..n {
                        let one = Acts::quantize(ActFormat::Q8K, &x[i * cols..(i + 1) * cols], 1, cols, Isa::Scalar);
                        let mut y = vec![f32::NAN; rows];
                        t.rows(&m, &one, 0, rows, &mut y);
                        for r in 0..rows {
                            let b = got[i * rows + r].to_bits();
                            assert_eq!(y[r].to_bits(), b, "{ty} {rows}×{cols}: row {r} of x[{i}] alone");
                        }
                    }
                }
            }
        }
    }
}
