//! Bounds on what clients send (issue #9, section 4), beside the ones the
//! domain keeps (steps per template, attempts, choices) and the request
//! body limit: how big a run's input may be, how fast a run's thread may
//! be written to, and how much one WebSocket client may hold open (its
//! connections, its subscriptions, and what waits to be sent to it).
//!
//! Each is a setting (`[limits]` in the configuration file); the defaults
//! are in docs/operations.md#limits. Rates and connection counts are kept
//! per node, in memory: on many nodes a run's messages are counted on its
//! host (commands are forwarded there), connections on the node they
//! reached.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;

use super::ApiError;

/// Largest run input by default (bytes of JSON).
pub const DEFAULT_MAX_RUN_INPUT_BYTES: usize = 256 * 1024;
/// Messages a run's thread takes per minute by default.
pub const DEFAULT_MESSAGES_PER_RUN_PER_MINUTE: usize = 120;
/// Runs one WebSocket connection may follow at once by default.
pub const DEFAULT_WS_SUBSCRIPTIONS_PER_CONNECTION: usize = 1_000;
/// WebSocket connections one token may hold open by default.
pub const DEFAULT_WS_CONNECTIONS_PER_TOKEN: usize = 64;
/// Messages waiting to be sent on one WebSocket connection by default
/// before it is closed as too slow (4008).
pub const DEFAULT_WS_OUTBOUND_QUEUE: usize = 256;
/// The longest a start may wait for its run by default (`?wait=`, s).
pub const DEFAULT_MAX_START_WAIT_SECONDS: u64 = 60;
/// The longest a worker's claim may wait for a task by default (s).
pub const DEFAULT_MAX_CLAIM_WAIT_SECONDS: u64 = 30;
/// The largest request body by default (bytes).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Tasks one worker may hold claimed at once by default.
pub const DEFAULT_MAX_CLAIMS_PER_WORKER: usize = 256;

/// The window of the message rate.
const MINUTE: Duration = Duration::from_secs(60);

/// The bounds, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest run input (bytes of its JSON).
    pub max_run_input_bytes: usize,
    /// Messages one run's thread takes per minute (posted by clients).
    pub messages_per_run_per_minute: usize,
    /// Runs one WebSocket connection may follow at once.
    pub ws_subscriptions_per_connection: usize,
    /// WebSocket connections one token may hold open at once.
    pub ws_connections_per_token: usize,
    /// Messages (events, progress chunks) that may wait to be sent on one
    /// WebSocket connection; past it the connection is closed with 4008.
    pub ws_outbound_queue: usize,
    /// The longest `POST /api/runs?wait=` may wait (seconds).
    pub max_start_wait_seconds: u64,
    /// The longest a worker's claim may wait for a task (`wait_s`).
    pub max_claim_wait_seconds: u64,
    /// The largest request body (bytes).
    pub max_body_bytes: usize,
    /// Tasks one worker (`worker_id`) may hold claimed at once.
    pub max_claims_per_worker: usize,
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_run_input_bytes: DEFAULT_MAX_RUN_INPUT_BYTES,
            messages_per_run_per_minute: DEFAULT_MESSAGES_PER_RUN_PER_MINUTE,
            ws_subscriptions_per_connection: DEFAULT_WS_SUBSCRIPTIONS_PER_CONNECTION,
            ws_connections_per_token: DEFAULT_WS_CONNECTIONS_PER_TOKEN,
            ws_outbound_queue: DEFAULT_WS_OUTBOUND_QUEUE,
            max_start_wait_seconds: DEFAULT_MAX_START_WAIT_SECONDS,
            max_claim_wait_seconds: DEFAULT_MAX_CLAIM_WAIT_SECONDS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_claims_per_worker: DEFAULT_MAX_CLAIMS_PER_WORKER,
        }
    }
}

/// The bounds and what counts against them on this node.
#[derive(Clone, Default)]
pub struct Limits {
    /// The bounds.
    pub bounds: InputLimits,
    messages: Arc<Mutex<HashMap<String, VecDeque<Instant>>>>,
    connections: Arc<Mutex<HashMap<String, usize>>>,
}

impl Limits {
    /// Counting against `bounds`.
    pub fn new(bounds: InputLimits) -> Self {
        Self {
            bounds,
            ..Self::default()
        }
    }

