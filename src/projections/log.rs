//! How the projections read the log: a trait the store implements and the
//! composition root (`app`) hands them, so that `projections` never imports
//! `store` and events arrive decoded (upcast) by the store.

use futures::future::BoxFuture;

use crate::db::Db;
use crate::domain::log::{Logged, Position};

/// The log, as the projections read it. Implemented by the store, wired in
/// `app`; events arrive decoded by the store.
pub trait LogReader: Send + Sync {
    /// Up to `limit` events after `after`, in log order; never skips an
    /// event that commits later (see docs/adr/0005).
    fn read_after(&self, after: Position, limit: i64)
        -> BoxFuture<'_, Result<Vec<Logged>, String>>;
    /// The events of one run or template with sequence above `after`
    /// (`Run` or `Template`), to fill a document that fell behind.
    fn aggregate_after<'a>(
        &'a self,
        aggregate_type: &'a str,
        aggregate_id: &'a str,
        after: u64,
    ) -> BoxFuture<'a, Result<Vec<Logged>, String>>;
    /// How many events the log holds after `after` (for progress).
    fn count_after(&self, after: Position) -> BoxFuture<'_, Result<u64, String>>;
}

/// Builds a log reader on a pool of the caller's (the follower's own).
pub type LogReaderFactory = std::sync::Arc<dyn Fn(Db) -> Box<dyn LogReader> + Send + Sync>;
