//! Commands to a run, and the stamp (time and lease seed) the engine puts
//! on each one.

use std::sync::Arc;

use serde_json::Value;

use super::thread::{AgentNote, NewMessage};
use super::Outputs;
use crate::domain::definition::Definition;
use crate::domain::ids::{ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp};

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
    Start(StartRun),
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
}
