//! Every stream ends with a word (issue 13 item 4): on SIGTERM the node ends each open stream with an error and its
//! dialect's terminator before it exits; a store that cannot commit no longer stops it (issue 15 item 4): real
//! `shoal run` processes, the real model, raw HTTP on loopback.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// How long a stopping node may take to end its streams (it waits at most 2 s for responses to be written).
const ENDED_WITHIN: Duration = Duration::from_secs(3);

/// A streaming request read as it arrives.
struct Stream {
    socket: TcpStream,
    text: String,
}

impl Stream {
    fn open(port: u16, path: &str, body: &Value) -> Stream {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let body = body.to_string();
        write!(
            socket,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        Stream {
            socket,
            text: String::new(),
        }
    }

    /// Reads until `done(text)` holds or the connection closes (true) or `within` passes (false).
    fn read_until(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            if done(&self.text) {
                return true;
            }
            match self.socket.read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => self.text.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => return true,
            }
        }
        done(&self.text)
    }
}

/// Three long generations, one per dialect, each past its first token.
fn open_streams(port: u16) -> Vec<(&'static str, Stream)> {
    let prompt = "Write a long story about a lighthouse keeper.";
    let streams = vec![
        (
            "openai",
            Stream::open(
                port,
                "/v1/chat/completions",
                &json!({"model": "smollm2-135m", "max_tokens": 2000, "stream": true,
                    "messages": [{"role": "user", "content": prompt}]}),
            ),
        ),
        (
            "anthropic",
            Stream::open(
                port,
                "/v1/messages",
                &json!({"model": "smollm2-135m", "max_tokens": 2000, "stream": true,
                    "messages": [{"role": "user", "content": prompt}]}),
            ),
        ),
        (
            "ollama",
            Stream::open(
                port,
                "/api/chat",
                &json!({"model": "smollm2-135m", "options": {"num_predict": 2000},
                    "messages": [{"role": "user", "content": prompt}]}),
            ),
        ),
    ];
    let mut started = Vec::new();
    for (dialect, mut stream) in streams {
        let marker = match dialect {
            "openai" => "\"content\":\"",
            "anthropic" => "text_delta",
            _ => "\"done\":false",
        };
        assert!(
            stream.read_until(Duration::from_secs(20), |t| t.contains(marker)),
            "{dialect}: no token: {}",
            stream.text
        );
        started.push((dialect, stream));
    }
    started
}

/// Whether the stream ended with the dialect's error (naming `needle`) and terminator.
fn ended_with_error(dialect: &str, text: &str, needle: &str) -> bool {
    let tail = text.trim_end().trim_end_matches("0").trim_end();
    match dialect {
        "openai" => {
            text.contains("\"code\":\"shutting_down\"") && text.contains(needle) && tail.ends_with("data: [DONE]")
        }
        "anthropic" => text.contains("event: error") && text.contains(needle) && !text.contains("message_stop"),
        _ => text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .and_then(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .is_some_and(|v| v["done"] == true && v["error"].as_str().is_some_and(|e| e.contains(needle))),
    }
}

fn signal(node: &Node, name: &str) {
    let pid = node.child.as_ref().unwrap().id();
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(node: &mut Node, within: Duration) -> std::process::ExitStatus {
    let child = node.child.as_mut().unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the node did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_ends_every_open_stream_with_an_error_and_its_terminator_then_exits() {
    let _serial = serial();
    let (_root, mut nodes) = start(1);
    place(&nodes, 1);
    let port = nodes[0].api;
    let mut streams = open_streams(port);

    let stopped = Instant::now();
    signal(&nodes[0], "TERM");
    for (dialect, stream) in &mut streams {
        let text_done = |t: &str| ended_with_error(dialect, t, "shutting down");
        assert!(
            stream.read_until(ENDED_WITHIN, text_done),
            "{dialect}: no error and terminator within {ENDED_WITHIN:?}: {}",
            stream.text
        );
    }
    let ended = stopped.elapsed();
    assert!(ended <= ENDED_WITHIN, "streams ended {ended:?} after SIGTERM");
    let status = wait_exit(&mut nodes[0], Duration::from_secs(10));
    let log = nodes[0].log_text();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert!(
        status.success(),
        "SIGTERM is a clean stop: {status:?}; log tail: {tail:#?}"
    );
    eprintln!("streams ended {} ms after SIGTERM", ended.as_millis());
}

#[test]
fn a_store_that_cannot_commit_leaves_the_node_up_and_it_resumes_once_the_fault_is_gone() {
    let _serial = serial();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let fail_file = root.path().join("store-fails");
    let mut node = cluster(root.path(), 1).remove(0);
    node.extra = vec!["--models-dir".into(), models.display().to_string()];
    // A named fault: the store's commits fail while this file exists (`tests/disk_full.rs` fills a real tmpfs).
    node.env = vec![("SHOAL_FAULT_STORE_FAIL_FILE".into(), fail_file.display().to_string())];
    node.start();
    let mut nodes = vec![node];
    {
        let all: Vec<&Node> = nodes.iter().collect();
        common::wait_for(Duration::from_secs(15), "ready", || agreement(&all));
    }
    place(&nodes, 1);
    let port = nodes[0].api;

    std::fs::write(&fail_file, b"").unwrap();
    // The next event the master must commit (this request's task) fails the store.
    let mut trigger = Stream::open(
        port,
        "/v1/chat/completions",
        &json!({"model": "smollm2-135m", "max_tokens": 4, "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
    );
    let status = common::wait_for(Duration::from_secs(10), "the failure in /status", || {
        let status = nodes[0].status()?;
        status["storage"]["error"]
            .as_str()?
            .contains("injected store failure")
            .then_some(status)
    });
    assert_ne!(status["role"], "master", "{status}");
    assert!(nodes[0].alive(), "a store that cannot write no longer stops the node");
    let (code, body) = nodes[0]
        .http(
            "POST",
            "/v1/chat/completions",
            Some(&json!({"model": "smollm2-135m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})),
        )
        .unwrap();
    assert_eq!(code, 503, "no new work while the store fails: {body}");
    assert!(body.contains("storage_unavailable"), "{body}");

    std::fs::remove_file(&fail_file).unwrap();
    let resumed = Instant::now();
    common::wait_for(Duration::from_secs(15), "master again", || {
        let status = nodes[0].status()?;
        (status["storage"].is_null() && status["role"] == "master").then_some(())
    });
    eprintln!(
        "master again {} ms after the fault was gone",
        resumed.elapsed().as_millis()
    );
    // The request whose task was lost is resent to the new session: its stream ends with its terminator, not cut.
    trigger.read_until(Duration::from_secs(30), |t| t.contains("data: [DONE]"));
    assert!(
        trigger.text.contains("data: [DONE]"),
        "the trigger's stream: {}",
        trigger.text
    );
    assert!(nodes[0].alive());
}
