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
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiState, Caller};

mod catch_up;
use crate::domain::ids::RunId;
use crate::engine::Live;
use catch_up::Followed;

/// How often the server pings.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// A client silent this long is disconnected.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
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
    /// Its reads of the log, in flight and waiting.
    reads: catch_up::Reads,
    /// Whether the session gets every run's live events.
    all: bool,
    last_heard: Instant,
    /// A fragmented message being assembled: whether it is text, and its
    /// bytes so far.
    fragments: Option<(bool, Vec<u8>)>,
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
        reads: catch_up::Reads::default(),
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
