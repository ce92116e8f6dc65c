//! The WebSocket at `/api/ws`: one session actor per connection (kept thin
//! so that moving from actix-web-actors to actix-ws stays easy).
//!
//! Client → server: `{"type":"subscribe","run_id":ID,"after":SEQ?}`,
//! `{"type":"unsubscribe","run_id":ID}`, `{"type":"subscribe_all"}` (the
//! live events of every run, from now on), `{"type":"unsubscribe_all"}`,
//! `{"type":"ping"}`. A connection follows either chosen runs or every run:
//! mixing the two is refused (`subscription_conflict`), since a run's
//! catch-up could not tell which of its events the all-runs stream already
//! delivered.
//! Server → client: `{"type":"subscribed","run_id"}`, then
//! `{"type":"event","run_id","sequence","event_type","event_version",
//! "recorded_at","payload"}` in order with no duplicate, and
//! `{"type":"error","code","message"}`. With `after`, the session first
//! sends what the log holds after that sequence, then the live stream, with
//! no gap: it joins the live room before it reads the log, holds the run's
//! live events while it reads, and drops any it has already sent.
//!
//! A catch-up does not stop the session: other runs' events, pongs and
//! other answers flow while the log is read (so a `pong` may come before
//! the `subscribed` of a subscription sent earlier). Per run, the order is
//! always `subscribed`, then events by sequence.
//!
//! What waits to be sent is bounded (`[limits] ws_outbound_queue`, the
//! session's mailbox): a client that reads too slowly is taken out of the
//! live rooms by the hub and closed with [`TOO_SLOW`] after what was
//! already queued for it, and may reconnect and resubscribe with `after`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::fut::{ActorFutureExt, WrapFuture};
use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiState, Caller};
use crate::domain::ids::RunId;
use crate::engine::{EventView, Live, Progress};

/// How often the server pings.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// A client silent this long is disconnected.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Events read from the log per catch-up query.
const CATCH_UP_PAGE: i64 = 500;
/// The close code of a connection whose client read too slowly (its
/// outbound queue filled up): reconnect and resubscribe with `after`.
const TOO_SLOW: u16 = 4008;

/// What a client sends over the WebSocket (text frames, one JSON object
/// each).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[schema(as = WsClientMessage)]
pub(super) enum ClientMessage {
    /// Follow a run: with `after`, first the events after that sequence,
    /// then the live ones, with no gap and no duplicate.
    Subscribe {
        /// The run.
        run_id: String,
        /// The last sequence the client has (0: from the first event).
        #[schema(minimum = 0)]
        after: Option<i64>,
    },
    /// Stop following a run.
    Unsubscribe {
        /// The run.
        run_id: String,
    },
    /// Follow every run's live events, from now on (admins).
    SubscribeAll,
    /// Stop following every run.
    UnsubscribeAll,
    /// Answered with `pong`.
    Ping,
}

/// What the server sends over the WebSocket (text frames, one JSON object
/// each).
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[schema(as = WsServerMessage)]
pub(super) enum ServerMessage<'a> {
    /// A `subscribe` took effect (the catch-up follows).
    Subscribed {
        /// The run.
        run_id: &'a str,
    },
    /// An `unsubscribe` took effect.
    Unsubscribed {
        /// The run.
        run_id: &'a str,
    },
    /// A `subscribe_all` took effect.
    SubscribedAll,
    /// An `unsubscribe_all` took effect.
    UnsubscribedAll,
    /// The answer to `ping`.
    Pong,
    /// One event of a followed run, in sequence order.
    Event {
        /// The run.
        run_id: &'a str,
        /// Its sequence within the run, from 1.
        sequence: i64,
        /// The variant name, e.g. `StepCompleted` (docs/events.md).
        event_type: &'a str,
        /// The payload shape's version.
        event_version: &'a str,
        /// When it was committed (RFC 3339).
        recorded_at: Option<&'a str>,
        /// The event's fields.
        #[schema(value_type = Object)]
        payload: &'a Value,
    },
    /// Text an attempt produced so far (a chunk; not recorded, not
    /// replayed).
    Progress {
        /// The run.
        run_id: &'a str,
        /// The step.
        step: &'a str,
        /// The attempt.
        attempt: u32,
        /// The chunk.
        text: &'a str,
    },
    /// A refusal. With `status` 401 or 403 (and 1008 as the close code)
    /// the connection closes.
    Error {
        /// Stable, as over HTTP (`run_not_found`, `too_many_subscriptions`).
        code: &'a str,
        /// A sentence a person can act on.
        message: &'a str,
        /// The HTTP status the same refusal has.
        #[serde(skip_serializing_if = "Option::is_none")]
        status: Option<u16>,
        /// The run it is about, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        run_id: Option<&'a str>,
    },
}

