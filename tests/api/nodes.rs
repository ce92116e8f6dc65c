//! Many nodes on one PostgreSQL, seen by clients: `GET /api/admin/nodes`,
//! a command sent to a node that does not host the run (forwarded to the
//! one that does, with the same answer), a WebSocket on one node following
//! a run another node hosts, the nodes' internal claim endpoint, a purge
//! through either node, and a bad `--node-id`. (Three real processes with a node killed are in
//! `tests/crash.rs`.)

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{
    spawn_app, spawn_app_with, spawn_app_with_options, AppOptions, Backend, Storage, TestApp,
};
use crate::on_both_backends;
use crate::ws::{connect, recv, send};

/// One slow step, so that the run stays on its host while the test steers
/// it.
fn slow() -> Value {
    json!({"steps": {
        "a": {"agent": "echo", "config": {"delay_ms": 3000}},
        "b": {"agent": "echo", "depends_on": ["a"]}
    }})
}

/// A second server on the first one's PostgreSQL database (`None` on
/// SQLite, which serves one process). Its storage must not drop the
/// database: see [`drop_beside`].
async fn beside(first: &TestApp, options: AppOptions) -> Option<TestApp> {
    let url = first.storage.database_url.clone()?;
    let storage = Storage {
        backend: Backend::Postgres,
        data_dir: std::env::temp_dir()
            .join(format!("runlog-test-{}", uuid::Uuid::new_v4().simple())),
        database_url: Some(url),
    };
    std::fs::create_dir_all(&storage.data_dir).expect("data dir");
    // The first node created the admin; this one reads its token too.
    std::fs::copy(
        first.storage.data_dir.join("admin.token"),
        storage.data_dir.join("admin.token"),
    )
    .expect("the first node's admin token");
    Some(spawn_app_with(storage, options).await)
}

/// Drops a server started by [`beside`] without dropping the database the
/// first one owns.
fn drop_beside(mut app: TestApp) {
    app.storage.database_url = None;
    drop(app);
}

/// The node that answered, from `GET /api/admin/nodes`.
async fn this_node(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/admin/nodes").await;
    assert_eq!(status, 200, "{body}");
    body["items"]
        .as_array()
        .and_then(|items| items.iter().find(|n| n["this_node"] == true).cloned())
        .unwrap_or_else(|| panic!("no item is this node: {body}"))
}

on_both_backends!(the_nodes_endpoint_lists_the_node_that_answers, |backend| {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let template = app.template_id("slow", slow()).await;
    let run = app.run_id(&template, json!({})).await;
    let (status, body) = app.get("/api/admin/nodes").await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{body}");
    let node = &items[0];
    assert_eq!(node["this_node"], true, "{body}");
    assert_eq!(node["alive"], true, "{body}");
    assert_eq!(node["address"], app.address.as_str(), "{body}");
    assert!(
        node["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("node-")),
        "{body}"
    );
    assert!(
        node["heartbeat_at"].is_string() && node["started_at"].is_string(),
        "{body}"
    );
    assert_eq!(node["hosted_runs"], 1, "the running run: {body}");
    if backend == Backend::Postgres {
        assert_eq!(node["runs"], json!([run]), "{body}");
    }
});

#[actix_web::test]
async fn a_command_sent_to_another_node_is_forwarded_to_the_host_and_answered_the_same() {
    let Some(first) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let second = beside(&first, AppOptions::default())
        .await
        .expect("a PostgreSQL database");
    let host = this_node(&first).await;
    let other = this_node(&second).await;
    assert_ne!(host["id"], other["id"]);
    let (_, listed) = second.get("/api/admin/nodes").await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );

    let template = first.template_id("slow", slow()).await;
    let run = first.run_id(&template, json!({})).await;
    let node = this_node(&first).await;
    assert_eq!(
        node["runs"],
        json!([run]),
        "the node that started it hosts it"
    );

    // Pausing through the other node: forwarded, answered as the host
    // answers.
    let (status, paused) = second
        .post(&format!("/api/runs/{run}/pause"), json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["id"], run.as_str(), "{paused}");
    assert!(
        paused["pause_requested"] == true || paused["status"] == "paused",
        "{paused}"
    );
    let events = first.events(&run).await;
    let requested = events
        .iter()
        .find(|e| e["event_type"] == "PauseRequested")
        .unwrap_or_else(|| panic!("no PauseRequested: {events:?}"));
    assert_eq!(
        requested["metadata"]["node"], host["id"],
        "recorded by the host"
    );

    // A refusal comes back as the host gives it, and changes nothing.
    let before = first.events(&run).await.len();
    let approve = format!("/api/runs/{run}/steps/a/approve");
    let (status, refused) = second.post(&approve, json!({})).await;
    let (host_status, host_refused) = first.post(&approve, json!({})).await;
    assert_eq!((status, &refused), (host_status, &host_refused));
    assert_eq!(status, 409, "{refused}");
    // (The run goes on meanwhile: its agent comments; nothing approves.)
    let after = first.events(&run).await;
    assert!(
        after[before..]
            .iter()
            .all(|e| e["event_type"] != "StepApproved"),
        "{:?}",
        &after[before..]
    );

    // Resumed through the other node, the run finishes; its events were
    // all written by the host.
    let (status, resumed) = second
        .post(&format!("/api/runs/{run}/resume"), json!({}))
        .await;
    assert_eq!(status, 200, "{resumed}");
    let detail = second.wait_finished(&run, Duration::from_secs(30)).await;
    assert_eq!(detail["status"], "completed", "{detail}");
    for event in first.events(&run).await {
        assert_eq!(event["metadata"]["node"], host["id"], "{event}");
    }

    // Retention through either node: recorded once, by whichever node
    // hosts the run then.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cut_off = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let purge = format!("/api/runs/{run}/purge");
    let (status, purged) = second
        .post(&purge, json!({"finished_before": cut_off}))
        .await;
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["recorded"], true, "{purged}");
    let (status, again) = first
        .post(&purge, json!({"finished_before": cut_off}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["recorded"], false, "{again}");
    let events = second.events(&run).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event_type"] == "ArtifactsPurged")
            .count(),
        1,
        "{events:?}"
    );
    drop_beside(second);
}

