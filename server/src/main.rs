//! `multitune-server`: the HTTP API and dashboard.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use multitune_server::Config;

#[derive(Parser)]
#[command(name = "multitune-server", version, about = "Multitune's web service: API, training queue and dashboard")]
struct Args {
    /// Address to listen on (beyond loopback needs --token).
    #[arg(long, env = "MULTITUNE_BIND", default_value = "127.0.0.1:3000")]
    bind: SocketAddr,
    /// Data folder (database, datasets, experiments).
    #[arg(long, env = "MULTITUNE_DATA", default_value = "data")]
    data_dir: PathBuf,
    /// Models folder (the default model is fetched into it).
    #[arg(long, env = "MULTITUNE_MODELS", default_value = "models")]
    models_dir: PathBuf,
    /// Access token clients must send as `Authorization: Bearer <token>` (default: one made
    /// on first start and kept in the data folder's `token` file).
    #[arg(long, env = "MULTITUNE_TOKEN")]
    token: Option<String>,
    /// No access token (allowed only on a loopback address).
    #[arg(long, conflicts_with = "token")]
    no_token: bool,
    /// Largest dataset upload, MiB.
    #[arg(long, env = "MULTITUNE_MAX_UPLOAD_MIB", default_value_t = 64)]
    max_upload_mib: u64,
    /// The built dashboard.
    #[arg(long, env = "MULTITUNE_DIST", default_value = "dist")]
    dist: PathBuf,
    /// Training device: auto, cpu or cuda[:N].
    #[arg(long, env = "MULTITUNE_DEVICE", default_value = "auto")]
    device: String,
    /// Seconds before an ordinary request times out.
    #[arg(long, env = "MULTITUNE_REQUEST_TIMEOUT_S", default_value_t = 30)]
    request_timeout_s: u64,
    /// Import the demo tasks from this folder (training files and an `eval/` folder)
    /// when the server has no datasets yet.
    #[arg(long, env = "MULTITUNE_DEMO")]
    demo: Option<PathBuf>,
    /// A host name this server may be reached by, besides loopback names and IP
    /// addresses (requests naming other hosts are refused: DNS rebinding protection).
    #[arg(long = "allowed-host", env = "MULTITUNE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Seconds a client has to send a whole request head; slower ones are dropped.
    #[arg(long, env = "MULTITUNE_HEADER_TIMEOUT_S", default_value_t = 10)]
    header_timeout_s: u64,
    /// Seconds an upload may go without sending a byte before it is dropped.
    #[arg(long, env = "MULTITUNE_UPLOAD_IDLE_TIMEOUT_S", default_value_t = 30)]
    upload_idle_timeout_s: u64,
    /// The distributed mode: a PostgreSQL URL (`postgres://user:password@host/db`) whose
    /// queue `multitune worker`s take runs from; this server then trains nothing itself
    /// (unless --local-worker). Needs --artifacts.
    #[arg(long, env = "MULTITUNE_QUEUE", requires = "artifacts")]
    queue: Option<String>,
    /// Where the server and the workers share data, checkpoints and results:
    /// `file:///shared/folder` or `s3://bucket/prefix` (AWS_* variables for S3).
    #[arg(long, env = "MULTITUNE_ARTIFACTS", requires = "queue")]
    artifacts: Option<String>,
    /// With --queue: also run a worker inside the server, on its --device.
    #[arg(long, requires = "queue")]
    local_worker: bool,
    /// With --queue: seconds between the local worker's heartbeats.
    #[arg(long, env = "MULTITUNE_HEARTBEAT_S", default_value_t = 30.0)]
    heartbeat_s: f64,
    /// With --queue: seconds without a heartbeat after which a job is leased again.
    #[arg(long, env = "MULTITUNE_LEASE_S", default_value_t = 300.0)]
    lease_s: f64,
    /// With --queue: attempts a job gets before it is given up (its error then shown).
    #[arg(long, env = "MULTITUNE_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: i32,
}

/// mimalloc keeps freed memory for reuse across training steps (see the CLI's note).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Threads for blocking work (file I/O, parsing, zipping). Tokio's default of 512 lets
/// a burst of uploads start a thread, with its own allocator heap, per file operation in
/// flight: measured, 40 parallel uploads started ~90 threads and doubled the server's
/// memory while the training run beside them stalled. Eight keep the burst queued.
const BLOCKING_THREADS: usize = 8;

fn main() -> anyhow::Result<()> {
    // Before any thread starts: it sets environment variables.
    multitune::tune_runtime();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .on_thread_start(multitune_server::state::lower_priority)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    // Logs go to stderr: stdout carries only the address line that scripts read.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "multitune_server=info,tower_http=warn".into()),
        )
        .init();
    let a = Args::parse();
    if a.no_token && !a.bind.ip().is_loopback() {
        anyhow::bail!("--no-token is allowed only on a loopback address, not {}", a.bind);
    }
    let token =
        match a.token.filter(|t| !t.is_empty()) {
            Some(t) => Some(t),
            None if a.no_token => None,
            None => Some(multitune_server::guard::load_or_create_token(&a.data_dir).map_err(|e| {
                anyhow::anyhow!("keeping the access token in {}: {e}", a.data_dir.join("token").display())
            })?),
        };
    let shown = token.clone();
    let cfg = Config {
        bind: a.bind,
        data_dir: a.data_dir,
        models_dir: a.models_dir,
        token,
        max_upload_bytes: a.max_upload_mib << 20,
        dist_dir: Some(a.dist),
        device: a.device,
        request_timeout_s: a.request_timeout_s,
        demo_dir: a.demo,
        allowed_hosts: a.allowed_hosts,
        header_timeout_s: a.header_timeout_s,
        upload_idle_timeout_s: a.upload_idle_timeout_s,
        cluster: a.queue.map(|queue| multitune_server::state::Cluster {
            queue,
            artifacts: a.artifacts.unwrap_or_default(),
            local_worker: a.local_worker,
            timing: multitune_cluster::Timing {
                heartbeat: std::time::Duration::from_secs_f64(a.heartbeat_s.max(0.001)),
                lease: std::time::Duration::from_secs_f64(a.lease_s.max(0.001)),
            },
            max_attempts: a.max_attempts,
        }),
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let on_bound = move |addr| {
        println!("Multitune is at http://{addr}");
        match &shown {
            Some(t) => println!("Open the dashboard at http://{addr}/?token={t}"),
            None => println!("Open the dashboard at http://{addr}/ (no access token)"),
        }
    };
    multitune_server::serve(cfg, on_bound, shutdown).await.map_err(|e| anyhow::anyhow!("{e:#}"))
}
