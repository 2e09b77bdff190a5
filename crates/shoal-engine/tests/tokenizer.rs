//! Tokenizer, detokenizer and chat template built from the test model's GGUF metadata.
#![allow(clippy::unwrap_used)]

mod common;

use shoal_engine::{Bounded, ChatMessage, ChatTemplate, Tokenizer};

fn tok() -> Tokenizer {
    Tokenizer::from_gguf_path(common::model_path()).unwrap()
}

// Exact ids from llama.cpp, produced once with `llama-tokenize` built from the llama.cpp vendored in the PyPI sdist
// llama-cpp-python 0.3.36 (ggml-org/llama.cpp@0c1e57098), CPU-only Release build, one file per string:
//   llama-tokenize -m SmolLM2-135M-Instruct.Q4_1.gguf -f <file with the exact bytes> --no-escape --ids --no-bos
// `-f` + `--no-escape` pass the bytes verbatim (tabs, CR/LF, trailing newline). llama-tokenize parses special tokens by
// default (as `Tokenizer::encode` does), so `<|im_start|>`/`<|im_end|>` are ids 1/2. This model does not ask for
// BOS, so `--no-bos` changes nothing; shoal adds none either.
const SAMPLES: &[(&str, &[u32])] = &[
    ("Hello world", &[19556, 905]),
    (" leading space", &[2899, 1898]),
    (
        "1234567 apples cost $89.50",
        &[33, 34, 35, 36, 37, 38, 39, 13855, 1708, 1885, 40, 41, 30, 37, 32],
    ),
    (
        "naïve café – 東京 🙂",
        &[3546, 46494, 37366, 816, 17097, 247, 126, 16736, 122, 47526],
    ),
    (
        "tabs\tand\nnewlines\n\n  indented",
        &[100, 7366, 197, 397, 198, 2241, 5110, 8866, 641, 6574],
    ),
    ("<|im_start|>user\nHi<|im_end|>\n", &[1, 4093, 198, 26843, 2, 198]),
    ("<|im_start|> spaced <|im_end|>", &[1, 23861, 216, 2]),
    ("don't won't I'm", &[12420, 982, 3763, 982, 339, 5248]),
    (
        "x=[1,2,3]; y={'a': 10}",
        &[
            104, 7407, 33, 28, 34, 28, 35, 26695, 329, 19837, 81, 1539, 216, 33, 32, 109,
        ],
    ),
    (
        "ZWJ 👩\u{200d}👩\u{200d}👧 family",
        &[
            74, 71, 58, 15107, 235, 119, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117, 1564,
        ],
    ),
    ("   ", &[333]),
    ("", &[]),
    (
        "12345 and 3.14159",
        &[33, 34, 35, 36, 37, 284, 216, 35, 30, 33, 36, 33, 37, 41],
    ),
    (
        "héllo wörld ñ 日本語 🐟🐠",
        &[
            88, 2756, 31394, 267, 29989, 400, 5549, 126, 17097, 241, 115, 40993, 179, 120, 248, 15107, 234, 249, 10813,
            234, 250,
        ],
    ),
    ("  a\n\n b  ", &[216, 253, 1116, 278, 256]),
    (
        "\ttab\t\tdouble tab \t",
        &[197, 15999, 197, 197, 21414, 10147, 216, 197],
    ),
    ("<|im_start|>user\nhi<|im_end|>", &[1, 4093, 198, 6004, 2]),
    ("line\r\nwindows\r\n", &[1311, 201, 198, 37066, 2738]),
    (
        "I'LL SAY it's 'quoted' ok",
        &[57, 23, 16421, 17220, 73, 357, 506, 637, 385, 5036, 23, 10907],
    ),
    ("trailing newline\n", &[4861, 4966, 725, 1311, 198]),
];

#[test]
fn ids_match_llama_cpp() {
    let t = tok();
    let mismatches: Vec<String> = SAMPLES
        .iter()
        .filter_map(|&(s, want)| {
            let got = t.encode(s).unwrap();
            (got != want).then(|| format!("{s:?}: shoal {got:?}, llama.cpp {want:?}"))
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn samples_round_trip() {
    let t = tok();
    for &(s, _) in SAMPLES {
        let ids = t.encode(s).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), s, "round trip of {s:?}");
    }
}

#[test]
fn no_prefix_space_and_no_bos() {
    let t = tok();
    let ids = t.encode("Hello").unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(t.token_text(ids[0]).as_deref(), Some("Hello"));
    let spaced = t.encode(" Hello").unwrap();
    assert_eq!(t.token_text(spaced[0]).as_deref(), Some("ĠHello"));
}

#[test]
fn digits_are_split_individually() {
    let t = tok();
    let ids = t.encode("2024").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
    assert_eq!(pieces, ["2", "0", "2", "4"]);
    let ids = t.encode("a 12").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| t.token_text(i).unwrap()).collect();
    // The space stays its own piece because digits are split off before byte-level pre-tokenization.
    assert_eq!(pieces, ["a", "Ġ", "1", "2"]);
}

