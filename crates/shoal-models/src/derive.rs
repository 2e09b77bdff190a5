//! A model card derived from a GGUF header (issue 11): architecture, shape, weight formats, total bytes and the
//! bytes of every layer, the embedding and the head, and the model's chat template. Pure: the headers (one per file
//! of a split set) come parsed, the id and sources are the caller's, so the rules are unit-tested without files.
//!
//! A card is refused here, when it is added, for anything the engine of this build cannot run (an architecture
//! outside `shoal_engine::arch::SUPPORTED`, a weight format the kernels lack), never later at load time on a remote
//! node.

use std::collections::BTreeMap;

use shoal_engine::gguf::{GgufHeader, Value};
use shoal_engine::kernels::WeightType;
use shoal_types::card::{Backend, Capability, ChatTemplate, ModelFormat, ModelSource, SamplingDefaults};
use shoal_types::{ModelCard, ModelId};

/// Names of the tensors outside the layers that the last stage holds (llama.cpp's names).
const HEAD_TENSORS: &[&str] = &["output.weight", "output_norm.weight", "output_norm.bias", "output.bias"];
/// The token embedding: stage 0 holds it, and the last stage too when the head is tied to it.
const EMBEDDING_TENSOR: &str = "token_embd.weight";
/// The head's own tensor; a file without it ties the head to the embedding.
const OUTPUT_TENSOR: &str = "output.weight";

/// Why no card could be derived; each names the cause (the API answers it as a 4xx).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    #[error("no GGUF header to derive a card from")]
    NoHeader,
    #[error("architecture `{arch}` is not supported by this build (supported: {supported})")]
    UnsupportedArchitecture { arch: String, supported: String },
    #[error("tensor `{tensor}` has weight format {format}, which this build cannot run (supported: {supported})")]
    UnsupportedWeightFormat {
        tensor: String,
        format: String,
        supported: String,
    },
    #[error("the GGUF header lacks `{0}`")]
    MissingKey(String),
    #[error("GGUF metadata `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("tensor `{tensor}` belongs to layer {layer} but the model has {n_layers} layers")]
    LayerOutOfRange { tensor: String, layer: u64, n_layers: u32 },
    #[error("tensor `{0}` is too large")]
    TooLarge(String),
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    }
}

/// An integer key as u32; per-layer arrays (some files give `head_count_kv` per layer) count by their largest entry.
fn get_u32(h: &GgufHeader, key: &str) -> Result<Option<u32>, DeriveError> {
    let Some(v) = h.get(key) else { return Ok(None) };
    let n = match v {
        Value::Array(items) => items.iter().filter_map(as_u64).max(),
        other => as_u64(other),
    };
    let invalid = |reason: &str| DeriveError::InvalidKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    let n = n.ok_or_else(|| invalid("is not a non-negative integer"))?;
    u32::try_from(n).map(Some).map_err(|_| invalid("is out of range"))
}

fn require(h: &GgufHeader, key: &str) -> Result<u32, DeriveError> {
    get_u32(h, key)?.ok_or_else(|| DeriveError::MissingKey(key.to_string()))
}

