//! `runlog bench`: the W1 diamond workload against a real server over HTTP.
//!
//! Starts the application in this process on a loopback port with fresh
//! storage (a temp SQLite directory, or a fresh PostgreSQL database created
//! from `--database-url`), then drives it as a client would: POST a run,
//! learn of its completion over the WebSocket, measure.
//!
//! - L: `--latency-runs` runs one after another; p50 / p99 from POST to the
//!   `RunCompleted` event arriving on the WebSocket.
//! - T: `--throughput-runs` runs with `--concurrency` in flight; runs/s.
//! - Durable commits per run: write transactions the server committed
//!   during T, divided by T's runs.
//!
//! Each repetition uses fresh storage; the report gives the median of the
//! repetitions, and is written between markers into `--output`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::rt::time::timeout;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

use crate::app::Application;
use crate::config::ServeSettings;

/// Benchmark settings.
#[derive(Debug, Clone, Args)]
pub struct BenchSettings {
    /// PostgreSQL server to benchmark on (a fresh database is created for
    /// each repetition); default: SQLite in a temp directory.
    #[arg(long, env = "RUNLOG_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Runs for the latency phase (one after another).
    #[arg(long, default_value_t = 200)]
    pub latency_runs: usize,
    /// Runs for the throughput phase.
    #[arg(long, default_value_t = 1000)]
    pub throughput_runs: usize,
    /// Runs in flight during the throughput phase.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Repetitions; the report gives medians.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Markdown file to write the results into (between markers).
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub output: PathBuf,
    /// Print the results only; do not write the file.
    #[arg(long)]
    pub no_write: bool,
    /// Run W1 with the built-in agents' start/finish comments off
    /// (`"comments": false`), as the engine ran before the thread existed.
    #[arg(long)]
    pub no_agent_comments: bool,
}

/// One repetition's figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
    commits_per_run: f64,
    /// Median time to the POST's answer during T.
    t_post_ms: f64,
    /// Median time to completion during T.
    t_run_ms: f64,
}

/// Runs someone waits for, and runs that finished before anyone waited.
#[derive(Default)]
struct Outcomes {
    waiting: HashMap<String, oneshot::Sender<String>>,
    early: HashMap<String, String>,
}

/// Learns of run completions from one WebSocket subscribed to every run.
struct Completions {
    outcomes: Arc<Mutex<Outcomes>>,
}

impl Completions {
    async fn connect(port: u16) -> Result<Self, Box<dyn std::error::Error>> {
        let (_, mut framed) = awc::Client::new()
            .ws(format!("ws://127.0.0.1:{port}/api/ws"))
            .max_frame_size(16 * 1024 * 1024)
            .connect()
            .await
            .map_err(|e| format!("websocket connect: {e}"))?;
        let subscribe = json!({"type": "subscribe_all"}).to_string();
        framed
            .send(awc::ws::Message::Text(subscribe.into()))
            .await
            .map_err(|e| format!("websocket send: {e}"))?;
        // Wait for the acknowledgement so that no run starts unobserved.
        loop {
            match framed.next().await {
                Some(Ok(awc::ws::Frame::Text(bytes)))
                    if bytes.as_ref().windows(14).any(|w| w == b"subscribed_all") =>
                {
                    break
                }
                Some(Ok(_)) => continue,
                other => {
                    return Err(format!("websocket closed before subscribing: {other:?}").into())
                }
            }
        }
        let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
        let routing = outcomes.clone();
        actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = framed.next().await {
                let awc::ws::Frame::Text(bytes) = frame else {
                    continue;
                };
                let Ok(message) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let kind = message["event_type"].as_str().unwrap_or_default();
                if kind == "RunCompleted" || kind == "RunFailed" {
                    let run = message["run_id"].as_str().unwrap_or_default().to_string();
                    let Ok(mut outcomes) = routing.lock() else {
                        break;
                    };
                    match outcomes.waiting.remove(&run) {
                        Some(waiter) => {
                            let _ = waiter.send(kind.to_string());
                        }
                        None => {
                            outcomes.early.insert(run, kind.to_string());
                        }
                    }
                }
            }
        });
        Ok(Self { outcomes })
    }

    /// Resolves with the run's final event type.
    fn watch(&self, run: &str) -> oneshot::Receiver<String> {
        let (sender, receiver) = oneshot::channel();
        if let Ok(mut outcomes) = self.outcomes.lock() {
            match outcomes.early.remove(run) {
                Some(kind) => {
                    let _ = sender.send(kind);
                }
                None => {
                    outcomes.waiting.insert(run.to_string(), sender);
                }
            }
        }
        receiver
    }
}

