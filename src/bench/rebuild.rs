//! `runlog bench --scenario rebuild`: how fast an operator's
//! `runlog projections rebuild NAME` goes over a big log, and how long a
//! server takes to start when its read models are behind.
//!
//! 1. A real server (its own process) records W1 runs until the log holds
//!    `--events` events; it is then stopped.
//! 2. Each read model is rebuilt by `runlog projections rebuild NAME`, a
//!    process of its own as an operator runs it; timed from spawn to exit.
//! 3. `runlog replay --verify --all` over every run, its own process.
//! 4. Catch-up: the read-model rows of every run with an event among the
//!    last `--catch-up-events` of the log are deleted and the positions set
//!    back to before them (as if the server had stopped that far behind);
//!    a server is started and timed from spawn to listening (it catches up
//!    before it serves), beside a start with nothing to catch up.

use std::path::Path;
use std::time::Instant;

use futures::StreamExt;

use super::{
    create_template, diamond, get, own_command, run_events, start_run, start_server, AgentsMode,
    BenchResult, BenchSettings, Processes,
};
use crate::db::Db;
use crate::projections::READ_MODELS;

/// Runs started at once while the log is filled.
const FILL_CONCURRENCY: usize = 32;

/// What one repetition measured.
#[derive(Debug, Clone)]
pub(super) struct RebuildFigures {
    /// Events in the log.
    pub events: u64,
    /// Runs that wrote them.
    pub runs: usize,
    /// Seconds the server took to record them.
    pub fill_s: f64,
    /// Each read model's rebuild: name, wall seconds, events it applied.
    pub rebuilds: Vec<(String, f64, u64)>,
    /// Events re-applied by the catch-up, and the start's wall seconds.
    pub catch_up: (u64, f64),
    /// A start with nothing to catch up, wall seconds.
    pub idle_start_s: f64,
    /// `replay --verify --all`: runs checked, wall seconds.
    pub verify: (usize, f64),
}

