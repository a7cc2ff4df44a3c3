//! DoRA's row norms `‖W_o + s·(B A)_o‖` of a frozen weight `W` `(out, in)` and the
//! layer's factors `A` `(r, in)`, `B` `(out, r)`, as PEFT defines them (the norm of the
//! adapted weight's rows), in one pass over `W`: each row is summed with its `r` scaled
//! rows of `A` sixteen columns at a time in registers and squared there, so neither the
//! dense `(out, in)` sum nor the `W Aᵀ` product (and its packing of all of `W`) is ever
//! formed. The norm carries no gradient (PEFT detaches it), so there is no backward.

use candle_core::Tensor;
use rayon::prelude::*;

use super::common::*;
use crate::{Error, Result};

/// Columns per register block (one AVX2 register).
const LANES: usize = 8;

/// Rows summed together: each block of `A` loaded is used for this many rows.
const TILE: usize = 4;

/// Rows per parallel task (a multiple of [`TILE`]).
const ROWS: usize = 32;

/// `‖W_o + scale·(B A)_o‖` for every row `o` of `weight`, shaped `(out,)`; f32 on the CPU.
pub fn dora_norms(weight: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (out, fin) = weight.dims2()?;
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if a_in != fin || b_out != out || b_r != r {
        return Err(Error::Invalid(format!(
            "DoRA norms: weight ({out}, {fin}), A ({r}, {a_in}) and B ({b_out}, {b_r}) do not fit"
        )));
    }
    let s = scale as f32;
    let norms = with_f32(weight, "dora_norms", |w| {
        with_f32(a, "dora_norms", |a| {
            with_f32(b, "dora_norms", |b| {
                let mut norms = vec![0f32; out];
                norms.par_chunks_mut(ROWS).enumerate().for_each(|(task, chunk)| {
                    let first = task * ROWS;
                    let rows = first..first + chunk.len();
                    // s·B_o per row: the coefficients of A's rows.
                    let coef: Vec<f32> = b[rows.start * r..rows.end * r].iter().map(|&x| s * x).collect();
                    norms_of(&w[rows.start * fin..rows.end * fin], a, fin, r, &coef, chunk);
                });
                Ok(norms)
            })
        })
    })?;
    Ok(tensor(norms, out)?)
}

/// `out[i] = ‖w_i + Σ_j coef[i·r + j] · a_j‖` for the rows `w_i` of `w` and `a_j` of `a`
/// (each `fin` long): with AVX2 and FMA where the CPU has them (detected at run time;
/// the build targets plain x86-64).
fn norms_of(w: &[f32], a: &[f32], fin: usize, r: usize, coef: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features (just detected).
        return unsafe { norms_fma(w, a, fin, r, coef, out) };
    }
    norms_portable(w, a, fin, r, coef, out)
}

