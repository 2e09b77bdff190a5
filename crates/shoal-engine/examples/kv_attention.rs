//! Times one layer's decode attention (one query row over a long past), a prefill chunk's, and a late 8-row chunk's
//! (what a long prompt's last chunks cost), over an F32 and an F16 KV cache, on SmolLM2-135M's shape (9 query heads
//! over 3 kv heads of 64): the one-query-at-a-time reference, then the tiled attention on a pool of 1 and of 2
//! threads. Every variant alternates for `ROUNDS` rounds; medians are printed. `SHOAL_KERNELS=avx2` (or `scalar`)
//! caps the F16 kernels' ISA.
//!
//! cargo run --release --example kv_attention -- [PAST (2000)] [ROUNDS (5)]
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use shoal_engine::kernels::isa;
use shoal_engine::ops::{AttnShape, LayerKv, causal_attention, causal_attention_reference};
use shoal_engine::{KvType, Pool};

/// Decode calls timed per round; a prefill chunk is timed once per round.
const DECODE_CALLS: usize = 200;
/// Rows of the timed prefill chunk (the pipeline's chunk is 512).
const PREFILL_ROWS: usize = 256;
/// Rows of the smallest chunk the scheduler sends beside running streams.
const LATE_ROWS: usize = 8;

fn main() {
    let mut args = std::env::args().skip(1);
    let past: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let shape = AttnShape {
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
    };
    let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    let mut s = 0x9e37_79b9_u64;
    let mut rand = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let rows = past + PREFILL_ROWS;
    let k: Vec<f32> = (0..rows * kv_width).map(|_| rand() * 4.0).collect();
    let v: Vec<f32> = (0..rows * kv_width).map(|_| rand() * 4.0).collect();
    let q: Vec<f32> = (0..PREFILL_ROWS * q_width).map(|_| rand()).collect();
    let caches: Vec<LayerKv> = KvType::ALL
        .iter()
        .map(|&ty| {
            let mut c = LayerKv::new(ty);
            c.append(&k, &v, kv_width);
            c
        })
        .collect();
    let scale = 0.125;
    let pools = [Pool::new(1), Pool::new(2)];
    // Variant 0 is the reference; then the tiled attention on each pool.
    let variants = 1 + pools.len();
    let run = |variant: usize, q: &[f32], cache: &LayerKv, past: usize, out: &mut [f32]| {
        if variant == 0 {
            causal_attention_reference(q, cache, past, shape, scale, None, out);
        } else {
            causal_attention(q, cache, past, shape, scale, out, &pools[variant - 1]);
        }
    };
    let mut times = vec![vec![[Vec::new(), Vec::new(), Vec::new()]; variants]; caches.len()];
    for _ in 0..rounds {
        for (cache, by_variant) in caches.iter().zip(&mut times) {
            for (variant, [decode, prefill, late]) in by_variant.iter_mut().enumerate() {
                let mut out = vec![0.0; q_width];
                let t = Instant::now();
                for _ in 0..DECODE_CALLS {
                    run(variant, &q[..q_width], cache, past + PREFILL_ROWS - 1, &mut out);
                    black_box(&out);
                }
                decode.push(t.elapsed().as_secs_f64() * 1e6 / DECODE_CALLS as f64);
                let mut out = vec![0.0; PREFILL_ROWS * q_width];
                let t = Instant::now();
                run(variant, &q, cache, past, &mut out);
                black_box(&out);
                prefill.push(t.elapsed().as_secs_f64() * 1e3);
                let mut out = vec![0.0; LATE_ROWS * q_width];
                let t = Instant::now();
                run(
                    variant,
                    &q[..LATE_ROWS * q_width],
                    cache,
                    past + PREFILL_ROWS - LATE_ROWS,
                    &mut out,
                );
                black_box(&out);
                late.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("isa {}, past {past}, {rounds} rounds", isa());
    for (ty, by_variant) in KvType::ALL.iter().zip(&mut times) {
        for (variant, [decode, prefill, late]) in by_variant.iter_mut().enumerate() {
            let name = match variant {
                0 => "reference, 1 thread".to_string(),
                v => format!("tiled, {} threads", pools[v - 1].threads()),
            };
            println!(
                "{ty} {name:20}: decode step {:7.1} µs/layer; prefill chunk of {PREFILL_ROWS} rows {:7.2} ms/layer; \
                 {LATE_ROWS} rows {:6.2} ms/layer",
                median(decode),
                median(prefill),
                median(late)
            );
        }
    }
}
