//! The row-group kernel: weight rows packed 16 to a group ([`PackedRows`], layout in `kernels/packed.rs`) against
//! Q8 activation rows, one f32 lane per weight row.
//!
//! Bit for bit what the row kernels compute. The row kernels keep, per product, eight f32 lane sums: lane `k` adds,
//! block after block, `(d_w·d_a) · Σ_{j<4} w[4k+j]·a[4k+j]` (the i32 sum exact, converted, then one fused
//! multiply-add), and the result is AVX2's horizontal sum of the eight, `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`, plus
//! the offsets' sum `Σ_blocks m_w·s_a` (multiplied, then added). Here register `k` holds lane `k` of 16 rows' products
//! side by side: the same integer sums (one `vpdpbusd` of 16 rows' 4-weight pieces against the activations' 4 bytes
//! broadcast), the same scale, the same fused multiply-add, the same additions at the end in the same order. What
//! packing saves is the rest: each weight byte is unpacked once for 16 rows, scales come 16 at a time, and no
//! shuffles pair rows into register halves.
//!
//! Soundness: as the parent module's; every load goes through [`load_512`] or [`load_256`], which assert the range
//! inside the slice.

use std::arch::x86_64::*;

use super::super::packed::{GROUP_ROWS, PackedRows, block_offsets};
use super::super::{Acts, BlockQ8, QK, QMatrix, WeightType};

/// Activation rows computed together against one group's unpacked blocks: 8 weight registers, 8 lane sums per
/// activation row and their offsets' sums stay in the 32 registers for 2 (3 spills, measured slower).
const ACT_ROWS: usize = 2;

/// `out[i · (r1 - r0) + (r - r0)] = W[r] · x[i]` for weight rows `[r0, r1)` from `m`'s packed rows `p`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn rows(m: &QMatrix, p: &PackedRows, acts: &Acts, r0: usize, r1: usize, out: &mut [f32]) {
    assert!(r0 <= r1 && r1 <= m.rows() && out.len() == acts.n * (r1 - r0));
    let ty = m.ty();
    let nb = m.cols() / QK;
    let n = acts.n;
    if nb == 0 {
        out.fill(0.0);
        return;
    }
    let xs: Vec<&[BlockQ8]> = (0..n).map(|i| acts.q8_row(i)).collect();
    // Q8_0's weights are stored plus 128: each lane subtracts 128·Σa of its 4 activations, computed once here.
    let corrections: Vec<[i32; 8]> = if ty == WeightType::Q8_0 {
        acts.q8.iter().map(q8_corrections).collect()
    } else {
        Vec::new()
    };
    walk_groups::<ACT_ROWS>(p, r0, r1, n, out, |group, i, take| {
        let mut y = [[0.0f32; GROUP_ROWS]; ACT_ROWS];
        let c = |k: usize| corrections.get((i + k) * nb..(i + k + 1) * nb).unwrap_or(&[]);
        // SAFETY (all): `rows` runs only with the features the tiles need (its own target features).
        match (ty, take) {
            (WeightType::Q8_0, 1) => y[0] = unsafe { tile_q8_0::<1>(group, nb, [xs[i]], [c(0)]) }[0],
            (WeightType::Q8_0, _) => y = unsafe { tile_q8_0::<2>(group, nb, [xs[i], xs[i + 1]], [c(0), c(1)]) },
            (_, 1) => y[0] = unsafe { tile_q45::<1>(ty, group, nb, [xs[i]]) }[0],
            _ => y = unsafe { tile_q45::<2>(ty, group, nb, [xs[i], xs[i + 1]]) },
        }
        y
    });
}

