//! Evaluation of a model (with or without an adapter) on held-out records: completion
//! loss and perplexity, and greedy generation scored by normalised exact match.
//! (Classification by label ranking, token F1, ROUGE-L and intervals: the datasets issue.)

use candle_core::DType;
use serde::{Deserialize, Serialize};

use crate::data::{self, Example, Record};
use crate::generate::{generate_batch, GenerateConfig};
use crate::lora::LoraAdapter;
use crate::model::{Forward, Llama};
use crate::ops;
use crate::tokenizer::TextTokenizer;
use crate::Result;

/// One scored example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The prompt.
    pub prompt: String,
    /// The reference completion.
    pub reference: String,
    /// What the model generated.
    pub output: String,
    /// Whether they match after normalisation.
    pub correct: bool,
}

/// Scores on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Examples scored.
    pub examples: usize,
    /// Mean negative log-likelihood per completion token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Fraction of normalised exact matches of greedy outputs.
    pub exact_match: f64,
    /// Every prediction.
    pub predictions: Vec<Prediction>,
}

/// Lower-case, drop punctuation, collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let kept: String = s.chars().map(|c| if c.is_alphanumeric() || c.is_whitespace() { c.to_ascii_lowercase() } else { ' ' }).collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Mean completion-token NLL over `examples` and the token count, in batches.
pub fn completion_loss(model: &Llama, adapter: Option<&LoraAdapter>, examples: &[Example], batch_size: usize) -> Result<(f64, usize)> {
    let fwd = Forward::eval(adapter);
    let (mut sum, mut n) = (0f64, 0usize);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = data::make_batch(&refs, 0, model.device())?;
        if batch.loss_tokens == 0 {
            continue;
        }
        let hidden = model.hidden_states(&batch.input_ids, &batch.mask, &fwd, None)?;
        let (b, t, h) = hidden.dims3()?;
        let picked = hidden.reshape((b * t, h))?.index_select(&batch.loss_index, 0)?;
        let nll = ops::token_nll(&model.logits(&picked)?, &batch.targets)?;
        sum += nll.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        n += batch.loss_tokens;
    }
    Ok((if n == 0 { 0.0 } else { sum / n as f64 }, n))
}

/// Evaluates on `records`: loss/perplexity, and greedy answers scored by exact match.
pub fn evaluate(
    model: &Llama,
    tok: &TextTokenizer,
    adapter: Option<&LoraAdapter>,
    records: &[Record],
    system: Option<&str>,
    max_seq_len: usize,
    batch_size: usize,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let examples: Vec<Example> = records.iter().map(|r| data::encode(tok, r, system, max_seq_len)).collect::<Result<_>>()?;
    let (loss, _) = completion_loss(model, adapter, &examples, batch_size)?;
    let mut predictions = Vec::with_capacity(records.len());
    let max_new = examples.iter().map(Example::completion_len).max().unwrap_or(1) + 8;
    let cfg = GenerateConfig { max_new_tokens: max_new, ..Default::default() };
    for (ci, chunk) in records.chunks(batch_size.max(1)).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let e = &examples[ci * batch_size.max(1) + i];
                e.ids[..e.prompt_len].to_vec()
            })
            .collect();
        let outs = generate_batch(model, adapter, &prompts, &tok.eos_ids, tok.pad_id, &cfg, &mut |_, _| {})?;
        for (r, o) in chunk.iter().zip(outs) {
            let output = tok.decode(&o, true)?;
            let correct = normalize_answer(&output) == normalize_answer(&r.completion);
            predictions.push(Prediction { prompt: r.prompt.clone(), reference: r.completion.clone(), output, correct });
        }
        on_progress(predictions.len(), records.len());
    }
    let exact_match = predictions.iter().filter(|p| p.correct).count() as f64 / predictions.len().max(1) as f64;
    Ok(EvalReport { examples: records.len(), loss, perplexity: loss.exp(), exact_match, predictions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_answer("  The  Answer: 42!\n"), "the answer 42");
        assert_eq!(normalize_answer("Positive."), normalize_answer("positive"));
        assert_ne!(normalize_answer("positive"), normalize_answer("negative"));
    }
}
