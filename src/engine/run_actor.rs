//! `RunActor`: one actor per live run. Its mailbox serialises the run's
//! commands. Each turn decides events with the pure aggregate, commits them
//! (optimistic concurrency on the run's sequence), folds them into the
//! in-memory state, hands them to the read models and the live hub, then
//! carries out what they imply: run the agents of dispatched steps, wake up
//! for due retries, passivate once the run is over.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::fut::{ready, ActorFutureExt, WrapFuture};
use actix::{
    Actor, ActorContext, AsyncContext, AtomicResponse, Context, Handler, Message,
    ResponseActFuture, ResponseFuture, Running, SpawnHandle,
};
use cqrs_es::EventEnvelope;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::Value;

use super::agents::{AgentError, CommentSink, StepContext, StopSignal};
use super::{new_lease_seed, now, EngineCtx, EngineError};
use crate::domain::ids::{LeaseToken, OutputName, RunId, StepId};
use crate::domain::run::{
    AgentNote, ArtifactContent, InputValue, Outputs, Run, RunCommand, RunEvent, RunStatus, Stamp,
    StepInput,
};
use crate::projections::rfc3339;
use crate::store::{BlobStore, StoreError};

/// Artifact bodies larger than this (serialised) go to the blob store.
pub const INLINE_ARTIFACT_LIMIT: usize = 8 * 1024;
/// Attempts at recording one agent result when storage fails.
const RECORD_ATTEMPTS: u32 = 5;
/// How long an agent's comment may wait to be recorded with its attempt's
/// result (one commit instead of one per comment) before it is recorded on
/// its own, so that a long-running agent's comments still show promptly.
const NOTE_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// Events committed by one turn.
pub type Committed = Vec<EventEnvelope<Run>>;

/// A command from outside (start, recover); answered with the events it
/// committed once they are committed.
#[derive(Message)]
#[rtype(result = "Result<Committed, EngineError>")]
pub struct Execute(pub RunCommand);

/// Resolves once the read models hold every event this actor committed
/// before the message arrived (read-your-writes for readers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle;

/// An agent finished (internal).
#[derive(Message, Clone)]
#[rtype(result = "()")]
struct AgentDone {
    step: StepId,
    lease: LeaseToken,
    result: Result<Outputs, AgentError>,
    /// The attempt's comments not recorded yet (taken at the first try).
    comments: Vec<AgentNote>,
    tries: u32,
}

/// An agent posted a comment (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct AgentCommented {
    step: StepId,
    lease: LeaseToken,
    note: AgentNote,
}

/// Record the comments still waiting (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushNotes;

/// A retry is due (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

/// The actor of one run.
pub struct RunActor {
    id: RunId,
    /// A run that was never started: nothing to load.
    fresh: bool,
    engine: Arc<EngineCtx>,
    state: Run,
    sequence: usize,
    snapshot: Option<usize>,
    in_flight: usize,
    wake: Option<SpawnHandle>,
    passivate: Option<SpawnHandle>,
    /// The read-model write of the last turn; writes of one run are applied
    /// in order, so this resolving means all earlier ones are done too.
    last_written: Option<Shared<BoxFuture<'static, ()>>>,
    /// The stop signal of each running agent, by step.
    stops: HashMap<StepId, tokio::sync::watch::Sender<bool>>,
    /// Agents' comments waiting to be recorded, with their attempt.
    notes: Vec<(StepId, LeaseToken, AgentNote)>,
    /// The timer that records waiting comments on their own.
    flush: Option<SpawnHandle>,
}

impl RunActor {
    pub(super) fn new(id: RunId, engine: Arc<EngineCtx>, fresh: bool) -> Self {
        Self {
            id,
            fresh,
            engine,
            state: Run::default(),
            sequence: 0,
            snapshot: None,
            in_flight: 0,
            wake: None,
            passivate: None,
            last_written: None,
            stops: HashMap::new(),
            notes: Vec::new(),
            flush: None,
        }
    }

    /// Reloads the run from the store (after a conflicting commit).
    fn reload(&mut self) -> ResponseActFuture<Self, Result<(), EngineError>> {
        let engine = self.engine.clone();
        let id = self.id.clone();
        Box::pin(
            async move { engine.runs.load(id.as_str()).await }
                .into_actor(self)
                .map(|loaded, act, _| {
                    let loaded = loaded?;
                    act.state = loaded.state;
                    act.sequence = loaded.sequence;
                    act.snapshot = loaded.snapshot;
                    Ok(())
                }),
        )
    }

