//! The cluster benchmark (issues 4 and 5): real `shoal run` nodes on loopback, the test model placed on 1, 2 and 3
//! of them, measured through the OpenAI API with streaming requests, side by side in one run.
//!
//! `cargo bench -p shoal --bench cluster` prints one table: per pipeline size, the time from `POST /place_instance`
//! to every runner `Ready`, time to first token and decode tokens/s as the client sees them (p50 of `REPS` greedy
//! requests of `DECODE_TOKENS` tokens), and the ratio to one node. A last row runs the same request on the engine
//! alone (one runner process driven directly, no cluster, no HTTP) for the control plane's added time to first token;
//! its requests alternate with the 1-node row's, and the line under the table gives the 1-node decode rate against
//! the engine alone's pair by pair (issue 17's "≥ 0.95×").
//! `SHOAL_BENCH_THREADS` sets the compute threads per runner (default: the number of CPUs).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, SamplingParams, Tokenizer};
use shoal_runner::LocalPipeline;
use support::*;

const REPS: usize = 5;
const DECODE_TOKENS: u32 = 128;
const PROMPT: &str = "Count from 1 to 500, one number per line.";

struct Row {
    nodes: usize,
    ready: Duration,
    ttft: Duration,
    decode: f64,
    /// Measured by the API node itself (its histograms): registration → first chunk, and chunks per second.
    server_ttft: f64,
    server_decode: f64,
}

/// (sum, count) of a histogram in a node's `/metrics`.
fn histogram(node: &Node, name: &str) -> (f64, f64) {
    let (_, text) = node.get("/metrics").unwrap();
    let value = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_{suffix} ")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (value("sum"), value("count"))
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One streaming request: (time to first content, decode tokens/s from the first to the last content delta).
fn stream_once(port: u16) -> (Duration, f64, usize) {
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": DECODE_TOKENS,
        "temperature": 0,
        "stream": true,
    });
    let sent = Instant::now();
    let mut sse = SseClient::open(port, &body);
    assert_eq!(sse.status, 200);
    let mut first = None;
    let mut last = sent;
    let mut deltas = 0usize;
    while let Some(data) = sse.next_data() {
        if data == "[DONE]" {
            break;
        }
        let event = json_of(&data);
        assert!(event.get("error").is_none(), "{event}");
        if event["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|c| !c.is_empty())
        {
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            deltas += 1;
        }
    }
    let first = first.unwrap();
    let decode = (deltas.saturating_sub(1)) as f64 / (last - first).as_secs_f64().max(1e-9);
    (first - sent, decode, deltas)
}

