//! The one conversion between the contract ([`multitune_api`]: what the dashboard's form,
//! an HTTP client and `multitune compare` ask for, with the one set of defaults in
//! [`multitune_api::defaults`]) and the engine's comparison ([`CompareConfig`]). The
//! server, the distributed workers and the CLI all call [`compare_config`], so the same
//! request gives the same runs whichever door it came through.

use multitune_api::{defaults, AdapterMethod, Hyper, MergeChoice, MixingChoice, StrategyChoice};

use crate::adapter::merge::MergeMethod;
use crate::eval::EvalOptions;
use crate::model::lora::LoraConfig;
use crate::strategy::lr_search;
use crate::strategy::merge_search;
use crate::strategy::mixing::Mixing;
use crate::strategy::sizes;
use crate::strategy::spec::{strategy_problems, CompareConfig, StrategySpec};
use crate::train::TrainConfig;

impl From<MixingChoice> for Mixing {
    fn from(m: MixingChoice) -> Self {
        match m {
            MixingChoice::Proportional => Mixing::Proportional,
            MixingChoice::Uniform => Mixing::Uniform,
            MixingChoice::Temperature { t } => Mixing::Temperature { t },
            MixingChoice::Search => Mixing::Search,
        }
    }
}

impl From<Mixing> for MixingChoice {
    fn from(m: Mixing) -> Self {
        match m {
            Mixing::Proportional => MixingChoice::Proportional,
            Mixing::Uniform => MixingChoice::Uniform,
            Mixing::Temperature { t } => MixingChoice::Temperature { t },
            Mixing::Search => MixingChoice::Search,
        }
    }
}

impl From<MergeChoice> for MergeMethod {
    /// The method with its default parameters ([`MergeMethod::defaults`]).
    fn from(m: MergeChoice) -> Self {
        MergeMethod::from_name(m.name()).expect("every merge choice is a merge method")
    }
}

/// The engine's strategy for a choice, for adapters of rank `rank`: merges refit at
/// twice the rank, LM-head deltas default to the rank.
pub fn strategy_spec(choice: &StrategyChoice, rank: usize) -> StrategySpec {
    match choice {
        StrategyChoice::Combined { mixing, task_tag } => {
            StrategySpec::Combined { mixing: (*mixing).into(), task_tag: *task_tag }
        }
        StrategyChoice::Sequential { variant, order, replay } => {
            StrategySpec::Sequential { variant: *variant, order: order.clone(), replay: *replay }
        }
        StrategyChoice::Separate { merges } => StrategySpec::Separate {
            merges: merges.iter().map(|&m| m.into()).collect(),
            merge_rank: rank.saturating_mul(2),
        },
        StrategyChoice::MultiHead { mixing, head_rank } => {
            StrategySpec::MultiHead { mixing: (*mixing).into(), head_rank: head_rank.unwrap_or(rank) }
        }
    }
}

/// The engine's strategies for `choices` at rank `rank`.
pub fn strategy_specs(choices: &[StrategyChoice], rank: usize) -> Vec<StrategySpec> {
    choices.iter().map(|c| strategy_spec(c, rank)).collect()
}

/// The training configuration every run of a comparison starts from.
pub fn train_config(h: &Hyper) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig { rank: h.rank, alpha: 2.0 * h.rank as f64, ..Default::default() }.with_method(h.method),
        lora_plus: h.lora_plus,
        learning_rate: h.learning_rate,
        batch_size: h.batch_size,
        max_seq_len: h.max_tokens,
        seed: h.seed,
        checkpoint_every: h.checkpoint_every,
        ..Default::default()
    }
}

/// How every run of a comparison is scored.
pub fn eval_options(h: &Hyper) -> EvalOptions {
    EvalOptions { max_seq_len: h.max_tokens, bootstrap: h.bootstrap, seed: h.seed, ..Default::default() }
}

