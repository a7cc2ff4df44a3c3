//! `multitune worker`: leases a job, fetches its data (and the newest checkpoint of an
//! earlier attempt), runs its part of the comparison on this machine's device, sends
//! every progress event through the queue (a run's "finished" with the job's finish),
//! uploads each checkpoint and the result, and finishes the job — every write naming its (job, attempt), so that once the lease is
//! lost (this worker stalled, another took the job over) nothing more it writes counts:
//! it stops at its next step and drops the attempt.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::Device;
use multitune::model::{LoadedModel, ModelSource};
use multitune::strategy::{self, Base, CompareConfig, CompareEvent, Control, Part};
use multitune::train::TrainEvent;
use multitune_api::ExperimentCreate;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::experiment::{self, TaskFiles};
use crate::queue::{Lease, Queue, Timing};

/// What a job carries: the experiment as submitted, the model it names (as
/// `ModelSource::parse` reads it: `default`, a path the workers share …) and its task
/// files in the artifacts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobPayload {
    /// The experiment.
    pub spec: ExperimentCreate,
    /// Its comparison, as the server read it from the request (the worker does not
    /// convert the request again).
    pub config: CompareConfig,
    /// The model.
    pub model: String,
    /// Each task's files, in order.
    pub tasks: Vec<TaskKeys>,
    /// The largest upload the server accepts (the same limits apply here).
    pub max_bytes: u64,
}

/// A task's files as artifact keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskKeys {
    /// The task's name.
    pub name: String,
    /// Its training file.
    pub data: String,
    /// Its held-out file, if any.
    pub eval: Option<String>,
    /// A keep set's file (scored, never trained on), not a task's.
    #[serde(default)]
    pub keep: bool,
}

/// Where an attempt's files go in the artifacts.
pub fn attempt_prefix(experiment: &str, part: &str, attempt: i32) -> String {
    format!("experiments/{experiment}/jobs/{part}/attempt-{attempt}")
}

/// A worker's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The queue's PostgreSQL URL.
    pub queue: String,
    /// The artifacts' URL.
    pub artifacts: String,
    /// This worker's name.
    pub name: String,
    /// Scratch folder for the job in hand.
    pub work_dir: PathBuf,
    /// The models folder (the default model is fetched into it when missing).
    pub models_dir: PathBuf,
    /// Heartbeat and lease timing.
    pub timing: Timing,
}

/// The host's name and this process's id.
pub fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!("{}-{}", if host.is_empty() { "worker" } else { host }, std::process::id())
}

/// The job in hand, as the heartbeat thread sees it.
struct Current {
    lease: Lease,
    cancel: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
}

