//! Running a comparison: the base model scored once, then every strategy for every seed
//! (each in its own module), results aggregated over seeds, the report and its charts
//! written. Cancellation and resumption: finished runs leave a record and training
//! stages checkpoint in the state folder, so a comparison started again continues.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::adapter::merge::MergeMethod;
use crate::adapter::peft;
use crate::eval::retention::{self, Probe};
use crate::eval::EvalOptions;
use crate::memory::RssSampler;
use crate::model::lora::LoraAdapter;
use crate::strategy::context::{slug, Base, CompareEvent, Control, Ctx};
use crate::strategy::lr_search::{self, LrSearch, Outcome};
use crate::strategy::mixing::Mixing;
use crate::strategy::report::{self, MixingSearch, MixingTrial, Report, Retention, RunCost, RunResult};
use crate::strategy::sizes;
use crate::strategy::spec::{CompareConfig, StrategySpec};
use crate::strategy::task::TaskData;
use crate::strategy::{combined, multi_head, separate, sequential};
use crate::train::tensorboard::{RunLog, TENSORBOARD_DIR};
use crate::train::TrainConfig;
use crate::{Error, Result};
use multitune_api::{AdapterMethod, MixingChoice};

/// Runs every strategy of `cfg` on `tasks` and writes the report, its charts and the
/// adapters (under `out/adapters`) into `out`. The `keep` sets (loaded with
/// [`TaskData::keep_set`]) are scored with the base model and every run's final model,
/// never trained on. With data fractions, every strategy then
/// trains again at each smaller size (its runs, adapters and records under
/// `out/sizes/<percent>`), and the report gains the data-size curves.
pub fn compare(
    base: &Base,
    tasks: &[TaskData],
    keep: &[TaskData],
    cfg: &CompareConfig,
    out: &Path,
    control: Control,
    on_event: &mut dyn FnMut(&CompareEvent),
) -> Result<Report> {
    start(base, tasks, keep, cfg, control)?;
    let mut curves = Curves::new(out);
    let on_event = &mut |e: &CompareEvent| {
        curves.observe(e);
        on_event(e)
    };
    let probe = answer_probe(base, cfg)?;
    let setup = Setup { base, tasks, cfg, out, control, probe: probe.as_ref(), keep };
    let mut runs = vec![score_base(setup, on_event)?];
    let mut searches = vec![Searches::default(); slots(cfg).len()];
    let (per_seed, separate_adapters) = run_seeds(setup, Size::full(cfg), None, &mut searches, on_event)?;
    let seeds = seeds_of(cfg);
    runs.extend(report::aggregate(per_seed, &seeds));
    let best_merge = sizes::best_merge(cfg, &runs);
    let mut smaller = Vec::new();
    for size in Size::smaller(cfg) {
        let (sub, scfg, sout) = size.setup(tasks, cfg, out, best_merge);
        // A smaller size's runs are its curve's points: scores only, no retention or
        // keep sets.
        let at = Setup { tasks: &sub, cfg: &scfg, out: &sout, probe: None, keep: &[], ..setup };
        let (per_seed, _) = run_seeds(at, size, None, &mut searches, on_event)?;
        smaller.push(report::SizeRows {
            fraction: size.fraction,
            examples: sub.iter().map(|t| t.train.len()).collect(),
            runs: report::aggregate(per_seed, &seeds),
        });
    }
    // DoRA adapters' changes depend on the base weights (no low-rank delta to compare).
    let comparable = !separate_adapters.iter().any(|a| a.config.use_dora);
    let similarity = if separate_adapters.len() == tasks.len() && tasks.len() > 1 && comparable {
        Some(report::similarity(&tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>(), &separate_adapters)?)
    } else {
        None
    };
    let report = report::build(tasks, keep, cfg, runs, similarity, smaller);
    report::write(&report, out)?;
    crate::strategy::charts::write_charts(&report, &out.join("charts"))?;
    Ok(report)
}

/// What every part of a comparison runs on: the base model, the tasks, the settings, the
/// output folder, how it is stopped and resumed, the base model's answers to the
/// retention probe (when its runs are measured against them) and the keep sets.
#[derive(Clone, Copy)]
struct Setup<'a> {
    base: &'a Base<'a>,
    tasks: &'a [TaskData],
    cfg: &'a CompareConfig,
    out: &'a Path,
    control: Control<'a>,
    probe: Option<&'a Probe>,
    keep: &'a [TaskData],
}

