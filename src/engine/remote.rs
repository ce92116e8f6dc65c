//! The remote executor: attempts of agents that workers serve wait in the
//! task queue until a worker claims them over HTTP. A claim is a claim
//! once the run records `StepClaimed`; heartbeats, results and releases
//! come back through the engine under the attempt's lease.
//!
//! Dispatch queues the task (its inputs resolved) and wakes the claims
//! waiting for its agent; a stop withdraws a task no worker claimed yet (it
//! is reported as stopped, so a pausing or cancelling run settles); a
//! release forgets the task.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::sync::Notify;

use super::clock::SharedClock;
use super::executor::{resolve, Executor, Outcome, StepReport};
use super::Reporter;
use crate::domain::ids::{LeaseToken, RunId, StepId, Timestamp};
use crate::domain::run::Task;
use crate::store::{BlobStore, NewTask, TaskQueue, TaskRef};

/// Tasks claimed through this server, by task id and by lease.
#[derive(Debug, Default)]
struct Claimed {
    by_task: HashMap<String, TaskRef>,
    by_lease: HashMap<String, String>,
}

/// How long a worker counts as serving an agent after it last asked for its
/// tasks.
pub const WORKER_SEEN_MS: i64 = 60_000;

/// The remote executor.
pub(crate) struct RemoteExecutor {
    pub(crate) queue: TaskQueue,
    blobs: BlobStore,
    reporter: Reporter,
    clock: SharedClock,
    /// One signal per remote agent: each task queued wakes one claim
    /// waiting for its agent (not every waiting claim).
    signals: Mutex<HashMap<String, Arc<Notify>>>,
    /// When each worker last asked for each agent's tasks.
    seen: Mutex<HashMap<String, BTreeMap<String, Timestamp>>>,
    /// Tasks claimed through this server and not over yet: the worker's
    /// calls find their run and step here without a query (after a
    /// restart, the queue table answers).
    claimed: Mutex<Claimed>,
    /// Tasks being queued (their insert not committed yet), by lease, and
    /// what was asked of them meanwhile.
    queuing: Arc<Mutex<HashMap<String, Asked>>>,
    /// Claims of one worker take their task one at a time on this node (a
    /// worker's stripe, by its id), so that the bound on what one worker
    /// holds holds for its concurrent claims on this node (claims of one
    /// worker on several nodes are checked only by the claim's statement,
    /// which does not see another node's claim in flight).
    claiming: [tokio::sync::Mutex<()>; CLAIM_STRIPES],
}

/// How many locks the claims of different workers spread over.
const CLAIM_STRIPES: usize = 64;

/// What was asked of a task while it was being queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Nothing,
    Stop,
    Release,
}

