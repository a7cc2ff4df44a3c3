//! The comparison report: per-task scores of every run with intervals, macro averages,
//! forgetting matrices, cost, task similarity and a recommendation in plain words;
//! written as `report.json` and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::{CompareConfig, TaskData};
use crate::eval::TaskEval;
use crate::lora::LoraAdapter;
use crate::metrics::Estimate;
use crate::{checkpoint, Result};

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
    /// Trainable parameters.
    pub trainable_params: usize,
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

impl RunResult {
    /// A row from evaluations and cost figures.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        strategy: &str,
        evals: &[TaskEval],
        tokens: usize,
        task_tokens: Vec<usize>,
        wall_s: f64,
        trainable_params: usize,
        adapter_bytes: u64,
    ) -> Self {
        let scores = evals
            .iter()
            .map(|e| {
                let (m, v) = e.headline();
                TaskScore { task: e.task.clone(), metric: m.into(), value: v, metrics: e.metrics.clone(), loss: e.loss }
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
            adapter_bytes,
            peak_rss_mib: crate::bench::peak_rss_mib(),
            losses: vec![],
            forgetting: None,
            adapter_dirs: vec![],
        }
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
            (Some(b), Some(s)) => s.macro_average().hi >= b.macro_average().value,
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
                        " — within noise: the runner-up's 95% interval reaches the best score, so treat them as tied"
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
                let _ = write!(s, " {} [{}, {}] |", pct(sc.value.value), pct(sc.value.lo), pct(sc.value.hi));
            }
            let m = r.macro_average();
            let _ = writeln!(s, " {} [{}, {}] |", pct(m.value), pct(m.lo), pct(m.hi));
        }
        s.push_str("\n## Cost\n\n| run | tokens | tokens per task | wall s | trainable params | adapter MiB | peak RSS MiB |\n|---|---|---|---|---|---|---|\n");
        for r in self.runs.iter().filter(|r| r.strategy != "base") {
            let per: Vec<String> = r.task_tokens.iter().map(|t| t.to_string()).collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {} | {:.2} | {} |",
                r.name,
                r.tokens,
                per.join(" / "),
                r.wall_s,
                r.trainable_params,
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
        checkpoint::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(self)?.as_bytes())?;
        checkpoint::write_atomic(&dir.join("report.md"), self.markdown().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
