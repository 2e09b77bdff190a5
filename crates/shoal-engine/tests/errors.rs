//! Bad inputs produce `EngineError`s, never panics.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
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

fn write_gguf(name: &str, metadata: &[(&str, gguf_file::Value)], with_tensor: bool) -> std::path::PathBuf {
    let p = common::temp_path(name);
    let mut f = fs::File::create(&p).unwrap();
    let md: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let t = QTensor::quantize(
        &Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let tensors: Vec<(&str, &QTensor)> = if with_tensor { vec![("dummy", &t)] } else { vec![] };
    gguf_file::write(&mut f, &md, &tensors).unwrap();
    p
}

#[test]
fn unsupported_architecture() {
    let p = write_gguf(
        "mamba.gguf",
        &[("general.architecture", gguf_file::Value::String("mamba".into()))],
        true,
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
    let p = write_gguf("empty.gguf", &[], true);
    assert!(matches!(load(&p), EngineError::MissingMetadata(k) if k == "general.architecture"));

    // The real model's metadata with no tensors: hyper-parameters parse, the first tensor is missing.
    let mut r = fs::File::open(common::model_path()).unwrap();
    let content = gguf_file::Content::read(&mut r).unwrap();
    let md: Vec<(&str, gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let p = write_gguf("no-tensors.gguf", &md, false);
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
    let mut r = fs::File::open(common::model_path()).unwrap();
    let content = gguf_file::Content::read(&mut r).unwrap();
    let md: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t = QTensor::quantize(
        &Tensor::zeros((4, 64), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::Q5_0,
    )
    .unwrap();
    let p = common::temp_path("q5_0.gguf");
    let mut f = fs::File::create(&p).unwrap();
    gguf_file::write(&mut f, &md, &[("token_embd.weight", &t)]).unwrap();
    drop(f);
    let err = load(&p);
    assert!(
        matches!(&err, EngineError::UnsupportedQuant { name, .. } if name == "token_embd.weight"),
        "{err}"
    );
    println!("{err}");
}
