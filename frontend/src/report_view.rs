//! The report's shaping for the Compare page, in plain functions (tested natively,
//! built without the `app` feature): the per-task table, the pairwise matrix, each
//! task's standing, the learning-rate search cell. The report is the contract's type
//! ([`multitune_api::report::Report`]), as the engine wrote it.

use multitune_api::report::{std_dev, Estimate, LrSearch, Report, RunResult, Verdict};

use crate::format;

/// A row of the per-task table: run name, one cell per task, macro average.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    /// Run.
    pub run: String,
    /// `value [lo, hi]` per task (with `± spread` over seeds when repeated).
    pub cells: Vec<String>,
    /// Macro average.
    pub macro_avg: String,
    /// Index of the best run in each task column.
    pub best: Vec<bool>,
}

/// The report's task names, in its order.
pub fn task_names(report: &Report) -> Vec<String> {
    report.tasks.iter().map(|t| t.0.clone()).collect()
}

/// The per-task table of a report, best value per task marked.
pub fn score_rows(report: &Report) -> (Vec<String>, Vec<ScoreRow>) {
    let tasks = task_names(report);
    let value = |r: &multitune_api::report::RunResult, i: usize| r.scores.get(i).map_or(f64::NAN, |s| s.value.value);
    let best: Vec<f64> = (0..tasks.len())
        .map(|i| report.runs.iter().filter(|r| !r.is_base()).map(|r| value(r, i)).fold(f64::NEG_INFINITY, f64::max))
        .collect();
    // Where the report says which tasks' best runs are significantly ahead, only those
    // are marked; an older report without the field marks every task's best.
    let significant = &report.recommendation.per_task_significant;
    let rows = report
        .runs
        .iter()
        .map(|r| {
            let cells = r
                .scores
                .iter()
                .map(|s| {
                    let Estimate { value: v, lo, hi } = s.value;
                    let spread = if s.seed_values.len() > 1 {
                        format!(" ± {:.1}", 100.0 * std_dev(&s.seed_values))
                    } else {
                        String::new()
                    };
                    format!("{}{spread} [{:.1}, {:.1}]", format::percent(v), 100.0 * lo, 100.0 * hi)
                })
                .collect();
            let m = r.macro_average();
            ScoreRow {
                run: r.name.clone(),
                cells,
                macro_avg: format::with_interval(m.value, m.lo, m.hi),
                best: (0..tasks.len())
                    .map(|i| !r.is_base() && value(r, i) == best[i] && significant.get(i).copied().unwrap_or(true))
                    .collect(),
            }
        })
        .collect();
    (tasks, rows)
}

/// The comparison of `run` against the best run on `task` (`None`: the macro average),
/// seen from `run`'s side; the base model's comes from the best run's comparison with it.
fn against_best<'a>(report: &'a Report, run: &str, task: Option<&str>) -> Option<(Estimate, Verdict, f64)> {
    let best = &report.recommendation.best;
    let same_task = |c: &&'a multitune_api::report::Comparison| c.task.as_deref() == task;
    if let Some(c) = report.comparisons.iter().filter(same_task).find(|c| c.run == run && &c.against == best) {
        return Some((c.difference, c.verdict, c.p_adjusted));
    }
    let c = report.comparisons.iter().filter(same_task).find(|c| &c.run == best && c.against == run)?;
    let d = c.difference;
    Some((Estimate { value: -d.value, lo: -d.hi, hi: -d.lo }, reversed(c.verdict), c.p_adjusted))
}

/// `+11.2 [4.0, 18.5]`: a difference in points with its interval.
fn points(d: &Estimate) -> String {
    format!("{:+.1} [{:.1}, {:.1}]", 100.0 * d.value + 0.0, 100.0 * d.lo + 0.0, 100.0 * d.hi + 0.0)
}

