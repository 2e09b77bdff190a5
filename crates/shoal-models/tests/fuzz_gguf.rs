//! Fuzzing the GGUF header and metadata parser and the card derived from it (issue 15): a model file's header comes
//! from a path a user names or from a download (`POST /models`), so any bytes may arrive. Whatever the bytes
//! (arbitrary, or a valid header with random edits) and whatever file length is claimed, `parse_header` returns a
//! header, "need more bytes" or an error; a header that parses derives a card or an error. Nothing panics.
//! `SHOAL_FUZZ_CASES=1000000` runs the long version.
#![allow(clippy::unwrap_used)]

#[path = "../../shoal-types/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use fuzz_support::{bytes_after, edits, mutate};
use proptest::prelude::*;
use shoal_engine::gguf::{self, HeaderError, TensorData, Value, parse_header};
use shoal_models::derive::card_from_gguf;
use shoal_types::ModelId;
use shoal_types::card::{ModelSource, SourceKind};

/// Bytes of tensor data behind the sample header: the header's tensor offsets must land inside the file.
const DATA_BYTES: u64 = 1 << 16;

/// A two-layer llama header with every value type GGUF has (nested arrays included), and its file's length.
static SAMPLE: LazyLock<(Vec<u8>, u64)> = LazyLock::new(|| {
    let hidden = 64u64;
    let mut tensors: Vec<(String, u32, Vec<u64>)> = vec![("token_embd.weight".into(), 0, vec![hidden, 100])];
    for i in 0..2 {
        tensors.push((format!("blk.{i}.attn_norm.weight"), 0, vec![hidden]));
        tensors.push((format!("blk.{i}.attn_q.weight"), 8, vec![hidden, hidden]));
        tensors.push((format!("blk.{i}.ffn_up.weight"), 12, vec![hidden * 4, 128]));
    }
    tensors.push(("output_norm.weight".into(), 0, vec![hidden]));
    let tds: Vec<TensorData<'_>> = tensors
        .iter()
        .map(|(name, ty, dims)| TensorData {
            name,
            ggml_type: *ty,
            dims,
            data: &[],
        })
        .collect();
    let values = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.embedding_length", Value::U64(hidden)),
        ("llama.attention.head_count", Value::I32(4)),
        ("llama.attention.head_count_kv", Value::U16(2)),
        ("llama.context_length", Value::U32(2048)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F64(1e-5)),
        ("general.alignment", Value::U32(32)),
        ("x.i8", Value::I8(-1)),
        ("x.u8", Value::U8(1)),
        ("x.i16", Value::I16(-2)),
        ("x.i64", Value::I64(-3)),
        ("x.bool", Value::Bool(true)),
        (
            "x.nested",
            Value::Array(vec![
                Value::Array(vec![Value::U8(1), Value::U8(2)]),
                Value::Array(vec![]),
            ]),
        ),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array((0..20).map(|i| Value::String(format!("t{i}"))).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array((0..20).map(|i| Value::F32(i as f32)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array((0..20).map(Value::I32).collect()),
        ),
        ("tokenizer.chat_template", Value::String("{{ messages }}".into())),
    ];
    let meta: Vec<(&str, &Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    let mut out = Vec::new();
    gguf::write(&mut out, &meta, &tds).unwrap();
    let len = out.len() as u64 + DATA_BYTES;
    (out, len)
});

fn sources() -> Vec<ModelSource> {
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

/// Parses `prefix` of a file of `file_len` bytes; a header that parses goes on to derive a card. Returns whether
/// it parsed.
fn parse(prefix: &[u8], file_len: u64) -> bool {
    match parse_header(prefix, file_len) {
        Ok(header) => {
            let _ = card_from_gguf(&[header], ModelId::new("m"), sources());
            true
        }
        Err(HeaderError::NeedMore { have }) => {
            assert!(have < file_len && have <= prefix.len() as u64);
            false
        }
        Err(HeaderError::Invalid(_)) => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in bytes_after(b"GGUF\x03\0\0\0"), extra in prop_oneof![Just(0u64), any::<u64>()]) {
        parse(&bytes, (bytes.len() as u64).saturating_add(extra));
    }

    #[test]
    fn edited_valid_headers_never_panic(edits in edits(), file_len in prop_oneof![Just(None), any::<u64>().prop_map(Some)]) {
        let (bytes, len) = &*SAMPLE;
        let mut bytes = bytes.clone();
        mutate(&mut bytes, &edits);
        parse(&bytes, file_len.unwrap_or(*len));
    }

    /// Two headers, one edited, as the parts of a split model.
    #[test]
    fn split_parts_with_an_edited_part_never_panic(edits in edits()) {
        let (bytes, len) = &*SAMPLE;
        let mut edited = bytes.clone();
        mutate(&mut edited, &edits);
        if let Ok(part) = parse_header(&edited, *len) {
            let first = parse_header(bytes, *len).unwrap();
            let _ = card_from_gguf(&[first, part], ModelId::new("m"), sources());
        }
    }
}

#[test]
fn the_sample_parses_and_derives_a_card() {
    let (bytes, len) = &*SAMPLE;
    let header = parse_header(bytes, *len).unwrap();
    card_from_gguf(&[header], ModelId::new("m"), sources()).unwrap();
}
