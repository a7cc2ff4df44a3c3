//! The four answers to "how do I train one model for many tasks?", run under one token
//! budget and compared: combined (one adapter on a mixture), sequential (task after
//! task, continuing one adapter or merging into the base between tasks, with optional
//! replay), separate (one adapter per task, scored routed and merged). The report says
//! which wins, per task and overall, at what cost.

pub mod mixing;
pub mod report;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use mixing::Mixing;
pub use report::{Report, RunResult, TaskScore};

use crate::data::{Example, Record};
use crate::dataset::TaskKind;
use crate::eval::{self, EvalOptions, TaskEval};
use crate::heads::{self, MultiHead};
use crate::lora::LoraAdapter;
use crate::merge::{self, MergeMethod};
use crate::model::Llama;
use crate::tokenizer::TextTokenizer;
use crate::train::{self, TrainConfig, TrainEvent};
use crate::{peft, Error, Result};

/// One task: its training and held-out examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskData {
    /// Name (file stem).
    pub name: String,
    /// Classification or generation.
    pub kind: TaskKind,
    /// Label set (classification).
    pub labels: Vec<String>,
    /// Training examples.
    pub train: Vec<Record>,
    /// Held-out examples.
    pub eval: Vec<Record>,
}

impl TaskData {
    /// Task `name` from a training file and either a held-out file (read as the same
    /// kind) or a seeded `eval_split` share of the training file; at most `eval_limit`
    /// held-out examples are kept.
    pub fn load(
        name: &str,
        train: &Path,
        eval: Option<&Path>,
        opts: &crate::dataset::LoadOptions,
        eval_split: f64,
        seed: u64,
        eval_limit: Option<usize>,
    ) -> Result<Self> {
        let d = crate::dataset::load(train, opts)?;
        let (train, mut eval) = match eval {
            Some(f) => {
                let held_out = crate::dataset::LoadOptions { kind: Some(d.kind), ..opts.clone() };
                (d.records.clone(), crate::dataset::load(f, &held_out)?.records)
            }
            None => {
                let split = crate::dataset::Split::Fraction(eval_split);
                let (ti, ei) = crate::dataset::split_indices(d.records.len(), split, seed)?;
                (ti.iter().map(|&i| d.records[i].clone()).collect(), ei.iter().map(|&i| d.records[i].clone()).collect())
            }
        };
        if let Some(n) = eval_limit {
            eval.truncate(n);
        }
        Ok(Self { name: name.into(), kind: d.kind, labels: d.labels, train, eval })
    }
}

/// How a sequential run carries knowledge from one task to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequentialVariant {
    /// One adapter keeps training.
    Continue,
    /// After each task the adapter is merged into the base and a fresh one starts.
    MergeThenNew,
}

/// A strategy and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum StrategySpec {
    /// One adapter on a mixture of all tasks.
    Combined {
        /// Task sampling.
        mixing: Mixing,
        /// Prefix each prompt with `[task]`.
        task_tag: bool,
    },
    /// Tasks one after another.
    Sequential {
        /// Continue or merge-then-new.
        variant: SequentialVariant,
        /// Task order by index (empty: as given).
        order: Vec<usize>,
        /// Share of each stage's examples replayed from earlier tasks.
        replay: f64,
    },
    /// One adapter per task, scored routed and merged.
    Separate {
        /// Merge methods to score.
        merges: Vec<MergeMethod>,
        /// Rank of TIES/DARE refits.
        merge_rank: usize,
    },
    /// One shared adapter on the mixture plus a head per task (classifier or LM-head delta).
    MultiHead {
        /// Task sampling.
        mixing: Mixing,
        /// Rank of the LM-head deltas of generation tasks.
        head_rank: usize,
    },
}

impl StrategySpec {
    /// The run's name in reports.
    pub fn name(&self) -> String {
        match self {
            StrategySpec::Combined { mixing, task_tag } => {
                let m = match mixing {
                    Mixing::Proportional => "proportional".to_string(),
                    Mixing::Uniform => "uniform".to_string(),
                    Mixing::Temperature { t } => format!("T={t}"),
                };
                format!("combined ({m}{})", if *task_tag { ", tagged" } else { "" })
            }
            StrategySpec::Sequential { variant, replay, .. } => {
                let v = match variant {
                    SequentialVariant::Continue => "continue",
                    SequentialVariant::MergeThenNew => "merge-then-new",
                };
                if *replay > 0.0 {
                    format!("sequential ({v}, replay {replay})")
                } else {
                    format!("sequential ({v})")
                }
            }
            StrategySpec::Separate { .. } => "separate (routed)".into(),
            StrategySpec::MultiHead { .. } => "multi-head".into(),
        }
    }

