//! Given/when/then: a run that reads another run's artifact (a
//! cross-workflow prerequisite): pinned at its start, recorded on the
//! dispatch of the steps that read it, given to them as input, and carried
//! by a retry or a redirect.

use super::*;
use crate::domain::prerequisites::Import;

/// `compile` reads the approved plan of a run of `gen`; `test` reads only
/// `compile`.
fn importing() -> Definition {
    Definition::parse(&json!({
        "steps": {
            "compile": {"agent": "echo", "inputs": {"plan": "gen:plan.choice"}},
            "test": {"agent": "echo", "depends_on": ["compile"]}
        },
        "requires": {
            "artifacts": [{"template": "gen", "artifact": "plan.choice", "reason": "a plan"}]
        }
    }))
    .unwrap()
}

/// Version 2 of `plan.choice` in run g1 of `gen`.
fn plan() -> Import {
    Import {
        template: "gen".into(),
        artifact: artifact("plan.choice"),
        run_id: rid("g1"),
        version: 2,
        content: inline("approved"),
    }
}

fn start_importing(ms: i64, seed: &str) -> Stamped {
    let mut command = start(importing(), ms, seed);
    if let RunCommand::Start(start) = &mut command.command {
        start.imports = vec![plan()];
    }
    command
}

fn started_importing() -> Vec<RunEvent> {
    let mut started = run_started(importing(), &["compile"], 10);
    if let RunEvent::RunStarted { imports, .. } = &mut started {
        *imports = vec![plan()];
    }
    let mut dispatch = dispatched("compile", 1, "s0.1", &[], 10);
    if let RunEvent::StepDispatched { imports, .. } = &mut dispatch {
        *imports = read_of_plan();
    }
    vec![started, dispatch]
}

fn read_of_plan() -> BTreeMap<String, ImportedRead> {
    [(
        "gen:plan.choice".to_string(),
        ImportedRead {
            run_id: rid("g1"),
            version: 2,
        },
    )]
    .into_iter()
    .collect()
}

#[test]
fn a_start_pins_its_imports_and_the_step_that_reads_one_records_which_run_and_version() {
    Given::with(())
        .given_no_previous_events()
        .when(start_importing(10, "s0"))
        .then_expect_events(started_importing());
}

#[test]
fn a_step_that_reads_no_import_records_none() {
    Given::with(())
        .given(started_importing())
        .when(complete("compile", "s0.1", "built", 20, "s1"))
        .then_expect_events(vec![
            completed("compile", 1, (1, "built"), &["test"], 20),
            dispatched("test", 1, "s1.1", &[("compile.out", 1)], 20),
        ]);
}

#[test]
fn the_step_that_reads_an_import_gets_its_pinned_body_as_input() {
    let run = replay(&started_importing());
    assert_eq!(
        run.step_input(&sid("compile")),
        StepInput::Named(
            [("plan".to_string(), InputValue::Artifact(inline("approved")))]
                .into_iter()
                .collect()
        )
    );
}

#[test]
fn a_new_run_of_the_same_work_reads_the_same_imports() {
    let (run, _) = drive(vec![
        start_importing(10, "s0"),
        stamped(RunCommand::Cancel { reason: None }, 20, "s1"),
    ]);
    let source = run.source().expect("started");
    assert_eq!(source.imports, vec![plan()]);
    // A retry started from that source pins them again, and its step reads
    // the same run and version.
    let mut retry = start_importing(30, "s2");
    if let RunCommand::Start(start) = &mut retry.command {
        start.run_id = rid("r2");
        start.retry_of = Some(rid("r1"));
        start.imports = source.imports;
    }
    let events = decide(&Run::default(), retry).expect("the retry starts");
    match &events[..] {
        [RunEvent::RunStarted { imports, .. }, RunEvent::StepDispatched { imports: read, .. }] => {
            assert_eq!(imports, &vec![plan()]);
            assert_eq!(read, &read_of_plan());
        }
        other => panic!("{other:?}"),
    }
}
