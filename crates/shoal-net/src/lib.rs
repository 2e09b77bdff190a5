//! shoal's zenoh layer (SYSTEM.md §12): the session configuration (peer mode, scouting, static endpoints, lease and
//! congestion limits, mutual TLS with the cluster key), the key expressions, and the rule that a subscriber callback
//! never blocks: it decodes, `try_send`s into a bounded channel and counts what it could not hand over.
//!
//! Everything here is configuration and plumbing; the decisions are in `shoal-core`, the node loop in `shoal-cluster`.

pub mod cluster_key;
pub mod keys;
pub mod mutual_tls;

use std::sync::atomic::{AtomicU64, Ordering};

use shoal_types::NodeId;
use zenoh::Config;

pub use zenoh;

use crate::cluster_key::NodeTls;

/// Default ports (§13).
pub const ZENOH_PORT: u16 = 52414;
pub const SCOUT_PORT: u16 = 52413;
/// The multicast group shoal scouts on; the port is `--scout-port`.
pub const SCOUT_GROUP: &str = "224.0.0.224";
/// Capacity of each subscriber's hand-off channel (§12, §13).
pub const SUBSCRIBER_CHANNEL: usize = 16_384;
/// Largest message accepted on any key; bigger ones are dropped and counted. Snapshot chunks are ≤ 8 MiB.
pub const MAX_MESSAGE_BYTES: usize = 9 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("zenoh configuration: {0}")]
    Config(String),
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
    #[error("zenoh: {0}")]
    Zenoh(String),
}

impl From<zenoh::Error> for NetError {
    fn from(e: zenoh::Error) -> Self {
        NetError::Zenoh(e.to_string())
    }
}

/// How one node joins the network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub namespace: String,
    pub node: NodeId,
    /// zenoh endpoints to listen on; default `tcp/[::]:52414` (`tls/...` with a cluster key).
    pub listen: Vec<String>,
    /// Static peers (`--connect`), for networks that block multicast.
    pub connect: Vec<String>,
    /// Multicast scouting (off with `--no-multicast`).
    pub multicast: bool,
    /// `auto`, or a comma list of interface names.
    pub scout_iface: String,
    pub scout_port: u16,
    /// `transport/link/tx/lease`.
    pub lease_ms: u64,
    /// `transport/link/tx/queue/congestion_control/block/wait_before_close`: how long a hung peer may stall a
    /// blocked publisher before zenoh closes its transport.
    pub wait_before_close_us: u64,
    /// `transport/unicast/open_timeout`.
    pub open_timeout_ms: u64,
    /// Mutual TLS with the cluster CA; `None` runs open (and the node warns).
    pub tls: Option<NodeTls>,
}

impl NetConfig {
    /// The LAN defaults of §12–§13.
    pub fn lan(namespace: impl Into<String>, node: NodeId) -> NetConfig {
        NetConfig {
            namespace: namespace.into(),
            node,
            listen: vec![format!("tcp/[::]:{ZENOH_PORT}")],
            connect: Vec::new(),
            multicast: true,
            scout_iface: "auto".to_owned(),
            scout_port: SCOUT_PORT,
            lease_ms: 3_000,
            wait_before_close_us: 1_000_000,
            open_timeout_ms: 2_000,
            tls: None,
        }
    }

    /// A test node: listens on `127.0.0.1:<port>`, multicast off, explicit loopback peers; the test timings of §13.
    pub fn loopback_test(namespace: impl Into<String>, node: NodeId, port: u16, connect: &[u16]) -> NetConfig {
        let config = NetConfig {
            listen: vec![format!("tcp/127.0.0.1:{port}")],
            connect: connect.iter().map(|p| format!("tcp/127.0.0.1:{p}")).collect(),
            multicast: false,
            lease_ms: 2_000,
            wait_before_close_us: 500_000,
            ..NetConfig::lan(namespace, node)
        };
        config.assert_test_safe();
        config
    }

    /// A test configuration must never scout on a real NIC nor dial anything but loopback (§12 "Tests").
    pub fn assert_test_safe(&self) {
        assert!(
            !self.multicast || self.scout_iface == "lo",
            "a test node may scout only on lo (scout_iface = {})",
            self.scout_iface
        );
        for endpoint in self.connect.iter().chain(&self.listen) {
            assert!(
                endpoint.contains("127.0.0.1") || endpoint.contains("[::1]"),
                "a test node may use loopback endpoints only, not {endpoint}"
            );
        }
    }

