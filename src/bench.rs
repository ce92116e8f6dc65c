//! `runlog bench`: benchmark workloads against a real server over HTTP.
//!
//! Each repetition starts a server on a loopback port with fresh storage (a
//! temp SQLite directory, or a fresh PostgreSQL database created from
//! `--database-url` and dropped afterwards) and drives it as a client
//! would. The report gives the median of the repetitions (and each
//! repetition's figures), and is written into `--output` between
//! `<!-- bench:KEY:start -->` and `<!-- bench:KEY:end -->`, unless
//! `--no-write`.
//!
//! Where the server runs (`--server`):
//! - `process` (default): `runlog serve` (this executable) in its own
//!   process on port 0; the port is read from its `runlog listening` log
//!   line, its log goes to `server.log` in the repetition's temp directory
//!   (kept, and named, when something fails). It is stopped with SIGTERM,
//!   and SIGKILL if it has not exited 10 s later.
//! - `in-process`: the application built inside the bench process, sharing
//!   it with the client. Only here can the bench count the server's durable
//!   commits.
//!
//! How the client learns that a run ended (`--subscribe`), over one
//! WebSocket:
//! - `per-run` (default): once `POST /api/runs` answered, `subscribe` to
//!   the run with `after: 0` (the catch-up from the log delivers the
//!   terminal event of a run that already ended), `unsubscribe` after.
//! - `all`: one `subscribe_all` before the first run.
//!
//! Who runs the steps (`--agents`):
//! - `in-process` (default): the built-in `echo` agent in the server.
//! - `remote-echo`, `remote-exec`: the remote agent `w1` (declared in a
//!   generated configuration file with a random worker token), served by
//!   `--workers` `runlog worker` processes, each running
//!   `--worker-concurrency` tasks at a time: `--echo` (each task completes
//!   with its inputs, no program runs) or `--exec /bin/sh` (a trivial
//!   program per task). They are stopped after the repetition (SIGTERM,
//!   SIGKILL after 15 s; a clean stop waits for the claim in flight, up to
//!   10 s).
//!
//! Workloads (`--scenario`):
//! - `w1` (default): the diamond A → {B, C} → D.
//!   - L: `--latency-runs` runs one after another (after 20 warm-up runs);
//!     p50 / p99 from sending the POST to receiving the run's
//!     `RunCompleted`.
//!   - T: `--throughput-runs` runs with `--concurrency` in flight; runs/s,
//!     and the median times to the POST's answer and to completion.
//!   - Durable commits per run: write transactions the server committed
//!     during T, divided by T's runs (in-process server only, else n/a).
//!   - With remote agents, per-step overheads from the log of up to 300 of
//!     T's runs: `StepDispatched` → `StepClaimed` and `StepClaimed` →
//!     `StepCompleted` (their `recorded_at`, milliseconds), p50 / p99.
//! - `stall`: how responsive the engine stays while in-process agents
//!   spin. 30 samples of the time to the answer of `POST /api/runs` (a
//!   one-step echo run) and 30 of `POST /api/runs/{id}/cancel` (of a fresh
//!   run whose echo step waits 60 s), first with nothing else running, then
//!   while two runs of a `template` step that loops until its fuel runs out
//!   spin; p50 and max of each, and how the spinners ended (they should
//!   fail, out of fuel). The L/T flags do not apply.
//! - `rebuild`: see `bench/rebuild.rs`.
//! - `slow-readers`: `--slow-readers` WebSocket clients that stop reading
//!   while `--flood-messages` events flow, against a server with the
//!   outbound queue bounded and one without; its memory at each stage
//!   (`bench/slow_readers.rs`).
//!
//! The section key names the backend and the modes: `sqlite`, `postgres`,
//! `stall-sqlite`, then `-no-comments`, `-remote-echo` / `-remote-exec`,
//! and `-in-process` / `-subscribe-all` only for those non-default modes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::rt::time::{sleep, timeout};
use clap::{Args, ValueEnum};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

mod rebuild;
mod slow_readers;

use crate::app::Application;
use crate::config::ServeSettings;

type BenchError = Box<dyn std::error::Error>;
type BenchResult<T> = Result<T, BenchError>;

const DEFAULT_LATENCY_RUNS: usize = 200;
const DEFAULT_THROUGHPUT_RUNS: usize = 1000;
const DEFAULT_CONCURRENCY: usize = 32;
const DEFAULT_REPEAT: usize = 5;
const DEFAULT_REBUILD_EVENTS: u64 = 1_000_000;
const DEFAULT_CATCH_UP_EVENTS: u64 = 100_000;
const DEFAULT_WORKERS: usize = 4;
const DEFAULT_WORKER_CONCURRENCY: usize = 1;
const DEFAULT_SLOW_READERS: usize = 1_000;
const DEFAULT_FLOOD_MESSAGES: usize = 5_000;
/// W1 runs before L, not measured.
const WARM_UP_RUNS: usize = 20;
/// Most of T's runs whose logs give the per-step overheads.
const OVERHEAD_RUNS: usize = 300;
/// Samples of each kind in each phase of the stall scenario.
const STALL_SAMPLES: usize = 30;
/// Spinning template runs in the stall scenario.
const SPINNERS: usize = 2;
/// A rendering of 150 million loop iterations: far more than the default
/// fuel allows, so it fails once the fuel runs out.
const SPIN_TEXT: &str =
    "{% for i in range(100000) %}{% for j in range(1500) %}{% endfor %}{% endfor %}";
/// The program each task runs with `--agents remote-exec`.
const EXEC_SCRIPT: &str = "cat >/dev/null; echo {}";
/// How long the server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped server has between SIGTERM and SIGKILL.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long stopped workers have between SIGTERM and SIGKILL.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(15);
/// How long one run may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the benchmarked server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServerMode {
    /// `runlog serve` in its own process, started by the bench.
    Process,
    /// The application inside the bench process.
    InProcess,
}

/// How the client learns that a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SubscribeMode {
    /// Subscribe to each run (`after: 0`) once its POST answered.
    PerRun,
    /// One `subscribe_all` for every run.
    All,
}

/// Who runs the W1 steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AgentsMode {
    /// The built-in echo agent, in the server.
    InProcess,
    /// Remote workers (`runlog worker --echo`): each task completes with its
    /// inputs.
    RemoteEcho,
    /// Remote workers (`runlog worker --exec /bin/sh`): a trivial program
    /// per task.
    RemoteExec,
}

/// The workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The W1 diamond: latency, throughput, commits, per-step overheads.
    W1,
    /// Start and cancel response times while in-process agents spin.
    Stall,
    /// `runlog projections rebuild` over a big log, and a server's start
    /// with its read models behind (`--events`, `--catch-up-events`).
    Rebuild,
    /// WebSocket clients that stop reading: the server's memory with the
    /// outbound queue bounded and without (`--slow-readers`,
    /// `--flood-messages`).
    SlowReaders,
}

/// Benchmark settings.
#[derive(Debug, Clone, Args)]
pub struct BenchSettings {
    /// PostgreSQL server to benchmark on (a fresh database is created for
    /// each repetition); default: SQLite in a temp directory.
    #[arg(long, env = "RUNLOG_BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The workload.
    #[arg(long, value_enum, default_value_t = Scenario::W1)]
    pub scenario: Scenario,
    /// Where the server runs: its own process (`runlog serve`) or the bench
    /// process.
    #[arg(long, value_enum, default_value_t = ServerMode::Process)]
    pub server: ServerMode,
    /// How the client learns of run completions over its WebSocket.
    #[arg(long, value_enum, default_value_t = SubscribeMode::PerRun)]
    pub subscribe: SubscribeMode,
    /// Who runs W1's steps.
    #[arg(long, value_enum, default_value_t = AgentsMode::InProcess)]
    pub agents: AgentsMode,
    /// Remote worker processes (with `--agents remote-*`).
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    pub workers: usize,
    /// Tasks each remote worker runs at once.
    #[arg(long, default_value_t = DEFAULT_WORKER_CONCURRENCY)]
    pub worker_concurrency: usize,
    /// Runs for the latency phase (one after another).
    #[arg(long, default_value_t = DEFAULT_LATENCY_RUNS)]
    pub latency_runs: usize,
    /// Runs for the throughput phase.
    #[arg(long, default_value_t = DEFAULT_THROUGHPUT_RUNS)]
    pub throughput_runs: usize,
    /// Runs in flight during the throughput phase.
    #[arg(long, default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Repetitions; the report gives medians.
    #[arg(long, default_value_t = DEFAULT_REPEAT)]
    pub repeat: usize,
    /// Markdown file to write the results into (between markers).
    #[arg(long, default_value = "docs/benchmarks.md")]
    pub output: PathBuf,
    /// Print the results only; do not write the file.
    #[arg(long)]
    pub no_write: bool,
    /// Run the server with accounts off (`serve --no-auth`), so that
    /// clients send no token: to measure what authentication costs.
    #[arg(long)]
    pub no_auth: bool,
    /// Run W1 with the built-in agents' start/finish comments off
    /// (`"comments": false`), as the engine ran before the thread existed.
    #[arg(long)]
    pub no_agent_comments: bool,
    /// W1 on several nodes: this many `runlog serve` processes on one
    /// PostgreSQL database; runs go round-robin across them, each started
    /// and followed on the node it goes to (workers too are spread).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// --scenario rebuild: events to fill the log with.
    #[arg(long, default_value_t = DEFAULT_REBUILD_EVENTS)]
    pub events: u64,
    /// --scenario rebuild: events the read models are set behind by before
    /// the timed start.
    #[arg(long, default_value_t = DEFAULT_CATCH_UP_EVENTS)]
    pub catch_up_events: u64,
    /// --scenario slow-readers: WebSocket clients that stop reading.
    #[arg(long, default_value_t = DEFAULT_SLOW_READERS)]
    pub slow_readers: usize,
    /// --scenario slow-readers: messages posted while they do not read.
    #[arg(long, default_value_t = DEFAULT_FLOOD_MESSAGES)]
    pub flood_messages: usize,
}

