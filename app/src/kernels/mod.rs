//! Fused CPU kernels with their backward passes, for f32 training and inference.
//!
//! candle differentiates compositions of basic ops, but each op is a pass over memory,
//! a tensor kept alive until the backward pass, and (in backward) a zero-filled gradient
//! buffer plus an add. These custom ops do the decoder's hot spots in one pass each and
//! keep only what their backward needs:
//!
//! - [`linear`]: `x Wᵀ + b + s·(x Aᵀ) Bᵀ` with a frozen `W` and trainable LoRA factors —
//!   backward computes `∂x`, `∂A`, `∂B`, never `∂W`; `x Aᵀ` is recomputed, not stored;
//! - [`rms_norm`]: one pass forward, one pass backward, the weight frozen;
//! - [`heads`]: `(B·T, H·d)` → `(B, H, T, d)` with rotary embedding applied in the same
//!   pass (replaces reshape + transpose + copy + seven elementwise ops);
//! - [`attention`]: grouped-query `softmax(scale·QKᵀ + mask)·V`, one task per (batch
//!   row, kv head), probabilities kept for a backward that needs no other intermediates;
//! - [`silu_mul`]: the SwiGLU gate `silu(g) · u`;
//! - [`token_nll`]: per-row cross-entropy; backward from the logits and the saved NLL
//!   (no stored probabilities).
//!
//! Matrix products go straight to the `gemm` crate on the tensors' own buffers (no
//! copies). Every op is checked against the composed candle version in the tests below;
//! other devices and dtypes use the compositions in `ops`, which chooses between them.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::data::pack::Pack;
use crate::model::config::RopeLayout;
use crate::Result;

pub mod blas;

type CResult<T> = candle_core::Result<T>;

/// Whether `x` can take the fused path: f32 on the CPU.
pub fn eligible(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("{op}: input is not contiguous"),
        },
        _ => candle_core::bail!("{op}: f32 only"),
    }
}

/// Runs `f` on the f32 buffer of `t` (made contiguous first).
fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(cs) => f(slice(cs, l, op)?),
        _ => candle_core::bail!("{op}: CPU only"),
    }
}

fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Panics unless every index the strides reach lies inside the slices (the safety
/// condition of the unsafe products); handles empty products (zeroing `dst` unless
/// accumulating) and returns whether a product remains to be computed.
fn operands_fit(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
) -> bool {
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rrs + (n - 1) * rcs);
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return false;
    }
    true
}

/// `dst (m×n, row-major) = [dst +] scale · lhs · rhs`, where `lhs[i, p]` sits at
/// `i·lrs + p·lcs` and `rhs[p, j]` at `p·rrs + j·rcs`.
#[allow(clippy::too_many_arguments)]
fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
    scale: f32,
) {
    if !operands_fit((m, n, k), dst, accumulate, lhs, (lrs, lcs), rhs, (rrs, rcs)) {
        return;
    }
    if let Some(b) = crate::kernels::blas::get() {
        if b.sgemm((m, n, k), dst, accumulate, lhs, (lrs, lcs), rhs, (rrs, rcs), scale) {
            return;
        }
    }
    mm_gemm((m, n, k), dst, accumulate, lhs, (lrs, lcs), rhs, (rrs, rcs), scale, true);
}

