//! The worker protocol, spoken as a worker would: claim (long-poll),
//! heartbeat, complete, fail, comment, release; a stale lease is `409
//! lease_lost` and changes nothing; leases expire on the engine's clock.

use std::time::{Duration, Instant};

use runlog::domain::ids::Timestamp;
use runlog::engine::ManualClock;
use serde_json::{json, Value};

use crate::common::{
    count_events, expect_error, spawn_app_with, spawn_app_with_options, types, AppOptions, Reply,
    Storage, TestApp,
};
use crate::on_both_backends;

/// The worker token of these tests.
pub const TOKEN: &str = "test-worker-token-0123456789";

/// How long a test waits for the engine.
const WAIT: Duration = Duration::from_secs(15);

/// A configuration with two remote agents, `summarize` (its outputs must
/// hold a string `summary`) and `render`.
pub fn config() -> String {
    format!(
        r#"
worker_token = "{TOKEN}"
lease_ms = 30000
cancel_grace_ms = 30000

[agents.summarize]
description = "Summarises a text"
config_schema = {{ type = "object", properties = {{ words = {{ type = "integer" }} }}, additionalProperties = false }}
output_schema = {{ type = "object", required = ["summary"], properties = {{ summary = {{ type = "string" }} }} }}

[agents.render]
description = "Renders things"

[commands.shell]
program = "/bin/sh"
description = "A shell, for the agents list"
"#
    )
}

/// A server with the remote agents.
async fn spawn(backend: crate::common::Backend, clock: Option<ManualClock>) -> Option<TestApp> {
    spawn_app_with_options(
        backend,
        AppOptions {
            clock,
            config: Some(config()),
            ..AppOptions::default()
        },
    )
    .await
}

/// a (summarize, remote) → b (echo, in-process).
fn remote_then_local() -> Value {
    json!({"steps": {
        "a": {"agent": "summarize", "config": {"words": 5}, "prompt": "Summarise it"},
        "b": {"agent": "echo", "depends_on": ["a"], "config": {"comments": false}}
    }})
}

impl TestApp {
    /// A worker's POST with the worker token.
    pub async fn worker_post(&self, path: &str, body: Value) -> Reply {
        self.request_with_headers(
            "POST",
            path,
            Some(body),
            &[("Authorization", &format!("Bearer {TOKEN}"))],
        )
        .await
        .reply()
    }

    /// Claims a task of `agents`, waiting up to `wait_s`.
    pub async fn claim(&self, worker: &str, agents: &[&str], wait_s: u64) -> Reply {
        self.worker_post(
            "/api/workers/claim",
            json!({"worker_id": worker, "agents": agents, "wait_s": wait_s}),
        )
        .await
    }

    /// Claims a task, which must come.
    pub async fn claim_one(&self, worker: &str, agents: &[&str]) -> Value {
        let (status, task) = self.claim(worker, agents, 10).await;
        assert_eq!(status, 200, "no task came: {task}");
        task
    }

