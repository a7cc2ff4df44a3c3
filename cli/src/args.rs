//! The flags several subcommands share, and the one place they become validated engine
//! settings: `--model`, and the data flags as [`LoadOptions`].

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use multitune::data::{Format, Limits, LoadOptions, OverlongPolicy, TaskKind};

/// `--model`: which base model.
#[derive(Args)]
pub struct ModelArg {
    /// `default`, `tiny`, `random:smollm2-135m` or `random:llama-1b` (random weights in
    /// that model's shape), a .gguf file or a Hugging Face model folder.
    #[arg(long, default_value = "default")]
    pub model: String,
}

/// What an export reads and where it writes: the base model, the adapter, the folder.
#[derive(Args)]
pub struct ExportArgs {
    /// The base model.
    #[command(flatten)]
    pub model: ModelArg,
    /// The adapter folder (PEFT layout).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
}

/// How a data file is read and limited: the flags every command that reads data shares.
#[derive(Args)]
pub struct DataArgs {
    /// Force the format: prompt-completion, alpaca, chat, sharegpt, text-label.
    #[arg(long)]
    pub format: Option<String>,
    /// Force the task kind: classification or generation.
    #[arg(long)]
    pub kind: Option<String>,
    /// Longest example in tokens.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// What to do with longer examples: truncate (the prompt's start) or drop.
    #[arg(long, default_value = "truncate")]
    pub overlong: String,
    /// Largest file accepted, bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    pub max_bytes: u64,
    /// Most rows accepted.
    #[arg(long, default_value_t = Limits::default().max_rows)]
    pub max_rows: usize,
    /// Longest field accepted, characters.
    #[arg(long, default_value_t = Limits::default().max_field_chars)]
    pub max_field_chars: usize,
    /// Most labels of a classification task.
    #[arg(long, default_value_t = Limits::default().max_labels)]
    pub max_labels: usize,
}

impl DataArgs {
    /// The validated load options (an unknown format, kind or policy is named).
    pub fn options(&self) -> anyhow::Result<LoadOptions> {
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

/// The adapter method named on the command line (`--method`), or an error listing the
/// methods.
pub fn adapter_method(flag: &str, name: &str) -> anyhow::Result<multitune_api::AdapterMethod> {
    multitune_api::AdapterMethod::parse(name).with_context(|| {
        let known: Vec<&str> = multitune_api::AdapterMethod::ALL.iter().map(|m| m.name()).collect();
        format!("{flag} `{name}`: use {}", known.join(", "))
    })
}
