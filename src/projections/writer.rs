//! The projection follower: a task that reads the log in position order
//! (through [`LogReader`]) and applies it to the read models, many runs per
//! transaction, recording in the same transaction how far it got
//! (`projection_positions`; docs/adr/0005).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{watch, Notify};

use super::detail::RunDetail;
use super::ProjectionError;
use crate::db::{BeginWrite, Commits, Db};
use crate::domain::ids::{StepId, Timestamp};
use crate::domain::log::{Logged, LoggedEvent, Position};
use crate::domain::run::{Author, MessageStatus, RunEvent};
use crate::domain::template::TemplateEvent;
use crate::with_pool;

const PG_DETAILS_GET: &str = include_str!("sql/postgres/details_get_many.sql");
const SQLITE_DETAILS_GET: &str = include_str!("sql/sqlite/details_get_many.sql");
const DETAIL_PUT: &str = include_str!("sql/detail_put.sql");
const SUMMARY_PUT: &str = include_str!("sql/summary_put.sql");
const ARTIFACT_PUT: &str = include_str!("sql/artifact_put.sql");
const TEMPLATE_GET: &str = include_str!("sql/template_get.sql");
const TEMPLATE_PUT: &str = include_str!("sql/template_put.sql");
const PG_ROWS_PUT: &str = include_str!("sql/postgres/rows_put.sql");
const MESSAGE_PUT: &str = include_str!("sql/message_put.sql");
const MESSAGE_STATUS: &str = include_str!("sql/message_status.sql");
const POSITIONS_GET: &str = include_str!("sql/positions_get.sql");
const POSITION_PUT: &str = include_str!("sql/position_put.sql");

/// The read models the follower writes, each with its position row.
pub const READ_MODELS: [&str; 5] = [
    "run_summaries",
    "run_details",
    "artifact_versions",
    "run_messages",
    "template_catalogue",
];
/// Most events read and applied in one transaction.
const PAGE: i64 = 512;
/// Detail documents the follower keeps in memory (so a page need not read
/// them back); past this the cache is emptied.
const DOC_CACHE_LIMIT: usize = 10_000;
/// How long the follower idles before it looks at the log again without
/// being woken (commits of other processes).
const IDLE_LOOK: Duration = Duration::from_millis(250);
/// How soon it first looks again when a commit of this process is not
/// readable yet (an older transaction of another writer is still open);
/// doubled at each empty look, up to [`IDLE_LOOK`].
const BUSY_LOOK: Duration = Duration::from_millis(1);
/// How long a reader waits for the read models to apply a commit before it
/// goes on with what they hold (the follower logs why it is behind).
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// The log, as the projections read it. Implemented by the store, wired in
/// `app`; events arrive decoded by the store.
pub trait LogReader: Send + Sync {
    /// Up to `limit` events after `after`, in log order; never skips an
    /// event that commits later (see docs/adr/0005).
    fn read_after(&self, after: Position, limit: i64)
        -> BoxFuture<'_, Result<Vec<Logged>, String>>;
    /// The events of one run or template with sequence above `after`
    /// (`Run` or `Template`), to fill a document that fell behind.
    fn aggregate_after<'a>(
        &'a self,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Vec<Logged>, String>>;
}

/// Builds the follower's log reader on the follower's own pool.
pub type LogReaderFactory = Box<dyn FnOnce(Db) -> Box<dyn LogReader> + Send>;

/// What the follower and its handles share.
#[derive(Debug)]
struct Shared {
    /// Wakes the follower: a commit of this process.
    wake: Notify,
    /// The position the read models have applied.
    applied: watch::Sender<Position>,
    /// Commits of this process above `applied`.
    pending: Mutex<BTreeSet<Position>>,
    /// The last commit of this process.
    last_committed: Mutex<Position>,
    /// Events applied since the follower started.
    events_applied: AtomicU64,
    /// Asks the follower to stop after its current page.
    stop: AtomicBool,
    /// Set once the follower has stopped.
    stopped: watch::Sender<bool>,
}

/// Handle to the projection follower. Cheap to clone.
///
/// One task writes every read model, reading the log in position order
/// from where the read models' positions say it got. The engine tells it
/// where each of this process's commits went ([`Projector::committed`]),
/// which wakes it and lets readers wait for their own writes
/// ([`Projector::applied`]).
///
/// The follower stops when the last handle is dropped (or at
/// [`Projector::stop`]).
#[derive(Clone, Debug)]
pub struct Projector {
    shared: Arc<Shared>,
    _handles: Arc<StopOnDrop>,
}

