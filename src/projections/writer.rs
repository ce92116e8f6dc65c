//! The projection writer: a task that applies committed events to the read
//! models, many runs per transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::{EventEnvelope, Query};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::detail::RunDetail;
use super::ProjectionError;
use crate::db::{BeginWrite, Db};
use crate::domain::run::{Run, RunEvent};
use crate::domain::template::{Template, TemplateEvent};
use crate::with_pool;

const DETAIL_GET: &str = include_str!("sql/detail_get.sql");
const DETAIL_PUT: &str = include_str!("sql/detail_put.sql");
const SUMMARY_PUT: &str = include_str!("sql/summary_put.sql");
const ARTIFACT_PUT: &str = include_str!("sql/artifact_put.sql");
const TEMPLATE_GET: &str = include_str!("sql/template_get.sql");
const TEMPLATE_PUT: &str = include_str!("sql/template_put.sql");
const STALE_RUNS: &str = include_str!("sql/stale_runs.sql");
const STALE_TEMPLATES: &str = include_str!("sql/stale_templates.sql");
const EVENTS_AFTER: &str = include_str!("sql/events_after.sql");

/// Most jobs grouped into one transaction.
const MAX_JOBS_PER_TRANSACTION: usize = 256;
/// Attempts at one transaction before its jobs are answered with the error.
const WRITE_ATTEMPTS: u32 = 3;

/// Events of one aggregate, as the writer receives them.
enum Batch {
    Runs(String, Vec<(u64, RunEvent)>),
    Templates(String, Vec<(u64, TemplateEvent)>),
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the projection writer task. Cheap to clone.
///
/// The queue is unbounded so that queueing never waits and never reorders;
/// callers keep it short by waiting for their writes when [`backlog`]
/// grows (see the engine).
///
/// [`backlog`]: Projector::backlog
#[derive(Clone, Debug)]
pub struct Projector {
    sender: mpsc::UnboundedSender<Job>,
    backlog: Arc<AtomicUsize>,
    db: Db,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Projector {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(db: Db) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(db.clone(), receiver, backlog.clone()));
        Self {
            sender,
            backlog,
            db,
        }
    }

    /// Jobs queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Queues a batch now (so batches of one caller are written in the order
    /// queued) and returns a future that resolves once it is written.
    fn queue(
        &self,
        batch: Batch,
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'static {
        let (done, answer) = oneshot::channel();
        self.backlog.fetch_add(1, Ordering::Relaxed);
        let queued = self.sender.send(Job { batch, done });
        if queued.is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
        async move {
            queued.map_err(|_| ProjectionError::WriterStopped)?;
            answer
                .await
                .map_err(|_| ProjectionError::WriterStopped)?
                .map_err(ProjectionError::WriteFailed)
        }
    }

    async fn submit(&self, batch: Batch) -> Result<(), ProjectionError> {
        self.queue(batch).await
    }

