//! Examples as the model sees them: records rendered with the model's chat template (or
//! plain for base models), tokenised so the loss covers the completion (every assistant
//! turn) only, and padded into batches. Reading and validating files: [`crate::data`].

use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::pack::Pack;
use crate::model::tokenizer::{ChatMessage, TextTokenizer};
use crate::model::Batch;
use crate::{Error, Result};

/// One example of a task, whatever format it came in: the final user prompt and the
/// answer to learn, after any earlier conversation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// What the model is given (the last user message).
    pub prompt: String,
    /// What it should answer (the last assistant message, or the label).
    pub completion: String,
    /// Earlier messages of a conversation (a leading system message, then user and
    /// assistant turns); assistant turns here are trained on too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ChatMessage>,
}

impl Record {
    /// A single-turn record.
    pub fn new(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Self { prompt: prompt.into(), completion: completion.into(), history: vec![] }
    }
}

/// A tokenised example: loss is taken on `ids[prompt_len..]` and on `extra_loss` spans
/// (earlier assistant turns of a conversation).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Example {
    /// Prompt then completion tokens.
    pub ids: Vec<u32>,
    /// How many leading tokens are prompt (before the final completion).
    pub prompt_len: usize,
    /// Token ranges `[start, end)` inside the prompt that also carry loss.
    pub extra_loss: Vec<(usize, usize)>,
    /// The group its loss is reported under: a mixture's task (0 elsewhere). Training
    /// reports each step's loss per group when a run's examples span several.
    pub group: usize,
}

impl Example {
    /// Completion tokens (those that carry loss).
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

fn messages(system: Option<&str>, rec: &Record, with_answer: bool) -> Vec<ChatMessage> {
    let mut msgs = Vec::with_capacity(rec.history.len() + 3);
    if let Some(s) = system {
        if rec.history.first().is_none_or(|m| m.role != "system") {
            msgs.push(ChatMessage::new("system", s));
        }
    }
    msgs.extend(rec.history.iter().cloned());
    msgs.push(ChatMessage::new("user", rec.prompt.clone()));
    if with_answer {
        msgs.push(ChatMessage::new("assistant", rec.completion.clone()));
    }
    msgs
}

/// The prompt as the model sees it: chat-templated with a generation prompt, or plain.
pub fn render_prompt(tok: &TextTokenizer, system: Option<&str>, prompt: &str) -> Result<String> {
    render_record_prompt(tok, system, &Record::new(prompt, ""))
}

/// The token ids a generation starts from for `prompt`: rendered as [`render_prompt`]
/// does, a plain prompt led by BOS.
pub fn prompt_ids(tok: &TextTokenizer, system: Option<&str>, prompt: &str) -> Result<Vec<u32>> {
    let mut ids = tok.encode(&render_prompt(tok, system, prompt)?)?;
    if let Some(bos) = tok.bos_id {
        if !tok.is_chat() && ids.first() != Some(&bos) {
            ids.insert(0, bos);
        }
    }
    Ok(ids)
}

/// A record's prompt (history included) as the model sees it.
pub fn render_record_prompt(tok: &TextTokenizer, system: Option<&str>, rec: &Record) -> Result<String> {
    if !tok.is_chat() {
        let mut parts: Vec<&str> = system.into_iter().collect();
        parts.extend(rec.history.iter().map(|m| m.content.as_str()));
        parts.push(&rec.prompt);
        return Ok(parts.join("\n"));
    }
    tok.render_chat(&messages(system, rec, false), true)
}

/// Text segments of a rendered conversation, each marked whether it carries loss
/// (assistant turns, with their end-of-turn marker).
fn chat_segments(tok: &TextTokenizer, system: Option<&str>, rec: &Record) -> Result<Vec<(String, bool)>> {
    let msgs = messages(system, rec, true);
    let full = tok.render_chat(&msgs, false)?;
    let mut segs = Vec::new();
    let mut pos = 0usize;
    for (i, m) in msgs.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = tok.render_chat(&msgs[..i], true)?;
        let through = tok.render_chat(&msgs[..=i], false)?;
        let through = through.trim_end_matches('\n');
        if !full.starts_with(&before)
            || !full.starts_with(through)
            || before.len() < pos
            || through.len() < before.len()
        {
            return Err(Error::Template(
                "the chat template does not render earlier turns as a prefix of the conversation".into(),
            ));
        }
        segs.push((full[pos..before.len()].to_string(), false));
        segs.push((full[before.len()..through.len()].to_string(), true));
        pos = through.len();
    }
    Ok(segs)
}

