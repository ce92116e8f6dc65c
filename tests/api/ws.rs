//! The WebSocket at /api/ws: subscriptions with and without catch-up, the
//! refusals, and several clients on one run.

use std::fmt::Debug;
use std::time::Duration;

use awc::ws::{Frame, Message};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};

use crate::common::{diamond, spawn_app, TestApp};
use crate::on_both_backends;

/// How long a test waits for the next frame.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Opens a WebSocket to the app.
pub(crate) async fn connect(
    app: &TestApp,
) -> impl Stream<Item = Result<Frame, awc::error::WsProtocolError>>
       + Sink<Message, Error = awc::error::WsProtocolError>
       + Unpin {
    let (response, framed) = app
        .client
        .ws(format!("ws://127.0.0.1:{}/api/ws", app.port))
        .connect()
        .await
        .expect("the WebSocket handshake succeeds");
    assert_eq!(response.status().as_u16(), 101);
    framed
}

/// Sends a text frame.
pub(crate) async fn send_text<S>(ws: &mut S, text: String)
where
    S: Sink<Message> + Unpin,
    S::Error: Debug,
{
    ws.send(Message::Text(text.into()))
        .await
        .expect("the frame is sent");
}

/// Sends a JSON message.
pub(crate) async fn send<S>(ws: &mut S, message: Value)
where
    S: Sink<Message> + Unpin,
    S::Error: Debug,
{
    send_text(ws, message.to_string()).await;
}

/// The next JSON text message (control frames are skipped); panics on a
/// timeout, a close or a non-JSON frame.
pub(crate) async fn recv<S, E>(ws: &mut S) -> Value
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    E: Debug,
{
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("a frame arrives in time")
            .expect("the connection stays open")
            .expect("a well-formed frame");
        match frame {
            Frame::Text(bytes) => {
                return serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                    panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes))
                })
            }
            Frame::Ping(_) | Frame::Pong(_) => continue,
            other => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// Whether `event` ends a run: RunCompleted or RunFailed.
fn is_end(event: &Value) -> bool {
    matches!(
        event["event_type"].as_str(),
        Some("RunCompleted" | "RunFailed")
    )
}

/// Whether `event` is a system message (the engine's announcement).
fn is_system_message(event: &Value) -> bool {
    event["event_type"] == "MessagePosted" && event["payload"]["author"] == "system"
}

/// Asserts `events` end with RunCompleted and its announcement.
fn assert_completed(events: &[Value]) {
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert_eq!(events[n - 2]["event_type"], "RunCompleted", "{events:?}");
    assert_eq!(
        events[n - 1]["payload"]["content"],
        "Run completed.",
        "{events:?}"
    );
}

/// Reads `{"type":"event"}` messages until the run ends: RunCompleted (or
/// RunFailed) and then the system message announcing it, the last event of
/// that commit. Asserts each is an event of `run`.
pub(crate) async fn events_until_finished<S, E>(ws: &mut S, run: &str) -> Vec<Value>
where
    S: Stream<Item = Result<Frame, E>> + Unpin,
    E: Debug,
{
    let mut events: Vec<Value> = Vec::new();
    loop {
        let message = recv(ws).await;
        assert_eq!(message["type"], "event", "{message}");
        assert_eq!(message["run_id"], run, "{message}");
        let ended = events.iter().any(is_end);
        let announced = ended && is_system_message(&message);
        events.push(message);
        if announced {
            return events;
        }
    }
}

pub(crate) fn sequences(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect()
}

/// The fields a WebSocket event shares with the events endpoint.
pub(crate) fn essentials(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .map(|e| {
            json!({
                "run_id": e["run_id"],
                "sequence": e["sequence"],
                "event_type": e["event_type"],
                "payload": e["payload"],
            })
        })
        .collect()
}

