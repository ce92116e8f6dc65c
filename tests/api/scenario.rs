//! The long steering scenario of issue #3, end to end, with replay: one run
//! paused while two steps run in parallel, instructed, resumed, routed by a
//! review choice, a completed step retried with a new prompt, its artifact
//! rolled back, and finished; then its event history and `runlog replay
//! --at N` tell that story.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{spawn_app, TestApp};
use crate::on_both_backends;

/// Research in parallel, a draft, a review gate that routes to generation
/// or upload, and a final sign-off.
fn editorial() -> Value {
    json!({"steps": {
        "research_a": {"agent": "echo", "config": {"delay_ms": 600}},
        "research_b": {"agent": "echo", "config": {"delay_ms": 600}},
        "draft": {
            "agent": "template",
            "depends_on": ["research_a", "research_b"],
            "prompt": "Write a draft",
            "config": {"text": "draft: {{ prompt }} | {{ instructions | join(';') }}"}
        },
        "review": {
            "agent": "template",
            "depends_on": ["draft"],
            "review": true,
            "choices": ["ai_generation", "upload"],
            "config": {"text": "review of {{ draft.text }}"}
        },
        "generate": {
            "agent": "template",
            "depends_on": ["review"],
            "prompt": "Generate an image brief",
            "when": {"step": "review", "output": "choice", "equals": "ai_generation"},
            "config": {"text": "generated ({{ prompt }})"}
        },
        "upload": {
            "agent": "echo",
            "depends_on": ["review"],
            "when": {"step": "review", "output": "choice", "equals": "upload"}
        },
        "publish": {
            "agent": "template",
            "depends_on": ["generate", "upload"],
            "review": true,
            "config": {"text": "publish: {{ generate.text }}"}
        }
    }})
}

/// Polls the run detail until `done` holds.
async fn wait_for(app: &TestApp, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let detail = app.run(run).await;
        if done(&detail) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status_of<'a>(detail: &'a Value, step: &str) -> &'a str {
    detail["steps"][step]["status"].as_str().unwrap_or("?")
}

/// The content of one version of an artifact.
async fn version(app: &TestApp, run: &str, name: &str, version: u64) -> Value {
    let (status, body) = app.get(&format!("/api/runs/{run}/artifacts/{name}")).await;
    assert_eq!(status, 200, "{body}");
    body["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == version)
        .unwrap_or_else(|| panic!("{name} has no version {version}: {body}"))["content"]
        .clone()
}

/// The run's events without the thread's (agents' comments interleave with
/// the step story in no fixed order).
fn story(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| {
            !matches!(
                e["event_type"].as_str(),
                Some("MessagePosted" | "MessageStatusChanged")
            )
        })
        .collect()
}

/// Asserts that `expected` (event type, a field that must match) occurs in
/// `events` in this order; returns the sequence of each match.
fn assert_in_order(events: &[&Value], expected: &[(&str, Value)]) -> Vec<u64> {
    let mut at = 0;
    let mut sequences = Vec::new();
    for (event_type, fields) in expected {
        let found = events[at..].iter().position(|e| {
            e["event_type"] == *event_type
                && fields
                    .as_object()
                    .expect("fields object")
                    .iter()
                    .all(|(k, v)| e["payload"][k] == *v)
        });
        let Some(offset) = found else {
            let rest: Vec<String> = events[at..]
                .iter()
                .map(|e| format!("{} {}", e["event_type"], e["payload"]))
                .collect();
            panic!(
                "no {event_type} {fields} after position {at}; rest:\n{}",
                rest.join("\n")
            );
        };
        at += offset;
        sequences.push(events[at]["sequence"].as_u64().expect("sequence"));
        at += 1;
    }
    sequences
}

