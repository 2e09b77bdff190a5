//! The runner's two data-plane edges (SYSTEM.md §10.4): the acceptor that takes the previous rank's connection, and
//! the dialer of the next rank. Both run on their own threads and report on the compute loop's channel, so the loop
//! never blocks on a socket: in particular a dial of a dead address (a sibling's listener from before a restart)
//! does not hold up the `Connect` that names the sibling's new one (issue 13 item 5).

use std::io::{BufReader, BufWriter};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use crate::frame::{read_frame, write_frame};
use crate::proto::{DataFrame, Handshake};
use crate::runner::Input;

/// Dialling the next rank: each attempt, and all of them (§10.4).
const DIAL_ATTEMPT: Duration = Duration::from_secs(1);
const DIAL_TOTAL: Duration = Duration::from_secs(30);
/// The pause between rounds over the next rank's addresses.
const DIAL_ROUND_PAUSE: Duration = Duration::from_millis(100);
/// The receive buffer of the previous rank's edge, and the send buffer of the next rank's: one activation frame.
const EDGE_BUFFER: usize = 1 << 20;

/// Accepts the previous rank's edge: the first connection whose handshake matches; others are closed.
pub(crate) fn spawn_acceptor(listener: TcpListener, expected: Handshake, tx: Sender<Input>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let _ = conn.set_nodelay(true);
            let mut r = BufReader::with_capacity(EDGE_BUFFER, conn);
            match read_frame::<DataFrame>(&mut r) {
                Ok(Some(DataFrame::Handshake(h))) if h == expected => {}
                other => {
                    tracing::warn!(?other, ?expected, "data-plane handshake mismatch; closing the edge");
                    continue;
                }
            }
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
        }
    });
}

/// The dials of the next rank, numbered; a new one supersedes the one in progress, which stops at its next round.
pub(crate) struct Dials {
    current: Arc<AtomicU64>,
    tx: Sender<Input>,
}

impl Dials {
    pub(crate) fn new(tx: Sender<Input>) -> Dials {
        Dials {
            current: Arc::new(AtomicU64::new(0)),
            tx,
        }
    }

    /// Whether dial number `dial` is the latest.
    pub(crate) fn is_current(&self, dial: u64) -> bool {
        self.current.load(Ordering::Acquire) == dial
    }

    /// Dials `next` (every address, in rounds, for up to [`DIAL_TOTAL`]) and sends the handshake; the outcome comes
    /// back as `NextConnected` or `DialFailed` with this dial's number.
    pub(crate) fn start(&mut self, next: Vec<SocketAddr>, hello: Handshake) {
        let dial = self.current.fetch_add(1, Ordering::AcqRel) + 1;
        let current = self.current.clone();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let superseded = || current.load(Ordering::Acquire) != dial;
            let input = match dial_rounds(&next, &hello, superseded) {
                Some(Ok(edge)) => Input::NextConnected { dial, edge },
                Some(Err(reason)) => Input::DialFailed { dial, reason },
                None => return,
            };
            let _ = tx.send(input);
        });
    }
}

/// `None` when superseded.
fn dial_rounds(
    next: &[SocketAddr],
    hello: &Handshake,
    superseded: impl Fn() -> bool,
) -> Option<Result<BufWriter<TcpStream>, String>> {
    let deadline = Instant::now() + DIAL_TOTAL;
    loop {
        for addr in next {
            if superseded() {
                return None;
            }
            if let Ok(s) = TcpStream::connect_timeout(addr, DIAL_ATTEMPT) {
                return Some(handshake(s, hello));
            }
        }
        if Instant::now() >= deadline {
            return Some(Err(format!("cannot reach the next rank at {next:?}")));
        }
        std::thread::sleep(DIAL_ROUND_PAUSE);
    }
}

fn handshake(s: TcpStream, hello: &Handshake) -> Result<BufWriter<TcpStream>, String> {
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut w = BufWriter::with_capacity(EDGE_BUFFER, s);
    write_frame(&mut w, &DataFrame::Handshake(hello.clone())).map_err(|e| e.to_string())?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Handshake {
        Handshake {
            instance: "i".into(),
            rank: 0,
            world_size: 2,
            model: "m".into(),
        }
    }

    /// A closed port: bound, then dropped, so connections are refused at once.
    fn dead_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_later_dial_supersedes_one_against_a_dead_address() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut dials = Dials::new(tx);
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
    fn superseded_rounds_stop() {
        assert!(dial_rounds(&[dead_addr()], &hello(), || true).is_none());
    }
}
