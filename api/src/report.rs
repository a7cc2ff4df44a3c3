//! The comparison's report, as `report.json` holds it and the dashboard renders it: every
//! run's per-task scores with their intervals, forgetting matrices, cost, task
//! similarity, the paired comparisons and the recommendation. The engine computes it
//! (`multitune::strategy::report`); these are its types.

use crate::AdapterMethod;
use serde::{Deserialize, Serialize};

/// A metric's value with its 95% interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The value on the full set.
    pub value: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
}

/// A task as the report lists it: name, kind, train and eval sizes.
pub type TaskInfo = (String, String, usize, usize);

/// One task's score in one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// What the model kept of the base model after each stage (the retention probe), when
    /// measured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retention: Vec<Retention>,
}

/// What a model keeps of the base model's general ability, on the retention probe (our
/// own varied prompts, answered once by the base model, greedy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Retention {
    /// Mean per-token KL divergence (nats) from the base model's next-token distributions
    /// along the base answers (teacher-forced): 0 for the base model.
    pub kl: f64,
    /// Share of probe prompts whose greedy answer is still exactly the base model's.
    pub same_answer: f64,
    /// Probe prompts measured.
    pub prompts: usize,
    /// Seconds the measurement took (for the base model: answering the probe and its one
    /// pass). 0 where it was taken once for several runs and counted under the first (a
    /// training stage they share); a mean's is the sum of its parts'.
    #[serde(default)]
    pub seconds: f64,
}

impl Retention {
    /// The mean of several measurements on the same probe (`None` for none).
    pub fn mean(all: &[Retention]) -> Option<Retention> {
        let first = all.first()?;
        let n = all.len() as f64;
        Some(Retention {
            kl: all.iter().map(|k| k.kl).sum::<f64>() / n,
            same_answer: all.iter().map(|k| k.same_answer).sum::<f64>() / n,
            prompts: first.prompts,
            seconds: all.iter().map(|k| k.seconds).sum(),
        })
    }
}

impl Forgetting {
    /// Builds the matrix summary; `order[k]` is the index (in `tasks`) of the task trained
    /// in stage `k`.
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
        Self { stages, tasks, matrix, backward_transfer: bwt / d, average_forgetting: fgt / d, retention: vec![] }
    }
}

/// One row of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Where each stage after the first begins in `losses` (its first step's index):
    /// the stages of sequential and separate runs, one task after another.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stage_starts: Vec<usize>,
    /// Mixed runs (combined, multi-head): each task's mean loss at every step, from the
    /// same forward passes as `losses` (`None` at a step without an example of the task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub task_losses: Vec<(String, Vec<Option<f64>>)>,
    /// Forgetting (sequential runs).
    pub forgetting: Option<Forgetting>,
    /// What the run keeps of the base model (the retention probe; a separate run's
    /// routed row: the mean over its per-task adapters; a multi-head run: its shared
    /// adapter), when measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Its final model's scores on the keep sets (datasets that must not get worse,
    /// never trained on), in [`KeepSets::sets`]' order (a separate run's routed row: the
    /// mean over its per-task adapters, example by example).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep: Vec<TaskScore>,
    /// Exported adapter folders.
    pub adapter_dirs: Vec<String>,
    /// The peak learning rate it trained at (0 in reports from before it was recorded).
    #[serde(default)]
    pub learning_rate: f64,
    /// How that rate was chosen, when the comparison searched it; its cost is apart from
    /// `wall_s` and `tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr_search: Option<LrSearch>,
    /// How a combined or multi-head run's task mixing was chosen (`mixing: search`);
    /// its cost is in `wall_s` (its training tokens: [`MixingSearch::tokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixing_search: Option<MixingSearch>,
    /// How a merge's parameters were tuned (`tune_merges`: a tuned merge's row); its
    /// cost is in `wall_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_tuning: Option<MergeTuning>,
    /// The adapter method it trained with, in a comparison of methods (`methods`; its
    /// name then ends in the method's [`AdapterMethod::tag`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<AdapterMethod>,
}

