//! OpenAI Chat Completions request → [`GenerationParams`] (SYSTEM.md §2.3, §11.2 step 1). Parsed from a JSON value
//! field by field, so a wrong type or value is a 400 that names the field (`messages[1].role`, `temperature`), and
//! fields shoal does not support are ignored as OpenAI clients expect.

use serde_json::{Map, Value};
use shoal_types::params::{GenerationParams, Message, Role};

use crate::error::BadRequest;
use crate::fields;
use crate::tools::{self, ToolShape};

/// What the adapter needs besides [`GenerationParams`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub params: GenerationParams,
    /// The model name as the client sent it (echoed in responses).
    pub model_name: String,
    pub stream: bool,
    pub include_usage: bool,
    /// Choices to generate (`n`).
    pub n: u32,
}

/// Parses the body's JSON. The model is resolved later (unknown → 404).
pub fn parse_chat(body: &[u8]) -> Result<ChatRequest, BadRequest> {
    let obj = fields::object(body)?;
    let model_name = fields::model(&obj)?;
    let messages = messages(&obj)?;
    let mut params = GenerationParams {
        model: shoal_types::ModelId::new(model_name.clone()),
        messages,
        ..GenerationParams::default()
    };
    // `max_completion_tokens` is the newer name; either is accepted.
    params.max_output_tokens = match fields::opt_token_limit(&obj, "max_completion_tokens")? {
        Some(max) => Some(max),
        None => fields::opt_token_limit(&obj, "max_tokens")?,
    };
    sampling(&obj, &mut params)?;
    let n = crate::logprobs::choices(&obj)?;
    crate::logprobs::parse_chat_fields(&obj, &mut params)?;
    params.tools = tools::read_tools(&obj, ToolShape::Nested)?;
    params.tool_choice = tools::openai_choice(&obj)?;
    tools::check_choice(&params.tool_choice, params.tools.as_deref(), "tool_choice")?;
    params.single_tool_call = tools::openai_single_call(&obj)?;
    params.constraint = crate::structured::response_format(&obj)?;
    params.reasoning_effort = fields::opt_string(&obj, "reasoning_effort")?;
    params.enable_thinking = fields::opt_bool(&obj, "enable_thinking")?;
    // vLLM's and llama-server's way to reach the template: `chat_template_kwargs.enable_thinking`.
    if let Some(kwargs) = fields::opt_object(&obj, "chat_template_kwargs")? {
        if let Some(on) = fields::opt_bool(kwargs, "enable_thinking").map_err(|e| e.within("chat_template_kwargs"))? {
            params.enable_thinking = Some(on);
        }
        if let Some(effort) =
            fields::opt_string(kwargs, "reasoning_effort").map_err(|e| e.within("chat_template_kwargs"))?
        {
            params.reasoning_effort = Some(effort);
        }
    }
    let stream = fields::opt_bool(&obj, "stream")?.unwrap_or(false);
    let include_usage = match fields::opt_object(&obj, "stream_options")? {
        None => false,
        Some(o) => fields::opt_bool(o, "include_usage")
            .map_err(|e| e.within("stream_options"))?
            .unwrap_or(false),
    };
    Ok(ChatRequest {
        params,
        model_name,
        stream,
        include_usage,
        n,
    })
}

/// The sampling fields OpenAI's Chat Completions, Completions and Responses share (each reads those it has).
pub fn sampling(obj: &Map<String, Value>, params: &mut GenerationParams) -> Result<(), BadRequest> {
    params.temperature = fields::opt_f32_in(obj, "temperature", 0.0, 2.0)?;
    params.top_p = fields::opt_top_p(obj, "top_p")?;
    params.top_k = fields::opt_u32(obj, "top_k")?;
    params.min_p = fields::opt_f32_in(obj, "min_p", 0.0, 1.0)?;
    params.presence_penalty = fields::opt_f32_in(obj, "presence_penalty", -2.0, 2.0)?;
    params.frequency_penalty = fields::opt_f32_in(obj, "frequency_penalty", -2.0, 2.0)?;
    params.repetition_penalty = fields::opt_f32_in(obj, "repetition_penalty", 0.0, 10.0)?;
    if params.repetition_penalty == Some(0.0) {
        return Err(BadRequest::new("repetition_penalty", "must be greater than 0"));
    }
    params.seed = fields::opt_seed(obj, "seed")?;
    params.stop = fields::stop_list(obj, "stop")?;
    Ok(())
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
            let tool_calls = tools::openai_calls(m, &format!("messages[{i}]"))?;
            // A previous answer's reasoning, as DeepSeek's and vLLM's clients send it back.
            let reasoning =
                fields::opt_string(m, "reasoning_content").map_err(|e| e.within(&format!("messages[{i}]")))?;
            Ok(Message {
                role,
                content,
                tool_calls,
                tool_call_id,
                reasoning,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::fill_defaults;

    fn parse(body: &str) -> Result<ChatRequest, BadRequest> {
        parse_chat(body.as_bytes())
    }

    #[test]
    fn parallel_tool_calls_false_allows_one_call() {
        let body = |parallel: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"tools":[{{"type":"function",
                    "function":{{"name":"f"}}}}]{parallel}}}"#
            )
        };
        assert!(!parse(&body("")).expect("valid").params.single_tool_call);
        assert!(
            parse(&body(r#","parallel_tool_calls":false"#))
                .expect("valid")
                .params
                .single_tool_call
        );
        let bad = parse(&body(r#","parallel_tool_calls":"no""#)).expect_err("not a bool");
        assert_eq!(bad.field, "parallel_tool_calls");
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
            (r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":9}"#, "n"),
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
