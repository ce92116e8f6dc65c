//! `runlog worker`: a ready-made remote worker. It claims tasks of one or
//! more agents from a runlog server over HTTP and runs a program for each
//! (a path, not a shell string): the task JSON on its stdin; the JSON object
//! it prints on stdout becomes the step's outputs. It heartbeats while the
//! program runs, stops the program (SIGTERM, then SIGKILL) when the run is
//! cancelled or the lease is lost, and shuts down cleanly on SIGTERM or
//! Ctrl-C: it claims nothing more, lets running programs finish for a grace
//! period, then stops them and gives their tasks back. It never reports a
//! task twice.
//!
//! A program fails its task by exiting non-zero (the failure is retryable;
//! its stderr is the error), or by printing `{"error": "…", "retryable":
//! false}`. With `--echo` no program runs: each task completes with its
//! inputs as outputs (to try the protocol, and for benchmarks).
//!
//! A client of the public HTTP API only: it depends on no other module but
//! [`subprocess`](crate::subprocess).

use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::subprocess::{verdict, Program, Verdict};

/// Settings of `runlog worker`.
#[derive(Debug, Clone, Args)]
pub struct WorkerSettings {
    /// The runlog server, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "RUNLOG_SERVER")]
    pub server: String,
    /// The worker token (the server's `worker_token`).
    #[arg(long, env = "RUNLOG_WORKER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The agent whose tasks to run (repeat for several).
    #[arg(long = "agent", required = true)]
    pub agents: Vec<String>,
    /// The program to run for each task.
    #[arg(long, required_unless_present = "echo", conflicts_with = "echo")]
    pub exec: Option<std::path::PathBuf>,
    /// Complete each task with its inputs as outputs; run no program.
    #[arg(long)]
    pub echo: bool,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// This worker's id (default: host name and process id).
    #[arg(long)]
    pub worker_id: Option<String>,
    /// How long running programs may finish after a shutdown signal (s).
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// How long a stopped program has between SIGTERM and SIGKILL (ms).
    #[arg(long, default_value_t = 5_000)]
    pub kill_grace_ms: u64,
    /// How long one claim waits for a task (s, at most 30). A shutdown
    /// waits for the claim in flight, and gives back what it brings.
    #[arg(long, default_value_t = 10)]
    pub poll_secs: u64,
    /// The program's arguments (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// The worker's client errors.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// The server could not be reached or answered garbage.
    #[error("{0}")]
    Transport(String),
    /// The lease is gone (409): drop the task.
    #[error("lease lost: {0}")]
    LeaseLost(String),
    /// The server refused the call (4xx other than 409).
    #[error("refused ({status}): {body}")]
    Refused { status: u16, body: String },
    /// The server failed (5xx).
    #[error("server error ({status}): {body}")]
    Server { status: u16, body: String },
}

/// The HTTP side of the protocol.
struct Client {
    http: awc::Client,
    server: String,
    token: String,
    worker_id: String,
    agents: Vec<String>,
}

impl Client {
    async fn post(
        &self,
        path: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<(u16, Value), CallError> {
        let mut response = self
            .http
            .post(format!("{}{path}", self.server.trim_end_matches('/')))
            .insert_header(("Authorization", format!("Bearer {}", self.token)))
            .insert_header(("content-type", "application/json"))
            .timeout(timeout)
            .send_body(body.to_string())
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| CallError::Transport(e.to_string()))?;
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        match status {
            200..=299 => Ok((status, body)),
            409 => Err(CallError::LeaseLost(body.to_string())),
            400..=499 => Err(CallError::Refused {
                status,
                body: body.to_string(),
            }),
            _ => Err(CallError::Server {
                status,
                body: body.to_string(),
            }),
        }
    }

    /// Claims a task, waiting up to `wait_s`; `None` when none came.
    async fn claim(&self, wait_s: u64) -> Result<Option<Value>, CallError> {
        let body = json!({"worker_id": self.worker_id, "agents": self.agents, "wait_s": wait_s});
        let (status, task) = self
            .post("/api/workers/claim", body, Duration::from_secs(wait_s + 15))
            .await?;
        Ok((status == 200).then_some(task))
    }

