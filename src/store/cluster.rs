//! Many nodes on one PostgreSQL (docs/adr/0007): the node registry with its
//! heartbeats, and which node hosts each live run, with the epochs that
//! fence a node that lost a run.
//!
//! PostgreSQL is the only shared component: every decision here is one
//! statement, timed by the database's clock, so nodes need not agree on
//! the time and no coordinator of ours exists. SQLite serves one process
//! and has no cluster.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use super::StoreError;
use crate::db::Db;

const NODE_START: &str = include_str!("sql/postgres/node_start.sql");
const NODE_BEAT: &str = include_str!("sql/postgres/node_beat.sql");
const NODE_LEAVE: &str = include_str!("sql/postgres/node_leave.sql");
const NODES_LIST: &str = include_str!("sql/postgres/nodes_list.sql");
const NODES_PRUNE: &str = include_str!("sql/postgres/nodes_prune.sql");
const RUN_ACQUIRE: &str = include_str!("sql/postgres/run_acquire.sql");
const RUN_HOST: &str = include_str!("sql/postgres/run_host.sql");
const RUNS_RELEASE: &str = include_str!("sql/postgres/runs_release.sql");
const RUNS_ORPHANED: &str = include_str!("sql/postgres/runs_orphaned.sql");
const PEERS_ALIVE: &str =
    "SELECT count(*) FROM nodes WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2)";

/// How often releases of passivated runs are written, gathered.
const RELEASE_EVERY: Duration = Duration::from_millis(250);

/// What a node proves when it appends a run's events: that it still hosts
/// the run at the epoch it took it at. An append whose fence is stale
/// writes nothing ([`StoreError::Fenced`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The hosting node.
    pub node: Arc<str>,
    /// The epoch it took the run at (1 for a run it starts).
    pub epoch: i64,
}

/// The answer to [`Cluster::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This node hosts the run now.
    Held {
        /// Append with this.
        fence: Fence,
        /// An earlier host's attempts may have died with it: re-dispatch
        /// them (a run this process hosted before, or no host, does not
        /// need it).
        recover: bool,
    },
    /// A live node hosts it.
    Elsewhere {
        /// Its id.
        node: String,
        /// Where its peers reach it.
        address: Option<String>,
    },
}

/// One node as `GET /api/admin/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// Its id.
    pub id: String,
    /// Where its peers reach it.
    pub address: String,
    /// When its process started (RFC 3339).
    pub started_at: String,
    /// Its last heartbeat (RFC 3339).
    pub heartbeat_at: String,
    /// Whether its heartbeat is recent enough.
    pub alive: bool,
    /// How many runs it hosts.
    pub hosted_runs: i64,
    /// The first of them, by id.
    pub runs: Vec<String>,
}

/// This node's handle on the cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    node: Arc<str>,
    address: String,
    /// When this process joined, as the database printed it.
    started_at: String,
    dead_after: Duration,
    releases: mpsc::UnboundedSender<(String, i64)>,
}

