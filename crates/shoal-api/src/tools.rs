//! Tools as every dialect reads them: each dialect's function list becomes OpenAI's (the shape chat templates get,
//! `[{"type":"function","function":{name,description,parameters}}]`) in [`GenerationParams::tools`], and a bad entry
//! is a 400 naming it (`tools[1].function.parameters`). Pure.

use serde_json::{Map, Value, json};
use shoal_types::params::{ToolCall, ToolChoice};

use crate::error::BadRequest;

/// Names a tool may have (OpenAI's rule: letters, digits, `_` and `-`, at most 64).
pub const MAX_TOOL_NAME: usize = 64;
/// Tools one request may offer.
pub const MAX_TOOLS: usize = 128;

/// The shapes dialects write a function in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolShape {
    /// OpenAI chat and Ollama: `{"type":"function","function":{name,description,parameters}}`.
    Nested,
    /// Responses: `{"type":"function",name,description,parameters}`.
    Flat,
    /// Anthropic: `{name,description,input_schema}`.
    Anthropic,
}

/// The request's `tools` (absent, null or empty: none) as OpenAI's function list in JSON text.
pub fn read_tools(obj: &Map<String, Value>, shape: ToolShape) -> Result<Option<String>, BadRequest> {
    let items = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadRequest::new("tools", "must be an array")),
    };
    if items.is_empty() {
        return Ok(None);
    }
    if items.len() > MAX_TOOLS {
        return Err(BadRequest::new(
            "tools",
            format!("at most {MAX_TOOLS} tools are allowed"),
        ));
    }
    let list = items
        .iter()
        .enumerate()
        .map(|(i, t)| function(t, shape).map_err(|e| e.within(&format!("tools[{i}]"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(Value::Array(list).to_string()))
}

/// One tool in OpenAI's shape; errors name fields inside the tool.
fn function(tool: &Value, shape: ToolShape) -> Result<Value, BadRequest> {
    let Value::Object(t) = tool else {
        return Err(BadRequest::new("", "must be an object"));
    };
    let (f, prefix, schema_key) = match shape {
        ToolShape::Nested => {
            check_type(t)?;
            match t.get("function") {
                Some(Value::Object(f)) => (f, "function.", "parameters"),
                Some(_) => return Err(BadRequest::new("function", "must be an object")),
                None => return Err(BadRequest::new("function", "is required")),
            }
        }
        ToolShape::Flat => {
            check_type(t)?;
            (t, "", "parameters")
        }
        ToolShape::Anthropic => {
            // Anthropic's server tools (`web_search_20250305`, …) carry a `type`; only custom tools run here.
            if let Some(kind) = t.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
                return Err(BadRequest::new(
                    "type",
                    format!("tools of type `{kind}` are not supported"),
                ));
            }
            (t, "", "input_schema")
        }
    };
    let at = |name: &str| format!("{prefix}{name}");
    let name = match f.get("name") {
        Some(Value::String(n)) if valid_name(n) => n.clone(),
        Some(Value::String(_)) => {
            return Err(BadRequest::new(
                at("name"),
                format!("must be 1 to {MAX_TOOL_NAME} letters, digits, `_` or `-`"),
            ));
        }
        Some(_) => return Err(BadRequest::new(at("name"), "must be a string")),
        None => return Err(BadRequest::new(at("name"), "is required")),
    };
    let description = match f.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(BadRequest::new(at("description"), "must be a string")),
    };
    let parameters = match f.get(schema_key) {
        None | Some(Value::Null) if shape != ToolShape::Anthropic => json!({ "type": "object", "properties": {} }),
        Some(Value::Object(schema)) => {
            if let Some(kind) = schema.get("type")
                && kind != "object"
            {
                return Err(BadRequest::new(at(&format!("{schema_key}.type")), "must be \"object\""));
            }
            Value::Object(schema.clone())
        }
        None | Some(Value::Null) => return Err(BadRequest::new(at(schema_key), "is required")),
        Some(_) => return Err(BadRequest::new(at(schema_key), "must be a JSON Schema object")),
    };
    let mut function = json!({ "name": name, "parameters": parameters });
    if let Some(d) = description {
        function["description"] = Value::String(d);
    }
    Ok(json!({ "type": "function", "function": function }))
}