    /// A call about a task, retried while the server cannot be reached or
    /// fails (a 409 or another refusal is final).
    async fn task_call(
        &self,
        task: &Value,
        action: &str,
        extra: Value,
    ) -> Result<Value, CallError> {
        let id = task["task_id"].as_str().unwrap_or_default();
        let mut body = json!({"lease_token": task["lease_token"]});
        if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
            body.extend(extra);
        }
        // A report that also claims the next task may wait for one.
        let waits = body["next"]["wait_s"].as_u64().unwrap_or(0);
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            match self
                .post(
                    &format!("/api/tasks/{id}/{action}"),
                    body.clone(),
                    Duration::from_secs(30 + waits),
                )
                .await
            {
                Ok((_, answer)) => return Ok(answer),
                Err(e @ (CallError::Transport(_) | CallError::Server { .. })) if attempt < 5 => {
                    tracing::warn!(task_id = id, action, error = %e, "retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }
}

/// Runs the worker until a shutdown signal.
pub async fn run(settings: WorkerSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if settings.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let worker_id = settings.worker_id.clone().unwrap_or_else(default_worker_id);
    let client = Rc::new(Client {
        http: awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish(),
        server: settings.server.clone(),
        token: settings.token.clone(),
        worker_id: worker_id.clone(),
        agents: settings.agents.clone(),
    });
    let settings = Rc::new(settings);
    // Raised once on SIGTERM or Ctrl-C.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        actix_web::rt::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no more claims; running tasks get their grace");
            stopping.store(true, Ordering::SeqCst);
            let _ = stop_tx.send(true);
        });
    }
    tracing::info!(worker_id, agents = ?settings.agents, concurrency = settings.concurrency,
        server = settings.server, "runlog worker started");
    let slots: Vec<_> = (0..settings.concurrency)
        .map(|_| {
            let (client, settings, stop) = (client.clone(), settings.clone(), stop_rx.clone());
            let stopping = stopping.clone();
            actix_web::rt::spawn(async move { slot(&client, &settings, stop, &stopping).await })
        })
        .collect();
    for slot in slots {
        let _ = slot.await;
    }
    tracing::info!("runlog worker stopped");
    Ok(ExitCode::SUCCESS)
}

