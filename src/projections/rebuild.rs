//! Rebuilding one projection from the log while the live one keeps serving.
//!
//! 1. Fresh tables beside the live ones (`<table>__rebuild`, the live
//!    tables' current shape, so a migration that changed a table is what
//!    the rebuild fills), and a position row of their own.
//! 2. The whole log applied to them, page by page, in transactions of
//!    their own; readers still read the live tables, which the follower
//!    keeps up to date.
//! 3. The swap, in one transaction: the live tables locked (PostgreSQL) or
//!    the database's write lock taken (SQLite), so the follower cannot
//!    write them; the fresh tables caught up to at least the live
//!    position; the live tables dropped and the fresh ones renamed in
//!    their place (with their indexes' names); the live position row set
//!    to the fresh tables' position and the code's version. A reader sees
//!    the old tables or the new ones, never a half-built one.
//!
//! The follower is not told: after the swap it goes on from its own
//! position, at or below the new tables', and applying an event twice is a
//! no-op (every row records its last sequence).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;

use super::apply::Applier;
use super::detail::rfc3339;
use super::log::{LogReader, LogReaderFactory};
use super::projection::{rename_identifier, with_conn, Conn, Projection, Target, REBUILD_SUFFIX};
use super::ProjectionError;
use crate::db::{BeginWrite, Commits, Db};
use crate::domain::ids::Timestamp;
use crate::domain::log::Position;

/// How many times a swap that timed out waiting for the live tables' lock
/// is tried.
const SWAP_ATTEMPTS: u32 = 5;

/// Whether PostgreSQL gave up waiting for a lock (`lock_timeout`).
fn lock_timed_out(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|code| code == "55P03")
}

/// Events read and applied per transaction while rebuilding.
const REBUILD_PAGE: i64 = 2048;

const PG_INDEXES: &str = "SELECT indexname, indexdef FROM pg_indexes \
     WHERE schemaname = current_schema() AND tablename = $1";
const POSITION_GET: &str = "SELECT tx, position FROM projection_positions WHERE name = $1";
const POSITION_DELETE: &str = "DELETE FROM projection_positions WHERE name = $1";
const POSITION_SET: &str = include_str!("sql/follower/position_swap.sql");

/// How far a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RebuildState {
    /// Filling the fresh tables from the log.
    Building,
    /// Catching up and swapping the fresh tables in.
    Swapping,
    /// Swapped in: readers see the rebuilt tables.
    Done,
    /// Stopped by an error; the live tables are as they were.
    Failed,
}

/// A rebuild's progress, as operators see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RebuildProgress {
    /// The projection.
    pub name: String,
    /// Where it is.
    pub state: RebuildState,
    /// Events applied to the fresh tables.
    pub events_applied: u64,
    /// Events in the log when it started (the log grows meanwhile).
    pub events_total: u64,
    /// Events applied per second so far.
    pub events_per_s: f64,
    /// Seconds left at that rate (while building).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RebuildProgress {
    /// A rebuild of `name` about to start.
    pub fn starting(name: &str) -> Self {
        Self {
            name: name.to_string(),
            state: RebuildState::Building,
            events_applied: 0,
            events_total: 0,
            events_per_s: 0.0,
            eta_s: None,
            started_at: rfc3339(wall_clock()),
            finished_at: None,
            error: None,
        }
    }

    /// True once it is done or failed.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, RebuildState::Done | RebuildState::Failed)
    }
}

/// The rebuilds of one process: at most one per projection at a time, each
/// on a thread of its own with a pool of its own, so that a rebuild's work
/// does not slow the threads that serve. Cheap to clone.
#[derive(Clone)]
pub struct Rebuilds {
    db: Db,
    log: LogReaderFactory,
    /// The latest rebuild of each projection (running or finished).
    latest: Arc<Mutex<BTreeMap<&'static str, watch::Receiver<RebuildProgress>>>>,
}

impl std::fmt::Debug for Rebuilds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuilds").finish_non_exhaustive()
    }
}

impl Rebuilds {
    /// Rebuilds on `db`, reading the log through the readers `log` builds.
    pub fn new(db: Db, log: LogReaderFactory) -> Self {
        Self {
            db,
            log,
            latest: Arc::default(),
        }
    }

