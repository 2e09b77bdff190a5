//! Fuzzing structured output: arbitrary JSON (biased towards JSON Schema's keywords) as OpenAI's
//! `response_format`, its `json_schema.schema`, Responses' `text.format` and Ollama's `format`. Whatever it is, the
//! parser returns a constraint or a 400 whose field lies under the one fuzzed; it never panics (the schema is
//! compiled by llguidance while parsing, so this fuzzes that compile too).

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::structured::{ollama_format, response_format, text_format};

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(
        &[
            "object",
            "string",
            "integer",
            "number",
            "boolean",
            "array",
            "null",
            "json_schema",
            "json_object",
            "text",
            "date-time",
            "email",
            "^[a-z]+$",
            "#/$defs/a",
        ],
        &[
            "type",
            "properties",
            "items",
            "required",
            "enum",
            "const",
            "anyOf",
            "oneOf",
            "allOf",
            "additionalProperties",
            "minimum",
            "maximum",
            "minLength",
            "maxLength",
            "minItems",
            "maxItems",
            "pattern",
            "format",
            "$ref",
            "$defs",
            "schema",
            "json_schema",
            "strict",
            "name",
            "prefixItems",
            "x-guidance",
        ],
    )
}

fn under(field: &str, prefix: &str) -> bool {
    field == prefix || field.starts_with(&format!("{prefix}.")) || field.starts_with(&format!("{prefix}["))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn any_response_format_is_a_constraint_or_names_a_field_under_it(value in json_value()) {
        let obj = json!({ "response_format": value });
        if let Err(bad) = response_format(obj.as_object().unwrap_or(&serde_json::Map::new())) {
            prop_assert!(under(&bad.field, "response_format"), "{bad}");
        }
    }

    #[test]
    fn any_schema_compiles_or_names_a_place_in_it(schema in json_value(), strict in any::<bool>()) {
        let obj = json!({ "response_format": {
            "type": "json_schema", "json_schema": { "name": "x", "schema": schema, "strict": strict } } });
        if let Err(bad) = response_format(obj.as_object().unwrap_or(&serde_json::Map::new())) {
            prop_assert!(under(&bad.field, "response_format.json_schema.schema"), "{bad}");
        }
    }

    #[test]
    fn any_text_format_or_ollama_format_is_handled(value in json_value()) {
        if let Some(format) = value.as_object()
            && let Err(bad) = text_format(format)
        {
            prop_assert!(under(&bad.field, "text.format"), "{bad}");
        }
        if let Err(bad) = ollama_format(Some(&value)) {
            prop_assert!(under(&bad.field, "format"), "{bad}");
        }
    }
}