/// `runlog replay <run> --at <n>` on the app's storage, as JSON.
async fn replay_at(app: &TestApp, run: &str, n: u64) -> Value {
    let n_text = n.to_string();
    let output = app.cli(&["replay", run, "--at", &n_text]).await;
    assert!(
        output.status.success(),
        "replay --at {n} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("replay prints JSON")
}

/// A sequence number, what replay should show there, and a check of it.
type Expectation<'a> = (u64, &'a str, &'a dyn Fn(&Value) -> bool);

on_both_backends!(
    one_run_is_paused_instructed_routed_retried_rolled_back_and_replayed,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("editorial", editorial()).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;

        // Pause while the two research steps run in parallel.
        wait_for(&app, &run, "both research steps running", |d| {
            status_of(d, "research_a") == "running" && status_of(d, "research_b") == "running"
        })
        .await;
        let (status, paused) = app.post(&format!("/api/runs/{run}/pause"), json!({})).await;
        assert_eq!(status, 200, "{paused}");
        assert_eq!(paused["pause_requested"], true, "{paused}");
        // Both finish; nothing else starts; the run is paused.
        let detail = wait_for(&app, &run, "the run paused", |d| d["status"] == "paused").await;
        assert_eq!(status_of(&detail, "research_a"), "completed");
        assert_eq!(status_of(&detail, "research_b"), "completed");
        assert_eq!(status_of(&detail, "draft"), "ready", "{detail}");
        assert!(detail["steps"]["draft"]["attempts"]
            .as_array()
            .expect("attempts")
            .is_empty());

        // An instruction, then resume: the next step receives it.
        let (status, instruction) = app
            .post(
                &format!("/api/runs/{run}/messages"),
                json!({"content": "Keep it under 100 words", "action": "instruction"}),
            )
            .await;
        assert_eq!(status, 201, "{instruction}");
        assert_eq!(instruction["status"], "pending");
        let instruction_id = instruction["id"].clone();
        let (status, body) = app
            .post(&format!("/api/runs/{run}/resume"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let detail = wait_for(&app, &run, "the review gate", |d| {
            status_of(d, "review") == "awaiting_review"
        })
        .await;
        assert_eq!(
            version(&app, &run, "draft.text", 1).await,
            "draft: Write a draft | Keep it under 100 words"
        );
        assert_eq!(
            detail["steps"]["draft"]["attempts"][0]["instructions"],
            json!([instruction_id])
        );
        let (_, thread) = app
            .get(&format!("/api/runs/{run}/messages?limit=500"))
            .await;
        let posted = thread["items"]
            .as_array()
            .expect("items")
            .iter()
            .find(|m| m["id"] == instruction_id)
            .expect("the instruction is in the thread")
            .clone();
        assert_eq!(posted["status"], "processed", "{posted}");

        // The review gate, approved with a choice that skips one branch.
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/steps/review/approve"),
                json!({"choice": "ai_generation"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let detail = wait_for(&app, &run, "the sign-off gate", |d| {
            status_of(d, "publish") == "awaiting_review"
        })
        .await;
        assert_eq!(status_of(&detail, "upload"), "skipped", "{detail}");
        assert_eq!(status_of(&detail, "generate"), "completed", "{detail}");
        assert_eq!(detail["status"], "running");

        // A completed step retried with a prompt override: its dependants
        // re-run and its artifact has versions 1 and 2.
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/steps/generate/retry"),
                json!({"prompt_override": "Generate a watercolour brief"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let detail = wait_for(&app, &run, "the sign-off gate again", |d| {
            status_of(d, "publish") == "awaiting_review" && d["steps"]["publish"]["attempt"] == 2
        })
        .await;
        assert_eq!(
            version(&app, &run, "generate.text", 1).await,
            "generated (Generate an image brief)"
        );
        assert_eq!(
            version(&app, &run, "generate.text", 2).await,
            "generated (Generate a watercolour brief)"
        );
        assert_eq!(detail["artifacts"]["generate.text"]["latest"], 2);
        assert_eq!(detail["artifacts"]["generate.text"]["versions"], 2);
        let generate = &detail["steps"]["generate"]["attempts"][1];
        assert_eq!(
            generate["prompt_override"], "Generate a watercolour brief",
            "{generate}"
        );
        assert_eq!(generate["writes"]["generate.text"], 2, "{generate}");
        let publish = &detail["steps"]["publish"]["attempts"][1];
        assert_eq!(publish["reads"]["generate.text"], 2, "{publish}");
        assert_eq!(
            version(&app, &run, "publish.text", 2).await,
            "publish: generated (Generate a watercolour brief)"
        );

        // Roll the artifact back to version 1: the dependants re-run again.
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/artifacts/generate.text/rollback"),
                json!({"to_version": 1}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let detail = wait_for(&app, &run, "the sign-off gate a third time", |d| {
            status_of(d, "publish") == "awaiting_review" && d["steps"]["publish"]["attempt"] == 3
        })
        .await;
        assert_eq!(detail["artifacts"]["generate.text"]["latest"], 1);
        assert_eq!(
            detail["steps"]["publish"]["attempts"][2]["reads"]["generate.text"],
            1
        );
        assert_eq!(
            version(&app, &run, "publish.text", 3).await,
            "publish: generated (Generate an image brief)"
        );

        // Sign off: the run completes.
        let (status, body) = app
            .post(&format!("/api/runs/{run}/steps/publish/approve"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let finished = wait_for(&app, &run, "completion", |d| d["status"] == "completed").await;

        // The event history tells the whole story, in order.
        let events = app.events(&run).await;
        let story = story(&events);
        let marks = assert_in_order(
            &story,
            &[
                ("RunStarted", json!({})),
                ("PauseRequested", json!({})),
                ("StepCompleted", json!({})),
                ("StepCompleted", json!({})),
                ("RunPaused", json!({})),
                ("RunResumed", json!({})),
                (
                    "StepDispatched",
                    json!({"step": "draft", "instructions": [instruction_id]}),
                ),
                ("StepCompleted", json!({"step": "draft"})),
                ("StepAwaitingReview", json!({"step": "review"})),
                (
                    "StepApproved",
                    json!({"step": "review", "choice": "ai_generation"}),
                ),
                (
                    "StepCompleted",
                    json!({"step": "review", "skipped": ["upload"], "ready": ["generate"]}),
                ),
                ("StepCompleted", json!({"step": "generate", "attempt": 1})),
                (
                    "StepAwaitingReview",
                    json!({"step": "publish", "attempt": 1}),
                ),
                (
                    "StepRetryRequested",
                    json!({"step": "generate", "invalidated": ["publish"]}),
                ),
                ("StepDispatched", json!({"step": "generate", "attempt": 2})),
                ("StepCompleted", json!({"step": "generate", "attempt": 2})),
                (
                    "StepAwaitingReview",
                    json!({"step": "publish", "attempt": 2}),
                ),
                (
                    "ArtifactRolledBack",
                    json!({"name": "generate.text", "from_version": 2, "to_version": 1, "invalidated": ["publish"], "ready": ["publish"]}),
                ),
                (
                    "StepAwaitingReview",
                    json!({"step": "publish", "attempt": 3}),
                ),
                ("StepApproved", json!({"step": "publish"})),
                ("StepCompleted", json!({"step": "publish"})),
                ("RunCompleted", json!({})),
            ],
        );
        // Nothing was dispatched between the pause and the resume.
        let (paused_at, resumed_at) = (marks[1], marks[5]);
        assert!(!story.iter().any(|e| e["event_type"] == "StepDispatched"
            && (paused_at..resumed_at).contains(&e["sequence"].as_u64().unwrap_or(0))));

        // The thread shows each system message once.
        let (_, thread) = app
            .get(&format!("/api/runs/{run}/messages?limit=500"))
            .await;
        let system: Vec<&str> = thread["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|m| m["author"] == "system")
            .map(|m| m["content"].as_str().expect("content"))
            .collect();
        for expected in [
            "Run paused.",
            "Run resumed.",
            "Step 'review' is awaiting review. Choices: ai_generation, upload.",
            "Artifact 'generate.text' rolled back from version 2 to version 1.",
            "Run completed.",
        ] {
            assert_eq!(
                system.iter().filter(|s| **s == expected).count(),
                1,
                "{expected:?} in {system:?}"
            );
        }
        assert_eq!(
            system
                .iter()
                .filter(|s| **s == "Step 'publish' is awaiting review.")
                .count(),
            3,
            "{system:?}"
        );

        // Replay shows each intermediate state, and the last is what the
        // API serves.
        let last = finished["sequence"].as_u64().expect("sequence");
        assert_eq!(last as usize, events.len());
        let expectations: [Expectation; 6] = [
            (marks[4], "paused with draft ready", &|s| {
                s["status"] == "paused" && status_of(s, "draft") == "ready"
            }),
            (marks[8], "review awaiting", &|s| {
                status_of(s, "review") == "awaiting_review"
            }),
            (marks[10], "upload skipped", &|s| {
                status_of(s, "upload") == "skipped"
                    && s["steps"]["review"]["choice"] == "ai_generation"
            }),
            (marks[13], "publish invalidated", &|s| {
                status_of(s, "publish") == "pending" && status_of(s, "generate") == "ready"
            }),
            (marks[17], "rolled back", &|s| {
                s["artifacts"]["generate.text"]["latest"] == 1 && status_of(s, "publish") == "ready"
            }),
            (last, "completed", &|s| s["status"] == "completed"),
        ];
        for (n, what, holds) in expectations {
            let state = replay_at(&app, &run, n).await;
            assert_eq!(state["sequence"], n, "{state}");
            assert!(holds(&state), "replay --at {n} should show {what}: {state}");
        }
        for n in 1..=last {
            let state = replay_at(&app, &run, n).await;
            assert_eq!(state["sequence"], n, "replay --at {n}: {state}");
        }
        assert_eq!(replay_at(&app, &run, last).await, finished);
    }
);
