//! Kernels over rows of f16 values (IEEE binary16 bits), for attention over an F16 KV cache: scores `q · k` of a
//! query against many key rows, the weighted sum of many value rows, and the f32 → f16 conversion of new rows.
//!
//! The rows of one head sit `stride` elements apart inside the cache (the other kv heads lie between them), so the
//! kernels read them in place: nothing converts a whole cache to f32. Each function has a portable scalar reference
//! (`*_reference`, the oracle of the tests) and is dispatched like the matrix kernels ([`super::isa`]): AVX-512 or
//! AVX2 with F16C on x86_64, the scalar code elsewhere (aarch64's f16 conversions are not stable Rust yet).

use half::f16;

use super::{Isa, check_rows};

#[cfg(target_arch = "x86_64")]
use super::f16_x86;

/// `out[t] = scale · (q · k[t·stride .. t·stride + q.len()])` for every `t < out.len()`.
pub fn scores(q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
    check_rows(k.len(), out.len(), stride, q.len());
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => f16_x86::scores_avx512(t, q, k, stride, scale, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => f16_x86::scores_avx2(t, q, k, stride, scale, out),
        _ => scores_reference(q, k, stride, scale, out),
    }
}

/// `out += Σ_t w[t] · v[t·stride .. t·stride + out.len()]` over every `t < w.len()`.
pub fn accumulate(w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    check_rows(v.len(), w.len(), stride, out.len());
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => f16_x86::accumulate_avx512(t, w, v, stride, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => f16_x86::accumulate_avx2(t, w, v, stride, out),
        _ => accumulate_reference(w, v, stride, out),
    }
}

/// Appends `x` to `out` as f16 bits, rounding to nearest even (as `half` and llama.cpp's `-ctk f16` do).
pub fn extend_f16(out: &mut Vec<u16>, x: &[f32]) {
    match Isa::get() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512(t) => f16_x86::extend_f16_avx2(t.avx2(), out, x),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(t) => f16_x86::extend_f16_avx2(t, out, x),
        _ => extend_f16_reference(out, x),
    }
}

/// 2^112: rebiases an f16 exponent (bias 15) placed in an f32's exponent field to the f32 bias (127).
const F16_REBIAS: f32 = f32::from_bits((254 - 15) << 23);
/// The f16 exponent and mantissa bits of an infinity (and, with a nonzero mantissa, of a NaN).
const F16_EXP_MASK: u32 = 0x7c00;

/// The value of f16 bits, exactly. Branch-free so the scalar loops vectorize without F16C (the path of aarch64 and
/// of `SHOAL_KERNELS=scalar`): the exponent and mantissa shifted into an f32's place read as a number 2^112 too
/// small, subnormals included (they land on f32 subnormals), so one multiplication rebiases them; infinities and
/// NaNs keep an all-ones exponent instead.
#[inline]
pub fn to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits & 0x8000) << 16;
    let rest = u32::from(bits & 0x7fff);
    let finite = (f32::from_bits(rest << 13) * F16_REBIAS).to_bits();
    let special = (rest << 13) | 0x7f80_0000;
    f32::from_bits(sign | if rest >= F16_EXP_MASK { special } else { finite })
}

/// Scalar [`scores`]: eight running sums per row, like the SIMD kernels' lanes, so the results stay close.
pub fn scores_reference(q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
    check_rows(k.len(), out.len(), stride, q.len());
    let d = q.len();
    for (t, o) in out.iter_mut().enumerate() {
        let row = &k[t * stride..t * stride + d];
        let mut acc = [0.0f32; 8];
        let (qc, kc) = (q.chunks_exact(8), row.chunks_exact(8));
        let tail: f32 = qc
            .remainder()
            .iter()
            .zip(kc.remainder())
            .map(|(&a, &b)| a * to_f32(b))
            .sum();
        for (a, b) in qc.zip(kc) {
            for j in 0..8 {
                acc[j] += a[j] * to_f32(b[j]);
            }
        }
        *o = (acc.iter().sum::<f32>() + tail) * scale;
    }
}

/// Scalar [`accumulate`].
pub fn accumulate_reference(w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
    check_rows(v.len(), w.len(), stride, out.len());
    let d = out.len();
    for (t, &wt) in w.iter().enumerate() {
        for (o, &b) in out.iter_mut().zip(&v[t * stride..t * stride + d]) {
            *o += wt * to_f32(b);
        }
    }
}

