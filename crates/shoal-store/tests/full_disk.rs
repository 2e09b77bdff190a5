//! A store on a really full disk (a small tmpfs; the tests run as root): the commit that hits "No space left on
//! device" fails cleanly and poisons the store, nothing committed is lost, and once space returns
//! [`Store::reopen`] recovers the committed State and appends resume (issue 15 item 4).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;

use common::*;
use shoal_core::testing::{Mix, fold};
use shoal_store::{Commit, StoreError};
use shoal_types::State;

/// Big enough for the store's first commits, small enough to fill in a moment.
const TMPFS_SIZE: &str = "size=4m";

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_commit_on_a_full_disk_fails_and_reopen_recovers_once_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", TMPFS_SIZE, "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (CI must run this as root)"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _mount = Tmpfs(dir.path().to_path_buf());
    let path = store_path(&dir);
    let evs = events(11, Mix::Chaos, 20_000);
    let (mut store, _) = open(&path, no_checkpoints());
    store.append(&evs[..100], Commit::Fsync).unwrap();

    let filler = dir.path().join("filler");
    {
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
        while file.write_all(&[0u8]).is_ok() {}
    }
    // Appends go on into the file's free pages until one needs the disk to grow.
    let mut committed = 100;
    let error = loop {
        assert!(committed < evs.len(), "the full disk never failed a commit");
        match store.append(&evs[committed..committed + 100], Commit::Fsync) {
            Ok(()) => committed += 100,
            Err(error) => break error,
        }
    };
    assert!(error.to_string().contains("No space left on device"), "{error}");
    assert!(store.is_poisoned());
    assert!(matches!(
        store.append(&evs[committed..committed + 1], Commit::Fsync),
        Err(StoreError::Poisoned)
    ));
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..committed]).unwrap());

    // Opening needs no free space (a node restarted on the full disk starts, then stands aside).
    store.reopen().unwrap();
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..committed]).unwrap());
    std::fs::remove_file(&filler).unwrap();
    store.reopen().unwrap();
    assert!(!store.is_poisoned());
    assert_eq!(
        store.state(),
        &fold(&State::empty(), &evs[..committed]).unwrap(),
        "nothing committed lost"
    );
    store.append(&evs[committed..committed + 100], Commit::Fsync).unwrap();
    drop(store);
    let (store, _) = open(&path, no_checkpoints());
    assert_eq!(store.state(), &fold(&State::empty(), &evs[..committed + 100]).unwrap());
}
