//! A session's catch-ups: what it sends when a client subscribes with
//! `after` or a run's live events show a gap, read from the log without
//! holding the session up; the run's live events wait meanwhile, so each
//! run's stream stays gapless and in order.

use std::sync::Arc;

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::AsyncContext;
use actix_web_actors::ws;

use super::{ServerMessage, Session};
use crate::domain::ids::RunId;
use crate::engine::{EventView, Progress};

/// Events read from the log per catch-up query.
const CATCH_UP_PAGE: i64 = 500;
/// Reads of the log one session has in flight at once; more wait their
/// turn (a client that subscribes to many runs at once must not take the
/// database's connections from everyone else).
const READS_PER_SESSION: usize = 2;

/// A session's reads of the log: those in flight, and those waiting.
#[derive(Default)]
pub(super) struct Reads {
    in_flight: usize,
    queued: std::collections::VecDeque<Queued>,
}

/// A read of the log waiting its turn.
enum Queued {
    /// A subscribe's: the caller's access, the run's existence, and its
    /// events after `from` (if any).
    Subscribe {
        run: RunId,
        id: u64,
        from: Option<i64>,
    },
    /// A gap's: the run's events after `last`.
    Missing { run: RunId, id: u64, last: i64 },
}

/// A run a session follows.
#[derive(Default)]
pub(super) struct Followed {
    /// The last sequence sent (0: none yet).
    last: i64,
    /// A read of the log in flight for this run: its live events wait
    /// here until it ends.
    catching_up: Option<CatchUp>,
}

/// A catch-up in flight.
pub(super) struct CatchUp {
    /// Which one (a newer subscribe supersedes an older one's answer).
    id: u64,
    /// The sequence it reads the log after (`None`: it only checks that
    /// the run exists and may be seen).
    from: Option<i64>,
    /// How many `subscribe` messages it answers with `subscribed` (or
    /// `run_not_found`): a subscribe that supersedes another answers both.
    answers: usize,
    /// The run's live events that came meanwhile, in order (at most the
    /// outbound queue's capacity).
    held: Vec<Arc<EventView>>,
    /// Whether more came than `held` keeps: the log is read again after.
    overflowed: bool,
    /// The read in flight (cancelled when the catch-up is superseded or
    /// the run unsubscribed).
    reading: Option<actix::SpawnHandle>,
}

impl Session {
    /// Sends `event` unless this session already sent it (or no longer
    /// follows its run).
    fn send_event(&mut self, event: &EventView, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.all {
            let Ok(run) = RunId::parse(event.run_id.as_str()) else {
                return;
            };
            let Some(followed) = self.runs.get_mut(&run) else {
                return;
            };
            if event.sequence <= followed.last {
                return;
            }
            followed.last = event.sequence;
        }
        ctx.text(
            ServerMessage::Event {
                run_id: &event.run_id,
                sequence: event.sequence,
                event_type: &event.event_type,
                event_version: &event.event_version,
                recorded_at: event.recorded_at.as_deref(),
                payload: &event.payload,
            }
            .text(),
        );
    }

    /// A live event: sent, held behind its run's catch-up, or, when it
    /// shows a gap (with many nodes a run's events reach a node by two
    /// ways), the start of a read of what is missing.
    pub(super) fn on_live(&mut self, event: Arc<EventView>, ctx: &mut ws::WebsocketContext<Self>) {
        if self.all {
            return self.send_event(&event, ctx);
        }
        let Ok(run) = RunId::parse(event.run_id.as_str()) else {
            return;
        };
        let capacity = self.state.limits.bounds.ws_outbound_queue;
        let Some(followed) = self.runs.get_mut(&run) else {
            return;
        };
        if let Some(catch_up) = followed.catching_up.as_mut() {
            if catch_up.held.len() < capacity {
                catch_up.held.push(event);
            } else {
                catch_up.overflowed = true;
            }
            return;
        }
        // A subscription without `after` has no last sequence until its
        // first event.
        if followed.last > 0 && event.sequence > followed.last + 1 {
            // The read includes this event.
            return self.read_missing(run, ctx);
        }
        self.send_event(&event, ctx);
    }

