//! Steps under human control: review gates, manual mode, step retry,
//! artifact rollback and branching.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{
    assert_refused, count_events as count, expect_error, is_event as is, only_event as only,
    spawn_app, types, without_thread, Reply, TestApp,
};
use crate::on_both_backends;

/// How long a test waits for a run to reach a state.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Review gates
// ---------------------------------------------------------------------------

on_both_backends!(
    a_review_step_waits_for_approval_with_its_outputs_visible_and_holds_back_its_dependants,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "reviewed",
                json!({"steps": {
                    "draft": {"agent": "echo", "review": true, "config": {"comments": false}},
                    "publish": {"agent": "echo", "depends_on": ["draft"],
                                "config": {"comments": false}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = wait_step(&app, &run, "draft", "awaiting_review").await;
        assert_eq!(detail["status"], "running", "{detail}");
        assert_eq!(detail["steps"]["draft"]["review"], true, "{detail}");
        assert_eq!(detail["steps"]["draft"]["attempt"], 1, "{detail}");
        assert_eq!(
            attempt(&detail, "draft", 1)["status"],
            "awaiting_review",
            "{detail}"
        );
        assert_eq!(detail["steps"]["publish"]["status"], "pending", "{detail}");
        assert_eq!(detail["steps"]["publish"]["attempt"], 0, "{detail}");

        // Its outputs are there to be reviewed.
        let topic = artifact(&app, &run, "draft.topic").await;
        assert_eq!(topic["latest"], 1, "{topic}");
        assert_eq!(topic["versions"][0]["content"], "owls", "{topic}");
        assert_eq!(detail["artifacts"]["draft.topic"]["latest"], 1, "{detail}");

        let events = app.events(&run).await;
        let waiting = &events[only(&events, "StepAwaitingReview", Some("draft"))];
        assert_eq!(waiting["payload"]["attempt"], 1, "{waiting}");
        assert_eq!(
            waiting["payload"]["artifacts"][0]["name"], "draft.topic",
            "{waiting}"
        );
        assert_eq!(
            count(&events, "StepCompleted", None),
            0,
            "{:?}",
            types(&events)
        );
        assert_eq!(
            count(&events, "StepDispatched", Some("publish")),
            0,
            "{:?}",
            types(&events)
        );
        assert!(
            system_messages(&app, &run)
                .await
                .contains(&"Step 'draft' is awaiting review.".to_string()),
            "no system message about the review"
        );

        // Approving completes it and lets its dependants run.
        let approved = ok(approve(&app, &run, "draft", None).await);
        assert_eq!(
            approved["steps"]["draft"]["status"], "completed",
            "{approved}"
        );
        assert_eq!(
            approved["steps"]["draft"]["choice"],
            Value::Null,
            "{approved}"
        );
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            detail["steps"]["publish"]["status"], "completed",
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "draft", 1)["status"],
            "completed",
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "publish", 1)["reads"],
            json!({"draft.topic": 1}),
            "{detail}"
        );

        let events = without_thread(&app.events(&run).await);
        assert_eq!(
            types(&events),
            [
                "RunStarted",
                "StepDispatched",
                "StepAwaitingReview",
                "StepApproved",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ],
            "{events:?}"
        );
        let approved_at = only(&events, "StepApproved", Some("draft"));
        assert_eq!(events[approved_at]["payload"]["attempt"], 1);
        let completed = &events[approved_at + 1];
        assert!(is(completed, "StepCompleted", Some("draft")), "{completed}");
        assert_eq!(
            completed["payload"]["ready"],
            json!(["publish"]),
            "{completed}"
        );
        assert_eq!(
            completed["payload"]["artifacts"],
            json!([]),
            "approval rewrote the outputs: {completed}"
        );
    }
);

