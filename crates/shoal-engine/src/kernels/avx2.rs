//! AVX2 + FMA + F16C kernels, chosen at run time (no `target-cpu` flag needed).
//!
//! Soundness: every function here that uses the instructions carries `#[target_feature(enable = "avx2,fma,f16c")]`
//! and is only reachable through an [`Avx2`] token, which exists only after run-time detection found all three
//! features. Memory accesses go through fixed-size arrays (`as_chunks`) or through pointer arithmetic whose bound
//! is stated next to it, so no load or store can leave its slice.

use std::arch::x86_64::*;
use std::array::from_fn;

use super::{Acts, BlockQ8, BlockQ8K, QK, QK_K, QMatrix, WeightType};

/// Proof that this CPU has AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    pub(crate) fn detect() -> Option<Self> {
        let ok =
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
        ok.then_some(Avx2(()))
    }

    /// See [`super::scalar::quantize_q8`]; produces identical output.
    pub(crate) fn quantize_q8(self, x: &[f32], out: &mut [BlockQ8]) {
        assert_eq!(x.len(), out.len() * QK);
        // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
        unsafe { quantize_q8(x, out) }
    }

    /// See [`super::scalar::quantize_q8k`]; produces identical output.
    pub(crate) fn quantize_q8k(self, x: &[f32], out: &mut [BlockQ8K]) {
        assert_eq!(x.len(), out.len() * QK_K);
        // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
        unsafe { quantize_q8k(x, out) }
    }

    /// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)`.
    pub(crate) fn rows(self, m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
        assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
        // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
        unsafe { rows(m, acts, r0, r1, out) }
    }
}

/// One weight type's tile: how to view a weight row and an activation row, and the product of `R` weight rows with
/// `N` activation rows held in registers.
trait Kernel {
    type Row<'a>: Copy;
    type Act<'a>: Copy;
    fn row(m: &QMatrix, r: usize) -> Self::Row<'_>;
    fn act<'a>(acts: &'a Acts, i: usize) -> Self::Act<'a>;
    /// # Safety
    /// The CPU must support avx2, fma and f16c.
    unsafe fn tile<const R: usize, const N: usize>(w: [Self::Row<'_>; R], a: [Self::Act<'_>; N]) -> [[f32; N]; R];
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    match m.ty() {
        WeightType::F32 => drive::<F32>(m, acts, r0, r1, out),
        WeightType::F16 => drive::<F16>(m, acts, r0, r1, out),
        WeightType::BF16 => drive::<BF16>(m, acts, r0, r1, out),
        WeightType::Q4_0 => drive::<Q4<18>>(m, acts, r0, r1, out),
        WeightType::Q4_1 => drive::<Q4<20>>(m, acts, r0, r1, out),
        WeightType::Q5_0 => drive::<Q5<22>>(m, acts, r0, r1, out),
        WeightType::Q5_1 => drive::<Q5<24>>(m, acts, r0, r1, out),
        WeightType::Q8_0 => drive::<Q8_0>(m, acts, r0, r1, out),
        WeightType::Q2K => drive::<Q2K>(m, acts, r0, r1, out),
        WeightType::Q3K => drive::<Q3K>(m, acts, r0, r1, out),
        WeightType::Q4K => drive::<Q4K>(m, acts, r0, r1, out),
        WeightType::Q5K => drive::<Q5K>(m, acts, r0, r1, out),
        WeightType::Q6K => drive::<Q6K>(m, acts, r0, r1, out),
    }
}

/// Weight rows per tile for a single activation row.
const DECODE_ROWS: usize = 4;
/// Up to this many activation rows take the decode tile one row at a time; more rows take 4 activation rows per
/// weight row, which the kernel bench (`kernels::avx512::bench`) measured faster from 2 rows on (297 against 375 µs
/// for 8 rows of a Q4_1 1536×576 product).
const ROW_AT_A_TIME_MAX: usize = 1;

