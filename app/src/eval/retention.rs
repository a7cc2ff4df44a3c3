//! What fine-tuning costs the base model: a general-ability probe shipped with the project
//! (`assets/retention/probe.jsonl`: facts, arithmetic, rewriting, advice, small talk —
//! our own prompts), answered once by the base model (greedy), then for a tuned model the
//! mean per-token KL divergence from the base model's next-token distributions along the
//! base answers (teacher-forced), and the share of prompts whose greedy answer stays the
//! base model's.
//!
//! The share needs no decoding: a tuned model's greedy answer is the base answer exactly
//! when, fed the base answer, its most likely next token is the base answer's at every
//! position (and a stop token after it, where the base answer stopped) — each step of
//! greedy decoding then reproduces the base model's.

use candle_core::{DType, Tensor, D};
use serde::Deserialize;

use crate::data::{make_batch, prompt_ids, Example};
use crate::eval::generate::{generate_batch, GenerateConfig};
use crate::model::lora::LoraAdapter;
use crate::model::{Forward, Llama, TextTokenizer};
use crate::{Error, Result};

/// The probe's prompts, as shipped.
pub const PROBE: &str = include_str!("../../../assets/retention/probe.jsonl");

/// Longest base answer kept, in tokens.
pub const ANSWER_TOKENS: usize = 32;

/// Prompts scored per forward pass.
const BATCH: usize = 16;

/// One prompt of the probe.
#[derive(Debug, Clone, Deserialize)]
struct ProbePrompt {
    prompt: String,
}

/// The probe's prompts.
pub fn probe_prompts() -> Result<Vec<String>> {
    PROBE
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str::<ProbePrompt>(l)
                .map(|p| p.prompt)
                .map_err(|e| Error::Invalid(format!("retention probe, line {}: {e}", i + 1)))
        })
        .collect()
}

/// The base model's answers to the probe: each prompt (chat-templated) followed by the
/// base model's greedy answer, the answer as the loss positions.
#[derive(Debug)]
pub struct Probe {
    /// Prompt then base answer (then the stop token the base model chose, where it
    /// stopped).
    pub examples: Vec<Example>,
    /// Whether each base answer ended with a stop token (else it ran to
    /// [`ANSWER_TOKENS`]).
    pub stopped: Vec<bool>,
    /// The tokens that end an answer.
    pub stop: Vec<u32>,
    /// Seconds [`Probe::answer`] took: the base model's answers (or checking the cached
    /// ones) and its pass along them.
    pub answer_s: f64,
    /// Whether the next measurement adds [`Probe::answer_s`] to its own seconds
    /// ([`Probe::bill_answering`]).
    unbilled: std::sync::atomic::AtomicBool,
    /// Padding.
    pub pad: u32,
    /// The examples scored together, as ranges of `examples`: every measurement runs the
    /// same batches as the base model's pass below, so the base model against itself is
    /// exact.
    chunks: Vec<std::ops::Range<usize>>,
    /// What the KL needs of the base model's next-token distributions at every answer
    /// position, per chunk ([`BaseSide`]): measuring a tuned model runs neither the base
    /// model's layers nor its LM head again.
    base: Vec<BaseSide>,
}

