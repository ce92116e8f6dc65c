//! Run histories out of one database and into another: a self-describing,
//! versioned JSON Lines file (docs/operations.md#export-and-import).
//!
//! ```text
//! {"kind":"runlog-history","format_version":1,"exported_at":"…","runs":["…"]}
//! {"kind":"event","aggregate_type":"Run","aggregate_id":"…","sequence":1,"event_type":"RunStarted",
//!  "event_version":"1.2","payload":{…},"metadata":{…}}      one per event, as stored
//! {"kind":"blob","sha256":"…","size":10002,"hex":"…"}       one per blob the events reference
//! {"kind":"end","runs":1,"events":19,"blobs":1}
//! ```
//!
//! Events are written as stored (their version, payload and metadata
//! unchanged): the importing build reads them through its own upcasters.
//! An import is all or nothing, in one transaction, and refuses a file that
//! is not whole, a run id the database already has, and an unfinished run
//! (the server would resume it).

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::EventEnvelope;
use serde_json::{json, Value};

use super::{BlobStore, EventLog, StoreError};
use crate::db::{BeginWrite, Db};
use crate::domain::run::Run;
use crate::with_pool;

/// The format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
const KIND: &str = "runlog-history";
const EVENT_INSERT: &str = include_str!("sql/event_insert.sql");
const BLOB_PUT: &str = include_str!("sql/blob_put.sql");
const BLOB_REF_PUT: &str = include_str!("sql/blob_ref_put.sql");

/// Why an import was refused (nothing was written).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not a whole history of this format.
    #[error("line {line}: {reason}")]
    Format {
        /// The line (from 1; 0 for the file as a whole).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The database already has runs with these ids.
    #[error("the database already has run(s) {}: nothing imported", .0.join(", "))]
    Exists(Vec<String>),
    /// Runs that had not finished when exported.
    #[error("run(s) {} had not finished when exported (this server would resume them): nothing imported", .0.join(", "))]
    Unfinished(Vec<String>),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ImportError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

/// What an export or import covered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCounts {
    /// Runs.
    pub runs: usize,
    /// Their events.
    pub events: usize,
    /// The blobs they reference.
    pub blobs: usize,
}

/// Exports and imports run histories.
#[derive(Clone, Debug)]
pub struct History {
    db: Db,
    log: EventLog,
    blobs: BlobStore,
}

impl History {
    /// Histories in `db`.
    pub fn new(db: Db) -> Self {
        Self {
            log: EventLog::new(db.clone()),
            blobs: BlobStore::new(db.clone()),
            db,
        }
    }

    /// The runs of `run_ids` that the log has none of.
    pub async fn unknown(&self, run_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let present = self.present(run_ids.iter()).await?;
        Ok(run_ids
            .iter()
            .filter(|id| !present.contains(id))
            .cloned()
            .collect())
    }

    /// The runs of `run_ids` that have finished (folded from their events:
    /// completed, failed or cancelled), the ones an import accepts.
    pub async fn finished(&self, run_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut done = Vec::new();
        for id in run_ids {
            let mut events = Vec::new();
            let mut after = 0;
            loop {
                let page = self.log.events_of("Run", id, after, 1000).await?;
                let Some(last) = page.last().map(|e| e.sequence) else {
                    break;
                };
                events.extend(page.into_iter().map(|e| {
                    SerializedEvent::new(
                        id.clone(),
                        usize::try_from(e.sequence).unwrap_or_default(),
                        "Run".into(),
                        e.event_type,
                        e.event_version,
                        e.payload,
                        e.metadata,
                    )
                }));
                after = last;
            }
            // A run this build cannot fold is left out too: an import
            // would refuse it.
            if fold(&events).is_ok_and(|run| run.status.is_finished()) {
                done.push(id.clone());
            }
        }
        Ok(done)
    }

