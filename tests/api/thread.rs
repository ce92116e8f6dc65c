//! The conversation thread: messages, idempotency, control actions as
//! messages, instructions, system messages, redirect.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    assert_refused, diamond, expect_error, is_event as is, spawn_app, types, unique_name,
    without_thread, Reply, TestApp,
};
use crate::on_both_backends;
use crate::ws::{connect, essentials, events_until_finished, sequences, subscribe_ok};

/// How long a test waits for a run or its thread to reach a state.
const WAIT: Duration = Duration::from_secs(15);

/// Longest message content accepted (characters).
const MAX_CONTENT: usize = 32_000;

/// A step of the `template` agent that renders the instructions its
/// attempt received, joined by `;`.
fn instructions_step(depends_on: &[&str]) -> Value {
    json!({
        "agent": "template",
        "depends_on": depends_on,
        "config": {"text": "{{ instructions | join(';') }}"}
    })
}

/// `slow` (echo, `delay_ms`) then `next` and `last`, which render the
/// instructions they receive.
fn slow_then_instructed(delay_ms: u64) -> Value {
    json!({"steps": {
        "slow": {"agent": "echo", "config": {"delay_ms": delay_ms}},
        "next": instructions_step(&["slow"]),
        "last": instructions_step(&["next"])
    }})
}

/// One echo step that runs for a long time unless the run asks it to stop
/// (pause, cancel, redirect).
fn stoppable() -> Value {
    json!({"steps": {
        "work": {"agent": "echo", "config": {"delay_ms": 60_000, "stop_early": true}}
    }})
}

/// `first` renders the topic and the instructions it received; `slow`
/// then runs for a long time unless the run asks it to stop.
fn redirectable() -> Value {
    json!({"steps": {
        "first": {
            "agent": "template",
            "config": {"text": "{{ input.topic }}|{{ instructions | join(';') }}"}
        },
        "slow": {
            "agent": "echo",
            "depends_on": ["first"],
            "config": {"delay_ms": 60_000, "stop_early": true}
        }
    }})
}

fn messages_path(run: &str) -> String {
    format!("/api/runs/{run}/messages")
}

fn redirect_path(run: &str) -> String {
    format!("/api/runs/{run}/redirect")
}

/// Starts a run in manual mode: nothing is dispatched, so its log holds
/// still while a test posts to it.
async fn manual_run(app: &TestApp, template: &str) -> String {
    let (status, body) = app
        .post(
            "/api/runs",
            json!({"template_id": template, "input": {"topic": "owls"}, "auto_run": false}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["auto_run"], false, "{body}");
    body["id"].as_str().expect("id").to_string()
}

/// A run of `diamond(0)` that has completed.
async fn completed_run(app: &TestApp) -> String {
    let template = app.template_id("quick", diamond(0)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    let detail = app.wait_finished(&run, WAIT).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    run
}

/// The body of a reply with `status`.
fn body_of(reply: Reply, status: u16) -> Value {
    let (got, body) = reply;
    assert_eq!(got, status, "{body}");
    body
}

/// The number of a message view.
fn number(message: &Value) -> u64 {
    message["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no id: {message}"))
}

/// The index of the only event matching `pred`.
fn only(events: &[Value], what: &str, pred: impl Fn(&Value) -> bool) -> usize {
    let found: Vec<usize> = (0..events.len()).filter(|&i| pred(&events[i])).collect();
    assert_eq!(found.len(), 1, "expected one {what}: {:?}", types(events));
    found[0]
}

/// Whether `event` changes the status of message `message` to `status`.
fn is_status_change(event: &Value, message: u64, status: &str) -> bool {
    event["event_type"] == "MessageStatusChanged"
        && event["payload"]["message"] == message
        && event["payload"]["status"] == status
}

/// The messages of `author`, in order.
fn by_author<'a>(messages: &'a [Value], author: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["author"] == author).collect()
}

/// The contents of the system messages, in order.
fn system_texts(messages: &[Value]) -> Vec<String> {
    by_author(messages, "system")
        .iter()
        .map(|m| m["content"].as_str().expect("content").to_string())
        .collect()
}

async fn wait_status(app: &TestApp, run: &str, status: &str) -> Value {
    app.wait_run(run, &format!("status is {status}"), WAIT, |d| {
        d["status"] == status
    })
    .await
}

/// Waits until `step` runs its attempt `attempt`.
async fn wait_running(app: &TestApp, run: &str, step: &str, attempt: u64) -> Value {
    app.wait_run(run, &format!("{step} runs attempt {attempt}"), WAIT, |d| {
        d["steps"][step]["status"] == "running" && d["steps"][step]["attempt"] == attempt
    })
    .await
}

/// Waits until message `id` has `status`; returns it.
async fn wait_message(app: &TestApp, run: &str, id: u64, status: &str) -> Value {
    let messages = app
        .wait_messages(run, &format!("message {id} is {status}"), WAIT, |all| {
            all.iter().any(|m| m["id"] == id && m["status"] == status)
        })
        .await;
    messages
        .into_iter()
        .find(|m| m["id"] == id)
        .expect("the message")
}

/// The latest content of an artifact.
async fn artifact(app: &TestApp, run: &str, name: &str) -> Value {
    let (status, body) = app.get(&format!("/api/runs/{run}/artifacts/{name}")).await;
    assert_eq!(status, 200, "{name}: {body}");
    let versions = body["versions"].as_array().expect("versions");
    versions
        .iter()
        .max_by_key(|v| v["version"].as_u64())
        .expect("a version")["content"]
        .clone()
}

