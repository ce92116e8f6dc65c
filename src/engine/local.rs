//! The in-process executor: runs built-in agents on a pool of agent threads
//! of their own, never on the threads that serve actors and HTTP, and
//! reports each outcome through [`Engine::report`](super::Engine::report).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::Arbiter;
use tokio::sync::watch;

use super::agents::{
    AgentError, AgentLimits, AgentOutputs, AgentRegistry, CommentSink, CpuPool, ProgressSink,
    StepContext, StopSignal,
};
use super::executor::{resolve, store_outputs, Executor, Outcome, StepReport};
use super::{EngineError, Reporter};
use crate::domain::ids::{LeaseToken, RunId, StepId};
use crate::domain::run::{Failure, RunError, Task};
use crate::store::BlobStore;

/// Attempts at reporting one outcome when storage fails.
const REPORT_ATTEMPTS: u32 = 5;

/// An attempt, as the executor knows it.
type AttemptKey = (RunId, StepId, LeaseToken);

/// Threads that run agents' futures: each an actix arbiter (a thread with
/// its own single-threaded runtime), used in turn.
pub(crate) struct AgentPool {
    arbiters: Vec<Arbiter>,
    next: AtomicUsize,
}

impl AgentPool {
    /// A pool of `threads` agent threads (at least one).
    pub(crate) fn new(threads: usize) -> Self {
        Self {
            arbiters: (0..threads.max(1)).map(|_| Arbiter::new()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs the future `make` builds on one of the pool's threads (built
    /// there, so it need not be `Send`).
    fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.arbiters.len();
        self.arbiters[n].spawn_fn(move || {
            actix::spawn(make());
        });
    }

    /// Stops the threads.
    pub(crate) fn stop(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// The in-process executor.
pub(crate) struct LocalExecutor {
    agents: AgentRegistry,
    blobs: BlobStore,
    reporter: Reporter,
    pool: AgentPool,
    cpu: CpuPool,
    limits: AgentLimits,
    /// The stop signal of each running attempt.
    running: Arc<Mutex<HashMap<AttemptKey, watch::Sender<bool>>>>,
}

impl LocalExecutor {
    pub(crate) fn new(
        agents: AgentRegistry,
        blobs: BlobStore,
        reporter: Reporter,
        threads: usize,
        cpu_threads: usize,
        limits: AgentLimits,
    ) -> Self {
        Self {
            agents,
            blobs,
            reporter,
            pool: AgentPool::new(threads),
            cpu: CpuPool::new(cpu_threads),
            limits,
            running: Arc::default(),
        }
    }

    /// Stops the agent threads (at shutdown).
    pub(crate) fn shutdown(&self) {
        self.pool.stop();
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<AttemptKey, watch::Sender<bool>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Executor for LocalExecutor {
    fn dispatch(&self, task: Task) {
        let key = (task.run_id.clone(), task.step.clone(), task.lease.clone());
        let (raise, stop) = StopSignal::channel();
        if task.stop_requested {
            let _ = raise.send(true);
        }
        self.running().insert(key.clone(), raise);
        let agent = self.agents.get(&task.agent);
        let blobs = self.blobs.clone();
        let reporter = self.reporter.clone();
        let running = self.running.clone();
        let (cpu, limits) = (self.cpu.clone(), self.limits);
        self.pool.spawn(move || async move {
            let comments = {
                let (reporter, run, step, lease) = (
                    reporter.clone(),
                    task.run_id.clone(),
                    task.step.clone(),
                    task.lease.clone(),
                );
                CommentSink::new(move |text| {
                    reporter.report_later(
                        &run,
                        StepReport {
                            step: step.clone(),
                            lease: lease.clone(),
                            outcome: Outcome::Comment(text),
                            notes: Vec::new(),
                        },
                    );
                })
            };
            let progress = {
                let (reporter, run, step, attempt) = (
                    reporter.clone(),
                    task.run_id.clone(),
                    task.step.clone(),
                    task.attempt,
                );
                ProgressSink::new(move |text| reporter.progress(&run, &step, attempt, text))
            };
            let result = async {
                let agent = agent.ok_or_else(|| {
                    format!("agent '{}' is not available on this server", task.agent)
                })?;
                let resolved = resolve(&blobs, &task).await?;
                let outputs = agent.run(StepContext {
                    run_id: task.run_id.clone(),
                    step: task.step.clone(),
                    attempt: task.attempt,
                    prompt: task.prompt.clone(),
                    prompt_override: task.prompt_override.clone(),
                    instructions: task.instructions.clone(),
                    config: task.config.clone(),
                    input: resolved.input,
                    run_input: task.run_input.clone(),
                    upstream: resolved.upstream,
                    stop,
                    comments,
                    cpu,
                    limits,
                    budgets: task.budgets.clone(),
                    progress,
                });
                // The time limit: an attempt that takes longer fails (and
                // may be retried); its future is dropped, which ends it.
                let outputs = tokio::time::timeout(limits.timeout, outputs)
                    .await
                    .map_err(|_| {
                        format!(
                            "agent '{}' took longer than its time limit ({} s)",
                            task.agent,
                            limits.timeout.as_secs()
                        )
                    })??;
                check_output_size(&outputs.outputs, limits.max_output_bytes)?;
                let (usage, message) = (outputs.usage, outputs.message);
                Ok::<_, AgentError>((
                    store_outputs(&blobs, task.run_id.as_str(), outputs.outputs).await?,
                    usage,
                    message,
                ))
            }
            .await;
            let outcome = match result {
                Ok((outputs, usage, message)) => Outcome::Completed(outputs, usage, message),
                Err(error) => error.failure().map_or(Outcome::Stopped, Outcome::Failed),
            };
            let report = StepReport {
                step: task.step.clone(),
                lease: task.lease.clone(),
                outcome,
                notes: Vec::new(),
            };
            report_with_retries(&reporter, &task.run_id, report).await;
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        });
    }

    fn stop(&self, run: &RunId, step: &StepId, lease: &LeaseToken) {
        if let Some(raise) = self
            .running()
            .get(&(run.clone(), step.clone(), lease.clone()))
        {
            let _ = raise.send(true);
        }
    }

    fn release(&self, run: &RunId, step: &StepId, lease: &LeaseToken) {
        self.running()
            .remove(&(run.clone(), step.clone(), lease.clone()));
    }
}

/// Fails an attempt whose outputs are larger than `max` bytes as JSON.
fn check_output_size(outputs: &AgentOutputs, max: usize) -> Result<(), String> {
    let size: usize = outputs
        .iter()
        .map(|(name, value)| name.len() + serde_json::to_vec(value).map_or(0, |v| v.len()))
        .sum();
    if size > max {
        return Err(format!(
            "the agent returned {size} bytes of outputs; the limit is {max} bytes"
        ));
    }
    Ok(())
}

/// Reports an outcome, retrying while storage fails. A refusal (the lease
/// is no longer current) is final: the lease check did its job.
async fn report_with_retries(reporter: &Reporter, run: &RunId, report: StepReport) {
    for attempt in 0..REPORT_ATTEMPTS {
        match reporter.report(run, report.clone()).await {
            Ok(()) => return,
            // An agent's message the run cannot post fails the attempt
            // (another attempt would return the same).
            Err(EngineError::Run(RunError::InvalidMessage { reason, .. })) => {
                let failed = StepReport {
                    outcome: Outcome::Failed(Failure {
                        error: format!("the agent's message is refused: {reason}"),
                        retryable: false,
                        retry_after_ms: None,
                    }),
                    notes: Vec::new(),
                    ..report.clone()
                };
                return Box::pin(report_with_retries(reporter, run, failed)).await;
            }
            Err(EngineError::Run(refused)) => {
                tracing::debug!(run_id = %run, step = %report.step, %refused, "agent result refused");
                return;
            }
            Err(e) if attempt + 1 < REPORT_ATTEMPTS => {
                tracing::warn!(run_id = %run, step = %report.step, error = %e,
                    "recording agent result failed; retrying");
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(run_id = %run, step = %report.step, error = %e,
                    "recording agent result failed for good; the step is re-dispatched at the next recovery");
            }
        }
    }
}
