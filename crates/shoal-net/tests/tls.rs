//! The cluster key over real zenoh sessions (SYSTEM.md §12): nodes holding certificates from the same cluster key talk
//! over `tls/`; a node with another cluster's certificate, or with no TLS at all, can neither inject nor read.
//!
//! Loopback only: multicast scouting and gossip are off and every endpoint is `127.0.0.1`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use shoal_net::cluster_key::{ClusterKey, NodeTls};
use shoal_types::NodeId;
use zenoh::Wait;
use zenoh::sample::{Locality, Sample};

const KEY: &str = "shoal/tls-test/data";

fn node_id(b: u8) -> NodeId {
    NodeId::from_random([b; 16]).expect("valid node id")
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn set(config: &mut zenoh::Config, key: &str, value: &str) {
    if let Err(e) = config.insert_json5(key, value) {
        panic!("config {key} = {value}: {e}");
    }
}

/// A loopback-only peer: no scouting, no gossip, listening only where told (never the default `[::]`).
fn config(id: NodeId, tls: Option<&NodeTls>, listen: &[String], connect: &[String]) -> zenoh::Config {
    let mut config = zenoh::Config::default();
    set(&mut config, "id", &format!("\"{id}\""));
    set(&mut config, "mode", "\"peer\"");
    set(&mut config, "scouting/multicast/enabled", "false");
    set(&mut config, "scouting/gossip/enabled", "false");
    set(
        &mut config,
        "listen/endpoints",
        &serde_json::to_string(listen).expect("json"),
    );
    set(
        &mut config,
        "connect/endpoints",
        &serde_json::to_string(connect).expect("json"),
    );
    set(&mut config, "transport/link/tx/lease", "2000");
    if let Some(tls) = tls {
        set(&mut config, "transport/link/tls", &tls.zenoh_tls_json().to_string());
    }
    config
}

fn open(config: zenoh::Config) -> zenoh::Session {
    match zenoh::open(config).wait() {
        Ok(session) => session,
        Err(e) => panic!("zenoh::open: {e}"),
    }
}

type Sub = zenoh::pubsub::Subscriber<zenoh::handlers::FifoChannelHandler<Sample>>;

/// Remote samples only: a session's own puts must not count as delivered.
fn subscribe(session: &zenoh::Session) -> Sub {
    match session.declare_subscriber(KEY).allowed_origin(Locality::Remote).wait() {
        Ok(sub) => sub,
        Err(e) => panic!("declare_subscriber: {e}"),
    }
}

/// Puts from `from` every 100 ms until `sub` receives one, or `within` passes; true when one arrived.
fn delivered(from: &zenoh::Session, sub: &Sub, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Err(e) = from.put(KEY, "hello").wait() {
            panic!("put: {e}");
        }
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(sample)) => {
                assert_eq!(sample.payload().to_bytes().as_ref(), b"hello");
                return true;
            }
            Ok(None) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    false
}

fn peers(session: &zenoh::Session) -> usize {
    session.info().peers_zid().wait().count()
}

fn close(session: zenoh::Session) {
    if let Err(e) = session.close().wait() {
        panic!("close: {e}");
    }
}

/// A keyed node listening on `tls/127.0.0.1:<port>`, plus that endpoint.
fn keyed_listener(key: &ClusterKey, id: NodeId) -> (zenoh::Session, String) {
    let tls = key.issue_node_cert(id).expect("issue");
    let port = free_port();
    let endpoint = format!("tls/127.0.0.1:{port}");
    let session = open(config(id, Some(&tls), std::slice::from_ref(&endpoint), &[]));
    (session, endpoint)
}

