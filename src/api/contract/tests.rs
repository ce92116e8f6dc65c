//! The definition schema against the domain: it accepts what the domain
//! accepts, and what it refuses gets the code the domain gives.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::*;
use crate::domain::definition::Definition;

fn agents() -> BTreeSet<String> {
    ["echo", "template", "judge", "llm", "llm_judge"]
        .into_iter()
        .map(String::from)
        .collect()
}

/// Codes of faults a schema cannot see: the domain finds them after the
/// schema passed (or, when a definition has one of these and a fault the
/// schema sees, the schema's is reported).
const GRAPH_CODES: [&str; 6] = [
    "unknown_dependency",
    "dependency_cycle",
    "unknown_agent",
    "invalid_input_mapping",
    "invalid_condition",
    "invalid_agent_config",
];

/// Definitions the domain accepts, covering every field.
fn good() -> Vec<Value> {
    vec![
        json!({"steps": {"a": {"agent": "echo"}}}),
        json!({"steps": {
            "a": {"agent": "echo", "config": {"delay_ms": 0}},
            "b": {"agent": "echo", "depends_on": ["a"], "config": {"delay_ms": 0}},
            "c": {"agent": "echo", "depends_on": ["a"], "inputs": {"x": "a.value"}},
            "d": {"agent": "echo", "depends_on": ["b", "c"], "retry": {"max_attempts": 3, "backoff_ms": 10}}
        }}),
        json!({"steps": {
            "draft": {"agent": "template", "prompt": "Write about owls", "config": {"text": "{{ prompt }}"}},
            "review": {"agent": "echo", "depends_on": ["draft"], "review": true,
                       "choices": ["ship", "rework", "drop"]},
            "ship": {"agent": "echo", "depends_on": ["review"],
                     "when": {"step": "review", "output": "choice", "equals": "ship"}},
            "fix": {"agent": "echo", "depends_on": ["review"],
                    "when": {"step": "review", "output": "choice", "in": ["rework", "drop"]}},
            "tidy": {"agent": "echo", "depends_on": ["fix"],
                     "when": {"step": "draft", "output": "value", "equals": {"any": ["json"]}, "in": null}},
            "plain": {"agent": "echo", "review": true, "choices": []}
        }}),
        json!({
            "budget": {"max_tokens": 1000, "max_cost": 0.5},
            "input_schema": {"type": "object", "required": ["topic"]},
            "steps": {
                "draft": {"agent": "llm", "config": {"model": "m"},
                          "budget": {"max_cost": 0.01, "max_tokens": null},
                          "heartbeat_timeout_ms": 1000,
                          "refine": {"evaluator": "judge", "evaluator_config": {"min_length": 3},
                                     "max_attempts": 50, "pass_threshold": 1,
                                     "on_exhausted": "accept_best"}},
                "after": {"agent": "echo", "depends_on": ["draft"], "review": false,
                          "heartbeat_timeout_ms": 3_600_000, "retry": {"max_attempts": 100, "backoff_ms": 3_600_000},
                          "refine": null, "budget": null, "when": null, "prompt": null, "config": null}
            }
        }),
        json!({"input_schema": false, "budget": {"max_tokens": 1}, "steps": {
            "A-b_9": {"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 1, "pass_threshold": 0}}
        }}),
    ]
}

/// Whether the domain refuses for a reason the schema cannot see.
fn beyond_schema(error: &DefinitionError) -> bool {
    GRAPH_CODES.contains(&error.code())
        || matches!(error, DefinitionError::InvalidInputSchema(_))
        || matches!(error, DefinitionError::InvalidRefine { reason, .. }
            if reason.contains("is not an agent of this server"))
}

#[test]
fn the_schema_is_a_draft_2020_12_schema() {
    let schema: Value = serde_json::from_str(DEFINITION_SCHEMA).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::meta::validate(&schema).expect("a valid JSON Schema");
}

#[test]
fn the_schema_accepts_every_definition_the_domain_accepts() {
    for definition in good() {
        Definition::parse_and_validate(&definition, &agents())
            .unwrap_or_else(|e| panic!("the domain refuses {definition}: {e}"));
        assert!(
            definition_fault(&definition).is_none(),
            "{definition}: {:?}",
            definition_fault(&definition)
        );
        // As the store keeps it too (defaults filled in, empty fields left out).
        let stored = serde_json::to_value(Definition::parse(&definition).unwrap()).unwrap();
        assert!(definition_fault(&stored).is_none(), "{stored}");
    }
}

#[test]
fn the_schema_accepts_the_stored_definitions_of_the_event_fixtures() {
    let fixture: Value = serde_json::from_str(include_str!(
        "../../../tests/fixtures/events/older_versions.json"
    ))
    .unwrap();
    let mut seen = 0;
    for run in fixture["runs"].as_array().unwrap() {
        for event in run["events"].as_array().unwrap() {
            for field in ["stored", "expected"] {
                if let Some(definition) = event[field].get("definition") {
                    assert!(definition_fault(definition).is_none(), "{definition}");
                    seen += 1;
                }
            }
        }
    }
    assert!(seen >= 4, "the fixture holds definitions");
}

/// Refused definitions, the code each gets, and the pointer of the spot.
fn bad() -> Vec<(Value, &'static str, &'static str)> {
    let step = |body: Value| json!({"steps": {"a": {"agent": "echo"}, "s": body}});
    vec![
        (json!(null), "malformed_definition", ""),
        (json!([]), "malformed_definition", ""),
        (json!({}), "malformed_definition", ""),
        (json!({"steps": []}), "malformed_definition", "/steps"),
        (
            json!({"steps": {"a": {"agent": "echo"}}, "extra": 1}),
            "malformed_definition",
            "/extra",
        ),
        (json!({"steps": {}}), "empty_definition", "/steps"),
        (
            json!({"steps": {"bad name": {"agent": "echo"}}}),
            "malformed_definition",
            "/steps/bad name",
        ),
        (
            json!({"steps": {&"x".repeat(65): {"agent": "echo"}}}),
            "malformed_definition",
            "/steps/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ),
        (
            step(json!({"agent": 7})),
            "malformed_definition",
            "/steps/s/agent",
        ),
        (
            step(json!({"agent": "no.dots"})),
            "malformed_definition",
            "/steps/s/agent",
        ),
        (step(json!({})), "malformed_definition", "/steps/s"),
        (
            step(json!({"agent": "echo", "colour": "red"})),
            "malformed_definition",
            "/steps/s/colour",
        ),
        (
            step(json!({"agent": "echo", "depends_on": "a"})),
            "malformed_definition",
            "/steps/s/depends_on",
        ),
        (
            step(json!({"agent": "echo", "depends_on": null})),
            "malformed_definition",
            "/steps/s/depends_on",
        ),
        (
            step(json!({"agent": "echo", "prompt": 5})),
            "malformed_definition",
            "/steps/s/prompt",
        ),
        (
            step(json!({"agent": "echo", "retry": {"max_attempts": 0}})),
            "invalid_retry_policy",
            "/steps/s/retry/max_attempts",
        ),
        (
            step(json!({"agent": "echo", "retry": {"max_attempts": 101}})),
            "invalid_retry_policy",
            "/steps/s/retry/max_attempts",
        ),
        (
            step(json!({"agent": "echo", "retry": {"backoff_ms": 3_600_001}})),
            "invalid_retry_policy",
            "/steps/s/retry/backoff_ms",
        ),
        (
            step(json!({"agent": "echo", "retry": {"max_attempts": -1}})),
            "malformed_definition",
            "/steps/s/retry/max_attempts",
        ),
        (
            step(json!({"agent": "echo", "retry": {"max_attempts": 5_000_000_000u64}})),
            "malformed_definition",
            "/steps/s/retry/max_attempts",
        ),
        (
            step(json!({"agent": "echo", "retry": {"max_attempts": "3"}})),
            "malformed_definition",
            "/steps/s/retry/max_attempts",
        ),
        (
            step(json!({"agent": "echo", "retry": {"jitter": true}})),
            "malformed_definition",
            "/steps/s/retry/jitter",
        ),
        (
            step(json!({"agent": "echo", "retry": 3})),
            "malformed_definition",
            "/steps/s/retry",
        ),
        (
            step(json!({"agent": "echo", "retry": null})),
            "malformed_definition",
            "/steps/s/retry",
        ),
        (
            step(json!({"agent": "echo", "heartbeat_timeout_ms": 999})),
            "invalid_step_field",
            "/steps/s/heartbeat_timeout_ms",
        ),
        (
            step(json!({"agent": "echo", "heartbeat_timeout_ms": 3_600_001})),
            "invalid_step_field",
            "/steps/s/heartbeat_timeout_ms",
        ),
        (
            step(json!({"agent": "echo", "heartbeat_timeout_ms": -5})),
            "malformed_definition",
            "/steps/s/heartbeat_timeout_ms",
        ),
        (
            json!({"budget": {}, "steps": {"a": {"agent": "echo"}}}),
            "invalid_budget",
            "/budget",
        ),
        (
            json!({"budget": null, "steps": {"a": {"agent": "echo"}}}),
            "malformed_definition",
            "/budget",
        ),
        (
            json!({"budget": {"max_cost": 0}, "steps": {"a": {"agent": "echo"}}}),
            "invalid_budget",
            "/budget/max_cost",
        ),
        (
            json!({"budget": {"max_cost": -1}, "steps": {"a": {"agent": "echo"}}}),
            "invalid_budget",
            "/budget/max_cost",
        ),
        (
            json!({"budget": {"tokens": 5}, "steps": {"a": {"agent": "echo"}}}),
            "malformed_definition",
            "/budget/tokens",
        ),
        (
            step(json!({"agent": "echo", "budget": {"max_tokens": 0}})),
            "invalid_budget",
            "/steps/s/budget/max_tokens",
        ),
        (
            step(json!({"agent": "echo", "budget": {}})),
            "invalid_budget",
            "/steps/s/budget",
        ),
        (
            step(json!({"agent": "echo", "budget": {"max_tokens": null}})),
            "invalid_budget",
            "/steps/s/budget",
        ),
        (
            step(json!({"agent": "echo", "budget": 5})),
            "malformed_definition",
            "/steps/s/budget",
        ),
        (
            json!({"input_schema": 5, "steps": {"a": {"agent": "echo"}}}),
            "malformed_definition",
            "/input_schema",
        ),
        (
            json!({"input_schema": null, "steps": {"a": {"agent": "echo"}}}),
            "malformed_definition",
            "/input_schema",
        ),
        (
            step(json!({"agent": "echo", "review": "yes"})),
            "malformed_definition",
            "/steps/s/review",
        ),
        (
            step(json!({"agent": "echo", "choices": ["x"]})),
            "invalid_choices",
            "/steps/s",
        ),
        (
            step(json!({"agent": "echo", "review": false, "choices": ["x"]})),
            "invalid_choices",
            "/steps/s/review",
        ),
        (
            step(json!({"agent": "echo", "review": true, "choices": ["x", "x"]})),
            "invalid_choices",
            "/steps/s/choices",
        ),
        (
            step(json!({"agent": "echo", "review": true, "choices": ["  "]})),
            "invalid_choices",
            "/steps/s/choices/0",
        ),
        (
            step(json!({"agent": "echo", "review": true, "choices": [""]})),
            "invalid_choices",
            "/steps/s/choices/0",
        ),
        (
            step(json!({"agent": "echo", "review": true, "choices": ["x".repeat(201)]})),
            "invalid_choices",
            "/steps/s/choices/0",
        ),
        (
            step(
                json!({"agent": "echo", "review": true, "choices": (0..51).map(|i| i.to_string()).collect::<Vec<_>>()}),
            ),
            "invalid_choices",
            "/steps/s/choices",
        ),
        (
            step(json!({"agent": "echo", "review": true, "choices": [1]})),
            "malformed_definition",
            "/steps/s/choices/0",
        ),
        (
            step(json!({"agent": "echo", "inputs": {"x": "nodot"}})),
            "invalid_input_mapping",
            "/steps/s/inputs/x",
        ),
        (
            step(json!({"agent": "echo", "inputs": {"x": 5}})),
            "malformed_definition",
            "/steps/s/inputs/x",
        ),
        (
            step(json!({"agent": "echo", "inputs": []})),
            "malformed_definition",
            "/steps/s/inputs",
        ),
        (
            step(
                json!({"agent": "echo", "depends_on": ["a"], "when": {"step": "a", "output": "out"}}),
            ),
            "invalid_condition",
            "/steps/s/when",
        ),
        (
            step(
                json!({"agent": "echo", "depends_on": ["a"], "when": {"step": "a", "output": "out", "equals": null}}),
            ),
            "invalid_condition",
            "/steps/s/when",
        ),
        (
            step(
                json!({"agent": "echo", "depends_on": ["a"], "when": {"step": "a", "output": "out", "in": []}}),
            ),
            "invalid_condition",
            "/steps/s/when",
        ),
        (
            step(
                json!({"agent": "echo", "depends_on": ["a"], "when": {"step": "a", "output": "o", "equals": 1, "in": [1]}}),
            ),
            "invalid_condition",
            "/steps/s/when",
        ),
        (
            step(
                json!({"agent": "echo", "depends_on": ["a"], "when": {"step": "a", "output": "o", "in": 5}}),
            ),
            "malformed_definition",
            "/steps/s/when/in",
        ),
        (
            step(json!({"agent": "echo", "when": {"step": "a", "equals": 1}})),
            "malformed_definition",
            "/steps/s/when",
        ),
        (
            step(json!({"agent": "echo", "when": "a"})),
            "malformed_definition",
            "/steps/s/when",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 0, "pass_threshold": 0.5}}),
            ),
            "invalid_refine",
            "/steps/s/refine/max_attempts",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 51, "pass_threshold": 0.5}}),
            ),
            "invalid_refine",
            "/steps/s/refine/max_attempts",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 2, "pass_threshold": 1.5}}),
            ),
            "invalid_refine",
            "/steps/s/refine/pass_threshold",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 2, "pass_threshold": -0.1}}),
            ),
            "invalid_refine",
            "/steps/s/refine/pass_threshold",
        ),
        (
            step(
                json!({"agent": "echo", "review": true, "refine": {"evaluator": "judge", "max_attempts": 2, "pass_threshold": 0.5}}),
            ),
            "invalid_refine",
            "/steps/s/review",
        ),
        (
            step(json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 2}})),
            "malformed_definition",
            "/steps/s/refine",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": 2, "pass_threshold": 0.5, "on_exhausted": "retry"}}),
            ),
            "malformed_definition",
            "/steps/s/refine/on_exhausted",
        ),
        (
            step(
                json!({"agent": "echo", "refine": {"evaluator": "judge", "max_attempts": -2, "pass_threshold": 0.5}}),
            ),
            "malformed_definition",
            "/steps/s/refine/max_attempts",
        ),
    ]
}

