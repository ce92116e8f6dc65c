//! Given/when/then: agents' messages with buttons and the clicks that
//! answer them (seed 004: "How do you want your track?").

use super::*;

/// track_actions asks; a click runs track_ai_description or upload; mix
/// runs after either.
fn track() -> Definition {
    definition(json!({
        "track_actions": {"agent": "echo"},
        "track_ai_description": {"agent": "echo", "depends_on": ["track_actions"]},
        "upload": {"agent": "echo", "depends_on": ["track_actions"]},
        "mix": {"agent": "echo", "depends_on": ["track_ai_description", "upload"]}
    }))
}

fn button(id: &str, next_step: Option<&str>, user_message: Option<&str>) -> Button {
    Button {
        id: id.into(),
        label: format!("Choose {id}"),
        value: id.into(),
        user_message: user_message.map(Into::into),
        next_step: next_step.map(sid),
    }
}

/// The seed's question: "Generate with AI" or "Upload".
fn question() -> AgentMessage {
    AgentMessage {
        content: "How do you want your track?".into(),
        buttons: vec![
            button(
                "ai",
                Some("track_ai_description"),
                Some("I want to generate an AI track"),
            ),
            button("upload", Some("upload"), None),
        ],
        input: None,
    }
}

fn complete_with(step: &str, token: &str, message: AgentMessage, ms: i64) -> Stamped {
    stamped(
        RunCommand::CompleteStep {
            usage: None,
            step: sid(step),
            lease: lease(token),
            outputs: outputs("T"),
            comments: Vec::new(),
            message: Some(message),
        },
        ms,
        "s1",
    )
}

fn click(message: u32, button: &str, key: Option<&str>, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::ClickButton {
            message,
            button: button.into(),
            idempotency_key: key.map(Into::into),
        },
        ms,
        seed,
    )
}

fn agent_message(number: u32, step: &str, message: AgentMessage, ms: i64) -> RunEvent {
    RunEvent::MessagePosted {
        message: number,
        author: Author::Agent,
        action: Action::Comment,
        content: message.content,
        metadata: Value::Null,
        step: Some(sid(step)),
        idempotency_key: None,
        status: MessageStatus::Processed,
        reason: None,
        buttons: message.buttons,
        input: message.input,
        at: at(ms),
    }
}

/// track_actions started at 10 and asked at 20; it waits for the click.
fn asked() -> Vec<RunEvent> {
    vec![
        run_started(track(), &["track_actions"], 10),
        dispatched("track_actions", 1, "s0.1", &[], 10),
        agent_message(1, "track_actions", question(), 20),
        RunEvent::StepAwaitingInput {
            step: sid("track_actions"),
            attempt: 1,
            artifacts: vec![written("track_actions.out", 1, "T")],
            usage: None,
            message: 1,
            at: at(20),
        },
    ]
}

fn clicked_ai() -> Vec<RunEvent> {
    let mut events = asked();
    events.extend(clicked_ai_events());
    events
}

fn clicked_ai_events() -> Vec<RunEvent> {
    vec![
        RunEvent::ButtonClicked {
            message: 1,
            button: "ai".into(),
            value: "ai".into(),
            step: sid("track_actions"),
            idempotency_key: Some("k1".into()),
            at: at(30),
        },
        RunEvent::MessagePosted {
            message: 2,
            author: Author::User,
            action: Action::Comment,
            content: "I want to generate an AI track".into(),
            metadata: Value::Null,
            step: Some(sid("track_actions")),
            idempotency_key: None,
            status: MessageStatus::Processed,
            reason: None,
            buttons: Vec::new(),
            input: None,
            at: at(30),
        },
        RunEvent::StepCompleted {
            latest: Default::default(),
            final_score: None,
            usage: None,
            step: sid("track_actions"),
            attempt: 1,
            artifacts: vec![written("track_actions.choice", 1, "ai")],
            ready: steps(&["track_ai_description"]),
            skipped: steps(&["upload"]),
            at: at(30),
        },
        dispatched(
            "track_ai_description",
            1,
            "s2.1",
            &[("track_actions.choice", 1), ("track_actions.out", 1)],
            30,
        ),
    ]
}

#[test]
fn a_message_whose_buttons_route_is_posted_and_the_step_waits_for_the_click() {
    Given::with(())
        .given(vec![
            run_started(track(), &["track_actions"], 10),
            dispatched("track_actions", 1, "s0.1", &[], 10),
        ])
        .when(complete_with("track_actions", "s0.1", question(), 20))
        .then_expect_events(asked()[2..].to_vec());
}

