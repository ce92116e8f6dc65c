//! The HTTP API under `/api` (JSON), `/healthz`, and the WebSocket at
//! `/api/ws`. Handlers parse and check input, call the engine for commands
//! and the read models for queries; they never write a read model.
//!
//! Depends on `engine`, `projections` and (for raw log reads) store handles.

mod accounts;
mod admin;
pub mod auth;
pub mod contract;
mod error;
pub mod forward;
mod hygiene;
mod interactive;
pub mod limits;
pub mod openapi;
mod origin;
mod runs;
mod steering;
mod templates;
mod workers;
mod ws;

use actix_web::{error::JsonPayloadError, web, HttpRequest, HttpResponse};
use serde::Deserialize;

pub use auth::{Access, Caller};
pub use error::ApiError;
pub use origin::AllowedOrigins;
pub use workers::WorkerAuth;

use crate::engine::Engine;
use crate::projections::{decode_cursor, ReadModels, DEFAULT_PAGE, MAX_PAGE};
use crate::store::EventLog;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    /// Commands.
    pub engine: Engine,
    /// Queries.
    pub reads: ReadModels,
    /// The raw log (events endpoint, WebSocket catch-up).
    pub log: EventLog,
    /// Who may call the worker endpoints.
    pub workers: WorkerAuth,
    /// Who may call the others.
    pub access: Access,
    /// Run histories (export).
    pub history: crate::store::History,
    /// Projection rebuilds (admin endpoints).
    pub rebuilds: crate::projections::Rebuilds,
    /// This node, as `GET /api/admin/nodes` shows it on SQLite (on
    /// PostgreSQL the nodes table says).
    pub node: NodeIdentity,
    /// The web origins besides this server's own allowed to use the API.
    pub origins: origin::AllowedOrigins,
    /// Bounds on run inputs, message rates and WebSocket use.
    pub limits: limits::Limits,
}

/// Who this node is.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// Its id (`--node-id`).
    pub id: String,
    /// Where peers reach it (`--advertise-url`).
    pub address: String,
    /// When it started (RFC 3339).
    pub started_at: String,
}

