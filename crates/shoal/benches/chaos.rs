//! The chaos bench (issue 13 item 7): 3 real `shoal run` nodes on loopback with the test model placed over them in 3
//! stages, [`STREAMS`] concurrent streaming chat requests in mid-generation, one fault per trial; one table row per
//! fault. The trial itself is `tests/chaos_support` (shared with `tests/chaos.rs`).
//!
//! `cargo bench -p shoal --bench chaos -- --trials N --faults runner-kill,node-stop,…` (default: 100 trials of every
//! fault; `partition` runs on a cluster in network namespaces, `tests/lab`, and needs root). Faults: runner-kill, runner-stop, node-kill, node-stop, master-kill, master-stop, partition, api-term,
//! cluster-kill. Columns: trials run, streams, ended with error + terminator, ended normally, hung (neither within
//! 10 s of the fault), cut (closed without the terminator), p50/p99 from the fault to the stream's error, p50 from the
//! fault until a new request is answered, events lost (replica logs compared; master position regressions).
#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

#[path = "../tests/chaos_support/mod.rs"]
mod chaos_support;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/lab/mod.rs"]
mod lab;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use chaos_support::*;

const STREAMS: usize = 8;
const DEFAULT_TRIALS: usize = 100;
/// A trial that cannot start (the cluster not whole, streams not starting) is retried on a fresh cluster at most
/// this many times in a row before the fault's row is given up.
const MAX_FAILED_SETUPS: usize = 3;

#[derive(Default)]
struct Row {
    trials: usize,
    streams: usize,
    error: usize,
    normal: usize,
    hung: usize,
    cut: usize,
    to_error: Vec<Duration>,
    served: Vec<Duration>,
    never_served: usize,
    lost: u64,
    skipped: Option<String>,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{}", d.as_millis()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let trials: usize = value("--trials").and_then(|t| t.parse().ok()).unwrap_or(DEFAULT_TRIALS);
    let faults: Vec<Fault> = match value("--faults") {
        Some(list) => list
            .split(',')
            .map(|n| Fault::parse(n.trim()).unwrap_or_else(|| panic!("unknown fault {n}")))
            .collect(),
        None => Fault::ALL.to_vec(),
    };

    // A partition cuts a link, which needs the nodes in network namespaces: those trials get a cluster of their own.
    let fresh = |fault: Fault| {
        if fault == Fault::Partition {
            Chaos::in_lab(STREAMS)
        } else {
            Chaos::new(STREAMS)
        }
    };
    let mut chaos: Option<(bool, Chaos)> = None;
    let mut rows = Vec::new();
    for &fault in &faults {
        let mut row = Row::default();
        let lab = fault == Fault::Partition;
        if chaos.as_ref().is_some_and(|(in_lab, _)| *in_lab != lab) {
            // The old cluster stops before the new one starts.
            drop(chaos.take());
        }
        let (_, chaos) = chaos.get_or_insert_with(|| (lab, fresh(fault)));
        let mut failed_setups = 0;
        while row.trials < trials {
            chaos.mark(&format!("{} trial {}", fault.name(), row.trials + 1));
            let outcome = chaos.trial(fault);
            // With SHOAL_CHAOS_LOGS=dir, every node's whole log is kept for a trial that went wrong.
            let went_wrong = match &outcome {
                Ok(r) => {
                    !r.notes.is_empty() || r.streams.iter().any(|s| matches!(s.ending, Ending::Hung | Ending::Cut))
                }
                Err(_) => true,
            };
            if went_wrong && let Ok(dir) = std::env::var("SHOAL_CHAOS_LOGS") {
                chaos.dump_logs(
                    std::path::Path::new(&dir),
                    &format!("{}-{}", fault.name(), row.trials + 1),
                );
            }
            match outcome {
                Ok(result) => {
                    failed_setups = 0;
                    row.trials += 1;
                    row.streams += result.streams.len();
                    for s in &result.streams {
                        match s.ending {
                            Ending::Error => {
                                row.error += 1;
                                row.to_error.push(s.after_fault);
                            }
                            Ending::Normal => row.normal += 1,
                            Ending::Hung => row.hung += 1,
                            Ending::Cut => row.cut += 1,
                        }
                    }
                    match result.served_after {
                        Some(d) => row.served.push(d),
                        None => row.never_served += 1,
                    }
                    row.lost += result.events_lost;
                    eprintln!(
                        "{} trial {}/{trials}: {:?}; served after {}; lost {}; {:?}",
                        fault.name(),
                        row.trials,
                        result.streams.iter().map(|s| s.ending).collect::<Vec<_>>(),
                        ms(result.served_after),
                        result.events_lost,
                        result.notes
                    );
                }
                Err(e) => {
                    eprintln!("{}: trial could not run: {e}; starting a fresh cluster", fault.name());
                    failed_setups += 1;
                    if failed_setups >= MAX_FAILED_SETUPS {
                        row.skipped = Some(e);
                        break;
                    }
                    *chaos = fresh(fault);
                }
            }
        }
        // Each row as soon as its fault is done, so a long run that is stopped early still leaves whole rows.
        println!("{HEADER}\n{}", table_row(fault, &row));
        rows.push((fault, row));
    }

    println!("\nAll faults:\n{HEADER}");
    for (fault, row) in &rows {
        println!("{}", table_row(*fault, row));
    }
}

const HEADER: &str = "| fault | trials | streams | error + [DONE] | normal | hung | cut | p50 to error ms | p99 to error ms | \
                      p50 served again ms | events lost |\n|---|---|---|---|---|---|---|---|---|---|---|";

/// One fault's row of the table.
fn table_row(fault: Fault, row: &Row) -> String {
    if let Some(why) = &row.skipped
        && row.trials == 0
    {
        return format!("| {} | skipped: {why} |||||||||| ", fault.name());
    }
    let never = if row.never_served > 0 {
        format!(" ({} never)", row.never_served)
    } else {
        String::new()
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{never} | {} |",
        fault.name(),
        row.trials,
        row.streams,
        row.error,
        row.normal,
        row.hung,
        row.cut,
        ms(percentile(&row.to_error, 50.0)),
        ms(percentile(&row.to_error, 99.0)),
        ms(percentile(&row.served, 50.0)),
        row.lost
    )
}
