//! Tiny synthetic GGUF models, one per architecture, with deterministic pseudo-random weights: small enough to run
//! in milliseconds, real enough that llama.cpp loads them (their tokenizer metadata is copied from the SmolLM2 test
//! model), so their greedy tokens and logits can be pinned from llama.cpp. Shared by tests/architectures.rs and
//! `cargo run -p shoal-engine --example synth_gguf -- DIR SMOLLM2.gguf`, which writes them for the reference runs.
//!
//! The weights are a pure function of the architecture name and the tensor's name (splitmix64 seeded from both), and
//! the Q8_0 and F16 encodings are done here, so the files do not change when the engine's quantizers do.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use shoal_engine::gguf::{self, GgufFile, TensorData, Value};

/// The synthetic families: each exercises one architecture file (`llama3` is llama with a `rope_freqs` tensor;
/// `qwen3-yarn` has YaRN rope scaling; `gemma3-scaled` adds linear rope scaling on the global layers and final logit
/// soft-capping).
pub const MODELS: &[&str] = &[
    "llama3",
    "qwen2",
    "qwen3",
    "qwen3-yarn",
    "qwen3moe",
    "gemma3",
    "gemma3-scaled",
];

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const FFN: usize = 128;
const CONTEXT: u32 = 256;
const N_EXPERTS: usize = 4;
const EXPERTS_USED: u32 = 2;
const EXPERT_FFN: usize = 64;
/// Short enough that the prompts in the tests run past it, so the local layers' window matters.
const SLIDING_WINDOW: u32 = 5;

#[derive(Clone, Copy, PartialEq)]
enum Enc {
    F32,
    F16,
    Q8_0,
}

impl Enc {
    fn ggml_id(self) -> u32 {
        match self {
            Enc::F32 => 0,
            Enc::F16 => 1,
            Enc::Q8_0 => 8,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Enc::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Enc::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            Enc::Q8_0 => {
                let mut out = Vec::with_capacity(values.len() / 32 * 34);
                for block in values.chunks_exact(32) {
                    let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                    out.extend_from_slice(&half::f16::from_f32(d).to_le_bytes());
                    out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
                }
                out
            }
        }
    }
}

/// splitmix64: a tiny generator whose output is fixed by its definition, unlike a library's.
struct Rng(u64);

