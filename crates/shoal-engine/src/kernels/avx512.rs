//! AVX-512 (F, BW, VL, VNNI) kernels for the 32-weight block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the K-quants
//! Q4_K, Q5_K and Q6_K, chosen at run time ahead of AVX2 (no `target-cpu` flag needed: the binary stays portable).
//! Types without a kernel here (F32, F16, BF16, Q2_K, Q3_K) fall through to AVX2.
//!
//! Each 512-bit register holds two products side by side, one per 256-bit half: two weight rows against one
//! activation row while decoding, one weight row against two activation rows in a batch (32-weight types) or two
//! weight rows against one activation row (K-quants, whose batches take 4 registers for 4 activation rows). Each
//! half computes its product exactly as the AVX2 kernel does, bit for bit: the integer sums per i32 lane are exact
//! in both (for the 32-weight types one `vpdpbusd` does what AVX2 needs `maddubs` + `madd` for, and for Q8_0 two
//! sign fixes; for the K-quants `maddubs` + `vpdpwssd` with the sub-block scale do AVX2's `maddubs` + `madd` +
//! add); the float steps (scale, fused multiply-add, block by block, then the same horizontal sum) are the same
//! instructions in the same order. So switching between AVX2 and AVX-512 never changes a result, and a product does
//! not depend on the batch it is computed in.
//!
//! Soundness: every function here that uses the instructions carries `#[target_feature(enable = ...)]` with the
//! AVX-512 features and AVX2/FMA/F16C, and is only reachable through an [`Avx512`] token, which exists only after
//! run-time detection found all of them. Memory accesses go through fixed-size arrays whose bounds are asserted next
//! to the load, so no load can leave its slice.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::{Acts, QMatrix, WeightType};

mod kquants;
mod packed;
mod packed_k;
use kquants::{Q4K, Q5K, Q6K, drive_k};

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
        if let Some(p) = &m.packed {
            // SAFETY: an `Avx512` token exists only if every feature `packed_rows` enables was detected.
            return unsafe { packed_rows(m, p, acts, r0, r1, out) };
        }
        if m.ty() == WeightType::Q4_1 && acts.n >= Q4_1_AVX2_FROM_ROWS {
            // Same bits either way (see the module comment); AVX2's 1 × 4 tile is the faster one here.
            return self.avx2.rows(m, acts, r0, r1, out);
        }
        self.own_rows(m, acts, r0, r1, out);
    }

    /// [`Avx512::rows`] always with this module's kernels, where it has one for the type.
    fn own_rows(self, m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
        assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
        // SAFETY (all eight): an `Avx512` token exists only if every feature `drive` and `drive_k` enable was detected
        // (the same set).
        match m.ty() {
            WeightType::Q4_0 => unsafe { drive::<Q45<18>>(m, acts, r0, r1, out) },
            WeightType::Q4_1 => unsafe { drive::<Q45<20>>(m, acts, r0, r1, out) },
            WeightType::Q5_0 => unsafe { drive::<Q45<22>>(m, acts, r0, r1, out) },
            WeightType::Q5_1 => unsafe { drive::<Q45<24>>(m, acts, r0, r1, out) },
            WeightType::Q8_0 => unsafe { drive::<Q8_0>(m, acts, r0, r1, out) },
            WeightType::Q4K => unsafe { drive_k::<Q4K>(m, acts, r0, r1, out) },
            WeightType::Q5K => unsafe { drive_k::<Q5K>(m, acts, r0, r1, out) },
            WeightType::Q6K => unsafe { drive_k::<Q6K>(m, acts, r0, r1, out) },
            _ => self.avx2.rows(m, acts, r0, r1, out),
        }
    }
}

/// The row-group kernel of `m`'s type over its packed rows `p`: the K-quants' (`packed_k`) or the 32-weight types'.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn packed_rows(m: &QMatrix, p: &super::packed::PackedRows, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    if super::packed_k::covers(m.ty()) {
        packed_k::rows(m, p, acts, r0, r1, out)
    } else {
        packed::rows(m, p, acts, r0, r1, out)
    }
}

