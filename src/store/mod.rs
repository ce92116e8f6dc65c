//! Storage: the cqrs-es event repositories (sqlite-es / postgres-es), with
//! versioned snapshots and the event upcasters (`upcast`), the
//! content-addressed blob store, schema migrations and raw reads of the log
//! for the API, replay and catch-up.
//!
//! Depends on `domain` and `db`; never on `projections`, `engine` or `api`.

mod access;
mod appender;
mod blobs;
mod cluster;
mod history;
mod log;
mod migrate;
mod tasks;
pub mod upcast;

use std::collections::HashMap;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope};
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlite_es::SqliteEventRepository;

pub use access::AccessStore;
pub use blobs::{BlobStore, Released};
pub use cluster::{Acquired, Cluster, Fence, NodeRow, DEAD_AFTER, HEARTBEAT_EVERY};
pub use history::{History, HistoryCounts, ImportError, FORMAT_VERSION};
pub use log::{EventLog, LogEntry, LogWakeups, RecordedEvent};
pub use migrate::migrate;
pub use tasks::{ClaimedTask, NewTask, TaskQueue, TaskRef};

use crate::db::Db;
use crate::domain::log::Position;
use crate::domain::run::Run;
use crate::domain::template::Template;

/// An aggregate whose state is stored in snapshots, with the version of
/// that state's shape. Raise the version whenever the state's fields or
/// the meaning of `apply` change: a snapshot of another version is then
/// ignored (the aggregate is folded from its events, and the next snapshot
/// replaces it), never misread.
pub trait Snapshotted: Aggregate {
    /// The version of the state's stored shape.
    const SNAPSHOT_VERSION: u32;
}

impl Snapshotted for Run {
    /// 2: the run records when it finished and when it was purged.
    const SNAPSHOT_VERSION: u32 = 2;
}

impl Snapshotted for Template {
    const SNAPSHOT_VERSION: u32 = 1;
}

impl Snapshotted for crate::domain::user::User {
    const SNAPSHOT_VERSION: u32 = 1;
}

const PG_SNAPSHOT_INSERT: &str = include_str!("sql/postgres/snapshot_insert.sql");
const PG_SNAPSHOT_UPDATE: &str = include_str!("sql/postgres/snapshot_update.sql");

/// Snapshot a run every this many events, so loading a long run reads one
/// snapshot plus fewer than this many events.
pub const RUN_SNAPSHOT_EVERY: usize = 50;

/// Storage failures (business-rule refusals never get here).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the aggregate first (optimistic concurrency).
    #[error("concurrent write to the same aggregate")]
    Conflict,
    /// This node no longer hosts the run it appended to (another node took
    /// it over): nothing was written (docs/adr/0007).
    #[error("this node no longer hosts the run")]
    Fenced,
    /// Another live process uses this node id (`--node-id`).
    #[error("another runlog serve that is still alive uses the node id '{0}'")]
    NodeIdInUse(String),
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

