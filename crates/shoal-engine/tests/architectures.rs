//! Every architecture on a tiny synthetic GGUF (tests/common/synth.rs: 3 layers, or 6 for gemma3, hidden 64,
//! deterministic weights in F32, F16 and Q8_0, SmolLM2's tokenizer) against llama.cpp on the same file: the first
//! step's logits and 20 greedy tokens, and the same tokens (bit-identical logits) for every split point.
//!
//! Reference values: llama.cpp as vendored in llama-cpp-python 0.3.36 (`../shared/scripts/build-llama-reference.sh`),
//! through tools/llama_logits.cpp (f32 KV cache, flash attention off, no repacked weights, 2 threads):
//!   cargo run -p shoal-engine --example synth_gguf -- /tmp/arch-synth SmolLM2-135M-Instruct.Q4_1.gguf
//!   /tmp/llama_logits /tmp/arch-synth/MODEL.gguf 20 1 4093 198 1780 314 260 3575 282 4649 47 2 198
//! Measured against them: the same 20 greedy tokens for every model; first-step logits within 0.015 on the top 8,
//! and the sum of squares of all 49,152 logits within 8e-4 relative. The differences come from llama.cpp rounding
//! activations to f16 before F16 matrix products and reading gelu from an f16 table; we keep f32 in both.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/synth.rs"]
mod synth;

use std::path::PathBuf;
use std::sync::OnceLock;

use shoal_engine::gguf::{GgufFile, Value};
use shoal_engine::sampling::argmax;
use shoal_engine::{EngineError, Pipeline};

/// The prompt of every reference run (SmolLM2 ids of a short chat turn), longer than the synthetic gemma3's sliding
/// window of 5.
const PROMPT: &[u32] = &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198];
const GREEDY: usize = 20;
/// Tolerance on each pinned first-step logit (measured differences: at most 0.015).
const LOGIT_TOLERANCE: f32 = 0.03;
/// Relative tolerance on the sum of squares of all first-step logits (measured: at most 7.3e-4).
const SUM_SQ_TOLERANCE: f64 = 2e-3;
/// The synthetic models' seeds were picked so that the best greedy logit beats the second by at least this much at
/// every step, twice the largest logit difference measured against llama.cpp; below it, a token comparison would
/// only test rounding.
const MIN_MARGIN: f32 = 0.02;

struct Reference {
    model: &'static str,
    /// The 8 highest first-step logits (token id, value).
    top8: [(usize, f32); 8],
    sum_sq: f64,
    greedy: [u32; GREEDY],
}

