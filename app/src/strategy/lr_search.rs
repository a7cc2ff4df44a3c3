//! `--tune-lr`: every strategy picks its peak learning rate from a small grid by
//! successive halving, on a validation split carved from each task's **training** data
//! (the held-out examples the report scores are never seen), under the same search
//! schedule for every strategy.
//!
//! Rung 0 trains every candidate on [`FIRST_RUNG_SHARE`] of the comparison's budget;
//! each later rung keeps the better half (rounded up) and doubles the budget, until one
//! candidate is left. A candidate's score is the macro average of the headline metric on
//! the validation split (its validation loss breaks ties, then the smaller rate). Every
//! trial trains from scratch with its own schedule. The chosen rate then trains the real
//! run on all the training data; what the search cost is reported apart from it.

pub use multitune_api::report::{LrSearch, Trial};

use crate::data::{split_indices, Split};
use crate::strategy::task::TaskData;
use crate::{Error, Result};

/// The rates tried when none are given.
pub const DEFAULT_GRID: [f64; 3] = multitune_api::defaults::LR_GRID;

/// Share of each task's training examples held out for validation during the search.
pub const VALIDATION_SHARE: f64 = 0.2;

/// Most validation examples per task (the search scores every trial on them).
pub const MAX_VALIDATION: usize = 50;

/// Fewest training examples a task needs for a validation split.
pub const MIN_TRAIN_EXAMPLES: usize = 10;

/// Share of the comparison's token budget each candidate trains on in the first rung.
pub const FIRST_RUNG_SHARE: f64 = 0.125;

/// Most rates in a grid.
pub const MAX_GRID: usize = 8;

/// What is wrong with a grid (empty when it is fine).
pub fn grid_problems(grid: &[f64]) -> Vec<String> {
    let mut out = Vec::new();
    if grid.is_empty() || grid.len() > MAX_GRID {
        out.push(format!("lr_grid must hold 1 to {MAX_GRID} rates, not {}", grid.len()));
    }
    for &lr in grid {
        if !(lr.is_finite() && lr > 0.0 && lr < 1.0) {
            out.push(format!("lr_grid: every rate must be between 0 and 1 (exclusive), not {lr}"));
        }
    }
    let mut sorted = grid.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        out.push("lr_grid: a rate is listed twice".into());
    }
    out
}

/// The tasks (`(name, training examples)`) too small for a search's validation split,
/// each said in words (the one check of every door: the contract's conversion names its
/// field, the engine refuses before it trains).
pub fn too_small(tasks: &[(&str, usize)]) -> Vec<String> {
    tasks
        .iter()
        .filter(|(_, n)| *n < MIN_TRAIN_EXAMPLES)
        .map(|(name, n)| {
            format!(
                "task `{name}` has {n} training examples; a search holds some out for validation and needs at \
                 least {MIN_TRAIN_EXAMPLES}"
            )
        })
        .collect()
}

/// Every task with its training examples split: `train` keeps the rest, `eval` holds the
/// validation examples (a seeded [`VALIDATION_SHARE`], at most [`MAX_VALIDATION`]).
pub fn validation_tasks(tasks: &[TaskData], seed: u64) -> Result<Vec<TaskData>> {
    tasks
        .iter()
        .map(|t| {
            if t.train.len() < MIN_TRAIN_EXAMPLES {
                return Err(Error::Invalid(format!(
                    "task `{}` has {} training examples: a search on a validation split needs at least \
                     {MIN_TRAIN_EXAMPLES} to hold some out",
                    t.name,
                    t.train.len()
                )));
            }
            let (mut ti, mut vi) = split_indices(t.train.len(), Split::Fraction(VALIDATION_SHARE), seed)?;
            // Validation beyond the cap goes back to training.
            ti.extend(vi.drain(MAX_VALIDATION.min(vi.len())..));
            ti.sort_unstable();
            Ok(TaskData {
                train: ti.iter().map(|&i| t.train[i].clone()).collect(),
                eval: vi.iter().map(|&i| t.train[i].clone()).collect(),
                ..t.clone()
            })
        })
        .collect()
}

