//! Differentiable building blocks of the decoder: RMSNorm, softmax, rotary embeddings,
//! attention masks and the completion-only cross-entropy.
//!
//! candle's fused CPU kernels for these (`candle_nn::ops::rms_norm`, `rope`, …) have no
//! backward pass, so training uses these compositions of basic tensor ops, each of which
//! candle differentiates.

use candle_core::{DType, Device, Tensor, D};

use crate::kernels::blas::Products;
use crate::kernels::RopeLayout;
use crate::Result;

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension, computed in f32 (the
/// fused kernel on the CPU in f32).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if crate::kernels::eligible(x) {
        return crate::kernels::rms_norm(x, weight, eps);
    }
    rms_norm_composed(x, weight, eps)
}

/// [`rms_norm`] from basic ops (any device and dtype).
pub fn rms_norm_composed(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(accumulation_dtype(dtype))?;
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// f32 for half-precision inputs, the input's own type otherwise.
pub fn accumulation_dtype(d: DType) -> DType {
    match d {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    }
}

/// Softmax over the last dimension. The max is detached: softmax is invariant to the
/// shift, so it needs no gradient and the backward pass skips the max reduction.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&sum)?)
}

/// Log-softmax over the last dimension (max detached, see [`softmax_last_dim`]).
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Cos/sin tables for rotary embeddings at the given positions.
#[derive(Debug, Clone)]
pub struct RopeTables {
    /// `(B, 1, T, head_dim/2)`
    pub cos: Tensor,
    /// `(B, 1, T, head_dim/2)`
    pub sin: Tensor,
}

impl RopeTables {
    /// Tables for `positions` (`B` rows of `T` positions) and inverse frequencies.
    pub fn new(positions: &[Vec<u32>], inv_freq: &[f32], device: &Device) -> Result<Self> {
        let b = positions.len();
        let t = positions.first().map_or(0, |p| p.len());
        let half = inv_freq.len();
        let (cos, sin) = rope_cos_sin(positions.iter().flatten().copied(), inv_freq);
        Ok(Self {
            cos: Tensor::from_vec(cos, (b, 1, t, half), device)?,
            sin: Tensor::from_vec(sin, (b, 1, t, half), device)?,
        })
    }

    /// Rotates `x` of shape `(B, H, T, head_dim)` pairing dimensions as `layout` says.
    pub fn apply(&self, x: &Tensor, layout: RopeLayout) -> Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        let half = d / 2;
        let dtype = x.dtype();
        let cos = self.cos.to_dtype(dtype)?;
        let sin = self.sin.to_dtype(dtype)?;
        match layout {
            RopeLayout::HalfRotation => {
                let x1 = x.narrow(D::Minus1, 0, half)?;
                let x2 = x.narrow(D::Minus1, half, half)?;
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
                Ok(Tensor::cat(&[y1, y2], D::Minus1)?)
            }
            RopeLayout::Interleaved => {
                let x = x.reshape((b, h, t, half, 2))?;
                let x1 = x.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?;
                let x2 = x.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?;
                let y1 = (x1.broadcast_mul(&cos)? - x2.broadcast_mul(&sin)?)?;
                let y2 = (x1.broadcast_mul(&sin)? + x2.broadcast_mul(&cos)?)?;
                Ok(Tensor::stack(&[y1, y2], D::Minus1)?.reshape((b, h, t, d))?)
            }
        }
    }
}

