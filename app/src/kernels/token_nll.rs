//! Per-row cross-entropy; backward from the logits and the saved NLL (no stored
//! probabilities).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::Result;

pub(super) struct TokenNll {
    targets: Vec<u32>,
}

impl CustomOp1 for TokenNll {
    fn name(&self) -> &'static str {
        "fused-token-nll"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (n, v) = dims2(l, self.name())?;
        if self.targets.len() != n || self.targets.iter().any(|&t| t as usize >= v) {
            candle_core::bail!("{}: targets do not fit logits {:?}", self.name(), l.dims());
        }
        let mut out = vec![0f32; n];
        out.par_iter_mut().zip(x.par_chunks(v)).zip(self.targets.par_iter()).for_each(|((o, row), &t)| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|&z| (z - max).exp()).sum();
            *o = max + sum.ln() - row[t as usize];
        });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (_, v) = arg.dims2()?;
        let gx = with_f32(arg, self.name(), |x| {
            with_f32(res, self.name(), |nll| {
                with_f32(grad, self.name(), |g| {
                    let mut gx = vec![0f32; x.len()];
                    gx.par_chunks_mut(v).enumerate().for_each(|(i, o)| {
                        let row = &x[i * v..(i + 1) * v];
                        let t = self.targets[i] as usize;
                        // log-sum-exp from the saved loss: nll = lse - z_t.
                        let lse = nll[i] + row[t];
                        for (o, &z) in o.iter_mut().zip(row) {
                            *o = g[i] * (z - lse).exp();
                        }
                        o[t] -= g[i];
                    });
                    Ok(gx)
                })
            })
        })?;
        Ok(Some(tensor(gx, arg.shape().clone())?))
    }
}

/// Per-row negative log-likelihood of `targets` under `logits` `(N, V)`.
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::U32)?.to_vec1::<u32>()?;
    Ok(logits.contiguous()?.apply_op1(TokenNll { targets })?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::test_util::{check, randn};
    use crate::ops;

    #[test]
    fn token_nll_matches_composition() {
        let targets = Tensor::new(&[3u32, 0, 6], &Device::Cpu).unwrap();
        check(
            &[(randn(&[3, 7], 1) * 4.0).unwrap()],
            |x| token_nll(&x[0], &targets).unwrap(),
            |x| ops::token_nll_composed(&x[0], &targets).unwrap(),
            1e-5,
        );
    }
}
