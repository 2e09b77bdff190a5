//! A split GGUF set (llama.cpp's `gguf-split` layout: `PREFIX-00001-of-00003.gguf` …, each part a complete GGUF,
//! `split.no` / `split.count` / `split.tensors.count`, the model's metadata in the first part) loads as one model
//! when its first part is named: the synthetic models of tests/common/synth.rs written once as a single file and
//! once as a set of 3 parts give bit-identical logits and the same greedy tokens, in one stage and split over
//! stages; every broken set is an error naming the file at fault.
//!
//! The sets are llama.cpp's own, and llama.cpp loads them as one model (checked by hand, not in CI; llama.cpp as
//! vendored in llama-cpp-python 0.3.36, `cmake --build build --target llama-gguf-split` added to the reference
//! build; tools/llama_logits.cpp as in tests/architectures.rs, no repacked weights):
//!   cargo test -p shoal-engine --test split_gguf -- --ignored write_sets_for_llama_cpp   # writes /tmp/shoal-split
//!   llama-gguf-split --split --split-max-tensors 11 /tmp/shoal-split/llama3.gguf ref/llama3     # 31 tensors
//!   llama-gguf-split --split --split-max-tensors 13 /tmp/shoal-split/qwen3moe.gguf ref/qwen3moe # 39 tensors
//!   cmp ref/MODEL-0000i-of-00003.gguf /tmp/shoal-split/MODEL-0000i-of-00003.gguf                # i = 1, 2, 3
//!   /tmp/llama_logits /tmp/shoal-split/MODEL.gguf 20 1 4093 198 1780 314 260 3575 282 4649 47 2 198
//!   /tmp/llama_logits /tmp/shoal-split/MODEL-00001-of-00003.gguf 20 1 4093 198 1780 314 260 3575 282 4649 47 2 198
//! All six parts are byte-identical to gguf-split's. For llama3 and qwen3moe the single file and the set print the
//! same output (top-8 first-step logits, sum of squares, 20 greedy tokens: those pinned in tests/architectures.rs,
//! e.g. llama3 24615, 34328, 47060, …, sum of squares 47957.8844; qwen3moe 48623, 13439, 45545, …, 50070.6745).
//! With the third part removed llama.cpp stops at "failed to load GGUF split from …-00003-of-00003.gguf", and named
//! by its second part at "illegal split file idx: 1 …, model must be loaded with the first split".
#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/synth.rs"]
mod synth;

use std::path::{Path, PathBuf};

use shoal_engine::gguf::{GgufFile, Value};
use shoal_engine::sampling::argmax;
use shoal_engine::tokenizer::Tokenizer;
use shoal_engine::{EngineError, Pipeline};

/// The prompt of tests/architectures.rs (SmolLM2 ids of a short chat turn).
const PROMPT: &[u32] = &[1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198];
/// Greedy steps compared: enough to run every layer over a growing cache, few enough to stay fast.
const STEPS: usize = 8;
/// Parts of every split set here: more than two, so a middle part is checked too.
const PARTS: usize = 3;

/// The model as one file and as a split set of [`PARTS`] in `dir`: (single file, first part of the set).
fn write_both(model: &str, dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let src = GgufFile::open(common::model_path()).unwrap();
    let (md, tensors) = synth::build(model, &src).unwrap();
    let single = dir.join(format!("{model}.gguf"));
    synth::write_file(&single, &md, &tensors).unwrap();
    let parts = synth::write_split(dir, model, &md, &tensors, PARTS, &|_, _, _| {}).unwrap();
    (single, parts[0].clone())
}

