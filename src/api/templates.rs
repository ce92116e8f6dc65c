//! Template endpoints (admin): create, list, read, revise, archive.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::openapi::ErrorBody;
use super::{contract, refuse_nul, refuse_nul_text, ApiError, ApiState, Caller, PageQuery};
use crate::domain::ids::TemplateId;
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
        (status = 409, description = "`template_archived`: archived already.", body = ErrorBody),
    ),
)]
pub(super) async fn archive(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = template_id(&path)?;
    state.engine.archive_template(&id, &caller.cause()).await?;
    view(&state, &id).await
}
