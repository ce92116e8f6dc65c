//! The graph rules of a run: what becomes ready or skipped when a step
//! completes, which steps a change upstream sends back to pending, and
//! which artifact versions a dispatched step reads.

use std::collections::{BTreeMap, BTreeSet};

use super::error::RunError;
use super::state::{ArtifactState, Run, RunStatus, StepStatus};
use super::{ArtifactContent, ArtifactWritten, ImportedRead};
use crate::domain::definition::Condition;
use crate::domain::ids::{ArtifactName, OutputName, StepId};

/// The output a review choice is recorded as.
pub(super) fn choice_output() -> OutputName {
    OutputName::parse("choice").expect("'choice' is a valid output name")
}

impl Run {
    /// The steps below `step` that must run again when its outputs change:
    /// every downstream step that is not pending already.
    pub(super) fn invalidated_below(&self, step: &StepId) -> Vec<StepId> {
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
    pub(super) fn reopens(&self, rerun: &BTreeSet<&StepId>) -> Result<bool, RunError> {
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
    pub(super) fn next_version(&self, name: &ArtifactName) -> u32 {
        self.artifacts
            .get(name)
            .map_or(0, |a| a.versions.last().map_or(0, |v| v.version))
            + 1
    }

    /// What becomes ready or skipped once `done` completes having written
    /// `written`. Nothing does while the run is failing or cancelling.
    pub(super) fn advance_after(
        &self,
        done: &StepId,
        written: &[ArtifactWritten],
    ) -> (Vec<StepId>, Vec<StepId>) {
        self.advance_routed(done, written, &BTreeMap::new())
    }

    /// [`Run::advance_after`], with the routes a click on `done`'s message
    /// decides (`routes`: the steps its buttons name, and whether each
    /// runs).
    pub(super) fn advance_routed(
        &self,
        done: &StepId,
        written: &[ArtifactWritten],
        routes: &BTreeMap<StepId, bool>,
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
            routes,
        )
    }

    /// Decides the pending steps among `candidates` (and, through skips,
    /// their dependants) whose dependencies are all done: each is ready, or
    /// skipped when its condition is false or every dependency was skipped.
    /// `seed` overrides step statuses, `fresh` artifact values and
    /// `routes` the routes of clicks, for decisions about a state that the
    /// command's events will bring. A step a click routed away from is
    /// skipped.
    pub(super) fn evaluate(
        &self,
        candidates: Vec<StepId>,
        seed: BTreeMap<StepId, StepStatus>,
        fresh: BTreeMap<ArtifactName, ArtifactContent>,
        routes: &BTreeMap<StepId, bool>,
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
            let routed_away = routes
                .get(&step)
                .or_else(|| self.routes.get(&step).map(|(_, taken)| taken))
                == Some(&false);
            let skip = all_skipped || routed_away || def.when.as_ref().is_some_and(|w| !holds(w));
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
    pub(super) fn reads_of(&self, step: &StepId) -> BTreeMap<ArtifactName, u32> {
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

    /// The artifacts of other runs `step` reads: the imports its inputs
    /// name.
    pub(super) fn imports_of(&self, step: &StepId) -> BTreeMap<String, ImportedRead> {
        let Some(def) = self.definition.steps.get(step) else {
            return BTreeMap::new();
        };
        def.inputs
            .values()
            .filter_map(|source| self.imports.get(source))
            .map(|import| {
                (
                    import.reference(),
                    ImportedRead {
                        run_id: import.run_id.clone(),
                        version: import.version,
                    },
                )
            })
            .collect()
    }

    /// Whether an artifact's step stands behind it: the outputs of a step
    /// that was skipped since it wrote them are not handed on.
    pub(super) fn is_live(&self, name: &ArtifactName) -> bool {
        self.steps
            .get(name.step())
            .is_none_or(|s| s.status != StepStatus::Skipped)
    }
}
