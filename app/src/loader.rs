//! Finding and loading models: the default (SmolLM2-135M-Instruct GGUF), any GGUF file,
//! Hugging Face folders (`config.json` + safetensors + `tokenizer.json`), and `tiny`, a
//! random Llama made in code for tests.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

use crate::config::{HfConfig, ModelConfig, RopeLayout, RopeScaling};
use crate::fetch;
use crate::model::Llama;
use crate::rng::{self, streams};
use crate::tokenizer::{GgufVocab, TextTokenizer};
use crate::{Error, Result};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ModelSource {
    /// The default model in the models folder.
    Default,
    /// The random tiny model.
    Tiny,
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder.
    HfDir(PathBuf),
}

impl ModelSource {
    /// Reads `default`, `tiny`, a `.gguf` path or a folder path.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "default" => return Ok(Self::Default),
            "tiny" => return Ok(Self::Tiny),
            _ => {}
        }
        let p = PathBuf::from(spec);
        if p.is_dir() {
            // A Hugging Face cache repo folder: use its newest snapshot.
            let snaps = p.join("snapshots");
            if !p.join("config.json").exists() && snaps.is_dir() {
                let mut entries: Vec<_> =
                    std::fs::read_dir(&snaps).map_err(|e| Error::file(&snaps, e))?.flatten().collect();
                entries.sort_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
                if let Some(last) = entries.last() {
                    return Ok(Self::HfDir(last.path()));
                }
            }
            Ok(Self::HfDir(p))
        } else if p.extension().is_some_and(|e| e == "gguf") {
            if !p.exists() {
                return Err(Error::file(&p, std::io::Error::from(std::io::ErrorKind::NotFound)));
            }
            Ok(Self::Gguf(p))
        } else {
            Err(Error::Invalid(format!(
                "model `{spec}` is not `default`, `tiny`, a .gguf file or a Hugging Face model folder"
            )))
        }
    }
}

/// A model ready to run, with its tokenizer.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The decoder.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Where it came from.
    pub source: ModelSource,
    /// The name PEFT's `base_model_name_or_path` should carry.
    pub base_name: String,
}

/// Loads the model `source` names; the default model is looked up (and fetched if
/// missing and `fetch_missing`) in `models_dir`.
pub fn load_model(
    source: &ModelSource,
    models_dir: &Path,
    device: &Device,
    fetch_missing: bool,
) -> Result<LoadedModel> {
    let mut m = load_model_f32(source, models_dir, device, fetch_missing)?;
    let dtype = compute_dtype(device);
    if m.model.dtype() != dtype {
        m.model = m.model.to_dtype(dtype)?;
    }
    Ok(m)
}

/// The device a `--device` spec names: `auto` (CUDA device 0 when this build has CUDA
/// and the driver sees a GPU, else the CPU), `cpu`, or `cuda[:N]` (an error that says
/// why when it cannot be opened).
pub fn pick_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let n: usize = match s.strip_prefix("cuda:") {
                Some(i) => {
                    i.parse().map_err(|_| Error::Invalid(format!("device `{s}`: `{i}` is not a device index")))?
                }
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::Invalid(format!(
                    "device `{s}` needs a build with `--features cuda` (`make build-cuda`)"
                )));
            }
            Device::new_cuda(n).map_err(|e| {
                Error::Invalid(format!("opening CUDA device {n} (does the NVIDIA driver see a GPU?): {e}"))
            })
        }
        other => Err(Error::Invalid(format!("unknown device `{other}` (auto, cpu, cuda[:N])"))),
    }
}

/// The weights' dtype on `device`: bf16 on a GPU (tensor cores, half the memory; norms,
/// softmax and the loss still accumulate in f32 and LoRA factors stay f32), f32 on the
/// CPU, where the fused f32 kernels run. `MULTITUNE_DTYPE=f32|bf16|f16` overrides it.
pub fn compute_dtype(device: &Device) -> DType {
    match std::env::var("MULTITUNE_DTYPE").as_deref() {
        Ok("f32") => DType::F32,
        Ok("bf16") => DType::BF16,
        Ok("f16") => DType::F16,
        _ if device.is_cuda() => DType::BF16,
        _ => DType::F32,
    }
}

