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

fn start(definition: Definition, ms: i64, seed: &str) -> RunCommand {
    RunCommand::Start {
        run_id: RunId::parse("r1").unwrap(),
        template_id: TemplateId::parse("t1").unwrap(),
        template_version: 1,
        definition: Arc::new(definition),
        input: input(),
        retry_of: None,
        at: at(ms),
        lease_seed: seed.into(),
    }
}

fn complete(step: &str, token: &str, value: &str, ms: i64, seed: &str) -> RunCommand {
    RunCommand::CompleteStep {
        step: sid(step),
        lease: lease(token),
        outputs: outputs(value),
        at: at(ms),
        lease_seed: seed.into(),
    }
}

fn fail(step: &str, token: &str, error: &str, ms: i64) -> RunCommand {
    RunCommand::FailStep {
        step: sid(step),
        lease: lease(token),
        error: error.into(),
        at: at(ms),
    }
}

fn dispatch_due(ms: i64, seed: &str) -> RunCommand {
    RunCommand::DispatchDue {
        at: at(ms),
        lease_seed: seed.into(),
    }
}

fn recover(ms: i64, seed: &str) -> RunCommand {
    RunCommand::Recover {
        at: at(ms),
        lease_seed: seed.into(),
    }
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
    ]);
    events
}

/// The diamond where b failed for good at 30 while c ran; c completed at 40
/// and the run failed.
fn diamond_failed() -> Vec<RunEvent> {
    let mut events = diamond_a_done();
    events.extend([
        failed("b", 1, "boom", false, 30),
        completed("c", 1, (1, "C"), &[], 40),
        run_failed("b", "boom", 40),
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
        ]);
}

#[test]
fn completing_a_step_without_outputs_writes_no_artifact() {
    Given::with(())
        .given(diamond_started())
        .when(RunCommand::CompleteStep {
            step: sid("a"),
            lease: lease("s0.1"),
            outputs: Outputs::new(),
            at: at(20),
            lease_seed: "s1".into(),
        })
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![],
                ready: steps(&["b", "c"]),
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
        .when(RunCommand::CompleteStep {
            step: sid("a"),
            lease: lease("s0.1"),
            outputs: [("one", "1"), ("two", "2")]
                .into_iter()
                .map(|(o, v)| (OutputName::parse(o).unwrap(), inline(v)))
                .collect(),
            at: at(20),
            lease_seed: "s1".into(),
        })
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                step: sid("a"),
                attempt: 1,
                artifacts: vec![written("a.one", "1"), written("a.two", "2")],
                ready: steps(&["b"]),
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
        retry_scheduled("a", 3, 50, 80),
        dispatched("a", 3, "s4.1", &[], 130),
    ]);
    Given::with(())
        .given(history)
        .when(fail("a", "s4.1", "broken", 140))
        .then_expect_events(vec![
            failed("a", 3, "broken", false, 140),
            run_failed("a", "broken", 140),
        ]);
}

#[test]
fn a_failure_of_a_step_without_retry_policy_fails_the_run_at_once() {
    Given::with(())
        .given(diamond_started())
        .when(fail("a", "s0.1", "boom", 20))
        .then_expect_events(vec![
            failed("a", 1, "boom", false, 20),
            run_failed("a", "boom", 20),
        ]);
}

#[test]
fn a_terminal_failure_while_a_sibling_runs_does_not_fail_the_run_yet() {
    Given::with(())
        .given(diamond_a_done())
        .when(fail("b", "s1.1", "boom", 30))
        .then_expect_events(vec![failed("b", 1, "boom", false, 30)]);
}

#[test]
fn completing_the_last_running_sibling_of_a_failed_step_fails_the_run_and_dispatches_nothing() {
    let mut history = diamond_a_done();
    history.push(failed("b", 1, "boom", false, 30));
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s3"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
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
        ])
        .when(complete("a", "s0.1", "A", 30, "s2"))
        .then_expect_events(vec![
            completed("a", 1, (1, "A"), &[], 30),
            run_failed("b", "boom", 30),
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
        ])
        .when(fail("a", "s0.1", "flaky", 30))
        .then_expect_events(vec![
            failed("a", 1, "flaky", false, 30),
            run_failed("b", "boom", 30),
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
            retry_scheduled("a", 2, 50, 20),
        ])
        .when(fail("b", "s0.2", "boom", 30))
        .then_expect_events(vec![
            failed("b", 1, "boom", false, 30),
            run_failed("b", "boom", 30),
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
    history.push(failed("b", 1, "boom", false, 30));
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
fn drive(commands: Vec<RunCommand>) -> (Run, Vec<RunEvent>) {
    let mut state = Run::default();
    let mut log = Vec::new();
    for command in commands {
        let before = state.clone();
        let events = state
            .decide(command.clone())
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

fn pause(ms: i64) -> RunCommand {
    RunCommand::Pause { at: at(ms) }
}

fn resume(ms: i64, seed: &str) -> RunCommand {
    RunCommand::Resume {
        at: at(ms),
        lease_seed: seed.into(),
    }
}

fn cancel(reason: Option<&str>, ms: i64) -> RunCommand {
    RunCommand::Cancel {
        reason: reason.map(Into::into),
        at: at(ms),
    }
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
    ]);
    events
}

/// The retrying pair with a's retry pending (nothing runs), paused at 30.
fn retrying_paused() -> Vec<RunEvent> {
    let mut events = retrying_first_attempt_failed();
    events.extend([pause_requested(30), run_paused(30)]);
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
        .then_expect_events(vec![pause_requested(30), run_paused(30)]);
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
            retry_scheduled("a", 2, 50, 20),
            run_paused(20),
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
            run_failed("a", "boom", 20),
        ]);
}

