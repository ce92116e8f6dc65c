//! The configuration file (`runlog serve --config FILE`, env
//! `RUNLOG_CONFIG`): TOML, every key checked (an unknown key is an error
//! naming it), with environment overrides for the secrets people keep out of
//! files (`RUNLOG_WORKER_TOKEN`, `RUNLOG_LLM_BASE_URL`, `RUNLOG_LLM_API_KEY`,
//! `RUNLOG_LLM_MODEL`). [`FileConfig::load`] reads and checks it;
//! [`FileConfig::resolve_secrets`] reads the secrets it names.
//!
//! ```toml
//! worker_token = "..."            # env RUNLOG_WORKER_TOKEN overrides
//! lease_ms = 30000                # heartbeat timeout of remote steps
//! [agents.summarize]              # a remote agent, served by workers
//! description = "Summarises a text"
//! config_schema = { type = "object" }
//! [commands.wordcount]            # a command the `command` agent may run
//! program = "/usr/bin/wc"
//! args = ["-w"]
//! [llm]
//! base_url = "http://127.0.0.1:11434/v1"
//! model = "llama3.2"
//! [secrets]
//! crm_token = { env = "CRM_TOKEN" }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::domain::definition::MAX_STEPS;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("the configuration file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said (it names the key and the line).
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// The configuration file's contents.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The token remote workers present (`Authorization: Bearer …`). Never
    /// logged.
    pub worker_token: Option<String>,
    /// How long a remote worker's lease lasts without a heartbeat (ms).
    pub lease_ms: Option<u64>,
    /// How long running attempts have to stop after a cancel (ms).
    pub cancel_grace_ms: Option<u64>,
    /// Lease expiries in a row after which a step fails.
    pub max_lease_expiries: Option<u32>,
    /// Agents served by remote workers, by name.
    #[serde(default)]
    pub agents: BTreeMap<String, RemoteAgentConfig>,
    /// Programs the `command` agent may run, by name.
    #[serde(default)]
    pub commands: BTreeMap<String, CommandConfig>,
    /// The OpenAI-compatible server the `llm` agent calls.
    #[serde(default)]
    pub llm: LlmConfig,
    /// Secrets agent configurations may name (`{{ secrets.NAME }}`).
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// Limits of the in-process agents and of what clients send.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// An agent served by remote workers.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAgentConfig {
    /// What it does (shown by `GET /api/agents`).
    #[serde(default)]
    pub description: String,
    /// A JSON Schema a step's `config` must satisfy.
    pub config_schema: Option<Value>,
    /// A JSON Schema the outputs a worker returns must satisfy.
    pub output_schema: Option<Value>,
}

/// A program the `command` agent may run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program: a path, not a shell command line.
    pub program: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The longest it may run (ms); a step's `timeout_ms` may only lower it.
    pub timeout_ms: Option<u64>,
    /// What it does (shown by `GET /api/agents`).
    #[serde(default)]
    pub description: String,
    /// Environment variables it gets, by name (nothing else of the server's
    /// environment is passed, but `PATH`, `HOME`, `LANG` and `TZ`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// The OpenAI-compatible chat-completions server of the `llm` agent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// Where it is, e.g. `http://127.0.0.1:11434/v1`.
    pub base_url: Option<String>,
    /// Its API key (sent as a bearer token; never stored or logged).
    pub api_key: Option<String>,
    /// The model steps use unless they name one.
    pub model: Option<String>,
    /// Calls in flight at once across all runs.
    pub max_concurrency: Option<usize>,
    /// The longest one call may take (ms).
    pub timeout_ms: Option<u64>,
    /// Prices per token, by model, to record each attempt's cost.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

/// What one token costs, in whatever currency the operator counts in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Per prompt (input) token.
    pub prompt: f64,
    /// Per completion (output) token.
    pub completion: f64,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretSource {
    /// An environment variable of the server.
    Env(String),
    /// A file (its contents, trailing newline removed).
    File(PathBuf),
}

