//! Given/when/then: starting a run and recording agents' results
//! (completions, failures, interruptions, comments), due retries and
//! recovery.

use super::*;

// ------------------------------------------------------------------- Start --

#[test]
fn starting_a_diamond_dispatches_only_its_root() {
    Given::with(())
        .given_no_previous_events()
        .when(start(diamond(), 10, "s0"))
        .then_expect_events(vec![
            run_started(diamond(), &["a"], 10),
            RunEvent::StepDispatched {
                evaluating: false,
                step: sid("a"),
                attempt: 1,
                lease: lease("s0.1"),
                reads: BTreeMap::new(),
                recovered: false,
                prompt_override: None,
                instructions: vec![],
                imports: BTreeMap::new(),
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
                latest: Default::default(),
                final_score: None,
                usage: None,
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
                buttons: Vec::new(),
                input: None,
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
                usage: None,
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: Outputs::new(),
                comments: Vec::new(),
                message: None,
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                latest: Default::default(),
                final_score: None,
                usage: None,
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
                usage: None,
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: [("one", "1"), ("two", "2")]
                    .into_iter()
                    .map(|(o, v)| (OutputName::parse(o).unwrap(), inline(v)))
                    .collect(),
                comments: Vec::new(),
                message: None,
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            RunEvent::StepCompleted {
                latest: Default::default(),
                final_score: None,
                usage: None,
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
                retryable: true,
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
                buttons: Vec::new(),
                input: None,
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
        .when(tick(70, "s2"))
        .then_expect_events(vec![dispatched("a", 2, "s2.1", &[], 70)]);
}

#[test]
fn a_retry_past_its_due_time_is_dispatched() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(tick(500, "s2"))
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
        .when(tick(35, "s3"))
        .then_expect_events(vec![dispatched("b", 2, "s3.1", &[("a.out", 1)], 35)]);
}

#[test]
fn nothing_is_dispatched_before_a_retry_is_due() {
    Given::with(())
        .given(retrying_first_attempt_failed())
        .when(tick(69, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn nothing_is_dispatched_when_no_step_is_ready() {
    Given::with(())
        .given(diamond_a_done())
        .when(tick(25, "s2"))
        .then_expect_events(vec![]);
}

#[test]
fn dispatching_due_steps_of_a_completed_run_is_refused() {
    Given::with(())
        .given(diamond_completed())
        .when(tick(60, "s5"))
        .then_expect_error(RunError::Finished("completed"));
}

#[test]
fn dispatching_due_steps_of_a_failed_run_is_refused() {
    Given::with(())
        .given(diamond_failed())
        .when(tick(50, "s5"))
        .then_expect_error(RunError::Finished("failed"));
}

#[test]
fn dispatching_due_steps_of_a_run_never_started_is_refused() {
    Given::with(())
        .given_no_previous_events()
        .when(tick(10, "s0"))
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
                evaluating: false,
                step: sid("b"),
                attempt: 1,
                lease: lease("s2.1"),
                reads: reads(&[("a.out", 1)]),
                recovered: true,
                prompt_override: None,
                instructions: vec![],
                imports: BTreeMap::new(),
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
            buttons: Vec::new(),
            input: None,
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
        buttons: Vec::new(),
        input: None,
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