/// Takes jobs until the process stops (or the queue fails), reporting what it does
/// through `log`.
pub fn run(opts: &Options, device: &Device, log: &mut dyn FnMut(&str)) -> anyhow::Result<()> {
    let mut q = Queue::connect(&opts.queue)?;
    let store = Artifacts::open(&opts.artifacts)?;
    let device_info = multitune::model::device_info(device);
    q.register(&opts.name, &device_info.to_string())?;
    log(&format!(
        "on {device_info}; queue {}, artifacts {}; heartbeat every {:.0?}, lease {:.0?}",
        crate::queue::redact(&opts.queue),
        store.url(),
        opts.timing.heartbeat,
        opts.timing.lease
    ));
    let current: Arc<Mutex<Option<Current>>> = Arc::default();
    let beating = Arc::new(AtomicBool::new(true));
    let heart = {
        let (current, beating, url, name, every) =
            (current.clone(), beating.clone(), opts.queue.clone(), opts.name.clone(), opts.timing.heartbeat);
        let mut hq = Queue::connect(&url)?;
        std::thread::Builder::new().name("multitune-heartbeat".into()).spawn(move || {
            while beating.load(Ordering::Relaxed) {
                let next = Instant::now() + every;
                while Instant::now() < next && beating.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                }
                let guard = current.lock().unwrap_or_else(|p| p.into_inner());
                let Some(c) = guard.as_ref() else { continue };
                match hq.heartbeat(&c.lease, &name) {
                    Ok(true) => {}
                    Ok(false) => {
                        c.lost.store(true, Ordering::Relaxed);
                        c.cancel.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("heartbeat: {e:#}"),
                }
            }
        })?
    };
    let poll = (opts.timing.lease / 10).clamp(Duration::from_millis(200), Duration::from_secs(5));
    let mut models: HashMap<String, Arc<LoadedModel>> = HashMap::new();
    let result = (|| -> anyhow::Result<()> {
        loop {
            for id in q.give_up_silent(opts.timing.lease)? {
                log(&format!("job {id}: its worker went silent on its last attempt; given up"));
            }
            let Some(lease) = q.lease(&opts.name, opts.timing.lease)? else {
                q.wait_for_jobs(poll)?;
                continue;
            };
            let cancel = Arc::new(AtomicBool::new(false));
            let lost = Arc::new(AtomicBool::new(false));
            *current.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(Current { lease: lease.clone(), cancel: cancel.clone(), lost: lost.clone() });
            let job = Job { opts, device, store: &store, lease: &lease, cancel: &cancel, lost: &lost };
            let outcome = job.run(&mut q, &mut models, log);
            *current.lock().unwrap_or_else(|p| p.into_inner()) = None;
            let what = format!(
                "job {} ({} of experiment {}) attempt {}",
                lease.job, lease.part, lease.experiment_id, lease.attempt
            );
            match outcome {
                Ok(Outcome::Finished) => log(&format!("{what}: finished")),
                Ok(Outcome::Lost) => log(&format!(
                    "{what}: the lease was lost (another attempt took the job over, or it was cancelled); \
                     its writes are refused, this attempt is dropped"
                )),
                Err(e) => {
                    let msg = format!("{e:#}");
                    log(&format!("{what}: failed: {msg}"));
                    if !q.fail(&lease, &msg)? {
                        log(&format!("{what}: the lease was lost; the failure is not recorded"));
                    }
                }
            }
            std::fs::remove_dir_all(job_dir(opts, &lease)).ok();
        }
    })();
    beating.store(false, Ordering::Relaxed);
    let _ = heart.join();
    result
}

fn job_dir(opts: &Options, l: &Lease) -> PathBuf {
    opts.work_dir.join(format!("job-{}-attempt-{}", l.job, l.attempt))
}

/// How a job's attempt ended, when it did not fail.
enum Outcome {
    Finished,
    Lost,
}

struct Job<'a> {
    opts: &'a Options,
    device: &'a Device,
    store: &'a Artifacts,
    lease: &'a Lease,
    cancel: &'a AtomicBool,
    lost: &'a AtomicBool,
}

