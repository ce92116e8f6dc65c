//! Run endpoints: start, list, detail, events, artifacts.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::templates::template_id;
use super::{optional_body, refuse_nul, refuse_nul_text, ApiError, ApiState, Caller, PageQuery};
use crate::domain::ids::{ArtifactName, RunId};
use crate::domain::log::Logged;
use crate::domain::run::{ArtifactContent, RunStatus};
use crate::engine::{Committed, EventView, Started};
use crate::projections::{Page, RunDetail};

/// Most events returned by one page of the events endpoint.
const MAX_EVENTS_PAGE: i64 = 1000;

/// A run to start.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRun {
    /// The template whose current version runs.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    template_id: String,
    /// The run's input (checked against the template's `input_schema`;
    /// `{}` when absent).
    #[serde(default = "empty_object")]
    input: Value,
    /// Manual mode when false: ready steps wait for a trigger.
    #[serde(default = "crate::domain::yes")]
    #[schema(default = true)]
    auto_run: bool,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ListRuns {
    /// Only runs with this status.
    #[param(value_type = Option<RunStatus>)]
    status: Option<String>,
    /// Only runs of this template.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    template_id: Option<String>,
    /// Only runs with a step (or evaluator) of this agent.
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    agent: Option<String>,
    /// A user id: that user's runs (admins; a user lists their own).
    #[param(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    owner: Option<String>,
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DetailQuery {
    /// The run as it was after this event (time travel, for audits).
    #[param(minimum = 1)]
    at: Option<i64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Only events with a sequence above this one (0: from the first).
    #[param(minimum = 0)]
    after: Option<i64>,
    /// Events per page (default and most 1,000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Only events with a sequence up to this one (a history slider).
    #[param(minimum = 1)]
    at_or_before: Option<i64>,
}

pub(super) fn run_id(raw: &str) -> Result<RunId, ApiError> {
    RunId::parse(raw).map_err(|e| ApiError::bad_request("invalid_run_id", e.to_string()))
}

/// The run's detail from the read model, once it holds everything the run
/// committed so far.
pub(super) async fn detail(state: &ApiState, id: &RunId) -> Result<RunDetail, ApiError> {
    state.engine.settle_run(id).await;
    let mut detail = state
        .reads
        .run_detail(id.as_str())
        .await?
        .ok_or_else(|| ApiError::not_found("run_not_found", format!("run '{id}' not found")))?;
    detail.mark_stalled(state.engine.clock().now());
    Ok(detail)
}

/// How often a waiting start looks at its run without a wake-up (a run
/// that moved to another node finishes there).
const WAIT_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StartQuery {
    /// Seconds to wait for the run to finish before answering (at most
    /// the server's `max_start_wait_seconds`, 60 by default).
    #[param(minimum = 0, maximum = 60)]
    wait: Option<f64>,
}

/// A finished run (`POST /api/runs?wait=`): its detail and the outputs of
/// its last steps.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct FinishedRun {
    #[serde(flatten)]
    run: RunDetail,
    /// The latest version of each artifact of the steps nothing depends
    /// on, by name (only with `wait`, once the run finished).
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<std::collections::BTreeMap<String, Output>>,
}

/// One output of a finished run: inline up to the blob threshold (8 KiB),
/// else a link to fetch it from.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum Output {
    /// Stored inline.
    Inline {
        /// The artifact version.
        version: u32,
        /// Its content.
        content: Value,
    },
    /// Stored as a blob.
    Linked {
        /// The artifact version.
        version: u32,
        /// Its size in bytes.
        size: u64,
        /// Its SHA-256 (hex).
        sha256: String,
        /// Where to fetch it (`GET /api/runs/{id}/artifacts/{name}`).
        href: String,
        /// Retention took the body.
        purged: bool,
    },
}