/// The walk both row-group kernels share: each group of `p` overlapping weight rows `[r0, r1)`, the `n` activation
/// rows `A` at a time (`tile(group, first, count)` returns the 16 rows' products of activation rows
/// `first..first + count` in its first `count` entries), copying the rows inside the range to `out`
/// (`out[i · (r1 - r0) + (r - r0)]`). Always inlined, so the tiles inline into each kernel's target-feature body
/// (plain `#[inline]` measured 6 % slower on the K-quants at one activation row).
#[inline(always)]
pub(super) fn walk_groups<const A: usize>(
    p: &PackedRows,
    r0: usize,
    r1: usize,
    n: usize,
    out: &mut [f32],
    mut tile: impl FnMut(&[u8], usize, usize) -> [[f32; GROUP_ROWS]; A],
) {
    let len = r1 - r0;
    for g in r0 / GROUP_ROWS..r1.div_ceil(GROUP_ROWS) {
        let (lo, hi) = ((g * GROUP_ROWS).max(r0), (g * GROUP_ROWS + GROUP_ROWS).min(r1));
        let mut i = 0;
        while i < n {
            let take = A.min(n - i);
            let y = tile(p.group(g), i, take);
            for (k, yk) in y.iter().enumerate().take(take) {
                out[(i + k) * len + lo - r0..(i + k) * len + hi - r0]
                    .copy_from_slice(&yk[lo - g * GROUP_ROWS..hi - g * GROUP_ROWS]);
            }
            i += take;
        }
    }
}

/// 128 times the sum of each 4 activations of a block: what the +128 of Q8_0's packed weights adds to each lane.
fn q8_corrections(a: &BlockQ8) -> [i32; 8] {
    std::array::from_fn(|k| 128 * a.qs[4 * k..4 * k + 4].iter().map(|&v| v as i32).sum::<i32>())
}

/// 64 bytes of `b` from `off`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn load_512(b: &[u8], off: usize) -> __m512i {
    assert!(off + 64 <= b.len());
    // SAFETY: off + 64 <= b.len() (asserted).
    unsafe { _mm512_loadu_si512(b.as_ptr().add(off).cast()) }
}

/// 16 f16 values of `b` from `off`, as f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn load_f16x16(b: &[u8], off: usize) -> __m512 {
    assert!(off + 32 <= b.len());
    // SAFETY: off + 32 <= b.len() (asserted).
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(b.as_ptr().add(off).cast()) })
}

/// Activation bytes `4k..4k + 4` of a block in every i32 lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn act_piece(x: &BlockQ8, k: usize) -> __m512i {
    let q = &x.qs[4 * k..4 * k + 4];
    _mm512_set1_epi32(i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]))
}

/// The row kernels' final sum of the eight lane registers (see the module comment), plus `extra`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn finish(l: &[__m512; 8], extra: __m512) -> [f32; GROUP_ROWS] {
    let a = _mm512_add_ps(_mm512_add_ps(l[0], l[4]), _mm512_add_ps(l[2], l[6]));
    let b = _mm512_add_ps(_mm512_add_ps(l[1], l[5]), _mm512_add_ps(l[3], l[7]));
    let mut y = [0.0f32; GROUP_ROWS];
    // SAFETY: `y` holds exactly 16 f32.
    unsafe { _mm512_storeu_ps(y.as_mut_ptr(), _mm512_add_ps(_mm512_add_ps(a, b), extra)) };
    y
}

