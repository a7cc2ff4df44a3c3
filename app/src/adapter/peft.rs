//! LoRA adapters in PEFT's on-disk layout: `adapter_model.safetensors` with PEFT tensor
//! names and `adapter_config.json`, loadable by `PeftModel.from_pretrained` on the
//! Hugging Face version of the base model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device};
use serde_json::json;

use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::gguf::permute_qk_rows;
use crate::model::lora::{LoraAdapter, LoraConfig, Target, MAGNITUDE};
use crate::persist;
use crate::{Error, Result};

/// The adapter weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The adapter config file.
pub const CONFIG_FILE: &str = "adapter_config.json";

/// q/k LoRA-B rows follow the base's rope layout; PEFT expects Hugging Face order.
/// (A DoRA magnitude, one value per row, follows the rows too.)
fn to_hf_rows(name: &str, t: candle_core::Tensor, cfg: &ModelConfig, to_hf: bool) -> Result<candle_core::Tensor> {
    let magnitude = name.ends_with(MAGNITUDE);
    if cfg.rope_layout != RopeLayout::Interleaved || !(name.ends_with("lora_B.weight") || magnitude) {
        return Ok(t);
    }
    let heads = if name.contains(".q_proj.") {
        cfg.num_attention_heads
    } else if name.contains(".k_proj.") {
        cfg.num_key_value_heads
    } else {
        return Ok(t);
    };
    if magnitude {
        let n = t.dim(0)?;
        return Ok(permute_qk_rows(&t.reshape((n, 1))?, heads, to_hf)?.reshape(n)?);
    }
    permute_qk_rows(&t, heads, to_hf)
}

/// The `adapter_config.json` PEFT writes for this adapter.
pub fn adapter_config_json(cfg: &LoraConfig, base_name: &str) -> serde_json::Value {
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.module_name()).collect();
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.rank,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": cfg.use_dora,
        "use_rslora": cfg.use_rslora
    })
}

/// Saves `adapter` into `dir` in PEFT layout (a PiSSA adapter as the plain LoRA on the
/// original base it converts to, as PEFT's `path_initial_model_for_weight_conversion`
/// saves it; a DoRA adapter with `use_dora` and its magnitudes).
pub fn save_adapter(dir: &Path, adapter: &LoraAdapter, model: &ModelConfig, base_name: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let adapter = &adapter.to_plain()?;
    let tensors = adapter
        .named_tensors()
        .into_iter()
        .map(|(n, t)| {
            let t = to_hf_rows(&n, t, model, true)?.to_dtype(DType::F32)?;
            Ok((n, t))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    persist::write_safetensors(&dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    let cfg = serde_json::to_string_pretty(&adapter_config_json(&adapter.config, base_name))?;
    persist::write_atomic(&dir.join(CONFIG_FILE), cfg.as_bytes())
}

/// Reads `adapter_config.json`, refusing PEFT features we do not implement.
pub fn read_adapter_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Adapter(format!("{}: {e}", path.display())))?;
    let bad = |key: &str, why: &str| Error::Adapter(format!("{}: `{key}` {why}", path.display()));
    if v.get("peft_type").and_then(|x| x.as_str()) != Some("LORA") {
        return Err(bad("peft_type", "must be \"LORA\""));
    }
    if v.get("init_lora_weights").and_then(|x| x.as_str()).is_some_and(|s| s.starts_with("pissa")) {
        return Err(bad(
            "init_lora_weights",
            "is a PiSSA start: load the adapter PEFT converted to a LoRA on the original base",
        ));
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if v.get(key).and_then(|x| x.as_object()).is_some_and(|o| !o.is_empty()) {
            return Err(bad(key, "(per-layer ranks) is not supported"));
        }
    }
    for key in ["layers_to_transform", "modules_to_save", "layer_replication"] {
        if v.get(key).is_some_and(|x| !x.is_null()) {
            return Err(bad(key, "is not supported"));
        }
    }
    if v.get("bias").and_then(|x| x.as_str()).unwrap_or("none") != "none" {
        return Err(bad("bias", "must be \"none\""));
    }
    let rank = v.get("r").and_then(|x| x.as_u64()).ok_or_else(|| bad("r", "is missing"))? as usize;
    let alpha = v.get("lora_alpha").and_then(|x| x.as_f64()).ok_or_else(|| bad("lora_alpha", "is missing"))?;
    let targets = match v.get("target_modules") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str().ok_or_else(|| bad("target_modules", "must list strings")).and_then(|s| s.parse::<Target>())
            })
            .collect::<Result<Vec<_>>>()?,
        Some(serde_json::Value::String(s)) if s == "all-linear" => Target::ALL.to_vec(),
        _ => return Err(bad("target_modules", "must be a list of module names")),
    };
    let mut targets = targets;
    targets.sort();
    targets.dedup();
    let cfg = LoraConfig {
        rank,
        alpha,
        dropout: v.get("lora_dropout").and_then(|x| x.as_f64()).unwrap_or(0.0) as f32,
        targets,
        use_rslora: v.get("use_rslora").and_then(|x| x.as_bool()).unwrap_or(false),
        use_dora: v.get("use_dora").and_then(|x| x.as_bool()).unwrap_or(false),
        pissa: false,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Loads a PEFT adapter folder for `model`.
pub fn load_adapter(dir: &Path, model: &ModelConfig, device: &Device) -> Result<LoraAdapter> {
    let cfg = read_adapter_config(dir)?;
    let (tensors, _) = persist::read_safetensors(&dir.join(WEIGHTS_FILE), device)?;
    let tensors = tensors
        .into_iter()
        .map(|(n, t)| {
            let t = to_hf_rows(&n, t, model, false)?;
            Ok((n, t))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    LoraAdapter::from_named_tensors(model, cfg, tensors, device)
}
