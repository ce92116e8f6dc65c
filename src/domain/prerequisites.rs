//! Cross-workflow prerequisites: what must exist before a user may start a
//! template (`requires`), what a template's runs provide to others
//! (`provides`), and the rules that connect them.
//!
//! Templates name each other by their display name (the newest live
//! template of that name). A requirement is checked against the starting
//! user's own most recent run of the named template: its status, or an
//! artifact it holds. The artifacts a start depends on are pinned then
//! ([`Import`]): a run reads the version that existed when it started,
//! whatever the other run does afterwards.
//!
//! Pure, like the rest of the domain: the engine looks up the facts
//! ([`LatestRun`]) and this module decides.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::definition::Definition;
use super::ids::{ArtifactName, RunId};
use super::run::{ArtifactContent, RunStatus};

/// Most requirements (workflows and artifacts together) a template may
/// declare.
pub const MAX_REQUIREMENTS: usize = 32;
/// Most artifacts a template may declare it provides.
pub const MAX_PROVIDED: usize = 64;
/// Longest `reason` of a requirement, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// What must exist before a user may start the template.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Runs of other templates, by their status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workflows: Vec<WorkflowRequirement>,
    /// Artifacts of runs of other templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactRequirement>,
}

impl Requires {
    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.workflows.is_empty() && self.artifacts.is_empty()
    }

    /// The names of the templates required, each once.
    pub fn templates(&self) -> BTreeSet<&str> {
        self.workflows
            .iter()
            .map(|w| w.template.as_str())
            .chain(self.artifacts.iter().map(|a| a.template.as_str()))
            .collect()
    }

    /// The artifact requirement a cross-run input (`<template>:<artifact>`)
    /// refers to, if it is one.
    pub fn artifact(&self, template: &str, artifact: &str) -> Option<&ArtifactRequirement> {
        self.artifacts
            .iter()
            .find(|a| a.template == template && a.artifact.as_str() == artifact)
    }
}

/// The user's most recent run of `template` must have this status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowRequirement {
    /// The template's name.
    pub template: String,
    /// The status its most recent run must have (`completed` unless said).
    #[serde(default)]
    pub status: RequiredStatus,
    /// Why, for the person who cannot start yet.
    pub reason: String,
}

/// The status a workflow requirement asks for: a finished one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequiredStatus {
    /// It completed.
    #[default]
    Completed,
    /// It failed.
    Failed,
    /// It was cancelled.
    Cancelled,
}

impl RequiredStatus {
    /// The run status it asks for.
    pub fn status(self) -> RunStatus {
        match self {
            Self::Completed => RunStatus::Completed,
            Self::Failed => RunStatus::Failed,
            Self::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// The user's most recent run of `template` must hold `artifact`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRequirement {
    /// The template's name.
    pub template: String,
    /// `<step>.<output>` of that template's runs.
    pub artifact: ArtifactName,
    /// Why, for the person who cannot start yet.
    pub reason: String,
}

/// What the template's runs provide to templates that require them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provides {
    /// Artifacts (`<step>.<output>`) other templates may require.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactName>,
}

impl Provides {
    /// Whether nothing is declared.
    pub fn is_empty(&self) -> bool {
        self.artifacts.is_empty()
    }
}

/// Whether runs of `definition` provide `artifact` to others: declared in
/// `provides`, or the `choice` of one of its review steps that offers
/// choices (what a reviewer picked is always an artifact).
pub fn provides(definition: &Definition, artifact: &ArtifactName) -> bool {
    definition.provides.artifacts.contains(artifact)
        || (artifact.output() == "choice"
            && definition
                .steps
                .iter()
                .any(|(id, step)| id.as_str() == artifact.step() && !step.choices.is_empty()))
}

/// Why a template's prerequisites do not fit the other templates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrerequisiteError {
    /// No live template has that name.
    #[error("requires template '{template}', but no live template has that name")]
    UnknownTemplate {
        /// The name.
        template: String,
    },
    /// The named template never provides the artifact.
    #[error(
        "requires artifact '{artifact}' of template '{template}', which that template does not \
         provide (its provides.artifacts, or the choice of one of its review steps)"
    )]
    NotProvided {
        /// The name.
        template: String,
        /// The artifact.
        artifact: String,
    },
    /// The prerequisites form a cycle: no run of any of them could start.
    #[error("prerequisites form a cycle: {}", cycle.join(" -> "))]
    Cycle {
        /// The templates on it, the first repeated at the end.
        cycle: Vec<String>,
    },
}

impl PrerequisiteError {
    /// A stable machine-readable code for this kind of fault.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownTemplate { .. } => "unknown_prerequisite",
            Self::NotProvided { .. } => "artifact_not_provided",
            Self::Cycle { .. } => "prerequisite_cycle",
        }
    }
}

/// The live templates by name, as the check at creation sees them.
pub trait TemplateDirectory {
    /// The current definition of the newest live template named `name`.
    fn definition(&self, name: &str) -> Option<&Definition>;
}

impl TemplateDirectory for BTreeMap<String, Definition> {
    fn definition(&self, name: &str) -> Option<&Definition> {
        self.get(name)
    }
}

