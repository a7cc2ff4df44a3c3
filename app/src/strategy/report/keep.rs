//! The keep sets' part of the report: every trained run against the base model on each
//! keep set (datasets that must not get worse, scored, never trained on), paired on its
//! examples, and which runs make one worse, in words.

use super::recommend::points;
use super::stats::compare_pairs;
use super::{Comparison, RunResult, Verdict, TIE_MARGIN};
use crate::strategy::TaskData;
use multitune_api::report::KeepSets;

/// The keep sets' comparisons and sentence (`None` without keep sets). `runs` are the
/// report's rows, the base model's among them.
pub(super) fn keep_sets(keep: &[TaskData], runs: &[RunResult], reps: usize, seed: u64) -> Option<KeepSets> {
    if keep.is_empty() {
        return None;
    }
    let sets = keep.iter().map(|t| (t.name.clone(), format!("{:?}", t.kind).to_lowercase(), t.eval.len())).collect();
    // Each row as its keep-set scores: the paired machinery compares them as tasks.
    let as_keep = |r: &RunResult| RunResult { name: r.name.clone(), scores: r.keep.clone(), ..Default::default() };
    let base = runs.iter().find(|r| r.is_base()).map(as_keep);
    let trained: Vec<RunResult> = runs.iter().filter(|r| !r.is_base()).map(as_keep).collect();
    let comparisons: Vec<Comparison> = match &base {
        Some(b) => compare_pairs(trained.iter().map(|r| (r, b)).collect(), reps, seed, true)
            .into_iter()
            .filter(|c| c.task.is_some())
            .collect(),
        None => vec![],
    };
    let text = text(&comparisons);
    Some(KeepSets { sets, comparisons, text })
}

/// Which runs make a keep set worse than the base model, which may and cannot be told
/// (their interval reaches below −[`TIE_MARGIN`]), or that none does.
pub(super) fn text(comparisons: &[Comparison]) -> String {
    if comparisons.is_empty() {
        return String::new();
    }
    let said =
        |c: &Comparison| format!("{} on `{}` ({})", c.run, c.task.as_deref().unwrap_or(""), points(&c.difference));
    let of = |v: Verdict| comparisons.iter().filter(move |c| c.verdict == v);
    let worse: Vec<String> = of(Verdict::Worse).map(said).collect();
    let unsure: Vec<String> = of(Verdict::Undecided).filter(|c| c.difference.lo < -TIE_MARGIN).map(said).collect();
    let better: Vec<String> = of(Verdict::Better).map(said).collect();
    let mut text = if worse.is_empty() {
        format!(
            "No run makes a keep set significantly worse than the base model ({} paired comparisons, \
             Holm-adjusted).",
            comparisons.len()
        )
    } else {
        format!("Worse than the base model on a keep set: {}.", worse.join("; "))
    };
    if !unsure.is_empty() {
        text.push_str(&format!(
            " Not ruled out, a drop of more than {:.0} points: {} (more keep-set examples would tell).",
            100.0 * TIE_MARGIN,
            unsure.join("; ")
        ));
    }
    if !better.is_empty() {
        text.push_str(&format!(" Better than the base model: {}.", better.join("; ")));
    }
    text
}

/// What the recommendation adds when its best run makes a keep set worse: where, and
/// the runs that make none worse.
pub(super) fn caution(k: &KeepSets, best: &str, runs: &[RunResult]) -> Option<String> {
    let hurt: Vec<String> = k
        .worse()
        .filter(|c| c.run == best)
        .map(|c| format!("`{}` ({})", c.task.as_deref().unwrap_or(""), points(&c.difference)))
        .collect();
    if hurt.is_empty() {
        return None;
    }
    let safe: Vec<&str> =
        runs.iter().filter(|r| !r.is_base() && !k.worse().any(|c| c.run == r.name)).map(|r| r.name.as_str()).collect();
    let alternatives = if safe.is_empty() {
        "every run makes one worse".to_string()
    } else {
        format!("runs that make none worse: {}", safe.join(", "))
    };
    Some(format!("Mind the keep sets: {best} makes {} worse than the base model; {alternatives}.", hurt.join(" and ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Record, TaskKind};
    use crate::eval::metrics::Estimate;
    use multitune_api::report::TaskScore;

    fn row(name: &str, strategy: &str, right: &[u8]) -> RunResult {
        let per_example: Vec<f64> = right.iter().map(|&x| f64::from(x)).collect();
        let value = per_example.iter().sum::<f64>() / per_example.len() as f64;
        let score = TaskScore {
            task: "support".into(),
            metric: "accuracy".into(),
            value: Estimate { value, lo: value, hi: value },
            per_example,
            ..Default::default()
        };
        RunResult { name: name.into(), strategy: strategy.into(), keep: vec![score], ..Default::default() }
    }

    #[test]
    fn a_run_that_loses_the_keep_set_is_named_and_one_that_keeps_it_is_not() {
        let keep = [TaskData {
            name: "support".into(),
            kind: TaskKind::Classification,
            labels: vec!["a".into(), "b".into()],
            train: vec![],
            eval: vec![Record::new("q", "a"); 40],
        }];
        // The base model gets all 40 right; `forgets` loses 20 of them, `keeps` none.
        let runs = [
            row("base model", "base", &[1; 40]),
            row("forgets", "combined", &[[1, 0]; 20].concat()),
            row("keeps", "separate", &[1; 40]),
        ];
        let k = keep_sets(&keep, &runs, 200, 7).expect("keep sets");
        assert_eq!(k.sets, vec![("support".to_string(), "classification".to_string(), 40)]);
        assert_eq!(k.comparisons.len(), 2, "one per trained run and keep set, the base model against none");
        let forgets = k.of("forgets", "support").expect("compared");
        assert_eq!(forgets.verdict, Verdict::Worse);
        assert_eq!(forgets.discordant, (0, 20));
        assert!((forgets.difference.value + 0.5).abs() < 1e-12);
        assert_eq!(k.of("keeps", "support").expect("compared").verdict, Verdict::Tied);
        assert_eq!(k.worse().count(), 1);
        assert!(
            k.text.starts_with("Worse than the base model on a keep set: forgets on `support` (-50.0 points"),
            "{}",
            k.text
        );
        assert!(!k.text.contains("keeps on"), "{}", k.text);
        assert!(keep_sets(&[], &runs, 200, 7).is_none());
        let c = caution(&k, "forgets", &runs).expect("the best run makes it worse");
        assert!(c.starts_with("Mind the keep sets: forgets makes `support` (-50.0 points ["), "{c}");
        assert!(c.ends_with("]) worse than the base model; runs that make none worse: keeps."), "{c}");
        assert_eq!(caution(&k, "keeps", &runs), None);
    }

    #[test]
    fn no_drop_and_an_undecided_one_are_said_so() {
        let c = |verdict: Verdict, lo: f64| Comparison {
            run: "r".into(),
            against: "base model".into(),
            task: Some("k".into()),
            difference: Estimate { value: 0.0, lo, hi: 0.02 },
            discordant: (1, 1),
            p_value: 1.0,
            p_adjusted: 1.0,
            verdict,
        };
        assert_eq!(
            text(&[c(Verdict::Tied, -0.02)]),
            "No run makes a keep set significantly worse than the base model (1 paired comparisons, Holm-adjusted)."
        );
        let t = text(&[c(Verdict::Undecided, -0.2)]);
        assert!(t.contains("Not ruled out, a drop of more than 5 points: r on `k` (+0.0 points [-20.0, 2.0])"), "{t}");
    }
}
