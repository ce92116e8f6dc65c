//! Run control: pause at a safe checkpoint, resume, cancel gracefully, and
//! the refusals, each of which records nothing.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::common::{
    assert_refused, count_events as count, diamond, expect_error, is_event as is,
    only_event as only, spawn_app, spawn_app_on, types, without_thread, Reply, Storage, TestApp,
};
use crate::on_both_backends;

/// How long a test waits for a run to reach a state.
const WAIT: Duration = Duration::from_secs(8);

/// `a` (quick) fans out to `b` and `c` (`delay_ms` each); `d` joins them.
fn fan_out(delay_ms: u64) -> Value {
    json!({"steps": {
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"], "config": {"delay_ms": delay_ms}},
        "c": {"agent": "echo", "depends_on": ["a"], "config": {"delay_ms": delay_ms}},
        "d": {"agent": "echo", "depends_on": ["b", "c"]}
    }})
}

/// `a` (slow) then `b`.
fn slow_chain(delay_ms: u64) -> Value {
    json!({"steps": {
        "a": {"agent": "echo", "config": {"delay_ms": delay_ms}},
        "b": {"agent": "echo", "depends_on": ["a"]}
    }})
}

/// `slow_chain` whose agents post no comments: while `a` runs its log holds
/// still, so a refused request can be shown to record nothing.
fn quiet_slow_chain(delay_ms: u64) -> Value {
    json!({"steps": {
        "a": {"agent": "echo", "config": {"delay_ms": delay_ms, "comments": false}},
        "b": {"agent": "echo", "depends_on": ["a"], "config": {"comments": false}}
    }})
}

/// `flaky` fails its first attempt and retries after `backoff_ms`; `after`
/// depends on it.
fn flaky(backoff_ms: u64) -> Value {
    json!({"steps": {
        "flaky": {
            "agent": "echo",
            "config": {"fail_times": 1},
            "retry": {"max_attempts": 2, "backoff_ms": backoff_ms}
        },
        "after": {"agent": "echo", "depends_on": ["flaky"]}
    }})
}

fn path(run: &str, action: &str) -> String {
    format!("/api/runs/{run}/{action}")
}

async fn pause(app: &TestApp, run: &str) -> Reply {
    app.request("POST", &path(run, "pause"), None).await
}

async fn resume(app: &TestApp, run: &str) -> Reply {
    app.request("POST", &path(run, "resume"), None).await
}

async fn cancel(app: &TestApp, run: &str, body: Value) -> Reply {
    app.post(&path(run, "cancel"), body).await
}

/// The body of a 200 reply.
fn ok(reply: Reply) -> Value {
    let (status, body) = reply;
    assert_eq!(status, 200, "{body}");
    body
}