/// The base model's greedy answers to the retention probe, when `cfg` measures retention
/// (the same every time: a resumed comparison or a worker answers it again rather than
/// storing it).
fn answer_probe(base: &Base, cfg: &CompareConfig) -> Result<Option<Probe>> {
    if !cfg.retention {
        return Ok(None);
    }
    let prompts = retention::probe_prompts()?;
    Probe::answer(base.model, base.tokenizer, cfg.eval.system.as_deref(), &prompts).map(Some)
}

/// One data size of a comparison: its position (0: the full data, the comparison
/// itself; then the smaller ones, largest first), how many there are, and its share.
#[derive(Debug, Clone, Copy)]
struct Size {
    index: usize,
    count: usize,
    fraction: f64,
}

impl Size {
    fn full(cfg: &CompareConfig) -> Self {
        Self { index: 0, count: 1 + sizes::smaller(cfg).len(), fraction: 1.0 }
    }

    /// The sizes below the full data.
    fn smaller(cfg: &CompareConfig) -> Vec<Self> {
        let fractions = sizes::smaller(cfg);
        let count = 1 + fractions.len();
        fractions.into_iter().enumerate().map(|(i, fraction)| Self { index: i + 1, count, fraction }).collect()
    }

    /// Appended to its run names (nothing for the full data).
    fn suffix(&self) -> String {
        if self.index == 0 {
            String::new()
        } else {
            sizes::suffix(self.fraction)
        }
    }

    /// Begins its records' and checkpoints' keys (nothing for the full data, so the
    /// full comparison's files are named as without sizes).
    fn key(&self) -> String {
        if self.index == 0 {
            String::new()
        } else {
            format!("f{}-", self.index)
        }
    }

    /// Its tasks (the training sets cut to its share), settings (the budget scaled, a
    /// separate run's merges cut to the full data's best, [`sizes::scaled`]) and output
    /// folder.
    fn setup(
        &self,
        tasks: &[TaskData],
        cfg: &CompareConfig,
        out: &Path,
        best_merge: Option<MergeMethod>,
    ) -> (Vec<TaskData>, CompareConfig, PathBuf) {
        let dir = out.join("sizes").join(slug(&sizes::percent(self.fraction)));
        (sizes::subset(tasks, self.fraction, cfg.eval.seed), sizes::scaled(cfg, self.fraction, best_merge), dir)
    }
}

/// Every run's training curves and evaluations as TensorBoard event files, in
/// `out/tensorboard/<run>/` (`tensorboard --logdir out/tensorboard` shows the runs side by
/// side). Best effort: a run whose file cannot be written is left out, training goes on.
struct Curves {
    dir: std::path::PathBuf,
    runs: std::collections::HashMap<String, Option<RunLog>>,
}

impl Curves {
    fn new(out: &Path) -> Self {
        Self { dir: out.join(TENSORBOARD_DIR), runs: Default::default() }
    }

    fn log(&mut self, run: &str) -> Option<&mut RunLog> {
        let dir = &self.dir;
        self.runs.entry(run.to_string()).or_insert_with(|| RunLog::create(&dir.join(slug(run))).ok()).as_mut()
    }

    fn observe(&mut self, e: &CompareEvent) {
        match e {
            // A search's trials train on the validation split: not the run's curve.
            CompareEvent::Train { stage, .. }
                if stage.starts_with(LR_TRIAL_PREFIX) || stage.starts_with(MIXING_TRIAL_PREFIX) => {}
            CompareEvent::Train { run, stage, event } => {
                if let Some(log) = self.log(run) {
                    let _ = log.train(stage, event);
                }
            }
            CompareEvent::Evaluated { run, task, value, .. } => {
                if let Some(log) = self.log(run) {
                    let _ = log.eval(task, *value);
                }
            }
            CompareEvent::RunStarted { .. } | CompareEvent::RunFinished { .. } | CompareEvent::RunRestored { .. } => {}
        }
    }
}

/// How the stage of a learning-rate trial's training events begins.
const LR_TRIAL_PREFIX: &str = "lr search ";

/// How the stage of a mixing trial's training events begins.
const MIXING_TRIAL_PREFIX: &str = "mixing search ";

