//! GGUF export against references: the exported f16 model read back by our GGUF loader
//! gives the logits of the merged Hugging Face folder, and read by candle-transformers'
//! `quantized_llama` (llama.cpp's conventions: interleaved rope on permuted q/k) the
//! logits of the merged model; q8_0 stays close; the LoRA GGUF holds the adapter's A and
//! B (B's q/k rows in llama.cpp's order) with llama.cpp's scale; the Modelfiles name
//! what they should.

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use multitune::data::render_prompt;
use multitune::model::config::RopeLayout;
use multitune::model::gguf_write::{export, GgufOptions, GgufType};
use multitune::model::lora::{LoraAdapter, LoraConfig};
use multitune::model::{last_position, max_abs_diff, Forward, Llama};
use multitune::model::{load_gguf, load_hf_dir, permute_qk_rows, save_hf_dir};
use multitune::rng;

use crate::util::{default_model, models_dir};

fn last_logits(model: &Llama, ids: &[u32]) -> Tensor {
    let (t, m) = model.pad_batch(&[ids.to_vec()], 0, false).unwrap();
    let h = model.hidden_states(&t, &m, &Forward::eval(None), None).unwrap();
    model.logits(&last_position(&h).unwrap()).unwrap().squeeze(0).unwrap()
}

/// An adapter whose update moves the logits well past f16 rounding.
fn adapter() -> LoraAdapter {
    let m = default_model();
    let ad = LoraAdapter::new(&m.model.cfg, LoraConfig::default(), 3, &Device::Cpu).unwrap();
    let mut r = rng::stream(7, 5, 0);
    for layer in &ad.layers {
        for p in layer.values() {
            let t = Tensor::from_vec(rng::normal(&mut r, p.b.elem_count(), 0.03), p.b.shape(), &Device::Cpu).unwrap();
            p.b.set(&t).unwrap();
        }
    }
    ad
}

