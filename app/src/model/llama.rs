//! A Llama-family decoder written for training: RMSNorm, rotary embeddings (both
//! layouts), grouped-query attention with causal and padding masks, SwiGLU MLP, tied or
//! untied LM head, optional q/k/v biases (Qwen2), and a KV cache for decoding.
//!
//! The base weights are plain tensors (frozen); LoRA factors come in through
//! [`Forward::adapter`] as `Var`s, so gradients reach only the adapter.

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};

use crate::kernels::blas::Products;
use crate::kernels::pack::Pack;
use crate::model::config::ModelConfig;
use crate::model::lora::{LoraAdapter, Target};
use crate::model::Batch;
use crate::ops::{self, RopeTables};
use crate::rng::{self, streams};
use crate::{Error, Result};

/// A frozen linear layer: `weight` is `(out, in)` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `(out_features, in_features)`.
    pub weight: Tensor,
    /// `(out_features,)`, if any.
    pub bias: Option<Tensor>,
}

/// One decoder block.
#[derive(Debug, Clone)]
pub struct Block {
    /// RMSNorm weight before attention.
    pub input_layernorm: Tensor,
    /// RMSNorm weight before the MLP.
    pub post_attention_layernorm: Tensor,
    /// q, k, v, o, gate, up, down projections in [`Target::ALL`] order.
    pub linears: [Linear; 7],
}

impl Block {
    /// The projection for `target`.
    pub fn linear(&self, target: Target) -> &Linear {
        &self.linears[target as usize]
    }
}

/// How a forward pass runs: which adapter, and whether adapter dropout is on.
#[derive(Debug, Default)]
pub struct Forward<'a> {
    /// The adapter to apply, if any.
    pub adapter: Option<&'a LoraAdapter>,
    /// `Some((seed, step))` in training: dropout masks are drawn from this stream.
    pub dropout: Option<(u64, u64)>,
    calls: Cell<u64>,
    /// DoRA's per-row factors in evaluation, computed once per layer for the life of
    /// this pass (the adapter does not change while it evaluates; a decode's steps share
    /// them).
    dora: std::cell::RefCell<std::collections::HashMap<(usize, Target), Tensor>>,
}

impl<'a> Forward<'a> {
    /// Evaluation with an optional adapter.
    pub fn eval(adapter: Option<&'a LoraAdapter>) -> Self {
        Self { adapter, ..Default::default() }
    }

    /// Training with `adapter`, dropout seeded by `seed` and `step`.
    pub fn train(adapter: &'a LoraAdapter, seed: u64, step: u64) -> Self {
        Self { adapter: Some(adapter), dropout: Some((seed, step)), ..Default::default() }
    }

    /// `lin` of block `layer` applied to `x`, with the adapter's layer if it has one: LoRA
    /// `W x + s·B·A x` (a PiSSA adapter through its factors with the start subtracted,
    /// [`LoraPair::factors`]), and DoRA's per-row factor on top, as PEFT computes it —
    /// `g ⊙ (W x + s·B·A x)` plus the bias, and with dropout on the adapter's input
    /// `W x + b + (g − 1) ⊙ W x' + g ⊙ s·B·A x'` (`x'` dropped out).
    fn project(&self, products: Products, layer: usize, target: Target, lin: &Linear, x: &Tensor) -> Result<Tensor> {
        let Some((ad, p)) = self.adapter.and_then(|ad| ad.get(layer, target).map(|p| (ad, p))) else {
            return ops::linear(x, &lin.weight, lin.bias.as_ref(), None, None, products);
        };
        // Evaluation records no graph: the factors are `Var`s, and a result that tracks
        // them would keep every input it came from alive (a KV cache would hold the whole
        // decode's activations).
        let eval = self.dropout.is_none();
        let (a, b) = p.factors(eval)?;
        let lora = Some((&a, &b, ad.scale()));
        let g = match (&p.magnitude, eval) {
            (None, _) => None,
            (Some(_), true) => {
                let mut cache = self.dora.borrow_mut();
                let g = match cache.get(&(layer, target)) {
                    Some(g) => g.clone(),
                    None => {
                        let Some(g) = p.dora_scale(&lin.weight, ad.scale(), true)? else {
                            return Err(crate::Error::Invalid("a DoRA layer without its magnitude".into()));
                        };
                        cache.insert((layer, target), g.clone());
                        g
                    }
                };
                Some(g)
            }
            (Some(_), false) => p.dora_scale(&lin.weight, ad.scale(), false)?,
        };
        let xin = match self.dropout.filter(|_| ad.config.dropout > 0.0) {
            Some((seed, step)) => {
                let call = self.calls.get();
                self.calls.set(call + 1);
                let mut r = rng::stream(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15), streams::DROPOUT, call);
                let keep = 1.0 / (1.0 - ad.config.dropout);
                let mask: Vec<f32> = (0..x.elem_count())
                    .map(|_| if rand::Rng::random::<f32>(&mut r) < ad.config.dropout { 0.0 } else { keep })
                    .collect();
                Some((x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?)
            }
            None => None,
        };
        let Some(g) = g else {
            return ops::linear(x, &lin.weight, lin.bias.as_ref(), lora, xin.as_ref(), products);
        };
        let y = match &xin {
            None => return ops::dora_linear(x, &lin.weight, lin.bias.as_ref(), (&a, &b, ad.scale()), &g, products),
            Some(xd) => {
                let g = g.to_dtype(x.dtype())?;
                let base = ops::linear(x, &lin.weight, None, None, None, products)?;
                let dropped = ops::linear(xd, &lin.weight, None, lora, None, products)?;
                let plain = ops::linear(xd, &lin.weight, None, None, None, products)?;
                ((base + dropped.broadcast_mul(&g)?)? - plain)?
            }
        };
        Ok(match &lin.bias {
            Some(bias) => y.broadcast_add(bias)?,
            None => y,
        })
    }
}

