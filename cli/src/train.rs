//! `multitune train`: fine-tune a LoRA adapter on one task file, with checkpoints,
//! resume, a progress bar and an optional held-out score.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use super::eval::print_table;
use super::{args, bar, load, task_name, Cli};
use multitune::adapter::peft;
use multitune::data::{self, Example, Limits, LoadOptions, Record, Split, TaskSpec};
use multitune::eval::{self, EvalOptions};
use multitune::model::lora::{self, LoraAdapter};
use multitune::model::LoadedModel;
use multitune::persist;
use multitune::train::tensorboard::{RunLog, TENSORBOARD_DIR};
use multitune::train::{self, CheckpointPlan, TrainConfig, TrainEvent, TrainSummary};

/// A task and its held-out records.
type HeldOutSet = (TaskSpec, Vec<Record>);

/// `multitune train`: fine-tune a LoRA adapter on one task.
#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: args::ModelArg,
    /// Training data: JSONL or CSV in any supported format.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    data_opts: args::DataArgs,
    /// Held-out data scored after training (default: the split below).
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Without --eval-data, hold out part of --data: a fraction (0.1) or a count (50).
    #[arg(long)]
    eval_split: Option<String>,
    /// Output folder: adapter (PEFT layout), checkpoint, config and log.
    #[arg(long)]
    out: PathBuf,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    resume: bool,
    /// A JSON file with a full training config (flags below override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Passes over the data.
    #[arg(long)]
    epochs: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA rank.
    #[arg(long)]
    rank: Option<usize>,
    /// LoRA alpha.
    #[arg(long)]
    alpha: Option<f64>,
    /// LoRA dropout.
    #[arg(long)]
    dropout: Option<f32>,
    /// LoRA targets: `all` or a list such as q,k,v,o.
    #[arg(long)]
    targets: Option<String>,
    /// Adapter method: lora, rslora (scale α/√r), dora (a magnitude per output row) or
    /// pissa (A and B from the top singular vectors of each weight).
    #[arg(long)]
    method: Option<String>,
    /// LoRA+: train every B factor at this multiple of the learning rate (e.g. 16).
    #[arg(long)]
    lora_plus: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Batch examples of similar length together (less padding; avoid when the label
    /// decides the length).
    #[arg(long)]
    group_by_length: bool,
    /// System prompt for chat models.
    #[arg(long)]
    system: Option<String>,
}

