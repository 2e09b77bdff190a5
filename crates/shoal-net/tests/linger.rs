//! zenoh's links must close without lingering (`.cargo/config.toml` sets `TCP_LINGER_TIMEOUT=0`).
//!
//! zenoh 1.x sets SO_LINGER to 10 s on every TCP link, so closing a link to a peer that stopped reading (partitioned,
//! SIGSTOPed) blocked one of zenoh's runtime threads in close(2) for up to 10 s and froze the node's other links: the
//! partition hangs of issue 13. With linger 0 a close is abortive: the peer gets a reset, never a graceful FIN.
//!
//! The check: a raw TCP client dials a real zenoh listener on loopback and sends one well-framed message that is not
//! a zenoh handshake. zenoh reads all of it, shuts its side down (a FIN) and drops the socket. A lingering drop
//! leaves the connection half-closed; the drop shoal's build asks for resets it, and the client's next write fails.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use shoal_net::NetConfig;
use shoal_types::NodeId;
use zenoh::Wait;

/// How long the client waits for zenoh to give up on the bogus handshake.
const CLOSE_WITHIN: Duration = Duration::from_secs(15);
/// How long the reset that follows zenoh's FIN may take to arrive on loopback.
const RESET_AFTER_FIN: Duration = Duration::from_millis(300);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

#[test]
fn a_dropped_zenoh_link_is_reset_not_lingered() {
    let port = free_port();
    let node = NodeId::from_random([0x7a; 16]).expect("valid node id");
    let config = NetConfig::loopback_test("linger-test", node, port, &[])
        .zenoh_config()
        .expect("zenoh config");
    let session = zenoh::open(config).wait().expect("zenoh session");

    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("dial the zenoh listener");
    client.set_read_timeout(Some(CLOSE_WITHIN)).expect("read timeout");
    // One frame of zenoh's TCP framing (a 2-byte little-endian length, then the batch) holding no valid message, so
    // zenoh consumes every byte before it closes: a reset can only come from the linger setting.
    client
        .write_all(&[4, 0, 0xff, 0xff, 0xff, 0xff])
        .expect("send a bogus frame");

    let mut buf = [0u8; 1024];
    let ending = loop {
        match client.read(&mut buf) {
            // zenoh shuts its side down (a FIN) before it drops the socket; the drop with linger 0 then resets the
            // half-closed connection. Reads keep giving 0 after a FIN, so a write tells: a reset connection refuses
            // it at once, a half-closed one (the lingering close) takes it.
            Ok(0) => {
                std::thread::sleep(RESET_AFTER_FIN);
                match client.write(&[0]) {
                    Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {
                        break "reset".to_owned();
                    }
                    other => break format!("a graceful FIN (the link lingered), then a write gave {other:?}"),
                }
            }
            Ok(_) => continue, // whatever zenoh says before it closes
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset".to_owned(),
            Err(e) => break format!("{e} (no close within {CLOSE_WITHIN:?})"),
        }
    };
    assert_eq!(
        ending, "reset",
        "zenoh closed its link without a reset; is TCP_LINGER_TIMEOUT=0 (.cargo/config.toml) applied?"
    );
    drop(session);
}
