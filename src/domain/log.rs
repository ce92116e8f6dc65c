//! Places in the event log: the vocabulary shared by the store, which reads
//! the log in order, and the readers that follow it (projections, other
//! nodes). Pure data (docs/adr/0005).

use serde::{Deserialize, Serialize};

use super::run::RunEvent;
use super::template::TemplateEvent;
use super::user::UserEvent;

/// A place in the log. Events are read in `(tx, position)` order: on
/// PostgreSQL `tx` is the writing transaction's id and `position` the
/// event's identity value; on SQLite `tx` is 0 and `position` the rowid
/// (writers are serialised there, so rowid order is commit order).
/// Positions are not dense: a rolled-back insert leaves a hole.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    /// The writing transaction (0 on SQLite).
    pub tx: u64,
    /// The event's place among those of its transaction and after.
    pub position: i64,
}

impl Position {
    /// Before the first event.
    pub const START: Self = Self { tx: 0, position: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tx == 0 {
            write!(f, "{}", self.position)
        } else {
            write!(f, "{}:{}", self.tx, self.position)
        }
    }
}

/// An event of the log as its followers get it: where it is, whose it is,
/// and the event itself (as its aggregate folds it, decoded by the store).
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Where it is in the log.
    pub position: Position,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// Its sequence within the aggregate, from 1.
    pub sequence: u64,
    /// The event.
    pub event: LoggedEvent,
}

impl Logged {
    /// Its sequence and event, if it is a run's.
    pub fn as_run(&self) -> Option<(u64, &RunEvent)> {
        match &self.event {
            LoggedEvent::Run(e) => Some((self.sequence, e)),
            _ => None,
        }
    }

    /// Its sequence and event, if it is a template's.
    pub fn as_template(&self) -> Option<(u64, &TemplateEvent)> {
        match &self.event {
            LoggedEvent::Template(e) => Some((self.sequence, e)),
            _ => None,
        }
    }
}

/// The event of a [`Logged`], by aggregate type.
#[derive(Debug, Clone, PartialEq)]
pub enum LoggedEvent {
    /// An event of a run.
    Run(RunEvent),
    /// An event of a template.
    Template(TemplateEvent),
    /// An event of a user (accounts and tokens).
    User(UserEvent),
    /// An event of an aggregate type that followers do not know (a newer
    /// build wrote it): skipped, its position still passed.
    Other,
}

#[cfg(test)]
mod tests {
    use super::Position;

    #[test]
    fn positions_order_by_transaction_then_position() {
        let early_tx_late_insert = Position {
            tx: 7,
            position: 20,
        };
        let late_tx_early_insert = Position {
            tx: 8,
            position: 11,
        };
        assert!(early_tx_late_insert < late_tx_early_insert);
        assert!(Position::START < Position { tx: 0, position: 1 });
        assert_eq!(late_tx_early_insert.to_string(), "8:11");
        assert_eq!(Position { tx: 0, position: 5 }.to_string(), "5");
    }
}
