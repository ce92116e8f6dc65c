//! What committed events oblige the engine to do. Decided here, purely, so
//! that the run's actor performs effects rather than re-deriving them from
//! events, every executor (in-process agents, remote workers) handles every
//! effect, and a test can assert on them beside the events.

use std::collections::BTreeMap;

use serde_json::Value;

use super::state::{InputValue, Run, StepInput, StepStatus, UsageTotals};
use super::{ArtifactContent, RunEvent};
use crate::domain::definition::Budget;
use crate::domain::ids::{AgentName, LeaseToken, RunId, StepId, Timestamp};

/// Something the engine must do because events were committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Hand an attempt of a step to its agent's executor.
    Dispatch(Box<Task>),
    /// Ask a running attempt to stop: the run is pausing or cancelling, or
    /// the attempt's inputs went stale. It may finish anyway.
    Stop {
        /// The step.
        step: StepId,
        /// The attempt's lease.
        lease: LeaseToken,
        /// The agent running it (its executor is told).
        agent: AgentName,
    },
    /// The attempt is over for the run (it completed, failed, stopped, or
    /// was superseded): its executor lets go of it. A late result of it is
    /// refused anyway.
    Release {
        /// The step.
        step: StepId,
        /// The attempt's lease.
        lease: LeaseToken,
        /// The agent that ran it (its executor lets go).
        agent: AgentName,
    },
    /// Start the run a redirect hands the work to.
    StartRedirect {
        /// The new run.
        to: RunId,
        /// The instructions it starts with.
        instructions: String,
    },
    /// Decide again at this time (a retry falls due). The timers of a run are
    /// a function of its state: `effects` always names the next one, and
    /// its absence means there is none.
    WakeAt(Timestamp),
}

/// One attempt of one step, as its agent needs it: everything but the
/// bodies of large artifacts, which the executor resolves from the blob
/// store.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The run.
    pub run_id: RunId,
    /// The step.
    pub step: StepId,
    /// The attempt, from 1.
    pub attempt: u32,
    /// The dispatch's lease: only a result under it is accepted.
    pub lease: LeaseToken,
    /// The agent that executes it.
    pub agent: AgentName,
    /// The step's agent configuration.
    pub config: Value,
    /// The step's own prompt.
    pub prompt: Option<String>,
    /// The prompt a user gave this attempt instead.
    pub prompt_override: Option<String>,
    /// The instructions handed to this attempt, oldest first.
    pub instructions: Vec<String>,
    /// The step's input (see [`Run::step_input`]).
    pub input: StepInput,
    /// The run input.
    pub run_input: Value,
    /// Latest outputs of every upstream step that has some: step → output →
    /// content.
    pub upstream: BTreeMap<String, BTreeMap<String, ArtifactContent>>,
    /// The run asked its running agents to stop before this attempt started
    /// (it is pausing or cancelling; a recovered attempt).
    pub stop_requested: bool,
    /// The budgets the attempt's model calls must stay within (the run's,
    /// the step's), with what was spent of each so far.
    pub budgets: Vec<BudgetLeft>,
}

/// A budget and what was spent of it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetLeft {
    /// Whose budget: `run` or `step`.
    pub scope: &'static str,
    /// The limits.
    pub budget: Budget,
    /// What was spent of it so far.
    pub spent: UsageTotals,
}

impl BudgetLeft {
    /// Why a call that would use `tokens` more tokens and cost `cost` more
    /// (when priced) may not be made, if it may not.
    pub fn refuses(&self, tokens: u64, cost: Option<f64>) -> Option<String> {
        if let Some(max) = self.budget.max_tokens {
            let total = self.spent.tokens() + tokens;
            if total > max {
                return Some(format!(
                    "budget_exceeded: the {} budget allows {max} tokens; {} are spent and the \
                     call could use {tokens} more",
                    self.scope,
                    self.spent.tokens()
                ));
            }
        }
        if let (Some(max), Some(cost)) = (self.budget.max_cost, cost) {
            if self.spent.cost + cost > max {
                return Some(format!(
                    "budget_exceeded: the {} budget allows a cost of {max}; {} is spent and the \
                     call could cost {cost} more",
                    self.scope, self.spent.cost
                ));
            }
        }
        None
    }
}