/// One weight type's kernel: how to view a weight row, and `P` registers of two products each.
trait Kernel {
    type Row<'a>: Copy;
    fn row(m: &QMatrix, r: usize) -> Self::Row<'_>;
    /// Register `j`'s low half computes `lo[j]` times the low activation row of `a[j]` (a pair of activation rows,
    /// see [`act_table`]), its high half `hi[j]` times the high one; returns `[[low, high]; P]`. Passing the same
    /// weight row to several places lets the compiler load and unpack it once.
    /// # Safety
    /// The CPU must support the features of [`drive`].
    unsafe fn tile<const P: usize>(
        lo: [Self::Row<'_>; P],
        hi: [Self::Row<'_>; P],
        a: [&[ActBlocks]; P],
    ) -> [[f32; 2]; P];
}

/// Walks weight rows `[r0, r1)` × all activation rows: activation rows in groups of [`ROW_GROUP`], 4 weight rows
/// (2 registers, one row per half) against one activation row at a time. Measured against a 2 weight rows × 4
/// activation rows tile (each unpacked block used 4 times in registers), this walk was as fast or faster at every row
/// count, 1 to 512 (`mod bench`, 2026-12-06), so it is the only one.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn drive<K: Kernel>(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    let nb = acts.cols / super::QK;
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    // The table's buffer is the thread's own, kept between calls: a forward pass makes thousands of these calls, and
    // growing a fresh 64-byte-aligned vector each time cost ~5 % of a decode step in the allocator.
    let mut table = TABLE.take();
    drive_with::<K>(m, acts, r0, r1, out, nb, &mut table);
    TABLE.set(table);
}

/// From this many activation rows on, Q4_1 products go to the AVX2 kernel: its 1 weight row × 4 activation rows tile
/// beat this module's walk there in the kernel bench (`mod bench`: 118 against 126 µs for 3 rows of a 1536×576
/// product, 2.35 against 2.57 ms for 64), while this module's wins for 1 and 2 rows (45 against 52 µs for one).
/// Q4_0, Q5_0 and Q8_0 stay here at every row count (Q4_0: 3.06 against 3.45 ms for 64 rows).
const Q4_1_AVX2_FROM_ROWS: usize = 3;
/// Activation rows whose table is built and walked together (8 × 18 blocks of 208 bytes for a 576-wide row: 30 KiB,
/// within L1).
const ROW_GROUP: usize = 8;

thread_local! {
    /// [`drive`]'s activation table, reused by each thread.
    static TABLE: std::cell::Cell<Vec<ActBlocks>> = const { std::cell::Cell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn drive_with<K: Kernel>(
    m: &QMatrix,
    acts: &Acts,
    r0: usize,
    r1: usize,
    out: &mut [f32],
    nb: usize,
    table: &mut Vec<ActBlocks>,
) {
    let n = acts.n;
    let len = r1 - r0;
    // Activation rows in groups of ROW_GROUP, each row paired with itself in the table (a group's table stays in
    // L1); 4 weight rows (2 registers, one row per half) against one activation row at a time, the 4 rows'
    // blocks staying in L1 while every row of the group passes over them.
    for g0 in (0..n).step_by(ROW_GROUP) {
        let own: Vec<(usize, usize)> = (g0..(g0 + ROW_GROUP).min(n)).map(|i| (i, i)).collect();
        act_table(acts, &own, table);
        let xs: Vec<&[ActBlocks]> = table.chunks_exact(nb).collect();
        let mut r = r0;
        while r + 4 <= r1 {
            let w = [K::row(m, r), K::row(m, r + 1), K::row(m, r + 2), K::row(m, r + 3)];
            for (i, &x) in (g0..).zip(&xs) {
                // Low halves take rows r and r + 2, high r + 1 and r + 3.
                // SAFETY: `drive` runs only with the features `tile` needs (its own target features).
                let y = unsafe { K::tile::<2>([w[0], w[2]], [w[1], w[3]], [x, x]) };
                let at = i * len + r - r0;
                out[at..at + 4].copy_from_slice(&[y[0][0], y[0][1], y[1][0], y[1][1]]);
            }
            r += 4;
        }
        while r < r1 {
            // The last odd row pairs with itself.
            let r2 = (r + 1).min(r1 - 1);
            for (i, &x) in (g0..).zip(&xs) {
                // SAFETY: `drive` runs only with the features `tile` needs (its own target features).
                let y = unsafe { K::tile::<1>([K::row(m, r)], [K::row(m, r2)], [x]) };
                out[i * len + r - r0] = y[0][0];
                out[i * len + r2 - r0] = y[0][1];
            }
            r += 2;
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

/// Two 256-bit values as the halves of one register, by broadcast loads and a blend (no shuffle port).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn pair_256(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_mask_blend_epi64(0xF0, _mm512_broadcast_i64x4(lo), _mm512_broadcast_i64x4(hi))
}

/// The f16 header words of two blocks as f32 lanes 0–1 (first block) and 2–3 (second): the scale `d`, then Q4_1's
/// and Q5_1's offset `m` where `with_m`, else 0.0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn headers<const B: usize>(b0: &[u8; B], b1: &[u8; B], with_m: bool) -> __m128 {
    const { assert!(B >= 4) };
    let word = |b: &[u8; B]| {
        if with_m {
            i32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u16::from_le_bytes([b[0], b[1]]) as i32
        }
    };
    _mm_cvtph_ps(_mm_insert_epi32::<1>(_mm_cvtsi32_si128(word(b0)), word(b1)))
}

/// Lane 0 of `v` in the low 8 lanes, lane 2 in the high 8: one value per half.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn halves(v: __m128) -> __m512 {
    let idx = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
}

/// Block b of two activation rows, as a register's halves take them: their 32 + 32 values, each scale over its
/// half's 8 lanes, each `s = d·Σq` in lanes 1 and 3 (0 in lanes 0 and 2), and −128·Σa per lane (Q8_0's start).
#[derive(Clone, Copy)]
struct ActBlocks {
    q: __m512i,
    d: __m512,
    s: __m128,
    minus_128_sum: __m512i,
}

/// For each pair of activation rows, its blocks as [`ActBlocks`] (into `v`, replacing what it held), computed once
/// and reused by every weight row.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_table(acts: &Acts, pairs: &[(usize, usize)], v: &mut Vec<ActBlocks>) {
    v.clear();
    for &(i0, i1) in pairs {
        for (a0, a1) in acts.q8_row(i0).iter().zip(acts.q8_row(i1)) {
            let q = pair_256(load_i8x32(&a0.qs), load_i8x32(&a1.qs));
            let sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(i8::MIN), q);
            v.push(ActBlocks {
                q,
                d: _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a0.d), _mm512_set1_ps(a1.d)),
                s: _mm_setr_ps(0.0, a0.s, 0.0, a1.s),
                minus_128_sum: _mm512_sub_epi32(_mm512_setzero_si512(), sum),
            });
        }
    }
}

