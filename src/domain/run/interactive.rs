//! Agent messages with buttons, and the clicks that answer them. An agent
//! returns a message beside its outputs; the engine posts it to the thread
//! (the engine is the thread's only writer). A click is recorded once: it
//! posts the button's `user_message` as the clicking user's message, makes
//! the button's `value` the step's output `choice` and, when the step waits
//! for the click, completes it and routes the run: the step the button
//! names in `next_step` runs, the other buttons' `next_step` are skipped,
//! and `when` conditions on the choice decide as they do for a review.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::command::Stamp;
use super::decision::Decision;
use super::graph::choice_output;
use super::state::{Run, StepStatus};
use super::thread::{Action, Author, MessageStatus};
use super::{ArtifactContent, ArtifactWritten, RunError, RunEvent};
use crate::domain::definition::Definition;
use crate::domain::ids::{ArtifactName, StepId};

/// Most buttons one message may carry.
pub const MAX_BUTTONS: usize = 16;
/// The longest text of a message, of a button's label, value or user
/// message (bytes of UTF-8).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_BUTTON_TEXT_BYTES: usize = 1_000;

/// A message an agent returns beside its outputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMessage {
    /// Its text.
    pub content: String,
    /// What the user may answer with, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<Button>,
    /// What else the user may send in answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<MessageInput>,
}

/// One button of an agent's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Button {
    /// Its id within the message (letters, digits, `_` and `-`).
    pub id: String,
    /// What it says.
    pub label: String,
    /// What a click on it records as the step's output `choice`.
    pub value: String,
    /// Posted to the thread as the clicking user's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_message: Option<String>,
    /// The step a click on it runs (a direct dependant of the asking
    /// step); the other buttons' steps are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_step: Option<StepId>,
}

/// What a user may send in answer to a message besides a click.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// A file.
    #[serde(default)]
    pub file: bool,
    /// Free text.
    #[serde(default)]
    pub prompt: bool,
}

/// A message with buttons that waits for (or got) its click.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The step whose agent asked.
    pub step: StepId,
    /// Its attempt that asked.
    pub attempt: u32,
    /// The buttons offered.
    pub buttons: Vec<Button>,
    /// The button clicked and the click's idempotency key, once clicked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clicked: Option<(String, Option<String>)>,
}

impl AgentMessage {
    /// Reads a message as an agent or a worker returns it (JSON); the
    /// reason when it is not one.
    pub fn parse(value: &Value) -> Result<Self, String> {
        serde_json::from_value(value.clone()).map_err(|e| e.to_string())
    }

    /// Whether a click on one of its buttons decides where the run goes.
    pub fn routes(&self) -> bool {
        self.buttons.iter().any(|b| b.next_step.is_some())
    }

