//! OpenAI Chat Completions request → [`GenerationParams`] (SYSTEM.md §2.3, §11.2 step 1). Parsed from a JSON value
//! field by field, so a wrong type or value is a 400 that names the field (`messages[1].role`, `temperature`), and
//! fields shoal does not support are ignored as OpenAI clients expect.

use serde_json::{Map, Value};
use shoal_types::ModelCard;
use shoal_types::params::{GenerationParams, MAX_PARAMS_BYTES, Message, Role};

/// Bodies larger than this are refused with 413 before parsing.
pub const MAX_BODY_BYTES: usize = MAX_PARAMS_BYTES;
/// OpenAI allows up to 4 stop sequences; a few more cost nothing, a thousand would.
pub const MAX_STOP: usize = 16;

/// A request that cannot be served as sent: 400 naming the field.
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub field: String,
    pub message: String,
}

impl BadRequest {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        BadRequest {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.message)
    }
}

/// What the adapter needs besides [`GenerationParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in responses).
    pub model_name: String,
    pub stream: bool,
    pub include_usage: bool,
}

/// Parses the body's JSON. The model must be resolved by the caller (unknown → 404), see [`fill_defaults`].
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, BadRequest> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| BadRequest::new("body", format!("not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(BadRequest::new("body", "must be a JSON object"));
    };
    let model_name = match obj.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(Value::String(_)) => return Err(BadRequest::new("model", "must not be empty")),
        Some(_) => return Err(BadRequest::new("model", "must be a string")),
        None => return Err(BadRequest::new("model", "is required")),
    };
    let messages = messages(&obj)?;
    let mut params = GenerationParams {
        model: shoal_types::ModelId::new(model_name.clone()),
        messages,
        ..GenerationParams::default()
    };
    // `max_completion_tokens` is the newer name; either is accepted.
    let max = opt_u64(&obj, "max_completion_tokens")?
        .map(|m| ("max_completion_tokens", m))
        .or(opt_u64(&obj, "max_tokens")?.map(|m| ("max_tokens", m)));
    if let Some((field, max)) = max {
        if max == 0 {
            return Err(BadRequest::new(field, "must be at least 1"));
        }
        params.max_output_tokens = Some(u32::try_from(max).unwrap_or(u32::MAX));
    }
    params.temperature = opt_f32_in(&obj, "temperature", 0.0, 2.0)?;
    params.top_p = opt_f32_in(&obj, "top_p", 0.0, 1.0)?;
    if params.top_p == Some(0.0) {
        return Err(BadRequest::new("top_p", "must be greater than 0"));
    }
    params.top_k = opt_u64(&obj, "top_k")?.map(|k| u32::try_from(k).unwrap_or(u32::MAX));
    params.min_p = opt_f32_in(&obj, "min_p", 0.0, 1.0)?;
    params.presence_penalty = opt_f32_in(&obj, "presence_penalty", -2.0, 2.0)?;
    params.frequency_penalty = opt_f32_in(&obj, "frequency_penalty", -2.0, 2.0)?;
    params.repetition_penalty = opt_f32_in(&obj, "repetition_penalty", 0.0, 10.0)?;
    if params.repetition_penalty == Some(0.0) {
        return Err(BadRequest::new("repetition_penalty", "must be greater than 0"));
    }
    params.seed = match obj.get("seed") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .or_else(|| n.as_i64().map(|i| i as u64))
                .ok_or_else(|| BadRequest::new("seed", "must be an integer"))?,
        ),
        Some(_) => return Err(BadRequest::new("seed", "must be an integer")),
    };
    params.stop = match obj.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => Err(BadRequest::new(format!("stop[{i}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(BadRequest::new("stop", "must be a string or an array of strings")),
    };
    if params.stop.len() > MAX_STOP {
        return Err(BadRequest::new("stop", format!("at most {MAX_STOP} sequences")));
    }
    if let Some(i) = params.stop.iter().position(String::is_empty) {
        return Err(BadRequest::new(format!("stop[{i}]"), "must not be empty"));
    }
    match obj.get("n") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
        Some(_) => return Err(BadRequest::new("n", "only n = 1 is supported")),
    }
    params.logprobs = opt_bool(&obj, "logprobs")?.unwrap_or(false);
    params.top_logprobs = opt_u64(&obj, "top_logprobs")?.map(|k| u32::try_from(k).unwrap_or(u32::MAX));
    if let Some(tools) = obj.get("tools").filter(|t| !t.is_null()) {
        if !tools.is_array() {
            return Err(BadRequest::new("tools", "must be an array"));
        }
        params.tools = Some(tools.to_string());
    }
    params.reasoning_effort = match obj.get("reasoning_effort") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(BadRequest::new("reasoning_effort", "must be a string")),
    };
    params.enable_thinking = opt_bool(&obj, "enable_thinking")?;
    let stream = opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match obj.get("stream_options") {
        None | Some(Value::Null) => false,
        Some(Value::Object(o)) => opt_bool(o, "include_usage")
            .map_err(|e| BadRequest::new(format!("stream_options.{}", e.field), e.message))?
            .unwrap_or(false),
        Some(_) => return Err(BadRequest::new("stream_options", "must be an object")),
    };
    Ok(ChatRequest {
        params,
        model_name,
        stream,
        include_usage,
    })
}

