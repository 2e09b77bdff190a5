//! The built-in chat formats used when a model file has no template. Expected strings are llama.cpp's own output
//! for the same messages: `tools/ref_tokenize.cpp --chat NAME` (llama_chat_apply_template with the built-in
//! templates "chatml", "gemma", "llama3", "mistral-v7-tekken"; llama-cpp-python 0.3.36's llama.cpp).
#![allow(clippy::unwrap_used)]

use shoal_engine::chat::Builtin;
use shoal_engine::{ChatMessage, ChatTemplate};

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are terse.\n"),
        ChatMessage::new("user", " Hi there "),
        ChatMessage::new("assistant", "Hello."),
        ChatMessage::new("user", "2+2?"),
    ]
}

fn render(b: Builtin, add_generation_prompt: bool) -> String {
    ChatTemplate::builtin(b)
        .render(&conversation(), add_generation_prompt)
        .unwrap()
}

#[test]
fn chatml() {
    assert_eq!(
        render(Builtin::ChatMl, true),
        "<|im_start|>system\nYou are terse.\n<|im_end|>\n<|im_start|>user\n Hi there <|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn gemma_folds_system_into_first_user_turn() {
    assert_eq!(
        render(Builtin::Gemma, true),
        "<start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
         <start_of_turn>user\n2+2?<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        ChatTemplate::builtin(Builtin::Gemma)
            .render(&[ChatMessage::new("user", "Hi")], false)
            .unwrap(),
        "<start_of_turn>user\nHi<end_of_turn>\n"
    );
}

#[test]
fn llama3_headers() {
    assert_eq!(
        render(Builtin::Llama3, true),
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn mistral_v7_tekken() {
    // The reply follows [/INST] directly: add_generation_prompt adds nothing.
    let expected = "[SYSTEM_PROMPT]You are terse.\n[/SYSTEM_PROMPT][INST] Hi there [/INST]Hello.</s>[INST]2+2?[/INST]";
    assert_eq!(render(Builtin::MistralV7Tekken, true), expected);
    assert_eq!(render(Builtin::MistralV7Tekken, false), expected);
}

#[test]
fn names_are_llama_cpp_names() {
    let names: Vec<&str> = [
        Builtin::ChatMl,
        Builtin::Gemma,
        Builtin::Llama3,
        Builtin::MistralV7Tekken,
    ]
    .iter()
    .map(|b| b.name())
    .collect();
    assert_eq!(names, ["chatml", "gemma", "llama3", "mistral-v7-tekken"]);
}
