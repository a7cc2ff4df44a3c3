//! [`TrainConfig`]: every knob of a training run, its defaults (as PEFT and
//! `transformers` users expect), validation, and the schedule's length.

use serde::{Deserialize, Serialize};

use crate::model::lora::LoraConfig;
use crate::train::optim::AdamWConfig;
use crate::{Error, Result};

/// Every knob of a training run; stored as JSON beside its outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The adapter's shape.
    pub lora: LoraConfig,
    /// Peak learning rate.
    pub learning_rate: f64,
    /// Fraction of steps spent warming up.
    pub warmup_ratio: f64,
    /// AdamW settings.
    pub adamw: AdamWConfig,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Passes over the data (used when `max_steps` is unset).
    pub epochs: f64,
    /// Optimizer steps; overrides `epochs`.
    pub max_steps: Option<usize>,
    /// Longest example in tokens (longer ones are truncated from the prompt's start).
    pub max_seq_len: usize,
    /// Seed of initialisation, data order and dropout.
    pub seed: u64,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
    /// Stop once this many real (non-padding) tokens have been trained on; overrides
    /// `max_steps` and `epochs`. The schedule is sized from the mean example length.
    pub token_budget: Option<usize>,
    /// LoRA+ (Hayou et al.; PEFT's `create_loraplus_optimizer`): every B factor trains
    /// at this multiple of the learning rate (`None`: the same rate as A).
    pub lora_plus: Option<f64>,
    /// Batch examples of similar length together (see [`crate::train::batch_indices`]). Off by
    /// default: where length goes with the label (a label's tokens are part of the
    /// length), grouped batches are nearly single-label and learning suffers (seen on a
    /// toy classification task: chance accuracy with grouping, 100% without).
    pub group_by_length: bool,
}

impl Default for TrainConfig {
    /// The contract's defaults ([`multitune_api::defaults`]) where a comparison sets the
    /// same knob; PEFT's and `transformers`' for the rest.
    fn default() -> Self {
        use multitune_api::defaults;
        Self {
            lora: LoraConfig::default(),
            learning_rate: defaults::LEARNING_RATE,
            warmup_ratio: 0.05,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            batch_size: defaults::BATCH_SIZE,
            grad_accum: 1,
            epochs: 1.0,
            max_steps: None,
            max_seq_len: defaults::MAX_TOKENS,
            seed: defaults::SEED,
            checkpoint_every: defaults::CHECKPOINT_EVERY,
            token_budget: None,
            lora_plus: None,
            group_by_length: false,
        }
    }
}

impl TrainConfig {
    /// Checks ranges, naming the parameter that is wrong.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        let bad = |m: String| Err(Error::Invalid(m));
        if !(self.learning_rate > 0.0 && self.learning_rate < 1.0) {
            return bad(format!("learning rate {} must be in (0, 1)", self.learning_rate));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!("warmup ratio {} must be in [0, 1)", self.warmup_ratio));
        }
        if self.batch_size == 0 || self.grad_accum == 0 {
            return bad("batch size and gradient accumulation must be at least 1".into());
        }
        if self.max_steps.is_none() && (self.epochs.is_nan() || self.epochs <= 0.0) {
            return bad(format!("epochs {} must be positive", self.epochs));
        }
        if self.max_steps == Some(0) {
            return bad("max steps must be at least 1".into());
        }
        if let Some(r) = self.lora_plus.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return bad(format!("lora_plus: the B factors' learning-rate ratio must be positive, not {r}"));
        }
        if self.max_seq_len < 8 {
            return bad(format!("max sequence length {} is too short (at least 8)", self.max_seq_len));
        }
        Ok(())
    }

    /// Optimizer steps for `n` examples (of `mean_tokens` input tokens on average).
    pub fn total_steps(&self, n: usize, mean_tokens: f64) -> usize {
        if let Some(budget) = self.token_budget {
            let per_step = mean_tokens.max(1.0) * (self.batch_size * self.grad_accum) as f64;
            return ((budget as f64 / per_step).ceil() as usize).max(1);
        }
        self.max_steps
            .unwrap_or_else(|| ((self.epochs * n as f64) / (self.batch_size * self.grad_accum) as f64).ceil() as usize)
            .max(1)
    }

    /// Warm-up steps out of `total`.
    pub fn warmup_steps(&self, total: usize) -> usize {
        (self.warmup_ratio * total as f64).ceil() as usize
    }
}
