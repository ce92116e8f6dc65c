//! The projection follower: a task that reads the log in position order
//! (through [`LogReader`]) and applies it to the read models, many runs per
//! transaction, recording in the same transaction how far it got
//! (`projection_positions`; docs/adr/0005).

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::apply::Applier;
use super::log::{LogReader, LogReaderFactory};
use super::projection::Target;
use super::ProjectionError;
use crate::db::{Commits, Db};
use crate::domain::log::Position;

/// Most events read and applied in one transaction.
const PAGE: i64 = 512;
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
            // Reads and writes, and the writer lock's session.
            3,
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
    let mut applier = Applier::new(super::ALL.to_vec(), Target::live());
    let mut leadership = Leadership::default();
    loop {
        if !stand_by(&db, &mut leadership, &mut applier, &shared).await {
            return;
        }
        if !lead(&db, log.as_ref(), &shared, &mut applier, &mut leadership).await {
            return;
        }
        // The writer lock was lost (its session ended): another node may
        // write now; what this one holds may be stale.
        applier.forget();
        tracing::warn!("this node lost the read models' writer lock; standing by");
    }
}

/// Writes the read models while this node holds the writer lock. Returns
/// true when the lock is lost, false when asked to stop.
async fn lead(
    db: &Db,
    log: &dyn LogReader,
    shared: &Shared,
    applier: &mut Applier,
    leadership: &mut Leadership,
) -> bool {
    let db = db.clone();
    let mut checked = std::time::Instant::now();
    // (stored_position also reads the generations the page writes check.)
    let mut at = loop {
        match applier.stored_position(&db).await {
            Ok(position) => break position,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the read models' positions; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
    };
    if at > *shared.applied.borrow() {
        publish(shared, at);
    }
    let mut failures = 0u32;
    let mut read_failures = 0u32;
    let mut busy_look = BUSY_LOOK;
    while !shared.stop.load(Ordering::SeqCst) {
        if checked.elapsed() >= LEADER_CHECK_EVERY {
            checked = std::time::Instant::now();
            if !leadership.still_held(&db).await {
                return true;
            }
        }
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
        match applier.apply(&db, log, &page, last).await {
            Ok(()) => {
                failures = 0;
                at = last;
                shared
                    .events_applied
                    .fetch_add(page.len() as u64, Ordering::Relaxed);
                publish(shared, at);
                busy_look = BUSY_LOOK;
                read_failures = 0;
            }
            Err(ProjectionError::Swapped) => {
                // A rebuild swapped its tables in: what this follower held
                // (its documents, the generations) describes the old ones.
                // Its position stays (the swapped-in tables are at or past
                // it); the page is applied again from the new tables.
                tracing::info!(%at, "a rebuilt projection was swapped in; applying the page again from it");
                applier.forget();
                if let Err(e) = applier.stored_position(&db).await {
                    tracing::error!(error = %e, "cannot read the projections' generations; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Err(e) => {
                // Never skipped: the page is applied again until it goes in
                // (readers stop waiting after APPLY_WAIT).
                failures += 1;
                applier.forget();
                tracing::error!(error = %e, %at, failures,
                    "projection write failed; the page is applied again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(failures.min(20)))).await;
            }
        }
    }
    false
}

/// Tells the waiting readers that the read models hold the log up to
/// `at`.
fn publish(shared: &Shared, at: Position) {
    // Under the lock `committed` takes, so that an entry is never left at
    // or below the published position.
    let mut pending = lock(&shared.pending);
    let above = pending.split_off(&Position {
        tx: at.tx,
        position: at.position + 1,
    });
    *pending = above;
    shared.applied.send_replace(at);
}

/// The advisory lock that makes one node's follower the writer of the read
/// models on a PostgreSQL that several nodes share (docs/adr/0007). Its
/// session holds it until the process ends or the connection breaks; the
/// other nodes' followers wait for it.
#[derive(Default)]
struct Leadership {
    held: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
}

/// Shared by every runlog node; distinct from the migration lock.
const LEADER_KEY: i64 = 0x0072_756e_6c6f_6701;
/// How often the writer checks that its session still holds the lock.
const LEADER_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Whether this session holds the writer lock (a `bigint` key is `classid`
/// and `objid` in `pg_locks`, with `objsubid` 1).
const LEADER_HELD: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks
     WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid = pg_backend_pid()
       AND ((classid::bigint << 32) | objid::bigint) = $1)";

impl Leadership {
    /// Whether the lock's session is still there and holds it (always on
    /// SQLite). A lost one is let go: the next `try_take` starts afresh.
    async fn still_held(&mut self, db: &Db) -> bool {
        let Db::Postgres(_) = db else {
            return true;
        };
        let Some(connection) = self.held.as_mut() else {
            return false;
        };
        let held: Result<bool, sqlx::Error> = sqlx::query_scalar(LEADER_HELD)
            .bind(LEADER_KEY)
            .fetch_one(&mut **connection)
            .await;
        match held {
            Ok(true) => true,
            Ok(false) | Err(_) => {
                if let Some(connection) = self.held.take() {
                    connection.detach();
                }
                false
            }
        }
    }

    /// Takes the lock if no other session holds it. Always true on SQLite
    /// (one process serves it).
    async fn try_take(&mut self, db: &Db) -> Result<bool, sqlx::Error> {
        let Db::Postgres(pool) = db else {
            return Ok(true);
        };
        if self.held.is_some() {
            return Ok(true);
        }
        let mut connection = pool.acquire().await?;
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_KEY)
            .fetch_one(&mut *connection)
            .await?;
        if taken {
            self.held = Some(connection);
        }
        Ok(taken)
    }
}

/// How often a follower on stand-by looks at the positions the writing
/// node stored, and how soon when a commit of this process waits for them.
const STANDBY_LOOK: Duration = Duration::from_millis(100);
const STANDBY_WAITING_LOOK: Duration = Duration::from_millis(5);
/// How often a follower on stand-by tries to become the writer.
const STANDBY_TAKE_EVERY: Duration = Duration::from_secs(1);

/// Waits until this follower may write the read models. Meanwhile the
/// positions the writing node stores are what this node's readers wait
/// for (read-your-writes through the stored positions). Returns false if
/// asked to stop first.
async fn stand_by(
    db: &Db,
    leadership: &mut Leadership,
    applier: &mut Applier,
    shared: &Shared,
) -> bool {
    let mut said = false;
    let mut since_try = STANDBY_TAKE_EVERY;
    while !shared.stop.load(Ordering::SeqCst) {
        if since_try >= STANDBY_TAKE_EVERY {
            since_try = Duration::ZERO;
            match leadership.try_take(db).await {
                Ok(true) => {
                    if said {
                        tracing::info!("the node that wrote the read models is gone: this node writes them now");
                    }
                    return true;
                }
                Ok(false) if !said => {
                    said = true;
                    tracing::info!(
                        "another node writes the read models; this one reads their positions"
                    );
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot try the read models' writer lock"),
            }
        }
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        match applier.stored_position(db).await {
            Ok(at) if at > *shared.applied.borrow() => publish(shared, at),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the read models' positions"),
        }
        let look = if lock(&shared.pending).is_empty() {
            STANDBY_LOOK
        } else {
            STANDBY_WAITING_LOOK
        };
        let started = std::time::Instant::now();
        tokio::select! {
            () = &mut woken => {}
            () = tokio::time::sleep(look) => {}
        }
        since_try += started.elapsed().max(STANDBY_WAITING_LOOK);
    }
    false
}
