//! Fuzzing the Anthropic Messages request decoders: whatever the bytes, `parse_messages` and `parse_count_tokens`
//! return a request or a 400 that names a field; they never panic. Arbitrary bytes, arbitrary JSON, and valid
//! requests with one field replaced by an arbitrary JSON value.

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::anthropic::request::{parse_count_tokens, parse_messages};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("user".into())),
        Just(Value::String("text".into())),
        Just(Value::String("image".into())),
        Just(Value::String("enabled".into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("role".to_string()),
                    Just("content".to_string()),
                    Just("type".to_string()),
                    Just("text".to_string()),
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
    "max_tokens",
    "system",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "stream",
    "thinking",
    "tools",
    "tool_choice",
];

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
        for parse in [parse_messages, parse_count_tokens] {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(!bad.field.is_empty());
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_a_field(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        for parse in [parse_messages, parse_count_tokens] {
            if let Err(bad) = parse(&bytes) {
                prop_assert!(!bad.field.is_empty() && !bad.message.is_empty());
            }
        }
    }

    #[test]
    fn one_bad_field_is_named_or_accepted(field in prop::sample::select(FIELDS), value in json_value()) {
        let mut body = json!({"model": "smollm2-135m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let bytes = body.to_string().into_bytes();
        for parse in [parse_messages, parse_count_tokens] {
            match parse(&bytes) {
                // Accepted: the message list is still one (a replaced `messages` may be another valid list).
                Ok(request) => prop_assert!(!request.params.messages.is_empty()),
                Err(bad) => prop_assert!(
                    bad.field.starts_with(field) || bad.field == "body",
                    "{field} replaced, but the error names {}", bad.field
                ),
            }
        }
    }

    /// Any message content made of blocks either parses (text blocks joined) or names the block at fault.
    #[test]
    fn content_blocks_are_joined_or_named(blocks in prop::collection::vec(json_value(), 0..4)) {
        let body = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": blocks}]});
        match parse_messages(body.to_string().as_bytes()) {
            Ok(request) => prop_assert_eq!(request.params.messages.len(), 1),
            Err(bad) => prop_assert!(bad.field.starts_with("messages[0].content"), "{}", bad.field),
        }
    }
}
