//! Fuzzing the OpenAI Completions and Responses request decoders (issue 12): whatever the bytes, `parse_completion`
//! and `parse_responses` return a request or a 400 that names a field; they never panic. Arbitrary bytes, arbitrary
//! JSON, and valid requests with one field replaced by an arbitrary JSON value.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::openai::completions::parse_completion;
use shoal_api::openai::responses_request::parse_responses;

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(
        &[
            "user",
            "message",
            "input_text",
            "output_text",
            "input_image",
            "function_call",
        ],
        &["role", "content", "type", "text", "format", "effort", "include_usage"],
    )
}

const COMPLETION_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "max_tokens",
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
    "best_of",
    "echo",
    "logprobs",
    "suffix",
    "stream",
    "stream_options",
    "user",
];

const RESPONSES_FIELDS: &[&str] = &[
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "metadata",
    "store",
    "background",
    "previous_response_id",
    "conversation",
    "prompt",
    "tools",
    "tool_choice",
    "reasoning",
    "text",
    "parallel_tool_calls",
    "user",
    "truncation",
    "include",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(bad) = parse_completion(&bytes) {
            prop_assert!(!bad.field.is_empty());
        }
        if let Err(bad) = parse_responses(&bytes) {
            prop_assert!(!bad.field.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_errors_name_a_field(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        if let Err(bad) = parse_completion(&bytes) {
            prop_assert!(!bad.field.is_empty() && !bad.message.is_empty());
        }
        if let Err(bad) = parse_responses(&bytes) {
            prop_assert!(!bad.field.is_empty() && !bad.message.is_empty());
        }
    }

    #[test]
    fn an_arbitrary_input_or_prompt_never_panics(value in json_value()) {
        let body = json!({"model": "smollm2-135m", "input": value.clone()});
        if let Err(bad) = parse_responses(body.to_string().as_bytes()) {
            prop_assert!(bad.field.starts_with("input"), "{}", bad.field);
        }
        let body = json!({"model": "smollm2-135m", "input": [{"role": "user", "content": value.clone()}]});
        if let Err(bad) = parse_responses(body.to_string().as_bytes()) {
            prop_assert!(bad.field.starts_with("input[0]"), "{}", bad.field);
        }
        let body = json!({"model": "smollm2-135m", "prompt": value});
        if let Err(bad) = parse_completion(body.to_string().as_bytes()) {
            prop_assert_eq!(bad.field, "prompt");
        }
    }

    #[test]
    fn one_bad_completion_field_is_named_or_accepted(
        field in prop::sample::select(COMPLETION_FIELDS), value in json_value()
    ) {
        let mut body = json!({"model": "smollm2-135m", "prompt": "Once upon a time"});
        body[field] = value;
        match parse_completion(body.to_string().as_bytes()) {
            Ok(request) => prop_assert!(request.params.raw_prompt.is_some_and(|p| !p.is_empty())),
            Err(bad) => prop_assert!(
                bad.field.starts_with(field) || bad.field == "body",
                "{field} replaced, but the error names {}", bad.field
            ),
        }
    }

    #[test]
    fn one_bad_responses_field_is_named_or_accepted(
        field in prop::sample::select(RESPONSES_FIELDS), value in json_value()
    ) {
        let mut body = json!({"model": "smollm2-135m", "input": "hi"});
        body[field] = value;
        match parse_responses(body.to_string().as_bytes()) {
            Ok(request) => prop_assert!(!request.params.messages.is_empty()),
            Err(bad) => prop_assert!(
                bad.field.starts_with(field) || bad.field == "body",
                "{field} replaced, but the error names {}", bad.field
            ),
        }
    }
}
