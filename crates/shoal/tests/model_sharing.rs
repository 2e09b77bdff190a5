//! Model files shared over the LAN (issue 18): a model only one node holds reaches the others from that node, with
//! no download from the card's sources; the copies are verified; the held files are facts in State. Real `shoal run`
//! nodes on loopback, the real model, real HTTP.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::wait_for;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Every file under `dir` named `name`.
fn find_named(dir: &Path, name: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            find_named(&path, name, out);
        } else if path.file_name().is_some_and(|n| n == name) {
            out.push(path);
        }
    }
}

/// The `downloads` entry of the test model for node `id`, as the variant's name.
fn download_of(state: &Value, id: &str) -> Option<String> {
    let downloads = state["nodes"][id]["downloads"].as_object()?;
    let progress = downloads.values().next()?;
    match progress {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.keys().next().cloned(),
        _ => None,
    }
}

/// `n` nodes (with `extra` arguments); only node 0 has the model (its `--models-dir`), and the others cannot reach
/// any of the card's sources (pip without an index, the Hub at a closed port).
fn only_node_0_holds_it(root: &Path, models: &Path, n: usize, extra: &[String]) -> Vec<Node> {
    let mut nodes = cluster(root, n);
    for (i, node) in nodes.iter_mut().enumerate() {
        node.extra = extra.to_vec();
        if i == 0 {
            node.extra.extend(["--models-dir".into(), models.display().to_string()]);
        }
        node.env = vec![
            ("PIP_NO_INDEX".into(), "1".into()),
            ("HF_ENDPOINT".into(), "http://127.0.0.1:9".into()),
        ];
        node.start();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(20), "agreement", || agreement(&all));
    wait_for(Duration::from_secs(20), "every fact", || same_state(&all, n));
    nodes
}

fn node_ids(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| json_of(&n.get("/node_id").unwrap().1).as_str().unwrap().to_owned())
        .collect()
}

/// Places the test model over every node and waits until each runner is Ready.
fn place_on_all(nodes: &[Node], ids: &[String]) {
    let body = json!({"model_id": "smollm2-135m", "min_nodes": ids.len(), "nodes": ids});
    let (code, body) = nodes[0].http("POST", "/place_instance", Some(&body)).unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(120), "every runner Ready", || {
        nodes[0]
            .state()
            .is_some_and(|s| {
                let statuses = runner_statuses(&s);
                statuses.len() == ids.len() && statuses.iter().all(|(_, st)| st == "Ready")
            })
            .then_some(())
    });
}

/// Three nodes; only node 0 has the model (its `--models-dir`), and nodes 1 and 2 cannot reach any of the card's
/// sources (pip without an index, the Hub at a closed port). A placement over all three becomes ready: nodes 1 and 2
/// fetch the file from node 0, verified against the card's sha256, and State says who holds it and where each node
/// serves files. A file deleted afterwards is reported gone.
#[test]
fn a_model_only_one_node_holds_reaches_the_others_from_it() {
    let _serial = serial();
    let source = common::model_path();
    let name = source.file_name().unwrap().to_str().unwrap().to_owned();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(&source, models.join(&name)).unwrap();
    let want = sha256_hex(&source);

    let nodes = only_node_0_holds_it(root.path(), &models, 3, &[]);
    let ids = node_ids(&nodes);
    // Before any placement, node 0 reports the copy on its disk (its worker looks for every model of the catalog),
    // and the others hold nothing.
    wait_for(Duration::from_secs(30), "node 0's copy in State", || {
        let state = nodes[0].state()?;
        (download_of(&state, &ids[0]).as_deref() == Some("Completed")).then_some(())
    });
    let state = nodes[0].state().unwrap();
    assert_eq!(download_of(&state, &ids[1]), None);
    assert_eq!(download_of(&state, &ids[2]), None);
    // Every node serves files on loopback (its `--listen` address).
    let state = nodes[0].state().unwrap();
    for id in &ids {
        let addrs = state["nodes"][id]["file_server"].as_array().unwrap();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.as_str().unwrap().starts_with("127.0.0.1:")),
            "{id}: {addrs:?}"
        );
    }

    place_on_all(&nodes, &ids);

    // Each node holds a verified copy: in State, and on disk with the card's bytes.
    let state = nodes[0].state().unwrap();
    for id in &ids {
        assert_eq!(download_of(&state, id).as_deref(), Some("Completed"), "{id}");
    }
    for node in &nodes[1..] {
        let mut copies = Vec::new();
        find_named(&node.dir, &name, &mut copies);
        assert_eq!(copies.len(), 1, "{copies:?}");
        assert_eq!(sha256_hex(&copies[0]), want);
        assert!(node.logged("model file fetched from peers"), "{}", node.log_text());
        // Nothing partial is left behind.
        let mut all = Vec::new();
        files_under(&node.dir, &mut all);
        let partial: Vec<_> = all
            .iter()
            .filter(|p| {
                [".part", ".chunks", ".peer"]
                    .iter()
                    .any(|end| p.to_string_lossy().ends_with(end))
            })
            .collect();
        assert!(partial.is_empty(), "{partial:?}");
    }
    // The two copies were served by node 0 (and by node 1 once it held one, to a fetch that pulls from every
    // holder), as each node's /metrics says.
    let served: Vec<u64> = nodes
        .iter()
        .map(|node| {
            let (_, metrics) = node.get("/metrics").unwrap();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("shoal_file_server_bytes_served_total "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{metrics}"))
        })
        .collect();
    let size = std::fs::metadata(&source).unwrap().len();
    assert!(
        served[0] > 0 && served.iter().sum::<u64>() >= 2 * size,
        "served {served:?} of {size} bytes"
    );

    // The pipeline answers.
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
    });
    let (code, answer) = nodes[1].http("POST", "/v1/chat/completions", Some(&body)).unwrap();
    assert_eq!(code, 200, "{answer}");

    // A held file that goes away is reported gone.
    let mut copies = Vec::new();
    find_named(&nodes[2].dir, &name, &mut copies);
    std::fs::remove_file(&copies[0]).unwrap();
    wait_for(Duration::from_secs(20), "node 2's copy reported gone", || {
        (download_of(&nodes[0].state()?, &ids[2]).as_deref() == Some("Gone")).then_some(())
    });
}

