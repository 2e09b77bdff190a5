//! The join benchmark (SYSTEM.md §6 "Snapshot bootstrap"): a node joining a cluster whose master log holds
//! 1,000,000 events is ready in < 2 s on loopback, measured from process start; a node restarting with that log on
//! its own disk is ready in < 1 s.
//!
//! `cargo bench -p shoal --bench join` builds a master's data dir with `JOIN_EVENTS` (default 1,000,000) typical
//! events made by `shoal_core::testing`, starts `shoal run` on it (it campaigns alone and continues the log as
//! master), waits until the master has settled (2 s after its session opened it times out the generated State's
//! absent nodes and cancels their tasks), then starts fresh nodes against it over loopback TCP and times each from
//! spawn to its "cluster ready" log line (and checks `/status`), and finally restarts the last joiner on its own data
//! dir. It prints a markdown table (with the snapshot codec timed in-process, and each join split into phases from
//! its log), then each measured node's log as a timeline (milliseconds after its spawn). `JOIN_TASK_CAP` raises the generator's task
//! cap (default 64, a serving cluster's steady state) for a larger State; `JOIN_LOG` replaces `SHOAL_LOG=info`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use shoal_core::node::MASTER_LIVENESS_GRACE_MS;
use shoal_core::snapshot;
use shoal_core::testing::{EventGen, Mix};
use shoal_store::{Commit, Store, StoreConfig};
use shoal_types::{Event, NodeId, State};

const BATCH: usize = 10_000;
const JOINS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A `shoal run` child whose stderr lines arrive, stamped with the instant they were read, on a channel. Killed on
/// drop, so a panic anywhere leaves no process behind.
struct Node {
    name: String,
    child: Option<Child>,
    spawned: Instant,
    lines: Receiver<(Instant, String)>,
    /// Every line seen so far, with its offset from `spawned`.
    log: Vec<(Duration, String)>,
}

