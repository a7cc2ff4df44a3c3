//! The comparison report: per-task scores of every run with intervals, macro averages,
//! forgetting matrices, cost, task similarity and a recommendation in plain words;
//! written as `report.json` and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::lr_search::LrSearch;
use super::{CompareConfig, TaskData};
use crate::adapter::lora::LoraAdapter;
use crate::eval::metrics::{paired, Estimate};
use crate::eval::TaskEval;
use crate::{persist, Result};

/// One task's score in one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskScore {
    /// Task.
    pub task: String,
    /// Headline metric name.
    pub metric: String,
    /// Its value and interval.
    pub value: Estimate,
    /// Every metric.
    pub metrics: Vec<(String, Estimate)>,
    /// Completion loss.
    pub loss: Estimate,
    /// The headline value of each seed, when the run was repeated over several.
    #[serde(default)]
    pub seed_values: Vec<f64>,
    /// The headline metric of every held-out example, in the task's order (1 right, 0
    /// wrong; over several seeds, the share of seeds that got it right): what the paired
    /// comparisons are computed from, kept so anyone can recompute them.
    #[serde(default)]
    pub per_example: Vec<f64>,
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// Sample standard deviation (n − 1).
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

fn mean_estimate(es: &[Estimate]) -> Estimate {
    Estimate {
        value: mean(&es.iter().map(|e| e.value).collect::<Vec<_>>()),
        lo: mean(&es.iter().map(|e| e.lo).collect::<Vec<_>>()),
        hi: mean(&es.iter().map(|e| e.hi).collect::<Vec<_>>()),
    }
}

/// Folds the runs of several seeds (`per_seed[k][j]` is run `j` of seed `k`; every seed
/// ran the same strategies) into one row per run: every estimate is the mean over seeds,
/// each task keeps its per-seed headline values, cost is the mean (peak memory the
/// largest), and forgetting matrices are averaged. One seed passes through unchanged.
pub fn aggregate(per_seed: Vec<Vec<RunResult>>, seeds: &[u64]) -> Vec<RunResult> {
    let mut it = per_seed.into_iter();
    let Some(first) = it.next() else { return vec![] };
    let rest: Vec<Vec<RunResult>> = it.collect();
    first
        .into_iter()
        .enumerate()
        .map(|(j, mut r)| {
            let all: Vec<&RunResult> = std::iter::once(&r).chain(rest.iter().map(|s| &s[j])).collect();
            let all: Vec<RunResult> = all.into_iter().cloned().collect();
            r.seeds = seeds.to_vec();
            if all.len() < 2 {
                return r;
            }
            for (i, sc) in r.scores.iter_mut().enumerate() {
                let of = |f: &dyn Fn(&TaskScore) -> Estimate| all.iter().map(|x| f(&x.scores[i])).collect::<Vec<_>>();
                sc.seed_values = all.iter().map(|x| x.scores[i].value.value).collect();
                if all.iter().all(|x| x.scores[i].per_example.len() == sc.per_example.len()) {
                    sc.per_example = (0..sc.per_example.len())
                        .map(|k| mean(&all.iter().map(|x| x.scores[i].per_example[k]).collect::<Vec<_>>()))
                        .collect();
                }
                sc.value = mean_estimate(&of(&|s| s.value));
                sc.loss = mean_estimate(&of(&|s| s.loss));
                for (m, (name, est)) in sc.metrics.iter_mut().enumerate() {
                    let es: Vec<Estimate> = all
                        .iter()
                        .filter_map(|x| x.scores[i].metrics.get(m).filter(|p| p.0 == *name).map(|p| p.1))
                        .collect();
                    *est = mean_estimate(&es);
                }
            }
            r.wall_s = mean(&all.iter().map(|x| x.wall_s).collect::<Vec<_>>());
            r.peak_rss_mib = all.iter().filter_map(|x| x.peak_rss_mib).reduce(f64::max);
            if let Some(f) = &r.forgetting {
                let order: Vec<usize> =
                    f.stages.iter().map(|st| f.tasks.iter().position(|t| t == st).unwrap_or(0)).collect();
                let matrix: Vec<Vec<f64>> = (0..f.matrix.len())
                    .map(|a| {
                        (0..f.matrix[a].len())
                            .map(|b| {
                                mean(
                                    &all.iter()
                                        .filter_map(|x| x.forgetting.as_ref().map(|g| g.matrix[a][b]))
                                        .collect::<Vec<_>>(),
                                )
                            })
                            .collect()
                    })
                    .collect();
                r.forgetting = Some(Forgetting::new(f.stages.clone(), f.tasks.clone(), matrix, &order));
            }
            r
        })
        .collect()
}

/// Sequential runs: the headline metric of every task after every stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forgetting {
    /// Stage names (the task trained in that stage).
    pub stages: Vec<String>,
    /// Task names (columns).
    pub tasks: Vec<String>,
    /// `matrix[stage][task]`.
    pub matrix: Vec<Vec<f64>>,
    /// Backward transfer: mean over earlier tasks of (final − just after own stage).
    pub backward_transfer: f64,
    /// Mean over earlier tasks of (best before the last stage − final).
    pub average_forgetting: f64,
}