    /// Starts rebuilding `name` in the background; its progress follows on
    /// the returned channel. Refused for an unknown name and while a
    /// rebuild of it runs.
    pub fn start(&self, name: &str) -> Result<watch::Receiver<RebuildProgress>, ProjectionError> {
        let projection = super::ALL
            .iter()
            .copied()
            .find(|p| p.name == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_string()))?;
        let mut latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if latest.get(projection.name).is_some_and(running) {
            return Err(ProjectionError::RebuildRunning(name.to_string()));
        }
        let (progress, watching) = watch::channel(RebuildProgress::starting(name));
        latest.insert(projection.name, watching.clone());
        drop(latest);
        let log = self.log.clone();
        crate::db::spawn_dedicated(
            "runlog-rebuild",
            self.db.clone(),
            // The advisory lock's, the swap's and the log reader's.
            4,
            // The rebuild's commits need not wait for the disk: what a
            // crash loses of them is lost with their position (the swap
            // included, which then simply did not happen).
            Commits::Relaxed,
            move |db| async move {
                let log = log(db.clone());
                // Errors are in the progress (and the log).
                let _ = rebuild(&db, log.as_ref(), projection, &progress).await;
            },
        );
        Ok(watching)
    }

    /// The latest rebuild of each projection this process ran, by name.
    pub fn progress(&self) -> BTreeMap<String, RebuildProgress> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest
            .iter()
            .map(|(name, p)| {
                let mut progress = p.borrow().clone();
                if !progress.is_finished() && !running(p) {
                    progress.state = RebuildState::Failed;
                    progress.error = Some("the rebuild stopped unexpectedly (see the log)".into());
                }
                ((*name).to_string(), progress)
            })
            .collect()
    }
}

/// Whether a rebuild is still going: not finished, and its task (the
/// sender) still alive; one that died without a word has stopped.
fn running(progress: &watch::Receiver<RebuildProgress>) -> bool {
    !progress.borrow().is_finished() && progress.has_changed().is_ok()
}

/// The projections whose stored version is older than their code's (each
/// wants a rebuild), with both versions.
pub async fn outdated(db: &Db) -> Result<Vec<(String, u32, u32)>, ProjectionError> {
    let rows: Vec<(String, i64)> = crate::with_pool!(db, pool => {
        sqlx::query_as("SELECT name, version FROM projection_positions").fetch_all(pool).await?
    });
    Ok(super::ALL
        .iter()
        .filter_map(|p| {
            let (_, stored) = rows.iter().find(|(n, _)| n == p.name)?;
            let stored = u32::try_from(*stored).unwrap_or(0);
            (stored < p.version).then(|| (p.name.to_string(), stored, p.version))
        })
        .collect())
}

/// Rebuilds `projection` from the log and swaps it in; reports progress on
/// `progress` (its final state included). The caller makes sure no other
/// rebuild of the same projection runs (on PostgreSQL an advisory lock
/// also refuses one in another process).
pub(super) async fn rebuild(
    db: &Db,
    log: &dyn LogReader,
    projection: &'static Projection,
    progress: &watch::Sender<RebuildProgress>,
) -> Result<(), ProjectionError> {
    let result = run(db, log, projection, progress).await;
    progress.send_modify(|p| {
        p.finished_at = Some(rfc3339(wall_clock()));
        p.eta_s = None;
        match &result {
            Ok(()) => p.state = RebuildState::Done,
            Err(e) => {
                p.state = RebuildState::Failed;
                p.error = Some(e.to_string());
            }
        }
    });
    if let Err(e) = &result {
        tracing::error!(projection = projection.name, error = %e, "rebuild failed; the live tables are unchanged");
    }
    result
}

async fn run(
    db: &Db,
    log: &dyn LogReader,
    projection: &'static Projection,
    progress: &watch::Sender<RebuildProgress>,
) -> Result<(), ProjectionError> {
    let name = projection.name;
    // Held until the end: a rebuild of the same projection in another
    // process is refused.
    let guard = RebuildLock::take(db, name).await?;
    let built = build(db, log, projection, progress).await;
    if built.is_err() {
        // Best effort, while still holding the lock: do not leave the
        // fresh tables behind.
        if let Err(e) = drop_fresh(db, projection).await {
            tracing::warn!(projection = name, error = %e, "cannot drop the rebuild's tables");
        }
    }
    // Released before the result is told: a rebuild asked for as soon as
    // this one is done must not find it still held.
    guard.release(name).await;
    built
}

