//! Text ↔ token ids, and chat templates.
//!
//! Built from a Hugging Face `tokenizer.json`, or from GGUF metadata (GPT-2 byte-level
//! BPE: `tokenizer.ggml.tokens` + `merges`), or as a 256-byte vocabulary for the tiny
//! test model. Chat templates are the model's own Jinja, rendered with minijinja.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// ChatML, used by SmolLM2, Qwen2 and the tiny model.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// End-of-turn markers of common chat formats; generation stops on any present.
const END_OF_TURN: [&str; 6] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>", "<|end|>", "<|end_of_text|>"];

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A message with `role` and `content`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// A tokenizer with the special ids and chat template of its model.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    /// The Hugging Face tokenizer.
    pub inner: Tokenizer,
    /// Beginning-of-sequence id, if the model uses one.
    pub bos_id: Option<u32>,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Id used for padding.
    pub pad_id: u32,
    /// Jinja chat template; `None` for base models (plain prompts).
    pub chat_template: Option<String>,
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The pieces of a GGUF tokenizer.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`.
    pub model: String,
    /// `tokenizer.ggml.pre`.
    pub pre: String,
    /// Tokens by id.
    pub tokens: Vec<String>,
    /// Token types (3 = control, 4 = user-defined).
    pub token_types: Vec<i32>,
    /// Merges as `"a b"`.
    pub merges: Vec<String>,
    /// BOS id.
    pub bos_id: Option<u32>,
    /// EOS id.
    pub eos_id: Option<u32>,
    /// Padding id.
    pub pad_id: Option<u32>,
    /// Chat template.
    pub chat_template: Option<String>,
}

impl TextTokenizer {
    /// Builds a GPT-2-style byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf(v: GgufVocab) -> Result<Self> {
        if v.model != "gpt2" {
            return Err(Error::UnsupportedConfig {
                field: "tokenizer.ggml.model".into(),
                reason: format!("`{}`; only byte-level BPE (`gpt2`) GGUF tokenizers are supported", v.model),
            });
        }
        let vocab: Vocab = v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = v
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tok_err)?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(pre_tokenizer(&v.pre)?));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        let special: Vec<AddedToken> = v
            .tokens
            .iter()
            .zip(&v.token_types)
            .filter(|(_, &ty)| ty == 3 || ty == 4)
            .map(|(t, &ty)| AddedToken::from(t.clone(), ty == 3))
            .collect();
        tok.add_special_tokens(special).map_err(tok_err)?;
        Self::assemble(tok, v.bos_id, v.eos_id.into_iter().collect(), v.pad_id, v.chat_template)
    }

    /// Loads `tokenizer.json`, with ids and template from `tokenizer_config.json` and
    /// `config.json` where present.
    pub fn from_hf_dir(dir: &Path, cfg_bos: Vec<u32>, cfg_eos: Vec<u32>, cfg_pad: Vec<u32>) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tok = Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc: serde_json::Value = match std::fs::read_to_string(&tc_path) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| Error::Tokenizer(format!("{}: {e}", tc_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let token_id = |key: &str| -> Option<u32> {
            let v = tc.get(key)?;
            let s = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            tok.token_to_id(s)
        };
        let template = match tc.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(String::from)),
            _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
        };
        let bos = cfg_bos.first().copied().or_else(|| token_id("bos_token"));
        let mut eos = cfg_eos;
        eos.extend(token_id("eos_token"));
        let pad = cfg_pad.first().copied().or_else(|| token_id("pad_token"));
        Self::assemble(tok, bos, eos, pad, template)
    }

    /// The tiny model's tokenizer: one token per byte (GPT-2 byte-to-unicode alphabet),
    /// plus ChatML's special tokens.
    pub fn byte_level() -> Result<Self> {
        let alphabet = ByteLevel::alphabet();
        let mut chars: Vec<char> = alphabet.into_iter().collect();
        chars.sort();
        let mut vocab = Vocab::default();
        for (i, s) in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].iter().enumerate() {
            vocab.insert(s.to_string(), i as u32);
        }
        for c in chars {
            let n = vocab.len() as u32;
            vocab.insert(c.to_string(), n);
        }
        let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().map_err(tok_err)?;
        let mut tok = Tokenizer::new(bpe);
        tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tok.with_decoder(Some(ByteLevelDecoder::default()));
        tok.add_special_tokens([
            AddedToken::from("<|endoftext|>", true),
            AddedToken::from("<|im_start|>", true),
            AddedToken::from("<|im_end|>", true),
        ])
        .map_err(tok_err)?;
        Self::assemble(tok, None, vec![2], Some(0), Some(CHATML_TEMPLATE.into()))
    }

    fn assemble(
        inner: Tokenizer,
        bos_id: Option<u32>,
        mut eos_ids: Vec<u32>,
        pad_id: Option<u32>,
        chat_template: Option<String>,
    ) -> Result<Self> {
        for t in END_OF_TURN {
            if let Some(id) = inner.token_to_id(t) {
                eos_ids.push(id);
            }
        }
        eos_ids.sort();
        eos_ids.dedup();
        let pad_id = pad_id.or(eos_ids.first().copied()).unwrap_or(0);
        Ok(Self { inner, bos_id, eos_ids, pad_id, chat_template })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self.inner.encode(text, false).map_err(tok_err)?.get_ids().to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The text of one token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Renders `messages` with the model's chat template. Base models without a
    /// template get the plain concatenation of the contents.
    pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(template) = &self.chat_template else {
            return Ok(messages.iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n"));
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", template).map_err(|e| Error::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| Error::Template(e.to_string()))?;
        let tok_str = |id: Option<u32>| id.and_then(|i| self.token(i)).unwrap_or_default();
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => tok_str(self.bos_id),
            eos_token => tok_str(self.eos_ids.first().copied()),
        })
        .map_err(|e| Error::Template(e.to_string()))
    }

    /// Whether prompts are wrapped in a chat template.
    pub fn is_chat(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Saves as a Hugging Face `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner.save(path, false).map_err(tok_err)
    }
}

/// The pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = |regex: bool| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        Ok(PreTokenizerWrapper::Split(
            Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
                .map_err(tok_err)?,
        ))
    };
    Ok(match pre {
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            byte_level(true),
        ])),
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "llama3" | "llama-bpe" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?,
            byte_level(false),
        ])),
        "qwen2" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            split(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            )?,
            byte_level(false),
        ])),
        other => {
            return Err(Error::UnsupportedConfig {
                field: "tokenizer.ggml.pre".into(),
                reason: format!("pre-tokenizer `{other}` is not supported (smollm, gpt2, llama-bpe, qwen2)"),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_round_trips_any_text() {
        let t = TextTokenizer::byte_level().unwrap();
        let text = "Héllo, wörld! 12 + 30 = 42 ✓";
        let ids = t.encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(t.decode(&ids, true).unwrap(), text);
        assert_eq!(t.vocab_size(), 259);
        assert_eq!(t.encode("<|im_end|>").unwrap(), vec![2]);
        assert_eq!(t.eos_ids, vec![0, 2]);
    }

    #[test]
    fn chatml_renders_with_default_system_prompt() {
        let t = TextTokenizer::byte_level().unwrap();
        let s = t.render_chat(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn template_errors_are_reported() {
        let mut t = TextTokenizer::byte_level().unwrap();
        t.chat_template = Some("{{ raise_exception('roles must alternate') }}".into());
        let e = t.render_chat(&[], false).unwrap_err();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
    }
}
