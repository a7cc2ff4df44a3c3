//! Model configuration: the engine's own [`ModelConfig`], and the Hugging Face
//! `config.json` it is read from (refusing, with the field named, what we cannot run).

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use crate::kernels::RopeLayout;

/// Llama 3.x frequency-dependent rope scaling.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Overall scaling factor.
    pub factor: f64,
    /// Wavelengths above `original / low_freq_factor` are scaled by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths below `original / high_freq_factor` are left alone.
    pub high_freq_factor: f64,
    /// Context length of the unscaled model.
    pub original_max_position_embeddings: usize,
}

/// Rope scaling variants we can run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Llama 3.x scaling.
    Llama3(Llama3RopeScaling),
    /// Positions divided by `factor`.
    Linear {
        /// The divisor.
        factor: f64,
    },
}

/// Everything the decoder needs to know about an architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// `llama`, `mistral` or `qwen2` (informational; all share one decoder).
    pub model_type: String,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rope base frequency.
    pub rope_theta: f64,
    /// Optional rope scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Rope dimension pairing of the q/k weights as loaded.
    pub rope_layout: RopeLayout,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// Whether the LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    /// Sliding-window attention span, if any (Mistral).
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// Checks that the numbers fit together, naming the first field that does not.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, reason: String| Err(Error::UnsupportedConfig { field: field.into(), reason });
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return bad(field, "must be positive".into());
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(
                "num_key_value_heads",
                format!(
                    "{} query heads cannot be grouped over {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim", format!("{} is odd; rotary embeddings need pairs", self.head_dim));
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return bad("rms_norm_eps", "must be positive".into());
        }
        if self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rope_theta", "must be positive".into());
        }
        Ok(())
    }

    /// Query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Inverse frequencies of the rotary embedding, scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        let base: Vec<f64> =
            (0..half).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / self.head_dim as f64)).collect();
        let scaled: Vec<f64> = match self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::Llama3(s)) => {
                let old = s.original_max_position_embeddings as f64;
                let low_wavelen = old / s.low_freq_factor;
                let high_wavelen = old / s.high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }

    /// Parameters of the frozen base model.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attn = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * self.intermediate_size;
        let block = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * block + h + head
    }
}

/// The subset of a Hugging Face `config.json` we read. Unknown fields are ignored;
/// fields that change the computation and that we do not implement are refused.
#[derive(Debug, Deserialize)]
pub struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    sliding_window: Option<serde_json::Value>,
    use_sliding_window: Option<bool>,
    /// BOS id (may be absent).
    pub bos_token_id: Option<serde_json::Value>,
    /// EOS id or ids (Llama 3.1 lists several).
    pub eos_token_id: Option<serde_json::Value>,
    /// Pad id, if set.
    pub pad_token_id: Option<serde_json::Value>,
}

fn required<T>(v: Option<T>, field: &str) -> Result<T> {
    v.ok_or_else(|| Error::UnsupportedConfig { field: field.into(), reason: "missing".into() })
}