impl From<PersistenceError> for StoreError {
    fn from(e: PersistenceError) -> Self {
        match e {
            PersistenceError::OptimisticLockError => Self::Conflict,
            PersistenceError::DeserializationError(e) => Self::Corrupt(e.to_string()),
            other => Self::Database(other.to_string()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        Self::Corrupt(e.to_string())
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

/// The repository of one backend. Loads read the snapshot and the newer
/// events from it, through the upcasters; appends go to its `persist` (or
/// the group-commit appender), not through cqrs-es's
/// `PersistedEventStore`: its `commit` in cqrs-es 0.5 folds only the events
/// up to a snapshot boundary into the snapshot while the repositories record
/// it at the commit's last event, and its load cannot tell a snapshot of an
/// older shape from a current one.
enum Backend {
    Sqlite(SqliteEventRepository),
    Postgres(PostgresEventRepository),
}

/// A stored snapshot: `{"snapshot_version": N, "state": …}`. Snapshots
/// written before versions existed hold the bare state: version 0.
fn snapshot_payload<A: Snapshotted>(state: &A) -> Result<Value, serde_json::Error> {
    Ok(serde_json::json!({
        "snapshot_version": A::SNAPSHOT_VERSION,
        "state": serde_json::to_value(state)?,
    }))
}

/// The state a stored snapshot holds, if it is of this build's version.
fn snapshot_state<A: Snapshotted>(payload: Value) -> Result<Option<A>, serde_json::Error> {
    let version = payload.get("snapshot_version").and_then(Value::as_u64);
    if version != Some(u64::from(A::SNAPSHOT_VERSION)) {
        return Ok(None);
    }
    match payload {
        Value::Object(mut object) => {
            serde_json::from_value(object.remove("state").unwrap_or_default()).map(Some)
        }
        _ => Ok(None),
    }
}

/// Stored events as their aggregate folds them, through the upcasters.
fn envelopes<A: Aggregate>(
    events: Vec<SerializedEvent>,
) -> Result<Vec<EventEnvelope<A>>, StoreError> {
    events
        .into_iter()
        .map(|event| Ok(EventEnvelope::<A>::try_from(upcast::upcast(event))?))
        .collect()
}

/// The cqrs-es event store of one aggregate type, on either backend.
pub struct AggregateStore<A: Snapshotted> {
    backend: Backend,
    _aggregate: std::marker::PhantomData<fn() -> A>,
    appender: appender::Appender,
    log: EventLog,
    snapshot_every: usize,
}

impl<A: Snapshotted + 'static> AggregateStore<A> {
    /// A store over `db` that snapshots every `snapshot_every` events (0:
    /// never). Starts its group-commit task, so it must be called inside a
    /// tokio runtime.
    pub fn new(db: &Db, snapshot_every: usize) -> Self {
        let backend = match db {
            Db::Sqlite(pool) => Backend::Sqlite(SqliteEventRepository::new(pool.clone())),
            Db::Postgres(pool) => Backend::Postgres(PostgresEventRepository::new(pool.clone())),
        };
        Self {
            backend,
            _aggregate: std::marker::PhantomData,
            appender: appender::Appender::start(db.clone()),
            log: EventLog::new(db.clone()),
            snapshot_every,
        }
    }

    /// Where event `sequence` of `id`, just committed, went. The commit
    /// stands whatever happens here: if the lookup fails, the log's last
    /// committed position (at or after it) serves, and failing that the
    /// start of the log (readers then do not wait for it).
    async fn committed_position(&self, id: &str, sequence: usize) -> Position {
        match self.log.position_of(A::TYPE, id, sequence).await {
            Ok(position) => position,
            Err(e) => {
                tracing::warn!(aggregate_id = id, sequence, error = %e,
                    "cannot look up where a commit went; using the log's last position");
                self.log.last_committed().await.unwrap_or(Position::START)
            }
        }
    }

    /// Writes the snapshot of a fenced commit after its events; returns
    /// whether it did. A failure costs only folding: the next load reads
    /// more events, and the next snapshot is written at the old counter.
    async fn write_snapshot(
        &self,
        (id, payload, counter): (String, Value, usize),
        last: usize,
    ) -> bool {
        let Db::Postgres(pool) = self.log.db() else {
            return false;
        };
        let mut query = sqlx::query(if counter == 1 {
            PG_SNAPSHOT_INSERT
        } else {
            PG_SNAPSHOT_UPDATE
        })
        .bind(A::TYPE)
        .bind(&id)
        .bind(last as i64)
        .bind(counter as i64)
        .bind(&payload);
        if counter > 1 {
            query = query.bind(counter as i64 - 1);
        }
        let written = query.execute(pool);
        match written.await {
            Ok(done) if done.rows_affected() == 1 => true,
            Ok(_) => {
                tracing::warn!(aggregate_id = %id, "snapshot not written: another one replaced it");
                false
            }
            Err(e) => {
                tracing::warn!(aggregate_id = %id, error = %e, "snapshot not written");
                false
            }
        }
    }

    /// Whether a commit of `events` events on top of `sequence` crosses a
    /// multiple of the snapshot size (then the commit writes a snapshot and
    /// needs the aggregate's state).
    pub fn snapshot_due(&self, sequence: usize, events: usize) -> bool {
        self.snapshot_every > 0
            && sequence / self.snapshot_every != (sequence + events) / self.snapshot_every
    }

    /// Loads an aggregate: its snapshot, if any and of this build's
    /// version, plus newer events (every event when there is none).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, StoreError> {
        let stored: Option<SerializedSnapshot> = if self.snapshot_every == 0 {
            None
        } else {
            match &self.backend {
                Backend::Sqlite(repo) => repo.get_snapshot::<A>(id).await?,
                Backend::Postgres(repo) => repo.get_snapshot::<A>(id).await?,
            }
        };
        // The stored counter is kept even when the state is not read: the
        // next snapshot replaces that row.
        let counter = stored.as_ref().map(|s| s.current_snapshot);
        let (mut state, mut sequence) = match stored {
            Some(snapshot) => match snapshot_state::<A>(snapshot.aggregate)? {
                Some(state) => (state, snapshot.current_sequence),
                None => {
                    tracing::info!(
                        aggregate_type = A::TYPE,
                        aggregate_id = id,
                        "ignoring a snapshot of another version; folding every event"
                    );
                    (A::default(), 0)
                }
            },
            None => (A::default(), 0),
        };
        let events = match &self.backend {
            Backend::Sqlite(repo) => repo.get_last_events::<A>(id, sequence).await?,
            Backend::Postgres(repo) => repo.get_last_events::<A>(id, sequence).await?,
        };
        for envelope in envelopes::<A>(events)? {
            sequence = envelope.sequence;
            state.apply(envelope.payload);
        }
        Ok(Loaded {
            state,
            sequence,
            snapshot: counter,
        })
    }

    /// Every event of an aggregate, in order.
    pub async fn load_events(&self, id: &str) -> Result<Vec<EventEnvelope<A>>, StoreError> {
        let events = match &self.backend {
            Backend::Sqlite(repo) => repo.get_events::<A>(id).await?,
            Backend::Postgres(repo) => repo.get_events::<A>(id).await?,
        };
        envelopes(events)
    }

    /// Appends `events` after `sequence` in one transaction. `state` is the
    /// aggregate as of `sequence`; when the commit crosses a snapshot
    /// boundary, the state after all `events` is stored as the snapshot in
    /// the same transaction. `state` is read only then (see
    /// [`AggregateStore::snapshot_due`]): otherwise callers may pass
    /// `A::default()` and spare a copy. Fails with [`StoreError::Conflict`] when another
    /// writer appended first. Returns the committed envelopes, the
    /// snapshot counter to pass to the next commit, and the position of the
    /// last event in the log (readers wait for it to see the commit).
    /// With a `fence` (a run on PostgreSQL with many nodes possible), the
    /// events are written only if this node still hosts the run at the
    /// fence's epoch; otherwise nothing is written and the commit fails with
    /// [`StoreError::Fenced`].
    #[allow(
        clippy::too_many_arguments,
        reason = "the aggregate's state and position, the events, their metadata and the \
                  fence are each a separate fact the two callers have at hand"
    )]
    pub async fn commit(
        &self,
        id: &str,
        state: A,
        sequence: usize,
        snapshot: Option<usize>,
        events: Vec<A::Event>,
        metadata: HashMap<String, String>,
        fence: Option<&Fence>,
    ) -> Result<(Vec<EventEnvelope<A>>, Option<usize>, Position), StoreError> {
        let due = self.snapshot_due(sequence, events.len());
        let envelopes: Vec<EventEnvelope<A>> = events
            .into_iter()
            .zip(sequence + 1..)
            .map(|(payload, sequence)| EventEnvelope {
                aggregate_id: id.to_string(),
                sequence,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let serialized = envelopes
            .iter()
            .map(SerializedEvent::try_from)
            .collect::<Result<Vec<_>, PersistenceError>>()?;
        let (snapshot_update, next_snapshot) = if due {
            let mut after = state;
            for envelope in &envelopes {
                after.apply(envelope.payload.clone());
            }
            let next = snapshot.map_or(1, |s| s + 1);
            (
                Some((id.to_string(), snapshot_payload(&after)?, next)),
                Some(next),
            )
        } else {
            (None, snapshot)
        };
        let last = sequence + envelopes.len();
        let position = match (&self.backend, snapshot_update) {
            // The common case: group-committed with other appends.
            (_, None) => self.appender.append(serialized, fence.cloned()).await?,
            // A fenced append goes through the appender, which checks the
            // fence; its snapshot follows it in a statement of its own.
            (Backend::Postgres(_), Some(update)) if fence.is_some() => {
                let position = self.appender.append(serialized, fence.cloned()).await?;
                if !self.write_snapshot(update, last).await {
                    return Ok((envelopes, snapshot, position));
                }
                position
            }
            // Every `snapshot_every` events: the repository writes the events
            // and the snapshot in one transaction, and does not say where
            // they went.
            (Backend::Sqlite(repo), update) => {
                repo.persist::<A>(&serialized, update).await?;
                crate::db::count_commit();
                self.committed_position(id, last).await
            }
            (Backend::Postgres(repo), update) => {
                repo.persist::<A>(&serialized, update).await?;
                crate::db::count_commit();
                self.committed_position(id, last).await
            }
        };
        Ok((envelopes, next_snapshot, position))
    }
}
