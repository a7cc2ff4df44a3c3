//! The linear layer with optional LoRA: `x Wᵀ + b + s·(x Aᵀ) Bᵀ` with a frozen `W`;
//! backward computes `∂x`, `∂A`, `∂B`, never `∂W`, and recomputes `x Aᵀ` rather than
//! keeping it. DoRA's layer `g ⊙ (x Wᵀ + s·(x Aᵀ) Bᵀ) + b` (a factor per output) is the
//! same op with the factor applied in place and its gradient summed in the backward.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Shape, Tensor};

use super::common::*;
use crate::Result;

pub(super) struct FrozenLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    products: Products,
}

pub(super) struct LoraLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    scale: f32,
    products: Products,
}

pub(super) struct DoraLinear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    scale: f32,
    products: Products,
}

/// `x Wᵀ (+ b)` into a fresh `(n, out)` buffer.
pub(super) fn base_forward(
    products: Products,
    x: &[f32],
    (n, fin): (usize, usize),
    weight: &Tensor,
    bias: Option<&[f32]>,
) -> CResult<Vec<f32>> {
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
        mm(products, (n, fout, fin), &mut y, bias.is_some(), Mat::new(x, (fin, 1)), Mat::new(w, (1, fin)), 1.0);
        Ok(())
    })?;
    Ok(y)
}

/// `g W`: the input gradient of a frozen linear layer.
pub(super) fn base_backward(products: Products, g: &[f32], n: usize, weight: &Tensor) -> CResult<Vec<f32>> {
    let (fout, fin) = weight.dims2()?;
    let mut gx = vec![0f32; n * fin];
    with_f32(weight, "fused linear", |w| {
        mm(products, (n, fin, fout), &mut gx, false, Mat::new(g, (fout, 1)), Mat::new(w, (fin, 1)), 1.0);
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
        let y = base_forward(self.products, x, (n, fin), &self.weight, self.bias.as_deref())?;
        Ok((CpuStorage::F32(y), Shape::from((n, self.weight.dim(0)?))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let (n, fin) = arg.dims2()?;
        let gx = with_f32(grad, self.name(), |g| base_backward(self.products, g, n, &self.weight))?;
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
        let dims @ (n, _, _, fout) = factor_dims(name, (l1, l2, l3), 0, &self.weight)?;
        let y = lora_forward(self.products, &self.weight, (x, a, b), self.bias.as_deref(), dims, self.scale)?;
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
                        lora_backward(self.products, &self.weight, g, (xv, av, bv), (n, fin, r, fout), s)
                    })
                })
            })
        })?;
        Ok((Some(tensor(gx, (n, fin))?), Some(tensor(ga, (r, fin))?), Some(tensor(gb, (fout, r))?)))
    }
}

/// `(n, in, r, out)` of a LoRA-shaped op's operands: input `x` `(n, in)`, `A` `(r, in)`
/// and a third `(out, r + extra)` (`B`, or DoRA's `[B | g]` with `extra` 1), checked
/// against each other and the frozen `weight` `(out, in)`.
fn factor_dims(
    name: &str,
    (lx, la, lb): (&Layout, &Layout, &Layout),
    extra: usize,
    weight: &Tensor,
) -> CResult<(usize, usize, usize, usize)> {
    let (n, fin) = dims2(lx, name)?;
    let (r, ain) = dims2(la, name)?;
    let (fout, cols) = dims2(lb, name)?;
    if ain != fin || cols != r + extra || weight.dims() != [fout, fin] {
        candle_core::bail!(
            "{name}: factors {:?} and {:?} do not fit input {:?} and weight {:?}",
            la.dims(),
            lb.dims(),
            lx.dims(),
            weight.dims()
        );
    }
    Ok((n, fin, r, fout))
}

/// The LoRA layer's gradients for the upstream gradient `g` `(n, out)`: `∂x = g W +
/// s·(g B) A`, `∂A = s·(g B)ᵀ x`, `∂B = s·gᵀ (x Aᵀ)`.
fn lora_backward(
    products: Products,
    weight: &Tensor,
    g: &[f32],
    (xv, av, bv): (&[f32], &[f32], &[f32]),
    (n, fin, r, fout): (usize, usize, usize, usize),
    s: f32,
) -> CResult<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let mut gx = base_backward(products, g, n, weight)?;
    // gh = g B (n × r); ∂x += s·gh A; ∂A = s·ghᵀ x; ∂B = s·gᵀ (x Aᵀ).
    let mut gh = vec![0f32; n * r];
    mm(products, (n, r, fout), &mut gh, false, Mat::new(g, (fout, 1)), Mat::new(bv, (r, 1)), 1.0);
    mm(products, (n, fin, r), &mut gx, true, Mat::new(&gh, (r, 1)), Mat::new(av, (fin, 1)), s);
    let mut ga = vec![0f32; r * fin];
    mm(products, (r, fin, n), &mut ga, false, Mat::new(&gh, (1, r)), Mat::new(xv, (fin, 1)), s);
    let mut h = vec![0f32; n * r];
    mm(products, (n, r, fin), &mut h, false, Mat::new(xv, (fin, 1)), Mat::new(av, (1, fin)), 1.0);
    let mut gb = vec![0f32; fout * r];
    mm(products, (fout, r, n), &mut gb, false, Mat::new(g, (1, fout)), Mat::new(&h, (r, 1)), s);
    Ok((gx, ga, gb))
}

