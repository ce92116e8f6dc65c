//! The `llm` and `llm_judge` agents against `runlog fake-llm` started by the
//! test: answers, usage and cost recorded with the attempt, streaming to
//! WebSocket subscribers, retries honouring `Retry-After`, final failures,
//! budgets, the concurrency bound, bad configurations.

use std::time::Duration;

use runlog::fakellm::FakeLlm;
use serde_json::{json, Value};

use crate::common::{
    count_events, expect_error, spawn_app_with_options, unique_name, AppOptions, TestApp,
};
use crate::on_both_backends;
use crate::ws::{connect, recv, send};

const WAIT: Duration = Duration::from_secs(30);

/// The fake and a server whose `llm` agents call it.
async fn spawn(backend: crate::common::Backend, extra: &str) -> Option<(TestApp, FakeLlm)> {
    let fake = FakeLlm::start("127.0.0.1:0").expect("the fake LLM starts");
    let config = format!(
        "[llm]\nbase_url = \"{}\"\nmodel = \"fake\"\nmax_concurrency = 2\n\
         [llm.prices.fake]\nprompt = 0.001\ncompletion = 0.002\n{extra}",
        fake.base_url()
    );
    let app = spawn_app_with_options(
        backend,
        AppOptions {
            config: Some(config),
            ..AppOptions::default()
        },
    )
    .await?;
    Some((app, fake))
}

async fn stats(app: &TestApp, fake: &FakeLlm) -> Value {
    let mut response = app
        .client
        .get(format!("http://127.0.0.1:{}/stats", fake.port))
        .send()
        .await
        .expect("stats");
    response.json().await.expect("stats JSON")
}

/// A one-step template of `step`, started; the run's id.
async fn start_one(app: &TestApp, step: Value, input: Value) -> String {
    let template = app
        .template_id(&unique_name("llm"), json!({"steps": {"s": step}}))
        .await;
    app.run_id(&template, input).await
}

