//! `multitune compare`: train every chosen strategy on several tasks under one token
//! budget and write the report. Strategy names, their options and the runs' training
//! configuration come from the engine's [`crate::strategy::spec`], as the server's do.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use clap::Args;
use indicatif::ProgressBar;

use super::{args, bar, load, task_name, Cli};
use crate::adapter::MergeMethod;
use crate::data::{Limits, LoadOptions};
use crate::strategy::{
    self, Base, CompareConfig, CompareEvent, CompareSettings, Control, HeldOut, Mixing, StrategyOptions, StrategySpec,
    TaskData,
};
use crate::train::TrainEvent;

/// `multitune compare`: every chosen strategy under one budget, and the report.
#[derive(Args)]
pub struct CompareArgs {
    /// The base model.
    #[command(flatten)]
    pub model: args::ModelArg,
    /// One training file per task.
    #[arg(long, num_args = 1.., required = true)]
    pub tasks: Vec<PathBuf>,
    /// Held-out files are `<DIR>/<task>.jsonl`; default: an `eval/` folder beside each
    /// task file if it has one, else --eval-split of the task.
    #[arg(long)]
    pub eval_dir: Option<PathBuf>,
    /// Held-out share of each task without an eval file.
    #[arg(long, default_value_t = 0.2)]
    pub eval_split: f64,
    /// Use at most this many held-out examples per task.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// `all` or a list of combined, sequential, sequential-merge, separate, multi-head.
    #[arg(long, default_value = "all")]
    pub strategies: String,
    /// Training tokens every strategy gets.
    #[arg(long)]
    pub budget_tokens: usize,
    /// Combined mixing: proportional, uniform or temperature:T.
    #[arg(long, default_value = "proportional")]
    pub mixing: String,
    /// Tag prompts with their task in the combined run.
    #[arg(long)]
    pub task_tag: bool,
    /// Sequential replay share of earlier tasks.
    #[arg(long, default_value_t = 0.0)]
    pub replay: f64,
    /// Separate: merge methods to score, comma-separated (linear, task_arithmetic, ties,
    /// dare, concat).
    #[arg(long, default_value = "linear,task_arithmetic,ties,dare,concat")]
    pub merges: String,
    /// Multi-head: rank of the LM-head deltas of generation tasks (default: --rank).
    #[arg(long)]
    pub head_rank: Option<usize>,
    /// Output folder: report.json, report.md, adapters/.
    #[arg(long)]
    pub out: PathBuf,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    pub lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// Longest example, in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Repeat every strategy over these training seeds (comma-separated) and report the
    /// mean ± spread; default: just --seed.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Pick each strategy's peak learning rate from --lr-grid by successive halving on a
    /// validation split of the training data (7/8 of a budget more training per strategy,
    /// plus scoring each trial on the split); --lr is then unused.
    #[arg(long)]
    pub tune_lr: bool,
    /// The rates --tune-lr tries, comma-separated [default: 3e-4,1e-3,3e-3].
    #[arg(long, value_delimiter = ',')]
    pub lr_grid: Vec<f64>,
}

impl CompareArgs {
    /// The settings these flags give (defaults: the engine's).
    pub fn settings(&self) -> CompareSettings {
        CompareSettings {
            budget_tokens: self.budget_tokens,
            learning_rate: self.lr,
            rank: self.rank,
            batch_size: self.batch_size,
            max_tokens: self.max_tokens,
            seed: self.seed,
            seeds: self.seeds.clone(),
            bootstrap: self.bootstrap,
            checkpoint_every: CompareSettings::default().checkpoint_every,
            tune_lr: self.tune_lr,
            lr_grid: self.lr_grid.clone(),
        }
    }

    /// The strategies' options these flags give.
    pub fn strategy_options(&self) -> anyhow::Result<StrategyOptions> {
        let mixing = Mixing::parse(&self.mixing)
            .with_context(|| format!("unknown mixing `{}` (proportional, uniform, temperature:T)", self.mixing))?;
        let merges = self
            .merges
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|m| {
                MergeMethod::from_name(m)
                    .with_context(|| format!("unknown merge `{m}` (linear, task_arithmetic, ties, dare, concat)"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(StrategyOptions {
            mixing,
            task_tag: self.task_tag,
            replay: self.replay,
            merges,
            head_rank: self.head_rank.unwrap_or(self.rank),
            ..StrategyOptions::for_rank(self.rank)
        })
    }

    /// The comparison these flags describe for `n_tasks` tasks, checked whole.
    pub fn config(&self, n_tasks: usize) -> anyhow::Result<CompareConfig> {
        let specs = StrategySpec::parse_list(&self.strategies, &self.strategy_options()?)?;
        self.settings().config(specs, n_tasks).map_err(|problems| anyhow::anyhow!("{}", problems.join("; ")))
    }

    /// Every task file with its held-out examples: `--eval-dir/<task>.jsonl`, else an
    /// `eval/` file beside it, else a seeded `--eval-split` share.
    fn tasks(&self) -> anyhow::Result<Vec<TaskData>> {
        let opts = LoadOptions {
            limits: Limits { max_tokens: self.max_tokens, ..Limits::default() },
            ..LoadOptions::default()
        };
        let mut tasks = Vec::new();
        for p in &self.tasks {
            let name = task_name(p);
            let beside = p.parent().unwrap_or(Path::new(".")).join("eval").join(p.file_name().unwrap_or_default());
            let eval_file = self
                .eval_dir
                .as_ref()
                .map(|d| d.join(format!("{name}.jsonl")))
                .or_else(|| beside.exists().then_some(beside));
            let held_out =
                HeldOut { file: eval_file.as_deref(), split: self.eval_split, seed: self.seed, limit: self.eval_limit };
            tasks.push(TaskData::load(&name, p, &held_out, &opts)?);
        }
        Ok(tasks)
    }

    /// Runs the comparison with a progress bar per run and prints the report.
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        let cfg = self.config(self.tasks.len())?;
        let tasks = self.tasks()?;
        // Before any training: what these held-out sets can tell apart.
        let sizes: Vec<usize> = tasks.iter().map(|t| t.eval.len()).collect();
        eprintln!("{}", strategy::report::Power::of(&sizes).text);
        let m = load(&self.model.model, cli, device)?;
        std::fs::create_dir_all(&self.out)?;
        let bars = indicatif::MultiProgress::new();
        let mut current: Option<ProgressBar> = None;
        let report =
            strategy::compare(&Base::of(&m), &tasks, &cfg, &self.out, Control::default(), &mut |ev| match ev {
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
                        pb.set_message(format!("scored {task} after {stage}: {:.1}%", 100.0 * value));
                    }
                }
                CompareEvent::RunRestored { run, index, of, wall_s } => {
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
        println!("{}", report.markdown());
        println!("report: {}", self.out.join("report.md").display());
        Ok(())
    }
}