    /// An attempt's ephemeral progress, to a session that follows its run
    /// (not while the run catches up: its `subscribed` comes first).
    pub(super) fn send_progress(
        &mut self,
        progress: &Progress,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let follows = self.all
            || RunId::parse(progress.run_id.as_str()).is_ok_and(|run| {
                self.runs
                    .get(&run)
                    .is_some_and(|followed| followed.catching_up.is_none())
            });
        if follows {
            ctx.text(
                ServerMessage::Progress {
                    run_id: &progress.run_id,
                    step: &progress.step,
                    attempt: progress.attempt,
                    text: &progress.text,
                }
                .text(),
            );
        }
    }

    /// Marks `run` as catching up from `from` (its live events are held
    /// from now on) and returns the catch-up's id. A catch-up still in
    /// flight for the run is cancelled, and what it held is kept.
    fn begin_catch_up(
        &mut self,
        run: &RunId,
        from: Option<i64>,
        answers: usize,
        ctx: &mut ws::WebsocketContext<Self>,
    ) -> u64 {
        let id = self.next_catch_up;
        self.next_catch_up += 1;
        let followed = self.runs.entry(run.clone()).or_default();
        let (held, overflowed) = match followed.catching_up.take() {
            Some(previous) => {
                if let Some(reading) = previous.reading {
                    ctx.cancel_future(reading);
                    self.reads.in_flight -= 1;
                }
                (previous.held, previous.overflowed)
            }
            None => (Vec::new(), false),
        };
        followed.catching_up = Some(CatchUp {
            id,
            from,
            answers,
            held,
            overflowed,
            reading: None,
        });
        id
    }

    /// Forgets the read of `run`'s current catch-up (it has ended).
    fn done_reading(&mut self, run: &RunId) {
        if let Some(catch_up) = self
            .runs
            .get_mut(run)
            .and_then(|followed| followed.catching_up.as_mut())
        {
            catch_up.reading = None;
        }
    }

    /// Remembers the read of `run`'s current catch-up, to cancel it.
    fn reading(&mut self, run: &RunId, reading: actix::SpawnHandle) {
        if let Some(catch_up) = self
            .runs
            .get_mut(run)
            .and_then(|followed| followed.catching_up.as_mut())
        {
            catch_up.reading = Some(reading);
        }
    }

    /// How many subscribes the current catch-up of `run` answers.
    fn answers(&self, run: &RunId) -> usize {
        self.runs
            .get(run)
            .and_then(|followed| followed.catching_up.as_ref())
            .map_or(0, |catch_up| catch_up.answers)
    }

    /// Whether catch-up `id` of `run` is still the current one (an
    /// unsubscribe or a newer subscribe makes its answer moot).
    fn is_current(&self, run: &RunId, id: u64) -> bool {
        self.runs
            .get(run)
            .and_then(|followed| followed.catching_up.as_ref())
            .is_some_and(|catch_up| catch_up.id == id)
    }

    /// Ends `run`'s catch-up: sends what the log held, then what came live
    /// meanwhile (what was already sent is dropped). If what was held shows
    /// a gap, or more came than was held (what was held is a prefix of the
    /// live stream), the log is read again after the last event sent.
    fn end_catch_up(
        &mut self,
        run: RunId,
        missed: Vec<EventView>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        for event in &missed {
            self.send_event(event, ctx);
        }
        let Some(catch_up) = self
            .runs
            .get_mut(&run)
            .and_then(|followed| followed.catching_up.take())
        else {
            return;
        };
        for event in catch_up.held {
            // Held events are in sequence order; after the first one that
            // is not next, the rest are read back with what is missing.
            if self
                .runs
                .get(&run)
                .is_some_and(|followed| followed.last > 0 && event.sequence > followed.last + 1)
            {
                return self.read_missing(run, ctx);
            }
            self.send_event(&event, ctx);
        }
        if catch_up.overflowed {
            self.read_missing(run, ctx);
        }
    }

