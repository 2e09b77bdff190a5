//! A model run as stage processes (`shoal runner` children) over the loopback TCP data plane: the same tokens as
//! in one process, with several sequences batched through the ring, and a clear error (not a hang) when a stage
//! dies.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_engine::{ChatMessage, ChatTemplate, GenerateParams, Pipeline, Pool, SamplingParams, Tokenizer, generate};
use shoal_runner::LocalPipeline;

fn prompts(tok: &Tokenizer) -> Vec<Vec<u32>> {
    let template = ChatTemplate::from_tokenizer(tok).unwrap();
    [
        "Name three colors.",
        "What is 2+2?",
        "Write a haiku about rain.",
        "Who wrote Hamlet?",
        "List two fruits.",
        "What is the boiling point of water?",
        "Say hello in Spanish.",
        "What is the capital of France? Answer in one sentence.",
    ]
    .iter()
    .map(|q| {
        let text = template.render(&[ChatMessage::new("user", *q)], true).unwrap();
        tok.encode(&text).unwrap()
    })
    .collect()
}

#[test]
fn batched_sequences_through_three_stage_processes_match_one_process() {
    let model = common::model_path();
    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    let prompts = prompts(&tok);
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 10,
        stop: vec![],
        output: Default::default(),
        constraint: None,
    };
    let mut local = Pipeline::load(&model, &[], Arc::new(Pool::new(1))).unwrap();
    let expected: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| generate(&mut local, &tok, 0, p, &params, &mut |_| {}).unwrap().tokens)
        .collect();
    drop(local);

    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut ring = LocalPipeline::start(exe, &model, &[0, 9, 21, 30], 1, 8).unwrap();
    let requests: Vec<_> = prompts.iter().map(|p| (p.clone(), params.clone())).collect();
    let mut streamed = vec![String::new(); requests.len()];
    let out = ring
        .generate_batch(&requests, &mut |i, s| streamed[i].push_str(s))
        .unwrap();
    for (i, g) in out.iter().enumerate() {
        assert_eq!(g.tokens, expected[i], "request {i}");
        assert_eq!(g.text, streamed[i]);
        assert_eq!(g.prompt_tokens, prompts[i].len());
    }
    // The ring serves again after a batch: slots were released on every rank.
    let again = ring.generate(&prompts[7], &params, &mut |_| {}).unwrap();
    assert_eq!(again.tokens, expected[7]);
    assert!(again.text.contains("Paris"), "{}", again.text);
}

#[test]
fn a_dead_stage_fails_the_generation_quickly() {
    let model = common::model_path();
    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    let prompt = prompts(&tok).remove(0);
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut ring = LocalPipeline::start(exe, &model, &[0, 15, 30], 1, 8).unwrap();
    let pid = ring.runners()[1].pid();
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 100_000,
        stop: vec![],
        output: Default::default(),
        constraint: None,
    };
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    });
    let started = Instant::now();
    let err = ring.generate(&prompt, &params, &mut |_| {}).unwrap_err();
    killer.join().unwrap();
    println!("after {:?}: {err}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Cancelling one sequence mid-generation (while others share its forward passes) ends it with `Cancelled`, leaves
/// the other sequence's tokens unchanged, and frees its slot on every rank: the ring serves a new task afterwards.
#[test]
fn cancel_mid_generation_frees_the_sequence_on_every_rank() {
    use shoal_runner::proto::{FromRunner, Outcome};

    let model = common::model_path();
    let tok = Tokenizer::from_gguf_path(&model).unwrap();
    let prompts = prompts(&tok);
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let mut ring = LocalPipeline::start(exe, &model, &[0, 10, 30], 1, 8).unwrap();
    let short = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 16,
        stop: vec![],
        output: Default::default(),
        constraint: None,
    };
    let alone = ring.generate(&prompts[1], &short, &mut |_| {}).unwrap().tokens;
    let long = GenerateParams {
        max_tokens: 5_000,
        ..short.clone()
    };
    let doomed = ring.submit(&prompts[0], &long).unwrap();
    let kept = ring.submit(&prompts[1], &short).unwrap();
    let (mut kept_tokens, mut doomed_chunks) = (Vec::new(), 0);
    let (mut doomed_done, mut kept_done) = (None, false);
    while doomed_done.is_none() || !kept_done {
        let (_, msg) = ring.next_event(Duration::from_secs(10)).unwrap();
        match msg {
            FromRunner::Chunk { task, token, .. } if task == kept => kept_tokens.push(token),
            FromRunner::Chunk { task, .. } if task == doomed => {
                doomed_chunks += 1;
                if doomed_chunks == 3 {
                    ring.cancel(doomed).unwrap();
                }
            }
            FromRunner::TaskDone { task, outcome } if task == doomed => doomed_done = Some(outcome),
            FromRunner::TaskDone { task, outcome } if task == kept => {
                assert!(matches!(outcome, Outcome::Complete { .. }), "{outcome:?}");
                kept_done = true;
            }
            _ => {}
        }
    }
    assert_eq!(doomed_done, Some(Outcome::Cancelled));
    assert!(
        doomed_chunks < 100,
        "cancellation took effect late: {doomed_chunks} chunks"
    );
    assert_eq!(
        kept_tokens, alone,
        "a neighbour's cancellation does not change a sequence's tokens"
    );
    let again = ring.generate(&prompts[7], &short, &mut |_| {}).unwrap();
    assert!(again.text.contains("Paris"), "{}", again.text);
}
