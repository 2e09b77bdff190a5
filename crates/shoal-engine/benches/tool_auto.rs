//! What `tool_choice: auto`'s lazy call grammar costs (issue 14): the same plain-text answer decoded with the call
//! grammar armed and without (greedy, so both write the same tokens; alternating, median of `SHOAL_BENCH_ROUNDS`
//! rounds, default 3): the masks computed (none until a call starts) and decode time per token; then answers that
//! do call (sampled): the mask's time per token from the call's start on (p50, p99, max).
//!
//! `cargo bench -p shoal-engine --bench tool_auto` (the test model; `SHOAL_TEST_MODEL` picks another GGUF,
//! `SHOAL_BENCH_THREADS` the kernel threads, default 2).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_engine::output::tool_grammar::{CallGrammar, ToolSpec, auto_call_grammar};
use shoal_engine::output::{OutputSpec, ToolFormat};
use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, Pipeline, Pool, SamplingParams, Tokenizer, generate};

const ROUNDS: usize = 3;
const MAX_TOKENS: usize = 48;
const CALLS: usize = 4;
const SYSTEM: &str = "You can call this tool (JSON Schema for its arguments):\n\
    [{\"name\":\"get_weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":\"string\"},\
    \"days\":{\"type\":\"integer\"}},\"required\":[\"city\",\"days\"]}}]\n\nTo call it, answer with only a JSON \
    object of this form: {\"tool_calls\": [{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 2}}]}";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or_default()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let threads = env_usize("SHOAL_BENCH_THREADS", 2);
    let rounds = env_usize("SHOAL_BENCH_ROUNDS", ROUNDS);
    let model = common::model_path();
    let mut p = Pipeline::load(&model, &[], Arc::new(Pool::new(threads))).unwrap();
    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    tok.grammar().unwrap();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap();
    // Earlier turns that called the tool: a 135M model repeats the pattern (it does not call tools on its own).
    let prompt = |user: &str, shots: &[(&str, &str)]| {
        let mut messages = vec![ChatMessage::new("system", SYSTEM)];
        for (city, days) in shots {
            messages.push(ChatMessage::new(
                "user",
                format!("What is the weather in {city} for {days} days?"),
            ));
            messages.push(ChatMessage::new(
                "assistant",
                format!(
                    "{{\"tool_calls\": [{{\"name\": \"get_weather\", \"arguments\": {{\"city\": \"{city}\",                      \"days\": {days}}}}}]}}"
                ),
            ));
        }
        messages.push(ChatMessage::new("user", user));
        tok.encode(&template.render(&messages, true).unwrap()).unwrap()
    };
    let tools = [ToolSpec {
        name: "get_weather".into(),
        parameters: json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},
                           "required":["city","days"]}),
    }];
    let grammar = auto_call_grammar(&CallGrammar {
        format: ToolFormat::Generic,
        tools: &tools,
        parallel: true,
        control: &|_| None,
    })
    .unwrap();
    let params = |auto: bool, temperature: f32, seed: u64| GenerateParams {
        sampling: SamplingParams {
            temperature,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens: MAX_TOKENS,
        output: OutputSpec {
            tools: Some(ToolFormat::Generic),
            thinking: None,
            call_grammar: auto.then(|| grammar.clone()),
        },
        ..GenerateParams::default()
    };

    let plain = prompt("Write two sentences about the sea.", &[]);
    let (mut none_ms, mut auto_ms, mut plain_masks) = (vec![], vec![], 0);
    for round in 0..rounds {
        for auto in [false, true] {
            let t = Instant::now();
            let g = generate(&mut p, &tok, 0, &plain, &params(auto, 0.0, round as u64), &mut |_| {}).unwrap();
            let per_token = (t.elapsed() - g.prefill_time).as_secs_f64() * 1e3 / g.decode_steps.max(1) as f64;
            if auto {
                auto_ms.push(per_token);
                plain_masks += g.mask_times.len();
            } else {
                none_ms.push(per_token);
            }
            if round == 0 {
                println!("plain answer ({}): {:?}", if auto { "auto" } else { "none" }, g.text);
            }
        }
    }
    println!(
        "plain text, {threads} threads, {rounds} rounds: decode {:.2} ms/token without tools, {:.2} ms/token with \
         the auto call grammar armed; masks computed: {plain_masks}",
        median(none_ms),
        median(auto_ms)
    );

    let call = prompt(
        "What is the weather in Berlin for 3 days?",
        &[("Paris", "2"), ("Oslo", "5")],
    );
    let (mut masks, mut called) = (Vec::new(), 0);
    for seed in 0..CALLS as u64 {
        let g = generate(&mut p, &tok, 0, &call, &params(true, 0.8, seed), &mut |_| {}).unwrap();
        called += usize::from(!g.mask_times.is_empty());
        masks.extend(g.mask_times.iter().copied());
        println!("call answer {seed}: {:?}", g.text);
    }
    masks.sort();
    println!(
        "answers that called: {called} of {CALLS}; mask per token from the call's start, over {} tokens: p50 {:.1?}, \
         p99 {:.1?}, max {:.1?}",
        masks.len(),
        percentile(&masks, 0.5),
        percentile(&masks, 0.99),
        masks.last().copied().unwrap_or_default()
    );
}
