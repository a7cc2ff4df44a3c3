//! The New experiment form's logic in plain functions (tested natively, built without
//! the `app` feature): its fields and their starting values (the contract's defaults),
//! the request they make, the held-out sizes, the measured throughput behind the time
//! estimate.

use multitune_api::{
    defaults, AdapterMethod, Dataset, Experiment, ExperimentCreate, Hyper, MixingChoice, StrategyChoice, TaskRef,
};

/// The form's fields as typed (numbers are edited as text and parsed on submit, so
/// typing "0.0" is not rewritten). [`Default`] is the untouched form: the contract's
/// defaults ([`multitune_api::defaults`]), every strategy ticked.
#[derive(Debug, Clone, PartialEq)]
pub struct FormFields {
    /// Experiment name.
    pub name: String,
    /// Base model id.
    pub model: String,
    /// Which of [`StrategyChoice::all`] are ticked.
    pub picked: Vec<bool>,
    /// Training tokens per strategy.
    pub budget: String,
    /// Peak learning rate.
    pub lr: String,
    /// LoRA rank.
    pub rank: String,
    /// Adapter method ([`AdapterMethod::name`]).
    pub method: String,
    /// Adapter methods to compare, comma-separated (blank: only `method`).
    pub methods: String,
    /// LoRA+ ratio of B's learning rate to A's (blank: off).
    pub lora_plus: String,
    /// Examples per micro-batch.
    pub batch: String,
    /// Longest example, tokens.
    pub max_tokens: String,
    /// Held-out examples per task (blank: all).
    pub eval_limit: String,
    /// Seeds to repeat over (blank: once).
    pub seeds: String,
    /// Tune each strategy's learning rate.
    pub tune_lr: bool,
    /// Task mixing of the combined and multi-head runs ([`MixingChoice::name`]:
    /// `proportional`, `temperature:2`, `uniform`, `search`).
    pub mixing: String,
    /// Tune the separate strategy's merges on validation.
    pub tune_merges: bool,
    /// Data-size curves: shares of the training data (blank: the full data only).
    pub data_fractions: String,
    /// Measure what every run keeps of the base model.
    pub retention: bool,
}

impl Default for FormFields {
    fn default() -> Self {
        let h = Hyper::default();
        Self {
            name: "comparison".into(),
            model: defaults::MODEL.into(),
            picked: vec![true; StrategyChoice::all().len()],
            budget: defaults::BUDGET_TOKENS.to_string(),
            lr: h.learning_rate.to_string(),
            rank: h.rank.to_string(),
            method: h.method.name().into(),
            methods: h.methods.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
            lora_plus: h.lora_plus.map(|r| r.to_string()).unwrap_or_default(),
            batch: h.batch_size.to_string(),
            max_tokens: h.max_tokens.to_string(),
            eval_limit: h.eval_limit.map(|l| l.to_string()).unwrap_or_default(),
            seeds: list(&h.seeds),
            tune_lr: h.tune_lr,
            mixing: MixingChoice::default().name(),
            tune_merges: h.tune_merges,
            data_fractions: list(&h.data_fractions),
            retention: h.retention,
        }
    }
}

/// Numbers as the form shows a list of them: `0.25,0.5`.
fn list<T: ToString>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

