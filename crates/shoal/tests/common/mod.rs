//! Shared by this crate's tests and its engine bench (`#[path]`-included there).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The test model: `SHOAL_TEST_MODEL`, else what `shared/scripts/fetch-test-model.sh` (found beside the repository)
/// prints; it downloads once and then answers from its cache.
pub fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("SHOAL_TEST_MODEL") {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("shared/scripts/fetch-test-model.sh"))
        .find(|p| p.is_file())
        .expect("set SHOAL_TEST_MODEL or put shared/ beside the repository");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap())
}

/// Polls `probe` every 20 ms until it gives a value; panics naming `what` after `within`.
pub fn wait_for<T>(within: std::time::Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
