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

/// The bf16 truncation of `v` (the top half of its bits).
fn bf16(v: f32) -> [u8; 2] {
    ((v.to_bits() >> 16) as u16).to_le_bytes()
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
        WeightType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&bf16(rng.normal(0.05)));
            }
        }
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => {
            // Divided by the largest |q| over 8, so the weights stay around 0.01–0.1 whatever the bit width.
            let div = match ty {
                WeightType::Q8_0 => 16.0,
                WeightType::Q5_0 => 2.0,
                _ => 1.0,
            };
            for b in data.chunks_exact_mut(bb) {
                b[0..2].copy_from_slice(&f16(rng.uniform(0.001, 0.02) / div));
            }
        }
        WeightType::Q4_1 | WeightType::Q5_1 => {
            let levels = if ty == WeightType::Q5_1 { 31.0 } else { 15.0 };
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.001, 0.02) * 15.0 / levels;
                b[0..2].copy_from_slice(&f16(d));
                b[2..4].copy_from_slice(&f16(-d * levels * rng.uniform(0.4, 0.6)));
            }
        }
        WeightType::Q2K => {
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.001, 0.005);
                b[80..82].copy_from_slice(&f16(d));
                b[82..84].copy_from_slice(&f16(d * rng.uniform(0.5, 2.0)));
            }
        }
        WeightType::Q3K => {
            for b in data.chunks_exact_mut(bb) {
                b[108..110].copy_from_slice(&f16(rng.uniform(0.0002, 0.001)));
            }
        }
        WeightType::Q5K => {
            for b in data.chunks_exact_mut(bb) {
                let d = rng.uniform(0.0001, 0.0005);
                b[0..2].copy_from_slice(&f16(d));
                b[2..4].copy_from_slice(&f16(d * rng.uniform(4.0, 12.0)));
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

/// (a') Packed rows (`QMatrix::with_packed_rows`: the row-group kernels on an AVX-512 VNNI machine; elsewhere the
/// matrix is unchanged) give exactly the bits of the unpacked product, for every type, batch and thread count.
#[test]
fn packed_rows_give_the_unpacked_bits() {
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    let mut rng = Rng(0x9ac4);
    let mut packed_types = Vec::new();
    for ty in WeightType::ALL {
        for (si, &cols) in test_cols(ty).iter().enumerate() {
            let rows = [7, 193, 64][si];
            let m = random_matrix(&mut rng, ty, rows, cols);
            let packed = m.clone().with_packed_rows();
            if packed.packed_bytes() > 0 && !packed_types.contains(&ty) {
                packed_types.push(ty);
            }
            for n in [1, 2, 3, 5, 8, 17] {
                let x = activations(&mut rng, n, cols);
                let mut want = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut want, &pools[0]);
                for pool in &pools {
                    let mut got = vec![f32::NAN; n * rows];
                    packed.matmul(&x, n, &mut got, pool);
                    for (j, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            w.to_bits(),
                            "{ty} {rows}×{cols} n={n} threads={}: y[{}][{}] packed {g}, unpacked {w}",
                            pool.threads(),
                            j / rows,
                            j % rows
                        );
                    }
                }
            }
        }
    }
    eprintln!("packed on this machine ({}): {packed_types:?}", isa());
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
        WeightType::BF16 => {
            // The top 16 bits of each f32, little-endian: 1.5 = 0x3FC0, -2.25 = 0xC010, 0.125 = 0x3E00,
            // -2^-7 = 0xBC00, 3·2^99 = 0x71C0.
            let b = vec![0xC0, 0x3F, 0x10, 0xC0, 0x00, 0x00, 0x00, 0x3E, 0x00, 0xBC, 0xC0, 0x71];
            (b, vec![1.5, -2.25, 0.0, 0.125, -0.0078125, 3.0 * 2f32.powi(99)])
        }
        WeightType::Q5_0 | WeightType::Q5_1 => {
            // Element j has the 5-bit value q(j) = (7j + 3) mod 32. Q5_0: d = 0.5, value (q - 16)·d. Q5_1:
            // d = 0.25, m = -1.0, value q·d + m. After the f16 header: a little-endian u32 whose bit j is q(j)'s
            // fifth bit, then byte j (0..16) = low 4 bits of q(j) | low 4 bits of q(j + 16) << 4.
            let q = |j: usize| ((7 * j + 3) % 32) as u32;
            let mut b = if ty == WeightType::Q5_0 {
                vec![0x00, 0x38]
            } else {
                vec![0x00, 0x34, 0x00, 0xBC]
            };
            let qh = (0..32).fold(0u32, |h, j| h | ((q(j) >> 4) << j));
            b.extend(qh.to_le_bytes());
            b.extend((0..16).map(|j| ((q(j) & 15) | ((q(j + 16) & 15) << 4)) as u8));
            let v = (0..32)
                .map(|j| {
                    if ty == WeightType::Q5_0 {
                        (q(j) as f32 - 16.0) * 0.5
                    } else {
                        q(j) as f32 * 0.25 - 1.0
                    }
                })
                .collect();
            (b, v)
        }
        WeightType::Q2K => {
            // Group g (16 elements) has scale sc(g) = (3g + 1) mod 16 and min m(g) = (5g + 2) mod 16 in byte g
            // (scale low nibble); element e has the 2-bit value q(e) = (3e + e / 7) mod 4; d = 0.5, dmin = 0.25;
            // value d·sc·q − dmin·m. Element 128h + 32j + l is bits 2j..2j+2 of qs[32h + l].
            let sc = |g: usize| ((3 * g + 1) % 16) as u8;
            let mn = |g: usize| ((5 * g + 2) % 16) as u8;
            let q = |e: usize| ((3 * e + e / 7) % 4) as u8;
            let mut b: Vec<u8> = (0..16).map(|g| sc(g) | (mn(g) << 4)).collect();
            let mut qs = [0u8; 64];
            for e in 0..256 {
                let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
                qs[32 * h + l] |= q(e) << (2 * j);
            }
            b.extend_from_slice(&qs);
            b.extend([0x00, 0x38, 0x00, 0x34]);
            let v = (0..256)
                .map(|e| 0.5 * sc(e / 16) as f32 * q(e) as f32 - 0.25 * mn(e / 16) as f32)
                .collect();
            (b, v)
        }
        WeightType::Q3K => {
            // Group g has the 6-bit scale s(g) = (7g + 5) mod 64 (used as s − 32); element e has the 3-bit value
            // u(e) = (5e + e / 9) mod 8 (used as u − 4); d = 0.5; value d·(s − 32)·(u − 4). Element 128h + 32j + l:
            // bits 2j..2j+2 of qs[32h + l] are u's low 2 bits, bit 4h + j of hmask[l] its third. Scales: low 4 bits of
            // s(g) in byte g mod 8 (low nibble for g < 8, high for g ≥ 8), top 2 bits in byte 8 + g mod 4 at bit
            // 2·(g / 4).
            let s = |g: usize| ((7 * g + 5) % 64) as u8;
            let u = |e: usize| ((5 * e + e / 9) % 8) as u8;
            let mut hmask = [0u8; 32];
            let mut qs = [0u8; 64];
            for e in 0..256 {
                let (h, j, l) = (e / 128, (e % 128) / 32, e % 32);
                qs[32 * h + l] |= (u(e) & 3) << (2 * j);
                hmask[l] |= (u(e) >> 2) << (4 * h + j);
            }
            let mut scales = [0u8; 12];
            for g in 0..16 {
                scales[g % 8] |= (s(g) & 15) << (4 * (g / 8));
                scales[8 + g % 4] |= (s(g) >> 4) << (2 * (g / 4));
            }
            let mut b = hmask.to_vec();
            b.extend_from_slice(&qs);
            b.extend_from_slice(&scales);
            b.extend([0x00, 0x38]);
            let v = (0..256)
                .map(|e| 0.5 * (s(e / 16) as f32 - 32.0) * (u(e) as f32 - 4.0))
                .collect();
            (b, v)
        }
        WeightType::Q5K => {
            // d = 1.0, dmin = 0.5 and the same 6-bit scales and mins as the Q4_K block below (same packing); element
            // e has the 5-bit value q(e) = (7e + e / 5) mod 32. Its fifth bit is bit e / 32 of qh[e mod 32]; its
            // low 4 bits are the low (e mod 64 < 32) or high nibble of qs[32·(e / 64) + e mod 32].
            let sc = [1.0f32, 2.0, 3.0, 4.0, 63.0, 33.0, 17.0, 40.0];
            let mn = [0.0f32, 1.0, 2.0, 3.0, 60.0, 5.0, 6.0, 7.0];
            let q = |e: usize| ((7 * e + e / 5) % 32) as u8;
            let mut b = vec![0x00, 0x3C, 0x00, 0x38];
            b.extend([193, 130, 67, 132, 192, 1, 2, 3, 207, 81, 97, 120]);
            let mut qh = [0u8; 32];
            let mut qs = [0u8; 128];
            for e in 0..256 {
                qh[e % 32] |= (q(e) >> 4) << (e / 32);
                qs[32 * (e / 64) + e % 32] |= (q(e) & 15) << (4 * ((e % 64) / 32));
            }
            b.extend_from_slice(&qh);
            b.extend_from_slice(&qs);
            let v = (0..256).map(|e| sc[e / 32] * q(e) as f32 - 0.5 * mn[e / 32]).collect();
            (b, v)
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
    let dump = std::env::var_os("SHOAL_DUMP_KNOWN_BLOCKS").map(std::path::PathBuf::from);
    for ty in WeightType::ALL {
        let (bytes, want) = known_block(ty);
        assert_eq!(bytes.len(), ty.row_bytes(want.len()), "{ty}: test block size");
        if let Some(dir) = &dump {
            std::fs::write(dir.join(format!("{}.bin", ty.ggml_id())), &bytes).unwrap();
        }
        let m = QMatrix::new(ty, 1, want.len(), bytes).unwrap();
        let mut got = vec![f32::NAN; want.len()];
        m.dequantize_row(0, &mut got);
        assert_eq!(got, want, "{ty}");
    }
}

/// The same known blocks, dequantized by an independent implementation: gguf-py's numpy dequantizers (gguf 0.19.0,
/// `gguf/quants.py`). Per ggml type id: (Σ v, Σ (i + 1)·v, v at indices 0, 5, 13, 31 and, for blocks of 256, 100,
/// 150, 200, 255). The samples are exact; the sums within 1e-12 relative (all values but F32's 1e-3 are small
/// dyadic numbers, whose f64 sums are exact in any order). Produced by
///
/// ```text
/// mkdir -p /tmp/kb && SHOAL_DUMP_KNOWN_BLOCKS=/tmp/kb cargo test -p shoal-engine --test kernels known_blocks_dequantize
/// python3 -c 'import numpy as np, gguf; from gguf.quants import dequantize
/// for t in [0,1,30,2,3,6,7,8,10,11,12,13,14]:
///     v = dequantize(np.fromfile(f"/tmp/kb/{t}.bin", np.uint8), gguf.GGMLQuantizationType(t)).astype(np.float64).ravel()
///     idx = [i for i in (0,5,13,31,100,150,200,255) if i < len(v)]
///     print(t, repr(v.sum()), repr((v * np.arange(1, len(v) + 1)).sum()), [repr(float(v[i])) for i in idx])'
/// ```
#[test]
fn known_blocks_match_gguf_py() {
    let pinned: &[(u32, f64, f64, &[f64])] = &[
        (0, 6.2510000000474975, 32.00400000018999, &[1.5]),
        (1, -0.625, -2.5, &[1.5]),
        (
            30,
            1.901475900342344e+30,
            1.1408855402054065e+31,
            &[1.5, 1.901475900342344e+30],
        ),
        (2, -8.0, -132.0, &[-4.0, -1.5, 2.5, -4.0]),
        (3, 28.0, 462.0, &[-1.0, 0.25, 2.25, -1.0]),
        (6, -8.0, -88.0, &[-6.5, -5.0, 7.0, 6.0]),
        (7, 92.0, 1540.0, &[-0.25, 0.5, 6.5, 6.0]),
        (8, -318.0, -4224.0, &[-32.0, -22.0, -6.0, -256.0]),
        (10, 891.5, 133209.5, &[-0.5, 1.0, -0.5, 0.25, 3.0, 14.25, -3.5, 3.75]),
        (11, 201.5, 258.0, &[54.0, 40.5, 27.0, -20.0, 22.5, -28.0, -7.0, 21.0]),
        (
            12,
            37776.0,
            6796992.0,
            &[0.0, 5.0, 13.0, 15.0, 18.5, 348.0, 133.0, 76.5],
        ),
        (
            13,
            78514.0,
            13919645.0,
            &[0.0, 4.0, 29.0, 31.0, 62.5, 1482.0, -3.0, 476.5],
        ),
        (14, 544.0, 43872.0, &[116.0, -24.0, 8.0, 14.0, -31.0, -1.5, 54.0, 98.0]),
    ];
    assert_eq!(pinned.len(), WeightType::ALL.len());
    for &(id, sum, wsum, samples) in pinned {
        let ty = WeightType::from_ggml_id(id).unwrap();
        let (bytes, vals) = known_block(ty);
        let m = QMatrix::new(ty, 1, vals.len(), bytes).unwrap();
        let mut v = vec![f32::NAN; vals.len()];
        m.dequantize_row(0, &mut v);
        let got_sum: f64 = v.iter().map(|&x| x as f64).sum();
        let got_wsum: f64 = v.iter().enumerate().map(|(i, &x)| (i + 1) as f64 * x as f64).sum();
        for (got, want) in [(got_sum, sum), (got_wsum, wsum)] {
            assert!(
                (got - want).abs() <= 1e-12 * want.abs(),
                "{ty}: sum {got}, gguf-py {want}"
            );
        }
        let idx = [0, 5, 13, 31, 100, 150, 200, 255].into_iter().filter(|&i| i < v.len());
        for (i, &want) in idx.zip(samples) {
            assert_eq!(v[i] as f64, want, "{ty}: element {i}");
        }
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
        // Q5: 5 bits; Q3_K: 3 bits with 6-bit scales; Q2_K: 2 bits with 4-bit scales and mins.
        let tol = match ty {
            WeightType::F32 => 0.0,
            WeightType::F16 => amax * 1e-3,
            WeightType::BF16 => amax / 256.0,
            WeightType::Q8_0 => amax / 127.0,
            WeightType::Q6K => amax / 16.0,
            WeightType::Q5_0 | WeightType::Q5_1 | WeightType::Q5K => amax / 8.0,
            WeightType::Q2K => amax / 2.0,
            _ => amax / 4.0,
        };
        let worst = v.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= tol, "{ty}: worst error {worst} > {tol}");
    }
}