/// One run of a comparison at each seed and size: a strategy of its configuration,
/// trained with an adapter method in a comparison of methods.
#[derive(Debug, Clone)]
struct Slot {
    spec: StrategySpec,
    method: Option<AdapterMethod>,
}

/// What a comparison runs, in order: each strategy, and in a comparison of methods each
/// strategy with each method in turn, as [`StrategySpec::for_method`] says (DoRA without
/// merges, and no DoRA merge-then-new, rather than refusing the whole comparison).
fn slots(cfg: &CompareConfig) -> Vec<Slot> {
    if cfg.methods.is_empty() {
        return cfg.strategies.iter().map(|s| Slot { spec: s.clone(), method: None }).collect();
    }
    cfg.strategies
        .iter()
        .flat_map(|s| cfg.methods.iter().filter_map(|&m| Some(Slot { spec: s.for_method(m)?, method: Some(m) })))
        .collect()
}

/// The seeds a comparison runs: its list, or its one training seed.
fn seeds_of(cfg: &CompareConfig) -> Vec<u64> {
    if cfg.seeds.is_empty() {
        vec![cfg.train.seed]
    } else {
        cfg.seeds.clone()
    }
}

/// Checks what every comparison (or part of one) needs and makes the state folder.
fn start(base: &Base, tasks: &[TaskData], keep: &[TaskData], cfg: &CompareConfig, control: Control) -> Result<()> {
    if tasks.is_empty() {
        return Err(Error::Invalid("no tasks to compare".into()));
    }
    if let Some(p) = cfg.adapter_problem(&base.model.cfg) {
        return Err(Error::Invalid(format!("hyper.rank: {p}")));
    }
    // Every door's check of keep sets, on names (the engine has no dataset ids).
    let named = |ts: &[TaskData]| ts.iter().map(|t| (t.name.clone(), t.name.clone())).collect::<Vec<_>>();
    if let Some((at, problem)) = multitune_api::keep_problems(&named(tasks), &named(keep)).into_iter().next() {
        let which = at.map_or_else(|| "keep sets".to_string(), |i| format!("keep set `{}`", keep[i].name));
        return Err(Error::Invalid(format!("{which}: {problem}")));
    }
    for k in keep {
        if k.eval.is_empty() {
            return Err(Error::Invalid(format!("keep set `{}`: has no examples", k.name)));
        }
    }
    if cfg.budget_tokens == 0 {
        return Err(Error::Invalid("the token budget must be positive".into()));
    }
    cfg.train.validate()?;
    let sized: Vec<(&str, usize)> = tasks.iter().map(|t| (t.name.as_str(), t.train.len())).collect();
    let problems = [sizes::fraction_problems(&cfg.data_fractions), sizes::size_problems(&cfg.data_fractions, &sized)];
    if let Some(p) = problems.iter().flatten().next() {
        return Err(Error::Invalid(format!("data fractions: {p}")));
    }
    let searched =
        cfg.lr_search.is_some() || cfg.tune_merges || cfg.strategies.iter().any(|s| s.mixing() == Some(Mixing::Search));
    if let Some(p) = lr_search::too_small(&sized).into_iter().next().filter(|_| searched) {
        return Err(Error::Invalid(p));
    }
    if let Some(d) = control.state_dir {
        std::fs::create_dir_all(d)?;
    }
    Ok(())
}

/// The base model's row ([`base_run`] in its own context). The held-out examples are the
/// same at every data size: it is scored once.
fn score_base(setup: Setup, on_event: &mut dyn FnMut(&CompareEvent)) -> Result<RunResult> {
    let Setup { base, tasks, cfg, out, control, probe, keep } = setup;
    let (suffix, key, shared) = (String::new(), "base".into(), &RefCell::default());
    let mut ctx =
        Ctx { base, tasks, cfg, out, suffix, control, key, score_stages: true, shared, probe, keep, on_event };
    base_run(&mut ctx)
}

