//! `multitune compare`: train every chosen strategy on several tasks under one token
//! budget and write the report. The flags become the contract's request (strategy
//! choices and hyper-parameters, with `multitune_api::defaults` as their defaults) and go
//! through [`multitune::strategy::request`], as the server's experiments do.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use indicatif::ProgressBar;

use super::{args, bar, load, task_name, Cli};
use multitune_api::{defaults, Hyper, MergeChoice, MixingChoice, StrategyChoice, STRATEGY_NAMES};

use multitune::data::{Limits, LoadOptions};
use multitune::strategy::{self, Base, CompareConfig, CompareEvent, Control, HeldOut, TaskData};
use multitune::train::TrainEvent;

/// `multitune compare`: every chosen strategy under one budget, and the report.
#[derive(Args)]
pub struct CompareArgs {
    /// The base model.
    #[command(flatten)]
    pub model: args::ModelArg,
    /// One training file per task.
    #[arg(long, num_args = 1.., required = true)]
    pub tasks: Vec<PathBuf>,
    /// Keep sets: files that must not get worse, each scored (every example, at most
    /// --eval-limit) with the base model and every run's final model, never trained on;
    /// the report says which runs make one worse. None may be a task's file.
    #[arg(long, num_args = 1..)]
    pub keep: Vec<PathBuf>,
    /// Held-out files are `<DIR>/<task>.jsonl`; default: an `eval/` folder beside each
    /// task file if it has one, else --eval-split of the task.
    #[arg(long)]
    pub eval_dir: Option<PathBuf>,
    /// Held-out share of each task without an eval file.
    #[arg(long, default_value_t = defaults::EVAL_SPLIT)]
    pub eval_split: f64,
    /// Use at most this many held-out examples per task.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// `all` or a list of combined, sequential, sequential-merge, separate, multi-head.
    #[arg(long, default_value = "all")]
    pub strategies: String,
    /// Training tokens every strategy gets.
    #[arg(long, default_value_t = defaults::BUDGET_TOKENS)]
    pub budget_tokens: usize,
    /// Task sampling of the combined and multi-head runs: proportional, uniform,
    /// temperature:T, or search (pick among proportional, temperature:2 and uniform by
    /// successive halving on a validation split of the training data; its training
    /// counts in the run's cost).
    #[arg(long, default_value = "proportional")]
    pub mixing: String,
    /// Tag prompts with their task in the combined run.
    #[arg(long)]
    pub task_tag: bool,
    /// Sequential replay share of earlier tasks.
    #[arg(long, default_value_t = 0.0)]
    pub replay: f64,
    /// Separate: merge methods to score, comma-separated (linear, task_arithmetic, ties,
    /// dare, concat), or none (routed only) [default: all of them].
    #[arg(long)]
    pub merges: Option<String>,
    /// Multi-head: rank of the LM-head deltas of generation tasks (default: --rank).
    #[arg(long)]
    pub head_rank: Option<usize>,
    /// Output folder: report.json, report.md, adapters/.
    #[arg(long)]
    pub out: PathBuf,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = defaults::LEARNING_RATE)]
    pub lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = defaults::RANK)]
    pub rank: usize,
    /// Adapter method: lora, rslora (scale α/√r), dora (a magnitude per output row) or
    /// pissa (A and B from the top singular vectors of each weight). PiSSA and --lora-plus
    /// usually want another rate than plain LoRA: --tune-lr gives each its own.
    #[arg(long, default_value = "lora")]
    pub method: String,
    /// Compare adapter methods: run every strategy with each of these (comma-separated,
    /// e.g. lora,dora) under the same budget; the report compares them paired, per
    /// strategy, and says which to use where. DoRA runs the separate strategy without
    /// merges and skips sequential-merge.
    #[arg(long, value_delimiter = ',')]
    pub methods: Vec<String>,
    /// LoRA+: train every B factor at this multiple of the learning rate (e.g. 16).
    #[arg(long)]
    pub lora_plus: Option<f64>,
    /// Longest example, in tokens.
    #[arg(long, default_value_t = defaults::MAX_TOKENS)]
    pub max_tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Repeat every strategy over these training seeds (comma-separated) and report the
    /// mean ± spread; default: just --seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = defaults::BOOTSTRAP)]
    pub bootstrap: usize,
    /// Pick each strategy's peak learning rate from --lr-grid by successive halving on a
    /// validation split of the training data (7/8 of a budget more training per strategy,
    /// plus scoring each trial on the split); --lr is then unused.
    #[arg(long)]
    pub tune_lr: bool,
    /// The rates --tune-lr tries, comma-separated [default: 3e-4,1e-3,3e-3].
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Vec<f64>,
    /// Tune the separate strategy's merges on a validation split of the training data
    /// (linear and task arithmetic: per-task weights; TIES: density and scale; DARE: drop
    /// rate and scale), scoring candidates with the cheap passes; each tuned merge is
    /// reported beside the same merge at its defaults, paired on the held-out examples.
    #[arg(long)]
    pub tune_merges: bool,
    /// Measure what every run keeps of the base model on the retention probe (120 varied
    /// prompts: KL from the base model along its answers, the share of unchanged answers;
    /// an extra scoring pass per run and per sequential stage).
    #[arg(long)]
    pub retention: bool,
    /// Data-size curves: also train every strategy on these shares of each task's
    /// training set, comma-separated, each in (0, 1] (e.g. 0.25,0.5,1; the full data
    /// always runs). Nested seeded subsets, the budget scaled with the share, the same
    /// held-out examples; the report says where the winner changes.
    #[arg(long, value_delimiter = ',')]
    pub data_fractions: Vec<f64>,
}

