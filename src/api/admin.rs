//! Endpoints for operators: `GET /api/admin/nodes` (every node on the
//! database, its last heartbeat and the runs it hosts),
//! `GET /api/admin/projections` (each read
//! model's position in the log, how far behind it is, and its latest
//! rebuild) and `POST /api/admin/projections/{name}/rebuild`. Open to every
//! caller until accounts exist (issue #9 makes them admin-only).

use actix_web::{web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::openapi::{ErrorBody, Items};
use super::{ApiError, ApiState};
use crate::domain::log::Position;
use crate::projections::RebuildProgress;

/// One read model, as operators see it.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct ProjectionView {
    /// The read model (its table).
    name: String,
    /// The version of the code that built it (none before its first write).
    version: Option<u32>,
    /// The last position of the log it applied.
    position: Position,
    /// Events of the log it has not applied yet.
    lag_events: i64,
    /// When it last recorded its position (RFC 3339).
    updated_at: Option<String>,
    /// Its latest rebuild on this node, if any.
    rebuild: Option<RebuildProgress>,
}

/// One node serving the database.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct NodeView {
    /// Its id (`--node-id`).
    id: String,
    /// Where peers reach it.
    address: String,
    /// When it started (RFC 3339).
    started_at: String,
    /// Its last heartbeat (RFC 3339).
    heartbeat_at: String,
    /// Whether its heartbeat is recent.
    alive: bool,
    /// How many runs it hosts.
    hosted_runs: i64,
    /// Up to 100 of them.
    runs: Vec<String>,
    /// Whether it is the node that answered.
    this_node: bool,
}

/// `GET /api/admin/projections`.
#[utoipa::path(
    get, path = "/api/admin/projections", tag = "admin",
    responses((status = 200, description = "Every read model.", body = Items<ProjectionView>)),
)]
pub(super) async fn projections(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut items = Vec::new();
    let rebuilds = state.rebuilds.progress();
    // The read models usually share a position: count once per position.
    let mut counted: Option<(crate::domain::log::Position, i64)> = None;
    for p in state.reads.positions().await? {
        let lag = match counted {
            Some((at, lag)) if at == p.position => lag,
            _ => state.log.count_after(p.position).await?,
        };
        counted = Some((p.position, lag));
        items.push(ProjectionView {
            rebuild: rebuilds.get(&p.name).cloned(),
            name: p.name,
            version: p.version,
            position: p.position,
            lag_events: lag,
            updated_at: p.updated_at.map(crate::projections::rfc3339),
        });
    }
    Ok(HttpResponse::Ok().json(Items { items }))
}

/// `POST /api/admin/projections/{name}/rebuild`: starts rebuilding one
/// projection from the log while the live one keeps serving; 202 with its
/// progress (follow it in `GET /api/admin/projections`). 404 for an unknown
/// name, 409 while a rebuild of it runs.
#[utoipa::path(
    post, path = "/api/admin/projections/{name}/rebuild", tag = "admin",
    params(("name" = String, Path, description = "The read model.")),
    responses(
        (status = 202, description = "Started; its progress.", body = RebuildProgress),
        (status = 404, description = "`unknown_projection`.", body = ErrorBody),
        (status = 409, description = "`rebuild_running`.", body = ErrorBody),
    ),
)]
pub(super) async fn rebuild(
    state: web::Data<ApiState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let progress = state.rebuilds.start(&name)?;
    let body = progress.borrow().clone();
    Ok(HttpResponse::Accepted().json(body))
}

/// Runs listed per node (the count is always complete).
const NODE_RUNS_LISTED: i64 = 100;

/// `GET /api/admin/nodes`: every node serving this database, whether it
/// is alive, its last heartbeat and the runs it hosts (up to 100 ids; the
/// count is complete). On SQLite: this node alone.
#[utoipa::path(
    get, path = "/api/admin/nodes", tag = "admin",
    responses((status = 200, description = "Every node.", body = Items<NodeView>)),
)]
pub(super) async fn nodes(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let items = match state.engine.cluster() {
        Some(cluster) => {
            let nodes = cluster
                .list(NODE_RUNS_LISTED)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            nodes
                .into_iter()
                .map(|n| NodeView {
                    this_node: n.id == cluster.node().as_ref(),
                    id: n.id,
                    address: n.address,
                    started_at: n.started_at,
                    heartbeat_at: n.heartbeat_at,
                    alive: n.alive,
                    hosted_runs: n.hosted_runs,
                    runs: n.runs,
                })
                .collect()
        }
        None => {
            let node = &state.node;
            vec![NodeView {
                id: node.id.clone(),
                address: node.address.clone(),
                started_at: node.started_at.clone(),
                heartbeat_at: crate::projections::rfc3339(state.engine.clock().now()),
                alive: true,
                hosted_runs: i64::try_from(state.engine.live_runs()).unwrap_or(i64::MAX),
                runs: Vec::new(),
                this_node: true,
            }]
        }
    };
    Ok(HttpResponse::Ok().json(Items { items }))
}
