//! The official Python clients' scripts (`tests/<dialect>_client.py`) run against a real node: whether the client
//! is installed (CI installs pinned versions and must run them), and one bounded run with its output.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Node;

/// Whether `python3` can import `package`. Where it cannot, the test fails if `CI` is set (CI must run it) and
/// otherwise prints a notice and returns false, so the caller skips the client's checks.
pub fn client_available(package: &str) -> bool {
    let why = match Command::new("python3")
        .args(["-c", &format!("import {package}")])
        .output()
    {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned(),
        Err(e) => format!("cannot run python3: {e}"),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but the {package} Python client is missing (.ci/run installs it): {why}"
    );
    eprintln!("SKIPPED: the {package} Python client is not installed (pip install {package}): {why}");
    false
}

/// Runs `tests/<script>` with `arg` (the node's URL) for at most `timeout`; it must exit 0 and print
/// "all checks passed". A failure shows its output and the tail of the node's log.
pub fn run_client_script(script: &str, arg: &str, timeout: Duration, node: &Node) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script);
    let mut child = Command::new("python3")
        .arg(&path)
        .arg(arg)
        .env("PYTHONUNBUFFERED", "1")
        // Talk to the node directly, whatever proxy or Ollama host the environment names.
        .env("NO_PROXY", "127.0.0.1")
        .env("no_proxy", "127.0.0.1")
        .env_remove("OLLAMA_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let began = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if began.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    println!("{stdout}");
    if !stderr.is_empty() {
        eprintln!("{stderr}");
    }
    eprintln!("{script} ran for {:?}", began.elapsed());
    let node_log = || {
        let log = node.log_text();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    let status = status.unwrap_or_else(|| {
        panic!(
            "{script} did not finish within {timeout:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
             --- node log (tail)\n{}",
            node_log()
        )
    });
    assert!(
        status.success(),
        "{script} failed ({status})\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- node log (tail)\n{}",
        node_log()
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
