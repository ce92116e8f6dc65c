//! The limits in-process agents run under: CPU-bound work off the engine's
//! threads, a fuel budget for templates, a cap on outputs. (How long other
//! runs wait meanwhile is measured by `runlog bench`, not asserted here.)

use std::time::Duration;

use serde_json::json;

use crate::common::{expect_error, spawn_app};
use crate::on_both_backends;

const WAIT: Duration = Duration::from_secs(60);

/// A template that loops for a long time (150 million iterations).
const SPIN: &str = "{% for i in range(100000) %}{% for j in range(1500) %}{% endfor %}{% endfor %}";

on_both_backends!(
    templates_that_spin_end_by_their_fuel_limit_while_other_runs_start_finish_and_cancel,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let spinner = app
            .template_id(
                "spinner",
                json!({"steps": {"spin": {"agent": "template", "config": {"text": SPIN}}}}),
            )
            .await;
        let quick = app
            .template_id(
                "quick",
                json!({"steps": {"a": {"agent": "echo"}, "b": {"agent": "echo", "depends_on": ["a"]}}}),
            )
            .await;
        let slow = app
            .template_id(
                "slow",
                json!({"steps": {"a": {"agent": "echo", "config": {"delay_ms": 60_000, "stop_early": true}}}}),
            )
            .await;
        let spinning = [
            app.run_id(&spinner, json!({})).await,
            app.run_id(&spinner, json!({})).await,
        ];
        // While both spin, other runs start, complete and cancel.
        let other = app.run_id(&quick, json!({"n": 1})).await;
        let done = app.wait_finished(&other, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let cancelled = app.run_id(&slow, json!({})).await;
        let (status, body) = app
            .post(&format!("/api/runs/{cancelled}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let ended = app
            .wait_run(&cancelled, "the run is cancelled", WAIT, |r| {
                r["status"] == "cancelled"
            })
            .await;
        assert_eq!(ended["steps"]["a"]["status"], "ready", "{ended}");
        // The spinners end by their limit, with an error that says so.
        for run in &spinning {
            let failed = app.wait_finished(run, WAIT).await;
            assert_eq!(failed["status"], "failed", "{failed}");
            let error = failed["steps"]["spin"]["error"]
                .as_str()
                .unwrap_or_default();
            assert!(
                error.starts_with("template: the rendering took more than its")
                    && error.contains("units of fuel"),
                "{failed}"
            );
        }
    }
);

on_both_backends!(
    a_template_that_renders_past_the_output_limit_fails_clearly,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // 20 MB of text: past the 16 MiB output limit.
        let big = "{% for i in range(200) %}{% for j in range(1000) %}{{ '0123456789' * 10 }}{% endfor %}{% endfor %}";
        let template = app
            .template_id(
                "big",
                json!({"steps": {"big": {"agent": "template", "config": {"text": big}}}}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let failed = app.wait_finished(&run, WAIT).await;
        assert_eq!(failed["status"], "failed", "{failed}");
        let error = failed["steps"]["big"]["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("longer than 16777216 bytes (the output limit)"),
            "{failed}"
        );
        // Nothing was written for it.
        let reply = app
            .get(&format!("/api/runs/{run}/artifacts/big.text"))
            .await;
        expect_error(&reply, 404, "artifact_not_found");
    }
);

/// A server whose input bounds are small enough to pass in a test.
async fn bounded(backend: crate::common::Backend) -> Option<crate::common::TestApp> {
    crate::common::spawn_app_with_options(
        backend,
        crate::common::AppOptions {
            config: Some(
                "[limits]\nmax_run_input_bytes = 100\nmessages_per_run_per_minute = 3\n\
                 ws_subscriptions_per_connection = 2\nws_connections_per_token = 2\n"
                    .into(),
            ),
            ..Default::default()
        },
    )
    .await
}

on_both_backends!(
    a_run_input_or_a_message_rate_past_its_bound_is_refused_and_records_nothing,
    |backend| {
        let Some(app) = bounded(backend).await else {
            return;
        };
        let template = app.template_id("manual", crate::common::diamond(0)).await;
        let before = app.counts().await;
        let reply = app
            .start_run(&template, json!({"text": "x".repeat(200)}))
            .await;
        let message = expect_error(&reply, 413, "input_too_large");
        assert!(message.contains("100"), "{message}");
        assert_eq!(app.counts().await, before, "no run was started");

        let run = app.manual_run_id(&template, json!({"topic": "owls"})).await;
        for n in 0..3 {
            let (status, body) = app
                .post_message(&run, json!({"content": format!("note {n}")}))
                .await;
            assert_eq!(status, 201, "{body}");
        }
        let events = app.events(&run).await;
        let refused = app
            .request_with_headers(
                "POST",
                &format!("/api/runs/{run}/messages"),
                Some(json!({"content": "one too many"})),
                &[],
            )
            .await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], "too_many_messages");
        let wait: u64 = refused
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("seconds");
        assert!((1..=60).contains(&wait), "{wait}");
        assert_eq!(app.events(&run).await, events, "nothing was recorded");
    }
);

on_both_backends!(
    websocket_connections_per_token_and_subscriptions_per_connection_are_bounded,
    |backend| {
        use crate::ws::{recv, send};
        let Some(app) = bounded(backend).await else {
            return;
        };
        let template = app.template_id("manual", crate::common::diamond(0)).await;
        let runs: Vec<String> =
            futures::future::join_all((0..3).map(|_| app.manual_run_id(&template, json!({}))))
                .await;
        let url = format!("ws://127.0.0.1:{}/api/ws", app.port);
        let (_, mut first) = app.client.ws(&url).connect().await.expect("first");
        let (_, second) = app.client.ws(&url).connect().await.expect("second");
        match app.client.ws(&url).connect().await {
            Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
                assert_eq!(status.as_u16(), 429)
            }
            Err(e) => panic!("unexpected handshake error: {e}"),
            Ok(_) => panic!("a third connection of one token opened"),
        }
        // Another token has connections of its own.
        let (_, user) = app
            .post("/api/users", json!({"name": "ada", "role": "user"}))
            .await;
        let (_, token) = app
            .post(
                &format!("/api/users/{}/tokens", user["id"].as_str().expect("id")),
                json!({"name": "t"}),
            )
            .await;
        let other = app
            .bare
            .ws(&url)
            .header(
                "authorization",
                format!("Bearer {}", token["token"].as_str().expect("token")),
            )
            .connect()
            .await;
        assert!(other.is_ok(), "another token's connection opens");
        // A connection that closes gives its place back.
        drop(second);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if app.client.ws(&url).connect().await.is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a closed connection's place was not given back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Two runs followed; a third is refused, the connection stays.
        for run in &runs[..2] {
            send(
                &mut first,
                json!({"type": "subscribe", "run_id": run, "after": 0}),
            )
            .await;
            loop {
                if recv(&mut first).await["type"] == "subscribed" {
                    break;
                }
            }
        }
        send(
            &mut first,
            json!({"type": "subscribe", "run_id": runs[2], "after": 0}),
        )
        .await;
        let refused = loop {
            let message = recv(&mut first).await;
            if message["type"] == "error" {
                break message;
            }
        };
        assert_eq!(refused["code"], "too_many_subscriptions", "{refused}");
        assert_eq!(refused["status"], 429, "{refused}");
        send(
            &mut first,
            json!({"type": "unsubscribe", "run_id": runs[0]}),
        )
        .await;
        send(
            &mut first,
            json!({"type": "subscribe", "run_id": runs[2], "after": 0}),
        )
        .await;
        loop {
            let message = recv(&mut first).await;
            assert_ne!(message["type"], "error", "{message}");
            if message["type"] == "subscribed" && message["run_id"] == runs[2].as_str() {
                break;
            }
        }
    }
);

