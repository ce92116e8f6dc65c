//! Forwarding between nodes (docs/adr/0007): a command for a run that
//! another live node hosts is sent to that node as it came (method, path,
//! query, headers, body), and its answer is the client's answer, so a
//! client gets the same response from any node.
//!
//! The handler runs first: only when the engine says the run is hosted
//! elsewhere (the error response carries a [`ForwardTo`]) is the request
//! sent on. A forwarded request carries [`FORWARDED_BY`] and is never
//! forwarded again (a run that moved once more answers `503
//! hosted_elsewhere` with `Retry-After`).

use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::json;

/// The header a node adds to a request it forwards (its id).
pub const FORWARDED_BY: &str = "x-runlog-forwarded-by";

/// How long a forwarded request may take (a command's answer waits for
/// its commit; a report may wait for the worker's next task).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(90);

/// Set on an error response when another node hosts the run: where to send
/// the request.
#[derive(Debug, Clone)]
pub struct ForwardTo {
    /// The host's id.
    pub node: String,
    /// Its base URL.
    pub address: String,
}

/// Headers that belong to one hop, and `Origin`: the node the request
/// reached checked it and answers the CORS headers.
fn hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "origin"
            | "content-length"
            | "connection"
            | "transfer-encoding"
            | "keep-alive"
            | "upgrade"
    )
}

thread_local! {
    static CLIENT: awc::Client = awc::Client::builder().timeout(FORWARD_TIMEOUT).finish();
}

/// Whether a request may need forwarding: commands for one run, and
/// workers' calls on a task (both reach a run's actor).
fn may_forward(req: &ServiceRequest) -> bool {
    let command = matches!(*req.method(), Method::POST | Method::PUT | Method::DELETE);
    let path = req.path();
    command
        && !req.headers().contains_key(FORWARDED_BY)
        && (path.starts_with("/api/runs/") || path.starts_with("/api/tasks/"))
}

/// Reads the body, at most one byte over the limit (the handler's
/// extractor refuses an oversized body as it would have).
/// A request's body, read to just past the server's `max_body_bytes` (the
/// handler refuses a longer one).
pub(super) async fn read_body(
    http: &HttpRequest,
    mut payload: Payload,
) -> Result<Bytes, actix_web::Error> {
    let limit = max_body_bytes(http);
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        body.extend_from_slice(&chunk?);
        if body.len() > limit {
            break;
        }
    }
    Ok(body.freeze())
}

/// The server's `max_body_bytes` setting.
pub(super) fn max_body_bytes(http: &HttpRequest) -> usize {
    http.app_data::<actix_web::web::Data<super::ApiState>>()
        .map_or(super::limits::DEFAULT_MAX_BODY_BYTES, |state| {
            state.limits.bounds.max_body_bytes
        })
}

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn forward(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if !may_forward(&req) {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let (http, payload) = req.into_parts();
    let body = read_body(&http, payload).await?;
    let again = ServiceRequest::from_parts(http, Payload::from(body.clone()));
    let response = next.call(again).await?;
    let Some(to) = response.response().extensions().get::<ForwardTo>().cloned() else {
        return Ok(response.map_into_boxed_body());
    };
    let (http, _) = response.into_parts();
    let node = http
        .app_data::<actix_web::web::Data<super::ApiState>>()
        .and_then(|state| state.engine.cluster().map(|c| c.node().to_string()))
        .unwrap_or_default();
    let path = http
        .uri()
        .path_and_query()
        .map_or(http.path(), |p| p.as_str());
    let url = format!("{}{}", to.address.trim_end_matches('/'), path);
    let mut outgoing = CLIENT.with(|c| c.request(http.method().clone(), url.as_str()));
    for (name, value) in http.headers() {
        if !hop_by_hop(name) {
            outgoing = outgoing.insert_header((name.clone(), value.clone()));
        }
    }
    outgoing = outgoing.insert_header((FORWARDED_BY, node));
    let answered = match outgoing.send_body(body).await {
        Ok(mut answer) => match answer.body().limit(64 * 1024 * 1024).await {
            Ok(bytes) => {
                let mut relayed = HttpResponse::build(answer.status());
                for (name, value) in answer.headers() {
                    if !hop_by_hop(name) {
                        relayed.insert_header((name.clone(), value.clone()));
                    }
                }
                Some(relayed.body(bytes))
            }
            Err(e) => {
                tracing::warn!(node = %to.node, %url, error = %e, "the host's answer could not be read");
                None
            }
        },
        Err(e) => {
            tracing::warn!(node = %to.node, %url, error = %e, "cannot forward to the run's host");
            None
        }
    };
    let response = answered.unwrap_or_else(|| {
        HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
            .insert_header((header::RETRY_AFTER, "1"))
            .json(json!({"error": {
                "code": "host_unreachable",
                "message": format!(
                    "the run is hosted by node '{}' ({}), which does not answer; \
                     a node that stops answering is taken over within a few seconds, retry",
                    to.node, to.address),
            }}))
    });
    Ok(ServiceResponse::new(http, response))
}

/// The engine's way to the node that hosts a run, over that node's
/// internal endpoint (`POST /api/internal/runs/{id}/claims`), with the
/// worker token (every node of one service shares its configuration).
pub struct HttpPeers {
    token: Option<String>,
}

impl HttpPeers {
    /// Calls peers with `token` (the worker token).
    pub fn new(token: Option<String>) -> Self {
        Self { token }
    }
}

impl crate::engine::Peers for HttpPeers {
    fn record_claim(
        &self,
        address: String,
        claim: crate::engine::ClaimToRecord,
    ) -> futures::future::LocalBoxFuture<
        'static,
        Result<Option<crate::domain::ids::Timestamp>, crate::engine::EngineError>,
    > {
        use crate::engine::EngineError;
        let url = format!(
            "{}/api/internal/runs/{}/claims",
            address.trim_end_matches('/'),
            claim.run
        );
        let mut request = CLIENT.with(|c| c.post(url.as_str()));
        if let Some(token) = &self.token {
            request = request.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        let body = json!({
            "step": claim.step.to_string(),
            "lease_token": claim.lease.to_string(),
            "worker_id": claim.worker,
        });
        Box::pin(async move {
            let unavailable = |why: String| {
                EngineError::Unavailable(format!(
                    "the run's host at {address} did not record the claim: {why}"
                ))
            };
            let mut answer = request
                .send_json(&body)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let status = answer.status();
            let reply: serde_json::Value = answer
                .json()
                .limit(64 * 1024)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            if !status.is_success() {
                return Err(unavailable(format!("{status}: {reply}")));
            }
            if reply["stale"] == true {
                // The attempt is over there: the queue row is stale.
                return Err(EngineError::Run(crate::domain::run::RunError::NotClaimed(
                    claim.step,
                )));
            }
            Ok(reply["lease_expires_at"]
                .as_i64()
                .map(crate::domain::ids::Timestamp))
        })
    }
}