/// Posts `body` to a finished run's thread: the message is recorded with
/// status ignored, and nothing else. Returns the message.
async fn assert_only_message_recorded(app: &TestApp, run: &str, body: Value) -> Value {
    let before = app.events(run).await;
    let counts = app.counts().await;
    let message = body_of(app.post_message(run, body.clone()).await, 201);
    let after = app.events(run).await;
    assert_eq!(after[..before.len()], before[..], "the log changed");
    assert_eq!(
        types(&after[before.len()..]),
        ["MessagePosted"],
        "posting {body} recorded more than the message"
    );
    let posted = &after[before.len()]["payload"];
    assert_eq!(posted["message"], message["id"], "{posted}");
    assert_eq!(posted["status"], message["status"], "{posted}");
    assert_eq!(app.counts().await, counts, "posting {body} started a run");
    message
}

on_both_backends!(
    comments_and_instructions_are_listed_in_order_and_paged,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = manual_run(&app, &template).await;
        let (status, empty) = app.get(&messages_path(&run)).await;
        assert_eq!(status, 200, "{empty}");
        assert_eq!(empty, json!({"items": [], "next_cursor": null}));

        let comment = body_of(
            app.post_message(&run, json!({"content": "Looks good so far."}))
                .await,
            201,
        );
        assert_eq!(comment["id"], 1, "{comment}");
        assert_eq!(comment["author"], "user", "{comment}");
        assert_eq!(comment["action"], "comment", "{comment}");
        assert_eq!(comment["content"], "Looks good so far.", "{comment}");
        assert!(comment["metadata"].is_null(), "{comment}");
        assert!(comment["step"].is_null(), "{comment}");
        assert_eq!(comment["status"], "processed", "{comment}");
        assert!(comment["reason"].is_null(), "{comment}");
        assert!(comment["idempotency_key"].is_null(), "{comment}");
        assert!(comment["created_at"].is_string(), "{comment}");
        assert!(comment["updated_at"].is_string(), "{comment}");

        let instruction = body_of(
            app.post_message(
                &run,
                json!({
                    "action": "instruction",
                    "content": "Use metric units.",
                    "metadata": {"source": "review", "priority": 2}
                }),
            )
            .await,
            201,
        );
        assert_eq!(instruction["id"], 2, "{instruction}");
        assert_eq!(instruction["action"], "instruction", "{instruction}");
        assert_eq!(instruction["status"], "pending", "{instruction}");
        assert_eq!(
            instruction["metadata"],
            json!({"source": "review", "priority": 2})
        );
        for n in 3..=5 {
            let posted = body_of(
                app.post_message(&run, json!({"content": format!("Note {n}.")}))
                    .await,
                201,
            );
            assert_eq!(posted["id"], n, "{posted}");
        }

        let (status, page) = app.get(&messages_path(&run)).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["next_cursor"].is_null(), "{page}");
        let all = page["items"].as_array().expect("items").clone();
        assert_eq!(all.iter().map(number).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
        assert_eq!(all[0], comment);
        assert_eq!(all[1], instruction);
        assert_eq!(app.run(&run).await["messages"], 5);

        // Pages of two, each cursor the last id of the page before.
        let mut paged = Vec::new();
        let mut cursors = Vec::new();
        let mut path = format!("{}?limit=2", messages_path(&run));
        loop {
            let (status, page) = app.get(&path).await;
            assert_eq!(status, 200, "{page}");
            let items = page["items"].as_array().expect("items");
            assert!(items.len() <= 2, "{page}");
            paged.extend(items.iter().cloned());
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    assert_eq!(cursor, number(items.last().unwrap()).to_string());
                    cursors.push(cursor.to_string());
                    path = format!("{}?limit=2&cursor={cursor}", messages_path(&run));
                }
                None => break,
            }
        }
        assert_eq!(cursors, ["2", "4"]);
        assert_eq!(paged, all);
        // A page that ends exactly at the last message says there is no more.
        let (_, exact) = app
            .get(&format!("{}?limit=2&cursor=3", messages_path(&run)))
            .await;
        assert_eq!(
            exact["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(number)
                .collect::<Vec<_>>(),
            [4, 5]
        );
        assert!(exact["next_cursor"].is_null(), "{exact}");
        let (_, beyond) = app.get(&format!("{}?cursor=5", messages_path(&run))).await;
        assert_eq!(beyond, json!({"items": [], "next_cursor": null}));

        // The log holds one MessagePosted per message, as posted.
        let events = app.events(&run).await;
        let posted: Vec<&Value> = events
            .iter()
            .filter(|e| e["event_type"] == "MessagePosted")
            .map(|e| &e["payload"])
            .collect();
        assert_eq!(posted.len(), 5, "{:?}", types(&events));
        assert_eq!(posted[1]["message"], 2);
        assert_eq!(posted[1]["author"], "user");
        assert_eq!(posted[1]["action"], "instruction");
        assert_eq!(posted[1]["content"], "Use metric units.");
        assert_eq!(posted[1]["status"], "pending");
        assert_eq!(
            posted[1]["metadata"],
            json!({"source": "review", "priority": 2})
        );
    }
);

