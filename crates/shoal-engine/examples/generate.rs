//! Runs a prompt through the model's chat template and prints the reply plus prefill/decode speed.
//!
//! cargo run --release --example generate -- --model M.gguf --prompt "What is the capital of France?" \
//!     [--max-tokens 128] [--temperature 0] [--top-k 0] [--top-p 1] [--min-p 0] [--seed N] [--splits 15,20] [--raw]
//! Threads: SHOAL_THREADS (default 2). `shoal generate` is the user-facing version of this example.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::ExitCode;

use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, Pipeline, SamplingParams, Tokenizer, generate};

struct Args {
    model: String,
    prompt: String,
    raw: bool,
    splits: Vec<usize>,
    params: GenerateParams,
}

fn parse_args() -> Result<Args, String> {
    let mut model = std::env::var("SHOAL_TEST_MODEL").ok();
    let mut prompt = "What is the capital of France?".to_string();
    let mut raw = false;
    let mut splits = Vec::new();
    let mut sampling = SamplingParams::greedy();
    let mut max_tokens = 128;
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
        params: GenerateParams {
            sampling,
            max_tokens,
            stop: Vec::new(),
            output: Default::default(),
            constraint: None,
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
    let mut pipeline = Pipeline::load(&args.model, &args.splits, pool)?;
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
    let prompt = tokenizer.encode(&text)?;
    let mut stdout = std::io::stdout();
    let out = generate(&mut pipeline, &tokenizer, 0, &prompt, &args.params, &mut |s| {
        let _ = stdout.write_all(s.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!(
        "prompt {} tok, prefill {:.1} tok/s; generated {} tok ({:?}), decode {:.1} tok/s",
        out.prompt_tokens,
        out.prefill_tok_per_s(),
        out.tokens.len(),
        out.finish_reason,
        out.decode_tok_per_s()
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
