//! Shared helpers for the tests that run the real test model (SmolLM2-135M-Instruct Q4_1).
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use shoal_engine::Pool;

/// The kernels' worker threads, shared by every test of a binary (tests hold [`exclusive`] while running the model).
pub fn pool() -> Arc<Pool> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Arc::new(Pool::new(2))).clone()
}

/// Path of the test model (SmolLM2-135M-Instruct Q4_1): `SHOAL_TEST_MODEL`, else what
/// `shared/scripts/fetch-test-model.sh` prints.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("SHOAL_TEST_MODEL", "fetch-test-model.sh"))
        .clone()
}

/// Path of Gemma 3 270M (gemma3, SentencePiece, Q5_0/Q8_0/Q4_K/Q6_K): `SHOAL_TEST_GEMMA`, else what
/// `shared/scripts/fetch-gemma3-270m.sh` prints.
pub fn gemma_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| fetched("SHOAL_TEST_GEMMA", "fetch-gemma3-270m.sh"))
        .clone()
}

/// `$env` if set, else the path that `shared/scripts/<script>` (found by walking up from this crate; CI has
/// `../shared` beside the clone) prints: it downloads once through pip and then answers from its cache.
fn fetched(env: &str, script: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = manifest
        .ancestors()
        .map(|d| d.join("shared/scripts").join(script))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("set {env} or provide shared/scripts/{script} in an ancestor directory"));
    let out = std::process::Command::new("bash")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default(),
    )
}

/// Model runs use every core; running two at once would only make each slower and timings meaningless.
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-engine-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir.join(name)
}
