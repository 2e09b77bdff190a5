//! `shoal run --kv-cache`: a node whose runners keep their KV cache in f16 answers like any other, and a bad value
//! is refused at start naming the flag. (The F16 cache's numbers against F32 are the engine's tests/kv_cache.rs.)
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::wait_for;
use serde_json::json;
use support::*;

#[test]
fn f16_kv_cache_node_answers_and_bad_values_are_refused() {
    let _s = serial();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["run", "--kv-cache", "q8_0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kv-cache") && err.contains("expected f32 or f16"),
        "{err}"
    );

    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 1);
    let zenoh = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), nodes[0].zenoh);
    nodes[0].peers = vec![zenoh];
    nodes[0].extra = vec![
        "--models-dir".into(),
        models.display().to_string(),
        "--kv-cache".into(),
        "f16".into(),
    ];
    nodes[0].start();
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(15), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(15), "the node's fact", || same_state(&all, 1));
    }
    place(&nodes, 1);
    assert!(
        nodes[0].logged("kv_cache=f16"),
        "the runner's stage keeps an f16 cache:\n{}",
        nodes[0].log_text()
    );
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
        "max_tokens": 24,
        "temperature": 0,
    });
    let (code, text) = http(nodes[0].api, "POST", "/v1/chat/completions", Some(&body)).unwrap();
    assert_eq!(code, 200, "{text}");
    let answer = json_of(&text)["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(answer.contains("Paris"), "{answer}");
}
