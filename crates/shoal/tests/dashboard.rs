//! The dashboard in a real browser (issue 16): headless Chromium through chromedriver against a real 3-node cluster
//! on loopback with the test model. The page loads without console errors, shows the topology, places the model
//! over 2 nodes from its buttons, streams a chat reply token by token, marks a SIGKILLed node lost and shows the
//! instance re-placed, deletes the instance from its button; screenshots (light and dark) go to
//! `$CARGO_TARGET_TMPDIR/dashboard/`. A second test: with `--api-key` the page asks for the key, then shows the
//! cluster.
#![allow(clippy::unwrap_used)]

mod common;
mod support;
mod webdriver;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;
use webdriver::{Browser, screenshot_dir};

const MODEL: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Console errors the page is allowed: none, but for the 401 that makes it ask for the key.
fn assert_no_errors(browser: &Browser, allowed: &[&str]) {
    let errors: Vec<String> = browser
        .errors()
        .into_iter()
        .filter(|e| !allowed.iter().any(|a| e.contains(a)))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

/// How many nodes the graph shows as live, and as lost.
fn graph(browser: &Browser) -> (u64, u64) {
    let counts = browser.js(
        "return [document.querySelectorAll('#topology [data-live=live]').length,
                 document.querySelectorAll('#topology [data-live=lost]').length]",
        &[],
    );
    (counts[0].as_u64().unwrap(), counts[1].as_u64().unwrap())
}

/// The node id of each node (index → id).
fn ids(nodes: &[Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.status().unwrap()["node"].as_str().unwrap().to_owned())
        .collect()
}

/// The master the page's header names (its short id is the last word).
fn header_master(browser: &Browser) -> String {
    let text = browser.js("return document.getElementById('sum-master').textContent", &[]);
    text.as_str().unwrap().rsplit(' ').next().unwrap().to_owned()
}

/// Both screenshots of a theme: the laptop viewport and the whole page.
fn screenshots(browser: &Browser, name: &str) {
    browser.js("document.activeElement?.blur(); window.scrollTo(0, 0);", &[]);
    browser.screenshot(&screenshot_dir().join(format!("{name}.png")));
    browser.resize(1440, 2300);
    browser.screenshot(&screenshot_dir().join(format!("{name}-full.png")));
    browser.resize(1440, 1000);
}

