//! Which strategies a comparison runs, with what options, under which settings: the one
//! place where strategy names (`combined`, `sequential`, `sequential-merge`, `separate`,
//! `multi-head`) become [`StrategySpec`]s, where their defaults live, and where a
//! comparison's hyper-parameters become its [`TrainConfig`]. The CLI's flags and the
//! server's experiment JSON both go through here, so the same request gives the same runs.

use serde::{Deserialize, Serialize};

use crate::adapter::lora::LoraConfig;
use crate::adapter::merge::MergeMethod;
use crate::eval::EvalOptions;
use crate::strategy::lr_search;
use crate::strategy::mixing::Mixing;
use crate::train::TrainConfig;
use crate::{Error, Result};

/// The strategy names a user can ask for (`all` means every one of them).
pub const STRATEGY_NAMES: [&str; 5] = ["combined", "sequential", "sequential-merge", "separate", "multi-head"];

/// How a sequential run carries knowledge from one task to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SequentialVariant {
    /// One adapter keeps training.
    Continue,
    /// After each task the adapter is merged into the base and a fresh one starts.
    MergeThenNew,
}

/// A strategy and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum StrategySpec {
    /// One adapter on a mixture of all tasks.
    Combined {
        /// Task sampling.
        mixing: Mixing,
        /// Prefix each prompt with `[task]`.
        task_tag: bool,
    },
    /// Tasks one after another.
    Sequential {
        /// Continue or merge-then-new.
        variant: SequentialVariant,
        /// Task order by index (empty: as given).
        order: Vec<usize>,
        /// Share of each stage's examples replayed from earlier tasks.
        replay: f64,
    },
    /// One adapter per task, scored routed and merged.
    Separate {
        /// Merge methods to score.
        merges: Vec<MergeMethod>,
        /// Rank of TIES/DARE refits.
        merge_rank: usize,
    },
    /// One shared adapter on the mixture plus a head per task (classifier or LM-head delta).
    MultiHead {
        /// Task sampling.
        mixing: Mixing,
        /// Rank of the LM-head deltas of generation tasks.
        head_rank: usize,
    },
}

impl StrategySpec {
    /// The run's name in reports.
    pub fn name(&self) -> String {
        match self {
            StrategySpec::Combined { mixing, task_tag } => {
                let m = match mixing {
                    Mixing::Proportional => "proportional".to_string(),
                    Mixing::Uniform => "uniform".to_string(),
                    Mixing::Temperature { t } => format!("T={t}"),
                };
                format!("combined ({m}{})", if *task_tag { ", tagged" } else { "" })
            }
            StrategySpec::Sequential { variant, replay, .. } => {
                let v = match variant {
                    SequentialVariant::Continue => "continue",
                    SequentialVariant::MergeThenNew => "merge-then-new",
                };
                if *replay > 0.0 {
                    format!("sequential ({v}, replay {replay})")
                } else {
                    format!("sequential ({v})")
                }
            }
            StrategySpec::Separate { .. } => "separate (routed)".into(),
            StrategySpec::MultiHead { .. } => "multi-head".into(),
        }
    }
}

/// A comparison: strategies, the shared budget and hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// Strategies to run.
    pub strategies: Vec<StrategySpec>,
    /// Training tokens every strategy gets.
    pub budget_tokens: usize,
    /// Hyper-parameters shared by every run (`token_budget` is set per stage).
    pub train: TrainConfig,
    /// Evaluation settings.
    pub eval: EvalOptions,
    /// Training seeds to repeat every strategy over (empty: just `train.seed`); scores
    /// are then reported as the mean over seeds with its spread.
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// `Some(grid)`: every strategy picks its peak learning rate from `grid` first
    /// ([`crate::strategy::lr_search`]); `None`: every run trains at `train.learning_rate`.
    #[serde(default)]
    pub lr_search: Option<Vec<f64>>,
}

/// What a user can set on the strategies, shared by every one that uses it. Defaults
/// follow from the adapter rank: merges refit at twice the rank, LM-head deltas at the
/// rank.
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyOptions {
    /// Task sampling of the combined and multi-head runs.
    pub mixing: Mixing,
    /// Prefix prompts with `[task]` in the combined run.
    pub task_tag: bool,
    /// Sequential: share of each stage's examples replayed from earlier tasks.
    pub replay: f64,
    /// Sequential: task order by index (empty: as given).
    pub order: Vec<usize>,
    /// Separate: the merge methods scored.
    pub merges: Vec<MergeMethod>,
    /// Separate: rank of the TIES/DARE refits.
    pub merge_rank: usize,
    /// Multi-head: rank of the generation tasks' LM-head deltas.
    pub head_rank: usize,
}

