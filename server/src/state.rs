//! What every handler shares: configuration, the database, the data folder, the event
//! channel, the job queue and the loaded models.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use candle_core::Device;
use multitune::model::{self as load, LoadedModel, ModelSource};
use multitune_api::{Envelope, Event};
use rusqlite::{params, OptionalExtension};
use tokio::sync::broadcast;

use crate::db::{Db, NOW};
use crate::error::{ApiError, ApiResult};
use crate::files::DataDir;

/// Server settings (flags or `MULTITUNE_*` variables).
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// The data folder.
    pub data_dir: PathBuf,
    /// Where models are found (the default model is fetched into it).
    pub models_dir: PathBuf,
    /// Bearer token; required when `bind` is not a loopback address.
    pub token: Option<String>,
    /// Largest dataset upload, bytes.
    pub max_upload_bytes: u64,
    /// Built dashboard (`dist/`), served at `/`.
    pub dist_dir: Option<PathBuf>,
    /// Training device: `auto`, `cpu` or `cuda[:N]` ([`multitune::model::pick_device`]).
    pub device: String,
    /// Seconds before an ordinary request times out.
    pub request_timeout_s: u64,
    /// Demo task folder imported when the server has no datasets.
    pub demo_dir: Option<PathBuf>,
    /// Host names (beyond loopback names and IP addresses) requests may name.
    pub allowed_hosts: Vec<String>,
    /// Seconds a client has to send a whole request head (slow clients are dropped).
    pub header_timeout_s: u64,
    /// Seconds an upload may go without sending a byte before it is dropped.
    pub upload_idle_timeout_s: u64,
    /// The distributed mode: runs go to workers through this queue and these artifacts
    /// (`None`: the server trains them itself, one after another).
    pub cluster: Option<Cluster>,
}

/// Where the distributed mode's queue and artifacts are, and how it times leases.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// PostgreSQL URL of the queue.
    pub queue: String,
    /// Artifacts URL (`file:///shared/folder`, `s3://bucket/prefix`).
    pub artifacts: String,
    /// Also run a worker inside the server.
    pub local_worker: bool,
    /// Heartbeat and lease timing (the local worker's, and when the server gives up
    /// on a silent worker's job).
    pub timing: multitune_cluster::Timing,
    /// Attempts a job gets before it is given up.
    pub max_attempts: i32,
}

impl Config {
    /// Settings for a server on `data_dir` with defaults elsewhere.
    pub fn new(data_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            data_dir,
            models_dir,
            token: None,
            max_upload_bytes: 64 << 20,
            dist_dir: None,
            device: "auto".into(),
            request_timeout_s: 30,
            demo_dir: None,
            allowed_hosts: vec![],
            header_timeout_s: 10,
            upload_idle_timeout_s: 30,
            cluster: None,
        }
    }

    /// Refuses settings that would be unsafe or cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(c) = &self.cluster {
            let t = c.timing;
            if t.heartbeat.is_zero() || t.lease <= t.heartbeat {
                anyhow::bail!(
                    "the lease ({:?}) must be longer than the heartbeat ({:?}), which must be positive",
                    t.lease,
                    t.heartbeat
                );
            }
            if c.max_attempts < 1 {
                anyhow::bail!("--max-attempts must be at least 1, not {}", c.max_attempts);
            }
        }
        if !self.bind.ip().is_loopback() && self.token.as_deref().is_none_or(str::is_empty) {
            anyhow::bail!(
                "binding to {} exposes the server beyond this machine: set an access token (--token or MULTITUNE_TOKEN)",
                self.bind
            );
        }
        Ok(())
    }

    /// The training device.
    pub fn device(&self) -> anyhow::Result<Device> {
        Ok(multitune::model::pick_device(&self.device)?)
    }
}

/// What request handlers ask of the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterRequest {
    /// Stop an experiment's jobs and mark it cancelled.
    Cancel(String),
    /// Remove a deleted experiment's jobs and artifacts.
    Forget(String),
}

/// Shared state (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

/// The shared parts.
pub struct Inner {
    /// Settings.
    pub cfg: Config,
    /// Data folder layout.
    pub data: DataDir,
    /// Database for handlers.
    pub db: Db,
    /// Live events (persisted first; a lagging receiver re-reads the database).
    pub events: broadcast::Sender<Envelope>,
    /// Wakes the worker.
    pub wake: std::sync::mpsc::SyncSender<()>,
    /// Cancel flags of running experiments.
    pub cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Loaded models by model id.
    pub models: Mutex<HashMap<String, Arc<LoadedModel>>>,
    /// Training device.
    pub device: Device,
    /// That device described (name, memory), read once at start.
    pub device_info: multitune::model::DeviceInfo,
    /// Work the distributed mode's coordinator does for request handlers (cancel or
    /// forget an experiment's jobs), taken at its next round.
    pub cluster_requests: Mutex<Vec<ClusterRequest>>,
    /// Slots for heavy request work (parsing uploads, zipping, merging): one at a time, so
    /// that a burst of requests never takes the CPU from training.
    pub background: tokio::sync::Semaphore,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Inner {
    /// Runs heavy request work `f` off the async threads, one piece at a time: forty
    /// parallel uploads are validated one after another, not on forty threads that would
    /// each take a share of the CPU from the training run.
    pub async fn background<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
        let _slot = self.background.acquire().await.map_err(ApiError::internal)?;
        Ok(tokio::task::spawn_blocking(f).await?)
    }

