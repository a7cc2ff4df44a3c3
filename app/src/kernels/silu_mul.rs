//! The SwiGLU gate `silu(g) · u`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::Result;

pub(super) struct SiluMul;

pub(super) fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        if l1.dims() != l2.dims() {
            candle_core::bail!("{}: shapes {:?} and {:?} differ", self.name(), l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096).zip(g.par_chunks(4096).zip(u.par_chunks(4096))).for_each(|(o, (gc, uc))| {
            for ((o, &gv), &uv) in o.iter_mut().zip(gc).zip(uc) {
                *o = gv * sigmoid(gv) * uv;
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_f32(gate, self.name(), |g| {
            with_f32(up, self.name(), |u| {
                with_f32(grad, self.name(), |gr| {
                    let mut dg = vec![0f32; g.len()];
                    let mut du = vec![0f32; g.len()];
                    dg.par_chunks_mut(4096)
                        .zip(du.par_chunks_mut(4096))
                        .zip(g.par_chunks(4096).zip(u.par_chunks(4096)).zip(gr.par_chunks(4096)))
                        .for_each(|((dgc, duc), ((gc, uc), grc))| {
                            for i in 0..gc.len() {
                                let s = sigmoid(gc[i]);
                                dgc[i] = grc[i] * uc[i] * s * (1.0 + gc[i] * (1.0 - s));
                                duc[i] = grc[i] * gc[i] * s;
                            }
                        });
                    Ok((dg, du))
                })
            })
        })?;
        Ok((Some(tensor(dg, gate.shape().clone())?), Some(tensor(du, up.shape().clone())?)))
    }
}

/// `silu(gate) · up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)?)
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kernels::test_util::{check, randn};

    #[test]
    fn silu_mul_matches_composition() {
        check(
            &[randn(&[4, 9], 1), randn(&[4, 9], 2)],
            |x| silu_mul(&x[0], &x[1]).unwrap(),
            |x| (x[0].silu().unwrap() * &x[1]).unwrap(),
            1e-6,
        );
    }
}