/// Refuses settings that make no sense together.
fn check(settings: &BenchSettings) -> BenchResult<()> {
    let at_least_one = [
        ("--workers", settings.workers),
        ("--worker-concurrency", settings.worker_concurrency),
        ("--latency-runs", settings.latency_runs),
        ("--throughput-runs", settings.throughput_runs),
        ("--concurrency", settings.concurrency),
        ("--nodes", settings.nodes),
        ("--slow-readers", settings.slow_readers),
        ("--flood-messages", settings.flood_messages),
    ];
    for (flag, value) in at_least_one {
        if value == 0 {
            return Err(format!("{flag} must be at least 1").into());
        }
    }
    let remote = settings.agents != AgentsMode::InProcess;
    if remote && settings.no_agent_comments {
        return Err(
            "--no-agent-comments applies to the in-process echo agent only \
                    (remote workers post no comments)"
                .into(),
        );
    }
    if settings.scenario == Scenario::Stall {
        if remote {
            return Err("--scenario stall uses in-process agents; drop --agents".into());
        }
        if settings.subscribe != SubscribeMode::PerRun {
            return Err("--scenario stall uses no subscription; drop --subscribe".into());
        }
        if settings.no_agent_comments {
            return Err("--no-agent-comments does not apply to --scenario stall".into());
        }
    }
    if settings.scenario == Scenario::Rebuild
        && (remote || settings.server != ServerMode::Process || settings.no_agent_comments)
    {
        return Err(
            "--scenario rebuild runs the server in its own process with in-process \
                    agents; drop --agents, --server and --no-agent-comments"
                .into(),
        );
    }
    if settings.scenario == Scenario::SlowReaders
        && (remote
            || settings.server != ServerMode::Process
            || settings.no_agent_comments
            || settings.no_auth
            || settings.subscribe != SubscribeMode::PerRun)
    {
        return Err(
            "--scenario slow-readers runs the server in its own process with accounts on; \
             drop --agents, --server, --subscribe, --no-auth and --no-agent-comments"
                .into(),
        );
    }
    if settings.scenario == Scenario::Rebuild && settings.catch_up_events >= settings.events {
        return Err("--catch-up-events must be below --events".into());
    }
    if settings.nodes > 1
        && (settings.database_url.is_none()
            || settings.server != ServerMode::Process
            || settings.scenario != Scenario::W1)
    {
        return Err(
            "--nodes above 1 runs W1 on servers in their own processes on one PostgreSQL: \
             give --database-url, and drop --server and --scenario"
                .into(),
        );
    }
    if settings.agents == AgentsMode::RemoteExec && !Path::new("/bin/sh").exists() {
        return Err("--agents remote-exec needs /bin/sh".into());
    }
    Ok(())
}

/// A mode's name on the command line.
fn flag_value<T: ValueEnum>(value: &T) -> String {
    value
        .to_possible_value()
        .map_or_else(String::new, |v| v.get_name().to_string())
}

/// The marker key of the section these settings write.
fn section_key(settings: &BenchSettings) -> String {
    let backend = if settings.database_url.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let mut key = match settings.scenario {
        Scenario::W1 => backend.to_string(),
        Scenario::Stall => format!("stall-{backend}"),
        Scenario::Rebuild => format!("rebuild-{backend}"),
        Scenario::SlowReaders => format!("slow-readers-{backend}"),
    };
    if settings.no_agent_comments {
        key.push_str("-no-comments");
    }
    if settings.agents != AgentsMode::InProcess {
        key.push('-');
        key.push_str(&flag_value(&settings.agents));
    }
    if settings.server == ServerMode::InProcess {
        key.push_str("-in-process");
    }
    if settings.subscribe == SubscribeMode::All {
        key.push_str("-subscribe-all");
    }
    if settings.nodes > 1 {
        key.push_str(&format!("-nodes-{}", settings.nodes));
    }
    key
}

/// The command that reproduces the measurement (no credentials, no host).
fn command_line(settings: &BenchSettings) -> String {
    let mut flags = String::new();
    if let Some(url) = &settings.database_url {
        // Credentials and host stay out of the report; options stay in.
        let query = url
            .split_once('?')
            .map_or(String::new(), |(_, q)| format!("?{q}"));
        flags.push_str(&format!(" --database-url 'postgres://…{query}'"));
    }
    if settings.scenario != Scenario::W1 {
        flags.push_str(&format!(" --scenario {}", flag_value(&settings.scenario)));
    }
    if settings.server != ServerMode::Process {
        flags.push_str(&format!(" --server {}", flag_value(&settings.server)));
    }
    if settings.subscribe != SubscribeMode::PerRun {
        flags.push_str(&format!(" --subscribe {}", flag_value(&settings.subscribe)));
    }
    if settings.nodes > 1 {
        flags.push_str(&format!(" --nodes {}", settings.nodes));
    }
    if settings.agents != AgentsMode::InProcess {
        flags.push_str(&format!(" --agents {}", flag_value(&settings.agents)));
        if settings.workers != DEFAULT_WORKERS {
            flags.push_str(&format!(" --workers {}", settings.workers));
        }
        if settings.worker_concurrency != DEFAULT_WORKER_CONCURRENCY {
            flags.push_str(&format!(
                " --worker-concurrency {}",
                settings.worker_concurrency
            ));
        }
    }
    if settings.scenario == Scenario::W1 {
        let counts = [
            (
                "--latency-runs",
                settings.latency_runs,
                DEFAULT_LATENCY_RUNS,
            ),
            (
                "--throughput-runs",
                settings.throughput_runs,
                DEFAULT_THROUGHPUT_RUNS,
            ),
            ("--concurrency", settings.concurrency, DEFAULT_CONCURRENCY),
        ];
        for (flag, value, default) in counts {
            if value != default {
                flags.push_str(&format!(" {flag} {value}"));
            }
        }
    }
    if settings.scenario == Scenario::Rebuild {
        if settings.events != DEFAULT_REBUILD_EVENTS {
            flags.push_str(&format!(" --events {}", settings.events));
        }
        if settings.catch_up_events != DEFAULT_CATCH_UP_EVENTS {
            flags.push_str(&format!(" --catch-up-events {}", settings.catch_up_events));
        }
    }
    if settings.scenario == Scenario::SlowReaders {
        if settings.slow_readers != DEFAULT_SLOW_READERS {
            flags.push_str(&format!(" --slow-readers {}", settings.slow_readers));
        }
        if settings.flood_messages != DEFAULT_FLOOD_MESSAGES {
            flags.push_str(&format!(" --flood-messages {}", settings.flood_messages));
        }
    }
    if settings.repeat != DEFAULT_REPEAT {
        flags.push_str(&format!(" --repeat {}", settings.repeat));
    }
    if settings.no_agent_comments {
        flags.push_str(" --no-agent-comments");
    }
    let release = if cfg!(debug_assertions) {
        ""
    } else {
        " --release"
    };
    format!("cargo run{release} -- bench{flags}")
}

// ---------------------------------------------------------------------------
// Child processes: the server and the workers.

/// A child process of the bench: killed (SIGKILL) when dropped unstopped.
struct Spawned {
    name: String,
    child: std::process::Child,
    log: PathBuf,
    /// The thread copying its stderr into `log` (the server only).
    reader: Option<std::thread::JoinHandle<()>>,
    reaped: bool,
}

/// How a child stopped.
struct Stopped {
    took: Duration,
    killed: bool,
    status: Option<ExitStatus>,
}

