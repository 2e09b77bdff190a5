//! The chaos suite's trial (issue 13 item 7), shared by `benches/chaos.rs` (many trials, a table) and
//! `tests/chaos.rs` (3 trials per fault, asserted): 3 real `shoal run` nodes on loopback with the test model placed
//! over them in 3 stages, concurrent streaming chat requests in mid-generation, one fault, then every stream read to
//! its end with a hang limit, the time until a new request is answered, and the replica logs compared.
//!
//! Roles in a trial: the *master*, the *API node* (the clients' node; never the master), and the *victim* (the third
//! node). Each of the 3 nodes holds one stage, so every fault but SIGTERM of the API node hits a stage.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::lab::Lab;
use crate::support::*;

mod stream;
pub use stream::*;

/// How long the new-request probe keeps trying after the cluster was healed.
pub const SERVE_CAP: Duration = Duration::from_secs(60);
/// How long a healed cluster may take to be whole again (3 nodes agreed, 3 runners Ready) before the next trial.
pub const WHOLE_WITHIN: Duration = Duration::from_secs(90);
/// How often the position monitor asks every node for its `/status`.
const MONITOR_EVERY: Duration = Duration::from_millis(100);
/// The new-request probe's pause between attempts.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long SIGTERM may take to stop the API node before the trial kills it.
const TERM_EXIT_WITHIN: Duration = Duration::from_secs(15);
/// How long a placement made by the trial may take before it is tried again.
const PLACE_AGAIN_AFTER: Duration = Duration::from_secs(20);
/// How long a partition lasts.
const PARTITION_HOLD: Duration = Duration::from_secs(6);
/// Lines of each node's log a failure message quotes.
const LOG_TAIL: usize = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    RunnerKill,
    RunnerStop,
    NodeKill,
    NodeStop,
    MasterKill,
    MasterStop,
    Partition,
    ApiTerm,
    ClusterKill,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::RunnerKill,
        Fault::RunnerStop,
        Fault::NodeKill,
        Fault::NodeStop,
        Fault::MasterKill,
        Fault::MasterStop,
        Fault::Partition,
        Fault::ApiTerm,
        Fault::ClusterKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::RunnerKill => "runner-kill",
            Fault::RunnerStop => "runner-stop",
            Fault::NodeKill => "node-kill",
            Fault::NodeStop => "node-stop",
            Fault::MasterKill => "master-kill",
            Fault::MasterStop => "master-stop",
            Fault::Partition => "partition",
            Fault::ApiTerm => "api-term",
            Fault::ClusterKill => "cluster-kill",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether the clients' own node dies without a word (then every stream is cut: nothing is left to write).
    pub fn kills_api_node(self) -> bool {
        self == Fault::ClusterKill
    }
}

#[derive(Clone, Debug)]
pub struct TrialResult {
    pub fault: Fault,
    pub streams: Vec<StreamResult>,
    /// From the fault until a new request was answered; None past the cap.
    pub served_after: Option<Duration>,
    /// Replica-log entries missing or different after recovery, plus master-position regressions.
    pub events_lost: u64,
    pub notes: Vec<String>,
}

/// The 3-node cluster the trials run on, reused from trial to trial.
pub struct Chaos {
    pub root: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub streams: usize,
    /// The network namespaces the nodes run in, for the faults that cut links ([`Fault::Partition`]); `None` on
    /// loopback. Declared after `nodes` so the nodes stop before their namespaces go.
    pub lab: Option<Lab>,
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").args([name, &pid.to_string()]).status();
}

fn pid_of(node: &Node) -> u32 {
    node.child.as_ref().unwrap().id()
}

/// `/status` of the node on `port`: (role, ready, idx).
fn status_of(api: SocketAddr) -> Option<(String, bool, i64)> {
    let (code, _, body) = http_at(api, "GET", "/status", &[], None)?;
    if code != 200 {
        return None;
    }
    let s: Value = serde_json::from_str(&body).ok()?;
    Some((
        s["role"].as_str()?.to_owned(),
        s["ready"].as_bool()?,
        s["pos"]["idx"].as_i64()?,
    ))
}

