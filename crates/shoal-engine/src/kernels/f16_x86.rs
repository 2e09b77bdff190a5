//! AVX2+F16C and AVX-512 kernels over f16 rows (see [`super::f16`], whose scalar references they match).
//!
//! Soundness: every function here that uses the instructions carries `#[target_feature(enable = ...)]` and is only
//! reachable through an [`Avx2`] or [`Avx512`] token, which exists only after run-time detection found those
//! features. Rows are cut out of their slices with checked indexing and loads go through fixed-size arrays
//! (`as_chunks`), so no load or store can leave its slice.

use std::arch::x86_64::*;

use super::avx2::Avx2;
use super::avx512::Avx512;
use super::f16::to_f32;

/// Key rows scored together: their sums are independent, so the fused multiply-adds overlap, and each chunk of the
/// query is loaded once for all of them.
const KEYS: usize = 4;
/// Output chunks accumulated together in registers while walking the value rows (of 8 lanes with AVX2, 16 with
/// AVX-512): 8 accumulators keep both FMA ports busy and leave registers for the loads.
const OUT_CHUNKS: usize = 8;

pub(crate) fn scores_avx2(_: Avx2, q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
    unsafe { scores2(q, k, stride, scale, out) }
}

pub(crate) fn accumulate_avx2(_: Avx2, w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
    unsafe { accumulate2(w, v, stride, out) }
}

pub(crate) fn extend_f16_avx2(_: Avx2, out: &mut Vec<u16>, x: &[f32]) {
    // SAFETY: an `Avx2` token exists only if avx2, fma and f16c were detected on this CPU.
    unsafe { extend_f16(out, x) }
}

pub(crate) fn scores_avx512(_: Avx512, q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: an `Avx512` token exists only if avx512f (and avx2, fma, f16c) were detected on this CPU.
    unsafe { scores512(q, k, stride, scale, out) }
}

pub(crate) fn accumulate_avx512(_: Avx512, w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    // SAFETY: an `Avx512` token exists only if avx512f (and avx2, fma, f16c) were detected on this CPU.
    unsafe { accumulate512(w, v, stride, out) }
}

// ---------------------------------------------------------------------------------------------------------------
// AVX2

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(x: &[f32; 8]) -> __m256 {
    // SAFETY: reads exactly the 8 f32 of `x`.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store8(x: &mut [f32; 8], v: __m256) {
    // SAFETY: writes exactly the 8 f32 of `x`.
    unsafe { _mm256_storeu_ps(x.as_mut_ptr(), v) }
}

/// 8 f16 as 8 f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8h(x: &[u16; 8]) -> __m256 {
    // SAFETY: reads exactly the 16 bytes of `x`.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(x.as_ptr().cast()) })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum8(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)))
}

/// q · each of four rows (of q's length), four independent sums over the chunks of 8, plus the scalar tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8x4(q: &[f32], rows: [&[u16]; 4]) -> [f32; 4] {
    let qc = q.as_chunks::<8>().0;
    let [c0, c1, c2, c3] = rows.map(|r| r.as_chunks::<8>().0);
    let [mut a0, mut a1, mut a2, mut a3] = [_mm256_setzero_ps(); 4];
    for ((((qv, k0), k1), k2), k3) in qc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        let qv = load8(qv);
        a0 = _mm256_fmadd_ps(load8h(k0), qv, a0);
        a1 = _mm256_fmadd_ps(load8h(k1), qv, a1);
        a2 = _mm256_fmadd_ps(load8h(k2), qv, a2);
        a3 = _mm256_fmadd_ps(load8h(k3), qv, a3);
    }
    let mut out = [hsum8(a0), hsum8(a1), hsum8(a2), hsum8(a3)];
    add_tails(q, qc.len() * 8, &rows, &mut out);
    out
}

/// q · one row (of q's length).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot8(q: &[f32], row: &[u16]) -> f32 {
    let qc = q.as_chunks::<8>().0;
    let mut acc = _mm256_setzero_ps();
    for (qv, k) in qc.iter().zip(row.as_chunks::<8>().0) {
        acc = _mm256_fmadd_ps(load8h(k), load8(qv), acc);
    }
    let mut out = [hsum8(acc)];
    add_tails(q, qc.len() * 8, &[row], &mut out);
    out[0]
}

