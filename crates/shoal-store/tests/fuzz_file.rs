//! The store's file altered behind its back (issue 15 item 6, disk decoders): bytes flipped, a range overwritten or
//! the file cut short. Opening it and reading all it holds must end in an error or in a State the log folds to,
//! never in a panic. `SHOAL_FUZZ_CASES` sets the number of cases (CI runs a few hundred).
#![allow(clippy::unwrap_used)]

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};

use common::*;
use proptest::prelude::*;
use shoal_core::testing::Mix;
use shoal_store::{Commit, Store, StoreConfig};

fn cases() -> u32 {
    const CI_CASES: u32 = 256;
    std::env::var("SHOAL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CASES)
}

/// A closed store of a few hundred events with checkpoints, as bytes.
fn pristine() -> &'static [u8] {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = store_path(&dir);
        let (mut store, _) = open(&path, small_cfg(100, 250));
        for batch in batches(&events(7, Mix::Typical, 400), 13) {
            store.append(batch, Commit::Fsync).unwrap();
            store.checkpoint_if_due().unwrap();
        }
        store.close().unwrap();
        std::fs::read(&path).unwrap()
    })
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { at: usize, bits: u8 },
    Overwrite { at: usize, bytes: Vec<u8> },
    Truncate { to: usize },
}

fn damage() -> impl Strategy<Value = Vec<Damage>> {
    let one = prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(at, bits)| Damage::Flip { at, bits }),
        2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(at, bytes)| Damage::Overwrite { at, bytes }),
        1 => any::<usize>().prop_map(|to| Damage::Truncate { to }),
    ];
    proptest::collection::vec(one, 1..4)
}

fn apply(bytes: &mut Vec<u8>, damage: &[Damage]) {
    for d in damage {
        let len = bytes.len().max(1);
        match d {
            Damage::Flip { at, bits } => {
                if let Some(b) = bytes.get_mut(at % len) {
                    *b ^= bits;
                }
            }
            Damage::Overwrite { at, bytes: with } => {
                let start = at % len;
                for (i, b) in with.iter().enumerate() {
                    if let Some(slot) = bytes.get_mut(start + i) {
                        *slot = *b;
                    }
                }
            }
            Damage::Truncate { to } => bytes.truncate(to % len),
        }
    }
}

/// Opens the damaged file and reads everything; a panic is the failure.
fn open_and_read(bytes: &[u8], cfg: StoreConfig) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = store_path(&dir);
    std::fs::write(&path, bytes).unwrap();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        if let Ok((store, _)) = Store::open(&path, cfg) {
            let _ = store.events_after(-1, usize::MAX);
            let _ = store.state().pos;
        }
    }));
    outcome.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_damaged_store_file_is_refused_or_read_never_a_panic(damage in damage()) {
        let mut bytes = pristine().to_vec();
        apply(&mut bytes, &damage);
        let cfg = StoreConfig { check_integrity_on_open: true, ..small_cfg(100, 250) };
        prop_assert!(open_and_read(&bytes, cfg).is_ok(), "panicked on {damage:?}");
    }
}
