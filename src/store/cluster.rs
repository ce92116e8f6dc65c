//! Many nodes on one PostgreSQL (docs/adr/0007): the node registry with its
//! heartbeats, and which node hosts each live run, with the epochs that
//! fence a node that lost a run.
//!
//! PostgreSQL is the only shared component: every decision here is one
//! statement, timed by the database's clock, so nodes need not agree on
//! the time and no coordinator of ours exists. SQLite serves one process
//! and has no cluster.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, watch};

use super::StoreError;
use crate::db::Db;

const NODE_START: &str = include_str!("sql/postgres/node_start.sql");
const NODE_BEAT: &str = include_str!("sql/postgres/node_beat.sql");
const NODE_LEAVE: &str = include_str!("sql/postgres/node_leave.sql");
const NODES_LIST: &str = include_str!("sql/postgres/nodes_list.sql");
const NODES_PRUNE: &str = include_str!("sql/postgres/nodes_prune.sql");
const RUN_ACQUIRE: &str = include_str!("sql/postgres/run_acquire.sql");
const RUN_HOST: &str = include_str!("sql/postgres/run_host.sql");
const RUN_ABANDON: &str = include_str!("sql/postgres/run_abandon.sql");
const RUNS_RELEASE: &str = include_str!("sql/postgres/runs_release.sql");
const RUNS_ORPHANED: &str = include_str!("sql/postgres/runs_orphaned.sql");
const PEERS_ALIVE: &str =
    "SELECT count(*) FROM nodes WHERE id <> $1 AND heartbeat_at > now() - make_interval(secs => $2)";

/// How often releases of passivated runs are written, gathered.
const RELEASE_EVERY: Duration = Duration::from_millis(250);
/// How often a node heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a silent node stays alive in its peers' eyes.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
/// How long before it would be dead a node whose heartbeats fail gives
/// its runs up itself (its peers may take them over soon).
const GIVE_UP_MARGIN: Duration = Duration::from_secs(1);

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
    /// The run does not exist (no event yet): nothing to host. A run this
    /// node then starts takes its host row with its first append.
    Unknown,
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
    /// This process, among the processes that ever used the id.
    incarnation: String,
    dead_after: Duration,
    releases: mpsc::UnboundedSender<(String, i64)>,
    /// Raised each time this node's heartbeats have failed for so long that
    /// its peers will soon take its runs: whoever holds runs gives them up.
    lost: watch::Sender<u64>,
    /// Stops the heartbeat (at `leave`).
    stop: watch::Sender<bool>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Another process took this node's id: this one takes no run.
    evicted: std::sync::atomic::AtomicBool,
}

impl Cluster {
    /// The addresses of the live nodes on `db`, by node id (none on
    /// SQLite), for a command-line tool that must reach a server.
    pub async fn live_addresses(db: &Db) -> Result<Vec<String>, StoreError> {
        let Db::Postgres(pool) = db else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(NODES_LIST)
            .bind(DEAD_AFTER.as_secs_f64())
            .bind(0_i64)
            .fetch_all(pool)
            .await?;
        let mut live = Vec::new();
        for row in rows {
            if row.try_get::<bool, _>("alive")? {
                live.push(row.try_get("address")?);
            }
        }
        Ok(live)
    }

