//! OpenAI Responses and Completions over raw HTTP on a real node with the real model (issue 12), for what the
//! official client cannot show: the instance deleted mid-stream ends a Responses stream with `response.failed` and a
//! Completions stream with an error chunk then `data: [DONE]` (SYSTEM.md §11.3); a normal end gets each dialect's
//! terminator; a client that disconnects mid-stream cancels its task (`TaskCancelled`, then `TaskFinished`, once
//! each) in both dialects. The official client's checks are in `openai_client.py`.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

const LONG_PROMPT: &str = "Count from 1 to 500, one number per line.";
/// A deleted instance closes its stream as `instance_unavailable` when State's deletion is seen first, or as
/// `generation_failed` (the task failed: "instance … deleted") when the runner's failure is; either way the message
/// says why.
const DELETED_CODES: [&str; 2] = ["instance_unavailable", "generation_failed"];

/// A streaming request read event by event (HTTP/1.0, so the body ends when the connection closes).
struct Sse {
    reader: BufReader<TcpStream>,
}

impl Sse {
    fn open(port: u16, path: &str, body: &Value) -> Sse {
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
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event as (its `event:` name, if any; its `data:`), or None at the end of the body.
    fn next(&mut self) -> Option<(Option<String>, String)> {
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
                return Some((name, data.to_owned()));
            }
        }
    }

    /// Every event until the end.
    fn rest(&mut self) -> Vec<(Option<String>, String)> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

fn responses_body(max_output_tokens: u32) -> Value {
    json!({
        "model": "smollm2-135m",
        "input": LONG_PROMPT,
        "max_output_tokens": max_output_tokens,
        "temperature": 0,
        "stream": true,
    })
}

