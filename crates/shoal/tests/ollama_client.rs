//! The Ollama dialect (issue 12 item 4) on one real `shoal run` node with the real model: the official `ollama`
//! Python client (`ollama_client.py` beside this file) against the default paths (`/api/*`), then raw HTTP against
//! exo's paths (`/ollama/api/*`): chat and generate (NDJSON streaming by default, one object without), tags, ps,
//! show, version, the 404 and 400 shapes, the instance deleted mid-stream (a last line `{"error":…,"done":true}`),
//! and the client going away mid-stream (`TaskCancelled` and `TaskFinished`, once each).
//!
//! The client is a Python package (`pip install ollama`; `.ci/run` installs it). Where `python3 -c "import ollama"`
//! fails, the client test fails if the environment variable `CI` is set (CI must run it) and otherwise prints a
//! notice and passes without running.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::wait_for;
use serde_json::{Value, json};
use support::*;

/// How long the script may run: a dozen short generations on a 2-core machine take well under this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const LONG_PROMPT: &str = "Count from 1 to 500, one number per line.";

#[test]
fn the_official_ollama_python_client_chats_generates_lists_shows_and_pulls() {
    if !python::client_available("ollama") {
        return;
    }
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);

    let host = format!("http://127.0.0.1:{}", nodes[0].api);
    python::run_client_script("ollama_client.py", &host, SCRIPT_TIMEOUT, &nodes[0]);
}

/// A streaming Ollama request read line by line (HTTP/1.0, so the body ends when the connection closes).
struct NdJson {
    reader: BufReader<TcpStream>,
    status: u16,
    content_type: String,
}

impl NdJson {
    fn open(port: u16, path: &str, body: &Value) -> NdJson {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut content_type = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-type")
            {
                content_type = value.trim().to_owned();
            }
        }
        NdJson {
            reader,
            status,
            content_type,
        }
    }

    /// The next line as JSON, or None at the end of the body.
    fn next(&mut self) -> Option<Value> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if !line.trim().is_empty() {
                return Some(json_of(line.trim()));
            }
        }
    }

    /// Reads lines until `n` carried text.
    fn read_pieces(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let line = self.next().expect("the stream ended early");
            assert_eq!(line["done"], false, "{line}");
            if line["message"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                seen += 1;
            }
        }
    }

    fn rest(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn chat_body(prompt: &str, num_predict: i64, stream: bool) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "options": {"temperature": 0, "num_predict": num_predict},
        "stream": stream,
    })
}

/// How many events of `kind` a node's replica log holds whose JSON contains `needle`.
fn count_events(node: &Node, kind: &str, needle: &str) -> usize {
    let (_, body) = node.get("/events?limit=10000").unwrap();
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    events
        .iter()
        .filter(|e| e["event"].get(kind).is_some_and(|v| v.to_string().contains(needle)))
        .count()
}

