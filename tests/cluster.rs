//! The distributed mode on a real PostgreSQL (a private cluster, see `postgres.rs`):
//! the queue's leases, heartbeats, fencing and attempts; then the server and four
//! `multitune worker` processes on the tiny model, with a worker killed, a worker
//! stopped until its job is taken over, and the server killed and started again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use multitune_api::{Dataset, Experiment, Status};
use multitune_cluster::queue::{Queue, MAX_ATTEMPTS};
use serde_json::json;

use crate::http::{demo_file, experiment_of, upload, wait_for, Server};
use crate::pg;
use crate::util::HANG;

fn one_job(q: &mut Queue, experiment: &str, max_attempts: i32) {
    assert_eq!(q.enqueue(experiment, &[("base".into(), "{}".into())], max_attempts).unwrap(), 1);
}

#[test]
fn a_job_is_leased_once_and_a_silent_workers_writes_are_refused() {
    let url = pg::shared().database();
    let mut w1 = Queue::connect(&url).unwrap();
    let mut w2 = Queue::connect(&url).unwrap();
    one_job(&mut w1, "e1", MAX_ATTEMPTS);
    // Enqueueing again (a server started again) adds nothing.
    assert_eq!(w1.enqueue("e1", &[("base".into(), "{}".into())], MAX_ATTEMPTS).unwrap(), 0);
    // A lease's length is the taker's: a job is taken over once its heartbeat is older than
    // the `lease` the taker passes. So "held" is checked with a lease no machine's pause
    // between two statements reaches, and "silent" after sleeping longer than the lease
    // passed (a sleep lasts at least that long on any machine).
    let lease = Duration::from_millis(800);
    let a1 = w1.lease("w1", lease).unwrap().expect("a queued job");
    assert_eq!((a1.attempt, a1.part.as_str(), a1.checkpoint.as_deref()), (1, "base", None));
    assert!(w2.lease("w2", HANG).unwrap().is_none(), "a job held by a live worker is not leased again");
    assert!(w1.push_event(&a1, "w1", "{\"kind\":\"x\"}").unwrap());
    assert!(w1.set_checkpoint(&a1, "experiments/e1/jobs/base/attempt-1/checkpoint-3").unwrap());
    assert!(w1.heartbeat(&a1, "w1").unwrap());
    // w1 goes silent past the lease: w2 takes the job over as attempt 2, from w1's checkpoint.
    std::thread::sleep(lease + Duration::from_millis(300));
    let a2 = w2.lease("w2", lease).unwrap().expect("the silent worker's job");
    assert_eq!(a2.attempt, 2);
    assert_eq!(a2.checkpoint.as_deref(), Some("experiments/e1/jobs/base/attempt-1/checkpoint-3"));
    // Every late write of attempt 1 is refused and changes nothing.
    assert!(!w1.heartbeat(&a1, "w1").unwrap());
    assert!(!w1.push_event(&a1, "w1", "{\"kind\":\"late\"}").unwrap());
    assert!(!w1.set_checkpoint(&a1, "late").unwrap());
    assert!(!w1.finish(&a1, "w1", "late-result", &["{\"kind\":\"run_finished\"}".into()]).unwrap());
    assert!(!w1.fail(&a1, "late failure").unwrap());
    let events = w1.events(10).unwrap();
    assert_eq!(events.iter().map(|e| (e.attempt, e.data.as_str())).collect::<Vec<_>>(), [(1, "{\"kind\":\"x\"}")]);
    // The job finishes once, with attempt 2's result.
    let closing = ["{\"kind\":\"run_finished\"}".to_string()];
    assert!(w2.finish(&a2, "w2", "experiments/e1/jobs/base/attempt-2/result", &closing).unwrap());
    assert!(!w2.finish(&a2, "w2", "again", &closing).unwrap(), "a job finishes exactly once");
    let jobs = w1.jobs("e1").unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].status.as_str(), jobs[0].attempt), ("done", 2));
    assert_eq!(jobs[0].result.as_deref(), Some("experiments/e1/jobs/base/attempt-2/result"));
    assert_eq!(jobs[0].worker.as_deref(), Some("w2"));
    // The finishing attempt's closing event came with its finish, once; the late
    // finish of attempt 1 recorded none.
    let events = w1.events(10).unwrap();
    assert_eq!(
        events.iter().map(|e| (e.attempt, e.worker.as_str(), e.data.as_str())).collect::<Vec<_>>(),
        [(1, "w1", "{\"kind\":\"x\"}"), (2, "w2", "{\"kind\":\"run_finished\"}")]
    );
    // The server takes the events, then the queue forgets them.
    w1.forget_events(&events.iter().map(|e| e.id).collect::<Vec<_>>()).unwrap();
    assert!(w1.events(10).unwrap().is_empty());
}

