//! How a combined run draws its examples from several tasks.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::rng;

/// Task sampling for a mixture.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mixing {
    /// Each task in proportion to its size.
    Proportional,
    /// T5-style: probability ∝ `n_t^(1/T)`; `T = 1` is proportional, large `T` uniform.
    Temperature {
        /// The temperature `T`.
        t: f64,
    },
    /// Every task equally often.
    Uniform,
    /// One of [`Mixing::searched`], picked on a validation split before the run trains
    /// (`compare.rs`, [`crate::strategy::lr_search::halving`]); a run always trains with
    /// the mixing the search chose.
    Search,
}

impl Mixing {
    /// What a search picks among, the default first (ties go to it): the contract's
    /// [`multitune_api::MixingChoice::SEARCHED`].
    pub fn searched() -> Vec<Mixing> {
        multitune_api::MixingChoice::SEARCHED.into_iter().map(Mixing::from).collect()
    }

    /// [`Mixing::searched`] for tasks of sizes `sizes`, those that sample alike (all of
    /// them, for tasks of equal size) as one candidate: the first of them.
    pub fn searched_for(sizes: &[usize]) -> Vec<Mixing> {
        let mut out: Vec<Mixing> = Vec::new();
        for m in Self::searched() {
            let p = m.probabilities(sizes);
            let same = |c: &Mixing| c.probabilities(sizes).iter().zip(&p).all(|(a, b)| (a - b).abs() < 1e-9);
            if !out.iter().any(same) {
                out.push(m);
            }
        }
        out
    }

    /// Sampling probabilities for tasks of sizes `sizes` (a `Search` not yet resolved
    /// samples proportionally, as its first candidate does).
    pub fn probabilities(&self, sizes: &[usize]) -> Vec<f64> {
        let w: Vec<f64> = match *self {
            Mixing::Proportional | Mixing::Search => sizes.iter().map(|&n| n as f64).collect(),
            Mixing::Temperature { t } => sizes.iter().map(|&n| (n as f64).powf(1.0 / t.max(1e-6))).collect(),
            Mixing::Uniform => sizes.iter().map(|&n| if n > 0 { 1.0 } else { 0.0 }).collect(),
        };
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    }
}

/// A seeded sequence of `(task, example)` draws of length `n`: tasks by `probs`, and
/// within a task without replacement, reshuffled each pass.
pub fn draw(sizes: &[usize], probs: &[f64], n: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut r = rng::stream(seed, 40, 0);
    let mut orders: Vec<Vec<usize>> =
        sizes.iter().enumerate().map(|(t, &k)| rng::permutation(&mut rng::stream(seed, 41, t as u64), k)).collect();
    let mut pos = vec![0usize; sizes.len()];
    let mut passes = vec![0u64; sizes.len()];
    (0..n)
        .map(|_| {
            let mut x = r.random::<f64>();
            let mut t = 0;
            while t + 1 < probs.len() && x >= probs[t] {
                x -= probs[t];
                t += 1;
            }
            if pos[t] == sizes[t] {
                passes[t] += 1;
                orders[t] = rng::permutation(&mut rng::stream(seed, 41 + passes[t] * 1000, t as u64), sizes[t]);
                pos[t] = 0;
            }
            pos[t] += 1;
            (t, orders[t][pos[t] - 1])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probabilities_follow_the_definitions() {
        let sizes = [100, 400];
        assert_eq!(Mixing::Proportional.probabilities(&sizes), vec![0.2, 0.8]);
        assert_eq!(Mixing::Uniform.probabilities(&sizes), vec![0.5, 0.5]);
        // T = 2: sqrt(100) = 10, sqrt(400) = 20 -> 1/3, 2/3.
        let p = Mixing::Temperature { t: 2.0 }.probabilities(&sizes);
        assert!((p[0] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn mixings_that_sample_alike_are_searched_once() {
        assert_eq!(Mixing::searched_for(&[300, 300, 300]), vec![Mixing::Proportional]);
        assert_eq!(Mixing::searched_for(&[100, 400]).len(), 3);
    }

    #[test]
    fn draws_follow_the_probabilities_and_cover_each_task() {
        let d = draw(&[10, 30], &[0.5, 0.5], 2000, 1);
        let first = d.iter().filter(|(t, _)| *t == 0).count();
        assert!((900..1100).contains(&first), "{first}");
        // The first ten draws of task 0 are a permutation of its ten examples.
        let mut seen: Vec<usize> = d.iter().filter(|(t, _)| *t == 0).take(10).map(|x| x.1).collect();
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(d, draw(&[10, 30], &[0.5, 0.5], 2000, 1));
    }
}
