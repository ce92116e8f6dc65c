//! The run detail document: what `GET /api/runs/{id}` returns and what
//! `runlog replay` prints. A pure fold of a run's events, so the API and
//! replay agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ids::Timestamp;
use crate::domain::run::{RunEvent, RunStatus, StepStatus};

/// Formats a timestamp as RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: Timestamp) -> String {
    chrono::DateTime::from_timestamp_millis(at.0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One step in the run detail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    /// pending | ready | running | completed | failed.
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
}

/// One artifact in the run detail.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureView {
    /// The step whose failure failed the run.
    pub step: String,
    /// Its last error.
    pub message: String,
}

/// The run detail document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// When the run started.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The sequence of the last event this document reflects.
    pub sequence: u64,
}

impl RunDetail {
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
                at,
            } => {
                self.id = run_id.to_string();
                self.retry_of = retry_of.as_ref().map(ToString::to_string);
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
                            ..StepView::default()
                        };
                        (id.to_string(), view)
                    })
                    .collect();
                self.mark_ready(ready.iter().map(ToString::to_string));
            }
            RunEvent::StepDispatched {
                step, attempt, at, ..
            } => {
                let s = self.steps.entry(step.to_string()).or_default();
                s.status = StepStatus::Running;
                s.attempt = *attempt;
                s.started_at = Some(rfc3339(*at));
                s.retry_at = None;
            }
            RunEvent::StepCompleted {
                step,
                artifacts,
                ready,
                at,
                ..
            } => {
                let s = self.steps.entry(step.to_string()).or_default();
                s.status = StepStatus::Completed;
                s.finished_at = Some(rfc3339(*at));
                s.error = None;
                for written in artifacts {
                    let name = written.name.to_string();
                    if !s.outputs.contains(&name) {
                        s.outputs.push(name.clone());
                    }
                    let a = self.artifacts.entry(name).or_default();
                    a.latest = written.version;
                    a.versions += 1;
                    a.step = step.to_string();
                    a.updated_at = rfc3339(*at);
                }
                self.mark_ready(ready.iter().map(ToString::to_string));
            }
            RunEvent::StepFailed {
                step,
                error,
                will_retry,
                at,
                ..
            } => {
                let s = self.steps.entry(step.to_string()).or_default();
                s.error = Some(error.clone());
                if *will_retry {
                    s.status = StepStatus::Ready;
                } else {
                    s.status = StepStatus::Failed;
                    s.finished_at = Some(rfc3339(*at));
                }
            }
            RunEvent::StepRetryScheduled { step, due_at, .. } => {
                let s = self.steps.entry(step.to_string()).or_default();
                s.status = StepStatus::Ready;
                s.retry_at = Some(rfc3339(*due_at));
            }
            RunEvent::RunCompleted { .. } => self.status = RunStatus::Completed,
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
                self.error = Some(FailureView {
                    step: step.to_string(),
                    message: error.clone(),
                });
            }
        }
    }

    fn mark_ready(&mut self, ready: impl Iterator<Item = String>) {
        for step in ready {
            self.steps.entry(step).or_default().status = StepStatus::Ready;
        }
    }
}