/// One rebuild of a projection at a time across processes: on PostgreSQL
/// the session advisory lock `hashtext('runlog.rebuild.<name>')` on a
/// connection held for the rebuild; on SQLite an exclusive `flock` on
/// `<database>.rebuild-<name>.lock`. Both go with the process.
enum RebuildLock {
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Sqlite {
        /// Held for its lock; released when dropped.
        _lock: Option<crate::db::FileLock>,
    },
}

impl RebuildLock {
    async fn take(db: &Db, name: &str) -> Result<Self, ProjectionError> {
        match db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
                    .bind(format!("runlog.rebuild.{name}"))
                    .fetch_one(&mut *conn)
                    .await?;
                if !locked {
                    return Err(ProjectionError::RebuildRunning(name.to_string()));
                }
                Ok(Self::Postgres(conn))
            }
            Db::Sqlite(_) => {
                let Some((_, path)) = db.sqlite_lock_path(&format!(".rebuild-{name}.lock")) else {
                    return Ok(Self::Sqlite { _lock: None });
                };
                match crate::db::FileLock::try_take(path) {
                    Ok(Some(lock)) => Ok(Self::Sqlite { _lock: Some(lock) }),
                    Ok(None) => Err(ProjectionError::RebuildRunning(name.to_string())),
                    Err(e) => Err(ProjectionError::Log(format!(
                        "cannot take the rebuild lock: {e}"
                    ))),
                }
            }
        }
    }

    async fn release(self, name: &str) {
        if let Self::Postgres(mut conn) = self {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
                .bind(format!("runlog.rebuild.{name}"))
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // The lock goes with the session: close it rather than
                // hand a locked connection back to the pool.
                let _ = sqlx::Connection::close(conn.detach()).await;
            }
        }
    }
}

/// Fills the fresh tables and swaps them in (the caller holds the lock).
async fn build(
    db: &Db,
    log: &dyn LogReader,
    projection: &'static Projection,
    progress: &watch::Sender<RebuildProgress>,
) -> Result<(), ProjectionError> {
    let name = projection.name;
    let started = Instant::now();
    let total = log
        .count_after(Position::START)
        .await
        .map_err(ProjectionError::Log)?;
    progress.send_modify(|p| p.events_total = total);
    tracing::info!(projection = name, events = total, "rebuilding from the log");
    create_fresh(db, projection).await?;
    let mut applier = Applier::new(vec![projection], Target::rebuild(projection.tables));
    let mut at = Position::START;
    let mut applied: u64 = 0;
    let mut last_log = Instant::now();
    let report = |applied: u64, state: RebuildState| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        let rate = applied as f64 / secs;
        progress.send_modify(|p| {
            p.state = state;
            p.events_applied = applied;
            p.events_per_s = (rate * 10.0).round() / 10.0;
            p.eta_s = (state == RebuildState::Building && rate > 0.0)
                .then(|| (total.saturating_sub(applied) as f64 / rate).round());
        });
    };
    // Build: until a page comes back short (the log's end, for now).
    loop {
        let page = log
            .read_after(at, REBUILD_PAGE)
            .await
            .map_err(ProjectionError::Log)?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        applier.apply(db, log, &page, last).await?;
        at = last;
        applied += page.len() as u64;
        report(applied, RebuildState::Building);
        if last_log.elapsed().as_secs() >= 5 {
            last_log = Instant::now();
            let p = progress.borrow().clone();
            tracing::info!(
                projection = name,
                applied,
                total,
                events_per_s = p.events_per_s,
                eta_s = p.eta_s.unwrap_or(0.0),
                "rebuilding"
            );
        }
        if (page.len() as i64) < REBUILD_PAGE {
            break;
        }
    }
    report(applied, RebuildState::Swapping);
    // A swap that could not lock the live tables in time (a long reader)
    // is tried again a few times; nothing of it was committed.
    let mut attempt = 1;
    let (at, caught_up) = loop {
        let swapped = swap(db, log, projection, &mut applier, at).await;
        if swapped.is_err() {
            applier.forget();
        }
        match swapped {
            Err(ProjectionError::Database(e)) if lock_timed_out(&e) && attempt < SWAP_ATTEMPTS => {
                tracing::warn!(
                    projection = name,
                    attempt,
                    "the live tables stayed busy; trying the swap again"
                );
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            other => break other?,
        }
    };
    applied += caught_up;
    report(applied, RebuildState::Swapping);
    tracing::info!(projection = name, events = applied, %at,
        seconds = format!("{:.1}", started.elapsed().as_secs_f64()), "rebuilt and swapped in");
    Ok(())
}