/// Polls the run until `done` holds.
async fn wait_until(app: &TestApp, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let detail = app.run(run).await;
        if done(&detail) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: timed out waiting until {what}: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_status(app: &TestApp, run: &str, status: &str) -> Value {
    wait_until(app, run, &format!("status is {status}"), |d| {
        d["status"] == status
    })
    .await
}

/// Waits until every one of `steps` is running.
async fn wait_running(app: &TestApp, run: &str, steps: &[&str]) -> Value {
    wait_until(app, run, &format!("{steps:?} run"), |d| {
        steps.iter().all(|s| d["steps"][s]["status"] == "running")
    })
    .await
}

/// The index of the last event of `event_type` (about `step`).
fn last(events: &[Value], event_type: &str, step: Option<&str>) -> usize {
    (0..events.len())
        .rev()
        .find(|&i| is(&events[i], event_type, step))
        .unwrap_or_else(|| panic!("no {event_type} {step:?}: {:?}", types(events)))
}

/// Asserts that the log ends with `event_type` and the system message
/// announcing it (recorded in the same commit).
fn ends_with_announcement(log: &[Value], event_type: &str, text: &str) {
    let n = log.len();
    assert!(n >= 2, "{:?}", types(log));
    assert_eq!(log[n - 2]["event_type"], event_type, "{:?}", types(log));
    let message = &log[n - 1];
    assert_eq!(message["event_type"], "MessagePosted", "{message}");
    assert_eq!(message["payload"]["author"], "system", "{message}");
    assert_eq!(message["payload"]["content"], text, "{message}");
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// The ids listed by `GET /api/runs?<query>`.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let (status, page) = app.get(&format!("/api/runs?{query}&limit=500")).await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

on_both_backends!(
    a_paused_run_lets_running_steps_finish_dispatches_nothing_new_and_resumes,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("fan-out", fan_out(600)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, &["b", "c"]).await;

        let paused = ok(pause(&app, &run).await);
        assert_eq!(paused["id"], run.as_str(), "{paused}");
        assert_eq!(paused["status"], "running", "{paused}");
        assert_eq!(paused["pause_requested"], true, "{paused}");
        assert_eq!(paused["steps"]["b"]["status"], "running", "{paused}");
        assert_eq!(paused["steps"]["c"]["status"], "running", "{paused}");

        let detail = wait_status(&app, &run, "paused").await;
        assert_eq!(detail["pause_requested"], false, "{detail}");
        assert_eq!(detail["steps"]["b"]["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["c"]["status"], "completed", "{detail}");
        assert!(
            matches!(
                detail["steps"]["d"]["status"].as_str(),
                Some("pending" | "ready")
            ),
            "{detail}"
        );
        assert_eq!(detail["steps"]["d"]["attempt"], 0, "{detail}");

        // Give a wrong dispatch the chance to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let detail = app.run(&run).await;
        assert_eq!(detail["status"], "paused", "{detail}");
        let log = app.events(&run).await;
        ends_with_announcement(&log, "RunPaused", "Run paused.");
        let events = without_thread(&log);
        assert_eq!(
            count(&events, "StepDispatched", Some("d")),
            0,
            "{:?}",
            types(&events)
        );
        let requested = only(&events, "PauseRequested", None);
        let reached = only(&events, "RunPaused", None);
        assert!(requested < reached, "{:?}", types(&events));
        assert!(
            only(&events, "StepDispatched", Some("b")) < requested
                && only(&events, "StepDispatched", Some("c")) < requested,
            "{:?}",
            types(&events)
        );
        assert!(
            last(&events, "StepCompleted", None) < reached,
            "paused while a step still ran: {:?}",
            types(&events)
        );
        assert_eq!(reached, events.len() - 1, "{:?}", types(&events));
        assert!(listed(&app, "status=paused").await.contains(&run));

        let resumed = ok(resume(&app, &run).await);
        assert!(
            matches!(resumed["status"].as_str(), Some("running" | "completed")),
            "{resumed}"
        );
        assert_eq!(resumed["pause_requested"], false, "{resumed}");
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["d"]["status"], "completed", "{detail}");
        let log = app.events(&run).await;
        ends_with_announcement(&log, "RunCompleted", "Run completed.");
        let events = without_thread(&log);
        let resumed_at = only(&events, "RunResumed", None);
        assert!(reached < resumed_at, "{:?}", types(&events));
        assert!(
            is(&events[resumed_at + 1], "StepDispatched", Some("d")),
            "RunResumed is not followed by d's dispatch: {:?}",
            types(&events)
        );
        only(&events, "StepDispatched", Some("d"));
        assert_eq!(only(&events, "RunCompleted", None), events.len() - 1);
        for step in ["a", "b", "c", "d"] {
            assert_eq!(count(&events, "StepCompleted", Some(step)), 1, "{step}");
        }
    }
);

on_both_backends!(
    pausing_a_run_with_nothing_running_pauses_it_at_once_and_holds_back_a_due_retry,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("flaky", flaky(1500)).await;
        let run = app.run_id(&template, json!({"x": 1})).await;
        wait_until(&app, &run, "flaky waits for its retry", |d| {
            d["steps"]["flaky"]["status"] == "ready" && d["steps"]["flaky"]["attempt"] == 1
        })
        .await;

        let reply = ok(pause(&app, &run).await);
        let paused = if reply["status"] == "paused" {
            reply
        } else {
            app.run(&run).await
        };
        assert_eq!(paused["status"], "paused", "{paused}");
        assert_eq!(paused["pause_requested"], false, "{paused}");
        let log = app.events(&run).await;
        ends_with_announcement(&log, "RunPaused", "Run paused.");
        let events = without_thread(&log);
        let requested = only(&events, "PauseRequested", None);
        assert!(
            is(&events[requested + 1], "RunPaused", None),
            "{:?}",
            types(&events)
        );
        assert_eq!(requested + 1, events.len() - 1, "{:?}", types(&events));
        let retry = &events[only(&events, "StepRetryScheduled", Some("flaky"))];
        assert!(
            only(&events, "StepRetryScheduled", Some("flaky")) < requested,
            "{:?}",
            types(&events)
        );

        // The retry falls due while paused: it is not dispatched.
        let due = retry["payload"]["due_at"].as_i64().expect("due_at");
        let wait = (due + 300 - now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let detail = app.run(&run).await;
        assert_eq!(detail["status"], "paused", "{detail}");
        assert_eq!(detail["steps"]["flaky"]["attempt"], 1, "{detail}");
        assert_eq!(app.events(&run).await, log, "a paused run recorded events");

        // Resuming dispatches the retry, now due, at once.
        ok(resume(&app, &run).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["flaky"]["attempt"], 2, "{detail}");
        assert_eq!(detail["steps"]["after"]["status"], "completed", "{detail}");
        let events = app.events_without_thread(&run).await;
        let resumed = only(&events, "RunResumed", None);
        let again = &events[resumed + 1];
        assert!(
            is(again, "StepDispatched", Some("flaky")),
            "{:?}",
            types(&events)
        );
        assert_eq!(again["payload"]["attempt"], 2, "{again}");
    }
);

on_both_backends!(
    a_run_resumed_before_its_retry_is_due_retries_at_the_due_time,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("flaky", flaky(1000)).await;
        let run = app.run_id(&template, json!({"x": 1})).await;
        wait_until(&app, &run, "flaky waits for its retry", |d| {
            d["steps"]["flaky"]["status"] == "ready" && d["steps"]["flaky"]["attempt"] == 1
        })
        .await;
        let paused = ok(pause(&app, &run).await);
        assert!(
            paused["status"] == "paused" || app.run(&run).await["status"] == "paused",
            "{paused}"
        );
        let resumed = ok(resume(&app, &run).await);
        assert_eq!(resumed["status"], "running", "{resumed}");

        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let events = app.events(&run).await;
        let retry = &events[only(&events, "StepRetryScheduled", Some("flaky"))];
        let due = retry["payload"]["due_at"].as_i64().expect("due_at");
        let dispatches: Vec<&Value> = events
            .iter()
            .filter(|e| is(e, "StepDispatched", Some("flaky")))
            .collect();
        assert_eq!(dispatches.len(), 2, "{:?}", types(&events));
        let second = dispatches[1]["payload"]["at"].as_i64().expect("at");
        assert!(
            second >= due,
            "retried before its back-off: {}",
            dispatches[1]
        );
        assert!(
            only(&events, "RunResumed", None) < last(&events, "StepDispatched", Some("flaky")),
            "{:?}",
            types(&events)
        );
    }
);

on_both_backends!(
    resuming_a_run_whose_pause_is_not_yet_reached_withdraws_the_pause,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("fan-out", fan_out(400)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, &["b", "c"]).await;
        let pausing = ok(pause(&app, &run).await);
        assert_eq!(pausing["pause_requested"], true, "{pausing}");
        let resumed = ok(resume(&app, &run).await);
        assert_eq!(resumed["status"], "running", "{resumed}");
        assert_eq!(resumed["pause_requested"], false, "{resumed}");

        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let events = app.events(&run).await;
        assert_eq!(count(&events, "RunPaused", None), 0, "{:?}", types(&events));
        assert!(
            only(&events, "PauseRequested", None) < only(&events, "RunResumed", None),
            "{:?}",
            types(&events)
        );
        only(&events, "StepDispatched", Some("d"));
    }
);