impl Probe {
    /// Answers `prompts` with `base` (greedy, at most [`ANSWER_TOKENS`] tokens each). The
    /// answers are kept in the cache folder, keyed by the model (a fingerprint of its
    /// outputs), the prompts and the system prompt: a later comparison on the same model
    /// only checks them, in the one pass over the base model it needs anyway.
    pub fn answer(base: &Llama, tok: &TextTokenizer, system: Option<&str>, prompts: &[String]) -> Result<Self> {
        let t0 = std::time::Instant::now();
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| prompt_ids(tok, system, p)).collect::<Result<_>>()?;
        let cached = cache_file(base, &ids)?;
        let answers = match cached.as_deref().and_then(read_answers).filter(|a| a.len() == ids.len()) {
            Some(a) => a,
            None => {
                let cfg = GenerateConfig { max_new_tokens: ANSWER_TOKENS, ..Default::default() };
                // The answers come without their stop token: one shorter than the limit stopped.
                let a = generate_batch(base, None, &ids, &tok.eos_ids, tok.pad_id, &cfg, &mut |_, _| {})?;
                if let Some(path) = &cached {
                    // Best effort: without a cache the next comparison answers again.
                    let _ = write_answers(path, &a);
                }
                a
            }
        };
        let mut examples = Vec::with_capacity(ids.len());
        let mut stopped = Vec::with_capacity(ids.len());
        for (p, a) in ids.into_iter().zip(answers) {
            let ended = a.len() < ANSWER_TOKENS;
            if a.is_empty() {
                // Nothing to compare along: the prompt is left out.
                continue;
            }
            let mut all = p.clone();
            all.extend(&a);
            // A last position predicting the stop: the tuned model must stop there too for
            // its greedy answer to be the same (any stop token will do; the target's id
            // is never an input).
            if let (true, Some(&s)) = (ended, tok.eos_ids.first()) {
                all.push(s);
            }
            stopped.push(ended && !tok.eos_ids.is_empty());
            examples.push(Example { prompt_len: p.len(), ids: all, ..Default::default() });
        }
        let mut probe = Self {
            examples,
            stopped,
            stop: tok.eos_ids.clone(),
            pad: tok.pad_id,
            answer_s: 0.0,
            unbilled: Default::default(),
            chunks: vec![],
            base: vec![],
        };
        probe.settle(base)?;
        probe.answer_s = t0.elapsed().as_secs_f64();
        if probe.examples.is_empty() {
            return Err(Error::Invalid("the base model answered no probe prompt".into()));
        }
        Ok(probe)
    }

    /// One pass of the base model over the answers, in batches of [`BATCH`]: each answer
    /// is cut where the base model's own teacher-forced choice departs from it (decoding
    /// with a cache and scoring a whole sequence round differently, so a near tie can
    /// fall either way; cached answers from another build, likewise), so the base model
    /// keeps every answer by construction; and its hidden states at the answer positions
    /// are kept. A batch with a cut answer runs again as cut (rare), so that every
    /// measurement's batches are exactly those the hidden states come from.
    fn settle(&mut self, base: &Llama) -> Result<()> {
        let (mut examples, mut stopped) = (Vec::with_capacity(self.examples.len()), Vec::new());
        let (mut chunks, mut sides) = (Vec::new(), Vec::new());
        for (chunk, ends) in self.examples.chunks(BATCH).zip(self.stopped.chunks(BATCH)) {
            let (h, targets, per_example) = answer_states(base, chunk, self.pad, &Forward::eval(None))?;
            let (z, vocab) = logits(base, &h)?;
            let picked: Vec<u32> = z.chunks(vocab).map(|row| argmax(row).0).collect();
            let start = examples.len();
            let (mut at, mut cut) = (0, false);
            for ((e, &k), &ended) in chunk.iter().zip(&per_example).zip(ends) {
                let same =
                    (at..at + k).take_while(|&i| self.agrees(&picked, &targets, i, ended && i + 1 == at + k)).count();
                at += k;
                if same == k {
                    examples.push(e.clone());
                    stopped.push(ended);
                    continue;
                }
                cut = true;
                if same > 0 {
                    // The first `same` answer tokens, not ended.
                    examples.push(Example { ids: e.ids[..e.prompt_len + same].to_vec(), ..e.clone() });
                    stopped.push(false);
                }
            }
            if examples.len() == start {
                continue;
            }
            let z = if cut {
                let h = answer_states(base, &examples[start..], self.pad, &Forward::eval(None))?.0;
                logits(base, &h)?.0
            } else {
                z
            };
            chunks.push(start..examples.len());
            sides.push(BaseSide::of(base, &z, vocab)?);
        }
        (self.examples, self.stopped, self.chunks, self.base) = (examples, stopped, chunks, sides);
        Ok(())
    }

    /// Counts answering the probe ([`Probe::answer_s`]) in the next measurement's
    /// seconds: where no base-model row holds that time, as in a distributed comparison's
    /// strategy parts, each of which answers (or checks) the probe again.
    pub fn bill_answering(&self) {
        self.unbilled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Seconds the next measurement will add to its own (0 once one has).
    pub fn unbilled_s(&self) -> f64 {
        if self.unbilled.load(std::sync::atomic::Ordering::Relaxed) {
            self.answer_s
        } else {
            0.0
        }
    }

    /// Whether the model's most likely token at loss position `i` (`picked`) is the
    /// answer's (`targets`) — or, at the position after an answer that stopped, any stop
    /// token (which one the base model chose is not kept).
    fn agrees(&self, picked: &[u32], targets: &[u32], i: usize, stop_position: bool) -> bool {
        if stop_position {
            self.stop.contains(&picked[i])
        } else {
            picked[i] == targets[i]
        }
    }

    /// How much of the base model `tuned` (a model, with `adapter` applied if given)
    /// keeps, against `base`, along the base answers. `tuned` shares the base model's LM
    /// head (adapters never change it).
    pub fn measure(&self, base: &Llama, tuned: &Llama, adapter: Option<&LoraAdapter>) -> Result<Kept> {
        if tuned.lm_head_weight().id() != base.lm_head_weight().id() {
            return Err(Error::Invalid("retention: the tuned model's LM head is not the base model's".into()));
        }
        let (mut kl_sum, mut positions, mut same) = (0.0f64, 0usize, 0usize);
        let t0 = std::time::Instant::now();
        for (range, side) in self.chunks.iter().zip(&self.base) {
            let (chunk, stopped) = (&self.examples[range.clone()], &self.stopped[range.clone()]);
            let (hidden, targets, per_example) = answer_states(tuned, chunk, self.pad, &Forward::eval(adapter))?;
            let (zt, vocab) = logits(tuned, &hidden)?;
            let h: Vec<f32> = hidden.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let (kl, picked) = kl_and_argmax(side, &h, &zt, vocab)?;
            let mut at = 0;
            for (&k, &ended) in per_example.iter().zip(stopped) {
                let span = at..at + k;
                let kls = &kl[span.clone()];
                // Not clamped one by one: rounding (±1e-6 or so) then averages out.
                let example_kl = kls.iter().map(|&x| f64::from(x)).sum::<f64>();
                kl_sum += example_kl;
                positions += k;
                let keeps = span.clone().all(|i| self.agrees(&picked, &targets, i, ended && i + 1 == at + k));
                same += usize::from(keeps);
                at += k;
            }
        }
        Ok(Kept {
            kl: (kl_sum / positions.max(1) as f64).max(0.0),
            same_answer: same as f64 / self.examples.len() as f64,
            prompts: self.examples.len(),
            seconds: t0.elapsed().as_secs_f64()
                + if self.unbilled.swap(false, std::sync::atomic::Ordering::Relaxed) { self.answer_s } else { 0.0 },
        })
    }
}

