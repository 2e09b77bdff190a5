//! `POST /api/chat` and `POST /api/generate`: NDJSON lines `{"model","created_at","message"|"response","done":false}`
//! per piece of text, then a final line with `"done":true`, `done_reason` and the counts and durations Ollama
//! reports (nanoseconds); with `"stream":false` one object with the whole text and the same final fields. A stream
//! that fails after its first line ends with `{"error":"…","done":true}` (SYSTEM.md §11.3).

use std::time::Instant;

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_types::chunk::{FinishReason, Usage};

use super::request::{GenerateRequest, parse_chat, parse_generate};
use super::{check_num_ctx, done_reason, error_response, model_not_found, now_micros, resolve, rfc3339};
use shoal_types::params::ToolCall;

use crate::error::{ApiError, Dialect};
use crate::generation::{self, Encoder, Frame, Wire};
use crate::logprobs::{TokenLogprob, entry_json};
use crate::tools::arguments_value;
use crate::{Api, read_body};

/// Which endpoint answers: where the text goes in each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `"message":{"role":"assistant","content":…}` (reasoning in `message.thinking`).
    Chat,
    /// `"response":…` (reasoning in `thinking`).
    Generate,
}

pub async fn chat(AxumState(api): AxumState<Api>, request: Request) -> Response {
    answer(api, request, Kind::Chat)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

pub async fn generate(AxumState(api): AxumState<Api>, request: Request) -> Response {
    answer(api, request, Kind::Generate)
        .await
        .unwrap_or_else(|e| error_response(&e))
}

async fn answer(api: Api, request: Request, kind: Kind) -> Result<Response, ApiError> {
    let began = Instant::now();
    let body = read_body(request).await?;
    let GenerateRequest {
        mut params,
        model_name,
        stream,
        num_ctx,
        load_only,
        unload,
    } = match kind {
        Kind::Chat => parse_chat(&body)?,
        Kind::Generate => parse_generate(&body)?,
    };
    let card = resolve(&api.cluster.view().state, &model_name)?;
    check_num_ctx(num_ctx, &card)?;
    let mut reply = Reply::new(kind, model_name, began);
    reply.logprobs = params.logprobs;
    if load_only {
        // Ollama's "load the model" call: shoal's models are loaded by placing an instance, so there is nothing to
        // do but say so.
        let mut line = reply.line(Some(""), false);
        line.insert("done".into(), Value::Bool(true));
        line.insert(
            "done_reason".into(),
            Value::from(if unload { "unload" } else { "load" }),
        );
        return Ok(Json(Value::Object(line)).into_response());
    }
    params.model = card.id.clone();
    let started = generation::start(&api, params).await.map_err(|e| match e.code {
        "model_not_found" => model_not_found(&reply.model),
        _ => e,
    })?;
    reply.prompt_tokens = started.prompt_tokens;
    if stream {
        return Ok(generation::stream(started.handle, reply).await);
    }
    let mut handle = started.handle;
    let done = generation::collect(&mut handle).await?;
    reply.first_text = done.first_token_at;
    let mut whole = reply.line(Some(&done.text), false);
    if !done.reasoning.is_empty() {
        reply.put_text(&mut whole, &done.reasoning, true);
    }
    if reply.logprobs {
        let entries = done.logprobs.iter().map(entry_json).collect::<Vec<_>>();
        whole.insert("logprobs".into(), Value::from(entries));
    }
    reply.put_calls(&mut whole, &done.tool_calls);
    reply.finish_fields(&mut whole, done.finish(), &done.usage);
    Ok(Json(Value::Object(whole)).into_response())
}

/// What each line of one answer repeats, and the clock its durations are read from; the stream's [`Encoder`].
pub struct Reply {
    kind: Kind,
    /// The model as the client named it.
    model: String,
    /// When the request arrived: `total_duration` runs from here.
    began: Instant,
    /// When the first text arrived: the prompt's evaluation ends and generation's begins.
    first_text: Option<Instant>,
    /// The prompt's length as this node counted it, for when the final chunk carries no usage.
    prompt_tokens: Option<usize>,
    /// The request asked for logprobs: each line carries its tokens' (`logprobs`, as Ollama 0.12.11+ writes them).
    pub logprobs: bool,
}

impl Reply {
    pub fn new(kind: Kind, model: String, began: Instant) -> Reply {
        Reply {
            kind,
            model,
            began,
            first_text: None,
            prompt_tokens: None,
            logprobs: false,
        }
    }

    /// `{"model","created_at", <text>, "done"}`; `text` `None` leaves the text field out.
    fn line(&self, text: Option<&str>, done: bool) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("model".into(), Value::from(self.model.clone()));
        line.insert("created_at".into(), Value::from(rfc3339(now_micros())));
        if let Some(text) = text {
            self.put_text(&mut line, text, false);
        }
        line.insert("done".into(), Value::Bool(done));
        line
    }

    /// Puts calls in `message.tool_calls`, arguments as an object (as Ollama writes them).
    fn put_calls(&self, line: &mut Map<String, Value>, calls: &[ToolCall]) {
        if calls.is_empty() {
            return;
        }
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(index, c)| {
                json!({ "id": c.id, "function": { "index": index, "name": c.name, "arguments": arguments_value(c) } })
            })
            .collect();
        match self.kind {
            Kind::Chat => {
                if let Some(Value::Object(message)) = line.get_mut("message") {
                    message.insert("tool_calls".into(), Value::from(calls));
                } else {
                    line.insert(
                        "message".into(),
                        json!({ "role": "assistant", "content": "", "tool_calls": calls }),
                    );
                }
            }
            // /api/generate takes no tools, so it never has calls to write.
            Kind::Generate => {}
        }
    }

    /// Puts `text` where this endpoint writes it: content, or reasoning (`thinking`).
    fn put_text(&self, line: &mut Map<String, Value>, text: &str, thinking: bool) {
        let field = if thinking { "thinking" } else { "content" };
        match self.kind {
            Kind::Chat => {
                let message = line
                    .entry("message")
                    .or_insert_with(|| json!({ "role": "assistant", "content": "" }));
                message[field] = Value::from(text);
            }
            Kind::Generate => {
                let field = if thinking { "thinking" } else { "response" };
                line.entry("response").or_insert_with(|| Value::from(""));
                line.insert(field.into(), Value::from(text));
            }
        }
    }

    /// The final fields: `done`, `done_reason`, the counts (from the usage) and durations in nanoseconds.
    fn finish_fields(&self, line: &mut Map<String, Value>, finish: FinishReason, usage: &Usage) {
        let now = Instant::now();
        let first = self.first_text.unwrap_or(now);
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let prompt_count = match usage.prompt_tokens {
            0 => self.prompt_tokens.map_or(0, |n| u64::try_from(n).unwrap_or(u64::MAX)),
            n => u64::from(n),
        };
        line.insert("done".into(), Value::Bool(true));
        line.insert("done_reason".into(), Value::from(done_reason(finish)));
        line.insert("total_duration".into(), Value::from(nanos(now - self.began)));
        // Loading happens when an instance is placed, never inside a request.
        line.insert("load_duration".into(), Value::from(0));
        line.insert("prompt_eval_count".into(), Value::from(prompt_count));
        line.insert(
            "prompt_eval_duration".into(),
            Value::from(nanos(first.saturating_duration_since(self.began))),
        );
        line.insert("eval_count".into(), Value::from(usage.completion_tokens));
        line.insert(
            "eval_duration".into(),
            Value::from(nanos(now.saturating_duration_since(first))),
        );
    }
}

