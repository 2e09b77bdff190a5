//! Fuzzing the chat request decoder (issue 5): whatever the bytes, `parse_chat` returns a request or a 400 that names
//! a field; it never panics. Arbitrary bytes, arbitrary JSON, and valid requests with one field replaced by an
//! arbitrary JSON value.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::openai::chat_request::parse_chat;

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(&["user"], &["role", "content", "type", "text"])
}

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "tools",
    "reasoning_effort",
    "enable_thinking",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(bad) = parse_chat(&bytes) {
            prop_assert!(!bad.field.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_a_field(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        if let Err(bad) = parse_chat(&bytes) {
            prop_assert!(!bad.field.is_empty() && !bad.message.is_empty());
        }
    }

    #[test]
    fn one_bad_field_is_named_or_accepted(field in prop::sample::select(FIELDS), value in json_value()) {
        let mut body = json!({"model": "smollm2-135m", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        match parse_chat(body.to_string().as_bytes()) {
            // Accepted: the message list is still the one sent (a replaced `messages` may be another valid list).
            Ok(request) => prop_assert!(!request.params.messages.is_empty()),
            Err(bad) => prop_assert!(
                bad.field.starts_with(field) || bad.field == "body",
                "{field} replaced, but the error names {}", bad.field
            ),
        }
    }
}
