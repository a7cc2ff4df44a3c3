//! Attention over a prefix-shared pack ([`crate::kernels::pack`]): each row's own queries
//! attend along that row's path; gradients of shared keys and values are summed over
//! the rows that share them.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::attention::{attention_block, attention_block_bwd};
use super::common::*;
use crate::kernels::pack::Pack;
use crate::Result;

pub(super) struct PackedAttention {
    pack: Arc<Pack>,
    h: usize,
    hkv: usize,
    d: usize,
    scale: f32,
    window: Option<usize>,
    /// The probabilities of each (row, kv head) task, kept for the backward.
    probs: std::sync::Mutex<Option<Vec<Vec<f32>>>>,
}

/// The operands of one (row, kv head) task gathered into contiguous blocks: keys and
/// values `(L, d)` along the row's path, the owned queries of the head group
/// `(g·n, d)` (head-major), and `n`, the owned query count.
pub(super) struct TaskBlocks {
    k: Vec<f32>,
    v: Vec<f32>,
    q: Vec<f32>,
    n: usize,
}

impl PackedAttention {
    fn tasks(&self) -> usize {
        self.pack.rows.len() * self.hkv
    }

    fn gather(&self, task: usize, q: &[f32], k: &[f32], v: &[f32]) -> TaskBlocks {
        let (h, hkv, d) = (self.h, self.hkv, self.d);
        let g = h / hkv;
        let (row, kh) = (&self.pack.rows[task / hkv], task % hkv);
        let n = row.len() - row.owned_from;
        let mut kb = Vec::with_capacity(row.len() * d);
        let mut vb = Vec::with_capacity(row.len() * d);
        for &i in &row.path {
            let at = i as usize * hkv * d + kh * d;
            kb.extend_from_slice(&k[at..at + d]);
            vb.extend_from_slice(&v[at..at + d]);
        }
        let mut qb = Vec::with_capacity(g * n * d);
        for gi in 0..g {
            for &i in &row.path[row.owned_from..] {
                let at = i as usize * h * d + (kh * g + gi) * d;
                qb.extend_from_slice(&q[at..at + d]);
            }
        }
        TaskBlocks { k: kb, v: vb, q: qb, n }
    }

    /// Masks (causal, sliding window) and normalises the `(g·n, L)` scores of `row`.
    fn softmax(&self, p: &mut [f32], row: &crate::kernels::pack::PackedRow) {
        let len = row.len();
        let n = len - row.owned_from;
        for (r, s) in p.chunks_mut(len).enumerate() {
            let qpos = row.owned_from + r % n;
            let lo = self.window.map_or(0, |w| (qpos + 1).saturating_sub(w));
            let mut max = f32::NEG_INFINITY;
            for &x in &s[lo..=qpos] {
                max = max.max(x);
            }
            let mut sum = 0f32;
            for x in &mut s[lo..=qpos] {
                *x = (*x - max).exp();
                sum += *x;
            }
            let inv = 1.0 / sum;
            s[..lo].fill(0.0);
            s[qpos + 1..].fill(0.0);
            for x in &mut s[lo..=qpos] {
                *x *= inv;
            }
        }
    }

    /// Calls `f(packed token, offset inside its (T, H·d) row, block row)` for every owned
    /// query of `task`, block rows in the order of [`TaskBlocks::q`].
    fn for_owned(&self, task: usize, mut f: impl FnMut(usize, usize, usize)) {
        let g = self.h / self.hkv;
        let (row, kh) = (&self.pack.rows[task / self.hkv], task % self.hkv);
        let owned = &row.path[row.owned_from..];
        for gi in 0..g {
            for (i, &tok) in owned.iter().enumerate() {
                f(tok as usize, (kh * g + gi) * self.d, gi * owned.len() + i);
            }
        }
    }

