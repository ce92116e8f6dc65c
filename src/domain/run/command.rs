//! Commands to a run, and the stamp (time and lease seed) the engine puts
//! on each one.

use std::sync::Arc;

use serde_json::Value;

use super::thread::{AgentNote, NewMessage};
use super::{Outputs, Usage};
use crate::domain::definition::Definition;
use crate::domain::ids::{ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp, UserId};

/// When a command happens, the seed its lease tokens are derived from, and
/// the engine's settings it is decided with: stamped on every command once,
/// by the engine (the domain reads no clock, draws no random numbers and
/// reads no configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// When the command is decided.
    pub at: Timestamp,
    /// Random text (from the engine); the domain derives one lease token per
    /// dispatch from it, so a replay of the decision gives the same tokens.
    pub lease_seed: String,
    /// The settings decisions use.
    pub policy: Policy,
}

/// The engine's settings that decisions use. The events record what was
/// decided with them (an expiry time, a grace deadline, a failure), so a
/// replay needs none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long a remote worker's lease lasts from its claim or its last
    /// heartbeat, for steps that do not set `heartbeat_timeout_ms`.
    pub lease_ms: u64,
    /// How long running attempts have after a cancel to stop; then their
    /// leases are revoked and the run ends cancelled.
    pub cancel_grace_ms: u64,
    /// Lease expiries in a row after which a step fails.
    pub max_lease_expiries: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            lease_ms: 30_000,
            cancel_grace_ms: 30_000,
            max_lease_expiries: 3,
        }
    }
}

/// Why an attempt failed, as its agent or worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong.
    pub error: String,
    /// Whether another attempt may help (a timeout, a 5xx); a failure that
    /// is not retryable fails the step at once, whatever its retry policy.
    pub retryable: bool,
    /// How long the agent was told to wait before trying again (an HTTP
    /// `Retry-After`); the retry waits at least that long.
    pub retry_after_ms: Option<u64>,
}

impl Failure {
    /// A retryable failure with no wait of its own.
    pub fn retryable(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            retryable: true,
            retry_after_ms: None,
        }
    }
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
    Start(StartRun),
    /// An agent finished a step.
    CompleteStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that finished.
        lease: LeaseToken,
        /// What it produced.
        outputs: Outputs,
        /// What its model calls used, if it made any.
        usage: Option<Usage>,
        /// Comments the agent posted that are not recorded yet.
        comments: Vec<AgentNote>,
        /// The message it returned for the thread (with buttons, the user
        /// may answer with a click).
        message: Option<super::AgentMessage>,
    },
    /// An agent failed a step.
    FailStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that failed.
        lease: LeaseToken,
        /// What went wrong, and whether to try again.
        failure: Failure,
        /// Comments the agent posted that are not recorded yet.
        comments: Vec<AgentNote>,
    },
    /// The run's wake-up time came: expire the leases whose time is up,
    /// revoke those a cancel's grace no longer covers, and dispatch the
    /// ready steps whose retry time has come.
    Tick,
    /// After a restart: re-dispatch the steps that were running in this
    /// process (their attempts died with it). Attempts claimed by remote
    /// workers keep running; their leases expire only by time.
    Recover,
    /// A remote worker claims a dispatched attempt: its lease runs from now.
    ClaimStep {
        /// The step.
        step: StepId,
        /// The attempt's lease.
        lease: LeaseToken,
        /// The worker's id.
        worker: String,
    },
    /// The worker of a claimed attempt is still at work: its lease is
    /// extended.
    Heartbeat {
        /// The step.
        step: StepId,
        /// The attempt's lease.
        lease: LeaseToken,
    },
    /// A worker gives a claimed attempt back (it stops, for a pause or its
    /// own shutdown): the step runs again, as a new attempt.
    ReleaseStep {
        /// The step.
        step: StepId,
        /// The attempt's lease.
        lease: LeaseToken,
        /// Comments the worker posted that are not recorded yet.
        comments: Vec<AgentNote>,
    },
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
    /// A user clicked a button of an agent's message.
    ClickButton {
        /// The message number.
        message: u32,
        /// The button's id.
        button: String,
        /// The client's `Idempotency-Key`: the same click again under it
        /// records nothing.
        idempotency_key: Option<String>,
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
    /// Retention: remove the bodies of the run's artifacts stored as blobs
    /// (the events keep their hashes). Only a run that finished before
    /// `finished_before` is purged, and a purged run is never reopened.
    PurgeArtifacts {
        /// The run must have finished before this time.
        finished_before: Timestamp,
    },
}

/// What a run starts from (see [`RunCommand::Start`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StartRun {
    /// The run's id.
    pub run_id: RunId,
    /// The template.
    pub template_id: TemplateId,
    /// The template version.
    pub template_version: u32,
    /// The definition of that version (copied into the run).
    pub definition: Arc<Definition>,
    /// The run input.
    pub input: Value,
    /// The failed or cancelled run this one retries, if any.
    pub retry_of: Option<RunId>,
    /// The run this one replaces, and the instructions it starts with
    /// (its first instruction message), for a redirect.
    pub redirected_from: Option<(RunId, String)>,
    /// Whether ready steps are dispatched without a trigger.
    pub auto_run: bool,
    /// The user it belongs to, if any.
    pub owner: Option<UserId>,
    /// The artifacts of other runs it reads, pinned now (its template's
    /// `requires.artifacts`, as the engine found them).
    pub imports: Vec<crate::domain::prerequisites::Import>,
}