/// `y = x Wᵀ (+ bias) + s·(x Aᵀ) Bᵀ` into a fresh `(n, out)` buffer.
fn lora_forward(
    products: Products,
    weight: &Tensor,
    (x, a, b): (&[f32], &[f32], &[f32]),
    bias: Option<&[f32]>,
    (n, fin, r, fout): (usize, usize, usize, usize),
    s: f32,
) -> CResult<Vec<f32>> {
    let mut y = base_forward(products, x, (n, fin), weight, bias)?;
    let mut h = vec![0f32; n * r];
    mm(products, (n, r, fin), &mut h, false, Mat::new(x, (fin, 1)), Mat::new(a, (1, fin)), 1.0);
    mm(products, (n, fout, r), &mut y, true, Mat::new(&h, (r, 1)), Mat::new(b, (1, r)), s);
    Ok(y)
}

/// B `(out, r)` and the factor `g` `(out,)` of DoRA's third operand `[B | g]` `(out, r + 1)`.
fn split_bg(bg: &[f32], r: usize) -> (Vec<f32>, Vec<f32>) {
    let mut b = Vec::with_capacity(bg.len() / (r + 1) * r);
    let mut g = Vec::with_capacity(bg.len() / (r + 1));
    for row in bg.chunks(r + 1) {
        b.extend_from_slice(&row[..r]);
        g.push(row[r]);
    }
    (b, g)
}

impl CustomOp3 for DoraLinear {
    fn name(&self) -> &'static str {
        "fused-dora-linear"
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
        let (x, a, bg) = (slice(s1, l1, name)?, slice(s2, l2, name)?, slice(s3, l3, name)?);
        let (n, fin, r, fout) = factor_dims(name, (l1, l2, l3), 1, &self.weight)?;
        let (b, g) = split_bg(bg, r);
        let mut y = lora_forward(self.products, &self.weight, (x, a, &b), None, (n, fin, r, fout), self.scale)?;
        for row in y.chunks_mut(fout) {
            for (v, &f) in row.iter_mut().zip(&g) {
                *v *= f;
            }
            if let Some(bias) = &self.bias {
                for (v, &c) in row.iter_mut().zip(bias) {
                    *v += c;
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((n, fout))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        bg: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, fin) = x.dims2()?;
        let (r, _) = a.dims2()?;
        let (fout, _) = bg.dims2()?;
        let name = self.name();
        let (gx, ga, gbg) = with_f32(grad, name, |dy| {
            with_f32(x, name, |xv| {
                with_f32(a, name, |av| {
                    with_f32(bg, name, |bgv| {
                        with_f32(res, name, |y| {
                            let (b, g) = split_bg(bgv, r);
                            // ∂g = Σ_rows ∂y ⊙ (x Wᵀ + s·x Aᵀ Bᵀ): the unscaled output, from
                            // the output (minus the bias, over g) — recomputed only where a
                            // factor is 0 and the division cannot give it back.
                            let recomputed = if g.contains(&0.0) {
                                Some(lora_forward(
                                    self.products,
                                    &self.weight,
                                    (xv, av, &b),
                                    None,
                                    (n, fin, r, fout),
                                    self.scale,
                                )?)
                            } else {
                                None
                            };
                            let inv: Vec<f32> = g.iter().map(|&f| if f == 0.0 { 0.0 } else { 1.0 / f }).collect();
                            let zero = vec![0f32; fout];
                            let bias = self.bias.as_deref().unwrap_or(&zero);
                            let mut dg = vec![0f64; fout];
                            let mut scaled = vec![0f32; n * fout];
                            for (i, (d, y)) in dy.chunks(fout).zip(y.chunks(fout)).enumerate() {
                                let plain = recomputed.as_ref().map(|p| &p[i * fout..(i + 1) * fout]);
                                let out = &mut scaled[i * fout..(i + 1) * fout];
                                let rows = dg.iter_mut().zip(out.iter_mut()).zip(d.iter().zip(y));
                                for (o, ((acc, dst), (&dv, &yv))) in rows.enumerate() {
                                    let unscaled = match plain {
                                        Some(p) if g[o] == 0.0 => p[o],
                                        _ => (yv - bias[o]) * inv[o],
                                    };
                                    *acc += f64::from(dv) * f64::from(unscaled);
                                    *dst = dv * g[o];
                                }
                            }
                            let (gx, ga, gb) = lora_backward(
                                self.products,
                                &self.weight,
                                &scaled,
                                (xv, av, &b),
                                (n, fin, r, fout),
                                self.scale,
                            )?;
                            let mut gbg = Vec::with_capacity(fout * (r + 1));
                            for (row, &d) in gb.chunks(r).zip(&dg) {
                                gbg.extend_from_slice(row);
                                gbg.push(d as f32);
                            }
                            Ok((gx, ga, gbg))
                        })
                    })
                })
            })
        })?;
        Ok((Some(tensor(gx, (n, fin))?), Some(tensor(ga, (r, fin))?), Some(tensor(gbg, (fout, r + 1))?)))
    }
}

/// DoRA's layer `g ⊙ (x Wᵀ + scale · (x Aᵀ) Bᵀ) + bias` for `x` `(N, in)`, frozen
/// `weight` `(out, in)`, factors `A` `(r, in)`, `B` `(out, r)` and the per-output factor
/// `g` `(1, out)` (`m / ‖W + s·B·A‖`). Gradients reach `x`, `A`, `B` and `g`.
pub fn dora_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    (a, b, scale): (&Tensor, &Tensor, f64),
    g: &Tensor,
    products: Products,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    let bg = Tensor::cat(&[b, &g.t()?], 1)?.contiguous()?;
    Ok(x.apply_op3(&a.contiguous()?, &bg, DoraLinear { weight: weight.clone(), bias, scale: scale as f32, products })?)
}

