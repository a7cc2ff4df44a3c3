//! The `multitune` command line: fetch the default model, fine-tune a LoRA adapter,
//! generate, evaluate, benchmark.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use multitune::bench::{self, BenchShape};
use multitune::data;
use multitune::eval;
use multitune::fetch;
use multitune::generate::{self, GenerateConfig};
use multitune::loader::{self, LoadedModel, ModelSource};
use multitune::lora;
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
    /// Print training and eval throughput and peak memory.
    Bench(BenchArgs),
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
struct TrainArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Training data (JSONL, {"prompt","completion"} per line).
    #[arg(long)]
    data: PathBuf,
    /// Held-out data scored after training.
    #[arg(long)]
    eval_data: Option<PathBuf>,
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
    /// Longest example, in tokens.
    #[arg(long)]
    max_seq_len: Option<usize>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Checkpoint every N steps (0: only at the end).
    #[arg(long)]
    checkpoint_every: Option<usize>,
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
    /// Held-out data (JSONL, {"prompt","completion"} per line).
    #[arg(long)]
    data: PathBuf,
    /// System prompt for chat models.
    #[arg(long)]
    system: Option<String>,
    /// Batch size.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Longest example, in tokens.
    #[arg(long, default_value_t = 256)]
    max_seq_len: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Print every prediction.
    #[arg(long)]
    show: bool,
}

#[derive(Args)]
struct BenchArgs {
    /// Models to measure, comma-separated.
    #[arg(long, default_value = "tiny,default")]
    models: String,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 64)]
    seq: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 5)]
    steps: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn pick_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            #[cfg(feature = "cuda")]
            if let Ok(d) = Device::new_cuda(0) {
                return Ok(d);
            }
            Ok(Device::Cpu)
        }
        s if s.starts_with("cuda") => {
            let n: usize = s.strip_prefix("cuda:").map(str::parse).transpose().context("device index")?.unwrap_or(0);
            #[cfg(feature = "cuda")]
            {
                return Ok(Device::new_cuda(n)?);
            }
            #[cfg(not(feature = "cuda"))]
            bail!("device `cuda:{n}` needs a build with `--features cuda`")
        }
        other => bail!("unknown device `{other}` (auto, cpu, cuda[:N])"),
    }
}