#[test]
fn control_tokens_are_single_special_ids() {
    let t = tok();
    assert_eq!(t.encode("<|im_start|>").unwrap(), [1]);
    assert_eq!(t.encode("<|im_end|>").unwrap(), [2]);
    assert_eq!(t.eos(), 2);
    assert_eq!(t.bos(), Some(1));
    assert!(t.is_end_of_generation(2));
    assert!(t.is_special(0) && t.is_special(16) && !t.is_special(17));
    let ids = t.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert_eq!(ids.last(), Some(&2));
    assert_eq!(t.decode(&ids, true).unwrap(), "user\nHi");
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
    // An emoji is several byte-level tokens; the partial ones must yield nothing.
    let ids = t.encode("🙂").unwrap();
    assert!(ids.len() > 1, "expected a multi-token emoji, got {ids:?}");
    let mut dec = t.decoder();
    let pieces: Vec<String> = ids.iter().map(|&i| dec.push(i)).collect();
    assert!(pieces[..pieces.len() - 1].iter().all(String::is_empty), "{pieces:?}");
    assert_eq!(pieces.last().map(String::as_str), Some("🙂"));
}

#[test]
fn truncated_multibyte_sequence_flushes_as_replacement() {
    let t = tok();
    let ids = t.encode("🙂").unwrap();
    let mut dec = t.decoder();
    let partial: String = ids[..ids.len() - 1].iter().map(|&i| dec.push(i)).collect();
    assert_eq!(partial, "");
    assert_eq!(dec.finish(), t.decode(&ids[..ids.len() - 1], true).unwrap());
}

#[test]
fn chat_template_injects_default_system_prompt() {
    let t = tok();
    let tpl = ChatTemplate::from_tokenizer(&t).unwrap();
    let s = tpl.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let s = tpl
        .render(
            &[ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")],
            false,
        )
        .unwrap();
    assert_eq!(
        s,
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    );
    let ids = t.encode(&s).unwrap();
    println!("system+user prompt ids: {ids:?}");
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 2);
}

#[test]
fn template_features_used_by_hf_templates() {
    let tpl = ChatTemplate::new(
        "{% for m in messages %}{{ m.content.strip() | upper }}{% if not loop.last %}|{% endif %}{% endfor %}\
         {% if messages | length > 5 %}{{ raise_exception('too many') }}{% endif %}",
        "<s>",
        "</s>",
    )
    .unwrap();
    assert_eq!(
        tpl.render(&[ChatMessage::new("user", " a "), ChatMessage::new("user", "b")], false)
            .unwrap(),
        "A|B"
    );
    let many: Vec<_> = (0..6).map(|i| ChatMessage::new("user", i.to_string())).collect();
    let err = tpl.render(&many, false).unwrap_err();
    assert!(err.to_string().contains("too many"), "{err}");
    assert!(ChatTemplate::new("{% if %}", "", "").is_err());
}

/// A prompt far past the context (issue 15): told by its length alone when no token could cover it, else in pieces
/// that stop at the limit; either way the count is a true lower bound.
#[test]
fn a_prompt_past_the_context_is_told_without_tokenizing_all_of_it() {
    let t = tok();
    let context = 8_192;
    let huge = "lorem ipsum ".repeat(350_000);
    let Bounded::Over { at_least } = t.encode_within(&huge, context).unwrap() else {
        panic!("4 MB of text within the context")
    };
    assert!(at_least > context);
    // 1 MB: a token could cover it, so it is tokenized, in pieces, up to the first past the limit.
    let large = "lorem ipsum ".repeat(90_000);
    let Bounded::Over { at_least } = t.encode_within(&large, context).unwrap() else {
        panic!("1 MB of text within the context")
    };
    assert!(at_least > context && at_least < context + 16 * 1024, "{at_least}");
    let whole = t.encode(&large).unwrap().len();
    assert!(at_least <= whole, "{at_least} > {whole}");
    let short = "lorem ipsum ".repeat(100);
    assert_eq!(
        t.encode_within(&short, context).unwrap(),
        Bounded::Tokens(t.encode(&short).unwrap())
    );
}
