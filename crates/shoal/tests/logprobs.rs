//! Logprobs and `n` > 1 end to end (issue 14, items 4 and 6): one real node with the real model. The official
//! `openai` Python client (`logprobs_client.py` beside this file) checks Chat Completions, Completions and Responses
//! logprobs (greedy: the chosen token heads the alternatives with the same value; sorted, ≤ 0, probabilities summing
//! to at most 1, `bytes` right), three choices with a seed (different, reproducible, streamed interleaved), the 400s
//! naming `top_logprobs`, `logprobs` and `n`, and prints the decode rate with and without `top_logprobs=20`. Ollama's
//! `logprobs` is checked over plain HTTP (the pinned client 0.6.3 predates the field). The values equal the engine's
//! log-softmax: shoal-engine's `tests/logprobs.rs` checks that against the model's logits in-process.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

#[test]
fn logprobs_and_several_choices_in_every_openai_shape_and_ollama() {
    if !python::client_available("openai") {
        return;
    }
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);
    let api = nodes[0].api;

    // Ollama: the top-level `logprobs` list of entries, like Chat Completions'.
    let body = json!({
        "model": "smollm2-135m", "stream": false, "logprobs": true, "top_logprobs": 2,
        "messages": [{"role": "user", "content": "Say hi."}], "options": {"temperature": 0, "num_predict": 6},
    });
    let (code, text) = http(api, "POST", "/ollama/api/chat", Some(&body)).unwrap();
    assert_eq!(code, 200, "{text}");
    let reply = json_of(&text);
    let entries = reply["logprobs"].as_array().expect("logprobs");
    assert!(!entries.is_empty(), "{reply}");
    for e in entries {
        let tops = e["top_logprobs"].as_array().unwrap();
        assert_eq!(tops.len(), 2, "{e}");
        assert_eq!(
            tops[0]["token"], e["token"],
            "greedy: the chosen token is the most likely"
        );
        assert!(e["logprob"].as_f64().unwrap() <= 0.0);
    }
    let bad = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3});
    let (code, text) = http(api, "POST", "/ollama/api/chat", Some(&bad)).unwrap();
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("top_logprobs"), "{text}");

    let base_url = format!("http://127.0.0.1:{api}/v1");
    python::run_client_script("logprobs_client.py", &base_url, SCRIPT_TIMEOUT, &nodes[0]);
}
