//! Rework: running a step again with a new prompt, and rolling an artifact
//! back to an earlier version. Both send the steps downstream back to
//! pending and may reopen a finished run.

use std::collections::{BTreeMap, BTreeSet};

use super::command::Stamp;
use super::decision::Decision;
use super::state::{Run, StepStatus};
use super::{RunError, RunEvent};
use crate::domain::ids::{ArtifactName, StepId};

impl Run {
    /// Runs a finished step again (optionally with a new prompt); everything downstream goes back to pending.
    pub(super) fn retry_step(
        &self,
        step: StepId,
        prompt_override: Option<String>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_reopenable()?;
        let state = self.step_state(&step)?;
        if !matches!(
            state.status,
            StepStatus::Completed
                | StepStatus::Failed
                | StepStatus::AwaitingReview
                | StepStatus::AwaitingInput
        ) {
            return Err(RunError::StepNotRetryable(step, state.status.as_str()));
        }
        let invalidated = self.invalidated_below(&step);
        let mut rerun: BTreeSet<&StepId> = invalidated.iter().collect();
        rerun.insert(&step);
        let reopens_run = self.reopens(&rerun)?;
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::StepRetryRequested {
            step: step.clone(),
            prompt_override: prompt_override.clone(),
            invalidated,
            reopens_run,
            at,
        });
        // A retry is the user's trigger: it runs now, manual mode or
        // not, unless the run is paused or pausing.
        if d.state.dispatching() {
            d.dispatch(step, at, false, prompt_override);
        }
        // A reopened run may have other ready steps waiting.
        d.dispatch_due(at);
        // Running steps it invalidated may have been the last ones
        // a pause waited for.
        d.settle(at);
        Ok(d)
    }

    /// Moves `latest` of an artifact back to an earlier version; the steps downstream of its step run again.
    pub(super) fn rollback_artifact(
        &self,
        name: ArtifactName,
        to_version: u32,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_reopenable()?;
        let artifact = self
            .artifacts
            .get(&name)
            .ok_or_else(|| RunError::UnknownArtifact(name.clone()))?;
        let Some(old_content) = artifact.content(to_version) else {
            return Err(RunError::UnknownArtifactVersion(name, to_version));
        };
        if artifact.latest == to_version {
            return Err(RunError::AlreadyAtVersion(name, to_version));
        }
        let producer = self
            .steps
            .get_key_value(name.step())
            .map(|(step, _)| step.clone())
            .ok_or_else(|| RunError::UnknownArtifact(name.clone()))?;
        if self.steps[&producer].status == StepStatus::Running {
            return Err(RunError::StepRunning(producer));
        }
        let invalidated = self.invalidated_below(&producer);
        let reopens_run = if invalidated.is_empty() {
            false
        } else {
            self.reopens(&invalidated.iter().collect())?
        };
        // Evaluate the dependants as they will be: the invalidated
        // steps pending, the artifact at its old version.
        let seed = invalidated
            .iter()
            .map(|s| (s.clone(), StepStatus::Pending))
            .collect();
        let (ready, skipped) = if invalidated.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            self.evaluate(
                self.definition.dependants_of(&producer).cloned().collect(),
                seed,
                std::iter::once((name.clone(), old_content.clone())).collect(),
                &BTreeMap::new(),
            )
        };
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::ArtifactRolledBack {
            from_version: artifact.latest,
            name,
            to_version,
            invalidated,
            ready,
            skipped,
            reopens_run,
            at,
        });
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }
}
