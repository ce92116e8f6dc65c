//! Runs: execution, parallelism, retries, template versions.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    diamond, expect_error, is_thread_event, spawn_app, unique_name, without_thread, TestApp,
};
use crate::on_both_backends;

/// How long a test waits for a run to finish.
const FINISH: Duration = Duration::from_secs(30);

/// The events of `event_type` about `step`, in order.
fn step_events<'a>(events: &'a [Value], event_type: &str, step: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == event_type && e["payload"]["step"] == step)
        .collect()
}

/// The one event of `event_type` about `step`.
fn one<'a>(events: &'a [Value], event_type: &str, step: &str) -> &'a Value {
    let found = step_events(events, event_type, step);
    assert_eq!(found.len(), 1, "{event_type} of {step}: {found:?}");
    found[0]
}

/// `payload.at` (ms since the epoch).
fn at(event: &Value) -> i64 {
    event["payload"]["at"]
        .as_i64()
        .unwrap_or_else(|| panic!("no payload.at: {event}"))
}

/// `recorded_at` (RFC 3339) in ms since the epoch.
fn recorded_at(event: &Value) -> i64 {
    let text = event["recorded_at"]
        .as_str()
        .unwrap_or_else(|| panic!("no recorded_at: {event}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("recorded_at {text:?} is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn sequence(event: &Value) -> i64 {
    event["sequence"].as_i64().expect("sequence")
}

/// The ids on one page of a list.
fn page_ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {page}"))
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

/// Follows `next_cursor` from `path` (which already has a query) and returns
/// every id in order, checking no page is larger than `limit`.
async fn all_pages(app: &TestApp, path: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut next = path.to_string();
    for _ in 0..100 {
        let (status, page) = app.get(&next).await;
        assert_eq!(status, 200, "{next}: {page}");
        let items = page_ids(&page);
        assert!(items.len() <= limit, "{page}");
        ids.extend(items);
        match page["next_cursor"].as_str() {
            Some(cursor) => next = format!("{path}&cursor={cursor}"),
            None => return ids,
        }
    }
    panic!("paging {path} does not end");
}

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

on_both_backends!(
    the_two_branches_of_the_diamond_run_at_the_same_time,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(300)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        let events = app.events(&run).await;
        let b_dispatched = one(&events, "StepDispatched", "b");
        let c_dispatched = one(&events, "StepDispatched", "c");
        let b_completed = one(&events, "StepCompleted", "b");
        let c_completed = one(&events, "StepCompleted", "c");
        // By the time in the payload…
        assert!(
            at(c_dispatched) < at(b_completed),
            "c was dispatched only after b completed: {c_dispatched} {b_completed}"
        );
        assert!(
            at(b_dispatched) < at(c_completed),
            "b was dispatched only after c completed: {b_dispatched} {c_completed}"
        );
        // …by the commit time…
        assert!(recorded_at(c_dispatched) < recorded_at(b_completed));
        assert!(recorded_at(b_dispatched) < recorded_at(c_completed));
        // …and by the order in the log.
        assert!(sequence(c_dispatched) < sequence(b_completed));
        assert!(sequence(b_dispatched) < sequence(c_completed));
    }
);

on_both_backends!(
    a_fan_in_step_is_dispatched_only_after_all_its_dependencies_completed,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        // Make the branches finish at different times, either way round.
        for (b_delay, c_delay) in [(50, 250), (250, 50)] {
            let definition = json!({"steps": {
                "a": {"agent": "echo"},
                "b": {"agent": "echo", "depends_on": ["a"], "config": {"delay_ms": b_delay}},
                "c": {"agent": "echo", "depends_on": ["a"], "config": {"delay_ms": c_delay}},
                "d": {"agent": "echo", "depends_on": ["b", "c"]}
            }});
            let template = app.template_id(&unique_name("fan-in"), definition).await;
            let run = app.run_id(&template, json!({"topic": "owls"})).await;
            let detail = app.wait_finished(&run, FINISH).await;
            assert_eq!(detail["status"], "completed", "{detail}");
            let events = app.events(&run).await;
            let d = one(&events, "StepDispatched", "d");
            let b = one(&events, "StepCompleted", "b");
            let c = one(&events, "StepCompleted", "c");
            assert!(
                sequence(d) > sequence(b),
                "d before b completed: {events:?}"
            );
            assert!(
                sequence(d) > sequence(c),
                "d before c completed: {events:?}"
            );
            assert!(at(d) >= at(b).max(at(c)));
            // d became ready with the later of the two completions.
            let later = if sequence(b) > sequence(c) { b } else { c };
            let earlier = if sequence(b) > sequence(c) { c } else { b };
            assert_eq!(later["payload"]["ready"], json!(["d"]), "{later}");
            assert_eq!(earlier["payload"]["ready"], json!([]), "{earlier}");
            // d reads both branches.
            let reads = d["payload"]["reads"].as_object().expect("reads");
            assert!(reads.keys().any(|k| k.starts_with("b.")), "{d}");
            assert!(reads.keys().any(|k| k.starts_with("c.")), "{d}");
        }
    }
);

on_both_backends!(
    a_failing_step_is_tried_max_attempts_times_then_fails_the_run,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "flaky": {
                "agent": "echo",
                "config": {"fail_times": 5},
                "retry": {"max_attempts": 3, "backoff_ms": 10}
            },
            "after": {"agent": "echo", "depends_on": ["flaky"]},
            "last": {"agent": "echo", "depends_on": ["after"]}
        }});
        let template = app.template_id(&unique_name("flaky"), definition).await;
        let run = app.run_id(&template, json!({"x": 1})).await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "failed", "{detail}");
        assert_eq!(detail["error"]["step"], "flaky", "{detail}");
        assert!(detail["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        assert_eq!(detail["steps"]["flaky"]["status"], "failed");
        assert_eq!(detail["steps"]["flaky"]["attempt"], 3);
        for dependant in ["after", "last"] {
            assert_eq!(detail["steps"][dependant]["status"], "pending", "{detail}");
            assert_eq!(detail["steps"][dependant]["attempt"], 0, "{detail}");
        }

        // Give a wrongly scheduled dispatch the chance to show up.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = app.events(&run).await;
        let events = without_thread(&log);
        let dispatched = step_events(&events, "StepDispatched", "flaky");
        let failed = step_events(&events, "StepFailed", "flaky");
        let retries = step_events(&events, "StepRetryScheduled", "flaky");
        assert_eq!(dispatched.len(), 3, "{events:?}");
        assert_eq!(failed.len(), 3, "{events:?}");
        assert_eq!(retries.len(), 2, "{events:?}");
        let attempts: Vec<&Value> = dispatched
            .iter()
            .map(|e| &e["payload"]["attempt"])
            .collect();
        assert_eq!(attempts, [&json!(1), &json!(2), &json!(3)]);
        let will_retry: Vec<&Value> = failed.iter().map(|e| &e["payload"]["will_retry"]).collect();
        assert_eq!(will_retry, [&json!(true), &json!(true), &json!(false)]);
        let next: Vec<&Value> = retries
            .iter()
            .map(|e| &e["payload"]["next_attempt"])
            .collect();
        assert_eq!(next, [&json!(2), &json!(3)]);
        for (retry, redispatch) in retries.iter().zip(&dispatched[1..]) {
            assert_eq!(retry["payload"]["delay_ms"], 10);
            let due = retry["payload"]["due_at"].as_i64().expect("due_at");
            assert!(
                at(redispatch) >= due,
                "dispatched before the back-off: {retry} {redispatch}"
            );
        }
        for step in ["after", "last"] {
            assert!(
                log.iter().all(|e| e["payload"]["step"] != step),
                "an event about {step}, whose dependency failed: {log:?}"
            );
        }
        let last = events.last().unwrap();
        assert_eq!(last["event_type"], "RunFailed", "{last}");
        assert_eq!(last["payload"]["step"], "flaky");
        // The same commit announces it in the thread, last.
        let announced = log.last().unwrap();
        assert_eq!(announced["event_type"], "MessagePosted", "{announced}");
        assert_eq!(announced["payload"]["author"], "system", "{announced}");
        assert!(
            announced["payload"]["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("Run failed: step 'flaky' failed")),
            "{announced}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| e["event_type"] == "RunFailed")
                .count(),
            1
        );
        let (_, failed_runs) = app.get("/api/runs?status=failed").await;
        assert_eq!(page_ids(&failed_runs), [run.as_str()]);
    }
);

on_both_backends!(
    a_step_that_fails_once_succeeds_on_its_second_attempt,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "shaky": {
                "agent": "echo",
                "config": {"fail_times": 1},
                "retry": {"max_attempts": 2, "backoff_ms": 10}
            },
            "next": {"agent": "echo", "depends_on": ["shaky"]}
        }});
        let template = app.template_id("shaky", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert!(detail["error"].is_null(), "{detail}");
        assert_eq!(detail["steps"]["shaky"]["status"], "completed");
        assert_eq!(detail["steps"]["shaky"]["attempt"], 2);
        assert!(detail["steps"]["shaky"]["error"].is_null(), "{detail}");
        assert_eq!(detail["steps"]["next"]["status"], "completed");

        let events = app.events_without_thread(&run).await;
        assert_eq!(step_events(&events, "StepDispatched", "shaky").len(), 2);
        assert_eq!(step_events(&events, "StepFailed", "shaky").len(), 1);
        assert_eq!(step_events(&events, "StepRetryScheduled", "shaky").len(), 1);
        let completed = one(&events, "StepCompleted", "shaky");
        assert_eq!(completed["payload"]["attempt"], 2);
        assert_eq!(events.last().unwrap()["event_type"], "RunCompleted");

        let (status, artifact) = app
            .get(&format!("/api/runs/{run}/artifacts/shaky.topic"))
            .await;
        assert_eq!(status, 200, "{artifact}");
        assert_eq!(artifact["versions"][0]["attempt"], 2, "{artifact}");
        assert_eq!(artifact["versions"][0]["content"], "owls");
    }
);

