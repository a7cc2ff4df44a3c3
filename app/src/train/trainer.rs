//! Supervised fine-tuning of a LoRA adapter: loss on completion tokens only, padded
//! batches, AdamW, warm-up + cosine schedule, gradient clipping and accumulation,
//! seeded data order, atomic checkpoints that resume bit-for-bit on CPU.
//!
//! Progress goes out as [`TrainEvent`]s through a callback; the trainer knows nothing
//! of terminals or HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::adapter::lora::{LoraAdapter, LoraConfig};
use crate::data::{self, Example};
use crate::model::{Forward, Llama};
use crate::ops;
use crate::persist;
use crate::rng::{self, streams};
use crate::train::optim::{self, AdamW, AdamWConfig};
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
    /// Batch examples of similar length together (see [`batch_indices`]). Off by
    /// default: where length goes with the label (a label's tokens are part of the
    /// length), grouped batches are nearly single-label and learning suffers (seen on a
    /// toy classification task: chance accuracy with grouping, 100% without).
    pub group_by_length: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lora: LoraConfig::default(),
            learning_rate: 2e-4,
            warmup_ratio: 0.05,
            adamw: AdamWConfig::default(),
            max_grad_norm: 1.0,
            batch_size: 8,
            grad_accum: 1,
            epochs: 1.0,
            max_steps: None,
            max_seq_len: 256,
            seed: 42,
            checkpoint_every: 50,
            token_budget: None,
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

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// 1-based step just finished.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Mean completion-token loss of the step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed in the step.
    pub tokens: usize,
    /// Throughput of this step, real tokens per second.
    pub tokens_per_s: f64,
    /// Seconds since the run (or its resumption) started.
    pub elapsed_s: f64,
}

/// Progress of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrainEvent {
    /// The run starts (or resumes at `start_step`).
    Started {
        /// Steps in the run.
        total_steps: usize,
        /// First step to run (0 unless resumed).
        start_step: usize,
        /// Trainable parameters.
        trainable_params: usize,
        /// Training examples.
        examples: usize,
    },
    /// A step finished.
    Step(StepStats),
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done at the checkpoint.
        step: usize,
        /// Where.
        path: PathBuf,
    },
}

/// The outcome of a finished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Steps taken in all.
    pub steps: usize,
    /// Loss of every step.
    pub losses: Vec<f64>,
    /// Real tokens trained on.
    pub tokens: usize,
    /// Tokens that carried loss.
    pub loss_tokens: usize,
    /// Wall time of this invocation.
    pub wall_s: f64,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Tokens trained on from each example (by index), over all passes.
    pub tokens_per_example: Vec<usize>,
}

/// Where a run keeps its checkpoint, and whether to continue from it.
#[derive(Debug, Clone)]
pub struct CheckpointPlan {
    /// The checkpoint file.
    pub path: PathBuf,
    /// Continue from it if it exists.
    pub resume: bool,
}

const CKPT_LORA: &str = "lora.";
const CKPT_OPTIM: &str = "optim.";

/// Optimizer steps per length-grouping window (see [`batch_indices`]).
pub const GROUP_WINDOW: usize = 16;

/// Lengths are compared in buckets of this many tokens when grouping.
pub const GROUP_BUCKET: usize = 8;

/// Which examples form micro-batch `micro` (global index) of a run whose optimizer
/// steps take `accum` micro-batches of `batch`: consecutive slices of a fresh seeded
/// permutation per epoch.
///
/// With `lengths`, the examples of each window of [`GROUP_WINDOW`] optimizer steps are
/// ordered by length bucket ([`GROUP_BUCKET`] tokens, longest first; the shuffled order
/// is kept inside a bucket, so a batch is not filled with look-alike examples) before
/// they are cut into steps, and the window's steps run in a seeded random order. Every
/// example is still seen once per epoch in a seeded order, rows of a batch have similar
/// lengths so little compute goes to padding (`group_by_length` in Hugging Face's
/// trainer), and a step holds the same examples whatever the split into micro-batches.
pub fn batch_indices(
    n: usize,
    (batch, accum): (usize, usize),
    micro: usize,
    seed: u64,
    cache: &mut HashMap<usize, Vec<usize>>,
    lengths: Option<&[usize]>,
) -> Vec<usize> {
    let mut at = |g: usize| {
        let epoch = g / n;
        let perm = cache
            .entry(epoch)
            .or_insert_with(|| rng::permutation(&mut rng::stream(seed, streams::DATA_ORDER, epoch as u64), n));
        perm[g % n]
    };
    let Some(lengths) = lengths else {
        return (0..batch).map(|i| at(micro * batch + i)).collect();
    };
    let accum = accum.max(1);
    let per_step = batch * accum;
    let (step, k) = (micro / accum, micro % accum);
    let window = step / GROUP_WINDOW;
    let first = window * GROUP_WINDOW * per_step;
    let mut members: Vec<usize> = (first..first + GROUP_WINDOW * per_step).map(&mut at).collect();
    // Stable: examples of one bucket keep their shuffled order.
    members.sort_by_key(|&i| std::cmp::Reverse(lengths[i].div_ceil(GROUP_BUCKET)));
    let order = rng::permutation(&mut rng::stream(seed, streams::GROUPING, window as u64), GROUP_WINDOW);
    let start = order[step % GROUP_WINDOW] * per_step + k * batch;
    members[start..start + batch].to_vec()
}

