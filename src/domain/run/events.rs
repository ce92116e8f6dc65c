//! Run events: the contract stored in the log. Past-tense names, each with a
//! literal `event_type` and an `event_version`; a changed shape is a new
//! version with an upcaster, never an edit of what is stored. Events carry the
//! facts they imply (next attempt, new artifact version, steps that became
//! ready) so that `apply` and the projections hold no business logic.

use std::collections::BTreeMap;

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::interactive::{Button, MessageInput};
use super::thread::{Action, Author, MessageStatus};
use crate::domain::definition::Definition;
use crate::domain::ids::{
    ArtifactName, LeaseToken, OutputName, RunId, StepId, TemplateId, Timestamp, UserId,
};
use crate::domain::prerequisites::Import;

/// The body of one artifact version: inline JSON, or a reference to a
/// content-addressed blob for large bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArtifactContent {
    /// The value itself.
    Inline(Value),
    /// A blob in the blob store: SHA-256 of the JSON bytes, and their length.
    Blob {
        /// Lower-case hex SHA-256 of the bytes.
        sha256: String,
        /// Length in bytes.
        size: u64,
    },
}

/// What an attempt's language-model calls used: a fact of the run's
/// history, so that its cost is too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// The model that answered.
    pub model: String,
    /// Tokens sent.
    pub prompt_tokens: u64,
    /// Tokens received.
    pub completion_tokens: u64,
    /// What they cost, when the server's configuration prices the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// One artifact version written by a step completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactWritten {
    /// `<step>.<output>`.
    pub name: ArtifactName,
    /// The new version number (1, 2, …).
    pub version: u32,
    /// The body.
    pub content: ArtifactContent,
}

/// An artifact of another run that a dispatched attempt reads: which run,
/// which version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedRead {
    /// The run it comes from.
    pub run_id: RunId,
    /// The version read.
    pub version: u32,
}

/// One artifact version whose body a purge removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PurgedVersion {
    /// `<step>.<output>`.
    pub name: ArtifactName,
    /// The version.
    pub version: u32,
    /// The hash of the body that was removed (the one its
    /// `ArtifactWritten` names).
    pub sha256: String,
    /// Its length in bytes.
    pub size: u64,
}