on_both_backends!(
    revising_a_template_does_not_change_running_runs,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let v1 = json!({"steps": {"slow": {"agent": "echo", "config": {"delay_ms": 1500}}}});
        let template = app.template_id("versions", v1).await;
        let old_run = app.run_id(&template, json!({"topic": "owls"})).await;

        let v2 = json!({"steps": {
            "first": {"agent": "echo"},
            "second": {"agent": "echo", "depends_on": ["first"]}
        }});
        let (status, revised) = app
            .put(
                &format!("/api/templates/{template}"),
                json!({"definition": v2}),
            )
            .await;
        assert_eq!(status, 200, "{revised}");
        assert_eq!(revised["version"], 2);

        let during = app.run(&old_run).await;
        assert_eq!(
            during["status"], "running",
            "the run was meant to be running: {during}"
        );
        assert_eq!(during["template_version"], 1);
        let steps = |run: &Value| -> Vec<String> {
            run["steps"]
                .as_object()
                .expect("steps")
                .keys()
                .cloned()
                .collect()
        };
        assert_eq!(steps(&during), ["slow"]);

        let new_run = app.run_id(&template, json!({"topic": "bats"})).await;
        let after = app.wait_finished(&old_run, FINISH).await;
        assert_eq!(after["status"], "completed", "{after}");
        assert_eq!(after["template_version"], 1);
        assert_eq!(steps(&after), ["slow"]);
        assert_eq!(after["artifacts"]["slow.topic"]["latest"], 1, "{after}");
        let events = app.events(&old_run).await;
        assert_eq!(events[0]["event_type"], "RunStarted");
        assert_eq!(events[0]["payload"]["template_version"], 1);
        assert!(events
            .iter()
            .all(|e| { e["payload"]["step"].is_null() || e["payload"]["step"] == "slow" }));

        let fresh = app.wait_finished(&new_run, FINISH).await;
        assert_eq!(fresh["status"], "completed", "{fresh}");
        assert_eq!(fresh["template_version"], 2);
        assert_eq!(steps(&fresh), ["first", "second"]);

        let (_, by_template) = app.get(&format!("/api/runs?template_id={template}")).await;
        let versions: BTreeSet<i64> = by_template["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["template_version"].as_i64().unwrap())
            .collect();
        assert_eq!(versions, BTreeSet::from([1, 2]));
    }
);

