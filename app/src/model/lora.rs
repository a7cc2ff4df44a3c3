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
    /// DoRA (PEFT's `use_dora`): each adapted layer also learns a magnitude per output
    /// row, `y = m / ‖W + s·B·A‖ ⊙ (W + s·B·A) x`, the norm per row and treated as a
    /// constant in the gradient (as PEFT does, after the paper's section 4.3).
    pub use_dora: bool,
    /// PiSSA (PEFT's `init_lora_weights: "pissa"`): A and B start from the top `rank`
    /// singular vectors of W, which keeps the residual `W − s·B₀·A₀`.
    pub pissa: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        // The contract's rank, alpha twice the rank (as a comparison sets it).
        let rank = multitune_api::defaults::RANK;
        Self {
            rank,
            alpha: 2.0 * rank as f64,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
            use_rslora: false,
            use_dora: false,
            pissa: false,
        }
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
        if self.use_dora && self.pissa {
            return Err(Error::Invalid("DoRA with a PiSSA start is not supported: pick one".into()));
        }
        Ok(())
    }

    /// What is wrong with this configuration for a model of shape `model`: a PiSSA rank
    /// above what a layer's singular vectors allow (`min(in, out)`).
    pub fn problem_for(&self, model: &ModelConfig) -> Option<String> {
        if !self.pissa {
            return None;
        }
        let (t, most) = self.targets.iter().map(|t| (t, t.shape(model).0.min(t.shape(model).1))).min_by_key(|x| x.1)?;
        (self.rank > most).then(|| {
            format!(
                "rank {} is larger than PiSSA allows: `{}` has {most} singular vectors (its smaller side)",
                self.rank,
                t.module_name()
            )
        })
    }

    /// The method in the contract's words.
    pub fn method(&self) -> multitune_api::AdapterMethod {
        use multitune_api::AdapterMethod;
        match (self.use_dora, self.pissa, self.use_rslora) {
            (true, _, _) => AdapterMethod::Dora,
            (_, true, _) => AdapterMethod::Pissa,
            (_, _, true) => AdapterMethod::Rslora,
            _ => AdapterMethod::Lora,
        }
    }

    /// This configuration with `method`'s settings (rank, alpha and targets kept).
    pub fn with_method(self, method: multitune_api::AdapterMethod) -> Self {
        use multitune_api::AdapterMethod;
        Self {
            use_rslora: method == AdapterMethod::Rslora,
            use_dora: method == AdapterMethod::Dora,
            pissa: method == AdapterMethod::Pissa,
            ..self
        }
    }
}

/// The trainable factors of one adapted layer: `A` is `(r, in)`, `B` is `(out, r)`.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Down-projection.
    pub a: Var,
    /// Up-projection.
    pub b: Var,
    /// DoRA: the magnitude of each output row, `(out,)`.
    pub magnitude: Option<Var>,
    /// PiSSA: the factors it started from, `(A₀, B₀)`, frozen. The base model keeps
    /// `W − s·B₀·A₀`: applied as `W x + s·(B·A − B₀·A₀) x`, so one base model still
    /// serves every adapter.
    pub start: Option<(Tensor, Tensor)>,
}

impl LoraPair {
    /// A plain pair (no magnitude, no PiSSA start).
    pub fn plain(a: Var, b: Var) -> Self {
        Self { a, b, magnitude: None, start: None }
    }

    /// The low-rank factors the layer applies, as tensors: `(A, B)`, or for a PiSSA pair
    /// `([A; A₀], [B, −B₀])`, whose product is `B·A − B₀·A₀` (PEFT's conversion of a
    /// PiSSA adapter to a LoRA on the original base, at twice the rank). Detached when
    /// `detach` (evaluation records no graph).
    pub fn factors(&self, detach: bool) -> Result<(Tensor, Tensor)> {
        let (a, b) = if detach {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        } else {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        };
        Ok(match &self.start {
            None => (a, b),
            Some((a0, b0)) => (Tensor::cat(&[&a, a0], 0)?, Tensor::cat(&[&b, &b0.neg()?], 1)?),
        })
    }

