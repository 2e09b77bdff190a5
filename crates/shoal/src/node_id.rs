//! The node's persisted identity (SYSTEM.md §2.2): created once in `<data_dir>/node_id`, reused on every start, so a
//! restarted node is the same node (exo regenerated ids on every start and left ghost nodes behind).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use shoal_types::NodeId;

pub const FILE_NAME: &str = "node_id";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the node id, or creates and persists a fresh one. A file that exists but does not hold a valid id is an
/// error naming the file (silently replacing it would turn this node into a different one).
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(NodeId, bool)> {
    let file = path(data_dir);
    match fs::read_to_string(&file) {
        Ok(text) => {
            let id: NodeId = text.trim().parse().with_context(|| {
                format!(
                    "{} does not hold a node id; fix it or run `shoal reset-id`",
                    file.display()
                )
            })?;
            if !id.is_valid_generated() {
                bail!("{} holds a reserved node id; run `shoal reset-id`", file.display());
            }
            Ok((id, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = generate()?;
            write_atomically(&file, &format!("{id}\n"))?;
            Ok((id, true))
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

/// Deletes the persisted id so the next start creates a new one (for cloned disks). Returns the old id if any.
pub fn reset(data_dir: &Path) -> anyhow::Result<Option<String>> {
    let file = path(data_dir);
    match fs::read_to_string(&file) {
        Ok(old) => {
            fs::remove_file(&file).with_context(|| format!("cannot delete {}", file.display()))?;
            Ok(Some(old.trim().to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", file.display())),
    }
}

fn generate() -> anyhow::Result<NodeId> {
    loop {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no system randomness for a node id: {e}"))?;
        if let Some(id) = NodeId::from_random(bytes) {
            return Ok(id);
        }
    }
}

/// Write-then-rename, so a crash never leaves a half-written id behind.
fn write_atomically(file: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut f = fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, file).with_context(|| format!("cannot write {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn created_once_then_reused_then_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = load_or_create(dir.path()).unwrap();
        assert!(created && first.is_valid_generated());
        let (again, created) = load_or_create(dir.path()).unwrap();
        assert_eq!((again, created), (first, false));
        assert_eq!(reset(dir.path()).unwrap(), Some(first.to_string()));
        assert_eq!(reset(dir.path()).unwrap(), None);
        let (fresh, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert_ne!(fresh, first);
    }

    #[test]
    fn a_garbled_id_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(path(dir.path()), "not an id").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("node_id") && err.contains("reset-id"), "{err}");
        fs::write(path(dir.path()), "0".repeat(32)).unwrap();
        assert!(load_or_create(dir.path()).is_err(), "the reserved zero id is refused");
    }
}
