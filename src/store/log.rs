//! Raw reads of the event log, as stored: for the events endpoint, the
//! WebSocket catch-up, replay and the start-up projection catch-up; and the
//! whole log in order, by [`Position`] (docs/adr/0005).

use serde_json::Value;
use sqlx::Row;

use super::StoreError;
use crate::db::Db;
use crate::domain::log::{Logged, LoggedEvent, Position};
use crate::domain::run::{Run, RunEvent};
use crate::domain::template::{Template, TemplateEvent};
use crate::with_pool;

const EVENTS_OF: &str = include_str!("sql/events_of.sql");
const EVENTS_OF_TYPE: &str = include_str!("sql/events_of_type.sql");
const PG_LOG_AFTER: &str = include_str!("sql/postgres/log_after.sql");
const PG_LOG_HEAD: &str = include_str!("sql/postgres/log_head.sql");
const SQLITE_LOG_AFTER: &str = include_str!("sql/sqlite/log_after.sql");
const SQLITE_LOG_HEAD: &str = include_str!("sql/sqlite/log_head.sql");
const PG_LOG_COUNT_AFTER: &str = include_str!("sql/postgres/log_count_after.sql");
const SQLITE_LOG_COUNT_AFTER: &str = include_str!("sql/sqlite/log_count_after.sql");
const PG_RUN_IDS: &str = include_str!("sql/postgres/run_ids.sql");
const SQLITE_RUN_IDS: &str = include_str!("sql/sqlite/run_ids.sql");
const PG_LOG_LAST: &str = include_str!("sql/postgres/log_last.sql");
const PG_EVENT_POSITION: &str = include_str!("sql/postgres/event_position.sql");
const SQLITE_EVENT_POSITION: &str = include_str!("sql/sqlite/event_position.sql");

/// One event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Its sequence within its aggregate, from 1.
    pub sequence: i64,
    /// The variant name, e.g. `StepCompleted`.
    pub event_type: String,
    /// The payload shape's version.
    pub event_version: String,
    /// The payload as stored (externally tagged by variant).
    pub payload: Value,
    /// The metadata (recorded_at, …).
    pub metadata: Value,
}

/// One event of the whole log, read in log order.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Where it is in the log.
    pub position: Position,
    /// `Run` or `Template`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event.
    pub event: RecordedEvent,
}

fn entry_from_row<R: Row>(row: &R) -> Result<LogEntry, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Value: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(LogEntry {
        position: position_from_row(row)?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event: RecordedEvent {
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
        },
    })
}

fn position_from_row<R: Row>(row: &R) -> Result<Position, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let tx: i64 = row.try_get("tx")?;
    Ok(Position {
        // xid8 values are far below 2^63: their epoch counts wraparounds
        // of 32-bit xids.
        tx: u64::try_from(tx).unwrap_or_default(),
        position: row.try_get("position")?,
    })
}

/// Reads of the log.
#[derive(Clone, Debug)]
pub struct EventLog {
    db: Db,
}