    pub(super) fn subscribe(
        &mut self,
        run: RunId,
        after: Option<i64>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        // Join the live room first, so nothing committed from now on is
        // missed; the run's live events are held until the catch-up ends
        // (and a run the caller may not see is left before any is sent).
        self.state
            .engine
            .hub()
            .subscribe(run.clone(), ctx.address().recipient());
        // A catch-up still in flight for the run is superseded: this one
        // reads at least what it would have read, and answers its
        // subscribe too.
        let pending = self
            .runs
            .get(&run)
            .and_then(|followed| followed.catching_up.as_ref());
        let from = match (after, pending.and_then(|c| c.from)) {
            (Some(asked), Some(earlier)) => Some(asked.min(earlier)),
            (asked, earlier) => asked.or(earlier),
        };
        let answers = 1 + pending.map_or(0, |c| c.answers);
        let id = self.begin_catch_up(&run, from, answers, ctx);
        // Asked for explicitly: replay from there, even what this
        // connection was sent before.
        if let (Some(_), Some(from)) = (after, from) {
            if let Some(followed) = self.runs.get_mut(&run) {
                followed.last = from;
            }
        }
        self.reads
            .queued
            .push_back(Queued::Subscribe { run, id, from });
        self.pump(ctx);
    }

    /// Starts the queued reads of the log while fewer than
    /// [`READS_PER_SESSION`] are in flight (a read whose catch-up was
    /// superseded or unsubscribed meanwhile is dropped).
    fn pump(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        while self.reads.in_flight < READS_PER_SESSION {
            let Some(next) = self.reads.queued.pop_front() else {
                return;
            };
            let (run, id) = match &next {
                Queued::Subscribe { run, id, .. } | Queued::Missing { run, id, .. } => {
                    (run.clone(), *id)
                }
            };
            if !self.is_current(&run, id) {
                continue;
            }
            let handle = match next {
                Queued::Subscribe { run, id, from } => self.read_for_subscribe(run, id, from, ctx),
                Queued::Missing { run, id, last } => self.read_for_gap(run, id, last, ctx),
            };
            self.reads.in_flight += 1;
            self.reading(&run, handle);
        }
    }

    /// A subscribe's read: the caller's access, the run's existence (and
    /// that the caller may see it), and its events after `after`.
    fn read_for_subscribe(
        &mut self,
        run: RunId,
        id: u64,
        after: Option<i64>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) -> actix::SpawnHandle {
        let state = self.state.clone();
        let caller = self.caller.clone();
        let reading = run.clone();
        ctx.spawn(
            async move {
                let run = reading;
                // A token revoked or expired since the upgrade ends the
                // connection.
                if let Some(p) = caller.principal() {
                    if let Err(e) = state.access.by_digest(p.digest()).await {
                        return Ok(Err(e));
                    }
                }
                // The log, not a read model, says whether the run exists: a
                // catch-up that finds events says so itself; otherwise one
                // event is looked for.
                let missed = match after {
                    Some(after) => read_after(&state.log, &run, after).await?,
                    None => Vec::new(),
                };
                let exists = if caller.is_admin() {
                    !missed.is_empty()
                        || !state
                            .log
                            .events_of("Run", run.as_str(), 0, 1)
                            .await?
                            .is_empty()
                } else {
                    // Its owner is in its first event; another user's run
                    // answers as one that does not exist.
                    let first = match missed.first().filter(|e| e.sequence == 1) {
                        Some(first) => Some(first.payload.clone()),
                        None => state
                            .log
                            .events_of("Run", run.as_str(), 0, 1)
                            .await?
                            .into_iter()
                            .next()
                            .map(|e| e.payload),
                    };
                    first.is_some_and(|payload| caller.sees(owner_of(&payload)))
                };
                let missed = if exists { missed } else { Vec::new() };
                Ok::<_, Box<dyn std::error::Error>>(Ok((exists, missed)))
            }
            .into_actor(self)
            .map(move |result, act, ctx| {
                act.reads.in_flight -= 1;
                act.pump(ctx);
                if !act.is_current(&run, id) {
                    return;
                }
                act.done_reading(&run);
                let answers = act.answers(&run);
                match result {
                    Ok(Err(refused)) => act.refuse_and_close(&refused, ctx),
                    Ok(Ok((true, missed))) => {
                        for _ in 0..answers {
                            ctx.text(
                                ServerMessage::Subscribed {
                                    run_id: run.as_str(),
                                }
                                .text(),
                            );
                        }
                        act.end_catch_up(run, missed, ctx);
                    }
                    Ok(Ok((false, _))) => {
                        act.unsubscribe(&run, ctx);
                        for _ in 0..answers {
                            Self::send_error(
                                ctx,
                                "run_not_found",
                                &format!("run '{run}' not found"),
                            );
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "websocket catch-up failed");
                        act.unsubscribe(&run, ctx);
                        for _ in 0..answers {
                            act.send_catch_up_failed(&run, ctx);
                        }
                    }
                }
            }),
        )
    }

