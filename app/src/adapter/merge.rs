//! Merging per-task LoRA adapters into one: linear averaging, task arithmetic,
//! concatenation (all exact in factor form, at the summed rank), and TIES and DARE
//! (on the dense deltas `ΔW = scale · B A`, then brought back to low rank).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::model::lora::{orthonormal_columns, LoraAdapter, LoraConfig, LoraPair, Target};
use crate::rng;
use crate::{Error, Result};

/// How to merge.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum MergeMethod {
    /// Mean of the deltas.
    Linear,
    /// `λ · Σ ΔW_t` (Ilharco et al., task arithmetic).
    TaskArithmetic {
        /// Scaling λ.
        lambda: f64,
    },
    /// TIES (Yadav et al.): keep each delta's top `density` share by magnitude, elect a
    /// sign per entry by summed mass, average the entries that agree, scale by λ.
    Ties {
        /// Share of entries kept per task.
        density: f64,
        /// Scaling λ.
        lambda: f64,
    },
    /// DARE (Yu et al.): drop each entry with probability `drop`, rescale survivors by
    /// `1 / (1 - drop)`, then add with λ. Seeded.
    Dare {
        /// Drop probability.
        drop: f64,
        /// Scaling λ.
        lambda: f64,
        /// Seed of the drop masks.
        seed: u64,
    },
    /// Exact sum of the deltas, concatenating the factors (rank = Σ ranks).
    Concat,
}

impl MergeMethod {
    /// Every method with its default parameters: linear, task arithmetic (λ 0.5), TIES
    /// (density 0.2, λ 1), DARE (drop 0.5, λ 0.5, seed 0), concatenation.
    pub fn defaults() -> Vec<MergeMethod> {
        vec![
            MergeMethod::Linear,
            MergeMethod::TaskArithmetic { lambda: 0.5 },
            MergeMethod::Ties { density: 0.2, lambda: 1.0 },
            MergeMethod::Dare { drop: 0.5, lambda: 0.5, seed: 0 },
            MergeMethod::Concat,
        ]
    }

    /// The method called `name` (its [`MergeMethod::name`]) with default parameters.
    pub fn from_name(name: &str) -> Option<MergeMethod> {
        Self::defaults().into_iter().find(|m| m.name() == name)
    }

    /// A short name.
    pub fn name(&self) -> &'static str {
        match self {
            MergeMethod::Linear => "linear",
            MergeMethod::TaskArithmetic { .. } => "task_arithmetic",
            MergeMethod::Ties { .. } => "ties",
            MergeMethod::Dare { .. } => "dare",
            MergeMethod::Concat => "concat",
        }
    }

    /// Checks parameter ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(m));
        match *self {
            MergeMethod::TaskArithmetic { lambda }
            | MergeMethod::Ties { lambda, .. }
            | MergeMethod::Dare { lambda, .. }
                if !(lambda.is_finite() && lambda > 0.0) =>
            {
                bad(format!("merge λ {lambda} must be positive"))
            }
            MergeMethod::Ties { density, .. } if !(density > 0.0 && density <= 1.0) => {
                bad(format!("TIES density {density} must be in (0, 1]"))
            }
            MergeMethod::Dare { drop, .. } if !(0.0..1.0).contains(&drop) => {
                bad(format!("DARE drop rate {drop} must be in [0, 1)"))
            }
            _ => Ok(()),
        }
    }
}

/// Why DoRA adapters are not merged.
pub const DORA_MERGE: &str = "merging DoRA adapters is not defined: each rescales the rows of the base weight by its \
     own magnitudes, which no sum of low-rank updates expresses; score them routed (no merges), or train with \
     lora, rslora or pissa";

/// The adapters as plain LoRA adapters: PiSSA ones converted ([`LoraAdapter::to_plain`]),
/// DoRA ones refused ([`DORA_MERGE`]).
fn plain(adapters: &[&LoraAdapter]) -> Result<Vec<LoraAdapter>> {
    if adapters.iter().any(|a| a.config.use_dora) {
        return Err(Error::Invalid(DORA_MERGE.into()));
    }
    adapters.iter().map(|a| a.to_plain()).collect()
}