/// `model`'s final hidden states at every answer position of `examples` (one batch),
/// `(positions, hidden)`, with the answer token each position predicts and each
/// example's number of positions.
fn answer_states(
    model: &Llama,
    examples: &[Example],
    pad: u32,
    fwd: &Forward,
) -> Result<(Tensor, Vec<u32>, Vec<usize>)> {
    let batch = make_batch(&examples.iter().collect::<Vec<_>>(), pad, model.device())?;
    let (hidden, at) = model.batch_hidden(&batch, fwd)?;
    Ok((hidden.index_select(&at, 0)?, batch.targets.to_vec1()?, batch.per_example))
}

/// The logits of final hidden states, row after row, and the row width (the vocabulary).
fn logits(model: &Llama, hidden: &Tensor) -> Result<(Vec<f32>, usize)> {
    let z = model.logits(hidden)?.to_dtype(DType::F32)?;
    let vocab = z.dim(D::Minus1)?;
    Ok((z.flatten_all()?.to_vec1()?, vocab))
}

/// The most likely entry of a row of logits and its value.
fn argmax(row: &[f32]) -> (u32, f32) {
    let (mut best, mut arg) = (f32::NEG_INFINITY, 0u32);
    for (i, &y) in row.iter().enumerate() {
        if y > best {
            (best, arg) = (y, i as u32);
        }
    }
    (arg, best)
}

/// What the KL from the base model needs of its next-token distribution `p` at each
/// answer position, kept once per comparison. With the LM head `W` (frozen, shared by
/// every tuned model) and a tuned model's final hidden state `h`, its logits are `W h`,
/// so `KL(p ‖ softmax(W h)) = Σ p·z_b − logsumexp(z_b) − (Wᵀp)·h + logsumexp(W h)`:
/// `c = Σ p·z_b − logsumexp(z_b)` (minus the entropy) and `u = Wᵀ p` (a hidden-sized
/// vector) stand for the base model's whole row of logits.
#[derive(Debug, Clone)]
struct BaseSide {
    /// `c` per position.
    c: Vec<f64>,
    /// `u` per position, `(positions, hidden)` row-major.
    u: Vec<f32>,
}

impl BaseSide {
    /// From the base model's logits `z` (rows of `vocab`).
    fn of(base: &Llama, z: &[f32], vocab: usize) -> Result<Self> {
        let (p, c) = probs_and_c(z, vocab);
        let rows = c.len();
        let w = base.lm_head_weight().to_dtype(DType::F32)?;
        let p = Tensor::from_vec(p, (rows, vocab), w.device())?;
        let u = p.matmul(&w)?.flatten_all()?.to_vec1()?;
        Ok(Self { c, u })
    }
}

/// Per row of `vocab` logits: the softmax `p` (f32) and `c = Σ p·z − logsumexp(z)`.
fn probs_and_c(z: &[f32], vocab: usize) -> (Vec<f32>, Vec<f64>) {
    use rayon::prelude::*;
    let mut p = vec![0f32; z.len()];
    let c = p
        .par_chunks_mut(vocab)
        .zip(z.par_chunks(vocab))
        .map(|(p, z)| {
            let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut s, mut sz) = (0f64, 0f64);
            for (q, &x) in p.iter_mut().zip(z) {
                let e = f64::from((x - m).exp());
                *q = e as f32;
                s += e;
                sz += e * f64::from(x);
            }
            let inv = (1.0 / s) as f32;
            p.iter_mut().for_each(|q| *q *= inv);
            sz / s - (f64::from(m) + s.ln())
        })
        .collect();
    (p, c)
}