impl EventLog {
    /// The log in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database it reads.
    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Up to `limit` events of one aggregate with sequence above `after`.
    pub async fn events_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(EVENTS_OF)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| -> Result<RecordedEvent, sqlx::Error> {
                    Ok(RecordedEvent {
                        sequence: row.try_get("sequence")?,
                        event_type: row.try_get("event_type")?,
                        event_version: row.try_get("event_version")?,
                        payload: row.try_get("payload")?,
                        metadata: row.try_get("metadata")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Every event of `event_type` of any aggregate of `aggregate_type`,
    /// with its aggregate id. A full scan of the log: for start-up repairs.
    pub async fn events_of_type(
        &self,
        aggregate_type: &str,
        event_type: &str,
    ) -> Result<Vec<(String, RecordedEvent)>, StoreError> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(EVENTS_OF_TYPE)
                .bind(aggregate_type)
                .bind(event_type)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| -> Result<(String, RecordedEvent), sqlx::Error> {
                    Ok((row.try_get("aggregate_id")?, RecordedEvent {
                        sequence: row.try_get("sequence")?,
                        event_type: row.try_get("event_type")?,
                        event_version: row.try_get("event_version")?,
                        payload: row.try_get("payload")?,
                        metadata: row.try_get("metadata")?,
                    }))
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Up to `limit` events after `after`, in log order. On PostgreSQL only
    /// events of finished transactions are returned (those below the oldest
    /// transaction still running that may belong to this database; see
    /// `sql/postgres/log_after.sql`), so a transaction that commits late never sorts
    /// below an event already returned: reading on from the last position
    /// returned skips nothing (docs/adr/0005).
    pub async fn read_after(
        &self,
        after: Position,
        limit: i64,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let entries = match &self.db {
            Db::Postgres(pool) => sqlx::query(PG_LOG_AFTER)
                .bind(i64::try_from(after.tx).unwrap_or(i64::MAX))
                .bind(after.position)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(entry_from_row)
                .collect::<Result<Vec<_>, _>>()?,
            Db::Sqlite(pool) => sqlx::query(SQLITE_LOG_AFTER)
                .bind(after.position)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(entry_from_row)
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(entries)
    }

    /// The position of the last event [`EventLog::read_after`] would return
    /// now ([`Position::START`] for an empty log).
    pub async fn head(&self) -> Result<Position, StoreError> {
        self.last(PG_LOG_HEAD).await
    }

    /// The position of the last committed event, even if
    /// [`EventLog::read_after`] does not return it yet (on PostgreSQL, while
    /// an older transaction anywhere on the server is still open). A
    /// follower that has applied it has applied everything committed before
    /// the call.
    pub async fn last_committed(&self) -> Result<Position, StoreError> {
        self.last(PG_LOG_LAST).await
    }

    /// The ids of the runs in the log, in id order; with `since` (RFC 3339,
    /// UTC, milliseconds: the format of `recorded_at`) only those with an
    /// event recorded at or after it. A scan of the log.
    pub async fn run_ids(&self, since: Option<&str>) -> Result<Vec<String>, StoreError> {
        let query = match &self.db {
            Db::Postgres(_) => PG_RUN_IDS,
            Db::Sqlite(_) => SQLITE_RUN_IDS,
        };
        let ids = with_pool!(&self.db, pool => {
            sqlx::query_scalar(query).bind(since).fetch_all(pool).await?
        });
        Ok(ids)
    }

    /// How many committed events come after `after` (a follower's lag).
    pub async fn count_after(&self, after: Position) -> Result<i64, StoreError> {
        let count = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(PG_LOG_COUNT_AFTER)
                    .bind(i64::try_from(after.tx).unwrap_or(i64::MAX))
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
            Db::Sqlite(pool) => {
                sqlx::query_scalar(SQLITE_LOG_COUNT_AFTER)
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
        };
        Ok(count)
    }

    async fn last(&self, pg_query: &'static str) -> Result<Position, StoreError> {
        let head = with_pool!(&self.db, pool => {
            let query = if matches!(self.db, Db::Postgres(_)) { pg_query } else { SQLITE_LOG_HEAD };
            match sqlx::query(query).fetch_optional(pool).await? {
                Some(row) => position_from_row(&row)?,
                None => Position::START,
            }
        });
        Ok(head)
    }

    /// Where event `sequence` of an aggregate is in the log.
    pub async fn position_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Position, StoreError> {
        let query = match &self.db {
            Db::Postgres(_) => PG_EVENT_POSITION,
            Db::Sqlite(_) => SQLITE_EVENT_POSITION,
        };
        let found = with_pool!(&self.db, pool => {
            match sqlx::query(query)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence as i64)
                .fetch_optional(pool)
                .await?
            {
                Some(row) => Some(position_from_row(&row)?),
                None => None,
            }
        });
        found.ok_or_else(|| {
            StoreError::Database(format!(
                "event {sequence} of {aggregate_type} {aggregate_id} is not in the log"
            ))
        })
    }

    /// [`EventLog::read_after`], decoded: what projections follow. Decoding
    /// is the store's, so that what changes in stored shapes is handled
    /// once for every reader (no upcasters are registered yet: older
    /// shapes load through serde defaults).
    pub async fn follow(&self, after: Position, limit: i64) -> Result<Vec<Logged>, StoreError> {
        self.read_after(after, limit)
            .await?
            .into_iter()
            .map(decode)
            .collect()
    }

    /// The events of one aggregate with sequence above `after`, decoded.
    pub async fn follow_aggregate(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: u64,
    ) -> Result<Vec<Logged>, StoreError> {
        self.events_of(aggregate_type, aggregate_id, after as i64, i64::MAX)
            .await?
            .into_iter()
            .map(|event| {
                decode(LogEntry {
                    // Read by aggregate, not in log order.
                    position: Position::START,
                    aggregate_type: aggregate_type.to_string(),
                    aggregate_id: aggregate_id.to_string(),
                    event,
                })
            })
            .collect()
    }
}

/// A stored event as its aggregate folds it.
fn decode(entry: LogEntry) -> Result<Logged, StoreError> {
    use cqrs_es::Aggregate;
    let sequence = entry.event.sequence;
    let upcast = super::upcast::upcast(cqrs_es::persist::SerializedEvent::new(
        entry.aggregate_id.clone(),
        usize::try_from(sequence).unwrap_or_default(),
        entry.aggregate_type.clone(),
        entry.event.event_type,
        entry.event.event_version,
        entry.event.payload,
        Value::Null,
    ));
    let event = match entry.aggregate_type.as_str() {
        Run::TYPE => LoggedEvent::Run(serde_json::from_value::<RunEvent>(upcast.payload)?),
        Template::TYPE => {
            LoggedEvent::Template(serde_json::from_value::<TemplateEvent>(upcast.payload)?)
        }
        crate::domain::user::User::TYPE => {
            LoggedEvent::User(serde_json::from_value(upcast.payload)?)
        }
        _ => LoggedEvent::Other,
    };
    Ok(Logged {
        position: entry.position,
        aggregate_id: entry.aggregate_id,
        sequence: u64::try_from(sequence).unwrap_or_default(),
        event,
    })
}

/// Wake-ups when the log grows (PostgreSQL: `LISTEN runlog_log`, which
/// every append notifies when it commits). Only a hint: a reader reads the
/// log by position whatever it hears, and also when nothing came for a
/// while.
pub struct LogWakeups {
    /// Taken by [`LogWakeups::close`]. One still here when the value is
    /// dropped is leaked rather than dropped: its destructor spawns a task,
    /// which panics once the runtime is gone (a process or a test shutting
    /// down), and a panic there aborts.
    listener: Option<sqlx::postgres::PgListener>,
}

impl Drop for LogWakeups {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            std::mem::forget(listener);
        }
    }
}

/// The channel the appender notifies.
const LOG_CHANNEL: &str = "runlog_log";

impl LogWakeups {
    /// Listens on `db` (`None` on SQLite, where one process writes).
    pub async fn listen(db: &Db) -> Result<Option<Self>, StoreError> {
        let Db::Postgres(pool) = db else {
            return Ok(None);
        };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(LOG_CHANNEL).await?;
        Ok(Some(Self {
            listener: Some(listener),
        }))
    }

    /// Stops listening (inside the runtime, so the connection goes back
    /// cleanly).
    pub fn close(mut self) {
        drop(self.listener.take());
    }

    /// Resolves at the next notification, or after `timeout`; then drops
    /// the ones already queued (one read serves them all).
    pub async fn wait(&mut self, timeout: std::time::Duration) {
        let Some(listener) = self.listener.as_mut() else {
            tokio::time::sleep(timeout).await;
            return;
        };
        match tokio::time::timeout(timeout, listener.recv()).await {
            Ok(Ok(_)) => {}
            // The listener reconnects by itself at the next recv; the
            // reader polls meanwhile.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "log notifications interrupted; polling");
                tokio::time::sleep(timeout).await;
            }
            Err(_) => {}
        }
        // Those that arrived meanwhile are served by the read that follows.
        for _ in 0..1024 {
            let queued = tokio::time::timeout(std::time::Duration::ZERO, listener.recv());
            if !matches!(queued.await, Ok(Ok(_))) {
                break;
            }
        }
    }
}
