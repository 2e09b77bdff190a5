//! How many concurrent streaming clients one node holds open (issue 5; goal ≥ 1,000).
//!
//! `cargo bench -p shoal --bench streams` starts one real node with the test model placed, opens
//! `SHOAL_BENCH_STREAMS` (default 1,000) streaming chat requests at once, each from its own client thread, and
//! holds them until every one has received its headers and then a `: keep-alive` comment (sent after 10 s of
//! silence: most of these streams wait in the queue behind the runner's 8 sequences, so they carry nothing else).
//! It prints how many streams were held without an error, the node's open-stream gauge at the peak, and how long
//! the node took to cancel and finish every task once all clients hung up.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// What one client saw.
#[derive(Debug)]
enum Seen {
    KeepAlive {
        headers_after: Duration,
    },
    /// One of the runner's running sequences finished its reply before a keep-alive was due.
    Completed,
    Error(String),
}

fn client(port: u16, release: mpsc::Receiver<()>, report: mpsc::Sender<Seen>) {
    let run = || -> Result<Option<Seen>, String> {
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(40)))
            .map_err(|e| e.to_string())?;
        let body = json!({
            "model": "smollm2-135m",
            "messages": [{"role": "user", "content": "Count from 1 to 500, one number per line."}],
            "max_tokens": 4000,
            "temperature": 0,
            "stream": true,
        })
        .to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| format!("send: {e}"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| format!("status: {e}"))?;
        if !line.contains(" 200 ") {
            return Err(format!("status line {line:?}"));
        }
        let headers_after = started.elapsed();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the stream ended".into());
            }
            if line.starts_with(':') {
                break;
            }
            if line.contains("\"error\"") {
                return Err(format!("in-band error: {line}"));
            }
            if line.trim_end() == "data: [DONE]" {
                return Ok(Some(Seen::Completed));
            }
        }
        // Hold the stream open until every client got this far; dropping it then hangs up.
        let _ = report.send(Seen::KeepAlive { headers_after });
        let _ = release.recv();
        drop(reader);
        Ok(None)
    };
    match run() {
        Ok(Some(seen)) => {
            let _ = report.send(seen);
        }
        Ok(None) => {}
        Err(error) => {
            let _ = report.send(Seen::Error(error));
        }
    }
}

fn main() {
    let n: usize = std::env::var("SHOAL_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let models = common::model_path().parent().unwrap().display().to_string();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 1);
    nodes[0].extra = vec!["--models-dir".into(), models];
    nodes[0].env.push(("SHOAL_LOG".into(), "warn".into()));
    nodes[0].start();
    let node = &nodes[0];
    common::wait_for(Duration::from_secs(30), "ready", || {
        (node.status()?["ready"] == true).then_some(())
    });
    let (code, body) = http(
        node.api,
        "POST",
        "/place_instance",
        Some(&json!({"model_id": "smollm2-135m"})),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    common::wait_for(Duration::from_secs(60), "the runner Ready", || {
        let st = runner_statuses(&node.state()?);
        (st.len() == 1 && st[0].1 == "Ready").then_some(())
    });

    let (report_tx, report_rx) = mpsc::channel();
    let mut releases = Vec::with_capacity(n);
    let mut threads = Vec::with_capacity(n);
    let opened = Instant::now();
    for _ in 0..n {
        let (release_tx, release_rx) = mpsc::channel();
        releases.push(release_tx);
        let report = report_tx.clone();
        let port = node.api;
        threads.push(
            std::thread::Builder::new()
                .stack_size(128 << 10)
                .spawn(move || client(port, release_rx, report))
                .unwrap(),
        );
    }
    let mut held = 0usize;
    let mut completed = 0usize;
    let mut errors = Vec::new();
    let mut headers = Vec::new();
    while held + completed + errors.len() < n {
        match report_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Seen::KeepAlive { headers_after }) => {
                held += 1;
                headers.push(headers_after);
            }
            Ok(Seen::Completed) => completed += 1,
            Ok(Seen::Error(e)) => errors.push(e),
            Err(_) => break,
        }
    }
    let all_held_after = opened.elapsed();
    let open_gauge = {
        let (_, text) = node.get("/metrics").unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("shoal_streams_open "))
            .unwrap_or("?")
            .to_owned()
    };
    let hung_up = Instant::now();
    drop(releases);
    for t in threads {
        let _ = t.join();
    }
    common::wait_for(Duration::from_secs(120), "every stream closed and task gone", || {
        let (_, text) = node.get("/metrics")?;
        let open = text.lines().any(|l| l == "shoal_streams_open 0");
        let tasks = node.state()?["tasks"].as_object()?.is_empty();
        (open && tasks).then_some(())
    });
    let drained = hung_up.elapsed();
    headers.sort();
    let p = |q: f64| {
        headers
            .get(((headers.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "\n| streams opened | held with headers + keep-alive | completed (running, replied in full) | errors | open-stream gauge | headers p50 / p99 | all held after | hang-up → every task finished |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {held} | {completed} | {} | {open_gauge} | {:.0} ms / {:.0} ms | {:.1} s | {:.1} s |",
        errors.len(),
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        all_held_after.as_secs_f64(),
        drained.as_secs_f64()
    );
    for e in errors.iter().take(5) {
        println!("error: {e}");
    }
}