impl StrategyOptions {
    /// The defaults for adapters of rank `rank`.
    pub fn for_rank(rank: usize) -> Self {
        Self {
            mixing: Mixing::Proportional,
            task_tag: false,
            replay: 0.0,
            order: vec![],
            merges: MergeMethod::defaults(),
            merge_rank: rank.saturating_mul(2),
            head_rank: rank,
        }
    }
}

impl StrategySpec {
    /// The strategy called `name` (one of [`STRATEGY_NAMES`]) with `opts`.
    pub fn from_name(name: &str, opts: &StrategyOptions) -> Result<Self> {
        let sequential = |variant| StrategySpec::Sequential { variant, order: opts.order.clone(), replay: opts.replay };
        Ok(match name {
            "combined" => StrategySpec::Combined { mixing: opts.mixing, task_tag: opts.task_tag },
            "sequential" => sequential(SequentialVariant::Continue),
            "sequential-merge" => sequential(SequentialVariant::MergeThenNew),
            "separate" => StrategySpec::Separate { merges: opts.merges.clone(), merge_rank: opts.merge_rank },
            "multi-head" => StrategySpec::MultiHead { mixing: opts.mixing, head_rank: opts.head_rank },
            other => {
                return Err(Error::Invalid(format!("unknown strategy `{other}` (all, {})", STRATEGY_NAMES.join(", "))))
            }
        })
    }

    /// A comma-separated list of strategy names, `all` standing for every one.
    pub fn parse_list(list: &str, opts: &StrategyOptions) -> Result<Vec<Self>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                out.extend(Self::all(opts));
            } else {
                out.push(Self::from_name(name, opts)?);
            }
        }
        Ok(out)
    }

    /// Every strategy with `opts`.
    pub fn all(opts: &StrategyOptions) -> Vec<Self> {
        STRATEGY_NAMES.iter().map(|n| Self::from_name(n, opts).expect("every listed name parses")).collect()
    }

    /// What is wrong with this strategy's options for a comparison of `n_tasks` tasks.
    pub fn problems(&self, n_tasks: usize) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            StrategySpec::Combined { mixing, .. } | StrategySpec::MultiHead { mixing, .. } => {
                if let Mixing::Temperature { t } = mixing {
                    if !(t.is_finite() && *t > 0.0) {
                        out.push(format!("the mixing temperature must be positive, not {t}"));
                    }
                }
                if let StrategySpec::MultiHead { head_rank, .. } = self {
                    if *head_rank == 0 || *head_rank > 256 {
                        out.push(format!("head_rank must be 1 to 256, not {head_rank}"));
                    }
                }
            }
            StrategySpec::Sequential { order, replay, .. } => {
                let mut sorted = order.clone();
                sorted.sort_unstable();
                if !order.is_empty() && sorted != (0..n_tasks).collect::<Vec<_>>() {
                    out.push(format!("order {order:?} is not an ordering of the {n_tasks} tasks"));
                }
                if !(0.0..=1.0).contains(replay) {
                    out.push(format!("replay must be between 0 and 1, not {replay}"));
                }
            }
            StrategySpec::Separate { merges, merge_rank } => {
                out.extend(merges.iter().filter_map(|m| m.validate().err().map(|e| e.to_string())));
                if *merge_rank == 0 {
                    out.push("merge_rank must be positive".into());
                }
            }
        }
        out
    }
}

/// What is wrong with a list of strategies for `n_tasks` tasks: each problem prefixed
/// with `strategies[i]`, an empty list, the same run twice. Empty when it is fine.
pub fn strategy_problems(specs: &[StrategySpec], n_tasks: usize) -> Vec<String> {
    let mut errors: Vec<String> = specs
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.problems(n_tasks).into_iter().map(move |p| format!("strategies[{i}]: {p}")))
        .collect();
    if specs.is_empty() {
        errors.push("strategies: pick at least one".into());
    }
    let mut names: Vec<String> = specs.iter().map(StrategySpec::name).collect();
    names.sort();
    if names.windows(2).any(|w| w[0] == w[1]) {
        errors.push("strategies: the same strategy is listed twice".into());
    }
    errors
}

/// The hyper-parameters a comparison exposes, with their defaults, and the one place
/// they become the runs' [`TrainConfig`] and [`EvalOptions`].
#[derive(Debug, Clone, PartialEq)]
pub struct CompareSettings {
    /// Training tokens every strategy gets.
    pub budget_tokens: usize,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// LoRA rank (alpha is twice the rank).
    pub rank: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Longest example, tokens.
    pub max_tokens: usize,
    /// Training (and bootstrap) seed.
    pub seed: u64,
    /// Repeat every strategy over these seeds (empty: just `seed`).
    pub seeds: Vec<u64>,
    /// Bootstrap resamples for the intervals.
    pub bootstrap: usize,
    /// Steps between checkpoints (resume points, when the comparison has a state folder).
    pub checkpoint_every: usize,
    /// Search each strategy's peak learning rate ([`crate::strategy::lr_search`]).
    pub tune_lr: bool,
    /// The rates searched (empty: [`lr_search::DEFAULT_GRID`]).
    pub lr_grid: Vec<f64>,
}

