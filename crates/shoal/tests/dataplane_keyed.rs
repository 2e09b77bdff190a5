//! The runners' data plane under the cluster key (SYSTEM.md §10.4, §12): three keyed nodes on loopback run the test
//! model as a 3-stage pipeline while the test connects to the runners' data-plane ports as an outsider would, with
//! plaintext and with a silent connection. Those are refused or dropped, and the ring forms and serves anyway.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use shoal_runner::frame::write_frame;
use shoal_runner::proto::{DataFrame, Handshake, Token};
use support::*;

/// A data-plane handshake that has not finished by then is dropped (`shoal_runner::secure::HANDSHAKE_TIMEOUT`).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every data-plane address in State's runner records.
fn data_addrs(state: &Value) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for r in state["runners"].as_object().into_iter().flat_map(|m| m.values()) {
        for a in r["data_addrs"].as_array().into_iter().flatten() {
            if let Some(addr) = a.as_str().and_then(|s| s.parse().ok()) {
                out.push(addr);
            }
        }
    }
    out
}

fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {name} {pid}");
}

/// Whether a runner of `node` logged closing an outsider: during its handshake, or once its ring edge was up.
fn refused_some(node: &Node) -> bool {
    node.logged("data-plane handshake refused") || node.logged("data-plane connection refused")
}

/// Waits until the peer closes `s` (a read gives 0 bytes or an error); how long that took.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            // A TLS alert or anything else the runner sends before closing.
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return None;
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