pub(crate) async fn subscribe_ok<S, E>(ws: &mut S, message: Value)
where
    S: Stream<Item = Result<Frame, E>> + Sink<Message> + Unpin,
    E: Debug,
    <S as Sink<Message>>::Error: Debug,
{
    send(ws, message).await;
    let reply = recv(ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

on_both_backends!(
    a_subscriber_from_zero_gets_every_event_in_order,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(50)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let mut ws = connect(&app).await;
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let first = recv(&mut ws).await;
        assert_eq!(first["type"], "subscribed", "{first}");
        assert_eq!(first["run_id"], run.as_str(), "{first}");
        let received = events_until_finished(&mut ws, &run).await;
        assert_completed(&received);
        assert_eq!(received[0]["event_type"], "RunStarted");
        assert_eq!(
            sequences(&received),
            (1..=received.len() as i64).collect::<Vec<_>>()
        );
        app.wait_finished(&run, Duration::from_secs(20)).await;
        let logged = app.events(&run).await;
        assert_eq!(essentials(&received), essentials(&logged));
    }
);

on_both_backends!(a_subscriber_without_after_gets_only_new_events, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("slow", diamond(300)).await;
    let run = app.run_id(&template, json!({})).await;
    // Let the run get under way, so that there is a past to leave out.
    loop {
        let events = app.events(&run).await;
        if events.iter().any(|e| e["event_type"] == "StepDispatched") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = app.events(&run).await.len() as i64;
    let mut ws = connect(&app).await;
    subscribe_ok(&mut ws, json!({"type": "subscribe", "run_id": run})).await;
    let received = events_until_finished(&mut ws, &run).await;
    assert_completed(&received);
    let seqs = sequences(&received);
    assert!(
        seqs[0] > before,
        "got an old event: first sequence {} with {before} in the log before subscribing",
        seqs[0]
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "not increasing or duplicated: {seqs:?}"
    );
    // Live delivery has no gap either: the received events are the tail
    // of the log.
    app.wait_finished(&run, Duration::from_secs(20)).await;
    let logged = app.events(&run).await;
    let tail = &logged[(seqs[0] - 1) as usize..];
    assert_eq!(essentials(&received), essentials(tail));
});

on_both_backends!(
    a_reconnecting_client_gets_exactly_the_events_after_its_sequence,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({})).await;
        app.wait_finished(&run, Duration::from_secs(20)).await;
        let logged = app.events(&run).await;
        let n = logged.len() as i64;
        assert!(n >= 4, "{logged:?}");
        let k = n / 2;
        let mut ws = connect(&app).await;
        subscribe_ok(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": k}),
        )
        .await;
        let received = events_until_finished(&mut ws, &run).await;
        assert_eq!(sequences(&received), ((k + 1)..=n).collect::<Vec<_>>());
        assert_eq!(essentials(&received), essentials(&logged[k as usize..]));
        // Nothing more comes: the run is finished.
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
        // Asking again from an earlier sequence on the same connection
        // replays from there.
        subscribe_ok(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 1}),
        )
        .await;
        let again = events_until_finished(&mut ws, &run).await;
        assert_eq!(sequences(&again), (2..=n).collect::<Vec<_>>());
    }
);

on_both_backends!(
    bad_messages_are_refused_and_the_connection_keeps_working,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({})).await;
        app.wait_finished(&run, Duration::from_secs(20)).await;
        let mut ws = connect(&app).await;

        let expect_error = |reply: Value, code: &str| {
            assert_eq!(reply["type"], "error", "{reply}");
            assert_eq!(reply["code"], code, "{reply}");
            assert!(reply["message"].is_string(), "{reply}");
        };

        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": "no-such-run", "after": 0}),
        )
        .await;
        expect_error(recv(&mut ws).await, "run_not_found");

        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": "not a valid id!"}),
        )
        .await;
        expect_error(recv(&mut ws).await, "invalid_run_id");

        send(&mut ws, json!({"type": "subscribe", "run_id": ""})).await;
        expect_error(recv(&mut ws).await, "invalid_run_id");

        send_text(&mut ws, "this is not JSON".to_string()).await;
        expect_error(recv(&mut ws).await, "invalid_message");

        send(&mut ws, json!({"type": "shout", "run_id": run})).await;
        expect_error(recv(&mut ws).await, "invalid_message");

        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": -1}),
        )
        .await;
        expect_error(recv(&mut ws).await, "invalid_after");

        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));

        // After all that, a valid subscription still works.
        subscribe_ok(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let received = events_until_finished(&mut ws, &run).await;
        let logged = app.events(&run).await;
        assert_eq!(essentials(&received), essentials(&logged));
    }
);

