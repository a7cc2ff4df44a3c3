//! Fused CPU kernels with their backward passes, for f32 training and inference.
//!
//! candle differentiates compositions of basic ops, but each op is a pass over memory,
//! a tensor kept alive until the backward pass, and (in backward) a zero-filled gradient
//! buffer plus an add. These custom ops do the decoder's hot spots in one pass each and
//! keep only what their backward needs:
//!
//! - [`linear`]: `x Wᵀ + b + s·(x Aᵀ) Bᵀ` with a frozen `W` and trainable LoRA factors —
//!   backward computes `∂x`, `∂A`, `∂B`, never `∂W`; `x Aᵀ` is recomputed, not stored;
//! - [`dora_norms`]: DoRA's row norms `‖W + s·B·A‖` in one pass over `W` (no gradient);
//! - [`rms_norm`]: one pass forward, one pass backward, the weight frozen;
//! - [`heads`]: `(B·T, H·d)` → `(B, H, T, d)` with rotary embedding applied in the same
//!   pass (replaces reshape + transpose + copy + seven elementwise ops);
//! - [`attention`]: grouped-query `softmax(scale·QKᵀ + mask)·V`, one task per (batch
//!   row, kv head), probabilities kept for a backward that needs no other intermediates;
//! - [`silu_mul`]: the SwiGLU gate `silu(g) · u`;
//! - [`token_nll`]: per-row cross-entropy; backward from the logits and the saved NLL
//!   (no stored probabilities);
//! - [`lm_head_nll`]: the LM head and the cross-entropy in one op over vocabulary blocks
//!   (the `(N, vocab)` logits never exist; the input gradient is built in the forward walk).
//!
//! Matrix products go straight to the `gemm` crate on the tensors' own buffers (no
//! copies). Every op is checked against the composed candle version in its file's tests;
//! other devices and dtypes use the compositions in `ops`, which chooses between them.
//! One op per file, with its backward and its test; `common.rs` holds the storage views
//! and the matrix product they share.

mod attention;
pub mod blas;
mod common;
mod dora_norms;
mod heads;
mod linear;
mod lm_head_nll;
pub mod pack;
mod packed_attention;
mod rms_norm;
mod rope_rows;
mod silu_mul;
#[cfg(test)]
mod test_util;
mod token_nll;

pub use attention::attention;
pub use common::eligible;
pub use dora_norms::dora_norms;
pub use heads::heads;
pub use linear::{dora_linear, linear};
pub use lm_head_nll::lm_head_nll;
pub use packed_attention::packed_attention;
pub use rms_norm::rms_norm;
pub use rope_rows::{rope_cos_sin, rope_rows, rope_tables, RopeLayout};
pub use silu_mul::silu_mul;
pub use token_nll::token_nll;