/// Marks the follower stopped when its task ends.
struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.stopped.send_replace(true);
    }
}

/// Stops the follower when the last handle goes.
#[derive(Debug)]
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.wake.notify_one();
    }
}

impl Projector {
    /// Starts the follower, on a thread of its own, reading the log through
    /// the reader `log` builds.
    pub fn start(db: Db, log: LogReaderFactory) -> Self {
        let shared = Arc::new(Shared {
            wake: Notify::new(),
            applied: watch::channel(Position::START).0,
            pending: Mutex::new(BTreeSet::new()),
            last_committed: Mutex::new(Position::START),
            events_applied: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            stopped: watch::channel(false).0,
        });
        let follower = shared.clone();
        crate::db::spawn_dedicated(
            "runlog-projector",
            db,
            2,
            // Durable: the follower's document cache assumes that what
            // committed stays.
            Commits::Durable,
            move |db| async move {
                // Says "stopped" however the task ends (a panic included).
                let _stopped = StoppedOnDrop(follower.clone());
                let log = log(db.clone());
                follow(db.clone(), log, follower).await;
                // Closed before "stopped": its connections are gone when
                // `stop` returns.
                db.close().await;
            },
        );
        Self {
            _handles: Arc::new(StopOnDrop(shared.clone())),
            shared,
        }
    }

    /// A commit of this process reached the log at `position`.
    pub fn committed(&self, position: Position) {
        {
            // Under the lock the follower holds while it publishes a new
            // position, so an entry is never left at or below it.
            let mut pending = lock(&self.shared.pending);
            if position > *self.shared.applied.borrow() {
                pending.insert(position);
            }
        }
        let mut last = lock(&self.shared.last_committed);
        if position > *last {
            *last = position;
        }
        drop(last);
        self.shared.wake.notify_one();
    }

    /// Resolves once the read models have applied the log up to
    /// `position`, or after [`APPLY_WAIT`] (then it logs a warning).
    pub fn applied(&self, position: Position) -> impl Future<Output = ()> + Send + 'static {
        let mut applied = self.shared.applied.subscribe();
        async move {
            let reached = tokio::time::timeout(APPLY_WAIT, applied.wait_for(|a| *a >= position));
            if reached.await.is_err() {
                tracing::warn!(%position, applied = %*applied.borrow(),
                    "the read models have not applied a commit in time; answering from what they hold");
            }
        }
    }

    /// The position the read models have applied.
    pub fn position(&self) -> Position {
        *self.shared.applied.borrow()
    }

    /// Commits of this process not yet applied.
    pub fn backlog(&self) -> usize {
        lock(&self.shared.pending).len()
    }

    /// Resolves once every commit of this process so far is applied.
    pub fn barrier(&self) -> impl Future<Output = ()> + Send + 'static {
        let last = *lock(&self.shared.last_committed);
        self.applied(last)
    }

    /// Waits until the follower has applied the log up to `head` (the
    /// log's last committed position when the caller asked); returns how
    /// many events it has applied since it started. At start, before
    /// serving, this is the catch-up: O(events since the stored positions).
    /// Fails if the follower stops first; says every 10 s how far it got.
    pub async fn catch_up(&self, head: Position) -> Result<u64, ProjectionError> {
        let mut applied = self.shared.applied.subscribe();
        let mut stopped = self.shared.stopped.subscribe();
        self.shared.wake.notify_one();
        let mut report = tokio::time::interval(Duration::from_secs(10));
        report.tick().await;
        loop {
            tokio::select! {
                reached = applied.wait_for(|a| *a >= head) => {
                    reached.map_err(|_| ProjectionError::WriterStopped)?;
                    return Ok(self.shared.events_applied.load(Ordering::Relaxed));
                }
                _ = stopped.wait_for(|s| *s) => return Err(ProjectionError::WriterStopped),
                _ = report.tick() => {
                    tracing::info!(
                        events = self.shared.events_applied.load(Ordering::Relaxed),
                        position = %*self.shared.applied.borrow(), %head,
                        "catching the read models up with the log"
                    );
                }
            }
        }
    }

    /// Stops the follower after its current page and waits until it has.
    pub async fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let _ = self.shared.stopped.subscribe().wait_for(|s| *s).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The follower: from the stored position, read a page, apply it with the