/// Additive attention mask `(B, 1, T, past + T)`: query `i` (at absolute index
/// `past + i`) may see key `j` when `j <= past + i`, the key is not padding, and (with a
/// sliding window) `past + i - j < window`. A query always sees itself, so padded query
/// rows stay finite.
pub fn attention_mask(
    key_mask: &[Vec<u8>],
    t: usize,
    past: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = key_mask.len();
    let tk = past + t;
    let mut m = vec![0f32; b * t * tk];
    for (bi, keys) in key_mask.iter().enumerate() {
        for i in 0..t {
            let q = past + i;
            let row = &mut m[(bi * t + i) * tk..(bi * t + i + 1) * tk];
            for (j, v) in row.iter_mut().enumerate() {
                let visible = j == q || (j < q && keys[j] != 0 && window.is_none_or(|w| q - j < w));
                if !visible {
                    *v = f32::NEG_INFINITY;
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, t, tk), device)?)
}

/// Positions of each token given its row's padding mask: counts only real tokens, so a
/// left-padded row starts at 0 on its first real token.
pub fn positions_from_mask(mask: &[Vec<u8>], past: &[usize]) -> Vec<Vec<u32>> {
    mask.iter()
        .zip(past)
        .map(|(row, &start)| {
            let mut p = start as u32;
            row.iter()
                .map(|&m| {
                    let here = p;
                    if m != 0 {
                        p += 1;
                    }
                    here
                })
                .collect()
        })
        .collect()
}

/// Mean negative log-likelihood of `targets` under `logits` `(N, V)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(token_nll(logits, targets)?.mean_all()?)
}

/// Per-row negative log-likelihood of `targets` under `logits` `(N, V)` (the fused
/// kernel on the CPU in f32).
pub fn token_nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if crate::kernels::eligible(logits) {
        return crate::kernels::token_nll(logits, targets);
    }
    token_nll_composed(logits, targets)
}

/// Per-row negative log-likelihood of `targets` under the logits `hidden · weightᵀ` of a
/// frozen LM head: the fused kernel on the CPU in f32 (no `(N, vocab)` logits), else the
/// logits and [`token_nll`].
pub fn lm_head_nll(hidden: &Tensor, weight: &Tensor, targets: &Tensor, products: Products) -> Result<Tensor> {
    if crate::kernels::eligible(hidden) && weight.dtype() == DType::F32 {
        return crate::kernels::lm_head_nll(hidden, weight, targets, products);
    }
    token_nll(&frozen_matmul(hidden, weight, products)?, targets)
}

/// [`token_nll`] from basic ops (any device and dtype).
pub fn token_nll_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = log_softmax_last_dim(&logits.to_dtype(accumulation_dtype(logits.dtype()))?)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// `x · Wᵀ` for a frozen weight `W` `(out, in)`, `x` `(N, in)`, on the engines `products`
/// (the model's, see [`crate::kernels::blas::select`]).
///
/// candle's matmul backward always computes the gradient of both operands; for a frozen
/// base weight that is a wasted matmul per layer and a weight-sized buffer kept until the
/// step ends. The fused kernel computes only `∂x = ∂y · W`.
pub fn frozen_matmul(x: &Tensor, weight: &Tensor, products: Products) -> Result<Tensor> {
    if crate::kernels::eligible(x) && weight.dtype() == DType::F32 {
        return crate::kernels::linear(x, weight, None, None, products);
    }
    Ok(x.matmul(&weight.t()?)?)
}

/// A LoRA term of a linear layer: `(A, B, scale)`, adding `scale · (x Aᵀ) Bᵀ`.
pub type LoraTerm<'a> = (&'a Tensor, &'a Tensor, f64);

/// `x Wᵀ + b + s·(x' Aᵀ) Bᵀ` with a frozen `W`: one fused op on the CPU in f32 (gradients
/// for `x`, `A`, `B` only), composed elsewhere. `lora_input` is the adapter's input when
/// it differs from `x` (dropout in training); the fused kernel does not take one.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<LoraTerm>,
    lora_input: Option<&Tensor>,
    products: Products,
) -> Result<Tensor> {
    if crate::kernels::eligible(x) && weight.dtype() == DType::F32 && lora_input.is_none() {
        return crate::kernels::linear(x, weight, bias, lora, products);
    }
    let mut y = frozen_matmul(x, weight, products)?;
    if let Some(b) = bias {
        y = y.broadcast_add(b)?;
    }
    let Some((a, b, scale)) = lora else { return Ok(y) };
    let xin = lora_input.unwrap_or(x);
    let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
    let low = xin.matmul(&a.t()?)?.matmul(&b.t()?)?;
    Ok((y + (low * scale)?)?)
}

