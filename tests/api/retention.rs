//! Retention: `runlog purge` and `POST /api/runs/{id}/purge` remove the
//! bodies of finished runs' artifacts; the log stays whole, reads show the
//! versions as purged, a body another run still references stays, a purged
//! run never runs again, and an export taken first restores the bodies
//! elsewhere.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    assert_refused, count_events, expect_error, spawn_app, spawn_app_on, Storage, TestApp,
};
use crate::on_both_backends;

const FINISH: Duration = Duration::from_secs(20);

/// a echoes the run input (its `big` output over 8 KiB: a blob); b echoes
/// a's outputs (one output of about the same size: a blob too).
fn two_steps() -> Value {
    json!({"steps": {
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"]}
    }})
}

fn big_input(seed: &str) -> Value {
    json!({"big": seed.repeat(20_000 / seed.len().max(1)), "small": "tiny"})
}

async fn finished(app: &TestApp, template: &str, input: Value) -> String {
    let run = app.run_id(template, input).await;
    let detail = app.wait_finished(&run, FINISH).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    run
}

/// Now, as the cut-off of a purge, a little after everything so far.
async fn cut_off_now() -> String {
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(20)).await;
    now
}

async fn scalar(storage: &Storage, sql: &str) -> i64 {
    let db = runlog::db::Db::connect(storage.database_url.as_deref(), &storage.data_dir)
        .await
        .expect("connect");
    let n: i64 = runlog::with_pool!(&db, pool => {
        sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
    });
    db.close().await;
    n
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

on_both_backends!(
    a_purge_removes_old_bodies_keeps_the_log_and_shared_bodies_and_the_export_restores_them,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("two", two_steps()).await;
        let old = finished(&app, &template, big_input("owl ")).await;
        let only_inline = finished(&app, &template, json!({"small": "tiny"})).await;
        let cut_off = cut_off_now().await;
        // A newer run with the same body as `old`: the blob is shared.
        let newer = finished(&app, &template, big_input("owl ")).await;
        let old_events = app.events(&old).await;
        assert_eq!(scalar(&app.storage, "SELECT count(*) FROM blobs").await, 2);

        let file = app.storage.data_dir.join("purged.jsonl");
        let path = file.display().to_string();
        let dry = app
            .cli(&["purge", "--finished-before", &cut_off, "--dry-run"])
            .await;
        let (stdout, stderr) = text(&dry);
        assert!(dry.status.success(), "{stderr}");
        assert!(stdout.contains("2 runs created before"), "{stdout}");
        assert_eq!(
            app.events(&old).await,
            old_events,
            "a dry run purges nothing"
        );

        let out = app
            .cli(&["purge", "--finished-before", &cut_off, "--export", &path])
            .await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stderr.contains("exported 2 runs"), "{stderr}");
        assert!(
            stdout.contains("purged 2 runs (2 artifact versions"),
            "{stdout}"
        );
        assert!(stdout.contains("0 skipped"), "{stdout}");
        assert!(
            stdout.contains("0 blobs deleted"),
            "both bodies are the newer run's too: {stdout}"
        );

        // The log kept every event and gained one.
        let events = app.events(&old).await;
        assert_eq!(events.len(), old_events.len() + 1);
        assert_eq!(events[..old_events.len()], old_events[..]);
        let purged = events.last().expect("an event");
        assert_eq!(purged["event_type"], "ArtifactsPurged", "{purged}");
        let versions = purged["payload"]["versions"].as_array().expect("versions");
        assert_eq!(versions.len(), 2, "{purged}");
        assert!(versions
            .iter()
            .all(|v| v["sha256"].as_str().map(str::len) == Some(64)));
        assert_eq!(
            count_events(&app.events(&only_inline).await, "ArtifactsPurged", None),
            1
        );
        assert_eq!(
            count_events(&app.events(&newer).await, "ArtifactsPurged", None),
            0
        );

        // Reads: the purged versions say so; inline bodies stay; the newer
        // run reads whole.
        let detail = app.run(&old).await;
        assert_eq!(detail["purged"]["versions"], 2, "{detail}");
        assert_eq!(detail["status"], "completed");
        let (status, artifact) = app.get(&format!("/api/runs/{old}/artifacts/a.big")).await;
        assert_eq!(status, 200, "{artifact}");
        let version = &artifact["versions"][0];
        assert_eq!(version["purged"], true, "{artifact}");
        assert_eq!(version["content"], Value::Null);
        assert_eq!(version["size"].as_u64(), Some(20_000 + 2), "{artifact}");
        let (status, small) = app.get(&format!("/api/runs/{old}/artifacts/a.small")).await;
        assert_eq!(status, 200);
        assert_eq!(small["versions"][0]["content"], "tiny");
        assert!(small["versions"][0].get("purged").is_none(), "{small}");
        let (status, newer_big) = app.get(&format!("/api/runs/{newer}/artifacts/a.big")).await;
        assert_eq!(status, 200);
        assert_eq!(
            newer_big["versions"][0]["content"],
            big_input("owl ")["big"]
        );
        assert!(app.run(&newer).await.get("purged").is_none());

        // A purged run never runs again; nothing changes.
        assert_refused(
            &app,
            &old,
            app.post(&format!("/api/runs/{old}/steps/a/retry"), json!({})),
            409,
            "run_purged",
        )
        .await;
        assert_refused(
            &app,
            &old,
            app.post(
                &format!("/api/runs/{old}/artifacts/a.big/rollback"),
                json!({"to_version": 1}),
            ),
            409,
            "run_purged",
        )
        .await;

        // An export of everything now: the newer run's bodies are in it,
        // though the purged run shares them; it imports whole.
        let all = app.storage.data_dir.join("all.jsonl");
        let all_path = all.display().to_string();
        let out = app.cli(&["export", "--all", "--output", &all_path]).await;
        assert!(out.status.success(), "{}", text(&out).1);
        assert!(text(&out).1.contains("exported 3 runs"), "{}", text(&out).1);
        let third = Storage::new(backend).await.expect("storage");
        let imported = third.cli(&["import", &all_path]).await;
        assert!(imported.status.success(), "{}", text(&imported).1);
        drop(third);

        // Again: nothing left to purge before that time.
        let again = app.cli(&["purge", "--finished-before", &cut_off]).await;
        let (stdout, stderr) = text(&again);
        assert!(again.status.success(), "{stderr}");
        assert!(stdout.contains("nothing to purge"), "{stdout}");

        // Purging the newer run too frees the shared bodies.
        let later = cut_off_now().await;
        let out = app.cli(&["purge", "--finished-before", &later]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("purged 1 runs"), "{stdout}");
        assert!(stdout.contains("2 blobs deleted"), "{stdout}");
        assert_eq!(scalar(&app.storage, "SELECT count(*) FROM blobs").await, 0);
        assert_eq!(
            scalar(&app.storage, "SELECT count(*) FROM blob_refs").await,
            0
        );

        // The log of every run still verifies, and exports (the bodies
        // stay purged in it).
        let verify = app.cli(&["replay", "--verify", "--all"]).await;
        assert!(verify.status.success(), "{}", text(&verify).1);
        let (status, _) = app.get(&format!("/api/runs/{old}/export")).await;
        assert_eq!(status, 200);

        // The export taken before the purge restores the bodies elsewhere.
        let elsewhere = Storage::new(backend).await.expect("storage");
        let imported = elsewhere.cli(&["import", &path]).await;
        assert!(imported.status.success(), "{}", text(&imported).1);
        let restored = spawn_app_on(elsewhere).await;
        let detail = restored.run(&old).await;
        assert!(detail.get("purged").is_none(), "{detail}");
        let (status, artifact) = restored
            .get(&format!("/api/runs/{old}/artifacts/a.big"))
            .await;
        assert_eq!(status, 200);
        assert_eq!(artifact["versions"][0]["content"], big_input("owl ")["big"]);
    }
);

