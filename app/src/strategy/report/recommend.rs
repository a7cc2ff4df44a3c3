//! The recommendation: which run to use, by how much and how sure, in plain words. It
//! speaks in paired comparisons: every run is scored on the same held-out examples, so
//! each pair of runs is compared example by example, which tells apart differences that
//! unpaired intervals call ties.

use std::fmt::Write as _;

use crate::eval::metrics::{paired, Estimate};
use crate::strategy::TaskData;

use super::stats::{describe_sizes, per_task_margins};
use super::{Comparison, Power, Recommendation, RunResult, Verdict, TIE_MARGIN};

/// The report's runs, sorted out once.
pub(super) struct Standing<'a> {
    /// The trained runs, in the report's order.
    pub trained: Vec<&'a RunResult>,
    /// The same, best macro average first.
    pub ranked: Vec<&'a RunResult>,
    /// The base model's row.
    pub base: Option<&'a RunResult>,
}

impl<'a> Standing<'a> {
    /// Sorts out `runs`.
    pub fn of(runs: &'a [RunResult]) -> Self {
        let trained: Vec<&RunResult> = runs.iter().filter(|r| !r.is_base()).collect();
        let mut ranked = trained.clone();
        ranked.sort_by(|a, b| b.macro_average().value.total_cmp(&a.macro_average().value));
        Self { trained, ranked, base: runs.iter().find(|r| r.is_base()) }
    }

    /// The best run by macro average.
    pub fn best(&self) -> Option<&'a RunResult> {
        self.ranked.first().copied()
    }
}

/// The recommendation from the runs' standing and their paired comparisons (every run
/// against the best and the base model).
pub(super) fn recommend(
    tasks: &[TaskData],
    standing: &Standing,
    comparisons: &[Comparison],
    power: Option<&Power>,
) -> Recommendation {
    let Standing { trained, ranked, base } = standing;
    let base = *base;
    let best = standing.best();
    let second = ranked.get(1).copied();
    let margin = match (best, second) {
        (Some(b), Some(s)) => b.macro_average().value - s.macro_average().value,
        _ => 0.0,
    };
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
    let per_task_significant = per_task_margins(trained, tasks.len());
    let n_eval: Vec<usize> = tasks.iter().map(|t| t.eval.len()).collect();
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
        if let Some(c) =
            base.and_then(|bm| comparisons.iter().find(|c| c.task.is_none() && c.run == b.name && c.against == bm.name))
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
        if let Some(p) = power {
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
    Recommendation {
        best: best.map(|r| r.name.clone()).unwrap_or_default(),
        runner_up: second.map(|r| r.name.clone()),
        margin,
        within_noise,
        per_task,
        per_task_significant,
        text,
    }
}

/// `+11.2 points [4.0, 18.5]`.
pub(super) fn points(d: &Estimate) -> String {
    // (+ 0.0 turns a negated zero into a plain one: no "-0.0".)
    let p = |x: f64| 100.0 * x + 0.0;
    format!("{:+.1} points [{:.1}, {:.1}]", p(d.value), p(d.lo), p(d.hi))
}

pub(super) fn p_text(p: f64) -> String {
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

pub(super) fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}