/// Registers every route on an actix-web app.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        let max_body = state.limits.bounds.max_body_bytes;
        cfg.app_data(web::Data::new(state))
            .app_data(
                web::JsonConfig::default()
                    .limit(max_body)
                    .content_type_required(false)
                    .error_handler(move |e, req| json_error(e, req, max_body)),
            )
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| {
                    ApiError::bad_request("invalid_query", e.to_string()).into()
                }),
            )
            .app_data(
                web::PathConfig::default().error_handler(|e, _| {
                    ApiError::bad_request("invalid_path", e.to_string()).into()
                }),
            )
            .route("/healthz", web::get().to(healthz))
            .service(
                web::scope("/api")
                    // Outermost last: errors become JSON, HEAD is GET, a
                    // foreign web page may not act (CORS), the caller is
                    // authenticated and authorised, a body must
                    // be JSON, then forwarding between nodes.
                    .wrap(actix_web::middleware::from_fn(forward::forward))
                    .wrap(actix_web::middleware::from_fn(hygiene::json_bodies))
                    .wrap(actix_web::middleware::from_fn(auth::authenticate))
                    .wrap(actix_web::middleware::from_fn(origin::check_origin))
                    .wrap(actix_web::middleware::from_fn(hygiene::head_as_get))
                    .wrap(actix_web::middleware::from_fn(hygiene::json_errors))
                    .service(
                        resource("/templates")
                            .post(templates::create)
                            .get(templates::list),
                    )
                    .service(resource("/templates/available").get(templates::available))
                    .service(
                        resource("/templates/{id}")
                            .get(templates::get)
                            .put(templates::revise),
                    )
                    .service(resource("/templates/{id}/archive").post(templates::archive))
                    .service(resource("/runs").post(runs::start).get(runs::list))
                    .service(resource("/runs/{id}").get(runs::get))
                    .service(resource("/runs/{id}/retry").post(runs::retry))
                    .service(resource("/runs/{id}/pause").post(runs::pause))
                    .service(resource("/runs/{id}/resume").post(runs::resume))
                    .service(resource("/runs/{id}/cancel").post(runs::cancel))
                    .service(resource("/runs/{id}/redirect").post(steering::redirect))
                    .service(
                        resource("/runs/{id}/messages")
                            .post(steering::post_message)
                            .get(steering::messages),
                    )
                    .service(
                        resource("/runs/{id}/messages/{message_id}/click").post(interactive::click),
                    )
                    .service(resource("/runs/{id}/auto-run").put(steering::auto_run))
                    .service(resource("/runs/{id}/steps/{step}/approve").post(steering::approve))
                    .service(resource("/runs/{id}/steps/{step}/retry").post(steering::retry_step))
                    .service(resource("/runs/{id}/steps/{step}/trigger").post(steering::trigger))
                    .service(resource("/runs/{id}/events").get(runs::events))
                    .service(resource("/runs/{id}/export").get(runs::export))
                    .service(resource("/runs/{id}/purge").post(runs::purge))
                    .service(resource("/runs/{id}/artifacts/{name}").get(runs::artifact))
                    .service(
                        resource("/runs/{id}/artifacts/{name}/rollback").post(steering::rollback),
                    )
                    .service(resource("/agents").get(workers::agents))
                    .service(resource("/admin/nodes").get(admin::nodes))
                    .service(resource("/admin/projections").get(admin::projections))
                    .service(resource("/admin/projections/{name}/rebuild").post(admin::rebuild))
                    .service(resource("/workers/claim").post(workers::claim))
                    .service(resource("/internal/runs/{id}/claims").post(workers::peer_claim))
                    .service(resource("/tasks/{task_id}/heartbeat").post(workers::heartbeat))
                    .service(resource("/tasks/{task_id}/complete").post(workers::complete))
                    .service(resource("/tasks/{task_id}/fail").post(workers::fail))
                    .service(resource("/tasks/{task_id}/comment").post(workers::comment))
                    .service(resource("/tasks/{task_id}/release").post(workers::release))
                    .service(
                        resource("/users")
                            .post(accounts::create_user)
                            .get(accounts::list_users),
                    )
                    .service(resource("/users/{id}").get(accounts::get_user))
                    .service(
                        resource("/users/{id}/tokens")
                            .post(accounts::create_token)
                            .get(accounts::list_tokens),
                    )
                    .service(resource("/tokens/{id}").delete(accounts::revoke_token))
                    .service(resource("/me").get(accounts::me))
                    .service(resource("/ws/ticket").post(accounts::ws_ticket))
                    .service(resource("/ws").get(ws::connect))
                    .service(resource("/openapi.json").get(openapi_document))
                    .default_service(web::to(not_found)),
            )
            .default_service(web::to(not_found));
    }
}

fn json_error(e: JsonPayloadError, _: &HttpRequest, max_body: usize) -> actix_web::Error {
    let error = match &e {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError::new(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {max_body} bytes"),
            )
        }
        JsonPayloadError::ContentType => {
            ApiError::bad_request("invalid_content_type", "send JSON (application/json)")
        }
        JsonPayloadError::Deserialize(d) => ApiError::bad_request("invalid_body", d.to_string()),
        other => ApiError::bad_request("invalid_body", other.to_string()),
    };
    error.into()
}

