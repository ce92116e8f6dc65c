//! Human control of steps: review gates (approve, with a choice) and manual
//! mode (triggering ready steps, switching `auto_run`).

use super::command::Stamp;
use super::decision::Decision;
use super::graph::choice_output;
use super::state::{Run, RunStatus, StepStatus};
use super::{ArtifactContent, ArtifactWritten, RunError, RunEvent};
use crate::domain::ids::{ArtifactName, StepId};
use serde_json::Value;

impl Run {
    /// Approves a step awaiting review, with a choice when it offers some.
    pub(super) fn approve(
        &self,
        step: StepId,
        choice: Option<String>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        let state = self.step_state(&step)?;
        if state.status != StepStatus::AwaitingReview {
            return Err(RunError::StepNotAwaitingReview(step, state.status.as_str()));
        }
        let choices = &self.definition.steps[&step].choices;
        match (&choice, choices.is_empty()) {
            (Some(_), true) => return Err(RunError::NoChoices(step)),
            (None, false) => {
                return Err(RunError::ChoiceRequired {
                    step,
                    choices: choices.clone(),
                })
            }
            (Some(c), false) if !choices.contains(c) => {
                return Err(RunError::InvalidChoice {
                    step,
                    choice: c.clone(),
                    choices: choices.clone(),
                })
            }
            _ => {}
        }
        let artifacts: Vec<ArtifactWritten> = choice
            .iter()
            .map(|c| {
                let name = ArtifactName::new(&step, &choice_output());
                ArtifactWritten {
                    version: self.next_version(&name),
                    name,
                    content: ArtifactContent::Inline(Value::String(c.clone())),
                }
            })
            .collect();
        let (ready, skipped) = self.advance_after(&step, &artifacts);
        let attempt = state.attempt;
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::StepApproved {
            step: step.clone(),
            attempt,
            choice,
            at,
        });
        d.record(RunEvent::StepCompleted {
            step,
            attempt,
            artifacts,
            ready,
            skipped,
            usage: None,
            latest: Default::default(),
            final_score: None,
            at,
        });
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }

    /// Dispatches a ready step now (manual mode).
    pub(super) fn trigger_step(
        &self,
        step: StepId,
        prompt_override: Option<String>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        if self.status == RunStatus::Paused || self.pause_requested {
            return Err(RunError::Paused);
        }
        if let Some((failed, _)) = &self.failure {
            return Err(RunError::Failing(failed.clone()));
        }
        let state = self.step_state(&step)?;
        if state.status != StepStatus::Ready {
            return Err(RunError::StepNotReady(step, state.status.as_str()));
        }
        // Without an override of its own, a trigger keeps the one a
        // retry set.
        let prompt_override = prompt_override.or_else(|| state.prompt_override.clone());
        let mut d = Decision::new(self, stamp);
        d.dispatch(step, at, false, prompt_override);
        Ok(d)
    }

    /// Switches manual mode.
    pub(super) fn set_auto_run(&self, enabled: bool, stamp: &Stamp) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.auto_run == enabled {
            return Ok(Decision::new(self, stamp));
        }
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::AutoRunChanged { enabled, at });
        d.dispatch_due(at);
        Ok(d)
    }
}