fn targets_of(adapters: &[&LoraAdapter]) -> Result<Vec<Target>> {
    let first = adapters.first().ok_or_else(|| Error::Invalid("nothing to merge".into()))?;
    for a in adapters {
        if a.config.targets != first.config.targets || a.layers.len() != first.layers.len() {
            return Err(Error::Invalid("adapters to merge must adapt the same layers".into()));
        }
    }
    Ok(first.config.targets.clone())
}

/// Concatenates factors: `A = [A_1; …; A_T]`, `B = [w_1 s_1 B_1, …, w_T s_T B_T]`, scale 1,
/// so the result's delta is exactly `Σ w_t ΔW_t`.
pub fn concat_weighted(adapters: &[&LoraAdapter], weights: &[f64]) -> Result<LoraAdapter> {
    let owned = plain(adapters)?;
    let adapters: Vec<&LoraAdapter> = owned.iter().collect();
    let adapters = adapters.as_slice();
    let targets = targets_of(adapters)?;
    let rank: usize = adapters.iter().map(|a| a.config.rank).sum();
    let config = LoraConfig { rank, alpha: rank as f64, targets: targets.clone(), ..LoraConfig::default() };
    let mut layers = Vec::with_capacity(adapters[0].layers.len());
    for li in 0..adapters[0].layers.len() {
        let mut m = BTreeMap::new();
        for &t in &targets {
            let mut a_parts = Vec::new();
            let mut b_parts = Vec::new();
            for (ad, &w) in adapters.iter().zip(weights) {
                let p = ad.get(li, t).expect("targets checked");
                a_parts.push(p.a.as_tensor().to_dtype(DType::F32)?);
                b_parts.push((p.b.as_tensor().to_dtype(DType::F32)? * (w * ad.scale()))?);
            }
            let a = Tensor::cat(&a_parts, 0)?;
            let b = Tensor::cat(&b_parts, 1)?;
            m.insert(t, LoraPair::plain(Var::from_tensor(&a)?, Var::from_tensor(&b)?));
        }
        layers.push(m);
    }
    Ok(LoraAdapter { config, layers })
}

/// TIES on one set of task deltas (all the same shape). Each task is trimmed on its own
/// and the entries are elected independently, so both run on the thread pool (the result
/// does not depend on how the work is split).
pub fn ties(deltas: &[Tensor], density: f64, lambda: f64) -> Result<Tensor> {
    let shape = deltas[0].shape().clone();
    let vals: Vec<Vec<f32>> =
        deltas.iter().map(|d| d.flatten_all()?.to_vec1::<f32>()).collect::<candle_core::Result<_>>()?;
    let n = vals[0].len();
    // 1. Trim: keep each task's top-k entries by magnitude.
    let k = ((density * n as f64).round() as usize).clamp(1, n);
    let trimmed: Vec<Vec<f32>> = vals
        .into_par_iter()
        .map(|mut v| {
            // Magnitudes as the bits of |x|: for finite non-negative floats the integer
            // order is the numeric order, and integers select faster.
            let mag = |x: &f32| x.to_bits() & 0x7fff_ffff;
            let threshold = kth_largest(v.iter().map(mag), k);
            // Ties at the threshold are broken by position, so exactly k survive.
            let above = v.iter().filter(|x| mag(x) > threshold).count();
            let mut room = k - above;
            for x in v.iter_mut() {
                let m = mag(x);
                let keep = m > threshold
                    || (m == threshold && room > 0 && {
                        room -= 1;
                        true
                    });
                if !keep {
                    *x = 0.0;
                }
            }
            v
        })
        .collect();
    // 2. Elect a sign per entry by total mass; 3. disjoint mean over agreeing tasks.
    // Chunk by chunk, task by task over contiguous slices (the same sums, in task order).
    let mut out = vec![0f32; n];
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, o)| {
        let at = c * CHUNK;
        let parts: Vec<&[f32]> = trimmed.iter().map(|t| &t[at..at + o.len()]).collect();
        let mut mass = vec![0f32; o.len()];
        for p in &parts {
            for (m, &x) in mass.iter_mut().zip(*p) {
                *m += x;
            }
        }
        let mut count = vec![0u32; o.len()];
        for p in &parts {
            for ((s, k), (&x, &m)) in o.iter_mut().zip(count.iter_mut()).zip(p.iter().zip(&mass)) {
                if x != 0.0 && m != 0.0 && x.signum() == m.signum() {
                    *s += x;
                    *k += 1;
                }
            }
        }
        for (s, &k) in o.iter_mut().zip(&count) {
            *s = if k > 0 { *s / k as f32 * lambda as f32 } else { 0.0 };
        }
    });
    Ok(Tensor::from_vec(out, shape, deltas[0].device())?)
}