    fn check(&self, q: &Layout, k: &Layout, v: &Layout) -> CResult<usize> {
        let t = self.pack.len();
        if q.dims() != [t, self.h * self.d]
            || k.dims() != [t, self.hkv * self.d]
            || v.dims() != k.dims()
            || !self.h.is_multiple_of(self.hkv)
        {
            candle_core::bail!(
                "fused-packed-attention: q {:?}, k {:?}, v {:?} do not fit {t} packed tokens",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        Ok(t)
    }
}

impl CustomOp3 for PackedAttention {
    fn name(&self) -> &'static str {
        "fused-packed-attention"
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
        let t = self.check(l1, l2, l3)?;
        let (h, d) = (self.h, self.d);
        let g = h / self.hkv;
        let results: Vec<(Vec<f32>, Vec<f32>)> = (0..self.tasks())
            .into_par_iter()
            .map(|task| {
                let row = &self.pack.rows[task / self.hkv];
                let b = self.gather(task, q, k, v);
                let len = row.len();
                let mut p = vec![0f32; g * b.n * len];
                let mut o = vec![0f32; g * b.n * d];
                attention_block(
                    (g * b.n, len, d),
                    (&b.q, &b.k, &b.v),
                    self.scale,
                    |p| self.softmax(p, row),
                    (&mut p, &mut o),
                );
                (o, p)
            })
            .collect();
        let mut out = vec![0f32; t * h * d];
        let mut probs = Vec::with_capacity(results.len());
        for (task, (o, p)) in results.into_iter().enumerate() {
            self.for_owned(task, |tok, off, r| {
                out[tok * h * d + off..tok * h * d + off + d].copy_from_slice(&o[r * d..(r + 1) * d]);
            });
            probs.push(p);
        }
        *self.probs.lock().expect("attention probabilities") = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((t, h * d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().expect("attention probabilities").take();
        let Some(probs) = probs else { candle_core::bail!("{}: backward before forward", self.name()) };
        let (h, hkv, d) = (self.h, self.hkv, self.d);
        let g = h / hkv;
        let t = self.pack.len();
        let scale = self.scale;
        let (dq, dk, dv) = with_f32(q, self.name(), |qv| {
            with_f32(k, self.name(), |kv| {
                with_f32(v, self.name(), |vv| {
                    with_f32(grad, self.name(), |go| {
                        let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..self.tasks())
                            .into_par_iter()
                            .map(|task| {
                                let len = self.pack.rows[task / hkv].len();
                                let b = self.gather(task, qv, kv, vv);
                                let p = &probs[task];
                                let mut dout = vec![0f32; g * b.n * d];
                                self.for_owned(task, |tok, off, r| {
                                    dout[r * d..(r + 1) * d]
                                        .copy_from_slice(&go[tok * h * d + off..tok * h * d + off + d]);
                                });
                                let mut dqb = vec![0f32; g * b.n * d];
                                let mut dkb = vec![0f32; len * d];
                                let mut dvb = vec![0f32; len * d];
                                let blocks = (b.q.as_slice(), b.k.as_slice(), b.v.as_slice());
                                attention_block_bwd(
                                    (g * b.n, len, d),
                                    blocks,
                                    p,
                                    &dout,
                                    scale,
                                    (&mut dqb, &mut dkb, &mut dvb),
                                );
                                (dqb, dkb, dvb)
                            })
                            .collect();
                        let mut dq = vec![0f32; t * h * d];
                        let mut dk = vec![0f32; t * hkv * d];
                        let mut dv = vec![0f32; t * hkv * d];
                        for (task, (dqb, dkb, dvb)) in parts.into_iter().enumerate() {
                            self.for_owned(task, |tok, off, r| {
                                dq[tok * h * d + off..tok * h * d + off + d].copy_from_slice(&dqb[r * d..(r + 1) * d]);
                            });
                            // Keys and values of shared tokens collect gradient from every row.
                            let (row, kh) = (&self.pack.rows[task / hkv], task % hkv);
                            for (j, &tok) in row.path.iter().enumerate() {
                                let at = tok as usize * hkv * d + kh * d;
                                for (x, &y) in dk[at..at + d].iter_mut().zip(&dkb[j * d..(j + 1) * d]) {
                                    *x += y;
                                }
                                for (x, &y) in dv[at..at + d].iter_mut().zip(&dvb[j * d..(j + 1) * d]) {
                                    *x += y;
                                }
                            }
                        }
                        Ok((dq, dk, dv))
                    })
                })
            })
        })?;
        Ok((
            Some(tensor(dq, q.shape().clone())?),
            Some(tensor(dk, k.shape().clone())?),
            Some(tensor(dv, v.shape().clone())?),
        ))
    }
}

/// Causal grouped-query attention over a [`Pack`]: `q` `(T, H·d)`, `k` and `v`
/// `(T, Hkv·d)` for the packed tokens (rotated already); each row's owned queries attend
/// to the keys along its own path (its shared prefix included), within `window` when
/// given. Returns `(T, H·d)`. One task per (row, kv head) on the thread pool.
pub fn packed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pack: &Arc<Pack>,
    (h, hkv, d): (usize, usize, usize),
    scale: f64,
    window: Option<usize>,
) -> Result<Tensor> {
    let op = PackedAttention {
        pack: pack.clone(),
        h,
        hkv,
        d,
        scale: scale as f32,
        window,
        probs: std::sync::Mutex::new(None),
    };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}
