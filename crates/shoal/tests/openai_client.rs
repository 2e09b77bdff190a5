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

use std::time::Duration;

use support::*;

/// How long the script may run: a few dozen short generations on a 2-core machine take well under this.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn the_official_openai_python_client_chats_streams_stops_seeds_and_cancels() {
    if !python::client_available("openai") {
        return;
    }
    let _serial = serial();
    let (_root, nodes) = start(1);
    place(&nodes, 1);

    let base_url = format!("http://127.0.0.1:{}/v1", nodes[0].api);
    python::run_client_script("openai_client.py", &base_url, SCRIPT_TIMEOUT, &nodes[0]);
}