    /// One turn: decide, commit, fold, publish, act. Resolves to the events
    /// committed. Their read-model write is queued, not awaited (unless the
    /// writers fall behind); readers that need it wait through `Settle`.
    fn turn(
        &mut self,
        command: RunCommand,
    ) -> ResponseActFuture<Self, Result<Committed, EngineError>> {
        // Decided when the turn runs, not when its message is handled: the
        // state may change in between if actix runs another turn first.
        Box::pin(ActorFutureExt::then(
            ready(()),
            move |(), act: &mut Self, _| act.turn_now(command),
        ))
    }

    fn turn_now(
        &mut self,
        command: RunCommand,
    ) -> ResponseActFuture<Self, Result<Committed, EngineError>> {
        // The one place a run command is stamped with its time and lease seed.
        let stamp = Stamp {
            at: now(),
            lease_seed: new_lease_seed(),
        };
        let events = match self.state.decide(command, &stamp) {
            Ok(events) if events.is_empty() => return Box::pin(ready(Ok(Vec::new()))),
            Ok(events) => events,
            Err(refused) => return Box::pin(ready(Err(refused.into()))),
        };
        let engine = self.engine.clone();
        let id = self.id.clone();
        let (sequence, snapshot) = (self.sequence, self.snapshot);
        // The store reads the state only to write a snapshot: copy it only
        // for those commits (one in every RUN_SNAPSHOT_EVERY events).
        let state = if self.engine.runs.snapshot_due(sequence, events.len()) {
            self.state.clone()
        } else {
            Run::default()
        };
        let metadata = HashMap::from([("recorded_at".to_string(), rfc3339(now()))]);
        Box::pin(
            async move {
                engine
                    .runs
                    .commit(id.as_str(), state, sequence, snapshot, events, metadata)
                    .await
            }
            .into_actor(self)
            .then(move |committed, act, ctx| -> ResponseActFuture<Self, Result<Committed, EngineError>> {
                match committed {
                    Ok((envelopes, snapshot)) => {
                        act.committed(&envelopes, snapshot, ctx);
                        let written = act.engine.project_runs(&envelopes).shared();
                        act.last_written = Some(written.clone());
                        if act.engine.read_models_behind() {
                            Box::pin(
                                async move {
                                    written.await;
                                    Ok(envelopes)
                                }
                                .into_actor(act),
                            )
                        } else {
                            Box::pin(ready(Ok(envelopes)))
                        }
                    }
                    Err(StoreError::Conflict) => {
                        tracing::warn!(run_id = %act.id, "another writer advanced this run; reloading");
                        Box::pin(act.reload().map(|_, _, _| Err(EngineError::Conflict)))
                    }
                    Err(e) => Box::pin(ready(Err(e.into()))),
                }
            }),
        )
    }

    /// Folds committed events into the state and carries out their effects.
    fn committed(
        &mut self,
        envelopes: &[EventEnvelope<Run>],
        snapshot: Option<usize>,
        ctx: &mut Context<Self>,
    ) {
        for envelope in envelopes {
            self.state.apply_event(envelope.payload.clone());
            self.sequence = envelope.sequence;
        }
        self.snapshot = snapshot;
        self.engine.hub.publish(&self.id, envelopes);
        for envelope in envelopes {
            match &envelope.payload {
                RunEvent::StepDispatched {
                    step,
                    attempt,
                    lease,
                    prompt_override,
                    instructions,
                    ..
                } => {
                    let dispatch = Dispatch {
                        step: step.clone(),
                        attempt: *attempt,
                        lease: lease.clone(),
                        prompt_override: prompt_override.clone(),
                        instructions: instructions.clone(),
                    };
                    self.execute_step(dispatch, ctx);
                }
                // Running agents are told to stop; they may finish anyway.
                RunEvent::PauseRequested { .. } | RunEvent::CancelRequested { .. } => {
                    for stop in self.stops.values() {
                        let _ = stop.send(true);
                    }
                }
                // Their inputs went stale: their results will be refused.
                RunEvent::StepRetryRequested { invalidated, .. }
                | RunEvent::ArtifactRolledBack { invalidated, .. } => {
                    for step in invalidated {
                        if let Some(stop) = self.stops.remove(step) {
                            let _ = stop.send(true);
                        }
                    }
                }
                RunEvent::StepCompleted { step, .. }
                | RunEvent::StepAwaitingReview { step, .. }
                | RunEvent::StepFailed { step, .. }
                | RunEvent::StepInterrupted { step, .. } => {
                    self.stops.remove(step);
                }
                _ => {}
            }
        }
        self.schedule(ctx);
    }