/// Limits of the in-process agents and of what clients send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The longest one attempt of an in-process agent may take (ms).
    pub agent_timeout_ms: Option<u64>,
    /// The largest outputs one attempt may return (bytes of JSON).
    pub max_output_bytes: Option<usize>,
    /// The work one template rendering may do (minijinja fuel).
    pub template_fuel: Option<u64>,
    /// The largest run input (bytes of JSON).
    pub max_run_input_bytes: Option<usize>,
    /// Messages one run's thread takes per minute.
    pub messages_per_run_per_minute: Option<usize>,
    /// Runs one WebSocket connection may follow at once.
    pub ws_subscriptions_per_connection: Option<usize>,
    /// WebSocket connections one token may hold open (per node).
    pub ws_connections_per_token: Option<usize>,
    /// Messages that may wait to be sent on one WebSocket connection.
    pub ws_outbound_queue: Option<usize>,
    /// The longest `POST /api/runs?wait=` may wait (seconds).
    pub max_start_wait_seconds: Option<u64>,
    /// The longest a worker's claim may wait for a task (seconds).
    pub max_claim_wait_seconds: Option<u64>,
    /// The largest request body (bytes).
    pub max_body_bytes: Option<usize>,
    /// Most steps in one definition (at most 1,000).
    pub max_steps: Option<usize>,
    /// Most steps on one chain of `depends_on`.
    pub max_dependency_depth: Option<usize>,
    /// The largest prompt of one step (bytes).
    pub max_prompt_bytes: Option<usize>,
    /// Tasks one worker (`worker_id`) may hold claimed at once.
    pub max_claims_per_worker: Option<usize>,
}

/// Names the engine reserves for its built-in agents.
pub const BUILTIN_AGENTS: [&str; 7] = [
    "echo",
    "template",
    "http",
    "command",
    "llm",
    "judge",
    "llm_judge",
];