const REFERENCES: &[Reference] = &[
    Reference {
        model: "llama3",
        top8: [
            (24615, 3.8954),
            (23372, 3.7100),
            (23055, 3.6062),
            (9381, 3.5837),
            (36996, 3.5128),
            (18198, 3.4640),
            (13744, 3.3911),
            (21940, 3.3885),
        ],
        sum_sq: 47957.8844,
        greedy: [
            24615, 34328, 47060, 281, 40580, 23239, 24131, 42142, 41170, 3385, 16854, 27829, 29426, 40653, 40366,
            15643, 15659, 41033, 28991, 23277,
        ],
    },
    Reference {
        model: "qwen2",
        top8: [
            (3161, 3.9399),
            (22412, 3.8099),
            (13434, 3.6871),
            (44926, 3.6743),
            (38728, 3.6422),
            (41575, 3.6239),
            (15349, 3.5812),
            (39498, 3.5679),
        ],
        sum_sq: 48933.9842,
        greedy: [
            3161, 22143, 3161, 22143, 3161, 27955, 19894, 10854, 4069, 29090, 19894, 10854, 4069, 29090, 19894, 10854,
            4069, 11818, 30014, 43180,
        ],
    },
    Reference {
        model: "qwen3",
        top8: [
            (9802, 3.9920),
            (35850, 3.7762),
            (13596, 3.6649),
            (32828, 3.6325),
            (8375, 3.5782),
            (7014, 3.4544),
            (20990, 3.4534),
            (8556, 3.4493),
        ],
        sum_sq: 47934.3246,
        greedy: [
            9802, 6870, 3081, 33261, 27499, 49140, 23560, 252, 39145, 42045, 7525, 21341, 46884, 25233, 47979, 17506,
            28391, 12577, 41123, 44087,
        ],
    },
    Reference {
        model: "qwen3-yarn",
        top8: [
            (28539, 3.9443),
            (7480, 3.8201),
            (27986, 3.6895),
            (19712, 3.5785),
            (32873, 3.5722),
            (47754, 3.5667),
            (28456, 3.4118),
            (23800, 3.4055),
        ],
        sum_sq: 45604.3904,
        greedy: [
            28539, 3461, 37308, 21462, 47545, 35518, 13345, 45342, 27266, 8228, 21052, 30007, 10633, 7079, 9833, 28176,
            24301, 11274, 23825, 24179,
        ],
    },
    Reference {
        model: "qwen3moe",
        top8: [
            (48623, 4.4221),
            (41507, 3.9192),
            (17772, 3.8774),
            (17074, 3.8728),
            (22772, 3.8074),
            (46180, 3.7620),
            (43759, 3.6834),
            (18600, 3.5432),
        ],
        sum_sq: 50070.6745,
        greedy: [
            48623, 13439, 45545, 27995, 29752, 16972, 32881, 28721, 33054, 33830, 2199, 31301, 30325, 1256, 9434,
            28239, 35525, 4969, 26708, 5187,
        ],
    },
    Reference {
        model: "gemma3",
        top8: [
            (25421, 4.2432),
            (24958, 3.9453),
            (27454, 3.8764),
            (7074, 3.8223),
            (1796, 3.7658),
            (35558, 3.6358),
            (1588, 3.6050),
            (10635, 3.6042),
        ],
        sum_sq: 49953.2309,
        greedy: [
            25421, 13073, 977, 24748, 28357, 4870, 31843, 26025, 36680, 28909, 17275, 41329, 41568, 4810, 7479, 5436,
            34590, 27453, 7318, 40972,
        ],
    },
    Reference {
        model: "gemma3-scaled",
        top8: [
            (24785, 3.2900),
            (11138, 3.2635),
            (15665, 3.2491),
            (28069, 3.2387),
            (48467, 3.2041),
            (7592, 3.1947),
            (43473, 3.1833),
            (18142, 3.1346),
        ],
        sum_sq: 50833.9326,
        greedy: [
            24785, 17487, 44525, 23909, 29176, 6151, 14368, 16111, 28904, 46794, 1217, 16829, 35690, 10232, 46796,
            13733, 17704, 37219, 25079, 6441,
        ],
    },
];

/// Writes the synthetic model once per test binary.
fn model(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = common::temp_path("synth");
        std::fs::create_dir_all(&dir).unwrap();
        let src = GgufFile::open(common::model_path()).unwrap();
        for m in synth::MODELS {
            synth::write(m, &dir.join(format!("{m}.gguf")), &src).unwrap_or_else(|e| panic!("{m}: {e}"));
        }
        dir
    });
    dir.join(format!("{name}.gguf"))
}

/// First-step logits, greedy tokens (end of generation ignored), every step's logits, and the smallest gap between
/// the best and the second-best logit over the steps.
fn run(path: &PathBuf, splits: &[usize]) -> (Vec<u32>, Vec<Vec<f32>>, f32) {
    let mut p = Pipeline::load(path, splits, common::pool()).unwrap();
    let mut logits = p.forward(0, PROMPT).unwrap();
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    let mut margin = f32::INFINITY;
    for _ in 0..GREEDY {
        let t = argmax(&logits).unwrap();
        let second = logits
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != t as usize)
            .map(|(_, &v)| v)
            .fold(f32::NEG_INFINITY, f32::max);
        margin = margin.min(logits[t as usize] - second);
        toks.push(t);
        all.push(logits);
        logits = p.forward(0, &[t]).unwrap();
    }
    (toks, all, margin)
}

fn n_layers(path: &PathBuf) -> usize {
    let g = GgufFile::open(path).unwrap();
    let arch = g.get_str("general.architecture").unwrap().to_string();
    g.get_usize(&format!("{arch}.block_count")).unwrap()
}

