//! OpenAI Responses request → [`GenerationParams`] (SYSTEM.md §2.3, §11.2 step 1), field by field so a wrong type or
//! value is a 400 naming the field (`input[1].content[0].type`, `max_output_tokens`).
//!
//! Mapped: `model`, `input` (a string, or message items with string or `input_text`/`output_text` parts; roles
//! user, assistant, system, developer; `type: "message"` optional), `instructions`, `max_output_tokens`,
//! `temperature`, `top_p` (plus the extensions Chat Completions reads: `top_k`, `min_p`, penalties, `seed`, `stop`),
//! `stream`, `reasoning.effort`, `include: ["message.output_text.logprobs"]` and `top_logprobs` (logprobs on the
//! message's `output_text`, [`crate::logprobs::parse_responses_fields`]).
//! Echoed in the Response object, otherwise ignored: `metadata`, `truncation` (a prompt over
//! the context is always a 400, so `auto` never has to drop anything it could drop), `user`.
//! Tools: `tools` of type `function`, `tool_choice`, `parallel_tool_calls` (also echoed), and `function_call`/`function_call_output` items in `input`.
//! Accepted and ignored: other `include` entries, `reasoning.summary`, `text.verbosity`, `service_tier`,
//! `prompt_cache_key`, `safety_identifier`, `max_tool_calls`, and `reasoning` items in `input`
//! (a client that manages its own context sends them back; the template has no place for them).
//! Refused with a 400 naming the field: `store: true` and `background: true` (nothing is stored),
//! `previous_response_id`, `conversation` and `prompt` (they need stored state), tools of other types,
//! `input_image`/`input_file`/`input_audio` parts (no served model takes them). `text.format` `json_object` /
//! `json_schema` constrain the answer (`structured.rs`).

use serde_json::{Map, Value};
use shoal_types::params::{GenerationParams, Message, Role, ToolCall};

use super::chat_request::sampling;
use crate::error::BadRequest;
use crate::fields;
use crate::tools::{self, ToolShape};

/// OpenAI's limits on `metadata`: at most 16 pairs, keys of at most 64 characters, values of at most 512.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY_CHARS: usize = 64;
pub const MAX_METADATA_VALUE_CHARS: usize = 512;

/// What the adapter needs besides [`GenerationParams`]: the fields the Response object echoes.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesRequest {
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in responses).
    pub model_name: String,
    pub stream: bool,
    /// `metadata`, echoed (an empty object when absent).
    pub metadata: Map<String, Value>,
    pub parallel_tool_calls: bool,
    /// `truncation` as sent (`disabled` when absent, OpenAI's default).
    pub truncation: String,
    pub user: Option<String>,
}

/// Parses the body's JSON. The model is resolved later (unknown → 404).
pub fn parse_responses(body: &[u8]) -> Result<ResponsesRequest, BadRequest> {
    let obj = fields::object(body)?;
    let model_name = fields::model(&obj)?;
    refuse_stateful(&obj)?;
    let mut params = GenerationParams {
        model: shoal_types::ModelId::new(model_name.clone()),
        messages: input(&obj)?,
        ..GenerationParams::default()
    };
    params.instructions = fields::opt_string(&obj, "instructions")?;
    params.max_output_tokens = fields::opt_token_limit(&obj, "max_output_tokens")?;
    sampling(&obj, &mut params)?;
    crate::logprobs::parse_responses_fields(&obj, &mut params)?;
    params.tools = tools::read_tools(&obj, ToolShape::Flat)?;
    params.tool_choice = tools::openai_choice(&obj)?;
    tools::check_choice(&params.tool_choice, params.tools.as_deref(), "tool_choice")?;
    params.single_tool_call = tools::openai_single_call(&obj)?;
    if let Some(reasoning) = fields::opt_object(&obj, "reasoning")? {
        params.reasoning_effort = fields::opt_string(reasoning, "effort").map_err(|e| e.within("reasoning"))?;
    }
    if let Some(text) = fields::opt_object(&obj, "text")? {
        let format = fields::opt_object(text, "format").map_err(|e| e.within("text"))?;
        if let Some(format) = format {
            params.constraint = crate::structured::text_format(format)?;
        }
    }
    let truncation = match fields::opt_string(&obj, "truncation")? {
        None => "disabled".to_string(),
        Some(t) if t == "auto" || t == "disabled" => t,
        Some(t) => {
            return Err(BadRequest::new(
                "truncation",
                format!("`{t}` is not one of auto, disabled"),
            ));
        }
    };
    Ok(ResponsesRequest {
        params,
        model_name,
        stream: fields::opt_bool(&obj, "stream")?.unwrap_or(false),
        metadata: metadata(&obj)?,
        parallel_tool_calls: fields::opt_bool(&obj, "parallel_tool_calls")?.unwrap_or(true),
        truncation,
        user: fields::opt_string(&obj, "user")?,
    })
}

