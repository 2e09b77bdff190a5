//! AVX-512 (F, BW, VL, VNNI) kernels for the 32-weight block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), chosen at run time ahead of AVX2 (no
//! `target-cpu` flag needed: the binary stays portable). Each step takes two weight blocks (64 weights) in one
//! 512-bit register and multiplies them with the activations by `vpdpbusd` (u8 × i8, four products summed into each
//! i32 lane), where AVX2 needs `maddubs` + `madd` per block. Types without a kernel here fall through to AVX2.
//!
//! Signed weights go in as unsigned by an offset that is taken back out exactly, in integers: Q4_0's `q − 8` and
//! Q8_0's `w = (w + 128) − 128` start each block's sum at `−8·Σa` or `−128·Σa`, computed once per activation block.
//!
//! Soundness: every function here that uses the instructions carries `#[target_feature(enable = ...)]` with the
//! AVX-512 features and AVX2/FMA/F16C, and is only reachable through an [`Avx512`] token, which exists only after
//! run-time detection found all of them. Memory accesses go through fixed-size arrays whose bounds are asserted next
//! to the load, so no load can leave its slice.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::{Acts, BlockQ8, QMatrix, WeightType};

/// Proof that this CPU has AVX-512 F, BW, VL and VNNI, and AVX2, FMA and F16C.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512 {
    avx2: Avx2,
}

impl Avx512 {
    pub(crate) fn detect() -> Option<Self> {
        let avx2 = Avx2::detect()?;
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni");
        ok.then_some(Avx512 { avx2 })
    }

    /// The AVX2 kernels, for the activation quantizers and the weight types without an AVX-512 kernel.
    pub(crate) fn avx2(self) -> Avx2 {
        self.avx2
    }

    /// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)`.
    pub(crate) fn rows(self, m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
        assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
        // SAFETY (all five): an `Avx512` token exists only if every feature `drive` enables was detected.
        match m.ty() {
            WeightType::Q4_0 => unsafe { drive::<Q45<18>>(m, acts, r0, r1, out) },
            WeightType::Q4_1 => unsafe { drive::<Q45<20>>(m, acts, r0, r1, out) },
            WeightType::Q5_0 => unsafe { drive::<Q45<22>>(m, acts, r0, r1, out) },
            WeightType::Q5_1 => unsafe { drive::<Q45<24>>(m, acts, r0, r1, out) },
            WeightType::Q8_0 => unsafe { drive::<Q8_0>(m, acts, r0, r1, out) },
            _ => self.avx2.rows(m, acts, r0, r1, out),
        }
    }
}

