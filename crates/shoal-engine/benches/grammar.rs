//! What constrained decoding costs (issue 14): decode tok/s of the same prompt with a JSON schema and without, in the
//! same run (alternating, median of `SHOAL_BENCH_ROUNDS` rounds, default 3), for one sequence and for 8 batched;
//! and the grammar mask's time per token (p50, p99, max) over every constrained token of the run, with a sequence's
//! first mask (the parser's cold start, right after the prefill) apart from the rest.
//!
//! `cargo bench -p shoal-engine --bench grammar` (the test model; `SHOAL_TEST_MODEL` picks another GGUF,
//! `SHOAL_BENCH_THREADS` the kernel threads, default 2).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_engine::{
    BatchRequest, ChatMessage, ChatTemplate, Constraint, GenerateParams, Generation, Pipeline, Pool, SamplingParams,
    Tokenizer, generate, generate_batch,
};

const ROUNDS: usize = 3;
const MAX_TOKENS: usize = 96;
const BATCH: usize = 8;
const PROMPT: &str = "Describe a fictional person in JSON with a long biography.";
/// Long enough free text (`bio`) that a constrained answer runs about as long as a free one.
const SCHEMA: &str = r#"{"type":"object","properties":{
  "name":{"type":"string","maxLength":24},
  "age":{"type":"integer","minimum":0,"maximum":120},
  "role":{"enum":["admin","user","guest"]},
  "tags":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":4},
  "bio":{"type":"string","maxLength":600}},
 "required":["name","age","role","tags","bio"],"additionalProperties":false}"#;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn params(constrained: bool, seed: u64) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams {
            temperature: 0.8,
            seed: Some(seed),
            ..SamplingParams::default()
        },
        max_tokens: MAX_TOKENS,
        stop: vec![],
        output: Default::default(),
        constraint: constrained.then(|| Constraint::JsonSchema {
            schema: SCHEMA.into(),
            strict: true,
        }),
        logprobs: None,
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One sequence: decode tok/s over the wall time after the first token (forward passes, sampling and masks).
fn single(p: &mut Pipeline, tok: &Tokenizer, prompt: &[u32], constrained: bool, round: usize) -> (f64, Generation) {
    let t = Instant::now();
    let g = generate(p, tok, 0, prompt, &params(constrained, round as u64), &mut |_| {}).unwrap();
    let wall = t.elapsed();
    (g.decode_steps as f64 / (wall - g.prefill_time).as_secs_f64(), g)
}

/// `BATCH` sequences batched: aggregate generated tokens per second of wall time after the first token.
fn batch(p: &mut Pipeline, tok: &Tokenizer, prompt: &[u32], constrained: bool, round: usize) -> (f64, Vec<Generation>) {
    let requests: Vec<BatchRequest> = (0..BATCH)
        .map(|i| BatchRequest {
            prompt: prompt.to_vec(),
            params: params(constrained, (round * BATCH + i) as u64),
        })
        .collect();
    let t = Instant::now();
    let gens = generate_batch(p, tok, &requests, BATCH, &mut |_, _| {}).unwrap();
    let wall = t.elapsed();
    let prefill = gens.iter().map(|g| g.prefill_time).max().unwrap_or_default();
    let tokens: usize = gens.iter().map(|g| g.tokens.len().saturating_sub(1)).sum();
    (tokens as f64 / (wall - prefill).as_secs_f64(), gens)
}

fn main() {
    let threads = env_usize("SHOAL_BENCH_THREADS", 2);
    let rounds = env_usize("SHOAL_BENCH_ROUNDS", ROUNDS);
    let model = common::model_path();
    let mut p = Pipeline::load(&model, &[], Arc::new(Pool::new(threads))).unwrap();
    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    let text = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .render(&[ChatMessage::new("user", PROMPT)], true)
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let t = Instant::now();
    tok.grammar().unwrap();
    println!(
        "model {} ({} tokens), {threads} threads, {rounds} rounds; grammar factory built once in {:.1?}",
        model.display(),
        tok.vocab_size(),
        t.elapsed()
    );

    let (mut masks, mut first_masks): (Vec<Duration>, Vec<Duration>) = (Vec::new(), Vec::new());
    let (mut free1, mut json1, mut free8, mut json8) = (vec![], vec![], vec![], vec![]);
    let (mut len_free, mut len_json) = (0, 0);
    for round in 0..rounds {
        let (r, g) = single(&mut p, &tok, &prompt, false, round);
        free1.push(r);
        len_free += g.tokens.len();
        let (r, g) = single(&mut p, &tok, &prompt, true, round);
        json1.push(r);
        len_json += g.tokens.len();
        first_masks.extend(g.mask_times.first());
        masks.extend(g.mask_times.iter().skip(1));
        let (r, _) = batch(&mut p, &tok, &prompt, false, round);
        free8.push(r);
        let (r, gens) = batch(&mut p, &tok, &prompt, true, round);
        json8.push(r);
        for g in &gens {
            first_masks.extend(g.mask_times.first());
            masks.extend(g.mask_times.iter().skip(1));
        }
    }
    masks.sort();
    first_masks.sort();
    // Masks run on the sampling thread, one per sequence per step: their share of the decode wall time is the mean
    // mask time × constrained tokens per second (the direct cost, free of the machine's noise between runs).
    let all: Vec<Duration> = masks.iter().chain(&first_masks).copied().collect();
    let mean_mask = all.iter().sum::<Duration>().as_secs_f64() / all.len().max(1) as f64;
    let row = |name: &str, free: Vec<f64>, json: Vec<f64>| {
        let (f, j) = (median(free), median(json));
        println!(
            "| {name:<12} | {f:>8.1} | {j:>8.1} | {:>+6.1} % | {:>5.2} % |",
            (j / f - 1.0) * 100.0,
            mean_mask * j * 100.0
        );
    };
    println!("| decode       | free tok/s | schema tok/s | change | masks' share of decode time |");
    println!("|---|---|---|---|---|");
    row("1 sequence", free1, json1);
    row("8 batched", free8, json8);
    println!(
        "mean length over the rounds: free {:.0} tokens, schema {:.0} tokens",
        len_free as f64 / rounds as f64,
        len_json as f64 / rounds as f64
    );
    println!("mask mean {:.1?} per token", Duration::from_secs_f64(mean_mask));
    for (what, m) in [("after the first", &masks), ("first of a sequence", &first_masks)] {
        println!(
            "mask per token, {what}, over {} tokens: p50 {:.1?}, p99 {:.1?}, max {:.1?}",
            m.len(),
            percentile(m, 0.5),
            percentile(m, 0.99),
            m.last().copied().unwrap_or_default()
        );
    }
}
