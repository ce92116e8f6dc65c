//! Given/when/then tests of every Run command branch, one file per command
//! family (as in `src/domain/run`); this file holds the shared fixtures.
//!
//! Conventions: commands in one test happen at increasing times (10, 20, …);
//! each command gets its own lease seed ("s0", "s1", …) so that a lease in an
//! expected event names the command that made it; every step writes one
//! output, `out`.

use cqrs_es::test::TestFramework;
use serde_json::{json, Value};

use std::collections::BTreeMap;
use std::sync::Arc;

use cqrs_es::Aggregate;

use super::*;
use crate::domain::definition::Definition;
use crate::domain::ids::{
    ArtifactName, LeaseToken, OutputName, RunId, StepId, TemplateId, Timestamp,
};

mod control;
mod effects;
mod graph;
mod imports;
mod interactive;
mod leases;
mod refine;
mod replay;
mod results;
mod retention;
mod review;
mod rework;
mod thread;

type Given = TestFramework<Run>;

// ---------------------------------------------------------------- fixtures --

/// The cancel grace of the default policy.
const GRACE_MS: i64 = 30_000;

fn at(ms: i64) -> Timestamp {
    Timestamp(ms)
}

fn sid(step: &str) -> StepId {
    StepId::parse(step).unwrap()
}

fn lease(token: &str) -> LeaseToken {
    LeaseToken::new(token)
}

fn artifact(name: &str) -> ArtifactName {
    ArtifactName::parse(name).unwrap()
}

fn steps(names: &[&str]) -> Vec<StepId> {
    names.iter().copied().map(sid).collect()
}

fn reads(versions: &[(&str, u32)]) -> BTreeMap<ArtifactName, u32> {
    versions.iter().map(|&(n, v)| (artifact(n), v)).collect()
}

fn definition(steps: Value) -> Definition {
    Definition::parse(&json!({ "steps": steps })).unwrap()
}

/// a -> {b, c} -> d, no retries.
fn diamond() -> Definition {
    definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"]},
        "c": {"agent": "echo", "depends_on": ["a"]},
        "d": {"agent": "echo", "depends_on": ["b", "c"]}
    }))
}

/// a (3 attempts, 50 ms apart) -> b.
fn retrying() -> Definition {
    definition(json!({
        "a": {"agent": "echo", "retry": {"max_attempts": 3, "backoff_ms": 50}},
        "b": {"agent": "echo", "depends_on": ["a"]}
    }))
}

/// Two roots, a and b, joined by j.
fn two_roots() -> Definition {
    definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo"},
        "j": {"agent": "echo", "depends_on": ["a", "b"]}
    }))
}

fn input() -> Value {
    json!({"topic": "otters"})
}

fn outputs(value: &str) -> Outputs {
    [(OutputName::parse("out").unwrap(), inline(value))]
        .into_iter()
        .collect()
}

fn inline(value: &str) -> ArtifactContent {
    ArtifactContent::Inline(json!(value))
}

// ---------------------------------------------------------------- commands --

/// `command` as the engine hands it over: stamped with its time and lease
/// seed.
fn stamped(command: RunCommand, ms: i64, seed: &str) -> Stamped {
    Stamped {
        command,
        stamp: Stamp {
            at: at(ms),
            lease_seed: seed.to_string(),
            policy: Policy::default(),
        },
    }
}

/// Decides a stamped command.
fn decide(run: &Run, command: Stamped) -> Result<Vec<RunEvent>, RunError> {
    run.decide(command.command, &command.stamp)
}

fn start(definition: Definition, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::Start(StartRun {
            run_id: RunId::parse("r1").unwrap(),
            template_id: TemplateId::parse("t1").unwrap(),
            template_version: 1,
            definition: Arc::new(definition),
            input: input(),
            retry_of: None,
            redirected_from: None,
            auto_run: true,
            owner: None,
            imports: Vec::new(),
        }),
        ms,
        seed,
    )
}

