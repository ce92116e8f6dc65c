//! Given/when/then: users' messages and the instructions handed to steps.

use super::*;

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
            buttons: Vec::new(),
            input: None,
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
        .when(tick(130, "s5"))
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
