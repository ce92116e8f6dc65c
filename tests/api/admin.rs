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

const READ_MODELS: [&str; 6] = [
    "accounts",
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
        // The server also says how its latest rebuild of each went (none).
        let mut served = body["items"].clone();
        for item in served.as_array_mut().expect("items") {
            assert_eq!(item["rebuild"], Value::Null, "{item}");
            item.as_object_mut().expect("an object").remove("rebuild");
        }
        assert_eq!(listed["items"], served);
        let table = projections_list(&app, &[]).await;
        let text = String::from_utf8_lossy(&table.stdout);
        assert!(table.status.success(), "{text}");
        assert!(text.starts_with("NAME"), "{text}");
        for name in READ_MODELS {
            assert!(text.contains(name), "{text}");
        }
    }
);

/// Runs SQL statements on the app's database from outside (an operator's
/// hand edit, a damaged read model).
async fn tamper(app: &TestApp, statements: &[&str]) {
    let db = runlog::db::Db::connect(app.storage.database_url.as_deref(), &app.storage.data_dir)
        .await
        .expect("connect");
    runlog::with_pool!(&db, pool => {
        for sql in statements {
            sqlx::query(sql).execute(pool).await.expect(sql);
        }
    });
    db.close().await;
}

/// The names of `table`'s indexes.
async fn index_names(app: &TestApp, table: &str) -> Vec<String> {
    let db = runlog::db::Db::connect(app.storage.database_url.as_deref(), &app.storage.data_dir)
        .await
        .expect("connect");
    let names: Vec<String> = match &db {
        runlog::db::Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT indexname FROM pg_indexes WHERE tablename = $1 ORDER BY 1")
                .bind(table)
                .fetch_all(pool)
                .await
                .expect("indexes")
        }
        runlog::db::Db::Sqlite(pool) => sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 ORDER BY 1",
        )
        .bind(table)
        .fetch_all(pool)
        .await
        .expect("indexes"),
    };
    db.close().await;
    names
}

const TABLES: [&str; 5] = [
    "run_summaries",
    "run_details",
    "artifact_versions",
    "run_messages",
    "template_catalogue",
];

/// The projections list, by name.
async fn projections_by_name(app: &TestApp) -> std::collections::BTreeMap<String, Value> {
    let (status, body) = app.get("/api/admin/projections").await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| (i["name"].as_str().expect("a name").to_string(), i.clone()))
        .collect()
}

