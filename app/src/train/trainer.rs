//! The training loop: supervised fine-tuning of any [`Objective`] with the loss on
//! completion tokens only, AdamW, warm-up + cosine schedule, gradient clipping and
//! accumulation, a seeded data order, an optional token budget, and atomic step
//! checkpoints that resume bit-for-bit on the CPU.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Tensor, Var};

use crate::data::{self, Example};
use crate::model::lora::LoraAdapter;
use crate::model::Llama;
use crate::train::batches::batch_indices;
use crate::train::checkpoint::{self, CheckpointPlan, Progress};
use crate::train::config::TrainConfig;
use crate::train::events::{StepStats, TrainEvent, TrainSummary};
use crate::train::objective::{add_terms, GroupTerms, Objective};
use crate::train::optim::{self, AdamW};
use crate::{Error, Result};

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
    objective: &dyn Objective,
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
    let vars: Vec<Var> = objective.vars();
    let mut opt = AdamW::new(&vars, cfg.adamw)?;
    // LoRA+: the B factors at a multiple of the rate.
    let lr_scales: Vec<f64> =
        objective.is_b().iter().map(|&b| if b { cfg.lora_plus.unwrap_or(1.0) } else { 1.0 }).collect();
    let mean_tokens = examples.iter().map(|e| e.ids.len() - 1).sum::<usize>() as f64 / examples.len() as f64;
    let total = cfg.total_steps(examples.len(), mean_tokens);
    let warmup = cfg.warmup_steps(total);
    let mut progress = match ckpt.filter(|p| p.resume && p.path.exists()) {
        Some(plan) => checkpoint::restore(plan, cfg, objective, &vars, &mut opt, &device)?,
        None => Progress::default(),
    };
    if progress.per_example.len() != examples.len() {
        progress.per_example = vec![0; examples.len()];
    }
    let trainable_params: usize = vars.iter().map(|v| v.elem_count()).sum();
    // Examples of several groups (a mixture's tasks): each step's loss is reported per
    // group too.
    let grouped = examples.iter().any(|e| e.group != examples[0].group);
    on_event(&TrainEvent::Started {
        total_steps: total,
        start_step: progress.step,
        trainable_params,
        examples: examples.len(),
    });
    let began = Instant::now();
    // Tokens trained since `began` (progress.tokens counts from before a resumption too).
    let mut tokens_since = 0usize;
    let mut perms = HashMap::new();
    let lengths: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let lengths = cfg.group_by_length.then_some(lengths.as_slice());
    // Examples per forward pass: the micro-batch size, until the device runs out of
    // memory (then halved, and kept for the rest of the run).
    let mut row_cap = usize::MAX;
    // With a token budget the loop runs until the budget is met (the schedule's length
    // is an estimate, so it may run a step or two past it, at the final learning rate).
    while progress.step < total || cfg.token_budget.is_some_and(|b| progress.tokens < b && progress.step < 2 * total) {
        if progress.budget_met || cfg.token_budget.is_some_and(|b| progress.tokens >= b) {
            break;
        }
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(Error::Cancelled);
        }
        let step = progress.step;
        let room = cfg.token_budget.map(|b| b.saturating_sub(progress.tokens));
        let (parts, used, complete) = step_parts(examples, cfg, step, room, &mut perms, lengths);
        if parts.is_empty() {
            break;
        }
        progress.budget_met = !complete;
        for (i, n) in used {
            progress.per_example[i] += n;
        }
        let micro: Vec<Micro> = parts
            .iter()
            .map(|(rows, idx, k)| Micro { rows, examples: idx, micro: step * cfg.grad_accum + k })
            .collect();
        let mut notice = |message: String| on_event(&TrainEvent::Notice { step: step + 1, message });
        let Accumulated { loss: step_loss, grads, counts, groups } =
            accumulate(model, objective, &vars, &micro, cfg.seed, &mut row_cap, &mut notice)?;
        let mut grads: Vec<Tensor> = grads.into_iter().flatten().collect();
        let grad_norm = optim::clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        let lr = optim::lr_at(step.min(total - 1), total, warmup, cfg.learning_rate);
        opt.step_scaled(&vars, &grads, lr, &lr_scales)?;
        let (step_tokens, step_loss_tokens) = counts;
        progress.losses.push(step_loss);
        let group_losses = if grouped { group_means(groups) } else { vec![] };
        if grouped {
            progress.group_losses.push(group_losses.clone());
        }
        progress.tokens += step_tokens;
        progress.loss_tokens += step_loss_tokens;
        progress.step += 1;
        tokens_since += step_tokens;
        let elapsed_s = began.elapsed().as_secs_f64();
        on_event(&TrainEvent::Step(StepStats {
            step: progress.step,
            total_steps: total.max(progress.step),
            loss: step_loss,
            lr,
            grad_norm,
            tokens: step_tokens,
            tokens_per_s: tokens_since as f64 / elapsed_s.max(1e-9),
            elapsed_s,
            group_losses,
            task_losses: vec![],
        }));
        let done = progress.step;
        let last =
            if let Some(b) = cfg.token_budget { progress.budget_met || progress.tokens >= b } else { done == total };
        if (cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last {
            if let Some(plan) = ckpt {
                checkpoint::save(plan, cfg, &progress, &opt, objective)?;
                on_event(&TrainEvent::Checkpoint { step: done, path: plan.path.clone() });
            }
        }
    }
    Ok(TrainSummary {
        steps: progress.step,
        losses: progress.losses,
        tokens: progress.tokens,
        loss_tokens: progress.loss_tokens,
        wall_s: began.elapsed().as_secs_f64(),
        trainable_params,
        tokens_per_example: progress.per_example,
        group_losses: progress.group_losses,
    })
}

