//! Who is calling, and what they may do (docs/operations.md, "Accounts").
//!
//! [`authenticate`] runs on every `/api` request but the worker protocol's
//! (which takes the worker token) and the peers' (`/api/internal`): it
//! reads `Authorization: Bearer <token>` (or, on the WebSocket upgrade
//! only, `?ticket=`), finds the token's holder, and refuses what the
//! holder may not do before any handler runs:
//!
//! - no token, a malformed, unknown, expired or revoked one: 401 with
//!   `WWW-Authenticate`;
//! - the worker token: 403 (it only claims and reports tasks);
//! - a read-only token on anything but a read: 403 `read_only_token`;
//! - a `user` on an admin endpoint: 403 `forbidden`;
//! - a `user` on a run that is not theirs: 404 `run_not_found`, exactly
//!   what a run that does not exist answers (ids do not leak).
//!
//! Handlers take the [`Caller`] it found. Tokens are looked up by SHA-256
//! digest and the answer kept for [`CACHE_FOR`], so a request costs a hash
//! and a map lookup; a revocation through this node forgets the token at
//! once, other nodes within [`CACHE_FOR`]. A token's text is never logged,
//! stored or put in an error.

use std::collections::HashMap;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};

use sha2::Digest;

use super::{ApiError, ApiState, WorkerAuth};
use crate::domain::ids::{RunId, Timestamp, UserId};
use crate::domain::user::{token, Role};
use crate::engine::{token_digest, Cause, SharedClock};
use crate::projections::{ReadModels, TokenIdentity};
use crate::store::AccessStore;

/// How long a token's holder is remembered before it is looked up again
/// (the longest a revocation through another node takes to bite).
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// How often a token's last use is written, at most.
pub const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// How long a WebSocket ticket is good for.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tokens remembered at once (the cache starts over past it).
const CACHE_LIMIT: usize = 10_000;

/// The holder of a valid token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user_id: UserId,
    /// Their name.
    pub name: String,
    /// Their role.
    pub role: Role,
    /// The token's id.
    pub token_id: String,
    /// Whether the token may only read.
    pub read_only: bool,
    /// When the token expires, if ever.
    pub expires_at: Option<Timestamp>,
    /// The token's digest (to check it again on a long connection).
    pub(super) digest: String,
}

impl Principal {
    /// The token's digest.
    pub(super) fn digest(&self) -> &str {
        &self.digest
    }
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A server run with `--no-auth`: anyone, with every right.
    Anonymous,
    /// The holder of an API token.
    User(Principal),
}

impl Caller {
    /// Who the events of the caller's commands say caused them.
    pub fn cause(&self) -> Cause {
        match self {
            Self::Anonymous => Cause::Anonymous,
            Self::User(p) => Cause::User(p.user_id.clone()),
        }
    }

    /// Whether the caller sees and steers every run.
    pub fn is_admin(&self) -> bool {
        match self {
            Self::Anonymous => true,
            Self::User(p) => p.role == Role::Admin,
        }
    }

    /// The user, unless anonymous.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Anonymous => None,
            Self::User(p) => Some(p),
        }
    }

    /// Whether the caller may see a run owned by `owner`.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        match self {
            Self::Anonymous => true,
            Self::User(p) => p.role == Role::Admin || owner == Some(p.user_id.as_str()),
        }
    }

    /// Refuses a caller who is not an admin (403).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(forbidden("this needs an admin"))
        }
    }

    /// Refuses a caller who is neither an admin nor `user`.
    pub fn require_self_or_admin(&self, user: &str) -> Result<(), ApiError> {
        match self {
            Self::User(p) if p.role != Role::Admin && p.user_id.as_str() != user => {
                Err(forbidden("only an admin may manage another user's tokens"))
            }
            _ => Ok(()),
        }
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        // Set by `authenticate`; a route it skips has no caller (fail
        // closed).
        ready(
            req.extensions()
                .get::<Caller>()
                .cloned()
                .ok_or_else(|| unauthorized("missing_token", "this endpoint needs a token")),
        )
    }
}

