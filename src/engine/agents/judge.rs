//! `judge`: a deterministic evaluator. It scores its input from 0 to 1 by
//! rules in its configuration (required keywords, forbidden words, length
//! bounds, a regular expression, a JSON Schema) and says what failed. The
//! score is the fraction of checks that pass: each keyword and each
//! forbidden word is one check, matched case-insensitively; `min_chars`,
//! `max_chars`, `pattern` and `schema` one check each. It scores the input's
//! `text` field, or the whole input as JSON when there is none.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::{Agent, AgentError, AgentOutputs, AgentResult, AgentSpec, StepContext};
use crate::domain::definition::ConfigFault;

/// The `judge` agent.
pub struct Judge;

/// One check and how it went.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// What was checked, e.g. `keyword 'owl'`.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// What failed, when it did.
    pub failure: Option<String>,
}

/// A judgement: the score and the checks behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    /// Passed checks over all checks, 0..1.
    pub score: f64,
    /// What failed, in a sentence (or that everything passed).
    pub feedback: String,
    /// Every check.
    pub checks: Vec<Check>,
}

/// The text a judge scores: the input's `text`, else the input as JSON.
pub fn scored_text(input: &Value) -> String {
    match input.get("text") {
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => match input {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        },
    }
}

/// Scores `input` by the rules of `config` (checked already).
pub fn judge(config: &Value, input: &Value) -> Result<Judgement, String> {
    let text = scored_text(input);
    let lower = text.to_lowercase();
    let chars = text.chars().count();
    let mut checks = Vec::new();
    let words = |key: &str| -> Vec<String> {
        config
            .get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for keyword in words("keywords") {
        let passed = lower.contains(&keyword.to_lowercase());
        checks.push(Check {
            name: format!("keyword '{keyword}'"),
            passed,
            failure: (!passed).then(|| format!("missing the keyword '{keyword}'")),
        });
    }
    for word in words("forbidden") {
        let passed = !lower.contains(&word.to_lowercase());
        checks.push(Check {
            name: format!("forbidden '{word}'"),
            passed,
            failure: (!passed).then(|| format!("contains the forbidden word '{word}'")),
        });
    }
    if let Some(min) = config.get("min_chars").and_then(Value::as_u64) {
        let passed = chars as u64 >= min;
        checks.push(Check {
            name: format!("at least {min} characters"),
            passed,
            failure: (!passed)
                .then(|| format!("too short: {chars} characters, at least {min} wanted")),
        });
    }
    if let Some(max) = config.get("max_chars").and_then(Value::as_u64) {
        let passed = chars as u64 <= max;
        checks.push(Check {
            name: format!("at most {max} characters"),
            passed,
            failure: (!passed)
                .then(|| format!("too long: {chars} characters, at most {max} wanted")),
        });
    }
    if let Some(pattern) = config.get("pattern").and_then(Value::as_str) {
        let regex = regex::Regex::new(pattern).map_err(|e| format!("judge: pattern: {e}"))?;
        let passed = regex.is_match(&text);
        checks.push(Check {
            name: format!("pattern /{pattern}/"),
            passed,
            failure: (!passed).then(|| format!("does not match the pattern /{pattern}/")),
        });
    }
    if let Some(schema) = config.get("schema") {
        let validator =
            jsonschema::validator_for(schema).map_err(|e| format!("judge: schema: {e}"))?;
        // The input as JSON: its text parsed when it is JSON, else the input.
        let document = serde_json::from_str::<Value>(&text).unwrap_or_else(|_| input.clone());
        let failure = validator.iter_errors(&document).next().map(|e| {
            let path = e.instance_path().to_string();
            format!(
                "does not satisfy the schema{}: {e}",
                if path.is_empty() {
                    String::new()
                } else {
                    format!(" at {path}")
                }
            )
        });
        checks.push(Check {
            name: "schema".into(),
            passed: failure.is_none(),
            failure,
        });
    }
    let passed = checks.iter().filter(|c| c.passed).count();
    let score = if checks.is_empty() {
        1.0
    } else {
        passed as f64 / checks.len() as f64
    };
    let failures: Vec<&str> = checks.iter().filter_map(|c| c.failure.as_deref()).collect();
    let feedback = if failures.is_empty() {
        format!("All {} checks passed.", checks.len())
    } else {
        format!(
            "{} of {} checks failed: {}.",
            failures.len(),
            checks.len(),
            failures.join("; ")
        )
    };
    Ok(Judgement {
        score,
        feedback,
        checks,
    })
}

#[async_trait::async_trait(?Send)]
impl Agent for Judge {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description: "Scores its input 0..1 by rules (keywords, forbidden words, length, a \
                          regex, a JSON Schema) and says what failed; outputs score, feedback and \
                          checks. An evaluator for refine loops."
                .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "properties": {
                    "keywords": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "forbidden": {"type": "array", "items": {"type": "string", "minLength": 1}},
                    "min_chars": {"type": "integer", "minimum": 0},
                    "max_chars": {"type": "integer", "minimum": 0},
                    "pattern": {"type": "string"},
                    "schema": {"type": ["object", "boolean"]},
                    "comments": {"type": "boolean"}
                }
            }),
            output_schema: Some(json!({
                "type": "object",
                "required": ["score", "feedback"],
                "properties": {
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "feedback": {"type": "string"},
                    "checks": {"type": "array"}
                }
            })),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        let checks = [
            "keywords",
            "forbidden",
            "min_chars",
            "max_chars",
            "pattern",
            "schema",
        ];
        if !checks.iter().any(|k| config.get(*k).is_some()) {
            return Err(ConfigFault {
                field: "config".into(),
                reason: format!("a judge needs at least one check: {}", checks.join(", ")),
            });
        }
        if let Some(pattern) = config.get("pattern").and_then(Value::as_str) {
            regex::Regex::new(pattern).map_err(|e| ConfigFault {
                field: "config.pattern".into(),
                reason: format!("not a valid regular expression: {e}"),
            })?;
        }
        if let Some(schema) = config.get("schema") {
            jsonschema::validator_for(schema).map_err(|e| ConfigFault {
                field: "config.schema".into(),
                reason: format!("not a valid JSON Schema: {e}"),
            })?;
        }
        if let (Some(min), Some(max)) = (
            config.get("min_chars").and_then(Value::as_u64),
            config.get("max_chars").and_then(Value::as_u64),
        ) {
            if min > max {
                return Err(ConfigFault {
                    field: "config.min_chars".into(),
                    reason: format!("{min} is more than max_chars ({max})"),
                });
            }
        }
        Ok(())
    }

    async fn run(&self, ctx: StepContext) -> Result<AgentResult, AgentError> {
        let (config, input) = (ctx.config.clone(), ctx.input.clone());
        // Regular expressions and schemas over large texts are CPU work.
        let judgement = ctx
            .cpu
            .run(move || judge(&config, &input))
            .await?
            .map_err(AgentError::NotRetryable)?;
        ctx.comment(format!(
            "judge scored attempt {}: {:.2}. {}",
            ctx.attempt, judgement.score, judgement.feedback
        ));
        let checks: Vec<Value> = judgement
            .checks
            .iter()
            .map(|c| json!({"check": c.name, "passed": c.passed}))
            .collect();
        let outputs: AgentOutputs = BTreeMap::from([
            ("score".to_string(), json!(judgement.score)),
            ("feedback".to_string(), json!(judgement.feedback)),
            ("checks".to_string(), Value::Array(checks)),
        ]);
        Ok(outputs.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_the_fraction_of_checks_that_pass_each_word_counting_once() {
        let config = json!({
            "keywords": ["owl", "Night"],
            "forbidden": ["cat", "dog"],
            "min_chars": 10,
            "max_chars": 20
        });
        // owl yes, night yes (case-insensitive), cat present, dog absent,
        // 27 characters: min passes, max fails.
        let j = judge(&config, &json!({"text": "An OWL at night, and a cat."})).unwrap();
        assert_eq!(j.checks.len(), 6);
        assert!((j.score - 4.0 / 6.0).abs() < 1e-9, "{j:?}");
        assert!(
            j.feedback.contains("forbidden word 'cat'"),
            "{}",
            j.feedback
        );
        assert!(
            j.feedback.contains("too long: 27 characters"),
            "{}",
            j.feedback
        );
        assert!(
            j.feedback.starts_with("2 of 6 checks failed"),
            "{}",
            j.feedback
        );
    }

    #[test]
    fn everything_passing_scores_one() {
        let j = judge(&json!({"keywords": ["a"]}), &json!({"text": "a"})).unwrap();
        assert_eq!(j.score, 1.0);
        assert_eq!(j.feedback, "All 1 checks passed.");
    }

    #[test]
    fn a_pattern_and_a_schema_are_one_check_each() {
        let config = json!({
            "pattern": "^\\d{4}-\\d{2}$",
            "schema": {"type": "object", "required": ["title"]}
        });
        let j = judge(&config, &json!({"text": "2024-05"})).unwrap();
        // The pattern matches; "2024-05" is not JSON, so the input itself
        // ({"text": …}) is checked against the schema, and has no title.
        assert_eq!(j.score, 0.5, "{j:?}");
        let j = judge(&config, &json!({"text": "{\"title\": \"x\"}"})).unwrap();
        assert_eq!(j.score, 0.5, "{j:?}");
        assert!(j.feedback.contains("pattern"), "{}", j.feedback);
    }

    #[test]
    fn without_a_text_field_the_whole_input_is_judged_as_json() {
        let j = judge(
            &json!({"keywords": ["42"]}),
            &json!({"draft": {"answer": 42}}),
        )
        .unwrap();
        assert_eq!(j.score, 1.0);
        assert_eq!(scored_text(&json!("plain")), "plain");
    }

    #[test]
    fn a_configuration_without_checks_or_with_a_bad_regex_is_refused() {
        assert_eq!(
            Judge
                .check_config(&json!({"comments": false}))
                .unwrap_err()
                .field,
            "config"
        );
        assert_eq!(
            Judge
                .check_config(&json!({"pattern": "("}))
                .unwrap_err()
                .field,
            "config.pattern"
        );
        assert_eq!(
            Judge
                .check_config(&json!({"min_chars": 5, "max_chars": 2}))
                .unwrap_err()
                .field,
            "config.min_chars"
        );
    }
}
