//! Endpoints for operators: `GET /api/admin/nodes` (every node on the
//! database, its last heartbeat and the runs it hosts),
//! `GET /api/admin/projections` (each read
//! model's position in the log, how far behind it is, and its latest
//! rebuild) and `POST /api/admin/projections/{name}/rebuild`. Open to every
//! caller until accounts exist (issue #9 makes them admin-only).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ApiError, ApiState};

/// `GET /api/admin/projections`.
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
        let mut item = p.view(lag);
        item["rebuild"] = rebuilds
            .get(&p.name)
            .map_or(serde_json::Value::Null, |r| json!(r));
        items.push(item);
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}

/// `POST /api/admin/projections/{name}/rebuild`: starts rebuilding one
/// projection from the log while the live one keeps serving; 202 with its
/// progress (follow it in `GET /api/admin/projections`). 404 for an unknown
/// name, 409 while a rebuild of it runs.
pub(super) async fn rebuild(
    state: web::Data<ApiState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let progress = state.rebuilds.start(&name)?;
    let body = json!(*progress.borrow());
    Ok(HttpResponse::Accepted().json(body))
}

/// Runs listed per node (the count is always complete).
const NODE_RUNS_LISTED: i64 = 100;

/// `GET /api/admin/nodes`: every node serving this database, whether it
/// is alive, its last heartbeat and the runs it hosts (up to 100 ids; the
/// count is complete). On SQLite: this node alone.
pub(super) async fn nodes(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let items = match state.engine.cluster() {
        Some(cluster) => {
            let nodes = cluster
                .list(NODE_RUNS_LISTED)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            nodes
                .into_iter()
                .map(|n| {
                    let this = n.id == cluster.node().as_ref();
                    let mut item = json!(n);
                    item["this_node"] = json!(this);
                    item
                })
                .collect()
        }
        None => {
            let node = &state.node;
            vec![json!({
                "id": node.id,
                "address": node.address,
                "started_at": node.started_at,
                "heartbeat_at": crate::projections::rfc3339(state.engine.clock().now()),
                "alive": true,
                "hosted_runs": state.engine.live_runs(),
                "runs": [],
                "this_node": true,
            })]
        }
    };
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
