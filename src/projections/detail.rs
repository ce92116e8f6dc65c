//! The run detail document: what `GET /api/runs/{id}` returns and what
//! `runlog replay` prints. A pure fold of a run's events, so the API and
//! replay agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::definition::Condition;
use crate::domain::ids::{StepId, Timestamp};
use crate::domain::run::{
    ArtifactContent, ArtifactWritten, RunEvent, RunStatus, StepStatus, Usage, UsageTotals,
};

/// Formats a timestamp as RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339()
}

/// Parses what [`rfc3339`] writes.
pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| Timestamp(t.timestamp_millis()))
}

/// An artifact of another run that a run read (its prerequisites), pinned
/// when it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportView {
    /// The run it comes from.
    pub run_id: String,
    /// The version read.
    pub version: u32,
}

/// One attempt of a step: what it was given and what it wrote, so the run
/// detail can show why each artifact version exists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// The attempt number.
    pub attempt: u32,
    /// running | awaiting_review | awaiting_input | completed | failed |
    /// interrupted (its
    /// agent stopped when asked) | invalidated (a retry or rollback upstream
    /// made its inputs stale while it ran) | superseded (it awaited review
    /// and the step was retried instead).
    pub status: String,
    /// The step's own prompt.
    pub prompt: Option<String>,
    /// The prompt the user gave this attempt instead of the step's own.
    pub prompt_override: Option<String>,
    /// The instruction messages (numbers in the thread) it received.
    pub instructions: Vec<u32>,
    /// The artifact versions it read.
    pub reads: BTreeMap<String, u32>,
    /// The artifacts of other runs it read, by how its inputs name them
    /// (`<template>:<step>.<output>`): which run, which version.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub imports: BTreeMap<String, ImportView>,
    /// The artifact versions it wrote.
    pub writes: BTreeMap<String, u32>,
    /// True when it was re-dispatched after a restart.
    pub recovered: bool,
    /// When it was dispatched.
    pub started_at: String,
    /// When it finished.
    pub finished_at: Option<String>,
    /// Its error, if it failed.
    pub error: Option<String>,
    /// The remote worker that claimed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// When that worker claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<String>,
    /// What its model calls used (model, tokens, cost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Its evaluator's score (refine loops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Its evaluator's feedback (refine loops).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

/// A refine loop, as the run detail shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefineView {
    /// The evaluator.
    pub evaluator: String,
    /// The attempt running or last run.
    pub current_attempt: u32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// The score that passes.
    pub pass_threshold: f64,
    /// Every scored attempt.
    pub scores: Vec<ScoreView>,
    /// The score the step completed with.
    pub final_score: Option<f64>,
}

/// One scored attempt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScoreView {
    /// The attempt.
    pub attempt: u32,
    /// Its score.
    pub score: f64,
    /// Whether it passed.
    pub passed: bool,
}

/// One step in the run detail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepView {
    /// pending | ready | running | awaiting_review | awaiting_input |
    /// completed | failed | skipped.
    pub status: StepStatus,
    /// Current or last attempt (0 before the first dispatch).
    pub attempt: u32,
    /// The agent that executes it.
    pub agent: String,
    /// Its dependencies.
    pub depends_on: Vec<String>,
    /// When the current attempt was dispatched.
    pub started_at: Option<String>,
    /// When it completed or failed for good.
    pub finished_at: Option<String>,
    /// When the next attempt is due, while a retry waits.
    pub retry_at: Option<String>,
    /// Its last error.
    pub error: Option<String>,
    /// The artifacts it wrote (`step.output`).
    pub outputs: Vec<String>,
    /// The step's own prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The prompt override its attempts use (from a retry or a trigger).
    #[serde(default)]
    pub prompt_override: Option<String>,
    /// Whether it stops for a review.
    #[serde(default)]
    pub review: bool,
    /// The choices a reviewer picks from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// The choice picked at approval (the latest version of
    /// `<step>.choice`).
    #[serde(default)]
    pub choice: Option<String>,
    /// Every choice made, by version of `<step>.choice`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub choice_versions: BTreeMap<u32, String>,
    /// Its condition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// Every attempt, oldest first.
    #[serde(default)]
    pub attempts: Vec<AttemptView>,
    /// The remote worker holding the current attempt.
    #[serde(default)]
    pub worker: Option<String>,
    /// When the current attempt's lease expires unless its worker sends a
    /// heartbeat.
    #[serde(default)]
    pub lease_expires_at: Option<String>,
    /// When its worker last extended the lease.
    #[serde(default)]
    pub last_heartbeat_at: Option<String>,
    /// A running step whose worker's last heartbeat is older than its lease
    /// (computed when read, against the server's clock; not a status).
    #[serde(default)]
    pub stalled: bool,
    /// Its refine loop, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<RefineView>,
}