/// The answer in one sentence: the run to use, its macro average against the base
/// model's, and how many of the other runs it is significantly ahead of (naming those it
/// cannot be told from). Empty without a trained run.
pub fn answer(report: &Report) -> String {
    let best = &report.recommendation.best;
    let Some(b) = report.runs.iter().find(|r| &r.name == best) else { return String::new() };
    let base = report.runs.iter().find(|r| r.is_base()).map(|r| r.macro_average().value);
    let others: Vec<&str> =
        report.runs.iter().filter(|r| !r.is_base() && &r.name != best).map(|r| r.name.as_str()).collect();
    let mut beaten = 0;
    let mut close = Vec::new();
    for o in &others {
        match against_best(report, o, None) {
            Some((_, Verdict::Worse, _)) => beaten += 1,
            _ => close.push(*o),
        }
    }
    let mut text = format!("Use {best}: {} macro average", format::percent(b.macro_average().value));
    if let Some(v) = base {
        text.push_str(&format!(" (the base model: {})", format::percent(v)));
    }
    match (others.len(), close.len()) {
        (0, _) => {}
        (n, 0) => text.push_str(&format!(", significantly ahead of {} other run{}", n, if n == 1 { "" } else { "s" })),
        (n, _) if beaten > 0 => text.push_str(&format!(
            ", significantly ahead of {beaten} of the {n} other runs; not told apart from {} on these held-out examples",
            names_in_short(&close)
        )),
        _ => text.push_str(", but not told apart from any other run on these held-out examples"),
    }
    let hurt: Vec<&str> = report
        .keep
        .iter()
        .flat_map(|k| k.worse())
        .filter(|c| &c.run == best)
        .filter_map(|c| c.task.as_deref())
        .collect();
    if !hurt.is_empty() {
        text.push_str(&format!(
            " Mind: it makes the keep set{} {} worse than the base model",
            if hurt.len() == 1 { "" } else { "s" },
            hurt.join(", ")
        ));
    }
    text.push('.');
    text
}

/// Up to three names, then how many more: `a, b, c and 4 more`.
fn names_in_short(names: &[&str]) -> String {
    match names.len() {
        0..=3 => names.join(", "),
        n => format!("{} and {} more", names[..3].join(", "), n - 3),
    }
}

/// A cell of the compact table: the value, its mark against the best run and, for
/// hovering, the full figures.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactCell {
    /// `76.8`.
    pub text: String,
    /// `▼` significantly below the best run, `▲` above it, `≈` tied with it (within ±5
    /// points), empty when the data cannot tell (and in the best run's own row).
    pub mark: &'static str,
    /// `76.8% [71.2, 81.2]; against the best: −1.5 [−3.8, 0.8], p (Holm) 0.412`.
    pub title: String,
}

/// A row of the compact table: the run, whether it is the best one, a cell per task and
/// the macro average.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactRow {
    /// Run.
    pub run: String,
    /// The recommendation's best run.
    pub best: bool,
    /// One per task, then the macro average.
    pub cells: Vec<CompactCell>,
    /// What it keeps of the base model (% of the retention probe answered as the base
    /// model does), when measured.
    pub kept: Option<CompactCell>,
    /// Its score on each keep set (see [`keep_names`]), marked against the base model's:
    /// `▼` significantly worse, `▲` better, `≈` tied.
    pub keep: Vec<CompactCell>,
}

/// The keep sets' names, the compact table's last columns (none without keep sets).
pub fn keep_names(report: &Report) -> Vec<String> {
    report.keep.as_ref().map(|k| k.sets.iter().map(|s| s.0.clone()).collect()).unwrap_or_default()
}

/// The mark of a verdict: `▼` worse, `▲` better, `≈` tied, nothing when the data cannot
/// tell.
fn mark(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Worse) => "▼",
        Some(Verdict::Better) => "▲",
        Some(Verdict::Tied) => "≈",
        _ => "",
    }
}