/// Runs every strategy (or only strategy `only`) at data size `size` for every seed of
/// `setup.cfg`: each seed's rows (the size's and seed's suffixes taken off their names)
/// and the first seed's separate adapters. A later seed trains into
/// `out/seeds/seed-<seed>`. `searches[i]` is strategy i's learning-rate search, once done
/// (the first size's is every size's).
fn run_seeds(
    setup: Setup,
    size: Size,
    only: Option<usize>,
    searches: &mut [Searches],
    on_event: &mut dyn FnMut(&CompareEvent),
) -> Result<(Vec<Vec<RunResult>>, Vec<LoraAdapter>)> {
    let Setup { base, tasks, cfg, out, control, probe, keep } = setup;
    let seeds = seeds_of(cfg);
    let mut per_seed = Vec::with_capacity(seeds.len());
    let mut separate_adapters: Vec<LoraAdapter> = Vec::new();
    for (k, &seed) in seeds.iter().enumerate() {
        let scfg = CompareConfig { train: TrainConfig { seed, ..cfg.train.clone() }, ..cfg.clone() };
        let sout = if k == 0 { out.to_path_buf() } else { out.join("seeds").join(format!("seed-{seed}")) };
        let seed_suffix = if seeds.len() > 1 { format!(" [seed {seed}]") } else { String::new() };
        let mut ctx = Ctx {
            base,
            tasks,
            cfg: &scfg,
            out: &sout,
            suffix: format!("{}{seed_suffix}", size.suffix()),
            control,
            key: String::new(),
            // A smaller size's runs are its curve's points: their final scores only.
            score_stages: size.index == 0,
            shared: &RefCell::default(),
            probe,
            keep,
            on_event: &mut *on_event,
        };
        let (seed_runs, adapters) = run_strategies(&mut ctx, k, size, searches, only)?;
        if k == 0 {
            separate_adapters = adapters;
        }
        let suffix = ctx.suffix;
        per_seed.push(
            seed_runs
                .into_iter()
                .map(|mut r| {
                    if let Some(base) = r.name.strip_suffix(&suffix) {
                        r.name = base.to_string();
                    }
                    r
                })
                .collect::<Vec<_>>(),
        );
    }
    Ok((per_seed, separate_adapters))
}

/// The base model's scores: the reference row (recorded, so a resumed comparison does
/// not score it again).
fn base_run(ctx: &mut Ctx) -> Result<RunResult> {
    let record = ctx.control.state_dir.map(|d| d.join("done-base.json"));
    if let Some(mut r) = record.as_deref().and_then(|p| read_rows(p, ctx.out)) {
        return Ok(r.remove(0));
    }
    let started = Instant::now();
    let scores = ctx.eval_all("base", "base", ctx.base.model, None, false)?;
    let cost = RunCost {
        task_tokens: vec![0; ctx.tasks.len()],
        wall_s: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let mut r = report::run_result("base model", "base", &scores, cost);
    // The reference: the base model keeps all of itself, and is what the keep sets'
    // scores are compared with.
    r.retention =
        ctx.probe.map(|p| Retention { kl: 0.0, same_answer: 1.0, prompts: p.examples.len(), seconds: p.answer_s });
    r.keep = ctx.keep_scores("base model", ctx.base.model, &[None])?;
    if let Some(p) = &record {
        write_rows(p, std::slice::from_ref(&r), ctx.out)?;
    }
    Ok(r)
}

/// A finished run's rows as recorded: adapter folders under `out` are kept relative to
/// it, so the records and the adapters can move together (a distributed worker trains
/// in its own folder; the server assembles the report in another).
fn write_rows(path: &Path, rows: &[RunResult], out: &Path) -> Result<()> {
    let rows: Vec<RunResult> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            for d in &mut r.adapter_dirs {
                if let Ok(rel) = Path::new(d.as_str()).strip_prefix(out) {
                    *d = rel.display().to_string();
                }
            }
            r
        })
        .collect();
    write_record(path, &rows)
}

/// Rows recorded by [`write_rows`], their adapter folders resolved against `out`.
fn read_rows(path: &Path, out: &Path) -> Option<Vec<RunResult>> {
    let mut rows: Vec<RunResult> = read_record(path)?;
    for r in &mut rows {
        for d in &mut r.adapter_dirs {
            *d = out.join(d.as_str()).display().to_string();
        }
    }
    Some(rows)
}

/// One independently runnable part of a comparison: what a distributed worker runs as
/// one job. Every part leaves its record in the state folder; once all are there,
/// [`compare`] with that folder only assembles the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The base model's scores.
    Base,
    /// Strategy number `i` of the configuration (in a comparison of methods: run number
    /// `i` of the strategies times the methods, strategy by strategy), for every seed and
    /// data size (a learning-rate search and the seeds after the first depend on the
    /// first, so they stay together).
    Strategy(usize),
}