#[test]
fn the_dashboard_follows_a_live_cluster() {
    let _serial = serial();
    if !webdriver::available() {
        return;
    }
    let started = Instant::now();
    let (_root, mut nodes) = start(3);
    let ids = ids(&nodes);
    let (_, master) = agreement(&nodes.iter().collect::<Vec<_>>()).unwrap();
    // The page is served by a follower: it must follow the cluster through a master change.
    let page = (0..3).find(|&i| i != master).unwrap();
    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{}/", nodes[page].api));

    // The topology shows the three nodes, one master, from the live stream.
    browser.wait_js(
        Duration::from_secs(15),
        "three live nodes on the graph",
        "return document.querySelectorAll('#topology [data-live=live]').length === 3
            && document.getElementById('conn').dataset.conn === 'live'",
    );
    assert_eq!(
        browser.js(
            "return document.querySelectorAll('#topology [data-role=master]').length",
            &[]
        ),
        1
    );
    assert_eq!(
        browser.js("return document.getElementById('sum-nodes').textContent", &[]),
        "3"
    );
    assert_eq!(header_master(&browser), ids[master][..8]);
    browser.wait_js(
        Duration::from_secs(10),
        "the health numbers",
        "return document.querySelector('#health [data-tile=open]') !== null",
    );
    assert_no_errors(&browser, &[]);

    // Place the model over 2 nodes with the preview's button.
    let place = format!("#models [data-place='2'][data-model='{MODEL}']");
    browser.wait_js(
        Duration::from_secs(10),
        "the 2-node preview",
        &format!("return document.querySelector(\"{place}\") !== null"),
    );
    browser.click(&place);
    browser.wait_js(
        Duration::from_secs(60),
        "an instance with 2 ready ranks",
        "const i = document.querySelector('#instances [data-instance][data-serving=true]');
         return i && i.querySelectorAll('[data-runner-state=Ready],[data-runner-state=Running]').length === 2
            && i.dataset.instance",
    );
    let state = nodes[page].state().unwrap();
    let instances = state["instances"].as_object().unwrap();
    assert_eq!(instances.len(), 1, "one instance in State");
    let (first_id, first) = instances.iter().next().unwrap();
    let holders: Vec<String> = first["assignments"]["node_runner"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(holders.len(), 2);
    browser.wait_js(
        Duration::from_secs(5),
        "layer chips on the graph",
        "return document.querySelectorAll('#topology .layer-chip').length === 2",
    );
    // The placement's events in the log (the page's node joined from a snapshot: its log starts after it).
    browser.wait_js(
        Duration::from_secs(5),
        "the placement in the event log",
        "return [...document.querySelectorAll('#events [data-event-idx]')]
            .some((e) => e.textContent.includes('InstanceCreated'))",
    );

    // Chat: the reply arrives token by token (several distinct DOM updates before the end).
    browser.wait_js(
        Duration::from_secs(5),
        "the model in the chat's list",
        &format!("return document.getElementById('chat-model').value === '{MODEL}'"),
    );
    browser.js(
        "window.__updates = 0;
         new MutationObserver(() => { window.__updates += 1; })
           .observe(document.getElementById('chat-log'), { childList: true, subtree: true, characterData: true });",
        &[],
    );
    browser.type_into("#chat-input", "Write three short sentences about the sea.");
    browser.click("#chat-send");
    let tokens = browser.wait_js(
        Duration::from_secs(60),
        "the reply to finish",
        "const m = document.querySelector('#chat-log .msg.assistant[data-done]'); return m && m.dataset.tokens",
    );
    let updates = browser.js("return window.__updates", &[]).as_u64().unwrap();
    let reply = browser.js(
        "return document.querySelector('#chat-log .msg.assistant .content').textContent",
        &[],
    );
    let meta = browser.js(
        "return document.querySelector('#chat-log .msg.assistant .meta').textContent",
        &[],
    );
    eprintln!("chat: {tokens} tokens in {updates} DOM updates; {meta}");
    assert!(!reply.as_str().unwrap().trim().is_empty(), "an empty reply");
    assert!(updates >= 4, "{updates} DOM updates: the reply did not stream");
    assert!(meta.as_str().unwrap().contains("TTFT"), "{meta}");
    assert!(meta.as_str().unwrap().contains("tok/s"), "{meta}");
    browser.wait_js(
        Duration::from_secs(5),
        "the instance's measured tok/s",
        "return document.querySelector('#instances [data-instance] [data-tps]')?.dataset.tps !== ''",
    );
    screenshots(&browser, "light");

    // Dark, through the toggle.
    browser.click("#theme-toggle");
    assert_eq!(browser.js("return document.documentElement.dataset.theme", &[]), "dark");
    screenshots(&browser, "dark");
    assert_no_errors(&browser, &[]);

    // Stop: the reply ends where it was, marked stopped, and the node's stream closes (cancelled). The model samples,
    // so a reply may end on its own before the click: then the Stop button is gone, and the test asks again.
    let mut second = String::new();
    for attempt in 1..=3 {
        browser.type_into("#chat-input", "Count from one to two hundred, one number per line.");
        browser.click("#chat-send");
        second = format!("const m = document.querySelectorAll('#chat-log .msg.assistant')[{attempt}];");
        browser.wait_js(
            Duration::from_secs(30),
            "the reply started",
            &format!("{second} return m && m.querySelector('.content').textContent.length > 0"),
        );
        match browser.try_click("#chat-stop", Duration::from_secs(2)) {
            Ok(()) => break,
            Err(why) => {
                let ended = browser.js(&format!("{second} return Boolean(m && m.dataset.done)"), &[]);
                assert!(
                    attempt < 3 && ended == true,
                    "could not click #chat-stop ({why}); the reply ended: {ended}"
                );
                // Let the finished reply's stream close before the next request.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    let meta = browser.wait_js(
        Duration::from_secs(10),
        "the second reply stopped",
        &format!("{second} return m && m.dataset.done && m.querySelector('.meta').textContent"),
    );
    assert!(meta.as_str().unwrap().contains("stopped"), "{meta}");
    common::wait_for(Duration::from_secs(10), "the node's stream closed", || {
        let (_, metrics) = nodes[page].get("/metrics")?;
        metrics.lines().any(|l| l == "shoal_streams_open 0").then_some(())
    });
    browser.wait_js(
        Duration::from_secs(5),
        "the cancelled stream in the health panel",
        "return document.querySelector('#health .closes').textContent.includes('cancelled')",
    );
    assert_no_errors(&browser, &[]);

    // SIGKILL a node of the pipeline other than the page's: it shows lost, the instance comes back elsewhere.
    let victim = ids
        .iter()
        .position(|id| holders.contains(id) && *id != ids[page])
        .unwrap();
    nodes[victim].kill9();
    let killed = Instant::now();
    let lost = |i: usize| {
        format!(
            "return document.querySelector('#topology [data-node=\"{}\"][data-live=lost]') !== null",
            ids[i]
        )
    };
    browser.wait_js(Duration::from_secs(15), "the killed node marked lost", &lost(victim));
    eprintln!("lost shown {} ms after SIGKILL", killed.elapsed().as_millis());
    assert_eq!(graph(&browser), (2, 1));
    browser.wait_js(
        Duration::from_secs(60),
        "the instance re-placed and serving",
        &format!(
            "const i = document.querySelector('#instances [data-instance][data-serving=true]');
             return i && i.dataset.instance !== '{first_id}'
                && i.querySelectorAll('[data-runner-state=Ready],[data-runner-state=Running]').length === 2"
        ),
    );
    browser.screenshot(&screenshot_dir().join("after-loss.png"));

    // The node comes back: it shows live again.
    nodes[victim].start();
    let back = Instant::now();
    browser.wait_js(
        Duration::from_secs(20),
        "the restarted node live again",
        &format!(
            "return document.querySelector('#topology [data-node=\"{}\"][data-live=live]') !== null",
            ids[victim]
        ),
    );
    eprintln!("rejoin shown {} ms after restart", back.elapsed().as_millis());

    // A master change: the page, served by a follower, keeps its stream and names the new master.
    if victim != master {
        nodes[master].kill9();
        browser.wait_js(Duration::from_secs(15), "the old master marked lost", &lost(master));
    }
    browser.wait_js(
        Duration::from_secs(20),
        "a new master in the header",
        &format!(
            "const m = document.getElementById('sum-master').textContent;
             return !m.includes('{}') && m !== '—' && document.getElementById('conn').dataset.conn === 'live'
                && document.querySelectorAll('#topology [data-role=master]').length === 1",
            &ids[master][..8]
        ),
    );

    // Delete the instance from the UI: the button asks once more.
    let instance = browser.wait_js(
        Duration::from_secs(60),
        "an instance to delete",
        "return document.querySelector('#instances [data-instance]')?.dataset.instance",
    );
    let delete = format!("#instances [data-delete-instance='{}']", instance.as_str().unwrap());
    browser.click(&delete);
    browser.wait_js(
        Duration::from_secs(3),
        "the confirm button",
        &format!("return document.querySelector(\"{delete}\").textContent.includes('Confirm')"),
    );
    browser.click(&delete);
    browser.wait_js(
        Duration::from_secs(20),
        "no instance left",
        "return document.querySelectorAll('#instances [data-instance]').length === 0",
    );
    assert_eq!(nodes[page].state().unwrap()["instances"], json!({}));
    assert_no_errors(&browser, &[]);

    // The page's own node goes away: the page says it is reconnecting.
    nodes[page].kill9();
    browser.wait_js(
        Duration::from_secs(10),
        "the page reconnecting",
        "return document.getElementById('conn').dataset.conn === 'reconnecting'",
    );
    eprintln!("dashboard test: {} ms", started.elapsed().as_millis());
}

#[test]
fn the_dashboard_asks_for_the_api_key_once() {
    let _serial = serial();
    if !webdriver::available() {
        return;
    }
    const KEY: &str = "dash-key-0123456789";
    let root = tempfile::tempdir().unwrap();
    let mut nodes = cluster(root.path(), 1);
    nodes[0].extra = vec!["--api-key".into(), KEY.into()];
    nodes[0].headers = vec![("Authorization".into(), format!("Bearer {KEY}"))];
    nodes[0].start();
    common::wait_for(Duration::from_secs(15), "the node ready", || {
        nodes[0].status().filter(|s| s["ready"] == true)
    });
    // The page and its assets load without the key; data does not.
    let (code, head, _) = http_full(nodes[0].api, "GET", "/", &[("Accept", "text/html")], None).unwrap();
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert_eq!(http_get(nodes[0].api, "/dashboard/app.js").unwrap().0, 200);
    assert_eq!(http_get(nodes[0].api, "/state/stream").unwrap().0, 401);

    let browser = Browser::start();
    browser.goto(&format!("http://127.0.0.1:{}/", nodes[0].api));
    browser.wait_js(
        Duration::from_secs(10),
        "the key dialog",
        "return document.getElementById('key-dialog').open",
    );
    browser.type_into("#key-input", "wrong-key");
    browser.click("#key-submit");
    browser.wait_js(
        Duration::from_secs(10),
        "the dialog again, saying the key was refused",
        "return document.getElementById('key-dialog').open
            && document.getElementById('key-note').textContent.includes('refused')",
    );
    browser.js("document.getElementById('key-input').value = ''", &[]);
    browser.type_into("#key-input", KEY);
    browser.click("#key-submit");
    browser.wait_js(
        Duration::from_secs(15),
        "the cluster shown",
        "return !document.getElementById('key-dialog').open
            && document.querySelectorAll('#topology [data-live=live]').length === 1
            && document.querySelector('#models [data-model-row]') !== null",
    );
    assert_eq!(
        browser.js("return sessionStorage.getItem('shoal.apiKey')", &[]),
        Value::String(KEY.into())
    );

    // The chat's markdown renderer escapes before it interprets, and links only http(s).
    let rendered = browser.js_async(
        "import('/dashboard/markdown.js').then((m) => done([
            m.markdown('**b** *i* `<x>`'),
            m.markdown('<img src=x onerror=alert(1)>'),
            m.markdown('[a](javascript:alert(1)) [b](https://example.com/?q=1&r=2)'),
            m.markdown('```rust\\nfn main() {}\\n```\\n- one\\n- two'),
        ]))",
    );
    assert_eq!(
        rendered[0],
        "<p><strong>b</strong> <em>i</em> <code>&lt;x&gt;</code></p>"
    );
    assert_eq!(rendered[1], "<p>&lt;img src=x onerror=alert(1)&gt;</p>");
    let links = rendered[2].as_str().unwrap();
    assert!(!links.contains("href=\"javascript"), "{links}");
    assert!(links.contains("href=\"https://example.com/?q=1&amp;r=2\""), "{links}");
    assert_eq!(
        rendered[3],
        "<pre data-lang=\"rust\"><code>fn main() {}</code></pre><ul><li>one</li><li>two</li></ul>"
    );

    // Add a model by path (with the key the page holds), then delete it.
    let path = common::model_path();
    browser.type_into("#add-source", &path.display().to_string());
    browser.type_into("#add-id", "dash-smol");
    browser.click("#add-button");
    browser.wait_js(
        Duration::from_secs(20),
        "the added model in the catalog",
        "return document.querySelector('#models [data-model-row=\"dash-smol\"] [data-delete-model]') !== null",
    );
    assert!(nodes[0].state().unwrap()["model_cards"]["dash-smol"].is_object());
    browser.click("#models [data-delete-model='dash-smol']");
    browser.wait_js(
        Duration::from_secs(20),
        "the added model gone",
        "return document.querySelector('#models [data-model-row=\"dash-smol\"]') === null",
    );
    // Only the refusals that made it ask.
    assert_no_errors(&browser, &["401"]);
    drop(browser);

    // The live stream is bounded: past the cap a new one is a 429 with Retry-After.
    let auth = format!("Authorization: Bearer {KEY}");
    let mut open = Vec::new();
    let refused = (0..=MAX_LIVE_STREAMS).find_map(|_| {
        let (code, head, stream) = open_stream(nodes[0].api, &auth);
        open.push(stream);
        (code == 429).then_some(head)
    });
    let refused = refused.expect("no 429 past the cap");
    assert!(refused.to_ascii_lowercase().contains("retry-after"), "{refused}");
    assert!(open.len() <= MAX_LIVE_STREAMS + 1, "{} streams opened", open.len());
    drop(open);
    // Places come back once the node notices the clients went (its next frame, within a second).
    common::wait_for(Duration::from_secs(5), "a place again", || {
        (open_stream(nodes[0].api, &auth).0 == 200).then_some(())
    });

    // SIGTERM: an open stream says goodbye and ends.
    let (code, _, mut stream) = open_stream(nodes[0].api, &auth);
    assert_eq!(code, 200);
    let pid = nodes[0].child.as_ref().unwrap().id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped = Instant::now();
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut rest);
    assert!(rest.contains("event: bye"), "no goodbye before the end: {rest:.300}");
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "the stream outlived the node's stop"
    );
}

/// Dashboard streams a node serves at once (`shoal_api::dashboard::live::MAX_LIVE_STREAMS`).
const MAX_LIVE_STREAMS: usize = 64;

/// Opens `GET /state/stream`: the status, the response head, and the connection (still open for a 200).
fn open_stream(port: u16, auth: &str) -> (u16, String, std::net::TcpStream) {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        stream,
        "GET /state/stream HTTP/1.0\r\nHost: 127.0.0.1\r\n{auth}\r\n\r\n"
    )
    .unwrap();
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, head, stream)
}