impl RunResult {
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

    /// Its name without its adapter method's tag (in a comparison of methods, the rows
    /// of one strategy trained with each method share it).
    pub fn plain_name(&self) -> &str {
        self.method.and_then(|m| self.name.strip_suffix(&m.tag())).unwrap_or(&self.name)
    }

    /// Whether this row is the base model's (scored, not trained).
    pub fn is_base(&self) -> bool {
        self.strategy == "base"
    }
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn std_dev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    (xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
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

/// What the numbers say.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report<C = serde_json::Value> {
    /// Tasks: name, kind, headline metric, train/eval sizes.
    pub tasks: Vec<(String, String, usize, usize)>,
    /// The settings compared under, as the engine ran them (`multitune::strategy::
    /// CompareConfig`; the dashboard reads the report with `C` left as plain JSON).
    pub config: C,
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
    pub power: Option<crate::Power>,
    /// Every pair of runs (the base model included), on the macro average, paired and
    /// Holm-adjusted over all pairs: the compare page's matrix.
    #[serde(default)]
    pub pairwise: Vec<Comparison>,
    /// Data-size curves, when the comparison trained at several sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_sizes: Option<DataSizes>,
    /// The keep sets, when the comparison had any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<KeepSets>,
    /// The adapter methods compared, when the comparison trained with several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Methods>,
}

/// A comparison of adapter methods: every strategy trained with each method under the
/// same budget, each method's row against the same row trained with the first method.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Methods {
    /// The methods, in the order asked for; the first is what the others are compared
    /// with.
    pub methods: Vec<AdapterMethod>,
    /// Each row that ran with more than one method (a strategy, a merge), with its
    /// choice.
    pub rows: Vec<MethodRow>,
    /// Each row with every later method against the same row with the first, paired on
    /// the held-out examples: the macro averages first, then each task (each family
    /// Holm-adjusted).
    pub comparisons: Vec<Comparison>,
    /// Which method to use where, in words.
    pub text: String,
}

/// One row of the report (a strategy, a merge) as trained with each method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodRow {
    /// Its name without the method's tag (`combined (proportional)`).
    pub run: String,
    /// Each method it ran with, and that run's row name.
    pub runs: Vec<(AdapterMethod, String)>,
    /// The method to use for it: the one furthest ahead of the first method among those
    /// significantly ahead; with none ahead, the cheapest (training seconds) of those not
    /// significantly behind.
    pub choice: AdapterMethod,
    /// Why, in words.
    pub reason: String,
}

impl Methods {
    /// The comparison of `run` (a row name) against the same row with the first method,
    /// on the macro average.
    pub fn against_first(&self, run: &str) -> Option<&Comparison> {
        self.comparisons.iter().find(|c| c.task.is_none() && c.run == run)
    }

    /// `row`'s run (among `runs`, the report's) with each method in turn — `None` where
    /// it did not run with it — and, after the first method, its comparison against the
    /// first: a methods table's cells.
    pub fn cells<'a>(
        &'a self,
        row: &MethodRow,
        runs: &'a [RunResult],
    ) -> Vec<Option<(&'a RunResult, Option<&'a Comparison>)>> {
        self.methods
            .iter()
            .map(|method| {
                let (_, name) = row.runs.iter().find(|(x, _)| x == method)?;
                let r = runs.iter().find(|r| &r.name == name)?;
                Some((r, self.against_first(name)))
            })
            .collect()
    }
}

/// Keep sets: datasets marked "must not get worse", scored with every run's final model
/// (and the base model) on all their examples, never trained on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeepSets {
    /// Each keep set: name, kind and the examples scored.
    pub sets: Vec<(String, String, usize)>,
    /// Every trained run against the base model on each keep set (`task` names the keep
    /// set), paired on its examples, Holm-adjusted over all of them.
    pub comparisons: Vec<Comparison>,
    /// Which runs make a keep set worse than the base model, in words.
    pub text: String,
}