/// The comparison of `strategies` with `budget_tokens` training tokens each under `h`,
/// checked whole for `n_tasks` tasks: every problem is listed, each naming its field
/// (`hyper: …`, `strategies[i]: …`).
pub fn compare_config(
    strategies: &[StrategyChoice],
    budget_tokens: usize,
    h: &Hyper,
    n_tasks: usize,
) -> Result<CompareConfig, Vec<String>> {
    let specs = strategy_specs(strategies, h.rank);
    let train = train_config(h);
    let mut problems = Vec::new();
    if let Err(e) = train.validate() {
        problems.push(format!("hyper: {e}"));
    }
    let grid = if h.lr_grid.is_empty() { defaults::LR_GRID.to_vec() } else { h.lr_grid.clone() };
    if h.tune_lr {
        problems.extend(lr_search::grid_problems(&grid).into_iter().map(|p| format!("hyper: {p}")));
    } else if !h.lr_grid.is_empty() {
        problems.push("hyper: lr_grid is only used with tune_lr".into());
    }
    problems.extend(strategy_problems(&specs, n_tasks));
    if h.method == AdapterMethod::Dora && h.methods.is_empty() {
        problems.extend(
            specs
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.dora_conflict().map(|c| format!("strategies[{i}]: {}", c.problem()))),
        );
    }
    problems.extend(method_problems(h, &specs).into_iter().map(|p| format!("{METHODS}: {p}")));
    let tunable = specs.iter().any(|s| match s {
        StrategySpec::Separate { merges, .. } => merges.iter().any(|m| merge_search::tunable(*m)),
        _ => false,
    });
    if h.tune_merges && !tunable {
        problems.push(
            "hyper.tune_merges: no merge to tune (a search over no candidates): add the separate strategy with a merge \
             other than concat"
                .into(),
        );
    }
    problems.extend(sizes::fraction_problems(&h.data_fractions).into_iter().map(|p| format!("{FRACTIONS}: {p}")));
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(CompareConfig {
        strategies: specs,
        budget_tokens,
        train,
        eval: eval_options(h),
        seeds: h.seeds.clone(),
        lr_search: h.tune_lr.then_some(grid),
        retention: h.retention,
        data_fractions: h.data_fractions.clone(),
        tune_merges: h.tune_merges,
        methods: h.methods.clone(),
    })
}

/// How problems with the compared adapter methods name their field.
pub const METHODS: &str = "hyper.methods";

/// What is wrong with `h.methods` for `specs`: one method (nothing to compare), one
/// listed twice, `method` set beside them, DoRA with only merge-then-new to run (a
/// comparison of methods runs DoRA without merges and skips merge-then-new, which
/// merges every stage).
fn method_problems(h: &Hyper, specs: &[StrategySpec]) -> Vec<String> {
    let mut out = Vec::new();
    if h.methods.is_empty() {
        return out;
    }
    if h.methods.len() == 1 {
        out.push(format!(
            "{} alone compares nothing: list at least two methods, or set hyper.method to train every run with one",
            h.methods[0].name()
        ));
    }
    for (i, m) in h.methods.iter().enumerate() {
        // Once per method, at its last listing.
        if h.methods[..i].contains(m) && !h.methods[i + 1..].contains(m) {
            out.push(format!("{} is listed twice", m.name()));
        }
    }
    if h.method != AdapterMethod::default() {
        out.push(format!(
            "every run trains with each of these, so hyper.method ({}) is unused: leave it out",
            h.method.name()
        ));
    }
    let runs_with_dora = specs.iter().any(|s| s.for_method(AdapterMethod::Dora).is_some());
    if h.methods.contains(&AdapterMethod::Dora) && !runs_with_dora {
        out.push(
            "dora runs none of these strategies (merge-then-new merges every stage, and merged DoRA stages are no \
             adapter): add another strategy or leave dora out"
                .into(),
        );
    }
    out
}

/// How problems with the data fractions name their field.
pub const FRACTIONS: &str = "hyper.data_fractions";

