//! Template endpoints: create, revise and archive (admins); list, read and
//! the templates a caller may start now (everyone).

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::openapi::{ErrorBody, Items};
use super::{contract, refuse_nul, refuse_nul_text, ApiError, ApiState, Caller, PageQuery};
use crate::domain::definition::Definition;
use crate::domain::ids::TemplateId;
use crate::domain::prerequisites::{self, Requires, Unmet};
use crate::projections::{Page, TemplateView};

/// A new template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateTemplate {
    /// Unique among live (unarchived) templates.
    name: String,
    /// What it is for.
    description: Option<String>,
    /// The DAG of steps (see `schema/definition.schema.json`).
    definition: Value,
}

/// A template's next version.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReviseTemplate {
    /// The new definition; runs started before keep theirs.
    definition: Value,
    /// A new description (the old one stays when absent).
    description: Option<String>,
}

pub(super) fn template_id(raw: &str) -> Result<TemplateId, ApiError> {
    TemplateId::parse(raw).map_err(|e| ApiError::bad_request("invalid_template_id", e.to_string()))
}

async fn view(state: &ApiState, id: &TemplateId) -> Result<HttpResponse, ApiError> {
    let template = state.reads.template(id.as_str()).await?.ok_or_else(|| {
        ApiError::not_found("template_not_found", format!("template '{id}' not found"))
    })?;
    Ok(HttpResponse::Ok().json(template))
}

/// Creates a template (admins).
#[utoipa::path(
    post, path = "/api/templates", tag = "templates",
    request_body = CreateTemplate,
    responses(
        (status = 201, description = "Created; `Location` is the template.", body = TemplateView,
         headers(("Location" = String, description = "The template's URL."))),
        (status = 409, description = "`template_name_taken`: a live template has the name.", body = ErrorBody),
        (status = 422, description = "The definition is refused (`malformed_definition`, `unknown_agent`, `dependency_cycle`, …).", body = ErrorBody),
    ),
)]
pub(super) async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<CreateTemplate>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    refuse_nul_text("name", Some(&body.name))?;
    refuse_nul_text("description", body.description.as_deref())?;
    refuse_nul("definition", &body.definition)?;
    let mut body = body;
    super::whole_numbers_as_integers(&mut body.definition);
    contract::check_definition(&body.definition)?;
    // Names are unique among live templates (checked against the read
    // model once it holds what this node committed).
    state.engine.settle_all().await;
    if let Some(live) = state.reads.live_template_by_name(body.name.trim()).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "template_name_taken",
            format!(
                "a live template is named '{}' (id {}): revise it, or archive it before \
                 creating another under its name",
                live.name, live.id
            ),
        ));
    }
    check_prerequisites(&state, body.name.trim(), None, &body.definition).await?;
    let id = state
        .engine
        .create_template(
            body.name,
            body.description,
            body.definition,
            &caller.cause(),
        )
        .await?;
    let template = state.reads.template(id.as_str()).await?;
    Ok(HttpResponse::Created()
        .insert_header(("Location", format!("/api/templates/{id}")))
        .json(template))
}

/// Lists templates, newest first.
#[utoipa::path(
    get, path = "/api/templates", tag = "templates",
    params(super::PageQuery),
    responses((status = 200, description = "One page.", body = Page<TemplateView>)),
)]
pub(super) async fn list(
    state: web::Data<ApiState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (limit, cursor) = query.checked()?;
    Ok(HttpResponse::Ok().json(state.reads.list_templates(limit, cursor).await?))
}

/// One template, with its current definition.
#[utoipa::path(
    get, path = "/api/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "The template id.")),
    responses(
        (status = 200, description = "The template.", body = TemplateView),
        (status = 404, description = "`template_not_found`.", body = ErrorBody),
    ),
)]
pub(super) async fn get(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    view(&state, &template_id(&path)?).await
}