    /// Queues committed run events (in the order of calls) and returns a
    /// future that resolves once they are written.
    pub fn queue_runs(
        &self,
        events: &[EventEnvelope<Run>],
    ) -> impl Future<Output = Result<(), ProjectionError>> + Send + 'static {
        let batch = events.first().map(|first| {
            let events = events
                .iter()
                .map(|e| (e.sequence as u64, e.payload.clone()))
                .collect();
            Batch::Runs(first.aggregate_id.clone(), events)
        });
        let queued = batch.map(|b| self.queue(b));
        async move {
            match queued {
                Some(written) => written.await,
                None => Ok(()),
            }
        }
    }

    /// Applies committed run events and waits until they are written.
    pub async fn project_runs(&self, events: &[EventEnvelope<Run>]) -> Result<(), ProjectionError> {
        self.queue_runs(events).await
    }

    /// Applies committed template events and waits until they are written.
    pub async fn project_templates(
        &self,
        events: &[EventEnvelope<Template>],
    ) -> Result<(), ProjectionError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let batch = events
            .iter()
            .map(|e| (e.sequence as u64, e.payload.clone()))
            .collect();
        self.submit(Batch::Templates(first.aggregate_id.clone(), batch))
            .await
    }

    /// Brings every read model up to its log: re-applies the events that a
    /// crash between commit and projection left out. Returns how many
    /// aggregates were repaired.
    pub async fn catch_up(&self) -> Result<usize, ProjectionError> {
        let mut repaired = 0;
        for (query, aggregate_type) in [(STALE_TEMPLATES, "Template"), (STALE_RUNS, "Run")] {
            let stale: Vec<(String, i64)> = with_pool!(&self.db, pool => {
                sqlx::query_as(query).fetch_all(pool).await?
            });
            for (id, projected) in stale {
                let rows: Vec<(i64, Value)> = with_pool!(&self.db, pool => {
                    sqlx::query(EVENTS_AFTER)
                        .bind(aggregate_type)
                        .bind(&id)
                        .bind(projected)
                        .fetch_all(pool)
                        .await?
                        .into_iter()
                        .map(|r| Ok::<_, sqlx::Error>((r.try_get("sequence")?, r.try_get("payload")?)))
                        .collect::<Result<Vec<_>, _>>()?
                });
                let batch = if aggregate_type == "Run" {
                    let events = rows
                        .into_iter()
                        .map(|(seq, p)| Ok((seq as u64, serde_json::from_value(p)?)))
                        .collect::<Result<Vec<_>, serde_json::Error>>()?;
                    Batch::Runs(id, events)
                } else {
                    let events = rows
                        .into_iter()
                        .map(|(seq, p)| Ok((seq as u64, serde_json::from_value(p)?)))
                        .collect::<Result<Vec<_>, serde_json::Error>>()?;
                    Batch::Templates(id, events)
                };
                self.submit(batch).await?;
                repaired += 1;
            }
        }
        if repaired > 0 {
            tracing::warn!(
                repaired,
                "read models were behind the log and have been caught up"
            );
        }
        Ok(repaired)
    }
}

