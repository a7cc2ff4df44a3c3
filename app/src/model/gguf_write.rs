//! Writing GGUF files, for llama.cpp, Ollama and LM Studio: a merged model (base +
//! adapter) in f16 or q8_0, and a LoRA adapter in the layout llama.cpp's `--lora` reads
//! (`general.type = adapter`, `blk.N.<tensor>.weight.lora_a` / `.lora_b`). Both carry the
//! base GGUF's metadata — tokenizer, chat template, architecture — so the tools run them
//! as they run the base; and an Ollama `Modelfile` for each.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::DType;

use crate::model::config::{ModelConfig, RopeLayout};
use crate::model::gguf::{gguf_name, permute_qk_rows};
use crate::model::llama::Llama;
use crate::model::lora::LoraAdapter;
use crate::model::tokenizer::{ChatMessage, TextTokenizer};
use crate::{Error, Result};

/// The weight type of an exported model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    /// Half precision: the merged weights as they are, to within f16 rounding.
    F16,
    /// llama.cpp's 8-bit blocks (32 weights and one f16 scale): half the size of f16.
    Q8_0,
}

impl GgufType {
    /// `f16` or `q8_0`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" => Some(Self::F16),
            "q8_0" | "q8" => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// The name in file names and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        }
    }

    fn ggml(self) -> GgmlDType {
        match self {
            Self::F16 => GgmlDType::F16,
            Self::Q8_0 => GgmlDType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LLAMA_FTYPE_MOSTLY_F16`, `_Q8_0`).
    fn file_type(self) -> u32 {
        match self {
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }
}

/// The metadata of the GGUF file at `base`, sorted by key.
fn base_metadata(base: &Path) -> Result<Vec<(String, Value)>> {
    let mut f = std::fs::File::open(base).map_err(|e| Error::file(base, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::Weights(format!("{}: {e}", base.display())))?;
    let mut md: Vec<(String, Value)> = content.metadata.into_iter().collect();
    md.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(md)
}

/// Writes `tensors` with `metadata` to `out`, atomically (a temporary file beside it,
/// renamed once complete).
fn write_file(out: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let tmp = tempfile::Builder::new().prefix(".gguf-").tempfile_in(dir).map_err(|e| Error::file(dir, e))?;
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = BufWriter::new(tmp.as_file());
    gguf_file::write(&mut w, &md, &ts).map_err(|e| Error::Weights(format!("{}: {e}", out.display())))?;
    w.flush().map_err(|e| Error::file(out, e))?;
    drop(w);
    tmp.as_file().sync_all().map_err(|e| Error::file(out, e))?;
    tmp.persist(out).map_err(|e| Error::file(out, e.error))?;
    Ok(())
}

/// Whether q/k rows go into llama.cpp's interleaved order: llama-family GGUFs store them
/// so; Qwen2's keep Hugging Face's.
fn permutes_qk(cfg: &ModelConfig) -> bool {
    cfg.model_type != "qwen2"
}

/// Writes `model` (an adapter already merged in) as a GGUF file of type `ty`, with the
/// metadata of the GGUF it was loaded from (`base`): 1-D weights (norms) stay f32, as
/// llama.cpp keeps them.
pub fn write_model(model: &Llama, base: &Path, out: &Path, ty: GgufType, name: &str) -> Result<()> {
    let cfg = &model.cfg;
    let mut metadata: Vec<(String, Value)> =
        base_metadata(base)?.into_iter().filter(|(k, _)| k != "general.file_type" && k != "general.name").collect();
    metadata.push(("general.file_type".into(), Value::U32(ty.file_type())));
    metadata.push(("general.name".into(), Value::String(name.into())));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tensors = Vec::new();
    for (hf, t) in model.named_weights() {
        let g = gguf_name(&hf).ok_or_else(|| Error::Weights(format!("no GGUF name for `{hf}`")))?;
        let mut t = t.to_dtype(DType::F32)?;
        if permutes_qk(cfg) && cfg.rope_layout == RopeLayout::HalfRotation {
            if hf.ends_with("q_proj.weight") {
                t = permute_qk_rows(&t, cfg.num_attention_heads, false)?;
            } else if hf.ends_with("k_proj.weight") {
                t = permute_qk_rows(&t, cfg.num_key_value_heads, false)?;
            }
        }
        let dtype = if t.rank() == 1 { GgmlDType::F32 } else { ty.ggml() };
        let q = QTensor::quantize(&t.contiguous()?, dtype).map_err(|e| Error::Weights(format!("{g}: {e}")))?;
        tensors.push((g, q));
    }
    write_file(out, &metadata, &tensors)
}

/// Writes `adapter` as a llama.cpp LoRA GGUF for the GGUF model at `base`: A and B of
/// each adapted layer in f32 (B's q/k rows in the base's order), and `adapter.lora.alpha`
/// such that llama.cpp's scale `alpha / r` is the adapter's own (rsLoRA's `alpha / √r`
/// included).
pub fn write_lora(adapter: &LoraAdapter, cfg: &ModelConfig, base: &Path, out: &Path, name: &str) -> Result<()> {
    if adapter.config.use_dora {
        return Err(Error::Invalid("a llama.cpp LoRA GGUF has no DoRA magnitudes: use the merged model's GGUF".into()));
    }
    // A PiSSA adapter as the plain LoRA on the original base it converts to.
    let adapter = &adapter.to_plain()?;
    let arch = base_metadata(base)?
        .into_iter()
        .find(|(k, _)| k == "general.architecture")
        .map(|(_, v)| v)
        .ok_or_else(|| Error::Weights(format!("{}: no general.architecture", base.display())))?;
    let r = adapter.config.rank as f64;
    let metadata = vec![
        ("adapter.lora.alpha".to_string(), Value::F32((adapter.scale() * r) as f32)),
        ("adapter.type".to_string(), Value::String("lora".into())),
        ("general.architecture".to_string(), arch),
        ("general.name".to_string(), Value::String(name.into())),
        ("general.type".to_string(), Value::String("adapter".into())),
    ];
    let mut tensors = Vec::new();
    for (i, layer) in adapter.layers.iter().enumerate() {
        for (target, pair) in layer {
            let hf = format!("model.layers.{i}.{}.weight", target.block_path());
            let g = gguf_name(&hf).ok_or_else(|| Error::Weights(format!("no GGUF name for `{hf}`")))?;
            let a = pair.a.as_tensor().to_dtype(DType::F32)?;
            let mut b = pair.b.as_tensor().to_dtype(DType::F32)?;
            if permutes_qk(cfg) && cfg.rope_layout == RopeLayout::HalfRotation {
                if hf.ends_with("q_proj.weight") {
                    b = permute_qk_rows(&b, cfg.num_attention_heads, false)?;
                } else if hf.ends_with("k_proj.weight") {
                    b = permute_qk_rows(&b, cfg.num_key_value_heads, false)?;
                }
            }
            for (suffix, t) in [("lora_a", a), ("lora_b", b)] {
                let q = QTensor::quantize(&t.contiguous()?, GgmlDType::F32)?;
                tensors.push((format!("{g}.{suffix}"), q));
            }
        }
    }
    write_file(out, &metadata, &tensors)
}

/// An Ollama `Modelfile`: `FROM` the model file, `ADAPTER` if one is given, the chat
/// `TEMPLATE` in Ollama's Go template language for the model's chat format (ChatML or
/// Llama 3), its stop token, and `SYSTEM` (the given prompt, or the template's own
/// default, as training saw it).
pub fn modelfile(tokenizer: &TextTokenizer, from: &str, adapter: Option<&str>, system: Option<&str>) -> Result<String> {
    let mut s = format!("# Ollama: ollama create NAME -f Modelfile, then ollama run NAME\nFROM {from}\n");
    if let Some(a) = adapter {
        s.push_str(&format!("ADAPTER {a}\n"));
    }
    // The template's rendering of one user turn shows its format and default system prompt.
    let probe = if tokenizer.is_chat() {
        tokenizer.render_chat(&[ChatMessage::new("user", "\u{1}")], true)?
    } else {
        String::new()
    };
    let (template, stop, default_system) = if probe.contains("<|im_start|>") {
        let sys = probe
            .split_once("<|im_start|>system\n")
            .and_then(|(_, rest)| rest.split_once("<|im_end|>"))
            .map(|(s, _)| s.to_string());
        (CHATML, "<|im_end|>", sys)
    } else if probe.contains("<|start_header_id|>") {
        let sys = probe
            .split_once("<|start_header_id|>system<|end_header_id|>\n\n")
            .and_then(|(_, rest)| rest.split_once("<|eot_id|>"))
            .map(|(s, _)| s.to_string());
        (LLAMA3, "<|eot_id|>", sys)
    } else {
        s.push_str("# The model has no chat template Ollama's TEMPLATE could mirror: prompts go in as plain text.\n");
        return Ok(s);
    };
    s.push_str(&format!("TEMPLATE \"\"\"{template}\"\"\"\nPARAMETER stop \"{stop}\"\n"));
    if let Some(sys) = system.map(str::to_string).or(default_system).filter(|x| !x.is_empty()) {
        s.push_str(&format!("SYSTEM \"\"\"{}\"\"\"\n", sys.replace("\"\"\"", "\" \" \"")));
    }
    Ok(s)
}

const CHATML: &str = "{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
";

const LLAMA3: &str = "{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

";

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct GgufExport {
    /// The merged model.
    pub model: PathBuf,
    /// The LoRA adapter for the base GGUF (none for DoRA, which llama.cpp's LoRA cannot
    /// express).
    pub adapter: Option<PathBuf>,
    /// `Modelfile` (the merged model) and, with an adapter, `Modelfile.adapter` (base +
    /// adapter).
    pub modelfiles: Vec<PathBuf>,
}

/// How to export: the weight type, the model's name (`general.name`), the system
/// prompt for the Modelfiles (`None`: the chat template's default).
#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// f16 or q8_0.
    pub ty: GgufType,
    /// `general.name`.
    pub name: String,
    /// The Modelfiles' `SYSTEM`.
    pub system: Option<String>,
}

/// Exports a run into `dir`: `model-<ty>.gguf` (base with `adapter` merged), `adapter.gguf`
/// (for the base GGUF file `base`, whose file name `Modelfile.adapter` names), and the two
/// Modelfiles. `model` is the base as loaded from `base`.
pub fn export(
    model: &Llama,
    tokenizer: &TextTokenizer,
    adapter: &LoraAdapter,
    base: &Path,
    dir: &Path,
    opts: &GgufOptions,
) -> Result<GgufExport> {
    let (ty, name, system) = (opts.ty, opts.name.as_str(), opts.system.as_deref());
    check_shapes(model, ty)?;
    let merged = model.with_adapter_merged(adapter, 1.0)?;
    let file = format!("model-{}.gguf", ty.name());
    let model_path = dir.join(&file);
    write_model(&merged, base, &model_path, ty, name)?;
    drop(merged);
    let mut modelfiles = vec![dir.join("Modelfile")];
    crate::persist::write_atomic(&modelfiles[0], modelfile(tokenizer, &format!("./{file}"), None, system)?.as_bytes())?;
    // A DoRA adapter has no llama.cpp LoRA form: the merged model only.
    if adapter.config.use_dora {
        return Ok(GgufExport { model: model_path, adapter: None, modelfiles });
    }
    let adapter_path = dir.join("adapter.gguf");
    write_lora(adapter, &model.cfg, base, &adapter_path, name)?;
    let base_file = base.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_else(|| "base.gguf".into());
    modelfiles.push(dir.join("Modelfile.adapter"));
    crate::persist::write_atomic(
        &modelfiles[1],
        modelfile(tokenizer, &format!("./{base_file}"), Some("./adapter.gguf"), system)?.as_bytes(),
    )?;
    Ok(GgufExport { model: model_path, adapter: Some(adapter_path), modelfiles })
}

/// Checks that `model`'s matrices fit `ty`'s blocks (q8_0 rows are blocks of 32).
fn check_shapes(model: &Llama, ty: GgufType) -> Result<()> {
    if ty == GgufType::Q8_0 {
        for (name, t) in model.named_weights() {
            let dims = t.dims();
            if dims.len() == 2 && dims[1] % 32 != 0 {
                return Err(Error::Invalid(format!(
                    "q8_0 needs rows that are multiples of 32 values; `{name}` has {}: export f16",
                    dims[1]
                )));
            }
        }
    }
    Ok(())
}
