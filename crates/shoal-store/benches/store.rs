//! Store benchmark (`cargo bench -p shoal-store --bench store`): group-commit append throughput with fsync'd and
//! lazy commits, and restart time with a 1,000,000-event log under the default thresholds (target < 1 s, §6/§13).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_core::testing::{EventGen, Mix};
use shoal_store::{Commit, Store, StoreConfig};

const BATCH: usize = 1_000;

/// Appends `total` typical events, a first batch of `first` then batches of [`BATCH`]; returns the time spent
/// inside `append` only (event generation is excluded).
fn append_run(path: &Path, total: usize, first: usize, commit: Commit) -> Duration {
    let (mut store, _) = Store::open(path, StoreConfig::default()).unwrap();
    let mut generator = EventGen::new(42, Mix::Typical);
    let mut spent = Duration::ZERO;
    let mut done = 0;
    while done < total {
        let size = if done == 0 { first } else { BATCH.min(total - done) };
        done += size;
        let batch = generator.take_events(size);
        let t = Instant::now();
        store.append(&batch, commit).unwrap();
        spent += t.elapsed();
    }
    store.close().unwrap();
    spent
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    println!("shoal-store benchmark: {cores} cores, file in {}", dir.path().display());
    println!();
    println!("| case | events | commits | time | events/s | commits/s |");
    println!("|---|---|---|---|---|---|");
    let total = 200_000;
    for (name, commit) in [
        ("append, fsync group commits of 1,000", Commit::Fsync),
        ("append, lazy group commits of 1,000", Commit::Lazy),
    ] {
        let path = dir.path().join(format!("{commit:?}.redb"));
        let spent = append_run(&path, total, BATCH, commit);
        let commits = total / BATCH;
        println!(
            "| {name} | {total} | {commits} | {:.2} s | {:.0} | {:.0} |",
            spent.as_secs_f64(),
            total as f64 / spent.as_secs_f64(),
            commits as f64 / spent.as_secs_f64()
        );
    }

    let path = dir.path().join("restart.redb");
    let million = 1_000_000;
    // A first batch of 1 puts every checkpoint one event past a batch boundary, so the last one is at 990,000 and the
    // restart replays the worst-case tail of 9,999 events.
    let spent = append_run(&path, million, 1, Commit::Lazy);
    let size_mib = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64;
    println!(
        "| append 1M for the restart case (lazy) | {million} | {} | {:.2} s | {:.0} | {:.0} |",
        million / BATCH + 1,
        spent.as_secs_f64(),
        million as f64 / spent.as_secs_f64(),
        (million / BATCH + 1) as f64 / spent.as_secs_f64()
    );
    println!();
    println!(
        "| restart (Store::open), 1M-event store, default thresholds | integrity check | open time | replayed | checkpoint idx | log start | file |"
    );
    println!("|---|---|---|---|---|---|---|");
    // With and without redb's page checksum pass at open (the default since issue 15), alternated.
    for run in 1..=3 {
        for check in [true, false] {
            let cfg = StoreConfig {
                check_integrity_on_open: check,
                ..StoreConfig::default()
            };
            let t = Instant::now();
            let (store, rec) = Store::open(&path, cfg).unwrap();
            let open = t.elapsed();
            assert_eq!(store.pos().idx, million as i64 - 1);
            println!(
                "| run {run} | {} | {:.1} ms | {} | {:?} | {} | {size_mib:.0} MiB |",
                if check { "on" } else { "off" },
                open.as_secs_f64() * 1e3,
                rec.replayed,
                rec.checkpoint_idx,
                rec.log_start_idx
            );
            store.close().unwrap();
        }
    }
}
