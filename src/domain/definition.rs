//! The template definition: a DAG of steps, each handled by an agent, and its
//! validation. Pure: parsing and graph checks only.
//!
//! A definition is parsed from JSON with [`Definition::parse`], which refuses
//! malformed bodies with the step at fault, then checked with
//! [`Definition::validate`] against the set of known agents.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{AgentName, OutputName, StepId};
use super::prerequisites::{Provides, Requires, MAX_PROVIDED, MAX_REASON_CHARS, MAX_REQUIREMENTS};
use super::template::MAX_NAME_LEN;

/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest back-off a retry policy may ask for (one hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Shortest lease a step may ask for (one second).
pub const MIN_LEASE_MS: u64 = 1_000;
/// Longest lease a step may ask for (one hour).
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// Most steps one definition may hold (a server may set fewer).
pub const MAX_STEPS: usize = 1_000;
/// Most steps on one chain of `depends_on`, by default.
pub const DEFAULT_MAX_CHAIN_DEPTH: usize = 100;
/// Largest prompt of one step, by default (bytes of UTF-8).
pub const DEFAULT_MAX_PROMPT_BYTES: usize = 64 * 1024;

/// The bounds a server sets on definitions (its `[limits]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefinitionLimits {
    /// Most steps (at most [`MAX_STEPS`]).
    pub max_steps: usize,
    /// Most steps on one chain of dependencies (a root alone is 1).
    pub max_chain_depth: usize,
    /// Largest prompt of one step (bytes).
    pub max_prompt_bytes: usize,
}

impl Default for DefinitionLimits {
    fn default() -> Self {
        Self {
            max_steps: MAX_STEPS,
            max_chain_depth: DEFAULT_MAX_CHAIN_DEPTH,
            max_prompt_bytes: DEFAULT_MAX_PROMPT_BYTES,
        }
    }
}

/// A workflow definition: the steps and how they depend on each other.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// The steps, by name.
    pub steps: BTreeMap<StepId, StepDefinition>,
    /// What the whole run's model calls may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// A JSON Schema that a run's input must satisfy at start (and that
    /// the dashboard draws the start form from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<Value>,
    /// What must exist before a user may start a run of it (runs and
    /// artifacts of other templates; see [`super::prerequisites`]).
    #[serde(default, skip_serializing_if = "Requires::is_empty")]
    pub requires: Requires,
    /// What its runs provide to the templates that require them.
    #[serde(default, skip_serializing_if = "Provides::is_empty")]
    pub provides: Provides,
}

/// A limit on model usage: a call that would pass it is not made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Most tokens (sent and received) in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Most cost in all (in the currency of the server's prices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost: Option<f64>,
}

impl Budget {
    /// Why this budget is unusable, if it is.
    fn fault(&self) -> Option<&'static str> {
        match (self.max_tokens, self.max_cost) {
            (None, None) => Some("give max_tokens, max_cost or both"),
            (Some(0), _) => Some("max_tokens must be at least 1"),
            (_, Some(cost)) if !(cost.is_finite() && cost > 0.0) => {
                Some("max_cost must be a positive number")
            }
            _ => None,
        }
    }
}

/// One step of a definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepDefinition {
    /// The agent that executes the step.
    pub agent: AgentName,
    /// Steps that must complete before this one is ready.
    #[serde(default)]
    pub depends_on: Vec<StepId>,
    /// The prompt handed to the agent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Agent-specific configuration.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub config: Value,
    /// Explicit inputs: input name → `<upstream step>.<output>`. When absent
    /// the step receives the run input (no dependencies) or the latest
    /// outputs of its dependencies.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
    /// How often the step is tried and how long to wait between attempts.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// When its agent finishes, the step waits in `awaiting_review` until a
    /// user approves it (or retries it).
    #[serde(default, skip_serializing_if = "is_false")]
    pub review: bool,
    /// Choices a reviewer picks from when approving (review steps only); the
    /// pick becomes the step's output `choice`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// When its agent finishes with a message with buttons, the step waits
    /// in `awaiting_input` until a user clicks one; the button's `value`
    /// becomes the step's output `choice`. (A message whose buttons route
    /// with `next_step` makes the step wait without it.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub wait_for_click: bool,
    /// Run the step only when this holds; otherwise it is `skipped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<Condition>,
    /// How long a remote worker's lease of this step lasts without a
    /// heartbeat (instead of the server's `lease_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// What this step's model calls may use, all attempts together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Produce, evaluate, revise: after each attempt an evaluator scores
    /// the outputs, and the step runs again with its feedback until the
    /// score reaches the threshold or the attempts are spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refine: Option<Refine>,
}

/// Most attempts a refine loop may ask for.
pub const MAX_REFINE_ATTEMPTS: u32 = 50;

/// A producer → evaluator → reviser loop (see [`StepDefinition::refine`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refine {
    /// The agent that scores each attempt's outputs (0..1, with feedback).
    pub evaluator: AgentName,
    /// Its configuration.
    #[serde(default = "empty_object", skip_serializing_if = "is_empty_object")]
    pub evaluator_config: Value,
    /// Attempts in all (each one produced and evaluated).
    pub max_attempts: u32,
    /// The score an attempt needs to pass.
    pub pass_threshold: f64,
    /// When no attempt passes: fail the step, or accept the best-scoring
    /// attempt.
    #[serde(default)]
    pub on_exhausted: OnExhausted,
}

/// What a refine loop does when no attempt passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// The step fails.
    #[default]
    Fail,
    /// The best-scoring attempt's outputs are the step's.
    AcceptBest,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

fn is_empty_object(value: &Value) -> bool {
    value.as_object().is_some_and(|m| m.is_empty())
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A condition on an upstream output: `{"step", "output", "equals": V}` or
/// `{"step", "output", "in": [V, …]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The upstream step whose output is tested.
    pub step: StepId,
    /// Its output.
    pub output: OutputName,
    /// Holds when the output's latest value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Holds when the output's latest value is one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
}