on_both_backends!(two_clients_on_one_run_both_get_the_full_stream, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(50)).await;
    let run = app.run_id(&template, json!({})).await;
    let mut first = connect(&app).await;
    let mut second = connect(&app).await;
    let subscribe = json!({"type": "subscribe", "run_id": run, "after": 0});
    subscribe_ok(&mut first, subscribe.clone()).await;
    subscribe_ok(&mut second, subscribe).await;
    let (a, b) = futures::join!(
        events_until_finished(&mut first, &run),
        events_until_finished(&mut second, &run)
    );
    app.wait_finished(&run, Duration::from_secs(20)).await;
    let logged = essentials(&app.events(&run).await);
    assert_eq!(essentials(&a), logged);
    assert_eq!(essentials(&b), logged);
});

on_both_backends!(
    a_subscriber_to_all_runs_gets_every_event_of_every_new_run_once,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(20)).await;
        let mut ws = connect(&app).await;
        send(&mut ws, json!({"type": "subscribe_all"})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed_all");
        let first = app.run_id(&template, json!({"n": 1})).await;
        let second = app.run_id(&template, json!({"n": 2})).await;
        let mut seen: std::collections::HashMap<String, Vec<Value>> = Default::default();
        let mut finished = 0;
        while finished < 2 {
            let message = recv(&mut ws).await;
            assert_eq!(message["type"], "event", "{message}");
            let run = message["run_id"].as_str().unwrap().to_string();
            assert!(
                run == first || run == second,
                "an event of an unrelated run: {message}"
            );
            let stream = seen.entry(run).or_default();
            // A run's stream ends with the announcement of its end.
            if stream.iter().any(is_end) && is_system_message(&message) {
                finished += 1;
            }
            stream.push(message);
        }
        for run in [&first, &second] {
            app.wait_finished(run, Duration::from_secs(20)).await;
            // Both runs started after the subscription: each stream is the
            // whole log, in order, once.
            assert_eq!(
                essentials(&seen[run.as_str()]),
                essentials(&app.events(run).await)
            );
        }
        send(&mut ws, json!({"type": "unsubscribe_all"})).await;
        assert_eq!(recv(&mut ws).await["type"], "unsubscribed_all");
    }
);

on_both_backends!(
    following_every_run_and_chosen_runs_on_one_connection_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({})).await;
        app.wait_finished(&run, Duration::from_secs(20)).await;
        let mut ws = connect(&app).await;
        send(&mut ws, json!({"type": "subscribe_all"})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed_all");
        send(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let reply = recv(&mut ws).await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "subscription_conflict", "{reply}");
        send(&mut ws, json!({"type": "unsubscribe_all"})).await;
        assert_eq!(recv(&mut ws).await["type"], "unsubscribed_all");
        // Now a chosen run works, and every run is refused in turn.
        let mut other = connect(&app).await;
        subscribe_ok(
            &mut other,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let events = events_until_finished(&mut other, &run).await;
        assert_eq!(essentials(&events), essentials(&app.events(&run).await));
        send(&mut other, json!({"type": "subscribe_all"})).await;
        let reply = recv(&mut other).await;
        assert_eq!(reply["code"], "subscription_conflict", "{reply}");
    }
);

/// A WebSocket over a raw socket whose receive buffer is small, so that a
/// test can stop reading it and let the server's side fill up.
struct RawWs {
    stream: tokio::net::TcpStream,
}

/// What [`RawWs::next_frame`] read.
#[derive(Debug)]
enum RawFrame {
    Text(Value),
    Close(Option<u16>),
    /// The server closed the socket without a close frame.
    Eof,
}