/// What every layer of one padded forward pass shares: the batch shape, the rotary
/// tables of its positions, the attention mask and the adapter.
#[derive(Clone, Copy)]
struct Pass<'a> {
    b: usize,
    t: usize,
    rope: &'a RopeTables,
    mask: &'a Tensor,
    fwd: &'a Forward<'a>,
}

/// Keys and values of earlier positions, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    key_mask: Vec<Vec<u8>>,
    next_pos: Vec<usize>,
}

impl KvCache {
    /// An empty cache for `batch` rows of `model`.
    pub fn new(model: &Llama, batch: usize) -> Self {
        Self {
            layers: vec![None; model.cfg.num_hidden_layers],
            key_mask: vec![vec![]; batch],
            next_pos: vec![0; batch],
        }
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.key_mask.first().map_or(0, |m| m.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows cached.
    pub fn rows(&self) -> usize {
        self.key_mask.len()
    }

    /// Real (not padding) positions of row `row` cached so far.
    pub fn real_len(&self, row: usize) -> usize {
        self.next_pos[row]
    }

    /// Hides row `row`'s cached positions after its first `keep` real ones: they stay in
    /// the cache, masked, and the row's next token takes position `keep`. A decode that
    /// teacher-forced a reference goes on from the reference tokens its answer accepted.
    pub fn keep_first(&mut self, row: usize, keep: usize) {
        let mut seen = 0;
        for m in self.key_mask[row].iter_mut() {
            if *m != 0 {
                if seen >= keep {
                    *m = 0;
                }
                seen += 1;
            }
        }
        self.next_pos[row] = keep.min(seen);
    }

    /// A cache of `rows` rows that each hold this one-row cache's contents: a prefix
    /// computed once and shared by every row of a batch.
    pub fn repeated(&self, rows: usize) -> Result<Self> {
        if self.rows() != 1 {
            return Err(Error::Invalid(format!("only a one-row cache repeats, not one of {} rows", self.rows())));
        }
        let rep = |t: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&vec![t; rows], 0)?) };
        Ok(Self {
            layers: self
                .layers
                .iter()
                .map(|l| l.as_ref().map(|(k, v)| Ok::<_, Error>((rep(k)?, rep(v)?))).transpose())
                .collect::<Result<_>>()?,
            key_mask: vec![self.key_mask[0].clone(); rows],
            next_pos: vec![self.next_pos[0]; rows],
        })
    }

    /// Keeps only the rows `keep` (in that order), dropping the others: finished rows
    /// leave a decoding batch instead of being computed on.
    pub fn retain(&mut self, keep: &[usize]) -> Result<()> {
        let Some(dev) = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone()) else {
            self.key_mask = keep.iter().map(|&i| self.key_mask[i].clone()).collect();
            self.next_pos = keep.iter().map(|&i| self.next_pos[i]).collect();
            return Ok(());
        };
        let idx = Tensor::from_vec(keep.iter().map(|&i| i as u32).collect::<Vec<_>>(), keep.len(), &dev)?;
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        self.key_mask = keep.iter().map(|&i| self.key_mask[i].clone()).collect();
        self.next_pos = keep.iter().map(|&i| self.next_pos[i]).collect();
        Ok(())
    }
}

