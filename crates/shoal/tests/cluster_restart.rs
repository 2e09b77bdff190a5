//! A whole-cluster restart from stale data-plane addresses (issue 13 item 5): every node SIGKILLed, two of them back
//! first, the third later. Until the third reports its new listener, State names the one from before the crash, and
//! the first two runners warm up against it; they must follow it to the new one, so the model serves again within
//! [`SERVE_WITHIN`] of the last node's start (it took 35 s when a dial held the runner for its whole 30 s).
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;
mod support;

use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::json;
use support::*;

/// The bound: back to serving this soon after the last node is up.
const SERVE_WITHIN: Duration = Duration::from_secs(10);
/// How long the first two nodes run before the third starts, one restart each: at once; while the first two load
/// and warm up against the third's old record; and about when the new master's liveness grace ends.
const STAGGERS: [Duration; 3] = [Duration::ZERO, Duration::from_millis(800), Duration::from_millis(1_600)];
const PROBE_EVERY: Duration = Duration::from_millis(200);

#[test]
fn after_a_whole_cluster_restart_runners_dial_where_their_siblings_listen_now() {
    let _serial = serial();
    let (_root, mut nodes) = start(3);
    place(&nodes, 3);
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
    });
    for stagger in STAGGERS {
        for node in &mut nodes {
            node.kill9();
        }
        nodes[0].start();
        nodes[1].start();
        std::thread::sleep(stagger);
        let last_up = Instant::now();
        nodes[2].start();

        let served_after = loop {
            let last = nodes[0].http("POST", "/v1/chat/completions", Some(&body));
            if let Some((200, _)) = last {
                break last_up.elapsed();
            }
            if last_up.elapsed() >= SERVE_WITHIN * 3 {
                let states: Vec<_> = nodes
                    .iter()
                    .map(|n| {
                        n.state()
                            .map(|s| json!({"deployments": s["deployments"], "runners": s["runners"]}))
                    })
                    .collect();
                panic!(
                    "stagger {stagger:?}: not served {:?} after the last node started; last answer {last:?}\n\
                     states {states:?}\nlogs:\n{}",
                    SERVE_WITHIN * 3,
                    nodes.iter().map(|n| n.log_text()).collect::<Vec<_>>().join("\n----\n")
                );
            }
            std::thread::sleep(PROBE_EVERY);
        };
        let redials: usize = nodes.iter().map(|n| n.log_text().matches("redialling").count()).sum();
        eprintln!(
            "stagger {stagger:?}: served {served_after:?} after the last node started ({redials} redials so far)"
        );
        assert!(
            served_after <= SERVE_WITHIN,
            "stagger {stagger:?}: served only {served_after:?} after the last node started"
        );
    }
}

/// Followers' replica logs survive a crash: every node SIGKILLed and only the two followers back, the old master
/// still down. They elect a master from their own logs, which must hold the deployment placed before the crash (with
/// lazy follower commits they held only their last checkpoint, from before the placement, and the old master's log
/// was later replaced by a snapshot of that older State: the deployment was gone for good). Once the old master is
/// back, the deployment is placed again and serves.
#[test]
fn a_whole_cluster_crash_keeps_what_the_followers_applied() {
    let _serial = serial();
    let (_root, mut nodes) = start(3);
    let placed = place(&nodes, 3);
    let deployment = placed["deployment"]
        .as_str()
        .expect("a placed instance names its deployment")
        .to_owned();
    let (_, master) = wait_for(Duration::from_secs(10), "agreement", || {
        agreement(&nodes.iter().collect::<Vec<_>>())
    });
    for node in &mut nodes {
        node.kill9();
    }
    let followers: Vec<usize> = (0..nodes.len()).filter(|&i| i != master).collect();
    for &i in &followers {
        nodes[i].start();
    }
    let (_, new_master) = wait_for(Duration::from_secs(15), "the followers agree", || {
        agreement(&followers.iter().map(|&i| &nodes[i]).collect::<Vec<_>>())
    });
    let state = nodes[followers[new_master]].state().unwrap();
    assert!(
        state["deployments"].get(&deployment).is_some(),
        "the deployment placed before the crash is gone from the followers' State: {}",
        state["deployments"]
    );

    nodes[master].start();
    let body = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 4,
    });
    wait_for(SERVE_WITHIN * 3, "served again with the old master back", || {
        matches!(
            nodes[followers[0]].http("POST", "/v1/chat/completions", Some(&body)),
            Some((200, _))
        )
        .then_some(())
    });
}
