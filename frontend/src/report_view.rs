//! The report's shaping for the Compare page, in plain functions (tested natively,
//! built without the `app` feature): the per-task table, the pairwise matrix, each
//! task's standing, the learning-rate search cell.

use serde_json::Value;

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

fn est(v: &Value) -> (f64, f64, f64) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    (f("value"), f("lo"), f("hi"))
}

/// The per-task table of a report, best value per task marked.
pub fn score_rows(report: &Value) -> (Vec<String>, Vec<ScoreRow>) {
    let tasks: Vec<String> = report["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x[0].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let runs = report["runs"].as_array().cloned().unwrap_or_default();
    let value = |r: &Value, i: usize| est(&r["scores"][i]["value"]).0;
    let best: Vec<f64> = (0..tasks.len())
        .map(|i| runs.iter().filter(|r| r["strategy"] != "base").map(|r| value(r, i)).fold(f64::NEG_INFINITY, f64::max))
        .collect();
    // Where the report says which tasks' best runs are significantly ahead, only those
    // are marked; an older report without the field marks every task's best.
    let significant: Vec<bool> = report["recommendation"]["per_task_significant"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_bool().unwrap_or(false)).collect())
        .unwrap_or_else(|| vec![true; tasks.len()]);
    let rows = runs
        .iter()
        .map(|r| {
            let scores = r["scores"].as_array().cloned().unwrap_or_default();
            let cells = scores
                .iter()
                .map(|s| {
                    let (v, lo, hi) = est(&s["value"]);
                    let seeds: Vec<f64> = s["seed_values"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_f64).collect())
                        .unwrap_or_default();
                    let spread = if seeds.len() > 1 {
                        let m = seeds.iter().sum::<f64>() / seeds.len() as f64;
                        let sd = (seeds.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (seeds.len() - 1) as f64).sqrt();
                        format!(" ± {:.1}", 100.0 * sd)
                    } else {
                        String::new()
                    };
                    format!("{}{spread} [{:.1}, {:.1}]", format::percent(v), 100.0 * lo, 100.0 * hi)
                })
                .collect();
            let n = scores.len().max(1) as f64;
            let mean = |k: usize| {
                scores
                    .iter()
                    .map(|s| {
                        let e = est(&s["value"]);
                        [e.0, e.1, e.2][k]
                    })
                    .sum::<f64>()
                    / n
            };
            ScoreRow {
                run: r["name"].as_str().unwrap_or("").to_string(),
                cells,
                macro_avg: format::with_interval(mean(0), mean(1), mean(2)),
                best: (0..tasks.len())
                    .map(|i| {
                        r["strategy"] != "base" && value(r, i) == best[i] && significant.get(i).copied().unwrap_or(true)
                    })
                    .collect(),
            }
        })
        .collect();
    (tasks, rows)
}

/// One cell of the pairwise matrix: the text and the CSS class of its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct PairCell {
    /// `+11.2 [4.0, 18.5] p 0.003`: the row's run minus the column's, in points.
    pub text: String,
    /// `better`, `worse`, `tied` or `undecided` (for the row's run).
    pub class: &'static str,
}