on_both_backends!(
    retrying_a_step_awaiting_review_with_a_prompt_override_runs_a_new_attempt_that_awaits_review_again,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "redraft",
                json!({"steps": {
                    "draft": {"agent": "template", "review": true, "prompt": "a long draft",
                              "config": {"text": "{{ prompt }}"}},
                    "publish": {"agent": "echo", "depends_on": ["draft"]}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        wait_step(&app, &run, "draft", "awaiting_review").await;
        let first = artifact(&app, &run, "draft.text").await;
        assert_eq!(first["versions"][0]["content"], "a long draft", "{first}");

        let retried = ok(retry(
            &app,
            &run,
            "draft",
            Some(json!({"prompt_override": "a short draft"})),
        )
        .await);
        assert_eq!(
            retried["steps"]["draft"]["prompt_override"],
            "a short draft",
            "{retried}"
        );
        let detail = wait_until(&app, &run, "draft awaits review again", |d| {
            d["steps"]["draft"]["status"] == "awaiting_review" && d["steps"]["draft"]["attempt"] == 2
        })
        .await;
        assert_eq!(detail["status"], "running", "{detail}");
        assert_eq!(detail["steps"]["publish"]["status"], "pending", "{detail}");
        assert_eq!(detail["steps"]["draft"]["prompt"], "a long draft", "{detail}");
        let second = attempt(&detail, "draft", 2);
        assert_eq!(second["status"], "awaiting_review", "{second}");
        assert_eq!(second["prompt_override"], "a short draft", "{second}");
        assert_eq!(second["writes"], json!({"draft.text": 2}), "{second}");
        assert_eq!(
            attempt(&detail, "draft", 1)["prompt_override"],
            Value::Null,
            "{detail}"
        );

        let text = artifact(&app, &run, "draft.text").await;
        assert_eq!(text["latest"], 2, "{text}");
        assert_eq!(versions(&text), [1, 2], "{text}");
        assert_eq!(text["versions"][1]["content"], "a short draft", "{text}");
        assert_eq!(text["versions"][1]["attempt"], 2, "{text}");

        let events = app.events(&run).await;
        let requested = &events[only(&events, "StepRetryRequested", Some("draft"))];
        assert_eq!(
            requested["payload"]["prompt_override"],
            "a short draft",
            "{requested}"
        );
        assert_eq!(requested["payload"]["invalidated"], json!([]), "{requested}");
        assert_eq!(requested["payload"]["reopens_run"], false, "{requested}");
        assert_eq!(
            count(&events, "StepAwaitingReview", Some("draft")),
            2,
            "{:?}",
            types(&events)
        );
        assert_eq!(
            count(&events, "StepDispatched", Some("publish")),
            0,
            "{:?}",
            types(&events)
        );

        ok(approve(&app, &run, "draft", None).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            attempt(&detail, "publish", 1)["reads"],
            json!({"draft.text": 2}),
            "{detail}"
        );
        let published = artifact(&app, &run, "publish.draft").await;
        assert_eq!(
            published["versions"][0]["content"],
            json!({"text": "a short draft"}),
            "{published}"
        );
    }
);

on_both_backends!(
    approving_with_a_choice_records_it_as_an_artifact_and_bad_approvals_record_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "choices",
                json!({"steps": {
                    "gate": {"agent": "echo", "review": true, "choices": ["yes", "no"],
                             "config": {"comments": false}},
                    "plain": {"agent": "echo", "review": true, "config": {"comments": false}},
                    "after": {"agent": "echo", "depends_on": ["gate", "plain"]}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = wait_until(&app, &run, "both gates await review", |d| {
            d["steps"]["gate"]["status"] == "awaiting_review"
                && d["steps"]["plain"]["status"] == "awaiting_review"
        })
        .await;
        assert_eq!(
            detail["steps"]["gate"]["choices"],
            json!(["yes", "no"]),
            "{detail}"
        );
        assert!(
            system_messages(&app, &run)
                .await
                .contains(&"Step 'gate' is awaiting review. Choices: yes, no.".to_string()),
            "no system message listing the choices"
        );

        let refused = |step: &'static str, body: Option<Value>| approve(&app, &run, step, body);
        assert_refused(&app, &run, refused("gate", None), 422, "choice_required").await;
        assert_refused(
            &app,
            &run,
            refused("gate", Some(json!({}))),
            422,
            "choice_required",
        )
        .await;
        assert_refused(
            &app,
            &run,
            refused("gate", Some(json!({"choice": "maybe"}))),
            422,
            "invalid_choice",
        )
        .await;
        assert_refused(
            &app,
            &run,
            refused("plain", Some(json!({"choice": "yes"}))),
            422,
            "choices_not_offered",
        )
        .await;
        assert_refused(
            &app,
            &run,
            refused("after", None),
            409,
            "step_not_awaiting_review",
        )
        .await;
        assert_refused(&app, &run, refused("nope", None), 404, "unknown_step").await;
        assert_refused(
            &app,
            &run,
            refused("bad!step", None),
            400,
            "invalid_step_id",
        )
        .await;
        assert_refused(
            &app,
            &run,
            refused("gate", Some(json!({"pick": "yes"}))),
            400,
            "invalid_body",
        )
        .await;
        expect_error(
            &approve(&app, "no-such-run", "gate", None).await,
            404,
            "run_not_found",
        );

        let approved = ok(approve(&app, &run, "gate", Some(json!({"choice": "yes"}))).await);
        assert_eq!(
            approved["steps"]["gate"]["status"], "completed",
            "{approved}"
        );
        assert_eq!(approved["steps"]["gate"]["choice"], "yes", "{approved}");
        assert_eq!(
            approved["steps"]["after"]["status"], "pending",
            "{approved}"
        );
        let choice = artifact(&app, &run, "gate.choice").await;
        assert_eq!(choice["latest"], 1, "{choice}");
        assert_eq!(choice["versions"][0]["content"], "yes", "{choice}");
        assert_eq!(choice["versions"][0]["step"], "gate", "{choice}");
        assert_refused(
            &app,
            &run,
            refused("gate", Some(json!({"choice": "no"}))),
            409,
            "step_not_awaiting_review",
        )
        .await;

        ok(approve(&app, &run, "plain", None).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["after"]["status"], "completed", "{detail}");
        assert_eq!(
            attempt(&detail, "after", 1)["reads"],
            json!({"gate.choice": 1, "gate.topic": 1, "plain.topic": 1}),
            "{detail}"
        );
        let events = app.events(&run).await;
        let approved = &events[only(&events, "StepApproved", Some("gate"))];
        assert_eq!(approved["payload"]["choice"], "yes", "{approved}");
        let completed = &events[only(&events, "StepCompleted", Some("gate"))];
        assert_eq!(
            completed["payload"]["artifacts"][0]["name"], "gate.choice",
            "{completed}"
        );

        assert_refused(&app, &run, refused("plain", None), 409, "run_finished").await;
    }
);

// ---------------------------------------------------------------------------
// Branching
// ---------------------------------------------------------------------------

/// `classify` echoes the input's `kind`; `fix` runs for bugs, `triage` for
/// features and questions, `plan` only after `triage`, and `report` joins
/// `fix` and `plan`.
fn triage_flow() -> Value {
    let quiet = json!({"comments": false});
    json!({"steps": {
        "classify": {"agent": "echo", "config": quiet},
        "fix": {"agent": "echo", "depends_on": ["classify"], "config": quiet,
                "when": {"step": "classify", "output": "kind", "equals": "bug"}},
        "triage": {"agent": "echo", "depends_on": ["classify"], "config": quiet,
                   "when": {"step": "classify", "output": "kind", "in": ["feature", "question"]}},
        "plan": {"agent": "echo", "depends_on": ["triage"], "config": quiet},
        "report": {"agent": "echo", "depends_on": ["fix", "plan"], "config": quiet}
    }})
}

on_both_backends!(
    a_when_condition_routes_the_run_and_skips_the_branch_not_taken_and_everything_only_it_reaches,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("triage", triage_flow()).await;

        // `equals` holds: fix runs, triage and plan are skipped, report joins.
        let run = app.run_id(&template, json!({"kind": "bug"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            step_statuses(&detail),
            json!({"classify": "completed", "fix": "completed", "triage": "skipped",
                   "plan": "skipped", "report": "completed"}),
            "{detail}"
        );
        assert_eq!(detail["steps"]["triage"]["attempt"], 0, "{detail}");
        assert_eq!(detail["steps"]["plan"]["attempt"], 0, "{detail}");
        assert_eq!(
            detail["steps"]["fix"]["when"],
            json!({"step": "classify", "output": "kind", "equals": "bug"}),
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "report", 1)["reads"],
            json!({"fix.classify": 1}),
            "{detail}"
        );
        let events = app.events(&run).await;
        for step in ["triage", "plan"] {
            assert_eq!(
                count(&events, "StepDispatched", Some(step)),
                0,
                "{step}: {:?}",
                types(&events)
            );
        }
        let classified = &events[only(&events, "StepCompleted", Some("classify"))];
        assert_eq!(
            classified["payload"]["ready"],
            json!(["fix"]),
            "{classified}"
        );
        assert_eq!(
            classified["payload"]["skipped"],
            json!(["plan", "triage"]),
            "{classified}"
        );
        let fixed = &events[only(&events, "StepCompleted", Some("fix"))];
        assert_eq!(fixed["payload"]["ready"], json!(["report"]), "{fixed}");
        assert_eq!(
            types(&without_thread(&events)).last(),
            Some(&"RunCompleted")
        );

        // `in` holds: triage and plan run, fix is skipped, report still joins.
        let run = app.run_id(&template, json!({"kind": "question"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            step_statuses(&detail),
            json!({"classify": "completed", "fix": "skipped", "triage": "completed",
                   "plan": "completed", "report": "completed"}),
            "{detail}"
        );
        let events = app.events(&run).await;
        assert_eq!(
            count(&events, "StepDispatched", Some("fix")),
            0,
            "{:?}",
            types(&events)
        );

        // Neither holds: everything below classify is skipped and the run
        // still completes.
        let run = app.run_id(&template, json!({"kind": "rant"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            step_statuses(&detail),
            json!({"classify": "completed", "fix": "skipped", "triage": "skipped",
                   "plan": "skipped", "report": "skipped"}),
            "{detail}"
        );
        let events = without_thread(&app.events(&run).await);
        assert_eq!(
            types(&events),
            [
                "RunStarted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ],
            "{events:?}"
        );
    }
);

/// `review` picks publish or discard; each has its branch; `done` joins.
fn editorial() -> Value {
    let quiet = json!({"comments": false});
    json!({"steps": {
        "review": {"agent": "echo", "review": true, "choices": ["publish", "discard"],
                   "config": quiet},
        "publish": {"agent": "echo", "depends_on": ["review"], "config": quiet,
                    "when": {"step": "review", "output": "choice", "equals": "publish"}},
        "discard": {"agent": "echo", "depends_on": ["review"], "config": quiet,
                    "when": {"step": "review", "output": "choice", "equals": "discard"}},
        "done": {"agent": "echo", "depends_on": ["publish", "discard"], "config": quiet}
    }})
}

on_both_backends!(
    retrying_a_review_step_and_approving_the_other_choice_runs_the_other_branch_and_rolling_back_the_choice_restores_the_first,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("editorial", editorial()).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_step(&app, &run, "review", "awaiting_review").await;
        ok(approve(&app, &run, "review", Some(json!({"choice": "publish"}))).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(
            step_statuses(&detail),
            json!({"review": "completed", "publish": "completed", "discard": "skipped",
                   "done": "completed"}),
            "{detail}"
        );

        // Review again (the completed run reopens) and pick the other branch.
        let retried = ok(retry(&app, &run, "review", None).await);
        assert_eq!(retried["status"], "running", "{retried}");
        assert_eq!(retried["steps"]["review"]["choice"], Value::Null, "{retried}");
        let detail = wait_until(&app, &run, "review awaits review again", |d| {
            d["steps"]["review"]["status"] == "awaiting_review"
                && d["steps"]["review"]["attempt"] == 2
        })
        .await;
        for step in ["publish", "discard", "done"] {
            assert_eq!(detail["steps"][step]["status"], "pending", "{step}: {detail}");
        }
        let events = app.events(&run).await;
        let requested = &events[only(&events, "StepRetryRequested", Some("review"))];
        assert_eq!(
            requested["payload"]["invalidated"],
            json!(["discard", "done", "publish"]),
            "{requested}"
        );
        assert_eq!(requested["payload"]["reopens_run"], true, "{requested}");

        ok(approve(&app, &run, "review", Some(json!({"choice": "discard"}))).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(
            step_statuses(&detail),
            json!({"review": "completed", "publish": "skipped", "discard": "completed",
                   "done": "completed"}),
            "{detail}"
        );
        assert_eq!(detail["steps"]["review"]["choice"], "discard", "{detail}");
        assert_eq!(detail["steps"]["publish"]["attempt"], 1, "{detail}");
        assert_eq!(detail["steps"]["done"]["attempt"], 2, "{detail}");
        let choice = artifact(&app, &run, "review.choice").await;
        assert_eq!(choice["latest"], 2, "{choice}");
        assert_eq!(choice["versions"][1]["content"], "discard", "{choice}");
        let events = app.events(&run).await;
        assert_eq!(count(&events, "StepDispatched", Some("discard")), 1);
        assert_eq!(count(&events, "StepDispatched", Some("publish")), 1);

        // Rolling the choice back takes the first branch again.
        let rolled = ok(rollback(&app, &run, "review.choice", json!({"to_version": 1})).await);
        assert_eq!(rolled["artifacts"]["review.choice"]["latest"], 1, "{rolled}");
        let detail = wait_until(&app, &run, "the run completes again", |d| {
            d["status"] == "completed" && d["steps"]["done"]["attempt"] == 3
        })
        .await;
        assert_eq!(
            step_statuses(&detail),
            json!({"review": "completed", "publish": "completed", "discard": "skipped",
                   "done": "completed"}),
            "{detail}"
        );
        assert_eq!(detail["steps"]["publish"]["attempt"], 2, "{detail}");
        assert_eq!(detail["steps"]["review"]["attempt"], 2, "{detail}");
        assert_eq!(
            attempt(&detail, "publish", 2)["reads"],
            json!({"review.choice": 1, "review.topic": 2}),
            "{detail}"
        );
        let events = app.events(&run).await;
        let rolled = &events[only(&events, "ArtifactRolledBack", None)];
        assert_eq!(rolled["payload"]["name"], "review.choice", "{rolled}");
        assert_eq!(rolled["payload"]["from_version"], 2, "{rolled}");
        assert_eq!(rolled["payload"]["to_version"], 1, "{rolled}");
        assert_eq!(
            rolled["payload"]["invalidated"],
            json!(["discard", "done", "publish"]),
            "{rolled}"
        );
        assert_eq!(rolled["payload"]["ready"], json!(["publish"]), "{rolled}");
        assert_eq!(rolled["payload"]["skipped"], json!(["discard"]), "{rolled}");
        assert_eq!(rolled["payload"]["reopens_run"], true, "{rolled}");
    }
);

// ---------------------------------------------------------------------------
// Manual mode
// ---------------------------------------------------------------------------

on_both_backends!(
    a_run_in_manual_mode_dispatches_only_triggered_steps_until_auto_run_is_switched_on,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "manual",
                json!({"steps": {
                    "outline": {"agent": "template", "prompt": "the usual outline",
                                "config": {"text": "{{ prompt }}", "comments": false}},
                    "notes": {"agent": "echo", "config": {"comments": false}},
                    "draft": {"agent": "echo", "depends_on": ["outline", "notes"],
                              "config": {"comments": false}}
                }}),
            )
            .await;
        let (status, started) = app
            .post(
                "/api/runs",
                json!({"template_id": template, "input": {"topic": "owls"}, "auto_run": false}),
            )
            .await;
        assert_eq!(status, 201, "{started}");
        assert_eq!(started["auto_run"], false, "{started}");
        let run = started["id"].as_str().expect("id").to_string();
        let detail = app.run(&run).await;
        assert_eq!(detail["auto_run"], false, "{detail}");
        assert_eq!(detail["status"], "running", "{detail}");
        for step in ["outline", "notes"] {
            assert_eq!(detail["steps"][step]["status"], "ready", "{step}: {detail}");
            assert_eq!(detail["steps"][step]["attempt"], 0, "{step}: {detail}");
        }
        let events = app.events(&run).await;
        assert_eq!(types(&events), ["RunStarted"], "{events:?}");
        assert_eq!(events[0]["payload"]["auto_run"], false, "{}", events[0]);

        // Nothing runs by itself, and refusals record nothing.
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "draft", None),
            409,
            "step_not_ready",
        )
        .await;
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "nope", None),
            404,
            "unknown_step",
        )
        .await;
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "outline", Some(json!({"prompt_override": " "}))),
            400,
            "invalid_prompt_override",
        )
        .await;
        assert_refused(
            &app,
            &run,
            set_auto_run(&app, &run, json!({"enabled": "yes"})),
            400,
            "invalid_body",
        )
        .await;
        assert_refused(
            &app,
            &run,
            set_auto_run(&app, &run, json!({})),
            400,
            "invalid_body",
        )
        .await;
        let before = app.events(&run).await;
        let same = ok(set_auto_run(&app, &run, json!({"enabled": false})).await);
        assert_eq!(same["auto_run"], false, "{same}");
        assert_eq!(
            app.events(&run).await,
            before,
            "setting the same value recorded events"
        );

        // A trigger runs one step, with the prompt it is given.
        let triggered = ok(trigger(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "a bold outline"})),
        )
        .await);
        assert_ne!(
            triggered["steps"]["outline"]["status"], "ready",
            "{triggered}"
        );
        let detail = wait_step(&app, &run, "outline", "completed").await;
        assert_eq!(detail["steps"]["notes"]["status"], "ready", "{detail}");
        assert_eq!(detail["steps"]["notes"]["attempt"], 0, "{detail}");
        assert_eq!(detail["steps"]["draft"]["status"], "pending", "{detail}");
        assert_eq!(
            detail["steps"]["outline"]["prompt"], "the usual outline",
            "{detail}"
        );
        let first = attempt(&detail, "outline", 1);
        assert_eq!(first["prompt_override"], "a bold outline", "{first}");
        assert_eq!(first["status"], "completed", "{first}");
        let outline = artifact(&app, &run, "outline.text").await;
        assert_eq!(
            outline["versions"][0]["content"], "a bold outline",
            "{outline}"
        );
        let events = app.events(&run).await;
        let dispatched = &events[only(&events, "StepDispatched", Some("outline"))];
        assert_eq!(
            dispatched["payload"]["prompt_override"], "a bold outline",
            "{dispatched}"
        );
        assert_eq!(
            count(&events, "StepDispatched", None),
            1,
            "{:?}",
            types(&events)
        );
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "outline", None),
            409,
            "step_not_ready",
        )
        .await;

        // A step retry is a trigger too: it runs at once in manual mode, and
        // what it makes ready waits.
        ok(retry(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "a bolder outline"})),
        )
        .await);
        let detail = wait_until(&app, &run, "outline ran again", |d| {
            d["steps"]["outline"]["status"] == "completed" && d["steps"]["outline"]["attempt"] == 2
        })
        .await;
        assert_eq!(detail["steps"]["notes"]["status"], "ready", "{detail}");
        assert_eq!(detail["steps"]["notes"]["attempt"], 0, "{detail}");
        assert_eq!(detail["steps"]["draft"]["status"], "pending", "{detail}");
        let outline = artifact(&app, &run, "outline.text").await;
        assert_eq!(
            outline["versions"][1]["content"], "a bolder outline",
            "{outline}"
        );

        // Paused: no trigger.
        ok(app
            .request("POST", &format!("/api/runs/{run}/pause"), None)
            .await);
        wait_status(&app, &run, "paused").await;
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "notes", None),
            409,
            "run_paused",
        )
        .await;
        let resumed = ok(app
            .request("POST", &format!("/api/runs/{run}/resume"), None)
            .await);
        assert_eq!(resumed["status"], "running", "{resumed}");
        assert_eq!(resumed["steps"]["notes"]["status"], "ready", "{resumed}");

        // Switching auto-run on dispatches what is ready and the run finishes.
        let switched = ok(set_auto_run(&app, &run, json!({"enabled": true})).await);
        assert_eq!(switched["auto_run"], true, "{switched}");
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["draft"]["status"], "completed", "{detail}");
        assert_eq!(attempt(&detail, "notes", 1)["prompt_override"], Value::Null);
        let events = without_thread(&app.events(&run).await);
        let changed = only(&events, "AutoRunChanged", None);
        assert_eq!(events[changed]["payload"]["enabled"], true);
        assert!(
            is(&events[changed + 1], "StepDispatched", Some("notes")),
            "{:?}",
            types(&events)
        );
        assert_eq!(
            count(&events, "StepDispatched", None),
            4,
            "{:?}",
            types(&events)
        );

        // Finished: nothing more.
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "draft", None),
            409,
            "run_finished",
        )
        .await;
        assert_refused(
            &app,
            &run,
            set_auto_run(&app, &run, json!({"enabled": false})),
            409,
            "run_finished",
        )
        .await;
    }
);