/// One weight type's tile: how to view a weight row, and the product of `R` weight rows with `N` activation rows
/// held in registers. Every (row, activation) pair takes the same instructions in the same order whatever `R` and
/// `N` are, so a row's result does not depend on the batch it is computed in (bit for bit).
trait Kernel {
    type Row<'a>: Copy;
    /// The unsigned offset the weights carry into `vpdpbusd` (see [`ActPair::init`]).
    const OFFSET: i8;
    fn row(m: &QMatrix, r: usize) -> Self::Row<'_>;
    /// `a` holds each activation row's block pairs (see [`act_pairs`]).
    /// # Safety
    /// The CPU must support the features of [`drive`].
    unsafe fn tile<const R: usize, const N: usize>(w: [Self::Row<'_>; R], a: [&[ActPair]; N]) -> [[f32; N]; R];
}

/// Weight rows per tile for a single activation row.
const DECODE_ROWS: usize = 4;
/// Activation rows per tile when there are several.
const BATCH_ROWS: usize = 4;
/// Weight rows per tile when there are several activation rows: each activation pair loaded is used twice, each
/// unpacked weight pair four times.
const BATCH_WEIGHT_ROWS: usize = 2;

/// Walks weight rows `[r0, r1)` × all activation rows in register tiles: 4 weight rows against the single
/// activation row of a decode step, else 2 weight rows × 4 activation rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn drive<K: Kernel>(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let n = acts.n;
    let len = r1 - r0;
    // The activations' side of every block pair, once per call: every weight row reuses it.
    let npairs = acts.cols.div_ceil(2 * super::QK);
    let pairs = act_pairs(acts, K::OFFSET);
    let views: Vec<&[ActPair]> = pairs.chunks_exact(npairs.max(1)).take(n).collect();
    if npairs == 0 {
        out.fill(0.0);
        return;
    }
    if n == 1 {
        let a = [views[0]];
        let out = &mut out[..len];
        let mut r = r0;
        while r + DECODE_ROWS <= r1 {
            let mut w = [K::row(m, r); DECODE_ROWS];
            for (j, w) in w.iter_mut().enumerate() {
                *w = K::row(m, r + j);
            }
            // SAFETY: `drive` runs only with the features `tile` needs (its own target features).
            let y = unsafe { K::tile::<DECODE_ROWS, 1>(w, a) };
            for (j, y) in y.iter().enumerate() {
                out[r - r0 + j] = y[0];
            }
            r += DECODE_ROWS;
        }
        for r in r..r1 {
            // SAFETY: as above.
            out[r - r0] = unsafe { K::tile::<1, 1>([K::row(m, r)], a) }[0][0];
        }
        return;
    }
    let mut r = r0;
    while r + BATCH_WEIGHT_ROWS <= r1 {
        let w = [K::row(m, r), K::row(m, r + 1)];
        batch_row::<K, BATCH_WEIGHT_ROWS>(w, &views, out, len, r - r0);
        r += BATCH_WEIGHT_ROWS;
    }
    if r < r1 {
        batch_row::<K, 1>([K::row(m, r)], &views, out, len, r - r0);
    }
}

/// `R` weight rows (from column `c` of the output) against every activation row, `BATCH_ROWS` at a time.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn batch_row<K: Kernel, const R: usize>(
    w: [K::Row<'_>; R],
    views: &[&[ActPair]],
    out: &mut [f32],
    len: usize,
    c: usize,
) {
    let n = views.len();
    let mut i = 0;
    while i + BATCH_ROWS <= n {
        // SAFETY: `batch_row` runs only with the features `tile` needs (its own target features).
        put(out, len, i, c, unsafe { K::tile::<R, BATCH_ROWS>(w, pick(views, i)) });
        i += BATCH_ROWS;
    }
    // SAFETY (all three): as above.
    match n - i {
        3 => put(out, len, i, c, unsafe { K::tile::<R, 3>(w, pick(views, i)) }),
        2 => put(out, len, i, c, unsafe { K::tile::<R, 2>(w, pick(views, i)) }),
        1 => put(out, len, i, c, unsafe { K::tile::<R, 1>(w, pick(views, i)) }),
        _ => {}
    }
}

#[inline]
fn pick<T: Copy, const N: usize>(v: &[T], i: usize) -> [T; N] {
    let mut it = v[i..i + N].iter().copied();
    [(); N].map(|_| it.next().unwrap_or_else(|| unreachable!()))
}

/// Stores a tile: weight row `j` (output column `col + j`) against activation row `i0 + k`.
#[inline]
fn put<const R: usize, const N: usize>(out: &mut [f32], len: usize, i0: usize, col: usize, y: [[f32; N]; R]) {
    for (j, y) in y.into_iter().enumerate() {
        for (k, v) in y.into_iter().enumerate() {
            out[(i0 + k) * len + col + j] = v;
        }
    }
}

/// The blocks of a weight row.
#[inline]
fn row_blocks<const BB: usize>(m: &QMatrix, r: usize) -> &[[u8; BB]] {
    m.row_data(r).as_chunks::<BB>().0
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers

/// 32 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_32<const B: usize>(b: &[u8; B], off: usize) -> __m256i {
    assert!(off + 32 <= B);
    // SAFETY: off + 32 <= B (asserted; the callers pass constants, so the check folds away).
    unsafe { _mm256_loadu_si256(b.as_ptr().add(off).cast()) }
}

/// 16 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_16<const B: usize>(b: &[u8; B], off: usize) -> __m128i {
    assert!(off + 16 <= B);
    // SAFETY: off + 16 <= B (asserted; the callers pass constants, so the check folds away).
    unsafe { _mm_loadu_si128(b.as_ptr().add(off).cast()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn load_i8x32(a: &[i8; 32]) -> __m256i {
    // SAFETY: reads exactly the 32 bytes of `a`.
    unsafe { _mm256_loadu_si256(a.as_ptr().cast()) }
}

/// Two 256-bit halves as one 512-bit register (`lo` in bits 0..256).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// As [`join`], for two loads: broadcast loads and a blend (no shuffle port).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_256(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_mask_blend_epi64(0xF0, _mm512_broadcast_i64x4(lo), _mm512_broadcast_i64x4(hi))
}

/// Two f16 scales from two blocks' headers as f32 lanes 0 and 2 of the result (lanes 1 and 3 are each block's
/// second header half: Q4_1's `m`, or 0.0 where `second` is false).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn headers<const B: usize>(b0: &[u8; B], b1: &[u8; B], second: bool) -> __m128 {
    const { assert!(B >= 4) };
    let word = |b: &[u8; B]| {
        if second {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u16::from_le_bytes([b[0], b[1]]) as i32
        }
    };
    _mm_cvtph_ps(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(word(b0)), word(b1)))
}