    /// Every strategy with default options.
    pub fn all() -> Vec<StrategySpec> {
        vec![
            StrategySpec::Combined { mixing: Mixing::Proportional, task_tag: false },
            StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 },
            StrategySpec::Sequential { variant: SequentialVariant::MergeThenNew, order: vec![], replay: 0.0 },
            StrategySpec::Separate {
                merges: vec![
                    MergeMethod::Linear,
                    MergeMethod::TaskArithmetic { lambda: 0.5 },
                    MergeMethod::Ties { density: 0.2, lambda: 1.0 },
                    MergeMethod::Dare { drop: 0.5, lambda: 0.5, seed: 0 },
                    MergeMethod::Concat,
                ],
                merge_rank: 16,
            },
            StrategySpec::MultiHead { mixing: Mixing::Proportional, head_rank: 8 },
        ]
    }
}

/// A comparison: strategies, the shared budget and hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// Strategies to run.
    pub strategies: Vec<StrategySpec>,
    /// Training tokens every strategy gets.
    pub budget_tokens: usize,
    /// Hyper-parameters shared by every run (`token_budget` is set per stage).
    pub train: TrainConfig,
    /// Evaluation settings.
    pub eval: EvalOptions,
    /// Training seeds to repeat every strategy over (empty: just `train.seed`); scores
    /// are then reported as the mean over seeds with its spread.
    #[serde(default)]
    pub seeds: Vec<u64>,
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

fn tagged(task: &str, r: &Record) -> Record {
    Record { prompt: format!("[{task}] {}", r.prompt), ..r.clone() }
}

struct Ctx<'a> {
    model: &'a Llama,
    tok: &'a TextTokenizer,
    tasks: &'a [TaskData],
    cfg: &'a CompareConfig,
    out: &'a Path,
    base_name: &'a str,
    /// Appended to run names (the seed, when there are several).
    suffix: String,
    control: Control<'a>,
    /// `s{seed index}-r{strategy index}`: names this run's checkpoints.
    key: String,
    on_event: &'a mut dyn FnMut(&CompareEvent),
}

impl Ctx<'_> {
    fn encode(&self, recs: &[Record]) -> Result<Vec<Example>> {
        recs.iter()
            .map(|r| crate::data::encode(self.tok, r, self.cfg.eval.system.as_deref(), self.cfg.train.max_seq_len))
            .collect()
    }

    /// A seeded mixture of every task's training examples, comfortably longer than the
    /// budget (the trainer stops on it), with each draw's `(task, index)`.
    fn mixture(&self, mixing: Mixing, tag: bool) -> Result<(Vec<(usize, usize)>, Vec<Example>)> {
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
        let mix = draws.iter().map(|&(t, i)| per_task[t][i].clone()).collect();
        Ok((draws, mix))
    }

    fn check_cancel(&self) -> Result<()> {
        if self.control.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// The checkpoint of one training stage of the current run.
    fn checkpoint(&self, stage: &str) -> Option<train::CheckpointPlan> {
        self.control.state_dir.map(|d| train::CheckpointPlan {
            path: d.join(format!("ckpt-{}-{}.safetensors", self.key, slug(stage))),
            resume: true,
        })
    }

    fn train(
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
        train::train_objective(model, objective, ex, tc, plan.as_ref(), cancel, &mut |e| {
            on(&CompareEvent::Train { run: r.clone(), stage: s.clone(), event: e.clone() })
        })
    }

    fn eval_all(
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
                self.tok,
                adapter,
                &t.name,
                t.kind,
                &t.labels,
                &recs,
                &self.cfg.eval,
                &mut |_, _| {},
            )?;
            (self.on_event)(&CompareEvent::Evaluated {
                run: run.into(),
                stage: stage.into(),
                task: t.name.clone(),
                value: e.headline().1.value,
            });
            out.push(e);
        }
        Ok(out)
    }

    fn export(&self, dir_name: &str, adapter: &LoraAdapter) -> Result<(PathBuf, u64)> {
        let dir = self.out.join("adapters").join(dir_name);
        peft::save_adapter(&dir, adapter, &self.model.cfg, self.base_name)?;
        let bytes = std::fs::metadata(dir.join(peft::WEIGHTS_FILE)).map(|m| m.len()).unwrap_or(0);
        Ok((dir, bytes))
    }
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