impl KeepSets {
    /// The comparisons of runs that make a keep set significantly worse than the base
    /// model.
    pub fn worse(&self) -> impl Iterator<Item = &Comparison> {
        self.comparisons.iter().filter(|c| c.verdict == Verdict::Worse)
    }

    /// Run `run` against the base model on keep set `set`.
    pub fn of(&self, run: &str, set: &str) -> Option<&Comparison> {
        self.comparisons.iter().find(|c| c.run == run && c.task.as_deref() == Some(set))
    }
}

/// Data-size curves: every strategy trained again on nested, seeded shares of each task's
/// training set (the budget scaled with the share, so every size trains the same number
/// of epochs), scored on the same held-out examples as the full comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSizes {
    /// Every size, smallest first; the last is the full data.
    pub sizes: Vec<DataSize>,
    /// Where the winner changes, or that it does not, in words.
    pub text: String,
}

/// The runs of one data size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataSize {
    /// The share of every task's training set (1 for the full data).
    pub fraction: f64,
    /// Training examples of each task at this size, in the report's task order.
    pub examples: Vec<usize>,
    /// The trained runs at this size, named as in the report's `runs`; empty for the full
    /// data, whose runs are the report's `runs` (see [`Report::runs_at`]).
    pub runs: Vec<RunResult>,
    /// The run with the best macro average at this size.
    pub leader: String,
    /// The leader against the runner-up on the macro average, paired on the held-out
    /// examples (Holm-adjusted over the sizes); `None` with one trained run.
    pub lead: Option<Comparison>,
}

impl DataSize {
    /// Mean training examples per task.
    pub fn mean_examples(&self) -> f64 {
        self.examples.iter().sum::<usize>() as f64 / self.examples.len().max(1) as f64
    }
}

impl<C> Report<C> {
    /// The trained runs at data size `k` of [`Report::data_sizes`] (the report's own runs
    /// for the full data).
    pub fn runs_at(&self, k: usize) -> Vec<&RunResult> {
        match self.data_sizes.as_ref().and_then(|d| d.sizes.get(k)) {
            Some(s) if s.fraction < 1.0 => s.runs.iter().collect(),
            _ => self.runs.iter().filter(|r| !r.is_base()).collect(),
        }
    }

    /// What the retention probe cost the comparison, in seconds (`None` when it was not
    /// measured): every run's measurement, or a sequential run's after each of its stages
    /// (its last is the run's), each shared measurement once.
    pub fn retention_seconds(&self) -> Option<f64> {
        let mut measured = false;
        let mut seconds = 0.0;
        for r in &self.runs {
            let stages = r.forgetting.as_ref().map(|f| f.retention.as_slice()).filter(|k| !k.is_empty());
            for k in stages.map_or_else(|| r.retention.into_iter().collect(), |k| k.to_vec()) {
                measured = true;
                seconds += k.seconds;
            }
        }
        measured.then_some(seconds)
    }
}

/// One trial of the search: a candidate rate trained on a rung's budget and scored on the
/// validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The peak learning rate tried.
    pub learning_rate: f64,
    /// Its rung (0 first).
    pub rung: usize,
    /// Training tokens it was given.
    pub budget_tokens: usize,
    /// Training tokens it used.
    pub tokens: usize,
    /// Macro average of the headline metric on the validation split (0–1).
    pub score: f64,
    /// Mean validation loss over the tasks (breaks ties).
    pub loss: f64,
    /// Wall seconds, training and scoring.
    pub wall_s: f64,
}

/// A strategy's search: what it tried, what it chose and what that cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSearch {
    /// The grid searched.
    pub grid: Vec<f64>,
    /// The rate chosen.
    pub chosen: f64,
    /// Validation examples per task.
    pub validation: Vec<usize>,
    /// Every trial, in order.
    pub trials: Vec<Trial>,
}

impl LrSearch {
    /// Training tokens of every trial.
    pub fn tokens(&self) -> usize {
        self.trials.iter().map(|t| t.tokens).sum()
    }

    /// Wall seconds of every trial.
    pub fn wall_s(&self) -> f64 {
        self.trials.iter().map(|t| t.wall_s).sum()
    }
}

