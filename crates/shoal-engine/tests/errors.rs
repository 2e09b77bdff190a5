//! Bad inputs produce `EngineError`s, never panics.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use shoal_engine::gguf::{self, GgufFile, TensorData, Value};
use shoal_engine::{EngineError, LayerRange, Pipeline, Stage, Tokenizer};

fn load(path: &std::path::Path) -> EngineError {
    Stage::load(path, LayerRange::new(0, 1), common::pool()).expect_err("load must fail")
}

#[test]
fn missing_file() {
    let err = load(std::path::Path::new("/nonexistent/model.gguf"));
    assert!(matches!(err, EngineError::Io { .. }), "{err}");
    println!("{err}");
    assert!(matches!(
        Tokenizer::from_gguf_path("/nonexistent/model.gguf"),
        Err(EngineError::Io { .. })
    ));
}

#[test]
fn not_a_gguf_file() {
    let p = common::temp_path("garbage.gguf");
    fs::write(&p, b"this is not a gguf file at all, just some text padding padding").unwrap();
    let err = load(&p);
    assert!(matches!(err, EngineError::InvalidGguf { .. }), "{err}");
    println!("{err}");
    fs::write(&p, b"").unwrap();
    assert!(matches!(load(&p), EngineError::InvalidGguf { .. }));
}

#[test]
fn truncated_gguf() {
    let data = fs::read(common::model_path()).unwrap();
    for cut in [4usize, 100, 1 << 20, data.len() / 2, data.len() - 1] {
        let p = common::temp_path(&format!("truncated-{cut}.gguf"));
        fs::write(&p, &data[..cut]).unwrap();
        let err = load(&p);
        assert!(matches!(err, EngineError::InvalidGguf { .. }), "cut {cut}: {err}");
        println!("cut {cut}: {err}");
        let err = Pipeline::load(&p, &[], common::pool()).unwrap_err();
        assert!(matches!(err, EngineError::InvalidGguf { .. }), "cut {cut}: {err}");
        fs::remove_file(&p).unwrap();
    }
}

fn write_gguf(name: &str, metadata: &[(&str, &Value)], tensors: &[TensorData<'_>]) -> std::path::PathBuf {
    let p = common::temp_path(name);
    gguf::write(&mut fs::File::create(&p).unwrap(), metadata, tensors).unwrap();
    p
}

/// A 32-float F32 tensor.
fn dummy() -> Vec<u8> {
    vec![0u8; 32 * 4]
}

fn real_metadata() -> Vec<(String, Value)> {
    let g = GgufFile::open(common::model_path()).unwrap();
    g.metadata().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn unsupported_architecture() {
    let data = dummy();
    let p = write_gguf(
        "mamba.gguf",
        &[("general.architecture", &Value::String("mamba".into()))],
        &[TensorData {
            name: "dummy",
            ggml_type: 0,
            dims: &[32],
            data: &data,
        }],
    );
    let err = load(&p);
    assert!(
        matches!(&err, EngineError::UnsupportedArchitecture(a) if a == "mamba"),
        "{err}"
    );
    println!("{err}");
}

#[test]
fn missing_metadata_and_tensors() {
    let data = dummy();
    let tensor = TensorData {
        name: "dummy",
        ggml_type: 0,
        dims: &[32],
        data: &data,
    };
    let p = write_gguf("empty.gguf", &[], &[tensor]);
    assert!(matches!(load(&p), EngineError::MissingMetadata(k) if k == "general.architecture"));

    // The real model's metadata with no tensors: hyper-parameters parse, the first tensor is missing.
    let md = real_metadata();
    let refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let p = write_gguf("no-tensors.gguf", &refs, &[]);
    let err = load(&p);
    assert!(
        matches!(&err, EngineError::MissingTensor(t) if t == "token_embd.weight"),
        "{err}"
    );
    // The tokenizer only needs metadata, so it still builds.
    assert!(Tokenizer::from_gguf_path(&p).is_ok());
}

#[test]
fn unsupported_quant_type_names_the_tensor() {
    let md = real_metadata();
    let refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    // IQ2_XXS (ggml type 16): 66 bytes per block of 256; the kernels do not run the IQ types.
    let data = vec![0u8; 4 * 66];
    let p = write_gguf(
        "iq2_xxs.gguf",
        &refs,
        &[TensorData {
            name: "token_embd.weight",
            ggml_type: 16,
            dims: &[256, 4],
            data: &data,
        }],
    );
    let err = load(&p);
    assert!(
        matches!(&err, EngineError::UnsupportedQuant { name, ty } if name == "token_embd.weight" && ty == "an IQ type"),
        "{err}"
    );
    println!("{err}");
}