impl RemoteExecutor {
    pub(crate) fn new(
        queue: TaskQueue,
        blobs: BlobStore,
        reporter: Reporter,
        clock: SharedClock,
    ) -> Self {
        Self {
            queue,
            blobs,
            reporter,
            clock,
            signals: Mutex::default(),
            seen: Mutex::new(HashMap::new()),
            claimed: Mutex::default(),
            queuing: Arc::default(),
            claiming: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }

    /// The lock that one claim statement of `worker` holds on this node.
    pub(crate) fn claiming(&self, worker: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(worker);
        &self.claiming[(hash % CLAIM_STRIPES as u64) as usize]
    }

    /// Notes that `worker` asked for tasks of `agents`.
    pub(crate) fn saw(&self, worker: &str, agents: &[String]) {
        let now = self.clock.now();
        let mut seen = lock(&self.seen);
        for agent in agents {
            let workers = seen.entry(agent.clone()).or_default();
            workers.insert(worker.to_string(), now);
            workers.retain(|_, at| now.0 - at.0 <= WORKER_SEEN_MS);
        }
    }

    /// The signal of `agent`'s queued tasks (a declared remote agent).
    pub(crate) fn signal(&self, agent: &str) -> Arc<Notify> {
        lock(&self.signals)
            .entry(agent.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// Remembers a task claimed through this server.
    pub(crate) fn remember_claim(&self, task: TaskRef) {
        let mut claimed = lock(&self.claimed);
        claimed
            .by_lease
            .insert(task.lease.clone(), task.task_id.clone());
        claimed.by_task.insert(task.task_id.clone(), task);
    }

    /// A task claimed through this server, if it is not over.
    pub(crate) fn claimed(&self, task_id: &str) -> Option<TaskRef> {
        lock(&self.claimed).by_task.get(task_id).cloned()
    }

    /// Forgets the claim of a task (its lease was found lost).
    pub(crate) fn forget_claim(&self, task_id: &str) {
        let mut claimed = lock(&self.claimed);
        if let Some(task) = claimed.by_task.remove(task_id) {
            claimed.by_lease.remove(&task.lease);
        }
    }

    /// Forgets the task of `lease`: the row, and the claim if remembered.
    pub(crate) fn forget(&self, lease: &str) {
        {
            let mut claimed = lock(&self.claimed);
            if let Some(task_id) = claimed.by_lease.remove(lease) {
                claimed.by_task.remove(&task_id);
            }
        }
        self.queue.remove(lease);
    }

    /// How many workers asked for `agent`'s tasks in the last minute.
    pub(crate) fn workers_of(&self, agent: &str) -> usize {
        let now = self.clock.now();
        let seen = lock(&self.seen);
        seen.get(agent).map_or(0, |workers| {
            workers
                .values()
                .filter(|at| now.0 - at.0 <= WORKER_SEEN_MS)
                .count()
        })
    }
}

/// What a worker receives for a task (the lease and its expiry are added at
/// the claim).
fn payload(task: &Task, task_id: &str, inputs: Value) -> Value {
    json!({
        "task_id": task_id,
        "run_id": task.run_id,
        "step": task.step,
        "attempt": task.attempt,
        "agent": task.agent,
        "config": task.config,
        "prompt": task.prompt,
        "prompt_override": task.prompt_override,
        "instructions": task.instructions,
        "inputs": inputs,
    })
}

impl Executor for RemoteExecutor {
    fn dispatch(&self, task: Task) {
        let (queue, blobs, reporter, now) = (
            self.queue.clone(),
            self.blobs.clone(),
            self.reporter.clone(),
            self.clock.now(),
        );
        let queued = self.signal(task.agent.as_str());
        let queuing = self.queuing.clone();
        lock(&queuing).insert(task.lease.to_string(), Asked::Nothing);
        tokio::spawn(async move {
            let task_id = uuid::Uuid::new_v4().simple().to_string();
            let outcome = async {
                let resolved = resolve(&blobs, &task).await?;
                let new = NewTask {
                    payload: payload(&task, &task_id, resolved.input),
                    task_id: task_id.clone(),
                    lease: task.lease.to_string(),
                    run_id: task.run_id.to_string(),
                    step: task.step.to_string(),
                    attempt: task.attempt,
                    agent: task.agent.to_string(),
                    queued_at: now.0,
                };
                queue.enqueue(new).await.map_err(|e| e.to_string())
            }
            .await;
            let asked = lock(&queuing)
                .remove(task.lease.as_str())
                .unwrap_or(Asked::Nothing);
            match outcome {
                Ok(()) if asked == Asked::Release => queue.remove(task.lease.as_str()),
                Ok(()) if asked == Asked::Stop => {
                    withdraw(&queue, &reporter, &task.run_id, &task.step, &task.lease).await;
                }
                // One waiting claim of the agent wakes (or, if none waits,
                // the next one to wait does at once).
                Ok(()) => queued.notify_one(),
                Err(error) => {
                    // The attempt cannot reach a worker: fail it (the retry
                    // policy decides whether it runs again).
                    tracing::error!(run_id = %task.run_id, step = %task.step, %error,
                        "cannot queue the task of a remote step");
                    let report = StepReport {
                        step: task.step.clone(),
                        lease: task.lease.clone(),
                        outcome: Outcome::Failed(crate::domain::run::Failure::retryable(format!(
                            "the task could not be queued for a worker: {error}"
                        ))),
                        notes: Vec::new(),
                    };
                    let _ = reporter.report(&task.run_id, report).await;
                }
            }
        });
    }

    fn stop(&self, run: &RunId, step: &StepId, lease: &LeaseToken) {
        // A task no worker claimed is withdrawn: it never started, so the run
        // need not wait for it. A claimed one hears of the stop through its
        // heartbeat. A task still being queued is withdrawn once it is.
        if let Some(asked) = lock(&self.queuing).get_mut(lease.as_str()) {
            *asked = Asked::Stop;
            return;
        }
        let (queue, reporter) = (self.queue.clone(), self.reporter.clone());
        let (run, step, lease) = (run.clone(), step.clone(), lease.clone());
        tokio::spawn(async move { withdraw(&queue, &reporter, &run, &step, &lease).await });
    }

    fn release(&self, _run: &RunId, _step: &StepId, lease: &LeaseToken) {
        if let Some(asked) = lock(&self.queuing).get_mut(lease.as_str()) {
            *asked = Asked::Release;
            return;
        }
        self.forget(lease.as_str());
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Withdraws the task of `lease` if no worker claimed it, and reports the
/// attempt as stopped.
async fn withdraw(
    queue: &TaskQueue,
    reporter: &Reporter,
    run: &RunId,
    step: &StepId,
    lease: &LeaseToken,
) {
    match queue.withdraw(lease.as_str()).await {
        Ok(true) => {
            let report = StepReport {
                step: step.clone(),
                lease: lease.clone(),
                outcome: Outcome::Stopped,
                notes: Vec::new(),
            };
            let _ = reporter.report(run, report).await;
        }
        Ok(false) => {}
        Err(e) => tracing::warn!(run_id = %run, %step, error = %e, "cannot withdraw a queued task"),
    }
}
