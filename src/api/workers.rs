//! The worker protocol: remote workers (any language, any machine) claim
//! tasks of the agents they serve, heartbeat while they work, and complete,
//! fail, comment on or give back their tasks. Every call carries
//! `Authorization: Bearer <worker_token>`; every call about a task carries
//! its `lease_token`, and a token that is no longer the attempt's is `409
//! lease_lost` and changes nothing. Also `GET /api/agents`.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::openapi::{ErrorBody, Items, Task};
use super::{refuse_nul, refuse_nul_text, ApiError, ApiState};
use crate::domain::ids::{AgentName, LeaseToken, RunId, StepId};
use crate::domain::run::Failure;
use crate::engine::{ClaimToRecord, EngineError};
use crate::projections::rfc3339;

/// Most agents one claim may ask for.
const MAX_CLAIM_AGENTS: usize = 32;
/// Longest worker id accepted.
const MAX_WORKER_ID: usize = 128;
/// Longest error or comment text accepted (characters).
const MAX_TEXT_CHARS: usize = 32_000;
/// Longest lease token accepted (bytes).
const MAX_LEASE_TOKEN: usize = 256;

/// Checks workers' bearer tokens. The token is kept only as its SHA-256
/// (compared digest to digest), and never logged.
#[derive(Clone)]
pub struct WorkerAuth {
    token: Option<[u8; 32]>,
}

impl std::fmt::Debug for WorkerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerAuth")
            .field("configured", &self.token.is_some())
            .finish()
    }
}

impl WorkerAuth {
    /// Accepts `token` (none: no worker is accepted).
    pub fn new(token: Option<&str>) -> Self {
        Self {
            token: token.map(|t| Sha256::digest(t.as_bytes()).into()),
        }
    }

    /// Whether `digest` is the SHA-256 of the worker token.
    pub fn is_worker_digest(&self, digest: &[u8; 32]) -> bool {
        self.token.as_ref() == Some(digest)
    }

    /// Refuses a request without the worker token: 401 with
    /// `WWW-Authenticate`.
    fn check(&self, req: &HttpRequest) -> Result<(), ApiError> {
        let Some(expected) = &self.token else {
            return Err(unauthorized(
                "workers_not_configured",
                "this server accepts no workers: set worker_token in its configuration \
                 (or RUNLOG_WORKER_TOKEN)",
            ));
        };
        let Some(presented) = super::auth::bearer(req) else {
            return Err(unauthorized(
                "missing_token",
                "send the worker token as 'Authorization: Bearer <token>'",
            ));
        };
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if digest != *expected {
            return Err(unauthorized(
                "invalid_token",
                "the worker token is not valid",
            ));
        }
        Ok(())
    }
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
        .with_header("WWW-Authenticate", "Bearer realm=\"runlog workers\"")
}

/// A worker asking for a task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Claim {
    /// Who the worker is (1 to 128 characters).
    #[schema(min_length = 1, max_length = 128)]
    worker_id: String,
    /// The remote agents it serves (1 to 32).
    #[schema(min_items = 1, max_items = 32)]
    agents: Vec<String>,
    /// Seconds to wait for a task (long poll; at most the server's
    /// `max_claim_wait_seconds`, 30 by default).
    #[serde(default, deserialize_with = "super::whole_u64")]
    #[schema(maximum = 30)]
    wait_s: u64,
}

/// A lease, by its token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Lease {
    /// The `lease_token` of the claimed task.
    #[schema(min_length = 1, max_length = 256)]
    lease_token: String,
}

/// A task's result.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Complete {
    /// The `lease_token` of the claimed task.
    #[schema(min_length = 1, max_length = 256)]
    lease_token: String,
    /// The step's outputs, by name (checked against the agent's output
    /// schema).
    #[schema(value_type = Object)]
    outputs: Value,
    /// A message for the run's thread (with buttons, the user answers with
    /// a click; a button's `next_step` makes the step wait for it).
    #[serde(default)]
    message: Option<super::interactive::MessageBody>,
    /// Claim the worker's next task in the same call.
    #[serde(default)]
    next: Option<Claim>,
}

/// A task's failure.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Fail {
    /// The `lease_token` of the claimed task.
    #[schema(min_length = 1, max_length = 256)]
    lease_token: String,
    /// What went wrong (up to 32,000 characters).
    #[schema(max_length = 32000)]
    error: String,
    /// Whether another attempt may succeed (the step's retry policy
    /// decides).
    #[serde(default = "crate::domain::yes")]
    #[schema(default = true)]
    retryable: bool,
    /// Claim the worker's next task in the same call.
    #[serde(default)]
    next: Option<Claim>,
}