/// Each group's mean loss over its terms in a step, by group.
fn group_means(mut groups: Vec<GroupTerms>) -> Vec<(usize, f64)> {
    groups.sort_by_key(|g| g.group);
    groups.into_iter().filter(|g| g.terms > 0).map(|g| (g.group, g.sum / g.terms as f64)).collect()
}

/// One micro-batch of a step: its examples, their indices and its global index (which
/// seeds dropout).
struct Micro<'a> {
    rows: &'a [Example],
    examples: &'a [usize],
    micro: usize,
}

/// The examples of optimizer step `step`, micro-batch by micro-batch (with the indices
/// of its examples and its position `k` in the step), every `(example, tokens)` taken,
/// and whether the step is whole. With a token budget (`room` tokens left), the step that
/// reaches it takes only whole examples that fit: its own batch's, then — to end as close
/// to the budget as whole examples allow — those of the batches that would follow, up to
/// an epoch ahead, into its last micro-batch. Such a step is not whole, and training ends
/// after it. No example is ever cut: a cut prompt (an answer without its question)
/// trained the last step of a run on examples unlike every other's.
#[allow(clippy::type_complexity)] // (examples, their indices, k) per micro-batch, (index, tokens), whole
fn step_parts(
    examples: &[Example],
    cfg: &TrainConfig,
    step: usize,
    mut room: Option<usize>,
    perms: &mut HashMap<usize, Vec<usize>>,
    lengths: Option<&[usize]>,
) -> (Vec<(Vec<Example>, Vec<usize>, usize)>, Vec<(usize, usize)>, bool) {
    let mut parts: Vec<(Vec<Example>, Vec<usize>, usize)> = Vec::with_capacity(cfg.grad_accum);
    let mut used: Vec<(usize, usize)> = Vec::new();
    let mut whole = true;
    let tokens = |i: usize| examples[i].ids.len() - 1;
    for k in 0..cfg.grad_accum {
        let micro = step * cfg.grad_accum + k;
        let idx = batch_indices(examples.len(), (cfg.batch_size, cfg.grad_accum), micro, cfg.seed, perms, lengths);
        let mut part = Vec::with_capacity(idx.len());
        let mut taken = Vec::with_capacity(idx.len());
        for i in idx {
            let n = tokens(i);
            if let Some(r) = room.as_mut() {
                if n > *r {
                    whole = false;
                    continue;
                }
                *r -= n;
            }
            part.push(examples[i].clone());
            taken.push(i);
            used.push((i, n));
        }
        if !part.is_empty() {
            parts.push((part, taken, k));
        }
    }
    if let (false, Some(r)) = (whole, room.as_mut()) {
        // The batches that would follow, up to an epoch ahead: their whole examples that
        // still fit, each once.
        let first = (step + 1) * cfg.grad_accum;
        let epoch = examples.len().div_ceil(cfg.batch_size.max(1));
        let mut extra = (Vec::new(), Vec::new());
        for micro in first..first + epoch {
            if *r == 0 {
                break;
            }
            for i in batch_indices(examples.len(), (cfg.batch_size, cfg.grad_accum), micro, cfg.seed, perms, lengths) {
                let n = tokens(i);
                if n <= *r && !used.iter().any(|u| u.0 == i) {
                    *r -= n;
                    extra.0.push(examples[i].clone());
                    extra.1.push(i);
                    used.push((i, n));
                }
            }
        }
        if !extra.0.is_empty() {
            match parts.last_mut() {
                Some(last) => {
                    last.0.extend(extra.0);
                    last.1.extend(extra.1);
                }
                None => parts.push((extra.0, extra.1, cfg.grad_accum - 1)),
            }
        }
    }
    (parts, used, whole)
}

