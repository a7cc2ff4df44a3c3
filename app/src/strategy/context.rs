//! What every strategy's runner shares — the base model ([`Base`]), the events it
//! reports ([`CompareEvent`]), how it is stopped and resumed ([`Control`]) — and
//! [`Ctx`]: the base model, the tasks and settings, where
//! outputs go, how to train one stage (with its checkpoint), score every task, build a
//! mixture and export an adapter, and the event callback.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::adapter::peft;
use crate::data::{Example, Record};
use crate::eval::retention::Probe;
use crate::eval::{self, TaskEval};
use crate::model::lora::LoraAdapter;
use crate::model::{Llama, LoadedModel, TextTokenizer};
use crate::strategy::mixing::{self, Mixing};
use crate::strategy::report::{self, Retention, RunResult, TaskScore};
use crate::strategy::spec::CompareConfig;
use crate::strategy::task::TaskData;
use crate::train::{self, StepStats, TrainConfig, TrainEvent, TrainSummary};
use crate::{Error, Result};

/// The base model a comparison trains on: the decoder, its tokenizer, and the name that
/// exported adapters record as their base.
#[derive(Clone, Copy)]
pub struct Base<'a> {
    /// The frozen decoder.
    pub model: &'a Llama,
    /// Its tokenizer.
    pub tokenizer: &'a TextTokenizer,
    /// `base_model_name_or_path` of exported adapters.
    pub name: &'a str,
}

impl<'a> Base<'a> {
    /// A loaded model as a comparison's base.
    pub fn of(m: &'a LoadedModel) -> Self {
        Self { model: &m.model, tokenizer: &m.tokenizer, name: &m.base_name }
    }
}

/// Progress of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CompareEvent {
    /// A strategy starts.
    RunStarted {
        /// Run name.
        run: String,
        /// Its position.
        index: usize,
        /// Strategies in all.
        of: usize,
    },
    /// Training progress inside a run (stage: a task name, or `all`).
    Train {
        /// Run name.
        run: String,
        /// Stage.
        stage: String,
        /// What happened.
        event: TrainEvent,
    },
    /// A task was scored.
    Evaluated {
        /// Run name.
        run: String,
        /// Stage after which it was scored.
        stage: String,
        /// Task.
        task: String,
        /// Headline metric value.
        value: f64,
    },
    /// A run finished.
    RunFinished {
        /// Run name.
        run: String,
        /// Wall seconds.
        wall_s: f64,
    },
    /// A run that finished before the comparison was interrupted, taken from its record
    /// in the state folder (nothing is trained or scored again; no `RunStarted` or
    /// `RunFinished` is sent for it this time).
    RunRestored {
        /// Run name.
        run: String,
        /// Its position.
        index: usize,
        /// Strategies in all.
        of: usize,
        /// Its wall seconds when it ran.
        wall_s: f64,
    },
}

/// How a comparison can be stopped and picked up again.
#[derive(Debug, Default, Clone, Copy)]
pub struct Control<'a> {
    /// Set to stop: training stops within a step, evaluation within a task, and
    /// `compare` returns [`Error::Cancelled`].
    pub cancel: Option<&'a AtomicBool>,
    /// A folder for training checkpoints and records of finished runs. Started again with
    /// the same folder (and configuration), `compare` skips the runs that finished and
    /// continues training from the last checkpoint.
    pub state_dir: Option<&'a Path>,
}

/// Each example of a mixture as `(task, index within the task)`.
pub(super) type Draws = Vec<(usize, usize)>;

pub(super) fn tagged(task: &str, r: &Record) -> Record {
    Record { prompt: format!("[{task}] {}", r.prompt), ..r.clone() }
}

