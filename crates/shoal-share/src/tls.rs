//! Opening a transfer connection: with a cluster key, TLS 1.3 with mutual certificates from the cluster CA (rustls
//! with ring, like the data plane and zenoh's TLS link), then the hello; without a key, the hello in the clear. All of
//! it within [`HANDSHAKE_TIMEOUT`] of the accept (or dial), so a silent or trickling peer cannot hold a connection.
//!
//! (The TLS configuration mirrors `shoal-runner`'s data plane; both could move to `shoal-net` next to the key.)

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use shoal_net::cluster_key::{NODE_DNS_NAME, NodeTls};
use shoal_net::mutual_tls::{Deadline, HandshakeIoError, MutualTls, MutualTlsError};

use crate::wire::{self, WireError};

/// A connection whose handshake (TLS and hello) has not finished this long after it was accepted or dialled is
/// dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("invalid transfer TLS material: {0}")]
    Material(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Both sides' TLS configuration for a node, built once from its cluster certificate (the builder is
/// `shoal_net::mutual_tls`, shared with the runners' data plane). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShareTls(MutualTls);

impl std::ops::Deref for ShareTls {
    type Target = MutualTls;
    fn deref(&self) -> &MutualTls {
        &self.0
    }
}

impl ShareTls {
    /// From the node's certificate issued by the cluster CA ([`shoal_net::cluster_key::ClusterKey::issue_node_cert`]).
    /// Every certificate of the cluster carries [`NODE_DNS_NAME`]: that is the name the client checks, next to the
    /// chain to the CA (peers are dialled by IP).
    pub fn new(node: &NodeTls) -> Result<ShareTls, TlsSetupError> {
        MutualTls::new(&node.ca_pem, &node.cert_pem, &node.key_pem, NODE_DNS_NAME)
            .map(ShareTls)
            .map_err(|e| match e {
                MutualTlsError::Material(what) => TlsSetupError::Material(what),
                MutualTlsError::Tls(tls) => TlsSetupError::Tls(tls),
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no handshake within {} ms", HANDSHAKE_TIMEOUT.as_millis())]
    TimedOut,
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Malformed(&'static str),
    #[error("protocol version {0} (this node speaks {v})", v = wire::VERSION)]
    Version(u16),
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

impl From<WireError> for HandshakeError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Io(e) => e.into(),
            WireError::Malformed(what) => HandshakeError::Malformed(what),
        }
    }
}

/// An open transfer connection, either side.
pub(crate) enum Conn {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Server(s) => &s.sock,
            Conn::Client(s) => &s.sock,
        }
    }

    /// Read and write timeouts once the handshake is done.
    pub(crate) fn set_timeouts(&self, read: Duration, write: Duration) -> io::Result<()> {
        self.socket().set_read_timeout(Some(read))?;
        self.socket().set_write_timeout(Some(write))
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Server(s) => s.read(buf),
            Conn::Client(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Server(s) => s.write(buf),
            Conn::Client(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Server(s) => s.flush(),
            Conn::Client(s) => s.flush(),
        }
    }
}

/// The accepting side: TLS (with `tls`), then the client's hello, answered with ours.
pub(crate) fn accept(socket: TcpStream, tls: Option<&ShareTls>) -> Result<Conn, HandshakeError> {
    socket.set_nodelay(true)?;
    let mut io = Deadline::new(&socket, Instant::now() + HANDSHAKE_TIMEOUT);
    match tls {
        None => {
            let version = wire::read_hello(&mut io)?;
            io.write_all(&wire::hello())?;
            check_version(version)?;
            Ok(Conn::Plain(socket))
        }
        Some(tls) => {
            let mut conn = ServerConnection::new(tls.server.clone())?;
            drive_handshake(&mut conn, &mut io)?;
            let mut stream = rustls::Stream::new(&mut conn, &mut io);
            let version = wire::read_hello(&mut stream)?;
            stream.write_all(&wire::hello())?;
            stream.flush()?;
            check_version(version)?;
            Ok(Conn::Server(Box::new(StreamOwned::new(conn, socket))))
        }
    }
}

/// The dialling side: TLS (with `tls`, checking the server's certificate against the cluster CA), our hello, then
/// the server's.
pub(crate) fn connect(socket: TcpStream, tls: Option<&ShareTls>) -> Result<Conn, HandshakeError> {
    socket.set_nodelay(true)?;
    let mut io = Deadline::new(&socket, Instant::now() + HANDSHAKE_TIMEOUT);
    match tls {
        None => {
            io.write_all(&wire::hello())?;
            check_version(wire::read_hello(&mut io)?)?;
            Ok(Conn::Plain(socket))
        }
        Some(tls) => {
            let mut conn = ClientConnection::new(tls.client.clone(), tls.name.clone())?;
            drive_handshake(&mut conn, &mut io)?;
            let mut stream = rustls::Stream::new(&mut conn, &mut io);
            stream.write_all(&wire::hello())?;
            stream.flush()?;
            check_version(wire::read_hello(&mut stream)?)?;
            Ok(Conn::Client(Box::new(StreamOwned::new(conn, socket))))
        }
    }
}

fn drive_handshake<C, D>(conn: &mut C, io: &mut Deadline<'_>) -> Result<(), HandshakeError>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    D: rustls::SideData,
{
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(io) {
            // Best effort: the alert tells the peer why.
            let _ = conn.write_tls(io);
            return Err(e.into());
        }
    }
    Ok(())
}

fn check_version(version: u16) -> Result<(), HandshakeError> {
    if version == wire::VERSION {
        Ok(())
    } else {
        Err(HandshakeError::Version(version))
    }
}