/// Lane 0 of `v` in the low 8 lanes, lane 2 in the high 8: one block's scale per half of a pair.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn halves(v: __m128) -> __m512 {
    let idx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// What a pair of activation blocks contributes, computed once and shared by every weight row of a tile.
#[derive(Clone, Copy)]
struct ActPair {
    /// The 64 i8 activations.
    q: __m512i,
    /// Each block's scale over its 8 lanes (the second 0 when the pair is a row's odd last block alone).
    d: __m512,
    /// Where each lane's integer sum starts: minus the weight offset times the activations' sum.
    init: __m512i,
    /// Each block's `s = d·Σq` in lanes 1 and 3 (Q4_1's offset term), 0 elsewhere.
    s: __m128,
}

/// Every activation row's block pairs, row after row (`cols / 64` rounded up per row).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_pairs(acts: &Acts, offset: i8) -> Vec<ActPair> {
    let mut v = Vec::with_capacity(acts.n * acts.cols.div_ceil(2 * super::QK));
    for i in 0..acts.n {
        let a = acts.q8_row(i);
        for b in (0..a.len()).step_by(2) {
            v.push(act_pair(a, b, offset));
        }
    }
    v
}

/// Activation blocks `b` and `b + 1` of `a`, or block `b` alone (the second half weighted 0) at an odd end.
/// `offset` is the unsigned shift the weights carry (their sum is taken back out of `init`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_pair(a: &[BlockQ8], b: usize, offset: i8) -> ActPair {
    let a0 = &a[b];
    let (a1, d1, s1) = match a.get(b + 1) {
        Some(a1) => (a1, a1.d, a1.s),
        None => (a0, 0.0, 0.0),
    };
    let q = join(load_i8x32(&a0.qs), load_i8x32(&a1.qs));
    let init = if offset == 0 {
        _mm512_setzero_si512()
    } else {
        let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(offset), q);
        _mm512_sub_epi32(_mm512_setzero_si512(), sum)
    };
    ActPair {
        q,
        d: _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a0.d), _mm512_set1_ps(d1)),
        init,
        s: _mm_setr_ps(0.0, a0.s, 0.0, s1),
    }
}

/// Horizontal sums of the accumulators, plus lanes 1 and 3 of the offset sums.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn finish<const R: usize, const N: usize>(acc: [[__m512; N]; R], msum: [[__m128; N]; R]) -> [[f32; N]; R] {
    let mut y = [[0.0; N]; R];
    for r in 0..R {
        for k in 0..N {
            let h = _mm_movehdup_ps(msum[r][k]);
            let extra = _mm_cvtss_f32(h) + _mm_cvtss_f32(_mm_movehl_ps(h, h));
            y[r][k] = _mm512_reduce_add_ps(acc[r][k]) + extra;
        }
    }
    y
}

// ---------------------------------------------------------------------------------------------------------------
// Tiles

/// Q4_0 (`BB` = 18), Q4_1 (20), Q5_0 (22) and Q5_1 (24): Σ d_w·d_a·Σ(q·a) + m_w·s_a with unsigned 4- or 5-bit q;
/// Q4_0's offset of −8 and Q5_0's of −16 are taken out in the integer sum instead (m_w = 0).
struct Q45<const BB: usize>;

impl<const BB: usize> Q45<BB> {
    /// Whether a block carries an f16 offset `m` after its scale (Q4_1, Q5_1).
    const HAS_M: bool = BB == 20 || BB == 24;
    /// Whether a block carries a u32 of fifth bits before its nibbles (Q5_0, Q5_1).
    const HAS_H: bool = BB == 22 || BB == 24;
    /// The unsigned offset of the types without `m`.
    const UNSIGNED_BY: i8 = match BB {
        18 => 8,
        22 => 16,
        _ => 0,
    };
}