/// One trial of a mixing search: a mixing trained on a rung's budget and scored on the
/// validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixingTrial {
    /// The mixing tried.
    pub mixing: crate::MixingChoice,
    /// Rung of the successive halving (0 first).
    pub rung: usize,
    /// Tokens the rung allowed.
    pub budget_tokens: usize,
    /// Training tokens it used.
    pub tokens: usize,
    /// Macro average of the headline metric on the validation split (0–1).
    pub score: f64,
    /// Mean validation loss over the tasks (breaks ties).
    pub loss: f64,
    /// Wall seconds, training and scoring.
    pub wall_s: f64,
}

/// A run's mixing search: what it tried, what it chose and what that cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MixingSearch {
    /// The mixings searched: those that sample differently at the tasks' sizes (one,
    /// with no trial, when they all sample alike, as for tasks of equal size).
    pub candidates: Vec<crate::MixingChoice>,
    /// The mixing chosen (the run trained with it).
    pub chosen: crate::MixingChoice,
    /// Validation examples per task.
    pub validation: Vec<usize>,
    /// Every trial, in order.
    pub trials: Vec<MixingTrial>,
}

impl MixingSearch {
    /// Training tokens of every trial.
    pub fn tokens(&self) -> usize {
        self.trials.iter().map(|t| t.tokens).sum()
    }

    /// Wall seconds of every trial.
    pub fn wall_s(&self) -> f64 {
        self.trials.iter().map(|t| t.wall_s).sum()
    }
}

/// One set of merge parameters tried on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeCandidate {
    /// The parameters in words (`density 0.2, λ 1`).
    pub params: String,
    /// Macro average of the headline metric on the validation split (0–1).
    pub score: f64,
    /// Mean validation loss over the tasks (breaks ties).
    pub loss: f64,
    /// Validation examples it was scored on, over all tasks: the whole split's where it
    /// reached the search's last rung, fewer where successive halving left it out
    /// earlier (its figures are then those examples'). 0 in reports from before this
    /// was recorded.
    #[serde(default)]
    pub examples: usize,
}

/// How a tuned merge's parameters were chosen, and what they did on the held-out
/// examples against the same merge at its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeTuning {
    /// The merge method (`ties`).
    pub method: String,
    /// Its default parameters in words.
    pub default_params: String,
    /// The parameters chosen, in words.
    pub chosen_params: String,
    /// Validation examples per task (carved from the training data, which the per-task
    /// adapters trained on; the held-out examples are never used).
    pub validation: Vec<usize>,
    /// Every candidate, the defaults first.
    pub candidates: Vec<MergeCandidate>,
    /// Wall seconds of the search (merging and scoring every candidate).
    pub wall_s: f64,
    /// The row of the same merge at its defaults.
    pub default_run: String,
    /// Tuned − defaults on the held-out examples, paired (filled when the report is
    /// assembled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vs_default: Option<Comparison>,
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

    #[test]
    fn retention_seconds_count_each_measurement_once() {
        let k = |seconds| Retention { kl: 0.1, same_answer: 0.5, prompts: 10, seconds };
        let run = |retention, stages: Vec<Retention>| RunResult {
            retention,
            forgetting: (!stages.is_empty()).then(|| Forgetting {
                retention: stages,
                ..Forgetting::new(vec!["a".into()], vec!["a".into()], vec![vec![0.5]], &[0])
            }),
            ..Default::default()
        };
        let mut report: Report = Report::default();
        assert_eq!(report.retention_seconds(), None, "not measured");
        report.runs = vec![
            run(Some(k(3.0)), vec![]),
            // A routed run's mean over two adapters: the sum of both.
            run(Retention::mean(&[k(2.0), k(2.5)]), vec![]),
            // A sequential run: its stages (the first shared, counted where first taken),
            // the last of which is the run's own.
            run(Some(k(1.5)), vec![k(0.0), k(1.0), k(1.5)]),
            run(None, vec![]),
        ];
        assert_eq!(report.retention_seconds(), Some(3.0 + 4.5 + 2.5));
    }
}
