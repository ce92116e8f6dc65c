//! What access control writes that is not an event: when each API token
//! was last used (`token_use`, at most once a minute per token and node)
//! and the single-use WebSocket tickets of browsers (`ws_tickets`, by
//! digest). Neither is history worth replaying.

use crate::db::Db;
use crate::with_pool;

use super::StoreError;

const TOUCH: &str = include_str!("sql/access/touch.sql");
const TICKET_PUT: &str = include_str!("sql/access/ticket_put.sql");
const TICKET_TAKE: &str = include_str!("sql/access/ticket_take.sql");
const TICKETS_EXPIRE: &str = include_str!("sql/access/tickets_expire.sql");

/// Token use and WebSocket tickets.
#[derive(Clone, Debug)]
pub struct AccessStore {
    db: Db,
}

impl AccessStore {
    /// Both in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records that token `token_id` was used at `at_ms` (a later time
    /// never goes back).
    pub async fn touch(&self, token_id: &str, at_ms: i64) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(TOUCH).bind(token_id).bind(at_ms).execute(pool).await?;
        });
        Ok(())
    }

    /// Stores a ticket (its digest) that stands for the token with digest
    /// `token_digest` until `expires_ms`; drops expired ones.
    pub async fn put_ticket(
        &self,
        digest: &str,
        token_digest: &str,
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.db, pool => {
            sqlx::query(TICKETS_EXPIRE).bind(now_ms).execute(pool).await?;
            sqlx::query(TICKET_PUT)
                .bind(digest)
                .bind(token_digest)
                .bind(expires_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Takes the ticket with `digest` if it has not expired: the digest of
    /// the token it stands for. A ticket is taken once.
    pub async fn take_ticket(
        &self,
        digest: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let token = with_pool!(&self.db, pool => {
            sqlx::query_scalar(TICKET_TAKE)
                .bind(digest)
                .bind(now_ms)
                .fetch_optional(pool)
                .await?
        });
        Ok(token)
    }
}
