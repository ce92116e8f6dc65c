//! The Run aggregate: one execution of one template version.
//!
//! `decide` turns a command into events without touching state or doing IO;
//! `apply` folds an event into state with no business logic (events carry the
//! facts). The engine carries out what the events imply: a `StepDispatched`
//! means "run this agent", a `StepRetryScheduled` means "wake me at due_at".

mod events;

use std::collections::BTreeMap;
use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use events::{ArtifactContent, ArtifactWritten, Outputs, RunEvent};

use super::definition::Definition;
use super::ids::{ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp};

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
    /// Done; its outputs are artifacts.
    Completed,
    /// Failed for good.
    Failed,
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

/// Commands to a run. Each carries the time it happens at and, where it may
/// dispatch steps, a `lease_seed` (random, from the engine) from which the
/// domain derives one lease token per dispatch.
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
        /// When.
        at: Timestamp,
        /// Seed for lease tokens.
        lease_seed: String,
    },
    /// An agent finished a step.
    CompleteStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that finished.
        lease: LeaseToken,
        /// What it produced.
        outputs: Outputs,
        /// When.
        at: Timestamp,
        /// Seed for lease tokens of the steps that become ready.
        lease_seed: String,
    },
    /// An agent failed a step.
    FailStep {
        /// The step.
        step: StepId,
        /// The lease of the dispatch that failed.
        lease: LeaseToken,
        /// What went wrong.
        error: String,
        /// When.
        at: Timestamp,
    },
    /// Dispatch the ready steps whose retry time has come.
    DispatchDue {
        /// Now.
        at: Timestamp,
        /// Seed for lease tokens.
        lease_seed: String,
    },
    /// After a restart: re-dispatch the steps that were running, whose
    /// in-process attempts died with the old process.
    Recover {
        /// Now.
        at: Timestamp,
        /// Seed for lease tokens.
        lease_seed: String,
    },
    /// Stop at the next safe checkpoint: dispatch nothing new; the run is
    /// paused once no step runs.
    Pause {
        /// When.
        at: Timestamp,
    },
    /// Continue a paused run (or withdraw a pause not yet reached).
    Resume {
        /// When.
        at: Timestamp,
        /// Seed for lease tokens of the steps dispatched again.
        lease_seed: String,
    },
    /// Cancel gracefully: dispatch nothing new; the run is cancelled once no
    /// step runs.
    Cancel {
        /// Why, if the user said.
        reason: Option<String>,
        /// When.
        at: Timestamp,
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

    fn record(&mut self, event: RunEvent) {
        self.state.apply_event(event.clone());
        self.events.push(event);
    }

    fn next_lease(&mut self) -> LeaseToken {
        self.leases += 1;
        LeaseToken::new(format!("{}.{}", self.seed, self.leases))
    }

    /// Dispatches every ready step that is due, unless the run is failing.
    fn dispatch_due(&mut self, at: Timestamp) {
        if !self.state.dispatching() {
            return;
        }
        let due: Vec<StepId> = self
            .state
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Ready && s.retry_at.is_none_or(|t| t <= at))
            .map(|(id, _)| id.clone())
            .collect();
        for step in due {
            self.dispatch(step, at, false);
        }
    }

    fn dispatch(&mut self, step: StepId, at: Timestamp, recovered: bool) {
        let current = self.state.steps.get(&step).map_or(0, |s| s.attempt);
        let attempt = if recovered {
            current.max(1)
        } else {
            current + 1
        };
        let reads = self.state.reads_of(&step);
        let lease = self.next_lease();
        self.record(RunEvent::StepDispatched {
            step,
            attempt,
            lease,
            reads,
            recovered,
            at,
        });
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
        } else if self
            .state
            .steps
            .values()
            .all(|s| s.status == StepStatus::Completed)
        {
            self.record(RunEvent::RunCompleted { at });
        } else if self.state.pause_requested {
            self.record(RunEvent::RunPaused { at });
        }
    }
}