/// Walks weight rows `[r0, r1)` × all activation rows in register tiles: 4 weight rows against one activation row at
/// a time for up to [`ROW_AT_A_TIME_MAX`] rows (decode steps), else 4 activation rows per weight row (prefill), so
/// each unpacked weight block is used 4 times while it is in registers.
#[target_feature(enable = "avx2,fma,f16c")]
fn drive<K: Kernel>(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let n = acts.n;
    let len = r1 - r0;
    let views: Vec<K::Act<'_>> = (0..n).map(|i| K::act(acts, i)).collect();
    if n <= ROW_AT_A_TIME_MAX {
        // The decode tile, one activation row at a time: the 4 weight rows stay in L1 while every row passes.
        let mut r = r0;
        while r + DECODE_ROWS <= r1 {
            let w: [K::Row<'_>; DECODE_ROWS] = std::array::from_fn(|j| K::row(m, r + j));
            for (i, &a) in views.iter().enumerate() {
                // SAFETY: `drive` runs only with avx2, fma and f16c (its own target features).
                let y = unsafe { K::tile::<DECODE_ROWS, 1>(w, [a]) };
                for (j, y) in y.iter().enumerate() {
                    out[i * len + r - r0 + j] = y[0];
                }
            }
            r += DECODE_ROWS;
        }
        for r in r..r1 {
            for (i, &a) in views.iter().enumerate() {
                // SAFETY: as above.
                out[i * len + r - r0] = unsafe { K::tile::<1, 1>([K::row(m, r)], [a]) }[0][0];
            }
        }
        return;
    }
    for r in r0..r1 {
        let w = [K::row(m, r)];
        let c = r - r0;
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: as above.
            let y = unsafe { K::tile::<1, 4>(w, pick(&views, i)) };
            put(out, len, i, c, y[0]);
            i += 4;
        }
        // SAFETY (all three): as above.
        match n - i {
            3 => put(out, len, i, c, unsafe { K::tile::<1, 3>(w, pick(&views, i)) }[0]),
            2 => put(out, len, i, c, unsafe { K::tile::<1, 2>(w, pick(&views, i)) }[0]),
            1 => put(out, len, i, c, unsafe { K::tile::<1, 1>(w, pick(&views, i)) }[0]),
            _ => {}
        }
    }
}

#[inline]
fn pick<T: Copy, const N: usize>(v: &[T], i: usize) -> [T; N] {
    let mut it = v[i..i + N].iter().copied();
    [(); N].map(|_| it.next().unwrap_or_else(|| unreachable!()))
}

#[inline]
fn put<const N: usize>(out: &mut [f32], len: usize, i0: usize, col: usize, v: [f32; N]) {
    for (k, v) in v.into_iter().enumerate() {
        out[(i0 + k) * len + col] = v;
    }
}

/// The blocks of a weight row.
#[inline]
fn row_blocks<const BB: usize>(m: &QMatrix, r: usize) -> &[[u8; BB]] {
    m.row_data(r).as_chunks::<BB>().0
}

/// The `j`-th 32 values of a Q8_K block.
#[inline]
fn q8k_chunk(b: &BlockQ8K, j: usize) -> &[i8; 32] {
    &b.qs.as_chunks::<32>().0[j]
}

// ---------------------------------------------------------------------------------------------------------------
// Small helpers

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hmax(v: __m256) -> f32 {
    let x = _mm_max_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum_i32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_extracti128_si256::<1>(v), _mm256_castsi256_si128(v));
    let x = _mm_add_epi32(x, _mm_unpackhi_epi64(x, x));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b01>(x));
    _mm_cvtsi128_si32(x)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Two consecutive f16 values as f32: (first, second).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x2_to_f32(bits: [u8; 4]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(bits)));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8x32(a: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `a`.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i16x16(a: &[i16; 16]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `a`.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// 32 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x32<const B: usize>(b: &[u8; B], off: usize) -> __m256i {
    assert!(off + 32 <= B);
    // SAFETY: off + 32 <= B (asserted; the callers pass constants, so the check folds away).
    unsafe { _mm256_loadu_si256(b.as_ptr().add(off).cast()) }
}

/// 16 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16<const B: usize>(b: &[u8; B], off: usize) -> __m128i {
    assert!(off + 16 <= B);
    // SAFETY: off + 16 <= B (asserted; the callers pass constants, so the check folds away).
    unsafe { _mm_loadu_si128(b.as_ptr().add(off).cast()) }
}

/// Σ q·a over pairs of 32 bytes (q unsigned, a signed, |q·a + q'·a'| < 2^15), as 8 f32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8_i8(q: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(q, a), _mm256_set1_epi16(1))
}