impl RawWs {
    /// Opens the socket, upgrades it with the admin's token and subscribes
    /// to `run`; returns once the server said `subscribed`.
    async fn subscribed(app: &TestApp, run: &str) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut stream = socket
            .connect(([127, 0, 0, 1], app.port).into())
            .await
            .expect("connects");
        let token = app.admin_token.as_deref().expect("accounts are on");
        let request = format!(
            "GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n",
            app.port
        );
        stream.write_all(request.as_bytes()).await.expect("sent");
        // The answer's head, a byte at a time (frames may follow it).
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.expect("the answer");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let mut ws = Self { stream };
        ws.send(&json!({"type": "subscribe", "run_id": run})).await;
        match ws.next_frame().await {
            RawFrame::Text(m) if m["type"] == "subscribed" => ws,
            other => panic!("not subscribed: {other:?}"),
        }
    }

    /// Sends `message` as one masked text frame (as clients must).
    async fn send(&mut self, message: &Value) {
        use tokio::io::AsyncWriteExt;
        let payload = message.to_string().into_bytes();
        assert!(payload.len() < 126, "a short message");
        let mask = [0x5a, 0x13, 0xc7, 0x01];
        let mut frame = vec![0x81, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.expect("sent");
    }

    /// The next text or close frame (pings and pongs are skipped).
    async fn next_frame(&mut self) -> RawFrame {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 2];
            let read = tokio::time::timeout(READ_TIMEOUT, self.stream.read_exact(&mut head))
                .await
                .expect("a frame arrives in time");
            if read.is_err() {
                return RawFrame::Eof;
            }
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).await.expect("a length");
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).await.expect("a length");
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream
                .read_exact(&mut payload)
                .await
                .expect("a payload");
            match head[0] & 0x0f {
                0x1 => return RawFrame::Text(serde_json::from_slice(&payload).expect("JSON text")),
                0x8 => {
                    return RawFrame::Close(
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]])),
                    )
                }
                0x9 | 0xa => continue,
                other => panic!("unexpected opcode {other}"),
            }
        }
    }
}

/// A server whose WebSocket connections queue at most `messages` for
/// sending, and that takes many messages per run.
async fn with_outbound_queue(backend: crate::common::Backend, messages: usize) -> Option<TestApp> {
    crate::common::spawn_app_with_options(
        backend,
        crate::common::AppOptions {
            config: Some(format!(
                "[limits]\nws_outbound_queue = {messages}\nmessages_per_run_per_minute = 100000\n"
            )),
            ..Default::default()
        },
    )
    .await
}

/// Posted messages in the slow-reader test, and how big each is: together
/// (9.6 MB) more than twice what the socket buffers (a sender's buffer
/// grows to `net.ipv4.tcp_wmem`'s maximum, 4 MiB here) and the server's
/// write buffer can hold.
const FLOOD_MESSAGES: usize = 320;
const FLOOD_BYTES: usize = 30_000;

