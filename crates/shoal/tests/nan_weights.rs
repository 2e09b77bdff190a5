//! Weights that produce NaN (issue 15 item 5): a model file corrupted in place after it was verified, keeping its
//! size and mtime, so nothing the node stats tells it apart. The runner maps the file, so its next forward pass reads
//! the corrupt bytes and its logits are NaN. The corrupted tensor is the embedding table: its rows are looked up in
//! the mapped file itself on every machine, while the products of an AVX-512 machine read packed copies made at
//! load (the pack cache, which checks its own files). It must fail the request with an error naming the file (never print
//! garbage or hang), hash the file again against its card's sha256, and fail with "digest mismatch" naming the file
//! in the node's log and in `/state`; the worker then stops trusting the file. Real `shoal run` node on loopback,
//! the real model copied into a models directory of the test's own.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::json;
use support::*;

/// f16 NaN (quiet, positive).
const F16_NAN: [u8; 2] = 0x7e00u16.to_le_bytes();
/// The tensor whose block scales are overwritten: every token's embedding row comes from it.
const TENSOR: &str = "token_embd.weight";
/// The client's answer (an error) must come within this: re-hashing the 100 MB test model takes well under a second.
const ANSWER_WITHIN: Duration = Duration::from_secs(15);

/// Overwrites the f16 scale (the first two bytes of each 32-weight block) of every block of `TENSOR` with NaN, in
/// place, keeping the file's size and restoring its mtime. Returns how many blocks were hit.
fn corrupt_in_place(path: &Path) -> usize {
    let header = shoal_models::read_local_header(path).unwrap();
    let tensor = header.tensors.iter().find(|t| t.name == TENSOR).unwrap();
    // ggml block sizes of the encodings whose blocks start with an f16 scale: Q4_0, Q4_1, Q8_0.
    let block_bytes: u64 = match tensor.ggml_type {
        2 => 18,
        3 => 20,
        8 => 34,
        other => panic!("{TENSOR} has ggml type {other}; the test expects Q4_0, Q4_1 or Q8_0"),
    };
    let bytes = tensor.bytes().unwrap();
    let start = header.data_offset + tensor.offset;
    let before = std::fs::metadata(path).unwrap();
    let mut file = OpenOptions::new().read(true).write(true).open(path).unwrap();
    // Read, patch every block's scale, write back in one go (the table has ~900k blocks).
    let mut data = vec![0u8; bytes as usize];
    file.seek(SeekFrom::Start(start)).unwrap();
    file.read_exact(&mut data).unwrap();
    let mut blocks = 0;
    for block in data.chunks_exact_mut(block_bytes as usize) {
        block[..2].copy_from_slice(&F16_NAN);
        blocks += 1;
    }
    file.seek(SeekFrom::Start(start)).unwrap();
    file.write_all(&data).unwrap();
    file.sync_all().unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    let after = std::fs::metadata(path).unwrap();
    assert_eq!(after.len(), before.len(), "size kept");
    assert_eq!(after.modified().unwrap(), before.modified().unwrap(), "mtime restored");
    blocks
}

#[test]
fn nan_weights_fail_the_request_and_the_runner_naming_the_corrupt_file() {
    let _serial = serial();
    let source = common::model_path();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    let file = models.join(source.file_name().unwrap());
    std::fs::copy(&source, &file).unwrap();
    let shown = file.display().to_string();

    let mut nodes = cluster(root.path(), 1);
    let node = &mut nodes[0];
    node.extra = vec!["--models-dir".into(), models.display().to_string()];
    // The card's sources must never be reached (tests send nothing off the machine): pip without an index, the Hub
    // at a closed local port. So once the copy is found corrupt, no good one can be fetched.
    node.env = vec![
        ("PIP_NO_INDEX".into(), "1".into()),
        ("HF_ENDPOINT".into(), "http://127.0.0.1:9".into()),
    ];
    node.start();
    wait_for(Duration::from_secs(15), "agreement", || agreement(&[&nodes[0]]));
    // The node verifies the good copy (sha256 against the card) and its runner loads it.
    place(&nodes, 1);
    let node = &nodes[0];

    let blocks = corrupt_in_place(&file);
    assert!(blocks > 0);

    // The request fails with an error naming the file, soon, rather than answering NaN-sampled garbage.
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    });
    let asked = Instant::now();
    let (code, answer) = node.http("POST", "/v1/chat/completions", Some(&body)).unwrap();
    assert!(asked.elapsed() < ANSWER_WITHIN, "answered after {:?}", asked.elapsed());
    assert!(code >= 500, "{code} {answer}");
    assert!(answer.contains(&shown), "the client's error names the file: {answer}");
    assert!(answer.contains("digest mismatch"), "{answer}");

    // `/state` shows the runner failed, the reason naming the file.
    let reason = wait_for(Duration::from_secs(10), "the runner's failure in /state", || {
        let state = node.state()?;
        state["runners"]
            .as_object()?
            .values()
            .map(|r| r.to_string())
            .find(|r| r.contains(&shown) && r.contains("digest mismatch: the file is corrupt"))
    });
    assert!(reason.contains("Failed"), "{reason}");

    // The log names it, from the runner's check and from the worker.
    wait_for(Duration::from_secs(5), "the log naming the file", || {
        let log = node.log_text();
        (log.contains(&shown) && log.contains("digest mismatch") && log.contains("model file corrupt")).then_some(())
    });

    // The worker no longer trusts the file: it hashes it again, rejects it and names it in the model's download
    // error in `/state`, instead of handing it to a new runner that would load it and fail again.
    wait_for(
        Duration::from_secs(15),
        "the corrupt copy named in the download error",
        || {
            let state = node.state()?;
            // Downloads are node facts (`nodes.<id>.downloads`).
            state["nodes"].to_string().contains(&shown).then_some(())
        },
    );
    let log = node.log_text();
    // Verified once (the good copy), never again.
    assert_eq!(log.matches("model files verified").count(), 1, "{log}");
    let statuses = runner_statuses(&node.state().unwrap());
    assert!(
        statuses.iter().all(|(_, s)| s != "Ready"),
        "no runner serves the corrupt file again: {statuses:?}"
    );
}