/// The decoder.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Architecture.
    pub cfg: ModelConfig,
    /// `(vocab, hidden)`.
    pub embed_tokens: Tensor,
    /// Decoder blocks.
    pub blocks: Vec<Block>,
    /// Final RMSNorm weight.
    pub norm: Tensor,
    /// Untied LM head `(vocab, hidden)`; `None` reuses the embedding.
    pub lm_head: Option<Tensor>,
    /// The engines its matrix products run on: the built-in `gemm` until a selection for
    /// its shapes is made ([`crate::model::load_model`] makes it on the CPU).
    pub products: Products,
    inv_freq: Vec<f32>,
}

impl Llama {
    /// Builds the model from weights named as in Hugging Face checkpoints
    /// (`model.layers.0.self_attn.q_proj.weight`, …), checking every shape.
    pub fn from_weights(cfg: ModelConfig, mut get: impl FnMut(&str) -> Result<Option<Tensor>>) -> Result<Self> {
        cfg.validate()?;
        let mut need = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = get(name)?.ok_or_else(|| Error::Weights(format!("missing tensor `{name}`")))?;
            if t.dims() != shape {
                return Err(Error::Weights(format!(
                    "tensor `{name}` has shape {:?}, the config needs {shape:?}",
                    t.dims()
                )));
            }
            Ok(t)
        };
        let h = cfg.hidden_size;
        let embed_tokens = need("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |t: Target| -> Result<Linear> {
                let (fin, fout) = t.shape(&cfg);
                let weight = need(&format!("{p}.{}.weight", t.block_path()), &[fout, fin])?;
                let bias = if cfg.attention_bias && matches!(t, Target::Q | Target::K | Target::V) {
                    Some(need(&format!("{p}.{}.bias", t.block_path()), &[fout])?)
                } else {
                    None
                };
                Ok(Linear { weight, bias })
            };
            let linears = [
                lin(Target::Q)?,
                lin(Target::K)?,
                lin(Target::V)?,
                lin(Target::O)?,
                lin(Target::Gate)?,
                lin(Target::Up)?,
                lin(Target::Down)?,
            ];
            blocks.push(Block {
                input_layernorm: need(&format!("{p}.input_layernorm.weight"), &[h])?,
                post_attention_layernorm: need(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                linears,
            });
        }
        let norm = need("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(need("lm_head.weight", &[cfg.vocab_size, h])?) };
        let inv_freq = cfg.rope_inv_freq();
        Ok(Self {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            products: Products::gemm(candle_core::utils::get_num_threads()),
            inv_freq,
        })
    }