impl Part {
    /// Every part of `cfg`: the base model, then each strategy.
    pub fn all(cfg: &CompareConfig) -> Vec<Part> {
        std::iter::once(Part::Base).chain((0..slots(cfg).len()).map(Part::Strategy)).collect()
    }

    /// A stable name (`base`, `strategy-2`), as queues store it.
    pub fn name(&self) -> String {
        match self {
            Part::Base => "base".into(),
            Part::Strategy(i) => format!("strategy-{i}"),
        }
    }

    /// The part a [`Part::name`] names.
    pub fn parse(s: &str) -> Option<Part> {
        match s {
            "base" => Some(Part::Base),
            _ => s.strip_prefix("strategy-")?.parse().ok().map(Part::Strategy),
        }
    }
}

/// The record files (in the state folder) that `part` of `cfg` leaves when it finishes
/// (a strategy's: one per data size and seed).
pub fn part_records(cfg: &CompareConfig, part: Part) -> Vec<String> {
    let seeds = seeds_of(cfg).len();
    match part {
        Part::Base => vec!["done-base.json".into()],
        Part::Strategy(si) => std::iter::once(Size::full(cfg))
            .chain(Size::smaller(cfg))
            .flat_map(|size| (0..seeds).map(move |k| format!("done-{}s{k}-r{si}.json", size.key())))
            .collect(),
    }
}

/// Runs one part of a comparison (see [`Part`]) with `control.state_dir` as its record
/// folder: training and scoring as [`compare`] would, the same events, no report.
// `compare`'s arguments and the part: grouping them would only rename them.
#[allow(clippy::too_many_arguments)]
pub fn compare_part(
    base: &Base,
    tasks: &[TaskData],
    keep: &[TaskData],
    cfg: &CompareConfig,
    out: &Path,
    control: Control,
    part: Part,
    on_event: &mut dyn FnMut(&CompareEvent),
) -> Result<()> {
    if control.state_dir.is_none() {
        return Err(Error::Invalid("a comparison part needs a state folder for its record".into()));
    }
    if let Part::Strategy(i) = part {
        let n = slots(cfg).len();
        if i >= n {
            return Err(Error::Invalid(format!("strategy {i} is not one of the {n}")));
        }
    }
    start(base, tasks, keep, cfg, control)?;
    let mut curves = Curves::new(out);
    let on_event = &mut |e: &CompareEvent| {
        curves.observe(e);
        on_event(e)
    };
    let setup = Setup { base, tasks, cfg, out, control, probe: None, keep };
    match part {
        Part::Base => {
            let probe = answer_probe(base, cfg)?;
            score_base(Setup { probe: probe.as_ref(), ..setup }, on_event).map(drop)
        }
        Part::Strategy(si) => {
            let mut searches = vec![Searches::default(); slots(cfg).len()];
            let probe = answer_probe(base, cfg)?;
            // No base-model row here to hold this part's answering of the probe: the
            // part's first measurement counts it.
            probe.iter().for_each(Probe::bill_answering);
            let full = Setup { probe: probe.as_ref(), ..setup };
            let (per_seed, _) = run_seeds(full, Size::full(cfg), Some(si), &mut searches, on_event)?;
            let best_merge = sizes::best_merge(cfg, &report::aggregate(per_seed, &seeds_of(cfg)));
            for size in Size::smaller(cfg) {
                let (sub, scfg, sout) = size.setup(tasks, cfg, out, best_merge);
                let at = Setup { tasks: &sub, cfg: &scfg, out: &sout, keep: &[], ..setup };
                run_seeds(at, size, Some(si), &mut searches, on_event)?;
            }
            Ok(())
        }
    }
}

/// A record in the state folder (a finished run's rows, a learning-rate search), if it
/// is there and reads.
fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_record<T: serde::Serialize + ?Sized>(path: &Path, record: &T) -> Result<()> {
    crate::persist::write_atomic(path, serde_json::to_string(record)?.as_bytes())
}

/// A strategy's searches, once done: they run for the first seed at the full data, and
/// every other seed and size reuses them.
#[derive(Debug, Clone, Default)]
struct Searches {
    lr: Option<LrSearch>,
    mixing: Option<MixingSearch>,
}