/// Waits until the latest rebuild of `name` has finished; returns it.
async fn rebuilt(app: &TestApp, name: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let item = projections_by_name(app).await.remove(name).expect(name);
        let state = item["rebuild"]["state"].as_str().unwrap_or("");
        if state == "done" || state == "failed" {
            return item;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rebuild of {name} never finished: {item}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every run summary the list shows (up to 500).
async fn summaries(app: &TestApp) -> Vec<Value> {
    let (status, body) = app.get("/api/runs?limit=500").await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().expect("items").clone()
}

on_both_backends!(
    each_read_model_rebuilds_from_the_log_while_the_server_serves_and_swaps_in_whole,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let mut runs = Vec::new();
        for i in 0..30 {
            let run = app
                .run_id(&template, json!({"topic": format!("owls {i}")}))
                .await;
            runs.push(run);
        }
        for run in &runs {
            let detail = app.wait_finished(run, Duration::from_secs(20)).await;
            assert_eq!(detail["status"], "completed", "{detail}");
        }
        let (status, _) = app
            .post_message(&runs[0], json!({"content": "Looks good so far."}))
            .await;
        assert_eq!(status, 201);
        let before = summaries(&app).await;
        assert_eq!(before.len(), 30);
        let detail_before = app.run(&runs[1]).await;
        let messages_before = app.messages(&runs[0]).await;
        assert!(!messages_before.is_empty());
        let artifact_path = format!("/api/runs/{}/artifacts/a.topic", runs[2]);
        let (status, artifact_before) = app.get(&artifact_path).await;
        assert_eq!(status, 200, "{artifact_before}");
        let (_, template_before) = app.get(&format!("/api/templates/{template}")).await;
        let mut indexes_before = Vec::new();
        for table in TABLES {
            indexes_before.push(index_names(&app, table).await);
        }
        assert!(indexes_before[0].len() >= 3, "{indexes_before:?}");

        // Every read model damaged by hand, as a bug or an operator might.
        let victims: Vec<String> = runs[20..25].to_vec();
        let in_list = victims
            .iter()
            .map(|r| format!("'{r}'"))
            .collect::<Vec<_>>()
            .join(",");
        tamper(
            &app,
            &[
                &format!("DELETE FROM run_summaries WHERE run_id IN ({in_list})"),
                &format!(
                    "UPDATE run_details SET doc = REPLACE(doc, 'owls 1', 'cats') WHERE run_id = '{}'",
                    runs[1]
                ),
                &format!("DELETE FROM run_messages WHERE run_id = '{}'", runs[0]),
                &format!("DELETE FROM artifact_versions WHERE run_id = '{}'", runs[2]),
                &format!("UPDATE template_catalogue SET name = 'vandalised' WHERE template_id = '{template}'"),
            ],
        )
        .await;
        assert_eq!(summaries(&app).await.len(), 25);

        // Readers keep reading, and new runs keep starting, while the
        // summaries rebuild: a reader sees the old table or the new one,
        // never one half built.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (address, stop, client) = (app.address.clone(), stop.clone(), app.client.clone());
            actix_web::rt::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let mut response = client
                        .get(format!("{address}/api/runs?limit=500"))
                        .send()
                        .await
                        .expect("GET /api/runs");
                    assert_eq!(response.status().as_u16(), 200);
                    let body: Value = response.json().limit(1 << 24).await.expect("JSON");
                    seen.push(body["items"].as_array().map_or(0, Vec::len));
                }
                seen
            })
        };
        let (status, started) = app
            .post("/api/admin/projections/run_summaries/rebuild", json!({}))
            .await;
        assert_eq!(status, 202, "{started}");
        assert_eq!(started["name"], "run_summaries");
        assert_eq!(started["state"], "building", "{started}");
        let mut during = Vec::new();
        for i in 0..5 {
            during.push(
                app.run_id(&template, json!({"topic": format!("bats {i}")}))
                    .await,
            );
        }
        let item = rebuilt(&app, "run_summaries").await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.expect("the reader ends");
        assert_eq!(item["rebuild"]["state"], "done", "{item}");
        assert!(
            item["rebuild"]["events_applied"].as_u64().unwrap_or(0) > 30 * 10,
            "{item}"
        );
        assert_eq!(item["version"], 1, "{item}");
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|n| *n >= 25),
            "a reader saw a half-built table: {seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "the list shrank: {seen:?}"
        );
        for run in &during {
            app.wait_finished(run, Duration::from_secs(20)).await;
        }
        // Every run is back, as it was, and the runs started meanwhile too.
        let after = summaries(&app).await;
        assert_eq!(after.len(), 35);
        for old in &before {
            let new = after.iter().find(|s| s["id"] == old["id"]).expect("listed");
            assert_eq!(new, old);
        }

        // The others, one after another.
        for name in [
            "run_details",
            "run_messages",
            "artifact_versions",
            "template_catalogue",
            "accounts",
        ] {
            let (status, body) = app
                .post(&format!("/api/admin/projections/{name}/rebuild"), json!({}))
                .await;
            assert_eq!(status, 202, "{name}: {body}");
            let item = rebuilt(&app, name).await;
            assert_eq!(item["rebuild"]["state"], "done", "{item}");
        }
        assert_eq!(app.run(&runs[1]).await, detail_before);
        assert_eq!(app.messages(&runs[0]).await, messages_before);
        assert_eq!(app.get(&artifact_path).await, (200, artifact_before));
        assert_eq!(
            app.get(&format!("/api/templates/{template}")).await.1,
            template_before
        );
        let out = app.cli(&["replay", "--verify", "--all"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The swapped-in tables carry the live ones' indexes, by name.
        for (table, before) in TABLES.iter().zip(&indexes_before) {
            assert_eq!(&index_names(&app, table).await, before, "{table}");
            assert!(index_names(&app, &format!("{table}__rebuild"))
                .await
                .is_empty());
        }

        // The follower goes on into the swapped-in tables.
        let late = app.run_id(&template, json!({"topic": "late"})).await;
        let detail = app.wait_finished(&late, Duration::from_secs(20)).await;
        assert_eq!(detail["status"], "completed", "{detail}");
        assert_eq!(summaries(&app).await.len(), 36);
        let listed = projections_by_name(&app).await;
        assert_eq!(listed.len(), 6, "no rebuild rows left: {listed:?}");
        for item in listed.values() {
            assert_eq!(item["version"], 1, "{item}");
        }
    }
);

on_both_backends!(
    a_rebuild_of_an_unknown_projection_is_404_and_a_cli_rebuild_runs_beside_the_server,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let run = app.run_id(&template, json!({"topic": "owls"})).await;
        app.wait_finished(&run, Duration::from_secs(20)).await;
        let listed = projections_by_name(&app).await;

        let (status, body) = app
            .post("/api/admin/projections/run_sumaries/rebuild", json!({}))
            .await;
        let message = crate::common::expect_error(&(status, body), 404, "unknown_projection");
        assert!(message.contains("run_sumaries"), "{message}");
        assert_eq!(projections_by_name(&app).await, listed, "nothing changed");

        let out = app.cli(&["projections", "rebuild", "run_sumaries"]).await;
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no projection is named 'run_sumaries'"),
            "{stderr}"
        );
        assert!(stderr.contains("run_summaries"), "{stderr}");
        if backend == crate::common::Backend::Sqlite {
            // SQLite serves one process: the CLI asks the server that holds
            // the file, through its admin API.
            assert!(
                stderr.contains("holds this database: rebuilding run_sumaries through it"),
                "{stderr}"
            );
        }

        tamper(
            &app,
            &[&format!("DELETE FROM run_summaries WHERE run_id = '{run}'")],
        )
        .await;
        assert!(summaries(&app).await.is_empty());
        let out = app.cli(&["projections", "rebuild", "run_summaries"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("run_summaries: rebuilt from"), "{stdout}");
        assert!(stdout.contains("swapped in"), "{stdout}");
        if backend == crate::common::Backend::Sqlite {
            assert!(
                stdout.contains(&format!("by the server at {}", app.address)),
                "{stdout}"
            );
        }
        let after = summaries(&app).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0]["id"], run.as_str());
        // The server's follower goes on writing the swapped-in table.
        let next = app.run_id(&template, json!({"topic": "bats"})).await;
        app.wait_finished(&next, Duration::from_secs(20)).await;
        assert_eq!(summaries(&app).await.len(), 2);
    }
);

