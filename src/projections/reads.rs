//! Queries on the read models, for the API and the engine's start-up.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::detail::{rfc3339, RunDetail};
use super::template_catalogue::{template_from_row, TemplateRow};
use super::ProjectionError;
use crate::db::Db;
use crate::domain::ids::Timestamp;
use crate::domain::log::Position;
use crate::with_pool;

const DETAIL_GET: &str = include_str!("sql/run_details/get.sql");
const SUMMARIES_LIST: &str = include_str!("sql/run_summaries/list.sql");
const ARTIFACT_VERSIONS: &str = include_str!("sql/artifact_versions/list.sql");
const ARTIFACT_VERSION: &str = include_str!("sql/artifact_versions/get.sql");
const LATEST_OF_OWNER: &str = include_str!("sql/run_summaries/latest_of_owner.sql");
const LATEST_OF_NOBODY: &str = include_str!("sql/run_summaries/latest_of_nobody.sql");
const ACTIVE_RUNS: &str = include_str!("sql/run_summaries/active.sql");
const PURGEABLE_PG: &str = include_str!("sql/run_summaries/purgeable.pg.sql");
const PURGEABLE_SQLITE: &str = include_str!("sql/run_summaries/purgeable.sqlite.sql");
const TEMPLATE_GET: &str = include_str!("sql/template_catalogue/get.sql");
const TEMPLATES_LIST: &str = include_str!("sql/template_catalogue/list.sql");
const TEMPLATES_LIVE: &str = include_str!("sql/template_catalogue/live.sql");
const TEMPLATE_LIVE_BY_NAME: &str = include_str!("sql/template_catalogue/live_by_name.sql");
const MESSAGES_LIST: &str = include_str!("sql/run_messages/list.sql");
const MESSAGE_GET: &str = include_str!("sql/run_messages/get.sql");
const MESSAGE_BY_KEY: &str = include_str!("sql/run_messages/by_key.sql");
const POSITIONS_LIST: &str = include_str!("sql/follower/positions_list.sql");

/// How far one read model has applied the log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProjectionPosition {
    /// The read model (its table).
    pub name: String,
    /// The version of the code that built it (none before its first write).
    pub version: Option<u32>,
    /// The last position it applied ([`Position::START`] before its first
    /// write).
    pub position: Position,
    /// When it last recorded its position.
    pub updated_at: Option<Timestamp>,
}

impl ProjectionPosition {
    /// As `GET /api/admin/projections` and `runlog projections list --json`
    /// show it, `lag_events` behind the log.
    pub fn view(&self, lag_events: i64) -> Value {
        serde_json::json!({
            "name": self.name,
            "version": self.version,
            "position": self.position,
            "lag_events": lag_events,
            "updated_at": self.updated_at.map(rfc3339),
        })
    }
}

/// Page size when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest page size.
pub const MAX_PAGE: u32 = 500;

/// One page of a list: `{items, next_cursor}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// One row of the run list.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    /// The run id.
    pub id: String,
    /// Its template.
    pub template_id: String,
    /// That template's version.
    pub template_version: u32,
    /// Its status.
    pub status: String,
    /// When it started.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
    /// The agents of its steps and refine evaluators.
    pub agents: Vec<String>,
    /// The earliest lease expiry of its running steps.
    pub lease_expires_at: Option<String>,
    /// A running step's worker is late with its heartbeat (computed when
    /// read).
    pub stalled: bool,
    /// Its refine loops, by step: current attempt, attempts, scores, final
    /// score.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refine: Option<Value>,
    /// The id of the user it belongs to (`null`: nobody's).
    pub owner: Option<String>,
}

impl RunSummary {
    /// Marks the run stalled when a running step's lease expired before
    /// `now`.
    pub fn mark_stalled(&mut self, now: Timestamp) {
        self.stalled = self
            .lease_expires_at
            .as_deref()
            .and_then(super::parse_rfc3339)
            .is_some_and(|expires| expires < now);
    }
}

/// One stored artifact version.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactVersionRow {
    /// The version.
    pub version: u32,
    /// The step that wrote it.
    pub step: String,
    /// The attempt that wrote it.
    pub attempt: u32,
    /// When.
    pub created_at: String,
    /// The stored content (`{"inline": …}` or `{"blob": {…}}`).
    pub content: Value,
}

