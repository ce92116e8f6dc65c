//! The projection writer: a task that applies committed events to the read
//! models, many runs per transaction.

use std::collections::{BTreeMap, HashMap};
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
use crate::db::{BeginWrite, Commits, Db};
use crate::domain::ids::{StepId, Timestamp};
use crate::domain::run::{Author, MessageStatus, Run, RunEvent};
use crate::domain::template::{Template, TemplateEvent};
use crate::with_pool;

const PG_DETAILS_GET: &str = include_str!("sql/postgres/details_get_many.sql");
const SQLITE_DETAILS_GET: &str = include_str!("sql/sqlite/details_get_many.sql");
const DETAIL_PUT: &str = include_str!("sql/detail_put.sql");
const SUMMARY_PUT: &str = include_str!("sql/summary_put.sql");
const ARTIFACT_PUT: &str = include_str!("sql/artifact_put.sql");
const TEMPLATE_GET: &str = include_str!("sql/template_get.sql");
const TEMPLATE_PUT: &str = include_str!("sql/template_put.sql");
const STALE_RUNS: &str = include_str!("sql/stale_runs.sql");
const STALE_TEMPLATES: &str = include_str!("sql/stale_templates.sql");
const EVENTS_AFTER: &str = include_str!("sql/events_after.sql");
const PG_ROWS_PUT: &str = include_str!("sql/postgres/rows_put.sql");
const MESSAGE_PUT: &str = include_str!("sql/message_put.sql");
const MESSAGE_STATUS: &str = include_str!("sql/message_status.sql");

/// Most jobs grouped into one transaction.
const MAX_JOBS_PER_TRANSACTION: usize = 256;
/// Detail documents each writer keeps in memory (so a batch need not read
/// them back); past this the cache is emptied.
const DOC_CACHE_LIMIT: usize = 10_000;
/// Attempts at one transaction before its jobs are answered with the error.
const WRITE_ATTEMPTS: u32 = 3;

/// Events of one aggregate, as the writer receives them.
enum Batch {
    Runs(String, Vec<(u64, RunEvent)>),
    Templates(String, Vec<(u64, TemplateEvent)>),
    /// Writes nothing; answered once everything queued before it is written.
    Barrier,
}

struct Job {
    batch: Batch,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the projection writer task. Cheap to clone.
///
/// One task writes every read model, so one aggregate's batches are
/// written in the order queued. (PostgreSQL had four, each owning the
/// aggregates that hashed to it, while a batch took six round trips; now
/// that a batch is one statement, one task gathers more events per batch:
/// W1 with remote workers, 25.4 statements per run against 28.5 with four,
/// and a higher throughput; docs/benchmarks.md.)
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
    /// Starts the writer task, on a thread of its own.
    pub fn start(db: Db) -> Self {
        let backlog = Arc::new(AtomicUsize::new(0));
        let (sender, receiver) = mpsc::unbounded_channel();
        let counter = backlog.clone();
        crate::db::spawn_dedicated(
            "runlog-projector",
            db.clone(),
            2,
            // Durable: the writer's document cache assumes that what
            // committed stays (a batch lost while the server goes on would
            // be hidden by the next one, which builds on the cache).
            Commits::Durable,
            move |db| write_loop(db, receiver, counter),
        );
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
        let queued = self.enqueue(batch);
        async move {
            queued?
                .await
                .map_err(|_| ProjectionError::WriterStopped)?
                .map_err(ProjectionError::WriteFailed)
        }
    }

    /// Sends one job to the writer, counting it in the backlog until the
    /// writer answers; returns where the answer will come.
    fn enqueue(
        &self,
        batch: Batch,
    ) -> Result<oneshot::Receiver<Result<(), String>>, ProjectionError> {
        let (done, answer) = oneshot::channel();
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.sender.send(Job { batch, done }).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
            return Err(ProjectionError::WriterStopped);
        }
        Ok(answer)
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

