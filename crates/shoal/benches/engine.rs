//! The engine benchmark: shoal against llama.cpp on the same GGUF, side by side in one run (ENGINE.md, issues 6 and
//! 11).
//!
//! `cargo bench -p shoal --bench engine` prints three tables:
//! 1. SmolLM2 (the test model): prefill of 512 tokens (llama-bench's pp512), decode of 128 tokens (tg128), aggregate
//!    decode of 8 sequences batched, 2 stage processes over loopback TCP against 1, and peak RSS against the GGUF's
//!    size. `SHOAL_TEST_MODEL` picks another model for this table.
//! 2. Every model of the list: prefill of 64 tokens and decode of 64 (pp64, tg64), in `SHOAL_BENCH_ROUNDS` rounds
//!    (default 3) that each run llama-bench and then shoal, so the shared machine's load hits both alike; the ratio
//!    is the median of the rounds' ratios. The list is `SHOAL_BENCH_MODELS` (comma-separated GGUF paths), else
//!    Gemma 3 270M (fetched once) and every `*.gguf` of `SHOAL_BENCH_SYNTH_DIR` (written by
//!    `cargo run --release -p shoal-engine --example synth_bench_gguf -- DIR SmolLM2.gguf`).
//! 3. Peak RSS of each stage process of a `SHOAL_BENCH_STAGES`-stage ring (default 2) over each model, after a
//!    64-token prompt and 16 generated tokens, against the stage's weight bytes (`Stage::weight_bytes`) and its KV
//!    cache.
//!
//! llama.cpp runs only with `LLAMA_BENCH=<path to llama-bench>`, with the same thread count and any extra flags of
//! `SHOAL_BENCH_LLAMA_ARGS` (e.g. `--repack 0`). `SHOAL_BENCH_THREADS` (default 2) sets the threads;
//! `SHOAL_BENCH_SKIP=smollm2,models,rss` leaves tables out.
//!
//! On a loaded machine run it under `OMP_WAIT_POLICY=passive` (llama-bench inherits it): llama.cpp's OpenMP threads
//! otherwise spin at every barrier while the other thread is descheduled, and its decode collapses (BENCHMARKS.md,
//! 2026-12-05).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use shoal_engine::sampling::argmax;
use shoal_engine::{
    ChatMessage, ChatTemplate, GenerateParams, LayerRange, Pipeline, Pool, SamplingParams, SeqChunk, Stage, Tokenizer,
};
use shoal_runner::LocalPipeline;

const REPS: usize = 3;
/// Prompt and generation lengths of the per-model comparison (llama-bench's pp64 and tg64).
const MODEL_PP: usize = 64;
const MODEL_TG: usize = 64;
/// Default rounds of the per-model comparison.
const ROUNDS: usize = 3;
/// Default stage count of the RSS measure.
const RSS_STAGES: usize = 2;
/// Tokens the RSS measure generates after its `MODEL_PP`-token prompt.
const RSS_GEN: usize = 16;

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
    pp: f64,
    tg: f64,
}

