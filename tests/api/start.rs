//! Starting runs as a client calls a function: `POST /api/runs?wait=`
//! answers with the finished run and its outputs (or 202 and where to
//! look), and `Idempotency-Key` makes a start safe to repeat, across
//! restarts too.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{diamond, expect_error, spawn_app, spawn_app_on, TestApp};
use crate::on_both_backends;

/// `POST /api/runs{query}` with `body` and extra headers.
async fn start(
    app: &TestApp,
    query: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> crate::common::Response {
    app.request_with_headers("POST", &format!("/api/runs{query}"), Some(body), headers)
        .await
}

/// How many runs the admin can list.
async fn run_count(app: &TestApp) -> usize {
    let (status, body) = app.get("/api/runs?limit=200").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().expect("items").len()
}

on_both_backends!(
    a_start_that_waits_answers_with_the_finished_run_and_the_last_steps_outputs,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // Two last steps: `b` (after `a`) and `alone`.
        let template = app
            .template_id(
                "two-ends",
                json!({"steps": {
                    "a": {"agent": "echo"},
                    "b": {"agent": "echo", "depends_on": ["a"]},
                    "alone": {"agent": "echo"}
                }}),
            )
            .await;
        let body =
            json!({"template_id": template, "input": {"topic": "owls", "big": "x".repeat(20_000)}});
        let answer = start(&app, "?wait=30", body, &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let run = &answer.body;
        assert_eq!(run["status"], "completed", "{run}");
        let id = run["id"].as_str().expect("id");
        assert_eq!(
            answer.header("location"),
            Some(format!("/api/runs/{id}").as_str())
        );
        // The same document as a GET, plus the outputs.
        let mut fetched = app.run(id).await;
        fetched["outputs"] = run["outputs"].clone();
        assert_eq!(&fetched, run);
        // Only the last steps' artifacts: nothing depends on b or alone.
        let outputs = run["outputs"].as_object().expect("outputs");
        let mut names: Vec<&str> = outputs.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["alone.big", "alone.topic", "b.a"], "{run}");
        // Small ones inline, big ones as a link to fetch.
        let topic = &outputs["alone.topic"];
        assert_eq!(topic["content"], "owls", "{topic}");
        assert_eq!(topic["version"], 1);
        let big = &outputs["alone.big"];
        assert!(big["content"].is_null(), "{big}");
        assert!(big["size"].as_u64().expect("size") > 20_000, "{big}");
        assert_eq!(big["purged"], false);
        let href = big["href"].as_str().expect("href");
        assert_eq!(href, format!("/api/runs/{id}/artifacts/alone.big"));
        let (status, fetched) = app.get(href).await;
        assert_eq!(status, 200, "{fetched}");
        assert_eq!(fetched["versions"][0]["content"], "x".repeat(20_000));

        // A run that fails has finished too: 200, with the failure.
        let failing = app
            .template_id(
                "fails",
                json!({"steps": {"a": {"agent": "echo", "config": {"fail_times": 5}}}}),
            )
            .await;
        let answer = start(&app, "?wait=30", json!({"template_id": failing}), &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["status"], "failed", "{}", answer.body);
        assert!(
            answer.body["error"]["message"].is_string(),
            "{}",
            answer.body
        );
        assert_eq!(answer.body["outputs"], json!({}));
    }
);

on_both_backends!(
    a_start_that_does_not_finish_in_time_answers_202_with_where_to_look,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("slow", diamond(1_500)).await;
        let body = json!({"template_id": template, "input": {"topic": "owls"}});
        let answer = start(&app, "?wait=0.2", body, &[]).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
        assert!(answer.body["outputs"].is_null(), "{}", answer.body);
        assert!(
            matches!(answer.body["status"].as_str(), Some("running" | "queued")),
            "{}",
            answer.body
        );
        let location = answer.header("location").expect("Location").to_string();
        let id = answer.body["id"].as_str().expect("id");
        assert_eq!(location, format!("/api/runs/{id}"));
        let done = app.wait_finished(id, Duration::from_secs(30)).await;
        assert_eq!(done["status"], "completed");
        // wait=0 looks once.
        let answer = start(&app, "?wait=0", json!({"template_id": template}), &[]).await;
        assert_eq!(answer.status, 202, "{}", answer.body);
    }
);

on_both_backends!(a_bad_wait_is_a_400_and_starts_nothing, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let body = json!({"template_id": template});
    for query in [
        "?wait=-1",
        "?wait=61",
        "?wait=abc",
        "?wait=NaN",
        "?wait=inf",
        "?wait=1&x=2",
    ] {
        let answer = start(&app, query, body.clone(), &[]).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert!(
            matches!(
                answer.body["error"]["code"].as_str(),
                Some("invalid_wait" | "invalid_query")
            ),
            "{query}: {}",
            answer.body
        );
    }
    let answer = start(&app, "?wait=-1", body, &[]).await;
    expect_error(&(answer.status, answer.body), 400, "invalid_wait");
    assert_eq!(run_count(&app).await, 0);
});