/// Events of a run (`event_version` 1.0 each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    /// The run started from a template version; the definition is copied so
    /// that later template revisions never change this run.
    RunStarted {
        /// The run.
        run_id: RunId,
        /// The template it started from.
        template_id: TemplateId,
        /// That template's version.
        template_version: u32,
        /// The copied definition.
        definition: Definition,
        /// The run input.
        input: Value,
        /// Steps with no dependencies: ready at once.
        ready: Vec<StepId>,
        /// The failed or cancelled run this one retries, if any. Added in
        /// 1.1; a 1.0 payload lacks it and reads as none, its meaning.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<RunId>,
        /// The run this one replaces by a redirect, if any. Added in 1.2.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        redirected_from: Option<RunId>,
        /// Whether ready steps are dispatched without a user's trigger.
        /// Added in 1.2; the store's upcaster gives a 1.0/1.1 payload
        /// `true`, its meaning.
        auto_run: bool,
        /// The user the run belongs to. Added in 1.3; absent (older runs,
        /// and runs started without accounts): nobody's, visible to admins
        /// only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<UserId>,
        /// The artifacts of other runs it reads (its template's
        /// `requires.artifacts`), pinned at start. Added in 1.4; absent:
        /// none.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        imports: Vec<Import>,
        /// When.
        at: Timestamp,
    },
    /// A step was handed to its agent: `(step, attempt, lease)` identifies
    /// this dispatch; only a completion with this lease is accepted.
    StepDispatched {
        /// The step.
        step: StepId,
        /// The attempt number, from 1.
        attempt: u32,
        /// The lease of this dispatch.
        lease: LeaseToken,
        /// The artifact versions the step reads.
        reads: BTreeMap<ArtifactName, u32>,
        /// True when re-dispatched after a restart interrupted the attempt.
        recovered: bool,
        /// The prompt a user gave this attempt instead of the step's own
        /// (step retry or trigger). Added in 1.1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt_override: Option<String>,
        /// The instruction messages handed to this attempt. Added in 1.1.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        instructions: Vec<u32>,
        /// The dispatch is the refine loop's evaluator scoring this
        /// attempt's outputs (not the step's agent). Added in 1.2.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        evaluating: bool,
        /// The artifacts of other runs the step reads, by how its inputs
        /// name them (`<template>:<step>.<output>`). Added in 1.3.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        imports: BTreeMap<String, ImportedRead>,
        /// When.
        at: Timestamp,
    },
    /// A step finished; each output became a new artifact version.
    StepCompleted {
        /// The step.
        step: StepId,
        /// The attempt that completed.
        attempt: u32,
        /// The artifact versions written.
        artifacts: Vec<ArtifactWritten>,
        /// Steps that became ready because of this completion.
        ready: Vec<StepId>,
        /// Steps skipped because of this completion: their condition is
        /// false, or every dependency was skipped. Added in 1.1.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        skipped: Vec<StepId>,
        /// What the attempt's model calls used. Added in 1.2.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// The versions `latest` moves to (a refine loop that accepts its
        /// best attempt, not its last). Added in 1.2.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        latest: BTreeMap<ArtifactName, u32>,
        /// The score the step completed with (refine loops). Added in 1.2.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        final_score: Option<f64>,
        /// When.
        at: Timestamp,
    },
    /// An attempt of a step failed.
    StepFailed {
        /// The step.
        step: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// What the agent reported.
        error: String,
        /// Whether another attempt follows (see `StepRetryScheduled`).
        will_retry: bool,
        /// Whether this failure fails the run (once nothing else runs).
        /// False for a failure while a cancel is pending: the run ends
        /// cancelled. Added in 1.1; a 1.0 payload lacks it and reads as
        /// `true`, which is what 1.0 meant (it only matters when
        /// `will_retry` is false); the store's upcaster gives it.
        fails_run: bool,
        /// Whether the agent said another attempt might help. Added in 1.2;
        /// the store's upcaster gives older payloads `true`, which is what
        /// they meant.
        retryable: bool,
        /// When.
        at: Timestamp,
    },
    /// Another attempt of a failed step is due at `due_at`.
    StepRetryScheduled {
        /// The step.
        step: StepId,
        /// The attempt that will run.
        next_attempt: u32,
        /// The back-off applied.
        delay_ms: u64,
        /// When the attempt is due.
        due_at: Timestamp,
        /// When this was decided.
        at: Timestamp,
    },
    /// Every step completed.
    RunCompleted {
        /// When.
        at: Timestamp,
    },
    /// A step failed for good; nothing else will be dispatched.
    RunFailed {
        /// The step whose failure failed the run.
        step: StepId,
        /// Its last error.
        error: String,
        /// When.
        at: Timestamp,
    },
    /// A user asked to pause: nothing new is dispatched from now on.
    PauseRequested {
        /// When.
        at: Timestamp,
    },
    /// No step is running any more: the run is paused.
    RunPaused {
        /// When.
        at: Timestamp,
    },
    /// A user resumed the run (or withdrew a pause not yet reached); ready
    /// steps are dispatched again.
    RunResumed {
        /// When.
        at: Timestamp,
    },
    /// A user asked to cancel: nothing new is dispatched; running steps
    /// finish.
    CancelRequested {
        /// Why, as the user said.
        reason: Option<String>,
        /// Until when running attempts may go on; then their leases are
        /// revoked. Added in 1.1; a 1.0 payload reads as none (attempts
        /// finish in their own time, as 1.0 did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_until: Option<Timestamp>,
        /// When.
        at: Timestamp,
    },
    /// No step is running any more: the run is cancelled.
    RunCancelled {
        /// Why, as the user said.
        reason: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A message joined the run's thread, with the status it has from the
    /// start (a control message says at once whether it took effect).
    MessagePosted {
        /// Its number in the thread, from 1.
        message: u32,
        /// Who wrote it.
        author: Author,
        /// What it asks for.
        action: Action,
        /// Its text.
        content: String,
        /// Client JSON attached to it.
        #[serde(default, skip_serializing_if = "Value::is_null")]
        metadata: Value,
        /// The step it is about (agent comments, step announcements).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepId>,
        /// The client's idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// Its status.
        status: MessageStatus,
        /// Why it was ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// An agent's message: what the user may answer with (a click is
        /// `ButtonClicked`). Added in 1.1.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        buttons: Vec<Button>,
        /// An agent's message: what else the user may send in answer.
        /// Added in 1.1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<MessageInput>,
        /// When.
        at: Timestamp,
    },
    /// A message moved on: an instruction was handed to a step
    /// (acknowledged), that step completed (processed), or the run ended
    /// before it was used (ignored).
    MessageStatusChanged {
        /// The message number.
        message: u32,
        /// The new status.
        status: MessageStatus,
        /// The step concerned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepId>,
        /// Why it was ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A review step's agent finished: its outputs are new artifact versions
    /// and the step waits for a user's approval.
    StepAwaitingReview {
        /// The step.
        step: StepId,
        /// The attempt that finished.
        attempt: u32,
        /// The artifact versions written.
        artifacts: Vec<ArtifactWritten>,
        /// What the attempt's model calls used. Added in 1.1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// When.
        at: Timestamp,
    },
    /// A step's agent finished with a message with buttons (posted just
    /// before, as `MessagePosted` number `message`): its outputs are new
    /// artifact versions and the step waits for a user's click.
    StepAwaitingInput {
        /// The step.
        step: StepId,
        /// The attempt that finished.
        attempt: u32,
        /// The artifact versions written.
        artifacts: Vec<ArtifactWritten>,
        /// What the attempt's model calls used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// The message whose click the step waits for.
        message: u32,
        /// When.
        at: Timestamp,
    },
    /// A user clicked a button of an agent's message (once per message). A
    /// `MessagePosted` with the button's `user_message` may follow, and, if
    /// the step waited for the click, a `StepCompleted` writing `value` as
    /// its output `choice`.
    ButtonClicked {
        /// The message.
        message: u32,
        /// The button's id.
        button: String,
        /// The button's value.
        value: String,
        /// The step whose agent asked.
        step: StepId,
        /// The client's idempotency key.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idempotency_key: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A user approved a step awaiting review (a `StepCompleted` follows).
    StepApproved {
        /// The step.
        step: StepId,
        /// The attempt approved.
        attempt: u32,
        /// The choice picked, which the `StepCompleted` writes as the output
        /// `choice`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        choice: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// A running agent stopped early because it was asked to (pause or
    /// cancel): the step is ready again and its next dispatch is a new
    /// attempt.
    StepInterrupted {
        /// The step.
        step: StepId,
        /// The attempt that stopped.
        attempt: u32,
        /// When.
        at: Timestamp,
    },
    /// Manual mode switched: with `auto_run` off, ready steps wait for a
    /// user's trigger.
    AutoRunChanged {
        /// Whether ready steps are dispatched automatically now.
        enabled: bool,
        /// When.
        at: Timestamp,
    },
    /// A user asked to run a step again: it is ready again (with the prompt
    /// override, if any) and every step downstream of it goes back to
    /// `pending`.
    StepRetryRequested {
        /// The step.
        step: StepId,
        /// The prompt to use instead of the step's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt_override: Option<String>,
        /// Every downstream step sent back to `pending`, because its inputs
        /// will change.
        invalidated: Vec<StepId>,
        /// The run had finished (completed, or failed on a step this retry
        /// re-runs) and is running again.
        reopens_run: bool,
        /// When.
        at: Timestamp,
    },
    /// `latest` of an artifact moved back to an earlier version (no version
    /// is deleted); the steps downstream of its step go back to `pending`
    /// and are evaluated again.
    ArtifactRolledBack {
        /// The artifact.
        name: ArtifactName,
        /// The version `latest` pointed at.
        from_version: u32,
        /// The version it points at now.
        to_version: u32,
        /// Every step downstream of the artifact's step, sent back to
        /// `pending`.
        invalidated: Vec<StepId>,
        /// Steps that are ready again at once.
        ready: Vec<StepId>,
        /// Steps skipped at once.
        skipped: Vec<StepId>,
        /// The run had finished and is running again.
        reopens_run: bool,
        /// When.
        at: Timestamp,
    },
    /// A user redirected the run: it is being cancelled and `to` continues
    /// its work with the user's instructions.
    RunRedirected {
        /// The new run.
        to: RunId,
        /// The instructions the new run starts with.
        instructions: String,
        /// When.
        at: Timestamp,
    },
    /// An attempt of a refining step produced its outputs, new artifact
    /// versions: its evaluator scores them next.
    StepProduced {
        /// The step.
        step: StepId,
        /// The attempt.
        attempt: u32,
        /// The artifact versions written.
        artifacts: Vec<ArtifactWritten>,
        /// What the attempt's model calls used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// When.
        at: Timestamp,
    },
    /// The evaluator scored an attempt of a refining step. Unless it passed
    /// or the attempts are spent, the step runs again with the feedback.
    StepEvaluated {
        /// The step.
        step: StepId,
        /// The attempt scored.
        attempt: u32,
        /// The score, 0..1.
        score: f64,
        /// What the evaluator said to improve.
        feedback: String,
        /// Whether the score reached the threshold.
        passed: bool,
        /// What the evaluator's model calls used.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<Usage>,
        /// When.
        at: Timestamp,
    },
    /// A remote worker claimed a dispatched attempt; its lease runs from
    /// now and each heartbeat extends it.
    StepClaimed {
        /// The step.
        step: StepId,
        /// The attempt claimed.
        attempt: u32,
        /// The worker's id.
        worker: String,
        /// When the lease expires unless a heartbeat extends it.
        lease_expires_at: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// The worker of a claimed attempt sent a heartbeat that extended its
    /// lease (heartbeats that come sooner than a third of a lease after the
    /// last recorded one extend nothing and are not recorded).
    StepHeartbeat {
        /// The step.
        step: StepId,
        /// The attempt.
        attempt: u32,
        /// When the lease expires now.
        lease_expires_at: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// A claimed attempt's lease ran out without a heartbeat: the attempt
    /// ends as interrupted and the step is ready again (a new attempt, not
    /// counted against its retry policy), unless a `StepFailed` follows
    /// because it has expired too many times in a row.
    StepLeaseExpired {
        /// The step.
        step: StepId,
        /// The attempt whose lease expired.
        attempt: u32,
        /// The worker that held it.
        worker: String,
        /// Expiries in a row for this step, this one included.
        expiries: u32,
        /// When.
        at: Timestamp,
    },
    /// A worker gave a claimed attempt back: the step is ready again and
    /// its next dispatch is a new attempt.
    StepReleased {
        /// The step.
        step: StepId,
        /// The attempt given back.
        attempt: u32,
        /// When.
        at: Timestamp,
    },
    /// Retention removed the bodies of the run's artifacts that live in
    /// the blob store (`runlog purge`, `POST /api/runs/{id}/purge`). The
    /// events keep the hashes; reads show these versions as purged. Bodies
    /// stored inline (8 KiB or less) are part of the events and stay. A
    /// purged run is never reopened (step retry and rollback are refused).
    ArtifactsPurged {
        /// The versions whose bodies were removed (empty when the run had
        /// only inline bodies).
        versions: Vec<PurgedVersion>,
        /// The cut-off the purge was asked with: the run had finished
        /// before it.
        finished_before: Timestamp,
        /// When.
        at: Timestamp,
    },
    /// A cancel's grace ran out while the attempt still ran: its lease is
    /// revoked (a late result is refused) and the attempt is recorded as
    /// cancelled.
    StepLeaseRevoked {
        /// The step.
        step: StepId,
        /// The attempt.
        attempt: u32,
        /// When.
        at: Timestamp,
    },
}

impl RunEvent {
    /// The literal event type names, for the catalogue and for tests.
    pub const TYPES: [&'static str; 31] = [
        "RunStarted",
        "StepDispatched",
        "StepCompleted",
        "StepFailed",
        "StepRetryScheduled",
        "RunCompleted",
        "RunFailed",
        "PauseRequested",
        "RunPaused",
        "RunResumed",
        "CancelRequested",
        "RunCancelled",
        "MessagePosted",
        "MessageStatusChanged",
        "StepAwaitingReview",
        "StepApproved",
        "StepInterrupted",
        "AutoRunChanged",
        "StepRetryRequested",
        "ArtifactRolledBack",
        "RunRedirected",
        "StepClaimed",
        "StepHeartbeat",
        "StepLeaseExpired",
        "StepReleased",
        "StepLeaseRevoked",
        "StepProduced",
        "StepEvaluated",
        "ArtifactsPurged",
        "StepAwaitingInput",
        "ButtonClicked",
    ];

    /// The time the event happened.
    pub fn at(&self) -> Timestamp {
        match self {
            Self::RunStarted { at, .. }
            | Self::StepDispatched { at, .. }
            | Self::StepCompleted { at, .. }
            | Self::StepFailed { at, .. }
            | Self::StepRetryScheduled { at, .. }
            | Self::RunCompleted { at }
            | Self::RunFailed { at, .. }
            | Self::PauseRequested { at }
            | Self::RunPaused { at }
            | Self::RunResumed { at }
            | Self::CancelRequested { at, .. }
            | Self::RunCancelled { at, .. }
            | Self::MessagePosted { at, .. }
            | Self::MessageStatusChanged { at, .. }
            | Self::StepAwaitingReview { at, .. }
            | Self::StepApproved { at, .. }
            | Self::StepInterrupted { at, .. }
            | Self::AutoRunChanged { at, .. }
            | Self::StepRetryRequested { at, .. }
            | Self::ArtifactRolledBack { at, .. }
            | Self::RunRedirected { at, .. }
            | Self::StepClaimed { at, .. }
            | Self::StepHeartbeat { at, .. }
            | Self::StepLeaseExpired { at, .. }
            | Self::StepReleased { at, .. }
            | Self::StepLeaseRevoked { at, .. }
            | Self::StepProduced { at, .. }
            | Self::StepEvaluated { at, .. }
            | Self::ArtifactsPurged { at, .. }
            | Self::StepAwaitingInput { at, .. }
            | Self::ButtonClicked { at, .. } => *at,
        }
    }

    /// The step a step event is about.
    pub fn step(&self) -> Option<&StepId> {
        match self {
            Self::StepDispatched { step, .. }
            | Self::StepCompleted { step, .. }
            | Self::StepFailed { step, .. }
            | Self::StepRetryScheduled { step, .. }
            | Self::StepAwaitingReview { step, .. }
            | Self::StepAwaitingInput { step, .. }
            | Self::StepApproved { step, .. }
            | Self::StepInterrupted { step, .. }
            | Self::StepRetryRequested { step, .. }
            | Self::StepClaimed { step, .. }
            | Self::StepHeartbeat { step, .. }
            | Self::StepLeaseExpired { step, .. }
            | Self::StepReleased { step, .. }
            | Self::StepLeaseRevoked { step, .. }
            | Self::StepProduced { step, .. }
            | Self::StepEvaluated { step, .. } => Some(step),
            _ => None,
        }
    }

    /// Whether this event ends the run.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::RunCompleted { .. } | Self::RunFailed { .. } | Self::RunCancelled { .. }
        )
    }
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            Self::RunStarted { .. } => Self::TYPES[0],
            Self::StepDispatched { .. } => Self::TYPES[1],
            Self::StepCompleted { .. } => Self::TYPES[2],
            Self::StepFailed { .. } => Self::TYPES[3],
            Self::StepRetryScheduled { .. } => Self::TYPES[4],
            Self::RunCompleted { .. } => Self::TYPES[5],
            Self::RunFailed { .. } => Self::TYPES[6],
            Self::PauseRequested { .. } => Self::TYPES[7],
            Self::RunPaused { .. } => Self::TYPES[8],
            Self::RunResumed { .. } => Self::TYPES[9],
            Self::CancelRequested { .. } => Self::TYPES[10],
            Self::RunCancelled { .. } => Self::TYPES[11],
            Self::MessagePosted { .. } => Self::TYPES[12],
            Self::MessageStatusChanged { .. } => Self::TYPES[13],
            Self::StepAwaitingReview { .. } => Self::TYPES[14],
            Self::StepApproved { .. } => Self::TYPES[15],
            Self::StepInterrupted { .. } => Self::TYPES[16],
            Self::AutoRunChanged { .. } => Self::TYPES[17],
            Self::StepRetryRequested { .. } => Self::TYPES[18],
            Self::ArtifactRolledBack { .. } => Self::TYPES[19],
            Self::RunRedirected { .. } => Self::TYPES[20],
            Self::StepClaimed { .. } => Self::TYPES[21],
            Self::StepHeartbeat { .. } => Self::TYPES[22],
            Self::StepLeaseExpired { .. } => Self::TYPES[23],
            Self::StepReleased { .. } => Self::TYPES[24],
            Self::StepLeaseRevoked { .. } => Self::TYPES[25],
            Self::StepProduced { .. } => Self::TYPES[26],
            Self::StepEvaluated { .. } => Self::TYPES[27],
            Self::ArtifactsPurged { .. } => Self::TYPES[28],
            Self::StepAwaitingInput { .. } => Self::TYPES[29],
            Self::ButtonClicked { .. } => Self::TYPES[30],
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        match self {
            Self::RunStarted { .. } => "1.4",
            Self::StepDispatched { .. } => "1.3",
            Self::StepFailed { .. } | Self::StepCompleted { .. } => "1.2",
            Self::CancelRequested { .. }
            | Self::StepAwaitingReview { .. }
            | Self::MessagePosted { .. } => "1.1",
            _ => "1.0",
        }
        .to_string()
    }
}

/// Outputs an agent returned, by output name.
pub type Outputs = BTreeMap<OutputName, ArtifactContent>;
