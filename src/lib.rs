//! runlog: a durable, event-sourced orchestration server for AI-agent
//! workflows.
//!
//! Module map (dependencies point down only):
//!
//! ```text
//!   cli ── app ──┬── api ──┬── engine ──┬── domain
//!                │         └── projections ─┘
//!                └── store ── domain
//! ```
//!
//! - [`domain`]: pure aggregates (Template, Run), their commands, events and
//!   rules. No IO.
//! - [`store`]: the cqrs-es event stores over SQLite and PostgreSQL, the
//!   blob store, migrations, reading the log.
//! - [`projections`]: read models built from events, and their writer.
//! - [`engine`]: actors: one `RunActor` per live run, the `RunRegistry`,
//!   agents, the live event hub.
//! - [`api`]: actix-web handlers, the error type and the WebSocket session.
//! - [`app`], [`cli`], [`config`], [`telemetry`]: wiring, the only place
//!   concrete backends meet; [`audit`] (`replay --verify`) and
//!   [`retention`] (`runlog purge`) are commands at that level.
//! - [`worker`]: `runlog worker`, a remote worker: a client of the HTTP
//!   API that depends on no other module but [`subprocess`] (running a
//!   program with JSON in and out, also used by the `command` agent);
//!   [`bench`]: `runlog bench`; [`fakellm`]: `runlog fake-llm`, a stand-in
//!   chat-completions server for trying the llm agents and for tests.

pub mod accounts;
pub mod api;
pub mod app;
pub mod audit;
pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod engine;
pub mod fakellm;
pub mod projections;
pub mod retention;
pub mod store;
pub mod subprocess;
pub mod telemetry;
pub mod worker;