impl CompareArgs {
    /// The hyper-parameters these flags give.
    pub fn hyper(&self) -> anyhow::Result<Hyper> {
        let method = crate::args::adapter_method("--method", &self.method)?;
        let methods = self
            .methods
            .iter()
            .map(|m| crate::args::adapter_method("--methods", m))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Hyper {
            methods,
            learning_rate: self.lr,
            rank: self.rank,
            method,
            lora_plus: self.lora_plus,
            batch_size: self.batch_size,
            max_tokens: self.max_tokens,
            seed: self.seed,
            seeds: self.seeds.clone(),
            eval_split: self.eval_split,
            eval_limit: self.eval_limit,
            bootstrap: self.bootstrap,
            tune_lr: self.tune_lr,
            lr_grid: self.lr_grid.clone(),
            tune_merges: self.tune_merges,
            data_fractions: self.data_fractions.clone(),
            retention: self.retention,
            ..Hyper::default()
        })
    }

    /// The strategies these flags ask for, each with the option flags that apply to it.
    pub fn strategies(&self) -> anyhow::Result<Vec<StrategyChoice>> {
        let mixing = MixingChoice::parse(&self.mixing).with_context(|| {
            format!("unknown mixing `{}` (proportional, uniform, temperature:T, search)", self.mixing)
        })?;
        let merges = match &self.merges {
            None => MergeChoice::ALL.to_vec(),
            Some(none) if none.trim() == "none" => vec![],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|m| {
                    MergeChoice::parse(m).with_context(|| {
                        let known: Vec<&str> = MergeChoice::ALL.iter().map(|c| c.name()).collect();
                        format!("unknown merge `{m}` ({})", known.join(", "))
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        let with_options = |choice: StrategyChoice| match choice {
            StrategyChoice::Combined { .. } => StrategyChoice::Combined { mixing, task_tag: self.task_tag },
            StrategyChoice::Sequential { variant, .. } => {
                StrategyChoice::Sequential { variant, order: vec![], replay: self.replay }
            }
            StrategyChoice::Separate { .. } => StrategyChoice::Separate { merges: merges.clone() },
            StrategyChoice::MultiHead { .. } => StrategyChoice::MultiHead { mixing, head_rank: self.head_rank },
        };
        let mut out = Vec::new();
        for name in self.strategies.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                out.extend(StrategyChoice::all().into_iter().map(with_options));
            } else {
                let choice = StrategyChoice::named(name)
                    .with_context(|| format!("unknown strategy `{name}` (all, {})", STRATEGY_NAMES.join(", ")))?;
                out.push(with_options(choice));
            }
        }
        Ok(out)
    }

    /// The comparison these flags describe for `n_tasks` tasks, checked whole.
    pub fn config(&self, n_tasks: usize) -> anyhow::Result<CompareConfig> {
        strategy::compare_config(&self.strategies()?, self.budget_tokens, &self.hyper()?, n_tasks)
            .map_err(|problems| flag_problems(&problems))
    }

    /// What is wrong with the data fractions and searches for these tasks (a size leaving
    /// a task too few training examples, a search without enough to validate on).
    fn check_sizes(&self, tasks: &[TaskData]) -> anyhow::Result<()> {
        let sized: Vec<(&str, usize)> = tasks.iter().map(|t| (t.name.as_str(), t.train.len())).collect();
        let problems = strategy::request::size_problems(&self.hyper()?, &self.strategies()?, &sized);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(flag_problems(&problems))
        }
    }

    fn load_options(&self) -> LoadOptions {
        LoadOptions { limits: Limits { max_tokens: self.max_tokens, ..Limits::default() }, ..LoadOptions::default() }
    }

    /// Task file `p`'s held-out file: `--eval-dir/<task>.jsonl`, else an `eval/` file
    /// beside it (if there is one).
    fn eval_file(&self, p: &Path) -> Option<PathBuf> {
        let beside = p.parent().unwrap_or(Path::new(".")).join("eval").join(p.file_name().unwrap_or_default());
        self.eval_dir
            .as_ref()
            .map(|d| d.join(format!("{}.jsonl", task_name(p))))
            .or_else(|| beside.exists().then_some(beside))
    }

    /// Every task file with its held-out examples: [`CompareArgs::eval_file`], else a
    /// seeded `--eval-split` share.
    fn tasks(&self) -> anyhow::Result<Vec<TaskData>> {
        let opts = self.load_options();
        let mut tasks = Vec::new();
        for p in &self.tasks {
            let eval_file = self.eval_file(p);
            let held_out =
                HeldOut { file: eval_file.as_deref(), split: self.eval_split, seed: self.seed, limit: self.eval_limit };
            tasks.push(TaskData::load(&task_name(p), p, &held_out, &opts)?);
        }
        Ok(tasks)
    }

    /// What is wrong with `--keep` beside `--tasks` (a keep file that is a task's, named
    /// like one, given twice, too many), before anything is read.
    fn check_keep(&self) -> anyhow::Result<()> {
        let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        let tasks: Vec<(String, String)> = self
            .tasks
            .iter()
            .flat_map(|p| std::iter::once(p.clone()).chain(self.eval_file(p)).map(move |f| (same(&f), task_name(p))))
            .collect();
        let keep: Vec<(String, String)> = self.keep.iter().map(|p| (same(p), task_name(p))).collect();
        let problems: Vec<String> = strategy::request::keep_problems(&tasks, &keep)
            .into_iter()
            .map(|(at, p)| match at {
                Some(i) => format!("--keep {}: {p}", self.keep[i].display()),
                None => format!("--keep: {p}"),
            })
            .collect();
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("; "));
        Ok(())
    }

    /// The keep sets: every example of each `--keep` file (at most `--eval-limit`).
    fn keep_sets(&self) -> anyhow::Result<Vec<TaskData>> {
        let opts = self.load_options();
        self.keep
            .iter()
            .map(|p| {
                TaskData::keep_set(&task_name(p), p, self.eval_limit, &opts)
                    .with_context(|| format!("--keep {}", p.display()))
            })
            .collect()
    }

    /// Runs the comparison with a progress bar per run and prints the report.
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        let cfg = self.config(self.tasks.len())?;
        self.check_keep()?;
        let tasks = self.tasks()?;
        self.check_sizes(&tasks)?;
        let keep = self.keep_sets()?;
        // Before any training: what these held-out sets can tell apart.
        let sizes: Vec<usize> = tasks.iter().map(|t| t.eval.len()).collect();
        eprintln!("{}", strategy::report::power(&sizes).text);
        let m = load(&self.model.model, cli, device)?;
        // What the model's shape allows (a PiSSA rank), before anything is written.
        if let Some(p) = cfg.adapter_problem(&m.model.cfg) {
            anyhow::bail!("--rank: {p}");
        }
        std::fs::create_dir_all(&self.out)?;
        let bars = indicatif::MultiProgress::new();
        let mut current: Option<ProgressBar> = None;
        let (started, mut restored) = (std::time::Instant::now(), false);
        let report =
            strategy::compare(&Base::of(&m), &tasks, &keep, &cfg, &self.out, Control::default(), &mut |ev| match ev {
                CompareEvent::RunStarted { run, index, of } => {
                    let pb = bars.add(bar(0, "{prefix:36} {bar:24} {pos}/{len} steps  {msg}  ETA {eta}"));
                    pb.set_prefix(format!("[{}/{of}] {run}", index + 1));
                    current = Some(pb);
                }
                CompareEvent::Train { stage, event: TrainEvent::Step(s), .. } => {
                    if let Some(pb) = &current {
                        pb.set_length(s.total_steps as u64);
                        pb.set_position(s.step as u64);
                        pb.set_message(format!("{stage}: loss {:.3}  {:.0} tok/s", s.loss, s.tokens_per_s));
                    }
                }
                CompareEvent::Evaluated { stage, task, value, .. } => {
                    if let Some(pb) = &current {
                        pb.set_message(if stage == strategy::KEEP_STAGE {
                            format!("scored keep set {task}: {:.1}%", 100.0 * value)
                        } else {
                            format!("scored {task} after {stage}: {:.1}%", 100.0 * value)
                        });
                    }
                }
                CompareEvent::RunRestored { run, index, of, wall_s } => {
                    restored = true;
                    let pb = bars.add(bar(0, "{prefix:36} {msg}"));
                    pb.set_prefix(format!("[{}/{of}] {run}", index + 1));
                    pb.finish_with_message(format!("done before the interruption ({wall_s:.0}s)"));
                }
                CompareEvent::RunFinished { wall_s, .. } => {
                    if let Some(pb) = current.take() {
                        pb.finish_with_message(format!("done in {wall_s:.0}s"));
                    }
                }
                CompareEvent::Train { run, stage, event: TrainEvent::Notice { step, message } } => {
                    let _ = bars.println(format!("{run}, {stage}, step {step}: {message}"));
                }
                _ => {}
            })?;
        println!("{}", strategy::report::markdown(&report));
        if let Some(s) = report.retention_seconds() {
            // What --retention cost this comparison (a resumed one's earlier runs ran
            // before this process started: their measurements count, not their time).
            let total = started.elapsed().as_secs_f64();
            if restored {
                println!("retention probe: {s:.0} s in all");
            } else {
                println!(
                    "retention probe: {s:.0} s of the comparison's {total:.0} s ({:.0}%)",
                    100.0 * s / total.max(1e-9)
                );
            }
        }
        println!("report: {}", self.out.join("report.md").display());
        Ok(())
    }
}

/// The contract's problems as one error naming the flags (`--data-fractions`, not the
/// API's `hyper.data_fractions`).
fn flag_problems(problems: &[String]) -> anyhow::Error {
    let mut text = problems.join("; ").replace(strategy::request::FRACTIONS, "--data-fractions");
    let fields = [
        ("hyper.tune_merges", "--tune-merges"),
        ("hyper.tune_lr", "--tune-lr"),
        ("hyper.methods", "--methods"),
        ("hyper.method", "--method"),
    ];
    for (field, flag) in fields {
        text = text.replace(field, flag);
    }
    // `strategies[i].mixing` is the one --mixing flag here.
    while let Some(at) = text.find("strategies[") {
        let Some(end) = text[at..].find("].mixing") else { break };
        text.replace_range(at..at + end + "].mixing".len(), "--mixing");
    }
    anyhow::anyhow!("{text}")
}
