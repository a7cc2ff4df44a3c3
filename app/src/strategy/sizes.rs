//! Data sizes of a comparison: the shares of every task's training set that its
//! strategies also train on (the data-size curves), their checks, and the nested,
//! seeded subsets themselves. The held-out examples never change with the size.

use crate::adapter::merge::MergeMethod;
use crate::rng::{self, streams};
use crate::strategy::report::RunResult;
use crate::strategy::spec::{CompareConfig, StrategySpec};
use crate::strategy::task::TaskData;

/// The fewest training examples of a task a data size may leave.
pub const MIN_EXAMPLES: usize = 4;

/// What is wrong with a list of data fractions on its own: each must lie in (0, 1] and
/// appear once. Empty when it is fine.
pub fn fraction_problems(fractions: &[f64]) -> Vec<String> {
    let mut out = Vec::new();
    for f in fractions {
        if !(f.is_finite() && *f > 0.0 && *f <= 1.0) {
            out.push(format!("{f} is not a share of the training data (each must be in (0, 1])"));
        }
    }
    let mut sorted: Vec<f64> = fractions.iter().copied().filter(|f| f.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    for w in sorted.windows(2).filter(|w| w[0] == w[1]) {
        out.push(format!("{} is listed twice", w[0]));
    }
    out.dedup();
    out
}

/// Training examples a task of `n` keeps at `fraction` (rounded; the full set at 1).
pub fn examples_at(n: usize, fraction: f64) -> usize {
    ((n as f64) * fraction).round() as usize
}

/// What is wrong with `fractions` for tasks with these training sizes (`(name, examples)`):
/// a size that leaves a task fewer than [`MIN_EXAMPLES`] examples. Empty when it is fine.
pub fn size_problems(fractions: &[f64], tasks: &[(&str, usize)]) -> Vec<String> {
    let mut out = Vec::new();
    for &f in fractions.iter().filter(|f| f.is_finite() && **f > 0.0 && **f <= 1.0) {
        for &(name, n) in tasks {
            let k = examples_at(n, f);
            if k < MIN_EXAMPLES {
                out.push(format!(
                    "{f} leaves task `{name}` {k} training example{} of its {n} (at least {MIN_EXAMPLES} are needed)",
                    if k == 1 { "" } else { "s" }
                ));
            }
        }
    }
    out
}

/// The sizes below the full data that `cfg` trains at, largest first (the full data, the
/// comparison itself, runs before them).
pub fn smaller(cfg: &CompareConfig) -> Vec<f64> {
    let mut f: Vec<f64> = cfg.data_fractions.iter().copied().filter(|f| *f < 1.0).collect();
    f.sort_by(|a, b| b.total_cmp(a));
    f.dedup();
    f
}

/// Every task with its training set cut to `fraction`: the first examples of one seeded
/// permutation per task (so a smaller size's examples are all in every larger one), in
/// the file's order; the held-out examples unchanged.
pub fn subset(tasks: &[TaskData], fraction: f64, seed: u64) -> Vec<TaskData> {
    tasks
        .iter()
        .enumerate()
        .map(|(ti, t)| {
            let mut keep = rng::permutation(&mut rng::stream(seed, streams::DATA_SIZE, ti as u64), t.train.len());
            keep.truncate(examples_at(t.train.len(), fraction));
            keep.sort_unstable();
            TaskData { train: keep.iter().map(|&i| t.train[i].clone()).collect(), ..t.clone() }
        })
        .collect()
}

/// The comparison at data size `fraction`: the budget scaled with it (the same epochs as
/// the full data), and a separate run's merges cut to `best_merge` — the merge with the
/// best macro average on the full data (none: no merge) —, since merges train nothing and
/// scoring every one at every size would cost more than its training.
pub fn scaled(cfg: &CompareConfig, fraction: f64, best_merge: Option<MergeMethod>) -> CompareConfig {
    let budget_tokens = ((cfg.budget_tokens as f64 * fraction).round() as usize).max(1);
    let strategies = cfg
        .strategies
        .iter()
        .map(|s| match s {
            StrategySpec::Separate { merges, merge_rank } => StrategySpec::Separate {
                merges: merges.iter().copied().filter(|m| Some(*m) == best_merge).collect(),
                merge_rank: *merge_rank,
            },
            other => other.clone(),
        })
        .collect();
    // A curve's point is the merge at the full data's settings: no merge search again.
    CompareConfig { budget_tokens, strategies, tune_merges: false, ..cfg.clone() }
}

/// The merge of the separate strategy with the best macro average among `full` (the
/// full data's rows); the first of equals. `None` without merges.
pub fn best_merge(cfg: &CompareConfig, full: &[RunResult]) -> Option<MergeMethod> {
    let merges = cfg.strategies.iter().find_map(|s| match s {
        StrategySpec::Separate { merges, .. } => Some(merges),
        _ => None,
    })?;
    let mut best: Option<(MergeMethod, f64)> = None;
    for &m in merges {
        let name = StrategySpec::merge_run_name(m);
        // In a comparison of methods, the merge's rows with every method.
        for r in full.iter().filter(|r| r.plain_name() == name) {
            let v = r.macro_average().value;
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((m, v));
            }
        }
    }
    best.map(|(m, _)| m)
}

