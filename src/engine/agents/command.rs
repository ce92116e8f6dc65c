//! `command`: runs a program an administrator registered by name in the
//! server's configuration (`[commands.NAME]`; never a command line from a
//! template): the task JSON on its stdin, the JSON object it prints on
//! stdout as the outputs. Its environment is filtered: `PATH`, `HOME`,
//! `LANG` and `TZ` of the server's, and what its configuration sets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::{task_body, Agent, AgentError, AgentResult, AgentSpec, StepContext};
use crate::domain::definition::ConfigFault;
use crate::subprocess::{verdict, Program, Verdict};

/// The server's variables a command gets.
const PASSED_ENV: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];
/// How long a stopped program has between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// A program the `command` agent may run.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// The program (an absolute path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// The longest it may run; a step may only lower it.
    pub timeout: Option<Duration>,
    /// Variables it gets besides `PATH`, `HOME`, `LANG` and `TZ`.
    pub env: BTreeMap<String, String>,
    /// What it does.
    pub description: String,
}

/// The `command` agent.
pub struct CommandAgent {
    commands: BTreeMap<String, CommandSpec>,
}

impl CommandAgent {
    /// A `command` agent that may run `commands`.
    pub fn new(commands: BTreeMap<String, CommandSpec>) -> Self {
        Self { commands }
    }
}

#[async_trait::async_trait(?Send)]
impl Agent for CommandAgent {
    fn spec(&self) -> AgentSpec {
        let names: Vec<&String> = self.commands.keys().collect();
        let listed: Vec<String> = self
            .commands
            .iter()
            .map(|(name, spec)| match spec.description.trim() {
                "" => name.clone(),
                what => format!("{name}: {what}"),
            })
            .collect();
        AgentSpec {
            description: format!(
                "Runs a command registered in the server's configuration (here: {}) with the \
                 task JSON on stdin; the JSON object it prints is the outputs.",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join("; ")
                }
            ),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["command"],
                "properties": {
                    "command": {"type": "string", "enum": names,
                                "description": "A command of the server's [commands]."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 86_400_000},
                    "comments": {"type": "boolean"}
                }
            }),
            output_schema: Some(json!({"type": "object"})),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        let name = config
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !self.commands.contains_key(name) {
            return Err(ConfigFault {
                field: "config.command".into(),
                reason: format!("'{name}' is not a command of this server's configuration"),
            });
        }
        Ok(())
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        let name = ctx.config["command"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let spec = self.commands.get(&name).ok_or_else(|| {
            AgentError::NotRetryable(format!("command: '{name}' is not registered"))
        })?;
        let mut timeout = ctx.limits.timeout;
        for limit in [
            spec.timeout,
            ctx.config
                .get("timeout_ms")
                .and_then(Value::as_u64)
                .map(Duration::from_millis),
        ]
        .into_iter()
        .flatten()
        {
            timeout = timeout.min(limit);
        }
        let env: Vec<(String, String)> = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .chain(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        let program = Program {
            path: &spec.program,
            args: &spec.args,
            env: Some(env),
        };
        ctx.comment(format!("command '{name}' started attempt {}.", ctx.attempt));
        let mut running = program
            .start(task_body(&ctx).to_string().into_bytes())
            .map_err(|e| AgentError::Failed(format!("command '{name}': cannot start it: {e}")))?;
        let what = format!("command '{name}'");
        let verdict = tokio::select! {
            ended = running.wait() => match ended {
                Ok((status, out, err)) => verdict(&what, status, &out, &err),
                Err(e) => return Err(AgentError::Failed(format!("{what}: {e}"))),
            },
            () = tokio::time::sleep(timeout) => {
                running.stop(KILL_GRACE).await;
                return Err(AgentError::Failed(format!(
                    "{what} took longer than {} ms and was stopped", timeout.as_millis()
                )));
            }
            () = ctx.stop.raised() => {
                running.stop(KILL_GRACE).await;
                return Err(AgentError::Stopped);
            }
        };
        match verdict {
            Verdict::Outputs(outputs) => {
                ctx.comment(format!(
                    "command '{name}' finished attempt {}.",
                    ctx.attempt
                ));
                Ok(outputs.into_iter().collect::<BTreeMap<_, _>>().into())
            }
            Verdict::Failed {
                error,
                retryable: true,
            } => Err(AgentError::Failed(error)),
            Verdict::Failed {
                error,
                retryable: false,
            } => Err(AgentError::NotRetryable(error)),
        }
    }
}
