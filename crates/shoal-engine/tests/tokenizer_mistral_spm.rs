//! SentencePiece with `add_space_prefix = true` (Mistral 7B Instruct v0.3's tokenizer.model from a pinned PyPI
//! wheel, laid into a vocabulary-only GGUF by tests/vocab) against llama.cpp: the prefix space at the start and
//! after every special token, and llama_detokenize's rule for dropping it again.
#![allow(clippy::unwrap_used)]

mod vocab;

use std::path::PathBuf;
use std::sync::OnceLock;

use shoal_engine::Tokenizer;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = std::env::var("SHOAL_VOCAB_GGUF_DIR").map_or_else(
            |_| std::env::temp_dir().join(format!("shoal-vocab-tests-{}", std::process::id())),
            PathBuf::from,
        );
        std::fs::create_dir_all(&dir).unwrap();
        let model = vocab::fetch(&vocab::MISTRAL_V3_SPM);
        let path = vocab::write_spm_gguf(&model, &dir.join("mistral-v3-spm-vocab.gguf"));
        Tokenizer::from_gguf_path(path).unwrap_or_else(|e| panic!("mistral v0.3 tokenizer: {e}"))
    })
}

// Exact ids from llama.cpp through tools/ref_tokenize.cpp (llama_tokenize(add_special = true, parse_special = true),
// what `llama-tokenize` calls) on the GGUF this test writes (SHOAL_VOCAB_GGUF_DIR=/tmp/v keeps it):
//   python3 tools/sample_files.py tests/tokenizer_mistral_spm.rs SAMPLES /tmp/m
//   /tmp/ref_tokenize /tmp/v/mistral-v3-spm-vocab.gguf /tmp/m/*.txt
const SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[1, 23325, 2294]),
    (" leading space", &[1, 29473, 6142, 3532]),
    (
        "1234567 apples cost $89.50",
        &[
            1, 29473, 29508, 29518, 29538, 29549, 29550, 29552, 29555, 1747, 3583, 3202, 1197, 29551, 29542, 29491,
            29550, 29502,
        ],
    ),
    (
        "naïve café – 東京 🙂",
        &[1, 2647, 29688, 1101, 29113, 1532, 29473, 31134, 30704, 29473, 30108],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[1, 1029, 5505, 780, 1159, 781, 1863, 8831, 781, 781, 29473, 1944, 13481],
    ),
    (
        "[INST] Hi [/INST]Hello</s>[INST]again[/INST]",
        &[1, 3, 29473, 16127, 29473, 4, 23325, 2, 3, 1844, 4],
    ),
    (
        "don't WON'T I'm they'LL",
        &[
            1, 1717, 29510, 29475, 1162, 1600, 29510, 29506, 1083, 29510, 29487, 1358, 29510, 6060,
        ],
    ),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            1, 2086, 13071, 29508, 29493, 29518, 29493, 29538, 2436, 1105, 29077, 29476, 2637, 29473, 29508, 29502,
            29520,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[
            1, 1822, 29548, 29566, 29473, 1011, 930, 916, 940, 30042, 1011, 930, 916, 940, 30042, 1011, 930, 916, 938,
            2773,
        ],
    ),
    ("   ", &[1, 1028]),
    ("", &[1]),
    ("  a\n\n b  ", &[1, 1027, 1032, 781, 781, 1055, 1027]),
    ("line\r\nwindows\r\n", &[1, 2175, 29569, 781, 12881, 29569, 781]),
    (
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        &[
            1, 5379, 2959, 1238, 1139, 781, 3055, 3450, 5546, 19996, 7165, 1316, 29473, 29508, 1416, 29473, 29518,
            1112, 781, 29520, 781,
        ],
    ),
    (
        "héllo wörld ñ 日本語 🐟🐠 𝔘",
        &[
            1, 1063, 29565, 1352, 29477, 1043, 2792, 1185, 29473, 29645, 29473, 29910, 29887, 31089, 29473, 1011, 930,
            915, 930, 1011, 930, 915, 931, 29473, 1011, 928, 919, 923,
        ],
    ),
];

#[test]
fn ids_match_llama_cpp() {
    let t = tok();
    let mut mismatches = Vec::new();
    for &(s, want) in SAMPLES {
        let got = t.encode(s).unwrap();
        println!("    ({s:?}, &{got:?}),");
        if got != want {
            mismatches.push(format!("{s:?}: shoal {got:?}, llama.cpp {want:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// llama_detokenize drops the prefix space of the first piece, but not when a skipped BOS came first.
#[test]
fn prefix_space_is_dropped_as_llama_cpp_does() {
    let t = tok();
    let ids = t.encode("Hello world").unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(t.token_text(ids[1]).as_deref(), Some("▁Hello"));
    assert_eq!(t.decode(&ids[1..], true).unwrap(), "Hello world");
    assert_eq!(t.decode(&ids, false).unwrap(), "<s> Hello world");
    assert_eq!(t.decode(&ids, true).unwrap(), " Hello world");
    // Streaming keeps every piece's space: generated text continues a prompt.
    let mut dec = t.decoder();
    let streamed: String = ids[1..].iter().map(|&i| dec.push(i)).collect();
    assert_eq!(streamed, " Hello world");
}
