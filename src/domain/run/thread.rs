//! The run's conversation thread: who may say what, and the part of the
//! thread the run's decisions depend on (idempotency keys and the
//! instructions not yet processed). The full thread lives in the read model.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::ids::StepId;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    /// A user, through the API.
    User,
    /// The agent of a step.
    Agent,
    /// The engine, announcing a state change.
    System,
}

/// What a message asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Nothing: a remark.
    #[default]
    Comment,
    /// Extra context for the next step dispatched.
    Instruction,
    /// Same as `POST …/pause`.
    Pause,
    /// Same as `POST …/resume`.
    Resume,
    /// Same as `POST …/cancel` (the content is the reason).
    Cancel,
    /// Same as `POST …/redirect` (the content is the instructions).
    Redirect,
}

impl Action {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Comment => "comment",
            Self::Instruction => "instruction",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Cancel => "cancel",
            Self::Redirect => "redirect",
        }
    }
}

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Recorded; nothing acted on it yet (an instruction no step has
    /// received).
    Pending,
    /// Handed over (an instruction a running step received).
    Acknowledged,
    /// Acted on: the control action took effect, the step that received the
    /// instruction completed, or there was nothing to act on (comments).
    Processed,
    /// Not acted on, with a reason (for example, the run had finished).
    Ignored,
}

impl MessageStatus {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Acknowledged => "acknowledged",
            Self::Processed => "processed",
            Self::Ignored => "ignored",
        }
    }
}

/// A message a user posts (see `RunCommand::PostMessage`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// What it asks for.
    pub action: Action,
    /// Its text.
    pub content: String,
    /// Free-form JSON the client attaches (null when none).
    pub metadata: Value,
    /// The client's `Idempotency-Key`: a second post with the same key
    /// records nothing.
    pub idempotency_key: Option<String>,
}

impl NewMessage {
    /// What must match for a repeated key to be the same message.
    pub(super) fn fingerprint(&self) -> String {
        fingerprint(self.action, &self.content, &self.metadata)
    }
}

/// What must match for a repeated idempotency key to be the same message.
/// The metadata is compared in a canonical form, because it may come back
/// from storage re-encoded (PostgreSQL `jsonb` writes `1e10` as
/// `10000000000` and `-0.0` as `0`) while the client repeats it as sent.
pub(super) fn fingerprint(action: Action, content: &str, metadata: &Value) -> String {
    let mut text = format!("{}\u{0}{content}\u{0}", action.as_str());
    canonical(metadata, &mut text);
    text
}

/// Writes `value` with every number as its `f64` value (and `-0` as `0`);
/// object keys are already sorted.
fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            out.push_str(&format!("{}", if f == 0.0 { 0.0 } else { f }));
        }
        Value::Array(items) => {
            out.push('[');
            for item in items {
                canonical(item, out);
                out.push(',');
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (key, item) in map {
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(item, out);
                out.push(',');
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// A comment an agent posted while running, waiting to be recorded with
/// its attempt's next event (or a batch of comments).
#[derive(Debug, Clone, PartialEq)]
pub struct AgentNote {
    /// The comment.
    pub content: String,
    /// When the agent posted it.
    pub at: crate::domain::ids::Timestamp,
}

/// An instruction not yet processed: its message number and text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpenInstruction {
    /// The message number.
    pub message: u32,
    /// The text handed to the step.
    pub content: String,
}

/// The part of the thread that decisions need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThreadState {
    /// The number of the last message (messages are numbered from 1).
    pub last: u32,
    /// Idempotency key → (message number, fingerprint).
    pub keys: BTreeMap<String, (u32, String)>,
    /// Instructions no step has received yet, oldest first.
    pub pending: Vec<OpenInstruction>,
    /// Instructions handed to a step whose attempt has not completed; handed
    /// again to that step's next attempt if this one does not complete.
    pub in_flight: BTreeMap<StepId, Vec<OpenInstruction>>,
    /// Agents' messages with buttons, by message number, until their step
    /// runs again.
    #[serde(default)]
    pub asks: BTreeMap<u32, super::interactive::Ask>,
}

impl ThreadState {
    /// The instructions the next dispatch of `step` receives: the ones it
    /// received before without completing, then every pending one.
    pub fn for_dispatch(&self, step: &StepId) -> Vec<OpenInstruction> {
        let mut all = self.in_flight.get(step).cloned().unwrap_or_default();
        all.extend(self.pending.iter().cloned());
        all
    }

    /// Every instruction not processed yet.
    pub fn open(&self) -> impl Iterator<Item = &OpenInstruction> {
        self.pending.iter().chain(self.in_flight.values().flatten())
    }

    /// Forgets an instruction once it is processed or ignored.
    pub(super) fn close(&mut self, message: u32) {
        self.pending.retain(|i| i.message != message);
        for list in self.in_flight.values_mut() {
            list.retain(|i| i.message != message);
        }
        self.in_flight.retain(|_, list| !list.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn metadata_as_storage_re_encodes_it_has_the_same_fingerprint() {
        let sent = json!({"y": -0.0, "big": 1e10, "n": [1.5, 2], "s": "x"});
        let stored = json!({"big": 10000000000u64, "n": [1.5, 2.0], "s": "x", "y": 0});
        assert_eq!(
            fingerprint(Action::Comment, "c", &sent),
            fingerprint(Action::Comment, "c", &stored)
        );
        assert_ne!(
            fingerprint(Action::Comment, "c", &json!({"y": 1})),
            fingerprint(Action::Comment, "c", &json!({"y": 2}))
        );
        assert_ne!(
            fingerprint(Action::Comment, "c", &json!({"y": "1"})),
            fingerprint(Action::Comment, "c", &json!({"y": 1}))
        );
    }
}
