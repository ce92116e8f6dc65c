//! Cross-workflow prerequisites: a template that requires another's
//! completed run and one of its artifacts, checked at start against the
//! starting user's own most recent run; validated when templates are
//! saved; listed by `GET /api/templates/available`; the artifact read as
//! an input, pinned, with its source run and version recorded.

use std::time::Duration;

use serde_json::{json, Value};

use crate::accounts::{token_text, user};
use crate::common::{
    expect_error, spawn_app, spawn_app_with_options, unique_name, AppOptions, Backend, Reply,
    TestApp,
};
use crate::on_both_backends;

const WAIT: Duration = Duration::from_secs(15);

/// Generator: a plan that a person approves (its choice is an artifact),
/// then files generated from it.
fn generator_definition() -> Value {
    json!({
        "steps": {
            "plan": {"agent": "echo", "review": true, "choices": ["approved", "rejected"],
                     "config": {"comments": false}},
            "generate": {"agent": "echo", "depends_on": ["plan"], "config": {"comments": false}}
        },
        "provides": {"artifacts": ["generate.plan"]}
    })
}

/// Build: needs a completed Generator and its approved plan, which its
/// step reads.
fn build_definition(generator: &str) -> Value {
    json!({
        "steps": {
            "compile": {"agent": "echo", "inputs": {"plan": format!("{generator}:plan.choice")},
                        "config": {"comments": false}}
        },
        "requires": {
            "workflows": [{"template": generator, "status": "completed",
                           "reason": "Build needs the generated files"}],
            "artifacts": [{"template": generator, "artifact": "plan.choice",
                           "reason": "Build needs an approved plan"}]
        }
    })
}

async fn start_as(app: &TestApp, token: Option<&str>, template: &str) -> Reply {
    let body = json!({"template_id": template, "input": {"topic": "owls"}});
    match token {
        Some(token) => {
            app.request_as(Some(token), "POST", "/api/runs", Some(body))
                .await
        }
        None => app.post("/api/runs", body).await,
    }
}

async fn available_as(app: &TestApp, token: Option<&str>) -> Vec<Value> {
    let (status, body) = match token {
        Some(token) => {
            app.request_as(Some(token), "GET", "/api/templates/available", None)
                .await
        }
        None => app.get("/api/templates/available").await,
    };
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().expect("items")
}

fn entry<'a>(items: &'a [Value], name: &str) -> &'a Value {
    items
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("{name} is listed: {items:?}"))
}