// ---------------------------------------------------------------------------
// Step retry
// ---------------------------------------------------------------------------

/// `outline` renders its prompt; `draft` and `polish` build on it; `side`
/// is independent.
fn writing() -> Value {
    json!({"steps": {
        "outline": {"agent": "template", "prompt": "plain",
                    "config": {"text": "{{ prompt }}"}},
        "draft": {"agent": "template", "depends_on": ["outline"],
                  "config": {"text": "draft of {{ outline.text }}"}},
        "polish": {"agent": "template", "depends_on": ["draft"],
                   "config": {"text": "polished {{ draft.text }}"}},
        "side": {"agent": "echo"}
    }})
}

on_both_backends!(
    retrying_a_step_of_a_completed_run_reopens_it_and_reruns_the_step_and_everything_downstream,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("writing", writing()).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");

        let retried = ok(retry(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "bold"})),
        )
        .await);
        // Reopened (and maybe already done again: the steps are quick).
        assert!(
            matches!(retried["status"].as_str(), Some("running" | "completed")),
            "{retried}"
        );
        assert_eq!(retried["steps"]["side"]["status"], "completed", "{retried}");
        let detail = wait_until(&app, &run, "the run completes again", |d| {
            d["status"] == "completed" && d["steps"]["polish"]["attempt"] == 2
        })
        .await;
        for step in ["outline", "draft", "polish"] {
            assert_eq!(
                detail["steps"][step]["status"], "completed",
                "{step}: {detail}"
            );
            assert_eq!(detail["steps"][step]["attempt"], 2, "{step}: {detail}");
        }
        assert_eq!(detail["steps"]["side"]["attempt"], 1, "{detail}");
        let second = attempt(&detail, "outline", 2);
        assert_eq!(second["prompt_override"], "bold", "{second}");
        assert_eq!(second["writes"], json!({"outline.text": 2}), "{second}");
        assert_eq!(
            attempt(&detail, "draft", 2)["reads"],
            json!({"outline.text": 2}),
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "draft", 2)["prompt_override"],
            Value::Null,
            "an override leaked downstream: {detail}"
        );
        assert_eq!(
            attempt(&detail, "polish", 2)["reads"],
            json!({"draft.text": 2}),
            "{detail}"
        );
        for (name, old, new) in [
            ("outline.text", "plain", "bold"),
            ("draft.text", "draft of plain", "draft of bold"),
            (
                "polish.text",
                "polished draft of plain",
                "polished draft of bold",
            ),
        ] {
            let body = artifact(&app, &run, name).await;
            assert_eq!(body["latest"], 2, "{body}");
            assert_eq!(versions(&body), [1, 2], "{body}");
            assert_eq!(body["versions"][0]["content"], old, "{body}");
            assert_eq!(body["versions"][1]["content"], new, "{body}");
        }
        assert_eq!(artifact(&app, &run, "side.topic").await["latest"], 1);

        let events = without_thread(&app.events(&run).await);
        let at = only(&events, "StepRetryRequested", Some("outline"));
        let requested = &events[at];
        assert_eq!(
            requested["payload"]["prompt_override"], "bold",
            "{requested}"
        );
        assert_eq!(
            requested["payload"]["invalidated"],
            json!(["draft", "polish"]),
            "{requested}"
        );
        assert_eq!(requested["payload"]["reopens_run"], true, "{requested}");
        assert!(
            is(&events[at - 1], "RunCompleted", None),
            "{:?}",
            types(&events)
        );
        let dispatched = &events[at + 1];
        assert!(
            is(dispatched, "StepDispatched", Some("outline")),
            "{:?}",
            types(&events)
        );
        assert_eq!(dispatched["payload"]["attempt"], 2, "{dispatched}");
        assert_eq!(
            dispatched["payload"]["prompt_override"], "bold",
            "{dispatched}"
        );
        assert_eq!(
            types(&events[at..]),
            [
                "StepRetryRequested",
                "StepDispatched",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ],
            "{events:?}"
        );
        assert_eq!(count(&events, "StepDispatched", Some("side")), 1);
    }
);

