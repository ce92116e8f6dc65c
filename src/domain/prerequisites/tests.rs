use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::*;
use crate::domain::definition::DefinitionError;

fn agents() -> BTreeSet<String> {
    ["echo".to_string()].into()
}

fn definition(value: Value) -> Definition {
    Definition::parse_and_validate(&value, &agents()).expect("a valid definition")
}

fn refused(value: Value) -> DefinitionError {
    Definition::parse_and_validate(&value, &agents()).expect_err("refused")
}

fn generator() -> Definition {
    definition(json!({
        "steps": {
            "plan": {"agent": "echo", "review": true, "choices": ["approved", "rejected"]},
            "files": {"agent": "echo", "depends_on": ["plan"]},
        },
        "provides": {"artifacts": ["files.input"]},
    }))
}

fn build() -> Definition {
    definition(json!({
        "steps": {"compile": {"agent": "echo", "inputs": {"files": "generator:files.input"}}},
        "requires": {
            "workflows": [{"template": "generator", "reason": "Build needs the generated files"}],
            "artifacts": [{"template": "generator", "artifact": "files.input",
                           "reason": "Build reads the files"}],
        },
    }))
}

fn directory(entries: &[(&str, Definition)]) -> BTreeMap<String, Definition> {
    entries
        .iter()
        .map(|(n, d)| ((*n).to_string(), d.clone()))
        .collect()
}

#[test]
fn a_definition_without_prerequisites_stores_none() {
    let plain = definition(json!({"steps": {"a": {"agent": "echo"}}}));
    assert!(plain.requires.is_empty() && plain.provides.is_empty());
    let stored = serde_json::to_value(&plain).unwrap();
    assert!(stored.get("requires").is_none() && stored.get("provides").is_none());
}

#[test]
fn requirements_default_to_completed_and_round_trip() {
    let build = build();
    assert_eq!(
        build.requires.workflows[0].status,
        RequiredStatus::Completed
    );
    let again = Definition::parse(&serde_json::to_value(&build).unwrap()).unwrap();
    assert_eq!(again, build);
}

#[test]
fn blank_reasons_names_with_spaces_and_unknown_fields_are_refused() {
    let cases = [
        json!({"workflows": [{"template": "g", "reason": "  "}]}),
        json!({"workflows": [{"template": " g", "reason": "r"}]}),
        json!({"workflows": [{"template": "", "reason": "r"}]}),
        json!({"workflows": [{"template": "g", "reason": "r", "status": "running"}]}),
        json!({"artifacts": [{"template": "g", "artifact": "nodot", "reason": "r"}]}),
        json!({"workflows": [{"template": "g", "reason": "r", "extra": 1}]}),
        json!({"sometimes": []}),
        json!({"workflows": [{"template": "g", "reason": "x".repeat(MAX_REASON_CHARS + 1)}]}),
    ];
    for requires in cases {
        let e = refused(json!({"steps": {"a": {"agent": "echo"}}, "requires": requires}));
        assert!(
            matches!(e, DefinitionError::InvalidRequirement { .. }),
            "{requires}: {e:?}"
        );
    }
    let many: Vec<Value> = (0..=MAX_REQUIREMENTS)
        .map(|i| json!({"template": format!("t{i}"), "reason": "r"}))
        .collect();
    let e = refused(json!({"steps": {"a": {"agent": "echo"}}, "requires": {"workflows": many}}));
    assert!(matches!(e, DefinitionError::InvalidRequirement { .. }));
}

#[test]
fn provides_names_artifacts_of_its_own_steps() {
    let e =
        refused(json!({"steps": {"a": {"agent": "echo"}}, "provides": {"artifacts": ["b.out"]}}));
    assert!(
        matches!(e, DefinitionError::InvalidProvides { .. }),
        "{e:?}"
    );
    let e = refused(json!({"steps": {"a": {"agent": "echo"}}, "provides": {"artifacts": "a.out"}}));
    assert!(
        matches!(e, DefinitionError::InvalidProvides { .. }),
        "{e:?}"
    );
}

#[test]
fn a_cross_run_input_must_be_a_required_artifact() {
    let e = refused(
        json!({"steps": {"a": {"agent": "echo", "inputs": {"x": "generator:files.input"}}}}),
    );
    assert!(
        matches!(e, DefinitionError::InvalidInputMapping { .. }),
        "{e:?}"
    );
}

#[test]
fn a_review_steps_choice_is_provided_without_being_listed() {
    let generator = generator();
    assert!(provides(
        &generator,
        &ArtifactName::parse("plan.choice").unwrap()
    ));
    assert!(provides(
        &generator,
        &ArtifactName::parse("files.input").unwrap()
    ));
    assert!(!provides(
        &generator,
        &ArtifactName::parse("files.choice").unwrap()
    ));
    assert!(!provides(
        &generator,
        &ArtifactName::parse("plan.input").unwrap()
    ));
}