impl Node {
    fn spawn(exe: &Path, name: &str, args: &[String]) -> Node {
        let log_filter = std::env::var("JOIN_LOG").unwrap_or_else(|_| "info".to_owned());
        let spawned = Instant::now();
        let mut child = Command::new(exe)
            .arg("run")
            .args(args)
            .env_remove("SHOAL_HOME")
            .env("SHOAL_LOG", log_filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), strip_ansi(&line))).is_err() {
                    break;
                }
            }
        });
        Node {
            name: name.to_owned(),
            child: Some(child),
            spawned,
            lines: rx,
            log: Vec::new(),
        }
    }

    fn record(&mut self, at: Instant, line: String) {
        self.log.push((at.saturating_duration_since(self.spawned), line));
    }

    /// Waits for a line containing `pattern`; returns when it was read and the line.
    fn wait_for(&mut self, pattern: &str, timeout: Duration) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    let hit = line.contains(pattern);
                    self.record(at, line.clone());
                    if hit {
                        return (at, line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => self.fail(&format!("no \"{pattern}\" within {timeout:?}")),
                Err(RecvTimeoutError::Disconnected) => self.fail(&format!("exited before \"{pattern}\"")),
            }
        }
    }

    /// Collects the lines that arrive within `quiet` of each other (or of the call).
    fn drain(&mut self, quiet: Duration) {
        while let Ok((at, line)) = self.lines.recv_timeout(quiet) {
            self.record(at, line);
        }
    }

    fn fail(&mut self, why: &str) -> ! {
        self.drain(Duration::from_millis(200));
        let tail: Vec<String> = self
            .log
            .iter()
            .rev()
            .take(60)
            .rev()
            .map(|(t, l)| format!("{:>8.1} ms  {l}", t.as_secs_f64() * 1e3))
            .collect();
        panic!("{}: {why}; its log:\n{}", self.name, tail.join("\n"));
    }

    /// SIGTERM, then waits for the exit (SIGKILL after 10 s).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if Instant::now() > deadline {
                println!("note: {} did not stop within 10 s of SIGTERM; killed", self.name);
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.drain(Duration::from_millis(50));
    }

    fn timeline(&self) -> String {
        self.log
            .iter()
            .map(|(t, l)| format!("{:>8.1} ms  {l}\n", t.as_secs_f64() * 1e3))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Removes the terminal escapes a log line may carry (NO_COLOR should already have turned them off).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The unsigned number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let start = line
        .match_indices(&key)
        .find(|(i, _)| *i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_')
        .map(|(i, _)| i + key.len())?;
    let digits: String = line[start..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET http://127.0.0.1:<port><path>` over HTTP/1.0; the JSON body.
fn http_get_json(port: u16, path: &str) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| format!("read: {e}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).map_err(|e| format!("GET {path}: {e}; response:\n{response}"))
}

/// `/status` until it answers ready (10 s at most). The node logs "cluster ready" just before it publishes the view
/// the API reads, and the API may start listening after that line, so the first answers can lag the line by the time
/// the node's thread takes to get scheduled again; when they did, also returns for how long and the first such answer.
fn status_when_ready(port: u16) -> (serde_json::Value, Option<(Duration, String)>) {
    let t = Instant::now();
    let mut first_not_ready = None;
    loop {
        let answer = http_get_json(port, "/status");
        if let Ok(status) = &answer
            && status["ready"] == serde_json::Value::Bool(true)
        {
            return (status.clone(), first_not_ready.map(|first| (t.elapsed(), first)));
        }
        let seen = match answer {
            Ok(status) => format!(
                "ready {}, role {}, idx {}",
                status["ready"], status["role"], status["pos"]["idx"]
            ),
            Err(e) => e,
        };
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "/status not ready 10 s after \"cluster ready\": {seen}"
        );
        first_not_ready.get_or_insert(seen);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until `not_before`, then until the master's position stays put for 300 ms (60 s at most); returns it.
/// `/status` reads the view the node loop last published, which goes stale while the loop is busy, so each reading
/// follows a `/events` request: the loop answers it only once it has worked through what came before.
fn settle(api: u16, not_before: Instant) -> i64 {
    std::thread::sleep(not_before.saturating_duration_since(Instant::now()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let idx = || {
        let status = status_when_ready(api).0;
        let idx = status["pos"]["idx"].as_i64().unwrap();
        http_get_json(api, &format!("/events?after={idx}&max=1")).unwrap_or_else(|e| panic!("/events: {e}"));
        status_when_ready(api).0["pos"]["idx"].as_i64().unwrap()
    };
    let mut last = idx();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = idx();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Writes the master's data dir: its node id and a store holding `events` typical events of the session it opened
/// (term 1), checkpointed and closed. Returns the master's id and its State.
fn build_master_dir(dir: &Path, events: usize, task_cap: usize) -> (NodeId, State) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut store, _) = Store::open(dir.join("store.redb"), StoreConfig::default()).unwrap();
    let mut generator = EventGen::new(7, Mix::Typical).with_task_cap(task_cap);
    let mut master = None;
    let mut done = 0;
    while done < events {
        let batch = generator.take_events(BATCH.min(events - done));
        if done == 0 {
            let Some(Event::SessionOpened { session, .. }) = batch.first().map(|e| &e.event) else {
                panic!("the generator's first event is not a SessionOpened");
            };
            assert_eq!(session.term, 1);
            master = Some(session.master);
        }
        store.append(&batch, Commit::Lazy).unwrap();
        done += batch.len();
    }
    let master = master.unwrap();
    assert!(master.is_valid_generated(), "{master} cannot be a node's own id");
    assert_eq!(
        store.state().session.master,
        master,
        "the typical mix stays in one session"
    );
    assert_eq!(store.pos().idx, events as i64 - 1);
    // The master persisted the term of the session it opened before opening it (§7 step 3).
    store.set_max_term_seen(1).unwrap();
    store.checkpoint_now().unwrap();
    store.close().unwrap();
    std::fs::write(dir.join("node_id"), format!("{master}\n")).unwrap();
    (master, generator.state().clone())
}

/// The snapshot codec on the master's State, in this process with no node running: what the master's encoding, the
/// joiner's decoding and its checkpoint write cost by themselves.
struct Codec {
    encode: Duration,
    decode: Duration,
    checkpoint_bytes: Duration,
    body: usize,
    tasks: usize,
}

fn measure_codec(state: &State) -> Codec {
    let best = |f: &mut dyn FnMut()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .min()
            .unwrap()
    };
    let blob = snapshot::encode(state).unwrap();
    let encode = best(&mut || drop(snapshot::encode(state).unwrap()));
    let decode = best(&mut || drop(snapshot::decode(&blob).unwrap()));
    let checkpoint_bytes = best(&mut || drop(snapshot::to_bytes(state).unwrap()));
    Codec {
        encode,
        decode,
        checkpoint_bytes,
        body: blob.body.len(),
        tasks: state.tasks.len(),
    }
}

fn shoal_exe() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_shoal"));
    if exe.is_file() {
        return exe;
    }
    // Beside the bench executable's directory (target/release/deps/join-* → target/release/shoal).
    let current = std::env::current_exe().unwrap();
    current
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("shoal"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("no shoal binary at {} nor beside {}", exe.display(), current.display()))
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn opt_ms(v: Option<u64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v} ms"))
}

fn pass(d: Duration, limit: Duration) -> &'static str {
    if d < limit { "pass" } else { "FAIL" }
}

fn flap_note(flap: &Option<(Duration, String)>) -> String {
    flap.as_ref().map_or_else(String::new, |(for_, first)| {
        format!(
            " (after a lag of {:.1} ms behind the \"cluster ready\" line; first answer: {first})",
            for_.as_secs_f64() * 1e3
        )
    })
}

/// Where a join's time went, from the offsets of its log lines: start-up to "following", the snapshot fetch (request,
/// the master's encoding, transfer, hash, decompression and decode), the store's install (checkpoint written and
/// fsync'd), and the tail after the install until "cluster ready".
fn phases(log: &[(Duration, String)]) -> String {
    let at = |pattern: &str| log.iter().find(|(_, l)| l.contains(pattern)).map(|(t, _)| *t);
    let (Some(following), Some(received), Some(installed), Some(ready)) = (
        at("following"),
        at("snapshot received"),
        at("installed a snapshot"),
        at("cluster ready"),
    ) else {
        return "—".to_owned();
    };
    let span = |a: Duration, b: Duration| format!("{:.0}", b.saturating_sub(a).as_secs_f64() * 1e3);
    format!(
        "start → following {} ms, snapshot fetch {} ms, store install {} ms, tail → ready {} ms",
        span(Duration::ZERO, following),
        span(following, received),
        span(received, installed),
        span(installed, ready)
    )
}

struct Join {
    total: Duration,
    phases: String,
    ready_elapsed_ms: Option<u64>,
    received_ms: Option<u64>,
    encoded: Option<(u64, u64)>,
    status_idx: i64,
    role: String,
    /// `/status` said not ready after "cluster ready": for how long, and its first such answer.
    flap: Option<(Duration, String)>,
}

fn main() {
    let events = env_usize("JOIN_EVENTS", 1_000_000);
    let task_cap = env_usize("JOIN_TASK_CAP", 64);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let exe = shoal_exe();
    let tmp = tempfile::tempdir().unwrap();
    println!("shoal join benchmark: {cores} cores, {events} events, task cap {task_cap}");
    println!("binary: {}", exe.display());
    println!("data in {}", tmp.path().display());

    let master_dir = tmp.path().join("master");
    let t = Instant::now();
    let (master_id, master_state) = build_master_dir(&master_dir, events, task_cap);
    let setup = t.elapsed();
    let codec = measure_codec(&master_state);
    drop(master_state);
    let store_mib = std::fs::metadata(master_dir.join("store.redb")).map_or(0, |m| m.len()) as f64 / (1 << 20) as f64;
    println!(
        "setup: {events} events appended in {:.1} s ({store_mib:.0} MiB store), master {master_id}",
        setup.as_secs_f64()
    );

    let master_port = free_port();
    let master_api = free_port();
    let mut master = Node::spawn(
        &exe,
        "master",
        &[
            "--data-dir".into(),
            master_dir.display().to_string(),
            "--no-multicast".into(),
            "--listen".into(),
            format!("tcp/127.0.0.1:{master_port}"),
            "--api-port".into(),
            master_api.to_string(),
        ],
    );
    let (at, line) = master.wait_for("cluster ready", READY_TIMEOUT);
    let master_ready = at.saturating_duration_since(master.spawned);
    if !line.contains("role=\"master\"") && !line.contains("role=master") {
        master.fail(&format!("did not become master: {line}"));
    }
    let (master_status, _) = status_when_ready(master_api);
    let master_idx = master_status["pos"]["idx"].as_i64().unwrap();
    println!(
        "master ready in {} (role master, pos idx {master_idx})",
        ms(master_ready)
    );
    // Joins are measured against a settled master: 2 s after it opened its session it times out the nodes of the
    // generated State and cancels their unfinished tasks (§8), one event each, which would land in the middle of a
    // join (with a large State, tens of thousands of events).
    let settled_idx = settle(master_api, at + Duration::from_millis(MASTER_LIVENESS_GRACE_MS + 500));
    println!(
        "master settled at idx {settled_idx} ({} events of its own since it became ready)",
        settled_idx - master_idx
    );

    let mut joins = Vec::new();
    let mut timelines = Vec::new();
    let mut last_joiner = None;
    for n in 1..=JOINS {
        let dir = tmp.path().join(format!("joiner{n}"));
        let api = free_port();
        let args = vec![
            "--data-dir".into(),
            dir.display().to_string(),
            "--no-multicast".into(),
            "--listen".into(),
            format!("tcp/127.0.0.1:{}", free_port()),
            "--connect".into(),
            format!("tcp/127.0.0.1:{master_port}"),
            "--api-port".into(),
            api.to_string(),
        ];
        master.drain(Duration::ZERO);
        let master_seen = master.log.len();
        let mut joiner = Node::spawn(&exe, &format!("joiner {n}"), &args);
        let (at, line) = joiner.wait_for("cluster ready", READY_TIMEOUT);
        let total = at.saturating_duration_since(joiner.spawned);
        let (status, flap) = status_when_ready(api);
        let status_idx = status["pos"]["idx"].as_i64().unwrap();
        assert!(
            status_idx >= events as i64,
            "joiner {n} is at idx {status_idx}, behind the master's log of {events}: {status}"
        );
        joiner.drain(Duration::from_millis(100));
        master.drain(Duration::from_millis(100));
        let received_ms = joiner
            .log
            .iter()
            .find(|(_, l)| l.contains("snapshot received"))
            .and_then(|(_, l)| field(l, "elapsed_ms"));
        let encoded = master.log[master_seen..]
            .iter()
            .filter(|(_, l)| l.contains("snapshot encoded"))
            .find_map(|(_, l)| Some((field(l, "bytes")?, field(l, "elapsed_ms")?)));
        joins.push(Join {
            total,
            phases: phases(&joiner.log),
            ready_elapsed_ms: field(&line, "elapsed_ms"),
            received_ms,
            encoded,
            status_idx,
            role: status["role"].as_str().unwrap_or("?").to_owned(),
            flap,
        });
        if n < JOINS {
            joiner.stop();
            timelines.push((format!("join {n}"), joiner.timeline()));
        } else {
            last_joiner = Some((joiner, args, api));
        }
    }

    // Restart the last joiner on its own data dir: the store recovers its 1M-event position locally and range-fetches
    // only what the master indexed since.
    let (mut joiner, args, api) = last_joiner.unwrap();
    joiner.stop();
    timelines.push((format!("join {JOINS}"), joiner.timeline()));
    drop(joiner);
    let mut restarted = Node::spawn(&exe, "restarted joiner", &args);
    let (at, line) = restarted.wait_for("cluster ready", READY_TIMEOUT);
    let restart = at.saturating_duration_since(restarted.spawned);
    let (restart_status, restart_flap) = status_when_ready(api);
    let restart_idx = restart_status["pos"]["idx"].as_i64().unwrap();
    let master_idx_at_restart = status_when_ready(master_api).0["pos"]["idx"].as_i64().unwrap();
    restarted.drain(Duration::from_millis(100));
    let restart_snapshot = restarted.log.iter().any(|(_, l)| l.contains("snapshot received"));
    let store_opened_ms = restarted
        .log
        .iter()
        .find(|(_, l)| l.contains("store opened"))
        .and_then(|(_, l)| field(l, "elapsed_ms"));
    timelines.push(("restart".to_owned(), restarted.timeline()));

    let snapshot_bytes = joins.iter().find_map(|j| j.encoded.map(|(bytes, _)| bytes));
    println!();
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| events in the master's log | {events} (master at idx {master_idx}) | 1,000,000 |");
    println!(
        "| setup: generate + append (lazy, batches of {BATCH}) + checkpoint | {:.1} s | — |",
        setup.as_secs_f64()
    );
    println!("| master store file | {store_mib:.0} MiB | — |");
    println!(
        "| snapshot body the master sent (zstd) | {} | — |",
        snapshot_bytes.map_or_else(
            || "—".to_owned(),
            |b| format!("{b} bytes ({:.2} MiB)", b as f64 / (1 << 20) as f64)
        )
    );
    println!(
        "| generated State, as the master opens it | {} tasks, snapshot body {} bytes | — |",
        codec.tasks, codec.body
    );
    println!(
        "| codec in the bench process: encode (postcard + zstd 3 + sha256) | {:.1} ms | — |",
        codec.encode.as_secs_f64() * 1e3
    );
    println!(
        "| codec in the bench process: decode (sha256 + unzstd + postcard) | {:.1} ms | — |",
        codec.decode.as_secs_f64() * 1e3
    );
    println!(
        "| codec in the bench process: checkpoint bytes (the install's encoding, before its fsync) | {:.1} ms | — |",
        codec.checkpoint_bytes.as_secs_f64() * 1e3
    );
    println!(
        "| master start on its 1M log → cluster ready | {} | — |",
        ms(master_ready)
    );
    println!("| master settled before the joins | idx {settled_idx} | — |");
    for (n, j) in joins.iter().enumerate() {
        let n = n + 1;
        println!(
            "| join {n}: process start → cluster ready | {} | < 2 s: {} |",
            ms(j.total),
            pass(j.total, Duration::from_secs(2))
        );
        println!(
            "| join {n}: in-process elapsed at \"cluster ready\" | {} | — |",
            opt_ms(j.ready_elapsed_ms)
        );
        println!("| join {n}: phases | {} | — |", j.phases);
        println!(
            "| join {n}: snapshot fetch (\"snapshot received\") | {} | — |",
            opt_ms(j.received_ms)
        );
        println!(
            "| join {n}: master encoding | {} | — |",
            j.encoded.map_or_else(
                || "none logged (cached encoding reused)".to_owned(),
                |(bytes, ms)| format!("{ms} ms, {bytes} bytes")
            )
        );
        println!(
            "| join {n}: /status | ready, role {}, pos idx {}{} | idx ≥ {events} |",
            j.role,
            j.status_idx,
            flap_note(&j.flap)
        );
    }
    println!(
        "| restart with the local 1M-event log → cluster ready | {} | < 1 s: {} |",
        ms(restart),
        pass(restart, Duration::from_secs(1))
    );
    println!(
        "| restart: in-process elapsed at \"cluster ready\" | {} | — |",
        opt_ms(field(&line, "elapsed_ms"))
    );
    println!("| restart: store open | {} | — |", opt_ms(store_opened_ms));
    println!(
        "| restart: /status | ready, pos idx {restart_idx} (master then at {master_idx_at_restart}), {}{} | no snapshot |",
        if restart_snapshot {
            "fetched a snapshot"
        } else {
            "no snapshot"
        },
        flap_note(&restart_flap)
    );

    master.drain(Duration::from_millis(50));
    timelines.insert(0, ("master".to_owned(), master.timeline()));
    println!();
    println!("Timelines (ms after each process's spawn):");
    for (name, timeline) in timelines {
        println!();
        println!("{name}:");
        print!("{timeline}");
    }
    drop(restarted);
    drop(master);
}
