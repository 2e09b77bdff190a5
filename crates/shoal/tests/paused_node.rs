//! A node stopped as a whole (SIGSTOP here; a paused VM or a sleeping laptop look the same to it) is lost by the
//! cluster like a hung host, and when it continues it rejoins as a follower instead of aborting (issue 13, item 2).
//! Real `shoal run` processes on loopback with the real model, like `cluster.rs` and `generation.rs`.
#![allow(clippy::unwrap_used)]

mod common;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use common::wait_for;
use serde_json::{Value, json};
use support::*;

/// A prompt the test model answers until `max_tokens` (greedy; measured 1,000 tokens of 1,000), so a stream's length
/// is the test's choice and a generation is still running when the test interferes.
const ENDLESS_PROMPT: &str = "Write the numbers from 1 to 1000, separated by commas.";
/// How long a node stays stopped: longer than the watchdog's stall limit (5 s), which used to abort it on SIGCONT,
/// and than the zenoh lease (3 s), so the cluster loses it.
const STOP_FOR: Duration = Duration::from_secs(8);
/// How long a continued node must stay alive.
const ALIVE_FOR: Duration = Duration::from_secs(10);
/// A stage node stopped: the client's error and `[DONE]` come within this (measured 3.3–3.5 s: the lease).
const STAGE_LOSS_LIMIT: Duration = Duration::from_secs(5);
/// How long the stream of the master test should last at the measured speed: past the new master's election (≈ 3 s
/// after the stop) with room to spare, and well before the test ends.
const STREAM_FOR: Duration = Duration::from_secs(12);
/// The line the watchdog logs when it aborts a stalled node.
const ABORT_LINE: &str = "the main runtime made no progress";
/// The line it logs when it sees that the whole process was stopped.
const PAUSE_LINE: &str = "this process was stopped or suspended";

fn signal(node: &Node, name: &str) {
    let pid = node.child.as_ref().unwrap().id();
    let ok = Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {name} {pid}");
}

fn id_of(node: &Node) -> String {
    node.status().unwrap()["node"].as_str().unwrap().to_owned()
}

