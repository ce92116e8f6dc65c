//! Black-box API tests: the real application on port 0, spoken to over
//! HTTP and WebSocket as a client would, on SQLite and on PostgreSQL.

#[path = "../common/mod.rs"]
mod common;

mod accounts;
mod admin;
mod agents;
mod concurrency;
mod contract;
mod control;
mod history;
mod hostile;
mod human;
mod interactive;
mod limits;
mod llm;
mod nodes;
mod prerequisites;
mod refine;
mod replay;
mod retention;
mod runs;
mod scenario;
mod start;
mod templates;
mod thread;
mod timers;
mod worker_processes;
mod workers;
mod ws;

pub use common::*;