impl Spawned {
    fn terminate(&self) {
        use nix::sys::signal::{kill, Signal};
        if self.reaped {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// Its exit status, if it has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.reaped = true;
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits for it to exit until `deadline`, then kills it.
    async fn wait_until(&mut self, since: Instant, deadline: Instant) -> Stopped {
        loop {
            if let Some(status) = self.exited() {
                return Stopped {
                    took: since.elapsed(),
                    killed: false,
                    status: Some(status),
                };
            }
            if self.reaped || Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.reaped = true;
        Stopped {
            took: since.elapsed(),
            killed: true,
            status,
        }
    }

    /// Waits (briefly) for the stderr thread, which ends once the process
    /// has exited.
    async fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !reader.is_finished() && Instant::now() < deadline {
                sleep(Duration::from_millis(10)).await;
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What to say about a child's stop, if anything is worth saying.
fn stop_note(name: &str, stopped: &Stopped, grace: Duration) -> Option<String> {
    if stopped.killed {
        return Some(format!(
            "{name} had not exited {:.0} s after SIGTERM: killed (SIGKILL)",
            grace.as_secs_f64()
        ));
    }
    match stopped.status {
        Some(status) if !status.success() => {
            Some(format!("{name} exited with {status} after SIGTERM"))
        }
        _ => None,
    }
}

/// A command for this executable, with none of the bench's `RUNLOG_*`
/// settings leaking into the child.
fn own_command(args: &[&str]) -> BenchResult<Command> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this executable: {e}"))?;
    let mut command = Command::new(exe);
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if name.starts_with("RUNLOG_") || name == "RUST_LOG" {
                command.env_remove(name);
            }
        }
    }
    command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Ok(command)
}

/// Removes ANSI escape sequences (in case colours are on regardless).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The port in a `runlog listening port=NNNN backend=…` line.
fn listening_port(line: &str) -> Option<u16> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("port="))
        .and_then(|port| {
            port.trim_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        })
}

/// Copies the server's stderr into `log` line by line, and sends the port
/// once the server says it listens.
fn drain_server_log(stderr: std::process::ChildStderr, mut log: File, port: oneshot::Sender<u16>) {
    let mut port = Some(port);
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = strip_ansi(&String::from_utf8_lossy(&line));
        let _ = log.write_all(text.as_bytes());
        if port.is_some() && text.contains("runlog listening") {
            if let (Some(number), Some(sender)) = (listening_port(&text), port.take()) {
                let _ = sender.send(number);
            }
        }
    }
    let _ = log.flush();
}

/// The server under test.
enum Server {
    InProcess {
        stop: oneshot::Sender<()>,
        task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    },
    Process(Spawned),
}

/// The API token the benchmark's clients send: the first admin's, which
/// the server it started wrote to its data directory.
static TOKEN: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn bench_token() -> Option<String> {
    TOKEN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Starts the server; returns it and its port (and remembers the token
/// its clients send).
async fn start_server(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    config: Option<PathBuf>,
    node: usize,
) -> BenchResult<(Server, u16)> {
    let started = start_server_only(settings, dir, database_url, config, node).await?;
    if settings.no_auth {
        return Ok(started);
    }
    let path = dir.join("data").join(crate::app::ADMIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&path)
        .map_err(|e| format!("reading the admin token {}: {e}", path.display()))?;
    *TOKEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.trim().to_string());
    Ok(started)
}

async fn start_server_only(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    config: Option<PathBuf>,
    node: usize,
) -> BenchResult<(Server, u16)> {
    let data_dir = dir.join("data");
    match settings.server {
        ServerMode::InProcess => {
            let mut serve = ServeSettings::ephemeral(data_dir, database_url);
            serve.passivate_after_secs = 2;
            serve.config = config;
            serve.no_auth = settings.no_auth;
            let app = Application::build(serve)
                .await
                .map_err(|e| format!("starting the server in process: {e}"))?;
            let port = app.port();
            let (stop, stopped) = oneshot::channel::<()>();
            let task = actix_web::rt::spawn(app.run_until_stopped(async move {
                let _ = stopped.await;
            }));
            Ok((Server::InProcess { stop, task }, port))
        }
        ServerMode::Process => {
            let mut command = own_command(&["serve", "--bind", "127.0.0.1:0", "--data-dir"])?;
            command.arg(&data_dir);
            if let Some(url) = &database_url {
                command.arg("--database-url").arg(url);
            }
            if let Some(config) = &config {
                command.arg("--config").arg(config);
            }
            if settings.no_auth {
                command.arg("--no-auth");
            }
            command
                .args(["--passivate-after-secs", "2"])
                .env("RUNLOG_LOG", "info")
                .stderr(Stdio::piped());
            let log = if settings.nodes > 1 {
                command.args(["--node-id", &format!("bench-{node}")]);
                dir.join(format!("server-{node}.log"))
            } else {
                dir.join("server.log")
            };
            let file =
                File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
            let mut child = command
                .spawn()
                .map_err(|e| format!("starting runlog serve: {e}"))?;
            let stderr = child.stderr.take();
            let mut server = Spawned {
                name: if settings.nodes > 1 {
                    format!("node bench-{node}")
                } else {
                    "the server".into()
                },
                child,
                log: log.clone(),
                reader: None,
                reaped: false,
            };
            let stderr = stderr.ok_or("runlog serve has no stderr pipe")?;
            let (port_tx, port_rx) = oneshot::channel();
            server.reader = Some(
                std::thread::Builder::new()
                    .name("bench-server-log".into())
                    .spawn(move || drain_server_log(stderr, file, port_tx))
                    .map_err(|e| format!("starting the server log thread: {e}"))?,
            );
            match timeout(START_TIMEOUT, port_rx).await {
                Ok(Ok(port)) => Ok((Server::Process(server), port)),
                Ok(Err(_)) => {
                    // Its stderr closed before it listened: it has exited.
                    let since = Instant::now();
                    let stopped = server
                        .wait_until(since, since + Duration::from_secs(2))
                        .await;
                    let status = stopped
                        .status
                        .map_or_else(|| "unknown status".into(), |s| s.to_string());
                    Err(format!(
                        "runlog serve exited ({status}) before listening; its log: {}",
                        log.display()
                    )
                    .into())
                }
                Err(_) => Err(format!(
                    "runlog serve did not listen within {} s; its log: {}",
                    START_TIMEOUT.as_secs(),
                    log.display()
                )
                .into()),
            }
        }
    }
}

/// Starts the remote workers.
fn start_workers(
    settings: &BenchSettings,
    dir: &Path,
    ports: &[u16],
    token: &str,
) -> BenchResult<Vec<Spawned>> {
    let concurrency = settings.worker_concurrency.to_string();
    let mut workers = Vec::with_capacity(settings.workers);
    for i in 1..=settings.workers {
        // Spread over the nodes.
        let server = format!("http://127.0.0.1:{}", ports[(i - 1) % ports.len()]);
        let id = format!("bench-{i}");
        let mut command = own_command(&[
            "worker",
            "--server",
            &server,
            "--agent",
            "w1",
            "--concurrency",
            &concurrency,
            "--worker-id",
            &id,
        ])?;
        match settings.agents {
            AgentsMode::RemoteExec => {
                command.args(["--exec", "/bin/sh", "--", "-c", EXEC_SCRIPT]);
            }
            _ => {
                command.arg("--echo");
            }
        }
        let log = dir.join(format!("worker-{i}.log"));
        let file = File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        command
            .env("RUNLOG_WORKER_TOKEN", token)
            .env("RUNLOG_LOG", "warn")
            .stderr(file);
        let child = command
            .spawn()
            .map_err(|e| format!("starting runlog worker {id}: {e}"))?;
        workers.push(Spawned {
            name: format!("worker {id}"),
            child,
            log,
            reader: None,
            reaped: false,
        });
    }
    Ok(workers)
}

/// The processes (and in-process server) of one repetition.
#[derive(Default)]
struct Processes {
    server: Option<Server>,
    /// The other nodes (`--nodes`).
    more_servers: Vec<Server>,
    workers: Vec<Spawned>,
}

impl Processes {
    /// Workers that have already exited, for an error message.
    fn dead_workers(&mut self) -> Vec<String> {
        self.workers
            .iter_mut()
            .filter_map(|w| {
                w.exited()
                    .map(|s| format!("{} exited ({s}); its log: {}", w.name, w.log.display()))
            })
            .collect()
    }

    /// Stops the workers, then the server; returns what was odd.
    async fn stop(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.workers.is_empty() {
            let since = Instant::now();
            let mut running = Vec::new();
            for worker in &mut self.workers {
                match worker.exited() {
                    Some(status) => {
                        notes.push(format!("{} had already exited ({status})", worker.name));
                    }
                    None => {
                        worker.terminate();
                        running.push(worker);
                    }
                }
            }
            let deadline = since + WORKER_STOP_GRACE;
            for worker in running {
                let stopped = worker.wait_until(since, deadline).await;
                notes.extend(stop_note(&worker.name, &stopped, WORKER_STOP_GRACE));
            }
            let took = since.elapsed();
            if took > Duration::from_secs(2) {
                notes.push(format!(
                    "the workers took {:.1} s to stop after SIGTERM (a claim in flight long-polls up to 10 s)",
                    took.as_secs_f64()
                ));
            }
        }
        let servers: Vec<Server> = self
            .server
            .take()
            .into_iter()
            .chain(self.more_servers.drain(..))
            .collect();
        for server in servers {
            notes.extend(stop_server(server).await);
        }
        for worker in &self.workers {
            notes.extend(log_findings(&worker.log, true));
        }
        notes
    }
}

/// Stops one server; returns what was odd.
async fn stop_server(server: Server) -> Vec<String> {
    let mut notes = Vec::new();
    match server {
        Server::InProcess { stop, task } => {
            let since = Instant::now();
            let _ = stop.send(());
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => notes.push(format!("the server stopped with an error: {e}")),
                Err(e) => notes.push(format!("the server task failed: {e}")),
            }
            if since.elapsed() > Duration::from_secs(2) {
                notes.push(format!(
                    "the server took {:.1} s to stop",
                    since.elapsed().as_secs_f64()
                ));
            }
        }
        Server::Process(mut server) => {
            let since = Instant::now();
            if let Some(status) = server.exited() {
                notes.push(format!("the server had already exited ({status})"));
            } else {
                server.terminate();
                let stopped = server.wait_until(since, since + SERVER_STOP_GRACE).await;
                notes.extend(stop_note(&server.name, &stopped, SERVER_STOP_GRACE));
                if !stopped.killed && stopped.took > Duration::from_secs(2) {
                    notes.push(format!(
                        "the server took {:.1} s to stop after SIGTERM",
                        stopped.took.as_secs_f64()
                    ));
                }
            }
            server.join_reader().await;
            notes.extend(log_findings(&server.log, false));
        }
    }
    notes
}