on_both_backends!(
    build_starts_only_once_the_users_own_generator_run_completed_and_reads_its_approved_plan,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let name = unique_name("generator");
        let generator = app.template_id(&name, generator_definition()).await;
        let build = app.template_id("build", build_definition(&name)).await;
        let alice = token_text(&app, &user(&app, "alice", "user").await).await;
        let bob = token_text(&app, &user(&app, "bob", "user").await).await;

        // Before any generator run: Build is listed as not available, with
        // the reasons.
        let items = available_as(&app, Some(&alice)).await;
        assert_eq!(entry(&items, &name)["available"], true, "{items:?}");
        let listed = entry(&items, "build");
        assert_eq!(listed["available"], false, "{listed}");
        assert_eq!(listed["id"], build.as_str());
        assert_eq!(
            listed["unmet"].as_array().map(Vec::len),
            Some(2),
            "{listed}"
        );

        // Starting it is refused with a message a person can act on, and
        // nothing is recorded.
        let before = app.counts().await;
        let refused = start_as(&app, Some(&alice), &build).await;
        let message = expect_error(&refused, 409, "prerequisites_not_met");
        assert!(
            message.contains(&format!(
                "Complete the {name} workflow first: Build needs the generated files"
            )),
            "{message}"
        );
        let unmet = refused.1["error"]["unmet"]
            .as_array()
            .cloned()
            .expect("unmet");
        assert_eq!(unmet.len(), 2, "{unmet:?}");
        assert_eq!(unmet[0]["kind"], "workflow");
        assert_eq!(unmet[0]["template"], name.as_str());
        assert_eq!(unmet[0]["status"], "completed");
        assert_eq!(unmet[1]["kind"], "artifact");
        assert_eq!(unmet[1]["artifact"], "plan.choice");
        assert_eq!(unmet[1]["reason"], "Build needs an approved plan");
        assert_eq!(
            app.counts().await,
            before,
            "a refused start records nothing"
        );

        // A generator run that is still waiting for its review does not
        // count, and is named.
        let (status, gen_run) = start_as(&app, Some(&alice), &generator).await;
        assert_eq!(status, 201, "{gen_run}");
        let gen_run = gen_run["id"].as_str().unwrap().to_string();
        app.wait_run(&gen_run, "plan awaits review", WAIT, |d| {
            d["steps"]["plan"]["status"] == "awaiting_review"
        })
        .await;
        let refused = start_as(&app, Some(&alice), &build).await;
        expect_error(&refused, 409, "prerequisites_not_met");
        assert_eq!(refused.1["error"]["unmet"][0]["run_id"], gen_run.as_str());

        // Approve the plan; the generator completes.
        let (status, body) = app
            .request_as(
                Some(&alice),
                "POST",
                &format!("/api/runs/{gen_run}/steps/plan/approve"),
                Some(json!({"choice": "approved"})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let done = app.wait_finished(&gen_run, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");

        // Bob's prerequisites are his own runs: Alice's do not count.
        let items = available_as(&app, Some(&bob)).await;
        assert_eq!(entry(&items, "build")["available"], false, "{items:?}");
        expect_error(
            &start_as(&app, Some(&bob), &build).await,
            409,
            "prerequisites_not_met",
        );

        // For Alice, Build is available now, starts, and reads the plan's
        // choice from her generator run.
        let items = available_as(&app, Some(&alice)).await;
        let listed = entry(&items, "build");
        assert_eq!(listed["available"], true, "{listed}");
        assert_eq!(listed["unmet"], json!([]), "{listed}");
        let (status, started) = start_as(&app, Some(&alice), &build).await;
        assert_eq!(status, 201, "{started}");
        let build_run = started["id"].as_str().unwrap().to_string();
        let provenance = json!({format!("{name}:plan.choice"): {"run_id": gen_run, "version": 1}});
        assert_eq!(started["imports"], provenance, "{started}");
        let finished = app.wait_finished(&build_run, WAIT).await;
        assert_eq!(finished["status"], "completed", "{finished}");
        let attempt = &finished["steps"]["compile"]["attempts"][0];
        assert_eq!(attempt["imports"], provenance, "{attempt}");
        let (status, artifact) = app
            .get(&format!("/api/runs/{build_run}/artifacts/compile.plan"))
            .await;
        assert_eq!(status, 200, "{artifact}");
        assert_eq!(artifact["versions"][0]["content"], "approved", "{artifact}");

        // The pin is in the log: RunStarted names the run and version.
        let events = app.events(&build_run).await;
        let imports = &events[0]["payload"]["imports"];
        assert_eq!(imports[0]["run_id"], gen_run.as_str(), "{imports}");
        assert_eq!(imports[0]["artifact"], "plan.choice", "{imports}");
        assert_eq!(imports[0]["version"], 1, "{imports}");
        assert_eq!(events[0]["event_version"], "1.4");

        // A new generator run that is not finished makes Build unavailable
        // again: the most recent run is the one that counts.
        let (status, again) = start_as(&app, Some(&alice), &generator).await;
        assert_eq!(status, 201, "{again}");
        let refused = start_as(&app, Some(&alice), &build).await;
        expect_error(&refused, 409, "prerequisites_not_met");
    }
);

on_both_backends!(
    prerequisites_that_name_nothing_real_or_go_round_in_a_cycle_are_refused_and_nothing_is_saved,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let name = unique_name("generator");
        let generator = app.template_id(&name, generator_definition()).await;
        let before = app.counts().await;

        let reply = app
            .create_template("build", build_definition("nothing-of-that-name"))
            .await;
        let message = expect_error(&reply, 422, "unknown_prerequisite");
        assert!(message.contains("nothing-of-that-name"), "{message}");

        let mut stingy = build_definition(&name);
        stingy["requires"]["artifacts"][0]["artifact"] = json!("generate.secret");
        stingy["steps"]["compile"]["inputs"]["plan"] = json!(format!("{name}:generate.secret"));
        let message = expect_error(
            &app.create_template("build", stingy).await,
            422,
            "artifact_not_provided",
        );
        assert!(message.contains("generate.secret"), "{message}");

        // An input from another workflow must be a required artifact.
        let mut unrequired = build_definition(&name);
        unrequired["steps"]["compile"]["inputs"]["plan"] = json!(format!("{name}:generate.plan"));
        expect_error(
            &app.create_template("build", unrequired).await,
            422,
            "invalid_input_mapping",
        );

        // Local faults: the schema's (a blank reason, a status that is not
        // an outcome: 400 with the path) and the domain's (too many
        // requirements in all, a provided artifact of no step: 422).
        let mut blank = build_definition(&name);
        blank["requires"]["workflows"][0]["reason"] = json!(" ");
        let reply = app.create_template("build", blank).await;
        expect_error(&reply, 400, "malformed_definition");
        assert_eq!(
            reply.1["error"]["path"],
            "/definition/requires/workflows/0/reason"
        );
        let mut running = build_definition(&name);
        running["requires"]["workflows"][0]["status"] = json!("running");
        let reply = app.create_template("build", running).await;
        expect_error(&reply, 400, "malformed_definition");
        let mut many = build_definition(&name);
        let workflow = many["requires"]["workflows"][0].clone();
        let artifact = many["requires"]["artifacts"][0].clone();
        many["requires"]["workflows"] = json!(vec![workflow; 20]);
        many["requires"]["artifacts"] = json!(vec![artifact; 20]);
        let message = expect_error(
            &app.create_template("build", many).await,
            422,
            "invalid_requirement",
        );
        assert!(message.contains("at most 32"), "{message}");
        let mut nowhere = generator_definition();
        nowhere["provides"]["artifacts"] = json!(["nostep.out"]);
        expect_error(
            &app.create_template(&unique_name("g"), nowhere).await,
            422,
            "invalid_provides",
        );
        assert_eq!(app.counts().await, before, "nothing refused was saved");

        // Build requires Generator; Generator may not require Build back.
        let build_id = app.template_id("build", build_definition(&name)).await;
        let mut circular = generator_definition();
        circular["requires"] = json!({"workflows": [{"template": "build", "reason": "loop"}]});
        let reply = app
            .put(
                &format!("/api/templates/{generator}"),
                json!({"definition": circular}),
            )
            .await;
        let message = expect_error(&reply, 422, "prerequisite_cycle");
        assert!(
            message.contains(&format!("{name} -> build -> {name}")),
            "{message}"
        );
        // Nor stop providing what Build requires of it.
        let mut dropped = generator_definition();
        dropped["steps"]["plan"] = json!({"agent": "echo"});
        let message = expect_error(
            &app.put(
                &format!("/api/templates/{generator}"),
                json!({"definition": dropped}),
            )
            .await,
            422,
            "artifact_still_required",
        );
        assert!(message.contains("plan.choice"), "{message}");
        let (_, current) = app.get(&format!("/api/templates/{generator}")).await;
        assert_eq!(
            current["version"], 1,
            "the refused revisions saved nothing: {current}"
        );
        let (_, build_view) = app.get(&format!("/api/templates/{build_id}")).await;
        assert_eq!(
            build_view["definition"]["requires"],
            build_definition(&name)["requires"]
        );

        // Nor be archived while Build requires it (Build could never start
        // again): refused, naming Build, and nothing is recorded; once
        // Build is archived, Generator may be.
        let before = app.counts().await;
        let reply = app
            .post(&format!("/api/templates/{generator}/archive"), json!({}))
            .await;
        let message = expect_error(&reply, 409, "template_still_required");
        assert!(message.contains("'build'"), "{message}");
        assert_eq!(
            app.counts().await,
            before,
            "the refused archive saved nothing"
        );
        let (_, current) = app.get(&format!("/api/templates/{generator}")).await;
        assert_eq!(current["archived"], false, "{current}");
        let (status, body) = app
            .post(&format!("/api/templates/{build_id}/archive"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = app
            .post(&format!("/api/templates/{generator}/archive"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["archived"], true, "{body}");
    }
);

#[actix_web::test]
async fn without_accounts_the_runs_that_belong_to_nobody_count() {
    let options = AppOptions {
        no_auth: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with_options(Backend::Sqlite, options).await else {
        return;
    };
    let name = unique_name("generator");
    let generator = app.template_id(&name, generator_definition()).await;
    let build = app.template_id("build", build_definition(&name)).await;
    expect_error(
        &start_as(&app, None, &build).await,
        409,
        "prerequisites_not_met",
    );
    let run = app.run_id(&generator, json!({"topic": "owls"})).await;
    app.wait_run(&run, "plan awaits review", WAIT, |d| {
        d["steps"]["plan"]["status"] == "awaiting_review"
    })
    .await;
    let (status, body) = app
        .post(
            &format!("/api/runs/{run}/steps/plan/approve"),
            json!({"choice": "approved"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    app.wait_finished(&run, WAIT).await;
    let items = available_as(&app, None).await;
    assert_eq!(entry(&items, "build")["available"], true, "{items:?}");
    let (status, started) = start_as(&app, None, &build).await;
    assert_eq!(status, 201, "{started}");
}

on_both_backends!(
    a_retried_run_keeps_the_imported_body_after_the_runs_it_came_through_are_purged,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let source = app
            .template_id(
                "source",
                json!({"steps": {"make": {"agent": "echo", "config": {"comments": false}}},
                       "provides": {"artifacts": ["make.big"]}}),
            )
            .await;
        let consumer = app
            .template_id(
                "consumer",
                json!({
                    "steps": {"use": {"agent": "echo", "inputs": {"big": "source:make.big"},
                                      "config": {"comments": false}}},
                    "requires": {"artifacts": [{"template": "source", "artifact": "make.big",
                                                "reason": "it reads the big body"}]}
                }),
            )
            .await;
        // A body over 8 KiB: a blob, referenced by the runs that hold it.
        let big = "owl ".repeat(5_000);
        let made = app.run_id(&source, json!({"big": big})).await;
        app.wait_finished(&made, WAIT).await;
        let first = app.manual_run_id(&consumer, json!({})).await;
        let (status, body) = app
            .post(&format!("/api/runs/{first}/cancel"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        app.wait_run(&first, "cancelled", WAIT, |d| d["status"] == "cancelled")
            .await;
        let (status, retried) = app
            .post(&format!("/api/runs/{first}/retry"), json!({}))
            .await;
        assert_eq!(status, 201, "{retried}");
        let retried = retried["id"].as_str().expect("id").to_string();

        // Both runs the body came through are purged; the retry still
        // holds it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cut_off = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        for run in [&made, &first] {
            let (status, body) = app
                .post(
                    &format!("/api/runs/{run}/purge"),
                    json!({"finished_before": cut_off}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = app
            .post(&format!("/api/runs/{retried}/steps/use/trigger"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
        let done = app.wait_finished(&retried, WAIT).await;
        assert_eq!(done["status"], "completed", "{done}");
        let (status, artifact) = app
            .get(&format!("/api/runs/{retried}/artifacts/use.big"))
            .await;
        assert_eq!(status, 200, "{artifact}");
        assert_eq!(artifact["versions"][0]["content"], big.as_str());
    }
);