impl ServerMessage<'_> {
    /// The message as the text frame that carries it.
    fn text(&self) -> String {
        serde_json::to_string(self).expect("a server message serialises")
    }
}

/// One WebSocket connection.
struct Session {
    state: ApiState,
    /// Who opened it (what the upgrade authenticated).
    caller: Caller,
    /// Its place among its token's connections, given back when it ends.
    _connection: Option<super::limits::ConnectionGuard>,
    /// Subscribed runs: the last sequence sent for each, and its catch-up.
    runs: HashMap<RunId, Followed>,
    /// The id of the next catch-up.
    next_catch_up: u64,
    /// Whether the session gets every run's live events.
    all: bool,
    last_heard: Instant,
    /// A fragmented message being assembled: whether it is text, and its
    /// bytes so far.
    fragments: Option<(bool, Vec<u8>)>,
}

/// A run a session follows.
#[derive(Default)]
struct Followed {
    /// The last sequence sent (0: none yet).
    last: i64,
    /// A read of the log in flight for this run: its live events wait
    /// here until it ends.
    catching_up: Option<CatchUp>,
}

/// A catch-up in flight.
struct CatchUp {
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
}

/// The longest message a client may send, whole or in fragments (the
/// longest frame the codec takes by default).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The WebSocket upgrade. `Authorization: Bearer …`, or `?ticket=` from
/// `POST /api/ws/ticket` for browsers. Messages: `WsClientMessage` from the
/// client, `WsServerMessage` from the server (components of this document).
#[utoipa::path(
    get, path = "/api/ws", tag = "runs",
    params(("ticket" = Option<String>, Query, description = "A ticket from `POST /api/ws/ticket` (browsers).")),
    responses(
        (status = 101, description = "Switching protocols: the WebSocket. Messages are `WsClientMessage` and `WsServerMessage`."),
        (status = 429, description = "`too_many_connections`: the token holds as many connections as it may.", body = super::openapi::ErrorBody),
    ),
)]
pub(super) async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, actix_web::Error> {
    // A token holds a bounded number of connections (accounts off: no
    // token to count against).
    let connection = match caller.principal() {
        Some(p) => Some(state.limits.open_connection(&p.token_id)?),
        None => None,
    };
    let session = Session {
        state: state.get_ref().clone(),
        _connection: connection,
        caller,
        runs: HashMap::new(),
        next_catch_up: 0,
        all: false,
        last_heard: Instant::now(),
        fragments: None,
    };
    ws::start(session, &req, stream)
}

impl Session {
    fn send_error(ctx: &mut ws::WebsocketContext<Self>, code: &str, message: &str) {
        ctx.text(
            ServerMessage::Error {
                code,
                message,
                status: None,
                run_id: None,
            }
            .text(),
        );
    }