#[test]
fn plaintext_and_silent_connections_to_a_keyed_runner_are_refused_and_the_ring_serves() {
    let _serial = serial();
    let started = Instant::now();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("cluster.key");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        node.extra = vec![
            "--models-dir".into(),
            models.display().to_string(),
            "--cluster-key".into(),
            key.display().to_string(),
        ];
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(15), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(15), "every fact", || same_state(&all, 3));
    }
    // The start-up line says what the key covers; the old "data plane is not encrypted" warning is gone.
    assert!(
        nodes[0].logged("the runners' data plane and model-file transfers run over mutual TLS"),
        "{}",
        nodes[0].log_text()
    );
    assert!(!nodes[0].logged("not encrypted yet"));

    let (code, body) = nodes[0]
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": 3})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");

    // Node 2's runner is stopped (SIGSTOP) as soon as it exists, before it can listen or dial, so the other two
    // runners listen with the ring incomplete: one of them still waits for its previous rank. Well within the
    // runner hung limit (5 s).
    let node2 = nodes[2].child.as_ref().unwrap().id();
    let node2_id = nodes[2].status().unwrap()["node"].as_str().unwrap().to_owned();
    let runner = wait_for(Duration::from_secs(20), "node 2's runner", || {
        runner_children(node2).first().copied()
    });
    signal(runner, "-STOP");
    let stopped = Instant::now();
    let others = wait_for(Duration::from_secs(20), "the other runners listening", || {
        let state = nodes[0].state()?;
        let addrs: Vec<SocketAddr> = state["runners"]
            .as_object()?
            .values()
            .filter(|r| r["node"] != node2_id.as_str())
            .filter_map(|r| r["data_addrs"][0].as_str()?.parse().ok())
            .collect();
        (addrs.len() == 2).then_some(addrs)
    });
    // An outsider opens a silent connection and a plaintext one to each listening runner.
    let mut silent = Vec::new();
    let mut plaintext = Vec::new();
    for addr in &others {
        silent.push((TcpStream::connect(addr).unwrap(), Instant::now()));
        let mut p = TcpStream::connect(addr).unwrap();
        // What a keyless runner would send: a length-prefixed frame in the clear.
        let _ = p.write_all(&[20, 0, 0, 0, 1, 4, b'i', b'n', b's', b't']);
        plaintext.push(p);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "the runner was stopped too long"
    );
    signal(runner, "-CONT");
    let continued = Instant::now();

    let ring_up = wait_for(Duration::from_secs(45), "every runner Ready", || {
        let state = nodes[0].state()?;
        let statuses = runner_statuses(&state);
        (statuses.len() == 3 && statuses.iter().all(|(_, s)| s == "Ready")).then_some(state)
    });
    let formed_in = continued.elapsed();
    // A silent connection to a runner waiting for its previous rank held the ring in WarmingUp for 60 s before; now
    // the real previous rank's handshake runs beside it.
    assert!(
        formed_in < Duration::from_secs(20),
        "ring formed {formed_in:?} after the runner continued"
    );
    assert_eq!(data_addrs(&ring_up).len(), 3, "one listener per runner on loopback");

    // The instance's token never shows in JSON.
    let instance = ring_up["instances"].as_object().unwrap().values().next().unwrap();
    assert_eq!(instance["token"], "redacted", "{instance}");

    // Each outsider connection is closed by the runner: plaintext at once (the TLS handshake fails), silent at the
    // handshake time-out, or at once where the runner's ring edge was already up.
    for (i, s) in plaintext.iter_mut().enumerate() {
        assert!(
            closed_within(s, HANDSHAKE_TIMEOUT * 2).is_some(),
            "plaintext connection {i} still open"
        );
    }
    let mut timed_out = 0;
    for (i, (s, opened)) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(s, HANDSHAKE_TIMEOUT * 3).is_some(),
            "silent connection {i} still open"
        );
        let lived = opened.elapsed();
        if lived >= HANDSHAKE_TIMEOUT - Duration::from_millis(100) {
            timed_out += 1;
        }
        eprintln!("silent connection {i} closed after {lived:?}");
    }
    assert!(
        timed_out >= 1,
        "no silent connection reached a runner still waiting for its previous rank"
    );
    eprintln!("ring formed {formed_in:?} after the stopped runner continued");

    // The ring serves.
    let (code, body) = nodes[1]
        .http(
            "POST",
            "/v1/chat/completions",
            Some(&json!({
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            })),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let reply = json_of(&body);
    assert!(reply["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{reply}");

    // After the ring is up, a newcomer to a runner's port is closed too.
    for addr in &data_addrs(&ring_up) {
        if let Ok(mut late) = TcpStream::connect(addr) {
            let _ = late.write_all(b"hello");
            assert!(
                closed_within(&mut late, HANDSHAKE_TIMEOUT * 2).is_some(),
                "late connection to {addr} open"
            );
        }
    }
    // The runners say why they closed the outsiders.
    assert!(nodes.iter().any(refused_some), "{}", nodes[0].log_text());
    eprintln!("whole test {:?}", started.elapsed());
}

/// Without a key the handshake is in the clear, but a peer must still name the instance's token: a handshake that
/// names the right instance, rank and model with a wrong token is refused, and the ring forms and serves anyway.
#[test]
fn without_a_key_a_wrong_token_is_refused_and_the_ring_serves() {
    let _serial = serial();
    let (_root, nodes) = start(3);
    let (code, body) = nodes[0]
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": 3})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let model = common::model_path().file_name().unwrap().to_string_lossy().into_owned();
    let mut seen = BTreeSet::new();
    let mut forged = Vec::new();
    let state = wait_for(Duration::from_secs(45), "every runner Ready", || {
        let state = nodes[0].state()?;
        let instance = state["instances"].as_object()?.keys().next()?.clone();
        for (id, r) in state["runners"].as_object()? {
            let Some(addr) = r["data_addrs"][0].as_str().and_then(|a| a.parse::<SocketAddr>().ok()) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                continue;
            }
            // Every rank expects some previous rank: try them all, each with a wrong token.
            for rank in 0..3 {
                let mut s = TcpStream::connect(addr).unwrap();
                let hello = Handshake {
                    instance: instance.clone(),
                    rank,
                    world_size: 3,
                    model: model.clone(),
                    token: Token([0x5a; 16]),
                };
                let _ = write_frame(&mut s, &DataFrame::Handshake(hello));
                forged.push(s);
            }
        }
        let statuses = runner_statuses(&state);
        (statuses.len() == 3 && statuses.iter().all(|(_, s)| s == "Ready")).then_some(state)
    });
    assert_eq!(seen.len(), 3);
    let instance = state["instances"].as_object().unwrap().values().next().unwrap();
    assert_eq!(instance["token"], "redacted", "{instance}");
    for (i, s) in forged.iter_mut().enumerate() {
        assert!(
            closed_within(s, HANDSHAKE_TIMEOUT * 2).is_some(),
            "forged connection {i} still open"
        );
    }
    let (code, body) = nodes[2]
        .http(
            "POST",
            "/v1/chat/completions",
            Some(&json!({
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            })),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(nodes.iter().any(refused_some), "{}", nodes[0].log_text());
}
