//! The API error type: every failure leaves as `{"error": {"code",
//! "message"}}` with the right status. Rule violations map to 4xx with a
//! stable code; storage failures to 500 with the cause logged, not returned.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::domain::definition::DefinitionError;
use crate::domain::run::RunError;
use crate::domain::template::TemplateError;
use crate::domain::user::UserError;
use crate::engine::EngineError;
use crate::projections::ProjectionError;
use crate::store::StoreError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    header: Option<(&'static str, String)>,
    /// More fields of the error object, beside `code` and `message`.
    details: serde_json::Map<String, serde_json::Value>,
    /// Another node hosts the run: the forwarding middleware sends the
    /// request there instead of answering this.
    forward: Option<Box<super::forward::ForwardTo>>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            header: None,
            details: serde_json::Map::new(),
            forward: None,
        }
    }

    /// The same error with one more field in its error object (`path`,
    /// `unmet`): structured detail a client can act on.
    pub fn with_detail(mut self, name: &str, value: serde_json::Value) -> Self {
        self.details.insert(name.to_string(), value);
        self
    }

    /// The same error with a response header (`WWW-Authenticate` on a
    /// 401).
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.header = Some((name, value.into()));
        self
    }

    /// The same error with `Retry-After: seconds`.
    pub fn with_retry_after(self, seconds: u64) -> Self {
        self.with_header("retry-after", seconds.to_string())
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 with a code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 500; the cause is logged here and not returned.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        let mut chain = cause.to_string();
        let mut source = cause.source();
        while let Some(s) = source {
            chain.push_str(": ");
            chain.push_str(&s.to_string());
            source = s.source();
        }
        tracing::error!(error = %chain, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the server log",
        )
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some((name, value)) = &self.header {
            response.insert_header((*name, value.as_str()));
        }
        let mut response = response.json(super::openapi::ErrorBody {
            error: super::openapi::ErrorObject {
                code: self.code.to_string(),
                message: self.message.clone(),
                detail: self.details.clone(),
            },
        });
        if let Some(forward) = &self.forward {
            response.extensions_mut().insert(forward.as_ref().clone());
        }
        response
    }
}

impl From<DefinitionError> for ApiError {
    fn from(e: DefinitionError) -> Self {
        let status = match e {
            DefinitionError::Malformed(_) | DefinitionError::MalformedStep { .. } => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<TemplateError> for ApiError {
    fn from(e: TemplateError) -> Self {
        match e {
            TemplateError::InvalidDefinition(d) => d.into(),
            TemplateError::NotFound => Self::not_found("template_not_found", e.to_string()),
            TemplateError::AlreadyExists => {
                Self::new(StatusCode::CONFLICT, "template_exists", e.to_string())
            }
            TemplateError::Archived => {
                Self::new(StatusCode::CONFLICT, "template_archived", e.to_string())
            }
            TemplateError::InvalidName(_) => Self::bad_request("invalid_name", e.to_string()),
            TemplateError::DescriptionTooLong => {
                Self::bad_request("invalid_description", e.to_string())
            }
        }
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        let status = match e {
            RunError::NotStarted
            | RunError::UnknownStep(_)
            | RunError::UnknownArtifact(_)
            | RunError::UnknownArtifactVersion(..)
            | RunError::MessageNotFound(_) => StatusCode::NOT_FOUND,
            RunError::ChoiceRequired { .. }
            | RunError::InvalidChoice { .. }
            | RunError::NoChoices(_)
            | RunError::IdempotencyKeyReused(_)
            | RunError::InvalidMessage { .. }
            | RunError::UnknownButton { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::CONFLICT,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Template(t) => t.into(),
            EngineError::Run(r) => r.into(),
            EngineError::TemplateNotFound(_) => {
                Self::not_found("template_not_found", e.to_string())
            }
            EngineError::TemplateArchived(_) => {
                Self::new(StatusCode::CONFLICT, "template_archived", e.to_string())
            }
            EngineError::Conflict => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            EngineError::HostedElsewhere {
                ref node,
                ref address,
            } => {
                let mut error = Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "hosted_elsewhere",
                    format!("the run is hosted by node '{node}', which this request could not reach; retry"),
                )
                .with_header("retry-after", "1");
                error.forward = address.clone().map(|address| {
                    Box::new(super::forward::ForwardTo {
                        node: node.clone(),
                        address,
                    })
                });
                error
            }
            EngineError::Moved => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "run_moving",
                "the run is moving between nodes; retry",
            )
            .with_header("retry-after", "1"),
            EngineError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            EngineError::Store(ref s) => Self::internal(s),
            EngineError::LeaseLost(_) => {
                Self::new(StatusCode::CONFLICT, "lease_lost", e.to_string())
            }
            EngineError::InvalidOutputs { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_outputs",
                e.to_string(),
            ),
            EngineError::NotRemoteAgent(_) => {
                Self::bad_request("not_a_remote_agent", e.to_string())
            }
            EngineError::User(u) => u.into(),
            EngineError::InvalidInput { ref path, .. } => {
                let path = path.clone();
                Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_input",
                    e.to_string(),
                )
                .with_detail("path", json!(path))
            }
            EngineError::PrerequisitesNotMet(ref unmet) => {
                let unmet = json!(unmet);
                Self::new(StatusCode::CONFLICT, "prerequisites_not_met", e.to_string())
                    .with_detail("unmet", unmet)
            }
            EngineError::StartKeyReused { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                e.to_string(),
            ),
            EngineError::TooManyClaims { .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_claims",
                e.to_string(),
            )
            .with_retry_after(1),
        }
    }
}

impl From<crate::domain::prerequisites::PrerequisiteError> for ApiError {
    fn from(e: crate::domain::prerequisites::PrerequisiteError) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let (status, code) = match e {
            UserError::AlreadyExists => (StatusCode::CONFLICT, "user_exists"),
            UserError::NotFound => (StatusCode::NOT_FOUND, "user_not_found"),
            UserError::InvalidName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            UserError::InvalidTokenName(_) => (StatusCode::BAD_REQUEST, "invalid_name"),
            UserError::InvalidDigest => (StatusCode::BAD_REQUEST, "invalid_body"),
            UserError::ExpiryPassed => (StatusCode::BAD_REQUEST, "invalid_expiry"),
            UserError::TooManyTokens => (StatusCode::CONFLICT, "too_many_tokens"),
            UserError::TokenExists => (StatusCode::CONFLICT, "conflict"),
            UserError::TokenNotFound => (StatusCode::NOT_FOUND, "token_not_found"),
            UserError::TokenRevoked => (StatusCode::CONFLICT, "token_revoked"),
        };
        Self::new(status, code, e.to_string())
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::UnknownProjection(_) => {
                Self::not_found("unknown_projection", e.to_string())
            }
            ProjectionError::RebuildRunning(_) => {
                Self::new(StatusCode::CONFLICT, "rebuild_running", e.to_string())
            }
            _ => Self::internal(&e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal(&e)
    }
}
