//! Starting a run and recording what its agents report: completions,
//! failures, interruptions and comments; dispatching due retries, and
//! recovery after a restart.

use super::command::{Failure, Stamp, StartRun};
use super::decision::Decision;
use super::interactive::AgentMessage;
use super::state::{Run, StepStatus};
use super::thread::{Action, AgentNote, Author, MessageStatus};
use super::{ArtifactWritten, Outputs, RunError, RunEvent, Usage};
use crate::domain::definition::Definition;
use crate::domain::ids::{ArtifactName, LeaseToken, StepId};
use serde_json::Value;

impl Run {
    /// Starts the run: copies the definition, marks the roots ready and dispatches them.
    pub(super) fn start(&self, start: StartRun, stamp: &Stamp) -> Result<Decision, RunError> {
        let StartRun {
            run_id,
            template_id,
            template_version,
            definition,
            input,
            retry_of,
            redirected_from,
            auto_run,
            owner,
            imports,
        } = start;
        let at = stamp.at;
        if self.id.is_some() {
            return Err(RunError::AlreadyStarted);
        }
        let mut d = Decision::new(self, stamp);
        let ready = definition.roots().cloned().collect();
        let (redirected_from, instructions) = redirected_from.unzip();
        d.record(RunEvent::RunStarted {
            run_id,
            template_id,
            template_version,
            definition: Definition::clone(&definition),
            input,
            ready,
            retry_of,
            redirected_from,
            auto_run,
            owner,
            imports,
            at,
        });
        if let Some(content) = instructions {
            d.record(RunEvent::MessagePosted {
                message: 1,
                author: Author::User,
                action: Action::Instruction,
                content,
                metadata: Value::Null,
                step: None,
                idempotency_key: None,
                status: MessageStatus::Pending,
                reason: None,
                buttons: Vec::new(),
                input: None,
                at,
            });
        }
        d.dispatch_due(at);
        Ok(d)
    }

    /// An agent finished a step: its outputs become artifact versions and
    /// its message (if any) is posted to the thread; dependants become
    /// ready, or the step awaits review, or a click on its message.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn complete_step(
        &self,
        step: StepId,
        lease: LeaseToken,
        outputs: Outputs,
        usage: Option<Usage>,
        comments: Vec<AgentNote>,
        message: Option<AgentMessage>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        if let Some(message) = &message {
            message.check(&step, &self.definition)?;
        }
        if self.definition.steps[&step].review && message.as_ref().is_some_and(AgentMessage::routes)
        {
            return Err(RunError::InvalidMessage {
                step,
                reason: "a review step's approval decides where the run goes: its message's \
                         buttons cannot name a next_step"
                    .into(),
            });
        }
        let waits = self.waits_for_click(&step, message.as_ref());
        if waits && message.as_ref().is_none_or(|m| m.buttons.is_empty()) {
            return Err(RunError::InvalidMessage {
                step,
                reason: "the step waits for a click (wait_for_click): its agent must return a \
                         message with buttons"
                    .into(),
            });
        }
        if let Some(refine) = &self.definition.steps[&step].refine {
            if message.is_some() {
                return Err(RunError::InvalidMessage {
                    step,
                    reason: "a refine step's attempts cannot post a message".into(),
                });
            }
            return self.refine_result(step, attempt, refine, outputs, usage, comments, stamp);
        }
        let artifacts: Vec<ArtifactWritten> = outputs
            .into_iter()
            .map(|(output, content)| ArtifactWritten {
                version: self.next_version(&ArtifactName::new(&step, &output)),
                name: ArtifactName::new(&step, &output),
                content,
            })
            .collect();
        let mut d = Decision::new(self, stamp);
        d.agent_comments(&step, comments);
        let posted = message.map(|message| {
            let number = d.state.thread.last + 1;
            d.record(RunEvent::MessagePosted {
                message: number,
                author: Author::Agent,
                action: Action::Comment,
                content: message.content,
                metadata: Value::Null,
                step: Some(step.clone()),
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                buttons: message.buttons,
                input: message.input,
                at,
            });
            number
        });
        if let (true, Some(message)) = (waits, posted) {
            d.record(RunEvent::StepAwaitingInput {
                step,
                attempt,
                artifacts,
                usage,
                message,
                at,
            });
        } else if self.definition.steps[&step].review {
            d.record(RunEvent::StepAwaitingReview {
                step,
                attempt,
                artifacts,
                usage,
                at,
            });
        } else {
            let (ready, skipped) = self.advance_after(&step, &artifacts);
            d.record(RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                ready,
                skipped,
                usage,
                latest: Default::default(),
                final_score: None,
                at,
            });
            d.dispatch_due(at);
        }
        d.settle(at);
        Ok(d)
    }

    /// An agent failed a step: another attempt is scheduled while the retry policy allows, else the step fails for good.
    pub(super) fn fail_step(
        &self,
        step: StepId,
        lease: LeaseToken,
        failure: Failure,
        comments: Vec<AgentNote>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        let mut d = Decision::new(self, stamp);
        d.agent_comments(&step, comments);
        d.fail_attempt(&step, attempt, failure, at);
        d.settle(at);
        Ok(d)
    }

    /// A running agent stopped because it was asked to: the step is ready again.
    pub(super) fn interrupt_step(
        &self,
        step: StepId,
        lease: LeaseToken,
        comments: Vec<AgentNote>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        let mut d = Decision::new(self, stamp);
        d.agent_comments(&step, comments);
        d.record(RunEvent::StepInterrupted { step, attempt, at });
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }

    /// Records comments agents posted, dropping those of attempts no longer current.
    pub(super) fn agent_comments(
        &self,
        comments: Vec<(StepId, LeaseToken, AgentNote)>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        self.check_active()?;
        let mut d = Decision::new(self, stamp);
        for (step, lease, note) in comments {
            if self.check_running_step(&step, &lease).is_ok() {
                d.agent_comments(&step, vec![note]);
            }
        }
        Ok(d)
    }

    /// After a restart: re-dispatches the steps whose attempts died with the old process.
    pub(super) fn recover(&self, stamp: &Stamp) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        let mut d = Decision::new(self, stamp);
        // Attempts claimed by remote workers are not this process's: they
        // go on, and their leases expire only by time.
        let running: Vec<(StepId, Option<String>)> = self
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Running && s.claimed_by.is_none())
            .map(|(id, s)| (id.clone(), s.prompt_override.clone()))
            .collect();
        for (step, prompt_override) in running {
            d.dispatch(step, at, true, prompt_override);
        }
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }
}
