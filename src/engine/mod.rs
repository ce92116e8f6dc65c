//! The engine: actors that execute runs, and the services the API calls.
//!
//! - [`RunActor`]: one per live run (see its module).
//! - The run registry (in [`Engine`]): finds or spawns a run's actor, spread
//!   over a few arbiter threads; actors of finished runs passivate, so
//!   memory stays bounded however many runs exist. At start,
//!   [`Engine::recover`] re-activates every run that was running.
//! - Template commands: load, decide, commit, project.
//! - [`executor`]: the execution seam. The domain decides effects; the
//!   actor hands dispatches, stops and releases to the [`Executor`] of the
//!   step's agent, and every outcome comes back through one way in,
//!   [`Engine::report`]. The in-process executor (`local`) runs the
//!   built-in agents on threads of their own.
//! - [`agents`]: the agent trait, the registry and the built-ins.
//! - [`clock`]: the clock port (the wall clock, and a manual one for
//!   tests).
//! - [`hub`]: fans committed events out to WebSocket sessions.
//!
//! Depends on `domain` and on store handles. It tells the read models
//! where its commits went in the log through [`ReadModelFeed`] (wired in
//! `app`; the projections follow the log themselves). Never on `api`.

mod accounts;
pub mod agents;
mod cause;
pub mod clock;
pub mod executor;
pub mod hub;
mod local;
pub mod node;
mod remote;
mod run_actor;
mod workers;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix::{Actor, Addr, Arbiter, MailboxError};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::domain::ids::{
    AgentName, ArtifactName, LeaseToken, RunId, StepId, TemplateId, Timestamp, UserId,
};
use crate::domain::log::Position;
use crate::domain::prerequisites::{self, Import, LatestRun, Requires, Unmet};
use crate::domain::run::{
    Action, ArtifactContent, NewMessage, Policy, RetrySource, Run, RunCommand, RunError, RunEvent,
    StartRun,
};
use crate::domain::template::{Template, TemplateCommand, TemplateError};
use crate::projections::rfc3339;
use crate::store::{AggregateStore, BlobStore, Cluster, StoreError, TaskQueue};

pub use accounts::{random_bytes, token_digest, IssuedToken};
pub use agents::{
    Agent, AgentError, AgentKind, AgentLimits, AgentRegistry, AgentResult, CommentSink, CpuPool,
    ProgressSink, StepContext, StopSignal,
};
pub use cause::Cause;
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use executor::{Executor, Outcome, StepReport, INLINE_ARTIFACT_LIMIT};
pub use hub::{EventView, Hub, Live, Progress};
pub use node::NodeTasks;
pub use run_actor::{Committed, LeaseStatus, RunActor};

/// What [`Engine::purge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    /// `ArtifactsPurged` was recorded now (false: the run was purged
    /// before).
    pub recorded: bool,
    /// The blobs released.
    pub released: crate::store::Released,
}
pub use workers::{AgentView, ClaimedWork};

use local::LocalExecutor;
use remote::RemoteExecutor;

/// Most runs of dead nodes one takeover pass looks at.
const TAKEOVER_PAGE: i64 = 256;
/// Runs of dead nodes taken over at once.
const TAKEOVER_PARALLEL: usize = 16;

/// Commits not yet applied by the read models beyond which actors wait
/// for theirs.
const READ_MODEL_BACKLOG_LIMIT: usize = 512;

/// Where the read models learn of this process's commits. Implemented by
/// the projection follower (wired in `app`), which reads the log itself:
/// the engine only says where its commits went, so that readers can wait
/// for them (read-your-writes) and the follower wakes at once.
pub trait ReadModelFeed: Send + Sync {
    /// A commit of this process is in the log, its last event at
    /// `position`.
    fn committed(&self, position: Position);
    /// Resolves once the read models have applied the log up to
    /// `position` (or have given up waiting; the follower logs why).
    fn applied(&self, position: Position) -> BoxFuture<'static, ()>;
    /// Commits of this process that the read models have not applied yet.
    fn backlog(&self) -> usize;
    /// Resolves once every commit of this process so far is applied.
    fn barrier(&self) -> BoxFuture<'static, ()>;
}

/// Where the engine looks up a user's most recent run of a template, to
/// check a start's prerequisites (wired in `app` to the read models: run
/// summaries, run details and artifact versions, each by index; never a
/// scan of runs).
pub trait RunHistory: Send + Sync {
    /// `owner`'s most recent run of the newest live template named
    /// `template` (`owner` `None`: the runs that belong to nobody), with
    /// the current version and body of each of `artifacts` it holds.
    fn latest_run(
        &self,
        owner: Option<UserId>,
        template: String,
        artifacts: Vec<ArtifactName>,
    ) -> BoxFuture<'static, Result<Option<LatestRun>, String>>;
}

/// How this node asks the node that hosts a run to do what the HTTP API
/// cannot forward as it came: a worker's claim, made here, found a task of
/// a run another node hosts (wired in `app`; docs/adr/0007).
pub trait Peers: Send + Sync {
    /// Records the claim of `step` under `lease` by `worker` on the host at
    /// `address`. `Ok(None)`: nothing to record (the claim was already
    /// recorded); a refusal because the run moved on is an
    /// [`EngineError::Run`].
    fn record_claim(
        &self,
        address: String,
        claim: ClaimToRecord,
    ) -> futures::future::LocalBoxFuture<'static, Result<Option<Timestamp>, EngineError>>;
}

/// A claim to record on the run's host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimToRecord {
    /// The run.
    pub run: RunId,
    /// The step.
    pub step: StepId,
    /// The attempt's lease.
    pub lease: LeaseToken,
    /// The worker.
    pub worker: String,
}

