//! `llm`: a call to an OpenAI-compatible chat-completions server (a hosted
//! provider, Ollama, vLLM, llama.cpp, …). The messages: a system prompt from
//! the step's config, then the attempt's prompt (its override, else the
//! step's own), its instructions and its input. Output `text`; the model,
//! the token usage and (when the server's configuration prices the model)
//! the cost are recorded with the attempt. With `stream: true` the tokens
//! reach the run's WebSocket subscribers as they come (ephemeral progress),
//! and the log records the final text once.
//!
//! 408, 409, 429 and 5xx are retried within the step's retry policy,
//! honouring `Retry-After`; other 4xx are not. `[llm] max_concurrency`
//! bounds the calls in flight across all runs. A call that could pass the
//! run's or the step's budget is not made: the step fails with
//! `budget_exceeded`.
//!
//! [`LlmClient`] is shared with `llm_judge`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::http::{client, status_failure};
use super::{
    Agent, AgentError, AgentOutputs, AgentResult, AgentSpec, ProgressSink, StepContext, StopSignal,
};
use crate::domain::definition::ConfigFault;
use crate::domain::run::{BudgetLeft, Usage};

/// Completion tokens assumed for a budget check when the step sets no
/// `max_tokens`.
pub const ASSUMED_COMPLETION_TOKENS: u64 = 1_024;
/// Most bytes of an answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// What a model's tokens cost.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenPrice {
    /// Per prompt token.
    pub prompt: f64,
    /// Per completion token.
    pub completion: f64,
}

/// The chat-completions server and how to use it.
#[derive(Debug, Clone, Default)]
pub struct LlmSettings {
    /// Where it is, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: Option<String>,
    /// Its API key (a bearer token).
    pub api_key: Option<String>,
    /// The model steps use unless they name one.
    pub model: Option<String>,
    /// Calls in flight at once across all runs.
    pub max_concurrency: usize,
    /// The longest one call may take.
    pub timeout: Duration,
    /// Prices per token, by model.
    pub prices: BTreeMap<String, TokenPrice>,
}

/// A chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model.
    pub model: String,
    /// The messages (`{"role", "content"}`).
    pub messages: Vec<Value>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Most completion tokens.
    pub max_tokens: Option<u64>,
    /// Stream the answer.
    pub stream: bool,
    /// Ask for a JSON object as the answer.
    pub json: bool,
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// What it used (when the server said).
    pub usage: Option<Usage>,
}

/// Calls the chat-completions server, a bounded number at a time.
#[derive(Clone)]
pub struct LlmClient {
    settings: Arc<LlmSettings>,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("LlmClient")
            .field("base_url", &self.settings.base_url)
            .field("model", &self.settings.model)
            .finish()
    }
}

impl LlmClient {
    /// A client of the server `settings` describe.
    pub fn new(settings: LlmSettings) -> Self {
        let slots = Arc::new(Semaphore::new(settings.max_concurrency.max(1)));
        Self {
            settings: Arc::new(settings),
            slots,
        }
    }