on_both_backends!(
    a_cancelled_run_lets_running_steps_finish_and_dispatches_nothing_more,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("fan-out", fan_out(600)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &run, &["b", "c"]).await;

        let reason = "the owls have moved on";
        let cancelling = ok(cancel(&app, &run, json!({"reason": reason})).await);
        assert_eq!(cancelling["status"], "running", "{cancelling}");
        assert_eq!(cancelling["cancel_requested"], true, "{cancelling}");
        assert_eq!(cancelling["cancel_reason"], reason, "{cancelling}");

        let detail = wait_status(&app, &run, "cancelled").await;
        assert_eq!(detail["cancel_reason"], reason, "{detail}");
        assert_eq!(detail["cancel_requested"], false, "{detail}");
        assert_eq!(detail["pause_requested"], false, "{detail}");
        assert_eq!(detail["steps"]["a"]["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["b"]["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["c"]["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["d"]["status"], "pending", "{detail}");
        assert_eq!(detail["steps"]["d"]["attempt"], 0, "{detail}");

        // Give a wrong dispatch the chance to show up.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log = app.events(&run).await;
        assert_eq!(
            app.run(&run).await,
            detail,
            "a cancelled run changed; its log: {:?}",
            log.iter()
                .map(|e| format!("{} {} {}", e["sequence"], e["event_type"], e["payload"]))
                .collect::<Vec<_>>()
        );
        ends_with_announcement(&log, "RunCancelled", &format!("Run cancelled: {reason}"));
        let events = without_thread(&log);
        let requested = only(&events, "CancelRequested", None);
        assert_eq!(events[requested]["payload"]["reason"], reason);
        assert!(
            events[requested..]
                .iter()
                .all(|e| e["event_type"] != "StepDispatched"),
            "dispatched after the cancel: {:?}",
            types(&events)
        );
        assert!(
            events.iter().all(|e| e["payload"]["step"] != "d"),
            "an event about d: {:?}",
            types(&events)
        );
        let cancelled = only(&events, "RunCancelled", None);
        assert_eq!(cancelled, events.len() - 1, "{:?}", types(&events));
        assert!(last(&events, "StepCompleted", None) < cancelled);
        assert_eq!(events[cancelled]["payload"]["reason"], reason);
        assert_eq!(count(&events, "RunCompleted", None), 0);

        assert!(listed(&app, "status=cancelled").await.contains(&run));
        assert!(!listed(&app, "status=running").await.contains(&run));
        assert!(!listed(&app, "status=completed").await.contains(&run));
        let (status, all) = app.get("/api/runs").await;
        assert_eq!(status, 200, "{all}");
        let item = all["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|r| r["id"] == run.as_str())
            .unwrap_or_else(|| panic!("run not listed: {all}"));
        assert_eq!(item["status"], "cancelled", "{item}");
    }
);

on_both_backends!(cancelling_a_paused_run_cancels_it_at_once, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("chain", slow_chain(300)).await;
    let run = app.run_id(&template, json!({"x": 1})).await;
    wait_running(&app, &run, &["a"]).await;
    ok(pause(&app, &run).await);
    wait_status(&app, &run, "paused").await;

    let cancelled = ok(cancel(&app, &run, json!({"reason": "not needed"})).await);
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["cancel_reason"], "not needed", "{cancelled}");
    assert_eq!(cancelled["cancel_requested"], false, "{cancelled}");
    assert_eq!(cancelled["pause_requested"], false, "{cancelled}");
    assert_eq!(
        cancelled["steps"]["a"]["status"], "completed",
        "{cancelled}"
    );
    assert_eq!(cancelled["steps"]["b"]["attempt"], 0, "{cancelled}");
    let log = app.events(&run).await;
    ends_with_announcement(&log, "RunCancelled", "Run cancelled: not needed");
    let events = without_thread(&log);
    let n = events.len();
    assert_eq!(
        types(&events)[n - 3..],
        ["RunPaused", "CancelRequested", "RunCancelled"],
        "{:?}",
        types(&events)
    );
    assert_eq!(count(&events, "StepDispatched", Some("b")), 0);
    assert!(listed(&app, "status=cancelled").await.contains(&run));
    assert!(!listed(&app, "status=paused").await.contains(&run));
});

on_both_backends!(a_cancel_without_a_body_or_reason_is_accepted, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // `a` runs long enough that the cancel's answer (read once the read
    // models hold the cancel) still finds it running, however busy the
    // machine: the echo agent does not stop early.
    let template = app.template_id("chain", slow_chain(2000)).await;
    let mut runs = Vec::new();
    for body in ["", " \n", "{}", "{\"reason\": null}"] {
        let run = app.run_id(&template, json!({"x": 1})).await;
        wait_running(&app, &run, &["a"]).await;
        let reply = app.post_raw(&path(&run, "cancel"), body).await;
        let detail = ok(reply);
        assert_eq!(detail["cancel_requested"], true, "body {body:?}: {detail}");
        assert!(detail["cancel_reason"].is_null(), "body {body:?}: {detail}");
        runs.push(run);
    }
    // No body at all.
    let run = app.run_id(&template, json!({"x": 1})).await;
    wait_running(&app, &run, &["a"]).await;
    let detail = ok(app.request("POST", &path(&run, "cancel"), None).await);
    assert_eq!(detail["cancel_requested"], true, "{detail}");
    runs.push(run);

    for run in &runs {
        let detail = wait_status(&app, run, "cancelled").await;
        assert!(detail["cancel_reason"].is_null(), "{detail}");
        assert_eq!(detail["steps"]["b"]["status"], "pending", "{detail}");
        let events = app.events(run).await;
        let cancelled = &events[only(&events, "RunCancelled", None)];
        assert!(cancelled["payload"]["reason"].is_null(), "{cancelled}");
    }
});

