//! Real `shoal run` nodes for the tests that need a cluster: start, kill, ask over HTTP, read /proc.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{self, wait_for};

pub mod python;

/// The tests of this file run one at a time: two of them measure failover and agreement times, which a 2-core
/// machine running four other clusters at once would distort.
pub static SERIAL: Mutex<()> = Mutex::new(());
/// A request's connection attempt gives up after this (a partitioned node drops packets rather than refusing).
const CONNECT_WITHIN: Duration = Duration::from_secs(2);

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Node {
    pub child: Option<Child>,
    pub dir: PathBuf,
    /// The address the node listens on (zenoh) and the test reaches its API at: loopback, or its lab address.
    pub host: IpAddr,
    /// The network namespace the node runs in (`tests/lab`), if any.
    pub netns: Option<String>,
    pub zenoh: u16,
    pub api: u16,
    /// The zenoh endpoints it connects to.
    pub peers: Vec<SocketAddr>,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Headers every request of the helpers sends (the `--api-key`, for a node started with one).
    pub headers: Vec<(String, String)>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Node {
    pub fn new(dir: &Path, peers: &[u16], zenoh: u16) -> Node {
        Node {
            child: None,
            dir: dir.to_path_buf(),
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            zenoh,
            api: free_port(),
            peers: peers.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))).collect(),
            extra: Vec::new(),
            env: Vec::new(),
            headers: Vec::new(),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn start(&mut self) {
        let mut cmd = match &self.netns {
            // `ip netns exec` execs the node, so the child is the node itself (signals reach it).
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(env!("CARGO_BIN_EXE_shoal"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_shoal")),
        };
        cmd.args(["run", "--no-multicast", "--data-dir"])
            .arg(&self.dir)
            .args(["--listen", &format!("tcp/{}", SocketAddr::new(self.host, self.zenoh))])
            .args(["--api-port", &self.api.to_string()])
            .env_remove("SHOAL_HOME")
            // `SHOAL_TEST_LOG` replaces the nodes' log filter when a failure needs more than the default.
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info,zenoh=warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for peer in &self.peers {
            cmd.args(["--connect", &format!("tcp/{peer}")]);
        }
        cmd.args(&self.extra);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log.lock().unwrap().push(line);
            }
        });
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Where the test reaches the node's API.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.api)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.http("GET", path, None)
    }

    /// A request with this node's headers.
    pub fn http(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, String)> {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, _, body) = http_at(
            self.api_addr(),
            method,
            path,
            &headers,
            body.map(|b| b.to_string()).as_deref(),
        )?;
        Some((code, body))
    }

    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.get("/status")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }

    pub fn state(&self) -> Option<Value> {
        let (code, body) = self.get("/state")?;
        (code == 200).then(|| serde_json::from_str(&body).ok())?
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http(port, "GET", path, None)
}

pub fn http(port: u16, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, String)> {
    http_with(port, method, path, &[], body.map(|b| b.to_string()).as_deref())
}

/// One HTTP/1.1 request with extra headers; the status and the body.
pub fn http_with(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String)> {
    let (code, _, body) = http_full(port, method, path, headers, body)?;
    Some((code, body))
}

/// One HTTP/1.1 request with extra headers; the status, the response's head and its body.
pub fn http_full(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String, String)> {
    http_at(SocketAddr::from(([127, 0, 0, 1], port)), method, path, headers, body)
}

/// One HTTP/1.1 request to `addr`; the status, the response's head and its body.
pub fn http_at(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, CONNECT_WITHIN).ok()?;
    // Placement commands wait for the master's answer (≤ 10 s).
    stream.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let body = body.unwrap_or_default();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    Some((code, head.to_owned(), body.to_owned()))
}

pub fn cluster(root: &Path, n: usize) -> Vec<Node> {
    let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
    (0..n)
        .map(|i| Node::new(&root.join(format!("n{i}")), &ports, ports[i]))
        .collect()
}

/// `n` nodes with the test model's directory as `--models-dir`, started, agreed, and holding every node's fact.
pub fn start(n: usize) -> (tempfile::TempDir, Vec<Node>) {
    start_at(n, |_| (IpAddr::V4(Ipv4Addr::LOCALHOST), None))
}

