//! Throughput and memory figures, measured the same way for Multitune and for the
//! Python reference (`bench/reference.py`: PyTorch + transformers + PEFT).
//!
//! A [`Workload`] holds the exact token ids of every batch (or the prompts and labels of
//! a ranking job); both implementations read it, so they see the same data. [`measure`]
//! runs one mode on it and returns the seconds of each timed step; figures are derived
//! from those and from the FLOP count of [`Workload::flops`].

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{self, Example};
use crate::model::config::ModelConfig;
use crate::model::lora::{LoraAdapter, LoraConfig, Target};
use crate::model::{Forward, Llama};
use crate::rng;
use crate::train::optim::{self, AdamW, AdamWConfig};
use crate::train::{batch_indices, batch_loss, TrainConfig, GROUP_BUCKET, GROUP_WINDOW};
use crate::{eval, Error, Result};

/// What a measurement runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Forward, backward and optimizer step (AdamW, clipping).
    Train,
    /// Forward only, the loss of the batch.
    Eval,
    /// Scoring every label after every prompt (classification).
    Rank,
    /// Greedy decoding of held-out prompts (generation tasks), in batches.
    Generate,
}

impl Mode {
    /// The name used on the command line and in the reference script.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Train => "train",
            Mode::Eval => "eval",
            Mode::Rank => "rank",
            Mode::Generate => "generate",
        }
    }

    /// The mode called `name` ([`Mode::name`]).
    pub fn parse(name: &str) -> Option<Mode> {
        [Mode::Train, Mode::Eval, Mode::Rank, Mode::Generate].into_iter().find(|m| m.name() == name)
    }
}

/// The adapter both implementations train, in PEFT's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Rank.
    pub rank: usize,
    /// Alpha.
    pub alpha: f64,
    /// Dropout.
    pub dropout: f64,
    /// Target module names (`q_proj`, …).
    pub targets: Vec<String>,
    /// rsLoRA scaling.
    pub use_rslora: bool,
    /// DoRA (PEFT's `use_dora`).
    #[serde(default)]
    pub use_dora: bool,
}

impl From<&LoraConfig> for LoraSpec {
    fn from(c: &LoraConfig) -> Self {
        Self {
            rank: c.rank,
            alpha: c.alpha,
            dropout: f64::from(c.dropout),
            targets: c.targets.iter().map(|t| t.module_name().to_string()).collect(),
            use_rslora: c.use_rslora,
            use_dora: c.use_dora,
        }
    }
}

/// One training example of a workload: input ids and how many of them are prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Token ids, prompt then completion.
    pub ids: Vec<u32>,
    /// Leading ids that carry no loss.
    pub prompt_len: usize,
}

impl Item {
    /// Input tokens (the last id is only a target).
    pub fn tokens(&self) -> usize {
        self.ids.len() - 1
    }

    /// Tokens that carry loss.
    pub fn loss_tokens(&self) -> usize {
        self.ids.len() - self.prompt_len.max(1)
    }

    fn example(&self) -> Example {
        Example { ids: self.ids.clone(), prompt_len: self.prompt_len, ..Default::default() }
    }
}

/// The data of one measurement, shared with the reference script as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Label in the printed table (`8x64`, `demo`, `rank topic`).
    pub name: String,
    /// The adapter.
    pub lora: LoraSpec,
    /// Padding id.
    pub pad: u32,
    /// Leading batches (or prompt chunks) that are not timed.
    pub warmup: usize,
    /// Examples per batch (ranking: prompts per chunk; generation: most prompts decoded
    /// together).
    pub batch: usize,
    /// Training/eval batches.
    #[serde(default)]
    pub batches: Vec<Vec<Item>>,
    /// Ranking prompts.
    #[serde(default)]
    pub prompts: Vec<Vec<u32>>,
    /// Ranking labels (token ids of each label's completion).
    #[serde(default)]
    pub labels: Vec<Vec<u32>>,
    /// Generation: most new tokens per prompt.
    #[serde(default)]
    pub max_new_tokens: usize,
    /// Generation: ids that end an answer.
    #[serde(default)]
    pub stop: Vec<u32>,
}

