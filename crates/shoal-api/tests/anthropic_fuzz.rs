//! Fuzzing the Anthropic Messages request decoders: whatever the bytes, `parse_messages` and `parse_count_tokens`
//! return a request or a 400 that names a field; they never panic. Arbitrary bytes, arbitrary JSON, and valid
//! requests with one field replaced by an arbitrary JSON value.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::anthropic::request::{parse_count_tokens, parse_messages};

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(
        &["user", "text", "image", "enabled"],
        &["role", "content", "type", "text", "thinking"],
    )
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

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
            // One message, or more where `tool_result` blocks became `tool` messages.
            Ok(request) => prop_assert!(!request.params.messages.is_empty()),
            Err(bad) => prop_assert!(bad.field.starts_with("messages[0].content"), "{}", bad.field),
        }
    }
}