/// The fields that need responses stored between requests, which this server does not keep.
fn refuse_stateful(obj: &Map<String, Value>) -> Result<(), BadRequest> {
    // OpenAI's default for `store` is true, but clients leave it out: absent is taken as false.
    if fields::opt_bool(obj, "store")? == Some(true) {
        return Err(BadRequest::new(
            "store",
            "stored responses are not supported; send `store: false` or leave it out",
        ));
    }
    if fields::opt_bool(obj, "background")? == Some(true) {
        return Err(BadRequest::new(
            "background",
            "background responses are not supported (they need stored responses)",
        ));
    }
    for name in ["previous_response_id", "conversation", "prompt"] {
        if obj.get(name).is_some_and(|v| !v.is_null()) {
            return Err(BadRequest::new(
                name,
                "stored responses are not supported; send the whole conversation in `input`",
            ));
        }
    }
    Ok(())
}

fn metadata(obj: &Map<String, Value>) -> Result<Map<String, Value>, BadRequest> {
    let Some(metadata) = fields::opt_object(obj, "metadata")? else {
        return Ok(Map::new());
    };
    if metadata.len() > MAX_METADATA_PAIRS {
        return Err(BadRequest::new(
            "metadata",
            format!("at most {MAX_METADATA_PAIRS} pairs"),
        ));
    }
    for (key, value) in metadata {
        if key.chars().count() > MAX_METADATA_KEY_CHARS {
            return Err(BadRequest::new(
                "metadata",
                format!("keys are at most {MAX_METADATA_KEY_CHARS} characters"),
            ));
        }
        match value {
            Value::String(s) if s.chars().count() <= MAX_METADATA_VALUE_CHARS => {}
            Value::String(_) => {
                return Err(BadRequest::new(
                    format!("metadata.{key}"),
                    format!("at most {MAX_METADATA_VALUE_CHARS} characters"),
                ));
            }
            _ => return Err(BadRequest::new(format!("metadata.{key}"), "must be a string")),
        }
    }
    Ok(metadata.clone())
}