/// DoRA's layer `g ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b` with a frozen `W` and the per-output
/// factor `g` `(1, out)`: one fused op on the CPU in f32 (gradients for `x`, `A`, `B` and
/// `g`), composed elsewhere.
pub fn dora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: LoraTerm,
    g: &Tensor,
    products: Products,
) -> Result<Tensor> {
    if crate::kernels::eligible(x) && weight.dtype() == DType::F32 {
        return crate::kernels::dora_linear(x, weight, bias, lora, &g.to_dtype(DType::F32)?, products);
    }
    let y = linear(x, weight, None, Some(lora), None, products)?.broadcast_mul(&g.to_dtype(x.dtype())?)?;
    Ok(match bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// DoRA's row norms `‖W_o + s·(B A)_o‖` of a frozen weight `W` `(out, in)` and the
/// factors `A` `(r, in)`, `B` `(out, r)`, shaped `(out,)`, without a gradient: one pass
/// over `W` on the CPU in f32, elsewhere the adapted weight formed densely (PEFT's own
/// definition).
pub fn dora_norms(w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    if crate::kernels::eligible(w) && a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return crate::kernels::dora_norms(w, a, b, scale);
    }
    let (w, a, b) = (w.detach(), a.detach(), b.detach());
    Ok((&w + (b.matmul(&a)? * scale)?)?.sqr()?.sum(1)?.sqrt()?)
}

/// The SwiGLU gate `silu(g) · u`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if crate::kernels::eligible(gate) {
        return crate::kernels::silu_mul(gate, up);
    }
    Ok((gate.silu()? * up)?)
}

/// `(B·T, H·d)` → `(B, H, T, d)`, with rotary embedding applied when `rope` is given.
pub fn split_heads(
    x: &Tensor,
    (b, t, h, d): (usize, usize, usize, usize),
    rope: Option<(&RopeTables, RopeLayout)>,
) -> Result<Tensor> {
    if crate::kernels::eligible(x) {
        return crate::kernels::heads(x, (b, t, h, d), rope.map(|(r, layout)| (&r.cos, &r.sin, layout)));
    }
    let x = x.reshape((b, t, h, d))?.transpose(1, 2)?.contiguous()?;
    match rope {
        Some((r, layout)) => r.apply(&x, layout),
        None => Ok(x),
    }
}

/// Grouped-query attention `softmax(scale·QKᵀ + mask)·V` for `q` `(B, H, T, d)` and `k`,
/// `v` `(B, H_kv, T_k, d)`, without repeating k/v: each kv head's query group is folded
/// into the sequence axis. Returns `(B, H, T, d)`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    if crate::kernels::eligible(q) {
        return crate::kernels::attention(q, k, v, mask, scale);
    }
    let (b, nh, t, hd) = q.dims4()?;
    let (nkv, tk) = (k.dim(1)?, k.dim(2)?);
    let g = nh / nkv;
    let q = q.reshape((b, nkv, g * t, hd))?;
    let scores = (q.matmul(&k.t()?)?.reshape((b, nh, t, tk))? * scale)?;
    let probs = softmax_last_dim(&scores.broadcast_add(mask)?)?.reshape((b, nkv, g * t, tk))?;
    Ok(probs.matmul(v)?.reshape((b, nh, t, hd))?)
}