/// How a data size's runs are named: ` [25% data]`.
pub fn suffix(fraction: f64) -> String {
    format!(" [{} data]", percent(fraction))
}

/// A fraction as a percentage without needless decimals (`25%`, `12.5%`).
pub fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if (p - p.round()).abs() < 1e-9 {
        format!("{}%", p.round())
    } else {
        format!("{}%", (p * 10.0).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Record, TaskKind};

    fn task(name: &str, n: usize) -> TaskData {
        let train = (0..n).map(|i| Record::new(format!("{name} {i}"), format!("{i}"))).collect();
        let eval = vec![Record::new("held", "out")];
        TaskData { name: name.into(), kind: TaskKind::Generation, labels: vec![], train, eval }
    }

    #[test]
    fn fractions_outside_zero_one_and_duplicates_are_named() {
        assert!(fraction_problems(&[0.25, 0.5, 1.0]).is_empty());
        let p = fraction_problems(&[0.0, 1.5, f64::NAN, 0.5, 0.5, -0.1]);
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].starts_with("0 is not a share"), "{p:?}");
        assert!(p[1].starts_with("1.5 is not a share"), "{p:?}");
        assert!(p.contains(&"0.5 is listed twice".to_string()), "{p:?}");
    }

    #[test]
    fn smaller_sizes_score_the_full_datas_best_merge_only() {
        use crate::eval::metrics::Estimate;
        use crate::strategy::report::TaskScore;
        let [linear, _, ties, dare, _] = MergeMethod::defaults()[..] else { unreachable!("five merges") };
        let separate = StrategySpec::Separate { merges: vec![linear, ties, dare], merge_rank: 8 };
        let combined = StrategySpec::Combined { mixing: crate::strategy::Mixing::Proportional, task_tag: false };
        let cfg = CompareConfig {
            strategies: vec![combined.clone(), separate],
            budget_tokens: 1000,
            train: Default::default(),
            eval: Default::default(),
            seeds: vec![],
            lr_search: None,
            retention: false,
            data_fractions: vec![0.5],
            tune_merges: false,
            methods: vec![],
        };
        let row = |m: MergeMethod, v: f64| RunResult {
            name: StrategySpec::merge_run_name(m),
            scores: vec![TaskScore { value: Estimate { value: v, lo: v, hi: v }, ..Default::default() }],
            ..Default::default()
        };
        let full = [row(linear, 0.5), row(ties, 0.7), row(dare, 0.7)];
        assert_eq!(best_merge(&cfg, &full), Some(ties), "the best, the first of equals");
        let half = scaled(&cfg, 0.5, Some(ties));
        assert_eq!(half.budget_tokens, 500);
        assert_eq!(half.strategies[0], combined);
        assert_eq!(half.strategies[1], StrategySpec::Separate { merges: vec![ties], merge_rank: 8 });
        let none = scaled(&cfg, 0.5, None);
        assert_eq!(none.strategies[1], StrategySpec::Separate { merges: vec![], merge_rank: 8 });
        assert_eq!(best_merge(&CompareConfig { strategies: vec![combined], ..cfg }, &full), None);
    }

    #[test]
    fn a_size_leaving_fewer_than_four_examples_names_the_task() {
        assert!(size_problems(&[0.1], &[("a", 40)]).is_empty());
        let p = size_problems(&[0.1, 0.5], &[("a", 40), ("b", 30)]);
        assert_eq!(p, vec!["0.1 leaves task `b` 3 training examples of its 30 (at least 4 are needed)".to_string()]);
    }

    #[test]
    fn subsets_are_nested_seeded_and_keep_the_held_out_examples() {
        let tasks = [task("a", 40), task("b", 7)];
        let quarter = subset(&tasks, 0.25, 3);
        let half = subset(&tasks, 0.5, 3);
        for (ti, t) in tasks.iter().enumerate() {
            assert_eq!(quarter[ti].train.len(), examples_at(t.train.len(), 0.25));
            assert_eq!(half[ti].train.len(), examples_at(t.train.len(), 0.5));
            assert!(quarter[ti].train.iter().all(|r| half[ti].train.contains(r)), "nested");
            assert!(half[ti].train.iter().all(|r| t.train.contains(r)));
            // The file's order, not the permutation's.
            let pos: Vec<usize> = half[ti].train.iter().map(|r| t.train.iter().position(|x| x == r).unwrap()).collect();
            assert!(pos.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(half[ti].eval, t.eval);
        }
        assert_eq!(subset(&tasks, 0.5, 3), half, "seeded");
        assert_ne!(subset(&tasks, 0.5, 4)[0].train, half[0].train, "another seed, another subset");
        assert_eq!(subset(&tasks, 1.0, 3)[0].train, tasks[0].train);
        assert_eq!(percent(0.25), "25%");
        assert_eq!(percent(0.125), "12.5%");
    }
}
