//! [`fetch`]: one file from the peers that hold it, in chunks pulled from several peers at once, resumable, verified
//! by sha256 before the atomic rename into place.
//!
//! A round runs one worker thread per peer (at most [`FetchOptions::parallel`]); workers take chunks from one shared
//! queue, write them at their offsets into the partial file ([`crate::partial`]) and record them once synced. A peer
//! that fails (connect, handshake, refusal, reset, timeout, short read) gives its chunk back to the queue and is
//! dropped for this fetch; its worker goes on with a spare peer if there is one. A hasher thread follows the
//! completed chunks in file order, so the whole-file sha256 is ready soon after the last chunk lands.
//!
//! When the whole file does not match its sha256, some peer served bad bytes but the hash cannot say which: the
//! fetch retries one peer at a time for the whole file, comparing each chunk with what the partial file holds before
//! overwriting it. When a peer's copy verifies, every peer that had served a chunk that differs from it is proven
//! corrupt and reported; a peer whose own copy fails the hash is corrupt too.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::partial::{Layout, LocalIoError, MAX_CHUNKS, Partial};
use crate::spec::{CONNECT_TIMEOUT, DropReason, DroppedPeer, FetchError, FetchOptions, FetchReport, FileSpec, Peer};
use crate::tls::{self, Conn};
use crate::wire::{self, MAX_REQUEST_LENGTH, MAX_TOKEN_LEN, Request, Status, WireError};

/// Bytes read from the socket (and written to the partial file) at a time; the cancel flag is checked as often.
const RECV_BUFFER: usize = 1 << 20;
/// The hasher reads the partial file back in pieces of this size.
const HASH_BUFFER: usize = 1 << 20;
/// A worker waiting for a chunk to be given back checks the cancel flag this often.
const CANCEL_POLL: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fetches `spec` from `peers` into `spec.path`; see the module documentation. Blocks until the file is installed,
/// every peer failed, or `options.cancel` is set. Nothing is ever at `spec.path` but the verified file. One fetch per
/// destination at a time (the caller's to ensure).
pub fn fetch(spec: &FileSpec, peers: &[Peer], options: &FetchOptions<'_>) -> Result<FetchReport, FetchError> {
    let sha256 = wire::parse_sha256(&spec.sha256).ok_or_else(|| FetchError::InvalidSha256(spec.sha256.clone()))?;
    if options.chunk_size == 0 || options.chunk_size > MAX_REQUEST_LENGTH {
        return Err(FetchError::InvalidOptions(format!(
            "chunk size {} is not within 1..={MAX_REQUEST_LENGTH}",
            options.chunk_size
        )));
    }
    if spec.size.div_ceil(options.chunk_size) > MAX_CHUNKS {
        return Err(FetchError::InvalidOptions(format!(
            "{} bytes in chunks of {} is more than {MAX_CHUNKS} chunks",
            spec.size, options.chunk_size
        )));
    }
    if options.token.len() > MAX_TOKEN_LEN {
        return Err(FetchError::InvalidOptions(format!(
            "the token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    if let Some(dir) = spec.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| LocalIoError {
            path: dir.to_owned(),
            source,
        })?;
    }
    let layout = Layout {
        size: spec.size,
        chunk_size: options.chunk_size,
    };
    let (partial, done) = Partial::open(&spec.path, &sha256, layout)?;
    let resumed: u64 = (0..layout.chunks())
        .filter(|&c| done[c])
        .map(|c| layout.range(c).1)
        .sum();
    if resumed > 0 {
        info!(file = %spec.path.display(), resumed, "resuming a peer fetch");
    }
    let job = Job {
        spec,
        sha256,
        peers,
        options,
        layout,
        partial,
        resumed,
        alive: Mutex::new(vec![true; peers.len()]),
        dropped: Mutex::new(Vec::new()),
        origin: Mutex::new(vec![None; layout.chunks()]),
        fetched: AtomicU64::new(0),
        received_from: peers.iter().map(|_| AtomicU64::new(0)).collect(),
        progress: AtomicU64::new(resumed),
    };

    match job.round((0..peers.len()).collect(), done, false)? {
        Outcome::Cancelled => return Err(job.cancelled()),
        Outcome::Incomplete => {
            return Err(FetchError::NoPeer {
                dropped: job.take_dropped(),
            });
        }
        Outcome::Complete { digest, .. } if digest == sha256 => return job.finish(0),
        Outcome::Complete { .. } => {
            warn!(file = %spec.path.display(), "sha256 mismatch after a multi-peer fetch; retrying one peer at a time");
        }
    }
    let mut rounds = 0;
    loop {
        let Some(p) = job.next_alive() else {
            let dropped = job.take_dropped();
            job.partial.discard();
            return Err(FetchError::Corrupt { dropped });
        };
        rounds += 1;
        job.partial.forget_all()?;
        job.progress.store(0, Ordering::Relaxed);
        let before = lock(&job.origin).clone();
        match job.round(vec![p], vec![false; layout.chunks()], true)? {
            Outcome::Cancelled => return Err(job.cancelled()),
            // `p` failed and was dropped: the next one (dropped here too, so no peer is asked twice).
            Outcome::Incomplete => job.drop_peer(p, DropReason::Protocol("left the file incomplete".into())),
            Outcome::Complete { digest, differs } if digest == sha256 => {
                // `p`'s copy is the file: whoever served a chunk that differs from it served bad bytes.
                for (c, _) in differs.iter().enumerate().filter(|(_, d)| **d) {
                    match before[c] {
                        Some(q) if q != p => job.drop_peer(q, DropReason::Corrupt),
                        Some(_) => {}
                        None => debug!(chunk = c, "a chunk of unknown origin (resumed or cut midway) differed"),
                    }
                }
                return job.finish(rounds);
            }
            Outcome::Complete { .. } => job.drop_peer(p, DropReason::Corrupt),
        }
    }
}

enum Outcome {
    /// Every chunk is on disk; the whole file's sha256, and (comparing rounds) which chunks differed from before.
    Complete {
        digest: [u8; 32],
        differs: Vec<bool>,
    },
    /// Chunks remain and no peer is left to serve them.
    Incomplete,
    Cancelled,
}

/// One fetch's state across its rounds.
struct Job<'a> {
    spec: &'a FileSpec,
    sha256: [u8; 32],
    peers: &'a [Peer],
    options: &'a FetchOptions<'a>,
    layout: Layout,
    partial: Partial,
    resumed: u64,
    alive: Mutex<Vec<bool>>,
    dropped: Mutex<Vec<DroppedPeer>>,
    /// Which peer wrote each chunk now in the partial file (`None`: resumed, or cut midway).
    origin: Mutex<Vec<Option<usize>>>,
    fetched: AtomicU64,
    received_from: Vec<AtomicU64>,
    progress: AtomicU64,
}

