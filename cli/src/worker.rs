//! `multitune worker`: its flags, turned into the worker's options. The worker itself
//! (PostgreSQL, artifacts) is the `multitune-cluster` crate's: the engine stays free of
//! networking.

use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use clap::Args;
use multitune_cluster::queue::Timing;
use multitune_cluster::worker::{default_name, run, Options};

use super::Cli;

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

impl WorkerArgs {
    /// Runs the worker until the process is stopped.
    pub fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        if !(self.heartbeat_s > 0.0 && self.lease_s > self.heartbeat_s) {
            anyhow::bail!(
                "--lease-s ({}) must be longer than --heartbeat-s ({}), which must be positive",
                self.lease_s,
                self.heartbeat_s
            );
        }
        let opts = Options {
            queue: self.queue.clone(),
            artifacts: self.artifacts.clone(),
            name: self.name.clone().unwrap_or_else(default_name),
            work_dir: self.work_dir.clone(),
            models_dir: cli.models_dir.clone(),
            timing: Timing {
                heartbeat: Duration::from_secs_f64(self.heartbeat_s),
                lease: Duration::from_secs_f64(self.lease_s),
            },
        };
        run(&opts, device, &mut |m| eprintln!("worker {}: {m}", opts.name))
    }
}
