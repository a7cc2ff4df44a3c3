//! `--tune-merges`: every merge of the separate strategy gets its parameters from a small
//! seeded search on a validation split carved from each task's **training** data (the
//! held-out examples the report scores are never used): linear and task arithmetic their
//! per-task weights, TIES its density and scale, DARE its drop rate and scale.
//! Concatenation, the exact sum, has nothing to tune.
//!
//! Merges train nothing, so a candidate costs its merge and quick scoring passes over
//! the split, by successive halving: every candidate on each task's first quarter of
//! the split, the better half of them on the second quarter, the better half of those on
//! the second half, the best on the whole split chosen (the defaults go on at every cut)
//! — about half the scoring of every candidate on all of it. The passes: label ranking
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
    /// Validation macro average (0–1), on the examples it was scored on.
    pub score: f64,
    /// Mean validation loss, on the same examples.
    pub loss: f64,
    /// Validation examples it was scored on, over all tasks (the whole split's count
    /// where it reached the last rung).
    pub examples: usize,
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

/// The rungs of the search: the validation split `val` in three parts (each task's
/// first quarter of its examples, its second quarter, then its second half). Every
/// candidate is scored on the first, the better half of them on the second too, and
/// the better half of those on the third (the defaults always go on).
pub fn rungs(val: &[TaskData]) -> [Vec<TaskData>; 3] {
    let cut = |t: &TaskData, part: usize| {
        let n = t.eval.len();
        let (q, h) = (n.div_ceil(4), n.div_ceil(2));
        let range = [0..q, q..h, h..n][part].clone();
        TaskData { eval: t.eval[range].to_vec(), ..t.clone() }
    };
    [0, 1, 2].map(|part| val.iter().map(|t| cut(t, part)).collect())
}

