//! The training queue: one worker thread per device (here: one) takes the oldest queued
//! experiment, runs the engine's `compare` on it, records every event in SQLite and
//! publishes it, and leaves the report and adapters in the experiment's folder. The
//! worker never waits on a client: events go to the database and a broadcast channel that
//! drops what slow receivers miss (they catch up from the database).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use multitune::strategy::{self, Base, CompareConfig, CompareEvent, Control};
use multitune_api::{Event, ExperimentCreate, Status};
use multitune_cluster::experiment::{self, event_of, finished_event, TaskFiles};
use rusqlite::{params, OptionalExtension};

use crate::db::{Db, NOW};
use crate::error::{is_disk_full, is_disk_full_db, ApiError, ApiResult};
use crate::state::AppState;

/// Why an experiment stopped when the disk filled up, and what to do.
pub const DISK_FULL: &str = "the disk holding Multitune's data folder is full: training stopped; \
    its last checkpoint is intact. Free some space, then resume the experiment: it continues from that checkpoint";

/// The engine configuration of an experiment (the engine's one conversion,
/// `strategy::request`), every problem listed at once.
pub fn compare_config(spec: &ExperimentCreate) -> ApiResult<CompareConfig> {
    strategy::compare_config(&spec.strategies, spec.budget_tokens, &spec.hyper, spec.tasks.len())
        .map_err(|problems| ApiError::invalid("the experiment's settings are not valid", problems))
}

/// An experiment's task files in the data folder, in task order, then its keep sets'.
pub fn task_files(state: &AppState, db: &Db, spec: &ExperimentCreate) -> anyhow::Result<Vec<TaskFiles>> {
    let file_of = |id: &str| -> anyhow::Result<(String, std::path::PathBuf)> {
        let (name, file): (String, String) = db
            .with(|c| {
                c.query_row("SELECT name, file FROM datasets WHERE id = ?1", [id], |r| Ok((r.get(0)?, r.get(1)?)))
            })
            .map_err(|_| anyhow::anyhow!("dataset {id} no longer exists"))?;
        Ok((name, state.data.dataset(id).join(file)))
    };
    spec.tasks
        .iter()
        .map(|t| {
            let (name, data) = file_of(&t.dataset)?;
            let eval = t.eval_dataset.as_deref().map(file_of).transpose()?.map(|(_, p)| p);
            Ok(TaskFiles { name, data, eval, keep: false })
        })
        .chain(spec.keep.iter().map(|id| {
            let (name, data) = file_of(id)?;
            Ok(TaskFiles { name, data, eval: None, keep: true })
        }))
        .collect()
}

/// Loads an experiment's tasks and keep sets from its datasets.
pub fn load_tasks(state: &AppState, db: &Db, spec: &ExperimentCreate) -> anyhow::Result<experiment::Loaded> {
    experiment::load_tasks(spec, &task_files(state, db, spec)?, state.cfg.max_upload_bytes)
}

/// Keeps the runs table in step with an event (sent by `worker`'s attempt, in the
/// distributed mode).
pub fn track_run(db: &Db, experiment: &str, e: &Event, worker: Option<(&str, i32)>) -> rusqlite::Result<()> {
    db.with(|c| {
        match e {
            Event::RunStarted { run, index, .. } => {
                let (name, attempt) = worker.unzip();
                c.execute(
                    "INSERT INTO runs (experiment_id, idx, name, status, worker, attempt) VALUES (?1, ?2, ?3, 'running', ?4, ?5)
                     ON CONFLICT (experiment_id, name) DO UPDATE SET status = 'running', worker = ?4, attempt = ?5",
                    params![experiment, *index as i64, run, name, attempt],
                )?;
            }
            Event::TrainStarted { run, stage, total_steps, start_step } => {
                c.execute(
                    "UPDATE runs SET stage = ?3, step = ?4, total_steps = ?5, elapsed_s = 0 WHERE experiment_id = ?1 AND name = ?2",
                    params![experiment, run, stage, *start_step as i64, *total_steps as i64],
                )?;
            }
            Event::Step { run, stage, step, total_steps, loss, tokens_per_s, elapsed_s, .. } => {
                c.execute(
                    "UPDATE runs SET stage = ?3, step = ?4, total_steps = ?5, loss = ?6, tokens_per_s = ?7, elapsed_s = ?8
                     WHERE experiment_id = ?1 AND name = ?2",
                    params![experiment, run, stage, *step as i64, *total_steps as i64, loss, tokens_per_s, elapsed_s],
                )?;
            }
            Event::RunFinished { run, .. } => {
                c.execute(
                    "UPDATE runs SET status = 'done' WHERE experiment_id = ?1 AND name = ?2",
                    params![experiment, run],
                )?;
            }
            _ => {}
        }
        Ok(())
    })
}