impl Condition {
    /// Whether `value` (the tested output's latest value; `None` when there
    /// is none) satisfies the condition.
    pub fn holds(&self, value: Option<&Value>) -> bool {
        let Some(value) = value else {
            return false;
        };
        match (&self.equals, &self.one_of) {
            (Some(expected), _) => value == expected,
            (None, Some(options)) => options.contains(value),
            (None, None) => false,
        }
    }
}

/// Most choices a review step may offer.
pub const MAX_CHOICES: usize = 50;

/// Per-step retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = no retry).
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Wait between a failed attempt and the next one.
    #[serde(default)]
    pub backoff_ms: u64,
}

fn one() -> u32 {
    1
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_ms: 0,
        }
    }
}

/// Why a definition was refused. Each variant names the step at fault where
/// there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// The JSON does not have the shape of a definition.
    #[error("malformed definition: {0}")]
    Malformed(String),
    /// `input_schema` is not a JSON Schema the server can use.
    #[error("input_schema is not a usable JSON Schema: {0}")]
    InvalidInputSchema(String),
    /// One step's JSON does not have the shape of a step.
    #[error("step '{step}' is malformed: {reason}")]
    MalformedStep {
        /// The step at fault.
        step: String,
        /// What serde said.
        reason: String,
    },
    /// There are no steps.
    #[error("a definition needs at least one step")]
    Empty,
    /// Too many steps.
    #[error("a definition may hold at most {max} steps")]
    TooManySteps {
        /// The bound.
        max: usize,
    },
    /// A chain of dependencies is too long.
    #[error(
        "step '{step}' ends a chain of {depth} dependent steps; this server allows at most {max}"
    )]
    ChainTooDeep {
        /// The last step of the chain.
        step: StepId,
        /// Steps on it.
        depth: usize,
        /// The bound.
        max: usize,
    },
    /// A step's prompt is too large.
    #[error("step '{step}' has a prompt of {bytes} bytes; this server allows at most {max}")]
    PromptTooLarge {
        /// The step.
        step: StepId,
        /// Its prompt's size.
        bytes: usize,
        /// The bound.
        max: usize,
    },
    /// `depends_on` names a step that does not exist.
    #[error("step '{step}' depends on '{dependency}', which is not a step of this definition")]
    UnknownDependency {
        /// The step at fault.
        step: StepId,
        /// The missing dependency.
        dependency: StepId,
    },
    /// The steps form a cycle.
    #[error("step '{step}' is part of a dependency cycle: {}", cycle.iter().map(StepId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// A step on the cycle.
        step: StepId,
        /// The cycle, first step repeated at the end.
        cycle: Vec<StepId>,
    },
    /// The agent is not known to this server.
    #[error("step '{step}' uses agent '{agent}', which this server does not know")]
    UnknownAgent {
        /// The step at fault.
        step: StepId,
        /// The unknown agent.
        agent: AgentName,
    },
    /// An input mapping does not point at an upstream output.
    #[error("step '{step}' maps input '{input}' to '{source_ref}': {reason}")]
    InvalidInputMapping {
        /// The step at fault.
        step: StepId,
        /// The input name.
        input: String,
        /// The mapping's source, as written.
        source_ref: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The retry policy is out of range.
    #[error("step '{step}' has an invalid retry policy: {reason}")]
    InvalidRetryPolicy {
        /// The step at fault.
        step: StepId,
        /// What is wrong with it.
        reason: String,
    },
    /// The `when` condition is not well-formed or does not test an upstream
    /// step.
    #[error("step '{step}' has an invalid 'when' condition: {reason}")]
    InvalidCondition {
        /// The step at fault.
        step: StepId,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent refuses the step's configuration.
    #[error(
        "step '{step}' has an invalid configuration for agent '{agent}' at '{field}': {reason}"
    )]
    InvalidAgentConfig {
        /// The step at fault.
        step: StepId,
        /// Its agent.
        agent: AgentName,
        /// The field at fault (`config.url`, `config`).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A refine loop is out of range or names an unknown evaluator.
    #[error("step '{step}' has an invalid refine loop: {reason}")]
    InvalidRefine {
        /// The step at fault.
        step: StepId,
        /// What is wrong with it.
        reason: String,
    },
    /// A budget is empty or out of range.
    #[error("{} has an invalid budget: {reason}", step.as_ref().map_or("the definition".to_string(), |s| format!("step '{s}'")))]
    InvalidBudget {
        /// The step at fault; none for the run's budget.
        step: Option<StepId>,
        /// What is wrong with it.
        reason: String,
    },
    /// A field of the step is out of range.
    #[error("step '{step}' has an invalid '{field}': {reason}")]
    InvalidStepField {
        /// The step at fault.
        step: StepId,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A requirement of `requires` is malformed or out of range.
    #[error("invalid requires: {reason}")]
    InvalidRequirement {
        /// What is wrong with it.
        reason: String,
    },
    /// `provides` is malformed or names an artifact no step writes.
    #[error("invalid provides: {reason}")]
    InvalidProvides {
        /// What is wrong with it.
        reason: String,
    },
    /// `choices` without `review`, or empty, duplicate or too many choices.
    #[error("step '{step}' has invalid choices: {reason}")]
    InvalidChoices {
        /// The step at fault.
        step: StepId,
        /// What is wrong with it.
        reason: String,
    },
}

impl DefinitionError {
    /// A stable machine-readable code for this kind of fault.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::MalformedStep { .. } => "malformed_definition",
            Self::Empty => "empty_definition",
            Self::TooManySteps { .. } => "too_many_steps",
            Self::ChainTooDeep { .. } => "dependency_chain_too_deep",
            Self::PromptTooLarge { .. } => "prompt_too_large",
            Self::UnknownDependency { .. } => "unknown_dependency",
            Self::Cycle { .. } => "dependency_cycle",
            Self::UnknownAgent { .. } => "unknown_agent",
            Self::InvalidInputMapping { .. } => "invalid_input_mapping",
            Self::InvalidRetryPolicy { .. } => "invalid_retry_policy",
            Self::InvalidCondition { .. } => "invalid_condition",
            Self::InvalidChoices { .. } => "invalid_choices",
            Self::InvalidStepField { .. } => "invalid_step_field",
            Self::InvalidAgentConfig { .. } => "invalid_agent_config",
            Self::InvalidBudget { .. } => "invalid_budget",
            Self::InvalidRefine { .. } => "invalid_refine",
            Self::InvalidInputSchema(_) => "invalid_input_schema",
            Self::InvalidRequirement { .. } => "invalid_requirement",
            Self::InvalidProvides { .. } => "invalid_provides",
        }
    }
}

