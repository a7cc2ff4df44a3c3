use std::collections::{BTreeMap, BTreeSet};

use candle_core::{Device, Tensor};
use multitune::adapter::peft::{load_adapter, save_adapter, CONFIG_FILE, WEIGHTS_FILE};
use multitune::model::config::RopeLayout;
use multitune::model::lora::{LoraAdapter, LoraConfig, Target};
use multitune::model::{max_abs_diff, Forward, Llama};
use multitune::model::{permute_qk_rows, tiny_model};
use multitune::persist::read_safetensors;
use multitune::rng;

use crate::util::default_model;

fn randomize(ad: &LoraAdapter, seed: u64) {
    let mut r = rng::stream(seed, 5, 0);
    for m in &ad.layers {
        for p in m.values() {
            let t = Tensor::from_vec(rng::normal(&mut r, p.b.elem_count(), 0.02), p.b.shape(), &Device::Cpu).unwrap();
            p.b.set(&t).unwrap();
        }
    }
}

/// The keys PEFT 0.13+ writes into adapter_config.json for a LoRA adapter.
const PEFT_KEYS: [&str; 24] = [
    "alpha_pattern",
    "auto_mapping",
    "base_model_name_or_path",
    "bias",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "layer_replication",
    "layers_pattern",
    "layers_to_transform",
    "loftq_config",
    "lora_alpha",
    "lora_dropout",
    "megatron_config",
    "megatron_core",
    "modules_to_save",
    "peft_type",
    "r",
    "rank_pattern",
    "revision",
    "target_modules",
    "task_type",
    "use_dora",
    "use_rslora",
];

#[test]
fn export_has_peft_names_shapes_and_config() {
    let m = default_model();
    let ad = LoraAdapter::new(&m.model.cfg, LoraConfig::default(), 0, &Device::Cpu).unwrap();
    randomize(&ad, 1);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &ad, &m.model.cfg, &m.base_name).unwrap();
    let (tensors, meta) = read_safetensors(&dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
    assert_eq!(meta.get("format").map(String::as_str), Some("pt"));
    assert_eq!(tensors.len(), 30 * 7 * 2);
    let shapes: BTreeMap<&str, (usize, usize)> = [
        ("self_attn.q_proj", (576, 576)),
        ("self_attn.k_proj", (576, 192)),
        ("self_attn.v_proj", (576, 192)),
        ("self_attn.o_proj", (576, 576)),
        ("mlp.gate_proj", (576, 1536)),
        ("mlp.up_proj", (576, 1536)),
        ("mlp.down_proj", (1536, 576)),
    ]
    .into();
    for layer in 0..30 {
        for (module, (fin, fout)) in &shapes {
            let a = &tensors[&format!("base_model.model.model.layers.{layer}.{module}.lora_A.weight")];
            let b = &tensors[&format!("base_model.model.model.layers.{layer}.{module}.lora_B.weight")];
            assert_eq!(a.dims(), [8, *fin]);
            assert_eq!(b.dims(), [*fout, 8]);
            assert_eq!(a.dtype(), candle_core::DType::F32);
        }
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
    let keys: BTreeSet<&str> = cfg.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, PEFT_KEYS.into_iter().collect());
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    assert_eq!(cfg["base_model_name_or_path"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    let targets: BTreeSet<&str> =
        cfg["target_modules"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(
        targets,
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"].into_iter().collect()
    );

    // Round trip: the loaded adapter is bit-identical and gives identical outputs.
    let back = load_adapter(dir.path(), &m.model.cfg, &Device::Cpu).unwrap();
    for (x, y) in ad.vars().iter().zip(back.vars()) {
        assert_eq!(max_abs_diff(x.as_tensor(), y.as_tensor()).unwrap(), 0.0);
    }
    let ids = m.tokenizer.encode("Tell me a story").unwrap();
    let (t, mask) = m.model.pad_batch(&[ids], 0, false).unwrap();
    let a = m.model.forward(&t, &mask, &Forward::eval(Some(&ad))).unwrap();
    let b = m.model.forward(&t, &mask, &Forward::eval(Some(&back))).unwrap();
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.0);
}

/// The tiny model rebuilt in GGUF's interleaved layout (q/k rows permuted).
fn interleaved_twin(model: &Llama) -> Llama {
    let cfg = &model.cfg;
    let mut w: BTreeMap<String, Tensor> = model
        .named_weights()
        .into_iter()
        .map(|(n, t)| {
            let t = if n.ends_with("q_proj.weight") {
                permute_qk_rows(&t, cfg.num_attention_heads, false).unwrap()
            } else if n.ends_with("k_proj.weight") {
                permute_qk_rows(&t, cfg.num_key_value_heads, false).unwrap()
            } else {
                t
            };
            (n, t)
        })
        .collect();
    let mut c = cfg.clone();
    c.rope_layout = RopeLayout::Interleaved;
    Llama::from_weights(c, |n| Ok(w.remove(n))).unwrap()
}

#[test]
fn adapters_of_interleaved_models_export_in_hugging_face_row_order() {
    let (hf, _) = tiny_model(0, &Device::Cpu).unwrap();
    let twin = interleaved_twin(&hf);
    let ids = Tensor::new(&[[5u32, 80, 13, 200, 7, 9]], &Device::Cpu).unwrap();
    let mask = vec![vec![1u8; 6]];
    let base_d = max_abs_diff(
        &hf.forward(&ids, &mask, &Forward::eval(None)).unwrap(),
        &twin.forward(&ids, &mask, &Forward::eval(None)).unwrap(),
    )
    .unwrap();
    assert!(base_d < 1e-5, "twin differs by {base_d}");
    let ad = LoraAdapter::new(
        &twin.cfg,
        LoraConfig { targets: vec![Target::Q, Target::K, Target::V], ..Default::default() },
        3,
        &Device::Cpu,
    )
    .unwrap();
    randomize(&ad, 4);
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &ad, &twin.cfg, "tiny").unwrap();
    let on_hf = load_adapter(dir.path(), &hf.cfg, &Device::Cpu).unwrap();
    let want = twin.forward(&ids, &mask, &Forward::eval(Some(&ad))).unwrap();
    let got = hf.forward(&ids, &mask, &Forward::eval(Some(&on_hf))).unwrap();
    assert!(max_abs_diff(&want, &hf.forward(&ids, &mask, &Forward::eval(None)).unwrap()).unwrap() > 1e-4);
    let d = max_abs_diff(&want, &got).unwrap();
    assert!(d < 1e-5, "exported adapter differs by {d} on the Hugging Face layout");
}

#[test]
fn malformed_adapters_are_refused_with_the_reason() {
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 0, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_adapter(dir.path(), &ad, &model.cfg, "tiny").unwrap();
    let cfg_path = dir.path().join(CONFIG_FILE);
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&original).unwrap();
        f(&mut v);
        std::fs::write(&cfg_path, v.to_string()).unwrap();
        load_adapter(dir.path(), &model.cfg, &Device::Cpu).unwrap_err().to_string()
    };
    // DoRA without its magnitudes; a PiSSA start instead of its conversion.
    let e = edit(&|v| v["use_dora"] = true.into());
    assert!(
        e.contains("missing tensor `base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector`"),
        "{e}"
    );
    assert!(edit(&|v| v["init_lora_weights"] = "pissa".into()).contains("`init_lora_weights` is a PiSSA start"));
    assert!(edit(&|v| v["r"] = 4.into()).contains("has shape [8, 128], the model needs [4, 128]"));
    assert!(edit(&|v| v["target_modules"] = serde_json::json!(["q_proj", "lm_head"])).contains("`lm_head`"));
    assert!(edit(&|v| v["peft_type"] = "IA3".into()).contains("`peft_type`"));
    std::fs::write(&cfg_path, &original).unwrap();
    std::fs::write(dir.path().join(WEIGHTS_FILE), b"not safetensors").unwrap();
    let e = load_adapter(dir.path(), &model.cfg, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("not a safetensors file"), "{e}");
}