fn chat_body(prompt: &str, max_tokens: u64, stream: bool) -> Value {
    json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Waits until State holds `count` runners, all Ready, none on `not_on`; returns their nodes.
fn runners_ready(node: &Node, count: usize, not_on: &[String], within: Duration) -> Vec<String> {
    wait_for(within, "every runner Ready", || {
        let statuses = runner_statuses(&node.state()?);
        let ok = statuses.len() == count && statuses.iter().all(|(n, s)| s == "Ready" && !not_on.contains(n));
        ok.then(|| statuses.into_iter().map(|(n, _)| n).collect())
    })
}

/// Decode speed in tokens per second, from a short non-streaming answer (its time includes the prefill, so this
/// errs low and the stream sized from it lasts at least as long as planned).
fn tokens_per_second(node: &Node) -> f64 {
    let started = Instant::now();
    let (code, body) = node
        .http(
            "POST",
            "/v1/chat/completions",
            Some(&chat_body(ENDLESS_PROMPT, 48, false)),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let tokens = json_of(&body)["usage"]["completion_tokens"].as_f64().unwrap();
    tokens / started.elapsed().as_secs_f64()
}

/// The rest of a stream, read on its own thread: when each content delta came, the finish reason, the error, and
/// whether `[DONE]` came.
struct Ending {
    deltas: Vec<Instant>,
    finish: Option<String>,
    error: Option<Value>,
    done: bool,
}

fn read_in_background(mut sse: SseClient) -> std::thread::JoinHandle<Ending> {
    std::thread::spawn(move || {
        let mut ending = Ending {
            deltas: Vec::new(),
            finish: None,
            error: None,
            done: false,
        };
        while let Some(data) = sse.next_data() {
            if data == "[DONE]" {
                ending.done = true;
                continue;
            }
            let event = json_of(&data);
            if event.get("error").is_some() {
                ending.error = Some(event["error"].clone());
            }
            let choice = &event["choices"][0];
            if choice["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
                ending.deltas.push(Instant::now());
            }
            if let Some(reason) = choice["finish_reason"].as_str() {
                ending.finish = Some(reason.to_owned());
            }
        }
        ending
    })
}

/// After SIGCONT at `continued`: the node rejoins as a follower of `session` at the others' State position, and is
/// still alive and following [`ALIVE_FOR`] later, without the watchdog's abort.
fn rejoins_and_stays(nodes: &mut [Node], stopped: usize, session: &Value, continued: Instant) {
    let pid = nodes[stopped].child.as_ref().unwrap().id();
    let (now_session, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(15), "the continued node following", || {
            assert!(
                process_alive(pid),
                "the continued node exited:\n{}",
                all[stopped].log_text()
            );
            agreement(&all)
        })
    };
    eprintln!(
        "SIGCONT → the continued node follows at the others' position: {:?}",
        continued.elapsed()
    );
    assert_eq!(&now_session, session, "the continued node did not take over");
    assert_ne!(master, stopped);
    std::thread::sleep(ALIVE_FOR.saturating_sub(continued.elapsed()));
    assert!(
        nodes[stopped].alive(),
        "the continued node exited:\n{}",
        nodes[stopped].log_text()
    );
    assert!(!nodes[stopped].logged(ABORT_LINE), "{}", nodes[stopped].log_text());
    let log = nodes[stopped].log_text();
    let pause = log.lines().find(|l| l.contains(PAUSE_LINE));
    eprintln!("the continued node logged: {}", pause.unwrap_or("nothing"));
    assert!(pause.is_some(), "the watchdog did not notice the stop");
    let all: Vec<&Node> = nodes.iter().collect();
    let (later_session, _) = wait_for(Duration::from_secs(5), "agreement after 10 s", || agreement(&all));
    assert_eq!(&later_session, session);
    assert_eq!(nodes[stopped].status().unwrap()["role"], "follower");
    wait_for(
        Duration::from_secs(10),
        "the continued node's facts back in State",
        || same_state(&all, nodes.len()),
    );
}

#[test]
fn a_stopped_master_is_replaced_streams_elsewhere_end_normally_and_it_rejoins_as_a_follower() {
    let _serial = serial();
    let (_root, mut nodes) = start(3);
    let (old_session, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all))
    };
    let others: Vec<usize> = (0..3).filter(|&i| i != master).collect();
    let holders: Vec<String> = others.iter().map(|&i| id_of(&nodes[i])).collect();
    let master_id = id_of(&nodes[master]);

    // The model's stages are pinned on the two other nodes, and the client talks to one of them.
    let client = &nodes[others[0]];
    let (code, body) = client
        .http(
            "POST",
            "/place_instance",
            Some(&json!({"model_id": "smollm2-135m", "min_nodes": 2, "nodes": holders})),
        )
        .unwrap();
    assert_eq!(code, 201, "{body}");
    let on = runners_ready(client, 2, std::slice::from_ref(&master_id), Duration::from_secs(60));
    assert!(on.iter().all(|n| holders.contains(n)), "{on:?}");
    let rate = tokens_per_second(client);
    let max_tokens = (rate * STREAM_FOR.as_secs_f64()).clamp(64.0, 2_000.0) as u64;
    eprintln!("decode ≈ {rate:.0} tokens/s; the stream asks for {max_tokens}");

    let mut sse = SseClient::open(client.api, &chat_body(ENDLESS_PROMPT, max_tokens, true));
    assert_eq!(sse.status, 200);
    sse.read_deltas(3);
    let reader = read_in_background(sse);

    let stopped = Instant::now();
    signal(&nodes[master], "-STOP");
    let (new_session, new_master) = {
        let survivors: Vec<&Node> = others.iter().map(|&i| &nodes[i]).collect();
        wait_for(Duration::from_secs(10), "a new master", || {
            agreement(&survivors).filter(|(s, _)| *s != old_session)
        })
    };
    let elected = Instant::now();
    eprintln!("master SIGSTOP → a new master: {:?}", elected - stopped);
    assert!(new_session["term"].as_u64() > old_session["term"].as_u64());
    assert_ne!(others[new_master], master);

    std::thread::sleep(STOP_FOR.saturating_sub(stopped.elapsed()));
    signal(&nodes[master], "-CONT");
    let continued = Instant::now();

    // The stream, whose stages never were on the stopped master, went on through the change to its normal end.
    let ending = reader.join().unwrap();
    assert!(ending.error.is_none(), "{:?}", ending.error);
    assert!(ending.done, "no [DONE]");
    let finish = ending.finish.unwrap_or_default();
    assert_eq!(finish, "length");
    let last = *ending.deltas.last().unwrap();
    let longest_gap = ending.deltas.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "the stream ended normally ({finish}) {:?} after the stop, {} deltas after it, longest gap {longest_gap:?}",
        last - stopped,
        ending.deltas.iter().filter(|&&t| t > stopped).count()
    );
    assert!(last > elected, "the stream ended before the new master was elected");

    rejoins_and_stays(&mut nodes, master, &new_session, continued);
}

