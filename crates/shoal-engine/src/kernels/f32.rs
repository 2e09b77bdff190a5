//! Kernels over rows of f32 values, for attention over an F32 KV cache: scores `q · k` of a query against many key
//! rows, and the weighted sum of many value rows. The rows of one head sit `stride` elements apart inside the cache
//! and are read in place, as [`super::f16`]'s are.
//!
//! The F32 cache is the default because its greedy output is llama.cpp's (`-ctk f32 -ctv f32`), so these kernels do
//! not just match their references closely: they are **bit-identical** to them. A score is eight running sums (lane
//! j takes elements j, j + 8, …; a multiplication then an addition, never fused), added up lane by lane in order; a
//! value row is multiplied by its weight and added to the output, element by element, in row order. The SIMD
//! versions do exactly those operations, eight or sixteen lanes at a time.

use super::{Isa, check_rows};

#[cfg(target_arch = "x86_64")]
use super::f32_x86;

/// Lanes of a score's running sums: the SIMD kernels' 256-bit registers hold one sum each.
pub const SCORE_LANES: usize = 8;

/// `out[t] = scale · (q · k[t·stride .. t·stride + q.len()])` for every `t < out.len()`.
pub fn scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    check_rows(k.len(), out.len(), stride, q.len());
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => f32_x86::scores_avx2(t.avx2(), q, k, stride, scale, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => f32_x86::scores_avx2(t, q, k, stride, scale, out),
        _ => scores_reference(q, k, stride, scale, out),
    }
}

/// `out += Σ_t w[t] · v[t·stride .. t·stride + out.len()]` over every `t < w.len()`, in order of t.
pub fn accumulate(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    check_rows(v.len(), w.len(), stride, out.len());
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => f32_x86::accumulate_avx512(t, w, v, stride, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => f32_x86::accumulate_avx2(t, w, v, stride, out),
        _ => accumulate_reference(w, v, stride, out),
    }
}

/// `a · b` as [`scores`] computes it: eight running sums (multiply, then add), summed in lane order, then the tail.
#[inline]
pub fn dot_reference(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; SCORE_LANES];
    let (ca, cb) = (a.chunks_exact(SCORE_LANES), b.chunks_exact(SCORE_LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..SCORE_LANES {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Scalar [`scores`].
pub fn scores_reference(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    check_rows(k.len(), out.len(), stride, q.len());
    let d = q.len();
    for (t, o) in out.iter_mut().enumerate() {
        *o = dot_reference(q, &k[t * stride..t * stride + d]) * scale;
    }
}

/// Scalar [`accumulate`].
pub fn accumulate_reference(w: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    check_rows(v.len(), w.len(), stride, out.len());
    let d = out.len();
    for (t, &wt) in w.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&v[t * stride..t * stride + d]) {
            *o += wt * x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift data in [-2, 2) with some exact zeros and negative zeros.
    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                match i % 97 {
                    5 => 0.0,
                    6 => -0.0,
                    _ => ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0,
                }
            })
            .collect()
    }

    /// The dispatched kernels equal the references bit for bit, for head widths with and without tails, any row
    /// count (groups of 4 keys and the rest), and rows far apart.
    #[test]
    fn kernels_equal_their_references_bit_for_bit() {
        for d in [1, 7, 8, 24, 40, 64, 80, 96, 128, 200, 256] {
            for rows in [0, 1, 3, 4, 5, 9, 64, 67] {
                let stride = d * 3 + 5;
                let k = data(rows.max(1) * stride, d as u64 * 31 + rows as u64);
                let q = data(d, 7 + d as u64);
                let mut want = vec![0.0; rows];
                let mut got = vec![0.0; rows];
                scores_reference(&q, &k, stride, 0.125, &mut want);
                scores(&q, &k, stride, 0.125, &mut got);
                assert_eq!(
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "scores d {d} rows {rows}"
                );
                let w = data(rows, 99 + rows as u64);
                let mut want = data(d, 3);
                let mut got = want.clone();
                accumulate_reference(&w, &k, stride, &mut want);
                accumulate(&w, &k, stride, &mut got);
                assert_eq!(
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "accumulate d {d} rows {rows}"
                );
            }
        }
    }

    /// The reference dot is the engine's `ops::dot` (what attention over an F32 cache has always computed).
    #[test]
    fn dot_reference_is_the_engines_dot() {
        for d in [8, 13, 64, 256] {
            let (a, b) = (data(d, 1), data(d, 2));
            assert_eq!(dot_reference(&a, &b).to_bits(), crate::ops::dot(&a, &b).to_bits());
        }
    }
}
