//! One streaming chat request of a chaos trial, read on its own thread to its end or its hang limit, and
//! classified (`Ending`).
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A stream with neither an error nor its terminator this long after the fault is hung (issue 13's definition).
pub const HANG_LIMIT: Duration = Duration::from_secs(10);
/// Content deltas every stream must have received before the fault: it is mid-generation.
const DELTAS_BEFORE_FAULT: usize = 3;
/// How long the streams may take to reach mid-generation (8 prefills on a 2-core machine).
pub const OPEN_WITHIN: Duration = Duration::from_secs(60);
/// Longer than any stream can last at the test model's speed, so no stream ends normally unless a fault spares it.
const STREAM_TOKENS: u32 = 2_000;
/// A socket read waits at most this long, so a reader notices its hang limit.
const READ_SLICE: Duration = Duration::from_millis(200);
/// Greedy, the test model writes all 1,000 numbers (measured: 2,000+ tokens, no end of its own), so a stream ends
/// only by the fault or its token limit. "Count from 1 to 500, one number per line." ended by itself after 20 lines
/// (~120 tokens): a master stop, whose stage's runner keeps computing, then looked like a stream cut short.
const PROMPT: &str = "Write the numbers from 1 to 1000, separated by commas.";

/// How one stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// An error object, then the terminator (`[DONE]`).
    Error,
    /// A finish reason and the terminator, no error.
    Normal,
    /// Neither within [`HANG_LIMIT`] of the fault.
    Hung,
    /// The connection closed without the terminator.
    Cut,
}

#[derive(Clone, Debug)]
pub struct StreamResult {
    pub ending: Ending,
    /// From the fault to the error object (for [`Ending::Error`]) or to the end (otherwise).
    pub after_fault: Duration,
    pub error: Option<Value>,
    /// The last finish reason the stream gave, and how many content deltas it carried: a "normal" end after a fault
    /// that took a stage is a stream cut short and passed off as finished.
    pub finish: Option<String>,
    pub deltas: usize,
}

pub fn chat_body(max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    })
}

/// One streaming chat request read on its own thread: it reports when it is mid-generation, then reads to the end
/// or until [`HANG_LIMIT`] after the fault.
pub fn stream_reader(
    api: SocketAddr,
    fault_at: Arc<OnceLock<Instant>>,
    ready: mpsc::Sender<bool>,
) -> std::thread::JoinHandle<StreamResult> {
    std::thread::spawn(move || {
        let opened = Instant::now();
        let mut ready = Some(ready);
        let result = read_stream(api, &fault_at, &mut ready, opened);
        if let Some(ready) = ready {
            let _ = ready.send(false);
        }
        result
    })
}

fn read_stream(
    api: SocketAddr,
    fault_at: &OnceLock<Instant>,
    ready: &mut Option<mpsc::Sender<bool>>,
    opened: Instant,
) -> StreamResult {
    let since = |fault_at: &OnceLock<Instant>| fault_at.get().map(|f| f.elapsed()).unwrap_or_default();
    let cut = |fault_at: &OnceLock<Instant>| StreamResult {
        ending: Ending::Cut,
        after_fault: since(fault_at),
        error: None,
        finish: None,
        deltas: 0,
    };
    let Ok(mut stream) = TcpStream::connect(api) else {
        return cut(fault_at);
    };
    let _ = stream.set_read_timeout(Some(READ_SLICE));
    let body = chat_body(STREAM_TOKENS, true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return cut(fault_at);
    }
    let mut buf = Vec::new();
    let mut head_done = false;
    let mut deltas = 0;
    let mut error: Option<(Value, Duration)> = None;
    let mut finish: Option<String> = None;
    let mut chunk = [0u8; 8192];
    loop {
        // The hang limit counts from the fault; before it, from the opening (a stream that never starts).
        let hung = match fault_at.get() {
            Some(f) => f.elapsed() > HANG_LIMIT,
            None => opened.elapsed() > OPEN_WITHIN + HANG_LIMIT,
        };
        if hung {
            return StreamResult {
                ending: Ending::Hung,
                after_fault: since(fault_at),
                error: error.map(|(e, _)| e),
                finish,
                deltas,
            };
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return cut_or(error, fault_at, finish, deltas),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return cut_or(error, fault_at, finish, deltas),
        };
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            head_done = true;
            buf.drain(..end + 4);
        }
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let Some(data) = line.trim_end().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                return match error {
                    Some((e, at)) => StreamResult {
                        ending: Ending::Error,
                        after_fault: at,
                        error: Some(e),
                        finish,
                        deltas,
                    },
                    None => StreamResult {
                        ending: Ending::Normal,
                        after_fault: since(fault_at),
                        error: None,
                        finish,
                        deltas,
                    },
                };
            }
            let Ok(event) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(reason) = event["choices"][0]["finish_reason"].as_str() {
                finish = Some(reason.to_owned());
            }
            if let Some(e) = event.get("error") {
                error.get_or_insert((e.clone(), since(fault_at)));
            }
            if event["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                deltas += 1;
                if deltas == DELTAS_BEFORE_FAULT
                    && let Some(r) = ready.take()
                {
                    let _ = r.send(true);
                }
            }
        }
    }
}

/// The connection closed before the terminator: cut, whether or not an error object came.
fn cut_or(
    error: Option<(Value, Duration)>,
    fault_at: &OnceLock<Instant>,
    finish: Option<String>,
    deltas: usize,
) -> StreamResult {
    StreamResult {
        ending: Ending::Cut,
        after_fault: fault_at.get().map(|f| f.elapsed()).unwrap_or_default(),
        error: error.map(|(e, _)| e),
        finish,
        deltas,
    }
}