on_both_backends!(
    the_template_agent_renders_the_run_input_into_an_artifact,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "title": {"agent": "template", "config": {"text": "All about {{ input.topic }}!"}},
            "intro": {
                "agent": "template",
                "depends_on": ["title"],
                "config": {"text": "{{ title.text }} / {{ steps.title.text }}"}
            }
        }});
        let template = app.template_id("render", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["steps"]["title"]["outputs"], json!(["title.text"]));

        let (status, title) = app
            .get(&format!("/api/runs/{run}/artifacts/title.text"))
            .await;
        assert_eq!(status, 200, "{title}");
        assert_eq!(title["versions"][0]["content"], "All about owls!");
        let (status, intro) = app
            .get(&format!("/api/runs/{run}/artifacts/intro.text"))
            .await;
        assert_eq!(status, 200, "{intro}");
        assert_eq!(
            intro["versions"][0]["content"],
            "All about owls! / All about owls!"
        );
    }
);

on_both_backends!(
    a_template_naming_an_undefined_variable_fails_the_step,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "render": {"agent": "template", "config": {"text": "{{ input.missing.deeper }}"}}
        }});
        let template = app.template_id("render", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "failed", "{detail}");
        assert_eq!(detail["error"]["step"], "render");
        assert!(
            detail["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("template:")),
            "{detail}"
        );
    }
);

