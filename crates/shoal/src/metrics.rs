//! The worker's share of `/metrics`: its runners' weights and memory and its chunk counters, as a collector in the
//! API's one registry (`shoal_api::metrics`), read at scrape time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use shoal_api::metrics::{Labels, write_counter, write_gauge};
use shoal_worker::{FileServerStats, RunnerReport, RunnerReports, Worker, WorkerCounters};

/// The collectors of a node with a worker.
pub fn collectors(worker: &Worker) -> Vec<Box<dyn Collector>> {
    vec![Box::new(WorkerCollector {
        runners: worker.reports(),
        counters: worker.counters(),
        file_server: worker.file_server_stats(),
    })]
}

struct WorkerCollector {
    runners: RunnerReports,
    counters: Arc<WorkerCounters>,
    file_server: Option<FileServerStats>,
}

impl fmt::Debug for WorkerCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerCollector").finish_non_exhaustive()
    }
}

fn runner_labels(r: &RunnerReport) -> Labels {
    vec![
        ("runner", r.runner.to_string()),
        ("instance", r.instance.to_string()),
        ("layers", format!("{}-{}", r.layer_start, r.layer_end)),
        ("pid", r.pid.to_string()),
    ]
}

fn gauge_value(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Collector for WorkerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let runners: Vec<RunnerReport> = self
            .runners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let weights: Vec<_> = runners
            .iter()
            .map(|r| (runner_labels(r), gauge_value(r.weight_bytes)))
            .collect();
        write_gauge(
            &mut encoder,
            "shoal_runner_weight_bytes",
            "Bytes of weights each runner's stage loaded",
            &weights,
        )?;
        // Resident and peak resident memory of each runner process, to hold against its slice of the weights
        // (mapped, so a stage's resident memory is about its own layers plus its KV cache).
        let memory: Vec<_> = runners
            .iter()
            .filter_map(|r| process_memory(r.pid).map(|m| (runner_labels(r), m)))
            .collect();
        for (name, help, pick) in [
            (
                "shoal_runner_rss_bytes",
                "Resident memory of each runner process",
                0usize,
            ),
            (
                "shoal_runner_peak_rss_bytes",
                "Peak resident memory of each runner process",
                1,
            ),
        ] {
            let rows: Vec<_> = memory
                .iter()
                .map(|(labels, m)| (labels.clone(), gauge_value(m[pick])))
                .collect();
            write_gauge(&mut encoder, name, help, &rows)?;
        }
        write_counter(
            &mut encoder,
            "shoal_worker_chunks",
            "Chunks this node's runners forwarded to API nodes",
            &[(Vec::new(), self.counters.chunks.load(Relaxed))],
        )?;
        write_counter(
            &mut encoder,
            "shoal_worker_chunks_after_cancel",
            "Chunks produced for a task State already shows cancelled, failed or gone",
            &[(Vec::new(), self.counters.chunks_after_cancel.load(Relaxed))],
        )?;
        write_counter(
            &mut encoder,
            "shoal_worker_inputs_dropped",
            "State wake-ups and download progress dropped on the worker's full queue",
            &[(Vec::new(), self.counters.inputs_dropped.load(Relaxed))],
        )?;
        write_counter(
            &mut encoder,
            "shoal_worker_spawns_deferred",
            "Runner spawns put off to a later plan on the spawner's full queue",
            &[(Vec::new(), self.counters.spawns_deferred.load(Relaxed))],
        )?;
        let Some(files) = self.file_server.as_ref().map(|read| read()) else {
            return Ok(());
        };
        write_counter(
            &mut encoder,
            "shoal_file_server_bytes_served",
            "Model-file bytes this node served to peers",
            &[(Vec::new(), files.bytes_served)],
        )?;
        let outcomes = [
            ("connection", files.connections),
            ("over_limit", files.over_limit),
            ("handshake_failed", files.handshake_failures),
            ("request", files.requests),
            ("refused", files.refusals),
            ("not_held", files.not_held),
            ("bad_range", files.bad_ranges),
            ("malformed", files.malformed),
        ];
        let rows: Vec<_> = outcomes
            .iter()
            .map(|(what, n)| (vec![("event", (*what).to_owned())], *n))
            .collect();
        write_counter(
            &mut encoder,
            "shoal_file_server_events",
            "What this node's model-file server saw: connections, requests and each refusal, by kind",
            &rows,
        )
    }
}

/// [resident, peak resident] bytes of a process (`VmRSS`, `VmHWM` of /proc/PID/status); `None` where there is no
/// procfs or the process is gone.
fn process_memory(pid: u32) -> Option<[u64; 2]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some([field("VmRSS:")?, field("VmHWM:")?])
}
