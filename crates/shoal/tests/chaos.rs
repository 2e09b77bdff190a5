//! The chaos suite's `cargo test` version (issue 13 item 7): [`TRIALS`] trials of every fault,
//! on 3 real nodes with the test model placed over them (`chaos_support`), with [`STREAMS`] concurrent streams per
//! trial (the bench runs 8; 4 keeps this file within the CI budget on a 2-core machine). Asserted per trial: no
//! stream hung or cut, no event lost, every stream ended within the fault's bound, and the deployment serving again.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod chaos_support;
mod common;
mod lab;
mod support;

use std::time::Duration;

use chaos_support::*;
use support::serial;

/// Trials per fault; `SHOAL_CHAOS_TRIALS` overrides it (the bench runs many more).
const TRIALS: usize = 3;
const STREAMS: usize = 4;
/// Every stream ends this soon after a kill (issue 13's goal is 1 s at p99; this is generous for a loaded CI box).
const KILL_BOUND: Duration = Duration::from_secs(3);
/// … and after a stop (the zenoh lease is 3 s; the goal is 6 s at p99).
const STOP_BOUND: Duration = Duration::from_secs(8);

/// The faults this test runs: all of them; [`Fault::Partition`] on a cluster of its own in network namespaces
/// (`tests/lab`).
const FAULTS: &[Fault] = &Fault::ALL;

fn bound(fault: Fault) -> Duration {
    match fault {
        Fault::RunnerStop | Fault::NodeStop | Fault::MasterStop | Fault::Partition => STOP_BOUND,
        _ => KILL_BOUND,
    }
}

/// Every fault of the suite, [`TRIALS`] times (about 3 minutes on a 2-core machine).
#[test]
fn every_fault_ends_every_stream_with_a_word_loses_no_event_and_the_model_serves_again() {
    let _serial = serial();
    let trials = std::env::var("SHOAL_CHAOS_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(TRIALS);
    // `SHOAL_CHAOS_FAULTS=master-stop,…` runs only those (for a rerun of one fault).
    let only: Option<Vec<Fault>> = std::env::var("SHOAL_CHAOS_FAULTS")
        .ok()
        .map(|list| list.split(',').filter_map(|n| Fault::parse(n.trim())).collect());
    let faults: Vec<Fault> = match only {
        Some(only) => only,
        None => FAULTS.to_vec(),
    };
    let (on_loopback, in_lab): (Vec<Fault>, Vec<Fault>) = faults.into_iter().partition(|f| *f != Fault::Partition);
    if !on_loopback.is_empty() {
        run(Chaos::new(STREAMS), &on_loopback, trials);
    }
    if !in_lab.is_empty() {
        run(Chaos::in_lab(STREAMS), &in_lab, trials);
    }
}

fn run(mut chaos: Chaos, faults: &[Fault], trials: usize) {
    for &fault in faults {
        for trial in 0..trials {
            let result = chaos
                .trial(fault)
                .unwrap_or_else(|e| panic!("{} trial {trial}: {e}", fault.name()));
            let times: Vec<Duration> = result.streams.iter().map(|s| s.after_fault).collect();
            eprintln!(
                "{} trial {trial}: {:?}, ended after {times:?}, served after {:?}, notes {:?}",
                fault.name(),
                result.streams.iter().map(|s| s.ending).collect::<Vec<_>>(),
                result.served_after,
                result.notes
            );
            for s in &result.streams {
                if fault.kills_api_node() {
                    // The clients' own node is SIGKILLed with the others: mostly nothing is left to write an error,
                    // but a node killed a few milliseconds after a stage node may still write the broken edge's.
                    assert!(
                        matches!(s.ending, Ending::Cut | Ending::Error),
                        "{} trial {trial}: {s:?}",
                        fault.name()
                    );
                } else {
                    assert_eq!(s.ending, Ending::Error, "{} trial {trial}: {s:?}", fault.name());
                    assert!(s.after_fault <= bound(fault), "{} trial {trial}: {s:?}", fault.name());
                }
            }
            assert_eq!(
                result.events_lost,
                0,
                "{} trial {trial}: {:?}",
                fault.name(),
                result.notes
            );
            assert!(
                result.served_after.is_some(),
                "{} trial {trial}: never served again",
                fault.name()
            );
        }
    }
}
