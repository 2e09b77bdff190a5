//! `shoal` as a real child process: a node starts with a persisted id and an opened store, stops cleanly on
//! SIGTERM, comes back as the same node, and `reset-id` / bad flags behave.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.env_remove("SHOAL_HOME")
        .env("SHOAL_LOG", "info")
        .env("NO_COLOR", "1");
    cmd
}

/// Starts `shoal run` and waits for its "node ready" log line; returns the child and the lines seen so far.
fn start_node(data_dir: &std::path::Path) -> (Child, Vec<String>) {
    // Loopback only, no multicast, any free API port: a test never scouts on a real NIC (§12).
    let mut child = shoal()
        .args([
            "run",
            "--no-multicast",
            "--listen",
            "tcp/127.0.0.1:0",
            "--api-port",
            "0",
            "--data-dir",
        ])
        .arg(data_dir)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let ready = line.contains("node ready");
                lines.push(line);
                if ready {
                    return (child, lines);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("node did not become ready; log:\n{}", lines.join("\n"));
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("node did not stop within 10 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_node_starts_stops_and_restarts_as_the_same_node() {
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = start_node(dir.path());
    let node_id = std::fs::read_to_string(dir.path().join("node_id")).unwrap();
    assert_eq!(node_id.trim().len(), 32);
    assert!(dir.path().join("store.redb").exists());
    assert!(
        lines.iter().any(|l| l.contains(node_id.trim())),
        "the log names the node id"
    );
    assert!(sigterm_and_wait(child).success());

    let (child, _) = start_node(dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("node_id")).unwrap(),
        node_id,
        "same node after restart"
    );
    assert!(sigterm_and_wait(child).success());

    let out = shoal()
        .args(["reset-id", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(node_id.trim()));
    assert!(!dir.path().join("node_id").exists());
}

#[test]
fn shoal_home_selects_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = shoal().arg("reset-id").env("SHOAL_HOME", dir.path()).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&dir.path().display().to_string()));
}

/// Bad cluster flags fail before the node touches the network, with the flag named.
#[test]
fn bad_cluster_flags_name_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let out = shoal()
            .args(["run", "--no-multicast", "--api-port", "0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("no-such.key");
    let stderr = run(&["--cluster-key", missing.to_str().unwrap()]);
    assert!(stderr.contains("--cluster-key"), "{stderr}");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let stderr = run(&["--cluster-key", garbage.to_str().unwrap()]);
    assert!(
        stderr.contains("--cluster-key") && stderr.contains("garbage.key"),
        "{stderr}"
    );
    let stderr = run(&["--connect", "192.168.1.5"]);
    assert!(stderr.contains("--connect"), "{stderr}");
    let stderr = run(&["--namespace", "a/b"]);
    assert!(stderr.contains("--namespace"), "{stderr}");
    let stderr = run(&["--max-seqs", "0"]);
    assert!(stderr.contains("--max-seqs"), "{stderr}");
    let stderr = run(&["--threads", "0"]);
    assert!(stderr.contains("--threads"), "{stderr}");
    let stderr = run(&["--stream-ttl", "0"]);
    assert!(stderr.contains("--stream-ttl"), "{stderr}");
    let stderr = run(&["--api-key", "has space"]);
    assert!(stderr.contains("--api-key") && stderr.contains("printable"), "{stderr}");
    assert!(!stderr.contains("has space"), "the key is never echoed: {stderr}");
    let stderr = run(&["--cors-origin", "localhost:3000"]);
    assert!(stderr.contains("--cors-origin"), "{stderr}");
    let stderr = run(&["--models-dir", "/no/such/dir"]);
    assert!(stderr.contains("--models-dir /no/such/dir"), "{stderr}");
    let stderr = run(&["--model", "no-such-model"]);
    assert!(
        stderr.contains("--model no-such-model") && stderr.contains("smollm2-135m"),
        "{stderr}"
    );

    // keygen writes a key once and refuses to overwrite it.
    let key = dir.path().join("cluster.key");
    let out = shoal().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--cluster-key"));
    let first = std::fs::read_to_string(&key).unwrap();
    let out = shoal().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read_to_string(&key).unwrap(), first, "the key was overwritten");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = shoal().args(["run", "--no-such-flag"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));

    // A data dir that is a file cannot be created: the message names the flag.
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = shoal().args(["run", "--data-dir"]).arg(file.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--data-dir"), "{stderr}");

    // A garbled node id file is refused, not replaced.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("node_id"), "garbage").unwrap();
    let out = shoal().args(["run", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node_id") && stderr.contains("reset-id"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.path().join("node_id")).unwrap(), "garbage");
}