fn complete(step: &str, token: &str, value: &str, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::CompleteStep {
            usage: None,
            step: sid(step),
            lease: lease(token),
            outputs: outputs(value),
            comments: Vec::new(),
            message: None,
        },
        ms,
        seed,
    )
}

fn fail(step: &str, token: &str, error: &str, ms: i64) -> Stamped {
    stamped(
        RunCommand::FailStep {
            step: sid(step),
            lease: lease(token),
            failure: Failure::retryable(error),
            comments: Vec::new(),
        },
        ms,
        "",
    )
}

/// The run's wake-up (expired leases, due retries).
fn tick(ms: i64, seed: &str) -> Stamped {
    stamped(RunCommand::Tick, ms, seed)
}

fn recover(ms: i64, seed: &str) -> Stamped {
    stamped(RunCommand::Recover, ms, seed)
}

// ------------------------------------------------------------------ events --

fn run_started(definition: Definition, ready: &[&str], ms: i64) -> RunEvent {
    RunEvent::RunStarted {
        run_id: RunId::parse("r1").unwrap(),
        template_id: TemplateId::parse("t1").unwrap(),
        template_version: 1,
        definition,
        input: input(),
        ready: steps(ready),
        retry_of: None,
        redirected_from: None,
        auto_run: true,
        owner: None,
        imports: Vec::new(),
        at: at(ms),
    }
}

fn dispatched(step: &str, attempt: u32, token: &str, read: &[(&str, u32)], ms: i64) -> RunEvent {
    RunEvent::StepDispatched {
        evaluating: false,
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: false,
        prompt_override: None,
        instructions: vec![],
        imports: BTreeMap::new(),
        at: at(ms),
    }
}

fn redispatched(step: &str, attempt: u32, token: &str, read: &[(&str, u32)], ms: i64) -> RunEvent {
    RunEvent::StepDispatched {
        evaluating: false,
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: true,
        prompt_override: None,
        instructions: vec![],
        imports: BTreeMap::new(),
        at: at(ms),
    }
}

/// `step` completed `attempt`, writing `<step>.out` at `version` with `value`.
fn completed(
    step: &str,
    attempt: u32,
    (version, value): (u32, &str),
    ready: &[&str],
    ms: i64,
) -> RunEvent {
    RunEvent::StepCompleted {
        latest: Default::default(),
        final_score: None,
        usage: None,
        step: sid(step),
        attempt,
        artifacts: vec![ArtifactWritten {
            name: artifact(&format!("{step}.out")),
            version,
            content: inline(value),
        }],
        ready: steps(ready),
        skipped: vec![],
        at: at(ms),
    }
}

fn failed(step: &str, attempt: u32, error: &str, will_retry: bool, ms: i64) -> RunEvent {
    RunEvent::StepFailed {
        step: sid(step),
        attempt,
        error: error.into(),
        will_retry,
        fails_run: !will_retry,
        retryable: true,
        at: at(ms),
    }
}

/// A failure while a cancel is pending: not retried, and it does not fail
/// the run.
fn abandoned(step: &str, attempt: u32, error: &str, ms: i64) -> RunEvent {
    RunEvent::StepFailed {
        step: sid(step),
        attempt,
        error: error.into(),
        will_retry: false,
        fails_run: false,
        retryable: true,
        at: at(ms),
    }
}

fn retry_scheduled(step: &str, next_attempt: u32, delay_ms: u64, ms: i64) -> RunEvent {
    RunEvent::StepRetryScheduled {
        step: sid(step),
        next_attempt,
        delay_ms,
        due_at: at(ms).plus_millis(delay_ms),
        at: at(ms),
    }
}

fn run_failed(step: &str, error: &str, ms: i64) -> RunEvent {
    RunEvent::RunFailed {
        step: sid(step),
        error: error.into(),
        at: at(ms),
    }
}

/// A system message, number `number` in the thread, announcing a state
/// change of the run.
fn note(number: u32, text: &str, ms: i64) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::System,
        action: Action::Comment,
        content: text.into(),
        metadata: Value::Null,
        step: None,
        idempotency_key: None,
        status: MessageStatus::Processed,
        reason: None,
        buttons: Vec::new(),
        input: None,
        at: at(ms),
    }
}

