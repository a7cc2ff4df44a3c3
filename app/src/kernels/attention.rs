//! Grouped-query attention `softmax(scale·QKᵀ + mask)·V` on padded batches: one task
//! per (batch row, kv head), probabilities kept for a backward that needs nothing else.
//! The block math (scores, softmax hook, values; and its backward) is shared with
//! the packed attention.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::common::*;
use crate::Result;

/// One attention block: `rows` queries `q` `(rows, d)` against `len` keys and values
/// `k`, `v` `(len, d)`; `softmax` masks and normalises the scaled scores in place.
/// Writes the probabilities `p` `(rows, len)` (kept for [`attention_block_bwd`]) and the
/// output `o` `(rows, d)`.
pub(super) fn attention_block(
    (rows, len, d): (usize, usize, usize),
    (q, k, v): (&[f32], &[f32], &[f32]),
    scale: f32,
    softmax: impl FnOnce(&mut [f32]),
    (p, o): (&mut [f32], &mut [f32]),
) {
    mm_gemm((rows, len, d), p, false, Mat::new(q, (d, 1)), Mat::new(k, (1, d)), scale, 1);
    softmax(p);
    mm_gemm((rows, d, len), o, false, Mat::new(p, (len, 1)), Mat::new(v, (d, 1)), 1.0, 1);
}

/// The backward of [`attention_block`] from its probabilities `p` and the output
/// gradient `dout`: writes `dq` `(rows, d)`, `dk` and `dv` `(len, d)`.
pub(super) fn attention_block_bwd(
    (rows, len, d): (usize, usize, usize),
    (q, k, v): (&[f32], &[f32], &[f32]),
    p: &[f32],
    dout: &[f32],
    scale: f32,
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    // dP = dO Vᵀ; dS = scale · P ⊙ (dP - rowsum(dP ⊙ P)).
    let mut ds = vec![0f32; rows * len];
    mm_gemm((rows, len, d), &mut ds, false, Mat::new(dout, (d, 1)), Mat::new(v, (1, d)), 1.0, 1);
    if len > 0 {
        for (dr, pr) in ds.chunks_mut(len).zip(p.chunks(len)) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            for (x, &pv) in dr.iter_mut().zip(pr) {
                *x = scale * pv * (*x - dot);
            }
        }
    }
    mm_gemm((rows, d, len), dq, false, Mat::new(&ds, (len, 1)), Mat::new(k, (d, 1)), 1.0, 1);
    mm_gemm((len, d, rows), dk, false, Mat::new(&ds, (1, len)), Mat::new(q, (d, 1)), 1.0, 1);
    mm_gemm((len, d, rows), dv, false, Mat::new(p, (1, len)), Mat::new(dout, (d, 1)), 1.0, 1);
}

pub(super) struct Attention {
    /// `(B, T, Tk)` additive mask, shared by every head.
    mask: Vec<f32>,
    scale: f32,
    /// The probabilities of the forward pass `(B, H, T, Tk)`, kept for the backward.
    probs: std::sync::Mutex<Option<Vec<f32>>>,
}

