//! `run_details`: each run's detail document (what `GET /api/runs/{id}`
//! returns), stored whole as JSON text. The follower keeps the documents
//! it works on; this projection stores them, and is where the follower
//! reads back one it does not hold.

use std::collections::HashMap;

use futures::future::BoxFuture;

use super::detail::RunDetail;
use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, PgQuery, Projection, RunChange, Target};
use super::ProjectionError;
use crate::db::Db;

const PUT: &str = include_str!("sql/run_details/put.sql");
const PUT_PAGE_PG: &str = include_str!("sql/run_details/put_page.pg.sql");
const GET_MANY_PG: &str = include_str!("sql/run_details/get_many.pg.sql");
const GET_MANY_SQLITE: &str = include_str!("sql/run_details/get_many.sqlite.sql");

/// Its name (the follower reads documents back from its table).
pub(super) const NAME: &str = "run_details";

/// The run detail documents.
pub(super) const RUN_DETAILS: Projection = Projection {
    name: NAME,
    version: 1,
    tables: &["run_details"],
    pg_part: Some(PUT_PAGE_PG),
    rows: || Box::<Rows>::default(),
};

/// One run's document.
struct Row {
    run_id: String,
    sequence: i64,
    /// The document as JSON text.
    doc: String,
}

#[derive(Default)]
struct Rows(Vec<Row>);

impl PageRows for Rows {
    fn run(&mut self, change: &RunChange<'_>) -> Result<(), ProjectionError> {
        self.0.push(Row {
            run_id: change.run_id.to_string(),
            sequence: change.detail.sequence as i64,
            doc: serde_json::to_string(change.detail)?,
        });
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bind_pg<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        let r = &self.0;
        query
            .bind(r.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.sequence).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.doc.as_str()).collect::<Vec<_>>())
    }

    fn write<'c>(
        &'c self,
        conn: Conn<'c>,
        target: &'c Target,
        _log: &'c dyn LogReader,
    ) -> BoxFuture<'c, Result<(), ProjectionError>> {
        Box::pin(async move {
            let sql = target.sql(PUT);
            with_conn!(conn, c => {
                for r in &self.0 {
                    sqlx::query(&sql)
                        .bind(&r.run_id)
                        .bind(r.sequence)
                        .bind(&r.doc)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
    }
}

/// The stored documents of `run_ids` (those that have one) in `target`'s
/// table.
pub(super) async fn stored(
    db: &Db,
    target: &Target,
    run_ids: &[&str],
) -> Result<HashMap<String, RunDetail>, ProjectionError> {
    if run_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = match db {
        Db::Postgres(pool) => {
            sqlx::query_as(&target.sql(GET_MANY_PG))
                .bind(run_ids)
                .fetch_all(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            sqlx::query_as(&target.sql(GET_MANY_SQLITE))
                .bind(serde_json::to_string(run_ids)?)
                .fetch_all(pool)
                .await?
        }
    };
    rows.into_iter()
        .map(|(id, doc)| Ok((id, serde_json::from_str(&doc)?)))
        .collect()
}
