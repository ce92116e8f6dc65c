//! `accounts`: users and their API tokens, from the User aggregate's
//! events, for authentication (a token's digest to its holder) and the
//! account endpoints. Every event maps to one idempotent statement (an
//! insert that keeps the first row, a revocation that keeps the first
//! time), so re-applying a page is harmless. A token is here as its
//! SHA-256 digest only, never as text.
//!
//! When a token was last used is not here: it is not an event, and a
//! rebuild should not forget it (`token_use`, written by the API).

use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::Row;

use super::detail::rfc3339;
use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, Projection, Target, UserChange};
use super::reads::{Page, ReadModels};
use super::ProjectionError;
use crate::domain::ids::Timestamp;
use crate::domain::user::{Role, UserEvent};
use crate::with_pool;

const USER_PUT: &str = include_str!("sql/accounts/user_put.sql");
const TOKEN_PUT: &str = include_str!("sql/accounts/token_put.sql");
const TOKEN_REVOKE: &str = include_str!("sql/accounts/token_revoke.sql");
const IDENTITY: &str = include_str!("sql/accounts/identity.sql");
const USERS_LIST: &str = include_str!("sql/accounts/users_list.sql");
const USER_GET: &str = include_str!("sql/accounts/user_get.sql");
const USER_BY_NAME: &str = include_str!("sql/accounts/user_by_name.sql");
const USERS_COUNT: &str = include_str!("sql/accounts/users_count.sql");
const TOKENS_OF: &str = include_str!("sql/accounts/tokens_of.sql");
const TOKEN_GET: &str = include_str!("sql/accounts/token_get.sql");
const RUN_OWNER: &str = include_str!("sql/run_summaries/owner.sql");

/// The accounts read model.
pub(super) const ACCOUNTS: Projection = Projection {
    name: "accounts",
    version: 1,
    tables: &["users", "api_tokens"],
    pg_part: None,
    rows: || Box::<Rows>::default(),
};

/// The users' events of a page.
#[derive(Default)]
struct Rows(Vec<(String, UserEvent)>);

impl PageRows for Rows {
    fn user(&mut self, change: &UserChange<'_>) {
        for (_, event) in change.events {
            self.0.push((change.user_id.to_string(), (*event).clone()));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn write<'c>(
        &'c self,
        conn: Conn<'c>,
        target: &'c Target,
        _log: &'c dyn LogReader,
    ) -> BoxFuture<'c, Result<(), ProjectionError>> {
        Box::pin(async move {
            let (user_put, token_put, token_revoke) = (
                target.sql(USER_PUT),
                target.sql(TOKEN_PUT),
                target.sql(TOKEN_REVOKE),
            );
            with_conn!(conn, c => {
                for (user_id, event) in &self.0 {
                    match event {
                        UserEvent::UserCreated { name, role, at, .. } => {
                            sqlx::query(&user_put)
                                .bind(user_id)
                                .bind(name)
                                .bind(role.as_str())
                                .bind(at.0)
                                .execute(&mut *c)
                                .await?;
                        }
                        UserEvent::TokenIssued {
                            token_id,
                            name,
                            digest,
                            read_only,
                            expires_at,
                            at,
                        } => {
                            sqlx::query(&token_put)
                                .bind(token_id.as_str())
                                .bind(user_id)
                                .bind(name)
                                .bind(digest)
                                .bind(i64::from(*read_only))
                                .bind(expires_at.map(|e| e.0))
                                .bind(at.0)
                                .execute(&mut *c)
                                .await?;
                        }
                        UserEvent::TokenRevoked { token_id, at } => {
                            sqlx::query(&token_revoke)
                                .bind(token_id.as_str())
                                .bind(at.0)
                                .execute(&mut *c)
                                .await?;
                        }
                    }
                }
            });
            Ok(())
        })
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
}

/// A token as the API shows it: never the token, never its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// Its holder.
    pub user_id: String,
    /// Its name.
    pub name: String,
    /// Whether it may only read.
    pub read_only: bool,
    /// When it was issued.
    pub created_at: String,
    /// When it expires, if ever.
    pub expires_at: Option<String>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<String>,
    /// When it was last used (to the minute), if ever.
    pub last_used_at: Option<String>,
}

/// Who a token belongs to and what it allows, as authentication needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The token's id.
    pub token_id: String,
    /// Its holder's id.
    pub user_id: String,
    /// Its holder's name.
    pub user_name: String,
    /// Its holder's role (`None`: a role this build does not know).
    pub role: Option<Role>,
    /// Whether it may only read.
    pub read_only: bool,
    /// When it expires, if ever.
    pub expires_at: Option<Timestamp>,
    /// Whether it was revoked.
    pub revoked: bool,
}

