//! Logprobs on the real test model: what `Decoding` reports equals a log-softmax of the model's logits computed here
//! independently (f64), and at temperature 0 the chosen token heads the top list.
#![allow(clippy::unwrap_used)]

mod common;

use shoal_engine::{ChatMessage, ChatTemplate, Decoding, GenerateParams, Pipeline, SamplingParams, Tokenizer};

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits.iter().map(|&l| l as f64 - max - z.ln()).collect()
}

#[test]
fn reported_logprobs_are_the_log_softmax_of_the_logits() {
    let _g = common::exclusive();
    let path = common::model_path();
    let tok = Tokenizer::from_gguf_path(&path).unwrap();
    let text = ChatTemplate::from_tokenizer(&tok)
        .unwrap()
        .render(&[ChatMessage::new("user", "Name three colours.")], true)
        .unwrap();
    let prompt = tok.encode(&text).unwrap();
    let mut p = Pipeline::load(&path, &[], common::pool()).unwrap();
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: 8,
        logprobs: Some(20),
        ..Default::default()
    };
    let mut decoding = Decoding::new(&tok, &prompt, &params, 8192).unwrap();
    let mut logits = p.forward(0, &prompt).unwrap();
    for _ in 0..8 {
        let reference = log_softmax(&logits);
        let step = decoding.step(&mut logits.clone()).unwrap();
        let lp = step.logprobs.expect("asked for");
        assert_eq!(lp.token, step.token);
        assert_eq!(lp.top.len(), 20);
        assert_eq!(lp.top[0].0, step.token, "greedy: the chosen token is the most likely");
        assert!((lp.logprob as f64 - reference[step.token as usize]).abs() < 1e-4);
        for (id, v) in &lp.top {
            assert!((*v as f64 - reference[*id as usize]).abs() < 1e-4, "token {id}");
        }
        let mut sorted = reference.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert!(
            (lp.top[19].1 as f64 - sorted[19]).abs() < 1e-4,
            "the 20th is the 20th most likely"
        );
        if step.finish.is_some() {
            break;
        }
        logits = p.forward(0, &[step.token]).unwrap();
    }

    // Not asked: nothing computed.
    let mut plain = Decoding::new(&tok, &prompt, &GenerateParams::default(), 8192).unwrap();
    let logits = p.forward(1, &prompt).unwrap();
    assert!(plain.step(&mut logits.clone()).unwrap().logprobs.is_none());
    // Over the limit: refused.
    let too_many = GenerateParams {
        logprobs: Some(21),
        ..Default::default()
    };
    assert!(Decoding::new(&tok, &prompt, &too_many, 8192).is_err());
}

/// What asking costs: one `token_logprobs` over the test model's vocabulary (printed; run with `--nocapture`).
#[test]
fn the_cost_of_logprobs_per_token() {
    let logits: Vec<f32> = (0..49_152u32)
        .map(|i| ((i * 7919) % 4093) as f32 / 300.0 - 5.0)
        .collect();
    let reps = 200;
    for top in [0, 5, 20] {
        let began = std::time::Instant::now();
        for i in 0..reps {
            let lp = shoal_engine::token_logprobs(&logits, i, top).unwrap();
            assert_eq!(lp.top.len(), top);
        }
        let each = began.elapsed() / reps;
        println!("token_logprobs over 49,152 logits, top {top}: {each:?} per token");
    }
}
