//! An experiment as the server stores it (`multitune_api::ExperimentCreate`) turned into
//! what the engine runs: its tasks loaded from files, and the engine's progress as API
//! events. The server's local worker and the distributed workers both go through here
//! (its `CompareConfig` is the server's to make, once: `jobs::Stored`).

use std::path::PathBuf;

use multitune::data::{self, LoadOptions};
use multitune::strategy::{CompareEvent, HeldOut, TaskData};
use multitune::train::TrainEvent;
use multitune_api::{Event, ExperimentCreate};

/// One task's files (or a keep set's): its name, training file and optional held-out
/// file.
#[derive(Debug, Clone)]
pub struct TaskFiles {
    /// The task's name.
    pub name: String,
    /// Its training data (a keep set's examples, every one scored).
    pub data: PathBuf,
    /// Its held-out data, if uploaded apart.
    pub eval: Option<PathBuf>,
    /// A keep set (scored, never trained on), not a task.
    pub keep: bool,
}

/// An experiment's data as the engine reads it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The tasks.
    pub tasks: Vec<TaskData>,
    /// The keep sets.
    pub keep: Vec<TaskData>,
}

/// Loads an experiment's tasks and keep sets from their files (uploads of at most
/// `max_bytes`).
pub fn load_tasks(spec: &ExperimentCreate, files: &[TaskFiles], max_bytes: u64) -> anyhow::Result<Loaded> {
    let opts = LoadOptions {
        limits: data::Limits { max_tokens: spec.hyper.max_tokens, max_bytes, ..Default::default() },
        ..Default::default()
    };
    let h = &spec.hyper;
    let mut loaded = Loaded { tasks: vec![], keep: vec![] };
    for t in files {
        if t.keep {
            loaded.keep.push(TaskData::keep_set(&t.name, &t.data, h.eval_limit, &opts)?);
        } else {
            let held_out = HeldOut { file: t.eval.as_deref(), split: h.eval_split, seed: h.seed, limit: h.eval_limit };
            loaded.tasks.push(TaskData::load(&t.name, &t.data, &held_out, &opts)?);
        }
    }
    Ok(loaded)
}

/// The `run_finished` of a run that finished, or was restored from its record (see
/// [`CompareEvent::RunRestored`]): a restored run's own may never have been recorded
/// (a worker's attempt that lost its lease; a server stopped between the record and the
/// event), so the caller decides whether to send it.
pub fn finished_event(e: &CompareEvent) -> Option<Event> {
    match e {
        CompareEvent::RunFinished { run, wall_s } | CompareEvent::RunRestored { run, wall_s, .. } => {
            Some(Event::RunFinished { run: run.clone(), wall_s: *wall_s })
        }
        _ => None,
    }
}

/// The API event of an engine event (checkpoints are not shown; a restored run is not
/// announced again, see [`finished_event`]).
pub fn event_of(e: &CompareEvent) -> Option<Event> {
    Some(match e {
        CompareEvent::RunStarted { run, index, of } => Event::RunStarted { run: run.clone(), index: *index, of: *of },
        CompareEvent::Train { run, stage, event } => match event {
            TrainEvent::Started { total_steps, start_step, .. } => Event::TrainStarted {
                run: run.clone(),
                stage: stage.clone(),
                total_steps: *total_steps,
                start_step: *start_step,
            },
            TrainEvent::Step(s) => Event::Step {
                run: run.clone(),
                stage: stage.clone(),
                step: s.step,
                total_steps: s.total_steps,
                loss: s.loss,
                lr: s.lr,
                tokens: s.tokens,
                tokens_per_s: s.tokens_per_s,
                elapsed_s: s.elapsed_s,
                task_losses: s.task_losses.clone(),
            },
            TrainEvent::Notice { message, .. } => {
                Event::Notice { run: run.clone(), stage: stage.clone(), message: message.clone() }
            }
            TrainEvent::Checkpoint { .. } => return None,
        },
        CompareEvent::Evaluated { run, stage, task, value } => {
            Event::Evaluated { run: run.clone(), stage: stage.clone(), task: task.clone(), value: *value }
        }
        CompareEvent::RunFinished { run, wall_s } => Event::RunFinished { run: run.clone(), wall_s: *wall_s },
        CompareEvent::RunRestored { .. } => return None,
    })
}