    /// Writes the history of `run_ids` (each known to the log), one JSON
    /// line at a time through `write`.
    pub async fn export(
        &self,
        run_ids: &[String],
        mut write: impl FnMut(&Value) -> std::io::Result<()>,
    ) -> Result<HistoryCounts, StoreError> {
        let io = |e: std::io::Error| StoreError::Database(format!("writing the export: {e}"));
        write(&json!({
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            "exported_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "runlog": env!("CARGO_PKG_VERSION"),
            "runs": run_ids,
        }))
        .map_err(io)?;
        let mut counts = HistoryCounts::default();
        // The bodies the runs still have: each run's references but those
        // it purged (another run may share a purged body and keep it).
        let mut kept = BTreeSet::new();
        for id in run_ids {
            let mut referenced = BTreeSet::new();
            let mut purged = BTreeSet::new();
            let mut after = 0;
            loop {
                let events = self.log.events_of("Run", id, after, 1000).await?;
                let Some(last) = events.last().map(|e| e.sequence) else {
                    break;
                };
                for event in events {
                    blob_keys(&event.payload, &mut referenced);
                    purged_keys(&event.event_type, &event.payload, &mut purged);
                    write(&json!({
                        "kind": "event",
                        "aggregate_type": "Run",
                        "aggregate_id": id,
                        "sequence": event.sequence,
                        "event_type": event.event_type,
                        "event_version": event.event_version,
                        "payload": event.payload,
                        "metadata": event.metadata,
                    }))
                    .map_err(io)?;
                    counts.events += 1;
                }
                after = last;
            }
            kept.extend(referenced.difference(&purged).cloned());
            counts.runs += 1;
        }
        for key in &kept {
            let Some(body) = self.blobs.get(key).await? else {
                return Err(StoreError::Corrupt(format!(
                    "blob {key} is referenced by an event but not stored (if a purge ran while \
                     this export read the log, export again)"
                )));
            };
            write(&json!({"kind": "blob", "sha256": key, "size": body.len(), "hex": hex::encode(&body)}))
                .map_err(io)?;
            counts.blobs += 1;
        }
        write(
            &json!({"kind": "end", "runs": counts.runs, "events": counts.events,
                      "blobs": counts.blobs}),
        )
        .map_err(io)?;
        Ok(counts)
    }

