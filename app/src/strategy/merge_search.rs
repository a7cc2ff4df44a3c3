//! `--tune-merges`: every merge of the separate strategy gets its parameters from a small
//! seeded search on a validation split carved from each task's **training** data (the
//! held-out examples the report scores are never used): linear and task arithmetic their
//! per-task weights, TIES its density and scale, DARE its drop rate and scale.
//! Concatenation, the exact sum, has nothing to tune.
//!
//! Merges train nothing, so a candidate costs its merge and quick scoring passes over
//! the split, in one halving step: every candidate on the split's first half, the better
//! half of them (and the defaults) on the rest too, the best on the whole split chosen
//! — three quarters of scoring every candidate on all of it. The passes: label ranking
//! for classification, and for generation each answer walked
//! along its reference in one teacher-forced pass, no decoding
//! ([`crate::eval::EvalOptions::follow_only`]: exact match is then a lower bound, the
//! loss exact). A TIES or DARE merge's scale multiplies its merged update (and the
//! low-rank refit of a scaled matrix is the scaled refit), so each density or drop rate
//! is merged and refit once and its scales are copies. The defaults are the first
//! candidate, and a tie goes to the earlier candidate: the search leaves the defaults
//! only for a better validation score (or an equal score at a lower loss).
//!
//! The validation examples were part of the per-task adapters' training data (merges
//! are built from adapters trained on all of it); the held-out comparison of the tuned
//! merge with its defaults, paired, says whether the choice carried over.

use std::collections::BTreeMap;

use crate::adapter::merge::{self, MergeMethod};
use crate::model::lora::LoraAdapter;
use crate::rng;
use crate::strategy::lr_search;
use crate::strategy::task::TaskData;
use crate::Result;

/// Validation examples per task each candidate is scored on.
pub const VALIDATION: usize = 16;

/// Seeded per-task weightings tried beside the defaults (linear, task arithmetic).
const WEIGHT_DRAWS: usize = 3;

/// The TIES densities searched, each with every scale of [`TIES_SCALES`].
pub const TIES_DENSITIES: [f64; 3] = [0.1, 0.2, 0.4];
/// The TIES scales searched.
pub const TIES_SCALES: [f64; 2] = [1.0, 1.5];
/// The DARE drop rates searched, each with every scale of [`DARE_SCALES`].
pub const DARE_DROPS: [f64; 3] = [0.3, 0.5, 0.7];
/// The DARE scales searched.
pub const DARE_SCALES: [f64; 2] = [0.5, 1.0];

/// One set of merge parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate {
    /// `Σ w_t ΔW_t`, exact: linear (weights summing to 1) and task arithmetic (any
    /// positive weights).
    Weighted(Vec<f64>),
    /// A TIES or DARE merge at scale 1, refit to low rank, its update times `scale`.
    Scaled {
        /// The method at scale 1.
        method: MergeMethod,
        /// The scale λ.
        scale: f64,
    },
}

impl Candidate {
    /// The parameters in words (`density 0.2, λ 1`, `weights 0.25/0.25/0.5`).
    pub fn describe(&self, method: MergeMethod) -> String {
        let g = |x: f64| format!("{}", (x * 1000.0).round() / 1000.0);
        match self {
            Candidate::Weighted(w) => {
                let w = w.iter().map(|&x| g(x)).collect::<Vec<_>>().join("/");
                match method {
                    MergeMethod::Linear => format!("weights {w}"),
                    _ => format!("λ {w}"),
                }
            }
            Candidate::Scaled { method: MergeMethod::Ties { density, .. }, scale } => {
                format!("density {}, λ {}", g(*density), g(*scale))
            }
            Candidate::Scaled { method: MergeMethod::Dare { drop, .. }, scale } => {
                format!("drop {}, λ {}", g(*drop), g(*scale))
            }
            Candidate::Scaled { method, scale } => format!("{}, λ {}", method.name(), g(*scale)),
        }
    }
}

/// Whether `method` has parameters to tune (concatenation has none).
pub fn tunable(method: MergeMethod) -> bool {
    !matches!(method, MergeMethod::Concat)
}