/// What is wrong with `h` and `strategies` for tasks of these training sizes (`(name,
/// examples)`), each naming its field: a data size leaving a task too few examples, and
/// a search on a validation split (`tune_lr`, `tune_merges`, a mixing `search`) over a
/// task too small to hold some examples out.
pub fn size_problems(h: &Hyper, strategies: &[StrategyChoice], tasks: &[(&str, usize)]) -> Vec<String> {
    let mut out: Vec<String> =
        sizes::size_problems(&h.data_fractions, tasks).into_iter().map(|p| format!("{FRACTIONS}: {p}")).collect();
    let mixing = strategies.iter().position(|s| {
        matches!(
            s,
            StrategyChoice::Combined { mixing: MixingChoice::Search, .. }
                | StrategyChoice::MultiHead { mixing: MixingChoice::Search, .. }
        )
    });
    let field = if h.tune_lr {
        Some("hyper.tune_lr".to_string())
    } else if h.tune_merges {
        Some("hyper.tune_merges".to_string())
    } else {
        mixing.map(|i| format!("strategies[{i}].mixing"))
    };
    if let Some(field) = field {
        out.extend(lr_search::too_small(tasks).into_iter().map(|p| format!("{field}: {p}")));
    }
    out
}

pub use multitune_api::{keep_problems, MAX_KEEP_SETS};

#[cfg(test)]
mod tests {
    use super::*;
    use multitune_api::SequentialVariant;

    #[test]
    fn every_choice_becomes_its_strategy_with_the_shared_defaults() {
        let all = strategy_specs(&StrategyChoice::all(), 4);
        assert_eq!(all.len(), multitune_api::STRATEGY_NAMES.len());
        assert_eq!(all[0], StrategySpec::Combined { mixing: Mixing::Proportional, task_tag: false });
        assert_eq!(
            all[2],
            StrategySpec::Sequential { variant: SequentialVariant::MergeThenNew, order: vec![], replay: 0.0 }
        );
        assert_eq!(all[3], StrategySpec::Separate { merges: MergeMethod::defaults(), merge_rank: 8 });
        assert_eq!(all[4], StrategySpec::MultiHead { mixing: Mixing::Proportional, head_rank: 4 });
        assert_eq!(all[2].name(), "sequential (merge-then-new)");
        let tagged = StrategyChoice::Combined { mixing: MixingChoice::Temperature { t: 2.0 }, task_tag: true };
        assert_eq!(strategy_spec(&tagged, 8).name(), "combined (T=2, tagged)");
        let head = StrategyChoice::MultiHead { mixing: MixingChoice::Uniform, head_rank: Some(2) };
        assert_eq!(strategy_spec(&head, 8), StrategySpec::MultiHead { mixing: Mixing::Uniform, head_rank: 2 });
    }

