//! `llm_judge`: an evaluator that asks the `llm` agent's model to score its
//! input 0..1 against the step's criteria and to say what to improve, in a
//! strict JSON answer (`{"score", "feedback"}`). Outputs `score` and
//! `feedback`, as `judge` does; the call's usage is recorded with the
//! attempt.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::judge::scored_text;
use super::llm::{ChatRequest, LlmClient};
use super::{Agent, AgentError, AgentOutputs, AgentResult, AgentSpec, StepContext};
use crate::domain::definition::ConfigFault;

/// The system prompt unless the step gives one.
const DEFAULT_SYSTEM: &str =
    "You are a strict evaluator. You answer with a JSON object and nothing else.";

/// The `llm_judge` agent.
pub struct LlmJudge {
    client: LlmClient,
}

impl LlmJudge {
    /// An `llm_judge` calling through `client`.
    pub fn new(client: LlmClient) -> Self {
        Self { client }
    }
}

/// The request that asks the model for a score.
pub fn scoring_prompt(criteria: &str, text: &str) -> String {
    format!(
        "Criteria:\n{criteria}\n\nText to score:\n{text}\n\nScore the text from 0 (fails the \
         criteria) to 1 (meets them all) and say what would improve it. Answer with only this \
         JSON object: {{\"score\": <a number from 0 to 1>, \"feedback\": \"<what to improve>\"}}"
    )
}

/// Reads `{"score", "feedback"}` from a model's answer (a code fence or
/// words around the object are tolerated).
pub fn parse_judgement(answer: &str) -> Option<(f64, String)> {
    let start = answer.find('{')?;
    let end = answer.rfind('}')?;
    let object: Value = serde_json::from_str(answer.get(start..=end)?).ok()?;
    let score = object["score"]
        .as_f64()
        .filter(|s| (0.0..=1.0).contains(s))?;
    let feedback = object["feedback"].as_str().unwrap_or_default().to_string();
    Some((score, feedback))
}

#[async_trait::async_trait(?Send)]
impl Agent for LlmJudge {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description: "Asks the LLM to score its input 0..1 against config.criteria, in a \
                          strict JSON answer; outputs score and feedback. An evaluator for refine \
                          loops."
                .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["criteria"],
                "properties": {
                    "criteria": {"type": "string", "minLength": 1},
                    "model": {"type": "string", "minLength": 1},
                    "system": {"type": "string"},
                    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                    "max_tokens": {"type": "integer", "minimum": 1},
                    "comments": {"type": "boolean"}
                }
            }),
            output_schema: Some(json!({
                "type": "object",
                "required": ["score", "feedback"],
                "properties": {
                    "score": {"type": "number", "minimum": 0, "maximum": 1},
                    "feedback": {"type": "string"}
                }
            })),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        self.client.check(config)
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        let model = self
            .client
            .model_for(&ctx.config)
            .ok_or_else(|| AgentError::NotRetryable("llm_judge: no model".into()))?;
        let criteria = ctx.config["criteria"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let system = ctx
            .config
            .get("system")
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_SYSTEM)
            .to_string();
        let request = ChatRequest {
            model,
            messages: vec![
                json!({"role": "system", "content": system}),
                json!({"role": "user", "content": scoring_prompt(&criteria, &scored_text(&ctx.input))}),
            ],
            temperature: ctx.config.get("temperature").and_then(Value::as_f64),
            max_tokens: ctx.config.get("max_tokens").and_then(Value::as_u64),
            stream: false,
            json: true,
        };
        let limit = ctx.limits.timeout;
        let completion = self
            .client
            .complete(request, &ctx.budgets, &ctx.progress, &mut ctx.stop, limit)
            .await?;
        let (score, feedback) = parse_judgement(&completion.text).ok_or_else(|| {
            let snippet: String = completion.text.chars().take(300).collect();
            AgentError::Failed(format!(
                "llm_judge: the model did not answer with {{\"score\": 0..1, \"feedback\"}}: {snippet}"
            ))
        })?;
        ctx.comment(format!(
            "llm_judge scored attempt {}: {score:.2}. {feedback}",
            ctx.attempt
        ));
        let outputs: AgentOutputs = BTreeMap::from([
            ("score".to_string(), json!(score)),
            ("feedback".to_string(), json!(feedback)),
        ]);
        Ok(AgentResult {
            outputs,
            usage: completion.usage,
            message: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_judgement_is_read_from_a_strict_or_a_fenced_answer() {
        assert_eq!(
            parse_judgement(r#"{"score": 0.8, "feedback": "shorter"}"#),
            Some((0.8, "shorter".into()))
        );
        assert_eq!(
            parse_judgement("```json\n{\"score\": 1, \"feedback\": \"\"}\n```"),
            Some((1.0, String::new()))
        );
    }

    #[test]
    fn an_answer_without_a_score_in_range_is_no_judgement() {
        assert_eq!(parse_judgement("great text!"), None);
        assert_eq!(parse_judgement(r#"{"score": 7, "feedback": "x"}"#), None);
        assert_eq!(parse_judgement(r#"{"feedback": "x"}"#), None);
    }
}