/// A template in the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TemplateView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// Its current version.
    pub version: u32,
    /// The current definition.
    pub definition: Value,
    /// Whether it is archived.
    pub archived: bool,
    /// When it was created.
    pub created_at: String,
    /// When it last changed.
    pub updated_at: String,
}

/// A keyset cursor: `<created_at ms>_<id>`.
fn encode_cursor(created_at: i64, id: &str) -> String {
    format!("{created_at}_{id}")
}

/// Parses a cursor made by `encode_cursor`; `None` when malformed.
pub fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let (at, id) = cursor.split_once('_')?;
    // An id the server made has no control characters; PostgreSQL refuses
    // a NUL in a text parameter outright.
    if id.is_empty() || id.chars().any(char::is_control) {
        return None;
    }
    Some((at.parse().ok()?, id.to_string()))
}

/// One message of a run's thread, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    /// Its number in the thread, from 1.
    pub id: u32,
    /// user | agent | system.
    pub author: String,
    /// comment | instruction | pause | resume | cancel | redirect.
    pub action: String,
    /// Its text.
    pub content: String,
    /// Client JSON attached to it (null when none).
    pub metadata: Value,
    /// The step it is about, if any.
    pub step: Option<String>,
    /// pending | acknowledged | processed | ignored.
    pub status: String,
    /// Why it was ignored.
    pub reason: Option<String>,
    /// The client's idempotency key, if any.
    pub idempotency_key: Option<String>,
    /// An agent's message: the buttons a user may click
    /// (`POST /api/runs/{id}/messages/{id}/click`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub buttons: Vec<Value>,
    /// An agent's message: what else the user may send in answer
    /// (`{"file", "prompt"}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// When it was posted.
    pub created_at: String,
    /// When its status last changed.
    pub updated_at: String,
}

