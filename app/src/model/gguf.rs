//! GGUF files (the default model's format): metadata to [`ModelConfig`], the embedded
//! tokenizer, every tensor dequantized to f32, and llama.cpp's q/k row order undone.

use std::fs::File;
use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};

use crate::model::config::{ModelConfig, RopeLayout, RopeScaling};
use crate::model::llama::Llama;
use crate::model::tokenizer::{GgufVocab, TextTokenizer};
use crate::{Error, Result};

/// Reorders the rows of a q/k weight between llama.cpp's interleaved rope order and
/// Hugging Face's half-rotation order. `to_hf` undoes llama.cpp's conversion.
pub fn permute_qk_rows(w: &Tensor, heads: usize, to_hf: bool) -> Result<Tensor> {
    let dims = w.dims().to_vec();
    let rows = dims[0];
    let rest: usize = dims[1..].iter().product();
    let hd = rows / heads;
    let (a, b) = if to_hf { (hd / 2, 2) } else { (2, hd / 2) };
    let x = w.reshape((heads, a, b, rest))?.transpose(1, 2)?.contiguous()?;
    Ok(x.reshape(dims)?)
}

/// The GGUF (llama.cpp) name of a Hugging Face weight name.
pub(crate) fn gguf_name(hf: &str) -> Option<String> {
    let map = |s: &str| -> Option<&'static str> {
        Some(match s {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        })
    };
    match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight".into()),
        "model.norm.weight" => Some("output_norm.weight".into()),
        "lm_head.weight" => Some("output.weight".into()),
        _ => {
            let rest = hf.strip_prefix("model.layers.")?;
            let (i, tail) = rest.split_once('.')?;
            Some(format!("blk.{i}.{}", map(tail)?))
        }
    }
}

/// Loads a GGUF file, dequantizing every tensor to f32. With
/// [`RopeLayout::HalfRotation`] the q/k rows are put back into Hugging Face order, so
/// adapters trained on it apply unchanged to the Hugging Face model.
pub fn load_gguf(path: &Path, layout: RopeLayout, device: &Device) -> Result<(Llama, TextTokenizer)> {
    let mut f = File::open(path).map_err(|e| Error::file(path, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::Weights(format!("{}: {e}", path.display())))?;
    let md = &content.metadata;
    let arch = md.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let (prefix, qwen) = match arch.as_str() {
        "llama" => ("llama", false),
        "qwen2" => ("qwen2", true),
        other => {
            return Err(Error::UnsupportedConfig {
                field: "general.architecture".into(),
                reason: format!("`{other}` is not llama or qwen2"),
            })
        }
    };
    let get_u = |k: &str| -> Result<usize> {
        let key = format!("{prefix}.{k}");
        md.get(&key)
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .map(|v| v as usize)
            .ok_or_else(|| Error::UnsupportedConfig { field: key, reason: "missing".into() })
    };
    let get_f = |k: &str| md.get(&format!("{prefix}.{k}")).and_then(|v| v.to_f32().ok()).map(f64::from);
    let tokens: Vec<String> = md
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().filter_map(|x| x.to_string().ok().cloned()).collect())
        .ok_or_else(|| Error::UnsupportedConfig { field: "tokenizer.ggml.tokens".into(), reason: "missing".into() })?;
    let hidden = get_u("embedding_length")?;
    let heads = get_u("attention.head_count")?;
    let kv_heads = get_u("attention.head_count_kv").unwrap_or(heads);
    let has_output = content.tensor_infos.contains_key("output.weight");
    let cfg = ModelConfig {
        model_type: if qwen { "qwen2".into() } else { "llama".into() },
        vocab_size: get_u("vocab_size").unwrap_or(tokens.len()),
        hidden_size: hidden,
        intermediate_size: get_u("feed_forward_length")?,
        num_hidden_layers: get_u("block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim: get_u("attention.key_length").unwrap_or(hidden / heads.max(1)),
        rms_norm_eps: get_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: get_f("rope.freq_base").unwrap_or(10_000.0),
        rope_scaling: match (
            md.get(&format!("{prefix}.rope.scaling.type")).and_then(|v| v.to_string().ok()),
            get_f("rope.scaling.factor"),
        ) {
            (Some(t), Some(factor)) if t == "linear" => Some(RopeScaling::Linear { factor }),
            (Some(t), _) if t != "none" => {
                return Err(Error::UnsupportedConfig {
                    field: format!("{prefix}.rope.scaling.type"),
                    reason: format!("`{t}`"),
                })
            }
            _ => None,
        },
        rope_layout: layout,
        max_position_embeddings: get_u("context_length").unwrap_or(4096),
        tie_word_embeddings: !has_output,
        attention_bias: qwen,
        sliding_window: None,
    };
    let mut get = |name: &str| -> Result<Option<Tensor>> {
        let Some(g) = gguf_name(name) else { return Ok(None) };
        if !content.tensor_infos.contains_key(&g) {
            return Ok(None);
        }
        let q = content.tensor(&mut f, &g, device).map_err(|e| Error::Weights(format!("{g}: {e}")))?;
        let mut t = q.dequantize(device)?.to_dtype(DType::F32)?;
        // llama.cpp permutes q/k (weights and Qwen2 biases) for interleaved rope.
        // Qwen2 GGUFs are converted without that permutation (NeoX-style rope).
        if !qwen && layout == RopeLayout::HalfRotation {
            if name.ends_with("q_proj.weight") {
                t = permute_qk_rows(&t, heads, true)?;
            } else if name.ends_with("k_proj.weight") {
                t = permute_qk_rows(&t, kv_heads, true)?;
            }
        }
        Ok(Some(t))
    };
    let mut model_cfg = cfg;
    if qwen {
        // Qwen2 GGUFs keep Hugging Face's q/k order: rope is half-rotation regardless.
        model_cfg.rope_layout = RopeLayout::HalfRotation;
    }
    let model = Llama::from_weights(model_cfg, &mut get)?;
    let u32_of = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let vocab = GgufVocab {
        model: md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default(),
        pre: md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_else(|| "default".into()),
        token_types: md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|x| x.to_i32().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]),
        merges: md
            .get("tokenizer.ggml.merges")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().filter_map(|x| x.to_string().ok().cloned()).collect())
            .unwrap_or_default(),
        tokens,
        bos_id: u32_of("tokenizer.ggml.bos_token_id"),
        eos_id: u32_of("tokenizer.ggml.eos_token_id"),
        pad_id: u32_of("tokenizer.ggml.padding_token_id"),
        chat_template: md.get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned(),
    };
    let tokenizer = TextTokenizer::from_gguf(vocab)?;
    Ok((model, tokenizer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qk_permutation_round_trips() {
        let w = Tensor::arange(0f32, 48., &Device::Cpu).unwrap().reshape((12, 4)).unwrap();
        let g = permute_qk_rows(&w, 2, false).unwrap();
        assert_ne!(g.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        // Head 0 rows [0..6) in HF order are (first half 0,1,2 | second half 3,4,5);
        // interleaved order pairs them: 0,3,1,4,2,5.
        let firsts: Vec<f32> = g.get_on_dim(1, 0).unwrap().to_vec1().unwrap();
        assert_eq!(&firsts[..6], &[0., 12., 4., 16., 8., 20.]);
        let back = permute_qk_rows(&g, 2, true).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }
}
