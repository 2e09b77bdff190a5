//! `shoal generate`: try a model on one machine without a cluster (ENGINE.md). Renders the model's own chat
//! template, streams the reply to stdout, and with `--stats` reports prefill/decode speed and peak memory on stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use anyhow::{Context, bail};
use shoal_engine::{
    ChatMessage, ChatTemplate, GenerateParams, KvType, Pipeline, Pool, SamplingParams, Tokenizer, generate,
};
use shoal_models::ModelStore;
use shoal_runner::LocalPipeline;
use shoal_types::card::{ModelCard, builtin_cards, find_card};

#[derive(clap::Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A .gguf file, `hf:ORG/REPO/FILE.gguf` (downloaded into `<data-dir>/models/`), or a built-in id or alias
    /// (e.g. `smollm2-135m`), found in `<data-dir>/models/` or fetched from its card's sources.
    #[arg(long, value_name = "PATH|hf:ORG/REPO/FILE.gguf|ID")]
    pub model: String,
    /// The user message (with `--raw`, the whole prompt).
    #[arg(long)]
    pub prompt: String,
    /// Tokenize the prompt as it is, without the chat template (to compare with llama.cpp's `llama-completion`).
    #[arg(long, conflicts_with = "system")]
    pub raw: bool,
    /// A system message (the model's template may inject its own default when none is given).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens: u32,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Same seed, parameters and prompt give the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the reply contains this text (repeatable; the stop text is not printed).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Split the model into stages at these layers (e.g. `15` or `10,20`); the output is the same as unsplit. Stages
    /// run in this process, or in child processes with `--stages`.
    #[arg(long, value_delimiter = ',', value_name = "LAYER,...")]
    pub splits: Vec<usize>,
    /// Run the model as K stages in K child processes connected over loopback TCP (the cluster's data plane),
    /// split evenly unless `--splits` says where.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub stages: Option<u32>,
    /// Kernel threads per stage [default: the number of CPUs].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub threads: Option<u32>,
    /// Element type of the KV cache: f32 (greedy output identical to llama.cpp's `-ctk f32 -ctv f32`) or f16 (half
    /// the memory; llama.cpp's default).
    #[arg(long, default_value_t = KvType::F32, value_name = "f32|f16")]
    pub kv_cache: KvType,
    /// Print prefill and decode tokens/s and peak memory to stderr.
    #[arg(long)]
    pub stats: bool,
}

pub fn run(args: &GenerateArgs, data_dir: Option<&Path>) -> anyhow::Result<()> {
    // Flags first: a bad value is reported before any model is opened.
    let sampling = sampling(args)?;
    let model = resolve_model(&args.model, data_dir)?;
    let started = std::time::Instant::now();
    let tokenizer = Tokenizer::from_gguf_path(&model).with_context(|| format!("--model {}", model.display()))?;
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, usize::from),
        |t| t as usize,
    );

    let text = if args.raw {
        args.prompt.clone()
    } else {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system.clone()));
        }
        messages.push(ChatMessage::new("user", args.prompt.clone()));
        ChatTemplate::from_tokenizer(&tokenizer)?.render(&messages, true)?
    };
    let prompt = tokenizer.encode(&text)?;
    let params = GenerateParams {
        sampling,
        max_tokens: args.max_tokens as usize,
        stop: args.stop.clone(),
        ..Default::default()
    };

    let mut stdout = std::io::stdout().lock();
    let mut print = |piece: &str| {
        // A closed stdout (e.g. piped into `head`) must not abort generation with a panic.
        let _ = stdout.write_all(piece.as_bytes());
        let _ = stdout.flush();
    };
    let n_layers = shoal_engine::gguf::GgufFile::open(&model)
        .and_then(|g| shoal_engine::arch::from_gguf(&g).map(|a| a.hparams().n_layers))
        .with_context(|| format!("--model {}", model.display()))?;
    let bounds = bounds(n_layers, &args.splits, args.stages)?;
    let stats = match args.stages {
        None => {
            let pool = Arc::new(Pool::new(threads));
            let mut pipeline = Pipeline::load(&model, &bounds[1..bounds.len() - 1], pool)
                .with_context(|| format!("--model {}", model.display()))?
                .with_kv_type(args.kv_cache);
            let load_time = started.elapsed();
            let out = generate(&mut pipeline, &tokenizer, 0, &prompt, &params, &mut print)?;
            Stats {
                stage_rss: None,
                load_time,
                prompt_tokens: out.prompt_tokens,
                prefill: out.prefill_tok_per_s(),
                generated: out.tokens.len(),
                finish: out.finish_reason,
                decode: out.decode_tok_per_s(),
            }
        }
        Some(_) => {
            let exe = std::env::current_exe().context("cannot find the shoal executable to start stages")?;
            let mut pipeline = LocalPipeline::start_with_kv(&exe, &model, &bounds, threads, 8, None, args.kv_cache)?;
            let load_time = started.elapsed();
            let out = pipeline.generate(&prompt, &params, &mut print)?;
            let stage_rss: Option<Vec<u64>> = pipeline
                .runners()
                .iter()
                .map(|r| peak_rss_of(&r.pid().to_string()))
                .collect();
            Stats {
                stage_rss,
                load_time,
                prompt_tokens: out.prompt_tokens,
                prefill: out.prefill_tok_per_s(),
                generated: out.tokens.len(),
                finish: out.finish,
                decode: out.decode_tok_per_s(),
            }
        }
    };
    print("\n");
    if args.stats {
        eprintln!(
            "stats: load {:.2} s; prompt {} tokens, prefill {:.1} tok/s; generated {} tokens ({:?}), decode {:.1} tok/s; \
             peak RSS {}{}; stages {}; {} threads; kernels {}; KV cache {}",
            stats.load_time.as_secs_f64(),
            stats.prompt_tokens,
            stats.prefill,
            stats.generated,
            stats.finish,
            stats.decode,
            peak_rss_of("self").map_or_else(|| "unknown".to_owned(), mib),
            match &stats.stage_rss {
                Some(each) => format!(
                    " (this process; stage processes {} = {} in all)",
                    each.iter().map(|&b| mib(b)).collect::<Vec<_>>().join(" + "),
                    mib(each.iter().sum())
                ),
                None => String::new(),
            },
            bounds.len() - 1,
            threads,
            shoal_engine::kernels::isa(),
            args.kv_cache,
        );
    }
    Ok(())
}