/// 403 `forbidden`.
pub(super) fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message).with_header(
        "WWW-Authenticate",
        "Bearer realm=\"runlog\", error=\"invalid_token\"",
    )
}

struct Remembered {
    identity: TokenIdentity,
    looked_up: Instant,
    touched: Option<Instant>,
}

/// Authentication: finds the holder of a token, with a short memory.
#[derive(Clone)]
pub struct Access {
    inner: Arc<AccessInner>,
}

struct AccessInner {
    enabled: bool,
    reads: ReadModels,
    store: AccessStore,
    workers: WorkerAuth,
    clock: SharedClock,
    cache: Mutex<HashMap<String, Remembered>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("enabled", &self.inner.enabled)
            .finish()
    }
}

impl Access {
    /// Accounts on (`enabled`) or off (`--no-auth`: everyone is
    /// [`Caller::Anonymous`]).
    pub fn new(
        enabled: bool,
        reads: ReadModels,
        store: AccessStore,
        workers: WorkerAuth,
        clock: SharedClock,
    ) -> Self {
        Self {
            inner: Arc::new(AccessInner {
                enabled,
                reads,
                store,
                workers,
                clock,
                cache: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether accounts are on.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The store of tickets and token use.
    pub(super) fn store(&self) -> &AccessStore {
        &self.inner.store
    }

    /// The holder of the token `text`.
    pub async fn identify(&self, text: &str) -> Result<Caller, ApiError> {
        // One hash serves both checks.
        let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.inner.workers.is_worker_digest(&digest) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "worker_token",
                "the worker token only claims and reports tasks; use an API token",
            ));
        }
        if !token::is_well_formed(text) {
            return Err(unauthorized(
                "malformed_token",
                "that is not a runlog API token (rl_…); check for a typo",
            ));
        }
        self.by_digest(&hex::encode(digest)).await
    }

    /// The holder of the token with this digest.
    pub(super) async fn by_digest(&self, digest: &str) -> Result<Caller, ApiError> {
        let now = Instant::now();
        let remembered = {
            let cache = self.lock();
            cache
                .get(digest)
                .filter(|r| now.duration_since(r.looked_up) < CACHE_FOR)
                .map(|r| (r.identity.clone(), r.touched))
        };
        let (identity, touched) = match remembered {
            Some(found) => found,
            None => {
                // Unknown digests are not remembered: a token issued a
                // moment ago works at once, and guesses cannot fill memory.
                let Some(identity) = self.inner.reads.token_identity(digest).await? else {
                    return Err(unauthorized("invalid_token", "the token is not valid"));
                };
                let mut cache = self.lock();
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                let touched = cache.get(digest).and_then(|r| r.touched);
                cache.insert(
                    digest.to_string(),
                    Remembered {
                        identity: identity.clone(),
                        looked_up: now,
                        touched,
                    },
                );
                (identity, touched)
            }
        };
        if identity.revoked {
            return Err(unauthorized("token_revoked", "the token was revoked"));
        }
        let at = self.inner.clock.now();
        if identity.expires_at.is_some_and(|e| e <= at) {
            return Err(unauthorized("token_expired", "the token has expired"));
        }
        let Some(role) = identity.role else {
            return Err(forbidden(
                "the token's user has a role this server does not know",
            ));
        };
        let Ok(user_id) = UserId::parse(identity.user_id.clone()) else {
            return Err(unauthorized("invalid_token", "the token is not valid"));
        };
        if touched.is_none_or(|t| now.duration_since(t) >= TOUCH_EVERY) {
            self.touch(digest, &identity.token_id, now, at);
        }
        Ok(Caller::User(Principal {
            user_id,
            name: identity.user_name,
            role,
            token_id: identity.token_id,
            read_only: identity.read_only,
            expires_at: identity.expires_at,
            digest: digest.to_string(),
        }))
    }

    /// Writes the token's last use in the background (a failure only
    /// delays it to the next request).
    fn touch(&self, digest: &str, token_id: &str, now: Instant, at: Timestamp) {
        if let Some(r) = self.lock().get_mut(digest) {
            r.touched = Some(now);
        }
        let store = self.inner.store.clone();
        let token_id = token_id.to_string();
        actix_web::rt::spawn(async move {
            // To the minute: finer says more about a token's holder than a
            // "last used" column needs to.
            let minute = at.0 - at.0.rem_euclid(60_000);
            if let Err(e) = store.touch(&token_id, minute).await {
                tracing::warn!(%token_id, error = %e, "cannot record a token's last use");
            }
        });
    }

    /// Forgets what was remembered of a token (after its revocation).
    pub fn forget(&self, token_id: &str) {
        self.lock().retain(|_, r| r.identity.token_id != token_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remembered>> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Routes that authenticate otherwise: the worker protocol (the worker
/// token) and the nodes' own calls.
fn skips(path: &str) -> bool {
    path == "/api/openapi.json"
        || path.starts_with("/api/workers/")
        || path.starts_with("/api/tasks/")
        || path.starts_with("/api/internal/")
}

/// Whether only admins may call `method path`.
fn admin_only(method: &Method, path: &str) -> bool {
    let reads = method == Method::GET || method == Method::HEAD;
    path.starts_with("/api/admin/")
        || path == "/api/users"
        || (path.starts_with("/api/templates") && !reads)
        || (path.starts_with("/api/runs/") && path.ends_with("/purge"))
}

/// Whether `method path` changes nothing (what a read-only token may do;
/// a WebSocket ticket only lets it read too).
fn is_read(method: &Method, path: &str) -> bool {
    method == Method::GET
        || method == Method::HEAD
        || method == Method::OPTIONS
        || (method == Method::POST && path == "/api/ws/ticket")
}

/// The run a path is about (`/api/runs/{id}` and below).
fn run_in_path(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/runs/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// The bearer token of a request, if it sends one.
pub(super) fn bearer(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110, 11.1).
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The `?ticket=` of a WebSocket upgrade.
fn ticket(req: &HttpRequest) -> Option<String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("ticket").cloned())
}

/// Refuses `caller` if they may not see the run `raw` (404, as for a run
/// that does not exist). The read models may not hold a run started a
/// moment ago: a miss waits for this node's writes and looks again.
pub(super) async fn check_run(
    state: &ApiState,
    caller: &Caller,
    raw: &str,
) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    let not_found = || ApiError::not_found("run_not_found", format!("run '{raw}' not found"));
    let Ok(id) = RunId::parse(raw) else {
        // The handler says what is wrong with the id.
        return Ok(());
    };
    let owner = match state.reads.run_owner(id.as_str()).await? {
        Some(owner) => owner,
        None => {
            state.engine.settle_run(&id).await;
            state
                .reads
                .run_owner(id.as_str())
                .await?
                .ok_or_else(not_found)?
        }
    };
    if caller.sees(owner.as_deref()) {
        Ok(())
    } else {
        Err(not_found())
    }
}

/// The middleware (see the module's documentation).
pub(super) async fn authenticate(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let path = req.path().to_string();
    if skips(&path) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    match admit(&req, &state, &path).await {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_boxed_body)
        }
        // Answered here, as a response (not an error), so that the layers
        // outside (CORS) can still add to it.
        Err(refused) => Ok(req.into_response(refused.error_response())),
    }
}

/// Who the request comes from, and whether they may make it.
async fn admit(
    req: &ServiceRequest,
    state: &web::Data<ApiState>,
    path: &str,
) -> Result<Caller, actix_web::Error> {
    let path = path.to_string();
    let caller = if !state.access.enabled() {
        Caller::Anonymous
    } else {
        let http = req.request();
        match bearer(http) {
            Some(text) => state.access.identify(text).await?,
            None => match ticket(http).filter(|_| path == "/api/ws") {
                Some(ticket) => {
                    let now = state.engine.clock().now().0;
                    let taken = state
                        .access
                        .store()
                        .take_ticket(&token_digest(&ticket), now)
                        .await
                        .map_err(ApiError::from)?;
                    let Some(token) = taken else {
                        return Err(unauthorized(
                            "invalid_ticket",
                            "the ticket is unknown, used or expired; get a new one from POST /api/ws/ticket",
                        )
                        .into());
                    };
                    state.access.by_digest(&token).await?
                }
                None => {
                    return Err(unauthorized(
                        "missing_token",
                        "send an API token as 'Authorization: Bearer <token>'",
                    )
                    .into())
                }
            },
        }
    };
    let method = req.method().clone();
    if let Caller::User(p) = &caller {
        if p.read_only && !is_read(&method, &path) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "read_only_token",
                "this token may only read",
            )
            .into());
        }
    }
    if admin_only(&method, &path) {
        caller.require_admin()?;
    }
    if let Some(run) = run_in_path(&path) {
        check_run(state, &caller, run).await?;
    }
    Ok(caller)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_routes_are_the_template_writes_accounts_operations_and_purges() {
        let get = Method::GET;
        let post = Method::POST;
        assert!(admin_only(&post, "/api/templates"));
        assert!(admin_only(&Method::PUT, "/api/templates/t1"));
        assert!(admin_only(&post, "/api/templates/t1/archive"));
        assert!(!admin_only(&get, "/api/templates"));
        assert!(!admin_only(&get, "/api/templates/t1"));
        assert!(admin_only(&get, "/api/users"));
        assert!(admin_only(&post, "/api/users"));
        assert!(!admin_only(&post, "/api/users/u1/tokens"));
        assert!(admin_only(&get, "/api/admin/nodes"));
        assert!(admin_only(&post, "/api/runs/r1/purge"));
        assert!(!admin_only(&post, "/api/runs/r1/pause"));
        assert!(!admin_only(&post, "/api/runs"));
    }

    #[test]
    fn reads_are_what_a_read_only_token_may_do() {
        assert!(is_read(&Method::GET, "/api/runs"));
        assert!(is_read(&Method::HEAD, "/api/runs"));
        assert!(is_read(&Method::POST, "/api/ws/ticket"));
        assert!(!is_read(&Method::POST, "/api/runs"));
        assert!(!is_read(&Method::DELETE, "/api/tokens/t1"));
    }

    #[test]
    fn the_run_of_a_path_is_its_third_segment() {
        assert_eq!(run_in_path("/api/runs/r1"), Some("r1"));
        assert_eq!(run_in_path("/api/runs/r1/steps/a/retry"), Some("r1"));
        assert_eq!(run_in_path("/api/runs"), None);
        assert_eq!(run_in_path("/api/runs/"), None);
        assert_eq!(run_in_path("/api/templates/t"), None);
    }

    #[test]
    fn the_worker_protocol_and_the_peers_authenticate_otherwise() {
        assert!(skips("/api/workers/claim"));
        assert!(skips("/api/tasks/t/complete"));
        assert!(skips("/api/internal/runs/r/claims"));
        assert!(!skips("/api/runs"));
        assert!(!skips("/api/ws"));
    }

    #[test]
    fn users_see_their_own_runs_admins_and_anonymous_every_run() {
        let principal = |role| Principal {
            user_id: UserId::parse("u1").unwrap(),
            name: "ada".into(),
            role,
            token_id: "t".into(),
            read_only: false,
            expires_at: None,
            digest: String::new(),
        };
        let user = Caller::User(principal(Role::User));
        assert!(user.sees(Some("u1")));
        assert!(!user.sees(Some("u2")));
        assert!(!user.sees(None));
        assert!(user.require_admin().is_err());
        assert!(user.require_self_or_admin("u1").is_ok());
        assert!(user.require_self_or_admin("u2").is_err());
        let admin = Caller::User(principal(Role::Admin));
        assert!(admin.sees(None) && admin.sees(Some("u2")));
        assert!(Caller::Anonymous.sees(None));
        assert_eq!(Caller::Anonymous.cause(), Cause::Anonymous);
    }
}