    /// Every weight by its Hugging Face name (the inverse of [`Llama::from_weights`]).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), b.input_layernorm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), b.post_attention_layernorm.clone()));
            for t in Target::ALL {
                let l = b.linear(t);
                out.push((format!("{p}.{}.weight", t.block_path()), l.weight.clone()));
                if let Some(bias) = &l.bias {
                    out.push((format!("{p}.{}.bias", t.block_path()), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".into(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h.clone()));
        }
        out
    }

    /// A copy with every weight converted to `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let mut weights: std::collections::HashMap<String, Tensor> =
            self.named_weights().into_iter().map(|(n, t)| Ok((n, t.to_dtype(dtype)?))).collect::<Result<_>>()?;
        let mut m = Self::from_weights(self.cfg.clone(), |n| Ok(weights.remove(n)))?;
        m.products = self.products;
        Ok(m)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Final hidden states `(B, T, hidden)` for `ids` `(B, T)` whose rows are masked by
    /// `mask` (1 = token, 0 = padding; padding may sit on either side). With a cache, the
    /// new tokens follow what it holds and it is extended.
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        mask: &[Vec<u8>],
        fwd: &Forward,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if mask.len() != b || mask.iter().any(|m| m.len() != t) {
            return Err(Error::Invalid(format!("mask does not match input ids of shape ({b}, {t})")));
        }
        let cfg = &self.cfg;
        let dev = self.device();
        let (past, key_mask, positions) = match &cache {
            Some(c) => {
                let keys: Vec<Vec<u8>> = c.key_mask.iter().zip(mask).map(|(k, m)| [k.as_slice(), m].concat()).collect();
                (c.len(), keys, ops::positions_from_mask(mask, &c.next_pos))
            }
            None => (0, mask.to_vec(), ops::positions_from_mask(mask, &vec![0; b])),
        };
        let rope = RopeTables::new(&positions, &self.inv_freq, dev)?;
        let attn_mask = ops::attention_mask(&key_mask, t, past, cfg.sliding_window, dev)?.to_dtype(self.dtype())?;
        let pass = Pass { b, t, rope: &rope, mask: &attn_mask, fwd };
        let mut x = self.embed_tokens.index_select(&ids.flatten_all()?, 0)?; // (B*T, H)
        let mut cache = cache;
        for (li, block) in self.blocks.iter().enumerate() {
            let h = ops::rms_norm(&x, &block.input_layernorm, cfg.rms_norm_eps)?;
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[li]);
            let a = self.attention(li, block, &h, &pass, layer_cache)?;
            x = (x + a)?;
            let h = ops::rms_norm(&x, &block.post_attention_layernorm, cfg.rms_norm_eps)?;
            let gate = fwd.project(self.products, li, Target::Gate, block.linear(Target::Gate), &h)?;
            let up = fwd.project(self.products, li, Target::Up, block.linear(Target::Up), &h)?;
            let act = ops::silu_mul(&gate, &up)?;
            let m = fwd.project(self.products, li, Target::Down, block.linear(Target::Down), &act)?;
            x = (x + m)?;
        }
        if let Some(c) = cache {
            for (row, m) in c.key_mask.iter_mut().zip(mask) {
                row.extend_from_slice(m);
            }
            for (p, m) in c.next_pos.iter_mut().zip(mask) {
                *p += m.iter().filter(|&&v| v != 0).count();
            }
        }
        let x = ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps)?;
        Ok(x.reshape((b, t, cfg.hidden_size))?)
    }

    /// Final hidden states of `batch`, flat `(N, hidden)`, and the rows of them whose next
    /// token carries loss (in the order of `batch.targets`). Packed with shared prefixes
    /// where the model can ([`Llama::can_pack`]): each distinct prefix runs once and no
    /// padding runs at all; right-padded otherwise.
    pub fn batch_hidden(&self, batch: &Batch, fwd: &Forward) -> Result<(Tensor, Tensor)> {
        if self.can_pack() {
            return Ok((self.packed_hidden_states(&batch.pack, fwd)?, batch.packed_loss_index.clone()));
        }
        let hidden = self.hidden_states(&batch.input_ids, &batch.mask, fwd, None)?;
        let (b, t, h) = hidden.dims3()?;
        Ok((hidden.reshape((b * t, h))?, batch.loss_index.clone()))
    }

    /// Whether [`Llama::packed_hidden_states`] runs here: f32 weights on the CPU (the
    /// packed kernels are CPU kernels; other devices take the padded path).
    pub fn can_pack(&self) -> bool {
        self.device().is_cpu() && self.dtype() == DType::F32
    }

    /// Final hidden states `(T, hidden)` of the packed tokens of `pack` (see
    /// [`crate::kernels::pack`]): every distinct prefix of its rows runs once, without padding.
    pub fn packed_hidden_states(&self, pack: &Arc<Pack>, fwd: &Forward) -> Result<Tensor> {
        if !self.can_pack() {
            return Err(Error::Invalid("packed forward needs f32 weights on the CPU".into()));
        }
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let dev = self.device();
        let tables = ops::rope_tables(&pack.positions, &self.inv_freq);
        let ids = Tensor::from_slice(&pack.tokens, pack.len(), dev)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut x = self.embed_tokens.index_select(&ids, 0)?; // (T, H)
        for (li, block) in self.blocks.iter().enumerate() {
            let h = ops::rms_norm(&x, &block.input_layernorm, cfg.rms_norm_eps)?;
            let q = fwd.project(self.products, li, Target::Q, block.linear(Target::Q), &h)?;
            let k = fwd.project(self.products, li, Target::K, block.linear(Target::K), &h)?;
            let v = fwd.project(self.products, li, Target::V, block.linear(Target::V), &h)?;
            let q = ops::rope_rows(&q, nh, hd, &tables, cfg.rope_layout)?;
            let k = ops::rope_rows(&k, nkv, hd, &tables, cfg.rope_layout)?;
            let a = ops::packed_attention(&q, &k, &v, pack, (nh, nkv, hd), scale, cfg.sliding_window)?;
            x = (x + fwd.project(self.products, li, Target::O, block.linear(Target::O), &a)?)?;
            let h = ops::rms_norm(&x, &block.post_attention_layernorm, cfg.rms_norm_eps)?;
            let gate = fwd.project(self.products, li, Target::Gate, block.linear(Target::Gate), &h)?;
            let up = fwd.project(self.products, li, Target::Up, block.linear(Target::Up), &h)?;
            let m =
                fwd.project(self.products, li, Target::Down, block.linear(Target::Down), &ops::silu_mul(&gate, &up)?)?;
            x = (x + m)?;
        }
        ops::rms_norm(&x, &self.norm, cfg.rms_norm_eps)
    }

    /// Self-attention of block `li` on `x` `(B·T, hidden)` (with the block's cache slot
    /// when decoding): q/k/v projections, rotary, attention, output projection.
    fn attention(
        &self,
        li: usize,
        block: &Block,
        x: &Tensor,
        pass: &Pass,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let Pass { b, t, rope, mask, fwd } = *pass;
        let cfg = &self.cfg;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let q = fwd.project(self.products, li, Target::Q, block.linear(Target::Q), x)?;
        let k = fwd.project(self.products, li, Target::K, block.linear(Target::K), x)?;
        let v = fwd.project(self.products, li, Target::V, block.linear(Target::V), x)?;
        let r = Some((rope, cfg.rope_layout));
        let q = ops::split_heads(&q, (b, t, nh, hd), r)?;
        let mut k = ops::split_heads(&k, (b, t, nkv, hd), r)?;
        let mut v = ops::split_heads(&v, (b, t, nkv, hd), None)?;
        if let Some(slot) = cache {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let out = ops::attention(&q, &k, &v, mask, 1.0 / (hd as f64).sqrt())?;
        let out = out.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        fwd.project(self.products, li, Target::O, block.linear(Target::O), &out)
    }

    /// The LM head's weight `(vocab, hidden)`.
    pub fn lm_head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Logits `(.., vocab)` for hidden states `(.., hidden)`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let flat = hidden.reshape((n, self.cfg.hidden_size))?;
        let l = ops::frozen_matmul(&flat, self.lm_head_weight(), self.products)?;
        let mut out = dims.clone();
        *out.last_mut().expect("hidden states have a last dimension") = self.cfg.vocab_size;
        Ok(l.reshape(out)?)
    }

    /// Per-row negative log-likelihood of `targets` `(N,)` for hidden states `(N, hidden)`,
    /// in f32 for half-precision models, the model's type otherwise (through
    /// [`ops::lm_head_nll`]: on the CPU the logits are never formed).
    pub fn token_nll(&self, hidden: &Tensor, targets: &Tensor) -> Result<Tensor> {
        ops::lm_head_nll(hidden, self.lm_head_weight(), targets, self.products)
    }

    /// Logits of every position, `(B, T, vocab)`.
    pub fn forward(&self, ids: &Tensor, mask: &[Vec<u8>], fwd: &Forward) -> Result<Tensor> {
        let h = self.hidden_states(ids, mask, fwd, None)?;
        self.logits(&h)
    }

    /// A copy of this model with `sign` times the adapter's change added to every
    /// adapted weight (`sign = 1` merges, `-1` unmerges): `scale · B A` for LoRA (and
    /// PiSSA's `scale · (B A − B₀ A₀)`); DoRA's rescaled rows, merge only.
    pub fn with_adapter_merged(&self, adapter: &LoraAdapter, sign: f64) -> Result<Self> {
        if adapter.config.use_dora && sign != 1.0 {
            return Err(crate::Error::Invalid("a DoRA adapter is merged, never unmerged".into()));
        }
        let mut m = self.clone();
        for (li, block) in m.blocks.iter_mut().enumerate() {
            for t in Target::ALL {
                // A DoRA adapter's change depends on the weight it rescales.
                if let Some(delta) = adapter.delta_on(li, t, &block.linears[t as usize].weight)? {
                    let w = &mut block.linears[t as usize].weight;
                    let merged = (w.to_dtype(DType::F32)? + (delta * sign)?)?.to_dtype(w.dtype())?;
                    // A plain weight again: without `detach` it remembers the operation
                    // that made it, so every activation computed from it keeps the
                    // adapter's factors and its own inputs alive, and gradients can flow
                    // back through it (merge-then-new on the default model peaked at
                    // 7.7 GB and trained 3× slower).
                    *w = merged.detach();
                }
            }
        }
        Ok(m)
    }

    /// Pads `rows` of token ids to one length on the `left` or right with `pad`,
    /// returning the id tensor and the mask.
    pub fn pad_batch(&self, rows: &[Vec<u32>], pad: u32, left: bool) -> Result<(Tensor, Vec<Vec<u8>>)> {
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            let n = t - r.len();
            let (mut row, mut m) = (Vec::with_capacity(t), Vec::with_capacity(t));
            if left {
                row.extend(std::iter::repeat_n(pad, n));
                m.extend(std::iter::repeat_n(0u8, n));
            }
            row.extend_from_slice(r);
            m.extend(std::iter::repeat_n(1u8, r.len()));
            if !left {
                row.extend(std::iter::repeat_n(pad, n));
                m.extend(std::iter::repeat_n(0u8, n));
            }
            ids.extend(row);
            mask.push(m);
        }
        Ok((Tensor::from_vec(ids, (rows.len(), t), self.device())?, mask))
    }
}

