//! The Run aggregate: one execution of one template version.
//!
//! `decide` turns a command into events without touching state or doing IO;
//! `apply` folds an event into state with no business logic (events carry the
//! facts). The engine carries out what the events imply: a `StepDispatched`
//! means "run this agent", a `StepRetryScheduled` means "wake me at due_at".

mod events;
mod thread;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use events::{ArtifactContent, ArtifactWritten, Outputs, RunEvent};
pub use thread::{
    Action, AgentNote, Author, MessageStatus, NewMessage, OpenInstruction, ThreadState,
};

use super::definition::{Condition, Definition};
use super::ids::{ArtifactName, LeaseToken, OutputName, RunId, StepId, TemplateId, Timestamp};

/// The output a review choice is recorded as.
fn choice_output() -> OutputName {
    OutputName::parse("choice").expect("'choice' is a valid output name")
}

/// Status of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Not started yet.
    #[default]
    Queued,
    /// Steps are being executed.
    Running,
    /// Every step completed.
    Completed,
    /// A step failed for good.
    Failed,
    /// Paused by a user: nothing runs until it is resumed.
    Paused,
    /// Cancelled by a user.
    Cancelled,
}

impl RunStatus {
    /// The status as the API and the tables spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Paused => "paused",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the API spelling.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Completed,
            Self::Failed,
            Self::Paused,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the run can change no more.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Status of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies.
    #[default]
    Pending,
    /// Its dependencies are done; it will be dispatched (at `retry_at` if set).
    Ready,
    /// Dispatched to its agent.
    Running,
    /// Its agent finished; it waits for a user's approval (review steps).
    AwaitingReview,
    /// Done; its outputs are artifacts.
    Completed,
    /// Failed for good.
    Failed,
    /// Not run: its `when` condition was false, or every dependency was
    /// skipped.
    Skipped,
}

impl StepStatus {
    /// The status as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Running => "running",
            Self::AwaitingReview => "awaiting_review",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    /// Completed or skipped: dependants need not wait for it.
    pub fn is_done(self) -> bool {
        matches!(self, Self::Completed | Self::Skipped)
    }
}

/// The state of one step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Where it is.
    pub status: StepStatus,
    /// The current (or last) attempt, 0 before the first dispatch.
    pub attempt: u32,
    /// The lease of the current dispatch.
    pub lease: Option<LeaseToken>,
    /// When the next attempt is due, while a retry waits.
    pub retry_at: Option<Timestamp>,
    /// The last error.
    pub error: Option<String>,
    /// When the current attempt was dispatched.
    pub started_at: Option<Timestamp>,
    /// When the step completed or failed for good.
    pub finished_at: Option<Timestamp>,
    /// The prompt a user set for this step's attempts instead of its own
    /// (by a step retry or a trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_override: Option<String>,
    /// Failed attempts since the retry budget was last renewed (by a user's
    /// step retry, or when a change upstream sent the step back to pending):
    /// the policy's `max_attempts` counts these, so interrupted attempts and
    /// earlier rounds do not use it up.
    #[serde(default)]
    pub failures: u32,
}

/// One stored version of an artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactVersion {
    /// The version number.
    pub version: u32,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// The body.
    pub content: ArtifactContent,
    /// When it was written.
    pub at: Timestamp,
}

/// All versions of one artifact and which is `latest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArtifactState {
    /// The version `latest` points at.
    pub latest: u32,
    /// Every version, oldest first.
    pub versions: Vec<ArtifactVersion>,
}

impl ArtifactState {
    /// The body of the latest version.
    pub fn latest_content(&self) -> Option<&ArtifactContent> {
        self.versions
            .iter()
            .find(|v| v.version == self.latest)
            .map(|v| &v.content)
    }
}

/// When a command happens, and the seed its lease tokens are derived from:
/// stamped on every command once, by the engine (the domain reads no clock
/// and draws no random numbers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// When the command is decided.
    pub at: Timestamp,
    /// Random text (from the engine); the domain derives one lease token per
    /// dispatch from it, so a replay of the decision gives the same tokens.
    pub lease_seed: String,
}

/// A command with its stamp: what the aggregate decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// The command.
    pub command: RunCommand,
    /// Its time and lease seed.
    pub stamp: Stamp,
}