/// Runs every strategy of `cfg` on `tasks` and writes adapters under `out/adapters`.
pub fn compare(
    model: &Llama,
    tok: &TextTokenizer,
    base_name: &str,
    tasks: &[TaskData],
    cfg: &CompareConfig,
    out: &Path,
    control: Control,
    on_event: &mut dyn FnMut(&CompareEvent),
) -> Result<Report> {
    if tasks.is_empty() {
        return Err(Error::Invalid("no tasks to compare".into()));
    }
    if cfg.budget_tokens == 0 {
        return Err(Error::Invalid("the token budget must be positive".into()));
    }
    cfg.train.validate()?;
    let seeds = if cfg.seeds.is_empty() { vec![cfg.train.seed] } else { cfg.seeds.clone() };
    let started = Instant::now();
    if let Some(d) = control.state_dir {
        std::fs::create_dir_all(d)?;
    }
    let base_record = control.state_dir.map(|d| d.join("done-base.json"));
    let base = match base_record.as_deref().and_then(read_record) {
        Some(mut r) => r.remove(0),
        None => {
            let mut ctx = Ctx {
                model,
                tok,
                tasks,
                cfg,
                out,
                base_name,
                suffix: String::new(),
                control,
                key: "base".into(),
                on_event: &mut *on_event,
            };
            let scores = ctx.eval_all("base", "base", model, None, false)?;
            let r = RunResult::new(
                "base model",
                "base",
                &scores,
                0,
                vec![0; tasks.len()],
                started.elapsed().as_secs_f64(),
                0,
                0,
            );
            if let Some(p) = &base_record {
                write_record(p, std::slice::from_ref(&r))?;
            }
            r
        }
    };
    let mut runs = vec![base];
    let mut per_seed = Vec::with_capacity(seeds.len());
    let mut separate_adapters: Vec<LoraAdapter> = Vec::new();
    for (k, &seed) in seeds.iter().enumerate() {
        let scfg = CompareConfig { train: TrainConfig { seed, ..cfg.train.clone() }, ..cfg.clone() };
        let sout = if k == 0 { out.to_path_buf() } else { out.join("seeds").join(format!("seed-{seed}")) };
        let suffix = if seeds.len() > 1 { format!(" [seed {seed}]") } else { String::new() };
        let mut ctx = Ctx {
            model,
            tok,
            tasks,
            cfg: &scfg,
            out: &sout,
            base_name,
            suffix,
            control,
            key: String::new(),
            on_event: &mut *on_event,
        };
        let n = cfg.strategies.len();
        let (seed_runs, adapters) = run_strategies(&mut ctx, k, n * seeds.len())?;
        if k == 0 {
            separate_adapters = adapters;
        }
        per_seed.push(
            seed_runs
                .into_iter()
                .map(|mut r| {
                    if let Some(base) = r.name.strip_suffix(&ctx.suffix) {
                        r.name = base.to_string();
                    }
                    r
                })
                .collect::<Vec<_>>(),
        );
    }
    runs.extend(report::aggregate(per_seed, &seeds));
    let similarity = if separate_adapters.len() == tasks.len() && tasks.len() > 1 {
        Some(report::Similarity::of(&tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>(), &separate_adapters)?)
    } else {
        None
    };
    let report = Report::new(tasks, cfg, runs, similarity);
    report.write(out)?;
    crate::charts::write_charts(&report, &out.join("charts"))?;
    Ok(report)
}

fn read_record(path: &Path) -> Option<Vec<RunResult>> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_record(path: &Path, runs: &[RunResult]) -> Result<()> {
    crate::checkpoint::write_atomic(path, serde_json::to_string(runs)?.as_bytes())
}

