//! Fuzzing the Ollama request decoders (issue 12): whatever the bytes, `parse_chat`, `parse_generate`, `parse_show`
//! and `parse_pull` return a request or a 400 that names a field; they never panic. Arbitrary bytes, arbitrary
//! JSON, and valid requests with one field (or one of `options`) replaced by an arbitrary JSON value.

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::ollama::request::{parse_chat, parse_generate, parse_pull, parse_show};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-3i64..3).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("user".into())),
        Just(Value::String("json".into())),
        Just(Value::String(String::new())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("role".to_string()),
                    Just("content".to_string()),
                    Just("images".to_string()),
                    Just("tool_calls".to_string()),
                    Just("thinking".to_string()),
                    "[a-z_]{1,10}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "system",
    "raw",
    "suffix",
    "images",
    "context",
    "template",
    "stream",
    "options",
    "format",
    "keep_alive",
    "think",
    "tools",
    "logprobs",
];

const OPTIONS: &[&str] = &[
    "num_predict",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "seed",
    "stop",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "num_ctx",
    "mirostat",
];

type Parse = fn(&[u8]) -> Result<(), shoal_api::BadRequest>;

/// Every parser, as one that only says whether it accepted.
const PARSERS: &[Parse] = &[
    |b| parse_chat(b).map(|_| ()),
    |b| parse_generate(b).map(|_| ()),
    |b| parse_show(b).map(|_| ()),
    |b| parse_pull(b).map(|_| ()),
];

fn base() -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": "hi",
        "options": {"num_predict": 8, "temperature": 0.5},
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for parse in PARSERS {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(!bad.field.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_a_field(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        for parse in PARSERS {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(!bad.field.is_empty() && !bad.message.is_empty());
            }
        }
    }

    #[test]
    fn one_bad_field_is_named_or_accepted(field in prop::sample::select(FIELDS), value in json_value()) {
        let mut body = base();
        body[field] = value;
        let bytes = body.to_string().into_bytes();
        for parse in PARSERS {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(
                    bad.field.starts_with(field) || bad.field == "body",
                    "{field} replaced, but the error names {}", bad.field
                );
            }
        }
    }

    #[test]
    fn one_bad_option_is_named_or_accepted(option in prop::sample::select(OPTIONS), value in json_value()) {
        let mut body = base();
        body["options"][option] = value;
        let bytes = body.to_string().into_bytes();
        for parse in [PARSERS[0], PARSERS[1]] {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(
                    bad.field.starts_with(&format!("options.{option}")),
                    "options.{option} replaced, but the error names {}", bad.field
                );
            }
        }
    }
}