#[test]
fn a_click_posts_the_users_message_writes_the_choice_runs_its_step_and_skips_the_other() {
    Given::with(())
        .given(asked())
        .when(click(1, "ai", Some("k1"), 30, "s2"))
        .then_expect_events(clicked_ai_events());
}

#[test]
fn a_step_the_click_routed_away_from_stays_skipped_when_its_join_is_decided() {
    let (run, _) = drive(vec![
        start(track(), 10, "s0"),
        complete_with("track_actions", "s0.1", question(), 20),
        click(1, "ai", None, 30, "s2"),
        complete("track_ai_description", "s2.1", "D", 40, "s3"),
    ]);
    let status = |step: &str| run.steps[&sid(step)].status;
    assert_eq!(status("upload"), StepStatus::Skipped);
    assert_eq!(status("track_ai_description"), StepStatus::Completed);
    // The join runs: one of its dependencies ran.
    assert_eq!(status("mix"), StepStatus::Running);
}

#[test]
fn a_second_click_is_refused_and_the_same_click_under_its_key_records_nothing() {
    Given::with(())
        .given(clicked_ai())
        .when(click(1, "upload", None, 40, "s3"))
        .then_expect_error(RunError::AlreadyClicked {
            message: 1,
            button: "ai".into(),
        });
    Given::with(())
        .given(clicked_ai())
        .when(click(1, "ai", Some("k1"), 40, "s3"))
        .then_expect_events(vec![]);
    Given::with(())
        .given(clicked_ai())
        .when(click(1, "ai", Some("k2"), 40, "s3"))
        .then_expect_error(RunError::AlreadyClicked {
            message: 1,
            button: "ai".into(),
        });
}

#[test]
fn a_click_on_no_such_button_or_message_or_on_a_message_without_buttons_is_refused() {
    Given::with(())
        .given(asked())
        .when(click(1, "maybe", None, 30, "s2"))
        .then_expect_error(RunError::UnknownButton {
            message: 1,
            button: "maybe".into(),
            buttons: vec!["ai".into(), "upload".into()],
        });
    Given::with(())
        .given(asked())
        .when(click(7, "ai", None, 30, "s2"))
        .then_expect_error(RunError::MessageNotFound(7));
    let mut commented = asked();
    commented.push(posted(
        2,
        Action::Comment,
        "nice",
        MessageStatus::Processed,
        None,
        25,
    ));
    Given::with(())
        .given(commented)
        .when(click(2, "ai", None, 30, "s2"))
        .then_expect_error(RunError::NoButtons(2));
}

#[test]
fn a_message_that_routes_to_a_step_that_does_not_depend_on_the_asker_is_refused() {
    let mut wrong = question();
    wrong.buttons[1].next_step = Some(sid("mix"));
    Given::with(())
        .given(vec![
            run_started(track(), &["track_actions"], 10),
            dispatched("track_actions", 1, "s0.1", &[], 10),
        ])
        .when(complete_with("track_actions", "s0.1", wrong, 20))
        .then_expect_error(RunError::InvalidMessage {
            step: sid("track_actions"),
            reason: "button 'upload' routes to 'mix', which is not a step that depends on \
                     'track_actions'"
                .into(),
        });
    let mut twice = question();
    twice.buttons[1].id = "ai".into();
    let refused = decide(
        &replay(&asked()[..2]),
        complete_with("track_actions", "s0.1", twice, 20),
    );
    assert!(
        matches!(refused, Err(RunError::InvalidMessage { ref reason, .. }) if reason.contains("used twice")),
        "{refused:?}"
    );
}

#[test]
fn a_step_that_waits_for_a_click_needs_a_message_with_buttons() {
    let waiting = definition(json!({
        "ask": {"agent": "echo", "wait_for_click": true},
        "next": {"agent": "echo", "depends_on": ["ask"]}
    }));
    let started = vec![
        run_started(waiting.clone(), &["ask"], 10),
        dispatched("ask", 1, "s0.1", &[], 10),
    ];
    let refused = decide(&replay(&started), complete("ask", "s0.1", "A", 20, "s1"));
    assert!(
        matches!(refused, Err(RunError::InvalidMessage { .. })),
        "{refused:?}"
    );
    // With buttons that do not route, it waits all the same; the click
    // completes it and its dependant runs.
    let plain = AgentMessage {
        content: "Ready?".into(),
        buttons: vec![button("yes", None, Some("Go"))],
        input: Some(MessageInput {
            file: false,
            prompt: true,
        }),
    };
    let (run, log) = drive(vec![
        start(waiting, 10, "s0"),
        complete_with("ask", "s0.1", plain, 20),
        click(1, "yes", None, 30, "s2"),
    ]);
    assert_eq!(run.steps[&sid("ask")].status, StepStatus::Completed);
    assert_eq!(run.steps[&sid("next")].status, StepStatus::Running);
    assert!(log
        .iter()
        .any(|e| matches!(e, RunEvent::StepAwaitingInput { message: 1, .. })));
    assert_eq!(replay(&log), run, "replay reproduces the state");
}

