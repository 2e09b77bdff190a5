//! Fuzzing the tool fields of every dialect's request (issue 14): `tools`, `tool_choice`, assistant calls given back
//! (`tool_calls`, Anthropic `tool_use`, Responses `function_call`) and tool results (`tool` messages, `tool_result`,
//! `function_call_output`). Whatever the value, the parser returns a request or a 400 naming the field it replaced;
//! an accepted request's tools are OpenAI's function list (what the template gets), and a forced choice names one of
//! them.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::error::BadRequest;
use shoal_types::params::{GenerationParams, ToolChoice};

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(
        &[
            "function",
            "auto",
            "none",
            "required",
            "any",
            "tool",
            "object",
            "string",
            "f",
            "tool_use",
            "tool_result",
            "function_call",
            "function_call_output",
            "text",
        ],
        &[
            "type",
            "function",
            "name",
            "parameters",
            "input_schema",
            "description",
            "arguments",
            "input",
            "id",
            "tool_use_id",
            "call_id",
            "output",
            "content",
            "properties",
        ],
    )
}

/// A well-formed function in each shape, so one field replaced inside it is reached.
fn nested_tool() -> Value {
    json!({"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}})
}

/// The parsed request's tools are a list of `{"type":"function","function":{"name",…}}` and a forced choice is
/// satisfiable.
fn check_accepted(p: &GenerationParams) -> Result<(), TestCaseError> {
    let names: Vec<String> = match &p.tools {
        None => Vec::new(),
        Some(text) => {
            let list: Value = serde_json::from_str(text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let items = list.as_array().cloned().unwrap_or_default();
            prop_assert!(!items.is_empty());
            items
                .iter()
                .map(|t| {
                    prop_assert_eq!(&t["type"], "function");
                    prop_assert!(t["function"]["parameters"].is_object());
                    Ok(t["function"]["name"].as_str().unwrap_or_default().to_string())
                })
                .collect::<Result<_, TestCaseError>>()?
        }
    };
    match &p.tool_choice {
        ToolChoice::Required => prop_assert!(!names.is_empty()),
        ToolChoice::Function(name) => prop_assert!(names.contains(name)),
        ToolChoice::Auto | ToolChoice::None => {}
    }
    Ok(())
}

fn named(result: Result<GenerationParams, BadRequest>, field: &str) -> Result<(), TestCaseError> {
    match result {
        Ok(p) => check_accepted(&p),
        Err(bad) => {
            prop_assert!(
                bad.field.starts_with(field) || bad.field == "tool_choice" || bad.field.starts_with("tool_choice"),
                "{field} replaced, but the error names {}: {}",
                bad.field,
                bad.message
            );
            Ok(())
        }
    }
}

fn openai(body: &Value) -> Result<GenerationParams, BadRequest> {
    shoal_api::openai::chat_request::parse_chat(body.to_string().as_bytes()).map(|r| r.params)
}

fn responses(body: &Value) -> Result<GenerationParams, BadRequest> {
    shoal_api::openai::responses_request::parse_responses(body.to_string().as_bytes()).map(|r| r.params)
}

fn anthropic(body: &Value) -> Result<GenerationParams, BadRequest> {
    shoal_api::anthropic::request::parse_messages(body.to_string().as_bytes()).map(|r| r.params)
}

fn ollama(body: &Value) -> Result<GenerationParams, BadRequest> {
    shoal_api::ollama::request::parse_chat(body.to_string().as_bytes()).map(|r| r.params)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn tools_and_choice_are_read_or_named(value in json_value(), choice in json_value()) {
        let user = json!([{"role": "user", "content": "hi"}]);
        let mut o = json!({"model": "m", "messages": user, "tools": value});
        named(openai(&o), "tools")?;
        named(ollama(&o), "tools")?;
        o["tools"] = json!([nested_tool()]);
        o["tool_choice"] = choice.clone();
        named(openai(&o), "tool_choice")?;
        let mut a = json!({"model": "m", "max_tokens": 8, "messages": user, "tools": value});
        named(anthropic(&a), "tools")?;
        a["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        a["tool_choice"] = choice.clone();
        named(anthropic(&a), "tool_choice")?;
        let mut r = json!({"model": "m", "input": "hi", "tools": value});
        named(responses(&r), "tools")?;
        r["tools"] = json!([{"type": "function", "name": "f"}]);
        r["tool_choice"] = choice;
        named(responses(&r), "tool_choice")?;
    }

    /// One field of a well-formed function replaced.
    #[test]
    fn a_field_inside_a_tool_is_named(key in prop::sample::select(&["type", "name", "description", "parameters"][..]),
                                      value in json_value()) {
        let mut tool = nested_tool();
        if key == "type" { tool["type"] = value.clone() } else { tool["function"][key] = value.clone() }
        named(openai(&json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool]})), "tools[0]")?;
        let mut flat = json!({"type": "function", "name": "f", "parameters": {"type": "object"}});
        flat[key] = value.clone();
        named(responses(&json!({"model": "m", "input": "x", "tools": [flat]})), "tools[0]")?;
        let akey = if key == "parameters" { "input_schema" } else { key };
        let mut at = json!({"name": "f", "input_schema": {"type": "object"}});
        at[akey] = value;
        named(anthropic(&json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [at]})), "tools[0]")?;
    }

    /// Calls and results given back in a conversation.
    #[test]
    fn calls_and_results_given_back_are_read_or_named(call in json_value(), result in json_value()) {
        let o = json!({"model": "m", "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": null, "tool_calls": call},
            {"role": "tool", "tool_call_id": "c", "content": "r"}]});
        named(openai(&o), "messages[1]")?;
        named(ollama(&o), "messages[1]")?;
        let a = json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [call.clone()]},
            {"role": "user", "content": [result.clone()]}]});
        named(anthropic(&a), "messages[")?;
        let r = json!({"model": "m", "input": [{"role": "user", "content": "x"}, call, result]});
        named(responses(&r), "input[")?;
    }
}

#[test]
fn a_whole_round_trip_parses_in_every_dialect() {
    let o = json!({"model": "m", "tools": [nested_tool()], "tool_choice": "required", "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":\"b\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "done"}]});
    let p = openai(&o).expect("openai");
    assert_eq!(p.tool_choice, ToolChoice::Required);
    assert_eq!(p.messages[1].tool_calls[0].arguments, "{\"a\":\"b\"}");
    assert_eq!(p.messages[2].tool_call_id.as_deref(), Some("call_1"));

    let ol = json!({"model": "m", "tools": [nested_tool()], "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": {"a": "b"}}}]},
        {"role": "tool", "tool_name": "f", "content": "done"}]});
    let p = ollama(&ol).expect("ollama");
    assert_eq!(p.messages[1].tool_calls[0].arguments, "{\"a\":\"b\"}");

    let r = json!({"model": "m", "tools": [{"type": "function", "name": "f"}],
        "tool_choice": {"type": "function", "name": "f"}, "input": [
        {"role": "user", "content": "x"},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "done"}]});
    let p = responses(&r).expect("responses");
    assert_eq!(p.tool_choice, ToolChoice::Function("f".into()));
    assert_eq!(p.messages.len(), 3);
    assert_eq!(p.messages[1].tool_calls[0].id, "call_1");
}