impl Rng {
    fn new(seed: &str) -> Self {
        // FNV-1a of the seed string.
        let h = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Self(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

struct Builder {
    model: String,
    /// Changes every weight of a model; see [`salt`].
    salt: &'static str,
    tensors: Vec<(String, Enc, Vec<u64>, Vec<u8>)>,
}

impl Builder {
    fn values(&self, name: &str, n: usize, scale: f32, offset: f32) -> Vec<f32> {
        let mut rng = Rng::new(&format!("{}/{}{name}", self.model, self.salt));
        (0..n).map(|_| offset + scale * rng.uniform()).collect()
    }

    /// A projection from `inputs` to `outputs` features (ggml dims [inputs, outputs]), scaled so activations stay
    /// near unit size.
    fn linear(&mut self, name: &str, inputs: usize, outputs: usize, enc: Enc) {
        let v = self.values(name, inputs * outputs, 1.7 / (inputs as f32).sqrt(), 0.0);
        self.push(name, enc, vec![inputs as u64, outputs as u64], &v);
    }

    /// A stack of `n` projections (ggml dims [inputs, outputs, n]).
    fn experts(&mut self, name: &str, inputs: usize, outputs: usize, n: usize, enc: Enc) {
        let v = self.values(name, inputs * outputs * n, 1.7 / (inputs as f32).sqrt(), 0.0);
        self.push(name, enc, vec![inputs as u64, outputs as u64, n as u64], &v);
    }

    /// A norm's weight: near 1 so the norms neither vanish nor explode.
    fn norm(&mut self, name: &str, width: usize) {
        let v = self.values(name, width, 0.25, 1.0);
        self.push(name, Enc::F32, vec![width as u64], &v);
    }

    fn vector(&mut self, name: &str, values: &[f32]) {
        self.push(name, Enc::F32, vec![values.len() as u64], values);
    }

    fn push(&mut self, name: &str, enc: Enc, dims: Vec<u64>, values: &[f32]) {
        self.tensors.push((name.to_string(), enc, dims, enc.encode(values)));
    }
}

/// Writes the synthetic model `model` (one of [`MODELS`]) to `path`, with the tokenizer of `tokenizer_src`.
pub fn write(model: &str, path: &Path, tokenizer_src: &GgufFile) -> std::io::Result<()> {
    write_edited(model, path, tokenizer_src, &|_| {}, None)
}

/// A file's metadata in order.
pub type Metadata = Vec<(String, Value)>;
/// Changes a file's metadata before it is written.
pub type Edit = dyn Fn(&mut Metadata);

/// One tensor as written: name, ggml type id, dimensions (ggml order) and bytes.
pub type Tensor = (String, u32, Vec<u64>, Vec<u8>);

/// [`write`] with the metadata edited by `edit` and the tensor `drop` left out, to build broken files.
pub fn write_edited(
    model: &str,
    path: &Path,
    tokenizer_src: &GgufFile,
    edit: &Edit,
    drop: Option<&str>,
) -> std::io::Result<()> {
    let (mut md, mut tensors) = build(model, tokenizer_src)?;
    edit(&mut md);
    tensors.retain(|(name, ..)| Some(name.as_str()) != drop);
    write_file(path, &md, &tensors)
}

/// Writes one GGUF file with the project's writer.
pub fn write_file(path: &Path, md: &Metadata, tensors: &[Tensor]) -> std::io::Result<()> {
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<TensorData<'_>> = tensors
        .iter()
        .map(|(name, ggml_type, dims, data)| TensorData {
            name,
            ggml_type: *ggml_type,
            dims,
            data,
        })
        .collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    gguf::write(&mut f, &md_refs, &tensors)?;
    std::io::Write::flush(&mut f)
}

/// The file name of part `no` (0-based) of a split set of `count` (llama.cpp's `PREFIX-%05d-of-%05d.gguf`, 1-based).
pub fn split_part_name(prefix: &str, no: usize, count: usize) -> String {
    format!("{prefix}-{:05}-of-{count:05}.gguf", no + 1)
}

/// Writes `md` and `tensors` as a split set of `count` files in `dir`, as llama.cpp's `gguf-split --split` lays one
/// out: the tensors in order, in runs of equal size (the last shorter); every part a complete GGUF; the first part
/// holds all of `md` followed by `split.no` (u16), `split.tensors.count` (i32) and `split.count` (u16) in that
/// order, the other parts only those three keys. The parts are byte-identical to what llama.cpp's
/// `llama-gguf-split --split --split-max-tensors ⌈tensors / count⌉` writes from the single file (checked by hand for
/// llama3 and qwen3moe; see tests/split_gguf.rs). `edit_part(no, metadata, tensors)` may change a part before it is written, to build
/// broken sets. Returns the parts' paths in order.
pub fn write_split(
    dir: &Path,
    prefix: &str,
    md: &Metadata,
    tensors: &[Tensor],
    count: usize,
    edit_part: &dyn Fn(usize, &mut Metadata, &mut Vec<Tensor>),
) -> std::io::Result<Vec<PathBuf>> {
    let per_part = tensors.len().div_ceil(count);
    (0..count)
        .map(|no| {
            let mut part_md = if no == 0 { md.clone() } else { Vec::new() };
            part_md.push(("split.no".into(), Value::U16(no as u16)));
            part_md.push(("split.tensors.count".into(), Value::I32(tensors.len() as i32)));
            part_md.push(("split.count".into(), Value::U16(count as u16)));
            let mut part_tensors: Vec<Tensor> = tensors.iter().skip(no * per_part).take(per_part).cloned().collect();
            edit_part(no, &mut part_md, &mut part_tensors);
            let path = dir.join(split_part_name(prefix, no, count));
            write_file(&path, &part_md, &part_tensors)?;
            Ok(path)
        })
        .collect()
}

/// The synthetic model `model`'s metadata and tensors, as [`write`] writes them.
pub fn build(model: &str, tokenizer_src: &GgufFile) -> std::io::Result<(Metadata, Vec<Tensor>)> {
    let arch = match model {
        "llama3" => "llama",
        "gemma3-scaled" => "gemma3",
        "qwen3-yarn" => "qwen3",
        other => other,
    };
    let n_layers = match arch {
        // Six layers so the default pattern has one global layer (the last) after five local ones.
        "gemma3" => 6,
        _ => 3,
    };
    // Qwen3 and Gemma 3 have heads wider than hidden / heads; the others the usual hidden / heads.
    let head_dim = match arch {
        "qwen3" | "qwen3moe" | "gemma3" => 32,
        _ => HIDDEN / HEADS,
    };
    let vocab = tokenizer_src
        .get_str_array("tokenizer.ggml.tokens")
        .map_err(|e| std::io::Error::other(e.to_string()))?
        .len();
    let k = |s: &str| format!("{arch}.{s}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(format!("shoal synthetic {model}"))),
        (k("context_length"), Value::U32(CONTEXT)),
        (k("embedding_length"), Value::U32(HIDDEN as u32)),
        (k("block_count"), Value::U32(n_layers as u32)),
        (k("feed_forward_length"), Value::U32(FFN as u32)),
        (k("attention.head_count"), Value::U32(HEADS as u32)),
        (k("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6)),
        (k("attention.key_length"), Value::U32(head_dim as u32)),
        (k("attention.value_length"), Value::U32(head_dim as u32)),
    ];
    let rope_base = match model {
        "llama3" => 500_000.0,
        "gemma3" | "gemma3-scaled" => 1_000_000.0,
        _ => 10_000.0,
    };
    md.push((k("rope.freq_base"), Value::F32(rope_base)));
    match model {
        "qwen3moe" => {
            md.push((k("expert_count"), Value::U32(N_EXPERTS as u32)));
            md.push((k("expert_used_count"), Value::U32(EXPERTS_USED)));
            md.push((k("expert_feed_forward_length"), Value::U32(EXPERT_FFN as u32)));
        }
        "gemma3" => md.push((k("attention.sliding_window"), Value::U32(SLIDING_WINDOW))),
        "qwen3-yarn" => {
            // An original context of 64 puts YaRN's ramp over pairs 0..5 of the 16 (base 10,000, head 32).
            md.push((k("rope.scaling.type"), Value::String("yarn".into())));
            md.push((k("rope.scaling.factor"), Value::F32(4.0)));
            md.push((k("rope.scaling.original_context_length"), Value::U32(64)));
        }
        "gemma3-scaled" => {
            md.push((k("attention.sliding_window"), Value::U32(SLIDING_WINDOW)));
            md.push((k("rope.scaling.type"), Value::String("linear".into())));
            md.push((k("rope.scaling.factor"), Value::F32(8.0)));
            md.push((k("final_logit_softcapping"), Value::F32(5.0)));
        }
        _ => {}
    }
    for (key, v) in tokenizer_src.metadata() {
        if key.starts_with("tokenizer.") {
            md.push((key.to_string(), v.clone()));
        }
    }

    let mut b = Builder {
        model: model.to_string(),
        salt: salt(model),
        tensors: Vec::new(),
    };
    let emb = b.values("token_embd.weight", HIDDEN * vocab, 1.0, 0.0);
    b.push("token_embd.weight", Enc::Q8_0, vec![HIDDEN as u64, vocab as u64], &emb);
    b.norm("output_norm.weight", HIDDEN);
    // An untied head: with random weights a tied one makes greedy decoding echo the last token (gemma's √hidden
    // embedding scale makes the echo win outright). The tied head is exercised by the SmolLM2 tests.
    b.linear("output.weight", HIDDEN, vocab, Enc::F16);
    if model == "llama3" {
        b.vector("rope_freqs.weight", &llama3_rope_factors(head_dim, rope_base));
    }
    let (q_width, kv_width) = (HEADS * head_dim, KV_HEADS * head_dim);
    for l in 0..n_layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        // Alternate encodings by layer so every kind meets every kernel path.
        let (ea, eb) = if l % 2 == 0 {
            (Enc::Q8_0, Enc::F16)
        } else {
            (Enc::F16, Enc::Q8_0)
        };
        b.norm(&p("attn_norm.weight"), HIDDEN);
        b.linear(&p("attn_q.weight"), HIDDEN, q_width, ea);
        b.linear(&p("attn_k.weight"), HIDDEN, kv_width, eb);
        b.linear(&p("attn_v.weight"), HIDDEN, kv_width, Enc::F32);
        b.linear(&p("attn_output.weight"), q_width, HIDDEN, ea);
        if arch == "qwen2" {
            for (t, w) in [("attn_q", q_width), ("attn_k", kv_width), ("attn_v", kv_width)] {
                let v = b.values(&p(&format!("{t}.bias")), w, 0.5, 0.0);
                b.vector(&p(&format!("{t}.bias")), &v);
            }
        }
        if matches!(arch, "qwen3" | "qwen3moe" | "gemma3") {
            b.norm(&p("attn_q_norm.weight"), head_dim);
            b.norm(&p("attn_k_norm.weight"), head_dim);
        }
        if arch == "gemma3" {
            b.norm(&p("post_attention_norm.weight"), HIDDEN);
            b.norm(&p("post_ffw_norm.weight"), HIDDEN);
        }
        b.norm(&p("ffn_norm.weight"), HIDDEN);
        if arch == "qwen3moe" {
            // The router in F32, as converters leave it.
            b.linear(&p("ffn_gate_inp.weight"), HIDDEN, N_EXPERTS, Enc::F32);
            b.experts(&p("ffn_gate_exps.weight"), HIDDEN, EXPERT_FFN, N_EXPERTS, ea);
            b.experts(&p("ffn_up_exps.weight"), HIDDEN, EXPERT_FFN, N_EXPERTS, eb);
            b.experts(&p("ffn_down_exps.weight"), EXPERT_FFN, HIDDEN, N_EXPERTS, Enc::Q8_0);
        } else {
            b.linear(&p("ffn_gate.weight"), HIDDEN, FFN, ea);
            b.linear(&p("ffn_up.weight"), HIDDEN, FFN, eb);
            b.linear(&p("ffn_down.weight"), FFN, HIDDEN, Enc::Q8_0);
        }
    }

    let tensors = b
        .tensors
        .into_iter()
        .map(|(name, enc, dims, data)| (name, enc.ggml_id(), dims, data))
        .collect();
    Ok((md, tensors))
}

/// Seeds picked so that greedy decoding of the tests' prompt has no near-tie (best and second-best logit at least
/// `MIN_MARGIN` of tests/architectures.rs apart at every step), which rounding differences between engines could
/// flip.
fn salt(model: &str) -> &'static str {
    match model {
        "llama3" => "6/",
        "qwen2" => "5/",
        "qwen3" => "11/",
        "qwen3moe" => "10/",
        "gemma3" => "7/",
        "gemma3-scaled" => "11/",
        "qwen3-yarn" => "7/",
        _ => "",
    }
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