// ---------------------------------------------------------------------------------------------------------------
// Activation quantization (bit-identical to the scalar reference)

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8(x: &[f32], out: &mut [BlockQ8]) {
    for (xb, blk) in x.as_chunks::<32>().0.iter().zip(out.iter_mut()) {
        let (amax, sum) = quantize_32(xb, &mut blk.qs, None);
        blk.d = amax / 127.0;
        blk.s = blk.d * sum as f32;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_q8k(x: &[f32], out: &mut [BlockQ8K]) {
    for (xb, blk) in x.as_chunks::<256>().0.iter().zip(out.iter_mut()) {
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for c in xb.as_chunks::<8>().0 {
            // SAFETY: reads exactly the 8 f32 of `c`.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
        }
        let amax = hmax(m);
        let xs = xb.as_chunks::<32>().0;
        let qs = blk.qs.as_chunks_mut::<32>().0;
        for (j, (xc, qc)) in xs.iter().zip(qs.iter_mut()).enumerate() {
            let mut halves = [0i32; 2];
            quantize_32(xc, qc, Some((amax, &mut halves)));
            blk.bsums[2 * j] = halves[0] as i16;
            blk.bsums[2 * j + 1] = halves[1] as i16;
        }
        blk.d = amax / 127.0;
    }
}

/// Quantizes 32 values with `127 / amax` (amax of these 32 unless given), storing them in `q`; returns
/// (amax, Σq) and, if asked, the sums of each 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_32(x: &[f32; 32], q: &mut [i8; 32], given: Option<(f32, &mut [i32; 2])>) -> (f32, i32) {
    let c = x.as_chunks::<8>().0;
    // SAFETY: each load reads exactly the 8 f32 of one chunk of `x`.
    let v: [__m256; 4] = from_fn(|k| unsafe { _mm256_loadu_ps(c[k].as_ptr()) });
    let amax = match &given {
        Some((amax, _)) => *amax,
        None => {
            let sign = _mm256_set1_ps(-0.0);
            let m01 = _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1]));
            let m23 = _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]));
            hmax(_mm256_max_ps(m01, m23))
        }
    };
    let id = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
    let mut iv = [_mm256_setzero_si256(); 4];
    for k in 0..4 {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v[k], id));
        iv[k] = _mm256_cvtps_epi32(r);
    }
    let lo = _mm256_add_epi32(iv[0], iv[1]);
    let hi = _mm256_add_epi32(iv[2], iv[3]);
    let sum = match given {
        Some((_, halves)) => {
            halves[0] = hsum_i32(lo);
            halves[1] = hsum_i32(hi);
            halves[0] + halves[1]
        }
        None => hsum_i32(_mm256_add_epi32(lo, hi)),
    };
    let p = _mm256_packs_epi16(_mm256_packs_epi32(iv[0], iv[1]), _mm256_packs_epi32(iv[2], iv[3]));
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: writes exactly the 32 bytes of `q`.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
    (amax, sum)
}

// ---------------------------------------------------------------------------------------------------------------
// Tiles: R weight rows × N activation rows

/// Horizontal sums of the accumulators, plus a scalar part.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn finish<const R: usize, const N: usize>(acc: [[__m256; N]; R], extra: [[f32; N]; R]) -> [[f32; N]; R] {
    let mut y = [[0.0; N]; R];
    for r in 0..R {
        for k in 0..N {
            y[r][k] = hsum(acc[r][k]) + extra[r][k];
        }
    }
    y
}

struct F32;

impl Kernel for F32 {
    type Row<'a> = &'a [u8];
    type Act<'a> = &'a [f32];