/// Scalar [`extend_f16`].
pub fn extend_f16_reference(out: &mut Vec<u16>, x: &[f32]) {
    out.extend(x.iter().map(|&v| f16::from_f32(v).to_bits()));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64, enough for test data.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }

        fn f32s(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.next() * scale).collect()
        }

        fn f16s(&mut self, n: usize, scale: f32) -> Vec<u16> {
            let mut out = Vec::new();
            extend_f16_reference(&mut out, &self.f32s(n, scale));
            out
        }
    }

    /// Head widths of the families we run (64, 128, 256) and awkward ones that exercise every tail path.
    const WIDTHS: [usize; 8] = [1, 7, 8, 24, 64, 72, 128, 256];
    /// Key counts around the kernels' groups of rows.
    const COUNTS: [usize; 7] = [0, 1, 3, 4, 5, 17, 100];

    /// Runs `check` with every kernel set this CPU has (the scalar reference included).
    fn each_isa(mut check: impl FnMut(&str, Isa)) {
        check("scalar", Isa::Scalar);
        #[cfg(target_arch = "x86_64")]
        {
            if let Some(t) = super::super::avx2::Avx2::detect() {
                check("avx2", Isa::Avx2(t));
            }
            if let Some(t) = super::super::avx512::Avx512::detect() {
                check("avx512", Isa::Avx512(t));
            }
        }
    }

    fn scores_with(isa: Isa, q: &[f32], k: &[u16], stride: usize, scale: f32, out: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(t) => f16_x86::scores_avx512(t, q, k, stride, scale, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => f16_x86::scores_avx2(t, q, k, stride, scale, out),
            _ => scores_reference(q, k, stride, scale, out),
        }
    }

    fn accumulate_with(isa: Isa, w: &[f32], v: &[u16], stride: usize, out: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(t) => f16_x86::accumulate_avx512(t, w, v, stride, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(t) => f16_x86::accumulate_avx2(t, w, v, stride, out),
            _ => accumulate_reference(w, v, stride, out),
        }
    }

    /// Within f32 rounding of differently ordered sums: relative to the sum of the terms' magnitudes.
    fn close(got: f32, want: f32, magnitude: f32) -> bool {
        (got - want).abs() <= 1e-5 * magnitude + 1e-30
    }

    #[test]
    fn scores_match_the_reference() {
        let mut rng = Rng(7);
        each_isa(|name, isa| {
            for d in WIDTHS {
                for count in COUNTS {
                    // Rows of one head among three kv heads, starting one head in, as attention reads them.
                    let stride = 3 * d;
                    let q = rng.f32s(d, 2.0);
                    let k = rng.f16s(count * stride + d, 4.0);
                    let (mut got, mut want) = (vec![f32::NAN; count], vec![0.0; count]);
                    scores_with(isa, &q, &k[d..], stride, 0.125, &mut got);
                    scores_reference(&q, &k[d..], stride, 0.125, &mut want);
                    for t in 0..count {
                        let row = &k[d + t * stride..d + t * stride + d];
                        let mag: f32 = q.iter().zip(row).map(|(&a, &b)| (a * to_f32(b)).abs()).sum::<f32>() * 0.125;
                        assert!(
                            close(got[t], want[t], mag),
                            "{name} d={d} count={count} t={t}: {} vs {}",
                            got[t],
                            want[t]
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn accumulate_matches_the_reference() {
        let mut rng = Rng(11);
        each_isa(|name, isa| {
            for d in WIDTHS {
                for count in COUNTS {
                    let stride = 2 * d + 1;
                    let w = rng.f32s(count, 1.0);
                    let v = rng.f16s(count * stride + d, 3.0);
                    let start = rng.f32s(d, 1.0);
                    let (mut got, mut want) = (start.clone(), start.clone());
                    accumulate_with(isa, &w, &v, stride, &mut got);
                    accumulate_reference(&w, &v, stride, &mut want);
                    for j in 0..d {
                        let mag = start[j].abs()
                            + (0..count)
                                .map(|t| (w[t] * to_f32(v[t * stride + j])).abs())
                                .sum::<f32>();
                        assert!(
                            close(got[j], want[j], mag),
                            "{name} d={d} count={count} j={j}: {} vs {}",
                            got[j],
                            want[j]
                        );
                    }
                }
            }
        });
    }

    #[test]
    fn every_f16_reads_as_half_reads_it() {
        for bits in 0..=u16::MAX {
            let (got, want) = (to_f32(bits), f16::from_bits(bits).to_f32());
            if want.is_nan() {
                assert!(got.is_nan(), "{bits:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{bits:#06x}");
            }
        }
    }

    #[test]
    fn conversion_matches_half_bit_for_bit() {
        let mut rng = Rng(3);
        let mut x = rng.f32s(1000, 70_000.0);
        // Ties, subnormals, zeros, infinities and overflow, where rounding modes differ.
        x.extend([
            0.0,
            -0.0,
            1.0 + f32::EPSILON * 4096.0,
            1.000_488_3,
            5.96e-8,
            2.98e-8,
            1e-10,
            65504.0,
            65520.0,
            1e9,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        for len in [0, 1, 7, 8, 9, 33, x.len()] {
            let mut want = vec![1, 2];
            extend_f16_reference(&mut want, &x[..len]);
            #[cfg(target_arch = "x86_64")]
            if let Some(t) = super::super::avx2::Avx2::detect() {
                let mut got = vec![1, 2];
                f16_x86::extend_f16_avx2(t, &mut got, &x[..len]);
                assert_eq!(got, want, "len {len}");
            }
            let mut got = vec![1, 2];
            extend_f16(&mut got, &x[..len]);
            assert_eq!(got, want, "len {len}");
        }
    }

    #[test]
    #[should_panic(expected = "need more than")]
    fn rows_past_the_end_are_refused() {
        let mut out = [0.0; 3];
        scores(&[1.0; 4], &[0; 11], 4, 1.0, &mut out);
    }
}
