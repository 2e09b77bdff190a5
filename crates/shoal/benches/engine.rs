//! The engine benchmark: shoal against llama.cpp on the same GGUF, side by side in one run (ENGINE.md, issue 6).
//!
//! `cargo bench -p shoal --bench engine` prints one table: prefill of 512 tokens (llama-bench's pp512), decode of 128
//! tokens (tg128), aggregate decode of 8 sequences batched, 2 stage processes over loopback TCP against 1, and peak
//! RSS against the GGUF's size. With `LLAMA_BENCH=<path to llama-bench>` it also runs llama.cpp with the same
//! thread count and prints the ratios. `SHOAL_BENCH_THREADS` (default 2) sets the threads; `SHOAL_TEST_MODEL` the
//! model (default: the test model, fetched once).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use shoal_engine::sampling::argmax;
use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, Pipeline, Pool, SamplingParams, SeqChunk, Tokenizer};
use shoal_runner::LocalPipeline;

const REPS: usize = 3;

/// Deterministic pseudo-random token ids, as llama-bench feeds random tokens.
fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as usize % vocab) as u32
        })
        .collect()
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Prefill of `n` tokens, tokens/s.
fn prefill(p: &mut Pipeline, n: usize, rep: usize) -> f64 {
    let prompt = tokens(n, rep as u64 + 1, p.hparams().vocab_size);
    p.release(0);
    let t = Instant::now();
    p.forward(0, &prompt).unwrap();
    let s = t.elapsed().as_secs_f64();
    p.release(0);
    n as f64 / s
}

/// Decode of `n` tokens for `seqs` sequences batched in every step (greedy, end-of-generation ignored), aggregate
/// tokens/s.
fn decode(p: &mut Pipeline, seqs: usize, n: usize) -> f64 {
    let vocab = p.hparams().vocab_size;
    let chunks: Vec<SeqChunk> = (0..seqs as u32).map(|slot| SeqChunk { slot, n_tokens: 1 }).collect();
    for c in &chunks {
        p.release(c.slot);
    }
    let mut next: Vec<u32> = tokens(seqs, 7, vocab);
    let t = Instant::now();
    for _ in 0..n {
        let logits = p.forward_batch(&chunks, &next).unwrap();
        next = logits.iter().map(|l| argmax(l).unwrap()).collect();
    }
    let s = t.elapsed().as_secs_f64();
    for c in &chunks {
        p.release(c.slot);
    }
    (seqs * n) as f64 / s
}

struct LlamaCpp {
    pp512: f64,
    tg128: f64,
}

fn llama_bench(model: &Path, threads: usize) -> Option<LlamaCpp> {
    let exe = std::env::var_os("LLAMA_BENCH")?;
    let dir = Path::new(&exe).parent().map(Path::to_path_buf).unwrap_or_default();
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &dir)
        .args(["-p", "512", "-n", "128", "-r", &REPS.to_string(), "-o", "json", "-t"])
        .arg(threads.to_string())
        .arg("-m")
        .arg(model)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rate = |pp: u64, tg: u64| {
        runs.as_array()?
            .iter()
            .find(|r| r["n_prompt"] == pp && r["n_gen"] == tg)?["avg_ts"]
            .as_f64()
    };
    Some(LlamaCpp {
        pp512: rate(512, 0)?,
        tg128: rate(0, 128)?,
    })
}

/// Decode tokens/s through stage processes, 1 stage against 2, runs alternated so the machine's noise hits both
/// alike; medians of `RING_REPS` runs. Also checks both generate the same tokens.
fn ring_decode(exe: &Path, model: &Path, threads: usize, prompt: &[u32]) -> (f64, f64) {
    const RING_REPS: usize = 5;
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 128,
        stop: vec![],
    };
    let mut one = LocalPipeline::start(exe, model, &[0, 30], threads, 8).unwrap();
    let mut two = LocalPipeline::start(exe, model, &[0, 15, 30], threads, 8).unwrap();
    let reference = one.generate(prompt, &params, &mut |_| {}).unwrap().tokens;
    assert_eq!(two.generate(prompt, &params, &mut |_| {}).unwrap().tokens, reference);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RING_REPS {
        a.push(one.generate(prompt, &params, &mut |_| {}).unwrap().decode_tok_per_s());
        b.push(two.generate(prompt, &params, &mut |_| {}).unwrap().decode_tok_per_s());
    }
    (median(a), median(b))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn peak_rss_mib(exe: &Path, model: &Path, threads: usize) -> Option<f64> {
    let out = Command::new(exe)
        .args([
            "generate",
            "--prompt",
            "Hello",
            "--max-tokens",
            "16",
            "--stats",
            "--threads",
        ])
        .arg(threads.to_string())
        .arg("--model")
        .arg(model)
        .output()
        .ok()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = stderr.find("peak RSS ")? + "peak RSS ".len();
    stderr[at..].split_whitespace().next()?.parse().ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads: usize = std::env::var("SHOAL_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let model = common::model_path();
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let gguf_mib = std::fs::metadata(&model).unwrap().len() as f64 / (1 << 20) as f64;
    println!(
        "model {} ({gguf_mib:.1} MiB), {threads} threads, kernels {}, {REPS} repetitions",
        model.display(),
        shoal_engine::kernels::isa()
    );

    let llama = llama_bench(&model, threads);

    let mut p = Pipeline::load(&model, &[], Arc::new(Pool::new(threads))).unwrap();
    prefill(&mut p, 64, 0); // warm-up
    let pp512 = mean(&(0..REPS).map(|r| prefill(&mut p, 512, r)).collect::<Vec<_>>());
    let tg128 = mean(&(0..REPS).map(|_| decode(&mut p, 1, 128)).collect::<Vec<_>>());
    let batch8 = mean(&(0..REPS).map(|_| decode(&mut p, 8, 128)).collect::<Vec<_>>());
    drop(p);

    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    let text = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .render(
            &[ChatMessage::new(
                "user",
                "Write a long story about a dragon and a knight.",
            )],
            true,
        )
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let (one_stage, two_stages) = ring_decode(exe, &model, threads, &prompt);
    let rss = peak_rss_mib(exe, &model, threads);

    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.2}×", ours / t));
    let theirs = |f: fn(&LlamaCpp) -> f64| llama.as_ref().map(f);
    println!();
    println!("| measure | shoal | llama.cpp | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| prefill pp512, tok/s | {pp512:.1} | {} | {} | ≥ 0.5× |",
        theirs(|l| l.pp512).map_or("not run".into(), |v| format!("{v:.1}")),
        ratio(pp512, theirs(|l| l.pp512))
    );
    println!(
        "| decode tg128, tok/s | {tg128:.1} | {} | {} | ≥ 0.5× |",
        theirs(|l| l.tg128).map_or("not run".into(), |v| format!("{v:.1}")),
        ratio(tg128, theirs(|l| l.tg128))
    );
    println!(
        "| decode, 8 sequences batched, aggregate tok/s | {batch8:.1} | | {:.2}× one sequence | ≥ 2× |",
        batch8 / tg128
    );
    println!(
        "| decode through stage processes, tok/s: 1 stage {one_stage:.1}, 2 stages over loopback TCP | {two_stages:.1} | | {:.2}× 1 stage | ≥ 0.85× |",
        two_stages / one_stage
    );
    match rss {
        Some(r) => println!(
            "| peak RSS of `shoal generate`, MiB | {r:.1} | | {:.2}× the GGUF | ≤ 2× |",
            r / gguf_mib
        ),
        None => println!("| peak RSS | unknown | | | |"),
    }
}