on_both_backends!(
    a_repeated_idempotency_key_returns_the_first_message_and_records_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = manual_run(&app, &template).await;
        let body = json!({"content": "Ship it.", "metadata": {"n": 1}});

        let first = body_of(
            app.post_message_with_key(&run, body.clone(), "key-1").await,
            201,
        );
        assert_eq!(first["idempotency_key"], "key-1", "{first}");
        let events = app.events(&run).await;
        let again = body_of(
            app.post_message_with_key(&run, body.clone(), "key-1").await,
            200,
        );
        assert_eq!(again, first);
        assert_eq!(
            app.events(&run).await,
            events,
            "a repeated post recorded events"
        );
        let posted: Vec<&Value> = events
            .iter()
            .filter(|e| e["event_type"] == "MessagePosted")
            .collect();
        assert_eq!(posted.len(), 1, "{:?}", types(&events));
        assert_eq!(posted[0]["payload"]["idempotency_key"], "key-1");

        // The same key with anything different is refused.
        for different in [
            json!({"content": "Ship it now.", "metadata": {"n": 1}}),
            json!({"content": "Ship it.", "metadata": {"n": 2}}),
            json!({"content": "Ship it."}),
            json!({"content": "Ship it.", "metadata": {"n": 1}, "action": "instruction"}),
        ] {
            assert_refused(
                &app,
                &run,
                app.post_message_with_key(&run, different, "key-1"),
                422,
                "idempotency_key_reused",
            )
            .await;
        }
        assert_eq!(app.messages(&run).await, std::slice::from_ref(&first));

        // Keys belong to a run: another run takes the same key.
        let other = manual_run(&app, &template).await;
        let elsewhere = body_of(app.post_message_with_key(&other, body, "key-1").await, 201);
        assert_eq!(elsewhere["id"], 1, "{elsewhere}");

        // A control action under a key takes effect once: the second post
        // is not a second pause (which would be ignored as already paused).
        let pause = json!({"action": "pause", "content": ""});
        let paused = body_of(
            app.post_message_with_key(&run, pause.clone(), "pause-1")
                .await,
            201,
        );
        assert_eq!(paused["status"], "processed", "{paused}");
        wait_status(&app, &run, "paused").await;
        let events = app.events(&run).await;
        let again = body_of(app.post_message_with_key(&run, pause, "pause-1").await, 200);
        assert_eq!(again, paused);
        assert_eq!(app.events(&run).await, events);
        assert_eq!(
            events
                .iter()
                .filter(|e| e["event_type"] == "PauseRequested")
                .count(),
            1,
            "{:?}",
            types(&events)
        );
    }
);

on_both_backends!(
    an_instruction_posted_while_a_step_runs_is_handed_to_the_next_step_dispatched,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id("instructed", slow_then_instructed(2000))
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, "slow", 1).await;

        let first = body_of(
            app.post_message(
                &run,
                json!({"action": "instruction", "content": "use metric units"}),
            )
            .await,
            201,
        );
        assert_eq!(first["status"], "pending", "{first}");
        let second = body_of(
            app.post_message(
                &run,
                json!({"action": "instruction", "content": "be brief", "metadata": {"by": "ana"}}),
            )
            .await,
            201,
        );
        assert_eq!(second["status"], "pending", "{second}");
        let ids = [number(&first), number(&second)];

        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        // What the next step rendered is what it received; the step after
        // it received nothing: an instruction is handed over once.
        assert_eq!(
            artifact(&app, &run, "next.text").await,
            "use metric units;be brief"
        );
        assert_eq!(artifact(&app, &run, "last.text").await, "");
        let attempts = detail["steps"]["next"]["attempts"]
            .as_array()
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "{detail}");
        assert_eq!(attempts[0]["instructions"], json!(ids), "{detail}");
        assert_eq!(attempts[0]["status"], "completed", "{detail}");
        for step in ["slow", "last"] {
            let attempts = &detail["steps"][step]["attempts"];
            assert_eq!(attempts[0]["instructions"], json!([]), "{step}: {detail}");
        }

        // pending -> acknowledged (when next is dispatched) -> processed
        // (when it completes), each in the commit of its cause.
        let events = app.events(&run).await;
        let posted = |id: u64| {
            only(&events, &format!("MessagePosted {id}"), |e| {
                e["event_type"] == "MessagePosted" && e["payload"]["message"] == id
            })
        };
        let dispatched = only(&events, "StepDispatched next", |e| {
            is(e, "StepDispatched", Some("next"))
        });
        assert_eq!(
            events[dispatched]["payload"]["instructions"],
            json!(ids),
            "{}",
            events[dispatched]
        );
        let completed = only(&events, "StepCompleted next", |e| {
            is(e, "StepCompleted", Some("next"))
        });
        let last_dispatched = only(&events, "StepDispatched last", |e| {
            is(e, "StepDispatched", Some("last"))
        });
        for (i, &id) in ids.iter().enumerate() {
            let acknowledged = only(&events, &format!("{id} acknowledged"), |e| {
                is_status_change(e, id, "acknowledged")
            });
            let processed = only(&events, &format!("{id} processed"), |e| {
                is_status_change(e, id, "processed")
            });
            let slow_done = only(&events, "StepCompleted slow", |e| {
                is(e, "StepCompleted", Some("slow"))
            });
            assert!(
                posted(id) < slow_done,
                "the instruction was meant to be posted while slow ran: {:?}",
                types(&events)
            );
            assert!(posted(id) < dispatched, "{:?}", types(&events));
            assert_eq!(acknowledged, dispatched + 1 + i, "{:?}", types(&events));
            assert_eq!(events[acknowledged]["payload"]["step"], "next");
            assert!(completed < processed, "{:?}", types(&events));
            assert!(processed < last_dispatched, "{:?}", types(&events));
            assert_eq!(events[processed]["payload"]["step"], "next");
            assert_eq!(
                events
                    .iter()
                    .filter(|e| e["event_type"] == "MessageStatusChanged"
                        && e["payload"]["message"] == id)
                    .count(),
                2,
                "{:?}",
                types(&events)
            );
        }
        for step in ["slow", "last"] {
            let dispatch = &events[only(&events, &format!("StepDispatched {step}"), |e| {
                is(e, "StepDispatched", Some(step))
            })];
            assert!(
                dispatch["payload"]["instructions"]
                    .as_array()
                    .is_none_or(Vec::is_empty),
                "{dispatch}"
            );
        }
        let messages = app.messages(&run).await;
        for id in ids {
            let message = messages
                .iter()
                .find(|m| m["id"] == id)
                .expect("the instruction");
            assert_eq!(message["status"], "processed", "{message}");
            assert!(message["reason"].is_null(), "{message}");
        }
    }
);

