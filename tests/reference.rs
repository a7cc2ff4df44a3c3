use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use multitune::data::render_prompt;
use multitune::eval::generate::{generate_text, GenerateConfig};
use multitune::model::config::RopeLayout;
use multitune::model::{last_position, max_abs_diff, Forward, Llama};
use multitune::model::{load_gguf, load_hf_dir, save_hf_dir};

use crate::util::{default_model, models_dir};

fn last_logits(model: &Llama, ids: &[u32]) -> Tensor {
    let (t, m) = model.pad_batch(&[ids.to_vec()], 0, false).unwrap();
    let h = model.hidden_states(&t, &m, &Forward::eval(None), None).unwrap();
    model.logits(&last_position(&h).unwrap()).unwrap().squeeze(0).unwrap()
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar::<u32>().unwrap()
}

fn prompts() -> Vec<Vec<u32>> {
    let m = default_model();
    let tok = &m.tokenizer;
    vec![
        tok.encode(&render_prompt(tok, None, "What is the capital of France?").unwrap()).unwrap(),
        tok.encode("The quick brown fox jumps over the lazy dog. Then the").unwrap(),
        tok.encode("def fibonacci(n):\n    ").unwrap(),
    ]
}

/// Our decoder against candle-transformers' `quantized_llama` on the same GGUF, both in
/// f32 from the same dequantized weights (CANDLE_DEQUANTIZE_ALL=1: without it candle
/// quantizes activations to 8 bits and its greedy output drifts). Measured here: max
/// |Δlogit| 5.3e-5 over the full vocabulary, identical greedy continuations.
#[test]
fn logits_match_candle_transformers_quantized_llama() {
    // SAFETY (edition 2021: set_var is safe): read lazily, per thread, by candle when the
    // reference model is built below in this thread.
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let ours = default_model();
    let path = multitune::model::fetch::default_model_path(&models_dir());
    let mut f = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = ModelWeights::from_gguf(content, &mut f, &Device::Cpu).unwrap();
    let mut worst = 0f32;
    for ids in prompts() {
        reference.clear_kv_cache();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let theirs = reference.forward(&input, 0).unwrap().squeeze(0).unwrap();
        let mine = last_logits(&ours.model, &ids);
        let d = max_abs_diff(&mine, &theirs).unwrap();
        worst = worst.max(d);
        assert!(d < 5e-4, "max |Δlogit| {d} for prompt {ids:?}");
        // Greedy continuations of 12 tokens agree token for token.
        let (mut a, mut b) = (ids.clone(), argmax(&theirs));
        let mut cont_theirs = vec![b];
        for pos in ids.len()..ids.len() + 11 {
            let x = Tensor::new(&[b], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            b = argmax(&reference.forward(&x, pos).unwrap().squeeze(0).unwrap());
            cont_theirs.push(b);
        }
        let mut cont_mine = Vec::new();
        for _ in 0..12 {
            let next = argmax(&last_logits(&ours.model, &a));
            cont_mine.push(next);
            a.push(next);
        }
        assert_eq!(cont_mine, cont_theirs);
    }
    eprintln!("max |Δlogit| against quantized_llama (f32): {worst:e}");
}

#[test]
fn interleaved_rope_layout_gives_the_same_logits() {
    let path = multitune::model::fetch::default_model_path(&models_dir());
    let (interleaved, _) = load_gguf(&path, RopeLayout::Interleaved, &Device::Cpu).unwrap();
    let ours = default_model();
    assert_eq!(ours.model.cfg.rope_layout, RopeLayout::HalfRotation);
    let ids = &prompts()[0];
    let d = max_abs_diff(&last_logits(&interleaved, ids), &last_logits(&ours.model, ids)).unwrap();
    assert!(d < 1e-3, "layouts disagree by {d}");
}

/// The default model answers through its own chat template (default system prompt
/// included) as it does in the reference implementation.
#[test]
fn default_model_answers_the_france_question() {
    let m = default_model();
    let prompt = render_prompt(&m.tokenizer, None, "What is the capital of France?").unwrap();
    assert!(prompt.starts_with(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    ));
    let cfg = GenerateConfig { max_new_tokens: 24, ..Default::default() };
    let out =
        generate_text(&m.model, &m.tokenizer, None, None, "What is the capital of France?", &cfg, &mut |_| {}).unwrap();
    assert_eq!(out, "The capital of France is Paris.");
}

#[test]
fn tokenizer_from_gguf_metadata_behaves_like_smollm2s() {
    let tok = &default_model().tokenizer;
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1]);
    assert_eq!(tok.encode("<|im_end|>").unwrap(), vec![2]);
    assert!(tok.eos_ids.contains(&2));
    // SmolLM2 splits digits one by one.
    let ids = tok.encode("2024").unwrap();
    assert_eq!(ids.len(), 4);
    let text = "Hello, world! Ünïcödé and  spaces\nnew line 12345";
    assert_eq!(tok.decode(&tok.encode(text).unwrap(), false).unwrap(), text);
    // A common word is one token with its leading space.
    assert_eq!(tok.encode(" the").unwrap().len(), 1);
}

/// The Hugging Face folder path: write the default model as config.json +
/// model.safetensors + tokenizer.json, load it back, and get the same logits.
#[test]
fn hugging_face_folder_round_trip() {
    let m = default_model();
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&m.model, &m.tokenizer, dir.path()).unwrap();
    let (mut back, tok) = load_hf_dir(dir.path(), &Device::Cpu).unwrap();
    // The same weights give the same bits on the same matrix engine: a model loaded by
    // name has this machine's engines chosen for it (`load_model`), a folder read directly
    // the built-in one, and two engines round differently.
    back.products = m.model.products;
    assert_eq!(back.cfg.num_hidden_layers, 30);
    assert_eq!(back.cfg.num_key_value_heads, 3);
    assert!(back.cfg.tie_word_embeddings);
    let ids = &prompts()[1];
    assert_eq!(max_abs_diff(&last_logits(&back, ids), &last_logits(&m.model, ids)).unwrap(), 0.0);
    let text = render_prompt(&tok, None, "Hi there").unwrap();
    assert_eq!(text, render_prompt(&m.tokenizer, None, "Hi there").unwrap());
    assert_eq!(tok.encode(&text).unwrap(), m.tokenizer.encode(&text).unwrap());
    assert_eq!(tok.eos_ids, m.tokenizer.eos_ids);
    // A config we cannot run is refused naming the field.
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_act"] = "gelu_new".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = load_hf_dir(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("`hidden_act`"), "{err}");
}
