//! `run_messages`: the conversation thread of each run, one row per
//! message with its current status (an instruction's delivery, a comment's
//! step).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde_json::Value;

use super::log::LogReader;
use super::projection::{with_conn, Conn, PageRows, PgQuery, Projection, RunChange, Target};
use super::ProjectionError;
use crate::domain::ids::{StepId, Timestamp};
use crate::domain::run::{Author, MessageStatus, RunEvent};

const PUT: &str = include_str!("sql/run_messages/put.sql");
const STATUS: &str = include_str!("sql/run_messages/status.sql");
const PUT_PAGE_PG: &str = include_str!("sql/run_messages/put_page.pg.sql");

/// The thread.
pub(super) const RUN_MESSAGES: Projection = Projection {
    name: "run_messages",
    version: 1,
    tables: &["run_messages"],
    pg_part: Some(PUT_PAGE_PG),
    rows: || Box::<Rows>::default(),
};

/// One message to insert.
struct MessageRow {
    run_id: String,
    message: i64,
    author: &'static str,
    action: &'static str,
    content: String,
    metadata: Option<Value>,
    idempotency_key: Option<String>,
    /// An agent's message with buttons: `{"buttons", "input"}`.
    ask: Option<Value>,
    /// When it was posted.
    created_at: i64,
    /// Its status, step and reason as of the page's last change to it
    /// (`at`: when its status last changed).
    state: StatusRow,
}

/// A message's status, step and reason, as of a change.
struct StatusRow {
    status: &'static str,
    step: Option<String>,
    reason: Option<String>,
    at: i64,
    sequence: i64,
}

impl StatusRow {
    /// Applies a later status change: the latest status and reason win; a
    /// step stays unless the change names another (as `COALESCE` in the
    /// statements).
    fn change(
        &mut self,
        status: MessageStatus,
        step: Option<&StepId>,
        reason: Option<&String>,
        at: Timestamp,
        sequence: u64,
    ) {
        self.status = status.as_str();
        if let Some(step) = step {
            self.step = Some(step.to_string());
        }
        self.reason = reason.cloned();
        self.at = at.0;
        self.sequence = sequence as i64;
    }
}

#[derive(Default)]
struct Rows {
    messages: Vec<MessageRow>,
    /// The latest status change of each message posted before the page, by
    /// (run, message).
    statuses: BTreeMap<(String, i64), StatusRow>,
}

impl PageRows for Rows {
    fn run(&mut self, change: &RunChange<'_>) -> Result<(), ProjectionError> {
        let run_id = change.run_id;
        for (sequence, event) in change.events {
            let sequence = *sequence;
            match event {
                RunEvent::MessagePosted {
                    message,
                    author,
                    action,
                    content,
                    metadata,
                    step,
                    idempotency_key,
                    status,
                    reason,
                    buttons,
                    input,
                    at,
                } => self.messages.push(MessageRow {
                    run_id: run_id.to_string(),
                    message: i64::from(*message),
                    author: match author {
                        Author::User => "user",
                        Author::Agent => "agent",
                        Author::System => "system",
                    },
                    action: action.as_str(),
                    content: content.clone(),
                    metadata: (!metadata.is_null()).then(|| metadata.clone()),
                    idempotency_key: idempotency_key.clone(),
                    ask: (!buttons.is_empty() || input.is_some())
                        .then(|| serde_json::json!({"buttons": buttons, "input": input})),
                    created_at: at.0,
                    state: StatusRow {
                        status: status.as_str(),
                        step: step.as_ref().map(ToString::to_string),
                        reason: reason.clone(),
                        at: at.0,
                        sequence: sequence as i64,
                    },
                }),
                RunEvent::MessageStatusChanged {
                    message,
                    status,
                    step,
                    reason,
                    at,
                } => {
                    // A message posted in this page takes its new status in
                    // its insert (the parts of the PostgreSQL statement do
                    // not see each other's rows); an earlier one gets an
                    // update.
                    let number = i64::from(*message);
                    let posted = self
                        .messages
                        .iter_mut()
                        .rev()
                        .find(|m| m.run_id == run_id && m.message == number);
                    let row =
                        match posted {
                            Some(posted) => &mut posted.state,
                            None => self.statuses.entry((run_id.to_string(), number)).or_insert(
                                StatusRow {
                                    status: status.as_str(),
                                    step: None,
                                    reason: None,
                                    at: at.0,
                                    sequence: sequence as i64,
                                },
                            ),
                        };
                    row.change(*status, step.as_ref(), reason.as_ref(), *at, sequence);
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.statuses.is_empty()
    }

    fn bind_pg<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        let (m, s) = (&self.messages, &self.statuses);
        query
            // Messages ($1 to $13).
            .bind(m.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.message).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.author).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.action).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.content.as_str()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.metadata.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.state.step.clone()).collect::<Vec<_>>())
            .bind(
                m.iter()
                    .map(|r| r.idempotency_key.clone())
                    .collect::<Vec<_>>(),
            )
            .bind(m.iter().map(|r| r.state.status).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.state.reason.clone()).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.created_at).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.state.at).collect::<Vec<_>>())
            .bind(m.iter().map(|r| r.state.sequence).collect::<Vec<_>>())
            // Status changes of earlier messages ($14 to $20).
            .bind(s.keys().map(|(r, _)| r.as_str()).collect::<Vec<_>>())
            .bind(s.keys().map(|(_, n)| *n).collect::<Vec<_>>())
            .bind(s.values().map(|r| r.status).collect::<Vec<_>>())
            .bind(s.values().map(|r| r.reason.clone()).collect::<Vec<_>>())
            .bind(s.values().map(|r| r.at).collect::<Vec<_>>())
            .bind(s.values().map(|r| r.sequence).collect::<Vec<_>>())
            .bind(s.values().map(|r| r.step.clone()).collect::<Vec<_>>())
            // What agents' messages offer ($21).
            .bind(m.iter().map(|r| r.ask.clone()).collect::<Vec<_>>())
    }

    fn write<'c>(
        &'c self,
        conn: Conn<'c>,
        target: &'c Target,
        _log: &'c dyn LogReader,
    ) -> BoxFuture<'c, Result<(), ProjectionError>> {
        Box::pin(async move {
            let (put, status) = (target.sql(PUT), target.sql(STATUS));
            with_conn!(conn, c => {
                for m in &self.messages {
                    sqlx::query(&put)
                        .bind(&m.run_id)
                        .bind(m.message)
                        .bind(m.author)
                        .bind(m.action)
                        .bind(&m.content)
                        .bind(&m.metadata)
                        .bind(&m.state.step)
                        .bind(&m.idempotency_key)
                        .bind(m.state.status)
                        .bind(&m.state.reason)
                        .bind(m.created_at)
                        .bind(m.state.at)
                        .bind(m.state.sequence)
                        .bind(&m.ask)
                        .execute(&mut *c)
                        .await?;
                }
                for ((run_id, message), s) in &self.statuses {
                    sqlx::query(&status)
                        .bind(run_id)
                        .bind(message)
                        .bind(s.status)
                        .bind(&s.reason)
                        .bind(s.at)
                        .bind(s.sequence)
                        .bind(&s.step)
                        .execute(&mut *c)
                        .await?;
                }
            });
            Ok(())
        })
    }
}