/// A system message about one step.
fn step_note(number: u32, step: &str, text: &str, ms: i64) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::System,
        action: Action::Comment,
        content: text.into(),
        metadata: Value::Null,
        step: Some(sid(step)),
        idempotency_key: None,
        status: MessageStatus::Processed,
        reason: None,
        buttons: Vec::new(),
        input: None,
        at: at(ms),
    }
}

/// The announcement of a failed attempt (follows every `StepFailed`).
fn failed_note(
    number: u32,
    step: &str,
    attempt: u32,
    error: &str,
    will_retry: bool,
    ms: i64,
) -> RunEvent {
    let next = if will_retry {
        " It will be retried."
    } else {
        ""
    };
    step_note(
        number,
        step,
        &format!("Step '{step}' failed (attempt {attempt}): {error}.{next}"),
        ms,
    )
}

fn run_failed_note(number: u32, step: &str, error: &str, ms: i64) -> RunEvent {
    note(
        number,
        &format!("Run failed: step '{step}' failed: {error}."),
        ms,
    )
}

fn completed_note(number: u32, ms: i64) -> RunEvent {
    note(number, "Run completed.", ms)
}

fn paused_note(number: u32, ms: i64) -> RunEvent {
    note(number, "Run paused.", ms)
}

fn resumed_note(number: u32, ms: i64) -> RunEvent {
    note(number, "Run resumed.", ms)
}

fn cancelled_note(number: u32, reason: Option<&str>, ms: i64) -> RunEvent {
    match reason {
        Some(reason) => note(number, &format!("Run cancelled: {reason}"), ms),
        None => note(number, "Run cancelled.", ms),
    }
}

// --------------------------------------------------------------- histories --

/// The diamond started at 10 with seed s0: a runs under "s0.1".
fn diamond_started() -> Vec<RunEvent> {
    vec![
        run_started(diamond(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ]
}

/// … then a completed at 20 with seed s1: b runs under "s1.1", c under "s1.2".
fn diamond_a_done() -> Vec<RunEvent> {
    let mut events = diamond_started();
    events.extend([
        completed("a", 1, (1, "A"), &["b", "c"], 20),
        dispatched("b", 1, "s1.1", &[("a.out", 1)], 20),
        dispatched("c", 1, "s1.2", &[("a.out", 1)], 20),
    ]);
    events
}

/// … then b completed at 30 (d still waits for c).
fn diamond_b_done() -> Vec<RunEvent> {
    let mut events = diamond_a_done();
    events.push(completed("b", 1, (1, "B"), &[], 30));
    events
}

/// … then c completed at 40 with seed s3: d runs under "s3.1".
fn diamond_c_done() -> Vec<RunEvent> {
    let mut events = diamond_b_done();
    events.extend([
        completed("c", 1, (1, "C"), &["d"], 40),
        dispatched("d", 1, "s3.1", &[("b.out", 1), ("c.out", 1)], 40),
    ]);
    events
}

/// … then d completed at 50: the run completed.
fn diamond_completed() -> Vec<RunEvent> {
    let mut events = diamond_c_done();
    events.extend([
        completed("d", 1, (1, "D"), &[], 50),
        RunEvent::RunCompleted { at: at(50) },
        completed_note(1, 50),
    ]);
    events
}

/// The diamond where b failed for good at 30 while c ran; c completed at 40
/// and the run failed.
fn diamond_failed() -> Vec<RunEvent> {
    let mut events = diamond_a_done();
    events.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
        completed("c", 1, (1, "C"), &[], 40),
        run_failed("b", "boom", 40),
        run_failed_note(2, "b", "boom", 40),
    ]);
    events
}

