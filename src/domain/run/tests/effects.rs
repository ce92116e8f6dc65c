//! Given/when/then: the effects of committed events (what the engine must
//! do), decided beside the events.

use super::*;
use crate::domain::ids::AgentName;

/// Given `history`, when `command`: its effects (the command must be
/// accepted).
fn effects_of(history: Vec<RunEvent>, command: Stamped) -> Vec<Effect> {
    let run = state_after(history);
    run.decide_with_effects(command.command, &command.stamp)
        .expect("command accepted")
        .effects
}

/// The dispatches among `effects`.
fn dispatched_tasks(effects: &[Effect]) -> Vec<&Task> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch(task) => Some(task.as_ref()),
            _ => None,
        })
        .collect()
}

/// The non-dispatch effects, for exact comparison.
fn others(effects: &[Effect]) -> Vec<Effect> {
    effects
        .iter()
        .filter(|e| !matches!(e, Effect::Dispatch(_)))
        .cloned()
        .collect()
}

fn echo() -> AgentName {
    AgentName::parse("echo").unwrap()
}

fn stop(step: &str, token: &str) -> Effect {
    Effect::Stop {
        step: sid(step),
        lease: lease(token),
        agent: echo(),
    }
}

fn release(step: &str, token: &str) -> Effect {
    Effect::Release {
        step: sid(step),
        lease: lease(token),
        agent: echo(),
    }
}

#[test]
fn starting_a_run_dispatches_its_root_as_a_task_with_the_run_input() {
    let effects = effects_of(Vec::new(), start(diamond(), 10, "s0"));
    let tasks = dispatched_tasks(&effects);
    assert_eq!(tasks.len(), 1, "{effects:?}");
    let task = tasks[0];
    assert_eq!(task.run_id, RunId::parse("r1").unwrap());
    assert_eq!(task.step, sid("a"));
    assert_eq!(task.attempt, 1);
    assert_eq!(task.lease, lease("s0.1"));
    assert_eq!(task.agent.as_str(), "echo");
    assert_eq!(task.input, StepInput::RunInput(input()));
    assert_eq!(task.run_input, input());
    assert!(task.upstream.is_empty());
    assert!(task.instructions.is_empty());
    assert!(!task.stop_requested);
    assert_eq!(others(&effects), []);
}

#[test]
fn completing_a_step_releases_its_attempt_and_dispatches_its_dependants_with_its_outputs() {
    let effects = effects_of(diamond_started(), complete("a", "s0.1", "A", 20, "s1"));
    assert_eq!(others(&effects), [release("a", "s0.1")]);
    let tasks = dispatched_tasks(&effects);
    let steps: Vec<&str> = tasks.iter().map(|t| t.step.as_str()).collect();
    assert_eq!(steps, ["b", "c"]);
    for task in tasks {
        let a_outputs = BTreeMap::from([("out".to_string(), inline("A"))]);
        assert_eq!(
            task.input,
            StepInput::Named(BTreeMap::from([(
                "a".to_string(),
                InputValue::Outputs(a_outputs.clone())
            )]))
        );
        assert_eq!(
            task.upstream,
            BTreeMap::from([("a".to_string(), a_outputs)])
        );
    }
    // Distinct leases from the command's seed.
    assert_eq!(dispatched_tasks(&effects)[0].lease, lease("s1.1"));
    assert_eq!(dispatched_tasks(&effects)[1].lease, lease("s1.2"));
}

#[test]
fn a_failure_with_attempts_left_releases_the_attempt_and_wakes_the_run_when_the_retry_is_due() {
    let effects = effects_of(retrying_started(), fail("a", "s0.1", "flaky", 20));
    assert_eq!(
        effects,
        [release("a", "s0.1"), Effect::WakeAt(at(70))],
        "the retry is due 50 ms after the failure"
    );
}

#[test]
fn a_due_retry_is_dispatched_as_the_next_attempt_and_the_wake_up_is_spent() {
    let effects = effects_of(retrying_first_attempt_failed(), tick(70, "s2"));
    let tasks = dispatched_tasks(&effects);
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].step.as_str(), tasks[0].attempt), ("a", 2));
    assert_eq!(others(&effects), [], "no wake-up is left");
}

#[test]
fn a_paused_run_has_no_wake_up_for_its_due_retry_and_resuming_brings_it_back() {
    let mut history = retrying_first_attempt_failed();
    history.extend(decide(&state_after(history.clone()), pause(30)).unwrap());
    let paused = state_after(history.clone());
    assert_eq!(paused.status, RunStatus::Paused);
    assert_eq!(paused.next_wake(), None);
    // Resumed before the retry is due: the wake-up is armed again.
    let effects = effects_of(history, resume(40, "s3"));
    assert_eq!(others(&effects), [Effect::WakeAt(at(70))]);
    assert!(dispatched_tasks(&effects).is_empty());
}

#[test]
fn a_pause_stops_every_running_attempt_and_releases_none() {
    let effects = effects_of(diamond_a_done(), pause(25));
    assert_eq!(effects, [stop("b", "s1.1"), stop("c", "s1.2")]);
}

#[test]
fn a_cancel_stops_every_running_attempt_and_wakes_the_run_when_its_grace_runs_out() {
    let effects = effects_of(diamond_a_done(), cancel(Some("enough"), 25));
    assert_eq!(
        effects,
        [
            stop("b", "s1.1"),
            stop("c", "s1.2"),
            Effect::WakeAt(at(25 + GRACE_MS))
        ]
    );
}