/// The candidates for `method` over `tasks` tasks, its own parameters first; seeded.
/// Linear: the equal weights, then three seeded log-normal weightings normalised to
/// sum 1. Task arithmetic: λ for every task, then as many draws around it. TIES and
/// DARE: every density (drop rate) with every scale of the grids above.
pub fn candidates(method: MergeMethod, tasks: usize, seed: u64) -> Vec<Candidate> {
    let draws = |k: usize| -> Vec<f64> {
        let z = rng::normal(&mut rng::stream(seed, 50, k as u64), tasks, 0.5);
        z.into_iter().map(|x| f64::from(x).exp()).collect()
    };
    let grid = |first: Candidate, all: Vec<Candidate>| {
        std::iter::once(first.clone()).chain(all.into_iter().filter(|c| *c != first)).collect()
    };
    match method {
        MergeMethod::Linear => {
            let mut out = vec![Candidate::Weighted(vec![1.0 / tasks as f64; tasks])];
            for k in 0..WEIGHT_DRAWS {
                let w = draws(k);
                let s: f64 = w.iter().sum();
                out.push(Candidate::Weighted(w.iter().map(|x| x / s).collect()));
            }
            out
        }
        MergeMethod::TaskArithmetic { lambda } => {
            let mut out = vec![Candidate::Weighted(vec![lambda; tasks])];
            for k in 0..WEIGHT_DRAWS {
                out.push(Candidate::Weighted(draws(k).iter().map(|x| (lambda * x).min(2.0)).collect()));
            }
            out
        }
        MergeMethod::Ties { density, lambda } => grid(
            Candidate::Scaled { method: MergeMethod::Ties { density, lambda: 1.0 }, scale: lambda },
            TIES_DENSITIES
                .iter()
                .flat_map(|&d| {
                    TIES_SCALES.iter().map(move |&l| Candidate::Scaled {
                        method: MergeMethod::Ties { density: d, lambda: 1.0 },
                        scale: l,
                    })
                })
                .collect(),
        ),
        MergeMethod::Dare { drop, lambda, seed } => grid(
            Candidate::Scaled { method: MergeMethod::Dare { drop, lambda: 1.0, seed }, scale: lambda },
            DARE_DROPS
                .iter()
                .flat_map(|&p| {
                    DARE_SCALES.iter().map(move |&l| Candidate::Scaled {
                        method: MergeMethod::Dare { drop: p, lambda: 1.0, seed },
                        scale: l,
                    })
                })
                .collect(),
        ),
        MergeMethod::Concat => vec![],
    }
}

/// The split the search scores on: each task's validation examples from its training
/// data ([`lr_search::validation_tasks`], the same seeded carve), at most [`VALIDATION`].
pub fn validation(tasks: &[TaskData], seed: u64) -> Result<Vec<TaskData>> {
    let mut val = lr_search::validation_tasks(tasks, seed)?;
    for t in &mut val {
        t.eval.truncate(VALIDATION);
    }
    Ok(val)
}

/// One candidate's validation result.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The parameters.
    pub candidate: Candidate,
    /// Validation macro average (0–1).
    pub score: f64,
    /// Mean validation loss.
    pub loss: f64,
    /// Whether it was scored on the whole split (it survived the first half's cut), not
    /// on its first half only.
    pub whole: bool,
}

/// One task's validation result on some of its examples: the headline metric's mean,
/// the mean loss, and how many examples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskResult {
    /// Headline metric, mean over the examples (0–1).
    pub score: f64,
    /// Mean loss.
    pub loss: f64,
    /// Examples scored.
    pub examples: usize,
}

/// What a search found: the merged adapter with the chosen parameters, which candidate
/// that is, and every candidate's result (in the order tried, the defaults first).
pub struct Tuned {
    /// The merge at the chosen parameters.
    pub adapter: LoraAdapter,
    /// Index of the chosen candidate in `tried`.
    pub chosen: usize,
    /// Every candidate scored.
    pub tried: Vec<Scored>,
}

/// The validation split `val` in two halves (each task's first half of its examples,
/// then the rest): the search scores every candidate on the first, and the better half
/// of them (and the defaults) on the second too.
pub fn halves(val: &[TaskData]) -> [Vec<TaskData>; 2] {
    let cut = |t: &TaskData, first: bool| {
        let k = t.eval.len().div_ceil(2);
        let eval = if first { t.eval[..k].to_vec() } else { t.eval[k..].to_vec() };
        TaskData { eval, ..t.clone() }
    };
    [val.iter().map(|t| cut(t, true)).collect(), val.iter().map(|t| cut(t, false)).collect()]
}

/// The macro average and mean loss over tasks of per-task results on several parts of
/// each task's examples (weighted by examples within a task).
fn combine(parts: &[&[TaskResult]]) -> (f64, f64) {
    let tasks = parts.first().map_or(0, |p| p.len());
    let (mut score, mut loss) = (0.0, 0.0);
    for t in 0..tasks {
        let n: usize = parts.iter().map(|p| p[t].examples).sum();
        let w = |f: fn(&TaskResult) -> f64| {
            parts.iter().map(|p| f(&p[t]) * p[t].examples as f64).sum::<f64>() / n.max(1) as f64
        };
        score += w(|r| r.score);
        loss += w(|r| r.loss);
    }
    (score / tasks.max(1) as f64, loss / tasks.max(1) as f64)
}

