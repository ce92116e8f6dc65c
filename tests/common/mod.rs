//! Shared test harness: isolated databases on both backends and a real
//! server on a random port.
//!
//! - SQLite: a fresh data directory per test (removed on drop).
//! - PostgreSQL: a fresh database per test, created from
//!   `RUNLOG_TEST_DATABASE_URL`. Without that variable Postgres tests are
//!   skipped with a notice, except under `CI=true`, where they fail.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// An isolated place to keep data: a temp directory and, for Postgres, a
/// fresh database.
pub struct Storage {
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        if let Some(url) = self.database_url.take() {
            drop_postgres_database(url);
        }
    }
}

/// Drops a test database (terminating the connections a stopping server may
/// still hold), on a thread of its own since `Drop` cannot await.
fn drop_postgres_database(url: String) {
    let Ok(base) = std::env::var("RUNLOG_TEST_DATABASE_URL") else {
        return;
    };
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_string())
    else {
        return;
    };
    if !name.starts_with("runlog_test_") {
        return;
    }
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let options: PgConnectOptions = base.parse().ok()?;
            let mut conn = options.connect().await.ok()?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await
                .ok()
        })
    })
    .join();
}

impl Storage {
    /// Fresh storage on `backend`, or `None` (after printing why) when the
    /// Postgres tests are to be skipped.
    pub async fn new(backend: Backend) -> Option<Self> {
        let data_dir =
            std::env::temp_dir().join(format!("runlog-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir).expect("create temp data dir");
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_database().await?),
        };
        Some(Self {
            backend,
            data_dir,
            database_url,
        })
    }

    /// Runs the real `runlog` binary with `args` followed by this storage's
    /// flags, off the async runtime.
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend(self.cli_args());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_runlog"))
                .args(&args)
                .env("RUST_LOG", "warn")
                .output()
                .expect("the runlog binary runs")
        })
        .await
        .expect("the blocking task completes")
    }

    /// CLI flags selecting this storage.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec![
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".to_string(), url.clone()]);
        }
        args
    }
}

/// Creates `runlog_test_<random>` on the server of RUNLOG_TEST_DATABASE_URL
/// and returns its URL; `None` when the variable is unset outside CI.
pub async fn fresh_postgres_database() -> Option<String> {
    let base = match std::env::var("RUNLOG_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but RUNLOG_TEST_DATABASE_URL is not set: the PostgreSQL tests must run in CI");
            }
            // Written to the stderr handle itself: libtest captures
            // `eprintln!` of passing tests, and this notice must be seen.
            static NOTICE: std::sync::Once = std::sync::Once::new();
            NOTICE.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "notice: RUNLOG_TEST_DATABASE_URL is not set; the PostgreSQL variants of \
                     this binary's tests are skipped (set it, e.g. to \
                     postgres://postgres@127.0.0.1:5432/test, to run them)"
                );
            });
            return None;
        }
    };
    let options: PgConnectOptions = base
        .parse()
        .expect("RUNLOG_TEST_DATABASE_URL is a postgres URL");
    let name = format!("runlog_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = options
        .connect()
        .await
        .expect("connect to RUNLOG_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let url = options.database(&name).to_url_lossy().to_string();
    Some(url)
}

/// Runs `$body` (an async block using `backend`) once per backend, as two
/// tests named `<name>_on_sqlite` and `<name>_on_postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            #[actix_web::test]
            async fn on_sqlite() {
                let $backend = $crate::common::Backend::Sqlite;
                $body
            }
            #[actix_web::test]
            async fn on_postgres() {
                let $backend = $crate::common::Backend::Postgres;
                $body
            }
        }
    };
}

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    /// A client that sends the first admin's token (none under
    /// `--no-auth`).
    pub client: awc::Client,
    /// A client that sends no token of its own.
    pub bare: awc::Client,
    /// The first admin's token, from `<data dir>/admin.token`.
    pub admin_token: Option<String>,
    pub storage: Storage,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Resolves once the server has stopped (released the database, left
    /// the other nodes).
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the real application on port 0 with fresh storage; `None` when
/// the backend's tests are skipped.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    let storage = Storage::new(backend).await?;
    Some(spawn_app_on(storage).await)
}

/// Starts the real application on existing storage.
pub async fn spawn_app_on(storage: Storage) -> TestApp {
    spawn_app_with(storage, AppOptions::default()).await
}