/// The agents a server knows, for validation.
pub trait AgentCatalog: Send + Sync {
    /// Whether `agent` can execute steps on this server.
    fn knows(&self, agent: &AgentName) -> bool;

    /// Checks a step's configuration for `agent` (`config` is `{}` when the
    /// step has none); the fault names the field.
    fn check_config(&self, _agent: &AgentName, _config: &Value) -> Result<(), ConfigFault> {
        Ok(())
    }

    /// The message with buttons a step of `agent` with `config` returns,
    /// when its configuration says (its routes are checked against the
    /// definition when the template is saved).
    fn declared_message(
        &self,
        _agent: &AgentName,
        _config: &Value,
    ) -> Option<crate::domain::run::AgentMessage> {
        None
    }

    /// Checks that `schema` is a JSON Schema this server can validate with
    /// (a template's `input_schema`); the reason when not.
    fn check_schema(&self, _schema: &Value) -> Result<(), String> {
        Ok(())
    }

    /// The bounds this server sets on definitions.
    fn limits(&self) -> DefinitionLimits {
        DefinitionLimits::default()
    }
}

/// What is wrong with an agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFault {
    /// The field at fault, as a path from the step (`config.url`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl AgentCatalog for BTreeSet<String> {
    fn knows(&self, agent: &AgentName) -> bool {
        self.contains(agent.as_str())
    }
}

