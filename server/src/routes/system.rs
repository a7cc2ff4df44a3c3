//! Health, version, and the power of held-out sets.

use axum::extract::State;
use axum::Json;
use multitune::kernels::blas;
use multitune_api::{DeviceInfo, Health, Matmul, MatmulFigure, Power, Version};
use serde::Deserialize;

use crate::error::{ApiError, ApiQuery, ApiResult};
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
        device: s.device_info.id.clone(),
        device_info: Some(DeviceInfo {
            id: s.device_info.id.clone(),
            name: s.device_info.name.clone(),
            memory_mib: s.device_info.memory_mib,
            threads: s.device_info.threads,
            summary: s.device_info.to_string(),
        }),
        auth: s.cfg.token.is_some(),
        matmul: blas::latest().map(|c| Matmul {
            many_rows: blas::engine_name(c.many_rows),
            few_rows: blas::engine_name(c.few_rows),
            how: c.how.clone(),
            figures: c
                .figures
                .iter()
                .map(|f| MatmulFigure {
                    engine: f.engine.clone(),
                    many_rows_gflops: f.many_rows_gflops,
                    few_rows_gflops: f.few_rows_gflops,
                })
                .collect(),
        }),
    })
}

/// `?examples=20,20,50`.
#[derive(Debug, Deserialize)]
pub struct PowerQuery {
    examples: String,
}

/// `GET /api/power?examples=N,N,…`: the smallest macro-average difference held-out sets
/// of these sizes detect (`strategy::report::power`), so the New-experiment
/// page can say it before anything is trained.
pub async fn power(ApiQuery(q): ApiQuery<PowerQuery>) -> ApiResult<Json<Power>> {
    let sizes: Vec<usize> = q
        .examples
        .split(',')
        .map(|x| x.trim().parse::<usize>().ok().filter(|n| (1..=10_000_000).contains(n)))
        .collect::<Option<_>>()
        .filter(|v: &Vec<usize>| (1..=16).contains(&v.len()))
        .ok_or_else(|| {
            ApiError::bad_request("examples: give 1 to 16 comma-separated held-out sizes, each 1 to 10^7")
        })?;
    Ok(Json(multitune::strategy::report::power(&sizes)))
}