/// Sets an experiment's status (and its running runs'), and publishes the change.
pub fn set_status(
    state: &AppState,
    db: &Db,
    id: &str,
    status: Status,
    message: Option<String>,
) -> rusqlite::Result<()> {
    db.with(|c| {
        let finished = if status.is_final() { NOW } else { "NULL" };
        let started = if status == Status::Running { NOW } else { "started_at" };
        c.execute(
            &format!("UPDATE experiments SET status = ?2, error = ?3, started_at = {started}, finished_at = {finished} WHERE id = ?1"),
            params![id, status.as_str(), message],
        )?;
        if status.is_final() {
            c.execute(
                "UPDATE runs SET status = ?2 WHERE experiment_id = ?1 AND status = 'running'",
                params![id, status.as_str()],
            )?;
        }
        Ok(())
    })?;
    state.publish(db, id, Event::Status { status, message })?;
    Ok(())
}

/// Starts the worker thread. `wake` receives a message whenever something is queued.
pub fn spawn_worker(state: AppState, wake: std::sync::mpsc::Receiver<()>) -> anyhow::Result<()> {
    let db = Db::new(crate::db::open(&state.data.database())?);
    std::thread::Builder::new().name("multitune-worker".into()).spawn(move || loop {
        let next: Option<String> = db
            .with(|c| {
                c.query_row("SELECT id FROM experiments WHERE status = 'queued' ORDER BY seq LIMIT 1", [], |r| r.get(0))
                    .optional()
            })
            .unwrap_or_else(|e| {
                tracing::error!("queue: {e}");
                None
            });
        match next {
            Some(id) => run_experiment(&state, &db, &id),
            None => {
                let _ = wake.recv_timeout(Duration::from_secs(2));
            }
        }
    })?;
    Ok(())
}

fn run_experiment(state: &AppState, db: &Db, id: &str) {
    let cancel = Arc::new(AtomicBool::new(false));
    state.cancels.lock().unwrap_or_else(|p| p.into_inner()).insert(id.into(), cancel.clone());
    if let Err(e) = set_status(state, db, id, Status::Running, None) {
        tracing::error!("experiment {id}: {e}");
    }
    let result = execute(state, db, id, &cancel);
    state.cancels.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    let (status, message) = match result {
        Ok(()) => (Status::Done, None),
        Err(e) if e.chain().any(is_disk_full) => {
            // Give the reserve back so that this status, at least, can be recorded.
            state.data.release_reserve();
            tracing::error!("experiment {id} stopped: the disk is full: {e:#}");
            (Status::Interrupted, Some(DISK_FULL.into()))
        }
        Err(e) if e.downcast_ref::<multitune::Error>().is_some_and(|e| matches!(e, multitune::Error::Cancelled)) => {
            (Status::Cancelled, None)
        }
        Err(e) => {
            tracing::warn!("experiment {id} failed: {e:#}");
            (Status::Failed, Some(format!("{e:#}")))
        }
    };
    if let Err(e) = set_status(state, db, id, status, message) {
        tracing::error!("experiment {id}: {e}");
    }
}

/// An experiment's stored request, read into its typed settings once: the request as
/// submitted (its name, tasks and model) and the engine's comparison it asks for.
pub struct Stored {
    /// The request.
    pub spec: ExperimentCreate,
    /// The comparison ([`compare_config`] of the request).
    pub config: CompareConfig,
}

/// Experiment `id`'s stored request and its comparison.
pub fn stored(db: &Db, id: &str) -> anyhow::Result<Stored> {
    let json: String = db.with(|c| c.query_row("SELECT spec FROM experiments WHERE id = ?1", [id], |r| r.get(0)))?;
    let spec: ExperimentCreate = serde_json::from_str(&json)?;
    let config = compare_config(&spec).map_err(|e| anyhow::anyhow!("{}: {}", e.message, e.details.join("; ")))?;
    Ok(Stored { spec, config })
}

