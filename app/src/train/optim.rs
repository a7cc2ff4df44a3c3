//! AdamW with state that can be saved and restored exactly, the warm-up + cosine
//! learning-rate schedule, and global gradient-norm clipping.
//!
//! candle-nn's `AdamW` keeps its moments private, so a resumed run could not continue
//! bit-for-bit; this one exposes them.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW hyper-parameters (PyTorch's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates applied so far.
    pub t: usize,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(vars: &[Var], cfg: AdamWConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            cfg,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            t: 0,
        })
    }

    /// One update of `vars` with `grads` at learning rate `lr`.
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        self.step_scaled(vars, grads, lr, &vec![1.0; vars.len()])
    }

    /// One update with variable `i` at learning rate `lr · scales[i]` (LoRA+).
    pub fn step_scaled(&mut self, vars: &[Var], grads: &[Tensor], lr: f64, scales: &[f64]) -> Result<()> {
        if vars.len() != self.m.len() || grads.len() != vars.len() || scales.len() != vars.len() {
            return Err(Error::Invalid("optimizer called with a different set of variables".into()));
        }
        self.t += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let lr = lr * scales[i];
            let m = ((&self.m[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&m / bc1)?;
            let v_hat = (&v / bc2)?;
            let theta = var.as_tensor();
            let decayed = if weight_decay != 0.0 { (theta * (1.0 - lr * weight_decay))? } else { theta.clone() };
            let update = (m_hat / (v_hat.sqrt()? + eps)?)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named `m.{i}` / `v.{i}`, for checkpoints.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.m.len());
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.push((format!("m.{i}"), m.clone()));
            out.push((format!("v.{i}"), v.clone()));
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`] and the update count.
    pub fn load_state(&mut self, get: impl Fn(&str) -> Option<Tensor>, t: usize) -> Result<()> {
        for i in 0..self.m.len() {
            for (name, slot) in [(format!("m.{i}"), &mut self.m[i]), (format!("v.{i}"), &mut self.v[i])] {
                let x =
                    get(&name).ok_or_else(|| Error::Adapter(format!("checkpoint lacks optimizer state `{name}`")))?;
                if x.dims() != slot.dims() {
                    return Err(Error::Adapter(format!(
                        "optimizer state `{name}` has shape {:?}, expected {:?}",
                        x.dims(),
                        slot.dims()
                    )));
                }
                *slot = x;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up over
/// `warmup` steps to `peak`, then cosine decay to zero (as `transformers`'
/// `get_cosine_schedule_with_warmup`).
pub fn lr_at(step: usize, total: usize, warmup: usize, peak: f64) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

/// Scales `grads` so their global L2 norm is at most `max_norm`; returns the norm
/// before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Reference: PyTorch's documented AdamW algorithm (torch.optim.AdamW), unrolled in
    /// plain Python for three steps of `f(w) = sum(w²)`:
    /// ```python
    /// x=[1.0,-2.0]; m=[0,0]; v=[0,0]
    /// for t in range(1,4):
    ///   for i in range(2):
    ///     g=2*x[i]; x[i]*=1-0.1*0.01; m[i]=0.9*m[i]+0.1*g; v[i]=0.999*v[i]+0.001*g*g
    ///     x[i]-=0.1*(m[i]/(1-0.9**t))/(math.sqrt(v[i]/(1-0.999**t))+1e-8)
    /// print(x)  # [0.6989111831582321, -1.6949445143849766]
    /// ```
    #[test]
    fn adamw_matches_reference_recurrence() {
        let w = Var::new(&[1f32, -2.0], &Device::Cpu).unwrap();
        let mut opt =
            AdamW::new(std::slice::from_ref(&w), AdamWConfig { weight_decay: 0.01, ..Default::default() }).unwrap();
        for _ in 0..3 {
            let g = (w.as_tensor() * 2.0).unwrap();
            opt.step(std::slice::from_ref(&w), &[g], 0.1).unwrap();
        }
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [0.6989111831582321f64, -1.6949445143849766];
        for i in 0..2 {
            assert!((f64::from(got[i]) - want[i]).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((lr_at(0, 100, 10, 1.0) - 0.1).abs() < 1e-12);
        assert!((lr_at(9, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(10, 100, 10, 1.0) - 1.0).abs() < 1e-12);
        assert!((lr_at(55, 100, 10, 1.0) - 0.5).abs() < 1e-12);
        assert!(lr_at(99, 100, 10, 1.0) < 0.001);
        assert!((lr_at(0, 10, 0, 2.0) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut g = vec![Tensor::new(&[3f32, 0.], &Device::Cpu).unwrap(), Tensor::new(&[4f32], &Device::Cpu).unwrap()];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let v: Vec<f32> = g[0].to_vec1().unwrap();
        assert!((v[0] - 0.6).abs() < 1e-5);
        let mut small = vec![Tensor::new(&[0.3f32], &Device::Cpu).unwrap()];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small[0].to_vec1::<f32>().unwrap(), vec![0.3]);
    }
}