/// As [`start`], with node `i` at the address and in the network namespace `at(i)` gives (`tests/lab`).
pub fn start_at(n: usize, at: impl Fn(usize) -> (IpAddr, Option<String>)) -> (tempfile::TempDir, Vec<Node>) {
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), n);
    let zenoh: Vec<SocketAddr> = (0..n).map(|i| SocketAddr::new(at(i).0, nodes[i].zenoh)).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        (node.host, node.netns) = at(i);
        node.peers = zenoh.clone();
        node.extra = vec!["--models-dir".into(), models.display().to_string()];
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(15), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(15), "every fact", || same_state(&all, n));
    }
    (root, nodes)
}

/// Places the test model on `min_nodes` nodes and waits until every runner is Ready; returns the instance.
pub fn place(nodes: &[Node], min_nodes: usize) -> Value {
    let (code, body) = nodes[0]
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": min_nodes})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let placed = json_of(&body);
    wait_for(Duration::from_secs(60), "every runner Ready", || {
        nodes
            .iter()
            .filter(|n| n.child.is_some())
            .all(|n| {
                n.state().is_some_and(|s| {
                    let statuses = runner_statuses(&s);
                    statuses.len() == min_nodes && statuses.iter().all(|(_, st)| st == "Ready")
                })
            })
            .then_some(())
    });
    placed["instance"].clone()
}

pub fn session_of(status: &Value) -> Value {
    status["session"].clone()
}

/// All live nodes ready, in one session, with one master, at one position: returns (session, master api index).
pub fn agreement(nodes: &[&Node]) -> Option<(Value, usize)> {
    let statuses: Vec<Value> = nodes.iter().map(|n| n.status()).collect::<Option<_>>()?;
    let session = session_of(&statuses[0]);
    if session.is_null() || statuses.iter().any(|s| session_of(s) != session || s["ready"] != true) {
        return None;
    }
    let masters: Vec<usize> = (0..statuses.len())
        .filter(|&i| statuses[i]["role"] == "master")
        .collect();
    let [master] = masters[..] else { return None };
    let pos = &statuses[0]["pos"];
    statuses.iter().all(|s| &s["pos"] == pos).then_some((session, master))
}

/// Every node's `/state` is the same JSON and holds `nodes` nodes.
pub fn same_state(nodes: &[&Node], count: usize) -> Option<Value> {
    let states: Vec<Value> = nodes.iter().map(|n| n.state()).collect::<Option<_>>()?;
    let first = &states[0];
    let all_known = first["nodes"].as_object()?.len() == count;
    (all_known && states.iter().all(|s| s == first)).then(|| first.clone())
}

/// The `shoal runner` children of process `pid` (read from /proc, so nothing but Linux is needed).
pub fn runner_children(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state, ppid, ...
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        else {
            continue;
        };
        let cmdline = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == pid.to_string() && cmdline.split('\0').any(|arg| arg == "runner") {
            children.push(child);
        }
    }
    children
}

/// Whether `pid` is a live process (a zombie is not).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().to_owned()))
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// The runners of State, as (node, status name).
pub fn runner_statuses(state: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = state["runners"]
        .as_object()
        .map(|runners| {
            runners
                .values()
                .map(|r| {
                    let status = match &r["status"] {
                        Value::String(s) => s.clone(),
                        Value::Object(o) => o.keys().next().cloned().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    (r["node"].as_str().unwrap_or_default().to_owned(), status)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

pub fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// A streaming chat completion read event by event (HTTP/1.0, so the body ends when the connection closes).
pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
}

impl SseClient {
    pub fn open(port: u16, body: &Value) -> SseClient {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = body.to_string();
        write!(
            stream,
            "POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line).unwrap();
        let status = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        SseClient { reader, status }
    }

    /// The next `data:` payload, or None at the end of the body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Some(data.to_owned());
            }
        }
    }

    /// Reads `n` content deltas; returns the completion's id.
    pub fn read_deltas(&mut self, n: usize) -> String {
        let mut id = String::new();
        let mut seen = 0;
        while seen < n {
            let data = self.next_data().expect("the stream ended early");
            let event = json_of(&data);
            id = event["id"].as_str().unwrap_or_default().to_owned();
            if event["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                seen += 1;
            }
        }
        id
    }

    /// Everything until the end: (content, events, the error object if one came, whether `[DONE]` came).
    pub fn finish(&mut self) -> (String, Vec<Value>, Option<Value>, bool) {
        let mut content = String::new();
        let mut events = Vec::new();
        let mut error = None;
        let mut done = false;
        while let Some(data) = self.next_data() {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let event = json_of(&data);
            if event.get("error").is_some() {
                error = Some(event["error"].clone());
            }
            if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
                content.push_str(piece);
            }
            events.push(event);
        }
        (content, events, error, done)
    }
}