impl Definition {
    /// Parses a definition from JSON, naming the step at fault when one step
    /// is malformed. Does not validate the graph: see [`Definition::validate`].
    pub fn parse(value: &Value) -> Result<Self, DefinitionError> {
        let Some(object) = value.as_object() else {
            return Err(DefinitionError::Malformed(
                "a definition must be a JSON object with a 'steps' object".into(),
            ));
        };
        if let Some(unknown) = object.keys().find(|k| {
            !matches!(
                k.as_str(),
                "steps" | "budget" | "input_schema" | "requires" | "provides"
            )
        }) {
            return Err(DefinitionError::Malformed(format!(
                "unknown field '{unknown}' (expected 'steps', 'budget', 'input_schema', \
                 'requires' or 'provides')"
            )));
        }
        let requires: Requires = match object.get("requires") {
            None => Requires::default(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                DefinitionError::InvalidRequirement {
                    reason: e.to_string(),
                }
            })?,
        };
        let provides: Provides = match object.get("provides") {
            None => Provides::default(),
            Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
                DefinitionError::InvalidProvides {
                    reason: e.to_string(),
                }
            })?,
        };
        let input_schema = match object.get("input_schema") {
            None => None,
            Some(schema @ (Value::Object(_) | Value::Bool(_))) => Some(schema.clone()),
            Some(_) => {
                return Err(DefinitionError::Malformed(
                    "'input_schema' must be a JSON Schema (an object, or true or false)".into(),
                ))
            }
        };
        let budget =
            match object.get("budget") {
                None => None,
                Some(value) => Some(serde_json::from_value::<Budget>(value.clone()).map_err(
                    |e| DefinitionError::Malformed(format!("'budget' is malformed: {e}")),
                )?),
            };
        let Some(steps) = object.get("steps") else {
            return Err(DefinitionError::Malformed("missing field 'steps'".into()));
        };
        let Some(steps) = steps.as_object() else {
            return Err(DefinitionError::Malformed(
                "'steps' must be an object of step name to step".into(),
            ));
        };
        let mut parsed = BTreeMap::new();
        for (name, body) in steps {
            let step =
                StepId::parse(name.as_str()).map_err(|e| DefinitionError::MalformedStep {
                    step: name.clone(),
                    reason: e.to_string(),
                })?;
            let def: StepDefinition = serde_json::from_value(body.clone()).map_err(|e| {
                DefinitionError::MalformedStep {
                    step: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            parsed.insert(step, def);
        }
        Ok(Self {
            steps: parsed,
            budget,
            input_schema,
            requires,
            provides,
        })
    }

    /// Parses and validates in one go.
    pub fn parse_and_validate(
        value: &Value,
        agents: &dyn AgentCatalog,
    ) -> Result<Self, DefinitionError> {
        let definition = Self::parse(value)?;
        definition.validate(agents)?;
        Ok(definition)
    }

    /// Checks the definition: at least one step, known dependencies, no
    /// cycle, known agents, input mappings that point at upstream outputs and
    /// sane retry policies. The first fault found is returned.
    pub fn validate(&self, agents: &dyn AgentCatalog) -> Result<(), DefinitionError> {
        if self.steps.is_empty() {
            return Err(DefinitionError::Empty);
        }
        let limits = agents.limits();
        let max_steps = limits.max_steps.min(MAX_STEPS);
        if self.steps.len() > max_steps {
            return Err(DefinitionError::TooManySteps { max: max_steps });
        }
        if let Some(reason) = self.budget.as_ref().and_then(Budget::fault) {
            return Err(DefinitionError::InvalidBudget {
                step: None,
                reason: reason.into(),
            });
        }
        if let Some(schema) = &self.input_schema {
            agents
                .check_schema(schema)
                .map_err(DefinitionError::InvalidInputSchema)?;
        }
        for (step, def) in &self.steps {
            if let Some(dependency) = def.depends_on.iter().find(|d| !self.steps.contains_key(*d)) {
                return Err(DefinitionError::UnknownDependency {
                    step: step.clone(),
                    dependency: dependency.clone(),
                });
            }
        }
        self.check_acyclic()?;
        self.check_depth(limits.max_chain_depth)?;
        if let Some((step, prompt)) = self.steps.iter().find_map(|(s, d)| {
            d.prompt
                .as_ref()
                .filter(|p| p.len() > limits.max_prompt_bytes)
                .map(|p| (s, p))
        }) {
            return Err(DefinitionError::PromptTooLarge {
                step: step.clone(),
                bytes: prompt.len(),
                max: limits.max_prompt_bytes,
            });
        }
        self.check_requires()?;
        self.check_provides()?;
        for (step, def) in &self.steps {
            if !agents.knows(&def.agent) {
                return Err(DefinitionError::UnknownAgent {
                    step: step.clone(),
                    agent: def.agent.clone(),
                });
            }
            let config = if def.config.is_null() {
                Value::Object(Default::default())
            } else {
                def.config.clone()
            };
            agents.check_config(&def.agent, &config).map_err(|fault| {
                DefinitionError::InvalidAgentConfig {
                    step: step.clone(),
                    agent: def.agent.clone(),
                    field: fault.field,
                    reason: fault.reason,
                }
            })?;
            if let Some(message) = agents.declared_message(&def.agent, &config) {
                message.check(step, self).map_err(|refused| {
                    let reason = match refused {
                        crate::domain::run::RunError::InvalidMessage { reason, .. } => reason,
                        other => other.to_string(),
                    };
                    DefinitionError::InvalidAgentConfig {
                        step: step.clone(),
                        agent: def.agent.clone(),
                        field: "config.message".into(),
                        reason,
                    }
                })?;
            }
            let policy = def.retry;
            if policy.max_attempts == 0 || policy.max_attempts > MAX_ATTEMPTS_LIMIT {
                return Err(DefinitionError::InvalidRetryPolicy {
                    step: step.clone(),
                    reason: format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
                });
            }
            if policy.backoff_ms > MAX_BACKOFF_MS {
                return Err(DefinitionError::InvalidRetryPolicy {
                    step: step.clone(),
                    reason: format!("backoff_ms must be at most {MAX_BACKOFF_MS}"),
                });
            }
            if let Some(reason) = def.budget.as_ref().and_then(Budget::fault) {
                return Err(DefinitionError::InvalidBudget {
                    step: Some(step.clone()),
                    reason: reason.into(),
                });
            }
            if let Some(ms) = def.heartbeat_timeout_ms {
                if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&ms) {
                    return Err(DefinitionError::InvalidStepField {
                        step: step.clone(),
                        field: "heartbeat_timeout_ms",
                        reason: format!("must be between {MIN_LEASE_MS} and {MAX_LEASE_MS}"),
                    });
                }
            }
            check_refine(step, def, agents)?;
            self.check_inputs(step, def)?;
            check_choices(step, def)?;
            check_wait_for_click(step, def)?;
            self.check_condition(step, def)?;
        }
        Ok(())
    }

    fn check_condition(&self, step: &StepId, def: &StepDefinition) -> Result<(), DefinitionError> {
        let Some(when) = &def.when else {
            return Ok(());
        };
        let fail = |reason: String| DefinitionError::InvalidCondition {
            step: step.clone(),
            reason,
        };
        match (&when.equals, &when.one_of) {
            (Some(_), Some(_)) => return Err(fail("give 'equals' or 'in', not both".into())),
            (None, None) => return Err(fail("give 'equals' (not null) or 'in'".into())),
            (None, Some(options)) if options.is_empty() => {
                return Err(fail("'in' needs at least one value".into()))
            }
            _ => {}
        }
        if !self.upstream_of(step).contains(&when.step) {
            return Err(fail(format!(
                "it tests step '{}', which is not upstream of this one",
                when.step
            )));
        }
        let tested = &self.steps[&when.step];
        if when.output.as_str() == "choice" && !tested.choices.is_empty() {
            let expected: Vec<&Value> = match (&when.equals, &when.one_of) {
                (Some(v), _) => vec![v],
                (None, Some(vs)) => vs.iter().collect(),
                (None, None) => Vec::new(),
            };
            if let Some(bad) = expected.iter().find(|v| {
                !v.as_str()
                    .is_some_and(|c| tested.choices.iter().any(|x| x == c))
            }) {
                return Err(fail(format!(
                    "{bad} is not one of the choices of step '{}'",
                    when.step
                )));
            }
        }
        Ok(())
    }

    /// The local rules of `requires`: how many, names and reasons that a
    /// person can read. (That the named templates exist and
    /// provide what is asked is checked against the others, by
    /// [`super::prerequisites::check_against`].)
    fn check_requires(&self) -> Result<(), DefinitionError> {
        let requires = &self.requires;
        let fail = |reason: String| DefinitionError::InvalidRequirement { reason };
        if requires.workflows.len() + requires.artifacts.len() > MAX_REQUIREMENTS {
            return Err(fail(format!(
                "at most {MAX_REQUIREMENTS} requirements (workflows and artifacts together)"
            )));
        }
        let texts = requires
            .workflows
            .iter()
            .map(|w| (&w.template, &w.reason))
            .chain(requires.artifacts.iter().map(|a| (&a.template, &a.reason)));
        for (template, reason) in texts {
            if template.trim().is_empty() || template.trim() != template {
                return Err(fail(format!(
                    "template '{template}': give the template's name, without surrounding spaces"
                )));
            }
            if template.chars().count() > MAX_NAME_LEN {
                return Err(fail(format!(
                    "a template name is at most {MAX_NAME_LEN} characters"
                )));
            }
            if reason.trim().is_empty() {
                return Err(fail(format!(
                    "the requirement on '{template}' needs a reason (shown to whoever cannot start yet)"
                )));
            }
            if reason.chars().count() > MAX_REASON_CHARS {
                return Err(fail(format!(
                    "the reason of the requirement on '{template}' is longer than \
                     {MAX_REASON_CHARS} characters"
                )));
            }
        }
        Ok(())
    }

    /// `provides` names artifacts of this definition's steps.
    fn check_provides(&self) -> Result<(), DefinitionError> {
        let artifacts = &self.provides.artifacts;
        let fail = |reason: String| DefinitionError::InvalidProvides { reason };
        if artifacts.len() > MAX_PROVIDED {
            return Err(fail(format!("at most {MAX_PROVIDED} artifacts")));
        }
        for artifact in artifacts {
            if !self.steps.keys().any(|s| s.as_str() == artifact.step()) {
                return Err(fail(format!(
                    "'{artifact}': no step of this definition is named '{}'",
                    artifact.step()
                )));
            }
        }
        Ok(())
    }

    fn check_inputs(&self, step: &StepId, def: &StepDefinition) -> Result<(), DefinitionError> {
        if def.inputs.is_empty() {
            return Ok(());
        }
        let upstream = self.upstream_of(step);
        for (input, source) in &def.inputs {
            let fail = |reason| DefinitionError::InvalidInputMapping {
                step: step.clone(),
                input: input.clone(),
                source_ref: source.clone(),
                reason,
            };
            if let Some((template, artifact)) = source.rsplit_once(':') {
                if self.requires.artifact(template, artifact).is_none() {
                    return Err(fail(
                        "an input from another workflow (<template>:<step>.<output>) must be \
                         one of requires.artifacts",
                    ));
                }
                continue;
            }
            let Some((from, output)) = source.split_once('.') else {
                return Err(fail("a source must be written <step>.<output>"));
            };
            let (Ok(from), Ok(_)) = (StepId::parse(from), OutputName::parse(output)) else {
                return Err(fail("a source must be written <step>.<output>"));
            };
            if !self.steps.contains_key(&from) {
                return Err(fail("no step of this definition has that name"));
            }
            if !upstream.contains(&from) {
                return Err(fail("that step is not upstream of this one"));
            }
        }
        Ok(())
    }

    /// Every step that depends on `step`, directly or transitively.
    pub fn downstream_of(&self, step: &StepId) -> BTreeSet<StepId> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![step.clone()];
        while let Some(next) = todo.pop() {
            for dependant in self.dependants_of(&next) {
                if seen.insert(dependant.clone()) {
                    todo.push(dependant.clone());
                }
            }
        }
        seen
    }

    /// The longest chain of dependencies is at most `max` steps (checked
    /// once the graph is known to be acyclic): each step's depth is one
    /// more than its deepest dependency's, computed in dependency order.
    fn check_depth(&self, max: usize) -> Result<(), DefinitionError> {
        let mut depth: BTreeMap<&StepId, usize> = BTreeMap::new();
        for start in self.steps.keys() {
            // Iterative post-order: a step's depth once its dependencies'.
            let mut stack = vec![start];
            while let Some(&step) = stack.last() {
                if depth.contains_key(step) {
                    stack.pop();
                    continue;
                }
                let deps = &self.steps[step].depends_on;
                let pending: Vec<&StepId> =
                    deps.iter().filter(|d| !depth.contains_key(d)).collect();
                if pending.is_empty() {
                    let d = 1 + deps.iter().map(|d| depth[d]).max().unwrap_or(0);
                    if d > max {
                        return Err(DefinitionError::ChainTooDeep {
                            step: step.clone(),
                            depth: d,
                            max,
                        });
                    }
                    depth.insert(step, d);
                    stack.pop();
                } else {
                    stack.extend(pending);
                }
            }
        }
        Ok(())
    }

    /// Finds a cycle with a depth-first search (white/grey/black colouring).
    fn check_acyclic(&self) -> Result<(), DefinitionError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Colour {
            Grey,
            Black,
        }
        let mut colour: BTreeMap<&StepId, Colour> = BTreeMap::new();
        for start in self.steps.keys() {
            if colour.contains_key(start) {
                continue;
            }
            // Iterative DFS: (node, index of the next dependency to visit).
            let mut stack: Vec<(&StepId, usize)> = vec![(start, 0)];
            colour.insert(start, Colour::Grey);
            while let Some((node, next)) = stack.last_mut() {
                let deps = &self.steps[*node].depends_on;
                if *next < deps.len() {
                    let dep = &deps[*next];
                    *next += 1;
                    match colour.get(dep) {
                        None => {
                            colour.insert(dep, Colour::Grey);
                            stack.push((dep, 0));
                        }
                        Some(Colour::Grey) => {
                            let from = stack.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                            let mut cycle: Vec<StepId> =
                                stack[from..].iter().map(|(n, _)| (*n).clone()).collect();
                            cycle.push(dep.clone());
                            return Err(DefinitionError::Cycle {
                                step: dep.clone(),
                                cycle,
                            });
                        }
                        Some(Colour::Black) => {}
                    }
                } else {
                    colour.insert(*node, Colour::Black);
                    stack.pop();
                }
            }
        }
        Ok(())
    }

    /// Every step `step` depends on, directly or transitively.
    pub fn upstream_of(&self, step: &StepId) -> BTreeSet<StepId> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&StepId> = self
            .steps
            .get(step)
            .map(|d| d.depends_on.iter().collect())
            .unwrap_or_default();
        while let Some(next) = todo.pop() {
            if seen.insert(next.clone()) {
                if let Some(def) = self.steps.get(next) {
                    todo.extend(def.depends_on.iter());
                }
            }
        }
        seen
    }

    /// The steps that depend directly on `step`.
    pub fn dependants_of<'a>(&'a self, step: &'a StepId) -> impl Iterator<Item = &'a StepId> + 'a {
        self.steps
            .iter()
            .filter(move |(_, d)| d.depends_on.contains(step))
            .map(|(s, _)| s)
    }

    /// The steps with no dependencies.
    pub fn roots(&self) -> impl Iterator<Item = &StepId> {
        self.steps
            .iter()
            .filter(|(_, d)| d.depends_on.is_empty())
            .map(|(s, _)| s)
    }
}