/// [`norms_of`] with AVX2 and FMA: [`TILE`] rows at a time, each block of eight columns of
/// every row of `A` loaded once for the four rows' sums (in registers, with their squares).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn norms_fma(w: &[f32], a: &[f32], fin: usize, r: usize, coef: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    const _: () = assert!(TILE == 4 && LANES == 8);
    let whole = out.len() / TILE * TILE;
    let blocks = fin / LANES;
    assert!(w.len() >= out.len() * fin && a.len() >= r * fin && coef.len() >= out.len() * r);
    for at in (0..whole).step_by(TILE) {
        let rows = w[at * fin..(at + TILE) * fin].as_ptr();
        let c = &coef[at * r..(at + TILE) * r];
        let mut acc = [_mm256_setzero_ps(); TILE];
        for k in 0..blocks {
            let col = k * LANES;
            // SAFETY: every load reads LANES floats at `col + LANES ≤ fin` within a row
            // of `w` (TILE rows from `at`) or of `a` (r rows), both asserted above.
            unsafe {
                let mut v = [
                    _mm256_loadu_ps(rows.add(col)),
                    _mm256_loadu_ps(rows.add(fin + col)),
                    _mm256_loadu_ps(rows.add(2 * fin + col)),
                    _mm256_loadu_ps(rows.add(3 * fin + col)),
                ];
                for j in 0..r {
                    let y = _mm256_loadu_ps(a.as_ptr().add(j * fin + col));
                    for (t, vt) in v.iter_mut().enumerate() {
                        *vt = _mm256_fmadd_ps(_mm256_set1_ps(c[t * r + j]), y, *vt);
                    }
                }
                for (s, vt) in acc.iter_mut().zip(v) {
                    *s = _mm256_fmadd_ps(vt, vt, *s);
                }
            }
        }
        for (t, s) in acc.iter().enumerate() {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` holds LANES floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *s) };
            let row = &w[(at + t) * fin..(at + t + 1) * fin];
            let tail: f32 = (blocks * LANES..fin)
                .map(|col| row[col] + (0..r).map(|j| c[t * r + j] * a[j * fin + col]).sum::<f32>())
                .map(|x| x * x)
                .sum();
            out[at + t] = (lanes.iter().sum::<f32>() + tail).sqrt();
        }
    }
    for at in whole..out.len() {
        out[at] = tile::<true, 1>(&w[at * fin..], a, fin, r, &coef[at * r..])[0];
    }
}

/// [`norms_of`] without FMA (where the CPU lacks it `mul_add` is a library call),
/// [`TILE`] rows at a time, then one at a time.
fn norms_portable(w: &[f32], a: &[f32], fin: usize, r: usize, coef: &[f32], out: &mut [f32]) {
    let whole = out.len() / TILE * TILE;
    for at in (0..whole).step_by(TILE) {
        let n = tile::<false, TILE>(&w[at * fin..], a, fin, r, &coef[at * r..]);
        out[at..at + TILE].copy_from_slice(&n);
    }
    for at in whole..out.len() {
        out[at] = tile::<false, 1>(&w[at * fin..], a, fin, r, &coef[at * r..])[0];
    }
}

/// The norms of `T` consecutive rows: each block of [`LANES`] columns of `A`'s rows is
/// loaded once for all `T`, the sums and their squares stay in registers; `FMA`: fused
/// multiply-adds (the AVX2 path's last rows).
#[inline(always)]
fn tile<const FMA: bool, const T: usize>(w: &[f32], a: &[f32], fin: usize, r: usize, coef: &[f32]) -> [f32; T] {
    let madd = |c: f32, y: f32, x: f32| if FMA { c.mul_add(y, x) } else { c * y + x };
    let blocks = fin / LANES;
    let mut acc = [[0f32; LANES]; T];
    for k in 0..blocks {
        let col = k * LANES;
        let mut v = [[0f32; LANES]; T];
        for (t, vt) in v.iter_mut().enumerate() {
            *vt = w[t * fin + col..t * fin + col + LANES].try_into().expect("a block of LANES");
        }
        for j in 0..r {
            let y: &[f32; LANES] = a[j * fin + col..j * fin + col + LANES].try_into().expect("a block of LANES");
            for (t, vt) in v.iter_mut().enumerate() {
                let c = coef[t * r + j];
                for (x, &yl) in vt.iter_mut().zip(y) {
                    *x = madd(c, yl, *x);
                }
            }
        }
        for (at, vt) in acc.iter_mut().zip(&v) {
            for (s, &x) in at.iter_mut().zip(vt) {
                *s = madd(x, x, *s);
            }
        }
    }
    let mut norms = [0f32; T];
    for (t, n) in norms.iter_mut().enumerate() {
        let mut tail = 0f32;
        for col in blocks * LANES..fin {
            let x = w[t * fin + col] + (0..r).map(|j| coef[t * r + j] * a[j * fin + col]).sum::<f32>();
            tail += x * x;
        }
        *n = (acc[t].iter().sum::<f32>() + tail).sqrt();
    }
    norms
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_util::randn;

    #[test]
    fn norms_are_the_adapted_rows_norms() {
        // PEFT: torch.linalg.norm(W + s·(B @ A), dim=1), formed densely here. Widths with
        // and without a partial block of columns, 7 rows (a whole tile and a partial one);
        // a zero B row is W's own norm.
        for fin in [12, 16, 37] {
            let (w, a) = (randn(&[7, fin], 1), randn(&[3, fin], 2));
            let keep = Tensor::new(&[[1f32], [0.], [1.], [1.], [1.], [1.], [1.]], &candle_core::Device::Cpu).unwrap();
            let b = randn(&[7, 3], 3).broadcast_mul(&keep).unwrap();
            let got: Vec<f32> = dora_norms(&w, &a, &b, 2.5).unwrap().to_vec1().unwrap();
            // The composed path (other devices and dtypes: here f64) forms it densely.
            let f64s = |t: &Tensor| t.to_dtype(candle_core::DType::F64).unwrap();
            let want: Vec<f32> = crate::ops::dora_norms(&f64s(&w), &f64s(&a), &f64s(&b), 2.5)
                .unwrap()
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .to_vec1()
                .unwrap();
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-5 * e.max(1.0), "width {fin}: {got:?} vs {want:?}");
            }
            // The path for CPUs without AVX2 and FMA gives the same norms.
            let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let coef: Vec<f32> = flat(&b).iter().map(|x| 2.5 * x).collect();
            let mut portable = vec![0f32; 7];
            norms_portable(&flat(&w), &flat(&a), fin, 3, &coef, &mut portable);
            for (g, p) in got.iter().zip(&portable) {
                assert!((g - p).abs() <= 1e-5 * p.max(1.0), "width {fin}: {got:?} vs portable {portable:?}");
            }
            let own: Vec<f32> = w.sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1().unwrap();
            assert!((got[1] - own[1]).abs() <= 1e-5 * own[1], "a zero row of B leaves W's norm");
        }
        assert!(dora_norms(&randn(&[7, 12], 1), &randn(&[3, 11], 2), &randn(&[7, 3], 3), 1.0).is_err());
    }
}
