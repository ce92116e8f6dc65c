//! Agents execute steps. A small trait, a registry, and the two built-ins:
//! `echo` (returns its input; `delay_ms` and `fail_times` make it slow or
//! flaky for tests, demos and benchmarks) and `template` (renders
//! `config.text` with minijinja).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::domain::definition::AgentCatalog;
use crate::domain::ids::{AgentName, RunId, StepId};

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
    /// The step's agent configuration.
    pub config: Value,
    /// The step's input (see `Run::step_input`), blobs resolved.
    pub input: Value,
    /// The run input.
    pub run_input: Value,
    /// Latest outputs of every completed upstream step: step → output → value.
    pub upstream: BTreeMap<String, Value>,
}

/// What an agent returns: output name → value. Each output becomes the next
/// version of the artifact `<step>.<output>`.
pub type AgentOutputs = BTreeMap<String, Value>;

/// An agent. Implementations must be safe to run more than once for the same
/// step and attempt (execution is at-least-once; the engine makes the
/// effect exactly-once).
#[async_trait::async_trait]
pub trait Agent: Send + Sync {
    /// Executes one attempt. An `Err` fails the attempt with that message.
    async fn run(&self, ctx: StepContext) -> Result<AgentOutputs, String>;
}

/// The agents this server can run, by name.
#[derive(Clone, Default)]
pub struct AgentRegistry {
    agents: HashMap<String, Arc<dyn Agent>>,
}

impl std::fmt::Debug for AgentRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.agents.keys()).finish()
    }
}

impl AgentRegistry {
    /// A registry with the built-in agents.
    pub fn with_builtins() -> Self {
        let mut registry = Self::default();
        registry.register("echo", Arc::new(Echo));
        registry.register("template", Arc::new(TemplateAgent));
        registry
    }

    /// Adds (or replaces) an agent.
    pub fn register(&mut self, name: &str, agent: Arc<dyn Agent>) {
        self.agents.insert(name.to_string(), agent);
    }

    /// The agent called `name`.
    pub fn get(&self, name: &AgentName) -> Option<Arc<dyn Agent>> {
        self.agents.get(name.as_str()).cloned()
    }

    /// The names, for validation.
    pub fn names(&self) -> BTreeSet<String> {
        self.agents.keys().cloned().collect()
    }
}

impl AgentCatalog for AgentRegistry {
    fn knows(&self, agent: &AgentName) -> bool {
        self.agents.contains_key(agent.as_str())
    }
}

/// `echo`: outputs its input. An object input gives one output per key;
/// anything else gives the single output `value`. Config: `delay_ms` (wait
/// that long first), `fail_times` (fail the first N attempts).
pub struct Echo;

#[async_trait::async_trait]
impl Agent for Echo {
    async fn run(&self, ctx: StepContext) -> Result<AgentOutputs, String> {
        let delay = ctx
            .config
            .get("delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let fail_times = ctx
            .config
            .get("fail_times")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if u64::from(ctx.attempt) <= fail_times {
            return Err(format!(
                "echo: failing attempt {} of the first {fail_times} as configured",
                ctx.attempt
            ));
        }
        Ok(match ctx.input {
            Value::Object(map) if !map.is_empty() => map.into_iter().collect(),
            other => BTreeMap::from([("value".to_string(), other)]),
        })
    }
}

/// `template`: renders `config.text` with minijinja. The context holds
/// `input` (the run input), `inputs` (the step's input), `steps` (every
/// completed upstream step's outputs) and each upstream step by name.
/// Output: `text`.
pub struct TemplateAgent;

#[async_trait::async_trait]
impl Agent for TemplateAgent {
    async fn run(&self, ctx: StepContext) -> Result<AgentOutputs, String> {
        let Some(text) = ctx.config.get("text").and_then(Value::as_str) else {
            return Err("template: config.text (a string) is required".to_string());
        };
        let mut context = Map::new();
        for (step, outputs) in &ctx.upstream {
            context.insert(step.clone(), outputs.clone());
        }
        context.insert(
            "steps".into(),
            Value::Object(ctx.upstream.clone().into_iter().collect()),
        );
        context.insert("input".into(), ctx.run_input.clone());
        context.insert("inputs".into(), ctx.input.clone());
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let rendered = env
            .render_str(text, Value::Object(context))
            .map_err(|e| format!("template: {e}"))?;
        Ok(BTreeMap::from([(
            "text".to_string(),
            Value::String(rendered),
        )]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(attempt: u32, config: Value, input: Value) -> StepContext {
        StepContext {
            run_id: RunId::parse("r").unwrap(),
            step: StepId::parse("s").unwrap(),
            attempt,
            prompt: None,
            config,
            input,
            run_input: json!({"topic": "owls"}),
            upstream: BTreeMap::from([("outline".to_string(), json!({"text": "1. owls"}))]),
        }
    }

    #[tokio::test]
    async fn echo_returns_each_key_of_an_object_input_as_an_output() {
        let out = Echo
            .run(ctx(1, Value::Null, json!({"a": 1, "b": "x"})))
            .await
            .unwrap();
        assert_eq!(
            out,
            BTreeMap::from([("a".into(), json!(1)), ("b".into(), json!("x"))])
        );
        let out = Echo.run(ctx(1, Value::Null, json!(7))).await.unwrap();
        assert_eq!(out, BTreeMap::from([("value".into(), json!(7))]));
    }

    #[tokio::test]
    async fn echo_fails_the_configured_number_of_attempts() {
        let config = json!({"fail_times": 2});
        assert!(Echo.run(ctx(1, config.clone(), json!({}))).await.is_err());
        assert!(Echo.run(ctx(2, config.clone(), json!({}))).await.is_err());
        assert!(Echo.run(ctx(3, config, json!({}))).await.is_ok());
    }

    #[tokio::test]
    async fn template_renders_run_input_and_upstream_outputs() {
        let config =
            json!({"text": "{{ input.topic }} / {{ outline.text }} / {{ steps.outline.text }}"});
        let out = TemplateAgent.run(ctx(1, config, json!({}))).await.unwrap();
        assert_eq!(out["text"], json!("owls / 1. owls / 1. owls"));
    }

    #[tokio::test]
    async fn template_fails_clearly_without_text_or_on_undefined_names() {
        let err = TemplateAgent
            .run(ctx(1, json!({}), json!({})))
            .await
            .unwrap_err();
        assert!(err.contains("config.text"));
        let err = TemplateAgent
            .run(ctx(1, json!({"text": "{{ nope.x }}"}), json!({})))
            .await
            .unwrap_err();
        assert!(err.starts_with("template:"), "{err}");
    }
}
