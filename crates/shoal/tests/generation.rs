//! Generation through the cluster (SYSTEM.md §10–§11), with real `shoal run` nodes on loopback, real runner
//! processes, the real model and real HTTP: place, generate (streaming and not), delete; the 3-stage pipeline
//! against one node; a runner or a whole node SIGKILLed mid-generation; cancellation and client disconnect.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

/// A prompt the test model answers at length (greedy), so a generation is still running when a test interferes.
const LONG_PROMPT: &str = "Count from 1 to 500, one number per line.";

fn delete(nodes: &[Node], instance: &Value) {
    let id = instance["id"].as_str().unwrap();
    let (code, body) = http(nodes[0].api, "DELETE", &format!("/instance/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    for node in nodes {
        let pid = node.child.as_ref().unwrap().id();
        wait_for(Duration::from_secs(10), "no runner left", || {
            let state = node.state()?;
            (runner_statuses(&state).is_empty() && runner_children(pid).is_empty()).then_some(())
        });
    }
}

fn chat_body(prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// A non-streaming chat completion: (status, body).
fn chat(port: u16, body: &Value) -> (u16, Value) {
    let (code, text) = http(port, "POST", "/v1/chat/completions", Some(body)).unwrap();
    (code, json_of(&text))
}

fn metric(node: &Node, name: &str) -> Vec<(String, f64)> {
    let (_, text) = node.get("/metrics").unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn metric_sum(node: &Node, name: &str) -> f64 {
    metric(node, name).iter().map(|(_, v)| v).sum()
}

/// A task of State, if any.
fn tasks(node: &Node) -> usize {
    node.state()
        .map_or(usize::MAX, |s| s["tasks"].as_object().map_or(0, |t| t.len()))
}

#[test]
fn one_node_places_generates_streams_and_deletes() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    let api = nodes[0].api;

    // No instance yet: a known model is refused at once with 404, never left hanging.
    let asked = Instant::now();
    let (code, body) = chat(api, &chat_body("Hi", 4, false));
    assert_eq!(code, 404, "{body}");
    assert!(asked.elapsed() < Duration::from_secs(3), "{:?}", asked.elapsed());
    let (code, body) = chat(
        api,
        &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (404, Some("model_not_found")),
        "{body}"
    );

    let instance = place(&nodes, 1);

    // Non-streaming, greedy.
    let (code, whole) = chat(api, &chat_body("What is the capital of France?", 24, false));
    assert_eq!(code, 200, "{whole}");
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
    assert!(!text.is_empty());
    let usage = &whole["usage"];
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(completion > 0 && completion <= 24, "{usage}");
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    let finish = whole["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || (finish == "length" && completion == 24), "{whole}");

    // Streaming the same request gives the same text, a finish reason, the usage, then [DONE].
    let mut sse = SseClient::open(api, &chat_body("What is the capital of France?", 24, true));
    assert_eq!(sse.status, 200);
    let (streamed, events, error, done) = sse.finish();
    assert!(error.is_none() && done, "{events:?}");
    assert_eq!(streamed, text, "streaming and non-streaming greedy output agree");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(
        events
            .iter()
            .any(|e| e["choices"][0]["finish_reason"].as_str() == Some(finish))
    );
    assert_eq!(events.last().unwrap()["usage"]["completion_tokens"], completion);

    // A seed reproduces a sampled reply.
    let sampled = |seed: u64| {
        let mut body = chat_body("Tell me a short story.", 16, false);
        body["temperature"] = json!(0.9);
        body["seed"] = json!(seed);
        let (code, reply) = chat(api, &body);
        assert_eq!(code, 200, "{reply}");
        reply["choices"][0]["message"]["content"].as_str().unwrap().to_owned()
    };
    assert_eq!(sampled(7), sampled(7));

    // A stop string ends the reply before it.
    let mut body = chat_body(LONG_PROMPT, 64, false);
    body["stop"] = json!(["5"]);
    let (code, reply) = chat(api, &body);
    assert_eq!(code, 200, "{reply}");
    let content = reply["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!content.contains('5'), "{content}");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    // Every stream ended with TaskFinished: no task is left in State.
    wait_for(Duration::from_secs(5), "no task left", || {
        (tasks(&nodes[0]) == 0).then_some(())
    });
    assert_eq!(metric_sum(&nodes[0], "shoal_streams_open"), 0.0);

    delete(&nodes, &instance);
    let state = nodes[0].state().unwrap();
    assert!(state["instances"].as_object().unwrap().is_empty());
    assert!(state["runners"].as_object().unwrap().is_empty());
    let (code, body) = chat(api, &chat_body("Hi", 4, false));
    assert_eq!(code, 404, "no instance after deletion: {body}");
}

#[test]
fn a_three_stage_pipeline_matches_one_node_and_each_node_holds_only_its_layers() {
    let _serial = serial();
    let (_root, nodes) = start(3);
    let prompt = "Explain in two sentences why the sky is blue.";

    let one = place(&nodes, 1);
    let (code, reference) = chat(nodes[1].api, &chat_body(prompt, 40, false));
    assert_eq!(code, 200, "{reference}");
    let whole_bytes: f64 = nodes.iter().map(|n| metric_sum(n, "shoal_runner_weight_bytes")).sum();
    assert!(whole_bytes > 50e6, "the whole model's weights: {whole_bytes}");
    delete(&nodes, &one);

    let three = place(&nodes, 3);
    let shards = three["assignments"]["shards"].as_object().unwrap();
    assert_eq!(shards.len(), 3);
    // Ask a node that may hold any stage; the chunks come from the last rank, wherever it is.
    let (code, piped) = chat(nodes[2].api, &chat_body(prompt, 40, false));
    assert_eq!(code, 200, "{piped}");
    assert_eq!(
        piped["choices"][0]["message"]["content"], reference["choices"][0]["message"]["content"],
        "greedy output over three stages equals one node's"
    );
    assert_eq!(piped["usage"], reference["usage"]);

    // Each node's runner loaded only its layer range (plus the embedding or head its rank needs).
    let mut ranges = Vec::new();
    for node in &nodes {
        let reports = metric(node, "shoal_runner_weight_bytes");
        assert_eq!(reports.len(), 1, "one runner per node: {reports:?}");
        let (labels, bytes) = &reports[0];
        let layers = labels.split("layers=\"").nth(1).unwrap().split('"').next().unwrap();
        let (start, end) = layers.split_once('-').unwrap();
        let (start, end): (u32, u32) = (start.parse().unwrap(), end.parse().unwrap());
        assert!(end > start && end - start < 30, "{layers}");
        assert!(*bytes < whole_bytes * 0.75, "{layers}: {bytes} of {whole_bytes}");
        ranges.push((start, end, *bytes));
    }
    ranges.sort_by_key(|r| r.0);
    assert_eq!((ranges[0].0, ranges[2].1), (0, 30));
    assert!(ranges[0].1 == ranges[1].0 && ranges[1].1 == ranges[2].0, "{ranges:?}");
    // The middle stage has no embedding and no head: its bytes are its layers' share of the model, no more.
    let middle = ranges[1];
    assert!(
        middle.2 < whole_bytes * f64::from(middle.1 - middle.0) / 30.0,
        "{ranges:?}"
    );
    eprintln!("stage weights (start, end, bytes): {ranges:?}; one node: {whole_bytes}");
    // Each runner's resident memory is reported next to its weights (memory-mapped: its slice, plus KV and the
    // process's own code and tokenizer).
    for node in &nodes {
        let peak = metric_sum(node, "shoal_runner_peak_rss_bytes");
        let rss = metric_sum(node, "shoal_runner_rss_bytes");
        let weights = metric_sum(node, "shoal_runner_weight_bytes");
        assert!(peak >= rss && rss > 0.0, "rss {rss}, peak {peak}");
        eprintln!("runner: weights {weights}, rss {rss}, peak rss {peak}");
    }
    delete(&nodes, &three);
}

#[test]
fn a_runner_killed_mid_generation_fails_the_stream_within_a_second_and_serves_again() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);
    let pid = nodes[0].child.as_ref().unwrap().id();
    let runner = runner_children(pid)[0];

    let mut sse = SseClient::open(nodes[0].api, &chat_body(LONG_PROMPT, 2000, true));
    assert_eq!(sse.status, 200);
    sse.read_deltas(5);
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &runner.to_string()])
        .status()
        .unwrap();
    let (_, _, error, done) = sse.finish();
    let failed_after = killed.elapsed();
    let error = error.expect("an error object before the end");
    assert!(done, "the error is followed by [DONE]");
    assert_eq!(error["code"], "generation_failed", "{error}");
    eprintln!("runner SIGKILL → client error + [DONE]: {failed_after:?}");
    assert!(failed_after < Duration::from_secs(1), "{failed_after:?}");

    // Respawned; the instance serves again with no user action.
    wait_for(Duration::from_secs(30), "the runner respawned and Ready", || {
        let state = nodes[0].state()?;
        let statuses = runner_statuses(&state);
        (statuses.len() == 1 && statuses[0].1 == "Ready" && !runner_children(pid).contains(&runner)).then_some(())
    });
    let (code, reply) = chat(nodes[0].api, &chat_body("Hi", 8, false));
    assert_eq!(code, 200, "{reply}");
}