/// Revises a template: a new version (admins).
#[utoipa::path(
    put, path = "/api/templates/{id}", tag = "templates",
    params(("id" = String, Path, description = "The template id.")),
    request_body = ReviseTemplate,
    responses(
        (status = 200, description = "The template at its new version.", body = TemplateView),
        (status = 404, description = "`template_not_found`.", body = ErrorBody),
        (status = 409, description = "`template_archived`, or another writer revised it.", body = ErrorBody),
        (status = 422, description = "The definition is refused.", body = ErrorBody),
    ),
)]
pub(super) async fn revise(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<ReviseTemplate>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path)?;
    let body = body.into_inner();
    refuse_nul_text("description", body.description.as_deref())?;
    refuse_nul("definition", &body.definition)?;
    let mut body = body;
    super::whole_numbers_as_integers(&mut body.definition);
    contract::check_definition(&body.definition)?;
    state.engine.settle_all().await;
    if let Some(current) = state.reads.template(id.as_str()).await? {
        if !current.archived {
            check_prerequisites(&state, &current.name, Some(&id), &body.definition).await?;
        }
    }
    state
        .engine
        .revise_template(&id, body.definition, body.description, &caller.cause())
        .await?;
    view(&state, &id).await
}

/// Archives a template: no new runs start from it (admins).
#[utoipa::path(
    post, path = "/api/templates/{id}/archive", tag = "templates",
    params(("id" = String, Path, description = "The template id.")),
    responses(
        (status = 200, description = "The archived template.", body = TemplateView),
        (status = 404, description = "`template_not_found`.", body = ErrorBody),
        (status = 409, description = "`template_archived`: archived already; `template_still_required`: another live template requires this one.", body = ErrorBody),
    ),
)]
pub(super) async fn archive(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path)?;
    state.engine.settle_all().await;
    check_not_required(&state, &id).await?;
    state.engine.archive_template(&id, &caller.cause()).await?;
    view(&state, &id).await
}

/// Refuses to archive the template its name resolves to while another
/// live template requires that name: its runs could never start again
/// (an older live template of the same name, from before names were
/// unique, would take over the name, so archiving is fine then).
async fn check_not_required(state: &ApiState, id: &TemplateId) -> Result<(), ApiError> {
    let all = state.reads.live_templates().await?;
    let Some(archiving) = all.iter().find(|t| t.id == id.as_str()).cloned() else {
        // Archived already (the engine answers) or unknown.
        return Ok(());
    };
    if all
        .iter()
        .any(|t| t.name == archiving.name && t.id != archiving.id)
    {
        return Ok(());
    }
    let live = newest_per_name(all);
    let requiring: Vec<String> = live
        .iter()
        .filter(|t| t.id != archiving.id)
        .filter_map(|t| Some((t, Definition::parse(&t.definition).ok()?)))
        .filter(|(_, d)| {
            d.requires
                .workflows
                .iter()
                .any(|w| w.template == archiving.name)
                || d.requires
                    .artifacts
                    .iter()
                    .any(|a| a.template == archiving.name)
        })
        .map(|(t, _)| format!("'{}'", t.name))
        .collect();
    if requiring.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "template_still_required",
        format!(
            "template {} requires '{}': revise {} to drop the requirement, or archive {} \
             first; archiving this one would leave them unstartable",
            requiring.join(", "),
            archiving.name,
            if requiring.len() == 1 { "it" } else { "them" },
            if requiring.len() == 1 { "it" } else { "them" },
        ),
    ))
}

