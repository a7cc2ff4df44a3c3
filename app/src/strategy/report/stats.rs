//! The report's statistics: runs compared example by example (paired bootstrap interval
//! of the difference, exact McNemar test, Holm's adjustment over each family), several
//! seeds folded into one row, what held-out sets can detect, and how alike per-task
//! adapters are.

use std::fmt::Write as _;

use candle_core::DType;

use crate::eval::metrics::{paired, Estimate};
use crate::model::lora::LoraAdapter;
use crate::Result;

use super::{Comparison, Forgetting, Power, Retention, RunResult, Similarity, TaskScore, Verdict, TIE_MARGIN};

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
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
                *sc = fold_scores(&all.iter().map(|x| &x.scores[i]).collect::<Vec<_>>());
                sc.seed_values = all.iter().map(|x| x.scores[i].value.value).collect();
            }
            if all.iter().all(|x| x.keep.len() == r.keep.len()) {
                for (i, sc) in r.keep.iter_mut().enumerate() {
                    *sc = fold_scores(&all.iter().map(|x| &x.keep[i]).collect::<Vec<_>>());
                    sc.seed_values = all.iter().map(|x| x.keep[i].value.value).collect();
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
                // After each stage, the mean over the seeds (as the matrix).
                let retention = (0..f.retention.len())
                    .filter_map(|k| {
                        let at: Vec<Retention> = all
                            .iter()
                            .filter_map(|x| x.forgetting.as_ref().and_then(|g| g.retention.get(k).copied()))
                            .collect();
                        Retention::mean(&at)
                    })
                    .collect();
                r.forgetting = Some(Forgetting {
                    retention,
                    ..Forgetting::new(f.stages.clone(), f.tasks.clone(), matrix, &order)
                });
            }
            let kept: Vec<Retention> = all.iter().filter_map(|x| x.retention).collect();
            if kept.len() == all.len() {
                r.retention = Retention::mean(&kept);
            }
            r
        })
        .collect()
}

/// Several scores of one task on the same examples (several seeds' runs, a routed run's
/// adapters) as one: every estimate the mean, each example's value the mean (the share
/// that got it right), the first one's `seed_values`.
pub fn fold_scores(all: &[&TaskScore]) -> TaskScore {
    let mut sc = all[0].clone();
    if all.len() < 2 {
        return sc;
    }
    let of = |f: &dyn Fn(&TaskScore) -> Estimate| all.iter().map(|x| f(x)).collect::<Vec<_>>();
    if all.iter().all(|x| x.per_example.len() == sc.per_example.len()) {
        sc.per_example = (0..sc.per_example.len())
            .map(|k| mean(&all.iter().map(|x| x.per_example[k]).collect::<Vec<_>>()))
            .collect();
    }
    sc.value = mean_estimate(&of(&|s| s.value));
    sc.loss = mean_estimate(&of(&|s| s.loss));
    for (m, (name, est)) in sc.metrics.iter_mut().enumerate() {
        let es: Vec<Estimate> =
            all.iter().filter_map(|x| x.metrics.get(m).filter(|p| p.0 == *name).map(|p| p.1)).collect();
        *est = mean_estimate(&es);
    }
    sc
}

/// The paired comparisons of `runs` against `best` and against `base`: one family of
/// macro-average comparisons and one of per-task ones, each Holm-adjusted.
pub(super) fn compare_runs(
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
pub(super) fn pairwise(runs: &[&RunResult], reps: usize, seed: u64) -> Vec<Comparison> {
    let pairs: Vec<(&RunResult, &RunResult)> =
        runs.iter().enumerate().flat_map(|(i, a)| runs[i + 1..].iter().map(move |b| (*a, *b))).collect();
    compare_pairs(pairs, reps, seed, false)
}

/// Paired comparisons of `pairs` (first against second): the macro average, and each
/// task when `per_task`; the macro ones and the per-task ones each Holm-adjusted as a
/// family.
pub(super) fn compare_pairs(
    pairs: Vec<(&RunResult, &RunResult)>,
    reps: usize,
    seed: u64,
    per_task: bool,
) -> Vec<Comparison> {
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
pub(super) fn per_task_margins(trained: &[&RunResult], tasks: usize) -> Vec<bool> {
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

/// What held-out sets of these sizes (one per task) can tell apart, before anything is
/// trained.
pub fn power(examples_per_task: &[usize]) -> Power {
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
    Power { examples_per_task: examples_per_task.to_vec(), detectable, text }
}

/// `20 held-out examples per task (4 tasks)`, or `20–30 …` when the sizes differ.
pub(super) fn describe_sizes(n: &[usize]) -> String {
    let (lo, hi) = (n.iter().min().copied().unwrap_or(0), n.iter().max().copied().unwrap_or(0));
    let tasks = if n.len() == 1 { "1 task".to_string() } else { format!("{} tasks", n.len()) };
    if lo == hi {
        format!("{lo} held-out examples per task ({tasks})")
    } else {
        format!("{lo}–{hi} held-out examples per task ({tasks})")
    }
}

/// How alike per-task adapters are ([`Similarity`]), computed one weight matrix at a time:
/// a first pass finds each task's top-20% magnitude threshold (one task's entries held at
/// once), a second accumulates every pair's sums layer by layer. Holding every task's
/// dense deltas at once took 1.7 GB for four tasks on the default model.
pub fn similarity(tasks: &[String], adapters: &[LoraAdapter]) -> Result<Similarity> {
    let n = adapters.len();
    let matrix = |a: &LoraAdapter, li: usize, t| -> Result<Vec<f32>> {
        Ok(a.delta(li, t)?.expect("present").to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    };
    let keys = |a: &LoraAdapter| -> Vec<(usize, crate::model::lora::Target)> {
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
    Ok(Similarity { tasks: tasks.to_vec(), cosine, sign_conflict: conflict })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::report::{run_result, RunCost};

    fn run(values: &[f64]) -> RunResult {
        let mut r = run_result(
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
        let p = power(&[20, 20, 20, 20]);
        assert!((p.detectable - 0.2215).abs() < 1e-3);
        assert!(
            p.text.contains("20 held-out examples per task (4 tasks)") && p.text.contains("~22 points"),
            "{}",
            p.text
        );
        assert!(p.text.contains("Warning"), "{}", p.text);
        let p = power(&[400, 300]);
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
}
