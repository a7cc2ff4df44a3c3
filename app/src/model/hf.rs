//! Hugging Face model folders: `config.json` + safetensors (sharded or not) +
//! `tokenizer.json`, read and written.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::model::config::{HfConfig, ModelConfig, RopeLayout, RopeScaling};
use crate::model::gguf::permute_qk_rows;
use crate::model::llama::Llama;
use crate::model::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// Loads a Hugging Face model folder: `config.json`, `model.safetensors` or a sharded
/// `model.safetensors.index.json` (memory-mapped), `tokenizer.json`.
pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<(Llama, TextTokenizer)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::file(&cfg_path, e))?;
    let hf = HfConfig::from_json(&text)?;
    let (bos, eos, pad) =
        (HfConfig::ids(&hf.bos_token_id), HfConfig::ids(&hf.eos_token_id), HfConfig::ids(&hf.pad_token_id));
    let cfg = hf.into_model_config()?;
    let files = safetensors_files(dir)?;
    // SAFETY: the files are opened read-only; like every mmap-based loader we assume no
    // one truncates them while the model loads (weights are copied out below).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
        .map_err(|e| Error::Weights(format!("{}: {e}", dir.display())))?;
    let names: std::collections::HashSet<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let model = Llama::from_weights(cfg, |name| {
        if !names.contains(name) {
            return Ok(None);
        }
        Ok(Some(st.load(name, device)?.to_dtype(DType::F32)?))
    })?;
    let tokenizer = TextTokenizer::from_hf_dir(dir, bos, eos, pad)?;
    Ok((model, tokenizer))
}

fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::file(&index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Weights(format!("{}: no `weight_map`", index.display())))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::Weights(format!("{}: no model.safetensors or model.safetensors.index.json", dir.display())))
}

/// Writes `model` (f32) and `tokenizer` as a Hugging Face folder that [`load_hf_dir`] and
/// `transformers` load: `config.json`, `model.safetensors`, `tokenizer.json`,
/// `tokenizer_config.json`.
pub fn save_hf_dir(model: &Llama, tokenizer: &TextTokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let cfg = &model.cfg;
    let mut weights = Vec::new();
    for (name, t) in model.named_weights() {
        // Saved checkpoints are always in Hugging Face row order.
        let t = match cfg.rope_layout {
            RopeLayout::Interleaved if name.ends_with("q_proj.weight") => {
                permute_qk_rows(&t, cfg.num_attention_heads, true)?
            }
            RopeLayout::Interleaved if name.ends_with("k_proj.weight") => {
                permute_qk_rows(&t, cfg.num_key_value_heads, true)?
            }
            _ => t,
        };
        weights.push((name, t.to_dtype(DType::F32)?.contiguous()?));
    }
    crate::persist::write_safetensors(&dir.join("model.safetensors"), &weights, None)?;
    save_hf_config(cfg, tokenizer, dir)
}

/// The configuration and tokenizer files of a Hugging Face model folder for `cfg`
/// (what [`save_hf_dir`] writes besides the weights).
pub fn save_hf_config(cfg: &ModelConfig, tokenizer: &TextTokenizer, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut hf = serde_json::json!({
        "architectures": [if cfg.model_type == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": cfg.attention_bias,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_ids.first(),
        "pad_token_id": tokenizer.pad_id,
    });
    match cfg.rope_scaling {
        Some(RopeScaling::Llama3(s)) => {
            hf["rope_scaling"] = serde_json::json!({"rope_type": "llama3", "factor": s.factor,
                "low_freq_factor": s.low_freq_factor, "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings});
        }
        Some(RopeScaling::Linear { factor }) => {
            hf["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
        }
        None => {}
    }
    if let Some(w) = cfg.sliding_window {
        hf["sliding_window"] = w.into();
        hf["use_sliding_window"] = true.into();
    }
    crate::persist::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let tok_name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let tc = serde_json::json!({
        "chat_template": tokenizer.chat_template,
        "bos_token": tok_name(tokenizer.bos_id),
        "eos_token": tok_name(tokenizer.eos_ids.first().copied()),
        "pad_token": tok_name(Some(tokenizer.pad_id)),
    });
    crate::persist::write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?.as_bytes())?;
    Ok(())
}
