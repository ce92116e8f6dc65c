//! `RunActor`: one actor per live run. Its mailbox serialises the run's
//! commands. Each turn stamps the command (time, lease seed), decides its
//! events and effects with the pure aggregate, commits the events
//! (optimistic concurrency on the run's sequence), keeps the state they
//! lead to, hands them to the read models and the live hub, then performs
//! the effects: dispatch, stop and release attempts through their agents'
//! executors, start a redirect's new run, arm the wake-up timer. Finished
//! and paused runs passivate.

use std::time::Duration;

use actix::fut::{ready, ActorFutureExt, WrapFuture};
use actix::{
    Actor, ActorContext, AsyncContext, AtomicResponse, Context, Handler, Message,
    ResponseActFuture, ResponseFuture, Running, SpawnHandle,
};
use cqrs_es::EventEnvelope;
use futures::future::{BoxFuture, FutureExt, Shared};

use super::executor::{Outcome, StepReport};
use super::{new_lease_seed, Cause, Engine, EngineCtx, EngineError};
use crate::domain::ids::{LeaseToken, RunId, StepId, Timestamp};
use crate::domain::run::{AgentNote, Decided, Effect, Run, RunCommand, RunError, RunStatus, Stamp};
use crate::store::{Acquired, Fence, StoreError};

/// How long an agent's comment may wait to be recorded with its attempt's
/// result (one commit instead of one per comment) before it is recorded on
/// its own, so that a long-running agent's comments still show promptly.
const NOTE_FLUSH_DELAY: Duration = Duration::from_millis(50);

/// How long the actor of a run another node hosts lingers, answering so,
/// before it stops.
const GIVE_UP_LINGER: Duration = Duration::from_millis(200);

/// Events committed by one turn.
pub type Committed = Vec<EventEnvelope<Run>>;

/// A command from outside (start, control, steering); answered with the
/// events it committed once they are committed.
#[derive(Message)]
#[rtype(result = "Result<Committed, EngineError>")]
pub struct Execute(pub RunCommand, pub Cause);

/// What an attempt did (see [`Engine::report`]); answered once it is
/// recorded, or refused.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct Report(pub StepReport);

/// A remote worker's heartbeat for a claimed attempt; answered with the
/// lease as it stands after it.
#[derive(Message)]
#[rtype(result = "Result<LeaseStatus, EngineError>")]
pub struct Heartbeat {
    /// The step.
    pub step: StepId,
    /// The attempt's lease.
    pub lease: LeaseToken,
}

/// What a heartbeat answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseStatus {
    /// When the lease expires unless another heartbeat extends it.
    pub lease_expires_at: Timestamp,
    /// The run is being cancelled: stop (within the cancel's grace).
    pub cancel_requested: bool,
    /// The run is pausing: finish, or give the task back.
    pub pause_requested: bool,
}

/// Resolves once the read models hold every event this actor committed
/// before the message arrived (read-your-writes for readers).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle;

/// Brings the run's actor up on this node if it may host the run (taking it
/// over from a dead node re-dispatches what died there); answered with
/// whether the run is active here. Sent at start and by the takeover scan.
#[derive(Message)]
#[rtype(result = "Result<bool, EngineError>")]
pub struct Activate;

/// Give the run up: this node may have lost it (its heartbeats failed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct GiveUp;

/// Record the comments still waiting (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushNotes;

/// The run's wake-up time has come (internal).
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

/// The actor of one run.
pub struct RunActor {
    id: RunId,
    /// A run that was never started: nothing to load.
    fresh: bool,
    engine: std::sync::Arc<EngineCtx>,
    state: Run,
    sequence: usize,
    snapshot: Option<usize>,
    /// The wake-up timer and the time it is armed for.
    wake: Option<(Timestamp, SpawnHandle)>,
    passivate: Option<SpawnHandle>,
    /// The read-model write of the last turn; writes of one run are applied
    /// in order, so this resolving means all earlier ones are done too.
    last_written: Option<Shared<BoxFuture<'static, ()>>>,
    /// Agents' comments waiting to be recorded, with their attempt.
    notes: Vec<(StepId, LeaseToken, AgentNote)>,
    /// The timer that records waiting comments on their own.
    flush: Option<SpawnHandle>,
    /// What this node proves when it appends (PostgreSQL): that it still
    /// hosts the run at the epoch it took it at.
    fence: Option<Fence>,
    /// Another node hosts the run: every message is answered with this,
    /// and the actor stops.
    elsewhere: Option<(String, Option<String>)>,
}