    /// Sends an authentication or authorisation refusal as an error
    /// message with its HTTP status, and closes the connection (1008,
    /// policy violation).
    fn refuse_and_close(
        &mut self,
        refused: &super::ApiError,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        use actix_web::ResponseError;
        ctx.text(
            ServerMessage::Error {
                code: refused.code(),
                message: &refused.to_string(),
                status: Some(refused.status_code().as_u16()),
                run_id: None,
            }
            .text(),
        );
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::Policy,
            description: Some(refused.code().to_string()),
        }));
        ctx.stop();
    }

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
    fn on_live(&mut self, event: Arc<EventView>, ctx: &mut ws::WebsocketContext<Self>) {
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
    fn send_progress(&mut self, progress: &Progress, ctx: &mut ws::WebsocketContext<Self>) {
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
    /// from now on) and returns the catch-up's id.
    fn begin_catch_up(&mut self, run: &RunId, from: Option<i64>, answers: usize) -> u64 {
        let id = self.next_catch_up;
        self.next_catch_up += 1;
        self.runs.entry(run.clone()).or_default().catching_up = Some(CatchUp {
            id,
            from,
            answers,
            held: Vec::new(),
            overflowed: false,
        });
        id
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

    fn subscribe(&mut self, run: RunId, after: Option<i64>, ctx: &mut ws::WebsocketContext<Self>) {
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
        let id = self.begin_catch_up(&run, from, answers);
        // Asked for explicitly: replay from there, even what this
        // connection was sent before.
        if let (Some(_), Some(from)) = (after, from) {
            if let Some(followed) = self.runs.get_mut(&run) {
                followed.last = from;
            }
        }
        let after = from;
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
                if !act.is_current(&run, id) {
                    return;
                }
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
                        act.send_catch_up_failed(&run, ctx);
                    }
                }
            }),
        );
    }

    /// Reads what the log holds after the last event sent for `run` (live
    /// events are held meanwhile), then sends it and what was held.
    fn read_missing(&mut self, run: RunId, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(last) = self.runs.get(&run).map(|followed| followed.last) else {
            return;
        };
        let id = self.begin_catch_up(&run, Some(last), 0);
        let log = self.state.log.clone();
        let reading = run.clone();
        ctx.spawn(
            async move { read_after(&log, &reading, last).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if !act.is_current(&run, id) {
                        return;
                    }
                    match result {
                        Ok(missed) => act.end_catch_up(run, missed, ctx),
                        Err(e) => {
                            tracing::error!(error = %e, "websocket gap fill failed");
                            act.unsubscribe(&run, ctx);
                            act.send_catch_up_failed(&run, ctx);
                        }
                    }
                }),
        );
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

    fn unsubscribe(&mut self, run: &RunId, ctx: &mut ws::WebsocketContext<Self>) {
        self.runs.remove(run);
        self.state
            .engine
            .hub()
            .unsubscribe(run, &ctx.address().recipient());
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let message: ClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => return Self::send_error(ctx, "invalid_message", &e.to_string()),
        };
        match message {
            ClientMessage::Subscribe { .. } if self.all => Self::send_error(
                ctx,
                "subscription_conflict",
                "this connection follows every run; send unsubscribe_all first",
            ),
            ClientMessage::Subscribe { run_id, after } => match RunId::parse(run_id) {
                Ok(_) if after.is_some_and(|a| a < 0) => {
                    Self::send_error(ctx, "invalid_after", "after must be 0 or more")
                }
                Ok(run)
                    if !self.runs.contains_key(&run)
                        && self.runs.len()
                            >= self.state.limits.bounds.ws_subscriptions_per_connection =>
                {
                    let message = format!(
                        "a connection follows at most {} runs at once: unsubscribe \
                         from finished ones, or open another connection",
                        self.state.limits.bounds.ws_subscriptions_per_connection
                    );
                    ctx.text(
                        ServerMessage::Error {
                            code: "too_many_subscriptions",
                            message: &message,
                            status: Some(429),
                            run_id: Some(run.as_str()),
                        }
                        .text(),
                    )
                }
                Ok(run) => self.subscribe(run, after, ctx),
                Err(e) => Self::send_error(ctx, "invalid_run_id", &e.to_string()),
            },
            ClientMessage::Unsubscribe { run_id } => match RunId::parse(run_id) {
                Ok(run) => {
                    self.unsubscribe(&run, ctx);
                    ctx.text(
                        ServerMessage::Unsubscribed {
                            run_id: run.as_str(),
                        }
                        .text(),
                    );
                }
                Err(e) => Self::send_error(ctx, "invalid_run_id", &e.to_string()),
            },
            ClientMessage::SubscribeAll if !self.runs.is_empty() => Self::send_error(
                ctx,
                "subscription_conflict",
                "this connection follows chosen runs; unsubscribe from them first",
            ),
            ClientMessage::SubscribeAll if !self.caller.is_admin() => {
                let refused = super::auth::forbidden(
                    "only admins follow every run; subscribe to your runs one by one",
                );
                self.refuse_and_close(&refused, ctx);
            }
            ClientMessage::SubscribeAll => {
                self.all = true;
                self.state
                    .engine
                    .hub()
                    .subscribe_all(ctx.address().recipient());
                ctx.text(ServerMessage::SubscribedAll.text());
            }
            ClientMessage::UnsubscribeAll => {
                self.all = false;
                self.state
                    .engine
                    .hub()
                    .unsubscribe_all(&ctx.address().recipient());
                ctx.text(ServerMessage::UnsubscribedAll.text());
            }
            ClientMessage::Ping => ctx.text(ServerMessage::Pong.text()),
        }
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

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The hub delivers with try_send: a mailbox that fills up (the
        // session is not polled while its peer does not read) ends the
        // subscription instead of growing.
        ctx.set_mailbox_capacity(self.state.limits.bounds.ws_outbound_queue);
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_TIMEOUT {
                ctx.stop();
            } else {
                ctx.ping(b"");
            }
        });
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> actix::Running {
        let me = ctx.address().recipient();
        for run in self.runs.keys() {
            self.state.engine.hub().unsubscribe(run, &me);
        }
        self.state.engine.hub().unsubscribe_all(&me);
        actix::Running::Stop
    }
}

