//! The Template aggregate: a named, versioned workflow definition. Admins
//! create it, revise it (each revision is a new version; runs keep the version
//! they started from) and archive it.

use std::sync::Arc;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{AgentCatalog, Definition, DefinitionError};
use super::ids::{TemplateId, Timestamp};

/// Longest template name accepted.
pub const MAX_NAME_LEN: usize = 200;
/// Longest description accepted.
pub const MAX_DESCRIPTION_LEN: usize = 10_000;

/// Commands to a template.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateCommand {
    /// Create the template at version 1.
    Create {
        /// The new template's id.
        id: TemplateId,
        /// Its display name.
        name: String,
        /// Optional description.
        description: Option<String>,
        /// The definition, as sent (parsed and validated by the aggregate).
        definition: Value,
        /// When.
        at: Timestamp,
    },
    /// Replace the definition with a new version.
    Revise {
        /// The new definition, as sent.
        definition: Value,
        /// A new description, if given.
        description: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// Archive the template: no new run may start from it.
    Archive {
        /// When.
        at: Timestamp,
    },
}

/// Events of a template (`event_version` 1.0 each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TemplateEvent {
    /// The template was created at version 1.
    TemplateCreated {
        /// Its id.
        template_id: TemplateId,
        /// Its name.
        name: String,
        /// Its description.
        description: Option<String>,
        /// Always 1.
        version: u32,
        /// The validated definition.
        definition: Definition,
        /// When.
        at: Timestamp,
    },
    /// The definition was replaced; `version` is the new version number.
    TemplateRevised {
        /// The new version.
        version: u32,
        /// The new definition.
        definition: Definition,
        /// The description after the revision.
        description: Option<String>,
        /// When.
        at: Timestamp,
    },
    /// The template was archived.
    TemplateArchived {
        /// When.
        at: Timestamp,
    },
}

impl DomainEvent for TemplateEvent {
    fn event_type(&self) -> String {
        match self {
            Self::TemplateCreated { .. } => "TemplateCreated",
            Self::TemplateRevised { .. } => "TemplateRevised",
            Self::TemplateArchived { .. } => "TemplateArchived",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Business-rule refusals of template commands.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    /// Create on a template that exists.
    #[error("template already exists")]
    AlreadyExists,
    /// Revise or archive on a template that does not exist.
    #[error("template not found")]
    NotFound,
    /// Revise or archive on an archived template.
    #[error("template is archived")]
    Archived,
    /// The name is empty or too long.
    #[error("invalid template name: {0}")]
    InvalidName(&'static str),
    /// The description is too long.
    #[error("description is longer than {MAX_DESCRIPTION_LEN} characters")]
    DescriptionTooLong,
    /// The definition was refused.
    #[error(transparent)]
    InvalidDefinition(#[from] DefinitionError),
}

/// The state of a template, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// Its id, once created.
    pub id: Option<TemplateId>,
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// The current version (0 before creation).
    pub version: u32,
    /// The current definition.
    pub definition: Option<Arc<Definition>>,
    /// Whether it is archived.
    pub archived: bool,
}

/// What template commands need from outside: the agents the server knows.
pub struct TemplateServices {
    /// Known agents.
    pub agents: Arc<dyn AgentCatalog>,
}

impl Template {
    /// Decides the events for `command` without changing `self`.
    pub fn decide(
        &self,
        command: TemplateCommand,
        agents: &dyn AgentCatalog,
    ) -> Result<Vec<TemplateEvent>, TemplateError> {
        match command {
            TemplateCommand::Create {
                id,
                name,
                description,
                definition,
                at,
            } => {
                if self.id.is_some() {
                    return Err(TemplateError::AlreadyExists);
                }
                let name = name.trim().to_string();
                if name.is_empty() {
                    return Err(TemplateError::InvalidName("must not be empty"));
                }
                if name.chars().count() > MAX_NAME_LEN {
                    return Err(TemplateError::InvalidName("longer than 200 characters"));
                }
                check_description(description.as_deref())?;
                let definition = Definition::parse_and_validate(&definition, agents)?;
                Ok(vec![TemplateEvent::TemplateCreated {
                    template_id: id,
                    name,
                    description,
                    version: 1,
                    definition,
                    at,
                }])
            }
            TemplateCommand::Revise {
                definition,
                description,
                at,
            } => {
                self.check_writable()?;
                check_description(description.as_deref())?;
                let definition = Definition::parse_and_validate(&definition, agents)?;
                Ok(vec![TemplateEvent::TemplateRevised {
                    version: self.version + 1,
                    definition,
                    description: description.or_else(|| self.description.clone()),
                    at,
                }])
            }
            TemplateCommand::Archive { at } => {
                self.check_writable()?;
                Ok(vec![TemplateEvent::TemplateArchived { at }])
            }
        }
    }

    fn check_writable(&self) -> Result<(), TemplateError> {
        if self.id.is_none() {
            return Err(TemplateError::NotFound);
        }
        if self.archived {
            return Err(TemplateError::Archived);
        }
        Ok(())
    }
}

fn check_description(description: Option<&str>) -> Result<(), TemplateError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_LEN => {
            Err(TemplateError::DescriptionTooLong)
        }
        _ => Ok(()),
    }
}

impl Aggregate for Template {
    const TYPE: &'static str = "Template";
    type Command = TemplateCommand;
    type Event = TemplateEvent;
    type Error = TemplateError;
    type Services = TemplateServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, services.agents.as_ref())? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            TemplateEvent::TemplateCreated {
                template_id,
                name,
                description,
                version,
                definition,
                ..
            } => {
                self.id = Some(template_id);
                self.name = name;
                self.description = description;
                self.version = version;
                self.definition = Some(Arc::new(definition));
            }
            TemplateEvent::TemplateRevised {
                version,
                definition,
                description,
                ..
            } => {
                self.version = version;
                self.definition = Some(Arc::new(definition));
                self.description = description;
            }
            TemplateEvent::TemplateArchived { .. } => self.archived = true,
        }
    }
}

#[cfg(test)]
mod tests;
