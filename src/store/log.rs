//! Raw reads of the event log, as stored: for the events endpoint, the
//! WebSocket catch-up, replay and the start-up projection catch-up.

use serde_json::Value;
use sqlx::Row;

use super::StoreError;
use crate::db::Db;
use crate::with_pool;

const EVENTS_OF: &str = include_str!("sql/events_of.sql");
const EVENTS_OF_TYPE: &str = include_str!("sql/events_of_type.sql");

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
}