    /// POST /api/tasks/{id}/{action} with the task's lease and `extra`.
    pub async fn task_call(&self, task: &Value, action: &str, extra: Value) -> Reply {
        let mut body = json!({"lease_token": task["lease_token"]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        let id = task["task_id"].as_str().expect("task_id");
        self.worker_post(&format!("/api/tasks/{id}/{action}"), body)
            .await
    }
}

on_both_backends!(
    a_worker_claims_a_remote_step_completes_it_and_the_run_goes_on,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({"text": "a long text"})).await;
        let task = app.claim_one("worker-1", &["summarize"]).await;
        for key in [
            "task_id",
            "lease_token",
            "lease_expires_at",
            "run_id",
            "step",
            "attempt",
            "agent",
            "config",
            "prompt",
            "prompt_override",
            "instructions",
            "inputs",
        ] {
            assert!(task.get(key).is_some(), "the task has no {key}: {task}");
        }
        assert_eq!(task["run_id"], run.as_str());
        assert_eq!(task["step"], "a");
        assert_eq!(task["attempt"], 1);
        assert_eq!(task["agent"], "summarize");
        assert_eq!(task["config"], json!({"words": 5}));
        assert_eq!(task["prompt"], "Summarise it");
        assert_eq!(task["inputs"], json!({"text": "a long text"}));
        let detail = app.run(&run).await;
        assert_eq!(detail["steps"]["a"]["status"], "running");
        assert_eq!(detail["steps"]["a"]["worker"], "worker-1");
        assert_eq!(detail["steps"]["a"]["stalled"], false);
        assert_eq!(detail["steps"]["a"]["attempts"][0]["worker"], "worker-1");

        let (status, beat) = app.task_call(&task, "heartbeat", json!({})).await;
        assert_eq!(status, 200, "{beat}");
        assert_eq!(beat["cancel_requested"], false);
        assert_eq!(beat["pause_requested"], false);
        assert!(beat["lease_expires_at"].is_string(), "{beat}");

        let (status, body) = app
            .task_call(&task, "comment", json!({"text": "halfway there"}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .task_call(&task, "complete", json!({"outputs": {"summary": "short"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "completed");

        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (status, artifact) = app
            .get(&format!("/api/runs/{run}/artifacts/a.summary"))
            .await;
        assert_eq!(status, 200, "{artifact}");
        assert_eq!(artifact["versions"][0]["content"], "short", "{artifact}");
        // b got a's outputs.
        let (_, b) = app.get(&format!("/api/runs/{run}/artifacts/b.a")).await;
        assert_eq!(
            b["versions"][0]["content"],
            json!({"summary": "short"}),
            "{b}"
        );
        let events = app.events(&run).await;
        let claimed = &events[crate::common::only_event(&events, "StepClaimed", Some("a"))];
        assert_eq!(claimed["payload"]["worker"], "worker-1");
        let messages = app.messages(&run).await;
        assert!(
            messages.iter().any(|m| m["author"] == "agent"
                && m["content"] == "halfway there"
                && m["step"] == "a"),
            "{messages:?}"
        );
        // Completing again changes nothing.
        let before = app.events(&run).await.len();
        let again = app
            .task_call(&task, "complete", json!({"outputs": {"summary": "twice"}}))
            .await;
        expect_error(&again, 409, "lease_lost");
        let beat = app.task_call(&task, "heartbeat", json!({})).await;
        expect_error(&beat, 409, "lease_lost");
        assert_eq!(app.events(&run).await.len(), before);
    }
);

on_both_backends!(
    a_report_can_claim_the_next_task_in_the_same_call,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let first = app.run_id(&template, json!({"n": 1})).await;
        let second = app.run_id(&template, json!({"n": 2})).await;
        let third = app.run_id(&template, json!({"n": 3})).await;
        let task = app.claim_one("worker-1", &["summarize"]).await;
        let next = json!({"worker_id": "worker-1", "agents": ["summarize"], "wait_s": 5});

        // Completing one task claims the next: the answer carries it, and
        // the run records the claim.
        let (status, body) = app
            .task_call(
                &task,
                "complete",
                json!({"outputs": {"summary": "one"}, "next": next}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "completed");
        assert_eq!(body["task_id"], task["task_id"]);
        let task2 = body["next"].clone();
        assert!(task2["lease_token"].is_string(), "{body}");
        assert!(task2["lease_expires_at"].is_string(), "{body}");
        assert_eq!(task2["step"], "a");
        assert_ne!(task2["run_id"], task["run_id"]);
        let run2 = task2["run_id"].as_str().expect("run_id").to_string();
        assert_eq!(app.run(&run2).await["steps"]["a"]["worker"], "worker-1");

        // Failing claims the next too.
        let (status, body) = app
            .task_call(
                &task2,
                "fail",
                json!({"error": "no luck", "retryable": false, "next": next}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "failed");
        let task3 = body["next"].clone();
        assert!(task3["lease_token"].is_string(), "{body}");
        let run3 = task3["run_id"].as_str().expect("run_id").to_string();
        let mut runs = vec![
            task["run_id"].as_str().expect("run_id").to_string(),
            run2.clone(),
            run3.clone(),
        ];
        runs.sort();
        let mut started = vec![first, second, third];
        started.sort();
        assert_eq!(runs, started, "each run's task was handed out once");

        // No task comes in time: `next` is null, the report still counts.
        let (status, body) = app
            .task_call(
                &task3,
                "complete",
                json!({"outputs": {"summary": "three"},
                       "next": {"worker_id": "worker-1", "agents": ["summarize"], "wait_s": 0}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["next"], Value::Null, "{body}");
        assert_eq!(app.wait_finished(&run3, WAIT).await["status"], "completed");
        assert_eq!(app.wait_finished(&run2, WAIT).await["status"], "failed");
    }
);

on_both_backends!(
    a_report_with_a_bad_next_claim_is_refused_and_records_nothing,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let task = app.claim_one("worker-1", &["summarize"]).await;
        let before = app.events(&run).await.len();
        let cases = [
            (
                json!({"worker_id": "", "agents": ["summarize"]}),
                "invalid_worker_id",
            ),
            (json!({"worker_id": "w", "agents": []}), "invalid_agents"),
            (
                json!({"worker_id": "w", "agents": ["summarize"], "wait_s": 31}),
                "invalid_wait",
            ),
            (
                json!({"worker_id": "w", "agents": ["echo"]}),
                "not_a_remote_agent",
            ),
        ];
        for (next, code) in cases {
            for (action, extra) in [
                (
                    "complete",
                    json!({"outputs": {"summary": "x"}, "next": next}),
                ),
                ("fail", json!({"error": "e", "next": next})),
            ] {
                let reply = app.task_call(&task, action, extra).await;
                expect_error(&reply, 400, code);
            }
        }
        let reply = app
            .task_call(
                &task,
                "complete",
                json!({"outputs": {"summary": "x"}, "next": {"worker_id": "w", "agents": ["summarize"], "colour": 1}}),
            )
            .await;
        assert_eq!(reply.0, 400, "{}", reply.1);
        assert_eq!(app.events(&run).await.len(), before, "nothing recorded");
        assert_eq!(app.run(&run).await["steps"]["a"]["status"], "running");
        // The lease still holds.
        let (status, body) = app.task_call(&task, "heartbeat", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
);

on_both_backends!(
    a_lease_token_that_is_not_visible_ascii_is_refused_and_records_nothing,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let task = app.claim_one("worker-1", &["summarize"]).await;
        let before = app.events(&run).await.len();
        let id = task["task_id"].as_str().expect("task_id");
        for lease in ["a b", "l\u{e9}ase", "tab\there", "nul\u{0}"] {
            for (action, extra) in [
                ("heartbeat", json!({})),
                ("complete", json!({"outputs": {"summary": "x"}})),
                ("fail", json!({"error": "e"})),
                ("comment", json!({"text": "t"})),
                ("release", json!({})),
            ] {
                let mut body = json!({"lease_token": lease});
                body.as_object_mut()
                    .expect("an object")
                    .extend(extra.as_object().expect("an object").clone());
                let reply = app
                    .worker_post(&format!("/api/tasks/{id}/{action}"), body)
                    .await;
                expect_error(&reply, 400, "invalid_lease_token");
            }
        }
        assert_eq!(app.events(&run).await.len(), before, "nothing recorded");
        // The real lease still holds.
        let (status, body) = app.task_call(&task, "heartbeat", json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
);

on_both_backends!(
    whole_numbers_written_with_a_fraction_are_whole_numbers,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        // JSON Schema counts 0.0 an integer, and so does the server.
        let (status, body) = app
            .worker_post(
                "/api/workers/claim",
                json!({"worker_id": "w", "agents": ["summarize"], "wait_s": 0.0}),
            )
            .await;
        assert_eq!(status, 204, "{body}");
        // A fraction is not.
        let reply = app
            .worker_post(
                "/api/workers/claim",
                json!({"worker_id": "w", "agents": ["summarize"], "wait_s": 0.5}),
            )
            .await;
        expect_error(&reply, 400, "invalid_body");
    }
);

on_both_backends!(
    a_waiting_claim_wakes_as_soon_as_a_task_is_dispatched_and_an_idle_one_answers_no_content,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let (status, body) = app.claim("w", &["summarize"], 0).await;
        assert_eq!(status, 204, "{body}");
        let template = app.template_id("remote", remote_then_local()).await;
        let waiting = app.claim("w", &["summarize"], 30);
        let started = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Instant::now();
            (app.run_id(&template, json!({})).await, at)
        };
        let ((status, task), (run, dispatched)) = futures::join!(waiting, started);
        assert_eq!(status, 200, "{task}");
        assert_eq!(task["run_id"], run.as_str());
        // Woken by the dispatch, not by the end of its 30 s wait.
        assert!(dispatched.elapsed() < Duration::from_secs(10));
        // A claim for another agent does not get it.
        let (status, _) = app.claim("w", &["render"], 0).await;
        assert_eq!(status, 204);
    }
);

on_both_backends!(
    each_dispatched_task_wakes_a_waiting_claim_of_its_agent_and_no_wake_up_is_lost,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let summarize = app
            .template_id(
                "one-summary",
                json!({"steps": {"s": {"agent": "summarize", "config": {"words": 1}}}}),
            )
            .await;
        let render = app
            .template_id("one-render", json!({"steps": {"r": {"agent": "render"}}}))
            .await;
        // Two claims wait for summarize, one for render; two summaries and
        // a rendering are dispatched: each claim gets one.
        let claims = futures::future::join_all([
            app.claim("w1", &["summarize"], 20),
            app.claim("w2", &["summarize"], 20),
            app.claim("w3", &["render"], 20),
        ]);
        let started = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Instant::now();
            let mut runs = Vec::new();
            for template in [&summarize, &summarize, &render] {
                runs.push(app.run_id(template, json!({})).await);
            }
            (runs, at)
        };
        let (answers, (runs, dispatched)) = futures::join!(claims, started);
        // Woken by the dispatches, not by the end of their 20 s wait.
        assert!(dispatched.elapsed() < Duration::from_secs(10));
        for (status, task) in &answers {
            assert_eq!(*status, 200, "{task}");
        }
        assert_eq!(answers[0].1["agent"], "summarize");
        assert_eq!(answers[1].1["agent"], "summarize");
        assert_eq!(answers[2].1["agent"], "render");
        let mut got: Vec<&str> = answers
            .iter()
            .map(|(_, task)| task["run_id"].as_str().expect("run_id"))
            .collect();
        got.sort_unstable();
        let mut expected: Vec<&str> = runs.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(got, expected, "three runs, three different tasks");
        // A claim for either agent is woken by a task of the second.
        let waiting = app.claim("w4", &["summarize", "render"], 20);
        let started = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let at = Instant::now();
            (app.run_id(&render, json!({})).await, at)
        };
        let ((status, task), (run, dispatched)) = futures::join!(waiting, started);
        assert_eq!(status, 200, "{task}");
        assert_eq!(task["run_id"], run.as_str());
        assert!(dispatched.elapsed() < Duration::from_secs(10));
    }
);

on_both_backends!(
    a_claim_for_two_agents_woken_by_both_hands_the_wake_up_it_does_not_use_on,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        // Two root steps: their tasks are queued at once, so a claim for
        // both agents is likely woken by both before it looks.
        let both = app
            .template_id(
                "both",
                json!({"steps": {
                    "s": {"agent": "summarize", "config": {"words": 1}},
                    "r": {"agent": "render"}
                }}),
            )
            .await;
        let either = app.claim("either", &["summarize", "render"], 5);
        let summaries = async {
            // Waits after the claim for either agent.
            tokio::time::sleep(Duration::from_millis(200)).await;
            app.claim("summaries", &["summarize"], 5).await
        };
        let started = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let at = Instant::now();
            (app.run_id(&both, json!({})).await, at)
        };
        let ((status, first), (summary_status, summary), (run, dispatched)) =
            futures::join!(either, summaries, started);
        assert_eq!(status, 200, "{first}");
        assert_eq!(first["run_id"], run.as_str());
        if first["agent"] == "render" {
            // The summary must reach the claim waiting for it at once,
            // not when its wait ends.
            assert_eq!(summary_status, 200, "{summary}");
            assert_eq!(summary["agent"], "summarize");
            assert_eq!(summary["run_id"], run.as_str());
            assert!(dispatched.elapsed() < Duration::from_secs(4));
        } else {
            // The claim for either took the summary: nothing else was
            // there for the other.
            assert_eq!(first["agent"], "summarize");
            assert_eq!(summary_status, 204, "{summary}");
        }
    }
);

on_both_backends!(
    worker_calls_without_the_worker_token_are_refused_with_401_and_change_nothing,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let body = json!({"worker_id": "w", "agents": ["summarize"]});
        let response = app
            .request_anonymous("POST", "/api/workers/claim", Some(body.clone()))
            .await;
        assert_eq!(
            response.header("WWW-Authenticate"),
            Some("Bearer realm=\"runlog workers\"")
        );
        expect_error(&response.reply(), 401, "missing_token");
        for (headers, code) in [
            (
                vec![("Authorization", "Bearer not-the-token")],
                "invalid_token",
            ),
            (vec![("Authorization", "Basic abc")], "missing_token"),
        ] {
            let response = app
                .request_with_headers("POST", "/api/workers/claim", Some(body.clone()), &headers)
                .await;
            assert_eq!(
                response.header("WWW-Authenticate"),
                Some("Bearer realm=\"runlog workers\"")
            );
            expect_error(&response.reply(), 401, code);
        }
        // The scheme is case-insensitive.
        let lower = format!("bearer {TOKEN}");
        let response = app
            .request_with_headers(
                "POST",
                "/api/workers/claim",
                Some(json!({"worker_id": "w", "agents": ["render"], "wait_s": 0})),
                &[("Authorization", lower.as_str())],
            )
            .await;
        assert_eq!(response.reply().0, 204);
        // Nothing was claimed: a worker with the token gets the task.
        let task = app.claim_one("w", &["summarize"]).await;
        assert_eq!(task["run_id"], run.as_str());
        let events = app.events(&run).await;
        assert_eq!(count_events(&events, "StepClaimed", None), 1);
    }
);

on_both_backends!(
    a_server_without_a_worker_token_accepts_no_worker,
    |backend| {
        let Some(app) = crate::common::spawn_app(backend).await else {
            return;
        };
        let reply = app.claim("w", &["summarize"], 0).await;
        expect_error(&reply, 401, "workers_not_configured");
    }
);

on_both_backends!(
    bad_worker_requests_are_refused_with_a_clear_4xx_and_change_nothing,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        for (body, status, code) in [
            (
                json!({"worker_id": "w", "agents": ["echo"]}),
                400,
                "not_a_remote_agent",
            ),
            (
                json!({"worker_id": "w", "agents": ["nope"]}),
                400,
                "not_a_remote_agent",
            ),
            (
                json!({"worker_id": "w", "agents": []}),
                400,
                "invalid_agents",
            ),
            (
                json!({"worker_id": "w", "agents": ["bad name"]}),
                400,
                "invalid_agents",
            ),
            (
                json!({"worker_id": "", "agents": ["summarize"]}),
                400,
                "invalid_worker_id",
            ),
            (
                json!({"worker_id": "a b", "agents": ["summarize"]}),
                400,
                "invalid_worker_id",
            ),
            (
                json!({"worker_id": "w", "agents": ["summarize"], "wait_s": 31}),
                400,
                "invalid_wait",
            ),
            (
                json!({"worker_id": "w", "agents": ["summarize"], "extra": 1}),
                400,
                "invalid_body",
            ),
            (json!({"agents": ["summarize"]}), 400, "invalid_body"),
        ] {
            let reply = app.worker_post("/api/workers/claim", body.clone()).await;
            expect_error(&reply, status, code);
        }
        assert_eq!(
            count_events(&app.events(&run).await, "StepClaimed", None),
            0
        );

        let task = app.claim_one("w", &["summarize"]).await;
        let before = app.events(&run).await;
        let stale = json!({"task_id": task["task_id"], "lease_token": "not-the-lease"});
        for (task_ref, action, extra, status, code) in [
            (
                &stale,
                "complete",
                json!({"outputs": {"summary": "x"}}),
                409,
                "lease_lost",
            ),
            (&stale, "heartbeat", json!({}), 409, "lease_lost"),
            (&stale, "fail", json!({"error": "boom"}), 409, "lease_lost"),
            (&stale, "comment", json!({"text": "hi"}), 409, "lease_lost"),
            (&stale, "release", json!({}), 409, "lease_lost"),
            (
                &task,
                "complete",
                json!({"outputs": "text"}),
                422,
                "invalid_outputs",
            ),
            (
                &task,
                "complete",
                json!({"outputs": {"other": 1}}),
                422,
                "invalid_outputs",
            ),
            (
                &task,
                "complete",
                json!({"outputs": {"summary": 7}}),
                422,
                "invalid_outputs",
            ),
            (
                &task,
                "complete",
                json!({"outputs": {"bad name": "x", "summary": "s"}}),
                422,
                "invalid_outputs",
            ),
            (&task, "complete", json!({}), 400, "invalid_body"),
            (&task, "fail", json!({"error": ""}), 400, "invalid_text"),
            (&task, "comment", json!({"text": "  "}), 400, "invalid_text"),
            (
                &task,
                "comment",
                json!({"text": "nul \u{0} here"}),
                400,
                "invalid_body",
            ),
        ] {
            let reply = app.task_call(task_ref, action, extra).await;
            let message = expect_error(&reply, status, code);
            if code == "invalid_outputs" {
                assert!(message.contains("outputs"), "{message}");
            }
        }
        let unknown = json!({"task_id": "nosuchtask", "lease_token": "x"});
        expect_error(
            &app.task_call(&unknown, "heartbeat", json!({})).await,
            409,
            "lease_lost",
        );
        let bad_id = json!({"task_id": "bad-id!", "lease_token": "x"});
        expect_error(
            &app.task_call(&bad_id, "heartbeat", json!({})).await,
            400,
            "invalid_task_id",
        );
        assert_eq!(
            app.events(&run).await,
            before,
            "a refused call changed the log"
        );
        // The real lease still works.
        let (status, _) = app
            .task_call(&task, "complete", json!({"outputs": {"summary": "ok"}}))
            .await;
        assert_eq!(status, 200);
    }
);