fn execute(state: &AppState, db: &Db, id: &str, cancel: &AtomicBool) -> anyhow::Result<()> {
    let Stored { spec, config: cfg } = stored(db, id)?;
    let data = load_tasks(state, db, &spec)?;
    let model = state.model(&spec.model).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let dir = state.data.experiment(id);
    let (out, state_dir) = (dir.join("out"), dir.join("state"));
    std::fs::create_dir_all(&out)?;
    let control = Control { cancel: Some(cancel), state_dir: Some(&state_dir) };
    let mut db_error = None;
    let report = strategy::compare(&Base::of(&model), &data.tasks, &data.keep, &cfg, &out, control, &mut |e| {
        let ev = match e {
            // A run that finished before an interruption said so then (unless the
            // server stopped between its record and its event): once is enough.
            CompareEvent::RunRestored { run, .. } => match finished_recorded(db, id, run) {
                Ok(true) => None,
                Ok(false) => finished_event(e),
                Err(err) => {
                    db_error.get_or_insert(err);
                    None
                }
            },
            _ => event_of(e),
        };
        if let Some(ev) = ev {
            if let Err(err) = track_run(db, id, &ev, None).and_then(|_| state.publish(db, id, ev).map(|_| ())) {
                // Training on without a record of it would lose what clients follow:
                // stop at the next step, resumable from the last checkpoint.
                if is_disk_full_db(&err) {
                    cancel.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                db_error.get_or_insert(err);
            }
        }
    });
    match db_error {
        Some(e) if is_disk_full_db(&e) => return Err(e.into()),
        Some(e) => tracing::error!("experiment {id}: recording events: {e}"),
        None => {}
    }
    record_report_runs(db, id, &dir, &report?)?;
    std::fs::remove_dir_all(&state_dir).ok();
    Ok(())
}

/// Whether experiment `id` has recorded that `run` finished.
fn finished_recorded(db: &Db, id: &str, run: &str) -> rusqlite::Result<bool> {
    db.with(|c| {
        c.query_row(
            "SELECT EXISTS (SELECT 1 FROM events WHERE experiment_id = ?1 AND run = ?2 AND kind = 'run_finished')",
            params![id, run],
            |r| r.get(0),
        )
    })
}

/// Records every row of a finished experiment's report as a run (merges included), with
/// its adapter folders relative to the experiment folder `dir`.
pub fn record_report_runs(db: &Db, id: &str, dir: &Path, report: &strategy::Report) -> rusqlite::Result<()> {
    db.with(|c| {
        for (i, r) in report.runs.iter().enumerate().filter(|(_, r)| !r.is_base()) {
            let dirs: Vec<String> = r
                .adapter_dirs
                .iter()
                .filter_map(|d| Path::new(d).strip_prefix(dir).ok().map(|p| p.to_string_lossy().into_owned()))
                .collect();
            let heads = r.adapter_dirs.iter().any(|d| Path::new(d).join(multitune::strategy::heads::HEADS_JSON).exists());
            c.execute(
                "INSERT INTO runs (experiment_id, idx, name, status, adapter_dirs, has_heads) VALUES (?1, ?2, ?3, 'done', ?4, ?5)
                 ON CONFLICT (experiment_id, name) DO UPDATE SET status = 'done', adapter_dirs = ?4, has_heads = ?5",
                params![id, (multitune_api::REPORT_ONLY_RUN_INDEX + i) as i64, r.name, serde_json::to_string(&dirs).unwrap_or_default(), heads],
            )?;
        }
        Ok(())
    })
}

/// The ids of experiments with `status`, in queue order.
pub fn experiments_with(db: &Db, status: &str) -> rusqlite::Result<Vec<String>> {
    db.with(|c| {
        let mut st = c.prepare("SELECT id FROM experiments WHERE status = ?1 ORDER BY seq")?;
        let ids = st.query_map([status], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>();
        ids
    })
}

/// Marks experiments left running by a crash as interrupted (at start-up).
pub fn mark_interrupted(state: &AppState) -> rusqlite::Result<usize> {
    let ids = experiments_with(&state.db, "running")?;
    for id in &ids {
        set_status(
            state,
            &state.db,
            id,
            Status::Interrupted,
            Some("the server stopped while this experiment ran; resume it to continue from its last checkpoint".into()),
        )?;
    }
    Ok(ids.len())
}
