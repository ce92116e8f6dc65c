//! Given/when/then: refine loops (producer → evaluator → reviser).

use super::*;

/// `draft` refines with `judge`, 3 attempts, threshold 0.8, then `publish`.
fn refining(on_exhausted: &str) -> Definition {
    definition(json!({
        "draft": {"agent": "echo", "refine": {
            "evaluator": "judge", "evaluator_config": {"keywords": ["owl"]},
            "max_attempts": 3, "pass_threshold": 0.8, "on_exhausted": on_exhausted
        }, "retry": {"max_attempts": 2}},
        "publish": {"agent": "echo", "depends_on": ["draft"]}
    }))
}

fn judged(score: f64, feedback: &str) -> Outputs {
    [
        (
            OutputName::parse("score").unwrap(),
            ArtifactContent::Inline(json!(score)),
        ),
        (
            OutputName::parse("feedback").unwrap(),
            ArtifactContent::Inline(json!(feedback)),
        ),
    ]
    .into_iter()
    .collect()
}

fn complete_with(step: &str, token: &str, outputs: Outputs, ms: i64, seed: &str) -> Stamped {
    stamped(
        RunCommand::CompleteStep {
            step: sid(step),
            lease: lease(token),
            outputs,
            usage: None,
            comments: Vec::new(),
            message: None,
        },
        ms,
        seed,
    )
}

/// A run driven command by command; each command must be accepted.
struct Driver {
    log: Vec<RunEvent>,
    effects: Vec<Effect>,
}

impl Driver {
    fn start(definition: Definition) -> Self {
        let mut d = Self {
            log: Vec::new(),
            effects: Vec::new(),
        };
        d.when(start(definition, 10, "s0"));
        d
    }

    fn state(&self) -> Run {
        state_after(self.log.clone())
    }

    /// Decides `command`; its events (and keeps its effects).
    fn when(&mut self, command: Stamped) -> Vec<RunEvent> {
        let decided = self
            .state()
            .decide_with_effects(command.command, &command.stamp)
            .expect("command accepted");
        self.log.extend(decided.events.clone());
        self.effects = decided.effects;
        decided.events
    }

    /// The lease of `step`'s current dispatch.
    fn lease(&self, step: &str) -> String {
        self.state().steps[&sid(step)]
            .lease
            .clone()
            .expect("running")
            .to_string()
    }

