use candle_core::Device;
use multitune::data::Record;
use multitune::data::{self, LoadOptions, TaskKind};
use multitune::eval::EvalOptions;
use multitune::model::lora::LoraConfig;
use multitune::model::tiny_model;
use multitune::strategy::request::strategy_specs;
use multitune::strategy::{compare, Base, CompareConfig, SequentialVariant, StrategySpec, TaskData};
use multitune::train::TrainConfig;
use multitune_api::StrategyChoice;

fn demo_tasks(eval_n: usize) -> Vec<TaskData> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    multitune::data::demo::TASKS
        .iter()
        .map(|t| {
            let d = data::load(&dir.join(format!("{t}.jsonl")), &LoadOptions::default()).unwrap();
            let mut e =
                data::load(&dir.join("eval").join(format!("{t}.jsonl")), &LoadOptions::default()).unwrap().records;
            e.truncate(eval_n);
            TaskData { name: t.to_string(), kind: d.kind, labels: d.labels, train: d.records, eval: e }
        })
        .collect()
}

fn quick_train(lr: f64) -> TrainConfig {
    TrainConfig {
        lora: LoraConfig { rank: 8, alpha: 16.0, ..Default::default() },
        learning_rate: lr,
        batch_size: 4,
        max_seq_len: 192,
        checkpoint_every: 0,
        ..Default::default()
    }
}

/// A comparison on the tiny model's quick settings: `strategies` under `budget` tokens,
/// trained with `train`, scored with 20 bootstrap resamples.
fn quick_compare(strategies: Vec<StrategySpec>, budget: usize, train: TrainConfig) -> CompareConfig {
    CompareConfig {
        strategies,
        budget_tokens: budget,
        train,
        eval: EvalOptions { max_seq_len: 192, bootstrap: 20, ..Default::default() },
        seeds: vec![],
        lr_search: None,
        retention: false,
        data_fractions: vec![],
        tune_merges: false,
        methods: vec![],
    }
}

/// The longest training example of `tasks`, in tokens, encoded at `max_len`.
fn longest_example(tok: &multitune::model::TextTokenizer, tasks: &[TaskData], max_len: usize) -> usize {
    tasks
        .iter()
        .flat_map(|t| multitune::train::encode_all(tok, &t.train, None, max_len).unwrap())
        .map(|e| e.ids.len())
        .max()
        .unwrap()
}

/// Runs `cfg` on the tiny base model into `out`, without a state folder.
fn run_tiny(
    model: &multitune::model::Llama,
    tok: &multitune::model::TextTokenizer,
    tasks: &[TaskData],
    cfg: &CompareConfig,
    out: &std::path::Path,
    on_event: &mut dyn FnMut(&multitune::strategy::CompareEvent),
) -> multitune::Result<multitune::strategy::Report> {
    run_tiny_with(model, tok, tasks, cfg, out, Default::default(), on_event)
}

/// [`run_tiny`] stopped and resumed by `control`.
fn run_tiny_with(
    model: &multitune::model::Llama,
    tok: &multitune::model::TextTokenizer,
    tasks: &[TaskData],
    cfg: &CompareConfig,
    out: &std::path::Path,
    control: multitune::strategy::Control,
    on_event: &mut dyn FnMut(&multitune::strategy::CompareEvent),
) -> multitune::Result<multitune::strategy::Report> {
    compare(&Base { model, tokenizer: tok, name: "tiny" }, tasks, &[], cfg, out, control, on_event)
}

