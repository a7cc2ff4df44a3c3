//! Which model to load and on which device: a [`ModelSource`] (the default
//! SmolLM2-135M-Instruct GGUF, any GGUF file, a Hugging Face folder, or `tiny`) resolved
//! and loaded in the dtype that fits the device.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Serialize;

use crate::model::config::RopeLayout;
use crate::model::fetch;
use crate::model::gguf::load_gguf;
use crate::model::hf::load_hf_dir;
use crate::model::llama::Llama;
use crate::model::tiny::{random_shaped_model, shape_config, tiny_model, SHAPES};
use crate::model::tokenizer::TextTokenizer;
use crate::{Error, Result};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum ModelSource {
    /// The default model in the models folder.
    Default,
    /// The random tiny model.
    Tiny,
    /// Random weights in a named real model's shape (`random:smollm2-135m`,
    /// `random:llama-1b`; see [`crate::model::tiny::shape_config`]).
    Random(String),
    /// A GGUF file.
    Gguf(PathBuf),
    /// A Hugging Face model folder.
    HfDir(PathBuf),
}

impl ModelSource {
    /// The GGUF file this source loads from (the default model's, or a GGUF file's), if
    /// it is one.
    pub fn gguf_file(&self, models_dir: &Path) -> Option<PathBuf> {
        match self {
            Self::Default => Some(crate::model::fetch::default_model_path(models_dir)),
            Self::Gguf(p) => Some(p.clone()),
            Self::Tiny | Self::Random(_) | Self::HfDir(_) => None,
        }
    }

    /// The text [`ModelSource::parse`] reads back as this source.
    pub fn spec(&self) -> String {
        match self {
            Self::Default => "default".into(),
            Self::Tiny => "tiny".into(),
            Self::Random(shape) => format!("random:{shape}"),
            Self::Gguf(p) | Self::HfDir(p) => p.display().to_string(),
        }
    }

    /// Reads `default`, `tiny`, `random:<shape>`, a `.gguf` path or a folder path.
    pub fn parse(spec: &str) -> Result<Self> {
        match spec {
            "default" => return Ok(Self::Default),
            "tiny" => return Ok(Self::Tiny),
            _ => {}
        }
        if let Some(shape) = spec.strip_prefix("random:") {
            if shape_config(shape).is_none() {
                return Err(Error::Invalid(format!(
                    "unknown model shape `{shape}` in `{spec}` (known: {})",
                    SHAPES.map(|s| format!("random:{s}")).join(", ")
                )));
            }
            return Ok(Self::Random(shape.to_string()));
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
                "model `{spec}` is not `default`, `tiny`, `random:<shape>`, a .gguf file or a Hugging Face model folder"
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
    if device.is_cpu() {
        // Which engines compute this model's products on this machine: measured on its
        // own shapes the first time, then read from the cache; the model carries them
        // to its kernels.
        let c = &m.model.cfg;
        let kv = c.num_key_value_heads * c.head_dim;
        let dims = crate::kernels::blas::Dims { hidden: c.hidden_size, intermediate: c.intermediate_size, kv };
        m.model.products = crate::kernels::blas::select(models_dir, dims).products();
    }
    Ok(m)
}

/// What runs the jobs, for people: `cpu` or `cuda:N`, the processor's or card's name,
/// its memory and (CPU) the threads the engine uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    /// `cpu` or `cuda:N`.
    pub id: String,
    /// `AMD EPYC 9B14`, `NVIDIA H200`.
    pub name: String,
    /// Memory: the machine's RAM for the CPU, the card's for a GPU, MiB.
    pub memory_mib: Option<u64>,
    /// Threads of the CPU engine (`None` for a GPU).
    pub threads: Option<usize>,
}

impl std::fmt::Display for DeviceInfo {
    /// `GPU cuda:0: NVIDIA H200, 140.4 GiB` or `CPU: AMD EPYC 9B14, 2 threads, 23.4 GiB`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.threads {
            Some(t) => write!(f, "CPU: {}, {t} thread{}", self.name, if t == 1 { "" } else { "s" })?,
            None => write!(f, "GPU {}: {}", self.id, self.name)?,
        }
        if let Some(m) = self.memory_mib {
            write!(f, ", {:.1} GiB", m as f64 / 1024.0)?;
        }
        Ok(())
    }
}

/// Describes `device` ([`DeviceInfo`]): a GPU's name and memory from `nvidia-smi` (which
/// comes with the NVIDIA driver), the CPU's from `/proc`.
pub fn device_info(device: &Device) -> DeviceInfo {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => {
            let (name, memory_mib) = match nvidia_smi(gpu_id, "name,memory.total").as_deref() {
                Some([n, m]) => (n.clone(), m.parse().ok()),
                _ => (format!("CUDA device {gpu_id}"), None),
            };
            DeviceInfo { id: format!("cuda:{gpu_id}"), name, memory_mib, threads: None }
        }
        other => {
            let name = crate::kernels::blas::cpuinfo_field("model name");
            let memory_mib = crate::memory::total_ram_mib().map(|m| m as u64);
            DeviceInfo {
                id: if matches!(other, candle_core::DeviceLocation::Cpu) { "cpu".into() } else { format!("{other:?}") },
                name: if name.is_empty() { std::env::consts::ARCH.to_string() } else { name },
                memory_mib,
                threads: Some(candle_core::utils::get_num_threads()),
            }
        }
    }
}

/// `nvidia-smi`'s answer for GPU `gpu` to `--query-gpu=FIELDS` (comma-separated), one
/// value per field, units left out; `None` without a driver or such a GPU.
pub fn nvidia_smi(gpu: usize, fields: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("nvidia-smi")
        .args([&format!("--query-gpu={fields}"), "--format=csv,noheader,nounits", "-i", &gpu.to_string()])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let line = String::from_utf8_lossy(&out.stdout).lines().next()?.to_string();
    // A value holding a comma (no GPU name does) would miscount: then nothing.
    let values: Vec<String> = line.split(',').map(|v| v.trim().to_string()).collect();
    (values.len() == fields.split(',').count()).then_some(values)
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
        ModelSource::Random(shape) => {
            let cfg = shape_config(shape).ok_or_else(|| Error::Invalid(format!("unknown model shape `{shape}`")))?;
            // Made directly in the compute dtype: a 1B model in f32 would need twice the memory.
            let model = random_shaped_model(cfg, 0, device, compute_dtype(device))?;
            let tokenizer = TextTokenizer::byte_level()?;
            Ok(LoadedModel { model, tokenizer, source: source.clone(), base_name: format!("multitune/random-{shape}") })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_described_by_its_model_and_memory() {
        let d = device_info(&Device::Cpu);
        assert_eq!(d.id, "cpu");
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        assert!(cpuinfo.contains(&d.name), "{d:?}");
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo.lines().next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
        assert_eq!(d.memory_mib, Some(kib / 1024));
        // No driver here: nothing to ask.
        if std::process::Command::new("nvidia-smi").output().is_err() {
            assert_eq!(nvidia_smi(0, "name"), None);
        }
        assert_eq!(d.threads, Some(candle_core::utils::get_num_threads()));
        let text = d.to_string();
        assert!(text.starts_with(&format!("CPU: {}, ", d.name)) && text.ends_with(" GiB"), "{text}");
    }

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
    fn model_spec_errors_name_the_input() {
        assert_eq!(ModelSource::parse("tiny").unwrap(), ModelSource::Tiny);
        let e = ModelSource::parse("nope.bin").unwrap_err().to_string();
        assert!(e.contains("`nope.bin`"), "{e}");
        assert!(ModelSource::parse("/no/such/file.gguf").is_err());
    }
}