/// `input`: a string (one user message) or an array of items.
fn input(obj: &Map<String, Value>) -> Result<Vec<Message>, BadRequest> {
    let items = match obj.get("input") {
        Some(Value::String(text)) => return Ok(vec![Message::new(Role::User, text.clone())]),
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(BadRequest::new("input", "is required")),
        Some(_) => return Err(BadRequest::new("input", "must be a string or an array of items")),
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(BadRequest::new(at, "must be an object"));
        };
        match item.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(t)) => match t.as_str() {
                "message" => {}
                "reasoning" => continue,
                "function_call" => {
                    let call = ToolCall {
                        id: item_string(item, "call_id", &at)?,
                        name: item_string(item, "name", &at)?,
                        arguments: tools::arguments_text(item.get("arguments"), &format!("{at}.arguments"))?,
                    };
                    // Calls follow the assistant turn that made them (parallel calls are consecutive items).
                    match messages.last_mut() {
                        Some(
                            m @ Message {
                                role: Role::Assistant, ..
                            },
                        ) => m.tool_calls.push(call),
                        _ => {
                            let mut m = Message::new(Role::Assistant, "");
                            m.tool_calls.push(call);
                            messages.push(m);
                        }
                    }
                    continue;
                }
                "function_call_output" => {
                    let output = match item.get("output") {
                        Some(Value::String(s)) => s.clone(),
                        Some(v @ (Value::Array(_) | Value::Object(_))) => v.to_string(),
                        _ => return Err(BadRequest::new(format!("{at}.output"), "must be a string")),
                    };
                    let mut m = Message::new(Role::Tool, output);
                    m.tool_call_id = Some(item_string(item, "call_id", &at)?);
                    messages.push(m);
                    continue;
                }
                other => {
                    return Err(BadRequest::new(
                        format!("{at}.type"),
                        format!("`{other}` items are not supported; send `message` items"),
                    ));
                }
            },
            Some(_) => return Err(BadRequest::new(format!("{at}.type"), "must be a string")),
        }
        messages.push(message(item, &at)?);
    }
    if messages.is_empty() {
        return Err(BadRequest::new("input", "must contain at least one message"));
    }
    Ok(messages)
}

fn item_string(item: &Map<String, Value>, name: &str, at: &str) -> Result<String, BadRequest> {
    match item.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(BadRequest::new(format!("{at}.{name}"), "must be a string")),
        None => Err(BadRequest::new(format!("{at}.{name}"), "is required")),
    }
}