on_both_backends!(
    refused_pause_resume_and_cancel_requests_record_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let slow = app.template_id("chain", quiet_slow_chain(2000)).await;
        let quick = app.template_id("diamond", diamond(0)).await;
        let p = app.run_id(&slow, json!({"x": 1})).await;
        let c = app.run_id(&slow, json!({"x": 2})).await;
        let f = app.run_id(&quick, json!({"x": 3})).await;
        wait_running(&app, &p, &["a"]).await;
        wait_running(&app, &c, &["a"]).await;

        // Resuming a running run.
        assert_refused(&app, &p, resume(&app, &p), 409, "run_not_paused").await;
        // Pausing twice: while the pause is pending…
        ok(pause(&app, &p).await);
        assert_refused(&app, &p, pause(&app, &p), 409, "run_already_paused").await;

        // Anything while a cancel is pending.
        let cancelling = ok(cancel(&app, &c, json!({"reason": "first"})).await);
        assert_eq!(cancelling["cancel_requested"], true, "{cancelling}");
        assert_refused(&app, &c, pause(&app, &c), 409, "run_cancelling").await;
        assert_refused(&app, &c, resume(&app, &c), 409, "run_cancelling").await;
        assert_refused(
            &app,
            &c,
            cancel(&app, &c, json!({"reason": "second"})),
            409,
            "run_cancelling",
        )
        .await;
        assert_refused(&app, &c, cancel(&app, &c, json!({})), 409, "run_cancelling").await;
        assert_eq!(app.run(&c).await["cancel_reason"], "first");

        // …and once it is reached.
        wait_status(&app, &p, "paused").await;
        assert_refused(&app, &p, pause(&app, &p), 409, "run_already_paused").await;

        // Bad bodies leave the paused run alone.
        for raw in [
            "{",
            "nope",
            "[]",
            "\"why\"",
            "{\"reason\": 7}",
            "{\"reason\": \"x\", \"force\": true}",
            "{\"why\": \"x\"}",
        ] {
            assert_refused(
                &app,
                &p,
                app.post_raw(&path(&p, "cancel"), raw),
                400,
                "invalid_body",
            )
            .await;
        }
        let too_long = "é".repeat(2001);
        assert_refused(
            &app,
            &p,
            cancel(&app, &p, json!({"reason": too_long})),
            400,
            "invalid_reason",
        )
        .await;
        assert_eq!(app.run(&p).await["status"], "paused");

        // GET is not how these are done.
        for action in ["pause", "resume", "cancel"] {
            assert_refused(
                &app,
                &p,
                app.get(&path(&p, action)),
                405,
                "method_not_allowed",
            )
            .await;
        }

        // Finished runs: completed and cancelled.
        let done = app.wait_finished(&f, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let cancelled = wait_status(&app, &c, "cancelled").await;
        assert_eq!(cancelled["cancel_reason"], "first", "{cancelled}");
        for run in [&f, &c] {
            assert_refused(&app, run, pause(&app, run), 409, "run_finished").await;
            assert_refused(&app, run, resume(&app, run), 409, "run_finished").await;
            assert_refused(&app, run, cancel(&app, run, json!({})), 409, "run_finished").await;
        }

        // Unknown and invalid run ids.
        let counts = app.counts().await;
        let unknown = "0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10";
        expect_error(&pause(&app, unknown).await, 404, "run_not_found");
        expect_error(&resume(&app, unknown).await, 404, "run_not_found");
        expect_error(
            &cancel(&app, unknown, json!({})).await,
            404,
            "run_not_found",
        );
        expect_error(
            &app.get(&format!("/api/runs/{unknown}")).await,
            404,
            "run_not_found",
        );
        expect_error(
            &app.get(&format!("/api/runs/{unknown}/events")).await,
            404,
            "run_not_found",
        );
        for bad in ["bad%20id", "dot.ted"] {
            expect_error(&pause(&app, bad).await, 400, "invalid_run_id");
            expect_error(&resume(&app, bad).await, 400, "invalid_run_id");
            expect_error(&cancel(&app, bad, json!({})).await, 400, "invalid_run_id");
        }
        assert_eq!(
            app.counts().await,
            counts,
            "a refused request created a run"
        );

        // A reason of exactly the limit (in characters, not bytes) is taken.
        let longest = "é".repeat(2000);
        let cancelled = ok(cancel(&app, &p, json!({"reason": longest})).await);
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
        assert_eq!(cancelled["cancel_reason"], longest.as_str());
    }
);

