//! Applies the SQL under `schema/` in order, once each, recording what was
//! applied in `runlog_migrations`. Safe to run on every start and from
//! several nodes: on PostgreSQL an advisory lock serialises migrators.

use sqlx::Executor;

use super::StoreError;
use crate::db::Db;

/// One schema file: its number, name and SQL for each backend.
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "event_log",
        sqlite: include_str!("../../schema/sqlite/001_event_log.sql"),
        postgres: include_str!("../../schema/postgres/001_event_log.sql"),
    },
    Migration {
        version: 2,
        name: "projections",
        sqlite: include_str!("../../schema/sqlite/002_projections.sql"),
        postgres: include_str!("../../schema/postgres/002_projections.sql"),
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS runlog_migrations \
    (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
const APPLIED: &str = "SELECT version FROM runlog_migrations ORDER BY version";
const RECORD: &str =
    "INSERT INTO runlog_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
/// An arbitrary constant shared by every runlog node.
const PG_LOCK_KEY: i64 = 0x72756e6c6f67;

/// Applies every migration not applied yet; returns how many were applied.
pub async fn migrate(db: &Db) -> Result<usize, StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let applied = match db {
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            // BEGIN IMMEDIATE takes the write lock, serialising migrators.
            conn.execute("BEGIN IMMEDIATE").await?;
            let result = async {
                conn.execute(CREATE_TABLE).await?;
                let done: Vec<i64> = sqlx::query_scalar(APPLIED).fetch_all(&mut *conn).await?;
                let mut applied = 0;
                for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
                    conn.execute(m.sqlite).await?;
                    sqlx::query(RECORD)
                        .bind(m.version)
                        .bind(m.name)
                        .bind(now)
                        .execute(&mut *conn)
                        .await?;
                    applied += 1;
                }
                Ok::<_, sqlx::Error>(applied)
            }
            .await;
            match result {
                Ok(n) => {
                    conn.execute("COMMIT").await?;
                    n
                }
                Err(e) => {
                    let _ = conn.execute("ROLLBACK").await;
                    return Err(e.into());
                }
            }
        }
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            tx.execute(CREATE_TABLE).await?;
            let done: Vec<i64> = sqlx::query_scalar(APPLIED).fetch_all(&mut *tx).await?;
            let mut applied = 0;
            for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
                tx.execute(m.postgres).await?;
                sqlx::query(RECORD)
                    .bind(m.version)
                    .bind(m.name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                applied += 1;
            }
            tx.commit().await?;
            applied
        }
    };
    if applied > 0 {
        tracing::info!(applied, backend = db.backend(), "schema migrated");
    }
    Ok(applied)
}
