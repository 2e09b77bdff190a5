//! Real `shoal run` processes forming a cluster over real zenoh on loopback (SYSTEM.md §5–§8, §12).
//!
//! Every node listens on `tcp/127.0.0.1:<free port>`, has multicast scouting off and is given the other nodes'
//! loopback endpoints with `--connect`, so no test sends a packet off the machine and parallel tests never merge.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::Value;
use support::*;

#[test]
fn three_nodes_started_in_any_order_agree_on_one_master_and_one_state() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    let started = Instant::now();
    for i in [2, 0, 1] {
        nodes[i].start();
        std::thread::sleep(Duration::from_millis(150));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    let (session, _) = wait_for(Duration::from_secs(10), "one master and one session", || {
        agreement(&all)
    });
    let agreed = started.elapsed();
    eprintln!("3 nodes agreed on session {session} {agreed:?} after the first start");
    assert!(
        agreed < Duration::from_secs(2) + Duration::from_millis(300),
        "agreement took {agreed:?} (spec: 2 s after start)"
    );
    let state = wait_for(
        Duration::from_secs(10),
        "the same State with every node's facts",
        || same_state(&all, 3),
    );
    for info in state["nodes"].as_object().unwrap().values() {
        assert!(info["identity"]["version"].is_string(), "identity fact missing: {info}");
        assert!(info["memory"]["total"].as_u64().unwrap() > 0);
        assert!(info["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == "lo"));
    }
    // Every node's replica log is gap-free from where it starts (0, or after its snapshot), and the events they
    // have in common are the same. A node whose snapshot already held everything has an empty log: it has nothing
    // in common with the others, so only non-empty logs bound the common range.
    let logs: Vec<Vec<Value>> = nodes.iter().map(replica_log).collect();
    let held: Vec<&Vec<Value>> = logs.iter().filter(|l| !l.is_empty()).collect();
    let common_from = held.iter().map(|l| l[0]["idx"].as_u64().unwrap()).max().unwrap();
    // The logs are read one after the other, so a later one may already hold a newer event: compare up to the
    // shortest.
    let common_to = held.iter().filter_map(|l| l.last()?["idx"].as_u64()).min().unwrap();
    let common = |log: &Vec<Value>| -> Vec<Value> {
        log.iter()
            .filter(|e| (common_from..=common_to).contains(&e["idx"].as_u64().unwrap()))
            .cloned()
            .collect()
    };
    for (i, log) in held.iter().enumerate() {
        if common(log) != common(held[0]) {
            eprintln!("log {i} differs from log 0:\n{log:?}\n{:?}", held[0]);
        }
    }
    assert!(held.iter().all(|l| common(l) == common(held[0])));
    assert!(
        logs.iter().any(|l| l.first().is_some_and(|e| e["idx"] == 0)),
        "the first master holds the log from 0"
    );
}

/// A node's retained replica log, checked gap-free.
fn replica_log(node: &Node) -> Vec<Value> {
    let (code, body) = node.get("/events").unwrap();
    assert_eq!(code, 200, "{body}");
    // Empty when the node installed a snapshot and nothing followed it.
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    let Some(first) = events.first().map(|e| e["idx"].as_u64().unwrap()) else {
        return events;
    };
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["idx"].as_u64(), Some(first + i as u64), "gap-free");
    }
    events
}

