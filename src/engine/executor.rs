//! The execution seam. The domain decides [`Effect`](crate::domain::run::Effect)s;
//! the run's actor hands the step-level ones to the [`Executor`] of the
//! step's agent. In-process agents ([`super::local`]) and remote workers are
//! two implementations of this one trait, and both send what an attempt did
//! back through one way in: [`Engine::report`](super::Engine::report) with a
//! [`StepReport`].
//!
//! Also here: resolving a [`Task`]'s artifact references into the values an
//! agent reads, and storing an agent's outputs (large bodies to the blob
//! store), shared by every executor.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::domain::ids::{LeaseToken, OutputName, RunId, StepId};
use crate::domain::run::{
    AgentMessage, AgentNote, ArtifactContent, Failure, InputValue, Outputs, StepInput, Task, Usage,
};
use crate::store::BlobStore;

/// Artifact bodies larger than this (serialised) go to the blob store.
pub const INLINE_ARTIFACT_LIMIT: usize = 8 * 1024;

/// Carries out the step-level effects for the agents it serves.
pub trait Executor: Send + Sync {
    /// Starts an attempt. What it does comes back through
    /// [`Engine::report`](super::Engine::report), under the task's lease.
    fn dispatch(&self, task: Task);
    /// Asks a running attempt to stop (it may finish anyway).
    fn stop(&self, run: &RunId, step: &StepId, lease: &LeaseToken);
    /// Lets go of an attempt that is over for the run.
    fn release(&self, run: &RunId, step: &StepId, lease: &LeaseToken);
}

/// What an attempt did, as its executor tells the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The step.
    pub step: StepId,
    /// The lease of the attempt: a report under any other is refused.
    pub lease: LeaseToken,
    /// What happened.
    pub outcome: Outcome,
    /// Comments that come with the outcome (recorded in its commit).
    pub notes: Vec<AgentNote>,
}

/// What an attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// It produced these outputs (stored: large bodies are blobs already),
    /// having used this much of a model, and a message for the thread.
    Completed(Outputs, Option<Usage>, Option<AgentMessage>),
    /// It failed.
    Failed(Failure),
    /// It stopped because the run asked it to (or it never started: a
    /// queued task withdrawn).
    Stopped,
    /// Its worker gave it back (to stop for a pause, or for its own
    /// shutdown): the step runs again as a new attempt.
    Released,
    /// It posted a comment and goes on (the comment waits to be recorded
    /// with the attempt's outcome, or on its own shortly after).
    Comment(String),
}

/// A task with every artifact body resolved: what an agent reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedTask {
    /// The step's input (see `Run::step_input`).
    pub input: Value,
    /// Latest outputs of every upstream step that has some: step → output →
    /// value.
    pub upstream: BTreeMap<String, Value>,
}

/// Resolves the artifact references of `task` from the blob store.
pub async fn resolve(blobs: &BlobStore, task: &Task) -> Result<ResolvedTask, String> {
    let input = resolve_input(blobs, &task.input).await?;
    let mut upstream = BTreeMap::new();
    for (step, outputs) in &task.upstream {
        upstream.insert(step.clone(), resolve_outputs(blobs, outputs).await?);
    }
    Ok(ResolvedTask { input, upstream })
}

async fn resolve_content(blobs: &BlobStore, content: &ArtifactContent) -> Result<Value, String> {
    match content {
        ArtifactContent::Inline(value) => Ok(value.clone()),
        ArtifactContent::Blob { sha256, .. } => {
            let bytes = blobs
                .get(sha256)
                .await
                .map_err(|e| format!("reading artifact blob {sha256}: {e}"))?
                .ok_or_else(|| format!("artifact blob {sha256} is missing"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("artifact blob {sha256}: {e}"))
        }
    }
}

async fn resolve_outputs(
    blobs: &BlobStore,
    outputs: &BTreeMap<String, ArtifactContent>,
) -> Result<Value, String> {
    let mut map = serde_json::Map::new();
    for (name, content) in outputs {
        map.insert(name.clone(), resolve_content(blobs, content).await?);
    }
    Ok(Value::Object(map))
}

async fn resolve_input(blobs: &BlobStore, input: &StepInput) -> Result<Value, String> {
    match input {
        StepInput::RunInput(value) => Ok(value.clone()),
        StepInput::Named(named) => {
            let mut map = serde_json::Map::new();
            for (name, value) in named {
                let value = match value {
                    InputValue::Outputs(outputs) => resolve_outputs(blobs, outputs).await?,
                    InputValue::Artifact(content) => resolve_content(blobs, content).await?,
                    InputValue::Missing => Value::Null,
                };
                map.insert(name.clone(), value);
            }
            Ok(Value::Object(map))
        }
    }
}

/// Checks an agent's output names and moves large bodies to the blob store
/// (as bodies of run `run_id`).
pub async fn store_outputs(
    blobs: &BlobStore,
    run_id: &str,
    outputs: BTreeMap<String, Value>,
) -> Result<Outputs, String> {
    let mut stored = Outputs::new();
    for (name, value) in outputs {
        let output = OutputName::parse(name).map_err(|e| format!("agent returned an {e}"))?;
        let bytes = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
        let content = if bytes.len() > INLINE_ARTIFACT_LIMIT {
            let sha256 = blobs
                .put(run_id, &bytes)
                .await
                .map_err(|e| format!("storing artifact body: {e}"))?;
            ArtifactContent::Blob {
                sha256,
                size: bytes.len() as u64,
            }
        } else {
            ArtifactContent::Inline(value)
        };
        stored.insert(output, content);
    }
    Ok(stored)
}
