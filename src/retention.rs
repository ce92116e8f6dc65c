//! `runlog purge`: retention. Removes the bodies of the artifacts of runs
//! that finished before a cut-off, after exporting those runs if asked
//! (docs/operations.md#retention).
//!
//! A purge is an event of each run (`ArtifactsPurged`), so the runs are
//! purged by a server: this command finds the candidates in the read
//! models (read-only, like `export`), writes the export itself, and sends
//! `POST /api/runs/{id}/purge` for each run to a server on the same
//! database (the one holding the SQLite file, or a live PostgreSQL node,
//! which forwards each run to its host).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::config::StorageSettings;
use crate::db::Db;
use crate::domain::ids::Timestamp;
use crate::projections::ReadModels;

/// Runs asked of the server at once.
const IN_FLIGHT: usize = 4;
/// Candidates read per page.
const PAGE: i64 = 1000;
/// Attempts of one run's purge while its host answers 503 (moving, busy).
const ATTEMPTS: u32 = 5;

/// `runlog purge`.
#[derive(Debug, Clone, Args)]
pub struct PurgeSettings {
    /// Purge runs that finished before this: an RFC 3339 time
    /// (2026-11-01T00:00:00Z), a date (2026-11-01, midnight UTC) or a
    /// number of days ago (30d).
    #[arg(long, value_name = "WHEN")]
    pub finished_before: String,
    /// First write the runs about to be purged (their events and bodies,
    /// the format of `runlog export`) to this file; nothing is purged if
    /// the export fails.
    #[arg(long, value_name = "FILE")]
    pub export: Option<std::path::PathBuf>,
    /// Only count the runs that would be purged.
    #[arg(long)]
    pub dry_run: bool,
    /// The server to purge through (default: the one serving this SQLite
    /// database, or a live node on this PostgreSQL database).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// An admin's API token (default: the first admin's, from
    /// `<data dir>/admin.token`, if that file is there).
    #[arg(
        long,
        env = "RUNLOG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Storage.
    #[command(flatten)]
    pub storage: StorageSettings,
}

/// The cut-off `text` names, as of `now`.
pub fn parse_cut_off(text: &str, now: Timestamp) -> Option<Timestamp> {
    let text = text.trim();
    if let Some(days) = text.strip_suffix('d') {
        let days: i64 = days.parse().ok().filter(|d| *d >= 0)?;
        return Some(Timestamp(now.0 - days.checked_mul(86_400_000)?));
    }
    if let Some(at) = crate::projections::parse_rfc3339(text) {
        return Some(at);
    }
    let date = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    Some(Timestamp(
        date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis(),
    ))
}

/// What the server said about each run.
#[derive(Debug, Default)]
struct Tally {
    purged: u64,
    already: u64,
    versions: u64,
    bytes: u64,
    blobs_deleted: u64,
    bytes_freed: u64,
    /// Not purged: finished at or after the cut-off, or reopened since.
    skipped: u64,
    failed: Vec<(String, String)>,
}

