//! The engine's side of a comparison: each strategy with its options ([`StrategySpec`]),
//! their checks, and the whole comparison ([`CompareConfig`]). What users ask for, and
//! its defaults, is the contract's (`multitune_api`); [`crate::strategy::request`] turns
//! it into these.

use serde::{Deserialize, Serialize};

pub use multitune_api::SequentialVariant;

use multitune_api::AdapterMethod;

use crate::adapter::merge::MergeMethod;
use crate::eval::EvalOptions;
use crate::strategy::mixing::Mixing;
use crate::train::TrainConfig;

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
                    Mixing::Search => "mixing searched".to_string(),
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

    /// Its task mixing, for the strategies that train on a mixture.
    pub fn mixing(&self) -> Option<Mixing> {
        match self {
            StrategySpec::Combined { mixing, .. } | StrategySpec::MultiHead { mixing, .. } => Some(*mixing),
            _ => None,
        }
    }

    /// The same strategy with its task mixing set to `m` (where it has one).
    pub fn with_mixing(&self, m: Mixing) -> StrategySpec {
        let mut s = self.clone();
        if let StrategySpec::Combined { mixing, .. } | StrategySpec::MultiHead { mixing, .. } = &mut s {
            *mixing = m;
        }
        s
    }

    /// What this strategy does that DoRA cannot ([`DoraConflict`]); `None` when a DoRA
    /// adapter trains it as it is.
    pub fn dora_conflict(&self) -> Option<DoraConflict> {
        match self {
            StrategySpec::Separate { merges, .. } if !merges.is_empty() => Some(DoraConflict::Merges),
            StrategySpec::Sequential { variant: SequentialVariant::MergeThenNew, .. } => {
                Some(DoraConflict::MergeThenNew)
            }
            _ => None,
        }
    }

    /// This strategy as a comparison of methods trains it with `m`: DoRA runs the
    /// separate strategy without its merges and not merge-then-new at all (`None`), as
    /// [`StrategySpec::dora_conflict`] says; every other method runs it as it is.
    pub fn for_method(&self, m: AdapterMethod) -> Option<StrategySpec> {
        match (m, self.dora_conflict()) {
            (AdapterMethod::Dora, Some(DoraConflict::MergeThenNew)) => None,
            (AdapterMethod::Dora, Some(DoraConflict::Merges)) => match self {
                StrategySpec::Separate { merge_rank, .. } => {
                    Some(StrategySpec::Separate { merges: vec![], merge_rank: *merge_rank })
                }
                _ => Some(self.clone()),
            },
            _ => Some(self.clone()),
        }
    }

    /// The name of a separate run's row for merge `m`.
    pub fn merge_run_name(m: MergeMethod) -> String {
        format!("separate + merge ({})", m.name())
    }

    /// The name of a separate run's row for merge `m` tuned on validation.
    pub fn tuned_merge_run_name(m: MergeMethod) -> String {
        format!("separate + merge ({}, tuned)", m.name())
    }
}

/// What a strategy does that a DoRA adapter cannot: merging DoRA adapters is not defined
/// ([`crate::adapter::merge::DORA_MERGE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoraConflict {
    /// The separate strategy's merges of its per-task adapters.
    Merges,
    /// Sequential merge-then-new, which merges every stage into the base model.
    MergeThenNew,
}

impl DoraConflict {
    /// Why, and what to do instead: the refusal of a DoRA comparison that asks for it.
    pub fn problem(self) -> String {
        match self {
            DoraConflict::Merges => {
                format!("{}; set its merges to none (--merges none)", crate::adapter::merge::DORA_MERGE)
            }
            DoraConflict::MergeThenNew => "merge-then-new merges every stage into the base model, and merged DoRA \
                                           stages are no adapter to export (each rescales the rows the stages \
                                           before it left): use sequential (continue), or train with lora, rslora \
                                           or pissa"
                .into(),
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
    /// Measure every run against the base model's answers to the retention probe.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retention: bool,
    /// Data-size curves: the shares of every task's training set that every strategy
    /// also trains at ([`crate::strategy::sizes`]); the full data always runs. Empty: the
    /// full data only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_fractions: Vec<f64>,
    /// Tune every merge of the separate strategy on a validation split of the training
    /// data ([`crate::strategy::merge_search`]): each tuned merge is a row of its own,
    /// beside the same merge at its defaults.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tune_merges: bool,
    /// A comparison of adapter methods: every strategy trains once with each (its LoRA
    /// settings otherwise `train.lora`'s), each run named with the method's tag. Empty:
    /// every run trains with `train.lora`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<AdapterMethod>,
}

impl CompareConfig {
    /// The adapter configurations its runs train with: `train.lora`, and with each
    /// method it compares.
    fn adapter_configs(&self) -> impl Iterator<Item = crate::model::lora::LoraConfig> + '_ {
        let lora = &self.train.lora;
        std::iter::once(lora.clone()).chain(self.methods.iter().map(|&m| lora.clone().with_method(m)))
    }

    /// Whether [`CompareConfig::adapter_problem`] needs the model's shape to say anything
    /// (only PiSSA's rank depends on it): a door without the model loaded can skip it.
    pub fn adapters_depend_on_shape(&self) -> bool {
        self.adapter_configs().any(|l| l.pissa)
    }

    /// What is wrong with its adapters for a model of shape `model` (a PiSSA rank too
    /// large), with its method or any method it compares.
    pub fn adapter_problem(&self, model: &crate::model::ModelConfig) -> Option<String> {
        self.adapter_configs().find_map(|l| l.problem_for(model))
    }
}

impl StrategySpec {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dora_runs_what_it_can_and_says_why_not_the_rest() {
        let merged = StrategySpec::Separate { merges: MergeMethod::defaults(), merge_rank: 8 };
        let plain = StrategySpec::Separate { merges: vec![], merge_rank: 8 };
        let seq = |variant| StrategySpec::Sequential { variant, order: vec![], replay: 0.0 };
        let mtn = seq(SequentialVariant::MergeThenNew);
        assert_eq!(merged.dora_conflict(), Some(DoraConflict::Merges));
        assert_eq!(mtn.dora_conflict(), Some(DoraConflict::MergeThenNew));
        assert_eq!(plain.dora_conflict(), None);
        assert_eq!(seq(SequentialVariant::Continue).dora_conflict(), None);
        // In a comparison of methods DoRA drops the merges and skips merge-then-new...
        assert_eq!(merged.for_method(AdapterMethod::Dora), Some(plain.clone()));
        assert_eq!(mtn.for_method(AdapterMethod::Dora), None);
        // ...every other method runs the strategy as it is.
        assert_eq!(merged.for_method(AdapterMethod::Lora), Some(merged.clone()));
        assert_eq!(mtn.for_method(AdapterMethod::Pissa), Some(mtn.clone()));
        // Asked for alone, it is refused, saying what to do instead.
        assert!(DoraConflict::Merges.problem().contains("--merges none"));
        assert!(DoraConflict::MergeThenNew.problem().contains("use sequential (continue)"));
    }
}
