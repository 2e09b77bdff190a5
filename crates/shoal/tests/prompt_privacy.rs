//! Prompts stay off the durable log (issue 15): a request's content travels from its API node to rank 0 as a
//! transient message and is written to no node's disk, nor served by `/events` or `/state`; every dialect still
//! answers. Real `shoal run` nodes on loopback, the model over three stages, real HTTP.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

/// Written into every request's content; must appear nowhere a node keeps or serves State.
const MARKER: &str = "zq7-private-marker-4b1d";

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)))
        .map(|f| f.display().to_string())
        .collect()
}

fn post(node: &Node, path: &str, body: &Value) -> Value {
    let (code, text) = node.http("POST", path, Some(body)).unwrap();
    assert_eq!(code, 200, "{path}: {text}");
    json_of(&text)
}

#[test]
fn prompts_reach_no_store_and_no_events_and_every_dialect_answers() {
    let _serial = serial();
    let (_root, nodes) = start(3);
    let instance = place(&nodes, 3);
    let card_id = instance["model"]["id"].as_str().unwrap().to_owned();
    let secret = format!("Repeat after me: {MARKER}.");

    // OpenAI chat (through a node that may not hold rank 0), with the marker in a system and a user message, a
    // tool's definition and a schema; n = 2 makes two tasks.
    let chat = post(
        &nodes[1],
        "/v1/chat/completions",
        &json!({
            "model": "smollm2-135m",
            "messages": [
                {"role": "system", "content": format!("Keep {MARKER} secret.")},
                {"role": "user", "content": secret},
            ],
            "max_tokens": 4, "temperature": 0, "n": 2,
        }),
    );
    assert_eq!(chat["choices"].as_array().unwrap().len(), 2, "{chat}");
    assert!(chat["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{chat}");
    let tools = post(
        &nodes[2],
        "/v1/chat/completions",
        &json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": secret}],
            "tools": [{"type": "function", "function": {
                "name": "lookup", "description": format!("Finds {MARKER}"),
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
            "max_tokens": 4, "temperature": 0,
        }),
    );
    assert!(tools["choices"][0]["message"].is_object(), "{tools}");
    let schema = post(
        &nodes[0],
        "/v1/chat/completions",
        &json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": secret}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "description": MARKER,
                "properties": {"a": {"type": "integer"}}, "required": ["a"]}}},
            "max_tokens": 12, "temperature": 0,
        }),
    );
    assert!(schema["choices"][0]["message"]["content"].is_string(), "{schema}");
    // Completions: the marker in a raw prompt, with logprobs.
    let completion = post(
        &nodes[2],
        "/v1/completions",
        &json!({"model": "smollm2-135m", "prompt": secret, "max_tokens": 4, "temperature": 0, "logprobs": 1}),
    );
    assert!(
        !completion["choices"][0]["text"].as_str().unwrap().is_empty(),
        "{completion}"
    );
    // Anthropic, Responses and Ollama (streaming by default).
    let anthropic = post(
        &nodes[1],
        "/v1/messages",
        &json!({"model": "smollm2-135m", "system": MARKER, "max_tokens": 4,
                "messages": [{"role": "user", "content": secret}]}),
    );
    assert_eq!(anthropic["type"], "message", "{anthropic}");
    let responses = post(
        &nodes[0],
        "/v1/responses",
        &json!({"model": "smollm2-135m", "input": secret, "instructions": MARKER, "max_output_tokens": 4}),
    );
    assert!(responses["output"][0]["content"][0]["text"].is_string(), "{responses}");
    let (code, ndjson) = nodes[2]
        .http(
            "POST",
            "/ollama/api/generate",
            Some(&json!({"model": "smollm2-135m", "prompt": secret, "raw": true,
                         "options": {"num_predict": 4}})),
        )
        .unwrap();
    assert_eq!(code, 200, "{ndjson}");
    assert!(ndjson.contains("\"done\":true"), "{ndjson}");
    // A streamed chat.
    let mut sse = SseClient::open(
        nodes[0].api,
        &json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": secret}],
                "max_tokens": 4, "temperature": 0, "stream": true}),
    );
    let (_, _, _, done) = sse.finish();
    assert!(done, "the stream ends with [DONE]");

    // Every task is finished and deleted; the contents went with them.
    wait_for(Duration::from_secs(20), "every task deleted", || {
        nodes
            .iter()
            .all(|n| {
                n.state()
                    .is_some_and(|s| s["tasks"].as_object().is_some_and(|t| t.is_empty()))
            })
            .then_some(())
    });
    for (i, node) in nodes.iter().enumerate() {
        let (code, events) = node.get("/events?limit=10000").unwrap();
        assert_eq!(code, 200);
        assert!(events.contains("TaskCreated"), "node {i}: the log holds the tasks");
        assert!(!events.contains(MARKER), "node {i}: a prompt is in /events");
        let state = node.get("/state").unwrap().1;
        assert!(!state.contains(MARKER), "node {i}: a prompt is in /state");
        assert!(
            !node.log_text().contains(MARKER),
            "node {i}: a prompt is in the log output"
        );
        // The scan reads what the store holds: the model's id, written by InstanceCreated, is found.
        assert!(
            !files_containing(&node.dir, card_id.as_bytes()).is_empty(),
            "node {i}: the store holds the instance"
        );
        let leaked = files_containing(&node.dir, MARKER.as_bytes());
        assert!(leaked.is_empty(), "node {i}: a prompt is on disk in {leaked:?}");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Measurement for BENCHMARKS.md, not a check (run with `--ignored --nocapture`): store size and RSS of every node
/// before and after many 1 MB prompts (`SHOAL_PROMPTS`, default 1,000, for at most `SHOAL_PROMPT_SECS`, default 240),
/// "before" being after a first prompt that loads rank 0's tokenizer.
/// The API node holds no model file, so it cannot count a prompt and sends each one on, as a client could; rank 0
/// fetches the 1 MB, tokenizes it and refuses it as over the context.
#[test]
#[ignore]
fn measure_store_and_rss_under_large_prompts() {
    let _serial = serial();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 4);
    for (i, node) in nodes.iter_mut().enumerate() {
        if i < 3 {
            node.extra = vec!["--models-dir".into(), models.display().to_string()];
        }
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(30), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(30), "every fact", || same_state(&all, 4));
    }
    let ids: Vec<String> = nodes[..3]
        .iter()
        .map(|n| json_of(&n.get("/node_id").unwrap().1).as_str().unwrap().to_owned())
        .collect();
    let (code, body) = nodes[0]
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": 3, "nodes": ids})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(90), "every runner Ready", || {
        nodes[0]
            .state()
            .is_some_and(|s| {
                let st = runner_statuses(&s);
                st.len() == 3 && st.iter().all(|(_, s)| s == "Ready")
            })
            .then_some(())
    });
    let measure = |nodes: &[Node]| -> Vec<(u64, u64)> {
        nodes
            .iter()
            .map(|n| (dir_bytes(&n.dir), rss_kib(n.child.as_ref().unwrap().id())))
            .collect()
    };
    let ready = measure(&nodes);
    let prompt = format!("{MARKER} {}", "lorem ipsum ".repeat((1 << 20) / 12));
    let api = nodes[3].api;
    // One prompt first: rank 0's node loads the model's tokenizer for it, once (~20 MB), which is not growth.
    let warm_up = json!({"model": "smollm2-135m", "prompt": prompt, "max_tokens": 1});
    let (code, body) = http(api, "POST", "/v1/completions", Some(&warm_up)).unwrap();
    assert_eq!(code, 400, "{body}");
    std::thread::sleep(Duration::from_secs(2));
    let before = measure(&nodes);
    for (i, (r, b)) in ready.iter().zip(&before).enumerate() {
        println!(
            "node {i}: RSS when ready {} KiB, after the first prompt {} KiB ({:+})",
            r.1,
            b.1,
            b.1 as i64 - r.1 as i64
        );
    }
    let count: usize = std::env::var("SHOAL_PROMPTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let secs: u64 = std::env::var("SHOAL_PROMPT_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);
    let started = Instant::now();
    let sent = std::sync::atomic::AtomicUsize::new(0);
    // Per status: how many, and the first body (to tell a refusal from a failure).
    let codes = std::sync::Mutex::new(std::collections::BTreeMap::<u16, (usize, String)>::new());
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while started.elapsed() < Duration::from_secs(secs)
                    && sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < count
                {
                    let body = json!({"model": "smollm2-135m", "prompt": prompt, "max_tokens": 1});
                    let (code, text) = http(api, "POST", "/v1/completions", Some(&body)).unwrap_or_default();
                    let mut codes = codes.lock().unwrap();
                    let seen = codes.entry(code).or_insert_with(|| (0, text));
                    seen.0 += 1;
                }
            });
        }
    });
    let done: usize = codes.lock().unwrap().values().map(|(n, _)| n).sum();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let after = measure(&nodes);
    println!(
        "{done} prompts of {} bytes in {elapsed:?}; answers by status {:?}",
        prompt.len(),
        codes.lock().unwrap()
    );
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        println!(
            "node {i}: data dir {} -> {} bytes ({:+}), RSS {} -> {} KiB ({:+})",
            b.0,
            a.0,
            a.0 as i64 - b.0 as i64,
            b.1,
            a.1,
            a.1 as i64 - b.1 as i64
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            files_containing(&node.dir, MARKER.as_bytes()).is_empty(),
            "node {i}: a prompt on disk"
        );
    }
}