on_both_backends!(
    an_export_of_a_purged_run_imports_and_reads_as_purged,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("two", two_steps()).await;
        let run = finished(&app, &template, big_input("fox ")).await;
        let cut_off = cut_off_now().await;
        let (status, body) = app
            .post(
                &format!("/api/runs/{run}/purge"),
                json!({"finished_before": cut_off}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["recorded"], true);
        assert_eq!(body["blobs"]["deleted"], 2, "{body}");
        assert_eq!(body["purged"]["versions"], 2);
        // Idempotent: nothing recorded, nothing left to free.
        let (status, again) = app
            .post(
                &format!("/api/runs/{run}/purge"),
                json!({"finished_before": cut_off}),
            )
            .await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["recorded"], false);
        assert_eq!(again["blobs"]["deleted"], 0);
        assert_eq!(
            count_events(&app.events(&run).await, "ArtifactsPurged", None),
            1
        );

        // A purge cut short after its event (or a late result stored for
        // the purged run) leaves a body and an owed release: the next
        // `runlog purge` finishes it.
        {
            let db =
                runlog::db::Db::connect(app.storage.database_url.as_deref(), &app.storage.data_dir)
                    .await
                    .expect("connect");
            let blobs = runlog::store::BlobStore::new(db.clone());
            blobs.put(&run, &[b'q'; 9_000]).await.expect("a late body");
            blobs.owe_release(&run, 1).await.expect("owed");
            db.close().await;
        }
        let out = app.cli(&["purge", "--finished-before", &cut_off]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stdout.contains("purged 0 runs") && stdout.contains("1 were purged already"),
            "{stdout}"
        );
        assert!(
            stdout.contains("1 blobs deleted, 9000 bytes freed"),
            "{stdout}"
        );
        assert_eq!(scalar(&app.storage, "SELECT count(*) FROM blobs").await, 0);
        assert_eq!(
            scalar(&app.storage, "SELECT count(*) FROM blob_releases").await,
            0
        );
        assert_eq!(
            count_events(&app.events(&run).await, "ArtifactsPurged", None),
            1
        );

        let file = app.storage.data_dir.join("after.jsonl");
        let path = file.display().to_string();
        let out = app.cli(&["export", &run, "--output", &path]).await;
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("0 blobs"),
            "purged bodies stay out: {stderr}"
        );
        let elsewhere = Storage::new(backend).await.expect("storage");
        let imported = elsewhere.cli(&["import", &path]).await;
        assert!(imported.status.success(), "{}", text(&imported).1);
        let restored = spawn_app_on(elsewhere).await;
        let (status, artifact) = restored
            .get(&format!("/api/runs/{run}/artifacts/b.a"))
            .await;
        assert_eq!(status, 200, "{artifact}");
        assert_eq!(artifact["versions"][0]["purged"], true, "{artifact}");
    }
);

