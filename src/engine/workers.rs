//! What remote workers do, as engine calls: claim a task (long-polling),
//! heartbeat, complete, fail, comment, release. Every call but the claim
//! names its task and presents its lease token; a token that is not the
//! attempt's current one is [`EngineError::LeaseLost`] and changes nothing.
//! Results go through [`Engine::report`], the way in-process agents report.

use std::time::Duration;

use serde_json::Value;

use super::agents::{AgentInfo, AgentKind};
use super::executor::{store_outputs, Outcome, StepReport};
use super::run_actor::{self, LeaseStatus};
use super::{ClaimToRecord, Engine, EngineError};
use crate::domain::ids::{AgentName, LeaseToken, RunId, StepId, Timestamp};
use crate::domain::run::{Failure, RunCommand, RunError, RunEvent};
use crate::store::TaskRef;

/// A task a worker claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedWork {
    /// The task's id.
    pub task_id: String,
    /// The lease token every later call presents.
    pub lease: LeaseToken,
    /// When the lease expires unless a heartbeat extends it.
    pub lease_expires_at: Timestamp,
    /// The task as the worker gets it (run, step, attempt, agent, config,
    /// prompt, prompt override, instructions, inputs).
    pub payload: Value,
}

/// An agent with what `GET /api/agents` says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentView {
    /// The agent.
    pub info: AgentInfo,
    /// For a remote agent: workers that asked for its tasks in the last
    /// minute.
    pub workers: Option<usize>,
}

/// The task's lease no longer holds.
fn lost(task_id: &str) -> EngineError {
    EngineError::LeaseLost(format!(
        "task '{task_id}' is not held under this lease: the attempt is over (it completed, \
         failed, expired, was given back, was dispatched again or its run ended) or the task \
         was never claimed with it"
    ))
}

/// A refusal of the run's actor, for a worker: a stale or finished attempt
/// is a lost lease; anything else stays what it is.
fn refused_as_lost(task_id: &str, error: EngineError) -> EngineError {
    match error {
        EngineError::Run(
            RunError::StaleLease(_)
            | RunError::StepNotRunning(_)
            | RunError::Finished(_)
            | RunError::NotClaimed(_)
            | RunError::AlreadyClaimed(_)
            | RunError::UnknownStep(_)
            | RunError::NotStarted,
        ) => lost(task_id),
        other => other,
    }
}

/// The parts of a task reference the engine works with.
fn parse(task: &TaskRef) -> Result<(RunId, StepId, LeaseToken), EngineError> {
    let run =
        RunId::parse(task.run_id.as_str()).map_err(|e| EngineError::Unavailable(e.to_string()))?;
    let step =
        StepId::parse(task.step.as_str()).map_err(|e| EngineError::Unavailable(e.to_string()))?;
    Ok((run, step, LeaseToken::new(task.lease.clone())))
}