    /// 413 `input_too_large` when a run input is over the bound.
    pub fn check_run_input(&self, input: &serde_json::Value) -> Result<(), ApiError> {
        let size = serde_json::to_vec(input).map_or(0, |v| v.len());
        let max = self.bounds.max_run_input_bytes;
        if size > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "input_too_large",
                format!(
                    "a run's input may be at most {max} bytes of JSON; this one is {size} \
                     (put large documents in an artifact or behind a URL)"
                ),
            ));
        }
        Ok(())
    }

    /// 429 `too_many_messages` (with `Retry-After`) when `run` took its
    /// share of messages in the last minute. Only messages recorded count
    /// ([`Limits::record_message`]): a refused post or an idempotent repeat
    /// does not.
    pub fn check_message_rate(&self, run: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let max = self.bounds.messages_per_run_per_minute;
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        let Some(times) = messages.get_mut(run) else {
            return Ok(());
        };
        while times.front().is_some_and(|t| now - *t >= MINUTE) {
            times.pop_front();
        }
        if times.len() < max {
            return Ok(());
        }
        let wait = times
            .front()
            .map_or(MINUTE, |oldest| MINUTE.saturating_sub(now - *oldest));
        // Rounded up: a client that waits as told is not refused again.
        let seconds = wait.as_millis().div_ceil(1000).max(1) as u64;
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_messages",
            format!("a run takes at most {max} messages a minute; try again in {seconds} s"),
        )
        .with_retry_after(seconds))
    }

    /// Counts a message recorded in `run`'s thread.
    pub fn record_message(&self, run: &str) {
        let now = Instant::now();
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        // Forget runs that went quiet, now and then.
        if messages.len() > 10_000 {
            messages.retain(|_, times| times.back().is_some_and(|t| now - *t < MINUTE));
        }
        messages.entry(run.to_string()).or_default().push_back(now);
    }

    /// Takes one of `token`'s WebSocket connections; 429
    /// `too_many_connections` when it holds all it may. The guard gives it
    /// back when dropped.
    pub fn open_connection(&self, token: &str) -> Result<ConnectionGuard, ApiError> {
        let max = self.bounds.ws_connections_per_token;
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let open = connections.entry(token.to_string()).or_default();
        if *open >= max {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                format!(
                    "a token may hold at most {max} WebSocket connections open on a node; close \
                     one, or follow more runs on one connection"
                ),
            ));
        }
        *open += 1;
        Ok(ConnectionGuard {
            token: token.to_string(),
            connections: self.connections.clone(),
        })
    }
}

/// One open WebSocket connection of a token; given back when dropped.
pub struct ConnectionGuard {
    token: String,
    connections: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut connections = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = connections.get_mut(&self.token) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                connections.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn limits() -> Limits {
        Limits::new(InputLimits {
            max_run_input_bytes: 10,
            messages_per_run_per_minute: 2,
            ws_subscriptions_per_connection: 1,
            ws_connections_per_token: 2,
            ..InputLimits::default()
        })
    }

    #[test]
    fn a_run_input_over_the_bound_is_413() {
        let limits = limits();
        assert!(limits.check_run_input(&json!({"a": 1})).is_ok());
        let refused = limits
            .check_run_input(&json!({"a": "0123456789"}))
            .unwrap_err();
        assert_eq!(refused.code(), "input_too_large");
    }

    #[test]
    fn messages_are_counted_per_run() {
        let limits = limits();
        for _ in 0..2 {
            assert!(limits.check_message_rate("r1").is_ok());
            limits.record_message("r1");
        }
        assert_eq!(
            limits.check_message_rate("r1").unwrap_err().code(),
            "too_many_messages"
        );
        assert!(limits.check_message_rate("r2").is_ok());
    }

    #[test]
    fn connections_are_given_back_when_they_close() {
        let limits = limits();
        let one = limits.open_connection("t").unwrap();
        let _two = limits.open_connection("t").unwrap();
        assert_eq!(
            limits.open_connection("t").err().map(|e| e.code()),
            Some("too_many_connections")
        );
        assert!(limits.open_connection("u").is_ok());
        drop(one);
        assert!(limits.open_connection("t").is_ok());
    }
}
