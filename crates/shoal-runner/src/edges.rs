//! The runner's two data-plane edges (SYSTEM.md §10.4): the acceptor that takes the previous rank's connection, and
//! the dialer of the next rank. Both run on their own threads and report on the compute loop's channel, so the loop
//! never blocks on a socket: in particular a dial of a dead address (a sibling's listener from before a restart)
//! does not hold up the `Connect` that names the sibling's new one (issue 13 item 5).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use crate::frame::read_frame;
use crate::proto::{DataFrame, Handshake};
use crate::runner::Input;
use crate::secure::{EdgeReader, EdgeWriter, TlsConfigs, accept, connect};

/// Dialling the next rank: each attempt, and all of them (§10.4).
const DIAL_ATTEMPT: Duration = Duration::from_secs(1);
const DIAL_TOTAL: Duration = Duration::from_secs(30);
/// The pause between rounds over the next rank's addresses.
const DIAL_ROUND_PAUSE: Duration = Duration::from_millis(100);
/// Handshakes in progress on one listener, each on its own thread; a connection past this is closed at once. The
/// previous rank's dial retries, and each pending handshake ends within the handshake time-out.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 16;

/// Accepts the previous rank's edge: the first connection whose handshake passes (`secure::accept`, within
/// `HANDSHAKE_TIMEOUT`) becomes the edge, and its frames go to the compute loop. Each handshake runs on its own
/// thread, so a silent or slow connection never holds up the next one. Once the edge is up, later connections are
/// closed at once (and logged); when the edge closes, the runner's ring is broken for good (as before).
pub(crate) fn spawn_acceptor(
    listener: TcpListener,
    expected: Handshake,
    tls: Option<Arc<TlsConfigs>>,
    tx: SyncSender<Input>,
) {
    // One slot: the first edge through wins; another that passes meanwhile is dropped.
    let (edge_tx, edge_rx) = sync_channel::<EdgeReader>(1);
    let established = Arc::new(AtomicBool::new(false));
    let pending = Arc::new(AtomicUsize::new(0));
    let up = established.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            if up.load(Ordering::Acquire) {
                tracing::warn!(peer = ?conn.peer_addr().ok(), "data-plane connection refused: the previous rank's edge is up");
                continue;
            }
            if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_HANDSHAKES {
                pending.fetch_sub(1, Ordering::AcqRel);
                tracing::warn!(peer = ?conn.peer_addr().ok(), "too many data-plane handshakes in progress; closing");
                continue;
            }
            let (expected, tls, edge_tx, pending) = (expected.clone(), tls.clone(), edge_tx.clone(), pending.clone());
            std::thread::spawn(move || {
                let peer = conn.peer_addr().ok();
                let result = accept(conn, tls.as_deref(), &expected);
                pending.fetch_sub(1, Ordering::AcqRel);
                match result {
                    Ok(edge) => hand_over(&edge_tx, edge, peer),
                    Err(error) => tracing::warn!(?peer, %error, "data-plane handshake refused; connection closed"),
                }
            });
        }
    });
    std::thread::spawn(move || {
        let Ok(mut r) = edge_rx.recv() else { return };
        established.store(true, Ordering::Release);
        drop(edge_rx);
        if tx.send(Input::PrevConnected).is_err() {
            return;
        }
        loop {
            match read_frame::<DataFrame>(&mut r) {
                Ok(Some(f)) => {
                    if tx.send(Input::Data(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(Input::DataClosed("the previous rank closed the connection".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Input::DataClosed(e.to_string()));
                    return;
                }
            }
        }
    });
}

fn hand_over(edge_tx: &SyncSender<EdgeReader>, edge: EdgeReader, peer: Option<SocketAddr>) {
    match edge_tx.try_send(edge) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            tracing::warn!(?peer, "a second previous-rank edge while one is up; closed");
        }
    }
}

/// The dials of the next rank, numbered; a new one supersedes the one in progress, which stops at its next round.
pub(crate) struct Dials {
    current: Arc<AtomicU64>,
    tx: SyncSender<Input>,
    tls: Option<Arc<TlsConfigs>>,
}

impl Dials {
    pub(crate) fn new(tx: SyncSender<Input>, tls: Option<Arc<TlsConfigs>>) -> Dials {
        Dials {
            current: Arc::new(AtomicU64::new(0)),
            tx,
            tls,
        }
    }