/// Resolves the model to its card's id and fills unset sampling fields from the card's defaults (§2.3).
pub fn fill_defaults(params: &mut GenerationParams, card: &ModelCard) {
    params.model = card.id.clone();
    let d = &card.sampling_defaults;
    let mode = match params.enable_thinking {
        Some(true) => d.thinking.as_ref(),
        Some(false) => d.non_thinking.as_ref(),
        None => None,
    };
    macro_rules! fill {
        ($field:ident) => {
            if params.$field.is_none() {
                params.$field = mode.and_then(|m| m.$field).or(d.$field);
            }
        };
    }
    fill!(temperature);
    fill!(top_p);
    fill!(top_k);
    fill!(min_p);
    fill!(repetition_penalty);
    fill!(presence_penalty);
    fill!(frequency_penalty);
}

fn messages(obj: &Map<String, Value>) -> Result<Vec<Message>, BadRequest> {
    let items = match obj.get("messages") {
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadRequest::new("messages", "must be an array")),
        None => return Err(BadRequest::new("messages", "is required")),
    };
    if items.is_empty() {
        return Err(BadRequest::new("messages", "must contain at least one message"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let field = |name: &str| format!("messages[{i}].{name}");
            let Value::Object(m) = item else {
                return Err(BadRequest::new(format!("messages[{i}]"), "must be an object"));
            };
            let role = match m.get("role") {
                Some(Value::String(r)) => match r.as_str() {
                    "system" => Role::System,
                    "developer" => Role::Developer,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    "tool" => Role::Tool,
                    other => {
                        return Err(BadRequest::new(
                            field("role"),
                            format!("`{other}` is not one of system, developer, user, assistant, tool"),
                        ));
                    }
                },
                Some(_) => return Err(BadRequest::new(field("role"), "must be a string")),
                None => return Err(BadRequest::new(field("role"), "is required")),
            };
            let content = match m.get("content") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                // Content parts: the text parts, joined; other kinds (images, audio) are not supported.
                Some(Value::Array(parts)) => {
                    let mut text = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match part.get("type").and_then(Value::as_str) {
                            Some("text") => match part.get("text") {
                                Some(Value::String(t)) => text.push_str(t),
                                _ => {
                                    return Err(BadRequest::new(
                                        format!("messages[{i}].content[{j}].text"),
                                        "must be a string",
                                    ));
                                }
                            },
                            Some(kind) => {
                                return Err(BadRequest::new(
                                    format!("messages[{i}].content[{j}].type"),
                                    format!("content of type `{kind}` is not supported"),
                                ));
                            }
                            None => {
                                return Err(BadRequest::new(
                                    format!("messages[{i}].content[{j}].type"),
                                    "is required",
                                ));
                            }
                        }
                    }
                    text
                }
                Some(_) => {
                    return Err(BadRequest::new(
                        field("content"),
                        "must be a string or an array of parts",
                    ));
                }
            };
            let tool_call_id = match m.get("tool_call_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => return Err(BadRequest::new(field("tool_call_id"), "must be a string")),
            };
            Ok(Message {
                role,
                content,
                tool_calls: Vec::new(),
                tool_call_id,
                reasoning: None,
            })
        })
        .collect()
}