on_both_backends!(
    a_client_that_stops_reading_is_closed_as_too_slow_and_others_get_everything,
    |backend| {
        let Some(app) = with_outbound_queue(backend, 8).await else {
            return;
        };
        let template = app.template_id("manual", diamond(0)).await;
        let run = app.manual_run_id(&template, json!({})).await;
        let before = app.events(&run).await.len() as i64;
        // A client that reads everything, as it comes.
        let mut reader = connect(&app).await;
        subscribe_ok(&mut reader, json!({"type": "subscribe", "run_id": run})).await;
        let reading = actix_web::rt::spawn(async move {
            let mut got = Vec::new();
            while got.len() < FLOOD_MESSAGES {
                let message = recv(&mut reader).await;
                if message["event_type"] == "MessagePosted" {
                    got.push(message);
                }
            }
            got
        });
        // And one that stops reading once subscribed.
        let mut slow = RawWs::subscribed(&app, &run).await;
        let text = "x".repeat(FLOOD_BYTES);
        for i in 0..FLOOD_MESSAGES {
            let (status, body) = app
                .post_message(&run, json!({"content": format!("{i} {text}")}))
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let got = reading.await.expect("the reader ends");
        let contents: Vec<String> = got
            .iter()
            .map(|m| m["payload"]["content"].as_str().unwrap_or("").to_string())
            .collect();
        let expected: Vec<String> = (0..FLOOD_MESSAGES).map(|i| format!("{i} {text}")).collect();
        assert!(contents == expected, "the reading client missed messages");

        // The slow one, read again: a prefix of the stream with no gap,
        // then the close code that says to reconnect.
        let mut last = before;
        let close = loop {
            match slow.next_frame().await {
                RawFrame::Text(m) => {
                    assert_eq!(m["type"], "event", "{m}");
                    let sequence = m["sequence"].as_i64().expect("a sequence");
                    assert_eq!(sequence, last + 1, "a gap");
                    last = sequence;
                }
                other => break other,
            }
        };
        assert!(matches!(close, RawFrame::Close(Some(4008))), "{close:?}");
        let total = app.events(&run).await.len() as i64;
        assert!(last < total, "the slow client was sent everything");
        // Nothing follows the close.
        assert!(matches!(slow.next_frame().await, RawFrame::Eof));

        // As the code says: reconnect and resubscribe with `after`.
        let mut again = connect(&app).await;
        subscribe_ok(
            &mut again,
            json!({"type": "subscribe", "run_id": run, "after": last}),
        )
        .await;
        for sequence in last + 1..=total {
            let message = recv(&mut again).await;
            assert_eq!(message["sequence"], sequence, "{message}");
        }
    }
);

on_both_backends!(
    a_client_catching_up_under_live_traffic_is_not_closed_and_misses_nothing,
    |backend| {
        // A queue of four messages: live traffic during a catch-up would
        // pass it if the catch-up held the session up.
        let Some(app) = with_outbound_queue(backend, 4).await else {
            return;
        };
        let template = app.template_id("manual", diamond(0)).await;
        // A run with a long history to catch up on (more than a page of the
        // log), and a second run, followed live.
        let long = app.manual_run_id(&template, json!({})).await;
        let busy = app.manual_run_id(&template, json!({})).await;
        for chunk in (0..CATCH_UP_HISTORY).collect::<Vec<_>>().chunks(8) {
            let posts = chunk
                .iter()
                .map(|i| app.post_message(&long, json!({"content": format!("before {i}")})));
            for (status, body) in futures::future::join_all(posts).await {
                assert_eq!(status, 201, "{body}");
            }
        }
        let mut ws = connect(&app).await;
        subscribe_ok(&mut ws, json!({"type": "subscribe", "run_id": busy})).await;
        let first_busy = app.events(&busy).await.len() as i64 + 1;

        // Messages go to both runs while the client subscribes to the long
        // one from the start and reads everything as it comes; a last
        // message to each run says that the posting is over.
        let posting = async {
            // Four posters at once, so that events come faster than the
            // catch-up reads.
            let poster = |n: usize| {
                let (busy, long) = (&busy, &long);
                let app = &app;
                async move {
                    for i in 0..LIVE_MESSAGES {
                        for run in [busy, long] {
                            let (status, body) = app
                                .post_message(run, json!({"content": format!("live {n}.{i}")}))
                                .await;
                            assert_eq!(status, 201, "{body}");
                        }
                    }
                }
            };
            futures::future::join_all((0..4).map(poster)).await;
            for run in [&busy, &long] {
                let (status, body) = app.post_message(run, json!({"content": "over"})).await;
                assert_eq!(status, 201, "{body}");
            }
        };
        let reading = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            send(
                &mut ws,
                json!({"type": "subscribe", "run_id": long, "after": 0}),
            )
            .await;
            let (mut long_seen, mut busy_seen) = (Vec::new(), Vec::new());
            let (mut long_over, mut busy_over) = (false, false);
            let mut subscribed = false;
            while !(long_over && busy_over) {
                let message = recv(&mut ws).await;
                let over = message["payload"]["content"] == "over";
                match (message["type"].as_str(), message["run_id"].as_str()) {
                    (Some("subscribed"), Some(run)) if run == long.as_str() => {
                        assert!(long_seen.is_empty(), "subscribed comes first");
                        subscribed = true;
                    }
                    (Some("event"), Some(run)) if run == long.as_str() => {
                        long_seen.push(message["sequence"].as_i64().expect("a sequence"));
                        long_over |= over;
                    }
                    (Some("event"), Some(run)) if run == busy.as_str() => {
                        busy_seen.push(message["sequence"].as_i64().expect("a sequence"));
                        busy_over |= over;
                    }
                    _ => panic!("unexpected: {message}"),
                }
            }
            (subscribed, long_seen, busy_seen)
        };
        let ((), (subscribed, long_seen, busy_seen)) = tokio::join!(posting, reading);
        assert!(subscribed);
        // Each list ends with the run's last event ("over"); every event
        // before it came once, in order.
        let contiguous = |seen: &[i64], first: i64| {
            let expected: Vec<i64> = (first..=*seen.last().expect("events came")).collect();
            seen == expected.as_slice()
        };
        assert!(
            contiguous(&long_seen, 1),
            "the long run: {} events, not 1..={:?} in order",
            long_seen.len(),
            long_seen.last()
        );
        assert!(
            long_seen.len() > CATCH_UP_HISTORY + 4 * LIVE_MESSAGES,
            "{}",
            long_seen.len()
        );
        assert!(
            contiguous(&busy_seen, first_busy),
            "the busy run: {} events, not {first_busy}..={:?} in order",
            busy_seen.len(),
            busy_seen.last()
        );
        assert!(busy_seen.len() > 4 * LIVE_MESSAGES, "{}", busy_seen.len());
    }
);

