//! LoRA adapters as PEFT defines them: `y = W x + (alpha / r) · B A dropout(x)`, with A
//! initialised Kaiming-uniform (`a = √5`, so `U(-1/√in, 1/√in)`) and B zero. Only the
//! low-rank path is scaled; there is no dropout at evaluation time.
//!
//! An adapter lives apart from the frozen model, so one base can serve many adapters
//! (one per task, merged ones, checkpoints) without copying its weights.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::model::config::ModelConfig;
use crate::rng::{self, streams};
use crate::{Error, Result};

/// A linear layer of the decoder that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl Target {
    /// All targets, in decoder order.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The Hugging Face module name (`q_proj`, …), as PEFT's `target_modules` lists it.
    pub fn module_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The module path inside a decoder block (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn block_path(self) -> String {
        let group = match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        };
        format!("{group}.{}", self.module_name())
    }

    /// `(in_features, out_features)` of this layer in a model.
    pub fn shape(self, cfg: &ModelConfig) -> (usize, usize) {
        let h = cfg.hidden_size;
        let q = cfg.num_attention_heads * cfg.head_dim;
        let kv = cfg.num_key_value_heads * cfg.head_dim;
        match self {
            Target::Q => (h, q),
            Target::K | Target::V => (h, kv),
            Target::O => (q, h),
            Target::Gate | Target::Up => (h, cfg.intermediate_size),
            Target::Down => (cfg.intermediate_size, h),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        })
    }
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().trim_end_matches("_proj");
        Ok(match s {
            "q" => Target::Q,
            "k" => Target::K,
            "v" => Target::V,
            "o" => Target::O,
            "gate" => Target::Gate,
            "up" => Target::Up,
            "down" => Target::Down,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown LoRA target `{other}` (expected q, k, v, o, gate, up, down)"
                )))
            }
        })
    }
}

/// Parses a comma-separated target list; `all` means every linear layer.
pub fn parse_targets(s: &str) -> Result<Vec<Target>> {
    if s.trim() == "all" {
        return Ok(Target::ALL.to_vec());
    }
    let mut t: Vec<Target> = s.split(',').filter(|p| !p.trim().is_empty()).map(str::parse).collect::<Result<_>>()?;
    t.sort();
    t.dedup();
    if t.is_empty() {
        return Err(Error::Invalid("no LoRA targets given".into()));
    }
    Ok(t)
}

/// Shape and scaling of a LoRA adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LoraConfig {
    /// Rank `r` of the update.
    pub rank: usize,
    /// `alpha`; the update is scaled by `alpha / r` (or `alpha / √r` with rsLoRA).
    pub alpha: f64,
    /// Dropout on the adapter's input during training.
    pub dropout: f32,
    /// Layers that carry an adapter.
    pub targets: Vec<Target>,
    /// Rank-stabilised scaling `alpha / √r`.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        // The contract's rank, alpha twice the rank (as a comparison sets it).
        let rank = multitune_api::defaults::RANK;
        Self { rank, alpha: 2.0 * rank as f64, dropout: 0.0, targets: Target::ALL.to_vec(), use_rslora: false }
    }
}

impl LoraConfig {
    /// The factor applied to `B A x`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid("lora rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!("lora dropout {} must be in [0, 1)", self.dropout)));
        }
        if !self.alpha.is_finite() || self.alpha <= 0.0 {
            return Err(Error::Invalid(format!("lora alpha {} must be positive", self.alpha)));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid("no LoRA targets".into()));
        }
        Ok(())
    }
}

/// The trainable factors of one adapted layer: `A` is `(r, in)`, `B` is `(out, r)`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down-projection.
    pub a: Var,
    /// Up-projection.
    pub b: Var,
}

/// One adapter for a whole model: a [`LoraPair`] per adapted layer.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// Its configuration.
    pub config: LoraConfig,
    /// Per decoder block, the adapted layers.
    pub layers: Vec<BTreeMap<Target, LoraPair>>,
}

