//! Quantized matmul kernels: scalar reference vs the dispatched SIMD path, 1 vs 2 threads, n = 1 (decode), 8
//! (batched decode) and 64 (prefill), on the shapes of SmolLM2-135M (512 columns where a K-quant needs a multiple of
//! 256). Throughput is weight bytes streamed per call.
//!
//! `cargo bench -p shoal-engine --bench kernels [-- FILTER]`

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_engine::kernels::{Pool, QMatrix, WeightType, isa};

fn matrix(ty: WeightType, rows: usize, cols: usize) -> QMatrix {
    let mut s = 0x1234_5678_u64;
    let v: Vec<f32> = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
        })
        .collect();
    QMatrix::quantize(ty, rows, cols, &v).expect("valid shape")
}

fn activations(n: usize, cols: usize) -> Vec<f32> {
    (0..n * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0)
        .collect()
}

fn kernels(c: &mut Criterion) {
    eprintln!("kernels: isa {}", isa());
    let pools = [Pool::new(1), Pool::new(2)];
    let cases = [
        ("q4_1_1536x576", WeightType::Q4_1, 1536, 576),
        ("q4_1_576x1536", WeightType::Q4_1, 576, 1536),
        ("q8_0_49152x576", WeightType::Q8_0, 49152, 576),
        ("q4_0_1536x576", WeightType::Q4_0, 1536, 576),
        ("q8_0_1536x576", WeightType::Q8_0, 1536, 576),
        ("q4_k_1536x512", WeightType::Q4K, 1536, 512),
        ("q6_k_1536x512", WeightType::Q6K, 1536, 512),
        ("q5_0_1536x576", WeightType::Q5_0, 1536, 576),
        ("q5_1_1536x576", WeightType::Q5_1, 1536, 576),
        ("q2_k_1536x512", WeightType::Q2K, 1536, 512),
        ("q3_k_1536x512", WeightType::Q3K, 1536, 512),
        ("q5_k_1536x512", WeightType::Q5K, 1536, 512),
        ("bf16_1536x576", WeightType::BF16, 1536, 576),
    ];
    for (name, ty, rows, cols) in cases {
        let m = matrix(ty, rows, cols);
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(m.bytes() as u64));
        for n in [1usize, 8, 64] {
            let x = activations(n, cols);
            let mut y = vec![0.0f32; n * rows];
            // The scalar reference only where it stays quick.
            if n == 1 || (n == 8 && rows * cols <= 1 << 20) {
                g.bench_with_input(BenchmarkId::new("scalar-1t", n), &n, |b, &n| {
                    b.iter(|| m.matmul_reference(black_box(&x), n, &mut y))
                });
            }
            for pool in &pools {
                let id = BenchmarkId::new(format!("{}-{}t", isa(), pool.threads()), n);
                g.bench_with_input(id, &n, |b, &n| b.iter(|| m.matmul(black_box(&x), n, &mut y, pool)));
            }
        }
        g.finish();
    }
    // The pool's bare synchronization cost: one hand-out and join with no work.
    let mut g = c.benchmark_group("pool");
    for pool in &pools {
        let work: std::sync::Arc<dyn Fn() + Send + Sync> = std::sync::Arc::new(|| {});
        g.bench_function(format!("empty-run-{}t", pool.threads()), |b| {
            b.iter(|| pool.run(work.clone()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500));
    targets = kernels
}
criterion_main!(benches);
