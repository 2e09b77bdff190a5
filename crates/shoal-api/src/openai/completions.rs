//! `POST /v1/completions` (§11.1): OpenAI (legacy) Completions. The prompt goes to the model as is, without the chat
//! template ([`GenerationParams::raw_prompt`]); the answer is a `text_completion` object, or with `stream` SSE chunks
//! of the same object carrying `choices[0].text` pieces, a last chunk with the `finish_reason`, a usage chunk when
//! `stream_options.include_usage`, and `data: [DONE]`. A stream that fails after its headers ends with
//! `data: {"error":…}` and `data: [DONE]`, as Chat Completions does.
//!
//! Mapped: `model`, `prompt` (a string, or a list of exactly one string), `max_tokens` (16 when unset, OpenAI's
//! default for this endpoint), the sampling fields Chat Completions reads (`temperature`, `top_p`, `seed`, `stop`,
//! `presence_penalty`, `frequency_penalty`, and the extensions `top_k`, `min_p`, `repetition_penalty`), `stream`,
//! `stream_options.include_usage`, `n` (1–8 choices, [`crate::logprobs::MAX_CHOICES`]), `logprobs` (0–5: the legacy
//! `{tokens, token_logprobs, top_logprobs, text_offset}` lists). Accepted and ignored: `user`, `logit_bias`.
//! Refused with a 400 naming the field: several prompts or token arrays, `best_of` over 1, `echo: true`, `suffix`.

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_types::chunk::{FinishReason, Usage};
use shoal_types::params::{GenerationParams, ToolCall};

use super::chat_request::sampling;
use super::{finish_text, usage_json};
use crate::error::{ApiError, BadRequest, Dialect};
use crate::fields;
use crate::generation::{self, Encoder, Frame, Wire};
use crate::logprobs::TokenLogprob;
use crate::streams::{StreamHandle, unix_ms};
use crate::{Api, read_body};

/// OpenAI's `max_tokens` default for Completions (Chat Completions has none).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// What the adapter needs besides [`GenerationParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in responses).
    pub model_name: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (`n`).
    pub n: u32,
}

/// Parses the body's JSON. The model is resolved later (unknown → 404).
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, BadRequest> {
    let obj = fields::object(body)?;
    let model_name = fields::model(&obj)?;
    let mut params = GenerationParams {
        model: shoal_types::ModelId::new(model_name.clone()),
        raw_prompt: Some(prompt(&obj)?),
        ..GenerationParams::default()
    };
    params.max_output_tokens = Some(fields::opt_token_limit(&obj, "max_tokens")?.unwrap_or(DEFAULT_MAX_TOKENS));
    sampling(&obj, &mut params)?;
    refuse_unsupported(&obj)?;
    let n = crate::logprobs::choices(&obj)?;
    crate::logprobs::parse_completions_field(&obj, &mut params)?;
    let stream = fields::opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match fields::opt_object(&obj, "stream_options")? {
        None => false,
        Some(o) => fields::opt_bool(o, "include_usage")
            .map_err(|e| e.within("stream_options"))?
            .unwrap_or(false),
    };
    Ok(CompletionRequest {
        params,
        model_name,
        stream,
        include_usage,
        n,
    })
}

/// `prompt`: one non-empty string, alone or in a list of one.
fn prompt(obj: &Map<String, Value>) -> Result<String, BadRequest> {
    let text = match obj.get("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(items)) => match items.as_slice() {
            [Value::String(s)] => s,
            [_] => return Err(BadRequest::new("prompt", "token arrays are not supported; send text")),
            _ => {
                return Err(BadRequest::new(
                    "prompt",
                    "exactly one prompt is supported (a string, or a list of one string)",
                ));
            }
        },
        None | Some(Value::Null) => return Err(BadRequest::new("prompt", "is required")),
        Some(_) => return Err(BadRequest::new("prompt", "must be a string or a list of one string")),
    };
    // An empty prompt gives the model nothing to continue (OpenAI's models start from their end-of-text token).
    if text.is_empty() {
        return Err(BadRequest::new("prompt", "must not be empty"));
    }
    Ok(text.clone())
}