fn check_against_llama_cpp(name: &str) {
    let _g = common::exclusive();
    let r = REFERENCES.iter().find(|r| r.model == name).unwrap();
    let path = model(name);
    let (toks, logits, margin) = run(&path, &[]);
    let first = &logits[0];
    let sum_sq: f64 = first.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    println!(
        "{name}: greedy {toks:?}, margin {margin}, sum of squares {sum_sq:.4} (llama.cpp {})",
        r.sum_sq
    );
    for &(id, want) in &r.top8 {
        let got = first[id];
        println!("  token {id}: {got:.4}, llama.cpp {want:.4}");
        assert!(
            (got - want).abs() < LOGIT_TOLERANCE,
            "{name} token {id}: {got} vs llama.cpp {want}"
        );
    }
    assert!(
        ((sum_sq - r.sum_sq) / r.sum_sq).abs() < SUM_SQ_TOLERANCE,
        "{name}: sum of squared logits {sum_sq} vs llama.cpp {}",
        r.sum_sq
    );
    assert!(margin >= MIN_MARGIN, "{name}: a greedy step is a near-tie ({margin})");
    assert_eq!(toks, r.greedy, "{name}: greedy tokens differ from llama.cpp");

    // Every split point, and one three-stage split, gives the unsplit run bit for bit.
    let n_layers = n_layers(&path);
    let mut splits: Vec<Vec<usize>> = (1..n_layers).map(|s| vec![s]).collect();
    splits.push(vec![1, n_layers - 1]);
    for s in &splits {
        let (t, l, _) = run(&path, s);
        assert_eq!(t, toks, "{name} split {s:?}");
        let same = l
            .iter()
            .zip(&logits)
            .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(same, "{name}: logits differ for split {s:?}");
    }
}

#[test]
fn llama3_with_rope_freqs_matches_llama_cpp() {
    check_against_llama_cpp("llama3");
}

#[test]
fn qwen2_matches_llama_cpp() {
    check_against_llama_cpp("qwen2");
}

#[test]
fn qwen3_matches_llama_cpp() {
    check_against_llama_cpp("qwen3");
}

/// YaRN rope scaling (factor 4 over an original context of 64).
#[test]
fn qwen3_with_yarn_matches_llama_cpp() {
    check_against_llama_cpp("qwen3-yarn");
}

#[test]
fn qwen3moe_matches_llama_cpp() {
    check_against_llama_cpp("qwen3moe");
}

#[test]
fn gemma3_matches_llama_cpp() {
    check_against_llama_cpp("gemma3");
}

/// Linear rope scaling (factor 8) on the global layer only, and final logit soft-capping (5).
#[test]
fn gemma3_with_rope_scaling_and_softcap_matches_llama_cpp() {
    check_against_llama_cpp("gemma3-scaled");
}

/// Files these families cannot run are refused at load with the key or tensor named, never run wrongly.
#[test]
fn broken_files_are_refused_naming_the_cause() {
    let src = GgufFile::open(common::model_path()).unwrap();
    let set = |key: &'static str, v: Value| {
        move |md: &mut synth::Metadata| {
            md.retain(|(k, _)| k != key);
            md.push((key.to_string(), v.clone()));
        }
    };
    // (model, metadata edit, tensor left out, what the error must name)
    type Case<'a> = (&'a str, Box<synth::Edit>, Option<&'a str>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "qwen3",
            Box::new(set("qwen3.rope.scaling.type", Value::String("longrope".into()))),
            None,
            "qwen3.rope.scaling.type",
        ),
        (
            "qwen2",
            Box::new(|_: &mut synth::Metadata| {}),
            Some("blk.1.attn_k.bias"),
            "blk.1.attn_k.bias",
        ),
        (
            "qwen3moe",
            Box::new(set("qwen3moe.expert_used_count", Value::U32(5))),
            None,
            "qwen3moe.expert_used_count",
        ),
        (
            "qwen3moe",
            Box::new(|_: &mut synth::Metadata| {}),
            Some("blk.2.ffn_up_exps.weight"),
            "blk.2.ffn_up_exps.weight",
        ),
        (
            "gemma3",
            Box::new(|_: &mut synth::Metadata| {}),
            Some("blk.0.post_ffw_norm.weight"),
            "blk.0.post_ffw_norm.weight",
        ),
        (
            "gemma3",
            Box::new(set("gemma3.attention.value_length", Value::U32(16))),
            None,
            "gemma3.attention.value_length",
        ),
        (
            "llama3",
            Box::new(set("llama.rope.scaling.factor", Value::F32(-2.0))),
            None,
            "llama.rope.scaling.factor",
        ),
    ];
    for (i, (m, edit, drop, named)) in cases.iter().enumerate() {
        let path = common::temp_path(&format!("broken-{i}.gguf"));
        synth::write_edited(m, &path, &src, edit.as_ref(), *drop).unwrap();
        let err = Pipeline::load(&path, &[], common::pool()).unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::InvalidMetadata { .. } | EngineError::MissingTensor(_) | EngineError::InvalidTensor { .. }
            ),
            "case {i}: {err}"
        );
        assert!(err.to_string().contains(named), "case {i}: {err}");
        std::fs::remove_file(&path).unwrap();
    }
}

