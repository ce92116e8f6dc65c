//! What every request under `/api` gets, whatever its handler: a body is
//! taken only as JSON, `HEAD` answers where `GET` does, and every error
//! answer carries the JSON error body (issue #9, section 5).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
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
    if !has_body(&req) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    // A key given twice is ambiguous (readers differ on which one wins, and
    // an audit of the body cannot tell): refused, wherever it is.
    let (http, payload) = req.into_parts();
    let body = super::forward::read_body(&http, payload).await?;
    if body.len() <= super::forward::max_body_bytes(&http) {
        if let Err(duplicate) = serde_json::from_slice::<NoDuplicateKeys>(&body) {
            if duplicate.is_data() {
                let refused = ApiError::bad_request("invalid_body", duplicate.to_string());
                return Ok(ServiceResponse::new(http, refused.error_response()));
            }
        }
    }
    let req = ServiceRequest::from_parts(http, Payload::from(body));
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Any JSON value whose objects each name a key once; a key given twice is
/// a data error (other failures are syntax errors, left to the handler's
/// own message).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if keys.contains(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            map.next_value::<NoDuplicateKeys>()?;
            keys.insert(key);
        }
        Ok(NoDuplicateKeys)
    }
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
    fn a_key_given_twice_anywhere_is_a_data_error() {
        let twice = |text: &str| {
            serde_json::from_slice::<NoDuplicateKeys>(text.as_bytes())
                .err()
                .filter(serde_json::Error::is_data)
                .map(|e| e.to_string())
        };
        assert_eq!(
            twice(r#"{"a": 1, "b": [1, {"c": 2}], "d": {"a": 1}}"#),
            None
        );
        assert_eq!(twice(r#"[{"a": 1}, {"a": 2}]"#), None);
        let message = twice(r#"{"steps": {}, "name": "x", "steps": {"a": {}}}"#).expect("refused");
        assert!(
            message.contains(r#"the key "steps" is given twice"#),
            "{message}"
        );
        assert!(twice(r#"{"a": {"b": [{"c": 1, "c": 2}]}}"#).is_some());
        // Escapes do not hide a duplicate.
        assert!(twice(r#"{"a": 1, "\u0061": 2}"#).is_some());
        // Not JSON at all: a syntax error, left to the handler.
        assert_eq!(twice(r#"{"a": "#), None);
    }

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
