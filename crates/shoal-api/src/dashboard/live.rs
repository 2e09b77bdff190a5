//! `GET /state/stream`: the dashboard's live feed, as server-sent events.
//!
//! What it sends, in order:
//! - `status`: this node's `/status` ([`shoal_cluster::NodeStatus`]) first, and again whenever it changes (a new
//!   master, this node becoming ready or stepping down);
//! - `snapshot`: once the node is ready, `{"idx", "session", "state"}` where `state` is exactly `GET /state`'s body;
//!   then `state` frames of the same shape for every later change, at most one per [`STATE_FRAME_INTERVAL`] (and
//!   further apart for a State so large that one dashboard would get more than [`STATE_BYTES_PER_SECOND`]): a burst
//!   of events becomes one frame with the newest State, so a busy cluster cannot flood a browser. A broadcast
//!   receiver that lagged behind the node's State changes only means the newest State is sent next (never an error);
//! - `events`: the durable events after the snapshot's idx (starting [`INITIAL_EVENTS`] before it, for context), as
//!   `[{"idx", "time_ms", "kind", "node", "summary"}]`, read from this node's replica log like `GET /events`, at most
//!   [`EVENTS_PER_FRAME`] per frame; `events_gap` `{"message", "resume_after"}` says in-band that the log no longer
//!   holds some (pruned, or skipped by a snapshot install);
//! - `health` every [`HEALTH_INTERVAL`]: open streams, finished ones, stream ends by reason, chunks delivered,
//!   chunks for no stream, unrouted chunks, network messages dropped or refused by key, and this endpoint's own load;
//! - `bye` `{"reason"}` when the node stops, then the stream ends.
//!
//! Limits: [`MAX_LIVE_STREAMS`] streams at once per node (one more is answered 429 with `Retry-After`); an SSE
//! comment every [`KEEP_ALIVE`] when nothing else was sent. The page reconnects with backoff when the stream drops,
//! which is also how it follows the cluster through a master change: every node, follower or master, serves it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use shoal_cluster::{ClusterHandle, NodeStatus, StateChange, View};
use shoal_types::State;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::summary;
use crate::Api;
use crate::streams::{StreamStats, Streams};

/// At most one State frame per this long.
pub const STATE_FRAME_INTERVAL: Duration = Duration::from_millis(150);
/// How often the health numbers go out.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How often an idle stream looks whether the node is stopping (the HTTP server drains for 2 s).
pub const STOP_CHECK: Duration = Duration::from_millis(250);
/// Dashboard streams a node serves at once.
pub const MAX_LIVE_STREAMS: usize = 64;
/// Events before the snapshot the log starts with.
pub const INITIAL_EVENTS: i64 = 200;
/// Events in one `events` frame; a stream further behind catches up over several frames.
pub const EVENTS_PER_FRAME: usize = 500;
/// Reads of the log that found nothing new, in a row, before the stream waits for the next State change.
const EMPTY_READS_MAX: u32 = 10;
/// An SSE comment when nothing else was sent for this long (proxies close idle connections).
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// State frames of a large cluster are spaced further apart, so one dashboard receives at most about this many
/// bytes of State per second.
pub const STATE_BYTES_PER_SECOND: usize = 2 << 20;

/// Dashboard streams open on this node (one node per process).
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Holds one of the [`MAX_LIVE_STREAMS`] places while a stream is open.
struct Place;

impl Place {
    fn take() -> Option<Place> {
        OPEN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < MAX_LIVE_STREAMS).then_some(n + 1)
        })
        .ok()
        .map(|_| Place)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one message from the State-change broadcast means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// State changed: send the newest State when the pace allows.
    Changed,
    /// The node installed a snapshot: the events between may be missing from its log (the page is told).
    Installed,
    /// The node loop is gone: end the stream.
    Closed,
}

/// A broadcast result, decided: lagging behind only means "send the newest State", never an error.
pub fn on_broadcast(received: Result<StateChange, RecvError>) -> Wake {
    match received {
        Ok(StateChange {
            cause: shoal_cluster::ChangeCause::Installed(_),
            ..
        }) => Wake::Installed,
        Ok(_) | Err(RecvError::Lagged(_)) => Wake::Changed,
        Err(RecvError::Closed) => Wake::Closed,
    }
}

/// When the next State frame may go out: now, at a later instant, or not at all (nothing changed). Pure.
pub fn state_due(dirty: bool, last_sent: Option<Instant>, now: Instant, interval: Duration) -> Option<Instant> {
    if !dirty {
        return None;
    }
    Some(match last_sent {
        Some(at) if at + interval > now => at + interval,
        _ => now,
    })
}

