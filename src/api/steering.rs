//! Steering endpoints: the conversation thread, redirect, review gates,
//! manual mode, step retry and artifact rollback. Each one parses and checks
//! its input, sends one command to the run's actor and answers from the read
//! models once they hold the command's effect.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::runs::{controlled, detail, run_id, MAX_REASON_CHARS};
use super::{optional_body, refuse_nul, refuse_nul_text, ApiError, ApiState, Caller, PageQuery};
use crate::domain::ids::{ArtifactName, RunId, StepId};
use crate::domain::run::{Action, Author, NewMessage, RunEvent};
use crate::projections::{MessageView, Page, RunDetail};

/// Longest message content accepted (characters).
pub const MAX_CONTENT_CHARS: usize = 32_000;
/// Longest prompt override accepted (characters).
pub const MAX_PROMPT_CHARS: usize = 32_000;

/// A message to post into a run's thread.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PostMessage {
    /// Its text (up to 32,000 characters; not blank for a comment, an
    /// instruction or a redirect; a cancel's reason, up to 2,000).
    #[schema(max_length = 32000)]
    content: String,
    /// What it asks (default `comment`).
    #[schema(value_type = Option<String>, pattern = "^(comment|instruction|pause|resume|cancel|redirect)$")]
    action: Option<String>,
    /// Client JSON kept with it (an object).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Value,
}

/// A redirect: the run is cancelled and a new one starts with these
/// instructions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Redirect {
    /// Not blank, up to 32,000 characters.
    #[schema(max_length = 32000)]
    instructions: String,
}

/// An approval of a review gate.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Approve {
    /// One of the step's `choices` (required when it has some).
    choice: Option<String>,
}

/// A prompt for the attempts a step retry or trigger starts.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PromptOverride {
    /// Instead of the step's own prompt; not blank, up to 32,000
    /// characters.
    #[schema(max_length = 32000)]
    prompt_override: Option<String>,
}

/// Manual mode on or off.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AutoRun {
    /// Whether ready steps are dispatched without a trigger.
    enabled: bool,
}

/// A rollback of an artifact.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Rollback {
    /// The version to make the latest again.
    #[schema(minimum = 1)]
    #[serde(deserialize_with = "super::whole_u32")]
    to_version: u32,
}

/// A posted message (`new_run_id` when a redirect was processed).
#[derive(Debug, serde::Serialize, ToSchema)]
pub(super) struct PostedMessage {
    #[serde(flatten)]
    message: MessageView,
    /// The run a processed redirect started.
    #[serde(skip_serializing_if = "Option::is_none")]
    new_run_id: Option<String>,
}

/// A redirected run: its detail and the run that replaces it.
#[derive(Debug, serde::Serialize, ToSchema)]
pub(super) struct Redirected {
    #[serde(flatten)]
    run: RunDetail,
    /// The new run.
    new_run_id: String,
}

fn step_id(raw: &str) -> Result<StepId, ApiError> {
    StepId::parse(raw).map_err(|e| ApiError::bad_request("invalid_step_id", e.to_string()))
}

fn action(raw: Option<&str>) -> Result<Action, ApiError> {
    let Some(raw) = raw else {
        return Ok(Action::Comment);
    };
    [
        Action::Comment,
        Action::Instruction,
        Action::Pause,
        Action::Resume,
        Action::Cancel,
        Action::Redirect,
    ]
    .into_iter()
    .find(|a| a.as_str() == raw)
    .ok_or_else(|| {
        ApiError::bad_request(
            "invalid_action",
            format!(
                "unknown action '{raw}': use comment, instruction, pause, resume, cancel or redirect"
            ),
        )
    })
}

/// Checks a text field's length; `required` texts must not be blank.
fn checked_text(
    text: &str,
    field: &str,
    code: &'static str,
    max: usize,
    required: bool,
) -> Result<(), ApiError> {
    refuse_nul_text(field, Some(text))?;
    if required && text.trim().is_empty() {
        return Err(ApiError::bad_request(
            code,
            format!("{field} must not be blank"),
        ));
    }
    if text.chars().count() > max {
        return Err(ApiError::bad_request(
            code,
            format!("{field} is longer than {max} characters"),
        ));
    }
    Ok(())
}

fn checked_prompt(prompt: Option<&String>) -> Result<(), ApiError> {
    match prompt {
        Some(p) => checked_text(
            p,
            "prompt_override",
            "invalid_prompt_override",
            MAX_PROMPT_CHARS,
            true,
        ),
        None => Ok(()),
    }
}