async fn write_loop(db: Db, mut receiver: mpsc::UnboundedReceiver<Job>, backlog: Arc<AtomicUsize>) {
    while let Some(first) = receiver.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_TRANSACTION {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut attempt = 0;
        let result = loop {
            attempt += 1;
            match write(&db, &jobs).await {
                Ok(()) => break Ok(()),
                Err(e) if attempt < WRITE_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "projection write failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        backlog.fetch_sub(jobs.len(), Ordering::Relaxed);
        for job in jobs {
            let _ = job.done.send(result.clone());
        }
    }
}

/// Writes every job's events in one transaction.
async fn write(db: &Db, jobs: &[Job]) -> Result<(), ProjectionError> {
    // Group by aggregate so each document is read and written once.
    let mut runs: BTreeMap<&str, Vec<&(u64, RunEvent)>> = BTreeMap::new();
    let mut templates: BTreeMap<&str, Vec<&(u64, TemplateEvent)>> = BTreeMap::new();
    for job in jobs {
        match &job.batch {
            Batch::Runs(id, events) => runs.entry(id).or_default().extend(events.iter()),
            Batch::Templates(id, events) => templates.entry(id).or_default().extend(events.iter()),
        }
    }
    with_pool!(db, pool => {
        let mut tx = pool.begin_write().await?;
        for (run_id, events) in runs {
            let doc: Option<Value> = sqlx::query_scalar(DETAIL_GET)
                .bind(run_id)
                .fetch_optional(&mut *tx)
                .await?;
            let mut detail: RunDetail = match doc {
                Some(doc) => serde_json::from_value(doc)?,
                None => RunDetail::default(),
            };
            let before = detail.sequence;
            // A gap (an earlier batch was lost to a failed write) is filled
            // from the log, which holds every committed event.
            let from_log;
            let events: Vec<&(u64, RunEvent)> = if events.first().is_some_and(|(s, _)| *s > before + 1) {
                from_log = events_after::<RunEvent, _>(&mut tx, "Run", run_id, before).await?;
                from_log.iter().collect()
            } else {
                events
            };
            for (sequence, event) in events {
                if *sequence <= detail.sequence {
                    continue;
                }
                detail.apply(*sequence, event);
                if let RunEvent::StepCompleted { step, attempt, artifacts, at, .. } = event {
                    for written in artifacts {
                        sqlx::query(ARTIFACT_PUT)
                            .bind(run_id)
                            .bind(written.name.as_str())
                            .bind(i64::from(written.version))
                            .bind(step.as_str())
                            .bind(i64::from(*attempt))
                            .bind(at.0)
                            .bind(serde_json::to_value(&written.content)?)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
            }
            if detail.sequence == before {
                continue;
            }
            let created = created_at_ms(&detail);
            let updated = updated_at_ms(&detail);
            sqlx::query(SUMMARY_PUT)
                .bind(run_id)
                .bind(&detail.template_id)
                .bind(i64::from(detail.template_version))
                .bind(detail.status.as_str())
                .bind(created)
                .bind(updated)
                .bind(detail.sequence as i64)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DETAIL_PUT)
                .bind(run_id)
                .bind(detail.sequence as i64)
                .bind(serde_json::to_value(&detail)?)
                .execute(&mut *tx)
                .await?;
        }
        for (template_id, events) in templates {
            let row = sqlx::query(TEMPLATE_GET)
                .bind(template_id)
                .fetch_optional(&mut *tx)
                .await?;
            let mut view = match row {
                Some(row) => super::reads::template_from_row(&row)?,
                None => super::reads::TemplateRow::default(),
            };
            let before = view.last_sequence;
            let from_log;
            let events: Vec<&(u64, TemplateEvent)> = if events.first().is_some_and(|(s, _)| *s > before + 1) {
                from_log = events_after::<TemplateEvent, _>(&mut tx, "Template", template_id, before).await?;
                from_log.iter().collect()
            } else {
                events
            };
            for (sequence, event) in events {
                view.apply(template_id, *sequence, event);
            }
            if view.last_sequence == before {
                continue;
            }
            sqlx::query(TEMPLATE_PUT)
                .bind(&view.id)
                .bind(&view.name)
                .bind(&view.description)
                .bind(i64::from(view.version))
                .bind(&view.definition)
                .bind(i64::from(view.archived))
                .bind(view.created_at)
                .bind(view.updated_at)
                .bind(view.last_sequence as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    crate::db::count_commit();
    Ok(())
}

/// The events of one aggregate after `after`, read from the log.
async fn events_after<E, DB>(
    tx: &mut sqlx::Transaction<'static, DB>,
    aggregate_type: &str,
    id: &str,
    after: u64,
) -> Result<Vec<(u64, E)>, ProjectionError>
where
    E: serde::de::DeserializeOwned,
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> <DB as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB> + for<'r> sqlx::Decode<'r, DB>,
    Value: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    for<'r> &'r str: sqlx::ColumnIndex<DB::Row>,
{
    let rows = sqlx::query(EVENTS_AFTER)
        .bind(aggregate_type)
        .bind(id)
        .bind(after as i64)
        .fetch_all(&mut **tx)
        .await?;
    rows.iter()
        .map(|row| {
            let sequence: i64 = row.try_get("sequence")?;
            let payload: Value = row.try_get("payload")?;
            Ok((sequence as u64, serde_json::from_value(payload)?))
        })
        .collect()
}

fn parse_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).map_or(0, |t| t.timestamp_millis())
}

fn created_at_ms(detail: &RunDetail) -> i64 {
    parse_ms(&detail.created_at)
}

fn updated_at_ms(detail: &RunDetail) -> i64 {
    parse_ms(&detail.updated_at)
}

#[async_trait::async_trait]
impl Query<Template> for Projector {
    async fn dispatch(&self, aggregate_id: &str, events: &[EventEnvelope<Template>]) {
        if let Err(e) = self.project_templates(events).await {
            tracing::error!(template_id = aggregate_id, error = %e, "template projection failed; it is repaired by the next catch-up");
        }
    }
}