/// `POST /api/runs`: 201 with the new run; with `Idempotency-Key`, 200
/// with the run an earlier start with the same key and body made. With
/// `?wait=SECONDS`: 200 with the finished run and its `outputs`, or 202
/// with the run as it stands if it has not finished in time.
#[utoipa::path(
    post, path = "/api/runs", tag = "runs",
    params(
        StartQuery,
        ("Idempotency-Key" = Option<String>, Header,
         description = "The same key and body give the same run, never a second one (1 to 255 visible ASCII characters)."),
    ),
    request_body = StartRun,
    responses(
        (status = 201, description = "Started; `Location` is the run.", body = RunDetail,
         headers(("Location" = String, description = "The run's URL."))),
        (status = 200, description = "With `wait`: the run finished, with its `outputs`. With `Idempotency-Key`: the run an earlier start with the same key and body made (`Idempotent-Replayed: true`).", body = FinishedRun,
         headers(("Location" = String, description = "The run's URL."))),
        (status = 202, description = "With `wait`: the run has not finished in time; poll `Location`.", body = RunDetail,
         headers(("Location" = String, description = "The run's URL."))),
        (status = 404, description = "`template_not_found`.", body = ErrorBody),
        (status = 409, description = "`template_archived`; `prerequisites_not_met` (the template's `requires` against the caller's own most recent runs), with `unmet`: each requirement not met, as `UnmetRequirement`. Nothing is recorded.", body = ErrorBody),
        (status = 422, description = "`invalid_input` (with `path`), `idempotency_key_reused`.", body = ErrorBody),
    ),
)]
pub(super) async fn start(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<StartQuery>,
    body: web::Json<StartRun>,
) -> Result<HttpResponse, ApiError> {
    let most = state.limits.bounds.max_start_wait_seconds;
    let wait = match query.wait {
        None => None,
        Some(secs) if secs.is_finite() && (0.0..=most as f64).contains(&secs) => {
            Some(Duration::from_secs_f64(secs))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_wait",
                format!("wait is a number of seconds from 0 to {most}"),
            ))
        }
    };
    let key = super::idempotency_key(&req)?;
    let body = body.into_inner();
    let template = template_id(&body.template_id)?;
    refuse_nul("input", &body.input)?;
    state.limits.check_run_input(&body.input)?;
    let (id, started) = state
        .engine
        .start_run(
            &template,
            body.input,
            body.auto_run,
            key.as_deref(),
            &caller.cause(),
        )
        .await?;
    let replayed = matches!(started, Started::Replayed);
    let Some(wait) = wait else {
        return Ok(match started {
            Started::New(committed) => created(&id, &committed),
            Started::Replayed => {
                replayed_start(&id, HttpResponse::Ok()).json(detail(&state, &id).await?)
            }
        });
    };
    let run = finished_within(&state, &id, wait).await?;
    if !run.status.is_finished() {
        let mut answer = HttpResponse::Accepted();
        answer.insert_header(("Location", format!("/api/runs/{id}")));
        if replayed {
            answer.insert_header(("Idempotent-Replayed", "true"));
        }
        return Ok(answer.json(run));
    }
    let outputs = Some(outputs(&state, &run).await?);
    let body = FinishedRun { run, outputs };
    let mut answer = HttpResponse::Ok();
    if replayed {
        answer = replayed_start(&id, answer);
    } else {
        answer.insert_header(("Location", format!("/api/runs/{id}")));
    }
    Ok(answer.json(body))
}

/// Marks an answer as the replay of an earlier keyed start.
fn replayed_start(
    id: &RunId,
    mut answer: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    answer
        .insert_header(("Location", format!("/api/runs/{id}")))
        .insert_header(("Idempotent-Replayed", "true"));
    answer
}

/// The run once it has finished, or as it stands after `wait`.
async fn finished_within(
    state: &ApiState,
    id: &RunId,
    wait: Duration,
) -> Result<RunDetail, ApiError> {
    let deadline = tokio::time::Instant::now() + wait;
    let hub = state.engine.hub();
    loop {
        // Asked before looking, so that a finish in between wakes it.
        let finished = hub.when_finished(id);
        let run = detail(state, id).await?;
        let now = tokio::time::Instant::now();
        if run.status.is_finished() || now >= deadline {
            drop(finished);
            hub.forget_waiters(id);
            return Ok(run);
        }
        // The receiver goes with the timeout, so the forget drops it.
        let _ = tokio::time::timeout((deadline - now).min(WAIT_RECHECK), finished).await;
        hub.forget_waiters(id);
    }
}

