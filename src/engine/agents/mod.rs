//! Agents execute steps. A small trait, a registry, and the two built-ins:
//! `echo` (returns its input; `delay_ms` and `fail_times` make it slow or
//! flaky for tests, demos and benchmarks; `stop_early` makes it honour a
//! pause or cancel) and `template` (renders `config.text` with minijinja).
//! Both post a comment to the run's thread when they start and when they
//! finish (`"comments": false` in the step's config turns that off).

mod command;
mod echo;
mod http;
pub mod judge;
pub mod llm;
pub mod llm_judge;
pub mod render;
mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use serde_json::Value;

pub use command::{CommandAgent, CommandSpec};
pub use echo::Echo;
pub use http::HttpAgent;
pub use judge::Judge;
pub use llm::{LlmAgent, LlmClient, LlmSettings, TokenPrice};
pub use llm_judge::LlmJudge;
pub use template::TemplateAgent;

use crate::domain::definition::{AgentCatalog, ConfigFault, DefinitionLimits};
use crate::domain::ids::{AgentName, RunId, StepId};
use crate::domain::run::{BudgetLeft, Failure, Usage};

/// Tells a running agent that the run asked it to stop (a pause or a
/// cancel, or its inputs went stale). Agents may ignore it and finish.
#[derive(Debug, Clone)]
pub struct StopSignal(tokio::sync::watch::Receiver<bool>);

impl StopSignal {
    /// A signal and the sender that raises it.
    pub fn channel() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        (sender, Self(receiver))
    }

    /// Whether the agent was asked to stop.
    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the agent is asked to stop (never, if the run drops the
    /// sender without asking).
    pub async fn raised(&mut self) {
        if self.0.wait_for(|raised| *raised).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Posts an agent's comments to the run's thread.
#[derive(Clone)]
pub struct CommentSink(Arc<dyn Fn(String) + Send + Sync>);

impl CommentSink {
    /// A sink that hands each comment to `post`.
    pub fn new(post: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(post))
    }

    /// A sink that drops comments (tests, tools).
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    /// Posts a comment (as the step's agent).
    pub fn post(&self, text: impl Into<String>) {
        (self.0)(text.into());
    }
}

impl std::fmt::Debug for CommentSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommentSink")
    }
}

/// Why an attempt did not produce outputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// The attempt failed with this message; another attempt may help (the
    /// step's retry policy decides).
    #[error("{0}")]
    Failed(String),
    /// The attempt failed in a way another attempt will not mend (a 4xx, a
    /// bad configuration): the step fails at once.
    #[error("{0}")]
    NotRetryable(String),
    /// The attempt was turned away for now (a 429 or 503 with
    /// `Retry-After`): another attempt waits at least `after_ms`.
    #[error("{message}")]
    RetryAfter {
        /// What the service said.
        message: String,
        /// How long it asked to wait.
        after_ms: u64,
    },
    /// The agent stopped early because the run asked it to.
    #[error("stopped on request")]
    Stopped,
}

impl AgentError {
    /// The failure the engine records, or `None` for a stop.
    pub fn failure(self) -> Option<Failure> {
        match self {
            Self::Failed(error) => Some(Failure::retryable(error)),
            Self::NotRetryable(error) => Some(Failure {
                error,
                retryable: false,
                retry_after_ms: None,
            }),
            Self::RetryAfter { message, after_ms } => Some(Failure {
                error: message,
                retryable: true,
                retry_after_ms: Some(after_ms),
            }),
            Self::Stopped => None,
        }
    }
}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

/// Everything an agent gets for one attempt of one step.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step: StepId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The step's prompt, if any.
    pub prompt: Option<String>,
    /// The prompt a user gave this attempt instead (retry or trigger).
    pub prompt_override: Option<String>,
    /// Instructions users posted to the thread, handed to this attempt as
    /// extra context, oldest first.
    pub instructions: Vec<String>,
    /// The step's agent configuration.
    pub config: Value,
    /// The step's input (see `Run::step_input`), blobs resolved.
    pub input: Value,
    /// The run input.
    pub run_input: Value,
    /// Latest outputs of every completed upstream step: step → output → value.
    pub upstream: BTreeMap<String, Value>,
    /// Raised when the run asks the agent to stop.
    pub stop: StopSignal,
    /// Where the agent's comments go.
    pub comments: CommentSink,
    /// Where CPU-bound work runs.
    pub cpu: CpuPool,
    /// The limits the attempt runs under.
    pub limits: AgentLimits,
    /// The budgets its model calls must stay within.
    pub budgets: Vec<BudgetLeft>,
    /// Where ephemeral progress goes (streamed tokens, to the run's
    /// WebSocket subscribers; never stored).
    pub progress: ProgressSink,
}