#[actix_web::test]
async fn a_websocket_on_one_node_follows_a_run_another_node_hosts() {
    let Some(first) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let second = beside(&first, AppOptions::default())
        .await
        .expect("a PostgreSQL database");
    let template = first
        .template_id(
            "diamond",
            json!({"steps": {
                "a": {"agent": "echo", "config": {"delay_ms": 300}},
                "b": {"agent": "echo", "depends_on": ["a"]},
                "c": {"agent": "echo", "depends_on": ["a"]},
                "d": {"agent": "echo", "depends_on": ["b", "c"]}
            }}),
        )
        .await;
    // The other node's log tail starts when it sees the first: give its
    // heartbeat a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut ws = connect(&second).await;
    let run = first.run_id(&template, json!({})).await;
    send(&mut ws, json!({"type": "subscribe", "run_id": run})).await;
    let mut sequences = Vec::new();
    loop {
        let message = recv(&mut ws).await;
        match message["type"].as_str() {
            Some("event") => {
                sequences.push(message["sequence"].as_i64().expect("sequence"));
                if message["event_type"] == "RunCompleted" {
                    break;
                }
            }
            Some("subscribed") => {}
            other => panic!("unexpected {other:?}: {message}"),
        }
    }
    // Live from the subscription on (no `after`): in order, no gap, no
    // duplicate, up to the run's completion as the log has it.
    let all = first.events(&run).await;
    let completed = all
        .iter()
        .find(|e| e["event_type"] == "RunCompleted")
        .and_then(|e| e["sequence"].as_i64())
        .expect("RunCompleted in the log");
    let first_seen = sequences[0];
    let expected: Vec<i64> = (first_seen..=completed).collect();
    assert_eq!(sequences, expected);
    drop(ws);
    drop_beside(second);
}

on_both_backends!(
    the_nodes_internal_claim_endpoint_takes_only_the_worker_token,
    |backend| {
        let config = "worker_token = \"nodes-test-token-0123456789\"\n\n[agents.render]\ndescription = \"Renders\"\n";
        let Some(app) = spawn_app_with_options(
            backend,
            AppOptions {
                config: Some(config.into()),
                ..AppOptions::default()
            },
        )
        .await
        else {
            return;
        };
        let template = app
            .template_id("remote", json!({"steps": {"a": {"agent": "render"}}}))
            .await;
        let run = app.run_id(&template, json!({})).await;
        let path = format!("/api/internal/runs/{run}/claims");
        let body = json!({"step": "a", "lease_token": "not-the-lease", "worker_id": "w"});
        let before = app.events(&run).await.len();
        let (status, reply) = app
            .request_as(None, "POST", &path, Some(body.clone()))
            .await;
        assert_eq!(status, 401, "{reply}");
        assert_eq!(reply["error"]["code"], "missing_token", "{reply}");
        let auth = [("Authorization", "Bearer nodes-test-token-0123456789")];
        let reply = app
            .request_with_headers("POST", &path, Some(json!({"step": "a"})), &auth)
            .await
            .reply();
        assert_eq!(reply.0, 400, "{:?}", reply.1);
        assert_eq!(reply.1["error"]["code"], "invalid_body", "{:?}", reply.1);
        // A lease the step does not hold records nothing.
        let reply = app
            .request_with_headers("POST", &path, Some(body), &auth)
            .await
            .reply();
        assert_eq!(reply.0, 200, "{:?}", reply.1);
        assert_eq!(reply.1, json!({"stale": true}));
        assert_eq!(app.events(&run).await.len(), before);
    }
);

#[actix_web::test]
async fn serve_refuses_a_node_id_it_cannot_use() {
    let Some(storage) = Storage::new(Backend::Sqlite).await else {
        return;
    };
    let output = storage
        .cli(&["serve", "--bind", "127.0.0.1:0", "--node-id", "two words"])
        .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid node id 'two words'"), "{stderr}");
}