on_both_backends!(
    an_instruction_handed_to_a_failed_attempt_is_handed_again_to_the_retry,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "a": {"agent": "echo", "config": {"delay_ms": 2000}},
            "flaky": {
                "agent": "echo",
                "depends_on": ["a"],
                "config": {"fail_times": 1},
                "retry": {"max_attempts": 2, "backoff_ms": 100}
            }
        }});
        let template = app.template_id(&unique_name("flaky"), definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, "a", 1).await;
        let message = body_of(
            app.post_message(&run, json!({"action": "instruction", "content": "careful"}))
                .await,
            201,
        );
        assert_eq!(message["status"], "pending", "{message}");
        let id = number(&message);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let attempts = detail["steps"]["flaky"]["attempts"]
            .as_array()
            .expect("attempts");
        assert_eq!(attempts.len(), 2, "{detail}");
        assert_eq!(attempts[0]["status"], "failed", "{detail}");
        assert_eq!(attempts[1]["status"], "completed", "{detail}");
        for attempt in attempts {
            assert_eq!(attempt["instructions"], json!([id]), "{detail}");
        }
        // Acknowledged once (first hand-over), processed once (when the
        // retry completes).
        let events = app.events(&run).await;
        let changes: Vec<(&Value, &Value)> = events
            .iter()
            .filter(|e| e["event_type"] == "MessageStatusChanged" && e["payload"]["message"] == id)
            .map(|e| (&e["payload"]["status"], &e["payload"]["step"]))
            .collect();
        assert_eq!(
            changes,
            [
                (&json!("acknowledged"), &json!("flaky")),
                (&json!("processed"), &json!("flaky"))
            ]
        );
        let completed = only(&events, "StepCompleted flaky", |e| {
            is(e, "StepCompleted", Some("flaky"))
        });
        let processed = only(&events, "processed", |e| {
            is_status_change(e, id, "processed")
        });
        assert_eq!(processed, completed + 1, "{:?}", types(&events));
        assert_eq!(
            wait_message(&app, &run, id, "processed").await["reason"],
            Value::Null
        );
    }
);

on_both_backends!(
    an_instruction_no_step_receives_before_the_run_ends_is_ignored_with_a_reason,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // Posted to a completed run.
        let run = completed_run(&app).await;
        let message = assert_only_message_recorded(
            &app,
            &run,
            json!({"action": "instruction", "content": "too late"}),
        )
        .await;
        assert_eq!(message["status"], "ignored", "{message}");
        assert_eq!(message["reason"], "run is already completed", "{message}");
        assert_eq!(app.run(&run).await["status"], "completed");

        // Posted while the last step runs: no step is dispatched after it.
        let template = app
            .template_id(
                "one",
                json!({"steps": {"only": {"agent": "echo", "config": {"delay_ms": 2000}}}}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, "only", 1).await;
        let message = body_of(
            app.post_message(&run, json!({"action": "instruction", "content": "unused"}))
                .await,
            201,
        );
        assert_eq!(message["status"], "pending", "{message}");
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let id = number(&message);
        let ignored = wait_message(&app, &run, id, "ignored").await;
        assert_eq!(
            ignored["reason"], "the run completed before a step completed with it",
            "{ignored}"
        );
        let events = app.events(&run).await;
        let completed = only(&events, "RunCompleted", |e| is(e, "RunCompleted", None));
        let change = only(&events, "ignored", |e| is_status_change(e, id, "ignored"));
        assert_eq!(change, completed + 1, "{:?}", types(&events));
    }
);

/// Pauses, resumes and cancels a run of `stoppable()` through `control`,
/// waiting for each to take effect; returns the run's final detail.
async fn pause_resume_cancel<F, Fut>(app: &TestApp, run: &str, control: F) -> Value
where
    F: Fn(&'static str) -> Fut,
    Fut: Future<Output = ()>,
{
    wait_running(app, run, "work", 1).await;
    control("pause").await;
    wait_status(app, run, "paused").await;
    control("resume").await;
    wait_running(app, run, "work", 2).await;
    control("cancel").await;
    wait_status(app, run, "cancelled").await
}

on_both_backends!(
    pause_resume_and_cancel_messages_act_exactly_like_their_endpoints,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("stoppable", stoppable()).await;

        let by_endpoint = app.run_id(&template, json!({"topic": "owls"})).await;
        let endpoint_detail = pause_resume_cancel(&app, &by_endpoint, |action| {
            let app = &app;
            let run = by_endpoint.clone();
            async move {
                let body = (action == "cancel").then(|| json!({"reason": "enough"}));
                let (status, body) = app
                    .request("POST", &format!("/api/runs/{run}/{action}"), body)
                    .await;
                assert_eq!(status, 200, "{action}: {body}");
            }
        })
        .await;

        let by_message = app.run_id(&template, json!({"topic": "owls"})).await;
        let replies = std::cell::RefCell::new(Vec::new());
        let message_detail = pause_resume_cancel(&app, &by_message, |action| {
            let (app, replies) = (&app, &replies);
            let run = by_message.clone();
            async move {
                let content = if action == "cancel" { "enough" } else { "" };
                let reply = body_of(
                    app.post_message(&run, json!({"action": action, "content": content}))
                        .await,
                    201,
                );
                replies.borrow_mut().push(reply);
            }
        })
        .await;

        for detail in [&endpoint_detail, &message_detail] {
            assert_eq!(detail["status"], "cancelled", "{detail}");
            assert_eq!(detail["cancel_reason"], "enough", "{detail}");
            assert_eq!(detail["steps"]["work"]["attempt"], 2, "{detail}");
        }
        assert_eq!(
            endpoint_detail["steps"]["work"]["status"],
            message_detail["steps"]["work"]["status"]
        );
        // The same story, event for event.
        let endpoint_story = app.events_without_thread(&by_endpoint).await;
        let message_story = app.events_without_thread(&by_message).await;
        assert_eq!(types(&message_story), types(&endpoint_story));
        assert_eq!(
            system_texts(&app.messages(&by_message).await),
            system_texts(&app.messages(&by_endpoint).await)
        );
        assert_eq!(
            system_texts(&app.messages(&by_message).await),
            ["Run paused.", "Run resumed.", "Run cancelled: enough"]
        );

        // Each message is processed, and recorded just before its effect.
        let replies = replies.into_inner();
        assert_eq!(replies.len(), 3);
        let events = app.events(&by_message).await;
        for (reply, effect) in
            replies
                .iter()
                .zip(["PauseRequested", "RunResumed", "CancelRequested"])
        {
            assert_eq!(reply["author"], "user", "{reply}");
            assert_eq!(reply["status"], "processed", "{reply}");
            assert!(reply["reason"].is_null(), "{reply}");
            let id = number(reply);
            let posted = only(&events, &format!("message {id}"), |e| {
                e["event_type"] == "MessagePosted" && e["payload"]["message"] == id
            });
            assert_eq!(events[posted]["payload"]["action"], reply["action"]);
            assert!(
                is(&events[posted + 1], effect, None),
                "{effect} does not follow message {id}: {:?}",
                types(&events)
            );
        }
    }
);

