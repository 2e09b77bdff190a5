//! Rank 0's side of prompts off the log (issue 15): the content of each task this node's rank 0 takes next is
//! fetched from the task's API node as [`shoal_core::prompts::plan`] says, checked against the digest State holds,
//! kept in memory only until the task is submitted (or State drops it), and never written anywhere.

use shoal_cluster::FetchError;
use shoal_core::prompts::{FetchOutcome, PromptAction, verify};
use shoal_types::State;
use shoal_types::ids::TaskId;
use shoal_types::params::GenerationParams;

use crate::tasks::Route;
use crate::{Input, Shell};

impl Shell {
    pub(crate) fn carry_out_prompt(&mut self, action: PromptAction, state: &State) {
        match action {
            PromptAction::Forget { task } => {
                self.contents.remove(&task);
                self.local.prompts.forget(&task);
            }
            PromptAction::Fail { task, kind, message } => {
                self.local.prompts.gave_up(task);
                let Some(t) = state.tasks.get(&task) else { return };
                tracing::info!(%task, %message, "the request's content cannot be had; failing the task");
                self.fail_task(Route::of(t), kind, message);
            }
            PromptAction::Fetch {
                task,
                origin,
                command_id,
            } => {
                self.local.prompts.started(task);
                let cluster = self.cluster.clone();
                let inputs = self.inputs.clone();
                let spawned = std::thread::Builder::new()
                    .name("shoal-worker-prompt".into())
                    .spawn(move || {
                        let result = Box::new(cluster.fetch_prompt(origin, command_id));
                        let _ = inputs.send(Input::Prompt { task, result });
                    });
                if let Err(error) = spawned {
                    let outcome = FetchOutcome::Unanswered(format!("cannot start a fetch: {error}"));
                    self.local.prompts.finished(task, outcome, crate::unix_ms());
                }
            }
        }
    }

    /// A fetch ended: the content is kept if it is the task's (digest and metadata as State holds them).
    pub(crate) fn on_prompt(
        &mut self,
        task: TaskId,
        result: Result<([u8; 16], GenerationParams), FetchError>,
        now_ms: u64,
    ) {
        let state = self.cluster.view().state;
        let outcome = match result {
            Ok((salt, params)) => match state.tasks.get(&task) {
                Some(t) if verify(&t.prompt, &t.params, &salt, &params) => {
                    self.contents.insert(task, params);
                    FetchOutcome::Found
                }
                Some(_) => FetchOutcome::Mismatch,
                // Gone from State meanwhile: nothing to keep; the plan forgets the record.
                None => FetchOutcome::Missing,
            },
            Err(FetchError::Missing) => FetchOutcome::Missing,
            Err(FetchError::Unanswered(why)) => FetchOutcome::Unanswered(why),
        };
        tracing::debug!(%task, ?outcome, "content fetch ended");
        self.local.prompts.finished(task, outcome, now_ms);
    }
}