/// AVX2's horizontal sum of 8 lanes (same additions in the same order), of each half, plus lanes 1 and 3 of
/// `extra`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn finish<const P: usize>(acc: [__m512; P], extra: [__m128; P]) -> [[f32; 2]; P] {
    let hsum = |v: __m256| {
        let x = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
    };
    let mut y = [[0.0; 2]; P];
    for j in 0..P {
        let lo = _mm512_castps512_ps256(acc[j]);
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc[j])));
        let e = _mm_movehdup_ps(extra[j]);
        y[j] = [
            hsum(lo) + _mm_cvtss_f32(e),
            hsum(hi) + _mm_cvtss_f32(_mm_movehl_ps(e, e)),
        ];
    }
    y
}

// ---------------------------------------------------------------------------------------------------------------
// Kernels

/// Q4_0 (`BB` = 18), Q4_1 (20), Q5_0 (22) and Q5_1 (24), as AVX2 computes them: Σ_blocks d_w·d_a·Σ(q·a) in f32
/// lanes plus Σ_blocks m_w·s_a in a scalar, with unsigned q and Q4_0's m_w = −8·d_w, Q5_0's −16·d_w.
struct Q45<const BB: usize>;

impl<const BB: usize> Q45<BB> {
    /// Whether a block carries an f16 offset `m` after its scale (Q4_1, Q5_1).
    const HAS_M: bool = BB == 20 || BB == 24;
    /// Whether a block carries a u32 of fifth bits before its nibbles (Q5_0, Q5_1).
    const HAS_H: bool = BB == 22 || BB == 24;
    /// m_w / d_w of the types without `m`.
    const M_PER_D: f32 = if BB == 18 { -8.0 } else { -16.0 };
}