#[test]
fn a_stopped_stage_node_fails_its_stream_within_5_s_is_replaced_and_rejoins_as_a_follower() {
    let _serial = serial();
    let (_root, mut nodes) = start(3);
    let agreed = Instant::now();
    let (session, master) = {
        let all: Vec<&Node> = nodes.iter().collect();
        wait_for(Duration::from_secs(10), "agreement", || agreement(&all))
    };
    let instance = place(&nodes, 2);
    let holders: Vec<String> = instance["assignments"]["node_runner"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    // The victim holds a stage and is not the master (of two holders among three nodes, one is not); the client
    // talks to a node that stays.
    let victim = (0..3)
        .find(|&i| i != master && holders.contains(&id_of(&nodes[i])))
        .unwrap();
    let victim_id = id_of(&nodes[victim]);
    let client = (victim + 1) % 3;
    // A new master times nodes out only after 2 s in office (§8).
    std::thread::sleep(Duration::from_millis(2_200).saturating_sub(agreed.elapsed()));

    let mut sse = SseClient::open(nodes[client].api, &chat_body(ENDLESS_PROMPT, 2_000, true));
    assert_eq!(sse.status, 200);
    sse.read_deltas(3);
    let stopped = Instant::now();
    signal(&nodes[victim], "-STOP");
    let (_, _, error, done) = sse.finish();
    let failed_after = stopped.elapsed();
    let error = error.expect("an error object before the end");
    assert!(done, "the error is followed by [DONE]");
    eprintln!(
        "stage node SIGSTOP → client error {} + [DONE]: {failed_after:?}",
        error["code"]
    );
    assert!(failed_after < STAGE_LOSS_LIMIT, "{failed_after:?}");

    // Re-placed on the survivors; a new request is answered.
    runners_ready(
        &nodes[client],
        2,
        std::slice::from_ref(&victim_id),
        Duration::from_secs(60),
    );
    eprintln!(
        "stage node SIGSTOP → re-placed on the survivors, Ready: {:?}",
        stopped.elapsed()
    );
    let (code, body) = nodes[client]
        .http("POST", "/v1/chat/completions", Some(&chat_body("Hi", 8, false)))
        .unwrap();
    assert_eq!(code, 200, "{body}");

    std::thread::sleep(STOP_FOR.saturating_sub(stopped.elapsed()));
    signal(&nodes[victim], "-CONT");
    let continued = Instant::now();
    rejoins_and_stays(&mut nodes, victim, &session, continued);
    // Its old runner is not in State any more; the re-placed deployment keeps serving.
    runners_ready(
        &nodes[client],
        2,
        std::slice::from_ref(&victim_id),
        Duration::from_secs(10),
    );
}