/// The rungs for `n` candidates and a comparison budget of `budget` tokens:
/// `(candidates trained, tokens each)`.
pub fn schedule(n: usize, budget: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut tokens = ((budget as f64 * FIRST_RUNG_SHARE).round() as usize).max(1);
    let mut left = n;
    // One candidate: nothing to search, no rung.
    while left > 1 {
        out.push((left, tokens));
        left = left.div_ceil(2);
        tokens = tokens.saturating_mul(2);
    }
    out
}

/// What one trial of a search gave: its validation score (macro average, 0–1) and loss,
/// the tokens it trained and its wall time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Macro average of the headline metric on the validation split.
    pub score: f64,
    /// Mean validation loss over the tasks.
    pub loss: f64,
    /// Training tokens used.
    pub tokens: usize,
    /// Wall seconds, training and scoring.
    pub wall_s: f64,
}

/// One trial of [`halving`]: the candidate, its rung, the tokens the rung allowed, and
/// what it gave.
pub type Tried<C> = (C, usize, usize, Outcome);

/// Successive halving over `candidates` on the [`schedule`] of `budget`:
/// `trial(candidate, rung, tokens)` trains and scores one. Best first: the higher
/// score, then the lower loss, then the earlier candidate. Returns the winner and every
/// trial in order. The learning-rate and the mixing searches both run on it.
pub fn halving<C: Copy>(
    candidates: &[C],
    budget: usize,
    trial: &mut dyn FnMut(C, usize, usize) -> Result<Outcome>,
) -> Result<(C, Vec<Tried<C>>)> {
    if candidates.is_empty() {
        return Err(Error::Invalid("a search over no candidates".into()));
    }
    // Positions in `candidates`, so that ties go to the earlier one.
    let mut alive: Vec<usize> = (0..candidates.len()).collect();
    let mut trials = Vec::new();
    for (rung, (_, tokens)) in schedule(candidates.len(), budget).into_iter().enumerate() {
        let mut scored: Vec<(usize, Outcome)> =
            alive.iter().map(|&i| Ok((i, trial(candidates[i], rung, tokens)?))).collect::<Result<Vec<_>>>()?;
        trials.extend(scored.iter().map(|&(i, o)| (candidates[i], rung, tokens, o)));
        scored.sort_by(|(i, a), (j, b)| b.score.total_cmp(&a.score).then(a.loss.total_cmp(&b.loss)).then(i.cmp(j)));
        alive = scored.iter().take(alive.len().div_ceil(2)).map(|&(i, _)| i).collect();
    }
    // Every rung keeps at least one: `alive` is never empty.
    Ok((candidates[alive[0]], trials))
}