/// Continuous batching: two sequences in one forward pass (MoE rows of both routed together, gemma3's window and two
/// ropes per row) give bit for bit what each gives alone, through prefill and a few decode steps.
#[test]
fn batched_sequences_match_separate_runs() {
    use shoal_engine::{LayerRange, SeqChunk, Stage, StageInput, StageOutput};
    let _g = common::exclusive();
    let logits = |out: StageOutput| match out {
        StageOutput::Logits(l) => l,
        other => panic!("unexpected {other:?}"),
    };
    let other: Vec<u32> = PROMPT.iter().rev().copied().collect();
    for name in ["qwen3moe", "gemma3", "qwen2"] {
        let path = model(name);
        let n_layers = n_layers(&path);
        let mut alone = Stage::load(&path, LayerRange::new(0, n_layers), common::pool()).unwrap();
        let mut both = Stage::load(&path, LayerRange::new(0, n_layers), common::pool()).unwrap();
        let mut a = logits(alone.forward(0, StageInput::Tokens(PROMPT)).unwrap());
        let mut b = logits(alone.forward(1, StageInput::Tokens(&other)).unwrap());
        let chunks = [
            SeqChunk {
                slot: 0,
                n_tokens: PROMPT.len(),
            },
            SeqChunk {
                slot: 1,
                n_tokens: other.len(),
            },
        ];
        let ids: Vec<u32> = PROMPT.iter().chain(&other).copied().collect();
        let mut ab = logits(both.forward_batch(&chunks, StageInput::Tokens(&ids)).unwrap());
        for step in 0..8 {
            assert_eq!(ab, [a[0].clone(), b[0].clone()], "{name} step {step}");
            let (ta, tb) = (argmax(&a[0]).unwrap(), argmax(&b[0]).unwrap());
            a = logits(alone.forward(0, StageInput::Tokens(&[ta])).unwrap());
            b = logits(alone.forward(1, StageInput::Tokens(&[tb])).unwrap());
            let one = [SeqChunk { slot: 0, n_tokens: 1 }, SeqChunk { slot: 1, n_tokens: 1 }];
            ab = logits(both.forward_batch(&one, StageInput::Tokens(&[ta, tb])).unwrap());
        }
    }
}

/// A stage counts every layer it runs into the counter it is given: the runner's heartbeat reports progress inside
/// one long forward pass, so a slow prefill is not taken for a hang (issue 13).
#[test]
fn a_stage_counts_each_layer_it_runs() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use shoal_engine::{LayerRange, Stage, StageInput};
    let _g = common::exclusive();
    let path = model("qwen2");
    let n_layers = n_layers(&path);
    let mut stage = Stage::load(&path, LayerRange::new(0, n_layers), common::pool()).unwrap();
    let counter = Arc::new(AtomicU64::new(0));
    stage.count_layers_into(counter.clone());
    stage.forward(0, StageInput::Tokens(PROMPT)).unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), n_layers as u64);
    stage.forward(0, StageInput::Tokens(&PROMPT[..1])).unwrap();
    assert_eq!(counter.load(Ordering::Relaxed), 2 * n_layers as u64);
}