/// Every strategy and variant on the tiny model and the demo suite: the report has
/// every section, every run trained on the budget (within 1%), adapters are exported.
#[test]
fn every_strategy_runs_end_to_end_under_one_budget() {
    let (model, tok) = tiny_model(0, &Device::Cpu).unwrap();
    let tasks = demo_tasks(8);
    let mut specs = strategy_specs(&StrategyChoice::all(), 8);
    specs.push(StrategySpec::Combined { mixing: multitune::strategy::Mixing::Temperature { t: 2.0 }, task_tag: true });
    specs.push(StrategySpec::Sequential {
        variant: SequentialVariant::Continue,
        order: vec![3, 2, 1, 0],
        replay: 0.25,
    });
    let budget = 8_000;
    let cfg = CompareConfig {
        eval: EvalOptions { max_seq_len: 192, bootstrap: 50, ..Default::default() },
        retention: true,
        ..quick_compare(specs, budget, quick_train(5e-3))
    };
    let out = tempfile::tempdir().unwrap();
    let mut events = 0;
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |_| events += 1).unwrap();
    assert!(events > 50);
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    for want in [
        "base model",
        "combined (proportional)",
        "sequential (continue)",
        "sequential (merge-then-new)",
        "separate (routed)",
        "separate + merge (linear)",
        "separate + merge (task_arithmetic)",
        "separate + merge (ties)",
        "separate + merge (dare)",
        "separate + merge (concat)",
        "combined (T=2, tagged)",
        "sequential (continue, replay 0.25)",
        "multi-head",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // Each training ends on whole examples within one example of its budget (the step
    // that reaches it cuts none): a run trains at most the budget, and short of it by less
    // than one example per training (four for the per-task strategies) and the division
    // of the budget into stages.
    let longest = longest_example(&tok, &tasks, cfg.train.max_seq_len);
    for r in report.runs.iter().filter(|r| r.strategy != "base") {
        let trainings = if matches!(r.strategy.as_str(), "combined" | "multi_head") { 1 } else { tasks.len() };
        assert!(
            r.tokens <= budget && budget - r.tokens < trainings * (longest + 1),
            "{}: trained {} tokens for a budget of {budget}",
            r.name,
            r.tokens
        );
        assert_eq!(r.task_tokens.iter().sum::<usize>(), r.tokens, "{}", r.name);
        // Where each later stage begins on the loss curve (one task after another).
        let stages = if matches!(r.strategy.as_str(), "sequential" | "separate") { tasks.len() - 1 } else { 0 };
        assert_eq!(r.stage_starts.len(), stages, "{}: {:?}", r.name, r.stage_starts);
        assert!(
            r.stage_starts.windows(2).all(|w| w[0] < w[1])
                && r.stage_starts.iter().all(|&s| s > 0 && s < r.losses.len()),
            "{}: {:?} of {} steps",
            r.name,
            r.stage_starts,
            r.losses.len()
        );
        assert_eq!(r.scores.len(), 4);
        assert!(r.trainable_params > 0 && r.adapter_bytes > 0);
        assert!(r.peak_rss_mib.is_some_and(|m| m > 10.0), "{}: per-run peak memory {:?}", r.name, r.peak_rss_mib);
        for d in &r.adapter_dirs {
            assert!(std::path::Path::new(d).join("adapter_config.json").exists(), "{d}");
        }
        if r.strategy == "sequential" {
            let f = r.forgetting.as_ref().expect("sequential runs have a forgetting matrix");
            assert_eq!((f.matrix.len(), f.matrix[0].len()), (4, 4));
            // What the model keeps of the base after each stage; the last is the run's.
            assert_eq!(f.retention.len(), 4, "{}", r.name);
            assert_eq!(f.retention.last().copied(), r.retention, "{}", r.name);
        }
    }
    // Every run is measured against the base model's answers to the retention probe.
    for r in &report.runs {
        let k = r.retention.unwrap_or_else(|| panic!("{} has no retention", r.name));
        assert!(k.prompts > 0 && (0.0..=1.0).contains(&k.same_answer) && k.kl >= 0.0, "{}: {k:?}", r.name);
        if r.is_base() {
            assert_eq!((k.kl, k.same_answer), (0.0, 1.0), "the base model keeps all of itself");
        } else {
            assert!(k.kl > 0.0, "{}: trained, yet no KL from the base model", r.name);
        }
    }
    assert!(out.path().join("charts/retention.svg").exists());
    // What measuring cost: the base model's answers, and every measurement once — the
    // first stage both sequential runs share (task 0's adapter, also the separate run's)
    // is counted where it was first measured; every later stage was measured anew.
    let base_k = report.runs[0].retention.unwrap();
    assert!(base_k.seconds > 0.0, "the base model's answers took time: {base_k:?}");
    let stages =
        |name: &str| report.runs.iter().find(|r| r.name == name).unwrap().forgetting.clone().unwrap().retention;
    let (cont, mtn_k) = (stages("sequential (continue)"), stages("sequential (merge-then-new)"));
    assert!(cont[0].seconds == 0.0 || mtn_k[0].seconds == 0.0, "a shared stage counted twice: {cont:?} {mtn_k:?}");
    assert!(cont[1..].iter().chain(&mtn_k[1..]).all(|k| k.seconds > 0.0), "{cont:?} {mtn_k:?}");
    let combined = report.runs.iter().find(|r| r.name == "combined (proportional)").unwrap();
    assert!(combined.retention.is_some_and(|k| k.seconds > 0.0));
    let total = report.retention_seconds().unwrap();
    assert!(total >= base_k.seconds + combined.retention.unwrap().seconds, "{total}");
    let mtn = report.runs.iter().find(|r| r.name == "sequential (merge-then-new)").unwrap();
    assert_eq!(mtn.exported_params, 4 * mtn.trainable_params, "the export concatenates four stage adapters");
    let mh = report.runs.iter().find(|r| r.name == "multi-head").unwrap();
    let mh_dir = std::path::Path::new(&mh.adapter_dirs[0]);
    assert!(mh_dir.join("heads.safetensors").exists() && mh_dir.join("heads.json").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mh_dir.join("heads.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = manifest["heads"].as_array().unwrap().iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["classifier", "classifier", "lm_head_delta", "lm_head_delta"]);
    let combined = report.runs.iter().find(|r| r.name == "combined (proportional)").unwrap();
    assert!(combined.task_tokens.iter().all(|&t| t > 0), "every task is in the mixture: {:?}", combined.task_tokens);
    // Mixed runs report each task's loss at every step (from the same forward passes):
    // the step's loss is a weighted mean of the tasks' trained in it, so it lies between
    // them. Runs on one task at a time report none.
    for r in report.runs.iter().filter(|r| r.strategy != "base") {
        if !matches!(r.strategy.as_str(), "combined" | "multi_head") {
            assert!(r.task_losses.is_empty(), "{}", r.name);
            continue;
        }
        let names: Vec<&str> = r.task_losses.iter().map(|t| t.0.as_str()).collect();
        assert_eq!(names, multitune::data::demo::TASKS, "{}", r.name);
        for (s, &loss) in r.losses.iter().enumerate() {
            let at: Vec<f64> = r.task_losses.iter().filter_map(|t| t.1[s]).collect();
            assert!(!at.is_empty(), "{}: step {s} trained some task", r.name);
            let (lo, hi) = at.iter().fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            assert!(lo - 1e-6 <= loss && loss <= hi + 1e-6, "{}: step {s}: {loss} outside {at:?}", r.name);
        }
    }
    assert!(out.path().join("charts/task-loss.svg").exists());
    let sim = report.similarity.as_ref().expect("separate adapters give a similarity matrix");
    assert_eq!(sim.cosine.len(), 4);
    assert!(sim.cosine[0][1].abs() <= 1.0 && sim.sign_conflict[0][1] >= 0.0);
    assert!(!report.recommendation.best.is_empty() && report.recommendation.text.contains("best overall"));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    // Paired comparisons: every trained run but the best against the best, every trained
    // run against the base model, on the macro average and per task; the per-example
    // scores they come from are in the report.
    let trained = report.runs.iter().filter(|r| r.strategy != "base").count();
    let macros = report.comparisons.iter().filter(|c| c.task.is_none()).count();
    assert_eq!(macros, (trained - 1) + trained);
    assert_eq!(report.comparisons.len(), macros * (1 + 4));
    for r in &report.runs {
        for (sc, (_, _, _, n)) in r.scores.iter().zip(&report.tasks) {
            assert_eq!(sc.per_example.len(), *n, "{}: one score per held-out example", r.name);
            let mean = sc.per_example.iter().sum::<f64>() / *n as f64;
            assert!(
                (mean - sc.value.value).abs() < 1e-9,
                "{}: the headline is the mean of the per-example scores",
                r.name
            );
        }
    }
    for c in &report.comparisons {
        assert!(c.p_adjusted >= c.p_value && c.p_adjusted <= 1.0 && c.difference.lo <= c.difference.hi, "{c:?}");
    }
    assert!(report.power.as_ref().is_some_and(|p| p.text.contains("will look like ties")));
    assert!(
        report.recommendation.text.contains("Paired on the same held-out examples"),
        "{}",
        report.recommendation.text
    );
    for section in [
        "## Recommendation",
        "## Per-task scores",
        "## Paired comparisons",
        "## Cost",
        "## Forgetting",
        "## Task similarity",
        "## Loss per task inside mixed runs",
        "## What each run keeps of the base model",
    ] {
        assert!(md.contains(section), "report.md lacks {section}");
    }
    // report.json reads as the contract's report, the type the dashboard renders (the
    // engine's settings left as plain JSON).
    let json: multitune_api::report::Report =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json.runs.len(), report.runs.len());
    assert_eq!(json.recommendation, report.recommendation);
    assert_eq!(json.pairwise, report.pairwise);
    assert_eq!(json.config["budget_tokens"], report.config.budget_tokens);
}

/// The first stage of both sequential variants and the separate strategy's adapter for
/// that task are one training (same base, initial adapter, examples and settings): run
/// together, it is trained and scored once — its steps reach every run's loss curve as
/// the same events — and every run's scores and forgetting matrix are exactly those it
/// gets alone.
#[test]
fn runs_sharing_a_first_stage_train_it_once_and_score_as_alone() {
    use multitune::strategy::CompareEvent;
    use multitune::train::TrainEvent;
    let (model, tok) = tiny_model(2, &Device::Cpu).unwrap();
    let tasks = demo_tasks(6);
    let named = ["sequential", "sequential-merge", "separate"].map(|n| StrategyChoice::named(n).unwrap());
    let specs = strategy_specs(&named, 8);
    let specs: Vec<StrategySpec> = specs
        .into_iter()
        .map(|s| match s {
            StrategySpec::Separate { merge_rank, .. } => {
                StrategySpec::Separate { merges: vec![multitune::adapter::merge::MergeMethod::Linear], merge_rank }
            }
            other => other,
        })
        .collect();
    let first = tasks[0].name.clone();
    let run = |specs: Vec<StrategySpec>| {
        // 1,200 tokens per stage: two optimizer steps of four examples.
        let cfg = quick_compare(specs, 4_800, quick_train(5e-3));
        let out = tempfile::tempdir().unwrap();
        let mut steps: std::collections::BTreeMap<String, Vec<TrainEvent>> = Default::default();
        let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |e| {
            if let CompareEvent::Train { run, stage, event: event @ TrainEvent::Step(_) } = e {
                if *stage == first {
                    steps.entry(run.clone()).or_default().push(event.clone());
                }
            }
        })
        .unwrap();
        (report, steps)
    };
    let (together, steps) = run(specs.clone());
    let runs = ["sequential (continue)", "sequential (merge-then-new)", "separate (routed)"];
    let first_steps = &steps[runs[0]];
    assert!(first_steps.len() >= 2, "{steps:?}");
    for r in &runs[1..] {
        // The same events, timings included: replayed, not trained again.
        assert_eq!(&steps[*r], first_steps, "{r}: its first stage was trained again");
    }
    for spec in specs {
        let (alone, _) = run(vec![spec]);
        for a in alone.runs.iter().filter(|r| r.strategy != "base") {
            let t = together.runs.iter().find(|r| r.name == a.name).unwrap();
            assert_eq!(t.tokens, a.tokens, "{}", a.name);
            assert_eq!(t.losses, a.losses, "{}", a.name);
            for (ts, as_) in t.scores.iter().zip(&a.scores) {
                assert_eq!(ts.per_example, as_.per_example, "{} on {}", a.name, as_.task);
                assert_eq!(ts.loss.value, as_.loss.value, "{} on {}", a.name, as_.task);
            }
            assert_eq!(
                t.forgetting.as_ref().map(|f| &f.matrix),
                a.forgetting.as_ref().map(|f| &f.matrix),
                "{}",
                a.name
            );
        }
    }
}