    /// The task the last command dispatched for `step`.
    fn task(&self, step: &str) -> Task {
        self.effects
            .iter()
            .find_map(|e| match e {
                Effect::Dispatch(t) if t.step == sid(step) => Some(*t.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no dispatch of {step}: {:?}", self.effects))
    }

    /// The producer of `draft` writes `text`.
    fn produce(&mut self, text: &str, ms: i64) -> Vec<RunEvent> {
        let token = self.lease("draft");
        self.when(complete("draft", &token, text, ms, &format!("p{ms}")))
    }

    /// The evaluator of `draft` scores.
    fn evaluate(&mut self, score: f64, feedback: &str, ms: i64) -> Vec<RunEvent> {
        let token = self.lease("draft");
        self.when(complete_with(
            "draft",
            &token,
            judged(score, feedback),
            ms,
            &format!("e{ms}"),
        ))
    }
}

/// The events that are not the thread's.
fn story(events: &[RunEvent]) -> Vec<RunEvent> {
    events
        .iter()
        .filter(|e| {
            !matches!(
                e,
                RunEvent::MessagePosted { .. } | RunEvent::MessageStatusChanged { .. }
            )
        })
        .cloned()
        .collect()
}

fn types(events: &[RunEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| {
            !matches!(
                e,
                RunEvent::MessagePosted { .. } | RunEvent::MessageStatusChanged { .. }
            )
        })
        .map(cqrs_es::DomainEvent::event_type)
        .collect()
}

#[test]
fn a_produced_attempt_is_scored_by_the_evaluator_with_the_same_attempt_number() {
    let mut run = Driver::start(refining("fail"));
    let events = run.produce("draft one", 20);
    assert_eq!(types(&events), ["StepProduced", "StepDispatched"]);
    let RunEvent::StepDispatched {
        attempt,
        evaluating,
        ..
    } = &story(&events)[1]
    else {
        panic!()
    };
    assert_eq!((*attempt, *evaluating), (1, true));
    let task = run.task("draft");
    assert_eq!(task.agent.as_str(), "judge");
    assert_eq!(task.config, json!({"keywords": ["owl"]}));
    assert_eq!(
        task.input,
        StepInput::Named(BTreeMap::from([(
            "out".to_string(),
            InputValue::Artifact(inline("draft one"))
        )]))
    );
    // The producer's version is written, and is latest, but nothing
    // downstream runs yet.
    let state = run.state();
    assert_eq!(state.artifacts[&artifact("draft.out")].latest, 1);
    assert_eq!(state.steps[&sid("publish")].status, StepStatus::Pending);
}

#[test]
fn an_attempt_under_the_threshold_runs_again_with_the_feedback_and_the_third_passes() {
    let mut run = Driver::start(refining("fail"));
    run.produce("draft one", 20);
    let events = run.evaluate(0.3, "mention owls", 30);
    assert_eq!(types(&events), ["StepEvaluated", "StepDispatched"]);
    assert!(matches!(
        &story(&events)[0],
        RunEvent::StepEvaluated { attempt: 1, passed: false, score, feedback, .. }
            if *score == 0.3 && feedback == "mention owls"
    ));
    let task = run.task("draft");
    assert_eq!((task.attempt, task.agent.as_str()), (2, "echo"));
    assert_eq!(task.instructions, ["Feedback on attempt 1: mention owls"]);
    run.produce("draft two", 40);
    run.evaluate(0.6, "more owls", 50);
    assert_eq!(run.task("draft").attempt, 3);
    run.produce("owls, owls", 60);
    let events = run.evaluate(0.9, "good", 70);
    assert_eq!(
        types(&events),
        ["StepEvaluated", "StepCompleted", "StepDispatched"]
    );
    let RunEvent::StepCompleted {
        final_score,
        latest,
        attempt,
        ..
    } = &story(&events)[1]
    else {
        panic!()
    };
    assert_eq!((*final_score, *attempt), (Some(0.9), 3));
    assert!(
        latest.is_empty(),
        "the passing attempt's versions are latest already"
    );
    let state = run.state();
    let out = &state.artifacts[&artifact("draft.out")];
    assert_eq!((out.latest, out.versions.len()), (3, 3));
    assert_eq!(state.steps[&sid("draft")].status, StepStatus::Completed);
    // publish reads the passing version.
    let task = run.task("publish");
    assert_eq!(
        task.input,
        StepInput::Named(BTreeMap::from([(
            "draft".to_string(),
            InputValue::Outputs(BTreeMap::from([("out".to_string(), inline("owls, owls"))]))
        )]))
    );
}

#[test]
fn a_loop_that_never_passes_fails_the_step_when_configured_to() {
    let mut run = Driver::start(refining("fail"));
    for (n, ms) in [(1, 20), (2, 40), (3, 60)] {
        run.produce(&format!("draft {n}"), ms);
        let events = run.evaluate(0.1 * f64::from(n), "no", ms + 10);
        if n == 3 {
            assert_eq!(types(&events), ["StepEvaluated", "StepFailed", "RunFailed"]);
            let RunEvent::StepFailed {
                error,
                will_retry,
                retryable,
                ..
            } = &story(&events)[1]
            else {
                panic!()
            };
            assert_eq!(
                error,
                "refine: none of 3 attempts reached the threshold 0.8 (the best scored 0.30000000000000004 at attempt 3)"
            );
            assert!(!will_retry && !retryable);
        }
    }
}

#[test]
fn a_loop_that_accepts_its_best_completes_with_the_best_scoring_versions_as_latest() {
    let mut run = Driver::start(refining("accept_best"));
    run.produce("draft 1", 20);
    run.evaluate(0.5, "no", 30);
    run.produce("draft 2", 40);
    run.evaluate(0.7, "closer", 50);
    run.produce("draft 3", 60);
    let events = run.evaluate(0.4, "worse", 70);
    assert_eq!(
        types(&events),
        ["StepEvaluated", "StepCompleted", "StepDispatched"]
    );
    let RunEvent::StepCompleted {
        final_score,
        latest,
        ..
    } = &story(&events)[1]
    else {
        panic!()
    };
    assert_eq!(*final_score, Some(0.7));
    assert_eq!(latest, &BTreeMap::from([(artifact("draft.out"), 2)]));
    assert_eq!(run.state().artifacts[&artifact("draft.out")].latest, 2);
    assert_eq!(
        run.task("publish").input,
        StepInput::Named(BTreeMap::from([(
            "draft".to_string(),
            InputValue::Outputs(BTreeMap::from([("out".to_string(), inline("draft 2"))]))
        )]))
    );
}

#[test]
fn an_evaluator_without_a_score_is_a_failure_that_spends_the_retry_budget_and_is_retried_as_the_same_attempt(
) {
    let mut run = Driver::start(refining("fail"));
    run.produce("draft", 20);
    let token = run.lease("draft");
    let events = run.when(complete("draft", &token, "not a score", 30, "e"));
    assert_eq!(types(&events), ["StepFailed", "StepRetryScheduled"]);
    let RunEvent::StepFailed { error, .. } = &story(&events)[0] else {
        panic!()
    };
    assert!(error.contains("no score"), "{error}");
    assert!(
        events.iter().any(|e| matches!(
            e,
            RunEvent::StepRetryScheduled {
                next_attempt: 1,
                ..
            }
        )),
        "{events:?}"
    );
    let events = run.when(tick(40, "t"));
    let RunEvent::StepDispatched {
        attempt,
        evaluating,
        ..
    } = &story(&events)[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*attempt, *evaluating), (1, true));
    assert_eq!(run.task("draft").agent.as_str(), "judge");
}

#[test]
fn a_producer_failure_retries_as_the_next_attempt_and_the_loop_goes_on() {
    let mut run = Driver::start(refining("fail"));
    let token = run.lease("draft");
    run.when(fail("draft", &token, "flaky", 20));
    let events = run.when(tick(30, "t"));
    let RunEvent::StepDispatched {
        attempt,
        evaluating,
        ..
    } = &story(&events)[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!((*attempt, *evaluating), (2, false));
    run.produce("owls", 40);
    let events = run.evaluate(1.0, "", 50);
    assert_eq!(
        types(&events),
        ["StepEvaluated", "StepCompleted", "StepDispatched"]
    );
}

#[test]
fn feedback_names_the_attempt_it_scored_even_after_a_failed_attempt_between() {
    let mut run = Driver::start(refining("fail"));
    run.produce("cats", 20);
    run.evaluate(0.0, "mention owls", 30);
    // Attempt 2 gets attempt 1's feedback, then fails; attempt 3 gets it
    // again, still naming attempt 1.
    assert_eq!(
        run.task("draft").instructions,
        ["Feedback on attempt 1: mention owls"]
    );
    let token = run.lease("draft");
    run.when(fail("draft", &token, "flaky", 40));
    run.when(tick(50, "t"));
    let task = run.task("draft");
    assert_eq!(task.attempt, 3);
    assert_eq!(task.instructions, ["Feedback on attempt 1: mention owls"]);
}

#[test]
fn a_pause_while_the_producer_runs_holds_the_evaluator_until_resume() {
    let mut run = Driver::start(refining("fail"));
    run.when(pause(15));
    let events = run.produce("draft", 20);
    assert_eq!(types(&events), ["StepProduced", "RunPaused"]);
    let events = run.when(resume(30, "r"));
    assert!(
        events.iter().any(|e| matches!(
            e,
            RunEvent::StepDispatched {
                evaluating: true,
                ..
            }
        )),
        "{events:?}"
    );
    assert_eq!(run.task("draft").agent.as_str(), "judge");
}

#[test]
fn a_step_retry_starts_a_new_round_of_the_loop() {
    let mut run = Driver::start(refining("fail"));
    run.produce("a", 20);
    run.evaluate(0.9, "ok", 30);
    let token = run.lease("publish");
    run.when(complete("publish", &token, "p", 40, "x"));
    assert_eq!(run.state().status, RunStatus::Completed);
    run.when(retry_step("draft", Some("be bolder"), 50, "y"));
    let round = &run.state().steps[&sid("draft")].refine;
    assert_eq!((round.evaluated, round.evaluating), (0, false));
    assert!(round.feedback.is_none());
    let task = run.task("draft");
    assert_eq!(
        (task.attempt, task.prompt_override.as_deref()),
        (2, Some("be bolder"))
    );
    assert!(
        task.instructions.is_empty(),
        "no feedback from the last round"
    );
}

#[test]
fn a_replay_of_a_refined_run_rebuilds_the_same_state_and_scores() {
    let mut run = Driver::start(refining("accept_best"));
    run.produce("1", 20);
    run.evaluate(0.2, "a", 30);
    run.produce("2", 40);
    run.evaluate(0.9, "b", 50);
    let replayed = replay(&run.log);
    assert_eq!(replayed, run.state());
    let scores: Vec<f64> = run
        .log
        .iter()
        .filter_map(|e| match e {
            RunEvent::StepEvaluated { score, .. } => Some(*score),
            _ => None,
        })
        .collect();
    assert_eq!(scores, [0.2, 0.9]);
}

#[test]
fn bad_refine_loops_are_refused_naming_the_step() {
    let agents: std::collections::BTreeSet<String> =
        ["echo", "judge"].into_iter().map(String::from).collect();
    let check = |refine: Value, review: bool| {
        Definition::parse_and_validate(
            &json!({"steps": {"s": {"agent": "echo", "review": review, "refine": refine}}}),
            &agents,
        )
    };
    let ok = json!({"evaluator": "judge", "max_attempts": 3, "pass_threshold": 0.5});
    assert!(check(ok.clone(), false).is_ok());
    for (refine, review, code) in [
        (
            json!({"evaluator": "nope", "max_attempts": 3, "pass_threshold": 0.5}),
            false,
            "invalid_refine",
        ),
        (
            json!({"evaluator": "judge", "max_attempts": 0, "pass_threshold": 0.5}),
            false,
            "invalid_refine",
        ),
        (
            json!({"evaluator": "judge", "max_attempts": 3, "pass_threshold": 1.5}),
            false,
            "invalid_refine",
        ),
        (ok, true, "invalid_refine"),
        (
            json!({"evaluator": "judge", "max_attempts": 3}),
            false,
            "malformed_definition",
        ),
        (
            json!({"evaluator": "judge", "max_attempts": 3, "pass_threshold": 0.5, "on_exhausted": "shrug"}),
            false,
            "malformed_definition",
        ),
    ] {
        let err = check(refine.clone(), review).unwrap_err();
        assert_eq!(err.code(), code, "{refine}: {err}");
        assert!(err.to_string().contains("'s'"), "{err}");
    }
}