/// The report's pairwise comparisons as a matrix over its runs (rows minus columns);
/// the diagonal is empty.
pub fn pair_matrix(report: &Value) -> (Vec<String>, Vec<Vec<Option<PairCell>>>) {
    let pairs = report["pairwise"].as_array().cloned().unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for c in &pairs {
        for k in ["run", "against"] {
            let n = c[k].as_str().unwrap_or("").to_string();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let at = |n: &str| names.iter().position(|x| x == n).unwrap_or(0);
    let mut m = vec![vec![None; names.len()]; names.len()];
    for c in &pairs {
        let (i, j) = (at(c["run"].as_str().unwrap_or("")), at(c["against"].as_str().unwrap_or("")));
        let (v, lo, hi) = est(&c["difference"]);
        let p = c["p_adjusted"].as_f64().unwrap_or(1.0);
        let verdict = c["verdict"].as_str().unwrap_or("undecided");
        let cell = |sign: f64, class: &'static str| PairCell {
            text: format!(
                "{:+.1} [{:.1}, {:.1}] p {}",
                100.0 * sign * v + 0.0,
                100.0 * (if sign > 0.0 { lo } else { -hi }) + 0.0,
                100.0 * (if sign > 0.0 { hi } else { -lo }) + 0.0,
                if p < 0.001 { "< 0.001".to_string() } else { format!("{p:.3}") }
            ),
            class,
        };
        let (fwd, back) = match verdict {
            "better" => ("better", "worse"),
            "worse" => ("worse", "better"),
            "tied" => ("tied", "tied"),
            _ => ("undecided", "undecided"),
        };
        m[i][j] = Some(cell(1.0, fwd));
        m[j][i] = Some(cell(-1.0, back));
    }
    (names, m)
}

/// Per task, the best run's standing against every other: who it significantly beats,
/// who it ties with, where the data cannot tell.
pub fn task_standings(report: &Value) -> Vec<(String, String)> {
    let best = report["recommendation"]["best"].as_str().unwrap_or("").to_string();
    let tasks: Vec<String> = report["tasks"]
        .as_array()
        .map(|t| t.iter().filter_map(|x| x[0].as_str().map(String::from)).collect())
        .unwrap_or_default();
    let cs = report["comparisons"].as_array().cloned().unwrap_or_default();
    tasks
        .into_iter()
        .map(|t| {
            let mut by: [Vec<String>; 4] = Default::default();
            for c in cs.iter().filter(|c| c["task"] == t.as_str() && c["against"] == best.as_str()) {
                let run = c["run"].as_str().unwrap_or("").to_string();
                // The comparison is run − best: "worse" means the best beats it.
                let k = match c["verdict"].as_str() {
                    Some("worse") => 0,
                    Some("better") => 1,
                    Some("tied") => 2,
                    _ => 3,
                };
                by[k].push(run);
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
pub fn lr_search_text(search: &serde_json::Value) -> String {
    let Some(trials) = search["trials"].as_array() else { return String::new() };
    let cost: f64 = trials.iter().filter_map(|t| t["wall_s"].as_f64()).sum();
    let tried: Vec<String> = trials
        .iter()
        .map(|t| {
            format!(
                "{} {:.0}%",
                format::learning_rate(t["learning_rate"].as_f64().unwrap_or(0.0)),
                100.0 * t["score"].as_f64().unwrap_or(f64::NAN)
            )
        })
        .collect();
    format!("{} ({})", tried.join(", "), format::duration(cost))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_learning_rate_search_reads_in_one_cell() {
        let s = json!({"trials": [
            {"learning_rate": 0.0003, "score": 0.5, "wall_s": 10.0},
            {"learning_rate": 0.001, "score": 0.6, "wall_s": 12.0}
        ]});
        assert_eq!(lr_search_text(&s), "3e-4 50%, 1e-3 60% (22 s)");
        assert_eq!(lr_search_text(&serde_json::Value::Null), "");
    }

    #[test]
    fn the_table_marks_the_best_run_per_task() {
        let e = |v: f64| json!({"value": {"value": v, "lo": v - 0.1, "hi": v + 0.1}, "seed_values": []});
        let r = json!({
            "tasks": [["a", "classification", 10, 5], ["b", "generation", 10, 5]],
            "runs": [
                {"name": "base model", "strategy": "base", "scores": [e(0.9), e(0.1)]},
                {"name": "x", "strategy": "combined", "scores": [e(0.5), e(0.7)]},
                {"name": "y", "strategy": "separate", "scores": [e(0.6), e(0.3)]},
            ]
        });
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
        let e = |v: f64| json!({"value": {"value": v, "lo": v - 0.1, "hi": v + 0.1}, "seed_values": []});
        let d = |v: f64| json!({"value": v, "lo": v - 0.05, "hi": v + 0.05});
        let r = json!({
            "tasks": [["a", "classification", 10, 5], ["b", "generation", 10, 5]],
            "runs": [
                {"name": "x", "strategy": "combined", "scores": [e(0.5), e(0.7)]},
                {"name": "y", "strategy": "separate", "scores": [e(0.6), e(0.3)]},
            ],
            "recommendation": {"best": "x", "per_task_significant": [false, true]},
            "pairwise": [{"run": "x", "against": "y", "difference": d(0.15), "p_adjusted": 0.002, "verdict": "better"}],
            "comparisons": [
                {"run": "y", "against": "x", "task": "a", "difference": d(0.1), "p_adjusted": 0.5, "verdict": "undecided"},
                {"run": "y", "against": "x", "task": "b", "difference": d(-0.4), "p_adjusted": 0.001, "verdict": "worse"}
            ]
        });
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
    fn seeds_show_their_spread() {
        let r = json!({"tasks": [["a", "c", 1, 1]], "runs": [{"name": "x", "strategy": "combined",
            "scores": [{"value": {"value": 0.6, "lo": 0.5, "hi": 0.7}, "seed_values": [0.5, 0.7]}]}]});
        assert_eq!(score_rows(&r).1[0].cells[0], "60.0% ± 14.1 [50.0, 70.0]");
        assert_eq!(plain("**x** is best"), "x is best");
    }
}
