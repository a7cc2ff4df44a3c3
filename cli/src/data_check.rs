//! `multitune data check`: validate a dataset and print its summary (labels, token
//! lengths, warnings) or its problems by line.

use std::path::PathBuf;

use candle_core::Device;
use clap::{Args, Subcommand};

use super::{args, load, Cli};
use multitune::data::{self, TaskKind};

/// `multitune data …`.
#[derive(Subcommand)]
pub enum DataCmd {
    /// Validate a dataset and print its summary (exit code 1 on errors).
    Check(DataCheckArgs),
}

/// `multitune data check`.
#[derive(Args)]
pub struct DataCheckArgs {
    /// The file (JSONL or CSV).
    file: PathBuf,
    #[command(flatten)]
    data_opts: args::DataArgs,
    /// Model whose tokenizer measures lengths.
    #[command(flatten)]
    model: args::ModelArg,
    /// Skip token lengths (no model needed).
    #[arg(long)]
    no_tokens: bool,
    /// System prompt counted in token lengths.
    #[arg(long)]
    system: Option<String>,
}

impl DataCheckArgs {
    /// Prints the summary, or the problems (then returns `false`).
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<bool> {
        let opts = self.data_opts.options()?;
        let ds = match data::load(&self.file, &opts) {
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
        println!("{}: {} examples, format {}, kind {kind}", self.file.display(), ds.records.len(), ds.format.name());
        if ds.kind == TaskKind::Classification {
            println!("labels ({}):", ds.labels.len());
            for (l, n) in ds.label_counts() {
                println!("  {l:<24} {n:>6}  {:>5.1}%", 100.0 * n as f64 / ds.records.len() as f64);
            }
        }
        if !self.no_tokens {
            let m = load(&self.model.model, cli, device)?;
            let (_, rep) = data::tokenize(&m.tokenizer, &ds.records, self.system.as_deref(), &opts.limits)?;
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
}
