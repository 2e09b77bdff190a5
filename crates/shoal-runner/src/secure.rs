//! Opening a data-plane edge (SYSTEM.md §10.4): the TCP connection between two ranks becomes an edge only after its
//! handshake, which must finish within [`HANDSHAKE_TIMEOUT`].
//!
//! With a cluster key the edge is TLS 1.3 with mutual certificates from the cluster CA (rustls with ring, the
//! provider zenoh's TLS link already uses), then the rank handshake inside it; a plaintext peer or a certificate from
//! another CA fails the TLS handshake. Without a key the rank handshake goes in the clear. Either way the handshake
//! names the instance, the rank and the instance's token from State, so a peer proves which runner it is.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use shoal_net::mutual_tls::{Deadline, HandshakeIoError, MutualTls, MutualTlsError};

use crate::frame::{FrameError, read_frame, write_frame};
use crate::proto::{DataFrame, DataPlaneTls, Handshake};

/// A connection whose handshake (TLS and rank) has not finished this long after it was accepted or dialled is
/// dropped, so a silent or trickling peer cannot hold a rank's edge.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The receive buffer of the previous rank's edge, and the send buffer of the next rank's: one activation frame.
const EDGE_BUFFER: usize = 1 << 20;

/// The reading end of the previous rank's edge.
pub(crate) type EdgeReader = Box<dyn Read + Send>;
/// The writing end of the next rank's edge.
pub(crate) type EdgeWriter = Box<dyn Write + Send>;

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("invalid data-plane TLS material: {0}")]
    Material(String),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no handshake within {} ms", HANDSHAKE_TIMEOUT.as_millis())]
    TimedOut,
    #[error("{0}")]
    Io(io::Error),
    #[error("handshake frame: {0}")]
    Frame(FrameError),
    #[error("the peer closed the connection before its handshake")]
    Closed,
    #[error("handshake mismatch: got {got}, expected {expected:?}")]
    Mismatch { got: String, expected: Handshake },
}

impl From<io::Error> for HandshakeError {
    fn from(e: io::Error) -> Self {
        match HandshakeIoError::from(e) {
            HandshakeIoError::TimedOut => HandshakeError::TimedOut,
            HandshakeIoError::Tls(tls) => HandshakeError::Tls(tls),
            HandshakeIoError::Io(e) => HandshakeError::Io(e),
        }
    }
}

impl From<FrameError> for HandshakeError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Io(e) => e.into(),
            other => HandshakeError::Frame(other),
        }
    }
}

/// Both sides' TLS configuration for one runner, built once from its [`DataPlaneTls`] (the builder is
/// `shoal_net::mutual_tls`, shared with model-file transfers).
#[derive(Clone, Debug)]
pub struct TlsConfigs(MutualTls);

impl std::ops::Deref for TlsConfigs {
    type Target = MutualTls;
    fn deref(&self) -> &MutualTls {
        &self.0
    }
}

impl TlsConfigs {
    pub fn new(tls: &DataPlaneTls) -> Result<TlsConfigs, HandshakeError> {
        MutualTls::new(&tls.ca_pem, &tls.cert_pem, &tls.key_pem, &tls.server_name)
            .map(TlsConfigs)
            .map_err(|e| match e {
                MutualTlsError::Material(what) => HandshakeError::Material(what),
                MutualTlsError::Tls(tls) => HandshakeError::Tls(tls),
            })
    }
}

/// Clears the handshake's deadline: an established edge waits as long as the ring is idle.
fn settle(socket: &TcpStream) -> io::Result<()> {
    socket.set_read_timeout(None)?;
    socket.set_write_timeout(None)
}

fn check(got: Option<DataFrame>, expected: &Handshake) -> Result<(), HandshakeError> {
    match got {
        Some(DataFrame::Handshake(h)) if h == *expected => Ok(()),
        Some(other) => Err(HandshakeError::Mismatch {
            // A data frame's activations are not for the log.
            got: match other {
                DataFrame::Handshake(h)
                    if Handshake {
                        token: expected.token,
                        ..h.clone()
                    } == *expected =>
                {
                    "the right instance and rank with a wrong token".to_string()
                }
                DataFrame::Handshake(h) => format!("{h:?}"),
                _ => "a data frame".to_string(),
            },
            expected: expected.clone(),
        }),
        None => Err(HandshakeError::Closed),
    }
}