/// The least time between State frames after one of `bytes`: [`STATE_FRAME_INTERVAL`], or longer for a State so
/// large that frames at that pace would exceed [`STATE_BYTES_PER_SECOND`]. Pure.
pub fn frame_interval(bytes: usize) -> Duration {
    let by_size =
        Duration::from_millis(u64::try_from(bytes.saturating_mul(1_000) / STATE_BYTES_PER_SECOND).unwrap_or(u64::MAX));
    by_size.max(STATE_FRAME_INTERVAL)
}

/// Where the event log starts for a snapshot at `idx`.
pub fn events_start(idx: i64) -> i64 {
    idx.saturating_sub(INITIAL_EVENTS).max(-1)
}

/// Network counters of one key, as the health frame carries them.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetRow {
    pub key: &'static str,
    pub received: u64,
    pub dropped_full: u64,
    pub malformed: u64,
    pub incompatible: u64,
    pub oversized: u64,
}

/// The `health` frame's body. Pure.
pub fn health(
    stats: &StreamStats,
    net: &[NetRow],
    unrouted: u64,
    live_streams: usize,
    now_ms: u64,
) -> serde_json::Value {
    let dropped: u64 = net
        .iter()
        .map(|r| r.dropped_full + r.malformed + r.incompatible + r.oversized)
        .sum();
    let received: u64 = net.iter().map(|r| r.received).sum();
    serde_json::json!({
        "time_ms": now_ms,
        "streams": {
            "open": stats.open,
            "finished": stats.finished,
            "tokens": stats.tokens,
            "closes": stats.closes,
            "chunks_unknown": stats.chunks_unknown,
        },
        "net": {
            "received": received,
            "dropped": dropped,
            "by_key": net.iter().filter(|r| r.dropped_full + r.malformed + r.incompatible + r.oversized > 0)
                .collect::<Vec<_>>(),
        },
        "chunks_unrouted": unrouted,
        "live_streams": live_streams,
        "live_streams_max": MAX_LIVE_STREAMS,
    })
}

/// The `snapshot`/`state` body: `GET /state`'s JSON with its idx and session.
fn state_body(state: &State) -> String {
    #[derive(Serialize)]
    struct Body<'a> {
        idx: i64,
        session: &'a shoal_types::SessionId,
        state: &'a State,
    }
    serde_json::to_string(&Body {
        idx: state.pos.idx,
        session: &state.session,
        state,
    })
    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

fn frame(name: &'static str, data: impl AsRef<str>) -> Event {
    Event::default().event(name).data(data)
}

fn json_frame(name: &'static str, value: &impl Serialize) -> Event {
    frame(name, serde_json::to_string(value).unwrap_or_default())
}

/// One dashboard stream's position.
struct Live {
    cluster: ClusterHandle,
    streams: Arc<Streams>,
    changes: broadcast::Receiver<StateChange>,
    views: watch::Receiver<View>,
    queue: std::collections::VecDeque<Event>,
    /// The State last sent (compared by pointer: State is immutable behind its `Arc`).
    sent: Option<Arc<State>>,
    sent_at: Option<Instant>,
    /// The least time until the next State frame ([`frame_interval`] of the last one).
    interval: Duration,
    status: Option<NodeStatus>,
    dirty: bool,
    /// The last event idx sent; `None` until the snapshot.
    events_after: Option<i64>,
    health_at: Instant,
    /// Consecutive reads of the log that found nothing new ([`EMPTY_READS_MAX`]).
    empty_reads: u32,
    done: bool,
    _place: Place,
}

