//! The `runlog` command line: `serve`, `migrate`, `replay`, `export`,
//! `import`, `purge`, `users`, `tokens`, `projections`, `bench`, `worker`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::app::{open_database, Application};
use crate::config::{ServeSettings, StorageSettings};
use crate::db::Db;
use crate::domain::ids::RunId;
use crate::domain::run::Run;
use crate::projections::{rfc3339, ReadModels, RunDetail};
use crate::store::{AggregateStore, EventLog};

/// runlog: a durable, event-sourced orchestration server for AI-agent
/// workflows.
#[derive(Debug, Parser)]
#[command(name = "runlog", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (applies the schema first).
    Serve(ServeSettings),
    /// Apply the schema to the database and exit.
    Migrate(StorageSettings),
    /// Print a run's state rebuilt from its event log alone, as JSON on
    /// stdout (the shape of GET /api/runs/{id}); or, with --verify and
    /// --all or --since, check every run's read model against its log.
    Replay {
        /// The run (not with --all or --since).
        #[arg(required_unless_present_any = ["all", "since"])]
        run_id: Option<String>,
        /// With --verify: every run in the log.
        #[arg(long, requires = "verify", conflicts_with_all = ["run_id", "at"])]
        all: bool,
        /// With --verify: the runs with an event recorded at or after this
        /// time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long, requires = "verify", conflicts_with_all = ["run_id", "at", "all"])]
        since: Option<String>,
        /// Rebuild the state as of this event sequence.
        #[arg(long)]
        at: Option<u64>,
        /// Also check that the log has no gap and that the server's read
        /// model equals the replayed state; exit 1 if not.
        #[arg(long)]
        verify: bool,
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
    /// Write the history of runs (their events as stored and the blobs
    /// they reference) as JSON Lines, for `runlog import` elsewhere
    /// (read-only: runs beside a server).
    Export {
        /// The runs.
        run_ids: Vec<String>,
        /// Every run.
        #[arg(long, conflicts_with = "run_ids")]
        all: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
    /// Load a history written by `runlog export` (a file, or - for
    /// standard input) into this database, all or nothing: refused if a
    /// run id exists here, a run had not finished, or the file is not
    /// whole.
    Import {
        /// The file.
        file: std::path::PathBuf,
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
    /// Retention: remove the bodies of the artifacts of runs that finished
    /// before a time (after exporting those runs, if asked). The events
    /// stay, with the bodies' hashes; reads show the versions as purged.
    /// Runs through a server on the same database.
    Purge(crate::retention::PurgeSettings),
    /// Accounts: create and list users (through a server, with an
    /// admin's token).
    Users {
        /// What to do.
        #[command(subcommand)]
        command: crate::accounts::UsersCommand,
    },
    /// API tokens: issue, list and revoke them (through a server, with an
    /// admin's token).
    Tokens {
        /// What to do.
        #[command(subcommand)]
        command: crate::accounts::TokensCommand,
    },
    /// The read models: where each is in the log.
    Projections {
        /// What to do.
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Run the benchmark workloads against a real server over HTTP and
    /// write the figures to a Markdown file.
    Bench(crate::bench::BenchSettings),
    /// Serve remote agents: claim their tasks from a runlog server and run
    /// a program for each (task JSON on stdin, outputs as JSON on stdout).
    Worker(crate::worker::WorkerSettings),
    /// A deterministic stand-in for an OpenAI-compatible chat-completions
    /// server, to try the llm agents without a model (a test double).
    FakeLlm(crate::fakellm::FakeLlmSettings),
}

#[derive(Debug, Subcommand)]
enum ProjectionsCommand {
    /// Show each read model, its version, the log position it has applied,
    /// how many events it is behind and when it last wrote (read-only:
    /// runs beside a server).
    List {
        /// Print JSON (the shape of GET /api/admin/projections) instead of
        /// a table.
        #[arg(long)]
        json: bool,
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
    /// Rebuild one read model from the log into fresh tables and swap them
    /// in when they have caught up; a server on the same database keeps
    /// serving the old tables meanwhile. Shows a progress bar on a
    /// terminal, log lines otherwise.
    Rebuild {
        /// The read model (as `projections list` names it).
        name: String,
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
}

/// Parses the command line and runs the command.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init();
    let result = actix_web::rt::System::new().block_on(async move {
        match cli.command {
            Command::Serve(settings) => serve(settings).await,
            Command::Migrate(storage) => migrate(storage).await,
            Command::Replay {
                run_id: Some(run_id),
                at,
                verify,
                storage,
                ..
            } => replay(run_id, at, verify, storage).await,
            Command::Replay {
                run_id: None,
                since,
                storage,
                ..
            } => verify_all(since, storage).await,
            Command::Projections {
                command: ProjectionsCommand::List { json, storage },
            } => projections_list(json, storage).await,
            Command::Projections {
                command: ProjectionsCommand::Rebuild { name, storage },
            } => projections_rebuild(name, storage).await,
            Command::Export {
                run_ids,
                all,
                output,
                storage,
            } => export(run_ids, all, output, storage).await,
            Command::Import { file, storage } => import(file, storage).await,
            Command::Purge(settings) => crate::retention::run(settings).await,
            Command::Users { command } => crate::accounts::users(command).await,
            Command::Tokens { command } => crate::accounts::tokens(command).await,
            Command::Bench(settings) => crate::bench::run(settings).await,
            Command::Worker(settings) => crate::worker::run(settings).await,
            Command::FakeLlm(settings) => crate::fakellm::run(settings).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            let mut message = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

async fn serve(settings: ServeSettings) -> CliResult {
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
}

async fn migrate(storage: StorageSettings) -> CliResult {
    let db = open_database(&storage).await?;
    eprintln!("schema is up to date ({})", db.backend());
    db.close().await;
    Ok(ExitCode::SUCCESS)
}

async fn projections_list(json: bool, storage: StorageSettings) -> CliResult {
    // Read-only, like replay.
    let db = Db::open_existing(storage.database_url.as_deref(), &storage.data_dir).await?;
    let log = EventLog::new(db.clone());
    let mut rows: Vec<(crate::projections::ProjectionPosition, i64)> = Vec::new();
    for p in ReadModels::new(db.clone()).positions().await? {
        // The read models usually share a position: count once per position.
        let lag = match rows.last() {
            Some((q, lag)) if q.position == p.position => *lag,
            _ => log.count_after(p.position).await?,
        };
        rows.push((p, lag));
    }
    db.close().await;
    if json {
        let items: Vec<serde_json::Value> = rows.iter().map(|(p, lag)| p.view(*lag)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "items": items }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:>7} {:>22} {:>10}  UPDATED",
        "NAME", "VERSION", "POSITION", "LAG"
    );
    for (p, lag) in rows {
        println!(
            "{:<20} {:>7} {:>22} {:>10}  {}",
            p.name,
            p.version.map_or("-".to_string(), |v| v.to_string()),
            p.position.to_string(),
            lag,
            p.updated_at.map_or("never".to_string(), rfc3339)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(
    run_ids: Vec<String>,
    all: bool,
    output: Option<std::path::PathBuf>,
    storage: StorageSettings,
) -> CliResult {
    use std::io::Write;
    if run_ids.is_empty() && !all {
        eprintln!("error: name the runs to export, or --all");
        return Ok(ExitCode::from(2));
    }
    // Read-only, like replay.
    let db = Db::open_existing(storage.database_url.as_deref(), &storage.data_dir).await?;
    let history = crate::store::History::new(db.clone());
    let ids = if all {
        // Only finished runs: an import refuses the others (a server
        // there would resume them).
        let every = EventLog::new(db.clone()).run_ids(None).await?;
        let finished = history.finished(&every).await?;
        if finished.len() < every.len() {
            eprintln!(
                "note: {} unfinished runs left out (name them to export them anyway)",
                every.len() - finished.len()
            );
        }
        finished
    } else {
        run_ids
    };
    let unknown = history.unknown(&ids).await?;
    if !unknown.is_empty() {
        db.close().await;
        eprintln!("error: no run {} in this database", unknown.join(", "));
        return Ok(ExitCode::from(2));
    }
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let counts = history
        .export(&ids, |line| {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")
        })
        .await;
    db.close().await;
    let counts = counts?;
    out.flush()?;
    eprintln!(
        "exported {} runs ({} events, {} blobs){}",
        counts.runs,
        counts.events,
        counts.blobs,
        output.map_or(String::new(), |p| format!(" to {}", p.display()))
    );
    Ok(ExitCode::SUCCESS)
}

async fn import(file: std::path::PathBuf, storage: StorageSettings) -> CliResult {
    use crate::store::ImportError;
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        match std::fs::File::open(&file) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => {
                eprintln!("error: cannot open {}: {e}", file.display());
                return Ok(ExitCode::from(2));
            }
        }
    };
    let db = open_database(&storage).await?;
    if let Some(holder) = crate::db::ServingHolder::of(&db)? {
        db.close().await;
        eprintln!(
            "error: a runlog serve (pid {}{}) holds this SQLite database: stop it to import \
             (an import is one write transaction beside the server's), or import into PostgreSQL, \
             where it runs beside the servers; nothing imported",
            holder.pid,
            holder.address.map_or(String::new(), |a| format!(", {a}"))
        );
        return Ok(ExitCode::FAILURE);
    }
    let result = crate::store::History::new(db.clone()).import(input).await;
    db.close().await;
    match result {
        Ok(counts) => {
            println!(
                "imported {} runs ({} events, {} blobs); a server on this database shows them \
                 once its read models have applied them",
                counts.runs, counts.events, counts.blobs
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ ImportError::Format { .. }) => {
            eprintln!("error: {}: {e}; nothing imported", file.display());
            Ok(ExitCode::from(2))
        }
        Err(e @ (ImportError::Exists(_) | ImportError::Unfinished(_))) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(ImportError::Store(e)) => Err(e.into()),
    }
}

async fn projections_rebuild(name: String, storage: StorageSettings) -> CliResult {
    use crate::projections::{ProjectionError, RebuildState, Rebuilds, READ_MODELS};
    // It writes: an existing database, opened (and migrated) as `serve`
    // opens it.
    let existing = Db::open_existing(storage.database_url.as_deref(), &storage.data_dir).await?;
    let holder = crate::db::ServingHolder::of(&existing)?;
    existing.close().await;
    match holder {
        // A server holds this SQLite file: it rebuilds, and this follows.
        Some(crate::db::ServingHolder {
            address: Some(address),
            ..
        }) => {
            let token = crate::app::cli_token(None, &storage.data_dir);
            return rebuild_through(&address, token.as_deref(), &name).await;
        }
        Some(holder) => {
            eprintln!(
                "error: a runlog serve (pid {}) holds this SQLite database and has not said where \
                 it listens yet: try again in a moment, or use POST /api/admin/projections/{name}/rebuild",
                holder.pid
            );
            return Ok(ExitCode::FAILURE);
        }
        None => {}
    }
    let db = open_database(&storage).await?;
    let rebuilds = Rebuilds::new(db.clone(), crate::app::log_readers());
    let mut progress = match rebuilds.start(&name) {
        Ok(progress) => progress,
        Err(e @ ProjectionError::UnknownProjection(_)) => {
            db.close().await;
            eprintln!("error: {e} (the read models: {})", READ_MODELS.join(", "));
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let bar = rebuild_bar(&name);
    let last = loop {
        let changed = progress.changed().await;
        let now = progress.borrow_and_update().clone();
        if let Some(bar) = &bar {
            bar.set_length(now.events_total.max(now.events_applied));
            bar.set_position(now.events_applied);
            if now.state == RebuildState::Swapping {
                bar.set_message(format!("swapping {name} in"));
            }
        }
        if now.is_finished() || changed.is_err() {
            break now;
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    db.close().await;
    match last.state {
        RebuildState::Done => {
            println!(
                "{name}: rebuilt from {} events ({} events/s) and swapped in",
                last.events_applied, last.events_per_s
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            eprintln!(
                "error: rebuilding {name} failed: {} (the live tables are unchanged)",
                last.error.as_deref().unwrap_or("the rebuild stopped")
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The progress bar of a rebuild of `name`, on a terminal only.
fn rebuild_bar(name: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} events, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("rebuilding {name}"));
        bar
    })
}

/// `projections rebuild NAME` when a server holds the SQLite database: asks
/// it through its admin API and follows the rebuild's progress there.
async fn rebuild_through(address: &str, token: Option<&str>, name: &str) -> CliResult {
    let mut client = awc::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(token) = token {
        client = client.add_default_header(("authorization", format!("Bearer {token}")));
    }
    let client = client.finish();
    let base = address.trim_end_matches('/');
    eprintln!("a runlog serve at {base} holds this database: rebuilding {name} through it");
    let mut started = client
        .post(format!("{base}/api/admin/projections/{name}/rebuild"))
        .send()
        .await
        .map_err(|e| format!("cannot reach the server at {base}: {e}"))?;
    let status = started.status().as_u16();
    let body: serde_json::Value = started.json().await.unwrap_or_default();
    match status {
        202 => {}
        404 => {
            eprintln!(
                "error: {} (the read models: {})",
                body["error"]["message"]
                    .as_str()
                    .unwrap_or("unknown projection"),
                crate::projections::READ_MODELS.join(", ")
            );
            return Ok(ExitCode::from(2));
        }
        _ => {
            eprintln!("error: the server answered {status}: {body}");
            return Ok(ExitCode::FAILURE);
        }
    }
    let bar = rebuild_bar(name);
    let last = loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let mut listed = client
            .get(format!("{base}/api/admin/projections"))
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {base}: {e}"))?;
        let listed: serde_json::Value = listed
            .json()
            .limit(1024 * 1024)
            .await
            .map_err(|e| format!("the server's answer: {e}"))?;
        let rebuild = listed["items"]
            .as_array()
            .and_then(|items| items.iter().find(|i| i["name"] == name))
            .map(|i| i["rebuild"].clone())
            .unwrap_or_default();
        if let Some(bar) = &bar {
            let applied = rebuild["events_applied"].as_u64().unwrap_or(0);
            bar.set_length(rebuild["events_total"].as_u64().unwrap_or(0).max(applied));
            bar.set_position(applied);
        }
        if matches!(rebuild["state"].as_str(), Some("done" | "failed") | None) {
            break rebuild;
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if last["state"] == "done" {
        println!(
            "{name}: rebuilt from {} events ({} events/s) and swapped in, by the server at {base}",
            last["events_applied"], last["events_per_s"]
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: rebuilding {name} failed: {} (the live tables are unchanged)",
            last["error"]
                .as_str()
                .unwrap_or("the server lost track of the rebuild")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// `replay --verify --all` / `--since TIME`.
async fn verify_all(since: Option<String>, storage: StorageSettings) -> CliResult {
    let since = match since {
        Some(text) => {
            match crate::projections::parse_rfc3339(&text) {
                Some(at) => Some(rfc3339(at)),
                None => {
                    eprintln!("error: --since {text:?} is not an RFC 3339 time (e.g. 2026-12-01T00:00:00Z)");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        None => None,
    };
    // Read-only, like replay.
    let db = Db::open_existing(storage.database_url.as_deref(), &storage.data_dir).await?;
    let mut progress = crate::audit::progress_reporter("verify");
    let report = crate::audit::verify_runs(
        &EventLog::new(db.clone()),
        &ReadModels::new(db.clone()),
        since.as_deref(),
        &mut progress,
    )
    .await;
    db.close().await;
    let report = report?;
    for d in &report.divergences {
        let field = if d.field.is_empty() {
            "(the document)"
        } else {
            &d.field
        };
        println!(
            "{}: {field}: expected {}, found {}",
            d.run_id, d.expected, d.found
        );
    }
    for run in &report.behind {
        println!("{run}: the read model is behind the log");
    }
    eprintln!(
        "verify: {} runs checked, {} divergent, {} behind",
        report.runs,
        report.divergent_runs(),
        report.behind.len()
    );
    eprintln!("verify: {}", if report.ok() { "ok" } else { "FAILED" });
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn replay(
    run_id: String,
    at: Option<u64>,
    verify: bool,
    storage: StorageSettings,
) -> CliResult {
    let run_id = RunId::parse(run_id)?;
    // Read-only: replay never creates, migrates or writes anything.
    let db = Db::open_existing(storage.database_url.as_deref(), &storage.data_dir).await?;
    let events = AggregateStore::<Run>::new(&db, 0)
        .load_events(run_id.as_str())
        .await?;
    if events.is_empty() {
        eprintln!("error: run '{run_id}' has no events in this database");
        return Ok(ExitCode::from(2));
    }
    let last = events.last().map_or(0, |e| e.sequence as u64);
    if let Some(at) = at.filter(|at| *at == 0 || *at > last) {
        eprintln!("error: --at {at}: run '{run_id}' has events 1 to {last}");
        return Ok(ExitCode::from(2));
    }
    let detail = RunDetail::replayed(events.iter().map(|e| (e.sequence as u64, &e.payload)), at);
    println!("{}", serde_json::to_string_pretty(&detail)?);
    if verify {
        let mut ok = true;
        for (expected, envelope) in (1..).zip(&events) {
            if envelope.sequence != expected {
                eprintln!(
                    "verify: gap in the log: expected sequence {expected}, found {}",
                    envelope.sequence
                );
                ok = false;
                break;
            }
        }
        if at.is_none() {
            match ReadModels::new(db.clone())
                .run_detail(run_id.as_str())
                .await?
            {
                Some(projected) if projected == detail => {}
                Some(_) => {
                    eprintln!("verify: the read model differs from the replayed state");
                    ok = false;
                }
                None => {
                    eprintln!("verify: the read model has no row for this run");
                    ok = false;
                }
            }
        }
        eprintln!("verify: {}", if ok { "ok" } else { "FAILED" });
        db.close().await;
        return Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    db.close().await;
    Ok(ExitCode::SUCCESS)
}