/// Two tasks that give opposite answers to the same prompts (a: always "yes", b: always
/// "no"): training b with the same adapter overwrites a, and the forgetting matrix
/// shows it.
#[test]
fn sequential_continue_shows_forgetting_on_conflicting_tasks() {
    let (model, tok) = tiny_model(1, &Device::Cpu).unwrap();
    let prompts: Vec<String> = (0..8).map(|i| format!("item {i}")).collect();
    let make = |flip: bool| -> Vec<Record> {
        (0..4)
            .flat_map(|_| prompts.iter().map(move |p| Record::new(p.clone(), if flip { "no" } else { "yes" })))
            .collect()
    };
    let labels = vec!["no".to_string(), "yes".to_string()];
    let task = |name: &str, flip: bool| TaskData {
        name: name.into(),
        kind: TaskKind::Classification,
        labels: labels.clone(),
        train: make(flip),
        eval: make(flip)[..8].to_vec(),
    };
    let tasks = vec![task("a", false), task("b", true)];
    let cfg = quick_compare(
        vec![StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 }],
        2 * 10_000,
        quick_train(1e-2),
    );
    let out = tempfile::tempdir().unwrap();
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |_| {}).unwrap();
    let f = report.runs[1].forgetting.as_ref().unwrap();
    let (a_after_a, a_after_b) = (f.matrix[0][0], f.matrix[1][0]);
    assert!(a_after_a >= 0.9, "task a learned: {:?}", f.matrix);
    assert!(f.matrix[1][1] >= 0.9, "task b learned: {:?}", f.matrix);
    assert!(a_after_b <= 0.25, "task a forgotten after b: {:?}", f.matrix);
    assert!(f.backward_transfer < -0.6 && f.average_forgetting > 0.6, "{f:?}");
}

/// The multi-head strategy's classifier head learns a separable toy task (the colour word
/// decides the label) to full accuracy on held-out prompts, and the saved heads load back
/// to the same predictions.
#[test]
fn multi_head_classifier_learns_a_separable_task() {
    use multitune::strategy::heads::{self, MultiHead};
    let (model, tok) = tiny_model(2, &Device::Cpu).unwrap();
    let warm = ["red", "orange", "yellow"];
    let cold = ["blue", "green", "purple"];
    let make = |ids: std::ops::Range<usize>| -> Vec<Record> {
        ids.flat_map(|i| {
            warm.iter()
                .map(move |w| Record::new(format!("colour {w} #{i}"), "warm"))
                .chain(cold.iter().map(move |w| Record::new(format!("colour {w} #{i}"), "cold")))
        })
        .collect()
    };
    let labels = vec!["cold".to_string(), "warm".to_string()];
    let tasks = vec![TaskData {
        name: "colours".into(),
        kind: TaskKind::Classification,
        labels: labels.clone(),
        train: make(0..8),
        eval: make(8..11),
    }];
    let cfg = quick_compare(
        vec![StrategySpec::MultiHead { mixing: multitune::strategy::Mixing::Proportional, head_rank: 4 }],
        30_000,
        TrainConfig { batch_size: 8, ..quick_train(2e-3) },
    );
    let out = tempfile::tempdir().unwrap();
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |_| {}).unwrap();
    let base = report.runs[0].scores[0].value.value;
    let tuned = &report.runs[1];
    assert_eq!(tuned.name, "multi-head");
    assert_eq!(tuned.scores[0].metric, "accuracy");
    assert_eq!(tuned.scores[0].value.value, 1.0, "held-out accuracy (base {base}): {:?}", tuned.scores);
    // Load the exported adapter and heads back: same predictions.
    let dir = std::path::Path::new(&tuned.adapter_dirs[0]);
    let adapter = multitune::adapter::peft::load_adapter(dir, &model.cfg, &Device::Cpu).unwrap();
    let loaded = MultiHead { adapter, heads: MultiHead::load_heads(dir, &model).unwrap(), routes: vec![] };
    let e = heads::evaluate_task(&loaded, &model, &tok, 0, &tasks[0].eval, &cfg.eval).unwrap();
    assert_eq!(e.headline().1.value, 1.0);
    // The engine's inference (what `generate --task` and the playground call) answers a
    // held-out prompt through the head: label probabilities, the right one first.
    let run = MultiHead::load(dir, &model).unwrap();
    for r in &tasks[0].eval[..6] {
        let Some(heads::Answer::Labels(probs)) = run.answer(&model, &tok, "colours", None, &r.prompt).unwrap() else {
            panic!("a classifier head answers with labels")
        };
        assert_eq!(probs[0].0, r.completion, "{:?} → {probs:?}", r.prompt);
        assert!((probs.iter().map(|p| p.1).sum::<f64>() - 1.0).abs() < 1e-4, "{probs:?}");
        assert!(probs.windows(2).all(|w| w[0].1 >= w[1].1), "most likely first: {probs:?}");
    }
    assert!(run.answer(&model, &tok, "no such task", None, "x").unwrap().is_none());
}