/// Engine failures.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A template command was refused.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// A run command was refused.
    #[error(transparent)]
    Run(#[from] RunError),
    /// No template with that id.
    #[error("template '{0}' not found")]
    TemplateNotFound(TemplateId),
    /// Runs cannot start from an archived template.
    #[error("template '{0}' is archived")]
    TemplateArchived(TemplateId),
    /// Another writer changed the same aggregate first; retry.
    #[error("concurrent modification; retry the request")]
    Conflict,
    /// Storage failed.
    #[error("storage failure: {0}")]
    Store(StoreError),
    /// The run's actor could not be reached (shutting down, or it failed to
    /// load).
    #[error("run actor unavailable: {0}")]
    Unavailable(String),
    /// A worker's call under a lease that is no longer the attempt's (it
    /// expired, the step was dispatched again, the run was cancelled, the
    /// attempt is over).
    #[error("{0}")]
    LeaseLost(String),
    /// A worker's outputs do not satisfy the agent's output schema, or are
    /// not outputs.
    #[error("invalid outputs at '{field}': {reason}")]
    InvalidOutputs {
        /// Where (`outputs.summary`).
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// Another node hosts the run (docs/adr/0007): the API forwards the
    /// request there.
    #[error("run is hosted by node '{node}'")]
    HostedElsewhere {
        /// The host's id.
        node: String,
        /// Where its peers reach it (unknown when its row is gone).
        address: Option<String>,
    },
    /// This node lost the run to another while handling the command; the
    /// engine asks again (internal: callers see `HostedElsewhere`).
    #[error("the run moved to another node")]
    Moved,
    /// A user command was refused.
    #[error(transparent)]
    User(#[from] crate::domain::user::UserError),
    /// A worker asked for tasks of an agent no worker serves here.
    #[error("agent '{0}' is not a remote agent of this server")]
    NotRemoteAgent(String),
    /// A run's input does not satisfy its template's `input_schema`.
    #[error("the input does not match the template's input_schema at '{path}': {reason}")]
    InvalidInput {
        /// Where (`input.topic`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The template's prerequisites are not met for the starting user.
    #[error("{}", .0.iter().map(|u| u.message.as_str()).collect::<Vec<_>>().join("; "))]
    PrerequisitesNotMet(Vec<Unmet>),
    /// A worker holds as many claimed tasks as one may.
    #[error(
        "worker '{worker}' holds {held} claimed tasks, the most one worker may hold ({most}): \
         finish, fail or release one first"
    )]
    TooManyClaims {
        /// The worker id.
        worker: String,
        /// How many it holds.
        held: u64,
        /// The bound (`[limits] max_claims_per_worker`).
        most: u64,
    },
    /// A start's `Idempotency-Key` started another run request before.
    #[error(
        "Idempotency-Key '{key}' already started run {run_id} with another template, input or \
         auto_run: use a new key for a new run"
    )]
    StartKeyReused {
        /// The key.
        key: String,
        /// The run it started.
        run_id: RunId,
    },
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Self::Conflict,
            other => Self::Store(other),
        }
    }
}

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How long the actor of a finished run lingers before it stops.
    pub passivate_after: Duration,
    /// Arbiter threads the run actors are spread over.
    pub actor_threads: usize,
    /// Threads that run in-process agents (never the actors' or HTTP's).
    pub agent_threads: usize,
    /// How many pieces of agents' CPU-bound work (template rendering,
    /// scoring) run at once, each on a blocking thread.
    pub agent_cpu_threads: usize,
    /// The limits in-process agents run under.
    pub agent_limits: AgentLimits,
    /// Lease lengths, the cancel grace and the lease-expiry limit: the
    /// settings run decisions are made with.
    pub policy: Policy,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            passivate_after: Duration::from_secs(10),
            actor_threads: cores,
            agent_threads: cores.max(2),
            // One core is left to the actors, HTTP and the database.
            agent_cpu_threads: cores.saturating_sub(1).max(1),
            agent_limits: AgentLimits::default(),
            policy: Policy::default(),
        }
    }
}

/// What the engine is built from (wired by `app`).
pub struct EngineParts {
    /// The Run event store.
    pub runs: AggregateStore<Run>,
    /// The Template event store.
    pub templates: AggregateStore<Template>,
    /// The User event store.
    pub users: AggregateStore<crate::domain::user::User>,
    /// Artifact bodies.
    pub blobs: BlobStore,
    /// The queue remote workers claim tasks from.
    pub tasks: TaskQueue,
    /// The agents.
    pub agents: AgentRegistry,
    /// The read models, told where every commit went.
    pub read_models: Arc<dyn ReadModelFeed>,
    /// Tunables.
    pub config: EngineConfig,
    /// Where the engine gets the time.
    pub clock: SharedClock,
    /// The other nodes on this database (PostgreSQL; `None` on SQLite).
    pub cluster: Option<Cluster>,
    /// How to reach them for what is not forwarded over HTTP as it came.
    pub peers: Option<Arc<dyn Peers>>,
    /// Where starts look up the runs their prerequisites name.
    pub history: Arc<dyn RunHistory>,
}

pub(crate) struct EngineCtx {
    runs: AggregateStore<Run>,
    templates: AggregateStore<Template>,
    users: AggregateStore<crate::domain::user::User>,
    blobs: BlobStore,
    agents: AgentRegistry,
    read_models: Arc<dyn ReadModelFeed>,
    hub: Hub,
    config: EngineConfig,
    clock: SharedClock,
    cluster: Option<Cluster>,
    peers: Option<Arc<dyn Peers>>,
    history: Arc<dyn RunHistory>,
    /// How far this node's log tail has read other nodes' events.
    tail: Mutex<Position>,
    /// Runs the built-in agents.
    local: LocalExecutor,
    /// Queues the tasks of remote agents for workers.
    remote: RemoteExecutor,
    actors: Mutex<HashMap<RunId, Addr<RunActor>>>,
    /// Compiled `input_schema`s, by template and version.
    input_schemas: Mutex<HashMap<(TemplateId, u32), Arc<jsonschema::Validator>>>,
    arbiters: Vec<Arbiter>,
    next_arbiter: AtomicUsize,
}