/// Adds q · row over the columns from `done` on, in scalar code.
#[inline]
fn add_tails(q: &[f32], done: usize, rows: &[&[u16]], out: &mut [f32]) {
    if done < q.len() {
        for (o, row) in out.iter_mut().zip(rows) {
            *o += q[done..]
                .iter()
                .zip(&row[done..])
                .map(|(&a, &b)| a * to_f32(b))
                .sum::<f32>();
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn scores2(q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
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
        *o = dot8(q, &k[t * stride..t * stride + d]) * scale;
    }
}

/// `C` chunks of 8 outputs += Σ_t w[t] · the same chunks of value row t (`v` starts at the block's first column).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate_block8<const C: usize>(w: &[f32], v: &[u16], stride: usize, out: &mut [[f32; 8]]) {
    let mut acc = [_mm256_setzero_ps(); C];
    for c in 0..C {
        acc[c] = load8(&out[c]);
    }
    for (t, &wt) in w.iter().enumerate() {
        let row = v[t * stride..t * stride + C * 8].as_chunks::<8>().0;
        let wv = _mm256_set1_ps(wt);
        for c in 0..C {
            acc[c] = _mm256_fmadd_ps(wv, load8h(&row[c]), acc[c]);
        }
    }
    for c in 0..C {
        store8(&mut out[c], acc[c]);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn accumulate2(w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    let (chunks, tail) = out.as_chunks_mut::<8>();
    let full = chunks.len();
    let mut c = 0;
    while c + OUT_CHUNKS <= full {
        accumulate_block8::<OUT_CHUNKS>(w, &v[c * 8..], stride, &mut chunks[c..c + OUT_CHUNKS]);
        c += OUT_CHUNKS;
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

/// The columns past the last whole chunk, in scalar code.
#[inline]
fn accumulate_tail(w: &[f32], v: &[u16], stride: usize, first: usize, tail: &mut [f32]) {
    for (t, &wt) in w.iter().enumerate() {
        let row = &v[t * stride + first..t * stride + first + tail.len()];
        for (o, &b) in tail.iter_mut().zip(row) {
            *o += wt * to_f32(b);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn extend_f16(out: &mut Vec<u16>, x: &[f32]) {
    out.reserve(x.len());
    let (chunks, tail) = x.as_chunks::<8>();
    for c in chunks {
        // Round to nearest even, as `half` does.
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(load8(c));
        let mut bits = [0u16; 8];
        // SAFETY: writes exactly the 16 bytes of `bits`.
        unsafe { _mm_storeu_si128(bits.as_mut_ptr().cast(), h) };
        out.extend_from_slice(&bits);
    }
    super::f16::extend_f16_reference(out, tail);
}

// ---------------------------------------------------------------------------------------------------------------
// AVX-512: the same loops 16 lanes wide.

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn load16(x: &[f32; 16]) -> __m512 {
    // SAFETY: reads exactly the 16 f32 of `x`.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn store16(x: &mut [f32; 16], v: __m512) {
    // SAFETY: writes exactly the 16 f32 of `x`.
    unsafe { _mm512_storeu_ps(x.as_mut_ptr(), v) }
}

/// 16 f16 as 16 f32.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn load16h(x: &[u16; 16]) -> __m512 {
    // SAFETY: reads exactly the 32 bytes of `x`.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(x.as_ptr().cast()) })
}

/// [`dot8x4`] 16 lanes wide; what is left (under 16 columns) goes through the AVX2 code.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn dot16x4(q: &[f32], rows: [&[u16]; 4]) -> [f32; 4] {
    let qc = q.as_chunks::<16>().0;
    let [c0, c1, c2, c3] = rows.map(|r| r.as_chunks::<16>().0);
    let [mut a0, mut a1, mut a2, mut a3] = [_mm512_setzero_ps(); 4];
    for ((((qv, k0), k1), k2), k3) in qc.iter().zip(c0).zip(c1).zip(c2).zip(c3) {
        let qv = load16(qv);
        a0 = _mm512_fmadd_ps(load16h(k0), qv, a0);
        a1 = _mm512_fmadd_ps(load16h(k1), qv, a1);
        a2 = _mm512_fmadd_ps(load16h(k2), qv, a2);
        a3 = _mm512_fmadd_ps(load16h(k3), qv, a3);
    }
    let mut out = [a0, a1, a2, a3].map(|a| _mm512_reduce_add_ps(a));
    let done = qc.len() * 16;
    if done < q.len() {
        let rest = dot8x4(&q[done..], rows.map(|r| &r[done..]));
        for (o, r) in out.iter_mut().zip(rest) {
            *o += r;
        }
    }
    out
}

/// [`dot8`] 16 lanes wide.
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn dot16(q: &[f32], row: &[u16]) -> f32 {
    let qc = q.as_chunks::<16>().0;
    let mut acc = _mm512_setzero_ps();
    for (qv, k) in qc.iter().zip(row.as_chunks::<16>().0) {
        acc = _mm512_fmadd_ps(load16h(k), load16(qv), acc);
    }
    let done = qc.len() * 16;
    let rest = if done < q.len() {
        dot8(&q[done..], &row[done..])
    } else {
        0.0
    };
    _mm512_reduce_add_ps(acc) + rest
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn scores512(q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
    let d = q.len();
    let (groups, rest) = out.as_chunks_mut::<KEYS>();
    for (g, o) in groups.iter_mut().enumerate() {
        let t = g * KEYS;
        let mut rows = [&[][..]; KEYS];
        for (r, row) in rows.iter_mut().enumerate() {
            *row = &k[(t + r) * stride..(t + r) * stride + d];
        }
        let s = dot16x4(q, rows);
        for r in 0..KEYS {
            o[r] = s[r] * scale;
        }
    }
    let first = groups.len() * KEYS;
    for (i, o) in rest.iter_mut().enumerate() {
        let t = first + i;
        *o = dot16(q, &k[t * stride..t * stride + d]) * scale;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn accumulate_block16<const C: usize>(w: &[f32], v: &[u16], stride: usize, out: &mut [[f32; 16]]) {
    let mut acc = [_mm512_setzero_ps(); C];
    for c in 0..C {
        acc[c] = load16(&out[c]);
    }
    for (t, &wt) in w.iter().enumerate() {
        let row = v[t * stride..t * stride + C * 16].as_chunks::<16>().0;
        let wv = _mm512_set1_ps(wt);
        for c in 0..C {
            acc[c] = _mm512_fmadd_ps(wv, load16h(&row[c]), acc[c]);
        }
    }
    for c in 0..C {
        store16(&mut out[c], acc[c]);
    }
}

#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn accumulate512(w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    let (chunks, _) = out.as_chunks_mut::<16>();
    let full = chunks.len();
    let mut c = 0;
    while c + OUT_CHUNKS <= full {
        accumulate_block16::<OUT_CHUNKS>(w, &v[c * 16..], stride, &mut chunks[c..c + OUT_CHUNKS]);
        c += OUT_CHUNKS;
    }
    // Head widths of 64 (4 chunks) and 32 (2) in one pass each, so every accumulator chain stays short.
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
