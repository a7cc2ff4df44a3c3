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
const BATCH: usize = 8;

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
#[derive(Debug, Clone)]
pub struct Probe {
    /// Prompt then base answer (then the stop token the base model chose, where it
    /// stopped).
    pub examples: Vec<Example>,
    /// Whether each base answer ended with a stop token (else it ran to
    /// [`ANSWER_TOKENS`]).
    pub stopped: Vec<bool>,
    /// The tokens that end an answer.
    pub stop: Vec<u32>,
    /// Padding.
    pub pad: u32,
    /// The base model's final hidden states at every answer position, per batch of
    /// [`BATCH`] prompts: its next-token distributions are the LM head of these, so
    /// measuring a tuned model runs the base model's layers no more.
    base_hidden: Vec<Tensor>,
}

impl Probe {
    /// Answers `prompts` with `base` (greedy, at most [`ANSWER_TOKENS`] tokens each).
    pub fn answer(base: &Llama, tok: &TextTokenizer, system: Option<&str>, prompts: &[String]) -> Result<Self> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| prompt_ids(tok, system, p)).collect::<Result<_>>()?;
        let cfg = GenerateConfig { max_new_tokens: ANSWER_TOKENS, ..Default::default() };
        // The answers come without their stop token: one shorter than the limit stopped.
        let answers = generate_batch(base, None, &ids, &tok.eos_ids, tok.pad_id, &cfg, &mut |_, _| {})?;
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
        let mut probe = Self { examples, stopped, stop: tok.eos_ids.clone(), pad: tok.pad_id, base_hidden: vec![] };
        probe.agree_with(base)?;
        probe.base_hidden = probe
            .examples
            .chunks(BATCH)
            .map(|chunk| {
                let batch = make_batch(&chunk.iter().collect::<Vec<_>>(), probe.pad, base.device())?;
                let (hidden, at) = base.batch_hidden(&batch, &Forward::eval(None))?;
                Ok(hidden.index_select(&at, 0)?)
            })
            .collect::<Result<_>>()?;
        if probe.examples.is_empty() {
            return Err(Error::Invalid("the base model answered no probe prompt".into()));
        }
        Ok(probe)
    }

    /// Cuts each answer where the base model's own teacher-forced choice departs from it
    /// (decoding with a cache and scoring a whole sequence round differently, so a near
    /// tie can fall either way): the base model then keeps every answer, by construction.
    fn agree_with(&mut self, base: &Llama) -> Result<()> {
        let mut keep = Vec::with_capacity(self.examples.len());
        for (chunk, stopped) in self.examples.chunks(BATCH).zip(self.stopped.chunks(BATCH)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let batch = make_batch(&refs, self.pad, base.device())?;
            let picked: Vec<u32> = log_probs(base, &batch, &Forward::eval(None))?.argmax(D::Minus1)?.to_vec1()?;
            let targets: Vec<u32> = batch.targets.to_vec1()?;
            let mut at = 0;
            for ((e, &k), &ended) in chunk.iter().zip(&batch.per_example).zip(stopped) {
                let same =
                    (at..at + k).take_while(|&i| self.agrees(&picked, &targets, i, ended && i + 1 == at + k)).count();
                keep.push(if same == k {
                    (e.clone(), ended)
                } else {
                    // The first `same` answer tokens, not ended.
                    (Example { ids: e.ids[..e.prompt_len + same].to_vec(), ..e.clone() }, false)
                });
                at += k;
            }
        }
        let (examples, stopped): (Vec<Example>, Vec<bool>) =
            keep.into_iter().filter(|(e, _)| e.ids.len() > e.prompt_len).unzip();
        self.examples = examples;
        self.stopped = stopped;
        Ok(())
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
    /// keeps, against `base`, along the base answers.
    pub fn measure(&self, base: &Llama, tuned: &Llama, adapter: Option<&LoraAdapter>) -> Result<Kept> {
        let (mut kl_sum, mut positions, mut same) = (0.0f64, 0usize, 0usize);
        let chunks = self.examples.chunks(BATCH).zip(self.stopped.chunks(BATCH)).zip(&self.base_hidden);
        for ((chunk, stopped), base_hidden) in chunks {
            let refs: Vec<&Example> = chunk.iter().collect();
            let batch = make_batch(&refs, self.pad, base.device())?;
            let lb = candle_nn::ops::log_softmax(&base.logits(base_hidden)?.to_dtype(DType::F32)?, D::Minus1)?;
            let lt = log_probs(tuned, &batch, &Forward::eval(adapter))?;
            // KL(base ‖ tuned) at every answer position.
            let kl: Vec<f32> = (lb.exp()? * (&lb - &lt)?)?.sum(D::Minus1)?.to_vec1()?;
            let picked: Vec<u32> = lt.argmax(D::Minus1)?.to_vec1()?;
            let targets: Vec<u32> = batch.targets.to_vec1()?;
            let mut at = 0;
            for (&k, &ended) in batch.per_example.iter().zip(stopped) {
                let span = at..at + k;
                let kls = &kl[span.clone()];
                let example_kl = kls.iter().map(|&x| f64::from(x.max(0.0))).sum::<f64>();
                kl_sum += example_kl;
                positions += k;
                let keeps = span.clone().all(|i| self.agrees(&picked, &targets, i, ended && i + 1 == at + k));
                same += usize::from(keeps);
                at += k;
            }
        }
        Ok(Kept {
            kl: kl_sum / positions.max(1) as f64,
            same_answer: same as f64 / self.examples.len() as f64,
            prompts: self.examples.len(),
        })
    }
}

/// Next-token log-probabilities at every loss position of `batch`, `(positions, vocab)`.
fn log_probs(model: &Llama, batch: &crate::model::Batch, fwd: &Forward) -> Result<Tensor> {
    let (hidden, at) = model.batch_hidden(batch, fwd)?;
    let logits = model.logits(&hidden.index_select(&at, 0)?)?.to_dtype(DType::F32)?;
    Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
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
}