/// The repetition (the caller made `dir` and the database, and stops what
/// is left in `processes`).
pub(super) async fn drive(
    settings: &BenchSettings,
    dir: &Path,
    database_url: Option<String>,
    processes: &mut Processes,
) -> BenchResult<RebuildFigures> {
    let data_dir = dir.join("data");
    let (server, port) = start_server(settings, dir, database_url.clone(), None, 1).await?;
    processes.server = Some(server);
    let base = format!("http://127.0.0.1:{port}");
    let client = super::http_client();
    let template = create_template(
        &client,
        &base,
        "w1-rebuild",
        diamond(AgentsMode::InProcess, true),
    )
    .await?;
    let first = start_run(&client, &base, &template).await?;
    wait_idle(&client, &base).await?;
    let per_run = run_events(&client, &base, &first).await?.len().max(1);
    let runs = (settings.events as usize).div_ceil(per_run);
    eprintln!("filling the log: {runs} W1 runs of {per_run} events");
    let started = Instant::now();
    let mut done = 1;
    let mut starts = futures::stream::iter(1..runs)
        .map(|_| start_run(&client, &base, &template))
        .buffer_unordered(FILL_CONCURRENCY);
    while let Some(started_run) = starts.next().await {
        started_run?;
        done += 1;
        if done % 5_000 == 0 {
            eprintln!("  {done}/{runs} runs started");
        }
    }
    wait_idle(&client, &base).await?;
    let fill_s = started.elapsed().as_secs_f64();
    for note in processes.stop().await {
        eprintln!("  note: {note}");
    }

    let storage = storage_args(&data_dir, database_url.as_deref());
    let mut rebuilds = Vec::new();
    let mut events = 0;
    for name in READ_MODELS {
        let mut args = vec!["projections", "rebuild", name];
        args.extend(storage.iter().map(String::as_str));
        let (output, took) = timed_cli(&args)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        // "NAME: rebuilt from N events (R events/s) and swapped in"
        let applied = stdout
            .split("rebuilt from ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| format!("unexpected output of the rebuild: {stdout}"))?;
        events = events.max(applied);
        eprintln!("  rebuilt {name}: {applied} events in {took:.1} s");
        rebuilds.push((name.to_string(), took, applied));
    }

    // The audit over every run: `replay --verify --all`, its own process.
    let mut args = vec!["replay", "--verify", "--all"];
    args.extend(storage.iter().map(String::as_str));
    let (output, verify_s) = timed_cli(&args)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    // "verify: N runs checked, D divergent, B behind"
    let verified = stderr
        .split("verify: ")
        .filter_map(|rest| rest.split(" runs checked").next())
        .find_map(|n| n.trim().parse::<usize>().ok())
        .ok_or_else(|| format!("unexpected output of replay --verify --all: {stderr}"))?;
    eprintln!("  verified {verified} runs in {verify_s:.1} s");

    let behind = set_behind(&data_dir, database_url.as_deref(), settings.catch_up_events).await?;
    let started = Instant::now();
    let (server, _) = start_server(settings, dir, database_url.clone(), None, 1).await?;
    let catch_up_s = started.elapsed().as_secs_f64();
    processes.server = Some(server);
    for note in processes.stop().await {
        eprintln!("  note: {note}");
    }
    let started = Instant::now();
    let (server, _) = start_server(settings, dir, database_url, None, 1).await?;
    let idle_start_s = started.elapsed().as_secs_f64();
    processes.server = Some(server);
    eprintln!(
        "  start {catch_up_s:.1} s with {behind} events to catch up, {idle_start_s:.1} s without"
    );
    Ok(RebuildFigures {
        events,
        runs,
        fill_s,
        rebuilds,
        catch_up: (behind, catch_up_s),
        idle_start_s,
        verify: (verified, verify_s),
    })
}

/// Runs `runlog <args…>` as a process of its own, as an operator would;
/// returns its output and its wall time from spawn to exit, or an error
/// with both its streams if it failed.
fn timed_cli(args: &[&str]) -> BenchResult<(std::process::Output, f64)> {
    let what = format!(
        "runlog {}",
        args.iter().take(3).copied().collect::<Vec<_>>().join(" ")
    );
    let started = Instant::now();
    let output = own_command(args)?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("running {what}: {e}"))?;
    let took = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(format!(
            "{what} failed: {} {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok((output, took))
}

/// The storage flags of the CLI.
fn storage_args(data_dir: &Path, database_url: Option<&str>) -> Vec<String> {
    let mut args = vec!["--data-dir".to_string(), data_dir.display().to_string()];
    if let Some(url) = database_url {
        args.extend(["--database-url".to_string(), url.to_string()]);
    }
    args
}

/// Waits until no run is queued or running.
async fn wait_idle(client: &awc::Client, base: &str) -> BenchResult<()> {
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let mut busy = false;
        for status in ["queued", "running"] {
            let page = get(client, &format!("{base}/api/runs?status={status}&limit=1")).await?;
            busy |= page["items"].as_array().is_some_and(|i| !i.is_empty());
        }
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("runs still unfinished after 10 minutes".into());
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Puts the read models `count` events behind the log's end: deletes the
/// rows of every run with an event among them and sets every position to
/// just before them. Returns the events after the new position.
async fn set_behind(data_dir: &Path, database_url: Option<&str>, count: u64) -> BenchResult<u64> {
    let db = Db::connect(database_url, data_dir)
        .await
        .map_err(|e| format!("connecting to the benchmark database: {e}"))?;
    let result = async {
        let (order, after) = match &db {
            Db::Postgres(_) => (
                "txid, position",
                "(txid, position) > (($1::bigint)::text::xid8, $2)",
            ),
            Db::Sqlite(_) => ("rowid", "rowid > $2 AND $1 = $1"),
        };
        let position = match &db {
            Db::Postgres(_) => "txid::text::bigint, position",
            Db::Sqlite(_) => "0, rowid",
        };
        let total: i64 = crate::with_pool!(&db, pool => {
            sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await?
        });
        let skip = (total - i64::try_from(count).unwrap_or(i64::MAX)).max(1) - 1;
        let cut: (i64, i64) = crate::with_pool!(&db, pool => {
            sqlx::query_as(&format!(
                "SELECT {position} FROM events ORDER BY {order} LIMIT 1 OFFSET $1"
            ))
            .bind(skip)
            .fetch_one(pool)
            .await?
        });
        let runs = format!(
            "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'Run' AND {after}"
        );
        crate::with_pool!(&db, pool => {
            for table in ["run_summaries", "run_details", "artifact_versions", "run_messages"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE run_id IN ({runs})"))
                    .bind(cut.0)
                    .bind(cut.1)
                    .execute(pool)
                    .await?;
            }
            sqlx::query("UPDATE projection_positions SET tx = $1, position = $2")
                .bind(cut.0)
                .bind(cut.1)
                .execute(pool)
                .await?;
        });
        let behind: i64 = crate::with_pool!(&db, pool => {
            sqlx::query_scalar(&format!("SELECT count(*) FROM events WHERE {after}"))
                .bind(cut.0)
                .bind(cut.1)
                .fetch_one(pool)
                .await?
        });
        Ok::<_, sqlx::Error>(u64::try_from(behind).unwrap_or(0))
    }
    .await;
    db.close().await;
    Ok(result.map_err(|e| format!("setting the read models behind: {e}"))?)
}

/// The report's section.
pub(super) fn section(settings: &BenchSettings, key: &str, all: &[RebuildFigures]) -> String {
    let mut out = format!("### Projection rebuild and catch-up on {key}\n\n");
    out.push_str(super::preamble(settings).trim_end());
    out.push_str(&format!(
        ".\n\nA server (its own process) recorded W1 runs (in-process echo agents) until the log \
         held about {} events, then stopped. Each read model was then rebuilt by \
         `runlog projections rebuild NAME`, a process of its own, timed from spawn to exit \
         (opening the database, reading and decoding the whole log, writing fresh tables, \
         the swap). Catch-up: the rows of every run with an event among the last {} were \
         deleted and the positions set back before them; a server start was timed from \
         spawn to listening (it catches up before it serves), beside a start with nothing \
         to catch up. Median of {} repetition(s), (min–max).\n\n",
        settings.events,
        settings.catch_up_events,
        all.len()
    ));
    let spread = |values: Vec<f64>, digits: usize| {
        let median = super::median(values.clone());
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0, f64::max);
        format!("{median:.digits$} ({min:.digits$}–{max:.digits$})")
    };
    let events = all.first().map_or(0, |f| f.events);
    let runs = all.first().map_or(0, |f| f.runs);
    let fill: Vec<f64> = all.iter().map(|f| f.fill_s).collect();
    out.push_str(&format!(
        "The log: {events} events of {runs} runs, recorded in {} s.\n\n",
        spread(fill, 0)
    ));
    out.push_str("| read model | rebuild wall time | events/s |\n|---|---:|---:|\n");
    for (i, name) in READ_MODELS.iter().enumerate() {
        let secs: Vec<f64> = all
            .iter()
            .filter_map(|f| f.rebuilds.get(i))
            .map(|r| r.1)
            .collect();
        let rates: Vec<f64> = all
            .iter()
            .filter_map(|f| f.rebuilds.get(i))
            .map(|r| r.2 as f64 / r.1.max(1e-9))
            .collect();
        out.push_str(&format!(
            "| {name} | {} s | {} |\n",
            spread(secs, 1),
            spread(rates, 0)
        ));
    }
    let behind = all.first().map_or(0, |f| f.catch_up.0);
    let catch_up: Vec<f64> = all.iter().map(|f| f.catch_up.1).collect();
    let idle: Vec<f64> = all.iter().map(|f| f.idle_start_s).collect();
    out.push_str(&format!(
        "\nServer start with {behind} events to catch up: {} s; with nothing to catch up: {} s.\n",
        spread(catch_up, 2),
        spread(idle, 2)
    ));
    let verified = all.first().map_or(0, |f| f.verify.0);
    let verify_s: Vec<f64> = all.iter().map(|f| f.verify.1).collect();
    let verify_rate: Vec<f64> = all
        .iter()
        .map(|f| f.verify.0 as f64 / f.verify.1.max(1e-9))
        .collect();
    out.push_str(&format!(
        "\n`runlog replay --verify --all` (its own process) over the {verified} runs: {} s, {} runs/s.\n",
        spread(verify_s, 1),
        spread(verify_rate, 0)
    ));
    out.push_str(&format!("\n`{}`\n", super::command_line(settings).trim()));
    out
}