/// The effects of `events`, decided on `before` and leading to `after`.
///
/// In event order: a dispatch becomes [`Effect::Dispatch`]; a pause or
/// cancel request stops every attempt still running; an attempt that ended
/// (completed, awaiting review, failed, interrupted, invalidated by a
/// change upstream, or replaced by a recovered dispatch) is released, after
/// a stop when it may still be running; a redirect starts its new run. Last
/// comes the run's next wake-up, if it has one.
pub fn effects(before: &Run, events: &[RunEvent], after: &Run) -> Vec<Effect> {
    let mut out = Vec::new();
    // The attempts running before the events and not released yet, by step,
    // with the agent running each: each is released once.
    let mut running: BTreeMap<StepId, (LeaseToken, AgentName)> = before
        .steps
        .iter()
        .filter(|(_, s)| s.status == StepStatus::Running)
        .filter_map(|(step, s)| {
            Some((
                step.clone(),
                (s.lease.clone()?, running_agent(before, step)?),
            ))
        })
        .collect();
    let release =
        |out: &mut Vec<Effect>, step: &StepId, (lease, agent): (LeaseToken, AgentName)| {
            out.push(Effect::Release {
                step: step.clone(),
                lease,
                agent,
            });
        };
    for event in events {
        match event {
            RunEvent::StepDispatched {
                step,
                attempt,
                lease,
                prompt_override,
                instructions,
                ..
            } => {
                if let Some(old) = running.remove(step).filter(|(old, _)| old != lease) {
                    release(&mut out, step, old);
                }
                if let Some(task) =
                    task(after, step, *attempt, lease, prompt_override, instructions)
                {
                    out.push(Effect::Dispatch(Box::new(task)));
                }
            }
            RunEvent::PauseRequested { .. } | RunEvent::CancelRequested { .. } => {
                for (step, state) in &after.steps {
                    if let (StepStatus::Running, Some(lease), Some(agent)) =
                        (state.status, &state.lease, running_agent(after, step))
                    {
                        out.push(Effect::Stop {
                            step: step.clone(),
                            lease: lease.clone(),
                            agent,
                        });
                    }
                }
            }
            RunEvent::StepRetryRequested { invalidated, .. }
            | RunEvent::ArtifactRolledBack { invalidated, .. } => {
                for step in invalidated {
                    if let Some((lease, agent)) = running.remove(step) {
                        out.push(Effect::Stop {
                            step: step.clone(),
                            lease: lease.clone(),
                            agent: agent.clone(),
                        });
                        release(&mut out, step, (lease, agent));
                    }
                }
            }
            RunEvent::StepCompleted { step, .. }
            | RunEvent::StepAwaitingReview { step, .. }
            | RunEvent::StepAwaitingInput { step, .. }
            | RunEvent::StepFailed { step, .. }
            | RunEvent::StepInterrupted { step, .. }
            | RunEvent::StepLeaseExpired { step, .. }
            | RunEvent::StepReleased { step, .. }
            | RunEvent::StepLeaseRevoked { step, .. }
            | RunEvent::StepProduced { step, .. }
            | RunEvent::StepEvaluated { step, .. } => {
                if let Some(held) = running.remove(step) {
                    release(&mut out, step, held);
                }
            }
            RunEvent::RunRedirected {
                to, instructions, ..
            } => out.push(Effect::StartRedirect {
                to: to.clone(),
                instructions: instructions.clone(),
            }),
            RunEvent::RunStarted { .. }
            | RunEvent::StepRetryScheduled { .. }
            | RunEvent::RunCompleted { .. }
            | RunEvent::RunFailed { .. }
            | RunEvent::RunPaused { .. }
            | RunEvent::RunResumed { .. }
            | RunEvent::RunCancelled { .. }
            | RunEvent::MessagePosted { .. }
            | RunEvent::MessageStatusChanged { .. }
            | RunEvent::StepApproved { .. }
            | RunEvent::ButtonClicked { .. }
            | RunEvent::AutoRunChanged { .. }
            | RunEvent::StepClaimed { .. }
            | RunEvent::StepHeartbeat { .. }
            | RunEvent::ArtifactsPurged { .. } => {}
        }
    }
    if let Some(at) = after.next_wake() {
        out.push(Effect::WakeAt(at));
    }
    out
}