on_both_backends!(
    retrying_a_step_while_the_run_is_paused_sends_everything_downstream_back_to_pending_and_runs_on_resume,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "held",
                json!({"steps": {
                    "outline": {"agent": "template", "prompt": "plain",
                                "config": {"text": "{{ prompt }}"}},
                    "draft": {"agent": "template", "depends_on": ["outline"],
                              "config": {"text": "draft of {{ outline.text }}"}},
                    "gate": {"agent": "echo", "depends_on": ["draft"], "review": true}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        wait_step(&app, &run, "gate", "awaiting_review").await;
        ok(app.request("POST", &format!("/api/runs/{run}/pause"), None).await);
        wait_status(&app, &run, "paused").await;

        let retried = ok(retry(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "bold"})),
        )
        .await);
        assert_eq!(retried["status"], "paused", "{retried}");
        assert_eq!(
            step_statuses(&retried),
            json!({"outline": "ready", "draft": "pending", "gate": "pending"}),
            "{retried}"
        );
        assert_eq!(
            retried["steps"]["outline"]["prompt_override"],
            "bold",
            "{retried}"
        );
        assert_eq!(retried["steps"]["outline"]["attempt"], 1, "{retried}");
        let events = app.events(&run).await;
        let last_event = events.last().expect("events");
        assert!(
            is(last_event, "StepRetryRequested", Some("outline")),
            "a paused run dispatched: {:?}",
            types(&events)
        );
        assert_eq!(
            last_event["payload"]["invalidated"],
            json!(["draft", "gate"]),
            "{last_event}"
        );
        assert_eq!(last_event["payload"]["reopens_run"], false, "{last_event}");

        ok(app.request("POST", &format!("/api/runs/{run}/resume"), None).await);
        let detail = wait_until(&app, &run, "gate awaits review again", |d| {
            d["steps"]["gate"]["status"] == "awaiting_review" && d["steps"]["gate"]["attempt"] == 2
        })
        .await;
        assert_eq!(detail["status"], "running", "{detail}");
        assert_eq!(
            attempt(&detail, "outline", 2)["prompt_override"],
            "bold",
            "{detail}"
        );
        assert_eq!(
            artifact(&app, &run, "draft.text").await["versions"][1]["content"],
            "draft of bold"
        );
        assert_eq!(
            attempt(&detail, "gate", 2)["reads"],
            json!({"draft.text": 2}),
            "{detail}"
        );
        ok(approve(&app, &run, "gate", None).await);
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
    }
);