impl RunActor {
    pub(super) fn new(id: RunId, engine: std::sync::Arc<EngineCtx>, fresh: bool) -> Self {
        Self {
            id,
            fresh,
            engine,
            state: Run::default(),
            sequence: 0,
            snapshot: None,
            wake: None,
            passivate: None,
            last_written: None,
            notes: Vec::new(),
            flush: None,
            fence: None,
            elsewhere: None,
        }
    }

    /// Refuses a message when another node hosts the run.
    fn hosted_elsewhere(&self) -> Option<EngineError> {
        let (node, address) = self.elsewhere.clone()?;
        Some(if node.is_empty() {
            EngineError::Moved
        } else {
            EngineError::HostedElsewhere { node, address }
        })
    }

    /// Takes the run for this node (PostgreSQL), then loads it; a run taken
    /// from a dead host is recovered. Messages wait until it is done.
    fn activate(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.engine.cluster.clone() else {
            ctx.wait(self.reload().map(|loaded, act, ctx| {
                act.loaded(loaded, ctx);
            }));
            return;
        };
        let id = self.id.clone();
        ctx.wait(
            async move { cluster.acquire(id.as_str()).await }
                .into_actor(self)
                .then(|acquired, act, ctx| -> ResponseActFuture<Self, bool> {
                    match acquired {
                        Ok(Acquired::Held { fence, recover }) => {
                            act.fence = Some(fence);
                            Box::pin(act.reload().then(
                                move |loaded, act, _| -> ResponseActFuture<Self, bool> {
                                    if loaded.is_ok() || !recover {
                                        return Box::pin(ActorFutureExt::map(
                                            ready(loaded),
                                            move |loaded, act: &mut Self, ctx| {
                                                act.loaded(loaded, ctx) && recover
                                            },
                                        ));
                                    }
                                    // The recovery is owed still: given back
                                    // before this actor stops, so that the
                                    // next one to take the run recovers it.
                                    Box::pin(act.abandon().into_actor(act).map(
                                        move |(), act, ctx| {
                                            // Failed: it stops the actor.
                                            act.loaded(loaded, ctx);
                                            false
                                        },
                                    ))
                                },
                            ))
                        }
                        Ok(Acquired::Elsewhere { node, address }) => {
                            act.give_up(Some((node, address)), ctx);
                            Box::pin(ready(false))
                        }
                        Ok(Acquired::Unknown) => {
                            // No such run (yet): commands are refused as on
                            // one node, and a start takes the host row with
                            // its first append.
                            act.fence = act.engine.cluster.as_ref().map(|c| c.starting());
                            Box::pin(act.reload().map(|loaded, act, ctx| {
                                act.loaded(loaded, ctx);
                                false
                            }))
                        }
                        Err(e) => {
                            tracing::error!(run_id = %act.id, error = %e,
                                "cannot take the run for this node; stopping its actor");
                            act.give_up(None, ctx);
                            Box::pin(ready(false))
                        }
                    }
                })
                .then(|recover, act, _| -> ResponseActFuture<Self, ()> {
                    if !recover || act.state.status.is_finished() {
                        return Box::pin(ready(()));
                    }
                    tracing::info!(run_id = %act.id, "taking over a run from a node that is gone");
                    Box::pin(act.turn_now(RunCommand::Recover, &Cause::Engine).then(
                        |result, act, _| -> ResponseActFuture<Self, ()> {
                            match result {
                                Ok(_) | Err(EngineError::Run(_)) => Box::pin(ready(())),
                                Err(e) => {
                                    // Owed still: given back before this
                                    // actor goes, so another look recovers it.
                                    tracing::error!(run_id = %act.id, error = %e,
                                        "cannot recover the run; giving it back to be taken over again");
                                    Box::pin(
                                        act.abandon()
                                            .into_actor(act)
                                            .map(|(), act, ctx| act.give_up(None, ctx)),
                                    )
                                }
                            }
                        },
                    ))
                }),
        );
    }

