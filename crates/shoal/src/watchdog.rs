//! The liveness watchdog (SYSTEM.md §8). zenoh renews the node's lease from its own threads, so a node whose tokio
//! runtime is wedged would still look alive to the cluster and keep its shards. A plain OS thread watches a counter
//! that the runtime bumps; when the counter stops moving the process aborts, its token drops, and the supervisor
//! restarts it: a wedged node must look dead, not alive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::error;

/// How often the watchdog thread looks at the counter.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the runtime bumps it (§8).
pub const BUMP_EVERY: Duration = Duration::from_millis(250);
/// No progress for this long aborts the process (§8).
pub const STALL_LIMIT: Duration = Duration::from_secs(5);

/// A handle to bump; clones share one counter. Dropping every handle disarms the watchdog: a runtime being torn
/// down on purpose drops its bumper task, and a slow graceful shutdown must not end in an abort.
#[derive(Clone, Debug)]
pub struct Watchdog {
    counter: Arc<AtomicU64>,
}

impl Watchdog {
    pub fn bump(&self) {
        // Relaxed: only "did it change" matters, not ordering with other memory.
        self.counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the watchdog thread that aborts the process after `stall_limit` without a bump.
pub fn start(stall_limit: Duration) -> std::io::Result<Watchdog> {
    start_with(stall_limit, CHECK_EVERY, |stalled_for| {
        error!(
            stalled_ms = stalled_for.as_millis() as u64,
            "the main runtime made no progress; aborting so the supervisor restarts this node"
        );
        // abort, not exit: exit runs atexit handlers and flushes that could block on the very thing that is stuck.
        std::process::abort();
    })
}

/// Like [`start`], but calls `on_stall` (with how long the counter has been still) instead of aborting; the thread
/// ends after calling it.
pub fn start_with(
    stall_limit: Duration,
    check_every: Duration,
    on_stall: impl FnOnce(Duration) + Send + 'static,
) -> std::io::Result<Watchdog> {
    let watchdog = Watchdog {
        counter: Arc::new(AtomicU64::new(0)),
    };
    let counter = Arc::downgrade(&watchdog.counter);
    std::thread::Builder::new()
        .name("shoal-watchdog".into())
        .spawn(move || watch(&counter, stall_limit, check_every, on_stall))?;
    Ok(watchdog)
}

fn watch(counter: &Weak<AtomicU64>, stall_limit: Duration, check_every: Duration, on_stall: impl FnOnce(Duration)) {
    let mut progress = Progress {
        count: 0,
        since: Instant::now(),
    };
    loop {
        std::thread::sleep(check_every);
        let Some(count) = counter.upgrade().map(|c| c.load(Ordering::Relaxed)) else {
            return;
        };
        if let Some(stalled_for) = progress.observe(count, Instant::now(), stall_limit) {
            on_stall(stalled_for);
            return;
        }
    }
}

/// The last counter value seen and when it was first seen.
#[derive(Clone, Copy, Debug)]
struct Progress {
    count: u64,
    since: Instant,
}

impl Progress {
    /// Records a sample; returns how long the counter has been still once that reaches `limit`.
    fn observe(&mut self, count: u64, now: Instant, limit: Duration) -> Option<Duration> {
        if count != self.count {
            *self = Progress { count, since: now };
            return None;
        }
        let still_for = now.saturating_duration_since(self.since);
        (still_for >= limit).then_some(still_for)
    }
}

/// Spawns the task that proves the runtime is alive. It must run on the runtime being watched: a bumper on another
/// runtime or thread would keep bumping while the one that matters is stuck. `progress` is a second thing that must
/// move (the node loop's turn counter): a bump happens only when it changed since the last tick.
pub fn spawn_bumper(watchdog: Watchdog, handle: &tokio::runtime::Handle, progress: impl Fn() -> u64 + Send + 'static) {
    handle.spawn(async move {
        let mut last = None;
        let mut ticks = tokio::time::interval(BUMP_EVERY);
        // The default (Burst) answers a late wake-up with catch-up ticks; they add nothing, since any one bump
        // proves progress.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = progress();
            if last != Some(now) {
                watchdog.bump();
                last = Some(now);
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn progress_fires_only_after_the_limit_without_change() {
        let t0 = Instant::now();
        let limit = 100 * MS;
        let mut p = Progress { count: 0, since: t0 };
        assert_eq!(p.observe(0, t0 + 50 * MS, limit), None);
        assert_eq!(p.observe(0, t0 + 100 * MS, limit), Some(100 * MS));

        let mut p = Progress { count: 0, since: t0 };
        assert_eq!(p.observe(1, t0 + 90 * MS, limit), None);
        // The clock restarts at the change, not at the previous sample.
        assert_eq!(p.observe(1, t0 + 150 * MS, limit), None);
        assert_eq!(p.observe(1, t0 + 190 * MS, limit), Some(100 * MS));
        assert_eq!(p.observe(2, t0 + 500 * MS, limit), None);
        assert_eq!(p.observe(2, t0 + 550 * MS, limit), None);
    }

    #[test]
    fn progress_tolerates_a_clock_sample_before_since() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Progress { count: 3, since: t0 };
        assert_eq!(p.observe(3, t0 - 10 * MS, 100 * MS), None);
    }

    #[test]
    fn steady_bumps_never_fire() {
        let (tx, rx) = mpsc::channel();
        let wd = start_with(100 * MS, 10 * MS, move |d| {
            let _ = tx.send(d);
        })
        .unwrap();
        let end = Instant::now() + 300 * MS;
        while Instant::now() < end {
            wd.bump();
            std::thread::sleep(20 * MS);
        }
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
        // Dropping the handle disarms it: the thread ends without firing, which drops the sender.
        drop(wd);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(2)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn stopped_bumps_fire_once() {
        let limit = 100 * MS;
        let check_every = 10 * MS;
        let (tx, rx) = mpsc::channel();
        let wd = start_with(limit, check_every, move |d| {
            let _ = tx.send(d);
        })
        .unwrap();
        for _ in 0..5 {
            wd.bump();
            std::thread::sleep(20 * MS);
        }
        let stopped = Instant::now();
        let stalled_for = rx
            .recv_timeout(limit + 2 * check_every + Duration::from_secs(1))
            .unwrap();
        assert!(stalled_for >= limit);
        assert!(stopped.elapsed() >= limit - 20 * MS);
        // The thread ends after firing, so the sender is gone and it cannot fire again.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(mpsc::RecvTimeoutError::Disconnected)
        );
        drop(wd);
    }

    #[test]
    fn bumper_task_moves_the_counter() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let wd = start_with(Duration::from_secs(2), 10 * MS, move |d| {
            let _ = tx.send(d);
        })
        .unwrap();
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let moving = progress.clone();
        spawn_bumper(wd.clone(), runtime.handle(), move || {
            moving.fetch_add(1, Ordering::Relaxed)
        });
        runtime.block_on(async { tokio::time::sleep(700 * MS).await });
        // The first tick is immediate, then one every 250 ms.
        assert!(wd.counter.load(Ordering::Relaxed) >= 2);
        assert_eq!(rx.try_recv(), Err(mpsc::TryRecvError::Empty));
    }

    #[test]
    fn a_stuck_second_loop_stops_the_bumps() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let wd = start_with(Duration::from_millis(300), 10 * MS, move |d| {
            let _ = tx.send(d);
        })
        .unwrap();
        // The runtime runs, but the watched loop never moves: the watchdog must fire.
        spawn_bumper(wd.clone(), runtime.handle(), || 7);
        runtime.block_on(async { tokio::time::sleep(1_200 * MS).await });
        assert!(rx.try_recv().is_ok(), "the watchdog did not fire");
        drop(wd);
    }
}
