//! RMSNorm with a frozen weight: one pass forward, one pass backward.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::Result;

pub(super) struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

pub(super) fn rstd(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let d = self.weight.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(yr, xr)| {
            let r = rstd(xr, self.eps);
            for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(&self.weight) {
                *o = v * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let d = self.weight.len();
        let gx = with_f32(arg, self.name(), |x| {
            with_f32(grad, self.name(), |g| {
                let mut gx = vec![0f32; x.len()];
                gx.par_chunks_mut(d).zip(x.par_chunks(d).zip(g.par_chunks(d))).for_each(|(o, (xr, gr))| {
                    let r = rstd(xr, self.eps);
                    // x̂ = x r; ∂x = r (g w - x̂ · mean(g w x̂)).
                    let dot =
                        xr.iter().zip(gr).zip(&self.weight).map(|((&x, &g), &w)| g * w * x * r).sum::<f32>() / d as f32;
                    for (((o, &x), &g), &w) in o.iter_mut().zip(xr).zip(gr).zip(&self.weight) {
                        *o = r * (g * w - x * r * dot);
                    }
                });
                Ok(gx)
            })
        })?;
        Ok(Some(tensor(gx, arg.shape().clone())?))
    }
}

/// `x / sqrt(mean(x²) + eps) · weight` over the last dimension; `weight` is frozen.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let w = weight.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if x.dims().last() != Some(&w.len()) {
        return Err(crate::Error::Invalid(format!("rms_norm: input {:?} vs weight {}", x.dims(), w.len())));
    }
    Ok(x.contiguous()?.apply_op1(RmsNorm { weight: w, eps: eps as f32 })?)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kernels::test_util::{check, randn};
    use crate::ops;

    #[test]
    fn rms_norm_matches_composition() {
        let w = randn(&[16], 2);
        check(
            &[randn(&[6, 16], 1)],
            |t| rms_norm(&t[0], &w, 1e-5).unwrap(),
            |t| ops::rms_norm_composed(&t[0], &w, 1e-5).unwrap(),
            1e-5,
        );
    }
}