/// `x Wᵀ + bias + scale · (x Aᵀ) Bᵀ` for `x` `(N, in)`, frozen `weight` `(out, in)` and
/// optional LoRA factors `A` `(r, in)`, `B` `(out, r)`. Gradients reach `x`, `A` and `B`.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    lora: Option<(&Tensor, &Tensor, f64)>,
    products: Products,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let bias = bias.map(|b| b.to_vec1::<f32>()).transpose()?;
    Ok(match lora {
        None => x.apply_op1(FrozenLinear { weight: weight.clone(), bias, products })?,
        Some((a, b, scale)) => x.apply_op3(
            &a.contiguous()?,
            &b.contiguous()?,
            LoraLinear { weight: weight.clone(), bias, scale: scale as f32, products },
        )?,
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kernels::test_util::{check, randn};

    #[test]
    fn linear_matches_lora_definition() {
        // PEFT: y = x Wᵀ + b + (alpha/r) · B(A(x)).
        let (x, w, bias, a, b) =
            (randn(&[5, 12], 1), randn(&[7, 12], 2), randn(&[7], 3), randn(&[3, 12], 4), randn(&[7, 3], 5));
        check(
            &[x.clone(), a, b],
            |t| linear(&t[0], &w, Some(&bias), Some((&t[1], &t[2], 2.5)), Products::gemm(1)).unwrap(),
            |t| {
                let base = t[0].matmul(&w.t().unwrap()).unwrap().broadcast_add(&bias).unwrap();
                let low = t[0].matmul(&t[1].t().unwrap()).unwrap().matmul(&t[2].t().unwrap()).unwrap();
                (base + (low * 2.5).unwrap()).unwrap()
            },
            1e-5,
        );
        check(
            &[x],
            |t| linear(&t[0], &w, None, None, Products::gemm(1)).unwrap(),
            |t| t[0].matmul(&w.t().unwrap()).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn dora_linear_matches_its_composition() {
        // PEFT's DoRA layer: g ⊙ (x Wᵀ + s·B(A(x))) + b, g per output; gradients to x, A,
        // B and g. With a factor of 0 (a zero magnitude) the unscaled output is recomputed.
        let (x, w, bias, a, b) =
            (randn(&[5, 12], 1), randn(&[7, 12], 2), randn(&[7], 3), randn(&[3, 12], 4), randn(&[7, 3], 5));
        for g in [
            randn(&[1, 7], 6),
            (randn(&[1, 7], 6) * Tensor::new(&[[1f32, 0., 1., 1., 1., 1., 1.]], &candle_core::Device::Cpu).unwrap())
                .unwrap(),
        ] {
            check(
                &[x.clone(), a.clone(), b.clone(), g],
                |t| dora_linear(&t[0], &w, Some(&bias), (&t[1], &t[2], 2.5), &t[3], Products::gemm(1)).unwrap(),
                |t| {
                    let base = t[0].matmul(&w.t().unwrap()).unwrap();
                    let low = t[0].matmul(&t[1].t().unwrap()).unwrap().matmul(&t[2].t().unwrap()).unwrap();
                    (base + (low * 2.5).unwrap()).unwrap().broadcast_mul(&t[3]).unwrap().broadcast_add(&bias).unwrap()
                },
                1e-5,
            );
        }
    }
}
