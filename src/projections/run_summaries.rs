//! `run_summaries`: one row per run with what the runs list shows and
//! filters on (status, template, agents, stalled leases, refine loops),
//! computed from the run's detail document.

use futures::future::BoxFuture;
use serde_json::Value;

use super::detail::RunDetail;
use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, PgQuery, Projection, RunChange, Target};
use super::ProjectionError;

const PUT: &str = include_str!("sql/run_summaries/put.sql");
const PUT_PAGE_PG: &str = include_str!("sql/run_summaries/put_page.pg.sql");

/// The run summaries.
pub(super) const RUN_SUMMARIES: Projection = Projection {
    name: "run_summaries",
    version: 1,
    tables: &["run_summaries"],
    pg_part: Some(PUT_PAGE_PG),
    rows: || Box::<Rows>::default(),
};

/// One run's summary.
struct Row {
    run_id: String,
    template_id: String,
    template_version: i64,
    status: &'static str,
    created_at: i64,
    updated_at: i64,
    sequence: i64,
    /// `,a,b,`: the agents of its steps and evaluators.
    agents: String,
    lease_expires_at: Option<i64>,
    refine: Option<Value>,
    owner: Option<String>,
}

#[derive(Default)]
struct Rows(Vec<Row>);

impl PageRows for Rows {
    fn run(&mut self, change: &RunChange<'_>) -> Result<(), ProjectionError> {
        let d: &RunDetail = change.detail;
        self.0.push(Row {
            run_id: change.run_id.to_string(),
            template_id: d.template_id.clone(),
            template_version: i64::from(d.template_version),
            status: d.status.as_str(),
            created_at: parse_ms(&d.created_at),
            updated_at: parse_ms(&d.updated_at),
            sequence: d.sequence as i64,
            agents: d.agents_list(),
            lease_expires_at: d.earliest_lease_expiry().map(|t| t.0),
            refine: d.refine_summary(),
            owner: d.owner.clone(),
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
            .bind(r.iter().map(|r| r.template_id.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.template_version).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.status).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.created_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.updated_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.sequence).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.agents.as_str()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.lease_expires_at).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.refine.clone()).collect::<Vec<_>>())
            .bind(r.iter().map(|r| r.owner.clone()).collect::<Vec<_>>())
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
                        .bind(&r.template_id)
                        .bind(r.template_version)
                        .bind(r.status)
                        .bind(r.created_at)
                        .bind(r.updated_at)
                        .bind(r.sequence)
                        .bind(&r.agents)
                        .bind(r.lease_expires_at)
                        .bind(&r.refine)
                        .bind(&r.owner)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
    }
}

fn parse_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text).map_or(0, |t| t.timestamp_millis())
}