/// The OpenAPI 3.1 document of this API (no token needed).
#[utoipa::path(
    get, path = "/api/openapi.json", tag = "contract",
    responses((status = 200, description = "This document.", content_type = "application/json", body = Object)),
)]
async fn openapi_document(state: web::Data<ApiState>) -> HttpResponse {
    let (mut all, mut remote) = (Vec::new(), Vec::new());
    for agent in state.engine.agents() {
        if agent.info.kind == crate::engine::AgentKind::Remote {
            remote.push(agent.info.name.clone());
        }
        all.push(agent.info.name);
    }
    let max_steps = state.engine.definition_limits().max_steps;
    openapi::serve(&state.limits.bounds, max_steps, &all, &remote)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// A resource whose other methods get a JSON `405 method_not_allowed`.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// `405` with `Allow` (the methods the contract lists for the resource).
async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let refused = ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    );
    Err(
        match req
            .match_pattern()
            .and_then(|p| openapi::allowed_methods(&p))
        {
            Some(allowed) => refused.with_header("allow", allowed),
            None => refused,
        },
    )
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "no_such_route",
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Longest idempotency key accepted (bytes).
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// The request's `Idempotency-Key`, if it has one: 1 to
/// [`MAX_IDEMPOTENCY_KEY`] visible ASCII characters, else a 400.
pub(crate) fn idempotency_key(req: &actix_web::HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY)
        .filter(|k| k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
                ),
            )
        })?;
    Ok(Some(key.to_string()))
}

/// Refuses text with a NUL character anywhere in `value` (strings and
/// keys): PostgreSQL cannot store it in `text` or `jsonb`, and SQLite
/// would, so the two backends would disagree.
pub(crate) fn refuse_nul(field: &str, value: &serde_json::Value) -> Result<(), ApiError> {
    fn has_nul(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().any(has_nul),
            serde_json::Value::Object(map) => {
                map.iter().any(|(k, v)| k.contains('\0') || has_nul(v))
            }
            _ => false,
        }
    }
    if has_nul(value) {
        return Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} contains a NUL character (\\u0000), which cannot be stored"),
        ));
    }
    Ok(())
}

/// Refuses a NUL character in an optional text field.
pub(crate) fn refuse_nul_text(field: &str, text: Option<&str>) -> Result<(), ApiError> {
    match text {
        Some(t) => refuse_nul(field, &serde_json::Value::String(t.to_string())),
        None => Ok(()),
    }
}

/// A whole number as JSON Schema has it, `3` or `3.0` alike (serde takes
/// only the first for an integer field); anything else is refused.
fn whole_number<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
    max: u64,
) -> Result<u64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    number
        .as_u64()
        .or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= max as f64)
                .map(|f| f as u64)
        })
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "expected a whole number from 0 to {max}, not {number}"
            ))
        })
}

/// [`whole_number`] for a `u64` field.
pub(crate) fn whole_u64<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<u64, D::Error> {
    whole_number(deserializer, u64::MAX)
}

/// [`whole_number`] for a `u32` field.
pub(crate) fn whole_u32<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<u32, D::Error> {
    whole_number(deserializer, u64::from(u32::MAX)).map(|n| n as u32)
}

/// Rewrites whole numbers written with a fraction (`3.0`) as integers
/// (`3`), everywhere in `value`: JSON Schema counts them as integers, and
/// so does the server when it reads a definition.
pub(crate) fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) {
                if f >= 0.0 && f <= u64::MAX as f64 {
                    *value = serde_json::Value::from(f as u64);
                } else if f < 0.0 && f >= i64::MIN as f64 {
                    *value = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        serde_json::Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// Parses an optional JSON body: an empty body is `T::default()`, anything
/// else must be a `T`.
pub(crate) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    body: &[u8],
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// `?limit=&cursor=` of every list endpoint.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// Items per page (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl PageQuery {
    /// The checked page size.
    fn limit(&self) -> Result<u32, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {MAX_PAGE}"),
            ));
        }
        Ok(limit)
    }

    /// The checked page size and decoded cursor.
    fn checked(&self) -> Result<(u32, Option<(i64, String)>), ApiError> {
        let limit = self.limit()?;
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this server returned")
            })?),
        };
        Ok((limit, cursor))
    }
}