/// The accepting side: the TLS handshake (with `tls`), then the rank handshake, which must equal `expected`.
pub(crate) fn accept(
    socket: TcpStream,
    tls: Option<&TlsConfigs>,
    expected: &Handshake,
) -> Result<EdgeReader, HandshakeError> {
    socket.set_nodelay(true)?;
    let mut io = Deadline::new(&socket, Instant::now() + HANDSHAKE_TIMEOUT);
    match tls {
        None => {
            // Read straight off the socket (no buffer), so nothing past the handshake frame is consumed here.
            check(read_frame::<DataFrame>(&mut io)?, expected)?;
            settle(&socket)?;
            Ok(Box::new(BufReader::with_capacity(EDGE_BUFFER, socket)))
        }
        Some(tls) => {
            let mut conn = ServerConnection::new(tls.server.clone())?;
            while conn.is_handshaking() {
                if let Err(e) = conn.complete_io(&mut io) {
                    // Best effort: the alert tells the peer why.
                    let _ = conn.write_tls(&mut io);
                    return Err(e.into());
                }
            }
            check(
                read_frame::<DataFrame>(&mut rustls::Stream::new(&mut conn, &mut io))?,
                expected,
            )?;
            settle(&socket)?;
            Ok(Box::new(BufReader::with_capacity(
                EDGE_BUFFER,
                StreamOwned::new(conn, socket),
            )))
        }
    }
}