impl Forgetting {
    /// Builds the matrix summary; `order[k]` is the task trained in stage `k`.
    pub fn new(stages: Vec<String>, tasks: Vec<String>, matrix: Vec<Vec<f64>>, order: &[usize]) -> Self {
        let last = matrix.len() - 1;
        let (mut bwt, mut fgt, mut n) = (0.0, 0.0, 0);
        for (k, &ti) in order.iter().enumerate().take(last) {
            bwt += matrix[last][ti] - matrix[k][ti];
            let best = (0..last).map(|j| matrix[j][ti]).fold(f64::NEG_INFINITY, f64::max);
            fgt += best - matrix[last][ti];
            n += 1;
        }
        let d = n.max(1) as f64;
        Self { stages, tasks, matrix, backward_transfer: bwt / d, average_forgetting: fgt / d }
    }
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// Display name.
    pub name: String,
    /// Strategy family.
    pub strategy: String,
    /// Scores per task.
    pub scores: Vec<TaskScore>,
    /// Training tokens in all.
    pub tokens: usize,
    /// Training tokens per task.
    pub task_tokens: Vec<usize>,
    /// Training wall time, seconds.
    pub wall_s: f64,
    /// Parameters trained at any one time.
    pub trainable_params: usize,
    /// Parameters of what is exported (larger than `trainable_params` where adapters are
    /// concatenated, as merge-then-new's final adapter is).
    #[serde(default)]
    pub exported_params: usize,
    /// Training seeds this row averages (one unless repeated).
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// Exported adapter bytes.
    pub adapter_bytes: u64,
    /// Peak resident memory during the run, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Loss per step.
    pub losses: Vec<f64>,
    /// Forgetting (sequential runs).
    pub forgetting: Option<Forgetting>,
    /// Exported adapter folders.
    pub adapter_dirs: Vec<String>,
    /// The peak learning rate it trained at (0 in reports from before it was recorded).
    #[serde(default)]
    pub learning_rate: f64,
    /// How that rate was chosen, when the comparison searched it; its cost is apart from
    /// `wall_s` and `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_search: Option<LrSearch>,
}

/// What a run cost: the figures of a report row that are not scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCost {
    /// Training tokens.
    pub tokens: usize,
    /// Training tokens per task.
    pub task_tokens: Vec<usize>,
    /// Training wall time, seconds.
    pub wall_s: f64,
    /// Parameters trained at any one time.
    pub trainable_params: usize,
    /// Exported adapter bytes.
    pub adapter_bytes: u64,
}

impl RunResult {
    /// A row from evaluations and what the run cost.
    pub fn new(name: &str, strategy: &str, evals: &[TaskEval], cost: RunCost) -> Self {
        let RunCost { tokens, task_tokens, wall_s, trainable_params, adapter_bytes } = cost;
        let scores = evals
            .iter()
            .map(|e| {
                let (m, v) = e.headline();
                TaskScore {
                    task: e.task.clone(),
                    metric: m.into(),
                    value: v,
                    metrics: e.metrics.clone(),
                    loss: e.loss,
                    seed_values: vec![],
                    per_example: e.predictions.iter().map(|p| f64::from(u8::from(p.correct))).collect(),
                }
            })
            .collect();
        Self {
            name: name.into(),
            strategy: strategy.into(),
            scores,
            tokens,
            task_tokens,
            wall_s,
            trainable_params,
            exported_params: trainable_params,
            seeds: vec![],
            adapter_bytes,
            peak_rss_mib: None,
            losses: vec![],
            forgetting: None,
            adapter_dirs: vec![],
            learning_rate: 0.0,
            lr_search: None,
        }
    }

    /// Standard deviation over seeds of the macro average (None with one seed).
    pub fn seed_spread(&self) -> Option<f64> {
        let k = self.scores.first().map_or(0, |s| s.seed_values.len());
        if k < 2 {
            return None;
        }
        let macros: Vec<f64> = (0..k)
            .map(|j| self.scores.iter().map(|s| s.seed_values[j]).sum::<f64>() / self.scores.len() as f64)
            .collect();
        Some(std_dev(&macros))
    }

    /// Macro average of the headline metric, with the mean of the task intervals.
    pub fn macro_average(&self) -> Estimate {
        let n = self.scores.len().max(1) as f64;
        let s = |f: fn(&Estimate) -> f64| self.scores.iter().map(|x| f(&x.value)).sum::<f64>() / n;
        Estimate { value: s(|e| e.value), lo: s(|e| e.lo), hi: s(|e| e.hi) }
    }
}

/// How alike the per-task adapters are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Similarity {
    /// Task names.
    pub tasks: Vec<String>,
    /// Cosine similarity of the full adapter deltas.
    pub cosine: Vec<Vec<f64>>,
    /// Share of entries, among those both tasks keep after TIES trimming (top 20%),
    /// whose signs disagree.
    pub sign_conflict: Vec<Vec<f64>>,
}

