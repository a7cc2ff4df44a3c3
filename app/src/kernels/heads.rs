//! Head split with rotary embedding: `(B·T, H·d)` → `(B, H, T, d)` and the rotation in
//! one pass (instead of reshape + transpose + copy + seven elementwise ops).

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use super::RopeLayout;
use crate::Result;

pub(super) struct Heads {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    /// `(B·T, d/2)` tables, or none (no rotation).
    rope: Option<(Vec<f32>, Vec<f32>, RopeLayout)>,
}

/// Rotates one head vector `src` into `dst` by the angles whose cosines and sines are
/// `c` and `s` (`sign` -1 rotates back); `src` and `dst` may not overlap.
pub(super) fn rotate(src: &[f32], dst: &mut [f32], c: &[f32], s: &[f32], layout: RopeLayout, sign: f32) {
    let half = c.len();
    match layout {
        RopeLayout::HalfRotation => {
            for i in 0..half {
                let (x1, x2) = (src[i], src[i + half]);
                let (ci, si) = (c[i], sign * s[i]);
                dst[i] = x1 * ci - x2 * si;
                dst[i + half] = x1 * si + x2 * ci;
            }
        }
        RopeLayout::Interleaved => {
            for i in 0..half {
                let (x1, x2) = (src[2 * i], src[2 * i + 1]);
                let (ci, si) = (c[i], sign * s[i]);
                dst[2 * i] = x1 * ci - x2 * si;
                dst[2 * i + 1] = x1 * si + x2 * ci;
            }
        }
    }
}

impl Heads {
    /// Rotates one head vector `src` into `dst` by the angles at row `bt` (`sign` -1
    /// rotates back).
    fn rotate(&self, src: &[f32], dst: &mut [f32], bt: usize, sign: f32) {
        let Some((cos, sin, layout)) = &self.rope else {
            dst.copy_from_slice(src);
            return;
        };
        let half = self.d / 2;
        rotate(src, dst, &cos[bt * half..(bt + 1) * half], &sin[bt * half..(bt + 1) * half], *layout, sign);
    }
}

impl CustomOp1 for Heads {
    fn name(&self) -> &'static str {
        "fused-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (b, t, h, d) = (self.b, self.t, self.h, self.d);
        if x.len() != b * t * h * d {
            candle_core::bail!("{}: input {:?} is not ({b}·{t}, {h}·{d})", self.name(), l.dims());
        }
        let mut y = vec![0f32; x.len()];
        // Output (bi, hi) is a contiguous (T, d) block.
        y.par_chunks_mut(t * d).enumerate().for_each(|(bh, block)| {
            let (bi, hi) = (bh / h, bh % h);
            for ti in 0..t {
                let bt = bi * t + ti;
                let src = &x[bt * h * d + hi * d..bt * h * d + (hi + 1) * d];
                self.rotate(src, &mut block[ti * d..(ti + 1) * d], bt, 1.0);
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (b, t, h, d) = (self.b, self.t, self.h, self.d);
        let gx = with_f32(grad, self.name(), |g| {
            let mut gx = vec![0f32; g.len()];
            // Input row (bi, ti) is a contiguous (H, d) block.
            gx.par_chunks_mut(h * d).enumerate().for_each(|(bt, row)| {
                let (bi, ti) = (bt / t, bt % t);
                for hi in 0..h {
                    let src = &g[((bi * h + hi) * t + ti) * d..((bi * h + hi) * t + ti + 1) * d];
                    self.rotate(src, &mut row[hi * d..(hi + 1) * d], bt, -1.0);
                }
            });
            Ok(gx)
        })?;
        Ok(Some(tensor(gx, (b * t, h * d))?))
    }
}

/// `x` `(B·T, H·d)` as heads `(B, H, T, d)`, rotated by `rope` (cos and sin tables
/// `(B, 1, T, d/2)`) when given.
pub fn heads(
    x: &Tensor,
    (b, t, h, d): (usize, usize, usize, usize),
    rope: Option<(&Tensor, &Tensor, RopeLayout)>,
) -> Result<Tensor> {
    let rope = match rope {
        Some((c, s, layout)) => Some((
            c.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            s.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            layout,
        )),
        None => None,
    };
    Ok(x.contiguous()?.apply_op1(Heads { b, t, h, d, rope })?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::test_util::{check, randn};
    use crate::ops;

    #[test]
    fn heads_match_reshape_transpose_and_rope() {
        let (b, t, h, d) = (2, 5, 3, 8);
        let inv: Vec<f32> = (0..d / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / d as f32)).collect();
        let pos: Vec<Vec<u32>> = vec![(0..5).collect(), vec![0, 0, 1, 2, 3]];
        let tab = ops::RopeTables::new(&pos, &inv, &Device::Cpu).unwrap();
        for layout in [RopeLayout::HalfRotation, RopeLayout::Interleaved] {
            check(
                &[randn(&[b * t, h * d], 1)],
                |x| heads(&x[0], (b, t, h, d), Some((&tab.cos, &tab.sin, layout))).unwrap(),
                |x| {
                    let q = x[0].reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
                    tab.apply(&q, layout).unwrap()
                },
                1e-5,
            );
        }
        check(
            &[randn(&[b * t, h * d], 1)],
            |x| heads(&x[0], (b, t, h, d), None).unwrap(),
            |x| x[0].reshape((b, t, h, d)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap(),
            0.0 + 1e-7,
        );
    }
}