/// Repeating over seeds: every row averages the seeds, keeps each seed's value, and the
/// report shows the spread.
#[test]
fn repetition_over_seeds_reports_mean_and_spread() {
    let (model, tok) = tiny_model(3, &Device::Cpu).unwrap();
    let tasks: Vec<TaskData> = demo_tasks(6).into_iter().take(2).collect();
    let cfg = CompareConfig {
        seeds: vec![1, 2, 3],
        ..quick_compare(
            vec![StrategySpec::Combined { mixing: multitune::strategy::Mixing::Uniform, task_tag: false }],
            3_000,
            quick_train(5e-3),
        )
    };
    let out = tempfile::tempdir().unwrap();
    let mut started = Vec::new();
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |e| {
        if let multitune::strategy::CompareEvent::RunStarted { run, index, of } = e {
            started.push((run.clone(), *index, *of));
        }
    })
    .unwrap();
    assert_eq!(started.len(), 3);
    assert_eq!(started[2], ("combined (uniform) [seed 3]".to_string(), 2, 3));
    assert_eq!(report.runs.len(), 2, "base + one averaged row");
    let r = &report.runs[1];
    assert_eq!(r.name, "combined (uniform)");
    assert_eq!(r.seeds, vec![1, 2, 3]);
    for sc in &r.scores {
        assert_eq!(sc.seed_values.len(), 3);
        let mean = sc.seed_values.iter().sum::<f64>() / 3.0;
        assert!((sc.value.value - mean).abs() < 1e-12);
    }
    assert!(r.seed_spread().is_some());
    assert!(out.path().join("seeds/seed-2/adapters").exists() && out.path().join("adapters").exists());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("Mean over 3 training seeds (1, 2, 3)"), "{md}");
}

/// Cancelled in the middle of the second strategy's training, then started again with the
/// same state folder, a comparison skips the finished run, resumes training from its
/// checkpoint, and ends with exactly the scores of an uninterrupted comparison.
#[test]
fn cancelled_comparison_resumes_to_the_same_result() {
    use multitune::strategy::{CompareEvent, Control};
    use multitune::train::TrainEvent;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (model, tok) = tiny_model(4, &Device::Cpu).unwrap();
    let tasks: Vec<TaskData> = demo_tasks(4).into_iter().take(2).collect();
    let cfg = quick_compare(
        vec![
            StrategySpec::Combined { mixing: multitune::strategy::Mixing::Proportional, task_tag: false },
            StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 },
        ],
        4_000,
        TrainConfig { checkpoint_every: 2, ..quick_train(5e-3) },
    );
    let whole = tempfile::tempdir().unwrap();
    let want = run_tiny(&model, &tok, &tasks, &cfg, whole.path(), &mut |_| {}).unwrap();

    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let cancel = AtomicBool::new(false);
    let control = Control { cancel: Some(&cancel), state_dir: Some(&state) };
    let mut steps_in_second = 0;
    let err = run_tiny_with(&model, &tok, &tasks, &cfg, out.path(), control, &mut |e| {
        if let CompareEvent::Train { run, event: TrainEvent::Step(_), .. } = e {
            if run.starts_with("sequential") {
                steps_in_second += 1;
                if steps_in_second == 5 {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, multitune::Error::Cancelled), "{err}");
    assert!(!out.path().join("report.json").exists(), "no report from a cancelled comparison");
    cancel.store(false, Ordering::Relaxed);
    let (mut starts, mut runs) = (Vec::new(), Vec::new());
    let got = run_tiny_with(&model, &tok, &tasks, &cfg, out.path(), control, &mut |e| match e {
        CompareEvent::Train { event: TrainEvent::Started { start_step, .. }, .. } => starts.push(*start_step),
        CompareEvent::RunStarted { run, .. } => runs.push(format!("started {run}")),
        CompareEvent::RunRestored { run, index, of, .. } => runs.push(format!("restored {run} {index}/{of}")),
        CompareEvent::RunFinished { run, .. } => runs.push(format!("finished {run}")),
        _ => {}
    })
    .unwrap();
    // The finished run is restored from its record, announced neither started nor finished.
    assert_eq!(
        runs,
        ["restored combined (proportional) 0/2", "started sequential (continue)", "finished sequential (continue)"]
    );
    // The combined run is not trained again; both sequential stages continue from their
    // last checkpoints (the first from its final step, the second from step 2 of 3+).
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(starts.iter().all(|&s| s > 0), "training resumed from checkpoints: {starts:?}");
    for (a, b) in want.runs.iter().zip(&got.runs) {
        assert_eq!(a.name, b.name);
        assert_eq!((a.tokens, &a.task_tokens, &a.losses), (b.tokens, &b.task_tokens, &b.losses), "{}", a.name);
        assert_eq!(a.task_losses, b.task_losses, "{}", a.name);
        let (sa, sb): (Vec<f64>, Vec<f64>) =
            (a.scores.iter().map(|s| s.value.value).collect(), b.scores.iter().map(|s| s.value.value).collect());
        assert_eq!(sa, sb, "{}", a.name);
    }
}

/// `--tune-lr`: each strategy searches its rate on a validation split of the training
/// data (once, for the first seed), trains at the rate it chose, and the report shows
/// the search apart; a separate run's merges share its search; no scratch folder stays.
#[test]
fn the_learning_rate_search_picks_a_rate_per_strategy() {
    use multitune::strategy::CompareEvent;
    use multitune::train::TrainEvent;
    let (model, tok) = tiny_model(5, &Device::Cpu).unwrap();
    let tasks: Vec<TaskData> = demo_tasks(4).into_iter().take(2).collect();
    let grid = vec![1e-3, 1e-2];
    let cfg = CompareConfig {
        seeds: vec![1, 2],
        lr_search: Some(grid.clone()),
        // The search at the full data is every size's: a smaller size searches nothing.
        data_fractions: vec![0.5],
        ..quick_compare(
            vec![
                StrategySpec::Combined { mixing: multitune::strategy::Mixing::Proportional, task_tag: false },
                StrategySpec::Separate { merges: vec![multitune::adapter::MergeMethod::Linear], merge_rank: 8 },
                StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 },
            ],
            3_000,
            quick_train(5e-3),
        )
    };
    let out = tempfile::tempdir().unwrap();
    let mut search_stages = Vec::new();
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |e| {
        if let CompareEvent::Train { stage, event: TrainEvent::Started { .. }, .. } = e {
            if stage.starts_with("lr search") {
                search_stages.push(stage.clone());
            }
        }
    })
    .unwrap();
    // Two rates for combined (one stage), separate and sequential (a stage per task),
    // first seed only.
    assert_eq!(search_stages.len(), 2 + 2 * 2 + 2 * 2, "{search_stages:?}");
    assert!(search_stages.contains(&"lr search 1e-2 · all".to_string()), "{search_stages:?}");
    let trained: Vec<_> = report.runs.iter().filter(|r| r.strategy != "base").collect();
    assert_eq!(trained.len(), 4);
    let seq = trained.iter().find(|r| r.strategy == "sequential").unwrap();
    assert!(seq.forgetting.is_some(), "the real run scores every stage (its trials do not)");
    for r in &trained {
        let s = r.lr_search.as_ref().unwrap_or_else(|| panic!("{} has no search", r.name));
        assert!(grid.contains(&s.chosen) && r.learning_rate == s.chosen, "{}", r.name);
        assert_eq!(s.validation, vec![50, 50], "a fifth of 300 training examples, at most 50");
        assert_eq!(s.trials.len(), 2);
        for t in &s.trials {
            assert_eq!(t.budget_tokens, 375, "an eighth of the budget");
            assert!(t.tokens > 0 && t.tokens <= 380 && (0.0..=1.0).contains(&t.score) && t.loss > 0.0, "{t:?}");
        }
    }
    assert_eq!(trained[1].lr_search, trained[2].lr_search, "the merge shares the separate run's search");
    assert!(report.runs.iter().all(|r| r.retention.is_none()), "retention is measured only when asked");
    let half = &report.data_sizes.as_ref().unwrap().sizes[0];
    assert_eq!(half.runs.len(), trained.len());
    for (a, b) in half.runs.iter().zip(&trained) {
        assert_eq!((&a.name, &a.lr_search, a.learning_rate), (&b.name, &b.lr_search, b.learning_rate));
    }
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".search"))
        .collect();
    assert!(left.is_empty(), "scratch folders left: {left:?}");
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Learning-rate search") && md.contains("| run | learning rate |"), "{md}");
    let section = md.split("## Learning-rate search").nth(1).unwrap().split("\n## ").next().unwrap();
    let rows: Vec<&str> = section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| run |")).collect();
    assert_eq!(rows.len(), 3, "one row per search (the merge shares separate's): {rows:?}");
}

