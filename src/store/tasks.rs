//! The queue remote workers claim attempts from. A row per attempt of a
//! remote agent that is dispatched and not over yet; the log stays the
//! truth (a claim is only a claim once `StepClaimed` is committed), the
//! table lets workers find work and claim it atomically: `FOR UPDATE SKIP
//! LOCKED` on PostgreSQL, one `UPDATE … RETURNING` statement on SQLite
//! (which has one writer at a time).
//!
//! The queue is written through a pool whose commits do not wait for the
//! disk ([`Db::pool`] with [`Commits::Relaxed`](crate::db::Commits)): every row can be re-derived from the log, and a
//! queue write is on disk as soon as any later event commit is. A dispatch
//! inserts its row with one statement (claimable at once); deletes, which
//! nobody waits for, are gathered by a writer task (on PostgreSQL into one
//! statement).

use serde_json::Value;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::db::{BeginWrite, Db};
use crate::with_pool;

const INSERT: &str = include_str!("sql/task_insert.sql");
const DELETE: &str = include_str!("sql/task_delete.sql");
const PG_DELETE_MANY: &str = include_str!("sql/postgres/tasks_delete_many.sql");
const WITHDRAW: &str = include_str!("sql/task_withdraw.sql");
const UNCLAIM: &str = include_str!("sql/task_unclaim.sql");
const GET: &str = include_str!("sql/task_get.sql");
const CLAIMED_BY: &str = include_str!("sql/tasks_claimed_by.sql");
const PG_UNRECORDED_CLAIMS: &str = include_str!("sql/postgres/tasks_unrecorded_claims.sql");
const PG_CLAIM: &str = include_str!("sql/postgres/task_claim.sql");
const SQLITE_CLAIM: &str = include_str!("sql/sqlite/task_claim.sql");

/// Most writes gathered into one transaction.
const MAX_WRITES_PER_TRANSACTION: usize = 512;
/// How long the writer lets deletes gather before it writes them.
const DELETE_GATHER: std::time::Duration = std::time::Duration::from_millis(10);

/// An attempt to put in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task's id (what workers name it by).
    pub task_id: String,
    /// The attempt's lease.
    pub lease: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The agent that serves it.
    pub agent: String,
    /// What the worker receives.
    pub payload: Value,
    /// When it was queued (ms since the epoch).
    pub queued_at: i64,
}

/// A claimed task, as the queue hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedTask {
    /// The task's id.
    pub task_id: String,
    /// The attempt's lease.
    pub lease: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The agent.
    pub agent: String,
    /// What the worker receives.
    pub payload: Value,
}

/// A task as looked up by its id.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRef {
    /// The task's id.
    pub task_id: String,
    /// The attempt's lease.
    pub lease: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: u32,
    /// The agent.
    pub agent: String,
    /// The worker that claimed it, if one did.
    pub claimed_by: Option<String>,
}

/// What the writer task is asked: deletes nobody waits for, and a flush
/// that answers once every earlier delete is committed.
enum Write {
    Delete(String),
    Flush(oneshot::Sender<()>),
}

/// The task queue of one database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct TaskQueue {
    db: Db,
    writes: mpsc::UnboundedSender<Write>,
}

impl std::fmt::Debug for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Write")
    }
}

impl TaskQueue {
    /// The queue in `db`; starts its writer on the current tokio runtime.
    pub fn new(db: Db) -> Self {
        let (writes, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(db.clone(), receiver));
        Self { db, writes }
    }

    /// Queues an attempt (a second insert of the same lease does nothing);
    /// resolves once it is committed and workers can claim it.
    pub async fn enqueue(&self, task: NewTask) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(INSERT)
                .bind(&task.task_id)
                .bind(&task.lease)
                .bind(&task.run_id)
                .bind(&task.step)
                .bind(i64::from(task.attempt))
                .bind(&task.agent)
                .bind(&task.payload)
                .bind(task.queued_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets the task of a lease, claimed or not (the attempt is over).
    pub fn remove(&self, lease: &str) {
        let _ = self.writes.send(Write::Delete(lease.to_string()));
    }

    /// Resolves once every earlier [`remove`](Self::remove) is committed
    /// (or has failed, which is logged).
    pub async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.writes.send(Write::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }

    /// Removes the task of a lease if no worker claimed it yet; whether it
    /// did.
    pub async fn withdraw(&self, lease: &str) -> Result<bool, StoreError> {
        let removed = with_pool!(&self.db, pool => {
            sqlx::query(WITHDRAW).bind(lease).execute(pool).await?.rows_affected()
        });
        Ok(removed > 0)
    }

    /// Claims the oldest unclaimed task of one of `agents` for `worker`,
    /// unless `worker` holds `most_held` claimed tasks already (`None`
    /// then too; [`claimed_by`](Self::claimed_by) tells the two apart).
    pub async fn claim(
        &self,
        agents: &[String],
        worker: &str,
        now: i64,
        most_held: u64,
    ) -> Result<Option<ClaimedTask>, StoreError> {
        let most_held = i64::try_from(most_held).unwrap_or(i64::MAX);
        let row = match &self.db {
            Db::Postgres(pool) => sqlx::query(PG_CLAIM)
                .bind(worker)
                .bind(now)
                .bind(agents)
                .bind(most_held)
                .fetch_optional(pool)
                .await?
                .map(|row| claimed(&row)),
            Db::Sqlite(pool) => {
                let agents = serde_json::to_string(agents)?;
                let mut tx = pool.begin_write().await?;
                let row = sqlx::query(SQLITE_CLAIM)
                    .bind(worker)
                    .bind(now)
                    .bind(agents)
                    .bind(most_held)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| claimed(&row));
                tx.commit().await?;
                row
            }
        };
        row.transpose()
    }