on_both_backends!(
    a_worker_failure_is_retried_under_the_steps_policy_unless_it_is_not_retryable,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app
            .template_id(
                "retrying",
                json!({"steps": {"a": {"agent": "render", "retry": {"max_attempts": 3}}}}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let first = app.claim_one("w", &["render"]).await;
        let (status, _) = app
            .task_call(
                &first,
                "fail",
                json!({"error": "timed out", "retryable": true}),
            )
            .await;
        assert_eq!(status, 200);
        let second = app.claim_one("w", &["render"]).await;
        assert_eq!(second["attempt"], 2);
        assert_ne!(second["lease_token"], first["lease_token"]);
        let (status, _) = app
            .task_call(
                &second,
                "fail",
                json!({"error": "400 from upstream", "retryable": false}),
            )
            .await;
        assert_eq!(status, 200);
        let failed = app.wait_finished(&run, WAIT).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        assert_eq!(failed["error"]["message"], "400 from upstream");
        let events = app.events(&run).await;
        assert_eq!(
            count_events(&events, "StepDispatched", Some("a")),
            2,
            "{:?}",
            types(&events)
        );
        let last_failure = events
            .iter()
            .rev()
            .find(|e| e["event_type"] == "StepFailed")
            .unwrap();
        assert_eq!(last_failure["payload"]["retryable"], false);
        assert_eq!(last_failure["payload"]["will_retry"], false);
    }
);

on_both_backends!(
    a_released_task_is_dispatched_again_as_a_new_attempt_for_another_worker,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let first = app.claim_one("w1", &["summarize"]).await;
        let (status, body) = app.task_call(&first, "release", json!({})).await;
        assert_eq!(status, 200, "{body}");
        let second = app.claim_one("w2", &["summarize"]).await;
        assert_eq!(second["attempt"], 2);
        let (status, _) = app
            .task_call(&second, "complete", json!({"outputs": {"summary": "s"}}))
            .await;
        assert_eq!(status, 200);
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed");
        let attempts = done["steps"]["a"]["attempts"].as_array().unwrap();
        assert_eq!(attempts[0]["status"], "released", "{done}");
        assert_eq!(attempts[1]["worker"], "w2");
        // The first worker's lease is gone.
        expect_error(
            &app.task_call(&first, "heartbeat", json!({})).await,
            409,
            "lease_lost",
        );
    }
);