    fn row(m: &QMatrix, r: usize) -> &[u8] {
        m.row_data(r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [f32] {
        acts.x_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[f32]; N]) -> [[f32; N]; R] {
        let cols = w[0].len() / 4;
        let x = x.map(|x| &x[..cols]);
        let full = cols / 8;
        let wc = w.map(|w| &w.as_chunks::<32>().0[..full]);
        let xc = x.map(|x| &x.as_chunks::<8>().0[..full]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for j in 0..full {
            let mut xv = [_mm256_setzero_ps(); N];
            for k in 0..N {
                // SAFETY: reads exactly the 8 f32 of one chunk.
                xv[k] = unsafe { _mm256_loadu_ps(xc[k][j].as_ptr()) };
            }
            for r in 0..R {
                // SAFETY: reads exactly the 32 bytes (8 unaligned f32) of one chunk.
                let wv = unsafe { _mm256_loadu_ps(wc[r][j].as_ptr().cast()) };
                for k in 0..N {
                    acc[r][k] = _mm256_fmadd_ps(wv, xv[k], acc[r][k]);
                }
            }
        }
        let mut tail = [[0.0; N]; R];
        for r in 0..R {
            for k in 0..N {
                for (c, b) in (full * 8..cols).zip(w[r][full * 32..].chunks_exact(4)) {
                    tail[r][k] += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * x[k][c];
                }
            }
        }
        finish(acc, tail)
    }
}

struct F16;

impl Kernel for F16 {
    type Row<'a> = &'a [u8];
    type Act<'a> = &'a [f32];

    fn row(m: &QMatrix, r: usize) -> &[u8] {
        m.row_data(r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [f32] {
        acts.x_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[f32]; N]) -> [[f32; N]; R] {
        let cols = w[0].len() / 2;
        let x = x.map(|x| &x[..cols]);
        let full = cols / 8;
        let wc = w.map(|w| &w.as_chunks::<16>().0[..full]);
        let xc = x.map(|x| &x.as_chunks::<8>().0[..full]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for j in 0..full {
            let mut xv = [_mm256_setzero_ps(); N];
            for k in 0..N {
                // SAFETY: reads exactly the 8 f32 of one chunk.
                xv[k] = unsafe { _mm256_loadu_ps(xc[k][j].as_ptr()) };
            }
            for r in 0..R {
                let wv = _mm256_cvtph_ps(load_u8x16(&wc[r][j], 0));
                for k in 0..N {
                    acc[r][k] = _mm256_fmadd_ps(wv, xv[k], acc[r][k]);
                }
            }
        }
        let mut tail = [[0.0; N]; R];
        for r in 0..R {
            for k in 0..N {
                for (c, b) in (full * 8..cols).zip(w[r][full * 16..].chunks_exact(2)) {
                    tail[r][k] += f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * x[k][c];
                }
            }
        }
        finish(acc, tail)
    }
}

struct BF16;

impl Kernel for BF16 {
    type Row<'a> = &'a [u8];
    type Act<'a> = &'a [f32];

    fn row(m: &QMatrix, r: usize) -> &[u8] {
        m.row_data(r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [f32] {
        acts.x_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[u8]; R], x: [&[f32]; N]) -> [[f32; N]; R] {
        let cols = w[0].len() / 2;
        let x = x.map(|x| &x[..cols]);
        let full = cols / 8;
        let wc = w.map(|w| &w.as_chunks::<16>().0[..full]);
        let xc = x.map(|x| &x.as_chunks::<8>().0[..full]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for j in 0..full {
            let mut xv = [_mm256_setzero_ps(); N];
            for k in 0..N {
                // SAFETY: reads exactly the 8 f32 of one chunk.
                xv[k] = unsafe { _mm256_loadu_ps(xc[k][j].as_ptr()) };
            }
            for r in 0..R {
                // A bf16 is the top half of an f32: widen to 32 bits and shift into place.
                let wi = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(load_u8x16(&wc[r][j], 0)));
                let wv = _mm256_castsi256_ps(wi);
                for k in 0..N {
                    acc[r][k] = _mm256_fmadd_ps(wv, xv[k], acc[r][k]);
                }
            }
        }
        let mut tail = [[0.0; N]; R];
        for r in 0..R {
            for k in 0..N {
                for (c, b) in (full * 8..cols).zip(w[r][full * 16..].chunks_exact(2)) {
                    tail[r][k] += super::scalar::bf16_at(b, 0) * x[k][c];
                }
            }
        }
        finish(acc, tail)
    }
}

/// Q4_0 (`BB` = 18) and Q4_1 (`BB` = 20). Both are computed as Σ d_w·d_a·Σ(q·a) + m_w·s_a with unsigned nibbles
/// q, where Q4_0's offset of -8 becomes m_w = -8·d_w.
struct Q4<const BB: usize>;

/// A Q4 block's 32 nibbles as bytes 0..16 (low nibbles are elements 0..16, high nibbles 16..32), its scale
/// broadcast, and its offset m.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_unpack<const BB: usize>(blk: &[u8; BB]) -> (__m256i, __m256, f32) {
    let (dw, mw) = if BB == 20 {
        f16x2_to_f32([blk[0], blk[1], blk[2], blk[3]])
    } else {
        let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        (dw, -8.0 * dw)
    };
    let nib = load_u8x16(blk, BB - 16);
    let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(nib), nib), _mm256_set1_epi8(0x0F));
    (q, _mm256_set1_ps(dw), mw)
}

impl<const BB: usize> Kernel for Q4<BB> {
    type Row<'a> = &'a [[u8; BB]];
    type Act<'a> = &'a [BlockQ8];

    fn row(m: &QMatrix, r: usize) -> &[[u8; BB]] {
        row_blocks::<BB>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8] {
        acts.q8_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; BB]]; R], a: [&[BlockQ8]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut msum = [[0.0f32; N]; R];
        for b in 0..nb {
            for r in 0..R {
                let (q, dw, mw) = q4_unpack(&w[r][b]);
                for k in 0..N {
                    let ab = &a[k][b];
                    let p = _mm256_cvtepi32_ps(dot_u8_i8(q, load_i8x32(&ab.qs)));
                    acc[r][k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(ab.d)), p, acc[r][k]);
                    msum[r][k] += mw * ab.s;
                }
            }
        }
        finish(acc, msum)
    }
}