/// Messages posted to the long run before the catch-up (several pages of
/// the log, 500 events each), and by each of four posters to each run
/// during it.
const CATCH_UP_HISTORY: usize = 2_000;
const LIVE_MESSAGES: usize = 50;

/// Posts `count` messages to `run`, eight at a time.
async fn post_many(app: &TestApp, run: &str, count: usize, label: &str) {
    for chunk in (0..count).collect::<Vec<_>>().chunks(8) {
        let posts = chunk
            .iter()
            .map(|i| app.post_message(run, json!({"content": format!("{label} {i}")})));
        for (status, body) in futures::future::join_all(posts).await {
            assert_eq!(status, 201, "{body}");
        }
    }
}

/// The sequences of the events of `run` among `messages`.
fn sequences_of(messages: &[Value], run: &str) -> Vec<i64> {
    messages
        .iter()
        .filter(|m| m["type"] == "event" && m["run_id"] == run)
        .map(|m| m["sequence"].as_i64().expect("a sequence"))
        .collect()
}

on_both_backends!(
    subscribes_that_supersede_a_catch_up_and_an_unsubscribe_during_one_lose_and_leak_nothing,
    |backend| {
        let Some(app) = with_outbound_queue(backend, 256).await else {
            return;
        };
        let template = app.template_id("manual", diamond(0)).await;
        let long = app.manual_run_id(&template, json!({})).await;
        let other = app.manual_run_id(&template, json!({})).await;
        post_many(&app, &long, 1_200, "before").await;
        post_many(&app, &other, 1_200, "before").await;
        let mut ws = connect(&app).await;
        subscribe_ok(&mut ws, json!({"type": "subscribe", "run_id": long})).await;

        // While messages go to the long run: two subscribes without
        // `after`, then one from the start, sent at once (each supersedes
        // the catch-up before it); a subscription to the other run taken
        // back before its catch-up could end; a ping as a fence.
        let posting = async {
            post_many(&app, &long, 40, "live").await;
            let (status, body) = app.post_message(&long, json!({"content": "over"})).await;
            assert_eq!(status, 201, "{body}");
        };
        let reading = async {
            for message in [
                json!({"type": "subscribe", "run_id": long}),
                json!({"type": "subscribe", "run_id": long}),
                json!({"type": "subscribe", "run_id": long, "after": 0}),
                json!({"type": "subscribe", "run_id": other, "after": 0}),
                json!({"type": "unsubscribe", "run_id": other}),
                json!({"type": "ping"}),
            ] {
                send(&mut ws, message).await;
            }
            let mut got = Vec::new();
            loop {
                let message = recv(&mut ws).await;
                let over =
                    message["run_id"] == long.as_str() && message["payload"]["content"] == "over";
                got.push(message);
                if over {
                    return got;
                }
            }
        };
        let ((), mut got) = tokio::join!(posting, reading);
        // Nothing of the other run comes after its unsubscribe was
        // answered (fenced by a ping sent after it, answered after it).
        send(&mut ws, json!({"type": "ping"})).await;
        loop {
            let message = recv(&mut ws).await;
            let pong = message["type"] == "pong";
            got.push(message);
            if pong && got.iter().filter(|m| m["type"] == "pong").count() == 2 {
                break;
            }
        }
        let answered = |kind: &str, run: &str| {
            got.iter()
                .filter(|m| m["type"] == kind && m["run_id"] == run)
                .count()
        };
        assert_eq!(
            answered("subscribed", &long),
            3,
            "each subscribe is answered"
        );
        assert_eq!(answered("unsubscribed", &other), 1);
        let unsubscribed = got
            .iter()
            .position(|m| m["type"] == "unsubscribed")
            .expect("unsubscribed");
        assert!(
            sequences_of(&got[unsubscribed..], &other).is_empty(),
            "the other run's events came after its unsubscribe"
        );
        // The long run, after the answers to the three subscribes: every
        // event from the first, once, in order, to the last.
        let last_answer = got
            .iter()
            .rposition(|m| m["type"] == "subscribed" && m["run_id"] == long.as_str())
            .expect("subscribed");
        let replayed = sequences_of(&got[last_answer..], &long);
        let expected: Vec<i64> = (1..=*replayed.last().expect("events")).collect();
        assert!(
            replayed == expected,
            "the long run after its last subscribe: {} events, not 1..={:?}",
            replayed.len(),
            replayed.last()
        );
    }
);