    /// DoRA's per-row factor `m / ‖W + s·B·A‖` for the layer's weight `w` `(out, in)`,
    /// shaped `(1, out)`; the norm never carries a gradient, the magnitude does unless
    /// `detach`. `None` without a magnitude.
    pub fn dora_scale(&self, w: &Tensor, scale: f64, detach: bool) -> Result<Option<Tensor>> {
        let Some(m) = &self.magnitude else { return Ok(None) };
        let (a, b) = self.factors(true)?;
        // In f32, or f64 for an f64 model (half-precision weights are widened).
        let dt = if w.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let norm = crate::ops::dora_norms(&w.to_dtype(dt)?, &a.to_dtype(dt)?, &b.to_dtype(dt)?, scale)?;
        let m = if detach { m.as_tensor().detach() } else { m.as_tensor().clone() };
        Ok(Some((m.to_dtype(dt)? / norm)?.unsqueeze(0)?))
    }
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
    /// A fresh adapter initialised as PEFT does (A Kaiming-uniform, B zero), seeded. DoRA
    /// and PiSSA start from the base model's weights: [`LoraAdapter::for_model`].
    pub fn new(model: &ModelConfig, config: LoraConfig, seed: u64, device: &Device) -> Result<Self> {
        if config.use_dora || config.pissa {
            return Err(Error::Invalid("a DoRA or PiSSA adapter starts from the base model's weights".into()));
        }
        Self::kaiming(model, config, seed, device)
    }

    /// A fresh adapter for `model`, as PEFT initialises it for the configured method:
    /// A Kaiming-uniform and B zero, then for DoRA each magnitude `‖W‖` per row (the
    /// adapter starts as the base model), for PiSSA A and B from the top singular vectors
    /// of W (`B·A = W_r / s`, with `W_r` the best rank-r approximation; the base keeps
    /// the rest) — one truncated SVD per layer, at start.
    pub fn for_model(model: &crate::model::Llama, config: LoraConfig, seed: u64) -> Result<Self> {
        if let Some(p) = config.problem_for(&model.cfg) {
            return Err(Error::Invalid(p));
        }
        let (dora, pissa, scale) = (config.use_dora, config.pissa, config.scale());
        let mut ad = Self::kaiming(&model.cfg, config, seed, model.device())?;
        if !dora && !pissa {
            return Ok(ad);
        }
        for (li, m) in ad.layers.iter_mut().enumerate() {
            for (t, p) in m.iter_mut() {
                let w = model.blocks[li].linear(*t).weight.to_dtype(DType::F32)?;
                if dora {
                    p.magnitude = Some(Var::from_tensor(&w.sqr()?.sum(1)?.sqrt()?)?);
                }
                if pissa {
                    let (a0, b0) = pissa_factors(&w, ad.config.rank, scale)?;
                    p.a = Var::from_tensor(&a0)?;
                    p.b = Var::from_tensor(&b0)?;
                    p.start = Some((a0, b0));
                }
            }
        }
        Ok(ad)
    }

