//! Account endpoints: users (admin), tokens (admin, or a user's own),
//! `GET /api/me`, and WebSocket tickets for browsers.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{forbidden, TICKET_TTL};
use super::openapi::ErrorBody;
use super::{optional_body, ApiError, ApiState, Caller, PageQuery};
use crate::domain::ids::{TokenId, UserId};
use crate::domain::user::{check_user_name, Role};
use crate::engine::token_digest;
use crate::projections::{parse_rfc3339, Page, TokenView, UserView};

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateUser {
    /// Unique; letters, digits, `.`, `_`, `-`.
    name: String,
    /// `admin` or `user`.
    #[schema(pattern = "^(admin|user)$")]
    role: String,
}

/// A new token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateToken {
    /// What it is for.
    name: String,
    /// When it stops working (RFC 3339); never when absent.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// It may only read.
    #[serde(default)]
    read_only: bool,
}

/// A token just issued: the only time the token is shown.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct IssuedToken {
    #[serde(flatten)]
    view: TokenView,
    /// The token (`rl_…`): keep it; it is never shown again.
    token: String,
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Me {
    /// The user's id (null without accounts).
    id: Option<String>,
    /// The user's name (`anonymous` without accounts).
    name: String,
    /// `admin` or `user`.
    role: String,
    /// Whether the server has accounts (false under `--no-auth`).
    auth: bool,
    /// The token the request came with.
    token: Option<TokenView>,
}

/// A WebSocket ticket.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Ticket {
    /// Put it in the URL: `/api/ws?ticket=…` (single use).
    ticket: String,
    /// When it stops working (RFC 3339).
    expires_at: String,
}

fn user_id(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|e| ApiError::bad_request("invalid_user_id", e.to_string()))
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::not_found("user_not_found", format!("user '{id}' not found"))
}

/// The user `raw` names, if the caller may see them (themselves, or
/// anyone for an admin); another user's account answers as one that does
/// not exist.
async fn visible_user(state: &ApiState, caller: &Caller, raw: &str) -> Result<UserView, ApiError> {
    let id = user_id(raw)?;
    if caller.require_self_or_admin(id.as_str()).is_err() {
        return Err(user_not_found(id.as_str()));
    }
    state
        .reads
        .user(id.as_str())
        .await?
        .ok_or_else(|| user_not_found(id.as_str()))
}

/// Creates a user (admins).
#[utoipa::path(
    post, path = "/api/users", tag = "accounts",
    request_body = CreateUser,
    responses(
        (status = 201, description = "The user; `Location` is it.", body = UserView,
         headers(("Location" = String, description = "The user's URL."))),
        (status = 409, description = "`user_exists`.", body = ErrorBody),
    ),
)]
pub(super) async fn create_user(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<CreateUser>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let Some(role) = Role::parse(&body.role) else {
        return Err(ApiError::bad_request(
            "invalid_role",
            format!(
                "role must be 'admin' or 'user', not '{}'",
                body.role.chars().take(40).collect::<String>()
            ),
        ));
    };
    check_user_name(&body.name)?;
    if state.reads.user_by_name(&body.name).await?.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            format!("a user named '{}' exists", body.name),
        ));
    }
    let id = state
        .engine
        .create_user(None, body.name, role, &caller.cause())
        .await?;
    let user = state
        .reads
        .user(id.as_str())
        .await?
        .ok_or_else(|| user_not_found(id.as_str()))?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/users/{id}")))
        .json(user))
}

/// Lists users (admins).
#[utoipa::path(
    get, path = "/api/users", tag = "accounts",
    params(super::PageQuery),
    responses((status = 200, description = "One page.", body = Page<UserView>)),
)]
pub(super) async fn list_users(
    state: web::Data<ApiState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = query.checked()?;
    Ok(HttpResponse::Ok().json(state.reads.list_users(limit, cursor).await?))
}

