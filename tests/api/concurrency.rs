//! Concurrent commands to the same runs on one node: every command is
//! decided on the state its predecessors left, so none is refused with
//! `409 conflict` (the answer to another node writing first).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use serde_json::json;

use crate::common::{spawn_app, TestApp};
use crate::on_both_backends;

/// Runs under fire at once, and commands sent to each.
const RUNS: usize = 10;
const COMMANDS_PER_RUN: usize = 100;
/// Commands in flight at once per run.
const IN_FLIGHT: usize = 50;

/// A diamond whose echo steps comment as they start and finish, slowly
/// enough that the comments and results interleave with the commands.
fn commenting_diamond() -> serde_json::Value {
    let config = |ms: u64| json!({"delay_ms": ms});
    json!({"steps": {
        "a": {"agent": "echo", "config": config(120)},
        "b": {"agent": "echo", "depends_on": ["a"], "config": config(150)},
        "c": {"agent": "echo", "depends_on": ["a"], "config": config(80)},
        "d": {"agent": "echo", "depends_on": ["b", "c"], "config": config(120)}
    }})
}

/// The `i`-th command of a mix: messages, pause, resume and (in manual
/// mode) triggers of the next ready step.
async fn command(app: &TestApp, run: &str, i: usize, manual: bool) -> (u16, String) {
    let (status, body) = match i % 5 {
        0 | 1 => {
            app.post_message(run, json!({"content": format!("note {i}")}))
                .await
        }
        2 => app.post(&format!("/api/runs/{run}/pause"), json!({})).await,
        3 => {
            app.post(&format!("/api/runs/{run}/resume"), json!({}))
                .await
        }
        _ if manual => {
            let step = ["a", "b", "c", "d"][i % 4];
            app.post(&format!("/api/runs/{run}/steps/{step}/trigger"), json!({}))
                .await
        }
        _ => {
            app.post_message(run, json!({"content": "more", "action": "instruction"}))
                .await
        }
    };
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

on_both_backends!(
    a_thousand_concurrent_commands_to_runs_whose_agents_comment_never_conflict,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id("commenting diamond", commenting_diamond())
            .await;
        let mut runs = Vec::new();
        for r in 0..RUNS {
            let manual = r % 2 == 1;
            let (status, body) = app
                .post(
                    "/api/runs",
                    json!({"template_id": template, "input": {"n": r}, "auto_run": !manual}),
                )
                .await;
            assert_eq!(status, 201, "{body}");
            runs.push((body["id"].as_str().unwrap().to_string(), manual));
        }
        let mut outcomes: BTreeMap<(u16, String), usize> = BTreeMap::new();
        for chunk in 0..COMMANDS_PER_RUN / IN_FLIGHT {
            let sent = runs.iter().flat_map(|(run, manual)| {
                let app = &app;
                (0..IN_FLIGHT).map(move |i| command(app, run, chunk * IN_FLIGHT + i, *manual))
            });
            for outcome in join_all(sent).await {
                *outcomes.entry(outcome).or_default() += 1;
            }
        }
        let total: usize = outcomes.values().sum();
        assert_eq!(total, RUNS * COMMANDS_PER_RUN);
        let conflicts = outcomes
            .iter()
            .filter(|((_, code), _)| code == "conflict")
            .map(|(_, n)| n)
            .sum::<usize>();
        assert_eq!(conflicts, 0, "commands answered 409 conflict: {outcomes:?}");
        // Everything else took effect or was refused by a rule of the run
        // (pausing a paused run, triggering a step that is not ready, …).
        for ((status, code), n) in &outcomes {
            assert!(
                (200..300).contains(status) || (*status == 409 && !code.is_empty()),
                "{n} commands answered {status} {code}: {outcomes:?}"
            );
        }
        // The runs are still consistent: each can be resumed and finishes.
        for (run, manual) in &runs {
            let _ = app
                .post(&format!("/api/runs/{run}/resume"), json!({}))
                .await;
            if *manual {
                let (status, body) = app
                    .put(
                        &format!("/api/runs/{run}/auto-run"),
                        json!({"enabled": true}),
                    )
                    .await;
                assert!(status == 200 || status == 409, "{status} {body}");
            }
            let done = app.wait_finished(run, Duration::from_secs(30)).await;
            assert_eq!(done["status"], "completed", "{done}");
        }
    }
);