/// The 32 values of `b0` (low half) and of `b1` (high half) as bytes in element order (per block: low nibbles are
/// elements 0..16, high nibbles 16..32; Q5's fifth bit of element j is bit j of the u32 before the nibbles).
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
    // Byte i of the register is element i % 32 of its half's block: its fifth bit is bit i of this mask.
    _mm512_mask_add_epi8(q, bits(b0) | bits(b1) << 32, q, _mm512_set1_epi8(0x10))
}

impl<const BB: usize> Kernel for Q45<BB> {
    type Row<'a> = &'a [[u8; BB]];

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; BB]] {
        row_blocks::<BB>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const P: usize>(lo: [&[[u8; BB]]; P], hi: [&[[u8; BB]]; P], a: [&[ActBlocks]; P]) -> [[f32; 2]; P] {
        const { assert!(BB == 18 || BB == 20 || BB == 22 || BB == 24) };
        let nb = lo[0].len();
        let (lo, hi, a) = (lo.map(|w| &w[..nb]), hi.map(|w| &w[..nb]), a.map(|a| &a[..nb]));
        let mut acc = [_mm512_setzero_ps(); P];
        // Lanes 1 and 3 hold each half's Σ m_w·s_a (multiplied, then added: AVX2's scalar steps).
        let mut msum = [_mm_setzero_ps(); P];
        for b in 0..nb {
            for j in 0..P {
                let (w0, w1, x) = (&lo[j][b], &hi[j][b], &a[j][b]);
                let q = q45_pair(w0, w1);
                let dm = headers(w0, w1, Self::HAS_M);
                // q ≤ 31, |a| ≤ 127: the four products of a lane sum exactly, as AVX2's maddubs + madd do.
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, x.q));
                acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(halves(dm), x.d), p, acc[j]);
                let m = if Self::HAS_M {
                    dm
                } else {
                    _mm_mul_ps(_mm_set1_ps(Self::M_PER_D), _mm_moveldup_ps(dm))
                };
                msum[j] = _mm_add_ps(msum[j], _mm_mul_ps(m, x.s));
            }
        }
        finish(acc, msum)
    }
}

/// Q8_0, as AVX2 computes it: Σ_blocks d_w·d_a·Σ(w·a) in f32 lanes. `vpdpbusd` takes w + 128 unsigned; each lane
/// starts at −128·Σa (from the activation table) so the sum is exact.
#[allow(non_camel_case_types)]
struct Q8_0;

impl Kernel for Q8_0 {
    type Row<'a> = &'a [[u8; 34]];

    #[inline(always)]
    fn row(m: &QMatrix, r: usize) -> &[[u8; 34]] {
        row_blocks::<34>(m, r)
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
    unsafe fn tile<const P: usize>(lo: [&[[u8; 34]]; P], hi: [&[[u8; 34]]; P], a: [&[ActBlocks]; P]) -> [[f32; 2]; P] {
        let nb = lo[0].len();
        let (lo, hi, a) = (lo.map(|w| &w[..nb]), hi.map(|w| &w[..nb]), a.map(|a| &a[..nb]));
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut acc = [_mm512_setzero_ps(); P];
        for b in 0..nb {
            for j in 0..P {
                let (w0, w1, x) = (&lo[j][b], &hi[j][b], &a[j][b]);
                // w + 128 as u8 (flipping the sign bit); 4 · 255 · 128 fits in i32.
                let q = _mm512_xor_si512(pair_256(load_32(w0, 2), load_32(w1, 2)), flip);
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(x.minus_128_sum, q, x.q));
                acc[j] = _mm512_fmadd_ps(_mm512_mul_ps(halves(headers(w0, w1, false)), x.d), p, acc[j]);
            }
        }
        finish(acc, [_mm_setzero_ps(); P])
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ActFormat, Isa, scalar};
    use super::*;

