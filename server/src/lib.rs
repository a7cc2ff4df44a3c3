//! Multitune's HTTP service: datasets, models, experiments queued for one training
//! worker per device, live events over SSE with replay from SQLite, artifacts to
//! download, a playground, and the dashboard's files.

pub mod db;
pub mod error;
pub mod files;
pub mod guard;
pub mod jobs;
pub mod models;
pub mod routes;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use routes::router;
pub use state::{AppState, Config, Inner};

/// Opens the data folder and database, marks runs a crash left behind as interrupted,
/// and starts the worker: everything but the listener.
pub fn build(cfg: Config) -> anyhow::Result<AppState> {
    cfg.validate()?;
    let data = files::DataDir::open(&cfg.data_dir)?;
    let db = db::Db::new(db::open(&data.database())?);
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let (wake, wake_rx) = std::sync::mpsc::sync_channel(16);
    let device = cfg.device()?;
    let state = AppState(Arc::new(Inner {
        cfg,
        data,
        db,
        events,
        wake,
        cancels: Mutex::new(HashMap::new()),
        models: Mutex::new(HashMap::new()),
        device,
    }));
    let n = jobs::mark_interrupted(&state)?;
    if n > 0 {
        tracing::warn!("{n} experiment(s) were running when the server stopped; marked interrupted (resume them)");
    }
    jobs::spawn_worker(state.clone(), wake_rx)?;
    Ok(state)
}

/// Binds `cfg.bind` and serves until `shutdown` resolves; returns the bound address
/// (useful with port 0) through `on_bound` before serving.
pub async fn serve(
    cfg: Config,
    on_bound: impl FnOnce(SocketAddr),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let bind = cfg.bind;
    let state = build(cfg)?;
    if let Some(dir) = state.cfg.demo_dir.clone() {
        match routes::datasets::import_demo(&state, &dir).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("imported {n} demo datasets from {}", dir.display()),
            Err(e) => tracing::warn!("importing the demo tasks: {}", e.message),
        }
    }
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr}");
    on_bound(addr);
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
