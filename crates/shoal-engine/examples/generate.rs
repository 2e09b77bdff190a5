//! Runs a prompt through the model's chat template and prints the reply plus prefill/decode speed.
//!
//! cargo run --release --example generate -- --model M.gguf --prompt "What is the capital of France?" \
//!     [--max-tokens 128] [--temperature 0] [--top-k 0] [--top-p 1] [--min-p 0] [--seed N] [--splits 15,20] [--raw]
//!     [--kv-cache f32|f16] [--prompt-tokens N] [--bench-kv ROUNDS] [--bench-batch SEQS]
//! Threads: SHOAL_THREADS (default 2). `shoal generate` is the user-facing version of this example.
//!
//! `--prompt-tokens N` repeats (or cuts) the tokenized prompt to exactly N tokens. `--bench-kv ROUNDS` compares the
//! KV cache types instead of generating: ROUNDS times, F32 then F16, it prefills the prompt and greedy-decodes
//! exactly `--max-tokens` tokens (end of generation ignored), then prints each run, the medians, the KV bytes held
//! at the end and how many leading tokens F16 shares with F32. `--bench-batch SEQS` times greedy decode of
//! `--max-tokens` steps from the prompt for one sequence, then for SEQS sequences batched in every step, in 3
//! alternated rounds, and prints the aggregate rates and their ratio (the engine bench's "8 sequences" row).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::ExitCode;

use shoal_engine::sampling::argmax;
use shoal_engine::{
    ChatMessage, ChatTemplate, GenerateParams, KvType, Pipeline, SamplingParams, SeqChunk, Tokenizer, generate,
};