/// Per position: KL(base ‖ tuned) from the base side `base` ([`BaseSide`]), the tuned
/// model's final hidden states `h` (rows of the hidden size) and its logits `z` (rows of
/// `vocab`), as `c − u·h + logsumexp(z)`; and the tuned row's most likely token — one
/// pass over the tuned logits, the base model's never formed.
fn kl_and_argmax(base: &BaseSide, h: &[f32], z: &[f32], vocab: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    use rayon::prelude::*;
    let rows = base.c.len();
    if vocab == 0 || rows == 0 || z.len() != rows * vocab || h.len() != base.u.len() || !h.len().is_multiple_of(rows) {
        return Err(Error::Invalid(format!(
            "retention: {rows} base positions against {} logits of a vocabulary of {vocab} and {} hidden values",
            z.len(),
            h.len()
        )));
    }
    let hidden = h.len() / rows;
    let out: Vec<(f32, u32)> = z
        .par_chunks(vocab)
        .zip(h.par_chunks(hidden).zip(base.u.par_chunks(hidden)))
        .zip(&base.c)
        .map(|((z, (h, u)), &c)| {
            let (arg, m) = argmax(z);
            let s: f64 = z.iter().map(|&x| f64::from((x - m).exp())).sum();
            let uh: f64 = u.iter().zip(h).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
            ((c - uh + f64::from(m) + s.ln()) as f32, arg)
        })
        .collect();
    Ok(out.into_iter().unzip())
}

/// Where the base model's answers to these probe prompts are kept: a file in the cache
/// folder named by a hash of the prompts, the answer length and the model's fingerprint
/// (the bits of its final hidden states on a fixed input: another model, or the same one
/// computing differently, misses). `None` without a cache folder.
fn cache_file(base: &Llama, prompts: &[Vec<u32>]) -> Result<Option<std::path::PathBuf>> {
    use std::hash::{Hash, Hasher};
    let Some(dir) = crate::kernels::blas::cache_dir() else { return Ok(None) };
    let probe: Vec<u32> = (0..16u32).map(|i| (i * 7919 + 11) % base.cfg.vocab_size as u32).collect();
    let batch = make_batch(&[&Example { ids: probe, prompt_len: 1, ..Default::default() }], 0, base.device())?;
    let (h, _) = base.batch_hidden(&batch, &Forward::eval(None))?;
    let bits: Vec<u32> = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?.iter().map(|x| x.to_bits()).collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (bits, prompts, ANSWER_TOKENS).hash(&mut hasher);
    Ok(Some(dir.join("retention").join(format!("answers-{:016x}.json", hasher.finish()))))
}

fn read_answers(path: &std::path::Path) -> Option<Vec<Vec<u32>>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_answers(path: &std::path::Path, answers: &[Vec<u32>]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::persist::write_atomic(path, &serde_json::to_vec(answers)?)
}

/// How much of the base model a tuned model keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kept {
    /// Mean per-token KL divergence (nats) from the base model's next-token distribution
    /// along the base answers: 0 for the base model itself.
    pub kl: f64,
    /// Share of probe prompts whose greedy answer is still the base model's (1 for the
    /// base model).
    pub same_answer: f64,
    /// Prompts measured.
    pub prompts: usize,
    /// Seconds the measurement took.
    pub seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_and_argmax_by_hand() {
        // An LM head W = I (vocabulary 2, hidden 2). Base logits (0, 0): p = (½, ½),
        // c = 0 − ln 2, u = Wᵀp = (½, ½). Tuned hidden (ln 3, 0): logits (ln 3, 0),
        // softmax (¾, ¼). KL = ½ ln(½/¾) + ½ ln(½/¼) = 0.1438410…; the second row, the
        // base (5, −1) against itself: 0.
        let z_base = [0.0, 0.0, 5.0, -1.0];
        let (p, c) = probs_and_c(&z_base, 2);
        assert_eq!(p[..2], [0.5, 0.5]);
        assert!((c[0] + 2f64.ln()).abs() < 1e-12);
        let side = BaseSide { c, u: p };
        let z_tuned = [3f32.ln(), 0.0, 5.0, -1.0];
        let (kl, arg) = kl_and_argmax(&side, &z_tuned, &z_tuned, 2).unwrap();
        assert!((f64::from(kl[0]) - 0.143_841_036).abs() < 1e-6, "{kl:?}");
        assert!(kl[1].abs() < 1e-6 && arg == vec![0, 0], "a row against itself: 0 ({kl:?})");
        assert!(kl_and_argmax(&side, &[0.0; 3], &[0.0; 3], 2).is_err());
    }
}
