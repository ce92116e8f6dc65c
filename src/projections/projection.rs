//! What every read model is to the follower: a named, versioned
//! [`Projection`] that owns its tables and, for each page of the log,
//! collects the rows the page implies and writes them (the one small
//! trait, [`PageRows`]).
//!
//! The follower ([`super::apply::Applier`]) does the shared work: it reads
//! the page, groups it by run and template, keeps each run's detail
//! document (the fold every run read model is computed from) and hands each
//! projection the events and the document after them. A projection only
//! turns those into rows.
//!
//! A projection writes into a [`Target`]: its live tables, or the fresh
//! copies a rebuild fills while the live ones keep serving. Its SQL names
//! its live tables; a target renames them.

use std::borrow::Cow;

use futures::future::BoxFuture;

use super::detail::RunDetail;
use super::log::LogReader;
use super::ProjectionError;
use crate::domain::run::RunEvent;
use crate::domain::template::TemplateEvent;
use crate::domain::user::UserEvent;

/// The PostgreSQL statement a page's rows are bound to.
pub(super) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// A connection inside the page's transaction.
pub(super) enum Conn<'c> {
    /// SQLite.
    Sqlite(&'c mut sqlx::SqliteConnection),
    /// PostgreSQL.
    Postgres(&'c mut sqlx::PgConnection),
}

impl Conn<'_> {
    /// The same connection, for one more call.
    pub(super) fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Self::Sqlite(c) => Conn::Sqlite(c),
            Self::Postgres(c) => Conn::Postgres(c),
        }
    }
}

/// Runs the same sqlx code on whichever backend `conn` is.
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::projections::projection::Conn::Sqlite($c) => $body,
            $crate::projections::projection::Conn::Postgres($c) => $body,
        }
    };
}
pub(super) use with_conn;

/// One read model: what it is called and owns, and how a page becomes its
/// rows (its [`PageRows`], the behaviour). Each read model's file declares
/// one as a constant.
#[derive(Debug)]
pub(super) struct Projection {
    /// Its name: what operators name it by and its row in
    /// `projection_positions`.
    pub name: &'static str,
    /// The version of the code that builds it. Raised whenever a change
    /// means rows built before are wrong or incomplete; a stored version
    /// below it asks for a rebuild.
    pub version: u32,
    /// The tables it owns, written by nothing else (a rebuild replaces all
    /// of them at once).
    pub tables: &'static [&'static str],
    /// Its part of the page's one PostgreSQL statement: common table
    /// expressions (`name AS (…)`, comma-separated) whose parameters are
    /// numbered from `$1`; `None` if it writes with statements of its own
    /// ([`PageRows::write`]) on PostgreSQL too.
    pub pg_part: Option<&'static str>,
    /// A collector for one page.
    pub rows: fn() -> Box<dyn PageRows>,
}

/// A run whose events a page applies.
pub(super) struct RunChange<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Its events the page applies, in sequence order (none already applied).
    pub events: &'a [(u64, &'a RunEvent)],
    /// Its detail document after them.
    pub detail: &'a RunDetail,
}

/// A template whose events a page applies.
pub(super) struct TemplateChange<'a> {
    /// The template.
    pub template_id: &'a str,
    /// Its events in the page, in sequence order.
    pub events: &'a [(u64, &'a TemplateEvent)],
}

/// A user whose events a page applies.
pub(super) struct UserChange<'a> {
    /// The user.
    pub user_id: &'a str,
    /// Its events in the page, in sequence order.
    pub events: &'a [(u64, &'a UserEvent)],
}

/// The rows one projection writes for one page.
pub(super) trait PageRows: Send + Sync {
    /// Collects what a run's new events imply.
    fn run(&mut self, _change: &RunChange<'_>) -> Result<(), ProjectionError> {
        Ok(())
    }
    /// Collects what a template's events imply.
    fn template(&mut self, _change: &TemplateChange<'_>) {}
    /// Collects what a user's events imply.
    fn user(&mut self, _change: &UserChange<'_>) {}
    /// True when it has nothing to write.
    fn is_empty(&self) -> bool;
    /// Binds its parameters to the page's PostgreSQL statement, in the
    /// order of its [`Projection::pg_part`] (only called when it has one).
    fn bind_pg<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
    }
    /// Writes its rows with statements of its own, inside the page's
    /// transaction: always on SQLite (in-process, statements are cheap), on
    /// PostgreSQL when it has no [`Projection::pg_part`].
    fn write<'c>(
        &'c self,
        conn: Conn<'c>,
        target: &'c Target,
        log: &'c dyn LogReader,
    ) -> BoxFuture<'c, Result<(), ProjectionError>>;
}

