//! The comparison report: per-task scores of every run with intervals, macro averages,
//! forgetting matrices, cost, task similarity and a recommendation in plain words;
//! written as `report.json` and `report.md`. Its types are the contract's
//! ([`multitune_api::report`]): the dashboard renders the same typed report the engine
//! writes. Here it is computed, in three parts: its statistics (`stats`: paired
//! comparisons, seeds, power, adapter similarity), its recommendation in words
//! (`recommend`) and its Markdown (`markdown`).

mod curves;
mod keep;
mod markdown;
mod methods;
mod recommend;
mod stats;

use std::path::Path;

pub use curves::SizeRows;
pub use markdown::markdown;
pub use multitune_api::report::{
    std_dev, Comparison, DataSize, DataSizes, Forgetting, KeepSets, LrSearch, MergeCandidate, MergeTuning,
    MixingSearch, MixingTrial, Recommendation, Retention, RunResult, Similarity, TaskScore, Verdict, TIE_MARGIN,
};
pub use multitune_api::Power;
pub use recommend::lr_text;
pub use stats::{aggregate, fold_scores, power, similarity};

use super::{CompareConfig, TaskData};
use crate::eval::TaskEval;
use crate::{persist, Result};
use recommend::Standing;

/// The report as the engine writes it: the contract's report with the engine's settings.
pub type Report = multitune_api::report::Report<CompareConfig>;

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

/// A report row from evaluations and what the run cost.
pub fn run_result(name: &str, strategy: &str, evals: &[TaskEval], cost: RunCost) -> RunResult {
    let RunCost { tokens, task_tokens, wall_s, trainable_params, adapter_bytes } = cost;
    let scores = evals.iter().map(task_score).collect();
    RunResult {
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
        stage_starts: vec![],
        task_losses: vec![],
        forgetting: None,
        retention: None,
        keep: vec![],
        adapter_dirs: vec![],
        learning_rate: 0.0,
        lr_search: None,
        mixing_search: None,
        merge_tuning: None,
        method: None,
    }
}

/// A task's evaluation as a report row's score.
pub fn task_score(e: &TaskEval) -> TaskScore {
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
}

/// Assembles the report: every trained run against the best one and against the base
/// model (macro average and per task), every pair of runs on the macro average, what the
/// held-out sets can detect, the recommendation, the data-size curves of the `smaller`
/// sizes' runs (if any), and every run against the base model on the `keep` sets.
pub fn build(
    tasks: &[TaskData],
    keep: &[TaskData],
    config: &CompareConfig,
    mut runs: Vec<RunResult>,
    similarity: Option<Similarity>,
    smaller: Vec<SizeRows>,
) -> Report {
    let (reps, seed) = (config.eval.bootstrap.max(200), config.eval.seed);
    tuned_against_defaults(&mut runs, reps, seed);
    let standing = Standing::of(&runs);
    let comparisons = standing
        .best()
        .map(|b| stats::compare_runs(&standing.trained, b, standing.base, reps, seed))
        .unwrap_or_default();
    let all: Vec<&RunResult> = standing.base.into_iter().chain(standing.ranked.iter().copied()).collect();
    let pairwise = stats::pairwise(&all, reps, seed);
    let n_eval: Vec<usize> = tasks.iter().map(|t| t.eval.len()).collect();
    let power = (!n_eval.is_empty()).then(|| power(&n_eval));
    let mut recommendation = recommend::recommend(tasks, &standing, &comparisons, power.as_ref());
    let keep = keep::keep_sets(keep, &runs, reps, seed);
    if let Some(c) = keep.as_ref().and_then(|k| keep::caution(k, &recommendation.best, &runs)) {
        recommendation.text.push_str(&format!("\n\n{c}"));
    }
    let examples = tasks.iter().map(|t| t.train.len()).collect();
    let data_sizes = curves::data_sizes(&runs, examples, smaller, reps, seed);
    let methods = methods::methods(&config.methods, &runs, reps, seed);
    if let Some(m) = methods.as_ref().filter(|m| !m.text.is_empty()) {
        recommendation.text.push_str(&format!("\n\nAdapter methods: {}", m.text));
    }
    let tasks = tasks
        .iter()
        .map(|t| (t.name.clone(), format!("{:?}", t.kind).to_lowercase(), t.train.len(), t.eval.len()))
        .collect();
    Report {
        tasks,
        config: config.clone(),
        runs,
        similarity,
        recommendation,
        comparisons,
        power,
        pairwise,
        data_sizes,
        keep,
        methods,
    }
}

/// Every tuned merge against the same merge at its defaults, paired on the held-out
/// examples (macro average; one Holm family), into its `merge_tuning.vs_default`.
fn tuned_against_defaults(runs: &mut [RunResult], reps: usize, seed: u64) {
    let pairs: Vec<(&RunResult, &RunResult)> = runs
        .iter()
        .filter_map(|r| {
            let t = r.merge_tuning.as_ref()?;
            Some((r, runs.iter().find(|d| d.name == t.default_run)?))
        })
        .collect();
    let found = stats::compare_pairs(pairs, reps, seed, false);
    for c in found {
        if let Some(t) = runs.iter_mut().find(|r| r.name == c.run).and_then(|r| r.merge_tuning.as_mut()) {
            t.vs_default = Some(c);
        }
    }
}

/// Writes `report.json` and `report.md` into `dir`.
pub fn write(report: &Report, dir: &Path) -> Result<()> {
    persist::write_atomic(&dir.join("report.json"), serde_json::to_string_pretty(report)?.as_bytes())?;
    persist::write_atomic(&dir.join("report.md"), markdown(report).as_bytes())
}
