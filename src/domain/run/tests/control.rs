//! Given/when/then: pause, resume, cancel, redirect and run retry.

use super::*;

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
        .when(tick(45, "s5"))
        .then_expect_events(vec![]);
}

#[test]
fn a_due_retry_is_not_dispatched_while_paused() {
    Given::with(())
        .given(retrying_paused())
        .when(tick(70, "s3"))
        .then_expect_events(vec![]);
}

#[test]
fn a_due_retry_is_not_dispatched_while_pausing() {
    let mut history = retrying_and_plain_a_failed_once();
    history.push(pause_requested(30));
    Given::with(())
        .given(history)
        .when(tick(70, "s3"))
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
        .when(tick(70, "s5"))
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
        .when(tick(70, "s3"))
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
        .when(tick(50, "s5"))
        .then_expect_error(RunError::Finished("cancelled"));
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
            RunCommand::Start(StartRun {
                run_id: RunId::parse("r2").unwrap(),
                template_id: source.template_id,
                template_version: source.template_version,
                definition: source.definition,
                input: source.input,
                retry_of: Some(source.run_id),
                redirected_from: None,
                auto_run: source.auto_run,
                owner: None,
                imports: Vec::new(),
            }),
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
                owner: None,
                imports: Vec::new(),
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
                owner: None,
                imports: Vec::new(),
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
                owner: None,
                imports: Vec::new(),
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
