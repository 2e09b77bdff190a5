//! What the byte-level fuzzers of every crate share (issue 15): the case count and structured mutations of valid
//! encodings. Other crates' fuzz files include this file by path, so one mutator serves the wire, disk, frame and
//! GGUF decoders alike.
#![allow(dead_code)]

use proptest::prelude::*;

/// Cases per property: `SHOAL_FUZZ_CASES` (the long run: `SHOAL_FUZZ_CASES=1000000`), else `PROPTEST_CASES`, else
/// [`CI_CASES`].
pub fn cases() -> u32 {
    ["SHOAL_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.parse().ok())
        .unwrap_or(CI_CASES)
}

/// Small enough that every fuzz file of the workspace together stays within CI's budget on 2 cores.
pub const CI_CASES: u32 = 1024;

/// Longest run of random bytes one edit inserts.
const MAX_INSERT: usize = 16;

/// One change to a valid encoding. Positions are taken modulo the length at the time of the edit.
#[derive(Debug, Clone)]
pub enum Edit {
    Xor(usize, u8),
    Set(usize, u8),
    /// A length or tag byte pushed to its extremes: where decoders trust a count.
    Extreme(usize, bool),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), 1..=u8::MAX).prop_map(|(at, x)| Edit::Xor(at, x)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, v)| Edit::Set(at, v)),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(at, high)| Edit::Extreme(at, high)),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..=MAX_INSERT)).prop_map(|(at, b)| Edit::Insert(at, b)),
        1 => (any::<usize>(), 1usize..=MAX_INSERT).prop_map(|(at, n)| Edit::Remove(at, n)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// 1 to 8 edits.
pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 1..=8)
}

pub fn mutate(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let len = bytes.len();
        match e {
            Edit::Insert(at, b) => {
                let at = at % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Edit::Truncate(at) => bytes.truncate(at % (len + 1)),
            _ if len == 0 => {}
            Edit::Xor(at, x) => bytes[at % len] ^= x,
            Edit::Set(at, v) => bytes[at % len] = *v,
            Edit::Extreme(at, high) => bytes[at % len] = if *high { 0xff } else { 0 },
            Edit::Remove(at, n) => {
                let at = at % len;
                bytes.drain(at..(at + n).min(len));
            }
        }
    }
}

/// Arbitrary bytes up to 512 long; half of them start with `lead` so decoders get past their version check.
pub fn bytes_after(lead: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    (any::<bool>(), prop::collection::vec(any::<u8>(), 0..512)).prop_map(move |(led, rest)| {
        if led {
            lead.iter().copied().chain(rest).collect()
        } else {
            rest
        }
    })
}