/// Creates the fresh tables (dropping any an interrupted rebuild left).
async fn create_fresh(db: &Db, projection: &Projection) -> Result<(), ProjectionError> {
    drop_fresh(db, projection).await?;
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            for table in projection.tables {
                sqlx::query(&format!(
                    "CREATE TABLE {table}{REBUILD_SUFFIX} (LIKE {table} INCLUDING ALL)"
                ))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_write().await?;
            for table in projection.tables {
                let sql: String = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1",
                )
                .bind(table)
                .fetch_one(&mut *tx)
                .await?;
                let fresh = rename_identifier(&sql, table, &format!("{table}{REBUILD_SUFFIX}"));
                sqlx::query(&fresh).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Drops the fresh tables and their position row.
async fn drop_fresh(db: &Db, projection: &Projection) -> Result<(), ProjectionError> {
    let position = format!("{}{REBUILD_SUFFIX}", projection.name);
    crate::with_pool!(db, pool => {
        for table in projection.tables {
            sqlx::query(&format!("DROP TABLE IF EXISTS {table}{REBUILD_SUFFIX}"))
                .execute(pool)
                .await?;
        }
        sqlx::query(POSITION_DELETE).bind(&position).execute(pool).await?;
    });
    Ok(())
}

/// The swap (see the module's documentation); returns the position the
/// swapped-in tables have applied and how many events it caught up.
async fn swap(
    db: &Db,
    log: &dyn LogReader,
    projection: &'static Projection,
    applier: &mut Applier,
    mut at: Position,
) -> Result<(Position, u64), ProjectionError> {
    let name = projection.name;
    let fresh_position = format!("{name}{REBUILD_SUFFIX}");
    let now = chrono::Utc::now().timestamp_millis();
    let caught_up;
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Behind a long reader the lock would queue every reader of the
            // table: give up after a while and let the caller try again.
            sqlx::query("SET LOCAL lock_timeout = '5s'")
                .execute(&mut *tx)
                .await?;
            for table in projection.tables {
                sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                    .execute(&mut *tx)
                    .await?;
            }
            (at, caught_up) = catch_up(Conn::Postgres(&mut tx), db, log, name, applier, at).await?;
            for table in projection.tables {
                // The live indexes' names, by what they index.
                let live: Vec<(String, String)> = sqlx::query_as(PG_INDEXES)
                    .bind(table)
                    .fetch_all(&mut *tx)
                    .await?;
                let fresh: Vec<(String, String)> = sqlx::query_as(PG_INDEXES)
                    .bind(format!("{table}{REBUILD_SUFFIX}"))
                    .fetch_all(&mut *tx)
                    .await?;
                replace_table(Conn::Postgres(&mut tx), table).await?;
                for (fresh_name, fresh_def) in &fresh {
                    let Some((live_name, _)) = live
                        .iter()
                        .find(|(_, def)| index_shape(def) == index_shape(fresh_def))
                    else {
                        continue;
                    };
                    sqlx::query(&format!(
                        "ALTER INDEX \"{fresh_name}\" RENAME TO \"{live_name}\""
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            set_positions(
                Conn::Postgres(&mut tx),
                projection,
                &fresh_position,
                at,
                now,
            )
            .await?;
            tx.commit().await?;
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_write().await?;
            (at, caught_up) = catch_up(Conn::Sqlite(&mut tx), db, log, name, applier, at).await?;
            for table in projection.tables {
                // SQLite cannot rename an index: the live ones are made
                // again on the renamed table, under their own names.
                let indexes: Vec<String> = sqlx::query_scalar(
                    "SELECT sql FROM sqlite_master \
                      WHERE type = 'index' AND tbl_name = $1 AND sql IS NOT NULL",
                )
                .bind(table)
                .fetch_all(&mut *tx)
                .await?;
                replace_table(Conn::Sqlite(&mut tx), table).await?;
                for index in indexes {
                    sqlx::query(&index).execute(&mut *tx).await?;
                }
            }
            set_positions(Conn::Sqlite(&mut tx), projection, &fresh_position, at, now).await?;
            tx.commit().await?;
        }
    }
    Ok((at, caught_up))
}

/// Inside the swap: catches the fresh tables up to at least the live
/// position (read under the swap's lock); returns where they are and how
/// many events that took.
async fn catch_up(
    mut conn: Conn<'_>,
    db: &Db,
    log: &dyn LogReader,
    name: &str,
    applier: &mut Applier,
    mut at: Position,
) -> Result<(Position, u64), ProjectionError> {
    let live = live_position(conn.reborrow(), name).await?;
    let mut caught_up = 0;
    while at < live {
        let (last, events) = next_page(log, at, live).await?;
        applier
            .apply_in(conn.reborrow(), db, log, &events, last)
            .await?;
        at = last;
        caught_up += events.len() as u64;
    }
    Ok((at, caught_up))
}

/// The swap's next page of catch-up, which must exist: the live tables
/// have applied up to `live`, so the log holds it (a rebuilt table behind
/// the follower would miss events for good).
async fn next_page(
    log: &dyn LogReader,
    at: Position,
    live: Position,
) -> Result<(Position, Vec<crate::domain::log::Logged>), ProjectionError> {
    let page = log
        .read_after(at, REBUILD_PAGE)
        .await
        .map_err(ProjectionError::Log)?;
    match page.last().map(|e| e.position) {
        Some(last) => Ok((last, page)),
        None => Err(ProjectionError::Log(format!(
            "the log ends at {at} but the live projection is at {live}; not swapping"
        ))),
    }
}

/// Drops the live `table` and renames its fresh copy into its place.
async fn replace_table(conn: Conn<'_>, table: &str) -> Result<(), ProjectionError> {
    with_conn!(conn, c => {
        sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&mut *c)
            .await?;
        sqlx::query(&format!("ALTER TABLE {table}{REBUILD_SUFFIX} RENAME TO {table}"))
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// An index definition without its name and table: what it indexes.
fn index_shape(def: &str) -> (bool, &str) {
    let unique = def.starts_with("CREATE UNIQUE");
    (unique, def.find(" USING ").map_or(def, |at| &def[at..]))
}

/// The live projection's stored position (the start if it has none).
async fn live_position(conn: Conn<'_>, name: &str) -> Result<Position, ProjectionError> {
    let row: Option<(i64, i64)> = with_conn!(conn, c => {
        sqlx::query_as(POSITION_GET).bind(name).fetch_optional(&mut *c).await?
    });
    Ok(row.map_or(Position::START, |(tx, position)| Position {
        tx: u64::try_from(tx).unwrap_or_default(),
        position,
    }))
}

/// The live position row takes the rebuilt tables' position and the code's
/// version; the rebuild's row goes.
async fn set_positions(
    conn: Conn<'_>,
    projection: &Projection,
    fresh_position: &str,
    at: Position,
    now: i64,
) -> Result<(), ProjectionError> {
    with_conn!(conn, c => {
        sqlx::query(POSITION_DELETE)
            .bind(fresh_position)
            .execute(&mut *c)
            .await?;
        sqlx::query(POSITION_SET)
            .bind(projection.name)
            .bind(i64::from(projection.version))
            .bind(i64::try_from(at.tx).unwrap_or(i64::MAX))
            .bind(at.position)
            .bind(now)
            .execute(&mut *c)
            .await?;
    });
    Ok(())
}

/// Now, by the machine's clock (progress is for people, not for the log).
fn wall_clock() -> Timestamp {
    Timestamp(chrono::Utc::now().timestamp_millis())
}
