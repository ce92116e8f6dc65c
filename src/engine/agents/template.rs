//! `template`: renders `config.text` with minijinja.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::render::render;
use super::{Agent, AgentError, AgentOutputs, AgentResult, AgentSpec, StepContext};
use crate::domain::definition::ConfigFault;

/// `template`: renders `config.text` with minijinja. The context holds
/// `input` (the run input), `inputs` (the step's input), `attempt` (the
/// attempt's number), `steps` (every
/// completed upstream step's outputs), each upstream step by name, `prompt`
/// (the attempt's prompt: the override, else the step's own, else null) and
/// `instructions` (the instruction messages handed to the attempt, a list of
/// strings). Output: `text`.
pub struct TemplateAgent;

#[async_trait::async_trait(?Send)]
impl Agent for TemplateAgent {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description: "Renders `config.text` with minijinja (input, inputs, steps, each \
                          upstream step by name, prompt, instructions); output `text`."
                .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["text"],
                "properties": {
                    "text": {"type": "string", "description": "The template."},
                    "comments": {"type": "boolean",
                                 "description": "Post start and finish comments (default true)."}
                }
            }),
            output_schema: Some(json!({
                "type": "object",
                "properties": {"text": {"type": "string"}},
                "required": ["text"]
            })),
        }
    }

    fn check_config(&self, config: &Value) -> Result<(), ConfigFault> {
        let text = config
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let env = minijinja::Environment::new();
        env.template_from_str(text)
            .map(|_| ())
            .map_err(|e| ConfigFault {
                field: "config.text".into(),
                reason: format!("the template does not parse: {e}"),
            })
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        let Some(text) = ctx.config.get("text").and_then(Value::as_str) else {
            return Err(AgentError::Failed(
                "template: config.text (a string) is required".to_string(),
            ));
        };
        ctx.comment(format!("template started attempt {}.", ctx.attempt));
        let mut context = Map::new();
        for (step, outputs) in &ctx.upstream {
            context.insert(step.clone(), outputs.clone());
        }
        context.insert(
            "steps".into(),
            Value::Object(ctx.upstream.clone().into_iter().collect()),
        );
        context.insert("input".into(), ctx.run_input.clone());
        context.insert("attempt".into(), ctx.attempt.into());
        context.insert("inputs".into(), ctx.input.clone());
        context.insert(
            "prompt".into(),
            ctx.effective_prompt()
                .map_or(Value::Null, |p| Value::String(p.into())),
        );
        context.insert(
            "instructions".into(),
            Value::Array(
                ctx.instructions
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        );
        // Off the agent threads, under the fuel and output limits; a stop
        // stops the wait (the rendering itself ends by its fuel).
        let (text, limits) = (text.to_string(), ctx.limits);
        let rendering = ctx
            .cpu
            .run(move || render(&text, Value::Object(context), &limits));
        let rendered = tokio::select! {
            rendered = rendering => rendered?.map_err(|e| format!("template: {e}"))?,
            () = ctx.stop.raised() => return Err(AgentError::Stopped),
        };
        ctx.comment(format!("template finished attempt {}.", ctx.attempt));
        let outputs: AgentOutputs = BTreeMap::from([("text".to_string(), Value::String(rendered))]);
        Ok(outputs.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::agents::testing::*;
    use serde_json::json;

    #[tokio::test]
    async fn template_renders_run_input_and_upstream_outputs() {
        let config =
            json!({"text": "{{ input.topic }} / {{ outline.text }} / {{ steps.outline.text }}"});
        let out = TemplateAgent
            .run(ctx(1, config, json!({})))
            .await
            .unwrap()
            .outputs;
        assert_eq!(out["text"], json!("owls / 1. owls / 1. owls"));
    }
    #[tokio::test]
    async fn template_sees_the_attempts_prompt_and_instructions() {
        let config = json!({"text": "{{ prompt }}|{{ instructions | join(';') }}"});
        let mut context = ctx(1, config.clone(), json!({}));
        context.prompt = Some("write".into());
        context.instructions = vec!["be brief".into(), "no jargon".into()];
        let out = TemplateAgent.run(context.clone()).await.unwrap().outputs;
        assert_eq!(out["text"], json!("write|be brief;no jargon"));

        // A prompt override wins over the step's prompt.
        context.prompt_override = Some("rewrite".into());
        let out = TemplateAgent.run(context).await.unwrap().outputs;
        assert_eq!(out["text"], json!("rewrite|be brief;no jargon"));

        // With neither, the prompt is null and the instructions are empty.
        let config = json!({
            "text": "{{ 'null' if prompt is none else prompt }}|{{ instructions | length }}"
        });
        let out = TemplateAgent
            .run(ctx(1, config, json!({})))
            .await
            .unwrap()
            .outputs;
        assert_eq!(out["text"], json!("null|0"));
    }
    #[tokio::test]
    async fn template_fails_clearly_without_text_or_on_undefined_names() {
        let err = TemplateAgent
            .run(ctx(1, json!({}), json!({})))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("config.text"));
        let err = TemplateAgent
            .run(ctx(1, json!({"text": "{{ nope.x }}"}), json!({})))
            .await
            .unwrap_err();
        assert!(err.to_string().starts_with("template:"), "{err}");
    }
}