    #[test]
    fn problems_are_listed_whole() {
        let seq = StrategyChoice::Sequential { variant: SequentialVariant::Continue, order: vec![0, 0], replay: 1.5 };
        let head = StrategyChoice::MultiHead { mixing: MixingChoice::Proportional, head_rank: Some(0) };
        let h = Hyper { batch_size: 0, ..Hyper::default() };
        let p = compare_config(&[seq.clone(), head, seq], 100, &h, 2).unwrap_err();
        assert!(p[0].starts_with("hyper: "), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[0]: order [0, 0]")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[0]: replay must be between 0 and 1")), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("strategies[1]: head_rank must be 1 to 256")), "{p:?}");
        assert!(p.iter().any(|s| s == "strategies: the same strategy is listed twice"), "{p:?}");
        let p = compare_config(&[], 100, &Hyper::default(), 2).unwrap_err();
        assert!(p.contains(&"strategies: pick at least one".to_string()), "{p:?}");
        let h = Hyper { data_fractions: vec![0.5, 0.5, 1.2], ..Hyper::default() };
        let p = compare_config(&StrategyChoice::all()[..1], 100, &h, 2).unwrap_err();
        assert!(p.contains(&"hyper.data_fractions: 0.5 is listed twice".to_string()), "{p:?}");
        assert!(p.iter().any(|s| s.starts_with("hyper.data_fractions: 1.2 is not a share")), "{p:?}");
        let h = Hyper { data_fractions: vec![0.1, 1.0], ..Hyper::default() };
        assert_eq!(compare_config(&StrategyChoice::all()[..1], 100, &h, 2).unwrap().data_fractions, vec![0.1, 1.0]);
        let p = size_problems(&h, &[], &[("a", 100), ("b", 20)]);
        assert_eq!(
            p,
            vec!["hyper.data_fractions: 0.1 leaves task `b` 2 training examples of its 20 (at least 4 are needed)"]
        );
    }

    #[test]
    fn searches_over_nothing_or_too_little_are_refused() {
        let combined = StrategyChoice::named("combined").unwrap();
        let tune = Hyper { tune_merges: true, ..Hyper::default() };
        let p = compare_config(std::slice::from_ref(&combined), 100, &tune, 2).unwrap_err();
        assert!(p[0].starts_with("hyper.tune_merges: no merge to tune"), "{p:?}");
        let concat = StrategyChoice::Separate { merges: vec![MergeChoice::Concat] };
        assert!(compare_config(&[concat], 100, &tune, 2).is_err(), "concatenation has nothing to tune");
        let c = compare_config(&StrategyChoice::all(), 100, &tune, 2).unwrap();
        assert!(c.tune_merges);
        // A search holds examples out: a task with fewer than 10 is refused, naming the field.
        let searched = StrategyChoice::Combined { mixing: MixingChoice::Search, task_tag: false };
        let tiny = [("a", 100), ("b", 6)];
        let want = "strategies[1].mixing: task `b` has 6 training examples; a search holds some out for validation \
                    and needs at least 10";
        assert_eq!(size_problems(&Hyper::default(), &[combined.clone(), searched], &tiny), vec![want]);
        assert!(size_problems(&tune, &[], &tiny)[0].starts_with("hyper.tune_merges: task `b`"));
        assert!(size_problems(&Hyper::default(), &[combined], &tiny).is_empty());
        assert_eq!(
            strategy_spec(&StrategyChoice::Combined { mixing: MixingChoice::Search, task_tag: false }, 8).mixing(),
            Some(Mixing::Search)
        );
    }

    #[test]
    fn compared_methods_are_checked_whole() {
        use AdapterMethod::{Dora, Lora, Pissa};
        let all = StrategyChoice::all();
        let h = Hyper { methods: vec![Lora, Dora], ..Hyper::default() };
        assert_eq!(compare_config(&all, 100, &h, 2).unwrap().methods, vec![Lora, Dora]);
        let p = |methods: Vec<AdapterMethod>, method: AdapterMethod, strategies: &[StrategyChoice]| {
            compare_config(strategies, 100, &Hyper { methods, method, ..Hyper::default() }, 2).unwrap_err()
        };
        assert_eq!(
            p(vec![Dora], Lora, &all),
            ["hyper.methods: dora alone compares nothing: list at least two methods, or set hyper.method to train every \
              run with one"]
        );
        assert_eq!(p(vec![Lora, Dora, Lora, Lora], Lora, &all), ["hyper.methods: lora is listed twice"]);
        assert_eq!(
            p(vec![Lora, Pissa], Dora, &all),
            ["hyper.methods: every run trains with each of these, so hyper.method (dora) is unused: leave it out"]
        );
        let merge_then_new = StrategyChoice::named("sequential-merge").unwrap();
        assert!(p(vec![Lora, Dora], Lora, &[merge_then_new])[0].starts_with("hyper.methods: dora runs none of these"));
    }

    #[test]
    fn hyper_parameters_become_the_runs_train_config() {
        let h = Hyper { rank: 4, learning_rate: 5e-4, seed: 7, ..Hyper::default() };
        let c = compare_config(&StrategyChoice::all()[..1], 9000, &h, 1).unwrap();
        assert_eq!((c.train.lora.rank, c.train.lora.alpha), (4, 8.0));
        assert_eq!((c.train.learning_rate, c.train.seed, c.eval.seed), (5e-4, 7, 7));
        assert_eq!((c.budget_tokens, c.train.checkpoint_every), (9000, defaults::CHECKPOINT_EVERY));
        assert_eq!(c.lr_search, None);
        let tuned = compare_config(&StrategyChoice::all()[..1], 9000, &Hyper { tune_lr: true, ..h }, 1).unwrap();
        assert_eq!(tuned.lr_search, Some(defaults::LR_GRID.to_vec()));
    }
}
