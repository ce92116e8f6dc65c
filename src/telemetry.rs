//! Tracing set-up: human-readable logs on stderr, filtered by `RUNLOG_LOG`
//! (or `RUST_LOG`), default `info`. Stdout stays free for command output.
//! Colours only on a terminal, and not with `NO_COLOR` set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call does nothing.
pub fn init() {
    let filter = std::env::var("RUNLOG_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info,sqlx=warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(colours())
        .try_init();
}

/// Whether log lines get colours: stderr is a terminal and `NO_COLOR` is
/// unset or empty (<https://no-color.org>).
fn colours() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}
