//! `template_catalogue`: the current version of every template, for the
//! catalogue and for starting runs. Templates change rarely, so this
//! projection reads each row it changes back and writes it with statements
//! of its own, on both backends (a page with template events is a
//! transaction of a few statements).

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::Row;

use super::detail::rfc3339;
use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, Projection, Target, TemplateChange};
use super::reads::TemplateView;
use super::ProjectionError;
use crate::domain::ids::Timestamp;
use crate::domain::log::Logged;
use crate::domain::template::TemplateEvent;

const GET: &str = include_str!("sql/template_catalogue/get.sql");
const PUT: &str = include_str!("sql/template_catalogue/put.sql");

/// The template catalogue.
pub(super) const TEMPLATE_CATALOGUE: Projection = Projection {
    name: "template_catalogue",
    version: 1,
    tables: &["template_catalogue"],
    pg_part: None,
    rows: || Box::<Rows>::default(),
};

/// The templates a page changes, with their events.
#[derive(Default)]
struct Rows(Vec<(String, Vec<(u64, TemplateEvent)>)>);

impl PageRows for Rows {
    fn template(&mut self, change: &TemplateChange<'_>) {
        let events = change
            .events
            .iter()
            .map(|(s, e)| (*s, (*e).clone()))
            .collect();
        self.0.push((change.template_id.to_string(), events));
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn write<'c>(
        &'c self,
        conn: Conn<'c>,
        target: &'c Target,
        log: &'c dyn LogReader,
    ) -> BoxFuture<'c, Result<(), ProjectionError>> {
        Box::pin(async move {
            let (get, put) = (target.sql(GET), target.sql(PUT));
            with_conn!(conn, c => {
                for (template_id, events) in &self.0 {
                    let row = sqlx::query(&get)
                        .bind(template_id)
                        .fetch_optional(&mut *c)
                        .await?;
                    let mut view = match row {
                        Some(row) => template_from_row(&row)?,
                        None => TemplateRow::default(),
                    };
                    let before = view.last_sequence;
                    // A row behind the log (deleted, or written by an older
                    // build that lost a write) is filled from the log.
                    let filled;
                    let events: Vec<(u64, &TemplateEvent)> =
                        if events.first().is_some_and(|(s, _)| *s > before + 1) {
                            filled = log
                                .aggregate_after("Template", template_id, before)
                                .await
                                .map_err(ProjectionError::Log)?;
                            filled.iter().filter_map(Logged::as_template).collect()
                        } else {
                            events.iter().map(|(s, e)| (*s, e)).collect()
                        };
                    for (sequence, event) in events {
                        view.apply(template_id, sequence, event);
                    }
                    if view.last_sequence == before {
                        continue;
                    }
                    sqlx::query(&put)
                        .bind(&view.id)
                        .bind(&view.name)
                        .bind(&view.description)
                        .bind(i64::from(view.version))
                        .bind(&view.definition)
                        .bind(i64::from(view.archived))
                        .bind(view.created_at)
                        .bind(view.updated_at)
                        .bind(view.last_sequence as i64)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
    }
}

/// A catalogue row as stored.
#[derive(Debug, Clone, Default)]
pub(super) struct TemplateRow {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub version: u32,
    pub definition: Value,
    pub archived: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_sequence: u64,
}

impl TemplateRow {
    /// Folds one template event into the row (idempotent by sequence).
    pub(super) fn apply(&mut self, id: &str, sequence: u64, event: &TemplateEvent) {
        if sequence <= self.last_sequence {
            return;
        }
        self.last_sequence = sequence;
        match event {
            TemplateEvent::TemplateCreated {
                name,
                description,
                version,
                definition,
                at,
                ..
            } => {
                self.id = id.to_string();
                self.name = name.clone();
                self.description = description.clone();
                self.version = *version;
                self.definition = serde_json::to_value(definition).unwrap_or(Value::Null);
                self.created_at = at.0;
                self.updated_at = at.0;
            }
            TemplateEvent::TemplateRevised {
                version,
                definition,
                description,
                at,
            } => {
                self.version = *version;
                self.definition = serde_json::to_value(definition).unwrap_or(Value::Null);
                self.description = description.clone();
                self.updated_at = at.0;
            }
            TemplateEvent::TemplateArchived { at } => {
                self.archived = true;
                self.updated_at = at.0;
            }
        }
    }

    pub(super) fn view(self) -> TemplateView {
        TemplateView {
            id: self.id,
            name: self.name,
            description: self.description,
            version: self.version,
            definition: self.definition,
            archived: self.archived,
            created_at: rfc3339(Timestamp(self.created_at)),
            updated_at: rfc3339(Timestamp(self.updated_at)),
        }
    }
}

pub(super) fn template_from_row<R: Row>(row: &R) -> Result<TemplateRow, sqlx::Error>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Value: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(TemplateRow {
        id: row.try_get("template_id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        version: u32::try_from(row.try_get::<i64, _>("version")?).unwrap_or(0),
        definition: row.try_get("definition")?,
        archived: row.try_get::<i64, _>("archived")? != 0,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_sequence: u64::try_from(row.try_get::<i64, _>("last_sequence")?).unwrap_or(0),
    })
}
