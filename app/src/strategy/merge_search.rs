//! `--tune-merges`: every merge of the separate strategy gets its parameters from a small
//! seeded search on a validation split carved from each task's **training** data (the
//! held-out examples the report scores are never used): linear and task arithmetic their
//! per-task weights, TIES its density and scale, DARE its drop rate and scale.
//! Concatenation, the exact sum, has nothing to tune.
//!
//! Merges train nothing, so a candidate costs its merge and one quick scoring pass over
//! the split: label ranking for classification, and for generation each answer walked
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

/// Searches `method`'s parameters for merging `adapters` (TIES and DARE refit at rank
/// `rank`): every candidate is merged and scored by `score` (validation macro average
/// and loss); best first by score, then loss, then the earlier candidate.
pub fn tune(
    adapters: &[&LoraAdapter],
    method: MergeMethod,
    rank: usize,
    seed: u64,
    score: &mut dyn FnMut(&LoraAdapter) -> Result<(f64, f64)>,
) -> Result<Tuned> {
    let all = candidates(method, adapters.len(), seed);
    if all.is_empty() {
        return Err(crate::Error::Invalid(format!("merge `{}` has no parameters to tune", method.name())));
    }
    // Each scale-1 TIES/DARE merge is built once, by its parameters' bits.
    let mut refits: BTreeMap<String, LoraAdapter> = BTreeMap::new();
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
    let mut tried = Vec::with_capacity(all.len());
    let mut best: Option<(usize, LoraAdapter)> = None;
    for (i, c) in all.into_iter().enumerate() {
        let adapter = build(&c)?;
        let (s, loss) = score(&adapter)?;
        let better = best.as_ref().is_none_or(|(b, _)| {
            let b: &Scored = &tried[*b];
            s > b.score || (s == b.score && loss < b.loss)
        });
        tried.push(Scored { candidate: c, score: s, loss });
        if better {
            best = Some((i, adapter));
        }
    }
    let (chosen, adapter) = best.expect("at least one candidate");
    Ok(Tuned { adapter, chosen, tried })
}

#[cfg(test)]
mod tests {
    use super::*;

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