struct Args {
    model: String,
    prompt: String,
    raw: bool,
    splits: Vec<usize>,
    params: GenerateParams,
    kv_cache: KvType,
    prompt_tokens: Option<usize>,
    bench_kv: Option<usize>,
    bench_batch: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut model = std::env::var("SHOAL_TEST_MODEL").ok();
    let mut prompt = "What is the capital of France?".to_string();
    let mut raw = false;
    let mut splits = Vec::new();
    let mut sampling = SamplingParams::greedy();
    let mut max_tokens = 128;
    let mut kv_cache = KvType::default();
    let (mut prompt_tokens, mut bench_kv, mut bench_batch) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--raw" {
            raw = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--model" => model = Some(value),
            "--prompt" => prompt = value,
            "--max-tokens" => max_tokens = num(&value)? as usize,
            "--temperature" => sampling.temperature = num(&value)? as f32,
            "--top-k" => sampling.top_k = num(&value)? as usize,
            "--top-p" => sampling.top_p = num(&value)? as f32,
            "--min-p" => sampling.min_p = num(&value)? as f32,
            "--repeat-penalty" => sampling.repetition_penalty = num(&value)? as f32,
            "--seed" => sampling.seed = Some(value.parse().map_err(|e| format!("--seed {value}: {e}"))?),
            "--kv-cache" => kv_cache = value.parse().map_err(|e| format!("--kv-cache: {e}"))?,
            "--prompt-tokens" => prompt_tokens = Some(num(&value)? as usize),
            "--bench-kv" => bench_kv = Some(num(&value)? as usize),
            "--bench-batch" => bench_batch = Some(num(&value)? as usize),
            "--splits" => {
                splits = value
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|e| format!("--splits {s}: {e}")))
                    .collect::<Result<_, _>>()?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let model = model.ok_or("--model PATH (or SHOAL_TEST_MODEL) is required")?;
    Ok(Args {
        model,
        prompt,
        raw,
        splits,
        kv_cache,
        prompt_tokens,
        bench_kv,
        bench_batch,
        params: GenerateParams {
            sampling,
            max_tokens,
            stop: Vec::new(),
            ..Default::default()
        },
    })
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let threads = std::env::var("SHOAL_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let pool = std::sync::Arc::new(shoal_engine::Pool::new(threads));
    let t = std::time::Instant::now();
    let tokenizer = Tokenizer::from_gguf_path(&args.model)?;
    let mut pipeline = Pipeline::load(&args.model, &args.splits, pool.clone())?.with_kv_type(args.kv_cache);
    eprintln!(
        "loaded {} stage(s) in {:.2?}, threads {}",
        pipeline.stages().len(),
        t.elapsed(),
        threads
    );
    let text = if args.raw {
        args.prompt
    } else {
        ChatTemplate::from_tokenizer(&tokenizer)?.render(&[ChatMessage::new("user", args.prompt)], true)?
    };
    let mut prompt = tokenizer.encode(&text)?;
    if let Some(n) = args.prompt_tokens {
        prompt = prompt.iter().copied().cycle().take(n).collect();
    }
    if let Some(seqs) = args.bench_batch {
        return bench_batch(&mut pipeline, &prompt, args.params.max_tokens, seqs.max(1));
    }
    if let Some(rounds) = args.bench_kv {
        return bench_kv(&mut pipeline, &tokenizer, &prompt, args.params.max_tokens, rounds);
    }
    let mut stdout = std::io::stdout();
    let out = generate(&mut pipeline, &tokenizer, 0, &prompt, &args.params, &mut |s| {
        let _ = stdout.write_all(s.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!(
        "prompt {} tok, prefill {:.1} tok/s; generated {} tok ({:?}), decode {:.1} tok/s; {} work items redone \
         after a late worker",
        out.prompt_tokens,
        out.prefill_tok_per_s(),
        out.tokens.len(),
        out.finish_reason,
        out.decode_tok_per_s(),
        pool.redone_items()
    );
    Ok(())
}

/// One timed run: prefill, then exactly `steps` greedy tokens.
struct Run {
    prefill: f64,
    decode: f64,
    kv_bytes: usize,
    tokens: Vec<u32>,
}

fn timed_run(p: &mut Pipeline, ty: KvType, prompt: &[u32], steps: usize) -> Result<Run, Box<dyn std::error::Error>> {
    p.set_kv_type(ty);
    let t = std::time::Instant::now();
    let mut logits = p.forward(0, prompt)?;
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let mut tokens = Vec::with_capacity(steps);
    for _ in 0..steps {
        let next = argmax(&logits).ok_or("no logits")?;
        tokens.push(next);
        logits = p.forward(0, &[next])?;
    }
    let decode = steps as f64 / t.elapsed().as_secs_f64();
    let kv_bytes = p.kv_bytes();
    p.release(0);
    Ok(Run {
        prefill,
        decode,
        kv_bytes,
        tokens,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_kv(
    p: &mut Pipeline,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    steps: usize,
    rounds: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut runs: Vec<(KvType, Run)> = Vec::new();
    for round in 0..rounds.max(1) {
        for ty in KvType::ALL {
            let r = timed_run(p, ty, prompt, steps)?;
            eprintln!(
                "round {round} {ty}: prefill {:.1} tok/s, decode {:.1} tok/s, KV {} bytes",
                r.prefill, r.decode, r.kv_bytes
            );
            runs.push((ty, r));
        }
    }
    let hp = p.hparams();
    let tokens = prompt.len() + steps;
    for ty in KvType::ALL {
        let of = || runs.iter().filter(move |(t, _)| *t == ty).map(|(_, r)| r);
        let bytes = of().map(|r| r.kv_bytes).max().unwrap_or(0);
        // Keys and values of every layer: what one token needs, without the vectors' spare capacity.
        let per_token = hp.n_layers * 2 * hp.n_kv_heads * hp.head_dim * ty.element_bytes();
        eprintln!(
            "{ty}: median prefill {:.1} tok/s, decode {:.1} tok/s; KV {bytes} bytes held for {tokens} tokens \
             ({:.0} per token; {per_token} per token exactly)",
            median(of().map(|r| r.prefill).collect()),
            median(of().map(|r| r.decode).collect()),
            bytes as f64 / tokens as f64,
        );
    }
    let first = |ty| runs.iter().find(|(t, _)| *t == ty).map(|(_, r)| &r.tokens);
    if let (Some(a), Some(b)) = (first(KvType::F32), first(KvType::F16)) {
        let same = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        eprintln!("greedy: F16 shares its first {same} of {steps} tokens with F32");
        println!(
            "f32: {}\nf16: {}",
            tokenizer.decode(a, false)?,
            tokenizer.decode(b, false)?
        );
    }
    Ok(())
}

/// Aggregate greedy decode rate of `seqs` sequences batched in every step, each first prefilled with `prompt`.
fn batch_rate(p: &mut Pipeline, prompt: &[u32], steps: usize, seqs: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let chunks: Vec<SeqChunk> = (0..seqs as u32).map(|slot| SeqChunk { slot, n_tokens: 1 }).collect();
    let mut next = Vec::new();
    for c in &chunks {
        p.release(c.slot);
        next.push(argmax(&p.forward(c.slot, prompt)?).ok_or("no logits")?);
    }
    let t = std::time::Instant::now();
    for _ in 0..steps {
        let logits = p.forward_batch(&chunks, &next)?;
        next = logits
            .iter()
            .map(|l| argmax(l).ok_or("no logits"))
            .collect::<Result<_, _>>()?;
    }
    let rate = (seqs * steps) as f64 / t.elapsed().as_secs_f64();
    for c in &chunks {
        p.release(c.slot);
    }
    Ok(rate)
}

fn bench_batch(p: &mut Pipeline, prompt: &[u32], steps: usize, seqs: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (mut one, mut many) = (Vec::new(), Vec::new());
    for round in 0..3 {
        one.push(batch_rate(p, prompt, steps, 1)?);
        many.push(batch_rate(p, prompt, steps, seqs)?);
        eprintln!(
            "round {round}: 1 sequence {:.1} tok/s, {seqs} sequences {:.1} tok/s",
            one[round], many[round]
        );
    }
    let (one, many) = (median(one), median(many));
    eprintln!(
        "median: 1 sequence {one:.1} tok/s, {seqs} sequences {many:.1} tok/s = {:.2}×",
        many / one
    );
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