fn load_model_f32(
    source: &ModelSource,
    models_dir: &Path,
    device: &Device,
    fetch_missing: bool,
) -> Result<LoadedModel> {
    match source {
        ModelSource::Tiny => {
            let (model, tokenizer) = tiny_model(0, device)?;
            Ok(LoadedModel { model, tokenizer, source: source.clone(), base_name: "multitune/tiny-llama".into() })
        }
        ModelSource::Default => {
            let path = fetch::default_model_path(models_dir);
            if !path.exists() {
                if !fetch_missing {
                    return Err(Error::Fetch(format!(
                        "the default model is not in {} — run `multitune fetch-model` (or `make model`)",
                        models_dir.display()
                    )));
                }
                fetch::fetch_default_model(models_dir, &mut |_| {})?;
            }
            let (model, tokenizer) = load_gguf(&path, RopeLayout::HalfRotation, device)?;
            Ok(LoadedModel { model, tokenizer, source: source.clone(), base_name: fetch::DEFAULT_HF_REPO.into() })
        }
        ModelSource::Gguf(p) => {
            let (model, tokenizer) = load_gguf(p, RopeLayout::HalfRotation, device)?;
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            Ok(LoadedModel { model, tokenizer, source: source.clone(), base_name: name })
        }
        ModelSource::HfDir(p) => {
            let (model, tokenizer) = load_hf_dir(p, device)?;
            Ok(LoadedModel { model, tokenizer, source: source.clone(), base_name: p.display().to_string() })
        }
    }
}

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
        for t in crate::lora::Target::ALL {
            let (fin, fout) = t.shape(cfg);
            out.push((format!("{p}.{}.weight", t.block_path()), vec![fout, fin]));
            if cfg.attention_bias
                && matches!(t, crate::lora::Target::Q | crate::lora::Target::K | crate::lora::Target::V)
            {
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

fn gguf_name(hf: &str) -> Option<String> {
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
    crate::checkpoint::write_safetensors(&dir.join("model.safetensors"), &weights, None)?;
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
    crate::checkpoint::write_atomic(&dir.join("config.json"), serde_json::to_string_pretty(&hf)?.as_bytes())?;
    tokenizer.save(&dir.join("tokenizer.json"))?;
    let tok_name = |id: Option<u32>| id.and_then(|i| tokenizer.token(i));
    let tc = serde_json::json!({
        "chat_template": tokenizer.chat_template,
        "bos_token": tok_name(tokenizer.bos_id),
        "eos_token": tok_name(tokenizer.eos_ids.first().copied()),
        "pad_token": tok_name(Some(tokenizer.pad_id)),
    });
    crate::checkpoint::write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&tc)?.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_are_parsed_and_bad_ones_named() {
        assert!(pick_device("cpu").unwrap().is_cpu());
        let err = |s: &str| pick_device(s).unwrap_err().to_string();
        assert!(err("tpu").contains("unknown device `tpu`"), "{}", err("tpu"));
        assert!(err("cuda:x").contains("`x` is not a device index"), "{}", err("cuda:x"));
        if !cfg!(feature = "cuda") {
            assert!(pick_device("auto").unwrap().is_cpu());
            assert!(err("cuda:1").contains("--features cuda"), "{}", err("cuda:1"));
        }
    }

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

    #[test]
    fn tiny_model_is_small_and_seeded() {
        let (a, _) = tiny_model(0, &Device::Cpu).unwrap();
        let (b, _) = tiny_model(0, &Device::Cpu).unwrap();
        let n = a.cfg.num_parameters();
        assert!((100_000..1_000_000).contains(&n), "{n}");
        assert_eq!(a.embed_tokens.to_vec2::<f32>().unwrap(), b.embed_tokens.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn model_spec_errors_name_the_input() {
        assert_eq!(ModelSource::parse("tiny").unwrap(), ModelSource::Tiny);
        let e = ModelSource::parse("nope.bin").unwrap_err().to_string();
        assert!(e.contains("`nope.bin`"), "{e}");
        assert!(ModelSource::parse("/no/such/file.gguf").is_err());
    }
}