on_both_backends!(
    a_control_message_that_cannot_take_effect_is_ignored_and_records_only_the_message,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let run = completed_run(&app).await;
        for (action, content) in [
            ("pause", ""),
            ("resume", ""),
            ("cancel", "why not"),
            ("redirect", "start over"),
        ] {
            let message = assert_only_message_recorded(
                &app,
                &run,
                json!({"action": action, "content": content}),
            )
            .await;
            assert_eq!(message["action"], action, "{message}");
            assert_eq!(message["status"], "ignored", "{message}");
            let reason = message["reason"].as_str().unwrap_or_default();
            assert!(reason.contains("completed"), "{action}: {message}");
            assert!(message.get("new_run_id").is_none(), "{message}");
        }
        let detail = app.run(&run).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert!(detail["redirected_to"].is_null(), "{detail}");

        // A pause message to a paused run is ignored too.
        let template = app.template_id("diamond", diamond(0)).await;
        let paused = manual_run(&app, &template).await;
        let (status, body) = app
            .request("POST", &format!("/api/runs/{paused}/pause"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        wait_status(&app, &paused, "paused").await;
        let message = assert_only_message_recorded(
            &app,
            &paused,
            json!({"action": "pause", "content": "again"}),
        )
        .await;
        assert_eq!(message["status"], "ignored", "{message}");
        assert!(
            message["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{message}"
        );
    }
);

on_both_backends!(
    a_paused_resumed_and_completed_run_announces_each_once_in_the_thread_and_on_the_websocket,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // Started in manual mode, so that nothing runs and the pause is
        // reached at once; switching auto-run on after the resume lets the
        // run complete.
        let template = app.template_id("diamond", diamond(0)).await;
        let run = manual_run(&app, &template).await;
        let mut ws = connect(&app).await;
        subscribe_ok(
            &mut ws,
            json!({"type": "subscribe", "run_id": run, "after": 0}),
        )
        .await;
        let (status, body) = app
            .request("POST", &format!("/api/runs/{run}/pause"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        wait_status(&app, &run, "paused").await;
        let (status, body) = app
            .request("POST", &format!("/api/runs/{run}/resume"), None)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .put(
                &format!("/api/runs/{run}/auto-run"),
                json!({"enabled": true}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");

        let messages = app.messages(&run).await;
        assert_eq!(
            system_texts(&messages),
            ["Run paused.", "Run resumed.", "Run completed."]
        );
        for message in by_author(&messages, "system") {
            assert_eq!(message["action"], "comment", "{message}");
            assert_eq!(message["status"], "processed", "{message}");
            assert!(message["step"].is_null(), "{message}");
        }

        let received = events_until_finished(&mut ws, &run).await;
        let seqs = sequences(&received);
        assert_eq!(seqs, (1..=received.len() as i64).collect::<Vec<_>>());
        let system_on_ws: Vec<(Value, Value)> = received
            .iter()
            .filter(|e| e["event_type"] == "MessagePosted" && e["payload"]["author"] == "system")
            .map(|e| {
                (
                    e["payload"]["message"].clone(),
                    e["payload"]["content"].clone(),
                )
            })
            .collect();
        let system_in_thread: Vec<(Value, Value)> = by_author(&messages, "system")
            .iter()
            .map(|m| (m["id"].clone(), m["content"].clone()))
            .collect();
        assert_eq!(system_on_ws, system_in_thread);
        // And the stream is the log, once.
        assert_eq!(essentials(&received), essentials(&app.events(&run).await));
    }
);

on_both_backends!(
    a_failing_step_posts_one_system_message_per_failed_attempt,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let flaky = |fail_times: u64, max_attempts: u64| {
            json!({"steps": {
                "flaky": {
                    "agent": "echo",
                    "config": {"fail_times": fail_times},
                    "retry": {"max_attempts": max_attempts, "backoff_ms": 0}
                }
            }})
        };
        for (fail_times, max_attempts, outcome) in [(2, 3, "completed"), (5, 2, "failed")] {
            let template = app
                .template_id(&unique_name("flaky"), flaky(fail_times, max_attempts))
                .await;
            let run = app.run_id(&template, json!({"topic": "owls"})).await;
            let detail = app.wait_finished(&run, WAIT).await;
            assert_eq!(detail["status"], outcome, "{detail}");
            let events = app.events(&run).await;
            let failures: Vec<&Value> = events
                .iter()
                .filter(|e| is(e, "StepFailed", Some("flaky")))
                .map(|e| &e["payload"])
                .collect();
            assert_eq!(failures.len() as u64, fail_times.min(max_attempts));
            let expected: Vec<String> = failures
                .iter()
                .map(|f| {
                    let next = if f["will_retry"] == true {
                        " It will be retried."
                    } else {
                        ""
                    };
                    format!(
                        "Step 'flaky' failed (attempt {}): {}.{next}",
                        f["attempt"],
                        f["error"].as_str().expect("error").trim_end_matches('.')
                    )
                })
                .collect();
            let messages = app.messages(&run).await;
            let about_step: Vec<String> = by_author(&messages, "system")
                .iter()
                .filter(|m| m["step"] == "flaky")
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(about_step, expected);
            let texts = system_texts(&messages);
            assert_eq!(texts.len(), expected.len() + 1, "{texts:?}");
            let end = texts.last().unwrap();
            if outcome == "completed" {
                assert_eq!(end, "Run completed.");
            } else {
                let error = failures.last().unwrap()["error"].as_str().unwrap();
                assert_eq!(
                    end,
                    &format!(
                        "Run failed: step 'flaky' failed: {}.",
                        error.trim_end_matches('.')
                    )
                );
            }
            // Each announcement follows its failure in the same commit.
            for (i, event) in events.iter().enumerate() {
                if is(event, "StepFailed", Some("flaky")) {
                    let next = &events[i + 1];
                    assert_eq!(next["event_type"], "MessagePosted", "{:?}", types(&events));
                    assert_eq!(next["payload"]["author"], "system", "{next}");
                    assert_eq!(next["payload"]["step"], "flaky", "{next}");
                }
            }
        }
    }
);

on_both_backends!(
    built_in_agents_comment_when_they_start_and_finish_unless_told_not_to,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "a": {"agent": "echo"},
            "b": {"agent": "template", "depends_on": ["a"], "config": {"text": "{{ input.topic }}"}},
            "quiet_echo": {"agent": "echo", "depends_on": ["a"], "config": {"comments": false}},
            "quiet_template": {
                "agent": "template",
                "depends_on": ["a"],
                "config": {"text": "x", "comments": false}
            }
        }});
        let template = app.template_id("chatty", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");

        let messages = app.messages(&run).await;
        let agent = by_author(&messages, "agent");
        let of = |step: &str| -> Vec<&str> {
            agent
                .iter()
                .filter(|m| m["step"] == step)
                .map(|m| m["content"].as_str().unwrap())
                .collect()
        };
        assert_eq!(
            of("a"),
            [
                "echo started attempt 1.",
                "echo finished attempt 1 with outputs: topic."
            ]
        );
        assert_eq!(
            of("b"),
            [
                "template started attempt 1.",
                "template finished attempt 1."
            ]
        );
        assert_eq!(agent.len(), 4, "comments from quiet steps: {agent:?}");
        for message in &agent {
            assert_eq!(message["action"], "comment", "{message}");
            assert_eq!(message["status"], "processed", "{message}");
        }
        // Each comment is posted while its step runs.
        let events = app.events(&run).await;
        for step in ["a", "b"] {
            let dispatched = only(&events, "dispatch", |e| is(e, "StepDispatched", Some(step)));
            let completed = only(&events, "completion", |e| {
                is(e, "StepCompleted", Some(step))
            });
            let comments: Vec<usize> = (0..events.len())
                .filter(|&i| {
                    events[i]["event_type"] == "MessagePosted"
                        && events[i]["payload"]["author"] == "agent"
                        && events[i]["payload"]["step"] == step
                })
                .collect();
            assert_eq!(comments.len(), 2, "{:?}", types(&events));
            assert!(
                comments.iter().all(|&i| dispatched < i && i < completed),
                "{step}: {:?}",
                types(&events)
            );
        }

        // With comments off everywhere, only the engine speaks.
        let quiet = json!({"steps": {
            "a": {"agent": "echo", "config": {"comments": false}},
            "b": {"agent": "template", "depends_on": ["a"], "config": {"text": "x", "comments": false}}
        }});
        let template = app.template_id("quiet", quiet).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let messages = app.messages(&run).await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["author"], "system");
        assert_eq!(messages[0]["content"], "Run completed.");
        assert_eq!(detail["messages"], 1, "{detail}");
    }
);

