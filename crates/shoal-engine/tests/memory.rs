//! Weights are memory-mapped from the GGUF, never copied into the heap (ENGINE.md "Decisions"; issue 11 item 5):
//! loading a stage grows the process's file-backed resident memory by about the stage's weight bytes and its
//! anonymous (heap) memory by almost nothing, and a middle stage maps only its own layers. Rows packed for the
//! machine's row-group kernel (AVX-512) are mapped too, from the pack cache's files (written on a first load, whose
//! heap buffers are freed once written).
//! Linux only: it reads `RssAnon` and `RssFile` from /proc/self/status.
#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used)]

mod common;

use shoal_engine::gguf::GgufFile;
use shoal_engine::{LayerRange, Stage};

/// (anonymous, file-backed) resident bytes of this process.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("RssAnon:"), field("RssFile:"))
}

#[test]
fn stage_weights_are_mapped_not_copied() {
    let _guard = common::exclusive();
    let path = common::model_path();
    // The header's metadata (49,152 tokens and 48,900 merges as strings) lives on the heap: measure after it.
    let mut gguf = GgufFile::open(&path).unwrap();
    let (anon0, file0) = rss();
    let stage = Stage::load_from(&mut gguf, LayerRange::new(0, 30), common::pool()).unwrap();
    let weights = stage.weight_bytes();
    let (anon1, file1) = rss();
    let anon_growth = anon1.saturating_sub(anon0);
    let file_growth = file1.saturating_sub(file0);
    eprintln!("weights {weights} B, heap +{anon_growth} B, mapped +{file_growth} B");
    // The norms are dequantized to f32 (a few hundred KB); the blocks, embedding and head stay in the file's pages.
    // (How much of the mapping is resident depends on read-ahead and the page cache, so it is printed, not asserted.)
    assert!(
        anon_growth < weights / 20,
        "heap grew by {anon_growth} B for {weights} B of weights: weights were copied"
    );
    drop(stage);
}

#[test]
fn a_middle_stage_maps_only_its_layers() {
    let _guard = common::exclusive();
    let path = common::model_path();
    let whole = std::fs::metadata(&path).unwrap().len();
    let mid = Stage::load(&path, LayerRange::new(10, 20), common::pool()).unwrap();
    // A third of the blocks and no embedding or head: about 22 MB of the 98 MB file.
    assert!(
        mid.weight_bytes() < whole / 3,
        "{} of {whole} bytes",
        mid.weight_bytes()
    );
}
