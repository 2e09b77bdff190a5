//! The stream registry end to end (SYSTEM.md §11.3's list), on real nodes: a stream closes because State says its
//! task or instance is gone, whichever way the node learned it (an applied event, or only a snapshot install), and
//! survives a master change that keeps State; every stream ends with its terminator and one `TaskFinished`.
//! The pure decisions behind each case are unit-tested in `shoal-core/tests/registry.rs`.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

const LONG_PROMPT: &str = "Count from 1 to 500, one number per line.";

fn models_dir() -> String {
    common::model_path().parent().unwrap().display().to_string()
}

fn boot(nodes: &mut [Node]) {
    for node in nodes.iter_mut() {
        node.extra.extend(["--models-dir".to_string(), models_dir()]);
        node.start();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(15), "agreement", || agreement(&all));
    wait_for(Duration::from_secs(15), "every fact", || same_state(&all, all.len()));
}

fn node_id(node: &Node) -> String {
    node.status().unwrap()["node"].as_str().unwrap().to_owned()
}

/// Places the model (on `on` when given) and waits for its runners to be Ready on every node.
fn place_on(nodes: &[Node], on: Option<&str>) -> Value {
    let mut body = json!({"model_id": "smollm2-135m", "min_nodes": 1});
    if let Some(node) = on {
        body["nodes"] = json!([node]);
    }
    let (code, text) = http(nodes[0].api, "POST", "/place_instance", Some(&body)).unwrap();
    assert_eq!(code, 201, "{text}");
    wait_for(Duration::from_secs(60), "the runner Ready everywhere", || {
        nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(|n| {
                n.state().is_some_and(|s| {
                    let st = runner_statuses(&s);
                    st.len() == 1 && st[0].1 == "Ready"
                })
            })
            .then_some(())
    });
    json_of(&text)["instance"].clone()
}

fn stream_body(max_tokens: u32) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": LONG_PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// How many events of `kind` a node's replica log holds.
fn count_events(node: &Node, kind: &str) -> usize {
    let (_, body) = node.get("/events?limit=10000").unwrap();
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    events.iter().filter(|e| e["event"].get(kind).is_some()).count()
}

fn no_task_left(node: &Node) -> Option<()> {
    node.state()?["tasks"].as_object()?.is_empty().then_some(())
}

/// Cases 3 and 13: a stream that ends normally gets its terminator and one `TaskFinished`; a stream whose instance
/// is deleted mid-generation gets an error object, then `[DONE]`, and one `TaskFinished` too.
#[test]
fn instance_deleted_mid_stream_closes_it_with_an_error_and_done_and_every_stream_finishes_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 1);
    boot(&mut nodes);
    let node = &nodes[0];
    let instance = place_on(&nodes, None);

    // Case 13: a normal end.
    let mut sse = SseClient::open(node.api, &stream_body(12));
    let (_, events, error, done) = sse.finish();
    assert!(error.is_none() && done, "{events:?}");
    wait_for(Duration::from_secs(5), "the finished task deleted", || {
        no_task_left(node)
    });

    // Case 3: the instance goes while the stream runs.
    let mut sse = SseClient::open(node.api, &stream_body(2000));
    sse.read_deltas(5);
    let id = instance["id"].as_str().unwrap();
    let deleted = Instant::now();
    let (code, body) = http(node.api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, _, error, done) = sse.finish();
    let error = error.expect("an error object");
    assert!(done, "[DONE] after the error");
    eprintln!(
        "instance deleted → client error {}: {:?}",
        error["code"],
        deleted.elapsed()
    );
    assert!(error["message"].as_str().unwrap().contains("deleted"), "{error}");
    wait_for(Duration::from_secs(5), "the task deleted", || no_task_left(node));
    // TaskFinished exactly once per stream: each task was deleted once (a repeat would be a no-op, but it would
    // show as a second command; the master's dedup keeps the log to one TaskDeleted per task either way).
    assert_eq!(count_events(node, "TaskCreated"), 2);
    assert_eq!(count_events(node, "TaskDeleted"), 2);
    let closes = {
        let (_, text) = node.get("/metrics").unwrap();
        text
    };
    assert!(closes.contains("shoal_streams_finished_total 1"), "{closes}");
    assert!(closes.contains("shoal_streams_open 0"), "{closes}");
}

/// Case 9: the master is SIGKILLed mid-stream; it holds no stage and is not the API node. The new master keeps
/// State, so the stream goes on with no gap, ends normally, and its task is finished once.
#[test]
fn a_master_killed_mid_stream_on_a_node_without_a_stage_does_not_disturb_the_stream() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    boot(&mut nodes);
    let (_, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all))
    };
    let holder = (master + 1) % 3;
    let client = (master + 2) % 3;
    place_on(&nodes, Some(&node_id(&nodes[holder])));

    let mut sse = SseClient::open(nodes[client].api, &stream_body(400));
    sse.read_deltas(5);
    let killed = Instant::now();
    nodes[master].kill9();
    let (content, events, error, done) = sse.finish();
    assert!(error.is_none(), "the stream survives the master: {error:?}");
    assert!(done);
    let usage = &events.last().unwrap()["usage"];
    eprintln!(
        "master SIGKILLed mid-stream: the stream went on for {:?} more and ended normally ({} tokens)",
        killed.elapsed(),
        usage["completion_tokens"]
    );
    assert!(
        killed.elapsed() > Duration::from_millis(600),
        "the stream outlived the election"
    );
    assert!(!content.is_empty());
    let survivor = &nodes[client];
    let new_master = wait_for(Duration::from_secs(10), "a new master", || {
        let status = survivor.status()?;
        (status["session"] != Value::Null && status["ready"] == true).then_some(status)
    });
    eprintln!("new session {}", new_master["session"]);
    wait_for(Duration::from_secs(10), "the task finished", || no_task_left(survivor));
    assert_eq!(count_events(survivor, "TaskCreated"), 1);
    assert_eq!(count_events(survivor, "TaskDeleted"), 1, "one TaskFinished");
}