/// Commands to a run. The time and the lease seed come with each one as
/// its [`Stamp`].
#[derive(Debug, Clone, PartialEq)]
pub enum RunCommand {
    /// Start the run from a template version.
    Start {
        /// The run's id.
        run_id: RunId,
        /// The template.
        template_id: TemplateId,
        /// The template version.
        template_version: u32,
        /// The definition of that version (copied into the run).
        definition: Arc<Definition>,
        /// The run input.
        input: Value,
        /// The failed or cancelled run this one retries, if any.
        retry_of: Option<RunId>,
        /// The run this one replaces, and the instructions it starts with
        /// (its first instruction message), for a redirect.
        redirected_from: Option<(RunId, String)>,
        /// Whether ready steps are dispatched without a trigger.
        auto_run: bool,
    },
    /// An agent finished a step.
    CompleteStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that finished.
        lease: LeaseToken,
        /// What it produced.
        outputs: Outputs,
        /// Comments the agent posted that are not recorded yet.
        comments: Vec<AgentNote>,
    },
    /// An agent failed a step.
    FailStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that failed.
        lease: LeaseToken,
        /// What went wrong.
        error: String,
        /// Comments the agent posted that are not recorded yet.
        comments: Vec<AgentNote>,
    },
    /// Dispatch the ready steps whose retry time has come.
    DispatchDue,
    /// After a restart: re-dispatch the steps that were running, whose
    /// in-process attempts died with the old process.
    Recover,
    /// Stop at the next safe checkpoint: dispatch nothing new; the run is
    /// paused once no step runs.
    Pause,
    /// Continue a paused run (or withdraw a pause not yet reached).
    Resume,
    /// Cancel gracefully: dispatch nothing new; the run is cancelled once no
    /// step runs.
    Cancel {
        /// Why, if the user said.
        reason: Option<String>,
    },
    /// Cancel this run in favour of `new_run_id`, which the engine starts
    /// next with the same template version, input and these instructions.
    Redirect {
        /// The run that takes over.
        new_run_id: RunId,
        /// The instructions the new run starts with.
        instructions: String,
    },
    /// A user posts a message to the thread. A control action has the effect
    /// of the matching command; the message records whether it took effect.
    PostMessage {
        /// The message.
        message: NewMessage,
        /// For a `redirect` message: the id the new run gets.
        redirect_to: Option<RunId>,
    },
    /// Agents of running steps posted comments (batched by the engine).
    /// Comments of an attempt that is no longer current are dropped.
    AgentComments {
        /// Each comment with the step and lease of the attempt that posted it.
        comments: Vec<(StepId, LeaseToken, AgentNote)>,
    },
    /// A running agent stopped early because it was asked to.
    InterruptStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that stopped.
        lease: LeaseToken,
        /// Comments the agent posted that are not recorded yet.
        comments: Vec<AgentNote>,
    },
    /// Approve a step awaiting review, with a choice when it offers some.
    Approve {
        /// The step.
        step: StepId,
        /// The choice picked.
        choice: Option<String>,
    },
    /// Run a completed, failed or awaiting-review step again; everything
    /// downstream of it goes back to pending.
    RetryStep {
        /// The step.
        step: StepId,
        /// The prompt to use instead of the step's own.
        prompt_override: Option<String>,
    },
    /// Dispatch a ready step now (manual mode).
    TriggerStep {
        /// The step.
        step: StepId,
        /// The prompt to use instead of the step's own.
        prompt_override: Option<String>,
    },
    /// Switch manual mode: with `auto_run` off, ready steps wait for a
    /// trigger.
    SetAutoRun {
        /// Whether ready steps are dispatched automatically.
        enabled: bool,
    },
    /// Move `latest` of an artifact back to an earlier version; the steps
    /// downstream of its step run again.
    RollbackArtifact {
        /// The artifact.
        name: ArtifactName,
        /// The version `latest` moves to.
        to_version: u32,
    },
}