fn completions_body(max_tokens: u32) -> Value {
    json!({
        "model": "smollm2-135m",
        "prompt": LONG_PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// Reads a Responses stream until `n` text deltas came; returns the events read, checked as they come.
fn responses_deltas(sse: &mut Sse, n: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut deltas = 0;
    while deltas < n {
        let (name, data) = sse.next().expect("the stream ended early");
        let event = json_of(&data);
        assert_eq!(name.as_deref(), event["type"].as_str(), "{data}");
        if event["type"] == "response.output_text.delta" {
            deltas += 1;
        }
        events.push(event);
    }
    events
}

/// Checks a whole Responses stream's sequence numbers (0, 1, 2, ...) and event names; returns the events' types.
fn responses_types(events: &[Value]) -> Vec<String> {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event["sequence_number"], i, "{event}");
    }
    events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

/// Reads a Completions stream until `n` text chunks came.
fn completions_texts(sse: &mut Sse, n: usize) -> String {
    let mut text = String::new();
    let mut seen = 0;
    while seen < n {
        let (_, data) = sse.next().expect("the stream ended early");
        let piece = json_of(&data)["choices"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !piece.is_empty() {
            seen += 1;
        }
        text.push_str(&piece);
    }
    text
}

/// The events of a kind in the node's replica log.
fn events_of(node: &Node, kind: &str) -> Vec<Value> {
    let (_, body) = node.get("/events?limit=10000").unwrap();
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    events
        .into_iter()
        .filter_map(|e| e["event"].get(kind).cloned())
        .collect()
}

fn no_task_left(node: &Node) -> Option<()> {
    node.state()?["tasks"].as_object()?.is_empty().then_some(())
}

fn metric(node: &Node, line_start: &str) -> f64 {
    let (_, text) = node.get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit_once(' '))
        .map_or(0.0, |(_, v)| v.parse().unwrap())
}

fn delete_instance(node: &Node, instance: &Value) {
    let id = instance["id"].as_str().unwrap();
    let (code, body) = http(node.api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
}

#[test]
fn the_instance_deleted_mid_stream_ends_each_dialect_with_its_error_and_terminator() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    let node = &nodes[0];
    let instance = place(&nodes, 1);

    // Responses, a normal end: the last event is `response.incomplete` (max_output_tokens), nothing after it.
    let mut sse = Sse::open(node.api, "/v1/responses", &responses_body(6));
    let events: Vec<Value> = sse.rest().into_iter().map(|(_, data)| json_of(&data)).collect();
    let types = responses_types(&events);
    assert_eq!(types.first().map(String::as_str), Some("response.created"), "{types:?}");
    assert_eq!(
        types.last().map(String::as_str),
        Some("response.incomplete"),
        "{types:?}"
    );
    assert_eq!(events.last().unwrap()["response"]["usage"]["output_tokens"], 6);

    // Completions, a normal end: the finish chunk, the usage chunk, `[DONE]`.
    let mut sse = Sse::open(node.api, "/v1/completions", &completions_body(6));
    let data: Vec<String> = sse.rest().into_iter().map(|(_, data)| data).collect();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let usage = json_of(&data[data.len() - 2]);
    assert_eq!(usage["usage"]["completion_tokens"], 6, "{usage}");
    assert_eq!(json_of(&data[data.len() - 3])["choices"][0]["finish_reason"], "length");
    wait_for(Duration::from_secs(5), "the finished tasks deleted", || {
        no_task_left(node)
    });

    // Responses: the instance goes while the stream runs → `response.failed`, then the stream ends.
    let mut sse = Sse::open(node.api, "/v1/responses", &responses_body(2000));
    let mut events = responses_deltas(&mut sse, 5);
    let deleted = Instant::now();
    delete_instance(node, &instance);
    let rest = sse.rest();
    eprintln!(
        "responses: instance deleted → response.failed after {:?}",
        deleted.elapsed()
    );
    for (name, data) in rest {
        let event = json_of(&data);
        assert_eq!(name.as_deref(), event["type"].as_str(), "{data}");
        events.push(event);
    }
    let types = responses_types(&events);
    assert_eq!(types.last().map(String::as_str), Some("response.failed"), "{types:?}");
    assert!(!types.iter().any(|t| t == "response.completed"), "{types:?}");
    let failed = &events.last().unwrap()["response"];
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        DELETED_CODES.contains(&failed["error"]["code"].as_str().unwrap()),
        "{failed}"
    );
    assert!(
        failed["error"]["message"].as_str().unwrap().contains("deleted"),
        "{failed}"
    );
    assert!(
        failed["output"][0]["content"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "the text so far: {failed}"
    );
    wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));

    // Completions: the same → an error chunk, then `[DONE]`, then the stream ends.
    let instance = place(&nodes, 1);
    let mut sse = Sse::open(node.api, "/v1/completions", &completions_body(2000));
    completions_texts(&mut sse, 5);
    let deleted = Instant::now();
    delete_instance(node, &instance);
    let data: Vec<String> = sse.rest().into_iter().map(|(_, data)| data).collect();
    eprintln!(
        "completions: instance deleted → error + [DONE] after {:?}",
        deleted.elapsed()
    );
    assert!(data.len() >= 2, "{data:?}");
    assert_eq!(data[data.len() - 1], "[DONE]", "{data:?}");
    let error = json_of(&data[data.len() - 2]);
    assert!(
        DELETED_CODES.contains(&error["error"]["code"].as_str().unwrap()),
        "{error}"
    );
    assert!(
        error["error"]["message"].as_str().unwrap().contains("deleted"),
        "{error}"
    );
    wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));

    // Every stream, ended or failed, finished its task once.
    assert_eq!(events_of(node, "TaskCreated").len(), 4);
    assert_eq!(events_of(node, "TaskDeleted").len(), 4);
    assert_eq!(metric(node, "shoal_streams_open "), 0.0);
}

#[test]
fn a_client_that_disconnects_cancels_its_task_in_each_dialect() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    let node = &nodes[0];
    place(&nodes, 1);

    for (k, path) in [(1, "/v1/responses"), (2, "/v1/completions")] {
        let mut sse = if path == "/v1/responses" {
            let mut sse = Sse::open(node.api, path, &responses_body(2000));
            responses_deltas(&mut sse, 5);
            sse
        } else {
            let mut sse = Sse::open(node.api, path, &completions_body(2000));
            completions_texts(&mut sse, 5);
            sse
        };
        assert!(sse.next().is_some(), "still streaming");
        let gone = Instant::now();
        drop(sse);
        wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));
        eprintln!("{path}: client gone → task deleted after {:?}", gone.elapsed());
        let cancelled = events_of(node, "TaskStatusUpdated")
            .into_iter()
            .filter(|e| e["status"] == "Cancelled")
            .count();
        assert_eq!(cancelled, k, "{path}: one TaskCancelled per stream");
        assert_eq!(events_of(node, "TaskCreated").len(), k, "{path}");
        assert_eq!(
            events_of(node, "TaskDeleted").len(),
            k,
            "{path}: one TaskFinished per stream"
        );
        let closes = metric(node, "shoal_stream_closes_total{reason=\"client_gone\"}");
        assert_eq!(closes, k as f64, "{path}: closed once as client_gone");
    }
    assert_eq!(metric(node, "shoal_streams_open "), 0.0);
}
