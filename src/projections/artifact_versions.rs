//! `artifact_versions`: every version of every artifact a run's steps
//! wrote, with the step and attempt that wrote it. Rows are written once
//! and never change.

use futures::future::BoxFuture;
use serde_json::Value;

use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, PgQuery, Projection, RunChange, Target};
use super::ProjectionError;
use crate::domain::run::RunEvent;

const PUT: &str = include_str!("sql/artifact_versions/put.sql");
const PUT_PAGE_PG: &str = include_str!("sql/artifact_versions/put_page.pg.sql");

/// The artifact versions.
pub(super) const ARTIFACT_VERSIONS: Projection = Projection {
    name: "artifact_versions",
    version: 1,
    tables: &["artifact_versions"],
    pg_part: Some(PUT_PAGE_PG),
    rows: || Box::<Rows>::default(),
};

/// One artifact version.
struct Row {
    run_id: String,
    name: String,
    version: i64,
    step: String,
    attempt: i64,
    created_at: i64,
    content: Value,
}

#[derive(Default)]
struct Rows(Vec<Row>);

impl PageRows for Rows {
    fn run(&mut self, change: &RunChange<'_>) -> Result<(), ProjectionError> {
        for (_, event) in change.events {
            let (RunEvent::StepCompleted {
                step,
                attempt,
                artifacts,
                at,
                ..
            }
            | RunEvent::StepAwaitingReview {
                step,
                attempt,
                artifacts,
                at,
                ..
            }
            | RunEvent::StepAwaitingInput {
                step,
                attempt,
                artifacts,
                at,
                ..
            }
            | RunEvent::StepProduced {
                step,
                attempt,
                artifacts,
                at,
                ..
            }) = event
            else {
                continue;
            };
            for written in artifacts {
                self.0.push(Row {
                    run_id: change.run_id.to_string(),
                    name: written.name.to_string(),
                    version: i64::from(written.version),
                    step: step.to_string(),
                    attempt: i64::from(*attempt),
                    created_at: at.0,
                    content: serde_json::to_value(&written.content)?,
                });
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bind_pg<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        let r = &self.0;
        query
            .bind(r.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.version).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.step.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.attempt).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.created_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.content.clone()).collect::<Vec<_>>())
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
                for a in &self.0 {
                    sqlx::query(&sql)
                        .bind(&a.run_id)
                        .bind(&a.name)
                        .bind(a.version)
                        .bind(&a.step)
                        .bind(a.attempt)
                        .bind(a.created_at)
                        .bind(&a.content)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
    }
}
