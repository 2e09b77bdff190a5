#![allow(clippy::unwrap_used)]
//! A prompt past the context (issue 15): refused by rank 0's `prepare` and counted by the API node without
//! tokenizing all of it, with a message that says how long it is at least.

#[path = "../../shoal-engine/tests/common/mod.rs"]
mod common;

use shoal_models::prompt::{Bounded, Prompter};
use shoal_types::card::{builtin_cards, find_card};
use shoal_types::params::{GenerationParams, Message, Role};

fn prompter() -> (Prompter, usize) {
    let card = find_card(&builtin_cards(), "smollm2-135m").unwrap().clone();
    let context = card.context_length as usize;
    (Prompter::load(&common::model_path(), &card).unwrap(), context)
}

fn chat(content: String) -> GenerationParams {
    GenerationParams {
        messages: vec![Message::new(Role::User, content)],
        ..GenerationParams::default()
    }
}

#[test]
fn a_prompt_past_the_context_is_refused_with_its_size_and_one_within_is_prepared() {
    let (prompter, context) = prompter();
    let long = chat("lorem ipsum ".repeat(90_000));
    let error = prompter.prepare(&long).unwrap_err();
    assert!(
        error.contains("at least") && error.contains(&context.to_string()),
        "{error}"
    );
    match prompter.tokens_within(&long, context - 1).unwrap() {
        Bounded::Over { at_least } => assert!(at_least >= context, "{at_least}"),
        Bounded::Tokens(ids) => panic!("{} tokens within the context", ids.len()),
    }

    let short = chat("Hello there".into());
    let (tokens, params) = prompter.prepare(&short).unwrap();
    assert_eq!(
        Bounded::Tokens(tokens.clone()),
        prompter.tokens_within(&short, context - 1).unwrap()
    );
    assert!(params.max_tokens <= context - tokens.len());
}
