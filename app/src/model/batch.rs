//! What the decoder is given to train or score on: a batch's tokens, both as right-padded
//! rows and packed ([`Pack`]), with the positions that carry loss. `data::make_batch`
//! builds one from tokenised examples.

use std::sync::Arc;

use candle_core::Tensor;

use crate::kernels::pack::Pack;

/// A batch for next-token training: inputs are `ids[..n-1]`, laid out two ways — right-
/// padded `(B, T)` with the loss taken at the flat positions `loss_index`, and packed with
/// shared prefixes ([`Pack`]) with the loss at `packed_loss_index` — against `targets`.
#[derive(Debug)]
pub struct Batch {
    /// `(B, T)` input ids, right-padded.
    pub input_ids: Tensor,
    /// Padding mask rows (1 = token).
    pub mask: Vec<Vec<u8>>,
    /// Flat positions `b * T + t` whose next token carries loss.
    pub loss_index: Tensor,
    /// The tokens predicted at `loss_index`.
    pub targets: Tensor,
    /// Real (non-pad) input tokens.
    pub tokens: usize,
    /// Tokens that carry loss.
    pub loss_tokens: usize,
    /// Loss tokens of each example, in order (the loss positions are grouped by example).
    pub per_example: Vec<usize>,
    /// The group of each example ([`crate::data::Example::group`]), in order.
    pub groups: Vec<usize>,
    /// The input rows packed, each distinct prefix once.
    pub pack: Arc<Pack>,
    /// The packed indices of the positions of `loss_index`, in the same order.
    pub packed_loss_index: Tensor,
}
