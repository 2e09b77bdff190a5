//! Structured output requests → [`Constraint`]: OpenAI Chat `response_format`, Responses `text.format`, Ollama
//! `format`. A schema is compiled here, while parsing, exactly as the last rank will compile it (tokenizer-free: see
//! `shoal_models::prompt::validate_constraint`), so a schema the engine cannot enforce is a 400 naming the place in
//! it (`response_format.json_schema.schema.properties.age`) on every node, one that holds no model file too.

use serde_json::{Map, Value};
use shoal_types::params::Constraint;

use crate::error::BadRequest;
use crate::fields;

/// A schema larger than this is refused before it is compiled (OpenAI's limits are far below it).
pub const MAX_SCHEMA_BYTES: usize = 256 * 1024;

/// Chat Completions `response_format`: `{"type":"text"}`, `{"type":"json_object"}` (with llama-server's optional
/// `schema`), `{"type":"json_schema","json_schema":{"name","schema","strict"}}`.
pub fn response_format(obj: &Map<String, Value>) -> Result<Option<Constraint>, BadRequest> {
    const FIELD: &str = "response_format";
    let Some(format) = fields::opt_object(obj, FIELD)? else {
        return Ok(None);
    };
    match format_type(format).map_err(|e| e.within(FIELD))?.as_str() {
        "text" => Ok(None),
        "json_object" => match format.get("schema").filter(|s| !s.is_null()) {
            Some(schema) => schema_constraint(schema, false, &format!("{FIELD}.schema")).map(Some),
            None => Ok(Some(Constraint::JsonObject)),
        },
        "json_schema" => {
            let field = format!("{FIELD}.json_schema");
            let inner = match format.get("json_schema") {
                Some(Value::Object(o)) => o,
                Some(_) => return Err(BadRequest::new(field, "must be an object")),
                None => return Err(BadRequest::new(field, "is required when `type` is `json_schema`")),
            };
            named_schema(inner, &field).map(Some)
        }
        other => Err(unknown_type(FIELD, other)),
    }
}

/// Responses `text.format`: `{"type":"text"}`, `{"type":"json_object"}`, `{"type":"json_schema","name","schema",
/// "strict"}` (the schema's fields sit beside `type`).
pub fn text_format(format: &Map<String, Value>) -> Result<Option<Constraint>, BadRequest> {
    const FIELD: &str = "text.format";
    match format_type(format).map_err(|e| e.within(FIELD))?.as_str() {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => named_schema(format, FIELD).map(Some),
        other => Err(unknown_type(FIELD, other)),
    }
}

/// Ollama `format`: `"json"` or a JSON schema (enforced leniently: Ollama ignores what its grammar cannot express).
pub fn ollama_format(format: Option<&Value>) -> Result<Option<Constraint>, BadRequest> {
    const FIELD: &str = "format";
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::JsonObject)),
        Some(Value::String(s)) => Err(BadRequest::new(
            FIELD,
            format!("`{s}` is not \"json\" or a JSON schema"),
        )),
        Some(schema @ Value::Object(_)) => schema_constraint(schema, false, FIELD).map(Some),
        Some(_) => Err(BadRequest::new(FIELD, "must be \"json\" or a JSON schema")),
    }
}

fn format_type(format: &Map<String, Value>) -> Result<String, BadRequest> {
    match format.get("type") {
        Some(Value::String(t)) => Ok(t.clone()),
        Some(_) => Err(BadRequest::new("type", "must be a string")),
        None => Err(BadRequest::new("type", "is required")),
    }
}

fn unknown_type(field: &str, t: &str) -> BadRequest {
    BadRequest::new(
        format!("{field}.type"),
        format!("`{t}` is not one of text, json_object, json_schema"),
    )
}

/// `{name, description, schema, strict}` (OpenAI requires `name`; llama-server and vLLM clients often leave it out,
/// so only its type is checked). No schema means any JSON object.
fn named_schema(obj: &Map<String, Value>, field: &str) -> Result<Constraint, BadRequest> {
    fields::opt_string(obj, "name").map_err(|e| e.within(field))?;
    let strict = fields::opt_bool(obj, "strict")
        .map_err(|e| e.within(field))?
        .unwrap_or(false);
    match obj.get("schema").filter(|s| !s.is_null()) {
        Some(schema) => schema_constraint(schema, strict, &format!("{field}.schema")),
        None => Ok(Constraint::JsonObject),
    }
}

