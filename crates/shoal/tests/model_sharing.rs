//! Model files shared over the LAN (issue 18): a model only one node holds reaches the others from that node, with
//! no download from the card's sources; the copies are verified; the held files are facts in State. Real `shoal run`
//! nodes on loopback, the real model, real HTTP.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::wait_for;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::*;

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
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

    let mut nodes = cluster(root.path(), 3);
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == 0 {
            node.extra = vec!["--models-dir".into(), models.display().to_string()];
        }
        node.env = vec![
            ("PIP_NO_INDEX".into(), "1".into()),
            ("HF_ENDPOINT".into(), "http://127.0.0.1:9".into()),
        ];
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(20), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(20), "every fact", || same_state(&all, 3));
    }
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| json_of(&n.get("/node_id").unwrap().1).as_str().unwrap().to_owned())
        .collect();
    // Every node serves files on loopback (its `--listen` address).
    let state = nodes[0].state().unwrap();
    for id in &ids {
        let addrs = state["nodes"][id]["file_server"].as_array().unwrap();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.as_str().unwrap().starts_with("127.0.0.1:")),
            "{id}: {addrs:?}"
        );
    }

    let (code, body) = nodes[0]
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": 3, "nodes": ids})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    wait_for(Duration::from_secs(120), "every runner Ready", || {
        nodes[0]
            .state()
            .is_some_and(|s| {
                let statuses = runner_statuses(&s);
                statuses.len() == 3 && statuses.iter().all(|(_, st)| st == "Ready")
            })
            .then_some(())
    });

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
        let mut partial = Vec::new();
        find_named(&node.dir, &format!("{name}.part"), &mut partial);
        assert!(partial.is_empty(), "{partial:?}");
    }

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
