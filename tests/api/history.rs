//! History export and import: `runlog export`, `GET /api/runs/{id}/export`
//! and `runlog import` into another database, after which the runs read
//! the same and `replay --verify` passes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{diamond, expect_error, spawn_app, spawn_app_on, Storage, TestApp};
use crate::on_both_backends;

/// The JSON lines of an export, the header's export time left out.
fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).expect("a JSON line");
            if let Some(o) = v.as_object_mut() {
                o.remove("exported_at");
            }
            v
        })
        .collect()
}

/// How many events the database of `storage` holds.
async fn event_count(storage: &Storage) -> i64 {
    let db = runlog::db::Db::connect(storage.database_url.as_deref(), &storage.data_dir)
        .await
        .expect("connect");
    runlog::store::migrate(&db).await.expect("migrate");
    let count: i64 = runlog::with_pool!(&db, pool => {
        sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.expect("count")
    });
    db.close().await;
    count
}

async fn finished(app: &TestApp, template: &str, input: Value) -> String {
    let run = app.run_id(template, input).await;
    let detail = app.wait_finished(&run, Duration::from_secs(20)).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    run
}

on_both_backends!(
    an_export_imported_into_another_database_reads_the_same_and_verifies,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        // A body over 8 KiB goes to the blob store: the export carries it.
        let big = finished(&app, &template, json!({"topic": "owls ".repeat(2_000)})).await;
        let small = finished(&app, &template, json!({"topic": "owls"})).await;
        let (status, _) = app
            .post_message(&small, json!({"content": "Looks good."}))
            .await;
        assert_eq!(status, 201);

        let file = app.storage.data_dir.join("export.jsonl");
        let path = file.display().to_string();
        let out = app.cli(&["export", &big, &small, "--output", &path]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("exported 2 runs"), "{stderr}");
        assert!(
            stderr.contains(" blobs") && !stderr.contains(" 0 blobs"),
            "the big run's bodies are blobs: {stderr}"
        );
        let text = std::fs::read_to_string(&file).expect("the export");
        let exported = lines(&text);
        assert_eq!(exported[0]["kind"], "runlog-history");
        assert_eq!(exported[0]["format_version"], 1);
        assert_eq!(exported.last().expect("end")["kind"], "end");

        // Over HTTP, one run: what `runlog export RUN` prints.
        let response = app
            .client
            .get(format!("{}/api/runs/{big}/export", app.address))
            .send()
            .await;
        let mut response = response.expect("GET export");
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/x-ndjson")
        );
        let body = response.body().limit(1 << 24).await.expect("body");
        let cli = app.cli(&["export", &big]).await;
        assert!(cli.status.success());
        assert_eq!(
            lines(&String::from_utf8_lossy(&body)),
            lines(&String::from_utf8_lossy(&cli.stdout))
        );
        expect_error(
            &app.get("/api/runs/nope/export").await,
            404,
            "run_not_found",
        );
        expect_error(
            &app.get("/api/runs/not%20an%20id/export").await,
            400,
            "invalid_run_id",
        );

        // Not into a SQLite database a server holds: that is refused, and
        // says so.
        if backend == crate::common::Backend::Sqlite {
            let before = event_count(&app.storage).await;
            let out = app.cli(&["import", &path]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("holds this SQLite database: stop it to import"),
                "{stderr}"
            );
            assert!(
                stderr.contains(&format!("pid {}", std::process::id())),
                "{stderr}"
            );
            assert!(stderr.contains("nothing imported"), "{stderr}");
            assert_eq!(event_count(&app.storage).await, before);
        }

        // Into a fresh database (no server on it yet).
        let Some(other) = Storage::new(backend).await else {
            return;
        };
        let out = other.cli(&["import", &path]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("imported 2 runs"), "{stdout}");
        let imported_events = event_count(&other).await;
        assert!(imported_events > 30, "{imported_events}");
        // Imported again: refused, nothing changes.
        let again = other.cli(&["import", &path]).await;
        assert_eq!(again.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already has run(s)"));
        assert_eq!(event_count(&other).await, imported_events);

        let there = spawn_app_on(other).await;
        for run in [&big, &small] {
            assert_eq!(there.run(run).await, app.run(run).await, "{run}");
            assert_eq!(there.events(run).await, app.events(run).await, "{run}");
            assert_eq!(there.messages(run).await, app.messages(run).await, "{run}");
        }
        let artifact = format!("/api/runs/{big}/artifacts/a.topic");
        let (status, body) = there.get(&artifact).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, app.get(&artifact).await.1);
        let verify = there.cli(&["replay", "--verify", "--all"]).await;
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
    }
);

