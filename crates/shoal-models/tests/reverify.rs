#![allow(clippy::unwrap_used)]
//! Verifying a file again on a runner's word (issue 15 item 5): `verify_digest_now` hashes whatever the cache
//! holds, and `forget_digest` makes the next `locate` hash the file again although nothing about it changed.

use std::collections::BTreeMap;
use std::fs;

use sha2::{Digest, Sha256};
use shoal_models::{ModelStore, SourceError, verify_digest_now};
use shoal_types::ModelId;
use shoal_types::card::{ModelSource, SourceKind, builtin_cards};
use tempfile::TempDir;

const FILE: &str = "fake.Q4_1.gguf";
const GOOD: &[u8] = b"GGUF good weights, 32 bytes long";
const BAD: &[u8] = b"GGUF evil weights, 32 bytes long";

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn verify_digest_now_compares_fresh_bytes_and_names_the_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join(FILE);
    fs::write(&path, GOOD).unwrap();
    verify_digest_now(&path, &sha(GOOD)).unwrap();
    verify_digest_now(&path, &sha(GOOD).to_ascii_uppercase()).unwrap();

    fs::write(&path, BAD).unwrap();
    match verify_digest_now(&path, &sha(GOOD)) {
        Err(SourceError::ShaMismatch { file, expected, actual }) => {
            assert_eq!(file, path);
            assert_eq!(expected, sha(GOOD));
            assert_eq!(actual, sha(BAD));
        }
        other => panic!("{other:?}"),
    }
    let gone = dir.path().join("gone.gguf");
    let err = verify_digest_now(&gone, &sha(GOOD)).unwrap_err();
    assert!(err.to_string().contains("gone.gguf"), "{err}");
}

#[test]
fn a_forgotten_digest_is_hashed_again_by_the_next_locate() {
    let ro = TempDir::new().unwrap();
    let path = ro.path().join(FILE);
    fs::write(&path, GOOD).unwrap();
    let data = TempDir::new().unwrap();
    let store = ModelStore::new(data.path().join("models"), vec![ro.path().to_path_buf()]);
    let mut card = builtin_cards().remove(0);
    card.id = ModelId::new("test/fake-model");
    card.storage_size = GOOD.len() as u64;
    card.sources = vec![ModelSource {
        kind: SourceKind::Pip,
        repo: None,
        revision: None,
        package: None,
        member: None,
        parts: None,
        path: None,
        files: vec![FILE.to_owned()],
        sha256: BTreeMap::from([(FILE.to_owned(), sha(GOOD))]),
    }];

    assert!(store.locate(&card).is_some());
    assert!(store.locate(&card).is_some());
    assert_eq!(store.hashes_computed(), 1, "an unchanged file is hashed once");
    store.forget_digest(&path);
    assert!(store.locate(&card).is_some());
    assert_eq!(store.hashes_computed(), 2, "hashed again after forget_digest");
}
