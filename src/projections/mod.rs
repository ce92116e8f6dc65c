//! Read models built from events, never written by command handlers: run
//! summaries (list and filter), run detail, artifact versions and the
//! template catalogue.
//!
//! [`Projector`] is the one writer. It implements `cqrs_es::Query` for both
//! aggregates; the engine hands it every committed batch and waits, so a
//! client sees the effect of its command in its next GET. Writes from many
//! runs are grouped into one transaction. Every row records the last
//! sequence it reflects, which makes updates idempotent and lets
//! [`Projector::catch_up`] repair read models that a crash left behind the
//! log. All of this is safe to replay: it has no side effects beyond its
//! own tables.
//!
//! Depends on `domain` and `db`; never on `store`, `engine` or `api`.

mod detail;
mod reads;
mod writer;

pub use detail::{rfc3339, ArtifactView, FailureView, RunDetail, StepView};
pub use reads::{
    decode_cursor, ArtifactVersionRow, Page, ReadModels, RunSummary, TemplateView, DEFAULT_PAGE,
    MAX_PAGE,
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
