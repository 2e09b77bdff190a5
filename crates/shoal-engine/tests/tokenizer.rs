//! Tokenizer, detokenizer and chat template built from the test model's GGUF metadata.
#![allow(clippy::unwrap_used)]

mod common;

use shoal_engine::{ChatMessage, ChatTemplate, Tokenizer};

fn tok() -> Tokenizer {
    Tokenizer::from_gguf_path(common::model_path()).unwrap()
}

// TODO(llama.cpp reference ids): produce once with
//   llama-tokenize -m SmolLM2-135M-Instruct.Q4_1.gguf --ids --no-bos -p '<string>'
// and pin them here as exact expectations. Strings:
//   "Hello world", " leading space", "1234567 apples cost $89.50", "naïve café – 東京 🙂",
//   "tabs\tand\nnewlines\n\n  indented", "<|im_start|>user\nHi<|im_end|>\n", "<|im_start|> spaced <|im_end|>",
//   "don't won't I'm", "x=[1,2,3]; y={'a': 10}", "ZWJ 👩‍👩‍👧 family", "   ", "".
const SAMPLES: &[&str] = &[
    "Hello world",
    " leading space",
    "1234567 apples cost $89.50",
    "naïve café – 東京 🙂",
    "tabs\tand\nnewlines\n\n  indented",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|> spaced <|im_end|>",
    "don't won't I'm",
    "x=[1,2,3]; y={'a': 10}",
    "ZWJ 👩‍👩‍👧 family",
    "   ",
];

#[test]
fn samples_round_trip_and_print_ids() {
    let t = tok();
    for s in SAMPLES {
        let ids = t.encode(s).unwrap();
        println!("{s:?} -> {ids:?}");
        assert_eq!(t.decode(&ids, false).unwrap(), *s, "round trip of {s:?}");
    }
    assert!(t.encode("").unwrap().is_empty());
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
    for s in SAMPLES {
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
