//! `POST /v1/responses` (§11.1): OpenAI Responses, the API Codex speaks. The request is parsed by
//! [`super::responses_request`] (which lists the fields mapped, echoed, ignored and refused); the answer is a
//! Response object, or with `stream` its server-sent events (each `event: <type>` with a JSON `data` holding the same
//! `type` and a `sequence_number` counting from 0):
//!
//! `response.created`, `response.in_progress`, then per output item `response.output_item.added`,
//! `response.content_part.added`, the text deltas (`response.output_text.delta`, or `response.reasoning_text.delta`
//! for text the model marked as reasoning, in a `reasoning` item before the message), `response.output_text.done`,
//! `response.content_part.done`, `response.output_item.done`; last `response.completed`, or `response.incomplete`
//! when the output hit `max_output_tokens`, carrying the whole Response. A stream that fails after its headers ends
//! with `response.failed`, whose Response has `status: "failed"` and `error: {code, message}` (SYSTEM.md §11.3).
//! Responses are not stored (`store` is always false).

use axum::Json;
use axum::extract::{Request, State as AxumState};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_types::chunk::{FinishReason, Usage};
use shoal_types::params::ToolChoice;

use super::responses_events::{Events, Item, Kind};
use super::responses_request::parse_responses;
use crate::error::{ApiError, Dialect};
use crate::generation;
use crate::logprobs::entry_json;
use crate::streams::unix_ms;
use crate::{Api, read_body};

pub async fn create(AxumState(api): AxumState<Api>, request: Request) -> Response {
    match answer(api, request).await {
        Ok(response) => response,
        Err(e) => Dialect::OpenAi.error_response(&e),
    }
}

async fn answer(api: Api, request: Request) -> Result<Response, ApiError> {
    let body = read_body(request).await?;
    let req = parse_responses(&body)?;
    let p = &req.params;
    let (instructions, max_output_tokens) = (p.instructions.clone(), p.max_output_tokens);
    let (temperature, top_p, effort) = (p.temperature, p.top_p, p.reasoning_effort.clone());
    let logprobs = req.params.logprobs;
    let (tools, tool_choice) = (flat_tools(p.tools.as_deref()), choice_json(&p.tool_choice));
    let started = generation::start(&api, req.params).await?;
    let defaults = &started.card.sampling_defaults;
    let shape = Shape {
        id: started.handle.command_id.0.simple().to_string(),
        created_at: unix_ms() / 1000,
        model: req.model_name,
        instructions,
        max_output_tokens,
        // The values the model samples with: the request's, else the card's defaults.
        temperature: temperature.or(defaults.temperature),
        top_p: top_p.or(defaults.top_p),
        reasoning_effort: effort,
        metadata: req.metadata,
        parallel_tool_calls: req.parallel_tool_calls,
        truncation: req.truncation,
        user: req.user,
        tools,
        tool_choice,
    };
    if req.stream {
        let mut events = Events::new(shape);
        events.logprobs = logprobs;
        return Ok(generation::stream(started.handle, events).await);
    }
    let mut handle = started.handle;
    let done = generation::collect(&mut handle).await?;
    let (status, incomplete) = outcome(done.finish());
    let item_status = if incomplete.is_some() {
        "incomplete"
    } else {
        "completed"
    };
    let mut output = Vec::new();
    if !done.reasoning.is_empty() {
        output.push(Item::new(Kind::Reasoning, &shape.id, done.reasoning.clone()).json(item_status));
    }
    if done.tool_calls.is_empty() || !done.text.is_empty() {
        let mut message = Item::new(Kind::Message, &shape.id, done.text.clone());
        if logprobs {
            message.logprobs = Some(done.logprobs.iter().map(entry_json).collect());
        }
        output.push(message.json(item_status));
    }
    output.extend(done.tool_calls.iter().map(|c| Item::call(c).json("completed")));
    Ok(Json(shape.response(status, output, Some(&done.usage), incomplete, None)).into_response())
}

/// The Response's status and `incomplete_details.reason` for a finish reason.
pub(super) fn outcome(finish: FinishReason) -> (&'static str, Option<&'static str>) {
    match finish {
        FinishReason::Stop | FinishReason::StopSequence(_) => ("completed", None),
        // The length limit is almost always `max_output_tokens`; a full context is reported the same way.
        FinishReason::Length => ("incomplete", Some("max_output_tokens")),
        FinishReason::ContentFilter => ("incomplete", Some("content_filter")),
    }
}

/// An `f32` as the JSON number it was written as (`0.9`, not `0.8999999761581421`).
fn number(x: f32) -> Value {
    x.to_string().parse::<f64>().map_or(Value::Null, Value::from)
}

/// `usage` as Responses writes it.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": { "cached_tokens": usage.cached_tokens, "cache_write_tokens": 0 },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": { "reasoning_tokens": usage.reasoning_tokens },
        "total_tokens": usage.total_tokens,
    })
}