    /// Registers this node (`id`, reachable at `address`) and starts its
    /// heartbeat and the task that writes releases. `None` on SQLite, which
    /// has no cluster. If another process that is still alive holds `id`,
    /// waits up to `dead_after` for it to be dead (a node restarted right
    /// after a crash), then fails with [`StoreError::NodeIdInUse`]. Must run
    /// inside a tokio runtime.
    pub async fn join(
        db: &Db,
        id: &str,
        address: &str,
        dead_after: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let Db::Postgres(pool) = db else {
            return Ok(None);
        };
        let incarnation = uuid::Uuid::new_v4().simple().to_string();
        let deadline = Instant::now() + dead_after + HEARTBEAT_EVERY;
        let mut said = false;
        loop {
            let started: Option<String> = sqlx::query_scalar(NODE_START)
                .bind(id)
                .bind(address)
                .bind(&incarnation)
                .bind(dead_after.as_secs_f64())
                .fetch_optional(pool)
                .await?;
            if started.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(StoreError::NodeIdInUse(id.to_string()));
            }
            if !said {
                said = true;
                tracing::warn!(node = id,
                    "another process with this node id heartbeats; waiting for it to stop or be dead");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let (releases, receiver) = mpsc::unbounded_channel();
        let node: Arc<str> = Arc::from(id);
        tokio::spawn(release_loop(pool.clone(), node.clone(), receiver));
        let cluster = Self {
            inner: Arc::new(Inner {
                pool: pool.clone(),
                node,
                address: address.to_string(),
                incarnation,
                dead_after,
                releases,
                lost: watch::channel(0).0,
                stop: watch::channel(false).0,
                heartbeat: Mutex::new(None),
                evicted: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let handle = tokio::spawn(heartbeat_loop(Arc::downgrade(&cluster.inner)));
        *cluster
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Some(cluster))
    }

    /// This node's id.
    pub fn node(&self) -> &Arc<str> {
        &self.inner.node
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

    /// Heartbeats; returns whether this process still holds its id.
    async fn beat(&self) -> Result<bool, StoreError> {
        let beaten: Option<String> = sqlx::query_scalar(NODE_BEAT)
            .bind(self.inner.node.as_ref())
            .bind(&self.inner.address)
            .bind(&self.inner.incarnation)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(beaten.is_some())
    }

    /// How many other nodes are alive now.
    pub async fn peers(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(PEERS_ALIVE)
            .bind(self.inner.node.as_ref())
            .bind(self.dead_after_secs())
            .fetch_one(&self.inner.pool)
            .await?)
    }

    /// Changes each time this node's heartbeats have failed so long that its
    /// peers will soon take its runs over: the runs it holds must be given
    /// up (their actors may be answering from state another node now
    /// changes).
    pub fn lost(&self) -> watch::Receiver<u64> {
        self.inner.lost.subscribe()
    }

    /// Leaves the cluster (a graceful stop): stops the heartbeat and removes
    /// this node's row, so that the runs it hosted are free for the others
    /// at once.
    pub async fn leave(&self) -> Result<(), StoreError> {
        let _ = self.inner.stop.send(true);
        let handle = self
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            // A beat in flight is not waited for.
            handle.abort();
            let _ = handle.await;
        }
        sqlx::query(NODE_LEAVE)
            .bind(self.inner.node.as_ref())
            .bind(&self.inner.incarnation)
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

    /// Takes run `id` for this node unless a live node hosts it (that is
    /// only read, so asking locks nothing) or the run does not exist.
    pub async fn acquire(&self, id: &str) -> Result<Acquired, StoreError> {
        if self.inner.evicted.load(Ordering::SeqCst) {
            return Err(StoreError::NodeIdInUse(self.inner.node.to_string()));
        }
        for _ in 0..3 {
            if let Some(host) = self.host(id).await? {
                if host.0 != *self.inner.node && host.2 {
                    return Ok(Acquired::Elsewhere {
                        node: host.0,
                        address: host.1,
                    });
                }
            }
            let taken = sqlx::query(RUN_ACQUIRE)
                .bind(id)
                .bind(self.inner.node.as_ref())
                .bind(self.dead_after_secs())
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
            // Not taken: the run does not exist, or a live node took it
            // between the two statements.
            match self.host(id).await? {
                None => return Ok(Acquired::Unknown),
                Some((node, address, true)) if node != *self.inner.node => {
                    return Ok(Acquired::Elsewhere { node, address })
                }
                Some(_) => {}
            }
        }
        Err(StoreError::Database(format!(
            "run {id}: its host changed three times while this node looked"
        )))
    }

    /// Who hosts `id`: the node, its address, whether it is alive.
    async fn host(&self, id: &str) -> Result<Option<(String, Option<String>, bool)>, StoreError> {
        let row = sqlx::query(RUN_HOST)
            .bind(id)
            .bind(self.dead_after_secs())
            .fetch_optional(&self.inner.pool)
            .await?;
        row.map(|row| {
            Ok::<_, sqlx::Error>((
                row.try_get("node_id")?,
                row.try_get("address")?,
                row.try_get("alive")?,
            ))
        })
        .transpose()
        .map_err(Into::into)
    }

    /// Gives a run this node took but could not load or recover back to no
    /// node, so that the next look for orphans takes it and recovers it.
    /// Tried three times, a second apart.
    pub async fn abandon(&self, fence: &Fence, run: &str) -> Result<(), StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let done = sqlx::query(RUN_ABANDON)
                .bind(run)
                .bind(fence.node.as_ref())
                .bind(fence.epoch)
                .execute(&self.inner.pool)
                .await;
            match done {
                Ok(_) => return Ok(()),
                Err(e) if tries >= 3 => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
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
            .bind(self.inner.node.as_ref())
            .fetch_all(&self.inner.pool)
            .await?)
    }

    /// Forgets nodes dead for a day that host nothing.
    pub async fn prune(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(NODES_PRUNE).execute(&self.inner.pool).await?;
        Ok(done.rows_affected())
    }
}

/// Heartbeats every [`HEARTBEAT_EVERY`] until `leave` (or until the
/// cluster handle is gone); forgets nodes dead for a day once an hour;
/// raises `lost` when beats have not gone through for nearly
/// [`DEAD_AFTER`] (a beat that hangs counts as failing) or another process
/// took the id (then this process is evicted: it takes no run any more).
async fn heartbeat_loop(cluster: std::sync::Weak<Inner>) {
    const PRUNE_EVERY: Duration = Duration::from_secs(3600);
    let Some(mut stopped) = cluster.upgrade().map(|c| c.stop.subscribe()) else {
        return;
    };
    let mut last_ok = Instant::now();
    let mut last_prune = Instant::now();
    let mut failing = false;
    let mut gave_up = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = stopped.changed() => return,
        }
        let Some(inner) = cluster.upgrade() else {
            return;
        };
        if *stopped.borrow() {
            return;
        }
        let cluster = Cluster { inner };
        let sent = Instant::now();
        let beat = tokio::select! {
            beat = tokio::time::timeout(HEARTBEAT_EVERY * 2, cluster.beat()) => beat,
            _ = stopped.changed() => return,
        };
        match beat {
            Ok(Ok(true)) => {
                if failing {
                    tracing::info!("heartbeats reach the database again");
                }
                failing = false;
                gave_up = false;
                last_ok = sent;
            }
            Ok(Ok(false)) => {
                if !cluster.inner.evicted.swap(true, Ordering::SeqCst) {
                    tracing::error!(node = %cluster.inner.node,
                        "another process took this node's id: this one gives up its runs and \
                         takes none any more; stop it");
                    cluster.inner.lost.send_modify(|n| *n += 1);
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    failing = true;
                    tracing::error!(error = %e,
                        "cannot heartbeat: other nodes will take this node's runs over, \
                         and its commits to them will be refused");
                }
            }
            Err(_) => {
                if !failing {
                    failing = true;
                    tracing::error!("a heartbeat did not go through within 2 s");
                }
            }
        }
        let silent = last_ok.elapsed();
        if failing && !gave_up && silent + GIVE_UP_MARGIN >= cluster.inner.dead_after {
            gave_up = true;
            tracing::error!(
                silent_ms = silent.as_millis() as u64,
                "heartbeats failing for too long: giving up the runs held here"
            );
            cluster.inner.lost.send_modify(|n| *n += 1);
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            if let Ok(pruned @ 1..) = cluster.prune().await {
                tracing::info!(nodes = pruned, "forgot nodes dead for a day");
            }
        }
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
