//! Every endpoint through the router with `oneshot` (no socket): success and error
//! paths. The worker thread is real, so the experiment trains on the tiny model.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use multitune_api::{Dataset, DatasetDetail, ErrorBody, Experiment, MetricsHistory, Model, Run, Status};
use multitune_server::{router, AppState, Config};
use serde_json::{json, Value};
use tower::ServiceExt;

// Fuzzed uploads and experiment requests through the same router.
#[path = "router/fuzz.rs"]
mod fuzz;

/// How long a wait goes on before it is called a hang: far beyond what any wait here
/// takes on a machine several times slower than ours, so it never races the code.
const HANG: Duration = Duration::from_secs(600);

struct App {
    router: Router,
    _state: AppState,
    dir: tempfile::TempDir,
}

fn demo(name: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo");
    std::fs::read(root.join(name)).unwrap()
}

impl App {
    fn new(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::new(dir.path().join("data"), dir.path().join("models"));
        cfg.device = "cpu".into();
        tweak(&mut cfg);
        let state = multitune_server::build(cfg).unwrap();
        Self { router: router(state.clone()), _state: state, dir }
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let (parts, body) = res.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap().to_vec();
        (parts.status, parts.headers, bytes)
    }

    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let (s, _, b) = self.send(Request::get(path).body(Body::empty()).unwrap()).await;
        (s, b)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, T) {
        let req = Request::builder().method(method).uri(path).header(header::CONTENT_TYPE, "application/json");
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let (s, _, b) = self.send(req).await;
        let v = serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&b)));
        (s, v)
    }

    async fn upload(&self, filename: &str, bytes: &[u8], name: Option<&str>) -> (StatusCode, Vec<u8>) {
        let boundary = "XBOUNDARYX";
        let mut body = Vec::new();
        if let Some(n) = name {
            body.extend(
                format!("--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\n{n}\r\n").bytes(),
            );
        }
        body.extend(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(format!("\r\n--{boundary}--\r\n").bytes());
        let req = Request::post("/api/datasets")
            .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
            .body(Body::from(body))
            .unwrap();
        let (s, _, b) = self.send(req).await;
        (s, b)
    }

    async fn dataset(&self, file: &str) -> Dataset {
        let (s, b) = self.upload(file, &demo(file), None).await;
        assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
        serde_json::from_slice(&b).unwrap()
    }

    async fn wait(&self, id: &str, until: impl Fn(&Experiment) -> bool) -> Experiment {
        let t0 = Instant::now();
        loop {
            let (_, e): (_, Experiment) = self.json(Method::GET, &format!("/api/experiments/{id}"), None).await;
            if until(&e) {
                return e;
            }
            assert!(t0.elapsed() < HANG, "experiment stuck: {e:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn error(b: &[u8]) -> ErrorBody {
    serde_json::from_slice(b).unwrap_or_else(|e| panic!("not an error body ({e}): {}", String::from_utf8_lossy(b)))
}

fn experiment(tasks: &[&str], strategies: Value) -> Value {
    json!({
        "name": "router test",
        "model": "tiny",
        "tasks": tasks.iter().map(|t| json!({"dataset": t})).collect::<Vec<_>>(),
        "strategies": strategies,
        "budget_tokens": 1500,
        "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4, "bootstrap": 20, "checkpoint_every": 2}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_version_models_and_unknown_routes() {
    let app = App::new(|_| {});
    let (s, v): (_, Value) = app.json(Method::GET, "/api/health", None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (s, v): (_, Value) = app.json(Method::GET, "/api/version", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["schema"], multitune_server::db::schema_version());
    assert_eq!(v["device"], "cpu");
    // The device for people: the CPU's model, threads and memory.
    let d = &v["device_info"];
    assert_eq!(d["id"], "cpu");
    assert!(d["threads"].as_u64().is_some_and(|t| t >= 1) && d["memory_mib"].as_u64().is_some_and(|m| m > 0), "{d}");
    assert!(d["summary"].as_str().is_some_and(|t| t.starts_with("CPU: ") && t.ends_with(" GiB")), "{d}");
    // The matrix-product engine is chosen in the background at start-up (measured once per
    // machine, then cached) and reported with the figures behind it.
    let mut v = v;
    let t0 = Instant::now();
    while v["matmul"].is_null() {
        assert!(t0.elapsed() < HANG, "no matmul engine chosen: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        v = app.json::<Value>(Method::GET, "/api/version", None).await.1;
    }
    assert!(v["matmul"]["many_rows"].is_string() && v["matmul"]["how"].is_string(), "{v}");
    // What held-out sets can tell apart, before training: four tasks of 20 → ~22 points.
    let (s, p): (_, multitune_api::Power) = app.json(Method::GET, "/api/power?examples=20,20,20,20", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!((p.detectable - 0.2215).abs() < 1e-3 && p.text.contains("Warning"), "{p:?}");
    for bad in ["", "0", "20,x", "-1"] {
        let (s, b) = app.get(&format!("/api/power?examples={bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert!(error(&b).error.message.contains("examples"), "{bad}");
    }
    let (s, models): (_, Vec<Model>) = app.json(Method::GET, "/api/models", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(models.iter().map(|m| m.id.as_str()).take(2).collect::<Vec<_>>(), ["default", "tiny"]);
    // Registering: a relative path, a missing file and a folder without config.json are refused.
    for (path, want) in [("models/x.gguf", "absolute"), ("/nope/x.gguf", "x.gguf"), ("/tmp", "config.json")] {
        let (s, e): (_, ErrorBody) = app.json(Method::POST, "/api/models", Some(json!({ "path": path }))).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(e.error.message.contains(want), "{path}: {}", e.error.message);
    }
    // A Hugging Face folder registers and is listed.
    let hf = app.dir.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    let (m, tok) = multitune::model::tiny_model(0, &candle_core::Device::Cpu).unwrap();
    multitune::model::save_hf_dir(&m, &tok, &hf).unwrap();
    let (s, model): (_, Model) =
        app.json(Method::POST, "/api/models", Some(json!({ "path": hf.display().to_string(), "name": "mine" }))).await;
    assert_eq!((s, model.kind.as_str(), model.name.as_str()), (StatusCode::CREATED, "hf", "mine"));
    let (s, _): (_, ErrorBody) =
        app.json(Method::POST, "/api/models", Some(json!({ "path": hf.display().to_string() }))).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (_, models): (_, Vec<Model>) = app.json(Method::GET, "/api/models", None).await;
    assert!(models.iter().any(|m| m.id == model.id && m.source == "registered"));
    let (s, b) = app.get("/api/nothing/here").await;
    assert_eq!((s, error(&b).error.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    // Without a built dashboard, / explains how to build it.
    let (s, b) = app.get("/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8_lossy(&b).contains("make run"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_upload_list_show_delete_and_reject() {
    let app = App::new(|c| c.max_upload_bytes = 200_000);
    let d = app.dataset("sentiment.jsonl").await;
    assert_eq!((d.name.as_str(), d.kind.as_str(), d.rows), ("sentiment", "classification", 300));
    assert_eq!(d.labels, ["negative", "positive"]);
    let (s, list): (_, Vec<Dataset>) = app.json(Method::GET, "/api/datasets", None).await;
    assert_eq!((s, list.len()), (StatusCode::OK, 1));
    let (s, detail): (_, DatasetDetail) = app.json(Method::GET, &format!("/api/datasets/{}", d.id), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail.preview.len(), 20);
    assert_eq!(detail.preview[0].line, 1);
    assert_eq!(detail.label_counts.iter().map(|c| c.1).sum::<usize>(), 300);
    // A name given with the upload; a hostile one is refused.
    let (s, b) = app.upload("x.jsonl", &demo("topic.jsonl"), Some("my_topic")).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let (s, b) = app.upload("x.jsonl", &demo("topic.jsonl"), Some("../../etc")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(error(&b).error.message.contains("letters, digits"));
    // Malformed: 422 with the problems by line; nothing is kept.
    let bad = b"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\nnot json\n";
    let (s, b) = app.upload("bad.jsonl", bad, None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let e = error(&b).error;
    assert_eq!(e.code, "invalid_dataset");
    assert!(e.details.iter().any(|d| d.starts_with("line 2")), "{:?}", e.details);
    assert!(e.details.iter().any(|d| d.starts_with("line 3")), "{:?}", e.details);
    // Oversize: 413; no part file left behind.
    let (s, b) = app.upload("big.jsonl", &vec![b'x'; 300_000], None).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&b));
    assert_eq!(error(&b).error.code, "too_large");
    assert_eq!(std::fs::read_dir(app.dir.path().join("data/tmp")).unwrap().count(), 0);
    // No file part.
    let req = Request::post("/api/datasets")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=B")
        .body(Body::from("--B--\r\n"))
        .unwrap();
    let (s, _, _) = app.send(req).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, list): (_, Vec<Dataset>) = app.json(Method::GET, "/api/datasets", None).await;
    assert_eq!(list.len(), 2, "rejected uploads are not listed");
    // Delete; then it is gone.
    let (s, _, _) = app.send(Request::delete(format!("/api/datasets/{}", d.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("/api/datasets/{}", d.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(!app.dir.path().join("data/datasets").join(&d.id).exists());
    let (s, _) = app.get("/api/datasets/not-an-id").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiments_validate_run_report_and_serve_artifacts() {
    let app = App::new(|_| {});
    let a = app.dataset("sentiment.jsonl").await;
    let ar = app.dataset("arithmetic.jsonl").await;
    // Invalid requests name every problem.
    let mut bad = experiment(&[&a.id, "0000000000000000"], json!([{"strategy": "sequential", "variant": "sideways"}]));
    bad["budget_tokens"] = json!(0);
    bad["hyper"]["learning_rate"] = json!(-1.0);
    bad["model"] = json!("gpt-9");
    let (s, e): (_, ErrorBody) = app.json(Method::POST, "/api/experiments", Some(bad)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let details = e.error.details.join("\n");
    for want in ["budget_tokens", "learning_rate", "no dataset with id `0000000000000000`", "model:", "sideways"] {
        assert!(details.contains(want), "missing `{want}` in:\n{details}");
    }
    let req = Request::post("/api/experiments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"name": "x"}"#))
        .unwrap();
    let (s, _, b) = app.send(req).await;
    assert!(error(&b).error.message.contains("missing field"), "{}", String::from_utf8_lossy(&b));
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let spec = experiment(
        &[&a.id, &ar.id],
        json!([{"strategy": "combined"}, {"strategy": "separate", "merges": ["linear"]}, {"strategy": "multi_head"}]),
    );
    let (s, e): (_, Experiment) = app.json(Method::POST, "/api/experiments", Some(spec)).await;
    assert_eq!(s, StatusCode::CREATED);
    assert!(matches!(e.status, Status::Queued | Status::Running));
    // A dataset in use cannot be deleted.
    let (s, _, _) = app.send(Request::delete(format!("/api/datasets/{}", a.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let done = app.wait(&e.id, |x| x.status.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert!(done.has_report);
    let names: Vec<&str> = done.runs.iter().map(|r| r.name.as_str()).collect();
    for want in ["combined (proportional)", "separate (routed)", "separate + merge (linear)", "multi-head"] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let (s, list): (_, Vec<Experiment>) = app.json(Method::GET, "/api/experiments", None).await;
    assert_eq!((s, list.len()), (StatusCode::OK, 1));
    // Report, markdown, charts.
    let (s, report): (_, Value) = app.json(Method::GET, &format!("/api/experiments/{}/report", e.id), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(report["runs"].as_array().unwrap().len(), 5);
    let (s, md) = app.get(&format!("/api/experiments/{}/report.md", e.id)).await;
    assert!(s == StatusCode::OK && String::from_utf8_lossy(&md).contains("## Recommendation"));
    let (_, charts): (_, Vec<String>) = app.json(Method::GET, &format!("/api/experiments/{}/charts", e.id), None).await;
    assert!(charts.contains(&"scores.svg".to_string()) && charts.contains(&"loss.png".to_string()), "{charts:?}");
    let (s, h, svg) = app
        .send(Request::get(format!("/api/experiments/{}/charts/scores.svg", e.id)).body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, h[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "image/svg+xml"));
    assert!(String::from_utf8_lossy(&svg).contains("<svg"));
    // Generated files are downloads, never pages of our origin.
    assert_eq!(h[header::CONTENT_DISPOSITION], "attachment; filename=\"scores.svg\"");
    let (_, h, _) =
        app.send(Request::get(format!("/api/experiments/{}/report.md", e.id)).body(Body::empty()).unwrap()).await;
    assert!(h[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment"));
    let (s, _) = app.get(&format!("/api/experiments/{}/charts/secret.txt", e.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Runs: status, metrics, artifacts.
    let combined = done.runs.iter().find(|r| r.name == "combined (proportional)").unwrap();
    let (s, run): (_, Run) = app.json(Method::GET, &format!("/api/runs/{}", combined.id), None).await;
    assert_eq!((s, run.status, run.has_adapter), (StatusCode::OK, Status::Done, true));
    let (s, m): (_, MetricsHistory) =
        app.json(Method::GET, &format!("/api/runs/{}/metrics?points=3", combined.id), None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(m.steps >= 3 && m.points.len() == 3, "{m:?}");
    let (s, h, zip) =
        app.send(Request::get(format!("/api/runs/{}/adapter", combined.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h[header::CONTENT_TYPE], "application/zip");
    assert!(h[header::CONTENT_DISPOSITION].to_str().unwrap().starts_with("attachment; filename="));
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let files: Vec<String> = (0..z.len()).map(|i| z.by_index(i).unwrap().name().to_string()).collect();
    assert!(files.iter().any(|f| f.ends_with("adapter_config.json")), "{files:?}");
    let mh = done.runs.iter().find(|r| r.name == "multi-head").unwrap();
    assert!(mh.has_heads);
    let (s, _, zip) = app.send(Request::get(format!("/api/runs/{}/heads", mh.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let z = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert_eq!(z.len(), 2);
    let (s, _) = app.get(&format!("/api/runs/{}/heads", combined.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, zip) =
        app.send(Request::get(format!("/api/runs/{}/merged", combined.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    assert!(z.by_name("merged-model/config.json").is_ok());
    let routed = done.runs.iter().find(|r| r.name == "separate (routed)").unwrap();
    let (s, _) = app.get(&format!("/api/runs/{}/merged", routed.id)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    // GGUF needs a GGUF base: the tiny model is not one; the answer says what to do.
    let (s, body) = app.get(&format!("/api/runs/{}/gguf?type=f16", combined.id)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(String::from_utf8_lossy(&body).contains("convert_hf_to_gguf.py"));
    let (s, _) = app.get(&format!("/api/runs/{}/gguf?type=q2", combined.id)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, h, _) =
        app.send(Request::get(format!("/api/experiments/{}/download", e.id)).body(Body::empty()).unwrap()).await;
    assert_eq!((s, h[header::CONTENT_TYPE].to_str().unwrap()), (StatusCode::OK, "application/zip"));
    // Events replay (finished experiment: the stream ends by itself).
    let (s, body) = app.get(&format!("/api/experiments/{}/events", e.id)).await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("event: run_started") && text.contains("event: step") && text.contains("\"status\":\"done\"")
    );
    let (s, body) = app.get(&format!("/api/runs/{}/events", combined.id)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!String::from_utf8_lossy(&body).contains("multi-head"), "a run's stream has only its own events");
    // Playground: base, a tuned run, a multi-head classifier; bad requests.
    let play = |run: Option<i64>, task: Option<&str>| json!({"experiment": e.id, "run": run, "task": task, "prompt": "Review: great.", "max_new_tokens": 4});
    for body in [
        play(None, None),
        play(Some(combined.id), None),
        play(Some(mh.id), Some("sentiment")),
        play(Some(routed.id), Some("arithmetic")),
    ] {
        let req = Request::post("/api/playground")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (s, _, b) = app.send(req).await;
        let text = String::from_utf8_lossy(&b);
        assert_eq!(s, StatusCode::OK, "{text}");
        assert!(text.contains("event: done"), "{text}");
    }
    let req = Request::post("/api/playground")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(play(Some(routed.id), None).to_string()))
        .unwrap();
    assert_eq!(app.send(req).await.0, StatusCode::BAD_REQUEST);
    let mut empty = play(None, None);
    empty["prompt"] = json!("  ");
    let (s, _): (_, ErrorBody) = app.json(Method::POST, "/api/playground", Some(empty)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Cancel/resume only where they apply; delete.
    let (s, _): (_, ErrorBody) = app.json(Method::POST, &format!("/api/experiments/{}/cancel", e.id), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _): (_, ErrorBody) = app.json(Method::POST, &format!("/api/experiments/{}/resume", e.id), None).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _, _) = app.send(Request::delete(format!("/api/experiments/{}", e.id)).body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!app.dir.path().join("data/experiments").join(&e.id).exists());
    let (s, _) = app.get(&format!("/api/runs/{}", combined.id)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_experiments_cancel_and_resume() {
    let app = App::new(|_| {});
    let a = app.dataset("sentiment.jsonl").await;
    let mut spec = experiment(&[&a.id], json!([{"strategy": "combined"}]));
    // Far more steps than the first can train between being seen running and being
    // cancelled, on any machine: both end cancelled, never done.
    spec["budget_tokens"] = json!(1_000_000);
    let (_, first): (_, Experiment) = app.json(Method::POST, "/api/experiments", Some(spec.clone())).await;
    let (_, second): (_, Experiment) = app.json(Method::POST, "/api/experiments", Some(spec)).await;
    // The second waits behind the first, which trains.
    let first = app.wait(&first.id, |x| x.runs.first().is_some_and(|r| r.step >= 1)).await;
    let (_, second): (_, Experiment) = app.json(Method::GET, &format!("/api/experiments/{}", second.id), None).await;
    assert_eq!((second.status, second.queue_position), (Status::Queued, Some(1)));
    let (s, c): (_, Experiment) = app.json(Method::POST, &format!("/api/experiments/{}/cancel", second.id), None).await;
    assert_eq!((s, c.status), (StatusCode::ACCEPTED, Status::Cancelled));
    // Cancel the running one: it stops within a step.
    let (s, _): (_, Experiment) = app.json(Method::POST, &format!("/api/experiments/{}/cancel", first.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let stopped = app.wait(&first.id, |x| x.status.is_final()).await;
    assert_eq!(stopped.status, Status::Cancelled);
    let run = &stopped.runs[0];
    assert!(run.step < run.total_steps, "stopped before its end: {run:?}");
    assert!(stopped.runs.iter().all(|r| r.status != Status::Running));
    // Running experiments cannot be deleted; cancelled ones resume.
    let (s, r): (_, Experiment) = app.json(Method::POST, &format!("/api/experiments/{}/resume", second.id), None).await;
    assert_eq!((s, r.status), (StatusCode::ACCEPTED, Status::Queued));
    let (s, _): (_, Experiment) = app.json(Method::POST, &format!("/api/experiments/{}/cancel", second.id), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_token_is_required_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("d"), dir.path().join("m"));
    cfg.bind = "0.0.0.0:0".parse().unwrap();
    let err = multitune_server::build(cfg.clone()).err().expect("no token, not loopback: refused");
    assert!(err.to_string().contains("access token"), "{err}");
    cfg.token = Some("s3cret".into());
    cfg.device = "cpu".into();
    let app = App { router: router(multitune_server::build(cfg).unwrap()), _state: App::new(|_| {})._state, dir };
    let (s, _) = app.get("/api/datasets").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app.get("/api/health").await;
    assert_eq!(s, StatusCode::OK);
    let ok = Request::get("/api/datasets").header(header::AUTHORIZATION, "Bearer s3cret").body(Body::empty()).unwrap();
    assert_eq!(app.send(ok).await.0, StatusCode::OK);
    let wrong =
        Request::get("/api/datasets").header(header::AUTHORIZATION, "Bearer s3cre7").body(Body::empty()).unwrap();
    assert_eq!(app.send(wrong).await.0, StatusCode::UNAUTHORIZED);
    let (s, _) = app.get("/api/datasets?token=s3cret").await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_tasks_are_imported_once() {
    let app = App::new(|_| {});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo");
    assert_eq!(multitune_server::routes::datasets::import_demo(&app._state, &dir).await.unwrap(), 8);
    assert_eq!(multitune_server::routes::datasets::import_demo(&app._state, &dir).await.unwrap(), 0);
    let (_, list): (_, Vec<Dataset>) = app.json(Method::GET, "/api/datasets", None).await;
    let mut names: Vec<&str> = list.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    assert_eq!(names[..2], ["arithmetic", "arithmetic_eval"]);
    assert_eq!(list.iter().find(|d| d.name == "topic_eval").unwrap().rows, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_files_with_single_page_fallback() {
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><title>UI</title>").unwrap();
    std::fs::write(dist.path().join("app.js"), "console.log(1)").unwrap();
    let path = dist.path().to_path_buf();
    let app = App::new(move |c| c.dist_dir = Some(path));
    let (s, b) = app.get("/").await;
    assert_eq!((s, String::from_utf8_lossy(&b).contains("<title>UI")), (StatusCode::OK, true));
    let (s, h, b) = app.send(Request::get("/app.js").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
    assert!(h[header::CONTENT_TYPE].to_str().unwrap().contains("javascript"));
    assert_eq!(b, b"console.log(1)");
    // Client-side routes get the app; unknown API routes stay JSON 404s.
    let (s, b) = app.get("/experiments/0123456789abcdef").await;
    assert_eq!((s, String::from_utf8_lossy(&b).contains("<title>UI")), (StatusCode::OK, true));
    let (s, b) = app.get("/api/nope").await;
    assert_eq!((s, error(&b).error.code.as_str()), (StatusCode::NOT_FOUND, "not_found"));
}

/// A page on another site must not drive or read the server: a foreign `Host` (DNS
/// rebinding) is refused on every route, the dashboard included; a foreign `Origin`,
/// `Referer` or a cross-site `Sec-Fetch-Site` is refused on writes; same-origin browser
/// requests and header-less CLI requests pass; every response carries the safety headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_cross_site_writes_are_refused() {
    let dist = tempfile::tempdir().unwrap();
    std::fs::write(dist.path().join("index.html"), "<!doctype html><title>UI</title>").unwrap();
    let path = dist.path().to_path_buf();
    let app = App::new(move |c| {
        c.dist_dir = Some(path);
        c.allowed_hosts = vec!["lab.example".into()];
    });
    let req = |method: Method, uri: &str, headers: &[(&str, &str)]| {
        let mut r = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(Body::empty()).unwrap()
    };
    for uri in ["/api/datasets", "/", "/experiments/x", "/api/experiments/0123456789abcdef/events", "/api/health"] {
        let (s, h, b) = app.send(req(Method::GET, uri, &[("host", "attacker.test:3000")])).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{uri}");
        let e = error(&b);
        assert_eq!(e.error.code, "forbidden_host");
        assert!(e.error.message.contains("--allowed-host attacker.test"), "{}", e.error.message);
        assert_eq!(h["x-content-type-options"], "nosniff");
    }
    for host in ["127.0.0.1:3000", "localhost:3000", "[::1]:3000", "lab.example"] {
        let (s, h, _) = app.send(req(Method::GET, "/api/datasets", &[("host", host)])).await;
        assert_eq!(s, StatusCode::OK, "{host}");
        assert_eq!(
            (&h["referrer-policy"], &h["x-frame-options"]),
            (&"no-referrer".parse().unwrap(), &"DENY".parse().unwrap())
        );
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
    let (s, h, b) = app.send(req(Method::GET, "/", &[("host", "localhost:3000")])).await;
    assert_eq!((s, String::from_utf8_lossy(&b).contains("<title>UI")), (StatusCode::OK, true));
    let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    // Writes: cross-site refused (before anything happens), same-origin and CLI pass.
    let own = ("host", "127.0.0.1:3000");
    for bad in [
        vec![own, ("origin", "http://attacker.test")],
        vec![own, ("origin", "http://127.0.0.1:8000")],
        vec![own, ("referer", "http://attacker.test/x")],
        vec![own, ("sec-fetch-site", "cross-site")],
    ] {
        let (s, _, b) = app.send(req(Method::POST, "/api/experiments/0123456789abcdef/cancel", &bad)).await;
        assert_eq!((s, error(&b).error.code.as_str()), (StatusCode::FORBIDDEN, "cross_site"), "{bad:?}");
        let (s, _, _) = app.send(req(Method::DELETE, "/api/datasets/0123456789abcdef", &bad)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{bad:?}");
    }
    for fine in [vec![own, ("origin", "http://127.0.0.1:3000"), ("sec-fetch-site", "same-origin")], vec![own], vec![]] {
        let (s, _, _) = app.send(req(Method::POST, "/api/experiments/0123456789abcdef/cancel", &fine)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "passes the guard and finds no experiment: {fine:?}");
    }
    let (s, _) = app.upload("sentiment.jsonl", &demo("sentiment.jsonl"), None).await;
    assert_eq!(s, StatusCode::CREATED, "a CLI upload without Origin");
}