/// Mean completion-token loss of a batch and the number of tokens it averages.
pub fn batch_loss(model: &Llama, batch: &data::Batch, fwd: &Forward) -> Result<Tensor> {
    let (hidden, at) = batch_hidden(model, batch, fwd)?;
    // Logits only where the loss is taken: the LM head is the largest matmul of a
    // small model, and most positions of an SFT batch are prompt.
    let logits = model.logits(&hidden.index_select(&at, 0)?)?;
    ops::cross_entropy(&logits, &batch.targets)
}

/// Final hidden states of `batch`, flat `(N, hidden)`, and the rows of them whose next
/// token carries loss (in the order of `batch.targets`). Packed with shared prefixes
/// where the model can ([`Llama::can_pack`]): each distinct prefix runs once and no
/// padding runs at all; right-padded otherwise.
pub fn batch_hidden(model: &Llama, batch: &data::Batch, fwd: &Forward) -> Result<(Tensor, Tensor)> {
    if model.can_pack() {
        return Ok((model.packed_hidden_states(&batch.pack, fwd)?, batch.packed_loss_index.clone()));
    }
    let hidden = model.hidden_states(&batch.input_ids, &batch.mask, fwd, None)?;
    let (b, t, h) = hidden.dims3()?;
    Ok((hidden.reshape((b * t, h))?, batch.loss_index.clone()))
}

/// What a training run optimises: its variables, how they are named in a checkpoint, and
/// the loss of a batch. A plain LoRA adapter is one; the multi-head strategy's shared
/// adapter plus task heads is another.
pub trait Objective {
    /// Every trainable variable, in a fixed order.
    fn vars(&self) -> Vec<Var>;
    /// The variables' tensors by checkpoint name, in the order of [`Objective::vars`].
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
    /// How many loss terms a batch holds (its weight when micro-batches accumulate).
    fn loss_items(&self, batch: &data::Batch, _examples: &[usize]) -> usize {
        batch.loss_tokens
    }
    /// The mean loss of `batch`, built from the examples at indices `examples` (dropout
    /// seeded by `seed` and `micro`, the global micro-batch index).
    fn loss(&self, model: &Llama, batch: &data::Batch, examples: &[usize], seed: u64, micro: u64) -> Result<Tensor>;
}

impl Objective for LoraAdapter {
    fn vars(&self) -> Vec<Var> {
        LoraAdapter::vars(self)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        LoraAdapter::named_tensors(self)
    }

    fn loss(&self, model: &Llama, batch: &data::Batch, _examples: &[usize], seed: u64, micro: u64) -> Result<Tensor> {
        batch_loss(model, batch, &Forward::train(self, seed, micro))
    }
}

/// Trains `adapter` on `examples`. With a checkpoint plan, writes checkpoints
/// atomically and (if `resume`) continues exactly where the saved one stopped.
pub fn train(
    model: &Llama,
    adapter: &mut LoraAdapter,
    examples: &[Example],
    cfg: &TrainConfig,
    ckpt: Option<&CheckpointPlan>,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    if adapter.config != cfg.lora {
        return Err(Error::Invalid("adapter and training config disagree on the LoRA settings".into()));
    }
    train_objective(model, adapter, examples, cfg, ckpt, cancel, on_event)
}