    /// The model a step's config asks for, else the server's default.
    pub fn model_for(&self, config: &Value) -> Option<String> {
        config
            .get("model")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| self.settings.model.clone())
    }

    /// Checks that calls can be made for a step with `config`.
    pub fn check(&self, config: &Value) -> Result<(), ConfigFault> {
        if self.settings.base_url.is_none() {
            return Err(ConfigFault {
                field: "config".into(),
                reason: "this server has no LLM server configured ([llm] base_url or \
                         RUNLOG_LLM_BASE_URL)"
                    .into(),
            });
        }
        if self.model_for(config).is_none() {
            return Err(ConfigFault {
                field: "config.model".into(),
                reason: "no model given, and the server has no default ([llm] model or \
                         RUNLOG_LLM_MODEL)"
                    .into(),
            });
        }
        Ok(())
    }

    /// What `tokens` prompt and `completion` completion tokens of `model`
    /// cost, when the model is priced.
    fn cost(&self, model: &str, prompt: u64, completion: u64) -> Option<f64> {
        self.settings
            .prices
            .get(model)
            .map(|p| prompt as f64 * p.prompt + completion as f64 * p.completion)
    }

    /// Refuses a request that could pass one of `budgets`.
    fn check_budgets(
        &self,
        request: &ChatRequest,
        budgets: &[BudgetLeft],
    ) -> Result<(), AgentError> {
        let chars: usize = request
            .messages
            .iter()
            .map(|m| m["content"].as_str().map_or(0, str::len))
            .sum();
        let prompt = (chars as u64).div_ceil(4);
        let completion = request.max_tokens.unwrap_or(ASSUMED_COMPLETION_TOKENS);
        let cost = self.cost(&request.model, prompt, completion);
        for budget in budgets {
            if let Some(refusal) = budget.refuses(prompt + completion, cost) {
                return Err(AgentError::NotRetryable(refusal));
            }
        }
        Ok(())
    }

    /// Makes one call. Waits for a free slot first; a stop ends the wait and
    /// the call.
    pub async fn complete(
        &self,
        request: ChatRequest,
        budgets: &[BudgetLeft],
        progress: &ProgressSink,
        stop: &mut StopSignal,
        limit: Duration,
    ) -> Result<Completion, AgentError> {
        self.check_budgets(&request, budgets)?;
        let slot = tokio::select! {
            slot = self.slots.clone().acquire_owned() => slot.map_err(|_| AgentError::Failed("llm: the client has stopped".into()))?,
            () = stop.raised() => return Err(AgentError::Stopped),
        };
        let timeout = self.settings.timeout.min(limit);
        let call = tokio::time::timeout(timeout, self.call(&request, progress));
        let result = tokio::select! {
            result = call => result.map_err(|_| AgentError::Failed(format!(
                "llm: the model took longer than {} s", timeout.as_secs()
            )))?,
            () = stop.raised() => return Err(AgentError::Stopped),
        };
        drop(slot);
        result
    }

    async fn call(
        &self,
        request: &ChatRequest,
        progress: &ProgressSink,
    ) -> Result<Completion, AgentError> {
        let base = self.settings.base_url.as_deref().unwrap_or_default();
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": request.stream,
        });
        if let Some(t) = request.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = request.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if request.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if request.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut call = client()
            .post(&url)
            .timeout(self.settings.timeout)
            .insert_header(("content-type", "application/json"));
        if let Some(key) = self.settings.api_key.as_deref().filter(|k| !k.is_empty()) {
            call = call.insert_header(("Authorization", format!("Bearer {key}")));
        }
        let mut response = call
            .send_body(body.to_string())
            .await
            .map_err(|e| AgentError::Failed(format!("llm: calling {url} failed: {e}")))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = response.body().limit(64 * 1024).await.unwrap_or_default();
            return Err(status_failure(
                status,
                retry_after.as_deref(),
                "llm: the model server",
                &bytes,
            )
            .unwrap_or_else(|| AgentError::Failed(format!("llm: status {status}"))));
        }
        let (text, usage, model) = if request.stream {
            let mut events = eventsource_stream::EventStream::new(response);
            let (mut text, mut usage, mut model) = (String::new(), None, None);
            while let Some(event) = events.next().await {
                let event = event
                    .map_err(|e| AgentError::Failed(format!("llm: reading the stream: {e}")))?;
                if event.data.trim() == "[DONE]" {
                    break;
                }
                let Ok(chunk) = serde_json::from_str::<Value>(&event.data) else {
                    continue;
                };
                if let Some(piece) = chunk["choices"][0]["delta"]["content"].as_str() {
                    if !piece.is_empty() {
                        text.push_str(piece);
                        progress.send(piece);
                    }
                }
                if chunk["usage"].is_object() {
                    usage = Some(chunk["usage"].clone());
                }
                if let Some(m) = chunk["model"].as_str() {
                    model = Some(m.to_string());
                }
            }
            (text, usage, model)
        } else {
            let bytes = response
                .body()
                .limit(MAX_ANSWER)
                .await
                .map_err(|e| AgentError::Failed(format!("llm: reading the answer: {e}")))?;
            let answer: Value = serde_json::from_slice(&bytes)
                .map_err(|e| AgentError::Failed(format!("llm: the answer is not JSON: {e}")))?;
            let text = answer["choices"][0]["message"]["content"]
                .as_str()
                .ok_or_else(|| {
                    AgentError::Failed("llm: the answer has no choices[0].message.content".into())
                })?
                .to_string();
            let usage = answer["usage"].is_object().then(|| answer["usage"].clone());
            (text, usage, answer["model"].as_str().map(str::to_string))
        };
        let model = model.unwrap_or_else(|| request.model.clone());
        let usage = usage.map(|u| {
            let prompt = u["prompt_tokens"].as_u64().unwrap_or(0);
            let completion = u["completion_tokens"].as_u64().unwrap_or(0);
            Usage {
                cost: self
                    .cost(&request.model, prompt, completion)
                    .or_else(|| self.cost(&model, prompt, completion)),
                model: model.clone(),
                prompt_tokens: prompt,
                completion_tokens: completion,
            }
        });
        Ok(Completion { text, usage })
    }
}