    /// Gives the run back to no node (a recovery this node owed failed), so
    /// that the next look for orphans, here or elsewhere, takes it again.
    fn abandon(&self) -> impl std::future::Future<Output = ()> + 'static {
        let held = self.engine.cluster.clone().zip(self.fence.clone());
        let id = self.id.clone();
        async move {
            let Some((cluster, fence)) = held else {
                return;
            };
            if let Err(e) = cluster.abandon(&fence, id.as_str()).await {
                tracing::error!(run_id = %id, error = %e,
                    "cannot give the run back; it is recovered when this node restarts");
            }
        }
    }

    /// Another node hosts the run (`None`: it is not known which): the
    /// messages waiting are answered so, then the actor stops.
    fn give_up(&mut self, host: Option<(String, Option<String>)>, ctx: &mut Context<Self>) {
        self.elsewhere = Some(host.unwrap_or_default());
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        // Not at once: answers still being sent would be dropped.
        ctx.run_later(GIVE_UP_LINGER, |_, ctx| ctx.stop());
    }

    /// Arms the run's timers once it is loaded; stops the actor if it could
    /// not be. Returns whether it loaded.
    fn loaded(&mut self, loaded: Result<(), EngineError>, ctx: &mut Context<Self>) -> bool {
        match loaded {
            Ok(()) => {
                let wake = self.state.next_wake();
                self.arm_wake(wake, ctx);
                self.schedule(ctx);
                true
            }
            Err(e) => {
                tracing::error!(run_id = %self.id, error = %e, "cannot load run; stopping its actor");
                ctx.stop();
                false
            }
        }
    }

    /// Who reports for `step`'s current attempt: the worker that claimed
    /// it, else its (in-process) agent.
    fn reporter(&self, step: &StepId) -> Cause {
        let Some(state) = self.state.steps.get(step) else {
            return Cause::Engine;
        };
        if let Some(worker) = &state.claimed_by {
            return Cause::Worker(worker.clone());
        }
        match self.state.definition.steps.get(step) {
            Some(def) => Cause::Agent(def.agent.clone()),
            None => Cause::Engine,
        }
    }

    /// Reloads the run from the store (at start, after a conflicting
    /// commit).
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

    /// One turn: stamp, decide, commit, keep, publish, perform. Resolves to
    /// the events committed. Their read-model write is queued, not awaited
    /// (unless the writers fall behind); readers that need it wait through
    /// `Settle`.
    fn turn(
        &mut self,
        command: RunCommand,
        by: Cause,
    ) -> ResponseActFuture<Self, Result<Committed, EngineError>> {
        // Decided when the turn runs, not when its message is handled: the
        // state may change in between if actix runs another turn first.
        Box::pin(ActorFutureExt::then(
            ready(()),
            move |(), act: &mut Self, _| act.turn_now(command, &by),
        ))
    }

    fn turn_now(
        &mut self,
        command: RunCommand,
        by: &Cause,
    ) -> ResponseActFuture<Self, Result<Committed, EngineError>> {
        // The one place a run command is stamped with its time and lease
        // seed.
        let stamp = Stamp {
            at: self.engine.clock.now(),
            lease_seed: new_lease_seed(),
            policy: self.engine.config.policy,
        };
        let Decided {
            events,
            effects,
            state,
        } = match self.state.decide_with_effects(command, &stamp) {
            Ok(decided) if decided.events.is_empty() => return Box::pin(ready(Ok(Vec::new()))),
            Ok(decided) => decided,
            Err(refused) => return Box::pin(ready(Err(refused.into()))),
        };
        let engine = self.engine.clone();
        let id = self.id.clone();
        let (sequence, snapshot) = (self.sequence, self.snapshot);
        // The store reads the state only to write a snapshot: copy it only
        // for those commits (one in every RUN_SNAPSHOT_EVERY events).
        let before = if self.engine.runs.snapshot_due(sequence, events.len()) {
            self.state.clone()
        } else {
            Run::default()
        };
        let mut metadata = super::event_metadata(stamp.at, by);
        if let Some(fence) = &self.fence {
            // Which node recorded it: nodes following the log skip their own.
            metadata.insert("node".to_string(), fence.node.to_string());
        }
        let fence = self.fence.clone();
        Box::pin(
            async move {
                engine
                    .runs
                    .commit(id.as_str(), before, sequence, snapshot, events, metadata, fence.as_ref())
                    .await
            }
            .into_actor(self)
            .then(move |committed, act, ctx| -> ResponseActFuture<Self, Result<Committed, EngineError>> {
                match committed {
                    Ok((envelopes, snapshot, position)) => {
                        act.state = state;
                        if let Some(last) = envelopes.last() {
                            act.sequence = last.sequence;
                        }
                        act.snapshot = snapshot;
                        act.engine.hub.publish(&act.id, &envelopes);
                        let written = act.engine.project(position).shared();
                        act.last_written = Some(written.clone());
                        let redirects = act.perform(effects, ctx);
                        act.schedule(ctx);
                        let wait_for_writes = act.engine.read_models_behind();
                        Box::pin(
                            async move {
                                // A redirect's new run exists before the
                                // command is answered.
                                redirects.await;
                                if wait_for_writes {
                                    written.await;
                                }
                                Ok(envelopes)
                            }
                            .into_actor(act),
                        )
                    }
                    Err(StoreError::Fenced) => {
                        tracing::warn!(run_id = %act.id,
                            "another node took this run over; handing the command to it");
                        act.give_up(None, ctx);
                        Box::pin(ready(Err(EngineError::Moved)))
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

    /// Performs the effects of committed events. Returns a future that
    /// resolves once the new runs of redirects are started.
    fn perform(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) -> BoxFuture<'static, ()> {
        let mut wake = None;
        let mut redirects = Vec::new();
        for effect in effects {
            match effect {
                Effect::Dispatch(task) => self.engine.executor_for(&task.agent).dispatch(*task),
                Effect::Stop { step, lease, agent } => {
                    self.engine
                        .executor_for(&agent)
                        .stop(&self.id, &step, &lease);
                }
                Effect::Release { step, lease, agent } => {
                    self.engine
                        .executor_for(&agent)
                        .release(&self.id, &step, &lease);
                }
                Effect::StartRedirect { to, instructions } => {
                    redirects.push((to, instructions));
                }
                Effect::WakeAt(at) => wake = Some(at),
            }
        }
        self.arm_wake(wake, ctx);
        if redirects.is_empty() {
            return Box::pin(async {});
        }
        let engine = Engine {
            ctx: self.engine.clone(),
        };
        let (from, source) = (self.id.clone(), self.state.source());
        Box::pin(async move {
            for (to, instructions) in redirects {
                // Failures are logged there; the start-up repair finishes
                // the redirect if this one did not.
                let _ = engine
                    .start_redirect_target(&from, source.clone(), to, instructions)
                    .await;
            }
        })
    }

    /// Arms the wake-up timer for `at` (disarms it for `None`). A timer
    /// already armed for that time is kept.
    fn arm_wake(&mut self, at: Option<Timestamp>, ctx: &mut Context<Self>) {
        if self.wake.as_ref().map(|(t, _)| *t) == at {
            return;
        }
        if let Some((_, handle)) = self.wake.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = at {
            let sleep = self.engine.clock.sleep_until(at);
            // Delivered through the mailbox (see `later`).
            let handle = ctx.spawn(sleep.into_actor(self).map(|(), _, ctx| {
                ctx.address().do_send(Wake);
            }));
            self.wake = Some((at, handle));
        }
    }

    /// Arms passivation once the run is over or paused; disarms it when the
    /// run is active again.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        // Finished and paused runs have nothing running: their actors stop
        // after a while (a resume loads the run again).
        let idle = self.state.status.is_finished() || self.state.status == RunStatus::Paused;
        if !idle {
            if let Some(handle) = self.passivate.take() {
                ctx.cancel_future(handle);
            }
        } else if self.passivate.is_none() {
            let idle = self.engine.config.passivate_after;
            self.passivate = Some(ctx.run_later(idle, |_, ctx| ctx.stop()));
        }
    }

    /// The command an attempt's outcome becomes, with the comments of that
    /// attempt still waiting.
    fn outcome_command(&mut self, report: StepReport) -> RunCommand {
        let StepReport {
            step,
            lease,
            outcome,
            notes,
        } = report;
        let mut comments = self.take_notes(&step, &lease);
        comments.extend(notes);
        match outcome {
            Outcome::Completed(outputs, usage, message) => RunCommand::CompleteStep {
                step,
                lease,
                outputs,
                usage,
                comments,
                message,
            },
            Outcome::Failed(failure) => RunCommand::FailStep {
                step,
                lease,
                failure,
                comments,
            },
            Outcome::Released => RunCommand::ReleaseStep {
                step,
                lease,
                comments,
            },
            Outcome::Stopped | Outcome::Comment(_) => RunCommand::InterruptStep {
                step,
                lease,
                comments,
            },
        }
    }

    /// Takes the waiting comments of one attempt.
    fn take_notes(&mut self, step: &StepId, lease: &LeaseToken) -> Vec<AgentNote> {
        let (mine, others) = std::mem::take(&mut self.notes)
            .into_iter()
            .partition(|(s, l, _)| s == step && l == lease);
        self.notes = others;
        mine.into_iter().map(|(_, _, note)| note).collect()
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

impl Actor for RunActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.fresh {
            // A new id has no events; if it had, the first commit conflicts
            // and the actor reloads. Its first append takes the host row.
            self.fence = self.engine.cluster.as_ref().map(|c| c.starting());
            return;
        }
        self.activate(ctx);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        self.engine.forget_actor(&self.id, &ctx.address());
        let idle = self.state.status.is_finished() || self.state.status == RunStatus::Paused;
        if let (Some(cluster), Some(fence), None, true) =
            (&self.engine.cluster, &self.fence, &self.elsewhere, idle)
        {
            // Nothing runs: the next node to need the run takes it.
            cluster.release(fence, self.id.as_str());
        }
        Running::Stop
    }
}

impl Handler<Execute> for RunActor {
    type Result = AtomicResponse<Self, Result<Committed, EngineError>>;

    fn handle(&mut self, Execute(command, by): Execute, _: &mut Self::Context) -> Self::Result {
        if let Some(refused) = self.hosted_elsewhere() {
            return AtomicResponse::new(Box::pin(ready(Err(refused))));
        }
        AtomicResponse::new(Box::pin(self.turn(command, by).map(|result, act, ctx| {
            // A command to a run that does not exist spawned this actor for
            // nothing: do not keep it.
            if act.state.id.is_none() {
                ctx.stop();
            }
            result
        })))
    }
}

impl Handler<Report> for RunActor {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;

    fn handle(&mut self, Report(report): Report, ctx: &mut Self::Context) -> Self::Result {
        if let Some(refused) = self.hosted_elsewhere() {
            return AtomicResponse::new(Box::pin(ready(Err(refused))));
        }
        if let Outcome::Comment(text) = &report.outcome {
            // Checked now, so that a stale worker hears of it at once; the
            // comment is recorded with the attempt's outcome or a batch.
            let result = match self.state.check_running_step(&report.step, &report.lease) {
                Ok(_) => {
                    let at = self.engine.clock.now();
                    self.notes.push((
                        report.step.clone(),
                        report.lease.clone(),
                        AgentNote {
                            content: text.clone(),
                            at,
                        },
                    ));
                    if self.flush.is_none() {
                        self.flush = Some(later(ctx, FlushNotes, NOTE_FLUSH_DELAY));
                    }
                    Ok(())
                }
                Err(refused) => Err(refused.into()),
            };
            return AtomicResponse::new(Box::pin(ready(result)));
        }
        let (step, lease) = (report.step.clone(), report.lease.clone());
        let by = self.reporter(&step);
        let command = self.outcome_command(report);
        let kept = match &command {
            RunCommand::CompleteStep { comments, .. }
            | RunCommand::FailStep { comments, .. }
            | RunCommand::InterruptStep { comments, .. }
            | RunCommand::ReleaseStep { comments, .. } => comments.clone(),
            _ => Vec::new(),
        };
        AtomicResponse::new(Box::pin(self.turn(command, by).map(
            move |result, act, _| {
                match result {
                    Ok(_) => Ok(()),
                    Err(EngineError::Run(refused)) => Err(EngineError::Run(refused)),
                    Err(e) => {
                        // Not recorded: the comments wait for the next try.
                        act.notes.extend(
                            kept.into_iter()
                                .map(|note| (step.clone(), lease.clone(), note)),
                        );
                        Err(e)
                    }
                }
            },
        )))
    }
}

impl Handler<Heartbeat> for RunActor {
    type Result = AtomicResponse<Self, Result<LeaseStatus, EngineError>>;

    fn handle(&mut self, beat: Heartbeat, _: &mut Self::Context) -> Self::Result {
        if let Some(refused) = self.hosted_elsewhere() {
            return AtomicResponse::new(Box::pin(ready(Err(refused))));
        }
        let Heartbeat { step, lease } = beat;
        let by = self.reporter(&step);
        let command = RunCommand::Heartbeat {
            step: step.clone(),
            lease,
        };
        AtomicResponse::new(Box::pin(self.turn(command, by).map(
            move |result, act, _| {
                result?;
                let expires = act
                    .state
                    .steps
                    .get(&step)
                    .and_then(|s| s.lease_expires_at)
                    .ok_or_else(|| EngineError::Run(RunError::NotClaimed(step.clone())))?;
                Ok(LeaseStatus {
                    lease_expires_at: expires,
                    cancel_requested: act.state.cancel_requested.is_some(),
                    pause_requested: act.state.pause_requested,
                })
            },
        )))
    }
}

impl Handler<GiveUp> for RunActor {
    type Result = ();

    fn handle(&mut self, _: GiveUp, ctx: &mut Self::Context) {
        if self.elsewhere.is_none() {
            self.give_up(None, ctx);
        }
    }
}

impl Handler<Activate> for RunActor {
    type Result = Result<bool, EngineError>;

    fn handle(&mut self, _: Activate, ctx: &mut Self::Context) -> Self::Result {
        if let Some(refused) = self.hosted_elsewhere() {
            return Err(refused);
        }
        if self.state.id.is_none() || self.state.status.is_finished() {
            ctx.stop();
            return Ok(false);
        }
        Ok(true)
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

impl Handler<FlushNotes> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: FlushNotes, _: &mut Self::Context) -> Self::Result {
        self.flush = None;
        let comments = std::mem::take(&mut self.notes);
        if comments.is_empty() {
            return AtomicResponse::new(Box::pin(ready(())));
        }
        // Comments of several attempts may be batched: the engine records
        // them on their agents' behalf.
        let command = RunCommand::AgentComments { comments };
        AtomicResponse::new(Box::pin(self.turn(command, Cause::Engine).map(
            |result, act, _| {
                if let Err(e) = result {
                    // The run has finished, or storage failed: a comment is not
                    // worth retrying.
                    tracing::debug!(run_id = %act.id, error = %e, "agent comments not recorded");
                }
            },
        )))
    }
}

impl Handler<Wake> for RunActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Wake, _: &mut Self::Context) -> Self::Result {
        self.wake = None;
        AtomicResponse::new(Box::pin(self.turn(RunCommand::Tick, Cause::Engine).map(
            |result, act, ctx| match result {
                Ok(_) => {}
                Err(EngineError::Run(RunError::Finished(_))) => {}
                Err(e) => {
                    tracing::warn!(run_id = %act.id, error = %e, "dispatching due retries failed; trying again in 1 s");
                    if !matches!(e, EngineError::Run(_)) {
                        act.wake = None;
                        later(ctx, Wake, Duration::from_secs(1));
                    }
                }
            },
        )))
    }
}
