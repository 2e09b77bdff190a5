//! Tiling, units and the pool against the one-query-at-a-time reference, bit for bit.

use super::*;

#[test]
fn kv_type_names_round_trip() {
    for t in KvType::ALL {
        assert_eq!(t.name().parse::<KvType>(), Ok(t));
        assert_eq!(t.to_string().to_uppercase().parse::<KvType>(), Ok(t));
    }
    let err = "q8_0".parse::<KvType>().unwrap_err();
    assert_eq!(err.to_string(), "unknown KV cache type \"q8_0\": expected f32 or f16");
    assert_eq!(KvType::default(), KvType::F32);
}

/// splitmix64 in [-1, 1).
fn random(seed: &mut u64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

const SHAPES: [AttnShape; 3] = [
    // SmolLM2 (a group of 3), Gemma 3 270M (one kv head of 256), and heads that are their own kv heads.
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
    AttnShape {
        heads: 2,
        kv_heads: 2,
        head_dim: 40,
    },
];

/// Tiling, unit splitting and the pool never change a bit: every case equals the one-query-at-a-time oracle.
#[test]
fn batch_attention_equals_the_reference_bit_for_bit() {
    let mut seed = 1;
    let pools = [Pool::new(1), Pool::new(2), Pool::new(3)];
    for shape in SHAPES {
        let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
        for ty in KvType::ALL {
            // (past, new rows, window): decode over short and long contexts, chunks straddling tiles, windows.
            for (past, n, window) in [
                (0, 1, None),
                (5, 1, None),
                (700, 1, None),
                (0, 37, None),
                (130, 70, None),
                (1000, 8, None),
                (300, 20, Some(64)),
                (90, 1, Some(7)),
                (0, 100, Some(33)),
            ] {
                let mut cache = LayerKv::new(ty);
                cache.append(
                    &random(&mut seed, (past + n) * kv_width, 2.0),
                    &random(&mut seed, (past + n) * kv_width, 3.0),
                    kv_width,
                );
                let q = random(&mut seed, n * q_width, 0.7);
                let mut want = vec![0.0; n * q_width];
                causal_attention_reference(&q, &cache, past, shape, 0.125, window, &mut want);
                for pool in &pools {
                    let mut got = vec![f32::NAN; n * q_width];
                    causal_attention_windowed(&q, &cache, past, shape, 0.125, window, &mut got, pool);
                    let same = want.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(
                        same,
                        "{ty} {shape:?} past {past} n {n} window {window:?} threads {}",
                        pool.threads()
                    );
                }
            }
        }
    }
}

/// A batch of sequences at different positions: each sequence's rows equal that sequence attended alone.
#[test]
fn batched_sequences_equal_each_sequence_alone() {
    let mut seed = 7;
    let shape = SHAPES[0];
    let (q_width, kv_width) = (shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim);
    // (past, rows): eight decoding sequences and one prefill chunk, as the scheduler mixes them.
    let seqs_spec = [
        (3, 1),
        (40, 1),
        (0, 1),
        (900, 1),
        (17, 1),
        (64, 1),
        (65, 1),
        (200, 1),
        (100, 30),
    ];
    let caches: Vec<LayerKv> = seqs_spec
        .iter()
        .map(|&(past, n)| {
            let mut c = LayerKv::new(KvType::F32);
            c.append(
                &random(&mut seed, (past + n) * kv_width, 2.0),
                &random(&mut seed, (past + n) * kv_width, 2.0),
                kv_width,
            );
            c
        })
        .collect();
    let total: usize = seqs_spec.iter().map(|s| s.1).sum();
    let q = random(&mut seed, total * q_width, 0.5);
    let mut row = 0;
    let seqs: Vec<SeqRows> = seqs_spec
        .iter()
        .map(|&(past, n)| {
            row += n;
            (row - n, n, past)
        })
        .collect();
    let refs: Vec<&LayerKv> = caches.iter().collect();
    for pool in [Pool::new(1), Pool::new(2)] {
        let mut got = vec![0.0; total * q_width];
        batch_attention(&q, &refs, &seqs, shape, 0.125, None, &mut got, &pool);
        for (&(row, n, past), cache) in seqs.iter().zip(&caches) {
            let rows = row * q_width..(row + n) * q_width;
            let mut alone = vec![0.0; n * q_width];
            causal_attention_reference(&q[rows.clone()], cache, past, shape, 0.125, None, &mut alone);
            assert_eq!(alone, got[rows], "sequence at row {row}, {} threads", pool.threads());
        }
    }
}

#[test]
fn units_cover_every_row_and_head_once() {
    let plan = Plan {
        shape: SHAPES[0],
        scale: 1.0,
        window: None,
        seqs: vec![(0, 1, 10), (1, 50, 0), (51, 1, 4000)],
    };
    for threads in [1, 2, 8] {
        let units = plan.units(threads);
        let mut seen = std::collections::HashMap::new();
        for u in &units {
            for i in u.rows.0..u.rows.1 {
                for h in u.heads.0..u.heads.1 {
                    *seen.entry((u.seq, i, h)).or_insert(0) += 1;
                }
            }
            assert_eq!(u.heads.0 / 3, (u.heads.1 - 1) / 3, "a unit reads one kv head");
        }
        assert_eq!(seen.len(), (1 + 50 + 1) * 9);
        assert!(seen.values().all(|&c| c == 1));
        let costs: Vec<usize> = units.iter().map(|u| plan.cost(u)).collect();
        assert!(costs.windows(2).all(|w| w[0] >= w[1]), "costliest first");
    }
}

#[test]
fn clones_are_deep() {
    let mut a = LayerKv::new(KvType::F16);
    a.append(&[1.0; 8], &[2.0; 8], 4);
    let mut b = a.clone();
    b.truncate(1);
    b.append(&[5.0; 4], &[6.0; 4], 4);
    assert_eq!((a.len(), b.len()), (2, 2));
    let (Store::F16 { k: ka, .. }, Store::F16 { k: kb, .. }) = (&*read(&a.store), &*read(&b.store)) else {
        panic!("both are F16");
    };
    assert_ne!(ka, kb);
}
