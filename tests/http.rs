//! The HTTP service as a process, for the tests: start it, upload, follow events.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use multitune_api::{Envelope, Experiment};

/// A `multitune-server` process on a free port with its own data folder.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub data: PathBuf,
    /// The access token it printed (started with [`Server::start_with_token`]).
    pub token: Option<String>,
}

pub fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let b = exe.parent().and_then(|p| p.parent()).expect("target/<profile>").join("multitune-server");
    assert!(b.exists(), "{} is missing: build it with `cargo build -p multitune-server`", b.display());
    b
}

impl Server {
    /// Started with `--no-token`: the HTTP tests speak as a CLI client on loopback.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::launch(data, &[&["--no-token"], extra].concat(), &[])
    }

    /// Started as `make run` starts it: with the access token made on first start, which
    /// the second start-up line gives in the dashboard's URL.
    pub fn start_with_token(data: &Path, extra: &[&str]) -> Self {
        Self::launch(data, extra, &[])
    }

    /// Started with `--no-token` and these environment variables.
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(data, &[&["--no-token"], extra].concat(), env)
    }

    fn launch(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(server_bin())
            .envs(env.iter().copied())
            .args(["--bind", "127.0.0.1:0", "--device", "cpu", "--data-dir"])
            .arg(data)
            .arg("--models-dir")
            .arg(crate::util::models_dir())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
        let mut second = String::new();
        out.read_line(&mut second).unwrap();
        let token = second.trim().split_once("/?token=").map(|(_, t)| t.to_string());
        // Keep draining stdout so the server never writes into a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        let base =
            line.trim().strip_prefix("Multitune is at ").unwrap_or_else(|| panic!("unexpected: {line:?}")).to_string();
        let addr = base.trim_start_matches("http://").parse().unwrap();
        Self { child, base, addr, data: data.to_path_buf(), token }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request with a raw request target (no client-side normalisation): the status.
    pub fn raw(&self, method: &str, target: &str) -> (u16, String) {
        self.raw_with(method, target, &[("Host", "localhost")])
    }

    /// A raw request with exactly these headers (a `Host` among them or not).
    pub fn raw_with(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(crate::util::HANG)).unwrap();
        let headers: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        write!(s, "{method} {target} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let text = String::from_utf8_lossy(&out).into_owned();
        let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, text)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn demo_file(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(name)).unwrap()
}

pub async fn upload(c: &reqwest::Client, s: &Server, name: &str, bytes: Vec<u8>) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
    c.post(s.url("/api/datasets")).multipart(reqwest::multipart::Form::new().part("file", part)).send().await.unwrap()
}

pub async fn experiment_of(c: &reqwest::Client, s: &Server, id: &str) -> Experiment {
    c.get(s.url(&format!("/api/experiments/{id}"))).send().await.unwrap().json().await.unwrap()
}

pub async fn wait_for(c: &reqwest::Client, s: &Server, id: &str, what: impl Fn(&Experiment) -> bool) -> Experiment {
    let t0 = Instant::now();
    loop {
        let e = experiment_of(c, s, id).await;
        if what(&e) {
            return e;
        }
        assert!(t0.elapsed() < crate::util::HANG, "timed out: {e:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows an experiment's events from its first until `what` says one is the awaited one,
/// and returns that one: the moment something happens in training, with no polling lag.
pub async fn wait_for_event(
    c: &reqwest::Client,
    s: &Server,
    id: &str,
    mut what: impl FnMut(&multitune_api::Event) -> bool,
) -> Envelope {
    let resp = c.get(s.url(&format!("/api/experiments/{id}/events"))).send().await.unwrap();
    let mut found = None;
    let follow = follow_events(resp, |e| {
        if what(&e.event) {
            found = Some(e);
        }
        found.is_none()
    });
    tokio::time::timeout(crate::util::HANG, follow).await.expect("timed out waiting for an event");
    found.expect("the event stream ended first")
}

/// Reads server-sent events until the stream ends or `stop_after` arrive.
pub async fn read_events(resp: reqwest::Response, stop_after: Option<usize>) -> Vec<Envelope> {
    let mut out = Vec::new();
    follow_events(resp, |e| {
        out.push(e);
        stop_after.is_none_or(|n| out.len() < n)
    })
    .await;
    out
}

/// Hands each server-sent event to `on_event` as it arrives, until the stream ends or
/// `on_event` says to stop (false).
pub async fn follow_events(resp: reqwest::Response, mut on_event: impl FnMut(Envelope) -> bool) {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_string());
                }
            }
            if let (Some(id), Some(d)) = (id, data) {
                let e = Envelope { id, experiment_id: String::new(), event: serde_json::from_str(&d).unwrap() };
                if !on_event(e) {
                    return;
                }
            }
        }
    }
}