impl Job<'_> {
    fn run(
        &self,
        q: &mut Queue,
        models: &mut HashMap<String, Arc<LoadedModel>>,
        log: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Outcome> {
        let l = self.lease;
        let payload: JobPayload = serde_json::from_str(&l.payload).context("the job's payload does not parse")?;
        let part = Part::parse(&l.part).ok_or_else(|| anyhow::anyhow!("unknown part `{}`", l.part))?;
        let cfg = &payload.config;
        let dir = job_dir(self.opts, l);
        std::fs::remove_dir_all(&dir).ok();
        let (out, state, data) = (dir.join("out"), dir.join("state"), dir.join("data"));
        std::fs::create_dir_all(&out)?;
        std::fs::create_dir_all(&state)?;
        let mut files = Vec::new();
        for (i, t) in payload.tasks.iter().enumerate() {
            let fetch = |key: &str, kind: &str| -> anyhow::Result<PathBuf> {
                let name = key.rsplit('/').next().unwrap_or("data.jsonl");
                let p = data.join(format!("{i}")).join(kind).join(name);
                std::fs::create_dir_all(p.parent().expect("has a parent"))?;
                std::fs::write(&p, self.store.get(key)?)?;
                Ok(p)
            };
            let eval = t.eval.as_deref().map(|k| fetch(k, "eval")).transpose()?;
            files.push(TaskFiles { name: t.name.clone(), data: fetch(&t.data, "train")?, eval, keep: t.keep });
        }
        if let Some(ckpt) = &l.checkpoint {
            let n = self.store.get_dir(ckpt, &dir)?;
            log(&format!("job {} attempt {}: continuing from {ckpt} ({n} files)", l.job, l.attempt));
        } else {
            log(&format!(
                "job {} ({} of experiment {}) attempt {}: starting",
                l.job, l.part, l.experiment_id, l.attempt
            ));
        }
        let data = experiment::load_tasks(&payload.spec, &files, payload.max_bytes)?;
        let model = match models.get(&payload.model) {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(load_model(&payload.model, &self.opts.models_dir, self.device)?);
                models.insert(payload.model.clone(), m.clone());
                m
            }
        };
        let prefix = attempt_prefix(&l.experiment_id, &l.part, l.attempt);
        let failure: RefCell<Option<anyhow::Error>> = RefCell::default();
        // This attempt's previous checkpoint, removed once the job points at a newer one.
        let previous: RefCell<Option<String>> = RefCell::default();
        // The runs' "finished" events, sent with the job's finish: a run whose attempt
        // loses its lease before the job is done is run again by the next attempt, and
        // must not have said it finished.
        let closing: RefCell<Vec<String>> = RefCell::default();
        let mut on_event = |e: &CompareEvent| {
            if self.lost.load(Ordering::Relaxed) || failure.borrow().is_some() {
                return;
            }
            let step = (|| -> anyhow::Result<bool> {
                if let CompareEvent::Train { event: TrainEvent::Checkpoint { step, .. }, .. } = e {
                    // The whole job folder: finished stages' adapters, records and the
                    // checkpoint itself, under this attempt's own prefix.
                    let at = format!("{prefix}/checkpoint-{step}");
                    self.store.put_dir(&out, &format!("{at}/out"))?;
                    self.store.put_dir(&state, &format!("{at}/state"))?;
                    if !q.set_checkpoint(l, &at)? {
                        return Ok(false);
                    }
                    if let Some(old) = previous.replace(Some(at)) {
                        self.store.delete_dir(&old)?;
                    }
                    return Ok(true);
                }
                // Held back until the job's finish; a restored run too: the earlier
                // attempt that finished it lost its lease, so it never said so.
                if let Some(ev) = experiment::finished_event(e) {
                    closing.borrow_mut().push(serde_json::to_string(&ev)?);
                    return Ok(true);
                }
                match experiment::event_of(e) {
                    Some(ev) => q.push_event(l, &self.opts.name, &serde_json::to_string(&ev)?),
                    None => Ok(true),
                }
            })();
            match step {
                Ok(true) => {}
                Ok(false) => {
                    self.lost.store(true, Ordering::Relaxed);
                    self.cancel.store(true, Ordering::Relaxed);
                }
                Err(err) => {
                    *failure.borrow_mut() = Some(err);
                    self.cancel.store(true, Ordering::Relaxed);
                }
            }
        };
        let control = Control { cancel: Some(self.cancel), state_dir: Some(&state) };
        let ran =
            strategy::compare_part(&Base::of(&model), &data.tasks, &data.keep, cfg, &out, control, part, &mut on_event);
        if self.lost.load(Ordering::Relaxed) {
            return Ok(Outcome::Lost);
        }
        if let Some(e) = failure.into_inner() {
            return Err(e.context("sending progress"));
        }
        ran?;
        // The result: the adapters and the part's records (not the checkpoints).
        let at = format!("{prefix}/result");
        self.store.put_dir(&out, &format!("{at}/out"))?;
        for name in strategy::part_records(cfg, part) {
            let bytes = std::fs::read(state.join(&name)).with_context(|| format!("the part's record {name}"))?;
            self.store.put(&format!("{at}/state/{name}"), bytes)?;
        }
        if !q.finish(l, &self.opts.name, &at, &closing.into_inner())? {
            return Ok(Outcome::Lost);
        }
        if let Some(old) = previous.take() {
            self.store.delete_dir(&old)?;
        }
        Ok(Outcome::Finished)
    }
}

/// Loads the model a job names (the default model fetched when this machine lacks it).
fn load_model(spec: &str, models_dir: &Path, device: &Device) -> anyhow::Result<LoadedModel> {
    let source = ModelSource::parse(spec)?;
    multitune::model::load_model(&source, models_dir, device, true).with_context(|| format!("loading model `{spec}`"))
}
