//! `http`: POSTs the task to a service and uses the JSON object it answers
//! as the step's outputs. 5xx, 408, 429 and timeouts are retryable (the
//! step's retry policy decides; `Retry-After` is honoured), other 4xx are
//! not. Header values may name secrets of the server's configuration
//! (`"Authorization": "Bearer {{ secrets.crm_token }}"`); they are filled in
//! for the request only, never stored or logged.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{task_body, Agent, AgentError, AgentResult, AgentSpec, Secrets, StepContext};
use crate::domain::definition::ConfigFault;

/// Longest a call may take when the step says nothing (ms).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Most bytes of an answer read.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// The `http` agent.
pub struct HttpAgent {
    secrets: Secrets,
}

impl HttpAgent {
    /// An `http` agent whose headers may name `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Self { secrets }
    }
}

thread_local! {
    /// One client (and connection pool) per agent thread.
    static CLIENT: awc::Client = awc::Client::builder().disable_timeout().finish();
}

/// The client of this agent thread (for the agents that call services).
pub(crate) fn client() -> awc::Client {
    CLIENT.with(Clone::clone)
}

/// How a service's answer status maps to a failure: `None` for success.
pub(crate) fn status_failure(
    status: u16,
    retry_after: Option<&str>,
    what: &str,
    body: &[u8],
) -> Option<AgentError> {
    if (200..300).contains(&status) {
        return None;
    }
    let snippet: String = String::from_utf8_lossy(body).chars().take(500).collect();
    let message = format!("{what} answered {status}: {}", snippet.trim());
    let retryable = matches!(status, 408 | 409 | 429) || status >= 500;
    Some(match (retryable, retry_after.and_then(parse_retry_after)) {
        (true, Some(after_ms)) => AgentError::RetryAfter { message, after_ms },
        (true, None) => AgentError::Failed(message),
        (false, _) => AgentError::NotRetryable(message),
    })
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured).
fn parse_retry_after(value: &str) -> Option<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .map(|s| s.saturating_mul(1_000))
}

impl HttpAgent {
    /// The request headers with their secrets filled in.
    fn headers(&self, config: &Value) -> Result<Vec<(String, String)>, String> {
        let Some(headers) = config.get("headers").and_then(Value::as_object) else {
            return Ok(Vec::new());
        };
        headers
            .iter()
            .map(|(name, value)| {
                let text = value.as_str().unwrap_or_default();
                self.secrets
                    .fill(text)
                    .map(|filled| (name.clone(), filled))
                    .map_err(|e| format!("header '{name}': {e}"))
            })
            .collect()
    }
}

#[async_trait::async_trait(?Send)]
impl Agent for HttpAgent {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description:
                "POSTs the task (run, step, attempt, inputs, prompt, instructions) as JSON \
                          to config.url and uses the JSON object it answers as the outputs."
                    .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["url"],
                "properties": {
                    "url": {"type": "string", "description": "http:// or https:// URL."},
                    "method": {"enum": ["POST", "PUT"], "description": "Default POST."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000,
                                   "description": "Default 30000."},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Values may name secrets: {{ secrets.NAME }}."},
                    "comments": {"type": "boolean"}
                }
            }),
            output_schema: Some(json!({"type": "object"})),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        let url = config
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let parsed: Result<awc::http::Uri, _> = url.parse();
        let ok = parsed.is_ok_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
        });
        if !ok {
            return Err(ConfigFault {
                field: "config.url".into(),
                reason: format!("'{url}' is not an http:// or https:// URL"),
            });
        }
        if let Some(headers) = config.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                if awc::http::header::HeaderName::try_from(name.as_str()).is_err() {
                    return Err(ConfigFault {
                        field: format!("config.headers.{name}"),
                        reason: "not a valid header name".into(),
                    });
                }
                self.secrets
                    .check(value.as_str().unwrap_or_default())
                    .map_err(|reason| ConfigFault {
                        field: format!("config.headers.{name}"),
                        reason,
                    })?;
            }
        }
        Ok(())
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        let url = ctx.config["url"].as_str().unwrap_or_default().to_string();
        let timeout = Duration::from_millis(
            ctx.config
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_TIMEOUT_MS),
        )
        .min(ctx.limits.timeout);
        let headers = self
            .headers(&ctx.config)
            .map_err(AgentError::NotRetryable)?;
        ctx.comment(format!("http calling {url} (attempt {}).", ctx.attempt));
        let client = client();
        let mut request = match ctx.config.get("method").and_then(Value::as_str) {
            Some("PUT") => client.put(&url),
            _ => client.post(&url),
        }
        .timeout(timeout)
        .insert_header(("content-type", "application/json"));
        for (name, value) in headers {
            request = request.insert_header((name, value));
        }
        let body = task_body(&ctx).to_string();
        let call = async {
            let mut response = request
                .send_body(body)
                .await
                .map_err(|e| AgentError::Failed(format!("http: calling {url} failed: {e}")))?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = response.body().limit(MAX_ANSWER).await.map_err(|e| {
                AgentError::Failed(format!("http: reading the answer of {url}: {e}"))
            })?;
            if let Some(failure) = status_failure(
                status,
                retry_after.as_deref(),
                &format!("http: {url}"),
                &bytes,
            ) {
                return Err(failure);
            }
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => Ok(map.into_iter().collect::<BTreeMap<_, _>>()),
                _ => Err(AgentError::NotRetryable(format!(
                    "http: {url} answered {status} with something other than a JSON object"
                ))),
            }
        };
        let outputs = tokio::select! {
            outputs = call => outputs?,
            () = ctx.stop.raised() => return Err(AgentError::Stopped),
        };
        ctx.comment(format!(
            "http finished attempt {} with outputs: {}.",
            ctx.attempt,
            outputs.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        Ok(outputs.into())
    }
}
