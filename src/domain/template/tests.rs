//! Given/when/then tests of every Template command branch.

use std::collections::BTreeSet;
use std::sync::Arc;

use cqrs_es::test::TestFramework;
use serde_json::{json, Value};

use super::*;
use crate::domain::definition::DefinitionError;

type Given = TestFramework<Template>;

fn services() -> TemplateServices {
    let agents: BTreeSet<String> = ["echo", "template"].into_iter().map(String::from).collect();
    TemplateServices {
        agents: Arc::new(agents),
    }
}

fn id() -> TemplateId {
    TemplateId::parse("t1").unwrap()
}

fn at(ms: i64) -> Timestamp {
    Timestamp(ms)
}

fn one_step() -> Value {
    json!({"steps": {"a": {"agent": "echo"}}})
}

fn two_steps() -> Value {
    json!({"steps": {"a": {"agent": "echo"}, "b": {"agent": "echo", "depends_on": ["a"]}}})
}

fn parsed(value: &Value) -> Definition {
    Definition::parse(value).unwrap()
}

fn created() -> TemplateEvent {
    TemplateEvent::TemplateCreated {
        template_id: id(),
        name: "demo".into(),
        description: Some("first".into()),
        version: 1,
        definition: parsed(&one_step()),
        at: at(1),
    }
}

fn create(name: &str, definition: Value) -> TemplateCommand {
    TemplateCommand::Create {
        id: id(),
        name: name.into(),
        description: Some("first".into()),
        definition,
        at: at(1),
    }
}

#[test]
fn creating_a_template_records_version_one() {
    Given::with(services())
        .given_no_previous_events()
        .when(create("  demo ", one_step()))
        .then_expect_events(vec![created()]);
}

#[test]
fn creating_a_template_twice_is_refused() {
    Given::with(services())
        .given(vec![created()])
        .when(create("demo", one_step()))
        .then_expect_error(TemplateError::AlreadyExists);
}

#[test]
fn creating_a_template_without_a_name_is_refused() {
    Given::with(services())
        .given_no_previous_events()
        .when(create("   ", one_step()))
        .then_expect_error(TemplateError::InvalidName("must not be empty"));
    Given::with(services())
        .given_no_previous_events()
        .when(create(&"n".repeat(201), one_step()))
        .then_expect_error(TemplateError::InvalidName("longer than 200 characters"));
}

#[test]
fn creating_a_template_with_a_huge_description_is_refused() {
    Given::with(services())
        .given_no_previous_events()
        .when(TemplateCommand::Create {
            id: id(),
            name: "demo".into(),
            description: Some("d".repeat(MAX_DESCRIPTION_LEN + 1)),
            definition: one_step(),
            at: at(1),
        })
        .then_expect_error(TemplateError::DescriptionTooLong);
}

#[test]
fn creating_a_template_with_an_invalid_definition_is_refused() {
    Given::with(services())
        .given_no_previous_events()
        .when(create("demo", json!({"steps": {}})))
        .then_expect_error(TemplateError::InvalidDefinition(DefinitionError::Empty));
}

#[test]
fn revising_a_template_adds_a_version_and_keeps_the_description() {
    Given::with(services())
        .given(vec![created()])
        .when(TemplateCommand::Revise {
            definition: two_steps(),
            description: None,
            at: at(2),
        })
        .then_expect_events(vec![TemplateEvent::TemplateRevised {
            version: 2,
            definition: parsed(&two_steps()),
            description: Some("first".into()),
            at: at(2),
        }]);
}

#[test]
fn revising_a_missing_template_is_refused() {
    Given::with(services())
        .given_no_previous_events()
        .when(TemplateCommand::Revise {
            definition: two_steps(),
            description: None,
            at: at(2),
        })
        .then_expect_error(TemplateError::NotFound);
}

#[test]
fn revising_with_an_invalid_definition_is_refused() {
    Given::with(services())
        .given(vec![created()])
        .when(TemplateCommand::Revise {
            definition: json!({"steps": {"a": {"agent": "nobody"}}}),
            description: None,
            at: at(2),
        })
        .then_expect_error(TemplateError::InvalidDefinition(
            DefinitionError::UnknownAgent {
                step: "a".to_string().try_into().unwrap(),
                agent: "nobody".to_string().try_into().unwrap(),
            },
        ));
}

#[test]
fn revising_an_archived_template_is_refused() {
    Given::with(services())
        .given(vec![
            created(),
            TemplateEvent::TemplateArchived { at: at(2) },
        ])
        .when(TemplateCommand::Revise {
            definition: two_steps(),
            description: None,
            at: at(3),
        })
        .then_expect_error(TemplateError::Archived);
}

#[test]
fn archiving_a_template_records_it() {
    Given::with(services())
        .given(vec![created()])
        .when(TemplateCommand::Archive { at: at(2) })
        .then_expect_events(vec![TemplateEvent::TemplateArchived { at: at(2) }]);
}

#[test]
fn archiving_twice_or_a_missing_template_is_refused() {
    Given::with(services())
        .given(vec![
            created(),
            TemplateEvent::TemplateArchived { at: at(2) },
        ])
        .when(TemplateCommand::Archive { at: at(3) })
        .then_expect_error(TemplateError::Archived);
    Given::with(services())
        .given_no_previous_events()
        .when(TemplateCommand::Archive { at: at(3) })
        .then_expect_error(TemplateError::NotFound);
}
