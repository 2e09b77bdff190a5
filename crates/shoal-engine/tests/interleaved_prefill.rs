//! Interleaving a long prompt's prefill with a running sequence's decode steps, in the small chunks a step budget
//! picks, changes no token: both sequences give exactly the greedy tokens of separate runs (issue 17's "no
//! correctness change").
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_engine::sampling::argmax;
use shoal_engine::{PREFILL_CHUNK, Pipeline, STEP_TARGET, Scheduler, SeqSlot, Tokenizer};

const GENERATED: usize = 12;

fn separate(p: &mut Pipeline, prompt: &[u32]) -> Vec<u32> {
    p.release(0);
    let mut logits = p.forward(0, prompt).unwrap();
    let mut out = Vec::new();
    while out.len() < GENERATED {
        let t = argmax(&logits).unwrap();
        out.push(t);
        logits = p.forward(0, &[t]).unwrap();
    }
    p.release(0);
    out
}

#[test]
fn interleaved_small_chunks_give_the_tokens_of_separate_runs() {
    let _g = common::exclusive();
    let path = common::model_path();
    let tok = Tokenizer::from_gguf_path(&path).unwrap();
    let mut p = Pipeline::load(&path, &[10], common::pool()).unwrap();
    let running = tok.encode("Count from 1 to 50, one number per line.").unwrap();
    let long = tok
        .encode(&"The quick brown fox jumps over the lazy dog near the river bank. ".repeat(25))
        .unwrap();
    assert!(long.len() > 200, "{}", long.len());
    let want: BTreeMap<SeqSlot, Vec<u32>> = [(1, separate(&mut p, &running)), (2, separate(&mut p, &long))].into();

    let mut s = Scheduler::new(4, PREFILL_CHUNK).with_step_target(STEP_TARGET);
    s.submit(1, running.clone());
    let mut got: BTreeMap<SeqSlot, Vec<u32>> = BTreeMap::new();
    let mut prompt_chunks = Vec::new();
    let mut steps = 0u64;
    while !s.is_idle() {
        // The long prompt arrives once the running sequence decodes.
        if got.get(&1).is_some_and(|g| g.len() == 2) && !got.contains_key(&2) {
            s.submit(2, long.clone());
            got.insert(2, Vec::new());
        }
        let step = s.next_step().unwrap();
        steps += 1;
        let logits = p.forward_batch(&step.chunks, &step.tokens).unwrap();
        let mut back = Vec::new();
        for (i, c) in step.chunks.iter().enumerate() {
            if step.decoding > 0 && i >= step.decoding {
                prompt_chunks.push(c.n_tokens);
            }
            if step.sample[i] {
                let t = argmax(&logits[i]).unwrap();
                let mine = got.entry(c.slot).or_default();
                mine.push(t);
                let done = mine.len() == GENERATED;
                if done {
                    p.release(c.slot);
                }
                back.push((c.slot, t, done));
            }
        }
        // A made-up clock whose cost per prompt token wanders, so the chunks come in many sizes.
        let prompt = (step.tokens.len() - step.decoding) as u64;
        let per_token_us = 4_000 + 3_000 * (steps % 3);
        s.observe(&step, Duration::from_micros(30_000 + per_token_us * prompt));
        s.complete(&step, &back);
    }
    assert_eq!(got, want);
    let distinct: std::collections::BTreeSet<usize> = prompt_chunks.iter().copied().collect();
    assert!(
        distinct.len() >= 3 && prompt_chunks.iter().all(|&n| n <= 40),
        "small chunks of several sizes beside the running sequence: {prompt_chunks:?}"
    );
}