    /// Resolves once every job queued before the call is written.
    pub fn barrier(&self) -> impl Future<Output = ()> + Send + 'static {
        let answer = self.enqueue(Batch::Barrier).ok();
        async move {
            if let Some(answer) = answer {
                let _ = answer.await;
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
        self.queue(Batch::Templates(first.aggregate_id.clone(), batch))
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
                self.queue(batch).await?;
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
    let mut cache: HashMap<String, RunDetail> = HashMap::new();
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
            match write(&db, &jobs, &cache).await {
                Ok(written) => {
                    if cache.len() + written.len() > DOC_CACHE_LIMIT {
                        cache.clear();
                    }
                    for doc in written {
                        // Finished runs rarely change again: do not keep them.
                        if doc.status.is_finished() {
                            cache.remove(&doc.id);
                        } else {
                            cache.insert(doc.id.clone(), doc);
                        }
                    }
                    break Ok(());
                }
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

/// Writes every job's events in one transaction; returns the run detail
/// documents written (the caller caches them once the write succeeded).
///
/// The documents a batch builds on are read first, outside the write (this
/// writer is the only one for its runs); the rows then go in at once: on
/// PostgreSQL one statement, which is its own transaction (a batch with
/// template events, which are rare, takes a transaction of a few).
async fn write(
    db: &Db,
    jobs: &[Job],
    cache: &HashMap<String, RunDetail>,
) -> Result<Vec<RunDetail>, ProjectionError> {
    let mut written = Vec::new();
    // Group by aggregate so each document is read and written once.
    let mut runs: BTreeMap<&str, Vec<&(u64, RunEvent)>> = BTreeMap::new();
    let mut templates: BTreeMap<&str, Vec<&(u64, TemplateEvent)>> = BTreeMap::new();
    for job in jobs {
        match &job.batch {
            Batch::Runs(id, events) => runs.entry(id).or_default().extend(events.iter()),
            Batch::Templates(id, events) => templates.entry(id).or_default().extend(events.iter()),
            Batch::Barrier => {}
        }
    }
    if runs.is_empty() && templates.is_empty() {
        // Only barriers: nothing to write.
        return Ok(written);
    }
    // A cached document is as good as the stored one: this writer is the
    // only one for its runs, and a stale one (another node wrote since)
    // shows as a gap and is filled from the log. A batch that starts at the
    // run's first event builds its document afresh; the others are read in
    // one query.
    let first_of = |events: &[&(u64, RunEvent)]| events.first().map_or(0, |(s, _)| *s);
    let uncached: Vec<&str> = runs
        .iter()
        .filter(|(id, events)| !cache.contains_key(**id) && first_of(events) != 1)
        .map(|(id, _)| *id)
        .collect();
    let mut stored = stored_details(db, &uncached).await?;
    let mut rows = Rows::default();
    with_pool!(db, pool => {
        for (run_id, events) in runs {
            let first = first_of(&events);
            let mut detail: RunDetail = match cache.get(run_id) {
                Some(cached) => cached.clone(),
                None => stored.remove(run_id).unwrap_or_default(),
            };
            let before = detail.sequence;
            // A gap (an earlier batch was lost to a failed write) is filled
            // from the log, which holds every committed event.
            let from_log;
            let events: Vec<&(u64, RunEvent)> = if first > before + 1 {
                from_log = events_after::<RunEvent, _, _>(pool, "Run", run_id, before).await?;
                from_log.iter().collect()
            } else {
                events
            };
            for (sequence, event) in events {
                if *sequence <= detail.sequence {
                    continue;
                }
                detail.apply(*sequence, event);
                rows.add(run_id, *sequence, event)?;
            }
            if detail.sequence == before {
                continue;
            }
            rows.details.push(DetailRow {
                run_id: run_id.to_string(),
                template_id: detail.template_id.clone(),
                template_version: i64::from(detail.template_version),
                status: detail.status.as_str(),
                created_at: created_at_ms(&detail),
                updated_at: updated_at_ms(&detail),
                sequence: detail.sequence as i64,
                agents: detail.agents_list(),
                lease_expires_at: detail.earliest_lease_expiry().map(|t| t.0),
                refine: detail.refine_summary(),
                doc: serde_json::to_string(&detail)?,
            });
            written.push(detail);
        }
        if templates.is_empty() {
            if rows.is_empty() {
                // Every event was applied already: nothing to write.
                return Ok(written);
            }
            RowWriter::write_alone(pool, &rows).await?;
        } else {
            let mut tx = pool.begin_write().await?;
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
                    from_log = events_after::<TemplateEvent, _, _>(&mut *tx, "Template", template_id, before).await?;
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
            RowWriter::write_rows(&mut tx, &rows).await?;
            tx.commit().await?;
        }
    });
    crate::db::count_commit();
    Ok(written)
}

/// The stored detail documents of `run_ids` (those that have one).
async fn stored_details(
    db: &Db,
    run_ids: &[&str],
) -> Result<HashMap<String, RunDetail>, ProjectionError> {
    if run_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = match db {
        Db::Postgres(pool) => {
            sqlx::query_as(PG_DETAILS_GET)
                .bind(run_ids)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            sqlx::query_as(SQLITE_DETAILS_GET)
                .bind(serde_json::to_string(run_ids)?)
                .fetch_all(pool)
                .await?
        }
    };
    rows.into_iter()
        .map(|(id, doc)| Ok((id, serde_json::from_str(&doc)?)))
        .collect()
}

/// One artifact version to insert.
struct ArtifactRow {
    run_id: String,
    name: String,
    version: i64,
    step: String,
    attempt: i64,
    created_at: i64,
    content: Value,
}

/// One run's summary and detail document to upsert.
struct DetailRow {
    run_id: String,
    template_id: String,
    template_version: i64,
    status: &'static str,
    created_at: i64,
    updated_at: i64,
    sequence: i64,
    /// `,a,b,`: the agents of its steps and evaluators.
    agents: String,
    lease_expires_at: Option<i64>,
    refine: Option<Value>,
    /// The document as JSON text.
    doc: String,
}

/// One thread message to insert.
struct MessageRow {
    run_id: String,
    message: i64,
    author: &'static str,
    action: &'static str,
    content: String,
    metadata: Option<Value>,
    idempotency_key: Option<String>,
    /// When it was posted.
    created_at: i64,
    /// Its status, step and reason as of the batch's last change to it
    /// (`at`: when its status last changed).
    state: StatusRow,
}

/// A thread message's status, step and reason, as of a change.
struct StatusRow {
    status: &'static str,
    step: Option<String>,
    reason: Option<String>,
    at: i64,
    sequence: i64,
}

impl StatusRow {
    /// Applies a later status change: the latest status and reason win; a
    /// step stays unless the change names another (as `COALESCE` in the
    /// statements).
    fn change(
        &mut self,
        status: MessageStatus,
        step: Option<&StepId>,
        reason: Option<&String>,
        at: Timestamp,
        sequence: u64,
    ) {
        self.status = status.as_str();
        if let Some(step) = step {
            self.step = Some(step.to_string());
        }
        self.reason = reason.cloned();
        self.at = at.0;
        self.sequence = sequence as i64;
    }
}

/// The rows a batch writes, collected first so that PostgreSQL can take
/// them in a few multi-row statements.
#[derive(Default)]
struct Rows {
    artifacts: Vec<ArtifactRow>,
    details: Vec<DetailRow>,
    messages: Vec<MessageRow>,
    /// The latest status change of each message, by (run, message).
    statuses: BTreeMap<(String, i64), StatusRow>,
}

impl Rows {
    fn is_empty(&self) -> bool {
        self.artifacts.is_empty()
            && self.details.is_empty()
            && self.messages.is_empty()
            && self.statuses.is_empty()
    }

    /// Collects the artifact and thread rows one run event implies.
    fn add(
        &mut self,
        run_id: &str,
        sequence: u64,
        event: &RunEvent,
    ) -> Result<(), ProjectionError> {
        match event {
            RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                at,
                ..
            }
            | RunEvent::StepAwaitingReview {
                step,
                attempt,
                artifacts,
                at,
                ..
            }
            | RunEvent::StepProduced {
                step,
                attempt,
                artifacts,
                at,
                ..
            } => {
                for written in artifacts {
                    self.artifacts.push(ArtifactRow {
                        run_id: run_id.to_string(),
                        name: written.name.to_string(),
                        version: i64::from(written.version),
                        step: step.to_string(),
                        attempt: i64::from(*attempt),
                        created_at: at.0,
                        content: serde_json::to_value(&written.content)?,
                    });
                }
            }
            RunEvent::MessagePosted {
                message,
                author,
                action,
                content,
                metadata,
                step,
                idempotency_key,
                status,
                reason,
                at,
            } => self.messages.push(MessageRow {
                run_id: run_id.to_string(),
                message: i64::from(*message),
                author: match author {
                    Author::User => "user",
                    Author::Agent => "agent",
                    Author::System => "system",
                },
                action: action.as_str(),
                content: content.clone(),
                metadata: (!metadata.is_null()).then(|| metadata.clone()),
                idempotency_key: idempotency_key.clone(),
                created_at: at.0,
                state: StatusRow {
                    status: status.as_str(),
                    step: step.as_ref().map(ToString::to_string),
                    reason: reason.clone(),
                    at: at.0,
                    sequence: sequence as i64,
                },
            }),
            RunEvent::MessageStatusChanged {
                message,
                status,
                step,
                reason,
                at,
            } => {
                // A message posted in this batch takes its new status in its
                // insert (the parts of the PostgreSQL statement do not see
                // each other's rows); an earlier one gets an update.
                let number = i64::from(*message);
                let posted = self
                    .messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.run_id == run_id && m.message == number);
                let row = match posted {
                    Some(posted) => &mut posted.state,
                    None => {
                        self.statuses
                            .entry((run_id.to_string(), number))
                            .or_insert(StatusRow {
                                status: status.as_str(),
                                step: None,
                                reason: None,
                                at: at.0,
                                sequence: sequence as i64,
                            })
                    }
                };
                row.change(*status, step.as_ref(), reason.as_ref(), *at, sequence);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Writes a batch's rows: one statement per row on SQLite (in-process, so
/// cheap); one statement for the whole batch on PostgreSQL, where every
/// statement is a round trip.
trait RowWriter: sqlx::Database {
    /// Writes `rows` (not empty) in a transaction of their own.
    async fn write_alone(pool: &sqlx::Pool<Self>, rows: &Rows) -> Result<(), sqlx::Error>;

    /// Writes `rows` inside `tx`.
    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
    ) -> Result<(), sqlx::Error>;
}

impl RowWriter for sqlx::Sqlite {
    async fn write_alone(pool: &sqlx::Pool<Self>, rows: &Rows) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin_write().await?;
        Self::write_rows(&mut tx, rows).await?;
        tx.commit().await
    }

    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
    ) -> Result<(), sqlx::Error> {
        for a in &rows.artifacts {
            sqlx::query(ARTIFACT_PUT)
                .bind(&a.run_id)
                .bind(&a.name)
                .bind(a.version)
                .bind(&a.step)
                .bind(a.attempt)
                .bind(a.created_at)
                .bind(&a.content)
                .execute(&mut **tx)
                .await?;
        }
        for m in &rows.messages {
            sqlx::query(MESSAGE_PUT)
                .bind(&m.run_id)
                .bind(m.message)
                .bind(m.author)
                .bind(m.action)
                .bind(&m.content)
                .bind(&m.metadata)
                .bind(&m.state.step)
                .bind(&m.idempotency_key)
                .bind(m.state.status)
                .bind(&m.state.reason)
                .bind(m.created_at)
                .bind(m.state.at)
                .bind(m.state.sequence)
                .execute(&mut **tx)
                .await?;
        }
        for ((run_id, message), s) in &rows.statuses {
            sqlx::query(MESSAGE_STATUS)
                .bind(run_id)
                .bind(message)
                .bind(s.status)
                .bind(&s.reason)
                .bind(s.at)
                .bind(s.sequence)
                .bind(&s.step)
                .execute(&mut **tx)
                .await?;
        }
        for d in &rows.details {
            sqlx::query(SUMMARY_PUT)
                .bind(&d.run_id)
                .bind(&d.template_id)
                .bind(d.template_version)
                .bind(d.status)
                .bind(d.created_at)
                .bind(d.updated_at)
                .bind(d.sequence)
                .bind(&d.agents)
                .bind(d.lease_expires_at)
                .bind(&d.refine)
                .execute(&mut **tx)
                .await?;
            sqlx::query(DETAIL_PUT)
                .bind(&d.run_id)
                .bind(d.sequence)
                .bind(&d.doc)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

impl RowWriter for sqlx::Postgres {
    async fn write_alone(pool: &sqlx::Pool<Self>, rows: &Rows) -> Result<(), sqlx::Error> {
        // One statement is one transaction: no BEGIN / COMMIT round trips.
        pg_rows_put(rows).execute(pool).await?;
        Ok(())
    }

    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
    ) -> Result<(), sqlx::Error> {
        if !rows.is_empty() {
            pg_rows_put(rows).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// The statement that writes a batch's rows on PostgreSQL (see
/// `rows_put.sql`).
fn pg_rows_put(rows: &Rows) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let (d, a, m, s) = (
        &rows.details,
        &rows.artifacts,
        &rows.messages,
        &rows.statuses,
    );
    sqlx::query(PG_ROWS_PUT)
        // Details and summaries ($1 to $11).
        .bind(d.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.doc.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.template_id.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.template_version).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.updated_at).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.agents.as_str()).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.lease_expires_at).collect::<Vec<_>>())
        .bind(d.iter().map(|r| r.refine.clone()).collect::<Vec<_>>())
        // Artifact versions ($12 to $18).
        .bind(a.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.version).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.step.as_str()).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.attempt).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(a.iter().map(|r| r.content.clone()).collect::<Vec<_>>())
        // Messages ($19 to $31).
        .bind(m.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.message).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.author).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.action).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.content.as_str()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.state.step.clone()).collect::<Vec<_>>())
        .bind(
            m.iter()
                .map(|r| r.idempotency_key.clone())
                .collect::<Vec<_>>(),
        )
        .bind(m.iter().map(|r| r.state.status).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.state.reason.clone()).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.state.at).collect::<Vec<_>>())
        .bind(m.iter().map(|r| r.state.sequence).collect::<Vec<_>>())
        // Status changes of earlier messages ($32 to $38).
        .bind(s.keys().map(|(r, _)| r.as_str()).collect::<Vec<_>>())
        .bind(s.keys().map(|(_, n)| *n).collect::<Vec<_>>())
        .bind(s.values().map(|r| r.status).collect::<Vec<_>>())
        .bind(s.values().map(|r| r.reason.clone()).collect::<Vec<_>>())
        .bind(s.values().map(|r| r.at).collect::<Vec<_>>())
        .bind(s.values().map(|r| r.sequence).collect::<Vec<_>>())
        .bind(s.values().map(|r| r.step.clone()).collect::<Vec<_>>())
}

/// The events of one aggregate after `after`, read from the log.
async fn events_after<'c, E, DB, X>(
    executor: X,
    aggregate_type: &str,
    id: &str,
    after: u64,
) -> Result<Vec<(u64, E)>, ProjectionError>
where
    E: serde::de::DeserializeOwned,
    DB: sqlx::Database,
    X: sqlx::Executor<'c, Database = DB>,
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
        .fetch_all(executor)
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