/// [`mm`] on the `gemm` crate; `parallel` lets it use the thread pool for big products.
#[allow(clippy::too_many_arguments)]
fn mm_gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lrs, lcs): (usize, usize),
    rhs: &[f32],
    (rrs, rcs): (usize, usize),
    scale: f32,
    parallel: bool,
) {
    if !operands_fit((m, n, k), dst, accumulate, lhs, (lrs, lcs), rhs, (rrs, rcs)) {
        return;
    }
    let t = threads();
    let par = if parallel && t > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(t)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices, and
    // `dst` does not alias `lhs` or `rhs` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

fn dims2(l: &Layout, op: &str) -> CResult<(usize, usize)> {
    match l.dims() {
        [a, b] => Ok((*a, *b)),
        d => candle_core::bail!("{op}: expected a matrix, got shape {d:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Linear layer with optional LoRA.

struct FrozenLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

struct LoraLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    scale: f32,
}

/// `x Wᵀ (+ b)` into a fresh `(n, out)` buffer.
fn base_forward(x: &[f32], n: usize, fin: usize, weight: &Tensor, bias: Option<&[f32]>) -> CResult<Vec<f32>> {
    let (fout, win) = weight.dims2()?;
    if win != fin {
        candle_core::bail!("fused linear: input has {fin} features, the weight expects {win}");
    }
    let mut y = vec![0f32; n * fout];
    if let Some(b) = bias {
        for row in y.chunks_mut(fout) {
            row.copy_from_slice(b);
        }
    }
    with_f32(weight, "fused linear", |w| {
        mm((n, fout, fin), &mut y, bias.is_some(), x, (fin, 1), w, (1, fin), 1.0);
        Ok(())
    })?;
    Ok(y)
}

/// `g W`: the input gradient of a frozen linear layer.
fn base_backward(g: &[f32], n: usize, weight: &Tensor) -> CResult<Vec<f32>> {
    let (fout, fin) = weight.dims2()?;
    let mut gx = vec![0f32; n * fin];
    with_f32(weight, "fused linear", |w| {
        mm((n, fin, fout), &mut gx, false, g, (fout, 1), w, (fin, 1), 1.0);
        Ok(())
    })?;
    Ok(gx)
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "fused-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let (n, fin) = dims2(l, self.name())?;
        let y = base_forward(x, n, fin, &self.weight, self.bias.as_deref())?;
        Ok((CpuStorage::F32(y), Shape::from((n, self.weight.dim(0)?))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, fin) = arg.dims2()?;
        let gx = with_f32(grad, self.name(), |g| base_backward(g, n, &self.weight))?;
        Ok(Some(tensor(gx, (n, fin))?))
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "fused-lora-linear"
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
        let (x, a, b) = (slice(s1, l1, name)?, slice(s2, l2, name)?, slice(s3, l3, name)?);
        let (n, fin) = dims2(l1, name)?;
        let (r, ain) = dims2(l2, name)?;
        let (fout, br) = dims2(l3, name)?;
        if ain != fin || br != r || fout != self.weight.dim(0)? {
            candle_core::bail!(
                "{name}: LoRA factors {:?} and {:?} do not fit input {:?}",
                l2.dims(),
                l3.dims(),
                l1.dims()
            );
        }
        let mut y = base_forward(x, n, fin, &self.weight, self.bias.as_deref())?;
        let mut h = vec![0f32; n * r];
        mm((n, r, fin), &mut h, false, x, (fin, 1), a, (1, fin), 1.0);
        mm((n, fout, r), &mut y, true, &h, (r, 1), b, (1, r), self.scale);
        Ok((CpuStorage::F32(y), Shape::from((n, fout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, fin) = x.dims2()?;
        let (r, _) = a.dims2()?;
        let (fout, _) = b.dims2()?;
        let s = self.scale;
        let (gx, ga, gb) = with_f32(grad, self.name(), |g| {
            with_f32(x, self.name(), |xv| {
                with_f32(a, self.name(), |av| {
                    with_f32(b, self.name(), |bv| {
                        let mut gx = base_backward(g, n, &self.weight)?;
                        // gh = g B (n × r); ∂x += s·gh A; ∂A = s·ghᵀ x; ∂B = s·gᵀ (x Aᵀ).
                        let mut gh = vec![0f32; n * r];
                        mm((n, r, fout), &mut gh, false, g, (fout, 1), bv, (r, 1), 1.0);
                        mm((n, fin, r), &mut gx, true, &gh, (r, 1), av, (fin, 1), s);
                        let mut ga = vec![0f32; r * fin];
                        mm((r, fin, n), &mut ga, false, &gh, (1, r), xv, (fin, 1), s);
                        let mut h = vec![0f32; n * r];
                        mm((n, r, fin), &mut h, false, xv, (fin, 1), av, (1, fin), 1.0);
                        let mut gb = vec![0f32; fout * r];
                        mm((fout, r, n), &mut gb, false, g, (1, fout), &h, (r, 1), s);
                        Ok((gx, ga, gb))
                    })
                })
            })
        })?;
        Ok((Some(tensor(gx, (n, fin))?), Some(tensor(ga, (r, fin))?), Some(tensor(gb, (fout, r))?)))
    }
}

/// `x Wᵀ + bias + scale · (x Aᵀ) Bᵀ` for `x` `(N, in)`, frozen `weight` `(out, in)` and
/// optional LoRA factors `A` `(r, in)`, `B` `(out, r)`. Gradients reach `x`, `A` and `B`.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<(&Tensor, &Tensor, f64)>,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    Ok(match lora {
        None => x.apply_op1(FrozenLinear { weight: weight.clone(), bias })?,
        Some((a, b, scale)) => x.apply_op3(
            &a.contiguous()?,
            &b.contiguous()?,
            LoraLinear { weight: weight.clone(), bias, scale: scale as f32 },
        )?,
    })
}

// ---------------------------------------------------------------------------------------
// RMSNorm.

struct RmsNorm {
    weight: Vec<f32>,
    eps: f32,
}

fn rstd(row: &[f32], eps: f32) -> f32 {
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

// ---------------------------------------------------------------------------------------
// Head split with rotary embedding.

struct Heads {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
    /// `(B·T, d/2)` tables, or none (no rotation).
    rope: Option<(Vec<f32>, Vec<f32>, RopeLayout)>,
}

/// Rotates one head vector `src` into `dst` by the angles whose cosines and sines are
/// `c` and `s` (`sign` -1 rotates back); `src` and `dst` may not overlap.
fn rotate(src: &[f32], dst: &mut [f32], c: &[f32], s: &[f32], layout: RopeLayout, sign: f32) {
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

// ---------------------------------------------------------------------------------------
// Attention.

/// One attention block: `rows` queries `q` `(rows, d)` against `len` keys and values
/// `k`, `v` `(len, d)`; `softmax` masks and normalises the scaled scores in place.
/// Writes the probabilities `p` `(rows, len)` (kept for [`attention_block_bwd`]) and the
/// output `o` `(rows, d)`.
#[allow(clippy::too_many_arguments)]
fn attention_block(
    (rows, len, d): (usize, usize, usize),
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    softmax: impl FnOnce(&mut [f32]),
    p: &mut [f32],
    o: &mut [f32],
) {
    mm_gemm((rows, len, d), p, false, q, (d, 1), k, (1, d), scale, false);
    softmax(p);
    mm_gemm((rows, d, len), o, false, p, (len, 1), v, (d, 1), 1.0, false);
}

/// The backward of [`attention_block`] from its probabilities `p` and the output
/// gradient `dout`: writes `dq` `(rows, d)`, `dk` and `dv` `(len, d)`.
#[allow(clippy::too_many_arguments)]
fn attention_block_bwd(
    (rows, len, d): (usize, usize, usize),
    (q, k, v): (&[f32], &[f32], &[f32]),
    p: &[f32],
    dout: &[f32],
    scale: f32,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    // dP = dO Vᵀ; dS = scale · P ⊙ (dP - rowsum(dP ⊙ P)).
    let mut ds = vec![0f32; rows * len];
    mm_gemm((rows, len, d), &mut ds, false, dout, (d, 1), v, (1, d), 1.0, false);
    if len > 0 {
        for (dr, pr) in ds.chunks_mut(len).zip(p.chunks(len)) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            for (x, &pv) in dr.iter_mut().zip(pr) {
                *x = scale * pv * (*x - dot);
            }
        }
    }
    mm_gemm((rows, d, len), dq, false, &ds, (len, 1), k, (d, 1), 1.0, false);
    mm_gemm((len, d, rows), dk, false, &ds, (1, len), q, (d, 1), 1.0, false);
    mm_gemm((len, d, rows), dv, false, p, (1, len), dout, (d, 1), 1.0, false);
}

struct Attention {
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
            attention_block((g * t, tk, d), qs, ks, vs, self.scale, |p| self.softmax_rows(p, t, tk, bi), p, o);
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
                                attention_block_bwd((g * t, tk, d), (qs, ks, vs), p, dos, scale, dqs, dks, dvs);
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

// ---------------------------------------------------------------------------------------
// SwiGLU gate.

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
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

// ---------------------------------------------------------------------------------------
// Cross-entropy.

struct TokenNll {
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

// ---------------------------------------------------------------------------------------
// Packed (prefix-shared) sequences: rotary per token and attention along each row's path.

/// Rotary embedding of `(T, H·d)` rows, row `t` at the angles of table row `t`.
struct RopeRows {
    h: usize,
    d: usize,
    /// `(T, d/2)` cosines and sines, shared by every layer of a forward pass.
    tables: Arc<(Vec<f32>, Vec<f32>)>,
    layout: RopeLayout,
}

impl RopeRows {
    fn run(&self, x: &[f32], sign: f32) -> CResult<Vec<f32>> {
        let (h, d, half) = (self.h, self.d, self.d / 2);
        let (cos, sin) = (&self.tables.0, &self.tables.1);
        if !x.len().is_multiple_of(h * d) || cos.len() != x.len() / (h * d) * half {
            candle_core::bail!(
                "fused-rope: {} values do not fit {} table rows of {h} heads × {d}",
                x.len(),
                cos.len() / half.max(1)
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(h * d).zip(x.par_chunks(h * d)).enumerate().for_each(|(t, (dst, src))| {
            let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            for (o, i) in dst.chunks_mut(d).zip(src.chunks(d)) {
                rotate(i, o, c, s, self.layout, sign);
            }
        });
        Ok(y)
    }
}

impl CustomOp1 for RopeRows {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        Ok((CpuStorage::F32(self.run(x, 1.0)?), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let g = with_f32(grad, self.name(), |g| self.run(g, -1.0))?;
        Ok(Some(tensor(g, arg.shape().clone())?))
    }
}

/// Rotary cosines and sines, `inv_freq.len()` of each per position, positions in order.
pub fn rope_cos_sin(positions: impl IntoIterator<Item = u32>, inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in positions {
        for &f in inv_freq {
            // f64 for the angle: positions times frequencies lose precision in f32 at
            // long contexts, and the tables are small.
            let a = p as f64 * f as f64;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Cos/sin tables `(T, d/2)` for the positions of packed tokens, built once per forward
/// pass and shared by every layer's [`rope_rows`].
pub fn rope_tables(positions: &[u32], inv_freq: &[f32]) -> Arc<(Vec<f32>, Vec<f32>)> {
    Arc::new(rope_cos_sin(positions.iter().copied(), inv_freq))
}

/// `x` `(T, H·d)` with every head of row `t` rotated by the angles of `tables` row `t`.
pub fn rope_rows(
    x: &Tensor,
    h: usize,
    d: usize,
    tables: &Arc<(Vec<f32>, Vec<f32>)>,
    layout: RopeLayout,
) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(RopeRows { h, d, tables: tables.clone(), layout })?)
}

struct PackedAttention {
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
struct TaskBlocks {
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
    fn softmax(&self, p: &mut [f32], row: &crate::data::pack::PackedRow) {
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
                    &b.q,
                    &b.k,
                    &b.v,
                    self.scale,
                    |p| self.softmax(p, row),
                    &mut p,
                    &mut o,
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
                                    &mut dqb,
                                    &mut dkb,
                                    &mut dvb,
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var, D};

    use super::*;
    use crate::ops;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut r = crate::rng::stream(seed, 77, 0);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rand::Rng::random::<f32>(&mut r) * 2.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Compares values and the gradients of every input under a random upstream
    /// gradient `w` (loss = sum(y · w)).
    fn check(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Tensor,
        reference: impl Fn(&[Tensor]) -> Tensor,
        tol: f32,
    ) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (yf, yr) = (fused(&ts), reference(&ts));
        assert_eq!(yf.dims(), yr.dims());
        assert!(max_diff(&yf, &yr) < tol, "values differ by {}", max_diff(&yf, &yr));
        let w = randn(yf.dims(), 9);
        let gf = (yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (yr * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (gf.get(v.as_tensor()).unwrap(), gr.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < tol, "gradient of input {i} differs by {}", max_diff(a, b));
        }
    }

    #[test]
    fn system_blas_agrees_with_gemm() {
        // Runs where a BLAS is installed (CI installs OpenBLAS); the gemm path is what
        // every other machine uses and is covered by the tests below either way.
        let Some(blas) = crate::kernels::blas::get() else { return };
        let (m, n, k) = (7, 5, 9);
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        for (ls, rs) in [((k, 1), (n, 1)), ((1, m), (n, 1)), ((k, 1), (1, k)), ((1, m), (1, k))] {
            for accumulate in [false, true] {
                let mut a = vec![1f32; m * n];
                let mut b = a.clone();
                assert!(blas.sgemm((m, n, k), &mut a, accumulate, &lhs, ls, &rhs, rs, 0.5));
                mm_gemm((m, n, k), &mut b, accumulate, &lhs, ls, &rhs, rs, 0.5, true);
                assert_eq!(a, b, "strides {ls:?} {rs:?}, accumulate {accumulate}");
            }
        }
    }

    #[test]
    fn linear_matches_lora_definition() {
        // PEFT: y = x Wᵀ + b + (alpha/r) · B(A(x)).
        let (x, w, bias, a, b) =
            (randn(&[5, 12], 1), randn(&[7, 12], 2), randn(&[7], 3), randn(&[3, 12], 4), randn(&[7, 3], 5));
        check(
            &[x.clone(), a, b],
            |t| linear(&t[0], &w, Some(&bias), Some((&t[1], &t[2], 2.5))).unwrap(),
            |t| {
                let base = t[0].matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
                let low = t[0].matmul(&t[1].t().unwrap()).unwrap().matmul(&t[2].t().unwrap()).unwrap();
                (base + (low * 2.5).unwrap()).unwrap()
            },
            1e-5,
        );
        check(&[x], |t| linear(&t[0], &w, None, None).unwrap(), |t| t[0].matmul(&w.t().unwrap()).unwrap(), 1e-5);
    }

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

    #[test]
    fn silu_mul_matches_composition() {
        check(
            &[randn(&[4, 9], 1), randn(&[4, 9], 2)],
            |x| silu_mul(&x[0], &x[1]).unwrap(),
            |x| (x[0].silu().unwrap() * &x[1]).unwrap(),
            1e-6,
        );
    }

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