fn check_refine(
    step: &StepId,
    def: &StepDefinition,
    agents: &dyn AgentCatalog,
) -> Result<(), DefinitionError> {
    let Some(refine) = &def.refine else {
        return Ok(());
    };
    let fail = |reason: String| DefinitionError::InvalidRefine {
        step: step.clone(),
        reason,
    };
    if !agents.knows(&refine.evaluator) {
        return Err(fail(format!(
            "its evaluator '{}' is not an agent of this server",
            refine.evaluator
        )));
    }
    if refine.max_attempts == 0 || refine.max_attempts > MAX_REFINE_ATTEMPTS {
        return Err(fail(format!(
            "max_attempts must be between 1 and {MAX_REFINE_ATTEMPTS}"
        )));
    }
    if !(0.0..=1.0).contains(&refine.pass_threshold) {
        return Err(fail("pass_threshold must be between 0 and 1".into()));
    }
    if def.review {
        return Err(fail(
            "a step cannot both refine and await review (put the review on a step after it)".into(),
        ));
    }
    agents
        .check_config(&refine.evaluator, &refine.evaluator_config)
        .map_err(|fault| DefinitionError::InvalidAgentConfig {
            step: step.clone(),
            agent: refine.evaluator.clone(),
            field: format!("refine.evaluator_{}", fault.field),
            reason: fault.reason,
        })
}

