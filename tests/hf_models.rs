use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{llama, qwen2};
use multitune::model::config::{Llama3RopeScaling, ModelConfig, RopeLayout, RopeScaling};
use multitune::model::tokenizer::TextTokenizer;
use multitune::model::{last_position, max_abs_diff, Forward, Llama};
use multitune::model::{load_hf_dir, random_model, save_hf_dir};

fn tiny(model_type: &str) -> ModelConfig {
    ModelConfig {
        model_type: model_type.into(),
        vocab_size: 259,
        hidden_size: 64,
        intermediate_size: 96,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        rms_norm_eps: 1e-6,
        rope_theta: 500_000.0,
        rope_scaling: None,
        rope_layout: RopeLayout::HalfRotation,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
    }
}

/// Writes a random model as a Hugging Face folder and loads it back with our loader.
fn round_trip(cfg: ModelConfig) -> (tempfile::TempDir, Llama) {
    let model = random_model(cfg, 11, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&model, &TextTokenizer::byte_level().unwrap(), dir.path()).unwrap();
    let (back, _) = load_hf_dir(dir.path(), &Device::Cpu).unwrap();
    (dir, back)
}

fn ours_last(model: &Llama, ids: &[u32]) -> Tensor {
    let (t, m) = model.pad_batch(&[ids.to_vec()], 0, false).unwrap();
    let h = model.hidden_states(&t, &m, &Forward::eval(None), None).unwrap();
    model.logits(&last_position(&h).unwrap()).unwrap().squeeze(0).unwrap()
}

fn ids() -> Vec<u32> {
    (0..40u32).map(|i| (i * 37 + 11) % 259).collect()
}

/// Llama 3.x rope scaling against candle-transformers' `llama` on the same weights.
#[test]
fn llama3_rope_scaling_matches_candle_transformers() {
    let mut cfg = tiny("llama");
    cfg.rope_scaling = Some(RopeScaling::Llama3(Llama3RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 16,
    }));
    let (dir, ours) = round_trip(cfg);
    assert!(matches!(ours.cfg.rope_scaling, Some(RopeScaling::Llama3(_))));
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let theirs_cfg: llama::LlamaConfig = serde_json::from_str(&text).unwrap();
    let theirs_cfg = theirs_cfg.into_config(false);
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.path().join("model.safetensors")], DType::F32, &Device::Cpu)
    }
    .unwrap();
    let theirs = llama::Llama::load(vb, &theirs_cfg).unwrap();
    let mut cache = llama::Cache::new(false, DType::F32, &theirs_cfg, &Device::Cpu).unwrap();
    let input = Tensor::new(ids().as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want = theirs.forward(&input, 0, &mut cache).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&ours_last(&ours, &ids()), &want).unwrap();
    assert!(d < 1e-4, "max |Δlogit| {d}");
    // The scaling matters: without it the logits differ.
    let mut plain = ours.clone();
    plain.cfg.rope_scaling = None;
    let unscaled = Llama::from_weights(plain.cfg.clone(), |n| {
        Ok(ours.named_weights().into_iter().find(|(k, _)| k == n).map(|(_, t)| t))
    })
    .unwrap();
    assert!(max_abs_diff(&ours_last(&unscaled, &ids()), &want).unwrap() > 1e-3);
}

/// Qwen2 (q/k/v biases, untied head) against candle-transformers' `qwen2`.
#[test]
fn qwen2_biases_match_candle_transformers() {
    let mut cfg = tiny("qwen2");
    cfg.attention_bias = true;
    cfg.tie_word_embeddings = false;
    cfg.rope_theta = 1_000_000.0;
    let (dir, ours) = round_trip(cfg.clone());
    assert!(ours.blocks[0].linears[0].bias.is_some());
    let theirs_cfg = qwen2::Config {
        vocab_size: cfg.vocab_size,
        hidden_size: cfg.hidden_size,
        intermediate_size: cfg.intermediate_size,
        num_hidden_layers: cfg.num_hidden_layers,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        max_position_embeddings: cfg.max_position_embeddings,
        sliding_window: 4096,
        max_window_layers: 0,
        tie_word_embeddings: false,
        rope_theta: cfg.rope_theta,
        rms_norm_eps: cfg.rms_norm_eps,
        use_sliding_window: false,
        hidden_act: candle_nn::Activation::Silu,
    };
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.path().join("model.safetensors")], DType::F32, &Device::Cpu)
    }
    .unwrap();
    let mut theirs = qwen2::ModelForCausalLM::new(&theirs_cfg, vb).unwrap();
    let input = Tensor::new(ids().as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let want = theirs.forward(&input, 0).unwrap().squeeze(0).unwrap().squeeze(0).unwrap();
    let d = max_abs_diff(&ours_last(&ours, &ids()), &want).unwrap();
    assert!(d < 1e-4, "max |Δlogit| {d}");
}

/// A sharded checkpoint (`model.safetensors.index.json`) loads like a single file.
#[test]
fn sharded_safetensors_load() {
    let (dir, single) = round_trip(tiny("llama"));
    let (tensors, _) =
        multitune::persist::read_safetensors(&dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let names: Vec<String> = tensors.keys().cloned().collect();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let ts: Vec<(String, Tensor)> = part.iter().map(|n| (n.clone(), tensors[n].clone())).collect();
        multitune::persist::write_safetensors(&dir.path().join(file), &ts, None).unwrap();
        for n in part {
            map.insert(n.clone(), file.into());
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let (sharded, _) = load_hf_dir(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(max_abs_diff(&ours_last(&sharded, &ids()), &ours_last(&single, &ids())).unwrap(), 0.0);
}

/// `random:smollm2-135m` (what the GPU check runs where the default model cannot travel)
/// has exactly the default model's architecture, and loads through the same path.
#[test]
fn the_random_default_shape_is_the_default_models_architecture() {
    use multitune::model::{load_model, ModelSource};
    let real = &crate::util::default_model().model.cfg;
    let source = ModelSource::parse("random:smollm2-135m").unwrap();
    let shaped = multitune::model::tiny::shape_config("smollm2-135m").unwrap();
    assert_eq!(&shaped, real);
    let m = load_model(&source, &crate::util::models_dir(), &Device::Cpu, false).unwrap();
    assert_eq!(&m.model.cfg, real);
    let err = ModelSource::parse("random:gpt-5").unwrap_err().to_string();
    assert!(err.contains("random:llama-1b"), "{err}");
}