fn metric(node: &Node, prefix: &str) -> f64 {
    let (_, text) = node.get("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn no_task_left(node: &Node) -> Option<()> {
    node.state()?["tasks"].as_object()?.is_empty().then_some(())
}

#[test]
fn exos_ollama_paths_answer_refuse_and_end_streams_in_band() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    let node = &nodes[0];
    let api = node.api;
    let instance = place(&nodes, 1);

    // Not streaming: one object with the whole text and the final fields.
    let (code, body) = http(api, "POST", "/ollama/api/chat", Some(&chat_body("Hi", 8, false))).unwrap();
    assert_eq!(code, 200, "{body}");
    let whole = json_of(&body);
    assert_eq!(whole["done"], true, "{whole}");
    assert_eq!(whole["done_reason"], "length", "{whole}");
    assert_eq!(whole["eval_count"], 8, "{whole}");
    assert!(whole["prompt_eval_count"].as_u64() > Some(0), "{whole}");
    assert!(!whole["message"]["content"].as_str().unwrap().is_empty(), "{whole}");

    // Streaming by default: NDJSON lines, the last one done with the counts.
    let mut body = chat_body("Hi", 8, true);
    body.as_object_mut().unwrap().remove("stream");
    let mut stream = NdJson::open(api, "/ollama/api/chat", &body);
    assert_eq!(
        (stream.status, stream.content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let lines = stream.rest();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{lines:?}");
    assert_eq!(last["eval_count"], 8, "{last}");
    let streamed: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(streamed, whole["message"]["content"].as_str().unwrap());

    // Generate, streaming, and the model endpoints.
    let mut stream = NdJson::open(
        api,
        "/ollama/api/generate",
        &json!({"model": "smollm2-135m", "prompt": "Hi", "options": {"num_predict": 4}}),
    );
    let lines = stream.rest();
    assert!(
        lines
            .iter()
            .any(|l| l["response"].as_str().is_some_and(|r| !r.is_empty())),
        "{lines:?}"
    );
    assert_eq!(lines.last().unwrap()["done_reason"], "length", "{lines:?}");
    let (code, tags) = http(api, "GET", "/ollama/api/tags", None).unwrap();
    assert_eq!(code, 200);
    assert!(json_of(&tags)["models"].as_array().unwrap().len() >= 2, "{tags}");
    let (code, ps) = http(api, "GET", "/ollama/api/ps", None).unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        json_of(&ps)["models"][0]["model"],
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "{ps}"
    );
    let (code, shown) = http(
        api,
        "POST",
        "/ollama/api/show",
        Some(&json!({"model": "smollm2-135m:latest"})),
    )
    .unwrap();
    assert_eq!(code, 200, "{shown}");
    assert_eq!(json_of(&shown)["details"]["quantization_level"], "Q4_1");
    let (code, version) = http(api, "GET", "/ollama/api/version", None).unwrap();
    assert_eq!(code, 200);
    assert!(json_of(&version)["version"].is_string(), "{version}");

    // Pull with progress: a card whose file this node does not hold yet is copied in (a `path` source), reported as
    // Ollama reports a download; pulled again, it is there already.
    let elsewhere = tempfile::tempdir().unwrap();
    let source = elsewhere.path().join("pull-me.gguf");
    std::fs::copy(common::model_path(), &source).unwrap();
    let (code, body) = http(
        api,
        "POST",
        "/models/add",
        Some(&json!({"source": source.display().to_string(), "id": "pull-me"})),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let mut stream = NdJson::open(api, "/ollama/api/pull", &json!({"model": "pull-me"}));
    assert_eq!(stream.status, 200);
    let lines = stream.rest();
    let statuses: Vec<&str> = lines.iter().map(|l| l["status"].as_str().unwrap_or("?")).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"), "{lines:?}");
    assert_eq!(
        &statuses[statuses.len() - 2..],
        ["verifying sha256 digest", "success"],
        "{lines:?}"
    );
    // Progress lines come from the fetch that copies the file. The node's worker fetches the same model on its own:
    // a model only `path` sources name is placed only where its files are, so every worker looks for it and copies
    // it in when it can (`shoal-worker/src/downloads.rs`, `scan_held_files`). When that fetch holds the model's lock
    // first, the pull waits for it and finds the file verified, so it goes straight from the manifest to the digest.
    let progress: Vec<&Value> = lines.iter().filter(|l| l["status"] == "pulling pull-me.gguf").collect();
    if let Some(last) = progress.last() {
        assert!(
            last["digest"].as_str().is_some_and(|d| d.starts_with("sha256:")),
            "{last}"
        );
        assert_eq!(last["completed"], last["total"], "{last}");
        assert!(last["total"].as_u64() > Some(0), "{last}");
    } else {
        assert_eq!(statuses.len(), 3, "{lines:?}");
    }
    let (code, body) = http(
        api,
        "POST",
        "/ollama/api/pull",
        Some(&json!({"name": "pull-me", "stream": false})),
    )
    .unwrap();
    assert_eq!((code, json_of(&body)), (200, json!({"status": "success"})), "{body}");

    // A pull that fails: the card's file is gone from its source. Streaming, the last line is the error; not
    // streaming, a 500.
    let source = elsewhere.path().join("fail-me.gguf");
    std::fs::copy(common::model_path(), &source).unwrap();
    let (code, body) = http(
        api,
        "POST",
        "/models/add",
        Some(&json!({"source": source.display().to_string(), "id": "fail-me"})),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    std::fs::remove_file(&source).unwrap();
    let lines = NdJson::open(api, "/api/pull", &json!({"model": "fail-me"})).rest();
    let last = lines.last().unwrap();
    // The worker's own fetch (above) may have copied the file in before it was removed; then the pull succeeds, and
    // only a pull that found nothing must fail, in both shapes.
    if last["status"] != "success" {
        assert!(last["error"].as_str().is_some_and(|e| !e.is_empty()), "{lines:?}");
        let (code, body) = http(
            api,
            "POST",
            "/api/pull",
            Some(&json!({"model": "fail-me", "stream": false})),
        )
        .unwrap();
        assert_eq!(code, 500, "{body}");
        assert!(json_of(&body)["error"].is_string(), "{body}");
    }

    // Errors in Ollama's shape: an unknown model is a 404, a bad field a 400 naming it.
    let mut unknown = chat_body("Hi", 4, true);
    unknown["model"] = json!("no-such-model");
    let (code, body) = http(api, "POST", "/ollama/api/chat", Some(&unknown)).unwrap();
    assert_eq!(code, 404, "{body}");
    assert_eq!(json_of(&body), json!({"error": "model 'no-such-model' not found"}));
    let bad = [
        (
            json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}),
            "messages[0].images",
        ),
        (
            json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 100_000}}),
            "options.num_ctx",
        ),
        (
            json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "format": "yaml"}),
            "format",
        ),
        (json!({"model": "smollm2-135m", "prompt": "x", "suffix": "y"}), "suffix"),
    ];
    for (body, field) in bad {
        let path = if body.get("prompt").is_some() {
            "/ollama/api/generate"
        } else {
            "/ollama/api/chat"
        };
        let (code, text) = http(api, "POST", path, Some(&body)).unwrap();
        assert_eq!(code, 400, "{text}");
        let error = json_of(&text);
        assert!(error["error"].as_str().unwrap().contains(field), "{field}: {error}");
        assert_eq!(error.as_object().unwrap().len(), 1, "{error}");
    }

    // The client goes away mid-stream: the task is cancelled and finished, once each.
    wait_for(Duration::from_secs(5), "no task", || no_task_left(node));
    let cancelled_before = count_events(node, "TaskStatusUpdated", "Cancelled");
    let deleted_before = count_events(node, "TaskDeleted", "");
    let mut stream = NdJson::open(api, "/ollama/api/chat", &chat_body(LONG_PROMPT, 2000, true));
    stream.read_pieces(5);
    drop(stream);
    wait_for(Duration::from_secs(5), "the task gone", || no_task_left(node));
    assert_eq!(
        count_events(node, "TaskStatusUpdated", "Cancelled"),
        cancelled_before + 1
    );
    assert_eq!(count_events(node, "TaskDeleted", ""), deleted_before + 1);
    assert_eq!(metric(node, "shoal_stream_closes_total{reason=\"client_gone\"}"), 1.0);

    // The instance is deleted mid-stream: the last line is the error, with `done`.
    let mut stream = NdJson::open(
        api,
        "/api/generate",
        &json!({
            "model": "smollm2-135m", "prompt": LONG_PROMPT, "options": {"num_predict": 2000},
        }),
    );
    let mut pieces = 0;
    while pieces < 5 {
        let line = stream.next().expect("a line");
        if line["response"].as_str().is_some_and(|r| !r.is_empty()) {
            pieces += 1;
        }
    }
    let id = instance["id"].as_str().unwrap();
    let (code, body) = http(api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let lines = stream.rest();
    let last = lines.last().expect("an error line");
    assert_eq!(last["done"], true, "{last}");
    assert!(last["error"].as_str().is_some_and(|e| e.contains("deleted")), "{last}");
    assert!(lines[..lines.len() - 1].iter().all(|l| l["done"] == false), "{lines:?}");
    wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));
    assert_eq!(metric(node, "shoal_streams_open"), 0.0);
}