/// The macro average and mean loss over tasks of per-task results on several parts of
/// each task's examples (weighted by examples within a task).
fn combine(parts: &[Vec<TaskResult>]) -> (f64, f64) {
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
/// `rank`) by successive halving over the validation split's [`rungs`]: every
/// candidate is merged and scored by `score` on the first rung (`score(adapter, 0)`:
/// each task's result); the better half of them by score, then loss, then order, on
/// what they were scored on so far — and the defaults, the first candidate, always —
/// go on to the next rung, twice; of those that reach the last rung, the best on the
/// whole split is chosen (by score, then loss, then the earlier candidate). About half
/// the scoring of every candidate on all of it, and the final choice still made on
/// every validation example. `defaults`, the merge at its default parameters when
/// already built, is not merged again.
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
    let better = |a: (f64, f64), b: (f64, f64)| a.0 > b.0 || (a.0 == b.0 && a.1 < b.1);
    // Each candidate's per-task results, one entry per rung it was scored on.
    let mut results: Vec<Vec<Vec<TaskResult>>> = vec![vec![]; all.len()];
    let mut alive: Vec<usize> = (0..all.len()).collect();
    let mut best: Option<(usize, (f64, f64), LoraAdapter)> = None;
    for rung in 0..3 {
        let last = rung == 2;
        for &i in &alive {
            let adapter = build(&all[i])?;
            results[i].push(score(&adapter, rung)?);
            let whole = combine(&results[i]);
            if last && best.as_ref().is_none_or(|(_, b, _)| better(whole, *b)) {
                best = Some((i, whole, adapter));
            }
        }
        if last {
            break;
        }
        // The better half (by score, then loss, then order), and the defaults.
        let mut order = alive.clone();
        order.sort_by(|&a, &b| {
            let (sa, la) = combine(&results[a]);
            let (sb, lb) = combine(&results[b]);
            sb.total_cmp(&sa).then(la.total_cmp(&lb)).then(a.cmp(&b))
        });
        order.truncate(alive.len().div_ceil(2));
        if !order.contains(&0) {
            order.push(0);
        }
        order.sort_unstable();
        alive = order;
    }
    let tried = all
        .into_iter()
        .zip(&results)
        .map(|(candidate, r)| {
            let (score, loss) = combine(r);
            let examples = r.iter().flatten().map(|t| t.examples).sum();
            Scored { candidate, score, loss, examples }
        })
        .collect();
    let (chosen, _, adapter) = best.expect("the defaults always reach the last rung");
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
    fn successive_halving_takes_the_better_half_twice_and_the_defaults_always() {
        use crate::model::lora::LoraConfig;
        let cfg = crate::model::tiny_config();
        let ad: Vec<LoraAdapter> = (0..2)
            .map(|s| LoraAdapter::new(&cfg, LoraConfig::default(), s, &candle_core::Device::Cpu).unwrap())
            .collect();
        let refs: Vec<&LoraAdapter> = ad.iter().collect();
        // TIES over two tasks: six candidates, the defaults (density 0.2, λ 1) first.
        // Each rung scores one example per task; candidate i's rung-r score is
        // `scores[r][i]`. Rung 0: .125 .875 .75 .625 .25 .375 → the better half 1 2 3,
        // and the defaults 0. Rung 1, the means so far: 0 .5, 1 .875, 2 .5, 3 .625 → the
        // better half 1 and 3, and 0. Rung 2, on the whole split: 0 and 1 2/3, 3 .625:
        // 0 and 1 tie and the defaults, the earlier, win.
        let scores = [
            [0.125, 0.875, 0.75, 0.625, 0.25, 0.375],
            [0.875, 0.875, 0.25, 0.625, 0.0, 0.0],
            [1.0, 0.25, 0.0, 0.625, 0.0, 0.0],
        ];
        let mut calls: Vec<usize> = Vec::new();
        let mut k = 0;
        let order = [[0, 1, 2, 3, 4, 5].as_slice(), &[0, 1, 2, 3], &[0, 1, 3]];
        let mut score = |_: &LoraAdapter, rung: usize| {
            calls.push(rung);
            let before: usize = order[..rung].iter().map(|o| o.len()).sum();
            let i = order[rung][k - before];
            k += 1;
            let v = scores[rung][i];
            Ok(results(&[(v, 1.0), (v, 1.0)]))
        };
        let t = tune(&refs, MergeMethod::Ties { density: 0.2, lambda: 1.0 }, 4, 1, None, &mut score).unwrap();
        assert_eq!(calls, [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2], "6, then 4 (3 and the defaults), then 3");
        assert_eq!(t.chosen, 0);
        let got: Vec<(f64, usize)> =
            t.tried.iter().map(|c| ((c.score * 1000.0).round() / 1000.0, c.examples)).collect();
        assert_eq!(got, [(0.667, 6), (0.667, 6), (0.5, 4), (0.625, 6), (0.25, 2), (0.375, 2)]);
        // A lower loss on the whole split breaks the tie the other way.
        let mut k = 0;
        let mut score = |_: &LoraAdapter, rung: usize| {
            let before: usize = order[..rung].iter().map(|o| o.len()).sum();
            let i = order[rung][k - before];
            k += 1;
            let loss = if i == 1 { 0.5 } else { 1.0 };
            Ok(results(&[(scores[rung][i], loss)]))
        };
        let t = tune(&refs, MergeMethod::Ties { density: 0.2, lambda: 1.0 }, 4, 1, None, &mut score).unwrap();
        assert_eq!(t.chosen, 1);
    }

    #[test]
    fn rungs_split_each_task_and_recombine_by_examples() {
        let t = |n: usize| TaskData {
            name: "t".into(),
            kind: crate::data::TaskKind::Generation,
            labels: vec![],
            train: vec![],
            eval: (0..n).map(|i| crate::data::Record::new(i.to_string(), "")).collect(),
        };
        let [a, b, c] = rungs(&[t(16), t(5)]);
        let len = |p: &[TaskData], i: usize| p[i].eval.len();
        assert_eq!((len(&a, 0), len(&b, 0), len(&c, 0)), (4, 4, 8));
        assert_eq!((len(&a, 1), len(&b, 1), len(&c, 1)), (2, 1, 2));
        assert_eq!((b[1].eval[0].prompt.as_str(), c[1].eval[0].prompt.as_str()), ("2", "3"));
        // Task 1: 3 examples at 1.0 and 2 at 0.0 make 0.6; task 0: 0.5. Macro 0.55.
        let first =
            vec![TaskResult { score: 0.5, loss: 2.0, examples: 8 }, TaskResult { score: 1.0, loss: 1.0, examples: 3 }];
        let second =
            vec![TaskResult { score: 0.5, loss: 2.0, examples: 8 }, TaskResult { score: 0.0, loss: 2.0, examples: 2 }];
        let (s, l) = combine(&[first, second]);
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