/// Posts a message into the run's thread: a comment, an instruction for
/// the next steps, or a control (pause, resume, cancel, redirect).
///
/// 201 with the message (its status says what came of it), or 200 with
/// the message first posted under the same `Idempotency-Key`. A processed
/// `redirect` also carries `new_run_id`.
#[utoipa::path(
    post, path = "/api/runs/{id}/messages", tag = "steering",
    params(("id" = String, Path, description = "The run id."),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key posts the message once.")),
    request_body = PostMessage,
    responses(
        (status = 201, description = "The message; its status says what came of it.", body = PostedMessage),
        (status = 200, description = "The message first posted under the same `Idempotency-Key`.", body = PostedMessage),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it.", body = ErrorBody),
        (status = 429, description = "`too_many_messages`: see `Retry-After`.", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
)]
pub(super) async fn post_message(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
    body: web::Json<PostMessage>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let key = super::idempotency_key(&req)?;
    let body = body.into_inner();
    let action = action(body.action.as_deref())?;
    let required = matches!(
        action,
        Action::Comment | Action::Instruction | Action::Redirect
    );
    // A cancel message's content is the cancel's reason.
    let max = if action == Action::Cancel {
        MAX_REASON_CHARS
    } else {
        MAX_CONTENT_CHARS
    };
    checked_text(&body.content, "content", "invalid_content", max, required)?;
    refuse_nul("metadata", &body.metadata)?;
    if !(body.metadata.is_null() || body.metadata.is_object()) {
        return Err(ApiError::bad_request(
            "invalid_metadata",
            "metadata must be a JSON object",
        ));
    }
    state.limits.check_message_rate(id.as_str())?;
    let message = NewMessage {
        action,
        content: body.content,
        metadata: body.metadata,
        idempotency_key: key.clone(),
    };
    let committed = state
        .engine
        .post_message(&id, message, &caller.cause())
        .await?;
    state.engine.settle_run(&id).await;
    let posted = committed.iter().find_map(|e| match &e.payload {
        RunEvent::MessagePosted {
            message,
            author: Author::User,
            ..
        } => Some(*message),
        _ => None,
    });
    if posted.is_some() {
        state.limits.record_message(id.as_str());
    }
    let (view, created) = match (posted, &key) {
        (Some(number), _) => (state.reads.message(id.as_str(), number).await?, true),
        // Nothing committed: the key was seen before.
        (None, Some(key)) => (state.reads.message_by_key(id.as_str(), key).await?, false),
        (None, None) => (None, false),
    };
    let view = view.ok_or_else(|| {
        ApiError::internal(&std::io::Error::other(
            "the message was recorded but is not in the read model",
        ))
    })?;
    let new_run_id = if view.action == "redirect" && view.status == "processed" {
        detail(&state, &id).await?.redirected_to
    } else {
        None
    };
    let body = PostedMessage {
        message: view,
        new_run_id,
    };
    Ok(if created {
        HttpResponse::Created().json(body)
    } else {
        HttpResponse::Ok().json(body)
    })
}

/// The thread in order, paged by message number (`cursor` is the last
/// number of the previous page).
#[utoipa::path(
    get, path = "/api/runs/{id}/messages", tag = "steering",
    params(("id" = String, Path, description = "The run id."), super::PageQuery),
    responses(
        (status = 200, description = "One page.", body = Page<MessageView>),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn messages(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let limit = query.limit()?;
    let after = match &query.cursor {
        None => 0,
        Some(c) => c.parse::<u32>().map_err(|_| {
            ApiError::bad_request("invalid_cursor", "cursor is not one this server returned")
        })?,
    };
    // Also answers 404 for a run that does not exist.
    detail(&state, &id).await?;
    let page = state.reads.messages(id.as_str(), after, limit).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Redirects a run: it is cancelled and a new run starts with the
/// instructions.
///
/// 201 with the old run's detail and `new_run_id`; `Location` is the new
/// run.
#[utoipa::path(
    post, path = "/api/runs/{id}/redirect", tag = "steering",
    params(("id" = String, Path, description = "The run id.")),
    request_body = Redirect,
    responses(
        (status = 201, description = "The old run and `new_run_id`; `Location` is the new run.", body = Redirected,
         headers(("Location" = String, description = "The new run's URL."))),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run has finished.", body = ErrorBody),
    ),
)]
pub(super) async fn redirect(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<Redirect>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let body = body.into_inner();
    checked_text(
        &body.instructions,
        "instructions",
        "invalid_instructions",
        MAX_CONTENT_CHARS,
        true,
    )?;
    let new_id: RunId = state
        .engine
        .redirect(&id, body.instructions, &caller.cause())
        .await?;
    let run = detail(&state, &id).await?;
    let body = Redirected {
        run,
        new_run_id: new_id.to_string(),
    };
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/runs/{new_id}")))
        .json(body))
}

