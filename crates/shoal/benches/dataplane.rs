//! The cost of the data plane's mutual TLS (SYSTEM.md §10.4) on loopback: the test model as a 3-stage pipeline of
//! runner processes on this machine, with and without a cluster key, runs alternated so the machine's noise hits both
//! alike. Prints decode tok/s (one sequence, and a batch of 8) and prefill tok/s (a 512-token prompt), medians.
//!
//! `cargo bench -p shoal --bench dataplane` (`SHOAL_BENCH_THREADS`, default 1 per runner; `SHOAL_BENCH_REPS`,
//! default 6).
#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;

use shoal_engine::{GenerateParams, SamplingParams};
use shoal_net::cluster_key::{ClusterKey, NODE_DNS_NAME};
use shoal_runner::LocalPipeline;
use shoal_runner::proto::DataPlaneTls;
use shoal_types::NodeId;

const BOUNDS: [usize; 4] = [0, 10, 20, 30];

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn params(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens,
        stop: vec![],
        ..Default::default()
    }
}

/// (decode tok/s one sequence, decode tok/s summed over 8 sequences, prefill tok/s of 512 tokens).
fn measure(ring: &mut LocalPipeline) -> (f64, f64, f64) {
    let prompt: Vec<u32> = (0..16).map(|i| 100 + i).collect();
    let one = ring
        .generate(&prompt, &params(128), &mut |_| {})
        .unwrap()
        .decode_tok_per_s();
    let batch: Vec<(Vec<u32>, GenerateParams)> = (0..8u32)
        .map(|s| ((0..16).map(|i| 200 + i + s).collect(), params(64)))
        .collect();
    let outs = ring.generate_batch(&batch, &mut |_, _| {}).unwrap();
    let eight: f64 = outs.iter().map(|g| g.decode_tok_per_s()).sum();
    let long: Vec<u32> = (0..512).map(|i| 300 + (i % 1000)).collect();
    let pp = ring
        .generate(&long, &params(1), &mut |_| {})
        .unwrap()
        .prefill_tok_per_s();
    (one, eight, pp)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let env_usize = |key: &str, default: usize| -> usize {
        std::env::var(key).ok().and_then(|t| t.parse().ok()).unwrap_or(default)
    };
    let threads = env_usize("SHOAL_BENCH_THREADS", 1);
    let reps = env_usize("SHOAL_BENCH_REPS", 6).max(1);
    let exe = Path::new(env!("CARGO_BIN_EXE_shoal"));
    let model = common::model_path();
    let key = ClusterKey::generate().unwrap();
    let node = NodeId::from_random([0xa5; 16]).unwrap();
    let cert = key.issue_node_cert(node).unwrap();
    let tls = DataPlaneTls {
        ca_pem: cert.ca_pem,
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        server_name: NODE_DNS_NAME.into(),
    };
    let mut plain = LocalPipeline::start(exe, &model, &BOUNDS, threads, 8).unwrap();
    let mut keyed = LocalPipeline::start_with_tls(exe, &model, &BOUNDS, threads, 8, Some(tls)).unwrap();
    // Same tokens either way, and a warm-up.
    let prompt: Vec<u32> = (0..16).map(|i| 100 + i).collect();
    let a = plain.generate(&prompt, &params(32), &mut |_| {}).unwrap().tokens;
    let b = keyed.generate(&prompt, &params(32), &mut |_| {}).unwrap().tokens;
    assert_eq!(a, b, "TLS changed the tokens");
    let (mut p, mut k) = (Vec::new(), Vec::new());
    // Each order every other repetition, so neither side always runs second.
    for rep in 0..reps {
        if rep % 2 == 0 {
            p.push(measure(&mut plain));
            k.push(measure(&mut keyed));
        } else {
            k.push(measure(&mut keyed));
            p.push(measure(&mut plain));
        }
        eprintln!("rep {rep}: plain {:?} keyed {:?}", p[rep], k[rep]);
    }
    let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| median(v.iter().map(f).collect());
    println!("SmolLM2-135M Q4_1, 3 stages {BOUNDS:?} on loopback, {threads} thread(s) per runner, median of {reps}");
    println!("| data plane | decode tok/s (1 seq) | decode tok/s (8 seqs) | prefill tok/s (512) |");
    println!("|---|---|---|---|");
    for (name, v) in [("plain TCP", &p), ("mutual TLS 1.3", &k)] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            col(v, |x| x.0),
            col(v, |x| x.1),
            col(v, |x| x.2)
        );
    }
    let ratio = |f: fn(&(f64, f64, f64)) -> f64| 100.0 * (col(&k, f) / col(&p, f) - 1.0);
    println!(
        "TLS vs plain: decode {:+.1}%, batch-8 decode {:+.1}%, prefill {:+.1}%",
        ratio(|x| x.0),
        ratio(|x| x.1),
        ratio(|x| x.2)
    );
}