/// Q5_0 (`BB` = 22) and Q5_1 (`BB` = 24), computed as Q4 is: Σ d_w·d_a·Σ(q·a) + m_w·s_a with unsigned 5-bit q,
/// where Q5_0's offset of -16 becomes m_w = -16·d_w.
struct Q5<const BB: usize>;

/// 0xFF in byte j of the result where bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bytes_from_bits(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of the u32 (the shuffle indexes within each 128-bit lane, and every lane holds all
    // four bytes), then keeps only its own bit.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit)
}

/// A Q5 block's 32 values as bytes 0..32 (in element order), its scale broadcast, and its offset m.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_unpack<const BB: usize>(blk: &[u8; BB]) -> (__m256i, __m256, f32) {
    const { assert!(BB == 22 || BB == 24) };
    let (dw, mw) = if BB == 24 {
        f16x2_to_f32([blk[0], blk[1], blk[2], blk[3]])
    } else {
        let dw = f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
        (dw, -16.0 * dw)
    };
    let qh = u32::from_le_bytes([blk[BB - 20], blk[BB - 19], blk[BB - 18], blk[BB - 17]]);
    let nib = load_u8x16(blk, BB - 16);
    let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(nib), nib), _mm256_set1_epi8(0x0F));
    let q = _mm256_or_si256(q, _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10)));
    (q, _mm256_set1_ps(dw), mw)
}

impl<const BB: usize> Kernel for Q5<BB> {
    type Row<'a> = &'a [[u8; BB]];
    type Act<'a> = &'a [BlockQ8];

    fn row(m: &QMatrix, r: usize) -> &[[u8; BB]] {
        row_blocks::<BB>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8] {
        acts.q8_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; BB]]; R], a: [&[BlockQ8]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        let mut msum = [[0.0f32; N]; R];
        for b in 0..nb {
            for r in 0..R {
                let (q, dw, mw) = q5_unpack(&w[r][b]);
                for k in 0..N {
                    let ab = &a[k][b];
                    // q ≤ 31, |a| ≤ 127: each pair of products fits in i16.
                    let p = _mm256_cvtepi32_ps(dot_u8_i8(q, load_i8x32(&ab.qs)));
                    acc[r][k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(ab.d)), p, acc[r][k]);
                    msum[r][k] += mw * ab.s;
                }
            }
        }
        finish(acc, msum)
    }
}

#[allow(non_camel_case_types)]
struct Q8_0;