    /// Gives a claimed task back to the queue (its claim could not be
    /// recorded).
    pub async fn unclaim(&self, task_id: &str) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(UNCLAIM).bind(task_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Claimed before `before_ms` with no claim recorded by their run:
    /// `(task_id, agent)`, at most 100. Only on PostgreSQL, where a node
    /// can stop between taking a row for a worker and recording the claim
    /// on the run's host, another node; on SQLite the one process's
    /// restart recovers the attempt.
    pub async fn unrecorded_claims(
        &self,
        before_ms: i64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(Vec::new());
        };
        Ok(sqlx::query_as(PG_UNRECORDED_CLAIMS)
            .bind(before_ms)
            .fetch_all(pool)
            .await?)
    }

    /// How many tasks `worker` holds claimed.
    pub async fn claimed_by(&self, worker: &str) -> Result<u64, StoreError> {
        let count: i64 = with_pool!(&self.db, pool => {
            sqlx::query_scalar(CLAIMED_BY).bind(worker).fetch_one(pool).await?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The task with this id, if it is still queued or claimed.
    pub async fn get(&self, task_id: &str) -> Result<Option<TaskRef>, StoreError> {
        let row = with_pool!(&self.db, pool => {
            sqlx::query(GET)
                .bind(task_id)
                .fetch_optional(pool)
                .await?
                .map(|row| -> Result<TaskRef, sqlx::Error> {
                    Ok(TaskRef {
                        task_id: row.try_get("task_id")?,
                        lease: row.try_get("lease")?,
                        run_id: row.try_get("run_id")?,
                        step: row.try_get("step")?,
                        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).unwrap_or(0),
                        agent: row.try_get("agent")?,
                        claimed_by: row.try_get("claimed_by")?,
                    })
                })
                .transpose()?
        });
        Ok(row)
    }
}

fn claimed<R: Row>(row: &R) -> Result<ClaimedTask, StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Value: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ClaimedTask {
        task_id: row.try_get("task_id")?,
        lease: row.try_get("lease")?,
        run_id: row.try_get("run_id")?,
        step: row.try_get("step")?,
        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).unwrap_or(0),
        agent: row.try_get("agent")?,
        payload: row.try_get("payload")?,
    })
}

async fn write_loop(db: Db, mut receiver: mpsc::UnboundedReceiver<Write>) {
    while let Some(first) = receiver.recv().await {
        // Nobody waits for a delete: let a few more come (a row left a few
        // milliseconds longer is harmless: claims skip claimed rows, and a
        // released row that is claimed is found stale and dropped).
        if matches!(first, Write::Delete(_)) {
            tokio::time::sleep(DELETE_GATHER).await;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_WRITES_PER_TRANSACTION {
            match receiver.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let mut leases = Vec::new();
        let mut flushes = Vec::new();
        for write in batch {
            match write {
                Write::Delete(lease) => leases.push(lease),
                Write::Flush(done) => flushes.push(done),
            }
        }
        if !leases.is_empty() {
            if let Err(e) = delete(&db, &leases).await {
                tracing::error!(error = %e, writes = leases.len(), "task queue write failed");
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Deletes the tasks of `leases`.
async fn delete(db: &Db, leases: &[String]) -> Result<(), StoreError> {
    let result: Result<(), sqlx::Error> = match db {
        // One statement, its own transaction: one round trip.
        Db::Postgres(pool) => sqlx::query(PG_DELETE_MANY)
            .bind(leases)
            .execute(pool)
            .await
            .map(|_| ()),
        // In-process: one prepared delete per lease, under the write lock.
        Db::Sqlite(pool) => {
            async {
                let mut tx = pool.begin_write().await?;
                for lease in leases {
                    sqlx::query(DELETE).bind(lease).execute(&mut *tx).await?;
                }
                tx.commit().await
            }
            .await
        }
    };
    Ok(result?)
}