/// A claim, checked.
struct ClaimOf {
    worker_id: String,
    agents: Vec<AgentName>,
    wait: Duration,
}

/// A comment into the run's thread.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Comment {
    /// The `lease_token` of the claimed task.
    #[schema(min_length = 1, max_length = 256)]
    lease_token: String,
    /// The comment (up to 32,000 characters).
    #[schema(max_length = 32000)]
    text: String,
}

/// What a heartbeat extended, and what the run asks of the worker.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Heartbeat {
    /// The lease's new expiry (RFC 3339).
    lease_expires_at: String,
    /// The run is being cancelled: stop and fail or release the task.
    cancel_requested: bool,
    /// The run is pausing (the task may finish).
    pause_requested: bool,
}

/// A report recorded.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Recorded {
    /// The task.
    task_id: String,
    /// `completed`, `failed`, `commented` or `released`.
    status: &'static str,
    /// With `next` in the request: the worker's next task, or null when
    /// none came in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Task>)]
    next: Option<Option<Value>>,
}

/// An agent this server knows.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AgentEntry {
    /// Its name, as steps use it.
    name: String,
    /// `builtin` or `remote`.
    kind: &'static str,
    /// What it does.
    description: String,
    /// A JSON Schema of its `config`.
    config_schema: Value,
    /// A JSON Schema of its outputs.
    output_schema: Option<Value>,
    /// A remote agent's workers seen in the last minute.
    workers: Option<usize>,
}

fn check_lease(token: &str) -> Result<(), ApiError> {
    if token.is_empty()
        || token.len() > MAX_LEASE_TOKEN
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "invalid_lease_token",
            format!("lease_token must be 1 to {MAX_LEASE_TOKEN} visible ASCII characters"),
        ));
    }
    Ok(())
}

fn check_task_id(raw: &str) -> Result<(), ApiError> {
    if raw.is_empty() || raw.len() > 64 || !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::bad_request(
            "invalid_task_id",
            "a task id is 1 to 64 ASCII letters and digits",
        ));
    }
    Ok(())
}

fn check_text(field: &str, text: &str) -> Result<(), ApiError> {
    refuse_nul_text(field, Some(text))?;
    if text.trim().is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("{field} must be 1 to {MAX_TEXT_CHARS} characters and not blank"),
        ));
    }
    Ok(())
}