impl Kernel for Q8_0 {
    type Row<'a> = &'a [[u8; 34]];
    type Act<'a> = &'a [BlockQ8];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 34]] {
        row_blocks::<34>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8] {
        acts.q8_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 34]]; R], a: [&[BlockQ8]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let wq = load_u8x32(blk, 2);
                // maddubs wants an unsigned operand: |w| times a with w's sign (|w| ≤ 128, |a| ≤ 127, so each
                // pair of products fits in i16).
                let aw = _mm256_sign_epi8(wq, wq);
                let dw = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                for k in 0..N {
                    let ab = &a[k][b];
                    let sa = _mm256_sign_epi8(load_i8x32(&ab.qs), wq);
                    let p = _mm256_cvtepi32_ps(dot_u8_i8(aw, sa));
                    acc[r][k] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(ab.d)), p, acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}

/// Q4_K: Σ_blocks d_a · (d · Σ_j sc_j Σ q·a − dmin · Σ_j m_j Σ a), integer inside a block.
struct Q4K;

/// A Q4_K (or Q5_K: same header) block's d, dmin, 8 six-bit scales, and its 8 mins each repeated twice (one per
/// sum of 16 activations).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_scales<const B: usize>(blk: &[u8; B]) -> (f32, f32, [u8; 8], __m256i) {
    const { assert!(B >= 16) };
    let (dw, dmin) = f16x2_to_f32([blk[0], blk[1], blk[2], blk[3]]);
    // get_scale_min_k4, four at a time from the three 32-bit words.
    let w0 = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
    let w1 = u32::from_le_bytes([blk[8], blk[9], blk[10], blk[11]]);
    let w2 = u32::from_le_bytes([blk[12], blk[13], blk[14], blk[15]]);
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mn_lo = w1 & 0x3f3f_3f3f;
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let sc = (((sc_hi as u64) << 32) | sc_lo as u64).to_le_bytes();
    let mn = _mm_cvtsi64_si128((((mn_hi as u64) << 32) | mn_lo as u64) as i64);
    (dw, dmin, sc, _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn)))
}

impl Kernel for Q4K {
    type Row<'a> = &'a [[u8; 144]];
    type Act<'a> = &'a [BlockQ8K];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 144]] {
        row_blocks::<144>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8K] {
        acts.q8k_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 144]]; R], a: [&[BlockQ8K]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let (dw, dmin, sc, mins16) = q4k_scales(blk);
                let mut sumi = [_mm256_setzero_si256(); N];
                for c in 0..4 {
                    let qv = load_u8x32(blk, 16 + 32 * c);
                    let lo = _mm256_and_si256(qv, mask);
                    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(qv), mask);
                    let s1 = _mm256_set1_epi16(sc[2 * c] as i16);
                    let s2 = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                    for k in 0..N {
                        let p1 = _mm256_maddubs_epi16(lo, load_i8x32(q8k_chunk(&a[k][b], 2 * c)));
                        let p2 = _mm256_maddubs_epi16(hi, load_i8x32(q8k_chunk(&a[k][b], 2 * c + 1)));
                        let p = _mm256_add_epi32(_mm256_madd_epi16(p1, s1), _mm256_madd_epi16(p2, s2));
                        sumi[k] = _mm256_add_epi32(sumi[k], p);
                    }
                }
                for k in 0..N {
                    let mp = _mm256_madd_epi16(load_i16x16(&a[k][b].bsums), mins16);
                    let da = a[k][b].d;
                    acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[k]), acc[r][k]);
                    acc[r][k] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(mp), acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}

/// 0x10 in every byte of `qh` whose bit `bit` is set, else 0: the fifth bits of Q5_K.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bit_to_16(qh: __m256i, bit: usize) -> __m256i {
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, _mm256_set1_epi8(1 << bit)), _mm256_setzero_si256());
    _mm256_andnot_si256(set, _mm256_set1_epi8(0x10))
}

/// Q5_K: as Q4_K with a fifth bit per value from `qh`.
struct Q5K;