#[test]
fn a_job_whose_workers_keep_dying_is_given_up_with_the_reason() {
    let url = pg::shared().database();
    let mut q = Queue::connect(&url).unwrap();
    one_job(&mut q, "e2", 2);
    // Each sleep outlasts the lease passed after it (see the test above): the worker is
    // silent on any machine.
    let lease = Duration::from_millis(300);
    let a1 = q.lease("w1", lease).unwrap().unwrap();
    std::thread::sleep(lease * 2);
    let a2 = q.lease("w2", lease).unwrap().unwrap();
    assert_eq!((a1.attempt, a2.attempt), (1, 2));
    std::thread::sleep(lease * 2);
    assert!(q.lease("w3", lease).unwrap().is_none(), "no third attempt of two");
    assert_eq!(q.give_up_silent(lease).unwrap(), [a1.job]);
    let job = &q.jobs("e2").unwrap()[0];
    assert_eq!(job.status, "failed");
    let why = job.error.as_deref().unwrap();
    assert!(why.contains("worker w2 stopped sending heartbeats during attempt 2 of 2"), "{why}");
    // Resumed: more attempts, numbered on from the last (fencing depends on it).
    assert_eq!(q.retry("e2", 3).unwrap(), 1);
    let a3 = q.lease("w3", lease).unwrap().unwrap();
    assert_eq!(a3.attempt, 3);
    assert!(!q.finish(&a2, "w2", "late", &[]).unwrap());
    // Cancelled: the worker's next heartbeat says so.
    assert_eq!(q.cancel("e2").unwrap(), 1);
    assert!(!q.heartbeat(&a3, "w3").unwrap());
}

#[test]
fn a_newer_queue_schema_is_refused() {
    let url = pg::shared().database();
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    drop(Queue::connect(&url).unwrap());
    c.batch_execute("UPDATE multitune_schema SET version = version + 1").unwrap();
    let e = Queue::connect(&url).err().unwrap().to_string();
    assert!(e.contains("newer than this Multitune understands"), "{e}");
    let e = Queue::connect("postgres://postgres@127.0.0.1:1/x").err().unwrap().to_string();
    assert!(e.contains("connecting to the queue at postgres://postgres@127.0.0.1:1/x"), "{e}");
}

/// A `multitune worker` process whose log lines are kept.
struct Worker {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(name: &str, queue: &str, artifacts: &str, work: &Path) -> Self {
        Self::start_with_env(name, queue, artifacts, work, &[])
    }