impl Encoder for Reply {
    fn wire(&self) -> Wire {
        Wire::NdJson
    }

    fn dialect(&self) -> Dialect {
        Dialect::Ollama
    }

    /// Ollama's streams have no opening line: the first piece of text is the first line.
    fn open(&mut self, _out: &mut Vec<Frame>) {}

    fn text(&mut self, text: &str, thinking: bool, out: &mut Vec<Frame>) {
        self.first_text.get_or_insert_with(Instant::now);
        let mut line = self.line(Some(""), false);
        self.put_text(&mut line, text, thinking);
        out.push(Frame::Line(Value::Object(line).to_string()));
    }

    fn token(&mut self, text: &str, thinking: bool, logprob: &TokenLogprob, out: &mut Vec<Frame>) {
        self.first_text.get_or_insert_with(Instant::now);
        let mut line = self.line(Some(""), false);
        self.put_text(&mut line, text, thinking);
        line.insert("logprobs".into(), json!([entry_json(logprob)]));
        out.push(Frame::Line(Value::Object(line).to_string()));
    }

    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>) {
        let mut line = self.line(Some(""), true);
        self.finish_fields(&mut line, finish, usage);
        out.push(Frame::Line(Value::Object(line).to_string()));
    }

    /// The calls in a line of their own, then the final line (Ollama ends a call with `done_reason: "stop"`).
    fn tool_calls(&mut self, calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>) {
        self.first_text.get_or_insert_with(Instant::now);
        let mut line = self.line(Some(""), false);
        self.put_calls(&mut line, calls);
        out.push(Frame::Line(Value::Object(line).to_string()));
        self.finish(FinishReason::Stop, usage, out);
    }

    /// The final line (`finish`) is the terminator.
    fn done(&mut self, _out: &mut Vec<Frame>) {}

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Frame>) {
        out.push(Frame::Line(json!({ "error": error.message, "done": true }).to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(frames: &[Frame]) -> Vec<Value> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Line(l) => serde_json::from_str(l).unwrap_or(Value::Null),
                other => panic!("not a line: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_chat_stream_writes_ollama_lines() {
        let mut reply = Reply::new(Kind::Chat, "smollm2-135m".into(), Instant::now());
        let mut out = Vec::new();
        reply.open(&mut out);
        assert!(out.is_empty());
        reply.text("Hel", false, &mut out);
        reply.text("hmm", true, &mut out);
        let usage = Usage {
            prompt_tokens: 9,
            completion_tokens: 2,
            total_tokens: 11,
            ..Usage::default()
        };
        reply.finish(FinishReason::Length, &usage, &mut out);
        reply.done(&mut out);
        let lines = lines(&out);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["model"], "smollm2-135m");
        assert_eq!(lines[0]["message"], json!({"role": "assistant", "content": "Hel"}));
        assert_eq!(lines[0]["done"], false);
        assert!(lines[0]["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert_eq!(lines[1]["message"]["thinking"], "hmm");
        assert_eq!(lines[1]["message"]["content"], "");
        let last = &lines[2];
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "length");
        assert_eq!(last["prompt_eval_count"], 9);
        assert_eq!(last["eval_count"], 2);
        for field in [
            "total_duration",
            "load_duration",
            "prompt_eval_duration",
            "eval_duration",
        ] {
            assert!(last[field].is_u64(), "{field}: {last}");
        }
        assert!(last["total_duration"].as_u64() >= last["eval_duration"].as_u64());
    }

    #[test]
    fn a_generate_stream_writes_response_and_fails_in_band() {
        let mut reply = Reply::new(Kind::Generate, "m".into(), Instant::now());
        reply.prompt_tokens = Some(5);
        let mut out = Vec::new();
        reply.text("Hi", false, &mut out);
        reply.finish(FinishReason::Stop, &Usage::default(), &mut out);
        reply.fail(&ApiError::internal("the runner died"), &mut out);
        let lines = lines(&out);
        assert_eq!(lines[0]["response"], "Hi");
        assert!(lines[0].get("message").is_none());
        assert_eq!(lines[1]["done_reason"], "stop");
        assert_eq!(lines[1]["response"], "");
        assert_eq!(lines[1]["prompt_eval_count"], 5, "the node's count when usage has none");
        assert_eq!(lines[2], json!({"error": "the runner died", "done": true}));
    }
}