#[test]
fn prerequisites_must_name_live_templates_that_provide_what_is_asked() {
    let ok = directory(&[("generator", generator())]);
    assert_eq!(check_against("build", &build(), &ok), Ok(()));
    let e = check_against("build", &build(), &directory(&[])).unwrap_err();
    assert_eq!(e.code(), "unknown_prerequisite");
    let stingy = definition(json!({"steps": {"files": {"agent": "echo"}}}));
    let e = check_against("build", &build(), &directory(&[("generator", stingy)])).unwrap_err();
    assert_eq!(e.code(), "artifact_not_provided");
}

#[test]
fn a_cycle_of_prerequisites_is_refused_with_its_path() {
    let needs = |name: &str| {
        definition(json!({"steps": {"a": {"agent": "echo"}},
                          "requires": {"workflows": [{"template": name, "reason": "r"}]}}))
    };
    // a needs b, b needs c; saving c as needing a closes the loop.
    let others = directory(&[("a", needs("b")), ("b", needs("c"))]);
    let e = check_against("c", &needs("a"), &others).unwrap_err();
    assert_eq!(
        e,
        PrerequisiteError::Cycle {
            cycle: vec!["c".into(), "a".into(), "b".into(), "c".into()]
        }
    );
    // Requiring itself is the shortest cycle.
    let e = check_against("a", &needs("a"), &directory(&[])).unwrap_err();
    assert_eq!(e.code(), "prerequisite_cycle");
    // A diamond is not a cycle.
    let both = definition(json!({"steps": {"a": {"agent": "echo"}},
        "requires": {"workflows": [{"template": "l", "reason": "r"}, {"template": "r", "reason": "r"}]}}));
    let leaf = definition(json!({"steps": {"a": {"agent": "echo"}}}));
    let diamond = directory(&[("l", needs("z")), ("r", needs("z")), ("z", leaf)]);
    assert_eq!(check_against("top", &both, &diamond), Ok(()));
}

fn latest(status: RunStatus, artifacts: &[(&str, u32)]) -> LatestRun {
    LatestRun {
        run_id: RunId::parse("run-1").unwrap(),
        status,
        artifacts: artifacts
            .iter()
            .map(|(n, v)| {
                (
                    ArtifactName::parse(*n).unwrap(),
                    (*v, ArtifactContent::Inline(json!({"v": v}))),
                )
            })
            .collect(),
    }
}

#[test]
fn a_start_without_any_generator_run_lists_every_requirement_with_what_to_do() {
    let unmet = evaluate(&build().requires, &BTreeMap::new()).unwrap_err();
    assert_eq!(unmet.len(), 2);
    assert_eq!(unmet[0].kind, "workflow");
    assert_eq!(
        unmet[0].message,
        "Complete the generator workflow first: Build needs the generated files"
    );
    assert_eq!(unmet[0].run_id, None);
    assert_eq!(unmet[1].kind, "artifact");
    assert_eq!(unmet[1].artifact.as_deref(), Some("files.input"));
}

#[test]
fn a_running_generator_does_not_count_and_is_named() {
    let runs = [("generator".to_string(), latest(RunStatus::Running, &[]))].into();
    let unmet = evaluate(&build().requires, &runs).unwrap_err();
    assert_eq!(unmet.len(), 2);
    assert_eq!(unmet[0].run_id.as_deref(), Some("run-1"));
}

#[test]
fn a_completed_generator_with_the_artifact_is_imported_at_its_version() {
    let runs = [(
        "generator".to_string(),
        latest(RunStatus::Completed, &[("files.input", 3)]),
    )]
    .into();
    let imports = evaluate(&build().requires, &runs).unwrap();
    assert_eq!(imports.len(), 1);
    assert_eq!(imports[0].reference(), "generator:files.input");
    assert_eq!(imports[0].version, 3);
    assert_eq!(imports[0].run_id.as_str(), "run-1");
}

#[test]
fn a_failed_status_can_be_required() {
    let requires: Requires = serde_json::from_value(json!({
        "workflows": [{"template": "probe", "status": "failed", "reason": "only after a failure"}]
    }))
    .unwrap();
    let failed = [("probe".to_string(), latest(RunStatus::Failed, &[]))].into();
    assert_eq!(evaluate(&requires, &failed), Ok(Vec::new()));
    let completed = [("probe".to_string(), latest(RunStatus::Completed, &[]))].into();
    let unmet = evaluate(&requires, &completed).unwrap_err();
    assert!(
        unmet[0].message.contains("must be failed"),
        "{}",
        unmet[0].message
    );
}
