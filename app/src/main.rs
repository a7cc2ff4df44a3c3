//! The `multitune` command line: fetch the default model, fine-tune a LoRA adapter,
//! generate, evaluate, benchmark.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use multitune::bench::{self, Measurement, Mode, Workload};
use multitune::data::Record;
use multitune::dataset::{self, Format, Limits, LoadOptions, OverlongPolicy, Split, TaskKind};
use multitune::eval::{self, EvalOptions, TaskEval};
use multitune::fetch;
use multitune::generate::{self, GenerateConfig};
use multitune::loader::{self, LoadedModel, ModelSource};
use multitune::lora;
use multitune::metrics::Estimate;
use multitune::peft;
use multitune::train::{self, CheckpointPlan, TrainConfig, TrainEvent};

#[derive(Parser)]
#[command(name = "multitune", version, about = "Fine-tune one LLM for many tasks with LoRA and compare strategies")]
struct Cli {
    /// Folder holding the default model and other local models.
    #[arg(long, global = true, env = "MULTITUNE_MODELS", default_value = "models")]
    models_dir: PathBuf,
    /// Compute device: auto, cpu or cuda[:N].
    #[arg(long, global = true, env = "MULTITUNE_DEVICE", default_value = "auto")]
    device: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download the default model (SmolLM2-135M-Instruct GGUF) into the models folder.
    FetchModel,
    /// Fine-tune a LoRA adapter on a JSONL file of {"prompt","completion"} rows.
    Train(TrainArgs),
    /// Answer a prompt with the model (and an adapter).
    Generate(GenerateArgs),
    /// Score the model (and an adapter) on a held-out JSONL file.
    Eval(EvalArgs),
    /// Train every strategy on several tasks under one token budget and compare them.
    Compare(CompareArgs),
    /// Redraw the charts of a comparison from its report.json.
    Charts {
        /// The report.json written by `compare`.
        #[arg(long)]
        report: PathBuf,
        /// Output folder for the SVG and PNG files.
        #[arg(long)]
        out: PathBuf,
    },
    /// Inspect datasets.
    #[command(subcommand)]
    Data(DataCmd),
    /// Measure training, eval and label-ranking throughput, MFU and peak memory, side
    /// by side with PyTorch + PEFT when `--reference` names its Python.
    Bench(BenchArgs),
    /// One bench measurement (run by `bench` in a child process).
    #[command(hide = true)]
    BenchWorker(BenchWorkerArgs),
    /// Write the demo task files (reproducible) into a folder.
    DemoData {
        /// Output folder.
        #[arg(long, default_value = "assets/demo")]
        out: PathBuf,
    },
    /// Write the base model with an adapter merged in, as a Hugging Face folder.
    ExportMerged {
        #[command(flatten)]
        model: ModelArg,
        /// The adapter folder (PEFT layout).
        #[arg(long)]
        adapter: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Args)]
struct ModelArg {
    /// `default`, `tiny`, a .gguf file or a Hugging Face model folder.
    #[arg(long, default_value = "default")]
    model: String,
}

#[derive(Args)]
struct DataArgs {
    /// Force the format: prompt-completion, alpaca, chat, sharegpt, text-label.
    #[arg(long)]
    format: Option<String>,
    /// Force the task kind: classification or generation.
    #[arg(long)]
    kind: Option<String>,
    /// Longest example in tokens.
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    /// What to do with longer examples: truncate (the prompt's start) or drop.
    #[arg(long, default_value = "truncate")]
    overlong: String,
    /// Largest file accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_bytes: u64,
    /// Most rows accepted.
    #[arg(long, default_value_t = Limits::default().max_rows)]
    max_rows: usize,
    /// Longest field accepted, characters.
    #[arg(long, default_value_t = Limits::default().max_field_chars)]
    max_field_chars: usize,
    /// Most labels of a classification task.
    #[arg(long, default_value_t = Limits::default().max_labels)]
    max_labels: usize,
}

impl DataArgs {
    fn options(&self) -> anyhow::Result<LoadOptions> {
        let format = self
            .format
            .as_deref()
            .map(|f| Format::parse(f).with_context(|| format!("unknown format `{f}`")))
            .transpose()?;
        let kind = self
            .kind
            .as_deref()
            .map(|k| {
                TaskKind::parse(k).with_context(|| format!("unknown task kind `{k}` (classification, generation)"))
            })
            .transpose()?;
        let overlong = match self.overlong.as_str() {
            "truncate" => OverlongPolicy::Truncate,
            "drop" => OverlongPolicy::Drop,
            o => bail!("unknown --overlong `{o}` (truncate, drop)"),
        };
        let limits = Limits {
            max_tokens: self.max_tokens,
            overlong,
            max_bytes: self.max_bytes,
            max_rows: self.max_rows,
            max_field_chars: self.max_field_chars,
            max_labels: self.max_labels,
        };
        Ok(LoadOptions { format, kind, limits })
    }
}