impl Kernel for Q5K {
    type Row<'a> = &'a [[u8; 176]];
    type Act<'a> = &'a [BlockQ8K];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 176]] {
        row_blocks::<176>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8K] {
        acts.q8k_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 176]]; R], a: [&[BlockQ8K]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mask = _mm256_set1_epi8(0x0F);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let (dw, dmin, sc, mins16) = q4k_scales(blk);
                let qh = load_u8x32(blk, 16);
                let mut sumi = [_mm256_setzero_si256(); N];
                for c in 0..4 {
                    let qv = load_u8x32(blk, 48 + 32 * c);
                    // Values 0..32: each pair of u8·i8 products stays within i16 (2·31·127).
                    let lo = _mm256_or_si256(_mm256_and_si256(qv, mask), bit_to_16(qh, 2 * c));
                    let hi = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(qv), mask),
                        bit_to_16(qh, 2 * c + 1),
                    );
                    let s1 = _mm256_set1_epi16(sc[2 * c] as i16);
                    let s2 = _mm256_set1_epi16(sc[2 * c + 1] as i16);
                    for k in 0..N {
                        let p1 = _mm256_maddubs_epi16(lo, load_i8x32(q8k_chunk(&a[k][b], 2 * c)));
                        let p2 = _mm256_maddubs_epi16(hi, load_i8x32(q8k_chunk(&a[k][b], 2 * c + 1)));
                        let p = _mm256_add_epi32(_mm256_madd_epi16(p1, s1), _mm256_madd_epi16(p2, s2));
                        sumi[k] = _mm256_add_epi32(sumi[k], p);
                    }
                }
                for k in 0..N {
                    let mp = _mm256_madd_epi16(load_i16x16(&a[k][b].bsums), mins16);
                    let da = a[k][b].d;
                    acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[k]), acc[r][k]);
                    acc[r][k] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(mp), acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}

/// The 2-bit field `j` (bits 2j..2j+2) of every byte of `q`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn crumb(q: __m256i, j: usize) -> __m256i {
    // Shifting 16-bit lanes moves bits across bytes; the mask drops them again.
    _mm256_and_si256(
        _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
        _mm256_set1_epi8(3),
    )
}

/// Group scales `g` (low 128-bit lane) and `g + 1` (high lane) as i16, for the two halves of a 32-value chunk.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_scales(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// Q2_K: Σ_blocks d_a · (d · Σ_g sc_g Σ q·a − dmin · Σ_g m_g Σ a), integer inside a block.
struct Q2K;

impl Kernel for Q2K {
    type Row<'a> = &'a [[u8; 84]];
    type Act<'a> = &'a [BlockQ8K];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 84]] {
        row_blocks::<84>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8K] {
        acts.q8k_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 84]]; R], a: [&[BlockQ8K]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let (dw, dmin) = f16x2_to_f32([blk[80], blk[81], blk[82], blk[83]]);
                let scb = load_u8x16(blk, 0);
                let mins16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(scb), _mm_set1_epi8(0x0F)));
                let mut sumi = [_mm256_setzero_si256(); N];
                for h in 0..2 {
                    let q = load_u8x32(blk, 16 + 32 * h);
                    for j in 0..4 {
                        let v = crumb(q, j);
                        let g = 8 * h + 2 * j;
                        let scv = pair_scales((blk[g] & 0x0F) as i16, (blk[g + 1] & 0x0F) as i16);
                        for k in 0..N {
                            let p = _mm256_maddubs_epi16(v, load_i8x32(q8k_chunk(&a[k][b], 4 * h + j)));
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, scv));
                        }
                    }
                }
                for k in 0..N {
                    let mp = _mm256_madd_epi16(load_i16x16(&a[k][b].bsums), mins16);
                    let da = a[k][b].d;
                    acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * da), _mm256_cvtepi32_ps(sumi[k]), acc[r][k]);
                    acc[r][k] = _mm256_fnmadd_ps(_mm256_set1_ps(dmin * da), _mm256_cvtepi32_ps(mp), acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}

/// Q3_K: Σ_blocks d·d_a · Σ_g sc_g (Σ u·a − 4 Σ a), with u = q + 4 in 0..8 unsigned.
struct Q3K;