/// The layer index of a `blk.<i>.…` tensor.
fn layer_of(name: &str) -> Option<u64> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// Derives the card of a model from the headers of its files (`parts[0]` holds the metadata; a split set's other
/// parts add tensors only). `id` and `sources` are the caller's: where the files come from and what they hash to.
pub fn card_from_gguf(parts: &[GgufHeader], id: ModelId, sources: Vec<ModelSource>) -> Result<ModelCard, DeriveError> {
    let first = parts.first().ok_or(DeriveError::NoHeader)?;
    let arch = first
        .get_str("general.architecture")
        .ok_or_else(|| DeriveError::MissingKey("general.architecture".into()))?
        .to_string();
    if !shoal_engine::arch::SUPPORTED.contains(&arch.as_str()) {
        return Err(DeriveError::UnsupportedArchitecture {
            arch,
            supported: shoal_engine::arch::SUPPORTED.join(", "),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let n_layers = require(first, &key("block_count"))?;
    let hidden_size = require(first, &key("embedding_length"))?;
    let heads = require(first, &key("attention.head_count"))?;
    let kv_heads = get_u32(first, &key("attention.head_count_kv"))?.unwrap_or(heads);
    let head_dim = get_u32(first, &key("attention.key_length"))?;
    let context_length = require(first, &key("context_length"))?;
    for (name, v) in [
        ("block_count", n_layers),
        ("embedding_length", hidden_size),
        ("attention.head_count", heads),
        ("attention.head_count_kv", kv_heads),
    ] {
        if v == 0 {
            return Err(DeriveError::InvalidKey {
                key: key(name),
                reason: "must be at least 1".into(),
            });
        }
    }
    // Every layer holds at least one tensor, so a count above the header's tensors is a lie; checked before the
    // per-layer table is allocated, which a lying count (up to u32::MAX) would make tens of GB.
    let n_tensors: usize = parts.iter().map(|p| p.tensors.len()).sum();
    if n_layers as usize > n_tensors {
        return Err(DeriveError::InvalidKey {
            key: key("block_count"),
            reason: format!("{n_layers} layers, but the file has only {n_tensors} tensors"),
        });
    }

    let mut layer_bytes = vec![0u64; n_layers as usize];
    let mut embedding_bytes = 0u64;
    let mut head_bytes = 0u64;
    let mut embedding_tensor_bytes = None;
    let mut has_output = false;
    let mut vocab_from_embedding = None;
    let mut weight_formats: BTreeMap<String, u64> = BTreeMap::new();
    let supported_formats = || WeightType::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ");
    for t in parts.iter().flat_map(|p| &p.tensors) {
        let bytes = match WeightType::from_ggml_id(t.ggml_type) {
            None => {
                return Err(DeriveError::UnsupportedWeightFormat {
                    tensor: t.name.clone(),
                    format: t.type_name(),
                    supported: supported_formats(),
                });
            }
            Some(_) => t.bytes().ok_or_else(|| DeriveError::TooLarge(t.name.clone()))?,
        };
        *weight_formats.entry(t.type_name()).or_default() += bytes;
        if let Some(layer) = layer_of(&t.name) {
            let slot = usize::try_from(layer)
                .ok()
                .and_then(|i| layer_bytes.get_mut(i))
                .ok_or_else(|| DeriveError::LayerOutOfRange {
                    tensor: t.name.clone(),
                    layer,
                    n_layers,
                })?;
            *slot += bytes;
        } else if HEAD_TENSORS.contains(&t.name.as_str()) {
            head_bytes += bytes;
            has_output |= t.name == OUTPUT_TENSOR;
        } else {
            // The embedding, and any other tensor outside the layers (rope frequencies), go with stage 0.
            embedding_bytes += bytes;
            if t.name == EMBEDDING_TENSOR {
                embedding_tensor_bytes = Some(bytes);
                vocab_from_embedding = t.dims.get(1).copied();
            }
        }
    }
    if !has_output && let Some(tied) = embedding_tensor_bytes {
        head_bytes += tied;
    }
    let vocab_size = match get_u32(first, &key("vocab_size"))? {
        Some(v) => v,
        None => match first.get("tokenizer.ggml.tokens") {
            Some(Value::Array(tokens)) => u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            _ => vocab_from_embedding
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| DeriveError::MissingKey(key("vocab_size")))?,
        },
    };
    // The format holding most bytes names the quantization (`Q4_K` for a Q4_K_M mix).
    let quantization = weight_formats
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(f, _)| f.clone())
        .unwrap_or_else(|| "F32".into());
    let storage_size = parts.iter().map(|p| p.file_len).sum();
    Ok(ModelCard {
        id,
        aliases: Vec::new(),
        family: arch,
        format: ModelFormat::Gguf,
        quantization,
        n_layers,
        hidden_size,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        vocab_size,
        context_length,
        storage_size,
        layer_bytes,
        embedding_bytes,
        head_bytes,
        weight_formats,
        capabilities: vec![Capability::Text],
        backends: vec![Backend::Cpu],
        sources,
        sampling_defaults: SamplingDefaults::default(),
        chat_template: ChatTemplate {
            template_override: None,
            model: first.get_str("tokenizer.chat_template").map(str::to_string),
        },
    })
}

/// The files of a split set named by its first part (`…-00001-of-0000N.gguf`), in order; a single file otherwise.
pub fn split_parts(first: &str) -> Result<Vec<String>, String> {
    let Some(stem) = first.strip_suffix(".gguf") else {
        return Ok(vec![first.to_string()]);
    };
    let Some((base, count)) = stem.rsplit_once("-of-") else {
        return Ok(vec![first.to_string()]);
    };
    let Some((base, index)) = base.rsplit_once('-') else {
        return Ok(vec![first.to_string()]);
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) {
        return Ok(vec![first.to_string()]);
    }
    let n: u32 = count
        .parse()
        .map_err(|_| format!("{first}: the part count is out of range"))?;
    if index.parse::<u32>().ok() != Some(1) {
        return Err(format!(
            "{first} is not the first part of its split set (name the `-00001-of-` file)"
        ));
    }
    if n == 0 || n > MAX_SPLIT_PARTS {
        return Err(format!("{first}: a split set of {n} parts (at most {MAX_SPLIT_PARTS})"));
    }
    Ok((1..=n)
        .map(|i| format!("{base}-{i:0w$}-of-{count}.gguf", w = index.len()))
        .collect())
}

/// The most parts a split set may have (llama.cpp's `gguf-split` writes a few dozen for the largest models).
pub const MAX_SPLIT_PARTS: u32 = 256;

#[cfg(test)]
mod tests {
    use shoal_engine::gguf::{self, TensorData, parse_header};
    use shoal_types::card::SourceKind;

    use super::*;

    /// A GGUF with `n` layers of llama tensors: attention in Q8_0 (34 bytes per 32 values), the FFN of layer 1 twice
    /// as wide as the others (a "MoE-like" heavy layer), an embedding, and an output head unless `tied`.
    fn synthetic(n: u32, tied: bool, arch: &str, ffn_type: u32) -> Vec<u8> {
        let hidden = 64u64;
        let mut tensors: Vec<(String, u32, Vec<u64>)> = vec![("token_embd.weight".into(), 8, vec![hidden, 100])];
        for i in 0..n {
            tensors.push((format!("blk.{i}.attn_norm.weight"), 0, vec![hidden]));
            tensors.push((format!("blk.{i}.attn_q.weight"), 8, vec![hidden, hidden]));
            let ffn = if i == 1 { 256 } else { 128 };
            tensors.push((format!("blk.{i}.ffn_up.weight"), ffn_type, vec![hidden, ffn]));
        }
        tensors.push(("output_norm.weight".into(), 0, vec![hidden]));
        if !tied {
            tensors.push(("output.weight".into(), 2, vec![hidden, 100]));
        }
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, ty, dims)| {
                let elems: u64 = dims.iter().product();
                let wt = WeightType::from_ggml_id(*ty).map_or((1, 1), |t| (t.block_elems(), t.block_bytes()));
                vec![0u8; (elems as usize / wt.0) * wt.1]
            })
            .collect();
        let tds: Vec<TensorData<'_>> = tensors
            .iter()
            .zip(&data)
            .map(|((name, ty, dims), d)| TensorData {
                name,
                ggml_type: *ty,
                dims,
                data: d,
            })
            .collect();
        let arch_v = Value::String(arch.into());
        let blocks = Value::U32(n);
        let emb = Value::U32(hidden as u32);
        let heads = Value::U32(4);
        let kv = Value::U32(2);
        let ctx = Value::U32(2048);
        let tmpl = Value::String("{{ messages }}".into());
        let tokens = Value::Array((0..100).map(|i| Value::String(format!("t{i}"))).collect());
        let k = |s: &str| format!("{arch}.{s}");
        let keys = [
            k("block_count"),
            k("embedding_length"),
            k("attention.head_count"),
            k("attention.head_count_kv"),
            k("context_length"),
        ];
        let meta: Vec<(&str, &Value)> = vec![
            ("general.architecture", &arch_v),
            (keys[0].as_str(), &blocks),
            (keys[1].as_str(), &emb),
            (keys[2].as_str(), &heads),
            (keys[3].as_str(), &kv),
            (keys[4].as_str(), &ctx),
            ("tokenizer.ggml.tokens", &tokens),
            ("tokenizer.chat_template", &tmpl),
        ];
        let mut out = Vec::new();
        gguf::write(&mut out, &meta, &tds).unwrap_or_else(|e| panic!("write: {e}"));
        out
    }

    fn path_source() -> Vec<ModelSource> {
        vec![ModelSource {
            kind: SourceKind::Path,
            repo: None,
            revision: None,
            package: None,
            member: None,
            parts: None,
            path: Some("/models".into()),
            files: vec!["m.gguf".into()],
            sha256: BTreeMap::new(),
        }]
    }

    /// Found by fuzzing (issue 15): a lying `block_count` was a per-layer table of up to 32 GiB, and the node aborted.
    #[test]
    fn a_block_count_above_the_tensor_count_is_refused_before_allocating() {
        let bytes = synthetic(2, false, "llama", 8);
        let mut header = parse_header(&bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("parse: {e}"));
        for (k, v) in &mut header.metadata {
            if k == "llama.block_count" {
                *v = Value::U32(u32::MAX);
            }
        }
        let err = card_from_gguf(&[header], ModelId::new("m"), path_source()).unwrap_err();
        assert!(
            matches!(&err, DeriveError::InvalidKey { key, .. } if key == "llama.block_count"),
            "{err}"
        );
    }

    fn derive(bytes: &[u8]) -> Result<ModelCard, DeriveError> {
        let header = parse_header(bytes, bytes.len() as u64).unwrap_or_else(|e| panic!("parse: {e}"));
        card_from_gguf(&[header], ModelId::new("m"), path_source())
    }

    #[test]
    fn a_card_has_the_shape_and_the_bytes_of_every_layer() {
        let bytes = synthetic(3, false, "llama", 8);
        let card = derive(&bytes).unwrap_or_else(|e| panic!("{e}"));
        card.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(card.family, "llama");
        assert_eq!((card.n_layers, card.hidden_size), (3, 64));
        assert_eq!((card.num_attention_heads, card.num_key_value_heads), (4, 2));
        assert_eq!((card.vocab_size, card.context_length), (100, 2048));
        assert_eq!(card.storage_size, bytes.len() as u64);
        // Per layer: norm 64·4 = 256, attn_q 64·64/32·34 = 4,352, ffn_up 64·128/32·34 = 8,704 (layer 1: 17,408).
        assert_eq!(card.layer_bytes, [13_312, 22_016, 13_312]);
        // Embedding 64·100/32·34 = 6,800; head: norm 256 + Q4_0 output 64·100/32·18 = 3,600.
        assert_eq!(card.embedding_bytes, 6_800);
        assert_eq!(card.head_bytes, 3_856);
        assert_eq!(card.weight_formats.get("F32"), Some(&(256 * 4)));
        assert_eq!(card.weight_formats.get("Q4_0"), Some(&3_600));
        assert_eq!(card.quantization, "Q8_0");
        assert_eq!(card.chat_template.model.as_deref(), Some("{{ messages }}"));
        let total: u64 = card.layer_bytes.iter().sum::<u64>() + card.embedding_bytes + card.head_bytes;
        assert_eq!(total, card.weight_formats.values().sum::<u64>());
        // The last stage holds layer 2 and the head; the first the embedding.
        assert_eq!(card.stage_weight_bytes(0, 1), 13_312 + 6_800);
        assert_eq!(card.stage_weight_bytes(2, 3), 13_312 + 3_856);
    }

    #[test]
    fn a_tied_head_puts_the_embedding_on_the_last_stage_too() {
        let card = derive(&synthetic(2, true, "llama", 8)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(card.embedding_bytes, 6_800);
        assert_eq!(card.head_bytes, 256 + 6_800);
    }

    #[test]
    fn what_the_engine_cannot_run_is_refused_with_its_name() {
        match derive(&synthetic(2, false, "mamba", 8)) {
            Err(DeriveError::UnsupportedArchitecture { arch, supported }) => {
                assert_eq!(arch, "mamba");
                assert!(supported.contains("llama"), "{supported}");
            }
            other => panic!("expected an unsupported architecture, got {other:?}"),
        }
        // ggml type 11 is Q3_K, which the kernels lack today; an IQ type (16..) stays unknown whatever they gain.
        match derive(&synthetic(2, false, "llama", 16)) {
            Err(e @ DeriveError::UnsupportedWeightFormat { .. }) => {
                let text = e.to_string();
                assert!(text.contains("blk.0.ffn_up.weight") && text.contains("IQ"), "{text}");
            }
            other => panic!("expected an unsupported weight format, got {other:?}"),
        }
    }

    #[test]
    fn a_truncated_header_asks_for_more_and_a_truncated_file_is_invalid() {
        let bytes = synthetic(2, false, "llama", 8);
        let len = bytes.len() as u64;
        assert!(matches!(
            parse_header(&bytes[..40], len),
            Err(gguf::HeaderError::NeedMore { have: 40 })
        ));
        // The whole file minus the last tensor's end (the writer pads the data to 32 bytes): it ends past the end.
        let cut = &bytes[..bytes.len() - 100];
        match parse_header(cut, cut.len() as u64) {
            Err(gguf::HeaderError::Invalid(reason)) => assert!(reason.contains("truncated"), "{reason}"),
            other => panic!("expected invalid, got {other:?}"),
        }
        let mut corrupt = bytes.clone();
        corrupt[0] = b'X';
        assert!(matches!(parse_header(&corrupt, len), Err(gguf::HeaderError::Invalid(r)) if r.contains("magic")));
    }

    #[test]
    fn split_sets_are_named_by_their_first_part() {
        assert_eq!(split_parts("m.gguf"), Ok(vec!["m.gguf".to_string()]));
        assert_eq!(
            split_parts("Q-00001-of-00003.gguf"),
            Ok(vec![
                "Q-00001-of-00003.gguf".to_string(),
                "Q-00002-of-00003.gguf".to_string(),
                "Q-00003-of-00003.gguf".to_string()
            ])
        );
        assert!(split_parts("Q-00002-of-00003.gguf").is_err());
    }
}
