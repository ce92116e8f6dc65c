//! Operators' views: `GET /api/admin/projections` and
//! `runlog projections list`, which say where each read model is in the
//! log.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{diamond, spawn_app, TestApp};
use crate::on_both_backends;

/// Runs `runlog projections list <extra…>` on the app's storage.
async fn projections_list(app: &TestApp, extra: &[&str]) -> std::process::Output {
    app.cli(&[&["projections", "list"][..], extra].concat())
        .await
}

const READ_MODELS: [&str; 5] = [
    "artifact_versions",
    "run_details",
    "run_messages",
    "run_summaries",
    "template_catalogue",
];

on_both_backends!(
    every_read_model_reports_its_position_and_no_lag_once_it_has_caught_up,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, Duration::from_secs(20)).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        // A GET of the run waits for its last commit: then nothing the
        // run wrote is left to apply.
        let (status, body) = app.get("/api/admin/projections").await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().expect("items").clone();
        let names: Vec<&str> = items.iter().filter_map(|i| i["name"].as_str()).collect();
        assert_eq!(names, READ_MODELS);
        let first = &items[0]["position"];
        assert!(first["position"].as_i64().unwrap_or(0) > 0, "{body}");
        for item in &items {
            assert_eq!(item["version"], 1, "{item}");
            assert_eq!(item["lag_events"], 0, "{item}");
            assert_eq!(
                &item["position"], first,
                "one follower writes them all: {body}"
            );
            assert!(item["updated_at"].is_string(), "{item}");
        }

        // The CLI reads the same, beside the running server.
        let output = projections_list(&app, &["--json"]).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listed: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
        assert_eq!(listed["items"], body["items"]);
        let table = projections_list(&app, &[]).await;
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(table.status.success(), "{text}");
        assert!(text.starts_with("NAME"), "{text}");
        for name in READ_MODELS {
            assert!(text.contains(name), "{text}");
        }
    }
);