/// The latest version of each artifact of the run's last steps (those
/// nothing depends on), by name: `{"version", "content"}` when stored
/// inline (up to the blob threshold, 8 KiB), else `{"version", "size",
/// "sha256", "href"}` to fetch it from; `"purged": true` once retention
/// took the body.
async fn outputs(
    state: &ApiState,
    run: &RunDetail,
) -> Result<std::collections::BTreeMap<String, Output>, ApiError> {
    let needed: std::collections::BTreeSet<&str> = run
        .steps
        .values()
        .flat_map(|s| s.depends_on.iter().map(String::as_str))
        .collect();
    let mut outputs = std::collections::BTreeMap::new();
    for (name, artifact) in &run.artifacts {
        if needed.contains(artifact.step.as_str()) || !run.steps.contains_key(&artifact.step) {
            continue;
        }
        let rows = state.reads.artifact_versions(&run.id, name).await?;
        let Some(row) = rows.into_iter().find(|r| r.version == artifact.latest) else {
            continue;
        };
        let stored: ArtifactContent =
            serde_json::from_value(row.content).map_err(|e| ApiError::internal(&e))?;
        let href = format!("/api/runs/{}/artifacts/{name}", run.id);
        let output = match stored {
            ArtifactContent::Inline(content) => Output::Inline {
                version: row.version,
                content,
            },
            ArtifactContent::Blob { sha256, size } => Output::Linked {
                version: row.version,
                size,
                sha256,
                href,
                purged: run.purged.is_some(),
            },
        };
        outputs.insert(name.clone(), output);
    }
    Ok(outputs)
}

/// `201 Created` for a new run. Its start's events are its whole history,
/// so their fold is exactly the detail the read model will hold.
fn created(id: &RunId, committed: &Committed) -> HttpResponse {
    let mut run = RunDetail::default();
    for envelope in committed {
        run.apply(envelope.sequence as u64, &envelope.payload);
    }
    HttpResponse::Created()
        .insert_header(("Location", format!("/api/runs/{id}")))
        .json(run)
}

/// A new run with the same template version, definition and input as a
/// failed or cancelled run, linked to it by `retry_of`.
#[utoipa::path(
    post, path = "/api/runs/{id}/retry", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 201, description = "The new run, linked by `retry_of`; `Location` is it.", body = RunDetail,
         headers(("Location" = String, description = "The new run's URL."))),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "Only a failed or cancelled run is retried.", body = ErrorBody),
    ),
)]
pub(super) async fn retry(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let original = run_id(&path)?;
    let (id, committed) = state.engine.retry_run(&original, &caller.cause()).await?;
    Ok(created(&id, &committed))
}

/// Lists runs, newest first (a user sees their own).
#[utoipa::path(
    get, path = "/api/runs", tag = "runs",
    params(ListRuns),
    responses((status = 200, description = "One page.", body = Page<crate::projections::RunSummary>)),
)]
pub(super) async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<ListRuns>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    if let Some(owner) = &query.owner {
        crate::domain::ids::UserId::parse(owner.as_str())
            .map_err(|e| ApiError::bad_request("invalid_owner", e.to_string()))?;
    }
    // A user lists their own runs, whatever they ask.
    let owner = match caller.principal() {
        Some(p) if !caller.is_admin() => {
            if query
                .owner
                .as_deref()
                .is_some_and(|o| o != p.user_id.as_str())
            {
                return Err(super::auth::forbidden("a user lists their own runs only"));
            }
            Some(p.user_id.to_string())
        }
        _ => query.owner.clone(),
    };
    if let Some(status) = &query.status {
        if RunStatus::parse(status).is_none() {
            return Err(ApiError::bad_request(
                "invalid_status",
                format!("unknown status '{status}': use queued, running, paused, completed, failed or cancelled"),
            ));
        }
    }
    if let Some(t) = &query.template_id {
        template_id(t)?;
    }
    if let Some(agent) = &query.agent {
        crate::domain::ids::AgentName::parse(agent.as_str())
            .map_err(|e| ApiError::bad_request("invalid_agent", e.to_string()))?;
    }
    let (limit, cursor) = PageQuery {
        limit: query.limit,
        cursor: query.cursor,
    }
    .checked()?;
    state.engine.settle_all().await;
    let mut page = state
        .reads
        .list_runs(
            query.status.as_deref(),
            query.template_id.as_deref(),
            query.agent.as_deref(),
            owner.as_deref(),
            limit,
            cursor,
        )
        .await?;
    let now = state.engine.clock().now();
    for summary in &mut page.items {
        summary.mark_stalled(now);
    }
    Ok(HttpResponse::Ok().json(page))
}

