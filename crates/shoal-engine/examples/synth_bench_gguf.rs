//! Writes one synthetic Q4_K_M model per architecture family, of a small but realistic size (100-250 MB), for
//! benchmarking shoal against llama.cpp on the same files (BENCHMARKS.md, issue 11):
//! `cargo run --release -p shoal-engine --example synth_bench_gguf -- OUT_DIR SmolLM2-135M-Instruct.Q4_1.gguf [FAMILY…]`
//! (the second file only lends its tokenizer; FAMILY is any of llama3 qwen2 qwen3 qwen3moe gemma3, default all).
//!
//! The weights are deterministic (splitmix64 seeded from the family and the tensor name) and the encodings follow
//! the tensor-type choice of llama.cpp's `llama-quantize … Q4_K_M` (`llama_tensor_get_type` in src/llama-quant.cpp):
//! - Q4_K by default for every 2-D and 3-D `*.weight`;
//! - norms, 1-D tensors and the MoE router (`ffn_gate_inp`) stay F32;
//! - the output head is Q6_K, and so is `token_embd` when the head is tied to it (no `output.weight`); an untied
//!   `token_embd` stays Q4_K;
//! - `attn_v` and `ffn_down` (also `ffn_down_exps`) are Q6_K in the layers where `use_more_bits(i, n)` holds:
//!   `i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2`;
//! - every row length here is a multiple of 256, so none of the K-quants falls back to Q5_0 / Q8_0, and no family
//!   has exactly 8 experts (which would switch `attn_v`, `attn_k` to Q8_0 and `attn_output` to Q5_K).
//!
//! The engine's K-quantizers are plain min/max ones (kernels/quantize.rs), not ggml's error-minimizing search: the
//! bytes differ from what llama-quantize would write for the same floats, but the layout, the sizes and therefore
//! the speed are the same, which is all a benchmark needs.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;

use shoal_engine::gguf::{self, GgufFile, TensorData, Value};
use shoal_engine::kernels::WeightType;
use shoal_engine::kernels::quantize::quantize_row;

const FAMILIES: &[&str] = &["llama3", "qwen2", "qwen3", "qwen3moe", "gemma3"];
/// `LLAMA_FTYPE_MOSTLY_Q4_K_M`, so llama-bench reports the files as "Q4_K - Medium".
const FTYPE_Q4_K_M: u32 = 15;
const CONTEXT: u32 = 4096;
/// Quantizing threads (the row halves run side by side; the machine has 2 cores).
const THREADS: usize = 2;

/// One family's shape.
struct Shape {
    arch: &'static str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    layers: usize,
    /// `(count, used, each expert's ffn)` for the MoE family.
    experts: Option<(usize, usize, usize)>,
    tied: bool,
    rope_base: f32,
}

/// Shapes of the small members of each family, shortened: llama3 as Llama 3.2 1B's blocks (head 64, GQA 4), qwen2 as
/// Qwen2.5 0.5B (tied, biases, GQA 8), qwen3 as Qwen3 0.6B (head 128 wider than hidden / heads), qwen3moe as a
/// narrow Qwen3-30B-A3B (16 experts, 4 used), gemma3 as Gemma 3 1B (head 256, one KV head, tied).
fn shape(family: &str) -> Option<Shape> {
    let s = |arch, heads, kv_heads, head_dim, ffn, layers, tied, rope_base| Shape {
        arch,
        hidden: 1024,
        heads,
        kv_heads,
        head_dim,
        ffn,
        layers,
        experts: None,
        tied,
        rope_base,
    };
    Some(match family {
        "llama3" => s("llama", 16, 4, 64, 4096, 12, false, 500_000.0),
        "qwen2" => s("qwen2", 16, 2, 64, 2816, 16, true, 1_000_000.0),
        "qwen3" => s("qwen3", 16, 8, 128, 3072, 12, false, 1_000_000.0),
        "qwen3moe" => Shape {
            experts: Some((16, 4, 512)),
            ..s("qwen3moe", 16, 4, 128, 3072, 8, false, 1_000_000.0)
        },
        "gemma3" => s("gemma3", 4, 1, 256, 4096, 12, true, 1_000_000.0),
        _ => return None,
    })
}

/// llama.cpp's `use_more_bits`: the layers whose `attn_v` / `ffn_down` Q4_K_M promotes to Q6_K.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// splitmix64 seeded by FNV-1a of a string.
struct Rng(u64);

