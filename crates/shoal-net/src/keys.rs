//! The key expressions of §12. `<S>` is a session written `<term>.<master_id>`.
//!
//! Builders return owned strings; parsers take what a liveliness subscriber reports and return `None` for anything
//! that is not exactly one of our keys (a malformed token is ignored, never a crash).

use shoal_types::{NodeId, SessionId};

/// `shoal/<ns>`
pub fn root(ns: &str) -> String {
    format!("shoal/{ns}")
}

pub fn election(ns: &str) -> String {
    format!("shoal/{ns}/election")
}

pub fn node_token(ns: &str, node: NodeId) -> String {
    format!("shoal/{ns}/node/{node}")
}

pub fn master_token(ns: &str, session: SessionId) -> String {
    format!("shoal/{ns}/master/{}/{}", session.term, session.master)
}

pub fn follows_token(ns: &str, session: SessionId, node: NodeId) -> String {
    format!("shoal/{ns}/follows/{session}/{node}")
}

/// Every liveliness token of the namespace (one subscriber covers node, master and follows tokens).
pub fn all_tokens(ns: &str) -> String {
    format!("shoal/{ns}/**")
}

pub fn session(ns: &str, session: SessionId, leaf: &str) -> String {
    format!("shoal/{ns}/s/{session}/{leaf}")
}

pub fn up(ns: &str, s: SessionId) -> String {
    session(ns, s, "up")
}

pub fn cmd(ns: &str, s: SessionId) -> String {
    session(ns, s, "cmd")
}

pub fn down(ns: &str, s: SessionId) -> String {
    session(ns, s, "down")
}

pub fn range(ns: &str, s: SessionId) -> String {
    session(ns, s, "range")
}

/// The queryable's key: the query itself and every numbered reply key under it.
pub fn range_queryable(ns: &str, s: SessionId) -> String {
    session(ns, s, "range/**")
}

pub fn range_reply(ns: &str, s: SessionId, n: u32) -> String {
    session(ns, s, &format!("range/{n}"))
}

pub fn snapshot(ns: &str, s: SessionId) -> String {
    session(ns, s, "snapshot")
}

pub fn snapshot_queryable(ns: &str, s: SessionId) -> String {
    session(ns, s, "snapshot/**")
}

pub fn snapshot_reply(ns: &str, s: SessionId, n: u32) -> String {
    session(ns, s, &format!("snapshot/{n}"))
}

pub fn chunk(ns: &str, node: NodeId) -> String {
    format!("shoal/{ns}/t/{node}/chunk")
}

pub fn ctl(ns: &str, node: NodeId) -> String {
    format!("shoal/{ns}/t/{node}/ctl")
}

/// The queryable of an API node that answers rank 0's request for a task's content (issue 15): transient, never
/// logged.
pub fn prompt(ns: &str, node: NodeId) -> String {
    format!("shoal/{ns}/t/{node}/prompt")
}

/// A liveliness token this node understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    Node(NodeId),
    Master(SessionId),
    Follows(SessionId, NodeId),
}

/// Parses `<term>.<master>`.
pub fn parse_session(text: &str) -> Option<SessionId> {
    let (term, master) = text.split_once('.')?;
    Some(SessionId {
        term: term.parse().ok()?,
        master: master.parse().ok()?,
    })
}

/// Parses a liveliness key of namespace `ns`.
pub fn parse_token(ns: &str, key: &str) -> Option<Token> {
    let rest = key.strip_prefix("shoal/")?.strip_prefix(ns)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        ["node", node] => Some(Token::Node(node.parse().ok()?)),
        ["master", term, master] => Some(Token::Master(SessionId {
            term: term.parse().ok()?,
            master: master.parse().ok()?,
        })),
        ["follows", session, node] => Some(Token::Follows(parse_session(session)?, node.parse().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 16])
    }

    #[test]
    fn tokens_round_trip() {
        let s = SessionId {
            term: 7,
            master: node(0x3f),
        };
        assert_eq!(
            parse_token("ns", &node_token("ns", node(0x11))),
            Some(Token::Node(node(0x11)))
        );
        assert_eq!(parse_token("ns", &master_token("ns", s)), Some(Token::Master(s)));
        assert_eq!(
            parse_token("ns", &follows_token("ns", s, node(0x22))),
            Some(Token::Follows(s, node(0x22)))
        );
    }

    #[test]
    fn foreign_and_malformed_keys_are_ignored() {
        assert_eq!(parse_token("ns", &node_token("other", node(0x11))), None);
        assert_eq!(parse_token("ns", "shoal/ns/node/xyz"), None);
        assert_eq!(parse_token("ns", "shoal/ns/master/x/y"), None);
        assert_eq!(parse_token("ns", "shoal/ns/follows/7/abc/def"), None);
        assert_eq!(parse_token("ns", "shoal/nsx/node/11"), None);
        assert_eq!(parse_session("7"), None);
    }

    #[test]
    fn session_keys_follow_the_spec() {
        let s = SessionId {
            term: 7,
            master: node(0x3f),
        };
        assert_eq!(up("default", s), format!("shoal/default/s/7.{}/up", node(0x3f)));
        assert_eq!(
            range_reply("default", s, 2),
            format!("shoal/default/s/7.{}/range/2", node(0x3f))
        );
    }
}