/// Successive halving over `grid` (ties go to the smaller rate): `trial(lr, rung,
/// budget)` trains and scores one candidate.
pub fn search(
    grid: &[f64],
    budget: usize,
    validation: Vec<usize>,
    trial: &mut dyn FnMut(f64, usize, usize) -> Result<Outcome>,
) -> Result<LrSearch> {
    let problems = grid_problems(grid);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems.join("; ")));
    }
    let mut sorted = grid.to_vec();
    sorted.sort_by(f64::total_cmp);
    let (chosen, tried) = halving(&sorted, budget, trial)?;
    let trials = tried
        .into_iter()
        .map(|(lr, rung, budget_tokens, o)| Trial {
            learning_rate: lr,
            rung,
            budget_tokens,
            tokens: o.tokens,
            score: o.score,
            loss: o.loss,
            wall_s: o.wall_s,
        })
        .collect();
    Ok(LrSearch { grid: grid.to_vec(), chosen, validation, trials })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Record, TaskKind};

    #[test]
    fn the_schedule_halves_candidates_and_doubles_tokens() {
        assert_eq!(schedule(3, 16_000), vec![(3, 2000), (2, 4000)]);
        assert_eq!(schedule(4, 8000), vec![(4, 1000), (2, 2000)]);
        assert_eq!(schedule(5, 8000), vec![(5, 1000), (3, 2000), (2, 4000)]);
        assert!(schedule(1, 8000).is_empty());
    }

    /// A made-up landscape whose best rate is 1e-3: the search finds it, trains every
    /// rate in the first rung and the better half again with twice the tokens.
    #[test]
    fn successive_halving_keeps_the_better_half() {
        let mut calls = Vec::new();
        let s = search(&DEFAULT_GRID, 16_000, vec![5], &mut |lr, rung, budget| {
            calls.push((lr, rung, budget));
            let score = 0.9 - (lr.log10() + 3.0).abs() * 0.2 + rung as f64 * 0.01;
            Ok(Outcome { tokens: budget, score, loss: 1.0, wall_s: 1.5 })
        })
        .unwrap();
        assert_eq!(s.chosen, 1e-3);
        assert_eq!(calls.len(), 5);
        assert!(calls[..3].iter().all(|c| c.1 == 0 && c.2 == 2000));
        assert!(calls[3..].iter().all(|c| c.1 == 1 && c.2 == 4000));
        assert_eq!((s.tokens(), s.wall_s()), (3 * 2000 + 2 * 4000, 7.5));
        // A tie on the score goes to the lower loss, then to the smaller rate.
        let s = search(&[1e-3, 3e-4], 800, vec![5], &mut |_, _, _| {
            Ok(Outcome { tokens: 0, score: 0.5, loss: 2.0, wall_s: 0.0 })
        })
        .unwrap();
        assert_eq!(s.chosen, 3e-4);
        assert_eq!(s.grid, vec![1e-3, 3e-4], "the grid as given");
        // Any candidates: a tie goes to the earlier; nothing to search is refused.
        let (won, tried) = halving(&["b", "a", "c"], 800, &mut |c, _, _| {
            Ok(Outcome { tokens: 0, score: if c == "c" { 0.1 } else { 0.5 }, loss: 2.0, wall_s: 0.0 })
        })
        .unwrap();
        assert_eq!((won, tried.len()), ("b", 5));
        assert!(tried[3..].iter().all(|t| t.0 != "c"), "the worst leaves after the first rung");
        let e = halving::<u8>(&[], 800, &mut |_, _, _| unreachable!()).unwrap_err().to_string();
        assert!(e.contains("no candidates"), "{e}");
    }

    #[test]
    fn bad_grids_are_named() {
        assert!(grid_problems(&DEFAULT_GRID).is_empty());
        let p = grid_problems(&[1e-3, 1e-3, 0.0, 2.0]);
        assert!(p.iter().any(|s| s.contains("listed twice")), "{p:?}");
        assert!(p.iter().any(|s| s.contains("not 0")) && p.iter().any(|s| s.contains("not 2")), "{p:?}");
        assert!(grid_problems(&[]).iter().any(|s| s.contains("1 to 8 rates")));
    }

    /// The validation split comes from the training examples only, is seeded, capped,
    /// and with the search's training part it covers the training set exactly.
    #[test]
    fn validation_is_carved_from_training_data() {
        let rec = |i: usize| Record::new(format!("p{i}"), format!("c{i}"));
        let task = TaskData {
            name: "t".into(),
            kind: TaskKind::Generation,
            labels: vec![],
            train: (0..400).map(rec).collect(),
            eval: (1000..1010).map(rec).collect(),
        };
        let v = validation_tasks(std::slice::from_ref(&task), 7).unwrap();
        assert_eq!(v[0].eval.len(), MAX_VALIDATION);
        assert_eq!(v[0].train.len() + v[0].eval.len(), 400);
        let mut all: Vec<Record> = v[0].train.iter().chain(&v[0].eval).cloned().collect();
        all.sort_by(|a, b| a.prompt.cmp(&b.prompt));
        let mut want = task.train.clone();
        want.sort_by(|a, b| a.prompt.cmp(&b.prompt));
        assert_eq!(all, want);
        assert!(v[0].eval.iter().all(|r| !task.eval.contains(r)));
        assert_eq!(validation_tasks(std::slice::from_ref(&task), 7).unwrap(), v);
        let small = TaskData { train: (0..4).map(rec).collect(), ..task };
        let e = validation_tasks(&[small], 7).unwrap_err().to_string();
        assert!(e.contains("task `t` has 4 training examples"), "{e}");
    }
}