on_both_backends!(
    a_projection_older_than_the_build_is_rebuilt_at_start_while_the_old_one_serves,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let mut runs = Vec::new();
        for i in 0..5 {
            let run = app
                .run_id(&template, json!({"topic": format!("owls {i}")}))
                .await;
            app.wait_finished(&run, Duration::from_secs(20)).await;
            runs.push(run);
        }
        let storage = app.stop_keeping_storage().await;
        // As if an older build had written run_summaries (version 0),
        // missing rows the new one would have.
        let db = runlog::db::Db::connect(storage.database_url.as_deref(), &storage.data_dir)
            .await
            .expect("connect");
        runlog::with_pool!(&db, pool => {
            for sql in [
                "UPDATE projection_positions SET version = 0 WHERE name = 'run_summaries'",
                &format!("DELETE FROM run_summaries WHERE run_id = '{}'", runs[0]),
            ] {
                sqlx::query(sql).execute(pool).await.expect(sql);
            }
        });
        db.close().await;

        let app = crate::common::spawn_app_on(storage).await;
        let item = rebuilt(&app, "run_summaries").await;
        assert_eq!(item["rebuild"]["state"], "done", "{item}");
        assert_eq!(item["version"], 1, "{item}");
        assert_eq!(summaries(&app).await.len(), 5);
        // The others were current: not rebuilt.
        for (name, item) in projections_by_name(&app).await {
            if name != "run_summaries" {
                assert_eq!(item["rebuild"], Value::Null, "{name}: {item}");
            }
        }
    }
);

#[actix_web::test]
async fn a_second_server_on_one_sqlite_database_is_refused_with_the_holder_named() {
    let Some(app) = spawn_app(crate::common::Backend::Sqlite).await else {
        return;
    };
    let data_dir = app.storage.data_dir.display().to_string();
    let started = std::time::Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args(["serve", "--bind", "127.0.0.1:0", "--data-dir", &data_dir])
            .env("RUST_LOG", "warn")
            .output()
            .expect("the runlog binary runs")
    })
    .await
    .expect("the blocking task completes");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("another runlog serve") && stderr.contains("holds the SQLite database"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("(pid {})", std::process::id())),
        "{stderr}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "it waited for the holder to stop"
    );
    // The first server still serves.
    let (status, _) = app.get("/api/runs").await;
    assert_eq!(status, 200);
    // Once it has stopped, another may start on the same database.
    let storage = app.stop_keeping_storage().await;
    let again = crate::common::spawn_app_on(storage).await;
    assert_eq!(again.get("/api/runs").await.0, 200);
}

on_both_backends!(
    a_run_that_goes_on_across_a_swap_keeps_the_rebuilt_document,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        // In manual mode the run stays running, waiting for triggers.
        let run = app.manual_run_id(&template, json!({"topic": "owls"})).await;
        let truth = app.run(&run).await;
        assert_eq!(truth["input"]["topic"], "owls");
        tamper(
            &app,
            &[&format!(
                "UPDATE run_details SET doc = REPLACE(doc, '\"owls\"', '\"cats\"') WHERE run_id = '{run}'"
            )],
        )
        .await;
        // After a restart the follower holds the damaged document from its
        // next event on, as a follower holds any document it wrote.
        let storage = app.stop_keeping_storage().await;
        let app = crate::common::spawn_app_on(storage).await;
        // A node that has not finished stopping may still host the run (a
        // 503 with Retry-After, as docs/operations.md says): retry as a
        // client would.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let (status, body) = loop {
            let reply = app.post_message(&run, json!({"content": "first"})).await;
            if reply.0 != 503 || std::time::Instant::now() > deadline {
                break reply;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(status, 201, "{body}");
        assert_eq!(app.run(&run).await["input"]["topic"], "cats");

        let (status, body) = app
            .post("/api/admin/projections/run_details/rebuild", json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        let item = rebuilt(&app, "run_details").await;
        assert_eq!(item["rebuild"]["state"], "done", "{item}");
        assert_eq!(app.run(&run).await["input"]["topic"], "owls");
        // The run goes on: its next events land on the rebuilt document,
        // not on the one the follower held before the swap.
        for content in ["second", "third"] {
            let (status, _) = app.post_message(&run, json!({"content": content})).await;
            assert_eq!(status, 201);
        }
        let after = app.run(&run).await;
        assert_eq!(after["input"]["topic"], "owls", "{after}");
        let out = app.cli(&["replay", &run, "--verify"]).await;
        assert!(
            out.status.success(),
            "{} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
);