/// One slot: claims and runs tasks one at a time until shutdown. A claim in
/// flight when the shutdown comes is waited for (the server may hand it a
/// task), and a task it brings is given back at once.
async fn slot(
    client: &Client,
    settings: &WorkerSettings,
    mut stop: watch::Receiver<bool>,
    stopping: &AtomicBool,
) {
    let mut backoff = Duration::from_millis(500);
    let wait_s = settings.poll_secs.min(30);
    // The task the last report brought (it claimed the next one).
    let mut next: Option<Value> = None;
    while !stopping.load(Ordering::SeqCst) {
        let claimed = match next.take() {
            Some(task) => Ok(Some(task)),
            None => client.claim(wait_s).await,
        };
        match claimed {
            Ok(None) => backoff = Duration::from_millis(500),
            Ok(Some(task)) if stopping.load(Ordering::SeqCst) => {
                report(client, &task, "release", json!({}), None).await;
            }
            Ok(Some(task)) => {
                backoff = Duration::from_millis(500);
                next = run_task(client, settings, &task, stop.clone(), stopping, wait_s).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; trying again in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    // A task the last report brought as the shutdown came goes back.
    if let Some(task) = next {
        report(client, &task, "release", json!({}), None).await;
    }
}

/// How often to heartbeat: a third of the lease the server gave, between
/// 200 ms and 10 s.
fn heartbeat_interval(task: &Value) -> Duration {
    let expires = task["lease_expires_at"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis());
    let now = chrono::Utc::now().timestamp_millis();
    let third = expires.map_or(10_000, |e| (e - now) / 3);
    Duration::from_millis(u64::try_from(third.clamp(200, 10_000)).unwrap_or(10_000))
}

/// What became of a program.
enum Ended {
    /// It exited: what it came to.
    Exited(Verdict),
    /// It could not be started or read.
    Broken(String),
    /// It was stopped (cancel, lost lease, shutdown).
    Stopped(&'static str),
}

/// Runs one task to its end and reports it (once). Unless the worker is
/// shutting down, the report also claims the slot's next task (waiting up
/// to `wait_s`), which is returned.
async fn run_task(
    client: &Client,
    settings: &WorkerSettings,
    task: &Value,
    mut stop: watch::Receiver<bool>,
    stopping: &AtomicBool,
    wait_s: u64,
) -> Option<Value> {
    let task_id = task["task_id"].as_str().unwrap_or_default().to_string();
    tracing::info!(task_id, run_id = %task["run_id"], step = %task["step"], attempt = %task["attempt"], "task claimed");
    let next = || (!stopping.load(Ordering::SeqCst)).then_some(wait_s);
    if settings.echo {
        let outputs = match &task["inputs"] {
            Value::Object(map) if !map.is_empty() => Value::Object(map.clone()),
            other => json!({"value": other}),
        };
        return report(
            client,
            task,
            "complete",
            json!({"outputs": outputs}),
            next(),
        )
        .await;
    }
    let path = settings.exec.clone().unwrap_or_default();
    let program = Program {
        path: &path,
        args: &settings.args,
        env: None,
    };
    let mut running = match program.start(serde_json::to_vec(task).unwrap_or_default()) {
        Ok(running) => running,
        Err(e) => {
            let error = format!("cannot start {}: {e}", path.display());
            return report(
                client,
                task,
                "fail",
                json!({"error": error, "retryable": true}),
                next(),
            )
            .await;
        }
    };
    let kill_grace = Duration::from_millis(settings.kill_grace_ms);
    let mut beats = tokio::time::interval(heartbeat_interval(task));
    beats.tick().await;
    let mut shutdown_deadline: Option<Instant> = None;
    let ended = loop {
        let grace_left = shutdown_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        tokio::select! {
            ended = running.wait() => {
                break match ended {
                    Ok((status, out, err)) => Ended::Exited(verdict("the program", status, &out, &err)),
                    Err(e) => Ended::Broken(format!("waiting for the program: {e}")),
                };
            }
            _ = beats.tick() => {
                match client.task_call(task, "heartbeat", json!({})).await {
                    Ok(answer) if answer["cancel_requested"] == true => {
                        tracing::info!(task_id, "the run was cancelled; stopping the program");
                        running.stop(kill_grace).await;
                        break Ended::Stopped("the run was cancelled");
                    }
                    Ok(_) => {}
                    Err(CallError::LeaseLost(_)) => {
                        tracing::warn!(task_id, "the lease was lost; stopping the program");
                        running.stop(kill_grace).await;
                        break Ended::Stopped("lease lost");
                    }
                    Err(e) => tracing::warn!(task_id, error = %e, "heartbeat failed"),
                }
            }
            _ = stop.wait_for(|s| *s), if shutdown_deadline.is_none() => {
                shutdown_deadline = Some(Instant::now() + Duration::from_secs(settings.shutdown_grace_secs));
            }
            () = tokio::time::sleep(grace_left.unwrap_or(Duration::MAX)), if grace_left.is_some() => {
                tracing::info!(task_id, "shutdown grace over; stopping the program and giving the task back");
                running.stop(kill_grace).await;
                break Ended::Stopped("shutdown");
            }
        }
    };
    match ended {
        Ended::Stopped("lease lost") => None,
        Ended::Stopped("shutdown") => report(client, task, "release", json!({}), None).await,
        Ended::Stopped(why) => {
            report(
                client,
                task,
                "fail",
                json!({"error": format!("stopped: {why}"), "retryable": false}),
                next(),
            )
            .await
        }
        Ended::Broken(error) => {
            report(
                client,
                task,
                "fail",
                json!({"error": error, "retryable": true}),
                next(),
            )
            .await
        }
        Ended::Exited(Verdict::Outputs(outputs)) => {
            report(
                client,
                task,
                "complete",
                json!({"outputs": outputs}),
                next(),
            )
            .await
        }
        Ended::Exited(Verdict::Failed { error, retryable }) => {
            report(
                client,
                task,
                "fail",
                json!({"error": error, "retryable": retryable}),
                next(),
            )
            .await
        }
    }
}

/// Reports the end of a task; a refused report of outputs becomes a
/// failure. With `next` (a wait in seconds), a completion or failure also
/// claims the next task, which is returned.
async fn report(
    client: &Client,
    task: &Value,
    action: &str,
    mut body: Value,
    next: Option<u64>,
) -> Option<Value> {
    let task_id = task["task_id"].as_str().unwrap_or_default();
    let claim_next = |body: &mut Value| {
        if let (Some(wait_s), Value::Object(map)) = (next, body) {
            map.insert(
                "next".into(),
                json!({"worker_id": client.worker_id, "agents": client.agents, "wait_s": wait_s}),
            );
        }
    };
    // Kept only to report again without the claim.
    let plain = next.is_some().then(|| body.clone());
    claim_next(&mut body);
    let mut answer = client.task_call(task, action, body).await;
    if let (Some(plain), Err(CallError::Refused { status: 400, .. })) = (plain, &answer) {
        // A server that does not take `next` (older), or refuses this claim
        // (an agent no longer remote): report without it, claim on its own.
        tracing::warn!(
            task_id,
            action,
            "the report with the next claim was refused; reporting without it"
        );
        answer = client.task_call(task, action, plain).await;
    }
    match answer {
        Ok(answer) => {
            tracing::info!(task_id, action, "task reported");
            next_task(answer)
        }
        Err(CallError::LeaseLost(_)) => {
            tracing::warn!(
                task_id,
                action,
                "the lease was lost before the report, or an earlier try of this report that got \
                 no answer was recorded; the task is not reported again"
            );
            None
        }
        Err(CallError::Refused { status: 422, body }) if action == "complete" => {
            tracing::warn!(task_id, %body, "the server refused the outputs; failing the task");
            let error = format!("the program's outputs were refused: {body}");
            let mut failure = json!({"error": error, "retryable": false});
            claim_next(&mut failure);
            client
                .task_call(task, "fail", failure)
                .await
                .ok()
                .and_then(next_task)
        }
        Err(e) => {
            tracing::error!(task_id, action, error = %e, "the task could not be reported");
            None
        }
    }
}

/// The next task a report's answer brought, if any.
fn next_task(answer: Value) -> Option<Value> {
    match answer {
        Value::Object(mut map) => map.remove("next").filter(Value::is_object),
        _ => None,
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The host name and the process id, in the characters a worker id allows.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "worker".into());
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(64)
        .collect();
    format!(
        "{}-{}",
        if host.is_empty() { "worker" } else { &host },
        std::process::id()
    )
}