impl StepView {
    fn attempt_mut(&mut self, attempt: u32) -> Option<&mut AttemptView> {
        self.attempts
            .iter_mut()
            .rev()
            .find(|a| a.attempt == attempt)
    }

    /// The current attempt holds no lease any more.
    fn drop_lease(&mut self) {
        self.worker = None;
        self.lease_expires_at = None;
        self.last_heartbeat_at = None;
    }

    fn finish_attempt(&mut self, attempt: u32, status: &str, at: Timestamp) {
        if let Some(a) = self.attempt_mut(attempt) {
            a.status = status.to_string();
            a.finished_at = Some(rfc3339(at));
        }
    }
}

/// One artifact in the run detail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// The version `latest` points at.
    pub latest: u32,
    /// How many versions exist.
    pub versions: u32,
    /// The step that writes it.
    pub step: String,
    /// When the latest version was written.
    pub updated_at: String,
}

/// What retention purged of a run (`ArtifactsPurged`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeView {
    /// When.
    pub at: String,
    /// The cut-off it was asked with.
    pub finished_before: String,
    /// The artifact versions whose bodies were removed (those stored in
    /// the blob store; inline bodies are part of the events and stay).
    pub versions: u32,
    /// Their bodies' bytes.
    pub bytes: u64,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureView {
    /// The step whose failure failed the run.
    pub step: String,
    /// Its last error.
    pub message: String,
}

/// The run detail document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunDetail {
    /// The run id.
    pub id: String,
    /// The template it started from.
    pub template_id: String,
    /// That template's version.
    pub template_version: u32,
    /// queued | running | completed | failed.
    pub status: RunStatus,
    /// The run input.
    pub input: Value,
    /// Each step.
    pub steps: BTreeMap<String, StepView>,
    /// Each artifact (`step.output`).
    pub artifacts: BTreeMap<String, ArtifactView>,
    /// Set when the run failed.
    pub error: Option<FailureView>,
    /// A pause was asked and not yet reached (steps still running).
    #[serde(default)]
    pub pause_requested: bool,
    /// A cancel was asked and not yet reached (steps still running).
    #[serde(default)]
    pub cancel_requested: bool,
    /// The reason given for a cancel, if any.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// The failed or cancelled run this one retries, if any.
    #[serde(default)]
    pub retry_of: Option<String>,
    /// The run this one replaced by a redirect, if any.
    #[serde(default)]
    pub redirected_from: Option<String>,
    /// The run that replaced this one by a redirect, if any.
    #[serde(default)]
    pub redirected_to: Option<String>,
    /// The artifacts of other runs this one reads (its template's
    /// `requires.artifacts`), pinned at start, by how inputs name them
    /// (`<template>:<step>.<output>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub imports: BTreeMap<String, ImportView>,
    /// Whether ready steps are dispatched without a trigger.
    #[serde(default = "crate::domain::yes")]
    pub auto_run: bool,
    /// The id of the user the run belongs to (`null`: nobody's).
    #[serde(default)]
    pub owner: Option<String>,
    /// Messages in the thread.
    #[serde(default)]
    pub messages: u32,
    /// What the run's model calls used, every step together.
    #[serde(default)]
    pub usage: UsageTotals,
    /// Set once retention purged the run's artifact bodies: the versions
    /// stored as blobs read as purged, and the run never runs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<PurgeView>,
    /// When the run started.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The sequence of the last event this document reflects.
    pub sequence: u64,
}