on_both_backends!(
    pausing_a_run_withdraws_a_task_no_worker_claimed_so_the_run_pauses_at_once,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let (status, body) = app.post(&format!("/api/runs/{run}/pause"), json!({})).await;
        assert_eq!(status, 200, "{body}");
        let paused = app
            .wait_run(&run, "the run is paused", WAIT, |r| r["status"] == "paused")
            .await;
        assert_eq!(paused["steps"]["a"]["status"], "ready", "{paused}");
        // No worker gets the withdrawn task.
        let (status, _) = app.claim("w", &["summarize"], 0).await;
        assert_eq!(status, 204);
        // Resumed, the step is dispatched again and a worker gets it.
        let (status, _) = app
            .post(&format!("/api/runs/{run}/resume"), json!({}))
            .await;
        assert_eq!(status, 200);
        let task = app.claim_one("w", &["summarize"]).await;
        assert_eq!(task["attempt"], 2);
    }
);

on_both_backends!(
    a_heartbeat_after_a_cancel_says_so_and_a_pause_is_told_the_same_way,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let task = app.claim_one("w", &["summarize"]).await;
        let (_, body) = app.post(&format!("/api/runs/{run}/pause"), json!({})).await;
        assert_eq!(body["pause_requested"], true, "{body}");
        let (status, beat) = app.task_call(&task, "heartbeat", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(beat["pause_requested"], true, "{beat}");
        assert_eq!(beat["cancel_requested"], false, "{beat}");
        let (status, _) = app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        let (status, beat) = app.task_call(&task, "heartbeat", json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(beat["cancel_requested"], true, "{beat}");
        // The worker stops: it fails the task, and the run ends cancelled.
        let (status, _) = app
            .task_call(
                &task,
                "fail",
                json!({"error": "stopped: the run was cancelled"}),
            )
            .await;
        assert_eq!(status, 200);
        let done = app
            .wait_run(&run, "the run is cancelled", WAIT, |r| {
                r["status"] == "cancelled"
            })
            .await;
        assert_eq!(done["steps"]["a"]["status"], "failed", "{done}");
    }
);

on_both_backends!(
    the_agents_endpoint_lists_built_in_and_remote_agents_with_their_schemas_and_workers,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let (status, _) = app.claim("w1", &["summarize"], 0).await;
        assert_eq!(status, 204);
        let (status, _) = app.claim("w2", &["summarize", "render"], 0).await;
        assert_eq!(status, 204);
        let (status, body) = app.get("/api/agents").await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().unwrap();
        let find = |name: &str| items.iter().find(|a| a["name"] == name).cloned().unwrap();
        let summarize = find("summarize");
        assert_eq!(summarize["kind"], "remote");
        assert_eq!(summarize["description"], "Summarises a text");
        assert_eq!(summarize["workers"], 2);
        assert_eq!(summarize["output_schema"]["required"], json!(["summary"]));
        assert_eq!(find("render")["workers"], 1);
        let echo = find("echo");
        assert_eq!(echo["kind"], "builtin");
        assert!(echo["workers"].is_null());
        assert_eq!(echo["config_schema"]["type"], "object");
        assert!(find("template")["config_schema"]["required"] == json!(["text"]));
        let command = find("command");
        assert!(
            command["description"]
                .as_str()
                .unwrap()
                .contains("shell: A shell, for the agents list"),
            "{command}"
        );
        assert_eq!(
            command["config_schema"]["properties"]["command"]["enum"],
            json!(["shell"])
        );
    }
);