/// Every step's logits and the greedy tokens.
fn run(path: &Path, splits: &[usize]) -> (Vec<u32>, Vec<Vec<u32>>) {
    let mut p = Pipeline::load(path, splits, common::pool()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut logits = p.forward(0, PROMPT).unwrap();
    let (mut toks, mut all) = (Vec::new(), Vec::new());
    for _ in 0..STEPS {
        let t = argmax(&logits).unwrap();
        toks.push(t);
        all.push(logits.iter().map(|v| v.to_bits()).collect());
        logits = p.forward(0, &[t]).unwrap();
    }
    (toks, all)
}

fn check_model(model: &str) {
    let _g = common::exclusive();
    let dir = common::temp_path(&format!("split-{model}"));
    let (single, first) = write_both(model, &dir);

    let set = GgufFile::open(&first).unwrap();
    let parts: Vec<&Path> = set.part_paths().collect();
    let names: Vec<String> = (0..PARTS).map(|i| synth::split_part_name(model, i, PARTS)).collect();
    assert_eq!(parts, names.iter().map(|n| dir.join(n)).collect::<Vec<_>>());
    let one = GgufFile::open(&single).unwrap();
    assert_eq!(one.part_paths().count(), 1);
    // Metadata comes from the first part (plus its split keys); every tensor is found in whichever part holds it.
    let n_layers = one
        .get_usize(&format!("{}.block_count", one.get_str("general.architecture").unwrap()))
        .unwrap();
    assert_eq!(set.get_usize("split.count").unwrap(), PARTS);
    for (k, v) in one.metadata() {
        assert_eq!(
            set.metadata().find(|(sk, _)| *sk == k).map(|(_, sv)| sv),
            Some(v),
            "{model}: key {k}"
        );
    }
    for name in ["token_embd.weight", "output.weight", "blk.0.attn_q.weight"] {
        assert!(set.has_tensor(name), "{model}: {name}");
    }
    let last_norm = format!("blk.{}.ffn_norm.weight", n_layers - 1);
    let (mut a, mut b) = (one, set);
    assert_eq!(a.read_vector(&last_norm).unwrap(), b.read_vector(&last_norm).unwrap());
    assert_eq!(a.tensor_bytes_read(), b.tensor_bytes_read());

    // The tokenizer reads its metadata from the first part.
    let text = "Hello, split world!";
    assert_eq!(
        Tokenizer::from_gguf_path(&single).unwrap().encode(text).unwrap(),
        Tokenizer::from_gguf_path(&first).unwrap().encode(text).unwrap()
    );

    let (want_toks, want_logits) = run(&single, &[]);
    for splits in [vec![], vec![1], vec![1, n_layers - 1]] {
        let (toks, logits) = run(&first, &splits);
        assert_eq!(
            toks, want_toks,
            "{model}: tokens of the split set, stages split at {splits:?}"
        );
        assert!(
            logits == want_logits,
            "{model}: logits of the split set differ, stages split at {splits:?}"
        );
    }
    let bytes = |p: &Path| {
        let pipe = Pipeline::load(p, &[1], common::pool()).unwrap();
        pipe.stages().iter().map(|s| s.weight_bytes()).collect::<Vec<_>>()
    };
    assert_eq!(bytes(&single), bytes(&first), "{model}: weight bytes per stage");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn llama_split_set_runs_like_the_single_file() {
    check_model("llama3");
}

/// Expert stacks (`read_expert_matrices`) served from a later part.
#[test]
fn moe_split_set_runs_like_the_single_file() {
    check_model("qwen3moe");
}

/// `gguf-split --no-tensor-first-split` leaves the metadata alone in the first part.
#[test]
fn set_with_a_metadata_only_first_part_runs() {
    let _g = common::exclusive();
    let dir = common::temp_path("split-metadata-first");
    let (single, _) = write_both("qwen2", &dir);
    let src = GgufFile::open(common::model_path()).unwrap();
    let (md, tensors) = synth::build("qwen2", &src).unwrap();
    let per_part = tensors.len().div_ceil(PARTS);
    let head = tensors[..per_part].to_vec();
    let p = synth::write_split(&dir, "bare", &md, &tensors, PARTS, &move |no, _, t| match no {
        0 => t.clear(),
        1 => t.splice(0..0, head.iter().cloned()).for_each(drop),
        _ => {}
    })
    .unwrap();
    assert_eq!(GgufFile::open(&p[0]).unwrap().part_paths().count(), PARTS);
    let (want, want_logits) = run(&single, &[]);
    let (toks, logits) = run(&p[0], &[2]);
    assert_eq!(toks, want);
    assert!(logits == want_logits, "logits differ");
    std::fs::remove_dir_all(&dir).ok();
}

/// The error of opening `path`, which must be an `InvalidGguf` about `at`; returns its message.
fn invalid_at(path: &Path, at: &Path) -> String {
    let err = GgufFile::open(path).map(|_| ()).unwrap_err();
    match &err {
        EngineError::InvalidGguf { path: p, .. } => assert_eq!(p, at, "{err}"),
        other => panic!("{}: expected InvalidGguf, got {other}", path.display()),
    }
    err.to_string()
}

#[test]
fn broken_split_sets_are_errors_naming_the_file() {
    let dir = common::temp_path("split-broken");
    std::fs::create_dir_all(&dir).unwrap();
    let src = GgufFile::open(common::model_path()).unwrap();
    let (md, tensors) = synth::build("llama3", &src).unwrap();
    let set = |prefix: &str, edit: &dyn Fn(usize, &mut synth::Metadata, &mut Vec<synth::Tensor>)| {
        synth::write_split(&dir, prefix, &md, &tensors, PARTS, edit).unwrap()
    };
    let contains = |msg: &str, want: &str| assert!(msg.contains(want), "`{msg}` lacks `{want}`");

    // A missing part.
    let p = set("missing", &|_, _, _| {});
    std::fs::remove_file(&p[2]).unwrap();
    contains(&invalid_at(&p[0], &p[2]), "part 3 of the split set");
    contains(&invalid_at(&p[0], &p[2]), "is missing");

    // A part of another set: the right name but another count.
    let p = set("count", &|no, md, _| {
        if no == 1 {
            for (k, v) in md.iter_mut() {
                if k == "split.count" {
                    *v = Value::U16(4);
                }
            }
        }
    });
    contains(&invalid_at(&p[0], &p[1]), "says it is part 2 of 4");

    // A part numbered as another.
    let p = set("number", &|no, md, _| {
        if no == 2 {
            for (k, v) in md.iter_mut() {
                if k == "split.no" {
                    *v = Value::U16(1);
                }
            }
        }
    });
    contains(&invalid_at(&p[0], &p[2]), "says it is part 2 of 3");

    // A part of a set with another tensor total.
    let p = set("total", &|no, md, _| {
        if no == 1 {
            for (k, v) in md.iter_mut() {
                if k == "split.tensors.count" {
                    *v = Value::I32(7);
                }
            }
        }
    });
    contains(&invalid_at(&p[0], &p[1]), "belongs to a set of 7 tensors, not ");

    // A tensor in two parts.
    let dup = tensors[tensors.len().div_ceil(PARTS)].clone();
    let dup_name = dup.0.clone();
    let p = set("duplicate", &move |no, _, t| {
        if no == 2 {
            t.push(dup.clone());
        }
    });
    let msg = invalid_at(&p[0], &p[2]);
    contains(&msg, &format!("tensor `{dup_name}`"));
    contains(&msg, &p[1].display().to_string());

    // Parts that hold fewer tensors than the first part says.
    let p = set("fewer", &|no, _, t| {
        if no == 2 {
            t.pop();
        }
    });
    contains(
        &invalid_at(&p[0], &p[0]),
        &format!("hold {} tensors", tensors.len() - 1),
    );

    // A part that is not GGUF.
    let p = set("garbage", &|_, _, _| {});
    std::fs::write(&p[1], b"not a model file at all").unwrap();
    let msg = invalid_at(&p[0], &p[1]);
    contains(&msg, "part 2 of the split set");
    contains(&msg, "no GGUF magic");

    // A later part named: the error says which file to name.
    let p = set("later", &|_, _, _| {});
    contains(
        &invalid_at(&p[1], &p[1]),
        "this is part 2 of a split set of 3: open its first part, later-00001-of-00003.gguf",
    );

    // A first part renamed, so its siblings cannot be found.
    let renamed = dir.join("renamed.gguf");
    std::fs::copy(&p[0], &renamed).unwrap();
    contains(
        &invalid_at(&renamed, &renamed),
        "must be named PREFIX-00001-of-00003.gguf",
    );

    // The loaders report the same errors.
    let err = Pipeline::load(&renamed, &[], common::pool()).map(|_| ()).unwrap_err();
    assert!(matches!(err, EngineError::InvalidGguf { .. }), "{err}");
    let err = Tokenizer::from_gguf_path(&p[1]).map(|_| ()).unwrap_err();
    assert!(matches!(err, EngineError::InvalidGguf { .. }), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes each model as a single file and as a split set in /tmp/shoal-split, for the llama.cpp runs in the header.
#[test]
#[ignore]
fn write_sets_for_llama_cpp() {
    let dir = PathBuf::from("/tmp/shoal-split");
    for m in ["llama3", "qwen3moe"] {
        let (single, first) = write_both(m, &dir);
        println!("{} {}", single.display(), first.display());
    }
}
