//! The call grammars compiled with llguidance over a small vocabulary (the 256 bytes and a few control tokens), fed
//! recorded outputs: what a grammar accepts, its format's parser reads back as the same calls, and what it refuses
//! is refused early (wrong argument types, unknown tools, a second call where only one is allowed).

use super::*;
use crate::grammar::{Constrained, Constraint, GrammarFactory};
use crate::output::Segment;
use llguidance::toktrie::TokTrie;

const EOS: u32 = 256;
const TOOL_CALLS: u32 = 257;
const ARGS: u32 = 258;
const PYTHON_TAG_ID: u32 = 259;

fn factory() -> GrammarFactory {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    for special in ["</s>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>"] {
        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        w.extend_from_slice(special.as_bytes());
        words.push(w);
    }
    GrammarFactory::from_words(&words, EOS).expect("factory")
}

/// The control tokens of the test vocabulary.
fn controls(text: &str) -> Option<u32> {
    match text {
        "[TOOL_CALLS]" => Some(TOOL_CALLS),
        "[ARGS]" => Some(ARGS),
        "<|python_tag|>" => Some(PYTHON_TAG_ID),
        _ => None,
    }
}

fn no_controls(_: &str) -> Option<u32> {
    None
}

fn tools() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "get_weather".into(),
            parameters: json!({"type":"object","properties":{"city":{"type":"string"},"days":{"type":"integer"}},
                               "required":["city"],"additionalProperties":false}),
        },
        ToolSpec {
            name: "noop".into(),
            parameters: Value::Null,
        },
    ]
}

fn compile(grammar: &str) -> Constrained {
    factory()
        .compile(&Constraint::Lark {
            grammar: grammar.to_string(),
        })
        .unwrap_or_else(|e| panic!("{e}\n{grammar}"))
}

/// Whether the grammar matches the whole of `segments` (text, control tokens by id).
fn matches(grammar: &str, segments: &[Segment]) -> bool {
    let mut c = compile(grammar);
    let fed = segments.iter().try_for_each(|s| match s {
        Segment::Text(t) => c.consume_text(t),
        Segment::Control(id) => c.commit(*id),
    });
    fed.is_ok() && c.is_accepting()
}

fn text(t: &str) -> Vec<Segment> {
    vec![Segment::Text(t.into())]
}

fn grammar(format: ToolFormat, parallel: bool, control: &'static dyn Fn(&str) -> Option<u32>) -> CallGrammar<'static> {
    // Leaked: a test's tools live for the whole test run anyway.
    let tools: &'static [ToolSpec] = Box::leak(tools().into_boxed_slice());
    CallGrammar {
        format,
        tools,
        parallel,
        control,
    }
}

fn names(format: ToolFormat, out: &str) -> Vec<(String, String)> {
    format
        .parse(out)
        .unwrap_or_else(|| panic!("{format:?} does not parse {out:?}"))
        .into_iter()
        .map(|c| (c.name, c.arguments))
        .collect()
}

#[test]
fn hermes_forced_calls_parse_back_one_or_several() {
    let one = forced_call_grammar(&grammar(ToolFormat::Hermes, false, &no_controls), &Forced::Any).expect("ok");
    let two = forced_call_grammar(&grammar(ToolFormat::Hermes, true, &no_controls), &Forced::Any).expect("ok");
    // Forced JSON is compact (a small model pads otherwise).
    let a = "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\",\"days\":2}}\n</tool_call>";
    let b = "<tool_call>\n{\"name\":\"noop\",\"arguments\":{}}\n</tool_call>";
    let both = format!("{a}\n{b}");
    assert!(matches(&one, &text(a)) && matches(&two, &text(a)));
    assert!(!matches(&one, &text(&both)), "one call only");
    assert!(matches(&two, &text(&both)));
    assert_eq!(names(ToolFormat::Hermes, &both).len(), 2);
    for bad in [
        "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":3}}\n</tool_call>",
        "<tool_call>\n{\"name\":\"get_time\",\"arguments\":{}}\n</tool_call>",
        "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{}}\n</tool_call>",
        "Sure! <tool_call>\n{\"name\":\"noop\",\"arguments\":{}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"noop\", \"arguments\": {}}\n</tool_call>",
    ] {
        assert!(!matches(&two, &text(bad)), "{bad}");
    }
    let named = forced_call_grammar(
        &grammar(ToolFormat::Hermes, true, &no_controls),
        &Forced::Named("noop".into()),
    )
    .expect("ok");
    assert!(!matches(&named, &text(a)) && matches(&named, &text(b)));
}