/// Checks a redirect from `old` to `new` with `instructions`: the old run
/// ends cancelled, pointing at the new one; the new run has the same
/// template version and input, its message 1 is the instructions, and its
/// first step received them.
async fn assert_redirected(app: &TestApp, old: &str, new: &str, instructions: &str) {
    let before = wait_status(app, old, "cancelled").await;
    assert_eq!(before["redirected_to"], new, "{before}");
    assert_eq!(
        before["cancel_reason"],
        format!("redirected to run {new}"),
        "{before}"
    );
    let events = app.events(old).await;
    let redirected = &events[only(&events, "RunRedirected", |e| is(e, "RunRedirected", None))];
    assert_eq!(redirected["payload"]["to"], new, "{redirected}");
    assert_eq!(redirected["payload"]["instructions"], instructions);
    let story = without_thread(&events);
    let at = story
        .iter()
        .position(|e| e["event_type"] == "RunRedirected")
        .unwrap();
    assert_eq!(
        story[at + 1]["event_type"],
        "CancelRequested",
        "{:?}",
        types(&story)
    );
    assert_eq!(story.last().unwrap()["event_type"], "RunCancelled");
    assert!(
        system_texts(&app.messages(old).await).contains(&format!("Run redirected to run {new}.")),
        "{:?}",
        app.messages(old).await
    );

    let fresh = app
        .wait_run(new, "first completes", WAIT, |d| {
            d["steps"]["first"]["status"] == "completed"
        })
        .await;
    assert_eq!(fresh["redirected_from"], old, "{fresh}");
    assert_eq!(fresh["template_id"], before["template_id"], "{fresh}");
    assert_eq!(fresh["template_version"], before["template_version"]);
    assert_eq!(fresh["input"], before["input"], "{fresh}");
    assert!(fresh["retry_of"].is_null(), "{fresh}");
    let first_event = &app.events(new).await[0];
    assert_eq!(first_event["event_type"], "RunStarted");
    assert_eq!(first_event["payload"]["redirected_from"], old);
    let message = wait_message(app, new, 1, "processed").await;
    assert_eq!(message["author"], "user", "{message}");
    assert_eq!(message["action"], "instruction", "{message}");
    assert_eq!(message["content"], instructions, "{message}");
    assert_eq!(
        artifact(app, new, "first.text").await,
        format!("owls|{instructions}")
    );
    assert_eq!(
        fresh["steps"]["first"]["attempts"][0]["instructions"],
        json!([1]),
        "{fresh}"
    );
    // The old run's first step received nothing.
    assert_eq!(artifact(app, old, "first.text").await, "owls|");
}