#[test]
fn a_message_with_buttons_on_a_step_that_does_not_wait_completes_it_and_a_click_is_recorded() {
    let def = definition(json!({
        "ask": {"agent": "echo"},
        "next": {"agent": "echo", "depends_on": ["ask"]}
    }));
    let plain = AgentMessage {
        content: "Rate this".into(),
        buttons: vec![button("up", None, Some("Nice")), button("down", None, None)],
        input: None,
    };
    let (run, _) = drive(vec![
        start(def, 10, "s0"),
        complete_with("ask", "s0.1", plain, 20),
    ]);
    assert_eq!(run.steps[&sid("ask")].status, StepStatus::Completed);
    let events = decide(&run, click(1, "up", None, 30, "s2")).expect("recorded");
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(&events[0], RunEvent::ButtonClicked { button, .. } if button == "up"));
    assert!(
        matches!(&events[1], RunEvent::MessagePosted { author: Author::User, content, .. } if content == "Nice")
    );
}

#[test]
fn running_the_asking_step_again_closes_its_question_and_forgets_its_routes() {
    let (run, log) = drive(vec![
        start(track(), 10, "s0"),
        complete_with("track_actions", "s0.1", question(), 20),
        click(1, "ai", None, 30, "s2"),
        complete("track_ai_description", "s2.1", "D", 40, "s3"),
        stamped(
            RunCommand::RetryStep {
                step: sid("track_actions"),
                prompt_override: None,
            },
            50,
            "s4",
        ),
    ]);
    assert!(run.thread.asks.is_empty(), "{:?}", run.thread.asks);
    assert!(run.routes.is_empty(), "{:?}", run.routes);
    assert_eq!(replay(&log), run);
    // The old question cannot be answered any more.
    assert_eq!(
        decide(&run, click(1, "upload", None, 60, "s5")),
        Err(RunError::NoButtons(1))
    );
}

#[test]
fn a_review_steps_message_cannot_route() {
    let def = definition(json!({
        "track_actions": {"agent": "echo", "review": true},
        "track_ai_description": {"agent": "echo", "depends_on": ["track_actions"]},
        "upload": {"agent": "echo", "depends_on": ["track_actions"]}
    }));
    let started = vec![
        run_started(def, &["track_actions"], 10),
        dispatched("track_actions", 1, "s0.1", &[], 10),
    ];
    let refused = decide(
        &replay(&started),
        complete_with("track_actions", "s0.1", question(), 20),
    );
    assert!(
        matches!(refused, Err(RunError::InvalidMessage { ref reason, .. }) if reason.contains("review")),
        "{refused:?}"
    );
}

#[test]
fn a_question_whose_step_is_sent_back_by_a_retry_upstream_cannot_be_answered() {
    let def = definition(json!({
        "first": {"agent": "echo"},
        "track_actions": {"agent": "echo", "depends_on": ["first"]},
        "track_ai_description": {"agent": "echo", "depends_on": ["track_actions"]},
        "upload": {"agent": "echo", "depends_on": ["track_actions"]}
    }));
    let (run, log) = drive(vec![
        start(def, 10, "s0"),
        complete("first", "s0.1", "F", 20, "s1"),
        complete_with("track_actions", "s1.1", question(), 30),
        stamped(RunCommand::Pause, 35, "s3"),
        stamped(
            RunCommand::RetryStep {
                step: sid("first"),
                prompt_override: None,
            },
            40,
            "s4",
        ),
    ]);
    assert_eq!(run.steps[&sid("track_actions")].status, StepStatus::Pending);
    assert!(run.thread.asks.is_empty() && run.routes.is_empty());
    assert_eq!(replay(&log), run);
    assert_eq!(
        decide(&run, click(1, "ai", None, 50, "s5")),
        Err(RunError::NoButtons(1))
    );
}
