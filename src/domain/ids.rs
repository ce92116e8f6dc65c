//! Identifier newtypes. Every id that crosses a module boundary is one of
//! these, parsed once at the edge (`parse`) so that the rest of the code never
//! handles a bare `String` id.
//!
//! Ids are generated outside the domain (the engine owns randomness); the
//! domain only checks their shape.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} '{value}': {reason}")]
pub struct InvalidId {
    /// Which kind of id ("run id", "step id", …).
    pub kind: &'static str,
    /// The refused text (truncated).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn check(kind: &'static str, value: &str, max: usize, extra: &[char]) -> Result<(), InvalidId> {
    let fail = |reason| InvalidId {
        kind,
        value: value.chars().take(80).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(fail("must not be empty"));
    }
    if value.len() > max {
        return Err(fail("is too long"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
    {
        return Err(fail("may hold only ASCII letters, digits, '_' and '-'"));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id.
            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check($kind, &value, $max, &[])?;
                Ok(Self(value))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        /// Maps keyed by the id can be searched by its text (`Eq`, `Ord`
        /// and `Hash` are those of the text).
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A workflow template's id.
    TemplateId,
    "template id",
    64
);
id_type!(
    /// A run's id.
    RunId,
    "run id",
    64
);
id_type!(
    /// A step's name, unique within a definition.
    StepId,
    "step id",
    64
);
id_type!(
    /// The name of an agent that executes steps.
    AgentName,
    "agent name",
    64
);
id_type!(
    /// The name of one output of a step.
    OutputName,
    "output name",
    64
);

id_type!(
    /// A user's id.
    UserId,
    "user id",
    64
);
id_type!(
    /// An API token's id (not the token: the id names it in lists and
    /// revocations).
    TokenId,
    "token id",
    64
);

/// The name of an artifact: `<step>.<output>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactName(String);

impl ArtifactName {
    /// The artifact written by `step` for its output `output`.
    pub fn new(step: &StepId, output: &OutputName) -> Self {
        Self(format!("{step}.{output}"))
    }

    /// Parses `<step>.<output>`.
    pub fn parse(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        let fail = |reason| InvalidId {
            kind: "artifact name",
            value: value.chars().take(80).collect(),
            reason,
        };
        let Some((step, output)) = value.split_once('.') else {
            return Err(fail("must be <step>.<output>"));
        };
        StepId::parse(step).map_err(|_| fail("the step part is not a valid step id"))?;
        OutputName::parse(output)
            .map_err(|_| fail("the output part is not a valid output name"))?;
        Ok(Self(value))
    }

    /// The step part.
    pub fn step(&self) -> &str {
        self.0.split_once('.').map_or("", |(s, _)| s)
    }

    /// The output part.
    pub fn output(&self) -> &str {
        self.0.split_once('.').map_or("", |(_, o)| o)
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ArtifactName {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<ArtifactName> for String {
    fn from(id: ArtifactName) -> String {
        id.0
    }
}

impl fmt::Display for ArtifactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A lease token: which dispatch of a step a completion belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// Wraps a token text (the engine makes them; the domain compares them).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// The domain never reads a clock: commands carry the time they happen at.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// RFC 3339 UTC with milliseconds (`2026-12-01T09:30:00.000Z`).
    pub fn to_rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    /// This timestamp plus `ms` milliseconds.
    pub fn plus_millis(self, ms: u64) -> Self {
        Self(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_slugs_and_refuse_the_rest() {
        assert!(StepId::parse("draft_a-1").is_ok());
        assert!(StepId::parse("").is_err());
        assert!(StepId::parse("a.b").is_err());
        assert!(StepId::parse("a b").is_err());
        assert!(StepId::parse("x".repeat(65)).is_err());
        assert!(RunId::parse("0b6d2a1e-5d3c-4a35-9d6e-0c6a8e2b9f10").is_ok());
    }

    #[test]
    fn artifact_names_split_into_step_and_output() {
        let name = ArtifactName::parse("outline.text").unwrap();
        assert_eq!((name.step(), name.output()), ("outline", "text"));
        assert!(ArtifactName::parse("outline").is_err());
        assert!(ArtifactName::parse("outline.").is_err());
        assert!(ArtifactName::parse(".text").is_err());
    }

    #[test]
    fn ids_deserialize_through_parse() {
        assert!(serde_json::from_str::<StepId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<StepId>("\"not ok\"").is_err());
    }
}
