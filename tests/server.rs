use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multitune_api::{Dataset, Event, Experiment, Status, StrategyChoice};
use serde_json::json;

use crate::http::Server;
use crate::http::{demo_file, experiment_of, read_events, upload, wait_for, wait_for_event};

/// The step each training stage of experiment `id` started at, from its whole event
/// stream (a resumed stage starts at its checkpoint's step).
async fn train_starts(c: &reqwest::Client, s: &Server, id: &str) -> Vec<usize> {
    let events = read_events(c.get(s.url(&format!("/api/experiments/{id}/events"))).send().await.unwrap(), None).await;
    events
        .iter()
        .filter_map(|x| match &x.event {
            Event::TrainStarted { start_step, .. } => Some(*start_step),
            _ => None,
        })
        .collect()
}

/// Posts `spec` as a new experiment, which must be refused as a bad request: the
/// problems it names.
async fn refused(c: &reqwest::Client, s: &Server, spec: &serde_json::Value) -> Vec<String> {
    let r = c.post(s.url("/api/experiments")).json(spec).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    body["error"]["details"].as_array().unwrap().iter().filter_map(|d| d.as_str().map(String::from)).collect()
}

/// The whole journey over real HTTP: upload the demo tasks, run every strategy on the
/// tiny model, follow the events (dropping the connection half-way and resuming with
/// `Last-Event-ID`: no gap, no repeat), fetch the report, download an adapter and load
/// it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_train_follow_and_download_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let c = reqwest::Client::new();
    let mut ids = Vec::new();
    for t in multitune::data::demo::TASKS {
        let r = upload(&c, &s, &format!("{t}.jsonl"), demo_file(&format!("{t}.jsonl"))).await;
        assert_eq!(r.status(), 201);
        let d: Dataset = r.json().await.unwrap();
        assert_eq!(d.name, *t);
        ids.push(d.id);
    }
    let spec = json!({
        "name": "e2e", "model": "tiny",
        "tasks": ids.iter().map(|i| json!({"dataset": i})).collect::<Vec<_>>(),
        "strategies": StrategyChoice::all(),
        "budget_tokens": 2400,
        "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4, "bootstrap": 20}
    });
    // Data sizes that are no shares, or that leave a task too few examples: refused
    // before anything is queued, each problem naming the field.
    let mut bad = spec.clone();
    bad["hyper"]["data_fractions"] = json!([0.01, 0.5, 0.5, 0]);
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    for want in [
        "hyper.data_fractions: 0 is not a share of the training data (each must be in (0, 1])",
        "hyper.data_fractions: 0.5 is listed twice",
        "hyper.data_fractions: 0.01 leaves task `sentiment` 2 training examples of its 240 (at least 4 are needed)",
    ] {
        assert!(details.contains(&want), "{want} not in {details:?}");
    }
    // Searches over nothing, DoRA with merges, a LoRA+ ratio of 0: refused, each naming
    // its field; an unknown method is not a request at all.
    let mut bad = spec.clone();
    bad["strategies"] = json!([{"strategy": "combined"}, {"strategy": "separate", "merges": ["concat"]}]);
    bad["hyper"]["tune_merges"] = json!(true);
    bad["hyper"]["lora_plus"] = json!(0.0);
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    assert!(details.iter().any(|d| d.starts_with("hyper.tune_merges: no merge to tune")), "{details:?}");
    assert!(
        details.iter().any(|d| d.contains("lora_plus: the B factors' learning-rate ratio must be positive")),
        "{details:?}"
    );
    let mut bad = spec.clone();
    bad["hyper"]["method"] = json!("dora");
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    assert!(
        details.iter().any(|d| d.starts_with("strategies[3]: merging DoRA adapters is not defined")),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.starts_with("strategies[2]: merge-then-new")), "{details:?}");
    // Methods compared: at least two, each once, with `method` left out.
    bad["hyper"]["methods"] = json!(["lora", "dora", "lora"]);
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    assert_eq!(
        details,
        [
            "hyper.methods: lora is listed twice",
            "hyper.methods: every run trains with each of these, so hyper.method (dora) is unused: leave it out"
        ],
        "DoRA in a comparison of methods skips what it cannot merge: not refused"
    );
    // A PiSSA rank the model's layers cannot hold: refused at once (the model's shape
    // read when PiSSA is asked for).
    bad["hyper"]["methods"] = json!(["lora", "pissa"]);
    bad["hyper"]["method"] = json!("lora");
    bad["hyper"]["rank"] = json!(200);
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    assert!(details.iter().any(|d| d.starts_with("hyper.rank: rank 200 is larger than PiSSA allows")), "{details:?}");
    bad["hyper"]["rank"] = json!(8);
    bad["hyper"]["methods"] = json!([]);
    bad["hyper"]["method"] = json!("qlora");
    let r = c.post(s.url("/api/experiments")).json(&bad).send().await.unwrap();
    assert!(r.status().is_client_error());
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"]["message"].as_str().unwrap().contains("qlora"), "{body}");
    // A keep set that is also a task, or no dataset: refused, each naming the field.
    let mut bad = spec.clone();
    bad["keep"] = json!([ids[0], "no-such-dataset"]);
    let details = refused(&c, &s, &bad).await;
    let details: Vec<&str> = details.iter().map(String::as_str).collect();
    assert!(
        details.contains(&"keep[0]: `sentiment` is also a task; a keep set is scored, never trained on: take it out of one of the two"),
        "{details:?}"
    );
    assert!(details.iter().any(|d| d.starts_with("keep[1]: ") && d.contains("no-such-dataset")), "{details:?}");
    let listed: Vec<Experiment> = c.get(s.url("/api/experiments")).send().await.unwrap().json().await.unwrap();
    assert!(listed.is_empty(), "nothing was queued");
    let r = c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let e: Experiment = r.json().await.unwrap();
    // Follow, drop after 40 events, reconnect from the last id.
    let first =
        read_events(c.get(s.url(&format!("/api/experiments/{}/events", e.id))).send().await.unwrap(), Some(40)).await;
    assert_eq!(first.len(), 40);
    let last = first.last().unwrap().id;
    let rest = read_events(
        c.get(s.url(&format!("/api/experiments/{}/events", e.id)))
            .header("Last-Event-ID", last.to_string())
            .send()
            .await
            .unwrap(),
        None,
    )
    .await;
    let followed: Vec<i64> = first.iter().chain(&rest).map(|x| x.id).collect();
    assert!(followed.windows(2).all(|w| w[0] < w[1]), "ids only grow, no repeat");
    let done = match &rest.last().unwrap().event {
        Event::Status { status, .. } => *status,
        other => panic!("the stream ends with the final status, not {other:?}"),
    };
    assert_eq!(done, Status::Done, "{:?}", experiment_of(&c, &s, &e.id).await.error);
    let all = read_events(c.get(s.url(&format!("/api/experiments/{}/events", e.id))).send().await.unwrap(), None).await;
    assert_eq!(followed, all.iter().map(|x| x.id).collect::<Vec<_>>(), "reconnecting lost nothing");
    assert!(all.iter().any(|x| matches!(x.event, Event::Step { .. })));
    // A mixed run's steps carry each task's loss, named; other runs' carry none.
    for x in &all {
        if let Event::Step { run, task_losses, .. } = &x.event {
            let mixed = run.starts_with("combined") || run == "multi-head";
            assert_eq!(!task_losses.is_empty(), mixed, "{run}: {task_losses:?}");
            assert!(task_losses
                .iter()
                .all(|(t, l)| multitune::data::demo::TASKS.contains(&t.as_str()) && l.is_finite()));
        }
    }
    // The report.
    let report: serde_json::Value =
        c.get(s.url(&format!("/api/experiments/{}/report", e.id))).send().await.unwrap().json().await.unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1 + 3 + 1 + 5 + 1, "base, combined, 2 sequential, routed, 5 merges, multi-head");
    // Every run trained on the budget: at most it, and short of it by less than one
    // example per training (each ends on whole examples; four per-task trainings).
    let longest = crate::util::longest_demo_example(&multitune::data::demo::TASKS, 192);
    for r in runs.iter().skip(1) {
        let tokens = r["tokens"].as_u64().unwrap() as usize;
        let trainings = if matches!(r["strategy"].as_str(), Some("combined" | "multi_head")) { 1 } else { 4 };
        assert!(tokens <= 2400 && 2400 - tokens < trainings * longest, "{}: {tokens}", r["name"]);
    }
    // Download the combined run's adapter and load it back.
    let e = experiment_of(&c, &s, &e.id).await;
    let run = e.runs.iter().find(|r| r.name == "combined (proportional)").unwrap();
    let resp = c.get(s.url(&format!("/api/runs/{}/adapter", run.id))).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
    let bytes = resp.bytes().await.unwrap();
    let unpacked = dir.path().join("unpacked");
    zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap().extract(&unpacked).unwrap();
    let folder = std::fs::read_dir(&unpacked).unwrap().next().unwrap().unwrap().path();
    let (model, _) = multitune::model::tiny_model(0, &candle_core::Device::Cpu).unwrap();
    let downloaded = multitune::adapter::peft::load_adapter(&folder, &model.cfg, &candle_core::Device::Cpu).unwrap();
    let original = multitune::adapter::peft::load_adapter(
        &s.data.join("experiments").join(&e.id).join("out/adapters").join(folder.file_name().unwrap()),
        &model.cfg,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for ((na, a), (nb, b)) in downloaded.named_tensors().iter().zip(original.named_tensors()) {
        assert_eq!(na, &nb);
        assert_eq!(multitune::model::max_abs_diff(a, &b).unwrap(), 0.0, "{na}");
    }
    assert!(downloaded.num_parameters() > 0);
}