/// The packed path (prefix-shared batches, [`crate::kernels::pack`]) has CPU f32 kernels
/// only; [`crate::model::Llama::can_pack`] says when it runs.
pub use crate::kernels::{packed_attention, rope_cos_sin, rope_rows, rope_tables};

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < tol, "max diff {d}");
    }

    #[test]
    fn frozen_matmul_gives_input_gradient_only() {
        let x = candle_core::Var::new(&[[1f32, 2., 3.], [4., 5., 6.]], &Device::Cpu).unwrap();
        let w = Tensor::new(&[[1f32, 0., -1.], [2., 1., 0.]], &Device::Cpu).unwrap();
        let y = frozen_matmul(x.as_tensor(), &w, Products::gemm(1)).unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), vec![vec![-2., 4.], vec![-2., 13.]]);
        // Non-contiguous input takes the strided path.
        let wide = candle_core::Var::new(&[[1f32, 2., 3., 9.], [4., 5., 6., 9.]], &Device::Cpu).unwrap();
        let narrow = wide.as_tensor().narrow(1, 0, 3).unwrap();
        assert!(!narrow.is_contiguous());
        let y2 = frozen_matmul(&narrow, &w, Products::gemm(1)).unwrap();
        assert_eq!(y2.to_vec2::<f32>().unwrap(), vec![vec![-2., 4.], vec![-2., 13.]]);
        let g = y.sum_all().unwrap().backward().unwrap();
        // d sum(x Wᵀ) / dx = 1ᵀ W = column sums of W for every row.
        assert_eq!(g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), vec![vec![3., 1., -1.], vec![3., 1., -1.]]);
        assert!(g.get(&w).is_none());
    }

    #[test]
    fn rms_norm_matches_candle_kernel() {
        let x = Tensor::randn(0f32, 1., (2, 3, 8), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1., 8, &Device::Cpu).unwrap();
        close(&rms_norm(&x, &w, 1e-5).unwrap(), &candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap(), 1e-5);
    }

    #[test]
    fn softmaxes_match_candle_kernel() {
        let x = Tensor::randn(0f32, 3., (4, 17), &Device::Cpu).unwrap();
        close(&softmax_last_dim(&x).unwrap(), &candle_nn::ops::softmax_last_dim(&x).unwrap(), 1e-6);
        close(&log_softmax_last_dim(&x).unwrap(), &candle_nn::ops::log_softmax(&x, 1).unwrap(), 1e-5);
    }

    #[test]
    fn rope_layouts_match_candle_kernels() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev).unwrap();
        let inv: Vec<f32> = (0..4).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / 8.0)).collect();
        let pos: Vec<Vec<u32>> = vec![(0..5).collect(), (0..5).collect()];
        let tab = RopeTables::new(&pos, &inv, &dev).unwrap();
        let cos = tab.cos.get(0).unwrap().squeeze(0).unwrap().contiguous().unwrap();
        let sin = tab.sin.get(0).unwrap().squeeze(0).unwrap().contiguous().unwrap();
        close(
            &tab.apply(&x, RopeLayout::HalfRotation).unwrap(),
            &candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap(),
            1e-5,
        );
        close(
            &tab.apply(&x, RopeLayout::Interleaved).unwrap(),
            &candle_nn::rotary_emb::rope_i(&x, &cos, &sin).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn mask_is_causal_and_hides_padding() {
        let m = attention_mask(&[vec![0, 1, 1]], 3, 0, None, &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0., inf, inf], vec![inf, 0., inf], vec![inf, 0., 0.]]);
        let w = attention_mask(&[vec![1, 1, 1, 1]], 1, 3, Some(2), &Device::Cpu).unwrap();
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(w, vec![inf, inf, 0., 0.]);
    }

    #[test]
    fn positions_skip_left_padding() {
        assert_eq!(
            positions_from_mask(&[vec![0, 0, 1, 1], vec![1, 1, 1, 1]], &[0, 0]),
            vec![vec![0, 0, 0, 1], vec![0, 1, 2, 3]]
        );
        assert_eq!(positions_from_mask(&[vec![1]], &[5]), vec![vec![5]]);
    }

    #[test]
    fn cross_entropy_matches_hand_computation() {
        // logits [ln1, ln2, ln1] -> p = [.25, .5, .25]; target 1 -> -ln .5
        let l = Tensor::new(&[[0f32, 2f32.ln(), 0.]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let ce = cross_entropy(&l, &t).unwrap().to_scalar::<f32>().unwrap();
        assert!((ce - 2f32.ln()).abs() < 1e-6);
    }
}
