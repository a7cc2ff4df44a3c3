//! `tiny`: a randomly initialised Llama (2 blocks, width 128, byte vocabulary) made in
//! code, for tests and smoke runs. Never the default.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::adapter::lora::Target;
use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::llama::Llama;
use crate::model::tokenizer::TextTokenizer;
use crate::rng::{self, streams};
use crate::Result;

/// The tiny test model's architecture: 2 blocks, width 128, GQA 4/2, byte vocabulary.
pub fn tiny_config() -> ModelConfig {
    ModelConfig {
        model_type: "llama".into(),
        vocab_size: 259,
        hidden_size: 128,
        intermediate_size: 256,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 32,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfRotation,
        max_position_embeddings: 2048,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
    }
}

/// Random weights for `cfg` (normal, std 0.02; embeddings 0.15; norms at 1), seeded.
///
/// The embeddings are wider than the usual 0.02 because the tiny model ties its LM head
/// to them: with 0.02 the largest reachable logit is about 2.6, so a frozen tiny base
/// could never become confident whatever its adapters learn.
pub fn random_model(cfg: ModelConfig, seed: u64, device: &Device) -> Result<Llama> {
    let mut r = rng::stream(seed, streams::TINY_WEIGHTS, 0);
    let names = weight_shapes(&cfg);
    let mut weights = BTreeMap::new();
    for (name, shape) in names {
        let n: usize = shape.iter().product();
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else if name == "model.embed_tokens.weight" {
            Tensor::from_vec(rng::normal(&mut r, n, 0.15), shape.as_slice(), device)?
        } else {
            Tensor::from_vec(rng::normal(&mut r, n, 0.02), shape.as_slice(), device)?
        };
        weights.insert(name, t);
    }
    Llama::from_weights(cfg, |n| Ok(weights.remove(n)))
}

/// The tiny model and its byte-level tokenizer.
pub fn tiny_model(seed: u64, device: &Device) -> Result<(Llama, TextTokenizer)> {
    Ok((random_model(tiny_config(), seed, device)?, TextTokenizer::byte_level()?))
}

/// Every weight's Hugging Face name and shape for `cfg`, in a fixed order.
pub fn weight_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, cfg.hidden_size])];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        out.push((format!("{p}.input_layernorm.weight"), vec![cfg.hidden_size]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![cfg.hidden_size]));
        for t in Target::ALL {
            let (fin, fout) = t.shape(cfg);
            out.push((format!("{p}.{}.weight", t.block_path()), vec![fout, fin]));
            if cfg.attention_bias && matches!(t, Target::Q | Target::K | Target::V) {
                out.push((format!("{p}.{}.bias", t.block_path()), vec![fout]));
            }
        }
    }
    out.push(("model.norm.weight".into(), vec![cfg.hidden_size]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".into(), vec![cfg.vocab_size, cfg.hidden_size]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_model_is_small_and_seeded() {
        let (a, _) = tiny_model(0, &Device::Cpu).unwrap();
        let (b, _) = tiny_model(0, &Device::Cpu).unwrap();
        let n = a.cfg.num_parameters();
        assert!((100_000..1_000_000).contains(&n), "{n}");
        assert_eq!(a.embed_tokens.to_vec2::<f32>().unwrap(), b.embed_tokens.to_vec2::<f32>().unwrap());
    }
}