impl FormFields {
    /// The request these fields make for the chosen tasks (dataset id, held-out dataset
    /// id or "") and keep sets (dataset ids) among `datasets`; every field that is not a
    /// number is named, and a keep set that is also a task (or named like one) refused.
    pub fn request(
        &self,
        tasks: &[(String, String)],
        keep: &[String],
        datasets: &[Dataset],
    ) -> Result<ExperimentCreate, Vec<String>> {
        let hyper = self.hyper();
        let budget = self.budget.trim().parse::<usize>();
        let mixing = MixingChoice::parse(self.mixing.trim());
        let name = |id: &str| datasets.iter().find(|d| d.id == id).map_or_else(|| id.to_string(), |d| d.name.clone());
        let sources: Vec<(String, String)> = tasks
            .iter()
            .flat_map(|(d, e)| [(d.clone(), name(d)), (e.clone(), String::new())])
            .filter(|(id, _)| !id.is_empty())
            .collect();
        let keep_sets: Vec<(String, String)> = keep.iter().map(|k| (k.clone(), name(k))).collect();
        let keep_errors: Vec<String> = multitune_api::keep_problems(&sources, &keep_sets)
            .into_iter()
            .map(|(_, p)| format!("keep sets: {p}"))
            .collect();
        let (hyper, budget_tokens, mixing) = match (hyper, budget, mixing) {
            (Ok(h), Ok(b), Some(m)) if keep_errors.is_empty() => (h, b, m),
            (h, b, m) => {
                let mut errors = h.err().unwrap_or_default();
                if b.is_err() {
                    errors.insert(0, format!("training tokens: `{}` is not a whole number", self.budget.trim()));
                }
                if m.is_none() {
                    errors.push(format!(
                        "task mixing: `{}` is not proportional, uniform, temperature:T or search",
                        self.mixing.trim()
                    ));
                }
                errors.extend(keep_errors);
                return Err(errors);
            }
        };
        Ok(ExperimentCreate {
            name: self.name.clone(),
            model: self.model.clone(),
            tasks: tasks
                .iter()
                .map(|(d, e)| TaskRef { dataset: d.clone(), eval_dataset: Some(e.clone()).filter(|e| !e.is_empty()) })
                .collect(),
            strategies: StrategyChoice::all()
                .into_iter()
                .zip(&self.picked)
                .filter(|(_, p)| **p)
                .map(|(s, _)| match s {
                    StrategyChoice::Combined { task_tag, .. } => StrategyChoice::Combined { mixing, task_tag },
                    StrategyChoice::MultiHead { head_rank, .. } => StrategyChoice::MultiHead { mixing, head_rank },
                    other => other,
                })
                .collect(),
            budget_tokens,
            hyper,
            keep: keep.to_vec(),
        })
    }

    /// The hyper-parameters typed into the form; each field that is not a number is named.
    pub fn hyper(&self) -> Result<Hyper, Vec<String>> {
        let mut errors = Vec::new();
        let mut num = |name: &str, v: &str| -> Option<f64> {
            let r = v.trim().parse::<f64>().ok().filter(|x| x.is_finite());
            if r.is_none() {
                errors.push(format!("{name}: `{v}` is not a number"));
            }
            r
        };
        let learning_rate = num("learning rate", &self.lr).unwrap_or(0.0);
        let rank = num("LoRA rank", &self.rank).unwrap_or(0.0) as usize;
        let batch_size = num("batch size", &self.batch).unwrap_or(0.0) as usize;
        let max_tokens = num("longest example", &self.max_tokens).unwrap_or(0.0) as usize;
        let eval_limit = if self.eval_limit.trim().is_empty() {
            None
        } else {
            num("held-out examples", &self.eval_limit).map(|v| v as usize)
        };
        let lora_plus = if self.lora_plus.trim().is_empty() { None } else { num("LoRA+ ratio", &self.lora_plus) };
        let method = AdapterMethod::parse(&self.method);
        if method.is_none() {
            errors.push(format!("adapter method: `{}` is not lora, rslora, dora or pissa", self.method.trim()));
        }
        let methods = parse_list(&self.methods, "compare methods", "lora, rslora, dora or pissa", &mut errors);
        let seeds = parse_list(&self.seeds, "seeds", "a whole number", &mut errors);
        let data_fractions = parse_list(&self.data_fractions, "data sizes", "a number", &mut errors);
        let h = Hyper {
            learning_rate,
            rank,
            method: method.unwrap_or_default(),
            methods,
            lora_plus,
            batch_size,
            max_tokens,
            eval_limit,
            seeds,
            tune_lr: self.tune_lr,
            tune_merges: self.tune_merges,
            retention: self.retention,
            data_fractions,
            ..Hyper::default()
        };
        if errors.is_empty() {
            Ok(h)
        } else {
            Err(errors)
        }
    }