/// `--data-fractions`: every strategy trains again on nested shares of each task's
/// training set with the budget scaled to match, scored on the same held-out examples;
/// the base model is scored once; the report has the curves and says where the winner
/// changes; an interrupted comparison resumes inside a smaller size.
#[test]
fn data_size_curves_train_every_strategy_at_every_size() {
    use multitune::strategy::{CompareEvent, Control};
    use multitune::train::TrainEvent;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (model, tok) = tiny_model(6, &Device::Cpu).unwrap();
    let mut tasks: Vec<TaskData> = demo_tasks(6).into_iter().take(2).collect();
    tasks[1].train.truncate(120);
    let budget = 4_000;
    let cfg = CompareConfig {
        data_fractions: vec![0.25, 0.5, 1.0],
        retention: true,
        ..quick_compare(
            vec![
                StrategySpec::Combined { mixing: multitune::strategy::Mixing::Proportional, task_tag: false },
                StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 },
            ],
            budget,
            TrainConfig { checkpoint_every: 2, ..quick_train(5e-3) },
        )
    };
    let base = Base { model: &model, tokenizer: &tok, name: "tiny" };
    let whole = tempfile::tempdir().unwrap();
    let (mut started, mut base_scored) = (Vec::new(), 0);
    let want = run_tiny(&model, &tok, &tasks, &cfg, whole.path(), &mut |e| match e {
        CompareEvent::RunStarted { run, index, of } => started.push(format!("{index}/{of} {run}")),
        CompareEvent::Evaluated { run, .. } if run == "base" => base_scored += 1,
        _ => {}
    })
    .unwrap();
    // The full data first (the comparison itself), then the smaller sizes, largest first.
    assert_eq!(
        started,
        [
            "0/6 combined (proportional)",
            "1/6 sequential (continue)",
            "2/6 combined (proportional) [50% data]",
            "3/6 sequential (continue) [50% data]",
            "4/6 combined (proportional) [25% data]",
            "5/6 sequential (continue) [25% data]",
        ]
    );
    assert_eq!(base_scored, tasks.len(), "the base model is scored once, for every size");
    let curves = want.data_sizes.as_ref().expect("data-size curves");
    let fractions: Vec<f64> = curves.sizes.iter().map(|s| s.fraction).collect();
    assert_eq!(fractions, [0.25, 0.5, 1.0]);
    let longest = longest_example(&tok, &tasks, cfg.train.max_seq_len);
    let full: Vec<_> = want.runs.iter().filter(|r| !r.is_base()).collect();
    for (k, size) in curves.sizes.iter().enumerate() {
        let want_examples: Vec<usize> =
            [300, 120].iter().map(|&n| (n as f64 * size.fraction).round() as usize).collect();
        assert_eq!(size.examples, want_examples, "{}", size.fraction);
        let runs = want.runs_at(k);
        assert_eq!(runs.len(), full.len());
        let scaled = (budget as f64 * size.fraction).round() as usize;
        for (r, f) in runs.iter().zip(&full) {
            assert_eq!(r.name, f.name, "the same run names at every size");
            let trainings = if r.strategy == "combined" { 1 } else { tasks.len() };
            assert!(
                r.tokens <= scaled && scaled - r.tokens < trainings * (longest + 1),
                "{} at {}: {} tokens for a budget of {scaled}",
                r.name,
                size.fraction,
                r.tokens
            );
            for (a, b) in r.scores.iter().zip(&f.scores) {
                assert_eq!(a.per_example.len(), b.per_example.len(), "the same held-out examples");
            }
            if size.fraction < 1.0 {
                assert!(r.forgetting.is_none(), "a smaller size scores its runs' final models only");
                assert!(r.retention.is_none(), "and does not measure retention");
                assert!(r.adapter_dirs.iter().all(|d| d.contains("/sizes/")), "{:?}", r.adapter_dirs);
            }
        }
        let best = runs.iter().map(|r| r.macro_average().value).fold(f64::NEG_INFINITY, f64::max);
        let leader = runs.iter().find(|r| r.name == size.leader).expect("the leader is one of the size's runs");
        assert_eq!(leader.macro_average().value, best, "the leader has the best macro average");
        let lead = size.lead.as_ref().expect("a paired lead");
        assert_eq!(lead.run, size.leader);
        assert!(lead.difference.value >= 0.0);
    }
    assert!(!curves.text.is_empty());
    let md = std::fs::read_to_string(whole.path().join("report.md")).unwrap();
    assert!(md.contains("## Data-size curves") && md.contains(&curves.text), "{md}");
    let curves_svg = std::fs::read_to_string(whole.path().join("charts/curves.svg")).unwrap();
    assert!(curves_svg.contains(" examples per task</title>"), "every point's value on hover");

    // Interrupted inside the 50% size: resumed, every finished run (of every size) comes
    // from its record, and the curves are the uninterrupted ones.
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let cancel = AtomicBool::new(false);
    let control = Control { cancel: Some(&cancel), state_dir: Some(&state) };
    let mut steps = 0;
    let err = compare(&base, &tasks, &[], &cfg, out.path(), control, &mut |e| {
        if let CompareEvent::Train { run, event: TrainEvent::Step(_), .. } = e {
            if run == "sequential (continue) [50% data]" {
                steps += 1;
                if steps == 3 {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    })
    .unwrap_err();
    assert!(matches!(err, multitune::Error::Cancelled), "{err}");
    cancel.store(false, Ordering::Relaxed);
    let mut runs = Vec::new();
    let got = compare(&base, &tasks, &[], &cfg, out.path(), control, &mut |e| match e {
        CompareEvent::RunStarted { run, .. } => runs.push(format!("started {run}")),
        CompareEvent::RunRestored { run, index, of, .. } => runs.push(format!("restored {index}/{of} {run}")),
        _ => {}
    })
    .unwrap();
    assert_eq!(
        runs,
        [
            "restored 0/6 combined (proportional)",
            "restored 1/6 sequential (continue)",
            "restored 2/6 combined (proportional) [50% data]",
            "started sequential (continue) [50% data]",
            "started combined (proportional) [25% data]",
            "started sequential (continue) [25% data]",
        ]
    );
    let (a, b) = (want.data_sizes.unwrap(), got.data_sizes.unwrap());
    assert_eq!(a.text, b.text);
    for (x, y) in a.sizes.iter().zip(&b.sizes) {
        assert_eq!(x.leader, y.leader);
        for (p, q) in x.runs.iter().zip(&y.runs) {
            assert_eq!((&p.name, p.tokens, &p.losses), (&q.name, q.tokens, &q.losses));
            let (sp, sq): (Vec<f64>, Vec<f64>) =
                (p.scores.iter().map(|s| s.value.value).collect(), q.scores.iter().map(|s| s.value.value).collect());
            assert_eq!(sp, sq, "{}", p.name);
        }
    }
}

/// Keep sets (datasets that must not get worse): every run's final model and the base
/// model are scored on all their examples — a run's score is its exported model's,
/// a routed run's the mean over its per-task adapters — and they are never trained on;
/// the report compares every run with the base model on them. One named like a task is
/// refused before anything runs.
#[test]
fn keep_sets_are_scored_for_every_run_and_never_trained_on() {
    use multitune::adapter::peft;
    use multitune::eval::{self, TaskEval};
    use multitune::strategy::{CompareEvent, KEEP_STAGE};
    let (model, tok) = tiny_model(3, &Device::Cpu).unwrap();
    let demo = demo_tasks(16);
    let tasks = vec![demo[0].clone(), demo[2].clone()];
    // Keep sets: the topic task (classification) and the dates task (generation), whole.
    let keep_set = |t: &TaskData, n: usize| TaskData { train: vec![], eval: t.eval[..n].to_vec(), ..t.clone() };
    let keep = vec![keep_set(&demo[1], 16), keep_set(&demo[3], 6)];
    let cfg = quick_compare(
        vec![
            StrategySpec::Combined { mixing: multitune::strategy::Mixing::Proportional, task_tag: false },
            StrategySpec::Sequential { variant: SequentialVariant::MergeThenNew, order: vec![], replay: 0.0 },
            StrategySpec::Separate { merges: vec![multitune::adapter::merge::MergeMethod::Linear], merge_rank: 8 },
            StrategySpec::MultiHead { mixing: multitune::strategy::Mixing::Proportional, head_rank: 4 },
        ],
        2_400,
        quick_train(5e-3),
    );
    let base = Base { model: &model, tokenizer: &tok, name: "tiny" };
    let out = tempfile::tempdir().unwrap();
    let (mut stages, mut keep_events) = (std::collections::BTreeSet::new(), Vec::new());
    let report = compare(&base, &tasks, &keep, &cfg, out.path(), Default::default(), &mut |e| match e {
        CompareEvent::Train { stage, .. } => {
            stages.insert(stage.clone());
        }
        CompareEvent::Evaluated { run, stage, task, .. } if stage == KEEP_STAGE => {
            keep_events.push(format!("{run}: {task}"))
        }
        _ => {}
    })
    .unwrap();
    // Trained on the tasks only: no stage is a keep set, no run spent a token on one.
    let trained_on: Vec<&str> = stages.iter().map(String::as_str).collect();
    assert_eq!(trained_on, ["all", "arithmetic", "sentiment"]);
    let direct =
        |adapter: Option<&multitune::model::lora::LoraAdapter>, m: &multitune::model::Llama| -> Vec<TaskEval> {
            keep.iter()
                .map(|t| eval::evaluate_task(m, &tok, adapter, &t.spec(), &t.eval, &cfg.eval, &mut |_, _| {}).unwrap())
                .collect()
        };
    let values = |es: &[TaskEval]| es.iter().map(|e| e.headline().1.value).collect::<Vec<_>>();
    let load = |dir: &str| peft::load_adapter(std::path::Path::new(dir), &model.cfg, &Device::Cpu).unwrap();
    for r in &report.runs {
        assert_eq!(r.keep.len(), 2, "{}", r.name);
        assert_eq!(r.task_tokens.len(), tasks.len(), "{}", r.name);
        for (sc, t) in r.keep.iter().zip(&keep) {
            assert_eq!(sc.task, t.name);
            assert_eq!(sc.per_example.len(), t.eval.len(), "{}: every keep-set example scored", r.name);
        }
        let got: Vec<f64> = r.keep.iter().map(|s| s.value.value).collect();
        let want: Vec<f64> = match r.strategy.as_str() {
            "base" => values(&direct(None, &model)),
            // Routed: the mean over its per-task adapters.
            "separate" => {
                let each: Vec<Vec<f64>> =
                    r.adapter_dirs.iter().map(|d| values(&direct(Some(&load(d)), &model))).collect();
                (0..keep.len()).map(|k| each.iter().map(|v| v[k]).sum::<f64>() / each.len() as f64).collect()
            }
            // Its shared adapter, with the base model's head.
            _ => values(&direct(Some(&load(&r.adapter_dirs[0])), &model)),
        };
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-9, "{}: keep scores {got:?}, its exported model scores {want:?}", r.name);
        }
    }
    // One keep-set event per keep set and run, the base model's included.
    assert_eq!(keep_events.len(), 2 * report.runs.len(), "{keep_events:?}");
    let k = report.keep.as_ref().expect("the report's keep sets");
    assert_eq!(k.sets, vec![("topic".into(), "classification".into(), 16), ("dates".into(), "generation".into(), 6)]);
    let trained = report.runs.iter().filter(|r| !r.is_base()).count();
    assert_eq!(k.comparisons.len(), 2 * trained, "every trained run against the base model on each keep set");
    assert!(k.comparisons.iter().all(|c| c.against == "base model" && c.p_adjusted >= c.p_value));
    assert!(!k.text.is_empty());
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Keep sets (must not get worse)") && md.contains(&k.text), "{md}");
    // The charts carry their values for hovering (a `<title>` per point).
    let svg = |name: &str| std::fs::read_to_string(out.path().join("charts").join(name)).unwrap();
    assert!(svg("scores.svg").contains("<title>base model · sentiment: "), "per-bar values on hover");
    let keep_svg = svg("keep.svg");
    assert!(keep_svg.contains("<title>combined (proportional): ") && keep_svg.contains(" points ["), "{keep_svg}");
    let json: multitune_api::report::Report =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json.keep.as_ref(), Some(k));

    // A keep set named like a task is refused at once, naming it.
    let clash = vec![TaskData { name: "sentiment".into(), ..keep[0].clone() }];
    let err =
        compare(&base, &tasks, &clash, &cfg, tempfile::tempdir().unwrap().path(), Default::default(), &mut |_| {})
            .unwrap_err();
    assert!(err.to_string().contains("keep set `sentiment`"), "{err}");
}