    /// Reads what the log holds after the last event sent for `run` (live
    /// events are held meanwhile), then sends it and what was held.
    fn read_missing(&mut self, run: RunId, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(last) = self.runs.get(&run).map(|followed| followed.last) else {
            return;
        };
        let id = self.begin_catch_up(&run, Some(last), 0, ctx);
        self.reads
            .queued
            .push_back(Queued::Missing { run, id, last });
        self.pump(ctx);
    }

    /// A gap's read: the run's events after `last`.
    fn read_for_gap(
        &mut self,
        run: RunId,
        id: u64,
        last: i64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) -> actix::SpawnHandle {
        let log = self.state.log.clone();
        let reading = run.clone();
        ctx.spawn(
            async move { read_after(&log, &reading, last).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.reads.in_flight -= 1;
                    act.pump(ctx);
                    if !act.is_current(&run, id) {
                        return;
                    }
                    act.done_reading(&run);
                    match result {
                        Ok(missed) => act.end_catch_up(run, missed, ctx),
                        Err(e) => {
                            tracing::error!(error = %e, "websocket gap fill failed");
                            act.unsubscribe(&run, ctx);
                            act.send_catch_up_failed(&run, ctx);
                        }
                    }
                }),
        )
    }

    /// Tells the client that a run's catch-up failed and that it no longer
    /// follows it (it may subscribe again with `after`).
    fn send_catch_up_failed(&self, run: &RunId, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.text(
            ServerMessage::Error {
                code: "internal_error",
                message: "reading the run's events failed (see the server log); \
                          the run is no longer followed: subscribe again with `after`",
                status: Some(500),
                run_id: Some(run.as_str()),
            }
            .text(),
        );
    }

    pub(super) fn unsubscribe(&mut self, run: &RunId, ctx: &mut ws::WebsocketContext<Self>) {
        let reading = self
            .runs
            .remove(run)
            .and_then(|followed| followed.catching_up)
            .and_then(|catch_up| catch_up.reading);
        if let Some(reading) = reading {
            ctx.cancel_future(reading);
            self.reads.in_flight -= 1;
        }
        self.state
            .engine
            .hub()
            .unsubscribe(run, &ctx.address().recipient());
    }
}

/// The owner in a `RunStarted` payload (as stored, or unwrapped).
fn owner_of(payload: &serde_json::Value) -> Option<&str> {
    payload
        .get("RunStarted")
        .unwrap_or(payload)
        .get("owner")
        .and_then(serde_json::Value::as_str)
}

/// A run's events after `after`, from the log, a page at a time.
async fn read_after(
    log: &crate::store::EventLog,
    run: &RunId,
    mut after: i64,
) -> Result<Vec<EventView>, crate::store::StoreError> {
    let mut missed = Vec::new();
    loop {
        let page = log
            .events_of("Run", run.as_str(), after, CATCH_UP_PAGE)
            .await?;
        let full = page.len() as i64 == CATCH_UP_PAGE;
        after = page.last().map_or(after, |e| e.sequence);
        missed.extend(
            page.into_iter()
                .map(|e| EventView::from_recorded(run.as_str(), e)),
        );
        if !full {
            return Ok(missed);
        }
    }
}