on_both_backends!(
    a_redirect_cancels_the_run_and_starts_its_work_again_with_the_instructions,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("redirectable", redirectable()).await;
        let old = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &old, "slow", 1).await;
        // A new version of the template must not leak into the new run.
        let (status, body) = app
            .put(
                &format!("/api/templates/{template}"),
                json!({"definition": {"steps": {"other": {"agent": "echo"}}}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");

        let response = app
            .request_with_headers(
                "POST",
                &redirect_path(&old),
                Some(json!({"instructions": "focus on barn owls"})),
                &[],
            )
            .await;
        assert_eq!(response.status, 201, "{}", response.body);
        let new = response.body["new_run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no new_run_id: {}", response.body))
            .to_string();
        assert_ne!(new, old);
        assert_eq!(
            response.header("location"),
            Some(format!("/api/runs/{new}").as_str())
        );
        assert_eq!(response.body["id"], old.as_str(), "{}", response.body);
        assert_eq!(
            response.body["redirected_to"],
            new.as_str(),
            "{}",
            response.body
        );
        assert_redirected(&app, &old, &new, "focus on barn owls").await;
        assert_eq!(app.run(&new).await["template_version"], 1);
        let (status, _) = app
            .post(&format!("/api/runs/{new}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        wait_status(&app, &new, "cancelled").await;

        // The same through a message.
        let template = app.template_id("redirectable-2", redirectable()).await;
        let old = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &old, "slow", 1).await;
        let message = body_of(
            app.post_message(
                &old,
                json!({"action": "redirect", "content": "focus on owlets"}),
            )
            .await,
            201,
        );
        assert_eq!(message["action"], "redirect", "{message}");
        assert_eq!(message["status"], "processed", "{message}");
        let new = message["new_run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no new_run_id: {message}"))
            .to_string();
        assert_redirected(&app, &old, &new, "focus on owlets").await;
        let (status, _) = app
            .post(&format!("/api/runs/{new}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        wait_status(&app, &new, "cancelled").await;
    }
);

on_both_backends!(
    bad_messages_and_redirects_are_refused_and_record_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = manual_run(&app, &template).await;
        let post = |body: Value| app.post_message(&run, body);

        assert_refused(
            &app,
            &run,
            post(json!({"content": "x", "action": "shout"})),
            400,
            "invalid_action",
        )
        .await;
        assert_refused(
            &app,
            &run,
            post(json!({"content": "x", "action": "Comment"})),
            400,
            "invalid_action",
        )
        .await;
        for action in ["comment", "instruction", "redirect"] {
            for blank in ["", "   ", "\n\t"] {
                assert_refused(
                    &app,
                    &run,
                    post(json!({"content": blank, "action": action})),
                    400,
                    "invalid_content",
                )
                .await;
            }
        }
        let too_long = "é".repeat(MAX_CONTENT + 1);
        for action in ["comment", "instruction", "pause", "cancel", "redirect"] {
            assert_refused(
                &app,
                &run,
                post(json!({"content": too_long, "action": action})),
                400,
                "invalid_content",
            )
            .await;
        }
        for metadata in [json!([1, 2]), json!("note"), json!(3), json!(true)] {
            assert_refused(
                &app,
                &run,
                post(json!({"content": "x", "metadata": metadata})),
                400,
                "invalid_metadata",
            )
            .await;
        }
        let long_key = "k".repeat(256);
        for key in ["has space", long_key.as_str(), "ключ", ""] {
            assert_refused(
                &app,
                &run,
                app.post_message_with_key(&run, json!({"content": "x"}), key),
                400,
                "invalid_idempotency_key",
            )
            .await;
        }
        for body in [
            json!({"content": "x", "priority": 1}),
            json!({"action": "comment"}),
            json!({"content": 7}),
            json!({"content": "x", "action": 1}),
            json!(["x"]),
        ] {
            assert_refused(&app, &run, post(body), 400, "invalid_body").await;
        }
        for raw in ["{", "nope", ""] {
            assert_refused(
                &app,
                &run,
                app.post_raw(&messages_path(&run), raw),
                400,
                "invalid_body",
            )
            .await;
        }
        for query in ["cursor=abc", "cursor=-1", "cursor=1.5"] {
            assert_refused(
                &app,
                &run,
                app.get(&format!("{}?{query}", messages_path(&run))),
                400,
                "invalid_cursor",
            )
            .await;
        }
        for query in ["limit=0", "limit=501"] {
            assert_refused(
                &app,
                &run,
                app.get(&format!("{}?{query}", messages_path(&run))),
                400,
                "invalid_limit",
            )
            .await;
        }
        for instructions in ["", "  \n"] {
            assert_refused(
                &app,
                &run,
                app.post(&redirect_path(&run), json!({"instructions": instructions})),
                400,
                "invalid_instructions",
            )
            .await;
        }
        assert_refused(
            &app,
            &run,
            app.post(&redirect_path(&run), json!({"instructions": too_long})),
            400,
            "invalid_instructions",
        )
        .await;
        for body in [
            json!({}),
            json!({"instructions": "x", "force": true}),
            json!({"instructions": 3}),
        ] {
            assert_refused(
                &app,
                &run,
                app.post(&redirect_path(&run), body),
                400,
                "invalid_body",
            )
            .await;
        }
        for (method, path) in [
            ("PUT", messages_path(&run)),
            ("DELETE", messages_path(&run)),
            ("GET", redirect_path(&run)),
            ("PUT", redirect_path(&run)),
        ] {
            assert_refused(
                &app,
                &run,
                app.request(method, &path, Some(json!({"content": "x"}))),
                405,
                "method_not_allowed",
            )
            .await;
        }

        // Unknown and invalid runs.
        let unknown = uuid::Uuid::new_v4().to_string();
        assert_refused(
            &app,
            &run,
            app.post_message(&unknown, json!({"content": "x"})),
            404,
            "run_not_found",
        )
        .await;
        assert_refused(
            &app,
            &run,
            app.get(&messages_path(&unknown)),
            404,
            "run_not_found",
        )
        .await;
        assert_refused(
            &app,
            &run,
            app.post(&redirect_path(&unknown), json!({"instructions": "x"})),
            404,
            "run_not_found",
        )
        .await;
        for bad in ["bad%20id", "dot.ted"] {
            assert_refused(
                &app,
                &run,
                app.post_message(bad, json!({"content": "x"})),
                400,
                "invalid_run_id",
            )
            .await;
            assert_refused(
                &app,
                &run,
                app.post(&redirect_path(bad), json!({"instructions": "x"})),
                400,
                "invalid_run_id",
            )
            .await;
        }
        assert!(app.messages(&run).await.is_empty());

        // Redirecting a finished run, or one being cancelled.
        let done = completed_run(&app).await;
        assert_refused(
            &app,
            &done,
            app.post(&redirect_path(&done), json!({"instructions": "again"})),
            409,
            "run_finished",
        )
        .await;
        let quiet_slow = json!({"steps": {
            "a": {"agent": "echo", "config": {"delay_ms": 5000, "comments": false}}
        }});
        let slow = app.template_id("slow", quiet_slow).await;
        let cancelling = app.run_id(&slow, json!({})).await;
        wait_running(&app, &cancelling, "a", 1).await;
        let (status, body) = app
            .post(&format!("/api/runs/{cancelling}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["cancel_requested"], true, "{body}");
        assert_refused(
            &app,
            &cancelling,
            app.post(
                &redirect_path(&cancelling),
                json!({"instructions": "again"}),
            ),
            409,
            "run_cancelling",
        )
        .await;

        // At the limit, content is taken (characters, not bytes).
        let longest = "é".repeat(MAX_CONTENT);
        let message = body_of(post(json!({"content": longest})).await, 201);
        assert_eq!(message["content"], longest.as_str());
        let key = "k".repeat(255);
        body_of(
            app.post_message_with_key(&run, json!({"content": "x"}), &key)
                .await,
            201,
        );
    }
);

on_both_backends!(
    text_with_a_nul_character_is_refused_everywhere_and_records_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {"step": instructions_step(&[])}});
        let template = app.template_id("manual", definition.clone()).await;
        let run = manual_run(&app, &template).await;
        let before = app.events(&run).await.len();
        let counts = app.counts().await;
        let nul = "a\u{0}b";
        let refused = [
            app.post_message(&run, json!({"content": nul})).await,
            app.post_message(&run, json!({"content": "ok", "metadata": {"k": nul}}))
                .await,
            app.post_message(&run, json!({"content": "ok", "metadata": {nul: 1}}))
                .await,
            app.post(&format!("/api/runs/{run}/cancel"), json!({"reason": nul}))
                .await,
            app.post(&redirect_path(&run), json!({"instructions": nul}))
                .await,
            app.post(
                &format!("/api/runs/{run}/steps/step/trigger"),
                json!({"prompt_override": nul}),
            )
            .await,
            app.start_run(&template, json!({"topic": nul})).await,
            app.create_template(nul, definition.clone()).await,
            app.create_template(
                "ok",
                json!({"steps": {"a": {"agent": "echo", "prompt": nul}}}),
            )
            .await,
        ];
        for reply in &refused {
            let message = expect_error(reply, 400, "invalid_body");
            assert!(message.contains("NUL"), "{message}");
        }
        assert_eq!(app.events(&run).await.len(), before);
        assert_eq!(app.counts().await, counts);
    }
);