#[test]
fn a_killed_master_is_replaced_within_a_second_and_the_state_continues() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        node.start();
    }
    let (old_session, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(10), "every fact", || same_state(&all, 3));
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all))
    };
    let before = nodes[master].state().unwrap();
    let idx_before = before["pos"]["idx"].as_i64().unwrap();

    let killed = Instant::now();
    nodes[master].kill9();
    let survivors: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != master)
        .map(|(_, n)| n)
        .collect();
    let (new_session, _) = wait_for(Duration::from_secs(5), "a new master", || {
        agreement(&survivors).filter(|(s, _)| *s != old_session)
    });
    let failover = killed.elapsed();
    eprintln!("new master serving {failover:?} after SIGKILL");
    assert!(
        failover < Duration::from_millis(1_500),
        "failover took {failover:?} (spec: ≈ 0.5 s, < 1 s)"
    );
    assert!(new_session["term"].as_u64() > old_session["term"].as_u64());

    // The State is the old one continued: same history, growing idx, and the dead node is timed out (§8).
    let after = wait_for(Duration::from_secs(10), "the dead master timed out", || {
        let state = survivors[0].state()?;
        (state["nodes"].as_object()?.len() == 2).then_some(state)
    });
    assert!(after["pos"]["idx"].as_i64().unwrap() > idx_before);
    // Not wiped: every survivor's facts are the very entries recorded under the old session.
    for node in &survivors {
        let id = node.status().unwrap()["node"].as_str().unwrap().to_owned();
        assert_eq!(
            after["nodes"][&id]["first_seen_ms"], before["nodes"][&id]["first_seen_ms"],
            "node {id} was re-created, not kept"
        );
    }
    assert_eq!(after["session"], new_session);

    // The old master comes back as a follower of the new session; it does not take over.
    nodes[master].start();
    let all: Vec<&Node> = nodes.iter().collect();
    let (session, new_master) = wait_for(Duration::from_secs(10), "the old master following", || agreement(&all));
    assert_eq!(session, new_session);
    assert_ne!(new_master, master);
    wait_for(Duration::from_secs(10), "the old master's facts back in State", || {
        same_state(&all, 3)
    });
}

#[test]
fn a_late_node_installs_a_snapshot_then_follows_the_tail() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    nodes[0].start();
    nodes[1].start();
    {
        let first: Vec<&Node> = nodes[..2].iter().collect();
        wait_for(Duration::from_secs(10), "two nodes with their facts", || {
            same_state(&first, 2)
        });
    }
    let started = Instant::now();
    nodes[2].start();
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(10), "the late node ready", || agreement(&all));
    eprintln!("late node ready {:?} after its start", started.elapsed());
    assert!(nodes[2].logged("installed a snapshot"), "{}", nodes[2].log_text());
    // Its own facts arrive after the snapshot: it follows the tail.
    wait_for(Duration::from_secs(10), "one State with all three nodes", || {
        same_state(&all, 3)
    });
}

#[test]
fn lost_and_duplicated_events_still_converge_with_nothing_applied_twice() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        // Fault injection (a named mock of a lossy network): a quarter of the event messages each node sends or
        // receives are dropped, and a quarter of those it sends are sent twice.
        node.env.push(("SHOAL_FAULT_DROP_PERMILLE".into(), "250".into()));
        node.env.push(("SHOAL_FAULT_DUP_PERMILLE".into(), "250".into()));
        node.start();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(30), "convergence despite the faults", || {
        agreement(&all)?;
        same_state(&all, 3)
    });
    assert!(nodes[0].logged("fault injection is on"));
    for node in &nodes {
        let mut seen = std::collections::BTreeSet::new();
        for e in replica_log(node) {
            if !e["origin"].is_null() {
                let key = e["origin"].to_string();
                assert!(seen.insert(key.clone()), "{key} indexed twice");
            }
        }
    }
}

#[test]
fn a_node_without_the_cluster_key_cannot_join_a_keyed_cluster() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let key = root.path().join("cluster.key");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes[..2] {
        node.extra = vec!["--cluster-key".into(), key.display().to_string()];
        node.start();
    }
    nodes[2].start(); // no key: dials the same endpoints over plain tcp
    let keyed: Vec<&Node> = nodes[..2].iter().collect();
    wait_for(Duration::from_secs(10), "the keyed pair", || same_state(&keyed, 2));
    assert!(nodes[0].logged("cluster key loaded"));
    assert!(nodes[2].logged("no --cluster-key"));
    // The keyless node ends up alone: master of its own session, seeing only itself.
    let alone = wait_for(Duration::from_secs(10), "the keyless node alone", || {
        let state = nodes[2].state()?;
        (state["nodes"].as_object()?.len() == 1).then_some(state)
    });
    std::thread::sleep(Duration::from_secs(2));
    let keyed_state = nodes[0].state().unwrap();
    assert_eq!(
        keyed_state["nodes"].as_object().unwrap().len(),
        2,
        "the keyless node got in: {keyed_state}"
    );
    assert_ne!(alone["session"], keyed_state["session"]);
    let stranger = nodes[2].status().unwrap()["node"].clone();
    assert!(
        !keyed_state["nodes"]
            .as_object()
            .unwrap()
            .contains_key(stranger.as_str().unwrap())
    );
}