/// Searches `method`'s parameters for merging `adapters` (TIES and DARE refit at rank
/// `rank`) by one halving step over the validation split: every candidate is merged and
/// scored by `score` on the split's first half (`score(adapter, 0)`: each task's
/// result); the better half of them by score, then loss, then order — and the defaults,
/// the first candidate, always — are scored on the second half (`score(adapter, 1)`)
/// too, and the best of those on the whole split is chosen (by score, then loss, then
/// the earlier candidate). `defaults`, the merge at its default parameters when already
/// built, is not merged again.
pub fn tune(
    adapters: &[&LoraAdapter],
    method: MergeMethod,
    rank: usize,
    seed: u64,
    defaults: Option<&LoraAdapter>,
    score: &mut dyn FnMut(&LoraAdapter, usize) -> Result<Vec<TaskResult>>,
) -> Result<Tuned> {
    let all = candidates(method, adapters.len(), seed);
    if all.is_empty() {
        return Err(crate::Error::Invalid(format!("merge `{}` has no parameters to tune", method.name())));
    }
    // Each scale-1 TIES/DARE merge is built once, by its parameters' bits; the defaults'
    // is their merge at its own scale, brought back to 1.
    let mut refits: BTreeMap<String, LoraAdapter> = BTreeMap::new();
    if let (Some(d), Candidate::Scaled { method, scale }) = (defaults, &all[0]) {
        refits.insert(format!("{method:?}"), d.scaled(1.0 / scale)?);
    }
    let mut build = |c: &Candidate| -> Result<LoraAdapter> {
        match c {
            Candidate::Weighted(w) => merge::concat_weighted(adapters, w),
            Candidate::Scaled { method, scale } => {
                let key = format!("{method:?}");
                if !refits.contains_key(&key) {
                    refits.insert(key.clone(), merge::merge(adapters, *method, rank)?);
                }
                refits[&key].scaled(*scale)
            }
        }
    };
    // The first half: every candidate.
    let mut first: Vec<(Vec<TaskResult>, f64, f64)> = Vec::with_capacity(all.len());
    for c in &all {
        let r = score(&build(c)?, 0)?;
        let (s, l) = combine(&[&r]);
        first.push((r, s, l));
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| first[b].1.total_cmp(&first[a].1).then(first[a].2.total_cmp(&first[b].2)).then(a.cmp(&b)));
    let mut alive: Vec<usize> = order[..all.len().div_ceil(2)].to_vec();
    if !alive.contains(&0) {
        alive.push(0);
    }
    alive.sort_unstable();
    // The second half: the survivors, in order; the best on the whole split wins.
    let mut whole: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    let mut best: Option<(usize, LoraAdapter)> = None;
    for &i in &alive {
        let adapter = build(&all[i])?;
        let r = score(&adapter, 1)?;
        let (s, l) = combine(&[&first[i].0, &r]);
        let better = best.as_ref().is_none_or(|(b, _)| {
            let (bs, bl) = whole[b];
            s > bs || (s == bs && l < bl)
        });
        whole.insert(i, (s, l));
        if better {
            best = Some((i, adapter));
        }
    }
    let tried = all
        .into_iter()
        .enumerate()
        .map(|(i, candidate)| {
            let (score, loss) = whole.get(&i).copied().unwrap_or((first[i].1, first[i].2));
            Scored { candidate, score, loss, whole: whole.contains_key(&i) }
        })
        .collect();
    let (chosen, adapter) = best.expect("the defaults are always scored whole");
    Ok(Tuned { adapter, chosen, tried })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-task results of one example each, scoring `v` at loss `l`.
    fn results(v: &[(f64, f64)]) -> Vec<TaskResult> {
        v.iter().map(|&(score, loss)| TaskResult { score, loss, examples: 1 }).collect()
    }

    #[test]
    fn one_halving_step_scores_the_better_half_and_the_defaults_whole() {
        use crate::model::lora::LoraConfig;
        let cfg = crate::model::tiny_config();
        let ad: Vec<LoraAdapter> = (0..2)
            .map(|s| LoraAdapter::new(&cfg, LoraConfig::default(), s, &candle_core::Device::Cpu).unwrap())
            .collect();
        let refs: Vec<&LoraAdapter> = ad.iter().collect();
        // Linear over two tasks: four candidates, the equal weights first. The first
        // half's macro averages 0.5, 0.7, 0.6, 0.2: the better half is 1 and 2, and the
        // defaults (0) go on too. On the second half 0.9, 0.5, 0.8: on the whole split
        // 0 and 2 tie at 0.7 and the defaults, the earlier, win the tie.
        let first = [0.5, 0.7, 0.6, 0.2];
        let second = [0.9, 0.5, 0.8];
        let mut calls = Vec::new();
        let mut score = |_: &LoraAdapter, half: usize| {
            calls.push(half);
            let v = if half == 0 { first[calls.len() - 1] } else { second[calls.len() - 5] };
            Ok(results(&[(v, 1.0), (v, 1.0)]))
        };
        let t = tune(&refs, MergeMethod::Linear, 4, 1, None, &mut score).unwrap();
        assert_eq!(calls, [0, 0, 0, 0, 1, 1, 1], "3 of the 4 candidates on the second half");
        assert_eq!(t.chosen, 0);
        let got: Vec<(f64, bool)> = t.tried.iter().map(|c| ((c.score * 100.0).round() / 100.0, c.whole)).collect();
        assert_eq!(got, [(0.7, true), (0.6, true), (0.7, true), (0.2, false)]);
        // A lower loss on the whole split breaks the tie the other way.
        let mut calls = 0;
        let mut score = |_: &LoraAdapter, half: usize| {
            calls += 1;
            let (v, l) =
                if half == 0 { (first[calls - 1], 1.0) } else { (second[calls - 5], [1.0, 1.0, 0.5][calls - 5]) };
            Ok(results(&[(v, l)]))
        };
        assert_eq!(tune(&refs, MergeMethod::Linear, 4, 1, None, &mut score).unwrap().chosen, 2);
    }

    #[test]
    fn halves_split_each_task_and_recombine_by_examples() {
        let t = |n: usize| TaskData {
            name: "t".into(),
            kind: crate::data::TaskKind::Generation,
            labels: vec![],
            train: vec![],
            eval: (0..n).map(|i| crate::data::Record::new(i.to_string(), "")).collect(),
        };
        let [a, b] = halves(&[t(16), t(5)]);
        assert_eq!((a[0].eval.len(), b[0].eval.len(), a[1].eval.len(), b[1].eval.len()), (8, 8, 3, 2));
        assert_eq!(b[1].eval[0].prompt, "3");
        // Task 1: 3 examples at 1.0 and 2 at 0.0 make 0.6; task 0: 0.5. Macro 0.55.
        let first =
            [TaskResult { score: 0.5, loss: 2.0, examples: 8 }, TaskResult { score: 1.0, loss: 1.0, examples: 3 }];
        let second =
            [TaskResult { score: 0.5, loss: 2.0, examples: 8 }, TaskResult { score: 0.0, loss: 2.0, examples: 2 }];
        let (s, l) = combine(&[&first, &second]);
        assert!((s - 0.55).abs() < 1e-12 && (l - (2.0 + 1.4) / 2.0).abs() < 1e-12, "{s} {l}");
    }

    #[test]
    fn candidates_start_with_the_defaults_and_are_seeded() {
        for m in MergeMethod::defaults() {
            let c = candidates(m, 3, 7);
            if !tunable(m) {
                assert!(c.is_empty());
                continue;
            }
            assert_eq!(c, candidates(m, 3, 7), "{m:?}: seeded");
            let d = c[0].describe(m);
            match m {
                MergeMethod::Linear => assert_eq!(d, "weights 0.333/0.333/0.333"),
                MergeMethod::TaskArithmetic { .. } => assert_eq!(d, "λ 0.5/0.5/0.5"),
                MergeMethod::Ties { .. } => assert_eq!(d, "density 0.2, λ 1"),
                MergeMethod::Dare { .. } => assert_eq!(d, "drop 0.5, λ 0.5"),
                MergeMethod::Concat => unreachable!(),
            }
            let mut seen = c.clone();
            seen.dedup();
            assert_eq!(seen.len(), c.len(), "{m:?}: no candidate twice");
        }
        // Linear weightings sum to 1.
        for c in candidates(MergeMethod::Linear, 4, 1) {
            let Candidate::Weighted(w) = c else { panic!() };
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // The default TIES density and scale are one of the grid's six, listed once.
        assert_eq!(candidates(MergeMethod::Ties { density: 0.2, lambda: 1.0 }, 2, 0).len(), 6);
        assert_eq!(candidates(MergeMethod::Ties { density: 0.3, lambda: 1.0 }, 2, 0).len(), 7);
    }
}