impl TrainArgs {
    /// The run's training configuration: a `--config` file (or the defaults) with the
    /// flags given on top, validated.
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut cfg: TrainConfig = match &self.config {
            Some(p) => {
                serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => TrainConfig::default(),
        };
        if let Some(v) = self.steps {
            cfg.max_steps = Some(v)
        }
        if let Some(v) = self.epochs {
            cfg.epochs = v;
            cfg.max_steps = self.steps
        }
        if let Some(v) = self.batch_size {
            cfg.batch_size = v
        }
        if let Some(v) = self.grad_accum {
            cfg.grad_accum = v
        }
        if let Some(v) = self.lr {
            cfg.learning_rate = v
        }
        // A --config file's max_seq_len stands unless --max-tokens is given explicitly.
        if self.config.is_none() || self.data_opts.max_tokens != Limits::default().max_tokens {
            cfg.max_seq_len = self.data_opts.max_tokens;
        }
        if let Some(v) = self.seed {
            cfg.seed = v
        }
        if let Some(v) = self.checkpoint_every {
            cfg.checkpoint_every = v
        }
        if self.group_by_length {
            cfg.group_by_length = true;
        }
        if let Some(v) = self.rank {
            cfg.lora.rank = v
        }
        if let Some(v) = self.alpha {
            cfg.lora.alpha = v
        }
        if let Some(v) = self.dropout {
            cfg.lora.dropout = v
        }
        if let Some(t) = &self.targets {
            cfg.lora.targets = lora::parse_targets(t)?
        }
        if let Some(m) = &self.method {
            cfg.lora = cfg.lora.with_method(crate::args::adapter_method("--method", m)?);
        }
        if self.lora_plus.is_some() {
            cfg.lora_plus = self.lora_plus;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// The training records and, if asked for, the task and its held-out records (a file,
    /// or a seeded split of the training file).
    fn data(&self, opts: &LoadOptions, seed: u64) -> anyhow::Result<(Vec<Record>, Option<HeldOutSet>)> {
        let ds = data::load(&self.data, opts)?;
        for w in &ds.warnings {
            eprintln!("warning: {}: {w}", self.data.display());
        }
        let task = TaskSpec { name: task_name(&self.data), kind: ds.kind, labels: ds.labels.clone() };
        Ok(match (&self.eval_data, &self.eval_split) {
            (Some(p), _) => {
                let e = data::load(p, &LoadOptions { kind: Some(ds.kind), ..opts.clone() })?;
                if let Some(w) = data::overlap_warning(&ds.records, &e.records) {
                    eprintln!("warning: {w}");
                }
                (ds.records, Some((task, e.records)))
            }
            (None, Some(f)) => {
                let split = match (f.parse::<usize>(), f.parse::<f64>()) {
                    (Ok(n), _) => Split::Count(n),
                    (_, Ok(x)) => Split::Fraction(x),
                    _ => bail!("--eval-split `{f}` is neither a fraction nor a count"),
                };
                let (ti, ei) = data::split_indices(ds.records.len(), split, seed)?;
                let pick = |ix: &[usize]| ix.iter().map(|&i| ds.records[i].clone()).collect::<Vec<_>>();
                (pick(&ti), Some((task, pick(&ei))))
            }
            _ => (ds.records, None),
        })
    }

    /// Trains, writes the adapter and the run's files into `--out`, and scores the
    /// held-out examples if there are any.
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        let cfg = self.config()?;
        let mut opts = self.data_opts.options()?;
        // Examples are tokenised to the same length the trainer uses.
        opts.limits.max_tokens = cfg.max_seq_len;
        let (train_recs, held_out) = self.data(&opts, cfg.seed)?;
        let m = load(&self.model.model, cli, device)?;
        let (examples, report) = data::tokenize(&m.tokenizer, &train_recs, self.system.as_deref(), &opts.limits)?;
        if report.truncated + report.dropped > 0 {
            eprintln!(
                "{} examples over {} tokens: {} truncated, {} dropped",
                report.truncated + report.dropped,
                opts.limits.max_tokens,
                report.truncated,
                report.dropped
            );
        }
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        let ckpt = CheckpointPlan { path: train::checkpoint_path(&self.out), resume: self.resume };
        if !self.resume && ckpt.path.exists() {
            bail!(
                "{} already holds a checkpoint: pass --resume to continue it, or choose another --out",
                self.out.display()
            );
        }
        let mut adapter = LoraAdapter::for_model(&m.model, cfg.lora.clone(), cfg.seed)?;
        let run_info = serde_json::json!({ "model": self.model.model, "base_model": m.base_name, "data": self.data, "system": self.system, "train": cfg });
        persist::write_atomic(
            &self.out.join("train_config.json"),
            serde_json::to_string_pretty(&run_info)?.as_bytes(),
        )?;
        let (summary, mut curves) = self.train_with_progress(&m, &mut adapter, &examples, &cfg, &ckpt)?;
        peft::save_adapter(&self.out, &adapter, &m.model.cfg, &m.base_name)?;
        persist::write_atomic(&self.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
        let first = summary.losses.first().copied().unwrap_or(f64::NAN);
        let last = summary.losses.last().copied().unwrap_or(f64::NAN);
        println!(
            "done: {} steps, {} tokens in {:.1}s, loss {first:.4} -> {last:.4}; adapter in {}",
            summary.steps,
            summary.tokens,
            summary.wall_s,
            self.out.display()
        );
        if let Some((task, recs)) = held_out {
            let eo = EvalOptions { system: self.system.clone(), max_seq_len: cfg.max_seq_len, ..Default::default() };
            let r = eval::evaluate_task(&m.model, &m.tokenizer, Some(&adapter), &task, &recs, &eo, &mut |_, _| {})?;
            println!("held-out: {} examples", r.examples);
            print_table(std::slice::from_ref(&r));
            persist::write_atomic(&self.out.join("eval.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
            for (metric, e) in &r.metrics {
                curves.eval(&format!("{}/{metric}", task.name), e.value)?;
            }
            curves.eval(&format!("{}/loss", task.name), r.loss.value)?;
        }
        Ok(())
    }

    /// The training loop with a progress bar, every event appended to `train_log.jsonl`
    /// and the step scalars to a TensorBoard event file in `tensorboard/`.
    fn train_with_progress(
        &self,
        m: &LoadedModel,
        adapter: &mut LoraAdapter,
        examples: &[Example],
        cfg: &TrainConfig,
        ckpt: &CheckpointPlan,
    ) -> anyhow::Result<(TrainSummary, RunLog)> {
        let log_path = self.out.join("train_log.jsonl");
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut curves = RunLog::create(&self.out.join(TENSORBOARD_DIR))?;
        let pb = bar(0, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}");
        let summary = train::train(&m.model, adapter, examples, cfg, Some(ckpt), None, &mut |ev| {
            let _ = writeln!(log, "{}", serde_json::to_string(ev).unwrap_or_default());
            let _ = curves.train("train", ev);
            match ev {
                TrainEvent::Started { total_steps, start_step, trainable_params, examples } => {
                    pb.set_length(*total_steps as u64);
                    pb.set_position(*start_step as u64);
                    pb.println(format!(
                        "training {} ({} params) with {trainable_params} LoRA params on {examples} examples, {total_steps} steps{}",
                        m.base_name,
                        m.model.cfg.num_parameters(),
                        if *start_step > 0 { format!(", resuming at step {start_step}") } else { String::new() }
                    ));
                }
                TrainEvent::Step(s) => {
                    pb.set_position(s.step as u64);
                    pb.set_message(format!("loss {:.4}  lr {:.2e}  {:.0} tok/s", s.loss, s.lr, s.tokens_per_s));
                }
                TrainEvent::Checkpoint { step, .. } => pb.println(format!("checkpoint at step {step}")),
                TrainEvent::Notice { step, message } => pb.println(format!("step {step}: {message}")),
            }
        })?;
        pb.finish();
        Ok((summary, curves))
    }
}