/// Tokenises `rec`: prompt tokens, then the completion followed by the end-of-turn
/// marker the template puts after an assistant message (or EOS for plain prompts).
/// Longer than `max_len`: the prompt loses tokens from its start; the completion is cut
/// at its end only if it alone does not fit.
pub fn encode(tok: &TextTokenizer, rec: &Record, system: Option<&str>, max_len: usize) -> Result<Example> {
    let (mut p, mut c, mut extra) = if tok.is_chat() {
        let segs = chat_segments(tok, system, rec)?;
        let n = segs.len();
        let mut ids = Vec::new();
        let mut extra = Vec::new();
        for (text, loss) in &segs[..n - 1] {
            let t = tok.encode(text)?;
            if *loss {
                extra.push((ids.len(), ids.len() + t.len()));
            }
            ids.extend(t);
        }
        (ids, tok.encode(&segs[n - 1].0)?, extra)
    } else {
        let mut p = tok.encode(&render_record_prompt(tok, system, rec)?)?;
        if let Some(bos) = tok.bos_id {
            if p.first() != Some(&bos) {
                p.insert(0, bos);
            }
        }
        let mut c = tok.encode(&rec.completion)?;
        c.extend(tok.eos_ids.first());
        (p, c, vec![])
    };
    let max_len = max_len.max(2);
    if c.len() > max_len - 1 {
        c.truncate(max_len - 1);
    }
    if p.len() + c.len() > max_len {
        let cut = p.len() + c.len() - max_len;
        p.drain(..cut);
        extra = extra.into_iter().filter(|&(_, e)| e > cut).map(|(s, e)| (s.saturating_sub(cut), e - cut)).collect();
    }
    if p.is_empty() {
        return Err(Error::Invalid("example has no prompt tokens left after truncation".into()));
    }
    let prompt_len = p.len();
    p.extend(c);
    Ok(Example { ids: p, prompt_len, extra_loss: extra, group: 0 })
}

/// Builds a [`Batch`] from examples, right-padding with `pad`.
pub fn make_batch(examples: &[&Example], pad: u32, device: &Device) -> Result<Batch> {
    let t = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(0).max(1);
    let b = examples.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b);
    let mut loss_index = Vec::new();
    let mut targets = Vec::new();
    let mut tokens = 0;
    let mut per_example = Vec::with_capacity(b);
    let groups = examples.iter().map(|e| e.group).collect();
    let pack = Pack::new(&examples.iter().map(|e| &e.ids[..e.ids.len() - 1]).collect::<Vec<_>>(), true);
    let mut packed_loss_index = Vec::new();
    for (bi, e) in examples.iter().enumerate() {
        let before = targets.len();
        let n = e.ids.len() - 1;
        ids.extend_from_slice(&e.ids[..n]);
        ids.extend(std::iter::repeat_n(pad, t - n));
        let mut m = vec![1u8; n];
        m.resize(t, 0);
        mask.push(m);
        tokens += n;
        // Position `pos` predicts token `pos + 1`: a span [s, e) of loss tokens is
        // predicted from positions s-1 .. e-1.
        let spans = e.extra_loss.iter().copied().chain(std::iter::once((e.prompt_len, e.ids.len())));
        for (start, end) in spans {
            for pos in start.max(1) - 1..end - 1 {
                loss_index.push((bi * t + pos) as u32);
                packed_loss_index.push(pack.rows[bi].path[pos]);
                targets.push(e.ids[pos + 1]);
            }
        }
        per_example.push(targets.len() - before);
    }
    let loss_tokens = targets.len();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        mask,
        loss_index: Tensor::from_vec(loss_index, loss_tokens, device)?,
        targets: Tensor::from_vec(targets, loss_tokens, device)?,
        tokens,
        loss_tokens,
        per_example,
        groups,
        packed_loss_index: Tensor::from_vec(packed_loss_index, loss_tokens, device)?,
        pack: Arc::new(pack),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_example_masks_the_prompt() {
        let tok = TextTokenizer::byte_level().unwrap();
        let e = encode(&tok, &Record::new("2+2", "4"), None, 512).unwrap();
        let prompt = tok.decode(&e.ids[..e.prompt_len], false).unwrap();
        let completion = tok.decode(&e.ids[e.prompt_len..], false).unwrap();
        assert!(prompt.ends_with("<|im_start|>user\n2+2<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(completion, "4<|im_end|>");
    }

    #[test]
    fn truncation_keeps_the_completion() {
        let tok = TextTokenizer::byte_level().unwrap();
        let e = encode(&tok, &Record::new("x".repeat(100), "yes"), None, 20).unwrap();
        assert_eq!(e.ids.len(), 20);
        assert_eq!(tok.decode(&e.ids[e.prompt_len..], false).unwrap(), "yes<|im_end|>");
    }

    #[test]
    fn batch_targets_are_the_completion_shifted() {
        let a = Example { ids: vec![10, 11, 12, 13], prompt_len: 2, ..Default::default() };
        let b = Example { ids: vec![20, 21, 22], prompt_len: 2, ..Default::default() };
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), vec![vec![10, 11, 12], vec![20, 21, 0]]);
        assert_eq!(batch.mask, vec![vec![1, 1, 1], vec![1, 1, 0]]);
        // a: predict 12 at pos 1, 13 at pos 2; b: predict 22 at pos 1 (flat 3 + 1).
        assert_eq!(batch.loss_index.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), vec![12, 13, 22]);
        assert_eq!((batch.tokens, batch.loss_tokens), (5, 3));
    }

    #[test]
    fn multi_turn_trains_on_every_assistant_turn() {
        let tok = TextTokenizer::byte_level().unwrap();
        let rec = Record {
            prompt: "and 3+3?".into(),
            completion: "6".into(),
            history: vec![ChatMessage::new("user", "2+2?"), ChatMessage::new("assistant", "4")],
        };
        let e = encode(&tok, &rec, None, 512).unwrap();
        assert_eq!(e.extra_loss.len(), 1);
        let (s, t) = e.extra_loss[0];
        assert_eq!(tok.decode(&e.ids[s..t], false).unwrap(), "4<|im_end|>");
        assert_eq!(tok.decode(&e.ids[e.prompt_len..], false).unwrap(), "6<|im_end|>");
        let batch = make_batch(&[&e], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.loss_tokens, (t - s) + (e.ids.len() - e.prompt_len));
    }
}
