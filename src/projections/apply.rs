//! Applying a page of the log to a set of projections in one transaction,
//! with their new position: the work the follower and a rebuild share.

use std::collections::{BTreeMap, HashMap};

use super::detail::RunDetail;
use super::log::LogReader;
use super::projection::{
    shift_parameters, Conn, PageRows, PgQuery, Projection, RunChange, Target, TemplateChange,
    UserChange,
};
use super::{run_details, ProjectionError};
use crate::db::{BeginWrite, Db};
use crate::domain::log::{Logged, LoggedEvent, Position};
use crate::domain::run::RunEvent;
use crate::domain::template::TemplateEvent;
use crate::domain::user::UserEvent;
use crate::with_pool;
use sqlx::Row;

const POSITIONS_PUT_PG: &str = include_str!("sql/follower/page_put.pg.sql");
const GUARD_PG: &str = include_str!("sql/follower/page_guard.pg.sql");
const POSITION_PUT: &str = include_str!("sql/follower/position_put.sql");
const POSITIONS_GET: &str = include_str!("sql/follower/positions_get.sql");

/// Detail documents an applier keeps in memory (so a page need not read
/// them back); past this the cache is emptied.
const DOC_CACHE_LIMIT: usize = 10_000;

/// Applies pages of the log to some projections, in one target.
pub(super) struct Applier {
    projections: Vec<&'static Projection>,
    target: Target,
    /// Their position rows' names in the target.
    names: Vec<String>,
    /// Their code versions (recorded with a position row's first write).
    versions: Vec<i64>,
    /// Their generations as last read: a page is written only while they
    /// are current (a rebuild's swap raises its projection's).
    generations: Vec<i64>,
    /// The page's one PostgreSQL statement.
    pg_statement: String,
    /// Whether the run detail documents are among them (then one the cache
    /// lacks is read back from the target's table; else it is folded from
    /// the log).
    stores_documents: bool,
    /// Documents of runs that are not finished, as of the last page.
    cache: HashMap<String, RunDetail>,
}

impl Applier {
    /// An applier of `projections` into `target`.
    pub(super) fn new(projections: Vec<&'static Projection>, target: Target) -> Self {
        let mut pg_statement = String::from("WITH\n");
        pg_statement.push_str(GUARD_PG.trim_end());
        pg_statement.push_str(",\n");
        let mut offset = 2;
        for part in projections.iter().filter_map(|p| p.pg_part) {
            let (text, highest) = shift_parameters(&target.sql(part), offset);
            pg_statement.push_str(text.trim_end());
            pg_statement.push_str(",\n");
            offset += highest;
        }
        let (positions, _) = shift_parameters(POSITIONS_PUT_PG, offset);
        pg_statement.push_str(positions.trim_end());
        pg_statement.push_str("\nSELECT current FROM guard");
        Self {
            names: projections
                .iter()
                .map(|p| target.name(p.name).into_owned())
                .collect(),
            versions: projections.iter().map(|p| i64::from(p.version)).collect(),
            generations: vec![0; projections.len()],
            stores_documents: projections.iter().any(|p| p.name == run_details::NAME),
            projections,
            target,
            pg_statement,
            cache: HashMap::new(),
        }
    }

    /// Reads its projections' stored positions and generations; returns
    /// the position all of them have applied (the lowest stored; the start
    /// of the log if one has none).
    pub(super) async fn stored_position(&mut self, db: &Db) -> Result<Position, ProjectionError> {
        let rows: Vec<(String, i64, i64, i64)> = with_pool!(db, pool => {
            sqlx::query_as(POSITIONS_GET).fetch_all(pool).await?
        });
        self.generations = self
            .names
            .iter()
            .map(|name| rows.iter().find(|r| &r.0 == name).map_or(0, |r| r.3))
            .collect();
        let mut lowest: Option<Position> = None;
        for name in &self.names {
            let Some((_, tx, position, _)) = rows.iter().find(|r| &r.0 == name) else {
                return Ok(Position::START);
            };
            let p = Position {
                tx: u64::try_from(*tx).unwrap_or_default(),
                position: *position,
            };
            lowest = Some(lowest.map_or(p, |l| l.min(p)));
        }
        Ok(lowest.unwrap_or(Position::START))
    }

    /// Forgets the documents it holds (after a failed write, or when the
    /// tables under it changed).
    pub(super) fn forget(&mut self) {
        self.cache.clear();
    }

