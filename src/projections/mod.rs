//! Read models built from events, never written by command handlers: run
//! summaries (list and filter), run detail, artifact versions, the thread,
//! the template catalogue and the accounts.
//!
//! Each read model is a [`projection::Projection`] in a file of its own
//! (`run_summaries`, `run_details`, `artifact_versions`, `run_messages`,
//! `template_catalogue`) with its own SQL under `sql/<name>/`: a name, a
//! code version, the tables it owns, and how a page of events becomes its
//! rows. [`Projector`] is their only writer: one task that follows the log
//! in position order through [`LogReader`] (which the store implements and
//! `app` hands it) and writes each page of events to every projection, with
//! their new positions, in one transaction (`apply`; docs/adr/0005). The engine only says
//! where its commits went ([`Projector::committed`]), which wakes it;
//! readers wait for a position ([`Projector::applied`]), so a client sees
//! the effect of its command in its next GET. Every row records the last
//! sequence it reflects, which makes re-applying harmless. All of this is
//! safe to replay: it has no side effects beyond its own tables.
//!
//! Depends on `domain` and `db`; never on `store`, `engine` or `api`.

mod accounts;
mod apply;
mod artifact_versions;
mod detail;
mod follower;
mod log;
mod projection;
mod reads;
mod rebuild;
mod run_details;
mod run_messages;
mod run_summaries;
mod template_catalogue;

pub use accounts::{TokenIdentity, TokenView, UserView};
pub use detail::{
    parse_rfc3339, rfc3339, ArtifactView, AttemptView, FailureView, PurgeView, RefineView,
    RunDetail, ScoreView, StepView,
};
pub use follower::Projector;
pub use log::{LogReader, LogReaderFactory};
pub use reads::{
    decode_cursor, ArtifactVersionRow, MessageView, Page, ProjectionPosition, ReadModels,
    RunSummary, TemplateView, DEFAULT_PAGE, MAX_PAGE,
};
pub use rebuild::{outdated, RebuildProgress, RebuildState, Rebuilds};

use projection::Projection;

/// Every read model, in the order the follower writes them.
const ALL: [&Projection; 6] = [
    &run_summaries::RUN_SUMMARIES,
    &run_details::RUN_DETAILS,
    &artifact_versions::ARTIFACT_VERSIONS,
    &run_messages::RUN_MESSAGES,
    &template_catalogue::TEMPLATE_CATALOGUE,
    &accounts::ACCOUNTS,
];

/// The read models' names (as `projections list` shows them).
pub const READ_MODELS: [&str; 6] = [
    "run_summaries",
    "run_details",
    "artifact_versions",
    "run_messages",
    "template_catalogue",
    "accounts",
];

/// Read-model failures.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored document or event could not be read.
    #[error("stored data could not be deserialised: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The follower is gone (the server is shutting down).
    #[error("the projection follower has stopped")]
    WriterStopped,
    /// The log could not be read.
    #[error("cannot read the log: {0}")]
    Log(String),
    /// No read model has that name.
    #[error("no projection is named '{0}'")]
    UnknownProjection(String),
    /// A rebuild swapped a projection in while a page was being applied:
    /// nothing was written; the page is applied again from the new tables.
    #[error("a rebuilt projection was swapped in meanwhile")]
    Swapped,
    /// A rebuild of that projection is already running.
    #[error("a rebuild of '{0}' is already running")]
    RebuildRunning(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_read_model_is_a_projection_with_tables_of_its_own() {
        let names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        assert_eq!(names, READ_MODELS);
        let mut tables: Vec<&str> = ALL.iter().flat_map(|p| p.tables.iter().copied()).collect();
        let count = tables.len();
        tables.sort_unstable();
        tables.dedup();
        assert_eq!(tables.len(), count, "two projections claim one table");
    }
}