#[test]
fn a_refused_definition_gets_the_code_the_domain_gives_and_the_path_of_its_fault() {
    for (definition, code, pointer) in bad() {
        let domain = Definition::parse_and_validate(&definition, &agents())
            .expect_err(&format!("the domain accepts {definition}"));
        assert_eq!(domain.code(), code, "the domain on {definition}: {domain}");
        let (error, at) = definition_fault(&definition)
            .unwrap_or_else(|| panic!("the schema accepts {definition}"));
        assert_eq!(error.code(), code, "{definition}: {error}");
        assert_eq!(at, pointer, "{definition}: {error}");
    }
}

#[test]
fn the_message_names_the_step_at_fault() {
    let (error, _) = definition_fault(&json!({"steps": {
        "typo": {"agent": "echo", "dependson": ["a"]}
    }}))
    .unwrap();
    let message = error.to_string();
    assert!(message.contains("'typo'"), "{message}");
    assert!(message.contains("dependson"), "{message}");
    let (error, _) = definition_fault(&json!({"steps": {
        "retrier": {"agent": "echo", "retry": {"max_attempts": 0}}
    }}))
    .unwrap();
    assert!(error.to_string().contains("'retrier'"), "{error}");
}

#[test]
fn a_shape_fault_is_reported_before_a_value_out_of_range() {
    let (error, at) = definition_fault(&json!({"steps": {
        "a": {"agent": "echo", "retry": {"max_attempts": 0}},
        "b": {"agent": 7}
    }}))
    .unwrap();
    assert_eq!(error.code(), "malformed_definition");
    assert_eq!(at, "/steps/b/agent");
}