impl Cluster {
    /// Registers this node (`id`, reachable at `address`) and starts the
    /// task that writes releases. `None` on SQLite, which has no cluster.
    /// Must run inside a tokio runtime.
    pub async fn join(
        db: &Db,
        id: &str,
        address: &str,
        dead_after: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let Db::Postgres(pool) = db else {
            return Ok(None);
        };
        let started_at: String = sqlx::query_scalar(NODE_START)
            .bind(id)
            .bind(address)
            .fetch_one(pool)
            .await?;
        let (releases, receiver) = mpsc::unbounded_channel();
        let node: Arc<str> = Arc::from(id);
        tokio::spawn(release_loop(pool.clone(), node.clone(), receiver));
        Ok(Some(Self {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                node,
                address: address.to_string(),
                started_at,
                dead_after,
                releases,
            }),
        }))
    }

    /// This node's id.
    pub fn node(&self) -> &Arc<str> {
        &self.inner.node
    }

    /// Where this node's peers reach it.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The fence of a run this node starts (its first append takes the
    /// host row).
    pub fn starting(&self) -> Fence {
        Fence {
            node: self.inner.node.clone(),
            epoch: 1,
        }
    }

    fn dead_after_secs(&self) -> f64 {
        self.inner.dead_after.as_secs_f64()
    }

    /// Heartbeats; returns how many other nodes are alive.
    pub async fn beat(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(NODE_BEAT)
            .bind(self.inner.node.as_ref())
            .bind(&self.inner.address)
            .bind(self.dead_after_secs())
            .fetch_one(&self.inner.pool)
            .await?)
    }

    /// How many other nodes are alive now.
    pub async fn peers(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(PEERS_ALIVE)
            .bind(self.inner.node.as_ref())
            .bind(self.dead_after_secs())
            .fetch_one(&self.inner.pool)
            .await?)
    }

    /// Leaves the cluster (a graceful stop): the runs this node hosted are
    /// free for the others at once.
    pub async fn leave(&self) -> Result<(), StoreError> {
        sqlx::query(NODE_LEAVE)
            .bind(self.inner.node.as_ref())
            .execute(&self.inner.pool)
            .await?;
        Ok(())
    }

    /// Every node, with up to `first` of the runs each hosts.
    pub async fn list(&self, first: i64) -> Result<Vec<NodeRow>, StoreError> {
        let rows = sqlx::query(NODES_LIST)
            .bind(self.dead_after_secs())
            .bind(first)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(NodeRow {
                    id: row.try_get("id")?,
                    address: row.try_get("address")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                    alive: row.try_get("alive")?,
                    hosted_runs: row.try_get("hosted")?,
                    runs: row.try_get("runs")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// Takes run `id` for this node unless a live node hosts it.
    pub async fn acquire(&self, id: &str) -> Result<Acquired, StoreError> {
        let taken = sqlx::query(RUN_ACQUIRE)
            .bind(id)
            .bind(self.inner.node.as_ref())
            .bind(self.dead_after_secs())
            .bind(&self.inner.started_at)
            .fetch_optional(&self.inner.pool)
            .await?;
        if let Some(row) = taken {
            let epoch: i64 = row.try_get("epoch")?;
            let previous: Option<String> = row.try_get("previous")?;
            let since_started: Option<bool> = row.try_get("since_started")?;
            let recover = match previous {
                None => false,
                Some(node) => node != *self.inner.node || since_started != Some(true),
            };
            return Ok(Acquired::Held {
                fence: Fence {
                    node: self.inner.node.clone(),
                    epoch,
                },
                recover,
            });
        }
        let row = sqlx::query(RUN_HOST)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        match row {
            Some(row) => Ok(Acquired::Elsewhere {
                node: row.try_get("node_id")?,
                address: row.try_get("address")?,
            }),
            // Released between the two statements: take it now.
            None => Box::pin(self.acquire(id)).await,
        }
    }

    /// Gives up a run whose actor passivated (written soon, gathered with
    /// others).
    pub fn release(&self, fence: &Fence, run: &str) {
        if fence.node == self.inner.node {
            let _ = self.inner.releases.send((run.to_string(), fence.epoch));
        }
    }

    /// Runs whose host is dead or gone, at most `limit`.
    pub async fn orphaned(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(RUNS_ORPHANED)
            .bind(self.dead_after_secs())
            .bind(limit)
            .fetch_all(&self.inner.pool)
            .await?)
    }

    /// Forgets nodes dead for a day that host nothing.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(NODES_PRUNE).execute(&self.inner.pool).await?;
        Ok(done.rows_affected())
    }
}

async fn release_loop(
    pool: PgPool,
    node: Arc<str>,
    mut receiver: mpsc::UnboundedReceiver<(String, i64)>,
) {
    while let Some(first) = receiver.recv().await {
        tokio::time::sleep(RELEASE_EVERY).await;
        let mut runs = vec![first.0];
        let mut epochs = vec![first.1];
        while let Ok((run, epoch)) = receiver.try_recv() {
            runs.push(run);
            epochs.push(epoch);
        }
        let released = sqlx::query(RUNS_RELEASE)
            .bind(&runs)
            .bind(&epochs)
            .bind(node.as_ref())
            .execute(&pool)
            .await;
        if let Err(e) = released {
            // Harmless: the rows stay until this node stops, then they are
            // taken over as orphans (and found finished).
            tracing::warn!(runs = runs.len(), error = %e, "cannot release passivated runs");
        }
    }
}