pub(super) struct Ctx<'a> {
    pub(super) base: &'a Base<'a>,
    pub(super) tasks: &'a [TaskData],
    pub(super) cfg: &'a CompareConfig,
    pub(super) out: &'a Path,
    /// Appended to run names (the seed, when there are several).
    pub(super) suffix: String,
    pub(super) control: Control<'a>,
    /// `s{seed index}-r{strategy index}`: names this run's checkpoints.
    pub(super) key: String,
    /// Score every training stage (the forgetting matrix); off in a learning-rate
    /// search's trials, which need only the final model's scores.
    pub(super) score_stages: bool,
    /// Training stages that several runs of this comparison (and seed) share.
    pub(super) shared: &'a RefCell<SharedStages>,
    /// The base model's answers to the retention probe: each run's model is measured
    /// against them (`None`: not measured, as in a learning-rate trial or a smaller data
    /// size).
    pub(super) probe: Option<&'a Probe>,
    /// The keep sets every run's final model is scored on (none in a learning-rate trial
    /// or at a smaller data size).
    pub(super) keep: &'a [TaskData],
    pub(super) on_event: &'a mut dyn FnMut(&CompareEvent),
}

/// The stage of the [`CompareEvent::Evaluated`] events that report keep-set scores.
pub const KEEP_STAGE: &str = "keep set";

/// One training that several runs share, done once: a fresh adapter (seeded with the
/// run's seed) trained on one task's own examples from the base model. The first stage of
/// both sequential variants and the separate strategy's adapter for that task are this
/// training — same base, same initial adapter, same examples, same settings, so the same
/// adapter bit for bit — and so is scoring every task with it on the base model.
#[derive(Default)]
pub(super) struct SharedStages {
    done: HashMap<String, SharedStage>,
}

struct SharedStage {
    adapter: LoraAdapter,
    summary: TrainSummary,
    /// Its training events, replayed under each run that reuses it.
    events: Vec<TrainEvent>,
    /// Every task scored with the adapter on the base model, once a run did.
    scores: Option<Vec<TaskEval>>,
    /// What the base model with the adapter keeps of the base model (the retention
    /// probe), once a run measured it.
    retention: Option<Retention>,
}

/// A stage's adapter and summary, and whether it was reused (its seconds were spent
/// before, by another run).
pub(super) struct StageOutcome {
    pub(super) adapter: LoraAdapter,
    pub(super) summary: TrainSummary,
    pub(super) reused: bool,
}