#[test]
fn malformed_wrong_version_and_oversized_messages_are_dropped_and_counted() {
    let _serial = serial();
    use shoal_net::zenoh::Wait;
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2);
    for node in &mut nodes {
        node.start();
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(10), "two nodes", || same_state(&all, 2));
    let status = nodes[0].status().unwrap();
    let session = format!(
        "{}.{}",
        status["session"]["term"],
        status["session"]["master"].as_str().unwrap()
    );
    let follower = nodes
        .iter()
        .find_map(|n| n.status().filter(|s| s["role"] == "follower"))
        .unwrap()["node"]
        .as_str()
        .unwrap()
        .to_owned();

    // A hostile peer on loopback (same namespace, no key: the cluster is open in this test).
    let mut config = shoal_net::NetConfig::loopback_test(
        "default",
        shoal_types::NodeId::from_bytes([0x7e; 16]),
        free_port(),
        &[nodes[0].zenoh, nodes[1].zenoh],
    );
    config.lease_ms = 2_000;
    let session_z = shoal_net::zenoh::open(config.zenoh_config().unwrap()).wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let keys = [
        "shoal/default/election".to_owned(),
        format!("shoal/default/s/{session}/up"),
        format!("shoal/default/s/{session}/down"),
        format!("shoal/default/t/{follower}/ctl"),
    ];
    let garbage: Vec<Vec<u8>> = vec![
        vec![],                          // empty
        vec![1, 0xff, 0xff, 0xff, 0xff], // right version, garbage body
        vec![2, 0, 0, 0],                // another wire version
        vec![1; 10 << 20],               // oversized
        b"{\"json\": true}".to_vec(),    // not our codec at all
    ];
    for key in &keys {
        for payload in &garbage {
            session_z.put(key.as_str(), payload.clone()).wait().unwrap();
        }
    }
    for leaf in ["range", "snapshot"] {
        for payload in &garbage[..3] {
            let replies = session_z
                .get(format!("shoal/default/s/{session}/{leaf}/**"))
                .payload(payload.clone())
                .timeout(Duration::from_secs(1))
                .wait()
                .unwrap();
            while replies.recv().is_ok() {}
        }
    }
    // A bogus liveliness token in our namespace.
    let _token = session_z
        .liveliness()
        .declare_token("shoal/default/master/notanumber/zz")
        .wait()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));

    drop(all);
    for node in &mut nodes {
        assert!(node.alive(), "a node crashed:\n{}", node.log_text());
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for(Duration::from_secs(5), "the cluster still agreeing", || agreement(&all));
    let metrics: String = nodes.iter().map(|n| n.get("/metrics").unwrap().1).collect();
    let count = |outcome: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    assert!(count("malformed") >= 8, "{metrics}");
    assert!(count("incompatible") >= 4, "{metrics}");
    assert!(count("oversized") >= 3, "{metrics}");
    let _ = session_z.close().wait();
}

#[test]
fn a_second_live_node_with_the_same_id_refuses_to_start() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2);
    nodes[0].start();
    let first: Vec<&Node> = nodes[..1].iter().collect();
    wait_for(Duration::from_secs(10), "the first node", || agreement(&first));
    // A cloned data directory: the same node_id file.
    std::fs::create_dir_all(&nodes[1].dir).unwrap();
    std::fs::copy(nodes[0].dir.join("node_id"), nodes[1].dir.join("node_id")).unwrap();
    nodes[1].start();
    let status = wait_for(Duration::from_secs(10), "the clone to exit", || {
        nodes[1].child.as_mut().unwrap().try_wait().unwrap()
    });
    assert!(!status.success());
    assert!(
        nodes[1].logged("already in use") && nodes[1].logged("reset-id"),
        "{}",
        nodes[1].log_text()
    );
    assert!(nodes[0].alive());
}