    /// [`LoraAdapter::new`] whatever the method (the factors only).
    fn kaiming(model: &ModelConfig, config: LoraConfig, seed: u64, device: &Device) -> Result<Self> {
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
                m.insert(t, LoraPair::plain(Var::from_tensor(&a)?, Var::from_tensor(&b)?));
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

    /// Every trainable variable, in a fixed order (block, target, A then B, then a DoRA
    /// magnitude).
    pub fn vars(&self) -> Vec<Var> {
        self.vars_marked().into_iter().map(|(v, _)| v).collect()
    }

    /// Whether each of [`LoraAdapter::vars`] is a B factor (LoRA+ trains those at a
    /// multiple of the learning rate).
    pub fn is_b(&self) -> Vec<bool> {
        self.vars_marked().into_iter().map(|(_, b)| b).collect()
    }

    /// Every trainable variable in [`LoraAdapter::vars`]' order, each marked whether it
    /// is a B factor.
    fn vars_marked(&self) -> Vec<(Var, bool)> {
        self.layers
            .iter()
            .flat_map(|m| {
                m.values().flat_map(|p| {
                    [Some((p.a.clone(), false)), Some((p.b.clone(), true)), p.magnitude.clone().map(|v| (v, false))]
                })
            })
            .flatten()
            .collect()
    }

    /// Trainable parameter count.
    pub fn num_parameters(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The dense update `scale · B A` of one layer, `(out, in)` (a PiSSA adapter's:
    /// `scale · (B·A − B₀·A₀)`, its change to the original weight). A DoRA adapter's
    /// update depends on the weight it rescales: [`LoraAdapter::delta_on`].
    pub fn delta(&self, layer: usize, target: Target) -> Result<Option<Tensor>> {
        if self.config.use_dora {
            return Err(Error::Invalid("a DoRA adapter's update depends on the base weight".into()));
        }
        match self.get(layer, target) {
            None => Ok(None),
            Some(p) => {
                let (a, b) = p.factors(false)?;
                Ok(Some((b.matmul(&a)? * self.scale())?))
            }
        }
    }

    /// The change this adapter makes to the weight `w` `(out, in)` of one layer: for DoRA
    /// `m / ‖W + s·B·A‖ ⊙ (W + s·B·A) − W` (row by row), for the others
    /// [`LoraAdapter::delta`].
    pub fn delta_on(&self, layer: usize, target: Target, w: &Tensor) -> Result<Option<Tensor>> {
        let Some(p) = self.get(layer, target) else { return Ok(None) };
        let Some(g) = p.dora_scale(w, self.scale(), true)? else { return self.delta(layer, target) };
        let (a, b) = p.factors(true)?;
        let dt = g.dtype();
        let w = w.to_dtype(dt)?;
        let adapted = (&w + (b.to_dtype(dt)?.matmul(&a.to_dtype(dt)?)? * self.scale())?)?;
        Ok(Some((adapted.broadcast_mul(&g.t()?)? - w)?))
    }

    /// Tensors by PEFT name, in the order of [`LoraAdapter::vars`]:
    /// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, `…lora_B.weight`
    /// and, for DoRA, `…lora_magnitude_vector` (a PiSSA adapter's trained factors: its
    /// PEFT export is [`LoraAdapter::to_plain`]'s).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, m) in self.layers.iter().enumerate() {
            for (t, p) in m {
                let base = format!("base_model.model.model.layers.{i}.{}", t.block_path());
                out.push((format!("{base}.lora_A.weight"), p.a.as_tensor().clone()));
                out.push((format!("{base}.lora_B.weight"), p.b.as_tensor().clone()));
                if let Some(mag) = &p.magnitude {
                    out.push((format!("{base}.{MAGNITUDE}"), mag.as_tensor().clone()));
                }
            }
        }
        out
    }

    /// A PiSSA adapter as a plain LoRA on the original base model (PEFT's conversion):
    /// `A' = [A; A₀]`, `B' = [B, −B₀]`, rank `2r` and alpha doubled (√2 × alpha with
    /// rsLoRA) so the scale is unchanged; every other adapter as it is.
    pub fn to_plain(&self) -> Result<Self> {
        if !self.config.pissa {
            return Ok(self.clone());
        }
        let rank = 2 * self.config.rank;
        let alpha = if self.config.use_rslora { self.config.alpha * 2f64.sqrt() } else { 2.0 * self.config.alpha };
        let config = LoraConfig { rank, alpha, pissa: false, ..self.config.clone() };
        self.map_pairs(config, |p| {
            let (a, b) = p.factors(true)?;
            Ok(LoraPair::plain(Var::from_tensor(&a)?, Var::from_tensor(&b)?))
        })
    }

    /// Rebuilds an adapter from PEFT-named tensors, checking every expected tensor is
    /// present with the right shape and no unexpected one is left over (a PiSSA
    /// configuration is refused: a PiSSA adapter is saved as the plain LoRA it converts
    /// to).
    pub fn from_named_tensors(
        model: &ModelConfig,
        config: LoraConfig,
        mut tensors: BTreeMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        config.validate()?;
        if config.pissa {
            return Err(Error::Adapter("a PiSSA adapter is read as the plain LoRA it was saved as".into()));
        }
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
                let mut pair = LoraPair::plain(a, b);
                if config.use_dora {
                    let name = format!("{base}.{MAGNITUDE}");
                    let x = tensors.remove(&name).ok_or_else(|| Error::Adapter(format!("missing tensor `{name}`")))?;
                    if x.dims() != [fan_out] {
                        return Err(Error::Adapter(format!(
                            "tensor `{name}` has shape {:?}, the model needs [{fan_out}]",
                            x.dims()
                        )));
                    }
                    pair.magnitude = Some(Var::from_tensor(&x.to_dtype(DType::F32)?.to_device(device)?)?);
                }
                m.insert(t, pair);
            }
            layers.push(m);
        }
        if let Some(extra) = tensors.keys().next() {
            return Err(Error::Adapter(format!("unexpected tensor `{extra}` for this model and config")));
        }
        Ok(Self { config, layers })
    }

    /// A copy under `config` whose every pair is `f` of this one's.
    fn map_pairs(&self, config: LoraConfig, f: impl Fn(&LoraPair) -> Result<LoraPair>) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|m| m.iter().map(|(t, p)| Ok((*t, f(p)?))).collect::<Result<BTreeMap<_, _>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config, layers })
    }

    /// A copy whose every factor is `f` of this one's, as new, independent variables.
    fn map_factors(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> Result<Self> {
        self.map_pairs(self.config.clone(), |p| {
            let (a, b) = (f(p.a.as_tensor())?, f(p.b.as_tensor())?);
            let magnitude = p.magnitude.as_ref().map(|m| Var::from_tensor(&f(m.as_tensor())?)).transpose()?;
            let start = p.start.as_ref().map(|(a0, b0)| Ok::<_, Error>((f(a0)?, f(b0)?))).transpose()?;
            Ok(LoraPair { magnitude, start, ..LoraPair::plain(Var::from_tensor(&a)?, Var::from_tensor(&b)?) })
        })
    }

    /// A copy of a plain LoRA adapter whose update is `factor` times this one's (every B
    /// scaled), as new, independent variables.
    pub fn scaled(&self, factor: f64) -> Result<Self> {
        if self.config.use_dora || self.config.pissa {
            return Err(Error::Invalid("only a plain LoRA adapter scales by its B factors".into()));
        }
        self.map_pairs(self.config.clone(), |p| {
            let b = (p.b.as_tensor() * factor)?;
            Ok(LoraPair::plain(Var::from_tensor(&p.a.as_tensor().copy()?)?, Var::from_tensor(&b)?))
        })
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

/// The PEFT name of a DoRA magnitude after a layer's path.
pub const MAGNITUDE: &str = "lora_magnitude_vector";

/// PiSSA's starting factors for the weight `w` `(out, in)` at rank `r` and scale `s`, as
/// PEFT computes them from the SVD `W = U S Vᵀ`: `A = √(S_r/s) V_rᵀ` `(r, in)`,
/// `B = U_r √(S_r/s)` `(out, r)`, so `s·B·A` is W's best rank-r approximation. The top
/// singular vectors come from [`top_singular`].
pub fn pissa_factors(w: &Tensor, r: usize, s: f64) -> Result<(Tensor, Tensor)> {
    let (out, inp) = w.dims2()?;
    let r = r.min(out).min(inp);
    let data: Vec<f64> = w.to_dtype(DType::F64)?.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let (u, sv, vt) = top_singular(&data, out, inp, r)?;
    let root: Vec<f64> = sv.iter().map(|x| (x / s).max(0.0).sqrt()).collect();
    let a: Vec<f32> = (0..r * inp).map(|i| (root[i / inp] * vt[i]) as f32).collect();
    let b: Vec<f32> = (0..out * r).map(|i| (u[i] * root[i % r]) as f32).collect();
    let dev = w.device();
    Ok((Tensor::from_vec(a, (r, inp), dev)?, Tensor::from_vec(b, (out, r), dev)?))
}

/// The top `r` singular triplets of `w` (`m × n`, row-major, f64): `(U m×r, S r, Vᵀ
/// r×n)`, singular values descending. From the eigenvectors of the smaller Gram matrix
/// (`WᵀW` or `WWᵀ`) by subspace iteration with a Rayleigh–Ritz step each time (`r + 8`
/// vectors, seeded), until the top `r` eigenvalues settle to 1e-13 relative (at most 200
/// steps): converging as the square of the singular-value ratio.
pub fn top_singular(w: &[f64], m: usize, n: usize, r: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    let run = || -> candle_core::Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let dev = Device::Cpu;
        let wt = Tensor::from_slice(w, (m, n), &dev)?;
        // The tall side's Gram: x is W (n ≤ m) or Wᵀ, `small` its width.
        let x = if n <= m { wt.clone() } else { wt.t()?.contiguous()? };
        let small = n.min(m);
        let g = x.t()?.matmul(&x)?;
        let k = (r + 8).min(small);
        let mut rng = rng::stream(0, 31, (m * 7919 + n) as u64);
        let mut q: Vec<f64> = (0..small * k).map(|_| rand::Rng::random::<f64>(&mut rng) - 0.5).collect();
        orthonormal_columns(&mut q, small, k);
        let mut qt = Tensor::from_vec(q, (small, k), &dev)?;
        let mut values = vec![0f64; k];
        let mut last = vec![f64::NAN; r];
        for _ in 0..200 {
            let mut z: Vec<f64> = g.matmul(&qt)?.flatten_all()?.to_vec1()?;
            orthonormal_columns(&mut z, small, k);
            let q = Tensor::from_vec(z, (small, k), &dev)?;
            let t: Vec<f64> = q.t()?.matmul(&g.matmul(&q)?)?.flatten_all()?.to_vec1()?;
            let (vals, vecs) = jacobi_eigen(&t, k);
            qt = q.matmul(&Tensor::from_vec(vecs, (k, k), &dev)?)?;
            values = vals;
            let top = values[0].abs().max(1e-300);
            let settled = (0..r).all(|i| (values[i] - last[i]).abs() <= 1e-13 * top);
            last.copy_from_slice(&values[..r]);
            if settled {
                break;
            }
        }
        let sv: Vec<f64> = values[..r].iter().map(|&l| l.max(0.0).sqrt()).collect();
        let basis = qt.narrow(1, 0, r)?.contiguous()?;
        // The other side's vectors: x·basis / σ.
        let other: Vec<f64> = x.matmul(&basis)?.flatten_all()?.to_vec1()?;
        let other: Vec<f64> =
            other.iter().enumerate().map(|(i, v)| if sv[i % r] > 0.0 { v / sv[i % r] } else { 0.0 }).collect();
        let basis: Vec<f64> = basis.flatten_all()?.to_vec1()?;
        // basis is V (n×r) when n ≤ m, else U (m×r); `other` the rest.
        let (u, v) = if n <= m { (other, basis) } else { (basis, other) };
        let mut vt = vec![0f64; r * n];
        for j in 0..n {
            for c in 0..r {
                vt[c * n + j] = v[j * r + c];
            }
        }
        Ok((u, sv, vt))
    };
    Ok(run()?)
}

/// Orthonormalises the columns of `m` (`rows × cols`, row-major) in place: modified
/// Gram–Schmidt, twice; a column left with a norm of 1e-12 or less (no direction of its
/// own) becomes zero.
pub(crate) fn orthonormal_columns(m: &mut [f64], rows: usize, cols: usize) {
    for _ in 0..2 {
        for j in 0..cols {
            for k in 0..j {
                let dot: f64 = (0..rows).map(|i| m[i * cols + j] * m[i * cols + k]).sum();
                for i in 0..rows {
                    m[i * cols + j] -= dot * m[i * cols + k];
                }
            }
            let norm: f64 = (0..rows).map(|i| m[i * cols + j].powi(2)).sum::<f64>().sqrt();
            for i in 0..rows {
                m[i * cols + j] = if norm > 1e-12 { m[i * cols + j] / norm } else { 0.0 };
            }
        }
    }
}

/// Eigenvalues (descending) and eigenvectors (columns of a row-major `n × n`) of the
/// symmetric `a` by cyclic Jacobi rotations.
pub fn jacobi_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _ in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum();
        let diag: f64 = (0..n).map(|i| a[i * n + i].powi(2)).sum();
        if off <= 1e-30 * diag.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                // (θ = 0: signum is 1, so t = 1, the quarter turn.)
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| a[y * n + y].total_cmp(&a[x * n + x]));
    let vals = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vecs = vec![0f64; n * n];
    for (c, &i) in order.iter().enumerate() {
        for k in 0..n {
            vecs[k * n + c] = v[k * n + i];
        }
    }
    (vals, vecs)
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