/// A server whose request and definition bounds are small enough to pass
/// in a test, with a remote agent whose workers may hold one task each.
async fn tight(backend: crate::common::Backend) -> Option<crate::common::TestApp> {
    crate::common::spawn_app_with_options(
        backend,
        crate::common::AppOptions {
            config: Some(format!(
                "{}\n[limits]\nmax_body_bytes = 4096\nmax_steps = 3\nmax_dependency_depth = 2\n\
                 max_prompt_bytes = 16\nmax_claims_per_worker = 1\n",
                crate::workers::config()
            )),
            ..Default::default()
        },
    )
    .await
}

on_both_backends!(
    a_body_or_a_definition_past_its_bound_is_refused_and_saves_nothing,
    |backend| {
        let Some(app) = tight(backend).await else {
            return;
        };
        let before = app.counts().await;
        // The body: JSON endpoints and the ones that read raw bytes alike.
        let big = json!({"steps": {"a": {"agent": "echo", "config": {"pad": "x".repeat(5000)}}}});
        let message = expect_error(
            &app.create_template("big", big).await,
            413,
            "body_too_large",
        );
        assert!(message.contains("4096"), "{message}");
        let template = app
            .template_id("ok", json!({"steps": {"a": {"agent": "echo"}}}))
            .await;
        let run = app.manual_run_id(&template, json!({})).await;
        let events = app.events(&run).await;
        let reply = app
            .post(
                &format!("/api/runs/{run}/cancel"),
                json!({"reason": "x".repeat(5000)}),
            )
            .await;
        expect_error(&reply, 413, "body_too_large");
        assert_eq!(app.events(&run).await, events, "nothing was recorded");

        // The definition: steps, the depth of depends_on chains, a prompt.
        let counts = app.counts().await;
        let four = json!({"steps": {"a": {"agent": "echo"}, "b": {"agent": "echo"},
                                   "c": {"agent": "echo"}, "d": {"agent": "echo"}}});
        let message = expect_error(
            &app.create_template("four", four).await,
            422,
            "too_many_steps",
        );
        assert!(message.contains("at most 3"), "{message}");
        let chain = json!({"steps": {"a": {"agent": "echo"},
                                    "b": {"agent": "echo", "depends_on": ["a"]},
                                    "c": {"agent": "echo", "depends_on": ["b"]}}});
        let message = expect_error(
            &app.create_template("chain", chain).await,
            422,
            "dependency_chain_too_deep",
        );
        assert!(
            message.contains("'c'") && message.contains("at most 2"),
            "{message}"
        );
        // A diamond of depth 2 is fine: depth counts the longest chain.
        let wide = json!({"steps": {"a": {"agent": "echo"}, "b": {"agent": "echo", "depends_on": ["a"]},
                                   "c": {"agent": "echo", "depends_on": ["a"]}}});
        assert_eq!(app.create_template("wide", wide).await.0, 201);
        let wordy = json!({"steps": {"a": {"agent": "echo", "prompt": "seventeen bytes!!"}}});
        let message = expect_error(
            &app.create_template("wordy", wordy).await,
            422,
            "prompt_too_large",
        );
        assert!(
            message.contains("17 bytes") && message.contains("16"),
            "{message}"
        );
        let (_, revised) = app
            .put(
                &format!("/api/templates/{template}"),
                json!({"definition": {"steps": {"a": {"agent": "echo", "prompt": "seventeen bytes!!"}}}}),
            )
            .await;
        assert_eq!(revised["error"]["code"], "prompt_too_large", "{revised}");
        let (templates, runs) = app.counts().await;
        assert_eq!(
            (templates, runs),
            (counts.0 + 1, counts.1),
            "only `wide` was saved"
        );
        assert_eq!(before.1 + 1, runs);
    }
);

