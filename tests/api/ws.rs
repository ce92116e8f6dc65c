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