fn load(spec: &str, cli: &Cli, device: &Device) -> anyhow::Result<LoadedModel> {
    let source = ModelSource::parse(spec)?;
    if source == ModelSource::Default && !fetch::default_model_path(&cli.models_dir).exists() {
        eprintln!("the default model is not in {}; fetching it", cli.models_dir.display());
        fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
    }
    let m = loader::load_model(&source, &cli.models_dir, device, false).with_context(|| format!("loading model `{spec}`"))?;
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
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => TrainConfig::default(),
    };
    if let Some(v) = a.steps { cfg.max_steps = Some(v) }
    if let Some(v) = a.epochs { cfg.epochs = v; cfg.max_steps = a.steps }
    if let Some(v) = a.batch_size { cfg.batch_size = v }
    if let Some(v) = a.grad_accum { cfg.grad_accum = v }
    if let Some(v) = a.lr { cfg.learning_rate = v }
    if let Some(v) = a.max_seq_len { cfg.max_seq_len = v }
    if let Some(v) = a.seed { cfg.seed = v }
    if let Some(v) = a.checkpoint_every { cfg.checkpoint_every = v }
    let mut lora_cfg = cfg.lora.clone();
    if let Some(v) = a.rank { lora_cfg.rank = v }
    if let Some(v) = a.alpha { lora_cfg.alpha = v }
    if let Some(v) = a.dropout { lora_cfg.dropout = v }
    if let Some(t) = &a.targets { lora_cfg.targets = lora::parse_targets(t)? }
    cfg.lora = lora_cfg;
    cfg.validate()?;

    let m = load(&a.model.model, cli, device)?;
    let records = data::read_jsonl(&a.data)?;
    let examples = train::encode_all(&m.tokenizer, &records, a.system.as_deref(), cfg.max_seq_len)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ckpt = CheckpointPlan { path: train::checkpoint_path(&a.out), resume: a.resume };
    if !a.resume && ckpt.path.exists() {
        bail!("{} already holds a checkpoint: pass --resume to continue it, or choose another --out", a.out.display());
    }
    let mut adapter = multitune::LoraAdapter::new(&m.model.cfg, cfg.lora.clone(), cfg.seed, device)?;
    let run_info = serde_json::json!({ "model": a.model.model, "base_model": m.base_name, "data": a.data, "system": a.system, "train": cfg });
    multitune::checkpoint::write_atomic(&a.out.join("train_config.json"), serde_json::to_string_pretty(&run_info)?.as_bytes())?;
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
    multitune::checkpoint::write_atomic(&a.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    let first = summary.losses.first().copied().unwrap_or(f64::NAN);
    let last = summary.losses.last().copied().unwrap_or(f64::NAN);
    println!(
        "done: {} steps, {} tokens in {:.1}s, loss {first:.4} -> {last:.4}; adapter in {}",
        summary.steps,
        summary.tokens,
        summary.wall_s,
        a.out.display()
    );
    if let Some(eval_path) = &a.eval_data {
        let recs = data::read_jsonl(eval_path)?;
        let r = eval::evaluate(&m.model, &m.tokenizer, Some(&adapter), &recs, a.system.as_deref(), cfg.max_seq_len, 16, &mut |_, _| {})?;
        println!("held-out: {} examples, loss {:.4}, perplexity {:.2}, exact match {:.1}%", r.examples, r.loss, r.perplexity, 100.0 * r.exact_match);
        multitune::checkpoint::write_atomic(&a.out.join("eval.json"), serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(())
}

fn cmd_generate(cli: &Cli, a: &GenerateArgs, device: &Device) -> anyhow::Result<()> {
    let m = load(&a.model.model, cli, device)?;
    let adapter = a.adapter.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?;
    let cfg = GenerateConfig { max_new_tokens: a.max_new_tokens, temperature: a.temperature, top_p: a.top_p, seed: a.seed };
    use std::io::Write;
    let mut out = std::io::stdout();
    generate::generate_text(&m.model, &m.tokenizer, adapter.as_ref(), a.system.as_deref(), &a.prompt, &cfg, &mut |s| {
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    })?;
    println!();
    Ok(())
}

fn cmd_eval(cli: &Cli, a: &EvalArgs, device: &Device) -> anyhow::Result<()> {
    let m = load(&a.model.model, cli, device)?;
    let adapter = a.adapter.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?;
    let recs = data::read_jsonl(&a.data)?;
    let pb = bar(recs.len() as u64, "{spinner} scoring {bar:30} {pos}/{len}  ETA {eta}");
    let r = eval::evaluate(&m.model, &m.tokenizer, adapter.as_ref(), &recs, a.system.as_deref(), a.max_seq_len, a.batch_size, &mut |done, _| {
        pb.set_position(done as u64)
    })?;
    pb.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if a.show {
        for p in &r.predictions {
            println!("{} {:?} -> {:?} (want {:?})", if p.correct { "✓" } else { "✗" }, p.prompt, p.output, p.reference);
        }
    }
    let name = a.data.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    println!("{:<20} {:>8} {:>10} {:>11} {:>12}", "task", "examples", "loss", "perplexity", "exact match");
    println!("{:<20} {:>8} {:>10.4} {:>11.2} {:>11.1}%", name, r.examples, r.loss, r.perplexity, 100.0 * r.exact_match);
    Ok(())
}

fn cmd_bench(cli: &Cli, a: &BenchArgs, device: &Device) -> anyhow::Result<()> {
    let shape = BenchShape { batch: a.batch, seq: a.seq, warmup: 2, steps: a.steps };
    let mut all = Vec::new();
    println!("threads: {}  device: {:?}  shape: batch {} x {} tokens, {} timed steps (median)", candle_core::utils::get_num_threads(), device, a.batch, a.seq, a.steps);
    println!("{:<10} {:>12} {:>10} {:>14} {:>12} {:>14} {:>12} {:>10}", "model", "params", "lora", "train tok/s", "train ms", "eval tok/s", "eval ms", "peak MiB");
    for name in a.models.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let m = load(name, cli, device)?;
        let f = bench::bench_model(&m.model, name, shape)?;
        println!(
            "{:<10} {:>12} {:>10} {:>14.0} {:>12.1} {:>14.0} {:>12.1} {:>10.0}",
            f.model, f.params, f.trainable, f.train_tokens_per_s, f.train_step_ms, f.eval_tokens_per_s, f.eval_step_ms, f.peak_rss_mib.unwrap_or(f64::NAN)
        );
        all.push(f);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let device = pick_device(&cli.device)?;
    match &cli.cmd {
        Cmd::FetchModel => {
            let p = fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
            println!("{}", p.display());
            Ok(())
        }
        Cmd::Train(a) => cmd_train(cli, a, &device),
        Cmd::Generate(a) => cmd_generate(cli, a, &device),
        Cmd::Eval(a) => cmd_eval(cli, a, &device),
        Cmd::Bench(a) => cmd_bench(cli, a, &device),
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