/// `mixing: search` and `tune_merges`: the combined run picks its mixing by successive
/// halving on the validation split (its trials' steps apart from the run's, their cost in
/// the run's), and every tunable merge gets a tuned row of its own beside its defaults,
/// chosen by the best validation score, compared with its defaults on the held-out
/// examples; concatenation has nothing to tune.
#[test]
fn mixing_search_and_tuned_merges() {
    use multitune::adapter::MergeMethod;
    use multitune::strategy::{CompareEvent, Mixing};
    use multitune::train::TrainEvent;
    let (model, tok) = tiny_model(5, &Device::Cpu).unwrap();
    let mut tasks: Vec<TaskData> = demo_tasks(6).into_iter().take(2).collect();
    // Tasks of unequal size: the three mixings sample differently.
    tasks[1].train.truncate(150);
    let ties = MergeMethod::Ties { density: 0.2, lambda: 1.0 };
    let cfg = CompareConfig {
        tune_merges: true,
        methods: vec![],
        ..quick_compare(
            vec![
                StrategySpec::Combined { mixing: Mixing::Search, task_tag: false },
                StrategySpec::Separate { merges: vec![MergeMethod::Linear, ties, MergeMethod::Concat], merge_rank: 8 },
            ],
            2_000,
            quick_train(5e-3),
        )
    };
    let out = tempfile::tempdir().unwrap();
    let mut stages = Vec::new();
    let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |e| {
        if let CompareEvent::Train { stage, event: TrainEvent::Started { .. }, .. } = e {
            stages.push(stage.clone());
        }
    })
    .unwrap();
    let trials: Vec<&String> = stages.iter().filter(|s| s.starts_with("mixing search ")).collect();
    assert_eq!(trials.len(), 3 + 2, "three mixings, then the better two: {stages:?}");
    assert!(trials.contains(&&"mixing search temperature:2 · all".to_string()), "{trials:?}");
    let combined = report.runs.iter().find(|r| r.strategy == "combined").unwrap();
    assert_eq!(combined.name, "combined (mixing searched)");
    let m = combined.mixing_search.as_ref().expect("the mixing search is recorded");
    assert_eq!(m.candidates, multitune_api::MixingChoice::SEARCHED.to_vec());
    assert!(m.candidates.contains(&m.chosen));
    assert_eq!((m.trials.len(), m.validation.clone()), (5, vec![50, 30]));
    assert!(m.trials[3..].iter().any(|t| t.mixing == m.chosen), "the winner is one of the last rung's");
    assert!(combined.wall_s > m.wall_s(), "the search is in the run's cost");

    // Tuned merges: linear and TIES, not concatenation.
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    assert!(names.contains(&"separate + merge (linear, tuned)") && names.contains(&"separate + merge (ties, tuned)"));
    assert!(!names.iter().any(|n| n.contains("concat, tuned")), "{names:?}");
    for (method, count, defaults) in [("linear", 4, "weights 0.5/0.5"), ("ties", 6, "density 0.2, λ 1")] {
        let r = report.runs.iter().find(|r| r.name == format!("separate + merge ({method}, tuned)")).unwrap();
        let t = r.merge_tuning.as_ref().unwrap();
        assert_eq!((t.method.as_str(), t.candidates.len(), t.default_params.as_str()), (method, count, defaults));
        assert_eq!((t.candidates[0].params.as_str(), t.validation.clone()), (defaults, vec![16, 16]));
        // Successive halving: every candidate on a quarter of the split (4 + 4 examples),
        // the better half on the next quarter, the better half of those (and the
        // defaults, at every cut) on the whole split; the best of those chosen.
        let scored_on = |n: usize| t.candidates.iter().filter(|c| c.examples == n).count();
        assert!(t.candidates.iter().all(|c| [8, 16, 32].contains(&c.examples)), "{method}: {:?}", t.candidates);
        let half = count.div_ceil(2);
        assert!(
            scored_on(8) >= count - half - 1 && scored_on(32) <= (half + 1).div_ceil(2) + 1,
            "{method}: {:?}",
            t.candidates
        );
        assert_eq!(t.candidates[0].examples, 32, "{method}: the defaults always go on");
        let whole: Vec<_> = t.candidates.iter().filter(|c| c.examples == 32).collect();
        let best = whole.iter().map(|c| c.score).fold(f64::NEG_INFINITY, f64::max);
        let chosen = t.candidates.iter().find(|c| c.params == t.chosen_params).unwrap();
        assert_eq!(chosen.examples, 32, "{method}");
        assert_eq!(chosen.score, best, "{method}: the best validation score is chosen");
        let default_row = report.runs.iter().find(|d| d.name == t.default_run).unwrap();
        let vs = t.vs_default.as_ref().expect("compared with its defaults");
        assert_eq!((vs.run.as_str(), vs.against.as_str()), (r.name.as_str(), t.default_run.as_str()));
        if t.chosen_params == t.default_params {
            assert_eq!(r.scores, default_row.scores, "{method}: the defaults won, the same merge");
        }
        assert!(r.wall_s > default_row.wall_s, "{method}: the search is in its cost");
        assert!(std::path::Path::new(&r.adapter_dirs[0]).join("adapter_config.json").exists());
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Mixing search") && md.contains("## Merges tuned on validation"), "{md}");
    // Tasks of equal size: every mixing samples alike, nothing to search.
    let equal: Vec<TaskData> = demo_tasks(6).into_iter().take(2).collect();
    let cfg = quick_compare(
        vec![StrategySpec::Combined { mixing: Mixing::Search, task_tag: false }],
        1_000,
        quick_train(5e-3),
    );
    let out2 = tempfile::tempdir().unwrap();
    let report = run_tiny(&model, &tok, &equal, &cfg, out2.path(), &mut |_| {}).unwrap();
    let m = report.runs[1].mixing_search.as_ref().unwrap();
    assert_eq!((m.candidates.len(), m.trials.len()), (1, 0));
    assert_eq!(m.chosen, multitune_api::MixingChoice::Proportional);
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".search"))
        .collect();
    assert!(left.is_empty(), "scratch folders left: {left:?}");
}