/// The strategy × task table read at a glance: every run's headline metric per task and
/// macro average, each marked by its paired comparison with the best run.
pub fn compact_rows(report: &Report) -> (Vec<String>, Vec<CompactRow>) {
    let tasks = task_names(report);
    let best = &report.recommendation.best;
    let cell = |run: &str, task: Option<&str>, v: Estimate| {
        let vs = (run != best.as_str()).then(|| against_best(report, run, task)).flatten();
        let mark = mark(vs.map(|x| x.1));
        let mut title = format::with_interval(v.value, v.lo, v.hi);
        if let Some((d, _, p)) = vs {
            title.push_str(&format!("; against the best: {} points, p (Holm) {p:.3}", points(&d)));
        }
        CompactCell { text: format!("{:.1}", 100.0 * v.value), mark, title }
    };
    let rows = report
        .runs
        .iter()
        .map(|r| {
            let mut cells: Vec<CompactCell> =
                r.scores.iter().zip(&tasks).map(|(s, t)| cell(&r.name, Some(t), s.value)).collect();
            cells.push(cell(&r.name, None, r.macro_average()));
            let kept = r.retention.map(|k| CompactCell {
                text: format!("{:.0}", 100.0 * k.same_answer),
                mark: "",
                title: format!(
                    "{} of {} probe prompts answered as the base model does; KL {:.4} nats/token from its distributions",
                    format::percent(k.same_answer),
                    k.prompts,
                    k.kl
                ),
            });
            let keep = r
                .keep
                .iter()
                .map(|sc| {
                    let vs = report.keep.as_ref().and_then(|k| k.of(&r.name, &sc.task));
                    let mut title = format!("keep set {}: {}", sc.task, format::with_interval(sc.value.value, sc.value.lo, sc.value.hi));
                    if let Some(c) = vs {
                        title.push_str(&format!(
                            "; against the base model: {} points, p (Holm) {:.3}",
                            points(&c.difference),
                            c.p_adjusted
                        ));
                    }
                    CompactCell { text: format!("{:.1}", 100.0 * sc.value.value), mark: mark(vs.map(|c| c.verdict)), title }
                })
                .collect();
            CompactRow { run: r.name.clone(), best: &r.name == best, cells, kept, keep }
        })
        .collect();
    (tasks, rows)
}

/// A row of the forest plot drawn in the page: a run's paired difference to the best run
/// (macro average), placed on a common axis as percentages of its width.
#[derive(Debug, Clone, PartialEq)]
pub struct ForestBar {
    /// Run.
    pub run: String,
    /// Where the interval begins, % of the axis.
    pub left: f64,
    /// Its width, % of the axis.
    pub width: f64,
    /// Where the difference itself lies, % of the axis.
    pub at: f64,
    /// Its verdict's class (`worse`, `tied`, …).
    pub class: &'static str,
    /// `−1.5 points [−3.8, 0.8], p (Holm) 0.412: tied` for hovering.
    pub title: String,
}

/// The forest plot of every run against the best (macro average, paired), and where
/// zero lies on its axis (%). The axis spans every interval and zero, with a margin.
pub fn forest(report: &Report) -> (f64, Vec<ForestBar>) {
    let best = &report.recommendation.best;
    let rows: Vec<(&str, Estimate, Verdict, f64)> = report
        .runs
        .iter()
        .filter(|r| &r.name != best)
        .filter_map(|r| against_best(report, &r.name, None).map(|(d, v, p)| (r.name.as_str(), d, v, p)))
        .collect();
    let lo = rows.iter().map(|r| r.1.lo).fold(0.0, f64::min);
    let hi = rows.iter().map(|r| r.1.hi).fold(0.0, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.01);
    let (lo, hi) = (lo - pad, hi + pad);
    let x = |v: f64| 100.0 * (v - lo) / (hi - lo);
    let bars = rows
        .into_iter()
        .map(|(run, d, v, p)| ForestBar {
            run: run.to_string(),
            left: x(d.lo),
            width: x(d.hi) - x(d.lo),
            at: x(d.value),
            class: class(v),
            title: format!("{} points, p (Holm) {p:.3}: {}", points(&d), class(v)),
        })
        .collect();
    (x(0.0), bars)
}

/// A row of the data-size table: the run, and at each size its macro average and whether
/// it leads there (`None` where a size lacks the run).
pub type SizeRow = (String, Vec<Option<(String, bool)>>);

/// The data-size curves as a table: one column per size (`25% · ~75 per task`), one row
/// per run. Empty without curves.
pub fn size_rows(report: &Report) -> (Vec<String>, Vec<SizeRow>) {
    let Some(d) = &report.data_sizes else { return (vec![], vec![]) };
    let headers = d
        .sizes
        .iter()
        .map(|s| format!("{}% · ~{:.0} per task", (s.fraction * 1000.0).round() / 10.0, s.mean_examples()))
        .collect();
    let names: Vec<String> = report.runs_at(d.sizes.len().saturating_sub(1)).iter().map(|r| r.name.clone()).collect();
    let rows = names
        .into_iter()
        .map(|name| {
            let cells = (0..d.sizes.len())
                .map(|k| {
                    let r = report.runs_at(k).into_iter().find(|r| r.name == name)?;
                    let m = r.macro_average();
                    Some((format::with_interval(m.value, m.lo, m.hi), d.sizes[k].leader == name))
                })
                .collect();
            (name, cells)
        })
        .collect();
    (headers, rows)
}

