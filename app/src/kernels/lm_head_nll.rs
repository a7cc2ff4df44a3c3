//! The LM head and the per-row cross-entropy in one op, so that the `(N, vocab)` logits
//! never exist: the vocabulary is walked in blocks with a running maximum and sum per
//! row (the online softmax), and when a gradient is wanted the input gradient
//! `(softmax − onehot) · W` is accumulated in the same walk. Backward then only scales
//! that `(N, hidden)` matrix by the upstream gradient of each row's loss — the loss is
//! linear in nothing else, so this is exact. The head's weight is frozen (never `∂W`).
//!
//! Against the logits followed by [`super::token_nll`]: no 100 MB logits and no 100 MB
//! logits gradient for 512 tokens of a 49k vocabulary (allocated, zeroed and walked three
//! times), no exponentials recomputed in backward; the same two matrix products.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::Result;

/// Logit values a vocabulary block holds at most (8 MiB of f32).
const BLOCK_VALUES: usize = 1 << 21;

pub(super) struct LmHeadNll {
    weight: Tensor,
    targets: Vec<u32>,
    /// `Some` when a gradient is wanted: filled by the forward pass with each row's
    /// `(softmax − onehot) · W`.
    input_grad: Option<Mutex<Vec<f32>>>,
    products: Products,
}

impl CustomOp1 for LmHeadNll {
    fn name(&self) -> &'static str {
        "fused-lm-head-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let h = slice(s, l, self.name())?;
        let (n, d) = dims2(l, self.name())?;
        let (v, wd) = self.weight.dims2()?;
        if wd != d {
            candle_core::bail!("{}: hidden states have {d} features, the head expects {wd}", self.name());
        }
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!(
                "{}: {} targets do not fit {n} rows of a {v}-token vocabulary",
                self.name(),
                self.targets.len()
            );
        }
        let want_grad = self.input_grad.is_some();
        let block = (BLOCK_VALUES / n.max(1)).clamp(256, 8192).min(v);
        let mut max = vec![f32::NEG_INFINITY; n];
        let mut sum = vec![0f32; n];
        let mut target_logit = vec![0f32; n];
        let mut grad = if want_grad { vec![0f32; n * d] } else { Vec::new() };
        let mut z = vec![0f32; n * block];
        with_f32(&self.weight, self.name(), |w| {
            for c0 in (0..v).step_by(block) {
                let vc = block.min(v - c0);
                let wb = &w[c0 * d..(c0 + vc) * d];
                let z = &mut z[..n * vc];
                mm(self.products, (n, vc, d), z, false, Mat::new(h, (d, 1)), Mat::new(wb, (1, d)), 1.0);
                // Per row: fold the block into the running max and sum; where a gradient
                // is wanted, turn the logits into exp(z − max) and rescale the row's
                // accumulated gradient to the new max.
                let rows = z.par_chunks_mut(vc).zip(max.par_iter_mut()).zip(sum.par_iter_mut());
                let rows = rows.zip(target_logit.par_iter_mut()).zip(self.targets.par_iter());
                let grad_rows: Vec<&mut [f32]> =
                    if want_grad { grad.chunks_mut(d).collect() } else { (0..n).map(|_| &mut [][..]).collect() };
                rows.zip(grad_rows).for_each(|(((((row, m), s), zt), &t), g)| {
                    let t = t as usize;
                    if (c0..c0 + vc).contains(&t) {
                        *zt = row[t - c0];
                    }
                    let block_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let new_max = m.max(block_max);
                    let rescale = (*m - new_max).exp();
                    let mut block_sum = 0f32;
                    for x in row.iter_mut() {
                        let e = (*x - new_max).exp();
                        block_sum += e;
                        *x = e;
                    }
                    *s = *s * rescale + block_sum;
                    *m = new_max;
                    if rescale != 1.0 {
                        g.iter_mut().for_each(|x| *x *= rescale);
                    }
                });
                if want_grad {
                    mm(self.products, (n, d, vc), &mut grad, true, Mat::new(z, (vc, 1)), Mat::new(wb, (d, 1)), 1.0);
                }
            }
            // Normalise: Σ softmax·W, minus the target's row of W.
            if want_grad {
                grad.par_chunks_mut(d).zip(sum.par_iter()).zip(self.targets.par_iter()).for_each(|((g, &s), &t)| {
                    let wt = &w[t as usize * d..(t as usize + 1) * d];
                    for (x, &y) in g.iter_mut().zip(wt) {
                        *x = *x / s - y;
                    }
                });
            }
            Ok(())
        })?;
        let nll: Vec<f32> = (0..n).map(|i| max[i] + sum[i].ln() - target_logit[i]).collect();
        if let Some(slot) = &self.input_grad {
            *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = grad;
        }
        Ok((CpuStorage::F32(nll), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, d) = arg.dims2()?;
        let Some(slot) = &self.input_grad else {
            candle_core::bail!("{}: backward of a pass that kept no gradient", self.name())
        };
        let kept = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() != n * d {
            candle_core::bail!("{}: backward before forward", self.name());
        }
        let gx = with_f32(grad, self.name(), |g| {
            let mut gx = kept.clone();
            gx.par_chunks_mut(d).zip(g.par_iter()).for_each(|(row, &gi)| row.iter_mut().for_each(|x| *x *= gi));
            Ok(gx)
        })?;
        Ok(Some(tensor(gx, (n, d))?))
    }
}