on_both_backends!(
    a_long_running_agents_start_comment_shows_while_it_runs_and_a_quick_agents_comments_share_its_result_commit,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "quick": {"agent": "echo"},
            "slow": {"agent": "echo", "depends_on": ["quick"], "config": {"delay_ms": 3000}}
        }});
        let template = app.template_id("slow", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        app.wait_messages(&run, "slow's start comment", WAIT, |messages| {
            messages
                .iter()
                .any(|m| m["step"] == "slow" && m["content"] == "echo started attempt 1.")
        })
        .await;
        let detail = app.run(&run).await;
        assert_eq!(detail["steps"]["slow"]["status"], "running", "{detail}");
        // The quick step's two comments were committed with its completion.
        let events = app.events(&run).await;
        let completed = events
            .iter()
            .position(|e| e["event_type"] == "StepCompleted" && e["payload"]["step"] == "quick")
            .expect("quick completed");
        let quick: Vec<&Value> = events[..completed]
            .iter()
            .filter(|e| e["event_type"] == "MessagePosted" && e["payload"]["step"] == "quick")
            .collect();
        assert_eq!(quick.len(), 2, "{events:?}");
        for comment in quick {
            assert_eq!(
                comment["recorded_at"], events[completed]["recorded_at"],
                "same commit: {comment}"
            );
        }
    }
);