#[test]
fn gguf_exports_read_back_with_the_merged_models_logits() {
    // SAFETY (edition 2021: set_var is safe): read by candle when the reference model
    // is built below; the same value the reference test sets.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let m = default_model();
    let ad = adapter();
    let base = multitune::model::fetch::default_model_path(&models_dir());
    let dir = tempfile::tempdir().unwrap();
    let opts = |ty| GgufOptions { ty, name: "test".into(), system: Some("Answer briefly.".into()) };
    let f16 = export(&m.model, &m.tokenizer, &ad, &base, &dir.path().join("f16"), &opts(GgufType::F16)).unwrap();
    let q8 = export(&m.model, &m.tokenizer, &ad, &base, &dir.path().join("q8"), &opts(GgufType::Q8_0)).unwrap();

    // The merged Hugging Face folder, as `export-merged` writes it.
    let merged = m.model.with_adapter_merged(&ad, 1.0).unwrap();
    save_hf_dir(&merged, &m.tokenizer, &dir.path().join("hf")).unwrap();
    let (hf, _) = load_hf_dir(&dir.path().join("hf"), &Device::Cpu).unwrap();
    let (g16, tok) = load_gguf(&f16.model, RopeLayout::HalfRotation, &Device::Cpu).unwrap();
    let (g8, _) = load_gguf(&q8.model, RopeLayout::HalfRotation, &Device::Cpu).unwrap();
    let mut f = std::fs::File::open(&f16.model).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut llamacpp = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap();

    let prompts = ["What is the capital of France?", "Classify the sentiment: I loved every minute of it."];
    let (mut worst16, mut worst_ref, mut worst8, mut moved) = (0f32, 0f32, 0f32, f32::INFINITY);
    for p in prompts {
        let text = render_prompt(&m.tokenizer, Some("Answer briefly."), p).unwrap();
        // The exported tokenizer and chat template are the base's.
        assert_eq!(render_prompt(&tok, Some("Answer briefly."), p).unwrap(), text);
        let ids = m.tokenizer.encode(&text).unwrap();
        assert_eq!(tok.encode(&text).unwrap(), ids);
        let want = last_logits(&hf, &ids);
        worst16 = worst16.max(max_abs_diff(&last_logits(&g16, &ids), &want).unwrap());
        worst8 = worst8.max(max_abs_diff(&last_logits(&g8, &ids), &want).unwrap());
        llamacpp.clear_kv_cache();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs = llamacpp.forward(&input, 0).unwrap().squeeze(0).unwrap();
        worst_ref = worst_ref.max(max_abs_diff(&theirs, &last_logits(&merged, &ids)).unwrap());
        // The adapter matters: the base model's logits are far from the merged ones.
        moved = moved.min(max_abs_diff(&last_logits(&m.model, &ids), &want).unwrap());
    }
    eprintln!("max |Δlogit|: f16 {worst16}, f16 by quantized_llama {worst_ref}, q8_0 {worst8}; the adapter moves them {moved}");
    assert!(moved > 20.0 * worst16, "the adapter barely changes the logits ({moved}): the test could not tell");
    assert!(worst16 < 0.1 && worst_ref < 0.1, "f16: ours {worst16}, quantized_llama {worst_ref}");
    assert!(worst8 < 1.5, "q8_0: {worst8}");

    // The LoRA GGUF: A as is, B with q/k rows in llama.cpp's order, alpha / r = the scale.
    let mut f = std::fs::File::open(f16.adapter.as_ref().unwrap()).unwrap();
    let lora = gguf_file::Content::read(&mut f).unwrap();
    let md = |k: &str| lora.metadata.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(md("general.type").to_string().unwrap(), "adapter");
    assert_eq!(md("adapter.type").to_string().unwrap(), "lora");
    assert_eq!(md("general.architecture").to_string().unwrap(), "llama");
    let alpha = f64::from(md("adapter.lora.alpha").to_f32().unwrap());
    assert!((alpha / ad.config.rank as f64 - ad.scale()).abs() < 1e-6);
    let cfg = &m.model.cfg;
    let mut pairs = 0;
    for (i, layer) in ad.layers.iter().enumerate() {
        for (t, p) in layer {
            let g = match t.module_name() {
                "q_proj" => "attn_q",
                "k_proj" => "attn_k",
                "v_proj" => "attn_v",
                "o_proj" => "attn_output",
                "gate_proj" => "ffn_gate",
                "up_proj" => "ffn_up",
                _ => "ffn_down",
            };
            let mut read = |s: &str| {
                let name = format!("blk.{i}.{g}.weight.{s}");
                lora.tensor(&mut f, &name, &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap()
            };
            assert_eq!(max_abs_diff(&read("lora_a"), p.a.as_tensor()).unwrap(), 0.0);
            let heads = match g {
                "attn_q" => Some(cfg.num_attention_heads),
                "attn_k" => Some(cfg.num_key_value_heads),
                _ => None,
            };
            let b = read("lora_b");
            let b = heads.map_or(b.clone(), |h| permute_qk_rows(&b, h, true).unwrap());
            assert_eq!(max_abs_diff(&b, p.b.as_tensor()).unwrap(), 0.0, "blk.{i}.{g}");
            pairs += 1;
        }
    }
    assert_eq!(pairs, lora.tensor_infos.len() / 2);

    // The Modelfiles: the merged model's, and the base + adapter one.
    let mf = std::fs::read_to_string(&f16.modelfiles[0]).unwrap();
    assert!(mf.contains("FROM ./model-f16.gguf") && mf.contains("<|im_start|>{{ .Role }}"), "{mf}");
    assert!(mf.contains("PARAMETER stop \"<|im_end|>\"") && mf.contains("SYSTEM \"\"\"Answer briefly.\"\"\""), "{mf}");
    let ma = std::fs::read_to_string(&f16.modelfiles[1]).unwrap();
    assert!(ma.contains("FROM ./SmolLM2-135M-Instruct.Q4_1.gguf\nADAPTER ./adapter.gguf"), "{ma}");
}