    /// The zenoh configuration for this node.
    pub fn zenoh_config(&self) -> Result<Config, NetError> {
        let mut config = Config::default();
        let mut set = |key: &str, value: serde_json::Value| -> Result<(), NetError> {
            config
                .insert_json5(key, &value.to_string())
                .map_err(|e| NetError::Config(format!("{key}: {e}")))
        };
        // The zenoh id stays random per process (not the node id, unlike §2.2): zenoh refuses a transport between
        // two sessions with one id as a "connection to itself", which would hide a cloned data directory from the
        // duplicate-id check instead of stopping it.
        set("mode", serde_json::json!("peer"))?;
        let listen = match &self.tls {
            Some(_) => self.listen.iter().map(|e| to_tls(e)).collect::<Vec<_>>(),
            None => self.listen.clone(),
        };
        // A node given the whole peer list (the same --connect flags on every node) skips itself: zenoh would
        // otherwise retry a connection to itself forever.
        let connect = self
            .connect
            .iter()
            .filter(|e| !self.listen.contains(e))
            .map(|e| if self.tls.is_some() { to_tls(e) } else { e.clone() })
            .collect::<Vec<_>>();
        for endpoint in listen.iter().chain(&connect) {
            check_endpoint(endpoint)?;
        }
        set("listen/endpoints", serde_json::json!(listen))?;
        set("connect/endpoints", serde_json::json!(connect))?;
        set("scouting/multicast/enabled", serde_json::json!(self.multicast))?;
        set(
            "scouting/multicast/address",
            serde_json::json!(format!("{SCOUT_GROUP}:{}", self.scout_port)),
        )?;
        set("scouting/multicast/interface", serde_json::json!(self.scout_iface))?;
        set(
            "scouting/multicast/autoconnect",
            serde_json::json!({ "router": [], "peer": ["router", "peer"], "client": ["router", "peer"] }),
        )?;
        set("scouting/gossip/enabled", serde_json::json!(true))?;
        set("scouting/gossip/multihop", serde_json::json!(false))?;
        set("transport/link/tx/lease", serde_json::json!(self.lease_ms))?;
        set(
            "transport/link/tx/queue/congestion_control/block/wait_before_close",
            serde_json::json!(self.wait_before_close_us),
        )?;
        set(
            "transport/unicast/open_timeout",
            serde_json::json!(self.open_timeout_ms),
        )?;
        // A keyless node that only tries tcp never reaches a keyed one, and a keyed one never dials plain tcp.
        if let Some(tls) = &self.tls {
            set("transport/link/tls", tls.zenoh_tls_json())?;
        }
        Ok(config)
    }
}

/// With a cluster key every endpoint is TLS: `tcp/host:port` becomes `tls/host:port`.
fn to_tls(endpoint: &str) -> String {
    match endpoint.strip_prefix("tcp/") {
        Some(rest) => format!("tls/{rest}"),
        None => endpoint.to_owned(),
    }
}

fn check_endpoint(endpoint: &str) -> Result<(), NetError> {
    let valid = ["tcp/", "tls/", "udp/"]
        .iter()
        .any(|p| endpoint.strip_prefix(p).is_some_and(|rest| rest.contains(':')));
    if valid {
        Ok(())
    } else {
        Err(NetError::Flag {
            flag: "--connect/--listen",
            message: format!("{endpoint:?} is not a zenoh endpoint like tcp/192.168.1.5:52414"),
        })
    }
}

/// Per-key counters of messages a node did not take: dropped for a full channel, undecodable, of another wire
/// version, or oversized. Exposed on `/metrics` and in tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub dropped_full: AtomicU64,
    pub malformed: AtomicU64,
    pub incompatible: AtomicU64,
    pub oversized: AtomicU64,
    pub received: AtomicU64,
}

impl Counters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            dropped_full: self.dropped_full.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            incompatible: self.incompatible.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
        }
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    pub dropped_full: u64,
    pub malformed: u64,
    pub incompatible: u64,
    pub oversized: u64,
    pub received: u64,
}

/// Decodes a `[version][postcard]` payload, counting why it was refused (§2.1: another version is dropped and
/// counted; a malformed or oversized message is dropped and logged, never a crash).
pub fn decode_counted<T: serde::de::DeserializeOwned>(bytes: &[u8], key: &str, counters: &Counters) -> Option<T> {
    Counters::bump(&counters.received);
    if bytes.len() > MAX_MESSAGE_BYTES {
        Counters::bump(&counters.oversized);
        tracing::debug!(key, len = bytes.len(), "oversized message dropped");
        return None;
    }
    match shoal_types::codec::decode::<T>(bytes) {
        Ok(value) => Some(value),
        Err(shoal_types::codec::DecodeError::Version { .. }) => {
            Counters::bump(&counters.incompatible);
            tracing::debug!(key, "message of another wire version dropped");
            None
        }
        Err(error) => {
            Counters::bump(&counters.malformed);
            tracing::debug!(key, %error, "malformed message dropped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeId {
        NodeId::from_bytes([0x42; 16])
    }

    #[test]
    fn the_lan_config_is_accepted_by_zenoh() {
        let config = NetConfig::lan("default", node());
        assert!(config.zenoh_config().is_ok());
    }

    #[test]
    fn a_bad_endpoint_names_the_flag() {
        let mut config = NetConfig::lan("default", node());
        config.connect = vec!["192.168.1.5".into()];
        let error = config.zenoh_config().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("--connect"), "{error}");
    }

    #[test]
    #[should_panic(expected = "loopback endpoints only")]
    fn a_test_config_refuses_a_real_address() {
        let mut config = NetConfig::loopback_test("t", node(), 17_001, &[]);
        config.connect.push("tcp/10.0.0.1:52414".into());
        config.assert_test_safe();
    }

    #[test]
    #[should_panic(expected = "scout only on lo")]
    fn a_test_config_refuses_scouting_on_a_nic() {
        let mut config = NetConfig::loopback_test("t", node(), 17_002, &[]);
        config.multicast = true;
        config.assert_test_safe();
    }

    #[test]
    fn tls_turns_every_endpoint_into_tls() {
        assert_eq!(to_tls("tcp/127.0.0.1:1"), "tls/127.0.0.1:1");
        assert_eq!(to_tls("tls/127.0.0.1:1"), "tls/127.0.0.1:1");
    }
}
