//! `multitune generate`: answer one prompt with the model (and an adapter), streaming
//! the tokens.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use super::{args, load, load_adapter, Cli};
use multitune::eval::generate::{generate_text, GenerateConfig};
use multitune::strategy::heads::{Answer, MultiHead, HEADS_JSON};

/// `multitune generate`: answer a prompt.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: args::ModelArg,
    /// An adapter folder (PEFT layout), e.g. a `train --out` folder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The user message.
    #[arg(long)]
    prompt: String,
    /// With a multi-head run's adapter folder (one holding `heads.json`): answer through
    /// this task's head — a classifier prints its label probabilities, a generation task
    /// generates with its own LM head.
    #[arg(long)]
    task: Option<String>,
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

impl GenerateArgs {
    /// Streams the answer to stdout.
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        let m = load(&self.model.model, cli, device)?;
        let mut model = m.model.clone();
        let adapter = match (&self.adapter, &self.task) {
            (Some(dir), Some(task)) if dir.join(HEADS_JSON).exists() => {
                let mh =
                    MultiHead::load(dir, &m.model).with_context(|| format!("loading heads from {}", dir.display()))?;
                match mh.answer(&m.model, &m.tokenizer, task, self.system.as_deref(), &self.prompt)? {
                    Some(Answer::Labels(probs)) => {
                        for (label, p) in probs {
                            println!("{label:<24} {:>6.2}%", 100.0 * p);
                        }
                        return Ok(());
                    }
                    Some(Answer::Generate(with_head)) => model = *with_head,
                    None => bail!("{} has no head for task `{task}`", dir.display()),
                }
                Some(mh.adapter)
            }
            (_, Some(_)) => bail!("--task needs --adapter to name a multi-head run's folder (one with {HEADS_JSON})"),
            (dir, None) => dir.as_deref().map(|d| load_adapter(d, &m, device)).transpose()?,
        };
        let cfg = GenerateConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            ..Default::default()
        };
        let mut out = std::io::stdout();
        generate_text(&model, &m.tokenizer, adapter.as_ref(), self.system.as_deref(), &self.prompt, &cfg, &mut |s| {
            let _ = out.write_all(s.as_bytes());
            let _ = out.flush();
        })?;
        println!();
        Ok(())
    }
}
