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