impl EngineCtx {
    /// Tells the read models of a commit. The returned future resolves once
    /// they have applied it; callers that need read-your-writes (answers to
    /// clients) wait for it, internal turns do not unless the read models
    /// fall behind.
    fn project(&self, position: Position) -> BoxFuture<'static, ()> {
        self.read_models.committed(position);
        self.read_models.applied(position)
    }

    /// Whether internal turns should wait for their read-model writes, to
    /// keep the writer's queue short.
    fn read_models_behind(&self) -> bool {
        self.read_models.backlog() > READ_MODEL_BACKLOG_LIMIT
    }

    /// The executor that runs `agent`'s steps.
    pub(crate) fn executor_for(&self, agent: &AgentName) -> &dyn Executor {
        if self.agents.is_remote(agent) {
            &self.remote
        } else {
            &self.local
        }
    }

    pub(crate) fn forget_actor(&self, id: &RunId, addr: &Addr<RunActor>) {
        let mut actors = self.actors.lock().unwrap_or_else(|e| e.into_inner());
        if actors.get(id) == Some(addr) {
            actors.remove(id);
        }
    }
}

/// The engine handle the API and the CLI use. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<EngineCtx>,
}

/// How executors report what attempts did: a handle on the engine that
/// does not keep it alive.
#[derive(Clone)]
pub struct Reporter(Weak<EngineCtx>);

impl Reporter {
    /// See [`Engine::report`].
    pub async fn report(&self, run: &RunId, report: StepReport) -> Result<(), EngineError> {
        let ctx = self
            .0
            .upgrade()
            .ok_or_else(|| EngineError::Unavailable("the engine has stopped".into()))?;
        Engine { ctx }.report(run, report).await
    }

    /// Sends an attempt's ephemeral progress to the run's live subscribers.
    pub fn progress(&self, run: &RunId, step: &StepId, attempt: u32, text: String) {
        if let Some(ctx) = self.0.upgrade() {
            ctx.hub.progress(
                run,
                Progress {
                    run_id: run.to_string(),
                    step: step.to_string(),
                    attempt,
                    text,
                },
            );
        }
    }

    /// Reports without waiting for the answer (comments of in-process
    /// agents).
    pub fn report_later(&self, run: &RunId, report: StepReport) {
        if let Some(ctx) = self.0.upgrade() {
            Engine { ctx }
                .actor(run, false)
                .do_send(run_actor::Report(report));
        }
    }
}

/// The metadata every committed event carries: when it was recorded and
/// who caused it.
pub(crate) fn event_metadata(at: Timestamp, by: &Cause) -> HashMap<String, String> {
    HashMap::from([
        ("recorded_at".to_string(), rfc3339(at)),
        ("caused_by".to_string(), by.to_metadata()),
    ])
}

/// A fresh run id.
fn new_run_id() -> Result<RunId, EngineError> {
    RunId::parse(uuid::Uuid::new_v4().to_string())
        .map_err(|e| EngineError::Unavailable(e.to_string()))
}

/// The id of the run that `owner` starts with `Idempotency-Key: key`: the
/// same for the same owner and key, on every node and after any restart,
/// so the log itself remembers the key (a second start of that id is
/// refused by the aggregate). A UUID (version 8) from the SHA-256 of both.
pub fn keyed_run_id(owner: Option<&UserId>, key: &str) -> Result<RunId, EngineError> {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"runlog start\0");
    hash.update(owner.map_or("", |o| o.as_str()).as_bytes());
    hash.update(b"\0");
    hash.update(key.as_bytes());
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    RunId::parse(
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .to_string(),
    )
    .map_err(|e| EngineError::Unavailable(e.to_string()))
}

/// What a keyed start asks, to tell a repeat from a reuse of its key.
struct StartRequest<'a> {
    key: &'a str,
    template_id: &'a TemplateId,
    input: &'a Value,
    auto_run: bool,
}

/// What [`Engine::start_run`] did.
#[derive(Debug)]
pub enum Started {
    /// It started the run: the events it committed.
    New(Committed),
    /// The run was started before with the same `Idempotency-Key` and the
    /// same request: nothing was recorded.
    Replayed,
}

/// How a new run relates to an earlier one.
enum Link {
    None,
    RetryOf(RunId),
    RedirectedFrom(RunId, String),
}