/// One user (admins, or the user themselves).
#[utoipa::path(
    get, path = "/api/users/{id}", tag = "accounts",
    params(("id" = String, Path, description = "The user id.")),
    responses(
        (status = 200, description = "The user.", body = UserView),
        (status = 404, description = "`user_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn get_user(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(visible_user(&state, &caller, &path).await?))
}

/// Issues a token to a user (admins, or the user themselves).
#[utoipa::path(
    post, path = "/api/users/{id}/tokens", tag = "accounts",
    params(("id" = String, Path, description = "The user id.")),
    request_body = CreateToken,
    responses(
        (status = 201, description = "The token, shown this once.", body = IssuedToken),
        (status = 404, description = "`user_not_found`.", body = ErrorBody),
        (status = 409, description = "`too_many_tokens`.", body = ErrorBody),
    ),
)]
pub(super) async fn create_token(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<CreateToken>,
) -> Result<HttpResponse, ApiError> {
    let id = user_id(&path)?;
    caller.require_self_or_admin(id.as_str())?;
    let body = body.into_inner();
    let expires_at = match &body.expires_at {
        None => None,
        Some(text) => Some(parse_rfc3339(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_expiry",
                "expires_at must be an RFC 3339 time, such as 2027-01-31T00:00:00Z",
            )
        })?),
    };
    if state.reads.user(id.as_str()).await?.is_none() {
        return Err(user_not_found(id.as_str()));
    }
    let issued = state
        .engine
        .issue_token(&id, body.name, body.read_only, expires_at, &caller.cause())
        .await?;
    let view = state
        .reads
        .token(issued.id.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::internal(&std::io::Error::other(
                "the token was issued but is not in the read model",
            ))
        })?;
    let answer = IssuedToken {
        view,
        token: issued.token,
    };
    Ok(HttpResponse::Created()
        // Shown once: no cache may keep it.
        .insert_header(("Cache-Control", "no-store"))
        .json(answer))
}

/// A user's tokens (never the tokens themselves).
#[utoipa::path(
    get, path = "/api/users/{id}/tokens", tag = "accounts",
    params(("id" = String, Path, description = "The user id.")),
    responses(
        (status = 200, description = "Every token of the user.", body = Page<TokenView>),
        (status = 404, description = "`user_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn list_tokens(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = visible_user(&state, &caller, &path).await?;
    let tokens = state.reads.tokens_of(&user.id).await?;
    Ok(HttpResponse::Ok().json(Page {
        items: tokens,
        next_cursor: None,
    }))
}

/// Revokes a token (admins, or its holder).
#[utoipa::path(
    delete, path = "/api/tokens/{id}", tag = "accounts",
    params(("id" = String, Path, description = "The token id.")),
    responses(
        (status = 200, description = "The revoked token.", body = TokenView),
        (status = 404, description = "`token_not_found`.", body = ErrorBody),
        (status = 409, description = "`token_revoked`: revoked already.", body = ErrorBody),
    ),
)]
pub(super) async fn revoke_token(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = TokenId::parse(path.as_str())
        .map_err(|e| ApiError::bad_request("invalid_token_id", e.to_string()))?;
    let not_found = || ApiError::not_found("token_not_found", format!("token '{id}' not found"));
    let token: TokenView = state
        .reads
        .token(id.as_str())
        .await?
        .ok_or_else(not_found)?;
    if caller.require_self_or_admin(&token.user_id).is_err() {
        return Err(not_found());
    }
    let holder = user_id(&token.user_id)?;
    state
        .engine
        .revoke_token(&holder, id.clone(), &caller.cause())
        .await?;
    state.access.forget(id.as_str());
    let token = state
        .reads
        .token(id.as_str())
        .await?
        .ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(token))
}

/// Who the token belongs to.
#[utoipa::path(
    get, path = "/api/me", tag = "accounts",
    responses((status = 200, description = "The caller.", body = Me)),
)]
pub(super) async fn me(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let Some(p) = caller.principal() else {
        return Ok(HttpResponse::Ok().json(Me {
            id: None,
            name: "anonymous".into(),
            role: "admin".into(),
            auth: false,
            token: None,
        }));
    };
    let token = state.reads.token(&p.token_id).await?;
    Ok(HttpResponse::Ok().json(Me {
        id: Some(p.user_id.to_string()),
        name: p.name.clone(),
        role: p.role.as_str().to_string(),
        auth: true,
        token,
    }))
}

/// A single-use ticket, good for [`TICKET_TTL`], that a browser puts in
/// the WebSocket URL (`/api/ws?ticket=…`) instead of its token.
#[utoipa::path(
    post, path = "/api/ws/ticket", tag = "accounts",
    request_body(content = Object, description = "Empty, or an object (ignored)."),
    responses((status = 200, description = "The ticket.", body = Ticket)),
)]
pub(super) async fn ws_ticket(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let _: serde_json::Map<String, serde_json::Value> = optional_body(&body)?;
    let token = match &caller {
        Caller::User(p) => p.digest.clone(),
        Caller::Anonymous if !state.access.enabled() => "-".to_string(),
        Caller::Anonymous => return Err(forbidden("a ticket stands for a token")),
    };
    let ticket = format!("wst_{}", hex::encode(crate::engine::random_bytes()));
    let now = state.engine.clock().now();
    let expires = now.plus_millis(u64::try_from(TICKET_TTL.as_millis()).unwrap_or(30_000));
    state
        .access
        .store()
        .put_ticket(&token_digest(&ticket), &token, now.0, expires.0)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(Ticket {
            ticket,
            expires_at: expires.to_rfc3339(),
        }))
}
