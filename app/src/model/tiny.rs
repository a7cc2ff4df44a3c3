//! Models made in code: `tiny`, a randomly initialised Llama (2 blocks, width 128, byte
//! vocabulary) for tests and smoke runs, and `random:<shape>`, random weights in the exact
//! shape of a real model (the default SmolLM2-135M, a 1B Llama) for benchmarks and GPU
//! checks on machines the real weights cannot reach. Never the default.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::llama::Llama;
use crate::model::lora::Target;
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

/// The named shapes `random:<shape>` accepts.
pub const SHAPES: [&str; 2] = ["smollm2-135m", "llama-1b"];

/// The architecture of a named shape: `smollm2-135m` is the default model's own
/// (SmolLM2-135M-Instruct, 30 blocks of width 576, GQA 9/3, vocabulary 49,152; a test
/// checks it against the GGUF), `llama-1b` Llama 3.2 1B's (16 blocks of width 2048, GQA
/// 32/8, vocabulary 128,256, 1.24 B parameters).
pub fn shape_config(name: &str) -> Option<ModelConfig> {
    let base = ModelConfig {
        model_type: "llama".into(),
        rms_norm_eps: 1e-5,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfRotation,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
        ..tiny_config()
    };
    match name {
        "smollm2-135m" => Some(ModelConfig {
            // As the GGUF stores it: 1e-5 in f32.
            rms_norm_eps: f64::from(1e-5f32),
            vocab_size: 49_152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rope_theta: 100_000.0,
            max_position_embeddings: 8192,
            ..base
        }),
        "llama-1b" => Some(ModelConfig {
            vocab_size: 128_256,
            hidden_size: 2048,
            intermediate_size: 8192,
            num_hidden_layers: 16,
            num_attention_heads: 32,
            num_key_value_heads: 8,
            head_dim: 64,
            rope_theta: 500_000.0,
            max_position_embeddings: 131_072,
            ..base
        }),
        _ => None,
    }
}

/// Random weights for `cfg` in `dtype` on `device`, made one tensor at a time (a 1B model
/// never exists twice in host memory): uniform with the standard deviations of
/// [`random_model`] (0.02; embeddings 0.15; norms at 1), seeded per tensor, so that the
/// same seed gives the same weights on every device. Fast enough for billions of weights.
pub fn random_shaped_model(cfg: ModelConfig, seed: u64, device: &Device, dtype: DType) -> Result<Llama> {
    let shapes: BTreeMap<String, (usize, Vec<usize>)> =
        weight_shapes(&cfg).into_iter().enumerate().map(|(i, (name, shape))| (name, (i, shape))).collect();
    Llama::from_weights(cfg, |name| {
        let Some((i, shape)) = shapes.get(name) else { return Ok(None) };
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, device)?
        } else {
            let std = if name == "model.embed_tokens.weight" { 0.15 } else { 0.02 };
            let mut r = rng::stream(seed, streams::TINY_WEIGHTS, *i as u64 + 1);
            let n = shape.iter().product();
            // A uniform law on [-b, b] has standard deviation b / sqrt(3).
            Tensor::from_vec(rng::uniform(&mut r, n, std * 3f32.sqrt()), shape.as_slice(), device)?
        };
        Ok(Some(t.to_dtype(dtype)?))
    })
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

    #[test]
    fn named_shapes_have_the_parameter_counts_of_their_models() {
        let count = |n: &str| shape_config(n).unwrap().num_parameters();
        assert_eq!(count("smollm2-135m"), 134_515_008);
        let b = count("llama-1b");
        assert!((1_235_000_000..1_236_000_000).contains(&b), "{b}");
        assert!(shape_config("gpt-5").is_none());
    }

    #[test]
    fn shaped_random_weights_are_seeded_and_have_the_asked_spread() {
        let cfg = ModelConfig { num_hidden_layers: 1, ..tiny_config() };
        let a = random_shaped_model(cfg.clone(), 3, &Device::Cpu, DType::F32).unwrap();
        let b = random_shaped_model(cfg.clone(), 3, &Device::Cpu, DType::F32).unwrap();
        let c = random_shaped_model(cfg, 4, &Device::Cpu, DType::BF16).unwrap();
        let w =
            |m: &Llama| m.blocks[0].linear(Target::Gate).weight.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        let (wa, wc) = (w(&a).to_vec1::<f32>().unwrap(), w(&c).to_vec1::<f32>().unwrap());
        assert_eq!(wa, w(&b).to_vec1::<f32>().unwrap());
        assert_ne!(wa, wc);
        assert_eq!(c.dtype(), DType::BF16);
        let std = (wa.iter().map(|x| x * x).sum::<f32>() / wa.len() as f32).sqrt();
        assert!((std - 0.02).abs() < 0.002, "{std}");
    }
}
