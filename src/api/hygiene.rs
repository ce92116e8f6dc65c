//! What every request under `/api` gets, whatever its handler: a body is
//! taken only as JSON, `HEAD` answers where `GET` does, and every error
//! answer carries the JSON error body (issue #9, section 5).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::ResponseError;

use super::ApiError;

/// The longest text of an error answer kept as the message of its JSON
/// body.
const MAX_MESSAGE: usize = 2_000;

/// Whether `value` names JSON: `application/json` or `application/*+json`,
/// with any parameters (`; charset=utf-8`).
fn is_json(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether the request says it carries a body.
fn has_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    length.is_some_and(|n| n > 0) || chunked
}

/// A body that is not JSON is refused with 415 before any handler reads
/// it (an empty body stays fine where none is needed). A form post or a
/// `text/plain` body from another site's page never reaches a handler.
pub async fn json_bodies(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if has_body(&req) {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !content_type.is_some_and(is_json) {
            let refused = ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_content_type",
                format!(
                    "send the body as JSON (Content-Type: application/json), not {}",
                    content_type
                        .map_or("without a content type".to_string(), |t| format!("as {t}"))
                ),
            );
            return Ok(req.into_response(refused.error_response()));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// `HEAD` is answered as `GET`, without the body.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if req.method() != Method::HEAD {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    req.head_mut().method = Method::GET;
    let response = next.call(req).await?;
    Ok(response.map_body(|_, _| BoxBody::new(())))
}

/// An error answer that is not JSON (one that actix-web makes itself: a
/// body over the limit read by a handler that takes raw bytes, say) gets
/// the JSON error body every other error has, with the same status and
/// headers and a code for its status.
pub async fn json_errors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let response = next.call(req).await?.map_into_boxed_body();
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(is_json);
    if !(status.is_client_error() || status.is_server_error()) || json {
        return Ok(response);
    }
    let (http, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let text = actix_web::body::to_bytes_limited(body, MAX_MESSAGE)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    let mut rebuilt = ApiError::new(status, code_of(status), text).error_response();
    for (name, value) in head.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ServiceResponse::new(http, rebuilt.map_into_boxed_body()))
}

/// The code of an error answer that came with none.
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid_content_type",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::NOT_FOUND => "no_such_route",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_server_error() => "internal_error",
        _ => "bad_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_application_json_or_a_json_suffix_with_any_parameters() {
        for yes in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/merge-patch+json",
        ] {
            assert!(is_json(yes), "{yes}");
        }
        for no in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/json",
            "",
            "application/jsonp",
        ] {
            assert!(!is_json(no), "{no}");
        }
    }
}
