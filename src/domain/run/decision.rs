//! A decision in progress: events are applied to a working copy of the run
//! as they are recorded, so later decisions of the same command see the
//! earlier ones. Recording an event also records what follows from it in
//! the thread (announcements, the status of instructions); the helpers that
//! dispatch steps and settle the run live here too, since every command
//! family uses them.

use serde_json::Value;

use super::announce;
use super::command::{Failure, Stamp};
use super::state::{Run, RunStatus, StepStatus};
use super::thread::{Action, AgentNote, Author, MessageStatus};
use super::RunEvent;
use crate::domain::definition::MAX_BACKOFF_MS;
use crate::domain::ids::{LeaseToken, StepId, Timestamp};

/// Decisions accumulate here: each event is applied to a working copy as it
/// is recorded, so later decisions in the same command see earlier ones.
/// Recording an event also records what follows from it in the thread: the
/// engine's announcements (system messages) and the status of instructions.
pub(super) struct Decision {
    pub(super) state: Run,
    pub(super) events: Vec<RunEvent>,
    seed: String,
    leases: usize,
}

impl Decision {
    pub(super) fn new(state: &Run, stamp: &Stamp) -> Self {
        Self {
            state: state.clone(),
            events: Vec::new(),
            seed: stamp.lease_seed.clone(),
            leases: 0,
        }
    }

    /// This decision with `earlier` (events decided before it on the state
    /// it started from) in front of its own.
    pub(super) fn after(mut self, mut earlier: Vec<RunEvent>) -> Self {
        earlier.append(&mut self.events);
        self.events = earlier;
        self
    }

    /// Records an event and what follows from it in the thread.
    pub(super) fn record(&mut self, event: RunEvent) {
        let was_paused = self.state.status == RunStatus::Paused;
        self.push(event.clone());
        self.follow_up(&event, was_paused);
    }

    /// Records an event and nothing else (its follow-ups are already
    /// decided).
    pub(super) fn push(&mut self, event: RunEvent) {
        self.state.apply_event(event.clone());
        self.events.push(event);
    }

    pub(super) fn follow_up(&mut self, event: &RunEvent, was_paused: bool) {
        let at = event.at();
        match event {
            RunEvent::StepCompleted { step, .. } => {
                let done: Vec<u32> = self
                    .state
                    .thread
                    .in_flight
                    .get(step)
                    .map(|list| list.iter().map(|i| i.message).collect())
                    .unwrap_or_default();
                for message in done {
                    self.push(RunEvent::MessageStatusChanged {
                        message,
                        status: MessageStatus::Processed,
                        step: Some(step.clone()),
                        reason: None,
                        at,
                    });
                }
            }
            RunEvent::RunCompleted { .. }
            | RunEvent::RunFailed { .. }
            | RunEvent::RunCancelled { .. } => {
                let reason = announce::instructions_ignored(event);
                let open: Vec<u32> = self.state.thread.open().map(|i| i.message).collect();
                for message in open {
                    self.push(RunEvent::MessageStatusChanged {
                        message,
                        status: MessageStatus::Ignored,
                        step: None,
                        reason: Some(reason.clone()),
                        at,
                    });
                }
            }
            _ => {}
        }
        if let Some((content, step)) = announce::announcement(&self.state, event, was_paused) {
            self.push(RunEvent::MessagePosted {
                message: self.state.thread.last + 1,
                author: Author::System,
                action: Action::Comment,
                content,
                metadata: Value::Null,
                step,
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                buttons: Vec::new(),
                input: None,
                at,
            });
        }
    }

    /// Records the comments an agent posted, as messages of the step.
    pub(super) fn agent_comments(&mut self, step: &StepId, comments: Vec<AgentNote>) {
        for note in comments {
            self.push(RunEvent::MessagePosted {
                message: self.state.thread.last + 1,
                author: Author::Agent,
                action: Action::Comment,
                content: note.content,
                metadata: Value::Null,
                step: Some(step.clone()),
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                buttons: Vec::new(),
                input: None,
                at: note.at,
            });
        }
    }

    pub(super) fn next_lease(&mut self) -> LeaseToken {
        self.leases += 1;
        LeaseToken::new(format!("{}.{}", self.seed, self.leases))
    }