on_both_backends!(
    the_same_idempotency_key_and_body_start_one_run_even_across_a_restart,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let body = json!({"template_id": template, "input": {"topic": "owls"}});
        let key = [("Idempotency-Key", "order-42")];
        let first = start(&app, "", body.clone(), &key).await;
        assert_eq!(first.status, 201, "{}", first.body);
        assert!(first.header("idempotent-replayed").is_none());
        let id = first.body["id"].as_str().expect("id").to_string();
        let second = start(&app, "", body.clone(), &key).await;
        assert_eq!(second.status, 200, "{}", second.body);
        assert_eq!(second.header("idempotent-replayed"), Some("true"));
        assert_eq!(second.body["id"], id.as_str());
        // With a wait, the replay waits for the same run.
        let third = start(&app, "?wait=30", body.clone(), &key).await;
        assert_eq!(third.status, 200, "{}", third.body);
        assert_eq!(third.body["id"], id.as_str());
        assert_eq!(third.body["status"], "completed");
        assert!(third.body["outputs"].is_object());
        assert_eq!(run_count(&app).await, 1);
        let events = app.events(&id).await;
        assert_eq!(
            events
                .iter()
                .filter(|e| e["event_type"] == "RunStarted")
                .count(),
            1
        );

        // The same key with another body: 422, nothing recorded.
        for other in [
            json!({"template_id": template, "input": {"topic": "bats"}}),
            json!({"template_id": template, "input": {"topic": "owls"}, "auto_run": false}),
        ] {
            let refused = start(&app, "", other, &key).await;
            expect_error(
                &(refused.status, refused.body),
                422,
                "idempotency_key_reused",
            );
        }
        assert_eq!(run_count(&app).await, 1);
        assert_eq!(app.events(&id).await, events);

        // A manual run whose mode was switched since still replays.
        let manual =
            json!({"template_id": template, "input": {"topic": "moths"}, "auto_run": false});
        let manual_key = [("Idempotency-Key", "order-manual")];
        let first = start(&app, "", manual.clone(), &manual_key).await;
        assert_eq!(first.status, 201, "{}", first.body);
        let manual_id = first.body["id"].as_str().expect("id").to_string();
        let (status, toggled) = app
            .put(
                &format!("/api/runs/{manual_id}/auto-run"),
                json!({"enabled": true}),
            )
            .await;
        assert_eq!(status, 200, "{toggled}");
        let again = start(&app, "", manual, &manual_key).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.body["id"], manual_id.as_str());
        let runs_now = run_count(&app).await;
        // After a restart, the log still knows the key.
        let storage = app.stop_keeping_storage().await;
        let app = spawn_app_on(storage).await;
        let again = start(&app, "", body.clone(), &key).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.body["id"], id.as_str());
        assert_eq!(run_count(&app).await, runs_now);
        // Another key is another run.
        let other = start(&app, "", body, &[("Idempotency-Key", "order-43")]).await;
        assert_eq!(other.status, 201, "{}", other.body);
        assert_ne!(other.body["id"], id.as_str());
        assert_eq!(run_count(&app).await, runs_now + 1);
    }
);

on_both_backends!(concurrent_starts_with_one_key_make_one_run, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let body = json!({"template_id": template, "input": {"topic": "owls"}});
    let answers = futures::future::join_all(
        (0..8).map(|_| start(&app, "", body.clone(), &[("Idempotency-Key", "same")])),
    )
    .await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let replayed = answers.iter().filter(|a| a.status == 200).count();
    assert_eq!(
        (created, replayed),
        (1, 7),
        "{:?}",
        answers
            .iter()
            .map(|a| (a.status, &a.body))
            .collect::<Vec<_>>()
    );
    let ids: std::collections::BTreeSet<&str> = answers
        .iter()
        .filter_map(|a| a.body["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(run_count(&app).await, 1);
});

on_both_backends!(keys_are_per_user_and_a_bad_key_is_a_400, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let body = json!({"template_id": template, "input": {}});
    let (status, ada) = app
        .post("/api/users", json!({"name": "ada", "role": "user"}))
        .await;
    assert_eq!(status, 201, "{ada}");
    let ada_id = ada["id"].as_str().expect("id");
    let (status, token) = app
        .post(&format!("/api/users/{ada_id}/tokens"), json!({"name": "t"}))
        .await;
    assert_eq!(status, 201, "{token}");
    let bearer = format!("Bearer {}", token["token"].as_str().expect("token"));
    let mine = start(&app, "", body.clone(), &[("Idempotency-Key", "k")]).await;
    let hers = start(
        &app,
        "",
        body.clone(),
        &[("Idempotency-Key", "k"), ("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        (mine.status, hers.status),
        (201, 201),
        "{} {}",
        mine.body,
        hers.body
    );
    assert_ne!(mine.body["id"], hers.body["id"]);
    assert_eq!(hers.body["owner"], ada_id);

    let long = "k".repeat(256);
    for key in ["", "has space", "tab\there", long.as_str()] {
        let refused = start(&app, "", body.clone(), &[("Idempotency-Key", key)]).await;
        expect_error(
            &(refused.status, refused.body),
            400,
            "invalid_idempotency_key",
        );
    }
    assert_eq!(run_count(&app).await, 2);
});