on_both_backends!(
    a_worker_holding_its_most_claims_is_refused_another_until_one_is_done,
    |backend| {
        let Some(app) = tight(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "remote",
                json!({"steps": {"a": {"agent": "summarize", "config": {"words": 5}}}}),
            )
            .await;
        let first = app.run_id(&template, json!({"text": "one"})).await;
        let second = app.run_id(&template, json!({"text": "two"})).await;
        let task = app.claim_one("w1", &["summarize"]).await;
        let events = (app.events(&first).await, app.events(&second).await);
        let refused = app
            .request_with_headers(
                "POST",
                "/api/workers/claim",
                Some(json!({"worker_id": "w1", "agents": ["summarize"], "wait_s": 0})),
                &[(
                    "Authorization",
                    &format!("Bearer {}", crate::workers::TOKEN),
                )],
            )
            .await;
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], "too_many_claims");
        assert_eq!(refused.header("retry-after"), Some("1"));
        assert_eq!(
            (app.events(&first).await, app.events(&second).await),
            events,
            "the refused claim recorded nothing"
        );
        // Another worker has its own allowance; once w1's task is done, w1
        // may claim again.
        let other = app.claim_one("w2", &["summarize"]).await;
        let (status, body) = app
            .task_call(&task, "complete", json!({"outputs": {"summary": "done"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .task_call(&other, "complete", json!({"outputs": {"summary": "done"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        let third = app.run_id(&template, json!({"text": "three"})).await;
        let again = app.claim_one("w1", &["summarize"]).await;
        assert_eq!(again["run_id"], third.as_str(), "{again}");

        // Claims that wait at once (long polls begun while the worker held
        // nothing) cannot take it past its bound either: of two waiting
        // claims of w3, one gets a task and the other is refused.
        let queue_two = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let four = app.run_id(&template, json!({"text": "four"})).await;
            let five = app.run_id(&template, json!({"text": "five"})).await;
            (four, five)
        };
        let ((s1, b1), (s2, b2), (four, five)) = tokio::join!(
            app.claim("w3", &["summarize"], 10),
            app.claim("w3", &["summarize"], 10),
            queue_two
        );
        let mut replies = [(s1, b1), (s2, b2)];
        replies.sort_by_key(|(status, _)| *status);
        let [(ok, task), (refused, error)] = replies;
        assert_eq!((ok, refused), (200, 429), "{task} {error}");
        assert_eq!(error["error"]["code"], "too_many_claims", "{error}");
        assert_eq!(task["run_id"], four.as_str(), "the oldest task: {task}");
        // The other task waits for a worker with room.
        let (status, body) = app
            .task_call(&again, "complete", json!({"outputs": {"summary": "done"}}))
            .await;
        assert_eq!(status, 200, "{body}");
        let next = app.claim_one("w1", &["summarize"]).await;
        assert_eq!(next["run_id"], five.as_str(), "{next}");
    }
);
