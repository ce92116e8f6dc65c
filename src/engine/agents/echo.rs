//! `echo`: returns its input; `delay_ms`, `fail_times` and `stop_early` make
//! it slow, flaky or stoppable, for tests, demos and benchmarks.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use serde_json::json;

use super::{Agent, AgentError, AgentOutputs, AgentResult, AgentSpec, StepContext};

/// `echo`: outputs its input. An object input gives one output per key;
/// anything else gives the single output `value`. Config: `delay_ms` (wait
/// that long first), `fail_times` (fail the first N attempts), `stop_early`
/// (stop waiting when the run asks it to stop).
pub struct Echo;

#[async_trait::async_trait(?Send)]
impl Agent for Echo {
    fn spec(&self) -> AgentSpec {
        AgentSpec {
            description: "Returns its input as its outputs: each key of an object input is an \
                          output, anything else the output `value`. For tests and demos."
                .into(),
            config_schema: json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "delay_ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000,
                                 "description": "Wait this long first."},
                    "fail_times": {"type": "integer", "minimum": 0,
                                   "description": "Fail the first N attempts."},
                    "stop_early": {"type": "boolean",
                                   "description": "Stop waiting when the run asks its agents to stop."},
                    "comments": {"type": "boolean",
                                 "description": "Post start and finish comments (default true)."},
                    "message": {
                        "type": "object",
                        "description": "A message for the run's thread, returned with the outputs \
                                        (see AgentMessage): with buttons, the user answers with a \
                                        click; a button's next_step makes the step wait for it.",
                        "required": ["content"],
                        "additionalProperties": false,
                        "properties": {
                            "content": {"type": "string", "minLength": 1},
                            "buttons": {
                                "type": "array",
                                "maxItems": crate::domain::run::MAX_BUTTONS,
                                "items": {
                                    "type": "object",
                                    "required": ["id", "label", "value"],
                                    "additionalProperties": false,
                                    "properties": {
                                        "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                                        "label": {"type": "string", "minLength": 1, "maxLength": 1000},
                                        "value": {"type": "string", "maxLength": 1000},
                                        "user_message": {"type": "string", "maxLength": 1000},
                                        "next_step": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
                                    }
                                }
                            },
                            "input": {
                                "type": "object",
                                "additionalProperties": false,
                                "properties": {"file": {"type": "boolean"}, "prompt": {"type": "boolean"}}
                            }
                        }
                    }
                }
            }),
            output_schema: None,
        }
    }

    async fn run(&self, mut ctx: StepContext) -> Result<AgentResult, AgentError> {
        ctx.comment(format!("echo started attempt {}.", ctx.attempt));
        let delay = ctx
            .config
            .get("delay_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let fail_times = ctx
            .config
            .get("fail_times")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let stop_early = ctx.config.get("stop_early").and_then(Value::as_bool) == Some(true);
        if delay > 0 {
            let sleep = tokio::time::sleep(Duration::from_millis(delay));
            if stop_early {
                tokio::select! {
                    () = sleep => {}
                    () = ctx.stop.raised() => {
                        ctx.comment(format!("echo stopped attempt {} early, as asked.", ctx.attempt));
                        return Err(AgentError::Stopped);
                    }
                }
            } else {
                sleep.await;
            }
        }
        if u64::from(ctx.attempt) <= fail_times {
            return Err(AgentError::Failed(format!(
                "echo: failing attempt {} of the first {fail_times} as configured",
                ctx.attempt
            )));
        }
        let outputs: AgentOutputs = match ctx.input.clone() {
            Value::Object(map) if !map.is_empty() => map.into_iter().collect(),
            other => BTreeMap::from([("value".to_string(), other)]),
        };
        ctx.comment(format!(
            "echo finished attempt {} with outputs: {}.",
            ctx.attempt,
            outputs.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
        Ok(AgentResult {
            message: self.declared_message(&ctx.config),
            ..outputs.into()
        })
    }

    fn declared_message(&self, config: &Value) -> Option<crate::domain::run::AgentMessage> {
        crate::domain::run::AgentMessage::parse(config.get("message")?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::agents::testing::*;
    use crate::engine::agents::{CommentSink, StopSignal};
    use serde_json::json;

    #[tokio::test]
    async fn echo_returns_each_key_of_an_object_input_as_an_output() {
        let out = Echo
            .run(ctx(1, Value::Null, json!({"a": 1, "b": "x"})))
            .await
            .unwrap()
            .outputs;
        assert_eq!(
            out,
            BTreeMap::from([("a".into(), json!(1)), ("b".into(), json!("x"))])
        );
        let out = Echo
            .run(ctx(1, Value::Null, json!(7)))
            .await
            .unwrap()
            .outputs;
        assert_eq!(out, BTreeMap::from([("value".into(), json!(7))]));
    }
    #[tokio::test]
    async fn echo_fails_the_configured_number_of_attempts() {
        let config = json!({"fail_times": 2});
        assert!(Echo.run(ctx(1, config.clone(), json!({}))).await.is_err());
        assert!(Echo.run(ctx(2, config.clone(), json!({}))).await.is_err());
        assert!(Echo.run(ctx(3, config, json!({}))).await.is_ok());
    }
    #[actix_web::test]
    async fn echo_with_stop_early_stops_when_asked_while_it_waits() {
        let (raise, stop) = StopSignal::channel();
        let (said, mut heard) = tokio::sync::mpsc::unbounded_channel();
        let mut context = ctx(
            1,
            json!({"delay_ms": 3_600_000, "stop_early": true}),
            json!({"a": 1}),
        );
        context.stop = stop;
        context.comments = CommentSink::new(move |text| {
            let _ = said.send(text);
        });
        let running = actix_web::rt::spawn(Echo.run(context));
        // Its start comment comes just before it waits: raise the signal
        // once it has been said.
        let started = bounded_value(heard.recv()).await.unwrap();
        assert!(started.contains("started attempt 1"), "{started}");
        raise.send(true).unwrap();
        let result = bounded(async { running.await.unwrap() }).await;
        assert_eq!(result, Err(AgentError::Stopped));
        // It said it stopped, and never that it finished.
        let mut rest = Vec::new();
        while let Ok(text) = heard.try_recv() {
            rest.push(text);
        }
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert!(!rest[0].contains("finished"), "{rest:?}");
    }
    #[tokio::test]
    async fn echo_stops_at_once_when_asked_before_it_waits() {
        let (raise, stop) = StopSignal::channel();
        raise.send(true).unwrap();
        let mut context = ctx(
            2,
            json!({"delay_ms": 3_600_000, "stop_early": true}),
            json!({}),
        );
        context.stop = stop;
        assert!(context.stop.is_raised());
        let result = bounded(Echo.run(context)).await;
        assert_eq!(result, Err(AgentError::Stopped));
    }
    #[tokio::test]
    async fn echo_without_stop_early_finishes_even_when_asked_to_stop() {
        let (raise, stop) = StopSignal::channel();
        raise.send(true).unwrap();
        let mut context = ctx(1, json!({"delay_ms": 1}), json!({"a": 1}));
        context.stop = stop;
        let out = bounded(Echo.run(context)).await.unwrap();
        assert_eq!(out, BTreeMap::from([("a".into(), json!(1))]));
    }
    #[tokio::test]
    async fn a_configured_failure_is_a_failed_attempt_not_a_stop() {
        let err = Echo
            .run(ctx(1, json!({"fail_times": 1}), json!({})))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Failed(_)), "{err:?}");
    }
}