/// The W1 diamond: A → {B, C} → D, all `echo` with no delay; with
/// `comments` off, the agents post nothing to the thread.
fn diamond(comments: bool) -> Value {
    let config = if comments {
        json!({})
    } else {
        json!({"comments": false})
    };
    json!({"steps": {
        "a": {"agent": "echo", "config": config},
        "b": {"agent": "echo", "depends_on": ["a"], "config": config},
        "c": {"agent": "echo", "depends_on": ["a"], "config": config},
        "d": {"agent": "echo", "depends_on": ["b", "c"], "config": config}
    }})
}

async fn post(client: &awc::Client, url: &str, body: &Value) -> Result<Value, String> {
    let mut response = client
        .post(url)
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    let bytes = response.body().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "POST {url}: {} {}",
            response.status(),
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// How long one run took: until the POST answered, and until it completed.
#[derive(Debug, Clone, Copy)]
struct Timing {
    posted: Duration,
    completed: Duration,
}

/// Starts one run and waits for its completion.
async fn one_run(
    client: &awc::Client,
    completions: &Completions,
    url: &str,
    body: &Value,
) -> Result<Timing, String> {
    let started = Instant::now();
    let run = post(client, url, body).await?;
    let posted = started.elapsed();
    let id = run["id"].as_str().ok_or("no run id")?.to_string();
    let outcome = timeout(Duration::from_secs(60), completions.watch(&id))
        .await
        .map_err(|_| format!("run {id} did not finish within 60 s"))?
        .map_err(|_| "completion watcher closed".to_string())?;
    if outcome != "RunCompleted" {
        return Err(format!("run {id} ended with {outcome}"));
    }
    Ok(Timing {
        posted,
        completed: started.elapsed(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

async fn fresh_postgres(base: &str) -> Result<String, Box<dyn std::error::Error>> {
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions = base.parse()?;
    let name = format!("runlog_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = options.connect().await?;
    // The name is generated here, never user input.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    Ok(options.database(&name).to_url_lossy().to_string())
}

async fn repetition(settings: &BenchSettings) -> Result<Figures, Box<dyn std::error::Error>> {
    let data_dir =
        std::env::temp_dir().join(format!("runlog-bench-{}", uuid::Uuid::new_v4().simple()));
    let database_url = match &settings.database_url {
        Some(base) => Some(fresh_postgres(base).await?),
        None => None,
    };
    let mut serve = ServeSettings::ephemeral(data_dir.clone(), database_url.clone());
    serve.passivate_after_secs = 2;
    let app = Application::build(serve).await?;
    let port = app.port();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = actix_web::rt::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let result = drive(settings, port).await;
    let _ = stop.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&data_dir);
    if let (Some(base), Some(url)) = (&settings.database_url, &database_url) {
        drop_postgres(base, url).await;
    }
    result
}

/// Drops a scratch database made by [`fresh_postgres`].
async fn drop_postgres(base: &str, url: &str) {
    use sqlx::ConnectOptions;
    let Some(name) = url.rsplit('/').next().and_then(|n| n.split('?').next()) else {
        return;
    };
    if !name.starts_with("runlog_bench_") {
        return;
    }
    let Ok(options) = base.parse::<sqlx::postgres::PgConnectOptions>() else {
        return;
    };
    if let Ok(mut conn) = options.connect().await {
        // The name is generated by fresh_postgres, never user input.
        let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::query(&drop).execute(&mut conn).await {
            tracing::warn!(error = %e, database = name, "could not drop the benchmark database");
        }
    }
}

async fn drive(settings: &BenchSettings, port: u16) -> Result<Figures, Box<dyn std::error::Error>> {
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let template = post(
        &client,
        &format!("{base}/api/templates"),
        &json!({"name": "w1-diamond", "definition": diamond(!settings.no_agent_comments)}),
    )
    .await?;
    let body = json!({"template_id": template["id"], "input": {"n": 1}});
    let runs_url = format!("{base}/api/runs");
    let completions = Completions::connect(port).await?;
    // Warm-up: connections, caches, JIT-free but allocator-warm.
    for _ in 0..20 {
        one_run(&client, &completions, &runs_url, &body).await?;
    }
    let mut latencies = Vec::with_capacity(settings.latency_runs);
    for _ in 0..settings.latency_runs {
        latencies.push(
            one_run(&client, &completions, &runs_url, &body)
                .await?
                .completed,
        );
    }
    latencies.sort();
    let commits_before = crate::db::durable_commits();
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let client = std::rc::Rc::new(client);
    let completions = std::rc::Rc::new(completions);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(settings.throughput_runs);
    for _ in 0..settings.throughput_runs {
        let permit = permits.clone().acquire_owned().await?;
        let (client, completions, url, body) = (
            client.clone(),
            completions.clone(),
            runs_url.clone(),
            body.clone(),
        );
        tasks.push(actix_web::rt::spawn(async move {
            let result = one_run(&client, &completions, &url, &body).await;
            drop(permit);
            result
        }));
    }
    let mut posted = Vec::with_capacity(tasks.len());
    let mut completed = Vec::with_capacity(tasks.len());
    for task in tasks {
        let timing = task.await??;
        posted.push(timing.posted);
        completed.push(timing.completed);
    }
    let elapsed = started.elapsed();
    posted.sort();
    completed.sort();
    let commits = crate::db::durable_commits() - commits_before;
    Ok(Figures {
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        throughput: settings.throughput_runs as f64 / elapsed.as_secs_f64(),
        commits_per_run: commits as f64 / settings.throughput_runs as f64,
        t_post_ms: percentile(&posted, 50.0),
        t_run_ms: percentile(&completed, 50.0),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or_else(
            || "unknown memory".into(),
            |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0),
        );
    format!("{cores} cores ({cpu}), {memory}")
}

/// Runs the benchmark.
pub async fn run(settings: BenchSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let backend = match (settings.database_url.is_some(), settings.no_agent_comments) {
        (true, false) => "postgres",
        (true, true) => "postgres-no-comments",
        (false, false) => "sqlite",
        (false, true) => "sqlite-no-comments",
    };
    let mut all = Vec::new();
    for i in 1..=settings.repeat.max(1) {
        let figures = repetition(&settings).await?;
        eprintln!(
            "{backend} repetition {i}/{}: L p50 {:.2} ms, p99 {:.2} ms; T {:.0} runs/s \
             (median POST {:.1} ms, run {:.1} ms); {:.2} durable commits/run",
            settings.repeat,
            figures.p50_ms,
            figures.p99_ms,
            figures.throughput,
            figures.t_post_ms,
            figures.t_run_ms,
            figures.commits_per_run
        );
        all.push(figures);
    }
    let p50 = median(all.iter().map(|f| f.p50_ms).collect());
    let p99 = median(all.iter().map(|f| f.p99_ms).collect());
    let throughput = median(all.iter().map(|f| f.throughput).collect());
    let commits = median(all.iter().map(|f| f.commits_per_run).collect());
    let t_post = median(all.iter().map(|f| f.t_post_ms).collect());
    let t_run = median(all.iter().map(|f| f.t_run_ms).collect());
    let each = all
        .iter()
        .map(|f| format!("{:.2} / {:.2} / {:.0}", f.p50_ms, f.p99_ms, f.throughput))
        .collect::<Vec<_>>()
        .join("; ");
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let section = format!(
        "### W1 diamond on {backend}\n\n\
         Measured {date} on {machine}, release build, server and client in one process over loopback.\n\
         Command: `cargo run --release -- bench{flags}`\n\n\
         | figure | median of {n} | \n|---|---|\n\
         | L p50 (POST → RunCompleted, {l} runs in sequence) | {p50:.2} ms |\n\
         | L p99 | {p99:.2} ms |\n\
         | T ({t} runs, {c} in flight) | {throughput:.0} runs/s |\n\
         | durable commits per run (during T) | {commits:.2} |\n\
         | during T: median time to the POST's answer / to completion | {t_post:.1} ms / {t_run:.1} ms |\n\n\
         Each repetition (p50 ms / p99 ms / runs/s): {each}\n",
        machine = machine(),
        flags = match &settings.database_url {
            // Credentials and host stay out of the report; options stay in.
            Some(url) => format!(
                " --database-url 'postgres://…{}'",
                url.split_once('?').map_or(String::new(), |(_, q)| format!("?{q}"))
            ),
            None => String::new(),
        } + if settings.no_agent_comments { " --no-agent-comments" } else { "" },
        n = all.len(),
        l = settings.latency_runs,
        t = settings.throughput_runs,
        c = settings.concurrency,
    );
    println!("{section}");
    if !settings.no_write {
        write_section(&settings.output, backend, &section)?;
        eprintln!(
            "wrote the {backend} section of {}",
            settings.output.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces the text between this backend's markers (or appends them).
fn write_section(path: &std::path::Path, backend: &str, section: &str) -> std::io::Result<()> {
    let start = format!("<!-- bench:{backend}:start -->");
    let end = format!("<!-- bench:{backend}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{start}\n{section}{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{}{}", &text[..s], block, &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, updated)
}