impl Live {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(frame) = self.queue.pop_front() {
                return Some(frame);
            }
            if self.done {
                return None;
            }
            if self.streams.is_stopping() {
                self.done = true;
                self.queue.push_back(json_frame(
                    "bye",
                    &serde_json::json!({ "reason": "the node is stopping" }),
                ));
                continue;
            }
            let now = Instant::now();
            let due = state_due(self.dirty, self.sent_at, now, self.interval);
            if due.is_some_and(|at| at <= now) {
                self.send_view(now).await;
                continue;
            }
            if now >= self.health_at {
                self.health_at = now + HEALTH_INTERVAL;
                self.queue.push_back(frame("health", self.health().to_string()));
                continue;
            }
            let wake_at = due.unwrap_or(self.health_at).min(self.health_at).min(now + STOP_CHECK);
            tokio::select! {
                received = self.changes.recv() => match on_broadcast(received) {
                    Wake::Changed => self.dirty = true,
                    Wake::Installed => {
                        self.dirty = true;
                        if let Some(after) = self.events_after {
                            let message = "this node installed a snapshot; earlier events may be missing";
                            self.queue.push_back(json_frame("events_gap", &serde_json::json!({
                                "message": message, "resume_after": after })));
                        }
                    }
                    Wake::Closed => self.done = true,
                },
                changed = self.views.changed() => match changed {
                    Ok(()) => self.dirty = true,
                    Err(_) => self.done = true,
                },
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Queues what changed since the last frame: the status, the State, the events up to it.
    async fn send_view(&mut self, now: Instant) {
        self.dirty = false;
        self.sent_at = Some(now);
        let view = self.views.borrow_and_update().clone();
        if self.status.as_ref() != Some(&view.status) {
            self.queue.push_back(json_frame("status", &view.status));
            self.status = Some(view.status.clone());
        }
        if !view.status.ready {
            return;
        }
        if !self.sent.as_ref().is_some_and(|s| Arc::ptr_eq(s, &view.state)) {
            let first = self.sent.is_none();
            let body = state_body(&view.state);
            self.interval = frame_interval(body.len());
            self.queue
                .push_back(frame(if first { "snapshot" } else { "state" }, body));
            self.sent = Some(view.state.clone());
        }
        let idx = view.state.pos.idx;
        let after = *self.events_after.get_or_insert_with(|| events_start(idx));
        if after > idx {
            // A new master's history is shorter than what this page saw: start over at its idx.
            self.events_after = Some(idx);
        } else if after < idx {
            self.send_events(after).await;
        }
    }

    async fn send_events(&mut self, after: i64) {
        let mut read = self.cluster.events(Some(after), EVENTS_PER_FRAME).await;
        let mut gap = false;
        if let Ok(Err(message)) = &read {
            // This node's log no longer holds them (pruned, or the node joined from a snapshot): say so, and go on
            // from the oldest event it holds.
            self.queue.push_back(json_frame(
                "events_gap",
                &serde_json::json!({ "message": message, "resume_after": after }),
            ));
            gap = true;
            read = self.cluster.events(None, EVENTS_PER_FRAME).await;
        }
        let idx = self.sent.as_ref().map_or(after, |s| s.pos.idx);
        match read {
            Ok(Ok(events)) => {
                let lines: Vec<_> = events
                    .iter()
                    .filter(|e| i64::try_from(e.idx).is_ok_and(|i| i > after))
                    .map(summary::line)
                    .collect();
                let Some(last) = events.last() else {
                    if gap {
                        // The log holds nothing up to this State: everything before it came in a snapshot.
                        self.events_after = Some(idx);
                    } else if self.empty_reads < EMPTY_READS_MAX {
                        // A follower writes its log a moment after it applies: look again shortly.
                        self.empty_reads += 1;
                        self.dirty = true;
                    }
                    return;
                };
                self.empty_reads = 0;
                self.events_after = Some(i64::try_from(last.idx).unwrap_or(i64::MAX));
                if !lines.is_empty() {
                    self.queue.push_back(json_frame("events", &lines));
                }
                if events.len() == EVENTS_PER_FRAME {
                    // More to read: come back at once rather than at the next change.
                    self.dirty = true;
                }
            }
            Ok(Err(_)) => self.events_after = Some(idx),
            Err(_) => self.done = true,
        }
    }

    fn health(&self) -> serde_json::Value {
        let net: Vec<NetRow> = self
            .cluster
            .counters()
            .snapshot()
            .into_iter()
            .map(|(key, c)| NetRow {
                key,
                received: c.received,
                dropped_full: c.dropped_full,
                malformed: c.malformed,
                incompatible: c.incompatible,
                oversized: c.oversized,
            })
            .collect();
        health(
            &self.streams.stats(),
            &net,
            self.cluster.chunks_unrouted(),
            OPEN.load(Ordering::Relaxed),
            crate::streams::unix_ms(),
        )
    }
}

/// `GET /state/stream`.
pub async fn stream(AxumState(api): AxumState<Api>) -> Response {
    let Some(place) = Place::take() else {
        let mut response = crate::error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("this node serves at most {MAX_LIVE_STREAMS} dashboard streams at once"),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        return response;
    };
    let mut views = api.cluster.watch();
    views.mark_changed();
    let live = Live {
        changes: api.cluster.subscribe(),
        cluster: api.cluster.clone(),
        streams: api.streams.clone(),
        views,
        queue: Default::default(),
        sent: None,
        sent_at: None,
        interval: STATE_FRAME_INTERVAL,
        status: None,
        dirty: true,
        events_after: None,
        health_at: Instant::now(),
        empty_reads: 0,
        done: false,
        _place: place,
    };
    let frames = futures_util::stream::unfold(live, |mut live| async move {
        let frame = live.next().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), live))
    });
    let sse = Sse::new(frames).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    let mut response = ([("x-accel-buffering", "no"), ("cache-control", "no-store")], sse).into_response();
    super::security_headers(response.headers_mut());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_frames_are_paced_and_only_sent_when_something_changed() {
        let now = Instant::now();
        let interval = STATE_FRAME_INTERVAL;
        assert_eq!(state_due(false, None, now, interval), None, "nothing changed");
        assert_eq!(
            state_due(true, None, now, interval),
            Some(now),
            "the first frame goes at once"
        );
        let just_sent = now - Duration::from_millis(10);
        assert_eq!(
            state_due(true, Some(just_sent), now, interval),
            Some(just_sent + interval),
            "a burst waits for the interval"
        );
        let long_ago = now - Duration::from_secs(5);
        assert_eq!(state_due(true, Some(long_ago), now, interval), Some(now));
    }

    #[test]
    fn a_lagged_receiver_resends_the_newest_state_and_a_closed_one_ends() {
        assert_eq!(on_broadcast(Err(RecvError::Lagged(4_000))), Wake::Changed);
        assert_eq!(on_broadcast(Err(RecvError::Closed)), Wake::Closed);
        let change = |cause| StateChange {
            state: Arc::new(State::empty()),
            cause,
        };
        assert_eq!(
            on_broadcast(Ok(change(shoal_cluster::ChangeCause::Applied(3)))),
            Wake::Changed
        );
        assert_eq!(
            on_broadcast(Ok(change(shoal_cluster::ChangeCause::Installed(
                shoal_types::ids::Pos::EMPTY
            )))),
            Wake::Installed
        );
    }

    #[test]
    fn a_burst_of_changes_becomes_frames_at_most_one_per_interval() {
        // A simulated clock: 1,000 changes 1 ms apart make at most 1000 / 150 + 1 frames.
        let start = Instant::now();
        let mut sent_at: Option<Instant> = None;
        let mut dirty = false;
        let mut frames = 0;
        for ms in 0..1_000u64 {
            let now = start + Duration::from_millis(ms);
            dirty = true;
            if state_due(dirty, sent_at, now, STATE_FRAME_INTERVAL).is_some_and(|at| at <= now) {
                frames += 1;
                sent_at = Some(now);
                dirty = false;
            }
        }
        assert!(dirty || frames > 0);
        assert!(frames <= 1_000 / 150 + 1, "{frames} frames");
        assert!(frames >= 6, "{frames} frames: the stream keeps up");
    }

    #[test]
    fn a_large_state_is_sent_less_often() {
        assert_eq!(frame_interval(10_000), STATE_FRAME_INTERVAL);
        assert_eq!(frame_interval(STATE_BYTES_PER_SECOND), Duration::from_secs(1));
        assert_eq!(frame_interval(4 * STATE_BYTES_PER_SECOND), Duration::from_secs(4));
        assert!(frame_interval(usize::MAX) >= Duration::from_secs(1));
    }

    #[test]
    fn the_log_starts_a_little_before_the_snapshot() {
        assert_eq!(events_start(-1), -1);
        assert_eq!(events_start(50), -1);
        assert_eq!(events_start(1_000), 1_000 - INITIAL_EVENTS);
    }

    #[test]
    fn health_sums_drops_and_lists_only_keys_that_dropped() {
        let stats = StreamStats {
            open: 2,
            tokens: 40,
            finished: 3,
            closes: [("cancelled", 1)].into_iter().collect(),
            chunks_unknown: 5,
        };
        let row = |key, dropped_full| NetRow {
            key,
            received: 10,
            dropped_full,
            malformed: 1,
            incompatible: 0,
            oversized: 0,
        };
        let body = health(&stats, &[row("up", 0), row("chunk", 2)], 7, 1, 99);
        assert_eq!(body["net"]["dropped"], 4);
        assert_eq!(body["net"]["received"], 20);
        assert_eq!(body["net"]["by_key"].as_array().map(Vec::len), Some(2));
        assert_eq!(body["streams"]["closes"]["cancelled"], 1);
        assert_eq!(body["chunks_unrouted"], 7);
        assert_eq!(body["live_streams_max"], MAX_LIVE_STREAMS);
    }
}
