//! Rendering minijinja templates under limits: a fuel budget (bounds the
//! work, so a runaway loop ends) and an output cap (bounds the memory the
//! result takes). Used by the `template` agent and wherever an agent's
//! configuration interpolates values (prompts, headers).

use std::io::Write;

use serde::Serialize;

use super::AgentLimits;

/// Renders `source` with `context`, undefined names being errors.
pub fn render(
    source: &str,
    context: impl Serialize,
    limits: &AgentLimits,
) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(limits.template_fuel));
    let template = env.template_from_str(source).map_err(|e| e.to_string())?;
    let mut out = Capped::new(limits.max_output_bytes);
    let rendered = template.render_captured_to(context, &mut out).map(|_| ());
    match rendered {
        Ok(()) => String::from_utf8(out.bytes).map_err(|e| e.to_string()),
        Err(_) if out.overflowed => Err(format!(
            "the rendering is longer than {} bytes (the output limit)",
            limits.max_output_bytes
        )),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(format!(
            "the rendering took more than its {} units of fuel (too much work: a loop too long?)",
            limits.template_fuel
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A writer that refuses to grow past a limit.
struct Capped {
    bytes: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl Capped {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("output limit reached"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn limits(fuel: u64, max_output_bytes: usize) -> AgentLimits {
        AgentLimits {
            template_fuel: fuel,
            max_output_bytes,
            ..AgentLimits::default()
        }
    }

    #[test]
    fn a_template_renders_its_context() {
        let text = render(
            "{{ a }}-{{ b | join(',') }}",
            json!({"a": 1, "b": ["x", "y"]}),
            &AgentLimits::default(),
        );
        assert_eq!(text.unwrap(), "1-x,y");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let err = render(
            "{% for i in range(100000) %}{% for j in range(1500) %}{% endfor %}{% endfor %}",
            json!({}),
            &AgentLimits::default(),
        )
        .unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn a_rendering_longer_than_the_output_limit_is_cut_off_with_a_clear_error() {
        let err = render(
            "{% for i in range(1000) %}0123456789{% endfor %}",
            json!({}),
            &limits(1_000_000, 5_000),
        )
        .unwrap_err();
        assert!(err.contains("longer than 5000 bytes"), "{err}");
        let ok = render(
            "{% for i in range(100) %}0123456789{% endfor %}",
            json!({}),
            &limits(1_000_000, 5_000),
        );
        assert_eq!(ok.unwrap().len(), 1_000);
    }

    #[test]
    fn undefined_names_are_errors() {
        let err = render("{{ nope.x }}", json!({}), &AgentLimits::default()).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }
}