/// The secrets of the server's configuration, by name, for agent
/// configurations that name them (`{{ secrets.NAME }}`). Their values are
/// filled in where they are used and never stored, returned or logged.
#[derive(Clone, Default)]
pub struct Secrets(Arc<BTreeMap<String, String>>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Secrets {
    /// The secrets `values` holds.
    pub fn new(values: BTreeMap<String, String>) -> Self {
        Self(Arc::new(values))
    }

    /// `text` with the secrets it names filled in.
    pub fn fill(&self, text: &str) -> Result<String, String> {
        if !text.contains("{{") && !text.contains("{%") {
            return Ok(text.to_string());
        }
        render::render(
            text,
            serde_json::json!({ "secrets": &*self.0 }),
            &AgentLimits::default(),
        )
        .map_err(|e| format!("cannot fill in its secrets: {e}"))
    }

    /// Checks that `text` names only secrets the server has.
    pub fn check(&self, text: &str) -> Result<(), String> {
        let names: BTreeMap<&String, &str> = self.0.keys().map(|k| (k, "")).collect();
        render::render(
            text,
            serde_json::json!({ "secrets": names }),
            &AgentLimits::default(),
        )
        .map(|_| ())
        .map_err(|e| {
            format!(
                "{e} (the server's secrets are: {})",
                self.0.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// The task as agents that hand it on (`http`, `command`) send it: run,
/// step, attempt, inputs, prompt, prompt override, instructions and the
/// step's config (without its headers).
pub fn task_body(ctx: &StepContext) -> Value {
    let mut config = ctx.config.clone();
    if let Value::Object(map) = &mut config {
        map.remove("headers");
    }
    serde_json::json!({
        "run_id": ctx.run_id,
        "step": ctx.step,
        "attempt": ctx.attempt,
        "inputs": ctx.input,
        "prompt": ctx.effective_prompt(),
        "prompt_override": ctx.prompt_override,
        "instructions": ctx.instructions,
        "config": config,
    })
}

/// Sends an attempt's ephemeral progress to the run's live subscribers.
#[derive(Clone)]
pub struct ProgressSink(Arc<dyn Fn(String) + Send + Sync>);

impl ProgressSink {
    /// A sink that hands each piece of progress to `send`.
    pub fn new(send: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self(Arc::new(send))
    }

    /// A sink that drops progress.
    pub fn discard() -> Self {
        Self::new(|_| {})
    }

    /// Sends a piece of progress (a chunk of text).
    pub fn send(&self, text: impl Into<String>) {
        (self.0)(text.into());
    }
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressSink")
    }
}

/// The limits every in-process agent runs under (settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLimits {
    /// The longest an attempt may take; then it fails (retryable).
    pub timeout: Duration,
    /// The largest outputs an attempt may return, all outputs together as
    /// JSON; a template's rendering is cut off there too.
    pub max_output_bytes: usize,
    /// How much work one template rendering may do (minijinja's fuel: about
    /// one unit per instruction); a rendering that runs out fails.
    pub template_fuel: u64,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            max_output_bytes: 16 * 1024 * 1024,
            template_fuel: 20_000_000,
        }
    }
}

/// Runs agents' CPU-bound work (template rendering, scoring) on blocking
/// threads, a bounded number at a time, so that it never occupies the
/// threads that serve actors, HTTP or other agents' IO.
#[derive(Debug, Clone)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
}

impl CpuPool {
    /// A pool that runs at most `threads` pieces of work at once.
    pub fn new(threads: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(threads.max(1))),
        }
    }

    /// Runs `work` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AgentError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AgentError::Failed("the agent work pool has stopped".into()))?;
        tokio::task::spawn_blocking(move || {
            let _slot = permit;
            work()
        })
        .await
        .map_err(|e| AgentError::Failed(format!("the agent's work failed: {e}")))
    }
}

impl StepContext {
    /// The prompt this attempt runs with: the override, else the step's own.
    pub fn effective_prompt(&self) -> Option<&str> {
        self.prompt_override.as_deref().or(self.prompt.as_deref())
    }

    /// Whether the built-in agents post their start and finish comments.
    fn comments_on(&self) -> bool {
        self.config.get("comments").and_then(Value::as_bool) != Some(false)
    }

    fn comment(&self, text: String) {
        if self.comments_on() {
            self.comments.post(text);
        }
    }
}

