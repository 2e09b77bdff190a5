//! Benchmarks of the pure core (`cargo bench -p shoal-core --bench core`), printed as a markdown table.
//!
//! - apply throughput over typical events (target ≥ 1M events/s), both the persistent `apply` (a new State per
//!   event, what a consumer holding old States sees) and `apply_in_place` (what the store does);
//! - snapshot encode + decode of a State built from 1M events (target < 1 s together), for a steady-state cluster
//!   (finished tasks deleted within a bounded window) and for a large State holding up to 100,000 tasks.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shoal_core::testing::{EventGen, Mix};
use shoal_core::{apply, apply_in_place, snapshot};
use shoal_types::State;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("shoal-core benchmarks ({threads} hardware threads)\n");
    println!("| benchmark | events | result |");
    println!("|---|---|---|");

    for (mix, label) in [(Mix::Typical, "typical"), (Mix::Chaos, "chaos")] {
        let events = EventGen::new(1, mix).take_events(1_000_000);
        let mut persistent = Vec::new();
        let mut in_place = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let mut s = State::empty();
            for e in &events {
                s = apply(&s, e).unwrap();
            }
            persistent.push(started.elapsed());
            std::hint::black_box(&s);

            let started = Instant::now();
            let mut s = State::empty();
            for e in &events {
                apply_in_place(&mut s, e).unwrap();
            }
            in_place.push(started.elapsed());
            std::hint::black_box(&s);
        }
        let rate = |d: Duration| events.len() as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| apply ({label}) | 1,000,000 | {:.2} M events/s |",
            rate(median(persistent))
        );
        println!(
            "| apply_in_place ({label}) | 1,000,000 | {:.2} M events/s |",
            rate(median(in_place))
        );
    }

    for (cap, label) in [(64, "steady state"), (100_000, "large")] {
        let mut generator = EventGen::new(2, Mix::Typical).with_task_cap(cap);
        generator.take_events(1_000_000);
        let state = generator.state().clone();
        let mut encode = Vec::new();
        let mut decode = Vec::new();
        let mut sizes = (0, 0);
        for _ in 0..3 {
            let started = Instant::now();
            let blob = snapshot::encode(&state).unwrap();
            encode.push(started.elapsed());
            let started = Instant::now();
            let back = snapshot::decode(&blob).unwrap();
            decode.push(started.elapsed());
            assert_eq!(back.pos, state.pos);
            sizes = (postcard::to_allocvec(&state).unwrap().len(), blob.body.len());
        }
        let (enc, dec) = (median(encode), median(decode));
        println!(
            "| snapshot encode + decode, {label} ({} tasks, {} KiB raw, {} KiB zstd) | 1,000,000 | {:.1} ms + {:.1} ms = {:.1} ms |",
            state.tasks.len(),
            sizes.0 / 1024,
            sizes.1 / 1024,
            enc.as_secs_f64() * 1e3,
            dec.as_secs_f64() * 1e3,
            (enc + dec).as_secs_f64() * 1e3
        );
    }
}