/// A run's detail; with `at`, as it was after that event (from the log).
#[utoipa::path(
    get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run id."), DetailQuery),
    responses(
        (status = 200, description = "The run.", body = RunDetail),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<DetailQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let detail = match query.at {
        None => detail(&state, &id).await?,
        Some(at) => detail_at(&state, &id, at).await?,
    };
    Ok(HttpResponse::Ok().json(detail))
}

/// The run as it was after event `at`, folded from its log (not the read
/// model): the document `runlog replay --at` prints. Nothing is computed
/// against the present (no `stalled`).
async fn detail_at(state: &ApiState, id: &RunId, at: i64) -> Result<RunDetail, ApiError> {
    if at < 1 {
        return Err(ApiError::bad_request(
            "invalid_at",
            "at is an event sequence of the run: 1 or more",
        ));
    }
    let events = state.log.follow_aggregate("Run", id.as_str(), 0).await?;
    let Some(last) = events.last().map(|e| e.sequence) else {
        return Err(ApiError::not_found(
            "run_not_found",
            format!("run '{id}' not found"),
        ));
    };
    if at as u64 > last {
        return Err(ApiError::bad_request(
            "invalid_at",
            format!("run '{id}' has events 1 to {last}; at={at} is past its last"),
        ));
    }
    Ok(RunDetail::replayed(
        events.iter().filter_map(Logged::as_run),
        Some(at as u64),
    ))
}

/// A run's events in order, paged by sequence.
#[utoipa::path(
    get, path = "/api/runs/{id}/events", tag = "runs",
    params(("id" = String, Path, description = "The run id."), EventsQuery),
    responses(
        (status = 200, description = "One page; `next_cursor` is the `after` of the next.", body = Page<EventView>),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn events(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let after = query.after.unwrap_or(0);
    let limit = query.limit.unwrap_or(MAX_EVENTS_PAGE);
    if after < 0 {
        return Err(ApiError::bad_request(
            "invalid_after",
            "after must be 0 or more",
        ));
    }
    if !(1..=MAX_EVENTS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must be between 1 and {MAX_EVENTS_PAGE}"),
        ));
    }
    if query.at_or_before.is_some_and(|n| n < 1) {
        return Err(ApiError::bad_request(
            "invalid_at_or_before",
            "at_or_before is an event sequence of the run: 1 or more",
        ));
    }
    // Sequences are dense (1 to the last), so a page that must stop at
    // `at_or_before` holds at most that many events after `after`.
    let page = query
        .at_or_before
        .map_or(limit, |n| limit.min((n - after).max(0)));
    // One more than asked tells whether another page follows.
    let mut events = if page == 0 {
        Vec::new()
    } else {
        state
            .log
            .events_of("Run", id.as_str(), after, page + 1)
            .await?
    };
    if events.is_empty() && (after == 0 || state.reads.run_detail(id.as_str()).await?.is_none()) {
        return Err(ApiError::not_found(
            "run_not_found",
            format!("run '{id}' not found"),
        ));
    }
    let more = events.len() as i64 > page && query.at_or_before.is_none_or(|n| after + page < n);
    events.truncate(page as usize);
    let next_cursor = more
        .then(|| events.last().map(|e| e.sequence.to_string()))
        .flatten();
    let items = events
        .into_iter()
        .map(|e| EventView::from_recorded(id.as_str(), e))
        .collect();
    Ok(HttpResponse::Ok().json(Page { items, next_cursor }))
}

/// One version of an artifact.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ArtifactVersionBody {
    /// The version, from 1.
    version: u32,
    /// The step that wrote it.
    step: String,
    /// The attempt that wrote it.
    attempt: u32,
    /// When (RFC 3339).
    created_at: String,
    /// The body; `null` when it was purged.
    content: Value,
    /// Set (true) when retention purged the body: the hash and size of
    /// what was removed stay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    purged: bool,
    /// The purged body's SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    /// The purged body's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
}

