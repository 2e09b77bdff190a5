//! `POST /v1/chat/completions` (§11.1–§11.2): OpenAI Chat Completions, streaming (SSE) or not.
//!
//! Non-streaming handlers write nothing until the response is complete; streaming handlers send their status line at
//! the first chunk, at observation in State, or after 1 s, whichever comes first. So every early failure becomes a
//! real HTTP status, and a later one an in-band error followed by `data: [DONE]`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{Value, json};
use shoal_core::registry::CloseReason;
use shoal_types::chunk::{Chunk, FinishReason, Usage};
use shoal_types::command::Command;
use shoal_types::params::MAX_PARAMS_BYTES;

use crate::request::{MAX_BODY_BYTES, fill_defaults, parse_chat};
use crate::streams::{End, StreamEvent, StreamHandle, unix_ms};
use crate::{Api, error, error_with_code};

/// A streaming response starts at the latest this long after registration (§11.2 step 4).
const HEADERS_AFTER: Duration = Duration::from_secs(1);
/// A comment line after this much silence keeps proxies and clients from timing the stream out (§11.1).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub async fn completions(AxumState(api): AxumState<Api>, request: Request) -> Response {
    let body = match axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body exceeds {MAX_BODY_BYTES} bytes"),
            );
        }
    };
    let mut chat = match parse_chat(&body) {
        Ok(chat) => chat,
        Err(bad) => {
            let body = json!({ "error": {
                "message": bad.to_string(), "type": "invalid_request_error", "param": bad.field, "code": 400
            }});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    let state = api.cluster.view().state;
    let Some(card) = shoal_core::placement::resolve_card(&state, &chat.params.model) else {
        return error_with_code(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Value::from("model_not_found"),
            format!("`model`: no model card is named `{}`", chat.model_name),
        );
    };
    fill_defaults(&mut chat.params, &card);
    let encoded = shoal_types::codec::encode(&chat.params)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if encoded > MAX_PARAMS_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("the request is {encoded} bytes once encoded; the limit is {MAX_PARAMS_BYTES}"),
        );
    }
    let handle = api.streams.open(Command::TextGeneration { params: chat.params });
    let reply = Reply {
        id: format!("chatcmpl-{}", handle.command_id),
        created: unix_ms() / 1000,
        model: chat.model_name,
        include_usage: chat.include_usage,
    };
    if chat.stream {
        streaming(handle, reply).await
    } else {
        whole(handle, reply).await
    }
}

/// What every response of one request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

fn finish_text(finish: FinishReason) -> &'static str {
    match finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
    }
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

fn close_body(reason: &CloseReason) -> Value {
    json!({ "error": { "message": reason.message(), "type": reason.error_type(), "code": reason.code() } })
}

/// The HTTP answer for a stream that closed before any byte was sent.
fn close_response(reason: &CloseReason) -> Response {
    let status = StatusCode::from_u16(reason.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(close_body(reason))).into_response()
}

async fn whole(mut handle: StreamHandle, reply: Reply) -> Response {
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    loop {
        match handle.next().await {
            Some(StreamEvent::Observed) => {}
            Some(StreamEvent::Chunk(Chunk::Token {
                text: piece,
                finish: f,
                usage: u,
                ..
            })) => {
                text.push_str(&piece);
                finish = f.or(finish);
                usage = u.or(usage);
            }
            Some(StreamEvent::Chunk(_)) => {}
            Some(StreamEvent::End(End::Finished)) => break,
            Some(StreamEvent::End(End::Closed(reason))) => return close_response(&reason),
            None => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the stream registry went away",
                );
            }
        }
    }
    let usage = usage.unwrap_or_default();
    Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "logprobs": null,
            "finish_reason": finish_text(finish.unwrap_or(FinishReason::Stop)),
        }],
        "usage": usage_json(&usage),
    }))
    .into_response()
}

async fn streaming(mut handle: StreamHandle, reply: Reply) -> Response {
    let first = match tokio::time::timeout(HEADERS_AFTER, handle.next()).await {
        Ok(Some(StreamEvent::End(End::Closed(reason)))) => return close_response(&reason),
        Ok(None) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the stream registry went away",
            );
        }
        Ok(Some(event)) => Some(event),
        Err(_) => None,
    };
    handle.mark_bytes_sent();
    let mut sse = SseState {
        handle,
        first,
        queue: VecDeque::new(),
        done: false,
        reply,
    };
    sse.queue
        .push_back(sse.delta(json!({ "role": "assistant", "content": "" }), None));
    let events = stream::unfold(sse, |mut sse| async move {
        loop {
            if let Some(event) = sse.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), sse));
            }
            if sse.done {
                return None;
            }
            let next = match sse.first.take() {
                Some(event) => Some(event),
                None => sse.handle.next().await,
            };
            sse.push(next);
        }
    });
    let sse = Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    let mut response = sse.into_response();
    response.headers_mut().insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

struct SseState {
    handle: StreamHandle,
    /// The event that arrived while the handler decided to answer.
    first: Option<StreamEvent>,
    queue: VecDeque<SseEvent>,
    done: bool,
    reply: Reply,
}

impl SseState {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> SseEvent {
        let mut body = json!({
            "id": self.reply.id,
            "object": "chat.completion.chunk",
            "created": self.reply.created,
            "model": self.reply.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        SseEvent::default().data(body.to_string())
    }

    fn delta(&self, delta: Value, finish: Option<FinishReason>) -> SseEvent {
        let finish = finish.map_or(Value::Null, |f| Value::from(finish_text(f)));
        self.chunk(json!([{ "index": 0, "delta": delta, "finish_reason": finish }]), None)
    }

    fn push(&mut self, event: Option<StreamEvent>) {
        match event {
            Some(StreamEvent::Observed) | Some(StreamEvent::Chunk(Chunk::PrefillProgress { .. })) => {}
            Some(StreamEvent::Chunk(Chunk::Token {
                text, finish, usage, ..
            })) => {
                if !text.is_empty() {
                    let event = self.delta(json!({ "content": text }), None);
                    self.queue.push_back(event);
                }
                if let Some(finish) = finish {
                    let event = self.delta(json!({}), Some(finish));
                    self.queue.push_back(event);
                    if self.reply.include_usage {
                        let usage = usage_json(&usage.unwrap_or_default());
                        let event = self.chunk(json!([]), Some(usage));
                        self.queue.push_back(event);
                    }
                }
            }
            // Tool calls are not parsed by the engine yet; nothing produces them.
            Some(StreamEvent::Chunk(Chunk::ToolCall { .. } | Chunk::Error { .. })) => {}
            Some(StreamEvent::End(End::Finished)) => {
                self.queue.push_back(SseEvent::default().data("[DONE]"));
                self.done = true;
            }
            Some(StreamEvent::End(End::Closed(reason))) => {
                if reason.writes_response() {
                    self.queue
                        .push_back(SseEvent::default().data(close_body(&reason).to_string()));
                    self.queue.push_back(SseEvent::default().data("[DONE]"));
                }
                self.done = true;
            }
            None => self.done = true,
        }
    }
}
