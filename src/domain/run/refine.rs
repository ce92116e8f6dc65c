//! Refine loops: producer → evaluator → reviser. Each attempt of a
//! refining step produces its outputs (new artifact versions), its
//! evaluator scores them 0..1 with feedback, and while the score is under
//! the threshold and attempts remain the step runs again with that feedback
//! as an instruction. It completes with the passing attempt's versions as
//! `latest`, or with the best-scoring one's when it accepts its best; or it
//! fails. An agent error in an attempt (producer or evaluator) spends the
//! step's retry budget as any failure does.

use std::collections::BTreeMap;

use super::command::{Failure, Stamp};
use super::decision::Decision;
use super::thread::AgentNote;
use super::{ArtifactContent, ArtifactWritten, Outputs, Run, RunError, RunEvent, Usage};
use crate::domain::definition::{OnExhausted, Refine};
use crate::domain::ids::{ArtifactName, StepId, Timestamp};

impl Run {
    /// An attempt of a refining step finished: its producer produced, or
    /// its evaluator scored.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn refine_result(
        &self,
        step: StepId,
        attempt: u32,
        refine: &Refine,
        outputs: Outputs,
        usage: Option<Usage>,
        comments: Vec<AgentNote>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let mut d = Decision::new(self, stamp);
        d.agent_comments(&step, comments);
        if !self.steps[&step].refine.evaluating {
            let artifacts: Vec<ArtifactWritten> = outputs
                .into_iter()
                .map(|(output, content)| {
                    let name = ArtifactName::new(&step, &output);
                    ArtifactWritten {
                        version: self.next_version(&name),
                        name,
                        content,
                    }
                })
                .collect();
            d.record(RunEvent::StepProduced {
                step: step.clone(),
                attempt,
                artifacts,
                usage,
                at,
            });
            // The evaluator scores it at once, unless the run may not
            // dispatch (it does on resume).
            if d.state.dispatching() {
                d.dispatch(step, at, false, None);
            }
            d.settle(at);
            return Ok(d);
        }
        let Some((score, feedback)) = judgement(&outputs) else {
            let failure = Failure::retryable(format!(
                "the evaluator '{}' answered no score between 0 and 1 (it must return the outputs \
                 'score' and 'feedback')",
                refine.evaluator
            ));
            d.fail_attempt(&step, attempt, failure, at);
            d.settle(at);
            return Ok(d);
        };
        let produced = self.steps[&step].refine.produced.clone();
        let passed = score >= refine.pass_threshold;
        d.record(RunEvent::StepEvaluated {
            step: step.clone(),
            attempt,
            score,
            feedback,
            passed,
            usage,
            at,
        });
        let round = d.state.steps[&step].refine.clone();
        if passed {
            complete(&mut d, &step, attempt, produced, BTreeMap::new(), score, at);
        } else if round.evaluated < refine.max_attempts {
            if d.state.dispatching() {
                let prompt_override = d.state.steps[&step].prompt_override.clone();
                d.dispatch(step, at, false, prompt_override);
            }
        } else {
            match (refine.on_exhausted, round.best) {
                (OnExhausted::AcceptBest, Some(best)) => {
                    let latest = if best.attempt == attempt {
                        BTreeMap::new()
                    } else {
                        best.versions.clone()
                    };
                    complete(
                        &mut d,
                        &step,
                        attempt,
                        best.versions,
                        latest,
                        best.score,
                        at,
                    );
                }
                (_, best) => {
                    let best = best.map_or(String::new(), |b| {
                        format!(" (the best scored {} at attempt {})", b.score, b.attempt)
                    });
                    let failure = Failure {
                        error: format!(
                            "refine: none of {} attempts reached the threshold {}{best}",
                            round.evaluated, refine.pass_threshold
                        ),
                        retryable: false,
                        retry_after_ms: None,
                    };
                    d.fail_attempt(&step, attempt, failure, at);
                }
            }
        }
        d.settle(at);
        Ok(d)
    }
}

/// The score (a number 0..1) and feedback (text, if any) an evaluator
/// returned.
fn judgement(outputs: &Outputs) -> Option<(f64, String)> {
    let value = |name: &str| {
        outputs
            .iter()
            .find(|(output, _)| output.as_str() == name)
            .and_then(|(_, content)| match content {
                ArtifactContent::Inline(value) => Some(value.clone()),
                ArtifactContent::Blob { .. } => None,
            })
    };
    let score = value("score")?
        .as_f64()
        .filter(|s| (0.0..=1.0).contains(s))?;
    let feedback = match value("feedback") {
        Some(serde_json::Value::String(text)) => text,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Some((score, feedback))
}

/// Completes a refining step with `selected` (the versions it completes
/// with; `latest` moves where they are not latest already).
fn complete(
    d: &mut Decision,
    step: &StepId,
    attempt: u32,
    selected: BTreeMap<ArtifactName, u32>,
    latest: BTreeMap<ArtifactName, u32>,
    score: f64,
    at: Timestamp,
) {
    // Conditions downstream test the versions the step completes with.
    let fresh: Vec<ArtifactWritten> = selected
        .iter()
        .filter_map(|(name, version)| {
            let content = d.state.artifacts.get(name)?.content(*version)?.clone();
            Some(ArtifactWritten {
                name: name.clone(),
                version: *version,
                content,
            })
        })
        .collect();
    let (ready, skipped) = d.state.advance_after(step, &fresh);
    d.record(RunEvent::StepCompleted {
        step: step.clone(),
        attempt,
        artifacts: Vec::new(),
        ready,
        skipped,
        usage: None,
        latest,
        final_score: Some(score),
        at,
    });
    d.dispatch_due(at);
}