    fn start_with_env(name: &str, queue: &str, artifacts: &str, work: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(crate::util::bin())
            .envs(env.iter().copied())
            .args(["worker", "--device", "cpu", "--heartbeat-s", "0.3", "--lease-s", "2", "--name", name])
            .args(["--queue", queue, "--artifacts", artifacts, "--work-dir"])
            .arg(work.join(name))
            .arg("--models-dir")
            .arg(crate::util::models_dir())
            .env("MULTITUNE_BLAS", "gemm")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (lines, err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(l);
            }
        });
        Self { name: name.into(), child, log }
    }

    fn signal(&self, sig: i32) {
        crate::util::signal(&self.child, sig);
    }

    /// Whether one line of its log says all of `what`.
    fn said(&self, what: &[&str]) -> bool {
        self.log.lock().unwrap().iter().any(|l| what.iter().all(|w| l.contains(w)))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(job, part, worker, attempt, status, has a checkpoint)`.
type JobRow = (i64, String, Option<String>, i32, String, bool);

/// `(id, run, kind, worker, attempt, data)` of an event the server recorded.
type EventRow = (i64, Option<String>, String, Option<String>, Option<i64>, String);

/// Every job, oldest first.
fn jobs_in(pg: &mut postgres::Client) -> Vec<JobRow> {
    pg.query("SELECT id, part, worker, attempt, status, checkpoint IS NOT NULL FROM jobs ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < HANG, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir`, by its path below it.
fn files_below(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path().strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Waits for a job in its first attempt, with a checkpoint, held by one of `workers` not
/// named in `skip`; stops that worker (SIGSTOP) and checks, while it is stopped, that it
/// still holds the job running and is not inside a transaction on the job's row (the
/// row lock is free). Returns `(job, part, worker)` with the worker stopped. A worker
/// caught a moment too late (its job finished, or finishing) is let go on and the wait
/// starts again: what it is then doing is decided before the test acts, on any machine.
fn stop_a_training_worker<'w>(
    q: &mut postgres::Client,
    workers: &'w [Worker],
    skip: &[&str],
) -> (i64, String, &'w Worker) {
    loop {
        let (job, part, name) = poll("a worker training after a checkpoint", || {
            jobs_in(q).into_iter().find_map(|j| {
                let w = j.2.filter(|w| !skip.contains(&w.as_str()))?;
                (j.4 == "running" && j.5 && j.3 == 1).then_some((j.0, j.1, w))
            })
        });
        let w = workers.iter().find(|w| w.name == name).unwrap();
        w.signal(libc::SIGSTOP);
        let mut tx = q.transaction().unwrap();
        let held = tx
            .query_opt(
                "SELECT id FROM jobs WHERE id = $1 AND worker = $2 AND attempt = 1 AND status = 'running'
                 AND checkpoint IS NOT NULL FOR UPDATE NOWAIT",
                &[&job, &name],
            )
            .map(|row| row.is_some());
        drop(tx); // rolled back: the lock, if taken, is released at once
        if held.unwrap_or(false) {
            return (job, part, w);
        }
        w.signal(libc::SIGCONT);
    }
}

/// Server + four workers, six jobs: a worker killed after a checkpoint, another stopped
/// until its job is taken over and then continued, the server killed and started again.
/// Every run finishes exactly once, the killed and the stopped jobs continue from their
/// checkpoints as attempt 2, the late writes are refused, and every adapter is bit for
/// bit what an uninterrupted comparison with the same seed trains.
#[test]
fn workers_killed_or_stalled_and_a_killed_server_lose_nothing() {
    // Blocking PostgreSQL calls here, HTTP through a runtime of its own.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = pg::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let artifacts = format!("file://{}", dir.path().join("artifacts").display());
    let flags = ["--queue", &url, "--artifacts", &artifacts, "--heartbeat-s", "0.3", "--lease-s", "2"];
    let c = reqwest::Client::new();
    let mut s = Server::start(&data, &flags);
    let workers: Vec<Worker> = (1..=4).map(|i| Worker::start(&format!("w{i}"), &url, &artifacts, dir.path())).collect();
    let mut ids = Vec::new();
    for t in ["sentiment", "topic"] {
        let d: Dataset = rt.block_on(async {
            upload(&c, &s, &format!("{t}.jsonl"), demo_file(&format!("{t}.jsonl"))).await.json().await.unwrap()
        });
        ids.push(d.id);
    }
    let spec = json!({
        "name": "cluster", "model": "tiny",
        "tasks": ids.iter().map(|i| json!({"dataset": i})).collect::<Vec<_>>(),
        "strategies": [
            {"strategy": "combined"}, {"strategy": "sequential"}, {"strategy": "sequential", "variant": "merge_then_new"},
            {"strategy": "separate", "merges": []}, {"strategy": "multi_head"}
        ],
        "budget_tokens": 24000,
        "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4, "bootstrap": 20, "checkpoint_every": 2}
    });
    let e: Experiment = rt
        .block_on(async { c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap() });
    let mut q = postgres::Client::connect(&url, postgres::NoTls).unwrap();

    // Kill -9 a worker while it trains, after a checkpoint; another takes its job over as
    // attempt 2. Caught stopped (see `stop_a_training_worker`), so the job cannot finish
    // between the look and the kill, whatever the machine's speed.
    let (killed_job, killed_part, killed) = stop_a_training_worker(&mut q, &workers, &[]);
    killed.signal(libc::SIGKILL);
    let t_kill = Instant::now();
    let taker = poll("the killed worker's job leased again", || {
        jobs_in(&mut q).into_iter().find(|j| j.0 == killed_job && j.3 == 2 && j.4 == "running").map(|j| j.2.unwrap())
    });
    // How soon depends on when a worker is free to take it (they all train), so it is only
    // printed; `figures` measures redelivery with an idle worker.
    eprintln!(
        "job {killed_job}: worker {} killed, leased again by {taker} after {:.1?}",
        killed.name,
        t_kill.elapsed()
    );

    // Stop another worker (SIGSTOP) while it trains after a checkpoint, until the job is
    // taken over; then let it go on: what it writes late must be refused.
    let (stalled_job, stalled_part, stalled) = stop_a_training_worker(&mut q, &workers, &[&killed.name]);
    poll("the stopped worker's job leased again", || {
        jobs_in(&mut q).into_iter().find(|j| j.0 == stalled_job && j.3 == 2).map(|_| ())
    });
    stalled.signal(libc::SIGCONT);
    poll("the stalled worker dropping its attempt", || {
        stalled.said(&[&format!("job {stalled_job} ("), "attempt 1", "lease was lost"]).then_some(())
    });

    // Kill the server mid-comparison and start it again on the same folder.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = Server::start(&data, &flags);
    let done = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let trained: Vec<_> = done.runs.iter().filter(|r| r.index < multitune_api::REPORT_ONLY_RUN_INDEX).collect();
    assert_eq!(trained.len(), 5, "{:?}", done.runs);
    assert!(trained.iter().all(|r| r.status == Status::Done && r.worker.is_some()), "{trained:?}");
    let jobs = jobs_in(&mut q);
    assert_eq!(jobs.len(), 6);
    assert!(jobs.iter().all(|j| j.4 == "done"), "{jobs:?}");
    assert_eq!(jobs.iter().find(|j| j.0 == killed_job).unwrap().3, 2);
    assert_eq!(jobs.iter().find(|j| j.0 == stalled_job).unwrap().3, 2);

    // What the server recorded: each run finished once; the killed job's attempt 2
    // continued from a checkpoint (start step > 0); nothing of the stalled worker's
    // attempt 1 after attempt 2 began.
    let db = rusqlite::Connection::open(data.join("multitune.sqlite")).unwrap();
    let rows: Vec<EventRow> = {
        let mut st = db
            .prepare("SELECT id, run, kind, worker, attempt, data FROM events WHERE experiment_id = ?1 ORDER BY id")
            .unwrap();
        st.query_map([&e.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    for r in &trained {
        let finished = rows.iter().filter(|x| x.1.as_deref() == Some(&r.name) && x.2 == "run_finished").count();
        assert_eq!(finished, 1, "run {} finished {finished} times", r.name);
    }
    // A job's part is one strategy, whose (first seed's) run has its index.
    let run_of = |part: &str| -> String {
        let Some(multitune::strategy::Part::Strategy(i)) = multitune::strategy::Part::parse(part) else {
            panic!("a job that trains is a strategy's: {part}")
        };
        trained.iter().find(|r| r.index == i).unwrap_or_else(|| panic!("no run {i}: {trained:?}")).name.clone()
    };
    let killed_run = run_of(&killed_part);
    let resumed_from: Vec<u64> = rows
        .iter()
        .filter(|x| x.1.as_deref() == Some(&killed_run) && x.2 == "train_started" && x.4 == Some(2))
        .map(|x| serde_json::from_str::<serde_json::Value>(&x.5).unwrap()["start_step"].as_u64().unwrap())
        .collect();
    assert!(resumed_from.first().is_some_and(|&s| s > 0), "attempt 2 of {killed_run} started at {resumed_from:?}");
    let stalled_run = run_of(&stalled_part);
    let last_of_1 = rows.iter().filter(|x| x.1.as_deref() == Some(&stalled_run) && x.4 == Some(1)).map(|x| x.0).max();
    let first_of_2 = rows.iter().filter(|x| x.1.as_deref() == Some(&stalled_run) && x.4 == Some(2)).map(|x| x.0).min();
    assert!(last_of_1 < first_of_2, "a late write of attempt 1 was recorded: {last_of_1:?} vs {first_of_2:?}");
    assert_eq!(rt.block_on(experiment_of(&c, &s, &e.id)).status, Status::Done);

    // The same comparison without interruptions trains the same adapters, bit for bit.
    let again: Experiment = rt
        .block_on(async { c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap() });
    let done2 = rt.block_on(wait_for(&c, &s, &again.id, |x| x.status.is_final()));
    assert_eq!(done2.status, Status::Done, "{:?}", done2.error);
    let adapters = |id: &str| files_below(&data.join("experiments").join(id).join("out/adapters"));
    let (a, b) = (adapters(&e.id), adapters(&again.id));
    assert!(!a.is_empty());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(b[k] == *v, "{} differs from the uninterrupted run's", k.display());
    }
    drop(workers);
}

/// Uploads the demo sentiment task and submits a comparison of `strategies` on it (the
/// tiny model, 2,400 tokens, 4 held-out examples); `hyper` adds to those settings.
fn submit_on_sentiment(
    rt: &tokio::runtime::Runtime,
    c: &reqwest::Client,
    s: &Server,
    name: &str,
    strategies: serde_json::Value,
    hyper: serde_json::Value,
) -> Experiment {
    let d: Dataset = rt
        .block_on(async { upload(c, s, "sentiment.jsonl", demo_file("sentiment.jsonl")).await.json().await.unwrap() });
    let mut h = json!({"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 4});
    h.as_object_mut().unwrap().extend(hyper.as_object().unwrap().clone());
    let spec = json!({
        "name": name, "model": "tiny", "tasks": [{"dataset": d.id}], "strategies": strategies,
        "budget_tokens": 2400, "hyper": h
    });
    rt.block_on(async { c.post(s.url("/api/experiments")).json(&spec).send().await.unwrap().json().await.unwrap() })
}

/// A run says it finished only with its job's finish: an attempt that trains and scores
/// its run but cannot store the result (a file where its result folder goes) fails its
/// job without reporting the run finished; resumed, attempt 2 finishes it, once.
#[test]
fn a_run_is_reported_finished_only_by_the_attempt_that_finishes_its_job() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = pg::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = dir.path().join("artifacts");
    let artifacts = format!("file://{}", store.display());
    let s = Server::start(&data, &["--queue", &url, "--artifacts", &artifacts]);
    let c = reqwest::Client::new();
    let e = submit_on_sentiment(&rt, &c, &s, "closing", json!([{"strategy": "combined"}]), json!({}));
    // No worker yet: once the jobs are queued, block the strategy's attempt 1 result folder.
    let mut q = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    poll("the jobs queued", || (jobs_in(&mut q).len() == 2).then_some(()));
    let blocked = store.join(format!("experiments/{}/jobs/strategy-0/attempt-1/result", e.id));
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, "in the way").unwrap();
    let w = Worker::start("w1", &url, &artifacts, dir.path());
    let failed = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
    assert_eq!(failed.status, Status::Failed);
    assert!(
        failed.error.as_deref().is_some_and(|m| m.contains("attempt 1") && m.contains("result")),
        "{:?}",
        failed.error
    );
    let db = rusqlite::Connection::open(data.join("multitune.sqlite")).unwrap();
    let kinds = |kind: &str| -> Vec<(String, i64)> {
        let mut st =
            db.prepare("SELECT run, attempt FROM events WHERE experiment_id = ?1 AND kind = ?2 ORDER BY id").unwrap();
        st.query_map([&e.id, kind], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    let run = "combined (proportional)".to_string();
    assert!(kinds("evaluated").contains(&(run.clone(), 1)), "attempt 1 trained and scored its run");
    assert!(kinds("run_finished").is_empty(), "{:?}", kinds("run_finished"));
    // Resumed: attempt 2 stores its result under its own prefix and finishes the run.
    let r = rt.block_on(async { c.post(s.url(&format!("/api/experiments/{}/resume", e.id))).send().await.unwrap() });
    assert!(r.status().is_success(), "{}", r.status());
    let done = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert_eq!(kinds("run_finished"), [(run, 2)]);
    drop(w);
}

/// `--local-worker`: the server is its own worker, through the same queue; a comparison
/// of adapter methods is one part per (strategy, method), assembled into one report.
#[test]
fn a_server_with_a_local_worker_runs_the_queue_itself() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = pg::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = format!("file://{}", dir.path().join("artifacts").display());
    let s = Server::start(&dir.path().join("data"), &["--queue", &url, "--artifacts", &artifacts, "--local-worker"]);
    let c = reqwest::Client::new();
    let methods = json!({"methods": ["lora", "rslora"]});
    let e = submit_on_sentiment(&rt, &c, &s, "local", json!([{"strategy": "combined"}]), methods);
    let done = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    let runs: Vec<_> = done.runs.iter().filter(|r| r.index < multitune_api::REPORT_ONLY_RUN_INDEX).collect();
    assert_eq!(runs.len(), 2, "one run per method: {runs:?}");
    let w = runs[0].worker.as_ref().expect("the run names its worker");
    assert!(w.name.ends_with("-server") && w.attempt == 1, "{w:?}");
    let report: multitune_api::report::Report = rt.block_on(async {
        c.get(s.url(&format!("/api/experiments/{}/report", e.id))).send().await.unwrap().json().await.unwrap()
    });
    let m = report.methods.expect("the methods compared");
    assert_eq!(m.rows.len(), 1);
    assert!(m.against_first("combined (proportional) [rslora]").is_some(), "{m:?}");
    // The worker's TensorBoard files came back with its result.
    let tb = dir.path().join("data/experiments").join(&e.id).join("out/tensorboard");
    for run in ["base", "combined-proportional-lora", "combined-proportional-rslora"] {
        let files: Vec<_> = std::fs::read_dir(tb.join(run)).unwrap().map(|f| f.unwrap().path()).collect();
        assert!(!multitune::train::tensorboard::read(&files[0]).unwrap().is_empty(), "{run}");
    }
}

/// An S3-compatible server on a free loopback port: moto's (PyPI `moto[server]`, which
/// `make test` and .ci/run install into `~/.cache/multitune/moto-venv`; `MULTITUNE_MOTO`
/// names another `moto_server`). Stopped on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl S3Server {
    fn start() -> Self {
        let bin = std::env::var_os("MULTITUNE_MOTO").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/multitune/moto-venv/bin/moto_server")
        });
        assert!(bin.exists(), "{} is missing: `make test` installs it (PyPI moto[server])", bin.display());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        poll("the S3 server", || std::net::TcpStream::connect(addr).ok().map(drop));
        Self { child, endpoint: format!("http://{addr}") }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Artifacts in an S3 bucket (`s3://bucket/prefix`, endpoint and credentials from the
/// `AWS_*` variables): a comparison through the server and a worker ends done, and its
/// data, checkpoints and results are objects under the prefix.
#[test]
fn artifacts_in_an_s3_bucket() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = S3Server::start();
    let c = reqwest::Client::new();
    let made = rt.block_on(async { c.put(format!("{}/multitune", s3.endpoint)).send().await.unwrap().status() });
    assert!(made.is_success(), "creating the bucket: {made}");
    let env = [
        ("AWS_ENDPOINT", s3.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "multitune"),
        ("AWS_SECRET_ACCESS_KEY", "multitune-secret"),
        ("AWS_REGION", "us-east-1"),
    ];
    let url = pg::shared().database();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = "s3://multitune/runs";
    let s = Server::start_with_env(&dir.path().join("data"), &["--queue", &url, "--artifacts", artifacts], &env);
    let w = Worker::start_with_env("s3", &url, artifacts, dir.path(), &env);
    let strategies = json!([{"strategy": "combined"}, {"strategy": "separate", "merges": []}]);
    let e = submit_on_sentiment(&rt, &c, &s, "s3", strategies, json!({"bootstrap": 20, "checkpoint_every": 2}));
    let done = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
    assert_eq!(done.status, Status::Done, "{:?}", done.error);
    assert!(done.has_report && done.runs.iter().any(|r| r.has_adapter));
    assert!(w.said(&["artifacts s3://multitune/runs"]));
    let listing = rt.block_on(async {
        c.get(format!("{}/multitune?list-type=2&prefix=runs/experiments/{}/", s3.endpoint, e.id))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    for part in
        ["/data/0/train/", "/jobs/base/attempt-1/result/state/done-base.json", "/jobs/strategy-0/attempt-1/result/out/"]
    {
        assert!(listing.contains(part), "no object with {part} in the bucket: {listing}");
    }
}

/// The README's figures (run by hand: `cargo test --test integration cluster::figures --
/// --ignored --nocapture`): a four-strategy comparison on the tiny model with the server
/// training alone (SQLite) and with 1, 2 and 4 workers; the time from killing a worker
/// to its job's next lease, with another worker idle.
#[test]
#[ignore = "measures; prints the README's figures"]
fn figures() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let c = reqwest::Client::new();
    let budget: usize = std::env::var("FIGURES_BUDGET").ok().and_then(|b| b.parse().ok()).unwrap_or(24000);
    let spec = |ids: &[String]| {
        json!({
            "name": "figures", "model": "tiny",
            "tasks": ids.iter().map(|i| json!({"dataset": i})).collect::<Vec<_>>(),
            "strategies": [{"strategy": "combined"}, {"strategy": "sequential"},
                           {"strategy": "separate", "merges": ["linear"]}, {"strategy": "multi_head"}],
            "budget_tokens": budget,
            "hyper": {"learning_rate": 0.005, "batch_size": 4, "max_tokens": 192, "eval_limit": 20, "bootstrap": 200, "checkpoint_every": 10}
        })
    };
    for workers in [0, 1, 2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let url = pg::shared().database();
        let artifacts = format!("file://{}", dir.path().join("artifacts").display());
        let flags: Vec<&str> = if workers == 0 { vec![] } else { vec!["--queue", &url, "--artifacts", &artifacts] };
        let s = Server::start(&dir.path().join("data"), &flags);
        let _w: Vec<Worker> =
            (0..workers).map(|i| Worker::start(&format!("w{i}"), &url, &artifacts, dir.path())).collect();
        let mut ids = Vec::new();
        for t in multitune::data::demo::TASKS {
            let d: Dataset = rt.block_on(async {
                upload(&c, &s, &format!("{t}.jsonl"), demo_file(&format!("{t}.jsonl"))).await.json().await.unwrap()
            });
            ids.push(d.id);
        }
        let t0 = Instant::now();
        let e: Experiment = rt.block_on(async {
            c.post(s.url("/api/experiments")).json(&spec(&ids)).send().await.unwrap().json().await.unwrap()
        });
        let done = rt.block_on(wait_for(&c, &s, &e.id, |x| x.status.is_final()));
        assert_eq!(done.status, Status::Done, "{:?}", done.error);
        let what =
            if workers == 0 { "server alone (SQLite queue)".to_string() } else { format!("{workers} worker(s)") };
        eprintln!("figures: {what}: {:.1} s", t0.elapsed().as_secs_f64());
    }
    // Redelivery: one job, two workers; kill the one that holds it after a checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let url = pg::shared().database();
    let artifacts = format!("file://{}", dir.path().join("artifacts").display());
    let mut q = Queue::connect(&url).unwrap();
    let s = Server::start(&dir.path().join("data"), &["--queue", &url, "--artifacts", &artifacts]);
    let w: Vec<Worker> = (0..2).map(|i| Worker::start(&format!("r{i}"), &url, &artifacts, dir.path())).collect();
    let d: Dataset = rt.block_on(async {
        upload(&c, &s, "sentiment.jsonl", demo_file("sentiment.jsonl")).await.json().await.unwrap()
    });
    let mut one = spec(&[d.id]);
    one["strategies"] = json!([{"strategy": "combined"}]);
    one["budget_tokens"] = json!(60000);
    one["hyper"]["checkpoint_every"] = json!(5);
    let _e: Experiment =
        rt.block_on(async { c.post(s.url("/api/experiments")).json(&one).send().await.unwrap().json().await.unwrap() });
    let mut pgc = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let (job, holder) = poll("a checkpoint", || {
        jobs_in(&mut pgc)
            .into_iter()
            .find(|j| j.1 == "strategy-0" && j.4 == "running" && j.5)
            .map(|j| (j.0, j.2.unwrap()))
    });
    // The base job may still hold the other worker: wait until it is free.
    poll("the other worker idle", || jobs_in(&mut pgc).into_iter().all(|j| j.0 == job || j.4 == "done").then_some(()));
    w.iter().find(|x| x.name == holder).unwrap().signal(libc::SIGKILL);
    let t_kill = Instant::now();
    poll("the job leased again", || jobs_in(&mut pgc).into_iter().find(|j| j.0 == job && j.3 == 2).map(|_| ()));
    eprintln!(
        "figures: redelivery after kill -9 with a 2 s lease and an idle worker: {:.2} s",
        t_kill.elapsed().as_secs_f64()
    );
    drop(q.jobs("x"));
}