/// The 64 values of blocks `b0` and `b1` as bytes in element order (per block: low nibbles are elements 0..16,
/// high nibbles 16..32; Q5's fifth bit of element j is bit j of the u32 before the nibbles).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q45_pair<const BB: usize>(b0: &[u8; BB], b1: &[u8; BB]) -> __m512i {
    // 128-bit lanes (n0, n0, n1, n1) (broadcast loads and one blend), then the second copy of each shifted down to
    // its high nibbles.
    let n = _mm512_mask_blend_epi64(
        0xF0,
        _mm512_broadcast_i32x4(load_16(b0, BB - 16)),
        _mm512_broadcast_i32x4(load_16(b1, BB - 16)),
    );
    let s = 0x0004_0004_0004_0004;
    let n = _mm512_srlv_epi16(n, _mm512_set_epi64(s, s, 0, 0, s, s, 0, 0));
    let q = _mm512_and_si512(n, _mm512_set1_epi8(0x0F));
    if !Q45::<BB>::HAS_H {
        return q;
    }
    // The fifth bits sit in the 4 bytes before the 16 of nibbles (BB ≥ 22 here; saturating only for Q4's sake).
    let h = BB.saturating_sub(20);
    let bits = |b: &[u8; BB]| u32::from_le_bytes([b[h], b[h + 1], b[h + 2], b[h + 3]]) as u64;
    // Byte i of the register is element i % 32 of block i / 32: its fifth bit is bit i of this mask.
    _mm512_mask_add_epi8(q, bits(b0) | bits(b1) << 32, q, _mm512_set1_epi8(0x10))
}

impl<const BB: usize> Kernel for Q45<BB> {
    type Row<'a> = &'a [[u8; BB]];
    const OFFSET: i8 = Self::UNSIGNED_BY;

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; BB]] {
        row_blocks::<BB>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; BB]]; R], a: [&[ActPair]; N]) -> [[f32; N]; R] {
        const { assert!(BB == 18 || BB == 20 || BB == 22 || BB == 24) };
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb.div_ceil(2)]);
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        let mut msum = [[_mm_setzero_ps(); N]; R];
        for b in (0..nb).step_by(2) {
            // An odd last block pairs with itself; its second half is weighted 0 by the activation pair.
            let b1 = (b + 1).min(nb - 1);
            for r in 0..R {
                let q = q45_pair(&w[r][b], &w[r][b1]);
                let dm = headers(&w[r][b], &w[r][b1], Self::HAS_M);
                let dw = halves(dm);
                for k in 0..N {
                    let ap = &a[k][b / 2];
                    // q ≤ 31, |a| ≤ 127: four products sum far inside i32.
                    let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(ap.init, q, ap.q));
                    acc[r][k] = _mm512_fmadd_ps(_mm512_mul_ps(dw, ap.d), p, acc[r][k]);
                    if Self::HAS_M {
                        msum[r][k] = _mm_fmadd_ps(dm, ap.s, msum[r][k]);
                    }
                }
            }
        }
        finish(acc, msum)
    }
}

/// Q8_0: Σ d_w·d_a·Σ(w·a), with w + 128 multiplied unsigned and 128·Σa subtracted in the integer sum.
#[allow(non_camel_case_types)]
struct Q8_0;

