//! `multitune worker`'s flags. The worker itself (PostgreSQL, artifacts) lives in the
//! `multitune-cluster` crate, which builds the `multitune` binary and passes it in as
//! [`super::Worker`]: the engine stays free of networking.

use std::path::PathBuf;

use clap::Args;

/// Run jobs of a distributed queue (see the README's "Several machines").
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The queue: a PostgreSQL URL (`postgres://user:password@host:5432/db`).
    #[arg(long, env = "MULTITUNE_QUEUE")]
    pub queue: String,
    /// Where runs read data and write checkpoints and results, shared with the server:
    /// `file:///shared/folder` or `s3://bucket/prefix` (AWS_* variables for S3).
    #[arg(long, env = "MULTITUNE_ARTIFACTS")]
    pub artifacts: String,
    /// This worker's name as the dashboard shows it (default: host name and process id).
    #[arg(long, env = "MULTITUNE_WORKER_NAME")]
    pub name: Option<String>,
    /// A local folder for the job in hand (data, checkpoints), emptied after each job.
    #[arg(long, env = "MULTITUNE_WORK_DIR", default_value = "worker")]
    pub work_dir: PathBuf,
    /// Seconds between heartbeats.
    #[arg(long, env = "MULTITUNE_HEARTBEAT_S", default_value_t = 30.0)]
    pub heartbeat_s: f64,
    /// Seconds without a heartbeat after which a job is leased again (by any worker).
    #[arg(long, env = "MULTITUNE_LEASE_S", default_value_t = 300.0)]
    pub lease_s: f64,
}
