//! Times one layer's decode attention (one query row over a long past) and one prefill chunk's, over an F32 and an
//! F16 KV cache, on SmolLM2-135M's shape (9 query heads over 3 kv heads of 64), one thread. The two types alternate
//! for `ROUNDS` rounds; medians are printed. `SHOAL_KERNELS=avx2` (or `scalar`) caps the F16 kernels' ISA.
//!
//! cargo run --example kv_attention -- [PAST (2000)] [ROUNDS (5)]
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use shoal_engine::KvType;
use shoal_engine::kernels::isa;
use shoal_engine::ops::{AttnShape, LayerKv, causal_attention};

/// Decode calls timed per round; a prefill chunk is timed once per round.
const DECODE_CALLS: usize = 200;
/// Rows of the timed prefill chunk (the pipeline's chunk is 512).
const PREFILL_ROWS: usize = 256;

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
    let mut times = vec![(Vec::new(), Vec::new()); caches.len()];
    for _ in 0..rounds {
        for (cache, (decode, prefill)) in caches.iter().zip(&mut times) {
            let mut out = vec![0.0; q_width];
            let t = Instant::now();
            for _ in 0..DECODE_CALLS {
                causal_attention(&q[..q_width], cache, past, shape, scale, &mut out, 1);
                black_box(&out);
            }
            decode.push(t.elapsed().as_secs_f64() * 1e6 / DECODE_CALLS as f64);
            let mut out = vec![0.0; PREFILL_ROWS * q_width];
            let t = Instant::now();
            causal_attention(&q, cache, past, shape, scale, &mut out, 1);
            black_box(&out);
            prefill.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("isa {}, past {past}, {rounds} rounds, 1 thread", isa());
    for (ty, (decode, prefill)) in KvType::ALL.iter().zip(&mut times) {
        println!(
            "{ty}: decode step {:.1} µs/layer; prefill chunk of {PREFILL_ROWS} rows {:.2} ms/layer",
            median(decode),
            median(prefill)
        );
    }
}