fn task_name(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "task".into())
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Training data: JSONL or CSV in any supported format.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    data_opts: DataArgs,
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

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// An adapter folder (PEFT layout), e.g. a `train --out` folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// System prompt (default: the chat template's own).
    #[arg(long)]
    system: Option<String>,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArg,
    /// An adapter folder (PEFT layout).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Held-out data, one file per task (JSONL or CSV in any supported format).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    data_opts: DataArgs,
    /// System prompt for chat models.
    #[arg(long)]
    system: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Rank labels by mean log-likelihood per token instead of the total.
    #[arg(long)]
    length_normalise: bool,
    /// Bootstrap resamples for the 95% intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print every prediction.
    #[arg(long)]
    show: bool,
}

#[derive(Args)]
struct CompareArgs {
    #[command(flatten)]
    model: ModelArg,
    /// One training file per task.
    #[arg(long, num_args = 1.., required = true)]
    tasks: Vec<PathBuf>,
    /// Held-out files are `<DIR>/<task>.jsonl`; default: an `eval/` folder beside each
    /// task file if it has one, else --eval-split of the task.
    #[arg(long)]
    eval_dir: Option<PathBuf>,
    /// Held-out share of each task without an eval file.
    #[arg(long, default_value_t = 0.2)]
    eval_split: f64,
    /// Use at most this many held-out examples per task.
    #[arg(long)]
    eval_limit: Option<usize>,
    /// `all` or a list of combined, sequential, sequential-merge, separate, multi-head.
    #[arg(long, default_value = "all")]
    strategies: String,
    /// Training tokens every strategy gets.
    #[arg(long)]
    budget_tokens: usize,
    /// Combined mixing: proportional, uniform or temperature:T.
    #[arg(long, default_value = "proportional")]
    mixing: String,
    /// Tag prompts with their task in the combined run.
    #[arg(long)]
    task_tag: bool,
    /// Sequential replay share of earlier tasks.
    #[arg(long, default_value_t = 0.0)]
    replay: f64,
    /// Output folder: report.json, report.md, adapters/.
    #[arg(long)]
    out: PathBuf,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Longest example, in tokens.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Repeat every strategy over these training seeds (comma-separated) and report the
    /// mean ± spread; default: just --seed.
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
}

#[derive(Subcommand)]
enum DataCmd {
    /// Validate a dataset and print its summary (exit code 1 on errors).
    Check(DataCheckArgs),
}

#[derive(Args)]
struct DataCheckArgs {
    /// The file (JSONL or CSV).
    file: PathBuf,
    #[command(flatten)]
    data_opts: DataArgs,
    /// Model whose tokenizer measures lengths.
    #[command(flatten)]
    model: ModelArg,
    /// Skip token lengths (no model needed).
    #[arg(long)]
    no_tokens: bool,
    /// System prompt counted in token lengths.
    #[arg(long)]
    system: Option<String>,
}

#[derive(Args)]
struct BenchArgs {
    /// Models to measure, comma-separated.
    #[arg(long, default_value = "tiny,default")]
    models: String,
    /// Fixed shapes (batch x tokens) of random tokens, comma-separated.
    #[arg(long, default_value = "8x64,4x128,16x32")]
    shapes: String,
    /// Demo task folder: adds a workload of real examples (batch 8) and a label-ranking
    /// workload on its classification task; empty to skip.
    #[arg(long, default_value = "assets/demo")]
    demo: String,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Threads for both implementations.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Alternate ours and the reference this many times per measurement and report the
    /// median round (the machine's speed drifts; more rounds, steadier figures).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Python with torch, transformers and peft (`make bench-setup`): runs the reference,
    /// alternating with ours.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "bench/reference.py")]
    reference_script: PathBuf,
    /// Modes to measure, comma-separated: train, eval, rank.
    #[arg(long, default_value = "train,eval,rank")]
    modes: String,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the workload files here (to rerun one measurement with `bench-worker`).
    #[arg(long)]
    save_workloads: Option<PathBuf>,
}

/// One measurement in a process of its own (used by `bench`).
#[derive(Args)]
struct BenchWorkerArgs {
    /// Model spec.
    #[arg(long)]
    model: String,
    /// Workload JSON.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// train, eval, rank or peak.
    #[arg(long)]
    mode: String,
}

fn load(spec: &str, cli: &Cli, device: &Device) -> anyhow::Result<LoadedModel> {
    let source = ModelSource::parse(spec)?;
    if source == ModelSource::Default && !fetch::default_model_path(&cli.models_dir).exists() {
        eprintln!("the default model is not in {}; fetching it", cli.models_dir.display());
        fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
    }
    let m = loader::load_model(&source, &cli.models_dir, device, false)
        .with_context(|| format!("loading model `{spec}`"))?;
    Ok(m)
}

