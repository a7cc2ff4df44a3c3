//! What every kernel shares: f32 views of CPU storage and the matrix product on the
//! tensors' own buffers (on the engine [`super::blas`] chose for the product's size).

use candle_core::{CpuStorage, DType, Layout, Shape, Storage, Tensor};

pub(super) use super::blas::{mm_gemm, operands_fit, Mat, Products};

pub(super) type CResult<T> = candle_core::Result<T>;

/// Whether `x` can take the fused path: f32 on the CPU.
pub fn eligible(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

pub(super) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    match s {
        CpuStorage::F32(v) => match l.contiguous_offsets() {
            Some((a, b)) => Ok(&v[a..b]),
            None => candle_core::bail!("{op}: input is not contiguous"),
        },
        _ => candle_core::bail!("{op}: f32 only"),
    }
}

/// Runs `f` on the f32 buffer of `t` (made contiguous first).
pub(super) fn with_f32<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(cs) => f(slice(cs, l, op)?),
        _ => candle_core::bail!("{op}: CPU only"),
    }
}

pub(super) fn tensor(v: Vec<f32>, shape: impl Into<Shape>) -> CResult<Tensor> {
    Tensor::from_vec(v, shape, &candle_core::Device::Cpu)
}

/// `dst (m×n, row-major) = [dst +] scale · lhs · rhs` (the operands' strides in [`Mat`]),
/// on the engine `products` gives a product of `m` rows.
pub(super) fn mm(
    products: Products,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
) {
    if !operands_fit((m, n, k), dst, accumulate, lhs, rhs) {
        return;
    }
    if let Some(b) = products.for_rows(m) {
        if b.sgemm((m, n, k), dst, accumulate, lhs, rhs, scale) {
            return;
        }
    }
    mm_gemm((m, n, k), dst, accumulate, lhs, rhs, scale, products.threads);
}

pub(super) fn dims2(l: &Layout, op: &str) -> CResult<(usize, usize)> {
    match l.dims() {
        [a, b] => Ok((*a, *b)),
        d => candle_core::bail!("{op}: expected a matrix, got shape {d:?}"),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn system_blas_agrees_with_gemm() {
        // Runs where a BLAS is installed (CI installs OpenBLAS); the gemm path is what
        // every other machine uses and is covered by the tests below either way.
        let Some(blas) = crate::kernels::blas::libraries().first() else { return };
        let (m, n, k) = (7, 5, 9);
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        for (ls, rs) in [((k, 1), (n, 1)), ((1, m), (n, 1)), ((k, 1), (1, k)), ((1, m), (1, k))] {
            for accumulate in [false, true] {
                let mut a = vec![1f32; m * n];
                let mut b = a.clone();
                assert!(blas.sgemm((m, n, k), &mut a, accumulate, Mat::new(&lhs, ls), Mat::new(&rhs, rs), 0.5));
                mm_gemm((m, n, k), &mut b, accumulate, Mat::new(&lhs, ls), Mat::new(&rhs, rs), 0.5, 2);
                assert_eq!(a, b, "strides {ls:?} {rs:?}, accumulate {accumulate}");
            }
        }
    }
}
