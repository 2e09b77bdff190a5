//! Watching runners for hangs (§13): the shell records when each runner last spoke and last advanced its compute
//! loop (its heartbeat says how many steps it has finished and whether it is inside one), asks the pure
//! [`shoal_core::runner_health::hang`] on every tick, and kills a hung runner: SIGKILL (it may be SIGSTOPped and
//! never read a `Shutdown`), its tasks failed out of band and in State, and a respawn after the usual backoff (the
//! hang counts as a failure, like an exit).

use shoal_core::runner_health::{Liveness, hang};
use shoal_runner::proto::FromRunner;
use shoal_types::State;
use shoal_types::ids::RunnerId;
use shoal_types::model::ErrorKind;

use crate::Shell;
use crate::lifecycle::stop_in_background;

/// What the shell knows of one live runner's progress.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Watch {
    liveness: Liveness,
    /// The step count of the runner's last heartbeat.
    steps: u64,
}

/// A worker loop that did not run for this long was itself stopped (SIGSTOP of the node, a VM pause, a laptop that
/// slept): the silence of its runners over that time says nothing about them, so their clocks restart. Four ticks.
const WORKER_PAUSED_MS: u64 = 1_000;

impl Shell {
    /// A runner process is up: its clocks start now.
    pub(crate) fn watch_started(&mut self, runner: RunnerId, now: u64) {
        let watch = Watch {
            liveness: Liveness::started(now),
            steps: 0,
        };
        self.watches.insert(runner, watch);
    }

    /// Any message proves the runner alive; a token, a finished step, or a heartbeat outside a step is progress.
    pub(crate) fn heard(&mut self, runner: RunnerId, msg: &FromRunner, now: u64) {
        let Some(watch) = self.watches.get_mut(&runner) else {
            return;
        };
        watch.liveness.last_heard_ms = now;
        match *msg {
            FromRunner::Heartbeat { steps, stepping } => {
                if steps != watch.steps || !stepping {
                    watch.liveness.last_progress_ms = now;
                }
                watch.steps = steps;
                watch.liveness.stepping = stepping;
            }
            FromRunner::Chunk { .. } | FromRunner::ToolCalls { .. } => watch.liveness.last_progress_ms = now,
            _ => {}
        }
    }

    /// Kills every runner that is hung at `now` and fails what it held.
    pub(crate) fn kill_hung(&mut self, state: &State, now: u64) {
        let paused = self
            .last_watch_ms
            .is_some_and(|last| now.saturating_sub(last) > WORKER_PAUSED_MS);
        self.last_watch_ms = Some(now);
        if paused {
            tracing::info!("the worker itself was paused; its runners' clocks restart");
            for watch in self.watches.values_mut() {
                watch.liveness.last_heard_ms = now;
                watch.liveness.last_progress_ms = now;
            }
            return;
        }
        let limit = u64::try_from(self.config.hung_after.as_millis()).unwrap_or(u64::MAX);
        let hung: Vec<_> = self
            .processes
            .keys()
            .filter_map(|runner| {
                let watch = self.watches.get(runner)?;
                hang(&watch.liveness, now, limit).map(|h| (*runner, h))
            })
            .collect();
        for (runner, why) in hung {
            let message = why.to_string();
            let pid = self.processes.get(&runner).map(|p| p.pid());
            tracing::warn!(%runner, ?pid, %message, "killing a hung runner");
            // The tasks fail before the kill, so their clients hear of the hang before a neighbour reports the
            // broken pipeline edge the kill causes.
            self.fail_tasks_of(runner, state, ErrorKind::Runner, &message);
            if let Some(mut process) = self.processes.remove(&runner) {
                process.kill();
                stop_in_background(process);
            }
            // Its channel's close, when it comes, is not news.
            self.tags.retain(|_, r| *r != runner);
            self.watches.remove(&runner);
            self.lock_reports().remove(&runner);
            if let Some(r) = self.local.runners.get_mut(&runner) {
                Self::failed(r, now, message);
            }
            self.local.process_gone(&runner);
        }
    }
}
