//! What a run optimises: the [`Objective`] trait (variables, checkpoint names, the loss
//! of a batch with its terms summed per group of examples), the completion-token loss of
//! a batch, and a LoRA adapter as the plain objective. The multi-head strategy's heads
//! are another ([`crate::strategy::heads`]).

use candle_core::{DType, Tensor, Var};

use crate::model::lora::LoraAdapter;
use crate::model::{Batch, Forward, Llama};

use crate::Result;

/// A batch's loss: the mean over its loss terms (what is optimised) and, per group of its
/// examples (a mixture's tasks: [`crate::data::Example::group`]), the sum and count of
/// their terms — read from the same forward pass, for reporting only.
pub struct BatchLoss {
    /// Mean over the loss terms.
    pub mean: Tensor,
    /// Per group present in the batch, in order of first appearance; empty when every
    /// example is of one group (its terms are then the whole batch's: the trainer takes
    /// them from the mean it reads anyway, so a plain run reads nothing more back).
    pub groups: Vec<GroupTerms>,
}

/// The loss terms of one group of examples in a batch (or a step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GroupTerms {
    /// The group.
    pub group: usize,
    /// Sum of its terms' losses.
    pub sum: f64,
    /// How many terms.
    pub terms: usize,
}

/// Adds `t` into `all` (summed with the same group's terms already there).
pub fn add_terms(all: &mut Vec<GroupTerms>, t: GroupTerms) {
    match all.iter_mut().find(|x| x.group == t.group) {
        Some(x) => {
            x.sum += t.sum;
            x.terms += t.terms;
        }
        None => all.push(t),
    }
}

/// Per-token losses `nll` (in the batch's order: grouped by example) summed by the group
/// of their example; empty when the batch holds one group (see [`BatchLoss::groups`]).
pub fn group_terms(nll: &Tensor, batch: &Batch) -> Result<Vec<GroupTerms>> {
    if batch.groups.windows(2).all(|w| w[0] == w[1]) {
        return Ok(vec![]);
    }
    let values: Vec<f32> = nll.detach().to_dtype(DType::F32)?.to_vec1()?;
    let mut out = Vec::new();
    let mut at = 0;
    for (&group, &k) in batch.groups.iter().zip(&batch.per_example) {
        let sum = values[at..at + k].iter().map(|&v| f64::from(v)).sum();
        at += k;
        add_terms(&mut out, GroupTerms { group, sum, terms: k });
    }
    Ok(out)
}

/// Mean completion-token loss of a batch and the number of tokens it averages.
pub fn batch_loss(model: &Llama, batch: &Batch, fwd: &Forward) -> Result<Tensor> {
    Ok(token_losses(model, batch, fwd)?.mean_all()?)
}

/// The loss of every completion token of a batch, in the batch's order.
fn token_losses(model: &Llama, batch: &Batch, fwd: &Forward) -> Result<Tensor> {
    let (hidden, at) = model.batch_hidden(batch, fwd)?;
    // The LM head only where the loss is taken: it is the largest matmul of a small
    // model, and most positions of an SFT batch are prompt.
    model.token_nll(&hidden.index_select(&at, 0)?, &batch.targets)
}

/// What a training run optimises: its variables, how they are named in a checkpoint, and
/// the loss of a batch. A plain LoRA adapter is one; the multi-head strategy's shared
/// adapter plus task heads is another.
pub trait Objective {
    /// Every trainable variable, in a fixed order.
    fn vars(&self) -> Vec<Var>;
    /// Whether each of [`Objective::vars`] is a LoRA B factor (LoRA+ trains those faster).
    fn is_b(&self) -> Vec<bool> {
        vec![false; self.vars().len()]
    }
    /// The variables' tensors by checkpoint name, in the order of [`Objective::vars`].
    fn named_tensors(&self) -> Vec<(String, Tensor)>;
    /// How many loss terms a batch holds (its weight when micro-batches accumulate).
    fn loss_items(&self, batch: &Batch, _examples: &[usize]) -> usize {
        batch.loss_tokens
    }
    /// The loss of `batch` (its mean, and its terms by group), built from the examples at
    /// indices `examples` (dropout seeded by `seed` and `micro`, the global micro-batch
    /// index).
    fn loss(&self, model: &Llama, batch: &Batch, examples: &[usize], seed: u64, micro: u64) -> Result<BatchLoss>;
}

impl Objective for LoraAdapter {
    fn vars(&self) -> Vec<Var> {
        LoraAdapter::vars(self)
    }

    fn is_b(&self) -> Vec<bool> {
        LoraAdapter::is_b(self)
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        LoraAdapter::named_tensors(self)
    }

    fn loss(&self, model: &Llama, batch: &Batch, _examples: &[usize], seed: u64, micro: u64) -> Result<BatchLoss> {
        let nll = token_losses(model, batch, &Forward::train(self, seed, micro))?;
        let groups = group_terms(&nll, batch)?;
        Ok(BatchLoss { mean: nll.mean_all()?, groups })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::data::Example;
    use crate::model::lora::LoraConfig;

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
            Example { ids: vec![1, 2, 3, 10, 11, 12, 13, 14], prompt_len: 3, extra_loss: vec![(1, 2)], group: 0 },
            Example { ids: vec![20, 21, 22], prompt_len: 1, ..Default::default() },
            Example { ids: vec![1, 2, 3, 4, 5, 6, 7], prompt_len: 5, ..Default::default() },
        ];
        let refs: Vec<&Example> = examples.iter().collect();
        let batch = crate::data::make_batch(&refs, 0, &Device::Cpu).unwrap();
        assert!(batch.pack.len() < batch.tokens, "the rows share prefixes");
        let mut cfgs = vec![tiny_config()];
        let mut c = tiny_config();
        c.rope_layout = RopeLayout::Interleaved;
        c.attention_bias = true;
        c.sliding_window = Some(3);
        cfgs.push(c);
        for (ci, cfg) in cfgs.into_iter().enumerate() {
            let model = random_model(cfg, 3 + ci as u64, &Device::Cpu).unwrap();
            let ad = LoraAdapter::new(
                &model.cfg,
                LoraConfig { rank: 4, dropout: 0.0, ..Default::default() },
                5,
                &Device::Cpu,
            )
            .unwrap();
            crate::model::lora::randomize(&ad, 9, 0.1);
            // Training mode (evaluation records no graph), without dropout: both passes
            // see the same function.
            let fwd = Forward::train(&ad, 0, 0);
            let loss = |hidden: Tensor, at: &Tensor| {
                crate::ops::cross_entropy(&model.logits(&hidden.index_select(at, 0).unwrap()).unwrap(), &batch.targets)
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
}
