//! The texts the engine posts to a run's thread: one system message per
//! state change that a person following the run would want to hear about,
//! and the reasons given when a message is not acted on. Kept in one place
//! so that the wording is consistent and easy to review.

use super::state::Run;
use super::RunEvent;
use crate::domain::ids::StepId;

/// The system message a state change deserves, if any, and the step it is
/// about. `state` is the run with `event` applied; `was_paused` whether it
/// was paused before.
pub(super) fn announcement(
    state: &Run,
    event: &RunEvent,
    was_paused: bool,
) -> Option<(String, Option<StepId>)> {
    let text = match event {
        RunEvent::RunPaused { .. } => "Run paused.".to_string(),
        RunEvent::RunResumed { .. } if was_paused => "Run resumed.".to_string(),
        RunEvent::RunCancelled { reason, .. } => match (&state.redirected_to, reason) {
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
            let choices = &state.definition.steps[step].choices;
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
        RunEvent::StepEvaluated {
            step,
            attempt,
            score,
            feedback,
            passed,
            ..
        } => {
            let threshold = state.definition.steps[step]
                .refine
                .as_ref()
                .map_or(0.0, |r| r.pass_threshold);
            let verdict = if *passed { "passes" } else { "below" };
            let feedback = feedback.trim();
            let feedback = if feedback.is_empty() {
                String::new()
            } else {
                format!(": {}", feedback.trim_end_matches('.'))
            };
            format!("Step '{step}' attempt {attempt} scored {score:.2} ({verdict} {threshold:.2}){feedback}.")
        }
        RunEvent::StepLeaseExpired {
            step,
            worker,
            expiries,
            ..
        } => format!(
            "Step '{step}' lost its worker '{worker}' (no heartbeat before its lease ran out; \
             {expiries} in a row)."
        ),
        RunEvent::StepLeaseRevoked { step, .. } => {
            format!("Step '{step}' did not stop within the cancel's grace; its lease was revoked.")
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

/// Why the instructions still open when the run ended were not used.
pub(super) fn instructions_ignored(event: &RunEvent) -> String {
    format!(
        "the run {} before a step completed with it",
        match event {
            RunEvent::RunCompleted { .. } => "completed",
            RunEvent::RunFailed { .. } => "failed",
            _ => "was cancelled",
        }
    )
}