impl Rng {
    fn new(seed: &str) -> Self {
        Self(seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }))
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Builder {
    family: String,
    tensors: Vec<(String, WeightType, Vec<u64>, Vec<u8>)>,
}

impl Builder {
    fn values(&self, name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        let mut rng = Rng::new(&format!("bench/{}/{name}", self.family));
        (0..n).map(|_| offset + scale * rng.uniform()).collect()
    }

    /// `rows` rows of `cols` weights (ggml dims `[cols, rows, extra…]`), scaled so activations stay near unit size.
    fn matrix(&mut self, name: &str, ty: WeightType, dims: &[usize], scale: f32) {
        let (cols, rows) = (dims[0], dims[1..].iter().product::<usize>());
        let values = self.values(name, cols * rows, scale, 0.0);
        // Two halves of the rows quantized side by side; the concatenation is the same as one pass.
        let per = rows.div_ceil(THREADS);
        let parts: Vec<Vec<u8>> = std::thread::scope(|s| {
            let handles: Vec<_> = values
                .chunks(per * cols)
                .map(|chunk| {
                    s.spawn(move || {
                        let mut out = Vec::with_capacity(ty.row_bytes(cols) * chunk.len() / cols);
                        chunk.chunks_exact(cols).for_each(|row| quantize_row(ty, row, &mut out));
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| panic!("quantizing {name} panicked")))
                .collect()
        });
        self.tensors.push((
            name.to_string(),
            ty,
            dims.iter().map(|&d| d as u64).collect(),
            parts.concat(),
        ));
    }

    fn linear(&mut self, name: &str, ty: WeightType, inputs: usize, outputs: usize) {
        self.matrix(name, ty, &[inputs, outputs], 1.7 / (inputs as f32).sqrt());
    }

    fn vector(&mut self, name: &str, values: Vec<f32>) {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .push((name.to_string(), WeightType::F32, vec![values.len() as u64], data));
    }

    /// A norm's weight: near 1 so the norms neither vanish nor explode.
    fn norm(&mut self, name: &str, width: usize) {
        let v = self.values(name, width, 0.25, 1.0);
        self.vector(name, v);
    }
}

fn write(family: &str, path: &Path, tokenizer_src: &GgufFile) -> Result<(), String> {
    let sh = shape(family).ok_or_else(|| format!("unknown family {family}"))?;
    let vocab = tokenizer_src
        .get_str_array("tokenizer.ggml.tokens")
        .map_err(|e| e.to_string())?
        .len();
    let arch = sh.arch;
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!("shoal bench {family} Q4_K_M")),
        ),
        ("general.file_type".into(), Value::U32(FTYPE_Q4_K_M)),
        (k("context_length"), Value::U32(CONTEXT)),
        (k("embedding_length"), Value::U32(sh.hidden as u32)),
        (k("block_count"), Value::U32(sh.layers as u32)),
        (k("feed_forward_length"), Value::U32(sh.ffn as u32)),
        (k("attention.head_count"), Value::U32(sh.heads as u32)),
        (k("attention.head_count_kv"), Value::U32(sh.kv_heads as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (k("attention.key_length"), Value::U32(sh.head_dim as u32)),
        (k("attention.value_length"), Value::U32(sh.head_dim as u32)),
        (k("rope.freq_base"), Value::F32(sh.rope_base)),
    ];
    if let Some((n, used, each)) = sh.experts {
        md.push((k("expert_count"), Value::U32(n as u32)));
        md.push((k("expert_used_count"), Value::U32(used as u32)));
        md.push((k("expert_feed_forward_length"), Value::U32(each as u32)));
    }
    if arch == "gemma3" {
        md.push((k("attention.sliding_window"), Value::U32(512)));
        md.push((k("rope.freq_base_swa"), Value::F32(10_000.0)));
    }
    for (key, v) in tokenizer_src.metadata() {
        if key.starts_with("tokenizer.") {
            md.push((key.to_string(), v.clone()));
        }
    }

    use WeightType::{Q4K, Q6K};
    let mut b = Builder {
        family: family.to_string(),
        tensors: Vec::new(),
    };
    let h = sh.hidden;
    b.matrix("token_embd.weight", if sh.tied { Q6K } else { Q4K }, &[h, vocab], 1.0);
    b.norm("output_norm.weight", h);
    if !sh.tied {
        b.linear("output.weight", Q6K, h, vocab);
    }
    if family == "llama3" {
        b.vector("rope_freqs.weight", llama3_rope_factors(sh.head_dim, sh.rope_base));
    }
    let (q_width, kv_width) = (sh.heads * sh.head_dim, sh.kv_heads * sh.head_dim);
    let n = sh.layers;
    for l in 0..n {
        let p = |s: &str| format!("blk.{l}.{s}");
        let more = if use_more_bits(l, n) { Q6K } else { Q4K };
        b.norm(&p("attn_norm.weight"), h);
        b.linear(&p("attn_q.weight"), Q4K, h, q_width);
        b.linear(&p("attn_k.weight"), Q4K, h, kv_width);
        b.linear(&p("attn_v.weight"), more, h, kv_width);
        b.linear(&p("attn_output.weight"), Q4K, q_width, h);
        if arch == "qwen2" {
            for (t, w) in [("attn_q", q_width), ("attn_k", kv_width), ("attn_v", kv_width)] {
                let v = b.values(&p(&format!("{t}.bias")), w, 0.5, 0.0);
                b.vector(&p(&format!("{t}.bias")), v);
            }
        }
        if matches!(arch, "qwen3" | "qwen3moe" | "gemma3") {
            b.norm(&p("attn_q_norm.weight"), sh.head_dim);
            b.norm(&p("attn_k_norm.weight"), sh.head_dim);
        }
        if arch == "gemma3" {
            b.norm(&p("post_attention_norm.weight"), h);
            b.norm(&p("post_ffw_norm.weight"), h);
        }
        b.norm(&p("ffn_norm.weight"), h);
        if let Some((n_exp, _, each)) = sh.experts {
            let router = b.values(&p("ffn_gate_inp.weight"), h * n_exp, 1.7 / (h as f32).sqrt(), 0.0);
            let data = router.iter().flat_map(|v| v.to_le_bytes()).collect();
            b.tensors.push((
                p("ffn_gate_inp.weight"),
                WeightType::F32,
                vec![h as u64, n_exp as u64],
                data,
            ));
            let s_in = 1.7 / (h as f32).sqrt();
            b.matrix(&p("ffn_gate_exps.weight"), Q4K, &[h, each, n_exp], s_in);
            b.matrix(&p("ffn_up_exps.weight"), Q4K, &[h, each, n_exp], s_in);
            b.matrix(
                &p("ffn_down_exps.weight"),
                more,
                &[each, h, n_exp],
                1.7 / (each as f32).sqrt(),
            );
        } else {
            b.linear(&p("ffn_gate.weight"), Q4K, h, sh.ffn);
            b.linear(&p("ffn_up.weight"), Q4K, h, sh.ffn);
            b.linear(&p("ffn_down.weight"), more, sh.ffn, h);
        }
    }

    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<TensorData<'_>> = b
        .tensors
        .iter()
        .map(|(name, ty, dims, data)| TensorData {
            name,
            ggml_type: ty.ggml_id(),
            dims,
            data,
        })
        .collect();
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut f = std::io::BufWriter::new(file);
    gguf::write(&mut f, &md_refs, &tensors).map_err(|e| e.to_string())?;
    std::io::Write::flush(&mut f).map_err(|e| e.to_string())
}

/// Llama 3.1's rope divisors as its converter computes them (factor 8, low/high frequency factors 1 and 4, original
/// context 8192), for the rotated pairs of a head of `head_dim`.
fn llama3_rope_factors(head_dim: usize, base: f32) -> Vec<f32> {
    let (factor, low, high, old_ctx) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / f64::from(base).powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, tokenizer, families @ ..] = args.as_slice() else {
        eprintln!("usage: synth_bench_gguf OUT_DIR TOKENIZER_SOURCE.gguf [FAMILY…]");
        std::process::exit(2);
    };
    let families: Vec<&str> = if families.is_empty() {
        FAMILIES.to_vec()
    } else {
        families.iter().map(String::as_str).collect()
    };
    let src = GgufFile::open(tokenizer).unwrap_or_else(|e| {
        eprintln!("{tokenizer}: {e}");
        std::process::exit(1);
    });
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("{dir}: {e}");
        std::process::exit(1);
    }
    for family in families {
        let path = Path::new(dir).join(format!("{family}-q4_k_m.gguf"));
        if let Err(e) = write(family, &path, &src) {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
        println!("{}", path.display());
    }
}