fn main() {
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let threads: usize = std::env::var("SHOAL_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        node.extra = vec![
            "--models-dir".into(),
            models.display().to_string(),
            "--threads".into(),
            threads.to_string(),
        ];
        node.env.push(("SHOAL_LOG".into(), "warn".into()));
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        common::wait_for(Duration::from_secs(30), "agreement", || agreement(&all));
        common::wait_for(Duration::from_secs(30), "every fact", || same_state(&all, 3));
    }
    // The engine alone: one runner process, the same prompt and budget, no cluster and no HTTP. It runs beside the
    // nodes, and on the 1-node row its requests alternate with the cluster's, pair by pair: this machine's speed
    // drifts by a third within a minute, so only paired ratios compare the two.
    let model = common::model_path();
    let tokenizer = Tokenizer::from_gguf_path(&model).unwrap();
    let text = ChatTemplate::from_tokenizer(&tokenizer)
        .unwrap()
        .render(&[ChatMessage::new("user", PROMPT)], true)
        .unwrap();
    let prompt = tokenizer.encode(&text).unwrap();
    let mut pipeline = LocalPipeline::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_shoal")),
        &model,
        &[0, 30],
        threads,
        8,
    )
    .unwrap();
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: DECODE_TOKENS as usize,
        stop: Vec::new(),
        ..Default::default()
    };
    pipeline.generate(&prompt, &params, &mut |_| {}).unwrap();
    let mut alone = Vec::new();
    let mut paired = Vec::new();
    let api = nodes[0].api;
    let mut rows = Vec::new();
    for k in 1..=3usize {
        let placed_at = Instant::now();
        let (code, body) = http(
            api,
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": k})),
        )
        .unwrap();
        assert_eq!(code, 201, "{body}");
        let instance = json_of(&body)["instance_id"].as_str().unwrap().to_owned();
        common::wait_for(Duration::from_secs(60), "runners Ready", || {
            let statuses = runner_statuses(&nodes[0].state()?);
            (statuses.len() == k && statuses.iter().all(|(_, s)| s == "Ready")).then_some(())
        });
        let ready = placed_at.elapsed();
        stream_once(api); // warm-up
        let ttft_before = histogram(&nodes[0], "shoal_time_to_first_token_seconds");
        let itl_before = histogram(&nodes[0], "shoal_inter_token_seconds");
        let mut runs: Vec<(Duration, f64, usize)> = Vec::new();
        for _ in 0..REPS {
            let before = histogram(&nodes[0], "shoal_inter_token_seconds");
            runs.push(stream_once(api));
            if k == 1 {
                let after = histogram(&nodes[0], "shoal_inter_token_seconds");
                let cluster = (after.1 - before.1) / (after.0 - before.0).max(1e-9);
                let engine = pipeline.generate(&prompt, &params, &mut |_| {}).unwrap();
                paired.push(cluster / engine.decode_tok_per_s());
                alone.push(engine);
            }
        }
        let ttft_after = histogram(&nodes[0], "shoal_time_to_first_token_seconds");
        let itl_after = histogram(&nodes[0], "shoal_inter_token_seconds");
        for (_, _, n) in &runs {
            assert!(*n > 16, "a reply long enough to time ({n} deltas)");
        }
        rows.push(Row {
            nodes: k,
            ready,
            ttft: median(runs.iter().map(|r| r.0).collect()),
            decode: median(runs.iter().map(|r| r.1).collect()),
            server_ttft: (ttft_after.0 - ttft_before.0) / (ttft_after.1 - ttft_before.1).max(1.0),
            server_decode: (itl_after.1 - itl_before.1) / (itl_after.0 - itl_before.0).max(1e-9),
        });
        let (code, body) = http(api, "DELETE", &format!("/instance/{instance}"), None).unwrap();
        assert_eq!(code, 200, "{body}");
        common::wait_for(Duration::from_secs(30), "runners gone", || {
            runner_statuses(&nodes[0].state()?).is_empty().then_some(())
        });
    }
    let alone_ttft = median(alone.iter().map(|g| g.time_to_first_token).collect());
    let alone_ttft_mean = alone.iter().map(|g| g.time_to_first_token.as_secs_f64()).sum::<f64>() / alone.len() as f64;
    let alone_decode = median(alone.iter().map(|g| g.decode_tok_per_s()).collect());
    let paired_min = paired.iter().copied().fold(f64::INFINITY, f64::min);
    let paired_max = paired.iter().copied().fold(0.0, f64::max);
    let paired = median(paired);
    drop(pipeline);
    drop(nodes);

    let one = rows[0].server_decode;
    println!(
        "\n| pipeline | place → Ready | client: first text p50 | client: text deltas/s p50 | API node: TTFT mean | API node: tok/s | vs 1 node |\n|---|---|---|---|---|---|---|"
    );
    for r in &rows {
        println!(
            "| {} node{} | {:.0} ms | {:.1} ms | {:.1} | {:.1} ms | {:.1} | {:.2}× |",
            r.nodes,
            if r.nodes == 1 { "" } else { "s" },
            r.ready.as_secs_f64() * 1e3,
            r.ttft.as_secs_f64() * 1e3,
            r.decode,
            r.server_ttft * 1e3,
            r.server_decode,
            r.server_decode / one
        );
    }
    println!(
        "| engine alone (1 runner, no cluster) | – | – | – | {:.1} ms (p50 {:.1} ms) | {:.1} | {:.2}× |",
        alone_ttft_mean * 1e3,
        alone_ttft.as_secs_f64() * 1e3,
        alone_decode,
        alone_decode / one
    );
    println!(
        "\n1 node against the engine alone, requests alternated pair by pair: decode {paired:.2}× (median; {paired_min:.2}–{paired_max:.2}×)"
    );
    println!(
        "control plane's added time to first token (1 node, API node's mean vs the engine alone's mean): {:.1} ms",
        (rows[0].server_ttft - alone_ttft_mean) * 1e3
    );
    println!(
        "({REPS} requests of {DECODE_TOKENS} tokens per row, greedy, {threads} threads per runner; the client columns count \
         only deltas with text, the API node's count every token)"
    );
}
