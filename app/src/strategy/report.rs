//! The comparison report: per-task scores of every run with intervals, macro averages,
//! forgetting matrices, cost, task similarity and a recommendation in plain words;
//! written as `report.json` and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::{CompareConfig, TaskData};
use crate::adapter::lora::LoraAdapter;
use crate::eval::metrics::Estimate;
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
    /// Computes both matrices from per-task adapters.
    pub fn of(tasks: &[String], adapters: &[LoraAdapter]) -> Result<Self> {
        let n = adapters.len();
        let dense: Vec<Vec<Vec<f32>>> = adapters
            .iter()
            .map(|a| {
                let mut out = Vec::new();
                for (li, m) in a.layers.iter().enumerate() {
                    for &t in m.keys() {
                        out.push(
                            a.delta(li, t)?.expect("present").to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
                        );
                    }
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        let mut cosine = vec![vec![1.0; n]; n];
        let mut conflict = vec![vec![0.0; n]; n];
        // Per-task magnitude thresholds for the top 20% of entries.
        let thresholds: Vec<f32> = dense
            .iter()
            .map(|layers| {
                let mut mags: Vec<f32> = layers.iter().flatten().map(|x| x.abs()).collect();
                let k = mags.len() - (mags.len() / 5).max(1);
                mags.select_nth_unstable_by(k, f32::total_cmp);
                mags[k]
            })
            .collect();
        for i in 0..n {
            for j in i + 1..n {
                let (mut dot, mut ni, mut nj, mut both, mut opposite) = (0f64, 0f64, 0f64, 0usize, 0usize);
                for (a, b) in dense[i].iter().zip(&dense[j]) {
                    for (&x, &y) in a.iter().zip(b) {
                        dot += x as f64 * y as f64;
                        ni += (x as f64).powi(2);
                        nj += (y as f64).powi(2);
                        if x.abs() >= thresholds[i] && y.abs() >= thresholds[j] && x != 0.0 && y != 0.0 {
                            both += 1;
                            if x.signum() != y.signum() {
                                opposite += 1;
                            }
                        }
                    }
                }
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
    /// Whether the runner-up's interval reaches the best value.
    pub within_noise: bool,
    /// Best run per task.
    pub per_task: Vec<(String, String, f64)>,
    /// The recommendation in words.
    pub text: String,
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
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

impl Report {
    /// Assembles the report and its recommendation.
    pub fn new(
        tasks: &[TaskData],
        config: &CompareConfig,
        runs: Vec<RunResult>,
        similarity: Option<Similarity>,
    ) -> Self {
        let trained: Vec<&RunResult> = runs.iter().filter(|r| r.strategy != "base").collect();
        let mut ranked: Vec<&RunResult> = trained.clone();
        ranked.sort_by(|a, b| b.macro_average().value.total_cmp(&a.macro_average().value));
        let best = ranked.first().copied();
        let second = ranked.get(1).copied();
        let margin = match (best, second) {
            (Some(b), Some(s)) => b.macro_average().value - s.macro_average().value,
            _ => 0.0,
        };
        let within_noise = match (best, second) {
            (Some(b), Some(s)) => {
                s.macro_average().hi >= b.macro_average().value
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
        let mut text = String::new();
        if let Some(b) = best {
            let base = runs.iter().find(|r| r.strategy == "base").map(|r| r.macro_average().value).unwrap_or(0.0);
            let _ = write!(
                text,
                "**{}** is best overall: macro average {}% (base model {}%)",
                b.name,
                pct(b.macro_average().value),
                pct(base)
            );
            if let Some(s) = second {
                let _ = write!(
                    text,
                    ", {} points ahead of {}{}.",
                    pct(margin),
                    s.name,
                    if within_noise {
                        " — within noise (the runner-up's 95% interval reaches the best score, or the gap is no larger than the spread over seeds), so treat them as tied"
                    } else {
                        ""
                    }
                );
                let cheapest = trained.iter().min_by(|x, y| x.wall_s.total_cmp(&y.wall_s)).expect("non-empty");
                if cheapest.name != b.name {
                    let _ = write!(
                        text,
                        " Cost: it trained in {:.0}s against {:.0}s for the cheapest ({}), with {} vs {} trainable parameters.",
                        b.wall_s, cheapest.wall_s, cheapest.name, b.trainable_params, cheapest.trainable_params
                    );
                }
            } else {
                text.push('.');
            }
            for (task, run, v) in &per_task {
                let _ = write!(text, "\n- {task}: {run} ({}%)", pct(*v));
            }
        }
        let rec = Recommendation {
            best: best.map(|r| r.name.clone()).unwrap_or_default(),
            runner_up: second.map(|r| r.name.clone()),
            margin,
            within_noise,
            per_task,
            text,
        };
        let tasks = tasks
            .iter()
            .map(|t| (t.name.clone(), format!("{:?}", t.kind).to_lowercase(), t.train.len(), t.eval.len()))
            .collect();
        Self { tasks, config: config.clone(), runs, similarity, recommendation: rec }
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
        s.push_str("\n## Cost\n\n| run | tokens | tokens per task | wall s | trainable params | exported params | adapter MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n");
        for r in self.runs.iter().filter(|r| r.strategy != "base") {
            let per: Vec<String> = r.task_tokens.iter().map(|t| t.to_string()).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {} |",
                r.name,
                r.tokens,
                per.join(" / "),
                r.wall_s,
                r.trainable_params,
                r.exported_params,
                r.adapter_bytes as f64 / (1 << 20) as f64,
                r.peak_rss_mib.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
            );
        }
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
            })
            .collect();
        r
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