impl RunDetail {
    /// The run as it was after event `at` (all of it with `None`), folded
    /// from its events in sequence order: what `runlog replay --at` and
    /// `GET /api/runs/{id}?at=` show.
    pub fn replayed<'a>(
        events: impl IntoIterator<Item = (u64, &'a RunEvent)>,
        at: Option<u64>,
    ) -> Self {
        let mut detail = Self::default();
        for (sequence, event) in events {
            if at.is_some_and(|at| sequence > at) {
                break;
            }
            detail.apply(sequence, event);
        }
        detail
    }

    /// Folds one event (with its sequence) into the document. Events at or
    /// below the current sequence are ignored, so the fold is idempotent.
    pub fn apply(&mut self, sequence: u64, event: &RunEvent) {
        if sequence <= self.sequence {
            return;
        }
        self.sequence = sequence;
        self.updated_at = rfc3339(event.at());
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
                self.id = run_id.to_string();
                self.imports = imports
                    .iter()
                    .map(|i| {
                        (
                            i.reference(),
                            ImportView {
                                run_id: i.run_id.to_string(),
                                version: i.version,
                            },
                        )
                    })
                    .collect();
                self.owner = owner.as_ref().map(ToString::to_string);
                self.retry_of = retry_of.as_ref().map(ToString::to_string);
                self.redirected_from = redirected_from.as_ref().map(ToString::to_string);
                self.auto_run = *auto_run;
                self.template_id = template_id.to_string();
                self.template_version = *template_version;
                self.input = input.clone();
                self.status = RunStatus::Running;
                self.created_at = rfc3339(*at);
                self.steps = definition
                    .steps
                    .iter()
                    .map(|(id, def)| {
                        let view = StepView {
                            agent: def.agent.to_string(),
                            depends_on: def.depends_on.iter().map(ToString::to_string).collect(),
                            prompt: def.prompt.clone(),
                            review: def.review,
                            choices: def.choices.clone(),
                            when: def.when.clone(),
                            refine: def.refine.as_ref().map(|r| RefineView {
                                evaluator: r.evaluator.to_string(),
                                max_attempts: r.max_attempts,
                                pass_threshold: r.pass_threshold,
                                ..RefineView::default()
                            }),
                            ..StepView::default()
                        };
                        (id.to_string(), view)
                    })
                    .collect();
                self.mark(ready, StepStatus::Ready);
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                evaluating: true,
                ..
            } => {
                // The evaluator of a refine loop: the same attempt, scored.
                let s = self.step(step);
                s.status = StepStatus::Running;
                s.retry_at = None;
                s.drop_lease();
                if let Some(a) = s.attempt_mut(*attempt) {
                    a.status = "evaluating".into();
                    a.error = None;
                }
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                reads,
                recovered,
                prompt_override,
                instructions,
                imports,
                at,
                ..
            } => {
                let s = self.step(step);
                s.status = StepStatus::Running;
                s.attempt = *attempt;
                s.started_at = Some(rfc3339(*at));
                s.retry_at = None;
                s.prompt_override = prompt_override.clone();
                if let Some(refine) = s.refine.as_mut() {
                    refine.current_attempt = *attempt;
                }
                let view = AttemptView {
                    attempt: *attempt,
                    status: "running".into(),
                    prompt: s.prompt.clone(),
                    prompt_override: prompt_override.clone(),
                    instructions: instructions.clone(),
                    reads: reads.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
                    imports: imports
                        .iter()
                        .map(|(reference, read)| {
                            (
                                reference.clone(),
                                ImportView {
                                    run_id: read.run_id.to_string(),
                                    version: read.version,
                                },
                            )
                        })
                        .collect(),
                    writes: BTreeMap::new(),
                    recovered: *recovered,
                    started_at: rfc3339(*at),
                    finished_at: None,
                    error: None,
                    worker: None,
                    claimed_at: None,
                    usage: None,
                    score: None,
                    feedback: None,
                };
                s.drop_lease();
                match s.attempt_mut(*attempt) {
                    // A recovered dispatch is the same attempt again.
                    Some(existing) if *recovered => *existing = view,
                    _ => s.attempts.push(view),
                }
            }
            RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                ready,
                skipped,
                usage,
                latest,
                final_score,
                at,
            } => {
                self.record_usage(step, *attempt, usage.as_ref());
                self.write_artifacts(step, *attempt, artifacts, *at);
                for (name, version) in latest {
                    let a = self.artifacts.entry(name.to_string()).or_default();
                    a.latest = *version;
                    a.updated_at = rfc3339(*at);
                }
                if let Some(refine) = self.step(step).refine.as_mut() {
                    refine.final_score = *final_score;
                }
                let s = self.step(step);
                s.status = StepStatus::Completed;
                s.finished_at = Some(rfc3339(*at));
                s.error = None;
                s.finish_attempt(*attempt, "completed", *at);
                s.drop_lease();
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
                *attempt,
                artifacts,
                usage.as_ref(),
                *at,
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
                *attempt,
                artifacts,
                usage.as_ref(),
                *at,
                StepStatus::AwaitingInput,
            ),
            RunEvent::StepApproved { step, choice, .. } => {
                self.step(step).choice = choice.clone();
            }
            RunEvent::ButtonClicked { step, value, .. } => {
                self.step(step).choice = Some(value.clone());
            }
            RunEvent::StepFailed {
                step,
                attempt,
                error,
                will_retry,
                at,
                ..
            } => {
                let s = self.step(step);
                s.error = Some(error.clone());
                s.finish_attempt(*attempt, "failed", *at);
                s.drop_lease();
                if let Some(a) = s.attempt_mut(*attempt) {
                    a.error = Some(error.clone());
                }
                if *will_retry {
                    s.status = StepStatus::Ready;
                } else {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(rfc3339(*at));
                }
            }
            RunEvent::StepRetryScheduled { step, due_at, .. } => {
                let s = self.step(step);
                s.status = StepStatus::Ready;
                s.retry_at = Some(rfc3339(*due_at));
            }
            RunEvent::StepInterrupted { step, attempt, at } => {
                self.attempt_ended(step, *attempt, "interrupted", *at);
            }
            RunEvent::StepLeaseExpired {
                step, attempt, at, ..
            } => self.attempt_ended(step, *attempt, "expired", *at),
            RunEvent::StepReleased { step, attempt, at } => {
                self.attempt_ended(step, *attempt, "released", *at);
            }
            RunEvent::StepLeaseRevoked { step, attempt, at } => {
                self.attempt_ended(step, *attempt, "cancelled", *at);
            }
            RunEvent::StepProduced {
                step,
                attempt,
                artifacts,
                usage,
                at,
            } => {
                self.record_usage(step, *attempt, usage.as_ref());
                self.write_artifacts(step, *attempt, artifacts, *at);
                let s = self.step(step);
                s.status = StepStatus::Ready;
                s.drop_lease();
                if let Some(a) = s.attempt_mut(*attempt) {
                    a.status = "evaluating".into();
                }
            }
            RunEvent::StepEvaluated {
                step,
                attempt,
                score,
                feedback,
                passed,
                usage,
                at,
            } => {
                if let Some(usage) = usage {
                    self.usage.add(usage);
                }
                let s = self.step(step);
                s.status = StepStatus::Ready;
                s.drop_lease();
                if let Some(a) = s.attempt_mut(*attempt) {
                    a.status = if *passed { "passed" } else { "scored" }.into();
                    a.score = Some(*score);
                    a.feedback = Some(feedback.clone());
                    a.finished_at = Some(rfc3339(*at));
                }
                if let Some(refine) = s.refine.as_mut() {
                    refine.scores.push(ScoreView {
                        attempt: *attempt,
                        score: *score,
                        passed: *passed,
                    });
                }
            }
            RunEvent::StepClaimed {
                step,
                attempt,
                worker,
                lease_expires_at,
                at,
            } => {
                let s = self.step(step);
                s.worker = Some(worker.clone());
                s.lease_expires_at = Some(rfc3339(*lease_expires_at));
                s.last_heartbeat_at = Some(rfc3339(*at));
                if let Some(a) = s.attempt_mut(*attempt) {
                    a.worker = Some(worker.clone());
                    a.claimed_at = Some(rfc3339(*at));
                }
            }
            RunEvent::StepHeartbeat {
                step,
                lease_expires_at,
                at,
                ..
            } => {
                let s = self.step(step);
                s.lease_expires_at = Some(rfc3339(*lease_expires_at));
                s.last_heartbeat_at = Some(rfc3339(*at));
            }
            RunEvent::StepRetryRequested {
                step,
                prompt_override,
                invalidated,
                reopens_run,
                at,
            } => {
                let s = self.step(step);
                // An attempt a reviewer sent back never gets approved.
                if let Some(last) = s.attempts.last_mut() {
                    if last.status == "awaiting_review" || last.status == "awaiting_input" {
                        last.status = "superseded".into();
                    }
                }
                s.status = StepStatus::Ready;
                s.finished_at = None;
                s.retry_at = None;
                s.error = None;
                s.choice = None;
                s.prompt_override = prompt_override.clone();
                if let Some(refine) = s.refine.as_mut() {
                    refine.final_score = None;
                }
                self.invalidate(invalidated, *reopens_run, *at);
            }
            RunEvent::ArtifactRolledBack {
                name,
                to_version,
                invalidated,
                ready,
                skipped,
                reopens_run,
                at,
                ..
            } => {
                let a = self.artifacts.entry(name.to_string()).or_default();
                a.latest = *to_version;
                a.updated_at = rfc3339(*at);
                // Rolling a review's choice back routes the run by the old
                // choice again.
                if let Some(s) = self.steps.get_mut(name.step()) {
                    if let Some(choice) = s.choice_versions.get(to_version) {
                        s.choice = Some(choice.clone());
                    }
                }
                self.invalidate(invalidated, *reopens_run, *at);
                self.mark(ready, StepStatus::Ready);
                self.mark(skipped, StepStatus::Skipped);
            }
            RunEvent::RunCompleted { .. } => {
                self.status = RunStatus::Completed;
                self.pause_requested = false;
                self.cancel_requested = false;
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
            RunEvent::CancelRequested { reason, .. } => {
                self.cancel_requested = true;
                self.cancel_reason = reason.clone();
            }
            RunEvent::RunCancelled { .. } => {
                self.status = RunStatus::Cancelled;
                self.pause_requested = false;
                self.cancel_requested = false;
            }
            RunEvent::RunFailed { step, error, .. } => {
                self.status = RunStatus::Failed;
                self.pause_requested = false;
                self.cancel_requested = false;
                self.error = Some(FailureView {
                    step: step.to_string(),
                    message: error.clone(),
                });
            }
            RunEvent::RunRedirected { to, .. } => self.redirected_to = Some(to.to_string()),
            RunEvent::AutoRunChanged { enabled, .. } => self.auto_run = *enabled,
            RunEvent::MessagePosted { message, .. } => self.messages = *message,
            RunEvent::MessageStatusChanged { .. } => {}
            RunEvent::ArtifactsPurged {
                versions,
                finished_before,
                at,
            } => {
                self.purged = Some(PurgeView {
                    at: rfc3339(*at),
                    finished_before: rfc3339(*finished_before),
                    versions: u32::try_from(versions.len()).unwrap_or(u32::MAX),
                    bytes: versions.iter().map(|v| v.size).sum(),
                });
            }
        }
    }

    /// An attempt finished and its step waits for a user (`status`: a
    /// review or a click), its outputs written.
    fn await_user(
        &mut self,
        step: &StepId,
        attempt: u32,
        artifacts: &[ArtifactWritten],
        usage: Option<&Usage>,
        at: Timestamp,
        status: StepStatus,
    ) {
        self.record_usage(step, attempt, usage);
        self.write_artifacts(step, attempt, artifacts, at);
        let s = self.step(step);
        s.status = status;
        s.error = None;
        s.finish_attempt(attempt, status.as_str(), at);
        s.drop_lease();
    }

    fn step(&mut self, step: &StepId) -> &mut StepView {
        self.steps.entry(step.to_string()).or_default()
    }

    /// Records an attempt's model usage, and adds it to the run's.
    fn record_usage(&mut self, step: &StepId, attempt: u32, usage: Option<&Usage>) {
        let Some(usage) = usage else {
            return;
        };
        self.usage.add(usage);
        if let Some(a) = self.step(step).attempt_mut(attempt) {
            a.usage = Some(usage.clone());
        }
    }

    /// An attempt ended without a result (stopped, expired, given back,
    /// revoked): the step is ready again.
    fn attempt_ended(&mut self, step: &StepId, attempt: u32, status: &str, at: Timestamp) {
        let s = self.step(step);
        s.status = StepStatus::Ready;
        s.finish_attempt(attempt, status, at);
        s.drop_lease();
    }

    /// The agents of the run's steps and refine evaluators, as `,a,b,`
    /// (for the runs list's `agent` filter).
    pub fn agents_list(&self) -> String {
        let mut agents: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        for step in self.steps.values() {
            agents.insert(step.agent.as_str());
            if let Some(refine) = &step.refine {
                agents.insert(refine.evaluator.as_str());
            }
        }
        let list: Vec<&str> = agents.into_iter().collect();
        format!(",{},", list.join(","))
    }

    /// The earliest lease expiry of a running step, if any.
    pub fn earliest_lease_expiry(&self) -> Option<Timestamp> {
        self.steps
            .values()
            .filter(|s| s.status == StepStatus::Running)
            .filter_map(|s| s.lease_expires_at.as_deref().and_then(parse_rfc3339))
            .min()
    }

    /// Each refine loop's state, by step (`None` when the run has none).
    pub fn refine_summary(&self) -> Option<Value> {
        let loops: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .filter_map(|(name, s)| {
                let refine = s.refine.as_ref()?;
                Some((
                    name.clone(),
                    serde_json::json!({
                        "current_attempt": refine.current_attempt,
                        "max_attempts": refine.max_attempts,
                        "scores": refine.scores.iter().map(|x| x.score).collect::<Vec<_>>(),
                        "final_score": refine.final_score,
                    }),
                ))
            })
            .collect();
        (!loops.is_empty()).then_some(Value::Object(loops))
    }

    /// Marks the running steps whose lease expired before `now` as stalled
    /// (done when the document is read, not stored).
    pub fn mark_stalled(&mut self, now: Timestamp) {
        for step in self.steps.values_mut() {
            step.stalled = step.status == StepStatus::Running
                && step
                    .lease_expires_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .is_some_and(|expires| expires < now);
        }
    }

    fn write_artifacts(
        &mut self,
        step: &StepId,
        attempt: u32,
        artifacts: &[ArtifactWritten],
        at: Timestamp,
    ) {
        for written in artifacts {
            let name = written.name.to_string();
            let s = self.steps.entry(step.to_string()).or_default();
            if !s.outputs.contains(&name) {
                s.outputs.push(name.clone());
            }
            if let Some(a) = s.attempt_mut(attempt) {
                a.writes.insert(name.clone(), written.version);
            }
            if let (true, "choice", ArtifactContent::Inline(Value::String(choice))) =
                (s.review, written.name.output(), &written.content)
            {
                s.choice_versions.insert(written.version, choice.clone());
            }
            let a = self.artifacts.entry(name).or_default();
            a.latest = written.version;
            a.versions += 1;
            a.step = step.to_string();
            a.updated_at = rfc3339(at);
        }
    }

    /// Steps sent back to pending by a retry or rollback upstream; a running
    /// attempt among them is invalidated.
    fn invalidate(&mut self, steps: &[StepId], reopens_run: bool, at: Timestamp) {
        for step in steps {
            let s = self.step(step);
            if s.status == StepStatus::Running {
                let attempt = s.attempt;
                s.finish_attempt(attempt, "invalidated", at);
            }
            s.drop_lease();
            s.status = StepStatus::Pending;
            s.finished_at = None;
            s.retry_at = None;
            s.error = None;
            s.choice = None;
            if let Some(refine) = s.refine.as_mut() {
                refine.final_score = None;
            }
        }
        if reopens_run {
            self.status = RunStatus::Running;
            self.error = None;
        }
    }

    fn mark(&mut self, steps: &[StepId], status: StepStatus) {
        for step in steps {
            self.step(step).status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::domain::definition::Definition;
    use crate::domain::ids::{LeaseToken, RunId, TemplateId};

    fn folded(events: &[RunEvent]) -> RunDetail {
        let mut detail = RunDetail::default();
        for (n, event) in (1..).zip(events) {
            detail.apply(n, event);
        }
        detail
    }

    fn claimed_run() -> Vec<RunEvent> {
        let definition = Definition::parse(&json!({"steps": {"a": {"agent": "remote"}}})).unwrap();
        let a = StepId::parse("a").unwrap();
        vec![
            RunEvent::RunStarted {
                run_id: RunId::parse("r").unwrap(),
                template_id: TemplateId::parse("t").unwrap(),
                template_version: 1,
                definition,
                input: json!({}),
                ready: vec![a.clone()],
                retry_of: None,
                redirected_from: None,
                auto_run: true,
                owner: None,
                imports: Vec::new(),
                at: Timestamp(0),
            },
            RunEvent::StepDispatched {
                evaluating: false,
                step: a.clone(),
                attempt: 1,
                lease: LeaseToken::new("l"),
                reads: BTreeMap::new(),
                recovered: false,
                prompt_override: None,
                instructions: Vec::new(),
                imports: BTreeMap::new(),
                at: Timestamp(0),
            },
            RunEvent::StepClaimed {
                step: a,
                attempt: 1,
                worker: "w".into(),
                lease_expires_at: Timestamp(30_000),
                at: Timestamp(0),
            },
        ]
    }

    #[test]
    fn a_running_step_is_stalled_once_its_lease_is_past_and_not_before() {
        let mut detail = folded(&claimed_run());
        assert_eq!(detail.steps["a"].worker.as_deref(), Some("w"));
        detail.mark_stalled(Timestamp(30_000));
        assert!(!detail.steps["a"].stalled);
        detail.mark_stalled(Timestamp(30_001));
        assert!(detail.steps["a"].stalled);
    }

    #[test]
    fn a_step_whose_lease_is_gone_is_not_stalled() {
        let mut events = claimed_run();
        events.push(RunEvent::StepLeaseExpired {
            step: StepId::parse("a").unwrap(),
            attempt: 1,
            worker: "w".into(),
            expiries: 1,
            at: Timestamp(30_000),
        });
        let mut detail = folded(&events);
        detail.mark_stalled(Timestamp(99_999));
        assert!(!detail.steps["a"].stalled);
        assert_eq!(detail.steps["a"].attempts[0].status, "expired");
        assert_eq!(detail.steps["a"].worker, None);
    }
}
