//! Replays: folding a run's log rebuilds exactly the state that its
//! decisions worked on.

use super::*;

// ------------------------------------------------------------------ replay --

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
        tick(70, "s2"),
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