on_both_backends!(
    an_llm_step_answers_with_the_models_text_and_records_model_tokens_and_cost,
    |backend| {
        let Some((app, _fake)) = spawn(backend, "").await else {
            return;
        };
        let step =
            json!({"agent": "llm", "prompt": "Describe owls", "config": {"system": "Be brief."}});
        let run = start_one(&app, step, json!({"topic": "owls"})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (_, text) = app.get(&format!("/api/runs/{run}/artifacts/s.text")).await;
        let text = text["versions"][0]["content"].as_str().unwrap().to_string();
        assert!(text.starts_with("Echo: Describe owls"), "{text}");
        assert!(
            text.contains("\"topic\": \"owls\""),
            "the input is in the prompt: {text}"
        );
        let usage = &done["steps"]["s"]["attempts"][0]["usage"];
        assert_eq!(usage["model"], "fake", "{done}");
        // The fake counts words: the system prompt (2), the user message.
        let prompt = usage["prompt_tokens"].as_u64().unwrap();
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!(prompt > 2 && completion > 2, "{usage}");
        let cost = usage["cost"].as_f64().unwrap();
        assert!(
            (cost - (prompt as f64 * 0.001 + completion as f64 * 0.002)).abs() < 1e-9,
            "{usage}"
        );
        assert_eq!(done["usage"]["prompt_tokens"], prompt);
        assert!((done["usage"]["cost"].as_f64().unwrap() - cost).abs() < 1e-9);
        // The usage is a fact of the log.
        let events = app.events(&run).await;
        let completed = events
            .iter()
            .find(|e| e["event_type"] == "StepCompleted")
            .unwrap();
        assert_eq!(completed["payload"]["usage"]["model"], "fake");
    }
);

on_both_backends!(
    a_streaming_llm_step_sends_its_tokens_to_subscribers_as_they_come_and_logs_the_text_once,
    |backend| {
        let Some((app, _fake)) = spawn(backend, "").await else {
            return;
        };
        let template = app
            .template_id(
                "streaming",
                json!({"steps": {"s": {"agent": "llm", "prompt": "one two three four five six",
                                        "config": {"stream": true, "comments": false}}}}),
            )
            .await;
        // Manual mode: subscribe first, then let the step run.
        let (status, body) = app
            .post(
                "/api/runs",
                json!({"template_id": template, "input": {}, "auto_run": false}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let run = body["id"].as_str().unwrap().to_string();
        let mut ws = connect(&app).await;
        send(&mut ws, json!({"type": "subscribe", "run_id": run})).await;
        assert_eq!(recv(&mut ws).await["type"], "subscribed");
        let (status, _) = app
            .post(&format!("/api/runs/{run}/steps/s/trigger"), json!({}))
            .await;
        assert_eq!(status, 200);
        let mut streamed = String::new();
        let mut pieces = 0;
        loop {
            let message = recv(&mut ws).await;
            if message["type"] == "progress" {
                assert_eq!(message["run_id"], run.as_str());
                assert_eq!(message["step"], "s");
                assert_eq!(message["attempt"], 1);
                streamed.push_str(message["text"].as_str().unwrap());
                pieces += 1;
            }
            if message["type"] == "event" && message["event_type"] == "StepCompleted" {
                break;
            }
        }
        assert!(pieces > 3, "the text came in pieces ({pieces})");
        let (_, text) = app.get(&format!("/api/runs/{run}/artifacts/s.text")).await;
        assert_eq!(text["versions"][0]["content"], streamed.as_str());
        assert!(streamed.starts_with("Echo: one two three"), "{streamed}");
        // Progress is not an event: the log holds the text once.
        let events = app.events(&run).await;
        let log = serde_json::to_string(&events).unwrap();
        assert_eq!(log.matches("Echo: one two three").count(), 1, "{log}");
        assert!(events.iter().all(|e| e["event_type"] != "progress"));
        let usage = app.run(&run).await["steps"]["s"]["attempts"][0]["usage"].clone();
        assert!(usage["completion_tokens"].as_u64().unwrap() > 3, "{usage}");
    }
);

on_both_backends!(
    a_throttled_llm_call_is_retried_after_the_wait_the_server_asks_and_a_bad_request_is_not,
    |backend| {
        let Some((app, fake)) = spawn(backend, "").await else {
            return;
        };
        let step = json!({"agent": "llm", "prompt": "hi", "config": {"model": "fake-flaky-429"},
                          "retry": {"max_attempts": 3, "backoff_ms": 10}});
        let run = start_one(&app, step, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let events = app.events(&run).await;
        let scheduled = events
            .iter()
            .find(|e| e["event_type"] == "StepRetryScheduled")
            .unwrap();
        assert_eq!(
            scheduled["payload"]["delay_ms"], 1_000,
            "Retry-After: 1 is honoured"
        );

        let before = stats(&app, &fake).await["requests"].as_u64().unwrap();
        let step = json!({"agent": "llm", "prompt": "hi", "config": {"model": "fake-status-400"},
                          "retry": {"max_attempts": 3}});
        let run = start_one(&app, step, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(
            done["steps"]["s"]["error"]
                .as_str()
                .unwrap()
                .contains("answered 400"),
            "{done}"
        );
        assert_eq!(
            count_events(&app.events(&run).await, "StepDispatched", None),
            1
        );
        assert_eq!(
            stats(&app, &fake).await["requests"].as_u64().unwrap(),
            before + 1
        );
    }
);

on_both_backends!(
    an_llm_call_that_would_pass_the_budget_is_not_made_and_the_step_fails_with_budget_exceeded,
    |backend| {
        let Some((app, fake)) = spawn(backend, "").await else {
            return;
        };
        let template = app
            .template_id(
                "budgeted",
                json!({
                    "budget": {"max_tokens": 100},
                    "steps": {"s": {"agent": "llm", "prompt": "Write an essay", "config": {"max_tokens": 500}}}
                }),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        let error = done["steps"]["s"]["error"].as_str().unwrap();
        assert!(
            error.starts_with("budget_exceeded: the run budget allows 100 tokens"),
            "{error}"
        );
        assert_eq!(stats(&app, &fake).await["requests"], 0, "no call was made");

        // A step's cost budget, with the model priced.
        let template = app
            .template_id(
                "cost",
                json!({"steps": {"s": {"agent": "llm", "prompt": "hi", "budget": {"max_cost": 0.05},
                                        "config": {"max_tokens": 100}}}}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert!(
            done["steps"]["s"]["error"]
                .as_str()
                .unwrap()
                .starts_with("budget_exceeded: the step budget allows a cost of 0.05"),
            "{done}"
        );
    }
);

on_both_backends!(
    llm_calls_in_flight_never_exceed_the_configured_concurrency,
    |backend| {
        let Some((app, fake)) = spawn(backend, "").await else {
            return;
        };
        let template = app
            .template_id(
                "slow",
                json!({"steps": {"s": {"agent": "llm", "prompt": "hi", "config": {"model": "fake-slow-300"}}}}),
            )
            .await;
        let mut runs = Vec::new();
        for n in 0..6 {
            runs.push(app.run_id(&template, json!({"n": n})).await);
        }
        for run in &runs {
            assert_eq!(app.wait_finished(run, WAIT).await["status"], "completed");
        }
        let stats = stats(&app, &fake).await;
        assert_eq!(stats["requests"], 6);
        assert_eq!(stats["max_in_flight"], 2, "{stats}");
    }
);

on_both_backends!(
    the_llm_judge_scores_its_input_against_criteria_through_the_model,
    |backend| {
        let Some((app, _fake)) = spawn(backend, "").await else {
            return;
        };
        let step = json!({"agent": "llm_judge", "config": {"criteria": "mentions owls and night"}});
        let run = start_one(&app, step, json!({"text": "Owls hunt."})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        // "mentions", "owls", "night": owls is there (and "mentions" not).
        let (_, score) = app.get(&format!("/api/runs/{run}/artifacts/s.score")).await;
        let score = score["versions"][0]["content"].as_f64().unwrap();
        assert!((score - 1.0 / 3.0).abs() < 1e-9, "{score}");
        let (_, feedback) = app
            .get(&format!("/api/runs/{run}/artifacts/s.feedback"))
            .await;
        assert_eq!(
            feedback["versions"][0]["content"],
            "mention mentions, night"
        );
        assert_eq!(done["steps"]["s"]["attempts"][0]["usage"]["model"], "fake");
    }
);

on_both_backends!(
    llm_steps_are_refused_at_creation_when_no_model_or_no_server_would_serve_them,
    |backend| {
        // A server without an LLM.
        let Some(app) = crate::common::spawn_app(backend).await else {
            return;
        };
        let reply = app
            .create_template(
                "x",
                json!({"steps": {"s": {"agent": "llm", "config": {"model": "m"}}}}),
            )
            .await;
        let message = expect_error(&reply, 422, "invalid_agent_config");
        assert!(message.contains("no LLM server"), "{message}");
        // A server with one but no default model.
        let fake = FakeLlm::start("127.0.0.1:0").unwrap();
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(format!("[llm]\nbase_url = \"{}\"\n", fake.base_url())),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        for (step, field) in [
            (json!({"agent": "llm"}), "config.model"),
            (
                json!({"agent": "llm", "config": {"model": "m", "temperature": 3}}),
                "config.temperature",
            ),
            (
                json!({"agent": "llm", "config": {"model": "m", "tools": []}}),
                "tools",
            ),
            (
                json!({"agent": "llm_judge", "config": {"model": "m"}}),
                "criteria",
            ),
        ] {
            let reply = app
                .create_template("x", json!({"steps": {"s": step}}))
                .await;
            let message = expect_error(&reply, 422, "invalid_agent_config");
            assert!(message.contains(field), "{field}: {message}");
        }
        let reply = app
            .create_template(
                "x",
                json!({"budget": {}, "steps": {"s": {"agent": "llm", "config": {"model": "m"}}}}),
            )
            .await;
        expect_error(&reply, 422, "invalid_budget");
        let reply = app
            .create_template("x", json!({"steps": {"s": {"agent": "llm", "budget": {"max_tokens": 0}, "config": {"model": "m"}}}}))
            .await;
        let message = expect_error(&reply, 422, "invalid_budget");
        assert!(message.contains("step 's'"), "{message}");
    }
);