/// What an agent returns: output name → value. Each output becomes the next
/// version of the artifact `<step>.<output>`.
pub type AgentOutputs = BTreeMap<String, Value>;

/// An attempt's result: its outputs, and what its model calls used.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentResult {
    /// The outputs.
    pub outputs: AgentOutputs,
    /// Model usage, recorded with the attempt.
    pub usage: Option<Usage>,
    /// A message for the run's thread (with buttons, the user answers with
    /// a click).
    pub message: Option<crate::domain::run::AgentMessage>,
}

impl From<AgentOutputs> for AgentResult {
    fn from(outputs: AgentOutputs) -> Self {
        Self {
            outputs,
            usage: None,
            message: None,
        }
    }
}

/// An agent. Implementations must be safe to run more than once for the same
/// step and attempt (execution is at-least-once; the engine makes the
/// effect exactly-once).
///
/// The future of `run` need not be `Send`: it runs on the agent thread that
/// built it (HTTP clients of the actix family are thread-bound).
#[async_trait::async_trait(?Send)]
pub trait Agent: Send + Sync {
    /// Executes one attempt. `Err(Failed)` fails the attempt with that
    /// message; `Err(Stopped)` means it honoured `ctx.stop`.
    async fn run(&self, ctx: StepContext) -> Result<AgentResult, AgentError>;

    /// What the agent does, the JSON Schema of its configuration and of its
    /// outputs (for `GET /api/agents` and template validation).
    fn spec(&self) -> AgentSpec;

    /// Checks what a schema cannot (a URL that parses, a command that is
    /// registered), after the configuration passed the schema.
    fn check_config(&self, _config: &Value) -> Result<(), ConfigFault> {
        Ok(())
    }

    /// The message with buttons a step with `config` returns, when its
    /// configuration says (checked against the definition at creation).
    fn declared_message(&self, _config: &Value) -> Option<crate::domain::run::AgentMessage> {
        None
    }
}

/// What an agent is, for clients and validation.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSpec {
    /// What it does.
    pub description: String,
    /// The JSON Schema a step's `config` must satisfy.
    pub config_schema: Value,
    /// The JSON Schema of what it returns, when it says.
    pub output_schema: Option<Value>,
}

/// Where an agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    /// In the server's process.
    Builtin,
    /// In remote workers that claim its tasks over HTTP.
    Remote,
}

impl AgentKind {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Builtin => "builtin",
            Self::Remote => "remote",
        }
    }
}

/// One agent of the registry.
#[derive(Clone)]
struct Registered {
    kind: AgentKind,
    spec: AgentSpec,
    /// The in-process implementation (built-ins).
    agent: Option<Arc<dyn Agent>>,
    config: Arc<jsonschema::Validator>,
    outputs: Option<Arc<jsonschema::Validator>>,
}

/// An agent as `GET /api/agents` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// Its name.
    pub name: String,
    /// Built-in or remote.
    pub kind: AgentKind,
    /// What it is.
    pub spec: AgentSpec,
}

/// The agents this server can run, by name: the built-ins, which run
/// in-process, and the remote agents the configuration declares, which
/// workers serve.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    agents: BTreeMap<String, Registered>,
    /// The bounds definitions are checked against with these agents.
    definition_limits: DefinitionLimits,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.agents.keys()).finish()
    }
}

/// Why an agent could not be registered.
#[derive(Debug, thiserror::Error)]
#[error("agent '{name}': {reason}")]
pub struct RegistryError {
    /// The agent.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

/// What the built-in agents are set up with (from the server's
/// configuration).
#[derive(Debug, Clone, Default)]
pub struct BuiltinSettings {
    /// Secrets agent configurations may name.
    pub secrets: Secrets,
    /// The programs the `command` agent may run, by name.
    pub commands: BTreeMap<String, CommandSpec>,
    /// The chat-completions server of `llm` and `llm_judge`.
    pub llm: LlmSettings,
}

impl AgentRegistry {
    /// Definitions checked with this registry are held to `limits` (the
    /// server's `[limits]`).
    pub fn limit_definitions(&mut self, limits: DefinitionLimits) {
        self.definition_limits = limits;
    }

    /// A registry with the built-in agents set up with default settings (no
    /// secrets, no commands).
    pub fn with_builtins() -> Self {
        Self::builtins(BuiltinSettings::default()).expect("the built-in agents' schemas compile")
    }

