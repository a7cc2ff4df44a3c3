//! The distributed mode's coordinator (`--queue postgres://… --artifacts …`): instead of
//! training, the server puts each queued experiment's data into the artifacts and its
//! parts (the base model, each strategy) into the queue as jobs; takes the events the
//! workers send into SQLite and the live streams, exactly as its own runs' events (so the
//! API and the dashboard do not change); and once every job is done, fetches their
//! results and assembles the report. One thread with its own connections; a round every
//! quarter second or when woken.
//!
//! Crash-safety: enqueueing is idempotent (one job per part and experiment), an event is
//! recorded once (its queue id is unique in SQLite) before the queue forgets it, and the
//! report is assembled from what the jobs left in the artifacts. So the server can stop
//! at any point and, started again, loses or repeats nothing; the workers go on meanwhile.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use multitune::strategy::{self, Base, Control, Part};
use multitune_api::{Event, Status};
use multitune_cluster::queue::{Job, Queue};
use multitune_cluster::worker::{self, JobPayload, TaskKeys};
use multitune_cluster::Artifacts;

use crate::db::Db;
use crate::jobs;
use crate::state::{AppState, Cluster, ClusterRequest as Request};

/// Connects to the queue and the artifacts (failing here, at start-up, with the reason),
/// then starts the coordinator thread and, with `local_worker`, a worker thread.
pub fn start(state: &AppState, wake: Receiver<()>) -> anyhow::Result<()> {
    let cluster = state.cfg.cluster.clone().expect("distributed mode");
    // The PostgreSQL client blocks on its own runtime, which cannot start inside the
    // server's: connect on the coordinator's thread and wait here for the outcome.
    let (ready, connected) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let (st, cl) = (state.clone(), cluster.clone());
    std::thread::Builder::new().name("multitune-coordinator".into()).spawn(move || {
        let opened = (|| -> anyhow::Result<Coordinator> {
            let queue = Queue::connect(&cl.queue)?;
            let store = Artifacts::open(&cl.artifacts)?;
            let db = Db::new(crate::db::open(&st.data.database())?);
            Ok(Coordinator { state: st, db, queue, store, cluster: cl })
        })();
        let mut c = match opened {
            Ok(c) => {
                let _ = ready.send(Ok(()));
                c
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        tracing::info!(
            "distributed mode: queue {}, artifacts {}{}",
            multitune_cluster::queue::redact(&c.cluster.queue),
            c.store.url(),
            if c.cluster.local_worker { ", with a worker in this process" } else { "; workers train (none here)" }
        );
        loop {
            if let Err(e) = c.round() {
                tracing::error!("coordinator: {e:#}; trying again in 2 s");
                std::thread::sleep(Duration::from_secs(2));
                match Queue::connect(&c.cluster.queue) {
                    Ok(q) => c.queue = q,
                    Err(e) => tracing::error!("coordinator: {e:#}"),
                }
            }
            let _ = wake.recv_timeout(Duration::from_millis(250));
        }
    })?;
    connected.recv().map_err(|_| anyhow::anyhow!("the coordinator stopped while connecting"))??;
    if cluster.local_worker {
        let opts = worker::Options {
            queue: cluster.queue.clone(),
            artifacts: cluster.artifacts.clone(),
            name: format!("{}-server", worker::default_name()),
            work_dir: state.cfg.data_dir.join("worker"),
            models_dir: state.cfg.models_dir.clone(),
            timing: cluster.timing,
        };
        let device = state.device.clone();
        std::thread::Builder::new().name("multitune-worker".into()).spawn(move || loop {
            if let Err(e) = worker::run(&opts, &device, &mut |m| tracing::info!("worker {}: {m}", opts.name)) {
                tracing::error!("local worker: {e:#}; starting again in 5 s");
            }
            std::thread::sleep(Duration::from_secs(5));
        })?;
    }
    Ok(())
}

struct Coordinator {
    state: AppState,
    db: Db,
    queue: Queue,
    store: Artifacts,
    cluster: Cluster,
}

impl Coordinator {
    fn round(&mut self) -> anyhow::Result<()> {
        // One request at a time, dropped once carried out (a queue error keeps the rest).
        loop {
            let next = self.state.cluster_requests.lock().unwrap_or_else(|p| p.into_inner()).first().cloned();
            let Some(r) = next else { break };
            match &r {
                Request::Cancel(id) => {
                    self.queue.cancel(id)?;
                    jobs::set_status(&self.state, &self.db, id, Status::Cancelled, None)?;
                }
                Request::Forget(id) => {
                    self.queue.forget(id)?;
                    self.store.delete_dir(&format!("experiments/{id}"))?;
                }
            }
            self.state.cluster_requests.lock().unwrap_or_else(|p| p.into_inner()).retain(|x| *x != r);
        }
        for id in jobs::experiments_with(&self.db, "queued")? {
            if let Err(e) = self.enqueue(&id) {
                tracing::warn!("experiment {id} could not be queued: {e:#}");
                jobs::set_status(&self.state, &self.db, &id, Status::Failed, Some(format!("{e:#}")))?;
            }
        }
        // The jobs' states first, their events second: a job seen done has sent all of
        // its events by then, so the runs table is complete before the report is.
        let running: Vec<(String, Vec<Job>)> = jobs::experiments_with(&self.db, "running")?
            .into_iter()
            .map(|id| Ok((id.clone(), self.queue.jobs(&id)?)))
            .collect::<anyhow::Result<_>>()?;
        self.ingest()?;
        for (id, jobs) in running {
            self.settle(&id, &jobs)?;
        }
        for id in self.queue.give_up_silent(self.cluster.timing.lease)? {
            tracing::warn!("job {id}: its worker went silent on its last attempt; given up");
        }
        Ok(())
    }

    /// Puts a queued (or resumed) experiment's data into the artifacts and its parts
    /// into the queue; parts that failed or were cancelled are queued again.
    fn enqueue(&mut self, id: &str) -> anyhow::Result<()> {
        let jobs::Stored { spec, config: cfg } = jobs::stored(&self.db, id)?;
        let model = self.state.model_source(&spec.model).map_err(|e| anyhow::anyhow!("{}", e.message))?.spec();
        let mut tasks = Vec::new();
        for (i, t) in jobs::task_files(&self.state, &self.db, &spec)?.into_iter().enumerate() {
            let put = |path: &Path, kind: &str| -> anyhow::Result<String> {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let key = format!("experiments/{id}/data/{i}/{kind}/{name}");
                self.store.put(&key, std::fs::read(path)?)?;
                Ok(key)
            };
            let eval = t.eval.as_deref().map(|p| put(p, "eval")).transpose()?;
            tasks.push(TaskKeys { name: t.name, data: put(&t.data, "train")?, eval, keep: t.keep });
        }
        let payload = serde_json::to_string(&JobPayload {
            spec,
            config: cfg.clone(),
            model,
            tasks,
            max_bytes: self.state.cfg.max_upload_bytes,
        })?;
        let parts: Vec<(String, String)> = Part::all(&cfg).iter().map(|p| (p.name(), payload.clone())).collect();
        let added = self.queue.enqueue(id, &parts, self.cluster.max_attempts)?;
        let again = self.queue.retry(id, self.cluster.max_attempts)?;
        tracing::info!("experiment {id}: {added} job(s) queued, {again} queued again");
        jobs::set_status(&self.state, &self.db, id, Status::Running, None)?;
        Ok(())
    }

    /// Records the workers' events, each once, then lets the queue forget them.
    fn ingest(&mut self) -> anyhow::Result<()> {
        loop {
            let batch = self.queue.events(500)?;
            for e in &batch {
                let event: Event = match serde_json::from_str(&e.data) {
                    Ok(ev) => ev,
                    Err(err) => {
                        tracing::warn!("event {} from worker {} does not parse: {err}", e.id, e.worker);
                        continue;
                    }
                };
                let worker = (e.worker.as_str(), e.attempt);
                if let Some(envelope) =
                    self.state.publish_remote(&self.db, &e.experiment_id, event.clone(), e.id, worker)?
                {
                    // The runs table first: a page that reloads on this event sees the worker.
                    jobs::track_run(&self.db, &e.experiment_id, &event, Some(worker))?;
                    let _ = self.state.events.send(envelope);
                }
            }
            let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
            self.queue.forget_events(&ids)?;
            if batch.len() < 500 {
                return Ok(());
            }
        }
    }

    /// Ends a running experiment whose jobs are all done (assembling the report) or one
    /// of which failed.
    fn settle(&mut self, id: &str, jobs: &[Job]) -> anyhow::Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        if let Some(j) = jobs.iter().find(|j| j.status == "failed") {
            self.queue.cancel(id)?;
            let message = format!(
                "{} failed (attempt {}{}): {}",
                j.part,
                j.attempt,
                j.worker.as_deref().map(|w| format!(" on worker {w}")).unwrap_or_default(),
                j.error.as_deref().unwrap_or("no reason recorded")
            );
            return Ok(jobs::set_status(&self.state, &self.db, id, Status::Failed, Some(message))?);
        }
        if jobs.iter().any(|j| j.status == "cancelled") {
            self.queue.cancel(id)?;
            return Ok(jobs::set_status(&self.state, &self.db, id, Status::Cancelled, None)?);
        }
        if jobs.iter().all(|j| j.status == "done") {
            let (status, message) = match self.assemble(id, jobs) {
                Ok(()) => (Status::Done, None),
                Err(e) => {
                    tracing::warn!("experiment {id}: assembling the report: {e:#}");
                    (Status::Failed, Some(format!("assembling the report: {e:#}")))
                }
            };
            jobs::set_status(&self.state, &self.db, id, status, message)?;
        }
        Ok(())
    }

    /// Fetches every job's result into the experiment folder and writes the report from
    /// their records (nothing is trained or scored again here).
    fn assemble(&mut self, id: &str, done: &[Job]) -> anyhow::Result<()> {
        let jobs::Stored { spec, config: cfg } = jobs::stored(&self.db, id)?;
        let dir = self.state.data.experiment(id);
        let (out, state_dir) = (dir.join("out"), dir.join("state"));
        for j in done {
            let r = j.result.as_deref().ok_or_else(|| anyhow::anyhow!("{} finished without a result", j.part))?;
            self.store.get_dir(&format!("{r}/out"), &out)?;
            self.store.get_dir(&format!("{r}/state"), &state_dir)?;
        }
        for part in Part::all(&cfg) {
            for rec in strategy::part_records(&cfg, part) {
                if !state_dir.join(&rec).exists() {
                    anyhow::bail!("the result of {} lacks its record {rec}", part.name());
                }
            }
        }
        let data = jobs::load_tasks(&self.state, &self.db, &spec)?;
        let model = self.state.model(&spec.model).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let control = Control { cancel: None, state_dir: Some(&state_dir) };
        let report = strategy::compare(&Base::of(&model), &data.tasks, &data.keep, &cfg, &out, control, &mut |_| {})?;
        jobs::record_report_runs(&self.db, id, &dir, &report)?;
        std::fs::remove_dir_all(&state_dir).ok();
        Ok(())
    }
}