on_both_backends!(
    retrying_the_step_a_run_failed_on_reopens_the_run_and_it_completes,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "fails-once",
                json!({"steps": {
                    "flaky": {"agent": "echo", "config": {"fail_times": 1},
                              "retry": {"max_attempts": 1}},
                    "after": {"agent": "echo", "depends_on": ["flaky"]}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "failed", "{detail}");
        assert_eq!(detail["steps"]["flaky"]["status"], "failed", "{detail}");
        assert_eq!(detail["error"]["step"], "flaky", "{detail}");

        let retried = ok(retry(&app, &run, "flaky", None).await);
        assert!(
            matches!(retried["status"].as_str(), Some("running" | "completed")),
            "{retried}"
        );
        assert_eq!(retried["error"], Value::Null, "{retried}");
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["error"], Value::Null, "{detail}");
        assert_eq!(detail["steps"]["flaky"]["attempt"], 2, "{detail}");
        assert_eq!(attempt(&detail, "flaky", 1)["status"], "failed", "{detail}");
        assert_eq!(
            attempt(&detail, "flaky", 2)["status"],
            "completed",
            "{detail}"
        );
        assert_eq!(detail["steps"]["after"]["status"], "completed", "{detail}");
        let events = without_thread(&app.events(&run).await);
        let at = only(&events, "StepRetryRequested", Some("flaky"));
        assert!(
            is(&events[at - 1], "RunFailed", None),
            "{:?}",
            types(&events)
        );
        assert_eq!(events[at]["payload"]["reopens_run"], true, "{}", events[at]);
        assert_eq!(
            events[at]["payload"]["invalidated"],
            json!([]),
            "{}",
            events[at]
        );
        assert_eq!(
            types(&events[at..]),
            [
                "StepRetryRequested",
                "StepDispatched",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ],
            "{events:?}"
        );
    }
);

