//! Retention: purging the bodies of a finished run's artifacts. The bodies
//! of large artifacts live in the blob store, outside the events, so a
//! purge removes them and the log stays whole: `ArtifactsPurged` names each
//! version whose body went, and the events that wrote them keep their
//! hashes. Inline bodies are part of the events and stay.

use super::command::Stamp;
use super::decision::Decision;
use super::events::PurgedVersion;
use super::state::Run;
use super::{ArtifactContent, RunError, RunEvent};
use crate::domain::ids::Timestamp;

impl Run {
    /// Purges the run's blob bodies, if it finished before `finished_before`
    /// and was not purged already (then nothing is recorded: a purge is
    /// idempotent).
    pub(super) fn purge_artifacts(
        &self,
        finished_before: Timestamp,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if !self.status.is_finished() {
            return Err(RunError::NotFinished(self.status.as_str()));
        }
        let mut d = Decision::new(self, stamp);
        if self.purged_at.is_some() {
            return Ok(d);
        }
        // A finished run always has `finished_at` (the event that ended it
        // sets it); its last change is the safe side if it ever had not.
        let finished_at = self.finished_at.unwrap_or(self.updated_at);
        if finished_at >= finished_before {
            return Err(RunError::FinishedLater {
                finished_at: finished_at.to_rfc3339(),
                finished_before: finished_before.to_rfc3339(),
            });
        }
        let versions = self
            .artifacts
            .iter()
            .flat_map(|(name, artifact)| {
                artifact
                    .versions
                    .iter()
                    .filter_map(move |v| match &v.content {
                        ArtifactContent::Blob { sha256, size } => Some(PurgedVersion {
                            name: name.clone(),
                            version: v.version,
                            sha256: sha256.clone(),
                            size: *size,
                        }),
                        ArtifactContent::Inline(_) => None,
                    })
            })
            .collect();
        d.record(RunEvent::ArtifactsPurged {
            versions,
            finished_before,
            at: stamp.at,
        });
        Ok(d)
    }
}
