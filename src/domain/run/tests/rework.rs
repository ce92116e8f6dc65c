//! Given/when/then: step retry with a new prompt, artifact rollback, and
//! retry budgets across them.

use super::*;

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
            step_by(&mut run, tick(ms + 60, &format!("d{n}")));
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
    if let RunCommand::Start(StartRun { auto_run, .. }) = &mut command.command {
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