/// `runlog purge`.
pub async fn run(settings: PurgeSettings) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let now = Timestamp(chrono::Utc::now().timestamp_millis());
    let Some(before) = parse_cut_off(&settings.finished_before, now) else {
        eprintln!(
            "error: --finished-before {:?} is not a time: use RFC 3339 (2026-11-01T00:00:00Z), \
             a date (2026-11-01) or days ago (30d)",
            settings.finished_before
        );
        return Ok(ExitCode::from(2));
    };
    let cut_off = before.to_rfc3339();
    // Read-only, like export.
    let db = Db::open_existing(
        settings.storage.database_url.as_deref(),
        &settings.storage.data_dir,
    )
    .await?;
    let candidates = candidates(&db, before).await;
    let candidates = match candidates {
        Ok(ids) => ids,
        Err(e) => {
            db.close().await;
            return Err(e);
        }
    };
    if candidates.is_empty() {
        db.close().await;
        println!("nothing to purge: every run that finished before {cut_off} is purged already");
        return Ok(ExitCode::SUCCESS);
    }
    if settings.dry_run {
        db.close().await;
        println!(
            "{} runs created before {cut_off} have finished and are not purged; \
             a purge takes those that finished before it (dry run: nothing purged)",
            candidates.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let server = match &settings.server {
        Some(url) => Some(url.trim_end_matches('/').to_string()),
        None => crate::accounts::server_on(&db).await?,
    };
    let Some(server) = server else {
        db.close().await;
        eprintln!(
            "error: no runlog serve is running on this database: a purge is an event of each run, \
             which a server records; start one (runlog serve with the same storage settings) \
             and purge again, or name one with --server; nothing purged"
        );
        return Ok(ExitCode::FAILURE);
    };
    if let Some(path) = &settings.export {
        // An earlier export may hold the only copy of bodies purged since.
        if path.exists() {
            db.close().await;
            eprintln!(
                "error: {} exists: an export is never overwritten (name another file); nothing purged",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        let exported = export(&db, &candidates, path).await;
        if let Err(e) = exported {
            db.close().await;
            eprintln!(
                "error: exporting to {}: {e}; nothing purged",
                path.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    db.close().await;
    eprintln!(
        "purging {} runs that finished before {cut_off} through the server at {server}",
        candidates.len()
    );
    let token = crate::app::cli_token(settings.token.clone(), &settings.storage.data_dir);
    let tally = purge_all(&server, token.as_deref(), &candidates, &cut_off).await;
    println!(
        "purged {} runs ({} artifact versions, {} bytes of bodies; {} blobs deleted, {} bytes \
         freed; bodies shared with runs not purged stay); {} were purged already; {} skipped \
         (finished on or after {cut_off}, or reopened)",
        tally.purged,
        tally.versions,
        tally.bytes,
        tally.blobs_deleted,
        tally.bytes_freed,
        tally.already,
        tally.skipped
    );
    if tally.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for (run, reason) in tally.failed.iter().take(10) {
        eprintln!("error: run {run}: {reason}");
    }
    eprintln!(
        "error: {} runs were not purged (purge again to retry them; what is purged stays purged)",
        tally.failed.len()
    );
    Ok(ExitCode::FAILURE)
}

/// The runs whose purge an earlier one left unfinished, then every
/// unpurged finished run created before `before`.
async fn candidates(db: &Db, before: Timestamp) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let reads = ReadModels::new(db.clone());
    let owed = crate::store::BlobStore::new(db.clone())
        .owed_releases()
        .await?;
    let mut ids: Vec<String> = Vec::new();
    loop {
        let after = ids.last().cloned().unwrap_or_default();
        let page = reads.purgeable_runs(before, &after, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        ids.extend(page);
        if !full {
            break;
        }
    }
    let listed: std::collections::BTreeSet<&String> = ids.iter().collect();
    let owed: Vec<String> = owed.into_iter().filter(|id| !listed.contains(id)).collect();
    Ok(owed.into_iter().chain(ids).collect())
}

/// Writes the export of `ids` to `path` (through `path.partial` beside it,
/// renamed once whole).
async fn export(
    db: &Db,
    ids: &[String],
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    let counts = crate::store::History::new(db.clone())
        .export(ids, |line| {
            serde_json::to_writer(&mut out, line)?;
            out.write_all(b"\n")
        })
        .await;
    let counts = match counts {
        Ok(counts) => counts,
        Err(e) => {
            drop(out);
            let _ = std::fs::remove_file(&partial);
            return Err(e.into());
        }
    };
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, path)?;
    eprintln!(
        "exported {} runs ({} events, {} blobs) to {}",
        counts.runs,
        counts.events,
        counts.blobs,
        path.display()
    );
    Ok(())
}

/// Purges each run through `server`, a few at a time, with progress.
async fn purge_all(server: &str, token: Option<&str>, ids: &[String], cut_off: &str) -> Tally {
    let mut client = awc::Client::builder().timeout(Duration::from_secs(60));
    if let Some(token) = token {
        client = client.add_default_header(("authorization", format!("Bearer {token}")));
    }
    let client = client.finish();
    let bar = progress_bar(ids.len() as u64);
    let started = Instant::now();
    let mut logged = Instant::now();
    let mut tally = Tally::default();
    let mut done = 0u64;
    let mut answers = futures::stream::iter(ids)
        .map(|id| {
            let client = &client;
            async move { (id, purge_one(client, server, id, cut_off).await) }
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some((id, answer)) = answers.next().await {
        done += 1;
        match answer {
            Ok(body) if body["recorded"] == true => {
                tally.purged += 1;
                tally.versions += body["purged"]["versions"].as_u64().unwrap_or(0);
                tally.bytes += body["purged"]["bytes"].as_u64().unwrap_or(0);
                tally.blobs_deleted += body["blobs"]["deleted"].as_u64().unwrap_or(0);
                tally.bytes_freed += body["blobs"]["bytes_freed"].as_u64().unwrap_or(0);
            }
            Ok(body) => {
                tally.already += 1;
                tally.blobs_deleted += body["blobs"]["deleted"].as_u64().unwrap_or(0);
                tally.bytes_freed += body["blobs"]["bytes_freed"].as_u64().unwrap_or(0);
            }
            Err(Refused::Skipped) => tally.skipped += 1,
            Err(Refused::Failed(reason)) => tally.failed.push((id.clone(), reason)),
        }
        match &bar {
            Some(bar) => bar.set_position(done),
            None if logged.elapsed() >= Duration::from_secs(2) || done == ids.len() as u64 => {
                logged = Instant::now();
                let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(
                    done,
                    total = ids.len(),
                    runs_per_s = format!("{rate:.0}"),
                    "purging"
                );
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    tally
}

/// Why a run was not purged.
enum Refused {
    /// It finished at or after the cut-off, or was reopened: not an error.
    Skipped,
    /// Anything else.
    Failed(String),
}

async fn purge_one(
    client: &awc::Client,
    server: &str,
    id: &str,
    cut_off: &str,
) -> Result<Value, Refused> {
    let url = format!("{server}/api/runs/{id}/purge");
    let mut attempt = 1;
    loop {
        let mut response = client
            .post(&url)
            .send_json(&json!({ "finished_before": cut_off }))
            .await
            .map_err(|e| Refused::Failed(format!("cannot reach the server at {server}: {e}")))?;
        let status = response.status().as_u16();
        let body: Value = response.json().limit(1 << 20).await.unwrap_or_default();
        match status {
            200 => return Ok(body),
            409 if matches!(
                body["error"]["code"].as_str(),
                Some("run_finished_later" | "run_not_finished")
            ) =>
            {
                return Err(Refused::Skipped)
            }
            503 if attempt < ATTEMPTS => {
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1)
                    .min(10);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                attempt += 1;
            }
            _ => {
                return Err(Refused::Failed(format!(
                    "the server answered {status}: {}",
                    body["error"]["message"]
                        .as_str()
                        .unwrap_or("no reason given")
                )))
            }
        }
    }
}

/// A progress bar over `total` runs, on a terminal only.
fn progress_bar(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "purging [{bar:30}] {pos}/{len} runs, {per_sec}, ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_is_a_time_a_date_or_days_ago() {
        let now = Timestamp(1_780_000_000_000);
        assert_eq!(
            parse_cut_off("2026-11-01T00:00:00Z", now),
            Some(Timestamp(1_793_491_200_000))
        );
        assert_eq!(
            parse_cut_off("2026-11-01", now),
            Some(Timestamp(1_793_491_200_000))
        );
        assert_eq!(
            parse_cut_off("30d", now),
            Some(Timestamp(now.0 - 30 * 86_400_000))
        );
        assert_eq!(parse_cut_off("0d", now), Some(now));
        for bad in [
            "",
            "yesterday",
            "-3d",
            "2026-13-01",
            "d",
            "3 d",
            "2026-11-01T25:00:00Z",
        ] {
            assert_eq!(parse_cut_off(bad, now), None, "{bad:?}");
        }
    }
}