impl Workload {
    /// `warmup + steps` batches of `batch` rows of `seq + 1` random tokens, loss on every
    /// position: fixed shapes with no padding.
    pub fn synthetic(cfg: &ModelConfig, batch: usize, seq: usize, warmup: usize, steps: usize, seed: u64) -> Self {
        let mut r = rng::stream(seed, 99, (batch * 1000 + seq) as u64);
        let vocab = cfg.vocab_size as u32;
        let batches = (0..warmup + steps)
            .map(|_| {
                (0..batch)
                    .map(|_| Item {
                        ids: (0..=seq).map(|_| rand::Rng::random_range(&mut r, 0..vocab)).collect(),
                        prompt_len: 1,
                    })
                    .collect()
            })
            .collect();
        Self {
            name: format!("{batch}x{seq}"),
            lora: LoraSpec::from(&LoraConfig::default()),
            pad: 0,
            warmup,
            batch,
            batches,
            prompts: vec![],
            labels: vec![],
            max_new_tokens: 0,
            stop: vec![],
        }
    }

    /// Batches of real examples, drawn as the trainer draws them (seeded epoch
    /// permutation, no length grouping: that is each implementation's own business).
    pub fn from_examples(
        name: &str,
        examples: &[Example],
        pad: u32,
        batch: usize,
        warmup: usize,
        steps: usize,
        seed: u64,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(Error::Invalid("bench workload: no examples".into()));
        }
        let mut cache = std::collections::HashMap::new();
        let batches = (0..warmup + steps)
            .map(|m| {
                batch_indices(examples.len(), (batch, 1), m, seed, &mut cache, None)
                    .into_iter()
                    .map(|i| Item { ids: examples[i].ids.clone(), prompt_len: examples[i].prompt_len })
                    .collect()
            })
            .collect();
        Ok(Self {
            name: name.into(),
            lora: LoraSpec::from(&LoraConfig::default()),
            pad,
            warmup,
            batch,
            batches,
            prompts: vec![],
            labels: vec![],
            max_new_tokens: 0,
            stop: vec![],
        })
    }

    /// A ranking job: `prompts` in chunks of `batch`, every label scored after each.
    pub fn ranking(
        name: &str,
        prompts: Vec<Vec<u32>>,
        labels: Vec<Vec<u32>>,
        pad: u32,
        batch: usize,
        warmup: usize,
    ) -> Self {
        Self {
            name: name.into(),
            lora: LoraSpec::from(&LoraConfig::default()),
            pad,
            warmup,
            batch,
            batches: vec![],
            prompts,
            labels,
            max_new_tokens: 0,
            stop: vec![],
        }
    }

    /// A generation job: `prompts` decoded greedily, at most `rows` together, up to
    /// `max_new_tokens` each or an id in `stop`. The prompts are sorted by length (both
    /// implementations get batches that pad little); the first is decoded once, untimed,
    /// to warm up.
    pub fn generation(
        name: &str,
        mut prompts: Vec<Vec<u32>>,
        stop: Vec<u32>,
        pad: u32,
        rows: usize,
        max_new_tokens: usize,
    ) -> Self {
        prompts.sort_by_key(Vec::len);
        Self {
            name: name.into(),
            lora: LoraSpec::from(&LoraConfig::default()),
            pad,
            warmup: 1,
            batch: rows,
            batches: vec![],
            prompts,
            labels: vec![],
            max_new_tokens,
            stop,
        }
    }

    /// The timed batches.
    pub fn timed(&self) -> &[Vec<Item>] {
        &self.batches[self.warmup.min(self.batches.len())..]
    }

    /// Real (non-padding) input tokens of the timed batches.
    pub fn timed_tokens(&self) -> usize {
        self.timed().iter().flatten().map(Item::tokens).sum()
    }

    /// Prompts of the timed chunks (generation: every prompt; its warm-up is extra).
    pub fn timed_prompts(&self) -> usize {
        if self.max_new_tokens > 0 {
            return self.prompts.len();
        }
        self.prompts.len().saturating_sub(self.warmup * self.batch)
    }

    /// Share of the timed batches' cells that are padding when every batch is padded to
    /// its longest row.
    pub fn padding_share(&self) -> f64 {
        let cells: usize = self.timed().iter().map(|b| b.len() * b.iter().map(Item::tokens).max().unwrap_or(0)).sum();
        if cells == 0 {
            0.0
        } else {
            1.0 - self.timed_tokens() as f64 / cells as f64
        }
    }

    /// Matrix-multiply FLOPs the model needs for the timed batches in `mode` (see
    /// [`item_flops`]); `None` for ranking.
    pub fn flops(&self, cfg: &ModelConfig, mode: Mode) -> Option<f64> {
        let lora = self.lora.rank;
        let targets: Vec<Target> =
            Target::ALL.into_iter().filter(|t| self.lora.targets.iter().any(|n| n == t.module_name())).collect();
        match mode {
            Mode::Rank | Mode::Generate => None,
            _ => Some(self.timed().iter().flatten().map(|i| item_flops(cfg, i, lora, &targets, mode)).sum()),
        }
    }
}