/// The `k`-th largest of `values` (`1 ≤ k ≤` their count), 31-bit integers, by radix
/// selection: a histogram of the top 16 bits finds the bucket that holds it, and only
/// that bucket's values are then ordered — two passes over the data instead of a
/// general selection's shuffling of all of it.
fn kth_largest(values: impl Iterator<Item = u32> + Clone, k: usize) -> u32 {
    const LOW: u32 = 15;
    let mut hist = vec![0usize; 1 << 16];
    for m in values.clone() {
        hist[(m >> LOW) as usize] += 1;
    }
    // The bucket where the count from the top first reaches k.
    let (mut above, mut bucket) = (0usize, 0usize);
    for b in (0..hist.len()).rev() {
        if above + hist[b] >= k {
            bucket = b;
            break;
        }
        above += hist[b];
    }
    let mut inside: Vec<u32> = values.filter(|m| (m >> LOW) as usize == bucket).collect();
    // The (k - above)-th largest inside the bucket.
    let at = inside.len() - (k - above);
    *inside.select_nth_unstable(at).1
}

/// DARE on one set of task deltas: seeded drop-and-rescale per task, then `λ Σ`.
pub fn dare(deltas: &[Tensor], drop: f64, lambda: f64, seed: u64, stream: u64) -> Result<Tensor> {
    let shape = deltas[0].shape().clone();
    let keep_scale = (1.0 / (1.0 - drop)) as f32;
    // Each task's draws come from its own stream, so the tasks are masked in parallel
    // and summed in task order (the same sums as one task after the other).
    let kept: Vec<Vec<f32>> = deltas
        .iter()
        .map(|d| d.flatten_all()?.to_vec1::<f32>())
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_par_iter()
        .enumerate()
        .map(|(ti, mut v)| {
            let mut r = rng::stream(seed, 20 + ti as u64, stream);
            for x in v.iter_mut() {
                *x = if r.random::<f64>() >= drop { *x * keep_scale * lambda as f32 } else { 0.0 };
            }
            v
        })
        .collect();
    let mut out: Vec<f32> = vec![0.0; shape.elem_count()];
    for v in &kept {
        for (o, x) in out.iter_mut().zip(v) {
            *o += x;
        }
    }
    Ok(Tensor::from_vec(out, shape, deltas[0].device())?)
}

/// Merges task adapters with `method`. Linear, task arithmetic and concatenation are
/// exact adapters; TIES and DARE merge the dense deltas one weight matrix at a time and
/// bring each back to rank `rank` at once (subspace iteration, see [`low_rank`]), so
/// only one matrix's deltas are ever held densely (not every layer of every task: 1.7 GB
/// for four tasks on the default model).
pub fn merge(adapters: &[&LoraAdapter], method: MergeMethod, rank: usize) -> Result<LoraAdapter> {
    method.validate()?;
    let owned = plain(adapters)?;
    let adapters: Vec<&LoraAdapter> = owned.iter().collect();
    let adapters = adapters.as_slice();
    let t = adapters.len() as f64;
    match method {
        MergeMethod::Linear => concat_weighted(adapters, &vec![1.0 / t; adapters.len()]),
        MergeMethod::TaskArithmetic { lambda } => concat_weighted(adapters, &vec![lambda; adapters.len()]),
        MergeMethod::Concat => concat_weighted(adapters, &vec![1.0; adapters.len()]),
        MergeMethod::Ties { .. } | MergeMethod::Dare { .. } => {
            let targets = targets_of(adapters)?;
            let config = LoraConfig { rank, alpha: rank as f64, targets: targets.clone(), ..LoraConfig::default() };
            let mut layers = Vec::with_capacity(adapters[0].layers.len());
            for li in 0..adapters[0].layers.len() {
                let mut pairs = BTreeMap::new();
                for (ti, &tg) in targets.iter().enumerate() {
                    let ds: Vec<Tensor> = adapters
                        .iter()
                        .map(|a| Ok(a.delta(li, tg)?.expect("every adapter adapts the target").to_dtype(DType::F32)?))
                        .collect::<Result<_>>()?;
                    let merged = match method {
                        MergeMethod::Ties { density, lambda } => ties(&ds, density, lambda)?,
                        MergeMethod::Dare { drop, lambda, seed } => {
                            dare(&ds, drop, lambda, seed, (li * 16 + ti) as u64)?
                        }
                        _ => unreachable!("handled above"),
                    };
                    pairs.insert(tg, low_rank(&merged, rank, 0, (li * 16 + ti) as u64)?);
                }
                layers.push(pairs);
            }
            Ok(LoraAdapter { config, layers })
        }
    }
}

