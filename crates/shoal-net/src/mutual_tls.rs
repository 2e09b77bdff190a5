//! The TLS both of shoal's own TCP planes use under a cluster key: the runners' data plane (`shoal-runner`'s
//! `secure.rs`) and model-file transfers (`shoal-share`). TLS 1.3 only, rustls with ring (the provider zenoh's TLS
//! link already builds), mutual certificates from the cluster CA, no session resumption (connections are few and
//! long). Plus [`Deadline`], the socket wrapper that bounds a handshake.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum MutualTlsError {
    #[error("invalid TLS material: {0}")]
    Material(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Both sides' configuration for one node's certificate, and the name a dialling side checks. Cheap to clone.
#[derive(Clone)]
pub struct MutualTls {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for MutualTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutualTls")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl MutualTls {
    /// From the cluster CA's certificate, this node's certificate chain and key (PEM), and the name every
    /// certificate of the cluster carries (peers are dialled by IP).
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str, server_name: &str) -> Result<MutualTls, MutualTlsError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| MutualTlsError::Material(format!("{what}: {e}"));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad("CA certificate", &e))?;
        roots.add(ca).map_err(|e| bad("CA certificate", &e))?;
        let roots = Arc::new(roots);
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate", &e))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad("private key", &e))?;
        let name = ServerName::try_from(server_name.to_owned()).map_err(|e| bad("server name", &e))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad("client verifier", &e))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        // No session tickets to send, nor resumption to offer.
        server.send_tls13_tickets = 0;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(MutualTls {
            server: Arc::new(server),
            client: Arc::new(client),
            name,
        })
    }
}

/// What an I/O error met while driving a handshake through a [`Deadline`] socket means.
#[derive(Debug)]
pub enum HandshakeIoError {
    /// The deadline passed (the socket's timeout fired).
    TimedOut,
    /// rustls refused the peer (it reports its own failures through `io::Error` while driving the connection).
    Tls(rustls::Error),
    /// Any other failure of the socket.
    Io(io::Error),
}

impl From<io::Error> for HandshakeIoError {
    fn from(e: io::Error) -> Self {
        if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) {
            return HandshakeIoError::TimedOut;
        }
        match e.downcast::<rustls::Error>() {
            Ok(tls) => HandshakeIoError::Tls(tls),
            Err(e) => HandshakeIoError::Io(e),
        }
    }
}

/// A socket with a deadline for every read and write: each call gets only the time left, so a peer that trickles
/// bytes cannot stretch a handshake past it.
pub struct Deadline<'a> {
    socket: &'a TcpStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    pub fn new(socket: &'a TcpStream, until: Instant) -> Deadline<'a> {
        Deadline { socket, until }
    }

    fn left(&self) -> io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(left)
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        let mut socket = self.socket;
        socket.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        let mut socket = self.socket;
        socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
