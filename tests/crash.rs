//! Crash recovery, end to end, with the real `runlog serve` process, on
//! SQLite and on PostgreSQL:
//! - killed with SIGKILL while runs are in flight and restarted on the same
//!   storage, every run must complete with each step completed exactly once
//!   and a gap-free log;
//! - a redirect cut off between its two commits (the old run records it,
//!   the new run does not exist) is finished at the next start, once;
//! - killed three times at varying moments while runs write, the read
//!   models end equal to a fold of the log (`replay --verify --all`).
//!
//! And, with the same real process: no token or ticket ever reaches the
//! server's log, whatever is done with them (the CLI's accounts commands
//! included).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Backend, Storage};
use serde_json::{json, Value};

/// Runs started before the kill.
const RUNS: usize = 20;
/// How long one echo step takes.
const STEP_DELAY_MS: u64 = 400;
/// How long the restarted server gets to finish every run.
const FINISH_WITHIN: Duration = Duration::from_secs(60);

/// The diamond a → {b, c} → d followed by the chain d → e → f. Step `b`
/// fails its first attempt and is retried after a back-off.
fn workflow() -> Value {
    let slow = json!({"delay_ms": STEP_DELAY_MS});
    json!({"steps": {
        "a": {"agent": "echo", "config": slow},
        "b": {
            "agent": "echo",
            "depends_on": ["a"],
            "config": {"delay_ms": STEP_DELAY_MS, "fail_times": 1},
            "retry": {"max_attempts": 3, "backoff_ms": 200}
        },
        "c": {"agent": "echo", "depends_on": ["a"], "config": slow},
        "d": {"agent": "echo", "depends_on": ["b", "c"], "config": slow},
        "e": {"agent": "echo", "depends_on": ["d"], "config": slow},
        "f": {"agent": "echo", "depends_on": ["e"], "config": slow}
    }})
}

const STEPS: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

/// A `runlog serve` process. Killed (SIGKILL) when dropped, so that a failed
/// test leaves no server behind; its log is printed if the test panicked.
struct Server {
    child: Child,
    log: PathBuf,
    address: String,
    client: awc::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!(
                "--- last lines of the server log {} ---\n{tail}\n---",
                self.log.display()
            );
        }
    }
}

/// Drops terminal colour sequences (`ESC [ … m`), should the log have any.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The port in the `runlog listening … port=NNNN` line of the log.
fn logged_port(log: &str) -> Option<u16> {
    let log = strip_ansi(log);
    let line = log.lines().find(|l| l.contains("runlog listening"))?;
    let rest = &line[line.find("port=")? + "port=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Server {
    /// Starts `runlog serve` on a free port with `storage`, logging to
    /// `server-<n>.log` in the data directory, and waits until it is healthy.
    async fn start(storage: &Storage, n: usize) -> Self {
        Self::start_with(storage, n, &[]).await
    }

    /// [`Server::start`] with more flags.
    async fn start_with(storage: &Storage, n: usize, extra: &[&str]) -> Self {
        Self::start_logging(storage, n, extra, "info,sqlx=warn").await
    }

    /// [`Server::start_with`], logging at `level` (a `RUNLOG_LOG` filter).
    async fn start_logging(storage: &Storage, n: usize, extra: &[&str], level: &str) -> Self {
        let log = storage.data_dir.join(format!("server-{n}.log"));
        let stderr = File::create(&log).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(storage.cli_args())
            .args(extra)
            .env_remove("RUNLOG_BIND")
            .env_remove("RUNLOG_DATA_DIR")
            .env_remove("RUNLOG_DATABASE_URL")
            .env_remove("RUNLOG_HTTP_WORKERS")
            .env_remove("RUNLOG_PASSIVATE_AFTER_SECS")
            .env_remove("RUNLOG_NODE_ID")
            .env_remove("RUNLOG_ADVERTISE_URL")
            .env_remove("RUNLOG_CONFIG")
            .env_remove("RUNLOG_NO_AUTH")
            .env("RUNLOG_LOG", level)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn runlog serve");
        // The guard exists from here on: any panic below kills the process.
        let mut server = Self {
            child,
            log,
            address: String::new(),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .finish(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&server.log).unwrap_or_default();
            if let Some(port) = logged_port(&text) {
                break port;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("runlog serve #{n} exited during start-up ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "runlog serve #{n} did not log its port within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server.address = format!("http://127.0.0.1:{port}");
        // Written on the first start, before the port is logged.
        let token = std::fs::read_to_string(storage.data_dir.join("admin.token"))
            .expect("the first start writes the admin token");
        server.client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .add_default_header(("authorization", format!("Bearer {}", token.trim())))
            .finish();
        loop {
            let healthy = server
                .client
                .get(format!("{}/healthz", server.address))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if healthy {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "runlog serve #{n} was not healthy within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap the process.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }

    async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request_with(&self.client, method, path, body).await
    }

    /// [`Server::request`] as `token`'s holder (none: anonymous).
    async fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut client = awc::Client::builder().timeout(Duration::from_secs(30));
        if let Some(token) = token {
            client = client.add_default_header(("authorization", format!("Bearer {token}")));
        }
        self.request_with(&client.finish(), method, path, body)
            .await
    }

    async fn request_with(
        &self,
        client: &awc::Client,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = client
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.address),
            )
            .insert_header(("content-type", "application/json"));
        let mut response = match body {
            Some(body) => request.send_body(body.to_string()).await,
            None => request.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let bytes = response
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .expect("response body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, value)
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let (status, reply) = self.request("POST", path, Some(body)).await;
        assert_eq!(status, 201, "POST {path}: {reply}");
        reply
    }

    /// Every event of a run, following the cursor.
    async fn events(&self, run_id: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut path = format!("/api/runs/{run_id}/events");
        loop {
            let page = self.get(&path).await;
            events.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(after) => path = format!("/api/runs/{run_id}/events?after={after}"),
                None => return events,
            }
        }
    }
}

/// Held by a test while its servers run on PostgreSQL: each `runlog serve`
/// opens up to about 40 connections, and a PostgreSQL at its default
/// `max_connections` (100) cannot serve this binary's PostgreSQL tests at
/// once (three nodes already need most of it).
static POSTGRES_SERVERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn postgres_servers(backend: Backend) -> Option<tokio::sync::MutexGuard<'static, ()>> {
    match backend {
        Backend::Postgres => Some(POSTGRES_SERVERS.lock().await),
        Backend::Sqlite => None,
    }
}

/// `replay --verify --all` finds `runs` runs and no divergence.
async fn verify_all_passes(storage: &Storage, runs: usize) {
    let verify = storage.cli(&["replay", "--verify", "--all"]).await;
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "verify: {runs} runs checked, 0 divergent, 0 behind"
        )),
        "{stderr}"
    );
}