/// Checks the prerequisites of `definition`, about to be saved as the
/// template `name` (`revising`: that template's id), against the live
/// templates: the named ones exist and provide what is required of them,
/// no chain of requirements leads back to `name`, and (on a revision) the
/// artifacts other templates require of it are still provided. A
/// definition that does not parse is left to the engine, which names its
/// fault.
async fn check_prerequisites(
    state: &ApiState,
    name: &str,
    revising: Option<&TemplateId>,
    definition: &Value,
) -> Result<(), ApiError> {
    let Ok(definition) = Definition::parse(definition) else {
        return Ok(());
    };
    let directory: BTreeMap<String, Definition> =
        newest_per_name(state.reads.live_templates().await?)
            .into_iter()
            .filter(|t| Some(t.id.as_str()) != revising.map(TemplateId::as_str))
            .filter_map(|t| Some((t.name, Definition::parse(&t.definition).ok()?)))
            .collect();
    // What other templates require of this name (on a revision; or on a
    // creation under a name whose template was archived before archiving
    // checked this).
    for (other, requiring) in &directory {
        if let Some(required) = requiring
            .requires
            .artifacts
            .iter()
            .find(|a| a.template == name && !prerequisites::provides(&definition, &a.artifact))
        {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "artifact_still_required",
                format!(
                    "template '{other}' requires artifact '{}' of this one: keep providing \
                     it, or revise '{other}' first",
                    required.artifact
                ),
            ));
        }
    }
    if definition.requires.is_empty() {
        return Ok(());
    }
    prerequisites::check_against(name, &definition, &directory)?;
    Ok(())
}

/// The templates names resolve to: of each name, the newest live one
/// (`live` comes newest first within a name).
fn newest_per_name(live: Vec<TemplateView>) -> Vec<TemplateView> {
    let mut seen = std::collections::BTreeSet::new();
    live.into_iter()
        .filter(|t| seen.insert(t.name.clone()))
        .collect()
}

/// A template the caller may start, and whether they can now.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AvailableTemplate {
    /// The template's id.
    id: String,
    /// Its name.
    name: String,
    /// What it is for.
    description: Option<String>,
    /// Its current version.
    version: u32,
    /// Whether every prerequisite is met for the caller: a start would not
    /// be refused with `prerequisites_not_met`.
    available: bool,
    /// The prerequisites that are not met, with what to do about each
    /// (empty when available).
    #[schema(value_type = Vec<UnmetRequirement>)]
    unmet: Vec<Unmet>,
}

/// A prerequisite that is not met (also the `unmet` items of a
/// `prerequisites_not_met` error).
#[derive(ToSchema)]
#[allow(dead_code)] // the schema of `domain::prerequisites::Unmet`
pub(super) struct UnmetRequirement {
    /// `workflow` or `artifact`.
    kind: String,
    /// The required template's name.
    template: String,
    /// The status asked for (workflow requirements).
    status: Option<String>,
    /// The artifact asked for (artifact requirements).
    artifact: Option<String>,
    /// The requirement's reason, as the template gives it.
    reason: String,
    /// The caller's most recent run of that template, if any.
    run_id: Option<String>,
    /// What the person can do about it, in a sentence.
    message: String,
}

/// The live templates, each with whether the caller may start it now
/// (their prerequisites, against the caller's own most recent runs).
#[utoipa::path(
    get, path = "/api/templates/available", tag = "templates",
    responses((status = 200, description = "Every live template, by name.", body = Items<AvailableTemplate>)),
)]
pub(super) async fn available(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let templates = newest_per_name(state.reads.live_templates().await?);
    // A definition the server cannot read any more requires nothing here
    // (a start from it is refused by the engine, which names the fault).
    let requires: Vec<Requires> = templates
        .iter()
        .map(|t| {
            Definition::parse(&t.definition)
                .map(|d| d.requires)
                .unwrap_or_default()
        })
        .collect();
    let checked = state
        .engine
        .check_prerequisites_of(caller.cause().user(), &requires.iter().collect::<Vec<_>>())
        .await?;
    let items = templates
        .into_iter()
        .zip(checked)
        .map(|(template, checked)| {
            let unmet = checked.err().unwrap_or_default();
            AvailableTemplate {
                id: template.id,
                name: template.name,
                description: template.description,
                version: template.version,
                available: unmet.is_empty(),
                unmet,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(Items { items }))
}
