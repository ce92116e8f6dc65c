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

/// `scheme://host[:port]`, lowercased, without the scheme's default port,
/// or `None` when `text` is not one.
fn normalise(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest).to_ascii_lowercase();
    let (host, port) = split_port(&authority)?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !host_ok {
        return None;
    }
    Some(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// An authority's host and port (`[::1]:8080`, `example.com`); `None` when
/// the port is not digits or a bracketed host is not closed.
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']')?;
        let host = &authority[..end + 2];
        match &rest[end + 1..] {
            "" => (host, None),
            tail => (host, Some(tail.strip_prefix(':')?)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    Some((host, port))
}

/// Whether a `Host` names this server in a way no other site's page can
/// borrow: an IP address, `localhost`, or the host of this node's
/// advertised URL. A page of `http://evil.example` whose name was made to
/// point at this server (DNS rebinding) sends `Host: evil.example`, which
/// is none of these.
fn trusted_host(host: &str, state: Option<&super::ApiState>) -> bool {
    let host = host.to_ascii_lowercase();
    let Some((name, _)) = split_port(&host) else {
        return false;
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if bare == "localhost" || bare.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    state.is_some_and(|state| {
        state
            .node
            .address
            .split_once("://")
            .and_then(|(_, rest)| split_port(rest.trim_end_matches('/')))
            .is_some_and(|(advertised, _)| advertised.eq_ignore_ascii_case(name))
    })
}

/// Whether `origin` names this server as the request reached it (its
/// `Host`, if that is one no other site can borrow): the dashboard's own
/// requests.
fn same_origin(req: &ServiceRequest, origin: &str, state: Option<&super::ApiState>) -> bool {
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
    authority.eq_ignore_ascii_case(host) && trusted_host(host, state)
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
    let state = req
        .app_data::<actix_web::web::Data<super::ApiState>>()
        .cloned();
    let state = state.as_ref().map(|s| s.get_ref());
    if same_origin(&req, &origin, state) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let allowed = state.is_some_and(|state| state.origins.allows(&origin));
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
    // Refusals from further in (401, 403, 404 of another user's run) come
    // back as responses, so the page can read them too.
    let mut response = next.call(req).await?.map_into_boxed_body();
    if allowed {
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
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
    fn only_hosts_no_other_site_can_borrow_are_trusted() {
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "[::1]:8080",
            "10.0.0.5",
            "LOCALHOST",
        ] {
            assert!(trusted_host(host, None), "{host}");
        }
        for host in [
            "evil.example:8080",
            "runlog.example.com",
            "127.0.0.1.evil.test",
            "a:b:c",
        ] {
            assert!(!trusted_host(host, None), "{host}");
        }
    }

    #[test]
    fn origins_are_parsed_and_compared_normalised() {
        let allowed =
            AllowedOrigins::parse("https://App.Example.com, http://localhost:3000/").unwrap();
        assert!(allowed.allows("https://app.example.com"));
        assert!(allowed.allows("http://localhost:3000"));
        assert!(!allowed.allows("http://app.example.com"));
        assert!(!allowed.allows("https://app.example.com.evil.test"));
        assert!(!allowed.allows("null"));
        let default_ports = AllowedOrigins::parse("https://x.test:443,http://y.test:80").unwrap();
        assert!(default_ports.allows("https://x.test"));
        assert!(default_ports.allows("http://y.test"));
        assert!(!default_ports.allows("https://x.test:8443"));
        assert!(AllowedOrigins::parse("").unwrap().origins.is_empty());
        for bad in [
            "app.example.com",
            "ftp://x",
            "https://x/path",
            "https://",
            "*",
            "http://a:b:c",
            "http://a:",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
