//! Given/when/then tests of every Run command branch.
//!
//! Conventions: commands in one test happen at increasing times (10, 20, …);
//! each command gets its own lease seed ("s0", "s1", …) so that a lease in an
//! expected event names the command that made it; every step writes one
//! output, `out`.

use cqrs_es::test::TestFramework;
use serde_json::{json, Value};

use super::*;
use crate::domain::ids::OutputName;

type Given = TestFramework<Run>;

// ---------------------------------------------------------------- fixtures --

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
        },
    }
}

/// Decides a stamped command.
fn decide(run: &Run, command: Stamped) -> Result<Vec<RunEvent>, RunError> {
    run.decide(command.command, &command.stamp)
}

fn start(definition: Definition, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::Start {
            run_id: RunId::parse("r1").unwrap(),
            template_id: TemplateId::parse("t1").unwrap(),
            template_version: 1,
            definition: Arc::new(definition),
            input: input(),
            retry_of: None,
            redirected_from: None,
            auto_run: true,
        },
        ms,
        seed,
    )
}

fn complete(step: &str, token: &str, value: &str, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::CompleteStep {
            step: sid(step),
            lease: lease(token),
            outputs: outputs(value),
            comments: Vec::new(),
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
            error: error.into(),
            comments: Vec::new(),
        },
        ms,
        "",
    )
}

fn dispatch_due(ms: i64, seed: &str) -> Stamped {
    stamped(RunCommand::DispatchDue, ms, seed)
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
        at: at(ms),
    }
}

fn dispatched(step: &str, attempt: u32, token: &str, read: &[(&str, u32)], ms: i64) -> RunEvent {
    RunEvent::StepDispatched {
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: false,
        prompt_override: None,
        instructions: vec![],
        at: at(ms),
    }
}

fn redispatched(step: &str, attempt: u32, token: &str, read: &[(&str, u32)], ms: i64) -> RunEvent {
    RunEvent::StepDispatched {
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: true,
        prompt_override: None,
        instructions: vec![],
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

// ------------------------------------------------------------------- Start --

#[test]
fn starting_a_diamond_dispatches_only_its_root() {
    Given::with(())
        .given_no_previous_events()
        .when(start(diamond(), 10, "s0"))
        .then_expect_events(vec![
            run_started(diamond(), &["a"], 10),
            RunEvent::StepDispatched {
                step: sid("a"),
                attempt: 1,
                lease: lease("s0.1"),
                reads: BTreeMap::new(),
                recovered: false,
                prompt_override: None,
                instructions: vec![],
                at: at(10),
            },
        ]);
}

#[test]
fn starting_a_run_with_two_roots_dispatches_both_with_distinct_leases() {
    Given::with(())
        .given_no_previous_events()
        .when(start(two_roots(), 10, "s0"))
        .then_expect_events(vec![
            run_started(two_roots(), &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
        ]);
}

#[test]
fn starting_a_run_twice_is_refused() {
    Given::with(())
        .given(diamond_started())
        .when(start(diamond(), 11, "s1"))
        .then_expect_error(RunError::AlreadyStarted);
}

#[test]
fn starting_a_finished_run_again_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(start(diamond(), 60, "s5"))
        .then_expect_error(RunError::AlreadyStarted);
}

// ------------------------------------------------------------ CompleteStep --

#[test]
fn completing_the_root_writes_version_one_and_dispatches_the_dependants_it_made_ready() {
    Given::with(())
        .given(diamond_started())
        .when(complete("a", "s0.1", "A", 20, "s1"))
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![ArtifactWritten {
                    name: artifact("a.out"),
                    version: 1,
                    content: inline("A"),
                }],
                ready: steps(&["b", "c"]),
                skipped: vec![],
                at: at(20),
            },
            dispatched("b", 1, "s1.1", &[("a.out", 1)], 20),
            dispatched("c", 1, "s1.2", &[("a.out", 1)], 20),
        ]);
}

#[test]
fn a_fan_in_step_is_not_ready_while_one_of_its_dependencies_still_runs() {
    Given::with(())
        .given(diamond_a_done())
        .when(complete("b", "s1.1", "B", 30, "s2"))
        .then_expect_events(vec![completed("b", 1, (1, "B"), &[], 30)]);
}

#[test]
fn a_fan_in_step_is_dispatched_once_all_its_dependencies_completed_reading_each_of_them() {
    Given::with(())
        .given(diamond_b_done())
        .when(complete("c", "s1.2", "C", 40, "s3"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &["d"], 40),
            dispatched("d", 1, "s3.1", &[("b.out", 1), ("c.out", 1)], 40),
        ]);
}

#[test]
fn completing_the_last_step_completes_the_run() {
    Given::with(())
        .given(diamond_c_done())
        .when(complete("d", "s3.1", "D", 50, "s4"))
        .then_expect_events(vec![
            completed("d", 1, (1, "D"), &[], 50),
            RunEvent::RunCompleted { at: at(50) },
            RunEvent::MessagePosted {
                message: 1,
                author: Author::System,
                action: Action::Comment,
                content: "Run completed.".into(),
                metadata: Value::Null,
                step: None,
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                at: at(50),
            },
        ]);
}

#[test]
fn completing_a_step_without_outputs_writes_no_artifact() {
    Given::with(())
        .given(diamond_started())
        .when(stamped(
            RunCommand::CompleteStep {
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: Outputs::new(),
                comments: Vec::new(),
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![],
                ready: steps(&["b", "c"]),
                skipped: vec![],
                at: at(20),
            },
            dispatched("b", 1, "s1.1", &[], 20),
            dispatched("c", 1, "s1.2", &[], 20),
        ]);
}

#[test]
fn a_step_with_mapped_inputs_reads_only_the_artifacts_it_maps() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "a.one"}}
    }));
    let written = |name: &str, value: &str| ArtifactWritten {
        name: artifact(name),
        version: 1,
        content: inline(value),
    };
    Given::with(())
        .given(vec![
            run_started(def.clone(), &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
        ])
        .when(stamped(
            RunCommand::CompleteStep {
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: [("one", "1"), ("two", "2")]
                    .into_iter()
                    .map(|(o, v)| (OutputName::parse(o).unwrap(), inline(v)))
                    .collect(),
                comments: Vec::new(),
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![written("a.one", "1"), written("a.two", "2")],
                ready: steps(&["b"]),
                skipped: vec![],
                at: at(20),
            },
            dispatched("b", 1, "s1.1", &[("a.one", 1)], 20),
        ]);
}

#[test]
fn an_output_written_again_becomes_the_next_version() {
    // A step that already wrote `a.out` version 1 runs again (as after a
    // re-dispatch): its completion writes version 2 and the readers of the
    // new dispatch see it.
    let def = definition(json!({"a": {"agent": "echo"}, "b": {"agent": "echo"}}));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            completed("a", 1, (1, "first"), &[], 20),
            dispatched("a", 2, "s2.1", &[], 30),
        ])
        .when(complete("a", "s2.1", "second", 40, "s3"))
        .then_expect_events(vec![completed("a", 2, (2, "second"), &[], 40)]);
}

#[test]
fn completing_a_step_with_a_stale_lease_is_refused() {
    Given::with(())
        .given(diamond_started())
        .when(complete("a", "s0.2", "A", 20, "s1"))
        .then_expect_error(RunError::StaleLease(sid("a")));
}

#[test]
fn completing_a_step_with_the_lease_of_an_earlier_attempt_is_refused() {
    let mut history = retrying_first_attempt_failed();
    history.push(dispatched("a", 2, "s2.1", &[], 70));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "late", 80, "s3"))
        .then_expect_error(RunError::StaleLease(sid("a")));
}

#[test]
fn completing_a_step_that_is_still_pending_is_refused() {
    Given::with(())
        .given(diamond_started())
        .when(complete("b", "s0.1", "B", 20, "s1"))
        .then_expect_error(RunError::StepNotRunning(sid("b")));
}

#[test]
fn completing_a_step_twice_is_refused() {
    Given::with(())
        .given(diamond_b_done())
        .when(complete("b", "s1.1", "B", 31, "s9"))
        .then_expect_error(RunError::StepNotRunning(sid("b")));
}

#[test]
fn completing_a_step_waiting_for_its_retry_is_refused() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(complete("a", "s0.1", "A", 30, "s2"))
        .then_expect_error(RunError::StepNotRunning(sid("a")));
}

#[test]
fn completing_a_step_that_is_not_part_of_the_run_is_refused() {
    Given::with(())
        .given(diamond_started())
        .when(complete("ghost", "s0.1", "G", 20, "s1"))
        .then_expect_error(RunError::UnknownStep(sid("ghost")));
}

#[test]
fn completing_a_step_of_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(complete("a", "s0.1", "A", 20, "s1"))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn completing_a_step_of_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(complete("d", "s3.1", "D", 60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn completing_a_step_of_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(complete("c", "s1.2", "C", 50, "s5"))
        .then_expect_error(RunError::Finished("failed"));
}

// ---------------------------------------------------------------- FailStep --

#[test]
fn a_failure_with_attempts_left_schedules_the_next_attempt_after_the_backoff() {
    Given::with(())
        .given(retrying_started())
        .when(fail("a", "s0.1", "flaky", 20))
        .then_expect_events(vec![
            RunEvent::StepFailed {
                step: sid("a"),
                attempt: 1,
                error: "flaky".into(),
                will_retry: true,
                fails_run: false,
                at: at(20),
            },
            RunEvent::MessagePosted {
                message: 1,
                author: Author::System,
                action: Action::Comment,
                content: "Step 'a' failed (attempt 1): flaky. It will be retried.".into(),
                metadata: Value::Null,
                step: Some(sid("a")),
                idempotency_key: None,
                status: MessageStatus::Processed,
                reason: None,
                at: at(20),
            },
            RunEvent::StepRetryScheduled {
                step: sid("a"),
                next_attempt: 2,
                delay_ms: 50,
                due_at: at(70),
                at: at(20),
            },
        ]);
}

#[test]
fn a_failure_of_the_last_attempt_fails_the_run_without_dispatching_dependants() {
    let mut history = retrying_first_attempt_failed();
    history.extend([
        dispatched("a", 2, "s2.1", &[], 70),
        failed("a", 2, "flaky", true, 80),
        failed_note(2, "a", 2, "flaky", true, 80),
        retry_scheduled("a", 3, 50, 80),
        dispatched("a", 3, "s4.1", &[], 130),
    ]);
    Given::with(())
        .given(history)
        .when(fail("a", "s4.1", "broken", 140))
        .then_expect_events(vec![
            failed("a", 3, "broken", false, 140),
            failed_note(3, "a", 3, "broken", false, 140),
            run_failed("a", "broken", 140),
            run_failed_note(4, "a", "broken", 140),
        ]);
}

#[test]
fn a_failure_of_a_step_without_retry_policy_fails_the_run_at_once() {
    Given::with(())
        .given(diamond_started())
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_events(vec![
            failed("a", 1, "boom", false, 20),
            failed_note(1, "a", 1, "boom", false, 20),
            run_failed("a", "boom", 20),
            run_failed_note(2, "a", "boom", 20),
        ]);
}

#[test]
fn a_terminal_failure_while_a_sibling_runs_does_not_fail_the_run_yet() {
    Given::with(())
        .given(diamond_a_done())
        .when(fail("b", "s1.1", "boom", 30))
        .then_expect_events(vec![
            failed("b", 1, "boom", false, 30),
            failed_note(1, "b", 1, "boom", false, 30),
        ]);
}

#[test]
fn completing_the_last_running_sibling_of_a_failed_step_fails_the_run_and_dispatches_nothing() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s3"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
            run_failed_note(2, "b", "boom", 40),
        ]);
}

#[test]
fn a_step_made_ready_in_a_failing_run_is_not_dispatched() {
    // a -> x, and b fails for good while a runs: a's completion does not
    // make x ready; the run fails instead.
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo"},
        "x": {"agent": "echo", "depends_on": ["a"]}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            failed("b", 1, "boom", false, 20),
            failed_note(1, "b", 1, "boom", false, 20),
        ])
        .when(complete("a", "s0.1", "A", 30, "s2"))
        .then_expect_events(vec![
            completed("a", 1, (1, "A"), &[], 30),
            run_failed("b", "boom", 30),
            run_failed_note(2, "b", "boom", 30),
        ]);
}

#[test]
fn a_step_failing_with_attempts_left_in_a_failing_run_is_not_retried() {
    // b failed for good while a ran; a's failure would be retried in a
    // healthy run, but here it is final and the run fails with b's error.
    let def = definition(json!({
        "a": {"agent": "echo", "retry": {"max_attempts": 3, "backoff_ms": 50}},
        "b": {"agent": "echo"}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            failed("b", 1, "boom", false, 20),
            failed_note(1, "b", 1, "boom", false, 20),
        ])
        .when(fail("a", "s0.1", "flaky", 30))
        .then_expect_events(vec![
            failed("a", 1, "flaky", false, 30),
            failed_note(2, "a", 1, "flaky", false, 30),
            run_failed("b", "boom", 30),
            run_failed_note(3, "b", "boom", 30),
        ]);
}

#[test]
fn a_terminal_failure_while_a_sibling_waits_for_its_retry_fails_the_run() {
    // Nothing runs any more: the sibling's pending retry is abandoned.
    let def = definition(json!({
        "a": {"agent": "echo", "retry": {"max_attempts": 3, "backoff_ms": 50}},
        "b": {"agent": "echo"}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            failed("a", 1, "flaky", true, 20),
            failed_note(1, "a", 1, "flaky", true, 20),
            retry_scheduled("a", 2, 50, 20),
        ])
        .when(fail("b", "s0.2", "boom", 30))
        .then_expect_events(vec![
            failed("b", 1, "boom", false, 30),
            failed_note(2, "b", 1, "boom", false, 30),
            run_failed("b", "boom", 30),
            run_failed_note(3, "b", "boom", 30),
        ]);
}

#[test]
fn failing_a_step_with_a_stale_lease_is_refused() {
    Given::with(())
        .given(retrying_started())
        .when(fail("a", "other", "flaky", 20))
        .then_expect_error(RunError::StaleLease(sid("a")));
}

#[test]
fn failing_a_step_that_is_not_running_is_refused() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(fail("a", "s0.1", "flaky", 30))
        .then_expect_error(RunError::StepNotRunning(sid("a")));
}

#[test]
fn failing_a_step_that_is_not_part_of_the_run_is_refused() {
    Given::with(())
        .given(retrying_started())
        .when(fail("ghost", "s0.1", "boom", 20))
        .then_expect_error(RunError::UnknownStep(sid("ghost")));
}

#[test]
fn failing_a_step_of_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn failing_a_step_of_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(fail("c", "s1.2", "late", 50))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn failing_a_step_of_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(fail("d", "s3.1", "late", 60))
        .then_expect_error(RunError::Finished("completed"));
}