/// The fields whose meaning shoal cannot honour: a 400 rather than an answer that ignores them.
fn refuse_unsupported(obj: &Map<String, Value>) -> Result<(), BadRequest> {
    match obj.get("best_of") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(BadRequest::new("best_of", "only best_of = 1 is supported")),
    }
    if fields::opt_bool(obj, "echo")? == Some(true) {
        return Err(BadRequest::new("echo", "echoing the prompt is not supported"));
    }
    match fields::opt_string(obj, "suffix")? {
        Some(suffix) if !suffix.is_empty() => Err(BadRequest::new("suffix", "a suffix (insertion) is not supported")),
        _ => Ok(()),
    }
}

pub async fn create(AxumState(api): AxumState<Api>, request: Request) -> Response {
    match answer(api, request).await {
        Ok(response) => response,
        Err(e) => Dialect::OpenAi.error_response(&e),
    }
}

async fn answer(api: Api, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let req = parse_completion(&body)?;
    let logprobs = req.params.logprobs;
    let started = generation::start_choices(&api, req.params, req.n).await?;
    let mut handles: Vec<StreamHandle> = started.into_iter().map(|s| s.handle).collect();
    let mut reply = Reply {
        id: format!(
            "cmpl-{}",
            handles.first().map(|h| h.command_id.to_string()).unwrap_or_default()
        ),
        created: unix_ms() / 1000,
        model: req.model_name,
        include_usage: req.include_usage,
        choice: 0,
        usages: Vec::new(),
        offsets: vec![0; handles.len()],
        logprobs,
    };
    if req.stream {
        return Ok(generation::stream_choices(handles, reply).await);
    }
    let done = generation::collect_choices(&mut handles).await?;
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(index, done)| {
            reply.choice = index;
            reply.choice_json(&done.text, &done.logprobs, Some(done.finish()))
        })
        .collect();
    let mut body = reply.shell(Value::from(choices));
    body["usage"] = usage_json(&generation::summed_usage(done.iter().map(|d| d.usage)));
    Ok(Json(body).into_response())
}

/// What every chunk of one stream repeats; the stream's [`Encoder`].
struct Reply {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The choice written now; per choice, where its next token starts in its text (legacy `text_offset`).
    choice: usize,
    offsets: Vec<usize>,
    /// The usage of each finished choice: the usage chunk sums them after the last.
    usages: Vec<Usage>,
    logprobs: bool,
}

impl Reply {
    /// One entry of `choices`, for the whole answer or one chunk of a stream (the same shape).
    fn choice_json(&mut self, text: &str, logprobs: &[TokenLogprob], finish: Option<FinishReason>) -> Value {
        let offset = self.offsets.get(self.choice).copied().unwrap_or(0);
        let lp = crate::logprobs::completions_json(self.logprobs, logprobs, offset);
        if let Some(at) = self.offsets.get_mut(self.choice) {
            *at += logprobs.iter().map(|l| l.token().chars().count()).sum::<usize>();
        }
        json!({
            "text": text,
            "index": self.choice,
            "logprobs": lp,
            "finish_reason": finish.map(finish_text),
        })
    }

    /// A stream's chunk: one choice's piece.
    fn object(&mut self, text: &str, logprobs: &[TokenLogprob], finish: Option<FinishReason>) -> Value {
        let choice = self.choice_json(text, logprobs, finish);
        self.shell(json!([choice]))
    }