/// Every strategy trains with DoRA (separate routed only, sequential continue: the
/// strategies DoRA allows) and with PiSSA (all of them, merges and merge-then-new
/// included); the exported adapters load back, and what they say about themselves
/// matches the method (DoRA's magnitudes; PiSSA as the rank-2r LoRA it converts to).
#[test]
fn strategies_train_with_dora_and_pissa() {
    use multitune::adapter::MergeMethod;
    use multitune::strategy::Mixing;
    use multitune_api::AdapterMethod;
    let (model, tok) = tiny_model(5, &Device::Cpu).unwrap();
    let tasks: Vec<TaskData> = demo_tasks(4).into_iter().take(2).collect();
    let mut lora = quick_train(5e-3);
    lora.lora_plus = Some(4.0);
    for method in [AdapterMethod::Dora, AdapterMethod::Pissa] {
        let merges =
            if method == AdapterMethod::Dora { vec![] } else { vec![MergeMethod::Linear, MergeMethod::Concat] };
        let mut strategies = vec![
            StrategySpec::Combined { mixing: Mixing::Proportional, task_tag: false },
            StrategySpec::Sequential { variant: SequentialVariant::Continue, order: vec![], replay: 0.0 },
            StrategySpec::Separate { merges, merge_rank: 8 },
            StrategySpec::MultiHead { mixing: Mixing::Proportional, head_rank: 4 },
        ];
        if method == AdapterMethod::Pissa {
            strategies.push(StrategySpec::Sequential {
                variant: SequentialVariant::MergeThenNew,
                order: vec![],
                replay: 0.0,
            });
        }
        let train = TrainConfig { lora: lora.lora.clone().with_method(method), ..lora.clone() };
        let cfg = quick_compare(strategies, 1_200, train);
        let out = tempfile::tempdir().unwrap();
        let report = run_tiny(&model, &tok, &tasks, &cfg, out.path(), &mut |_| {}).unwrap();
        for r in report.runs.iter().filter(|r| !r.is_base()) {
            assert!(r.scores.iter().all(|s| s.value.value.is_finite()), "{method:?} {}", r.name);
            for d in &r.adapter_dirs {
                let back = multitune::adapter::peft::load_adapter(std::path::Path::new(d), &model.cfg, &Device::Cpu)
                    .unwrap_or_else(|e| panic!("{method:?} {}: {e}", r.name));
                assert_eq!(back.config.use_dora, method == AdapterMethod::Dora, "{}", r.name);
                assert!(!back.config.pissa);
            }
        }
        assert_eq!(report.similarity.is_some(), method == AdapterMethod::Pissa, "DoRA changes are not compared");
    }
}