impl Default for CompareSettings {
    fn default() -> Self {
        Self {
            budget_tokens: 16_000,
            learning_rate: 2e-4,
            rank: 8,
            batch_size: 8,
            max_tokens: 256,
            seed: 42,
            seeds: vec![],
            bootstrap: 1000,
            checkpoint_every: 10,
            tune_lr: false,
            lr_grid: vec![],
        }
    }
}

impl CompareSettings {
    /// The training configuration every run starts from.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            lora: LoraConfig { rank: self.rank, alpha: 2.0 * self.rank as f64, ..Default::default() },
            learning_rate: self.learning_rate,
            batch_size: self.batch_size,
            max_seq_len: self.max_tokens,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            ..Default::default()
        }
    }

    /// How every run is scored.
    pub fn eval_options(&self) -> EvalOptions {
        EvalOptions { max_seq_len: self.max_tokens, bootstrap: self.bootstrap, seed: self.seed, ..Default::default() }
    }

    /// The comparison of `strategies` under these settings, checked whole for `n_tasks`
    /// tasks: every problem is listed ([`Error::Invalid`] joins them with `; `).
    pub fn config(
        &self,
        strategies: Vec<StrategySpec>,
        n_tasks: usize,
    ) -> std::result::Result<CompareConfig, Vec<String>> {
        let train = self.train_config();
        let mut problems = Vec::new();
        if let Err(e) = train.validate() {
            problems.push(format!("hyper: {e}"));
        }
        let grid = if self.lr_grid.is_empty() { lr_search::DEFAULT_GRID.to_vec() } else { self.lr_grid.clone() };
        if self.tune_lr {
            problems.extend(lr_search::grid_problems(&grid).into_iter().map(|p| format!("hyper: {p}")));
        } else if !self.lr_grid.is_empty() {
            problems.push("hyper: lr_grid is only used with tune_lr".into());
        }
        problems.extend(strategy_problems(&strategies, n_tasks));
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(CompareConfig {
            strategies,
            budget_tokens: self.budget_tokens,
            train,
            eval: self.eval_options(),
            seeds: self.seeds.clone(),
            lr_search: self.tune_lr.then_some(grid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_with_the_shared_defaults() {
        let opts = StrategyOptions::for_rank(4);
        let all = StrategySpec::parse_list("all", &opts).unwrap();
        assert_eq!(all.len(), STRATEGY_NAMES.len());
        assert_eq!(all[3], StrategySpec::Separate { merges: MergeMethod::defaults(), merge_rank: 8 });
        assert_eq!(all[4], StrategySpec::MultiHead { mixing: Mixing::Proportional, head_rank: 4 });
        let two = StrategySpec::parse_list("sequential-merge, combined", &opts).unwrap();
        assert_eq!(two[0].name(), "sequential (merge-then-new)");
        assert_eq!(two[1].name(), "combined (proportional)");
        let e = StrategySpec::parse_list("combined,mixed", &opts).unwrap_err().to_string();
        assert!(e.contains("unknown strategy `mixed`") && e.contains("multi-head"), "{e}");
    }

    #[test]
    fn problems_are_listed_whole() {
        let opts = StrategyOptions { replay: 1.5, order: vec![0, 0], head_rank: 0, ..StrategyOptions::for_rank(8) };
        let specs = StrategySpec::parse_list("sequential,multi-head,sequential", &opts).unwrap();
        let p = strategy_problems(&specs, 2);
        assert!(p.iter().any(|s| s.starts_with("strategies[0]: order [0, 0]")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[0]: replay must be between 0 and 1")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[1]: head_rank must be 1 to 256")), "{p:?}");
        assert!(p.iter().any(|s| s == "strategies: the same strategy is listed twice"), "{p:?}");
        assert!(strategy_problems(&[], 2).contains(&"strategies: pick at least one".to_string()));
        let bad = CompareSettings { batch_size: 0, ..Default::default() };
        let p = bad.config(StrategySpec::parse_list("sequential,sequential", &opts).unwrap(), 2).unwrap_err();
        assert!(p[0].starts_with("hyper: "), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[1]: replay")), "{p:?}");
    }

    #[test]
    fn settings_become_the_runs_train_config() {
        let s = CompareSettings { rank: 4, learning_rate: 1e-3, seed: 7, ..Default::default() };
        let c = s.config(vec![StrategySpec::from_name("combined", &StrategyOptions::for_rank(4)).unwrap()], 1).unwrap();
        assert_eq!((c.train.lora.rank, c.train.lora.alpha), (4, 8.0));
        assert_eq!((c.train.learning_rate, c.train.seed, c.eval.seed), (1e-3, 7, 7));
        assert_eq!(c.budget_tokens, 16_000);
    }
}