// ------------------------------------------------------------- DispatchDue --

#[test]
fn a_retry_is_dispatched_as_the_next_attempt_once_due() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(dispatch_due(70, "s2"))
        .then_expect_events(vec![dispatched("a", 2, "s2.1", &[], 70)]);
}

#[test]
fn a_retry_past_its_due_time_is_dispatched() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(dispatch_due(500, "s2"))
        .then_expect_events(vec![dispatched("a", 2, "s2.1", &[], 500)]);
}

#[test]
fn a_retried_dependant_reads_the_latest_artifacts_of_its_dependencies() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"], "retry": {"max_attempts": 2, "backoff_ms": 5}}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            completed("a", 1, (1, "A"), &["b"], 20),
            dispatched("b", 1, "s1.1", &[("a.out", 1)], 20),
            failed("b", 1, "flaky", true, 30),
            failed_note(1, "b", 1, "flaky", true, 30),
            retry_scheduled("b", 2, 5, 30),
        ])
        .when(dispatch_due(35, "s3"))
        .then_expect_events(vec![dispatched("b", 2, "s3.1", &[("a.out", 1)], 35)]);
}

#[test]
fn nothing_is_dispatched_before_a_retry_is_due() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(dispatch_due(69, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn nothing_is_dispatched_when_no_step_is_ready() {
    Given::with(())
        .given(diamond_a_done())
        .when(dispatch_due(25, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn dispatching_due_steps_of_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(dispatch_due(60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn dispatching_due_steps_of_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(dispatch_due(50, "s5"))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn dispatching_due_steps_of_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(dispatch_due(10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// ----------------------------------------------------------------- Recover --

#[test]
fn recovering_redispatches_running_steps_with_the_same_attempt_and_a_new_lease() {
    Given::with(())
        .given(diamond_a_done())
        .when(recover(25, "s2"))
        .then_expect_events(vec![
            RunEvent::StepDispatched {
                step: sid("b"),
                attempt: 1,
                lease: lease("s2.1"),
                reads: reads(&[("a.out", 1)]),
                recovered: true,
                prompt_override: None,
                instructions: vec![],
                at: at(25),
            },
            redispatched("c", 1, "s2.2", &[("a.out", 1)], 25),
        ]);
}

#[test]
fn recovering_keeps_the_attempt_number_of_a_retried_step() {
    let mut history = retrying_first_attempt_failed();
    history.push(dispatched("a", 2, "s2.1", &[], 70));
    Given::with(())
        .given(history)
        .when(recover(75, "s3"))
        .then_expect_events(vec![redispatched("a", 2, "s3.1", &[], 75)]);
}

#[test]
fn recovering_dispatches_retries_that_fell_due_after_the_running_steps() {
    let def = definition(json!({
        "a": {"agent": "echo", "retry": {"max_attempts": 3, "backoff_ms": 50}},
        "b": {"agent": "echo"}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            failed("a", 1, "flaky", true, 20),
            failed_note(1, "a", 1, "flaky", true, 20),
            retry_scheduled("a", 2, 50, 20),
        ])
        .when(recover(100, "s2"))
        .then_expect_events(vec![
            redispatched("b", 1, "s2.1", &[], 100),
            dispatched("a", 2, "s2.2", &[], 100),
        ]);
}

#[test]
fn recovering_leaves_retries_that_are_not_due_yet() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(recover(30, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn recovering_a_failing_run_redispatches_the_siblings_it_waits_for() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(recover(35, "s3"))
        .then_expect_events(vec![redispatched("c", 1, "s3.1", &[("a.out", 1)], 35)]);
}

#[test]
fn a_lease_replaced_by_recovery_is_stale() {
    let mut history = diamond_started();
    history.push(redispatched("a", 1, "s1.1", &[], 15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_error(RunError::StaleLease(sid("a")));
}

#[test]
fn the_lease_of_a_recovered_dispatch_completes_the_step() {
    let mut history = diamond_started();
    history.push(redispatched("a", 1, "s1.1", &[], 15));
    Given::with(())
        .given(history)
        .when(complete("a", "s1.1", "A", 20, "s2"))
        .then_expect_events(vec![
            completed("a", 1, (1, "A"), &["b", "c"], 20),
            dispatched("b", 1, "s2.1", &[("a.out", 1)], 20),
            dispatched("c", 1, "s2.2", &[("a.out", 1)], 20),
        ]);
}

#[test]
fn recovering_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(recover(60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn recovering_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(recover(50, "s5"))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn recovering_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(recover(10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// ------------------------------------------------------------------ replay --

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

#[test]
fn replaying_a_completed_diamond_rebuilds_the_state_decide_worked_on() {
    let (live, log) = drive(vec![
        start(diamond(), 10, "s0"),
        complete("a", "s0.1", "A", 20, "s1"),
        complete("b", "s1.1", "B", 30, "s2"),
        complete("c", "s1.2", "C", 40, "s3"),
        complete("d", "s3.1", "D", 50, "s4"),
    ]);
    assert_eq!(log, diamond_completed());

    let replayed = replay(&log);
    assert_eq!(replayed, live);
    assert_eq!(replayed.status, RunStatus::Completed);
    assert_eq!(replayed.id, Some(RunId::parse("r1").unwrap()));
    assert_eq!(replayed.created_at, at(10));
    assert_eq!(replayed.updated_at, at(50));
    assert_eq!(replayed.failure, None);
    assert_eq!(replayed.steps.len(), 4);
    for (step, state) in &replayed.steps {
        assert_eq!(state.status, StepStatus::Completed, "{step}");
        assert_eq!(state.attempt, 1, "{step}");
        assert_eq!(state.lease, None, "{step}");
    }
    assert_eq!(replayed.artifacts.len(), 4);
    for (name, state) in &replayed.artifacts {
        assert_eq!(state.latest, 1, "{name}");
        assert_eq!(state.versions.len(), 1, "{name}");
    }
    assert_eq!(
        replayed.outputs_of(&sid("d")),
        [("out".to_string(), inline("D"))].into_iter().collect()
    );
}

#[test]
fn replaying_a_run_with_a_retry_and_a_failure_rebuilds_the_state_decide_worked_on() {
    let (live, log) = drive(vec![
        start(retrying(), 10, "s0"),
        fail("a", "s0.1", "flaky", 20),
        dispatch_due(70, "s2"),
        recover(75, "s3"),
        complete("a", "s3.1", "A", 80, "s4"),
        fail("b", "s4.1", "boom", 90),
    ]);
    let replayed = replay(&log);
    assert_eq!(replayed, live);
    assert_eq!(replayed.status, RunStatus::Failed);
    assert_eq!(replayed.failure, Some((sid("b"), "boom".to_string())));

    let a = &replayed.steps[&sid("a")];
    assert_eq!(
        (a.status, a.attempt, a.retry_at),
        (StepStatus::Completed, 2, None)
    );
    let b = &replayed.steps[&sid("b")];
    assert_eq!((b.status, b.attempt), (StepStatus::Failed, 1));
    assert_eq!(b.error.as_deref(), Some("boom"));

    let out = &replayed.artifacts[&artifact("a.out")];
    assert_eq!(out.latest, 1);
    assert_eq!(out.versions[0].attempt, 2);
    assert_eq!(replayed.pending_retries().count(), 0);
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

// ------------------------------------------------------------------- Pause --

#[test]
fn pausing_a_run_with_steps_running_only_requests_the_pause() {
    Given::with(())
        .given(diamond_a_done())
        .when(pause(25))
        .then_expect_events(vec![pause_requested(25)]);
}

#[test]
fn pausing_a_run_with_no_step_running_pauses_it_at_once() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(pause(30))
        .then_expect_events(vec![
            pause_requested(30),
            run_paused(30),
            paused_note(2, 30),
        ]);
}

#[test]
fn completing_a_step_while_pausing_makes_its_dependants_ready_but_dispatches_none() {
    let mut history = side_branch_started();
    history.push(pause_requested(15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_events(vec![completed("a", 1, (1, "A"), &["x"], 20)]);
}

#[test]
fn completing_the_last_running_step_while_pausing_pauses_the_run_without_dispatching() {
    let mut history = diamond_started();
    history.push(pause_requested(15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_events(vec![
            completed("a", 1, (1, "A"), &["b", "c"], 20),
            run_paused(20),
            paused_note(1, 20),
        ]);
}

#[test]
fn completing_one_of_two_running_steps_while_pausing_does_not_pause_the_run_yet() {
    Given::with(())
        .given(diamond_pausing())
        .when(complete("b", "s1.1", "B", 30, "s3"))
        .then_expect_events(vec![completed("b", 1, (1, "B"), &[], 30)]);
}

#[test]
fn completing_the_last_of_several_running_steps_while_pausing_pauses_the_run() {
    let mut history = diamond_pausing();
    history.push(completed("b", 1, (1, "B"), &[], 30));
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &["d"], 40),
            run_paused(40),
            paused_note(1, 40),
        ]);
}

#[test]
fn completing_the_last_step_while_pausing_completes_the_run_rather_than_pausing_it() {
    let mut history = diamond_c_done();
    history.push(pause_requested(45));
    Given::with(())
        .given(history)
        .when(complete("d", "s3.1", "D", 50, "s5"))
        .then_expect_events(vec![
            completed("d", 1, (1, "D"), &[], 50),
            RunEvent::RunCompleted { at: at(50) },
            completed_note(1, 50),
        ]);
}

#[test]
fn a_failure_with_attempts_left_while_pausing_schedules_the_retry_and_pauses_the_run() {
    let mut history = retrying_started();
    history.push(pause_requested(15));
    Given::with(())
        .given(history)
        .when(fail("a", "s0.1", "flaky", 20))
        .then_expect_events(vec![
            failed("a", 1, "flaky", true, 20),
            failed_note(1, "a", 1, "flaky", true, 20),
            retry_scheduled("a", 2, 50, 20),
            run_paused(20),
            paused_note(2, 20),
        ]);
}

#[test]
fn a_terminal_failure_while_pausing_fails_the_run_rather_than_pausing_it() {
    let mut history = diamond_started();
    history.push(pause_requested(15));
    Given::with(())
        .given(history)
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_events(vec![
            failed("a", 1, "boom", false, 20),
            failed_note(1, "a", 1, "boom", false, 20),
            run_failed("a", "boom", 20),
            run_failed_note(2, "a", "boom", 20),
        ]);
}

#[test]
fn completing_the_last_running_sibling_of_a_failed_step_while_pausing_fails_the_run() {
    let mut history = diamond_pausing();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
            run_failed_note(2, "b", "boom", 40),
        ]);
}

#[test]
fn pausing_a_failing_run_while_a_sibling_runs_only_requests_the_pause() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(pause(35))
        .then_expect_events(vec![pause_requested(35)]);
}

#[test]
fn pausing_a_resumed_run_with_a_step_running_only_requests_the_pause() {
    let mut history = diamond_paused();
    history.extend([
        run_resumed(50),
        resumed_note(2, 50),
        dispatched("d", 1, "s5.1", &[("b.out", 1), ("c.out", 1)], 50),
    ]);
    Given::with(())
        .given(history)
        .when(pause(55))
        .then_expect_events(vec![pause_requested(55)]);
}

#[test]
fn pausing_a_run_that_is_pausing_is_refused() {
    Given::with(())
        .given(diamond_pausing())
        .when(pause(26))
        .then_expect_error(RunError::AlreadyPaused);
}

#[test]
fn pausing_a_paused_run_is_refused() {
    Given::with(())
        .given(diamond_paused())
        .when(pause(45))
        .then_expect_error(RunError::AlreadyPaused);
}

#[test]
fn pausing_a_run_that_is_being_cancelled_is_refused() {
    Given::with(())
        .given(diamond_cancelling())
        .when(pause(26))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn pausing_a_run_that_is_both_pausing_and_being_cancelled_is_refused_as_cancelling() {
    let mut history = diamond_pausing();
    history.push(cancel_requested(None, 26));
    Given::with(())
        .given(history)
        .when(pause(27))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn pausing_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(pause(10))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn pausing_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(pause(60))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn pausing_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(pause(50))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn pausing_a_cancelled_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(pause(50))
        .then_expect_error(RunError::Finished("cancelled"));
}

// ------------------------------------------- DispatchDue/Recover, paused --

#[test]
fn nothing_is_dispatched_while_paused_even_a_ready_step() {
    Given::with(())
        .given(diamond_paused())
        .when(dispatch_due(45, "s5"))
        .then_expect_events(vec![]);
}

#[test]
fn a_due_retry_is_not_dispatched_while_paused() {
    Given::with(())
        .given(retrying_paused())
        .when(dispatch_due(70, "s3"))
        .then_expect_events(vec![]);
}

#[test]
fn a_due_retry_is_not_dispatched_while_pausing() {
    let mut history = retrying_and_plain_a_failed_once();
    history.push(pause_requested(30));
    Given::with(())
        .given(history)
        .when(dispatch_due(70, "s3"))
        .then_expect_events(vec![]);
}

#[test]
fn recovering_a_paused_run_dispatches_nothing() {
    Given::with(())
        .given(diamond_paused())
        .when(recover(45, "s5"))
        .then_expect_events(vec![]);
}

#[test]
fn recovering_a_pausing_run_redispatches_its_running_steps_but_not_its_ready_ones() {
    let mut history = side_branch_started();
    history.extend([pause_requested(15), completed("a", 1, (1, "A"), &["x"], 20)]);
    Given::with(())
        .given(history)
        .when(recover(25, "s3"))
        .then_expect_events(vec![redispatched("b", 1, "s3.1", &[], 25)]);
}

// ------------------------------------------------------------------ Resume --

#[test]
fn resuming_a_paused_run_dispatches_every_ready_step_with_leases_from_its_seed() {
    Given::with(())
        .given(diamond_paused_after_root())
        .when(resume(30, "s3"))
        .then_expect_events(vec![
            run_resumed(30),
            resumed_note(2, 30),
            dispatched("b", 1, "s3.1", &[("a.out", 1)], 30),
            dispatched("c", 1, "s3.2", &[("a.out", 1)], 30),
        ]);
}

#[test]
fn resuming_a_paused_fan_in_dispatches_the_step_that_became_ready_during_the_pause() {
    Given::with(())
        .given(diamond_paused())
        .when(resume(50, "s5"))
        .then_expect_events(vec![
            run_resumed(50),
            resumed_note(2, 50),
            dispatched("d", 1, "s5.1", &[("b.out", 1), ("c.out", 1)], 50),
        ]);
}

#[test]
fn resuming_while_still_pausing_withdraws_the_pause_without_redispatching_running_steps() {
    Given::with(())
        .given(diamond_pausing())
        .when(resume(28, "s3"))
        .then_expect_events(vec![run_resumed(28)]);
}

#[test]
fn resuming_while_still_pausing_dispatches_the_steps_that_became_ready_meanwhile() {
    let mut history = side_branch_started();
    history.extend([pause_requested(15), completed("a", 1, (1, "A"), &["x"], 20)]);
    Given::with(())
        .given(history)
        .when(resume(25, "s3"))
        .then_expect_events(vec![
            run_resumed(25),
            dispatched("x", 1, "s3.1", &[("a.out", 1)], 25),
        ]);
}

#[test]
fn resuming_a_paused_run_before_its_retry_is_due_dispatches_nothing_yet() {
    Given::with(())
        .given(retrying_paused())
        .when(resume(40, "s4"))
        .then_expect_events(vec![run_resumed(40), resumed_note(3, 40)]);
}

#[test]
fn a_retry_of_a_resumed_run_is_dispatched_once_due() {
    let mut history = retrying_paused();
    history.extend([run_resumed(40), resumed_note(3, 40)]);
    Given::with(())
        .given(history)
        .when(dispatch_due(70, "s5"))
        .then_expect_events(vec![dispatched("a", 2, "s5.1", &[], 70)]);
}

#[test]
fn resuming_a_paused_run_after_its_retry_fell_due_dispatches_the_next_attempt() {
    Given::with(())
        .given(retrying_paused())
        .when(resume(80, "s4"))
        .then_expect_events(vec![
            run_resumed(80),
            resumed_note(3, 80),
            dispatched("a", 2, "s4.1", &[], 80),
        ]);
}

#[test]
fn resuming_a_running_run_is_refused() {
    Given::with(())
        .given(diamond_a_done())
        .when(resume(25, "s2"))
        .then_expect_error(RunError::NotPaused);
}

#[test]
fn resuming_a_resumed_run_is_refused() {
    let mut history = diamond_pausing();
    history.push(run_resumed(28));
    Given::with(())
        .given(history)
        .when(resume(29, "s4"))
        .then_expect_error(RunError::NotPaused);
}

#[test]
fn resuming_a_run_that_is_being_cancelled_is_refused() {
    Given::with(())
        .given(diamond_cancelling())
        .when(resume(26, "s3"))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn resuming_a_run_that_is_both_pausing_and_being_cancelled_is_refused_as_cancelling() {
    let mut history = diamond_pausing();
    history.push(cancel_requested(None, 26));
    Given::with(())
        .given(history)
        .when(resume(27, "s4"))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn resuming_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(resume(10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn resuming_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(resume(60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn resuming_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(resume(50, "s5"))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn resuming_a_cancelled_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(resume(50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
}

#[test]
fn resuming_a_run_cancelled_while_paused_is_refused() {
    let mut history = diamond_paused();
    history.extend([
        cancel_requested(None, 45),
        run_cancelled(None, 45),
        cancelled_note(2, None, 45),
    ]);
    Given::with(())
        .given(history)
        .when(resume(50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
}

// ------------------------------------------------------------------ Cancel --

#[test]
fn cancelling_a_run_with_steps_running_only_requests_the_cancel() {
    Given::with(())
        .given(diamond_a_done())
        .when(cancel(Some("enough"), 25))
        .then_expect_events(vec![cancel_requested(Some("enough"), 25)]);
}

#[test]
fn cancelling_a_run_with_no_step_running_cancels_it_at_once() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(cancel(None, 30))
        .then_expect_events(vec![
            cancel_requested(None, 30),
            run_cancelled(None, 30),
            cancelled_note(2, None, 30),
        ]);
}

#[test]
fn cancelling_a_paused_run_cancels_it_at_once() {
    Given::with(())
        .given(diamond_paused())
        .when(cancel(Some("enough"), 45))
        .then_expect_events(vec![
            cancel_requested(Some("enough"), 45),
            run_cancelled(Some("enough"), 45),
            cancelled_note(2, Some("enough"), 45),
        ]);
}

#[test]
fn cancelling_a_pausing_run_with_steps_running_only_requests_the_cancel() {
    Given::with(())
        .given(diamond_pausing())
        .when(cancel(Some("enough"), 26))
        .then_expect_events(vec![cancel_requested(Some("enough"), 26)]);
}

#[test]
fn completing_the_last_running_step_while_cancelling_makes_nothing_ready_and_cancels_the_run() {
    let mut history = diamond_started();
    history.push(cancel_requested(Some("enough"), 15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_events(vec![
            completed("a", 1, (1, "A"), &[], 20),
            run_cancelled(Some("enough"), 20),
            cancelled_note(1, Some("enough"), 20),
        ]);
}

#[test]
fn completing_a_step_while_cancelling_with_a_sibling_running_makes_nothing_ready() {
    let mut history = side_branch_started();
    history.push(cancel_requested(None, 15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_events(vec![completed("a", 1, (1, "A"), &[], 20)]);
}

#[test]
fn completing_the_last_of_several_running_steps_while_cancelling_cancels_the_run() {
    let mut history = diamond_cancelling();
    history.push(completed("b", 1, (1, "B"), &[], 30));
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_cancelled(Some("enough"), 40),
            cancelled_note(1, Some("enough"), 40),
        ]);
}

#[test]
fn completing_the_last_step_while_cancelling_cancels_the_run_rather_than_completing_it() {
    let mut history = diamond_c_done();
    history.push(cancel_requested(Some("enough"), 45));
    Given::with(())
        .given(history)
        .when(complete("d", "s3.1", "D", 50, "s5"))
        .then_expect_events(vec![
            completed("d", 1, (1, "D"), &[], 50),
            run_cancelled(Some("enough"), 50),
            cancelled_note(1, Some("enough"), 50),
        ]);
}

#[test]
fn completing_the_last_running_step_while_pausing_and_cancelling_cancels_the_run() {
    let mut history = diamond_pausing();
    history.extend([
        cancel_requested(Some("enough"), 26),
        completed("b", 1, (1, "B"), &[], 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s5"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_cancelled(Some("enough"), 40),
            cancelled_note(1, Some("enough"), 40),
        ]);
}

#[test]
fn a_failure_with_attempts_left_while_cancelling_is_not_retried_and_the_run_ends_cancelled() {
    // The cancel makes the failure final and keeps it from failing the run:
    // the user asked for a cancel, so the run ends cancelled.
    let mut history = retrying_started();
    history.push(cancel_requested(Some("enough"), 15));
    Given::with(())
        .given(history)
        .when(fail("a", "s0.1", "flaky", 20))
        .then_expect_events(vec![
            abandoned("a", 1, "flaky", 20),
            failed_note(1, "a", 1, "flaky", false, 20),
            run_cancelled(Some("enough"), 20),
            cancelled_note(2, Some("enough"), 20),
        ]);
}

#[test]
fn a_failure_with_attempts_left_while_cancelling_with_a_sibling_running_is_not_retried() {
    let mut history = vec![
        run_started(retrying_and_plain(), &["a", "b"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        dispatched("b", 1, "s0.2", &[], 10),
    ];
    history.push(cancel_requested(None, 15));
    Given::with(())
        .given(history)
        .when(fail("a", "s0.1", "flaky", 20))
        .then_expect_events(vec![
            abandoned("a", 1, "flaky", 20),
            failed_note(1, "a", 1, "flaky", false, 20),
        ]);
}

#[test]
fn a_terminal_failure_while_cancelling_ends_cancelled_once_nothing_runs() {
    let mut history = diamond_cancelling();
    history.extend([
        abandoned("b", 1, "boom", 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_cancelled(Some("enough"), 40),
            cancelled_note(2, Some("enough"), 40),
        ]);
}

#[test]
fn a_failure_without_retries_while_cancelling_does_not_fail_the_run() {
    let history = diamond_cancelling();
    Given::with(())
        .given(history)
        .when(fail("b", "s1.1", "boom", 30))
        .then_expect_events(vec![
            abandoned("b", 1, "boom", 30),
            failed_note(1, "b", 1, "boom", false, 30),
        ]);
}

#[test]
fn a_failure_of_the_last_running_step_while_cancelling_ends_the_run_cancelled() {
    let mut history = diamond_started();
    history.push(cancel_requested(Some("enough"), 15));
    Given::with(())
        .given(history)
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_events(vec![
            abandoned("a", 1, "boom", 20),
            failed_note(1, "a", 1, "boom", false, 20),
            run_cancelled(Some("enough"), 20),
            cancelled_note(2, Some("enough"), 20),
        ]);
}

#[test]
fn cancelling_a_failing_run_still_fails_it_once_nothing_runs() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
        cancel_requested(Some("enough"), 35),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
            run_failed_note(2, "b", "boom", 40),
        ]);
}

#[test]
fn cancelling_a_failing_run_while_a_sibling_runs_only_requests_the_cancel() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(cancel(None, 35))
        .then_expect_events(vec![cancel_requested(None, 35)]);
}

#[test]
fn a_due_retry_is_not_dispatched_while_cancelling() {
    let mut history = retrying_and_plain_a_failed_once();
    history.push(cancel_requested(None, 30));
    Given::with(())
        .given(history)
        .when(dispatch_due(70, "s3"))
        .then_expect_events(vec![]);
}

#[test]
fn completing_the_last_running_step_while_cancelling_abandons_a_pending_retry() {
    let mut history = retrying_and_plain_a_failed_once();
    history.push(cancel_requested(None, 30));
    Given::with(())
        .given(history)
        .when(complete("b", "s0.2", "B", 40, "s3"))
        .then_expect_events(vec![
            completed("b", 1, (1, "B"), &[], 40),
            run_cancelled(None, 40),
            cancelled_note(2, None, 40),
        ]);
}

#[test]
fn cancelling_a_run_twice_is_refused() {
    Given::with(())
        .given(diamond_cancelling())
        .when(cancel(Some("again"), 26))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn cancelling_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(cancel(None, 10))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn cancelling_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(cancel(None, 60))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn cancelling_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(cancel(None, 50))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn cancelling_a_cancelled_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(cancel(None, 50))
        .then_expect_error(RunError::Finished("cancelled"));
}

#[test]
fn completing_a_step_of_a_cancelled_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(complete("c", "s1.2", "C", 50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
}

#[test]
fn dispatching_due_steps_of_a_cancelled_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(dispatch_due(50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
}

// --------------------------------------------------- replay, run control --

#[test]
fn replaying_a_paused_resumed_and_cancelled_run_rebuilds_the_state_decide_worked_on() {
    let (live, log) = drive(vec![
        start(diamond(), 10, "s0"),
        complete("a", "s0.1", "A", 20, "s1"),
        pause(25),
        complete("b", "s1.1", "B", 30, "s3"),
        complete("c", "s1.2", "C", 40, "s4"),
        resume(50, "s5"),
        pause(55),
        cancel(Some("enough"), 60),
        complete("d", "s5.1", "D", 70, "s8"),
    ]);
    let mut expected = diamond_paused();
    expected.extend([
        run_resumed(50),
        resumed_note(2, 50),
        dispatched("d", 1, "s5.1", &[("b.out", 1), ("c.out", 1)], 50),
        pause_requested(55),
        cancel_requested(Some("enough"), 60),
        completed("d", 1, (1, "D"), &[], 70),
        run_cancelled(Some("enough"), 70),
        cancelled_note(3, Some("enough"), 70),
    ]);
    assert_eq!(log, expected);

    let paused = replay(&log[..diamond_paused().len()]);
    assert_eq!(paused.status, RunStatus::Paused);
    assert!(!paused.pause_requested);
    assert_eq!(paused.steps[&sid("d")].status, StepStatus::Ready);

    let replayed = replay(&log);
    assert_eq!(replayed, live);
    assert_eq!(replayed.status, RunStatus::Cancelled);
    assert!(replayed.status.is_finished());
    assert!(!replayed.pause_requested);
    assert_eq!(replayed.cancel_requested, Some(Some("enough".to_string())));
    assert_eq!(replayed.failure, None);
    assert_eq!(replayed.updated_at, at(70));
    for (step, state) in &replayed.steps {
        assert_eq!(state.status, StepStatus::Completed, "{step}");
        assert_eq!(state.lease, None, "{step}");
    }
}

// ------------------------------------------------------------------ retry --

#[test]
fn a_retry_starts_from_the_failed_runs_version_definition_and_input() {
    let def = definition(json!({"a": {"agent": "echo"}}));
    let mut run = Run::default();
    for event in [
        run_started(def.clone(), &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        failed("a", 1, "boom", false, 20),
        failed_note(1, "a", 1, "boom", false, 20),
        run_failed("a", "boom", 20),
        run_failed_note(2, "a", "boom", 20),
    ] {
        run.apply_event(event);
    }
    let source = run.retry_source().unwrap();
    assert_eq!(source.run_id.as_str(), "r1");
    assert_eq!(source.template_id.as_str(), "t1");
    assert_eq!(source.template_version, 1);
    assert_eq!(*source.definition, def);
    assert_eq!(source.input, input());
    Given::with(())
        .given_no_previous_events()
        .when(stamped(
            RunCommand::Start {
                run_id: RunId::parse("r2").unwrap(),
                template_id: source.template_id,
                template_version: source.template_version,
                definition: source.definition,
                input: source.input,
                retry_of: Some(source.run_id),
                redirected_from: None,
                auto_run: source.auto_run,
            },
            30,
            "s",
        ))
        .then_expect_events(vec![
            RunEvent::RunStarted {
                run_id: RunId::parse("r2").unwrap(),
                template_id: TemplateId::parse("t1").unwrap(),
                template_version: 1,
                definition: def,
                input: input(),
                ready: steps(&["a"]),
                retry_of: Some(RunId::parse("r1").unwrap()),
                redirected_from: None,
                auto_run: true,
                at: at(30),
            },
            dispatched("a", 1, "s.1", &[], 30),
        ]);
}

#[test]
fn only_a_failed_or_cancelled_run_can_be_retried() {
    let def = definition(json!({"a": {"agent": "echo"}}));
    assert_eq!(Run::default().retry_source(), Err(RunError::NotStarted));
    let mut running = Run::default();
    running.apply_event(run_started(def.clone(), &["a"], 10));
    assert_eq!(
        running.retry_source(),
        Err(RunError::NotRetryable("running"))
    );
    let mut completed = running.clone();
    completed.apply_event(dispatched("a", 1, "s0.1", &[], 10));
    completed.apply_event(RunEvent::RunCompleted { at: at(20) });
    assert_eq!(
        completed.retry_source(),
        Err(RunError::NotRetryable("completed"))
    );
    let mut cancelled = running;
    cancelled.apply_event(cancel_requested(None, 15));
    cancelled.apply_event(run_cancelled(None, 15));
    assert!(cancelled.retry_source().is_ok());
}

// ================================================================ steering --
//
// The commands of issue #3 (thread messages, review, step retry, trigger,
// manual mode, rollback, redirect) and the branching they bring. Same
// conventions as above; every system message a state change brings is
// spelled out with its number in the thread.

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
        RunCommand::Start {
            run_id: rid(run_id),
            template_id: TemplateId::parse("t1").unwrap(),
            template_version: 1,
            definition: Arc::new(definition),
            input: input(),
            retry_of: None,
            redirected_from: redirected_from.map(|(from, text)| (rid(from), text.to_string())),
            auto_run,
        },
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
        step: sid(step),
        attempt,
        lease: lease(token),
        reads: reads(read),
        recovered: false,
        prompt_override: prompt_override.map(Into::into),
        instructions: instructions.to_vec(),
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

// ------------------------------------------------------------- PostMessage --

#[test]
fn a_comment_is_recorded_processed_with_its_metadata() {
    Given::with(())
        .given(diamond_started())
        .when(post_message(
            NewMessage {
                action: Action::Comment,
                content: "looks good".into(),
                metadata: json!({"source": "cli"}),
                idempotency_key: None,
            },
            None,
            15,
            "s1",
        ))
        .then_expect_events(vec![RunEvent::MessagePosted {
            message: 1,
            author: Author::User,
            action: Action::Comment,
            content: "looks good".into(),
            metadata: json!({"source": "cli"}),
            step: None,
            idempotency_key: None,
            status: MessageStatus::Processed,
            reason: None,
            at: at(15),
        }]);
}

#[test]
fn messages_are_numbered_after_the_last_one_in_the_thread() {
    // The completed diamond's thread holds "Run completed." as message 1.
    Given::with(())
        .given(diamond_completed())
        .when(post(Action::Comment, "thanks", 60, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Comment,
            "thanks",
            MessageStatus::Processed,
            None,
            60,
        )]);
}

#[test]
fn an_instruction_to_a_running_run_is_recorded_pending() {
    Given::with(())
        .given(diamond_started())
        .when(post(Action::Instruction, "be brief", 15, "s1"))
        .then_expect_events(vec![posted(
            1,
            Action::Instruction,
            "be brief",
            MessageStatus::Pending,
            None,
            15,
        )]);
}

#[test]
fn an_instruction_to_a_paused_run_is_recorded_pending() {
    Given::with(())
        .given(diamond_paused())
        .when(post(Action::Instruction, "be brief", 45, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Instruction,
            "be brief",
            MessageStatus::Pending,
            None,
            45,
        )]);
}

#[test]
fn an_instruction_to_a_completed_run_is_ignored() {
    Given::with(())
        .given(diamond_completed())
        .when(post(Action::Instruction, "be brief", 60, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Instruction,
            "be brief",
            MessageStatus::Ignored,
            Some(RunError::Finished("completed").to_string()),
            60,
        )]);
}

#[test]
fn an_instruction_to_a_cancelled_run_is_ignored() {
    Given::with(())
        .given(diamond_cancelled())
        .when(post(Action::Instruction, "be brief", 50, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Instruction,
            "be brief",
            MessageStatus::Ignored,
            Some(RunError::Finished("cancelled").to_string()),
            50,
        )]);
}

#[test]
fn a_pause_message_with_steps_running_is_processed_and_requests_the_pause() {
    Given::with(())
        .given(diamond_a_done())
        .when(post(Action::Pause, "", 25, "s2"))
        .then_expect_events(vec![
            posted(1, Action::Pause, "", MessageStatus::Processed, None, 25),
            pause_requested(25),
        ]);
}

#[test]
fn a_pause_message_with_nothing_running_pauses_the_run_announcing_it_after_the_message() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(post(Action::Pause, "lunch", 30, "s2"))
        .then_expect_events(vec![
            posted(
                2,
                Action::Pause,
                "lunch",
                MessageStatus::Processed,
                None,
                30,
            ),
            pause_requested(30),
            run_paused(30),
            paused_note(3, 30),
        ]);
}

#[test]
fn a_pause_message_to_a_paused_run_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_paused())
        .when(post(Action::Pause, "", 45, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Pause,
            "",
            MessageStatus::Ignored,
            Some(RunError::AlreadyPaused.to_string()),
            45,
        )]);
}

#[test]
fn a_pause_message_to_a_completed_run_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_completed())
        .when(post(Action::Pause, "", 60, "s5"))
        .then_expect_events(vec![posted(
            2,
            Action::Pause,
            "",
            MessageStatus::Ignored,
            Some(RunError::Finished("completed").to_string()),
            60,
        )]);
}

#[test]
fn a_resume_message_to_a_paused_run_is_processed_and_dispatches_the_ready_steps() {
    Given::with(())
        .given(diamond_paused())
        .when(post(Action::Resume, "", 50, "s5"))
        .then_expect_events(vec![
            posted(2, Action::Resume, "", MessageStatus::Processed, None, 50),
            run_resumed(50),
            resumed_note(3, 50),
            dispatched("d", 1, "s5.1", &[("b.out", 1), ("c.out", 1)], 50),
        ]);
}

#[test]
fn a_resume_message_to_a_running_run_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_a_done())
        .when(post(Action::Resume, "", 25, "s2"))
        .then_expect_events(vec![posted(
            1,
            Action::Resume,
            "",
            MessageStatus::Ignored,
            Some(RunError::NotPaused.to_string()),
            25,
        )]);
}

#[test]
fn a_cancel_message_is_processed_with_its_trimmed_content_as_the_reason() {
    Given::with(())
        .given(diamond_a_done())
        .when(post(Action::Cancel, "  enough  ", 25, "s2"))
        .then_expect_events(vec![
            posted(
                1,
                Action::Cancel,
                "  enough  ",
                MessageStatus::Processed,
                None,
                25,
            ),
            cancel_requested(Some("enough"), 25),
        ]);
}

#[test]
fn a_blank_cancel_message_with_nothing_running_cancels_the_run_without_a_reason() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(post(Action::Cancel, " ", 30, "s2"))
        .then_expect_events(vec![
            posted(2, Action::Cancel, " ", MessageStatus::Processed, None, 30),
            cancel_requested(None, 30),
            run_cancelled(None, 30),
            cancelled_note(3, None, 30),
        ]);
}

#[test]
fn a_cancel_message_to_a_run_being_cancelled_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_cancelling())
        .when(post(Action::Cancel, "again", 26, "s3"))
        .then_expect_events(vec![posted(
            1,
            Action::Cancel,
            "again",
            MessageStatus::Ignored,
            Some(RunError::Cancelling.to_string()),
            26,
        )]);
}

#[test]
fn a_cancel_message_to_a_failed_run_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_failed())
        .when(post(Action::Cancel, "", 50, "s5"))
        .then_expect_events(vec![posted(
            3,
            Action::Cancel,
            "",
            MessageStatus::Ignored,
            Some(RunError::Finished("failed").to_string()),
            50,
        )]);
}

#[test]
fn a_redirect_message_is_processed_and_redirects_the_run() {
    Given::with(())
        .given(diamond_a_done())
        .when(post_message(
            message(Action::Redirect, "start over", None),
            Some("r2"),
            25,
            "s2",
        ))
        .then_expect_events(vec![
            posted(
                1,
                Action::Redirect,
                "start over",
                MessageStatus::Processed,
                None,
                25,
            ),
            redirected("r2", "start over", 25),
            cancel_requested(Some("redirected to run r2"), 25),
        ]);
}

#[test]
fn a_redirect_message_to_a_paused_run_cancels_it_at_once_announcing_the_redirect() {
    Given::with(())
        .given(diamond_paused())
        .when(post_message(
            message(Action::Redirect, "start over", None),
            Some("r2"),
            45,
            "s5",
        ))
        .then_expect_events(vec![
            posted(
                2,
                Action::Redirect,
                "start over",
                MessageStatus::Processed,
                None,
                45,
            ),
            redirected("r2", "start over", 45),
            cancel_requested(Some("redirected to run r2"), 45),
            run_cancelled(Some("redirected to run r2"), 45),
            note(3, "Run redirected to run r2.", 45),
        ]);
}

#[test]
fn a_redirect_message_to_a_completed_run_is_ignored_with_the_refusal() {
    Given::with(())
        .given(diamond_completed())
        .when(post_message(
            message(Action::Redirect, "start over", None),
            Some("r2"),
            60,
            "s5",
        ))
        .then_expect_events(vec![posted(
            2,
            Action::Redirect,
            "start over",
            MessageStatus::Ignored,
            Some(RunError::Finished("completed").to_string()),
            60,
        )]);
}

#[test]
fn a_redirect_message_without_a_run_id_set_aside_is_ignored() {
    let events = decide(
        &state_after(diamond_a_done()),
        post(Action::Redirect, "start over", 25, "s2"),
    )
    .unwrap();
    let [RunEvent::MessagePosted {
        message: 1,
        author: Author::User,
        action: Action::Redirect,
        status: MessageStatus::Ignored,
        reason: Some(_),
        ..
    }] = events.as_slice()
    else {
        panic!("expected one ignored redirect message, got {events:?}")
    };
}

#[test]
fn a_message_with_an_idempotency_key_records_the_key() {
    let hello = message(Action::Comment, "hello", Some("k1"));
    Given::with(())
        .given(diamond_started())
        .when(post_message(hello.clone(), None, 15, "s1"))
        .then_expect_events(vec![posted_keyed(
            1,
            hello,
            MessageStatus::Processed,
            None,
            15,
        )]);
}

#[test]
fn the_same_message_posted_again_with_its_key_records_nothing() {
    let hello = message(Action::Instruction, "hello", Some("k1"));
    let mut history = diamond_started();
    history.push(posted_keyed(
        1,
        hello.clone(),
        MessageStatus::Pending,
        None,
        15,
    ));
    Given::with(())
        .given(history)
        .when(post_message(hello, None, 16, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn a_pause_message_repeated_with_its_key_records_nothing_rather_than_being_ignored() {
    let pause_it = message(Action::Pause, "", Some("k1"));
    let mut history = diamond_a_done();
    history.extend([
        posted_keyed(1, pause_it.clone(), MessageStatus::Processed, None, 25),
        pause_requested(25),
    ]);
    Given::with(())
        .given(history)
        .when(post_message(pause_it, None, 26, "s3"))
        .then_expect_events(vec![]);
}

#[test]
fn a_key_reused_for_a_different_content_is_refused() {
    let mut history = diamond_started();
    history.push(posted_keyed(
        1,
        message(Action::Comment, "hello", Some("k1")),
        MessageStatus::Processed,
        None,
        15,
    ));
    Given::with(())
        .given(history)
        .when(post_message(
            message(Action::Comment, "goodbye", Some("k1")),
            None,
            16,
            "s2",
        ))
        .then_expect_error(RunError::IdempotencyKeyReused("k1".into()));
}

#[test]
fn a_key_reused_for_a_different_action_or_metadata_is_refused() {
    let mut history = diamond_started();
    history.push(posted_keyed(
        1,
        message(Action::Comment, "hello", Some("k1")),
        MessageStatus::Processed,
        None,
        15,
    ));
    let run = state_after(history);
    let other_action = post_message(
        message(Action::Instruction, "hello", Some("k1")),
        None,
        16,
        "s2",
    );
    assert_eq!(
        decide(&run, other_action),
        Err(RunError::IdempotencyKeyReused("k1".into()))
    );
    let mut with_metadata = message(Action::Comment, "hello", Some("k1"));
    with_metadata.metadata = json!({"x": 1});
    assert_eq!(
        decide(&run, post_message(with_metadata, None, 16, "s2")),
        Err(RunError::IdempotencyKeyReused("k1".into()))
    );
}

#[test]
fn posting_to_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(post(Action::Comment, "hello", 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// ------------------------------------------------------------ AgentComment --

#[test]
fn the_agent_of_a_running_step_comments_as_the_agent_about_its_step() {
    Given::with(())
        .given(diamond_started())
        .when(agent_comment("a", "s0.1", "halfway there", 15))
        .then_expect_events(vec![RunEvent::MessagePosted {
            message: 1,
            author: Author::Agent,
            action: Action::Comment,
            content: "halfway there".into(),
            metadata: Value::Null,
            step: Some(sid("a")),
            idempotency_key: None,
            status: MessageStatus::Processed,
            reason: None,
            at: at(15),
        }]);
}

#[test]
fn a_comment_from_a_stale_lease_is_dropped() {
    Given::with(())
        .given(diamond_started())
        .when(agent_comment("a", "s9.9", "late", 15))
        .then_expect_events(vec![]);
}

#[test]
fn a_comment_about_a_step_that_is_not_running_is_dropped() {
    Given::with(())
        .given(diamond_started())
        .when(agent_comment("b", "s0.1", "hello", 15))
        .then_expect_events(vec![]);
}

#[test]
fn a_batch_of_comments_records_the_current_ones_in_order_and_drops_the_stale() {
    Given::with(())
        .given(diamond_started())
        .when(stamped(
            RunCommand::AgentComments {
                comments: vec![
                    (sid("a"), lease("s0.1"), note_at("one", 12)),
                    (sid("a"), lease("old"), note_at("stale", 13)),
                    (sid("a"), lease("s0.1"), note_at("two", 14)),
                ],
            },
            15,
            "",
        ))
        .then_expect_events(vec![
            step_note_by_agent(1, "a", "one", 12),
            step_note_by_agent(2, "a", "two", 14),
        ]);
}

#[test]
fn comments_sent_with_a_completion_are_recorded_before_it_in_the_same_commit() {
    let mut command = complete("a", "s0.1", "A", 20, "s1");
    if let RunCommand::CompleteStep { comments, .. } = &mut command.command {
        *comments = vec![note_at("started", 12), note_at("finished", 19)];
    }
    let events = decide(&state_after(diamond_started()), command).unwrap();
    assert_eq!(events[0], step_note_by_agent(1, "a", "started", 12));
    assert_eq!(events[1], step_note_by_agent(2, "a", "finished", 19));
    assert!(
        matches!(events[2], RunEvent::StepCompleted { .. }),
        "{events:?}"
    );
}

fn step_note_by_agent(number: u32, step: &str, text: &str, ms: i64) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::Agent,
        action: Action::Comment,
        content: text.into(),
        metadata: Value::Null,
        step: Some(sid(step)),
        idempotency_key: None,
        status: MessageStatus::Processed,
        reason: None,
        at: at(ms),
    }
}

#[test]
fn a_comment_to_a_finished_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(agent_comment("d", "s3.1", "late", 60))
        .then_expect_error(RunError::Finished("completed"));
}

// ----------------------------------------------------------- InterruptStep --

#[test]
fn an_interrupted_step_of_a_pausing_run_is_ready_again_and_not_dispatched() {
    Given::with(())
        .given(diamond_pausing())
        .when(interrupt("b", "s1.1", 26, "s3"))
        .then_expect_events(vec![interrupted("b", 1, 26)]);
    let mut history = diamond_pausing();
    history.push(interrupted("b", 1, 26));
    let b = &state_after(history).steps[&sid("b")];
    assert_eq!(
        (b.status, b.attempt, b.lease.clone()),
        (StepStatus::Ready, 1, None)
    );
}

#[test]
fn interrupting_the_last_running_step_of_a_pausing_run_pauses_it() {
    let mut history = diamond_pausing();
    history.push(interrupted("b", 1, 26));
    Given::with(())
        .given(history)
        .when(interrupt("c", "s1.2", 27, "s4"))
        .then_expect_events(vec![
            interrupted("c", 1, 27),
            run_paused(27),
            paused_note(1, 27),
        ]);
}

#[test]
fn resuming_after_an_interrupt_dispatches_the_step_as_a_new_attempt() {
    let mut history = diamond_pausing();
    history.extend([
        interrupted("b", 1, 26),
        interrupted("c", 1, 27),
        run_paused(27),
        paused_note(1, 27),
    ]);
    Given::with(())
        .given(history)
        .when(resume(30, "s5"))
        .then_expect_events(vec![
            run_resumed(30),
            resumed_note(2, 30),
            dispatched("b", 2, "s5.1", &[("a.out", 1)], 30),
            dispatched("c", 2, "s5.2", &[("a.out", 1)], 30),
        ]);
}

#[test]
fn interrupting_the_last_running_step_of_a_cancelling_run_cancels_it() {
    let mut history = diamond_started();
    history.push(cancel_requested(Some("enough"), 15));
    Given::with(())
        .given(history)
        .when(interrupt("a", "s0.1", 20, "s2"))
        .then_expect_events(vec![
            interrupted("a", 1, 20),
            run_cancelled(Some("enough"), 20),
            cancelled_note(1, Some("enough"), 20),
        ]);
}

#[test]
fn a_step_interrupted_after_its_pause_was_withdrawn_is_dispatched_again_at_once() {
    let mut history = diamond_pausing();
    history.push(run_resumed(26));
    Given::with(())
        .given(history)
        .when(interrupt("b", "s1.1", 27, "s4"))
        .then_expect_events(vec![
            interrupted("b", 1, 27),
            dispatched("b", 2, "s4.1", &[("a.out", 1)], 27),
        ]);
}

#[test]
fn interrupting_with_a_stale_lease_is_refused() {
    Given::with(())
        .given(diamond_pausing())
        .when(interrupt("b", "s0.1", 26, "s3"))
        .then_expect_error(RunError::StaleLease(sid("b")));
}

#[test]
fn interrupting_a_step_that_is_not_running_is_refused() {
    Given::with(())
        .given(diamond_pausing())
        .when(interrupt("d", "s1.1", 26, "s3"))
        .then_expect_error(RunError::StepNotRunning(sid("d")));
}

// ----------------------------------------------------------------- Approve --

#[test]
fn a_review_step_whose_agent_finishes_awaits_review_and_blocks_its_dependants() {
    Given::with(())
        .given(vec![
            run_started(reviewed(), &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
        ])
        .when(complete("a", "s0.1", "A", 20, "s1"))
        .then_expect_events(vec![
            RunEvent::StepAwaitingReview {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![written("a.out", 1, "A")],
                at: at(20),
            },
            review_note(1, "a", 20),
        ]);
    let run = state_after(reviewed_awaiting());
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.steps[&sid("a")].status, StepStatus::AwaitingReview);
    assert_eq!(run.steps[&sid("b")].status, StepStatus::Pending);
    assert_eq!(run.artifacts[&artifact("a.out")].latest, 1);
}

#[test]
fn a_review_step_offering_choices_announces_them() {
    Given::with(())
        .given(vec![
            run_started(choosing(), &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
        ])
        .when(complete("a", "s0.1", "A", 20, "s1"))
        .then_expect_events(choosing_awaiting()[2..].to_vec());
}

#[test]
fn approving_a_step_without_choices_completes_it_and_dispatches_its_dependants() {
    Given::with(())
        .given(reviewed_awaiting())
        .when(approve("a", None, 30, "s2"))
        .then_expect_events(vec![
            approved("a", 1, None, 30),
            completed_with("a", 1, vec![], &["b"], &[], 30),
            dispatched("b", 1, "s2.1", &[("a.out", 1)], 30),
        ]);
}

#[test]
fn approving_the_last_step_completes_the_run() {
    let def = definition(json!({"a": {"agent": "echo", "review": true}}));
    Given::with(())
        .given(vec![
            run_started(def, &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            awaiting_review("a", 1, (1, "A"), 20),
            review_note(1, "a", 20),
        ])
        .when(approve("a", None, 30, "s2"))
        .then_expect_events(vec![
            approved("a", 1, None, 30),
            completed_with("a", 1, vec![], &[], &[], 30),
            RunEvent::RunCompleted { at: at(30) },
            completed_note(2, 30),
        ]);
}

#[test]
fn approving_with_a_choice_writes_it_as_the_choice_output_and_branches_on_it() {
    Given::with(())
        .given(choosing_awaiting())
        .when(approve("a", Some("ship"), 30, "s2"))
        .then_expect_events(vec![
            approved("a", 1, Some("ship"), 30),
            completed_with(
                "a",
                1,
                vec![written("a.choice", 1, "ship")],
                &["ship"],
                &["fix", "polish"],
                30,
            ),
            dispatched("ship", 1, "s2.1", &[("a.choice", 1), ("a.out", 1)], 30),
        ]);
}

#[test]
fn approving_with_the_other_choice_takes_the_other_branch() {
    Given::with(())
        .given(choosing_awaiting())
        .when(approve("a", Some("rework"), 30, "s2"))
        .then_expect_events(vec![
            approved("a", 1, Some("rework"), 30),
            completed_with(
                "a",
                1,
                vec![written("a.choice", 1, "rework")],
                &["fix"],
                &["ship"],
                30,
            ),
            dispatched("fix", 1, "s2.1", &[("a.choice", 1), ("a.out", 1)], 30),
        ]);
}

#[test]
fn approving_a_step_that_offers_choices_without_one_is_refused() {
    Given::with(())
        .given(choosing_awaiting())
        .when(approve("a", None, 30, "s2"))
        .then_expect_error(RunError::ChoiceRequired {
            step: sid("a"),
            choices: vec!["ship".into(), "rework".into()],
        });
}

#[test]
fn approving_with_a_choice_the_step_does_not_offer_is_refused() {
    Given::with(())
        .given(choosing_awaiting())
        .when(approve("a", Some("maybe"), 30, "s2"))
        .then_expect_error(RunError::InvalidChoice {
            step: sid("a"),
            choice: "maybe".into(),
            choices: vec!["ship".into(), "rework".into()],
        });
}

#[test]
fn approving_with_a_choice_a_step_without_choices_is_refused() {
    Given::with(())
        .given(reviewed_awaiting())
        .when(approve("a", Some("ship"), 30, "s2"))
        .then_expect_error(RunError::NoChoices(sid("a")));
}

#[test]
fn approving_a_step_that_is_not_awaiting_review_is_refused_with_its_status() {
    Given::with(())
        .given(reviewed_awaiting())
        .when(approve("b", None, 30, "s2"))
        .then_expect_error(RunError::StepNotAwaitingReview(sid("b"), "pending"));
    Given::with(())
        .given(diamond_started())
        .when(approve("a", None, 15, "s1"))
        .then_expect_error(RunError::StepNotAwaitingReview(sid("a"), "running"));
}

#[test]
fn approving_a_step_twice_is_refused() {
    let mut history = reviewed_awaiting();
    history.extend([
        approved("a", 1, None, 30),
        completed_with("a", 1, vec![], &["b"], &[], 30),
        dispatched("b", 1, "s2.1", &[("a.out", 1)], 30),
    ]);
    Given::with(())
        .given(history)
        .when(approve("a", None, 31, "s3"))
        .then_expect_error(RunError::StepNotAwaitingReview(sid("a"), "completed"));
}

#[test]
fn approving_a_step_of_a_run_being_cancelled_is_refused() {
    let def = definition(json!({
        "a": {"agent": "echo", "review": true},
        "x": {"agent": "echo"}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["a", "x"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("x", 1, "s0.2", &[], 10),
            awaiting_review("a", 1, (1, "A"), 20),
            review_note(1, "a", 20),
            cancel_requested(Some("enough"), 25),
        ])
        .when(approve("a", None, 30, "s3"))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn approving_a_step_of_a_paused_run_completes_it_but_dispatches_nothing() {
    let mut history = reviewed_awaiting();
    history.extend([pause_requested(25), run_paused(25), paused_note(2, 25)]);
    Given::with(())
        .given(history)
        .when(approve("a", None, 30, "s3"))
        .then_expect_events(vec![
            approved("a", 1, None, 30),
            completed_with("a", 1, vec![], &["b"], &[], 30),
        ]);
}

#[test]
fn approving_an_unknown_step_or_in_a_finished_run_is_refused() {
    Given::with(())
        .given(reviewed_awaiting())
        .when(approve("ghost", None, 30, "s2"))
        .then_expect_error(RunError::UnknownStep(sid("ghost")));
    Given::with(())
        .given(diamond_completed())
        .when(approve("a", None, 60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
    Given::with(())
        .given_no_previous_events()
        .when(approve("a", None, 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// --------------------------------------------------------------- RetryStep --

#[test]
fn retrying_a_step_of_a_completed_run_reopens_it_invalidates_downstream_and_dispatches_the_step() {
    Given::with(())
        .given(diamond_completed())
        .when(retry_step("b", Some("shorter"), 60, "s6"))
        .then_expect_events(vec![
            retry_requested("b", Some("shorter"), &["d"], true, 60),
            dispatched_with("b", 2, "s6.1", &[("a.out", 1)], Some("shorter"), &[], 60),
        ]);
    let mut history = diamond_completed();
    history.push(retry_requested("b", Some("shorter"), &["d"], true, 60));
    let run = state_after(history);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.steps[&sid("b")].status, StepStatus::Ready);
    assert_eq!(
        run.steps[&sid("b")].prompt_override.as_deref(),
        Some("shorter")
    );
    assert_eq!(run.steps[&sid("d")].status, StepStatus::Pending);
    assert_eq!(run.steps[&sid("c")].status, StepStatus::Completed);
}

#[test]
fn a_retried_attempt_writes_new_versions_and_its_dependants_run_again_reading_them() {
    Given::with(())
        .given(diamond_b_retried())
        .when(complete("b", "s6.1", "B2", 70, "s7"))
        .then_expect_events(diamond_b_redone()[diamond_b_retried().len()..].to_vec());
    Given::with(())
        .given(diamond_b_redone())
        .when(complete("d", "s7.1", "D2", 80, "s8"))
        .then_expect_events(diamond_recompleted()[diamond_b_redone().len()..].to_vec());
}

#[test]
fn retrying_the_failed_step_of_a_failed_run_reopens_it() {
    Given::with(())
        .given(diamond_failed())
        .when(retry_step("b", None, 50, "s5"))
        .then_expect_events(vec![
            retry_requested("b", None, &[], true, 50),
            dispatched("b", 2, "s5.1", &[("a.out", 1)], 50),
        ]);
    let mut history = diamond_failed();
    history.push(retry_requested("b", None, &[], true, 50));
    let run = state_after(history);
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.failure, None);
    let b = &run.steps[&sid("b")];
    assert_eq!((b.status, b.finished_at), (StepStatus::Ready, None));
}

#[test]
fn retrying_the_failed_step_of_a_failing_run_clears_the_failure() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(1, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history.clone())
        .when(retry_step("b", None, 35, "s4"))
        .then_expect_events(vec![
            retry_requested("b", None, &[], true, 35),
            dispatched("b", 2, "s4.1", &[("a.out", 1)], 35),
        ]);
    history.extend([
        retry_requested("b", None, &[], true, 35),
        dispatched("b", 2, "s4.1", &[("a.out", 1)], 35),
    ]);
    // c completing no longer fails the run.
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s5"))
        .then_expect_events(vec![completed("c", 1, (1, "C"), &[], 40)]);
}

#[test]
fn retrying_a_step_that_would_leave_the_run_failed_elsewhere_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(retry_step("c", None, 50, "s5"))
        .then_expect_error(RunError::FailedElsewhere(sid("b")));
}

#[test]
fn retrying_an_upstream_step_re_runs_the_failed_step_and_reopens_the_run() {
    // Retrying a invalidates b (failed) and c: the failure is among the
    // steps that run again.
    Given::with(())
        .given(diamond_failed())
        .when(retry_step("a", None, 50, "s5"))
        .then_expect_events(vec![
            retry_requested("a", None, &["b", "c"], true, 50),
            dispatched("a", 2, "s5.1", &[], 50),
        ]);
}

#[test]
fn retrying_a_step_awaiting_review_runs_it_again() {
    Given::with(())
        .given(reviewed_awaiting())
        .when(retry_step("a", Some("again"), 30, "s2"))
        .then_expect_events(vec![
            retry_requested("a", Some("again"), &[], false, 30),
            dispatched_with("a", 2, "s2.1", &[], Some("again"), &[], 30),
        ]);
    let mut history = reviewed_awaiting();
    history.extend([
        retry_requested("a", Some("again"), &[], false, 30),
        dispatched_with("a", 2, "s2.1", &[], Some("again"), &[], 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("a", "s2.1", "A2", 40, "s3"))
        .then_expect_events(vec![
            awaiting_review("a", 2, (2, "A2"), 40),
            review_note(2, "a", 40),
        ]);
}

#[test]
fn retrying_a_step_that_has_not_finished_is_refused_with_its_status() {
    Given::with(())
        .given(diamond_a_done())
        .when(retry_step("d", None, 25, "s2"))
        .then_expect_error(RunError::StepNotRetryable(sid("d"), "pending"));
    Given::with(())
        .given(diamond_a_done())
        .when(retry_step("b", None, 25, "s2"))
        .then_expect_error(RunError::StepNotRetryable(sid("b"), "running"));
    Given::with(())
        .given(manual_diamond_started())
        .when(retry_step("a", None, 15, "s1"))
        .then_expect_error(RunError::StepNotRetryable(sid("a"), "ready"));
    let mut skipped = branching_started();
    skipped.extend([
        completed_with(
            "a",
            1,
            vec![written("a.out", 1, "go")],
            &["yes"],
            &["after_no", "no"],
            20,
        ),
        dispatched("yes", 1, "s1.1", &[("a.out", 1)], 20),
    ]);
    Given::with(())
        .given(skipped)
        .when(retry_step("no", None, 25, "s2"))
        .then_expect_error(RunError::StepNotRetryable(sid("no"), "skipped"));
}

#[test]
fn retrying_a_step_of_a_cancelled_or_cancelling_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(retry_step("b", None, 50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
    let mut history = diamond_cancelling();
    history.push(completed("b", 1, (1, "B"), &[], 30));
    Given::with(())
        .given(history)
        .when(retry_step("b", None, 35, "s4"))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn retrying_an_unknown_step_or_in_a_run_never_started_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(retry_step("ghost", None, 60, "s5"))
        .then_expect_error(RunError::UnknownStep(sid("ghost")));
    Given::with(())
        .given_no_previous_events()
        .when(retry_step("a", None, 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn retrying_a_step_of_a_paused_run_makes_it_ready_without_dispatching_it() {
    Given::with(())
        .given(diamond_paused())
        .when(retry_step("b", None, 45, "s5"))
        .then_expect_events(vec![retry_requested("b", None, &["d"], false, 45)]);
    let mut history = diamond_paused();
    history.push(retry_requested("b", None, &["d"], false, 45));
    Given::with(())
        .given(history)
        .when(resume(50, "s6"))
        .then_expect_events(vec![
            run_resumed(50),
            resumed_note(2, 50),
            dispatched("b", 2, "s6.1", &[("a.out", 1)], 50),
        ]);
}

#[test]
fn retrying_a_step_of_a_pausing_run_that_sends_back_every_running_step_pauses_the_run() {
    // b and c were running when the pause was asked; retrying a sends both
    // back to pending: nothing runs any more, so the run is paused.
    Given::with(())
        .given(diamond_pausing())
        .when(retry_step("a", None, 26, "s3"))
        .then_expect_events(vec![
            retry_requested("a", None, &["b", "c"], false, 26),
            run_paused(26),
            paused_note(1, 26),
        ]);
}

#[test]
fn retrying_a_step_of_a_pausing_run_with_other_steps_running_only_makes_it_ready() {
    let mut history = side_branch_started();
    history.extend([
        completed("a", 1, (1, "A"), &["x"], 20),
        dispatched("x", 1, "s1.1", &[("a.out", 1)], 20),
        completed("x", 1, (1, "X"), &[], 30),
        pause_requested(35),
    ]);
    Given::with(())
        .given(history)
        .when(retry_step("x", None, 40, "s4"))
        .then_expect_events(vec![retry_requested("x", None, &[], false, 40)]);
}

#[test]
fn retrying_a_step_in_manual_mode_dispatches_it_at_once() {
    Given::with(())
        .given(manual_diamond_a_done())
        .when(retry_step("a", None, 30, "s3"))
        .then_expect_events(vec![
            retry_requested("a", None, &["b", "c"], false, 30),
            dispatched("a", 2, "s3.1", &[], 30),
        ]);
}

// ------------------------------------------------------------- TriggerStep --

#[test]
fn triggering_a_ready_step_in_manual_mode_dispatches_it_with_the_prompt_override() {
    Given::with(())
        .given(manual_diamond_started())
        .when(trigger("a", Some("focus on otters"), 15, "s1"))
        .then_expect_events(vec![dispatched_with(
            "a",
            1,
            "s1.1",
            &[],
            Some("focus on otters"),
            &[],
            15,
        )]);
}

#[test]
fn triggering_one_ready_step_in_manual_mode_leaves_the_others_waiting() {
    Given::with(())
        .given(manual_diamond_a_done())
        .when(trigger("c", None, 25, "s2"))
        .then_expect_events(vec![dispatched("c", 1, "s2.1", &[("a.out", 1)], 25)]);
}

#[test]
fn triggering_a_step_waiting_for_its_retry_dispatches_it_now() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(trigger("a", None, 30, "s2"))
        .then_expect_events(vec![dispatched("a", 2, "s2.1", &[], 30)]);
}

#[test]
fn triggering_a_step_that_is_not_ready_is_refused_with_its_status() {
    Given::with(())
        .given(manual_diamond_started())
        .when(trigger("b", None, 15, "s1"))
        .then_expect_error(RunError::StepNotReady(sid("b"), "pending"));
    Given::with(())
        .given(diamond_started())
        .when(trigger("a", None, 15, "s1"))
        .then_expect_error(RunError::StepNotReady(sid("a"), "running"));
    Given::with(())
        .given(manual_diamond_started())
        .when(trigger("ghost", None, 15, "s1"))
        .then_expect_error(RunError::UnknownStep(sid("ghost")));
}

#[test]
fn triggering_a_step_of_a_paused_or_pausing_run_is_refused() {
    let mut paused = manual_diamond_started();
    paused.extend([pause_requested(12), run_paused(12), paused_note(1, 12)]);
    Given::with(())
        .given(paused)
        .when(trigger("a", None, 15, "s1"))
        .then_expect_error(RunError::Paused);
    let mut pausing = manual_diamond_a_done();
    pausing.extend([
        dispatched("b", 1, "s2.1", &[("a.out", 1)], 22),
        pause_requested(23),
    ]);
    Given::with(())
        .given(pausing)
        .when(trigger("c", None, 25, "s3"))
        .then_expect_error(RunError::Paused);
}

#[test]
fn triggering_a_step_of_a_run_being_cancelled_is_refused() {
    Given::with(())
        .given(vec![
            manual_started(two_roots(), &["a", "b"], 10),
            dispatched("a", 1, "s1.1", &[], 15),
            cancel_requested(None, 20),
        ])
        .when(trigger("b", None, 25, "s3"))
        .then_expect_error(RunError::Cancelling);
}

#[test]
fn triggering_a_step_of_a_failing_run_is_refused() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo"},
        "c": {"agent": "echo"}
    }));
    Given::with(())
        .given(vec![
            manual_started(def, &["a", "b", "c"], 10),
            dispatched("a", 1, "s1.1", &[], 15),
            dispatched("b", 1, "s2.1", &[], 16),
            failed("a", 1, "boom", false, 20),
            failed_note(1, "a", 1, "boom", false, 20),
        ])
        .when(trigger("c", None, 25, "s4"))
        .then_expect_error(RunError::Failing(sid("a")));
}

#[test]
fn triggering_a_step_of_a_finished_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(trigger("a", None, 60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
    Given::with(())
        .given_no_previous_events()
        .when(trigger("a", None, 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// -------------------------------------------------------------- SetAutoRun --

#[test]
fn setting_auto_run_to_its_current_value_records_nothing() {
    Given::with(())
        .given(diamond_started())
        .when(set_auto_run(true, 15, "s1"))
        .then_expect_events(vec![]);
    Given::with(())
        .given(manual_diamond_started())
        .when(set_auto_run(false, 15, "s1"))
        .then_expect_events(vec![]);
}

#[test]
fn switching_auto_run_off_keeps_ready_steps_waiting() {
    Given::with(())
        .given(diamond_started())
        .when(set_auto_run(false, 15, "s1"))
        .then_expect_events(vec![auto_run_changed(false, 15)]);
    let mut history = diamond_started();
    history.push(auto_run_changed(false, 15));
    Given::with(())
        .given(history)
        .when(complete("a", "s0.1", "A", 20, "s2"))
        .then_expect_events(vec![completed("a", 1, (1, "A"), &["b", "c"], 20)]);
}

#[test]
fn switching_auto_run_on_dispatches_the_ready_steps() {
    Given::with(())
        .given(manual_diamond_a_done())
        .when(set_auto_run(true, 25, "s2"))
        .then_expect_events(vec![
            auto_run_changed(true, 25),
            dispatched("b", 1, "s2.1", &[("a.out", 1)], 25),
            dispatched("c", 1, "s2.2", &[("a.out", 1)], 25),
        ]);
}

#[test]
fn switching_auto_run_on_while_paused_dispatches_nothing() {
    let mut history = manual_diamond_started();
    history.extend([pause_requested(12), run_paused(12), paused_note(1, 12)]);
    Given::with(())
        .given(history)
        .when(set_auto_run(true, 15, "s1"))
        .then_expect_events(vec![auto_run_changed(true, 15)]);
}

#[test]
fn switching_auto_run_of_a_finished_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(set_auto_run(false, 60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
    Given::with(())
        .given_no_previous_events()
        .when(set_auto_run(false, 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

// -------------------------------------------------------- RollbackArtifact --

#[test]
fn rolling_back_an_artifact_of_a_completed_run_reopens_it_and_re_runs_the_steps_below() {
    Given::with(())
        .given(diamond_recompleted())
        .when(rollback("b.out", 1, 90, "s9"))
        .then_expect_events(vec![
            rolled_back("b.out", (2, 1), &["d"], &["d"], &[], true, 90),
            rolled_back_note(3, "b.out", (2, 1), 90),
            dispatched("d", 3, "s9.1", &[("b.out", 1), ("c.out", 1)], 90),
        ]);
    let mut history = diamond_recompleted();
    history.push(rolled_back("b.out", (2, 1), &["d"], &["d"], &[], true, 90));
    let run = state_after(history);
    assert_eq!(run.status, RunStatus::Running);
    let b_out = &run.artifacts[&artifact("b.out")];
    assert_eq!((b_out.latest, b_out.versions.len()), (1, 2));
    assert_eq!(run.outputs_of(&sid("b"))["out"], inline("B"));
    assert_eq!(run.steps[&sid("d")].status, StepStatus::Ready);
}

#[test]
fn rolling_back_while_a_downstream_step_runs_sends_it_back_and_dispatches_it_again() {
    Given::with(())
        .given(diamond_b_redone())
        .when(rollback("b.out", 1, 75, "s8"))
        .then_expect_events(vec![
            rolled_back("b.out", (2, 1), &["d"], &["d"], &[], false, 75),
            rolled_back_note(2, "b.out", (2, 1), 75),
            dispatched("d", 3, "s8.1", &[("b.out", 1), ("c.out", 1)], 75),
        ]);
}

#[test]
fn rolling_back_re_evaluates_conditions_and_skips_the_steps_that_no_longer_hold() {
    // a.out was "stop" (version 1) then "go" (version 2, after a step
    // retry): back at "stop", `yes` and what follows it are skipped again,
    // and the run, with every step done, completes at once.
    let def = definition(json!({
        "a": {"agent": "echo"},
        "yes": {"agent": "echo", "depends_on": ["a"],
                "when": {"step": "a", "output": "out", "equals": "go"}},
        "then": {"agent": "echo", "depends_on": ["yes"]}
    }));
    let history = vec![
        run_started(def, &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
        completed_with(
            "a",
            1,
            vec![written("a.out", 1, "stop")],
            &[],
            &["then", "yes"],
            20,
        ),
        RunEvent::RunCompleted { at: at(20) },
        completed_note(1, 20),
        retry_requested("a", None, &["then", "yes"], true, 30),
        dispatched("a", 2, "s2.1", &[], 30),
        completed_with("a", 2, vec![written("a.out", 2, "go")], &["yes"], &[], 40),
        dispatched("yes", 1, "s3.1", &[("a.out", 2)], 40),
        completed("yes", 1, (1, "Y"), &["then"], 50),
        dispatched("then", 1, "s4.1", &[("yes.out", 1)], 50),
        completed("then", 1, (1, "T"), &[], 60),
        RunEvent::RunCompleted { at: at(60) },
        completed_note(2, 60),
    ];
    Given::with(())
        .given(history)
        .when(rollback("a.out", 1, 70, "s6"))
        .then_expect_events(vec![
            rolled_back(
                "a.out",
                (2, 1),
                &["then", "yes"],
                &[],
                &["then", "yes"],
                true,
                70,
            ),
            rolled_back_note(3, "a.out", (2, 1), 70),
            RunEvent::RunCompleted { at: at(70) },
            completed_note(4, 70),
        ]);
}

#[test]
fn rolling_back_an_artifact_no_step_reads_only_moves_latest() {
    let mut history = diamond_recompleted();
    history.extend([
        rolled_back("b.out", (2, 1), &["d"], &["d"], &[], true, 90),
        rolled_back_note(3, "b.out", (2, 1), 90),
        dispatched("d", 3, "s9.1", &[("b.out", 1), ("c.out", 1)], 90),
        completed("d", 3, (3, "D3"), &[], 100),
        RunEvent::RunCompleted { at: at(100) },
        completed_note(4, 100),
    ]);
    Given::with(())
        .given(history)
        .when(rollback("d.out", 2, 110, "s11"))
        .then_expect_events(vec![
            rolled_back("d.out", (3, 2), &[], &[], &[], false, 110),
            rolled_back_note(5, "d.out", (3, 2), 110),
        ]);
}

#[test]
fn rolling_back_an_unknown_artifact_or_version_is_refused() {
    Given::with(())
        .given(diamond_recompleted())
        .when(rollback("x.out", 1, 90, "s9"))
        .then_expect_error(RunError::UnknownArtifact(artifact("x.out")));
    Given::with(())
        .given(diamond_recompleted())
        .when(rollback("b.nope", 1, 90, "s9"))
        .then_expect_error(RunError::UnknownArtifact(artifact("b.nope")));
    Given::with(())
        .given(diamond_recompleted())
        .when(rollback("b.out", 5, 90, "s9"))
        .then_expect_error(RunError::UnknownArtifactVersion(artifact("b.out"), 5));
}

#[test]
fn rolling_back_to_the_version_latest_points_at_is_refused() {
    Given::with(())
        .given(diamond_recompleted())
        .when(rollback("b.out", 2, 90, "s9"))
        .then_expect_error(RunError::AlreadyAtVersion(artifact("b.out"), 2));
}

#[test]
fn rolling_back_an_artifact_whose_step_is_running_is_refused() {
    let mut history = diamond_recompleted();
    history.extend([
        retry_requested("b", None, &["d"], true, 90),
        dispatched("b", 3, "s9.1", &[("a.out", 1)], 90),
    ]);
    Given::with(())
        .given(history)
        .when(rollback("b.out", 1, 95, "s10"))
        .then_expect_error(RunError::StepRunning(sid("b")));
}

#[test]
fn rolling_back_in_a_cancelled_or_cancelling_run_is_refused() {
    Given::with(())
        .given(diamond_cancelled())
        .when(rollback("a.out", 1, 50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
    Given::with(())
        .given(diamond_cancelling())
        .when(rollback("a.out", 1, 30, "s3"))
        .then_expect_error(RunError::Cancelling);
    Given::with(())
        .given_no_previous_events()
        .when(rollback("a.out", 1, 10, "s0"))
        .then_expect_error(RunError::NotStarted);
}

#[test]
fn rolling_back_in_a_failed_run_that_would_stay_failed_elsewhere_is_refused() {
    // a.out has versions 1 and 2 (a was retried); then b failed the run.
    // Rolling a.out back re-runs x, not b.
    Given::with(())
        .given(vec![
            run_started(side_branch(), &["a", "b"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
            dispatched("b", 1, "s0.2", &[], 10),
            completed("a", 1, (1, "A1"), &["x"], 20),
            dispatched("x", 1, "s1.1", &[("a.out", 1)], 20),
            completed("x", 1, (1, "X1"), &[], 30),
            retry_requested("a", None, &["x"], false, 40),
            dispatched("a", 2, "s3.1", &[], 40),
            completed("a", 2, (2, "A2"), &["x"], 50),
            dispatched("x", 2, "s4.1", &[("a.out", 2)], 50),
            completed("x", 2, (2, "X2"), &[], 60),
            failed("b", 1, "boom", false, 70),
            failed_note(1, "b", 1, "boom", false, 70),
            run_failed("b", "boom", 70),
            run_failed_note(2, "b", "boom", 70),
        ])
        .when(rollback("a.out", 1, 80, "s8"))
        .then_expect_error(RunError::FailedElsewhere(sid("b")));
}

// ---------------------------------------------------------------- Redirect --

#[test]
fn redirecting_a_run_with_steps_running_requests_its_cancel_in_favour_of_the_new_run() {
    Given::with(())
        .given(diamond_a_done())
        .when(redirect("r2", "start over", 25))
        .then_expect_events(vec![
            redirected("r2", "start over", 25),
            cancel_requested(Some("redirected to run r2"), 25),
        ]);
}

#[test]
fn a_redirected_run_ends_cancelled_announcing_the_redirect_once_nothing_runs() {
    let mut history = diamond_a_done();
    history.extend([
        redirected("r2", "start over", 25),
        cancel_requested(Some("redirected to run r2"), 25),
        completed("b", 1, (1, "B"), &[], 30),
    ]);
    Given::with(())
        .given(history.clone())
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_cancelled(Some("redirected to run r2"), 40),
            note(1, "Run redirected to run r2.", 40),
        ]);
    history.extend([
        completed("c", 1, (1, "C"), &[], 40),
        run_cancelled(Some("redirected to run r2"), 40),
    ]);
    assert_eq!(state_after(history).redirected_to, Some(rid("r2")));
}

#[test]
fn redirecting_a_finished_or_cancelling_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(redirect("r2", "start over", 60))
        .then_expect_error(RunError::Finished("completed"));
    Given::with(())
        .given(diamond_cancelling())
        .when(redirect("r2", "start over", 30))
        .then_expect_error(RunError::Cancelling);
    Given::with(())
        .given_no_previous_events()
        .when(redirect("r2", "start over", 10))
        .then_expect_error(RunError::NotStarted);
}

// ------------------------------------------------- Start: redirect, manual --

#[test]
fn a_run_started_by_a_redirect_hands_its_instructions_to_its_first_step() {
    Given::with(())
        .given_no_previous_events()
        .when(start_with(
            "r2",
            diamond(),
            Some(("r1", "start over")),
            true,
            10,
            "s0",
        ))
        .then_expect_events(vec![
            RunEvent::RunStarted {
                run_id: rid("r2"),
                template_id: TemplateId::parse("t1").unwrap(),
                template_version: 1,
                definition: diamond(),
                input: input(),
                ready: steps(&["a"]),
                retry_of: None,
                redirected_from: Some(rid("r1")),
                auto_run: true,
                at: at(10),
            },
            posted(
                1,
                Action::Instruction,
                "start over",
                MessageStatus::Pending,
                None,
                10,
            ),
            dispatched_with("a", 1, "s0.1", &[], None, &[1], 10),
            status_changed(1, MessageStatus::Acknowledged, Some("a"), None, 10),
        ]);
}

#[test]
fn a_run_started_in_manual_mode_dispatches_nothing() {
    Given::with(())
        .given_no_previous_events()
        .when(start_with("r1", diamond(), None, false, 10, "s0"))
        .then_expect_events(manual_diamond_started());
    let run = state_after(manual_diamond_started());
    assert!(!run.auto_run);
    assert_eq!(run.steps[&sid("a")].status, StepStatus::Ready);
}

#[test]
fn a_redirected_run_started_in_manual_mode_keeps_its_instructions_pending() {
    Given::with(())
        .given_no_previous_events()
        .when(start_with(
            "r2",
            diamond(),
            Some(("r1", "start over")),
            false,
            10,
            "s0",
        ))
        .then_expect_events(vec![
            RunEvent::RunStarted {
                run_id: rid("r2"),
                template_id: TemplateId::parse("t1").unwrap(),
                template_version: 1,
                definition: diamond(),
                input: input(),
                ready: steps(&["a"]),
                retry_of: None,
                redirected_from: Some(rid("r1")),
                auto_run: false,
                at: at(10),
            },
            posted(
                1,
                Action::Instruction,
                "start over",
                MessageStatus::Pending,
                None,
                10,
            ),
        ]);
}

// --------------------------------------------------------------- branching --

#[test]
fn a_false_condition_skips_the_step_and_every_step_that_only_follows_skipped_ones() {
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "go", 20, "s1"))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![written("a.out", 1, "go")],
                &["yes"],
                &["after_no", "no"],
                20,
            ),
            dispatched("yes", 1, "s1.1", &[("a.out", 1)], 20),
        ]);
}

#[test]
fn a_step_with_one_skipped_and_one_completed_dependency_runs() {
    let mut history = branching_started();
    history.extend([
        completed_with(
            "a",
            1,
            vec![written("a.out", 1, "go")],
            &["yes"],
            &["after_no", "no"],
            20,
        ),
        dispatched("yes", 1, "s1.1", &[("a.out", 1)], 20),
    ]);
    Given::with(())
        .given(history.clone())
        .when(complete("yes", "s1.1", "Y", 30, "s2"))
        .then_expect_events(vec![
            completed("yes", 1, (1, "Y"), &["join"], 30),
            dispatched("join", 1, "s2.1", &[("yes.out", 1)], 30),
        ]);
    history.extend([
        completed("yes", 1, (1, "Y"), &["join"], 30),
        dispatched("join", 1, "s2.1", &[("yes.out", 1)], 30),
    ]);
    // A run whose steps are all completed or skipped is completed.
    Given::with(())
        .given(history)
        .when(complete("join", "s2.1", "J", 40, "s3"))
        .then_expect_events(vec![
            completed("join", 1, (1, "J"), &[], 40),
            RunEvent::RunCompleted { at: at(40) },
            completed_note(1, 40),
        ]);
}

#[test]
fn the_other_value_takes_the_other_branch() {
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "stop", 20, "s1"))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![written("a.out", 1, "stop")],
                &["no"],
                &["yes"],
                20,
            ),
            dispatched("no", 1, "s1.1", &[("a.out", 1)], 20),
        ]);
}

#[test]
fn a_step_whose_dependencies_were_all_skipped_is_skipped() {
    // Neither "go" nor "stop": yes and no are skipped, and so are after_no
    // and join, whose dependencies are all skipped; the run completes.
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "maybe", 20, "s1"))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![written("a.out", 1, "maybe")],
                &[],
                &["after_no", "join", "no", "yes"],
                20,
            ),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}

#[test]
fn an_in_condition_holds_for_any_of_its_values() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"],
              "when": {"step": "a", "output": "out", "in": ["x", "y"]}}
    }));
    let started = vec![
        run_started(def, &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ];
    Given::with(())
        .given(started.clone())
        .when(complete("a", "s0.1", "y", 20, "s1"))
        .then_expect_events(vec![
            completed("a", 1, (1, "y"), &["b"], 20),
            dispatched("b", 1, "s1.1", &[("a.out", 1)], 20),
        ]);
    Given::with(())
        .given(started)
        .when(complete("a", "s0.1", "z", 20, "s1"))
        .then_expect_events(vec![
            completed_with("a", 1, vec![written("a.out", 1, "z")], &[], &["b"], 20),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}

#[test]
fn a_condition_on_a_step_that_was_skipped_does_not_hold() {
    // r decides whether g runs; x waits for g and n and tests g's output:
    // with g skipped, x is skipped even though n completed.
    let def = definition(json!({
        "r": {"agent": "echo"},
        "g": {"agent": "echo", "depends_on": ["r"],
              "when": {"step": "r", "output": "out", "equals": "go"}},
        "n": {"agent": "echo", "depends_on": ["r"]},
        "x": {"agent": "echo", "depends_on": ["g", "n"],
              "when": {"step": "g", "output": "out", "equals": "G"}}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["r"], 10),
            dispatched("r", 1, "s0.1", &[], 10),
            completed_with(
                "r",
                1,
                vec![written("r.out", 1, "stop")],
                &["n"],
                &["g"],
                20,
            ),
            dispatched("n", 1, "s1.1", &[("r.out", 1)], 20),
        ])
        .when(complete("n", "s1.1", "N", 30, "s2"))
        .then_expect_events(vec![
            completed_with("n", 1, vec![written("n.out", 1, "N")], &[], &["x"], 30),
            RunEvent::RunCompleted { at: at(30) },
            completed_note(1, 30),
        ]);
}

#[test]
fn a_condition_on_a_blob_output_does_not_hold() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"],
              "when": {"step": "a", "output": "out", "equals": "go"}}
    }));
    let blob = ArtifactContent::Blob {
        sha256: "ab".repeat(32),
        size: 100_000,
    };
    Given::with(())
        .given(vec![
            run_started(def, &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
        ])
        .when(stamped(
            RunCommand::CompleteStep {
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: single_output("out", blob.clone()),
                comments: Vec::new(),
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![ArtifactWritten {
                    name: artifact("a.out"),
                    version: 1,
                    content: blob,
                }],
                &[],
                &["b"],
                20,
            ),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}

// ------------------------------------------------------------ instructions --

#[test]
fn an_instruction_is_handed_to_the_next_step_dispatched_and_acknowledged() {
    Given::with(())
        .given(diamond_instructed())
        .when(complete("a", "s0.1", "A", 20, "s1"))
        .then_expect_events(diamond_instructed_b_running()[diamond_instructed().len()..].to_vec());
}

#[test]
fn an_instruction_is_processed_when_the_step_that_received_it_completes() {
    Given::with(())
        .given(diamond_instructed_b_running())
        .when(complete("b", "s1.1", "B", 30, "s2"))
        .then_expect_events(vec![
            completed("b", 1, (1, "B"), &[], 30),
            status_changed(1, MessageStatus::Processed, Some("b"), None, 30),
        ]);
    // Another step completing does not process it.
    Given::with(())
        .given(diamond_instructed_b_running())
        .when(complete("c", "s1.2", "C", 30, "s2"))
        .then_expect_events(vec![completed("c", 1, (1, "C"), &[], 30)]);
}

#[test]
fn an_instruction_is_handed_again_to_the_next_attempt_of_a_step_whose_attempt_failed() {
    // a's first attempt failed (message 1); the instruction (message 2) went
    // to attempt 2, which failed too (message 3): attempt 3 receives it
    // again, without a second acknowledgement, and its completion
    // processes it.
    let mut history = retrying_first_attempt_failed();
    history.extend([
        posted(
            2,
            Action::Instruction,
            "be brief",
            MessageStatus::Pending,
            None,
            30,
        ),
        dispatched_with("a", 2, "s3.1", &[], None, &[2], 70),
        status_changed(2, MessageStatus::Acknowledged, Some("a"), None, 70),
        failed("a", 2, "flaky", true, 80),
        failed_note(3, "a", 2, "flaky", true, 80),
        retry_scheduled("a", 3, 50, 80),
    ]);
    Given::with(())
        .given(history.clone())
        .when(dispatch_due(130, "s5"))
        .then_expect_events(vec![dispatched_with("a", 3, "s5.1", &[], None, &[2], 130)]);
    history.push(dispatched_with("a", 3, "s5.1", &[], None, &[2], 130));
    Given::with(())
        .given(history)
        .when(complete("a", "s5.1", "A", 140, "s6"))
        .then_expect_events(vec![
            completed("a", 3, (1, "A"), &["b"], 140),
            status_changed(2, MessageStatus::Processed, Some("a"), None, 140),
            dispatched("b", 1, "s6.1", &[("a.out", 1)], 140),
        ]);
}

#[test]
fn an_instruction_goes_with_the_in_flight_ones_to_a_retried_review_step() {
    // a received message 1 at the start, awaits review; message 3 comes
    // later; a step retry hands a both and acknowledges only the new one.
    let mut history = vec![
        RunEvent::RunStarted {
            run_id: rid("r2"),
            template_id: TemplateId::parse("t1").unwrap(),
            template_version: 1,
            definition: reviewed(),
            input: input(),
            ready: steps(&["a"]),
            retry_of: None,
            redirected_from: Some(rid("r1")),
            auto_run: true,
            at: at(10),
        },
        posted(
            1,
            Action::Instruction,
            "start over",
            MessageStatus::Pending,
            None,
            10,
        ),
        dispatched_with("a", 1, "s0.1", &[], None, &[1], 10),
        status_changed(1, MessageStatus::Acknowledged, Some("a"), None, 10),
        awaiting_review("a", 1, (1, "A"), 20),
        review_note(2, "a", 20),
        posted(
            3,
            Action::Instruction,
            "shorter",
            MessageStatus::Pending,
            None,
            25,
        ),
    ];
    Given::with(())
        .given(history.clone())
        .when(retry_step("a", None, 30, "s3"))
        .then_expect_events(vec![
            retry_requested("a", None, &[], false, 30),
            dispatched_with("a", 2, "s3.1", &[], None, &[1, 3], 30),
            status_changed(3, MessageStatus::Acknowledged, Some("a"), None, 30),
        ]);
    history.extend([
        retry_requested("a", None, &[], false, 30),
        dispatched_with("a", 2, "s3.1", &[], None, &[1, 3], 30),
        status_changed(3, MessageStatus::Acknowledged, Some("a"), None, 30),
        awaiting_review("a", 2, (2, "A2"), 40),
        review_note(4, "a", 40),
    ]);
    // Both are processed when the step completes, at its approval.
    Given::with(())
        .given(history)
        .when(approve("a", None, 50, "s5"))
        .then_expect_events(vec![
            approved("a", 2, None, 50),
            completed_with("a", 2, vec![], &["b"], &[], 50),
            status_changed(1, MessageStatus::Processed, Some("a"), None, 50),
            status_changed(3, MessageStatus::Processed, Some("a"), None, 50),
            dispatched("b", 1, "s5.1", &[("a.out", 2)], 50),
        ]);
}

#[test]
fn a_pending_instruction_is_ignored_when_the_run_completes() {
    let mut history = diamond_c_done();
    history.push(posted(
        1,
        Action::Instruction,
        "be brief",
        MessageStatus::Pending,
        None,
        45,
    ));
    Given::with(())
        .given(history)
        .when(complete("d", "s3.1", "D", 50, "s4"))
        .then_expect_events(vec![
            completed("d", 1, (1, "D"), &[], 50),
            RunEvent::RunCompleted { at: at(50) },
            status_changed(1, MessageStatus::Ignored, None, unused("completed"), 50),
            completed_note(2, 50),
        ]);
}

#[test]
fn a_pending_instruction_is_ignored_when_the_run_fails() {
    Given::with(())
        .given(diamond_instructed())
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_events(vec![
            failed("a", 1, "boom", false, 20),
            failed_note(2, "a", 1, "boom", false, 20),
            run_failed("a", "boom", 20),
            status_changed(1, MessageStatus::Ignored, None, unused("failed"), 20),
            run_failed_note(3, "a", "boom", 20),
        ]);
}

#[test]
fn an_acknowledged_instruction_is_ignored_when_its_step_fails_the_run() {
    let mut history = diamond_instructed_b_running();
    history.extend([
        failed("b", 1, "boom", false, 30),
        failed_note(2, "b", 1, "boom", false, 30),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s3"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
            status_changed(1, MessageStatus::Ignored, None, unused("failed"), 40),
            run_failed_note(3, "b", "boom", 40),
        ]);
}

#[test]
fn a_pending_instruction_is_ignored_when_the_run_is_cancelled() {
    let mut history = diamond_paused();
    history.push(posted(
        2,
        Action::Instruction,
        "be brief",
        MessageStatus::Pending,
        None,
        42,
    ));
    Given::with(())
        .given(history)
        .when(cancel(None, 45))
        .then_expect_events(vec![
            cancel_requested(None, 45),
            run_cancelled(None, 45),
            status_changed(2, MessageStatus::Ignored, None, unused("cancelled"), 45),
            cancelled_note(3, None, 45),
        ]);
}

#[test]
fn an_interrupted_step_keeps_its_instructions_for_its_next_attempt() {
    let mut history = diamond_instructed_b_running();
    history.push(pause_requested(25));
    history.push(interrupted("b", 1, 26));
    let run = state_after(history.clone());
    assert_eq!(
        run.thread.for_dispatch(&sid("b")),
        vec![OpenInstruction {
            message: 1,
            content: "be brief".into()
        }]
    );
    history.extend([
        completed("c", 1, (1, "C"), &[], 30),
        run_paused(30),
        paused_note(2, 30),
    ]);
    Given::with(())
        .given(history)
        .when(resume(40, "s6"))
        .then_expect_events(vec![
            run_resumed(40),
            resumed_note(3, 40),
            dispatched_with("b", 2, "s6.1", &[("a.out", 1)], None, &[1], 40),
        ]);
}

// ------------------------------------------------------- steering: replay --

#[test]
fn replaying_a_steered_run_rebuilds_the_state_decide_worked_on() {
    let (live, log) = drive(vec![
        start_with("r1", choosing(), Some(("r0", "start over")), true, 10, "s0"),
        post(Action::Comment, "watching", 12, "s1"),
        complete("a", "s0.1", "A", 20, "s2"),
        post_message(
            message(Action::Instruction, "shorter", Some("k1")),
            None,
            25,
            "s3",
        ),
        retry_step("a", Some("be terse"), 30, "s4"),
        agent_comment("a", "s4.1", "trying again", 32),
        complete("a", "s4.1", "A2", 40, "s5"),
        approve("a", Some("rework"), 50, "s6"),
        post(Action::Pause, "", 55, "s7"),
        complete("fix", "s6.1", "F", 60, "s8"),
        set_auto_run(false, 65, "s9"),
        post(Action::Resume, "", 70, "s10"),
        trigger("polish", Some("sparkle"), 75, "s11"),
        complete("polish", "s11.1", "P", 80, "s12"),
        // Rolled back, the run reopens: fix is ready again (the choice
        // still says rework), polish waits for it, and in manual mode both
        // need a trigger.
        rollback("a.out", 1, 90, "s13"),
        trigger("fix", None, 95, "s14"),
        complete("fix", "s14.1", "F2", 100, "s15"),
        trigger("polish", None, 105, "s16"),
        complete("polish", "s16.1", "P2", 110, "s17"),
    ]);
    let replayed = replay(&log);
    assert_eq!(replayed, live);
    assert_eq!(replayed.status, RunStatus::Completed);
    assert_eq!(replayed.redirected_from, Some(rid("r0")));
    assert!(!replayed.auto_run);
    assert!(replayed.thread.pending.is_empty());
    assert!(replayed.thread.in_flight.is_empty());
    assert_eq!(replayed.thread.keys["k1"].0, 4);
    let statuses: BTreeMap<&str, StepStatus> = replayed
        .steps
        .iter()
        .map(|(s, st)| (s.as_str(), st.status))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([
            ("a", StepStatus::Completed),
            ("fix", StepStatus::Completed),
            ("polish", StepStatus::Completed),
            ("ship", StepStatus::Skipped),
        ])
    );
    assert_eq!(replayed.artifacts[&artifact("a.out")].latest, 1);
    assert_eq!(replayed.artifacts[&artifact("a.out")].versions.len(), 2);
    assert_eq!(replayed.outputs_of(&sid("a"))["choice"], inline("rework"));
    // Every instruction ended processed; every message number is used once.
    let mut numbers = Vec::new();
    for event in &log {
        if let RunEvent::MessagePosted { message, .. } = event {
            numbers.push(*message);
        }
    }
    assert_eq!(numbers, (1..=numbers.len() as u32).collect::<Vec<_>>());
    let processed: Vec<u32> = log
        .iter()
        .filter_map(|e| match e {
            RunEvent::MessageStatusChanged {
                message,
                status: MessageStatus::Processed,
                ..
            } => Some(*message),
            _ => None,
        })
        .collect();
    assert_eq!(processed, vec![1, 4]);
}

#[test]
fn the_histories_these_tests_start_from_are_what_decide_records() {
    let log = |commands| drive(commands).1;
    assert_eq!(
        log(vec![
            start(diamond(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
            fail("b", "s1.1", "boom", 30),
            complete("c", "s1.2", "C", 40, "s3"),
        ]),
        diamond_failed()
    );
    assert_eq!(
        log(vec![
            start(diamond(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
            cancel(Some("enough"), 25),
            complete("b", "s1.1", "B", 30, "s3"),
            complete("c", "s1.2", "C", 40, "s4"),
        ]),
        diamond_cancelled()
    );
    assert_eq!(
        log(vec![
            start(diamond(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
            pause(25),
            complete("b", "s1.1", "B", 30, "s3"),
            complete("c", "s1.2", "C", 40, "s4"),
        ]),
        diamond_paused()
    );
    assert_eq!(
        log(vec![
            start(retrying(), 10, "s0"),
            fail("a", "s0.1", "flaky", 20),
            pause(30),
        ]),
        retrying_paused()
    );
    assert_eq!(
        log(vec![
            start(diamond(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
            complete("b", "s1.1", "B", 30, "s2"),
            complete("c", "s1.2", "C", 40, "s3"),
            complete("d", "s3.1", "D", 50, "s4"),
            retry_step("b", None, 60, "s6"),
            complete("b", "s6.1", "B2", 70, "s7"),
            complete("d", "s7.1", "D2", 80, "s8"),
        ]),
        diamond_recompleted()
    );
    assert_eq!(
        log(vec![
            start(diamond(), 10, "s0"),
            post(Action::Instruction, "be brief", 15, "s9"),
            complete("a", "s0.1", "A", 20, "s1"),
        ]),
        diamond_instructed_b_running()
    );
    assert_eq!(
        log(vec![
            start(reviewed(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
        ]),
        reviewed_awaiting()
    );
    assert_eq!(
        log(vec![
            start(choosing(), 10, "s0"),
            complete("a", "s0.1", "A", 20, "s1"),
        ]),
        choosing_awaiting()
    );
    assert_eq!(
        log(vec![
            start_with("r1", diamond(), None, false, 10, "s0"),
            trigger("a", None, 15, "s1"),
            complete("a", "s1.1", "A", 20, "s2"),
        ]),
        manual_diamond_a_done()
    );
}

// ------------------------------------------- budgets, stale flags, overrides --

/// Decides `command` on `run` and folds what it records; panics on a refusal.
fn step_by(run: &mut Run, command: Stamped) -> Vec<RunEvent> {
    let events = decide(run, command).expect("command accepted");
    for event in &events {
        run.apply_event(event.clone());
    }
    events
}

fn current_lease(run: &Run, step: &str) -> String {
    run.steps[&sid(step)]
        .lease
        .as_ref()
        .expect("step is running")
        .as_str()
        .to_string()
}

#[test]
fn a_step_retried_by_a_user_gets_its_whole_retry_budget_again() {
    let mut run = Run::default();
    step_by(&mut run, start(retrying(), 10, "s0"));
    for (n, ms) in [(1, 20), (2, 30), (3, 40)] {
        let token = current_lease(&run, "a");
        step_by(&mut run, fail("a", &token, "boom", ms));
        if n < 3 {
            step_by(&mut run, dispatch_due(ms + 60, &format!("d{n}")));
        }
    }
    assert_eq!(run.status, RunStatus::Failed);
    step_by(
        &mut run,
        stamped(
            RunCommand::RetryStep {
                step: sid("a"),
                prompt_override: None,
            },
            200,
            "s9",
        ),
    );
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(run.steps[&sid("a")].attempt, 4);
    let token = current_lease(&run, "a");
    let events = step_by(&mut run, fail("a", &token, "boom", 210));
    assert!(
        events.iter().any(|e| matches!(
            e,
            RunEvent::StepFailed {
                attempt: 4,
                will_retry: true,
                ..
            }
        )),
        "{events:?}"
    );
}

#[test]
fn an_interrupted_attempt_does_not_use_up_the_retry_budget() {
    let one_attempt = definition(json!({"a": {"agent": "echo"}}));
    let mut run = Run::default();
    step_by(&mut run, start(one_attempt, 10, "s0"));
    step_by(&mut run, stamped(RunCommand::Pause, 20, ""));
    let token = current_lease(&run, "a");
    step_by(
        &mut run,
        stamped(
            RunCommand::InterruptStep {
                step: sid("a"),
                lease: lease(&token),
                comments: Vec::new(),
            },
            30,
            "s1",
        ),
    );
    assert_eq!(run.status, RunStatus::Paused);
    assert_eq!(run.steps[&sid("a")].failures, 0);
    step_by(&mut run, stamped(RunCommand::Resume, 40, "s2"));
    assert_eq!(run.steps[&sid("a")].attempt, 2);
}

#[test]
fn a_run_that_fails_while_a_pause_is_pending_keeps_no_stale_pause() {
    let mut run = Run::default();
    step_by(&mut run, start(diamond(), 10, "s0"));
    step_by(&mut run, stamped(RunCommand::Pause, 20, ""));
    let token = current_lease(&run, "a");
    step_by(&mut run, fail("a", &token, "boom", 30));
    assert_eq!(run.status, RunStatus::Failed);
    assert!(!run.pause_requested);
    // Retrying the step reopens the run and runs it at once.
    let events = step_by(
        &mut run,
        stamped(
            RunCommand::RetryStep {
                step: sid("a"),
                prompt_override: None,
            },
            40,
            "s1",
        ),
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, RunEvent::StepDispatched { attempt: 2, .. })));
    assert_eq!(run.status, RunStatus::Running);
}

#[test]
fn a_trigger_without_an_override_keeps_the_one_a_retry_set() {
    let mut run = Run::default();
    let mut command = start(diamond(), 10, "s0");
    if let RunCommand::Start { auto_run, .. } = &mut command.command {
        *auto_run = false;
    }
    step_by(&mut run, command);
    let token = step_by(
        &mut run,
        stamped(
            RunCommand::TriggerStep {
                step: sid("a"),
                prompt_override: None,
            },
            20,
            "s1",
        ),
    );
    assert_eq!(token.len(), 1);
    let token = current_lease(&run, "a");
    step_by(&mut run, complete("a", &token, "v1", 30, "s2"));
    step_by(&mut run, stamped(RunCommand::Pause, 40, ""));
    step_by(
        &mut run,
        stamped(
            RunCommand::RetryStep {
                step: sid("a"),
                prompt_override: Some("shorter".into()),
            },
            50,
            "s3",
        ),
    );
    step_by(&mut run, stamped(RunCommand::Resume, 60, "s4"));
    let events = step_by(
        &mut run,
        stamped(
            RunCommand::TriggerStep {
                step: sid("a"),
                prompt_override: None,
            },
            70,
            "s5",
        ),
    );
    assert!(
        events.iter().any(|e| matches!(
            e,
            RunEvent::StepDispatched { prompt_override: Some(p), attempt: 2, .. } if p == "shorter"
        )),
        "{events:?}"
    );
}

#[test]
fn the_outputs_of_a_step_skipped_since_it_ran_are_not_handed_on() {
    let branching = definition(json!({
        "gate": {"agent": "echo", "review": true, "choices": ["x", "y"]},
        "x": {"agent": "echo", "depends_on": ["gate"],
              "when": {"step": "gate", "output": "choice", "equals": "x"}},
        "join": {"agent": "echo", "depends_on": ["gate", "x"]}
    }));
    let mut run = Run::default();
    step_by(&mut run, start(branching, 10, "s0"));
    let approve = |choice: &str, ms: i64, seed: &str| {
        stamped(
            RunCommand::Approve {
                step: sid("gate"),
                choice: Some(choice.into()),
            },
            ms,
            seed,
        )
    };
    let token = current_lease(&run, "gate");
    step_by(&mut run, complete("gate", &token, "g1", 20, "s1"));
    step_by(&mut run, approve("x", 30, "s2"));
    let token = current_lease(&run, "x");
    step_by(&mut run, complete("x", &token, "x1", 40, "s3"));
    let token = current_lease(&run, "join");
    step_by(&mut run, complete("join", &token, "j1", 50, "s4"));
    assert_eq!(run.status, RunStatus::Completed);
    // Route the other way: x is skipped, and join no longer reads x's output.
    step_by(
        &mut run,
        stamped(
            RunCommand::RetryStep {
                step: sid("gate"),
                prompt_override: None,
            },
            60,
            "s5",
        ),
    );
    let token = current_lease(&run, "gate");
    step_by(&mut run, complete("gate", &token, "g2", 70, "s6"));
    let events = step_by(&mut run, approve("y", 80, "s7"));
    assert_eq!(run.steps[&sid("x")].status, StepStatus::Skipped);
    let reads_of_join = events.iter().find_map(|e| match e {
        RunEvent::StepDispatched { step, reads, .. } if step.as_str() == "join" => {
            Some(reads.clone())
        }
        _ => None,
    });
    assert_eq!(
        reads_of_join,
        Some(reads(&[("gate.choice", 2), ("gate.out", 2)]))
    );
    match run.step_input(&sid("join")) {
        StepInput::Named(named) => {
            assert_eq!(named.get("x"), Some(&InputValue::Outputs(BTreeMap::new())));
        }
        other => panic!("{other:?}"),
    }
}