/// How a test's application is set up beyond fresh storage.
#[derive(Default, Clone)]
pub struct AppOptions {
    /// A clock the test moves by hand (default: the wall clock).
    pub clock: Option<runlog::engine::ManualClock>,
    /// The text of a configuration file (`serve --config`).
    pub config: Option<String>,
    /// `serve --no-auth`.
    pub no_auth: bool,
    /// `serve --allowed-origins`.
    pub allowed_origins: Option<String>,
}

/// Starts the real application with fresh storage and a clock that moves
/// only when the test advances it; `None` when the backend's tests are
/// skipped.
pub async fn spawn_app_with_clock(
    backend: Backend,
    clock: runlog::engine::ManualClock,
) -> Option<TestApp> {
    spawn_app_with_options(
        backend,
        AppOptions {
            clock: Some(clock),
            ..AppOptions::default()
        },
    )
    .await
}

/// Starts the real application with fresh storage and `options`.
pub async fn spawn_app_with_options(backend: Backend, options: AppOptions) -> Option<TestApp> {
    let storage = Storage::new(backend).await?;
    Some(spawn_app_with(storage, options).await)
}

/// Starts the real application on existing storage with `options`.
pub async fn spawn_app_with(storage: Storage, options: AppOptions) -> TestApp {
    let mut settings = runlog::config::ServeSettings::ephemeral(
        storage.data_dir.clone(),
        storage.database_url.clone(),
    );
    if let Some(text) = &options.config {
        let path = storage.data_dir.join("runlog.toml");
        std::fs::write(&path, text).expect("write the configuration file");
        settings.config = Some(path);
    }
    settings.no_auth = options.no_auth;
    if let Some(origins) = &options.allowed_origins {
        settings.allowed_origins = origins.clone();
    }
    let clock: runlog::engine::SharedClock = match options.clock {
        Some(clock) => Arc::new(clock),
        None => Arc::new(runlog::engine::SystemClock),
    };
    let app = runlog::app::Application::build_with_clock(settings, clock)
        .await
        .expect("application builds");
    let port = app.port();
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    let (done, stopped) = tokio::sync::oneshot::channel::<()>();
    actix_web::rt::spawn(async move {
        let _ = app
            .run_until_stopped(async move {
                let _ = stopping.await;
            })
            .await;
        let _ = done.send(());
    });
    let admin_token = if options.no_auth {
        None
    } else {
        Some(admin_token_of(&storage))
    };
    let mut client = awc::Client::builder().timeout(Duration::from_secs(30));
    if let Some(token) = &admin_token {
        client = client.add_default_header(("authorization", format!("Bearer {token}")));
    }
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: client.finish(),
        bare: awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish(),
        admin_token,
        storage,
        stop: Some(stop),
        stopped: Some(stopped),
    }
}

/// The first admin's token that `serve` wrote to the data directory.
pub fn admin_token_of(storage: &Storage) -> String {
    let path = storage.data_dir.join("admin.token");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the first start writes {}: {e}", path.display()));
    text.trim().to_string()
}

/// A status and a JSON body.
pub type Reply = (u16, Value);

impl TestApp {
    /// Runs the real `runlog` binary with `args` followed by the flags of
    /// this app's storage, off the async runtime (the server keeps serving
    /// meanwhile).
    pub async fn cli(&self, args: &[&str]) -> std::process::Output {
        self.storage.cli(args).await
    }

    /// Stops the server and hands back its storage (for a restart).
    pub async fn stop_keeping_storage(mut self) -> Storage {
        let placeholder = Storage {
            backend: self.storage.backend,
            data_dir: std::env::temp_dir()
                .join(format!("runlog-test-{}", uuid::Uuid::new_v4().simple())),
            database_url: None,
        };
        let storage = std::mem::replace(&mut self.storage, placeholder);
        let stopped = self.stopped.take();
        drop(self);
        if let Some(stopped) = stopped {
            if tokio::time::timeout(Duration::from_secs(60), stopped)
                .await
                .is_err()
            {
                eprintln!(
                    "notice: the server had not stopped 60 s after it was asked to; the test \
                     goes on with its storage"
                );
            }
        }
        storage
    }