    /// A registry with the built-in agents: `echo`, `template`, `http`,
    /// `command`, `judge`, `llm` and `llm_judge`.
    pub fn builtins(settings: BuiltinSettings) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        registry.register("echo", Arc::new(Echo))?;
        registry.register("template", Arc::new(TemplateAgent))?;
        registry.register("http", Arc::new(HttpAgent::new(settings.secrets.clone())))?;
        registry.register("command", Arc::new(CommandAgent::new(settings.commands)))?;
        registry.register("judge", Arc::new(Judge))?;
        let llm = LlmClient::new(settings.llm);
        registry.register("llm", Arc::new(LlmAgent::new(llm.clone())))?;
        registry.register("llm_judge", Arc::new(LlmJudge::new(llm)))?;
        Ok(registry)
    }

    /// Adds (or replaces) an in-process agent.
    pub fn register(&mut self, name: &str, agent: Arc<dyn Agent>) -> Result<(), RegistryError> {
        let spec = agent.spec();
        self.insert(name, AgentKind::Builtin, spec, Some(agent))
    }

    /// Adds an agent that remote workers serve.
    pub fn register_remote(&mut self, name: &str, spec: AgentSpec) -> Result<(), RegistryError> {
        self.insert(name, AgentKind::Remote, spec, None)
    }

    fn insert(
        &mut self,
        name: &str,
        kind: AgentKind,
        spec: AgentSpec,
        agent: Option<Arc<dyn Agent>>,
    ) -> Result<(), RegistryError> {
        let compile = |schema: &Value| {
            jsonschema::validator_for(schema)
                .map(Arc::new)
                .map_err(|e| RegistryError {
                    name: name.to_string(),
                    reason: format!("invalid JSON Schema: {e}"),
                })
        };
        let config = compile(&spec.config_schema)?;
        let outputs = spec.output_schema.as_ref().map(compile).transpose()?;
        self.agents.insert(
            name.to_string(),
            Registered {
                kind,
                spec,
                agent,
                config,
                outputs,
            },
        );
        Ok(())
    }

    /// The in-process implementation of `name`.
    pub fn get(&self, name: &AgentName) -> Option<Arc<dyn Agent>> {
        self.agents.get(name.as_str()).and_then(|r| r.agent.clone())
    }

    /// Whether remote workers serve `name`.
    pub fn is_remote(&self, name: &AgentName) -> bool {
        self.agents
            .get(name.as_str())
            .is_some_and(|r| r.kind == AgentKind::Remote)
    }

    /// The names, for validation.
    pub fn names(&self) -> BTreeSet<String> {
        self.agents.keys().cloned().collect()
    }

    /// Every agent, by name.
    pub fn list(&self) -> Vec<AgentInfo> {
        self.agents
            .iter()
            .map(|(name, r)| AgentInfo {
                name: name.clone(),
                kind: r.kind,
                spec: r.spec.clone(),
            })
            .collect()
    }

    /// Checks outputs against the agent's output schema, if it has one.
    pub fn check_outputs(&self, name: &AgentName, outputs: &Value) -> Result<(), ConfigFault> {
        match self
            .agents
            .get(name.as_str())
            .and_then(|r| r.outputs.as_ref())
        {
            Some(schema) => schema_fault(schema, outputs, "outputs"),
            None => Ok(()),
        }
    }
}

/// The first error of `value` against `schema`, as a fault at `root` plus
/// the error's path (`config.url`).
fn schema_fault(
    schema: &jsonschema::Validator,
    value: &Value,
    root: &str,
) -> Result<(), ConfigFault> {
    match schema.iter_errors(value).next() {
        None => Ok(()),
        Some(error) => {
            let path: Vec<String> = error
                .instance_path()
                .as_str()
                .split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            let field = std::iter::once(root.to_string())
                .chain(path)
                .collect::<Vec<_>>()
                .join(".");
            Err(ConfigFault {
                field,
                reason: error.to_string(),
            })
        }
    }
}

impl AgentCatalog for AgentRegistry {
    fn knows(&self, agent: &AgentName) -> bool {
        self.agents.contains_key(agent.as_str())
    }

    fn check_config(&self, agent: &AgentName, config: &Value) -> Result<(), ConfigFault> {
        let Some(registered) = self.agents.get(agent.as_str()) else {
            return Ok(());
        };
        schema_fault(&registered.config, config, "config")?;
        match &registered.agent {
            Some(agent) => agent.check_config(config),
            None => Ok(()),
        }
    }

    fn declared_message(
        &self,
        agent: &AgentName,
        config: &Value,
    ) -> Option<crate::domain::run::AgentMessage> {
        self.agents
            .get(agent.as_str())?
            .agent
            .as_ref()?
            .declared_message(config)
    }

