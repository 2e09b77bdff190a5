//! SentencePiece (`tokenizer.ggml.model = llama`) against llama.cpp, on Gemma 3's real 262,144-token vocabulary
//! (the 270M test model; only its header is read).
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use shoal_engine::{ChatMessage, ChatTemplate, Tokenizer};

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_gguf_path(common::gemma_path()).unwrap_or_else(|e| panic!("gemma tokenizer: {e}"))
    })
}

// Exact ids from llama.cpp (the reference build of shared/scripts/build-llama-reference.sh, llama-cpp-python 0.3.36),
// through tools/ref_tokenize.cpp, which calls llama_tokenize(add_special = true, parse_special = true) as
// `llama-tokenize` does, on the real Gemma 3 270M file:
//   python3 tools/sample_files.py tests/tokenizer_gemma.rs SAMPLES /tmp/g
//   /tmp/ref_tokenize gemma-3-270m-q4_k_m.gguf /tmp/g/*.txt
// and cross-checked with the reference `llama-tokenize` itself (same ids for every non-empty sample):
//   llama-tokenize -m FILE.gguf -f /tmp/x/NN.txt --no-escape --ids --log-disable
// BOS (2) comes first because the file sets add_bos_token; add_space_prefix is false, so no `▁` is added.
const SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[2, 9259, 1902]),
    (" leading space", &[2, 5830, 2557]),
    (
        "1234567 apples cost $89.50",
        &[
            2, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 36157, 2157, 609, 236828, 236819, 236761,
            236810, 236771,
        ],
    ),
    (
        "naïve café – 東京 🙂",
        &[2, 1789, 238527, 560, 33443, 1271, 86459, 57235],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[2, 39218, 255968, 624, 107, 208697, 108, 138, 724, 16764],
    ),
    (
        "<start_of_turn>user\nHi<end_of_turn>\n",
        &[2, 105, 2364, 107, 10979, 106, 107],
    ),
    ("<start_of_turn> spaced <end_of_turn>", &[2, 105, 52589, 236743, 106]),
    (
        "don't won't I'm",
        &[2, 13246, 236789, 236745, 2810, 236789, 236745, 564, 236789, 236757],
    ),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            2, 236781, 12430, 236770, 236764, 236778, 236764, 236800, 2312, 570, 45335, 236746, 2632, 236743, 236770,
            236771, 236783,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[2, 149729, 236863, 236743, 243767, 237243, 243767, 237243, 244814, 2523],
    ),
    ("   ", &[2, 139]),
    ("", &[2]),
    (
        "héllo wörld ñ 日本語 🐟🐠",
        &[
            2, 236754, 7869, 844, 515, 4010, 671, 131079, 33375, 238582, 236743, 246955, 249073,
        ],
    ),
    ("  a\n\n b  ", &[2, 138, 236746, 108, 518, 138]),
    (
        "\ttab\t\tdouble tab \t",
        &[2, 255968, 4823, 255969, 7902, 6937, 236743, 255968],
    ),
    ("line\r\nwindows\r\n", &[2, 1257, 251, 107, 33908, 251, 107]),
    (
        "I'LL SAY it's 'quoted' ok",
        &[
            2, 236777, 236789, 2182, 131360, 625, 236789, 236751, 756, 148758, 236789, 7546,
        ],
    ),
    ("trailing newline\n", &[2, 136697, 100837, 107]),
    (
        "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
        &[
            2, 15059, 1689, 825, 642, 107, 140, 4629, 183228, 236743, 236770, 900, 236743, 236778, 626, 107, 236783,
            107,
        ],
    ),
    (
        "<bos><eos><pad><unk><mask>[multimodal]<start_of_image>",
        &[2, 2, 1, 0, 3, 4, 5, 255999],
    ),
    ("a<unused17>b", &[2, 236746, 23, 236763]),
    (
        "\u{1F9A5}\u{E000}\u{10FFFD}",
        &[2, 478, 397, 404, 403, 245863, 482, 381, 429, 427],
    ),
    (
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑ ∫ ≠ ½",
        &[
            2, 478, 395, 386, 390, 478, 395, 386, 409, 254865, 478, 395, 386, 398, 255458, 478, 395, 386, 399, 478,
            395, 386, 400, 76689, 71999, 193600, 47041,
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

#[test]
fn samples_round_trip() {
    let t = tok();
    for &(s, _) in SAMPLES {
        let ids = t.encode(s).unwrap();
        assert_eq!(
            t.decode(&ids, false).unwrap(),
            format!("<bos>{s}"),
            "round trip of {s:?}"
        );
    }
}

#[test]
fn bos_added_no_space_prefix() {
    let t = tok();
    assert_eq!(t.bos(), Some(2));
    assert_eq!(t.eos(), 1);
    let ids = t.encode("Hello").unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert_eq!(ids[0], 2);
    // add_space_prefix is false for Gemma: no `▁` in front of the first word.
    assert_eq!(t.token_text(ids[1]).as_deref(), Some("Hello"));
    let spaced = t.encode(" Hello").unwrap();
    assert_eq!(t.token_text(spaced[1]).as_deref(), Some("▁Hello"));
}

#[test]
fn end_of_turn_ends_generation() {
    let t = tok();
    let eot = t.token_id("<end_of_turn>").unwrap();
    assert_eq!(eot, 106);
    assert!(
        t.is_end_of_generation(eot),
        "llama.cpp treats <end_of_turn> as end of generation"
    );
    assert!(t.is_end_of_generation(1));
    assert!(t.is_special(eot) && t.is_special(2) && !t.is_special(107));
}

#[test]
fn specials_skipped_when_decoding_user_defined_kept() {
    let t = tok();
    let ids = t.encode("<start_of_turn>user\n  Hi<end_of_turn>\n").unwrap();
    // `\n` and the two-space run are user-defined tokens: printed even when specials are skipped.
    assert_eq!(t.decode(&ids, true).unwrap(), "user\n  Hi\n");
}

#[test]
fn incremental_decoder_never_splits_characters() {
    let t = tok();
    for &(s, _) in SAMPLES {
        let ids = t.encode(s).unwrap();
        let mut dec = t.decoder();
        let mut out = String::new();
        for &id in &ids {
            let piece = dec.push(id);
            assert!(!piece.contains('\u{FFFD}'), "{s:?}: replacement char in {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&dec.finish());
        assert_eq!(out, t.decode(&ids, true).unwrap(), "{s:?}");
    }
    // U+1D518 is not a token: it goes out as four <0xXX> byte tokens, the first three of which print nothing.
    let ids = t.encode("𝔘").unwrap();
    assert_eq!(ids[1..], [478, 395, 386, 390]);
    let mut dec = t.decoder();
    let pieces: Vec<String> = ids.iter().map(|&i| dec.push(i)).collect();
    assert_eq!(pieces, ["", "", "", "", "𝔘"]);
    let mut dec = t.decoder();
    let partial: String = ids[..3].iter().map(|&i| dec.push(i)).collect();
    assert_eq!(partial, "");
    assert_eq!(dec.finish(), "\u{FFFD}");
}

/// Load time of the 262,144-token vocabulary and tokenization speed of a long text; printed (run with
/// `--nocapture`), bounded only loosely so a slow CI machine does not fail it.
#[test]
fn load_and_long_text_speed() {
    const MAX_LOAD_S: f64 = 20.0;
    const MAX_ENCODE_S: f64 = 20.0;
    let path = common::gemma_path();
    let start = Instant::now();
    let gguf = shoal_engine::gguf::GgufFile::open(&path).unwrap();
    let header = start.elapsed().as_secs_f64();
    let t = Tokenizer::from_gguf(&gguf).unwrap();
    let load = start.elapsed().as_secs_f64();
    let paragraph = "The quick brown fox jumps over the lazy dog; naïve café – 東京 🙂 1234567.\n\
                     fn main() {\n    println!(\"{}\", 1 + 2);\n}\n<start_of_turn>user\nHi<end_of_turn>\n";
    let text = paragraph.repeat(1000);
    let start = Instant::now();
    let ids = t.encode(&text).unwrap();
    let encode = start.elapsed().as_secs_f64();
    println!(
        "gemma3 vocab: header {header:.3}s, header+tokenizer {load:.3}s; {} bytes -> {} tokens in {encode:.3}s ({:.1} MB/s)",
        text.len(),
        ids.len(),
        text.len() as f64 / encode / 1e6
    );
    assert!(load < MAX_LOAD_S && encode < MAX_ENCODE_S);
    assert_eq!(t.decode(&ids, false).unwrap(), format!("<bos>{text}"));
}

#[test]
fn missing_chat_template_falls_back_to_gemma_format() {
    let t = tok();
    assert!(t.chat_template().is_none(), "the 270M base model ships no template");
    let tpl = ChatTemplate::from_tokenizer(t).unwrap();
    assert_eq!(tpl.builtin_kind(), Some(shoal_engine::chat::Builtin::Gemma));
    let s = tpl
        .render(
            &[
                ChatMessage::new("system", " Be brief. "),
                ChatMessage::new("user", "Hi\n"),
                ChatMessage::new("assistant", "Hello!"),
                ChatMessage::new("user", "Bye"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(
        s,
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    let ids = t.encode(&s).unwrap();
    assert_eq!(ids[..3], [2, 105, 2364], "<bos> <start_of_turn> user");
}

/// A Jinja template that writes `{{ bos_token }}` (Gemma's instruct templates do) on a file with add_bos_token:
/// the rendered BOS is dropped as llama.cpp drops it, so the prompt holds exactly one.
#[test]
fn template_bos_is_not_doubled() {
    let t = tok();
    assert!(t.add_bos() && !t.add_eos());
    let tpl = ChatTemplate::new(
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}",
        "<bos>",
        "<eos>",
    )
    .unwrap()
    .strip_specials(t.add_bos(), t.add_eos());
    let s = tpl.render(&[ChatMessage::new("user", "Hi")], false).unwrap();
    assert_eq!(s, "<start_of_turn>user\nHi<end_of_turn>\n");
    let ids = t.encode(&s).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 1, "{ids:?}");
}