on_both_backends!(
    a_paused_run_survives_a_restart_and_can_be_resumed,
    |backend| {
        let Some(storage) = Storage::new(backend).await else {
            return;
        };
        let mut first = spawn_app_on(storage).await;
        let template = first.template_id("fan-out", fan_out(300)).await;
        let run = first.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&first, &run, &["b", "c"]).await;
        ok(pause(&first, &run).await);
        let before = wait_status(&first, &run, "paused").await;
        let events_before = first.events(&run).await;

        // Stop the first server but keep its data for the second.
        let placeholder = Storage {
            backend,
            data_dir: std::env::temp_dir()
                .join(format!("runlog-test-{}", uuid::Uuid::new_v4().simple())),
            database_url: None,
        };
        let storage = std::mem::replace(&mut first.storage, placeholder);
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = spawn_app_on(storage).await;

        let after = second.run(&run).await;
        assert_eq!(after["status"], "paused", "{after}");
        assert_eq!(after["steps"], before["steps"], "{after}");
        // Recovery leaves a paused run alone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(second.events(&run).await, events_before);
        assert_eq!(second.run(&run).await["status"], "paused");
        assert!(listed(&second, "status=paused").await.contains(&run));

        ok(resume(&second, &run).await);
        let detail = second.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["d"]["status"], "completed", "{detail}");
        let log = second.events(&run).await;
        assert_eq!(log[..events_before.len()], events_before[..]);
        let events = without_thread(&log);
        let resumed = only(&events, "RunResumed", None);
        assert!(
            is(&events[resumed + 1], "StepDispatched", Some("d")),
            "{:?}",
            types(&events)
        );
        only(&events, "StepDispatched", Some("d"));
    }
);

