//! Group commit: appends from many actors, gathered while the previous
//! transaction commits, go into the log in one transaction (on PostgreSQL
//! one multi-row `INSERT … SELECT FROM UNNEST` statement, which is its own
//! transaction: one round trip; on SQLite, which is in-process, one
//! prepared insert per event inside `BEGIN IMMEDIATE`). The table and its primary key are
//! exactly those of sqlite-es / postgres-es, so optimistic concurrency is
//! unchanged: a duplicate `(aggregate_type, aggregate_id, sequence)` fails
//! the batch, which is then retried one append per transaction so that only
//! the stale writer sees its conflict. Each append learns its
//! [`Position`] in the log: where its last event went.

use std::collections::HashMap;

use cqrs_es::persist::SerializedEvent;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::{Fence, StoreError};
use crate::db::{BeginWrite, Commits, Db};
use crate::domain::log::Position;

const INSERT_EVENT: &str = include_str!("sql/event_insert.sql");
const PG_INSERT_EVENTS: &str = include_str!("sql/postgres/events_insert_many.sql");

/// Most appends gathered into one transaction.
const MAX_APPENDS_PER_TRANSACTION: usize = 256;

struct Append {
    events: Vec<SerializedEvent>,
    /// Checked on PostgreSQL (SQLite serves one process).
    fence: Option<Fence>,
    done: oneshot::Sender<Result<Position, StoreError>>,
}

/// Handle to the group-commit task of one database.
#[derive(Clone)]
pub(crate) struct Appender {
    sender: mpsc::UnboundedSender<Append>,
}

impl Appender {
    /// Starts the task on a thread of its own.
    pub(crate) fn start(db: Db) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        crate::db::spawn_dedicated("runlog-appender", db, 4, Commits::Durable, move |db| {
            append_loop(db, receiver)
        });
        Self { sender }
    }

    /// Appends `events` (of one aggregate, sequences already set, not
    /// empty) and waits until they are committed; returns the position of
    /// the last one.
    pub(crate) async fn append(
        &self,
        events: Vec<SerializedEvent>,
        fence: Option<Fence>,
    ) -> Result<Position, StoreError> {
        let (done, answer) = oneshot::channel();
        self.sender
            .send(Append {
                events,
                fence,
                done,
            })
            .map_err(|_| StoreError::Database("the appender has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Database("the appender has stopped".into()))?
    }
}

async fn append_loop(db: Db, mut receiver: mpsc::UnboundedReceiver<Append>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_APPENDS_PER_TRANSACTION {
            match receiver.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        let events: Vec<Fenced<'_>> = batch.iter().flat_map(Append::rows).collect();
        match insert(&db, &events).await {
            Ok(positions) => {
                for append in batch {
                    let result = position_of(&positions, &append);
                    let _ = append.done.send(result);
                }
            }
            Err(_) if batch.len() > 1 => {
                // Find the stale writer(s): one append per transaction.
                for append in batch {
                    let result = insert(&db, &append.rows().collect::<Vec<_>>())
                        .await
                        .and_then(|positions| position_of(&positions, &append));
                    let _ = append.done.send(result);
                }
            }
            Err(e) => {
                for append in batch {
                    let _ = append.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Where each inserted event went, by (aggregate id, sequence).
type Positions = HashMap<(String, i64), Position>;

/// An event to insert, with the node and the epoch its fence checks (0:
/// the append opens a new run and takes its host row).
type Fenced<'a> = (&'a SerializedEvent, Option<(&'a str, i64)>);

impl Append {
    fn rows(&self) -> impl Iterator<Item = Fenced<'_>> {
        // The whole append is checked as one: every row of it carries the
        // same answer.
        let opens = self.events.first().is_some_and(|e| e.sequence == 1);
        let check = self
            .fence
            .as_ref()
            .map(|f| (f.node.as_ref(), if opens { 0 } else { f.epoch }));
        self.events.iter().map(move |e| (e, check))
    }
}

/// The position of an append's last event. A fenced append that is not
/// among what was written was left out by its fence.
fn position_of(positions: &Positions, append: &Append) -> Result<Position, StoreError> {
    let found = append
        .events
        .last()
        .and_then(|last| positions.get(&(last.aggregate_id.clone(), last.sequence as i64)))
        .copied();
    match found {
        Some(position) => Ok(position),
        None if append.fence.is_some() => Err(StoreError::Fenced),
        None => Err(StoreError::Database(
            "the log did not say where an append went".into(),
        )),
    }
}

async fn insert(db: &Db, events: &[Fenced<'_>]) -> Result<Positions, StoreError> {
    let result: Result<Positions, sqlx::Error> = match db {
        // One statement is one transaction: the whole batch commits or none
        // of it does, in a single round trip (no BEGIN / COMMIT).
        Db::Postgres(pool) => pg_insert(pool, events).await,
        // In-process: one prepared insert per event, under the write lock.
        Db::Sqlite(pool) => {
            async {
                let mut tx = pool.begin_write().await?;
                let mut positions = Positions::new();
                for (e, _) in events {
                    let done = sqlx::query(INSERT_EVENT)
                        .bind(&e.aggregate_type)
                        .bind(&e.aggregate_id)
                        .bind(e.sequence as i64)
                        .bind(&e.event_type)
                        .bind(&e.event_version)
                        .bind(&e.payload)
                        .bind(&e.metadata)
                        .execute(&mut *tx)
                        .await?;
                    positions.insert(
                        (e.aggregate_id.clone(), e.sequence as i64),
                        Position {
                            tx: 0,
                            position: done.last_insert_rowid(),
                        },
                    );
                }
                tx.commit().await?;
                Ok(positions)
            }
            .await
        }
    };
    match result {
        Ok(positions) => {
            crate::db::count_commit();
            Ok(positions)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(StoreError::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// The batch as one multi-row `INSERT … SELECT FROM UNNEST`.
async fn pg_insert(pool: &sqlx::PgPool, fenced: &[Fenced<'_>]) -> Result<Positions, sqlx::Error> {
    let events: Vec<&SerializedEvent> = fenced.iter().map(|(e, _)| *e).collect();
    // One node appends: every fence of a batch names it.
    let node = fenced.iter().find_map(|(_, f)| f.map(|(node, _)| node));
    let rows = sqlx::query(PG_INSERT_EVENTS)
        .bind(
            events
                .iter()
                .map(|e| e.aggregate_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.sequence as i64).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.event_version.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.metadata.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            fenced
                .iter()
                .map(|(_, f)| f.map(|(_, epoch)| epoch))
                .collect::<Vec<_>>(),
        )
        .bind(node)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|row| {
            let tx: i64 = row.try_get("tx")?;
            Ok((
                (row.try_get("aggregate_id")?, row.try_get("sequence")?),
                Position {
                    tx: u64::try_from(tx).unwrap_or_default(),
                    position: row.try_get("position")?,
                },
            ))
        })
        .collect()
}
