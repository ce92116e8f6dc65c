//! Every event version runlog has written, read as today's: the upcasters
//! in one place, applied wherever the store decodes a stored event (loading
//! an aggregate, and the log the projections and audit read).
//!
//! A stored event is never edited (the log is append-only). When an
//! event's shape changes it gets a new `event_version`, and an upcaster
//! here turns the older payload into the new shape on read, saying what the
//! older payload meant. Upcasters run in order; each takes a payload below
//! its version to its version, so a 1.0 payload passes the 1.1 and then the
//! 1.2 one. `docs/events.md` has each event's version history, and
//! `tests/fixtures/events/older_versions.json` holds a stored event of every
//! older version, loaded through the real store in `tests/store.rs`.

use std::sync::OnceLock;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// Turns a payload of an older version into the shape of its version.
type Transform = dyn Fn(Value) -> Value + Send + Sync;

/// Takes payloads of one event type below `version` to `version` (written
/// as runlog writes versions: "1.2", not cqrs-es's "1.2.0").
struct Upcaster {
    event_type: &'static str,
    version: &'static str,
    transform: Box<Transform>,
}

/// `major.minor[.patch]` as numbers, for ordering.
fn parse_version(text: &str) -> Option<Vec<u64>> {
    text.split('.').map(|part| part.parse().ok()).collect()
}

impl EventUpcaster for Upcaster {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type
            && match (parse_version(event_version), parse_version(self.version)) {
                (Some(stored), Some(target)) => stored < target,
                _ => false,
            }
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        event.payload = (self.transform)(event.payload);
        event.event_version = self.version.to_string();
        event
    }
}

/// The upcasters, oldest version first within each event type.
fn upcasters() -> &'static [Upcaster] {
    static UPCASTERS: OnceLock<Vec<Upcaster>> = OnceLock::new();
    UPCASTERS.get_or_init(|| {
        vec![
            // 1.1 added `retry_of`: a 1.0 run is not a retry (absent).
            unchanged("RunStarted", "1.1"),
            // 1.2 added `redirected_from` (absent: not a redirect) and
            // `auto_run`: runs before it ran their steps automatically.
            with_fields("RunStarted", "1.2", &[("auto_run", true)]),
            // 1.3 added `owner`: absent, nobody's.
            unchanged("RunStarted", "1.3"),
            // 1.4 added `imports`: absent, none.
            unchanged("RunStarted", "1.4"),
            // 1.1 added `prompt_override` and `instructions`: absent, none.
            unchanged("StepDispatched", "1.1"),
            // 1.2 added `evaluating`: absent, the step's own agent ran.
            unchanged("StepDispatched", "1.2"),
            // 1.3 added `imports`: absent, none.
            unchanged("StepDispatched", "1.3"),
            // 1.1 added `skipped`: absent, nothing skipped.
            unchanged("StepCompleted", "1.1"),
            // 1.2 added `usage`, `latest`, `final_score`: absent, none.
            unchanged("StepCompleted", "1.2"),
            // 1.1 added `fails_run`: before it, a failure that was not
            // retried failed the run.
            with_fields("StepFailed", "1.1", &[("fails_run", true)]),
            // 1.2 added `retryable`: before it, every failure was.
            with_fields("StepFailed", "1.2", &[("retryable", true)]),
            // 1.1 added `grace_until`: absent, no grace.
            unchanged("CancelRequested", "1.1"),
            // 1.1 added `usage`: absent, none.
            unchanged("StepAwaitingReview", "1.1"),
            // 1.1 added `buttons` and `input` (agents' messages): absent,
            // none.
            unchanged("MessagePosted", "1.1"),
        ]
    })
}

/// A version whose new fields read as absent in older payloads: only the
/// version moves.
fn unchanged(event_type: &'static str, version: &'static str) -> Upcaster {
    Upcaster {
        event_type,
        version,
        transform: Box::new(|payload| payload),
    }
}

/// A version whose new (boolean) fields get, in older payloads, the value
/// that says what those payloads meant.
fn with_fields(
    event_type: &'static str,
    version: &'static str,
    fields: &'static [(&'static str, bool)],
) -> Upcaster {
    Upcaster {
        event_type,
        version,
        // Payloads are stored externally tagged: `{"StepFailed": {…}}`.
        transform: Box::new(move |mut payload| {
            if let Some(Value::Object(object)) = payload.get_mut(event_type) {
                for (name, value) in fields {
                    object.entry(*name).or_insert(Value::Bool(*value));
                }
            }
            // Anything else is left for deserialisation to refuse loudly.
            payload
        }),
    }
}

/// `event` as today's version of its type reads it.
pub fn upcast(mut event: SerializedEvent) -> SerializedEvent {
    for upcaster in upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn stored(event_type: &str, version: &str, payload: Value) -> SerializedEvent {
        SerializedEvent::new(
            "run-1".into(),
            1,
            "Run".into(),
            event_type.into(),
            version.into(),
            payload,
            json!({}),
        )
    }

    #[test]
    fn an_older_payload_passes_every_later_upcaster_and_reads_as_it_meant() {
        let event = upcast(stored(
            "StepFailed",
            "1.0",
            json!({"StepFailed": {"step": "a"}}),
        ));
        assert_eq!(event.event_version, "1.2");
        assert_eq!(
            event.payload,
            json!({"StepFailed": {"step": "a", "fails_run": true, "retryable": true}})
        );
        let event = upcast(stored(
            "StepFailed",
            "1.1",
            json!({"StepFailed": {"step": "a", "fails_run": false}}),
        ));
        assert_eq!(event.event_version, "1.2");
        assert_eq!(
            event.payload,
            json!({"StepFailed": {"step": "a", "fails_run": false, "retryable": true}})
        );
    }

    #[test]
    fn versions_order_by_number_not_by_text() {
        let upcaster = unchanged("StepFailed", "1.10");
        assert!(upcaster.can_upcast("StepFailed", "1.9"));
        assert!(!upcaster.can_upcast("StepFailed", "1.10"));
        assert!(!upcaster.can_upcast("StepFailed", "2.0"));
        assert!(!upcaster.can_upcast("StepFailed", "garbage"));
        assert!(!upcaster.can_upcast("StepCompleted", "1.0"));
    }

    #[test]
    fn a_current_payload_and_other_types_are_left_alone() {
        let current = stored(
            "StepFailed",
            "1.2",
            json!({"StepFailed": {"step": "a", "retryable": false}}),
        );
        assert_eq!(upcast(current.clone()), current);
        let other = stored("StepClaimed", "1.0", json!({"StepClaimed": {"step": "a"}}));
        assert_eq!(upcast(other.clone()), other);
    }
}
