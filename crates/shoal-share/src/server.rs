//! [`FileServer`]: serves byte ranges of the files a node holds, looked up by sha256 through the caller's catalogue,
//! on its own TCP listener (the bulk channel: never zenoh, so a transfer cannot delay control traffic).
//!
//! One blocking thread per connection, at most [`ServerOptions::max_connections`]; a connection over the limit is
//! closed at once. Each connection: the handshake ([`crate::tls`]) and the first request within 2 s each, then
//! requests until the client closes, [`IDLE_TIMEOUT`] passes without one, a request is malformed or refused. The
//! plain path sends with `sendfile` (no copy through user space); the TLS path reads the file in pieces and encrypts
//! them.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, warn};

use crate::tls::{self, Conn, HANDSHAKE_TIMEOUT, ShareTls};
use crate::wire::{self, MAX_REQUEST_LENGTH, Request, Response, Status, WireError};

/// Default bound on simultaneous upload connections (every peer fetching from this node holds one).
pub const MAX_UPLOAD_CONNECTIONS: usize = 32;
/// A connection that sends no request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A send that makes no progress for this long (a client that stopped reading) closes the connection.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The TLS path reads the file in pieces of this size (rustls splits them into 16 KiB records).
const TLS_SEND_BUFFER: usize = 256 << 10;
/// Largest single `sendfile` call (the kernel caps one call near 2 GiB anyway).
#[cfg(target_os = "linux")]
const SENDFILE_MAX: usize = 1 << 30;
/// How long `shutdown` waits to wake the acceptor by dialling it.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// Maps a sha256 (64 lowercase hex digits) to the path of a verified file this node holds. Asked at every request,
/// so the node may change what it holds at any time.
pub type Catalogue = Arc<dyn Fn(&str) -> Option<PathBuf> + Send + Sync>;
/// Decides whether `token` (first argument) may read the file of `sha256` (second argument, lowercase hex).
pub type Authoriser = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// What a [`FileServer`] serves and to whom.
#[derive(Clone)]
pub struct ServerOptions {
    /// With a cluster key: TLS 1.3 with mutual certificates from the cluster CA; without, plaintext.
    pub tls: Option<ShareTls>,
    pub catalogue: Catalogue,
    /// Asked at every request, with or without TLS (with a key the certificate already proves membership: the caller
    /// may accept any token then).
    pub authorise: Authoriser,
    pub max_connections: usize,
}

impl ServerOptions {
    pub fn new(catalogue: Catalogue, authorise: Authoriser) -> ServerOptions {
        ServerOptions {
            tls: None,
            catalogue,
            authorise,
            max_connections: MAX_UPLOAD_CONNECTIONS,
        }
    }

    pub fn with_tls(mut self, tls: Option<ShareTls>) -> ServerOptions {
        self.tls = tls;
        self
    }
}

/// A snapshot of a server's counters since it started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted (within the limit).
    pub connections: u64,
    /// Connections closed at once because [`ServerOptions::max_connections`] were open.
    pub over_limit: u64,
    /// Connections dropped at the handshake: TLS refused (plaintext, foreign CA), no hello within 2 s, bad hello.
    pub handshake_failures: u64,
    pub requests: u64,
    /// File bytes sent.
    pub bytes_served: u64,
    /// Requests whose token the authoriser refused.
    pub refusals: u64,
    pub not_held: u64,
    pub bad_ranges: u64,
    /// Requests that could not be parsed (the connection was closed).
    pub malformed: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    over_limit: AtomicU64,
    handshake_failures: AtomicU64,
    requests: AtomicU64,
    bytes_served: AtomicU64,
    refusals: AtomicU64,
    not_held: AtomicU64,
    bad_ranges: AtomicU64,
    malformed: AtomicU64,
}

fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