/// Every event of a node's replica log after `after`, by idx.
fn events_of(api: SocketAddr, after: i64) -> Option<BTreeMap<u64, Value>> {
    let (code, _, body) = http_at(api, "GET", &format!("/events?after={after}&max=10000"), &[], None)?;
    if code != 200 {
        return None;
    }
    let events: Vec<Value> = serde_json::from_str(&body).ok()?;
    Some(
        events
            .into_iter()
            .filter_map(|e| Some((e["idx"].as_u64()?, e)))
            .collect(),
    )
}

/// Watches every node's `/status`: the highest idx that all of them had reached at once (so any later master holds
/// it), and by how much a master ever reported less than that.
struct Monitor {
    stop: Arc<AtomicBool>,
    regression: Arc<Mutex<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(ports: Vec<SocketAddr>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let regression = Arc::new(Mutex::new(0));
        let (stop2, regression2) = (stop.clone(), regression.clone());
        let thread = std::thread::spawn(move || {
            let mut floor = -1i64;
            while !stop2.load(Ordering::Relaxed) {
                let seen: Vec<Option<(String, bool, i64)>> = ports.iter().map(|&p| status_of(p)).collect();
                for (role, ready, idx) in seen.iter().flatten() {
                    if role == "master" && *ready && *idx < floor {
                        let mut r = regression2.lock().unwrap();
                        *r = (*r).max((floor - idx) as u64);
                    }
                }
                if seen.iter().all(|s| s.as_ref().is_some_and(|(_, ready, _)| *ready)) {
                    let all_have = seen.iter().flatten().map(|(_, _, idx)| *idx).min().unwrap_or(-1);
                    floor = floor.max(all_have);
                }
                std::thread::sleep(MONITOR_EVERY);
            }
        });
        Monitor {
            stop,
            regression,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.regression.lock().unwrap()
    }
}

impl Chaos {
    /// 3 nodes started, agreed, the test model placed over all of them.
    pub fn new(streams: usize) -> Chaos {
        let (root, nodes) = start(3);
        let chaos = Chaos {
            root,
            nodes,
            streams,
            lab: None,
        };
        chaos.whole(WHOLE_WITHIN).expect("the fresh cluster is whole");
        chaos
    }

    /// The same cluster with each node in its own network namespace of a [`Lab`] (needs root and iproute2), so a
    /// link can be cut.
    pub fn in_lab(streams: usize) -> Chaos {
        let lab = Lab::new(3);
        let (root, nodes) = start_at(3, |i| (lab.addr(i).parse::<IpAddr>().unwrap(), Some(lab.node_ns(i))));
        let chaos = Chaos {
            root,
            nodes,
            streams,
            lab: Some(lab),
        };
        chaos.whole(WHOLE_WITHIN).expect("the fresh cluster is whole");
        chaos
    }

    fn ports(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.api_addr()).collect()
    }