impl Engine {
    /// Claims the oldest task of one of `agents` for `worker`, waiting up to
    /// `wait` for one to be dispatched. A claim is atomic (two workers never
    /// hold the same task) and recorded as `StepClaimed` before it is
    /// answered. `None`: nothing came in time.
    pub async fn claim(
        &self,
        worker: &str,
        agents: &[AgentName],
        wait: Duration,
        most_held: u64,
    ) -> Result<Option<ClaimedWork>, EngineError> {
        self.check_remote_agents(agents)?;
        let names: Vec<String> = agents.iter().map(ToString::to_string).collect();
        let remote = &self.ctx.remote;
        remote.saw(worker, &names);
        let deadline = tokio::time::Instant::now() + wait;
        let signals: Vec<_> = names.iter().map(|agent| remote.signal(agent)).collect();
        // Wakes one waiting claim of every agent of this claim but
        // `except`: this claim may have taken their wake-ups (a claim for
        // two agents can be woken by both and take one task).
        let hand_on = |except: Option<&str>| {
            for (name, signal) in names.iter().zip(&signals) {
                if except != Some(name.as_str()) {
                    signal.notify_one();
                }
            }
        };
        loop {
            // Registered before looking, so that a task queued between the
            // look and the wait still wakes this claim. Each queued task
            // wakes one claim: a wake-up that was never polled passes to the
            // next waiting claim when dropped, but one this claim has taken
            // (a stored permit taken by `enable`, or the wait that ended)
            // must be handed on by hand when the claim does not use it for
            // a task of that agent (see `hand_on`).
            let mut waits: Vec<_> = signals
                .iter()
                .map(|signal| {
                    let mut notified = Box::pin(signal.notified());
                    notified.as_mut().enable();
                    notified
                })
                .collect();
            loop {
                let task = match self.take_one(&names, worker, most_held).await {
                    Ok(Some(task)) => task,
                    Ok(None) => break,
                    Err(e) => {
                        hand_on(None);
                        return Err(e);
                    }
                };
                let run = RunId::parse(task.run_id.as_str())
                    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                let step = StepId::parse(task.step.as_str())
                    .map_err(|e| EngineError::Unavailable(e.to_string()))?;
                let lease = LeaseToken::new(task.lease.clone());
                let claim = ClaimToRecord {
                    run,
                    step,
                    lease: lease.clone(),
                    worker: worker.to_string(),
                };
                let recorded = match (self.record_claim(claim.clone()).await, &self.ctx.peers) {
                    // The run's host records it (docs/adr/0007).
                    (
                        Err(EngineError::HostedElsewhere {
                            address: Some(address),
                            ..
                        }),
                        Some(peers),
                    ) => peers.record_claim(address, claim).await,
                    (other, _) => other,
                };
                match recorded {
                    Ok(expires) => {
                        let Some(lease_expires_at) = expires else {
                            continue;
                        };
                        remote.remember_claim(TaskRef {
                            task_id: task.task_id.clone(),
                            lease: task.lease.clone(),
                            run_id: task.run_id.clone(),
                            step: task.step.clone(),
                            attempt: task.attempt,
                            agent: task.agent.clone(),
                            claimed_by: Some(worker.to_string()),
                        });
                        hand_on(Some(task.agent.as_str()));
                        return Ok(Some(ClaimedWork {
                            task_id: task.task_id,
                            lease,
                            lease_expires_at,
                            payload: task.payload,
                        }));
                    }
                    // The run moved on (the attempt is over, the run was
                    // cancelled): the row is stale; take the next.
                    Err(EngineError::Run(_)) => remote.queue.remove(&task.lease),
                    Err(e) => {
                        // Not recorded: the task goes back to the queue.
                        if let Err(undo) = remote.queue.unclaim(&task.task_id).await {
                            tracing::error!(task_id = %task.task_id, error = %undo,
                                "a claim that was not recorded could not be undone; the task \
                                 is re-dispatched at the next recovery");
                        }
                        // The task is back in the queue, and this claim's
                        // wake-ups are not used.
                        hand_on(None);
                        return Err(e);
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::select! {
                _ = futures::future::select_all(waits.iter_mut().map(|w| w.as_mut())) => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Records, on this node, that `claim.worker` holds the attempt of
    /// `claim.step` under `claim.lease`; returns until when (`None`: nothing
    /// was recorded). A run another node hosts answers
    /// [`EngineError::HostedElsewhere`].
    pub async fn record_claim(
        &self,
        claim: ClaimToRecord,
    ) -> Result<Option<Timestamp>, EngineError> {
        let by = super::Cause::Worker(claim.worker.clone());
        let command = RunCommand::ClaimStep {
            step: claim.step,
            lease: claim.lease,
            worker: claim.worker,
        };
        let committed = self.execute(&claim.run, command, &by).await?;
        Ok(committed.iter().find_map(|e| match &e.payload {
            RunEvent::StepClaimed {
                lease_expires_at, ..
            } => Some(*lease_expires_at),
            _ => None,
        }))
    }

    /// Takes the oldest queued task of `agents` for `worker`, unless it
    /// holds `most_held` claimed tasks already (refused). `None`: no task
    /// is queued. One worker's claims take their task one at a time on
    /// this node, so that a count that passed is still true when the
    /// claim's statement runs (the statement checks the bound again, for
    /// claims of the same worker on other nodes).
    async fn take_one(
        &self,
        agents: &[String],
        worker: &str,
        most_held: u64,
    ) -> Result<Option<crate::store::ClaimedTask>, EngineError> {
        let remote = &self.ctx.remote;
        let _taking = remote.claiming(worker).lock().await;
        self.check_claims_held(worker, most_held).await?;
        Ok(remote
            .queue
            .claim(agents, worker, self.ctx.clock.now().0, most_held)
            .await?)
    }

    /// Refuses a claim of a worker that holds `most` claimed tasks
    /// already (attempts not over: the rows of attempts that ended are
    /// removed first, as they are removed in the background).
    async fn check_claims_held(&self, worker: &str, most: u64) -> Result<(), EngineError> {
        let queue = &self.ctx.remote.queue;
        let mut held = queue.claimed_by(worker).await?;
        if held >= most {
            queue.flush().await;
            held = queue.claimed_by(worker).await?;
        }
        if held >= most {
            return Err(EngineError::TooManyClaims {
                worker: worker.to_string(),
                held,
                most,
            });
        }
        Ok(())
    }

    /// Refuses agents that are not declared remote agents (workers cannot
    /// claim their tasks).
    pub fn check_remote_agents(&self, agents: &[AgentName]) -> Result<(), EngineError> {
        match agents.iter().find(|a| !self.ctx.agents.is_remote(a)) {
            Some(unknown) => Err(EngineError::NotRemoteAgent(unknown.to_string())),
            None => Ok(()),
        }
    }

    /// [`refused_as_lost`], forgetting the claim of a lost task.
    fn refused_as_lost(&self, task_id: &str, error: EngineError) -> EngineError {
        let error = refused_as_lost(task_id, error);
        if matches!(error, EngineError::LeaseLost(_)) {
            self.ctx.remote.forget_claim(task_id);
        }
        error
    }

    /// The task `task_id` if `lease` is its lease.
    async fn held(&self, task_id: &str, lease: &str) -> Result<TaskRef, EngineError> {
        let known = match self.ctx.remote.claimed(task_id) {
            Some(task) => Some(task),
            None => self.ctx.remote.queue.get(task_id).await?,
        };
        match known {
            Some(task) if task.lease == lease && task.claimed_by.is_some() => Ok(task),
            _ => Err(lost(task_id)),
        }
    }

    /// A worker is still at work on `task_id`: extends the lease; says
    /// whether the run asked it to stop.
    pub async fn heartbeat(&self, task_id: &str, lease: &str) -> Result<LeaseStatus, EngineError> {
        let task = self.held(task_id, lease).await?;
        let (run, step, lease) = parse(&task)?;
        let mut tries = 0;
        loop {
            tries += 1;
            let addr = self.actor(&run, false);
            match addr
                .send(run_actor::Heartbeat {
                    step: step.clone(),
                    lease: lease.clone(),
                })
                .await
            {
                Ok(Err(EngineError::Moved)) if tries < 3 => self.ctx.forget_actor(&run, &addr),
                Ok(Err(e @ EngineError::HostedElsewhere { .. })) => {
                    self.ctx.forget_actor(&run, &addr);
                    return Err(e);
                }
                Ok(result) => {
                    return result.map_err(|e| self.refused_as_lost(task_id, e));
                }
                Err(actix::MailboxError::Closed) if tries < 3 => self.ctx.forget_actor(&run, &addr),
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
    }

    /// A worker finished `task_id` with `outputs` (a JSON object: each key
    /// an output). Checked against the agent's output schema first.
    pub async fn complete_task(
        &self,
        task_id: &str,
        lease: &str,
        outputs: Value,
        message: Option<crate::domain::run::AgentMessage>,
    ) -> Result<(), EngineError> {
        let task = self.held(task_id, lease).await?;
        let agent = AgentName::parse(task.agent.as_str())
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        self.ctx
            .agents
            .check_outputs(&agent, &outputs)
            .map_err(|fault| EngineError::InvalidOutputs {
                field: fault.field,
                reason: fault.reason,
            })?;
        let Value::Object(map) = outputs else {
            return Err(EngineError::InvalidOutputs {
                field: "outputs".into(),
                reason: "outputs must be a JSON object of output name to value".into(),
            });
        };
        let limit = self.ctx.config.agent_limits.max_output_bytes;
        let size = serde_json::to_vec(&map).map_or(0, |b| b.len());
        if size > limit {
            return Err(EngineError::InvalidOutputs {
                field: "outputs".into(),
                reason: format!("the outputs are {size} bytes; the limit is {limit} bytes"),
            });
        }
        let stored = store_outputs(&self.ctx.blobs, &task.run_id, map.into_iter().collect())
            .await
            .map_err(|reason| EngineError::InvalidOutputs {
                field: "outputs".into(),
                reason,
            })?;
        self.report_task(&task, Outcome::Completed(stored, None, message))
            .await
    }

    /// A worker failed `task_id`.
    pub async fn fail_task(
        &self,
        task_id: &str,
        lease: &str,
        failure: Failure,
    ) -> Result<(), EngineError> {
        let task = self.held(task_id, lease).await?;
        self.report_task(&task, Outcome::Failed(failure)).await
    }

    /// A worker posts a comment to the run's thread for `task_id`.
    pub async fn comment_task(
        &self,
        task_id: &str,
        lease: &str,
        text: String,
    ) -> Result<(), EngineError> {
        let task = self.held(task_id, lease).await?;
        self.report_task(&task, Outcome::Comment(text)).await
    }

    /// A worker gives `task_id` back: the step runs again as a new attempt.
    pub async fn release_task(&self, task_id: &str, lease: &str) -> Result<(), EngineError> {
        let task = self.held(task_id, lease).await?;
        self.report_task(&task, Outcome::Released).await
    }

    async fn report_task(&self, task: &TaskRef, outcome: Outcome) -> Result<(), EngineError> {
        let (run, step, lease) = parse(task)?;
        let report = StepReport {
            step,
            lease,
            outcome,
            notes: Vec::new(),
        };
        self.report(&run, report)
            .await
            .map_err(|e| self.refused_as_lost(&task.task_id, e))
    }

    /// The bounds definitions are held to on this server.
    pub fn definition_limits(&self) -> crate::domain::definition::DefinitionLimits {
        use crate::domain::definition::AgentCatalog;
        self.ctx.agents.limits()
    }

    /// Every agent, built-in and remote.
    pub fn agents(&self) -> Vec<AgentView> {
        self.ctx
            .agents
            .list()
            .into_iter()
            .map(|info| {
                let workers = (info.kind == AgentKind::Remote)
                    .then(|| self.ctx.remote.workers_of(&info.name));
                AgentView { info, workers }
            })
            .collect()
    }
}