/// Runs every strategy (each [`Slot`]) once for seed number `k` at data size `size`
/// (events number the runs of every size and seed). Returns the rows (a separate run adds
/// one per merge) and the per-task adapters of the separate strategy (the first method's
/// that is not DoRA), which the similarity matrix compares. `searches[j]` is slot j's
/// (searched for the first seed, reused for the others).
fn run_strategies(
    ctx: &mut Ctx,
    k: usize,
    size: Size,
    searches: &mut [Searches],
    only: Option<usize>,
) -> Result<(Vec<RunResult>, Vec<LoraAdapter>)> {
    let slots = slots(ctx.cfg);
    let (n, seeds) = (slots.len(), seeds_of(ctx.cfg).len());
    let first = (size.index * seeds + k) * n;
    let of = n * seeds * size.count;
    let mut runs: Vec<RunResult> = Vec::new();
    let mut separate_adapters: Vec<LoraAdapter> = Vec::new();
    for (j, slot) in slots.iter().enumerate() {
        if only.is_some_and(|o| o != j) {
            continue;
        }
        let key = format!("{}s{k}-r{j}", size.key());
        let (index, tag) = (first + j, slot.method.map(AdapterMethod::tag).unwrap_or_default());
        let cfg = CompareConfig {
            train: TrainConfig {
                lora: match slot.method {
                    Some(m) => ctx.cfg.train.lora.clone().with_method(m),
                    None => ctx.cfg.train.lora.clone(),
                },
                ..ctx.cfg.train.clone()
            },
            ..ctx.cfg.clone()
        };
        let suffix = format!("{tag}{}", ctx.suffix);
        let mut sctx = ctx.with_cfg(&cfg);
        (sctx.key, sctx.suffix) = (key, suffix);
        let (rows, adapters) = run_slot(&mut sctx, (j, slot), size, &mut searches[j], (index, of))?;
        if matches!(slot.spec, StrategySpec::Separate { .. })
            && (separate_adapters.is_empty() || separate_adapters.iter().any(|a| a.config.use_dora))
        {
            separate_adapters = adapters;
        }
        runs.extend(rows);
    }
    Ok((runs, separate_adapters))
}

/// Runs slot number `si` (`ctx` carries its key, its run names' suffix and its adapter
/// method), run number `index` of `of`, or restores it from its record: its rows and, for the
/// separate strategy, the per-task adapters.
fn run_slot(
    ctx: &mut Ctx,
    (si, slot): (usize, &Slot),
    size: Size,
    searches: &mut Searches,
    (index, of): (usize, usize),
) -> Result<(Vec<RunResult>, Vec<LoraAdapter>)> {
    let model = ctx.base.model;
    let spec = &slot.spec;
    let name = format!("{}{}", spec.name(), ctx.suffix);
    let record = ctx.control.state_dir.map(|d| d.join(format!("done-{}.json", ctx.key)));
    if let Some(done) = record.as_deref().and_then(|p| read_rows(p, ctx.out)) {
        // Finished before an interruption: take its results, and reload the per-task
        // adapters that the similarity matrix needs.
        let adapters = if matches!(spec, StrategySpec::Separate { .. }) {
            done[0]
                .adapter_dirs
                .iter()
                .map(|d| peft::load_adapter(Path::new(d), &model.cfg, model.device()))
                .collect::<Result<_>>()?
        } else {
            vec![]
        };
        *searches = Searches { lr: done[0].lr_search.clone(), mixing: done[0].mixing_search.clone() };
        let wall_s = done[0].wall_s;
        (ctx.on_event)(&CompareEvent::RunRestored { run: name, index, of, wall_s });
        return Ok((done, adapters));
    }
    (ctx.on_event)(&CompareEvent::RunStarted { run: name.clone(), index, of });
    let rss = RssSampler::start();
    // A searched mixing first (at the run's rate), then the rate with that mixing.
    if spec.mixing() == Some(Mixing::Search) && searches.mixing.is_none() {
        searches.mixing = Some(search_mixing(ctx, spec, &name, si)?);
    }
    let mixing = searches.mixing.clone();
    let spec = &match &mixing {
        Some(m) => spec.with_mixing(m.chosen.into()),
        None => spec.clone(),
    };
    if let Some(grid) = ctx.cfg.lr_search.clone() {
        if searches.lr.is_none() {
            searches.lr = Some(search_lr(ctx, spec, &name, &grid, si)?);
        }
    }
    let search = searches.lr.clone();
    let lr = search.as_ref().map_or(ctx.cfg.train.learning_rate, |s| s.chosen);
    let cfg = CompareConfig { train: TrainConfig { learning_rate: lr, ..ctx.cfg.train.clone() }, ..ctx.cfg.clone() };
    let (mut rows, adapters) = run_spec(&mut ctx.with_cfg(&cfg), spec, &name)?;
    let peak = rss.stop();
    for r in &mut rows {
        r.peak_rss_mib = peak;
        r.learning_rate = lr;
        r.lr_search = search.clone();
        r.method = slot.method;
        // The mixing search is the run's own cost (the learning-rate search, which
        // every strategy has, is reported apart); it ran once, for the full data.
        if let (Some(m), 0) = (&mixing, size.index) {
            r.wall_s += m.wall_s();
            r.mixing_search = Some(m.clone());
        }
    }
    if let Some(p) = &record {
        write_rows(p, &rows, ctx.out)?;
    }
    let wall_s = rows[0].wall_s;
    (ctx.on_event)(&CompareEvent::RunFinished { run: name, wall_s });
    Ok((rows, adapters))
}