/// Checks the prerequisites of `definition`, to be saved as template
/// `name`, against the other live templates: each named template exists,
/// provides each artifact required of it, and no chain of requirements
/// leads back to `name`.
pub fn check_against(
    name: &str,
    definition: &Definition,
    directory: &dyn TemplateDirectory,
) -> Result<(), PrerequisiteError> {
    let lookup = |template: &str| -> Option<&Definition> {
        if template == name {
            Some(definition)
        } else {
            directory.definition(template)
        }
    };
    for template in definition.requires.templates() {
        if lookup(template).is_none() {
            return Err(PrerequisiteError::UnknownTemplate {
                template: template.to_string(),
            });
        }
    }
    for required in &definition.requires.artifacts {
        let source = lookup(&required.template).expect("checked above");
        if !provides(source, &required.artifact) {
            return Err(PrerequisiteError::NotProvided {
                template: required.template.clone(),
                artifact: required.artifact.to_string(),
            });
        }
    }
    // Depth-first from `name` along requirements; a path back to it is a
    // cycle. (Cycles among the other templates alone were refused when
    // they were saved.)
    let mut path: Vec<String> = vec![name.to_string()];
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut stack: Vec<Vec<String>> = vec![requirements(definition)];
    while let Some(pending) = stack.last_mut() {
        let Some(next) = pending.pop() else {
            stack.pop();
            path.pop();
            continue;
        };
        if next == name {
            let mut cycle = path.clone();
            cycle.push(next);
            return Err(PrerequisiteError::Cycle { cycle });
        }
        if !seen.insert(next.clone()) {
            continue;
        }
        let below = lookup(&next).map(requirements).unwrap_or_default();
        path.push(next);
        stack.push(below);
    }
    Ok(())
}

fn requirements(definition: &Definition) -> Vec<String> {
    definition
        .requires
        .templates()
        .into_iter()
        .rev()
        .map(str::to_string)
        .collect()
}

/// The facts a start is checked against: the starting user's most recent
/// run of a required template.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRun {
    /// The run.
    pub run_id: RunId,
    /// Its status now.
    pub status: RunStatus,
    /// The current version of each required artifact it holds, with the
    /// body (absent: it has none).
    pub artifacts: BTreeMap<ArtifactName, (u32, ArtifactContent)>,
}

/// An artifact of another run that a run reads, pinned when it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Import {
    /// The name of the template that run started from.
    pub template: String,
    /// `<step>.<output>` in that run.
    pub artifact: ArtifactName,
    /// The run.
    pub run_id: RunId,
    /// The version read.
    pub version: u32,
    /// Its body (a blob is referenced by hash, as in the source run).
    pub content: ArtifactContent,
}

impl Import {
    /// How inputs refer to it: `<template>:<step>.<output>`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.template, self.artifact)
    }
}

/// A requirement a start does not meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unmet {
    /// `workflow` or `artifact`.
    pub kind: &'static str,
    /// The required template's name.
    pub template: String,
    /// The status asked for (workflow requirements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// The artifact asked for (artifact requirements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The requirement's reason, as the template gives it.
    pub reason: String,
    /// The user's most recent run of that template, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// What the person can do about it, in a sentence.
    pub message: String,
}

/// Checks `requires` against the user's most recent runs (by template
/// name; absent: the user has none): what the run imports when everything
/// is met, else every requirement that is not.
pub fn evaluate(
    requires: &Requires,
    latest: &BTreeMap<String, LatestRun>,
) -> Result<Vec<Import>, Vec<Unmet>> {
    let mut unmet = Vec::new();
    for required in &requires.workflows {
        let run = latest.get(&required.template);
        let wanted = required.status.status();
        if run.is_some_and(|r| r.status == wanted) {
            continue;
        }
        let message = match required.status {
            RequiredStatus::Completed => format!(
                "Complete the {} workflow first: {}",
                required.template, required.reason
            ),
            other => format!(
                "Your most recent {} run must be {} first: {}",
                required.template,
                other.status().as_str(),
                required.reason
            ),
        };
        unmet.push(Unmet {
            kind: "workflow",
            template: required.template.clone(),
            status: Some(wanted.as_str()),
            artifact: None,
            reason: required.reason.clone(),
            run_id: run.map(|r| r.run_id.to_string()),
            message,
        });
    }
    let mut imports = Vec::new();
    for required in &requires.artifacts {
        let run = latest.get(&required.template);
        match run.and_then(|r| r.artifacts.get(&required.artifact).map(|a| (r, a))) {
            Some((run, (version, content))) => imports.push(Import {
                template: required.template.clone(),
                artifact: required.artifact.clone(),
                run_id: run.run_id.clone(),
                version: *version,
                content: content.clone(),
            }),
            None => unmet.push(Unmet {
                kind: "artifact",
                template: required.template.clone(),
                status: None,
                artifact: Some(required.artifact.to_string()),
                reason: required.reason.clone(),
                run_id: run.map(|r| r.run_id.to_string()),
                message: format!(
                    "Run the {} workflow until it provides {} first: {}",
                    required.template, required.artifact, required.reason
                ),
            }),
        }
    }
    if unmet.is_empty() {
        Ok(imports)
    } else {
        Err(unmet)
    }
}

#[cfg(test)]
mod tests;
