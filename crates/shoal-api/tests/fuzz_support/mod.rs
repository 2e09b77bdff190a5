//! What every dialect's request fuzzer shares: arbitrary JSON biased towards the words and keys its parser looks
//! for (so the fuzzer reaches past the first type check), and the case count.
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON whose strings are often one of `words` and whose object keys are often one of `keys`.
pub fn json_value(words: &'static [&'static str], keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(words).prop_map(|w| Value::String(w.to_owned())),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        let key = prop_oneof![
            prop::sample::select(keys).prop_map(str::to_owned),
            "[a-z_]{1,10}".prop_map(|k| k),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Cases per property: `SHOAL_FUZZ_CASES` (the long run: `SHOAL_FUZZ_CASES=1000000`), else `PROPTEST_CASES`, else
/// `CI_CASES`.
pub fn cases() -> u32 {
    /// Small enough that every fuzz file of the workspace together stays within CI's budget on 2 cores.
    const CI_CASES: u32 = 512;
    ["SHOAL_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
        .unwrap_or(CI_CASES)
}