on_both_backends!(
    a_remote_steps_config_is_checked_against_its_agents_schema_at_template_creation,
    |backend| {
        let Some(app) = spawn(backend, None).await else {
            return;
        };
        let reply = app
            .create_template(
                "bad",
                json!({"steps": {"s": {"agent": "summarize", "config": {"words": "five"}}}}),
            )
            .await;
        let message = expect_error(&reply, 422, "invalid_agent_config");
        assert!(
            message.contains("'s'") && message.contains("config.words"),
            "{message}"
        );
    }
);

// ------------------------------------------------------ paused-clock leases --

/// A paused clock.
fn clock() -> ManualClock {
    ManualClock::starting_at(Timestamp(1_800_000_000_000))
}

on_both_backends!(
    a_lease_without_heartbeats_expires_on_the_clock_and_another_worker_gets_the_step,
    |backend| {
        let clock = clock();
        let Some(app) = spawn(backend, Some(clock.clone())).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let first = app.claim_one("w1", &["summarize"]).await;
        assert_eq!(first["lease_expires_at"], "2027-01-15T08:00:30.000Z");
        // A heartbeat 20 s on extends the lease to 50 s.
        clock.advance(Duration::from_secs(20));
        let (_, beat) = app.task_call(&first, "heartbeat", json!({})).await;
        assert_eq!(
            beat["lease_expires_at"], "2027-01-15T08:00:50.000Z",
            "{beat}"
        );
        // Past the first lease, but not the extended one: still held.
        clock.advance(Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = app.task_call(&first, "heartbeat", json!({})).await;
        assert_eq!(status, 200);
        // No heartbeat for a whole lease: it expires, and the step runs again.
        clock.advance(Duration::from_secs(31));
        let second = app.claim_one("w2", &["summarize"]).await;
        assert_eq!(second["attempt"], 2);
        let detail = app.run(&run).await;
        assert_eq!(
            detail["steps"]["a"]["attempts"][0]["status"], "expired",
            "{detail}"
        );
        let events = app.events(&run).await;
        let expired = &events[crate::common::only_event(&events, "StepLeaseExpired", Some("a"))];
        assert_eq!(expired["payload"]["worker"], "w1");
        assert_eq!(expired["payload"]["expiries"], 1);
        // The first worker's late result is refused; the second's counts.
        let late = app
            .task_call(&first, "complete", json!({"outputs": {"summary": "late"}}))
            .await;
        expect_error(&late, 409, "lease_lost");
        let (status, _) = app
            .task_call(
                &second,
                "complete",
                json!({"outputs": {"summary": "on time"}}),
            )
            .await;
        assert_eq!(status, 200);
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, artifact) = app
            .get(&format!("/api/runs/{run}/artifacts/a.summary"))
            .await;
        assert_eq!(
            artifact["versions"].as_array().unwrap().len(),
            1,
            "{artifact}"
        );
        assert_eq!(artifact["versions"][0]["content"], "on time");
    }
);