/// The agent that runs (or would run) `step`'s current dispatch in `run`:
/// a refining step's evaluator while it scores, else the step's agent.
pub fn running_agent(run: &Run, step: &StepId) -> Option<AgentName> {
    let def = run.definition.steps.get(step)?;
    let evaluating = run.steps.get(step).is_some_and(|s| s.refine.evaluating);
    match (&def.refine, evaluating) {
        (Some(refine), true) => Some(refine.evaluator.clone()),
        _ => Some(def.agent.clone()),
    }
}

/// The task of a dispatch that `run` (the state after it) records.
fn task(
    run: &Run,
    step: &StepId,
    attempt: u32,
    lease: &LeaseToken,
    prompt_override: &Option<String>,
    instructions: &[u32],
) -> Option<Task> {
    let def = run.definition.steps.get(step)?;
    let state = run.steps.get(step)?;
    if let (Some(refine), true) = (&def.refine, state.refine.evaluating) {
        // The evaluator scores the outputs the attempt produced.
        let produced = state
            .refine
            .produced
            .iter()
            .filter_map(|(name, version)| {
                let content = run.artifacts.get(name)?.content(*version)?.clone();
                Some((name.output().to_string(), InputValue::Artifact(content)))
            })
            .collect();
        return Some(Task {
            run_id: run.id.clone()?,
            step: step.clone(),
            attempt,
            lease: lease.clone(),
            agent: refine.evaluator.clone(),
            config: refine.evaluator_config.clone(),
            prompt: None,
            prompt_override: None,
            instructions: Vec::new(),
            input: StepInput::Named(produced),
            run_input: run.input.clone(),
            upstream: BTreeMap::new(),
            stop_requested: run.pause_requested || run.cancel_requested.is_some(),
            budgets: budgets(run, step),
        });
    }
    // The texts of the instructions handed over: they are in flight for the
    // step now; then a refine loop's feedback on the attempt before.
    let mut instructions: Vec<String> = run
        .thread
        .in_flight
        .get(step)
        .map(|open| {
            open.iter()
                .filter(|i| instructions.contains(&i.message))
                .map(|i| i.content.clone())
                .collect()
        })
        .unwrap_or_default();
    if let Some(feedback) = state.refine.feedback.as_ref().filter(|f| !f.is_empty()) {
        let on = state
            .refine
            .feedback_on
            .unwrap_or_else(|| attempt.saturating_sub(1));
        instructions.push(format!("Feedback on attempt {on}: {feedback}"));
    }
    let upstream = run
        .definition
        .upstream_of(step)
        .into_iter()
        .map(|s| {
            let outputs = run.outputs_of(&s);
            (s.to_string(), outputs)
        })
        .filter(|(_, outputs)| !outputs.is_empty())
        .collect();
    Some(Task {
        run_id: run.id.clone()?,
        step: step.clone(),
        attempt,
        lease: lease.clone(),
        agent: def.agent.clone(),
        config: def.config.clone(),
        prompt: def.prompt.clone(),
        prompt_override: prompt_override.clone(),
        instructions,
        input: run.step_input(step),
        run_input: run.input.clone(),
        upstream,
        stop_requested: run.pause_requested || run.cancel_requested.is_some(),
        budgets: budgets(run, step),
    })
}

/// The budgets `step`'s model calls must stay within, with what was spent.
fn budgets(run: &Run, step: &StepId) -> Vec<BudgetLeft> {
    let def = run.definition.steps.get(step);
    run.definition
        .budget
        .map(|budget| BudgetLeft {
            scope: "run",
            budget,
            spent: run.usage,
        })
        .into_iter()
        .chain(def.and_then(|d| d.budget).map(|budget| BudgetLeft {
            scope: "step",
            budget,
            spent: run.steps.get(step).map(|s| s.usage).unwrap_or_default(),
        }))
        .collect()
}

impl Run {
    /// When the run must next be decided on without anything happening
    /// outside: the earliest of a claimed attempt's lease expiry, a cancel's
    /// grace running out while attempts still run, and a due retry while
    /// the run may dispatch on its own (a run that is paused, pausing,
    /// cancelling, failing, finished or in manual mode keeps its retries for
    /// a resume or a trigger).
    pub fn next_wake(&self) -> Option<Timestamp> {
        let retry = if self.dispatching() && self.auto_run {
            self.pending_retries().map(|(_, at)| at).min()
        } else {
            None
        };
        retry.into_iter().chain(self.next_lease_deadline()).min()
    }
}