/// Step statuses of a run's detail, by step.
fn step_statuses(run: &Value) -> BTreeMap<String, String> {
    run["steps"]
        .as_object()
        .map(|steps| {
            steps
                .iter()
                .map(|(name, s)| (name.clone(), s["status"].as_str().unwrap_or("").into()))
                .collect()
        })
        .unwrap_or_default()
}

async fn crash_and_recover(backend: Backend) {
    let _one_at_a_time = postgres_servers(backend).await;
    let Some(storage) = Storage::new(backend).await else {
        return;
    };
    let began = Instant::now();

    // 1. A server with 20 slow runs in flight.
    let server = Server::start(&storage, 1).await;
    let template = server
        .post(
            "/api/templates",
            json!({"name": "crash", "definition": workflow()}),
        )
        .await;
    let template_id = template["id"].as_str().expect("template id").to_string();
    let mut run_ids = Vec::new();
    for i in 0..RUNS {
        let run = server
            .post(
                "/api/runs",
                json!({"template_id": template_id, "input": {"topic": "crash", "n": i}}),
            )
            .await;
        run_ids.push(run["id"].as_str().expect("run id").to_string());
    }

    // 2. Wait until work has been done but is still going on, then kill.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (completed, running) = loop {
        let mut completed = 0;
        let mut running = 0;
        for id in &run_ids {
            let run = server.get(&format!("/api/runs/{id}")).await;
            for status in step_statuses(&run).values() {
                match status.as_str() {
                    "completed" => completed += 1,
                    "running" => running += 1,
                    _ => {}
                }
            }
        }
        if completed >= RUNS / 2 && running > 0 {
            break (completed, running);
        }
        assert!(
            Instant::now() < deadline,
            "no step completed within 30 s ({completed} completed, {running} running)"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    server.kill();
    let killed_at = began.elapsed();
    eprintln!(
        "{backend:?}: SIGKILL after {killed_at:?} with {completed} steps completed and \
         {running} running"
    );

    // 3. Restart on the same storage; every run must finish, and complete.
    let server = Server::start(&storage, 2).await;
    let deadline = Instant::now() + FINISH_WITHIN;
    for id in &run_ids {
        loop {
            let run = server.get(&format!("/api/runs/{id}")).await;
            match run["status"].as_str() {
                Some("completed") => break,
                Some("failed") => panic!("run {id} failed after the restart: {run}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not complete within {FINISH_WITHIN:?} of the restart: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "{backend:?}: every run completed {:?} after the start",
        began.elapsed()
    );

    // 4. The logs: gap-free, each step completed exactly once, and the kill
    //    did interrupt work that recovery re-dispatched.
    let mut recovered_dispatches = 0;
    let mut runs_with_recovery = 0;
    for id in &run_ids {
        let events = server.events(id).await;
        let sequences: Vec<i64> = events
            .iter()
            .map(|e| e["sequence"].as_i64().expect("sequence"))
            .collect();
        let expected: Vec<i64> = (1..=events.len() as i64).collect();
        assert_eq!(sequences, expected, "run {id}: sequences 1..N without gaps");
        let of_type = |t: &'static str| events.iter().filter(move |e| e["event_type"] == t);
        for step in STEPS {
            let completions = of_type("StepCompleted")
                .filter(|e| e["payload"]["step"] == step)
                .count();
            assert_eq!(
                completions, 1,
                "run {id}: step {step} completed {completions} times"
            );
        }
        assert_eq!(
            of_type("StepCompleted").count(),
            STEPS.len(),
            "run {id}: no completion of an unknown step"
        );
        assert_eq!(of_type("RunStarted").count(), 1, "run {id}");
        assert_eq!(of_type("RunCompleted").count(), 1, "run {id}");
        // The completion, then the engine's announcement of it (one commit).
        let tail: Vec<(Value, Value)> = events[events.len().saturating_sub(2)..]
            .iter()
            .map(|e| (e["event_type"].clone(), e["payload"]["content"].clone()))
            .collect();
        assert_eq!(
            tail,
            [
                (json!("RunCompleted"), Value::Null),
                (json!("MessagePosted"), json!("Run completed."))
            ],
            "run {id}: the run ends with its completion"
        );
        assert!(
            of_type("StepFailed").any(|e| e["payload"]["step"] == "b"),
            "run {id}: b failed its first attempt as configured"
        );
        let recovered = of_type("StepDispatched")
            .filter(|e| e["payload"]["recovered"] == true)
            .count();
        recovered_dispatches += recovered;
        runs_with_recovery += usize::from(recovered > 0);
    }
    assert!(
        recovered_dispatches > 0,
        "no StepDispatched with recovered: true: the kill interrupted nothing"
    );

    // 5. The read models agree with the logs: a completed run shows every
    //    step completed and reflects its last event.
    let mut disagreements = Vec::new();
    for id in &run_ids {
        let run = server.get(&format!("/api/runs/{id}")).await;
        let last = server.events(id).await.len() as u64;
        let unfinished: Vec<String> = step_statuses(&run)
            .into_iter()
            .filter(|(_, status)| status != "completed")
            .map(|(step, status)| format!("{step}={status}"))
            .collect();
        if !unfinished.is_empty() || run["sequence"].as_u64() != Some(last) {
            disagreements.push(format!(
                "run {id} (status {}, read model at sequence {}, log at {last}): steps not \
                 completed in the read model: {unfinished:?}",
                run["status"], run["sequence"]
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "the read models disagree with the event logs (a projection batch was lost: look for \
         'run projection failed' in the server log):\n{}",
        disagreements.join("\n")
    );
    eprintln!(
        "{backend:?}: {recovered_dispatches} recovered dispatches in {runs_with_recovery} \
         runs; checked in {:?}",
        began.elapsed()
    );
    drop(server);
}

mod sigkill_mid_run_then_restart_completes_every_run_once {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        crash_and_recover(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        crash_and_recover(Backend::Postgres).await;
    }
}

/// A redirect is two commits on two runs. The server is "killed" between
/// them: the old run's log records the redirect (written here through the
/// store, as the first commit left it) and the new run does not exist. The
/// next start must start the new run, once.
async fn redirect_cut_off_then_restart(backend: Backend) {
    use runlog::domain::definition::Definition;
    use runlog::domain::ids::{RunId, TemplateId, Timestamp};
    use runlog::domain::run::{Policy, Run, RunCommand, Stamp, StartRun};
    use runlog::store::{self, AggregateStore};
    use std::collections::HashMap;
    use std::sync::Arc;

    let _one_at_a_time = postgres_servers(backend).await;
    let Some(storage) = Storage::new(backend).await else {
        return;
    };
    let db = runlog::db::Db::connect(storage.database_url.as_deref(), &storage.data_dir)
        .await
        .expect("connect");
    store::migrate(&db).await.expect("migrate");
    let runs = AggregateStore::<Run>::new(&db, store::RUN_SNAPSHOT_EVERY);
    let definition = json!({"steps": {
        "first": {"agent": "template", "config": {"text": "{{ instructions | join(';') }}"}}
    }});
    let (old, new) = (
        RunId::parse("old-run").expect("id"),
        RunId::parse("new-run").expect("id"),
    );
    // The old run started and dispatched its step; then the redirect's first
    // commit; then the crash.
    let mut state = Run::default();
    let mut sequence = 0;
    for (command, at) in [
        RunCommand::Start(StartRun {
            run_id: old.clone(),
            template_id: TemplateId::parse("tpl").expect("id"),
            template_version: 1,
            definition: Arc::new(Definition::parse(&definition).expect("definition")),
            input: json!({"topic": "owls"}),
            retry_of: None,
            redirected_from: None,
            auto_run: true,
            owner: None,
            imports: Vec::new(),
        }),
        RunCommand::Redirect {
            new_run_id: new.clone(),
            instructions: "be brief".into(),
        },
    ]
    .into_iter()
    .zip([1_000, 2_000])
    {
        let stamp = Stamp {
            at: Timestamp(at),
            lease_seed: format!("s{at}"),
            policy: Policy::default(),
        };
        let events = state.decide(command, &stamp).expect("decided");
        let (committed, _, _) = runs
            .commit(
                old.as_str(),
                state.clone(),
                sequence,
                None,
                events,
                HashMap::new(),
                None,
            )
            .await
            .expect("committed");
        for envelope in committed {
            state.apply_event(envelope.payload);
            sequence = envelope.sequence;
        }
    }
    drop(runs);
    drop(db);

    let server = Server::start(&storage, 1).await;
    let deadline = Instant::now() + FINISH_WITHIN;
    let detail = loop {
        let (status, detail) = server.request("GET", "/api/runs/new-run", None).await;
        if status == 200 && detail["status"] == "completed" {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "the new run was not started and completed: {status} {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(detail["redirected_from"], "old-run", "{detail}");
    let (_, artifact) = server
        .request("GET", "/api/runs/new-run/artifacts/first.text", None)
        .await;
    assert_eq!(artifact["versions"][0]["content"], "be brief", "{artifact}");
    let old_detail = loop {
        let detail = server.get("/api/runs/old-run").await;
        if detail["status"] == "cancelled" {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "the old run did not end: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(old_detail["redirected_to"], "new-run", "{old_detail}");
    server.kill();

    // Another start finds the new run there and starts nothing.
    let server = Server::start(&storage, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = server
        .events("new-run")
        .await
        .iter()
        .filter(|e| e["event_type"] == "RunStarted")
        .count();
    assert_eq!(started, 1);
    drop(server);
}

mod a_redirect_cut_off_between_its_two_commits_is_finished_at_the_next_start {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        redirect_cut_off_then_restart(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        redirect_cut_off_then_restart(Backend::Postgres).await;
    }
}

/// The server, and with it the projection follower, killed with SIGKILL
/// three times at moments that vary from run to run while many runs write:
/// after the last restart every run's detail read model equals the fold of
/// its log (`replay --verify --all`, 0 fields different) and no read model
/// is behind.
async fn killed_at_random_the_read_models_still_equal_a_rebuild(backend: Backend) {
    let _one_at_a_time = postgres_servers(backend).await;
    let Some(storage) = Storage::new(backend).await else {
        return;
    };
    // Moments derived from the clock: different on every run of the test.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    // Each step takes longer than the latest kill (200 ms after the
    // starts), so every kill cuts steps off, whatever the seed.
    let quick = json!({"delay_ms": 250});
    let definition = json!({"steps": {
        "a": {"agent": "echo", "config": quick},
        "b": {"agent": "echo", "depends_on": ["a"], "config": quick},
        "c": {"agent": "echo", "depends_on": ["a"], "config": quick},
        "d": {"agent": "echo", "depends_on": ["b", "c"], "config": quick}
    }});
    let mut run_ids = Vec::new();
    let mut template_id = String::new();
    for round in 0..3u64 {
        let server = Server::start(&storage, round as usize + 1).await;
        if template_id.is_empty() {
            let template = server
                .post(
                    "/api/templates",
                    json!({"name": "kill", "definition": definition}),
                )
                .await;
            template_id = template["id"].as_str().expect("template id").to_string();
        }
        for i in 0..15 {
            let run = server
                .post(
                    "/api/runs",
                    json!({"template_id": template_id, "input": {"round": round, "n": i}}),
                )
                .await;
            run_ids.push(run["id"].as_str().expect("run id").to_string());
        }
        let kill_after = 20 + (seed.wrapping_mul(round + 7) % 180);
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        server.kill();
        eprintln!("{backend:?}: round {round}: SIGKILL {kill_after} ms after its starts");
    }
    let server = Server::start(&storage, 4).await;
    let deadline = Instant::now() + FINISH_WITHIN;
    for id in &run_ids {
        loop {
            let run = server.get(&format!("/api/runs/{id}")).await;
            if run["status"] == "completed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "run {id} did not complete after the restarts: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The kills did cut work off (recovery re-dispatched it).
    let mut recovered = 0;
    for id in &run_ids {
        recovered += server
            .events(id)
            .await
            .iter()
            .filter(|e| e["event_type"] == "StepDispatched" && e["payload"]["recovered"] == true)
            .count();
    }
    assert!(recovered > 0, "no kill interrupted a step");
    verify_all_passes(&storage, run_ids.len()).await;
    let listed = storage.cli(&["projections", "list", "--json"]).await;
    let listed: Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    for item in listed["items"].as_array().expect("items") {
        assert_eq!(item["lag_events"], 0, "{item}");
    }
    drop(server);
}

mod killed_at_random_the_read_models_still_equal_a_rebuild {
    use super::*;

    #[actix_web::test]
    async fn on_sqlite() {
        killed_at_random_the_read_models_still_equal_a_rebuild(Backend::Sqlite).await;
    }

    #[actix_web::test]
    async fn on_postgres() {
        killed_at_random_the_read_models_still_equal_a_rebuild(Backend::Postgres).await;
    }
}

/// Three nodes on one PostgreSQL, as three `runlog serve` processes: 200
/// runs started round-robin across them (in-process steps and a step of a
/// remote agent served by two `runlog worker` processes, which talk to two
/// of the nodes only, so that most of their reports are forwarded to the
/// runs' hosts); the third node is killed with SIGKILL while runs are in
/// flight and restarted later under its id. Every run completes, each step
/// completes exactly once, a WebSocket subscriber on each node (the killed
/// one's reconnecting with `after`) sees each run's events exactly once and
/// in order, and `replay --verify --all` passes.
mod many_nodes {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use futures::{SinkExt, StreamExt};
    use tokio::sync::{mpsc, watch};

    use super::*;

    const RUNS: usize = 200;
    const TOKEN: &str = "cluster-worker-token-0123456789";

    fn config(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("cluster.toml");
        let text = format!(
            "worker_token = \"{TOKEN}\"\nlease_ms = 8000\n\n[agents.remote]\ndescription = \"Echoes, in a worker\"\n"
        );
        std::fs::write(&path, text).expect("write the config");
        path
    }

    fn workflow() -> Value {
        let slow = json!({"delay_ms": 300});
        json!({"steps": {
            "a": {"agent": "echo", "config": slow},
            "b": {"agent": "remote", "depends_on": ["a"]},
            "c": {"agent": "echo", "depends_on": ["b"], "config": {"delay_ms": 1500}},
            "d": {"agent": "echo", "depends_on": ["c"]}
        }})
    }

    /// A `runlog worker` process; killed when dropped.
    struct Worker(Child);

    impl Drop for Worker {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Worker {
        fn start(server: &str, id: &str, log: PathBuf) -> Self {
            let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
                .args(["worker", "--server", server, "--agent", "remote", "--echo"])
                .args(["--worker-id", id, "--concurrency", "8", "--poll-secs", "1"])
                .env("RUNLOG_WORKER_TOKEN", TOKEN)
                .env("RUNLOG_LOG", "info")
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(log).expect("worker log"))
                .spawn()
                .expect("start runlog worker");
            Self(child)
        }
    }

    /// What one node's subscriber saw: the sequences of each run's events,
    /// in the order they came.
    type Seen = Rc<RefCell<HashMap<String, Vec<i64>>>>;

    /// Follows every run it is told of on the node at `address` (none while
    /// the node is down); after a reconnect it subscribes again from the
    /// last sequence it saw of each run.
    async fn subscriber(
        mut address: watch::Receiver<Option<String>>,
        mut runs: mpsc::UnboundedReceiver<String>,
        seen: Seen,
        token: String,
    ) {
        let client = awc::Client::builder()
            .add_default_header(("authorization", format!("Bearer {token}")))
            .finish();
        loop {
            let Some(base) = address.borrow_and_update().clone() else {
                tokio::select! {
                    changed = address.changed() => if changed.is_err() { return },
                    run = runs.recv() => match run {
                        Some(run) => { seen.borrow_mut().insert(run, Vec::new()); }
                        None => return,
                    },
                }
                continue;
            };
            let url = format!("{}/api/ws", base.replacen("http://", "ws://", 1));
            let Ok((_, mut ws)) = client.ws(url).connect().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let known: Vec<(String, i64)> = seen
                .borrow()
                .iter()
                .map(|(run, s)| (run.clone(), s.last().copied().unwrap_or(0)))
                .collect();
            for (run, after) in known {
                let message = json!({"type": "subscribe", "run_id": run, "after": after});
                if ws
                    .send(awc::ws::Message::Text(message.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            loop {
                tokio::select! {
                    run = runs.recv() => {
                        let Some(run) = run else { return };
                        seen.borrow_mut().insert(run.clone(), Vec::new());
                        let message = json!({"type": "subscribe", "run_id": run, "after": 0});
                        if ws.send(awc::ws::Message::Text(message.to_string().into())).await.is_err() {
                            break;
                        }
                    }
                    frame = ws.next() => match frame {
                        Some(Ok(awc::ws::Frame::Text(bytes))) => {
                            let message: Value = serde_json::from_slice(&bytes).expect("JSON");
                            match message["type"].as_str() {
                                Some("event") => {
                                    let run = message["run_id"].as_str().unwrap_or_default();
                                    let sequence = message["sequence"].as_i64().unwrap_or(-1);
                                    seen.borrow_mut().entry(run.to_string()).or_default().push(sequence);
                                }
                                Some("error") => panic!("subscriber got {message}"),
                                _ => {}
                            }
                        }
                        Some(Ok(_)) => {}
                        // The node went away: wait for it to come back.
                        Some(Err(_)) | None => break,
                    },
                    changed = address.changed() => {
                        if changed.is_err() { return }
                        break;
                    }
                }
            }
        }
    }

    #[actix_web::test]
    async fn three_nodes_one_killed_every_run_completes_once_and_subscribers_see_each_event_once() {
        let _one_at_a_time = postgres_servers(Backend::Postgres).await;
        let Some(storage) = Storage::new(Backend::Postgres).await else {
            return;
        };
        let config = config(&storage.data_dir);
        let config = config.display().to_string();
        let flags = |id: &'static str| {
            [
                "--config".to_string(),
                config.clone(),
                "--node-id".into(),
                id.into(),
            ]
        };
        let start = |n: usize, id: &'static str| {
            let flags = flags(id);
            let storage = &storage;
            async move {
                let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
                Server::start_with(storage, n, &flags).await
            }
        };
        let nodes = vec![start(1, "n1").await, start(2, "n2").await];
        let mut third = Some(start(3, "n3").await);

        // One subscriber per node.
        let mut subscribers = Vec::new();
        for node in nodes.iter().map(|n| n.address.clone()).chain([third
            .as_ref()
            .unwrap()
            .address
            .clone()])
        {
            let (address, address_rx) = watch::channel(Some(node));
            let (runs, runs_rx) = mpsc::unbounded_channel();
            let seen: Seen = Rc::default();
            let token = std::fs::read_to_string(storage.data_dir.join("admin.token"))
                .expect("the first node wrote the admin token");
            actix_web::rt::spawn(subscriber(
                address_rx,
                runs_rx,
                seen.clone(),
                token.trim().to_string(),
            ));
            subscribers.push((address, runs, seen));
        }

        // Workers against the two nodes that stay up.
        let _workers = [
            Worker::start(&nodes[0].address, "w1", storage.data_dir.join("w1.log")),
            Worker::start(&nodes[1].address, "w2", storage.data_dir.join("w2.log")),
        ];

        let template = nodes[0]
            .post(
                "/api/templates",
                json!({"name": "cluster", "definition": workflow()}),
            )
            .await;
        let template_id = template["id"].as_str().expect("template id").to_string();
        let listed = nodes[1].get("/api/admin/nodes").await;
        assert_eq!(
            listed["items"].as_array().map(Vec::len),
            Some(3),
            "{listed}"
        );

        let mut run_ids = Vec::new();
        for i in 0..RUNS {
            let body = json!({"template_id": template_id, "input": {"n": i}});
            let run = match i % 3 {
                0 => nodes[0].post("/api/runs", body).await,
                1 => nodes[1].post("/api/runs", body).await,
                _ => third.as_ref().unwrap().post("/api/runs", body).await,
            };
            let id = run["id"].as_str().expect("run id").to_string();
            for (_, runs, _) in &subscribers {
                runs.send(id.clone()).expect("the subscriber runs");
            }
            run_ids.push(id);
        }

        // Kill the third node while its runs are in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        let hosted = loop {
            let listed = nodes[0].get("/api/admin/nodes").await;
            let completed = nodes[0].get("/api/runs?status=completed&limit=200").await;
            let done = completed["items"].as_array().map_or(0, Vec::len);
            let n3 = listed["items"]
                .as_array()
                .and_then(|items| items.iter().find(|n| n["id"] == "n3").cloned())
                .expect("n3 listed");
            if done >= RUNS / 10 && n3["hosted_runs"].as_i64() > Some(0) {
                break n3["hosted_runs"].as_i64().unwrap_or(0);
            }
            assert!(Instant::now() < deadline, "runs did not progress: {listed}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        third.take().expect("the third node").kill();
        let killed = std::time::SystemTime::now();
        subscribers[2].0.send_replace(None);
        eprintln!("SIGKILL n3 while it hosted {hosted} runs");

        // Every run completes on the two others.
        let deadline = Instant::now() + Duration::from_secs(120);
        for id in &run_ids {
            loop {
                let run = nodes[(id.len() + id.as_bytes()[0] as usize) % 2]
                    .get(&format!("/api/runs/{id}"))
                    .await;
                if run["status"] == "completed" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "run {id} did not complete: {run}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let taken_over = chrono::DateTime::<chrono::Utc>::from(killed);
        eprintln!("every run completed; restarting n3");
        let restarted = start(4, "n3").await;
        subscribers[2]
            .0
            .send_replace(Some(restarted.address.clone()));

        // Each step completed exactly once; the runs n3 hosted were taken
        // over by the others (their later events name n1 or n2).
        let mut moved = 0;
        let mut first_after_kill: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for id in &run_ids {
            let events = nodes[0].events(id).await;
            counts.insert(id.clone(), events.len());
            for step in ["a", "b", "c", "d"] {
                let completed = events
                    .iter()
                    .filter(|e| e["event_type"] == "StepCompleted" && e["payload"]["step"] == step)
                    .count();
                assert_eq!(
                    completed, 1,
                    "run {id} step {step}: {completed} completions"
                );
            }
            let nodes_of: Vec<&str> = events
                .iter()
                .filter_map(|e| e["metadata"]["node"].as_str())
                .collect();
            if nodes_of.first() == Some(&"n3") && nodes_of.last() != Some(&"n3") {
                moved += 1;
                let after = events.iter().find(|e| {
                    e["metadata"]["node"] != "n3"
                        && e["recorded_at"]
                            .as_str()
                            .and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
                            > Some(taken_over)
                });
                if let Some(t) = after
                    .and_then(|e| e["recorded_at"].as_str())
                    .and_then(|t| t.parse().ok())
                {
                    first_after_kill = Some(
                        first_after_kill.map_or(t, |f: chrono::DateTime<chrono::Utc>| f.min(t)),
                    );
                }
            }
        }
        assert!(moved > 0, "no run of n3 was taken over");
        if let Some(first) = first_after_kill {
            eprintln!("{moved} runs taken over; the first event a new host wrote came {} ms after the kill",
                (first - taken_over).num_milliseconds());
        }

        // Every subscriber saw every event of every run once, in order.
        let deadline = Instant::now() + Duration::from_secs(60);
        for (n, (_, _, seen)) in subscribers.iter().enumerate() {
            loop {
                let behind: Vec<String> = run_ids
                    .iter()
                    .filter(|id| seen.borrow().get(*id).map_or(0, Vec::len) < counts[*id])
                    .cloned()
                    .collect();
                if behind.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "subscriber {} is missing events of {} runs, e.g. {}: {:?}",
                    n + 1,
                    behind.len(),
                    behind[0],
                    seen.borrow().get(&behind[0])
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for id in &run_ids {
                let expected: Vec<i64> = (1..=counts[id] as i64).collect();
                assert_eq!(
                    seen.borrow()[id],
                    expected,
                    "subscriber {} on run {id}",
                    n + 1
                );
            }
        }

        let listed = restarted.get("/api/admin/nodes").await;
        let alive = listed["items"].as_array().map_or(0, |items| {
            items.iter().filter(|n| n["alive"] == true).count()
        });
        assert_eq!(alive, 3, "{listed}");
        drop(restarted);
        drop(nodes);
        verify_all_passes(&storage, RUNS).await;
    }
}

/// Tokens and tickets, used every way there is (issued by the CLI, used,
/// mistyped, refused for a read-only token, traded for a WebSocket ticket,
/// revoked), never appear in the server's log at `debug`, nor do their
/// digests. The CLI's accounts commands run against this real server, and
/// their refusals change nothing.
mod secrets {
    use super::*;

    fn cli(storage: &Storage, args: &[&str]) -> std::process::Output {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(storage.cli_args());
        Command::new(env!("CARGO_BIN_EXE_runlog"))
            .args(&all)
            .env_remove("RUNLOG_TOKEN")
            .env("RUST_LOG", "warn")
            .output()
            .expect("the runlog binary runs")
    }

    fn out(output: &std::process::Output) -> (String, String) {
        (
            String::from_utf8_lossy(&output.stdout).trim().to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    fn digest(token: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(token.as_bytes()))
    }

    #[actix_web::test]
    async fn no_token_reaches_the_log_and_the_cli_manages_accounts() {
        let Some(storage) = Storage::new(Backend::Sqlite).await else {
            return;
        };
        let server = Server::start_logging(&storage, 1, &[], "debug,sqlx=warn").await;
        let admin = std::fs::read_to_string(storage.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string();

        // The CLI: a user, two tokens (one read-only and expiring).
        let created = cli(&storage, &["users", "create", "alice", "--role", "user"]);
        let (stdout, stderr) = out(&created);
        assert!(created.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("created user alice"), "{stdout}");
        let issued = cli(&storage, &["tokens", "create", "alice", "--name", "laptop"]);
        let (full, stderr) = out(&issued);
        assert!(issued.status.success(), "{stderr}");
        assert!(full.starts_with("rl_") && full.len() == 52, "{full:?}");
        assert!(stderr.contains("shown this once"), "{stderr}");
        let issued = cli(
            &storage,
            &[
                "tokens",
                "create",
                "alice",
                "--name",
                "ci",
                "--read-only",
                "--expires",
                "30d",
            ],
        );
        let (read_only, stderr) = out(&issued);
        assert!(issued.status.success(), "{stderr}");
        assert!(
            stderr.contains("read-only") && stderr.contains("expires"),
            "{stderr}"
        );

        let (status, me) = server.request_as(Some(&full), "GET", "/api/me", None).await;
        assert_eq!(status, 200, "{me}");
        assert_eq!(me["name"], "alice", "{me}");
        let alice = me["id"].as_str().expect("id").to_string();

        // Used: a run started with the full token, refused to the read-only
        // one, a typo of it refused, a ticket traded and spent.
        let template = server
            .post(
                "/api/templates",
                json!({"name": "one", "definition": {"steps": {"a": {"agent": "echo"}}}}),
            )
            .await["id"]
            .as_str()
            .expect("template id")
            .to_string();
        let start = json!({"template_id": template, "input": {}});
        let (status, run) = server
            .request_as(Some(&full), "POST", "/api/runs", Some(start.clone()))
            .await;
        assert_eq!(status, 201, "{run}");
        let (status, refused) = server
            .request_as(Some(&read_only), "POST", "/api/runs", Some(start.clone()))
            .await;
        assert_eq!(status, 403, "{refused}");
        let mut typo = full.clone();
        let last = typo.pop().expect("a last character");
        typo.push(if last == 'a' { 'b' } else { 'a' });
        let (status, refused) = server.request_as(Some(&typo), "GET", "/api/me", None).await;
        assert_eq!(status, 401, "{refused}");
        let (status, ticket) = server
            .request_as(Some(&full), "POST", "/api/ws/ticket", None)
            .await;
        assert_eq!(status, 200, "{ticket}");
        let ticket = ticket["ticket"].as_str().expect("ticket").to_string();
        let ws = |ticket: String| {
            let address = server.address.replace("http://", "ws://");
            async move {
                awc::Client::new()
                    .ws(format!("{address}/api/ws?ticket={ticket}"))
                    .connect()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        ws(ticket.clone()).await.expect("the ticket opens a socket");
        assert!(ws(ticket.clone()).await.is_err(), "a ticket is single-use");

        // Listed; then the full token revoked, and refused from then on.
        let listed = cli(&storage, &["tokens", "list", "alice", "--json"]);
        let (stdout, stderr) = out(&listed);
        assert!(listed.status.success(), "{stderr}");
        let tokens: Value = serde_json::from_str(&stdout).expect("JSON");
        let items = tokens["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "{tokens}");
        assert!(!stdout.contains(&full) && !stdout.contains(&read_only));
        let laptop = items
            .iter()
            .find(|t| t["name"] == "laptop")
            .expect("the laptop token")["id"]
            .as_str()
            .expect("id")
            .to_string();
        let revoked = cli(&storage, &["tokens", "revoke", &laptop]);
        let (stdout, stderr) = out(&revoked);
        assert!(revoked.status.success(), "{stderr}");
        assert!(stdout.contains("revoked token"), "{stdout}");
        let (status, refused) = server.request_as(Some(&full), "GET", "/api/me", None).await;
        assert_eq!(status, 401, "{refused}");
        assert_eq!(refused["error"]["code"], "token_revoked", "{refused}");
        let table = cli(&storage, &["tokens", "list", alice.as_str()]);
        let (stdout, _) = out(&table);
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("laptop") && l.contains("revoked")),
            "{stdout}"
        );

        // Refused on the command line: nothing created.
        let users_before = server.get("/api/users").await;
        for (args, code) in [
            (vec!["users", "create", "bob", "--role", "boss"], 2),
            (vec!["users", "create", "no spaces"], 2),
            (vec!["users", "create", "alice"], 2),
            (vec!["tokens", "create", "nobody"], 2),
            (
                vec!["tokens", "create", "alice", "--expires", "2001-01-01"],
                2,
            ),
            (vec!["tokens", "create", "alice", "--expires", "soon"], 2),
            (vec!["tokens", "revoke", "no-such-token"], 2),
            (vec!["users", "create", "carol", "--token", "rl_nope"], 1),
            (vec!["users", "create", "carol", "--token", &read_only], 1),
        ] {
            let refused = cli(&storage, &args);
            let (_, stderr) = out(&refused);
            assert_eq!(refused.status.code(), Some(code), "{args:?}: {stderr}");
            assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        }
        assert_eq!(server.get("/api/users").await, users_before);
        let (status, listed) = server
            .request("GET", &format!("/api/users/{alice}/tokens"), None)
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            listed["items"].as_array().map(Vec::len),
            Some(2),
            "{listed}"
        );
        let users = cli(&storage, &["users", "list"]);
        let (stdout, _) = out(&users);
        assert!(users.status.success());
        assert!(
            stdout.contains("alice") && stdout.contains("admin"),
            "{stdout}"
        );

        server.kill();
        let log = std::fs::read_to_string(storage.data_dir.join("server-1.log")).expect("log");
        // The log was written at debug (so the search below could find
        // something), and holds none of the secrets.
        assert!(log.contains("DEBUG"), "the server logged at debug");
        assert!(log.contains("admin.token"), "the first start says where");
        for (what, secret) in [
            ("the admin's token", admin.as_str()),
            ("a user's token", full.as_str()),
            ("a read-only token", read_only.as_str()),
            ("a mistyped token", typo.as_str()),
            ("a ticket", ticket.as_str()),
        ] {
            assert!(!log.contains(secret), "{what} is in the server's log");
            assert!(
                !log.contains(&digest(secret)),
                "{what}'s digest is in the log"
            );
            // Nor most of it (a token cut short in a message).
            assert!(
                !log.contains(&secret[..20]),
                "{what} (in part) is in the log"
            );
        }
    }
}
