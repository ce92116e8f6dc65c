//! The pure domain: templates, runs, users, their commands, events and
//! rules.
//!
//! May depend on std, serde, serde_json, thiserror and the cqrs-es traits
//! only: no IO, no actix, no sqlx, no tokio, no clock, no randomness. Time and
//! lease seeds arrive inside commands.

pub mod definition;
pub mod ids;
pub mod log;
pub mod prerequisites;
pub mod run;
pub mod template;
pub mod user;

/// `true`, as a serde default: fields added to stored shapes whose absence
/// meant "yes" (`#[serde(default = "crate::domain::yes")]`).
pub(crate) fn yes() -> bool {
    true
}