/// The retrying pair started at 10 with seed s0: a runs under "s0.1".
fn retrying_started() -> Vec<RunEvent> {
    vec![
        run_started(retrying(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ]
}

/// … then a's first attempt failed at 20: attempt 2 is due at 70.
fn retrying_first_attempt_failed() -> Vec<RunEvent> {
    let mut events = retrying_started();
    events.extend([
        failed("a", 1, "flaky", true, 20),
        failed_note(1, "a", 1, "flaky", true, 20),
        retry_scheduled("a", 2, 50, 20),
    ]);
    events
}

// ------------------------------------------------- run control: fixtures --

fn pause(ms: i64) -> Stamped {
    stamped(RunCommand::Pause, ms, "")
}

fn resume(ms: i64, seed: &str) -> Stamped {
    stamped(RunCommand::Resume, ms, seed)
}

fn cancel(reason: Option<&str>, ms: i64) -> Stamped {
    stamped(
        RunCommand::Cancel {
            reason: reason.map(Into::into),
        },
        ms,
        "",
    )
}

fn pause_requested(ms: i64) -> RunEvent {
    RunEvent::PauseRequested { at: at(ms) }
}

fn run_paused(ms: i64) -> RunEvent {
    RunEvent::RunPaused { at: at(ms) }
}

fn run_resumed(ms: i64) -> RunEvent {
    RunEvent::RunResumed { at: at(ms) }
}

fn cancel_requested(reason: Option<&str>, ms: i64) -> RunEvent {
    RunEvent::CancelRequested {
        reason: reason.map(Into::into),
        grace_until: Some(at(ms + GRACE_MS)),
        at: at(ms),
    }
}

fn run_cancelled(reason: Option<&str>, ms: i64) -> RunEvent {
    RunEvent::RunCancelled {
        reason: reason.map(Into::into),
        at: at(ms),
    }
}

/// Roots a and b; x depends on a only.
fn side_branch() -> Definition {
    definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo"},
        "x": {"agent": "echo", "depends_on": ["a"]}
    }))
}