    fn shell(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

impl Encoder for Reply {
    fn wire(&self) -> Wire {
        Wire::Sse
    }

    fn dialect(&self) -> Dialect {
        Dialect::OpenAi
    }

    fn open(&mut self, _out: &mut Vec<Frame>) {
        // Completions has no role chunk: the first chunk carries text.
    }

    fn text(&mut self, text: &str, _thinking: bool, out: &mut Vec<Frame>) {
        // A raw prompt has no template to mark reasoning, so all text is the completion's.
        out.push(Frame::data(self.object(text, &[], None).to_string()));
    }

    fn token(&mut self, text: &str, _thinking: bool, logprob: &TokenLogprob, out: &mut Vec<Frame>) {
        let body = self.object(text, std::slice::from_ref(logprob), None);
        out.push(Frame::data(body.to_string()));
    }

    fn choice(&mut self, index: usize) {
        self.choice = index;
    }

    /// Completions take no tools, so no call is ever parsed; the end is written as a plain stop.
    fn tool_calls(&mut self, _calls: &[ToolCall], usage: &Usage, out: &mut Vec<Frame>) {
        self.finish(FinishReason::Stop, usage, out);
    }

    fn finish(&mut self, finish: FinishReason, usage: &Usage, out: &mut Vec<Frame>) {
        out.push(Frame::data(self.object("", &[], Some(finish)).to_string()));
        self.usages.push(*usage);
        if self.include_usage && self.usages.len() >= self.offsets.len() {
            let mut body = self.shell(json!([]));
            body["usage"] = usage_json(&generation::summed_usage(self.usages.iter().copied()));
            out.push(Frame::data(body.to_string()));
        }
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
    use axum::http::StatusCode;

    use super::*;

    fn parse(body: &str) -> Result<CompletionRequest, BadRequest> {
        parse_completion(body.as_bytes())
    }

    #[test]
    fn a_full_request_maps_every_field() {
        let r = parse(
            r#"{"model":"smollm2-135m","prompt":["Once upon"],"max_tokens":7,"temperature":0.5,"top_p":0.9,
                "seed":42,"stop":["END","\n\n"],"presence_penalty":0.1,"frequency_penalty":0.2,"top_k":40,
                "n":1,"best_of":1,"echo":false,"logprobs":null,"suffix":null,"user":"u","logit_bias":{},
                "stream":true,"stream_options":{"include_usage":true}}"#,
        )
        .expect("valid");
        let p = &r.params;
        assert_eq!(p.raw_prompt.as_deref(), Some("Once upon"));
        assert!(p.messages.is_empty(), "no chat template: no messages");
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.stop, vec!["END".to_string(), "\n\n".to_string()]);
        assert_eq!(p.presence_penalty, Some(0.1));
        assert_eq!(p.frequency_penalty, Some(0.2));
        assert_eq!(p.top_k, Some(40));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.model_name, "smollm2-135m");
    }