fn message_from_row<R: Row>(r: &R) -> Result<MessageView, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Value>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let ask: Option<Value> = r.try_get("ask")?;
    Ok(MessageView {
        id: u32::try_from(r.try_get::<i64, _>("message")?).unwrap_or(0),
        author: r.try_get("author")?,
        action: r.try_get("action")?,
        content: r.try_get("content")?,
        metadata: r
            .try_get::<Option<Value>, _>("metadata")?
            .unwrap_or(Value::Null),
        step: r.try_get("step")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        idempotency_key: r.try_get("idempotency_key")?,
        buttons: ask
            .as_ref()
            .and_then(|a| a.get("buttons"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        input: ask
            .as_ref()
            .and_then(|a| a.get("input"))
            .filter(|i| !i.is_null())
            .cloned(),
        created_at: rfc3339(Timestamp(r.try_get("created_at")?)),
        updated_at: rfc3339(Timestamp(r.try_get("updated_at")?)),
    })
}

/// Read access to the read models.
#[derive(Clone, Debug)]
pub struct ReadModels {
    db: Db,
}

impl ReadModels {
    /// Read models in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Their database.
    pub(super) fn db(&self) -> &Db {
        &self.db
    }

    /// The detail document of a run.
    pub async fn run_detail(&self, run_id: &str) -> Result<Option<RunDetail>, ProjectionError> {
        let doc: Option<String> = with_pool!(&self.db, pool => {
            sqlx::query_scalar(DETAIL_GET).bind(run_id).fetch_optional(pool).await?
        });
        Ok(doc.as_deref().map(serde_json::from_str).transpose()?)
    }

    /// Runs, newest first, filtered by status, template, agent and owner. `cursor` must
    /// come from a previous page (callers validate it with [`decode_cursor`]).
    pub async fn list_runs(
        &self,
        status: Option<&str>,
        template_id: Option<&str>,
        agent: Option<&str>,
        owner: Option<&str>,
        limit: u32,
        cursor: Option<(i64, String)>,
    ) -> Result<Page<RunSummary>, ProjectionError> {
        let (after_at, after_id) = cursor.map_or((None, None), |(a, i)| (Some(a), Some(i)));
        let agent = agent.map(|a| format!(",{a},"));
        let rows: Vec<(RunSummary, i64)> = with_pool!(&self.db, pool => {
            sqlx::query(SUMMARIES_LIST)
                .bind(status)
                .bind(template_id)
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(limit) + 1)
                .bind(&agent)
                .bind(owner)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> {
                    let created: i64 = r.try_get("created_at")?;
                    let agents: Option<String> = r.try_get("agents")?;
                    let lease: Option<i64> = r.try_get("lease_expires_at")?;
                    Ok((RunSummary {
                        id: r.try_get("run_id")?,
                        template_id: r.try_get("template_id")?,
                        template_version: u32::try_from(r.try_get::<i64, _>("template_version")?).unwrap_or(0),
                        status: r.try_get("status")?,
                        created_at: rfc3339(Timestamp(created)),
                        updated_at: rfc3339(Timestamp(r.try_get("updated_at")?)),
                        agents: agents
                            .unwrap_or_default()
                            .split(',')
                            .filter(|a| !a.is_empty())
                            .map(str::to_string)
                            .collect(),
                        lease_expires_at: lease.map(|t| rfc3339(Timestamp(t))),
                        stalled: false,
                        refine: r.try_get("refine")?,
                        owner: r.try_get("owner")?,
                    }, created))
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(paginate(rows, limit, |s| &s.id))
    }

    /// Every stored version of one artifact, oldest first.
    pub async fn artifact_versions(
        &self,
        run_id: &str,
        name: &str,
    ) -> Result<Vec<ArtifactVersionRow>, ProjectionError> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(ARTIFACT_VERSIONS)
                .bind(run_id)
                .bind(name)
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|r| -> Result<_, sqlx::Error> {
                    Ok(ArtifactVersionRow {
                        version: u32::try_from(r.try_get::<i64, _>("version")?).unwrap_or(0),
                        step: r.try_get("step")?,
                        attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(0),
                        created_at: rfc3339(Timestamp(r.try_get("created_at")?)),
                        content: r.try_get("content")?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The stored content of one version of a run's artifact.
    pub async fn artifact_version(
        &self,
        run_id: &str,
        name: &str,
        version: u32,
    ) -> Result<Option<Value>, ProjectionError> {
        let content: Option<Value> = with_pool!(&self.db, pool => {
            sqlx::query_scalar(ARTIFACT_VERSION)
                .bind(run_id)
                .bind(name)
                .bind(i64::from(version))
                .fetch_optional(pool)
                .await?
        });
        Ok(content)
    }

    /// The most recent run of template `template_id` that belongs to
    /// `owner` (`None`: to nobody), by index.
    pub async fn latest_run_of(
        &self,
        owner: Option<&str>,
        template_id: &str,
    ) -> Result<Option<String>, ProjectionError> {
        let run: Option<String> = with_pool!(&self.db, pool => {
            match owner {
                Some(owner) => sqlx::query_scalar(LATEST_OF_OWNER)
                    .bind(owner)
                    .bind(template_id)
                    .fetch_optional(pool)
                    .await?,
                None => sqlx::query_scalar(LATEST_OF_NOBODY)
                    .bind(template_id)
                    .fetch_optional(pool)
                    .await?,
            }
        });
        Ok(run)
    }

    /// A page of a run's thread: the messages after number `after`, in
    /// order.
    pub async fn messages(
        &self,
        run_id: &str,
        after: u32,
        limit: u32,
    ) -> Result<Page<MessageView>, ProjectionError> {
        let mut items: Vec<MessageView> = with_pool!(&self.db, pool => {
            sqlx::query(MESSAGES_LIST)
                .bind(run_id)
                .bind(i64::from(after))
                .bind(i64::from(limit) + 1)
                .fetch_all(pool)
                .await?
                .iter()
                .map(message_from_row)
                .collect::<Result<Vec<_>, _>>()?
        });
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next_cursor = more
            .then(|| items.last().map(|m| m.id.to_string()))
            .flatten();
        Ok(Page { items, next_cursor })
    }

    /// One message of a run's thread, by number.
    pub async fn message(
        &self,
        run_id: &str,
        message: u32,
    ) -> Result<Option<MessageView>, ProjectionError> {
        let row = with_pool!(&self.db, pool => {
            match sqlx::query(MESSAGE_GET).bind(run_id).bind(i64::from(message)).fetch_optional(pool).await? {
                Some(row) => Some(message_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// The message a client posted with this idempotency key.
    pub async fn message_by_key(
        &self,
        run_id: &str,
        key: &str,
    ) -> Result<Option<MessageView>, ProjectionError> {
        let row = with_pool!(&self.db, pool => {
            match sqlx::query(MESSAGE_BY_KEY).bind(run_id).bind(key).fetch_optional(pool).await? {
                Some(row) => Some(message_from_row(&row)?),
                None => None,
            }
        });
        Ok(row)
    }

    /// Every read model's position, in name order, including those that
    /// have recorded none yet.
    pub async fn positions(&self) -> Result<Vec<ProjectionPosition>, ProjectionError> {
        let rows: Vec<(String, i64, i64, i64, i64)> = with_pool!(&self.db, pool => {
            sqlx::query_as(POSITIONS_LIST).fetch_all(pool).await?
        });
        let mut names = super::READ_MODELS.to_vec();
        names.sort_unstable();
        Ok(names
            .into_iter()
            .map(|name| match rows.iter().find(|r| r.0 == name) {
                Some((_, version, tx, position, at)) => ProjectionPosition {
                    name: name.to_string(),
                    version: u32::try_from(*version).ok(),
                    position: Position {
                        tx: u64::try_from(*tx).unwrap_or_default(),
                        position: *position,
                    },
                    updated_at: Some(Timestamp(*at)),
                },
                None => ProjectionPosition {
                    name: name.to_string(),
                    version: None,
                    position: Position::START,
                    updated_at: None,
                },
            })
            .collect())
    }

    /// Ids of runs that are queued or running, oldest first.
    pub async fn active_runs(&self) -> Result<Vec<String>, ProjectionError> {
        let ids = with_pool!(&self.db, pool => {
            sqlx::query_scalar(ACTIVE_RUNS).fetch_all(pool).await?
        });
        Ok(ids)
    }

    /// Retention's candidates: finished runs created before `before` that
    /// are not purged, by id after `after`, at most `limit` (the run's own
    /// check decides whether it finished before `before`).
    pub async fn purgeable_runs(
        &self,
        before: Timestamp,
        after: &str,
        limit: i64,
    ) -> Result<Vec<String>, ProjectionError> {
        let sql = match &self.db {
            Db::Postgres(_) => PURGEABLE_PG,
            Db::Sqlite(_) => PURGEABLE_SQLITE,
        };
        let ids = with_pool!(&self.db, pool => {
            sqlx::query_scalar(sql)
                .bind(before.0)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(ids)
    }

    /// One template from the catalogue.
    pub async fn template(
        &self,
        template_id: &str,
    ) -> Result<Option<TemplateView>, ProjectionError> {
        let row = with_pool!(&self.db, pool => {
            match sqlx::query(TEMPLATE_GET).bind(template_id).fetch_optional(pool).await? {
                Some(row) => Some(template_from_row(&row)?),
                None => None,
            }
        });
        Ok(row.map(TemplateRow::view))
    }

    /// The newest live (unarchived) template named `name`.
    pub async fn live_template_by_name(
        &self,
        name: &str,
    ) -> Result<Option<TemplateView>, ProjectionError> {
        let row = with_pool!(&self.db, pool => {
            match sqlx::query(TEMPLATE_LIVE_BY_NAME).bind(name).fetch_optional(pool).await? {
                Some(row) => Some(template_from_row(&row)?),
                None => None,
            }
        });
        Ok(row.map(TemplateRow::view))
    }

    /// Every live template, by name (the newest first where an older
    /// database holds two of one name).
    pub async fn live_templates(&self) -> Result<Vec<TemplateView>, ProjectionError> {
        let rows = with_pool!(&self.db, pool => {
            sqlx::query(TEMPLATES_LIVE)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| template_from_row(r).map(TemplateRow::view))
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Templates, newest first.
    pub async fn list_templates(
        &self,
        limit: u32,
        cursor: Option<(i64, String)>,
    ) -> Result<Page<TemplateView>, ProjectionError> {
        let (after_at, after_id) = cursor.map_or((None, None), |(a, i)| (Some(a), Some(i)));
        let rows: Vec<(TemplateView, i64)> = with_pool!(&self.db, pool => {
            sqlx::query(TEMPLATES_LIST)
                .bind(after_at)
                .bind(after_id)
                .bind(i64::from(limit) + 1)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| template_from_row(r).map(|t| { let at = t.created_at; (t.view(), at) }))
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(paginate(rows, limit, |t| &t.id))
    }
}

/// Cuts `limit + 1` rows into a page and the cursor of the next one.
pub(super) fn paginate<T>(
    mut rows: Vec<(T, i64)>,
    limit: u32,
    id: impl Fn(&T) -> &String,
) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|(item, at)| encode_cursor(*at, id(item)))
    } else {
        None
    };
    Page {
        items: rows.into_iter().map(|(item, _)| item).collect(),
        next_cursor,
    }
}
