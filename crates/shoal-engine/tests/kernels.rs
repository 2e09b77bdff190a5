//! The quantized kernels: the dispatched (SIMD, threaded) product against the scalar reference, the reference
//! against exact f64 arithmetic, hand-built blocks with known values for every layout, and input validation.

#![allow(clippy::unwrap_used)]

use shoal_engine::kernels::{KernelError, Pool, QMatrix, WeightType, isa};

/// splitmix64: a tiny seeded generator, enough for test data.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal (sum of four uniforms), scaled.
    fn normal(&mut self, sigma: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.unit()).sum::<f32>() - 2.0;
        s * sigma * 1.732
    }
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Activations like a transformer's hidden state: mostly N(0, 1), a few outliers an order of magnitude larger,
/// and now and then an all-zero block.
fn activations(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n * cols).map(|_| rng.normal(1.0)).collect();
    for _ in 0..(n * cols / 97) {
        let i = (rng.next_u64() % (n * cols) as u64) as usize;
        x[i] *= 12.0;
    }
    if cols >= 64 && n > 1 {
        x[cols..cols + 32].iter_mut().for_each(|v| *v = 0.0);
    }
    x
}

/// A matrix of random block bytes with realistic scales: every bit pattern of the quantized values and packed
/// scales occurs, while the f16 fields hold magnitudes like a real model's (weights around 0.01–0.1).
fn random_matrix(rng: &mut Rng, ty: WeightType, rows: usize, cols: usize) -> QMatrix {
    let mut data: Vec<u8> = (0..ty.row_bytes(cols) * rows).map(|_| rng.next_u64() as u8).collect();
    let bb = ty.block_bytes();
    match ty {
        WeightType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.normal(0.05).to_le_bytes());
            }
        }
        WeightType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f16(rng.normal(0.05)));
            }
        }
        WeightType::Q4_0 | WeightType::Q8_0 => {
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.001, 0.02) / if ty == WeightType::Q8_0 { 16.0 } else { 1.0 };
                b[0..2].copy_from_slice(&f16(d));
            }
        }
        WeightType::Q4_1 => {
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.001, 0.02);
                b[0..2].copy_from_slice(&f16(d));
                b[2..4].copy_from_slice(&f16(-d * rng.uniform(6.0, 9.0)));
            }
        }
        WeightType::Q4K => {
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.0002, 0.001);
                b[0..2].copy_from_slice(&f16(d));
                b[2..4].copy_from_slice(&f16(d * rng.uniform(2.0, 6.0)));
            }
        }
        WeightType::Q6K => {
            for b in data.chunks_exact_mut(bb) {
                b[208..210].copy_from_slice(&f16(rng.uniform(0.00002, 0.0001)));
            }
        }
    }
    QMatrix::new(ty, rows, cols, data).unwrap()
}

fn dequantized(m: &QMatrix) -> Vec<f32> {
    let mut w = vec![0.0; m.rows() * m.cols()];
    for (r, row) in w.chunks_exact_mut(m.cols()).enumerate() {
        m.dequantize_row(r, row);
    }
    w
}

fn test_cols(ty: WeightType) -> &'static [usize] {
    if ty.block_elems() == 256 {
        &[256, 512, 1536]
    } else {
        &[256, 576, 1536]
    }
}