    /// Records `event` for `experiment` and publishes it.
    pub fn publish(&self, db: &Db, experiment: &str, event: Event) -> rusqlite::Result<i64> {
        let envelope = self.record(db, experiment, event, None)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let id = envelope.id;
        let _ = self.events.send(envelope);
        Ok(id)
    }

    /// Records an event a worker sent (`remote_id` in the queue, from `worker`'s attempt),
    /// once: the envelope to publish (after the runs table is updated), or `None` when it
    /// was recorded before (the server stopped between recording it and telling the
    /// queue) or its experiment is gone.
    pub fn publish_remote(
        &self,
        db: &Db,
        experiment: &str,
        event: Event,
        remote_id: i64,
        worker: (&str, i32),
    ) -> rusqlite::Result<Option<Envelope>> {
        self.record(db, experiment, event, Some((remote_id, worker.0, worker.1)))
    }

    /// Inserts an event row (with its queue id, worker and attempt when a worker sent
    /// it); `None` when that queue id is recorded already or the experiment is gone.
    fn record(
        &self,
        db: &Db,
        experiment: &str,
        event: Event,
        remote: Option<(i64, &str, i32)>,
    ) -> rusqlite::Result<Option<Envelope>> {
        let data = serde_json::to_string(&event).expect("events serialise");
        let (remote_id, worker, attempt) = (remote.map(|r| r.0), remote.map(|r| r.1), remote.map(|r| r.2));
        let id = db.with(|c| {
            let n = c.execute(
                &format!(
                    "INSERT OR IGNORE INTO events (experiment_id, run, kind, data, created_at, remote_id, worker, attempt)
                     SELECT ?1, ?2, ?3, ?4, {NOW}, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM experiments WHERE id = ?1)"
                ),
                params![experiment, event.run(), event.kind(), data, remote_id, worker, attempt],
            )?;
            Ok((n == 1).then(|| c.last_insert_rowid()))
        })?;
        Ok(id.map(|id| Envelope { id, experiment_id: experiment.into(), event }))
    }

    /// Whether runs go to distributed workers.
    pub fn distributed(&self) -> bool {
        self.cfg.cluster.is_some()
    }

    /// Where model `id` comes from: `default`, `tiny`, or a registered or discovered one.
    pub fn model_source(&self, id: &str) -> ApiResult<ModelSource> {
        match id {
            "default" => return Ok(ModelSource::Default),
            "tiny" => return Ok(ModelSource::Tiny),
            _ => {}
        }
        if let Some(m) = crate::models::discovered(&self.cfg.models_dir).into_iter().find(|m| m.id == id) {
            return ModelSource::parse(m.path.as_deref().unwrap_or_default()).map_err(ApiError::from);
        }
        let path: Option<String> =
            self.db.with(|c| c.query_row("SELECT path FROM models WHERE id = ?1", [id], |r| r.get(0)).optional())?;
        match path {
            Some(p) => ModelSource::parse(&p).map_err(|e| ApiError::bad_request(format!("model `{id}`: {e}"))),
            None => Err(ApiError::bad_request(format!("no model with id `{id}`; see GET /api/models"))),
        }
    }

    /// Model `id`, loaded once and kept.
    pub fn model(&self, id: &str) -> ApiResult<Arc<LoadedModel>> {
        if let Some(m) = self.models.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
            return Ok(m.clone());
        }
        let source = self.model_source(id)?;
        let m = Arc::new(
            load::load_model(&source, &self.cfg.models_dir, &self.device, true)
                .map_err(|e| ApiError::bad_request(format!("model `{id}` could not be loaded: {e}")))?,
        );
        self.models.lock().unwrap_or_else(|p| p.into_inner()).insert(id.into(), m.clone());
        Ok(m)
    }
}

/// Lowers the calling thread's CPU priority (nice 10; Linux applies it to the thread) so
/// that the scheduler prefers training when both want the CPU. The server's runtime calls
/// it on every thread it starts, which serve requests; the training worker is started
/// from the main thread and keeps its priority (a thread inherits its creator's), as do
/// the compute threads it starts.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory effects; `who = 0` is the calling thread on Linux.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}
