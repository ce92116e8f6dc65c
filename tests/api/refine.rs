//! Refine loops end to end: a producer that improves with each attempt, a
//! `judge` that passes it on the third; loops that never pass fail or
//! accept their best, as configured; `runlog replay` shows the same scores.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{count_events, spawn_app, TestApp};
use crate::on_both_backends;
use crate::replay::{json_of, replay};

const WAIT: Duration = Duration::from_secs(30);

/// `draft` writes "owl " once per attempt number (it improves), and the
/// start of the feedback it got; `judge` wants "owl owl owl" and no "cat":
/// attempts 1 and 2 score 0.5, attempt 3 scores 1. `publish` follows.
fn improving(threshold: f64, max_attempts: u32, on_exhausted: &str) -> Value {
    json!({"steps": {
        "draft": {
            "agent": "template",
            "config": {"text": "{{ 'owl ' * attempt }}{% for i in instructions %}[{{ i[:22] }}]{% endfor %}", "comments": false},
            "refine": {
                "evaluator": "judge",
                "evaluator_config": {"keywords": ["owl owl owl"], "forbidden": ["cat"]},
                "max_attempts": max_attempts,
                "pass_threshold": threshold,
                "on_exhausted": on_exhausted
            }
        },
        "publish": {"agent": "echo", "depends_on": ["draft"], "config": {"comments": false}}
    }})
}

async fn versions(app: &TestApp, run: &str) -> Value {
    let (status, body) = app
        .get(&format!("/api/runs/{run}/artifacts/draft.text"))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

on_both_backends!(
    a_loop_whose_third_attempt_passes_records_three_versions_and_three_scores,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id("improving", improving(0.8, 5, "fail"))
            .await;
        let run = app.run_id(&template, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let draft = &done["steps"]["draft"];
        let refine = &draft["refine"];
        assert_eq!(refine["current_attempt"], 3, "{draft}");
        assert_eq!(refine["max_attempts"], 5);
        assert_eq!(refine["final_score"], 1.0);
        let scores: Vec<f64> = refine["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores, [0.5, 0.5, 1.0]);
        let attempts = draft["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3);
        assert_eq!(attempts[2]["status"], "completed");
        assert_eq!(
            attempts[0]["feedback"],
            "1 of 2 checks failed: missing the keyword 'owl owl owl'."
        );
        // Versions 1 to 3, the third latest; the second attempt got the
        // first one's feedback.
        let body = versions(&app, &run).await;
        assert_eq!(body["latest"], 3);
        let texts: Vec<&str> = body["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["content"].as_str().unwrap())
            .collect();
        assert_eq!(texts.len(), 3);
        assert_eq!(
            texts,
            [
                "owl ",
                "owl owl [Feedback on attempt 1:]",
                "owl owl owl [Feedback on attempt 2:]"
            ]
        );
        let events = app.events(&run).await;
        assert_eq!(count_events(&events, "StepEvaluated", Some("draft")), 3);
        assert_eq!(count_events(&events, "StepProduced", Some("draft")), 3);
        // publish read the passing version.
        let (_, published) = app
            .get(&format!("/api/runs/{run}/artifacts/publish.draft"))
            .await;
        assert_eq!(published["versions"][0]["content"]["text"], texts[2]);
        // The thread tells the story.
        let messages = app.messages(&run).await;
        let scored: Vec<&str> = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .filter(|c| c.starts_with("Step 'draft' attempt"))
            .collect();
        assert_eq!(scored.len(), 3, "{scored:?}");
        assert!(
            scored[2].contains("scored 1.00 (passes 0.80)"),
            "{}",
            scored[2]
        );
        // A replay of the log shows the same scores.
        let replayed = json_of(&replay(&app, &run, &[]).await);
        assert_eq!(replayed["steps"]["draft"]["refine"], *refine);
        // The runs list can be filtered by agent.
        let (_, listed) = app.get("/api/runs?agent=judge").await;
        assert!(
            listed["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == run.as_str()),
            "{listed}"
        );
        let (_, none) = app.get("/api/runs?agent=llm").await;
        assert!(none["items"].as_array().unwrap().is_empty(), "{none}");
        // Names match whole and exactly: no wildcard, no other case.
        for near in ["judg_", "jud", "Judge"] {
            let (_, none) = app.get(&format!("/api/runs?agent={near}")).await;
            assert!(
                none["items"].as_array().unwrap().is_empty(),
                "{near}: {none}"
            );
        }
    }
);

on_both_backends!(
    a_loop_that_never_passes_fails_or_accepts_its_best_as_configured,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // Two attempts, both 0.5, under a threshold of 0.9.
        let failing = app.template_id("failing", improving(0.9, 2, "fail")).await;
        let run = app.run_id(&failing, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "failed", "{done}");
        assert_eq!(
            done["steps"]["draft"]["error"],
            "refine: none of 2 attempts reached the threshold 0.9 (the best scored 0.5 at attempt 1)"
        );
        assert_eq!(done["steps"]["publish"]["status"], "pending");

        let accepting = app
            .template_id("accepting", improving(0.9, 2, "accept_best"))
            .await;
        let run = app.run_id(&accepting, json!({})).await;
        let done = app.wait_finished(&run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["steps"]["draft"]["refine"]["final_score"], 0.5);
        // The first attempt scored best (the second only tied): latest
        // moves back to version 1.
        let body = versions(&app, &run).await;
        assert_eq!(body["latest"], 1, "{body}");
        assert_eq!(done["artifacts"]["draft.text"]["latest"], 1, "{done}");
    }
);