/// A schema value → a compiled-and-checked constraint; an error names `field` plus the path inside the schema.
fn schema_constraint(schema: &Value, strict: bool, field: &str) -> Result<Constraint, BadRequest> {
    if !schema.is_object() {
        return Err(BadRequest::new(field, "must be a JSON schema object"));
    }
    let text = schema.to_string();
    if text.len() > MAX_SCHEMA_BYTES {
        return Err(BadRequest::new(
            field,
            format!("is {} bytes; the limit is {MAX_SCHEMA_BYTES}", text.len()),
        ));
    }
    let constraint = Constraint::JsonSchema { schema: text, strict };
    shoal_models::prompt::validate_constraint(&constraint).map_err(|e| {
        let at = if e.path.is_empty() {
            field.to_string()
        } else {
            format!("{field}.{}", e.path)
        };
        BadRequest::new(at, format!("unsupported or invalid JSON schema: {}", e.message))
    })?;
    Ok(constraint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(format: Value) -> Result<Option<Constraint>, BadRequest> {
        let obj = json!({ "response_format": format });
        response_format(obj.as_object().unwrap())
    }

    #[test]
    fn chat_formats_map_to_constraints() {
        assert_eq!(chat(json!({"type":"text"})).unwrap(), None);
        assert_eq!(
            chat(json!({"type":"json_object"})).unwrap(),
            Some(Constraint::JsonObject)
        );
        let schema = json!({"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]});
        let got = chat(json!({"type":"json_schema","json_schema":{"name":"x","schema":schema,"strict":true}}));
        assert_eq!(
            got.unwrap(),
            Some(Constraint::JsonSchema {
                schema: schema.to_string(),
                strict: true
            })
        );
        assert!(matches!(
            chat(json!({"type":"json_object","schema":{"type":"object"}})).unwrap(),
            Some(Constraint::JsonSchema { strict: false, .. })
        ));
        let none = json!({});
        assert_eq!(response_format(none.as_object().unwrap()).unwrap(), None);
    }

    #[test]
    fn bad_formats_name_the_field_and_the_place_in_the_schema() {
        let cases = [
            (json!("json"), "response_format"),
            (json!({}), "response_format.type"),
            (json!({"type":"yaml"}), "response_format.type"),
            (json!({"type":"json_schema"}), "response_format.json_schema"),
            (
                json!({"type":"json_schema","json_schema":{"name":3}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"type":"json_schema","json_schema":{"strict":"yes"}}),
                "response_format.json_schema.strict",
            ),
            (
                json!({"type":"json_schema","json_schema":{"schema":[1]}}),
                "response_format.json_schema.schema",
            ),
            (
                json!({"type":"json_schema","json_schema":{"schema":
                    {"type":"object","properties":{"user":{"type":"object","properties":{"age":{"type":"integr"}}}}}}}),
                "response_format.json_schema.schema.properties.user.properties.age",
            ),
            (
                json!({"type":"json_schema","json_schema":{"strict":true,"schema":
                    {"type":"object","properties":{"tags":{"type":"array","uniqueItems":true}}}}}),
                "response_format.json_schema.schema.properties.tags",
            ),
        ];
        for (format, field) in cases {
            let err = chat(format.clone()).unwrap_err();
            assert_eq!(err.field, field, "{format}: {err}");
        }
    }

    #[test]
    fn responses_and_ollama_formats() {
        let f = |v: Value| text_format(v.as_object().unwrap());
        assert_eq!(f(json!({"type":"text"})).unwrap(), None);
        assert_eq!(f(json!({"type":"json_object"})).unwrap(), Some(Constraint::JsonObject));
        assert!(matches!(
            f(json!({"type":"json_schema","name":"n","schema":{"type":"object"},"strict":true})).unwrap(),
            Some(Constraint::JsonSchema { strict: true, .. })
        ));
        let err =
            f(json!({"type":"json_schema","schema":{"type":"object","properties":{"a":{"enum":7}}}})).unwrap_err();
        assert_eq!(err.field, "text.format.schema.properties.a");

        assert_eq!(ollama_format(None).unwrap(), None);
        assert_eq!(ollama_format(Some(&json!(""))).unwrap(), None);
        assert_eq!(
            ollama_format(Some(&json!("json"))).unwrap(),
            Some(Constraint::JsonObject)
        );
        assert!(matches!(
            ollama_format(Some(&json!({"type":"object"}))).unwrap(),
            Some(Constraint::JsonSchema { strict: false, .. })
        ));
        assert_eq!(ollama_format(Some(&json!("yaml"))).unwrap_err().field, "format");
        assert_eq!(ollama_format(Some(&json!(3))).unwrap_err().field, "format");
        let err = ollama_format(Some(&json!({"properties":{"x":{"type":"nope"}}}))).unwrap_err();
        assert_eq!(err.field, "format.properties.x");
    }
}