/// The placement endpoints end to end over real nodes (§8, §9): place over every node, previews, refusals that
/// store nothing, delete, and a deployment re-placed on the survivors after a node holding a stage is killed.
#[test]
fn placement_endpoints_place_delete_and_re_place_after_a_node_loss() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        // The workers start runners for what is placed; they find the model here instead of downloading it.
        node.extra = vec!["--models-dir".into(), models.display().to_string()];
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(10), "every fact", || same_state(&all, 3));
    }
    let agreed = Instant::now();
    let api = nodes[1].api;
    let post = |path: &str, body: Value| http(api, "POST", path, Some(&body)).unwrap();
    let json = |body: &str| -> Value { serde_json::from_str(body).unwrap() };

    // Refusals: each a 4xx in the OpenAI error shape, nothing stored.
    let (code, body) = post("/place_instance", serde_json::json!({"model_id": "no-such-model"}));
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-model")
    );
    let (code, body) = post(
        "/place_instance",
        serde_json::json!({"model_id": "smollm2-135m", "min_nodes": 4}),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        json(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 nodes requested"),
        "{body}"
    );
    let (code, body) = post(
        "/place_instance",
        serde_json::json!({"model_id": "smollm2-135m", "min_nodes": 0}),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = post("/place_instance", serde_json::json!({"modle_id": "smollm2-135m"}));
    assert_eq!(code, 400, "{body}");
    let (code, _) = http(api, "POST", "/place_instance", None).unwrap();
    assert_eq!(code, 400, "an empty body");
    let state = nodes[1].state().unwrap();
    assert!(state["deployments"].as_object().unwrap().is_empty());

    // Previews for 1..=3 nodes.
    let (code, body) = http_get(api, "/instance/previews?model_id=smollm2-135m").unwrap();
    assert_eq!(code, 200, "{body}");
    let previews = json(&body)["previews"].as_array().unwrap().clone();
    assert_eq!(previews.len(), 3);
    assert!(previews.iter().all(|p| p["shares"].is_array()), "{previews:?}");

    // Await: no runner serves the model yet (the worker is another milestone), so the stream says timeout.
    let (code, body) = http_get(api, "/instance/await?model_id=smollm2-135m&timeout_seconds=1").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#"data: {"type":"timeout"}"#), "{body}");
    let (code, _) = http_get(api, "/instance/await?model_id=smollm2-135m&timeout_seconds=301").unwrap();
    assert_eq!(code, 400);
    let (code, _) = http_get(api, "/instance/await?model_id=no-such-model").unwrap();
    assert_eq!(code, 404);

    // Place over all three nodes; every node sees the same instance.
    let started = Instant::now();
    let (code, body) = post(
        "/place_instance",
        serde_json::json!({"model_id": "smollm2-135m", "min_nodes": 3}),
    );
    assert_eq!(code, 201, "{body}");
    eprintln!("placed in {:?}", started.elapsed());
    let placed = json(&body);
    let instance_id = placed["instance_id"].as_str().unwrap().to_owned();
    let shards = placed["instance"]["assignments"]["shards"].as_object().unwrap();
    assert_eq!(shards.len(), 3);
    let mut ranges: Vec<(u64, u64)> = shards
        .values()
        .map(|s| {
            let p = &s["Pipeline"];
            (p["start_layer"].as_u64().unwrap(), p["end_layer"].as_u64().unwrap())
        })
        .collect();
    ranges.sort();
    assert_eq!(ranges.first().unwrap().0, 0);
    assert_eq!(ranges.last().unwrap().1, 30);
    assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "contiguous: {ranges:?}");
    for node in &nodes {
        wait_for(Duration::from_secs(5), "the instance on every node", || {
            let (code, _) = node.get(&format!("/instance/{instance_id}"))?;
            (code == 200).then_some(())
        });
    }

    // A malformed explicit instance is refused with the reason.
    // (Fresh runner ids: the placed instance's runners exist in State by now.)
    let mut gap = placed["instance"].clone();
    gap["id"] = Value::String("6f1d5a4e-0000-4000-8000-000000000001".into());
    gap["deployment"] = Value::Null;
    let mut shards = serde_json::Map::new();
    let mut node_runner = serde_json::Map::new();
    for (i, (node, runner)) in placed["instance"]["assignments"]["node_runner"]
        .as_object()
        .unwrap()
        .iter()
        .enumerate()
    {
        let fresh = format!("6f1d5a4e-0000-4000-8000-00000000010{i}");
        let mut shard = placed["instance"]["assignments"]["shards"][runner.as_str().unwrap()].clone();
        if shard["Pipeline"]["start_layer"] == 0 {
            shard["Pipeline"]["start_layer"] = 1.into();
        }
        shards.insert(fresh.clone(), shard);
        node_runner.insert(node.clone(), Value::String(fresh));
    }
    gap["assignments"]["shards"] = Value::Object(shards);
    gap["assignments"]["node_runner"] = Value::Object(node_runner);
    let (code, body) = post("/instance", serde_json::json!({ "instance": gap }));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("contiguous"), "{body}");

    // Delete: the instance and its deployment are gone everywhere.
    let (code, body) = http(api, "DELETE", &format!("/instance/{instance_id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _) = http(api, "DELETE", &format!("/instance/{instance_id}"), None).unwrap();
    assert_eq!(code, 404);
    for node in &nodes {
        wait_for(Duration::from_secs(5), "the instance gone everywhere", || {
            let state = node.state()?;
            (state["instances"].as_object()?.is_empty() && state["deployments"].as_object()?.is_empty()).then_some(())
        });
    }

    // Place on two nodes, then SIGKILL one of them: the deployment is re-placed on the survivors by itself.
    let (code, body) = post(
        "/place_instance",
        serde_json::json!({"model_id": "smollm2-135m", "min_nodes": 2}),
    );
    assert_eq!(code, 201, "{body}");
    let placed = json(&body);
    let deployment_id = placed["deployment_id"].as_str().unwrap().to_owned();
    let holders: Vec<String> = placed["instance"]["assignments"]["node_runner"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(holders.len(), 2);
    let victim = nodes
        .iter()
        .position(|n| n.status().unwrap()["node"].as_str().unwrap() == holders[0])
        .unwrap();
    let victim_role = nodes[victim].status().unwrap()["role"].clone();
    let victim_runners = wait_for(Duration::from_secs(30), "the victim's runner", || {
        let pids = runner_children(nodes[victim].child.as_ref()?.id());
        (!pids.is_empty()).then_some(pids)
    });
    // A new master times nodes out only after 2 s in office (§8); measure the steady state.
    std::thread::sleep(Duration::from_millis(2_200).saturating_sub(agreed.elapsed()));
    let killed = Instant::now();
    nodes[victim].kill9();
    let survivor = &nodes[(victim + 1) % 3];
    let replaced = wait_for(Duration::from_secs(10), "the deployment re-placed", || {
        let state = survivor.state()?;
        let deployment = &state["deployments"][&deployment_id];
        let instance = &state["instances"][deployment["instance"].as_str()?];
        let on = instance["assignments"]["node_runner"].as_object()?;
        (!on.contains_key(&holders[0])).then(|| on.keys().cloned().collect::<Vec<_>>())
    });
    eprintln!(
        "re-placed on {replaced:?} {:?} after SIGKILL of the {victim_role}",
        killed.elapsed()
    );
    assert_eq!(replaced.len(), 2, "two survivors hold it");
    // The dead node's runner did not outlive it (PR_SET_PDEATHSIG, and EOF of its socket).
    wait_for(Duration::from_secs(2), "the dead node's runner gone", || {
        victim_runners.iter().all(|pid| !process_alive(*pid)).then_some(())
    });
    // The survivors' workers start, load and wire the new instance's runners with no user action.
    wait_for(Duration::from_secs(60), "the re-placed runners Ready", || {
        let statuses = runner_statuses(&survivor.state()?);
        (statuses.len() == 2 && statuses.iter().all(|(node, s)| s == "Ready" && replaced.contains(node))).then_some(())
    });
    eprintln!("re-placed runners Ready {:?} after SIGKILL", killed.elapsed());
}

/// `shoal run --model`: the model is placed once the node is up, and a restart (or a second node with the same
/// flag) finds the deployment in State and adds none.
#[test]
fn run_with_model_places_it_once() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 2);
    let models = common::model_path().parent().unwrap().to_path_buf();
    for node in &mut nodes {
        node.extra = vec![
            "--model".into(),
            "smollm2-135m".into(),
            "--models-dir".into(),
            models.display().to_string(),
        ];
    }
    nodes[0].start();
    let deployed = |node: &Node| -> Option<(usize, String)> {
        let state = node.state()?;
        let deployments = state["deployments"].as_object()?;
        let (_, deployment) = deployments.iter().next()?;
        assert_eq!(deployment["model_id"], "HuggingFaceTB/SmolLM2-135M-Instruct");
        let instance = deployment["instance"].as_str()?.to_owned();
        Some((deployments.len(), instance))
    };
    let (count, _) = wait_for(Duration::from_secs(10), "the model placed", || deployed(&nodes[0]));
    assert_eq!(count, 1);
    assert!(nodes[0].logged("model placed"), "{}", nodes[0].log_text());

    nodes[1].start();
    wait_for(Duration::from_secs(10), "the second node's notice", || {
        nodes[1].logged("already deployed").then_some(())
    });
    nodes[0].kill9();
    nodes[0].start();
    wait_for(Duration::from_secs(10), "the restarted node's notice", || {
        nodes[0].logged("already deployed").then_some(())
    });
    let (count, _) = wait_for(Duration::from_secs(10), "State", || deployed(&nodes[1]));
    // (Its instance may have moved to node 1 if node 0 was timed out while it restarted; one deployment either way.)
    assert_eq!(count, 1, "one deployment for the model, whoever asked");
}