impl FileConfig {
    /// Reads `path` (or nothing: defaults) and applies the environment
    /// overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse(&text).map_err(|message| ConfigError::Parse {
                    path: path.display().to_string(),
                    message,
                })?
            }
            None => Self::default(),
        };
        config.apply_env(|name| std::env::var(name).ok().filter(|v| !v.is_empty()));
        config.check()?;
        Ok(config)
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Applies `RUNLOG_WORKER_TOKEN` and `RUNLOG_LLM_*` from `env`.
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(token) = env("RUNLOG_WORKER_TOKEN") {
            self.worker_token = Some(token);
        }
        if let Some(url) = env("RUNLOG_LLM_BASE_URL") {
            self.llm.base_url = Some(url);
        }
        if let Some(key) = env("RUNLOG_LLM_API_KEY") {
            self.llm.api_key = Some(key);
        }
        if let Some(model) = env("RUNLOG_LLM_MODEL") {
            self.llm.model = Some(model);
        }
    }

    /// Checks values that the shape alone does not.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(token) = &self.worker_token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return invalid("worker_token must be at least 16 visible ASCII characters".into());
            }
        }
        if !self.agents.is_empty() && self.worker_token.is_none() {
            return invalid(format!(
                "remote agents are declared ({}) but no worker_token is set \
                 (set it in the file or in RUNLOG_WORKER_TOKEN)",
                self.agents.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(ms) = self.lease_ms {
            if !(1_000..=3_600_000).contains(&ms) {
                return invalid("lease_ms must be between 1000 and 3600000".into());
            }
        }
        if let Some(ms) = self.cancel_grace_ms {
            if ms > 3_600_000 {
                return invalid("cancel_grace_ms must be at most 3600000".into());
            }
        }
        if self.max_lease_expiries == Some(0) {
            return invalid("max_lease_expiries must be at least 1".into());
        }
        for (name, agent) in &self.agents {
            if crate::domain::ids::AgentName::parse(name.as_str()).is_err() {
                return invalid(format!(
                    "agents.{name}: an agent name may hold only ASCII letters, digits, '_' and '-'"
                ));
            }
            if BUILTIN_AGENTS.contains(&name.as_str()) {
                return invalid(format!("agents.{name}: '{name}' is a built-in agent"));
            }
            for (field, schema) in [
                ("config_schema", &agent.config_schema),
                ("output_schema", &agent.output_schema),
            ] {
                if let Some(schema) = schema {
                    if let Err(e) = jsonschema::validator_for(schema) {
                        return invalid(format!(
                            "agents.{name}.{field} is not a valid JSON Schema: {e}"
                        ));
                    }
                }
            }
        }
        for (name, command) in &self.commands {
            if !command.program.is_absolute() {
                return invalid(format!(
                    "commands.{name}.program must be an absolute path, not '{}'",
                    command.program.display()
                ));
            }
            if !command.program.is_file() {
                return invalid(format!(
                    "commands.{name}.program: no file at {}",
                    command.program.display()
                ));
            }
            if command.timeout_ms == Some(0) {
                return invalid(format!("commands.{name}.timeout_ms must be at least 1"));
            }
        }
        if let Some(url) = &self.llm.base_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid(format!(
                    "llm.base_url must start with http:// or https://, not '{url}'"
                ));
            }
        }
        if self.llm.max_concurrency == Some(0) {
            return invalid("llm.max_concurrency must be at least 1".into());
        }
        for (model, price) in &self.llm.prices {
            if !(price.prompt >= 0.0 && price.completion >= 0.0) {
                return invalid(format!("llm.prices.{model}: prices must not be negative"));
            }
        }
        for (name, zero) in [
            ("agent_timeout_ms", self.limits.agent_timeout_ms == Some(0)),
            ("max_output_bytes", self.limits.max_output_bytes == Some(0)),
            ("template_fuel", self.limits.template_fuel == Some(0)),
            (
                "max_run_input_bytes",
                self.limits.max_run_input_bytes == Some(0),
            ),
            (
                "messages_per_run_per_minute",
                self.limits.messages_per_run_per_minute == Some(0),
            ),
            (
                "ws_subscriptions_per_connection",
                self.limits.ws_subscriptions_per_connection == Some(0),
            ),
            (
                "ws_connections_per_token",
                self.limits.ws_connections_per_token == Some(0),
            ),
            (
                "ws_outbound_queue",
                self.limits.ws_outbound_queue == Some(0),
            ),
            (
                "max_start_wait_seconds",
                self.limits.max_start_wait_seconds == Some(0),
            ),
            (
                "max_claim_wait_seconds",
                self.limits.max_claim_wait_seconds == Some(0),
            ),
            ("max_body_bytes", self.limits.max_body_bytes == Some(0)),
            ("max_steps", self.limits.max_steps == Some(0)),
            (
                "max_dependency_depth",
                self.limits.max_dependency_depth == Some(0),
            ),
            ("max_prompt_bytes", self.limits.max_prompt_bytes == Some(0)),
            (
                "max_claims_per_worker",
                self.limits.max_claims_per_worker == Some(0),
            ),
        ] {
            if zero {
                return invalid(format!("limits.{name} must be at least 1"));
            }
        }
        if let Some(steps) = self.limits.max_steps.filter(|s| *s > MAX_STEPS) {
            return invalid(format!(
                "limits.max_steps is at most {MAX_STEPS} (the definition schema's bound), not {steps}"
            ));
        }
        Ok(())
    }

    /// Reads every secret the file names.
    pub fn resolve_secrets(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        self.secrets
            .iter()
            .map(|(name, source)| {
                let value = match source {
                    SecretSource::Env(var) => std::env::var(var).map_err(|_| {
                        ConfigError::Invalid(format!(
                            "secrets.{name}: the environment variable {var} is not set"
                        ))
                    })?,
                    SecretSource::File(path) => std::fs::read_to_string(path)
                        .map_err(|e| {
                            ConfigError::Invalid(format!(
                                "secrets.{name}: cannot read {}: {e}",
                                path.display()
                            ))
                        })?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                };
                Ok((name.clone(), value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> String {
        let config = FileConfig::parse(text).expect("parses");
        match config.check() {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let config = FileConfig::parse(
            r#"
            worker_token = "0123456789abcdef0123"
            lease_ms = 30000
            [agents.summarize]
            description = "Summarises a text"
            config_schema = { type = "object" }
            output_schema = { type = "object" }
            [commands.wordcount]
            program = "/bin/sh"
            args = ["-c", "wc -w"]
            timeout_ms = 5000
            [llm]
            base_url = "http://127.0.0.1:11434/v1"
            api_key = ""
            model = "llama3.2"
            [llm.prices.llama3]
            prompt = 0.000001
            completion = 0.000002
            [secrets]
            crm = { env = "CRM_TOKEN" }
            "#,
        )
        .expect("parses");
        config.check().expect("is valid");
        assert_eq!(config.lease_ms, Some(30_000));
        assert_eq!(
            config.agents["summarize"].config_schema,
            Some(serde_json::json!({"type": "object"}))
        );
        assert_eq!(config.commands["wordcount"].args, ["-c", "wc -w"]);
        assert_eq!(config.llm.model.as_deref(), Some("llama3.2"));
        assert_eq!(config.secrets["crm"], SecretSource::Env("CRM_TOKEN".into()));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = FileConfig::parse("worker_tokn = \"x\"").unwrap_err();
        assert!(err.contains("worker_tokn"), "{err}");
        let err = FileConfig::parse("[agents.a]\ndescripton = \"x\"").unwrap_err();
        assert!(err.contains("descripton"), "{err}");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let mut config = FileConfig::parse("worker_token = \"from-the-file-0000\"").unwrap();
        config.apply_env(|name| match name {
            "RUNLOG_WORKER_TOKEN" => Some("from-the-env-00000".into()),
            "RUNLOG_LLM_MODEL" => Some("m".into()),
            _ => None,
        });
        assert_eq!(config.worker_token.as_deref(), Some("from-the-env-00000"));
        assert_eq!(config.llm.model.as_deref(), Some("m"));
    }

    #[test]
    fn inconsistent_values_are_refused_with_the_key_at_fault() {
        assert!(invalid("worker_token = \"short\"").contains("worker_token"));
        assert!(invalid("[agents.x]\n").contains("no worker_token"));
        assert!(
            invalid("worker_token = \"0123456789abcdef\"\n[agents.echo]\n").contains("built-in")
        );
        assert!(invalid(
            "worker_token = \"0123456789abcdef\"\n[agents.x]\nconfig_schema = { type = 5 }"
        )
        .contains("agents.x.config_schema"));
        assert!(invalid("lease_ms = 10").contains("lease_ms"));
        assert!(invalid("[commands.x]\nprogram = \"wc\"").contains("absolute"));
        assert!(invalid("[commands.x]\nprogram = \"/no/such/program\"").contains("no file"));
        assert!(invalid("[llm]\nbase_url = \"ftp://x\"").contains("llm.base_url"));
        for limit in [
            "agent_timeout_ms",
            "max_output_bytes",
            "template_fuel",
            "max_run_input_bytes",
            "messages_per_run_per_minute",
            "ws_subscriptions_per_connection",
            "ws_connections_per_token",
            "ws_outbound_queue",
            "max_start_wait_seconds",
            "max_claim_wait_seconds",
            "max_body_bytes",
            "max_steps",
            "max_dependency_depth",
            "max_prompt_bytes",
            "max_claims_per_worker",
        ] {
            assert!(invalid(&format!("[limits]\n{limit} = 0")).contains(&format!("limits.{limit}")));
        }
        assert!(invalid("[limits]\nmax_steps = 1001").contains("limits.max_steps"));
    }
}