on_both_backends!(
    an_import_that_is_not_whole_or_holds_an_unfinished_run_is_refused_and_changes_nothing,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("diamond", diamond(0)).await;
        let big = finished(&app, &template, json!({"topic": "owls ".repeat(2_000)})).await;
        // A run in manual mode waits for a trigger: not finished.
        let (status, body) = app
            .post(
                "/api/runs",
                json!({"template_id": template, "input": {"topic": "owls"}, "auto_run": false}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let waiting = body["id"].as_str().expect("id").to_string();
        let good = String::from_utf8_lossy(&app.cli(&["export", &big]).await.stdout).to_string();
        let unfinished =
            String::from_utf8_lossy(&app.cli(&["export", &waiting]).await.stdout).to_string();

        let mut bad: Vec<(&str, String, &str)> = Vec::new();
        let all: Vec<&str> = good.lines().collect();
        bad.push((
            "truncated",
            all[..all.len() - 1].join("\n"),
            "ends before its end record",
        ));
        bad.push(("not JSON", format!("{}\n{{oops\n", all[0]), "not JSON"));
        bad.push((
            "another format",
            good.replacen("\"format_version\":1", "\"format_version\":99", 1),
            "format version 99",
        ));
        let blob_line = all
            .iter()
            .position(|l| l.contains("\"kind\":\"blob\""))
            .expect("a blob line");
        let mut tampered: Vec<String> = all.iter().map(|l| l.to_string()).collect();
        let mut blob: Value = serde_json::from_str(&tampered[blob_line]).expect("JSON");
        blob["hex"] = json!(hex_of("not the body"));
        tampered[blob_line] = blob.to_string();
        bad.push((
            "a tampered blob",
            tampered.join("\n"),
            "does not match its hash",
        ));
        let without_blob: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != blob_line)
            .map(|(_, l)| *l)
            .collect();
        bad.push((
            "a missing blob",
            without_blob.join("\n"),
            "the end record counts",
        ));
        // … and with the end record made to agree: still refused.
        let mut agreeing: Vec<String> = without_blob.iter().map(|l| l.to_string()).collect();
        let last = agreeing.len() - 1;
        let mut end: Value = serde_json::from_str(&agreeing[last]).expect("JSON");
        end["blobs"] = json!(end["blobs"].as_u64().unwrap_or(1) - 1);
        agreeing[last] = end.to_string();
        bad.push((
            "a missing blob, counts agreeing",
            agreeing.join("\n"),
            "is referenced but not in the file",
        ));
        // An event left out: the next one does not follow.
        let gap: Vec<&str> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, l)| *l)
            .collect();
        bad.push((
            "a gap",
            gap.join("\n"),
            "events must follow each other from 1",
        ));
        bad.push(("empty", String::new(), "empty"));

        let Some(target) = Storage::new(backend).await else {
            return;
        };
        for (what, text, reason) in bad {
            let file = target.data_dir.join("bad.jsonl");
            std::fs::write(&file, &text).expect("write");
            let out = target.cli(&["import", &file.display().to_string()]).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{what}: {stderr}");
            assert!(stderr.contains(reason), "{what}: {stderr}");
            assert!(stderr.contains("nothing imported"), "{what}: {stderr}");
            assert_eq!(event_count(&target).await, 0, "{what}");
        }
        let file = target.data_dir.join("unfinished.jsonl");
        std::fs::write(&file, &unfinished).expect("write");
        let out = target.cli(&["import", &file.display().to_string()]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("had not finished"), "{stderr}");
        assert!(stderr.contains(&waiting), "{stderr}");
        assert_eq!(event_count(&target).await, 0);
        let missing = target.cli(&["import", "/nonexistent/export.jsonl"]).await;
        assert_eq!(missing.status.code(), Some(2));
        // Export refuses what it cannot find.
        let out = app.cli(&["export", "nope"]).await;
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no run nope"));
        let out = app.cli(&["export"]).await;
        assert_eq!(out.status.code(), Some(2));
        // --all leaves unfinished runs out, and says so.
        let out = app.cli(&["export", "--all"]).await;
        assert!(out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("1 unfinished runs left out"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let header: Value = serde_json::from_str(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .expect("a header"),
        )
        .expect("JSON");
        assert_eq!(header["runs"], json!([big]));
    }
);

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}