    /// Sets the wake-up timer for the earliest due retry and the passivation
    /// timer once the run is over and nothing runs.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        // A run that may not dispatch (paused, pausing, cancelling, failing,
        // finished) must not be woken for its retries: the wake would find
        // nothing to do and re-arm at once. Resume re-schedules.
        // Nor must a run in manual mode: its due retries wait for a trigger.
        let due = if self.state.dispatching() && self.state.auto_run {
            self.state.pending_retries().map(|(_, t)| t).min()
        } else {
            None
        };
        if let Some(due) = due {
            let delay = u64::try_from(due.0.saturating_sub(now().0)).unwrap_or(0);
            self.wake = Some(later(ctx, Wake, Duration::from_millis(delay)));
        }
        // Finished and paused runs have nothing in flight: their actors
        // stop after a while (a resume loads the run again).
        let idle = self.state.status.is_finished() || self.state.status == RunStatus::Paused;
        if !idle {
            if let Some(handle) = self.passivate.take() {
                ctx.cancel_future(handle);
            }
        }
        if idle && self.in_flight == 0 && self.passivate.is_none() {
            let idle = self.engine.config.passivate_after;
            self.passivate = Some(ctx.run_later(idle, |_, ctx| ctx.stop()));
        }
    }

    /// Runs a dispatched step's agent in the background; its result comes
    /// back as an `AgentDone` message.
    fn execute_step(&mut self, dispatch: Dispatch, ctx: &mut Context<Self>) {
        let Dispatch {
            step,
            attempt,
            lease,
            prompt_override,
            instructions,
        } = dispatch;
        let Some(def) = self.state.definition.steps.get(&step).cloned() else {
            return;
        };
        let agent = self.engine.agents.get(&def.agent);
        let input = self.state.step_input(&step);
        let upstream: BTreeMap<String, BTreeMap<String, ArtifactContent>> = self
            .state
            .definition
            .upstream_of(&step)
            .into_iter()
            .map(|s| (s.to_string(), self.state.outputs_of(&s)))
            .filter(|(_, outputs)| !outputs.is_empty())
            .collect();
        let run_input = self.state.input.clone();
        let blobs = self.engine.blobs.clone();
        let run_id = self.id.clone();
        let addr = ctx.address();
        // The texts of the instructions handed over (the state holds the
        // open ones, and these were just handed to this step).
        let instructions: Vec<String> = self
            .state
            .thread
            .in_flight
            .get(&step)
            .map(|open| {
                open.iter()
                    .filter(|i| instructions.contains(&i.message))
                    .map(|i| i.content.clone())
                    .collect()
            })
            .unwrap_or_default();
        let (stop_sender, stop) = StopSignal::channel();
        if self.state.pause_requested || self.state.cancel_requested.is_some() {
            let _ = stop_sender.send(true);
        }
        self.stops.insert(step.clone(), stop_sender);
        let comments = {
            let addr = addr.clone();
            let (step, lease) = (step.clone(), lease.clone());
            CommentSink::new(move |content| {
                addr.do_send(AgentCommented {
                    step: step.clone(),
                    lease: lease.clone(),
                    note: AgentNote { content, at: now() },
                });
            })
        };
        self.in_flight += 1;
        actix::spawn(async move {
            let result = async {
                let agent = agent.ok_or_else(|| {
                    format!("agent '{}' is not available on this server", def.agent)
                })?;
                let input = resolve_input(&blobs, input).await?;
                let mut resolved_upstream = BTreeMap::new();
                for (s, outputs) in upstream {
                    resolved_upstream.insert(s, resolve_outputs(&blobs, outputs).await?);
                }
                let outputs = agent
                    .run(StepContext {
                        run_id,
                        step: step.clone(),
                        attempt,
                        prompt: def.prompt.clone(),
                        prompt_override,
                        instructions,
                        config: def.config.clone(),
                        input,
                        run_input,
                        upstream: resolved_upstream,
                        stop,
                        comments,
                    })
                    .await?;
                Ok(store_outputs(&blobs, outputs).await?)
            }
            .await;
            addr.do_send(AgentDone {
                step,
                lease,
                result,
                comments: Vec::new(),
                tries: 0,
            });
        });
    }
}

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.fresh {
            // A new id has no events; if it had, the first commit conflicts
            // and the actor reloads.
            return;
        }
        // Messages wait until the run is loaded.
        ctx.wait(self.reload().map(|loaded, act, ctx| match loaded {
            Ok(()) => act.schedule(ctx),
            Err(e) => {
                tracing::error!(run_id = %act.id, error = %e, "cannot load run; stopping its actor");
                ctx.stop();
            }
        }));
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        self.engine.forget_actor(&self.id, &ctx.address());
        Running::Stop
    }
}