    /// How many times every strategy trains for the adapter methods: once per method
    /// compared (once without a comparison of methods).
    pub fn method_factor(&self) -> f64 {
        self.methods.split(',').filter(|s| !s.trim().is_empty()).count().max(1) as f64
    }

    /// How many token budgets of training these settings come to: every strategy ticked
    /// trains once per method compared, seed and data size (a smaller size on its share
    /// of the budget); its searches run once per method, at the full data: the
    /// learning-rate search and a task-mixing search (combined and multi-head) each 7/8
    /// of a budget more (three candidates on 1/8, the better two on 1/4).
    pub fn budgets(&self) -> f64 {
        let seeds = self.seeds.split(',').filter(|s| !s.trim().is_empty()).count().max(1) as f64;
        let searched_mixing = self.mixing.trim() == "search";
        let per_strategy = |s: &StrategyChoice| {
            let mixed = matches!(s, StrategyChoice::Combined { .. } | StrategyChoice::MultiHead { .. });
            let searches = 0.875 * (f64::from(u8::from(self.tune_lr)) + f64::from(u8::from(mixed && searched_mixing)));
            seeds * self.size_factor() + searches
        };
        let picked: f64 =
            StrategyChoice::all().iter().zip(&self.picked).filter(|(_, p)| **p).map(|(s, _)| per_strategy(s)).sum();
        picked * self.method_factor()
    }

    /// How many comparisons' worth of training the data sizes add up to: 1 for the full
    /// data, plus each smaller share (the budget scales with it).
    pub fn size_factor(&self) -> f64 {
        let mut f: Vec<f64> = self
            .data_fractions
            .split(',')
            .filter_map(|s| s.trim().parse::<f64>().ok())
            .filter(|f| *f > 0.0 && *f < 1.0)
            .collect();
        f.sort_by(f64::total_cmp);
        f.dedup();
        1.0 + f.iter().sum::<f64>()
    }
}

/// A comma-separated list typed into the form; each item that does not parse is named
/// (`seeds: `x` is not a whole number`).
fn parse_list<T: std::str::FromStr>(text: &str, field: &str, what: &str, errors: &mut Vec<String>) -> Vec<T> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|s| {
            let v = s.parse().ok();
            if v.is_none() {
                errors.push(format!("{field}: `{s}` is not {what}"));
            }
            v
        })
        .collect()
}