/// Warnings and errors in a child's log (`every_line`: a log at `warn`,
/// where every line is one).
fn log_findings(path: &Path, every_line: bool) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let found: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.trim();
            !l.is_empty()
                && (every_line
                    || l.contains(" WARN ")
                    || l.contains(" ERROR ")
                    || l.contains("panicked"))
        })
        .collect();
    if found.is_empty() {
        return None;
    }
    let first: Vec<&str> = found.iter().take(3).copied().collect();
    Some(format!(
        "{} has {} warning/error line(s), e.g.:\n      {}",
        path.display(),
        found.len(),
        first.join("\n      ")
    ))
}

// ---------------------------------------------------------------------------
// The client.

async fn post(client: &awc::Client, url: &str, body: &Value) -> Result<Value, String> {
    call(client, awc::http::Method::POST, url, Some(body)).await
}

async fn get(client: &awc::Client, url: &str) -> Result<Value, String> {
    call(client, awc::http::Method::GET, url, None).await
}

/// One JSON request; a non-2xx answer is an error naming the call.
async fn call(
    client: &awc::Client,
    method: awc::http::Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let what = format!("{method} {url}");
    let mut request = client.request(method, url);
    if body.is_some() {
        request = request.insert_header(("content-type", "application/json"));
    }
    let mut response = request
        .send_body(body.map(Value::to_string).unwrap_or_default())
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let bytes = response
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "{what}: {} {}",
            response.status(),
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{what}: {e}"))
}

fn http_client() -> awc::Client {
    let mut client = awc::Client::builder().timeout(Duration::from_secs(60));
    if let Some(token) = bench_token() {
        client = client.add_default_header(("authorization", format!("Bearer {token}")));
    }
    client.finish()
}

/// Creates a template; returns its id.
async fn create_template(
    client: &awc::Client,
    base: &str,
    name: &str,
    definition: Value,
) -> Result<Value, String> {
    let template = post(
        client,
        &format!("{base}/api/templates"),
        &json!({"name": name, "definition": definition}),
    )
    .await?;
    Ok(template["id"].clone())
}

