//! AVX2 and AVX-512 kernels over f32 rows (see [`super::f32`], whose scalar references they reproduce bit for bit:
//! the same multiplications and additions, unfused, in the same order).
//!
//! Soundness: every function here that uses the instructions carries `#[target_feature(enable = ...)]` and is only
//! reachable through an [`Avx2`] or [`Avx512`] token, which exists only after run-time detection found those
//! features. Rows are cut out of their slices with checked indexing and loads go through fixed-size arrays
//! (`as_chunks`), so no load or store can leave its slice.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::f32::{SCORE_LANES, dot_reference};

/// Key rows scored together: their sums are independent, so the additions overlap and each chunk of the query is
/// loaded once for all of them.
const KEYS: usize = 4;

pub(crate) fn scores_avx2(_: Avx2, q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: an `Avx2` token exists only if avx2 and fma were detected on this CPU.
    unsafe { scores2(q, k, stride, scale, out) }
}

pub(crate) fn accumulate_avx2(_: Avx2, w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: an `Avx2` token exists only if avx2 and fma were detected on this CPU.
    unsafe { accumulate2(w, v, stride, out) }
}

pub(crate) fn accumulate_avx512(_: Avx512, w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    // SAFETY: an `Avx512` token exists only if avx512f (and avx2, fma) were detected on this CPU.
    unsafe { accumulate512(w, v, stride, out) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn load8(x: &[f32; 8]) -> __m256 {
    // SAFETY: reads exactly the 8 f32 of `x`.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn store8(x: &mut [f32; 8], v: __m256) {
    // SAFETY: writes exactly the 8 f32 of `x`.
    unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
}

/// The eight lanes summed in lane order, as the reference's `iter().sum()` does.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn lane_sum(v: __m256) -> f32 {
    let mut lanes = [0.0f32; SCORE_LANES];
    store8(&mut lanes, v);
    lanes.iter().sum::<f32>()
}

/// The reference's tail: the elements past the last full chunk of 8, multiplied and summed in order.
#[inline]
fn tail(q: &[f32], row: &[f32], done: usize) -> f32 {
    q[done..].iter().zip(&row[done..]).map(|(x, y)| x * y).sum()
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn dot8x4(q: &[f32], rows: [&[f32]; KEYS]) -> [f32; KEYS] {
    let qc = q.as_chunks::<8>().0;
    let [c0, c1, c2, c3] = rows.map(|r| r.as_chunks::<8>().0);
    let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); KEYS];
    for ((((qv, k0), k1), k2), k3) in qc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        let qv = load8(qv);
        // Multiply, then add: never fused, as the reference's `acc[j] += x[j] * y[j]` is not.
        a0 = _mm256_add_ps(a0, _mm256_mul_ps(qv, load8(k0)));
        a1 = _mm256_add_ps(a1, _mm256_mul_ps(qv, load8(k1)));
        a2 = _mm256_add_ps(a2, _mm256_mul_ps(qv, load8(k2)));
        a3 = _mm256_add_ps(a3, _mm256_mul_ps(qv, load8(k3)));
    }
    let done = qc.len() * 8;
    let sums = [a0, a1, a2, a3].map(|a| lane_sum(a));
    let mut out = [0.0; KEYS];
    for r in 0..KEYS {
        out[r] = sums[r] + tail(q, rows[r], done);
    }
    out
}

#[target_feature(enable = "avx2,fma")]
fn scores2(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let (groups, rest) = out.as_chunks_mut::<KEYS>();
    for (g, o) in groups.iter_mut().enumerate() {
        let t = g * KEYS;
        let mut rows = [&[][..]; KEYS];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = &k[(t + r) * stride..(t + r) * stride + d];
        }
        let s = dot8x4(q, rows);
        for r in 0..KEYS {
            o[r] = s[r] * scale;
        }
    }
    let first = groups.len() * KEYS;
    for (i, o) in rest.iter_mut().enumerate() {
        let t = first + i;
        *o = dot_reference(q, &k[t * stride..t * stride + d]) * scale;
    }
}