/// Median training throughput reported by earlier runs on `model`.
pub fn measured_tokens_per_s(experiments: &[Experiment], model: &str) -> Option<f64> {
    let mut v: Vec<f64> = experiments
        .iter()
        .filter(|e| e.spec.model == model)
        .flat_map(|e| e.runs.iter().filter_map(|r| r.tokens_per_s))
        .filter(|t| t.is_finite() && *t > 0.0)
        .collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The held-out examples each chosen task will have: its held-out dataset's rows, or the
/// share split off its training rows ([`defaults::EVAL_SPLIT`]), at most the held-out limit.
pub fn held_out_sizes(datasets: &[Dataset], chosen: &[(String, String)], eval_limit: &str) -> Vec<usize> {
    let limit: Option<usize> = eval_limit.trim().parse().ok().filter(|&l| l > 0);
    let rows = |id: &str| datasets.iter().find(|d| d.id == id).map(|d| d.rows);
    chosen
        .iter()
        .filter_map(|(d, e)| {
            let n = if e.is_empty() {
                rows(d).map(|r| (r as f64 * defaults::EVAL_SPLIT).round() as usize)
            } else {
                rows(e)
            }?;
            Some(limit.map_or(n, |l| n.min(l)).max(1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use multitune_api::{ExperimentCreate, Run, Status};

    fn exp(model: &str, tps: &[f64]) -> Experiment {
        Experiment {
            id: "x".into(),
            name: "x".into(),
            status: Status::Done,
            error: None,
            spec: ExperimentCreate {
                name: "x".into(),
                model: model.into(),
                tasks: vec![],
                strategies: vec![],
                budget_tokens: 1,
                hyper: Hyper::default(),
                keep: vec![],
            },
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            queue_position: None,
            runs: tps
                .iter()
                .map(|&t| Run {
                    id: 1,
                    status: Status::Done,
                    tokens_per_s: Some(t),
                    has_adapter: true,
                    ..Run::started("x", "r", 0)
                })
                .collect(),
            has_report: true,
        }
    }

    #[test]
    fn typed_settings_parse_or_name_the_bad_field() {
        let typed = |lr: &str, eval_limit: &str, seeds: &str, data_fractions: &str| FormFields {
            lr: lr.into(),
            rank: "8".into(),
            batch: "4".into(),
            max_tokens: "192".into(),
            eval_limit: eval_limit.into(),
            seeds: seeds.into(),
            data_fractions: data_fractions.into(),
            ..FormFields::default()
        };
        let f = typed("0.005", "", "1, 2", "0.25, 0.5,1");
        let h = f.hyper().unwrap();
        assert_eq!((h.learning_rate, h.rank, h.batch_size, h.max_tokens, h.eval_limit), (0.005, 8, 4, 192, None));
        assert_eq!(h.seeds, vec![1, 2]);
        assert_eq!(h.data_fractions, vec![0.25, 0.5, 1.0]);
        assert_eq!(f.size_factor(), 1.75, "the full data and the two smaller shares");
        let e = typed("fast", "x", "1,a", "half").hyper().unwrap_err();
        assert_eq!(e.len(), 4, "{e:?}");
        assert!(e[0].starts_with("learning rate") && e[1].starts_with("held-out") && e[2].starts_with("seeds"));
        assert_eq!(e[3], "data sizes: `half` is not a number");
    }

    #[test]
    fn the_adapter_method_and_lora_plus_parse_or_are_named() {
        let f = FormFields { method: "dora".into(), lora_plus: "16".into(), ..FormFields::default() };
        let h = f.hyper().unwrap();
        assert_eq!((h.method, h.lora_plus), (AdapterMethod::Dora, Some(16.0)));
        assert_eq!(FormFields::default().hyper().unwrap().lora_plus, None);
        let e = FormFields { method: "qlora".into(), lora_plus: "fast".into(), ..FormFields::default() }
            .hyper()
            .unwrap_err();
        assert_eq!(
            e,
            vec!["LoRA+ ratio: `fast` is not a number", "adapter method: `qlora` is not lora, rslora, dora or pissa"]
        );
    }

    #[test]
    fn the_estimate_counts_methods_seeds_sizes_and_searches() {
        let f = FormFields::default();
        assert_eq!(f.budgets(), 5.0, "every strategy once");
        let f = FormFields { methods: "lora,dora".into(), seeds: "1,2".into(), ..FormFields::default() };
        assert_eq!(f.budgets(), 20.0, "5 strategies × 2 methods × 2 seeds");
        // Searches run once per strategy and method: the rate for all five, the mixing
        // for combined and multi-head; a half-size curve adds half a budget per seed.
        let f = FormFields {
            tune_lr: true,
            mixing: "search".into(),
            data_fractions: "0.5".into(),
            ..FormFields::default()
        };
        assert_eq!(f.budgets(), 5.0 * 1.5 + 5.0 * 0.875 + 2.0 * 0.875);
    }

    #[test]
    fn compared_methods_parse_or_are_named() {
        let f = FormFields { methods: "lora, dora".into(), ..FormFields::default() };
        assert_eq!(f.hyper().unwrap().methods, vec![AdapterMethod::Lora, AdapterMethod::Dora]);
        assert_eq!(f.method_factor(), 2.0, "every strategy trains once per method");
        assert_eq!(FormFields::default().method_factor(), 1.0);
        let e = FormFields { methods: "lora,qlora".into(), ..FormFields::default() }.hyper().unwrap_err();
        assert_eq!(e, vec!["compare methods: `qlora` is not lora, rslora, dora or pissa"]);
    }

    #[test]
    fn the_untouched_form_asks_for_the_contracts_defaults() {
        let f = FormFields::default();
        let r = f.request(&[("ab".into(), String::new())], &[], &[]).unwrap();
        assert_eq!(r.hyper, Hyper::default());
        assert_eq!((r.budget_tokens, r.model.as_str()), (defaults::BUDGET_TOKENS, defaults::MODEL));
        assert_eq!(r.strategies, StrategyChoice::all());
        let mut some = FormFields { budget: "12k".into(), lr: "x".into(), ..f };
        some.picked[0] = false;
        let e = some.request(&[], &[], &[]).unwrap_err();
        assert!(e[0].starts_with("training tokens") && e[1].starts_with("learning rate"), "{e:?}");
        some.budget = "12000".into();
        some.lr = "0.005".into();
        let r = some.request(&[], &[], &[]).unwrap();
        assert_eq!((r.budget_tokens, r.hyper.learning_rate, r.strategies.len()), (12000, 0.005, 4));
        // The mixing applies to the combined and multi-head runs; merges tuned on request.
        let searched = FormFields { mixing: "search".into(), tune_merges: true, ..FormFields::default() };
        let r = searched.request(&[], &[], &[]).unwrap();
        assert!(r.hyper.tune_merges);
        assert_eq!(r.strategies[0], StrategyChoice::Combined { mixing: MixingChoice::Search, task_tag: false });
        assert_eq!(r.strategies[4], StrategyChoice::MultiHead { mixing: MixingChoice::Search, head_rank: None });
        let e = FormFields { mixing: "random".into(), ..FormFields::default() }.request(&[], &[], &[]).unwrap_err();
        assert_eq!(e, vec!["task mixing: `random` is not proportional, uniform, temperature:T or search"]);
    }

    #[test]
    fn a_keep_set_goes_into_the_request_unless_it_is_also_a_task() {
        let ds = [dataset("a", 96), dataset("ae", 37), dataset("k", 50)];
        let f = FormFields::default();
        let tasks = [("a".to_string(), "ae".to_string())];
        let r = f.request(&tasks, &["k".into()], &ds).unwrap();
        assert_eq!(r.keep, vec!["k".to_string()]);
        let e = f.request(&tasks, &["a".into()], &ds).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("keep sets: `a` is also a task"), "{e:?}");
        // The held-out dataset of a task is the task's too.
        let e = f.request(&tasks, &["ae".into()], &ds).unwrap_err();
        assert!(e[0].starts_with("keep sets: `ae` is also a task"), "{e:?}");
    }

    #[test]
    fn throughput_comes_from_runs_of_the_same_model() {
        let h = vec![exp("default", &[100.0, 120.0, 90.0]), exp("tiny", &[9000.0])];
        assert_eq!(measured_tokens_per_s(&h, "default"), Some(100.0));
        assert_eq!(measured_tokens_per_s(&h, "tiny"), Some(9000.0));
        assert_eq!(measured_tokens_per_s(&h, "other"), None);
    }

    fn dataset(id: &str, rows: usize) -> Dataset {
        Dataset {
            id: id.into(),
            name: id.into(),
            filename: String::new(),
            format: "jsonl".into(),
            kind: "classification".into(),
            rows,
            bytes: 0,
            labels: vec![],
            warnings: vec![],
            created_at: String::new(),
        }
    }

    #[test]
    fn held_out_sizes_follow_the_split_the_file_and_the_limit() {
        let d = dataset;
        let ds = [d("a", 96), d("b", 500), d("ae", 37)];
        let chosen =
            [("a".to_string(), String::new()), ("b".to_string(), String::new()), ("a".to_string(), "ae".to_string())];
        assert_eq!(held_out_sizes(&ds, &chosen, ""), vec![19, 100, 37]);
        assert_eq!(held_out_sizes(&ds, &chosen, "50"), vec![19, 50, 37]);
        assert!(held_out_sizes(&ds, &[("zz".to_string(), String::new())], "").is_empty());
    }
}