/// Q4_0, Q4_1, Q5_0 and Q5_1: one group of 16 rows against `A` activation rows.
/// # Safety
/// The CPU must support the features of [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q45<const A: usize>(
    ty: WeightType,
    group: &[u8],
    nb: usize,
    x: [&[BlockQ8]; A],
) -> [[f32; GROUP_ROWS]; A] {
    let block = GROUP_ROWS * ty.block_bytes();
    let (high, d_at, m_at) = block_offsets(ty);
    // Q4_0's and Q5_0's offset m_w is −8·d_w and −16·d_w.
    let m_per_d = _mm512_set1_ps(if ty == WeightType::Q4_0 { -8.0 } else { -16.0 });
    let low4 = _mm512_set1_epi8(0x0F);
    let x = x.map(|x| &x[..nb]);
    let mut acc = [[_mm512_setzero_ps(); 8]; A];
    let mut msum = [_mm512_setzero_ps(); A];
    for b in 0..nb {
        let blk = &group[b * block..(b + 1) * block];
        let mut w = [_mm512_setzero_si512(); 8];
        for v in 0..4 {
            let n = load_512(blk, 64 * v);
            w[v] = _mm512_and_si512(n, low4);
            w[v + 4] = _mm512_and_si512(_mm512_srli_epi16::<4>(n), low4);
        }
        if let Some(h) = high {
            for (k, wk) in w.iter_mut().enumerate() {
                let at = h + 8 * k;
                let bits = u64::from_le_bytes(blk[at..at + 8].try_into().unwrap_or([0; 8]));
                *wk = _mm512_mask_add_epi8(*wk, bits, *wk, _mm512_set1_epi8(0x10));
            }
        }
        let dw = load_f16x16(blk, d_at);
        let mw = match m_at {
            Some(at) => load_f16x16(blk, at),
            None => _mm512_mul_ps(m_per_d, dw),
        };
        for a in 0..A {
            let xb = &x[a][b];
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
            for (k, &wk) in w.iter().enumerate() {
                // q ≤ 31, |a| ≤ 127: the four products of a lane sum exactly.
                let p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wk, act_piece(xb, k)));
                acc[a][k] = _mm512_fmadd_ps(scale, p, acc[a][k]);
            }
            msum[a] = _mm512_add_ps(msum[a], _mm512_mul_ps(mw, _mm512_set1_ps(xb.s)));
        }
    }
    std::array::from_fn(|a| finish(&acc[a], msum[a]))
}

/// Q8_0: one group of 16 rows against `A` activation rows, `c` holding each block's [`q8_corrections`].
/// # Safety
/// The CPU must support the features of [`rows`].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn tile_q8_0<const A: usize>(
    group: &[u8],
    nb: usize,
    x: [&[BlockQ8]; A],
    c: [&[[i32; 8]]; A],
) -> [[f32; GROUP_ROWS]; A] {
    let block = GROUP_ROWS * WeightType::Q8_0.block_bytes();
    let (_, d_at, _) = block_offsets(WeightType::Q8_0);
    let (x, c) = (x.map(|x| &x[..nb]), c.map(|c| &c[..nb]));
    let mut acc = [[_mm512_setzero_ps(); 8]; A];
    for b in 0..nb {
        let blk = &group[b * block..(b + 1) * block];
        let dw = load_f16x16(blk, d_at);
        for a in 0..A {
            let xb = &x[a][b];
            let scale = _mm512_mul_ps(dw, _mm512_set1_ps(xb.d));
            for k in 0..8 {
                // (w + 128)·a summed exactly (4 · 255 · 127 fits in i32), less 128·Σa.
                let q = _mm512_dpbusd_epi32(_mm512_setzero_si512(), load_512(blk, 64 * k), act_piece(xb, k));
                let p = _mm512_cvtepi32_ps(_mm512_sub_epi32(q, _mm512_set1_epi32(c[a][b][k])));
                acc[a][k] = _mm512_fmadd_ps(scale, p, acc[a][k]);
            }
        }
    }
    std::array::from_fn(|a| finish(&acc[a], _mm512_setzero_ps()))
}

#[cfg(test)]
mod tests {
    use super::super::super::{ActFormat, Isa};
    use super::super::Avx512;
    use super::super::tests::{assert_packed_equals_rows, values};
    use super::*;

    /// On a CPU with AVX-512 VNNI: for every packed type, shape (rows not a multiple of 16, one block, many),
    /// activation count (1 to 7) and split of the rows, the row-group kernel gives exactly the bits of the row
    /// kernels.
    #[test]
    fn packed_rows_equal_the_row_kernels_bit_for_bit() {
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
            for (cols, rows) in [(576, 37), (32, 5), (1536, 16), (96, 33)] {
                let m = QMatrix::quantize(ty, rows, cols, &values(cols as u64 * 3 + rows as u64, rows * cols, 0.2))
                    .unwrap_or_else(|e| panic!("{e}"));
                for n in 1..8 {
                    let mut x = values(cols as u64 + n as u64, n * cols, 4.0);
                    x[..32].fill(0.0); // an all-zero activation block (d = 0)
                    let acts = Acts::quantize(ActFormat::Q8, &x, n, cols, Isa::Scalar);
                    assert_packed_equals_rows(t, &m, &acts);
                }
            }
        }
    }
}
