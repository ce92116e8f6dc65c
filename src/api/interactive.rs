//! Agents' messages with buttons, over HTTP: the shape a worker returns a
//! message in (`POST /api/tasks/{id}/complete`), and a user's click
//! (`POST /api/runs/{id}/messages/{message_id}/click`).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::runs::{controlled, run_id};
use super::{refuse_nul_text, ApiError, ApiState, Caller};
use crate::domain::ids::StepId;
use crate::domain::run::{AgentMessage, Button, MessageInput, MAX_BUTTONS};

/// A message for the run's thread, returned beside a step's outputs: with
/// buttons, the user answers with a click (see
/// `POST /api/runs/{id}/messages/{message_id}/click`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AgentMessage)]
pub(super) struct MessageBody {
    /// Its text (not blank, at most 64 KiB).
    #[schema(min_length = 1)]
    content: String,
    /// What the user may answer with, in order (at most 16).
    #[serde(default)]
    #[schema(max_items = 16)]
    buttons: Vec<ButtonBody>,
    /// What else the user may send in answer.
    #[serde(default)]
    input: Option<InputBody>,
}

/// One button of an agent's message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MessageButton)]
pub(super) struct ButtonBody {
    /// Its id within the message.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    id: String,
    /// What it says (not blank).
    #[schema(min_length = 1, max_length = 1000)]
    label: String,
    /// What a click records as the step's output `choice`.
    #[schema(max_length = 1000)]
    value: String,
    /// Posted to the thread as the clicking user's message.
    #[serde(default)]
    #[schema(max_length = 1000)]
    user_message: Option<String>,
    /// The step a click runs: a step that depends on the asking one (the
    /// other buttons' steps are skipped, and the asking step waits for the
    /// click).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    next_step: Option<String>,
}

/// What else a user may send in answer to a message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MessageInput)]
pub(super) struct InputBody {
    /// A file.
    #[serde(default)]
    file: bool,
    /// Free text.
    #[serde(default)]
    prompt: bool,
}

impl MessageBody {
    /// The message as the run records it; a 400 naming the field at fault
    /// when a text has a NUL or a `next_step` is not a step id (what the
    /// run's definition says of it is checked when it is recorded).
    pub(super) fn into_message(self) -> Result<AgentMessage, ApiError> {
        refuse_nul_text("message.content", Some(&self.content))?;
        if self.buttons.len() > MAX_BUTTONS {
            return Err(ApiError::bad_request(
                "invalid_agent_message",
                format!("a message has at most {MAX_BUTTONS} buttons"),
            ));
        }
        let buttons = self
            .buttons
            .into_iter()
            .map(|b| {
                for (field, text) in [
                    ("id", Some(&b.id)),
                    ("label", Some(&b.label)),
                    ("value", Some(&b.value)),
                    ("user_message", b.user_message.as_ref()),
                ] {
                    refuse_nul_text(
                        &format!("message.buttons.{field}"),
                        text.map(|t| t.as_str()),
                    )?;
                }
                let next_step = b
                    .next_step
                    .map(|s| {
                        StepId::parse(s).map_err(|e| {
                            ApiError::bad_request("invalid_agent_message", e.to_string())
                        })
                    })
                    .transpose()?;
                Ok(Button {
                    id: b.id,
                    label: b.label,
                    value: b.value,
                    user_message: b.user_message,
                    next_step,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(AgentMessage {
            content: self.content,
            buttons,
            input: self.input.map(|i| MessageInput {
                file: i.file,
                prompt: i.prompt,
            }),
        })
    }
}

/// A click on a button of an agent's message.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Click {
    /// The button's id.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    button: String,
}

/// Clicks a button of an agent's message: recorded once; posts the
/// button's `user_message` as the caller's message; when the step waits
/// for the click, writes its `value` as the step's output `choice`,
/// completes it and runs the button's `next_step` (the other buttons'
/// steps are skipped).
#[utoipa::path(
    post, path = "/api/runs/{id}/messages/{message_id}/click", tag = "steering",
    params(
        ("id" = String, Path, description = "The run id."),
        ("message_id" = u32, Path, description = "The message's number (`id` in `GET /api/runs/{id}/messages`)."),
        ("Idempotency-Key" = Option<String>, Header, description = "The same click again under the same key records nothing (200)."),
    ),
    request_body = Click,
    responses(
        (status = 200, description = "The run after the click.", body = crate::projections::RunDetail),
        (status = 400, description = "`invalid_message_id` (not a number), `invalid_button`.", body = ErrorBody),
        (status = 404, description = "`run_not_found`, `message_not_found`.", body = ErrorBody),
        (status = 409, description = "`message_already_clicked`, `message_has_no_buttons`, `run_finished`, `run_cancelling`.", body = ErrorBody),
        (status = 422, description = "`unknown_button`: the message has no such button (the message names its buttons).", body = ErrorBody),
    ),
)]
pub(super) async fn click(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Click>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, raw_message) = path.into_inner();
    let id = run_id(&raw_id)?;
    // (0 names no message: 404 from the run.)
    let message: u32 = raw_message.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_message_id",
            "a message id is its number in the thread, from 1",
        )
    })?;
    let Click { button } = body.into_inner();
    let valid = (1..=64).contains(&button.len())
        && button
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !valid {
        return Err(ApiError::bad_request(
            "invalid_button",
            "a button id is 1 to 64 letters, digits, '_' or '-'",
        ));
    }
    let key = super::idempotency_key(&req)?;
    state
        .engine
        .click(&id, message, button, key, &caller.cause())
        .await?;
    controlled(&state, &id).await
}
