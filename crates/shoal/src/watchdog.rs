//! The liveness watchdog (SYSTEM.md §8). zenoh renews the node's lease from its own threads, so a node whose tokio
//! runtime is wedged would still look alive to the cluster and keep its shards. A plain OS thread watches a counter
//! that the runtime bumps; when the counter stops moving the process aborts, its token drops, and the supervisor
//! restarts it: a wedged node must look dead, not alive.
//!
//! A process that is stopped as a whole (SIGSTOP, a paused VM, a debugger) is not wedged: when it continues, its
//! runtime was silent only because nothing ran, the watchdog thread included. The watchdog tells the two apart by
//! its own ticks: a tick that comes much later than it was due means this thread did not run either, so the time
//! it missed is not counted against the runtime. Only a runtime that stays still while the watchdog keeps ticking is
//! a stall. Such a node continues, finds that the cluster timed it out, and rejoins as a follower.
//!
//! The clock is `Instant` (CLOCK_MONOTONIC on Linux), which does not advance while the machine sleeps: a suspend
//! therefore never looks like a stall in the first place, and a clock that jumps on resume (some hypervisors) shows
//! as a late tick like a stop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tracing::{error, warn};

/// How often the watchdog thread looks at the counter.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// How often the runtime bumps it (§8).
pub const BUMP_EVERY: Duration = Duration::from_millis(250);
/// No progress for this long aborts the process (§8).
pub const STALL_LIMIT: Duration = Duration::from_secs(5);
/// How much later than due the watchdog's own tick may come before the process counts as stopped over the gap. An
/// oversleep of a loaded machine stays under it; a stop of the whole process that could matter (seconds) does not.
pub const PAUSE_SLACK: Duration = Duration::from_millis(750);

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
    let start = Instant::now();
    let mut progress = Progress {
        count: 0,
        since: start,
        last_tick: start,
    };
    loop {
        std::thread::sleep(check_every);
        let Some(count) = counter.upgrade().map(|c| c.load(Ordering::Relaxed)) else {
            return;
        };
        match progress.observe(count, Instant::now(), stall_limit, check_every) {
            Verdict::Fine => {}
            Verdict::Paused(paused_for) => warn!(
                paused_ms = paused_for.as_millis() as u64,
                "this process was stopped or suspended (the watchdog did not run either); not counted as a stall"
            ),
            Verdict::Stalled(stalled_for) => {
                on_stall(stalled_for);
                return;
            }
        }
    }
}

/// What one sample of the counter says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// The watchdog's own tick came this much later than due: the whole process was stopped over that time.
    Paused(Duration),
    /// The counter has been still this long while the watchdog ran.
    Stalled(Duration),
}

/// The last counter value seen, since when it has been still (minus the time the process was stopped), and when the
/// watchdog last ticked.
#[derive(Clone, Copy, Debug)]
struct Progress {
    count: u64,
    since: Instant,
    last_tick: Instant,
}

impl Progress {
    /// Records a sample taken at `now`, one tick (`check_every`) after the previous one.
    fn observe(&mut self, count: u64, now: Instant, limit: Duration, check_every: Duration) -> Verdict {
        let late_by = now
            .saturating_duration_since(self.last_tick)
            .saturating_sub(check_every);
        self.last_tick = now;
        let paused = late_by > PAUSE_SLACK;
        if count != self.count {
            self.count = count;
            self.since = now;
        } else if paused {
            // Nothing ran while we did not: the runtime's silence over that time says nothing. It gets the time it
            // had left, counted from the end of the stop (clamped so that `since` never passes `now`).
            self.since = (self.since + late_by).min(now);
        }
        if paused {
            // Reported even when the runtime already moved: after a continue its threads may run before this one.
            return Verdict::Paused(late_by);
        }
        let still_for = now.saturating_duration_since(self.since);
        if still_for >= limit {
            Verdict::Stalled(still_for)
        } else {
            Verdict::Fine
        }
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

    /// A progress that starts at `t0` with `count`.
    fn progress(count: u64, t0: Instant) -> Progress {
        Progress {
            count,
            since: t0,
            last_tick: t0,
        }
    }

    /// Samples with a tick period (1 s) longer than any gap in these samples: none counts as a pause.
    fn sample(p: &mut Progress, count: u64, now: Instant, limit: Duration) -> Option<Duration> {
        match p.observe(count, now, limit, Duration::from_secs(1)) {
            Verdict::Fine => None,
            Verdict::Stalled(d) => Some(d),
            Verdict::Paused(d) => panic!("unexpected pause of {d:?}"),
        }
    }

    #[test]
    fn progress_fires_only_after_the_limit_without_change() {
        let t0 = Instant::now();
        let limit = 100 * MS;
        let mut p = progress(0, t0);
        assert_eq!(sample(&mut p, 0, t0 + 50 * MS, limit), None);
        assert_eq!(sample(&mut p, 0, t0 + 100 * MS, limit), Some(100 * MS));

        let mut p = progress(0, t0);
        assert_eq!(sample(&mut p, 1, t0 + 90 * MS, limit), None);
        // The clock restarts at the change, not at the previous sample.
        assert_eq!(sample(&mut p, 1, t0 + 150 * MS, limit), None);
        assert_eq!(sample(&mut p, 1, t0 + 190 * MS, limit), Some(100 * MS));
        assert_eq!(sample(&mut p, 2, t0 + 500 * MS, limit), None);
        assert_eq!(sample(&mut p, 2, t0 + 550 * MS, limit), None);
    }

    #[test]
    fn progress_tolerates_a_clock_sample_before_since() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = progress(3, t0);
        assert_eq!(sample(&mut p, 3, t0 - 10 * MS, 100 * MS), None);
    }

