//! Fuzzing the Ollama request decoders (issue 12): whatever the bytes, `parse_chat`, `parse_generate`, `parse_show`
//! and `parse_pull` return a request or a 400 that names a field; they never panic. Arbitrary bytes, arbitrary
//! JSON, and valid requests with one field (or one of `options`) replaced by an arbitrary JSON value.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::ollama::request::{parse_chat, parse_generate, parse_pull, parse_show};

fn json_value() -> impl Strategy<Value = Value> {
    fuzz_support::json_value(
        &["user", "json", ""],
        &["role", "content", "images", "tool_calls", "thinking"],
    )
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

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
