//! A long prompt never stalls the streams already running (issue 17): while a ~7,000-token prompt is prefilled, a
//! stream that was already decoding keeps receiving tokens, because the runner interleaves small prefill chunks with
//! its decode steps. Real nodes, the real model, real HTTP streams.
//!
//! `prefill_leaves_a_running_stream_flowing` asserts a generous bound that holds on a loaded 2-core CI machine;
//! `measure_gaps_during_long_prefill` (ignored: it prefills the whole prompt on 1 node and on a 2-stage pipeline,
//! minutes on 2 cores) prints the p50/p99/max gaps for BENCHMARKS.md:
//! `cargo test -p shoal --test prefill_fairness -- --ignored --nocapture --test-threads 1`.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// A prompt that makes the running stream write for a long time.
const RUNNING_PROMPT: &str = "Count from 1 to 500, one number per line.";
/// Tokens the running stream may write: far more than it writes during one long prefill.
const RUNNING_MAX_TOKENS: u32 = 3_000;
/// One sentence of the long prompt (about ten tokens); repeated to reach [`LONG_PROMPT_SENTENCES`].
const SENTENCE: &str = "The quick brown fox jumps over the lazy dog near the river bank. ";
/// About 7,000 tokens of prompt, under the test model's 8,192-token context.
const LONG_PROMPT_SENTENCES: usize = 500;
/// The largest gap the CI test tolerates: generous, so it holds on a loaded 2-core machine (before interleaving,
/// a 512-token chunk of a long prompt held the running stream for 4–10 s there).
const MAX_GAP_CI: Duration = Duration::from_secs(2);
/// How long the CI test watches the running stream while the long prompt prefills.
const CI_WINDOW: Duration = Duration::from_secs(12);
/// Whole prefills of the measuring test end within this.
const MEASURE_WITHIN: Duration = Duration::from_secs(900);

fn long_prompt() -> String {
    SENTENCE.repeat(LONG_PROMPT_SENTENCES)
}

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// What the running stream's reader reports.
enum Running {
    /// A content delta arrived.
    Token(Instant),
    /// The model ended its answer; the reader opened the same request again (the gap across is not measured).
    Restarted,
}

/// Opens the running stream and a reader thread that sends the arrival time of every content delta, opening the
/// request again whenever the model ends its answer, so a stream is always running.
fn running_stream(port: u16) -> mpsc::Receiver<Running> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            let mut sse = SseClient::open(port, &chat(RUNNING_PROMPT, RUNNING_MAX_TOKENS));
            assert_eq!(sse.status, 200);
            while let Some(data) = sse.next_data() {
                if data == "[DONE]" {
                    break;
                }
                let event: Value = serde_json::from_str(&data).unwrap();
                assert!(event.get("error").is_none(), "the running stream failed: {event}");
                let content = event["choices"][0]["delta"]["content"].as_str();
                if content.is_some_and(|c| !c.is_empty()) && tx.send(Running::Token(Instant::now())).is_err() {
                    return;
                }
            }
            if tx.send(Running::Restarted).is_err() {
                return;
            }
        }
    });
    rx
}

/// Sends the long prompt (one token to generate) from a thread; the receiver gets the prompt's token count when
/// its reply ended, i.e. when its prefill ended, or the error the stream carried.
fn long_request(port: u16) -> mpsc::Receiver<Result<u64, String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sse = SseClient::open(port, &chat(&long_prompt(), 1));
        let status = sse.status;
        let (_, events, error, done) = sse.finish();
        let usage = events.iter().find_map(|e| e["usage"]["prompt_tokens"].as_u64());
        let outcome = match (status, error, usage) {
            (200, None, Some(tokens)) if done => Ok(tokens),
            (status, error, _) => Err(format!("status {status}, error {error:?}, done {done}")),
        };
        let _ = tx.send(outcome);
    });
    rx
}