impl Kernel for Q3K {
    type Row<'a> = &'a [[u8; 110]];
    type Act<'a> = &'a [BlockQ8K];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 110]] {
        row_blocks::<110>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8K] {
        acts.q8k_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 110]]; R], a: [&[BlockQ8K]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let dw = f16_to_f32(u16::from_le_bytes([blk[108], blk[109]]));
                let sc: [i16; 16] = from_fn(|g| super::scalar::q3k_scale(&blk[96..108], g) as i16);
                let hm = load_u8x32(blk, 0);
                let mut sumi = [_mm256_setzero_si256(); N];
                for h in 0..2 {
                    let q = load_u8x32(blk, 32 + 32 * h);
                    for j in 0..4 {
                        let set = _mm256_cmpeq_epi8(
                            _mm256_and_si256(hm, _mm256_set1_epi8(1 << (4 * h + j))),
                            _mm256_setzero_si256(),
                        );
                        let u = _mm256_or_si256(crumb(q, j), _mm256_andnot_si256(set, _mm256_set1_epi8(4)));
                        let g = 8 * h + 2 * j;
                        let scv = pair_scales(sc[g], sc[g + 1]);
                        for k in 0..N {
                            let p = _mm256_maddubs_epi16(u, load_i8x32(q8k_chunk(&a[k][b], 4 * h + j)));
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, scv));
                        }
                    }
                }
                let sc16 = load_i16x16(&sc);
                for k in 0..N {
                    let corr = _mm256_madd_epi16(load_i16x16(&a[k][b].bsums), sc16);
                    let si = _mm256_sub_epi32(sumi[k], _mm256_slli_epi32::<2>(corr));
                    acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[k][b].d), _mm256_cvtepi32_ps(si), acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}

/// Q6_K: Σ_blocks d·d_a · Σ_groups sc_g (Σ q·a − 32 Σ a), with the 6-bit q unsigned.
struct Q6K;

/// The four 32-value quarters of one half (128 values) of a Q6_K block as unsigned 6-bit bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_half(blk: &[u8; 210], h: usize) -> [__m256i; 4] {
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    let ql0 = load_u8x32(blk, 64 * h);
    let ql1 = load_u8x32(blk, 64 * h + 32);
    let qh = load_u8x32(blk, 128 + 32 * h);
    // Shifting 16-bit lanes moves bits across bytes; the masks drop them again.
    let hi = |shift: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(shift, m2));
    [
        _mm256_or_si256(_mm256_and_si256(ql0, m4), hi(qh)),
        _mm256_or_si256(_mm256_and_si256(ql1, m4), hi(_mm256_srli_epi16::<2>(qh))),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
            hi(_mm256_srli_epi16::<4>(qh)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
            hi(_mm256_srli_epi16::<6>(qh)),
        ),
    ]
}

impl Kernel for Q6K {
    type Row<'a> = &'a [[u8; 210]];
    type Act<'a> = &'a [BlockQ8K];

    fn row(m: &QMatrix, r: usize) -> &[[u8; 210]] {
        row_blocks::<210>(m, r)
    }

    fn act<'a>(acts: &'a Acts, i: usize) -> &'a [BlockQ8K] {
        acts.q8k_row(i)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 210]]; R], a: [&[BlockQ8K]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb]);
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..nb {
            for r in 0..R {
                let blk = &w[r][b];
                let dw = f16_to_f32(u16::from_le_bytes([blk[208], blk[209]]));
                let mut sumi = [_mm256_setzero_si256(); N];
                for h in 0..2 {
                    for (j, qj) in q6k_half(blk, h).into_iter().enumerate() {
                        // Scales per 16 values: the low 128-bit lane of a quarter is group g, the high one g+1.
                        let g = 192 + 8 * h + 2 * j;
                        let scv = _mm256_set_m128i(
                            _mm_set1_epi16(blk[g + 1] as i8 as i16),
                            _mm_set1_epi16(blk[g] as i8 as i16),
                        );
                        for k in 0..N {
                            let p = _mm256_maddubs_epi16(qj, load_i8x32(q8k_chunk(&a[k][b], 4 * h + j)));
                            sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, scv));
                        }
                    }
                }
                let sc16 = _mm256_cvtepi8_epi16(load_u8x16(blk, 192));
                for k in 0..N {
                    let corr = _mm256_madd_epi16(load_i16x16(&a[k][b].bsums), sc16);
                    let si = _mm256_sub_epi32(sumi[k], _mm256_slli_epi32::<5>(corr));
                    acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a[k][b].d), _mm256_cvtepi32_ps(si), acc[r][k]);
                }
            }
        }
        finish(acc, [[0.0; N]; R])
    }
}