/// A row of the adapter methods' table.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodTableRow {
    /// The row's name without a method (`combined (proportional)`).
    pub run: String,
    /// Each method's cell: its macro average, after the first method with the paired
    /// difference from the first, and the CSS class of that comparison's verdict
    /// (`None` where the row did not run with the method).
    pub cells: Vec<Option<(String, &'static str)>>,
    /// The method to use for it.
    pub choice: String,
    /// Why.
    pub reason: String,
}

/// The adapter methods compared, as a table with one column per method (empty without a
/// comparison of methods).
pub fn method_rows(report: &Report) -> (Vec<String>, Vec<MethodTableRow>) {
    let Some(m) = &report.methods else { return (vec![], vec![]) };
    let headers = m.methods.iter().map(|x| x.name().to_string()).collect();
    let rows = m
        .rows
        .iter()
        .map(|row| {
            let cells = m
                .cells(row, &report.runs)
                .into_iter()
                .map(|cell| {
                    let (r, vs) = cell?;
                    let v = format::percent(r.macro_average().value);
                    Some(match vs {
                        Some(c) => {
                            (format!("{v} ({}, p {:.3})", points(&c.difference), c.p_adjusted), class(c.verdict))
                        }
                        None => (v, ""),
                    })
                })
                .collect();
            MethodTableRow { run: row.run.clone(), cells, choice: row.choice.name().into(), reason: row.reason.clone() }
        })
        .collect();
    (headers, rows)
}

/// One cell of the pairwise matrix: the text and the CSS class of its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCell {
    /// `+11.2 [4.0, 18.5] p 0.003`: the row's run minus the column's, in points.
    pub text: String,
    /// `better`, `worse`, `tied` or `undecided` (for the row's run).
    pub class: &'static str,
}

/// A verdict's CSS class.
fn class(v: Verdict) -> &'static str {
    match v {
        Verdict::Better => "better",
        Verdict::Worse => "worse",
        Verdict::Tied => "tied",
        Verdict::Undecided => "undecided",
    }
}

/// The verdict seen from the other side.
fn reversed(v: Verdict) -> Verdict {
    match v {
        Verdict::Better => Verdict::Worse,
        Verdict::Worse => Verdict::Better,
        v => v,
    }
}