    /// Any request with an optional JSON body.
    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.request_with_headers(method, path, body, &[])
            .await
            .reply()
    }

    /// Any request with an optional JSON body and extra headers (the
    /// admin's token unless they give an `Authorization` of their own); the
    /// reply keeps the response headers.
    pub async fn request_with_headers(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let own = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
        let client = if own { &self.bare } else { &self.client };
        self.send(client, method, path, body, headers).await
    }

    /// A request without any token.
    pub async fn request_anonymous(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Response {
        self.send(&self.bare, method, path, body, &[]).await
    }

    /// A request with `token` (none: no `Authorization`).
    pub async fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        match token {
            Some(token) => {
                let auth = format!("Bearer {token}");
                self.request_with_headers(method, path, body, &[("Authorization", &auth)])
                    .await
                    .reply()
            }
            None => self.request_anonymous(method, path, body).await.reply(),
        }
    }

    async fn send(
        &self,
        client: &awc::Client,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let url = format!("{}{path}", self.address);
        let mut request = client
            .request(method.parse().expect("method"), url)
            .insert_header(("content-type", "application/json"));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let mut response = match body {
            Some(body) => request.send_body(body.to_string()).await,
            None => request.send().await,
        }
        .expect("request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.body().limit(64 * 1024 * 1024).await.expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Response {
            status,
            body,
            headers,
        }
    }

    /// Raw body POST (for malformed JSON).
    pub async fn post_raw(&self, path: &str, body: &'static str) -> Reply {
        let mut response = self
            .client
            .post(format!("{}{path}", self.address))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .expect("request reaches the server");
        let status = response.status().as_u16();
        let bytes = response.body().await.expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request("POST", path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request("PUT", path, Some(body)).await
    }

    pub async fn create_template(&self, name: &str, definition: Value) -> Reply {
        self.post(
            "/api/templates",
            json!({"name": name, "definition": definition}),
        )
        .await
    }

    /// Creates a template and returns its id (panics on refusal).
    pub async fn template_id(&self, name: &str, definition: Value) -> String {
        let (status, body) = self.create_template(name, definition).await;
        assert_eq!(status, 201, "template refused: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn start_run(&self, template_id: &str, input: Value) -> Reply {
        self.post(
            "/api/runs",
            json!({"template_id": template_id, "input": input}),
        )
        .await
    }

    /// Starts a run and returns its id (panics on refusal).
    pub async fn run_id(&self, template_id: &str, input: Value) -> String {
        let (status, body) = self.start_run(template_id, input).await;
        assert_eq!(status, 201, "run refused: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    /// Starts a run in manual mode (`auto_run: false`): nothing moves until
    /// a trigger, so every later event is the test's doing.
    pub async fn manual_run_id(&self, template_id: &str, input: Value) -> String {
        let (status, body) = self
            .post(
                "/api/runs",
                json!({"template_id": template_id, "input": input, "auto_run": false}),
            )
            .await;
        assert_eq!(status, 201, "run refused: {body}");
        body["id"].as_str().expect("id").to_string()
    }

    pub async fn run(&self, run_id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/runs/{run_id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Polls the run until its status is completed or failed.
    pub async fn wait_finished(&self, run_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(run_id).await;
            if matches!(run["status"].as_str(), Some("completed" | "failed")) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id} did not finish in {timeout:?}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every event of a run, in order.
    pub async fn events(&self, run_id: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/api/runs/{run_id}/events")).await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().expect("items").clone()
    }

    /// Every event of a run except the thread's (see [`without_thread`]):
    /// the story of the run and its steps, in order.
    pub async fn events_without_thread(&self, run_id: &str) -> Vec<Value> {
        without_thread(&self.events(run_id).await)
    }

    /// `POST /api/runs/{id}/messages` with `body`.
    pub async fn post_message(&self, run_id: &str, body: Value) -> Reply {
        self.post(&format!("/api/runs/{run_id}/messages"), body)
            .await
    }

    /// `POST /api/runs/{id}/messages` with `body` under an `Idempotency-Key`.
    pub async fn post_message_with_key(&self, run_id: &str, body: Value, key: &str) -> Reply {
        self.request_with_headers(
            "POST",
            &format!("/api/runs/{run_id}/messages"),
            Some(body),
            &[("Idempotency-Key", key)],
        )
        .await
        .reply()
    }

    /// The whole thread of a run (every page of `GET …/messages`), in order.
    pub async fn messages(&self, run_id: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                None => format!("/api/runs/{run_id}/messages?limit=500"),
                Some(c) => format!("/api/runs/{run_id}/messages?limit=500&cursor={c}"),
            };
            let (status, page) = self.get(&path).await;
            assert_eq!(status, 200, "{page}");
            all.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_string()),
                None => return all,
            }
        }
    }

    /// Polls the run's detail until `done` holds (panics after `timeout`).
    pub async fn wait_run(
        &self,
        run_id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.run(run_id).await;
            if done(&run) {
                return run;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id}: timed out after {timeout:?} waiting until {what}: {run}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls the run's thread until `done` holds (panics after `timeout`).
    pub async fn wait_messages(
        &self,
        run_id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages(run_id).await;
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "run {run_id}: timed out after {timeout:?} waiting until {what}: {messages:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A count of how many rows the read models and the log hold, to show
    /// that a refused request changed nothing.
    pub async fn counts(&self) -> (usize, usize) {
        let (_, templates) = self.get("/api/templates?limit=500").await;
        let (_, runs) = self.get("/api/runs?limit=500").await;
        (
            templates["items"].as_array().map_or(0, Vec::len),
            runs["items"].as_array().map_or(0, Vec::len),
        )
    }
}

/// A response with its headers.
pub struct Response {
    pub status: u16,
    pub body: Value,
    pub headers: awc::http::header::HeaderMap,
}

impl Response {
    /// The status and body.
    pub fn reply(self) -> Reply {
        (self.status, self.body)
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The event types of the conversation thread. Built-in agents post
/// comments while their steps run, so these events interleave with step
/// events in an order that varies from run to run.
pub const THREAD_EVENTS: [&str; 2] = ["MessagePosted", "MessageStatusChanged"];

/// Whether `event` belongs to the conversation thread.
pub fn is_thread_event(event: &Value) -> bool {
    THREAD_EVENTS.iter().any(|t| event["event_type"] == *t)
}

/// `events` without the thread's: what a test that asserts the story of a
/// run and its steps (exact sequences, "the last event is …") looks at.
pub fn without_thread(events: &[Value]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| !is_thread_event(e))
        .cloned()
        .collect()
}

/// Asserts `reply` is the error `{"error": {"code", "message"}}` with this
/// status and code; returns the message.
pub fn expect_error(reply: &Reply, status: u16, code: &str) -> String {
    let (got, body) = reply;
    assert_eq!(*got, status, "expected {status} {code}, got {got}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("error without a message: {body}"));
    assert!(!message.is_empty(), "{body}");
    message.to_string()
}

/// `prefix` and a number no other call in this test binary got: a name
/// for a template that a test creates more than once (names are unique
/// among live templates).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n}")
}

/// The diamond A → {B, C} → D with echo agents; `delay_ms` on every step.
pub fn diamond(delay_ms: u64) -> Value {
    let config = json!({"delay_ms": delay_ms});
    json!({"steps": {
        "a": {"agent": "echo", "config": config},
        "b": {"agent": "echo", "depends_on": ["a"], "config": config},
        "c": {"agent": "echo", "depends_on": ["a"], "config": config},
        "d": {"agent": "echo", "depends_on": ["b", "c"], "config": config}
    }})
}

/// The event types of `events`, in order.
pub fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event_type"].as_str().expect("event_type"))
        .collect()
}

/// Whether `event` is of `event_type` (and about `step`, if given).
pub fn is_event(event: &Value, event_type: &str, step: Option<&str>) -> bool {
    event["event_type"] == event_type && step.is_none_or(|s| event["payload"]["step"] == s)
}

/// The index of the only event of `event_type` (about `step`).
pub fn only_event(events: &[Value], event_type: &str, step: Option<&str>) -> usize {
    let found: Vec<usize> = (0..events.len())
        .filter(|&i| is_event(&events[i], event_type, step))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {event_type} {step:?}: {:?}",
        types(events)
    );
    found[0]
}

/// How many events are of `event_type` (about `step`).
pub fn count_events(events: &[Value], event_type: &str, step: Option<&str>) -> usize {
    events
        .iter()
        .filter(|e| is_event(e, event_type, step))
        .count()
}

/// Sends `request`, checks it is refused with `status` and `code`, and that
/// neither `run`'s log nor the number of templates and runs changed.
pub async fn assert_refused(
    app: &TestApp,
    run: &str,
    request: impl std::future::Future<Output = Reply>,
    status: u16,
    code: &str,
) {
    let before = app.events(run).await;
    let counts = app.counts().await;
    let reply = request.await;
    expect_error(&reply, status, code);
    let after = app.events(run).await;
    assert_eq!(
        after.len(),
        before.len(),
        "a refused request ({code}) recorded events: {:?}",
        types(&after[before.len().min(after.len())..])
    );
    assert_eq!(after, before, "a refused request ({code}) changed the log");
    assert_eq!(
        app.counts().await,
        counts,
        "a refused request ({code}) created a template or a run"
    );
}
