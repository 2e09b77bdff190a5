//! The HTTP server's limits (issue 15 item 3) on a real node: a connection that sends nothing, or sends headers or a
//! body too slowly, is closed after `--http-read-timeout`; past `--max-connections` a connection is answered 503 with
//! `Retry-After`; the node serves normally throughout.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

const READ_TIMEOUT_SECS: u64 = 2;
const MAX_CONNECTIONS: usize = 6;
/// How much later than the timeout a connection may be closed (a loaded 2-core machine).
const SLACK: Duration = Duration::from_secs(3);

fn node(root: &std::path::Path) -> Node {
    let mut node = cluster(root, 1).remove(0);
    node.extra = vec![
        "--no-worker".into(),
        "--http-read-timeout".into(),
        READ_TIMEOUT_SECS.to_string(),
        "--max-connections".into(),
        MAX_CONNECTIONS.to_string(),
    ];
    node.start();
    common::wait_for(Duration::from_secs(20), "the node ready", || {
        http_get(node.api, "/health").filter(|(code, _)| *code == 200)
    });
    node
}

/// Reads until the peer closes the connection (or `limit` passes): what arrived and when the close came.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), Some(started.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // A reset is a close too.
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), Some(started.elapsed())),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), None)
}

#[test]
fn slow_idle_and_excess_connections_are_closed_and_the_node_keeps_serving() {
    let root = tempfile::tempdir().unwrap();
    let node = node(root.path());
    let addr = node.api_addr();
    let timeout = Duration::from_secs(READ_TIMEOUT_SECS);

    // A connection that never sends a byte.
    let mut silent = TcpStream::connect(addr).unwrap();
    // Headers begun and never finished (slowloris).
    let mut slow_headers = TcpStream::connect(addr).unwrap();
    slow_headers.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A body announced as 100 bytes, 10 sent.
    let mut slow_body = TcpStream::connect(addr).unwrap();
    slow_body
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":")
        .unwrap();
    // A keep-alive connection that made one request and then went quiet.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();

    // Four of the six connections are held: two more fit, the next is refused with 503 and Retry-After.
    let _fifth = TcpStream::connect(addr).unwrap();
    let _sixth = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut excess = TcpStream::connect(addr).unwrap();
    let (answer, closed) = read_until_closed(&mut excess, Duration::from_secs(5));
    assert!(closed.is_some(), "a connection over the cap stays open");
    assert!(answer.starts_with("HTTP/1.1 503"), "over the cap: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "no Retry-After: {answer}"
    );
    assert!(answer.contains("too_many_connections"), "{answer}");

    for (name, stream) in [("silent", &mut silent), ("slow headers", &mut slow_headers)] {
        let (got, closed) = read_until_closed(stream, timeout + SLACK + SLACK);
        let closed = closed.unwrap_or_else(|| panic!("the {name} connection is still open"));
        assert!(
            closed <= timeout + SLACK,
            "the {name} connection closed only after {closed:?}"
        );
        assert!(!got.contains("200 OK"), "the {name} connection was answered: {got}");
    }
    let (got, closed) = read_until_closed(&mut slow_body, timeout + SLACK);
    assert!(closed.is_some(), "the slow-body connection is still open");
    assert!(got.starts_with("HTTP/1.1 408"), "a slow body is answered 408: {got}");
    assert!(got.contains("request_timeout"), "{got}");
    let (got, closed) = read_until_closed(&mut idle, timeout + SLACK);
    assert!(closed.is_some(), "the idle keep-alive connection is still open");
    assert!(
        got.starts_with("HTTP/1.1 200"),
        "the idle connection's request was answered: {got}"
    );

    // The held connections are gone: the node serves, and says what it refused.
    let _ = (_fifth, _sixth);
    common::wait_for(Duration::from_secs(10), "a request served after the closes", || {
        http_get(node.api, "/health").filter(|(code, _)| *code == 200)
    });
    let (code, metrics) = http_get(node.api, "/metrics").unwrap();
    assert_eq!(code, 200);
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("shoal_http_connections_refused_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(refused >= Some(1), "refused connections not counted: {refused:?}");
}

/// Past `--max-streams` open generations, a new one is answered 429 with `Retry-After` in the dialect's shape; once
/// the open ones end, requests are served again.
#[test]
fn past_max_streams_a_generation_is_refused_with_429() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let mut node = cluster(root.path(), 1).remove(0);
    node.extra = vec![
        "--models-dir".into(),
        models.display().to_string(),
        "--max-streams".into(),
        "2".into(),
    ];
    node.start();
    common::wait_for(Duration::from_secs(20), "the node ready", || {
        http_get(node.api, "/health").filter(|(code, _)| *code == 200)
    });
    let nodes = vec![node];
    place(&nodes, 1);
    let node = &nodes[0];

    let long = serde_json::json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Write the numbers from 1 to 1000, separated by commas."}],
        "max_tokens": 2000,
        "stream": true,
    })
    .to_string();
    let open_stream = || {
        let mut s = TcpStream::connect(node.api_addr()).unwrap();
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
            long.len()
        );
        s.write_all(request.as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut first = [0u8; 64];
        let n = s.read(&mut first).unwrap();
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&first[..n])
        );
        s
    };
    let held = [open_stream(), open_stream()];

    let body = r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"Say hi."}],"max_tokens":4}"#;
    let (code, head, answer) = http_at(node.api_addr(), "POST", "/v1/chat/completions", &[], Some(body)).unwrap();
    assert_eq!(code, 429, "{answer}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "{head}");
    let error: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(error["error"]["code"], "rate_limit_exceeded", "{answer}");
    let anthropic = r#"{"model":"smollm2-135m","max_tokens":4,"messages":[{"role":"user","content":"Hi"}]}"#;
    let (code, _, answer) = http_at(node.api_addr(), "POST", "/v1/messages", &[], Some(anthropic)).unwrap();
    assert_eq!(code, 429, "{answer}");
    assert!(answer.contains("rate_limit_error"), "{answer}");

    drop(held);
    common::wait_for(Duration::from_secs(15), "served once the streams closed", || {
        http_at(node.api_addr(), "POST", "/v1/chat/completions", &[], Some(body)).filter(|(code, _, _)| *code == 200)
    });
}