#[test]
fn completing_the_last_running_sibling_of_a_failed_step_while_pausing_fails_the_run() {
    let mut history = diamond_pausing();
    history.push(failed("b", 1, "boom", false, 30));
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
        ]);
}

#[test]
fn pausing_a_failing_run_while_a_sibling_runs_only_requests_the_pause() {
    let mut history = diamond_a_done();
    history.push(failed("b", 1, "boom", false, 30));
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
        .then_expect_events(vec![run_resumed(40)]);
}

#[test]
fn a_retry_of_a_resumed_run_is_dispatched_once_due() {
    let mut history = retrying_paused();
    history.push(run_resumed(40));
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
        .then_expect_events(vec![run_resumed(80), dispatched("a", 2, "s4.1", &[], 80)]);
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
    history.extend([cancel_requested(None, 45), run_cancelled(None, 45)]);
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
        .then_expect_events(vec![cancel_requested(None, 30), run_cancelled(None, 30)]);
}

#[test]
fn cancelling_a_paused_run_cancels_it_at_once() {
    Given::with(())
        .given(diamond_paused())
        .when(cancel(Some("enough"), 45))
        .then_expect_events(vec![
            cancel_requested(Some("enough"), 45),
            run_cancelled(Some("enough"), 45),
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
            run_cancelled(Some("enough"), 20),
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
        .then_expect_events(vec![abandoned("a", 1, "flaky", 20)]);
}

#[test]
fn a_terminal_failure_while_cancelling_ends_cancelled_once_nothing_runs() {
    let mut history = diamond_cancelling();
    history.push(abandoned("b", 1, "boom", 30));
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_cancelled(Some("enough"), 40),
        ]);
}

#[test]
fn a_failure_without_retries_while_cancelling_does_not_fail_the_run() {
    let history = diamond_cancelling();
    Given::with(())
        .given(history)
        .when(fail("b", "s1.1", "boom", 30))
        .then_expect_events(vec![abandoned("b", 1, "boom", 30)]);
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
            run_cancelled(Some("enough"), 20),
        ]);
}

#[test]
fn cancelling_a_failing_run_still_fails_it_once_nothing_runs() {
    let mut history = diamond_a_done();
    history.extend([
        failed("b", 1, "boom", false, 30),
        cancel_requested(Some("enough"), 35),
    ]);
    Given::with(())
        .given(history)
        .when(complete("c", "s1.2", "C", 40, "s4"))
        .then_expect_events(vec![
            completed("c", 1, (1, "C"), &[], 40),
            run_failed("b", "boom", 40),
        ]);
}

#[test]
fn cancelling_a_failing_run_while_a_sibling_runs_only_requests_the_cancel() {
    let mut history = diamond_a_done();
    history.push(failed("b", 1, "boom", false, 30));
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
        dispatched("d", 1, "s5.1", &[("b.out", 1), ("c.out", 1)], 50),
        pause_requested(55),
        cancel_requested(Some("enough"), 60),
        completed("d", 1, (1, "D"), &[], 70),
        run_cancelled(Some("enough"), 70),
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
        run_failed("a", "boom", 20),
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
        .when(RunCommand::Start {
            run_id: RunId::parse("r2").unwrap(),
            template_id: source.template_id,
            template_version: source.template_version,
            definition: source.definition,
            input: source.input,
            retry_of: Some(source.run_id),
            at: at(30),
            lease_seed: "s".into(),
        })
        .then_expect_events(vec![
            RunEvent::RunStarted {
                run_id: RunId::parse("r2").unwrap(),
                template_id: TemplateId::parse("t1").unwrap(),
                template_version: 1,
                definition: def,
                input: input(),
                ready: steps(&["a"]),
                retry_of: Some(RunId::parse("r1").unwrap()),
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