impl Handler<Execute> for RunActor {
    type Result = AtomicResponse<Self, Result<Committed, EngineError>>;

    fn handle(&mut self, Execute(command): Execute, _: &mut Self::Context) -> Self::Result {
        AtomicResponse::new(Box::pin(self.turn(command).map(|result, act, ctx| {
            // A command to a run that does not exist spawned this actor for
            // nothing: do not keep it.
            if act.state.id.is_none() {
                ctx.stop();
            }
            result
        })))
    }
}

impl Handler<Settle> for RunActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Settle, _: &mut Self::Context) -> Self::Result {
        // Not atomic: the actor goes on while the reader waits.
        let written = self.last_written.clone();
        Box::pin(async move {
            if let Some(written) = written {
                written.await;
            }
        })
    }
}

impl Handler<AgentDone> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, mut done: AgentDone, _: &mut Self::Context) -> Self::Result {
        if done.tries == 0 {
            self.in_flight = self.in_flight.saturating_sub(1);
            // The attempt's comments go into the same commit as its result.
            let (mine, others) = std::mem::take(&mut self.notes)
                .into_iter()
                .partition(|(step, lease, _)| *step == done.step && *lease == done.lease);
            self.notes = others;
            done.comments = mine.into_iter().map(|(_, _, note)| note).collect();
        }
        let comments = done.comments.clone();
        let command = match done.result.clone() {
            Ok(outputs) => RunCommand::CompleteStep {
                step: done.step.clone(),
                lease: done.lease.clone(),
                outputs,
                comments,
            },
            Err(AgentError::Failed(error)) => RunCommand::FailStep {
                step: done.step.clone(),
                lease: done.lease.clone(),
                error,
                comments,
            },
            Err(AgentError::Stopped) => RunCommand::InterruptStep {
                step: done.step.clone(),
                lease: done.lease.clone(),
                comments,
            },
        };
        AtomicResponse::new(Box::pin(self.turn(command).map(move |result, act, ctx| {
            match result {
                Ok(_) => {}
                Err(EngineError::Run(refused)) => {
                    // A stale or duplicate result: the lease check did its job.
                    tracing::debug!(run_id = %act.id, step = %done.step, %refused, "agent result refused");
                }
                Err(e) if done.tries + 1 < RECORD_ATTEMPTS => {
                    tracing::warn!(run_id = %act.id, step = %done.step, error = %e, "recording agent result failed; retrying");
                    let delay = Duration::from_millis(50 << done.tries);
                    later(ctx, AgentDone { tries: done.tries + 1, ..done }, delay);
                }
                Err(e) => {
                    tracing::error!(run_id = %act.id, step = %done.step, error = %e,
                        "recording agent result failed for good; the step is re-dispatched at the next recovery");
                }
            }
            act.schedule(ctx);
        })))
    }
}

impl Handler<AgentCommented> for RunActor {
    type Result = ();

    fn handle(&mut self, comment: AgentCommented, ctx: &mut Self::Context) {
        self.notes.push((comment.step, comment.lease, comment.note));
        if self.flush.is_none() {
            self.flush = Some(later(ctx, FlushNotes, NOTE_FLUSH_DELAY));
        }
    }
}

