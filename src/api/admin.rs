//! Endpoints for operators: `GET /api/admin/projections` (each read
//! model's position in the log and how far behind it is). Open to every
//! caller until accounts exist (issue #9 makes it admin-only).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{ApiError, ApiState};

/// `GET /api/admin/projections`.
pub(super) async fn projections(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let mut items = Vec::new();
    // The read models usually share a position: count once per position.
    let mut counted: Option<(crate::domain::log::Position, i64)> = None;
    for p in state.reads.positions().await? {
        let lag = match counted {
            Some((at, lag)) if at == p.position => lag,
            _ => state.log.count_after(p.position).await?,
        };
        counted = Some((p.position, lag));
        items.push(p.view(lag));
    }
    Ok(HttpResponse::Ok().json(json!({ "items": items })))
}