impl Ctx<'_> {
    /// This context with the settings `cfg` (a run's own learning rate).
    pub(super) fn with_cfg<'b>(&'b mut self, cfg: &'b CompareConfig) -> Ctx<'b> {
        Ctx {
            base: self.base,
            tasks: self.tasks,
            cfg,
            out: self.out,
            suffix: self.suffix.clone(),
            control: self.control,
            key: self.key.clone(),
            score_stages: self.score_stages,
            shared: self.shared,
            probe: self.probe,
            keep: self.keep,
            on_event: &mut *self.on_event,
        }
    }

    /// What identifies a shared stage: the task, the training settings (seed, budget,
    /// rate, adapter shape) and what shapes its examples and scores.
    fn shared_key(&self, task: usize, tc: &TrainConfig) -> Result<String> {
        Ok(serde_json::to_string(&(task, tc, &self.cfg.eval))?)
    }

    /// A fresh adapter (seeded with `tc.seed`) trained on task `task`'s own training
    /// examples from the base model, as run `run`'s stage named after the task — or, when another run
    /// of this comparison trained exactly that already, a copy of its adapter, with its
    /// training events replayed under `run`.
    pub(super) fn first_stage(&mut self, run: &str, task: usize, tc: &TrainConfig) -> Result<StageOutcome> {
        let key = self.shared_key(task, tc)?;
        let stage = self.tasks[task].name.clone();
        if let Some(done) = self.shared.borrow().done.get(&key) {
            for e in done.events.iter().filter(|e| !matches!(e, TrainEvent::Checkpoint { .. })) {
                (self.on_event)(&CompareEvent::Train { run: run.into(), stage: stage.clone(), event: e.clone() });
            }
            return Ok(StageOutcome {
                adapter: done.adapter.deep_clone()?,
                summary: done.summary.clone(),
                reused: true,
            });
        }
        let model = self.base.model;
        let adapter = LoraAdapter::for_model(model, tc.lora.clone(), tc.seed)?;
        let ex = self.encode(&self.tasks[task].train)?;
        let mut events = Vec::new();
        let plan = self.checkpoint(&stage);
        let cancel = self.control.cancel;
        let on = &mut *self.on_event;
        let summary = train::train_objective(model, &adapter, &ex, tc, plan.as_ref(), cancel, &mut |e| {
            events.push(e.clone());
            on(&CompareEvent::Train { run: run.into(), stage: stage.clone(), event: e.clone() })
        })?;
        let kept = SharedStage {
            adapter: adapter.deep_clone()?,
            summary: summary.clone(),
            events,
            scores: None,
            retention: None,
        };
        self.shared.borrow_mut().done.insert(key, kept);
        Ok(StageOutcome { adapter, summary, reused: false })
    }

    /// The scores of [`Ctx::first_stage_scores`] if a run computed them already.
    pub(super) fn shared_scores(&self, task: usize, tc: &TrainConfig) -> Result<Option<Vec<TaskEval>>> {
        let key = self.shared_key(task, tc)?;
        Ok(self.shared.borrow().done.get(&key).and_then(|d| d.scores.clone()))
    }

    /// Every task scored with the shared stage's adapter on the base model ([`Ctx::eval_all`]
    /// with that adapter), computed once per comparison; `None` when that stage was not
    /// trained through [`Ctx::first_stage`].
    pub(super) fn first_stage_scores(
        &mut self,
        run: &str,
        task: usize,
        tc: &TrainConfig,
    ) -> Result<Option<Vec<TaskEval>>> {
        let key = self.shared_key(task, tc)?;
        let stage = self.tasks[task].name.clone();
        let shared = self.shared;
        let done = shared.borrow();
        let Some(d) = done.done.get(&key) else { return Ok(None) };
        if let Some(scores) = d.scores.clone() {
            for e in &scores {
                self.scored(run, &stage, e);
            }
            return Ok(Some(scores));
        }
        // Scoring reads the kept adapter; nothing borrows the stages mutably meanwhile.
        let scores = self.eval_all(run, &stage, self.base.model, Some(&d.adapter), false)?;
        drop(done);
        if let Some(d) = shared.borrow_mut().done.get_mut(&key) {
            d.scores = Some(scores.clone());
        }
        Ok(Some(scores))
    }

    /// What the shared stage's adapter on the base model keeps of the base model
    /// ([`Ctx::retention`]), measured once per comparison; `None` when retention is not
    /// measured or that stage was not trained through [`Ctx::first_stage`].
    pub(super) fn first_stage_retention(&self, task: usize, tc: &TrainConfig) -> Result<Option<Retention>> {
        let key = self.shared_key(task, tc)?;
        let done = self.shared.borrow();
        let Some(d) = done.done.get(&key) else { return Ok(None) };
        if let Some(k) = d.retention {
            // Its seconds were spent before, by the run that measured it first.
            return Ok(Some(Retention { seconds: 0.0, ..k }));
        }
        let kept = self.retention(self.base.model, Some(&d.adapter))?;
        drop(done);
        if let Some(d) = self.shared.borrow_mut().done.get_mut(&key) {
            d.retention = kept;
        }
        Ok(kept)
    }

    pub(super) fn encode(&self, recs: &[Record]) -> Result<Vec<Example>> {
        recs.iter()
            .map(|r| {
                crate::data::encode(self.base.tokenizer, r, self.cfg.eval.system.as_deref(), self.cfg.train.max_seq_len)
            })
            .collect()
    }

    /// A seeded mixture of every task's training examples, comfortably longer than the
    /// budget (the trainer stops on it), with each draw's `(task, index)`.
    pub(super) fn mixture(&self, mixing: Mixing, tag: bool) -> Result<(Draws, Vec<Example>)> {
        let per_task: Vec<Vec<Example>> = self
            .tasks
            .iter()
            .map(|t| {
                let recs: Vec<Record> =
                    if tag { t.train.iter().map(|r| tagged(&t.name, r)).collect() } else { t.train.clone() };
                self.encode(&recs)
            })
            .collect::<Result<_>>()?;
        let sizes: Vec<usize> = per_task.iter().map(Vec::len).collect();
        let probs = mixing.probabilities(&sizes);
        let mean: f64 = per_task.iter().flatten().map(|e| (e.ids.len() - 1) as f64).sum::<f64>()
            / sizes.iter().sum::<usize>().max(1) as f64;
        let tc = &self.cfg.train;
        let n = ((self.cfg.budget_tokens as f64 / mean.max(1.0)) * 1.2) as usize + tc.batch_size * tc.grad_accum;
        let draws = mixing::draw(&sizes, &probs, n, tc.seed);
        // Each example's loss is reported under its task.
        let mix = draws.iter().map(|&(t, i)| Example { group: t, ..per_task[t][i].clone() }).collect();
        Ok((draws, mix))
    }

    pub(super) fn check_cancel(&self) -> Result<()> {
        if self.control.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// The checkpoint of one training stage of the current run.
    pub(super) fn checkpoint(&self, stage: &str) -> Option<train::CheckpointPlan> {
        self.control.state_dir.map(|d| train::CheckpointPlan {
            path: d.join(format!("ckpt-{}-{}.safetensors", self.key, slug(stage))),
            resume: true,
        })
    }

    pub(super) fn train(
        &mut self,
        run: &str,
        stage: &str,
        model: &Llama,
        objective: &mut dyn train::Objective,
        ex: &[Example],
        tc: &TrainConfig,
    ) -> Result<train::TrainSummary> {
        let (r, s) = (run.to_string(), stage.to_string());
        let plan = self.checkpoint(stage);
        let cancel = self.control.cancel;
        let on = &mut *self.on_event;
        let tasks = self.tasks;
        train::train_objective(model, objective, ex, tc, plan.as_ref(), cancel, &mut |e| {
            let event = match e {
                // A mixture's groups are its tasks: named for everyone who reads the event.
                TrainEvent::Step(st) if !st.group_losses.is_empty() => TrainEvent::Step(StepStats {
                    task_losses: st.group_losses.iter().map(|&(g, l)| (task_name(tasks, g), l)).collect(),
                    ..st.clone()
                }),
                e => e.clone(),
            };
            on(&CompareEvent::Train { run: r.clone(), stage: s.clone(), event })
        })
    }

    /// What `tuned` (with `adapter` applied, if given) keeps of the base model on the
    /// retention probe; `None` when this comparison does not measure it.
    pub(super) fn retention(&self, tuned: &Llama, adapter: Option<&LoraAdapter>) -> Result<Option<Retention>> {
        let Some(probe) = self.probe else { return Ok(None) };
        self.check_cancel()?;
        let k = probe.measure(self.base.model, tuned, adapter)?;
        Ok(Some(Retention { kl: k.kl, same_answer: k.same_answer, prompts: k.prompts, seconds: k.seconds }))
    }

    /// What run `r`'s final model (`tuned`, with `adapter` applied if given) keeps of the
    /// base model: its retention (when measured) and its keep-set scores.
    pub(super) fn keep(&mut self, r: &mut RunResult, tuned: &Llama, adapter: Option<&LoraAdapter>) -> Result<()> {
        r.retention = self.retention(tuned, adapter)?;
        r.keep = self.keep_scores(&r.name, tuned, &[adapter])?;
        Ok(())
    }

    /// Every keep set scored with `tuned` and each of `adapters` in turn, averaged over
    /// them example by example (a routed run's per-task adapters, one of which a keep-set
    /// request meets); empty without keep sets.
    pub(super) fn keep_scores(
        &mut self,
        run: &str,
        tuned: &Llama,
        adapters: &[Option<&LoraAdapter>],
    ) -> Result<Vec<TaskScore>> {
        let mut out = Vec::with_capacity(self.keep.len());
        for t in self.keep {
            let mut each = Vec::with_capacity(adapters.len());
            for a in adapters {
                self.check_cancel()?;
                let e = eval::evaluate_task(
                    tuned,
                    self.base.tokenizer,
                    *a,
                    &t.spec(),
                    &t.eval,
                    &self.cfg.eval,
                    &mut |_, _| {},
                )?;
                each.push(report::task_score(&e));
            }
            let score = report::fold_scores(&each.iter().collect::<Vec<_>>());
            (self.on_event)(&CompareEvent::Evaluated {
                run: run.into(),
                stage: KEEP_STAGE.into(),
                task: t.name.clone(),
                value: score.value.value,
            });
            out.push(score);
        }
        Ok(out)
    }

    /// Each task's loss at every step of a mixed run's training (`None` at a step without
    /// an example of the task); empty when the run did not train on a mixture.
    pub(super) fn task_losses(&self, s: &TrainSummary) -> Vec<(String, Vec<Option<f64>>)> {
        if s.group_losses.is_empty() {
            return vec![];
        }
        (0..self.tasks.len())
            .map(|t| {
                let at = s.group_losses.iter().map(|step| step.iter().find(|g| g.0 == t).map(|g| g.1)).collect();
                (self.tasks[t].name.clone(), at)
            })
            .collect()
    }

    pub(super) fn eval_all(
        &mut self,
        run: &str,
        stage: &str,
        model: &Llama,
        adapter: Option<&LoraAdapter>,
        tag: bool,
    ) -> Result<Vec<TaskEval>> {
        let mut out = Vec::new();
        for t in self.tasks {
            self.check_cancel()?;
            let recs: Vec<Record> =
                if tag { t.eval.iter().map(|r| tagged(&t.name, r)).collect() } else { t.eval.clone() };
            let e = eval::evaluate_task(
                model,
                self.base.tokenizer,
                adapter,
                &t.spec(),
                &recs,
                &self.cfg.eval,
                &mut |_, _| {},
            )?;
            self.scored(run, stage, &e);
            out.push(e);
        }
        Ok(out)
    }

    /// Tells the listener a task was scored (its headline metric).
    pub(super) fn scored(&mut self, run: &str, stage: &str, e: &TaskEval) {
        (self.on_event)(&CompareEvent::Evaluated {
            run: run.into(),
            stage: stage.into(),
            task: e.task.clone(),
            value: e.headline().1.value,
        });
    }

    /// Training tokens per task of a mixture run: `draws[i]` is example `i`'s (task, index).
    pub(super) fn tokens_per_task(&self, draws: &[(usize, usize)], per_example: &[usize]) -> Vec<usize> {
        let mut task_tokens = vec![0usize; self.tasks.len()];
        for (&(t, _), n) in draws.iter().zip(per_example) {
            task_tokens[t] += n;
        }
        task_tokens
    }

    pub(super) fn export(&self, dir_name: &str, adapter: &LoraAdapter) -> Result<(PathBuf, u64)> {
        let dir = self.out.join("adapters").join(dir_name);
        peft::save_adapter(&dir, adapter, &self.base.model.cfg, self.base.name)?;
        let bytes = std::fs::metadata(dir.join(peft::WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
        Ok((dir, bytes))
    }
}

/// The name of task `t` (a group index), or the index itself if there is no such task.
fn task_name(tasks: &[TaskData], t: usize) -> String {
    tasks.get(t).map_or_else(|| t.to_string(), |x| x.name.clone())
}

/// A run or task name as a folder name: ASCII letters, digits and dots, other runs of
/// characters as one `-`.
pub fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}