#[test]
fn generic_forced_wrapper_holds_one_or_up_to_the_limit() {
    let call = r#"{"name":"noop","arguments":{}}"#;
    let wrap = |n: usize| format!(r#"{{"tool_calls":[{}]}}"#, vec![call; n].join(","));
    let one = forced_call_grammar(&grammar(ToolFormat::Generic, false, &no_controls), &Forced::Any).expect("ok");
    let many = forced_call_grammar(&grammar(ToolFormat::Generic, true, &no_controls), &Forced::Any).expect("ok");
    assert!(matches(&one, &text(&wrap(1))) && !matches(&one, &text(&wrap(2))));
    assert!(matches(&many, &text(&wrap(2))) && matches(&many, &text(&wrap(MAX_PARALLEL_CALLS))));
    assert!(!matches(&many, &text(&wrap(MAX_PARALLEL_CALLS + 1))));
    assert_eq!(names(ToolFormat::Generic, &wrap(3)).len(), 3);
    // Forced JSON is compact; auto's takes whitespace as models write it, bounded.
    let spaced = "{\n  \"tool_calls\": [\n    {\"name\": \"noop\", \"arguments\": {}}\n  ]\n}";
    let auto = auto_call_grammar(&grammar(ToolFormat::Generic, true, &no_controls)).expect("ok");
    assert!(!matches(&one, &text(spaced)) && matches(&auto, &text(spaced)));
    let padded = format!("{{{}\"tool_calls\":[{call}]}}", " ".repeat(20));
    assert!(!matches(&auto, &text(&padded)));
}

#[test]
fn auto_generic_takes_the_wrapper_or_a_bare_call() {
    let g = auto_call_grammar(&grammar(ToolFormat::Generic, true, &no_controls)).expect("ok");
    let bare = r#"{"name": "get_weather", "arguments": {"city": "Oslo"}}"#;
    let wrapped = r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}"#;
    for out in [bare, wrapped] {
        assert!(matches(&g, &text(out)), "{out}");
        assert_eq!(
            names(ToolFormat::Generic, out),
            [("get_weather".into(), r#"{"city":"Oslo"}"#.into())]
        );
    }
    assert!(!matches(&g, &text(r#"{"answer": 42}"#)));
}

#[test]
fn mistral_old_and_new_forms() {
    let g = auto_call_grammar(&grammar(ToolFormat::Mistral, true, &controls)).expect("ok");
    let old = vec![
        Segment::Control(TOOL_CALLS),
        Segment::Text(
            r#"[{"name": "noop", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]"#.into(),
        ),
    ];
    assert!(matches(&g, &old));
    let new = vec![
        Segment::Control(TOOL_CALLS),
        Segment::Text("get_weather".into()),
        Segment::Control(ARGS),
        Segment::Text(r#"{"city":"Rome"}"#.into()),
        Segment::Control(TOOL_CALLS),
        Segment::Text("noop".into()),
        Segment::Control(ARGS),
        Segment::Text("{}".into()),
    ];
    assert!(matches(&g, &new));
    // The text the parser is handed: control tokens spelled out.
    let spelled = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]noop[ARGS]{}";
    assert_eq!(names(ToolFormat::Mistral, spelled).len(), 2);
    // `[ARGS]` typed as text is not the control token.
    let typed = vec![Segment::Control(TOOL_CALLS), Segment::Text("noop[ARGS]{}".into())];
    assert!(!matches(&g, &typed));
    let one = auto_call_grammar(&grammar(ToolFormat::Mistral, false, &controls)).expect("ok");
    assert!(!matches(&one, &new), "one call only");
    // Without control tokens in the vocabulary: the marker as text, the array form.
    let plain = auto_call_grammar(&grammar(ToolFormat::Mistral, true, &no_controls)).expect("ok");
    assert!(matches(
        &plain,
        &text(r#"[TOOL_CALLS][{"name":"noop","arguments":{}}]"#)
    ));
    // Forced: the marker may be left out.
    let forced = forced_call_grammar(&grammar(ToolFormat::Mistral, true, &controls), &Forced::Any).expect("ok");
    assert!(matches(&forced, &text(r#"[{"name":"noop","arguments":{}}]"#)));
    assert!(matches(&forced, &new));
}

#[test]
fn llama3_calls_with_or_without_the_tag() {
    let g = auto_call_grammar(&grammar(ToolFormat::Llama3, true, &controls)).expect("ok");
    let two = r#"{"name": "noop", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}"#;
    assert!(matches(&g, &text(two)));
    let mut tagged = vec![Segment::Control(PYTHON_TAG_ID)];
    tagged.extend(text(two));
    assert!(matches(&g, &tagged));
    assert_eq!(names(ToolFormat::Llama3, two).len(), 2);
    assert!(
        !matches(&g, &text(r#"{"name": "noop", "arguments": {}}"#)),
        "Llama names them parameters"
    );
}

#[test]
fn nothing_to_force_is_an_error() {
    let mut empty = grammar(ToolFormat::Hermes, true, &no_controls);
    empty.tools = &[];
    assert!(forced_call_grammar(&empty, &Forced::Any).is_err());
    assert!(auto_call_grammar(&empty).is_err());
    let e = forced_call_grammar(
        &grammar(ToolFormat::Hermes, true, &no_controls),
        &Forced::Named("x".into()),
    )
    .expect_err("unknown");
    assert!(e.contains("`x`"), "{e}");
}
