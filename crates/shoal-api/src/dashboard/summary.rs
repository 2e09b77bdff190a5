//! One line per durable event for the dashboard's log: the kind, the node it concerns and a short summary. Pure.

use serde::Serialize;
use shoal_types::event::{Event, IndexedEvent};
use shoal_types::ids::NodeId;
use shoal_types::model::{DownloadProgress, NodeFact, RunnerStatus};

/// Characters of an id the log shows (the page shows node names where it knows them).
const SHORT_ID: usize = 8;

/// What the page's event log shows of one event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventLine {
    pub idx: u64,
    pub time_ms: u64,
    pub kind: &'static str,
    /// The node the event is about, for the page to name.
    pub node: Option<NodeId>,
    pub summary: String,
}

fn short(id: impl std::fmt::Display) -> String {
    let text = id.to_string();
    text.chars().take(SHORT_ID).collect()
}

fn runner_status(status: &RunnerStatus) -> String {
    match status {
        RunnerStatus::Loading {
            layers_loaded,
            total_layers,
        } => format!("Loading {layers_loaded}/{total_layers}"),
        RunnerStatus::Failed { error, attempt } => format!("Failed (attempt {attempt}): {error}"),
        other => format!("{other:?}"),
    }
}

fn download(progress: &DownloadProgress) -> String {
    match progress {
        DownloadProgress::Pending => "pending".into(),
        DownloadProgress::Ongoing { done, total } if *total > 0 => {
            format!("{}%", done.saturating_mul(100) / total)
        }
        DownloadProgress::Ongoing { done, .. } => format!("{done} bytes"),
        DownloadProgress::Completed { .. } => "complete".into(),
        DownloadProgress::Failed { error } => format!("failed: {error}"),
        DownloadProgress::Gone => "files gone".into(),
    }
}

fn fact(info: &NodeFact) -> String {
    match info {
        NodeFact::Identity(i) => format!("is {} ({} {}, {})", i.friendly_name, i.os, i.arch, i.chip),
        NodeFact::Memory(m) => format!("memory {:.1} GiB free of {:.1} GiB", gib(m.available), gib(m.total)),
        NodeFact::Disk(d) => format!("disk {:.1} GiB free", gib(d.available)),
        NodeFact::Interfaces(i) => format!("{} network interfaces", i.len()),
        NodeFact::Backends(b) => format!("backends {b:?}"),
        NodeFact::MemBandwidth(g) => format!("memory bandwidth {g:.0} GB/s"),
        NodeFact::StoreFault(Some(error)) => format!("store cannot write: {error}"),
        NodeFact::StoreFault(None) => "store writes again".into(),
        NodeFact::FileServer(addrs) if addrs.is_empty() => "serves no model files".into(),
        NodeFact::FileServer(addrs) => format!("serves model files on {}", addrs[0]),
    }
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// The log line of `e`.
pub fn line(e: &IndexedEvent) -> EventLine {
    let (node, summary) = match &e.event {
        Event::SessionOpened { session, base } => (
            Some(session.master),
            format!(
                "term {} opened by {} at idx {}",
                session.term,
                short(session.master),
                base.idx
            ),
        ),
        Event::NodeGatheredInfo { node, info } => (Some(*node), format!("{} {}", short(node), fact(info))),
        Event::DownloadUpdated {
            node,
            model_id,
            progress,
        } => (
            Some(*node),
            format!("{model_id} on {}: {}", short(node), download(progress)),
        ),
        Event::NodeTimedOut { node, reason } => (Some(*node), format!("{} lost: {reason}", short(node))),
        Event::ModelCardAdded { card } => (None, format!("model {} added", card.id)),
        Event::ModelCardDeleted { model_id } => (None, format!("model {model_id} deleted")),
        Event::DeploymentCreated { deployment } => (
            None,
            format!(
                "deployment {} of {} on ≥{} node(s)",
                short(deployment.id),
                deployment.model_id,
                deployment.min_nodes
            ),
        ),
        Event::DeploymentWaiting {
            deployment_id, reason, ..
        } => (None, format!("deployment {} waits: {reason}", short(deployment_id))),
        Event::DeploymentDeleted { deployment_id } => (None, format!("deployment {} deleted", short(deployment_id))),
        Event::InstanceCreated { instance } => (
            None,
            format!(
                "instance {} of {} over {} node(s)",
                short(instance.id),
                instance.model.id,
                instance.assignments.node_runner.len()
            ),
        ),
        Event::InstanceDeleted { instance_id, reason } => {
            (None, format!("instance {} deleted: {reason}", short(instance_id)))
        }
        Event::RunnerStatusUpdated {
            runner_id,
            node,
            status,
            ..
        } => (
            Some(*node),
            format!(
                "runner {} on {}: {}",
                short(runner_id),
                short(node),
                runner_status(status)
            ),
        ),
        Event::TaskCreated { task } => (
            Some(task.origin),
            format!("task {} on instance {}", short(task.id), short(task.instance)),
        ),
        Event::TaskStatusUpdated { task_id, status } => (None, format!("task {} {status:?}", short(task_id))),
        Event::TaskFailed { task_id, error } => (
            None,
            format!("task {} failed ({:?}): {}", short(task_id), error.kind, error.message),
        ),
        Event::TaskDeleted { task_id } => (None, format!("task {} finished", short(task_id))),
    };
    EventLine {
        idx: e.idx,
        time_ms: e.time_ms,
        kind: e.event.name(),
        node,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_types::ids::{InstanceId, SessionId};
    use shoal_types::model::DeleteReason;

    fn indexed(event: Event) -> IndexedEvent {
        IndexedEvent {
            idx: 7,
            session: SessionId::NONE,
            prev: SessionId::NONE,
            time_ms: 1_000,
            origin: None,
            event,
        }
    }

    #[test]
    fn lines_name_the_kind_the_node_and_what_happened() {
        let node = NodeId::from_bytes([0xab; 16]);
        let lost = line(&indexed(Event::NodeTimedOut {
            node,
            reason: "silent for 3 s".into(),
        }));
        assert_eq!(lost.kind, "NodeTimedOut");
        assert_eq!(lost.node, Some(node));
        assert_eq!(lost.summary, "abababab lost: silent for 3 s");
        let download = line(&indexed(Event::DownloadUpdated {
            node,
            model_id: shoal_types::ids::ModelId::new("m".to_owned()),
            progress: DownloadProgress::Ongoing { done: 50, total: 200 },
        }));
        assert_eq!(download.summary, "m on abababab: 25%");
        let deleted = line(&indexed(Event::InstanceDeleted {
            instance_id: InstanceId::from_u128(1),
            reason: DeleteReason::User,
        }));
        assert_eq!(deleted.summary, "instance 00000000 deleted: deleted by the user");
        assert_eq!((deleted.idx, deleted.time_ms), (7, 1_000));
    }

    #[test]
    fn an_empty_download_total_does_not_divide_by_zero() {
        assert_eq!(download(&DownloadProgress::Ongoing { done: 5, total: 0 }), "5 bytes");
    }
}
