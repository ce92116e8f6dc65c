//! Read models built from events, never written by command handlers: run
//! summaries (list and filter), run detail, artifact versions and the
//! template catalogue.
//!
//! [`Projector`] is the only writer. The engine hands it every committed
//! batch of events: run events through the engine's `RunReadModels` trait
//! (queued in order, not awaited; readers wait instead, through the run's
//! actor or [`Projector::barrier`], so a client sees the effect of its
//! command in its next GET), template events through the cqrs-es `Query`
//! trait (awaited). Writes from many runs are grouped into
//! one transaction per writer task (one task on SQLite, four on PostgreSQL,
//! each owning the aggregates that hash to it). Every row records the last
//! sequence it reflects, which makes updates idempotent; a gap in a run's
//! sequence is filled from the log, and [`Projector::catch_up`] repairs read
//! models that a crash left behind the log. All of this is safe to replay:
//! it has no side effects beyond its own tables.
//!
//! Depends on `domain` and `db`; never on `store`, `engine` or `api`.

mod detail;
mod reads;
mod writer;

pub use detail::{
    parse_rfc3339, rfc3339, ArtifactView, AttemptView, FailureView, RefineView, RunDetail,
    ScoreView, StepView,
};
pub use reads::{
    decode_cursor, ArtifactVersionRow, MessageView, Page, ReadModels, RunSummary, TemplateView,
    DEFAULT_PAGE, MAX_PAGE,
};
pub use writer::Projector;

/// Read-model failures.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored document or event could not be read.
    #[error("stored data could not be deserialised: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// The writer task is gone (the server is shutting down).
    #[error("the projection writer has stopped")]
    WriterStopped,
    /// A write failed; the message says why.
    #[error("projection write failed: {0}")]
    WriteFailed(String),
}