/// Runs every strategy once for seed number `k`; events number runs out of `of`.
fn run_strategies(ctx: &mut Ctx, k: usize, of: usize) -> Result<(Vec<RunResult>, Vec<LoraAdapter>)> {
    let (model, tok, tasks, cfg, base_name) = (ctx.model, ctx.tok, ctx.tasks, ctx.cfg, ctx.base_name);
    let first = k * cfg.strategies.len();
    let mut runs: Vec<RunResult> = Vec::new();
    let mut separate_adapters: Vec<LoraAdapter> = Vec::new();
    for (si, spec) in cfg.strategies.iter().enumerate() {
        let name = format!("{}{}", spec.name(), ctx.suffix);
        ctx.key = format!("s{k}-r{si}");
        (ctx.on_event)(&CompareEvent::RunStarted { run: name.clone(), index: first + si, of });
        let record = ctx.control.state_dir.map(|d| d.join(format!("done-{}.json", ctx.key)));
        if let Some(done) = record.as_deref().and_then(read_record) {
            // Finished before an interruption: take its results, and reload the per-task
            // adapters that the similarity matrix needs.
            if matches!(spec, StrategySpec::Separate { .. }) {
                separate_adapters = done[0]
                    .adapter_dirs
                    .iter()
                    .map(|d| peft::load_adapter(Path::new(d), &model.cfg, model.device()))
                    .collect::<Result<_>>()?;
            }
            let wall_s = done[0].wall_s;
            runs.extend(done);
            (ctx.on_event)(&CompareEvent::RunFinished { run: name.clone(), wall_s });
            continue;
        }
        let rss = crate::bench::RssSampler::start();
        let before = runs.len();
        let t0 = Instant::now();
        match spec {
            StrategySpec::Combined { mixing, task_tag } => {
                let (draws, mix) = ctx.mixture(*mixing, *task_tag)?;
                let tc = TrainConfig { token_budget: Some(cfg.budget_tokens), ..cfg.train.clone() };
                let mut adapter = LoraAdapter::new(&model.cfg, cfg.train.lora.clone(), cfg.train.seed, model.device())?;
                let s = ctx.train(&name, "all", model, &mut adapter, &mix, &tc)?;
                let mut task_tokens = vec![0usize; tasks.len()];
                for (&(t, _), n) in draws.iter().zip(&s.tokens_per_example) {
                    task_tokens[t] += n;
                }
                let wall = t0.elapsed().as_secs_f64();
                let scores = ctx.eval_all(&name, "final", model, Some(&adapter), *task_tag)?;
                let (dir, bytes) = ctx.export(&slug(&name), &adapter)?;
                let mut r = RunResult::new(
                    &name,
                    "combined",
                    &scores,
                    s.tokens,
                    task_tokens,
                    wall,
                    adapter.num_parameters(),
                    bytes,
                );
                r.losses = s.losses;
                r.adapter_dirs.push(dir.display().to_string());
                runs.push(r);
            }
            StrategySpec::Sequential { variant, order, replay } => {
                let order: Vec<usize> = if order.is_empty() { (0..tasks.len()).collect() } else { order.clone() };
                if order.iter().any(|&i| i >= tasks.len()) {
                    return Err(Error::Invalid(format!("sequential order {order:?} names a task that does not exist")));
                }
                let stage_budget = cfg.budget_tokens / order.len();
                let mut stage_model = model.clone();
                let mut adapter = LoraAdapter::new(&model.cfg, cfg.train.lora.clone(), cfg.train.seed, model.device())?;
                let mut stage_adapters: Vec<LoraAdapter> = Vec::new();
                let (mut tokens, mut task_tokens, mut losses) = (0usize, vec![0usize; tasks.len()], Vec::new());
                let mut matrix: Vec<Vec<f64>> = Vec::new();
                let mut last_scores = Vec::new();
                let mut eval_s = 0.0;
                for (k, &ti) in order.iter().enumerate() {
                    let mut recs = tasks[ti].train.clone();
                    if *replay > 0.0 && k > 0 {
                        let extra = (recs.len() as f64 * replay).round() as usize;
                        let earlier: Vec<&Record> = order[..k].iter().flat_map(|&j| tasks[j].train.iter()).collect();
                        let mut r = crate::rng::stream(cfg.train.seed, 42, k as u64);
                        let perm = crate::rng::permutation(&mut r, earlier.len());
                        recs.extend(perm.iter().take(extra).map(|&i| earlier[i].clone()));
                    }
                    let ex = ctx.encode(&recs)?;
                    let tc = TrainConfig {
                        token_budget: Some(stage_budget),
                        seed: cfg.train.seed + k as u64,
                        ..cfg.train.clone()
                    };
                    if *variant == SequentialVariant::MergeThenNew && k > 0 {
                        adapter = LoraAdapter::new(
                            &model.cfg,
                            cfg.train.lora.clone(),
                            cfg.train.seed + k as u64,
                            model.device(),
                        )?;
                    }
                    let s = ctx.train(&name, &tasks[ti].name, &stage_model, &mut adapter, &ex, &tc)?;
                    tokens += s.tokens;
                    task_tokens[ti] += s.tokens;
                    losses.extend(s.losses);
                    if *variant == SequentialVariant::MergeThenNew {
                        stage_model = stage_model.with_adapter_merged(&adapter, 1.0)?;
                        stage_adapters.push(adapter.deep_clone()?);
                    }
                    let te = Instant::now();
                    let active = if *variant == SequentialVariant::Continue { Some(&adapter) } else { None };
                    let scores = ctx.eval_all(&name, &tasks[ti].name, &stage_model, active, false)?;
                    eval_s += te.elapsed().as_secs_f64();
                    matrix.push(scores.iter().map(|s| s.headline().1.value).collect());
                    last_scores = scores;
                }
                let final_adapter = match variant {
                    SequentialVariant::Continue => adapter,
                    // The merged model is the base plus every stage's delta: exactly the
                    // concatenation of the stage adapters.
                    SequentialVariant::MergeThenNew => {
                        merge::merge(&stage_adapters.iter().collect::<Vec<_>>(), MergeMethod::Concat, 0)?.0
                    }
                };
                let wall = t0.elapsed().as_secs_f64() - eval_s;
                let (dir, bytes) = ctx.export(&slug(&name), &final_adapter)?;
                let mut r = RunResult::new(
                    &name,
                    "sequential",
                    &last_scores,
                    tokens,
                    task_tokens,
                    wall,
                    final_adapter.num_parameters(),
                    bytes,
                );
                r.losses = losses;
                // One adapter trains at a time; the export concatenates every stage's.
                r.trainable_params = stage_adapters.first().map_or(r.trainable_params, LoraAdapter::num_parameters);
                r.forgetting = Some(report::Forgetting::new(
                    order.iter().map(|&i| tasks[i].name.clone()).collect(),
                    tasks.iter().map(|t| t.name.clone()).collect(),
                    matrix,
                    &order,
                ));
                r.adapter_dirs.push(dir.display().to_string());
                runs.push(r);
            }
            StrategySpec::Separate { merges, merge_rank } => {
                let stage_budget = cfg.budget_tokens / tasks.len();
                let (mut tokens, mut task_tokens, mut losses) = (0usize, vec![0usize; tasks.len()], Vec::new());
                let mut routed = Vec::new();
                let mut bytes_all = 0;
                let mut dirs = Vec::new();
                separate_adapters.clear();
                let mut train_s = 0.0;
                for (ti, t) in tasks.iter().enumerate() {
                    let ex = ctx.encode(&t.train)?;
                    let tc = TrainConfig { token_budget: Some(stage_budget), ..cfg.train.clone() };
                    let mut adapter =
                        LoraAdapter::new(&model.cfg, cfg.train.lora.clone(), cfg.train.seed, model.device())?;
                    let ts = Instant::now();
                    let s = ctx.train(&name, &t.name, model, &mut adapter, &ex, &tc)?;
                    train_s += ts.elapsed().as_secs_f64();
                    tokens += s.tokens;
                    task_tokens[ti] = s.tokens;
                    losses.extend(s.losses);
                    ctx.check_cancel()?;
                    let e = eval::evaluate_task(
                        model,
                        tok,
                        Some(&adapter),
                        &t.name,
                        t.kind,
                        &t.labels,
                        &t.eval,
                        &cfg.eval,
                        &mut |_, _| {},
                    )?;
                    (ctx.on_event)(&CompareEvent::Evaluated {
                        run: name.clone(),
                        stage: t.name.clone(),
                        task: t.name.clone(),
                        value: e.headline().1.value,
                    });
                    routed.push(e);
                    let (dir, bytes) = ctx.export(&format!("separate-{}", slug(&t.name)), &adapter)?;
                    bytes_all += bytes;
                    dirs.push(dir.display().to_string());
                    separate_adapters.push(adapter);
                }
                let params: usize = separate_adapters.iter().map(LoraAdapter::num_parameters).sum();
                let mut r =
                    RunResult::new(&name, "separate", &routed, tokens, task_tokens.clone(), train_s, params, bytes_all);
                r.losses = losses;
                r.adapter_dirs = dirs;
                runs.push(r);
                let refs: Vec<&LoraAdapter> = separate_adapters.iter().collect();
                for m in merges {
                    let mname = format!("separate + merge ({}){}", m.name(), ctx.suffix);
                    let tm = Instant::now();
                    let (merged, _) = merge::merge(&refs, *m, *merge_rank)?;
                    let merge_s = tm.elapsed().as_secs_f64();
                    let scores = ctx.eval_all(&mname, "merged", model, Some(&merged), false)?;
                    let (dir, bytes) = ctx.export(&slug(&mname), &merged)?;
                    let mut r = RunResult::new(
                        &mname,
                        "separate+merge",
                        &scores,
                        tokens,
                        task_tokens.clone(),
                        train_s + merge_s,
                        params,
                        bytes,
                    );
                    r.exported_params = merged.num_parameters();
                    r.adapter_dirs.push(dir.display().to_string());
                    runs.push(r);
                }
            }
            StrategySpec::MultiHead { mixing, head_rank } => {
                let (draws, mix) = ctx.mixture(*mixing, false)?;
                let system = cfg.eval.system.as_deref();
                let label_tokens: Vec<Vec<u32>> = tasks
                    .iter()
                    .map(|t| match t.kind {
                        TaskKind::Classification => heads::label_first_tokens(tok, &t.labels, system),
                        TaskKind::Generation => Ok(vec![]),
                    })
                    .collect::<Result<_>>()?;
                let specs: Vec<(String, TaskKind, Vec<String>)> =
                    tasks.iter().map(|t| (t.name.clone(), t.kind, t.labels.clone())).collect();
                let adapter = LoraAdapter::new(&model.cfg, cfg.train.lora.clone(), cfg.train.seed, model.device())?;
                let mut mh = MultiHead::new(model, adapter, &specs, &label_tokens, *head_rank, cfg.train.seed)?;
                let labels: Vec<Vec<String>> = tasks
                    .iter()
                    .map(|t| if t.kind == TaskKind::Classification { t.labels.clone() } else { vec![] })
                    .collect();
                let train_recs: Vec<Vec<Record>> = tasks.iter().map(|t| t.train.clone()).collect();
                mh.routes = heads::routes(&draws, &mix, &labels, &train_recs)?;
                let tc = TrainConfig { token_budget: Some(cfg.budget_tokens), ..cfg.train.clone() };
                let s = ctx.train(&name, "all", model, &mut mh, &mix, &tc)?;
                let mut task_tokens = vec![0usize; tasks.len()];
                for (&(t, _), n) in draws.iter().zip(&s.tokens_per_example) {
                    task_tokens[t] += n;
                }
                let wall = t0.elapsed().as_secs_f64();
                let mut scores = Vec::new();
                for (ti, t) in tasks.iter().enumerate() {
                    ctx.check_cancel()?;
                    let e = heads::evaluate_task(&mh, model, tok, ti, &t.name, t.kind, &t.eval, &cfg.eval)?;
                    (ctx.on_event)(&CompareEvent::Evaluated {
                        run: name.clone(),
                        stage: "final".into(),
                        task: t.name.clone(),
                        value: e.headline().1.value,
                    });
                    scores.push(e);
                }
                let (dir, bytes) = ctx.export(&slug(&name), &mh.adapter)?;
                mh.save_heads(&dir, model, base_name)?;
                let head_bytes = std::fs::metadata(dir.join(heads::HEADS_FILE)).map(|m| m.len()).unwrap_or(0);
                let mut r = RunResult::new(
                    &name,
                    "multi_head",
                    &scores,
                    s.tokens,
                    task_tokens,
                    wall,
                    mh.num_parameters(),
                    bytes + head_bytes,
                );
                r.losses = s.losses;
                r.adapter_dirs.push(dir.display().to_string());
                runs.push(r);
            }
        }
        let peak = rss.stop();
        for r in &mut runs[before..] {
            r.peak_rss_mib = peak;
        }
        if let Some(p) = &record {
            write_record(p, &runs[before..])?;
        }
        let wall_s = runs[before].wall_s;
        (ctx.on_event)(&CompareEvent::RunFinished { run: name.clone(), wall_s });
    }
    Ok((runs, separate_adapters))
}
