//! Zero-configuration discovery and a real network partition, in network namespaces this test creates (SYSTEM.md §7
//! step 7, §12). Each node runs in its own namespace with one interface `eth0` on a bridge in a hub namespace; the
//! nodes find each other by multicast scouting on that bridge (no `--connect`), and the test cuts and restores a
//! node's link. The test process reaches the nodes' HTTP APIs through one more veth pair into the hub. Nothing is
//! sent outside the namespaces made here; they are deleted at the end.
//!
//! Needs root and iproute2 (`ip netns`), as CI machines have.
#![allow(clippy::unwrap_used)]

mod common;
mod lab;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::wait_for;
use lab::Lab;
use serde_json::Value;

const API_PORT: u16 = 18_080;
const ZENOH_PORT: u16 = 18_447;

struct Node {
    child: Option<Child>,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    fn start(lab: &Lab, i: usize, dir: &Path, scout_port: u16) -> Node {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &lab.node_ns(i)])
            .arg(env!("CARGO_BIN_EXE_shoal"))
            .args(["run", "--data-dir"])
            .arg(dir)
            .args(["--listen", &format!("tcp/{}:{ZENOH_PORT}", lab.addr(i))])
            .args(["--api-port", &API_PORT.to_string()])
            .args(["--scout-iface", "eth0", "--scout-port", &scout_port.to_string()])
            .env_remove("SHOAL_HOME")
            .env("SHOAL_LOG", "info,zenoh=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Node {
            child: Some(child),
            addr: lab.addr(i),
            log,
        }
    }

    fn get(&self, path: &str) -> Option<Value> {
        let mut stream = TcpStream::connect_timeout(
            &format!("{}:{API_PORT}", self.addr).parse().ok()?,
            Duration::from_millis(500),
        )
        .ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        if !response.starts_with("HTTP/1.1 200") {
            return None;
        }
        serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
    }

    fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the node, so this is the node itself.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One session, one master, one State with `count` nodes, across `nodes`; returns the session.
fn converged(nodes: &[&Node], count: usize) -> Option<Value> {
    let statuses: Vec<Value> = nodes.iter().map(|n| n.get("/status")).collect::<Option<_>>()?;
    let session = statuses[0]["session"].clone();
    let one_session = statuses.iter().all(|s| s["session"] == session && s["ready"] == true);
    let masters = statuses.iter().filter(|s| s["role"] == "master").count();
    let states: Vec<Value> = nodes.iter().map(|n| n.get("/state")).collect::<Option<_>>()?;
    let same = states.iter().all(|s| s == &states[0]);
    let all_known = states[0]["nodes"].as_object()?.len() == count;
    (one_session && masters == 1 && same && all_known && !session.is_null()).then_some(session)
}

#[test]
fn nodes_find_each_other_by_scouting_and_survive_a_partition() {
    let lab = Lab::new(3);
    let dirs = tempfile::tempdir().unwrap();
    let scout_port = 17_000 + (std::process::id() % 900) as u16;
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| Node::start(&lab, i, &dirs.path().join(format!("n{i}")), scout_port))
        .collect();

    // Zero configuration: no --connect anywhere.
    let all: Vec<&Node> = nodes.iter().collect();
    let session = wait_for(Duration::from_secs(20), "discovery by scouting", || converged(&all, 3));
    let master = wait_for(Duration::from_secs(5), "the master", || {
        (0..3).find(|&i| nodes[i].get("/status").is_some_and(|s| s["role"] == "master"))
    });

    // Cut the master off. The majority elects a new session and times the old master out; the old master, alone,
    // keeps serving its own session and times the others out: two diverging States.
    lab.link(master, false);
    let majority: Vec<&Node> = (0..3).filter(|&i| i != master).map(|i| &nodes[i]).collect();
    let new_session = wait_for(Duration::from_secs(20), "the majority's new master", || {
        converged(&majority, 2).filter(|s| *s != session)
    });
    // The lone master notices the others gone after the link lease (3 s) and the 500 ms debounce, and indexes
    // their time-outs in its own session: its State diverges.
    std::thread::sleep(Duration::from_secs(6));

    // Heal: two master tokens are visible; the session with more members wins and the lone node re-bootstraps.
    lab.link(master, true);
    let all: Vec<&Node> = nodes.iter().collect();
    let healed = wait_for(Duration::from_secs(30), "one cluster again", || converged(&all, 3));
    assert_eq!(healed, new_session, "the majority's session must win");
    assert!(
        nodes[master].logged("stepped down") || nodes[master].logged("following"),
        "{}",
        nodes[master].log_text()
    );
    assert!(
        nodes[master].logged("installed a snapshot"),
        "the lone node's diverged State must be replaced:\n{}",
        nodes[master].log_text()
    );
    nodes.clear();
}
