//! The HTTP server loop: axum's `serve`, with the limits it does not set (issue 15). A node's API must not be held
//! open by clients that send nothing:
//! - at most [`Limits::max_connections`] connections at once; one more is answered 503 with `Retry-After` and closed;
//! - a request's headers must arrive within [`Limits::read_timeout`] of the connection's first byte being awaited,
//!   which also closes a keep-alive connection idle that long (hyper's header-read timer starts as soon as the
//!   connection waits for a request);
//! - a request's body must arrive within the same time ([`read_deadline`], applied by `read_body`: 408).
//!
//! Responses are not timed: a stream may run for as long as the model writes.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

use crate::metrics::{Labels, write_counter, write_gauge};

/// Open connections a node serves by default (`--max-connections`): far more than a home cluster's tools open, and
/// below the usual 1,024 open files a process may hold, so the cap is reached before accept fails.
pub const DEFAULT_MAX_CONNECTIONS: usize = 900;
/// How long a client may take to send a request's headers, or its body, by default (`--http-read-timeout`).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The answer to a connection over the cap is written within this time, then the connection is closed.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// After a failed accept (out of file descriptors, say) the loop waits this long before the next.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// What the server enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            read_timeout: DEFAULT_READ_TIMEOUT,
        }
    }
}

/// The server's counters, read by `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl Counters {
    /// Connections refused because the node already had `max_connections` open.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The `/metrics` collector of a server's [`Counters`].
#[derive(Debug)]
pub struct CountersCollector(pub Arc<Counters>);

impl Collector for CountersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let c = &self.0;
        let none = || Labels::new();
        write_gauge(
            &mut encoder,
            "shoal_http_connections_open",
            "HTTP connections open now",
            &[(none(), c.open.load(Ordering::Relaxed) as i64)],
        )?;
        write_counter(
            &mut encoder,
            "shoal_http_connections_accepted",
            "HTTP connections accepted and served",
            &[(none(), c.accepted.load(Ordering::Relaxed))],
        )?;
        write_counter(
            &mut encoder,
            "shoal_http_connections_refused",
            "HTTP connections answered 503 because --max-connections were open",
            &[(none(), c.refused())],
        )
    }
}

/// The deadline a handler reading a request's body must meet, carried in the request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct ReadDeadline(pub Instant);

/// The body-read deadline of `request`, if it came through [`serve`].
pub fn read_deadline(request: &Request) -> Option<Instant> {
    request.extensions().get::<ReadDeadline>().map(|d| d.0)
}

/// Serves `router` on `listener` until `shutdown` resolves, then asks every connection to finish its response in
/// flight and returns once they all have (the caller bounds the wait).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(refuse(stream));
            continue;
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        let counters = counters.clone();
        let mut stop = stop_rx.clone();
        let read_timeout = limits.read_timeout;
        tokio::spawn(async move {
            let service = TowerToHyperService::new(tower::service_fn(move |mut request: hyper::Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ReadDeadline(Instant::now() + read_timeout));
                let router = router.clone();
                async move {
                    let response = router.oneshot(request.map(axum::body::Body::new)).await;
                    Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
                }
            }));
            // HTTP/1 only (axum is built without http2): hyper's own builder, whose header-read timer runs from the
            // start (hyper-util's auto builder first waits, untimed, for bytes to tell the version).
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                result = connection.as_mut() => result,
                // Stopping (or the loop gone): the responses in flight finish, idle connections close now.
                _ = async { stop.wait_for(|stopping| *stopping).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            };
            if let Err(error) = ended {
                tracing::trace!(%error, "connection ended");
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends: having them all back means every connection has ended.
    let _ = permits.acquire_many(limits.max_connections.max(1) as u32).await;
}

/// Answers a connection over the cap with 503 and `Retry-After`, then closes it.
async fn refuse(mut stream: tokio::net::TcpStream) {
    const BODY: &str = r#"{"error":{"message":"too many connections to this node; retry shortly","type":"server_error","code":"too_many_connections"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSE_WRITE_TIMEOUT, async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