/// The report's pairwise comparisons as a matrix over its runs (rows minus columns);
/// the diagonal is empty.
pub fn pair_matrix(report: &Report) -> (Vec<String>, Vec<Vec<Option<PairCell>>>) {
    let mut names: Vec<String> = Vec::new();
    for c in &report.pairwise {
        for n in [&c.run, &c.against] {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
    }
    let at = |n: &str| names.iter().position(|x| x == n).unwrap_or(0);
    let mut m = vec![vec![None; names.len()]; names.len()];
    for c in &report.pairwise {
        let (i, j) = (at(&c.run), at(&c.against));
        let Estimate { value: v, lo, hi } = c.difference;
        let p = c.p_adjusted;
        let cell = |sign: f64, verdict: Verdict| PairCell {
            text: format!(
                "{:+.1} [{:.1}, {:.1}] p {}",
                100.0 * sign * v + 0.0,
                100.0 * (if sign > 0.0 { lo } else { -hi }) + 0.0,
                100.0 * (if sign > 0.0 { hi } else { -lo }) + 0.0,
                if p < 0.001 { "< 0.001".to_string() } else { format!("{p:.3}") }
            ),
            class: class(verdict),
        };
        m[i][j] = Some(cell(1.0, c.verdict));
        m[j][i] = Some(cell(-1.0, reversed(c.verdict)));
    }
    (names, m)
}

/// Per task, the best run's standing against every other: who it significantly beats,
/// who it ties with, where the data cannot tell.
pub fn task_standings(report: &Report) -> Vec<(String, String)> {
    let best = &report.recommendation.best;
    task_names(report)
        .into_iter()
        .map(|t| {
            let mut by: [Vec<String>; 4] = Default::default();
            for c in report.comparisons.iter().filter(|c| c.task.as_ref() == Some(&t) && &c.against == best) {
                // The comparison is run − best: "worse" means the best beats it.
                let k = match c.verdict {
                    Verdict::Worse => 0,
                    Verdict::Better => 1,
                    Verdict::Tied => 2,
                    Verdict::Undecided => 3,
                };
                by[k].push(c.run.clone());
            }
            let mut parts = Vec::new();
            for (k, label) in [
                (0, format!("{best} beats")),
                (1, format!("{best} is beaten by")),
                (2, "tied with".to_string()),
                (3, "cannot tell against".to_string()),
            ] {
                if !by[k].is_empty() {
                    parts.push(format!("{label}: {}", by[k].join(", ")));
                }
            }
            (t, if parts.is_empty() { "no comparisons".into() } else { parts.join("; ") })
        })
        .collect()
}

/// Markdown emphasis removed for display.
pub fn plain(text: &str) -> String {
    text.replace("**", "")
}

/// A run's learning-rate search in a cell: the rates tried with their validation
/// scores, and what it cost (empty without a search).
pub fn lr_search_text(search: Option<&LrSearch>) -> String {
    let Some(search) = search else { return String::new() };
    let tried: Vec<String> = search
        .trials
        .iter()
        .map(|t| format!("{} {:.0}%", format::learning_rate(t.learning_rate), 100.0 * t.score))
        .collect();
    format!("{} ({})", tried.join(", "), format::duration(search.wall_s()))
}

/// Every search behind a run's settings in a cell: its learning-rate search
/// ([`lr_search_text`]), its mixing search (each mixing's validation score and the one
/// chosen) and a tuned merge's parameters against its defaults (held-out, paired); empty
/// without any.
pub fn search_text(run: &RunResult) -> String {
    let mut parts = Vec::new();
    if run.lr_search.is_some() {
        parts.push(format!("lr: {}", lr_search_text(run.lr_search.as_ref())));
    }
    if let Some(m) = &run.mixing_search {
        let mut tried: Vec<String> =
            m.trials.iter().map(|t| format!("{} {:.0}%", t.mixing.name(), 100.0 * t.score)).collect();
        if tried.is_empty() {
            tried.push("every mixing samples alike here".into());
        }
        parts.push(format!("mixing: {} → {} ({})", tried.join(", "), m.chosen.name(), format::duration(m.wall_s())));
    }
    if let Some(t) = &run.merge_tuning {
        let vs = t
            .vs_default
            .as_ref()
            .map_or_else(String::new, |c| format!("; held-out vs defaults {} points", points(&c.difference)));
        parts.push(format!(
            "merge: {} (defaults {}){vs} ({})",
            t.chosen_params,
            t.default_params,
            format::duration(t.wall_s)
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use multitune_api::report::{Comparison, Recommendation, RunResult, TaskScore, Trial};

    use super::*;

    fn est(v: f64, half: f64) -> Estimate {
        Estimate { value: v, lo: v - half, hi: v + half }
    }

    fn score(v: f64) -> TaskScore {
        TaskScore { value: est(v, 0.1), ..Default::default() }
    }

    fn run(name: &str, strategy: &str, values: &[f64]) -> RunResult {
        RunResult {
            name: name.into(),
            strategy: strategy.into(),
            scores: values.iter().map(|&v| score(v)).collect(),
            ..Default::default()
        }
    }

    fn tasks(kinds: &[(&str, &str)]) -> Vec<multitune_api::report::TaskInfo> {
        kinds.iter().map(|(n, k)| (n.to_string(), k.to_string(), 10, 5)).collect()
    }

    fn comparison(run: &str, against: &str, task: Option<&str>, d: f64, p: f64, verdict: Verdict) -> Comparison {
        Comparison {
            run: run.into(),
            against: against.into(),
            task: task.map(String::from),
            difference: est(d, 0.05),
            discordant: (0, 0),
            p_value: p,
            p_adjusted: p,
            verdict,
        }
    }

    #[test]
    fn a_learning_rate_search_reads_in_one_cell() {
        let trial = |learning_rate: f64, score: f64, wall_s: f64| Trial {
            learning_rate,
            rung: 0,
            budget_tokens: 0,
            tokens: 0,
            score,
            loss: 0.0,
            wall_s,
        };
        let s = LrSearch {
            grid: vec![],
            chosen: 0.001,
            validation: vec![],
            trials: vec![trial(0.0003, 0.5, 10.0), trial(0.001, 0.6, 12.0)],
        };
        assert_eq!(lr_search_text(Some(&s)), "3e-4 50%, 1e-3 60% (22 s)");
        assert_eq!(lr_search_text(None), "");
        assert_eq!(search_text(&RunResult::default()), "");
        let run = RunResult {
            mixing_search: Some(multitune_api::report::MixingSearch {
                candidates: multitune_api::MixingChoice::SEARCHED.to_vec(),
                chosen: multitune_api::MixingChoice::Uniform,
                validation: vec![10],
                trials: vec![multitune_api::report::MixingTrial {
                    mixing: multitune_api::MixingChoice::Uniform,
                    rung: 0,
                    budget_tokens: 100,
                    tokens: 100,
                    score: 0.5,
                    loss: 1.0,
                    wall_s: 61.0,
                }],
            }),
            merge_tuning: Some(multitune_api::report::MergeTuning {
                method: "ties".into(),
                default_params: "density 0.2, λ 1".into(),
                chosen_params: "density 0.4, λ 1.5".into(),
                validation: vec![16],
                candidates: vec![],
                wall_s: 12.0,
                default_run: "separate + merge (ties)".into(),
                vs_default: Some(Comparison {
                    run: "t".into(),
                    against: "d".into(),
                    task: None,
                    difference: est(0.04, 0.05),
                    discordant: (3, 1),
                    p_value: 0.6,
                    p_adjusted: 0.6,
                    verdict: Verdict::Undecided,
                }),
            }),
            ..RunResult::default()
        };
        assert_eq!(
            search_text(&run),
            "mixing: uniform 50% → uniform (1 min 1 s); merge: density 0.4, λ 1.5 (defaults density 0.2, λ 1); \
             held-out vs defaults +4.0 [-1.0, 9.0] points (12 s)"
        );
    }

    #[test]
    fn the_table_marks_the_best_run_per_task() {
        let r: Report = Report {
            tasks: tasks(&[("a", "classification"), ("b", "generation")]),
            runs: vec![
                run("base model", "base", &[0.9, 0.1]),
                run("x", "combined", &[0.5, 0.7]),
                run("y", "separate", &[0.6, 0.3]),
            ],
            ..Default::default()
        };
        let (tasks, rows) = score_rows(&r);
        assert_eq!(tasks, ["a", "b"]);
        assert_eq!(rows[1].cells[0], "50.0% [40.0, 60.0]");
        assert_eq!(rows[1].macro_avg, "60.0% [50.0, 70.0]");
        // The base model is the reference, never "best".
        assert_eq!(
            (rows[0].best.clone(), rows[1].best.clone(), rows[2].best.clone()),
            (vec![false, false], vec![false, true], vec![true, false])
        );
    }

    #[test]
    fn only_significant_bests_are_marked_and_pairs_fill_a_matrix() {
        let r: Report = Report {
            tasks: tasks(&[("a", "classification"), ("b", "generation")]),
            runs: vec![run("x", "combined", &[0.5, 0.7]), run("y", "separate", &[0.6, 0.3])],
            recommendation: Recommendation {
                best: "x".into(),
                per_task_significant: vec![false, true],
                ..Default::default()
            },
            pairwise: vec![comparison("x", "y", None, 0.15, 0.002, Verdict::Better)],
            comparisons: vec![
                comparison("y", "x", Some("a"), 0.1, 0.5, Verdict::Undecided),
                comparison("y", "x", Some("b"), -0.4, 0.001, Verdict::Worse),
            ],
            ..Default::default()
        };
        let (_, rows) = score_rows(&r);
        assert_eq!((rows[0].best.clone(), rows[1].best.clone()), (vec![false, true], vec![false, false]));
        let (names, m) = pair_matrix(&r);
        assert_eq!(names, ["x", "y"]);
        assert_eq!(m[0][1], Some(PairCell { text: "+15.0 [10.0, 20.0] p 0.002".into(), class: "better" }));
        assert_eq!(m[1][0], Some(PairCell { text: "-15.0 [-20.0, -10.0] p 0.002".into(), class: "worse" }));
        assert!(m[0][0].is_none());
        let s = task_standings(&r);
        assert_eq!(s[0], ("a".to_string(), "cannot tell against: y".to_string()));
        assert_eq!(s[1], ("b".to_string(), "x beats: y".to_string()));
    }

    #[test]
    fn the_answer_table_and_forest_read_at_a_glance() {
        let r: Report = Report {
            tasks: tasks(&[("a", "classification"), ("b", "generation")]),
            runs: vec![
                run("base model", "base", &[0.2, 0.0]),
                run("x", "combined", &[0.9, 0.7]),
                run("y", "separate", &[0.6, 0.6]),
                run("z", "multi_head", &[0.85, 0.7]),
            ],
            recommendation: Recommendation { best: "x".into(), ..Default::default() },
            comparisons: vec![
                comparison("y", "x", None, -0.2, 0.001, Verdict::Worse),
                comparison("z", "x", None, -0.025, 0.4, Verdict::Tied),
                comparison("x", "base model", None, 0.7, 0.001, Verdict::Better),
                comparison("y", "x", Some("a"), -0.3, 0.001, Verdict::Worse),
                comparison("y", "x", Some("b"), -0.1, 0.2, Verdict::Undecided),
                comparison("x", "base model", Some("a"), 0.7, 0.001, Verdict::Better),
            ],
            ..Default::default()
        };
        assert_eq!(
            answer(&r),
            "Use x: 80.0% macro average (the base model: 10.0%), significantly ahead of 1 of the 2 other runs; \
             not told apart from z on these held-out examples."
        );
        assert_eq!(names_in_short(&["a", "b", "c", "d", "e"]), "a, b, c and 2 more");
        let (tasks, rows) = compact_rows(&r);
        assert_eq!(tasks, ["a", "b"]);
        let marks = |i: usize| rows[i].cells.iter().map(|c| c.mark).collect::<Vec<_>>();
        assert_eq!(marks(0), ["▼", "", "▼"], "the base model, from the best run's comparisons with it");
        assert_eq!(marks(1), ["", "", ""], "the best run is the reference");
        assert!(rows[1].best && !rows[2].best);
        assert_eq!(marks(2), ["▼", "", "▼"]);
        assert_eq!(marks(3), ["", "", "≈"]);
        assert_eq!(rows[2].cells[0].text, "60.0");
        assert_eq!(
            rows[2].cells[0].title,
            "60.0% [50.0, 70.0]; against the best: -30.0 [-35.0, -25.0] points, p (Holm) 0.001"
        );
        let (zero, bars) = forest(&r);
        assert_eq!(bars.iter().map(|b| b.run.as_str()).collect::<Vec<_>>(), ["base model", "y", "z"]);
        assert_eq!(bars.iter().map(|b| b.class).collect::<Vec<_>>(), ["worse", "worse", "tied"]);
        // On one axis: every interval and zero inside it, in order.
        assert!(bars.iter().all(|b| b.left >= 0.0 && b.left + b.width <= 100.0 && b.left <= b.at));
        assert!(bars[0].at < bars[1].at && bars[1].at < bars[2].at && bars[2].at < zero && zero < 100.0);
        assert!(bars[2].title.starts_with("-2.5 [-7.5, 2.5] points"), "{}", bars[2].title);
        assert!(keep_names(&r).is_empty() && rows.iter().all(|row| row.keep.is_empty()));
    }

    #[test]
    fn keep_sets_are_columns_marked_against_the_base_model() {
        use multitune_api::report::KeepSets;
        let with_keep = |mut r: RunResult, v: f64| {
            r.keep = vec![TaskScore { task: "support".into(), ..score(v) }];
            r
        };
        let r: Report = Report {
            tasks: tasks(&[("a", "classification")]),
            runs: vec![
                with_keep(run("base model", "base", &[0.2]), 0.8),
                with_keep(run("x", "combined", &[0.9]), 0.5),
                with_keep(run("y", "separate", &[0.6]), 0.79),
            ],
            recommendation: Recommendation { best: "x".into(), ..Default::default() },
            keep: Some(KeepSets {
                sets: vec![("support".into(), "classification".into(), 40)],
                comparisons: vec![
                    comparison("x", "base model", Some("support"), -0.3, 0.001, Verdict::Worse),
                    comparison("y", "base model", Some("support"), -0.01, 0.9, Verdict::Tied),
                ],
                text: String::new(),
            }),
            ..Default::default()
        };
        assert_eq!(keep_names(&r), ["support"]);
        let (_, rows) = compact_rows(&r);
        let keep = |i: usize| (rows[i].keep[0].text.as_str(), rows[i].keep[0].mark);
        assert_eq!([keep(0), keep(1), keep(2)], [("80.0", ""), ("50.0", "▼"), ("79.0", "≈")]);
        assert_eq!(
            rows[1].keep[0].title,
            "keep set support: 50.0% [40.0, 60.0]; against the base model: -30.0 [-35.0, -25.0] points, p (Holm) 0.001"
        );
        assert!(
            answer(&r).ends_with(" Mind: it makes the keep set support worse than the base model."),
            "{}",
            answer(&r)
        );
    }

    #[test]
    fn data_sizes_become_a_table_with_each_sizes_leader() {
        use multitune_api::report::{DataSize, DataSizes};
        let size = |fraction: f64, examples: usize, leader: &str, runs: Vec<RunResult>| DataSize {
            fraction,
            examples: vec![examples, examples + 2],
            runs,
            leader: leader.into(),
            lead: None,
        };
        let r: Report = Report {
            tasks: tasks(&[("a", "c")]),
            runs: vec![run("base model", "base", &[0.2]), run("x", "combined", &[0.8]), run("y", "separate", &[0.6])],
            data_sizes: Some(DataSizes {
                sizes: vec![
                    size(0.25, 10, "y", vec![run("x", "combined", &[0.3]), run("y", "separate", &[0.5])]),
                    size(1.0, 40, "x", vec![]),
                ],
                text: "Up to ~11 examples per task y leads".into(),
            }),
            ..Default::default()
        };
        let (headers, rows) = size_rows(&r);
        assert_eq!(headers, ["25% · ~11 per task", "100% · ~41 per task"]);
        assert_eq!(rows.len(), 2, "the trained runs, not the base model");
        assert_eq!(rows[0].0, "x");
        assert_eq!(rows[0].1[0], Some(("30.0% [20.0, 40.0]".to_string(), false)));
        assert_eq!(rows[0].1[1], Some(("80.0% [70.0, 90.0]".to_string(), true)));
        assert_eq!(rows[1].1[0].as_ref().map(|c| c.1), Some(true));
        assert_eq!(size_rows(&Report::default()), (vec![], vec![]));
    }

    #[test]
    fn compared_methods_become_a_table_with_each_rows_choice() {
        use multitune_api::report::{MethodRow, Methods};
        use multitune_api::AdapterMethod::{Dora, Lora};
        let tagged = |name: &str, m: multitune_api::AdapterMethod, v: f64| RunResult {
            method: Some(m),
            ..run(&format!("{name}{}", m.tag()), "combined", &[v])
        };
        let r: Report = Report {
            tasks: tasks(&[("a", "c")]),
            runs: vec![tagged("combined", Lora, 0.5), tagged("combined", Dora, 0.7), tagged("multi-head", Lora, 0.4)],
            methods: Some(Methods {
                methods: vec![Lora, Dora],
                rows: vec![MethodRow {
                    run: "combined".into(),
                    runs: vec![(Lora, "combined [lora]".into()), (Dora, "combined [dora]".into())],
                    choice: Dora,
                    reason: "dora beats lora".into(),
                }],
                comparisons: vec![comparison("combined [dora]", "combined [lora]", None, 0.2, 0.01, Verdict::Better)],
                text: "Use dora for combined.".into(),
            }),
            ..Default::default()
        };
        let (headers, rows) = method_rows(&r);
        assert_eq!(headers, ["lora", "dora"]);
        assert_eq!(rows.len(), 1, "multi-head ran with one method: not a row");
        assert_eq!(rows[0].cells[0], Some(("50.0%".to_string(), "")));
        assert_eq!(rows[0].cells[1], Some(("70.0% (+20.0 [15.0, 25.0], p 0.010)".to_string(), "better")));
        assert_eq!((rows[0].choice.as_str(), rows[0].reason.as_str()), ("dora", "dora beats lora"));
        assert_eq!(method_rows(&Report::default()), (vec![], vec![]));
    }

    #[test]
    fn seeds_show_their_spread() {
        let mut x = run("x", "combined", &[0.6]);
        x.scores[0].seed_values = vec![0.5, 0.7];
        let r: Report = Report { tasks: tasks(&[("a", "c")]), runs: vec![x], ..Default::default() };
        assert_eq!(score_rows(&r).1[0].cells[0], "60.0% ± 14.1 [50.0, 70.0]");
        assert_eq!(plain("**x** is best"), "x is best");
    }
}