/// The suffix of the tables a rebuild fills.
pub(super) const REBUILD_SUFFIX: &str = "__rebuild";

/// Where a page goes: the live tables, or the copies a rebuild fills.
#[derive(Debug, Clone, Default)]
pub(super) struct Target {
    /// The tables that are written under another name (empty: live).
    renamed: Vec<&'static str>,
}

impl Target {
    /// The live tables.
    pub(super) fn live() -> Self {
        Self::default()
    }

    /// The rebuild copies of `tables`.
    pub(super) fn rebuild(tables: &[&'static str]) -> Self {
        Self {
            renamed: tables.to_vec(),
        }
    }

    /// True for the live tables.
    pub(super) fn is_live(&self) -> bool {
        self.renamed.is_empty()
    }

    /// The name `name` (a table or a position row) has in this target.
    pub(super) fn name(&self, name: &'static str) -> Cow<'static, str> {
        if self.is_live() {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(format!("{name}{REBUILD_SUFFIX}"))
        }
    }

    /// `sql` with this target's table names.
    pub(super) fn sql(&self, sql: &'static str) -> Cow<'static, str> {
        if self.is_live() {
            return Cow::Borrowed(sql);
        }
        let mut text = sql.to_string();
        for table in &self.renamed {
            text = rename_identifier(&text, table, &format!("{table}{REBUILD_SUFFIX}"));
        }
        Cow::Owned(text)
    }
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `sql` with every whole-word `from` replaced by `to` (a table name, not
/// part of a longer identifier).
pub(super) fn rename_identifier(sql: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(is_identifier_char) || after.is_some_and(is_identifier_char) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

/// `sql` with every parameter `$n` renumbered `$(n + offset)`; returns it
/// and the highest parameter it names (before the shift).
pub(super) fn shift_parameters(sql: &str, offset: usize) -> (String, usize) {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut highest = 0;
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut digits = String::new();
        while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
            digits.push(d);
            chars.next();
        }
        match digits.parse::<usize>() {
            Ok(n) => {
                highest = highest.max(n);
                out.push('$');
                out.push_str(&(n + offset).to_string());
            }
            Err(_) => out.push('$'),
        }
    }
    (out, highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_renamed_only_where_it_is_a_whole_word() {
        let sql = "INSERT INTO run_details (run_id) SELECT 1 FROM run_details_x, x_run_details \
                   WHERE run_details.last_sequence < 2";
        assert_eq!(
            rename_identifier(sql, "run_details", "run_details__rebuild"),
            "INSERT INTO run_details__rebuild (run_id) SELECT 1 FROM run_details_x, x_run_details \
             WHERE run_details__rebuild.last_sequence < 2"
        );
    }

    #[test]
    fn parameters_are_shifted_and_the_highest_is_told() {
        let (sql, highest) = shift_parameters("UNNEST($1::text[], $12::bigint[]) $ $$", 30);
        assert_eq!(sql, "UNNEST($31::text[], $42::bigint[]) $ $$");
        assert_eq!(highest, 12);
    }

    #[test]
    fn the_live_target_leaves_sql_alone_and_a_rebuild_renames_its_tables_only() {
        let sql = "UPDATE run_messages SET x = 1 FROM run_summaries";
        assert!(matches!(Target::live().sql(sql), Cow::Borrowed(s) if s == sql));
        let target = Target::rebuild(&["run_messages"]);
        assert_eq!(
            target.sql(sql),
            "UPDATE run_messages__rebuild SET x = 1 FROM run_summaries"
        );
        assert_eq!(target.name("run_messages"), "run_messages__rebuild");
    }
}