fn load_adapter(dir: &Path, m: &LoadedModel, device: &Device) -> anyhow::Result<multitune::LoraAdapter> {
    peft::load_adapter(dir, &m.model.cfg, device).with_context(|| format!("loading adapter {}", dir.display()))
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    pb
}

fn cmd_train(cli: &Cli, a: &TrainArgs, device: &Device) -> anyhow::Result<()> {
    let mut cfg: TrainConfig = match &a.config {
        Some(p) => {
            serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("parsing {}", p.display()))?
        }
        None => TrainConfig::default(),
    };
    if let Some(v) = a.steps {
        cfg.max_steps = Some(v)
    }
    if let Some(v) = a.epochs {
        cfg.epochs = v;
        cfg.max_steps = a.steps
    }
    if let Some(v) = a.batch_size {
        cfg.batch_size = v
    }
    if let Some(v) = a.grad_accum {
        cfg.grad_accum = v
    }
    if let Some(v) = a.lr {
        cfg.learning_rate = v
    }
    // A --config file's max_seq_len stands unless --max-tokens is given explicitly.
    if a.config.is_none() || a.data_opts.max_tokens != Limits::default().max_tokens {
        cfg.max_seq_len = a.data_opts.max_tokens;
    }
    if let Some(v) = a.seed {
        cfg.seed = v
    }
    if let Some(v) = a.checkpoint_every {
        cfg.checkpoint_every = v
    }
    if a.group_by_length {
        cfg.group_by_length = true;
    }
    let mut lora_cfg = cfg.lora.clone();
    if let Some(v) = a.rank {
        lora_cfg.rank = v
    }
    if let Some(v) = a.alpha {
        lora_cfg.alpha = v
    }
    if let Some(v) = a.dropout {
        lora_cfg.dropout = v
    }
    if let Some(t) = &a.targets {
        lora_cfg.targets = lora::parse_targets(t)?
    }
    cfg.lora = lora_cfg;
    cfg.validate()?;

    let mut opts = a.data_opts.options()?;
    // Examples are tokenised to the same length the trainer uses.
    opts.limits.max_tokens = cfg.max_seq_len;
    let ds = dataset::load(&a.data, &opts)?;
    for w in &ds.warnings {
        eprintln!("warning: {}: {w}", a.data.display());
    }
    let (train_recs, held_out): (Vec<Record>, Option<(Vec<Record>, TaskKind, Vec<String>)>) =
        match (&a.eval_data, &a.eval_split) {
            (Some(p), _) => {
                let e = dataset::load(p, &LoadOptions { kind: Some(ds.kind), ..opts.clone() })?;
                if let Some(w) = dataset::overlap_warning(&ds.records, &e.records) {
                    eprintln!("warning: {w}");
                }
                (ds.records.clone(), Some((e.records, ds.kind, ds.labels.clone())))
            }
            (None, Some(f)) => {
                let split = match (f.parse::<usize>(), f.parse::<f64>()) {
                    (Ok(n), _) => Split::Count(n),
                    (_, Ok(x)) => Split::Fraction(x),
                    _ => bail!("--eval-split `{f}` is neither a fraction nor a count"),
                };
                let (ti, ei) = dataset::split_indices(ds.records.len(), split, cfg.seed)?;
                let pick = |ix: &[usize]| ix.iter().map(|&i| ds.records[i].clone()).collect::<Vec<_>>();
                (pick(&ti), Some((pick(&ei), ds.kind, ds.labels.clone())))
            }
            _ => (ds.records.clone(), None),
        };
    let m = load(&a.model.model, cli, device)?;
    let (examples, report) = dataset::tokenize(&m.tokenizer, &train_recs, a.system.as_deref(), &opts.limits)?;
    if report.truncated + report.dropped > 0 {
        eprintln!(
            "{} examples over {} tokens: {} truncated, {} dropped",
            report.truncated + report.dropped,
            opts.limits.max_tokens,
            report.truncated,
            report.dropped
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ckpt = CheckpointPlan { path: train::checkpoint_path(&a.out), resume: a.resume };
    if !a.resume && ckpt.path.exists() {
        bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", a.out.display());
    }
    let mut adapter = multitune::LoraAdapter::new(&m.model.cfg, cfg.lora.clone(), cfg.seed, device)?;
    let run_info = serde_json::json!({ "model": a.model.model, "base_model": m.base_name, "data": a.data, "system": a.system, "train": cfg });
    multitune::checkpoint::write_atomic(
        &a.out.join("train_config.json"),
        serde_json::to_string_pretty(&run_info)?.as_bytes(),
    )?;
    let log_path = a.out.join("train_log.jsonl");
    let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
    let pb = bar(0, "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}");
    let summary = train::train(&m.model, &mut adapter, &examples, &cfg, Some(&ckpt), None, &mut |ev| {
        use std::io::Write;
        let _ = writeln!(log, "{}", serde_json::to_string(ev).unwrap_or_default());
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
        }
    })?;
    pb.finish();
    peft::save_adapter(&a.out, &adapter, &m.model.cfg, &m.base_name)?;
    multitune::checkpoint::write_atomic(
        &a.out.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "done: {} steps, {} tokens in {:.1}s, loss {first:.4} -> {last:.4}; adapter in {}",
        summary.steps,
        summary.tokens,
        summary.wall_s,
        a.out.display()
    );
    if let Some((recs, kind, labels)) = held_out {
        let eo = EvalOptions { system: a.system.clone(), max_seq_len: cfg.max_seq_len, ..Default::default() };
        let r = eval::evaluate_task(
            &m.model,
            &m.tokenizer,
            Some(&adapter),
            &task_name(&a.data),
            kind,
            &labels,
            &recs,
            &eo,
            &mut |_, _| {},
        )?;
        println!("held-out: {} examples", r.examples);
        print_table(&[r.clone()]);
        multitune::checkpoint::write_atomic(&a.out.join("eval.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(())
}

fn cmd_generate(cli: &Cli, a: &GenerateArgs, device: &Device) -> anyhow::Result<()> {
    let m = load(&a.model.model, cli, device)?;
    let adapter = a.adapter.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?;
    let cfg =
        GenerateConfig { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    use std::io::Write;
    let mut out = std::io::stdout();
    generate::generate_text(
        &m.model,
        &m.tokenizer,
        adapter.as_ref(),
        a.system.as_deref(),
        &a.prompt,
        &cfg,
        &mut |s| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        },
    )?;
    println!();
    Ok(())
}

fn fmt_est(e: &Estimate, pct: bool) -> String {
    if pct {
        format!("{:.1} [{:.1}, {:.1}]", 100.0 * e.value, 100.0 * e.lo, 100.0 * e.hi)
    } else {
        format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi)
    }
}

fn print_table(rows: &[TaskEval]) {
    println!(
        "{:<16} {:<14} {:>5}  {:<34} {:<34} {:<24}",
        "task", "kind", "n", "metrics (% with 95% CI)", "", "loss [95% CI]"
    );
    for r in rows {
        let kind = match r.kind {
            TaskKind::Classification => "classification",
            TaskKind::Generation => "generation",
        };
        let ms: Vec<String> = r.metrics.iter().map(|(n, e)| format!("{n} {}", fmt_est(e, true))).collect();
        println!(
            "{:<16} {:<14} {:>5}  {:<34} {:<34} {:<24}",
            r.task,
            kind,
            r.examples,
            ms.first().cloned().unwrap_or_default(),
            ms[1..].join("  "),
            fmt_est(&r.loss, false)
        );
    }
}

fn cmd_eval(cli: &Cli, a: &EvalArgs, device: &Device) -> anyhow::Result<()> {
    let opts = a.data_opts.options()?;
    let sets: Vec<(PathBuf, dataset::Dataset)> =
        a.data.iter().map(|p| Ok((p.clone(), dataset::load(p, &opts)?))).collect::<anyhow::Result<_>>()?;
    let m = load(&a.model.model, cli, device)?;
    let adapter = a.adapter.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?;
    let eo = EvalOptions {
        system: a.system.clone(),
        max_seq_len: opts.limits.max_tokens,
        batch_size: a.batch_size,
        length_normalise: a.length_normalise,
        bootstrap: a.bootstrap,
        seed: 0,
    };
    let total: usize = sets.iter().map(|(_, d)| d.records.len()).sum();
    let pb = bar(total as u64, "{spinner} scoring {bar:30} {pos}/{len}  ETA {eta}");
    let mut results = Vec::new();
    let mut done = 0;
    for (p, d) in &sets {
        let r = eval::evaluate_task(
            &m.model,
            &m.tokenizer,
            adapter.as_ref(),
            &task_name(p),
            d.kind,
            &d.labels,
            &d.records,
            &eo,
            &mut |k, _| pb.set_position((done + k) as u64),
        )?;
        done += d.records.len();
        results.push(r);
    }
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(());
    }
    if a.show {
        for r in &results {
            for p in &r.predictions {
                println!(
                    "{} [{}] {:?} -> {:?} (want {:?})",
                    if p.correct { "✓" } else { "✗" },
                    r.task,
                    p.prompt,
                    p.output,
                    p.reference
                );
            }
        }
    }
    print_table(&results);
    for r in &results {
        if let Some(c) = &r.confusion {
            println!("\n{}: confusion (rows: reference, columns: predicted)", r.task);
            println!("{:>16} {}", "", c.labels.iter().map(|l| format!("{l:>12}")).collect::<String>());
            for (l, row) in c.labels.iter().zip(&c.counts) {
                println!("{l:>16} {}", row.iter().map(|n| format!("{n:>12}")).collect::<String>());
            }
        }
    }
    Ok(())
}

fn cmd_compare(cli: &Cli, a: &CompareArgs, device: &Device) -> anyhow::Result<()> {
    use multitune::strategy::{self, CompareConfig, CompareEvent, Mixing, SequentialVariant, StrategySpec, TaskData};
    let mixing = Mixing::parse(&a.mixing)
        .with_context(|| format!("unknown mixing `{}` (proportional, uniform, temperature:T)", a.mixing))?;
    let mut specs = Vec::new();
    for s in a.strategies.split(',').map(str::trim) {
        match s {
            "all" => specs.extend(StrategySpec::all().into_iter().map(|sp| match sp {
                StrategySpec::Combined { .. } => StrategySpec::Combined { mixing, task_tag: a.task_tag },
                StrategySpec::Sequential { variant, order, .. } => {
                    StrategySpec::Sequential { variant, order, replay: a.replay }
                }
                StrategySpec::MultiHead { .. } => StrategySpec::MultiHead { mixing, head_rank: a.rank },
                other => other,
            })),
            "combined" => specs.push(StrategySpec::Combined { mixing, task_tag: a.task_tag }),
            "sequential" => specs.push(StrategySpec::Sequential {
                variant: SequentialVariant::Continue,
                order: vec![],
                replay: a.replay,
            }),
            "sequential-merge" => specs.push(StrategySpec::Sequential {
                variant: SequentialVariant::MergeThenNew,
                order: vec![],
                replay: a.replay,
            }),
            "separate" => {
                specs.extend(StrategySpec::all().into_iter().filter(|s| matches!(s, StrategySpec::Separate { .. })))
            }
            "multi-head" => specs.push(StrategySpec::MultiHead { mixing, head_rank: a.rank }),
            other => {
                bail!("unknown strategy `{other}` (all, combined, sequential, sequential-merge, separate, multi-head)")
            }
        }
    }
    let opts =
        LoadOptions { limits: Limits { max_tokens: a.max_tokens, ..Limits::default() }, ..LoadOptions::default() };
    let mut tasks = Vec::new();
    for p in &a.tasks {
        let name = task_name(p);
        let beside = p.parent().unwrap_or(Path::new(".")).join("eval").join(p.file_name().unwrap_or_default());
        let eval_file =
            a.eval_dir.as_ref().map(|d| d.join(format!("{name}.jsonl"))).or_else(|| beside.exists().then_some(beside));
        tasks.push(TaskData::load(&name, p, eval_file.as_deref(), &opts, a.eval_split, a.seed, a.eval_limit)?);
    }
    let m = load(&a.model.model, cli, device)?;
    let train = TrainConfig {
        lora: multitune::LoraConfig { rank: a.rank, alpha: 2.0 * a.rank as f64, ..Default::default() },
        learning_rate: a.lr,
        batch_size: a.batch_size,
        max_seq_len: a.max_tokens,
        seed: a.seed,
        checkpoint_every: 0,
        ..Default::default()
    };
    let cfg = CompareConfig {
        strategies: specs,
        budget_tokens: a.budget_tokens,
        train,
        eval: EvalOptions { max_seq_len: a.max_tokens, bootstrap: a.bootstrap, seed: a.seed, ..Default::default() },
        seeds: a.seeds.clone(),
    };
    std::fs::create_dir_all(&a.out)?;
    let bars = indicatif::MultiProgress::new();
    let mut current: Option<ProgressBar> = None;
    let control = strategy::Control::default();
    let report =
        strategy::compare(&m.model, &m.tokenizer, &m.base_name, &tasks, &cfg, &a.out, control, &mut |ev| match ev {
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
            CompareEvent::RunFinished { wall_s, .. } => {
                if let Some(pb) = current.take() {
                    pb.finish_with_message(format!("done in {wall_s:.0}s"));
                }
            }
            _ => {}
        })?;
    println!("{}", report.markdown());
    println!("report: {}", a.out.join("report.md").display());
    Ok(())
}

fn cmd_data_check(cli: &Cli, a: &DataCheckArgs, device: &Device) -> anyhow::Result<bool> {
    let opts = a.data_opts.options()?;
    let ds = match dataset::load(&a.file, &opts) {
        Ok(d) => d,
        Err(multitune::Error::Dataset(rej)) => {
            println!("{rej}");
            return Ok(false);
        }
        Err(e) => return Err(e.into()),
    };
    let kind = match ds.kind {
        TaskKind::Classification => "classification",
        TaskKind::Generation => "generation",
    };
    println!("{}: {} examples, format {}, kind {kind}", a.file.display(), ds.records.len(), ds.format.name());
    if ds.kind == TaskKind::Classification {
        println!("labels ({}):", ds.labels.len());
        for (l, n) in ds.label_counts() {
            println!("  {l:<24} {n:>6}  {:>5.1}%", 100.0 * n as f64 / ds.records.len() as f64);
        }
    }
    if !a.no_tokens {
        let m = load(&a.model.model, cli, device)?;
        let (_, rep) = dataset::tokenize(&m.tokenizer, &ds.records, a.system.as_deref(), &opts.limits)?;
        println!(
            "tokens per example ({}): p50 {}  p90 {}  p99 {}  max {}",
            m.base_name,
            rep.percentile(0.5),
            rep.percentile(0.9),
            rep.percentile(0.99),
            rep.percentile(1.0)
        );
        if rep.truncated + rep.dropped > 0 {
            println!(
                "over {} tokens: {} would be truncated, {} dropped",
                opts.limits.max_tokens, rep.truncated, rep.dropped
            );
        }
    }
    for w in &ds.warnings {
        println!("warning: {w}");
    }
    if ds.warnings.is_empty() {
        println!("no warnings");
    }
    Ok(true)
}

fn cmd_bench_worker(cli: &Cli, a: &BenchWorkerArgs, device: &Device) -> anyhow::Result<()> {
    if a.mode == "peak" {
        let g = bench::matmul_peak_gflops(device)?;
        println!("{}", serde_json::json!({ "impl": "multitune", "matmul_gflops": g }));
        return Ok(());
    }
    let mode = match a.mode.as_str() {
        "train" => Mode::Train,
        "eval" => Mode::Eval,
        "rank" => Mode::Rank,
        m => bail!("unknown bench mode `{m}` (train, eval, rank, peak)"),
    };
    let path = a.workload.as_ref().context("--workload is required")?;
    let w: Workload = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let m = load(&a.model, cli, device)?;
    let r = bench::measure(&m.model, &w, mode)?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}

/// Runs one measurement in a child process (so that each has its own peak memory) and
/// parses the JSON it prints last.
fn bench_child(mut cmd: std::process::Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what} printed no JSON"))?;
    Ok(serde_json::from_str(line)?)
}