fn user_from_row<R: Row>(row: &R) -> Result<(UserView, i64), sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let created_at: i64 = row.try_get("created_at")?;
    Ok((
        UserView {
            id: row.try_get("user_id")?,
            name: row.try_get("name")?,
            role: row.try_get("role")?,
            created_at: rfc3339(Timestamp(created_at)),
        },
        created_at,
    ))
}

fn token_from_row<R: Row>(row: &R) -> Result<TokenView, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let time = |ms: Option<i64>| ms.map(|ms| rfc3339(Timestamp(ms)));
    Ok(TokenView {
        id: row.try_get("token_id")?,
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        read_only: row.try_get::<i64, _>("read_only")? != 0,
        created_at: rfc3339(Timestamp(row.try_get("created_at")?)),
        expires_at: time(row.try_get("expires_at")?),
        revoked_at: time(row.try_get("revoked_at")?),
        last_used_at: time(row.try_get("last_used_at")?),
    })
}

impl ReadModels {
    /// Who holds the token with SHA-256 `digest` (lowercase hex).
    pub async fn token_identity(
        &self,
        digest: &str,
    ) -> Result<Option<TokenIdentity>, ProjectionError> {
        let identity = with_pool!(self.db(), pool => {
            match sqlx::query(IDENTITY).bind(digest).fetch_optional(pool).await? {
                None => None,
                Some(row) => Some(TokenIdentity {
                    token_id: row.try_get("token_id")?,
                    user_id: row.try_get("user_id")?,
                    user_name: row.try_get("name")?,
                    role: Role::parse(&row.try_get::<String, _>("role")?),
                    read_only: row.try_get::<i64, _>("read_only")? != 0,
                    expires_at: row.try_get::<Option<i64>, _>("expires_at")?.map(Timestamp),
                    revoked: row.try_get::<Option<i64>, _>("revoked_at")?.is_some(),
                }),
            }
        });
        Ok(identity)
    }

    /// Users, oldest first.
    pub async fn list_users(
        &self,
        limit: u32,
        cursor: Option<(i64, String)>,
    ) -> Result<Page<UserView>, ProjectionError> {
        let (after_at, after_id) = cursor.map_or((None, None), |(a, i)| (Some(a), Some(i)));
        let rows = with_pool!(self.db(), pool => {
            sqlx::query(USERS_LIST)
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(limit) + 1)
                .fetch_all(pool)
                .await?
                .iter()
                .map(user_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(super::reads::paginate(rows, limit, |u| &u.id))
    }

    /// One user.
    pub async fn user(&self, user_id: &str) -> Result<Option<UserView>, ProjectionError> {
        let row = with_pool!(self.db(), pool => {
            match sqlx::query(USER_GET).bind(user_id).fetch_optional(pool).await? {
                Some(row) => Some(user_from_row(&row)?.0),
                None => None,
            }
        });
        Ok(row)
    }

    /// The user with this name (the oldest, should two have it).
    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserView>, ProjectionError> {
        let row = with_pool!(self.db(), pool => {
            match sqlx::query(USER_BY_NAME).bind(name).fetch_optional(pool).await? {
                Some(row) => Some(user_from_row(&row)?.0),
                None => None,
            }
        });
        Ok(row)
    }

    /// How many users exist.
    pub async fn user_count(&self) -> Result<i64, ProjectionError> {
        let count = with_pool!(self.db(), pool => {
            sqlx::query_scalar(USERS_COUNT).fetch_one(pool).await?
        });
        Ok(count)
    }

    /// A user's tokens, oldest first.
    pub async fn tokens_of(&self, user_id: &str) -> Result<Vec<TokenView>, ProjectionError> {
        let tokens = with_pool!(self.db(), pool => {
            sqlx::query(TOKENS_OF)
                .bind(user_id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(token_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(tokens)
    }

    /// One token.
    pub async fn token(&self, token_id: &str) -> Result<Option<TokenView>, ProjectionError> {
        let token = with_pool!(self.db(), pool => {
            match sqlx::query(TOKEN_GET).bind(token_id).fetch_optional(pool).await? {
                Some(row) => Some(token_from_row(&row)?),
                None => None,
            }
        });
        Ok(token)
    }

    /// A run's owner: `None` when the read models know no such run,
    /// `Some(None)` for a run nobody owns (recorded before accounts, or
    /// under `--no-auth`).
    pub async fn run_owner(&self, run_id: &str) -> Result<Option<Option<String>>, ProjectionError> {
        let owner = with_pool!(self.db(), pool => {
            sqlx::query_scalar::<_, Option<String>>(RUN_OWNER)
                .bind(run_id)
                .fetch_optional(pool)
                .await?
        });
        Ok(owner)
    }
}
