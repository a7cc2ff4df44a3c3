//! A private PostgreSQL cluster for the tests: `initdb` in a temporary folder (as the
//! `postgres` user when the tests run as root, which PostgreSQL refuses to run as),
//! started with `pg_ctl` on a free loopback port, one database per test, stopped (and
//! the folder removed) on drop. Needs PostgreSQL's server programs: Debian's
//! `postgresql` package, which `.ci/run` and `make test` install.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A running cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
}

/// The folder of `initdb` and `pg_ctl`: on the PATH, else Debian's versioned folder.
fn pg_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("initdb")).find(|f| f.exists()))
        .unwrap_or_default();
    if let Some(f) = on_path {
        return f.parent().unwrap().to_path_buf();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's server programs (initdb, pg_ctl) are missing: install Debian's `postgresql` package \
         (`make test` and .ci/run do)",
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program args…`, as the `postgres` user when we are root.
fn pg_command(bin: &std::path::Path, program: &str) -> Command {
    let exe = bin.join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

impl Postgres {
    /// Starts a fresh cluster.
    pub fn start() -> Self {
        let bin = pg_bin();
        let dir = tempfile::Builder::new().prefix("multitune-pg-").tempdir().unwrap();
        if is_root() {
            let out = Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).output().unwrap();
            assert!(out.status.success(), "chown: {}", String::from_utf8_lossy(&out.stderr));
        }
        let data = dir.path().join("data");
        let out = pg_command(&bin, "initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // A free port: bind, read it, let go (the cluster takes it a moment later).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=200",
            dir.path().display()
        );
        // Waits until the server accepts connections; the limit only bounds a hang.
        let hang = crate::util::HANG.as_secs().to_string();
        let out = pg_command(&bin, "pg_ctl")
            .args(["-w", "-t", &hang, "-D"])
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-o", &opts, "start"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        assert!(out.status.success(), "pg_ctl start: {}\n{log}", String::from_utf8_lossy(&out.stderr));
        Self { dir, bin, port }
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let admin = format!("postgres://postgres@127.0.0.1:{}/postgres", self.port);
        let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = pg_command(&self.bin, "pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

/// One cluster for the whole test binary, started by the first test that needs it.
/// (Statics are not dropped: the cluster is stopped at exit by `stop_at_exit`.)
pub fn shared() -> &'static Postgres {
    static PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    PG.get_or_init(|| {
        let pg = Postgres::start();
        let (bin, data) = (pg.bin.clone(), pg.dir.path().join("data"));
        STOP.get_or_init(|| (bin, data));
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_at_exit) };
        pg
    })
}

static STOP: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();

extern "C" fn stop_at_exit() {
    if let Some((bin, data)) = STOP.get() {
        let _ = pg_command(bin, "pg_ctl").args(["-m", "immediate", "-D"]).arg(data).arg("stop").output();
        if let Some(dir) = data.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