impl LoraAdapter {
    /// A fresh adapter initialised as PEFT does (A Kaiming-uniform, B zero), seeded.
    pub fn new(model: &ModelConfig, config: LoraConfig, seed: u64, device: &Device) -> Result<Self> {
        config.validate()?;
        let mut rng = rng::stream(seed, streams::LORA_INIT, 0);
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for _ in 0..model.num_hidden_layers {
            let mut m = BTreeMap::new();
            for &t in &config.targets {
                let (fan_in, fan_out) = t.shape(model);
                let bound = 1.0 / (fan_in as f32).sqrt();
                let a = Tensor::from_vec(
                    rng::uniform(&mut rng, config.rank * fan_in, bound),
                    (config.rank, fan_in),
                    device,
                )?;
                let b = Tensor::zeros((fan_out, config.rank), DType::F32, device)?;
                m.insert(t, LoraPair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? });
            }
            layers.push(m);
        }
        Ok(Self { config, layers })
    }

    /// The pair for `layer`/`target`, if adapted.
    pub fn get(&self, layer: usize, target: Target) -> Option<&LoraPair> {
        self.layers.get(layer).and_then(|m| m.get(&target))
    }

    /// The scale `alpha / r` applied to `B A x`.
    pub fn scale(&self) -> f64 {
        self.config.scale()
    }

    /// Every trainable variable, in a fixed order (block, target, A then B).
    pub fn vars(&self) -> Vec<Var> {
        self.layers.iter().flat_map(|m| m.values().flat_map(|p| [p.a.clone(), p.b.clone()])).collect()
    }

    /// Trainable parameter count.
    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The dense update `scale · B A` of one layer, `(out, in)`.
    pub fn delta(&self, layer: usize, target: Target) -> Result<Option<Tensor>> {
        match self.get(layer, target) {
            None => Ok(None),
            Some(p) => Ok(Some((p.b.as_tensor().matmul(p.a.as_tensor())? * self.scale())?)),
        }
    }

    /// Tensors by PEFT name: `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, m) in self.layers.iter().enumerate() {
            for (t, p) in m {
                let base = format!("base_model.model.model.layers.{i}.{}", t.block_path());
                out.push((format!("{base}.lora_A.weight"), p.a.as_tensor().clone()));
                out.push((format!("{base}.lora_B.weight"), p.b.as_tensor().clone()));
            }
        }
        out
    }

    /// Rebuilds an adapter from PEFT-named tensors, checking every expected tensor is
    /// present with the right shape and no unexpected one is left over.
    pub fn from_named_tensors(
        model: &ModelConfig,
        config: LoraConfig,
        mut tensors: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        let mut layers = Vec::with_capacity(model.num_hidden_layers);
        for i in 0..model.num_hidden_layers {
            let mut m = BTreeMap::new();
            for &t in &config.targets {
                let (fan_in, fan_out) = t.shape(model);
                let base = format!("base_model.model.model.layers.{i}.{}", t.block_path());
                let mut take = |suffix: &str, shape: (usize, usize)| -> Result<Var> {
                    let name = format!("{base}.{suffix}");
                    let x = tensors.remove(&name).ok_or_else(|| Error::Adapter(format!("missing tensor `{name}`")))?;
                    if x.dims() != [shape.0, shape.1] {
                        return Err(Error::Adapter(format!(
                            "tensor `{name}` has shape {:?}, the model needs {:?}",
                            x.dims(),
                            [shape.0, shape.1]
                        )));
                    }
                    Ok(Var::from_tensor(&x.to_dtype(DType::F32)?.to_device(device)?)?)
                };
                let a = take("lora_A.weight", (config.rank, fan_in))?;
                let b = take("lora_B.weight", (fan_out, config.rank))?;
                m.insert(t, LoraPair { a, b });
            }
            layers.push(m);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Adapter(format!("unexpected tensor `{extra}` for this model and config")));
        }
        Ok(Self { config, layers })
    }

    /// A copy whose every factor is `f` of this one's, as new, independent variables.
    fn map_factors(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|m| {
                m.iter()
                    .map(|(t, p)| {
                        let (a, b) = (f(p.a.as_tensor())?, f(p.b.as_tensor())?);
                        Ok((*t, LoraPair { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)? }))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config: self.config.clone(), layers })
    }

    /// A copy whose update is `factor` times this one's (every B scaled), as new,
    /// independent variables.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|m| {
                m.iter()
                    .map(|(t, p)| {
                        let b = (p.b.as_tensor() * factor)?;
                        Ok((*t, LoraPair { a: Var::from_tensor(&p.a.as_tensor().copy()?)?, b: Var::from_tensor(&b)? }))
                    })
                    .collect::<Result<BTreeMap<_, _>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config: self.config.clone(), layers })
    }

    /// A copy with every factor converted to `dtype` (new, independent variables).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.map_factors(|t| t.to_dtype(dtype))
    }

    /// A deep copy whose variables are independent of this one's.
    pub fn deep_clone(&self) -> Result<Self> {
        self.map_factors(Tensor::copy)
    }
}