#[test]
fn an_attempt_that_finishes_while_pausing_is_released_and_nothing_is_dispatched() {
    let effects = effects_of(diamond_pausing(), complete("b", "s1.1", "B", 30, "s2"));
    assert_eq!(effects, [release("b", "s1.1")]);
}

#[test]
fn a_step_retry_stops_and_releases_the_running_attempts_it_invalidates_then_dispatches_the_step() {
    // b completed; d does not run yet (c runs). Retrying a invalidates b
    // (completed) and c (running).
    let effects = effects_of(diamond_b_done(), retry_step("a", None, 35, "s5"));
    assert_eq!(others(&effects), [stop("c", "s1.2"), release("c", "s1.2")]);
    let tasks = dispatched_tasks(&effects);
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].step.as_str(), tasks[0].attempt), ("a", 2));
}

#[test]
fn a_rollback_that_makes_a_running_step_ready_again_releases_its_old_attempt_and_dispatches_a_new_one(
) {
    // a wrote `a.out` twice (a retry, then the second attempt completed);
    // b and c run their second attempts; rolling `a.out` back to version 1
    // sends them back and dispatches them again at once.
    let mut history = diamond_a_done();
    history.extend(
        decide(
            &state_after(history.clone()),
            retry_step("a", None, 30, "s3"),
        )
        .unwrap(),
    );
    let a_lease = state_after(history.clone()).steps[&sid("a")]
        .lease
        .clone()
        .unwrap();
    history.extend(
        decide(
            &state_after(history.clone()),
            complete("a", a_lease.as_str(), "A2", 40, "s4"),
        )
        .unwrap(),
    );
    let run = state_after(history.clone());
    let (b, c) = (
        run.steps[&sid("b")].lease.clone().unwrap(),
        run.steps[&sid("c")].lease.clone().unwrap(),
    );
    let effects = effects_of(history, rollback("a.out", 1, 50, "s5"));
    assert_eq!(
        others(&effects),
        [
            stop("b", b.as_str()),
            release("b", b.as_str()),
            stop("c", c.as_str()),
            release("c", c.as_str())
        ]
    );
    let tasks = dispatched_tasks(&effects);
    let steps: Vec<(&str, &str)> = tasks
        .iter()
        .map(|t| (t.step.as_str(), t.lease.as_str()))
        .collect();
    assert_eq!(steps, [("b", "s5.1"), ("c", "s5.2")]);
    for task in tasks {
        let StepInput::Named(named) = &task.input else {
            panic!("a named input: {:?}", task.input)
        };
        let InputValue::Outputs(outputs) = &named["a"] else {
            panic!("a's outputs: {named:?}")
        };
        assert_eq!(
            outputs["out"],
            inline("A"),
            "the rolled-back version is read"
        );
    }
}

#[test]
fn a_recovered_dispatch_releases_the_attempt_it_replaces() {
    let effects = effects_of(diamond_a_done(), recover(30, "s9"));
    assert_eq!(
        others(&effects),
        [release("b", "s1.1"), release("c", "s1.2")]
    );
    let tasks = dispatched_tasks(&effects);
    let steps: Vec<(&str, u32, &str)> = tasks
        .iter()
        .map(|t| (t.step.as_str(), t.attempt, t.lease.as_str()))
        .collect();
    assert_eq!(steps, [("b", 1, "s9.1"), ("c", 1, "s9.2")]);
}

#[test]
fn an_attempt_recovered_while_the_run_is_pausing_is_told_to_stop_from_the_start() {
    let effects = effects_of(diamond_pausing(), recover(30, "s9"));
    let tasks = dispatched_tasks(&effects);
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|t| t.stop_requested), "{tasks:?}");
}

#[test]
fn a_dispatched_task_carries_the_texts_of_the_instructions_handed_to_it() {
    let effects = effects_of(diamond_instructed(), complete("a", "s0.1", "A", 20, "s1"));
    let tasks = dispatched_tasks(&effects);
    assert_eq!(tasks[0].step, sid("b"));
    assert_eq!(tasks[0].instructions, ["be brief"]);
    assert!(
        tasks[1].instructions.is_empty(),
        "only the first dispatch gets it"
    );
}

#[test]
fn a_redirect_starts_its_new_run_and_stops_the_running_attempts() {
    let effects = effects_of(diamond_a_done(), redirect("r2", "start over", 25));
    assert_eq!(
        effects,
        [
            Effect::StartRedirect {
                to: rid("r2"),
                instructions: "start over".into()
            },
            stop("b", "s1.1"),
            stop("c", "s1.2"),
            Effect::WakeAt(at(25 + GRACE_MS)),
        ]
    );
}

#[test]
fn a_refused_command_has_no_effects_because_it_has_no_decision() {
    let run = state_after(diamond_started());
    let refused = complete("a", "stale", "A", 20, "s1");
    assert_eq!(
        run.decide_with_effects(refused.command, &refused.stamp),
        Err(RunError::StaleLease(sid("a")))
    );
}

#[test]
fn effects_describe_the_same_state_the_events_fold_to() {
    let run = state_after(diamond_a_done());
    let command = complete("b", "s1.1", "B", 30, "s2");
    let decided = run
        .decide_with_effects(command.command, &command.stamp)
        .unwrap();
    let mut folded = run.clone();
    for event in &decided.events {
        folded.apply_event(event.clone());
    }
    assert_eq!(decided.state, folded);
}