/// Starts a run; returns its id.
async fn start_run(client: &awc::Client, base: &str, template: &Value) -> Result<String, String> {
    let run = post(
        client,
        &format!("{base}/api/runs"),
        &json!({"template_id": template, "input": {"n": 1}}),
    )
    .await?;
    run["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("POST /api/runs answered without an id: {run}"))
}

/// Where terminal events go.
#[derive(Default)]
struct Routing {
    /// Runs someone waits for.
    waiting: HashMap<String, oneshot::Sender<String>>,
    /// Runs that ended before anyone waited (`subscribe_all` only).
    early: HashMap<String, String>,
    /// The first error messages the server sent.
    errors: Vec<String>,
    /// The WebSocket has closed.
    closed: bool,
}

/// Learns of run completions over one WebSocket.
struct Completions {
    mode: SubscribeMode,
    routing: Rc<RefCell<Routing>>,
    outgoing: mpsc::UnboundedSender<awc::ws::Message>,
}

impl Completions {
    async fn connect(port: u16, mode: SubscribeMode) -> BenchResult<Self> {
        let (_, mut framed) = http_client()
            .ws(format!("ws://127.0.0.1:{port}/api/ws"))
            .max_frame_size(16 * 1024 * 1024)
            .connect()
            .await
            .map_err(|e| format!("websocket connect: {e}"))?;
        if mode == SubscribeMode::All {
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
        }
        let (mut sink, mut stream) = framed.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<awc::ws::Message>();
        actix_web::rt::spawn(async move {
            while let Some(message) = queue.recv().await {
                let close = matches!(message, awc::ws::Message::Close(_));
                if sink.send(message).await.is_err() || close {
                    break;
                }
            }
        });
        let routing: Rc<RefCell<Routing>> = Rc::default();
        let (reading, pong) = (routing.clone(), outgoing.clone());
        actix_web::rt::spawn(async move {
            while let Some(Ok(frame)) = stream.next().await {
                match frame {
                    awc::ws::Frame::Text(bytes) => route(&reading, mode, &bytes),
                    awc::ws::Frame::Ping(bytes) => {
                        let _ = pong.send(awc::ws::Message::Pong(bytes));
                    }
                    awc::ws::Frame::Close(_) => break,
                    _ => {}
                }
            }
            let mut routing = reading.borrow_mut();
            routing.closed = true;
            // Dropping the senders wakes whoever still waits.
            routing.waiting.clear();
        });
        Ok(Self {
            mode,
            routing,
            outgoing,
        })
    }

    fn send(&self, message: &Value) -> Result<(), String> {
        self.outgoing
            .send(awc::ws::Message::Text(message.to_string().into()))
            .map_err(|_| "the WebSocket writer has stopped".to_string())
    }

    /// Waits until the run ends; returns its terminal event type.
    async fn wait(&self, run: &str) -> Result<String, String> {
        let receiver = {
            let mut routing = self.routing.borrow_mut();
            if routing.closed {
                return Err(format!("the WebSocket closed{}", errors(&routing)));
            }
            let (sender, receiver) = oneshot::channel();
            match routing.early.remove(run) {
                Some(kind) => {
                    let _ = sender.send(kind);
                }
                None => {
                    routing.waiting.insert(run.to_string(), sender);
                }
            }
            receiver
        };
        if self.mode == SubscribeMode::PerRun {
            self.send(&json!({"type": "subscribe", "run_id": run, "after": 0}))?;
        }
        let outcome = timeout(RUN_TIMEOUT, receiver).await;
        if self.mode == SubscribeMode::PerRun {
            let _ = self.send(&json!({"type": "unsubscribe", "run_id": run}));
        }
        let mut routing = self.routing.borrow_mut();
        match outcome {
            Ok(Ok(kind)) => Ok(kind),
            Ok(Err(_)) => Err(format!(
                "the WebSocket closed while run {run} was running{}",
                errors(&routing)
            )),
            Err(_) => {
                routing.waiting.remove(run);
                Err(format!(
                    "run {run} did not finish within {} s{}",
                    RUN_TIMEOUT.as_secs(),
                    errors(&routing)
                ))
            }
        }
    }

    /// Closes the WebSocket (a server stopping gracefully waits for open
    /// connections).
    fn close(&self) {
        let _ = self.outgoing.send(awc::ws::Message::Close(None));
    }
}

/// The server's error messages so far, for an error message.
fn errors(routing: &Routing) -> String {
    if routing.errors.is_empty() {
        String::new()
    } else {
        format!(
            " (the server sent on the WebSocket: {})",
            routing.errors.join("; ")
        )
    }
}

/// Routes one message from the server.
fn route(routing: &RefCell<Routing>, mode: SubscribeMode, bytes: &[u8]) {
    let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    match message["type"].as_str() {
        Some("event") => {
            let kind = message["event_type"].as_str().unwrap_or_default();
            if kind != "RunCompleted" && kind != "RunFailed" {
                return;
            }
            let run = message["run_id"].as_str().unwrap_or_default().to_string();
            let mut routing = routing.borrow_mut();
            match routing.waiting.remove(&run) {
                Some(waiter) => {
                    let _ = waiter.send(kind.to_string());
                }
                None if mode == SubscribeMode::All => {
                    routing.early.insert(run, kind.to_string());
                }
                None => {}
            }
        }
        Some("error") => {
            let mut routing = routing.borrow_mut();
            if routing.errors.len() < 5 {
                routing.errors.push(message.to_string());
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------
// W1.

/// One repetition's W1 figures.
#[derive(Debug, Clone, Copy)]
struct Figures {
    p50_ms: f64,
    p99_ms: f64,
    throughput: f64,
    /// Only countable with the server in this process.
    commits_per_run: Option<f64>,
    /// Median time to the POST's answer during T.
    t_post_ms: f64,
    /// Median time to completion during T.
    t_run_ms: f64,
    /// Remote agents only.
    overheads: Option<Overheads>,
}

/// Per-step overheads of remote agents, from the log.
#[derive(Debug, Clone, Copy)]
struct Overheads {
    claim_p50_ms: f64,
    claim_p99_ms: f64,
    complete_p50_ms: f64,
    complete_p99_ms: f64,
    runs: usize,
    steps: usize,
}

/// The W1 diamond: A → {B, C} → D. In-process: all `echo` with no delay
/// (with `comments` off, the agents post nothing to the thread); remote:
/// the agent `w1`.
fn diamond(agents: AgentsMode, comments: bool) -> Value {
    if agents != AgentsMode::InProcess {
        return json!({"steps": {
            "a": {"agent": "w1"},
            "b": {"agent": "w1", "depends_on": ["a"]},
            "c": {"agent": "w1", "depends_on": ["a"]},
            "d": {"agent": "w1", "depends_on": ["b", "c"]}
        }});
    }
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

/// How long one run took: until the POST answered, and until it completed.
#[derive(Debug, Clone)]
struct Timing {
    id: String,
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
    let id = run["id"]
        .as_str()
        .ok_or_else(|| format!("POST {url} answered without an id: {run}"))?
        .to_string();
    let outcome = completions.wait(&id).await?;
    if outcome != "RunCompleted" {
        return Err(format!("run {id} ended with {outcome}"));
    }
    Ok(Timing {
        id,
        posted,
        completed: started.elapsed(),
    })
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The p-th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(|a, b| a.total_cmp(b));
    values
}

async fn drive_w1(settings: &BenchSettings, ports: &[u16]) -> BenchResult<Figures> {
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let client = http_client();
    let template = create_template(
        &client,
        &base,
        "w1-diamond",
        diamond(settings.agents, !settings.no_agent_comments),
    )
    .await?;
    let body = json!({"template_id": template, "input": {"n": 1}});
    // One WebSocket per node; run i goes to node i mod N, started and
    // followed there.
    let mut nodes = Vec::with_capacity(ports.len());
    for port in ports {
        let url = format!("http://127.0.0.1:{port}/api/runs");
        nodes.push((
            url,
            Rc::new(Completions::connect(*port, settings.subscribe).await?),
        ));
    }
    let node = |i: usize| &nodes[i % nodes.len()];
    // Warm-up: connections, caches, workers' first claims.
    for i in 0..WARM_UP_RUNS {
        let (url, completions) = node(i);
        one_run(&client, completions, url, &body)
            .await
            .map_err(|e| format!("warm-up: {e}"))?;
    }
    let mut latencies = Vec::with_capacity(settings.latency_runs);
    for i in 0..settings.latency_runs {
        let (url, completions) = node(i);
        let timing = one_run(&client, completions, url, &body)
            .await
            .map_err(|e| format!("L: {e}"))?;
        latencies.push(ms(timing.completed));
    }
    let latencies = sorted(latencies);
    let in_process = settings.server == ServerMode::InProcess;
    let commits_before = crate::db::durable_commits();
    let permits = std::sync::Arc::new(Semaphore::new(settings.concurrency));
    let client = Rc::new(client);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(settings.throughput_runs);
    for i in 0..settings.throughput_runs {
        let permit = permits.clone().acquire_owned().await?;
        let (url, completions) = node(i);
        let (client, completions, url, body) = (
            client.clone(),
            completions.clone(),
            url.clone(),
            body.clone(),
        );
        tasks.push(actix_web::rt::spawn(async move {
            let result = one_run(&client, &completions, &url, &body).await;
            drop(permit);
            result
        }));
    }
    let mut timings = Vec::with_capacity(tasks.len());
    for task in tasks {
        timings.push(task.await?.map_err(|e| format!("T: {e}"))?);
    }
    let elapsed = started.elapsed();
    let commits = crate::db::durable_commits() - commits_before;
    let posted = sorted(timings.iter().map(|t| ms(t.posted)).collect());
    let completed = sorted(timings.iter().map(|t| ms(t.completed)).collect());
    let overheads = if settings.agents == AgentsMode::InProcess {
        None
    } else {
        let every = timings.len().div_ceil(OVERHEAD_RUNS).max(1);
        let sample: Vec<&str> = timings
            .iter()
            .step_by(every)
            .take(OVERHEAD_RUNS)
            .map(|t| t.id.as_str())
            .collect();
        Some(step_overheads(&client, &base, &sample).await?)
    };
    for (_, completions) in &nodes {
        completions.close();
    }
    Ok(Figures {
        p50_ms: percentile(&latencies, 50.0),
        p99_ms: percentile(&latencies, 99.0),
        throughput: settings.throughput_runs as f64 / elapsed.as_secs_f64(),
        commits_per_run: in_process.then(|| commits as f64 / settings.throughput_runs as f64),
        t_post_ms: percentile(&posted, 50.0),
        t_run_ms: percentile(&completed, 50.0),
        overheads,
    })
}

/// A run's whole log, page by page.
async fn run_events(client: &awc::Client, base: &str, run: &str) -> Result<Vec<Value>, String> {
    let mut after = 0_i64;
    let mut events = Vec::new();
    loop {
        let page = get(
            client,
            &format!("{base}/api/runs/{run}/events?after={after}&limit=1000"),
        )
        .await?;
        let items = page["items"]
            .as_array()
            .ok_or_else(|| format!("the events of run {run} came without items"))?;
        events.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                after = cursor
                    .parse()
                    .map_err(|_| format!("run {run}: an odd next_cursor {cursor:?}"))?;
            }
            None => break,
        }
    }
    Ok(events)
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn epoch_ms(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Dispatch → claim and claim → complete of every step attempt of `runs`.
async fn step_overheads(client: &awc::Client, base: &str, runs: &[&str]) -> BenchResult<Overheads> {
    let mut to_claim = Vec::new();
    let mut to_complete = Vec::new();
    for run in runs {
        // (step, attempt) → when dispatched, claimed, completed.
        let mut attempts: HashMap<(String, u64), [Option<i64>; 3]> = HashMap::new();
        for event in run_events(client, base, run).await? {
            let slot = match event["event_type"].as_str() {
                Some("StepDispatched") => 0,
                Some("StepClaimed") => 1,
                Some("StepCompleted") => 2,
                _ => continue,
            };
            let step = event["payload"]["step"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let attempt = event["payload"]["attempt"].as_u64().unwrap_or(1);
            let at = event["recorded_at"]
                .as_str()
                .and_then(epoch_ms)
                .ok_or_else(|| {
                    format!(
                        "run {run}: event {} has no valid recorded_at",
                        event["sequence"]
                    )
                })?;
            attempts.entry((step, attempt)).or_default()[slot].get_or_insert(at);
        }
        for [dispatched, claimed, completed] in attempts.into_values() {
            if let (Some(d), Some(c)) = (dispatched, claimed) {
                to_claim.push((c - d) as f64);
            }
            if let (Some(c), Some(f)) = (claimed, completed) {
                to_complete.push((f - c) as f64);
            }
        }
    }
    if to_claim.is_empty() {
        return Err("no StepClaimed in the sampled runs' logs".into());
    }
    let steps = to_claim.len();
    let (to_claim, to_complete) = (sorted(to_claim), sorted(to_complete));
    Ok(Overheads {
        claim_p50_ms: percentile(&to_claim, 50.0),
        claim_p99_ms: percentile(&to_claim, 99.0),
        complete_p50_ms: percentile(&to_complete, 50.0),
        complete_p99_ms: percentile(&to_complete, 99.0),
        runs: runs.len(),
        steps,
    })
}

// ---------------------------------------------------------------------------
// Stall.

/// Start and cancel times of one phase.
#[derive(Debug, Clone, Copy)]
struct Samples {
    start_p50_ms: f64,
    start_max_ms: f64,
    cancel_p50_ms: f64,
    cancel_max_ms: f64,
    /// From sending the cancel to the run reading `cancelled`.
    cancelled_p50_ms: f64,
    cancelled_max_ms: f64,
}

/// How a spinner run ended.
#[derive(Debug, Clone)]
struct SpinnerEnd {
    status: String,
    out_of_fuel: bool,
    /// From its start to its last change (its failure), by the server's
    /// clock.
    spun_s: Option<f64>,
    error: String,
}

/// One repetition's stall figures.
#[derive(Debug, Clone)]
struct StallFigures {
    baseline: Samples,
    spinning: Samples,
    /// How long the spinning phase's samples took.
    sampling_s: f64,
    /// Every spinner run of the phase, in the order they ended.
    spinners: Vec<SpinnerEnd>,
}

impl StallFigures {
    fn spinners_failed(&self) -> bool {
        !self.spinners.is_empty()
            && self
                .spinners
                .iter()
                .all(|s| s.status == "failed" && s.out_of_fuel)
    }
}

async fn stall_samples(
    client: &awc::Client,
    base: &str,
    quick: &Value,
    slow: &Value,
) -> BenchResult<Samples> {
    let mut starts = Vec::with_capacity(STALL_SAMPLES);
    for _ in 0..STALL_SAMPLES {
        let started = Instant::now();
        start_run(client, base, quick).await?;
        starts.push(ms(started.elapsed()));
    }
    let mut cancels = Vec::with_capacity(STALL_SAMPLES);
    let mut cancelled = Vec::with_capacity(STALL_SAMPLES);
    for _ in 0..STALL_SAMPLES {
        let run = start_run(client, base, slow).await?;
        let url = format!("{base}/api/runs/{run}");
        let started = Instant::now();
        post(client, &format!("{url}/cancel"), &json!({})).await?;
        cancels.push(ms(started.elapsed()));
        loop {
            let detail = get(client, &url).await?;
            if detail["status"] == "cancelled" {
                break;
            }
            if started.elapsed() > RUN_TIMEOUT {
                return Err(format!("run {run} was not cancelled within 60 s").into());
            }
            sleep(Duration::from_millis(2)).await;
        }
        cancelled.push(ms(started.elapsed()));
    }
    let (starts, cancels, cancelled) = (sorted(starts), sorted(cancels), sorted(cancelled));
    Ok(Samples {
        start_p50_ms: percentile(&starts, 50.0),
        start_max_ms: percentile(&starts, 100.0),
        cancel_p50_ms: percentile(&cancels, 50.0),
        cancel_max_ms: percentile(&cancels, 100.0),
        cancelled_p50_ms: percentile(&cancelled, 50.0),
        cancelled_max_ms: percentile(&cancelled, 100.0),
    })
}

/// Polls a spinner run until it ends (at most 60 s).
async fn spinner_end(client: &awc::Client, base: &str, run: &str) -> BenchResult<SpinnerEnd> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let detail = get(client, &format!("{base}/api/runs/{run}")).await?;
        let status = detail["status"].as_str().unwrap_or_default().to_string();
        let ended = !matches!(status.as_str(), "queued" | "running" | "paused");
        if ended || Instant::now() >= deadline {
            let error = detail["steps"]["spin"]["error"]
                .as_str()
                .or_else(|| detail["error"].as_str())
                .unwrap_or_default()
                .to_string();
            let spun_s = match (
                detail["created_at"].as_str().and_then(epoch_ms),
                detail["updated_at"].as_str().and_then(epoch_ms),
            ) {
                (Some(from), Some(to)) if ended => Some((to - from) as f64 / 1000.0),
                _ => None,
            };
            return Ok(SpinnerEnd {
                status: if ended {
                    status
                } else {
                    format!("{status} after 60 s")
                },
                out_of_fuel: error.contains("fuel"),
                spun_s,
                error,
            });
        }
        sleep(Duration::from_millis(20)).await;
    }
}

/// Keeps one spinner run in flight until `done`: starts one, waits for its
/// end, starts the next.
async fn keep_spinning(
    client: Rc<awc::Client>,
    base: Rc<String>,
    spinner: Rc<Value>,
    done: Rc<std::cell::Cell<bool>>,
) -> Result<Vec<SpinnerEnd>, String> {
    let mut ends = Vec::new();
    while !done.get() {
        let run = start_run(&client, &base, &spinner).await?;
        ends.push(
            spinner_end(&client, &base, &run)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(ends)
}

async fn drive_stall(port: u16) -> BenchResult<StallFigures> {
    let base = format!("http://127.0.0.1:{port}");
    let client = http_client();
    let spinner = create_template(
        &client,
        &base,
        "spinner",
        json!({"steps": {"spin": {"agent": "template", "config": {"text": SPIN_TEXT}}}}),
    )
    .await?;
    let quick = create_template(
        &client,
        &base,
        "quick",
        json!({"steps": {"quick": {"agent": "echo"}}}),
    )
    .await?;
    let slow = create_template(
        &client,
        &base,
        "slow",
        json!({"steps": {"slow": {"agent": "echo", "config": {"delay_ms": 60000, "stop_early": true}}}}),
    )
    .await?;
    let baseline = stall_samples(&client, &base, &quick, &slow)
        .await
        .map_err(|e| format!("baseline: {e}"))?;
    // The spinners: SPINNERS runs in flight all through the phase, each
    // replaced as soon as its limit ends it.
    let done = Rc::new(std::cell::Cell::new(false));
    let (shared_client, shared_base, shared_spinner) = (
        Rc::new(http_client()),
        Rc::new(base.clone()),
        Rc::new(spinner),
    );
    let keepers: Vec<_> = (0..SPINNERS)
        .map(|_| {
            actix_web::rt::spawn(keep_spinning(
                shared_client.clone(),
                shared_base.clone(),
                shared_spinner.clone(),
                done.clone(),
            ))
        })
        .collect();
    sleep(Duration::from_millis(300)).await;
    let sampling = Instant::now();
    let spinning = stall_samples(&client, &base, &quick, &slow).await;
    let sampling_s = sampling.elapsed().as_secs_f64();
    done.set(true);
    let mut spinners = Vec::new();
    for keeper in keepers {
        spinners.extend(
            keeper
                .await
                .map_err(|e| format!("a spinner keeper panicked: {e}"))??,
        );
    }
    let spinning = spinning.map_err(|e| format!("while spinning: {e}"))?;
    Ok(StallFigures {
        baseline,
        spinning,
        sampling_s,
        spinners,
    })
}

// ---------------------------------------------------------------------------
// Repetitions.

/// What one repetition measured.
enum Measured {
    W1(Figures),
    Stall(StallFigures),
    Rebuild(rebuild::RebuildFigures),
    SlowReaders(slow_readers::SlowFigures),
}

async fn fresh_postgres(base: &str) -> BenchResult<String> {
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions =
        base.parse().map_err(|e| format!("--database-url: {e}"))?;
    let name = format!("runlog_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = options
        .connect()
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
    // The name is generated here, never user input.
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .map_err(|e| format!("creating the benchmark database: {e}"))?;
    Ok(options.database(&name).to_url_lossy().to_string())
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

/// The worker token of the remote modes: the one an in-process server will
/// take from the environment (`RUNLOG_WORKER_TOKEN` overrides the file), or
/// a fresh one.
fn worker_token(settings: &BenchSettings) -> String {
    let inherited = std::env::var("RUNLOG_WORKER_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    match inherited {
        Some(token) if settings.server == ServerMode::InProcess => token,
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Starts what the repetition needs (into `processes`) and measures.
async fn measure(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    processes: &mut Processes,
) -> BenchResult<Measured> {
    if settings.scenario == Scenario::Rebuild {
        return rebuild::drive(settings, dir, database_url, processes)
            .await
            .map(Measured::Rebuild);
    }
    if settings.scenario == Scenario::SlowReaders {
        return slow_readers::drive(settings, dir, database_url, processes)
            .await
            .map(Measured::SlowReaders);
    }
    let remote = settings.agents != AgentsMode::InProcess;
    let token = worker_token(settings);
    let config = if remote {
        let path = dir.join("runlog.toml");
        let text = format!(
            "worker_token = \"{token}\"\n\n[agents.w1]\ndescription = \"W1 benchmark agent\"\n"
        );
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Some(path)
    } else {
        None
    };
    let (server, port) =
        start_server(settings, dir, database_url.clone(), config.clone(), 1).await?;
    processes.server = Some(server);
    let mut ports = vec![port];
    for node in 2..=settings.nodes {
        let (server, port) =
            start_server(settings, dir, database_url.clone(), config.clone(), node).await?;
        processes.more_servers.push(server);
        ports.push(port);
    }
    if remote {
        processes.workers = start_workers(settings, dir, &ports, &token)?;
    }
    let measured = match settings.scenario {
        Scenario::W1 => drive_w1(settings, &ports).await.map(Measured::W1),
        Scenario::Stall => drive_stall(port).await.map(Measured::Stall),
        Scenario::Rebuild | Scenario::SlowReaders => unreachable!("measured above"),
    };
    measured.map_err(|e| {
        let dead = processes.dead_workers();
        if dead.is_empty() {
            e
        } else {
            format!("{e}; {}", dead.join("; ")).into()
        }
    })
}

async fn repetition(settings: &BenchSettings) -> BenchResult<Measured> {
    let database_url = match &settings.database_url {
        Some(base) => Some(fresh_postgres(base).await?),
        None => None,
    };
    let dir = std::env::temp_dir().join(format!("runlog-bench-{}", uuid::Uuid::new_v4().simple()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        if let (Some(base), Some(url)) = (&settings.database_url, &database_url) {
            drop_postgres(base, url).await;
        }
        return Err(format!("creating {}: {e}", dir.display()).into());
    }
    let mut processes = Processes::default();
    let result = measure(settings, &dir, database_url.clone(), &mut processes).await;
    for note in processes.stop().await {
        eprintln!("  note: {note}");
    }
    if let (Some(base), Some(url)) = (&settings.database_url, &database_url) {
        drop_postgres(base, url).await;
    }
    match result {
        Ok(measured) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(measured)
        }
        Err(e) => {
            let logs: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "log"))
                        .map(|p| p.display().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let kept = if logs.is_empty() {
                format!("the repetition's files are kept in {}", dir.display())
            } else {
                format!("logs kept: {}", logs.join(", "))
            };
            Err(format!("{e} ({kept})").into())
        }
    }
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

// ---------------------------------------------------------------------------
// The report.

/// "Measured … on …, … build." and how the server was run.
fn preamble(settings: &BenchSettings) -> String {
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let server = match settings.server {
        ServerMode::Process => {
            "The server ran in its own process (`runlog serve`, started by the bench from the same binary)"
        }
        ServerMode::InProcess => "The server ran inside the bench process, sharing it with the client",
    };
    let server = if settings.nodes > 1 {
        format!(
            "{} `runlog serve` processes (nodes `bench-1` … `bench-{0}`) ran on one PostgreSQL \
             database, each in its own process, with the client's run i going to node i mod {0} \
             (its `POST /api/runs` and its subscription, on that node's WebSocket)",
            settings.nodes
        )
    } else {
        server.to_string()
    };
    format!("Measured {date} on {}, {build} build. {server}", machine())
}

/// How the W1 client and agents worked, in words.
fn w1_method(settings: &BenchSettings) -> String {
    let subscription = match settings.subscribe {
        SubscribeMode::PerRun => {
            "; the client talked to it over loopback HTTP and one WebSocket, subscribing to each run \
             once its `POST /api/runs` answered (`subscribe` with `after: 0`, which catches up from \
             the log) and unsubscribing when it ended."
        }
        SubscribeMode::All => {
            "; the client talked to it over loopback HTTP and one WebSocket following every run \
             (`subscribe_all`)."
        }
    };
    let (n, k) = (settings.workers, settings.worker_concurrency);
    let each = if k == 1 {
        "one task at a time each".to_string()
    } else {
        format!("{k} tasks at a time each")
    };
    let agents = match settings.agents {
        AgentsMode::InProcess if settings.no_agent_comments => {
            "The steps ran on the built-in `echo` agent in the server process, with its start/finish \
             comments off."
                .to_string()
        }
        AgentsMode::InProcess => {
            "The steps ran on the built-in `echo` agent in the server process.".to_string()
        }
        AgentsMode::RemoteEcho => format!(
            "The steps ran on the remote agent `w1`, served by {n} `runlog worker --echo` processes \
             (echo loops: each task completes with its inputs, no program runs), {each}."
        ),
        AgentsMode::RemoteExec => format!(
            "The steps ran on the remote agent `w1`, served by {n} `runlog worker --exec /bin/sh -- -c \
             '{EXEC_SCRIPT}'` processes (one `/bin/sh` per task), {each}."
        ),
    };
    let subscription = if settings.nodes > 1 {
        subscription.replacen(
            "to it over loopback HTTP and one WebSocket",
            "to each node over loopback HTTP and one WebSocket per node",
            1,
        )
    } else {
        subscription.to_string()
    };
    format!("{}{subscription} {agents}", preamble(settings))
}

fn w1_section(settings: &BenchSettings, key: &str, all: &[Figures]) -> String {
    let m = |f: fn(&Figures) -> f64| median(all.iter().map(f).collect());
    let commits = if all.iter().all(|f| f.commits_per_run.is_some()) {
        format!(
            "{:.2}",
            median(all.iter().filter_map(|f| f.commits_per_run).collect())
        )
    } else {
        "n/a (the server runs in its own process)".to_string()
    };
    let mut table = format!(
        "| figure | median of {n} |\n|---|---|\n\
         | L p50 (POST → RunCompleted, {l} runs in sequence) | {p50:.2} ms |\n\
         | L p99 | {p99:.2} ms |\n\
         | T ({t} runs, {c} in flight) | {throughput:.0} runs/s |\n\
         | durable commits per run (during T) | {commits} |\n\
         | during T: median time to the POST's answer / to completion | {t_post:.1} ms / {t_run:.1} ms |\n",
        n = all.len(),
        l = settings.latency_runs,
        t = settings.throughput_runs,
        c = settings.concurrency,
        p50 = m(|f| f.p50_ms),
        p99 = m(|f| f.p99_ms),
        throughput = m(|f| f.throughput),
        t_post = m(|f| f.t_post_ms),
        t_run = m(|f| f.t_run_ms),
    );
    let overheads: Vec<Overheads> = all.iter().filter_map(|f| f.overheads).collect();
    let mut sampled = String::new();
    if !overheads.is_empty() {
        let o = |f: fn(&Overheads) -> f64| median(overheads.iter().map(f).collect());
        table.push_str(&format!(
            "| per step: StepDispatched → StepClaimed, p50 / p99 | {:.1} ms / {:.1} ms |\n\
             | per step: StepClaimed → StepCompleted, p50 / p99 | {:.1} ms / {:.1} ms |\n",
            o(|o| o.claim_p50_ms),
            o(|o| o.claim_p99_ms),
            o(|o| o.complete_p50_ms),
            o(|o| o.complete_p99_ms),
        ));
        let first = overheads[0];
        sampled = format!(
            "\nPer-step overheads: from the `recorded_at` (milliseconds) of each step's events in the \
             logs of {} of T's runs ({} steps) per repetition.\n",
            first.runs, first.steps
        );
    }
    let remote = !overheads.is_empty();
    let each = all
        .iter()
        .map(|f| {
            let mut s = format!("{:.2} / {:.2} / {:.0}", f.p50_ms, f.p99_ms, f.throughput);
            if let Some(o) = f.overheads {
                s.push_str(&format!(
                    " / {:.1} / {:.1}",
                    o.claim_p50_ms, o.complete_p50_ms
                ));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ");
    let legend = if remote {
        "p50 ms / p99 ms / runs/s / dispatch → claim p50 ms / claim → complete p50 ms"
    } else {
        "p50 ms / p99 ms / runs/s"
    };
    format!(
        "### W1 diamond on {key}\n\n{method}\n\
         Command: `{command}`\n\n{table}{sampled}\n\
         Each repetition ({legend}): {each}\n",
        method = w1_method(settings),
        command = command_line(settings),
    )
}

fn stall_section(settings: &BenchSettings, key: &str, all: &[StallFigures]) -> String {
    let m = |f: fn(&StallFigures) -> f64| median(all.iter().map(f).collect());
    let method = format!(
        "{}, on loopback HTTP. Runs of a one-step `template` agent rendering a loop of 150 million \
         iterations (it fails when its fuel runs out) keep in-process agents busy: {SPINNERS} of \
         them in flight all through the phase, each replaced by a new one as soon as it ends. \
         Meanwhile the client takes, one after another, {STALL_SAMPLES} samples of the time until \
         `POST /api/runs` of a one-step `echo` run is answered, then {STALL_SAMPLES} cancels of a \
         fresh run whose `echo` step waits 60 s (`stop_early`): the time until \
         `POST /api/runs/{{id}}/cancel` is answered, and until `GET /api/runs/{{id}}` reads \
         `cancelled` (polled every 2 ms). The baseline takes the same samples before the spinners \
         start; the spinning samples start 300 ms after them.",
        preamble(settings)
    );
    let table = format!(
        "| figure (median of {n} repetitions) | baseline | while {SPINNERS} runs spin |\n|---|---|---|\n\
         | start: POST /api/runs answered, p50 | {:.2} ms | {:.2} ms |\n\
         | start, max | {:.2} ms | {:.2} ms |\n\
         | cancel: POST …/cancel answered, p50 | {:.2} ms | {:.2} ms |\n\
         | cancel answered, max | {:.2} ms | {:.2} ms |\n\
         | cancel: the run reads `cancelled`, p50 | {:.2} ms | {:.2} ms |\n\
         | run reads `cancelled`, max | {:.2} ms | {:.2} ms |\n",
        m(|f| f.baseline.start_p50_ms),
        m(|f| f.spinning.start_p50_ms),
        m(|f| f.baseline.start_max_ms),
        m(|f| f.spinning.start_max_ms),
        m(|f| f.baseline.cancel_p50_ms),
        m(|f| f.spinning.cancel_p50_ms),
        m(|f| f.baseline.cancel_max_ms),
        m(|f| f.spinning.cancel_max_ms),
        m(|f| f.baseline.cancelled_p50_ms),
        m(|f| f.spinning.cancelled_p50_ms),
        m(|f| f.baseline.cancelled_max_ms),
        m(|f| f.spinning.cancelled_max_ms),
        n = all.len(),
    );
    let verdict = if all.iter().all(StallFigures::spinners_failed) {
        "yes"
    } else {
        "**no**"
    };
    let spinners = all
        .iter()
        .enumerate()
        .map(|(i, f)| format!("{}: {}", i + 1, spinner_summary(f)))
        .collect::<Vec<_>>()
        .join("; ");
    let each = all
        .iter()
        .map(|f| {
            format!(
                "{:.2} / {:.2} → {:.2} / {:.2}, {:.2} / {:.2} → {:.2} / {:.2}",
                f.baseline.start_p50_ms,
                f.baseline.start_max_ms,
                f.spinning.start_p50_ms,
                f.spinning.start_max_ms,
                f.baseline.cancelled_p50_ms,
                f.baseline.cancelled_max_ms,
                f.spinning.cancelled_p50_ms,
                f.spinning.cancelled_max_ms,
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "### Responsiveness while agents spin, on {key}\n\n{method}\n\
         Command: `{command}`\n\n{table}\n\
         Every spinner run ended `failed`, out of fuel, in every repetition: {verdict}. \
         By repetition: {spinners}.\n\n\
         Each repetition (start p50 / max, baseline → spinning, then the same for the run reading \
         `cancelled`; ms): {each}\n",
        command = command_line(settings),
    )
}

fn spinner_summary(figures: &StallFigures) -> String {
    let fuel = figures.spinners.iter().filter(|s| s.out_of_fuel).count();
    let spun: Vec<f64> = figures.spinners.iter().filter_map(|s| s.spun_s).collect();
    let other = figures
        .spinners
        .iter()
        .find(|s| !s.out_of_fuel)
        .map_or_else(String::new, |s| {
            format!(
                "; one ended {} ({})",
                s.status,
                s.error.chars().take(120).collect::<String>()
            )
        });
    format!(
        "{} spinner runs during {:.1} s of samples, {fuel} out of fuel, each {:.1}–{:.1} s from \
         start to end (waiting for a CPU slot included){other}",
        figures.spinners.len(),
        figures.sampling_s,
        spun.iter().copied().fold(f64::INFINITY, f64::min),
        spun.iter().copied().fold(0.0, f64::max),
    )
}

/// Runs the benchmark.
pub async fn run(settings: BenchSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    check(&settings)?;
    let key = section_key(&settings);
    let repeat = settings.repeat.max(1);
    let mut w1 = Vec::new();
    let mut stall = Vec::new();
    let mut rebuilt = Vec::new();
    let mut slow = Vec::new();
    for i in 1..=repeat {
        match repetition(&settings)
            .await
            .map_err(|e| format!("{key} repetition {i}/{repeat}: {e}"))?
        {
            Measured::W1(f) => {
                let commits = f
                    .commits_per_run
                    .map_or_else(|| "n/a".to_string(), |c| format!("{c:.2}"));
                let overheads = f.overheads.map_or_else(String::new, |o| {
                    format!(
                        "; per step dispatch → claim p50 {:.1} / p99 {:.1} ms, claim → complete \
                         p50 {:.1} / p99 {:.1} ms",
                        o.claim_p50_ms, o.claim_p99_ms, o.complete_p50_ms, o.complete_p99_ms
                    )
                });
                eprintln!(
                    "{key} repetition {i}/{repeat}: L p50 {:.2} ms, p99 {:.2} ms; T {:.0} runs/s \
                     (median POST {:.1} ms, run {:.1} ms); {commits} durable commits/run{overheads}",
                    f.p50_ms, f.p99_ms, f.throughput, f.t_post_ms, f.t_run_ms,
                );
                w1.push(f);
            }
            Measured::Stall(f) => {
                eprintln!(
                    "{key} repetition {i}/{repeat}: start p50 {:.2} / max {:.2} ms → spinning {:.2} / {:.2} ms; \
                     cancelled p50 {:.2} / max {:.2} ms → spinning {:.2} / {:.2} ms; spinners: {}",
                    f.baseline.start_p50_ms,
                    f.baseline.start_max_ms,
                    f.spinning.start_p50_ms,
                    f.spinning.start_max_ms,
                    f.baseline.cancelled_p50_ms,
                    f.baseline.cancelled_max_ms,
                    f.spinning.cancelled_p50_ms,
                    f.spinning.cancelled_max_ms,
                    spinner_summary(&f),
                );
                stall.push(f);
            }
            Measured::Rebuild(f) => {
                let rebuilds: Vec<String> = f
                    .rebuilds
                    .iter()
                    .map(|(name, secs, events)| {
                        format!("{name} {secs:.1} s ({:.0} events/s)", *events as f64 / secs)
                    })
                    .collect();
                eprintln!(
                    "{key} repetition {i}/{repeat}: {} events; {}; start {:.2} s with {} \
                     events behind, {:.2} s without",
                    f.events,
                    rebuilds.join(", "),
                    f.catch_up.1,
                    f.catch_up.0,
                    f.idle_start_s
                );
                rebuilt.push(f);
            }
            Measured::SlowReaders(f) => {
                let phases: Vec<String> = f
                    .phases
                    .iter()
                    .map(|p| {
                        format!(
                            "queue {}: RSS {} → {} → {} MiB{}",
                            p.queue.map_or_else(|| "default".into(), |q| q.to_string()),
                            p.rss_kib[0] / 1024,
                            p.rss_kib[1] / 1024,
                            p.rss_kib[2] / 1024,
                            p.closed_too_slow
                                .map_or_else(String::new, |n| format!(", {n} closed with 4008"))
                        )
                    })
                    .collect();
                eprintln!("{key} repetition {i}/{repeat}: {}", phases.join("; "));
                slow.push(f);
            }
        }
    }
    let section = match settings.scenario {
        Scenario::W1 => w1_section(&settings, &key, &w1),
        Scenario::Stall => stall_section(&settings, &key, &stall),
        Scenario::Rebuild => rebuild::section(&settings, &key, &rebuilt),
        Scenario::SlowReaders => slow_readers::section(&settings, &key, &slow),
    };
    println!("{section}");
    if !settings.no_write {
        write_section(&settings.output, &key, &section)
            .map_err(|e| format!("writing {}: {e}", settings.output.display()))?;
        eprintln!("wrote the {key} section of {}", settings.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces the text between this key's markers (or appends them).
fn write_section(path: &Path, key: &str, section: &str) -> std::io::Result<()> {
    let start = format!("<!-- bench:{key}:start -->");
    let end = format!("<!-- bench:{key}:end -->");
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let block = format!("{start}\n{section}{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{}{}", &text[..s], block, &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    };
    std::fs::write(path, updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchSettings,
    }

    fn settings(args: &[&str]) -> BenchSettings {
        let mut argv = vec!["bench"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).bench
    }

    #[test]
    fn keys_name_the_backend_and_only_the_non_default_modes() {
        let pg = "postgres://u:secret@db:5432/x?sslmode=disable";
        assert_eq!(section_key(&settings(&[])), "sqlite");
        assert_eq!(section_key(&settings(&["--database-url", pg])), "postgres");
        assert_eq!(
            section_key(&settings(&["--no-agent-comments"])),
            "sqlite-no-comments"
        );
        assert_eq!(
            section_key(&settings(&[
                "--database-url",
                pg,
                "--agents",
                "remote-echo"
            ])),
            "postgres-remote-echo"
        );
        assert_eq!(
            section_key(&settings(&["--server", "in-process", "--subscribe", "all"])),
            "sqlite-in-process-subscribe-all"
        );
        assert_eq!(
            section_key(&settings(&["--scenario", "stall", "--database-url", pg])),
            "stall-postgres"
        );
        assert_eq!(
            section_key(&settings(&["--database-url", pg, "--nodes", "2"])),
            "postgres-nodes-2"
        );
        assert!(
            command_line(&settings(&["--database-url", pg, "--nodes", "2"])).contains(" --nodes 2")
        );
        let command = command_line(&settings(&[
            "--database-url",
            pg,
            "--agents",
            "remote-exec",
        ]));
        assert!(!command.contains("secret") && !command.contains("db:5432"));
        assert!(
            command.ends_with("--database-url 'postgres://…?sslmode=disable' --agents remote-exec")
        );
    }

    #[test]
    fn the_listening_line_gives_the_port() {
        let line = "\u{1b}[2m2026-01-01T00:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m runlog::app: runlog listening \u{1b}[3mport\u{1b}[0m\u{1b}[2m=\u{1b}[0m41234 backend=\"sqlite\"";
        assert_eq!(listening_port(&strip_ansi(line)), Some(41234));
        assert_eq!(
            listening_port("INFO runlog::app: runlog listening port=8080 backend=postgres"),
            Some(8080)
        );
    }

    #[test]
    fn settings_that_do_not_fit_are_refused() {
        // Many nodes need PostgreSQL and servers in their own processes.
        assert!(check(&settings(&["--nodes", "2"])).is_err());
        assert!(check(&settings(&["--nodes", "0"])).is_err());
        let pg = "postgres://u@db/x";
        assert!(check(&settings(&[
            "--database-url",
            pg,
            "--nodes",
            "2",
            "--server",
            "in-process"
        ]))
        .is_err());
        assert!(check(&settings(&["--database-url", pg, "--nodes", "2"])).is_ok());
        assert!(check(&settings(&[
            "--agents",
            "remote-echo",
            "--no-agent-comments"
        ]))
        .is_err());
        assert!(check(&settings(&[
            "--scenario",
            "stall",
            "--agents",
            "remote-echo"
        ]))
        .is_err());
        assert!(check(&settings(&["--workers", "0", "--agents", "remote-echo"])).is_err());
        assert!(check(&settings(&[])).is_ok());
    }
}
