//! The one way the API sends a command (§11.2's waiters): send it, wait until State shows its effect or the master
//! refuses it, resending the same command id every second meanwhile (commands are idempotent by id), which also
//! carries it across a master change. Handlers wait for the answer; the stream registry spawns the same wait for a
//! stream's `TextGeneration` (until State shows its task) and for its `TaskCancelled` and `TaskFinished`.

use std::time::Duration;

use axum::http::StatusCode;
use shoal_cluster::ClusterHandle;
use shoal_types::State;
use shoal_types::command::Command;
use shoal_types::ids::CommandId;

use crate::error::ApiError;

/// How long a handler waits for the master's answer before it gives up with 504.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an unanswered command is sent again.
pub const RESEND_EVERY: Duration = Duration::from_secs(1);

/// Sends `command` and waits until `effect` finds its result in State, the master refuses it, or
/// [`ANSWER_TIMEOUT`] passes.
pub async fn command_and_wait<T>(
    cluster: &ClusterHandle,
    command_id: CommandId,
    command: Command,
    effect: impl Fn(&State) -> Option<T>,
) -> Result<T, ApiError> {
    command_and_wait_for(cluster, command_id, command, effect, ANSWER_TIMEOUT).await
}

/// [`command_and_wait`] with its own time limit. `effect` is checked after every State change and before every
/// resend, so an effect that also reads something outside State (a stream still open) is seen within a second.
pub async fn command_and_wait_for<T>(
    cluster: &ClusterHandle,
    command_id: CommandId,
    command: Command,
    effect: impl Fn(&State) -> Option<T>,
    timeout: Duration,
) -> Result<T, ApiError> {
    // Subscribe before sending, so neither the effect nor a refusal can slip past.
    let mut rejections = cluster.rejections();
    let mut views = cluster.watch();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut resend = tokio::time::interval(RESEND_EVERY);
    loop {
        if let Some(found) = effect(&views.borrow_and_update().state) {
            return Ok(found);
        }
        tokio::select! {
            _ = resend.tick() => {
                if cluster.view().status.session.is_none() {
                    continue; // no master known yet: wait for one
                }
                cluster.command(command_id, command.clone()).map_err(|_| ApiError::stopping())?;
            }
            changed = views.changed() => {
                if changed.is_err() {
                    return Err(ApiError::stopping());
                }
            }
            rejection = rejections.recv() => {
                if let Ok(rejection) = rejection
                    && rejection.command_id == command_id
                {
                    return Err(ApiError::from_reject(&rejection.reason));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("the master did not answer within {} s", timeout.as_secs()),
                ));
            }
        }
    }
}