    /// Dispatches every ready step that is due, unless the run may not
    /// dispatch or is in manual mode.
    pub(super) fn dispatch_due(&mut self, at: Timestamp) {
        if !self.state.dispatching() || !self.state.auto_run {
            return;
        }
        let due: Vec<(StepId, Option<String>)> = self
            .state
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Ready && s.retry_at.is_none_or(|t| t <= at))
            .map(|(id, s)| (id.clone(), s.prompt_override.clone()))
            .collect();
        for (step, prompt_override) in due {
            self.dispatch(step, at, false, prompt_override);
        }
    }

    /// Dispatches one step, handing it the open instructions it gets.
    pub(super) fn dispatch(
        &mut self,
        step: StepId,
        at: Timestamp,
        recovered: bool,
        prompt_override: Option<String>,
    ) {
        let current = self.state.steps.get(&step).map_or(0, |s| s.attempt);
        // A refine loop's evaluator scores the attempt that produced: it
        // keeps its number, and the thread's instructions are not its.
        let evaluating = self
            .state
            .steps
            .get(&step)
            .is_some_and(|s| s.refine.evaluating);
        let attempt = if recovered || evaluating {
            current.max(1)
        } else {
            current + 1
        };
        let reads = self.state.reads_of(&step);
        let imports = self.state.imports_of(&step);
        let lease = self.next_lease();
        let (instructions, newly): (Vec<u32>, Vec<u32>) = if evaluating {
            (Vec::new(), Vec::new())
        } else {
            (
                self.state
                    .thread
                    .for_dispatch(&step)
                    .iter()
                    .map(|i| i.message)
                    .collect(),
                self.state
                    .thread
                    .pending
                    .iter()
                    .map(|i| i.message)
                    .collect(),
            )
        };
        self.record(RunEvent::StepDispatched {
            step: step.clone(),
            attempt,
            lease,
            reads,
            recovered,
            prompt_override: if evaluating { None } else { prompt_override },
            instructions,
            evaluating,
            imports,
            at,
        });
        for message in newly {
            self.push(RunEvent::MessageStatusChanged {
                message,
                status: MessageStatus::Acknowledged,
                step: Some(step.clone()),
                reason: None,
                at,
            });
        }
    }

    /// Records the failure of an attempt: another attempt is scheduled when
    /// the failure is retryable, the step's retry policy has attempts left
    /// and the run is neither failing nor cancelling; the retry waits the
    /// policy's back-off, or longer when the agent was told to wait.
    pub(super) fn fail_attempt(
        &mut self,
        step: &StepId,
        attempt: u32,
        failure: Failure,
        at: Timestamp,
    ) {
        let policy = self.state.definition.steps[step].retry;
        let failures = self.state.steps.get(step).map_or(0, |s| s.failures) + 1;
        let will_retry = failure.retryable
            && failures < policy.max_attempts
            && self.state.failure.is_none()
            && self.state.cancel_requested.is_none();
        // While a cancel is pending a failure is not retried and does not
        // fail the run: the run ends cancelled.
        let fails_run = !will_retry && self.state.cancel_requested.is_none();
        // A refine loop's evaluator that failed scores the same attempt again.
        let evaluating = self
            .state
            .steps
            .get(step)
            .is_some_and(|s| s.refine.evaluating);
        let next_attempt = if evaluating { attempt } else { attempt + 1 };
        self.record(RunEvent::StepFailed {
            step: step.clone(),
            attempt,
            error: failure.error,
            will_retry,
            fails_run,
            retryable: failure.retryable,
            at,
        });
        if will_retry {
            let delay_ms = policy
                .backoff_ms
                .max(failure.retry_after_ms.unwrap_or(0).min(MAX_BACKOFF_MS));
            self.record(RunEvent::StepRetryScheduled {
                step: step.clone(),
                next_attempt,
                delay_ms,
                due_at: at.plus_millis(delay_ms),
                at,
            });
        }
    }

    /// Reaches the state the run is heading for once nothing runs: failed,
    /// cancelled, completed or paused, in that order of precedence.
    pub(super) fn settle(&mut self, at: Timestamp) {
        if !matches!(self.state.status, RunStatus::Running | RunStatus::Paused) {
            return;
        }
        let running = self
            .state
            .steps
            .values()
            .any(|s| s.status == StepStatus::Running);
        if running {
            return;
        }
        if let Some((step, error)) = self.state.failure.clone() {
            self.record(RunEvent::RunFailed { step, error, at });
        } else if let Some(reason) = self.state.cancel_requested.clone() {
            self.record(RunEvent::RunCancelled { reason, at });
        } else if self.state.steps.values().all(|s| s.status.is_done()) {
            self.record(RunEvent::RunCompleted { at });
        } else if self.state.pause_requested {
            self.record(RunEvent::RunPaused { at });
        }
    }
}