/// Business-rule refusals of run commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Start on a run that exists.
    #[error("run already started")]
    AlreadyStarted,
    /// Any other command on a run that was never started.
    #[error("run not found")]
    NotStarted,
    /// The run has completed or failed.
    #[error("run is already {0}")]
    Finished(&'static str),
    /// The step is not part of the run's definition.
    #[error("step '{0}' is not part of this run")]
    UnknownStep(StepId),
    /// The step is not running, so nothing can complete or fail it.
    #[error("step '{0}' is not running")]
    StepNotRunning(StepId),
    /// The lease is not the step's current one: a stale or duplicate worker.
    #[error("lease is not the current lease of step '{0}'")]
    StaleLease(StepId),
    /// Pause on a run that is paused or pausing.
    #[error("run is already paused or pausing")]
    AlreadyPaused,
    /// Resume on a run that is neither paused nor pausing.
    #[error("run is not paused")]
    NotPaused,
    /// Pause, resume or cancel on a run that is being cancelled.
    #[error("run is being cancelled")]
    Cancelling,
    /// Retry of a run that did not fail and was not cancelled.
    #[error("only a failed or cancelled run can be retried; this one is {0}")]
    NotRetryable(&'static str),
    /// Trigger on a paused or pausing run.
    #[error("run is paused or pausing; resume it first")]
    Paused,
    /// Trigger on a run that is failing (a step failed for good; others
    /// still run).
    #[error("run is failing: step '{0}' failed")]
    Failing(StepId),
    /// Trigger of a step that is not ready.
    #[error("step '{0}' is {1}, not ready")]
    StepNotReady(StepId, &'static str),
    /// Approve of a step that is not awaiting review.
    #[error("step '{0}' is {1}, not awaiting review")]
    StepNotAwaitingReview(StepId, &'static str),
    /// Retry of a step that has not finished (pending, ready, running,
    /// skipped).
    #[error("step '{0}' is {1}; only a completed, failed or awaiting-review step can be retried")]
    StepNotRetryable(StepId, &'static str),
    /// Rollback of an artifact whose step is running.
    #[error("step '{0}' is running; roll its artifacts back once it is done")]
    StepRunning(StepId),
    /// Approve without a choice on a step that offers choices.
    #[error("step '{step}' offers choices; approve it with one of: {}", choices.join(", "))]
    ChoiceRequired {
        /// The step.
        step: StepId,
        /// Its choices.
        choices: Vec<String>,
    },
    /// Approve with a choice the step does not offer.
    #[error("'{choice}' is not a choice of step '{step}'; pick one of: {}", choices.join(", "))]
    InvalidChoice {
        /// The step.
        step: StepId,
        /// The choice given.
        choice: String,
        /// Its choices.
        choices: Vec<String>,
    },
    /// Approve with a choice on a step that offers none.
    #[error("step '{0}' offers no choices; approve it without one")]
    NoChoices(StepId),
    /// The run has no such artifact.
    #[error("this run has no artifact '{0}'")]
    UnknownArtifact(ArtifactName),
    /// The artifact has no such version.
    #[error("artifact '{0}' has no version {1}")]
    UnknownArtifactVersion(ArtifactName, u32),
    /// Rollback to the version `latest` already points at.
    #[error("artifact '{0}' is already at version {1}")]
    AlreadyAtVersion(ArtifactName, u32),
    /// A step retry or rollback on a failed (or failing) run that would not
    /// re-run the step the run failed on.
    #[error("the run failed on step '{0}', which this would not run again")]
    FailedElsewhere(StepId),
    /// An idempotency key reused for a different message.
    #[error("idempotency key '{0}' was already used for a different message")]
    IdempotencyKeyReused(String),
}

impl RunError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::AlreadyStarted => "run_already_started",
            Self::NotStarted => "run_not_found",
            Self::Finished(_) => "run_finished",
            Self::UnknownStep(_) => "unknown_step",
            Self::StepNotRunning(_) => "step_not_running",
            Self::StaleLease(_) => "stale_lease",
            Self::AlreadyPaused => "run_already_paused",
            Self::NotPaused => "run_not_paused",
            Self::Cancelling => "run_cancelling",
            Self::NotRetryable(_) => "run_not_retryable",
            Self::Paused => "run_paused",
            Self::Failing(_) => "run_failing",
            Self::StepNotReady(..) => "step_not_ready",
            Self::StepNotAwaitingReview(..) => "step_not_awaiting_review",
            Self::StepNotRetryable(..) => "step_not_retryable",
            Self::StepRunning(_) => "step_running",
            Self::ChoiceRequired { .. } => "choice_required",
            Self::InvalidChoice { .. } => "invalid_choice",
            Self::NoChoices(_) => "choices_not_offered",
            Self::UnknownArtifact(_) => "artifact_not_found",
            Self::UnknownArtifactVersion(..) => "artifact_version_not_found",
            Self::AlreadyAtVersion(..) => "artifact_already_at_version",
            Self::FailedElsewhere(_) => "run_failed_elsewhere",
            Self::IdempotencyKeyReused(_) => "idempotency_key_reused",
        }
    }
}

/// The state of a run, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id, once started.
    pub id: Option<RunId>,
    /// The template it started from.
    pub template_id: Option<TemplateId>,
    /// That template's version.
    pub template_version: u32,
    /// The copied definition.
    pub definition: Arc<Definition>,
    /// The run input.
    pub input: Value,
    /// Where the run is.
    pub status: RunStatus,
    /// Each step's state.
    pub steps: BTreeMap<StepId, StepState>,
    /// Each artifact's versions.
    pub artifacts: BTreeMap<ArtifactName, ArtifactState>,
    /// Set when a step failed for good while others still ran: the run fails
    /// once they are done.
    pub failure: Option<(StepId, String)>,
    /// A pause was asked and not yet reached.
    #[serde(default)]
    pub pause_requested: bool,
    /// A cancel was asked (with its reason) and not yet reached.
    #[serde(default)]
    pub cancel_requested: Option<Option<String>>,
    /// The run this one retries, if any.
    #[serde(default)]
    pub retry_of: Option<RunId>,
    /// The run this one replaced by a redirect, if any.
    #[serde(default)]
    pub redirected_from: Option<RunId>,
    /// The run that replaced this one by a redirect, if any.
    #[serde(default)]
    pub redirected_to: Option<RunId>,
    /// Whether ready steps are dispatched without a user's trigger.
    #[serde(default = "crate::domain::yes")]
    pub auto_run: bool,
    /// What decisions need of the conversation thread.
    #[serde(default)]
    pub thread: ThreadState,
    /// When it started.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// What a retry of a run starts from (see [`Run::retry_source`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySource {
    /// The run being retried.
    pub run_id: RunId,
    /// Its template.
    pub template_id: TemplateId,
    /// Its template version.
    pub template_version: u32,
    /// Its copied definition.
    pub definition: Arc<Definition>,
    /// Its input.
    pub input: Value,
    /// Its manual-mode setting.
    pub auto_run: bool,
}

/// What a step receives as input, before blob references are resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum StepInput {
    /// The run input (a step with no dependencies and no mapping).
    RunInput(Value),
    /// Named inputs: for each name, either all outputs of a dependency or a
    /// single mapped artifact.
    Named(BTreeMap<String, InputValue>),
}

/// One named input.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValue {
    /// All latest outputs of a dependency, by output name.
    Outputs(BTreeMap<String, ArtifactContent>),
    /// One artifact's latest version.
    Artifact(ArtifactContent),
    /// A mapped artifact that does not exist (the upstream step did not
    /// produce that output).
    Missing,
}

/// Decisions accumulate here: each event is applied to a working copy as it
/// is recorded, so later decisions in the same command see earlier ones.
/// Recording an event also records what follows from it in the thread: the
/// engine's announcements (system messages) and the status of instructions.
struct Decision {
    state: Run,
    events: Vec<RunEvent>,
    seed: String,
    leases: usize,
}

