//! Crash safety with a real process and SIGKILL: a child process (this test binary, re-executed) appends fsync'd
//! batches and reports each commit; the parent kills it mid-stream, reopens the store and checks that every reported
//! commit survived and that nothing half-written was applied. Five rounds on the same store, so recovery after a
//! crash is itself crashed.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use shoal_core::testing::{EventGen, Mix, fold};
use shoal_store::{Commit, StoreConfig};
use shoal_types::State;

const CHILD_ENV: &str = "SHOAL_STORE_CRASH_CHILD";
const CHILD_TEST: &str = "crash_child_appends_until_killed_noop_without_env";
const SEED: u64 = 0x5eed_c4a5;

/// Small thresholds so kills also land in checkpoint and pruning transactions.
fn crash_cfg() -> StoreConfig {
    small_cfg(50, 100)
}

/// The child's side: a no-op unless the parent test spawned this process with [`CHILD_ENV`] set.
#[test]
fn crash_child_appends_until_killed_noop_without_env() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let (mut store, _) = open(&Path::new(&dir).join("store.redb"), crash_cfg());
    let mut generator = EventGen::new(SEED, Mix::Chaos);
    generator.take_events(usize::try_from(store.pos().idx + 1).unwrap());
    let mut out = std::io::stdout().lock();
    let started = Instant::now();
    // Bounded, in case the parent died without killing us.
    while started.elapsed() < Duration::from_secs(30) {
        let size = 1 + (store.pos().idx.unsigned_abs() * 31 % 40) as usize;
        let batch = generator.take_events(size);
        store.append(&batch, Commit::Fsync).unwrap();
        writeln!(out, "committed {}", store.pos().idx).unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_mid_append_loses_no_committed_event_and_applies_no_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    let exe = std::env::current_exe().unwrap();
    // (commits to wait for, extra delay before the kill): kills land before, inside and after fsyncs.
    let rounds = [(3, 0), (1, 0), (12, 2), (6, 1), (25, 3)];
    let mut last_pos = -1i64;
    for (round, (kill_after, delay_ms)) in rounds.into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut committed = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            // libtest's own output may share the line; take the number after our marker.
            if let Some(at) = line.find("committed ") {
                committed.push(line[at + "committed ".len()..].trim().parse::<i64>().unwrap());
                if committed.len() >= kill_after {
                    std::thread::sleep(Duration::from_millis(delay_ms));
                    child.kill().unwrap(); // SIGKILL on unix
                    break;
                }
            }
        }
        child.wait().unwrap();
        let reported = *committed
            .last()
            .unwrap_or_else(|| panic!("round {round}: the child reported no commit"));
        assert!(reported > last_pos, "round {round}: the child made progress");

        let (store, rec) = open(&path, crash_cfg());
        let pos = store.pos().idx;
        assert!(
            pos >= reported,
            "round {round}: recovered {pos} < reported {reported}: a committed batch was lost"
        );
        assert_eq!(
            rec.truncated, 0,
            "round {round}: redb exposed a partial commit: {rec:?}"
        );
        let expected = EventGen::new(SEED, Mix::Chaos).take_events(usize::try_from(pos + 1).unwrap());
        assert_eq!(
            store.state(),
            &fold(&State::empty(), &expected).unwrap(),
            "round {round}"
        );
        let start = store.log_start_idx();
        let tail = store.events_after(start as i64 - 1, 10_000).unwrap();
        assert_eq!(
            tail,
            expected[start as usize..].to_vec(),
            "round {round}: the retained log is the prefix's"
        );
        eprintln!(
            "round {round}: reported {reported}, recovered {pos}, checkpoint {:?}",
            rec.checkpoint_idx
        );
        last_pos = pos;
    }
}
