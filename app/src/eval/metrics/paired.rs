//! Paired comparisons of two runs scored on the same held-out examples: the difference of
//! their mean per-example scores with a paired bootstrap interval (the same resampled
//! indices for both runs, so what the examples share cancels), the exact McNemar test on
//! the discordant pairs, Holm's adjustment for several comparisons, and the smallest
//! difference a held-out set of a given size can be expected to detect.

use rand::Rng;

use super::Estimate;
use crate::rng;

/// The difference of means `a − b` over paired per-example scores, with a 95% paired
/// bootstrap interval from `reps` resamples seeded by `seed`.
pub fn paired_difference(a: &[f64], b: &[f64], reps: usize, seed: u64) -> Estimate {
    paired_macro_difference(&[(a, b)], reps, seed)
}

/// The macro average over tasks of the per-task differences of means `a − b`, with a 95%
/// paired bootstrap interval: each resample draws examples within each task (the same
/// indices for both runs) and averages the tasks' differences.
pub fn paired_macro_difference(tasks: &[(&[f64], &[f64])], reps: usize, seed: u64) -> Estimate {
    for (a, b) in tasks {
        assert_eq!(a.len(), b.len(), "paired scores need the same examples");
    }
    let diffs: Vec<Vec<f64>> = tasks.iter().map(|(a, b)| a.iter().zip(*b).map(|(x, y)| x - y).collect()).collect();
    let mean = |d: &[f64], idx: &mut dyn Iterator<Item = usize>| {
        let (s, n) = idx.fold((0.0, 0usize), |(s, n), i| (s + d[i], n + 1));
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    };
    let macro_of = |means: &[f64]| means.iter().sum::<f64>() / means.len().max(1) as f64;
    let value = macro_of(&diffs.iter().map(|d| mean(d, &mut (0..d.len()))).collect::<Vec<_>>());
    if reps == 0 || diffs.iter().all(Vec::is_empty) {
        return Estimate { value, lo: value, hi: value };
    }
    let mut r = rng::stream(seed, 12, 0);
    let mut stats: Vec<f64> = (0..reps)
        .map(|_| {
            let means: Vec<f64> = diffs
                .iter()
                .map(|d| {
                    let n = d.len();
                    if n == 0 {
                        return 0.0;
                    }
                    let idx: Vec<usize> = (0..n).map(|_| r.random_range(0..n)).collect();
                    mean(d, &mut idx.into_iter())
                })
                .collect();
            macro_of(&means)
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let at = |q: f64| stats[((q * (reps - 1) as f64).round() as usize).min(reps - 1)];
    Estimate { value, lo: at(0.025).min(value), hi: at(0.975).max(value) }
}

/// The discordant pairs of two runs' right/wrong answers: (right in `a` only, right in
/// `b` only). Scores are right when at least one half (a seed-averaged score counts as
/// right when most seeds were).
pub fn discordant(a: &[f64], b: &[f64]) -> (usize, usize) {
    a.iter().zip(b).fold((0, 0), |(x, y), (&p, &q)| match (p >= 0.5, q >= 0.5) {
        (true, false) => (x + 1, y),
        (false, true) => (x, y + 1),
        _ => (x, y),
    })
}

/// The exact McNemar test: the two-sided p-value of `b` against `c` discordant pairs
/// under the null hypothesis that either kind is equally likely (binomial, p = ½).
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // P(X ≤ k) for X ~ Binomial(n, ½), summed in log space so that large n stays exact
    // enough.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    (2.0 * tail).min(1.0)
}

/// Holm's step-down adjustment: adjusted p-values in the input order, each at most 1 and
/// never below the one of a smaller raw p-value.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&i, &j| p[i].total_cmp(&p[j]));
    let mut out = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// z for a two-sided 5% test plus z for 80% power.
const Z_SUM: f64 = 1.959_964 + 0.841_621;

/// The variance of one example's paired difference of right/wrong scores when the two
/// runs disagree on half the examples: the worst case we plan for (the variance is the
/// share of discordant examples minus the squared difference).
const DISCORDANT_PLANNED: f64 = 0.5;

/// The smallest macro-average difference (a fraction) that held-out sets of these sizes
/// detect with 80% power in a two-sided 5% test, planning for runs that disagree on half
/// the examples. One task with 20 examples: 0.44; four tasks of 20: 0.22.
pub fn detectable_difference(examples_per_task: &[usize]) -> f64 {
    let t = examples_per_task.len().max(1) as f64;
    let var: f64 = examples_per_task.iter().map(|&n| DISCORDANT_PLANNED / n.max(1) as f64).sum::<f64>() / (t * t);
    Z_SUM * var.sqrt()
}

/// How many examples per task (all tasks alike) detect a macro-average difference of
/// `difference` (a fraction) over `tasks` tasks, with the same planning as
/// [`detectable_difference`].
pub fn examples_needed(difference: f64, tasks: usize) -> usize {
    let d = difference.abs().max(1e-3);
    (DISCORDANT_PLANNED * (Z_SUM / d).powi(2) / tasks.max(1) as f64).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_by_hand() {
        // No discordant pairs: nothing to tell.
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // 0 against 5: 2 · ½^5 = 0.0625.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
        assert!((mcnemar_exact(5, 0) - 0.0625).abs() < 1e-12);
        // 1 against 9: 2 · (1 + 10) / 1024 = 0.021484375.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-12);
        // 2 against 8: 2 · (1 + 10 + 45) / 1024 = 0.109375.
        assert!((mcnemar_exact(8, 2) - 112.0 / 1024.0).abs() < 1e-12);
        // Balanced: capped at 1.
        assert_eq!(mcnemar_exact(4, 4), 1.0);
        // Large n stays finite and tiny: 0 against 200.
        let p = mcnemar_exact(0, 200);
        assert!(p > 0.0 && p < 1e-50, "{p}");
    }

    #[test]
    fn holm_by_hand() {
        // Sorted 0.01, 0.02, 0.04 over m = 3: 0.03, 0.04, max(0.04, 0.04) = 0.04.
        let adj = holm(&[0.04, 0.01, 0.02]);
        assert!((adj[1] - 0.03).abs() < 1e-12);
        assert!((adj[2] - 0.04).abs() < 1e-12);
        assert!((adj[0] - 0.04).abs() < 1e-12);
        // Monotone and capped at 1.
        let adj = holm(&[0.5, 0.3, 0.9]);
        assert!(adj.iter().zip([1.0, 0.9, 1.0]).all(|(a, b)| (a - b).abs() < 1e-12), "{adj:?}");
        assert!(holm(&[]).is_empty());
    }

    #[test]
    fn paired_difference_by_hand() {
        // a right on examples 0..6, b on 0..3: the difference is 3/10 on every resample
        // that keeps the same examples, and the point value is exactly 0.3.
        let a: Vec<f64> = (0..10).map(|i| f64::from(u8::from(i < 6))).collect();
        let b: Vec<f64> = (0..10).map(|i| f64::from(u8::from(i < 3))).collect();
        let d = paired_difference(&a, &b, 2000, 1);
        assert!((d.value - 0.3).abs() < 1e-12);
        assert!(d.lo <= 0.3 && d.hi >= 0.3 && d.lo >= 0.0, "{d:?}");
        // Identical runs: a point interval at zero.
        let same = paired_difference(&a, &a, 500, 1);
        assert_eq!((same.lo, same.value, same.hi), (0.0, 0.0, 0.0));
        // Macro: two tasks with differences 0.3 and 0.2 average to 0.25.
        let c: Vec<f64> = (0..5).map(|i| f64::from(u8::from(i < 1))).collect();
        let e: Vec<f64> = (0..5).map(|i| f64::from(u8::from(i < 1 || i == 4))).collect();
        let m = paired_macro_difference(&[(&a, &b), (&e, &c)], 500, 2);
        assert!((m.value - (0.3 + 0.2) / 2.0).abs() < 1e-12, "{m:?}");
        assert_eq!(paired_macro_difference(&[(&a, &b)], 500, 9), paired_difference(&a, &b, 500, 9));
    }

    /// The reason to pair: two runs that share most of their answers differ by 10 points
    /// on 100 examples. Their unpaired intervals overlap widely, the paired interval
    /// excludes zero, and McNemar agrees (10 against 0 discordant pairs).
    #[test]
    fn pairing_separates_what_unpaired_intervals_cannot() {
        use crate::eval::metrics::bootstrap::{bootstrap_interval, mean_of};
        let a: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i % 10 < 6))).collect(); // 60%
        let b: Vec<f64> = (0..100).map(|i| f64::from(u8::from(i % 10 < 5))).collect(); // 50%, a subset
        let ua = bootstrap_interval(100, 2000, 3, mean_of(&a));
        let ub = bootstrap_interval(100, 2000, 3, mean_of(&b));
        assert!(ub.hi > ua.lo, "the unpaired intervals overlap: {ua:?} {ub:?}");
        let d = paired_difference(&a, &b, 2000, 3);
        assert!(d.lo > 0.0, "the paired interval excludes zero: {d:?}");
        assert_eq!(discordant(&a, &b), (10, 0));
        assert!(mcnemar_exact(10, 0) < 0.01);
    }

    /// Runs that are independent by construction: pairing gains nothing, and the paired
    /// interval's width matches the unpaired difference's (the two intervals' widths
    /// combined in quadrature) within sampling error.
    #[test]
    fn paired_equals_unpaired_for_independent_runs() {
        use crate::eval::metrics::bootstrap::{bootstrap_interval, mean_of};
        let mut r = rng::stream(5, 0, 0);
        let n = 400;
        let a: Vec<f64> = (0..n).map(|_| f64::from(u8::from(r.random_bool(0.7)))).collect();
        let b: Vec<f64> = (0..n).map(|_| f64::from(u8::from(r.random_bool(0.6)))).collect();
        let d = paired_difference(&a, &b, 4000, 6);
        let (ua, ub) = (bootstrap_interval(n, 4000, 7, mean_of(&a)), bootstrap_interval(n, 4000, 8, mean_of(&b)));
        let unpaired = ((ua.hi - ua.lo).powi(2) + (ub.hi - ub.lo).powi(2)).sqrt();
        let paired = d.hi - d.lo;
        assert!((paired / unpaired - 1.0).abs() < 0.12, "paired width {paired}, unpaired {unpaired}");
    }

    #[test]
    fn detectable_difference_by_the_formula() {
        // 2.8016 · sqrt(0.5 / 20) = 0.443; four tasks of 20 halve it.
        assert!((detectable_difference(&[20]) - 0.443).abs() < 1e-3);
        assert!((detectable_difference(&[20; 4]) - 0.2215).abs() < 1e-3);
        assert!(detectable_difference(&[100; 4]) < 0.1);
        // The inverse: 0.2215 over four tasks needs 20 per task.
        assert_eq!(examples_needed(detectable_difference(&[20; 4]) + 1e-9, 4), 20);
        assert!(examples_needed(0.05, 4) > 300);
    }
}