struct Shared {
    options: ServerOptions,
    counters: Counters,
    stop: AtomicBool,
    /// The open connections (a clone of each socket), so `shutdown` can close them.
    live: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running file server; stopped (listener and live connections closed) by [`FileServer::shutdown`] or on drop.
pub struct FileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Binds `addr` (port 0 picks a free port: see [`FileServer::local_addr`]) and starts accepting.
    pub fn start(addr: SocketAddr, options: ServerOptions) -> io::Result<FileServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            options,
            counters: Counters::default(),
            stop: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("shoal-share-accept".into())
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(FileServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The bound address (with the port the system picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ServerStats {
            connections: get(&c.connections),
            over_limit: get(&c.over_limit),
            handshake_failures: get(&c.handshake_failures),
            requests: get(&c.requests),
            bytes_served: get(&c.bytes_served),
            refusals: get(&c.refusals),
            not_held: get(&c.not_held),
            bad_ranges: get(&c.bad_ranges),
            malformed: get(&c.malformed),
        }
    }

    /// Open connections now.
    pub fn open_connections(&self) -> usize {
        self.shared.live().len()
    }

    /// Stops accepting and closes every open connection (a transfer in progress fails on the client's side, which
    /// takes its chunk elsewhere).
    pub fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept by dialling it (the loopback address when bound to every address).
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woke = TcpStream::connect_timeout(&wake, WAKE_TIMEOUT).is_ok();
        if woke {
            let _ = acceptor.join();
        } else {
            warn!(addr = %self.addr, "could not wake the file server's acceptor; it stops at its next connection");
        }
        for (_, socket) in self.shared.live().drain() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for incoming in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let socket = match incoming {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                debug!(error = %e, "file server accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        {
            let mut live = shared.live();
            if live.len() >= shared.options.max_connections {
                bump(&shared.counters.over_limit, 1);
                continue;
            }
            match socket.try_clone() {
                Ok(clone) => live.insert(id, clone),
                Err(_) => continue,
            };
        }
        bump(&shared.counters.connections, 1);
        let conn_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("shoal-share-upload".into())
            .spawn(move || {
                serve_connection(&conn_shared, socket);
                conn_shared.live().remove(&id);
            });
        if spawned.is_err() {
            shared.live().remove(&id);
        }
    }
}

fn serve_connection(shared: &Shared, socket: TcpStream) {
    let peer = socket.peer_addr().ok();
    let mut conn = match tls::accept(socket, shared.options.tls.as_ref()) {
        Ok(conn) => conn,
        Err(e) => {
            bump(&shared.counters.handshake_failures, 1);
            debug!(?peer, error = %e, "file transfer handshake refused");
            return;
        }
    };
    // The first request is due as soon as the hello: a connection that never asks for anything holds a slot no
    // longer than the handshake would.
    if conn.set_timeouts(HANDSHAKE_TIMEOUT, SEND_TIMEOUT).is_err() {
        return;
    }
    let mut first = true;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let request = match wire::read_request(&mut conn) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(WireError::Malformed(what)) => {
                bump(&shared.counters.malformed, 1);
                debug!(?peer, what, "malformed file request; closing");
                return;
            }
            // Idle timeout, reset, truncated request: nothing to answer.
            Err(WireError::Io(_)) => return,
        };
        bump(&shared.counters.requests, 1);
        match answer(shared, &mut conn, &request) {
            Ok(Status::Refused) => {
                // An unauthorised client gets its answer and no second try on this connection.
                debug!(?peer, "file request refused; closing");
                return;
            }
            Ok(_) => {
                if std::mem::take(&mut first) && conn.set_timeouts(IDLE_TIMEOUT, SEND_TIMEOUT).is_err() {
                    return;
                }
            }
            Err(e) => {
                debug!(?peer, error = %e, "file transfer connection ended");
                return;
            }
        }
    }
}

/// Answers one request with the status it got; an error ends the connection.
fn answer(shared: &Shared, conn: &mut Conn, request: &Request) -> io::Result<Status> {
    let c = &shared.counters;
    let sha = hex::encode(request.sha256);
    let refuse = |conn: &mut Conn, status: Status, total: u64| {
        wire::write_response(
            conn,
            &Response {
                status,
                total,
                length: 0,
            },
        )
        .map(|()| status)
    };
    // The token first: a refused client learns nothing about what this node holds.
    if !(shared.options.authorise)(&request.token, &sha) {
        bump(&c.refusals, 1);
        return refuse(conn, Status::Refused, 0);
    }
    let file = (shared.options.catalogue)(&sha).and_then(|path| File::open(path).ok());
    let Some(mut file) = file else {
        bump(&c.not_held, 1);
        return refuse(conn, Status::NotHeld, 0);
    };
    let total = file.metadata()?.len();
    let in_range = request
        .offset
        .checked_add(request.length)
        .is_some_and(|end| end <= total);
    if request.length == 0 || request.length > MAX_REQUEST_LENGTH || !in_range {
        bump(&c.bad_ranges, 1);
        return refuse(conn, Status::BadRange, total);
    }
    wire::write_response(
        conn,
        &Response {
            status: Status::Ok,
            total,
            length: request.length,
        },
    )?;
    let sent = match conn {
        Conn::Plain(socket) => send_plain(&mut file, socket, request.offset, request.length)?,
        tls => {
            file.seek(SeekFrom::Start(request.offset))?;
            send_buffered(&mut file, tls, request.length)?
        }
    };
    bump(&c.bytes_served, sent);
    if sent != request.length {
        // The file shrank under us: the client sees a short read and takes the chunk elsewhere.
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file shrank while being served",
        ));
    }
    Ok(Status::Ok)
}

/// The plain path: `sendfile`, the kernel copies from the page cache to the socket (no copy through user space; std's
/// `io::copy` does not do this for sockets).
#[cfg(target_os = "linux")]
fn send_plain(file: &mut File, socket: &mut TcpStream, offset: u64, length: u64) -> io::Result<u64> {
    let end = offset.saturating_add(length);
    let mut at = offset;
    while at < end {
        let want = usize::try_from(end - at).unwrap_or(usize::MAX).min(SENDFILE_MAX);
        // The kernel advances `at` by what it sent.
        match rustix::fs::sendfile(&*socket, &*file, Some(&mut at), want) {
            Ok(0) => break,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(at - offset)
}

#[cfg(not(target_os = "linux"))]
fn send_plain(file: &mut File, socket: &mut TcpStream, offset: u64, length: u64) -> io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut conn_buf = vec![0u8; TLS_SEND_BUFFER];
    let mut sent = 0u64;
    while sent < length {
        let want = usize::try_from(length - sent).unwrap_or(usize::MAX).min(conn_buf.len());
        let n = file.read(&mut conn_buf[..want])?;
        if n == 0 {
            break;
        }
        socket.write_all(&conn_buf[..n])?;
        sent += n as u64;
    }
    Ok(sent)
}

fn send_buffered(file: &mut File, conn: &mut Conn, length: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; TLS_SEND_BUFFER];
    let mut sent = 0u64;
    while sent < length {
        let want = usize::try_from(length - sent).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        conn.write_all(&buf[..n])?;
        sent += n as u64;
    }
    conn.flush()?;
    Ok(sent)
}