#[test]
fn same_cluster_key_connects() {
    let key = ClusterKey::generate().expect("generate");
    let (a, endpoint) = keyed_listener(&key, node_id(0xa1));
    let b_tls = key.issue_node_cert(node_id(0xb2)).expect("issue");
    // The key goes through its file form, as on a real node.
    let reloaded = ClusterKey::parse(&key.to_file_text()).expect("parse");
    let c_tls = reloaded.issue_node_cert(node_id(0xc3)).expect("issue");
    let b = open(config(
        node_id(0xb2),
        Some(&b_tls),
        &[],
        std::slice::from_ref(&endpoint),
    ));
    let c = open(config(
        node_id(0xc3),
        Some(&c_tls),
        &[],
        std::slice::from_ref(&endpoint),
    ));

    let a_sub = subscribe(&a);
    let b_sub = subscribe(&b);
    assert!(
        delivered(&b, &a_sub, Duration::from_secs(5)),
        "a keyed peer's put must reach the listener"
    );
    assert!(
        delivered(&a, &b_sub, Duration::from_secs(5)),
        "the listener's put must reach a keyed peer"
    );
    assert!(
        delivered(&c, &a_sub, Duration::from_secs(5)),
        "a peer using the reloaded key must reach the listener"
    );
    assert_eq!(peers(&a), 2);

    close(c);
    close(b);
    close(a);
}

#[test]
fn other_cluster_key_is_refused() {
    let key = ClusterKey::generate().expect("generate");
    let other = ClusterKey::generate().expect("generate");
    let (a, endpoint) = keyed_listener(&key, node_id(0xa4));
    let connect = std::slice::from_ref(&endpoint);
    // A node of another cluster: its certificate is not signed by our CA, and it does not trust ours.
    let stranger_tls = other.issue_node_cert(node_id(0xb5)).expect("issue");
    let stranger = open(config(node_id(0xb5), Some(&stranger_tls), &[], connect));
    // An impostor that trusts our CA (the CA certificate is not secret) but holds no leaf signed by it: only the
    // listener's client-certificate check (mTLS) stops it.
    let impostor_leaf = other.issue_node_cert(node_id(0xd7)).expect("issue");
    let impostor_tls = NodeTls {
        ca_pem: key.ca_cert_pem().to_owned(),
        ..impostor_leaf
    };
    let impostor = open(config(node_id(0xd7), Some(&impostor_tls), &[], connect));

    let a_sub = subscribe(&a);
    let stranger_sub = subscribe(&stranger);
    let impostor_sub = subscribe(&impostor);
    assert!(
        !delivered(&impostor, &a_sub, Duration::from_secs(3)),
        "an impostor's put must not arrive"
    );
    assert!(
        !delivered(&stranger, &a_sub, Duration::from_secs(1)),
        "another cluster's put must not arrive"
    );
    assert!(
        !delivered(&a, &impostor_sub, Duration::from_millis(500)),
        "an impostor must not read our puts"
    );
    assert!(
        !delivered(&a, &stranger_sub, Duration::from_millis(500)),
        "another cluster must not read our puts"
    );
    assert_eq!(peers(&a), 0);
    assert_eq!(peers(&stranger), 0);
    assert_eq!(peers(&impostor), 0);

    // Control: the listener still accepts its own cluster.
    let friend_tls = key.issue_node_cert(node_id(0xc6)).expect("issue");
    let friend = open(config(node_id(0xc6), Some(&friend_tls), &[], connect));
    assert!(
        delivered(&friend, &a_sub, Duration::from_secs(5)),
        "the listener must still accept its own cluster"
    );
    assert!(
        impostor_sub.try_recv().ok().flatten().is_none(),
        "the impostor must not see the friend's traffic"
    );
    assert!(
        stranger_sub.try_recv().ok().flatten().is_none(),
        "the stranger must not see the friend's traffic"
    );

    close(friend);
    close(impostor);
    close(stranger);
    close(a);
}

#[test]
fn plain_tcp_is_refused() {
    let key = ClusterKey::generate().expect("generate");
    let (a, endpoint) = keyed_listener(&key, node_id(0xa7));
    let plain_endpoint = endpoint.replacen("tls/", "tcp/", 1);
    let plain = open(config(node_id(0xb8), None, &[], &[plain_endpoint]));

    let a_sub = subscribe(&a);
    let plain_sub = subscribe(&plain);
    assert!(
        !delivered(&plain, &a_sub, Duration::from_secs(3)),
        "a plain tcp put must not arrive"
    );
    assert!(
        !delivered(&a, &plain_sub, Duration::from_millis(500)),
        "a plain tcp node must not read our puts"
    );
    assert_eq!(peers(&a), 0);
    assert_eq!(peers(&plain), 0);

    close(plain);
    close(a);
}
