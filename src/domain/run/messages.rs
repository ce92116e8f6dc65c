//! Users' messages to the run's thread: recorded with the status that says
//! what came of them; a control action has exactly the effect of its
//! command.

use super::command::{RunCommand, Stamp};
use super::decision::Decision;
use super::state::Run;
use super::thread::{Action, Author, MessageStatus, NewMessage};
use super::{RunError, RunEvent};
use crate::domain::ids::RunId;

impl Run {
    /// A user's message: recorded with the status that says what came of
    /// it; a control action has exactly the effect of its command.
    pub(super) fn post_message(
        &self,
        message: NewMessage,
        redirect_to: Option<RunId>,
        stamp: &Stamp,
    ) -> Result<Decision, RunError> {
        let at = stamp.at;
        if self.id.is_none() {
            return Err(RunError::NotStarted);
        }
        if let Some(key) = &message.idempotency_key {
            if let Some((_, fingerprint)) = self.thread.keys.get(key) {
                return if *fingerprint == message.fingerprint() {
                    Ok(Decision::new(self, stamp))
                } else {
                    Err(RunError::IdempotencyKeyReused(key.clone()))
                };
            }
        }
        let control = match message.action {
            Action::Comment | Action::Instruction => None,
            Action::Pause => Some(RunCommand::Pause),
            Action::Resume => Some(RunCommand::Resume),
            Action::Cancel => Some(RunCommand::Cancel {
                reason: Some(message.content.trim().to_string()).filter(|r| !r.is_empty()),
            }),
            Action::Redirect => redirect_to.map(|new_run_id| RunCommand::Redirect {
                new_run_id,
                instructions: message.content.clone(),
            }),
        };
        let (status, reason) = match (&control, message.action) {
            (Some(command), _) => match self.decision(command.clone(), stamp) {
                Ok(_) => (MessageStatus::Processed, None),
                Err(refused) => (MessageStatus::Ignored, Some(refused.to_string())),
            },
            (None, Action::Redirect) => (
                MessageStatus::Ignored,
                Some("no run id was set aside for the redirect".to_string()),
            ),
            (None, Action::Instruction) if self.status.is_finished() => (
                MessageStatus::Ignored,
                Some(format!("run is already {}", self.status.as_str())),
            ),
            (None, Action::Instruction) => (MessageStatus::Pending, None),
            (None, _) => (MessageStatus::Processed, None),
        };
        let mut d = Decision::new(self, stamp);
        d.record(RunEvent::MessagePosted {
            message: self.thread.last + 1,
            author: Author::User,
            action: message.action,
            content: message.content,
            metadata: message.metadata,
            step: None,
            idempotency_key: message.idempotency_key,
            status,
            reason,
            buttons: Vec::new(),
            input: None,
            at,
        });
        if let (Some(command), MessageStatus::Processed) = (control, status) {
            // Decided again on the state that holds the message, so the
            // system messages it brings are numbered after it.
            d = d.state.decision(command, stamp)?.after(d.events);
        }
        Ok(d)
    }
}
