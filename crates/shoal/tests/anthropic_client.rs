//! Anthropic Messages end to end (issue 12 item 1): one real `shoal run` node with the real model. The official
//! `anthropic` Python client (`anthropic_client.py` beside this file) checks `messages.create`, the SDK's streaming
//! helper, `count_tokens`, stop reasons (`end_turn`/`max_tokens`/`stop_sequence` naming the sequence) and the
//! client's error classes; raw HTTP then checks the stream's event sequence, a client disconnect (one
//! `TaskCancelled` and one `TaskFinished`), and an instance deleted mid-stream (`event: error`, then the end).
//!
//! The client is a Python package (`pip install anthropic`; `.ci/run` installs it). Where `python3 -c "import
//! anthropic"` fails, the client's part fails if the environment variable `CI` is set (CI must run it) and otherwise
//! prints a notice and is skipped; the raw HTTP checks run either way.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

/// How long the script may run: a dozen short generations on a 2-core machine take well under this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const LONG_PROMPT: &str = "Count from 1 to 500, one number per line.";

/// A streaming `POST /v1/messages` read event by event (HTTP/1.0, so the body ends when the connection closes),
/// with the headers Anthropic's clients send.
struct Events {
    reader: BufReader<TcpStream>,
    status: u16,
}

impl Events {
    fn open(port: u16, body: &Value) -> Events {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST /v1/messages HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             x-api-key: any\r\nanthropic-version: 2023-06-01\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Events { reader, status }
    }

    /// The next event (name, data), or None at the end of the body.
    fn next(&mut self) -> Option<(String, Value)> {
        let mut name = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end();
            if let Some(n) = line.strip_prefix("event: ") {
                name = Some(n.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let name = name.take().expect("every event is named");
                return Some((name, json_of(data)));
            }
        }
    }

    /// Reads until `n` text deltas have come.
    fn read_deltas(&mut self, n: usize) {
        let mut seen = 0;
        while seen < n {
            let (name, _) = self.next().expect("the stream ended early");
            seen += usize::from(name == "content_block_delta");
        }
    }