/// A fresh random seed for lease tokens.
pub(crate) fn new_lease_seed() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Engine {
    /// Builds the engine; must run inside an actix system.
    pub fn new(parts: EngineParts) -> Self {
        let arbiters = (0..parts.config.actor_threads.max(1))
            .map(|_| Arbiter::new())
            .collect();
        let ctx = Arc::new_cyclic(|engine: &Weak<EngineCtx>| EngineCtx {
            local: LocalExecutor::new(
                parts.agents.clone(),
                parts.blobs.clone(),
                Reporter(engine.clone()),
                parts.config.agent_threads,
                parts.config.agent_cpu_threads,
                parts.config.agent_limits,
            ),
            remote: RemoteExecutor::new(
                parts.tasks,
                parts.blobs.clone(),
                Reporter(engine.clone()),
                parts.clock.clone(),
            ),
            runs: parts.runs,
            templates: parts.templates,
            users: parts.users,
            blobs: parts.blobs,
            agents: parts.agents,
            read_models: parts.read_models,
            hub: Hub::default(),
            config: parts.config,
            clock: parts.clock,
            cluster: parts.cluster,
            peers: parts.peers,
            history: parts.history,
            tail: Mutex::new(Position::START),
            actors: Mutex::new(HashMap::new()),
            input_schemas: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
        });
        Self { ctx }
    }

    /// The clock the engine reads.
    pub fn clock(&self) -> &SharedClock {
        &self.ctx.clock
    }

    /// Records what an attempt did, as its executor reports it: a
    /// completion, a failure, a stop, or a comment. Both in-process agents
    /// and remote workers come this way. A report under a lease that is no
    /// longer the step's current one is refused with
    /// [`RunError::StaleLease`] (or another refusal when the step or run
    /// moved on) and changes nothing.
    pub async fn report(&self, run: &RunId, report: StepReport) -> Result<(), EngineError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let addr = self.actor(run, false);
            match addr.send(run_actor::Report(report.clone())).await {
                Ok(Err(EngineError::Moved)) if tries < 3 => self.ctx.forget_actor(run, &addr),
                Ok(Err(e @ EngineError::HostedElsewhere { .. })) => {
                    self.ctx.forget_actor(run, &addr);
                    return Err(e);
                }
                Ok(result) => return result,
                Err(MailboxError::Closed) if tries < 3 => self.ctx.forget_actor(run, &addr),
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
    }

    /// The live hub.
    pub fn hub(&self) -> &Hub {
        &self.ctx.hub
    }

    /// The blob store (to resolve artifact bodies).
    pub fn blobs(&self) -> &BlobStore {
        &self.ctx.blobs
    }

    /// The actor of `id`, spawned (and loaded from the store unless `fresh`:
    /// a run id just made) if needed.
    fn actor(&self, id: &RunId, fresh: bool) -> Addr<RunActor> {
        let mut actors = self.ctx.actors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(addr) = actors.get(id).filter(|a| a.connected()) {
            return addr.clone();
        }
        let n = self.ctx.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.ctx.arbiters.len();
        let ctx = self.ctx.clone();
        let run_id = id.clone();
        let addr = RunActor::start_in_arbiter(&self.ctx.arbiters[n].handle(), move |_| {
            RunActor::new(run_id, ctx, fresh)
        });
        actors.insert(id.clone(), addr.clone());
        addr
    }

    /// Sends a command to a run's actor; if that actor was just stopping,
    /// spawns a new one and sends again.
    async fn execute(
        &self,
        id: &RunId,
        command: RunCommand,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let fresh = matches!(command, RunCommand::Start(_));
        let mut tries = 0;
        loop {
            tries += 1;
            let addr = self.actor(id, fresh && tries == 1);
            match addr
                .send(run_actor::Execute(command.clone(), by.clone()))
                .await
            {
                Ok(Err(EngineError::Moved)) if tries < 3 => self.ctx.forget_actor(id, &addr),
                Ok(Err(e @ EngineError::HostedElsewhere { .. })) => {
                    self.ctx.forget_actor(id, &addr);
                    return Err(e);
                }
                Ok(result) => return result,
                Err(MailboxError::Closed) if tries < 3 => {
                    self.ctx.forget_actor(id, &addr);
                }
                Err(e) => return Err(EngineError::Unavailable(e.to_string())),
            }
        }
    }

    /// Starts a run of the template's current version. Returns once the
    /// start is committed, with the events it committed (the start's read
    /// model can be folded from them; readers wait through
    /// [`Engine::settle_run`]).
    pub async fn start_run(
        &self,
        template_id: &TemplateId,
        input: Value,
        auto_run: bool,
        idempotency_key: Option<&str>,
        by: &Cause,
    ) -> Result<(RunId, Started), EngineError> {
        let Some(key) = idempotency_key else {
            let (id, committed) = self
                .start_new_run(new_run_id()?, template_id, input, auto_run, by)
                .await?;
            return Ok((id, Started::New(committed)));
        };
        let run_id = keyed_run_id(by.user(), key)?;
        let start = StartRequest {
            key,
            template_id,
            input: &input,
            auto_run,
        };
        if self.started_before(&run_id, &start).await? {
            return Ok((run_id, Started::Replayed));
        }
        match self
            .start_new_run(run_id.clone(), template_id, input.clone(), auto_run, by)
            .await
        {
            Ok((id, committed)) => Ok((id, Started::New(committed))),
            // The same key at the same moment, through another request (on
            // this node the aggregate refuses the second start; on another
            // the append conflicts).
            Err(EngineError::Run(RunError::AlreadyStarted) | EngineError::Conflict)
                if self.started_before(&run_id, &start).await? =>
            {
                Ok((run_id, Started::Replayed))
            }
            Err(e) => Err(e),
        }
    }

    /// The compiled `input_schema` of a template version.
    fn input_schema(
        &self,
        template_id: &TemplateId,
        version: u32,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, EngineError> {
        let key = (template_id.clone(), version);
        if let Some(found) = self
            .ctx
            .input_schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(found.clone());
        }
        // Checked when the template was created: a failure here is the
        // server's (a schema from an older build it no longer reads).
        let compiled = Arc::new(jsonschema::validator_for(schema).map_err(|e| {
            EngineError::Unavailable(format!("template '{template_id}' input_schema: {e}"))
        })?);
        self.ctx
            .input_schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, compiled.clone());
        Ok(compiled)
    }

    /// Whether `run_id` (a keyed start's) was started already by the same
    /// request; an error if by another one.
    async fn started_before(
        &self,
        run_id: &RunId,
        start: &StartRequest<'_>,
    ) -> Result<bool, EngineError> {
        let run = self.ctx.runs.load(run_id.as_str()).await?.state;
        if run.id.is_none() {
            return Ok(false);
        }
        // `auto_run` as the run started (it may have been switched since).
        let started_auto_run = if run.auto_run == start.auto_run {
            run.auto_run
        } else {
            self.ctx
                .runs
                .load_events(run_id.as_str())
                .await?
                .iter()
                .find_map(|e| match &e.payload {
                    RunEvent::RunStarted { auto_run, .. } => Some(*auto_run),
                    _ => None,
                })
                .unwrap_or(run.auto_run)
        };
        if run.template_id.as_ref() == Some(start.template_id)
            && &run.input == start.input
            && started_auto_run == start.auto_run
        {
            Ok(true)
        } else {
            Err(EngineError::StartKeyReused {
                key: start.key.to_string(),
                run_id: run_id.clone(),
            })
        }
    }

    async fn start_new_run(
        &self,
        run_id: RunId,
        template_id: &TemplateId,
        input: Value,
        auto_run: bool,
        by: &Cause,
    ) -> Result<(RunId, Committed), EngineError> {
        let template = self.ctx.templates.load(template_id.as_str()).await?.state;
        let Some(definition) = template.definition.clone() else {
            return Err(EngineError::TemplateNotFound(template_id.clone()));
        };
        if template.archived {
            return Err(EngineError::TemplateArchived(template_id.clone()));
        }
        if let Some(schema) = &definition.input_schema {
            let validator = self.input_schema(template_id, template.version, schema)?;
            if let Some(fault) = agents::input_fault(&validator, &input) {
                return Err(EngineError::InvalidInput {
                    path: fault.field,
                    reason: fault.reason,
                });
            }
        }
        let imports = self.imports(by.user(), &definition.requires).await?;
        let source = RetrySource {
            run_id,
            template_id: template_id.clone(),
            template_version: template.version,
            definition,
            input,
            auto_run,
            owner: by.user().cloned(),
            imports,
        };
        self.start(source, Link::None, by).await
    }

    /// Checks `requires` for `owner`: `Ok` with what a run would import
    /// when every requirement is met, else every requirement that is not.
    pub async fn check_prerequisites(
        &self,
        owner: Option<&UserId>,
        requires: &Requires,
    ) -> Result<Result<Vec<Import>, Vec<Unmet>>, EngineError> {
        let mut checked = self.check_prerequisites_of(owner, &[requires]).await?;
        Ok(checked.pop().unwrap_or(Ok(Vec::new())))
    }

    /// [`Engine::check_prerequisites`] for several templates at once (the
    /// availability list): the read models are settled once and each
    /// required template's most recent run is looked up once.
    pub async fn check_prerequisites_of(
        &self,
        owner: Option<&UserId>,
        all: &[&Requires],
    ) -> Result<Vec<Result<Vec<Import>, Vec<Unmet>>>, EngineError> {
        // Every artifact asked of each required template, by its name.
        let mut wanted: BTreeMap<&str, Vec<ArtifactName>> = BTreeMap::new();
        for requires in all {
            for template in requires.templates() {
                wanted.entry(template).or_default();
            }
            for artifact in &requires.artifacts {
                let list = wanted.entry(artifact.template.as_str()).or_default();
                if !list.contains(&artifact.artifact) {
                    list.push(artifact.artifact.clone());
                }
            }
        }
        let mut latest = BTreeMap::new();
        if !wanted.is_empty() {
            // The read models answer: once they hold what this node
            // committed and what its log tail has seen of other nodes.
            self.settle_all().await;
        }
        for (template, artifacts) in wanted {
            let found = self
                .ctx
                .history
                .latest_run(owner.cloned(), template.to_string(), artifacts)
                .await
                .map_err(EngineError::Unavailable)?;
            if let Some(run) = found {
                latest.insert(template.to_string(), run);
            }
        }
        Ok(all
            .iter()
            .map(|requires| prerequisites::evaluate(requires, &latest))
            .collect())
    }

    /// What a new run of `owner` imports, its prerequisites met; refused
    /// with every unmet requirement.
    async fn imports(
        &self,
        owner: Option<&UserId>,
        requires: &Requires,
    ) -> Result<Vec<Import>, EngineError> {
        self.check_prerequisites(owner, requires)
            .await?
            .map_err(EngineError::PrerequisitesNotMet)
    }

    /// Makes the imported blob bodies bodies of run `run_id` too (every
    /// start: new, retry, redirect), so that purging the run they came from
    /// leaves them to this one; a body purged already is an unmet
    /// requirement.
    async fn reference_imports(
        &self,
        run_id: &RunId,
        imports: &[Import],
    ) -> Result<(), EngineError> {
        for import in imports {
            if let ArtifactContent::Blob { sha256, .. } = &import.content {
                let Some(bytes) = self.ctx.blobs.get(sha256).await? else {
                    return Err(EngineError::PrerequisitesNotMet(vec![Unmet {
                        kind: "artifact",
                        template: import.template.clone(),
                        status: None,
                        artifact: Some(import.artifact.to_string()),
                        reason: "its body was purged by retention".into(),
                        run_id: Some(import.run_id.to_string()),
                        message: format!(
                            "Run the {} workflow again: the body of {} in run {} was purged",
                            import.template, import.artifact, import.run_id
                        ),
                    }]));
                };
                self.ctx.blobs.put(run_id.as_str(), &bytes).await?;
            }
        }
        Ok(())
    }

    /// Starts a new run that retries a failed or cancelled run: the same
    /// template version, definition and input, linked by `retry_of`.
    pub async fn retry_run(
        &self,
        original: &RunId,
        by: &Cause,
    ) -> Result<(RunId, Committed), EngineError> {
        let state = self.ctx.runs.load(original.as_str()).await?.state;
        let mut source = state.retry_source()?;
        let original = std::mem::replace(&mut source.run_id, new_run_id()?);
        self.start(source, Link::RetryOf(original), by).await
    }

    /// Starts a run from `source`, with `source.run_id` as its id.
    async fn start(
        &self,
        source: RetrySource,
        link: Link,
        by: &Cause,
    ) -> Result<(RunId, Committed), EngineError> {
        let run_id = source.run_id;
        self.reference_imports(&run_id, &source.imports).await?;
        let (retry_of, redirected_from) = match link {
            Link::None => (None, None),
            Link::RetryOf(original) => (Some(original), None),
            Link::RedirectedFrom(original, instructions) => (None, Some((original, instructions))),
        };
        let command = RunCommand::Start(StartRun {
            run_id: run_id.clone(),
            template_id: source.template_id,
            template_version: source.template_version,
            definition: source.definition,
            input: source.input,
            retry_of,
            redirected_from,
            auto_run: source.auto_run,
            owner: source.owner,
            imports: source.imports,
        });
        let committed = self.execute(&run_id, command, by).await?;
        Ok((run_id, committed))
    }

    /// Redirects a run: it is cancelled gracefully, and a new run of the same
    /// template version and input starts with `instructions` as the first
    /// instruction of its thread. Returns the new run's id.
    pub async fn redirect(
        &self,
        id: &RunId,
        instructions: String,
        by: &Cause,
    ) -> Result<RunId, EngineError> {
        let new_id = new_run_id()?;
        let command = RunCommand::Redirect {
            new_run_id: new_id.clone(),
            instructions,
        };
        // The run's actor starts the new run (an effect of RunRedirected)
        // before it answers.
        self.execute(id, command, by).await?;
        Ok(new_id)
    }

    /// Finishes a redirect that a crash cut off between its two commits:
    /// `from` records `RunRedirected { to, instructions }` but `to` was never
    /// started. Returns whether it started `to` (false: it exists).
    pub async fn repair_redirect(
        &self,
        from: &RunId,
        to: RunId,
        instructions: String,
    ) -> Result<bool, EngineError> {
        if self.ctx.runs.load(to.as_str()).await?.state.id.is_some() {
            return Ok(false);
        }
        tracing::warn!(run_id = %from, redirected_to = %to,
            "a redirect was cut off before its new run started; starting it now");
        self.start_redirect_target(from, None, to, instructions)
            .await?;
        Ok(true)
    }

    /// Starts `to`, the new run of a redirect of `from`, from `source` (the
    /// old run's template version, definition and input; loaded from the
    /// log when not given).
    pub(crate) async fn start_redirect_target(
        &self,
        from: &RunId,
        source: Option<RetrySource>,
        to: RunId,
        instructions: String,
    ) -> Result<(), EngineError> {
        let started = async {
            let source = match source {
                Some(source) => source,
                None => self
                    .ctx
                    .runs
                    .load(from.as_str())
                    .await?
                    .state
                    .source()
                    .ok_or(EngineError::Run(RunError::NotStarted))?,
            };
            let source = RetrySource {
                run_id: to.clone(),
                ..source
            };
            self.start(
                source,
                Link::RedirectedFrom(from.clone(), instructions),
                &Cause::Engine,
            )
            .await
        }
        .await;
        if let Err(e) = &started {
            // The old run already records the link; nothing starts the new
            // run later (see the README's status).
            tracing::error!(run_id = %from, redirected_to = %to, error = %e,
                "the run was redirected but its new run could not be started");
        }
        started.map(|_| ())
    }

    /// Posts a user's message to a run's thread. A control action takes
    /// effect as its endpoint would (a `redirect` also starts the new run);
    /// the committed events say what came of it. A repeated idempotency key
    /// commits nothing.
    pub async fn post_message(
        &self,
        id: &RunId,
        message: NewMessage,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let redirect_to = match message.action {
            Action::Redirect => Some(new_run_id()?),
            _ => None,
        };
        let command = RunCommand::PostMessage {
            message,
            redirect_to,
        };
        self.execute(id, command, by).await
    }

    /// Approves a step awaiting review (with a choice if it offers some).
    pub async fn approve(
        &self,
        id: &RunId,
        step: StepId,
        choice: Option<String>,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::Approve { step, choice };
        self.execute(id, command, by).await
    }

    /// Records a user's click on a button of an agent's message.
    pub async fn click(
        &self,
        id: &RunId,
        message: u32,
        button: String,
        idempotency_key: Option<String>,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::ClickButton {
            message,
            button,
            idempotency_key,
        };
        self.execute(id, command, by).await
    }

    /// Runs a step again (optionally with a new prompt); every step
    /// downstream of it goes back to pending.
    pub async fn retry_step(
        &self,
        id: &RunId,
        step: StepId,
        prompt_override: Option<String>,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::RetryStep {
            step,
            prompt_override,
        };
        self.execute(id, command, by).await
    }

    /// Dispatches a ready step now (manual mode).
    pub async fn trigger(
        &self,
        id: &RunId,
        step: StepId,
        prompt_override: Option<String>,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::TriggerStep {
            step,
            prompt_override,
        };
        self.execute(id, command, by).await
    }

    /// Switches manual mode.
    pub async fn set_auto_run(
        &self,
        id: &RunId,
        enabled: bool,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::SetAutoRun { enabled };
        self.execute(id, command, by).await
    }

    /// Moves `latest` of an artifact back to an earlier version; the steps
    /// downstream of its step run again.
    pub async fn rollback(
        &self,
        id: &RunId,
        name: ArtifactName,
        to_version: u32,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        let command = RunCommand::RollbackArtifact { name, to_version };
        self.execute(id, command, by).await
    }

    /// Gives back to the queue the tasks claimed more than `after` ago
    /// whose claim no run recorded (see `node.rs`), and wakes a waiting
    /// claim for each; returns how many.
    pub async fn requeue_unrecorded_claims(&self, after: Duration) -> usize {
        let remote = &self.ctx.remote;
        let before = self.ctx.clock.now().0 - i64::try_from(after.as_millis()).unwrap_or(0);
        let stale = match remote.queue.unrecorded_claims(before).await {
            Ok(stale) => stale,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for claims nobody recorded");
                return 0;
            }
        };
        let mut requeued = 0;
        for (task_id, agent) in stale {
            match remote.queue.unclaim(&task_id).await {
                Ok(()) => {
                    requeued += 1;
                    remote.signal(&agent).notify_one();
                    tracing::warn!(%task_id, %agent,
                        "a claim no run recorded (the node that took it stopped): the task is back in the queue");
                }
                Err(e) => {
                    tracing::warn!(%task_id, error = %e, "cannot give a task back to the queue")
                }
            }
        }
        requeued
    }

    /// Retention: purges the bodies of a finished run's artifacts if it
    /// finished before `finished_before` (recording `ArtifactsPurged`, once),
    /// then deletes the blobs no other run references. Idempotent: a purged
    /// run records nothing again, and its blobs are released again (what an
    /// interrupted purge left is freed; [`BlobStore::owed_releases`] lists
    /// the runs whose purge was cut short).
    pub async fn purge(
        &self,
        id: &RunId,
        finished_before: Timestamp,
        by: &Cause,
    ) -> Result<Purged, EngineError> {
        // Owed first: a purge cut short after its event (a crash, a database
        // error) is found and finished by the next `runlog purge`.
        let blobs = &self.ctx.blobs;
        blobs
            .owe_release(id.as_str(), self.ctx.clock.now().0)
            .await?;
        let committed = match self
            .execute(id, RunCommand::PurgeArtifacts { finished_before }, by)
            .await
        {
            Ok(committed) => committed,
            Err(refused @ EngineError::Run(_)) => {
                blobs.forgive_release(id.as_str()).await?;
                return Err(refused);
            }
            Err(e) => return Err(e),
        };
        let released = blobs.release_run(id.as_str()).await?;
        Ok(Purged {
            recorded: !committed.is_empty(),
            released,
        })
    }

    /// Asks a run to pause at its next safe checkpoint: nothing new is
    /// dispatched, and the run is `paused` once no step runs.
    pub async fn pause(&self, id: &RunId, by: &Cause) -> Result<Committed, EngineError> {
        self.execute(id, RunCommand::Pause, by).await
    }

    /// Resumes a paused (or pausing) run.
    pub async fn resume(&self, id: &RunId, by: &Cause) -> Result<Committed, EngineError> {
        self.execute(id, RunCommand::Resume, by).await
    }

    /// Cancels a run gracefully: nothing new is dispatched, and the run is
    /// `cancelled` once no step runs.
    pub async fn cancel(
        &self,
        id: &RunId,
        reason: Option<String>,
        by: &Cause,
    ) -> Result<Committed, EngineError> {
        self.execute(id, RunCommand::Cancel { reason }, by).await
    }

    /// Waits until the read models hold every event of `id` committed so
    /// far (read-your-writes for a reader of one run). A run without a live
    /// actor here has nothing in flight here; with other nodes, the read
    /// models are waited for up to what this node has seen of their events
    /// (so a read after a WebSocket event from another node shows it).
    pub async fn settle_run(&self, id: &RunId) {
        let addr = {
            let actors = self.ctx.actors.lock().unwrap_or_else(|e| e.into_inner());
            actors.get(id).filter(|a| a.connected()).cloned()
        };
        match addr {
            Some(addr) => {
                let _ = addr.send(run_actor::Settle).await;
            }
            None => self.settle_tail().await,
        }
    }

    /// The log tail has read other nodes' events up to `position`.
    pub(crate) fn tail_read(&self, position: Position) {
        let mut tail = self.ctx.tail.lock().unwrap_or_else(|e| e.into_inner());
        if position > *tail {
            *tail = position;
        }
    }

    /// Waits until the read models hold every run event committed so far
    /// (read-your-writes for list readers).
    pub async fn settle_all(&self) {
        self.ctx.read_models.barrier().await;
        self.settle_tail().await;
    }

    /// With other nodes: waits until the read models hold what this node's
    /// log tail has seen of their events.
    async fn settle_tail(&self) {
        let seen = *self.ctx.tail.lock().unwrap_or_else(|e| e.into_inner());
        if seen > Position::START {
            self.ctx.read_models.applied(seen).await;
        }
    }

    /// Re-activates runs after a restart: each re-dispatches the steps whose
    /// attempts died with the old process and resumes its timers. Returns how
    /// many runs were recovered. With many nodes, a run a live node hosts
    /// is left to it, and a run is recovered only when it is taken from a
    /// host that is gone (this node's earlier process included).
    pub async fn recover(&self, run_ids: Vec<String>) -> usize {
        let mut recovered = 0;
        for id in run_ids {
            let Ok(run_id) = RunId::parse(id) else {
                continue;
            };
            if self.ctx.cluster.is_some() {
                if self.activate(&run_id).await {
                    recovered += 1;
                }
                continue;
            }
            let command = RunCommand::Recover;
            match self.execute(&run_id, command, &Cause::Engine).await {
                Ok(_) => recovered += 1,
                Err(EngineError::Run(RunError::Finished(_))) => {}
                Err(e) => tracing::error!(%run_id, error = %e, "cannot recover run"),
            }
        }
        recovered
    }

    /// Brings a run's actor up on this node unless a live node hosts it
    /// (taking it from a dead host recovers it). Returns whether the run is
    /// active here.
    pub async fn activate(&self, id: &RunId) -> bool {
        let mut tries = 0;
        loop {
            tries += 1;
            let addr = self.actor(id, false);
            match addr.send(run_actor::Activate).await {
                Ok(Ok(active)) => return active,
                Ok(Err(EngineError::HostedElsewhere { .. })) => {
                    self.ctx.forget_actor(id, &addr);
                    return false;
                }
                Ok(Err(EngineError::Moved)) | Err(MailboxError::Closed) if tries < 3 => {
                    self.ctx.forget_actor(id, &addr);
                }
                Ok(Err(e)) => {
                    tracing::error!(run_id = %id, error = %e, "cannot activate run");
                    return false;
                }
                Err(e) => {
                    tracing::error!(run_id = %id, error = %e, "cannot activate run");
                    return false;
                }
            }
        }
    }

    /// Takes over the runs of dead nodes, a page at a time; returns how
    /// many became active here (PostgreSQL; nothing to do on SQLite).
    pub async fn take_over_orphans(&self) -> usize {
        let Some(cluster) = self.ctx.cluster.clone() else {
            return 0;
        };
        let orphans = match cluster.orphaned(TAKEOVER_PAGE).await {
            Ok(orphans) => orphans,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for the runs of dead nodes");
                return 0;
            }
        };
        use futures::StreamExt;
        let taken =
            futures::stream::iter(orphans.into_iter().filter_map(|id| RunId::parse(id).ok()))
                .map(|run_id| async move { self.activate(&run_id).await })
                .buffer_unordered(TAKEOVER_PARALLEL)
                .filter(|active| std::future::ready(*active))
                .count()
                .await;
        if taken > 0 {
            tracing::info!(runs = taken, "took over the runs of a node that is gone");
        }
        taken
    }

    /// This node's handle on the cluster (PostgreSQL).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.ctx.cluster.as_ref()
    }

    /// Stops the actors of every run held here (this node may have lost
    /// them: its heartbeats failed); the next message for one takes the run
    /// again, here or on the node that took it. Returns their ids.
    pub fn give_up_runs(&self) -> Vec<RunId> {
        let actors: Vec<(RunId, Addr<RunActor>)> = {
            let actors = self.ctx.actors.lock().unwrap_or_else(|e| e.into_inner());
            actors
                .iter()
                .map(|(id, a)| (id.clone(), a.clone()))
                .collect()
        };
        for (_, addr) in &actors {
            addr.do_send(run_actor::GiveUp);
        }
        actors.into_iter().map(|(id, _)| id).collect()
    }

    /// How many runs have a live actor on this node.
    pub fn live_runs(&self) -> usize {
        let actors = self.ctx.actors.lock().unwrap_or_else(|e| e.into_inner());
        actors.values().filter(|a| a.connected()).count()
    }

    /// Creates a template at version 1.
    pub async fn create_template(
        &self,
        name: String,
        description: Option<String>,
        definition: Value,
        by: &Cause,
    ) -> Result<TemplateId, EngineError> {
        let id = TemplateId::parse(uuid::Uuid::new_v4().to_string())
            .map_err(|e| EngineError::Unavailable(e.to_string()))?;
        let command = TemplateCommand::Create {
            id: id.clone(),
            name,
            description,
            definition,
            at: self.ctx.clock.now(),
        };
        self.template_command(&id, command, by).await?;
        Ok(id)
    }

    /// Revises a template: a new version with a new definition.
    pub async fn revise_template(
        &self,
        id: &TemplateId,
        definition: Value,
        description: Option<String>,
        by: &Cause,
    ) -> Result<(), EngineError> {
        let command = TemplateCommand::Revise {
            definition,
            description,
            at: self.ctx.clock.now(),
        };
        self.template_command(id, command, by).await
    }

    /// Archives a template.
    pub async fn archive_template(&self, id: &TemplateId, by: &Cause) -> Result<(), EngineError> {
        self.template_command(
            id,
            TemplateCommand::Archive {
                at: self.ctx.clock.now(),
            },
            by,
        )
        .await
    }

    async fn template_command(
        &self,
        id: &TemplateId,
        command: TemplateCommand,
        by: &Cause,
    ) -> Result<(), EngineError> {
        let loaded = self.ctx.templates.load(id.as_str()).await?;
        let events = match loaded.state.decide(command, &self.ctx.agents) {
            Err(TemplateError::NotFound) => return Err(EngineError::TemplateNotFound(id.clone())),
            other => other?,
        };
        self.record(&self.ctx.templates, id.as_str(), loaded, events, by)
            .await
    }

    /// Commits what a command to an aggregate other than a run decided
    /// (a template, a user), with who caused it, and waits until the read
    /// models hold it.
    async fn record<A: crate::store::Snapshotted + 'static>(
        &self,
        store: &AggregateStore<A>,
        id: &str,
        loaded: crate::store::Loaded<A>,
        events: Vec<A::Event>,
        by: &Cause,
    ) -> Result<(), EngineError> {
        let metadata = event_metadata(self.ctx.clock.now(), by);
        let (_, _, position) = store
            .commit(
                id,
                loaded.state,
                loaded.sequence,
                loaded.snapshot,
                events,
                metadata,
                None,
            )
            .await?;
        self.ctx.project(position).await;
        Ok(())
    }

    /// Waits until the task queue's background removals are committed.
    pub async fn flush_task_queue(&self) {
        self.ctx.remote.queue.flush().await;
    }

    /// Stops the engine after the HTTP server stopped: lets the read-model
    /// writer drain (up to `grace`), then stops the actor threads. Steps
    /// still running are re-dispatched at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.ctx.read_models.backlog() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.ctx.local.shutdown();
        for arbiter in &self.ctx.arbiters {
            arbiter.stop();
        }
    }
}
