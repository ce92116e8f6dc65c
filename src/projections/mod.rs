//! Read models built from events, never written by command handlers: run
//! summaries (list and filter), run detail, artifact versions, the thread
//! and the template catalogue.
//!
//! [`Projector`] is the only writer: one task that follows the log in
//! position order through [`LogReader`] (which the store implements and
//! `app` hands it) and writes each page of events, with the read models'
//! new position, in one transaction (docs/adr/0005). The engine only says
//! where its commits went ([`Projector::committed`]), which wakes it;
//! readers wait for a position ([`Projector::applied`]), so a client sees
//! the effect of its command in its next GET. Every row records the last
//! sequence it reflects, which makes re-applying harmless. All of this is
//! safe to replay: it has no side effects beyond its own tables.
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
    decode_cursor, ArtifactVersionRow, MessageView, Page, ProjectionPosition, ReadModels,
    RunSummary, TemplateView, DEFAULT_PAGE, MAX_PAGE,
};
pub use writer::{LogReader, LogReaderFactory, Projector, READ_MODELS};

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
}