    /// Applies a page of the log and records `last` as its projections'
    /// position, in one transaction.
    ///
    /// The documents the page builds on are read first, outside the write
    /// (an applier is the only writer of its target but for a rebuild's
    /// swap, which the generations catch: then nothing is written and
    /// [`ProjectionError::Swapped`] says so); the rows then go in
    /// at once: on PostgreSQL one statement, which is its own transaction
    /// (a page with rows of a projection that writes with statements of its
    /// own takes a transaction of a few).
    pub(super) async fn apply(
        &mut self,
        db: &Db,
        log: &dyn LogReader,
        page: &[Logged],
        last: Position,
    ) -> Result<(), ProjectionError> {
        let mut rows: Vec<Box<dyn PageRows>> =
            self.projections.iter().map(|p| (p.rows)()).collect();
        let written = self.collect(db, log, page, &mut rows).await?;
        match db {
            Db::Postgres(pool) => {
                let own = self.projections.iter().zip(&rows);
                if own
                    .filter(|(p, r)| p.pg_part.is_none() && !r.is_empty())
                    .count()
                    == 0
                {
                    // One statement is one transaction: no BEGIN / COMMIT
                    // round trips. It wrote nothing if a swap intervened.
                    let current: bool =
                        self.pg_statement(&rows, last).fetch_one(pool).await?.get(0);
                    if !current {
                        return Err(ProjectionError::Swapped);
                    }
                } else {
                    let mut tx = pool.begin_write().await?;
                    self.write(Conn::Postgres(&mut tx), log, &rows, last)
                        .await?;
                    tx.commit().await?;
                }
            }
            Db::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                self.write(Conn::Sqlite(&mut tx), log, &rows, last).await?;
                tx.commit().await?;
            }
        }
        crate::db::count_commit();
        self.remember(written);
        Ok(())
    }

    /// [`Applier::apply`] inside a transaction of the caller's (`conn`).
    /// If that transaction does not commit, call [`Applier::forget`].
    pub(super) async fn apply_in(
        &mut self,
        conn: Conn<'_>,
        db: &Db,
        log: &dyn LogReader,
        page: &[Logged],
        last: Position,
    ) -> Result<(), ProjectionError> {
        let mut rows: Vec<Box<dyn PageRows>> =
            self.projections.iter().map(|p| (p.rows)()).collect();
        let written = self.collect(db, log, page, &mut rows).await?;
        self.write(conn, log, &rows, last).await?;
        self.remember(written);
        Ok(())
    }

    /// The page's one PostgreSQL statement, bound; it returns whether the
    /// generations were current (else it wrote nothing).
    fn pg_statement<'q>(&'q self, rows: &'q [Box<dyn PageRows>], last: Position) -> PgQuery<'q> {
        let mut query = sqlx::query(&self.pg_statement)
            .bind(&self.names)
            .bind(&self.generations);
        for (p, r) in self.projections.iter().zip(rows) {
            if p.pg_part.is_some() {
                query = r.bind_pg(query);
            }
        }
        query
            .bind(&self.names)
            .bind(&self.versions)
            .bind(i64::try_from(last.tx).unwrap_or(i64::MAX))
            .bind(last.position)
            .bind(chrono::Utc::now().timestamp_millis())
    }

    /// Writes a page's rows and the position inside a transaction; fails
    /// with [`ProjectionError::Swapped`] (the caller must not commit) when a
    /// projection's generation moved since its documents were read.
    async fn write(
        &self,
        conn: Conn<'_>,
        log: &dyn LogReader,
        rows: &[Box<dyn PageRows>],
        last: Position,
    ) -> Result<(), ProjectionError> {
        match conn {
            Conn::Postgres(c) => {
                for (p, r) in self.projections.iter().zip(rows) {
                    if p.pg_part.is_none() && !r.is_empty() {
                        r.write(Conn::Postgres(&mut *c), &self.target, log).await?;
                    }
                }
                let current: bool = self
                    .pg_statement(rows, last)
                    .fetch_one(&mut *c)
                    .await?
                    .get(0);
                if !current {
                    return Err(ProjectionError::Swapped);
                }
            }
            Conn::Sqlite(c) => {
                // Inside the write lock: a swap cannot come between this
                // check and the commit.
                let stored: Vec<(String, i64)> =
                    sqlx::query_as("SELECT name, generation FROM projection_positions")
                        .fetch_all(&mut *c)
                        .await?;
                let moved = self
                    .names
                    .iter()
                    .zip(&self.generations)
                    .any(|(name, g)| stored.iter().any(|(n, stored)| n == name && stored != g));
                if moved {
                    return Err(ProjectionError::Swapped);
                }
                for r in rows.iter().filter(|r| !r.is_empty()) {
                    r.write(Conn::Sqlite(&mut *c), &self.target, log).await?;
                }
                let now = chrono::Utc::now().timestamp_millis();
                for (name, version) in self.names.iter().zip(&self.versions) {
                    sqlx::query(POSITION_PUT)
                        .bind(name)
                        .bind(version)
                        .bind(i64::try_from(last.tx).unwrap_or(i64::MAX))
                        .bind(last.position)
                        .bind(now)
                        .execute(&mut *c)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Keeps the documents a page wrote.
    fn remember(&mut self, written: Vec<RunDetail>) {
        if self.cache.len() + written.len() > DOC_CACHE_LIMIT {
            self.cache.clear();
        }
        for doc in written {
            // Finished runs rarely change again: do not keep them.
            if doc.status.is_finished() {
                self.cache.remove(&doc.id);
            } else {
                self.cache.insert(doc.id.clone(), doc);
            }
        }
    }

    /// Hands each projection's collector what the page changes; returns the
    /// run documents after the page (cached once the write succeeded).
    async fn collect(
        &self,
        db: &Db,
        log: &dyn LogReader,
        page: &[Logged],
        rows: &mut [Box<dyn PageRows>],
    ) -> Result<Vec<RunDetail>, ProjectionError> {
        // Grouped by aggregate so each document is read and written once.
        let mut runs: BTreeMap<&str, Vec<(u64, &RunEvent)>> = BTreeMap::new();
        let mut templates: BTreeMap<&str, Vec<(u64, &TemplateEvent)>> = BTreeMap::new();
        let mut users: BTreeMap<&str, Vec<(u64, &UserEvent)>> = BTreeMap::new();
        for logged in page {
            match &logged.event {
                LoggedEvent::Run(e) => runs
                    .entry(&logged.aggregate_id)
                    .or_default()
                    .push((logged.sequence, e)),
                LoggedEvent::Template(e) => templates
                    .entry(&logged.aggregate_id)
                    .or_default()
                    .push((logged.sequence, e)),
                LoggedEvent::User(e) => users
                    .entry(&logged.aggregate_id)
                    .or_default()
                    .push((logged.sequence, e)),
                LoggedEvent::Other => {}
            }
        }
        for (user_id, events) in &mut users {
            events.sort_by_key(|(s, _)| *s);
            let change = UserChange { user_id, events };
            for r in rows.iter_mut() {
                r.user(&change);
            }
        }
        // In sequence order within each aggregate (the log's order within
        // one transaction need not be).
        for events in runs.values_mut() {
            events.sort_by_key(|(s, _)| *s);
        }
        for events in templates.values_mut() {
            events.sort_by_key(|(s, _)| *s);
        }
        for (template_id, events) in &templates {
            let change = TemplateChange {
                template_id,
                events,
            };
            for r in rows.iter_mut() {
                r.template(&change);
            }
        }
        // A cached document is as good as the stored one: an applier is the
        // only writer of its target. A page that starts at the run's first
        // event builds its document afresh; the others are read in one
        // query (or, when the documents are not among the projections, are
        // folded from the log below).
        let first_of = |events: &[(u64, &RunEvent)]| events.first().map_or(0, |(s, _)| *s);
        let mut stored = if self.stores_documents {
            let uncached: Vec<&str> = runs
                .iter()
                .filter(|(id, events)| !self.cache.contains_key(**id) && first_of(events) != 1)
                .map(|(id, _)| *id)
                .collect();
            run_details::stored(db, &self.target, &uncached).await?
        } else {
            HashMap::new()
        };
        let mut written = Vec::new();
        for (run_id, events) in runs {
            let first = first_of(&events);
            let mut detail: RunDetail = match self.cache.get(run_id) {
                Some(cached) => cached.clone(),
                None => stored.remove(run_id).unwrap_or_default(),
            };
            let before = detail.sequence;
            // A document behind the log (its rows were deleted, written by
            // an older build that lost a write, or not stored here) is
            // filled from the run's events.
            let filled;
            let events: Vec<(u64, &RunEvent)> = if first > before + 1 {
                filled = log
                    .aggregate_after("Run", run_id, before)
                    .await
                    .map_err(ProjectionError::Log)?;
                filled.iter().filter_map(Logged::as_run).collect()
            } else {
                events
            };
            let mut applied = Vec::with_capacity(events.len());
            for (sequence, event) in events {
                if sequence <= detail.sequence {
                    continue;
                }
                detail.apply(sequence, event);
                applied.push((sequence, event));
            }
            if applied.is_empty() {
                continue;
            }
            let change = RunChange {
                run_id,
                events: &applied,
                detail: &detail,
            };
            for r in rows.iter_mut() {
                r.run(&change)?;
            }
            written.push(detail);
        }
        Ok(written)
    }
}