    fn check_schema(&self, schema: &Value) -> Result<(), String> {
        jsonschema::validator_for(schema)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn limits(&self) -> DefinitionLimits {
        self.definition_limits
    }
}

/// The first fault of a run's `input` against its template's
/// `input_schema`: the path (`input.topic`) and the reason.
pub fn input_fault(schema: &jsonschema::Validator, input: &Value) -> Option<ConfigFault> {
    schema_fault(schema, input, "input").err()
}

#[cfg(test)]
pub(crate) mod testing {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;

    pub(crate) fn ctx(attempt: u32, config: Value, input: Value) -> StepContext {
        StepContext {
            run_id: RunId::parse("r").unwrap(),
            step: StepId::parse("s").unwrap(),
            attempt,
            prompt: None,
            prompt_override: None,
            instructions: Vec::new(),
            config,
            input,
            run_input: json!({"topic": "owls"}),
            upstream: BTreeMap::from([("outline".to_string(), json!({"text": "1. owls"}))]),
            stop: StopSignal::channel().1,
            comments: CommentSink::discard(),
            cpu: CpuPool::new(1),
            limits: AgentLimits::default(),
            budgets: Vec::new(),
            progress: ProgressSink::discard(),
        }
    }
    /// A sink that keeps what agents post.
    pub(crate) fn collecting() -> (CommentSink, Arc<std::sync::Mutex<Vec<String>>>) {
        let posted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = {
            let posted = posted.clone();
            CommentSink::new(move |text| posted.lock().unwrap().push(text))
        };
        (sink, posted)
    }
    /// Runs `agent` at most a minute: a hang fails the test instead of
    /// blocking it.
    pub(crate) async fn bounded(
        run: impl std::future::Future<Output = Result<AgentResult, AgentError>>,
    ) -> Result<AgentOutputs, AgentError> {
        bounded_value(run).await.map(|r| r.outputs)
    }
    pub(crate) async fn bounded_value<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), future)
            .await
            .expect("the agent did not get there")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::agents::testing::*;
    use serde_json::json;

    #[tokio::test]
    async fn echo_and_template_comment_when_they_start_and_finish() {
        let (comments, posted) = collecting();
        let mut context = ctx(3, Value::Null, json!({"a": 1}));
        context.comments = comments.clone();
        Echo.run(context).await.unwrap();
        let mut context = ctx(3, json!({"text": "hi"}), json!({}));
        context.comments = comments;
        TemplateAgent.run(context).await.unwrap();
        let posted = posted.lock().unwrap();
        assert_eq!(posted.len(), 4, "{posted:?}");
        assert!(
            posted[0].starts_with("echo started attempt 3"),
            "{posted:?}"
        );
        assert!(
            posted[1].starts_with("echo finished attempt 3"),
            "{posted:?}"
        );
        assert!(
            posted[2].starts_with("template started attempt 3"),
            "{posted:?}"
        );
        assert!(
            posted[3].starts_with("template finished attempt 3"),
            "{posted:?}"
        );
    }
    #[actix_web::test]
    async fn agents_post_no_comments_when_the_config_turns_them_off() {
        let (comments, posted) = collecting();
        let mut context = ctx(1, json!({"comments": false}), json!({"a": 1}));
        context.comments = comments.clone();
        Echo.run(context).await.unwrap();
        let mut context = ctx(1, json!({"comments": false, "text": "hi"}), json!({}));
        context.comments = comments.clone();
        TemplateAgent.run(context).await.unwrap();
        let (raise, stop) = StopSignal::channel();
        let mut context = ctx(
            1,
            json!({"comments": false, "delay_ms": 3_600_000, "stop_early": true}),
            json!({}),
        );
        context.stop = stop;
        context.comments = comments;
        let running = actix_web::rt::spawn(Echo.run(context));
        raise.send(true).unwrap();
        let result = bounded(async { running.await.unwrap() }).await;
        assert_eq!(result, Err(AgentError::Stopped));
        assert!(posted.lock().unwrap().is_empty());
    }
    #[test]
    fn the_effective_prompt_is_the_override_else_the_steps_own() {
        let mut context = ctx(1, Value::Null, json!({}));
        assert_eq!(context.effective_prompt(), None);
        context.prompt = Some("own".into());
        assert_eq!(context.effective_prompt(), Some("own"));
        context.prompt_override = Some("override".into());
        assert_eq!(context.effective_prompt(), Some("override"));
    }
}