on_both_backends!(runs_are_listed_by_status_and_template_in_pages, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ok = json!({"steps": {"a": {"agent": "echo"}}});
    let bad = json!({"steps": {"a": {"agent": "echo", "config": {"fail_times": 1}}}});
    let first = app.template_id("first", ok.clone()).await;
    let second = app.template_id("second", ok).await;
    let failing = app.template_id("failing", bad).await;

    let mut first_runs = BTreeSet::new();
    for _ in 0..3 {
        first_runs.insert(app.run_id(&first, json!({})).await);
    }
    let second_run = app.run_id(&second, json!({})).await;
    let failed_run = app.run_id(&failing, json!({})).await;
    for run in first_runs.iter().chain([&second_run, &failed_run]) {
        app.wait_finished(run, FINISH).await;
    }
    let set = |ids: Vec<String>| ids.into_iter().collect::<BTreeSet<_>>();

    let (status, all) = app.get("/api/runs").await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    assert!(all["next_cursor"].is_null());
    let item = &all["items"][0];
    for key in [
        "id",
        "template_id",
        "template_version",
        "status",
        "created_at",
        "updated_at",
    ] {
        assert!(!item[key].is_null(), "a run summary without {key}: {item}");
    }
    let created_at: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    assert!(
        created_at.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {created_at:?}"
    );

    let (_, completed) = app.get("/api/runs?status=completed").await;
    assert_eq!(
        completed["items"].as_array().unwrap().len(),
        4,
        "{completed}"
    );
    assert!(completed["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["status"] == "completed"));
    let (_, failed) = app.get("/api/runs?status=failed").await;
    assert_eq!(page_ids(&failed), [failed_run.as_str()]);
    let (_, running) = app.get("/api/runs?status=running").await;
    assert_eq!(page_ids(&running), Vec::<String>::new());
    let (_, queued) = app.get("/api/runs?status=queued").await;
    assert_eq!(page_ids(&queued), Vec::<String>::new());

    let (_, of_first) = app.get(&format!("/api/runs?template_id={first}")).await;
    assert_eq!(set(page_ids(&of_first)), first_runs);
    assert!(of_first["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["template_id"] == first.as_str()));
    let (_, both) = app
        .get(&format!("/api/runs?template_id={second}&status=completed"))
        .await;
    assert_eq!(page_ids(&both), [second_run.as_str()]);
    let (_, none) = app
        .get(&format!("/api/runs?template_id={second}&status=failed"))
        .await;
    assert_eq!(page_ids(&none), Vec::<String>::new());
    let (status, unknown) = app
        .get("/api/runs?template_id=0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&unknown), Vec::<String>::new());

    // Paging: one at a time, two at a time, and filtered.
    let one_by_one = all_pages(&app, "/api/runs?limit=1", 1).await;
    assert_eq!(
        one_by_one,
        page_ids(&all),
        "pages concatenate to the full list"
    );
    let two_by_two = all_pages(&app, "/api/runs?limit=2", 2).await;
    assert_eq!(two_by_two, page_ids(&all));
    let filtered = all_pages(
        &app,
        &format!("/api/runs?template_id={first}&status=completed&limit=2"),
        2,
    )
    .await;
    assert_eq!(filtered.len(), 3);
    assert_eq!(set(filtered), first_runs);
    let (_, exact) = app.get("/api/runs?limit=5").await;
    assert!(
        exact["next_cursor"].is_null(),
        "a full last page still has a cursor: {exact}"
    );
});

on_both_backends!(
    an_artifact_lists_every_version_with_its_content,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app
            .run_id(&template, json!({"topic": "owls", "n": 3}))
            .await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(detail["artifacts"]["a.n"]["step"], "a");

        let (status, body) = app.get(&format!("/api/runs/{run}/artifacts/a.topic")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["name"], "a.topic");
        assert_eq!(body["latest"], 1);
        let versions = body["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 1, "{body}");
        let v = &versions[0];
        assert_eq!(v["version"], 1);
        assert_eq!(v["step"], "a");
        assert_eq!(v["attempt"], 1);
        assert_eq!(v["content"], "owls");
        let created = v["created_at"].as_str().expect("created_at");
        chrono::DateTime::parse_from_rfc3339(created).expect("created_at is RFC 3339");
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["attempt", "content", "created_at", "step", "version"]
        );

        let (_, n) = app.get(&format!("/api/runs/{run}/artifacts/a.n")).await;
        assert_eq!(n["versions"][0]["content"], 3);
        // b's input is a's outputs, by step name.
        let (status, b) = app.get(&format!("/api/runs/{run}/artifacts/b.a")).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(
            b["versions"][0]["content"],
            json!({"topic": "owls", "n": 3})
        );
        assert_eq!(b["versions"][0]["step"], "b");
    }
);

on_both_backends!(
    a_large_artifact_is_stored_as_a_blob_and_round_trips_intact,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let big: String = (0..20_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let template = app
            .template_id("big", json!({"steps": {"a": {"agent": "echo"}}}))
            .await;
        let run = app
            .run_id(&template, json!({"big": big, "small": "tiny"}))
            .await;
        let detail = app.wait_finished(&run, FINISH).await;
        assert_eq!(detail["status"], "completed", "{detail}");

        let (status, body) = app.get(&format!("/api/runs/{run}/artifacts/a.big")).await;
        assert_eq!(status, 200);
        let content = body["versions"][0]["content"].as_str().expect("a string");
        assert_eq!(content.len(), 20_000);
        assert!(content == big, "the large artifact came back changed");

        let events = app.events(&run).await;
        let completed = one(&events, "StepCompleted", "a");
        let artifacts = completed["payload"]["artifacts"]
            .as_array()
            .expect("artifacts");
        let stored = |name: &str| -> &Value {
            &artifacts
                .iter()
                .find(|a| a["name"] == name)
                .unwrap_or_else(|| panic!("no {name} in {completed}"))["content"]
        };
        let blob = &stored("a.big")["blob"];
        let sha = blob["sha256"]
            .as_str()
            .unwrap_or_else(|| panic!("not a blob: {completed}"));
        assert_eq!(sha.len(), 64);
        assert!(sha
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert!(stored("a.big").get("inline").is_none());
        assert_eq!(
            stored("a.small"),
            &json!({"inline": "tiny"}),
            "small bodies stay inline"
        );
        assert!(
            !completed.to_string().contains(&big[..1000]),
            "the large body is inline in the event"
        );
    }
);

on_both_backends!(
    the_events_of_a_run_are_ordered_and_step_events_name_their_step,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let definition = json!({"steps": {
            "a": {"agent": "echo", "config": {"fail_times": 1}, "retry": {"max_attempts": 2}},
            "b": {"agent": "echo", "depends_on": ["a"]}
        }});
        let template = app.template_id("events", definition).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        app.wait_finished(&run, FINISH).await;

        let (status, page) = app.get(&format!("/api/runs/{run}/events")).await;
        assert_eq!(status, 200, "{page}");
        assert!(page["next_cursor"].is_null(), "{page}");
        let events = page["items"].as_array().unwrap().clone();
        let sequences: Vec<i64> = events.iter().map(sequence).collect();
        assert_eq!(sequences, (1..=events.len() as i64).collect::<Vec<_>>());
        for event in &events {
            let mut keys: Vec<&str> = event
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            for key in [
                "event_type",
                "event_version",
                "metadata",
                "payload",
                "recorded_at",
                "sequence",
            ] {
                assert!(keys.contains(&key), "an event without {key}: {event}");
            }
            // RunStarted (retry_of, then redirected_from and auto_run),
            // StepFailed (fails_run, then retryable), StepDispatched
            // (prompt_override and instructions, then evaluating) and
            // StepCompleted (skipped, then usage, latest and final_score)
            // are at 1.2 (RunStarted at 1.3: owner, and 1.4: imports;
            // StepDispatched at 1.3: imports); CancelRequested (grace_until)
            // and StepAwaitingReview (usage) at 1.1, MessagePosted (buttons
            // and input) at 1.1; every other event at 1.0.
            let version = match event["event_type"].as_str() {
                Some("RunStarted") => "1.4",
                Some("StepDispatched") => "1.3",
                Some("StepFailed" | "StepCompleted") => "1.2",
                Some("CancelRequested" | "StepAwaitingReview" | "MessagePosted") => "1.1",
                _ => "1.0",
            };
            assert_eq!(event["event_version"], version, "{event}");
            assert!(event["metadata"].is_object(), "{event}");
            recorded_at(event);
            assert_eq!(event["metadata"]["recorded_at"], event["recorded_at"]);
            let kind = event["event_type"].as_str().unwrap();
            if kind.starts_with("Step") {
                assert!(event["payload"]["step"].is_string(), "{event}");
            }
        }
        // Agents' comments interleave with the steps' events: the story is
        // told without the thread.
        let kinds: Vec<&str> = events
            .iter()
            .filter(|e| !is_thread_event(e))
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            [
                "RunStarted",
                "StepDispatched",
                "StepFailed",
                "StepRetryScheduled",
                "StepDispatched",
                "StepCompleted",
                "StepDispatched",
                "StepCompleted",
                "RunCompleted"
            ]
        );
        assert_eq!(events[0]["payload"]["run_id"], run.as_str());
        assert_eq!(events[0]["payload"]["ready"], json!(["a"]));

        // Paging with after and limit.
        let (status, head) = app.get(&format!("/api/runs/{run}/events?limit=4")).await;
        assert_eq!(status, 200, "{head}");
        assert_eq!(head["items"].as_array().unwrap().len(), 4);
        assert_eq!(head["next_cursor"], "4");
        let (_, tail) = app.get(&format!("/api/runs/{run}/events?after=4")).await;
        let tail: Vec<i64> = tail["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(sequence)
            .collect();
        assert_eq!(tail, (5..=events.len() as i64).collect::<Vec<_>>());
        let (status, beyond) = app.get(&format!("/api/runs/{run}/events?after=1000")).await;
        assert_eq!(status, 200, "{beyond}");
        assert_eq!(beyond["items"], json!([]));
        // A page that ends exactly at the last event says there is no more.
        let last = events.len() as i64;
        let (_, exact) = app
            .get(&format!(
                "/api/runs/{run}/events?after={}&limit=2",
                last - 2
            ))
            .await;
        assert_eq!(exact["items"].as_array().unwrap().len(), 2, "{exact}");
        assert!(exact["next_cursor"].is_null(), "{exact}");
        // An unknown run is not found whatever `after` says.
        let unknown = uuid::Uuid::new_v4();
        for after in [0, 3] {
            expect_error(
                &app.get(&format!("/api/runs/{unknown}/events?after={after}"))
                    .await,
                404,
                "run_not_found",
            );
        }
    }
);

on_both_backends!(starting_a_run_with_bad_input_starts_nothing, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("t", diamond(0)).await;
    let before = app.counts().await;
    assert_eq!(before, (1, 0));

    let reply = app
        .start_run("0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10", json!({}))
        .await;
    expect_error(&reply, 404, "template_not_found");
    for bad_id in ["bad id", "", "a.b", &"x".repeat(65)] {
        let reply = app.start_run(bad_id, json!({})).await;
        expect_error(&reply, 400, "invalid_template_id");
    }
    let reply = app.post("/api/runs", json!({"input": {}})).await;
    expect_error(&reply, 400, "invalid_body");
    let reply = app.post("/api/runs", json!({"template_id": 7})).await;
    expect_error(&reply, 400, "invalid_body");
    let reply = app
        .post(
            "/api/runs",
            json!({"template_id": template, "input": {}, "priority": 1}),
        )
        .await;
    expect_error(&reply, 400, "invalid_body");
    for raw in ["{", "{\"template_id\": }", "nope", ""] {
        expect_error(&app.post_raw("/api/runs", raw).await, 400, "invalid_body");
    }
    assert_eq!(app.counts().await, before, "a refused start created a run");

    // The input defaults to {}.
    let (status, body) = app
        .post("/api/runs", json!({"template_id": template}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["input"], json!({}));
    assert_eq!(body["template_version"], 1);
    assert_eq!(app.counts().await, (1, 1));
});

on_both_backends!(reading_an_unknown_or_invalid_run_is_refused, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let unknown = "0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10";
    expect_error(
        &app.get(&format!("/api/runs/{unknown}")).await,
        404,
        "run_not_found",
    );
    expect_error(
        &app.get(&format!("/api/runs/{unknown}/events")).await,
        404,
        "run_not_found",
    );
    expect_error(
        &app.get(&format!("/api/runs/{unknown}/artifacts/a.topic"))
            .await,
        404,
        "run_not_found",
    );
    for bad in ["bad%20id", "dot.ted"] {
        expect_error(
            &app.get(&format!("/api/runs/{bad}")).await,
            400,
            "invalid_run_id",
        );
        expect_error(
            &app.get(&format!("/api/runs/{bad}/events")).await,
            400,
            "invalid_run_id",
        );
        expect_error(
            &app.get(&format!("/api/runs/{bad}/artifacts/a.topic")).await,
            400,
            "invalid_run_id",
        );
    }
});

on_both_backends!(listing_runs_checks_its_query, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for (query, code) in [
        ("status=bogus", "invalid_status"),
        ("status=Completed", "invalid_status"),
        ("status=", "invalid_status"),
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("limit=-3", "invalid_query"),
        ("cursor=bogus", "invalid_cursor"),
        ("cursor=notanumber_abc", "invalid_cursor"),
        ("template_id=bad%20id", "invalid_template_id"),
        ("page=2", "invalid_query"),
        ("status=completed&colour=red", "invalid_query"),
    ] {
        let reply = app.get(&format!("/api/runs?{query}")).await;
        expect_error(&reply, 400, code);
    }
});

on_both_backends!(artifacts_and_events_check_their_parameters, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("diamond", diamond(0)).await;
    let run = app.run_id(&template, json!({"topic": "owls"})).await;
    app.wait_finished(&run, FINISH).await;

    for name in ["nodot", "a.", ".topic", "a.b.c", "a%20b.topic"] {
        let reply = app.get(&format!("/api/runs/{run}/artifacts/{name}")).await;
        expect_error(&reply, 400, "invalid_artifact_name");
    }
    for name in ["a.nothing", "zz.topic"] {
        let reply = app.get(&format!("/api/runs/{run}/artifacts/{name}")).await;
        expect_error(&reply, 404, "artifact_not_found");
    }

    for (query, code) in [
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("after=-1", "invalid_after"),
        ("after=x", "invalid_query"),
        ("cursor=1", "invalid_query"),
    ] {
        let reply = app.get(&format!("/api/runs/{run}/events?{query}")).await;
        expect_error(&reply, 400, code);
    }
});

