//! Storage: the cqrs-es event stores (sqlite-es / postgres-es repositories
//! behind `PersistedEventStore`), the content-addressed blob store, schema
//! migrations and raw reads of the log for the API, replay and catch-up.
//!
//! Depends on `domain` and `db`; never on `projections`, `engine` or `api`.

mod blobs;
mod log;
mod migrate;

use std::collections::HashMap;

use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;

pub use blobs::BlobStore;
pub use log::{EventLog, RecordedEvent};
pub use migrate::migrate;

use crate::db::Db;

/// Snapshot a run every this many events, so loading a long run reads one
/// snapshot plus fewer than this many events.
pub const RUN_SNAPSHOT_EVERY: usize = 50;

/// Storage failures (business-rule refusals never get here).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the aggregate first (optimistic concurrency).
    #[error("concurrent write to the same aggregate")]
    Conflict,
    /// A stored event or snapshot could not be read back.
    #[error("stored data could not be deserialised: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

impl<T: std::error::Error> From<AggregateError<T>> for StoreError {
    fn from(e: AggregateError<T>) -> Self {
        match e {
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DeserializationError(e) => Self::Corrupt(e.to_string()),
            other => Self::Database(other.to_string()),
        }
    }
}

/// An aggregate as loaded from the log.
pub struct Loaded<A> {
    /// Its state.
    pub state: A,
    /// The sequence of its last event (0 for a new aggregate).
    pub sequence: usize,
    /// The snapshot counter cqrs-es keeps.
    pub snapshot: Option<usize>,
}

enum Backend<A: Aggregate> {
    Sqlite(PersistedEventStore<SqliteEventRepository, A>),
    Postgres(PersistedEventStore<PostgresEventRepository, A>),
}

/// The cqrs-es event store of one aggregate type, on either backend.
pub struct AggregateStore<A: Aggregate> {
    backend: Backend<A>,
    snapshot_every: usize,
}

impl<A: Aggregate + 'static> AggregateStore<A> {
    /// A store over `db` that snapshots every `snapshot_every` events (0: never).
    pub fn new(db: &Db, snapshot_every: usize) -> Self {
        let backend = match db {
            Db::Sqlite(pool) => {
                let repo = SqliteEventRepository::new(pool.clone());
                Backend::Sqlite(if snapshot_every == 0 {
                    PersistedEventStore::new_event_store(repo)
                } else {
                    PersistedEventStore::new_snapshot_store(repo, snapshot_every)
                })
            }
            Db::Postgres(pool) => {
                let repo = PostgresEventRepository::new(pool.clone());
                Backend::Postgres(if snapshot_every == 0 {
                    PersistedEventStore::new_event_store(repo)
                } else {
                    PersistedEventStore::new_snapshot_store(repo, snapshot_every)
                })
            }
        };
        Self {
            backend,
            snapshot_every,
        }
    }

    /// The snapshot counter after committing `events` more events on top of
    /// `sequence`. Mirrors the rule of cqrs-es's `PersistedEventStore` (a
    /// snapshot whenever the sequence crosses a multiple of the snapshot
    /// size), which the next commit must match for its snapshot update.
    fn snapshot_after(
        &self,
        sequence: usize,
        snapshot: Option<usize>,
        events: usize,
    ) -> Option<usize> {
        if self.snapshot_every == 0 {
            return snapshot;
        }
        let next_at = self.snapshot_every - (sequence % self.snapshot_every);
        if events < next_at {
            snapshot
        } else {
            Some(snapshot.map_or(1, |s| s + 1))
        }
    }

    /// Loads an aggregate: its snapshot, if any, plus newer events.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let context = match &self.backend {
            Backend::Sqlite(s) => s.load_aggregate(id).await?,
            Backend::Postgres(s) => s.load_aggregate(id).await?,
        };
        Ok(Loaded {
            state: context.aggregate,
            sequence: context.current_sequence,
            snapshot: context.current_snapshot,
        })
    }

    /// Every event of an aggregate, in order.
    pub async fn load_events(&self, id: &str) -> Result<Vec<EventEnvelope<A>>, StoreError> {
        Ok(match &self.backend {
            Backend::Sqlite(s) => s.load_events(id).await?,
            Backend::Postgres(s) => s.load_events(id).await?,
        })
    }

    /// Appends `events` after `sequence` in one transaction. `state` is the
    /// aggregate as of `sequence` (cqrs-es folds the new events into it when
    /// a snapshot is due). Fails with [`StoreError::Conflict`] when another
    /// writer appended first. Returns the committed envelopes and the
    /// snapshot counter to pass to the next commit.
    pub async fn commit(
        &self,
        id: &str,
        state: A,
        sequence: usize,
        snapshot: Option<usize>,
        events: Vec<A::Event>,
        metadata: HashMap<String, String>,
    ) -> Result<(Vec<EventEnvelope<A>>, Option<usize>), StoreError> {
        let next_snapshot = self.snapshot_after(sequence, snapshot, events.len());
        let context = EventStoreAggregateContext {
            aggregate_id: id.to_string(),
            aggregate: state,
            current_sequence: sequence,
            current_snapshot: snapshot,
        };
        let envelopes = match &self.backend {
            Backend::Sqlite(s) => s.commit(events, context, metadata).await?,
            Backend::Postgres(s) => s.commit(events, context, metadata).await?,
        };
        Ok((envelopes, next_snapshot))
    }
}