impl Decision {
    fn new(state: &Run, seed: &str) -> Self {
        Self {
            state: state.clone(),
            events: Vec::new(),
            seed: seed.to_string(),
            leases: 0,
        }
    }

    /// Records an event and what follows from it in the thread.
    fn record(&mut self, event: RunEvent) {
        let was_paused = self.state.status == RunStatus::Paused;
        self.push(event.clone());
        self.follow_up(&event, was_paused);
    }

    /// Records an event and nothing else (its follow-ups are already
    /// decided).
    fn push(&mut self, event: RunEvent) {
        self.state.apply_event(event.clone());
        self.events.push(event);
    }

    fn follow_up(&mut self, event: &RunEvent, was_paused: bool) {
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
                let reason = format!(
                    "the run {} before a step completed with it",
                    match event {
                        RunEvent::RunCompleted { .. } => "completed",
                        RunEvent::RunFailed { .. } => "failed",
                        _ => "was cancelled",
                    }
                );
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
        if let Some((content, step)) = self.announcement(event, was_paused) {
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
                at,
            });
        }
    }

    /// The system message a state change deserves, if any.
    fn announcement(&self, event: &RunEvent, was_paused: bool) -> Option<(String, Option<StepId>)> {
        let text = match event {
            RunEvent::RunPaused { .. } => "Run paused.".to_string(),
            RunEvent::RunResumed { .. } if was_paused => "Run resumed.".to_string(),
            RunEvent::RunCancelled { reason, .. } => match (&self.state.redirected_to, reason) {
                (Some(to), _) => format!("Run redirected to run {to}."),
                (None, Some(reason)) => format!("Run cancelled: {reason}"),
                (None, None) => "Run cancelled.".to_string(),
            },
            RunEvent::RunCompleted { .. } => "Run completed.".to_string(),
            RunEvent::RunFailed { step, error, .. } => {
                format!(
                    "Run failed: step '{step}' failed: {}.",
                    error.trim_end_matches('.')
                )
            }
            RunEvent::StepAwaitingReview { step, .. } => {
                let choices = &self.state.definition.steps[step].choices;
                if choices.is_empty() {
                    format!("Step '{step}' is awaiting review.")
                } else {
                    format!(
                        "Step '{step}' is awaiting review. Choices: {}.",
                        choices.join(", ")
                    )
                }
            }
            RunEvent::StepFailed {
                step,
                attempt,
                error,
                will_retry,
                ..
            } => {
                let next = if *will_retry {
                    " It will be retried."
                } else {
                    ""
                };
                return Some((
                    format!(
                        "Step '{step}' failed (attempt {attempt}): {}.{next}",
                        error.trim_end_matches('.')
                    ),
                    Some(step.clone()),
                ));
            }
            RunEvent::ArtifactRolledBack {
                name,
                from_version,
                to_version,
                ..
            } => format!(
                "Artifact '{name}' rolled back from version {from_version} to version {to_version}."
            ),
            _ => return None,
        };
        Some((text, event.step().cloned()))
    }

    /// Records the comments an agent posted, as messages of the step.
    fn agent_comments(&mut self, step: &StepId, comments: Vec<AgentNote>) {
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
                at: note.at,
            });
        }
    }

    fn next_lease(&mut self) -> LeaseToken {
        self.leases += 1;
        LeaseToken::new(format!("{}.{}", self.seed, self.leases))
    }

    /// Dispatches every ready step that is due, unless the run may not
    /// dispatch or is in manual mode.
    fn dispatch_due(&mut self, at: Timestamp) {
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
    fn dispatch(
        &mut self,
        step: StepId,
        at: Timestamp,
        recovered: bool,
        prompt_override: Option<String>,
    ) {
        let current = self.state.steps.get(&step).map_or(0, |s| s.attempt);
        let attempt = if recovered {
            current.max(1)
        } else {
            current + 1
        };
        let reads = self.state.reads_of(&step);
        let lease = self.next_lease();
        let instructions: Vec<u32> = self
            .state
            .thread
            .for_dispatch(&step)
            .iter()
            .map(|i| i.message)
            .collect();
        let newly: Vec<u32> = self
            .state
            .thread
            .pending
            .iter()
            .map(|i| i.message)
            .collect();
        self.record(RunEvent::StepDispatched {
            step: step.clone(),
            attempt,
            lease,
            reads,
            recovered,
            prompt_override,
            instructions,
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

    /// Reaches the state the run is heading for once nothing runs: failed,
    /// cancelled, completed or paused, in that order of precedence.
    fn settle(&mut self, at: Timestamp) {
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

impl Run {
    /// Decides the events for `command` without changing `self`.
    pub fn decide(&self, command: RunCommand, stamp: &Stamp) -> Result<Vec<RunEvent>, RunError> {
        let at = stamp.at;
        let lease_seed = stamp.lease_seed.as_str();
        match command {
            RunCommand::Start {
                run_id,
                template_id,
                template_version,
                definition,
                input,
                retry_of,
                redirected_from,
                auto_run,
            } => {
                if self.id.is_some() {
                    return Err(RunError::AlreadyStarted);
                }
                let mut d = Decision::new(self, lease_seed);
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
                        at,
                    });
                }
                d.dispatch_due(at);
                Ok(d.events)
            }
            RunCommand::CompleteStep {
                step,
                lease,
                outputs,
                comments,
            } => {
                let attempt = self.check_running_step(&step, &lease)?;
                let artifacts: Vec<ArtifactWritten> = outputs
                    .into_iter()
                    .map(|(output, content)| ArtifactWritten {
                        version: self.next_version(&ArtifactName::new(&step, &output)),
                        name: ArtifactName::new(&step, &output),
                        content,
                    })
                    .collect();
                let mut d = Decision::new(self, lease_seed);
                d.agent_comments(&step, comments);
                if self.definition.steps[&step].review {
                    d.record(RunEvent::StepAwaitingReview {
                        step,
                        attempt,
                        artifacts,
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
                        at,
                    });
                    d.dispatch_due(at);
                }
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::FailStep {
                step,
                lease,
                error,
                comments,
            } => {
                let attempt = self.check_running_step(&step, &lease)?;
                let policy = self.definition.steps[&step].retry;
                let failures = self.steps[&step].failures + 1;
                let will_retry = failures < policy.max_attempts
                    && self.failure.is_none()
                    && self.cancel_requested.is_none();
                // While a cancel is pending a failure is not retried and does
                // not fail the run: the run ends cancelled.
                let fails_run = !will_retry && self.cancel_requested.is_none();
                let mut d = Decision::new(self, lease_seed);
                d.agent_comments(&step, comments);
                d.record(RunEvent::StepFailed {
                    step: step.clone(),
                    attempt,
                    error,
                    will_retry,
                    fails_run,
                    at,
                });
                if will_retry {
                    d.record(RunEvent::StepRetryScheduled {
                        step,
                        next_attempt: attempt + 1,
                        delay_ms: policy.backoff_ms,
                        due_at: at.plus_millis(policy.backoff_ms),
                        at,
                    });
                }
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::DispatchDue => {
                self.check_active()?;
                let mut d = Decision::new(self, lease_seed);
                d.dispatch_due(at);
                Ok(d.events)
            }
            RunCommand::Recover => {
                self.check_active()?;
                let mut d = Decision::new(self, lease_seed);
                let running: Vec<(StepId, Option<String>)> = self
                    .steps
                    .iter()
                    .filter(|(_, s)| s.status == StepStatus::Running)
                    .map(|(id, s)| (id.clone(), s.prompt_override.clone()))
                    .collect();
                for (step, prompt_override) in running {
                    d.dispatch(step, at, true, prompt_override);
                }
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Pause => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                if self.status == RunStatus::Paused || self.pause_requested {
                    return Err(RunError::AlreadyPaused);
                }
                let mut d = Decision::new(self, lease_seed);
                d.record(RunEvent::PauseRequested { at });
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Resume => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                if self.status != RunStatus::Paused && !self.pause_requested {
                    return Err(RunError::NotPaused);
                }
                let mut d = Decision::new(self, lease_seed);
                d.record(RunEvent::RunResumed { at });
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Cancel { reason } => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                let mut d = Decision::new(self, lease_seed);
                d.record(RunEvent::CancelRequested { reason, at });
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Redirect {
                new_run_id,
                instructions,
            } => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                let mut d = Decision::new(self, lease_seed);
                let reason = format!("redirected to run {new_run_id}");
                d.record(RunEvent::RunRedirected {
                    to: new_run_id,
                    instructions,
                    at,
                });
                d.record(RunEvent::CancelRequested {
                    reason: Some(reason),
                    at,
                });
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::PostMessage {
                message,
                redirect_to,
            } => self.post_message(message, redirect_to, stamp),
            RunCommand::AgentComments { comments } => {
                self.check_active()?;
                let mut d = Decision::new(self, lease_seed);
                for (step, lease, note) in comments {
                    if self.check_running_step(&step, &lease).is_ok() {
                        d.agent_comments(&step, vec![note]);
                    }
                }
                Ok(d.events)
            }
            RunCommand::InterruptStep {
                step,
                lease,
                comments,
            } => {
                let attempt = self.check_running_step(&step, &lease)?;
                let mut d = Decision::new(self, lease_seed);
                d.agent_comments(&step, comments);
                d.record(RunEvent::StepInterrupted { step, attempt, at });
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Approve { step, choice } => {
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
                let mut d = Decision::new(self, lease_seed);
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
                    at,
                });
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::RetryStep {
                step,
                prompt_override,
            } => {
                self.check_reopenable()?;
                let state = self.step_state(&step)?;
                if !matches!(
                    state.status,
                    StepStatus::Completed | StepStatus::Failed | StepStatus::AwaitingReview
                ) {
                    return Err(RunError::StepNotRetryable(step, state.status.as_str()));
                }
                let invalidated = self.invalidated_below(&step);
                let mut rerun: BTreeSet<&StepId> = invalidated.iter().collect();
                rerun.insert(&step);
                let reopens_run = self.reopens(&rerun)?;
                let mut d = Decision::new(self, lease_seed);
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
                Ok(d.events)
            }
            RunCommand::TriggerStep {
                step,
                prompt_override,
            } => {
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
                let mut d = Decision::new(self, lease_seed);
                d.dispatch(step, at, false, prompt_override);
                Ok(d.events)
            }
            RunCommand::SetAutoRun { enabled } => {
                self.check_active()?;
                if self.auto_run == enabled {
                    return Ok(Vec::new());
                }
                let mut d = Decision::new(self, lease_seed);
                d.record(RunEvent::AutoRunChanged { enabled, at });
                d.dispatch_due(at);
                Ok(d.events)
            }
            RunCommand::RollbackArtifact { name, to_version } => {
                self.check_reopenable()?;
                let artifact = self
                    .artifacts
                    .get(&name)
                    .ok_or_else(|| RunError::UnknownArtifact(name.clone()))?;
                if !artifact.versions.iter().any(|v| v.version == to_version) {
                    return Err(RunError::UnknownArtifactVersion(name, to_version));
                }
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
                let old = artifact
                    .versions
                    .iter()
                    .find(|v| v.version == to_version)
                    .map(|v| (name.clone(), v.content.clone()));
                let (ready, skipped) = if invalidated.is_empty() {
                    (Vec::new(), Vec::new())
                } else {
                    self.evaluate(
                        self.definition.dependants_of(&producer).cloned().collect(),
                        seed,
                        old.into_iter().collect(),
                    )
                };
                let mut d = Decision::new(self, lease_seed);
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
                Ok(d.events)
            }
        }
    }

    /// A user's message: recorded with the status that says what came of
    /// it; a control action has exactly the effect of its command.
    fn post_message(
        &self,
        message: NewMessage,
        redirect_to: Option<RunId>,
        stamp: &Stamp,
    ) -> Result<Vec<RunEvent>, RunError> {
        let (at, lease_seed) = (stamp.at, stamp.lease_seed.as_str());
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if let Some(key) = &message.idempotency_key {
            if let Some((_, fingerprint)) = self.thread.keys.get(key) {
                return if *fingerprint == message.fingerprint() {
                    Ok(Vec::new())
                } else {
                    Err(RunError::IdempotencyKeyReused(key.clone()))
                };
            }
        }
        let control = match message.action {
            Action::Comment | Action::Instruction => None,
            Action::Pause => Some(RunCommand::Pause),
            Action::Resume => Some(RunCommand::Resume),
            Action::Cancel => Some(RunCommand::Cancel {
                reason: Some(message.content.trim().to_string()).filter(|r| !r.is_empty()),
            }),
            Action::Redirect => redirect_to.map(|new_run_id| RunCommand::Redirect {
                new_run_id,
                instructions: message.content.clone(),
            }),
        };
        let (status, reason) = match (&control, message.action) {
            (Some(command), _) => match self.decide(command.clone(), stamp) {
                Ok(_) => (MessageStatus::Processed, None),
                Err(refused) => (MessageStatus::Ignored, Some(refused.to_string())),
            },
            (None, Action::Redirect) => (
                MessageStatus::Ignored,
                Some("no run id was set aside for the redirect".to_string()),
            ),
            (None, Action::Instruction) if self.status.is_finished() => (
                MessageStatus::Ignored,
                Some(format!("run is already {}", self.status.as_str())),
            ),
            (None, Action::Instruction) => (MessageStatus::Pending, None),
            (None, _) => (MessageStatus::Processed, None),
        };
        let mut d = Decision::new(self, lease_seed);
        d.record(RunEvent::MessagePosted {
            message: self.thread.last + 1,
            author: Author::User,
            action: message.action,
            content: message.content,
            metadata: message.metadata,
            step: None,
            idempotency_key: message.idempotency_key,
            status,
            reason,
            at,
        });
        if let (Some(command), MessageStatus::Processed) = (control, status) {
            // Decided again on the state that holds the message, so the
            // system messages it brings are numbered after it.
            for event in d.state.decide(command, stamp)? {
                d.push(event);
            }
        }
        Ok(d.events)
    }

    /// What a retry of this run starts from: the same template version,
    /// definition and input. Only a failed or cancelled run can be retried.
    pub fn retry_source(&self) -> Result<RetrySource, RunError> {
        let source = self.source().ok_or(RunError::NotStarted)?;
        if !matches!(self.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(RunError::NotRetryable(self.status.as_str()));
        }
        Ok(source)
    }

    /// What a new run of the same work starts from (retry or redirect).
    pub fn source(&self) -> Option<RetrySource> {
        let (Some(id), Some(template_id)) = (&self.id, &self.template_id) else {
            return None;
        };
        Some(RetrySource {
            run_id: id.clone(),
            template_id: template_id.clone(),
            template_version: self.template_version,
            definition: self.definition.clone(),
            input: self.input.clone(),
            auto_run: self.auto_run,
        })
    }

    /// Whether ready steps may be dispatched now: running, and no failure,
    /// pause or cancel pending.
    pub fn dispatching(&self) -> bool {
        self.status == RunStatus::Running
            && self.failure.is_none()
            && !self.pause_requested
            && self.cancel_requested.is_none()
    }

    fn check_active(&self) -> Result<(), RunError> {
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if self.status.is_finished() {
            return Err(RunError::Finished(self.status.as_str()));
        }
        Ok(())
    }

    /// Checks that `step` is running under `lease`; returns its attempt.
    fn check_running_step(&self, step: &StepId, lease: &LeaseToken) -> Result<u32, RunError> {
        self.check_active()?;
        let state = self
            .steps
            .get(step)
            .ok_or_else(|| RunError::UnknownStep(step.clone()))?;
        if state.status != StepStatus::Running {
            return Err(RunError::StepNotRunning(step.clone()));
        }
        if state.lease.as_ref() != Some(lease) {
            return Err(RunError::StaleLease(step.clone()));
        }
        Ok(state.attempt)
    }

    /// The step's state, or `UnknownStep`.
    fn step_state(&self, step: &StepId) -> Result<&StepState, RunError> {
        self.steps
            .get(step)
            .ok_or_else(|| RunError::UnknownStep(step.clone()))
    }

    /// Step retry and rollback work on running, paused, completed and failed
    /// runs; not on cancelled or cancelling ones.
    fn check_reopenable(&self) -> Result<(), RunError> {
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if self.status == RunStatus::Cancelled {
            return Err(RunError::Finished(self.status.as_str()));
        }
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        Ok(())
    }

    /// The steps below `step` that must run again when its outputs change:
    /// every downstream step that is not pending already.
    fn invalidated_below(&self, step: &StepId) -> Vec<StepId> {
        self.definition
            .downstream_of(step)
            .into_iter()
            .filter(|s| {
                self.steps
                    .get(s)
                    .is_some_and(|st| st.status != StepStatus::Pending)
            })
            .collect()
    }

    /// Whether running `rerun` again reopens the run (it completed, failed
    /// or is failing). Refused when a failed step outside `rerun` would keep
    /// the run failed.
    fn reopens(&self, rerun: &BTreeSet<&StepId>) -> Result<bool, RunError> {
        let failing = self.status == RunStatus::Failed || self.failure.is_some();
        if failing {
            if let Some((other, _)) = self
                .steps
                .iter()
                .find(|(id, s)| s.status == StepStatus::Failed && !rerun.contains(id))
            {
                return Err(RunError::FailedElsewhere(other.clone()));
            }
        }
        Ok(failing || self.status == RunStatus::Completed)
    }

    /// The next version number of an artifact.
    fn next_version(&self, name: &ArtifactName) -> u32 {
        self.artifacts
            .get(name)
            .map_or(0, |a| a.versions.last().map_or(0, |v| v.version))
            + 1
    }

    /// What becomes ready or skipped once `done` completes having written
    /// `written`. Nothing does while the run is failing or cancelling.
    fn advance_after(
        &self,
        done: &StepId,
        written: &[ArtifactWritten],
    ) -> (Vec<StepId>, Vec<StepId>) {
        if self.failure.is_some() || self.cancel_requested.is_some() {
            return (Vec::new(), Vec::new());
        }
        self.evaluate(
            self.definition.dependants_of(done).cloned().collect(),
            BTreeMap::from([(done.clone(), StepStatus::Completed)]),
            written
                .iter()
                .map(|w| (w.name.clone(), w.content.clone()))
                .collect(),
        )
    }

    /// Decides the pending steps among `candidates` (and, through skips,
    /// their dependants) whose dependencies are all done: each is ready, or
    /// skipped when its condition is false or every dependency was skipped.
    /// `seed` overrides step statuses and `fresh` artifact values, for
    /// decisions about a state that the command's events will bring.
    fn evaluate(
        &self,
        candidates: Vec<StepId>,
        seed: BTreeMap<StepId, StepStatus>,
        fresh: BTreeMap<ArtifactName, ArtifactContent>,
    ) -> (Vec<StepId>, Vec<StepId>) {
        let mut decided = seed;
        let status = |step: &StepId, decided: &BTreeMap<StepId, StepStatus>| {
            decided
                .get(step)
                .copied()
                .or_else(|| self.steps.get(step).map(|s| s.status))
        };
        let mut outcome: BTreeMap<StepId, StepStatus> = BTreeMap::new();
        let mut todo = candidates;
        while let Some(step) = todo.pop() {
            if status(&step, &decided) != Some(StepStatus::Pending) {
                continue;
            }
            let Some(def) = self.definition.steps.get(&step) else {
                continue;
            };
            if !def
                .depends_on
                .iter()
                .all(|d| status(d, &decided).is_some_and(StepStatus::is_done))
            {
                continue;
            }
            let all_skipped = !def.depends_on.is_empty()
                && def
                    .depends_on
                    .iter()
                    .all(|d| status(d, &decided) == Some(StepStatus::Skipped));
            let holds = |when: &Condition| {
                if status(&when.step, &decided) != Some(StepStatus::Completed) {
                    return false;
                }
                let name = ArtifactName::new(&when.step, &when.output);
                let content = fresh.get(&name).or_else(|| {
                    self.artifacts
                        .get(&name)
                        .and_then(ArtifactState::latest_content)
                });
                match content {
                    Some(ArtifactContent::Inline(value)) => when.holds(Some(value)),
                    // Large (blob) outputs are not compared.
                    _ => false,
                }
            };
            let skip = all_skipped || def.when.as_ref().is_some_and(|w| !holds(w));
            let next = if skip {
                todo.extend(self.definition.dependants_of(&step).cloned());
                StepStatus::Skipped
            } else {
                StepStatus::Ready
            };
            decided.insert(step.clone(), next);
            outcome.insert(step, next);
        }
        let (ready, skipped): (Vec<_>, Vec<_>) = outcome
            .into_iter()
            .partition(|(_, s)| *s == StepStatus::Ready);
        (
            ready.into_iter().map(|(s, _)| s).collect(),
            skipped.into_iter().map(|(s, _)| s).collect(),
        )
    }

    /// The artifact versions `step` reads when dispatched now.
    fn reads_of(&self, step: &StepId) -> BTreeMap<ArtifactName, u32> {
        let Some(def) = self.definition.steps.get(step) else {
            return BTreeMap::new();
        };
        let wanted = |name: &ArtifactName| {
            if def.inputs.is_empty() {
                def.depends_on.iter().any(|d| d.as_str() == name.step())
            } else {
                def.inputs.values().any(|src| src == name.as_str())
            }
        };
        self.artifacts
            .iter()
            .filter(|(name, _)| wanted(name) && self.is_live(name))
            .map(|(name, a)| (name.clone(), a.latest))
            .collect()
    }

    /// Whether an artifact's step stands behind it: the outputs of a step
    /// that was skipped since it wrote them are not handed on.
    fn is_live(&self, name: &ArtifactName) -> bool {
        self.steps
            .get(name.step())
            .is_none_or(|s| s.status != StepStatus::Skipped)
    }

    /// What `step` receives as input: the run input for a step with no
    /// dependencies and no mapping; its mapped artifacts when it has
    /// `inputs`; else the latest outputs of each dependency, by step name.
    pub fn step_input(&self, step: &StepId) -> StepInput {
        let Some(def) = self.definition.steps.get(step) else {
            return StepInput::Named(BTreeMap::new());
        };
        if !def.inputs.is_empty() {
            let named = def
                .inputs
                .iter()
                .map(|(input, source)| {
                    let value = ArtifactName::parse(source.as_str())
                        .ok()
                        .filter(|name| self.is_live(name))
                        .and_then(|name| self.artifacts.get(&name))
                        .and_then(ArtifactState::latest_content)
                        .map_or(InputValue::Missing, |c| InputValue::Artifact(c.clone()));
                    (input.clone(), value)
                })
                .collect();
            return StepInput::Named(named);
        }
        if def.depends_on.is_empty() {
            return StepInput::RunInput(self.input.clone());
        }
        let named = def
            .depends_on
            .iter()
            .map(|dep| (dep.to_string(), InputValue::Outputs(self.outputs_of(dep))))
            .collect();
        StepInput::Named(named)
    }

    /// The latest outputs of `step`, by output name.
    pub fn outputs_of(&self, step: &StepId) -> BTreeMap<String, ArtifactContent> {
        self.artifacts
            .iter()
            .filter(|(name, _)| name.step() == step.as_str() && self.is_live(name))
            .filter_map(|(name, a)| {
                a.latest_content()
                    .map(|c| (name.output().to_string(), c.clone()))
            })
            .collect()
    }

    /// Steps that are ready but waiting for a retry time, with that time.
    pub fn pending_retries(&self) -> impl Iterator<Item = (&StepId, Timestamp)> {
        self.steps.iter().filter_map(|(id, s)| {
            (s.status == StepStatus::Ready)
                .then_some(s.retry_at)
                .flatten()
                .map(|t| (id, t))
        })
    }

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
                at,
            } => {
                self.id = Some(run_id);
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
                at,
                ..
            } => {
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
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Running;
                s.attempt = attempt;
                s.lease = Some(lease);
                s.retry_at = None;
                s.started_at = Some(at);
                s.prompt_override = prompt_override;
            }
            RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                ready,
                skipped,
                at,
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Completed;
                s.lease = None;
                s.error = None;
                s.finished_at = Some(at);
                self.add_versions(attempt, artifacts, at);
                self.mark(ready, StepStatus::Ready);
                self.mark(skipped, StepStatus::Skipped);
            }
            RunEvent::StepAwaitingReview {
                step,
                attempt,
                artifacts,
                at,
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::AwaitingReview;
                s.lease = None;
                s.error = None;
                self.add_versions(attempt, artifacts, at);
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
                s.lease = None;
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
            RunEvent::StepInterrupted { step, .. } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.lease = None;
                s.retry_at = None;
            }
            // A pause or cancel still pending when the run ends is moot.
            RunEvent::RunCompleted { .. } => {
                self.status = RunStatus::Completed;
                self.pause_requested = false;
                self.cancel_requested = None;
            }
            RunEvent::RunFailed { .. } => {
                self.status = RunStatus::Failed;
                self.pause_requested = false;
                self.cancel_requested = None;
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
            RunEvent::CancelRequested { reason, .. } => self.cancel_requested = Some(reason),
            RunEvent::RunCancelled { .. } => {
                self.status = RunStatus::Cancelled;
                self.pause_requested = false;
            }
            RunEvent::RunRedirected { to, .. } => self.redirected_to = Some(to),
            RunEvent::AutoRunChanged { enabled, .. } => self.auto_run = enabled,
            RunEvent::MessagePosted {
                message,
                action,
                content,
                metadata,
                idempotency_key,
                status,
                ..
            } => {
                self.thread.last = message;
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
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Ready;
                s.lease = None;
                s.retry_at = None;
                s.finished_at = None;
                s.error = None;
                s.failures = 0;
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

    fn add_versions(&mut self, attempt: u32, artifacts: Vec<ArtifactWritten>, at: Timestamp) {
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
    fn invalidate(&mut self, steps: Vec<StepId>, reopens_run: bool) {
        for step in steps {
            let s = self.steps.entry(step).or_default();
            s.status = StepStatus::Pending;
            s.lease = None;
            s.retry_at = None;
            s.error = None;
            s.finished_at = None;
            s.failures = 0;
        }
        if reopens_run {
            self.status = RunStatus::Running;
            self.failure = None;
        }
    }

    fn mark(&mut self, steps: Vec<StepId>, status: StepStatus) {
        for step in steps {
            self.steps.entry(step).or_default().status = status;
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
