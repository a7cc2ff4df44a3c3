//! Multitune's HTTP service: datasets, models, experiments queued for one training
//! worker per device, live events over SSE with replay from SQLite, artifacts to
//! download, a playground, and the dashboard's files.

pub mod db;
pub mod distributed;
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
    if let Err(e) = data.ensure_reserve() {
        tracing::warn!("no room for the disk-full reserve in {}: {e}", cfg.data_dir.display());
    }
    let db = db::Db::new(db::open(&data.database())?);
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let (wake, wake_rx) = std::sync::mpsc::sync_channel(16);
    let device = cfg.device()?;
    let device_info = multitune::model::device_info(&device);
    tracing::info!("jobs run on {device_info}");
    if device.is_cpu() {
        // Choose the matrix-product engine now (measured once per machine, a second or two;
        // then cached) rather than in the first job; `/api/version` reports it.
        let models = cfg.models_dir.clone();
        std::thread::spawn(move || {
            let s = multitune::kernels::blas::select(&models, multitune::kernels::blas::Dims::DEFAULT);
            tracing::info!("matrix products: {}", multitune::kernels::blas::describe_selection(s));
        });
    }
    let state = AppState(Arc::new(Inner {
        cfg,
        data,
        db,
        events,
        wake,
        cancels: Mutex::new(HashMap::new()),
        models: Mutex::new(HashMap::new()),
        device,
        device_info,
        cluster_requests: Mutex::new(Vec::new()),
        background: tokio::sync::Semaphore::new(1),
    }));
    if state.distributed() {
        // Running experiments go on on the workers; the coordinator follows them again.
        distributed::start(&state, wake_rx)?;
    } else {
        let n = jobs::mark_interrupted(&state)?;
        if n > 0 {
            tracing::warn!("{n} experiment(s) were running when the server stopped; marked interrupted (resume them)");
        }
        jobs::spawn_worker(state.clone(), wake_rx)?;
    }
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
    let header_timeout = std::time::Duration::from_secs(state.cfg.header_timeout_s.max(1));
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!("listening on http://{addr}");
    on_bound(addr);
    accept_loop(listener, router(state), header_timeout, shutdown).await
}

/// Serves HTTP/1.1 connections until `shutdown` resolves. Our own loop rather than
/// `axum::serve`, which installs no timer, so hyper's header-read timeout never fires and
/// a client trickling its headers (slowloris) would hold a connection forever: here a
/// client that has not sent a whole request head within `header_timeout` is dropped.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    header_timeout: std::time::Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            conn = listener.accept() => match conn {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, keep serving.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}
