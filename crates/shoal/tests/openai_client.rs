//! The API driven by the official `openai` Python client (issue 5): one real `shoal run` node with the real model,
//! and `openai_client.py` beside this file checks non-streaming and streaming chat, a stop string, a seed
//! reproducing a sampled reply, cancellation by closing the stream, and the client's error classes for a 404 and a
//! 400; and (issue 12) Responses (`responses.create` whole, incomplete and streaming, the `responses.stream` helper)
//! and Completions (whole, streaming, the default length), each with its 404 and 400.
//!
//! The client is a Python package (`pip install openai`; `.ci/run` installs it). Where `python3 -c "import openai"`
//! fails, the test fails if the environment variable `CI` is set (CI must run it) and otherwise prints a notice and
//! passes without running.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// How long the script may run: a few dozen short generations on a 2-core machine take well under this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// Whether `python3` can import `openai`; the reason when it cannot.
fn openai_importable() -> Result<(), String> {
    match Command::new("python3").args(["-c", "import openai"]).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()),
        Err(e) => Err(format!("cannot run python3: {e}")),
    }
}

#[test]
fn the_official_openai_python_client_chats_streams_stops_seeds_and_cancels() {
    if let Err(why) = openai_importable() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but the openai Python client is missing (.ci/run installs it): {why}"
        );
        eprintln!("SKIPPED: the openai Python client is not installed (pip install openai): {why}");
        return;
    }
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let base_url = format!("http://127.0.0.1:{}/v1", nodes[0].api);
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&base_url)
        .env("PYTHONUNBUFFERED", "1")
        // Talk to the node directly, whatever proxy the environment names.
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    println!("{stdout}");
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    eprintln!("openai_client.py ran for {:?}", began.elapsed());
    let node_log = || {
        let log = nodes[0].log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let status = status.unwrap_or_else(|| {
        panic!(
            "openai_client.py did not finish within {SCRIPT_TIMEOUT:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
             --- node log (tail)\n{}",
            node_log()
        )
    });
    assert!(
        status.success(),
        "openai_client.py failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node log (tail)\n{}",
        node_log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