/// A DoRA adapter saves with `use_dora` and every layer's `lora_magnitude_vector` and
/// loads back to the same logits; a PiSSA adapter saves as the plain LoRA of rank 2r on
/// the original base (PEFT's conversion), which loads back to the same logits.
#[test]
fn dora_and_pissa_adapters_round_trip_in_peft_layout() {
    use multitune_api::AdapterMethod;
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[3u32, 77, 120, 9, 200, 45]], &Device::Cpu).unwrap();
    let mask = vec![vec![1u8; 6]];
    for method in [AdapterMethod::Dora, AdapterMethod::Pissa] {
        let cfg = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() }.with_method(method);
        let ad = LoraAdapter::for_model(&model, cfg, 1).unwrap();
        randomize(&ad, 2);
        let before = model.forward(&ids, &mask, &Forward::eval(Some(&ad))).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_adapter(dir.path(), &ad, &model.cfg, "tiny").unwrap();
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap()).unwrap();
        let (tensors, _) = read_safetensors(&dir.path().join(WEIGHTS_FILE), &Device::Cpu).unwrap();
        let magnitude = "base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector";
        match method {
            AdapterMethod::Dora => {
                assert_eq!(config["use_dora"], true);
                assert_eq!(tensors[magnitude].dims(), [model.cfg.intermediate_size]);
            }
            _ => {
                assert_eq!(
                    (config["use_dora"].clone(), config["r"].clone(), config["lora_alpha"].clone()),
                    (false.into(), 8.into(), 16.0.into())
                );
                assert!(!tensors.contains_key(magnitude));
            }
        }
        let back = load_adapter(dir.path(), &model.cfg, &Device::Cpu).unwrap();
        let after = model.forward(&ids, &mask, &Forward::eval(Some(&back))).unwrap();
        let d = max_abs_diff(&before, &after).unwrap();
        assert!(d < 1e-4, "{method:?}: logits differ by {d} after the round trip");
    }
}