/// Last-position logits `(B, vocab)` from hidden states `(B, T, hidden)`.
pub fn last_position(hidden: &Tensor) -> Result<Tensor> {
    let t = hidden.dim(1)?;
    Ok(hidden.narrow(1, t - 1, 1)?.squeeze(1)?)
}

/// Helper for tests and tools: the largest absolute difference of two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::lora::{randomize, LoraConfig};

    /// A merged model's weights are plain tensors that remember no operation (otherwise
    /// every activation computed from them would keep the adapter's factors and the whole
    /// history alive, and backpropagation could reach them: merge-then-new trains its next
    /// adapter on such a model); no gradient reaches the merged adapter; and the logits
    /// equal the unmerged model with the adapter applied.
    #[test]
    fn merged_weights_do_not_backpropagate_into_the_merged_adapter() {
        let (model, _) = crate::model::tiny_model(6, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 1, &Device::Cpu).unwrap();
        randomize(&ad, 2, 0.05);
        let merged = model.with_adapter_merged(&ad, 1.0).unwrap();
        for b in &merged.blocks {
            assert!(b.linears.iter().all(|l| !l.weight.track_op()), "a merged weight remembers its operation");
        }
        let (ids, mask) = model.pad_batch(&[vec![5, 6, 7, 8]], 0, false).unwrap();
        let loss = merged.forward(&ids, &mask, &Forward::eval(None)).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for v in ad.vars() {
            assert!(grads.get(v.as_tensor()).is_none(), "a gradient reached the merged adapter");
        }
        let with = model.forward(&ids, &mask, &Forward::eval(Some(&ad))).unwrap();
        let via = merged.forward(&ids, &mask, &Forward::eval(None)).unwrap();
        assert!(crate::model::max_abs_diff(&with, &via).unwrap() < 1e-4);
    }

    /// Evaluation with an adapter records no graph (a KV cache built from tracked
    /// results would keep a whole decode's activations alive), training does.
    #[test]
    fn evaluation_records_no_graph() {
        let (model, _) = crate::model::tiny_model(6, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 1, &Device::Cpu).unwrap();
        let (ids, mask) = model.pad_batch(&[vec![5, 6, 7, 8]], 0, false).unwrap();
        let mut cache = KvCache::new(&model, 1);
        let h = model.hidden_states(&ids, &mask, &Forward::eval(Some(&ad)), Some(&mut cache)).unwrap();
        assert!(!h.track_op());
        assert!(cache.layers.iter().flatten().all(|(k, v)| !k.track_op() && !v.track_op()));
        assert!(model.forward(&ids, &mask, &Forward::train(&ad, 0, 0)).unwrap().track_op());
    }
}