/// The user message of an attempt: its prompt, its instructions, its input.
fn user_message(ctx: &StepContext) -> String {
    let mut parts = Vec::new();
    if let Some(prompt) = ctx.effective_prompt() {
        parts.push(prompt.to_string());
    }
    if !ctx.instructions.is_empty() {
        let list: Vec<String> = ctx.instructions.iter().map(|i| format!("- {i}")).collect();
        parts.push(format!("Instructions:\n{}", list.join("\n")));
    }
    let empty = ctx.input.is_null() || ctx.input.as_object().is_some_and(|m| m.is_empty());
    if !empty {
        let input = serde_json::to_string_pretty(&ctx.input).unwrap_or_default();
        parts.push(format!("Input:\n{input}"));
    }
    parts.join("\n\n")
}

/// The `llm` agent.
pub struct LlmAgent {
    client: LlmClient,
}

impl LlmAgent {
    /// An `llm` agent calling through `client`.
    pub fn new(client: LlmClient) -> Self {
        Self { client }
    }
}

#[async_trait::async_trait(?Send)]
impl Agent for LlmAgent {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description: "Calls an OpenAI-compatible chat-completions model with the step's \
                          prompt, instructions and input; output text. Records the model, the \
                          tokens and their cost with the attempt."
                .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "model": {"type": "string", "minLength": 1},
                    "system": {"type": "string"},
                    "stream": {"type": "boolean"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "comments": {"type": "boolean"}
                }
            }),
            output_schema: Some(json!({
                "type": "object",
                "required": ["text"],
                "properties": {"text": {"type": "string"}}
            })),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        self.client.check(config)
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        let model = self
            .client
            .model_for(&ctx.config)
            .ok_or_else(|| AgentError::NotRetryable("llm: no model".into()))?;
        let mut messages = Vec::new();
        if let Some(system) = ctx.config.get("system").and_then(Value::as_str) {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": user_message(&ctx)}));
        let request = ChatRequest {
            model: model.clone(),
            messages,
            temperature: ctx.config.get("temperature").and_then(Value::as_f64),
            max_tokens: ctx.config.get("max_tokens").and_then(Value::as_u64),
            stream: ctx.config.get("stream").and_then(Value::as_bool) == Some(true),
            json: false,
        };
        ctx.comment(format!("llm calling {model} (attempt {}).", ctx.attempt));
        let limit = ctx.limits.timeout;
        let completion = self
            .client
            .complete(request, &ctx.budgets, &ctx.progress, &mut ctx.stop, limit)
            .await?;
        if let Some(usage) = &completion.usage {
            ctx.comment(format!(
                "llm finished attempt {}: {} tokens in, {} out.",
                ctx.attempt, usage.prompt_tokens, usage.completion_tokens
            ));
        }
        let outputs: AgentOutputs = BTreeMap::from([("text".to_string(), json!(completion.text))]);
        Ok(AgentResult {
            outputs,
            usage: completion.usage,
            message: None,
        })
    }
}