/// new position in one transaction, tell the waiting readers; when the log
/// has nothing new, wait to be woken.
async fn follow(db: Db, log: Box<dyn LogReader>, shared: Arc<Shared>) {
    let mut at = loop {
        match stored_position(&db).await {
            Ok(position) => break position,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the read models' positions; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
    };
    shared.applied.send_replace(at);
    let mut cache: HashMap<String, RunDetail> = HashMap::new();
    let mut failures = 0u32;
    let mut read_failures = 0u32;
    let mut busy_look = BUSY_LOOK;
    while !shared.stop.load(Ordering::SeqCst) {
        // Registered before the look, so that a commit during it wakes the
        // next wait.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let page = match log.read_after(at, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                // Never skipped (an event this build cannot decode stops
                // the read models here, loudly, rather than leave them
                // wrong): retried with a back-off up to 5 s.
                read_failures += 1;
                tracing::error!(error = %e, %at, failures = read_failures,
                    "cannot read the log after the read models' position; retrying");
                let back_off = 100 * u64::from(read_failures.min(50));
                tokio::time::sleep(Duration::from_millis(back_off)).await;
                continue;
            }
        };
        let Some(last) = page.last().map(|e| e.position) else {
            let waiting = lock(&shared.pending).first().is_some_and(|p| *p > at);
            let look = if waiting {
                // A commit of this process is not readable yet: look again
                // soon, then less and less often while an older
                // transaction stays open.
                let look = busy_look;
                busy_look = (busy_look * 2).min(IDLE_LOOK);
                look
            } else {
                IDLE_LOOK
            };
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(look) => {}
            }
            continue;
        };
        match write(&db, log.as_ref(), &page, &cache, last).await {
            Ok(written) => {
                failures = 0;
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
                at = last;
                shared
                    .events_applied
                    .fetch_add(page.len() as u64, Ordering::Relaxed);
                {
                    let mut pending = lock(&shared.pending);
                    let above = pending.split_off(&Position {
                        tx: at.tx,
                        position: at.position + 1,
                    });
                    *pending = above;
                    shared.applied.send_replace(at);
                }
                busy_look = BUSY_LOOK;
                read_failures = 0;
            }
            Err(e) => {
                // Never skipped: the page is applied again until it goes in
                // (readers stop waiting after APPLY_WAIT).
                failures += 1;
                cache.clear();
                tracing::error!(error = %e, %at, failures,
                    "projection write failed; the page is applied again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures.min(20)))).await;
            }
        }
    }
}

/// The position the read models have all applied (the lowest stored; the
/// start of the log if one has none).
async fn stored_position(db: &Db) -> Result<Position, ProjectionError> {
    let rows: Vec<(String, i64, i64)> = with_pool!(db, pool => {
        sqlx::query_as(POSITIONS_GET).fetch_all(pool).await?
    });
    let mut lowest: Option<Position> = None;
    for name in READ_MODELS {
        let Some((_, tx, position)) = rows.iter().find(|(n, _, _)| n == name) else {
            return Ok(Position::START);
        };
        let p = Position {
            tx: u64::try_from(*tx).unwrap_or_default(),
            position: *position,
        };
        lowest = Some(lowest.map_or(p, |l| l.min(p)));
    }
    Ok(lowest.unwrap_or(Position::START))
}

