//! `runlog replay`: the real binary, reading the database a live server
//! holds open, rebuilds a run's state from its event log alone.

use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{diamond, is_thread_event, spawn_app, unique_name, TestApp};
use crate::on_both_backends;

/// Runs `runlog replay <run_id> <extra…>` on the app's storage.
pub async fn replay(app: &TestApp, run_id: &str, extra: &[&str]) -> Output {
    app.cli(&[&["replay", run_id][..], extra].concat()).await
}

/// The stdout of a successful replay, as JSON.
pub fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "replay failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A finished diamond run on a fresh app.
async fn finished_diamond(app: &TestApp) -> String {
    let template = app.template_id(&unique_name("diamond"), diamond(0)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    let detail = app.wait_finished(&run, Duration::from_secs(20)).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    run
}

/// How far a step status is along pending → ready → running → completed.
fn rank(status: &Value) -> u8 {
    match status.as_str() {
        Some("pending") => 0,
        Some("ready") => 1,
        Some("running") => 2,
        Some("completed") | Some("failed") => 3,
        other => panic!("unknown step status {other:?}"),
    }
}

on_both_backends!(replay_prints_what_the_api_serves, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let run = finished_diamond(&app).await;
    let replayed = json_of(&replay(&app, &run, &[]).await);
    let served = app.run(&run).await;
    assert_eq!(replayed, served);
});

on_both_backends!(replay_at_each_sequence_shows_the_run_as_it_was, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let run = finished_diamond(&app).await;
    let last = app.run(&run).await["sequence"].as_u64().expect("sequence");
    let events = app.events(&run).await;
    assert_eq!(last as usize, events.len());
    // The run completes at RunCompleted; only its announcement in the
    // thread follows it, in the same commit.
    let completed_at = events
        .iter()
        .position(|e| e["event_type"] == "RunCompleted")
        .expect("a RunCompleted event") as u64
        + 1;
    assert!(
        events[completed_at as usize..].iter().all(is_thread_event),
        "{events:?}"
    );
    let mut previous: Option<Value> = None;
    for n in 1..=last {
        let state = json_of(&replay(&app, &run, &["--at", &n.to_string()]).await);
        assert_eq!(state["sequence"], n, "{state}");
        assert_eq!(state["id"], run.as_str(), "{state}");
        let steps = state["steps"].as_object().expect("steps");
        assert_eq!(steps.len(), 4, "{state}");
        if n == 1 {
            assert_eq!(state["status"], "running", "{state}");
            for (step, view) in steps {
                let expected = if step == "a" { "ready" } else { "pending" };
                assert_eq!(view["status"], expected, "step {step} at 1: {state}");
            }
        }
        if n >= completed_at {
            assert_eq!(state["status"], "completed", "at {n}: {state}");
        } else {
            assert_eq!(state["status"], "running", "at {n}: {state}");
        }
        if let Some(previous) = &previous {
            for (step, view) in steps {
                let before = &previous["steps"][step]["status"];
                assert!(
                    rank(before) <= rank(&view["status"]),
                    "step {step} went from {before} to {} at {n}",
                    view["status"]
                );
            }
        }
        previous = Some(state);
    }
    // The last state is the full replay.
    let full = json_of(&replay(&app, &run, &[]).await);
    assert_eq!(previous, Some(full));
});

on_both_backends!(replay_verify_passes_on_a_healthy_run, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let run = finished_diamond(&app).await;
    let output = replay(&app, &run, &["--verify"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("verify: ok"), "stderr: {stderr}");
    assert_eq!(json_of(&output), app.run(&run).await);
});

on_both_backends!(replay_of_an_unknown_or_invalid_run_fails, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Some run exists, so the database is not empty.
    finished_diamond(&app).await;

    let unknown = replay(&app, "no-such-run", &[]).await;
    assert!(!unknown.status.success(), "{:?}", unknown.status);
    assert!(
        unknown.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&unknown.stdout)
    );
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("error"), "stderr: {stderr}");
    assert!(stderr.contains("no-such-run"), "stderr: {stderr}");

    let invalid = replay(&app, "not a valid id!", &[]).await;
    assert!(!invalid.status.success(), "{:?}", invalid.status);
    assert!(
        invalid.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&invalid.stdout)
    );
    let stderr = String::from_utf8_lossy(&invalid.stderr);
    assert!(stderr.contains("error"), "stderr: {stderr}");
});

on_both_backends!(
    time_travel_over_the_api_shows_what_replay_at_prints,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let run = finished_diamond(&app).await;
        let now = app.run(&run).await;
        let last = now["sequence"].as_u64().expect("sequence");
        for n in [1, last / 2, last] {
            let (status, past) = app.get(&format!("/api/runs/{run}?at={n}")).await;
            assert_eq!(status, 200, "{past}");
            assert_eq!(past["sequence"], n, "{past}");
            let printed = json_of(&replay(&app, &run, &["--at", &n.to_string()]).await);
            assert_eq!(past, printed, "at {n}");
        }
        let (_, first) = app.get(&format!("/api/runs/{run}?at=1")).await;
        assert_eq!(first["status"], "running", "{first}");
        assert_eq!(first["steps"]["a"]["status"], "ready", "{first}");
        // The last event's state is the read model's.
        let (_, at_last) = app.get(&format!("/api/runs/{run}?at={last}")).await;
        assert_eq!(at_last, now);
    }
);