/// Trains and scores strategy `spec` as run `name`: its rows and, for the separate
/// strategy, the per-task adapters.
fn run_spec(ctx: &mut Ctx, spec: &StrategySpec, name: &str) -> Result<(Vec<RunResult>, Vec<LoraAdapter>)> {
    Ok(match spec {
        StrategySpec::Combined { mixing, task_tag } => (vec![combined::run(ctx, name, *mixing, *task_tag)?], vec![]),
        StrategySpec::Sequential { variant, order, replay } => {
            (vec![sequential::run(ctx, name, *variant, order, *replay)?], vec![])
        }
        StrategySpec::Separate { merges, merge_rank } => separate::run(ctx, name, merges, *merge_rank)?,
        StrategySpec::MultiHead { mixing, head_rank } => {
            (vec![multi_head::run(ctx, name, *mixing, *head_rank)?], vec![])
        }
    })
}

/// Picks strategy `spec`'s learning rate from `grid` ([`lr_search`]): every trial runs
/// the strategy itself on the tasks' validation split ([`trial`]). Its training steps are
/// reported under the stage `lr search <rate> · …`; its scores are not reported as the
/// run's. Recorded in the state folder, so a resumed comparison does not search again.
fn search_lr(ctx: &mut Ctx, spec: &StrategySpec, name: &str, grid: &[f64], si: usize) -> Result<LrSearch> {
    let record = ctx.control.state_dir.map(|d| d.join(format!("lr-search-r{si}.json")));
    if let Some(s) = record.as_deref().and_then(read_record) {
        return Ok(s);
    }
    let val_tasks = lr_search::validation_tasks(ctx.tasks, ctx.cfg.train.seed)?;
    let validation: Vec<usize> = val_tasks.iter().map(|t| t.eval.len()).collect();
    let search = lr_search::search(grid, ctx.cfg.budget_tokens, validation, &mut |lr, rung, budget| {
        let at =
            Trial { lr, budget, key: format!("{}-lr{rung}", ctx.key), stage: format!("{LR_TRIAL_PREFIX}{lr:e} · ") };
        trial(ctx, spec, name, &val_tasks, at)
    })?;
    if let Some(p) = &record {
        write_record(p, &search)?;
    }
    Ok(search)
}