/// Trains any [`Objective`] on `examples`: the loop behind [`train`].
pub fn train_objective(
    model: &Llama,
    adapter: &dyn Objective,
    examples: &[Example],
    cfg: &TrainConfig,
    ckpt: Option<&CheckpointPlan>,
    cancel: Option<&AtomicBool>,
    on_event: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainSummary> {
    cfg.validate()?;
    if examples.is_empty() {
        return Err(Error::Invalid("no training examples".into()));
    }
    let device = model.device().clone();
    let vars: Vec<Var> = adapter.vars();
    let mut opt = AdamW::new(&vars, cfg.adamw)?;
    let mean_tokens = examples.iter().map(|e| e.ids.len() - 1).sum::<usize>() as f64 / examples.len() as f64;
    let total = cfg.total_steps(examples.len(), mean_tokens);
    let warmup = cfg.warmup_steps(total);
    let mut start = 0;
    let mut losses = Vec::new();
    let (mut tokens, mut loss_tokens) = (0usize, 0usize);
    let mut resumed_per_example: Option<Vec<usize>> = None;
    if let Some(plan) = ckpt.filter(|p| p.resume && p.path.exists()) {
        let (tensors, meta) = persist::read_safetensors(&plan.path, &device)?;
        let saved: TrainConfig =
            serde_json::from_str(meta.get("train_config").map(String::as_str).unwrap_or("null"))
                .map_err(|e| Error::Adapter(format!("{}: no usable train_config: {e}", plan.path.display())))?;
        if &saved != cfg {
            return Err(Error::Invalid(format!(
                "{} was written with different training settings; resume with the same ones or start afresh",
                plan.path.display()
            )));
        }
        let named: Vec<(String, Tensor)> = adapter.named_tensors();
        for ((name, _), var) in named.iter().zip(&vars) {
            let t = tensors
                .get(&format!("{CKPT_LORA}{name}"))
                .ok_or_else(|| Error::Adapter(format!("checkpoint lacks `{name}`")))?;
            var.set(t)?;
        }
        start = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
        opt.load_state(|n| tensors.get(&format!("{CKPT_OPTIM}{n}")).cloned(), start)?;
        losses = meta.get("losses").and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default();
        tokens = meta.get("tokens").and_then(|s| s.parse().ok()).unwrap_or(0);
        loss_tokens = meta.get("loss_tokens").and_then(|s| s.parse().ok()).unwrap_or(0);
        resumed_per_example = meta.get("per_example").and_then(|s| serde_json::from_str(s).ok());
    }
    let trainable_params: usize = vars.iter().map(|v| v.elem_count()).sum();
    on_event(&TrainEvent::Started {
        total_steps: total,
        start_step: start,
        trainable_params,
        examples: examples.len(),
    });
    let began = Instant::now();
    let mut perms = HashMap::new();
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let mut per_example =
        resumed_per_example.filter(|v| v.len() == examples.len()).unwrap_or_else(|| vec![0usize; examples.len()]);
    let save = |step: usize,
                losses: &[f64],
                tokens: usize,
                loss_tokens: usize,
                per_example: &[usize],
                opt: &AdamW,
                adapter: &dyn Objective|
     -> Result<Option<PathBuf>> {
        let Some(plan) = ckpt else { return Ok(None) };
        let mut all: Vec<(String, Tensor)> =
            adapter.named_tensors().into_iter().map(|(n, t)| (format!("{CKPT_LORA}{n}"), t)).collect();
        all.extend(opt.state().into_iter().map(|(n, t)| (format!("{CKPT_OPTIM}{n}"), t)));
        let meta = HashMap::from([
            ("step".to_string(), step.to_string()),
            ("train_config".to_string(), serde_json::to_string(cfg)?),
            ("losses".to_string(), serde_json::to_string(losses)?),
            ("tokens".to_string(), tokens.to_string()),
            ("loss_tokens".to_string(), loss_tokens.to_string()),
            ("per_example".to_string(), serde_json::to_string(per_example)?),
        ]);
        persist::write_safetensors(&plan.path, &all, Some(meta))?;
        Ok(Some(plan.path.clone()))
    };
    let mut step = start;
    // With a token budget the loop runs until the budget is met (the schedule's length
    // is an estimate, so it may run a step or two past it, at the final learning rate).
    while step < total || cfg.token_budget.is_some_and(|b| tokens < b && step < 2 * total) {
        if cfg.token_budget.is_some_and(|b| tokens >= b) {
            break;
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let t0 = Instant::now();
        // Build the step's micro-batches first: the loss of each is weighted by its
        // share of the step's loss tokens, so accumulation equals one big batch.
        // With a token budget, the step that reaches it takes only what fits: whole
        // examples, then the next one cut from its prompt's start to fill the remainder
        // exactly (if at least its completion fits), so runs end on the budget.
        let mut room = cfg.token_budget.map(|b| b.saturating_sub(tokens));
        let mut owned: Vec<(Vec<Example>, Vec<usize>, usize)> = Vec::with_capacity(cfg.grad_accum);
        let mut used: Vec<(usize, usize)> = Vec::new();
        for k in 0..cfg.grad_accum {
            let idx = batch_indices(
                examples.len(),
                (cfg.batch_size, cfg.grad_accum),
                step * cfg.grad_accum + k,
                cfg.seed,
                &mut perms,
                cfg.group_by_length.then_some(lengths.as_slice()),
            );
            let mut part = Vec::with_capacity(idx.len());
            let from = used.len();
            for i in idx {
                let e = &examples[i];
                let n = e.ids.len() - 1;
                match room.as_mut() {
                    None => part.push(e.clone()),
                    Some(r) if n <= *r => {
                        *r -= n;
                        part.push(e.clone());
                    }
                    Some(r) => {
                        let cut = n - *r;
                        if *r > 0 && cut < e.prompt_len && e.extra_loss.is_empty() {
                            part.push(Example {
                                ids: e.ids[cut..].to_vec(),
                                prompt_len: e.prompt_len - cut,
                                extra_loss: vec![],
                            });
                            used.push((i, *r));
                            *r = 0;
                        }
                        continue;
                    }
                }
                used.push((i, n));
            }
            if !part.is_empty() {
                owned.push((part, used[from..].iter().map(|u| u.0).collect(), k));
            }
        }
        if owned.is_empty() {
            break;
        }
        for (i, n) in used {
            per_example[i] += n;
        }
        let batches: Vec<(data::Batch, &[usize], usize, usize)> = owned
            .iter()
            .map(|(part, idx, k)| {
                let b = data::make_batch(&part.iter().collect::<Vec<_>>(), 0, &device)?;
                let items = adapter.loss_items(&b, idx);
                Ok((b, idx.as_slice(), *k, items))
            })
            .collect::<Result<_>>()?;
        let step_loss_tokens: usize = batches.iter().map(|b| b.0.loss_tokens).sum();
        let step_items: usize = batches.iter().map(|b| b.3).sum();
        let step_tokens: usize = batches.iter().map(|b| b.0.tokens).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut step_loss = 0f64;
        for (batch, idx, k, items) in &batches {
            if *items == 0 {
                continue;
            }
            let loss = adapter.loss(model, batch, idx, cfg.seed, (step * cfg.grad_accum + k) as u64)?;
            let weight = *items as f64 / step_items.max(1) as f64;
            let weighted = (loss * weight)?;
            step_loss += weighted.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            let g = weighted.backward()?;
            for (slot, var) in grads.iter_mut().zip(&vars) {
                if let Some(gv) = g.get(var.as_tensor()) {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv.clone(),
                    });
                }
            }
        }
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&vars)
            .map(|(g, v)| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        let grad_norm = optim::clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = optim::lr_at(step.min(total - 1), total, warmup, cfg.learning_rate);
        opt.step(&vars, &grads, lr)?;
        losses.push(step_loss);
        tokens += step_tokens;
        loss_tokens += step_loss_tokens;
        let secs = t0.elapsed().as_secs_f64();
        on_event(&TrainEvent::Step(StepStats {
            step: step + 1,
            total_steps: total.max(step + 1),
            loss: step_loss,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / secs.max(1e-9),
            elapsed_s: began.elapsed().as_secs_f64(),
        }));
        let done = step + 1;
        let last = if let Some(b) = cfg.token_budget { tokens >= b } else { done == total };
        if (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last {
            if let Some(path) = save(done, &losses, tokens, loss_tokens, &per_example, &opt, adapter)? {
                on_event(&TrainEvent::Checkpoint { step: done, path });
            }
        }
        step += 1;
    }
    Ok(TrainSummary {
        steps: step,
        losses,
        tokens,
        loss_tokens,
        wall_s: began.elapsed().as_secs_f64(),
        trainable_params,
        tokens_per_example: per_example,
    })
}

/// Tokenises records for training, reporting how many were truncated.
pub fn encode_all(
    tok: &crate::TextTokenizer,
    records: &[data::Record],
    system: Option<&str>,
    max_len: usize,
) -> Result<Vec<Example>> {
    records.iter().map(|r| data::encode(tok, r, system, max_len)).collect()
}

/// The default checkpoint location inside an output folder.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    out.join("checkpoint.safetensors")
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    /// The packed path (shared prefixes, no padding) against the padded one: same loss,
    /// same gradient for every adapter factor, on rows that share prefixes in every way
    /// (partly, wholly, not at all), for both rotary layouts, biases and a sliding window.
    #[test]
    fn packed_and_padded_batches_agree_in_loss_and_gradients() {
        use crate::model::config::RopeLayout;
        use crate::model::{random_model, tiny_config};
        let examples = [
            Example { ids: vec![1, 2, 3, 4, 5, 6, 7], prompt_len: 4, ..Default::default() },
            Example { ids: vec![1, 2, 3, 4, 9, 8], prompt_len: 4, ..Default::default() },
            Example { ids: vec![1, 2, 3, 10, 11, 12, 13, 14], prompt_len: 3, extra_loss: vec![(1, 2)] },
            Example { ids: vec![20, 21, 22], prompt_len: 1, ..Default::default() },
            Example { ids: vec![1, 2, 3, 4, 5, 6, 7], prompt_len: 5, ..Default::default() },
        ];
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = data::make_batch(&refs, 0, &Device::Cpu).unwrap();
        assert!(batch.pack.len() < batch.tokens, "the rows share prefixes");
        let mut cfgs = vec![tiny_config()];
        let mut c = tiny_config();
        c.rope_layout = RopeLayout::Interleaved;
        c.attention_bias = true;
        c.sliding_window = Some(3);
        cfgs.push(c);
        for (ci, cfg) in cfgs.into_iter().enumerate() {
            let model = random_model(cfg, 3 + ci as u64, &Device::Cpu).unwrap();
            let ad =
                LoraAdapter::new(&model.cfg, LoraConfig { rank: 4, ..Default::default() }, 5, &Device::Cpu).unwrap();
            crate::adapter::lora::randomize(&ad, 9, 0.1);
            let fwd = Forward::eval(Some(&ad));
            let loss = |hidden: Tensor, at: &Tensor| {
                ops::cross_entropy(&model.logits(&hidden.index_select(at, 0).unwrap()).unwrap(), &batch.targets)
                    .unwrap()
            };
            let packed = loss(model.packed_hidden_states(&batch.pack, &fwd).unwrap(), &batch.packed_loss_index);
            let h = model.hidden_states(&batch.input_ids, &batch.mask, &fwd, None).unwrap();
            let (b, t, w) = h.dims3().unwrap();
            let padded = loss(h.reshape((b * t, w)).unwrap(), &batch.loss_index);
            let (lp, lq) = (packed.to_scalar::<f32>().unwrap(), padded.to_scalar::<f32>().unwrap());
            assert!((lp - lq).abs() < 1e-5, "config {ci}: loss {lp} packed, {lq} padded");
            let (gp, gq) = (packed.backward().unwrap(), padded.backward().unwrap());
            for v in ad.vars() {
                let (a, b) = (gp.get(v.as_tensor()).unwrap(), gq.get(v.as_tensor()).unwrap());
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
                let d = crate::model::max_abs_diff(a, b).unwrap();
                assert!(d / scale < 1e-4, "config {ci}: gradients differ by {d} (scale {scale})");
            }
        }
    }

    #[test]
    fn length_grouping_sees_every_example_once_and_cuts_padding() {
        let (n, batch) = (GROUP_WINDOW * 4, 4);
        let lengths: Vec<usize> = (0..n).map(|i| 5 + (i * 37) % 50).collect();
        let padded = |grouped: bool| {
            let mut cache = HashMap::new();
            let mut seen = vec![0; n];
            let mut cells = 0;
            for micro in 0..GROUP_WINDOW {
                let idx = batch_indices(n, (batch, 1), micro, 7, &mut cache, grouped.then_some(lengths.as_slice()));
                assert_eq!(idx.len(), batch);
                cells += batch * idx.iter().map(|&i| lengths[i]).max().unwrap();
                for i in idx {
                    seen[i] += 1;
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "each example once per epoch");
            cells
        };
        let (plain, grouped) = (padded(false), padded(true));
        let real: usize = lengths.iter().sum();
        assert!(grouped < plain, "grouped {grouped} cells vs {plain}");
        assert!(grouped <= real + n * (GROUP_BUCKET - 1), "grouped batches pad at most one bucket per row");
        // Seeded: the same call gives the same batch.
        let mut c1 = HashMap::new();
        let mut c2 = HashMap::new();
        assert_eq!(
            batch_indices(n, (batch, 1), 3, 7, &mut c1, Some(&lengths)),
            batch_indices(n, (batch, 1), 3, 7, &mut c2, Some(&lengths))
        );
        // A step of 2 micro-batches of 2 holds the examples of a step of one batch of 4.
        let mut c3 = HashMap::new();
        let mut split = batch_indices(n, (2, 2), 6, 7, &mut c3, Some(&lengths));
        split.extend(batch_indices(n, (2, 2), 7, 7, &mut c3, Some(&lengths)));
        assert_eq!(split, batch_indices(n, (4, 1), 3, 7, &mut c1, Some(&lengths)));
    }
}