impl Run {
    /// Decides the events for `command` without changing `self`.
    pub fn decide(&self, command: RunCommand) -> Result<Vec<RunEvent>, RunError> {
        match command {
            RunCommand::Start {
                run_id,
                template_id,
                template_version,
                definition,
                input,
                retry_of,
                at,
                lease_seed,
            } => {
                if self.id.is_some() {
                    return Err(RunError::AlreadyStarted);
                }
                let mut d = Decision::new(self, &lease_seed);
                let ready = definition.roots().cloned().collect();
                d.record(RunEvent::RunStarted {
                    run_id,
                    template_id,
                    template_version,
                    definition: Definition::clone(&definition),
                    input,
                    ready,
                    retry_of,
                    at,
                });
                d.dispatch_due(at);
                Ok(d.events)
            }
            RunCommand::CompleteStep {
                step,
                lease,
                outputs,
                at,
                lease_seed,
            } => {
                let attempt = self.check_running_step(&step, &lease)?;
                let artifacts = outputs
                    .into_iter()
                    .map(|(output, content)| {
                        let name = ArtifactName::new(&step, &output);
                        let version = self
                            .artifacts
                            .get(&name)
                            .map_or(0, |a| a.versions.last().map_or(0, |v| v.version))
                            + 1;
                        ArtifactWritten {
                            name,
                            version,
                            content,
                        }
                    })
                    .collect();
                // A failing run dispatches nothing more, so nothing becomes ready.
                let ready = if self.failure.is_some() || self.cancel_requested.is_some() {
                    Vec::new()
                } else {
                    self.newly_ready_after(&step)
                };
                let mut d = Decision::new(self, &lease_seed);
                d.record(RunEvent::StepCompleted {
                    step,
                    attempt,
                    artifacts,
                    ready,
                    at,
                });
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::FailStep {
                step,
                lease,
                error,
                at,
            } => {
                let attempt = self.check_running_step(&step, &lease)?;
                let policy = self.definition.steps[&step].retry;
                let will_retry = attempt < policy.max_attempts
                    && self.failure.is_none()
                    && self.cancel_requested.is_none();
                // While a cancel is pending a failure is not retried and does
                // not fail the run: the run ends cancelled.
                let fails_run = !will_retry && self.cancel_requested.is_none();
                let mut d = Decision::new(self, "");
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
            RunCommand::DispatchDue { at, lease_seed } => {
                self.check_active()?;
                let mut d = Decision::new(self, &lease_seed);
                d.dispatch_due(at);
                Ok(d.events)
            }
            RunCommand::Recover { at, lease_seed } => {
                self.check_active()?;
                let mut d = Decision::new(self, &lease_seed);
                let running: Vec<StepId> = self
                    .steps
                    .iter()
                    .filter(|(_, s)| s.status == StepStatus::Running)
                    .map(|(id, _)| id.clone())
                    .collect();
                for step in running {
                    d.dispatch(step, at, true);
                }
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Pause { at } => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                if self.status == RunStatus::Paused || self.pause_requested {
                    return Err(RunError::AlreadyPaused);
                }
                let mut d = Decision::new(self, "");
                d.record(RunEvent::PauseRequested { at });
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Resume { at, lease_seed } => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                if self.status != RunStatus::Paused && !self.pause_requested {
                    return Err(RunError::NotPaused);
                }
                let mut d = Decision::new(self, &lease_seed);
                d.record(RunEvent::RunResumed { at });
                d.dispatch_due(at);
                d.settle(at);
                Ok(d.events)
            }
            RunCommand::Cancel { reason, at } => {
                self.check_active()?;
                if self.cancel_requested.is_some() {
                    return Err(RunError::Cancelling);
                }
                let mut d = Decision::new(self, "");
                d.record(RunEvent::CancelRequested { reason, at });
                d.settle(at);
                Ok(d.events)
            }
        }
    }

    /// What a retry of this run starts from: the same template version,
    /// definition and input. Only a failed or cancelled run can be retried.
    pub fn retry_source(&self) -> Result<RetrySource, RunError> {
        let (Some(id), Some(template_id)) = (&self.id, &self.template_id) else {
            return Err(RunError::NotStarted);
        };
        if !matches!(self.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(RunError::NotRetryable(self.status.as_str()));
        }
        Ok(RetrySource {
            run_id: id.clone(),
            template_id: template_id.clone(),
            template_version: self.template_version,
            definition: self.definition.clone(),
            input: self.input.clone(),
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

    /// Pending steps all of whose dependencies are complete once `done` is.
    fn newly_ready_after(&self, done: &StepId) -> Vec<StepId> {
        self.definition
            .dependants_of(done)
            .filter(|s| self.steps.get(*s).map(|st| st.status) == Some(StepStatus::Pending))
            .filter(|s| {
                self.definition.steps[*s].depends_on.iter().all(|dep| {
                    dep == done
                        || self.steps.get(dep).map(|st| st.status) == Some(StepStatus::Completed)
                })
            })
            .cloned()
            .collect()
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
            .filter(|(name, _)| wanted(name))
            .map(|(name, a)| (name.clone(), a.latest))
            .collect()
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
            .filter(|(name, _)| name.step() == step.as_str())
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
        match event {
            RunEvent::RunStarted {
                run_id,
                template_id,
                template_version,
                definition,
                input,
                ready,
                retry_of,
                at,
            } => {
                self.id = Some(run_id);
                self.retry_of = retry_of;
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
                self.mark_ready(ready);
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                lease,
                at,
                ..
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Running;
                s.attempt = attempt;
                s.lease = Some(lease);
                s.retry_at = None;
                s.started_at = Some(at);
            }
            RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                ready,
                at,
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Completed;
                s.lease = None;
                s.error = None;
                s.finished_at = Some(at);
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
                self.mark_ready(ready);
            }
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
            RunEvent::RunCompleted { .. } => self.status = RunStatus::Completed,
            RunEvent::RunFailed { .. } => self.status = RunStatus::Failed,
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
        }
    }

    fn mark_ready(&mut self, ready: Vec<StepId>) {
        for step in ready {
            self.steps.entry(step).or_default().status = StepStatus::Ready;
        }
    }
}

impl Aggregate for Run {
    const TYPE: &'static str = "Run";
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
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
