//! `POST /v1/chat/completions` (§11.1): OpenAI Chat Completions, streaming (SSE, `data: [DONE]` last) or not.

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shoal_types::chunk::{FinishReason, Usage};
use shoal_types::params::ToolCall;

use super::chat_request::parse_chat;
use super::{finish_text, usage_json};
use crate::error::{ApiError, Dialect};
use crate::generation::{self, Encoder, Frame, Wire};
use crate::streams::unix_ms;
use crate::{Api, read_body};

pub async fn completions(AxumState(api): AxumState<Api>, request: Request) -> Response {
    match answer(api, request).await {
        Ok(response) => response,
        Err(e) => Dialect::OpenAi.error_response(&e),
    }
}

async fn answer(api: Api, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let chat = parse_chat(&body)?;
    let started = generation::start(&api, chat.params).await?;
    let reply = Reply {
        id: format!("chatcmpl-{}", started.handle.command_id),
        created: unix_ms() / 1000,
        model: chat.model_name,
        include_usage: chat.include_usage,
    };
    if chat.stream {
        return Ok(generation::stream(started.handle, reply).await);
    }
    let mut handle = started.handle;
    let done = generation::collect(&mut handle).await?;
    let mut message = json!({ "role": "assistant", "content": done.text });
    if !done.reasoning.is_empty() {
        message["reasoning_content"] = Value::from(done.reasoning.clone());
    }
    let finish = if done.tool_calls.is_empty() {
        finish_text(done.finish())
    } else {
        if done.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = done.tool_calls.iter().map(call_json).collect();
        TOOL_CALLS
    };
    Ok(Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage_json(&done.usage),
    }))
    .into_response())
}

/// What every chunk of one stream repeats; the stream's [`Encoder`].
struct Reply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Reply {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Frame {
        let mut body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            body["usage"] = usage;
        }
        Frame::data(body.to_string())
    }

    fn delta(&self, delta: Value, finish: Option<FinishReason>) -> Frame {
        let finish = finish.map_or(Value::Null, |f| Value::from(finish_text(f)));
        self.chunk(json!([{ "index": 0, "delta": delta, "finish_reason": finish }]), None)
    }

    fn end(&self, finish: Value, usage: &Usage, out: &mut Vec<Frame>) {
        out.push(self.chunk(json!([{ "index": 0, "delta": {}, "finish_reason": finish }]), None));
        if self.include_usage {
            out.push(self.chunk(json!([]), Some(usage_json(usage))));
        }
    }
}

/// `finish_reason` of an answer that ended in tool calls.
const TOOL_CALLS: &str = "tool_calls";

/// A call in `message.tool_calls`: arguments stay JSON text, as OpenAI writes them.
fn call_json(call: &ToolCall) -> Value {
    json!({
        "id": call.id,
        "type": "function",
        "function": { "name": call.name, "arguments": call.arguments },
    })
}

impl Encoder for Reply {
    fn wire(&self) -> Wire {
        Wire::Sse
    }

    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    fn open(&mut self, out: &mut Vec<Frame>) {
        out.push(self.delta(json!({ "role": "assistant", "content": "" }), None));
    }

    fn text(&mut self, text: &str, thinking: bool, out: &mut Vec<Frame>) {
        // Reasoning goes in `reasoning_content`, as DeepSeek's and vLLM's servers write it.
        let field = if thinking { "reasoning_content" } else { "content" };
        out.push(self.delta(json!({ field: text }), None));
    }

    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>) {
        self.end(Value::from(finish_text(finish)), usage, out);
    }

    fn tool_calls(&mut self, calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>) {
        // Each call opens with its id, type and name, then its arguments follow as one fragment.
        for (index, call) in calls.iter().enumerate() {
            let head = json!({
                "index": index,
                "id": call.id,
                "type": "function",
                "function": { "name": call.name, "arguments": "" },
            });
            out.push(self.delta(json!({ "tool_calls": [head] }), None));
            let args = json!({ "index": index, "function": { "arguments": call.arguments } });
            out.push(self.delta(json!({ "tool_calls": [args] }), None));
        }
        self.end(Value::from(TOOL_CALLS), usage, out);
    }

    fn done(&mut self, out: &mut Vec<Frame>) {
        out.push(Frame::data("[DONE]"));
    }

    fn fail(&mut self, error: &ApiError, out: &mut Vec<Frame>) {
        out.push(Frame::data(Dialect::OpenAi.error_body(error).to_string()));
        out.push(Frame::data("[DONE]"));
    }
}