/// What every Response object of one request repeats.
pub(super) struct Shape {
    /// The command id, which the response, message and reasoning ids are made from.
    pub(super) id: String,
    pub(super) created_at: u64,
    pub(super) model: String,
    pub(super) instructions: Option<String>,
    pub(super) max_output_tokens: Option<u32>,
    pub(super) temperature: Option<f32>,
    pub(super) top_p: Option<f32>,
    pub(super) reasoning_effort: Option<String>,
    pub(super) metadata: Map<String, Value>,
    pub(super) parallel_tool_calls: bool,
    pub(super) truncation: String,
    pub(super) user: Option<String>,
    /// The request's tools in Responses' flat shape, and its `tool_choice`, echoed.
    pub(super) tools: Value,
    pub(super) tool_choice: Value,
}

/// OpenAI's function list (as parsed) in Responses' flat shape.
fn flat_tools(tools: Option<&str>) -> Value {
    let list = tools
        .and_then(|t| serde_json::from_str::<Value>(t).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    list.iter()
        .map(|t| {
            let f = &t["function"];
            json!({
                "type": "function", "name": f["name"], "description": f.get("description"),
                "parameters": f["parameters"], "strict": false,
            })
        })
        .collect()
}

fn choice_json(choice: &ToolChoice) -> Value {
    match choice {
        ToolChoice::Auto => json!("auto"),
        ToolChoice::None => json!("none"),
        ToolChoice::Required => json!("required"),
        ToolChoice::Function(name) => json!({ "type": "function", "name": name }),
    }
}

impl Shape {
    pub(super) fn response(
        &self,
        status: &str,
        output: Vec<Value>,
        usage: Option<&Usage>,
        incomplete: Option<&str>,
        error: Option<&ApiError>,
    ) -> Value {
        let finished = status != "in_progress";
        json!({
            "id": format!("resp_{}", self.id),
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": if finished { Value::from(unix_ms() / 1000) } else { Value::Null },
            "background": false,
            "error": error.map_or(Value::Null, |e| json!({ "code": e.code, "message": e.message })),
            "incomplete_details": incomplete.map_or(Value::Null, |reason| json!({ "reason": reason })),
            "instructions": self.instructions,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": self.parallel_tool_calls,
            "previous_response_id": null,
            "reasoning": { "effort": self.reasoning_effort, "summary": null },
            "store": false,
            "temperature": self.temperature.map_or(Value::Null, number),
            "text": { "format": { "type": "text" } },
            "tool_choice": self.tool_choice,
            "tools": self.tools,
            "top_p": self.top_p.map_or(Value::Null, number),
            "truncation": self.truncation,
            "usage": usage.map_or(Value::Null, usage_json),
            "user": self.user,
        })
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use shoal_types::params::ToolCall;

    use crate::generation::{Encoder, Frame};

    fn shape() -> Shape {
        Shape {
            id: "abc".into(),
            created_at: 1,
            model: "smollm2-135m".into(),
            instructions: Some("be brief".into()),
            max_output_tokens: Some(8),
            temperature: Some(0.9),
            top_p: None,
            reasoning_effort: None,
            metadata: Map::from_iter([("k".to_string(), Value::from("v"))]),
            parallel_tool_calls: true,
            truncation: "disabled".into(),
            user: None,
            tools: flat_tools(Some(
                r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]"#,
            )),
            tool_choice: choice_json(&ToolChoice::Required),
        }
    }

    #[test]
    fn tool_calls_stream_as_function_call_items() {
        let mut events = Events::new(shape());
        let mut out = Vec::new();
        events.open(&mut out);
        let call = ToolCall {
            id: "call_1".into(),
            name: "f".into(),
            arguments: r#"{"a":1}"#.into(),
        };
        events.tool_calls(std::slice::from_ref(&call), &usage(), &mut out);
        let names: Vec<String> = out
            .iter()
            .filter_map(|f| match f {
                Frame::Event { name: Some(n), .. } => Some(n.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            names[2..],
            [
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let Some(Frame::Event { data, .. }) = out.last() else {
            panic!("no events")
        };
        let done: Value = serde_json::from_str(data).expect("json");
        let item = &done["response"]["output"][0];
        assert_eq!(item["type"], "function_call");
        assert_eq!(item["call_id"], "call_1");
        assert_eq!(item["arguments"], r#"{"a":1}"#);
        assert_eq!(done["response"]["tools"][0]["name"], "f");
        assert_eq!(done["response"]["tool_choice"], "required");
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 5,
            completion_tokens: 3,
            total_tokens: 8,
            cached_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// The events as (type, data), checking the SSE name matches `type` and sequence numbers count from 0.
    fn events(frames: &[Frame]) -> Vec<(String, Value)> {
        let mut seen = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let Frame::Event { name: Some(name), data } = frame else {
                panic!("a named event: {frame:?}");
            };
            let data: Value = serde_json::from_str(data).expect("JSON");
            assert_eq!(data["type"], *name);
            assert_eq!(data["sequence_number"], i, "{data}");
            seen.push((name.to_string(), data));
        }
        seen
    }

    fn names(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_stream_writes_every_event_in_order_with_increasing_sequence_numbers() {
        let mut e = Events::new(shape());
        let mut out = Vec::new();
        e.open(&mut out);
        e.text("Hel", false, &mut out);
        e.text("lo", false, &mut out);
        e.finish(FinishReason::Stop, &usage(), &mut out);
        e.done(&mut out);
        let events = events(&out);
        assert_eq!(
            names(&events),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let created = &events[0].1["response"];
        assert_eq!(created["status"], "in_progress");
        assert_eq!(created["output"], json!([]));
        assert_eq!(created["id"], "resp_abc");
        assert_eq!(events[2].1["item"]["id"], "msg_abc");
        assert_eq!(events[2].1["item"]["content"], json!([]));
        assert_eq!(events[4].1["delta"], "Hel");
        assert_eq!(events[4].1["item_id"], "msg_abc");
        assert_eq!(events[4].1["output_index"], 0);
        assert_eq!(events[6].1["text"], "Hello");
        assert_eq!(events[7].1["part"]["text"], "Hello");
        assert_eq!(events[8].1["item"]["status"], "completed");
        let done = &events[9].1["response"];
        assert_eq!(done["status"], "completed");
        assert_eq!(done["incomplete_details"], Value::Null);
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(done["usage"]["input_tokens"], 5);
        assert_eq!(done["usage"]["output_tokens"], 3);
        assert_eq!(done["usage"]["total_tokens"], 8);
        assert_eq!(done["metadata"]["k"], "v");
        assert_eq!(done["temperature"], json!(0.9));
        assert_eq!(done["instructions"], "be brief");
        assert_eq!(done["max_output_tokens"], 8);
        assert_eq!(done["error"], Value::Null);
    }

    #[test]
    fn reasoning_comes_in_its_own_item_before_the_message() {
        let mut e = Events::new(shape());
        let mut out = Vec::new();
        e.open(&mut out);
        e.text("hmm", true, &mut out);
        e.text("Hi", false, &mut out);
        e.finish(FinishReason::Length, &usage(), &mut out);
        let events = events(&out);
        assert_eq!(
            names(&events)[2..],
            [
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.incomplete",
            ]
        );
        assert_eq!(events[2].1["item"]["type"], "reasoning");
        assert_eq!(events[4].1["item_id"], "rs_abc");
        assert_eq!(events[10].1["output_index"], 1);
        let done = &events[14].1["response"];
        assert_eq!(done["status"], "incomplete");
        assert_eq!(done["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(done["output"][0]["content"][0]["text"], "hmm");
        assert_eq!(done["output"][1]["content"][0]["text"], "Hi");
        assert_eq!(done["output"][1]["status"], "incomplete");
    }

    #[test]
    fn an_empty_answer_still_has_its_message() {
        let mut e = Events::new(shape());
        let mut out = Vec::new();
        e.open(&mut out);
        e.finish(FinishReason::Stop, &usage(), &mut out);
        let events = events(&out);
        assert_eq!(names(&events).len(), 8, "no delta, every other event");
        assert_eq!(events[7].1["response"]["output"][0]["content"][0]["text"], "");
    }

    #[test]
    fn a_late_failure_ends_with_response_failed() {
        let mut e = Events::new(shape());
        let mut out = Vec::new();
        e.open(&mut out);
        e.text("Hel", false, &mut out);
        let error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "instance_unavailable",
            "instance deleted",
        );
        e.fail(&error, &mut out);
        let events = events(&out);
        let (name, failed) = events.last().expect("events");
        assert_eq!(name, "response.failed");
        assert_eq!(failed["response"]["status"], "failed");
        assert_eq!(failed["response"]["error"]["code"], "instance_unavailable");
        assert_eq!(failed["response"]["error"]["message"], "instance deleted");
        assert_eq!(failed["response"]["output"][0]["status"], "incomplete");
        assert_eq!(failed["response"]["output"][0]["content"][0]["text"], "Hel");
    }

    #[test]
    fn the_response_object_has_the_official_fields() {
        let r = shape().response(
            "completed",
            vec![Item::new(Kind::Message, "abc", "Hi".into()).json("completed")],
            Some(&usage()),
            None,
            None,
        );
        for field in [
            "id",
            "object",
            "created_at",
            "status",
            "error",
            "incomplete_details",
            "instructions",
            "metadata",
            "model",
            "output",
            "parallel_tool_calls",
            "temperature",
            "tool_choice",
            "tools",
            "top_p",
            "usage",
        ] {
            assert!(r.get(field).is_some(), "{field} in {r}");
        }
        assert_eq!(r["object"], "response");
        assert_eq!(r["store"], false);
        assert_eq!(r["output"][0]["role"], "assistant");
        assert_eq!(r["output"][0]["content"][0]["annotations"], json!([]));
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 0);
        assert_eq!(r["usage"]["output_tokens_details"]["reasoning_tokens"], 0);
    }
}