    /// Whether dial number `dial` is the latest.
    pub(crate) fn is_current(&self, dial: u64) -> bool {
        self.current.load(Ordering::Acquire) == dial
    }

    /// Dials `next` (every address, in rounds, for up to [`DIAL_TOTAL`]) and runs the handshake; the outcome comes
    /// back as `NextConnected` or `DialFailed` with this dial's number.
    pub(crate) fn start(&mut self, next: Vec<SocketAddr>, hello: Handshake) {
        let dial = self.current.fetch_add(1, Ordering::AcqRel) + 1;
        let current = self.current.clone();
        let tx = self.tx.clone();
        let tls = self.tls.clone();
        std::thread::spawn(move || {
            let superseded = || current.load(Ordering::Acquire) != dial;
            let input = match dial_rounds(&next, &hello, tls.as_deref(), superseded) {
                Some(Ok(edge)) => Input::NextConnected { dial, edge },
                Some(Err(reason)) => Input::DialFailed { dial, reason },
                None => return,
            };
            let _ = tx.send(input);
        });
    }
}

/// `None` when superseded. An address whose handshake fails (a stale port someone else now holds) counts as
/// unreachable: the next address, or the next round, is tried.
fn dial_rounds(
    next: &[SocketAddr],
    hello: &Handshake,
    tls: Option<&TlsConfigs>,
    superseded: impl Fn() -> bool,
) -> Option<Result<EdgeWriter, String>> {
    let deadline = Instant::now() + DIAL_TOTAL;
    let mut last = String::from("no address answered");
    loop {
        for addr in next {
            if superseded() {
                return None;
            }
            match TcpStream::connect_timeout(addr, DIAL_ATTEMPT) {
                Ok(s) => match connect(s, tls, hello) {
                    Ok(edge) => return Some(Ok(edge)),
                    Err(e) => last = format!("{addr}: handshake failed: {e}"),
                },
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if Instant::now() >= deadline {
            return Some(Err(format!("cannot reach the next rank at {next:?} ({last})")));
        }
        std::thread::sleep(DIAL_ROUND_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn hello() -> Handshake {
        Handshake {
            instance: "i".into(),
            rank: 0,
            world_size: 2,
            model: "m".into(),
            token: crate::proto::Token([7; 16]),
        }
    }

    /// A closed port: bound, then dropped, so connections are refused at once.
    fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_later_dial_supersedes_one_against_a_dead_address() {
        let (tx, rx) = sync_channel(crate::runner::RUNNER_INPUTS);
        let mut dials = Dials::new(tx, None);
        dials.start(vec![dead_addr()], hello());
        let live = TcpListener::bind("127.0.0.1:0").unwrap();
        dials.start(vec![live.local_addr().unwrap()], hello());
        let (mut conn, _) = live.accept().unwrap();
        let mut r = BufReader::new(&mut conn);
        assert!(matches!(read_frame::<DataFrame>(&mut r), Ok(Some(DataFrame::Handshake(h))) if h == hello()));
        match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
            Input::NextConnected { dial, .. } => assert!(dials.is_current(dial) && dial == 2),
            _ => panic!("expected the second dial's edge"),
        }
        // The first dial stops without a word.
        assert!(rx.recv_timeout(DIAL_ROUND_PAUSE * 5).is_err());
    }

    #[test]
    fn a_silent_connection_does_not_hold_up_the_real_previous_rank() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = sync_channel(crate::runner::RUNNER_INPUTS);
        spawn_acceptor(listener, hello(), None, tx.clone());
        let _silent = TcpStream::connect(addr).unwrap();
        let _plaintext_garbage = {
            use std::io::Write;
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            s
        };
        let start = Instant::now();
        let mut dials = Dials::new(tx, None);
        dials.start(vec![addr], hello());
        let mut prev_up = false;
        while !prev_up {
            match rx.recv_timeout(Duration::from_secs(5)).unwrap() {
                Input::PrevConnected => prev_up = true,
                Input::NextConnected { .. } => {}
                _ => panic!("unexpected input"),
            }
        }
        // Well before the silent connection's handshake time-out.
        assert!(
            start.elapsed() < crate::secure::HANDSHAKE_TIMEOUT / 2,
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn superseded_rounds_stop() {
        assert!(dial_rounds(&[dead_addr()], &hello(), None, || true).is_none());
    }
}
