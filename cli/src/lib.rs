//! The `multitune` command line, shaped like candle's `llama2-c` example and ripgrep:
//! [`Cli`] parses, [`run`] dispatches, and each subcommand lives in its own module with
//! its `Args` and a `run`. Raw flags become validated engine settings in one place per
//! concern: [`args`] for the model and data flags every command shares, and each
//! command's `Args` for its own (`compare` goes through the engine's
//! [`multitune::strategy::spec`], like the server).

pub mod args;
mod bench;
pub mod compare;
mod data_check;
mod eval;
mod generate;
mod train;
pub mod worker;

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use multitune::model::gguf_write::{GgufOptions, GgufType};
use multitune::model::{LoadedModel, ModelSource};

/// The command line: global flags and one subcommand.
#[derive(Parser)]
#[command(name = "multitune", version, about = "Fine-tune one LLM for many tasks with LoRA and compare strategies")]
pub struct Cli {
    /// Folder holding the default model and other local models.
    #[arg(long, global = true, env = "MULTITUNE_MODELS", default_value = "models")]
    pub models_dir: PathBuf,
    /// Compute device: auto, cpu, cuda or cuda:N.
    #[arg(long, global = true, env = "MULTITUNE_DEVICE", default_value = "auto")]
    pub device: String,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Download the default model (SmolLM2-135M-Instruct GGUF) and a current OpenBLAS
    /// (PyPI's `scipy-openblas32`, measured against the built-in gemm before use) into the
    /// models folder.
    FetchModel,
    /// Fine-tune a LoRA adapter on a JSONL file of {"prompt","completion"} rows.
    Train(train::TrainArgs),
    /// Answer a prompt with the model (and an adapter).
    Generate(generate::GenerateArgs),
    /// Score the model (and an adapter) on a held-out JSONL file.
    Eval(eval::EvalArgs),
    /// Train every strategy on several tasks under one token budget and compare them.
    Compare(compare::CompareArgs),
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
    Data(data_check::DataCmd),
    /// Say which engine computes the matrix products here (the built-in gemm or a BLAS),
    /// with the calibration figures behind the choice.
    Matmul {
        /// Measure on this model's shapes (default: the default model's, without loading it).
        #[arg(long)]
        model: Option<String>,
        /// Measure again, replacing the cached figures for this machine.
        #[arg(long)]
        remeasure: bool,
    },
    /// Measure training, eval and label-ranking throughput, MFU and peak memory, side
    /// by side with PyTorch + PEFT when `--reference` names its Python.
    Bench(bench::BenchArgs),
    /// One bench measurement (run by `bench` in a child process).
    #[command(hide = true)]
    BenchWorker(bench::BenchWorkerArgs),
    /// Write the demo task files (reproducible) into a folder.
    DemoData {
        /// Output folder.
        #[arg(long, default_value = "assets/demo")]
        out: PathBuf,
    },
    /// Take jobs from a distributed queue (PostgreSQL) and run them on this machine's
    /// device, until stopped.
    Worker(worker::WorkerArgs),
    /// What an adapter keeps of the base model, on the retention probe (120 varied
    /// prompts answered once by the base model, greedy): the share of prompts still
    /// answered exactly as the base model does, and the mean per-token KL divergence from
    /// the base model along its answers.
    Retention {
        /// The base model.
        #[command(flatten)]
        model: args::ModelArg,
        /// The adapter folder (PEFT layout).
        #[arg(long)]
        adapter: PathBuf,
        /// Also write the probe as measured (every prompt and base answer as token ids)
        /// and the figures, as JSON: what `bench/check_retention.py` recomputes with
        /// transformers and PEFT.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write the base model with an adapter merged in, as a Hugging Face folder.
    ExportMerged {
        /// The base model, the adapter and the output folder.
        #[command(flatten)]
        export: args::ExportArgs,
    },
    /// Write the base model with an adapter merged in as a GGUF file (llama.cpp, Ollama,
    /// LM Studio), the adapter as a llama.cpp LoRA GGUF for the base GGUF, and an Ollama
    /// Modelfile for each. The base must be a GGUF model (the default model is one).
    ExportGguf {
        /// The base model, the adapter and the output folder.
        #[command(flatten)]
        export: args::ExportArgs,
        /// Weight type of the merged model: f16 or q8_0.
        #[arg(long = "type", default_value = "f16")]
        ty: String,
        /// The Modelfiles' system prompt (default: the chat template's own, as in training).
        #[arg(long)]
        system: Option<String>,
    },
}

/// Loads model `spec` (fetching the default model if it is missing).
fn load(spec: &str, cli: &Cli, device: &Device) -> anyhow::Result<LoadedModel> {
    let source = ModelSource::parse(spec)?;
    if source == ModelSource::Default && !multitune::model::fetch::default_model_path(&cli.models_dir).exists() {
        eprintln!("the default model is not in {}; fetching it", cli.models_dir.display());
        multitune::model::fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
    }
    let m = multitune::model::load_model(&source, &cli.models_dir, device, false)
        .with_context(|| format!("loading model `{spec}`"))?;
    Ok(m)
}

/// Loads a PEFT adapter folder for `m`.
fn load_adapter(dir: &Path, m: &LoadedModel, device: &Device) -> anyhow::Result<multitune::LoraAdapter> {
    multitune::adapter::peft::load_adapter(dir, &m.model.cfg, device)
        .with_context(|| format!("loading adapter {}", dir.display()))
}

/// A progress bar with `template`.
fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    pb
}