on_both_backends!(
    a_step_retry_is_refused_without_recording_anything_when_the_step_or_run_does_not_allow_it,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let quiet = json!({"comments": false});
        let template = app
            .template_id(
                "retry-refusals",
                json!({"steps": {
                    "a": {"agent": "echo", "config": quiet},
                    "slow": {"agent": "echo", "depends_on": ["a"],
                             "config": {"delay_ms": 3000, "comments": false}},
                    "never": {"agent": "echo", "depends_on": ["a"], "config": quiet,
                              "when": {"step": "a", "output": "topic", "equals": "never"}},
                    "last": {"agent": "echo", "depends_on": ["slow"], "config": quiet}
                }}),
            )
            .await;
        let run = start_manual(&app, &template, json!({"topic": "owls"})).await;

        // Ready and pending steps have nothing to retry.
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "a", None),
            409,
            "step_not_retryable",
        )
        .await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "last", None),
            409,
            "step_not_retryable",
        )
        .await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "nope", None),
            404,
            "unknown_step",
        )
        .await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "bad!step", None),
            400,
            "invalid_step_id",
        )
        .await;

        ok(trigger(&app, &run, "a", None).await);
        let detail = wait_step(&app, &run, "a", "completed").await;
        assert_eq!(detail["steps"]["never"]["status"], "skipped", "{detail}");
        assert_eq!(detail["steps"]["slow"]["status"], "ready", "{detail}");
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "never", None),
            409,
            "step_not_retryable",
        )
        .await;
        for blank in ["", "   ", "\n\t"] {
            assert_refused(
                &app,
                &run,
                retry(&app, &run, "a", Some(json!({"prompt_override": blank}))),
                400,
                "invalid_prompt_override",
            )
            .await;
        }
        assert_refused(
            &app,
            &run,
            retry(
                &app,
                &run,
                "a",
                Some(json!({"prompt_override": "x".repeat(32_001)})),
            ),
            400,
            "invalid_prompt_override",
        )
        .await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "a", Some(json!({"prompt": "x"}))),
            400,
            "invalid_body",
        )
        .await;

        ok(trigger(&app, &run, "slow", None).await);
        wait_step(&app, &run, "slow", "running").await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "slow", None),
            409,
            "step_not_retryable",
        )
        .await;

        // Cancelling, then cancelled: no retry.
        ok(app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await);
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "a", None),
            409,
            "run_cancelling",
        )
        .await;
        wait_status(&app, &run, "cancelled").await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "a", None),
            409,
            "run_finished",
        )
        .await;
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "slow", None),
            409,
            "run_finished",
        )
        .await;
        expect_error(
            &retry(&app, "no-such-run", "a", None).await,
            404,
            "run_not_found",
        );
    }
);

on_both_backends!(
    a_step_retry_on_a_failed_run_is_refused_when_another_failed_step_would_keep_it_failed,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let failing = json!({"agent": "echo", "config": {"fail_times": 1, "comments": false}});
        let template = app
            .template_id(
                "two-failures",
                json!({"steps": {"x": failing, "y": failing}}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "failed", "{detail}");
        assert_eq!(
            step_statuses(&detail),
            json!({"x": "failed", "y": "failed"}),
            "{detail}"
        );
        assert_refused(
            &app,
            &run,
            retry(&app, &run, "x", None),
            409,
            "run_failed_elsewhere",
        )
        .await;
    }
);

on_both_backends!(
    retrying_a_step_while_a_step_downstream_runs_discards_that_attempt_and_runs_it_on_the_new_inputs,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "stale",
                json!({"steps": {
                    "outline": {"agent": "template", "prompt": "plain",
                                "config": {"text": "{{ prompt }}", "comments": false}},
                    "draft": {"agent": "echo", "depends_on": ["outline"],
                              "config": {"delay_ms": 2500, "comments": false}},
                    "final": {"agent": "echo", "depends_on": ["draft"],
                              "config": {"comments": false}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({})).await;
        wait_step(&app, &run, "draft", "running").await;

        let retried = ok(retry(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "bold"})),
        )
        .await);
        assert_eq!(
            attempt(&retried, "draft", 1)["status"],
            "invalidated",
            "{retried}"
        );
        let events = app.events(&run).await;
        let requested = &events[only(&events, "StepRetryRequested", Some("outline"))];
        assert_eq!(
            requested["payload"]["invalidated"],
            json!(["draft"]),
            "final was pending already: {requested}"
        );
        assert_eq!(requested["payload"]["reopens_run"], false, "{requested}");

        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["draft"]["attempt"], 2, "{detail}");
        assert_eq!(
            attempt(&detail, "draft", 1)["status"],
            "invalidated",
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "draft", 1)["writes"],
            json!({}),
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "draft", 2)["reads"],
            json!({"outline.text": 2}),
            "{detail}"
        );
        // The stale attempt's result was refused: one version, from attempt 2.
        let draft = artifact(&app, &run, "draft.outline").await;
        assert_eq!(versions(&draft), [1], "{draft}");
        assert_eq!(draft["versions"][0]["attempt"], 2, "{draft}");
        assert_eq!(
            draft["versions"][0]["content"],
            json!({"text": "bold"}),
            "{draft}"
        );
        let events = app.events(&run).await;
        assert_eq!(count(&events, "StepCompleted", Some("draft")), 1);
        assert_eq!(count(&events, "StepDispatched", Some("final")), 1);
    }
);

on_both_backends!(
    a_trigger_or_approval_is_refused_while_the_run_is_failing_or_cancelling,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let quiet = json!({"comments": false});
        let template = app
            .template_id(
                "manual-refusals",
                json!({"steps": {
                    "bad": {"agent": "echo", "config": {"fail_times": 1, "comments": false}},
                    "slow": {"agent": "echo", "config": {"delay_ms": 3000, "comments": false}},
                    "gate": {"agent": "echo", "review": true, "config": quiet},
                    "other": {"agent": "echo", "config": quiet}
                }}),
            )
            .await;

        // Failing: a step failed for good while another still runs.
        let run = start_manual(&app, &template, json!({"x": 1})).await;
        ok(trigger(&app, &run, "slow", None).await);
        ok(trigger(&app, &run, "bad", None).await);
        let detail = wait_step(&app, &run, "bad", "failed").await;
        assert_eq!(detail["status"], "running", "{detail}");
        assert_eq!(detail["steps"]["slow"]["status"], "running", "{detail}");
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "other", None),
            409,
            "run_failing",
        )
        .await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["status"], "failed", "{detail}");
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "other", None),
            409,
            "run_finished",
        )
        .await;

        // Cancelling: a cancel waits for a running step.
        let run = start_manual(&app, &template, json!({"x": 1})).await;
        ok(trigger(&app, &run, "slow", None).await);
        ok(trigger(&app, &run, "gate", None).await);
        wait_step(&app, &run, "gate", "awaiting_review").await;
        ok(app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await);
        assert_refused(
            &app,
            &run,
            trigger(&app, &run, "other", None),
            409,
            "run_cancelling",
        )
        .await;
        assert_refused(
            &app,
            &run,
            approve(&app, &run, "gate", None),
            409,
            "run_cancelling",
        )
        .await;
        wait_status(&app, &run, "cancelled").await;
        assert_refused(
            &app,
            &run,
            approve(&app, &run, "gate", None),
            409,
            "run_finished",
        )
        .await;
    }
);

// ---------------------------------------------------------------------------
// Artifact rollback
// ---------------------------------------------------------------------------

