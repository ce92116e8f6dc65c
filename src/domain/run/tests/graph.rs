//! Given/when/then: branching (`when` conditions) and skipped steps.

use super::*;

// --------------------------------------------------------------- branching --

#[test]
fn a_false_condition_skips_the_step_and_every_step_that_only_follows_skipped_ones() {
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "go", 20, "s1"))
        .then_expect_events(vec![
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
}

#[test]
fn a_step_with_one_skipped_and_one_completed_dependency_runs() {
    let mut history = branching_started();
    history.extend([
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
        .given(history.clone())
        .when(complete("yes", "s1.1", "Y", 30, "s2"))
        .then_expect_events(vec![
            completed("yes", 1, (1, "Y"), &["join"], 30),
            dispatched("join", 1, "s2.1", &[("yes.out", 1)], 30),
        ]);
    history.extend([
        completed("yes", 1, (1, "Y"), &["join"], 30),
        dispatched("join", 1, "s2.1", &[("yes.out", 1)], 30),
    ]);
    // A run whose steps are all completed or skipped is completed.
    Given::with(())
        .given(history)
        .when(complete("join", "s2.1", "J", 40, "s3"))
        .then_expect_events(vec![
            completed("join", 1, (1, "J"), &[], 40),
            RunEvent::RunCompleted { at: at(40) },
            completed_note(1, 40),
        ]);
}

#[test]
fn the_other_value_takes_the_other_branch() {
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "stop", 20, "s1"))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![written("a.out", 1, "stop")],
                &["no"],
                &["yes"],
                20,
            ),
            dispatched("no", 1, "s1.1", &[("a.out", 1)], 20),
        ]);
}

#[test]
fn a_step_whose_dependencies_were_all_skipped_is_skipped() {
    // Neither "go" nor "stop": yes and no are skipped, and so are after_no
    // and join, whose dependencies are all skipped; the run completes.
    Given::with(())
        .given(branching_started())
        .when(complete("a", "s0.1", "maybe", 20, "s1"))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![written("a.out", 1, "maybe")],
                &[],
                &["after_no", "join", "no", "yes"],
                20,
            ),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}

#[test]
fn an_in_condition_holds_for_any_of_its_values() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"],
              "when": {"step": "a", "output": "out", "in": ["x", "y"]}}
    }));
    let started = vec![
        run_started(def, &["a"], 10),
        dispatched("a", 1, "s0.1", &[], 10),
    ];
    Given::with(())
        .given(started.clone())
        .when(complete("a", "s0.1", "y", 20, "s1"))
        .then_expect_events(vec![
            completed("a", 1, (1, "y"), &["b"], 20),
            dispatched("b", 1, "s1.1", &[("a.out", 1)], 20),
        ]);
    Given::with(())
        .given(started)
        .when(complete("a", "s0.1", "z", 20, "s1"))
        .then_expect_events(vec![
            completed_with("a", 1, vec![written("a.out", 1, "z")], &[], &["b"], 20),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}

#[test]
fn a_condition_on_a_step_that_was_skipped_does_not_hold() {
    // r decides whether g runs; x waits for g and n and tests g's output:
    // with g skipped, x is skipped even though n completed.
    let def = definition(json!({
        "r": {"agent": "echo"},
        "g": {"agent": "echo", "depends_on": ["r"],
              "when": {"step": "r", "output": "out", "equals": "go"}},
        "n": {"agent": "echo", "depends_on": ["r"]},
        "x": {"agent": "echo", "depends_on": ["g", "n"],
              "when": {"step": "g", "output": "out", "equals": "G"}}
    }));
    Given::with(())
        .given(vec![
            run_started(def, &["r"], 10),
            dispatched("r", 1, "s0.1", &[], 10),
            completed_with(
                "r",
                1,
                vec![written("r.out", 1, "stop")],
                &["n"],
                &["g"],
                20,
            ),
            dispatched("n", 1, "s1.1", &[("r.out", 1)], 20),
        ])
        .when(complete("n", "s1.1", "N", 30, "s2"))
        .then_expect_events(vec![
            completed_with("n", 1, vec![written("n.out", 1, "N")], &[], &["x"], 30),
            RunEvent::RunCompleted { at: at(30) },
            completed_note(1, 30),
        ]);
}

#[test]
fn a_condition_on_a_blob_output_does_not_hold() {
    let def = definition(json!({
        "a": {"agent": "echo"},
        "b": {"agent": "echo", "depends_on": ["a"],
              "when": {"step": "a", "output": "out", "equals": "go"}}
    }));
    let blob = ArtifactContent::Blob {
        sha256: "ab".repeat(32),
        size: 100_000,
    };
    Given::with(())
        .given(vec![
            run_started(def, &["a"], 10),
            dispatched("a", 1, "s0.1", &[], 10),
        ])
        .when(stamped(
            RunCommand::CompleteStep {
                usage: None,
                step: sid("a"),
                lease: lease("s0.1"),
                outputs: single_output("out", blob.clone()),
                comments: Vec::new(),
                message: None,
            },
            20,
            "s1",
        ))
        .then_expect_events(vec![
            completed_with(
                "a",
                1,
                vec![ArtifactWritten {
                    name: artifact("a.out"),
                    version: 1,
                    content: blob,
                }],
                &[],
                &["b"],
                20,
            ),
            RunEvent::RunCompleted { at: at(20) },
            completed_note(1, 20),
        ]);
}