#[derive(serde::Serialize)]
struct BenchRow {
    model: String,
    workload: String,
    mode: Mode,
    padding_share: f64,
    /// Useful tokens (training/eval) or prompts (ranking) of the timed steps.
    units: usize,
    flops: Option<f64>,
    ours: Measurement,
    reference: Option<Measurement>,
}

fn cmd_bench(cli: &Cli, a: &BenchArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let threads = a.threads.max(1).to_string();
    let ours_cmd = |args: &[&str]| {
        let mut c = std::process::Command::new(&exe);
        c.env("RAYON_NUM_THREADS", &threads).arg("--models-dir").arg(&cli.models_dir).arg("--device").arg(&cli.device);
        c.arg("bench-worker").args(args);
        c
    };
    let ref_cmd = |py: &Path, args: &[&str]| {
        let mut c = std::process::Command::new(py);
        c.arg(&a.reference_script).arg("--threads").arg(&threads).args(args);
        c
    };
    let modes: Vec<Mode> = a
        .modes
        .split(',')
        .map(|m| match m.trim() {
            "train" => Ok(Mode::Train),
            "eval" => Ok(Mode::Eval),
            "rank" => Ok(Mode::Rank),
            m => bail!("unknown mode `{m}` in --modes (train, eval, rank)"),
        })
        .collect::<anyhow::Result<_>>()?;
    println!(
        "threads: {threads}, device: {}, matmul: {}, warm-up {} + {} timed steps",
        cli.device,
        multitune::blas::describe(),
        a.warmup,
        a.steps
    );
    let peak_ours = bench_child(ours_cmd(&["--model", "tiny", "--mode", "peak"]), "matmul peak")?["matmul_gflops"]
        .as_f64()
        .unwrap_or(f64::NAN);
    let mut peak = peak_ours;
    print!("f32 matmul peak: candle {peak_ours:.0} GFLOP/s");
    if let Some(py) = &a.reference {
        let v = bench_child(ref_cmd(py, &["--mode", "peak"]), "reference matmul peak")?;
        let p = v["matmul_gflops"].as_f64().unwrap_or(f64::NAN);
        print!(", torch {} (MKL) {p:.0} GFLOP/s", v["torch"].as_str().unwrap_or("?"));
        if let Some(o) = v["openblas_gflops"].as_f64() {
            print!(", numpy (OpenBLAS) {o:.0} GFLOP/s");
        }
        peak = peak.max(p);
    }
    println!("; MFU below is against {peak:.0} GFLOP/s (the best of these)");
    println!(
        "{:<8} {:<14} {:<6} {:>5} {:>6} {:>10} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8}",
        "model", "workload", "mode", "pad%", "saved%", "ours/s", "ref/s", "ratio", "MFU", "refMFU", "MiB", "refMiB"
    );
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for name in a.models.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let m = load(name, cli, &Device::Cpu)?;
        let hf_dir = cli.models_dir.join("bench").join(format!("{name}-hf"));
        if a.reference.is_some() && !hf_dir.join("model.safetensors").exists() {
            loader::save_hf_dir(&m.model, &m.tokenizer, &hf_dir)
                .with_context(|| format!("writing {} for the reference", hf_dir.display()))?;
        }
        let mut workloads: Vec<(Workload, Vec<Mode>)> = Vec::new();
        let lm_modes: Vec<Mode> = modes.iter().copied().filter(|&m| m != Mode::Rank).collect();
        for shape in a.shapes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (b, t) = shape
                .split_once('x')
                .and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)))
                .with_context(|| format!("shape `{shape}` is not BATCHxTOKENS"))?;
            workloads.push((Workload::synthetic(&m.model.cfg, b, t, a.warmup, a.steps, 0), lm_modes.clone()));
        }
        if !a.demo.is_empty() {
            let (lm, rank) = demo_workloads(&m, Path::new(&a.demo), a.warmup, a.steps)?;
            workloads.push((lm, lm_modes.clone()));
            if let Some(r) = rank.filter(|_| modes.contains(&Mode::Rank)) {
                workloads.push((r, vec![Mode::Rank]));
            }
        }
        for (w, wmodes) in &workloads {
            let file = match &a.save_workloads {
                Some(d) => {
                    std::fs::create_dir_all(d)?;
                    d.join(format!("{name}-{}.json", w.name.replace(':', "-")))
                }
                None => tmp.path().join("workload.json"),
            };
            std::fs::write(&file, serde_json::to_string(w)?)?;
            let file_s = file.to_string_lossy().to_string();
            for &mode in wmodes {
                let args = ["--model", name, "--workload", &file_s, "--mode", mode.name()];
                let what = format!("{name} {} {}", w.name, mode.name());
                let (mut ours_all, mut ref_all) = (Vec::new(), Vec::new());
                for _ in 0..a.rounds.max(1) {
                    ours_all.push(serde_json::from_value::<Measurement>(bench_child(ours_cmd(&args), &what)?)?);
                    if let Some(py) = &a.reference {
                        let dir = hf_dir.to_string_lossy().to_string();
                        let args = ["--model-dir", dir.as_str(), "--workload", &file_s, "--mode", mode.name()];
                        let v = bench_child(ref_cmd(py, &args), &format!("reference {what}"))?;
                        ref_all.push(serde_json::from_value::<Measurement>(v)?);
                    }
                }
                let ours = median_round(ours_all).context("no measurement")?;
                let reference = median_round(ref_all);
                let units = if mode == Mode::Rank { w.timed_prompts() } else { w.timed_tokens() };
                let row = BenchRow {
                    model: name.into(),
                    workload: w.name.clone(),
                    mode,
                    padding_share: if mode == Mode::Rank { 0.0 } else { w.padding_share() },
                    units,
                    flops: w.flops(&m.model.cfg, mode),
                    ours,
                    reference,
                };
                print_bench_row(&row, peak);
                rows.push(row);
            }
        }
    }
    println!(
        "ours/s, ref/s: useful (non-padding) tokens per second; rank: prompts per second with every label scored. \
         pad%: padding the reference computes. saved%: useful tokens ours did not recompute (prefixes shared within a batch). \
         MFU: matmul FLOPs per second / matmul peak; ours counts what it ran (`multitune::bench::packed_flops`), the reference the model FLOPs of the useful tokens (`item_flops`: its padding and logits at every position uncounted)."
    );
    if let Some(p) = &a.json {
        let all = serde_json::json!({ "threads": a.threads, "matmul_peak_gflops": peak, "candle_peak_gflops": peak_ours, "rows": rows });
        std::fs::write(p, serde_json::to_string_pretty(&all)?)?;
        println!("figures written to {}", p.display());
    }
    Ok(())
}

