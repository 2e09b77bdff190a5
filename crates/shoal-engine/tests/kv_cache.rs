//! The KV cache's element type: attention over an F16 cache against the F32 one on random data, and on the test
//! model the F16 cache's memory (half) and greedy output (the same text as F32 for a long stretch).
#![allow(clippy::unwrap_used)]

mod common;

use shoal_engine::ops::{AttnShape, LayerKv, causal_attention, causal_attention_windowed};
use shoal_engine::sampling::argmax;
use shoal_engine::{KvType, Pipeline, Pool, Tokenizer};

/// splitmix64, enough for test data: uniform in [-1, 1).
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

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// F16 storage rounds every key and value by at most 2^-11 relative; through a softmax over these magnitudes
/// (scores within ±4, values within ±3) the outputs move by well under this.
const F16_ATTENTION_TOLERANCE: f32 = 4e-3;

#[test]
fn f16_attention_is_close_to_f32() {
    // SmolLM2's shape (9 query heads over 3 kv heads of 64) and Gemma 3 270M's head width (256, one kv head).
    let shapes = [
        AttnShape {
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
        },
        AttnShape {
            heads: 4,
            kv_heads: 1,
            head_dim: 256,
        },
    ];
    let mut rng = Rng(5);
    for shape in shapes {
        let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
        // A prefill chunk large enough to be split over threads, then decode steps, some within a sliding window.
        for (past, n, window, threads) in [
            (0, 300, None, 2),
            (300, 1, None, 1),
            (301, 3, Some(64), 1),
            (304, 1, Some(7), 2),
        ] {
            let mut caches = [LayerKv::new(KvType::F32), LayerKv::new(KvType::F16)];
            let k = rng.vec((past + n) * kv_width, 2.0);
            let v = rng.vec((past + n) * kv_width, 3.0);
            let q = rng.vec(n * q_width, 0.5);
            let scale = 1.0 / (shape.head_dim as f32).sqrt();
            let mut outs = [vec![0.0; n * q_width], vec![0.0; n * q_width]];
            for (cache, out) in caches.iter_mut().zip(&mut outs) {
                cache.append(&k, &v, kv_width);
                causal_attention_windowed(&q, cache, past, shape, scale, window, out, &Pool::new(threads));
            }
            let worst = outs[0]
                .iter()
                .zip(&outs[1])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst <= F16_ATTENTION_TOLERANCE,
                "{shape:?} past {past} n {n}: F16 differs from F32 by {worst}"
            );
            assert!(worst > 0.0, "the F16 cache should round something");
            // Splitting over threads never changes a row.
            let mut one = vec![0.0; n * q_width];
            causal_attention_windowed(&q, &caches[1], past, shape, scale, window, &mut one, &Pool::new(1));
            assert_eq!(one, outs[1]);
        }
    }
}

#[test]
fn f16_cache_holds_half_the_bytes_and_truncates_like_f32() {
    let width = 192;
    let mut rng = Rng(9);
    let rows = rng.vec(10 * width, 1.0);
    let mut caches = [LayerKv::new(KvType::F32), LayerKv::new(KvType::F16)];
    for c in &mut caches {
        c.append(&rows, &rows, width);
        c.truncate(4);
        c.append(&rows[..width], &rows[..width], width);
        assert_eq!(c.len(), 5);
    }
    assert_eq!(caches[0].kv_type(), KvType::F32);
    assert_eq!(caches[1].kv_type(), KvType::F16);
    assert_eq!(caches[1].bytes() * 2, caches[0].bytes());
    assert_eq!(LayerKv::default().kv_type(), KvType::F32);
    // A query that sees position 4 reads the row appended after the truncation.
    let shape = AttnShape {
        heads: 3,
        kv_heads: 3,
        head_dim: 64,
    };
    let q = rng.vec(width, 1.0);
    let mut outs = [vec![0.0; width], vec![0.0; width]];
    for (c, out) in caches.iter().zip(&mut outs) {
        causal_attention(&q, c, 4, shape, 0.125, out, &Pool::new(1));
    }
    let worst = outs[0]
        .iter()
        .zip(&outs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= F16_ATTENTION_TOLERANCE, "{worst}");
}

/// Greedy steps compared between the two cache types.
const STEPS: usize = 64;
/// Leading greedy tokens that must agree: f16 rounding may flip a near-tie later in a long generation (llama.cpp's
/// f16 and f32 caches diverge the same way), but not at the start of a plain prompt.
const MIN_SAME: usize = 16;

#[test]
fn f16_cache_greedy_text_starts_like_f32_in_half_the_memory() {
    let _g = common::exclusive();
    let path = common::model_path();
    let tok = Tokenizer::from_gguf_path(&path).unwrap();
    let prompt = tok
        .encode("The history of the Roman Empire is long and complicated. It began when")
        .unwrap();
    let mut p = Pipeline::load(&path, &[15], common::pool()).unwrap();
    let mut runs = Vec::new();
    for (slot, ty) in [(0, KvType::F32), (1, KvType::F16)] {
        p.set_kv_type(ty);
        let mut logits = p.forward(slot, &prompt).unwrap();
        let mut toks = Vec::new();
        for _ in 0..STEPS {
            let t = argmax(&logits).unwrap();
            toks.push(t);
            logits = p.forward(slot, &[t]).unwrap();
        }
        let bytes = p.kv_bytes();
        p.release(slot);
        runs.push((toks, bytes));
    }
    let [(f32_toks, f32_bytes), (f16_toks, f16_bytes)] = &runs[..] else {
        unreachable!()
    };
    assert_eq!(
        f16_bytes * 2,
        *f32_bytes,
        "an F16 cache holds half the bytes of an F32 one"
    );
    let same = f32_toks.iter().zip(f16_toks).take_while(|(a, b)| a == b).count();
    println!(
        "{same} of {STEPS} greedy tokens agree; KV bytes f32 {f32_bytes}, f16 {f16_bytes}\nf32: {}\nf16: {}",
        tok.decode(f32_toks, false).unwrap(),
        tok.decode(f16_toks, false).unwrap()
    );
    assert!(same >= MIN_SAME, "only {same} leading tokens agree");
}