#[test]
fn a_node_killed_mid_generation_fails_the_stream_within_a_second_and_the_model_serves_again() {
    let _serial = serial();
    let (_root, mut nodes) = start(3);
    let agreed = Instant::now();
    let instance = place(&nodes, 2);
    let holders: Vec<String> = instance["assignments"]["node_runner"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let id_of = |n: &Node| n.status().unwrap()["node"].as_str().unwrap().to_owned();
    // The client talks to a node that survives; the victim holds a stage.
    let victim = nodes.iter().position(|n| holders.contains(&id_of(n))).unwrap();
    let victim_id = id_of(&nodes[victim]);
    let client = (victim + 1) % 3;
    // A new master times nodes out only after 2 s in office (§8).
    std::thread::sleep(Duration::from_millis(2_200).saturating_sub(agreed.elapsed()));

    let mut sse = SseClient::open(nodes[client].api, &chat_body(LONG_PROMPT, 2000, true));
    assert_eq!(sse.status, 200);
    sse.read_deltas(5);
    let killed = Instant::now();
    nodes[victim].kill9();
    let (_, _, error, done) = sse.finish();
    let failed_after = killed.elapsed();
    let error = error.expect("an error object before the end");
    assert!(done, "the error is followed by [DONE]");
    eprintln!(
        "node SIGKILL → client error {} + [DONE]: {failed_after:?}",
        error["code"]
    );
    assert!(failed_after < Duration::from_secs(1), "{failed_after:?}");

    // Re-placed on the survivors; a new request succeeds without any user action.
    let survivor = &nodes[client];
    wait_for(Duration::from_secs(60), "the model re-placed and Ready", || {
        let statuses = runner_statuses(&survivor.state()?);
        let moved = statuses.iter().all(|(node, s)| s == "Ready" && *node != victim_id);
        (statuses.len() == 2 && moved).then_some(())
    });
    eprintln!("node SIGKILL → re-placed runners Ready: {:?}", killed.elapsed());
    let (code, reply) = chat(survivor.api, &chat_body("Hi", 8, false));
    assert_eq!(code, 200, "{reply}");
    eprintln!("node SIGKILL → a new request answered: {:?}", killed.elapsed());
}

/// Waits until the node's runners produce no chunk for 300 ms (the step in flight at the cancellation may still land
/// after State dropped the task); returns the count then. How many landed late is `chunks_after_cancel`.
fn runner_stopped(node: &Node) -> f64 {
    wait_for(Duration::from_secs(5), "the runner stopped", || {
        let before = metric_sum(node, "shoal_worker_chunks_total");
        std::thread::sleep(Duration::from_millis(300));
        (metric_sum(node, "shoal_worker_chunks_total") == before).then_some(before)
    })
}

#[test]
fn cancel_and_client_disconnect_stop_the_runner_within_one_decode_step() {
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);
    let api = nodes[0].api;
    let node = &nodes[0];

    // POST /v1/cancel/{id}: the client sees `cancelled`, the runner stops.
    let mut sse = SseClient::open(api, &chat_body(LONG_PROMPT, 2000, true));
    let id = sse.read_deltas(5);
    let (code, body) = http(api, "POST", &format!("/v1/cancel/{id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, _, error, done) = sse.finish();
    assert_eq!(error.expect("an error object")["code"], "cancelled");
    assert!(done);
    wait_for(Duration::from_secs(5), "the task gone", || {
        (tasks(node) == 0).then_some(())
    });
    let produced = runner_stopped(node);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric_sum(node, "shoal_worker_chunks_total"),
        produced,
        "no token once the runner stopped"
    );
    let late = metric_sum(node, "shoal_worker_chunks_after_cancel_total");
    eprintln!("tokens produced after the cancel reached State: {late}");
    assert!(late <= 1.0, "at most the decode step in flight: {late}");
    let (code, _) = http(api, "POST", &format!("/v1/cancel/{id}"), None).unwrap();
    assert_eq!(code, 404, "a finished command cannot be cancelled again");

    // The client goes away mid-stream: TaskCancelled and TaskFinished, and the runner stops the same way.
    let mut sse = SseClient::open(api, &chat_body(LONG_PROMPT, 2000, true));
    sse.read_deltas(5);
    drop(sse);
    wait_for(Duration::from_secs(5), "the task gone", || {
        (tasks(node) == 0).then_some(())
    });
    let produced = runner_stopped(node);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(metric_sum(node, "shoal_worker_chunks_total"), produced);
    let late = metric_sum(node, "shoal_worker_chunks_after_cancel_total");
    assert!(late <= 2.0, "at most one decode step per cancellation: {late}");
    let closes = metric(node, "shoal_stream_closes_total");
    assert!(
        closes.iter().any(|(k, v)| k.contains("client_gone") && *v == 1.0),
        "{closes:?}"
    );
    assert_eq!(metric_sum(node, "shoal_streams_open"), 0.0);
}