/// Checks a claim: its worker id, its agents (declared remote agents) and
/// its wait.
fn check_claim(state: &ApiState, claim: Claim) -> Result<ClaimOf, ApiError> {
    let Claim {
        worker_id,
        agents,
        wait_s,
    } = claim;
    if worker_id.is_empty()
        || worker_id.len() > MAX_WORKER_ID
        || !worker_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
    {
        return Err(ApiError::bad_request(
            "invalid_worker_id",
            format!("worker_id must be 1 to {MAX_WORKER_ID} ASCII letters, digits or . _ : @ -"),
        ));
    }
    if agents.is_empty() || agents.len() > MAX_CLAIM_AGENTS {
        return Err(ApiError::bad_request(
            "invalid_agents",
            format!("agents must name 1 to {MAX_CLAIM_AGENTS} agents"),
        ));
    }
    let agents = agents
        .iter()
        .map(|a| AgentName::parse(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("invalid_agents", e.to_string()))?;
    let most = state.limits.bounds.max_claim_wait_seconds;
    if wait_s > most {
        return Err(ApiError::bad_request(
            "invalid_wait",
            format!("wait_s must be at most {most}"),
        ));
    }
    state.engine.check_remote_agents(&agents)?;
    Ok(ClaimOf {
        worker_id,
        agents,
        wait: Duration::from_secs(wait_s),
    })
}

/// The task as a worker receives it, or `None` when none came.
async fn claim_task(state: &ApiState, claim: &ClaimOf) -> Result<Option<Value>, ApiError> {
    let claimed = state
        .engine
        .claim(
            &claim.worker_id,
            &claim.agents,
            claim.wait,
            u64::try_from(state.limits.bounds.max_claims_per_worker).unwrap_or(u64::MAX),
        )
        .await?;
    Ok(claimed.map(|work| {
        let mut task = work.payload;
        if let Value::Object(map) = &mut task {
            map.insert("lease_token".into(), json!(work.lease.as_str()));
            map.insert(
                "lease_expires_at".into(),
                json!(rfc3339(work.lease_expires_at)),
            );
        }
        task
    }))
}

/// `POST /api/workers/claim`.
#[utoipa::path(
    post, path = "/api/workers/claim", tag = "workers",
    request_body = Claim,
    responses(
        (status = 200, description = "A task, leased to the worker.", body = Task),
        (status = 204, description = "No task came in time."),
        (status = 400, description = "`not_a_remote_agent`: an agent is not served by workers; `invalid_wait`, `invalid_worker_id`.", body = ErrorBody),
        (status = 429, description = "`too_many_claims`: the worker holds `max_claims_per_worker` tasks already (`Retry-After`).", body = ErrorBody,
         headers(("Retry-After" = String, description = "Seconds to wait."))),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn claim(
    state: web::Data<ApiState>,
    req: HttpRequest,
    body: web::Json<Claim>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    let claim = check_claim(&state, body.into_inner())?;
    Ok(match claim_task(&state, &claim).await? {
        None => HttpResponse::NoContent().finish(),
        Some(task) => HttpResponse::Ok().json(task),
    })
}

/// Extends a task's lease.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/heartbeat", tag = "workers",
    params(("task_id" = String, Path, description = "The task id (1 to 64 letters and digits).")),
    request_body = Lease,
    responses(
        (status = 200, description = "The lease, extended.", body = Heartbeat),
        (status = 404, description = "`task_not_found`.", body = ErrorBody),
        (status = 409, description = "`lease_lost`: the lease token is not the attempt's any more; nothing changed.", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn heartbeat(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Lease>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    check_task_id(&path)?;
    check_lease(&body.lease_token)?;
    let status = state.engine.heartbeat(&path, &body.lease_token).await?;
    Ok(HttpResponse::Ok().json(Heartbeat {
        lease_expires_at: rfc3339(status.lease_expires_at),
        cancel_requested: status.cancel_requested,
        pause_requested: status.pause_requested,
    }))
}

fn recorded(task_id: &str, status: &'static str) -> HttpResponse {
    HttpResponse::Ok().json(Recorded {
        task_id: task_id.to_string(),
        status,
        next: None,
    })
}

/// The answer to a report that also asked for the next task: the report is
/// recorded, then the claim waits as `POST /api/workers/claim` does.
/// `next` is null when no task came in time, or when the claim failed (it
/// is logged; the worker claims again).
async fn recorded_then_claim(
    state: &ApiState,
    task_id: &str,
    status: &'static str,
    next: Option<ClaimOf>,
) -> HttpResponse {
    let Some(claim) = next else {
        return recorded(task_id, status);
    };
    let next = match claim_task(state, &claim).await {
        Ok(task) => task,
        Err(e) => {
            tracing::warn!(task_id, worker_id = claim.worker_id, error = %e,
                "the report was recorded; claiming the worker's next task failed");
            None
        }
    };
    HttpResponse::Ok().json(Recorded {
        task_id: task_id.to_string(),
        status,
        next: Some(next),
    })
}

/// Completes a task with its outputs.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/complete", tag = "workers",
    params(("task_id" = String, Path, description = "The task id (1 to 64 letters and digits).")),
    request_body = Complete,
    responses(
        (status = 200, description = "Recorded (and the next task, when asked).", body = Recorded),
        (status = 404, description = "`task_not_found`.", body = ErrorBody),
        (status = 409, description = "`lease_lost`: the lease token is not the attempt's any more; nothing changed.", body = ErrorBody),
        (status = 422, description = "`invalid_outputs`; `invalid_agent_message`: the message cannot be posted (a `next_step` that does not depend on the step, duplicate button ids, a step that waits for a click without buttons).", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn complete(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Complete>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    check_task_id(&path)?;
    let Complete {
        lease_token,
        outputs,
        message,
        next,
    } = body.into_inner();
    check_lease(&lease_token)?;
    refuse_nul("outputs", &outputs)?;
    let message = message
        .map(super::interactive::MessageBody::into_message)
        .transpose()?;
    let next = next.map(|claim| check_claim(&state, claim)).transpose()?;
    state
        .engine
        .complete_task(&path, &lease_token, outputs, message)
        .await?;
    Ok(recorded_then_claim(&state, &path, "completed", next).await)
}

/// Fails a task.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/fail", tag = "workers",
    params(("task_id" = String, Path, description = "The task id (1 to 64 letters and digits).")),
    request_body = Fail,
    responses(
        (status = 200, description = "Recorded (and the next task, when asked).", body = Recorded),
        (status = 404, description = "`task_not_found`.", body = ErrorBody),
        (status = 409, description = "`lease_lost`: the lease token is not the attempt's any more; nothing changed.", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn fail(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Fail>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    check_task_id(&path)?;
    let Fail {
        lease_token,
        error,
        retryable,
        next,
    } = body.into_inner();
    check_lease(&lease_token)?;
    check_text("error", &error)?;
    let next = next.map(|claim| check_claim(&state, claim)).transpose()?;
    let failure = Failure {
        error,
        retryable,
        retry_after_ms: None,
    };
    state.engine.fail_task(&path, &lease_token, failure).await?;
    Ok(recorded_then_claim(&state, &path, "failed", next).await)
}

/// Posts a comment into the run's thread.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/comment", tag = "workers",
    params(("task_id" = String, Path, description = "The task id (1 to 64 letters and digits).")),
    request_body = Comment,
    responses(
        (status = 200, description = "Recorded.", body = Recorded),
        (status = 404, description = "`task_not_found`.", body = ErrorBody),
        (status = 409, description = "`lease_lost`: the lease token is not the attempt's any more; nothing changed.", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn comment(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Comment>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    check_task_id(&path)?;
    let Comment { lease_token, text } = body.into_inner();
    check_lease(&lease_token)?;
    check_text("text", &text)?;
    state.engine.comment_task(&path, &lease_token, text).await?;
    Ok(recorded(&path, "commented"))
}

/// Gives a task back: another worker may claim it.
#[utoipa::path(
    post, path = "/api/tasks/{task_id}/release", tag = "workers",
    params(("task_id" = String, Path, description = "The task id (1 to 64 letters and digits).")),
    request_body = Lease,
    responses(
        (status = 200, description = "Recorded.", body = Recorded),
        (status = 404, description = "`task_not_found`.", body = ErrorBody),
        (status = 409, description = "`lease_lost`: the lease token is not the attempt's any more; nothing changed.", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn release(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Lease>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    check_task_id(&path)?;
    check_lease(&body.lease_token)?;
    state.engine.release_task(&path, &body.lease_token).await?;
    Ok(recorded(&path, "released"))
}

/// `GET /api/agents`: every agent, built-in and remote.
#[utoipa::path(
    get, path = "/api/agents", tag = "workers",
    responses((status = 200, description = "Every agent, built-in and remote.", body = Items<AgentEntry>)),
)]
pub(super) async fn agents(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let items: Vec<AgentEntry> = state
        .engine
        .agents()
        .into_iter()
        .map(|view| AgentEntry {
            name: view.info.name.to_string(),
            kind: view.info.kind.as_str(),
            description: view.info.spec.description,
            config_schema: view.info.spec.config_schema,
            output_schema: view.info.spec.output_schema,
            workers: view.workers,
        })
        .collect();
    Ok(HttpResponse::Ok().json(Items { items }))
}

/// A claim made through a peer node.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PeerClaim {
    step: String,
    lease_token: String,
    worker_id: String,
}

/// `POST /api/internal/runs/{id}/claims`: a peer node recording here, on
/// the run's host, the claim a worker made through it (docs/adr/0007).
/// Guarded by the worker token. Answers `{"lease_expires_at": ms}` (null:
/// nothing recorded), `{"stale": true}` when the attempt is over, or `503
/// hosted_elsewhere` when this node no longer hosts the run.
#[utoipa::path(
    post, path = "/api/internal/runs/{id}/claims", tag = "workers",
    params(("id" = String, Path, description = "The run id.")),
    request_body = PeerClaim,
    responses(
        (status = 200, description = "`{\"lease_expires_at\": ms}` (null: nothing recorded) or `{\"stale\": true}`.", body = Object),
        (status = 503, description = "`hosted_elsewhere`.", body = ErrorBody),
    ),
    security(("workerToken" = [])),
)]
pub(super) async fn peer_claim(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<PeerClaim>,
) -> Result<HttpResponse, ApiError> {
    state.workers.check(&req)?;
    let run = RunId::parse(path.into_inner())
        .map_err(|e| ApiError::bad_request("invalid_run_id", e.to_string()))?;
    let PeerClaim {
        step,
        lease_token,
        worker_id,
    } = body.into_inner();
    let step =
        StepId::parse(step).map_err(|e| ApiError::bad_request("invalid_step", e.to_string()))?;
    check_lease(&lease_token)?;
    check_text("worker_id", &worker_id)?;
    let claim = ClaimToRecord {
        run,
        step,
        lease: LeaseToken::new(lease_token),
        worker: worker_id,
    };
    match state.engine.record_claim(claim).await {
        Ok(expires) => {
            Ok(HttpResponse::Ok().json(json!({"lease_expires_at": expires.map(|t| t.0)})))
        }
        Err(EngineError::Run(_)) => Ok(HttpResponse::Ok().json(json!({"stale": true}))),
        Err(e) => Err(e.into()),
    }
}