/// `kill -9` during the second run's training: on restart the experiment is interrupted,
/// resumes from its checkpoint (the first run restored from its record, announced
/// once) and finishes; the database is intact and no temporary file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_resumes_the_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = reqwest::Client::new();
    let mut s = Server::start(&data, &[]);
    let d: Dataset = upload(&c, &s, "sentiment.jsonl", demo_file("sentiment.jsonl")).await.json().await.unwrap();
    let spec = json!({
        "name": "crash", "model": "tiny", "tasks": [{"dataset": d.id}],
        "strategies": [{"strategy": "combined"}, {"strategy": "sequential"}],
        "budget_tokens": 30000,
        "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4, "bootstrap": 20, "checkpoint_every": 3}
    });
    let e: Experiment = c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap();
    // Killed at once after the second run's step 7 (past its step-6 checkpoint): the
    // events come as they happen, and the server is stopped before it is looked at, so
    // the check that the run had not ended yet holds at the kill.
    let mut second = None;
    wait_for_event(&c, &s, &e.id, |ev| match ev {
        Event::RunStarted { run, index: 1, .. } => {
            second = Some(run.clone());
            false
        }
        Event::Step { run, step, .. } => second.as_ref() == Some(run) && *step >= 7,
        _ => false,
    })
    .await;
    crate::util::signal(&s.child, libc::SIGSTOP);
    let record = data.join("experiments").join(&e.id).join("state/done-s0-r1.json");
    assert!(!record.exists(), "the second run ended before the server was killed: give it more steps");
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let s = Server::start(&data, &[]);
    let after = experiment_of(&c, &s, &e.id).await;
    assert_eq!(after.status, Status::Interrupted);
    assert!(after.runs.iter().all(|r| r.status != Status::Running));
    let r = c.post(s.url(&format!("/api/experiments/{}/resume", e.id))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let done = wait_for(&c, &s, &e.id, |x| x.status.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let starts = train_starts(&c, &s, &e.id).await;
    assert_eq!(starts[..2], [0, 0]);
    assert!(starts.len() == 3 && starts[2] >= 6, "the resumed training continued from a checkpoint: {starts:?}");
    let db = rusqlite::Connection::open(data.join("multitune.sqlite")).unwrap();
    let (first, second) = ("combined (proportional)", "sequential (continue)");
    for (kind, run, n) in
        [("run_started", first, 1), ("run_finished", first, 1), ("run_started", second, 2), ("run_finished", second, 1)]
    {
        let count: i64 = db
            .query_row(
                "SELECT count(*) FROM events WHERE experiment_id = ?1 AND kind = ?2 AND run = ?3",
                [&e.id, kind, run],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(count, n, "{kind} of {run}");
    }
    drop(db);
    let report: serde_json::Value =
        c.get(s.url(&format!("/api/experiments/{}/report", e.id))).send().await.unwrap().json().await.unwrap();
    // The resumed run trained its budget once (ending on whole examples, at most one
    // example short of it), not the steps before the kill again.
    let tokens = report["runs"][1]["tokens"].as_u64().unwrap() as usize;
    let longest = crate::util::longest_demo_example(&["sentiment"], 192);
    assert!(tokens <= 30000 && 30000 - tokens < longest, "{tokens}");
    drop(s);
    let db = rusqlite::Connection::open(data.join("multitune.sqlite")).unwrap();
    let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let mut stack = vec![data.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains(".tmp-") && !name.ends_with(".tmp"), "temporary file left: {}", p.display());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0);
    assert!(!data.join("experiments").join(&e.id).join("state").exists(), "checkpoints are removed when done");
}

const PAYLOADS: &[&str] = &[
    "..",
    "../",
    "../..",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2e%2e",
    "%2e%2e%2f",
    "%252e%252e%252f",
    "..%252f..%252fsecret.txt",
    "%252e%252e%252fsecret.txt",
    "..\\..\\secret.txt",
    "..%5c..%5csecret.txt",
    "%2e%2e%5c",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "etc/passwd%00",
    "%00",
    "0123456789abcdef%00",
    "0123456789abcdef%00.json",
    "%23",
    "0123456789abcdef%23x",
    ";",
    "%3b",
    "0123456789abcdef;rm",
    "0123456789abcdef%3brm",
    "..;/",
    "..%3b/secret.txt",
    "....//....//secret.txt",
    "..././secret.txt",
    ".%2e/secret.txt",
    "%2e./secret.txt",
    "~",
    "~root",
    "C:%5cWindows",
    "file:%2f%2f%2fetc%2fpasswd",
    "0123456789abcdef/../../secret.txt",
    "0123456789abcdef%2f..%2f..%2fsecret.txt",
    "%c0%ae%c0%ae%c0%af",
    "..%c0%afsecret.txt",
    "%e0%80%ae%e0%80%ae/",
    "%uff0e%uff0e%u2215",
    ".git%2fconfig",
    "multitune.sqlite",
    "../multitune.sqlite",
    "..%2fmultitune.sqlite",
    "%2e%2e%2fmultitune.sqlite",
    "datasets",
    "*",
    "%3f",
    "0123456789ABCDEF",
    "01234567-89abcdef",
    "'%20OR%20'1'='1",
    "1%20OR%201=1",
    "-1",
    "0",
    "99999999999999999999",
    "%2e",
];

/// Path-traversal payloads against every route that takes an id: always 400 or 404,
/// and nothing from outside the data folder is ever served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_payloads_are_refused() {
    assert!(PAYLOADS.len() >= 50);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "TOPSECRET").unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &[]);
    let c = reqwest::Client::new();
    // A finished experiment, so that chart names are checked against real files.
    let d: Dataset = upload(&c, &s, "topic.jsonl", demo_file("topic.jsonl")).await.json().await.unwrap();
    let spec = json!({
        "name": "t", "model": "tiny", "tasks": [{"dataset": d.id}], "strategies": [{"strategy": "combined"}],
        "budget_tokens": 500, "hyper": {"batch_size": 4, "max_tokens": 192, "eval_limit": 2, "bootstrap": 10}
    });
    let e: Experiment = c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap();
    wait_for(&c, &s, &e.id, |x| x.status.is_final()).await;
    let routes: &[(&str, &str)] = &[
        ("GET", "/api/datasets/{}"),
        ("DELETE", "/api/datasets/{}"),
        ("GET", "/api/experiments/{}"),
        ("DELETE", "/api/experiments/{}"),
        ("POST", "/api/experiments/{}/cancel"),
        ("POST", "/api/experiments/{}/resume"),
        ("GET", "/api/experiments/{}/report"),
        ("GET", "/api/experiments/{}/report.md"),
        ("GET", "/api/experiments/{}/charts"),
        ("GET", "/api/experiments/{}/events"),
        ("GET", "/api/experiments/{}/download"),
        ("GET", "/api/runs/{}"),
        ("GET", "/api/runs/{}/metrics"),
        ("GET", "/api/runs/{}/events"),
        ("GET", "/api/runs/{}/adapter"),
        ("GET", "/api/runs/{}/heads"),
        ("GET", "/api/runs/{}/merged"),
        ("GET", "/api/runs/{}/gguf"),
    ];
    let chart_route = format!("/api/experiments/{}/charts/{{}}", e.id);
    let mut checked = 0;
    for (method, route) in routes.iter().copied().chain(std::iter::once(("GET", chart_route.as_str()))) {
        for p in PAYLOADS {
            let target = route.replace("{}", p);
            let (code, text) = s.raw(method, &target);
            assert!(code == 400 || code == 404, "{method} {target} → {code}\n{text}");
            assert!(
                !text.contains("TOPSECRET") && !text.contains("root:x:") && !text.contains("SQLite format"),
                "{target}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 50 * 19);
    // The server is still there, and its data is intact.
    let (code, _) = s.raw("GET", &format!("/api/experiments/{}", e.id));
    assert_eq!(code, 200);
    let (code, _) = s.raw("GET", &format!("/api/datasets/{}", d.id));
    assert_eq!(code, 200);
}

/// Malformed and oversize uploads over HTTP: 4xx with the reason; the server keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--max-upload-mib", "1"]);
    let c = reqwest::Client::new();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/malformed");
    let manifest = std::fs::read_to_string(fixtures.join("MANIFEST.tsv")).unwrap();
    let mut n = 0;
    // Every seventh fixture, and every JSON array and Parquet file.
    let rows = manifest.lines().skip(1).enumerate();
    for (_, row) in rows.filter(|(i, r)| i % 7 == 0 || r.contains(".parquet\t") || r.contains(".json\t")) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, line, phrase) = (cols[0], cols[1], cols[2]);
        let r = upload(&c, &s, file, std::fs::read(fixtures.join(file)).unwrap()).await;
        let status = r.status().as_u16();
        let body: multitune_api::ErrorBody = r.json().await.unwrap();
        assert!(status == 422 || status == 413, "{file}: {status}");
        let all = format!("{} {}", body.error.message, body.error.details.join(" | "));
        assert!(all.contains(phrase), "{file}: `{phrase}` not in {all}");
        if line != "0" && status == 422 {
            let place = if file.ends_with(".parquet") { "row" } else { "line" };
            assert!(all.contains(&format!("{place} {line}")), "{file}: {place} {line} not in {all}");
        }
        n += 1;
    }
    assert!(n >= 10);
    let r = upload(&c, &s, "big.jsonl", vec![b'{'; 2 << 20]).await;
    assert_eq!(r.status(), 413);
    let body: multitune_api::ErrorBody = r.json().await.unwrap();
    assert!(body.error.message.contains("limit"), "{}", body.error.message);
    // (A fresh client: the refused upload's connection was closed mid-body.)
    let c = reqwest::Client::new();
    let health = c.get(s.url("/api/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let list: Vec<Dataset> = c.get(s.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    assert!(list.is_empty(), "nothing half-stored: {list:?}");
    // Their repaired twins are taken: a JSON array, Parquet written by pyarrow (zstd,
    // nested chat lists) and by Hugging Face `datasets`.
    let valid = fixtures.parent().unwrap().join("valid");
    for (file, format) in [
        ("json_array_01.json", "alpaca"),
        ("parquet_chat_00.parquet", "chat"),
        ("parquet_hf_00.parquet", "sharegpt"),
        ("parquet_column_type_01.parquet", "text/label"),
    ] {
        let r = upload(&c, &s, file, std::fs::read(valid.join(file)).unwrap()).await;
        assert_eq!(r.status(), 201, "{file}");
        let d: Dataset = r.json().await.unwrap();
        assert_eq!((d.format.as_str(), d.rows), (format, 10), "{file}");
    }
}

/// A run on the default model downloads as GGUF for llama.cpp and Ollama: the merged
/// model (q8_0 here), the LoRA adapter and the Modelfiles in one zip; the merged model
/// reads back with our GGUF loader and gives the merged model's next token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_the_default_model_downloads_as_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let c = reqwest::Client::new();
    let d: Dataset = upload(&c, &s, "sentiment.jsonl", demo_file("sentiment.jsonl")).await.json().await.unwrap();
    let spec = json!({
        "name": "gguf", "model": "default", "tasks": [{"dataset": d.id}], "strategies": [{"strategy": "combined"}],
        "budget_tokens": 300, "hyper": {"learning_rate": 0.001, "batch_size": 2, "max_tokens": 96, "eval_limit": 2, "bootstrap": 0}
    });
    let r = c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let e: Experiment = r.json().await.unwrap();
    let done = wait_for(&c, &s, &e.id, |x| x.status.is_final()).await;
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let run = done.runs.iter().find(|r| r.name.starts_with("combined")).unwrap();
    let r = c.get(s.url(&format!("/api/runs/{}/gguf?type=q4", run.id))).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = c.get(s.url(&format!("/api/runs/{}/gguf?type=q8_0", run.id))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let bytes = r.bytes().await.unwrap();
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = (0..z.len()).map(|i| z.by_index(i).unwrap().name().to_string()).collect();
    names.sort();
    let folder = names[0].split('/').next().unwrap().to_string();
    let want: Vec<String> = ["Modelfile", "Modelfile.adapter", "adapter.gguf", "model-q8_0.gguf"]
        .iter()
        .map(|f| format!("{folder}/{f}"))
        .collect();
    assert_eq!(names, want);
    let out = dir.path().join("unzipped");
    z.extract(&out).unwrap();
    let modelfile = std::fs::read_to_string(out.join(&folder).join("Modelfile")).unwrap();
    assert!(modelfile.contains("FROM ./model-q8_0.gguf") && modelfile.contains("TEMPLATE"), "{modelfile}");
    let (g, tok) = multitune::model::load_gguf(
        &out.join(&folder).join("model-q8_0.gguf"),
        multitune::model::config::RopeLayout::HalfRotation,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    assert_eq!(g.cfg.num_hidden_layers, 30);
    assert!(tok.is_chat());
}

/// Started as `make run` starts it, the server wants a token by default (kept in the data
/// folder, private, the same after a restart) and prints the dashboard's URL with it;
/// the dashboard's files load without it, the API not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_by_default_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = {
        let s = Server::start_with_token(&data, &[]);
        let token = s.token.clone().expect("the dashboard URL carries a token");
        assert_eq!(std::fs::read_to_string(data.join("token")).unwrap().trim(), token);
        let c = reqwest::Client::new();
        assert_eq!(c.get(s.url("/api/datasets")).send().await.unwrap().status(), 401);
        let r = c.get(s.url("/api/datasets")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = c.get(s.url(&format!("/api/datasets?token={token}"))).send().await.unwrap();
        assert_eq!(r.status(), 200, "event streams and downloads carry it in the query");
        assert_eq!(c.get(s.url("/")).send().await.unwrap().status(), 200, "the dashboard page itself");
        token
    };
    let s = Server::start_with_token(&data, &[]);
    assert_eq!(s.token.as_deref(), Some(token.as_str()), "reused after a restart");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(data.join("token")).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

/// The trust boundary against the real process: a foreign `Host` is refused on every
/// kind of route (API, event stream, dashboard), a cross-site write is refused, and
/// same-origin or header-less requests pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_cross_site_writes_are_refused_by_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    let own = format!("127.0.0.1:{}", s.addr.port());
    let own_origin = format!("http://{own}");
    for target in ["/api/datasets", "/api/experiments/0123456789abcdef/events", "/", "/datasets"] {
        let (code, text) = s.raw_with("GET", target, &[("Host", "attacker.test")]);
        assert_eq!(code, 403, "{target}: {text}");
        assert!(text.contains("forbidden_host") && text.contains("--allowed-host"), "{text}");
    }
    let (code, _) = s.raw_with("GET", "/api/datasets", &[("Host", &own)]);
    assert_eq!(code, 200);
    let cancel = "/api/experiments/0123456789abcdef/cancel";
    for bad in [
        vec![("Host", own.as_str()), ("Origin", "http://attacker.test")],
        vec![("Host", own.as_str()), ("Sec-Fetch-Site", "cross-site")],
        vec![("Host", own.as_str()), ("Referer", "http://127.0.0.1:1/page")],
    ] {
        let (code, text) = s.raw_with("POST", cancel, &bad);
        assert_eq!(code, 403, "{bad:?}: {text}");
        assert!(text.contains("cross_site"), "{text}");
        let (code, _) = s.raw_with("DELETE", "/api/datasets/0123456789abcdef", &bad);
        assert_eq!(code, 403, "{bad:?}");
    }
    for fine in [vec![("Host", own.as_str()), ("Origin", own_origin.as_str())], vec![("Host", own.as_str())]] {
        let (code, _) = s.raw_with("POST", cancel, &fine);
        assert_eq!(code, 404, "passes the guard, finds no experiment: {fine:?}");
    }
}

/// Slow clients: fifty connections that never finish their request head do not keep
/// others waiting, and each is dropped once the header timeout passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_dropped_and_block_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_secs(2);
    let s = Server::start(&dir.path().join("data"), &["--header-timeout-s", "2"]);
    let opened = Instant::now();
    let mut slow: Vec<std::net::TcpStream> = (0..50)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(s.addr).unwrap();
            write!(c, "GET /api/health HTTP/1.1\r\nHost: loc").unwrap();
            if i % 2 == 0 {
                write!(c, "alh").unwrap(); // one more byte-dribble
            }
            c
        })
        .collect();
    let r = reqwest::get(s.url("/api/health")).await.unwrap();
    assert_eq!(r.status(), 200);
    // Answered while every slow client still holds its connection, so no one waited for
    // them to be dropped. (Any machine: a health check takes milliseconds, the header
    // timeout is 2 s.)
    for c in &slow {
        c.set_nonblocking(true).unwrap();
        let e =
            (&*c).read(&mut [0u8; 16]).expect_err("a slow client was dropped before an ordinary request was answered");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
        c.set_nonblocking(false).unwrap();
    }
    for c in &mut slow {
        // Waits for the server to drop it; the read timeout only catches one that never does.
        c.set_read_timeout(Some(crate::util::HANG)).unwrap();
        let mut buf = Vec::new();
        if let Err(e) = c.read_to_end(&mut buf) {
            let kept = matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut);
            assert!(!kept, "a slow client was kept open");
        }
        assert!(opened.elapsed() >= timeout, "dropped before the header timeout");
        let text = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    }
    let r = reqwest::get(s.url("/api/health")).await.unwrap();
    assert_eq!(r.status(), 200, "the server keeps serving");
}