/// `out[c] += Σ_t w[t] · row_t[c]` for C chunks of 8 held in registers across the rows.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn accumulate_block8<const C: usize>(w: &[f32], v: &[f32], stride: usize, out: &mut [[f32; 8]]) {
    let mut acc = [_mm256_setzero_ps(); C];
    for c in 0..C {
        acc[c] = load8(&out[c]);
    }
    for (t, &wt) in w.iter().enumerate() {
        let row = v[t * stride..t * stride + C * 8].as_chunks::<8>().0;
        let wv = _mm256_set1_ps(wt);
        for c in 0..C {
            acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(wv, load8(&row[c])));
        }
    }
    for c in 0..C {
        store8(&mut out[c], acc[c]);
    }
}

#[inline]
fn accumulate_tail(w: &[f32], v: &[f32], stride: usize, first: usize, tail: &mut [f32]) {
    for (t, &wt) in w.iter().enumerate() {
        let row = &v[t * stride + first..t * stride + first + tail.len()];
        for (o, &x) in tail.iter_mut().zip(row) {
            *o += wt * x;
        }
    }
}

#[target_feature(enable = "avx2,fma")]
fn accumulate2(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let (chunks, tail) = out.as_chunks_mut::<8>();
    let full = chunks.len();
    let mut c = 0;
    while c + 8 <= full {
        accumulate_block8::<8>(w, &v[c * 8..], stride, &mut chunks[c..c + 8]);
        c += 8;
    }
    if c + 4 <= full {
        accumulate_block8::<4>(w, &v[c * 8..], stride, &mut chunks[c..c + 4]);
        c += 4;
    }
    if c + 2 <= full {
        accumulate_block8::<2>(w, &v[c * 8..], stride, &mut chunks[c..c + 2]);
        c += 2;
    }
    if c < full {
        accumulate_block8::<1>(w, &v[c * 8..], stride, &mut chunks[c..c + 1]);
    }
    accumulate_tail(w, v, stride, full * 8, tail);
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn load16(x: &[f32; 16]) -> __m512 {
    // SAFETY: reads exactly the 16 f32 of `x`.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn store16(x: &mut [f32; 16], v: __m512) {
    // SAFETY: writes exactly the 16 f32 of `x`.
    unsafe { _mm512_storeu_ps(x.as_mut_ptr(), v) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma")]
fn accumulate_block16<const C: usize>(w: &[f32], v: &[f32], stride: usize, out: &mut [[f32; 16]]) {
    let mut acc = [_mm512_setzero_ps(); C];
    for c in 0..C {
        acc[c] = load16(&out[c]);
    }
    for (t, &wt) in w.iter().enumerate() {
        let row = v[t * stride..t * stride + C * 16].as_chunks::<16>().0;
        let wv = _mm512_set1_ps(wt);
        for c in 0..C {
            acc[c] = _mm512_add_ps(acc[c], _mm512_mul_ps(wv, load16(&row[c])));
        }
    }
    for c in 0..C {
        store16(&mut out[c], acc[c]);
    }
}

#[target_feature(enable = "avx512f,avx2,fma")]
fn accumulate512(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let (chunks, _) = out.as_chunks_mut::<16>();
    let full = chunks.len();
    let mut c = 0;
    while c + 8 <= full {
        accumulate_block16::<8>(w, &v[c * 16..], stride, &mut chunks[c..c + 8]);
        c += 8;
    }
    // Head widths of 64 (4 chunks) and 32 (2) in one pass each.
    if c + 4 <= full {
        accumulate_block16::<4>(w, &v[c * 16..], stride, &mut chunks[c..c + 4]);
        c += 4;
    }
    if c + 2 <= full {
        accumulate_block16::<2>(w, &v[c * 16..], stride, &mut chunks[c..c + 2]);
        c += 2;
    }
    if c < full {
        accumulate_block16::<1>(w, &v[c * 16..], stride, &mut chunks[c..c + 1]);
    }
    // Under 16 columns left: the AVX2 loop (chunks of 8, then scalar).
    let done = full * 16;
    if done < out.len() {
        accumulate2(w, &v[done..], stride, &mut out[done..]);
    }
}
