//! Given/when/then: review gates and manual mode.

use super::*;

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
                usage: None,
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