/// Forward and backward of every micro-batch, each loss weighted by its share of the
/// step's loss terms (so accumulation equals one big batch): the step's loss, the summed
/// gradient of every variable (zeros where none reached it), the step's (tokens, loss
/// tokens) and its loss terms by group.
///
/// A forward pass holds at most `row_cap` examples. When the device runs out of memory
/// on one, the cap is halved (saying so through `notice`) and the micro-batch computed in
/// pieces: the pieces' losses, weighted by their own loss terms, add up to the same step,
/// so only the memory changes. One example that does not fit is an error that says what
/// to change.
fn accumulate(
    model: &Llama,
    objective: &dyn Objective,
    vars: &[Var],
    micro: &[Micro],
    seed: u64,
    row_cap: &mut usize,
    notice: &mut dyn FnMut(String),
) -> Result<Accumulated> {
    let device = model.device();
    // Loss terms of the whole step: each piece's weight is its share of them.
    let mut step_items = 0;
    let mut counts = (0, 0);
    let mut queue: Vec<Piece> = Vec::new();
    for m in micro {
        let batch = data::make_batch(&m.rows.iter().collect::<Vec<_>>(), 0, device)?;
        step_items += objective.loss_items(&batch, m.examples);
        counts.0 += batch.tokens;
        counts.1 += batch.loss_tokens;
        queue.push(Piece { rows: m.rows, idx: m.examples, micro: m.micro as u64, batch: Some(batch) });
    }
    queue.reverse();
    let mut acc = Accumulated { grads: vec![None; vars.len()], loss: 0.0, counts: (0, 0), groups: vec![] };
    while let Some(Piece { rows, idx, micro, batch }) = queue.pop() {
        if rows.len() > *row_cap {
            // Computed in pieces of at most the cap, in order.
            let cap = *row_cap;
            let pieces: Vec<_> = rows.chunks(cap).zip(idx.chunks(cap)).collect();
            for (r, i) in pieces.into_iter().rev() {
                queue.push(Piece { rows: r, idx: i, micro, batch: None });
            }
            continue;
        }
        let batch = match batch {
            Some(b) => b,
            None => data::make_batch(&rows.iter().collect::<Vec<_>>(), 0, device)?,
        };
        let items = objective.loss_items(&batch, idx);
        if items == 0 {
            continue;
        }
        let weight = items as f64 / step_items.max(1) as f64;
        match micro_grads(model, objective, vars, Pass { batch: &batch, examples: idx, seed, micro, weight }) {
            Ok((loss, grads, groups)) => acc.add(loss, grads, groups)?,
            Err(e) if e.is_out_of_memory() => {
                if rows.len() == 1 {
                    return Err(Error::Invalid(format!(
                        "out of GPU memory with one example of {} tokens per forward pass: lower --max-tokens \
                         (or the dataset's longest examples), pick a smaller model, or train on the CPU",
                        rows[0].ids.len()
                    )));
                }
                *row_cap = rows.len() / 2;
                notice(format!(
                    "out of GPU memory with {} examples ({} tokens) in one forward pass: continuing with at most \
                     {} per pass, gradients accumulated, so each step stays the same (--batch-size {} avoids the retry)",
                    rows.len(),
                    batch.tokens,
                    *row_cap,
                    *row_cap
                ));
                queue.push(Piece { rows, idx, micro, batch: None });
            }
            Err(e) => return Err(e),
        }
    }
    let grads = acc
        .grads
        .into_iter()
        .zip(vars)
        .map(|(g, v)| g.map_or_else(|| v.as_tensor().zeros_like(), Ok).map(Some))
        .collect::<candle_core::Result<_>>()?;
    Ok(Accumulated { grads, counts, ..acc })
}