/// Picks the task mixing of strategy `spec` (a combined or multi-head run asking for
/// `mixing: search`) among [`Mixing::searched`] (those that sample differently at these
/// tasks' sizes: with one left, nothing is trained) by successive halving on the tasks'
/// validation split, at the run's learning rate (before any learning-rate search, which
/// then runs with the mixing chosen). Its steps are reported under `mixing search <mixing>
/// · …`. Recorded in the state folder.
fn search_mixing(ctx: &mut Ctx, spec: &StrategySpec, name: &str, si: usize) -> Result<MixingSearch> {
    let record = ctx.control.state_dir.map(|d| d.join(format!("mixing-search-r{si}.json")));
    if let Some(s) = record.as_deref().and_then(read_record) {
        return Ok(s);
    }
    let val_tasks = lr_search::validation_tasks(ctx.tasks, ctx.cfg.train.seed)?;
    let validation: Vec<usize> = val_tasks.iter().map(|t| t.eval.len()).collect();
    let lr = ctx.cfg.train.learning_rate;
    let sizes: Vec<usize> = ctx.tasks.iter().map(|t| t.train.len()).collect();
    let candidates = Mixing::searched_for(&sizes);
    let (chosen, tried) = lr_search::halving(&candidates, ctx.cfg.budget_tokens, &mut |m, rung, budget| {
        let stage = format!("{MIXING_TRIAL_PREFIX}{} · ", MixingChoice::from(m).name());
        let at = Trial { lr, budget, key: format!("{}-mix{rung}", ctx.key), stage };
        trial(ctx, &spec.with_mixing(m), name, &val_tasks, at)
    })?;
    let search = MixingSearch {
        candidates: candidates.into_iter().map(MixingChoice::from).collect(),
        chosen: chosen.into(),
        validation,
        trials: tried
            .into_iter()
            .map(|(m, rung, budget_tokens, o)| MixingTrial {
                mixing: m.into(),
                rung,
                budget_tokens,
                tokens: o.tokens,
                score: o.score,
                loss: o.loss,
                wall_s: o.wall_s,
            })
            .collect(),
    };
    if let Some(p) = &record {
        write_record(p, &search)?;
    }
    Ok(search)
}

/// One trial of a search: its learning rate and token budget, its checkpoints' key, and
/// the prefix of its training events' stage.
struct Trial {
    lr: f64,
    budget: usize,
    key: String,
    stage: String,
}

/// Trains and scores strategy `spec` on `val_tasks` (the tasks' validation split) as one
/// trial of a search, in a scratch folder removed afterwards: the validation macro
/// average of its final model (no forgetting matrix; a separate run routed only — the
/// rate shapes the per-task adapters every merge is built from, and scoring five merges
/// per trial would make the search cost scale with the merges) and its mean loss.
fn trial(ctx: &mut Ctx, spec: &StrategySpec, name: &str, val_tasks: &[TaskData], at: Trial) -> Result<Outcome> {
    let t0 = Instant::now();
    let spec = match spec {
        StrategySpec::Separate { merge_rank, .. } => StrategySpec::Separate { merges: vec![], merge_rank: *merge_rank },
        other => other.clone(),
    };
    let scratch = tempfile::Builder::new().prefix(".search-").tempdir_in(ctx.out)?;
    let cfg = CompareConfig {
        budget_tokens: at.budget,
        train: TrainConfig { learning_rate: at.lr, ..ctx.cfg.train.clone() },
        eval: EvalOptions { bootstrap: 0, ..ctx.cfg.eval.clone() },
        seeds: vec![],
        lr_search: None,
        strategies: vec![spec.clone()],
        retention: false,
        data_fractions: vec![],
        tune_merges: false,
        methods: vec![],
    };
    let on = &mut *ctx.on_event;
    let mut forward = |e: &CompareEvent| {
        if let CompareEvent::Train { run, stage, event } = e {
            on(&CompareEvent::Train { run: run.clone(), stage: format!("{}{stage}", at.stage), event: event.clone() });
        }
    };
    let mut sub = Ctx {
        base: ctx.base,
        tasks: val_tasks,
        cfg: &cfg,
        out: scratch.path(),
        suffix: String::new(),
        control: Control { cancel: ctx.control.cancel, state_dir: None },
        key: at.key,
        score_stages: false,
        // The trials train on the validation split: nothing to share with the runs.
        shared: &RefCell::default(),
        probe: None,
        keep: &[],
        on_event: &mut forward,
    };
    let (rows, _) = run_spec(&mut sub, &spec, name)?;
    let n = rows.len().max(1) as f64;
    let score = rows.iter().map(|r| r.macro_average().value).sum::<f64>() / n;
    let loss = rows
        .iter()
        .map(|r| r.scores.iter().map(|s| s.loss.value).sum::<f64>() / r.scores.len().max(1) as f64)
        .sum::<f64>()
        / n;
    let tokens = rows.first().map_or(0, |r| r.tokens);
    Ok(Outcome { score, loss, tokens, wall_s: t0.elapsed().as_secs_f64() })
}