    /// Checks the message `step`'s agent returned, against the run's
    /// definition: sizes, distinct button ids, and `next_step`s that are
    /// direct dependants of `step`.
    pub fn check(&self, step: &StepId, definition: &Definition) -> Result<(), RunError> {
        let fail = |reason: String| RunError::InvalidMessage {
            step: step.clone(),
            reason,
        };
        if self.content.trim().is_empty() {
            return Err(fail("its content is empty".into()));
        }
        if self.content.len() > MAX_MESSAGE_BYTES {
            return Err(fail(format!(
                "its content is over {MAX_MESSAGE_BYTES} bytes"
            )));
        }
        if self.buttons.len() > MAX_BUTTONS {
            return Err(fail(format!("it has more than {MAX_BUTTONS} buttons")));
        }
        let dependants: BTreeSet<&StepId> = definition.dependants_of(step).collect();
        let mut ids = BTreeSet::new();
        for button in &self.buttons {
            let valid_id = (1..=64).contains(&button.id.len())
                && button
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_id {
                return Err(fail(format!(
                    "button id '{}' is not 1 to 64 letters, digits, '_' or '-'",
                    button.id
                )));
            }
            if !ids.insert(button.id.as_str()) {
                return Err(fail(format!("button id '{}' is used twice", button.id)));
            }
            if button.label.trim().is_empty() {
                return Err(fail(format!("button '{}' has an empty label", button.id)));
            }
            let texts = [
                Some(&button.label),
                Some(&button.value),
                button.user_message.as_ref(),
            ];
            if texts
                .iter()
                .flatten()
                .any(|t| t.len() > MAX_BUTTON_TEXT_BYTES)
            {
                return Err(fail(format!(
                    "button '{}' has a label, value or user_message over \
                     {MAX_BUTTON_TEXT_BYTES} bytes",
                    button.id
                )));
            }
            if let Some(next) = &button.next_step {
                if !dependants.contains(next) {
                    return Err(fail(format!(
                        "button '{}' routes to '{next}', which is not a step that depends \
                         on '{step}'",
                        button.id
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Run {
    /// Whether `step`, finishing with `message`, waits for a click.
    pub(super) fn waits_for_click(&self, step: &StepId, message: Option<&AgentMessage>) -> bool {
        let declared = self
            .definition
            .steps
            .get(step)
            .is_some_and(|d| d.wait_for_click);
        declared || message.is_some_and(AgentMessage::routes)
    }

    /// A user clicked `button` of message `message`.
    pub(super) fn click(
        &self,
        message: u32,
        button: String,
        idempotency_key: Option<String>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if message == 0 || message > self.thread.last {
            return Err(RunError::MessageNotFound(message));
        }
        let Some(ask) = self.thread.asks.get(&message) else {
            return Err(RunError::NoButtons(message));
        };
        if let Some((clicked, key)) = &ask.clicked {
            // The same click again, under its key: nothing more happens.
            if idempotency_key.is_some() && *key == idempotency_key && *clicked == button {
                return Ok(Decision::new(self, stamp));
            }
            return Err(RunError::AlreadyClicked {
                message,
                button: clicked.clone(),
            });
        }
        self.check_active()?;
        let Some(chosen) = ask.buttons.iter().find(|b| b.id == button) else {
            return Err(RunError::UnknownButton {
                message,
                button,
                buttons: ask.buttons.iter().map(|b| b.id.clone()).collect(),
            });
        };
        let step = ask.step.clone();
        let waiting = self
            .steps
            .get(&step)
            .is_some_and(|s| s.status == StepStatus::AwaitingInput && s.attempt == ask.attempt);
        if self.cancel_requested.is_some() {
            return Err(RunError::Cancelling);
        }
        let choice = ArtifactName::new(&step, &choice_output());
        let written = ArtifactWritten {
            version: self.next_version(&choice),
            name: choice,
            content: ArtifactContent::Inline(Value::String(chosen.value.clone())),
        };
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::ButtonClicked {
            message,
            button: chosen.id.clone(),
            value: chosen.value.clone(),
            step: step.clone(),
            idempotency_key,
            at,
        });
        if let Some(content) = &chosen.user_message {
            d.record(RunEvent::MessagePosted {
                message: d.state.thread.last + 1,
                author: Author::User,
                action: Action::Comment,
                content: content.clone(),
                metadata: Value::Null,
                step: Some(step.clone()),
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                buttons: Vec::new(),
                input: None,
                at,
            });
        }
        if waiting {
            let routes = routes_of(&ask.buttons, &chosen.id);
            let (ready, skipped) =
                self.advance_routed(&step, std::slice::from_ref(&written), &routes);
            d.record(RunEvent::StepCompleted {
                step,
                attempt: ask.attempt,
                artifacts: vec![written],
                ready,
                skipped,
                usage: None,
                latest: Default::default(),
                final_score: None,
                at,
            });
            d.dispatch_due(at);
            d.settle(at);
        }
        Ok(d)
    }
}

/// Where a click on `clicked` among `buttons` sends the run: each step a
/// button names, and whether it runs.
pub(super) fn routes_of(buttons: &[Button], clicked: &str) -> BTreeMap<StepId, bool> {
    let mut routes = BTreeMap::new();
    for button in buttons {
        if let Some(next) = &button.next_step {
            let taken = button.id == clicked;
            // A step two buttons name runs if either was clicked.
            let entry = routes.entry(next.clone()).or_insert(false);
            *entry |= taken;
        }
    }
    routes
}