/// Under a cluster key the transfer is TLS with the cluster's certificates: the copy arrives and verifies, and a
/// plaintext client of a node's file server is refused.
#[test]
fn under_a_cluster_key_files_move_over_tls_and_plaintext_is_refused() {
    let _serial = serial();
    let source = common::model_path();
    let name = source.file_name().unwrap().to_str().unwrap().to_owned();
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(&source, models.join(&name)).unwrap();
    let key = root.path().join("cluster.key");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keyed = ["--cluster-key".to_owned(), key.display().to_string()];
    let nodes = only_node_0_holds_it(root.path(), &models, 2, &keyed);
    let ids = node_ids(&nodes);

    // A plaintext request to node 0's file server gets no answer: the connection is closed at the TLS handshake.
    let state = nodes[0].state().unwrap();
    let addr: std::net::SocketAddr = state["nodes"][&ids[0]]["file_server"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = plain.write_all(b"shoal-fs plaintext request that is not a TLS ClientHello");
    let mut reply = Vec::new();
    let read = plain.read_to_end(&mut reply);
    assert!(read.is_err() || !reply.starts_with(b"shoal-fs"), "{reply:?}");

    place_on_all(&nodes, &ids);
    let mut copies = Vec::new();
    find_named(&nodes[1].dir, &name, &mut copies);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(sha256_hex(&copies[0]), sha256_hex(&source));
    assert!(
        nodes[1].logged("model file fetched from peers"),
        "{}",
        nodes[1].log_text()
    );
}

/// Inter-chunk gaps of one streaming chat of `tokens` tokens through `port`, in ms (the first is the time to the
/// first chunk).
fn stream_gaps(port: u16, tokens: u32) -> Vec<f64> {
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse keeper."}],
        "max_tokens": tokens,
        "stream": true,
    });
    let mut last = std::time::Instant::now();
    let mut client = SseClient::open(port, &body);
    assert_eq!(client.status, 200);
    let mut gaps = Vec::new();
    while let Some(data) = client.next_data() {
        gaps.push(last.elapsed().as_secs_f64() * 1e3);
        last = std::time::Instant::now();
        if data == "[DONE]" {
            break;
        }
    }
    gaps
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Measurement for BENCHMARKS.md, not a check (`--ignored --nocapture`): control traffic with and without a transfer
/// saturating loopback. Three nodes serve the test model over three stages; the transfer is a 2 GiB file fetched
/// again and again from a model-file server in this process over two connections (`SHOAL_SHARE_BYTES` overrides the
/// size), at niceness `SHOAL_SHARE_NICE` (default 10, as a node's transfers). Per phase: inter-token gaps of streamed chats, and the time from SIGKILL of the master to a new master
/// agreed by the two others.
#[test]
#[ignore]
fn measure_control_traffic_during_a_transfer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let _serial = serial();
    // As a node's transfers run (shoal-worker's `sharing::BULK_NICENESS`); `SHOAL_SHARE_NICE=0` to compare.
    let niceness: i32 = std::env::var("SHOAL_SHARE_NICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let (_root, mut nodes) = start(3);
    place(&nodes, 3);
    let bytes: u64 = std::env::var("SHOAL_SHARE_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2 << 30);
    let scratch = tempfile::tempdir_in("/dev/shm").unwrap_or_else(|_| tempfile::tempdir().unwrap());
    let served = scratch.path().join("big.bin");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&served).unwrap());
        let block: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        for _ in 0..bytes / (1 << 20) {
            file.write_all(&block).unwrap();
        }
    }
    let sha = sha256_hex(&served);
    let path = served.clone();
    let want = sha.clone();
    let catalogue: shoal_share::Catalogue = Arc::new(move |s: &str| (s == want).then(|| path.clone()));
    let options = shoal_share::ServerOptions::new(catalogue, Arc::new(|_: &str, _: &str| true));
    let nice = move || {
        let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), niceness);
    };
    let server = std::thread::scope(|s| {
        s.spawn(|| {
            nice();
            shoal_share::FileServer::start("127.0.0.1:0".parse().unwrap(), options).unwrap()
        })
        .join()
        .unwrap()
    });
    let addr = server.local_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let moved = Arc::new(AtomicU64::new(0));
    let mut report = Vec::new();
    for transfer in [false, true] {
        let mover = transfer.then(|| {
            let (stop, moved, sha) = (stop.clone(), moved.clone(), sha.clone());
            let dest = scratch.path().join("copy.bin");
            std::thread::spawn(move || {
                nice();
                let peers: Vec<shoal_share::Peer> = (0..2)
                    .map(|i| shoal_share::Peer {
                        node: format!("server-{i}"),
                        addr,
                    })
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    let spec = shoal_share::FileSpec {
                        sha256: sha.clone(),
                        size: bytes,
                        path: dest.clone(),
                    };
                    let options = shoal_share::FetchOptions {
                        cancel: Some(&stop),
                        ..Default::default()
                    };
                    if let Ok(done) = shoal_share::fetch(&spec, &peers, &options) {
                        moved.fetch_add(done.fetched_bytes, Ordering::Relaxed);
                    }
                    let _ = std::fs::remove_file(&dest);
                }
            })
        });
        let started = std::time::Instant::now();
        std::thread::sleep(Duration::from_secs(1));
        let mut gaps = Vec::new();
        let mut first = Vec::new();
        for _ in 0..3 {
            let g = stream_gaps(nodes[1].api, 64);
            first.push(g[0]);
            gaps.extend_from_slice(&g[1..]);
        }
        gaps.sort_by(f64::total_cmp);
        first.sort_by(f64::total_cmp);
        // An election: SIGKILL the master; time until the two others agree on a new one.
        let all: Vec<&Node> = nodes.iter().collect();
        let (_, master) = wait_for(Duration::from_secs(20), "agreement", || agreement(&all));
        nodes[master].kill9();
        let killed = std::time::Instant::now();
        let rest: Vec<&Node> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != master)
            .map(|(_, n)| n)
            .collect();
        wait_for(Duration::from_secs(30), "a new master", || agreement(&rest));
        let election_ms = killed.elapsed().as_secs_f64() * 1e3;
        nodes[master].start();
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(30), "agreement again", || agreement(&all));
        let secs = started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        if let Some(mover) = mover {
            mover.join().unwrap();
        }
        let gbps = moved.swap(0, Ordering::Relaxed) as f64 / secs / 1e9;
        report.push(format!(
            "transfer {transfer}: first chunk p50 {:.0} ms; gaps p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} gaps); \
             election after SIGKILL {election_ms:.0} ms; transfer {gbps:.2} GB/s",
            percentile(&first, 0.5),
            percentile(&gaps, 0.5),
            percentile(&gaps, 0.99),
            gaps.last().copied().unwrap_or_default(),
            gaps.len()
        ));
        stop.store(false, Ordering::Relaxed);
        // The restarted node rejoins the placement before the next phase.
        wait_for(Duration::from_secs(90), "every runner Ready", || {
            nodes[0]
                .state()
                .is_some_and(|s| {
                    let statuses = runner_statuses(&s);
                    statuses.len() == 3 && statuses.iter().all(|(_, st)| st == "Ready")
                })
                .then_some(())
        });
    }
    for line in report {
        println!("{line}");
    }
}
