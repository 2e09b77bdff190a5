//! Fuzzing the liveliness-key parser (issue 15): peers declare tokens whose key names a node, a master's session or
//! a follower, and every node parses the keys it sees. Whatever the key (arbitrary text, or a valid key with random
//! edits), `parse_token` returns a token or `None` and never panics; a valid key parses back to its token.
//! `SHOAL_FUZZ_CASES=1000000` runs the long version.

#[path = "../../shoal-types/tests/fuzz_support/mod.rs"]
mod fuzz_support;

use fuzz_support::{edits, mutate};
use proptest::prelude::*;
use shoal_net::keys::{Token, follows_token, master_token, node_token, parse_session, parse_token};
use shoal_types::{NodeId, SessionId};

const NS: &str = "test";

fn session(term: u64, node: NodeId) -> SessionId {
    SessionId { term, master: node }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(fuzz_support::cases()))]

    #[test]
    fn arbitrary_keys_never_panic(key in "(shoal/test/)?[a-z0-9/._-]{0,80}", text in "\\PC{0,64}") {
        let _ = parse_token(NS, &key);
        let _ = parse_token(NS, &text);
        let _ = parse_session(&text);
    }

    #[test]
    fn valid_keys_round_trip_and_edited_ones_never_panic(
        bytes in any::<[u8; 16]>(), term in any::<u64>(), kind in 0..3u8, edits in edits(),
    ) {
        let node = NodeId::from_bytes(bytes);
        let (key, token) = match kind {
            0 => (node_token(NS, node), Token::Node(node)),
            1 => (master_token(NS, session(term, node)), Token::Master(session(term, node))),
            _ => (follows_token(NS, session(term, node), node), Token::Follows(session(term, node), node)),
        };
        prop_assert_eq!(parse_token(NS, &key), Some(token));
        let mut edited = key.into_bytes();
        mutate(&mut edited, &edits);
        let _ = parse_token(NS, &String::from_utf8_lossy(&edited));
    }
}