/// What the running stream saw while the long prompt prefilled.
struct Watch {
    /// Gaps between consecutive tokens of the running stream (the first measured from when the prompt was sent).
    gaps: Vec<Duration>,
    /// The long prompt's tokens and prefill time, when it finished within the window.
    prefilled: Option<(u64, Duration)>,
    /// Times the running request ended its answer and was sent again.
    restarts: usize,
}

/// Starts the running stream, waits for it to flow, sends the long prompt and records the running stream's gaps
/// until the prompt's first token or `window`.
fn watch(port: u16, window: Duration) -> Watch {
    let running = running_stream(port);
    // Past the running stream's own prefill: it is decoding.
    let mut flowing = 0;
    while flowing < 5 {
        if let Running::Token(_) = running.recv_timeout(Duration::from_secs(60)).unwrap() {
            flowing += 1;
        }
    }
    while running.try_recv().is_ok() {}
    let sent = Instant::now();
    let long = long_request(port);
    // None right after a restart: the next token starts a new series of gaps.
    let mut last = Some(sent);
    let mut gaps = Vec::new();
    let mut restarts = 0;
    let mut prefilled = None;
    while sent.elapsed() < window {
        if let Ok(outcome) = long.try_recv() {
            let tokens = outcome.unwrap_or_else(|e| panic!("the long prompt failed: {e}"));
            prefilled = Some((tokens, sent.elapsed()));
            break;
        }
        match running.recv_timeout(Duration::from_millis(20)) {
            Ok(Running::Token(at)) => {
                if let Some(last) = last {
                    gaps.push(at - last);
                }
                last = Some(at);
            }
            Ok(Running::Restarted) => {
                restarts += 1;
                last = None;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the running stream's reader ended"),
        }
    }
    // The gap still open when the window closed counts too.
    gaps.extend(last.map(|l| l.elapsed()));
    Watch {
        gaps,
        prefilled,
        restarts,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(label: &str, w: &Watch) -> String {
    let mut g = w.gaps.clone();
    g.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let prefill = w.prefilled.map_or("not finished".to_string(), |(t, d)| {
        format!("{t} tokens in {:.1} s", d.as_secs_f64())
    });
    format!(
        "{label}: running stream gaps during a long prefill: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms \
         (restarts {}); long prompt: {prefill}",
        g.len(),
        ms(percentile(&g, 0.5)),
        ms(percentile(&g, 0.99)),
        ms(percentile(&g, 1.0)),
        w.restarts,
    )
}

#[test]
fn prefill_leaves_a_running_stream_flowing() {
    let _serial = serial();
    let (_dir, nodes) = start(1);
    place(&nodes, 1);
    let w = watch(nodes[0].api, CI_WINDOW);
    let report = summary("1 node", &w);
    eprintln!("{report}");
    let max = w.gaps.iter().max().copied().unwrap_or_default();
    assert!(max <= MAX_GAP_CI, "the running stream stalled: {report}");
    assert!(
        w.gaps.len() >= 5,
        "the running stream kept flowing while the prompt prefilled: {report}"
    );
}

fn measure(stages: usize) {
    let _serial = serial();
    let (_dir, nodes) = start(stages);
    place(&nodes, stages);
    // `SHOAL_FAIRNESS_WINDOW_S` watches only the first seconds of the prefill (a quick look at an old build).
    let window = std::env::var("SHOAL_FAIRNESS_WINDOW_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(MEASURE_WITHIN, Duration::from_secs);
    let w = watch(nodes[0].api, window);
    println!("{}", summary(&format!("{stages} stage(s)"), &w));
}

#[test]
#[ignore = "measurement: prefills ~7,000 tokens (minutes on 2 cores)"]
fn measure_gaps_during_long_prefill_one_node() {
    measure(1);
}

#[test]
#[ignore = "measurement: prefills ~7,000 tokens over a 2-stage pipeline (minutes on 2 cores)"]
fn measure_gaps_during_long_prefill_two_stages() {
    measure(2);
}