/// Matrix-multiply FLOPs of one example of `n` input tokens, `l` of them carrying loss,
/// for a model with `L` layers, hidden size `d`, attention width `a = heads · head_dim`,
/// vocabulary `V`, `P` frozen linear weights per layer (q, k, v, o, gate, up, down) and a
/// rank-`r` adapter on linears of shapes `(in, out)`:
///
/// - forward: `F = 2·P·L·n + 4·a·L·n² + 2·V·d·l` (linears, QKᵀ and PV over the full
///   square, LM head at loss positions) plus `A = 2·r·Σ(in+out)·L·n` for the adapter;
/// - training: `2·(2·P·L·n + 2·V·d·l) + 3·4·a·L·n² + 3·A`: frozen weights need only the
///   activation gradient (one more matmul each), attention and the adapter need two.
///
/// The same count is used for both implementations, so MFU compares like with like.
pub fn item_flops(cfg: &ModelConfig, item: &Item, rank: usize, targets: &[Target], mode: Mode) -> f64 {
    let n = item.tokens() as f64;
    matmul_flops(cfg, rank, targets, mode, (n, n * n, item.loss_tokens() as f64))
}

/// The count of [`item_flops`] for `tokens` token rows through the linears,
/// `pairs` (query, key) pairs of attention and `loss` LM-head rows.
pub fn matmul_flops(
    cfg: &ModelConfig,
    rank: usize,
    targets: &[Target],
    mode: Mode,
    (n, pairs, l): (f64, f64, f64),
) -> f64 {
    let layers = cfg.num_hidden_layers as f64;
    let p: f64 = Target::ALL
        .iter()
        .map(|t| {
            let (i, o) = t.shape(cfg);
            (i * o) as f64
        })
        .sum();
    let a = (cfg.num_attention_heads * cfg.head_dim) as f64;
    let lora: f64 = targets
        .iter()
        .map(|t| {
            let (i, o) = t.shape(cfg);
            2.0 * rank as f64 * (i + o) as f64
        })
        .sum::<f64>()
        * layers
        * n;
    let linear = 2.0 * p * layers * n + 2.0 * cfg.vocab_size as f64 * cfg.hidden_size as f64 * l;
    let attention = 4.0 * a * layers * pairs;
    match mode {
        Mode::Train => 2.0 * linear + 3.0 * attention + 3.0 * lora,
        _ => linear + attention + lora,
    }
}

/// The matrix-multiply FLOPs our packed forward (and backward) really does for `batch`:
/// the count of [`item_flops`] over the packed tokens (each shared prefix once), the
/// attention pairs of each row's own queries against its whole path, and the loss rows.
pub fn packed_flops(
    cfg: &ModelConfig,
    rank: usize,
    targets: &[Target],
    mode: Mode,
    batch: &crate::model::Batch,
) -> f64 {
    let pairs: usize = batch.pack.rows.iter().map(|r| (r.len() - r.owned_from) * r.len()).sum();
    matmul_flops(cfg, rank, targets, mode, (batch.pack.len() as f64, pairs as f64, batch.loss_tokens as f64))
}