/// An artifact and its versions.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ArtifactBody {
    /// `step.output`.
    name: String,
    /// The version the run reads.
    latest: u32,
    /// Every version, oldest first.
    versions: Vec<ArtifactVersionBody>,
}

/// Every version of one artifact of a run.
#[utoipa::path(
    get, path = "/api/runs/{id}/artifacts/{name}", tag = "runs",
    params(("id" = String, Path, description = "The run id."), ("name" = String, Path, description = "The artifact, `step.output`.")),
    responses(
        (status = 200, description = "The artifact's versions.", body = ArtifactBody),
        (status = 404, description = "`run_not_found`, `artifact_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn artifact(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (raw_id, raw_name) = path.into_inner();
    let id = run_id(&raw_id)?;
    let name = ArtifactName::parse(raw_name)
        .map_err(|e| ApiError::bad_request("invalid_artifact_name", e.to_string()))?;
    let run = detail(&state, &id).await?;
    let Some(summary) = run.artifacts.get(name.as_str()) else {
        return Err(ApiError::not_found(
            "artifact_not_found",
            format!("run '{id}' has no artifact '{name}'"),
        ));
    };
    let mut versions = Vec::new();
    for row in state
        .reads
        .artifact_versions(id.as_str(), name.as_str())
        .await?
    {
        let stored: ArtifactContent =
            serde_json::from_value(row.content).map_err(|e| ApiError::internal(&e))?;
        let mut version = ArtifactVersionBody {
            version: row.version,
            step: row.step,
            attempt: row.attempt,
            created_at: row.created_at,
            content: Value::Null,
            purged: false,
            sha256: None,
            size: None,
        };
        match stored {
            ArtifactContent::Inline(value) => version.content = value,
            // A purged run's blob bodies are gone (or kept only for other
            // runs): each reads as purged, never as an error.
            ArtifactContent::Blob { sha256, size } if run.purged.is_some() => {
                version.purged = true;
                version.sha256 = Some(sha256);
                version.size = Some(size);
            }
            ArtifactContent::Blob { sha256, size } => {
                match state.engine.blobs().get(&sha256).await? {
                    Some(bytes) => {
                        version.content =
                            serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(&e))?;
                    }
                    // Purged after the detail was read (on another node, say):
                    // the log says so before any read model does.
                    None if purged_since(&state, &id, run.sequence).await? => {
                        version.purged = true;
                        version.sha256 = Some(sha256);
                        version.size = Some(size);
                    }
                    None => {
                        return Err(ApiError::internal(&std::io::Error::other(format!(
                            "blob {sha256} is missing"
                        ))))
                    }
                }
            }
        }
        versions.push(version);
    }
    Ok(HttpResponse::Ok().json(ArtifactBody {
        name: name.to_string(),
        latest: summary.latest,
        versions,
    }))
}

/// Longest cancel reason accepted.
pub(super) const MAX_REASON_CHARS: usize = 2_000;

/// Why a run is cancelled.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelBody {
    /// Up to 2,000 characters.
    #[schema(max_length = 2000)]
    reason: Option<String>,
}

/// The run after a control command, from the read model (which the read
/// waits for).
pub(super) async fn controlled(state: &ApiState, id: &RunId) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(detail(state, id).await?))
}

/// Pauses a run: running steps finish, no new step starts.
#[utoipa::path(
    post, path = "/api/runs/{id}/pause", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it (e.g. `run_not_paused`).", body = ErrorBody),
    ),
)]
pub(super) async fn pause(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    state.engine.pause(&id, &caller.cause()).await?;
    controlled(&state, &id).await
}

/// Resumes a paused run.
#[utoipa::path(
    post, path = "/api/runs/{id}/resume", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it (e.g. `run_not_paused`).", body = ErrorBody),
    ),
)]
pub(super) async fn resume(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    state.engine.resume(&id, &caller.cause()).await?;
    controlled(&state, &id).await
}

