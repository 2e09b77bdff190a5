//! Constrained decoding on the test model's real tokenizer: whatever the logits say (random here), the output
//! matches the grammar.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::Value;
use shoal_engine::{Constraint, Decoding, FinishReason, GenerateParams, SamplingParams, Tokenizer};

/// Extra logits past the vocabulary, as a model with a padded output layer has: they must be masked too.
const PADDING: usize = 7;
const CONTEXT: usize = 8_192;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf_path(common::model_path()).unwrap())
}

const PERSON: &str = r#"{"type":"object","properties":{
  "name":{"type":"string","maxLength":8},
  "age":{"type":"integer","minimum":0,"maximum":120},
  "color":{"enum":["red","green","blue"]},
  "tags":{"type":"array","items":{"type":"string","maxLength":5},"maxItems":3},
  "address":{"type":"object","properties":{
      "city":{"type":"string","maxLength":10},
      "zip":{"type":"integer","minimum":10000,"maximum":99999}},
    "required":["city","zip"],"additionalProperties":false},
  "admin":{"type":"boolean"}},
 "required":["name","age","color","tags","address"],"additionalProperties":false}"#;

/// Samples with random logits until the sequence ends; returns the text and why it ended.
fn run(constraint: Constraint, sampling: SamplingParams, seed: u64, max_tokens: usize) -> (String, FinishReason) {
    let tok = tokenizer();
    let params = GenerateParams {
        sampling,
        max_tokens,
        stop: vec![],
        constraint: Some(constraint),
        logprobs: None,
        output: Default::default(),
    };
    let prompt = tok.encode("Answer in JSON.").unwrap();
    let mut d = Decoding::new(tok, &prompt, &params, CONTEXT).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut text = String::new();
    loop {
        let mut logits: Vec<f32> = (0..tok.vocab_size() + PADDING)
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 10.0)
            .collect();
        let step = d.step(&mut logits).unwrap();
        assert!((step.token as usize) < tok.vocab_size(), "a padding logit was sampled");
        text.push_str(&step.text);
        if let Some(f) = step.finish {
            return (text, f);
        }
    }
}

fn schema(text: &str, strict: bool) -> Constraint {
    Constraint::JsonSchema {
        schema: text.to_string(),
        strict,
    }
}

fn short_string(v: &Value, max: usize) -> bool {
    v.as_str().is_some_and(|s| s.chars().count() <= max)
}

fn int_in(v: &Value, lo: i64, hi: i64) -> bool {
    v.as_i64().is_some_and(|i| (lo..=hi).contains(&i))
}

/// PERSON's rules, checked by hand.
fn valid_person(v: &Value) -> bool {
    let Some(o) = v.as_object() else { return false };
    let known = ["name", "age", "color", "tags", "address", "admin"];
    let address_ok = o["address"]
        .as_object()
        .is_some_and(|a| a.len() == 2 && short_string(&a["city"], 10) && int_in(&a["zip"], 10_000, 99_999));
    o.keys().all(|k| known.contains(&k.as_str()))
        && short_string(&o["name"], 8)
        && int_in(&o["age"], 0, 120)
        && ["red", "green", "blue"].iter().any(|c| o["color"] == *c)
        && o["tags"]
            .as_array()
            .is_some_and(|t| t.len() <= 3 && t.iter().all(|s| short_string(s, 5)))
        && address_ok
        && o.get("admin").is_none_or(Value::is_boolean)
}

#[test]
fn random_logits_give_schema_valid_json_greedy_and_sampled() {
    for seed in 0..12 {
        let sampling = if seed % 2 == 0 {
            SamplingParams::greedy()
        } else {
            SamplingParams {
                temperature: 0.5 + seed as f32 / 10.0,
                top_p: 0.95,
                seed: Some(seed),
                ..SamplingParams::default()
            }
        };
        let (text, finish) = run(schema(PERSON, true), sampling, seed, 400);
        assert_eq!(finish, FinishReason::Stop, "seed {seed}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {e}: {text}"));
        assert!(valid_person(&v), "seed {seed}: {text}");
    }
}

#[test]
fn json_object_starts_with_a_brace_and_lark_ends_with_the_grammar() {
    let tok = tokenizer();
    let factory = tok.grammar().unwrap();
    let mut c = factory.compile(&Constraint::JsonObject).unwrap();
    let mut logits = vec![0.0f32; tok.vocab_size()];
    c.mask(&mut logits).unwrap();
    let allowed: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    assert!(!allowed.is_empty());
    for &i in &allowed {
        assert!(tok.token_bytes(i as u32).starts_with(b"{"), "{i}");
    }

    let lark = Constraint::Lark {
        grammar: r#"start: "yes" | "no""#.into(),
    };
    for seed in 0..4 {
        let (text, finish) = run(lark.clone(), SamplingParams::greedy(), seed, 20);
        assert!(text == "yes" || text == "no", "{text}");
        assert_eq!(finish, FinishReason::Stop);
    }
}

#[test]
fn a_bad_schema_names_where_it_fails() {
    let factory = tokenizer().grammar().unwrap();
    let bad = r#"{"type":"object","properties":{"a":{"type":"object","properties":{"b":{"type":"strin"}}}}}"#;
    let err = factory.validate(&schema(bad, true)).unwrap_err();
    assert_eq!(err.path, "properties.a.properties.b", "{err}");

    // A keyword JSON Schema defines but llguidance cannot enforce.
    let unknown =
        r#"{"type":"object","properties":{"list":{"type":"array","items":{"type":"string"},"uniqueItems":true}}}"#;
    let err = factory.validate(&schema(unknown, true)).unwrap_err();
    assert_eq!(err.path, "properties.list", "{err}");
    assert!(err.message.contains("uniqueItems"), "{err}");
    // Not strict: unsupported keywords are ignored.
    factory.validate(&schema(unknown, false)).unwrap();

    assert!(factory.validate(&schema("[1]", true)).is_err());
    assert!(factory.validate(&schema("{", true)).is_err());
    let err = factory
        .validate(&Constraint::Lark {
            grammar: "start: nope".into(),
        })
        .unwrap_err();
    assert_eq!(err.path, "");
}

#[test]
fn the_factory_is_built_once_per_tokenizer() {
    let tok = tokenizer();
    let a: *const _ = tok.grammar().unwrap();
    let b: *const _ = tok.grammar().unwrap();
    assert_eq!(a, b);
}