    pub(super) fn values(seed: u64, len: usize, scale: f32) -> Vec<f32> {
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

    /// Asserts that the row-group kernel over `m`'s packed rows gives, for every activation row and every row, exactly
    /// the bits of this module's row kernels, computed whole and split at 0, 3, 16 and the end.
    pub(super) fn assert_packed_equals_rows(t: Avx512, m: &QMatrix, acts: &Acts) {
        let p = super::super::packed::PackedRows::pack(m).unwrap_or_else(|| panic!("{} packs", m.ty()));
        let (n, rows) = (acts.n, m.rows());
        let mut want = vec![f32::NAN; n * rows];
        t.own_rows(m, acts, 0, rows, &mut want);
        for cut in [0, 3, 16, rows] {
            let cut = cut.min(rows);
            let mut a = vec![f32::NAN; n * cut];
            let mut b = vec![f32::NAN; n * (rows - cut)];
            // SAFETY: `t` proves the CPU has the features `packed_rows` enables.
            unsafe {
                packed_rows(m, &p, acts, 0, cut, &mut a);
                packed_rows(m, &p, acts, cut, rows, &mut b);
            }
            for i in 0..n {
                for r in 0..rows {
                    let got = if r < cut {
                        a[i * cut + r]
                    } else {
                        b[i * (rows - cut) + r - cut]
                    };
                    let w = want[i * rows + r];
                    assert_eq!(
                        got.to_bits(),
                        w.to_bits(),
                        "{} {rows}×{} n={n} split at {cut}: y[{i}][{r}] = {got}, row kernel {w}",
                        m.ty(),
                        m.cols()
                    );
                }
            }
        }
    }

    /// On a CPU with AVX-512 VNNI: every type's product is bit-identical to the AVX2 kernel's (so equal to the
    /// scalar reference up to f32 summation order), for odd and even row, activation and block counts, one block,
    /// every tile shape; and each row is bit-identical whatever the batch and the split of the rows.
    #[test]
    fn avx512_equals_avx2_bit_for_bit_and_is_batch_invariant() {
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
            for (cols, rows) in [(576, 37), (544, 9), (32, 5), (1536, 8), (64, 2), (96, 1)] {
                let m = QMatrix::quantize(ty, rows, cols, &values(cols as u64 * 7 + rows as u64, rows * cols, 0.2))
                    .unwrap_or_else(|e| panic!("{e}"));
                // More than two groups of activation rows, the last one short.
                let n = 2 * ROW_GROUP + 3;
                let mut x = values(cols as u64, n * cols, 4.0);
                x[..32].fill(0.0); // an all-zero activation block (d = 0)
                let acts = Acts::quantize(ActFormat::Q8, &x, n, cols, Isa::Scalar);
                let mut want = vec![0.0; n * rows];
                scalar::rows(&m, &acts, 0, rows, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                t.own_rows(&m, &acts, 0, rows, &mut got);
                let mut avx2 = vec![f32::NAN; n * rows];
                t.avx2().rows(&m, &acts, 0, rows, &mut avx2);
                for (j, (g, a)) in got.iter().zip(&avx2).enumerate() {
                    assert_eq!(
                        g.to_bits(),
                        a.to_bits(),
                        "{ty} {rows}×{cols}: y[{}][{}] against AVX2",
                        j / rows,
                        j % rows
                    );
                }
                // Batches of every size up to n (the 4-wide tiles, each odd remainder, both walks).
                for nb in 2..n {
                    let part = Acts::quantize(ActFormat::Q8, &x[..nb * cols], nb, cols, Isa::Scalar);
                    let mut y = vec![f32::NAN; nb * rows];
                    t.own_rows(&m, &part, 0, rows, &mut y);
                    assert!(
                        y.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty} {rows}×{cols} n={nb}"
                    );
                }
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
                // Each activation row alone (the decode tiles) gives the same bits as the whole batch.
                for i in 0..n {
                    let one = Acts::quantize(ActFormat::Q8, &x[i * cols..(i + 1) * cols], 1, cols, Isa::Scalar);
                    let mut y = vec![f32::NAN; rows];
                    t.own_rows(&m, &one, 0, rows, &mut y);
                    // Also an odd split of the rows (a work item boundary inside a decode tile).
                    let mut y2 = vec![f32::NAN; rows];
                    let cut = rows.min(3);
                    t.own_rows(&m, &one, 0, cut, &mut y2[..cut]);
                    t.own_rows(&m, &one, cut, rows, &mut y2[cut..]);
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

    use super::super::Isa;
    use super::*;

    /// Rounds of alternated measurements; each reports its median.
    const ROUNDS: usize = 9;
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
            (WeightType::Q5_0, 1536, 576, 2),
            (WeightType::Q5_0, 1536, 576, 8),
            (WeightType::Q5_0, 1536, 576, 64),
            (WeightType::Q4_0, 1536, 576, 8),
            (WeightType::Q4_0, 1536, 576, 64),
            (WeightType::Q4_1, 1536, 576, 2),
            (WeightType::Q4_1, 1536, 576, 3),
            (WeightType::Q4_1, 1536, 576, 4),
            (WeightType::Q4_1, 1536, 576, 8),
            (WeightType::Q4_1, 1536, 576, 16),
            (WeightType::Q4_1, 1536, 576, 17),
            (WeightType::Q8_0, 8192, 576, 8),
            (WeightType::Q4_1, 1536, 576, 64),
            (WeightType::Q8_0, 8192, 576, 64),
            (WeightType::Q4_1, 1536, 576, 512),
            (WeightType::Q4K, 1024, 2048, 1),
            (WeightType::Q4K, 640, 2048, 1),
            (WeightType::Q6K, 1024, 2048, 1),
            (WeightType::Q6K, 640, 2048, 1),
            (WeightType::Q5K, 1024, 2048, 1),
            (WeightType::Q4K, 1024, 2048, 8),
            (WeightType::Q6K, 1024, 2048, 8),
            (WeightType::Q4K, 1024, 2048, 64),
            (WeightType::Q6K, 1024, 2048, 64),
            (WeightType::Q5K, 1024, 2048, 64),
        ];
        for (ty, rows, cols, n) in cases {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.1)
                .collect();
            let m = QMatrix::quantize(ty, rows, cols, &v).unwrap_or_else(|e| panic!("{e}"));
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 31 % 200) as f32 / 100.0 - 1.0) * 2.0)
                .collect();
            let acts = Acts::quantize(ty.act_format(), &x, n, cols, Isa::Scalar);
            let mut out = vec![0.0; n * rows];
            let packed = super::super::packed::PackedRows::pack(&m);
            // AVX2, this module's row kernels, then the row-group kernel over packed rows (where the type has it).
            let mut times = [Vec::new(), Vec::new(), Vec::new()];
            for _ in 0..ROUNDS {
                for (j, times) in times.iter_mut().enumerate() {
                    let s = Instant::now();
                    for _ in 0..CALLS {
                        match (j, &packed) {
                            (0, _) => t.avx2().rows(&m, &acts, 0, rows, &mut out),
                            // SAFETY: the token proves the features.
                            (2, Some(p)) => unsafe { packed_rows(&m, p, &acts, 0, rows, &mut out) },
                            _ => t.own_rows(&m, &acts, 0, rows, &mut out),
                        }
                    }
                    times.push(s.elapsed() / CALLS as u32);
                }
            }
            let med = |v: &mut Vec<Duration>| {
                v.sort();
                v[v.len() / 2]
            };
            let (a, b, c) = (med(&mut times[0]), med(&mut times[1]), med(&mut times[2]));
            eprintln!(
                "{ty} {rows}×{cols} n={n}: avx2 {a:?}, avx512 rows {b:?}, packed {c:?}: {:.2}× avx2, {:.2}× rows",
                a.as_secs_f64() / c.as_secs_f64(),
                b.as_secs_f64() / c.as_secs_f64()
            );
        }
    }
}
