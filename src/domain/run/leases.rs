//! Remote attempts and the run's timers: a worker claims a dispatched
//! attempt, its heartbeats extend the lease, it may give the attempt back;
//! the tick expires leases whose time is up, revokes those a cancel's grace
//! no longer covers, and dispatches due retries.

use super::command::{Failure, Stamp};
use super::decision::Decision;
use super::state::{Run, StepState, StepStatus};
use super::thread::AgentNote;
use super::{RunError, RunEvent};
use crate::domain::ids::{LeaseToken, StepId, Timestamp};

impl Run {
    /// A remote worker claims a dispatched attempt.
    pub(super) fn claim_step(
        &self,
        step: StepId,
        lease: LeaseToken,
        worker: String,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        if self.steps[&step].claimed_by.is_some() {
            return Err(RunError::AlreadyClaimed(step));
        }
        let lease_expires_at = at.plus_millis(self.lease_ms(&step, stamp));
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::StepClaimed {
            step,
            attempt,
            worker,
            lease_expires_at,
            at,
        });
        Ok(d)
    }

    /// The worker of a claimed attempt is still at work. Its lease is
    /// extended to a full lease from now; the extension is recorded when it
    /// moves the expiry by at least a third of a lease (so a worker that
    /// heartbeats often writes no more than three events per lease).
    pub(super) fn heartbeat(
        &self,
        step: StepId,
        lease: LeaseToken,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        let state = &self.steps[&step];
        let Some(expires) = state.claimed_by.as_ref().and(state.lease_expires_at) else {
            return Err(RunError::NotClaimed(step));
        };
        let lease_ms = self.lease_ms(&step, stamp);
        let extended = at.plus_millis(lease_ms);
        let mut d = Decision::new(self, stamp);
        if extended.0 - expires.0 >= i64::try_from(lease_ms / 3).unwrap_or(i64::MAX) {
            d.record(RunEvent::StepHeartbeat {
                step,
                attempt,
                lease_expires_at: extended,
                at,
            });
        }
        Ok(d)
    }

    /// A worker gives a claimed attempt back: the step is ready again, and
    /// dispatched again when the run may dispatch.
    pub(super) fn release_step(
        &self,
        step: StepId,
        lease: LeaseToken,
        comments: Vec<AgentNote>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        let attempt = self.check_running_step(&step, &lease)?;
        if self.steps[&step].claimed_by.is_none() {
            return Err(RunError::NotClaimed(step));
        }
        let mut d = Decision::new(self, stamp);
        d.agent_comments(&step, comments);
        d.record(RunEvent::StepReleased { step, attempt, at });
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }

    /// The run's wake-up time came: expired leases end their attempts (the
    /// step runs again, or fails after too many expiries in a row), a
    /// cancel's grace that ran out revokes the leases still held, and ready
    /// steps whose retry time has come are dispatched.
    pub(super) fn tick(&self, stamp: &Stamp) -> Result<Decision, RunError> {
        let at = stamp.at;
        self.check_active()?;
        let mut d = Decision::new(self, stamp);
        let expired: Vec<(StepId, u32, String, u32)> = self
            .steps
            .iter()
            .filter(|(_, s)| s.status == StepStatus::Running)
            .filter(|(_, s)| s.lease_expires_at.is_some_and(|t| t <= at))
            .filter_map(|(id, s)| {
                let worker = s.claimed_by.clone()?;
                Some((id.clone(), s.attempt, worker, s.lease_expiries + 1))
            })
            .collect();
        for (step, attempt, worker, expiries) in expired {
            d.record(RunEvent::StepLeaseExpired {
                step: step.clone(),
                attempt,
                worker: worker.clone(),
                expiries,
                at,
            });
            if expiries >= stamp.policy.max_lease_expiries {
                let failure = Failure {
                    error: format!(
                        "the step's lease expired {expiries} times in a row \
                         (last held by worker '{worker}', which sent no heartbeat in time)"
                    ),
                    retryable: false,
                    retry_after_ms: None,
                };
                d.fail_attempt(&step, attempt, failure, at);
            }
        }
        if self.cancel_grace_until.is_some_and(|t| t <= at) {
            let running: Vec<(StepId, u32)> = d
                .state
                .steps
                .iter()
                .filter(|(_, s)| s.status == StepStatus::Running)
                .map(|(id, s)| (id.clone(), s.attempt))
                .collect();
            for (step, attempt) in running {
                d.record(RunEvent::StepLeaseRevoked { step, attempt, at });
            }
        }
        d.dispatch_due(at);
        d.settle(at);
        Ok(d)
    }

    /// How long a lease of `step` lasts: the step's own
    /// `heartbeat_timeout_ms`, else the engine's.
    fn lease_ms(&self, step: &StepId, stamp: &Stamp) -> u64 {
        self.definition
            .steps
            .get(step)
            .and_then(|def| def.heartbeat_timeout_ms)
            .unwrap_or(stamp.policy.lease_ms)
    }

    /// The earliest time a lease or a cancel's grace runs out, if any.
    pub(super) fn next_lease_deadline(&self) -> Option<Timestamp> {
        let running = || {
            self.steps
                .values()
                .filter(|s| s.status == StepStatus::Running)
        };
        let expiry = running()
            .filter(|s| s.claimed_by.is_some())
            .filter_map(|s: &StepState| s.lease_expires_at)
            .min();
        let grace = self
            .cancel_grace_until
            .filter(|_| self.cancel_requested.is_some() && running().next().is_some());
        expiry.into_iter().chain(grace).min()
    }
}
