//! Applies the SQL under `schema/` in order, once each, recording what was
//! applied in `runlog_migrations`. Safe to run on every start and from
//! several nodes.

use sqlx::Executor;

use super::StoreError;
use crate::db::{BeginWrite, Db};
use crate::with_pool;

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
    Migration {
        version: 3,
        name: "thread",
        sqlite: include_str!("../../schema/sqlite/003_thread.sql"),
        postgres: include_str!("../../schema/postgres/003_thread.sql"),
    },
    Migration {
        version: 4,
        name: "tasks",
        sqlite: include_str!("../../schema/sqlite/004_tasks.sql"),
        postgres: include_str!("../../schema/postgres/004_tasks.sql"),
    },
    Migration {
        version: 5,
        name: "summary_steps",
        sqlite: include_str!("../../schema/sqlite/005_summary_steps.sql"),
        postgres: include_str!("../../schema/postgres/005_summary_steps.sql"),
    },
    Migration {
        version: 6,
        name: "detail_text",
        sqlite: include_str!("../../schema/sqlite/006_detail_text.sql"),
        postgres: include_str!("../../schema/postgres/006_detail_text.sql"),
    },
    Migration {
        version: 7,
        name: "log_position",
        sqlite: include_str!("../../schema/sqlite/007_log_position.sql"),
        postgres: include_str!("../../schema/postgres/007_log_position.sql"),
    },
    Migration {
        version: 8,
        name: "projection_positions",
        sqlite: include_str!("../../schema/sqlite/008_projection_positions.sql"),
        postgres: include_str!("../../schema/postgres/008_projection_positions.sql"),
    },
    Migration {
        version: 9,
        name: "projection_generations",
        sqlite: include_str!("../../schema/sqlite/009_projection_generations.sql"),
        postgres: include_str!("../../schema/postgres/009_projection_generations.sql"),
    },
    Migration {
        version: 10,
        name: "nodes",
        sqlite: include_str!("../../schema/sqlite/010_nodes.sql"),
        postgres: include_str!("../../schema/postgres/010_nodes.sql"),
    },
    Migration {
        version: 11,
        name: "node_incarnations",
        sqlite: include_str!("../../schema/sqlite/011_node_incarnations.sql"),
        postgres: include_str!("../../schema/postgres/011_node_incarnations.sql"),
    },
    Migration {
        version: 12,
        name: "blob_refs",
        sqlite: include_str!("../../schema/sqlite/012_blob_refs.sql"),
        postgres: include_str!("../../schema/postgres/012_blob_refs.sql"),
    },
    Migration {
        version: 13,
        name: "blob_releases",
        sqlite: include_str!("../../schema/sqlite/013_blob_releases.sql"),
        postgres: include_str!("../../schema/postgres/013_blob_releases.sql"),
    },
    Migration {
        version: 14,
        name: "accounts",
        sqlite: include_str!("../../schema/sqlite/014_accounts.sql"),
        postgres: include_str!("../../schema/postgres/014_accounts.sql"),
    },
    Migration {
        version: 15,
        name: "prerequisites",
        sqlite: include_str!("../../schema/sqlite/015_prerequisites.sql"),
        postgres: include_str!("../../schema/postgres/015_prerequisites.sql"),
    },
    Migration {
        version: 16,
        name: "task_claims",
        sqlite: include_str!("../../schema/sqlite/016_task_claims.sql"),
        postgres: include_str!("../../schema/postgres/016_task_claims.sql"),
    },
    Migration {
        version: 17,
        name: "message_asks",
        sqlite: include_str!("../../schema/sqlite/017_message_asks.sql"),
        postgres: include_str!("../../schema/postgres/017_message_asks.sql"),
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS runlog_migrations \
    (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";
const APPLIED: &str = "SELECT version FROM runlog_migrations ORDER BY version";
const RECORD: &str =
    "INSERT INTO runlog_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
const PG_LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
const PG_RESTORED_LOG_FOUND: &str = include_str!("sql/postgres/restored_log_found.sql");
const PG_RESTORED_LOG_REBASE: &str = include_str!("sql/postgres/restored_log_rebase.sql");
/// An arbitrary constant shared by every runlog node.
const PG_LOCK_KEY: i64 = 0x72756e6c6f67;

/// Applies every migration not applied yet; returns how many were applied.
/// On PostgreSQL it also restamps a log restored from another server (see
/// `sql/postgres/restored_log_rebase.sql`).
/// One write transaction: on SQLite `BEGIN IMMEDIATE` serialises
/// migrators, on PostgreSQL a transaction-scoped advisory lock does.
pub async fn migrate(db: &Db) -> Result<usize, StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let postgres = matches!(db, Db::Postgres(_));
    let applied = with_pool!(db, pool => {
        let mut tx = pool.begin_write().await?;
        if postgres {
            sqlx::query(PG_LOCK).bind(PG_LOCK_KEY).execute(&mut *tx).await?;
        }
        (&mut *tx).execute(CREATE_TABLE).await?;
        let done: Vec<i64> = sqlx::query_scalar(APPLIED).fetch_all(&mut *tx).await?;
        let mut applied = 0;
        for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
            (&mut *tx).execute(if postgres { m.postgres } else { m.sqlite }).await?;
            sqlx::query(RECORD)
                .bind(m.version)
                .bind(m.name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            applied += 1;
        }
        if postgres {
            let restored: bool = sqlx::query_scalar(PG_RESTORED_LOG_FOUND).fetch_one(&mut *tx).await?;
            if restored {
                (&mut *tx).execute(PG_RESTORED_LOG_REBASE).await?;
                tracing::warn!("the event log carries transaction ids of another server (a restore): \
                    restamped so that it reads in order here; the read models apply it again");
            }
        }
        tx.commit().await?;
        applied
    });
    if applied > 0 {
        tracing::info!(applied, backend = db.backend(), "schema migrated");
    }
    Ok(applied)
}
