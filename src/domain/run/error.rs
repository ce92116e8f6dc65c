//! Business-rule refusals of run commands, each with a stable code.

use crate::domain::ids::{ArtifactName, StepId};

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
    #[error("step '{0}' is {1}; only a completed, failed, awaiting-review or awaiting-input step can be retried")]
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
    /// A claim of an attempt that a worker claimed already.
    #[error("step '{0}' is already claimed by a worker")]
    AlreadyClaimed(StepId),
    /// A heartbeat or release of an attempt no worker claimed.
    #[error("step '{0}' is not claimed by a worker")]
    NotClaimed(StepId),
    /// A purge of a run that has not finished.
    #[error("run is {0}; only a finished run (completed, failed or cancelled) can be purged")]
    NotFinished(&'static str),
    /// A purge of a run that finished at or after the purge's cut-off.
    #[error("run finished at {finished_at}, not before {finished_before}")]
    FinishedLater {
        /// When it finished (RFC 3339).
        finished_at: String,
        /// The cut-off (RFC 3339).
        finished_before: String,
    },
    /// A step retry or rollback of a run whose artifact bodies were purged.
    #[error("the run's artifacts were purged on {0}; it cannot run again (retry the run instead)")]
    Purged(String),
    /// An idempotency key reused for a different message.
    #[error("idempotency key '{0}' was already used for a different message")]
    IdempotencyKeyReused(String),
    /// An agent's message that cannot be posted (its fault named).
    #[error("the message of step '{step}' is refused: {reason}")]
    InvalidMessage {
        /// The step whose agent returned it.
        step: StepId,
        /// What is wrong with it.
        reason: String,
    },
    /// A click on a message the thread does not have.
    #[error("this run has no message {0}")]
    MessageNotFound(u32),
    /// A click on a message with no buttons (or whose step ran again since).
    #[error("message {0} has no buttons to click")]
    NoButtons(u32),
    /// A second click on a message.
    #[error("message {message} was answered already (button '{button}')")]
    AlreadyClicked {
        /// The message.
        message: u32,
        /// The button clicked then.
        button: String,
    },
    /// A click on a button the message does not have.
    #[error("message {message} has no button '{button}'; its buttons: {}", buttons.join(", "))]
    UnknownButton {
        /// The message.
        message: u32,
        /// The button asked for.
        button: String,
        /// Its buttons' ids.
        buttons: Vec<String>,
    },
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
            Self::StaleLease(_) => "lease_lost",
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
            Self::AlreadyClaimed(_) => "step_already_claimed",
            Self::NotClaimed(_) => "step_not_claimed",
            Self::NotFinished(_) => "run_not_finished",
            Self::FinishedLater { .. } => "run_finished_later",
            Self::Purged(_) => "run_purged",
            Self::InvalidMessage { .. } => "invalid_agent_message",
            Self::MessageNotFound(_) => "message_not_found",
            Self::NoButtons(_) => "message_has_no_buttons",
            Self::AlreadyClicked { .. } => "message_already_clicked",
            Self::UnknownButton { .. } => "unknown_button",
        }
    }
}
