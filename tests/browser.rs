use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::http::Server;
use crate::util::HANG;

/// A headless Chromium driven over the WebDriver protocol (chromedriver), from Rust.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn find_program(names: &[&str]) -> PathBuf {
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{names:?} not found: install Debian's chromium and chromium-driver (.ci/run does)");
}

impl Browser {
    async fn start() -> Self {
        let port = free_port();
        let driver = Command::new(find_program(&["chromedriver"]))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(t0.elapsed() < HANG, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": find_program(&["chromium", "chromium-browser"]).display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-background-networking", "--disable-component-update", "--window-size=1280,1000"]
            }
        }}});
        let v: Value = http.post(format!("{base}/session")).json(&caps).send().await.unwrap().json().await.unwrap();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {v}")).to_string();
        Self { driver, base, session, http }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body.unwrap_or(json!({}))),
        };
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.cmd("POST", "/elements", Some(json!({"using": "css selector", "value": css}))).await;
        v.as_array()
            .map(|a| a.iter().filter_map(|e| e[ELEMENT].as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// Waits for the first element matching `css`.
    async fn wait(&self, css: &str) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(t0.elapsed() < HANG, "no `{css}` appeared");
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }

    /// Waits until the page's text contains `text`.
    async fn wait_text(&self, css: &str, text: &str) {
        let t0 = Instant::now();
        loop {
            for e in self.find_all(css).await {
                if self.text(&e).await.contains(text) {
                    return;
                }
            }
            assert!(t0.elapsed() < HANG, "`{css}` never showed `{text}`");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn click(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/click"), None).await;
    }

    async fn clear(&self, el: &str) {
        self.cmd("POST", &format!("/element/{el}/clear"), None).await;
    }

    async fn send_keys(&self, el: &str, text: &str) {
        self.cmd("POST", &format!("/element/{el}/value"), Some(json!({ "text": text }))).await;
    }

    async fn text(&self, el: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/text"), None).await.as_str().unwrap_or("").to_string()
    }

    async fn attr(&self, el: &str, name: &str) -> String {
        self.cmd("GET", &format!("/element/{el}/attribute/{name}"), None).await.as_str().unwrap_or("").to_string()
    }

    async fn screenshot(&self, name: &str) {
        let v = self.cmd("GET", "/screenshot", None).await;
        let png = base64_decode(v.as_str().expect("a screenshot"));
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Test artifacts: `target/screenshots/` (or `$MULTITUNE_SCREENSHOTS`).
/// `GET path` from the server as the dashboard's user (with its access token), as JSON.
async fn api_get<T: serde::de::DeserializeOwned>(s: &Server, token: &str, path: &str) -> T {
    reqwest::Client::new().get(s.url(path)).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

fn screenshots_dir() -> PathBuf {
    std::env::var_os("MULTITUNE_SCREENSHOTS").map(PathBuf::from).unwrap_or_else(|| {
        let exe = std::env::current_exe().unwrap();
        exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()).unwrap().join("screenshots")
    })
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => 0,
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let n = chunk.iter().take_while(|&&c| c != b'=').count();
        let v: u32 = chunk.iter().take(n).enumerate().fold(0, |acc, (i, &c)| acc | (u32::from(val(c)) << (18 - 6 * i)));
        out.extend(v.to_be_bytes()[1..].iter().take(n.saturating_sub(1)));
    }
    out
}

/// The dashboard in a real headless Chromium: upload a demo dataset through the file
/// input, create an experiment on the tiny model, watch the loss chart gain points,
/// reach the compare page with a filled table, download an adapter; a screenshot of
/// every page is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_end_to_end_in_chromium() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    assert!(dist.join("index.html").exists(), "the dashboard is not built: run `make ui`");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_token(&dir.path().join("data"), &["--dist", dist.to_str().unwrap()]);
    let token = s.token.clone().expect("a token by default");
    let b = Browser::start().await;
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");

    // The start-up URL's token: the dashboard keeps it for the tab and clears the address bar.
    b.goto(&s.url(&format!("/datasets?token={token}"))).await;
    b.wait_text("p", "No datasets yet").await;
    // The header says what runs the jobs (here: the CPU, by its model name).
    let cpu = multitune::kernels::blas::cpuinfo_field("model name");
    b.wait_text("header .device", &format!("CPU: {cpu}")).await;
    let shown = b.cmd("GET", "/url", None).await.as_str().unwrap().to_string();
    assert!(!shown.contains("token"), "the token left the address bar: {shown}");
    assert!(shown.ends_with("/datasets"), "{shown}");

    // Datasets: upload two tasks and a keep set through the file input.
    for t in ["sentiment", "arithmetic", "topic"] {
        let input = b.wait("input#file").await;
        b.send_keys(&input, demo.join(format!("{t}.jsonl")).to_str().unwrap()).await;
        b.wait_text("table.datasets", t).await;
    }
    b.wait_text("p.ok", "Added").await;
    b.screenshot("datasets").await;
    // A malformed upload shows its problems by line.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"completion\": \"b\"}\nnot json\n").unwrap();
    let input = b.wait("input#file").await;
    b.send_keys(&input, bad.to_str().unwrap()).await;
    b.wait_text(".error", "line 2").await;

    b.goto(&s.url("/models")).await;
    b.wait_text("table", "tiny").await;
    b.screenshot("models").await;

    // New experiment on the tiny model.
    b.goto(&s.url("/new")).await;
    b.wait("input[id^='task-']").await;
    for t in ["sentiment", "arithmetic", "topic"] {
        b.click(&b.wait(&format!("input[id^='task-'][data-name='{t}']")).await).await;
    }
    // `topic` as a keep set too: refused by the form at once, naming the field; then it
    // is a keep set only (scored with every run, never trained on).
    let keep = b.wait("input[id^='keep-'][data-name='topic']").await;
    b.click(&keep).await;
    b.click(&b.wait("button[type='submit']").await).await;
    b.wait_text(".error", "keep sets: `topic` is also a task").await;
    b.click(&b.wait("input[id^='task-'][data-name='topic']").await).await;
    let tiny = b.wait("#model option[value='tiny']").await;
    b.click(&tiny).await;
    let budget = b.wait("#budget").await;
    b.clear(&budget).await;
    b.send_keys(&budget, "12000").await;
    let limit = b.wait("#eval-limit").await;
    b.clear(&limit).await;
    b.send_keys(&limit, "4").await;
    let lr = b.wait("#lr").await;
    b.clear(&lr).await;
    b.send_keys(&lr, "0.005").await;
    b.wait_text(".estimate", "tokens/s").await;
    // The learning-rate search is offered and counted in the estimate (left off here: it
    // would double the run).
    let tune = b.wait("#tune-lr").await;
    b.click(&tune).await;
    b.wait_text(".estimate", "with the searches").await;
    b.click(&tune).await;
    // Adapter methods compared: a name the form does not know is named at once; one
    // method alone is refused by the server, naming the field; then left blank.
    b.wait_text("#method-hint", "learning-rate search").await;
    let methods = b.wait("#methods").await;
    b.send_keys(&methods, "lora,qlora").await;
    b.click(&b.wait("button[type='submit']").await).await;
    b.wait_text(".error", "compare methods: `qlora` is not lora, rslora, dora or pissa").await;
    b.clear(&methods).await;
    b.send_keys(&methods, "dora").await;
    b.click(&b.wait("button[type='submit']").await).await;
    b.wait_text(".error", "hyper.methods: dora alone compares nothing").await;
    // (Clearing fires no input event: a blank typed in does, and reads as no methods.)
    b.clear(&methods).await;
    b.send_keys(&methods, " ").await;
    // What the chosen held-out sets can tell apart, before anything is trained.
    b.wait_text("#power", "will look like ties").await;
    // Data-size curves: a share listed twice is refused by the server, the field named;
    // then one smaller size (half the data), which the compare page shows.
    let sizes = b.wait("#data-fractions").await;
    b.send_keys(&sizes, "0.5,0.5").await;
    b.wait_text(".estimate", "tokens/s").await;
    let start = b.wait("button[type='submit']").await;
    b.click(&start).await;
    b.wait_text(".error", "hyper.data_fractions: 0.5 is listed twice").await;
    b.clear(&sizes).await;
    b.send_keys(&sizes, "0.5").await;
    b.screenshot("new-experiment").await;
    b.click(&start).await;

    // Live: the loss chart gains points. Seen growing on any machine: the runs train
    // hundreds of steps, each an event the chart draws, while this looks every ~50 ms.
    let chart = b.wait("#loss-chart").await;
    let mut seen = Vec::new();
    let t0 = Instant::now();
    loop {
        let n: usize = b.attr(&chart, "data-points").await.parse().unwrap_or(0);
        if seen.last() != Some(&n) {
            seen.push(n);
        }
        if seen.len() >= 3 && n > 0 {
            break;
        }
        assert!(t0.elapsed() < HANG, "the chart did not grow: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "points only grow: {seen:?}");
    b.screenshot("experiment-live").await;
    b.wait_text("#status", "done").await;
    // Five strategies at two data sizes, every one trained.
    b.wait_text("#runs-trained", "10 of 10 runs trained").await;
    let polylines = b.find_all("#loss-chart svg polyline").await;
    assert!(polylines.len() > 5, "the loss chart has lines");
    // The mixed runs' loss per task: a line per (run, task).
    let per_task = b.find_all("#task-loss-chart svg polyline").await;
    assert!(per_task.len() >= 4, "a line per task of each mixed run: {}", per_task.len());
    b.screenshot("experiment-done").await;

    // Compare, one screen first: the answer in one sentence, the compact table marked
    // against the best run, the forest plot with its figures on hover; the rest folded.
    let compare = b.wait("a[href$='/compare']").await;
    b.click(&compare).await;
    b.wait_text("#answer", "Use ").await;
    b.wait_text("#compact-table", "combined (proportional)").await;
    let compact = b.find_all("#compact-table tbody tr").await;
    assert!(compact.len() >= 8, "base + every run: {}", compact.len());
    let cell = b.wait("#compact-table tbody tr td[title]").await;
    assert!(b.attr(&cell, "title").await.contains('['), "a cell's interval on hover");
    let bars = b.find_all("#forest .forest-row").await;
    assert_eq!(bars.len(), compact.len() - 1, "every run but the best, the base model included");
    assert!(b.attr(&bars[0], "title").await.contains("points, p (Holm)"));
    let details = b.wait("details#details").await;
    assert!(b.attr(&details, "open").await.is_empty(), "the details start folded");
    b.screenshot("compare").await;
    b.click(&b.wait("details#details > summary").await).await;
    b.wait_text("#compare-table", "combined (proportional)").await;
    let rows = b.find_all("#compare-table tbody tr").await;
    assert!(rows.len() >= 8, "base + every run: {}", rows.len());
    b.wait_text(".recommendation", "best overall").await;
    b.wait_text("#pair-matrix", "base model").await;
    b.wait_text("ul.standings", "sentiment").await;
    b.wait("img[src*='scores.svg']").await;
    // The keep set: a column marked against the base model, the sentence, the chart.
    b.wait_text("#compact-table th.keep", "keep: topic").await;
    let keep_cell = b.wait("#compact-table td.keep[title]").await;
    assert!(b.attr(&keep_cell, "title").await.starts_with("keep set topic: "));
    b.wait_text("#keep-text", "base model").await;
    b.wait("img[src*='keep.svg']").await;
    // The data-size curves: where the winner changes, a column per size, the chart.
    b.wait_text("#data-sizes", "50% · ~").await;
    b.wait_text("#data-sizes", "100% · ~").await;
    let said = b.text(&b.wait("#data-sizes-text").await).await;
    assert!(said.contains("examples per task"), "{said}");
    b.wait("img[src*='curves.svg']").await;
    b.screenshot("compare-details").await;

    // Downloads: an adapter zip that loads back.
    let url = b.cmd("GET", "/url", None).await.as_str().unwrap().to_string();
    b.goto(&url.replace("/compare", "/downloads")).await;
    let link = b.wait("a.adapter").await;
    let href = b.attr(&link, "href").await;
    b.screenshot("downloads").await;
    let bytes = reqwest::get(s.url(&href)).await.unwrap().bytes().await.unwrap();
    let out = dir.path().join("adapter");
    zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap().extract(&out).unwrap();
    let folder = std::fs::read_dir(&out).unwrap().next().unwrap().unwrap().path();
    let (model, _) = multitune::model::tiny_model(0, &candle_core::Device::Cpu).unwrap();
    let adapter = multitune::adapter::peft::load_adapter(&folder, &model.cfg, &candle_core::Device::Cpu).unwrap();
    assert!(adapter.num_parameters() > 0);

    // Playground: base and tuned side by side.
    b.goto(&s.url("/playground")).await;
    let opt = b.wait("#pg-exp option:nth-child(2)").await;
    b.click(&opt).await;
    let run = b.wait("#pg-run option:nth-child(2)").await;
    b.click(&run).await;
    let prompt = b.wait("#pg-prompt").await;
    b.send_keys(&prompt, "Review: great.").await;
    let ask = b.wait("button[type='submit']").await;
    b.click(&ask).await;
    let t0 = Instant::now();
    while b.find_all("pre.answer").await.len() < 2 {
        assert!(t0.elapsed() < HANG, "no answers");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    b.screenshot("playground").await;

    // A comparison of adapter methods (asked through the API: one strategy, two methods,
    // a small budget): its Compare page says which method where, in a table per row.
    let c = reqwest::Client::new();
    let datasets: Vec<multitune_api::Dataset> = api_get(&s, &token, "/api/datasets").await;
    let sentiment = datasets.iter().find(|d| d.name == "sentiment").expect("the sentiment task");
    let spec = json!({
        "name": "methods", "model": "tiny", "tasks": [{"dataset": sentiment.id}],
        "strategies": [{"strategy": "combined"}], "budget_tokens": 1200,
        "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4, "bootstrap": 20,
                  "methods": ["lora", "rslora"]}
    });
    let r = c.post(s.url("/api/experiments")).bearer_auth(&token).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let e: multitune_api::Experiment = r.json().await.unwrap();
    let t0 = Instant::now();
    loop {
        let now: multitune_api::Experiment = api_get(&s, &token, &format!("/api/experiments/{}", e.id)).await;
        if now.status.is_final() {
            assert_eq!(now.status, multitune_api::Status::Done, "{:?}", now.error);
            break;
        }
        assert!(t0.elapsed() < HANG, "the methods comparison did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.goto(&s.url(&format!("/experiments/{}/compare", e.id))).await;
    b.wait_text("#methods-table", "combined (proportional)").await;
    let heads = b.find_all("#methods-table th").await;
    assert_eq!(heads.len(), 4, "run, lora, rslora, use");
    b.wait_text("#methods-text", "Use ").await;
    b.wait_text("#compact-table", "combined (proportional) [rslora]").await;
    let show = json!({
        "script": "const t = document.getElementById('methods-text'); window.scrollTo(0, t.getBoundingClientRect().top + window.scrollY - 90)",
        "args": []
    });
    b.cmd("POST", "/execute/sync", Some(show)).await;
    b.screenshot("compare-methods").await;
    b.wait("img[src*='methods.svg']").await;

    // A page of another origin (another loopback port) tries to read the datasets and to
    // upload one: the read fails in the browser, the upload is refused by the server.
    let port: u16 = s.addr.port();
    let page = format!(
        r#"<!doctype html><title>attacker</title><script>
        (async () => {{
          const target = "http://127.0.0.1:{port}";
          let get = "unknown", post = "unknown";
          try {{ const r = await fetch(target + "/api/datasets"); get = "read-" + r.status; }} catch (e) {{ get = "blocked"; }}
          try {{
            const fd = new FormData();
            fd.append("file", new Blob(['{{"text":"a b","label":"x"}}\n{{"text":"c d","label":"y"}}\n'.repeat(2)]), "evil.jsonl");
            await fetch(target + "/api/datasets", {{ method: "POST", body: fd, mode: "no-cors" }});
            post = "sent";
          }} catch (e) {{ post = "blocked"; }}
          document.title = "get:" + get + " post:" + post;
        }})();
        </script>"#
    );
    let attacker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let attacker_url = format!("http://127.0.0.1:{}/", attacker.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for conn in attacker.incoming().take(4).flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    b.goto(&attacker_url).await;
    let t0 = Instant::now();
    let title = loop {
        let t = b.cmd("GET", "/title", None).await.as_str().unwrap_or("").to_string();
        if t.starts_with("get:") {
            break t;
        }
        assert!(t0.elapsed() < HANG, "the attacker page did not finish: {t:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(title.starts_with("get:blocked"), "a cross-origin page read the API: {title}");
    let list: Vec<multitune_api::Dataset> = api_get(&s, &token, "/api/datasets").await;
    assert!(list.iter().all(|d| d.name != "evil"), "the cross-site upload was stored: {title}");
    assert!(!list.is_empty());
    b.cmd("DELETE", "", None).await;
}