impl Handler<Live> for Session {
    type Result = ();

    fn handle(&mut self, live: Live, ctx: &mut Self::Context) {
        match live {
            Live::Event(event) => self.on_live(event, ctx),
            Live::Progress(progress) => self.send_progress(&progress, ctx),
            // After what was queued before it: the client keeps a prefix of
            // the stream and resumes from its last sequence.
            Live::Lagged => Self::close_with(
                ctx,
                ws::CloseCode::Other(TOO_SLOW),
                "too slow: reconnect and resubscribe with `after`",
            ),
        }
    }
}

impl Session {
    /// A fragment of a message: assembled, then handled as one text frame
    /// (a binary one is refused as a binary frame is). A message past
    /// [`MAX_MESSAGE_BYTES`] closes the connection with 1009 (too big), a
    /// fragment out of place with 1002 (protocol error).
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (first, bytes, last) = match item {
            actix_http::ws::Item::FirstText(bytes) => (Some(true), bytes, false),
            actix_http::ws::Item::FirstBinary(bytes) => (Some(false), bytes, false),
            actix_http::ws::Item::Continue(bytes) => (None, bytes, false),
            actix_http::ws::Item::Last(bytes) => (None, bytes, true),
        };
        match (first, self.fragments.as_mut()) {
            (Some(text), None) => self.fragments = Some((text, bytes.to_vec())),
            (None, Some((_, so_far))) => so_far.extend_from_slice(&bytes),
            (Some(_), Some(_)) | (None, None) => {
                return Self::close_with(
                    ctx,
                    ws::CloseCode::Protocol,
                    "a fragment out of place: a message starts with its first fragment, once",
                );
            }
        }
        if self
            .fragments
            .as_ref()
            .is_some_and(|(_, so_far)| so_far.len() > MAX_MESSAGE_BYTES)
        {
            return Self::close_with(
                ctx,
                ws::CloseCode::Size,
                &format!("a message is at most {MAX_MESSAGE_BYTES} bytes"),
            );
        }
        if !last {
            return;
        }
        let Some((text, whole)) = self.fragments.take() else {
            return;
        };
        if !text {
            return Self::send_error(ctx, "invalid_message", "send JSON text frames");
        }
        match String::from_utf8(whole) {
            Ok(text) => self.on_text(&text, ctx),
            Err(_) => Self::close_with(
                ctx,
                ws::CloseCode::Invalid,
                "a text message that is not UTF-8",
            ),
        }
    }

    fn close_with(ctx: &mut ws::WebsocketContext<Self>, code: ws::CloseCode, why: &str) {
        ctx.close(Some(ws::CloseReason {
            code,
            description: Some(why.to_string()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match message {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Ping(bytes)) => ctx.pong(&bytes),
            Ok(ws::Message::Continuation(item)) => self.on_fragment(item, ctx),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Binary(_)) => {
                Self::send_error(ctx, "invalid_message", "send JSON text frames")
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            // A frame the codec refuses (a continuation out of place, a
            // frame over its size): closed with a code the client can act on.
            Err(ws::ProtocolError::Overflow) => Self::close_with(
                ctx,
                ws::CloseCode::Size,
                &format!("a frame is at most {MAX_MESSAGE_BYTES} bytes"),
            ),
            Err(e) => Self::close_with(ctx, ws::CloseCode::Protocol, &e.to_string()),
        }
    }
}