/// A task's name on the command line: its file's name, as the server names uploads.
fn task_name(p: &Path) -> String {
    multitune::data::task_name(&p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
}

/// Parses the process's arguments and runs them; prints an error and exits 1 on
/// failure.
pub fn main() {
    multitune::tune_runtime();
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs the command `cli` names.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let device = multitune::model::pick_device(&cli.device)?;
    multitune::kernels::blas::look_in(&cli.models_dir);
    match &cli.cmd {
        Cmd::FetchModel => {
            let p = multitune::model::fetch::fetch_default_model(&cli.models_dir, &mut |m| eprintln!("{m}"))?;
            println!("{}", p.display());
            // The BLAS is a speed-up, not a need: without it the built-in gemm runs.
            match multitune::model::fetch::fetch_blas(&cli.models_dir, &mut |m| eprintln!("{m}")) {
                Ok(Some(lib)) => println!("{}", lib.display()),
                Ok(None) => {}
                Err(e) => eprintln!("warning: {e}; the built-in gemm (and any system BLAS) computes the products"),
            }
            Ok(())
        }
        Cmd::Matmul { model, remeasure } => {
            use multitune::kernels::blas;
            if *remeasure {
                blas::remeasure();
            }
            // The engines for this model's shapes (the default model's without `--model`).
            let s = match model {
                Some(spec) => {
                    drop(load(spec, cli, &Device::Cpu)?);
                    blas::latest().context("loading a model on the CPU selects its engines")?
                }
                None => blas::select(&cli.models_dir, blas::Dims::DEFAULT),
            };
            println!("products of more than {} rows: {}", blas::FEW_ROWS, blas::engine_name(s.many_rows));
            println!("products of up to {} rows: {}", blas::FEW_ROWS, blas::engine_name(s.few_rows));
            let d = s.dims;
            println!("why: {} (shapes of hidden {}, MLP {}, key/value {})", s.how, d.hidden, d.intermediate, d.kv);
            for f in &s.figures {
                println!(
                    "  {:<50} {:>7.1} GFLOP/s many rows  {:>7.1} GFLOP/s few rows",
                    f.engine, f.many_rows_gflops, f.few_rows_gflops
                );
            }
            Ok(())
        }
        Cmd::Train(a) => a.run(cli, &device),
        Cmd::Generate(a) => a.run(cli, &device),
        Cmd::Eval(a) => a.run(cli, &device),
        Cmd::Bench(a) => a.run(cli),
        Cmd::BenchWorker(a) => a.run(cli, &device),
        Cmd::Compare(a) => a.run(cli, &device),
        Cmd::Worker(a) => a.run(cli, &device),
        Cmd::Charts { report, out } => {
            let text = std::fs::read_to_string(report).with_context(|| format!("reading {}", report.display()))?;
            let r: multitune::strategy::Report =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", report.display()))?;
            for p in multitune::strategy::charts::write_charts(&r, out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Data(data_check::DataCmd::Check(a)) => {
            if !a.run(cli, &device)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::DemoData { out } => {
            for p in multitune::data::demo::write_demo(out)? {
                println!("{}", p.display());
            }
            Ok(())
        }
        Cmd::Retention { model, adapter, json } => {
            use multitune::eval::retention::{probe_prompts, Probe};
            let m = load(&model.model, cli, &device)?;
            let ad = load_adapter(adapter, &m, &device)?;
            let probe = Probe::answer(&m.model, &m.tokenizer, None, &probe_prompts()?)?;
            let k = probe.measure(&m.model, &m.model, Some(&ad))?;
            let (answered, measured) = (probe.answer_s, k.seconds);
            let same = (k.same_answer * k.prompts as f64).round();
            println!(
                "{}: {same} of {} probe prompts answered as the base model does ({:.1}%); KL from the base model {:.4} nats per answer token",
                adapter.display(),
                k.prompts,
                100.0 * k.same_answer,
                k.kl
            );
            eprintln!(
                "the base model's answers {answered:.1} s (kept in the cache folder), this measurement {measured:.1} s"
            );
            if let Some(path) = json {
                let examples: Vec<serde_json::Value> = probe
                    .examples
                    .iter()
                    .zip(&probe.stopped)
                    .map(|(e, s)| serde_json::json!({"ids": e.ids, "prompt_len": e.prompt_len, "stopped": s}))
                    .collect();
                let v = serde_json::json!({
                    "examples": examples, "stop": probe.stop, "kl": k.kl, "same_answer": k.same_answer, "prompts": k.prompts
                });
                std::fs::write(path, serde_json::to_vec(&v)?).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        Cmd::ExportMerged { export: args::ExportArgs { model, adapter, out } } => {
            let m = load(&model.model, cli, &device)?;
            let ad = load_adapter(adapter, &m, &device)?;
            let merged = m.model.with_adapter_merged(&ad, 1.0)?;
            multitune::model::save_hf_dir(&merged, &m.tokenizer, out)?;
            println!("merged model written to {}", out.display());
            Ok(())
        }
        Cmd::ExportGguf { export: args::ExportArgs { model, adapter, out }, ty, system } => {
            let ty = GgufType::parse(ty).ok_or_else(|| anyhow::anyhow!("--type `{ty}`: use f16 or q8_0"))?;
            let source = ModelSource::parse(&model.model)?;
            let Some(base) = source.gguf_file(&cli.models_dir) else {
                anyhow::bail!(
                    "GGUF export needs a GGUF base model (the default model, or --model FILE.gguf), whose tokenizer and chat template it carries; for `{}`, export-merged writes a Hugging Face folder that llama.cpp's convert_hf_to_gguf.py converts",
                    model.model
                );
            };
            let m = load(&model.model, cli, &device)?;
            let ad = load_adapter(adapter, &m, &device)?;
            let name = format!("{} + {}", m.base_name, adapter.file_name().unwrap_or_default().to_string_lossy());
            let opts = GgufOptions { ty, name, system: system.clone() };
            let pb = bar(0, "{spinner} [{elapsed_precise}] {msg}");
            pb.set_message(format!("merging and writing {} GGUF files", ty.name()));
            pb.enable_steady_tick(std::time::Duration::from_millis(200));
            let e = multitune::model::gguf_write::export(&m.model, &m.tokenizer, &ad, &base, out, &opts)?;
            pb.finish_and_clear();
            for p in std::iter::once(&e.model).chain(&e.adapter).chain(&e.modelfiles) {
                let size = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                println!("{}  ({:.1} MB)", p.display(), size as f64 / 1e6);
            }
            println!(
                "run it: llama-cli -m {} | ollama create NAME -f {}",
                e.model.display(),
                e.modelfiles[0].display()
            );
            Ok(())
        }
    }
}