on_both_backends!(
    a_bad_purge_is_refused_with_a_clear_error_and_no_change,
    |backend| {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let template = app.template_id("two", two_steps()).await;
        let done = finished(&app, &template, big_input("elk ")).await;
        let cut_off = cut_off_now().await;
        // Manual mode: the run waits for a trigger, unfinished.
        let waiting = app.manual_run_id(&template, json!({})).await;
        let purge = |run: &str, body: Value| {
            let path = format!("/api/runs/{run}/purge");
            let app = &app;
            async move { app.post(&path, body).await }
        };

        for (body, code) in [
            (json!({}), "invalid_body"),
            (json!({"finished_before": 5}), "invalid_body"),
            (
                json!({"finished_before": cut_off, "extra": true}),
                "invalid_body",
            ),
            (
                json!({"finished_before": "last week"}),
                "invalid_finished_before",
            ),
        ] {
            assert_refused(&app, &done, purge(&done, body), 400, code).await;
        }
        assert_refused(
            &app,
            &waiting,
            purge(&waiting, json!({"finished_before": cut_off})),
            409,
            "run_not_finished",
        )
        .await;
        assert_refused(
            &app,
            &done,
            purge(&done, json!({"finished_before": "2020-01-01T00:00:00Z"})),
            409,
            "run_finished_later",
        )
        .await;
        expect_error(
            &purge(
                "0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10",
                json!({"finished_before": cut_off}),
            )
            .await,
            404,
            "run_not_found",
        );
        expect_error(
            &purge("not%20an%20id", json!({"finished_before": cut_off})).await,
            400,
            "invalid_run_id",
        );
        assert!(app.run(&done).await.get("purged").is_none());

        // The command line: an export file that exists, a server that cannot
        // be reached, a cut-off that is not a time, and no server.
        let existing = app.storage.data_dir.join("exists.jsonl");
        std::fs::write(&existing, "keep me").expect("write");
        let out = app
            .cli(&[
                "purge",
                "--finished-before",
                &cut_off,
                "--export",
                &existing.display().to_string(),
            ])
            .await;
        assert_eq!(out.status.code(), Some(1), "{}", text(&out).1);
        assert!(
            text(&out).1.contains("is never overwritten"),
            "{}",
            text(&out).1
        );
        assert_eq!(std::fs::read_to_string(&existing).expect("read"), "keep me");
        let out = app
            .cli(&[
                "purge",
                "--finished-before",
                &cut_off,
                "--server",
                "http://127.0.0.1:9",
            ])
            .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
        assert!(stderr.contains("cannot reach the server"), "{stderr}");
        assert!(app.run(&done).await.get("purged").is_none());

        let out = app.cli(&["purge", "--finished-before", "sometime"]).await;
        assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
        assert!(text(&out).1.contains("is not a time"), "{}", text(&out).1);
        let storage = app.stop_keeping_storage().await;
        let out = storage.cli(&["purge", "--finished-before", &cut_off]).await;
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("no runlog serve is running on this database"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing purged"), "{stderr}");
    }
);