/// A step waits for a review or for a click, not both, and a refine loop
/// does neither.
fn check_wait_for_click(step: &StepId, def: &StepDefinition) -> Result<(), DefinitionError> {
    if !def.wait_for_click {
        return Ok(());
    }
    let fail = |reason: &str| DefinitionError::InvalidStepField {
        step: step.clone(),
        field: "wait_for_click",
        reason: reason.to_string(),
    };
    if def.review {
        return Err(fail(
            "a step waits for a review or for a click, not both (put one on a step after it)",
        ));
    }
    if def.refine.is_some() {
        return Err(fail(
            "a refine step cannot wait for a click (put the click on a step after it)",
        ));
    }
    Ok(())
}

fn check_choices(step: &StepId, def: &StepDefinition) -> Result<(), DefinitionError> {
    if def.choices.is_empty() {
        return Ok(());
    }
    let fail = |reason: &str| DefinitionError::InvalidChoices {
        step: step.clone(),
        reason: reason.to_string(),
    };
    if !def.review {
        return Err(fail(
            "only a review step (\"review\": true) can offer choices",
        ));
    }
    if def.choices.len() > MAX_CHOICES {
        return Err(fail("a step may offer at most 50 choices"));
    }
    let unique: BTreeSet<&String> = def.choices.iter().collect();
    if unique.len() != def.choices.len() {
        return Err(fail("choices must be distinct"));
    }
    if def
        .choices
        .iter()
        .any(|c| c.trim().is_empty() || c.chars().count() > 200)
    {
        return Err(fail(
            "each choice must be 1 to 200 characters and not blank",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agents() -> BTreeSet<String> {
        ["echo", "template"].into_iter().map(String::from).collect()
    }

    fn check(value: Value) -> Result<Definition, DefinitionError> {
        Definition::parse_and_validate(&value, &agents())
    }

    #[test]
    fn a_diamond_is_valid() {
        let def = check(json!({"steps": {
            "a": {"agent": "echo"},
            "b": {"agent": "echo", "depends_on": ["a"]},
            "c": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "a.value"}},
            "d": {"agent": "echo", "depends_on": ["b", "c"], "retry": {"max_attempts": 3, "backoff_ms": 10}}
        }}))
        .unwrap();
        assert_eq!(def.roots().map(StepId::as_str).collect::<Vec<_>>(), ["a"]);
        let d = StepId::parse("d").unwrap();
        assert_eq!(def.upstream_of(&d).len(), 3);
        assert_eq!(def.steps[&d].retry.max_attempts, 3);
    }

    #[test]
    fn an_input_schema_is_kept_and_checked_by_the_catalogue() {
        let schema = json!({"type": "object", "required": ["topic"]});
        let def =
            check(json!({"input_schema": schema, "steps": {"a": {"agent": "echo"}}})).unwrap();
        assert_eq!(def.input_schema.as_ref(), Some(&schema));
        // It survives a round trip through the stored definition.
        let stored = serde_json::to_value(&def).unwrap();
        assert_eq!(Definition::parse(&stored).unwrap(), def);
        assert!(check(json!({"input_schema": true, "steps": {"a": {"agent": "echo"}}})).is_ok());
        let err = check(json!({"input_schema": 5, "steps": {"a": {"agent": "echo"}}})).unwrap_err();
        assert_eq!(err.code(), "malformed_definition");

        /// A catalogue that refuses every schema.
        struct Picky;
        impl AgentCatalog for Picky {
            fn knows(&self, _: &AgentName) -> bool {
                true
            }
            fn check_schema(&self, _: &Value) -> Result<(), String> {
                Err("no".into())
            }
        }
        let value = json!({"input_schema": {}, "steps": {"a": {"agent": "echo"}}});
        let err = Definition::parse_and_validate(&value, &Picky).unwrap_err();
        assert_eq!(err.code(), "invalid_input_schema");
        let plain = json!({"steps": {"a": {"agent": "echo"}}});
        assert!(Definition::parse_and_validate(&plain, &Picky).is_ok());
    }

    #[test]
    fn a_cycle_is_refused_naming_a_step_on_it() {
        let err = check(json!({"steps": {
            "a": {"agent": "echo", "depends_on": ["c"]},
            "b": {"agent": "echo", "depends_on": ["a"]},
            "c": {"agent": "echo", "depends_on": ["b"]}
        }}))
        .unwrap_err();
        assert_eq!(err.code(), "dependency_cycle");
        let DefinitionError::Cycle { cycle, .. } = &err else {
            panic!("expected a cycle, got {err:?}")
        };
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
    }

    #[test]
    fn a_self_dependency_is_a_cycle() {
        let err =
            check(json!({"steps": {"a": {"agent": "echo", "depends_on": ["a"]}}})).unwrap_err();
        assert!(matches!(err, DefinitionError::Cycle { ref step, .. } if step.as_str() == "a"));
    }

    #[test]
    fn an_unknown_dependency_is_refused() {
        let err =
            check(json!({"steps": {"a": {"agent": "echo", "depends_on": ["ghost"]}}})).unwrap_err();
        assert!(
            matches!(err, DefinitionError::UnknownDependency { ref step, ref dependency }
            if step.as_str() == "a" && dependency.as_str() == "ghost")
        );
        assert!(err.to_string().contains("'a'"));
    }

    #[test]
    fn an_unknown_agent_is_refused() {
        let err = check(json!({"steps": {"a": {"agent": "oracle"}}})).unwrap_err();
        assert!(
            matches!(err, DefinitionError::UnknownAgent { ref step, .. } if step.as_str() == "a")
        );
    }

    #[test]
    fn an_empty_step_set_is_refused() {
        assert_eq!(
            check(json!({"steps": {}})).unwrap_err(),
            DefinitionError::Empty
        );
    }

    #[test]
    fn an_input_mapping_to_a_step_that_is_not_upstream_is_refused() {
        let err = check(json!({"steps": {
            "a": {"agent": "echo"},
            "b": {"agent": "echo"},
            "c": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "b.value"}}
        }}))
        .unwrap_err();
        assert!(
            matches!(err, DefinitionError::InvalidInputMapping { ref step, .. } if step.as_str() == "c")
        );
        for bad in ["nodot", "ghost.value", "a.", "a.b.c d"] {
            let err = check(json!({"steps": {
                "a": {"agent": "echo"},
                "c": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": bad}}
            }}))
            .unwrap_err();
            assert_eq!(err.code(), "invalid_input_mapping", "{bad}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused_naming_the_step() {
        for (body, code) in [
            (json!([]), "malformed_definition"),
            (json!({}), "malformed_definition"),
            (json!({"steps": []}), "malformed_definition"),
            (json!({"steps": {}, "extra": 1}), "malformed_definition"),
        ] {
            assert_eq!(check(body).unwrap_err().code(), code);
        }
        let err = check(json!({"steps": {"a": {"agent": 7}}})).unwrap_err();
        assert!(matches!(err, DefinitionError::MalformedStep { ref step, .. } if step == "a"));
        let err = check(json!({"steps": {"a": {"agent": "echo", "colour": "red"}}})).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = check(json!({"steps": {"bad name": {"agent": "echo"}}})).unwrap_err();
        assert!(
            matches!(err, DefinitionError::MalformedStep { ref step, .. } if step == "bad name")
        );
    }

    /// A definition where `a` is a review step offering `choices`, `b`
    /// follows `a`, `c` follows `b` and carries `when`.
    fn with_condition(choices: Value, when: Value) -> Result<Definition, DefinitionError> {
        check(json!({"steps": {
            "a": {"agent": "echo", "review": true, "choices": choices},
            "b": {"agent": "echo", "depends_on": ["a"]},
            "side": {"agent": "echo"},
            "c": {"agent": "echo", "depends_on": ["b"], "when": when}
        }}))
    }

    fn assert_refused(result: Result<Definition, DefinitionError>, code: &str, step: &str) {
        let err = result.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        match &err {
            DefinitionError::InvalidCondition { step: at, .. }
            | DefinitionError::InvalidChoices { step: at, .. } => assert_eq!(at.as_str(), step),
            other => panic!("expected a condition or choices fault, got {other:?}"),
        }
    }

    #[test]
    fn a_branching_definition_with_review_choices_and_conditions_is_valid() {
        let def = check(json!({"steps": {
            "draft": {"agent": "echo"},
            "review": {"agent": "echo", "depends_on": ["draft"], "review": true,
                       "choices": ["ship", "rework", "drop"]},
            "ship": {"agent": "echo", "depends_on": ["review"],
                     "when": {"step": "review", "output": "choice", "equals": "ship"}},
            "fix": {"agent": "echo", "depends_on": ["review"],
                    "when": {"step": "review", "output": "choice", "in": ["rework", "drop"]}},
            "tidy": {"agent": "echo", "depends_on": ["fix"],
                     "when": {"step": "draft", "output": "value", "equals": {"any": ["json"]}}},
            "note": {"agent": "echo", "depends_on": ["review"],
                     "when": {"step": "review", "output": "value", "in": [1, "two", null]}},
            "plain": {"agent": "echo", "review": true}
        }}))
        .unwrap();
        let step = |name: &str| &def.steps[&StepId::parse(name).unwrap()];
        assert!(step("review").review);
        assert_eq!(step("review").choices, ["ship", "rework", "drop"]);
        assert!(step("plain").review && step("plain").choices.is_empty());
        let ship = step("ship").when.as_ref().unwrap();
        assert_eq!(
            (ship.step.as_str(), ship.output.as_str()),
            ("review", "choice")
        );
        assert_eq!(ship.equals, Some(json!("ship")));
        assert_eq!(ship.one_of, None);
        let fix = step("fix").when.as_ref().unwrap();
        assert_eq!(fix.one_of, Some(vec![json!("rework"), json!("drop")]));
        assert!(!step("draft").review && step("draft").when.is_none());

        // It serialises back with the API's spelling ("in") and round-trips.
        let text = serde_json::to_value(&def).unwrap();
        assert_eq!(
            text["steps"]["fix"]["when"],
            json!({"step": "review", "output": "choice", "in": ["rework", "drop"]})
        );
        assert!(text["steps"]["draft"].get("review").is_none());
        assert_eq!(Definition::parse(&text).unwrap(), def);
    }

    #[test]
    fn a_condition_holds_when_the_value_equals_or_is_among_its_values() {
        let equals = Condition {
            step: StepId::parse("a").unwrap(),
            output: OutputName::parse("out").unwrap(),
            equals: Some(json!("go")),
            one_of: None,
        };
        assert!(equals.holds(Some(&json!("go"))));
        assert!(!equals.holds(Some(&json!("stop"))));
        assert!(!equals.holds(None));
        let one_of = Condition {
            equals: None,
            one_of: Some(vec![json!(1), json!("x")]),
            ..equals
        };
        assert!(one_of.holds(Some(&json!(1))));
        assert!(one_of.holds(Some(&json!("x"))));
        assert!(!one_of.holds(Some(&json!("1"))));
        assert!(!one_of.holds(None));
    }

    #[test]
    fn a_condition_with_both_equals_and_in_is_refused() {
        assert_refused(
            with_condition(
                json!([]),
                json!({"step": "a", "output": "out", "equals": "x", "in": ["x"]}),
            ),
            "invalid_condition",
            "c",
        );
    }

    #[test]
    fn a_condition_with_neither_equals_nor_in_is_refused() {
        for when in [
            json!({"step": "a", "output": "out"}),
            json!({"step": "a", "output": "out", "equals": null}),
        ] {
            assert_refused(with_condition(json!([]), when), "invalid_condition", "c");
        }
    }

    #[test]
    fn a_condition_with_an_empty_in_is_refused() {
        assert_refused(
            with_condition(json!([]), json!({"step": "a", "output": "out", "in": []})),
            "invalid_condition",
            "c",
        );
    }

    #[test]
    fn a_condition_on_a_step_that_is_not_upstream_is_refused() {
        for tested in ["side", "c", "ghost"] {
            assert_refused(
                with_condition(
                    json!([]),
                    json!({"step": tested, "output": "out", "equals": "x"}),
                ),
                "invalid_condition",
                "c",
            );
        }
        // Transitively upstream is enough.
        assert!(with_condition(
            json!([]),
            json!({"step": "a", "output": "out", "equals": "x"})
        )
        .is_ok());
    }

    #[test]
    fn a_condition_on_a_choice_with_a_value_that_is_not_a_choice_is_refused() {
        let choices = json!(["ship", "rework"]);
        for when in [
            json!({"step": "a", "output": "choice", "equals": "maybe"}),
            json!({"step": "a", "output": "choice", "equals": 1}),
            json!({"step": "a", "output": "choice", "in": ["ship", "maybe"]}),
        ] {
            assert_refused(
                with_condition(choices.clone(), when),
                "invalid_condition",
                "c",
            );
        }
        for when in [
            json!({"step": "a", "output": "choice", "equals": "rework"}),
            json!({"step": "a", "output": "choice", "in": ["ship", "rework"]}),
            // Another output of the same step is not checked against them.
            json!({"step": "a", "output": "out", "equals": "maybe"}),
        ] {
            assert!(with_condition(choices.clone(), when).is_ok());
        }
    }

    #[test]
    fn choices_on_a_step_that_is_not_a_review_step_are_refused() {
        let err = check(json!({"steps": {
            "a": {"agent": "echo", "choices": ["ship", "rework"]}
        }}));
        assert_refused(err, "invalid_choices", "a");
        let err = check(json!({"steps": {
            "a": {"agent": "echo", "review": false, "choices": ["ship"]}
        }}));
        assert_refused(err, "invalid_choices", "a");
    }

    #[test]
    fn duplicate_blank_too_long_or_too_many_choices_are_refused() {
        let too_many: Vec<String> = (0..=MAX_CHOICES).map(|i| format!("c{i}")).collect();
        let just_enough: Vec<String> = (0..MAX_CHOICES).map(|i| format!("c{i}")).collect();
        for choices in [
            json!(["ship", "ship"]),
            json!(["ship", ""]),
            json!(["ship", "   "]),
            json!(["x".repeat(201)]),
            json!(too_many),
        ] {
            let result = check(json!({"steps": {
                "a": {"agent": "echo", "review": true, "choices": choices}
            }}));
            assert_refused(result, "invalid_choices", "a");
        }
        for choices in [json!(just_enough), json!(["x".repeat(200)])] {
            assert!(check(json!({"steps": {
                "a": {"agent": "echo", "review": true, "choices": choices}
            }}))
            .is_ok());
        }
    }

    #[test]
    fn retry_policies_out_of_range_are_refused() {
        for retry in [
            json!({"max_attempts": 0}),
            json!({"max_attempts": 1000}),
            json!({"backoff_ms": 99_999_999}),
        ] {
            let err =
                check(json!({"steps": {"a": {"agent": "echo", "retry": retry}}})).unwrap_err();
            assert_eq!(err.code(), "invalid_retry_policy");
        }
    }
}
