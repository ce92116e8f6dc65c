//! The Run aggregate: one execution of one template version.
//!
//! `decide` turns a stamped command into events without touching state or
//! doing IO; `apply` folds an event into state with no business logic
//! (events carry the facts). The engine carries out what the events imply:
//! a `StepDispatched` means "run this agent", a `StepRetryScheduled` means
//! "wake me at due_at".
//!
//! The files, one reason to change each:
//!
//! - [`command`]: the commands and their [`Stamp`]; [`error`]: refusals.
//! - [`state`]: the run's state, statuses and the checks decisions make;
//!   [`apply`]: folding events into it.
//! - the command families, each an `impl Run` with one method per command:
//!   [`results`] (start, agent results, recovery), [`leases`] (remote
//!   workers' claims, heartbeats and releases; the tick that expires and
//!   revokes leases and dispatches due retries), [`control`]
//!   (pause, resume, cancel, redirect), [`messages`] (the thread),
//!   [`refine`] (producer → evaluator → reviser loops),
//!   [`review`] (review gates, manual mode), [`rework`] (step retry,
//!   rollback) and [`retention`] (purging artifact bodies).
//! - [`decision`]: a decision in progress, with the dispatch and settle
//!   helpers every family uses; [`graph`]: readiness, skips, invalidation
//!   and reads; [`announce`]: the texts of the engine's system messages.
//! - [`effects`]: what committed events oblige the engine to do (dispatch
//!   a task, stop or release an attempt, start a redirect's run, wake at a
//!   time), decided here so that every executor handles every effect.
//! - [`events`], [`thread`]: the events (the stored contract) and the
//!   thread's types.

mod announce;
mod apply;
mod command;
mod control;
mod decision;
pub mod effects;
mod error;
mod events;
mod graph;
mod interactive;
mod leases;
mod messages;
mod refine;
mod results;
mod retention;
mod review;
mod rework;
mod state;
mod thread;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;

use decision::Decision;

pub use command::{Failure, Policy, RunCommand, Stamp, Stamped, StartRun};
pub use effects::{BudgetLeft, Effect, Task};
pub use error::RunError;
pub use events::{
    ArtifactContent, ArtifactWritten, ImportedRead, Outputs, PurgedVersion, RunEvent, Usage,
};
pub use interactive::{AgentMessage, Ask, Button, MessageInput, MAX_BUTTONS};
pub use state::{
    ArtifactState, ArtifactVersion, BestAttempt, InputValue, RefineRound, RetrySource, Run,
    RunStatus, StepInput, StepState, StepStatus, UsageTotals,
};
pub use thread::{
    Action, AgentNote, Author, MessageStatus, NewMessage, OpenInstruction, ThreadState,
};

/// A command decided: its events, what the engine must do once they are
/// committed, and the state they lead to (so the caller need not fold them
/// again).
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The events to commit, in order.
    pub events: Vec<RunEvent>,
    /// What the engine must do once they are committed.
    pub effects: Vec<Effect>,
    /// The state after the events.
    pub state: Run,
}

impl Run {
    /// Decides the events for `command` without changing `self`.
    pub fn decide(&self, command: RunCommand, stamp: &Stamp) -> Result<Vec<RunEvent>, RunError> {
        Ok(self.decision(command, stamp)?.events)
    }

    /// Decides `command` and the effects of its events (see
    /// [`effects::effects`]) without changing `self`.
    pub fn decide_with_effects(
        &self,
        command: RunCommand,
        stamp: &Stamp,
    ) -> Result<Decided, RunError> {
        let decision = self.decision(command, stamp)?;
        let effects = effects::effects(self, &decision.events, &decision.state);
        Ok(Decided {
            events: decision.events,
            effects,
            state: decision.state,
        })
    }

    /// The decision for `command`: each command family decides its own.
    fn decision(&self, command: RunCommand, stamp: &Stamp) -> Result<Decision, RunError> {
        match command {
            RunCommand::Start(start) => self.start(start, stamp),
            RunCommand::CompleteStep {
                step,
                lease,
                outputs,
                usage,
                comments,
                message,
            } => self.complete_step(step, lease, outputs, usage, comments, message, stamp),
            RunCommand::FailStep {
                step,
                lease,
                failure,
                comments,
            } => self.fail_step(step, lease, failure, comments, stamp),
            RunCommand::Tick => self.tick(stamp),
            RunCommand::Recover => self.recover(stamp),
            RunCommand::ClaimStep {
                step,
                lease,
                worker,
            } => self.claim_step(step, lease, worker, stamp),
            RunCommand::Heartbeat { step, lease } => self.heartbeat(step, lease, stamp),
            RunCommand::ReleaseStep {
                step,
                lease,
                comments,
            } => self.release_step(step, lease, comments, stamp),
            RunCommand::Pause => self.pause(stamp),
            RunCommand::Resume => self.resume(stamp),
            RunCommand::Cancel { reason } => self.cancel(reason, stamp),
            RunCommand::Redirect {
                new_run_id,
                instructions,
            } => self.redirect(new_run_id, instructions, stamp),
            RunCommand::PostMessage {
                message,
                redirect_to,
            } => self.post_message(message, redirect_to, stamp),
            RunCommand::AgentComments { comments } => self.agent_comments(comments, stamp),
            RunCommand::InterruptStep {
                step,
                lease,
                comments,
            } => self.interrupt_step(step, lease, comments, stamp),
            RunCommand::Approve { step, choice } => self.approve(step, choice, stamp),
            RunCommand::ClickButton {
                message,
                button,
                idempotency_key,
            } => self.click(message, button, idempotency_key, stamp),
            RunCommand::RetryStep {
                step,
                prompt_override,
            } => self.retry_step(step, prompt_override, stamp),
            RunCommand::TriggerStep {
                step,
                prompt_override,
            } => self.trigger_step(step, prompt_override, stamp),
            RunCommand::SetAutoRun { enabled } => self.set_auto_run(enabled, stamp),
            RunCommand::RollbackArtifact { name, to_version } => {
                self.rollback_artifact(name, to_version, stamp)
            }
            RunCommand::PurgeArtifacts { finished_before } => {
                self.purge_artifacts(finished_before, stamp)
            }
        }
    }
}

impl Aggregate for Run {
    const TYPE: &'static str = "Run";
    type Command = Stamped;
    type Event = RunEvent;
    type Error = RunError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command.command, &command.stamp)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(event);
    }
}

#[cfg(test)]
mod tests;