/// The dialling side: the TLS handshake (with `tls`, checking the peer's certificate against the cluster CA), then
/// `hello`.
pub(crate) fn connect(
    socket: TcpStream,
    tls: Option<&TlsConfigs>,
    hello: &Handshake,
) -> Result<EdgeWriter, HandshakeError> {
    socket.set_nodelay(true)?;
    let mut io = Deadline::new(&socket, Instant::now() + HANDSHAKE_TIMEOUT);
    let frame = DataFrame::Handshake(hello.clone());
    match tls {
        None => {
            write_frame(&mut io, &frame)?;
            settle(&socket)?;
            Ok(Box::new(BufWriter::with_capacity(EDGE_BUFFER, socket)))
        }
        Some(tls) => {
            let mut conn = ClientConnection::new(tls.client.clone(), tls.name.clone())?;
            while conn.is_handshaking() {
                if let Err(e) = conn.complete_io(&mut io) {
                    // Best effort: the alert tells the peer why.
                    let _ = conn.write_tls(&mut io);
                    return Err(e.into());
                }
            }
            write_frame(&mut rustls::Stream::new(&mut conn, &mut io), &frame)?;
            settle(&socket)?;
            Ok(Box::new(BufWriter::with_capacity(
                EDGE_BUFFER,
                StreamOwned::new(conn, socket),
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::thread::JoinHandle;

    use rustls::pki_types::{CertificateDer, ServerName};
    use shoal_net::cluster_key::{ClusterKey, NODE_DNS_NAME};

    use super::*;
    use crate::proto::Token;

    fn material(key: &ClusterKey, node: u8) -> TlsConfigs {
        let id = shoal_types::NodeId::from_random([0x80 | node; 16]).unwrap();
        let tls = key.issue_node_cert(id).unwrap();
        TlsConfigs::new(&DataPlaneTls {
            ca_pem: tls.ca_pem,
            cert_pem: tls.cert_pem,
            key_pem: tls.key_pem,
            server_name: NODE_DNS_NAME.into(),
        })
        .unwrap()
    }

    fn hello(token: u8) -> Handshake {
        Handshake {
            instance: "inst".into(),
            rank: 1,
            world_size: 3,
            model: "m.gguf".into(),
            token: Token([token; 16]),
        }
    }

    /// A listener whose first connection goes through `accept` expecting `hello(1)`; the edge's first frame, or the
    /// refusal, comes back from the thread.
    fn server(tls: Option<TlsConfigs>) -> (SocketAddrV4, JoinHandle<Result<Option<DataFrame>, HandshakeError>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let std::net::SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let handle = std::thread::spawn(move || {
            let (socket, _) = listener.accept().unwrap();
            let mut edge = accept(socket, tls.as_ref(), &hello(1))?;
            Ok(read_frame::<DataFrame>(&mut edge).ok().flatten())
        });
        (addr, handle)
    }

    use std::net::SocketAddrV4;

    /// Dials `addr` with `connect` and sends one frame on the edge.
    fn client(addr: SocketAddrV4, tls: Option<&TlsConfigs>, token: u8) -> Result<(), HandshakeError> {
        let socket = TcpStream::connect(addr)?;
        let mut edge = connect(socket, tls, &hello(token))?;
        write_frame(&mut edge, &DataFrame::Release { slot: 5 }).map_err(HandshakeError::Frame)
    }

    #[test]
    fn a_good_peer_passes_with_and_without_a_key() {
        let key = ClusterKey::generate().unwrap();
        for keyed in [true, false] {
            let (addr, srv) = server(keyed.then(|| material(&key, 1)));
            let client_tls = keyed.then(|| material(&key, 2));
            client(addr, client_tls.as_ref(), 1).unwrap();
            let first = srv.join().unwrap().unwrap();
            assert_eq!(first, Some(DataFrame::Release { slot: 5 }), "keyed: {keyed}");
        }
    }

    #[test]
    fn a_plaintext_peer_is_refused_by_a_keyed_runner() {
        let key = ClusterKey::generate().unwrap();
        let (addr, srv) = server(Some(material(&key, 1)));
        let _ = client(addr, None, 1);
        let refused = srv.join().unwrap();
        assert!(matches!(refused, Err(HandshakeError::Tls(_))), "{refused:?}");
    }

    #[test]
    fn a_peer_of_another_key_is_refused_both_ways() {
        let key = ClusterKey::generate().unwrap();
        let other = ClusterKey::generate().unwrap();
        // A stranger dials a keyed runner.
        let (addr, srv) = server(Some(material(&key, 1)));
        // (The stranger gives up first, on the runner's certificate; either way no edge.)
        let dialled = client(addr, Some(&material(&other, 2)), 1);
        assert!(matches!(dialled, Err(HandshakeError::Tls(_))), "{dialled:?}");
        assert!(srv.join().unwrap().is_err());
        // A keyed runner dials a stranger: the stranger's certificate does not chain to the cluster CA.
        let (addr, srv) = server(Some(material(&other, 1)));
        let dialled = client(addr, Some(&material(&key, 2)), 1);
        assert!(matches!(dialled, Err(HandshakeError::Tls(_))), "{dialled:?}");
        assert!(srv.join().unwrap().is_err());
    }

    #[test]
    fn a_client_certificate_of_another_key_is_refused() {
        // A stranger that does not check the runner's certificate still fails on its own.
        let key = ClusterKey::generate().unwrap();
        let other = ClusterKey::generate().unwrap();
        let (addr, srv) = server(Some(material(&key, 1)));
        let stranger = material(&other, 2);
        let mut lax = (*stranger.client).clone();
        lax.dangerous().set_certificate_verifier(Arc::new(AcceptAnyServer));
        let stranger = TlsConfigs(MutualTls {
            client: Arc::new(lax),
            ..(*stranger).clone()
        });
        let _ = client(addr, Some(&stranger), 1);
        let refused = srv.join().unwrap();
        assert!(matches!(refused, Err(HandshakeError::Tls(_))), "{refused:?}");
    }

    /// A client that believes any server: only to show that the runner checks its clients on its own.
    #[derive(Debug)]
    struct AcceptAnyServer;

    impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    #[test]
    fn a_wrong_token_is_refused_with_and_without_a_key() {
        let key = ClusterKey::generate().unwrap();
        for keyed in [true, false] {
            let (addr, srv) = server(keyed.then(|| material(&key, 1)));
            let _ = client(addr, keyed.then(|| material(&key, 2)).as_ref(), 2);
            let refused = srv.join().unwrap();
            assert!(
                matches!(refused, Err(HandshakeError::Mismatch { .. })),
                "keyed {keyed}: {refused:?}"
            );
            assert!(refused.unwrap_err().to_string().contains("wrong token"));
        }
    }

    #[test]
    fn a_silent_peer_is_dropped_after_the_handshake_time_out() {
        let key = ClusterKey::generate().unwrap();
        for keyed in [true, false] {
            let (addr, srv) = server(keyed.then(|| material(&key, 1)));
            let _silent = TcpStream::connect(addr).unwrap();
            let start = Instant::now();
            let dropped = srv.join().unwrap();
            let took = start.elapsed();
            assert!(
                matches!(dropped, Err(HandshakeError::TimedOut)),
                "keyed {keyed}: {dropped:?}"
            );
            assert!(took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100), "{took:?}");
            assert!(took < HANDSHAKE_TIMEOUT + Duration::from_secs(1), "{took:?}");
        }
    }

    #[test]
    fn a_trickling_peer_cannot_stretch_the_handshake() {
        let (addr, srv) = server(None);
        let mut s = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        // A length prefix announcing a long frame, then a byte every 300 ms.
        s.write_all(&1000u32.to_le_bytes()).unwrap();
        let trickle = std::thread::spawn(move || {
            for _ in 0..15 {
                std::thread::sleep(Duration::from_millis(300));
                if s.write_all(&[1]).is_err() {
                    return;
                }
            }
        });
        let dropped = srv.join().unwrap();
        assert!(matches!(dropped, Err(HandshakeError::TimedOut)), "{dropped:?}");
        assert!(start.elapsed() < HANDSHAKE_TIMEOUT + Duration::from_secs(1));
        trickle.join().unwrap();
    }
}
