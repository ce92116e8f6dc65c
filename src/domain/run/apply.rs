//! Folding events into the run's state. No business logic: the events
//! carry the facts (the next attempt, the new version, what became ready).

use std::sync::Arc;

use super::interactive;
use super::state::{
    ArtifactVersion, BestAttempt, RefineRound, Run, RunStatus, StepState, StepStatus,
};
use super::thread::{Action, Author, MessageStatus, OpenInstruction};
use super::{thread, ArtifactWritten, RunEvent, Usage};
use crate::domain::ids::{StepId, Timestamp};

impl Run {
    /// Folds one event into the state. No business logic: events carry the
    /// facts.
    pub fn apply_event(&mut self, event: RunEvent) {
        self.updated_at = event.at();
        if let RunEvent::MessageStatusChanged {
            message,
            status: MessageStatus::Processed | MessageStatus::Ignored,
            ..
        } = &event
        {
            self.thread.close(*message);
        }
        match event {
            RunEvent::RunStarted {
                run_id,
                template_id,
                template_version,
                definition,
                input,
                ready,
                retry_of,
                redirected_from,
                auto_run,
                owner,
                imports,
                at,
            } => {
                self.id = Some(run_id);
                self.imports = imports
                    .into_iter()
                    .map(|import| (import.reference(), import))
                    .collect();
                self.owner = owner;
                self.retry_of = retry_of;
                self.redirected_from = redirected_from;
                self.auto_run = auto_run;
                self.template_id = Some(template_id);
                self.template_version = template_version;
                self.steps = definition
                    .steps
                    .keys()
                    .map(|s| (s.clone(), StepState::default()))
                    .collect();
                self.definition = Arc::new(definition);
                self.input = input;
                self.status = RunStatus::Running;
                self.created_at = at;
                self.mark(ready, StepStatus::Ready);
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                lease,
                prompt_override,
                instructions,
                evaluating,
                at,
                ..
            } => {
                // An evaluator's dispatch leaves the attempt's instructions
                // and prompt override as they are.
                if !evaluating {
                    let handed: Vec<OpenInstruction> = self
                        .thread
                        .for_dispatch(&step)
                        .into_iter()
                        .filter(|i| instructions.contains(&i.message))
                        .collect();
                    self.thread
                        .pending
                        .retain(|i| !instructions.contains(&i.message));
                    if handed.is_empty() {
                        self.thread.in_flight.remove(&step);
                    } else {
                        self.thread.in_flight.insert(step.clone(), handed);
                    }
                    // The step's earlier questions and where their clicks
                    // sent the run are over: this attempt decides again.
                    self.close_questions(&step);
                }
                let s = self.steps.entry(step).or_default();
                if !evaluating {
                    s.prompt_override = prompt_override;
                }
                s.status = StepStatus::Running;
                s.attempt = attempt;
                s.lease = Some(lease);
                s.claimed_by = None;
                s.lease_expires_at = None;
                s.last_heartbeat_at = None;
                s.retry_at = None;
                s.started_at = Some(at);
            }
            RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                ready,
                skipped,
                usage,
                latest,
                at,
                ..
            } => {
                self.add_usage(&step, usage.as_ref());
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Completed;
                s.end_attempt();
                s.refine = RefineRound::default();
                s.error = None;
                s.finished_at = Some(at);
                self.add_versions(attempt, artifacts, at);
                for (name, version) in latest {
                    self.artifacts.entry(name).or_default().latest = version;
                }
                self.mark(ready, StepStatus::Ready);
                self.mark(skipped, StepStatus::Skipped);
            }
            RunEvent::StepAwaitingReview {
                step,
                attempt,
                artifacts,
                usage,
                at,
            } => self.await_user(
                step,
                attempt,
                artifacts,
                usage,
                at,
                StepStatus::AwaitingReview,
            ),
            RunEvent::StepAwaitingInput {
                step,
                attempt,
                artifacts,
                usage,
                at,
                ..
            } => self.await_user(
                step,
                attempt,
                artifacts,
                usage,
                at,
                StepStatus::AwaitingInput,
            ),
            RunEvent::ButtonClicked {
                message,
                button,
                idempotency_key,
                ..
            } => {
                if let Some(ask) = self.thread.asks.get_mut(&message) {
                    for (target, taken) in interactive::routes_of(&ask.buttons, &button) {
                        self.routes.insert(target, (ask.step.clone(), taken));
                    }
                    ask.clicked = Some((button, idempotency_key));
                }
            }
            RunEvent::StepApproved { .. } | RunEvent::MessageStatusChanged { .. } => {}
            RunEvent::StepFailed {
                step,
                error,
                will_retry,
                fails_run,
                at,
                ..
            } => {
                let s = self.steps.entry(step.clone()).or_default();
                s.end_attempt();
                s.error = Some(error.clone());
                s.failures += 1;
                if will_retry {
                    s.status = StepStatus::Ready;
                } else {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(at);
                    if fails_run {
                        self.failure.get_or_insert((step, error));
                    }
                }
            }
            RunEvent::StepRetryScheduled { step, due_at, .. } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.retry_at = Some(due_at);
            }
            RunEvent::StepInterrupted { step, .. }
            | RunEvent::StepReleased { step, .. }
            | RunEvent::StepLeaseRevoked { step, .. } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.end_attempt();
                s.retry_at = None;
            }
            RunEvent::StepProduced {
                step,
                attempt,
                artifacts,
                usage,
                at,
            } => {
                self.add_usage(&step, usage.as_ref());
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.end_attempt();
                s.refine.evaluating = true;
                s.refine.produced = artifacts
                    .iter()
                    .map(|w| (w.name.clone(), w.version))
                    .collect();
                self.add_versions(attempt, artifacts, at);
            }
            RunEvent::StepEvaluated {
                step,
                attempt,
                score,
                feedback,
                usage,
                ..
            } => {
                self.add_usage(&step, usage.as_ref());
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.end_attempt();
                let round = &mut s.refine;
                round.evaluating = false;
                round.evaluated += 1;
                round.feedback = Some(feedback);
                round.feedback_on = Some(attempt);
                let produced = std::mem::take(&mut round.produced);
                if round.best.as_ref().is_none_or(|b| score > b.score) {
                    round.best = Some(BestAttempt {
                        score,
                        attempt,
                        versions: produced,
                    });
                }
            }
            RunEvent::StepClaimed {
                step,
                worker,
                lease_expires_at,
                at,
                ..
            } => {
                let s = self.steps.entry(step).or_default();
                s.claimed_by = Some(worker);
                s.lease_expires_at = Some(lease_expires_at);
                s.last_heartbeat_at = Some(at);
            }
            RunEvent::StepHeartbeat {
                step,
                lease_expires_at,
                at,
                ..
            } => {
                let s = self.steps.entry(step).or_default();
                s.lease_expires_at = Some(lease_expires_at);
                s.last_heartbeat_at = Some(at);
            }
            RunEvent::StepLeaseExpired { step, expiries, .. } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.end_attempt();
                s.lease_expiries = expiries;
                s.retry_at = None;
            }
            // A pause or cancel still pending when the run ends is moot.
            RunEvent::RunCompleted { at, .. } => {
                self.finished_at = Some(at);
                self.status = RunStatus::Completed;
                self.pause_requested = false;
                self.cancel_requested = None;
                self.cancel_grace_until = None;
            }
            RunEvent::RunFailed { at, .. } => {
                self.finished_at = Some(at);
                self.status = RunStatus::Failed;
                self.pause_requested = false;
                self.cancel_requested = None;
                self.cancel_grace_until = None;
            }
            RunEvent::PauseRequested { .. } => self.pause_requested = true,
            RunEvent::RunPaused { .. } => {
                self.status = RunStatus::Paused;
                self.pause_requested = false;
            }
            RunEvent::RunResumed { .. } => {
                self.status = RunStatus::Running;
                self.pause_requested = false;
            }
            RunEvent::CancelRequested {
                reason,
                grace_until,
                ..
            } => {
                self.cancel_requested = Some(reason);
                self.cancel_grace_until = grace_until;
            }
            RunEvent::RunCancelled { at, .. } => {
                self.finished_at = Some(at);
                self.status = RunStatus::Cancelled;
                self.pause_requested = false;
                self.cancel_grace_until = None;
            }
            RunEvent::RunRedirected { to, .. } => self.redirected_to = Some(to),
            RunEvent::ArtifactsPurged { at, .. } => self.purged_at = Some(at),
            RunEvent::AutoRunChanged { enabled, .. } => self.auto_run = enabled,
            RunEvent::MessagePosted {
                message,
                author,
                action,
                content,
                metadata,
                step,
                idempotency_key,
                status,
                buttons,
                ..
            } => {
                self.thread.last = message;
                if let (Author::Agent, Some(step), false) = (author, step, buttons.is_empty()) {
                    let attempt = self.steps.get(&step).map_or(0, |s| s.attempt);
                    self.thread.asks.insert(
                        message,
                        interactive::Ask {
                            step,
                            attempt,
                            buttons,
                            clicked: None,
                        },
                    );
                }
                if let Some(key) = idempotency_key {
                    let fingerprint = thread::fingerprint(action, &content, &metadata);
                    self.thread.keys.insert(key, (message, fingerprint));
                }
                if action == Action::Instruction && status == MessageStatus::Pending {
                    self.thread
                        .pending
                        .push(OpenInstruction { message, content });
                }
            }
            RunEvent::StepRetryRequested {
                step,
                prompt_override,
                invalidated,
                reopens_run,
                ..
            } => {
                self.close_questions(&step);
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.end_attempt();
                s.retry_at = None;
                s.finished_at = None;
                s.error = None;
                s.failures = 0;
                s.refine = RefineRound::default();
                s.prompt_override = prompt_override;
                self.invalidate(invalidated, reopens_run);
            }
            RunEvent::ArtifactRolledBack {
                name,
                to_version,
                invalidated,
                ready,
                skipped,
                reopens_run,
                ..
            } => {
                self.artifacts.entry(name).or_default().latest = to_version;
                self.invalidate(invalidated, reopens_run);
                self.mark(ready, StepStatus::Ready);
                self.mark(skipped, StepStatus::Skipped);
            }
        }
    }

    pub(super) fn add_versions(
        &mut self,
        attempt: u32,
        artifacts: Vec<ArtifactWritten>,
        at: Timestamp,
    ) {
        for written in artifacts {
            let a = self.artifacts.entry(written.name).or_default();
            a.latest = written.version;
            a.versions.push(ArtifactVersion {
                version: written.version,
                attempt,
                content: written.content,
                at,
            });
        }
    }

    /// Sends steps back to `pending` (their inputs will change); reopens the
    /// run when the event says so.
    /// An attempt finished and its step waits for a user (`status`: a
    /// review or a click): its outputs are artifact versions already.
    fn await_user(
        &mut self,
        step: StepId,
        attempt: u32,
        artifacts: Vec<ArtifactWritten>,
        usage: Option<Usage>,
        at: Timestamp,
        status: StepStatus,
    ) {
        self.add_usage(&step, usage.as_ref());
        let s = self.steps.entry(step).or_default();
        s.status = status;
        s.end_attempt();
        s.error = None;
        self.add_versions(attempt, artifacts, at);
    }

    /// Forgets `step`'s questions and where clicks on them sent the run
    /// (the step runs again, or waits to).
    fn close_questions(&mut self, step: &StepId) {
        self.thread.asks.retain(|_, ask| ask.step != *step);
        self.routes.retain(|_, (asker, _)| asker != step);
    }

    pub(super) fn invalidate(&mut self, steps: Vec<StepId>, reopens_run: bool) {
        for step in steps {
            self.close_questions(&step);
            let s = self.steps.entry(step).or_default();
            s.status = StepStatus::Pending;
            s.end_attempt();
            s.refine = RefineRound::default();
            s.retry_at = None;
            s.error = None;
            s.finished_at = None;
            s.failures = 0;
        }
        if reopens_run {
            self.status = RunStatus::Running;
            self.failure = None;
            self.finished_at = None;
        }
    }

    fn add_usage(&mut self, step: &StepId, usage: Option<&Usage>) {
        if let Some(usage) = usage {
            self.usage.add(usage);
            self.steps.entry(step.clone()).or_default().usage.add(usage);
        }
    }

    pub(super) fn mark(&mut self, steps: Vec<StepId>, status: StepStatus) {
        for step in steps {
            self.steps.entry(step).or_default().status = status;
        }
    }
}

impl StepState {
    /// The current attempt is over: its lease and its claim go, and a run of
    /// lease expiries ends (a `StepLeaseExpired` sets the count after this).
    fn end_attempt(&mut self) {
        self.lease = None;
        self.claimed_by = None;
        self.lease_expires_at = None;
        self.last_heartbeat_at = None;
        self.lease_expiries = 0;
    }
}