struct Stats {
    /// Peak RSS of each stage process (`--stages`).
    stage_rss: Option<Vec<u64>>,
    load_time: std::time::Duration,
    prompt_tokens: usize,
    prefill: f64,
    generated: usize,
    finish: shoal_engine::FinishReason,
    decode: f64,
}

/// Stage boundaries `[0, .., n_layers]` from `--splits` or an even split into `--stages` parts.
fn bounds(n_layers: usize, splits: &[usize], stages: Option<u32>) -> anyhow::Result<Vec<usize>> {
    let mut b = vec![0];
    if splits.is_empty() {
        let k = stages.unwrap_or(1) as usize;
        if k > n_layers {
            bail!("--stages {k}: the model has only {n_layers} layers");
        }
        b.extend((1..k).map(|i| i * n_layers / k));
    } else {
        if let Some(k) = stages
            && k as usize != splits.len() + 1
        {
            bail!(
                "--stages {k} does not match --splits, which gives {} stages",
                splits.len() + 1
            );
        }
        b.extend_from_slice(splits);
    }
    b.push(n_layers);
    if b.windows(2).any(|w| w[0] >= w[1]) {
        bail!(
            "--splits must be increasing layer numbers between 1 and {}",
            n_layers - 1
        );
    }
    Ok(b)
}

fn sampling(args: &GenerateArgs) -> anyhow::Result<SamplingParams> {
    let mut s = SamplingParams::greedy();
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        bail!("--temperature must be a number ≥ 0, got {}", args.temperature);
    }
    s.temperature = args.temperature;
    if let Some(k) = args.top_k {
        s.top_k = k;
    }
    if let Some(p) = args.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p must be in (0, 1], got {p}");
        }
        s.top_p = p;
    }
    if let Some(p) = args.min_p {
        if !(0.0..=1.0).contains(&p) {
            bail!("--min-p must be in [0, 1], got {p}");
        }
        s.min_p = p;
    }
    if let Some(r) = args.repetition_penalty {
        if !(r.is_finite() && r > 0.0) {
            bail!("--repetition-penalty must be a number > 0, got {r}");
        }
        s.repetition_penalty = r;
    }
    s.seed = args.seed;
    Ok(s)
}

/// A path that exists is used as is; otherwise the name is looked up among the built-in cards (id or alias) and the
/// card's first file is expected in `<data_dir>/models/<id as file name>/`.
/// The .gguf file `--model` names: a file as it is; a built-in id or an `hf:` source through the model store
/// (`<data-dir>/models`), which finds the verified file or fetches it from the card's sources.
fn resolve_model(name: &str, data_dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = Path::new(name);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let cards = builtin_cards();
    let builtin = find_card(&cards, name).cloned();
    if builtin.is_none() && !name.starts_with("hf:") {
        bail!(
            "--model {name}: no such file and no known model (built-in: {}; or hf:ORG/REPO/FILE.gguf)",
            cards
                .iter()
                .map(|c| c.aliases.first().unwrap_or(&c.id.0).as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let Some(dir) = data_dir else {
        bail!("--model {name}: no data directory to keep it in; pass a path")
    };
    let store = ModelStore::new(dir.join("models"), Vec::new());
    let card: ModelCard = match builtin {
        Some(card) => card,
        None => store
            .card_for_source(name, None)
            .map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?,
    };
    let mut last = None;
    let mut progress = |p: shoal_types::DownloadProgress| {
        if let shoal_types::DownloadProgress::Ongoing { done, total } = p {
            let pct = done.saturating_mul(100) / total.max(1);
            if last != Some(pct) {
                last = Some(pct);
                eprint!("\rdownloading {}: {pct}%", name);
            }
        }
    };
    let files = store
        .fetch(&card, &mut progress)
        .map_err(|e| anyhow::anyhow!("--model {name}: {e}"))?;
    if last.is_some() {
        eprintln!();
    }
    files
        .gguf()
        .map(Path::to_path_buf)
        .with_context(|| format!("--model {name}: the model has no .gguf file"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Peak resident set size of a process (`self` or a pid; Linux `VmHWM`), in bytes.
fn peak_rss_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