/// The round with the median total time, its peak memory the highest of all rounds.
fn median_round(mut all: Vec<Measurement>) -> Option<Measurement> {
    let peak = all.iter().filter_map(|m| m.peak_rss_mib).reduce(f64::max);
    all.sort_by(|a, b| a.total_secs().total_cmp(&b.total_secs()));
    let mut m = all.get(all.len() / 2).cloned()?;
    m.peak_rss_mib = peak;
    Some(m)
}

fn print_bench_row(r: &BenchRow, peak: f64) {
    let rate = |m: &Measurement| r.units as f64 / m.total_secs();
    // Each implementation's MFU counts the FLOPs it really did (ours: packed, each shared
    // prefix once) when it reports them, else the model FLOPs of the useful tokens.
    let mfu = |m: &Measurement| m.flops.or(r.flops).map(|f| format!("{:.0}%", 100.0 * f / m.total_secs() / 1e9 / peak));
    // Share of the useful tokens our forward did not have to run (shared prefixes).
    let saved = match r.ours.computed_tokens {
        Some(c) if r.mode != Mode::Rank && r.units > 0 => format!("{:.1}", 100.0 * (1.0 - c as f64 / r.units as f64)),
        _ => "-".into(),
    };
    let mib = |m: &Measurement| m.peak_rss_mib.map_or("-".into(), |v| format!("{v:.0}"));
    let (ref_rate, ratio, ref_mfu, ref_mib) = match &r.reference {
        Some(x) => (
            format!("{:.1}", rate(x)),
            format!("{:.2}x", rate(&r.ours) / rate(x)),
            mfu(x).unwrap_or_else(|| "-".into()),
            mib(x),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    println!(
        "{:<8} {:<14} {:<6} {:>5.1} {:>6} {:>10.1} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8}",
        r.model,
        r.workload,
        r.mode.name(),
        100.0 * r.padding_share,
        saved,
        rate(&r.ours),
        ref_rate,
        ratio,
        mfu(&r.ours).unwrap_or_else(|| "-".into()),
        ref_mfu,
        mib(&r.ours),
        ref_mib
    );
}

/// The demo tasks as a training/eval workload (all tasks mixed, batch 8) and, if one
/// is a classification task, a ranking workload on its prompts.
fn demo_workloads(
    m: &LoadedModel,
    dir: &Path,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<(Workload, Option<Workload>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut examples = Vec::new();
    let mut rank = None;
    for f in &files {
        let d = dataset::load(f, &LoadOptions::default()).with_context(|| format!("loading {}", f.display()))?;
        let enc: Vec<_> = d
            .records
            .iter()
            .map(|r| multitune::data::encode(&m.tokenizer, r, None, 256))
            .collect::<multitune::Result<_>>()?;
        if d.kind == TaskKind::Classification && rank.is_none() {
            let labels = eval::label_token_ids(&m.tokenizer, &d.labels, None, 256)?;
            let prompts: Vec<Vec<u32>> =
                enc.iter().take((warmup + steps) * 8).map(|e| e.ids[..e.prompt_len].to_vec()).collect();
            let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            rank = Some(Workload::ranking(&format!("rank:{stem}"), prompts, labels, m.tokenizer.pad_id, 8, warmup));
        }
        examples.extend(enc);
    }
    let lm = Workload::from_examples("demo", &examples, m.tokenizer.pad_id, 8, warmup, steps, 0)?;
    Ok((lm, rank))
}

/// mimalloc keeps freed memory for reuse: the training step allocates and frees the same
/// large buffers every step, which glibc's allocator maps and unmaps each time (page
/// faults and zeroing measured at ~10% of an eval step).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    multitune::tune_runtime();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let device = loader::pick_device(&cli.device)?;
    match &cli.cmd {
        Cmd::FetchModel => {
            let p = fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
            println!("{}", p.display());
            Ok(())
        }
        Cmd::Train(a) => cmd_train(cli, a, &device),
        Cmd::Generate(a) => cmd_generate(cli, a, &device),
        Cmd::Eval(a) => cmd_eval(cli, a, &device),
        Cmd::Bench(a) => cmd_bench(cli, a),
        Cmd::BenchWorker(a) => cmd_bench_worker(cli, a, &device),
        Cmd::Compare(a) => cmd_compare(cli, a, &device),
        Cmd::Charts { report, out } => {
            let text = std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
            let r: multitune::strategy::Report =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
            for p in multitune::charts::write_charts(&r, out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Data(DataCmd::Check(a)) => {
            if !cmd_data_check(cli, a, &device)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::DemoData { out } => {
            for p in multitune::demo::write_demo(out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::ExportMerged { model, adapter, out } => {
            let m = load(&model.model, cli, &device)?;
            let ad = load_adapter(adapter, &m, &device)?;
            let merged = m.model.with_adapter_merged(&ad, 1.0)?;
            loader::save_hf_dir(&merged, &m.tokenizer, out)?;
            println!("merged model written to {}", out.display());
            Ok(())
        }
    }
}
