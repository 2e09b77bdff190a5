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
use crate::logprobs::{self, TokenLogprob};
use crate::streams::{StreamHandle, unix_ms};
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
    let logprobs = chat.params.logprobs;
    let started = generation::start_choices(&api, chat.params, chat.n).await?;
    let mut handles: Vec<StreamHandle> = started.into_iter().map(|s| s.handle).collect();
    let reply = Reply {
        id: format!(
            "chatcmpl-{}",
            handles.first().map(|h| h.command_id.to_string()).unwrap_or_default()
        ),
        created: unix_ms() / 1000,
        model: chat.model_name,
        include_usage: chat.include_usage,
        choice: 0,
        choices: handles.len(),
        usages: Vec::new(),
    };
    if chat.stream {
        return Ok(generation::stream_choices(handles, reply).await);
    }
    let done = generation::collect_choices(&mut handles).await?;
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(index, done)| {
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
            json!({
                "index": index,
                "message": message,
                "logprobs": logprobs::chat_json(logprobs, &done.logprobs),
                "finish_reason": finish,
            })
        })
        .collect();
    Ok(Json(json!({
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": choices,
        "usage": usage_json(&generation::summed_usage(done.iter().map(|d| d.usage))),
    }))
    .into_response())
}

/// What every chunk of one stream repeats; the stream's [`Encoder`].
struct Reply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The choice the encoder writes now, of `choices`.
    choice: usize,
    choices: usize,
    /// The usage of each finished choice: the usage chunk sums them after the last.
    usages: Vec<Usage>,
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
        self.chunk(
            json!([{ "index": self.choice, "delta": delta, "finish_reason": finish }]),
            None,
        )
    }

    /// A choice's last chunk; after the last choice's, the usage of them all (once, as OpenAI sends it).
    fn end(&mut self, finish: Value, usage: &Usage, out: &mut Vec<Frame>) {
        out.push(self.chunk(
            json!([{ "index": self.choice, "delta": {}, "finish_reason": finish }]),
            None,
        ));
        self.usages.push(*usage);
        if self.include_usage && self.usages.len() >= self.choices {
            let usage = generation::summed_usage(self.usages.iter().copied());
            out.push(self.chunk(json!([]), Some(usage_json(&usage))));
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
        for choice in 0..self.choices {
            self.choice = choice;
            out.push(self.delta(json!({ "role": "assistant", "content": "" }), None));
        }
    }

    fn choice(&mut self, index: usize) {
        self.choice = index;
    }

    fn token(&mut self, text: &str, thinking: bool, logprob: &TokenLogprob, out: &mut Vec<Frame>) {
        // One chunk per token, as OpenAI streams logprobs: the text it made safe to show (maybe none) and its entry.
        let field = if thinking { "reasoning_content" } else { "content" };
        out.push(self.chunk(
            json!([{
                "index": self.choice,
                "delta": { field: text },
                "logprobs": logprobs::chat_json(true, std::slice::from_ref(logprob)),
                "finish_reason": null,
            }]),
            None,
        ));
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

#[cfg(test)]
mod tests {
    use shoal_types::chunk::TopLogprob;

    use super::*;

    fn data(frames: &[Frame]) -> Vec<Value> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Event { data, .. } if data != "[DONE]" => serde_json::from_str(data).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn several_choices_stream_by_index_and_usage_comes_once_summed() {
        let mut reply = Reply {
            id: "chatcmpl-1".into(),
            created: 1,
            model: "m".into(),
            include_usage: true,
            choice: 0,
            choices: 2,
            usages: Vec::new(),
        };
        let mut out = Vec::new();
        reply.open(&mut out);
        reply.choice(1);
        let lp = TokenLogprob {
            bytes: b"Hi".to_vec(),
            logprob: -0.25,
            top: vec![TopLogprob {
                token: "Hi".into(),
                token_id: 7,
                logprob: -0.25,
                bytes: b"Hi".to_vec(),
            }],
        };
        reply.token("Hi", false, &lp, &mut out);
        let usage = |completion_tokens| Usage {
            prompt_tokens: 5,
            completion_tokens,
            total_tokens: 5 + completion_tokens,
            ..Usage::default()
        };
        reply.finish(FinishReason::Length, &usage(3), &mut out);
        reply.choice(0);
        reply.finish(FinishReason::Stop, &usage(4), &mut out);
        let chunks = data(&out);
        assert_eq!(
            chunks.len(),
            6,
            "two role deltas, a token, two finishes, one usage: {chunks:?}"
        );
        assert_eq!(chunks[0]["choices"][0]["index"], 0);
        assert_eq!(chunks[1]["choices"][0]["index"], 1);
        let token = &chunks[2]["choices"][0];
        assert_eq!(token["index"], 1);
        assert_eq!(token["delta"]["content"], "Hi");
        assert_eq!(
            token["logprobs"]["content"][0]["top_logprobs"][0]["bytes"],
            json!([72, 105])
        );
        assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[4]["choices"][0]["index"], 0);
        assert!(chunks[3].get("usage").is_none() && chunks[4].get("usage").is_none());
        assert_eq!(
            chunks[5]["usage"],
            json!({"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12,
                "completion_tokens_details": {"reasoning_tokens": 0}})
        );
    }
}