on_both_backends!(
    rolling_an_artifact_back_moves_latest_back_and_reruns_its_dependants_on_the_old_version,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("writing", writing()).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        app.wait_finished(&run, WAIT).await;
        ok(retry(
            &app,
            &run,
            "outline",
            Some(json!({"prompt_override": "bold"})),
        )
        .await);
        wait_until(&app, &run, "the retry reruns everything", |d| {
            d["status"] == "completed" && d["steps"]["polish"]["attempt"] == 2
        })
        .await;
        assert_eq!(artifact(&app, &run, "outline.text").await["latest"], 2);

        let rolled = ok(rollback(&app, &run, "outline.text", json!({"to_version": 1})).await);
        assert_eq!(rolled["artifacts"]["outline.text"]["latest"], 1, "{rolled}");
        assert_eq!(
            rolled["artifacts"]["outline.text"]["versions"], 2,
            "{rolled}"
        );
        assert_eq!(
            rolled["steps"]["outline"]["status"], "completed",
            "{rolled}"
        );
        assert_eq!(rolled["steps"]["side"]["status"], "completed", "{rolled}");
        let detail = wait_until(&app, &run, "the run completes again", |d| {
            d["status"] == "completed" && d["steps"]["polish"]["attempt"] == 3
        })
        .await;
        assert_eq!(detail["steps"]["outline"]["attempt"], 2, "{detail}");
        assert_eq!(detail["steps"]["draft"]["attempt"], 3, "{detail}");
        assert_eq!(detail["steps"]["side"]["attempt"], 1, "{detail}");
        assert_eq!(
            attempt(&detail, "draft", 3)["reads"],
            json!({"outline.text": 1}),
            "{detail}"
        );
        assert_eq!(
            attempt(&detail, "polish", 3)["reads"],
            json!({"draft.text": 3}),
            "{detail}"
        );

        let outline = artifact(&app, &run, "outline.text").await;
        assert_eq!(outline["latest"], 1, "{outline}");
        assert_eq!(
            versions(&outline),
            [1, 2],
            "no version is deleted: {outline}"
        );
        let draft = artifact(&app, &run, "draft.text").await;
        assert_eq!(draft["latest"], 3, "{draft}");
        assert_eq!(draft["versions"][2]["content"], "draft of plain", "{draft}");
        let polish = artifact(&app, &run, "polish.text").await;
        assert_eq!(
            polish["versions"][2]["content"], "polished draft of plain",
            "{polish}"
        );

        let events = without_thread(&app.events(&run).await);
        let at = only(&events, "ArtifactRolledBack", None);
        let payload = &events[at]["payload"];
        assert_eq!(payload["name"], "outline.text", "{payload}");
        assert_eq!(payload["from_version"], 2, "{payload}");
        assert_eq!(payload["to_version"], 1, "{payload}");
        assert_eq!(
            payload["invalidated"],
            json!(["draft", "polish"]),
            "{payload}"
        );
        assert_eq!(payload["ready"], json!(["draft"]), "{payload}");
        assert_eq!(payload["skipped"], json!([]), "{payload}");
        assert_eq!(payload["reopens_run"], true, "{payload}");
        assert_eq!(
            types(&events[at..]),
            [
                "ArtifactRolledBack",
                "StepDispatched",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ],
            "{events:?}"
        );
        assert!(
            system_messages(&app, &run).await.contains(
                &"Artifact 'outline.text' rolled back from version 2 to version 1.".to_string()
            ),
            "no system message about the rollback"
        );
    }
);

on_both_backends!(
    a_rollback_is_refused_without_recording_anything_when_the_artifact_or_version_is_wrong,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "rollback-refusals",
                json!({"steps": {
                    "a": {"agent": "echo", "config": {"comments": false}},
                    "b": {"agent": "echo", "depends_on": ["a"],
                          "config": {"delay_ms": 3000, "comments": false}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_step(&app, &run, "b", "running").await;
        let to = |version: Value| json!({"to_version": version});

        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.nope", to(json!(1))),
            404,
            "artifact_not_found",
        )
        .await;
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", to(json!(2))),
            404,
            "artifact_version_not_found",
        )
        .await;
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", to(json!(1))),
            409,
            "artifact_already_at_version",
        )
        .await;
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", to(json!(0))),
            400,
            "invalid_version",
        )
        .await;
        for bad in ["nodot", "a.b.c", "bad!step.topic"] {
            assert_refused(
                &app,
                &run,
                rollback(&app, &run, bad, to(json!(1))),
                400,
                "invalid_artifact_name",
            )
            .await;
        }
        for body in [json!({}), to(json!(-1)), to(json!("1"))] {
            assert_refused(
                &app,
                &run,
                rollback(&app, &run, "a.topic", body),
                400,
                "invalid_body",
            )
            .await;
        }
        expect_error(
            &rollback(&app, "no-such-run", "a.topic", to(json!(1))).await,
            404,
            "run_not_found",
        );

        // Cancelled: no rollback.
        ok(app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await);
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", to(json!(1))),
            409,
            "run_cancelling",
        )
        .await;
        wait_status(&app, &run, "cancelled").await;
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", to(json!(1))),
            409,
            "run_finished",
        )
        .await;
    }
);

