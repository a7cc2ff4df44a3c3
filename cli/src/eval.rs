//! `multitune eval`: score the model (and an adapter) on held-out files, one per task,
//! with the metric that fits each, and print the table.

use std::path::PathBuf;

use candle_core::Device;
use clap::Args;

use super::{args, bar, load, load_adapter, task_name, Cli};
use multitune::data::{self, TaskKind, TaskSpec};
use multitune::eval::metrics::Estimate;
use multitune::eval::{self, EvalOptions, TaskEval};

/// `multitune eval`: score held-out files, one per task.
#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: args::ModelArg,
    /// An adapter folder (PEFT layout).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Held-out data, one file per task (JSONL or CSV in any supported format).
    #[arg(long, num_args = 1.., required = true)]
    data: Vec<PathBuf>,
    #[command(flatten)]
    data_opts: args::DataArgs,
    /// System prompt for chat models.
    #[arg(long)]
    system: Option<String>,
    /// Most examples per batch of label ranking and loss (fewer when they are long).
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Most prompts decoded together in a generation task (fewer when prompts are long).
    #[arg(long, default_value_t = 64)]
    generation_batch: usize,
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

/// An estimate with its interval, as a percentage or plain.
fn fmt_est(e: &Estimate, pct: bool) -> String {
    if pct {
        format!("{:.1} [{:.1}, {:.1}]", 100.0 * e.value, 100.0 * e.lo, 100.0 * e.hi)
    } else {
        format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi)
    }
}

/// Prints one row per task: metrics with their 95% intervals, and the loss.
pub(super) fn print_table(rows: &[TaskEval]) {
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

impl EvalArgs {
    /// Scores every file and prints the table (or JSON, or every prediction).
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        let opts = self.data_opts.options()?;
        let sets: Vec<(PathBuf, data::Dataset)> =
            self.data.iter().map(|p| Ok((p.clone(), data::load(p, &opts)?))).collect::<anyhow::Result<_>>()?;
        let m = load(&self.model.model, cli, device)?;
        let adapter = self.adapter.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?;
        let eo = EvalOptions {
            system: self.system.clone(),
            max_seq_len: opts.limits.max_tokens,
            batch_size: self.batch_size,
            generation_batch: self.generation_batch,
            length_normalise: self.length_normalise,
            bootstrap: self.bootstrap,
            seed: 0,
            follow_only: false,
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
                &TaskSpec { name: task_name(p), kind: d.kind, labels: d.labels.clone() },
                &d.records,
                &eo,
                &mut |k, _| pb.set_position((done + k) as u64),
            )?;
            done += d.records.len();
            results.push(r);
        }
        pb.finish_and_clear();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&results)?);
            return Ok(());
        }
        if self.show {
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
}