    /// Waits until every node is alive and agreed and the model has 3 Ready runners, placing it when no instance is
    /// left; returns the master's index, or a reason.
    pub fn whole(&self, within: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + within;
        let mut placed_at: Option<Instant> = None;
        loop {
            let all: Vec<&Node> = self.nodes.iter().collect();
            if let Some((_, master)) = agreement(&all)
                && let Some(state) = self.nodes[master].state()
            {
                let runners = runner_statuses(&state);
                if runners.len() == 3 && runners.iter().all(|(_, s)| s == "Ready") {
                    return Ok(master);
                }
                // A deployment re-places its instance by itself; only a cluster that has none left (it gave up)
                // gets a new placement.
                let no_deployment = state["deployments"].as_object().is_some_and(|d| d.is_empty());
                if no_deployment && placed_at.is_none_or(|p| p.elapsed() > PLACE_AGAIN_AFTER) {
                    let _ = self.nodes[master].http(
                        "POST",
                        "/place_instance",
                        Some(&json!({"model_id": "smollm2-135m", "min_nodes": 3})),
                    );
                    placed_at = Some(Instant::now());
                }
            }
            if Instant::now() > deadline {
                let statuses: Vec<_> = self.nodes.iter().map(|n| n.status()).collect();
                let state = self.nodes.iter().find_map(|n| n.state());
                let runners = state.as_ref().map(runner_statuses);
                let deployments = state.map(|s| s["deployments"].clone());
                return Err(format!(
                    "not whole after {within:?}: {statuses:?}\nrunners {runners:?}\ndeployments {deployments:?}\n{}",
                    self.log_tails()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The last lines of every node's log about its role and session, for a failure's message.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let log = node.log_text();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| {
                    ["master", "session", "follow", "elect", "campaign", "WARN", "ERROR"]
                        .iter()
                        .any(|k| l.contains(k))
                })
                .collect();
            out.push_str(&format!("--- node {i} (api {}):\n", node.api));
            for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// A line in every node's captured log, to find a trial in a dump.
    pub fn mark(&self, text: &str) {
        for node in &self.nodes {
            node.log.lock().unwrap().push(format!("===== {text}"));
        }
    }

    /// Writes every node's whole captured log to `dir/<tag>-node<i>.log`.
    pub fn dump_logs(&self, dir: &std::path::Path, tag: &str) {
        let _ = std::fs::create_dir_all(dir);
        for (i, node) in self.nodes.iter().enumerate() {
            let _ = std::fs::write(dir.join(format!("{tag}-node{i}.log")), node.log_text());
        }
    }

    /// Starts every node that is not running (same data dir and ports).
    fn restart_dead(&mut self) {
        for node in &mut self.nodes {
            if !node.alive() {
                node.kill9();
                node.start();
            }
        }
    }

    /// One trial of `fault`; the cluster is whole again when it returns Ok.
    pub fn trial(&mut self, fault: Fault) -> Result<TrialResult, String> {
        let master = self.whole(WHOLE_WITHIN)?;
        let api = (0..3).find(|&i| i != master).unwrap();
        let victim = (0..3).find(|&i| i != master && i != api).unwrap();
        let mut notes = Vec::new();

        let ports = self.ports();
        let base = ports
            .iter()
            .filter_map(|&p| status_of(p).map(|s| s.2))
            .min()
            .unwrap_or(-1);
        let monitor = Monitor::start(ports.clone());

        // The streams, each mid-generation.
        let fault_at = Arc::new(OnceLock::new());
        let (ready_tx, ready_rx) = mpsc::channel();
        let readers: Vec<_> = (0..self.streams)
            .map(|_| stream_reader(self.nodes[api].api_addr(), fault_at.clone(), ready_tx.clone()))
            .collect();
        drop(ready_tx);
        let mut started = 0;
        while started < self.streams {
            match ready_rx.recv_timeout(OPEN_WITHIN) {
                Ok(true) => started += 1,
                Ok(false) | Err(_) => break,
            }
        }
        if started < self.streams {
            let _ = fault_at.set(Instant::now());
            for r in readers {
                let _ = r.join();
            }
            monitor.finish();
            return Err(format!(
                "only {started} of {} streams reached mid-generation",
                self.streams
            ));
        }

        // What every node holds before the fault is replicated on all of them: it must survive.
        let before: Vec<BTreeMap<u64, Value>> = ports.iter().filter_map(|&p| events_of(p, base)).collect();
        let committed: BTreeMap<u64, Value> = if before.len() == 3 {
            before[0]
                .iter()
                .filter(|(idx, e)| before[1..].iter().all(|b| b.get(idx) == Some(e)))
                .map(|(i, e)| (*i, e.clone()))
                .collect()
        } else {
            notes.push("a node's log could not be read before the fault".into());
            BTreeMap::new()
        };

        // The fault.
        let mut stopped: Option<u32> = None;
        let mut cut: Option<usize> = None;
        match fault {
            Fault::RunnerKill | Fault::RunnerStop => {
                let Some(&runner) = runner_children(pid_of(&self.nodes[victim])).first() else {
                    return Err("the victim has no runner".into());
                };
                let _ = fault_at.set(Instant::now());
                if fault == Fault::RunnerKill {
                    signal(runner, "-KILL");
                } else {
                    signal(runner, "-STOP");
                    stopped = Some(runner);
                }
            }
            Fault::NodeKill | Fault::MasterKill => {
                let i = if fault == Fault::NodeKill { victim } else { master };
                let _ = fault_at.set(Instant::now());
                self.nodes[i].kill9();
            }
            Fault::NodeStop | Fault::MasterStop => {
                let i = if fault == Fault::NodeStop { victim } else { master };
                let pid = pid_of(&self.nodes[i]);
                let _ = fault_at.set(Instant::now());
                signal(pid, "-STOP");
                stopped = Some(pid);
            }
            Fault::ApiTerm => {
                let pid = pid_of(&self.nodes[api]);
                let _ = fault_at.set(Instant::now());
                signal(pid, "-TERM");
            }
            Fault::ClusterKill => {
                let _ = fault_at.set(Instant::now());
                for node in &mut self.nodes {
                    node.kill9();
                }
            }
            Fault::Partition => {
                let Some(lab) = &self.lab else {
                    return Err("a partition needs the cluster in network namespaces (Chaos::in_lab)".into());
                };
                let _ = fault_at.set(Instant::now());
                lab.link(victim, false);
                cut = Some(victim);
            }
        }
        let fault_at = *fault_at.get().unwrap();
        let streams: Vec<StreamResult> = readers.into_iter().map(|r| r.join().unwrap()).collect();

        // Heal, as a supervisor would: continue what was stopped, restart what died.
        if let Some(pid) = stopped {
            signal(pid, "-CONT");
        }
        if let (Some(i), Some(lab)) = (cut, &self.lab) {
            // Long enough for both sides to have timed each other out (the link lease is 3 s): the partition is
            // healed as one, not as a blip.
            std::thread::sleep(PARTITION_HOLD.saturating_sub(fault_at.elapsed()));
            lab.link(i, true);
        }
        if fault == Fault::ApiTerm {
            let deadline = Instant::now() + TERM_EXIT_WITHIN;
            while self.nodes[api].alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.nodes[api].alive() {
                notes.push(format!("the API node did not exit {TERM_EXIT_WITHIN:?} after SIGTERM"));
            }
        }
        self.restart_dead();
        let healed = Instant::now();

        // A new request, to the clients' node (restarted if it died).
        let probe = self.nodes[api].api_addr();
        let mut served_after = None;
        let mut last_answer = None;
        while healed.elapsed() < SERVE_CAP {
            let body = chat_body(4, false).to_string();
            match http_at(probe, "POST", "/v1/chat/completions", &[], Some(&body)).map(|(c, _, b)| (c, b)) {
                Some((200, _)) => {
                    served_after = Some(fault_at.elapsed());
                    break;
                }
                other => last_answer = other,
            }
            std::thread::sleep(PROBE_EVERY);
        }
        if served_after.is_none() {
            notes.push(format!(
                "not served {SERVE_CAP:?} after the heal; last answer {last_answer:?}"
            ));
        }

        self.whole(WHOLE_WITHIN)?;
        let regression = monitor.finish();
        if regression > 0 {
            notes.push(format!("a master's position went back by {regression}"));
        }

        // The replica logs after recovery: the same idx is the same event everywhere, and every event all nodes
        // held before the fault is still there (where a node still retains that idx).
        let after: Vec<BTreeMap<u64, Value>> = ports.iter().filter_map(|&p| events_of(p, base)).collect();
        let mut lost = regression;
        let mut differ = 0u64;
        let mut all_idx: Vec<u64> = after.iter().flat_map(|a| a.keys().copied()).collect();
        all_idx.sort_unstable();
        all_idx.dedup();
        for idx in all_idx {
            let versions: Vec<&Value> = after.iter().filter_map(|a| a.get(&idx)).collect();
            if versions.iter().any(|v| *v != versions[0]) {
                differ += 1;
            }
        }
        let mut missing = 0u64;
        for (idx, event) in &committed {
            let retained: Vec<&BTreeMap<u64, Value>> = after
                .iter()
                .filter(|a| a.keys().next().is_some_and(|first| first <= idx))
                .collect();
            if retained.is_empty() || retained.iter().any(|a| a.get(idx) != Some(event)) {
                missing += 1;
            }
        }
        if differ + missing > 0 {
            notes.push(format!(
                "{differ} idx differ between replicas, {missing} replicated events missing"
            ));
        }
        lost += differ + missing;

        Ok(TrialResult {
            fault,
            streams,
            served_after,
            events_lost: lost,
            notes,
        })
    }
}

/// The p-th percentile (0–100) of `values`, nearest rank.
pub fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.saturating_sub(1).min(v.len().saturating_sub(1))).copied()
}