on_both_backends!(
    a_rollback_is_refused_while_the_artifacts_step_runs,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "busy",
                json!({"steps": {
                    "a": {"agent": "echo", "config": {"delay_ms": 2000, "comments": false}}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        app.wait_finished(&run, WAIT).await;
        ok(retry(&app, &run, "a", None).await);
        wait_until(&app, &run, "a ran again", |d| {
            d["status"] == "completed" && d["steps"]["a"]["attempt"] == 2
        })
        .await;
        ok(retry(&app, &run, "a", None).await);
        wait_step(&app, &run, "a", "running").await;
        assert_refused(
            &app,
            &run,
            rollback(&app, &run, "a.topic", json!({"to_version": 1})),
            409,
            "step_running",
        )
        .await;
        let detail = app.wait_finished(&run, WAIT).await;
        assert_eq!(detail["artifacts"]["a.topic"]["latest"], 3, "{detail}");
        // Once it is done, the same rollback is accepted and changes nothing
        // else: the step has no dependants and the run stays completed.
        let rolled = ok(rollback(&app, &run, "a.topic", json!({"to_version": 1})).await);
        assert_eq!(rolled["status"], "completed", "{rolled}");
        assert_eq!(rolled["artifacts"]["a.topic"]["latest"], 1, "{rolled}");
        let events = app.events(&run).await;
        let payload = &events[only(&events, "ArtifactRolledBack", None)]["payload"];
        assert_eq!(payload["from_version"], 3, "{payload}");
        assert_eq!(payload["invalidated"], json!([]), "{payload}");
        assert_eq!(payload["reopens_run"], false, "{payload}");
        assert_eq!(artifact(&app, &run, "a.topic").await["latest"], 1);
    }
);

// ---------------------------------------------------------------------------
// Agents that stop early
// ---------------------------------------------------------------------------

on_both_backends!(
    pausing_a_run_stops_an_echo_step_with_stop_early_and_resuming_runs_it_again,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app
            .template_id(
                "stops-early",
                json!({"steps": {
                    "slow": {"agent": "echo",
                             "config": {"delay_ms": 10000, "stop_early": true, "comments": false}},
                    "after": {"agent": "echo", "depends_on": ["slow"]}
                }}),
            )
            .await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        wait_step(&app, &run, "slow", "running").await;

        ok(app
            .request("POST", &format!("/api/runs/{run}/pause"), None)
            .await);
        // Well before the 10 s delay is over.
        let detail = wait_until_within(
            &app,
            &run,
            "the run is paused",
            Duration::from_secs(8),
            |d| d["status"] == "paused",
        )
        .await;
        assert_eq!(detail["steps"]["slow"]["status"], "ready", "{detail}");
        assert_eq!(detail["steps"]["slow"]["attempt"], 1, "{detail}");
        let first = attempt(&detail, "slow", 1);
        assert_eq!(first["status"], "interrupted", "{first}");
        assert!(first["finished_at"].is_string(), "{first}");
        assert_eq!(detail["steps"]["after"]["status"], "pending", "{detail}");
        let events = without_thread(&app.events(&run).await);
        assert_eq!(
            types(&events),
            [
                "RunStarted",
                "StepDispatched",
                "PauseRequested",
                "StepInterrupted",
                "RunPaused"
            ],
            "{events:?}"
        );
        assert_eq!(events[3]["payload"]["step"], "slow", "{}", events[3]);
        assert_eq!(events[3]["payload"]["attempt"], 1, "{}", events[3]);
        assert_eq!(count(&events, "StepCompleted", None), 0);

        ok(app
            .request("POST", &format!("/api/runs/{run}/resume"), None)
            .await);
        let detail = wait_until(&app, &run, "slow runs again", |d| {
            d["steps"]["slow"]["status"] == "running" && d["steps"]["slow"]["attempt"] == 2
        })
        .await;
        assert_eq!(attempt(&detail, "slow", 2)["status"], "running", "{detail}");
        let events = without_thread(&app.events(&run).await);
        let resumed = only(&events, "RunResumed", None);
        let again = &events[resumed + 1];
        assert!(
            is(again, "StepDispatched", Some("slow")),
            "{:?}",
            types(&events)
        );
        assert_eq!(again["payload"]["attempt"], 2, "{again}");

        // A cancel stops it early too.
        ok(app
            .post(&format!("/api/runs/{run}/cancel"), json!({}))
            .await);
        let detail = wait_until_within(
            &app,
            &run,
            "the run is cancelled",
            Duration::from_secs(8),
            |d| d["status"] == "cancelled",
        )
        .await;
        assert_eq!(
            attempt(&detail, "slow", 2)["status"],
            "interrupted",
            "{detail}"
        );
        let events = app.events(&run).await;
        assert_eq!(count(&events, "StepInterrupted", Some("slow")), 2);
        assert_eq!(count(&events, "StepCompleted", None), 0);
    }
);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The body of a 200 reply.
fn ok(reply: Reply) -> Value {
    let (status, body) = reply;
    assert_eq!(status, 200, "{body}");
    body
}

async fn approve(app: &TestApp, run: &str, step: &str, body: Option<Value>) -> Reply {
    app.request(
        "POST",
        &format!("/api/runs/{run}/steps/{step}/approve"),
        body,
    )
    .await
}

async fn retry(app: &TestApp, run: &str, step: &str, body: Option<Value>) -> Reply {
    app.request("POST", &format!("/api/runs/{run}/steps/{step}/retry"), body)
        .await
}

async fn trigger(app: &TestApp, run: &str, step: &str, body: Option<Value>) -> Reply {
    app.request(
        "POST",
        &format!("/api/runs/{run}/steps/{step}/trigger"),
        body,
    )
    .await
}

async fn set_auto_run(app: &TestApp, run: &str, body: Value) -> Reply {
    app.put(&format!("/api/runs/{run}/auto-run"), body).await
}

async fn rollback(app: &TestApp, run: &str, name: &str, body: Value) -> Reply {
    app.post(&format!("/api/runs/{run}/artifacts/{name}/rollback"), body)
        .await
}

/// Starts a run in manual mode and returns its id.
async fn start_manual(app: &TestApp, template: &str, input: Value) -> String {
    let (status, started) = app
        .post(
            "/api/runs",
            json!({"template_id": template, "input": input, "auto_run": false}),
        )
        .await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["auto_run"], false, "{started}");
    started["id"].as_str().expect("id").to_string()
}

/// `GET` of an artifact (must exist).
async fn artifact(app: &TestApp, run: &str, name: &str) -> Value {
    let (status, body) = app.get(&format!("/api/runs/{run}/artifacts/{name}")).await;
    assert_eq!(status, 200, "artifact {name}: {body}");
    body
}

/// The version numbers an artifact body lists.
fn versions(artifact: &Value) -> Vec<u64> {
    artifact["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions: {artifact}"))
        .iter()
        .map(|v| v["version"].as_u64().expect("version"))
        .collect()
}

/// One attempt of a step in a run detail.
fn attempt<'a>(detail: &'a Value, step: &str, number: u64) -> &'a Value {
    detail["steps"][step]["attempts"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["attempt"] == number))
        .unwrap_or_else(|| panic!("{step} has no attempt {number}: {detail}"))
}

/// Each step's status, as `{step: status}`.
fn step_statuses(detail: &Value) -> Value {
    let steps = detail["steps"]
        .as_object()
        .unwrap_or_else(|| panic!("no steps: {detail}"));
    Value::Object(
        steps
            .iter()
            .map(|(id, s)| (id.clone(), s["status"].clone()))
            .collect(),
    )
}

/// The contents of the run's system messages, in order.
async fn system_messages(app: &TestApp, run: &str) -> Vec<String> {
    let (status, page) = app
        .get(&format!("/api/runs/{run}/messages?limit=500"))
        .await;
    assert_eq!(status, 200, "{page}");
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .filter(|m| m["author"] == "system")
        .map(|m| m["content"].as_str().expect("content").to_string())
        .collect()
}

/// Polls the run until `done` holds, for at most `within`.
async fn wait_until_within(
    app: &TestApp,
    run: &str,
    what: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let detail = app.run(run).await;
        if done(&detail) {
            return detail;
        }
        assert!(
            Instant::now() < deadline,
            "run {run}: timed out waiting until {what}: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls the run until `done` holds.
async fn wait_until(app: &TestApp, run: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_until_within(app, run, what, WAIT, done).await
}

async fn wait_status(app: &TestApp, run: &str, status: &str) -> Value {
    wait_until(app, run, &format!("status is {status}"), |d| {
        d["status"] == status
    })
    .await
}

async fn wait_step(app: &TestApp, run: &str, step: &str, status: &str) -> Value {
    wait_until(app, run, &format!("{step} is {status}"), |d| {
        d["steps"][step]["status"] == status
    })
    .await
}