/// One implementation's result on one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// `multitune` or `reference`.
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Seconds of each timed step.
    pub step_secs: Vec<f64>,
    /// Trainable parameters (training).
    #[serde(default)]
    pub trainable: usize,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Peak GPU memory the process held, MiB (on a GPU: the GPU's used memory above its
    /// level before the process started, sampled from `nvidia-smi` by the parent `bench`
    /// while the child ran, the same way for both implementations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_device_mib: Option<f64>,
    /// Matrix-multiply FLOPs of the timed steps as this implementation ran them, when it
    /// reports them (ours: packed, see [`packed_flops`]).
    #[serde(default)]
    pub flops: Option<f64>,
    /// Tokens the timed steps ran through the model, when reported (ours: packed
    /// tokens, each shared prefix once).
    #[serde(default)]
    pub computed_tokens: Option<usize>,
    /// Generation: the new tokens of every prompt (the stop id excluded), in workload
    /// order — to count them and to compare the two implementations' answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<Vec<u32>>,
}

impl Measurement {
    /// Total seconds of the timed steps.
    pub fn total_secs(&self) -> f64 {
        self.step_secs.iter().sum()
    }
}

/// Runs `mode` on `workload` with `model` and a fresh default adapter, batching the timed
/// examples as the trainer's defaults do.
pub fn measure(model: &Llama, workload: &Workload, mode: Mode) -> Result<Measurement> {
    let dev = model.device();
    let lora = LoraConfig {
        rank: workload.lora.rank,
        alpha: workload.lora.alpha,
        dropout: workload.lora.dropout as f32,
        targets: workload
            .lora
            .targets
            .iter()
            .map(|n| {
                Target::ALL
                    .into_iter()
                    .find(|t| t.module_name() == n)
                    .ok_or_else(|| Error::Invalid(format!("bench workload: unknown LoRA target `{n}`")))
            })
            .collect::<Result<_>>()?,
        use_rslora: workload.lora.use_rslora,
        use_dora: workload.lora.use_dora,
        pissa: false,
    };
    let adapter = LoraAdapter::for_model(model, lora, 0)?;
    let trainable = adapter.num_parameters();
    let targets = adapter.config.targets.clone();
    let warm = workload.warmup.min(workload.batches.len());
    // What the timed steps compute: packed on the CPU, padded rows elsewhere.
    let (mut flops, mut computed) = (0.0, 0);
    let mut count = |i: usize, b: &crate::model::Batch| {
        if i < warm {
            return;
        }
        if model.can_pack() {
            flops += packed_flops(&model.cfg, workload.lora.rank, &targets, mode, b);
            computed += b.pack.len();
        } else {
            computed += b.mask.len() * b.mask.first().map_or(0, Vec::len);
        }
    };
    let mut outputs = Vec::new();
    let step_secs = match mode {
        Mode::Train => {
            let vars = adapter.vars();
            let mut opt = AdamW::new(&vars, AdamWConfig::default())?;
            run_batches(
                workload,
                |i, b| {
                    count(i, b);
                    let loss = batch_loss(model, b, &Forward::train(&adapter, 0, i as u64))?;
                    let g = loss.backward()?;
                    let mut grads: Vec<Tensor> = vars
                        .iter()
                        .map(|v| g.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok))
                        .collect::<candle_core::Result<_>>()?;
                    optim::clip_grad_norm(&mut grads, 1.0)?;
                    opt.step(&vars, &grads, 1e-4)?;
                    Ok(())
                },
                dev,
            )?
        }
        Mode::Eval => {
            let fwd = Forward::eval(Some(&adapter));
            run_batches(
                workload,
                |i, b| {
                    count(i, b);
                    batch_loss(model, b, &fwd)?.to_scalar::<f32>()?;
                    Ok(())
                },
                dev,
            )?
        }
        Mode::Rank => {
            let bs = workload.batch.max(1);
            let mut secs = Vec::new();
            for (ci, chunk) in workload.prompts.chunks(bs).enumerate() {
                let t0 = Instant::now();
                let scores =
                    eval::label_log_likelihoods(model, Some(&adapter), chunk, &workload.labels, workload.pad, bs)?;
                std::hint::black_box(scores);
                dev.synchronize()?;
                if ci >= workload.warmup {
                    secs.push(t0.elapsed().as_secs_f64());
                }
            }
            secs
        }
        Mode::Generate => {
            let cfg =
                eval::generate::GenerateConfig { max_new_tokens: workload.max_new_tokens.max(1), ..Default::default() };
            let (stop, pad) = (&workload.stop, workload.pad);
            if let Some(first) = workload.prompts.first() {
                eval::generate::generate_batch(
                    model,
                    Some(&adapter),
                    std::slice::from_ref(first),
                    stop,
                    pad,
                    &cfg,
                    &mut |_, _| {},
                )?;
            }
            let order: Vec<usize> = (0..workload.prompts.len()).collect();
            let mut secs = Vec::new();
            for chunk in eval::generation_batches(&order, |i| workload.prompts[i].len(), workload.batch) {
                let t0 = Instant::now();
                let prompts: Vec<Vec<u32>> = chunk.iter().map(|&i| workload.prompts[i].clone()).collect();
                outputs.extend(eval::generate::generate_batch(
                    model,
                    Some(&adapter),
                    &prompts,
                    stop,
                    pad,
                    &cfg,
                    &mut |_, _| {},
                )?);
                secs.push(t0.elapsed().as_secs_f64());
            }
            secs
        }
    };
    let lm = matches!(mode, Mode::Train | Mode::Eval);
    Ok(Measurement {
        implementation: "multitune".into(),
        step_secs,
        trainable,
        peak_rss_mib: crate::memory::peak_rss_mib(),
        peak_device_mib: None,
        flops: (lm && model.can_pack()).then_some(flops),
        computed_tokens: lm.then_some(computed),
        outputs,
    })
}