/// Test helper: every factor of `adapter` drawn from N(0, std²) (seeded), so that B is
/// non-zero and every factor gets a gradient.
#[cfg(test)]
pub(crate) fn randomize(adapter: &LoraAdapter, seed: u64, std: f32) {
    for (i, v) in adapter.vars().iter().enumerate() {
        let r = crate::rng::normal(&mut crate::rng::stream(seed, 1, i as u64), v.elem_count(), std);
        v.set(&Tensor::from_vec(r, v.shape(), v.device()).unwrap()).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny_config;

    #[test]
    fn init_follows_peft() {
        let cfg = tiny_config();
        let ad = LoraAdapter::new(&cfg, LoraConfig::default(), 0, &Device::Cpu).unwrap();
        let p = ad.get(0, Target::Gate).unwrap();
        let a: Vec<f32> = p.a.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let bound = 1.0 / (cfg.hidden_size as f32).sqrt();
        assert!(a.iter().all(|x| x.abs() <= bound));
        // Uniform on [-b, b]: the largest draw of thousands lies close to the bound.
        assert!(a.iter().fold(0f32, |m, x| m.max(x.abs())) > 0.95 * bound);
        assert_eq!(p.a.dims(), [8, cfg.hidden_size]);
        assert_eq!(p.b.dims(), [cfg.intermediate_size, 8]);
        assert_eq!(p.b.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(ad.scale(), 2.0);
    }

    #[test]
    fn named_round_trip_is_exact_and_checked() {
        let cfg = tiny_config();
        let ad = LoraAdapter::new(&cfg, LoraConfig { rank: 4, ..Default::default() }, 1, &Device::Cpu).unwrap();
        let named: BTreeMap<_, _> = ad.named_tensors().into_iter().collect();
        assert!(named.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
        let back = LoraAdapter::from_named_tensors(&cfg, ad.config.clone(), named.clone(), &Device::Cpu).unwrap();
        for (x, y) in ad.vars().iter().zip(back.vars()) {
            assert_eq!(x.as_tensor().to_vec2::<f32>().unwrap(), y.as_tensor().to_vec2::<f32>().unwrap());
        }
        let mut missing = named.clone();
        missing.remove("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
        let err = LoraAdapter::from_named_tensors(&cfg, ad.config.clone(), missing, &Device::Cpu).unwrap_err();
        assert!(err
            .to_string()
            .contains("missing tensor `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`"));
        let err =
            LoraAdapter::from_named_tensors(&cfg, LoraConfig { rank: 8, ..Default::default() }, named, &Device::Cpu)
                .unwrap_err();
        assert!(err.to_string().contains("has shape [4,"), "{err}");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_targets("all").unwrap().len(), 7);
        assert_eq!(parse_targets("v_proj,q").unwrap(), vec![Target::Q, Target::V]);
        assert!(parse_targets("q,zz").unwrap_err().to_string().contains("`zz`"));
    }
}