/// llama-bench's prefill of `pp` and decode of `tg` tokens (`reps` repetitions, their mean), or `None` without
/// `LLAMA_BENCH` or when it fails.
fn llama_bench(model: &Path, threads: usize, pp: usize, tg: usize, reps: usize) -> Option<LlamaCpp> {
    let exe = std::env::var_os("LLAMA_BENCH")?;
    let dir = Path::new(&exe).parent().map(Path::to_path_buf).unwrap_or_default();
    let extra = std::env::var("SHOAL_BENCH_LLAMA_ARGS").unwrap_or_default();
    let out = Command::new(&exe)
        .env("LD_LIBRARY_PATH", &dir)
        .args([
            "-p",
            &pp.to_string(),
            "-n",
            &tg.to_string(),
            "-r",
            &reps.to_string(),
            "-o",
            "json",
            "-t",
        ])
        .arg(threads.to_string())
        .args(extra.split_whitespace())
        .arg("-m")
        .arg(model)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("llama-bench failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let rate = |p: usize, g: usize| {
        runs.as_array()?
            .iter()
            .find(|r| r["n_prompt"] == p as u64 && r["n_gen"] == g as u64)?["avg_ts"]
            .as_f64()
    };
    Some(LlamaCpp {
        pp: rate(pp, 0)?,
        tg: rate(0, tg)?,
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
        output: Default::default(),
        constraint: None,
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

/// The SmolLM2 table (issue 6's measures), llama-bench first, then shoal.
fn smollm2(exe: &Path, model: &Path, threads: usize) {
    let gguf_mib = mib(std::fs::metadata(model).unwrap().len());
    println!("## {} ({gguf_mib:.1} MiB), {REPS} repetitions", model.display());

    let llama = llama_bench(model, threads, 512, 128, REPS);

    let mut p = Pipeline::load(model, &[], Arc::new(Pool::new(threads))).unwrap();
    prefill(&mut p, 64, 0); // warm-up
    let pp512 = mean(&(0..REPS).map(|r| prefill(&mut p, 512, r)).collect::<Vec<_>>());
    let tg128 = mean(&(0..REPS).map(|_| decode(&mut p, 1, 128)).collect::<Vec<_>>());
    let batch8 = mean(&(0..REPS).map(|_| decode(&mut p, 8, 128)).collect::<Vec<_>>());
    drop(p);

    let tok = Tokenizer::from_gguf_path(model).unwrap();
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
    let (one_stage, two_stages) = ring_decode(exe, model, threads, &prompt);
    let rss = peak_rss_mib(exe, model, threads);

    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".to_string(), |t| format!("{:.2}×", ours / t));
    let theirs = |f: fn(&LlamaCpp) -> f64| llama.as_ref().map(f);
    println!();
    println!("| measure | shoal | llama.cpp | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| prefill pp512, tok/s | {pp512:.1} | {} | {} | ≥ 0.5× |",
        theirs(|l| l.pp).map_or("not run".into(), |v| format!("{v:.1}")),
        ratio(pp512, theirs(|l| l.pp))
    );
    println!(
        "| decode tg128, tok/s | {tg128:.1} | {} | {} | ≥ 0.5× |",
        theirs(|l| l.tg).map_or("not run".into(), |v| format!("{v:.1}")),
        ratio(tg128, theirs(|l| l.tg))
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
    println!();
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn file_name(model: &Path) -> String {
    model
        .file_name()
        .map_or_else(|| model.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The models of tables 2 and 3: `SHOAL_BENCH_MODELS`, else Gemma 3 270M and the synthetic models.
fn bench_models() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("SHOAL_BENCH_MODELS") {
        return list.split(',').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
    }
    let mut models: Vec<PathBuf> = fetched("fetch-gemma3-270m.sh").into_iter().collect();
    if let Ok(dir) = std::env::var("SHOAL_BENCH_SYNTH_DIR") {
        let mut synth: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("SHOAL_BENCH_SYNTH_DIR {dir}: {e}"))
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        synth.sort();
        models.extend(synth);
    }
    models
}

/// What `shared/scripts/<script>` (found beside the repository) prints, or `None` (with a note) when it is missing
/// or fails: the bench then leaves that model out.
fn fetched(script: &str) -> Option<PathBuf> {
    let Some(path) = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/scripts").join(script))
        .find(|p| p.is_file())
    else {
        eprintln!("{script} not found beside the repository: leaving its model out");
        return None;
    };
    let out = Command::new("bash").arg(&path).output().ok()?;
    if !out.status.success() {
        eprintln!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(PathBuf::from(
        String::from_utf8_lossy(&out.stdout).trim().lines().last()?,
    ))
}

/// Table 2: pp64 and tg64 of shoal and llama.cpp, alternated by rounds.
fn models_table(models: &[PathBuf], threads: usize, rounds: usize) {
    println!(
        "## Prefill pp{MODEL_PP} and decode tg{MODEL_TG}, tok/s: {rounds} rounds of llama-bench (-r {REPS}) then shoal ({REPS} repetitions); medians of the rounds, ratio = median of the rounds' shoal / llama.cpp"
    );
    println!();
    println!(
        "| model | MiB | pp{MODEL_PP} shoal | pp{MODEL_PP} llama.cpp | ratio | tg{MODEL_TG} shoal | tg{MODEL_TG} llama.cpp | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for model in models {
        let mut p = Pipeline::load(model, &[], Arc::new(Pool::new(threads))).unwrap();
        prefill(&mut p, 16, 0); // warm-up: the first pass faults the mapped weights in
        let (mut ours_pp, mut ours_tg, mut theirs_pp, mut theirs_tg) = (vec![], vec![], vec![], vec![]);
        let (mut ratio_pp, mut ratio_tg) = (vec![], vec![]);
        for round in 0..rounds {
            let llama = llama_bench(model, threads, MODEL_PP, MODEL_TG, REPS);
            let pp = mean(
                &(0..REPS)
                    .map(|r| prefill(&mut p, MODEL_PP, round * REPS + r))
                    .collect::<Vec<_>>(),
            );
            let tg = mean(&(0..REPS).map(|_| decode(&mut p, 1, MODEL_TG)).collect::<Vec<_>>());
            ours_pp.push(pp);
            ours_tg.push(tg);
            if let Some(l) = llama {
                theirs_pp.push(l.pp);
                theirs_tg.push(l.tg);
                ratio_pp.push(pp / l.pp);
                ratio_tg.push(tg / l.tg);
            }
        }
        let med = |xs: &[f64], ratio: bool| {
            if xs.is_empty() {
                "-".to_string()
            } else if ratio {
                format!("{:.2}×", median(xs.to_vec()))
            } else {
                format!("{:.1}", median(xs.to_vec()))
            }
        };
        println!(
            "| {} | {:.1} | {} | {} | {} | {} | {} | {} |",
            file_name(model),
            mib(std::fs::metadata(model).unwrap().len()),
            med(&ours_pp, false),
            med(&theirs_pp, false),
            med(&ratio_pp, true),
            med(&ours_tg, false),
            med(&theirs_tg, false),
            med(&ratio_tg, true),
        );
    }
    println!();
}

/// `VmHWM`, `RssFile` and `RssAnon` of a process, in bytes.
fn rss_of(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("VmHWM:")?, field("RssFile:")?, field("RssAnon:")?))
}

/// Table 3: each stage process's peak RSS against its slice of the weights (plus its KV cache).
fn rss_table(exe: &Path, models: &[PathBuf], threads: usize, stages: usize) {
    println!(
        "## Peak RSS of each stage process ({stages} stages over loopback TCP, {MODEL_PP}-token prompt + {RSS_GEN} generated), MiB"
    );
    println!();
    println!(
        "| model | stage | weights | KV (f32) | VmHWM | RssFile | RssAnon | VmHWM / weights | VmHWM / (weights + KV) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: RSS_GEN,
        stop: vec![],
        output: Default::default(),
        constraint: None,
    };
    for model in models {
        let gguf = shoal_engine::gguf::GgufFile::open(model).unwrap();
        let hp = shoal_engine::arch::from_gguf(&gguf).unwrap().hparams().clone();
        drop(gguf);
        let bounds: Vec<usize> = (0..=stages).map(|i| i * hp.n_layers / stages).collect();
        let mut ring = LocalPipeline::start(exe, model, &bounds, threads, 1).unwrap();
        let prompt = tokens(MODEL_PP, 3, hp.vocab_size);
        let out = ring.generate(&prompt, &params, &mut |_| {}).unwrap();
        let positions = (MODEL_PP + out.tokens.len()) as u64;
        for (runner, w) in ring.runners().iter().zip(bounds.windows(2)) {
            let (hwm, file, anon) = rss_of(runner.pid()).unwrap();
            let stage = Stage::load(model, LayerRange::new(w[0], w[1]), Arc::new(Pool::new(1))).unwrap();
            let weights = stage.weight_bytes();
            // Keys and values of every position in every layer of the stage, f32 as the engine keeps them.
            let kv = positions * (w[1] - w[0]) as u64 * 2 * (hp.n_kv_heads * hp.head_dim) as u64 * 4;
            println!(
                "| {} | [{}, {}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.2}× |",
                file_name(model),
                w[0],
                w[1],
                mib(weights),
                mib(kv),
                mib(hwm),
                mib(file),
                mib(anon),
                hwm as f64 / weights as f64,
                hwm as f64 / (weights + kv) as f64,
            );
        }
    }
    println!();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env_usize = |key: &str, default: usize| -> usize {
        std::env::var(key).ok().and_then(|t| t.parse().ok()).unwrap_or(default)
    };
    let threads = env_usize("SHOAL_BENCH_THREADS", 2);
    let skip = std::env::var("SHOAL_BENCH_SKIP").unwrap_or_default();
    let skip: Vec<&str> = skip.split(',').collect();
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let smol = common::model_path();
    println!("{threads} threads, kernels {}", shoal_engine::kernels::isa());
    println!();
    if !skip.contains(&"smollm2") {
        smollm2(exe, &smol, threads);
    }
    let models = bench_models();
    if !skip.contains(&"models") && !models.is_empty() {
        models_table(&models, threads, env_usize("SHOAL_BENCH_ROUNDS", ROUNDS).max(1));
    }
    if !skip.contains(&"rss") {
        let all: Vec<PathBuf> = std::iter::once(smol).chain(models).collect();
        rss_table(exe, &all, threads, env_usize("SHOAL_BENCH_STAGES", RSS_STAGES).max(1));
    }
}