/// The Q5_0 and Q5_1 quantizers are ggml's reference ones: byte for byte what gguf-py 0.19.0's `quantize` (a port of
/// `quantize_row_q5_*_ref`) makes of the same 64 values. Produced by
///
/// ```text
/// python3 -c 'import numpy as np, gguf; from gguf.quants import quantize
/// x = np.array([((j*37 % 64) - 31.5)/8.0 + (0.3 if j>=32 else 0.0) for j in range(64)], np.float32).reshape(1,64)
/// for t in (6,7): print(t, quantize(x, gguf.GGMLQuantizationType(t)).ravel().tolist())'
/// ```
#[test]
fn q5_quantizers_match_ggml_reference() {
    let x: Vec<f32> = (0..64)
        .map(|j| ((j * 37 % 64) as f32 - 31.5) / 8.0 + if j >= 32 { 0.3 } else { 0.0 })
        .collect();
    let want_q5_0: [u8; 44] = [
        224, 51, 42, 181, 90, 169, 128, 179, 213, 248, 42, 93, 127, 162, 196, 247, 25, 76, 110, 145, 179, 230, 29, 180,
        42, 181, 82, 169, 127, 76, 42, 247, 197, 162, 112, 93, 42, 8, 229, 179, 145, 110, 76, 25,
    ];
    let want_q5_1: [u8; 48] = [
        17, 52, 224, 195, 42, 181, 90, 169, 128, 162, 213, 247, 42, 76, 127, 145, 196, 230, 25, 59, 110, 128, 179, 213,
        223, 51, 6, 195, 213, 74, 165, 86, 128, 162, 213, 247, 42, 76, 127, 145, 196, 230, 25, 59, 110, 128, 179, 213,
    ];
    for (ty, want) in [(WeightType::Q5_0, &want_q5_0[..]), (WeightType::Q5_1, &want_q5_1[..])] {
        let m = QMatrix::quantize(ty, 1, 64, &x).unwrap();
        assert_eq!(m.data(), want, "{ty}");
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
        (6, "Q5_0", 32, 22),
        (7, "Q5_1", 32, 24),
        (8, "Q8_0", 32, 34),
        (10, "Q2_K", 256, 84),
        (11, "Q3_K", 256, 110),
        (12, "Q4_K", 256, 144),
        (13, "Q5_K", 256, 176),
        (14, "Q6_K", 256, 210),
        (30, "BF16", 1, 2),
    ];
    assert_eq!(expect.len(), WeightType::ALL.len());
    for (id, name, elems, bytes) in expect {
        let ty = WeightType::from_ggml_id(id).unwrap();
        assert_eq!(
            (ty.name(), ty.block_elems(), ty.block_bytes(), ty.ggml_id()),
            (name, elems, bytes, id)
        );
    }
    // 4, 5: removed Q4_2/Q4_3; 9: Q8_1 and 15: Q8_K are activation formats; 16..: the IQ types and others.
    for id in [4, 5, 9, 15, 16, 17, 19, 20, 23, 29, 31, 1000] {
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
    assert!(["avx512", "avx2", "neon", "scalar"].contains(&isa()));
}

/// Batch invariance: a row's result does not depend on which other rows share the product or on the thread split,
/// bit for bit. Continuous batching relies on it: a sequence generates the same tokens alone or batched with others.
#[test]
fn each_row_is_bit_identical_whatever_the_batch() {
    const BATCH: usize = 20;
    let pools = [Pool::new(1), Pool::new(2)];
    let mut rng = Rng(0xba7c4);
    for ty in WeightType::ALL {
        let cols = test_cols(ty)[1];
        let rows = 193;
        let m = random_matrix(&mut rng, ty, rows, cols);
        let x = activations(&mut rng, BATCH, cols);
        let mut alone = vec![0.0; BATCH * rows];
        for i in 0..BATCH {
            m.matmul(
                &x[i * cols..(i + 1) * cols],
                1,
                &mut alone[i * rows..(i + 1) * rows],
                &pools[0],
            );
        }
        for pool in &pools {
            // Past AVX2's one-row walk, AVX-512's groups of 8 rows and its Q4_1 hand-over to AVX2 (3 rows).
            for n in [2, 4, 5, 9, 17, BATCH] {
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
