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
use super::{Acts, BlockQ8K, QMatrix, WeightType};

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

/// Walks weight rows `[r0, r1)` × all activation rows: up to [`ROW_AT_A_TIME_MAX`] activation rows (decode steps,
/// batched or not), 4 weight rows (2 registers) against one activation row at a time; more rows (prefill), 2 weight
/// rows × 4 activation rows (4 registers), so each unpacked weight block is used 4 times and each activation block
/// twice while in registers.
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

/// Up to this many activation rows, weight rows are walked one activation row at a time (the decode tile); more rows
/// take the 2 × 4 tile. Measured with the `avx512_against_avx2` bench: at 8 rows the decode tile costs half of the
/// 2 × 4 tile's time.
const ROW_AT_A_TIME_MAX: usize = 16;
/// Activation rows whose table is built and walked together by the row-at-a-time walk (8 × 18 blocks of 208 bytes
/// for a 576-wide row: 30 KiB, within L1).
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
    if n <= ROW_AT_A_TIME_MAX {
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
        return;
    }
    // Activation rows in pairs (0, 1), (2, 3), …, an odd last one with itself.
    let pairs: Vec<(usize, usize)> = (0..n).step_by(2).map(|i| (i, (i + 1).min(n - 1))).collect();
    // Two pairs of activation rows at a time (their table stays in L1), against every weight row of the range.
    for group in pairs.chunks(2) {
        act_table(acts, group, table);
        let t: Vec<&[ActBlocks]> = table.chunks_exact(nb).collect();
        let mut r = r0;
        while r < r1 {
            // An odd last row pairs with itself (computed twice, stored once).
            let rb = (r + 1).min(r1 - 1);
            let (wa, wb) = (K::row(m, r), K::row(m, rb));
            if let [(i, i2), (k, k2)] = *group {
                // SAFETY: `drive` runs only with the features `tile` needs (its own target features).
                let y = unsafe { K::tile::<4>([wa, wa, wb, wb], [wa, wa, wb, wb], [t[0], t[1], t[0], t[1]]) };
                for (row, ys) in [(r, [y[0], y[1]]), (rb, [y[2], y[3]])] {
                    out[i * len + row - r0] = ys[0][0];
                    out[i2 * len + row - r0] = ys[0][1];
                    out[k * len + row - r0] = ys[1][0];
                    out[k2 * len + row - r0] = ys[1][1];
                }
            } else {
                let (i, i2) = group[0];
                // SAFETY: `drive` runs only with the features `tile` needs (its own target features).
                let y = unsafe { K::tile::<2>([wa, wb], [wa, wb], [t[0], t[0]]) };
                for (row, ys) in [(r, y[0]), (rb, y[1])] {
                    out[i * len + row - r0] = ys[0];
                    out[i2 * len + row - r0] = ys[1];
                }
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

// ---------------------------------------------------------------------------------------------------------------
// K-quants (256-weight super-blocks against Q8_K activations)

/// One K-quant weight type's kernel: `P` pairs of weight rows (one row per 256-bit half) against `N` activation rows,
/// `P · N` registers. Activation blocks are read straight from the [`BlockQ8K`]s: unlike Q8 blocks they need no
/// per-block preparation worth a table (their sums of 16 are stored).
trait KKernel {
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
fn drive_k<K: KKernel>(m: &QMatrix, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
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
struct Q4K;

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
struct Q5K;

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
struct Q6K;

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
                // Past the row-at-a-time limit, so both walks are checked against each other.
                let n = ROW_AT_A_TIME_MAX + 3;
                let mut x = values(cols as u64, n * cols, 4.0);
                x[..32].fill(0.0); // an all-zero activation block (d = 0)
                let acts = Acts::quantize(ActFormat::Q8, &x, n, cols, Isa::Scalar);
                let mut want = vec![0.0; n * rows];
                scalar::rows(&m, &acts, 0, rows, &mut want);
                let mut got = vec![f32::NAN; n * rows];
                t.rows(&m, &acts, 0, rows, &mut got);
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
                    t.rows(&m, &part, 0, rows, &mut y);
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
                    t.rows(&m, &one, 0, rows, &mut y);
                    // Also an odd split of the rows (a work item boundary inside a decode tile).
                    let mut y2 = vec![f32::NAN; rows];
                    let cut = rows.min(3);
                    t.rows(&m, &one, 0, cut, &mut y2[..cut]);
                    t.rows(&m, &one, cut, rows, &mut y2[cut..]);
                    for r in 0..rows {
                        let b = got[i * rows + r].to_bits();
                        assert_eq!(y[r].to_bits(), b, "{ty} {rows}×{cols}: row {r} of x[{i}] alone");
                        assert_eq!(y2[r].to_bits(), b, "{ty} {rows}×{cols}: row {r} of x[{i}] split");
                    }
                }
            }
        }
    }

    /// A K-quant matrix of random bytes (every scale, min and bit pattern, Q6_K's negative scales too), with finite
    /// f16 d (and dmin) of either sign.
    fn random_k_matrix(ty: WeightType, rows: usize, cols: usize, seed: u64) -> QMatrix {
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

/// Side-by-side timing of the AVX-512 and AVX2 kernels in one process, alternated so a shared machine's load hits
/// both alike: `cargo test --release -p shoal-engine --lib kernels::avx512::bench -- --ignored --nocapture`.
#[cfg(test)]
mod bench {
    use std::time::{Duration, Instant};

    use super::super::{Isa, compute_rows};
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
