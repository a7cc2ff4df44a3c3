//! Health and version.

use axum::extract::State;
use axum::Json;
use multitune_api::{Health, Version};

use crate::error::ApiResult;
use crate::state::AppState;

/// `GET /api/health`.
pub async fn health(State(s): State<AppState>) -> ApiResult<Json<Health>> {
    let queue: i64 = s.db.with(|c| {
        c.query_row("SELECT COUNT(*) FROM experiments WHERE status IN ('queued', 'running')", [], |r| r.get(0))
    })?;
    Ok(Json(Health { status: "ok".into(), queue: queue as usize }))
}

/// `GET /api/version`.
pub async fn version(State(s): State<AppState>) -> Json<Version> {
    Json(Version {
        name: "multitune".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        schema: crate::db::schema_version(),
        device: match &s.device {
            candle_core::Device::Cpu => "cpu".into(),
            other => format!("{other:?}").to_lowercase(),
        },
        auth: s.cfg.token.is_some(),
    })
}