/// The chunk queue of one round.
struct Board {
    pending: VecDeque<usize>,
    in_flight: usize,
    done: Vec<bool>,
    /// Every worker has exited.
    finished: bool,
    cancelled: bool,
    /// A failure on our own files: the round stops.
    local: Option<LocalIoError>,
}

impl Board {
    fn stopped(&self) -> bool {
        self.cancelled || self.local.is_some()
    }
}

struct Round {
    board: Mutex<Board>,
    changed: Condvar,
    /// Peers not yet taken by a worker.
    spares: Mutex<VecDeque<usize>>,
    /// Compare each chunk with the partial file's bytes before overwriting it.
    compare: bool,
    differs: Mutex<Vec<bool>>,
}

/// Why a worker stops using its peer.
enum Fail {
    Peer(DropReason),
    /// Cancelled or a local failure: the round is over.
    Stop,
}

impl From<DropReason> for Fail {
    fn from(r: DropReason) -> Fail {
        Fail::Peer(r)
    }
}

impl<'a> Job<'a> {
    fn round(&self, peers: Vec<usize>, done: Vec<bool>, compare: bool) -> Result<Outcome, LocalIoError> {
        let chunks = done.len();
        let round = Round {
            board: Mutex::new(Board {
                pending: (0..chunks).filter(|&c| !done[c]).collect(),
                in_flight: 0,
                done,
                finished: false,
                cancelled: false,
                local: None,
            }),
            changed: Condvar::new(),
            spares: Mutex::new(peers.into()),
            compare,
            differs: Mutex::new(vec![false; chunks]),
        };
        let workers = self.options.parallel.max(1).min(lock(&round.spares).len());
        let digest = std::thread::scope(|s| {
            let hasher = s.spawn(|| self.hash_in_order(&round));
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(|| self.worker(&round))).collect();
            for h in handles {
                let _ = h.join();
            }
            lock(&round.board).finished = true;
            round.changed.notify_all();
            hasher.join()
        });
        let mut board = lock(&round.board);
        if let Some(e) = board.local.take() {
            return Err(e);
        }
        let digest = match digest {
            Ok(d) => d?,
            Err(_) => None,
        };
        if board.cancelled {
            return Ok(Outcome::Cancelled);
        }
        Ok(match digest {
            Some(digest) => Outcome::Complete {
                digest,
                differs: std::mem::take(&mut *lock(&round.differs)),
            },
            None => Outcome::Incomplete,
        })
    }

    /// One worker: a peer at a time until no chunk is left, the round stops, or no spare peer is left.
    fn worker(&self, round: &Round) {
        loop {
            if self.nothing_left(round) {
                return;
            }
            let Some(p) = lock(&round.spares).pop_front() else {
                return;
            };
            match self.serve_from(p, round) {
                Ok(()) | Err(Fail::Stop) => return,
                Err(Fail::Peer(reason)) => self.drop_peer(p, reason),
            }
        }
    }

    fn nothing_left(&self, round: &Round) -> bool {
        let b = lock(&round.board);
        b.stopped() || (b.pending.is_empty() && b.in_flight == 0)
    }

    fn serve_from(&self, p: usize, round: &Round) -> Result<(), Fail> {
        let peer = &self.peers[p];
        let socket =
            TcpStream::connect_timeout(&peer.addr, CONNECT_TIMEOUT).map_err(|e| DropReason::Connect(e.to_string()))?;
        let mut conn =
            tls::connect(socket, self.options.tls.as_ref()).map_err(|e| DropReason::Handshake(e.to_string()))?;
        conn.set_timeouts(self.options.io_timeout, self.options.io_timeout)
            .map_err(|e| DropReason::Connect(e.to_string()))?;
        debug!(peer = %peer.node, addr = %peer.addr, "fetching from peer");
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut old = if round.compare {
            vec![0u8; RECV_BUFFER]
        } else {
            Vec::new()
        };
        while let Some(c) = self.take(round) {
            let mut received = 0;
            match self.fetch_chunk(&mut conn, p, c, round, &mut buf, &mut old, &mut received) {
                Ok(()) => {
                    if let Err(e) = self.partial.mark_done(c) {
                        self.stop_round(round, e);
                        return Err(Fail::Stop);
                    }
                    lock(&self.origin)[c] = Some(p);
                    let mut b = lock(&round.board);
                    b.in_flight -= 1;
                    b.done[c] = true;
                    drop(b);
                    round.changed.notify_all();
                }
                Err(fail) => {
                    // Some of its bytes may be on disk: nobody in particular wrote this chunk now.
                    if received > 0 {
                        lock(&self.origin)[c] = None;
                    }
                    self.progress.fetch_sub(received, Ordering::Relaxed);
                    let mut b = lock(&round.board);
                    b.in_flight -= 1;
                    b.pending.push_front(c);
                    drop(b);
                    round.changed.notify_all();
                    return Err(fail);
                }
            }
        }
        Ok(())
    }

    /// The next chunk to fetch; `None` when none is left (or the round stops). Waits while chunks are in flight
    /// elsewhere: one may come back.
    fn take(&self, round: &Round) -> Option<usize> {
        let mut b = lock(&round.board);
        loop {
            if self.is_cancelled() {
                b.cancelled = true;
                round.changed.notify_all();
            }
            if b.stopped() {
                return None;
            }
            if let Some(c) = b.pending.pop_front() {
                b.in_flight += 1;
                return Some(c);
            }
            if b.in_flight == 0 {
                return None;
            }
            b = round
                .changed
                .wait_timeout(b, CANCEL_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fetch_chunk(
        &self,
        conn: &mut Conn,
        p: usize,
        c: usize,
        round: &Round,
        buf: &mut [u8],
        old: &mut [u8],
        received: &mut u64,
    ) -> Result<(), Fail> {
        let (offset, length) = self.layout.range(c);
        let request = wire::encode_request(&Request {
            sha256: self.sha256,
            offset,
            length,
            token: self.options.token.clone(),
        })
        .ok_or_else(|| DropReason::Protocol("token too long".into()))?;
        let transfer = |e: std::io::Error| DropReason::Transfer(e.to_string());
        conn.write_all(&request).and_then(|()| conn.flush()).map_err(transfer)?;
        let response = wire::read_response(conn).map_err(|e| match e {
            WireError::Io(e) => DropReason::Transfer(e.to_string()),
            WireError::Malformed(what) => DropReason::Protocol(what.into()),
        })?;
        match response.status {
            Status::Ok => {}
            Status::NotHeld => return Err(DropReason::NotHeld.into()),
            Status::Refused => return Err(DropReason::Refused.into()),
            Status::BadRange => return Err(DropReason::BadRange.into()),
        }
        if response.total != self.spec.size {
            return Err(DropReason::SizeMismatch { served: response.total }.into());
        }
        if response.length != length {
            return Err(DropReason::Protocol(format!("asked for {length} bytes, offered {}", response.length)).into());
        }
        let mut got = 0u64;
        while got < length {
            if self.is_cancelled() {
                return Err(Fail::Stop);
            }
            let n = usize::try_from(length - got).unwrap_or(usize::MAX).min(buf.len());
            conn.read_exact(&mut buf[..n]).map_err(transfer)?;
            let at = offset + got;
            if round.compare {
                let differs = self
                    .partial
                    .file
                    .read_exact_at(&mut old[..n], at)
                    .map_or(true, |()| old[..n] != buf[..n]);
                if differs {
                    lock(&round.differs)[c] = true;
                }
            }
            if let Err(source) = self.partial.file.write_all_at(&buf[..n], at) {
                self.stop_round(
                    round,
                    LocalIoError {
                        path: self.partial.part.clone(),
                        source,
                    },
                );
                return Err(Fail::Stop);
            }
            got += n as u64;
            *received += n as u64;
            self.fetched.fetch_add(n as u64, Ordering::Relaxed);
            self.received_from[p].fetch_add(n as u64, Ordering::Relaxed);
            let done = self.progress.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if let Some(progress) = self.options.progress {
                progress(done, self.spec.size);
            }
        }
        Ok(())
    }

    /// Hashes the partial file chunk by chunk in file order as chunks complete; `None` when the round ends first.
    fn hash_in_order(&self, round: &Round) -> Result<Option<[u8; 32]>, LocalIoError> {
        let mut sha = Sha256::new();
        let mut buf = vec![0u8; HASH_BUFFER];
        for c in 0..self.layout.chunks() {
            {
                let mut b = lock(&round.board);
                while !b.done[c] {
                    if b.finished || b.stopped() {
                        return Ok(None);
                    }
                    b = round.changed.wait(b).unwrap_or_else(PoisonError::into_inner);
                }
            }
            let (offset, length) = self.layout.range(c);
            let mut read = 0u64;
            while read < length {
                let n = usize::try_from(length - read).unwrap_or(usize::MAX).min(buf.len());
                self.partial
                    .file
                    .read_exact_at(&mut buf[..n], offset + read)
                    .map_err(|source| LocalIoError {
                        path: self.partial.part.clone(),
                        source,
                    })?;
                sha.update(&buf[..n]);
                read += n as u64;
            }
        }
        Ok(Some(sha.finalize().into()))
    }

    fn stop_round(&self, round: &Round, e: LocalIoError) {
        let mut b = lock(&round.board);
        b.local.get_or_insert(e);
        drop(b);
        round.changed.notify_all();
    }

    fn is_cancelled(&self) -> bool {
        self.options.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn drop_peer(&self, p: usize, reason: DropReason) {
        let mut alive = lock(&self.alive);
        if !alive.get(p).copied().unwrap_or(false) {
            return;
        }
        alive[p] = false;
        let peer = &self.peers[p];
        warn!(peer = %peer.node, addr = %peer.addr, %reason, "dropped a peer for this fetch");
        lock(&self.dropped).push(DroppedPeer {
            node: peer.node.clone(),
            addr: peer.addr,
            reason,
        });
    }

    fn next_alive(&self) -> Option<usize> {
        lock(&self.alive).iter().position(|&a| a)
    }

    fn take_dropped(&self) -> Vec<DroppedPeer> {
        std::mem::take(&mut *lock(&self.dropped))
    }

    fn cancelled(&self) -> FetchError {
        FetchError::Cancelled {
            fetched_bytes: self.fetched.load(Ordering::Relaxed),
            dropped: self.take_dropped(),
        }
    }

    fn finish(self, single_peer_rounds: usize) -> Result<FetchReport, FetchError> {
        let report = FetchReport {
            fetched_bytes: self.fetched.load(Ordering::Relaxed),
            resumed_bytes: self.resumed,
            received_from: self
                .peers
                .iter()
                .zip(&self.received_from)
                .map(|(peer, n)| (peer.node.clone(), n.load(Ordering::Relaxed)))
                .collect(),
            dropped: self.take_dropped(),
            single_peer_rounds,
        };
        let path = self.spec.path.clone();
        self.partial.install(&path)?;
        info!(file = %path.display(), fetched = report.fetched_bytes, dropped = report.dropped.len(), "peer fetch verified and installed");
        Ok(report)
    }
}