/// Cancels a run (running steps are asked to stop).
///
/// The body is optional (`{"reason": "…"}`), so it is parsed here: an
/// empty body means no reason, anything else must be that object.
#[utoipa::path(
    post, path = "/api/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    request_body(content = CancelBody, description = "Optional: why."),
    responses(
        (status = 200, description = "The run after the command.", body = RunDetail),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run's state does not allow it (e.g. `run_not_paused`).", body = ErrorBody),
    ),
)]
pub(super) async fn cancel(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let body: CancelBody = optional_body(&body)?;
    refuse_nul_text("reason", body.reason.as_deref())?;
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::bad_request(
            "invalid_reason",
            format!("reason is longer than {MAX_REASON_CHARS} characters"),
        ));
    }
    state
        .engine
        .cancel(&id, body.reason, &caller.cause())
        .await?;
    controlled(&state, &id).await
}

/// Whether run `id` recorded `ArtifactsPurged` after event `after`.
async fn purged_since(state: &ApiState, id: &RunId, after: u64) -> Result<bool, ApiError> {
    Ok(state
        .log
        .follow_aggregate("Run", id.as_str(), after)
        .await?
        .iter()
        .any(|e| {
            matches!(
                e.as_run(),
                Some((_, crate::domain::run::RunEvent::ArtifactsPurged { .. }))
            )
        }))
}

/// Which runs retention may purge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PurgeBody {
    /// RFC 3339: only a run that finished before this is purged.
    #[schema(format = DateTime)]
    finished_before: String,
}

/// Retention for one run: removes its artifact bodies (admins).
///
/// What `runlog purge` sends for each run it purges.
#[utoipa::path(
    post, path = "/api/runs/{id}/purge", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    request_body = PurgeBody,
    responses(
        (status = 200, description = "What was purged.", body = PurgeAnswer),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
        (status = 409, description = "The run has not finished, or finished after `finished_before`.", body = ErrorBody),
    ),
)]
pub(super) async fn purge(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<PurgeBody>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let finished_before =
        crate::projections::parse_rfc3339(&body.finished_before).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_finished_before",
                format!(
                    "finished_before {:?} is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)",
                    body.finished_before
                ),
            )
        })?;
    let purged = state
        .engine
        .purge(&id, finished_before, &caller.cause())
        .await?;
    let run = detail(&state, &id).await?;
    Ok(HttpResponse::Ok().json(PurgeAnswer {
        run_id: id.to_string(),
        recorded: purged.recorded,
        purged: run.purged,
        blobs: BlobsReleased {
            referenced: purged.released.referenced,
            deleted: purged.released.deleted,
            bytes_freed: purged.released.bytes,
        },
    }))
}

/// What a purge did.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct PurgeAnswer {
    /// The run.
    run_id: String,
    /// `ArtifactsPurged` was recorded now (false: purged before).
    recorded: bool,
    /// What the run's purge removed.
    purged: Option<crate::projections::PurgeView>,
    /// The blobs released.
    blobs: BlobsReleased,
}

/// Blobs a purge released.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct BlobsReleased {
    /// Blobs the run referenced.
    referenced: u64,
    /// Blobs deleted (no other run references them).
    deleted: u64,
    /// Their bytes.
    bytes_freed: u64,
}

/// The run's history as JSON Lines, as `runlog export RUN` writes it
/// (`runlog import` loads it elsewhere).
#[utoipa::path(
    get, path = "/api/runs/{id}/export", tag = "runs",
    params(("id" = String, Path, description = "The run id.")),
    responses(
        (status = 200, description = "One JSON object per line.", content_type = "application/x-ndjson", body = String),
        (status = 404, description = "`run_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn export(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = run_id(&path)?;
    let ids = vec![id.to_string()];
    if !state.history.unknown(&ids).await?.is_empty() {
        return Err(ApiError::not_found(
            "run_not_found",
            format!("run '{id}' not found"),
        ));
    }
    let mut body = Vec::new();
    state
        .history
        .export(&ids, |line| {
            serde_json::to_writer(&mut body, line)?;
            body.push(b'\n');
            Ok(())
        })
        .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"run-{id}.jsonl\""),
        ))
        .body(body))
}
