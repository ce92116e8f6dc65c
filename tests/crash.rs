//! Crash recovery, end to end, with the real `runlog serve` process, on
//! SQLite and on PostgreSQL:
//! - killed with SIGKILL while runs are in flight and restarted on the same
//!   storage, every run must complete with each step completed exactly once
//!   and a gap-free log;
//! - a redirect cut off between its two commits (the old run records it,
//!   the new run does not exist) is finished at the next start, once;
//! - killed three times at varying moments while runs write, the read
//!   models end equal to a fold of the log (`replay --verify --all`).

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
        let log = storage.data_dir.join(format!("server-{n}.log"));
        let stderr = File::create(&log).expect("create the server log");
        let child = Command::new(env!("CARGO_BIN_EXE_runlog"))
            .arg("serve")
            .args(["--bind", "127.0.0.1:0"])
            .args(storage.cli_args())
            .env_remove("RUNLOG_BIND")
            .env_remove("RUNLOG_DATA_DIR")
            .env_remove("RUNLOG_DATABASE_URL")
            .env_remove("RUNLOG_HTTP_WORKERS")
            .env_remove("RUNLOG_PASSIVATE_AFTER_SECS")
            .env("RUNLOG_LOG", "info,sqlx=warn")
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
        let request = self
            .client
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
    let verify = storage.cli(&["replay", "--verify", "--all"]).await;
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "{}\n{stderr}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(
        stderr.contains(&format!(
            "verify: {} runs checked, 0 divergent, 0 behind",
            run_ids.len()
        )),
        "{stderr}"
    );
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