/// Warm-up batches as given, then the timed ones — regrouped by length when the
/// trainer's default does that ([`TrainConfig::group_by_length`]).
fn run_batches(
    workload: &Workload,
    mut step: impl FnMut(usize, &crate::model::Batch) -> Result<()>,
    dev: &Device,
) -> Result<Vec<f64>> {
    let warm = workload.warmup.min(workload.batches.len());
    for (i, b) in workload.batches[..warm].iter().enumerate() {
        let ex: Vec<Example> = b.iter().map(Item::example).collect();
        step(i, &data::make_batch(&ex.iter().collect::<Vec<_>>(), workload.pad, dev)?)?;
    }
    let timed: Vec<Example> = workload.timed().iter().flatten().map(Item::example).collect();
    let groups = if TrainConfig::default().group_by_length {
        length_groups(&timed, workload.batch)
    } else {
        let sizes = workload.timed().iter().map(Vec::len);
        let mut at = 0;
        sizes
            .map(|k| {
                at += k;
                (at - k..at).collect()
            })
            .collect()
    };
    let mut secs = Vec::new();
    for (i, group) in groups.into_iter().enumerate() {
        let t0 = Instant::now();
        let refs: Vec<&Example> = group.iter().map(|&j| &timed[j]).collect();
        step(warm + i, &data::make_batch(&refs, workload.pad, dev)?)?;
        // A GPU runs asynchronously: a step is done when the device is.
        dev.synchronize()?;
        secs.push(t0.elapsed().as_secs_f64());
    }
    Ok(secs)
}

/// `examples` cut into batches of `batch` as the trainer groups them: windows of
/// [`GROUP_WINDOW`] batches, each ordered by length bucket ([`GROUP_BUCKET`] tokens).
pub fn length_groups(examples: &[Example], batch: usize) -> Vec<Vec<usize>> {
    let batch = batch.max(1);
    let mut out = Vec::new();
    let idx: Vec<usize> = (0..examples.len()).collect();
    for window in idx.chunks(batch * GROUP_WINDOW) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| std::cmp::Reverse(examples[i].ids.len().div_ceil(GROUP_BUCKET)));
        out.extend(w.chunks(batch).map(<[usize]>::to_vec));
    }
    out
}