impl Attention {
    /// Adds the mask to the scores `s` of batch row `bi` (rows cycle through the `t`
    /// queries, one block per head) and turns each row into probabilities.
    fn softmax_rows(&self, s: &mut [f32], t: usize, tk: usize, bi: usize) {
        for (r, row) in s.chunks_mut(tk).enumerate() {
            let ti = r % t;
            let m = &self.mask[(bi * t + ti) * tk..(bi * t + ti + 1) * tk];
            let mut max = f32::NEG_INFINITY;
            for (v, &mv) in row.iter_mut().zip(m) {
                *v += mv;
                max = max.max(*v);
            }
            let mut sum = 0f32;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let name = self.name();
        let (q, k, v) = (slice(s1, l1, name)?, slice(s2, l2, name)?, slice(s3, l3, name)?);
        let (Ok((b, h, t, d)), Ok((kb, hkv, tk, kd))) = (l1.shape().dims4(), l2.shape().dims4()) else {
            candle_core::bail!("{name}: expected (B, H, T, d) inputs");
        };
        if kb != b || kd != d || l3.dims() != l2.dims() || h % hkv != 0 || self.mask.len() != b * t * tk {
            candle_core::bail!(
                "{name}: q {:?}, k {:?}, v {:?} and the mask do not fit",
                l1.dims(),
                l2.dims(),
                l3.dims()
            );
        }
        let g = h / hkv;
        let (qb, kvb, pb) = (g * t * d, tk * d, g * t * tk);
        let mut out = vec![0f32; b * h * t * d];
        let mut probs = vec![0f32; b * h * t * tk];
        out.par_chunks_mut(qb).zip(probs.par_chunks_mut(pb)).enumerate().for_each(|(task, (o, p))| {
            let bi = task / hkv;
            let (qs, ks, vs) =
                (&q[task * qb..(task + 1) * qb], &k[task * kvb..(task + 1) * kvb], &v[task * kvb..(task + 1) * kvb]);
            attention_block((g * t, tk, d), (qs, ks, vs), self.scale, |p| self.softmax_rows(p, t, tk, bi), (p, o));
        });
        *self.probs.lock().expect("attention probabilities") = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, d) = q.dims4()?;
        let (_, hkv, tk, _) = k.dims4()?;
        let g = h / hkv;
        let probs = self.probs.lock().expect("attention probabilities").take();
        let Some(probs) = probs else { candle_core::bail!("{}: backward before forward", self.name()) };
        let (qb, kvb, pb) = (g * t * d, tk * d, g * t * tk);
        let scale = self.scale;
        let (dq, dk, dv) = with_f32(q, self.name(), |qv| {
            with_f32(k, self.name(), |kv| {
                with_f32(v, self.name(), |vv| {
                    with_f32(grad, self.name(), |go| {
                        let mut dq = vec![0f32; qv.len()];
                        let mut dk = vec![0f32; kv.len()];
                        let mut dv = vec![0f32; vv.len()];
                        dq.par_chunks_mut(qb)
                            .zip(dk.par_chunks_mut(kvb).zip(dv.par_chunks_mut(kvb)))
                            .enumerate()
                            .for_each(|(task, (dqs, (dks, dvs)))| {
                                let qs = &qv[task * qb..(task + 1) * qb];
                                let ks = &kv[task * kvb..(task + 1) * kvb];
                                let vs = &vv[task * kvb..(task + 1) * kvb];
                                let dos = &go[task * qb..(task + 1) * qb];
                                let p = &probs[task * pb..(task + 1) * pb];
                                attention_block_bwd((g * t, tk, d), (qs, ks, vs), p, dos, scale, (dqs, dks, dvs));
                            });
                        Ok((dq, dk, dv))
                    })
                })
            })
        })?;
        Ok((Some(tensor(dq, (b, h, t, d))?), Some(tensor(dk, (b, hkv, tk, d))?), Some(tensor(dv, (b, hkv, tk, d))?)))
    }
}

/// Grouped-query attention `softmax(scale · Q Kᵀ + mask) V` for `q` `(B, H, T, d)`, `k`
/// and `v` `(B, Hkv, Tk, d)` (query head `h` reads kv head `h / (H / Hkv)`) and an
/// additive `mask` `(B, 1, T, Tk)`; returns `(B, H, T, d)`. One task per (batch row, kv
/// head) on the thread pool; the probabilities are kept for the backward pass.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let mask = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let op = Attention { mask, scale: scale as f32, probs: std::sync::Mutex::new(None) };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::kernels::test_util::{check, randn};
    use crate::ops;

    #[test]
    fn attention_matches_composition() {
        // GQA: 4 query heads over 2 kv heads; keys include 2 cached positions.
        let (b, h, hkv, t, past, d) = (2, 4, 2, 3, 2, 8);
        let mask =
            ops::attention_mask(&[vec![0, 1, 1, 1, 1], vec![1, 1, 1, 1, 1]], t, past, None, &Device::Cpu).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        check(
            &[randn(&[b, h, t, d], 1), randn(&[b, hkv, t + past, d], 2), randn(&[b, hkv, t + past, d], 3)],
            |x| attention(&x[0], &x[1], &x[2], &mask, scale).unwrap(),
            |x| {
                let g = h / hkv;
                let q = x[0].reshape((b, hkv, g * t, d)).unwrap();
                let s = (q.matmul(&x[1].t().unwrap()).unwrap() * scale).unwrap().reshape((b, h, t, t + past)).unwrap();
                let p = ops::softmax_last_dim(&s.broadcast_add(&mask).unwrap()).unwrap();
                p.reshape((b, hkv, g * t, t + past)).unwrap().matmul(&x[2]).unwrap().reshape((b, h, t, d)).unwrap()
            },
            1e-5,
        );
    }
}