    fn rest(&mut self) -> Vec<(String, Value)> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn body(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// Events of the node's log about `task_id`, by kind.
fn task_events(node: &Node, task_id: &str) -> Vec<Value> {
    let (_, text) = node.get("/events?limit=10000").unwrap();
    let events: Vec<Value> = serde_json::from_str(&text).unwrap();
    events
        .into_iter()
        .map(|e| e["event"].clone())
        .filter(|e| {
            e.as_object()
                .is_some_and(|o| o.values().any(|v| v["task_id"] == task_id))
        })
        .collect()
}

fn the_only_task(node: &Node) -> Option<String> {
    let state = node.state()?;
    let tasks = state["tasks"].as_object()?;
    (tasks.len() == 1).then(|| tasks.keys().next().cloned())?
}

fn no_task_left(node: &Node) -> Option<()> {
    node.state()?["tasks"].as_object()?.is_empty().then_some(())
}

#[test]
fn the_official_anthropic_client_and_raw_streams_get_messages_in_anthropics_shape() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    let instance = place(&nodes, 1);
    let node = &nodes[0];
    let api = node.api;

    if python::client_available("anthropic") {
        let base_url = format!("http://127.0.0.1:{}", node.api);
        python::run_client_script("anthropic_client.py", &base_url, SCRIPT_TIMEOUT, node);
    }

    // The stream's events, in Anthropic's order, each naming its type in its data.
    let began = Instant::now();
    let mut events = Events::open(api, &body(6, true));
    assert_eq!(events.status, 200);
    let all = events.rest();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names[..3],
        ["message_start", "content_block_start", "ping"],
        "{names:?}"
    );
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{names:?}"
    );
    assert!(
        names[3..names.len() - 3].iter().all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    for (name, data) in &all {
        assert_eq!(data["type"], name.as_str(), "{data}");
    }
    let start = &all[0].1["message"];
    assert!(start["id"].as_str().unwrap().starts_with("msg_"), "{start}");
    assert!(
        start["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "counted on this node: {start}"
    );
    let delta = &all[all.len() - 2].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens", "{delta}");
    assert_eq!(delta["usage"]["output_tokens"], 6, "{delta}");
    assert_eq!(
        delta["usage"]["input_tokens"], start["usage"]["input_tokens"],
        "{delta}"
    );
    eprintln!("raw stream: {} events in {:?}", all.len(), began.elapsed());

    // Errors in Anthropic's shape, before any generation.
    let (code, text) = http(
        api,
        "POST",
        "/v1/messages",
        Some(&json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}]})),
    )
    .unwrap();
    assert_eq!(code, 400, "{text}");
    let error = json_of(&text);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("max_tokens"),
        "{error}"
    );
    let (code, text) = http(
        api,
        "POST",
        "/v1/messages",
        Some(&json!({"model": "nope", "max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}]})),
    )
    .unwrap();
    assert_eq!(code, 404, "{text}");
    assert_eq!(json_of(&text)["error"]["type"], "not_found_error", "{text}");

    // The client goes away mid-stream: one TaskCancelled (the task's status Cancelled) and one TaskFinished (the
    // task deleted).
    let mut events = Events::open(api, &body(2000, true));
    events.read_deltas(5);
    let task = wait_for(Duration::from_secs(5), "the task in State", || the_only_task(node));
    drop(events);
    wait_for(Duration::from_secs(5), "the task gone", || no_task_left(node));
    std::thread::sleep(Duration::from_millis(300));
    let seen = task_events(node, &task);
    let cancelled = seen
        .iter()
        .filter(|e| e["TaskStatusUpdated"]["status"].to_string().contains("Cancelled"))
        .count();
    let deleted = seen.iter().filter(|e| e.get("TaskDeleted").is_some()).count();
    assert_eq!((cancelled, deleted), (1, 1), "{seen:?}");

    // The instance is deleted while a stream runs: `event: error` in Anthropic's shape, then the end.
    let mut events = Events::open(api, &body(2000, true));
    events.read_deltas(5);
    let id = instance["id"].as_str().unwrap();
    let (code, text) = http(api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{text}");
    let rest = events.rest();
    let (name, error) = rest.last().expect("an event after the deletion");
    assert_eq!(name, "error", "{rest:?}");
    assert_eq!(error["type"], "error", "{error}");
    // Whichever comes first: State's deletion (503, `overloaded_error`) or the runner's failure (500, `api_error`).
    assert!(
        ["overloaded_error", "api_error"].contains(&error["error"]["type"].as_str().unwrap()),
        "{error}"
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains("deleted"),
        "{error}"
    );
    assert!(
        rest.iter().all(|(n, _)| n != "message_stop"),
        "a failed stream does not stop as a message: {rest:?}"
    );
    wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));
}

/// A node that does not hold the model's file cannot count its tokens: `count_tokens` is a 503 that says so, and a
/// generation with no instance anywhere is Anthropic's 404; both in Anthropic's error shape.
#[test]
fn a_node_without_the_models_file_refuses_to_count_in_anthropics_shape() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    // No `--models-dir`: the node's own model directory is empty.
    let mut nodes = cluster(root.path(), 1);
    nodes[0].start();
    let node = &nodes[0];
    wait_for(Duration::from_secs(15), "the node ready", || {
        (node.status()?["ready"] == true).then_some(())
    });
    let request = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]});
    let (code, text) = http(node.api, "POST", "/v1/messages/count_tokens", Some(&request)).unwrap();
    assert_eq!(code, 503, "{text}");
    let error = json_of(&text);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "overloaded_error", "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("cannot count"),
        "{error}"
    );

    let mut generate = request.clone();
    generate["max_tokens"] = json!(4);
    let (code, text) = http(node.api, "POST", "/v1/messages", Some(&generate)).unwrap();
    assert_eq!(code, 404, "no instance: {text}");
    let error = json_of(&text);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "not_found_error", "{error}");
}