impl HfConfig {
    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::UnsupportedConfig { field: "config.json".into(), reason: e.to_string() })
    }

    /// Token ids listed in a field that may be a number, a list or null.
    pub fn ids(v: &Option<serde_json::Value>) -> Vec<u32> {
        match v {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|n| n as u32).collect(),
            _ => vec![],
        }
    }

    /// Converts to the engine's config, refusing what we cannot run.
    pub fn into_model_config(self) -> Result<ModelConfig> {
        let model_type = required(self.model_type, "model_type")?;
        let qwen = match model_type.as_str() {
            "llama" | "mistral" => false,
            "qwen2" => true,
            other => {
                return Err(Error::UnsupportedConfig {
                    field: "model_type".into(),
                    reason: format!("`{other}` is not one of llama, mistral, qwen2"),
                })
            }
        };
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(Error::UnsupportedConfig {
                    field: "hidden_act".into(),
                    reason: format!("`{act}`; only silu (SwiGLU) is supported"),
                });
            }
        }
        if self.mlp_bias == Some(true) {
            return Err(Error::UnsupportedConfig {
                field: "mlp_bias".into(),
                reason: "MLP biases are not supported".into(),
            });
        }
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_attention_heads = required(self.num_attention_heads, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(Error::UnsupportedConfig {
                field: "num_attention_heads".into(),
                reason: "must be positive".into(),
            });
        }
        let rope_scaling = match self.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(parse_rope_scaling(&v)?),
        };
        let sliding_window = if qwen && self.use_sliding_window != Some(true) {
            None
        } else {
            self.sliding_window.as_ref().and_then(|v| v.as_u64()).map(|n| n as usize)
        };
        let cfg = ModelConfig {
            model_type,
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(self.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(self.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: self.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            rope_layout: RopeLayout::HalfRotation,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(qwen),
            sliding_window,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

fn parse_rope_scaling(v: &serde_json::Value) -> Result<RopeScaling> {
    let field = |name: &str| -> Result<f64> {
        v.get(name).and_then(|x| x.as_f64()).ok_or_else(|| Error::UnsupportedConfig {
            field: format!("rope_scaling.{name}"),
            reason: "missing or not a number".into(),
        })
    };
    let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(|x| x.as_str()).unwrap_or("default");
    match kind {
        "llama3" => Ok(RopeScaling::Llama3(Llama3RopeScaling {
            factor: field("factor")?,
            low_freq_factor: field("low_freq_factor")?,
            high_freq_factor: field("high_freq_factor")?,
            original_max_position_embeddings: field("original_max_position_embeddings")? as usize,
        })),
        "linear" => Ok(RopeScaling::Linear { factor: field("factor")? }),
        other => Err(Error::UnsupportedConfig {
            field: "rope_scaling.rope_type".into(),
            reason: format!("`{other}` is not supported (llama3, linear)"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA32: &str = r#"{"model_type":"llama","vocab_size":128256,"hidden_size":2048,
        "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,
        "num_key_value_heads":8,"rms_norm_eps":1e-5,"rope_theta":500000.0,
        "rope_scaling":{"factor":32.0,"high_freq_factor":4.0,"low_freq_factor":1.0,
        "original_max_position_embeddings":8192,"rope_type":"llama3"},
        "max_position_embeddings":131072,"tie_word_embeddings":true,"hidden_act":"silu",
        "bos_token_id":128000,"eos_token_id":[128001,128008,128009]}"#;

    #[test]
    fn reads_llama32_with_rope_scaling() {
        let hf = HfConfig::from_json(LLAMA32).unwrap();
        assert_eq!(HfConfig::ids(&hf.eos_token_id), vec![128001, 128008, 128009]);
        let cfg = hf.into_model_config().unwrap();
        assert_eq!(cfg.head_dim, 64);
        assert_eq!(cfg.kv_groups(), 4);
        assert!(matches!(cfg.rope_scaling, Some(RopeScaling::Llama3(_))));
        let inv = cfg.rope_inv_freq();
        // Highest frequency untouched, lowest divided by the factor (hand-computed).
        assert!((inv[0] - 1.0).abs() < 1e-7);
        let lowest = 1.0 / 500000f64.powf(62.0 / 64.0) / 32.0;
        assert!((inv[31] as f64 - lowest).abs() / lowest < 1e-5, "{} vs {lowest}", inv[31]);
    }

    #[test]
    fn qwen2_gets_biases_and_no_window_by_default() {
        let cfg = HfConfig::from_json(
            r#"{"model_type":"qwen2","vocab_size":100,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "sliding_window":32768,"use_sliding_window":false}"#,
        )
        .unwrap()
        .into_model_config()
        .unwrap();
        assert!(cfg.attention_bias);
        assert_eq!(cfg.sliding_window, None);
    }

    #[test]
    fn refuses_what_it_cannot_run_naming_the_field() {
        let cases = [
            (r#"{"model_type":"gpt2"}"#, "model_type"),
            (r#"{"model_type":"llama","hidden_act":"gelu"}"#, "hidden_act"),
            (
                r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"rope_scaling":{"rope_type":"yarn","factor":2}}"#,
                "rope_scaling.rope_type",
            ),
            (
                r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4,"vocab_size":10,"intermediate_size":8,"num_hidden_layers":1,"num_key_value_heads":3}"#,
                "num_key_value_heads",
            ),
            (r#"{"model_type":"llama","hidden_size":64,"num_attention_heads":4}"#, "vocab_size"),
        ];
        for (json, field) in cases {
            let err = HfConfig::from_json(json).and_then(|c| c.into_model_config()).unwrap_err();
            assert!(err.to_string().contains(&format!("`{field}`")), "{json}: {err}");
        }
    }
}