impl Similarity {
    /// Computes both matrices from per-task adapters, one weight matrix at a time: a
    /// first pass finds each task's top-20% magnitude threshold (one task's entries held at
    /// once), a second accumulates every pair's sums layer by layer. Holding every task's
    /// dense deltas at once took 1.7 GB for four tasks on the default model.
    pub fn of(tasks: &[String], adapters: &[LoraAdapter]) -> Result<Self> {
        let n = adapters.len();
        let matrix = |a: &LoraAdapter, li: usize, t| -> Result<Vec<f32>> {
            Ok(a.delta(li, t)?.expect("present").to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let keys = |a: &LoraAdapter| -> Vec<(usize, crate::adapter::Target)> {
            a.layers.iter().enumerate().flat_map(|(li, m)| m.keys().map(move |&t| (li, t))).collect()
        };
        // Per-task magnitude thresholds for the top 20% of entries.
        let thresholds: Vec<f32> = adapters
            .iter()
            .map(|a| {
                let mut mags: Vec<f32> = Vec::new();
                for (li, t) in keys(a) {
                    mags.extend(matrix(a, li, t)?.iter().map(|x| x.abs()));
                }
                let k = mags.len() - (mags.len() / 5).max(1);
                mags.select_nth_unstable_by(k, f32::total_cmp);
                Ok(mags[k])
            })
            .collect::<Result<_>>()?;
        // Per pair (i < j): dot, |i|², |j|², entries large in both, of those with opposite signs.
        let mut sums = vec![vec![(0f64, 0f64, 0f64, 0usize, 0usize); n]; n];
        for (li, t) in adapters.first().map(keys).unwrap_or_default() {
            let dense: Vec<Vec<f32>> = adapters.iter().map(|a| matrix(a, li, t)).collect::<Result<_>>()?;
            for i in 0..n {
                for j in i + 1..n {
                    let (dot, ni, nj, both, opposite) = &mut sums[i][j];
                    for (&x, &y) in dense[i].iter().zip(&dense[j]) {
                        *dot += x as f64 * y as f64;
                        *ni += (x as f64).powi(2);
                        *nj += (y as f64).powi(2);
                        if x.abs() >= thresholds[i] && y.abs() >= thresholds[j] && x != 0.0 && y != 0.0 {
                            *both += 1;
                            if x.signum() != y.signum() {
                                *opposite += 1;
                            }
                        }
                    }
                }
            }
        }
        let mut cosine = vec![vec![1.0; n]; n];
        let mut conflict = vec![vec![0.0; n]; n];
        for i in 0..n {
            for j in i + 1..n {
                let (dot, ni, nj, both, opposite) = sums[i][j];
                let c = if ni > 0.0 && nj > 0.0 { dot / (ni.sqrt() * nj.sqrt()) } else { 0.0 };
                cosine[i][j] = c;
                cosine[j][i] = c;
                let r = if both > 0 { opposite as f64 / both as f64 } else { 0.0 };
                conflict[i][j] = r;
                conflict[j][i] = r;
            }
        }
        Ok(Self { tasks: tasks.to_vec(), cosine, sign_conflict: conflict })
    }
}

/// What the numbers say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    /// Best run by macro average.
    pub best: String,
    /// Runner-up.
    pub runner_up: Option<String>,
    /// Macro-average margin over the runner-up.
    pub margin: f64,
    /// Whether the paired comparison cannot separate the runner-up from the best (it is
    /// tied or undecided, not significantly behind), or the gap is within the spread
    /// over seeds.
    pub within_noise: bool,
    /// Best run per task.
    pub per_task: Vec<(String, String, f64)>,
    /// Per task: whether its best run is significantly ahead of the task's runner-up
    /// (paired, McNemar, Holm-adjusted over the tasks).
    #[serde(default)]
    pub per_task_significant: Vec<bool>,
    /// The recommendation in words.
    pub text: String,
}

/// What a paired comparison says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly better (adjusted p < 0.05).
    Better,
    /// Significantly worse.
    Worse,
    /// Not significant, and the interval lies within ±[`TIE_MARGIN`]: equal for practical
    /// purposes.
    Tied,
    /// Not significant, and the interval is too wide to call it a tie: the held-out data
    /// cannot tell.
    Undecided,
}

/// A difference (headline metric, fraction) that counts as no practical difference.
pub const TIE_MARGIN: f64 = 0.05;

/// Two runs compared on the same held-out examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The run.
    pub run: String,
    /// What it is compared with (the best run or the base model).
    pub against: String,
    /// The task; `None` for the macro average over tasks.
    pub task: Option<String>,
    /// `run − against` of the headline metric, with its paired 95% bootstrap interval.
    pub difference: Estimate,
    /// Discordant examples: right in `run` only, right in `against` only.
    pub discordant: (usize, usize),
    /// Exact McNemar two-sided p-value (for the macro average, over the discordant pairs
    /// of all tasks).
    pub p_value: f64,
    /// Holm-adjusted over the comparisons of its family (the macro ones; the per-task
    /// ones).
    pub p_adjusted: f64,
    /// What it says.
    pub verdict: Verdict,
}

/// What the held-out sets can tell apart, planned before any training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// Held-out examples per task.
    pub examples_per_task: Vec<usize>,
    /// The smallest macro-average difference (fraction) detected with 80% power by a
    /// two-sided 5% test, planning for runs that disagree on half the examples.
    pub detectable: f64,
    /// The statement, with a warning above 10 points.
    pub text: String,
}

impl Power {
    /// The power of held-out sets of these sizes.
    pub fn of(examples_per_task: &[usize]) -> Self {
        let detectable = paired::detectable_difference(examples_per_task);
        let sizes = describe_sizes(examples_per_task);
        let mut text = format!(
            "With {sizes}, macro-average gaps under ~{:.0} points will look like ties \
             (80% power, two-sided 5% test).",
            100.0 * detectable
        );
        if detectable > 0.10 {
            let _ = write!(
                text,
                " Warning: that is more than 10 points; about {} held-out examples per task would bring it to 10.",
                paired::examples_needed(0.10, examples_per_task.len())
            );
        }
        Self { examples_per_task: examples_per_task.to_vec(), detectable, text }
    }
}