/// The run and step a step endpoint's path names.
fn step_target(path: web::Path<(String, String)>) -> Result<(RunId, StepId), ApiError> {
    let (raw_id, raw_step) = path.into_inner();
    Ok((run_id(&raw_id)?, step_id(&raw_step)?))
}

/// The optional `{prompt_override?}` body of step retry and trigger.
fn prompt_override(body: &[u8]) -> Result<Option<String>, ApiError> {
    let body: PromptOverride = optional_body(body)?;
    checked_prompt(body.prompt_override.as_ref())?;
    Ok(body.prompt_override)
}

/// Approves a step awaiting review (with a choice when it offers some).
#[utoipa::path(
    post, path = "/api/runs/{id}/steps/{step}/approve", tag = "steering",
    params(("id" = String, Path, description = "The run id."), ("step" = String, Path, description = "The step id.")),
    request_body(content = Approve, description = "Optional: the choice."),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`, `step_not_found`.", body = ErrorBody),
        (status = 409, description = "The step is not awaiting review.", body = ErrorBody),
        (status = 422, description = "`choice_required` (the step offers choices and none was given), `invalid_choice`, `choices_not_offered` (a choice for a step that offers none).", body = ErrorBody),
    ),
)]
pub(super) async fn approve(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (id, step) = step_target(path)?;
    let body: Approve = optional_body(&body)?;
    refuse_nul_text("choice", body.choice.as_deref())?;
    state
        .engine
        .approve(&id, step, body.choice, &caller.cause())
        .await?;
    controlled(&state, &id).await
}

/// Runs a step again (and what depends on it), optionally with a new prompt.
#[utoipa::path(
    post, path = "/api/runs/{id}/steps/{step}/retry", tag = "steering",
    params(("id" = String, Path, description = "The run id."), ("step" = String, Path, description = "The step id.")),
    request_body(content = PromptOverride, description = "Optional: a prompt override."),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`, `step_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it.", body = ErrorBody),
    ),
)]
pub(super) async fn retry_step(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (id, step) = step_target(path)?;
    let prompt = prompt_override(&body)?;
    state
        .engine
        .retry_step(&id, step, prompt, &caller.cause())
        .await?;
    controlled(&state, &id).await
}

/// Dispatches a ready step of a run in manual mode.
#[utoipa::path(
    post, path = "/api/runs/{id}/steps/{step}/trigger", tag = "steering",
    params(("id" = String, Path, description = "The run id."), ("step" = String, Path, description = "The step id.")),
    request_body(content = PromptOverride, description = "Optional: a prompt override."),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`, `step_not_found`.", body = ErrorBody),
        (status = 409, description = "The step is not ready, or the run is not in manual mode.", body = ErrorBody),
    ),
)]
pub(super) async fn trigger(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let (id, step) = step_target(path)?;
    let prompt = prompt_override(&body)?;
    state
        .engine
        .trigger(&id, step, prompt, &caller.cause())
        .await?;
    controlled(&state, &id).await
}

/// Turns manual mode off (`enabled: true`) or on. Setting the current
/// value records nothing.
#[utoipa::path(
    put, path = "/api/runs/{id}/auto-run", tag = "steering",
    params(("id" = String, Path, description = "The run id.")),
    request_body = AutoRun,
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it.", body = ErrorBody),
    ),
)]
pub(super) async fn auto_run(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<AutoRun>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    state
        .engine
        .set_auto_run(&id, body.enabled, &caller.cause())
        .await?;
    controlled(&state, &id).await
}

/// Makes an earlier version of an artifact the latest again; what read it
/// runs again.
#[utoipa::path(
    post, path = "/api/runs/{id}/artifacts/{name}/rollback", tag = "steering",
    params(("id" = String, Path, description = "The run id."), ("name" = String, Path, description = "The artifact, `step.output`.")),
    request_body = Rollback,
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`, `artifact_not_found`, `unknown_artifact_version`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it.", body = ErrorBody),
    ),
)]
pub(super) async fn rollback(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<Rollback>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, raw_name) = path.into_inner();
    let id = run_id(&raw_id)?;
    let name = ArtifactName::parse(raw_name)
        .map_err(|e| ApiError::bad_request("invalid_artifact_name", e.to_string()))?;
    if body.to_version == 0 {
        return Err(ApiError::bad_request(
            "invalid_version",
            "to_version must be 1 or more",
        ));
    }
    state
        .engine
        .rollback(&id, name, body.to_version, &caller.cause())
        .await?;
    controlled(&state, &id).await
}