/// The worker end to end (§10.1–§10.2) on three real nodes: a model placed over all three gets one runner process
/// per node, loaded with its layer range and wired into a ring until every runner is Ready in State; a SIGKILLed
/// runner is reported Failed, respawned and the ring is Ready again; deleting the instance stops every runner.
#[test]
fn runners_follow_state_from_placement_to_ready_through_a_crash_to_deletion() {
    let _serial = serial();
    let models = common::model_path().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 3);
    for node in &mut nodes {
        node.extra = vec![
            "--models-dir".into(),
            models.display().to_string(),
            "--max-seqs".into(),
            "2".into(),
        ];
        node.start();
    }
    {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all));
        wait_for(Duration::from_secs(10), "every fact", || same_state(&all, 3));
    }
    let api = nodes[0].api;
    let placed_at = Instant::now();
    let (code, body) = http(
        api,
        "POST",
        "/place_instance",
        Some(&serde_json::json!({"model_id": "smollm2-135m", "min_nodes": 3})),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let instance_id = serde_json::from_str::<Value>(&body).unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let all_ready = |node: &Node| -> Option<()> {
        let statuses = runner_statuses(&node.state()?);
        (statuses.len() == 3 && statuses.iter().all(|(_, s)| s == "Ready")).then_some(())
    };
    wait_for(Duration::from_secs(60), "three Ready runners", || all_ready(&nodes[1]));
    eprintln!("place_instance → 3 runners Ready: {:?}", placed_at.elapsed());
    let pids: Vec<u32> = nodes.iter().map(|n| n.child.as_ref().unwrap().id()).collect();
    for pid in &pids {
        assert_eq!(runner_children(*pid).len(), 1, "one runner process per node");
    }

    // SIGKILL one runner: it is reported Failed, respawned, and the ring comes back.
    let victim = runner_children(pids[2])[0];
    let killed = Instant::now();
    std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(10), "the runner reported Failed", || {
        runner_statuses(&nodes[0].state()?)
            .iter()
            .any(|(_, s)| s == "Failed")
            .then_some(())
    });
    wait_for(Duration::from_secs(60), "the ring Ready again", || all_ready(&nodes[0]));
    eprintln!("runner SIGKILL → ring Ready again: {:?}", killed.elapsed());
    assert!(!runner_children(pids[2]).contains(&victim));
    assert_eq!(runner_children(pids[2]).len(), 1, "respawned");
    // The killed runner's failure is counted (its ring neighbours may count one too: a broken edge fails them).
    let state = nodes[0].state().unwrap();
    assert!(
        !state["instances"][&instance_id]["runner_failures"]
            .as_object()
            .unwrap()
            .is_empty()
    );

    // Delete: no runner left in State or as a process.
    let (code, body) = http(api, "DELETE", &format!("/instance/{instance_id}"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    for (node, pid) in nodes.iter().zip(&pids) {
        wait_for(Duration::from_secs(10), "the runners gone", || {
            let state = node.state()?;
            (runner_statuses(&state).is_empty() && runner_children(*pid).is_empty()).then_some(())
        });
    }
}
