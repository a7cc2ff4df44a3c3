//! Minimal task data: JSONL `{"prompt", "completion"}` rows, rendered with the model's
//! chat template (or plain for base models), tokenised into examples whose loss covers
//! the completion tokens only. (Every other format and full validation: the datasets
//! issue.)

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::tokenizer::{ChatMessage, TextTokenizer};
use crate::{Error, Result};

/// One row of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// What the model is given.
    pub prompt: String,
    /// What it should answer.
    pub completion: String,
}

/// Reads JSONL `{"prompt", "completion"}` rows; an error names the line and the field.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Data { path: path.into(), line: i + 1, reason };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let field = |name: &str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(serde_json::Value::String(_)) => Err(bad(format!("field `{name}` is empty"))),
                Some(_) => Err(bad(format!("field `{name}` must be a string"))),
                None => Err(bad(format!("missing field `{name}`"))),
            }
        };
        out.push(Record { prompt: field("prompt")?, completion: field("completion")? });
    }
    if out.is_empty() {
        return Err(Error::Data { path: path.into(), line: 0, reason: "no examples".into() });
    }
    Ok(out)
}

/// A tokenised example: loss is taken on `ids[prompt_len..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Prompt then completion tokens.
    pub ids: Vec<u32>,
    /// How many leading tokens are prompt.
    pub prompt_len: usize,
}

impl Example {
    /// Completion tokens (those that carry loss).
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.prompt_len
    }
}

/// The prompt as the model sees it: chat-templated with a generation prompt, or plain.
pub fn render_prompt(tok: &TextTokenizer, system: Option<&str>, prompt: &str) -> Result<String> {
    if !tok.is_chat() {
        return Ok(prompt.to_string());
    }
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", prompt));
    tok.render_chat(&msgs, true)
}

/// Tokenises `rec`: prompt tokens, then the completion followed by the end-of-turn
/// marker the template puts after an assistant message (or EOS for plain prompts).
/// Longer than `max_len`: the prompt loses tokens from its start; the completion is cut
/// at its end only if it alone does not fit.
pub fn encode(tok: &TextTokenizer, rec: &Record, system: Option<&str>, max_len: usize) -> Result<Example> {
    let prompt = render_prompt(tok, system, &rec.prompt)?;
    let completion_text = if tok.is_chat() {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage::new("system", s));
        }
        msgs.push(ChatMessage::new("user", rec.prompt.clone()));
        msgs.push(ChatMessage::new("assistant", rec.completion.clone()));
        let full = tok.render_chat(&msgs, false)?;
        match full.strip_prefix(&prompt) {
            Some(rest) => rest.trim_end_matches('\n').to_string(),
            None => return Err(Error::Template("the chat template does not render the prompt as a prefix of the conversation".into())),
        }
    } else {
        rec.completion.clone()
    };
    let mut p = tok.encode(&prompt)?;
    if let Some(bos) = tok.bos_id {
        if !tok.is_chat() && p.first() != Some(&bos) {
            p.insert(0, bos);
        }
    }
    let mut c = tok.encode(&completion_text)?;
    if !tok.is_chat() {
        c.extend(tok.eos_ids.first());
    }
    let max_len = max_len.max(2);
    if c.len() > max_len - 1 {
        c.truncate(max_len - 1);
    }
    if p.len() + c.len() > max_len {
        let cut = p.len() + c.len() - max_len;
        p.drain(..cut);
    }
    if p.is_empty() {
        return Err(Error::Invalid("example has no prompt tokens left after truncation".into()));
    }
    let prompt_len = p.len();
    p.extend(c);
    Ok(Example { ids: p, prompt_len })
}

/// A padded batch for next-token training: inputs are `ids[..n-1]`, and the loss is
/// taken at the flat positions `loss_index` against `targets`.
#[derive(Debug)]
pub struct Batch {
    /// `(B, T)` input ids, right-padded.
    pub input_ids: Tensor,
    /// Padding mask rows (1 = token).
    pub mask: Vec<Vec<u8>>,
    /// Flat positions `b * T + t` whose next token carries loss.
    pub loss_index: Tensor,
    /// The tokens predicted at `loss_index`.
    pub targets: Tensor,
    /// Real (non-pad) input tokens.
    pub tokens: usize,
    /// Tokens that carry loss.
    pub loss_tokens: usize,
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
    for (bi, e) in examples.iter().enumerate() {
        let n = e.ids.len() - 1;
        ids.extend_from_slice(&e.ids[..n]);
        ids.extend(std::iter::repeat_n(pad, t - n));
        let mut m = vec![1u8; n];
        m.resize(t, 0);
        mask.push(m);
        tokens += n;
        for pos in e.prompt_len.saturating_sub(1)..n {
            loss_index.push((bi * t + pos) as u32);
            targets.push(e.ids[pos + 1]);
        }
    }
    let loss_tokens = targets.len();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        mask,
        loss_index: Tensor::from_vec(loss_index, loss_tokens, device)?,
        targets: Tensor::from_vec(targets, loss_tokens, device)?,
        tokens,
        loss_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_example_masks_the_prompt() {
        let tok = TextTokenizer::byte_level().unwrap();
        let e = encode(&tok, &Record { prompt: "2+2".into(), completion: "4".into() }, None, 512).unwrap();
        let prompt = tok.decode(&e.ids[..e.prompt_len], false).unwrap();
        let completion = tok.decode(&e.ids[e.prompt_len..], false).unwrap();
        assert!(prompt.ends_with("<|im_start|>user\n2+2<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(completion, "4<|im_end|>");
    }

    #[test]
    fn truncation_keeps_the_completion() {
        let tok = TextTokenizer::byte_level().unwrap();
        let e = encode(&tok, &Record { prompt: "x".repeat(100), completion: "yes".into() }, None, 20).unwrap();
        assert_eq!(e.ids.len(), 20);
        assert_eq!(tok.decode(&e.ids[e.prompt_len..], false).unwrap(), "yes<|im_end|>");
    }

    #[test]
    fn batch_targets_are_the_completion_shifted() {
        let a = Example { ids: vec![10, 11, 12, 13], prompt_len: 2 };
        let b = Example { ids: vec![20, 21, 22], prompt_len: 2 };
        let batch = make_batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(batch.input_ids.to_vec2::<u32>().unwrap(), vec![vec![10, 11, 12], vec![20, 21, 0]]);
        assert_eq!(batch.mask, vec![vec![1, 1, 1], vec![1, 1, 0]]);
        // a: predict 12 at pos 1, 13 at pos 2; b: predict 22 at pos 1 (flat 3 + 1).
        assert_eq!(batch.loss_index.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), vec![12, 13, 22]);
        assert_eq!((batch.tokens, batch.loss_tokens), (5, 3));
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(&p, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n").unwrap();
        let e = read_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("missing field `completion`"), "{e}");
        std::fs::write(&p, "{\"prompt\":\"a\",\"completion\":3}\n").unwrap();
        assert!(read_jsonl(&p).unwrap_err().to_string().contains("`completion` must be a string"));
        std::fs::write(&p, "not json\n").unwrap();
        assert!(read_jsonl(&p).unwrap_err().to_string().contains("line 1: invalid JSON"));
    }
}