/// Applies a page of the log and records `last` as every read model's
/// position, in one transaction; returns the run detail documents written
/// (the caller caches them once the write succeeded).
///
/// The documents a page builds on are read first, outside the write (this
/// follower is the only writer of the read models); the rows then go in at
/// once: on PostgreSQL one statement, which is its own transaction (a page
/// with template events, which are rare, takes a transaction of a few).
async fn write(
    db: &Db,
    log: &dyn LogReader,
    page: &[Logged],
    cache: &HashMap<String, RunDetail>,
    last: Position,
) -> Result<Vec<RunDetail>, ProjectionError> {
    let mut written = Vec::new();
    // Grouped by aggregate so each document is read and written once.
    let mut runs: BTreeMap<&str, Vec<(u64, &RunEvent)>> = BTreeMap::new();
    let mut templates: BTreeMap<&str, Vec<(u64, &TemplateEvent)>> = BTreeMap::new();
    for logged in page {
        match &logged.event {
            LoggedEvent::Run(e) => runs
                .entry(&logged.aggregate_id)
                .or_default()
                .push((logged.sequence, e)),
            LoggedEvent::Template(e) => templates
                .entry(&logged.aggregate_id)
                .or_default()
                .push((logged.sequence, e)),
            LoggedEvent::Other => {}
        }
    }
    // In sequence order within each aggregate (the log's order within one
    // transaction need not be).
    for events in runs.values_mut() {
        events.sort_by_key(|(s, _)| *s);
    }
    for events in templates.values_mut() {
        events.sort_by_key(|(s, _)| *s);
    }
    // A cached document is as good as the stored one: this follower is the
    // only writer. A page that starts at the run's first event builds its
    // document afresh; the others are read in one query.
    let first_of = |events: &[(u64, &RunEvent)]| events.first().map_or(0, |(s, _)| *s);
    let uncached: Vec<&str> = runs
        .iter()
        .filter(|(id, events)| !cache.contains_key(**id) && first_of(events) != 1)
        .map(|(id, _)| *id)
        .collect();
    let mut stored = stored_details(db, &uncached).await?;
    let mut rows = Rows::default();
    for (run_id, events) in runs {
        let first = first_of(&events);
        let mut detail: RunDetail = match cache.get(run_id) {
            Some(cached) => cached.clone(),
            None => stored.remove(run_id).unwrap_or_default(),
        };
        let before = detail.sequence;
        // A document behind the log (its rows were deleted, or written by
        // an older build that lost a write) is filled from the run's events.
        let filled;
        let events: Vec<(u64, &RunEvent)> = if first > before + 1 {
            filled = log
                .aggregate_after("Run", run_id, before)
                .await
                .map_err(ProjectionError::Log)?;
            filled.iter().filter_map(Logged::as_run).collect()
        } else {
            events
        };
        for (sequence, event) in events {
            if sequence <= detail.sequence {
                continue;
            }
            detail.apply(sequence, event);
            rows.add(run_id, sequence, event)?;
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
    let now = chrono::Utc::now().timestamp_millis();
    with_pool!(db, pool => {
        if templates.is_empty() {
            RowWriter::write_alone(pool, &rows, last, now).await?;
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
                let filled;
                let events: Vec<(u64, &TemplateEvent)> = if events.first().is_some_and(|(s, _)| *s > before + 1) {
                    filled = log
                        .aggregate_after("Template", template_id, before)
                        .await
                        .map_err(ProjectionError::Log)?;
                    filled.iter().filter_map(Logged::as_template).collect()
                } else {
                    events
                };
                for (sequence, event) in events {
                    view.apply(template_id, sequence, event);
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
            RowWriter::write_rows(&mut tx, &rows, last, now).await?;
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
    /// Writes `rows` and the read models' position `last` (at `now`) in a
    /// transaction of their own.
    async fn write_alone(
        pool: &sqlx::Pool<Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error>;

    /// Writes `rows` and the position inside `tx`.
    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error>;
}

impl RowWriter for sqlx::Sqlite {
    async fn write_alone(
        pool: &sqlx::Pool<Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin_write().await?;
        Self::write_rows(&mut tx, rows, last, now).await?;
        tx.commit().await
    }

    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        for name in READ_MODELS {
            sqlx::query(POSITION_PUT)
                .bind(name)
                .bind(i64::try_from(last.tx).unwrap_or(i64::MAX))
                .bind(last.position)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
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
    async fn write_alone(
        pool: &sqlx::Pool<Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        // One statement is one transaction: no BEGIN / COMMIT round trips.
        pg_rows_put(rows, last, now).execute(pool).await?;
        Ok(())
    }

    async fn write_rows(
        tx: &mut sqlx::Transaction<'static, Self>,
        rows: &Rows,
        last: Position,
        now: i64,
    ) -> Result<(), sqlx::Error> {
        pg_rows_put(rows, last, now).execute(&mut **tx).await?;
        Ok(())
    }
}

/// The statement that writes a batch's rows on PostgreSQL (see
/// `rows_put.sql`).
fn pg_rows_put(
    rows: &Rows,
    last: Position,
    now: i64,
) -> sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments> {
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
        // The read models' position ($39 to $42).
        .bind(READ_MODELS.to_vec())
        .bind(i64::try_from(last.tx).unwrap_or(i64::MAX))
        .bind(last.position)
        .bind(now)
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
