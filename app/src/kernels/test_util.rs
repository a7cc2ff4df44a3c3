//! Helpers of the kernels' tests: random tensors, and values and gradients of a fused op
//! checked against the composed version.

use candle_core::{Device, Tensor, Var, D};

pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar::<f32>().unwrap()
}

pub(super) fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut r = crate::rng::stream(seed, 77, 0);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rand::Rng::random::<f32>(&mut r) * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Compares values and the gradients of every input under a random upstream
/// gradient `w` (loss = sum(y · w)).
pub(super) fn check(
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