/// The best matrix-multiply rate our products reach here in the compute dtype (f32 on
/// the CPU, on the engines `products`, see [`crate::kernels::blas`]; bf16 on
/// a GPU, cuBLAS), GFLOP/s (median of 10 runs of each of a few shapes, the best shape; a
/// GPU also gets large ones, which it needs to fill up).
pub fn matmul_peak_gflops(device: &Device, products: crate::kernels::blas::Products) -> Result<f64> {
    let mut best = 0f64;
    let dtype = crate::model::compute_dtype(device);
    let mut shapes = vec![(512, 576, 1536), (512, 1536, 576), (1024, 1024, 1024), (2048, 2048, 2048)];
    if !device.is_cpu() {
        shapes.extend([(4096, 4096, 4096), (8192, 8192, 8192)]);
    }
    for (m, k, n) in shapes {
        let a = Tensor::randn(0f32, 1., (m, k), device)?.to_dtype(dtype)?;
        // `(n, k)`: the product is `a · bᵀ`, a linear layer's layout.
        let b = Tensor::randn(0f32, 1., (n, k), device)?.to_dtype(dtype)?;
        for _ in 0..3 {
            crate::ops::frozen_matmul(&a, &b, products)?.device().synchronize()?;
        }
        let mut times = Vec::new();
        for _ in 0..10 {
            let t0 = Instant::now();
            let c = crate::ops::frozen_matmul(&a, &b, products)?;
            c.device().synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        best = best.max(2.0 * (m * k * n) as f64 / median(&times) / 1e9);
    }
    Ok(best)
}

/// The median of `xs` (the upper one of an even count).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny_config;

    #[test]
    fn flop_count_matches_hand_computation() {
        // Tiny model: L = 2, d = 128, a = 4·32 = 128, V = 259; per layer
        // P = 128·128 + 2·128·64 + 128·128 + 3·128·256 = 147 456, and the rank-8 adapter
        // costs 2·8·Σ(in+out) = 32 768 FLOPs per token per layer.
        // n = 10 input tokens, l = 11 - 4 = 7 of them with loss.
        let item = Item { ids: (0..11).collect(), prompt_len: 4 };
        let cfg = tiny_config();
        let linear = 2.0 * 147_456.0 * 2.0 * 10.0 + 2.0 * 259.0 * 128.0 * 7.0;
        let attention = 4.0 * 128.0 * 2.0 * 100.0;
        let lora = 32_768.0 * 2.0 * 10.0;
        assert_eq!(item_flops(&cfg, &item, 8, &Target::ALL, Mode::Eval), linear + attention + lora);
        assert_eq!(item_flops(&cfg, &item, 8, &Target::ALL, Mode::Train), 2.0 * linear + 3.0 * attention + 3.0 * lora);
        assert_eq!(linear + attention + lora, 7_120_128.0);
    }

    #[test]
    fn workloads_count_tokens_and_padding() {
        let ex = |n: usize| Example { ids: vec![1; n + 1], prompt_len: 1, ..Default::default() };
        let examples = vec![ex(20), ex(2), ex(20), ex(2)];
        let w = Workload::from_examples("t", &examples, 0, 2, 0, 2, 0).unwrap();
        assert_eq!(w.timed_tokens(), 44);
        // Every batch is padded to its longest row.
        let cells: usize = w.timed().iter().map(|b| 2 * b.iter().map(Item::tokens).max().unwrap()).sum();
        assert!((w.padding_share() - (1.0 - 44.0 / cells as f64)).abs() < 1e-12);
        // Grouping by length bucket pairs the long rows and the short ones.
        let groups = length_groups(&examples, 2);
        for g in &groups {
            assert_eq!(examples[g[0]].ids.len(), examples[g[1]].ids.len());
        }
        let json = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Workload>(&json).unwrap(), w);
    }

    #[test]
    fn synthetic_workloads_have_the_asked_shape() {
        let w = Workload::synthetic(&tiny_config(), 4, 16, 1, 3, 0);
        assert_eq!(w.batches.len(), 4);
        assert!(w.batches.iter().flatten().all(|i| i.ids.len() == 17 && i.loss_tokens() == 16));
        assert_eq!(w.timed_tokens(), 3 * 4 * 16);
        assert_eq!(w.padding_share(), 0.0);
        assert_eq!(w.lora.targets.len(), 7);
    }
}
