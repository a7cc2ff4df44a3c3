//! Throughput figures: training tokens/s (forward + backward + optimizer step), eval
//! tokens/s (forward only) and peak memory, for later work to be measured against.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::data::{self, Example};
use crate::lora::{LoraAdapter, LoraConfig};
use crate::model::{Forward, Llama};
use crate::optim::{self, AdamW, AdamWConfig};
use crate::rng;
use crate::train::batch_loss;
use crate::Result;

/// One bench configuration.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BenchShape {
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps (the median is reported).
    pub steps: usize,
}

impl Default for BenchShape {
    fn default() -> Self {
        Self { batch: 8, seq: 64, warmup: 2, steps: 5 }
    }
}

/// Measured figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchFigures {
    /// Model name.
    pub model: String,
    /// The shape measured.
    pub shape: BenchShape,
    /// Base parameters.
    pub params: usize,
    /// LoRA parameters.
    pub trainable: usize,
    /// Median training step, ms.
    pub train_step_ms: f64,
    /// Training tokens per second (median step).
    pub train_tokens_per_s: f64,
    /// Median forward-only step, ms.
    pub eval_step_ms: f64,
    /// Eval tokens per second (median step).
    pub eval_tokens_per_s: f64,
    /// Peak resident memory of the process so far, MiB.
    pub peak_rss_mib: Option<f64>,
}

/// The process's peak resident set size (Linux `VmHWM`), MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The process's current resident set size (Linux `VmRSS`), MiB.
pub fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Samples the resident set size on a thread (every 20 ms) and keeps the largest, so a
/// stretch of work can report its own peak: the kernel's `VmHWM` only ever grows.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Option<f64>>>,
}

impl RssSampler {
    /// Starts sampling.
    pub fn start() -> Self {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = rss_mib();
            loop {
                if let Some(now) = rss_mib() {
                    peak = Some(peak.map_or(now, |p: f64| p.max(now)));
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        Self { stop, handle: Some(handle) }
    }

    /// Stops sampling and returns the peak seen, MiB.
    pub fn stop(mut self) -> Option<f64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok().flatten())
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Measures `model` with a rank-8 all-target adapter on random tokens, loss on every
/// position (the conservative case: no prompt masking).
pub fn bench_model(model: &Llama, name: &str, shape: BenchShape) -> Result<BenchFigures> {
    let dev = model.device();
    let lora = LoraConfig::default();
    let adapter = LoraAdapter::new(&model.cfg, lora, 0, dev)?;
    let vars = adapter.vars();
    let mut opt = AdamW::new(&vars, AdamWConfig::default())?;
    let mut r = rng::stream(0, 99, 0);
    let vocab = model.cfg.vocab_size as u32;
    let examples: Vec<Example> = (0..shape.batch)
        .map(|_| Example {
            ids: (0..=shape.seq).map(|_| rand::Rng::random_range(&mut r, 0..vocab)).collect(),
            prompt_len: 1,
            extra_loss: vec![],
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = data::make_batch(&refs, 0, dev)?;
    let tokens = (shape.batch * shape.seq) as f64;
    let mut train_ms = Vec::new();
    for i in 0..shape.warmup + shape.steps {
        let t0 = Instant::now();
        let fwd = Forward::train(&adapter, 0, i as u64);
        let loss = batch_loss(model, &batch, &fwd)?;
        let g = loss.backward()?;
        let mut grads: Vec<_> = vars
            .iter()
            .map(|v| g.get(v.as_tensor()).cloned().map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<_>>()?;
        optim::clip_grad_norm(&mut grads, 1.0)?;
        opt.step(&vars, &grads, 1e-4)?;
        if i >= shape.warmup {
            train_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let mut eval_ms = Vec::new();
    let fwd = Forward::eval(Some(&adapter));
    for i in 0..shape.warmup + shape.steps {
        let t0 = Instant::now();
        let loss = batch_loss(model, &batch, &fwd)?;
        loss.to_scalar::<f32>()?;
        if i >= shape.warmup {
            eval_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    let (tm, em) = (median(train_ms), median(eval_ms));
    Ok(BenchFigures {
        model: name.into(),
        shape,
        params: model.cfg.num_parameters(),
        trainable: adapter.num_parameters(),
        train_step_ms: tm,
        train_tokens_per_s: tokens / (tm / 1e3),
        eval_step_ms: em,
        eval_tokens_per_s: tokens / (em / 1e3),
        peak_rss_mib: peak_rss_mib(),
    })
}
