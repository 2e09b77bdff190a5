//! `tool_choice: auto`'s lazy call grammar on the test model's real tokenizer, with random logits (the worst a model
//! can do): an answer that opens free costs no mask; one that opens a call is masked from there and is a
//! well-formed call whose arguments validate; a trigger whose token carries bytes no call can have leaves the output
//! free rather than failing the sequence.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};
use shoal_engine::output::tool_grammar::{CallGrammar, ToolSpec, auto_call_grammar};
use shoal_engine::output::{OutputParser, OutputSpec, ParsedCall, ToolFormat};
use shoal_engine::{Decoding, GenerateParams, SamplingParams, Tokenizer};

const CONTEXT: usize = 8_192;
const MAX_TOKENS: usize = 160;
const SEEDS: u64 = 8;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_gguf_path(common::model_path()).unwrap())
}

fn spec(format: ToolFormat) -> OutputSpec {
    let tools = [ToolSpec {
        name: "get_weather".into(),
        parameters: json!({"type":"object","properties":{"city":{"type":"string","maxLength":10},
            "days":{"type":"integer","minimum":1,"maximum":7}},"required":["city","days"],"additionalProperties":false}),
    }];
    let grammar = auto_call_grammar(&CallGrammar {
        format,
        tools: &tools,
        parallel: false,
        control: &|_| None,
    })
    .unwrap();
    OutputSpec {
        tools: Some(format),
        thinking: None,
        call_grammar: Some(grammar),
    }
}

/// Generates with `forced` tokens first, then random logits (masked by whatever grammar is on); the text, the calls
/// the parser reads, and the number of masks computed.
fn run(format: ToolFormat, forced: &[u32], seed: u64) -> (String, Vec<ParsedCall>, usize) {
    let tok = tokenizer();
    let output = spec(format);
    let params = GenerateParams {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens: MAX_TOKENS,
        output: output.clone(),
        ..GenerateParams::default()
    };
    let prompt = tok.encode("Call a tool.").unwrap();
    let mut d = Decoding::new(tok, &prompt, &params, CONTEXT).unwrap();
    let mut parser = OutputParser::new(&output);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut shown = String::new();
    for i in 0.. {
        let mut logits: Vec<f32> = (0..tok.vocab_size())
            .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 10.0)
            .collect();
        if let Some(&f) = forced.get(i) {
            logits[f as usize] = 1e6;
        }
        let step = d.step(&mut logits).unwrap();
        shown.extend(parser.push(&step.text).into_iter().map(|p| p.text));
        if step.finish.is_some() {
            break;
        }
    }
    let (rest, calls) = parser.finish();
    shown.extend(rest.into_iter().map(|p| p.text));
    (shown, calls, d.mask_times().len())
}

fn valid(call: &ParsedCall) -> bool {
    let args: Value = serde_json::from_str(&call.arguments).unwrap();
    let city = args["city"].as_str().is_some_and(|c| c.chars().count() <= 10);
    let days = args["days"].as_i64().is_some_and(|d| (1..=7).contains(&d));
    call.name == "get_weather" && city && days && args.as_object().is_some_and(|o| o.len() == 2)
}

#[test]
fn free_text_costs_no_mask() {
    let tok = tokenizer();
    let hello = tok.encode("Hello there").unwrap();
    for seed in 0..SEEDS {
        let (text, calls, masks) = run(ToolFormat::Generic, &hello, seed);
        assert!(text.starts_with("Hello there"), "{text:?}");
        assert!(calls.is_empty() && masks == 0, "seed {seed}: {masks} masks, {calls:?}");
    }
}

#[test]
fn a_started_call_is_forced_well_formed() {
    let tok = tokenizer();
    for (format, opening) in [(ToolFormat::Generic, "{"), (ToolFormat::Hermes, "Sure. <tool_call>")] {
        let forced = tok.encode(opening).unwrap();
        for seed in 0..SEEDS {
            let (text, calls, masks) = run(format, &forced, seed);
            assert!(masks > 0, "{format:?} seed {seed}: no mask");
            assert!(
                calls.len() == 1 && valid(&calls[0]),
                "{format:?} seed {seed}: {calls:?}, shown {text:?}"
            );
        }
    }
}

#[test]
fn a_trigger_with_bytes_no_call_has_leaves_the_output_free() {
    let tok = tokenizer();
    // `<tool_call` then a token that closes the marker and goes on with `,`: the grammar cannot take the bytes.
    let closing = (0..tok.vocab_size() as u32)
        .find(|&id| tok.token_bytes(id) == b">,")
        .expect("a `>,` token");
    let mut forced = tok.encode("see <tool_call").unwrap();
    forced.push(closing);
    let (text, calls, masks) = run(ToolFormat::Hermes, &forced, 1);
    assert!(calls.is_empty() && masks == 0, "{calls:?} {masks}");
    assert!(text.starts_with("see <tool_call>,"), "{text:?}");
}