/// The side branch started at 10 with seed s0: a runs under "s0.1", b under
/// "s0.2".
fn side_branch_started() -> Vec<RunEvent> {
    vec![
        run_started(side_branch(), &["a", "b"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        dispatched("b", 1, "s0.2", &[], 10),
    ]
}

/// a (3 attempts, 50 ms apart) and b, both roots.
fn retrying_and_plain() -> Definition {
    definition(json!({
        "a": {"agent": "echo", "retry": {"max_attempts": 3, "backoff_ms": 50}},
        "b": {"agent": "echo"}
    }))
}

/// … started at 10 with seed s0 (a under "s0.1", b under "s0.2"); a's first
/// attempt failed at 20, attempt 2 due at 70; b still runs.
fn retrying_and_plain_a_failed_once() -> Vec<RunEvent> {
    vec![
        run_started(retrying_and_plain(), &["a", "b"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        dispatched("b", 1, "s0.2", &[], 10),
        failed("a", 1, "flaky", true, 20),
        failed_note(1, "a", 1, "flaky", true, 20),
        retry_scheduled("a", 2, 50, 20),
    ]
}

/// The diamond with b and c running, asked to pause at 25.
fn diamond_pausing() -> Vec<RunEvent> {
    let mut events = diamond_a_done();
    events.push(pause_requested(25));
    events
}

/// … then b completed at 30 and c at 40 (making d ready): paused at 40.
fn diamond_paused() -> Vec<RunEvent> {
    let mut events = diamond_pausing();
    events.extend([
        completed("b", 1, (1, "B"), &[], 30),
        completed("c", 1, (1, "C"), &["d"], 40),
        run_paused(40),
        paused_note(1, 40),
    ]);
    events
}

/// The diamond paused right after its root: a was running when the pause
/// was asked at 15, and its completion at 20 made b and c ready.
fn diamond_paused_after_root() -> Vec<RunEvent> {
    let mut events = diamond_started();
    events.extend([
        pause_requested(15),
        completed("a", 1, (1, "A"), &["b", "c"], 20),
        run_paused(20),
        paused_note(1, 20),
    ]);
    events
}

/// The diamond with b and c running, asked to cancel at 25 ("enough").
fn diamond_cancelling() -> Vec<RunEvent> {
    let mut events = diamond_a_done();
    events.push(cancel_requested(Some("enough"), 25));
    events
}

/// … then b completed at 30 and c at 40: cancelled at 40.
fn diamond_cancelled() -> Vec<RunEvent> {
    let mut events = diamond_cancelling();
    events.extend([
        completed("b", 1, (1, "B"), &[], 30),
        completed("c", 1, (1, "C"), &[], 40),
        run_cancelled(Some("enough"), 40),
        cancelled_note(1, Some("enough"), 40),
    ]);
    events
}

/// The retrying pair with a's retry pending (nothing runs), paused at 30.
fn retrying_paused() -> Vec<RunEvent> {
    let mut events = retrying_first_attempt_failed();
    events.extend([pause_requested(30), run_paused(30), paused_note(2, 30)]);
    events
}

// ----------------------------------------------------------------- replays --

/// Runs `commands` through `decide`, folding each command's events into the
/// live state as `Aggregate::handle` does, and returns that state together
/// with the whole event log.
fn drive(commands: Vec<Stamped>) -> (Run, Vec<RunEvent>) {
    let mut state = Run::default();
    let mut log = Vec::new();
    for command in commands {
        let before = state.clone();
        let events = decide(&state, command.clone())
            .unwrap_or_else(|e| panic!("{command:?} was refused: {e:?}"));
        assert_eq!(state, before, "decide changed the state");
        for event in events {
            state.apply_event(event.clone());
            log.push(event);
        }
    }
    (state, log)
}

fn replay(log: &[RunEvent]) -> Run {
    let mut state = Run::default();
    for event in log {
        Aggregate::apply(&mut state, event.clone());
    }
    state
}

// ----------------------------------------------------- steering: fixtures --

fn rid(id: &str) -> RunId {
    RunId::parse(id).unwrap()
}

fn written(name: &str, version: u32, value: &str) -> ArtifactWritten {
    ArtifactWritten {
        name: artifact(name),
        version,
        content: inline(value),
    }
}

fn single_output(name: &str, content: ArtifactContent) -> Outputs {
    [(OutputName::parse(name).unwrap(), content)]
        .into_iter()
        .collect()
}

/// a is a review step; b depends on it.
fn reviewed() -> Definition {
    definition(json!({
        "a": {"agent": "echo", "review": true},
        "b": {"agent": "echo", "depends_on": ["a"]}
    }))
}

/// The reviewed pair started at 10 (a under "s0.1"); a's agent finished at
/// 20 writing `a.out` 1: a awaits review (message 1 says so).
fn reviewed_awaiting() -> Vec<RunEvent> {
    vec![
        run_started(reviewed(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        awaiting_review("a", 1, (1, "A"), 20),
        review_note(1, "a", 20),
    ]
}

/// a is a review step offering "ship" and "rework"; `ship` runs when the
/// choice is ship, `fix` when it is rework, `polish` after `fix`.
fn choosing() -> Definition {
    definition(json!({
        "a": {"agent": "echo", "review": true, "choices": ["ship", "rework"]},
        "ship": {"agent": "echo", "depends_on": ["a"],
                 "when": {"step": "a", "output": "choice", "equals": "ship"}},
        "fix": {"agent": "echo", "depends_on": ["a"],
                "when": {"step": "a", "output": "choice", "equals": "rework"}},
        "polish": {"agent": "echo", "depends_on": ["fix"]}
    }))
}

/// The choosing run started at 10; a awaits review since 20.
fn choosing_awaiting() -> Vec<RunEvent> {
    vec![
        run_started(choosing(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        awaiting_review("a", 1, (1, "A"), 20),
        step_note(
            1,
            "a",
            "Step 'a' is awaiting review. Choices: ship, rework.",
            20,
        ),
    ]
}

/// a root; `yes` runs when a.out is "go", `no` when it is "stop";
/// `after_no` after `no`; `join` after both `yes` and `no`.
fn branching() -> Definition {
    definition(json!({
        "a": {"agent": "echo"},
        "yes": {"agent": "echo", "depends_on": ["a"],
                "when": {"step": "a", "output": "out", "equals": "go"}},
        "no": {"agent": "echo", "depends_on": ["a"],
               "when": {"step": "a", "output": "out", "equals": "stop"}},
        "after_no": {"agent": "echo", "depends_on": ["no"]},
        "join": {"agent": "echo", "depends_on": ["yes", "no"]}
    }))
}

/// The branching run started at 10 (a under "s0.1").
fn branching_started() -> Vec<RunEvent> {
    vec![
        run_started(branching(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ]
}

/// The diamond started at 10 in manual mode: a is ready, nothing runs.
fn manual_diamond_started() -> Vec<RunEvent> {
    vec![manual_started(diamond(), &["a"], 10)]
}

/// … then a was triggered at 15 (seed s1) and completed at 20: b and c are
/// ready and wait for a trigger.
fn manual_diamond_a_done() -> Vec<RunEvent> {
    let mut events = manual_diamond_started();
    events.extend([
        dispatched("a", 1, "s1.1", &[], 15),
        completed("a", 1, (1, "A"), &["b", "c"], 20),
    ]);
    events
}

/// The completed diamond (message 1: "Run completed.") whose step b was
/// retried at 60 (seed s6): b's attempt 2 runs, d is pending again.
fn diamond_b_retried() -> Vec<RunEvent> {
    let mut events = diamond_completed();
    events.extend([
        retry_requested("b", None, &["d"], true, 60),
        dispatched("b", 2, "s6.1", &[("a.out", 1)], 60),
    ]);
    events
}

/// … then b completed at 70 writing `b.out` 2 (seed s7): d runs its attempt
/// 2 under "s7.1", reading it.
fn diamond_b_redone() -> Vec<RunEvent> {
    let mut events = diamond_b_retried();
    events.extend([
        completed("b", 2, (2, "B2"), &["d"], 70),
        dispatched("d", 2, "s7.1", &[("b.out", 2), ("c.out", 1)], 70),
    ]);
    events
}

/// … then d completed at 80: the run completed again (message 2).
fn diamond_recompleted() -> Vec<RunEvent> {
    let mut events = diamond_b_redone();
    events.extend([
        completed("d", 2, (2, "D2"), &[], 80),
        RunEvent::RunCompleted { at: at(80) },
        completed_note(2, 80),
    ]);
    events
}

/// The diamond with an instruction (message 1, "be brief") posted at 15
/// while a runs.
fn diamond_instructed() -> Vec<RunEvent> {
    let mut events = diamond_started();
    events.push(posted(
        1,
        Action::Instruction,
        "be brief",
        MessageStatus::Pending,
        None,
        15,
    ));
    events
}

/// … then a completed at 20 (seed s1): b received the instruction.
fn diamond_instructed_b_running() -> Vec<RunEvent> {
    let mut events = diamond_instructed();
    events.extend([
        completed("a", 1, (1, "A"), &["b", "c"], 20),
        dispatched_with("b", 1, "s1.1", &[("a.out", 1)], None, &[1], 20),
        status_changed(1, MessageStatus::Acknowledged, Some("b"), None, 20),
        dispatched("c", 1, "s1.2", &[("a.out", 1)], 20),
    ]);
    events
}

// ----------------------------------------------------- steering: commands --

fn start_with(
    run_id: &str,
    definition: Definition,
    redirected_from: Option<(&str, &str)>,
    auto_run: bool,
    ms: i64,
    seed: &str,
) -> Stamped {
    stamped(
        RunCommand::Start(StartRun {
            run_id: rid(run_id),
            template_id: TemplateId::parse("t1").unwrap(),
            template_version: 1,
            definition: Arc::new(definition),
            input: input(),
            retry_of: None,
            redirected_from: redirected_from.map(|(from, text)| (rid(from), text.to_string())),
            auto_run,
            owner: None,
            imports: Vec::new(),
        }),
        ms,
        seed,
    )
}

fn message(action: Action, content: &str, key: Option<&str>) -> NewMessage {
    NewMessage {
        action,
        content: content.into(),
        metadata: Value::Null,
        idempotency_key: key.map(Into::into),
    }
}

fn post(action: Action, content: &str, ms: i64, seed: &str) -> Stamped {
    post_message(message(action, content, None), None, ms, seed)
}

fn post_message(message: NewMessage, redirect_to: Option<&str>, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::PostMessage {
            message,
            redirect_to: redirect_to.map(rid),
        },
        ms,
        seed,
    )
}

fn agent_comment(step: &str, token: &str, content: &str, ms: i64) -> Stamped {
    stamped(
        RunCommand::AgentComments {
            comments: vec![(sid(step), lease(token), note_at(content, ms))],
        },
        ms,
        "",
    )
}

fn note_at(content: &str, ms: i64) -> AgentNote {
    AgentNote {
        content: content.into(),
        at: at(ms),
    }
}

fn interrupt(step: &str, token: &str, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::InterruptStep {
            step: sid(step),
            lease: lease(token),
            comments: Vec::new(),
        },
        ms,
        seed,
    )
}

fn approve(step: &str, choice: Option<&str>, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::Approve {
            step: sid(step),
            choice: choice.map(Into::into),
        },
        ms,
        seed,
    )
}

fn retry_step(step: &str, prompt_override: Option<&str>, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::RetryStep {
            step: sid(step),
            prompt_override: prompt_override.map(Into::into),
        },
        ms,
        seed,
    )
}

fn trigger(step: &str, prompt_override: Option<&str>, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::TriggerStep {
            step: sid(step),
            prompt_override: prompt_override.map(Into::into),
        },
        ms,
        seed,
    )
}

fn set_auto_run(enabled: bool, ms: i64, seed: &str) -> Stamped {
    stamped(RunCommand::SetAutoRun { enabled }, ms, seed)
}

fn rollback(name: &str, to_version: u32, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::RollbackArtifact {
            name: artifact(name),
            to_version,
        },
        ms,
        seed,
    )
}

fn redirect(to: &str, instructions: &str, ms: i64) -> Stamped {
    stamped(
        RunCommand::Redirect {
            new_run_id: rid(to),
            instructions: instructions.into(),
        },
        ms,
        "",
    )
}

// ------------------------------------------------------- steering: events --

fn manual_started(definition: Definition, ready: &[&str], ms: i64) -> RunEvent {
    RunEvent::RunStarted {
        run_id: rid("r1"),
        template_id: TemplateId::parse("t1").unwrap(),
        template_version: 1,
        definition,
        input: input(),
        ready: steps(ready),
        retry_of: None,
        redirected_from: None,
        auto_run: false,
        owner: None,
        imports: Vec::new(),
        at: at(ms),
    }
}

fn dispatched_with(
    step: &str,
    attempt: u32,
    token: &str,
    read: &[(&str, u32)],
    prompt_override: Option<&str>,
    instructions: &[u32],
    ms: i64,
) -> RunEvent {
    RunEvent::StepDispatched {
        evaluating: false,
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: false,
        prompt_override: prompt_override.map(Into::into),
        instructions: instructions.to_vec(),
        imports: BTreeMap::new(),
        at: at(ms),
    }
}

/// `step` completed `attempt` writing `artifacts`, making `ready` ready and
/// `skipped` skipped.
fn completed_with(
    step: &str,
    attempt: u32,
    artifacts: Vec<ArtifactWritten>,
    ready: &[&str],
    skipped: &[&str],
    ms: i64,
) -> RunEvent {
    RunEvent::StepCompleted {
        latest: Default::default(),
        final_score: None,
        usage: None,
        step: sid(step),
        attempt,
        artifacts,
        ready: steps(ready),
        skipped: steps(skipped),
        at: at(ms),
    }
}

fn awaiting_review(step: &str, attempt: u32, (version, value): (u32, &str), ms: i64) -> RunEvent {
    RunEvent::StepAwaitingReview {
        usage: None,
        step: sid(step),
        attempt,
        artifacts: vec![written(&format!("{step}.out"), version, value)],
        at: at(ms),
    }
}

fn review_note(number: u32, step: &str, ms: i64) -> RunEvent {
    step_note(
        number,
        step,
        &format!("Step '{step}' is awaiting review."),
        ms,
    )
}

fn approved(step: &str, attempt: u32, choice: Option<&str>, ms: i64) -> RunEvent {
    RunEvent::StepApproved {
        step: sid(step),
        attempt,
        choice: choice.map(Into::into),
        at: at(ms),
    }
}

fn interrupted(step: &str, attempt: u32, ms: i64) -> RunEvent {
    RunEvent::StepInterrupted {
        step: sid(step),
        attempt,
        at: at(ms),
    }
}

fn retry_requested(
    step: &str,
    prompt_override: Option<&str>,
    invalidated: &[&str],
    reopens_run: bool,
    ms: i64,
) -> RunEvent {
    RunEvent::StepRetryRequested {
        step: sid(step),
        prompt_override: prompt_override.map(Into::into),
        invalidated: steps(invalidated),
        reopens_run,
        at: at(ms),
    }
}

fn rolled_back(
    name: &str,
    (from_version, to_version): (u32, u32),
    invalidated: &[&str],
    ready: &[&str],
    skipped: &[&str],
    reopens_run: bool,
    ms: i64,
) -> RunEvent {
    RunEvent::ArtifactRolledBack {
        name: artifact(name),
        from_version,
        to_version,
        invalidated: steps(invalidated),
        ready: steps(ready),
        skipped: steps(skipped),
        reopens_run,
        at: at(ms),
    }
}

fn rolled_back_note(number: u32, name: &str, (from, to): (u32, u32), ms: i64) -> RunEvent {
    note(
        number,
        &format!("Artifact '{name}' rolled back from version {from} to version {to}."),
        ms,
    )
}

fn auto_run_changed(enabled: bool, ms: i64) -> RunEvent {
    RunEvent::AutoRunChanged {
        enabled,
        at: at(ms),
    }
}

fn redirected(to: &str, instructions: &str, ms: i64) -> RunEvent {
    RunEvent::RunRedirected {
        to: rid(to),
        instructions: instructions.into(),
        at: at(ms),
    }
}

/// A user's message (no metadata, no idempotency key).
fn posted(
    number: u32,
    action: Action,
    content: &str,
    status: MessageStatus,
    reason: Option<String>,
    ms: i64,
) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::User,
        action,
        content: content.into(),
        metadata: Value::Null,
        step: None,
        idempotency_key: None,
        status,
        reason,
        buttons: Vec::new(),
        input: None,
        at: at(ms),
    }
}

/// A user's message posted with an idempotency key.
fn posted_keyed(
    number: u32,
    message: NewMessage,
    status: MessageStatus,
    reason: Option<String>,
    ms: i64,
) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::User,
        action: message.action,
        content: message.content,
        metadata: message.metadata,
        step: None,
        idempotency_key: message.idempotency_key,
        status,
        reason,
        buttons: Vec::new(),
        input: None,
        at: at(ms),
    }
}

fn status_changed(
    number: u32,
    status: MessageStatus,
    step: Option<&str>,
    reason: Option<&str>,
    ms: i64,
) -> RunEvent {
    RunEvent::MessageStatusChanged {
        message: number,
        status,
        step: step.map(sid),
        reason: reason.map(Into::into),
        at: at(ms),
    }
}

/// The reason an open instruction is ignored when the run ends.
fn unused(outcome: &str) -> Option<&'static str> {
    match outcome {
        "completed" => Some("the run completed before a step completed with it"),
        "failed" => Some("the run failed before a step completed with it"),
        _ => Some("the run was cancelled before a step completed with it"),
    }
}

/// The state after `events`.
fn state_after(events: Vec<RunEvent>) -> Run {
    replay(&events)
}