on_both_backends!(
    a_user_following_another_users_busy_run_gets_run_not_found_and_no_event,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("manual", diamond(0)).await;
        let ada = crate::accounts::user(&app, "ada", "user").await;
        let bob = crate::accounts::user(&app, "bob", "user").await;
        let ada_token = crate::accounts::token_text(&app, &ada).await;
        let bob_token = crate::accounts::token_text(&app, &bob).await;
        let (status, run) = app
            .request_as(
                Some(&ada_token),
                "POST",
                "/api/runs",
                Some(json!({"template_id": template, "input": {}, "auto_run": false})),
            )
            .await;
        assert_eq!(status, 201, "{run}");
        let run = run["id"].as_str().expect("id").to_string();
        let mut ws = crate::accounts::ws_with(&app, "", Some(&bob_token))
            .await
            .expect("upgrade");
        // Ada's run is busy while Bob asks for it, with and without
        // `after`.
        let posting = async {
            for i in 0..60 {
                let (status, body) = app
                    .request_as(
                        Some(&ada_token),
                        "POST",
                        &format!("/api/runs/{run}/messages"),
                        Some(json!({"content": format!("busy {i}")})),
                    )
                    .await;
                assert_eq!(status, 201, "{body}");
            }
        };
        let asking = async {
            for after in [Some(0), None, Some(5), None] {
                let message = match after {
                    Some(after) => json!({"type": "subscribe", "run_id": run, "after": after}),
                    None => json!({"type": "subscribe", "run_id": run}),
                };
                send(&mut ws, message).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::join!(posting, asking);
        // One refusal per subscribe, nothing else; then nothing more (a
        // ping is answered next).
        for _ in 0..4 {
            let message = recv(&mut ws).await;
            assert_eq!(message["type"], "error", "{message}");
            assert_eq!(message["code"], "run_not_found", "{message}");
        }
        send(&mut ws, json!({"type": "ping"})).await;
        assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
    }
);
