//! The state of a run (rebuilt from its events), its statuses, and the
//! queries and checks that decisions and the engine make of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::RunError;
use super::thread::ThreadState;
use super::{ArtifactContent, Usage};
use crate::domain::definition::Definition;
use crate::domain::ids::{ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp, UserId};

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
    /// Its agent finished with a message with buttons; it waits for a
    /// user's click.
    AwaitingInput,
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
            Self::AwaitingInput => "awaiting_input",
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
    /// The worker that claimed the current attempt (remote agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// When the claimed attempt's lease expires unless a heartbeat extends
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Timestamp>,
    /// When the claimed attempt's worker last extended its lease (its claim,
    /// or a recorded heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_at: Option<Timestamp>,
    /// Leases of this step that expired in a row (reset when an attempt
    /// ends any other way).
    #[serde(default)]
    pub lease_expiries: u32,
    /// What this step's model calls used, all attempts together.
    #[serde(default)]
    pub usage: UsageTotals,
    /// The current round of a refine loop (renewed when the step runs
    /// again from scratch).
    #[serde(default, skip_serializing_if = "RefineRound::is_fresh")]
    pub refine: RefineRound,
}

/// Where a refining step's loop is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefineRound {
    /// The current attempt produced its outputs; its evaluator is (to be)
    /// dispatched.
    #[serde(default)]
    pub evaluating: bool,
    /// Attempts evaluated in this round.
    #[serde(default)]
    pub evaluated: u32,
    /// The last evaluator's feedback, handed to the next attempt.
    #[serde(default)]
    pub feedback: Option<String>,
    /// The attempt that feedback is about (absent in snapshots taken
    /// before it was kept: the attempt before the current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_on: Option<u32>,
    /// The best-scoring attempt so far: its score, its number and the
    /// artifact versions it wrote.
    #[serde(default)]
    pub best: Option<BestAttempt>,
    /// The artifact versions the current attempt wrote.
    #[serde(default)]
    pub produced: BTreeMap<ArtifactName, u32>,
}

/// The best-scoring attempt of a refine round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestAttempt {
    /// Its score.
    pub score: f64,
    /// Its number.
    pub attempt: u32,
    /// The artifact versions it wrote.
    pub versions: BTreeMap<ArtifactName, u32>,
}

impl RefineRound {
    /// Nothing happened in this round yet.
    pub fn is_fresh(&self) -> bool {
        *self == Self::default()
    }
}

/// Model usage added up (a run's or a step's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    /// Tokens sent.
    pub prompt_tokens: u64,
    /// Tokens received.
    pub completion_tokens: u64,
    /// What the priced calls cost.
    pub cost: f64,
}

impl UsageTotals {
    /// Tokens in all.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Adds one attempt's usage.
    pub fn add(&mut self, usage: &Usage) {
        self.prompt_tokens += usage.prompt_tokens;
        self.completion_tokens += usage.completion_tokens;
        self.cost += usage.cost.unwrap_or(0.0);
    }
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
        self.content(self.latest)
    }

    /// The body of `version`, if there is one.
    pub fn content(&self, version: u32) -> Option<&ArtifactContent> {
        self.versions
            .iter()
            .find(|v| v.version == version)
            .map(|v| &v.content)
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
    /// Until when running attempts may go on after the cancel; then their
    /// leases are revoked.
    #[serde(default)]
    pub cancel_grace_until: Option<Timestamp>,
    /// What the run's model calls used, every step together.
    #[serde(default)]
    pub usage: UsageTotals,
    /// The run this one retries, if any.
    #[serde(default)]
    pub retry_of: Option<RunId>,
    /// The run this one replaced by a redirect, if any.
    #[serde(default)]
    pub redirected_from: Option<RunId>,
    /// The run that replaced this one by a redirect, if any.
    #[serde(default)]
    pub redirected_to: Option<RunId>,
    /// The user it belongs to (`None`: recorded before accounts existed,
    /// or started without them).
    #[serde(default)]
    pub owner: Option<UserId>,
    /// The artifacts of other runs it reads, pinned at start, by how
    /// inputs name them (`<template>:<step>.<output>`).
    #[serde(default)]
    pub imports: BTreeMap<String, crate::domain::prerequisites::Import>,
    /// Whether ready steps are dispatched without a user's trigger.
    #[serde(default = "crate::domain::yes")]
    pub auto_run: bool,
    /// What decisions need of the conversation thread.
    #[serde(default)]
    pub thread: ThreadState,
    /// Where clicks on agents' messages sent the run: each step a clicked
    /// message's buttons name, the step that asked, and whether it runs.
    #[serde(default)]
    pub routes: BTreeMap<StepId, (StepId, bool)>,
    /// When it finished (completed, failed or cancelled); none while it
    /// runs, and again once a step retry or rollback reopens it.
    #[serde(default)]
    pub finished_at: Option<Timestamp>,
    /// When retention purged its artifact bodies: it never runs again.
    #[serde(default)]
    pub purged_at: Option<Timestamp>,
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
    /// Its owner.
    pub owner: Option<UserId>,
    /// The artifacts of other runs it read, as pinned at its start: a new
    /// run of the same work reads the same versions.
    pub imports: Vec<crate::domain::prerequisites::Import>,
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

impl Run {
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
            owner: self.owner.clone(),
            imports: self.imports.values().cloned().collect(),
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
                    if let Some(import) = self.imports.get(source) {
                        return (input.clone(), InputValue::Artifact(import.content.clone()));
                    }
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

    pub(super) fn check_active(&self) -> Result<(), RunError> {
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if self.status.is_finished() {
            return Err(RunError::Finished(self.status.as_str()));
        }
        Ok(())
    }

    /// Checks that `step` is running under `lease` (the lease of its
    /// current attempt); returns that attempt.
    pub fn check_running_step(&self, step: &StepId, lease: &LeaseToken) -> Result<u32, RunError> {
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
    pub(super) fn step_state(&self, step: &StepId) -> Result<&StepState, RunError> {
        self.steps
            .get(step)
            .ok_or_else(|| RunError::UnknownStep(step.clone()))
    }

    /// Step retry and rollback work on running, paused, completed and failed
    /// runs; not on cancelled or cancelling ones.
    pub(super) fn check_reopenable(&self) -> Result<(), RunError> {
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if self.status == RunStatus::Cancelled {
            return Err(RunError::Finished(self.status.as_str()));
        }
        if let Some(at) = self.purged_at {
            return Err(RunError::Purged(at.to_rfc3339()));
        }
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        Ok(())
    }
}