/// Per-row negative log-likelihood of `targets` under the logits `hidden · weightᵀ`
/// (`hidden` `(N, hidden)`, `weight` `(vocab, hidden)`, frozen), without forming them.
pub fn lm_head_nll(hidden: &Tensor, weight: &Tensor, targets: &Tensor, products: Products) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    let input_grad = hidden.track_op().then(|| Mutex::new(Vec::new()));
    let op = LmHeadNll { weight: weight.contiguous()?, targets, input_grad, products };
    Ok(hidden.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::kernels::test_util::{max_diff, randn};
    use crate::ops;

    #[test]
    fn lm_head_nll_matches_logits_then_cross_entropy() {
        // A vocabulary of 3 000 walked in blocks (BLOCK_VALUES / 7 rows > 3 000: one block;
        // 600 rows: several), large logits so the running max moves between blocks.
        for (n, v) in [(7, 3000), (600, 3000)] {
            let w = (randn(&[v, 16], 3) * 3.0).unwrap();
            let t: Vec<u32> = (0..n as u32).map(|i| (i * 997 + 5) % v as u32).collect();
            let targets = Tensor::new(t.as_slice(), &candle_core::Device::Cpu).unwrap();
            let h = Var::from_tensor(&(randn(&[n, 16], 1) * 2.0).unwrap()).unwrap();
            let fused = lm_head_nll(h.as_tensor(), &w, &targets, Products::gemm(1)).unwrap();
            let composed = ops::token_nll_composed(&h.as_tensor().matmul(&w.t().unwrap()).unwrap(), &targets).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-4, "{n} rows: values differ by {}", max_diff(&fused, &composed));
            let up = randn(&[n], 9);
            let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let gr = (composed * &up).unwrap().sum_all().unwrap().backward().unwrap();
            let (a, b) = (gf.get(h.as_tensor()).unwrap(), gr.get(h.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-4, "{n} rows: gradients differ by {}", max_diff(a, b));
        }
    }

    #[test]
    fn without_a_gradient_nothing_is_kept() {
        let w = randn(&[50, 8], 3);
        let h = randn(&[4, 8], 1);
        let targets = Tensor::new(&[1u32, 2, 3, 49], &candle_core::Device::Cpu).unwrap();
        let y = lm_head_nll(&h, &w, &targets, Products::gemm(1)).unwrap();
        assert!(!y.track_op());
        let bad = Tensor::new(&[1u32, 2, 3, 50], &candle_core::Device::Cpu).unwrap();
        let e = lm_head_nll(&h, &w, &bad, Products::gemm(1)).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
    }
}