#[test]
fn the_api_error_carries_the_pointer_into_the_request_body() {
    let error =
        check_definition(&json!({"steps": {"a": {"agent": "echo", "retry": {"max_attempts": 0}}}}))
            .unwrap_err();
    assert_eq!(error.code(), "invalid_retry_policy");
    let response = actix_web::ResponseError::error_response(&error);
    assert_eq!(response.status(), 422);
    assert!(check_definition(&good()[1]).is_ok());
}

/// Replaces the value at every spot of `value` (and adds an unknown field
/// to every object), one at a time, with values that probe types and
/// bounds.
fn mutations(value: &Value) -> Vec<(Value, bool)> {
    let probes = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(1),
        json!(0.5),
        json!(50),
        json!(51),
        json!(101),
        json!(1000),
        json!(3_600_001),
        json!(""),
        json!(" "),
        json!("a"),
        json!("a.b"),
        json!("bad id"),
        json!([]),
        json!(["a"]),
        json!(["a", "a"]),
        json!({}),
    ];
    let mut out = Vec::new();
    fn walk(value: &Value, path: &mut Vec<String>, spots: &mut Vec<Vec<String>>) {
        spots.push(path.clone());
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    path.push(k.clone());
                    walk(v, path, spots);
                    path.pop();
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(v, path, spots);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut spots = Vec::new();
    walk(value, &mut Vec::new(), &mut spots);
    for spot in spots {
        let pointer: String = spot.iter().map(|s| format!("/{}", escape(s))).collect();
        let is_struct = matches!(
            spot.last().map(String::as_str),
            Some("retry" | "budget" | "refine" | "when")
        ) || (spot.len() == 2 && spot[0] == "steps");
        for probe in &probes {
            let mut mutated = value.clone();
            *mutated.pointer_mut(&pointer).unwrap() = probe.clone();
            out.push((mutated, is_struct && probe.is_array()));
        }
        let mut extra = value.clone();
        if let Some(map) = extra.pointer_mut(&pointer).unwrap().as_object_mut() {
            map.insert("unknown_field".into(), json!(1));
            out.push((extra, false));
        }
    }
    out
}

#[test]
fn the_schema_and_the_domain_agree_on_thousands_of_mutated_definitions() {
    let mut checked = 0;
    for definition in good() {
        for (mutated, array_for_struct) in mutations(&definition) {
            checked += 1;
            let domain = Definition::parse_and_validate(&mutated, &agents());
            let schema = definition_fault(&mutated);
            match (&domain, &schema) {
                (Ok(_), None) => {}
                // serde reads a struct from an array of its fields in
                // order (`"retry": [3, 10]`); the contract says object.
                (_, Some((error, _)))
                    if array_for_struct && error.code() == "malformed_definition" => {}
                (Ok(_), Some((error, at))) => {
                    panic!("the schema refuses what the domain accepts: {mutated}: {error} at {at}")
                }
                (Err(e), None) => assert!(
                    beyond_schema(e),
                    "the schema accepts what the domain refuses as {}: {mutated}: {e}",
                    e.code()
                ),
                (Err(e), Some((error, _))) => assert!(
                    e.code() == error.code() || beyond_schema(e),
                    "the domain says {} ({e}), the schema {} ({error}): {mutated}",
                    e.code(),
                    error.code()
                ),
            }
        }
    }
    assert!(checked > 1000, "{checked}");
}
