//! The template definition as a contract: `schema/definition.schema.json`
//! is what the server checks every definition it is given against (POST
//! /api/templates, PUT /api/templates/{id}), before the domain parses and
//! validates it. The same file documents the definition for clients (and is
//! the schema the OpenAPI document embeds).
//!
//! The schema is compiled once, on first use. A definition it refuses is
//! answered with the code the domain gives the same fault
//! (`malformed_definition` for a shape serde would refuse, 400;
//! `invalid_retry_policy`, `invalid_budget`, `empty_definition` … for a
//! value out of range, 422), with `path`: the JSON pointer of the failing
//! spot in the request body (`/definition/steps/a/retry/max_attempts`).
//! What a schema cannot say (unknown dependencies, cycles, unknown agents,
//! inputs and conditions that must point upstream, agent configurations)
//! stays with [`Definition::validate`](crate::domain::definition::Definition::validate).
//!
//! Depends on the domain's error type only; used by the template handlers.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::JsonType;
use jsonschema::ValidationError;
use serde_json::{json, Value};

use super::ApiError;
use crate::domain::definition::{DefinitionError, MAX_STEPS};
use crate::domain::ids::StepId;

/// `schema/definition.schema.json`, as built into the server.
pub const DEFINITION_SCHEMA: &str = include_str!("../../schema/definition.schema.json");

/// The compiled definition schema.
fn definition_validator() -> &'static jsonschema::Validator {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        let schema: Value =
            serde_json::from_str(DEFINITION_SCHEMA).expect("the definition schema is JSON");
        jsonschema::validator_for(&schema).expect("the definition schema compiles")
    })
}

/// Checks a definition, as a client sent it under `definition`, against
/// `schema/definition.schema.json`; the refusal carries the domain's code
/// for the fault and the pointer of the failing spot (`path`).
pub fn check_definition(definition: &Value) -> Result<(), ApiError> {
    match definition_fault(definition) {
        None => Ok(()),
        Some((error, pointer)) => {
            Err(ApiError::from(error).with_detail("path", json!(format!("/definition{pointer}"))))
        }
    }
}

/// The fault the domain would report first, and the JSON pointer (within
/// the definition) of where it is; `None` when the schema accepts it.
pub(crate) fn definition_fault(definition: &Value) -> Option<(DefinitionError, String)> {
    let errors: Vec<ValidationError<'_>> = definition_validator().iter_errors(definition).collect();
    let mut leaves = Vec::new();
    for error in &errors {
        flatten(error, &mut leaves);
    }
    leaves
        .into_iter()
        .map(classify)
        .min_by(|a, b| a.rank.cmp(&b.rank))
        .map(|fault| (fault.error, fault.pointer))
}

/// Replaces an `anyOf` between a schema and `{"type": "null"}` (an
/// optional field) by the errors of the schema, which say what is wrong.
fn flatten<'e, 'a>(error: &'e ValidationError<'a>, out: &mut Vec<&'e ValidationError<'a>>) {
    if let ValidationErrorKind::AnyOf { context } = error.kind() {
        if !error.instance().is_null() {
            let is_null_branch = |branch: &Vec<ValidationError<'static>>| {
                matches!(branch.as_slice(), [e] if matches!(e.kind(),
                    ValidationErrorKind::Type { kind: TypeKind::Single(JsonType::Null) }))
            };
            let (null, other): (Vec<_>, Vec<_>) = context.iter().partition(|b| is_null_branch(b));
            if null.len() == 1 && other.len() == 1 {
                for inner in other[0] {
                    flatten(inner, out);
                }
                return;
            }
        }
    }
    out.push(error);
}

/// A schema error read as a domain fault.
struct Fault {
    /// Which fault the domain reports first: shape before ranges (parse
    /// before validate), the definition before its steps, steps in name
    /// order, and within a step the order of `Definition::validate`.
    rank: (u8, u8, String, u8),
    error: DefinitionError,
    pointer: String,
}

/// Keywords that bound a value the Rust types accept; anything else is a
/// shape serde refuses (`pattern` too, but for the text of a choice and an
/// input mapping's source, which are plain strings to serde).
const RANGE_KEYWORDS: [&str; 11] = [
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
];

