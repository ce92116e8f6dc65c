//! Run control: pause, resume, cancel and redirect, each taking effect at
//! the next safe checkpoint (nothing new is dispatched; the run settles once
//! no step runs).

use super::command::Stamp;
use super::decision::Decision;
use super::state::{Run, RunStatus};
use super::{RunError, RunEvent};
use crate::domain::ids::RunId;

impl Run {
    /// Asks the run to pause at its next safe checkpoint.
    pub(super) fn pause(&self, stamp: &Stamp) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        if self.status == RunStatus::Paused || self.pause_requested {
            return Err(RunError::AlreadyPaused);
        }
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::PauseRequested { at });
        d.settle(at);
        Ok(d)
    }

    /// Continues a paused run, or withdraws a pause not yet reached.
    pub(super) fn resume(&self, stamp: &Stamp) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        if self.status != RunStatus::Paused && !self.pause_requested {
            return Err(RunError::NotPaused);
        }
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::RunResumed { at });
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }

    /// Asks the run to cancel at its next safe checkpoint.
    pub(super) fn cancel(
        &self,
        reason: Option<String>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::CancelRequested {
            reason,
            grace_until: Some(at.plus_millis(stamp.policy.cancel_grace_ms)),
            at,
        });
        d.settle(at);
        Ok(d)
    }

    /// Cancels the run in favour of `new_run_id`, which continues its work with `instructions`.
    pub(super) fn redirect(
        &self,
        new_run_id: RunId,
        instructions: String,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        let mut d = Decision::new(self, stamp);
        let reason = format!("redirected to run {new_run_id}");
        d.record(RunEvent::RunRedirected {
            to: new_run_id,
            instructions,
            at,
        });
        d.record(RunEvent::CancelRequested {
            reason: Some(reason),
            grace_until: Some(at.plus_millis(stamp.policy.cancel_grace_ms)),
            at,
        });
        d.settle(at);
        Ok(d)
    }
}
