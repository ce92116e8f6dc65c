//! Runs: execution, parallelism, retries, template versions.

use std::time::Duration;

use serde_json::json;

use crate::common::{diamond, spawn_app};
use crate::on_both_backends;

on_both_backends!(the_diamond_completes_with_each_step_once, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    let detail = app.wait_finished(&run, Duration::from_secs(20)).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    let events = app.events(&run).await;
    for step in ["a", "b", "c", "d"] {
        let completions = events
            .iter()
            .filter(|e| e["event_type"] == "StepCompleted" && e["payload"]["step"] == step)
            .count();
        assert_eq!(completions, 1, "step {step} completed {completions} times");
        assert_eq!(detail["steps"][step]["status"], "completed");
    }
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap())
        .collect();
    assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
    assert_eq!(detail["artifacts"]["a.topic"]["latest"], 1);
});