    #[test]
    fn max_tokens_defaults_to_openais_16() {
        let r = parse(r#"{"model":"m","prompt":"Hi"}"#).expect("valid");
        assert_eq!(r.params.max_output_tokens, Some(DEFAULT_MAX_TOKENS));
        assert_eq!(r.params.raw_prompt.as_deref(), Some("Hi"));
        assert!(!r.stream && !r.include_usage);
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            ("{", "body"),
            (r#"{"prompt":"x"}"#, "model"),
            (r#"{"model":"m"}"#, "prompt"),
            (r#"{"model":"m","prompt":""}"#, "prompt"),
            (r#"{"model":"m","prompt":["a","b"]}"#, "prompt"),
            (r#"{"model":"m","prompt":[]}"#, "prompt"),
            (r#"{"model":"m","prompt":[1,2,3]}"#, "prompt"),
            (r#"{"model":"m","prompt":[[1,2]]}"#, "prompt"),
            (r#"{"model":"m","prompt":5}"#, "prompt"),
            (r#"{"model":"m","prompt":"x","max_tokens":0}"#, "max_tokens"),
            (r#"{"model":"m","prompt":"x","max_tokens":"9"}"#, "max_tokens"),
            (r#"{"model":"m","prompt":"x","temperature":3}"#, "temperature"),
            (r#"{"model":"m","prompt":"x","top_p":0}"#, "top_p"),
            (r#"{"model":"m","prompt":"x","stop":[1]}"#, "stop[0]"),
            (r#"{"model":"m","prompt":"x","seed":"s"}"#, "seed"),
            (r#"{"model":"m","prompt":"x","presence_penalty":5}"#, "presence_penalty"),
            (
                r#"{"model":"m","prompt":"x","frequency_penalty":-5}"#,
                "frequency_penalty",
            ),
            (r#"{"model":"m","prompt":"x","n":9}"#, "n"),
            (r#"{"model":"m","prompt":"x","best_of":3}"#, "best_of"),
            (r#"{"model":"m","prompt":"x","echo":true}"#, "echo"),
            (r#"{"model":"m","prompt":"x","echo":"no"}"#, "echo"),
            (r#"{"model":"m","prompt":"x","logprobs":6}"#, "logprobs"),
            (r#"{"model":"m","prompt":"x","suffix":"end"}"#, "suffix"),
            (r#"{"model":"m","prompt":"x","stream":1}"#, "stream"),
            (
                r#"{"model":"m","prompt":"x","stream_options":{"include_usage":"y"}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    fn reply(include_usage: bool) -> Reply {
        Reply {
            id: "cmpl-1".into(),
            created: 1,
            model: "smollm2-135m".into(),
            include_usage,
            choice: 0,
            offsets: vec![0],
            usages: Vec::new(),
            logprobs: false,
        }
    }

    fn data(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Event { name: None, data } => data.clone(),
                other => panic!("an unnamed data event: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_stream_writes_text_chunks_then_the_finish_the_usage_and_done() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            cached_tokens: 0,
            reasoning_tokens: 0,
        };
        let mut r = reply(true);
        let mut out = Vec::new();
        r.open(&mut out);
        r.text("Hel", false, &mut out);
        r.text("lo", false, &mut out);
        r.finish(FinishReason::Length, &usage, &mut out);
        r.done(&mut out);
        let data = data(&out);
        assert_eq!(data.len(), 5, "{data:?}");
        assert_eq!(data[4], "[DONE]");
        let chunks: Vec<Value> = data[..4]
            .iter()
            .map(|d| serde_json::from_str(d).expect("JSON"))
            .collect();
        for c in &chunks {
            assert_eq!(c["object"], "text_completion");
            assert_eq!(c["id"], "cmpl-1");
        }
        assert_eq!(chunks[0]["choices"][0]["text"], "Hel");
        assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
        assert_eq!(chunks[1]["choices"][0]["text"], "lo");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "length");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["completion_tokens"], 2);

        let mut r = reply(false);
        let mut out = Vec::new();
        r.finish(FinishReason::Stop, &usage, &mut out);
        assert_eq!(out.len(), 1, "no usage chunk unless asked");
    }

    #[test]
    fn a_late_failure_writes_an_error_then_done() {
        let mut r = reply(false);
        let mut out = Vec::new();
        r.text("Hel", false, &mut out);
        let error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "instance_unavailable", "deleted");
        r.fail(&error, &mut out);
        let data = data(&out);
        let error: Value = serde_json::from_str(&data[1]).expect("JSON");
        assert_eq!(error["error"]["code"], "instance_unavailable");
        assert_eq!(data[2], "[DONE]");
    }

    #[test]
    fn the_whole_answer_has_the_official_shape() {
        let usage = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
            cached_tokens: 0,
            reasoning_tokens: 0,
        };
        let mut body = reply(false).object("Hello", &[], Some(FinishReason::Stop));
        body["usage"] = usage_json(&usage);
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Hello");
        assert_eq!(body["choices"][0]["index"], 0);
        assert_eq!(body["choices"][0]["logprobs"], Value::Null);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["total_tokens"], 5);
    }
}
