//! Which web pages may use the API from a browser (issue #9, section 5).
//!
//! A browser says which page sent a request in `Origin`. The dashboard is
//! served by this server, so its requests are same-origin; another site's
//! page may only change state, open a WebSocket, or read answers (CORS)
//! when its origin is on the allow-list (`--allowed-origins`). Requests
//! without `Origin` (curl, scripts, workers, other servers) are not
//! browsers' and pass: they must hold a token anyway.
//!
//! - A state-changing request (`POST`, `PUT`, `PATCH`, `DELETE`) or a
//!   WebSocket upgrade from a foreign origin: 403 `origin_not_allowed`,
//!   before authentication, so nothing is recorded.
//! - A CORS preflight (`OPTIONS` with `Access-Control-Request-Method`):
//!   204 with the CORS headers for an allowed origin, 403 otherwise.
//! - Any answer to an allowed foreign origin carries
//!   `Access-Control-Allow-Origin` with that origin (and `Vary: Origin`),
//!   so its page can read it.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};

use super::ApiError;

/// The request headers a foreign page may send.
const ALLOWED_HEADERS: &str = "authorization, content-type, idempotency-key";
/// The response headers a foreign page may read.
const EXPOSED_HEADERS: &str = "location, idempotent-replayed, retry-after, www-authenticate";
/// How long a browser may keep a preflight's answer (seconds).
const PREFLIGHT_MAX_AGE: &str = "600";

/// The origins allowed besides the server's own.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// From a comma-separated list of origins (`https://app.example.com,
    /// http://localhost:3000`); the fault names the entry that is not an
    /// origin (a scheme, a host and an optional port; no path).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some(normal) = normalise(entry) else {
                return Err(format!(
                    "'{entry}' is not an origin: give a scheme and a host, with an optional port \
                     and nothing after it (https://app.example.com, http://localhost:3000)"
                ));
            };
            origins.push(normal);
        }
        Ok(Self { origins })
    }

    /// Whether a foreign `origin` is allowed.
    fn allows(&self, origin: &str) -> bool {
        normalise(origin).is_some_and(|o| self.origins.contains(&o))
    }
}

/// `scheme://host[:port]`, lowercased, or `None` when `text` is not one.
fn normalise(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https") {
        return None;
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !authority.is_empty()
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    valid.then(|| format!("{scheme}://{}", authority.to_ascii_lowercase()))
}

/// Whether `origin` names this server as the request reached it (its
/// `Host`): the dashboard's own requests.
fn same_origin(req: &ServiceRequest, origin: &str) -> bool {
    let Some(host) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let authority = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest.trim_end_matches('/'));
    authority.eq_ignore_ascii_case(host)
}

fn refused(origin: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "requests from pages at {} may not use this API: the server allows its own origin \
             and those of --allowed-origins",
            origin.chars().take(200).collect::<String>()
        ),
    )
}

/// The middleware (see the module's documentation).
pub async fn check_origin(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("").to_string())
    else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    };
    if same_origin(&req, &origin) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let allowed = req
        .app_data::<actix_web::web::Data<super::ApiState>>()
        .is_some_and(|state| state.origins.allows(&origin));
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = if allowed {
            let mut answer = HttpResponse::NoContent();
            cors_headers(&mut answer, &origin);
            answer
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    "GET, HEAD, POST, PUT, DELETE",
                ))
                .insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOWED_HEADERS))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, PREFLIGHT_MAX_AGE))
                .finish()
        } else {
            refused(&origin).error_response()
        };
        return Ok(req.into_response(response));
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !allowed && (changes || upgrade) {
        let response = refused(&origin).error_response();
        return Ok(req.into_response(response));
    }
    let mut response = next.call(req).await?.map_into_boxed_body();
    if allowed {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
    Ok(response)
}

fn cors_headers(answer: &mut actix_web::HttpResponseBuilder, origin: &str) {
    answer
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_string()))
        .insert_header((header::VARY, "Origin"))
        .insert_header((header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED_HEADERS));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_and_compared_normalised() {
        let allowed =
            AllowedOrigins::parse("https://App.Example.com, http://localhost:3000/").unwrap();
        assert!(allowed.allows("https://app.example.com"));
        assert!(allowed.allows("http://localhost:3000"));
        assert!(!allowed.allows("http://app.example.com"));
        assert!(!allowed.allows("https://app.example.com.evil.test"));
        assert!(!allowed.allows("null"));
        assert!(AllowedOrigins::parse("").unwrap().origins.is_empty());
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://",
            "*",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