/// A comparison of adapter methods: every strategy once per method under one budget,
/// each run named and recorded with its method; DoRA runs the separate strategy without
/// merges and skips merge-then-new; the report compares each row's methods paired and
/// says which to use where; each (strategy, method) is its own part and record, and a
/// comparison started again restores every run.
#[test]
fn methods_are_compared_per_strategy() {
    use multitune::adapter::MergeMethod;
    use multitune::strategy::{part_records, CompareEvent, Control, Mixing, Part};
    use multitune_api::AdapterMethod::{Dora, Lora};
    let (model, tok) = tiny_model(6, &Device::Cpu).unwrap();
    let tasks: Vec<TaskData> = demo_tasks(6).into_iter().take(2).collect();
    let cfg = CompareConfig {
        methods: vec![Lora, Dora],
        tune_merges: true,
        ..quick_compare(
            vec![
                StrategySpec::Combined { mixing: Mixing::Proportional, task_tag: false },
                StrategySpec::Separate { merges: vec![MergeMethod::Linear], merge_rank: 8 },
                StrategySpec::Sequential { variant: SequentialVariant::MergeThenNew, order: vec![], replay: 0.0 },
            ],
            1_000,
            quick_train(5e-3),
        )
    };
    assert_eq!(Part::all(&cfg).len(), 1 + 5, "the base model, then 3 strategies × 2 methods less merge-then-new DoRA");
    assert_eq!(part_records(&cfg, Part::Strategy(3)), ["done-s0-r3.json"]);
    let out = tempfile::tempdir().unwrap();
    let state = out.path().join("state");
    let control = Control { cancel: None, state_dir: Some(&state) };
    let report = run_tiny_with(&model, &tok, &tasks, &cfg, out.path(), control, &mut |_| {}).unwrap();
    let names: Vec<&str> = report.runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "base model",
            "combined (proportional) [lora]",
            "combined (proportional) [dora]",
            "separate (routed) [lora]",
            "separate + merge (linear) [lora]",
            "separate + merge (linear, tuned) [lora]",
            "separate (routed) [dora]",
            "sequential (merge-then-new) [lora]",
        ]
    );
    for r in report.runs.iter().skip(1) {
        assert_eq!(r.plain_name().len() + r.method.unwrap().tag().len(), r.name.len(), "{}", r.name);
        assert!(r.tokens <= 1_010, "{}: every method under the same budget: {}", r.name, r.tokens);
        let config = std::fs::read_to_string(std::path::Path::new(&r.adapter_dirs[0]).join("adapter_config.json"))
            .unwrap_or_default();
        if r.method == Some(Dora) {
            assert!(config.contains("\"use_dora\": true"), "{}: exported as DoRA: {config}", r.name);
        }
    }
    // Each method's per-task adapters in a folder of their own.
    let routed = |i: usize| report.runs[i].adapter_dirs.clone();
    assert!(routed(3)[0].ends_with("adapters/lora/separate-sentiment"), "{:?}", routed(3));
    assert!(routed(6)[0].ends_with("adapters/dora/separate-sentiment"), "{:?}", routed(6));
    // The tuned merge is compared with its defaults, the same method's.
    let tuning = report.runs[5].merge_tuning.as_ref().unwrap();
    assert_eq!(tuning.default_run, "separate + merge (linear) [lora]");
    assert_eq!(tuning.vs_default.as_ref().unwrap().against, tuning.default_run);
    let (lora, dora) = (&report.runs[1], &report.runs[2]);
    assert_ne!(lora.scores[0].loss.value, dora.scores[0].loss.value, "the two methods trained differently");
    let m = report.methods.as_ref().expect("a comparison of methods is reported");
    assert_eq!(m.methods, [Lora, Dora]);
    let rows: Vec<&str> = m.rows.iter().map(|r| r.run.as_str()).collect();
    assert_eq!(rows, ["combined (proportional)", "separate (routed)"], "rows that ran with one method are left out");
    let c = m.against_first("combined (proportional) [dora]").expect("paired against LoRA");
    assert_eq!(c.against, "combined (proportional) [lora]");
    assert_eq!(m.comparisons.iter().filter(|c| c.task.is_none()).count(), 2);
    assert_eq!(m.comparisons.len(), 2 + 2 * tasks.len(), "the macro averages, then each task");
    assert!(m.text.starts_with("Use "), "{}", m.text);
    assert!(report.recommendation.text.ends_with(&format!("Adapter methods: {}", m.text)));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("## Adapter methods") && md.contains("| combined (proportional) |"), "{md}");
    assert!(out.path().join("charts/methods.svg").exists());

    // Started again: every (strategy, method) run is restored from its own record.
    let mut restored = Vec::new();
    let again = run_tiny_with(&model, &tok, &tasks, &cfg, out.path(), control, &mut |e| match e {
        CompareEvent::RunRestored { run, .. } => restored.push(run.clone()),
        CompareEvent::RunStarted { run, .. } => panic!("{run} trained again"),
        _ => {}
    })
    .unwrap();
    assert_eq!(restored.len(), 5);
    assert_eq!(again.methods, report.methods);
}