on_both_backends!(
    time_travel_to_a_sequence_the_run_does_not_have_is_refused,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let run = finished_diamond(&app).await;
        let before = app.events(&run).await;
        let last = before.len();
        for (at, code) in [
            ("0", "invalid_at"),
            ("-3", "invalid_at"),
            (&*(last + 1).to_string(), "invalid_at"),
            ("soon", "invalid_query"),
            ("1.5", "invalid_query"),
        ] {
            let (status, body) = app.get(&format!("/api/runs/{run}?at={at}")).await;
            assert_eq!(status, 400, "at={at}: {body}");
            assert_eq!(body["error"]["code"], code, "at={at}: {body}");
        }
        let (status, body) = app.get("/api/runs/no-such-run?at=1").await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "run_not_found", "{body}");
        // The CLI refuses the same.
        for at in ["0", &*(last + 1).to_string()] {
            let out = replay(&app, &run, &["--at", at]).await;
            assert_eq!(out.status.code(), Some(2), "--at {at}");
            assert!(out.stdout.is_empty());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(&format!("events 1 to {last}")), "{stderr}");
        }
        // Reads change nothing.
        assert_eq!(app.events(&run).await, before);
    }
);

/// `runlog replay --verify <extra…>` over every run (no run id).
async fn verify_runs(app: &TestApp, extra: &[&str]) -> Output {
    app.cli(&[&["replay", "--verify"][..], extra].concat())
        .await
}

on_both_backends!(
    verify_all_passes_when_every_read_model_agrees_with_its_log,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        finished_diamond(&app).await;
        finished_diamond(&app).await;
        for (extra, runs) in [
            (&["--all"][..], 2),
            (&["--since", "2000-01-01T00:00:00Z"][..], 2),
            (&["--since", "2999-01-01T00:00:00+02:00"][..], 0),
        ] {
            let out = verify_runs(&app, extra).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{extra:?}: {stderr}");
            assert!(
                stderr.contains(&format!(
                    "verify: {runs} runs checked, 0 divergent, 0 behind"
                )),
                "{extra:?}: {stderr}"
            );
            assert!(stderr.contains("verify: ok"), "{stderr}");
            assert!(
                out.stdout.is_empty(),
                "{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        // Bad invocations are refused, with the reason.
        let out = verify_runs(&app, &["--since", "yesterday"]).await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
        for args in [&["--all", "some-run"][..], &["--all", "--at", "3"][..]] {
            let out = verify_runs(&app, args).await;
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            assert!(out.stdout.is_empty(), "{args:?}");
        }
    }
);

on_both_backends!(
    verify_all_reports_each_field_where_a_read_model_differs_from_its_log,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let healthy = finished_diamond(&app).await;
        let tampered = finished_diamond(&app).await;
        // Someone edits a read model by hand.
        let db =
            runlog::db::Db::connect(app.storage.database_url.as_deref(), &app.storage.data_dir)
                .await
                .expect("connect");
        runlog::with_pool!(&db, pool => {
            let done = sqlx::query("UPDATE run_details SET doc = REPLACE(doc, $1, $2) WHERE run_id = $3")
                .bind("\"topic\":\"owls\"")
                .bind("\"topic\":\"cats\"")
                .bind(&tampered)
                .execute(pool)
                .await
                .expect("tamper");
            assert_eq!(done.rows_affected(), 1);
        });
        db.close().await;
        let out = verify_runs(&app, &["--all"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stdout} {stderr}");
        assert_eq!(
            stdout.lines().collect::<Vec<_>>(),
            [format!(
                "{tampered}: input.topic: expected \"owls\", found \"cats\""
            )],
            "{stderr}"
        );
        assert!(!stdout.contains(&healthy));
        assert!(
            stderr.contains("verify: 2 runs checked, 1 divergent, 0 behind"),
            "{stderr}"
        );
        assert!(stderr.contains("verify: FAILED"), "{stderr}");
    }
);

/// The sequences of a page of the events endpoint, and its cursor.
async fn events_page(app: &TestApp, run: &str, query: &str) -> (Vec<u64>, Value) {
    let (status, body) = app.get(&format!("/api/runs/{run}/events?{query}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    let sequences = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    (sequences, body["next_cursor"].clone())
}

on_both_backends!(
    the_events_up_to_a_sequence_page_like_the_rest_for_a_history_slider,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let run = finished_diamond(&app).await;
        let last = app.events(&run).await.len() as u64;
        assert!(last > 5);
        let (page, cursor) = events_page(&app, &run, "at_or_before=3").await;
        assert_eq!((page, cursor), (vec![1, 2, 3], Value::Null));
        let (page, cursor) = events_page(&app, &run, "at_or_before=3&limit=2").await;
        assert_eq!((page, cursor), (vec![1, 2], json!("2")));
        let (page, cursor) = events_page(&app, &run, "after=2&at_or_before=3&limit=1").await;
        assert_eq!(
            (page, cursor),
            (vec![3], Value::Null),
            "a page ending at the bound"
        );
        let (page, _) = events_page(&app, &run, "after=3&at_or_before=3").await;
        assert!(page.is_empty());
        let (page, cursor) = events_page(&app, &run, &format!("at_or_before={}", last + 10)).await;
        assert_eq!(page, (1..=last).collect::<Vec<_>>());
        assert_eq!(cursor, Value::Null);
        for (query, code) in [
            ("at_or_before=0", "invalid_at_or_before"),
            ("at_or_before=-1", "invalid_at_or_before"),
            ("at_or_before=soon", "invalid_query"),
        ] {
            let (status, body) = app.get(&format!("/api/runs/{run}/events?{query}")).await;
            assert_eq!(status, 400, "{query}: {body}");
            assert_eq!(body["error"]["code"], code, "{query}: {body}");
        }
        let (status, body) = app.get("/api/runs/no-such-run/events?at_or_before=2").await;
        assert_eq!(status, 404, "{body}");
    }
);
