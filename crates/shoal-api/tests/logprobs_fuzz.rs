//! Fuzzing the logprobs and `n` fields (issue 14, items 4 and 6) in every dialect that reads them: whatever JSON value
//! `logprobs`, `top_logprobs`, `n` or Responses' `include` hold, the request parses with values in range (a count of
//! alternatives ≤ 20, ≤ 5 for legacy Completions; 1 ≤ n ≤ 8; alternatives only with logprobs) or is a 400 naming
//! that very field; nothing panics.

mod fuzz_support;

use proptest::prelude::*;
use serde_json::{Value, json};
use shoal_api::error::BadRequest;
use shoal_api::logprobs::{MAX_CHOICES, MAX_COMPLETIONS_LOGPROBS, MAX_TOP_LOGPROBS};
use shoal_api::ollama::request::parse_chat as ollama_chat;
use shoal_api::openai::chat_request::parse_chat;
use shoal_api::openai::completions::parse_completion;
use shoal_api::openai::responses_request::parse_responses;
use shoal_types::params::GenerationParams;

/// JSON values leaning towards what these fields take: small and large integers, booleans, include entries.
fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-3i64..30).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<bool>().prop_map(Value::from),
        Just(Value::Null),
        Just(json!(["message.output_text.logprobs"])),
        fuzz_support::json_value(&["message.output_text.logprobs", "x"], &["logprobs"]),
    ]
}

fn in_range(p: &GenerationParams, top_limit: u32) -> bool {
    p.top_logprobs.is_none_or(|n| n <= top_limit && p.logprobs)
}

fn named(result: &Result<GenerationParams, BadRequest>, fields: &[&str], limit: u32) -> Result<(), TestCaseError> {
    match result {
        Ok(p) => prop_assert!(in_range(p, limit), "{p:?}"),
        Err(bad) => prop_assert!(
            fields.iter().any(|f| bad.field.starts_with(f)),
            "the error names {}, not one of {fields:?}",
            bad.field
        ),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn chat_fields_parse_in_range_or_are_named(lp in value(), top in value(), n in value()) {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                          "logprobs": lp, "top_logprobs": top, "n": n});
        let parsed = parse_chat(body.to_string().as_bytes());
        if let Ok(r) = &parsed {
            prop_assert!((1..=MAX_CHOICES).contains(&r.n));
        }
        named(&parsed.map(|r| r.params), &["logprobs", "top_logprobs", "n"], MAX_TOP_LOGPROBS)?;
    }

    #[test]
    fn completions_fields_parse_in_range_or_are_named(lp in value(), n in value()) {
        let body = json!({"model": "m", "prompt": "x", "logprobs": lp, "n": n});
        let parsed = parse_completion(body.to_string().as_bytes());
        if let Ok(r) = &parsed {
            prop_assert!((1..=MAX_CHOICES).contains(&r.n));
            prop_assert_eq!(r.params.logprobs, r.params.top_logprobs.is_some());
        }
        named(&parsed.map(|r| r.params), &["logprobs", "n"], MAX_COMPLETIONS_LOGPROBS)?;
    }

    #[test]
    fn responses_fields_parse_in_range_or_are_named(include in value(), top in value()) {
        let body = json!({"model": "m", "input": "x", "include": include, "top_logprobs": top});
        let parsed = parse_responses(body.to_string().as_bytes()).map(|r| r.params);
        named(&parsed, &["include", "top_logprobs"], MAX_TOP_LOGPROBS)?;
    }

    #[test]
    fn ollama_fields_parse_in_range_or_are_named(lp in value(), top in value()) {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
                          "logprobs": lp, "top_logprobs": top});
        let parsed = ollama_chat(body.to_string().as_bytes()).map(|r| r.params);
        named(&parsed, &["logprobs", "top_logprobs"], MAX_TOP_LOGPROBS)?;
    }
}