/// Examples computed in one forward pass, and their batch once made.
struct Piece<'a> {
    rows: &'a [Example],
    idx: &'a [usize],
    micro: u64,
    batch: Option<crate::model::Batch>,
}

/// A step's loss, gradients (one per variable, once every micro-batch is in), (tokens,
/// loss tokens) and loss terms by group so far.
struct Accumulated {
    grads: Vec<Option<Tensor>>,
    loss: f64,
    counts: (usize, usize),
    groups: Vec<GroupTerms>,
}

impl Accumulated {
    fn add(&mut self, loss: f64, grads: Vec<Option<Tensor>>, groups: Vec<GroupTerms>) -> Result<()> {
        self.loss += loss;
        for g in groups {
            add_terms(&mut self.groups, g);
        }
        for (slot, g) in self.grads.iter_mut().zip(grads) {
            if let Some(g) = g {
                *slot = Some(match slot.take() {
                    Some(acc) => (acc + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }
}

/// One forward and backward pass's examples: their batch, their indices, the dropout
/// seed and global micro-batch index, and the pass's share of the step's loss terms.
struct Pass<'a> {
    batch: &'a crate::model::Batch,
    examples: &'a [usize],
    seed: u64,
    micro: u64,
    weight: f64,
}

/// One forward and backward pass: the weighted loss, each variable's gradient and the
/// pass's loss terms by group.
#[allow(clippy::type_complexity)] // (loss, a gradient per variable, terms by group)
fn micro_grads(
    model: &Llama,
    objective: &dyn Objective,
    vars: &[Var],
    pass: Pass,
) -> Result<(f64, Vec<Option<Tensor>>, Vec<GroupTerms>)> {
    let Pass { batch, examples, seed, micro, weight } = pass;
    let loss = objective.loss(model, batch, examples, seed, micro)?;
    let weighted = (loss.mean * weight)?;
    let value = weighted.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    let g = weighted.backward()?;
    let groups = match (loss.groups.is_empty(), batch.groups.first()) {
        // One group: its terms are the batch's, their mean the loss just read.
        (true, Some(&group)) => {
            let terms = objective.loss_items(batch, examples);
            vec![GroupTerms { group, sum: value / weight * terms as f64, terms }]
        }
        _ => loss.groups,
    };
    Ok((value, vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect(), groups))
}

/// Tokenises records for training, reporting how many were truncated.
pub fn encode_all(
    tok: &crate::model::TextTokenizer,
    records: &[data::Record],
    system: Option<&str>,
    max_len: usize,
) -> Result<Vec<Example>> {
    records.iter().map(|r| data::encode(tok, r, system, max_len)).collect()
}
