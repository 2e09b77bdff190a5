//! A tiny WebDriver client for the dashboard test: headless Chromium through chromedriver, over a raw HTTP/1.1
//! request per command (std only). fantoccini would bring a hyper client, the `webdriver` crate, cookie/time/url and
//! their trees for the dozen commands this needs.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::free_port;

/// A WebDriver command may take this long (a screenshot, a navigation).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One request to chromedriver. It keeps connections open whatever `Connection` says, so the body is read by its
/// `Content-Length` rather than to the end of the stream.
fn http_at(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(COMMAND_TIMEOUT)).ok()?;
    let body = body.unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    let code = status.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().ok()?;
        }
    }
    let mut bytes = vec![0; length];
    reader.read_exact(&mut bytes).ok()?;
    Some((code, String::from_utf8_lossy(&bytes).into_owned()))
}

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser is installed; with `CI` set a missing one fails the test, else it is skipped loudly.
pub fn available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {CHROMIUM} or {CHROMEDRIVER} is missing: install Debian's `chromium chromium-driver` \
             (.ci/run does)"
        );
        eprintln!(
            "\n\n*** SKIPPED: the dashboard browser test needs {CHROMIUM} and {CHROMEDRIVER} \
             (apt-get install chromium chromium-driver) ***\n"
        );
    }
    present
}

/// A chromedriver process and one browser session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_at(addr, "GET", "/status", None).is_none_or(|(code, _)| code != 200) {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
            "--window-size=1440,1000".to_owned(),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.raw("POST", "/session", Some(&capabilities));
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (code, text) = http_at(self.addr, method, path, body.as_deref())
            .unwrap_or_else(|| panic!("chromedriver did not answer {method} {path}"));
        let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(code, 200, "{method} {path}: {value}");
        value["value"].clone()
    }

    /// A command that may fail (a stale element): `Err(value)` carries the error.
    fn try_cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, Value> {
        let body = body.map(|b| b.to_string());
        let (code, text) = http_at(self.addr, method, path, body.as_deref()).ok_or(Value::Null)?;
        let value: Value = serde_json::from_str(&text).map_err(|_| Value::String(text))?;
        if code == 200 {
            Ok(value["value"].clone())
        } else {
            Err(value["value"].clone())
        }
    }

    fn cmd(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        self.raw(method, &format!("/session/{}{what}", self.session), body)
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page and returns its value.
    pub fn js(&self, script: &str, args: &[Value]) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// Runs `script` asynchronously: it calls `done(value)`, the last of its `arguments`.
    pub fn js_async(&self, script: &str) -> Value {
        let script = format!("const done = arguments[arguments.length - 1]; {script}");
        self.cmd("POST", "/execute/async", Some(&json!({ "script": script, "args": [] })))
    }

    /// Polls `script` until it returns something truthy; returns that.
    pub fn wait_js(&self, within: Duration, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.js(script, &[]);
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value.as_u64() != Some(0)
                && value.as_str() != Some("");
            if truthy {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `css` matches (found again if the page re-rendered it between find and click).
    pub fn click(&self, css: &str) {
        if let Err(why) = self.try_click(css, Duration::from_secs(10)) {
            panic!("could not click {css}: {why}");
        }
    }

    /// Clicks the element `css` matches, trying for `within`; the last refusal when it never could.
    pub fn try_click(&self, css: &str, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let found = self.try_cmd(
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({"using": "css selector", "value": css})),
            );
            let why = match found {
                Ok(element) => {
                    let id = element[ELEMENT].as_str().unwrap().to_owned();
                    let clicked = self.try_cmd(
                        "POST",
                        &format!("/session/{}/element/{id}/click", self.session),
                        Some(&json!({})),
                    );
                    match clicked {
                        Ok(_) => return Ok(()),
                        Err(e) => format!("{e:?}"),
                    }
                }
                Err(e) => format!("{e:?}"),
            };
            if Instant::now() >= deadline {
                return Err(why);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `text` into the element `css` matches.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        let id = element[ELEMENT].as_str().unwrap().to_owned();
        self.cmd("POST", &format!("/element/{id}/value"), Some(&json!({ "text": text })));
    }

    /// The browser's console and network errors since the last call (chromedriver's `browser` log).
    pub fn errors(&self) -> Vec<String> {
        let log = self.cmd("POST", "/se/log", Some(&json!({"type": "browser"})));
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Resizes the browser window (a tall one takes a whole-page screenshot).
    pub fn resize(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        );
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.cmd("GET", "/screenshot", None);
        let bytes = base64_decode(png.as_str().unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_cmd("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the screenshots go.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let Some(v) = value(c) else { continue };
        acc = ((acc << 6) | v) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[test]
fn base64_decodes() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
}