on_both_backends!(
    retrying_a_cancelled_run_starts_a_linked_run_of_the_same_version_and_input,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("fan", fan_out(300)).await;
        let original = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_running(&app, &original, &["b", "c"]).await;
        ok(cancel(&app, &original, json!({"reason": "try again"})).await);
        wait_status(&app, &original, "cancelled").await;
        // A new version of the template must not leak into the retry.
        let (status, _) = app
            .put(
                &format!("/api/templates/{template}"),
                json!({"definition": {"steps": {"only": {"agent": "echo"}}}}),
            )
            .await;
        assert_eq!(status, 200);
        let (status, retried) = app.post(&path(&original, "retry"), json!({})).await;
        assert_eq!(status, 201, "{retried}");
        let id = retried["id"].as_str().unwrap().to_string();
        assert_ne!(id, original);
        assert_eq!(retried["retry_of"], original.as_str());
        assert_eq!(retried["template_version"], 1);
        assert_eq!(retried["input"], json!({"topic": "owls"}));
        let done = app.wait_finished(&id, Duration::from_secs(20)).await;
        assert_eq!(done["status"], "completed", "{done}");
        let step_names = |run: &Value| -> Vec<String> {
            run["steps"].as_object().unwrap().keys().cloned().collect()
        };
        let original_steps = step_names(&app.run(&original).await);
        let retried_steps = step_names(&done);
        assert_eq!(
            retried_steps, original_steps,
            "the retry runs the original definition"
        );
        let first = &app.events(&id).await[0];
        assert_eq!(first["event_type"], "RunStarted");
        assert_eq!(first["event_version"], "1.4");
        assert_eq!(first["payload"]["retry_of"], original.as_str());
    }
);

on_both_backends!(
    retrying_a_run_that_did_not_fail_or_was_not_cancelled_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("fan", fan_out(400)).await;
        let running = app.run_id(&template, json!({})).await;
        let before = app.counts().await;
        expect_error(
            &app.post(&path(&running, "retry"), json!({})).await,
            409,
            "run_not_retryable",
        );
        app.wait_finished(&running, Duration::from_secs(20)).await;
        expect_error(
            &app.post(&path(&running, "retry"), json!({})).await,
            409,
            "run_not_retryable",
        );
        let unknown = uuid::Uuid::new_v4().to_string();
        expect_error(
            &app.post(&path(&unknown, "retry"), json!({})).await,
            404,
            "run_not_found",
        );
        expect_error(
            &app.post("/api/runs/not%20an%20id/retry", json!({})).await,
            400,
            "invalid_run_id",
        );
        expect_error(
            &app.get(&path(&running, "retry")).await,
            405,
            "method_not_allowed",
        );
        assert_eq!(app.counts().await, before, "a refused retry starts nothing");
    }
);