    /// Imports a history written by [`History::export`], all or nothing.
    pub async fn import(&self, input: impl BufRead) -> Result<HistoryCounts, ImportError> {
        let file = parse(input)?;
        // Refused before anything is written.
        let exists = self
            .present(file.runs.keys())
            .await
            .map_err(ImportError::Store)?;
        if !exists.is_empty() {
            return Err(ImportError::Exists(exists));
        }
        if !file.unfinished.is_empty() {
            return Err(ImportError::Unfinished(file.unfinished));
        }
        let counts = HistoryCounts {
            runs: file.runs.len(),
            events: file.runs.values().map(Vec::len).sum(),
            blobs: file.blobs.len(),
        };
        with_pool!(&self.db, pool => {
            let mut tx = pool.begin_write().await?;
            for (key, body) in &file.blobs {
                sqlx::query(BLOB_PUT)
                    .bind(key)
                    .bind(i64::try_from(body.len()).unwrap_or(i64::MAX))
                    .bind(body.as_slice())
                    .execute(&mut *tx)
                    .await?;
            }
            for (run_id, keys) in &file.refs {
                for key in keys {
                    sqlx::query(BLOB_REF_PUT).bind(key).bind(run_id).execute(&mut *tx).await?;
                }
            }
            for events in file.runs.values() {
                for e in events {
                    sqlx::query(EVENT_INSERT)
                        .bind("Run")
                        .bind(&e.aggregate_id)
                        .bind(e.sequence as i64)
                        .bind(&e.event_type)
                        .bind(&e.event_version)
                        .bind(&e.payload)
                        .bind(&e.metadata)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        crate::db::count_commit();
        Ok(counts)
    }

    /// The runs of `ids` the log has events of.
    async fn present(&self, ids: impl Iterator<Item = &String>) -> Result<Vec<String>, StoreError> {
        let mut present = Vec::new();
        for id in ids {
            if !self.log.events_of("Run", id, 0, 1).await?.is_empty() {
                present.push(id.clone());
            }
        }
        Ok(present)
    }
}

/// The blob keys an event payload references (`{"blob": {"sha256": …}}`
/// anywhere in it).
fn blob_keys(value: &Value, keys: &mut BTreeSet<String>) {
    match value {
        Value::Object(object) => {
            if let Some(key) = object
                .get("blob")
                .and_then(|b| b.get("sha256"))
                .and_then(Value::as_str)
            {
                keys.insert(key.to_string());
            }
            for v in object.values() {
                blob_keys(v, keys);
            }
        }
        Value::Array(items) => {
            for v in items {
                blob_keys(v, keys);
            }
        }
        _ => {}
    }
}

/// The blob keys an `ArtifactsPurged` event names: bodies its run no
/// longer has.
fn purged_keys(event_type: &str, payload: &Value, keys: &mut BTreeSet<String>) {
    if event_type != "ArtifactsPurged" {
        return;
    }
    for version in payload["ArtifactsPurged"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(key) = version["sha256"].as_str() {
            keys.insert(key.to_string());
        }
    }
}

/// A whole, checked history file.
struct HistoryFile {
    /// Each run's events, in sequence order.
    runs: BTreeMap<String, Vec<SerializedEvent>>,
    /// Blob bodies by key.
    blobs: BTreeMap<String, Vec<u8>>,
    /// The blobs each run references (the ones it has not purged).
    refs: BTreeMap<String, BTreeSet<String>>,
    /// The runs that had not finished when exported.
    unfinished: Vec<String>,
}

fn format_error(line: usize, reason: impl Into<String>) -> ImportError {
    ImportError::Format {
        line,
        reason: reason.into(),
    }
}

/// Reads and checks a history file: the header first, the end last with
/// the counts, every run's events from sequence 1 with no gap, every
/// referenced blob present and matching its hash.
fn parse(input: impl BufRead) -> Result<HistoryFile, ImportError> {
    let mut runs: BTreeMap<String, Vec<SerializedEvent>> = BTreeMap::new();
    let mut blobs = BTreeMap::new();
    let mut referenced: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut purged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut header: Option<Vec<String>> = None;
    let mut end: Option<(usize, Value)> = None;
    let mut last_line = 0;
    for (i, line) in input.lines().enumerate() {
        let n = i + 1;
        last_line = n;
        let line = line.map_err(|e| format_error(n, format!("cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        if end.is_some() {
            return Err(format_error(n, "a line after the end record"));
        }
        let record: Value =
            serde_json::from_str(&line).map_err(|e| format_error(n, format!("not JSON: {e}")))?;
        let kind = record["kind"].as_str().unwrap_or("");
        if header.is_none() {
            if kind != KIND {
                return Err(format_error(
                    n,
                    "not a runlog history (the first line must be its header)",
                ));
            }
            let version = record["format_version"].as_u64();
            if version != Some(FORMAT_VERSION) {
                return Err(format_error(
                    n,
                    format!(
                        "format version {} (this build reads {FORMAT_VERSION})",
                        record["format_version"]
                    ),
                ));
            }
            let ids = record["runs"]
                .as_array()
                .ok_or_else(|| format_error(n, "the header lists no runs"))?
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format_error(n, "a run id is not a string"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            header = Some(ids);
            continue;
        }
        match kind {
            "event" => {
                let text = |field: &str| {
                    record[field]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format_error(n, format!("an event without `{field}`")))
                };
                if record["aggregate_type"] != "Run" {
                    return Err(format_error(n, "only run events are imported"));
                }
                let id = text("aggregate_id")?;
                if crate::domain::ids::RunId::parse(&id).is_err() {
                    return Err(format_error(n, format!("'{id}' is not a run id")));
                }
                let sequence = record["sequence"]
                    .as_u64()
                    .ok_or_else(|| format_error(n, "an event without a sequence"))?;
                let events = runs.entry(id.clone()).or_default();
                if sequence != events.len() as u64 + 1 {
                    return Err(format_error(n, format!(
                        "run {id}: event {sequence} where {} was due (events must follow each other from 1)",
                        events.len() + 1
                    )));
                }
                let event_type = text("event_type")?;
                blob_keys(
                    &record["payload"],
                    referenced.entry(id.clone()).or_default(),
                );
                purged_keys(
                    &event_type,
                    &record["payload"],
                    purged.entry(id.clone()).or_default(),
                );
                events.push(SerializedEvent::new(
                    id,
                    sequence as usize,
                    "Run".into(),
                    event_type,
                    text("event_version")?,
                    record["payload"].clone(),
                    record["metadata"].clone(),
                ));
            }
            "blob" => {
                let key = record["sha256"].as_str().unwrap_or("").to_string();
                let body = record["hex"]
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| format_error(n, "a blob without its hex body"))?;
                if BlobStore::key_of(&body) != key {
                    return Err(format_error(
                        n,
                        format!("blob {key}: its body does not match its hash"),
                    ));
                }
                blobs.insert(key, body);
            }
            "end" => end = Some((n, record)),
            other => return Err(format_error(n, format!("unknown record kind '{other}'"))),
        }
    }
    let Some(listed) = header else {
        return Err(format_error(0, "the file is empty"));
    };
    let Some((n, end)) = end else {
        return Err(format_error(
            last_line,
            "the file ends before its end record (truncated?)",
        ));
    };
    let events: usize = runs.values().map(Vec::len).sum();
    let counts = (
        end["runs"].as_u64(),
        end["events"].as_u64(),
        end["blobs"].as_u64(),
    );
    if counts
        != (
            Some(runs.len() as u64),
            Some(events as u64),
            Some(blobs.len() as u64),
        )
    {
        return Err(format_error(
            n,
            format!(
                "the end record counts {end} but the file holds {} runs, {events} events, {} blobs",
                runs.len(),
                blobs.len()
            ),
        ));
    }
    let listed: BTreeSet<String> = listed.into_iter().collect();
    if listed != runs.keys().cloned().collect::<BTreeSet<_>>() {
        return Err(format_error(
            1,
            "the header's runs are not the runs the file holds",
        ));
    }
    // What each run still references (not what it purged) must be here.
    let mut refs = BTreeMap::new();
    for (id, keys) in referenced {
        let gone = purged.remove(&id).unwrap_or_default();
        let kept: BTreeSet<String> = keys.difference(&gone).cloned().collect();
        if let Some(missing) = kept.iter().find(|k| !blobs.contains_key(*k)) {
            return Err(format_error(
                0,
                format!("blob {missing} is referenced but not in the file"),
            ));
        }
        refs.insert(id, kept);
    }
    // Every event must read with this build (through its upcasters); the
    // fold says which runs had finished.
    let mut unfinished = Vec::new();
    for (id, events) in &runs {
        let run = fold(events).map_err(|(e, err)| {
            format_error(
                0,
                format!(
                    "run {} event {} ({} {}) cannot be read by this build: {err}",
                    e.aggregate_id, e.sequence, e.event_type, e.event_version
                ),
            )
        })?;
        if !run.status.is_finished() {
            unfinished.push(id.clone());
        }
    }
    Ok(HistoryFile {
        runs,
        blobs,
        refs,
        unfinished,
    })
}

/// The run these stored events fold into (through the upcasters), or the
/// first event this build cannot read and why.
fn fold(events: &[SerializedEvent]) -> Result<Run, (&SerializedEvent, PersistenceError)> {
    let mut run = Run::default();
    for e in events {
        let envelope = EventEnvelope::<Run>::try_from(super::upcast::upcast(e.clone()))
            .map_err(|err| (e, err))?;
        run.apply_event(envelope.payload);
    }
    Ok(run)
}