/// Rank-`rank` factors of one dense delta `d` `(rows, cols)` by subspace iteration: `Q`
/// spans the top left-singular subspace of `d`, then `B = Q`, `A = Qᵀ d` (scale 1), padded
/// with zeros to `rank` where the matrix is smaller. `stream` seeds the start.
pub fn low_rank(d: &Tensor, rank: usize, seed: u64, stream: u64) -> Result<LoraPair> {
    let dev = Device::Cpu;
    let (rows, cols) = d.dims2()?;
    let r = rank.min(rows).min(cols);
    let d64 = d.to_dtype(DType::F64)?.to_device(&dev)?;
    let mut g = rng::stream(seed, 30, stream);
    let omega: Vec<f64> = (0..cols * r).map(|_| g.random::<f64>() - 0.5).collect();
    let mut q: Vec<f64> = d64.matmul(&Tensor::from_vec(omega, (cols, r), &dev)?)?.flatten_all()?.to_vec1()?;
    orthonormal_columns(&mut q, rows, r);
    for _ in 0..4 {
        let qt = Tensor::from_vec(q.clone(), (rows, r), &dev)?;
        let z = d64.matmul(&d64.t()?.matmul(&qt)?)?;
        q = z.flatten_all()?.to_vec1()?;
        orthonormal_columns(&mut q, rows, r);
    }
    let qt = Tensor::from_vec(q, (rows, r), &dev)?;
    let a = qt.t()?.matmul(&d64)?;
    // Pad to the requested rank with zeros so every layer has the same shape.
    let (b, a) = if r < rank {
        (
            Tensor::cat(&[qt, Tensor::zeros((rows, rank - r), DType::F64, &dev)?], 1)?,
            Tensor::cat(&[a, Tensor::zeros((rank - r, cols), DType::F64, &dev)?], 0)?,
        )
    } else {
        (qt, a)
    };
    let to = |x: Tensor| -> Result<Var> { Ok(Var::from_tensor(&x.to_dtype(DType::F32)?.to_device(d.device())?)?) };
    Ok(LoraPair::plain(to(a)?, to(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::max_abs_diff;
    use crate::model::tiny_config;

    fn t(v: &[f32], r: usize, c: usize) -> Tensor {
        Tensor::from_vec(v.to_vec(), (r, c), &Device::Cpu).unwrap()
    }

    #[test]
    fn ties_trims_elects_and_averages_by_hand() {
        // Task 1 [ 3, -1,  2, 0.5], task 2 [-4,  2,  1, 0.5], density 0.5:
        // trimmed 1 [3, 0, 2, 0]; trimmed 2 [-4, 2, 0, 0].
        // Elected signs by mass: [-1 (3-4), +, +, none].
        // Disjoint means: [-4, 2, 2, 0].
        let a = t(&[3., -1., 2., 0.5], 2, 2);
        let b = t(&[-4., 2., 1., 0.5], 2, 2);
        let m = ties(&[a, b], 0.5, 1.0).unwrap();
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-4., 2., 2., 0.]);
        // λ scales the result; density 1 keeps everything: signs [-,+,+,+], means
        // [-4, 2, 1.5, 0.5].
        let a = t(&[3., -1., 2., 0.5], 2, 2);
        let b = t(&[-4., 2., 1., 0.5], 2, 2);
        let m = ties(&[a, b], 1.0, 2.0).unwrap();
        assert_eq!(m.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![-8., 4., 3., 1.]);
    }

    #[test]
    fn radix_selection_finds_the_kth_largest() {
        let mut r = rng::stream(7, 1, 0);
        for &n in &[1usize, 2, 17, 5000] {
            // Wide values, and values crowded into one bucket with repeats.
            for spread in [0x7fff_ffffu32, 40] {
                let v: Vec<u32> =
                    (0..n).map(|_| r.random::<u32>() % spread + (spread < 100) as u32 * 0x3000_0000).collect();
                let mut sorted = v.clone();
                sorted.sort_unstable_by(|a, b| b.cmp(a));
                for k in [1, n.div_ceil(3), n] {
                    assert_eq!(kth_largest(v.iter().copied(), k), sorted[k - 1], "n {n} spread {spread} k {k}");
                }
            }
        }
    }

    #[test]
    fn dare_rescales_to_keep_the_expectation() {
        let d = t(&vec![1.0f32; 10_000], 100, 100);
        let m = dare(std::slice::from_ref(&d), 0.9, 1.0, 3, 0).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let kept = v.iter().filter(|&&x| x != 0.0).count() as f64 / 10_000.0;
        assert!((kept - 0.1).abs() < 0.015, "kept {kept}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 10.0).abs() < 1e-5), "survivors are rescaled by 1/(1-p)");
        let mean = v.iter().sum::<f32>() / 10_000.0;
        assert!((mean - 1.0).abs() < 0.15, "expectation kept: {mean}");
        assert_eq!(
            dare(std::slice::from_ref(&d), 0.9, 1.0, 3, 0).unwrap().to_vec2::<f32>().unwrap(),
            m.to_vec2::<f32>().unwrap()
        );
        assert_ne!(dare(&[d], 0.9, 1.0, 4, 0).unwrap().to_vec2::<f32>().unwrap(), m.to_vec2::<f32>().unwrap());
    }

    fn random_adapter(seed: u64, rank: usize) -> LoraAdapter {
        let cfg = tiny_config();
        let ad = LoraAdapter::new(
            &cfg,
            LoraConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() },
            seed,
            &Device::Cpu,
        )
        .unwrap();
        let mut r = rng::stream(seed, 9, 0);
        for m in &ad.layers {
            for p in m.values() {
                p.b.set(
                    &Tensor::from_vec(rng::normal(&mut r, p.b.elem_count(), 0.1), p.b.shape(), &Device::Cpu).unwrap(),
                )
                .unwrap();
            }
        }
        ad
    }

    #[test]
    fn concatenation_is_the_exact_sum_and_linear_the_exact_mean() {
        let (x, y) = (random_adapter(1, 4), random_adapter(2, 8));
        let c = merge(&[&x, &y], MergeMethod::Concat, 0).unwrap();
        assert_eq!(c.config.rank, 12);
        let l = merge(&[&x, &y], MergeMethod::Linear, 0).unwrap();
        for t in Target::ALL {
            let sum = (x.delta(1, t).unwrap().unwrap() + y.delta(1, t).unwrap().unwrap()).unwrap();
            assert!(max_abs_diff(&c.delta(1, t).unwrap().unwrap(), &sum).unwrap() < 1e-5);
            assert!(max_abs_diff(&l.delta(1, t).unwrap().unwrap(), &(sum * 0.5).unwrap()).unwrap() < 1e-5);
        }
    }

    #[test]
    fn low_rank_recovers_a_low_rank_delta() {
        // TIES at density 1 of a single adapter returns its own delta, which has rank 4:
        // a rank-4 refit must reproduce it.
        let x = random_adapter(5, 4);
        let fit = merge(&[&x], MergeMethod::Ties { density: 1.0, lambda: 1.0 }, 4).unwrap();
        for t in Target::ALL {
            let want = x.delta(0, t).unwrap().unwrap();
            let merged = ties(std::slice::from_ref(&want), 1.0, 1.0).unwrap();
            assert!(max_abs_diff(&merged, &want).unwrap() < 1e-6);
            let got = fit.delta(0, t).unwrap().unwrap();
            let err = max_abs_diff(&got, &want).unwrap();
            assert!(err < 1e-4, "{t}: {err}");
        }
    }
}