fn describe_sizes(n: &[usize]) -> String {
    let (lo, hi) = (n.iter().min().copied().unwrap_or(0), n.iter().max().copied().unwrap_or(0));
    let tasks = if n.len() == 1 { "1 task".to_string() } else { format!("{} tasks", n.len()) };
    if lo == hi {
        format!("{lo} held-out examples per task ({tasks})")
    } else {
        format!("{lo}–{hi} held-out examples per task ({tasks})")
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Tasks: name, kind, headline metric, train/eval sizes.
    pub tasks: Vec<(String, String, usize, usize)>,
    /// The settings compared under.
    pub config: CompareConfig,
    /// Every run, the base model first.
    pub runs: Vec<RunResult>,
    /// Task similarity (when separate adapters were trained).
    pub similarity: Option<Similarity>,
    /// The recommendation.
    pub recommendation: Recommendation,
    /// Every trained run against the best one and against the base model, paired: the
    /// macro average first, then each task.
    #[serde(default)]
    pub comparisons: Vec<Comparison>,
    /// What the held-out sets can detect.
    #[serde(default)]
    pub power: Option<Power>,
    /// Every pair of runs (the base model included), on the macro average, paired and
    /// Holm-adjusted over all pairs: the compare page's matrix.
    #[serde(default)]
    pub pairwise: Vec<Comparison>,
}

/// The paired comparisons of `runs` against `best` and against `base`: one family of
/// macro-average comparisons and one of per-task ones, each Holm-adjusted.
fn compare_runs(
    runs: &[&RunResult],
    best: &RunResult,
    base: Option<&RunResult>,
    reps: usize,
    seed: u64,
) -> Vec<Comparison> {
    let mut pairs: Vec<(&RunResult, &RunResult)> =
        runs.iter().filter(|r| r.name != best.name).map(|r| (*r, best)).collect();
    if let Some(b) = base {
        pairs.extend(runs.iter().map(|r| (*r, b)));
    }
    compare_pairs(pairs, reps, seed, true)
}

/// Every pair of `runs` (earlier against later), macro average only, one Holm family.
fn pairwise(runs: &[&RunResult], reps: usize, seed: u64) -> Vec<Comparison> {
    let pairs: Vec<(&RunResult, &RunResult)> =
        runs.iter().enumerate().flat_map(|(i, a)| runs[i + 1..].iter().map(move |b| (*a, *b))).collect();
    compare_pairs(pairs, reps, seed, false)
}

/// Paired comparisons of `pairs` (first against second): the macro average, and each
/// task when `per_task`; the macro ones and the per-task ones each Holm-adjusted as a
/// family.
fn compare_pairs(pairs: Vec<(&RunResult, &RunResult)>, reps: usize, seed: u64, per_task: bool) -> Vec<Comparison> {
    let paired_ok = |a: &RunResult, b: &RunResult| {
        a.scores.len() == b.scores.len()
            && a.scores
                .iter()
                .zip(&b.scores)
                .all(|(x, y)| x.per_example.len() == y.per_example.len() && !x.per_example.is_empty())
    };
    let pairs: Vec<_> = pairs.into_iter().filter(|(a, b)| paired_ok(a, b)).collect();
    let verdict = |d: &Estimate, p: f64| {
        if p < 0.05 {
            if d.value > 0.0 {
                Verdict::Better
            } else {
                Verdict::Worse
            }
        } else if d.lo >= -TIE_MARGIN && d.hi <= TIE_MARGIN {
            Verdict::Tied
        } else {
            Verdict::Undecided
        }
    };
    let mut macros: Vec<Comparison> = Vec::new();
    let mut tasks: Vec<Comparison> = Vec::new();
    for (a, b) in pairs {
        let per: Vec<(&[f64], &[f64])> =
            a.scores.iter().zip(&b.scores).map(|(x, y)| (x.per_example.as_slice(), y.per_example.as_slice())).collect();
        let (mut x, mut y) = (0, 0);
        for (ti, (pa, pb)) in per.iter().enumerate() {
            let (dx, dy) = paired::discordant(pa, pb);
            (x, y) = (x + dx, y + dy);
            if !per_task {
                continue;
            }
            tasks.push(Comparison {
                run: a.name.clone(),
                against: b.name.clone(),
                task: Some(a.scores[ti].task.clone()),
                difference: paired::paired_difference(pa, pb, reps, seed),
                discordant: (dx, dy),
                p_value: paired::mcnemar_exact(dx, dy),
                p_adjusted: 1.0,
                verdict: Verdict::Undecided,
            });
        }
        macros.push(Comparison {
            run: a.name.clone(),
            against: b.name.clone(),
            task: None,
            difference: paired::paired_macro_difference(&per, reps, seed),
            discordant: (x, y),
            p_value: paired::mcnemar_exact(x, y),
            p_adjusted: 1.0,
            verdict: Verdict::Undecided,
        });
    }
    for family in [&mut macros, &mut tasks] {
        let adjusted = paired::holm(&family.iter().map(|c| c.p_value).collect::<Vec<_>>());
        for (c, p) in family.iter_mut().zip(adjusted) {
            c.p_adjusted = p;
            c.verdict = verdict(&c.difference, p);
        }
    }
    macros.extend(tasks);
    macros
}

/// Per task: whether the task's best run is significantly ahead of its runner-up (exact
/// McNemar on the task's examples, Holm-adjusted over the tasks).
fn per_task_margins(trained: &[&RunResult], tasks: usize) -> Vec<bool> {
    let p: Vec<f64> = (0..tasks)
        .map(|ti| {
            let mut order: Vec<&&RunResult> = trained.iter().filter(|r| r.scores.len() > ti).collect();
            order.sort_by(|x, y| y.scores[ti].value.value.total_cmp(&x.scores[ti].value.value));
            match (order.first(), order.get(1)) {
                (Some(a), Some(b)) if a.scores[ti].per_example.len() == b.scores[ti].per_example.len() => {
                    let (x, y) = paired::discordant(&a.scores[ti].per_example, &b.scores[ti].per_example);
                    paired::mcnemar_exact(x, y)
                }
                _ => 1.0,
            }
        })
        .collect();
    paired::holm(&p).into_iter().map(|p| p < 0.05).collect()
}

/// `+11.2 points [4.0, 18.5]`.
fn points(d: &Estimate) -> String {
    // (+ 0.0 turns a negated zero into a plain one: no "-0.0".)
    let p = |x: f64| 100.0 * x + 0.0;
    format!("{:+.1} points [{:.1}, {:.1}]", p(d.value), p(d.lo), p(d.hi))
}

fn p_text(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

/// A learning rate as people write it (`3e-4`, `0.001` → `1e-3`); `-` when unknown.
pub fn lr_text(lr: f64) -> String {
    if lr <= 0.0 {
        return "-".into();
    }
    format!("{lr:e}")
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

impl Report {
    /// Assembles the report and its recommendation. The recommendation speaks in paired
    /// comparisons: every run is scored on the same held-out examples, so each pair of
    /// runs is compared example by example (bootstrap interval of the difference, exact
    /// McNemar test, Holm's adjustment), which tells apart differences that unpaired
    /// intervals call ties.
    pub fn new(
        tasks: &[TaskData],
        config: &CompareConfig,
        runs: Vec<RunResult>,
        similarity: Option<Similarity>,
    ) -> Self {
        let trained: Vec<&RunResult> = runs.iter().filter(|r| r.strategy != "base").collect();
        let base = runs.iter().find(|r| r.strategy == "base");
        let mut ranked: Vec<&RunResult> = trained.clone();
        ranked.sort_by(|a, b| b.macro_average().value.total_cmp(&a.macro_average().value));
        let best = ranked.first().copied();
        let second = ranked.get(1).copied();
        let margin = match (best, second) {
            (Some(b), Some(s)) => b.macro_average().value - s.macro_average().value,
            _ => 0.0,
        };
        let (reps, seed) = (config.eval.bootstrap.max(200), config.eval.seed);
        let comparisons = best.map(|b| compare_runs(&trained, b, base, reps, seed)).unwrap_or_default();
        let all: Vec<&RunResult> = base.into_iter().chain(ranked.iter().copied()).collect();
        let pairwise = pairwise(&all, reps, seed);
        let against_best = |run: &str| {
            comparisons.iter().find(|c| c.task.is_none() && c.run == run && best.is_some_and(|b| c.against == b.name))
        };
        let within_noise = match (best, second) {
            (Some(b), Some(s)) => {
                against_best(&s.name).is_none_or(|c| !matches!(c.verdict, Verdict::Worse))
                    || b.seed_spread().zip(s.seed_spread()).is_some_and(|(x, y)| margin <= x.max(y))
            }
            _ => false,
        };
        let per_task: Vec<(String, String, f64)> = tasks
            .iter()
            .enumerate()
            .map(|(ti, t)| {
                let b = trained.iter().max_by(|x, y| x.scores[ti].value.value.total_cmp(&y.scores[ti].value.value));
                (
                    t.name.clone(),
                    b.map(|r| r.name.clone()).unwrap_or_default(),
                    b.map(|r| r.scores[ti].value.value).unwrap_or(0.0),
                )
            })
            .collect();
        let per_task_significant = per_task_margins(&trained, tasks.len());
        let n_eval: Vec<usize> = tasks.iter().map(|t| t.eval.len()).collect();
        let power = (!n_eval.is_empty()).then(|| Power::of(&n_eval));
        let mut text = String::new();
        if let Some(b) = best {
            let _ = write!(
                text,
                "**{}** is best overall: macro average {}% (base model {}%).",
                b.name,
                pct(b.macro_average().value),
                pct(base.map(|r| r.macro_average().value).unwrap_or(0.0))
            );
            let others: Vec<&Comparison> = ranked.iter().skip(1).filter_map(|r| against_best(&r.name)).collect();
            if !others.is_empty() {
                let _ = write!(
                    text,
                    "\n\nPaired on the same held-out examples ({}; McNemar p Holm-adjusted over {} comparisons):",
                    describe_sizes(&n_eval),
                    comparisons.iter().filter(|c| c.task.is_none()).count()
                );
                for c in others {
                    let d = Estimate { value: -c.difference.value, lo: -c.difference.hi, hi: -c.difference.lo };
                    let _ = match c.verdict {
                        Verdict::Worse => write!(
                            text,
                            "\n- {} beats {} by {} ({}).",
                            b.name,
                            c.run,
                            points(&d),
                            p_text(c.p_adjusted)
                        ),
                        Verdict::Better => write!(text, "\n- {} scores above {} per example: {} ({}).", c.run, b.name, points(&c.difference), p_text(c.p_adjusted)),
                        Verdict::Tied => write!(
                            text,
                            "\n- against {} the difference is {}: tied (the interval lies within ±{:.0} points).",
                            c.run,
                            points(&d),
                            100.0 * TIE_MARGIN
                        ),
                        Verdict::Undecided => write!(
                            text,
                            "\n- against {} the difference is {} ({}): no evidence either way with {}; about {} per task would detect a gap of {:.0} points.",
                            c.run,
                            points(&d),
                            p_text(c.p_adjusted),
                            describe_sizes(&n_eval),
                            paired::examples_needed(d.value.abs().max(TIE_MARGIN), tasks.len()),
                            (100.0 * d.value.abs()).max(100.0 * TIE_MARGIN)
                        ),
                    };
                }
            }
            if let Some(c) = base
                .and_then(|bm| comparisons.iter().find(|c| c.task.is_none() && c.run == b.name && c.against == bm.name))
            {
                let _ = write!(
                    text,
                    "\n\nAgainst the base model: {} ({}{}).",
                    points(&c.difference),
                    p_text(c.p_adjusted),
                    match c.verdict {
                        Verdict::Better => ", a real gain",
                        Verdict::Worse => ", a real loss",
                        Verdict::Tied => ", no practical change",
                        Verdict::Undecided => ", not separable from no change",
                    }
                );
            }
            if second.is_some() {
                let cheapest = trained.iter().min_by(|x, y| x.wall_s.total_cmp(&y.wall_s)).expect("non-empty");
                if cheapest.name != b.name {
                    let _ = write!(
                        text,
                        "\n\nCost: it trained in {:.0}s against {:.0}s for the cheapest ({}), with {} vs {} trainable parameters.",
                        b.wall_s, cheapest.wall_s, cheapest.name, b.trainable_params, cheapest.trainable_params
                    );
                }
            }
            if let Some(search) = &b.lr_search {
                let _ = write!(
                    text,
                    "\n\nLearning rates were searched per strategy on a validation split of the training data: it trained at {} (searching took {:.0}s more).",
                    lr_text(b.learning_rate),
                    search.wall_s()
                );
            }
            if let Some(p) = &power {
                let _ = write!(text, "\n\n{}", p.text);
            }
            text.push_str("\n\nBest per task:");
            for (i, (task, run, v)) in per_task.iter().enumerate() {
                let clear = per_task_significant.get(i).copied().unwrap_or(false);
                let _ = write!(
                    text,
                    "\n- {task}: {run} ({}%){}",
                    pct(*v),
                    if clear { "" } else { ", not significantly ahead of the task's runner-up" }
                );
            }
        }
        let rec = Recommendation {
            best: best.map(|r| r.name.clone()).unwrap_or_default(),
            runner_up: second.map(|r| r.name.clone()),
            margin,
            within_noise,
            per_task,
            per_task_significant,
            text,
        };
        let tasks = tasks
            .iter()
            .map(|t| (t.name.clone(), format!("{:?}", t.kind).to_lowercase(), t.train.len(), t.eval.len()))
            .collect();
        Self { tasks, config: config.clone(), runs, similarity, recommendation: rec, comparisons, power, pairwise }
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::from("# Multitune comparison\n\n");
        let _ = writeln!(s, "Budget: {} training tokens per strategy.\n", self.config.budget_tokens);
        let _ = writeln!(s, "## Recommendation\n\n{}\n", self.recommendation.text);
        s.push_str("## Per-task scores (headline metric, %, 95% interval)\n\n| run |");
        for (t, _, _, _) in &self.tasks {
            let _ = write!(s, " {t} |");
        }
        s.push_str(" macro avg |\n|---|");
        for _ in &self.tasks {
            s.push_str("---|");
        }
        s.push_str("---|\n");
        for r in &self.runs {
            let _ = write!(s, "| {} |", r.name);
            for sc in &r.scores {
                let spread = if sc.seed_values.len() > 1 {
                    format!(" ± {}", pct(std_dev(&sc.seed_values)))
                } else {
                    String::new()
                };
                let _ = write!(s, " {}{spread} [{}, {}] |", pct(sc.value.value), pct(sc.value.lo), pct(sc.value.hi));
            }
            let m = r.macro_average();
            let spread = r.seed_spread().map(|x| format!(" ± {}", pct(x))).unwrap_or_default();
            let _ = writeln!(s, " {}{spread} [{}, {}] |", pct(m.value), pct(m.lo), pct(m.hi));
        }
        if self.config.seeds.len() > 1 {
            let _ = writeln!(
                s,
                "\nMean over {} training seeds ({}); ± is the standard deviation over seeds, the interval the mean of the per-seed 95% bootstrap intervals.",
                self.config.seeds.len(),
                self.config.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            );
        }
        if !self.comparisons.is_empty() {
            s.push_str(
                "\n## Paired comparisons\n\nEach run against the best and against the base model on the same held-out \
                 examples: the difference of the headline metric (points, paired bootstrap 95% interval), the \
                 discordant examples (right only in the run / only in the other), the exact McNemar p-value and \
                 its Holm adjustment over the comparisons of the table.\n\n",
            );
            for (title, per_task) in [("Macro average", false), ("Per task, against the best run", true)] {
                let _ = writeln!(
                    s,
                    "**{title}**\n\n| run | against |{} difference | discordant | p | p (Holm) | verdict |\n|---|---|{}---|---|---|---|---|",
                    if per_task { " task |" } else { "" },
                    if per_task { "---|" } else { "" }
                );
                let best = &self.recommendation.best;
                for c in self
                    .comparisons
                    .iter()
                    .filter(|c| c.task.is_some() == per_task && (!per_task || &c.against == best))
                {
                    let task = c.task.as_deref().map(|t| format!(" {t} |")).unwrap_or_default();
                    let _ = writeln!(
                        s,
                        "| {} | {} |{task} {} | {} / {} | {:.3} | {:.3} | {:?} |",
                        c.run,
                        c.against,
                        points(&c.difference),
                        c.discordant.0,
                        c.discordant.1,
                        c.p_value,
                        c.p_adjusted,
                        c.verdict
                    );
                }
                s.push('\n');
            }
        }
        s.push_str("\n## Cost\n\n| run | learning rate | tokens | tokens per task | wall s | trainable params | exported params | adapter MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|\n");
        for r in self.runs.iter().filter(|r| r.strategy != "base") {
            let per: Vec<String> = r.task_tokens.iter().map(|t| t.to_string()).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {} |",
                r.name,
                lr_text(r.learning_rate),
                r.tokens,
                per.join(" / "),
                r.wall_s,
                r.trainable_params,
                r.exported_params,
                r.adapter_bytes as f64 / (1 << 20) as f64,
                r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
            );
        }
        s.push_str(&self.lr_search_markdown());
        for r in &self.runs {
            if let Some(f) = &r.forgetting {
                let _ = writeln!(
                    s,
                    "\n## Forgetting: {}\n\nHeadline metric (%) of each task (columns) after each stage (rows).\n",
                    r.name
                );
                let _ = writeln!(s, "| after stage | {} |", f.tasks.join(" | "));
                let _ = writeln!(s, "|---|{}", "---|".repeat(f.tasks.len()));
                for (st, row) in f.stages.iter().zip(&f.matrix) {
                    let cells: Vec<String> = row.iter().map(|v| pct(*v)).collect();
                    let _ = writeln!(s, "| {st} | {} |", cells.join(" | "));
                }
                let _ = writeln!(
                    s,
                    "\nBackward transfer {:+.1} points; average forgetting {:.1} points.",
                    100.0 * f.backward_transfer,
                    100.0 * f.average_forgetting
                );
            }
        }
        if let Some(sim) = &self.similarity {
            let _ = writeln!(
                s,
                "\n## Task similarity (per-task adapters)\n\nCosine of the adapter deltas / TIES sign-conflict rate.\n"
            );
            let _ = writeln!(s, "| | {} |", sim.tasks.join(" | "));
            let _ = writeln!(s, "|---|{}", "---|".repeat(sim.tasks.len()));
            for (i, t) in sim.tasks.iter().enumerate() {
                let cells: Vec<String> = (0..sim.tasks.len())
                    .map(|j| format!("{:.3} / {:.2}", sim.cosine[i][j], sim.sign_conflict[i][j]))
                    .collect();
                let _ = writeln!(s, "| {t} | {} |", cells.join(" | "));
            }
        }
        s
    }

    /// The learning-rate search section of `report.md` (empty without a search): one
    /// row per search (a separate run's merges share its search, the same trials).
    fn lr_search_markdown(&self) -> String {
        let mut seen: Vec<&LrSearch> = Vec::new();
        let mut rows = String::new();
        for r in &self.runs {
            let Some(search) = &r.lr_search else { continue };
            if seen.contains(&search) {
                continue;
            }
            seen.push(search);
            let trials: Vec<String> = search
                .trials
                .iter()
                .map(|t| {
                    format!(
                        "{}: {}% / {:.3} ({} tokens)",
                        lr_text(t.learning_rate),
                        pct(t.score),
                        t.loss,
                        t.budget_tokens
                    )
                })
                .collect();
            let _ = writeln!(
                rows,
                "| {} | {} | {} | {} | {:.0} |",
                r.name,
                lr_text(search.chosen),
                trials.join("; "),
                search.tokens(),
                search.wall_s()
            );
        }
        let Some(first) = seen.first() else { return String::new() };
        format!(
            "\n## Learning-rate search\n\nEach strategy's peak learning rate, chosen from {} by successive halving on a \
             validation split carved from the training data ({} examples per task; the held-out examples scored above \
             were not used). Each trial: validation macro average / loss (training tokens). The search's cost is not \
             in the cost table.\n\n| run | chosen | trials | search tokens | search s |\n|---|---|---|---|---|\n{rows}",
            first.grid.iter().map(|&x| lr_text(x)).collect::<Vec<_>>().join(", "),
            first.validation.iter().map(usize::to_string).collect::<Vec<_>>().join(" / ")
        )
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        persist::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        persist::write_atomic(&dir.join("report.md"), self.markdown().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(values: &[f64]) -> RunResult {
        let mut r = RunResult::new(
            "r",
            "combined",
            &[],
            RunCost { tokens: 100, task_tokens: vec![], wall_s: 1.0, trainable_params: 10, adapter_bytes: 10 },
        );
        r.scores = values
            .iter()
            .map(|&v| TaskScore {
                task: "t".into(),
                metric: "accuracy".into(),
                value: Estimate { value: v, lo: v - 0.1, hi: v + 0.1 },
                metrics: vec![("accuracy".into(), Estimate { value: v, lo: v - 0.1, hi: v + 0.1 })],
                loss: Estimate { value: 1.0, lo: 1.0, hi: 1.0 },
                seed_values: vec![],
                per_example: vec![],
            })
            .collect();
        r
    }

    /// A run scoring `right` on each of two tasks of 100 examples: example `i` is right
    /// when `i < right[t]`, so runs with more right answers contain the others' answers.
    fn nested(name: &str, right: [usize; 2]) -> RunResult {
        let mut r = run(&[right[0] as f64 / 100.0, right[1] as f64 / 100.0]);
        r.name = name.into();
        for (sc, k) in r.scores.iter_mut().zip(right) {
            sc.per_example = (0..100).map(|i| f64::from(u8::from(i < k))).collect();
        }
        r
    }

    #[test]
    fn paired_comparisons_give_verdicts_by_hand() {
        let best = nested("best", [80, 80]);
        let close = nested("close", [78, 79]); // 3 discordant pairs in all: tied
        let far = nested("far", [60, 65]); // 35 discordant pairs, all one way: worse
        let mut base = nested("base", [40, 40]);
        base.strategy = "base".into();
        let runs = [&best, &close, &far];
        let cs = compare_runs(&runs, &best, Some(&base), 1000, 1);
        let find = |run: &str, against: &str| {
            cs.iter().find(|c| c.task.is_none() && c.run == run && c.against == against).unwrap()
        };
        let c = find("far", "best");
        assert_eq!(c.discordant, (0, 35));
        assert!((c.difference.value + 0.175).abs() < 1e-12);
        assert!((c.p_value - mcnemar(0, 35)).abs() < 1e-15);
        assert_eq!(c.verdict, Verdict::Worse);
        let c = find("close", "best");
        assert_eq!((c.discordant, c.verdict), ((0, 3), Verdict::Tied), "{c:?}");
        assert!(c.p_adjusted >= c.p_value);
        assert_eq!(find("best", "base").verdict, Verdict::Better);
        // Five macro comparisons (two against the best, three against the base), each
        // family Holm-adjusted; per task as many again per task.
        assert_eq!(cs.iter().filter(|c| c.task.is_none()).count(), 5);
        assert_eq!(cs.iter().filter(|c| c.task.is_some()).count(), 10);
        let all = pairwise(&[&base, &best, &close, &far], 1000, 1);
        assert_eq!(all.len(), 6, "every pair once");
        assert!(all.iter().all(|c| c.task.is_none()));
        let bf = all.iter().find(|c| c.run == "best" && c.against == "far").unwrap();
        assert_eq!((bf.discordant, bf.verdict), ((35, 0), Verdict::Better));
        // Per task, best is not significantly ahead of close (2 and 1 discordant pairs).
        assert_eq!(per_task_margins(&runs, 2), vec![false, false]);
        let runs = [&best, &far];
        assert_eq!(per_task_margins(&runs, 2), vec![true, true]);
        // A wide interval without significance is undecided, not tied.
        let few = |name: &str, k: usize| {
            let mut r = nested(name, [0, 0]);
            for sc in &mut r.scores {
                sc.per_example = (0..10).map(|i| f64::from(u8::from(i < k))).collect();
            }
            r
        };
        let (a, b) = (few("a", 6), few("b", 4));
        let cs = compare_runs(&[&a, &b], &a, None, 1000, 1);
        assert_eq!(cs[0].verdict, Verdict::Undecided, "{:?}", cs[0]);
    }

    fn mcnemar(b: usize, c: usize) -> f64 {
        paired::mcnemar_exact(b, c)
    }

    #[test]
    fn power_is_stated_and_warned_about() {
        let p = Power::of(&[20, 20, 20, 20]);
        assert!((p.detectable - 0.2215).abs() < 1e-3);
        assert!(
            p.text.contains("20 held-out examples per task (4 tasks)") && p.text.contains("~22 points"),
            "{}",
            p.text
        );
        assert!(p.text.contains("Warning"), "{}", p.text);
        let p = Power::of(&[400, 300]);
        assert!(!p.text.contains("Warning") && p.text.contains("300–400"), "{}", p.text);
    }

    #[test]
    fn seeds_average_by_hand() {
        // Two tasks, two seeds: task 0 scores 0.5 then 0.7, task 1 scores 0.9 then 0.9.
        // Means 0.6 and 0.9; per-seed macro 0.7 and 0.8, whose sample std is 0.0707.
        let agg = aggregate(vec![vec![run(&[0.5, 0.9])], vec![run(&[0.7, 0.9])]], &[1, 2]);
        let r = &agg[0];
        assert!((r.scores[0].value.value - 0.6).abs() < 1e-12);
        assert!((r.scores[0].value.lo - 0.5).abs() < 1e-12);
        assert!((r.scores[0].metrics[0].1.value - 0.6).abs() < 1e-12);
        assert_eq!(r.scores[0].seed_values, vec![0.5, 0.7]);
        assert!((r.seed_spread().unwrap() - 0.070_710_678).abs() < 1e-6);
        // One seed passes through.
        let one = aggregate(vec![vec![run(&[0.5])]], &[7]);
        assert_eq!(one[0].seeds, vec![7]);
        assert!(one[0].scores[0].seed_values.is_empty() && one[0].seed_spread().is_none());
    }

    #[test]
    fn forgetting_and_backward_transfer_by_hand() {
        // Two tasks A then B. After A: [0.9, 0.1]; after B: [0.5, 0.8].
        // BWT = 0.5 - 0.9 = -0.4; forgetting = max(0.9) - 0.5 = 0.4.
        let f = Forgetting::new(
            vec!["a".into(), "b".into()],
            vec!["a".into(), "b".into()],
            vec![vec![0.9, 0.1], vec![0.5, 0.8]],
            &[0, 1],
        );
        assert!((f.backward_transfer + 0.4).abs() < 1e-12);
        assert!((f.average_forgetting - 0.4).abs() < 1e-12);
    }
}
