//! Running a program with JSON in and JSON out: the task on its stdin, the
//! JSON object it prints on stdout as its outputs. Shared by the `command`
//! agent and `runlog worker`. The program runs in a process group of its
//! own, so that stopping it (SIGTERM, then SIGKILL) stops what it started
//! too. Depends on nothing else in the crate.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes read from a program's stdout.
pub const MAX_STDOUT: u64 = 64 * 1024 * 1024;
/// Most bytes read from a program's stderr.
const MAX_STDERR: u64 = 1024 * 1024;
/// Most characters of stderr quoted in an error.
const STDERR_TAIL: usize = 2_000;

/// How to start a program.
pub struct Program<'a> {
    /// The program (a path, not a shell command line).
    pub path: &'a Path,
    /// Its arguments.
    pub args: &'a [String],
    /// Its whole environment, when given (`None`: the caller's).
    pub env: Option<Vec<(String, String)>>,
}

/// A running program.
pub struct Running {
    child: tokio::process::Child,
    io: futures::future::BoxFuture<'static, (Vec<u8>, Vec<u8>)>,
    /// What `io` read, once it is done.
    output: Option<(Vec<u8>, Vec<u8>)>,
}

/// What a program's run came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// It printed a JSON object and exited 0: its outputs.
    Outputs(serde_json::Map<String, Value>),
    /// It failed: by printing `{"error": …, "retryable"?: …}`, or by exiting
    /// non-zero or without a JSON object (retryable, with its stderr).
    Failed {
        /// What went wrong.
        error: String,
        /// Whether another attempt may help.
        retryable: bool,
    },
}

impl<'a> Program<'a> {
    /// Starts the program with `input` on its stdin.
    pub fn start(&self, input: Vec<u8>) -> std::io::Result<Running> {
        let mut command = tokio::process::Command::new(self.path);
        command
            .args(self.args)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(env) = &self.env {
            command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let io = Box::pin(async move {
            let write = async move {
                if let Some(mut stdin) = stdin {
                    // A program that does not read its input is its business.
                    let _ = stdin.write_all(&input).await;
                }
            };
            let read_out = async move {
                let mut out = Vec::new();
                if let Some(s) = stdout {
                    let _ = s.take(MAX_STDOUT).read_to_end(&mut out).await;
                }
                out
            };
            let read_err = async move {
                let mut err = Vec::new();
                if let Some(s) = stderr {
                    let _ = s.take(MAX_STDERR).read_to_end(&mut err).await;
                }
                err
            };
            let ((), out, err) = futures::join!(write, read_out, read_err);
            (out, err)
        });
        Ok(Running {
            child,
            io,
            output: None,
        })
    }
}

impl Running {
    /// Waits for the program to end: its exit status, stdout and stderr.
    /// Cancel-safe: a wait dropped half-way loses nothing, and the next one
    /// goes on from there.
    pub async fn wait(&mut self) -> std::io::Result<(ExitStatus, Vec<u8>, Vec<u8>)> {
        if self.output.is_none() {
            self.output = Some((&mut self.io).await);
        }
        let status = self.child.wait().await?;
        let (out, err) = self.output.take().unwrap_or_default();
        Ok((status, out, err))
    }

    /// Stops the program and its process group: SIGTERM, then SIGKILL
    /// after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{killpg, Signal};
        let Some(group) = self
            .child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw)
        else {
            return;
        };
        let _ = killpg(group, Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = killpg(group, Signal::SIGKILL);
            let _ = self.child.wait().await;
        } else {
            // The program is gone; what it started goes with it.
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}

/// Reads what a program's run came to from its exit status and output.
pub fn verdict(what: &str, status: ExitStatus, out: &[u8], err: &[u8]) -> Verdict {
    match serde_json::from_slice::<Value>(out).ok() {
        Some(Value::Object(map)) if map.get("error").is_some_and(Value::is_string) => {
            Verdict::Failed {
                error: map["error"].as_str().unwrap_or_default().to_string(),
                retryable: map
                    .get("retryable")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            }
        }
        Some(Value::Object(map)) if status.success() => Verdict::Outputs(map),
        _ => {
            let stderr = String::from_utf8_lossy(err);
            let stderr = stderr.trim();
            let tail: String = stderr
                .chars()
                .skip(stderr.chars().count().saturating_sub(STDERR_TAIL))
                .collect();
            let how = match status.code() {
                Some(0) => "exited 0 without printing a JSON object on stdout".to_string(),
                Some(code) => format!("exited with code {code}"),
                None => "was killed by a signal".to_string(),
            };
            let error = if tail.is_empty() {
                format!("{what} {how}")
            } else {
                format!("{what} {how}: {tail}")
            };
            Verdict::Failed {
                error,
                retryable: true,
            }
        }
    }
}