on_both_backends!(an_unknown_route_is_a_json_404, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for path in ["/api/nope", "/nope", "/api/runs/x/y/z/w", "/api"] {
        expect_error(&app.get(path).await, 404, "no_such_route");
    }
    expect_error(
        &app.post("/api/things", json!({})).await,
        404,
        "no_such_route",
    );
    // A known path with a method it does not take: 405 in JSON.
    for (method, path) in [
        ("DELETE", "/api/templates"),
        ("DELETE", "/api/runs"),
        ("POST", "/api/runs/x"),
        ("PUT", "/api/runs/x/events"),
        ("GET", "/api/templates/x/archive"),
    ] {
        expect_error(
            &app.request(method, path, None).await,
            405,
            "method_not_allowed",
        );
    }
    let (status, body) = app.get("/healthz").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
});

on_both_backends!(
    a_client_sees_its_new_run_in_its_next_get_and_list,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        for i in 0..25 {
            let (status, created) = app.start_run(&template, json!({"i": i})).await;
            assert_eq!(status, 201, "{created}");
            let id = created["id"].as_str().unwrap();
            // The 201 body is the run as its start left it.
            assert_eq!(created["status"], "running", "{created}");
            assert_eq!(created["steps"]["a"]["status"], "running", "{created}");
            assert_eq!(created["template_version"], 1);
            // The very next reads see it, never an older state.
            let detail = app.run(id).await;
            assert!(
                detail["sequence"].as_u64() >= created["sequence"].as_u64(),
                "{detail} is older than {created}"
            );
            let (status, list) = app
                .get(&format!("/api/runs?template_id={template}&limit=500"))
                .await;
            assert_eq!(status, 200, "{list}");
            let listed = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id);
            assert!(
                listed,
                "run {id} is missing from the list right after its start"
            );
        }
    }
);
