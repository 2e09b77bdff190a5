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

/// Path of the test model: `SHOAL_TEST_MODEL`, else whatever `shared/scripts/fetch-test-model.sh` (found by walking
/// up from this crate) prints; it downloads once and then answers from its cache.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Ok(p) = std::env::var("SHOAL_TEST_MODEL") {
            return PathBuf::from(p);
        }
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = manifest
            .ancestors()
            .map(|d| d.join("shared/scripts/fetch-test-model.sh"))
            .find(|p| p.is_file())
            .expect("set SHOAL_TEST_MODEL or provide shared/scripts/fetch-test-model.sh in an ancestor directory");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .expect("run fetch-test-model.sh");
        assert!(
            out.status.success(),
            "fetch-test-model.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout)
            .trim()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        PathBuf::from(path)
    })
    .clone()
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
