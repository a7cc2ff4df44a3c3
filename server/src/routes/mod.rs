//! The router: JSON endpoints under `/api` (with a timeout and a small body limit),
//! uploads (with the upload limit), streams and downloads (no timeout), an access-token
//! check when one is configured, and the dashboard with a single-page-app fallback.

pub mod datasets;
pub mod experiments;
pub mod models;
pub mod playground;
pub mod runs;
pub mod serve;
pub mod system;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use tower_http::services::{ServeDir, ServeFile};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::guard;
use crate::state::AppState;

/// The whole application.
pub fn router(state: AppState) -> Router {
    let json = Router::new()
        .route("/api/health", get(system::health))
        .route("/api/version", get(system::version))
        .route("/api/power", get(system::power))
        .route("/api/datasets", get(datasets::datasets_index))
        .route("/api/datasets/{id}", get(datasets::datasets_show).delete(datasets::datasets_delete))
        .route("/api/models", get(models::models_index).post(models::models_create))
        .route("/api/experiments", get(experiments::experiments_index).post(experiments::experiments_create))
        .route("/api/experiments/{id}", get(experiments::experiments_show).delete(experiments::experiments_delete))
        .route("/api/experiments/{id}/cancel", post(experiments::experiments_cancel))
        .route("/api/experiments/{id}/resume", post(experiments::experiments_resume))
        .route("/api/experiments/{id}/report", get(experiments::experiments_report))
        .route("/api/experiments/{id}/report.md", get(experiments::experiments_report_md))
        .route("/api/experiments/{id}/charts", get(experiments::experiments_charts))
        .route("/api/runs/{id}", get(runs::runs_show))
        .route("/api/runs/{id}/metrics", get(runs::runs_metrics))
        .layer(DefaultBodyLimit::max(1 << 20))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(state.cfg.request_timeout_s),
        ));
    let uploads = Router::new()
        .route("/api/datasets", post(datasets::datasets_create))
        .layer(DefaultBodyLimit::max(state.cfg.max_upload_bytes as usize + (64 << 10)));
    let streams = Router::new()
        .route("/api/experiments/{id}/events", get(experiments::experiments_events))
        .route("/api/experiments/{id}/charts/{file}", get(experiments::experiments_chart))
        .route("/api/experiments/{id}/download", get(experiments::experiments_download))
        .route("/api/runs/{id}/events", get(runs::runs_events))
        .route("/api/runs/{id}/adapter", get(runs::runs_adapter))
        .route("/api/runs/{id}/heads", get(runs::runs_heads))
        .route("/api/runs/{id}/merged", get(runs::runs_merged))
        .route("/api/runs/{id}/gguf", get(runs::runs_gguf))
        .route("/api/playground", post(playground::playground_create))
        .layer(DefaultBodyLimit::max(1 << 20));
    let api = json
        .merge(uploads)
        .merge(streams)
        .route("/api/{*rest}", axum::routing::any(api_not_found))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    let ui = match &state.cfg.dist_dir {
        Some(dist) if dist.join("index.html").exists() => {
            Router::new().fallback_service(ServeDir::new(dist).fallback(ServeFile::new(dist.join("index.html"))))
        }
        _ => Router::new().fallback(no_dashboard),
    };
    let index = state.cfg.dist_dir.as_ref().and_then(|d| std::fs::read_to_string(d.join("index.html")).ok());
    let csp = std::sync::Arc::new(
        axum::http::HeaderValue::from_str(&guard::content_security_policy(index.as_deref()))
            .expect("the policy is plain ASCII"),
    );
    let compress = SizeAbove::new(256)
        .and(NotForContentType::SSE)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::const_new("application/zip"));
    api.merge(ui)
        .layer(middleware::from_fn(guard::check_origin))
        .layer(middleware::from_fn_with_state(state.clone(), guard::check_host))
        .layer(middleware::from_fn_with_state(csp, guard::security_headers))
        .layer(CompressionLayer::new().compress_when(compress))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn api_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such API endpoint")
}

async fn no_dashboard() -> Response {
    (
        StatusCode::OK,
        Html(
            "<!doctype html><title>Multitune</title><p>The dashboard is not built. Run <code>make run</code>, \
             or use the API under <a href=\"/api/version\">/api</a>.</p>",
        ),
    )
        .into_response()
}

/// With a token configured, every `/api` request but health and version must carry it:
/// `Authorization: Bearer <token>`, or `?token=` where a browser cannot set headers
/// (event streams, downloads).
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = state.cfg.token.as_deref() else { return next.run(req).await };
    let path = req.uri().path();
    if path == "/api/health" || path == "/api/version" {
        return next.run(req).await;
    }
    let header_token =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let query_token = req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let ok =
        [header_token, query_token].into_iter().flatten().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if ok {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs an access token (Authorization: Bearer …)",
        )
        .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