/// (a) The dispatched, threaded product equals the scalar reference up to f32 summation order.
#[test]
fn dispatched_matmul_matches_reference() {
    eprintln!("kernels dispatch to {}", isa());
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    let mut rng = Rng(0x5eed);
    for ty in WeightType::ALL {
        for (si, &cols) in test_cols(ty).iter().enumerate() {
            let rows = [7, 193, 64][si];
            let m = random_matrix(&mut rng, ty, rows, cols);
            let w = dequantized(&m);
            for n in [1, 2, 3, 5, 8, 17] {
                let x = activations(&mut rng, n, cols);
                let mut want = vec![0.0; n * rows];
                m.matmul_reference(&x, n, &mut want);
                for pool in &pools {
                    let mut got = vec![f32::NAN; n * rows];
                    m.matmul(&x, n, &mut got, pool);
                    for i in 0..n {
                        for r in 0..rows {
                            let wr = &w[r * cols..(r + 1) * cols];
                            let xr = &x[i * cols..(i + 1) * cols];
                            let mag: f64 = wr.iter().zip(xr).map(|(a, b)| (a * b).abs() as f64).sum();
                            let (g, e) = (got[i * rows + r], want[i * rows + r]);
                            assert!(
                                ((g - e).abs() as f64) <= 1e-5 * mag + 1e-12,
                                "{ty} {rows}×{cols} n={n} threads={}: y[{i}][{r}] = {g}, reference {e} (|w||x| {mag})",
                                pool.threads()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// (b) The reference equals an exact (f64) product of the dequantized weights with the unquantized activations,
/// within what quantizing the activations can change: each activation moves by at most half its block's step
/// (amax/127 over 32 values, or over 256 for Q8_K), so |error| ≤ Σ |w_i| · amax(block of i) / 254, plus f32
/// rounding. F32/F16 weights take f32 activations as they are.
#[test]
fn reference_matches_exact_product_within_activation_quantization() {
    let mut rng = Rng(42);
    for ty in WeightType::ALL {
        let act_block = match ty.block_elems() {
            1 => None,
            32 => Some(32),
            _ => Some(256),
        };
        for &cols in test_cols(ty) {
            let rows = 9;
            let n = 3;
            let m = random_matrix(&mut rng, ty, rows, cols);
            let w = dequantized(&m);
            let x = activations(&mut rng, n, cols);
            let mut y = vec![0.0; n * rows];
            m.matmul_reference(&x, n, &mut y);
            let mut worst = 0.0f64;
            for i in 0..n {
                let xr = &x[i * cols..(i + 1) * cols];
                for r in 0..rows {
                    let wr = &w[r * cols..(r + 1) * cols];
                    let exact: f64 = wr.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag: f64 = wr.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
                    let quant_err: f64 = match act_block {
                        None => 0.0,
                        Some(b) => wr
                            .chunks(b)
                            .zip(xr.chunks(b))
                            .map(|(wb, xb)| {
                                let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs())) as f64;
                                wb.iter().map(|v| v.abs() as f64).sum::<f64>() * amax / 254.0
                            })
                            .sum(),
                    };
                    let err = (y[i * rows + r] as f64 - exact).abs();
                    let bound = quant_err * 1.001 + 1e-5 * mag + 1e-12;
                    assert!(
                        err <= bound,
                        "{ty} cols={cols}: y[{i}][{r}] = {}, exact {exact}, bound {bound}",
                        y[i * rows + r]
                    );
                    worst = worst.max(err / mag.max(1e-30));
                }
            }
            // The bound is not vacuous: the error stays a small fraction of the product's magnitude.
            assert!(worst < 0.05, "{ty} cols={cols}: relative error {worst}");
        }
    }
}

// ------------------------------------------------------------------------------------------------------------
// (c) Hand-built blocks with known values: these check the bit layouts, which random data cannot.

/// One block (or row) of `ty` and the values it must dequantize to, derived from the documented layout.
fn known_block(ty: WeightType) -> (Vec<u8>, Vec<f32>) {
    match ty {
        WeightType::F32 => {
            let v = [1.5f32, -2.25, 0.0, 1e-3, 7.0];
            (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v.to_vec())
        }
        WeightType::F16 => {
            let v = [1.5f32, -2.25, 0.0, 0.125];
            (v.iter().flat_map(|&x| f16(x)).collect(), v.to_vec())
        }
        WeightType::Q4_0 => {
            // d = 0.5; byte j holds element j (low nibble) and element j + 16 (high nibble).
            let mut b = vec![0x00, 0x38];
            b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
            let mut v = vec![0.0; 32];
            for j in 0..16 {
                v[j] = (j as f32 - 8.0) * 0.5;
                v[j + 16] = ((15 - j) as f32 - 8.0) * 0.5;
            }
            (b, v)
        }
        WeightType::Q4_1 => {
            // d = 0.25, m = -1.0.
            let mut b = vec![0x00, 0x34, 0x00, 0xBC];
            b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
            let mut v = vec![0.0; 32];
            for j in 0..16 {
                v[j] = j as f32 * 0.25 - 1.0;
                v[j + 16] = (15 - j) as f32 * 0.25 - 1.0;
            }
            (b, v)
        }
        WeightType::Q8_0 => {
            // d = 2.0; the i8 values -16..15, with -128 last.
            let mut b = vec![0x00, 0x40];
            b.extend((0..32).map(|j| if j == 31 { 0x80 } else { (j as i8 - 16) as u8 }));
            let v = (0..32)
                .map(|j| if j == 31 { -256.0 } else { (j as f32 - 16.0) * 2.0 })
                .collect();
            (b, v)
        }
        WeightType::Q4K => {
            // d = 1.0, dmin = 0.5; scales [1,2,3,4,63,33,17,40], mins [0,1,2,3,60,5,6,7], packed by hand:
            // bytes 0..4 = scale j (6 bits) | top 2 bits of scale j+4; bytes 4..8 = min j | top 2 bits of min j+4;
            // bytes 8..12 = low 4 bits of scale j+4 | low 4 bits of min j+4 << 4.
            let sc = [1.0f32, 2.0, 3.0, 4.0, 63.0, 33.0, 17.0, 40.0];
            let mn = [0.0f32, 1.0, 2.0, 3.0, 60.0, 5.0, 6.0, 7.0];
            let mut b = vec![0x00, 0x3C, 0x00, 0x38];
            b.extend([193, 130, 67, 132, 192, 1, 2, 3, 207, 81, 97, 120]);
            // 64 values per 32 bytes: the low nibbles are sub-block 2c, the high nibbles sub-block 2c+1.
            let mut v = vec![0.0; 256];
            for c in 0..4 {
                for l in 0..32 {
                    let (lo, hi) = ((l % 16) as u8, ((l + c) % 16) as u8);
                    b.push(lo | (hi << 4));
                    v[64 * c + l] = sc[2 * c] * lo as f32 - 0.5 * mn[2 * c];
                    v[64 * c + 32 + l] = sc[2 * c + 1] * hi as f32 - 0.5 * mn[2 * c + 1];
                }
            }
            (b, v)
        }
        WeightType::Q6K => {
            // Element i has the 6-bit value q(i) = (7i + 3) mod 64, scale (i / 16) - 8, d = 0.5.
            let q = |i: usize| ((7 * i + 3) % 64) as u8;
            let mut ql = [0u8; 128];
            let mut qh = [0u8; 64];
            for half in 0..2 {
                for l in 0..32 {
                    let e = |k: usize| q(128 * half + 32 * k + l);
                    // ql[l] = (e0 low | e2 low << 4), ql[32 + l] = (e1 low | e3 low << 4), qh[l] = top bits of e0..e3.
                    ql[64 * half + l] = (e(0) & 15) | ((e(2) & 15) << 4);
                    ql[64 * half + 32 + l] = (e(1) & 15) | ((e(3) & 15) << 4);
                    qh[32 * half + l] = (e(0) >> 4) | ((e(1) >> 4) << 2) | ((e(2) >> 4) << 4) | ((e(3) >> 4) << 6);
                }
            }
            let mut b = ql.to_vec();
            b.extend_from_slice(&qh);
            b.extend((0..16).map(|g| (g as i8 - 8) as u8));
            b.extend([0x00, 0x38]);
            let v = (0..256)
                .map(|i| 0.5 * ((i / 16) as f32 - 8.0) * (q(i) as f32 - 32.0))
                .collect();
            (b, v)
        }
    }
}

#[test]
fn known_blocks_dequantize_to_their_documented_values() {
    for ty in WeightType::ALL {
        let (bytes, want) = known_block(ty);
        assert_eq!(bytes.len(), ty.row_bytes(want.len()), "{ty}: test block size");
        let m = QMatrix::new(ty, 1, want.len(), bytes).unwrap();
        let mut got = vec![f32::NAN; want.len()];
        m.dequantize_row(0, &mut got);
        assert_eq!(got, want, "{ty}");
    }
}

/// With integer activations whose block maximum is exactly 127 the activation quantization is lossless, so the
/// product of a known block is known up to f32 rounding.
#[test]
fn known_blocks_multiply_exactly() {
    let pool = Pool::new(2);
    let mut rng = Rng(7);
    for ty in WeightType::ALL {
        let (bytes, vals) = known_block(ty);
        let cols = vals.len();
        // Three rows: the block, then the block again, then the block once more (rows may not split evenly).
        let rows = 3;
        let data: Vec<u8> = (0..rows).flat_map(|_| bytes.iter().copied()).collect();
        let m = QMatrix::new(ty, rows, cols, data).unwrap();
        let n = 5;
        let mut x: Vec<f32> = (0..n * cols).map(|_| (rng.next_u64() % 255) as f32 - 127.0).collect();
        for row in x.chunks_exact_mut(cols) {
            for blk in row.chunks_mut(ty.block_elems().max(32)) {
                blk[0] = 127.0;
            }
        }
        let mut reference = vec![0.0; n * rows];
        m.matmul_reference(&x, n, &mut reference);
        let mut got = vec![0.0; n * rows];
        m.matmul(&x, n, &mut got, &pool);
        for i in 0..n {
            let xr = &x[i * cols..(i + 1) * cols];
            let want: f64 = vals.iter().zip(xr).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = vals.iter().zip(xr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            for r in 0..rows {
                for (what, y) in [
                    ("reference", reference[i * rows + r]),
                    ("dispatched", got[i * rows + r]),
                ] {
                    assert!(
                        (y as f64 - want).abs() <= 1e-6 * mag,
                        "{ty} {what}: y[{i}][{r}] = {y}, want {want}"
                    );
                }
            }
        }
    }
}

/// The simple quantizers round-trip: each value comes back within half a quantization step.
#[test]
fn quantizers_round_trip() {
    let mut rng = Rng(99);
    for ty in WeightType::ALL {
        let cols = 512;
        let rows = 4;
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.normal(0.05)).collect();
        let m = QMatrix::quantize(ty, rows, cols, &v).unwrap();
        let back = dequantized(&m);
        let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
        // Coarsest steps: 4 bits over the block's range (Q4_K: plus 6-bit scales), 6 bits for Q6_K.
        let tol = match ty {
            WeightType::F32 => 0.0,
            WeightType::F16 => amax * 1e-3,
            WeightType::Q8_0 => amax / 127.0,
            WeightType::Q6K => amax / 16.0,
            _ => amax / 4.0,
        };
        let worst = v.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= tol, "{ty}: worst error {worst} > {tol}");
    }
}

/// (d) Shapes and lengths are checked when a matrix is built, never trusted.
#[test]
fn qmatrix_rejects_bad_shapes_and_lengths() {
    for ty in WeightType::ALL {
        let cols = ty.block_elems() * 4;
        let good = ty.row_bytes(cols) * 3;
        assert!(QMatrix::new(ty, 3, cols, vec![0; good]).is_ok(), "{ty}");
        for bad in [0, good - 1, good + 1, good * 2] {
            let err = QMatrix::new(ty, 3, cols, vec![0; bad]).unwrap_err();
            assert!(matches!(err, KernelError::DataLength { expected, got, .. } if expected == good && got == bad));
        }
        if ty.block_elems() > 1 {
            let err = QMatrix::new(ty, 3, cols + 1, vec![0; good]).unwrap_err();
            assert!(matches!(err, KernelError::ColsNotBlockMultiple { .. }), "{ty}: {err}");
            assert!(err.to_string().contains(ty.name()), "{err}");
        }
    }
    let err = QMatrix::new(WeightType::Q4_1, usize::MAX / 2, 64, vec![]).unwrap_err();
    assert!(matches!(err, KernelError::TooLarge { .. }), "{err}");
    let err = QMatrix::new(WeightType::Q4_1, 2, 576, vec![0; 10]).unwrap_err();
    assert_eq!(err.to_string(), "a Q4_1 matrix of 2×576 needs 720 bytes, got 10");
}

#[test]
fn weight_types_match_ggml() {
    let expect = [
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (3, "Q4_1", 32, 20),
        (8, "Q8_0", 32, 34),
        (12, "Q4_K", 256, 144),
        (14, "Q6_K", 256, 210),
    ];
    for (id, name, elems, bytes) in expect {
        let ty = WeightType::from_ggml_id(id).unwrap();
        assert_eq!(
            (ty.name(), ty.block_elems(), ty.block_bytes(), ty.ggml_id()),
            (name, elems, bytes, id)
        );
    }
    for id in [4, 5, 6, 7, 9, 10, 11, 13, 15, 16, 30, 1000] {
        assert_eq!(WeightType::from_ggml_id(id), None, "{id}");
    }
    assert_eq!(WeightType::Q4_1.row_bytes(576), 360);
    assert_eq!(WeightType::Q8_0.row_bytes(576), 612);
}

#[test]
fn empty_products_and_pool_sizes() {
    let m = QMatrix::quantize(WeightType::Q4_1, 3, 64, &[0.5; 192]).unwrap();
    let mut y: Vec<f32> = vec![];
    m.matmul(&[], 0, &mut y, &Pool::new(2));
    assert_eq!(Pool::new(0).threads(), 1);
    assert_eq!(Pool::new(4).threads(), 4);
    assert!(Pool::default().threads() >= 1);
    assert!(["avx2", "neon", "scalar"].contains(&isa()));
}

/// Batch invariance: a row's result does not depend on which other rows share the product or on the thread split,
/// bit for bit. Continuous batching relies on it: a sequence generates the same tokens alone or batched with others.
#[test]
fn each_row_is_bit_identical_whatever_the_batch() {
    let pools = [Pool::new(1), Pool::new(2)];
    let mut rng = Rng(0xba7c4);
    for ty in WeightType::ALL {
        let cols = test_cols(ty)[1];
        let rows = 193;
        let m = random_matrix(&mut rng, ty, rows, cols);
        let x = activations(&mut rng, 9, cols);
        let mut alone = vec![0.0; 9 * rows];
        for i in 0..9 {
            m.matmul(
                &x[i * cols..(i + 1) * cols],
                1,
                &mut alone[i * rows..(i + 1) * rows],
                &pools[0],
            );
        }
        for pool in &pools {
            for n in [2, 4, 5, 9] {
                let mut y = vec![0.0; n * rows];
                m.matmul(&x[..n * cols], n, &mut y, pool);
                let same = y.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{ty:?}: rows differ when batched {n} at a time on {} threads",
                    pool.threads()
                );
            }
        }
    }
}
