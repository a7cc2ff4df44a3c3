//! Rotary embedding per packed token (prefix-shared batches), with the cos/sin tables
//! built once per forward pass and shared by every layer.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::common::*;
use super::heads::rotate;
use crate::Result;

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RopeLayout {
    /// Hugging Face: dimension `i` pairs with `i + head_dim/2`.
    #[default]
    HalfRotation,
    /// GGUF / Meta original: dimension `2i` pairs with `2i+1` (llama.cpp permutes the
    /// q/k rows of Hugging Face checkpoints into this order on conversion).
    Interleaved,
}

/// Rotary embedding of `(T, H·d)` rows, row `t` at the angles of table row `t`.
pub(super) struct RopeRows {
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
