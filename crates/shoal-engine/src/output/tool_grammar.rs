//! The grammar that forces a tool call (`tool_choice` `required` or a named function), in llguidance's Lark syntax
//! with the call's JSON schema inlined (`%json{…}`), written in the model's own call format so the parser in
//! [`super::tool_calls`] reads it back. Pure text building; llguidance checks it when it compiles it.

use serde_json::{Value, json};

use super::ToolFormat;

/// A function the request offers: its name and its parameters' JSON schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub parameters: Value,
}

/// Which call the grammar forces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forced {
    /// Any of the tools (`required`, Anthropic's `any`).
    Any,
    /// This one (a named function, Anthropic's `tool`).
    Named(String),
}

/// The Lark grammar for one forced call; an error when nothing can be forced (no tools, or no tool of that name).
pub fn forced_call_grammar(format: ToolFormat, tools: &[ToolSpec], forced: &Forced) -> Result<String, String> {
    let chosen: Vec<&ToolSpec> = match forced {
        Forced::Any => tools.iter().collect(),
        Forced::Named(name) => tools.iter().filter(|t| &t.name == name).collect(),
    };
    if chosen.is_empty() {
        return Err(match forced {
            Forced::Any => "no tools to call".to_string(),
            Forced::Named(name) => format!("no tool is named `{name}`"),
        });
    }
    // Llama 3.x names its arguments `parameters`; the other formats `arguments`.
    let args_key = if format == ToolFormat::Llama3 {
        "parameters"
    } else {
        "arguments"
    };
    let variants: Vec<Value> = chosen.iter().map(|t| call_schema(t, args_key)).collect();
    let schema = match <[Value; 1]>::try_from(variants) {
        Ok([one]) => one,
        Err(many) => json!({ "anyOf": many }),
    };
    // The generic format's instructions ask for `{"tool_calls":[…]}`: one forced call, in that wrapper (a small model
    // let free to add calls would add them until its token limit).
    let schema = if format == ToolFormat::Generic {
        json!({
            "type": "object",
            "properties": { "tool_calls": { "type": "array", "items": schema, "minItems": 1, "maxItems": 1 } },
            "required": ["tool_calls"],
            "additionalProperties": false,
        })
    } else {
        schema
    };
    let call = format!("%json{schema}");
    Ok(match format {
        ToolFormat::Hermes => format!("start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: {call}\n"),
        // The `[TOOL_CALLS]` marker is a control token the decoder leaves out; the array alone is read as the call.
        ToolFormat::Mistral => format!("start: \"[\" call \"]\"\ncall: {call}\n"),
        ToolFormat::Llama3 | ToolFormat::Generic => format!("start: call\ncall: {call}\n"),
    })
}

fn call_schema(tool: &ToolSpec, args_key: &str) -> Value {
    // A function without a parameters schema takes any object.
    let params = match &tool.parameters {
        Value::Object(o) if !o.is_empty() => tool.parameters.clone(),
        _ => json!({ "type": "object" }),
    };
    json!({
        "type": "object",
        "properties": { "name": { "const": tool.name }, args_key: params },
        "required": ["name", args_key],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Vec<ToolSpec> {
        vec![
            ToolSpec {
                name: "get_weather".into(),
                parameters: json!({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}),
            },
            ToolSpec {
                name: "noop".into(),
                parameters: Value::Null,
            },
        ]
    }

    #[test]
    fn hermes_named_call() {
        let g = forced_call_grammar(ToolFormat::Hermes, &tools(), &Forced::Named("get_weather".into())).expect("ok");
        // serde_json keeps keys in the order written (preserve_order, which llguidance enables): `name` first.
        assert_eq!(
            g,
            "start: \"<tool_call>\\n\" call \"\\n</tool_call>\"\ncall: %json{\"type\":\"object\",\"properties\":\
             {\"name\":{\"const\":\"get_weather\"},\"arguments\":{\"type\":\"object\",\"properties\":{\"city\":\
             {\"type\":\"string\"}},\"required\":[\"city\"]}},\"required\":[\"name\",\"arguments\"],\
             \"additionalProperties\":false}\n"
        );
    }

    #[test]
    fn any_call_is_a_choice_of_every_tool() {
        let g = forced_call_grammar(ToolFormat::Generic, &tools(), &Forced::Any).expect("ok");
        assert!(g.starts_with("start: call\ncall: %json{"), "{g}");
        assert!(
            g.contains("\"tool_calls\":{\"type\":\"array\",\"items\":{\"anyOf\":["),
            "{g}"
        );
        assert!(g.contains("{\"const\":\"noop\"}") && g.contains("{\"const\":\"get_weather\"}"));
        let l = forced_call_grammar(ToolFormat::Llama3, &tools(), &Forced::Any).expect("ok");
        assert!(l.contains("\"parameters\":") && !l.contains("\"arguments\""), "{l}");
        let m = forced_call_grammar(ToolFormat::Mistral, &tools(), &Forced::Any).expect("ok");
        assert!(m.starts_with("start: \"[\" call \"]\""), "{m}");
    }

    #[test]
    fn nothing_to_force_is_an_error() {
        assert!(forced_call_grammar(ToolFormat::Hermes, &[], &Forced::Any).is_err());
        let e = forced_call_grammar(ToolFormat::Hermes, &tools(), &Forced::Named("x".into())).expect_err("unknown");
        assert!(e.contains("`x`"), "{e}");
    }
}