/// Case 4: the API node misses the `InstanceDeleted` event (its incoming event stream is blacked out, a named fault)
/// and the master has pruned its log, so the node learns of the deletion only by installing a snapshot. The stream
/// still closes with an error object and `[DONE]`.
#[test]
fn an_instance_deletion_seen_only_through_a_snapshot_install_closes_the_stream() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let blackout = root.path().join("blackout");
    let mut nodes = cluster(root.path(), 2);
    for node in &mut nodes {
        node.env.push(("SHOAL_TEST_RETAIN_EVENTS".into(), "0".into()));
        node.env.push(("SHOAL_TEST_CHECKPOINT_EVENTS".into(), "1".into()));
    }
    // Node 0 is the master and holds the model; node 1 serves the client and holds nothing.
    nodes[0].extra.push("--force-master".into());
    nodes[1].extra.push("--no-worker".into());
    nodes[1]
        .env
        .push(("SHOAL_FAULT_DOWN_BLACKOUT_FILE".into(), blackout.display().to_string()));
    boot(&mut nodes);
    wait_for(Duration::from_secs(10), "node 0 master", || {
        (nodes[0].status()?["role"] == "master").then_some(())
    });
    let instance = place_on(&nodes, None);

    let mut sse = SseClient::open(nodes[1].api, &stream_body(2000));
    sse.read_deltas(5);
    std::fs::write(&blackout, b"").unwrap();
    let id = instance["id"].as_str().unwrap();
    let (code, body) = http(nodes[0].api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    // The master checkpoints (every event here) and prunes its log within its 1 s checkpoint check.
    std::thread::sleep(Duration::from_millis(2_500));
    assert!(
        nodes[1].state().unwrap()["instances"][id].is_object(),
        "the API node has not seen the deletion"
    );
    let resumed = Instant::now();
    std::fs::remove_file(&blackout).unwrap();
    let (_, _, error, done) = sse.finish();
    let error = error.expect("an error object");
    assert!(done, "[DONE] after the error");
    eprintln!(
        "deletion learned by snapshot → client error {}: {:?} after the blackout",
        error["code"],
        resumed.elapsed()
    );
    assert!(nodes[1].logged("installed a snapshot"), "{}", nodes[1].log_text());
    assert_eq!(
        count_events(&nodes[1], "InstanceDeleted"),
        0,
        "the node never applied InstanceDeleted: it learned it from the snapshot"
    );
}

/// Case 14: a lost chunk (a named fault drops seq 3) is a gap; the client gets `stream_incomplete` and `[DONE]`,
/// never silently garbled text.
#[test]
fn a_lost_chunk_closes_the_stream_as_incomplete() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 1);
    nodes[0].env.push(("SHOAL_FAULT_DROP_CHUNK_SEQ".into(), "3".into()));
    boot(&mut nodes);
    place_on(&nodes, None);
    let mut sse = SseClient::open(nodes[0].api, &stream_body(40));
    let (content, _, error, done) = sse.finish();
    let error = error.expect("an error object");
    assert_eq!(error["code"], "stream_incomplete", "{error}");
    assert!(done);
    // What the client got before the gap is a clean prefix: seq 0..3 at most.
    assert!(content.chars().count() < 40, "{content}");
    let (code, body) = http(
        nodes[0].api,
        "POST",
        "/v1/chat/completions",
        Some(&json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})),
    )
    .unwrap();
    assert_eq!(code, 502, "non-streaming: a real status: {body}");
    assert_eq!(json_of(&body)["error"]["code"], "stream_incomplete");
}

/// Case 7: a command the master never takes (the master is frozen with SIGSTOP, so its session lives on but nothing
/// is indexed) is closed after the TTL: non-streaming with 504, streaming (headers already sent after 1 s) with an
/// in-band `not_accepted` error and `[DONE]`.
#[test]
fn a_request_never_taken_by_the_master_fails_after_the_ttl() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2);
    for node in &mut nodes {
        node.extra.extend(["--stream-ttl".to_string(), "2".to_string()]);
    }
    boot(&mut nodes);
    let (_, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all))
    };
    let api = nodes[1 - master].api;
    let pid = nodes[master].child.as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill").args([sig, &pid]).status().unwrap();
    };
    signal("-STOP");
    // Both at once, well inside the 3 s lease: after it the follower would elect itself and answer.
    let asked = Instant::now();
    let whole = std::thread::spawn(move || {
        let body = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        let answer = http(api, "POST", "/v1/chat/completions", Some(&body)).unwrap();
        (answer, asked.elapsed())
    });
    let mut sse = SseClient::open(api, &stream_body(4));
    let status = sse.status;
    let (_, _, error, done) = sse.finish();
    let ((code, text), waited) = whole.join().unwrap();
    signal("-CONT");
    assert_eq!(code, 504, "{text}");
    assert_eq!(json_of(&text)["error"]["code"], "not_accepted");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(status, 200, "headers go out after 1 s");
    assert_eq!(error.expect("an in-band error")["code"], "not_accepted");
    assert!(done);
}