fn message(item: &Map<String, Value>, at: &str) -> Result<Message, BadRequest> {
    let role = match item.get("role") {
        Some(Value::String(r)) => match r.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            "developer" => Role::Developer,
            other => {
                return Err(BadRequest::new(
                    format!("{at}.role"),
                    format!("`{other}` is not one of user, assistant, system, developer"),
                ));
            }
        },
        Some(_) => return Err(BadRequest::new(format!("{at}.role"), "must be a string")),
        None => return Err(BadRequest::new(format!("{at}.role"), "is required")),
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let part_at = format!("{at}.content[{j}]");
                let Value::Object(part) = part else {
                    return Err(BadRequest::new(part_at, "must be an object"));
                };
                match part.get("type") {
                    // `refusal` is how an earlier assistant turn may come back; its text is that turn's words.
                    Some(Value::String(t)) if t == "input_text" || t == "output_text" || t == "refusal" => {
                        let key = if t == "refusal" { "refusal" } else { "text" };
                        match part.get(key) {
                            Some(Value::String(s)) => text.push_str(s),
                            _ => return Err(BadRequest::new(format!("{part_at}.{key}"), "must be a string")),
                        }
                    }
                    Some(Value::String(t)) if t == "input_image" || t == "input_file" || t == "input_audio" => {
                        return Err(BadRequest::new(
                            format!("{part_at}.type"),
                            format!("`{t}` parts are not supported: no served model takes them"),
                        ));
                    }
                    Some(Value::String(t)) => {
                        return Err(BadRequest::new(
                            format!("{part_at}.type"),
                            format!("`{t}` is not one of input_text, output_text"),
                        ));
                    }
                    Some(_) => return Err(BadRequest::new(format!("{part_at}.type"), "must be a string")),
                    None => return Err(BadRequest::new(format!("{part_at}.type"), "is required")),
                }
            }
            text
        }
        None | Some(Value::Null) => return Err(BadRequest::new(format!("{at}.content"), "is required")),
        Some(_) => {
            return Err(BadRequest::new(
                format!("{at}.content"),
                "must be a string or an array of parts",
            ));
        }
    };
    Ok(Message::new(role, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ResponsesRequest, BadRequest> {
        parse_responses(body.as_bytes())
    }

    #[test]
    fn a_string_input_is_one_user_message() {
        let r = parse(r#"{"model":"smollm2-135m","input":"hi"}"#).expect("valid");
        assert_eq!(r.params.messages, vec![Message::new(Role::User, "hi")]);
        assert!(!r.stream);
        assert!(r.metadata.is_empty());
        assert!(r.parallel_tool_calls);
        assert_eq!(r.truncation, "disabled");
        assert_eq!(r.params.max_output_tokens, None);
        assert_eq!(r.params.raw_prompt, None);
    }

    #[test]
    fn a_full_request_maps_every_field() {
        let r = parse(
            r#"{"model":"smollm2-135m","instructions":"be brief","input":[
                {"role":"system","content":"sys"},
                {"type":"message","role":"developer","content":[{"type":"input_text","text":"dev"}]},
                {"role":"user","content":[{"type":"input_text","text":"hi "},{"type":"input_text","text":"there"}]},
                {"type":"reasoning","id":"rs_1","summary":[]},
                {"type":"message","role":"assistant","id":"msg_1","status":"completed",
                 "content":[{"type":"output_text","text":"hello","annotations":[]}]},
                {"role":"user","content":"again"}],
                "max_output_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":40,"seed":42,"stream":true,
                "metadata":{"k":"v"},"store":false,"tools":[],"tool_choice":"auto","parallel_tool_calls":false,
                "reasoning":{"effort":"low","summary":"auto"},"text":{"format":{"type":"text"},"verbosity":"low"},
                "user":"u1","truncation":"auto","include":[],"previous_response_id":null,"background":false}"#,
        )
        .expect("valid");
        let p = &r.params;
        let roles: Vec<Role> = p.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::Developer, Role::User, Role::Assistant, Role::User]
        );
        let texts: Vec<&str> = p.messages.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["sys", "dev", "hi there", "hello", "again"]);
        assert_eq!(p.instructions.as_deref(), Some("be brief"));
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.top_p, Some(0.9));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.reasoning_effort.as_deref(), Some("low"));
        assert_eq!(p.tools, None);
        assert!(r.stream);
        assert_eq!(r.metadata.get("k"), Some(&Value::from("v")));
        assert!(!r.parallel_tool_calls);
        assert_eq!(r.truncation, "auto");
        assert_eq!(r.user.as_deref(), Some("u1"));
        assert_eq!(r.model_name, "smollm2-135m");
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            ("{", "body"),
            (r#"{"input":"x"}"#, "model"),
            (r#"{"model":"m"}"#, "input"),
            (r#"{"model":"m","input":5}"#, "input"),
            (r#"{"model":"m","input":[]}"#, "input"),
            (r#"{"model":"m","input":[{"type":"reasoning"}]}"#, "input"),
            (r#"{"model":"m","input":[3]}"#, "input[0]"),
            (
                r#"{"model":"m","input":[{"role":"boss","content":"x"}]}"#,
                "input[0].role",
            ),
            (
                r#"{"model":"m","input":[{"role":"tool","content":"x"}]}"#,
                "input[0].role",
            ),
            (r#"{"model":"m","input":[{"content":"x"}]}"#, "input[0].role"),
            (r#"{"model":"m","input":[{"role":"user"}]}"#, "input[0].content"),
            (
                r#"{"model":"m","input":[{"role":"user","content":7}]}"#,
                "input[0].content",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_image","image_url":"x"}]}]}"#,
                "input[0].content[0].type",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text","text":"a"},{"type":"input_file"}]}]}"#,
                "input[0].content[1].type",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{"type":"input_text"}]}]}"#,
                "input[0].content[0].text",
            ),
            (
                r#"{"model":"m","input":[{"role":"user","content":[{}]}]}"#,
                "input[0].content[0].type",
            ),
            (
                r#"{"model":"m","input":["x",{"type":"function_call","name":"f","arguments":"{}"}]}"#,
                "input[0]",
            ),
            (
                r#"{"model":"m","input":[{"type":"function_call_output","call_id":"c","output":1}]}"#,
                "input[0].output",
            ),
            (
                r#"{"model":"m","input":[{"type":"function_call","name":"f","arguments":"{}"}]}"#,
                "input[0].call_id",
            ),
            (
                r#"{"model":"m","input":[{"type":"item_reference","id":"x"}]}"#,
                "input[0].type",
            ),
            (r#"{"model":"m","input":"x","instructions":3}"#, "instructions"),
            (
                r#"{"model":"m","input":"x","max_output_tokens":0}"#,
                "max_output_tokens",
            ),
            (
                r#"{"model":"m","input":"x","max_output_tokens":"9"}"#,
                "max_output_tokens",
            ),
            (r#"{"model":"m","input":"x","temperature":3}"#, "temperature"),
            (r#"{"model":"m","input":"x","top_p":0}"#, "top_p"),
            (r#"{"model":"m","input":"x","stream":"yes"}"#, "stream"),
            (r#"{"model":"m","input":"x","store":true}"#, "store"),
            (r#"{"model":"m","input":"x","store":"no"}"#, "store"),
            (r#"{"model":"m","input":"x","background":true}"#, "background"),
            (
                r#"{"model":"m","input":"x","previous_response_id":"resp_1"}"#,
                "previous_response_id",
            ),
            (r#"{"model":"m","input":"x","conversation":"conv_1"}"#, "conversation"),
            (r#"{"model":"m","input":"x","prompt":{"id":"p"}}"#, "prompt"),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"function","name":"f","parameters":3}]}"#,
                "tools[0].parameters",
            ),
            (
                r#"{"model":"m","input":"x","tools":[{"type":"web_search"}]}"#,
                "tools[0].type",
            ),
            (r#"{"model":"m","input":"x","tools":{}}"#, "tools"),
            (r#"{"model":"m","input":"x","metadata":[]}"#, "metadata"),
            (r#"{"model":"m","input":"x","metadata":{"k":1}}"#, "metadata.k"),
            (r#"{"model":"m","input":"x","reasoning":"high"}"#, "reasoning"),
            (
                r#"{"model":"m","input":"x","reasoning":{"effort":1}}"#,
                "reasoning.effort",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"yaml"}}}"#,
                "text.format.type",
            ),
            (
                r#"{"model":"m","input":"x","text":{"format":{"type":"json_schema","schema":{"type":"bogus"}}}}"#,
                "text.format.schema",
            ),
            (r#"{"model":"m","input":"x","text":{"format":"text"}}"#, "text.format"),
            (
                r#"{"model":"m","input":"x","parallel_tool_calls":1}"#,
                "parallel_tool_calls",
            ),
            (r#"{"model":"m","input":"x","truncation":"middle"}"#, "truncation"),
            (r#"{"model":"m","input":"x","user":5}"#, "user"),
        ];
        for (body, field) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn metadata_limits_are_openais() {
        let many: Map<String, Value> = (0..=MAX_METADATA_PAIRS)
            .map(|i| (format!("k{i}"), Value::from("v")))
            .collect();
        let body = serde_json::json!({"model": "m", "input": "x", "metadata": many}).to_string();
        assert_eq!(parse(&body).expect_err("too many").field, "metadata");
        let long = "v".repeat(MAX_METADATA_VALUE_CHARS + 1);
        let body = serde_json::json!({"model": "m", "input": "x", "metadata": {"k": long}}).to_string();
        assert_eq!(parse(&body).expect_err("too long").field, "metadata.k");
        let key = "k".repeat(MAX_METADATA_KEY_CHARS + 1);
        let body = serde_json::json!({"model": "m", "input": "x", "metadata": {key: "v"}}).to_string();
        assert_eq!(parse(&body).expect_err("key too long").field, "metadata");
    }
}
