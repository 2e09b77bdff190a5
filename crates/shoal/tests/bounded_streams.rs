//! A stream's queue is bounded (issue 15 item 3): a streaming client that stops reading fills its stream's queue on
//! the API node, which then ends that stream with the dialect's in-band error (`client_too_slow`) and terminator,
//! cancels its task, counts the close in `/metrics`, and keeps serving everyone else.
//!
//! The node runs with the test knob `SHOAL_STREAM_QUEUE=1` (a one-event queue), and the client shrinks its receive
//! buffer, so a few hundred tokens fill every buffer between the two.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

/// The client's socket receive buffer (the kernel's minimum is about this): the kernel queues little for it.
const CLIENT_RCVBUF: usize = 4_096;

fn metric(node: &Node, line_start: &str) -> u64 {
    let (_, metrics) = http_get(node.api, "/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A streaming chat request on a socket with a small receive buffer; returns once the status line is in.
fn open_unread_stream(node: &Node, body: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    // Before connecting, so the window the client offers stays small.
    socket.set_recv_buffer_size(CLIENT_RCVBUF).unwrap();
    socket.connect(&node.api_addr().into()).unwrap();
    let mut stream: TcpStream = socket.into();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert!(
        first.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first)
    );
    stream
}

/// Between the node's stream queue and a client that stops reading sit hyper's write buffer and the node's socket
/// send buffer (Linux grows it up to `tcp_wmem`'s 4 MiB), so filling them takes about 1,700 tokens: 30 s on a quiet
/// 2-core machine, minutes on a loaded one (hence the long limit).
#[test]
fn a_client_that_stops_reading_is_cut_off_and_the_node_keeps_serving() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let mut node = cluster(root.path(), 1).remove(0);
    node.extra = vec!["--models-dir".into(), models.display().to_string()];
    node.env = vec![("SHOAL_STREAM_QUEUE".into(), "1".into())];
    node.start();
    common::wait_for(Duration::from_secs(20), "the node ready", || {
        http_get(node.api, "/health").filter(|(code, _)| *code == 200)
    });
    let nodes = vec![node];
    place(&nodes, 1);
    let node = &nodes[0];

    // Greedy decoding of a chant: the small model repeats it well past what the buffers hold.
    let chant = "hello ".repeat(40);
    let long = serde_json::json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": format!("Repeat after me forever: {chant}")}],
        "max_tokens": 3000,
        "temperature": 0,
        // Eight choices in one stream, each token with its 20 alternatives: about 15 kB a step to fill the
        // buffers with (hyper's and the node's socket buffer hold about a megabyte).
        "n": 8,
        "logprobs": true,
        "top_logprobs": 20,
        "stream": true,
    })
    .to_string();
    let before = metric(node, "shoal_stream_closes_total{reason=\"client_too_slow\"");
    let mut unread = open_unread_stream(node, &long);

    // The client reads nothing more: the node cuts the stream off and counts it.
    let started = Instant::now();
    while metric(node, "shoal_stream_closes_total{reason=\"client_too_slow\"") <= before {
        if started.elapsed() > Duration::from_secs(300) {
            let (_, metrics) = http_get(node.api, "/metrics").unwrap();
            let streams: Vec<_> = metrics.lines().filter(|l| l.contains("stream_")).collect();
            panic!("not cut off in 300 s; {streams:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut_after = started.elapsed();
    assert!(node.logged("client stopped reading"), "no log line names the cut-off");

    // What the client finds when it reads again: the chunks the buffers held, then the error and the terminator.
    let mut body = Vec::new();
    unread.read_to_end(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("client_too_slow"),
        "no in-band error (cut after {cut_after:?}): ...{}",
        tail(&body)
    );
    // (HTTP/1.1 chunked: the body's last chunk follows the terminator.)
    let error_at = body.rfind("client_too_slow").unwrap_or(0);
    assert!(
        body[error_at..].contains("data: [DONE]"),
        "no terminator after the error: ...{}",
        tail(&body)
    );
    let tokens = body.matches("\"delta\"").count();
    assert!(tokens > 1, "cut off after {tokens} chunks");

    // Its task was cancelled like a disconnected client's: no task of the node is left running.
    common::wait_for(Duration::from_secs(15), "the cut-off task ended in State", || {
        let state = node.state()?;
        let tasks = state["tasks"].as_object()?;
        tasks
            .values()
            .all(|t| t["status"].as_str().is_some_and(|s| s != "Running" && s != "Pending"))
            .then_some(())
    });

    // The node serves a normal request afterwards, start to end.
    let short = serde_json::json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 8,
        "stream": true,
    });
    let mut client = SseClient::open(node.api, &short);
    assert_eq!(client.status, 200);
    let (content, _, error, done) = client.finish();
    assert!(error.is_none() && done, "{error:?}");
    assert!(!content.is_empty());
    eprintln!("cut off after {cut_after:?} and {tokens} delivered chunks");
}

fn tail(body: &str) -> &str {
    let start = body.len().saturating_sub(600);
    body.get(start..).unwrap_or(body)
}
