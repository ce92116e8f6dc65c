//! Who caused a command: the engine records it in the metadata of every
//! event the command commits (`caused_by`), so the history says who did
//! what (docs/events.md, "Metadata").

use crate::domain::ids::{AgentName, UserId};

/// The cause of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A user, through the API or the CLI.
    User(UserId),
    /// A remote worker (by the id it claims with).
    Worker(String),
    /// An in-process agent, reporting what a step did.
    Agent(AgentName),
    /// The engine itself: timers, recovery, takeovers, redirects' new runs.
    Engine,
    /// Nobody known: a server run with `--no-auth`.
    Anonymous,
}

impl Cause {
    /// How the metadata spells it: `user:<id>`, `worker:<id>`,
    /// `agent:<name>`, `engine`, `anonymous`.
    pub fn to_metadata(&self) -> String {
        match self {
            Self::User(id) => format!("user:{id}"),
            Self::Worker(id) => format!("worker:{id}"),
            Self::Agent(name) => format!("agent:{name}"),
            Self::Engine => "engine".to_string(),
            Self::Anonymous => "anonymous".to_string(),
        }
    }

    /// The user, if a user caused it.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Self::User(id) => Some(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_spelled_with_their_kind() {
        let user = UserId::parse("u-1").unwrap();
        assert_eq!(Cause::User(user.clone()).to_metadata(), "user:u-1");
        assert_eq!(Cause::User(user.clone()).user(), Some(&user));
        assert_eq!(Cause::Worker("w1".into()).to_metadata(), "worker:w1");
        assert_eq!(
            Cause::Agent(AgentName::parse("echo").unwrap()).to_metadata(),
            "agent:echo"
        );
        assert_eq!(Cause::Engine.to_metadata(), "engine");
        assert_eq!(Cause::Anonymous.user(), None);
    }
}