fn classify(error: &ValidationError<'_>) -> Fault {
    let keyword = error.kind().keyword();
    let mut pointer = error.instance_path().as_str().to_string();
    let segments: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let schema_path = error.schema_path().as_str().to_string();
    let mut reason = error.to_string();
    match error.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } if unexpected.len() == 1 => {
            pointer = format!("{pointer}/{}", escape(&unexpected[0]));
        }
        ValidationErrorKind::PropertyNames { error: name } => {
            if let Some(key) = name.instance().as_str() {
                pointer = format!("{pointer}/{}", escape(key));
                reason = format!("invalid step id: {name}");
                let fault = DefinitionError::MalformedStep {
                    step: key.to_string(),
                    reason,
                };
                return shape(fault, 3, key, pointer);
            }
        }
        _ => {}
    }
    // A value out of range that its Rust type could not even hold is a
    // shape fault, as serde would report it (a negative `max_attempts`).
    let ranged = (RANGE_KEYWORDS.contains(&keyword) && fits(&segments, error.instance()))
        || (matches!(keyword, "anyOf" | "oneOf") && error.instance().is_object())
        || keyword == "const"
        || (keyword == "required" && schema_path.contains("/then/"));
    let field = segments.get(2..).unwrap_or_default().join(".");
    let explained = if field.is_empty() {
        reason.clone()
    } else {
        format!("{field}: {reason}")
    };
    match segments.as_slice() {
        ["steps"] if keyword == "minProperties" => range(DefinitionError::Empty, 0, "", 0, pointer),
        ["steps"] if keyword == "maxProperties" => range(
            DefinitionError::TooManySteps { max: MAX_STEPS },
            0,
            "",
            0,
            pointer,
        ),
        ["budget", ..] if ranged => {
            let reason = if keyword == "anyOf" {
                "give max_tokens, max_cost or both".to_string()
            } else {
                format!("{}: {reason}", segments[1..].join("."))
            };
            range(
                DefinitionError::InvalidBudget { step: None, reason },
                1,
                "",
                0,
                pointer,
            )
        }
        ["budget", ..] => shape(
            DefinitionError::Malformed(format!("'budget' is malformed: {reason}")),
            2,
            "",
            pointer,
        ),
        ["steps", step, rest @ ..] => {
            let Ok(id) = StepId::parse(*step) else {
                let fault = DefinitionError::MalformedStep {
                    step: step.to_string(),
                    reason: explained,
                };
                return shape(fault, 3, step, pointer);
            };
            let in_step = |error: DefinitionError, order: u8, pointer: String| Fault {
                rank: (1, 2, step.to_string(), order),
                error,
                pointer,
            };
            match rest {
                _ if ranged && schema_path.contains("/allOf/0/") => in_step(
                    DefinitionError::InvalidChoices {
                        step: id,
                        reason: "only a review step (\"review\": true) can offer choices".into(),
                    },
                    5,
                    pointer,
                ),
                _ if ranged && schema_path.contains("/allOf/1/") => in_step(
                    DefinitionError::InvalidRefine {
                        step: id,
                        reason: "a step cannot both refine and await review (put the review on \
                                 a step after it)"
                            .into(),
                    },
                    3,
                    pointer,
                ),
                ["retry", ..] if ranged => in_step(
                    DefinitionError::InvalidRetryPolicy {
                        step: id,
                        reason: explained,
                    },
                    0,
                    pointer,
                ),
                ["budget", ..] if ranged => {
                    let reason = if keyword == "anyOf" {
                        "give max_tokens, max_cost or both".to_string()
                    } else {
                        explained
                    };
                    in_step(
                        DefinitionError::InvalidBudget {
                            step: Some(id),
                            reason,
                        },
                        1,
                        pointer,
                    )
                }
                ["heartbeat_timeout_ms"] if ranged => in_step(
                    DefinitionError::InvalidStepField {
                        step: id,
                        field: "heartbeat_timeout_ms",
                        reason,
                    },
                    2,
                    pointer,
                ),
                ["refine", ..] if ranged => in_step(
                    DefinitionError::InvalidRefine {
                        step: id,
                        reason: explained,
                    },
                    3,
                    pointer,
                ),
                ["inputs", input] if keyword == "pattern" => in_step(
                    DefinitionError::InvalidInputMapping {
                        step: id,
                        input: input.to_string(),
                        source_ref: error.instance().as_str().unwrap_or_default().to_string(),
                        reason: "a source must be written <step>.<output>",
                    },
                    4,
                    pointer,
                ),
                ["choices", ..] if ranged || keyword == "pattern" => in_step(
                    DefinitionError::InvalidChoices {
                        step: id,
                        reason: explained,
                    },
                    5,
                    pointer,
                ),
                ["when"] if keyword == "oneOf" => in_step(
                    DefinitionError::InvalidCondition {
                        step: id,
                        reason: "give 'equals' (not null) or 'in' (at least one value), not both"
                            .into(),
                    },
                    6,
                    pointer,
                ),
                _ => {
                    let fault = DefinitionError::MalformedStep {
                        step: step.to_string(),
                        reason: explained,
                    };
                    shape(fault, 3, step, pointer)
                }
            }
        }
        [first, ..] if *first == "input_schema" => shape(
            DefinitionError::Malformed(format!(
                "'input_schema' must be a JSON Schema (an object, or true or false): {reason}"
            )),
            1,
            "",
            pointer,
        ),
        _ => shape(DefinitionError::Malformed(explained), 0, "", pointer),
    }
}

/// A fault of shape (what `Definition::parse` refuses), ranked first.
fn shape(error: DefinitionError, place: u8, step: &str, pointer: String) -> Fault {
    Fault {
        rank: (0, place, step.to_string(), 0),
        error,
        pointer,
    }
}

/// A value out of range (what `Definition::validate` refuses).
fn range(error: DefinitionError, place: u8, step: &str, order: u8, pointer: String) -> Fault {
    Fault {
        rank: (1, place, step.to_string(), order),
        error,
        pointer,
    }
}

/// Whether a number at `segments` fits the Rust type of its field (the
/// integer fields are `u32` or `u64`; `max_cost` and `pass_threshold` are
/// `f64`). Not numbers always fit: their bounds are lengths and counts.
fn fits(segments: &[&str], value: &Value) -> bool {
    let Some(number) = value.as_number() else {
        return true;
    };
    match segments.last().copied() {
        Some("max_cost" | "pass_threshold") => true,
        Some("max_attempts") => number.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
        _ => number.as_u64().is_some(),
    }
}

/// A JSON pointer segment for `key`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