    /// Feeds samples one `tick` apart from `from` (exclusive) to `to` (inclusive); the first verdict that is not Fine.
    fn run_ticks(p: &mut Progress, count: u64, from: Instant, to: Instant, tick: Duration) -> Verdict {
        let mut now = from;
        while now + tick <= to {
            now += tick;
            let verdict = p.observe(count, now, STALL_LIMIT, tick);
            if verdict != Verdict::Fine {
                return verdict;
            }
        }
        Verdict::Fine
    }

    #[test]
    fn a_stop_of_the_whole_process_is_not_a_stall() {
        let tick = CHECK_EVERY;
        let t0 = Instant::now();
        let mut p = progress(5, t0);
        // The runtime last moved at t0 and the process was stopped 1 s later for 8 s: nothing ticked meanwhile.
        assert_eq!(run_ticks(&mut p, 5, t0, t0 + 1_000 * MS, tick), Verdict::Fine);
        let resumed = t0 + 9_000 * MS;
        let late_by = resumed - (t0 + 1_000 * MS) - tick;
        assert_eq!(p.observe(5, resumed, STALL_LIMIT, tick), Verdict::Paused(late_by));
        // The runtime moves again soon after: no stall, and later ticks are ordinary.
        assert_eq!(p.observe(6, resumed + tick, STALL_LIMIT, tick), Verdict::Fine);
        assert_eq!(
            run_ticks(&mut p, 7, resumed + tick, resumed + 3 * tick, tick),
            Verdict::Fine
        );
    }

    #[test]
    fn a_stop_is_reported_even_when_the_runtime_moved_first() {
        let tick = CHECK_EVERY;
        let t0 = Instant::now();
        let mut p = progress(5, t0);
        // After the continue a runtime thread bumped before the watchdog's first tick: still a pause, and the
        // still time restarts at the bump.
        let resumed = t0 + 8_000 * MS;
        assert!(matches!(p.observe(6, resumed, STALL_LIMIT, tick), Verdict::Paused(_)));
        assert_eq!(p.since, resumed);
        assert_eq!(p.observe(6, resumed + tick, STALL_LIMIT, tick), Verdict::Fine);
    }

    #[test]
    fn a_runtime_still_after_a_stop_fires_after_the_time_it_had_left() {
        let tick = CHECK_EVERY;
        let t0 = Instant::now();
        let mut p = progress(5, t0);
        // Still for 1 s, stopped for 8 s, then still again while the watchdog ticks: the stall is the 1 s before
        // the stop plus the time after it, so it fires 4 s after the continue (STALL_LIMIT 5 s), not at once.
        assert_eq!(run_ticks(&mut p, 5, t0, t0 + 1_000 * MS, tick), Verdict::Fine);
        let resumed = t0 + 9_000 * MS;
        assert!(matches!(p.observe(5, resumed, STALL_LIMIT, tick), Verdict::Paused(_)));
        let fired = run_ticks(&mut p, 5, resumed, resumed + 10 * STALL_LIMIT, tick);
        let Verdict::Stalled(stalled_for) = fired else {
            panic!("{fired:?}")
        };
        // The stalled time counts the tick that discovered the stop as run time: at most one tick more.
        assert!(
            stalled_for >= STALL_LIMIT && stalled_for <= STALL_LIMIT + tick,
            "{stalled_for:?}"
        );
        let fired_at = p.last_tick;
        let after_continue = fired_at - resumed;
        assert!(
            after_continue >= STALL_LIMIT - 1_000 * MS - tick && after_continue <= STALL_LIMIT,
            "{after_continue:?}"
        );
    }

    #[test]
    fn a_late_tick_within_the_slack_is_ordinary() {
        let tick = CHECK_EVERY;
        let t0 = Instant::now();
        let mut p = progress(5, t0);
        // An oversleep of a loaded machine is not a pause: the still time keeps counting across it.
        let late = t0 + tick + PAUSE_SLACK;
        assert_eq!(p.observe(5, late, STALL_LIMIT, tick), Verdict::Fine);
        let fired = run_ticks(&mut p, 5, late, t0 + 2 * STALL_LIMIT, tick);
        assert!(matches!(fired, Verdict::Stalled(_)), "{fired:?}");
        assert!(p.last_tick - t0 <= STALL_LIMIT + tick);
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