/// An upload that stalls mid-body is dropped after the idle timeout with 408, leaves no
/// partial file, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--upload-idle-timeout-s", "1"]);
    let t0 = Instant::now();
    let mut c = std::net::TcpStream::connect(s.addr).unwrap();
    let head = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n{\"prompt\":\"a\",";
    write!(
        c,
        "POST /api/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=B\r\n\
         Content-Length: 100000\r\n\r\n{head}"
    )
    .unwrap();
    // Waits for the server's answer; the read timeout only catches a server that never drops it.
    c.set_read_timeout(Some(crate::util::HANG)).unwrap();
    let mut buf = [0u8; 4096];
    let n = c.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("the upload stalled"), "{text}");
    assert!(t0.elapsed() >= Duration::from_secs(1), "dropped before the idle timeout: {:?}", t0.elapsed());
    let left: Vec<_> = std::fs::read_dir(data.join("tmp")).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "partial files left: {left:?}");
    let r = reqwest::get(s.url("/api/datasets")).await.unwrap();
    assert_eq!(r.status(), 200, "the server keeps serving");
}

/// The disk fills up during training and during an upload: training stops (interrupted,
/// saying why) with its last checkpoint intact; the upload and a resume are refused with
/// 507 naming the full disk and leave nothing behind; the server keeps serving; once
/// space is back the experiment resumes from its checkpoint; the database is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_training_resumably_and_refuses_uploads() {
    let disk = crate::util::SmallDisk::mount(32);
    let data = disk.path.join("data");
    let mut s = Server::start(&data, &[]);
    let c = reqwest::Client::new();
    assert!(data.join("reserve").exists(), "the server holds a reserve for the disk-full record");
    let d: Dataset = upload(&c, &s, "sentiment.jsonl", demo_file("sentiment.jsonl")).await.json().await.unwrap();
    let spec = json!({
        "name": "full", "model": "tiny", "tasks": [{"dataset": d.id}], "strategies": [{"strategy": "combined"}],
        "budget_tokens": 1000000,
        "hyper": {"batch_size": 4, "max_tokens": 192, "eval_limit": 2, "bootstrap": 10, "checkpoint_every": 2}
    });
    let e: Experiment = c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap();
    wait_for(&c, &s, &e.id, |x| x.runs.first().is_some_and(|r| r.step >= 5)).await;
    let filled = disk.fill("filler-1");
    let stopped = wait_for(&c, &s, &e.id, |x| x.status.is_final()).await;
    assert_eq!(stopped.status, Status::Interrupted, "{:?}", stopped.error);
    let why = stopped.error.clone().unwrap_or_default();
    assert!(why.contains("disk") && why.contains("full") && why.contains("resume"), "{why}");
    // The disk stays full: take what releasing the reserve gave back, too.
    disk.fill("filler-2");
    let big: String = (0..40_000).map(|i| format!("{{\"prompt\": \"p{i}\", \"completion\": \"c{i}\"}}\n")).collect();
    let r = upload(&c, &s, "big.jsonl", big.into_bytes()).await;
    assert_eq!(r.status(), 507);
    let body: multitune_api::ErrorBody = r.json().await.unwrap();
    assert_eq!(body.error.code, "disk_full");
    assert!(body.error.message.contains("full"), "{}", body.error.message);
    let c = reqwest::Client::new(); // (the refused upload's connection may have closed mid-body)
    assert_eq!(std::fs::read_dir(data.join("tmp")).unwrap().count(), 0, "no partial upload left");
    let list: Vec<Dataset> = c.get(s.url("/api/datasets")).send().await.unwrap().json().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(c.get(s.url(&format!("/api/experiments/{}", e.id))).send().await.unwrap().status(), 200);
    let resume = s.url(&format!("/api/experiments/{}/resume", e.id));
    let r = c.post(&resume).send().await.unwrap();
    assert_eq!(r.status(), 507, "resuming onto a full disk is refused");
    let ckpts: Vec<PathBuf> = crate::util::walk(&data.join("experiments").join(&e.id).join("state"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    assert!(!ckpts.is_empty(), "the last checkpoint is still there");
    // Space is back.
    std::fs::remove_file(disk.path.join("filler-1")).unwrap();
    std::fs::remove_file(disk.path.join("filler-2")).unwrap();
    let r = c.post(&resume).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let resumed = wait_for(&c, &s, &e.id, |x| {
        x.status == Status::Running && x.runs.first().is_some_and(|r| r.status == Status::Running && r.step >= 6)
    })
    .await;
    assert!(resumed.error.is_none());
    c.post(s.url(&format!("/api/experiments/{}/cancel", e.id))).send().await.unwrap();
    wait_for(&c, &s, &e.id, |x| x.status.is_final()).await;
    let starts = train_starts(&c, &s, &e.id).await;
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts[1] >= 4 && starts[1].is_multiple_of(2), "resumed from a checkpoint: {starts:?}");
    println!(
        "disk full: filled {:.1} MiB; training stopped, resumed from step {}",
        filled as f64 / 1048576.0,
        starts[1]
    );
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let db = rusqlite::Connection::open(data.join("multitune.sqlite")).unwrap();
    let ok: String = db.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let left: Vec<PathBuf> =
        crate::util::walk(&data).into_iter().filter(|p| p.to_string_lossy().ends_with(".tmp")).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