fn opt_bool(obj: &Map<String, Value>, name: &str) -> Result<Option<bool>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(BadRequest::new(name, "must be true or false")),
    }
}

fn opt_u64(obj: &Map<String, Value>, name: &str) -> Result<Option<u64>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None if n.as_i64().is_some() => Err(BadRequest::new(name, "must not be negative")),
            None => Err(BadRequest::new(name, "must be an integer")),
        },
        Some(_) => Err(BadRequest::new(name, "must be an integer")),
    }
}

fn opt_f32_in(obj: &Map<String, Value>, name: &str, min: f32, max: f32) -> Result<Option<f32>, BadRequest> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let v = n.as_f64().unwrap_or(f64::NAN) as f32;
            if v.is_finite() && (min..=max).contains(&v) {
                Ok(Some(v))
            } else {
                Err(BadRequest::new(name, format!("must be between {min} and {max}")))
            }
        }
        Some(_) => Err(BadRequest::new(name, "must be a number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ChatRequest, BadRequest> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn a_full_request_maps_every_field() {
        let r = parse(
            r#"{"model":"smollm2-135m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":40,"min_p":0.05,"presence_penalty":0.1,
                "frequency_penalty":0.2,"repetition_penalty":1.1,"seed":42,"stop":"END","stream":true,
                "stream_options":{"include_usage":true},"logprobs":false,"user":"ignored","n":1}"#,
        )
        .expect("valid");
        assert!(r.stream && r.include_usage);
        let p = &r.params;
        assert_eq!(p.messages.len(), 2);
        assert_eq!(p.messages[1].content, "hi there");
        assert_eq!(p.messages[0].role, Role::System);
        assert_eq!(p.max_output_tokens, Some(7));
        assert_eq!(p.temperature, Some(0.5));
        assert_eq!(p.top_k, Some(40));
        assert_eq!(p.seed, Some(42));
        assert_eq!(p.stop, vec!["END".to_string()]);
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            ("{", "body"),
            ("[]", "body"),
            (r#"{"messages":[{"role":"user","content":"x"}]}"#, "model"),
            (r#"{"model":3,"messages":[]}"#, "model"),
            (r#"{"model":"m","messages":[]}"#, "messages"),
            (r#"{"model":"m","messages":"hi"}"#, "messages"),
            (
                r#"{"model":"m","messages":[{"role":"boss","content":"x"}]}"#,
                "messages[0].role",
            ),
            (r#"{"model":"m","messages":[{"content":"x"}]}"#, "messages[0].role"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0].content[0].type",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":-3}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"9"}"#,
                "max_tokens",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
                "stop[0]",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
                "stream_options.include_usage",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body).expect_err(body);
            assert_eq!(err.field, field, "{body}: {err}");
        }
    }

    #[test]
    fn card_defaults_fill_only_unset_fields() {
        let card = shoal_types::card::find_card(&shoal_types::card::builtin_cards(), "smollm2-135m")
            .cloned()
            .expect("built-in card");
        let mut r = parse(r#"{"model":"smollm2-135m","messages":[{"role":"user","content":"x"}],"temperature":0}"#)
            .expect("valid");
        fill_defaults(&mut r.params, &card);
        assert_eq!(r.params.model, card.id);
        assert_eq!(r.params.temperature, Some(0.0), "an explicit value wins");
        assert_eq!(r.params.top_p, card.sampling_defaults.top_p);
    }
}