on_both_backends!(
    after_a_cancel_a_worker_that_keeps_heartbeating_loses_its_lease_when_the_grace_runs_out,
    |backend| {
        let clock = clock();
        let Some(app) = spawn(backend, Some(clock.clone())).await else {
            return;
        };
        let template = app.template_id("remote", remote_then_local()).await;
        let run = app.run_id(&template, json!({})).await;
        let task = app.claim_one("w", &["summarize"]).await;
        let (status, _) = app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200);
        for _ in 0..2 {
            clock.advance(Duration::from_secs(14));
            let (status, beat) = app.task_call(&task, "heartbeat", json!({})).await;
            assert_eq!(status, 200, "{beat}");
            assert_eq!(beat["cancel_requested"], true);
        }
        clock.advance(Duration::from_secs(2));
        let done = app
            .wait_run(&run, "the run is cancelled", WAIT, |r| {
                r["status"] == "cancelled"
            })
            .await;
        assert_eq!(
            done["steps"]["a"]["attempts"][0]["status"], "cancelled",
            "{done}"
        );
        expect_error(
            &app.task_call(&task, "heartbeat", json!({})).await,
            409,
            "lease_lost",
        );
    }
);

on_both_backends!(
    a_claimed_step_keeps_its_worker_across_a_server_restart_and_expires_only_by_time,
    |backend| {
        let clock = clock();
        let Some(storage) = Storage::new(backend).await else {
            return;
        };
        let options = AppOptions {
            clock: Some(clock.clone()),
            config: Some(config()),
            ..AppOptions::default()
        };
        let first = spawn_app_with(storage, options.clone()).await;
        let template = first.template_id("remote", remote_then_local()).await;
        let run = first.run_id(&template, json!({})).await;
        let task = first.claim_one("w", &["summarize"]).await;
        let storage = first.stop_keeping_storage().await;

        let second = spawn_app_with(storage, options).await;
        // Recovery left the claimed attempt to its worker: its lease holds.
        clock.advance(Duration::from_secs(10));
        // (A 503 with Retry-After while the stopped node may still host the
        // run is retried, as a worker would.)
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (status, beat) = loop {
            let reply = second.task_call(&task, "heartbeat", json!({})).await;
            if reply.0 != 503 || std::time::Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(status, 200, "{beat}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let events = second.events(&run).await;
        assert_eq!(
            count_events(&events, "StepDispatched", Some("a")),
            1,
            "{:?}",
            types(&events)
        );
        // It expires by time only.
        clock.advance(Duration::from_secs(41));
        let again = second.claim_one("w2", &["summarize"]).await;
        assert_eq!(again["attempt"], 2);
        let events = second.events(&run).await;
        assert_eq!(
            count_events(&events, "StepLeaseExpired", Some("a")),
            1,
            "{:?}",
            types(&events)
        );
    }
);
