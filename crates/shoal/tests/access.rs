//! Access control, health and request limits on a real node with the real model (issue 12 items 7 and 8):
//! `--api-key` guards every route but `GET /health` and answers 401 in each dialect's error shape; either header
//! carries the key; CORS answers browsers' preflights; a prompt longer than the model's context is a 400 in each
//! dialect's shape before any runner sees it.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const KEY: &str = "test-key-0123456789";

/// Every route the node serves, with the dialect its errors are written in.
const ROUTES: &[(&str, &str, Dialect)] = &[
    ("GET", "/node_id", Dialect::OpenAi),
    ("GET", "/state", Dialect::OpenAi),
    ("GET", "/status", Dialect::OpenAi),
    ("GET", "/events", Dialect::OpenAi),
    ("GET", "/metrics", Dialect::OpenAi),
    ("GET", "/models", Dialect::OpenAi),
    ("GET", "/v1/models", Dialect::OpenAi),
    ("POST", "/models/add", Dialect::OpenAi),
    ("DELETE", "/models/nope", Dialect::OpenAi),
    ("POST", "/place_instance", Dialect::OpenAi),
    ("POST", "/instance", Dialect::OpenAi),
    ("GET", "/instance/previews?model_id=smollm2-135m", Dialect::OpenAi),
    (
        "GET",
        "/instance/await?model_id=smollm2-135m&timeout_seconds=0",
        Dialect::OpenAi,
    ),
    ("GET", "/instance/00000000-0000-0000-0000-000000000000", Dialect::OpenAi),
    (
        "POST",
        "/v1/cancel/00000000-0000-0000-0000-000000000000",
        Dialect::OpenAi,
    ),
    ("POST", "/v1/chat/completions", Dialect::OpenAi),
    ("POST", "/ollama/v1/chat/completions", Dialect::OpenAi),
    ("POST", "/v1/completions", Dialect::OpenAi),
    ("POST", "/v1/responses", Dialect::OpenAi),
    ("POST", "/v1/messages", Dialect::Anthropic),
    ("POST", "/v1/messages/count_tokens", Dialect::Anthropic),
    ("POST", "/api/chat", Dialect::Ollama),
    ("POST", "/api/generate", Dialect::Ollama),
    ("GET", "/api/tags", Dialect::Ollama),
    ("GET", "/api/ps", Dialect::Ollama),
    ("POST", "/api/show", Dialect::Ollama),
    ("GET", "/api/version", Dialect::Ollama),
    ("POST", "/api/pull", Dialect::Ollama),
    ("POST", "/ollama/api/chat", Dialect::Ollama),
    ("GET", "/ollama/api/tags", Dialect::Ollama),
    ("GET", "/no/such/route", Dialect::OpenAi),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dialect {
    OpenAi,
    Anthropic,
    Ollama,
}

/// The error message of a body in `dialect`'s shape; `None` if the body is not in that shape.
fn error_message(dialect: Dialect, body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    let message = match dialect {
        Dialect::OpenAi => v["error"]["message"].as_str(),
        Dialect::Anthropic => {
            if v["type"] != "error" || v["error"]["type"].as_str().is_none() {
                return None;
            }
            v["error"]["message"].as_str()
        }
        Dialect::Ollama => v["error"].as_str(),
    };
    message.map(str::to_owned)
}

fn keyed_node(root: &std::path::Path) -> Node {
    let models = common::model_path().parent().unwrap().to_path_buf();
    let mut node = cluster(root, 1).remove(0);
    node.extra = vec![
        "--models-dir".into(),
        models.display().to_string(),
        "--api-key".into(),
        KEY.into(),
    ];
    node.headers = vec![("authorization".into(), format!("Bearer {KEY}"))];
    node.start();
    common::wait_for(Duration::from_secs(20), "the node ready", || {
        http_get(node.api, "/health").filter(|(code, _)| *code == 200)
    });
    node
}

#[test]
fn the_api_key_guards_every_route_but_health_in_each_dialects_shape() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let node = keyed_node(root.path());

    let (code, body) = http_get(node.api, "/health").unwrap();
    assert_eq!(code, 200, "{body}");
    let health: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["role"], "master");

    for (method, path, dialect) in ROUTES {
        for headers in [
            vec![],
            vec![("authorization", "Bearer wrong-key")],
            vec![("x-api-key", "wrong-key")],
        ] {
            let (code, body) = http_with(node.api, method, path, &headers, Some("{}")).unwrap();
            assert_eq!(code, 401, "{method} {path} with {headers:?}: {body}");
            let message = error_message(*dialect, &body)
                .unwrap_or_else(|| panic!("{method} {path}: not a {dialect:?} error: {body}"));
            assert!(message.contains("API key"), "{method} {path}: {message}");
        }
        for header in [
            ("authorization", format!("Bearer {KEY}")),
            ("x-api-key", KEY.to_owned()),
        ] {
            let (code, body) = http_with(node.api, method, path, &[(header.0, &header.1)], Some("{}")).unwrap();
            assert_ne!(code, 401, "{method} {path} with {}: {body}", header.0);
        }
    }

    // A browser's preflight needs no key, and CORS is open by default.
    let (code, head, _) = http_full(
        node.api,
        "OPTIONS",
        "/v1/chat/completions",
        &[
            ("origin", "http://localhost:3000"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "authorization,content-type"),
        ],
        None,
    )
    .unwrap();
    assert_eq!(code, 200, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_400_in_each_dialect_before_any_runner_sees_it() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let node = keyed_node(root.path());
    let nodes = vec![node];
    place(&nodes, 1);
    let node = &nodes[0];

    // ~12,000 tokens against SmolLM2's 8,192.
    let long = "lorem ipsum dolor sit amet ".repeat(2_400);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": long}]}),
            Dialect::OpenAi,
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2-135m", "prompt": long}),
            Dialect::OpenAi,
        ),
        (
            "/v1/responses",
            json!({"model": "smollm2-135m", "input": long}),
            Dialect::OpenAi,
        ),
        (
            "/v1/messages",
            json!({"model": "smollm2-135m", "max_tokens": 8, "messages": [{"role": "user", "content": long}]}),
            Dialect::Anthropic,
        ),
        (
            "/api/chat",
            json!({"model": "smollm2-135m", "stream": false, "messages": [{"role": "user", "content": long}]}),
            Dialect::Ollama,
        ),
    ];
    let chunks_before = worker_chunks(node);
    for (path, body, dialect) in cases {
        let (code, text) = node.http("POST", path, Some(&body)).unwrap();
        assert_eq!(code, 400, "{path}: {text}");
        let message = error_message(dialect, &text).unwrap_or_else(|| panic!("{path}: {text}"));
        assert!(message.contains("context"), "{path}: {message}");
        if dialect == Dialect::OpenAi {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "context_length_exceeded", "{path}: {text}");
        }
    }
    assert_eq!(worker_chunks(node), chunks_before, "no runner produced anything");
    let state = node.state().unwrap();
    assert_eq!(
        state["tasks"].as_object().map_or(0, |t| t.len()),
        0,
        "no task was created: {}",
        state["tasks"]
    );

    // A prompt that fits still generates.
    let (code, text) = node
        .http(
            "POST",
            "/v1/chat/completions",
            Some(&json!({"model": "smollm2-135m", "max_tokens": 4,
                "messages": [{"role": "user", "content": "Say hi."}]})),
        )
        .unwrap();
    assert_eq!(code, 200, "{text}");
}

fn worker_chunks(node: &Node) -> u64 {
    let (code, text) = node.get("/metrics").unwrap();
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_worker_chunks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no shoal_worker_chunks_total in {text}"))
}