impl Handler<FlushNotes> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: FlushNotes, _: &mut Self::Context) -> Self::Result {
        self.flush = None;
        let comments = std::mem::take(&mut self.notes);
        if comments.is_empty() {
            return AtomicResponse::new(Box::pin(ready(())));
        }
        let command = RunCommand::AgentComments { comments };
        AtomicResponse::new(Box::pin(self.turn(command).map(|result, act, _| {
            if let Err(e) = result {
                // The run has finished, or storage failed: a comment is not
                // worth retrying.
                tracing::debug!(run_id = %act.id, error = %e, "agent comments not recorded");
            }
        })))
    }
}

impl Handler<Wake> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Wake, _: &mut Self::Context) -> Self::Result {
        self.wake = None;
        let command = RunCommand::DispatchDue;
        AtomicResponse::new(Box::pin(self.turn(command).map(|result, act, ctx| {
            if let Err(e) = result {
                tracing::warn!(run_id = %act.id, error = %e, "dispatching due retries failed");
                if !matches!(e, EngineError::Run(_)) {
                    later(ctx, Wake, Duration::from_secs(1));
                    return;
                }
            }
            act.schedule(ctx);
        })))
    }
}

/// Delivers `message` to the actor after `delay` through its mailbox.
///
/// Not `ctx.notify_later`: actix handles a notified message from the
/// context's own queue, and may do so right after a mailbox message started
/// an atomic turn whose wait it has not merged yet. Two turns then overlap,
/// the second deciding on a state the first is about to change, and its
/// commit conflicts with the first (seen as `409 conflict` under concurrent
/// messages to a run whose agents comment). Through the mailbox, a message
/// waits for the running turn like any other.
fn later<M>(ctx: &mut Context<RunActor>, message: M, delay: Duration) -> SpawnHandle
where
    M: Message<Result = ()> + Send + 'static,
    RunActor: Handler<M>,
{
    ctx.run_later(delay, move |_, ctx| ctx.address().do_send(message))
}

/// One dispatch to carry out.
struct Dispatch {
    step: StepId,
    attempt: u32,
    lease: LeaseToken,
    prompt_override: Option<String>,
    instructions: Vec<u32>,
}

async fn resolve(blobs: &BlobStore, content: ArtifactContent) -> Result<Value, String> {
    match content {
        ArtifactContent::Inline(value) => Ok(value),
        ArtifactContent::Blob { sha256, .. } => {
            let bytes = blobs
                .get(&sha256)
                .await
                .map_err(|e| format!("reading artifact blob {sha256}: {e}"))?
                .ok_or_else(|| format!("artifact blob {sha256} is missing"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("artifact blob {sha256}: {e}"))
        }
    }
}

async fn resolve_outputs(
    blobs: &BlobStore,
    outputs: BTreeMap<String, ArtifactContent>,
) -> Result<Value, String> {
    let mut map = serde_json::Map::new();
    for (name, content) in outputs {
        map.insert(name, resolve(blobs, content).await?);
    }
    Ok(Value::Object(map))
}

async fn resolve_input(blobs: &BlobStore, input: StepInput) -> Result<Value, String> {
    match input {
        StepInput::RunInput(value) => Ok(value),
        StepInput::Named(named) => {
            let mut map = serde_json::Map::new();
            for (name, value) in named {
                let value = match value {
                    InputValue::Outputs(outputs) => resolve_outputs(blobs, outputs).await?,
                    InputValue::Artifact(content) => resolve(blobs, content).await?,
                    InputValue::Missing => Value::Null,
                };
                map.insert(name, value);
            }
            Ok(Value::Object(map))
        }
    }
}

/// Checks output names and moves large bodies to the blob store.
async fn store_outputs(
    blobs: &BlobStore,
    outputs: BTreeMap<String, Value>,
) -> Result<Outputs, String> {
    let mut stored = Outputs::new();
    for (name, value) in outputs {
        let output = OutputName::parse(name).map_err(|e| format!("agent returned an {e}"))?;
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        let content = if bytes.len() > INLINE_ARTIFACT_LIMIT {
            let sha256 = blobs
                .put(&bytes)
                .await
                .map_err(|e| format!("storing artifact body: {e}"))?;
            ArtifactContent::Blob {
                sha256,
                size: bytes.len() as u64,
            }
        } else {
            ArtifactContent::Inline(value)
        };
        stored.insert(output, content);
    }
    Ok(stored)
}