impl Kernel for Q8_0 {
    type Row<'a> = &'a [[u8; 34]];
    const OFFSET: i8 = i8::MIN;

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; 34]] {
        row_blocks::<34>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const R: usize, const N: usize>(w: [&[[u8; 34]]; R], a: [&[ActPair]; N]) -> [[f32; N]; R] {
        let nb = w[0].len();
        let w = w.map(|w| &w[..nb]);
        let a = a.map(|a| &a[..nb.div_ceil(2)]);
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [[_mm512_setzero_ps(); N]; R];
        for b in (0..nb).step_by(2) {
            let b1 = (b + 1).min(nb - 1);
            for r in 0..R {
                let (w0, w1) = (&w[r][b], &w[r][b1]);
                // w + 128 as u8 (flipping the sign bit); 4 · 255 · 128 fits in i32.
                let q = _mm512_xor_si512(pair_256(load_32(w0, 2), load_32(w1, 2)), flip);
                let dw = halves(headers(w0, w1, false));
                for k in 0..N {
                    let ap = &a[k][b / 2];
                    let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(ap.init, q, ap.q));
                    acc[r][k] = _mm512_fmadd_ps(_mm512_mul_ps(dw, ap.d), p, acc[r][k]);
                }
            }
        }
        finish(acc, [[_mm_setzero_ps(); N]; R])
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ActFormat, Isa, scalar};
    use super::*;

    fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    }

    /// On a CPU with AVX-512 VNNI: every type's product equals the scalar reference up to f32 summation order, for
    /// even and odd block counts, one block, every tile shape; and each row is bit-identical whatever the batch.
    #[test]
    fn avx512_matches_scalar_and_is_batch_invariant() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to check");
            return;
        };
        for ty in [
            WeightType::Q4_0,
            WeightType::Q4_1,
            WeightType::Q5_0,
            WeightType::Q5_1,
            WeightType::Q8_0,
        ] {
            for (cols, rows) in [(576, 37), (544, 9), (32, 5), (1536, 8)] {
                let m = QMatrix::quantize(ty, rows, cols, &values(cols as u64 * 7 + rows as u64, rows * cols, 0.2))
                    .unwrap_or_else(|e| panic!("{e}"));
                let n = 9;
                let mut x = values(cols as u64, n * cols, 4.0);
                x[..32].fill(0.0); // an all-zero activation block (d = 0)
                let acts = Acts::quantize(ActFormat::Q8, &x, n, cols, Isa::Scalar);
                let mut want = vec![0.0; n * rows];
                scalar::rows(&m, &acts, 0, rows, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                t.rows(&m, &acts, 0, rows, &mut got);
                let mut w = vec![0.0; cols];
                for r in 0..rows {
                    m.dequantize_row(r, &mut w);
                    for i in 0..n {
                        let xr = &x[i * cols..(i + 1) * cols];
                        let mag: f32 = w.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                        let (g, e) = (got[i * rows + r], want[i * rows + r]);
                        assert!(
                            (g - e).abs() <= 1e-5 * mag + 1e-12,
                            "{ty} {rows}×{cols}: y[{i}][{r}] = {g}, reference {e}"
                        );
                    }
                }
                // Each activation row alone (the decode tiles) gives the same bits as the batch of 9.
                for i in 0..n {
                    let one = Acts::quantize(ActFormat::Q8, &x[i * cols..(i + 1) * cols], 1, cols, Isa::Scalar);
                    let mut y = vec![f32::NAN; rows];
                    t.rows(&m, &one, 0, rows, &mut y);
                    // Also an odd split of the rows (a work item boundary inside a decode tile).
                    let mut y2 = vec![f32::NAN; rows];
                    t.rows(&m, &one, 0, 3, &mut y2[..3]);
                    t.rows(&m, &one, 3, rows, &mut y2[3..]);
                    for r in 0..rows {
                        let b = got[i * rows + r].to_bits();
                        assert_eq!(y[r].to_bits(), b, "{ty} {rows}×{cols}: row {r} of x[{i}] alone");
                        assert_eq!(y2[r].to_bits(), b, "{ty} {rows}×{cols}: row {r} of x[{i}] split");
                    }
                }
            }
        }
    }
}

/// Side-by-side timing of the AVX-512 and AVX2 kernels in one process, alternated so a shared machine's load hits
/// both alike: `cargo test --release -p shoal-engine --lib kernels::avx512::bench -- --ignored --nocapture`.
#[cfg(test)]
mod bench {
    use std::time::{Duration, Instant};

    use super::super::{ActFormat, Isa, compute_rows};
    use super::*;

    /// Rounds of alternated measurements; each reports its median.
    const ROUNDS: usize = 15;
    /// Calls per measurement.
    const CALLS: usize = 20;

    #[test]
    #[ignore = "timing, run by hand"]
    fn avx512_against_avx2() {
        let Some(t) = Avx512::detect() else {
            eprintln!("no AVX-512 VNNI on this CPU");
            return;
        };
        let cases = [
            (WeightType::Q4_1, 1536, 576, 1),
            (WeightType::Q4_1, 576, 1536, 1),
            (WeightType::Q8_0, 8192, 576, 1),
            (WeightType::Q5_0, 1536, 576, 1),
            (WeightType::Q4_1, 1536, 576, 64),
            (WeightType::Q8_0, 8192, 576, 64),
        ];
        for (ty, rows, cols, n) in cases {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
                .collect();
            let m = QMatrix::quantize(ty, rows, cols, &v).unwrap_or_else(|e| panic!("{e}"));
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 31 % 200) as f32 / 100.0 - 1.0) * 2.0)
                .collect();
            let acts = Acts::quantize(ActFormat::Q8, &x, n, cols, Isa::Scalar);
            let mut out = vec![0.0; n * rows];
            let isas = [Isa::Avx2(t.avx2()), Isa::Avx512(t)];
            let mut times = [Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (j, &isa) in isas.iter().enumerate() {
                    let s = Instant::now();
                    for _ in 0..CALLS {
                        compute_rows(&m, &acts, 0, rows, &mut out, isa);
                    }
                    times[j].push(s.elapsed() / CALLS as u32);
                }
            }
            let med = |v: &mut Vec<Duration>| {
                v.sort();
                v[v.len() / 2]
            };
            let (a, b) = (med(&mut times[0]), med(&mut times[1]));
            eprintln!(
                "{ty} {rows}×{cols} n={n}: avx2 {a:?}, avx512 {b:?}, {:.2}×",
                a.as_secs_f64() / b.as_secs_f64()
            );
        }
    }
}