fn check_type(t: &Map<String, Value>) -> Result<(), BadRequest> {
    match t.get("type") {
        Some(Value::String(k)) if k == "function" => Ok(()),
        Some(Value::String(k)) => Err(BadRequest::new(
            "type",
            format!("tools of type `{k}` are not supported"),
        )),
        Some(_) => Err(BadRequest::new("type", "must be a string")),
        None => Err(BadRequest::new("type", "is required")),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOOL_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The names of the functions in OpenAI's list (as [`read_tools`] wrote it).
pub fn tool_names(tools: Option<&str>) -> Vec<String> {
    let Some(list) = tools.and_then(|t| serde_json::from_str::<Value>(t).ok()) else {
        return Vec::new();
    };
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["function"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks a choice against the tools: forcing a call needs tools, and a named one must be among them.
pub fn check_choice(choice: &ToolChoice, tools: Option<&str>, field: &str) -> Result<(), BadRequest> {
    let names = tool_names(tools);
    match choice {
        ToolChoice::Required if names.is_empty() => Err(BadRequest::new(
            field,
            "requires a tool call but the request has no tools",
        )),
        ToolChoice::Function(name) if !names.contains(name) => Err(BadRequest::new(
            field,
            format!("names `{name}`, which is not among the request's tools"),
        )),
        _ => Ok(()),
    }
}

/// OpenAI chat's `tool_choice`: `"none"`, `"auto"`, `"required"` or `{"type":"function","function":{"name":…}}`.
/// Responses writes the named form flat (`{"type":"function","name":…}`); both are read.
pub fn openai_choice(obj: &Map<String, Value>) -> Result<ToolChoice, BadRequest> {
    let field = "tool_choice";
    match obj.get(field) {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            other => Err(BadRequest::new(
                field,
                format!("`{other}` is not one of none, auto, required or a function"),
            )),
        },
        Some(Value::Object(o)) => {
            match o.get("type").and_then(Value::as_str) {
                Some("function") => {}
                Some("auto") => return Ok(ToolChoice::Auto),
                Some("none") => return Ok(ToolChoice::None),
                Some("required") => return Ok(ToolChoice::Required),
                _ => return Err(BadRequest::new(format!("{field}.type"), "must be \"function\"")),
            }
            let name = o.get("function").and_then(|f| f.get("name")).or_else(|| o.get("name"));
            match name {
                Some(Value::String(n)) => Ok(ToolChoice::Function(n.clone())),
                _ => Err(BadRequest::new(format!("{field}.function.name"), "must be a string")),
            }
        }
        Some(_) => Err(BadRequest::new(field, "must be a string or an object")),
    }
}

/// OpenAI's `parallel_tool_calls` (chat and Responses; default true): false allows one call per answer.
pub fn openai_single_call(obj: &Map<String, Value>) -> Result<bool, BadRequest> {
    Ok(crate::fields::opt_bool(obj, "parallel_tool_calls")? == Some(false))
}

/// Anthropic's `tool_choice.disable_parallel_tool_use` (default false): true allows one call per answer.
pub fn anthropic_single_call(obj: &Map<String, Value>) -> Result<bool, BadRequest> {
    let Some(choice) = crate::fields::opt_object(obj, "tool_choice")? else {
        return Ok(false);
    };
    Ok(crate::fields::opt_bool(choice, "disable_parallel_tool_use")
        .map_err(|e| e.within("tool_choice"))?
        .unwrap_or(false))
}

/// Arguments given back in a request (a JSON text, or an object as Ollama and Anthropic write them) as JSON text.
pub fn arguments_text(args: Option<&Value>, field: &str) -> Result<String, BadRequest> {
    match args {
        None | Some(Value::Null) => Ok("{}".to_string()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(v @ Value::Object(_)) => Ok(v.to_string()),
        Some(_) => Err(BadRequest::new(field, "must be an object or a JSON string")),
    }
}

/// OpenAI chat's assistant `tool_calls` given back in a conversation.
pub fn openai_calls(m: &Map<String, Value>, at: &str) -> Result<Vec<ToolCall>, BadRequest> {
    let items = match m.get("tool_calls") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(BadRequest::new(format!("{at}.tool_calls"), "must be an array")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("{at}.tool_calls[{i}]");
            let f = c.get("function").unwrap_or(c);
            let name = match f.get("name") {
                Some(Value::String(n)) => n.clone(),
                _ => return Err(BadRequest::new(format!("{field}.function.name"), "must be a string")),
            };
            Ok(ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                name,
                arguments: arguments_text(f.get("arguments"), &format!("{field}.function.arguments"))?,
            })
        })
        .collect()
}

/// A call's arguments as a JSON value for the dialects that write an object (Anthropic's `input`, Ollama's
/// `arguments`); text that is not JSON (it always is: the parser checked it) becomes an empty object.
pub fn arguments_value(call: &ToolCall) -> Value {
    serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).expect("test JSON")
    }

    #[test]
    fn every_shape_becomes_openais() {
        let nested = r#"{"tools":[{"type":"function","function":{"name":"f","description":"d","parameters":{"type":"object"}}}]}"#;
        let flat = r#"{"tools":[{"type":"function","name":"f","description":"d","parameters":{"type":"object"}}]}"#;
        let anthropic = r#"{"tools":[{"name":"f","description":"d","input_schema":{"type":"object"}}]}"#;
        let want: Value = serde_json::from_str(
            r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object"},"description":"d"}}]"#,
        )
        .expect("json");
        let parsed = |body: &str, shape| -> Value {
            let text = read_tools(&obj(body), shape).expect("ok").expect("tools");
            serde_json::from_str(&text).expect("json")
        };
        assert_eq!(parsed(nested, ToolShape::Nested), want);
        assert_eq!(parsed(flat, ToolShape::Flat), want);
        assert_eq!(parsed(anthropic, ToolShape::Anthropic), want);
        assert_eq!(
            read_tools(&obj(r#"{"tools":[]}"#), ToolShape::Nested).expect("ok"),
            None
        );
    }

    #[test]
    fn bad_tools_name_the_field() {
        let cases = [
            (r#"{"tools":{}}"#, ToolShape::Nested, "tools"),
            (r#"{"tools":[1]}"#, ToolShape::Nested, "tools[0]"),
            (r#"{"tools":[{"type":"code"}]}"#, ToolShape::Nested, "tools[0].type"),
            (
                r#"{"tools":[{"type":"function"}]}"#,
                ToolShape::Nested,
                "tools[0].function",
            ),
            (
                r#"{"tools":[{"type":"function","function":{}}]}"#,
                ToolShape::Nested,
                "tools[0].function.name",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"a b"}}]}"#,
                ToolShape::Nested,
                "tools[0].function.name",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"f","parameters":[]}}]}"#,
                ToolShape::Nested,
                "tools[0].function.parameters",
            ),
            (
                r#"{"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"string"}}}]}"#,
                ToolShape::Nested,
                "tools[0].function.parameters.type",
            ),
            (
                r#"{"tools":[{"type":"function","name":3}]}"#,
                ToolShape::Flat,
                "tools[0].name",
            ),
            (
                r#"{"tools":[{"name":"f"}]}"#,
                ToolShape::Anthropic,
                "tools[0].input_schema",
            ),
            (
                r#"{"tools":[{"type":"bash_20250124","name":"bash"}]}"#,
                ToolShape::Anthropic,
                "tools[0].type",
            ),
        ];
        for (body, shape, field) in cases {
            let e = read_tools(&obj(body), shape).expect_err(body);
            assert_eq!(e.field, field, "{body}: {e}");
        }
    }

    #[test]
    fn choices() {
        let tools = read_tools(
            &obj(r#"{"tools":[{"type":"function","function":{"name":"f"}}]}"#),
            ToolShape::Nested,
        )
        .expect("ok");
        let named = obj(r#"{"tool_choice":{"type":"function","function":{"name":"f"}}}"#);
        assert_eq!(openai_choice(&named).expect("ok"), ToolChoice::Function("f".into()));
        assert_eq!(
            openai_choice(&obj(r#"{"tool_choice":"required"}"#)).expect("ok"),
            ToolChoice::Required
        );
        assert_eq!(
            openai_choice(&obj(r#"{"tool_choice":"maybe"}"#))
                .expect_err("bad")
                .field,
            "tool_choice"
        );
        assert!(check_choice(&ToolChoice::Function("f".into()), tools.as_deref(), "tool_choice").is_ok());
        assert!(check_choice(&ToolChoice::Function("g".into()), tools.as_deref(), "tool_choice").is_err());
        assert!(check_choice(&ToolChoice::Required, None, "tool_choice").is_err());
    }

    #[test]
    fn parallel_calls_unless_told_otherwise() {
        assert!(!openai_single_call(&obj("{}")).expect("ok"));
        assert!(!openai_single_call(&obj(r#"{"parallel_tool_calls":true}"#)).expect("ok"));
        assert!(openai_single_call(&obj(r#"{"parallel_tool_calls":false}"#)).expect("ok"));
        assert_eq!(
            openai_single_call(&obj(r#"{"parallel_tool_calls":"no"}"#))
                .expect_err("bad")
                .field,
            "parallel_tool_calls"
        );
        assert!(!anthropic_single_call(&obj(r#"{"tool_choice":{"type":"auto"}}"#)).expect("ok"));
        assert!(
            anthropic_single_call(&obj(
                r#"{"tool_choice":{"type":"any","disable_parallel_tool_use":true}}"#
            ))
            .expect("ok")
        );
        assert_eq!(
            anthropic_single_call(&obj(r#"{"tool_choice":{"type":"any","disable_parallel_tool_use":1}}"#))
                .expect_err("bad")
                .field,
            "tool_choice.disable_parallel_tool_use"
        );
    }
}
