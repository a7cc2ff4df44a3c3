//! The multi-head strategy's model: one shared LoRA adapter trained on every task, plus a
//! head per task. A classification task gets a linear classifier over its label set,
//! read from the final (normed) hidden state of the last prompt token; a generation
//! task gets its own low-rank delta on the LM head,
//! `logits = h·W_lmᵀ + (alpha / rank)·(h·Aᵀ)·Bᵀ`.
//!
//! A classifier starts as the base model's own first-token label scorer (its rows are the
//! LM-head rows of each label's first token), so training refines a sensible classifier
//! rather than a random one. Heads are saved as `heads.safetensors` plus `heads.json`
//! beside the PEFT adapter.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::data::{self, Example, Record};
use crate::data::{TaskKind, TaskSpec};
use crate::eval::metrics::bootstrap::{bootstrap_interval, mean_of, Estimate};
use crate::eval::{self, EvalOptions, Prediction, TaskEval};
use crate::kernels::pack::Pack;
use crate::model::lora::LoraAdapter;
use crate::model::tokenizer::TextTokenizer;
use crate::model::Batch;
use crate::model::{last_position, Forward, Llama};
use crate::ops;
use crate::persist;
use crate::rng::{self, streams};
use crate::train::{BatchLoss, GroupTerms, Objective};
use crate::{Error, Result};

/// File of the head tensors inside an exported adapter folder.
pub const HEADS_FILE: &str = "heads.safetensors";
/// File describing the heads.
pub const HEADS_JSON: &str = "heads.json";

/// What a head is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadKind {
    /// Linear classifier: `softmax(h·Wᵀ + b)` over `labels`.
    Classifier {
        /// Label set, in row order.
        labels: Vec<String>,
    },
    /// Low-rank delta on the LM head.
    LmHeadDelta {
        /// Rank of the delta.
        rank: usize,
        /// Scale numerator (`alpha / rank` multiplies the delta).
        alpha: f64,
    },
}

/// One task's head: for a classifier `first` is W `(labels, hidden)` and `second` the bias
/// `(labels)`; for an LM-head delta `first` is A `(rank, hidden)` and `second` B `(vocab, rank)`.
#[derive(Debug, Clone)]
pub struct TaskHead {
    /// Task name.
    pub task: String,
    /// Kind and its settings.
    pub kind: HeadKind,
    /// W or A.
    pub first: Var,
    /// Bias or B.
    pub second: Var,
}

impl TaskHead {
    /// A classifier initialised from the LM-head rows of each label's first token.
    pub fn classifier(model: &Llama, task: &str, labels: &[String], first_tokens: &[u32]) -> Result<Self> {
        if labels.len() != first_tokens.len() || labels.len() < 2 {
            return Err(Error::Invalid(format!("task `{task}`: a classifier head needs two or more labels")));
        }
        let idx = Tensor::from_vec(first_tokens.to_vec(), first_tokens.len(), model.device())?;
        let w = model.lm_head_weight().index_select(&idx, 0)?.to_dtype(DType::F32)?;
        let b = Tensor::zeros(labels.len(), DType::F32, model.device())?;
        Ok(Self {
            task: task.into(),
            kind: HeadKind::Classifier { labels: labels.to_vec() },
            first: Var::from_tensor(&w)?,
            second: Var::from_tensor(&b)?,
        })
    }

    /// An LM-head delta initialised as LoRA is (A Kaiming-uniform, B zero), seeded.
    pub fn lm_head_delta(model: &Llama, task: &str, rank: usize, alpha: f64, seed: u64) -> Result<Self> {
        if rank == 0 {
            return Err(Error::Invalid("the LM-head delta rank must be positive".into()));
        }
        let (h, v) = (model.cfg.hidden_size, model.cfg.vocab_size);
        let mut r = rng::stream(seed, streams::LORA_INIT, 1_000_000);
        let a = Tensor::from_vec(rng::uniform(&mut r, rank * h, 1.0 / (h as f32).sqrt()), (rank, h), model.device())?;
        let b = Tensor::zeros((v, rank), DType::F32, model.device())?;
        Ok(Self {
            task: task.into(),
            kind: HeadKind::LmHeadDelta { rank, alpha },
            first: Var::from_tensor(&a)?,
            second: Var::from_tensor(&b)?,
        })
    }

    /// Trainable parameters of this head.
    pub fn num_parameters(&self) -> usize {
        self.first.elem_count() + self.second.elem_count()
    }

    /// Classifier logits `(N, labels)` for hidden states `(N, hidden)`.
    pub fn classify(&self, h: &Tensor) -> Result<Tensor> {
        let w = self.first.as_tensor().to_dtype(h.dtype())?;
        let b = self.second.as_tensor().to_dtype(h.dtype())?;
        Ok(h.matmul(&w.t()?)?.broadcast_add(&b)?)
    }

    /// The LM-head delta's contribution `(N, vocab)` for hidden states `(N, hidden)`.
    pub fn lm_delta(&self, h: &Tensor) -> Result<Tensor> {
        let HeadKind::LmHeadDelta { rank, alpha } = self.kind else {
            return Err(Error::Invalid(format!("head of `{}` is not an LM-head delta", self.task)));
        };
        let a = self.first.as_tensor().to_dtype(h.dtype())?;
        let b = self.second.as_tensor().to_dtype(h.dtype())?;
        Ok((h.matmul(&a.t()?)?.matmul(&b.t()?)? * (alpha / rank as f64))?)
    }
}

/// Where a training example goes: its task and, for a classification task, its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Task index (into [`MultiHead::heads`]).
    pub task: usize,
    /// Label index (classification).
    pub label: Option<usize>,
    /// Completion tokens of the example (the final span of its loss positions).
    pub completion_len: usize,
}

/// The shared adapter and one head per task.
#[derive(Debug, Clone)]
pub struct MultiHead {
    /// Shared LoRA adapter.
    pub adapter: LoraAdapter,
    /// One head per task, in task order.
    pub heads: Vec<TaskHead>,
    /// Training routes, by example index (empty outside training).
    pub routes: Vec<Route>,
}

/// What `heads.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadsManifest {
    /// Always `multitune-heads`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The base model's name.
    pub base_model: String,
    /// Hidden size the heads read.
    pub hidden_size: usize,
    /// Vocabulary size of LM-head deltas.
    pub vocab_size: usize,
    /// How to apply each kind.
    pub usage: BTreeMap<String, String>,
    /// The heads in task order.
    pub heads: Vec<HeadEntry>,
}

/// One head in `heads.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadEntry {
    /// Task name.
    pub task: String,
    /// Kind and settings.
    #[serde(flatten)]
    pub kind: HeadKind,
    /// Tensor names in `heads.safetensors`: W/A then bias/B.
    pub tensors: [String; 2],
}

fn tensor_names(i: usize, kind: &HeadKind) -> [String; 2] {
    match kind {
        HeadKind::Classifier { .. } => [format!("heads.{i}.classifier.weight"), format!("heads.{i}.classifier.bias")],
        HeadKind::LmHeadDelta { .. } => {
            [format!("heads.{i}.lm_head.lora_A.weight"), format!("heads.{i}.lm_head.lora_B.weight")]
        }
    }
}

impl MultiHead {
    /// A shared adapter and a fresh head per task. `label_tokens[t]` holds the first token
    /// of each label of task `t` (classification tasks only).
    pub fn new(
        model: &Llama,
        adapter: LoraAdapter,
        tasks: &[TaskSpec],
        label_tokens: &[Vec<u32>],
        head_rank: usize,
        seed: u64,
    ) -> Result<Self> {
        let alpha = adapter.config.alpha * head_rank as f64 / adapter.config.rank as f64;
        let heads = tasks
            .iter()
            .enumerate()
            .map(|(i, task)| match task.kind {
                TaskKind::Classification => TaskHead::classifier(model, &task.name, &task.labels, &label_tokens[i]),
                TaskKind::Generation => TaskHead::lm_head_delta(model, &task.name, head_rank, alpha, seed + i as u64),
            })
            .collect::<Result<_>>()?;
        Ok(Self { adapter, heads, routes: vec![] })
    }

    /// Trainable parameters: the shared adapter and every head.
    pub fn num_parameters(&self) -> usize {
        self.adapter.num_parameters() + self.heads.iter().map(TaskHead::num_parameters).sum::<usize>()
    }

    /// The model with task `t`'s LM-head delta folded into its head (a copy; the other
    /// weights are shared). A classifier task gets the model unchanged.
    pub fn model_for(&self, model: &Llama, t: usize) -> Result<Llama> {
        let head = &self.heads[t];
        let HeadKind::LmHeadDelta { rank, alpha } = head.kind else { return Ok(model.clone()) };
        let w = model.lm_head_weight();
        let delta = (head.second.as_tensor().matmul(head.first.as_tensor())? * (alpha / rank as f64))?;
        let mut m = model.clone();
        m.lm_head = Some((w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?);
        Ok(m)
    }

    /// Writes `heads.safetensors` and `heads.json` into `dir` (atomically).
    pub fn save_heads(&self, dir: &Path, model: &Llama, base_name: &str) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut tensors = Vec::new();
        let mut entries = Vec::new();
        for (i, h) in self.heads.iter().enumerate() {
            let names = tensor_names(i, &h.kind);
            tensors.push((names[0].clone(), h.first.as_tensor().clone()));
            tensors.push((names[1].clone(), h.second.as_tensor().clone()));
            entries.push(HeadEntry { task: h.task.clone(), kind: h.kind.clone(), tensors: names });
        }
        persist::write_safetensors(&dir.join(HEADS_FILE), &tensors, None)?;
        let manifest = HeadsManifest {
            format: "multitune-heads".into(),
            version: 1,
            base_model: base_name.into(),
            hidden_size: model.cfg.hidden_size,
            vocab_size: model.cfg.vocab_size,
            usage: BTreeMap::from([
                (
                    "classifier".into(),
                    "probs = softmax(h @ weight.T + bias), h = the final-normed hidden state of the last prompt token \
                     (with the shared LoRA adapter applied)"
                        .into(),
                ),
                (
                    "lm_head_delta".into(),
                    "logits = h @ lm_head.T + (alpha / rank) * (h @ lora_A.T) @ lora_B.T, h = final-normed hidden states"
                        .into(),
                ),
            ]),
            heads: entries,
        };
        persist::write_atomic(&dir.join(HEADS_JSON), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
        Ok(())
    }

    /// Reads heads saved by [`MultiHead::save_heads`], checking their shapes against `model`.
    pub fn load_heads(dir: &Path, model: &Llama) -> Result<Vec<TaskHead>> {
        let text = std::fs::read_to_string(dir.join(HEADS_JSON))
            .map_err(|e| Error::Adapter(format!("{}: {e}", dir.join(HEADS_JSON).display())))?;
        let m: HeadsManifest = serde_json::from_str(&text)
            .map_err(|e| Error::Adapter(format!("{}: {e}", dir.join(HEADS_JSON).display())))?;
        if m.format != "multitune-heads" || m.version != 1 {
            return Err(Error::Adapter(format!("{}: not a version 1 multitune-heads file", HEADS_JSON)));
        }
        if m.hidden_size != model.cfg.hidden_size || m.vocab_size != model.cfg.vocab_size {
            return Err(Error::Adapter(format!(
                "heads were trained for hidden size {} and vocabulary {}, the model has {} and {}",
                m.hidden_size, m.vocab_size, model.cfg.hidden_size, model.cfg.vocab_size
            )));
        }
        let (tensors, _) = persist::read_safetensors(&dir.join(HEADS_FILE), model.device())?;
        m.heads
            .into_iter()
            .map(|e| {
                let get = |n: &str| {
                    tensors.get(n).cloned().ok_or_else(|| Error::Adapter(format!("{HEADS_FILE} lacks `{n}`")))
                };
                let (first, second) = (get(&e.tensors[0])?, get(&e.tensors[1])?);
                let h = model.cfg.hidden_size;
                let ok = match &e.kind {
                    HeadKind::Classifier { labels } => {
                        first.dims() == [labels.len(), h] && second.dims() == [labels.len()]
                    }
                    HeadKind::LmHeadDelta { rank, .. } => {
                        first.dims() == [*rank, h] && second.dims() == [model.cfg.vocab_size, *rank]
                    }
                };
                if !ok {
                    return Err(Error::Adapter(format!("head of `{}` has the wrong shape", e.task)));
                }
                Ok(TaskHead {
                    task: e.task,
                    kind: e.kind,
                    first: Var::from_tensor(&first)?,
                    second: Var::from_tensor(&second)?,
                })
            })
            .collect()
    }

    /// The classifier's log-probabilities `(N, labels)` for prompts (token ids). Where the
    /// model packs, the prompts run prefix-shared (their common system prompt and
    /// instruction once) and unpadded; otherwise as a left-padded batch.
    pub fn classify(&self, model: &Llama, t: usize, prompts: &[Vec<u32>], pad: u32) -> Result<Tensor> {
        let fwd = Forward::eval(Some(&self.adapter));
        let last = if model.can_pack() && prompts.iter().all(|p| !p.is_empty()) {
            let pack = Arc::new(Pack::new(prompts, true));
            let at: Vec<u32> = pack.rows.iter().filter_map(|r| r.path.last().copied()).collect();
            let n = at.len();
            model.packed_hidden_states(&pack, &fwd)?.index_select(&Tensor::from_vec(at, n, model.device())?, 0)?
        } else {
            let (ids, mask) = model.pad_batch(prompts, pad, true)?;
            last_position(&model.hidden_states(&ids, &mask, &fwd, None)?)?
        };
        let logits = self.heads[t].classify(&last)?;
        ops::log_softmax_last_dim(&logits.to_dtype(DType::F32)?)
    }
}

impl Objective for MultiHead {
    fn vars(&self) -> Vec<Var> {
        let mut v = self.adapter.vars();
        v.extend(self.heads.iter().flat_map(|h| [h.first.clone(), h.second.clone()]));
        v
    }

    fn is_b(&self) -> Vec<bool> {
        let mut v = self.adapter.is_b();
        v.extend(self.heads.iter().flat_map(|_| [false, false]));
        v
    }

    fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = self.adapter.named_tensors();
        for (i, h) in self.heads.iter().enumerate() {
            let [a, b] = tensor_names(i, &h.kind);
            v.push((a, h.first.as_tensor().clone()));
            v.push((b, h.second.as_tensor().clone()));
        }
        v
    }

    fn loss_items(&self, batch: &Batch, examples: &[usize]) -> usize {
        examples.iter().zip(&batch.per_example).map(|(&i, &k)| if self.routes[i].label.is_some() { 1 } else { k }).sum()
    }

    /// Each head's terms are its task's: the groups are the heads.
    fn loss(&self, model: &Llama, batch: &Batch, examples: &[usize], seed: u64, micro: u64) -> Result<BatchLoss> {
        let (flat, at) = model.batch_hidden(batch, &Forward::train(&self.adapter, seed, micro))?;
        let positions: Vec<u32> = at.to_vec1()?;
        let targets: Vec<u32> = batch.targets.to_vec1()?;
        // Per head: the rows it reads and what it should predict there.
        let mut per_head: Vec<(Vec<u32>, Vec<u32>)> = vec![(vec![], vec![]); self.heads.len()];
        let mut at = 0;
        for (&i, &k) in examples.iter().zip(&batch.per_example) {
            let r = self.routes[i];
            let (rows, want) = &mut per_head[r.task];
            match r.label {
                // The final span's first loss position is the last prompt token.
                Some(label) => {
                    rows.push(positions[at + k - r.completion_len]);
                    want.push(label as u32);
                }
                None => {
                    rows.extend_from_slice(&positions[at..at + k]);
                    want.extend_from_slice(&targets[at..at + k]);
                }
            }
            at += k;
        }
        let dev = model.device();
        let mut total: Option<Tensor> = None;
        let mut items = 0usize;
        let mut groups = Vec::new();
        for (task, (head, (rows, want))) in self.heads.iter().zip(per_head).enumerate() {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let hs = flat.index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
            let logits = match head.kind {
                HeadKind::Classifier { .. } => head.classify(&hs)?,
                HeadKind::LmHeadDelta { .. } => (model.logits(&hs)? + head.lm_delta(&hs)?)?,
            };
            let ce = (ops::cross_entropy(&logits, &Tensor::from_vec(want, n, dev)?)? * n as f64)?;
            let sum = ce.detach().to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            groups.push(GroupTerms { group: task, sum, terms: n });
            items += n;
            total = Some(match total {
                Some(t) => (t + ce)?,
                None => ce,
            });
        }
        let total = total.ok_or_else(|| Error::Invalid("a batch with no loss terms".into()))?;
        Ok(BatchLoss { mean: (total / items as f64)?, groups })
    }
}

/// How a multi-head run answers a prompt for one of its tasks.
#[derive(Debug, Clone)]
pub enum Answer {
    /// A classifier task: every label with its probability, the most likely first.
    Labels(Vec<(String, f64)>),
    /// A generation task: the base model with the task's LM-head delta folded in, to
    /// generate from with the shared adapter.
    Generate(Box<Llama>),
}

impl MultiHead {
    /// A saved multi-head run: the adapter and the heads beside it in `dir`.
    pub fn load(dir: &Path, model: &Llama) -> Result<Self> {
        let adapter = crate::adapter::peft::load_adapter(dir, &model.cfg, model.device())?;
        Ok(Self { adapter, heads: Self::load_heads(dir, model)?, routes: vec![] })
    }

    /// Answers `prompt` for the task named `task` through its head (`None` when the run
    /// has no head of that name): a classifier ranks its labels, a generation task gets
    /// its own LM head.
    pub fn answer(
        &self,
        model: &Llama,
        tok: &TextTokenizer,
        task: &str,
        system: Option<&str>,
        prompt: &str,
    ) -> Result<Option<Answer>> {
        let Some(t) = self.heads.iter().position(|h| h.task == task) else { return Ok(None) };
        let HeadKind::Classifier { labels } = &self.heads[t].kind else {
            return Ok(Some(Answer::Generate(Box::new(self.model_for(model, t)?))));
        };
        let ids = tok.encode(&data::render_prompt(tok, system, prompt)?)?;
        let logp: Vec<Vec<f32>> = self.classify(model, t, &[ids], tok.pad_id)?.to_vec2()?;
        let mut probs: Vec<(String, f64)> =
            labels.iter().cloned().zip(logp[0].iter().map(|&l| f64::from(l).exp())).collect();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Some(Answer::Labels(probs)))
    }
}

/// Scores task `t` of a multi-head model on `records`: a classifier task by its head
/// (accuracy, macro-F1, confusion; loss is the head's cross-entropy), a generation task
/// by generating with its LM-head delta.
pub fn evaluate_task(
    mh: &MultiHead,
    model: &Llama,
    tok: &TextTokenizer,
    t: usize,
    records: &[Record],
    opts: &EvalOptions,
) -> Result<TaskEval> {
    let head = &mh.heads[t];
    let HeadKind::Classifier { labels } = &head.kind else {
        let m = mh.model_for(model, t)?;
        let task = TaskSpec { name: head.task.clone(), kind: TaskKind::Generation, labels: vec![] };
        return eval::evaluate_task(&m, tok, Some(&mh.adapter), &task, records, opts, &mut |_, _| {});
    };
    let system = opts.system.as_deref();
    let n = records.len();
    let mut predictions = Vec::with_capacity(n);
    let mut nll = Vec::with_capacity(n);
    let prompts: Vec<Vec<u32>> = records
        .iter()
        .map(|r| {
            let e: Example = data::encode(tok, r, system, opts.max_seq_len)?;
            Ok(e.ids[..e.prompt_len].to_vec())
        })
        .collect::<Result<_>>()?;
    let order: Vec<usize> = (0..n).collect();
    let len = |i: usize| prompts[i].len();
    let fill = if model.can_pack() { eval::Fill::Packed } else { eval::Fill::Padded };
    for chunk in eval::token_batches(&order, len, opts.batch_size, eval::SCORING_BATCH_TOKENS, fill) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        let logp: Vec<Vec<f32>> = mh.classify(model, t, &batch, tok.pad_id)?.to_vec2()?;
        for (r, row) in chunk.iter().map(|&i| &records[i]).zip(logp) {
            let best = row.iter().enumerate().fold(0, |b, (j, v)| if *v > row[b] { j } else { b });
            let truth = labels.iter().position(|l| *l == r.completion);
            nll.push(truth.map_or(f64::NAN, |j| -f64::from(row[j])));
            predictions.push(Prediction {
                prompt: r.prompt.clone(),
                reference: r.completion.clone(),
                output: labels[best].clone(),
                correct: labels[best] == r.completion,
                label_scores: row.iter().map(|&v| f64::from(v)).collect(),
            });
        }
    }
    let known: Vec<f64> = nll.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
    let loss = bootstrap_interval(n, opts.bootstrap, opts.seed, mean_of(&known));
    let perplexity = Estimate { value: loss.value.exp(), lo: loss.lo.exp(), hi: loss.hi.exp() };
    let (metrics, c) = eval::classification_metrics(&predictions, labels, opts);
    Ok(TaskEval {
        task: head.task.clone(),
        kind: TaskKind::Classification,
        examples: n,
        loss,
        perplexity,
        metrics,
        confusion: Some(c),
        predictions,
    })
}

/// The first token of each label's completion as training encodes it (what a classifier
/// row starts from).
pub fn label_first_tokens(tok: &TextTokenizer, labels: &[String], system: Option<&str>) -> Result<Vec<u32>> {
    labels
        .iter()
        .map(|l| {
            let e = data::encode(tok, &Record::new("x", l.clone()), system, 4096)?;
            Ok(e.ids[e.prompt_len])
        })
        .collect()
}

/// Routes for `examples` drawn as `(task, index)` pairs from `tasks`' training records.
pub fn routes(
    draws: &[(usize, usize)],
    examples: &[Example],
    labels: &[Vec<String>],
    train: &[Vec<Record>],
) -> Result<Vec<Route>> {
    draws
        .iter()
        .zip(examples)
        .map(|(&(t, i), e)| {
            let label = if labels[t].is_empty() {
                None
            } else {
                let c = &train[t][i].completion;
                Some(labels[t].iter().position(|l| l == c).ok_or_else(|| {
                    Error::Invalid(format!("training label `{c}` is not in the label set of task {t}"))
                })?)
            };
            Ok(Route { task: t, label, completion_len: e.completion_len() })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::lora::{randomize, LoraConfig};

    /// A classifier head scores prefix-shared, unpadded prompts as it scores them one
    /// left-padded batch.
    #[test]
    fn packed_classification_matches_the_padded_batch() {
        let (model, _) = crate::model::tiny_model(4, &Device::Cpu).unwrap();
        assert!(model.can_pack());
        let adapter = LoraAdapter::new(&model.cfg, LoraConfig::default(), 1, &Device::Cpu).unwrap();
        randomize(&adapter, 2, 0.05);
        let labels = vec!["no".to_string(), "yes".to_string(), "maybe".to_string()];
        let head = TaskHead::classifier(&model, "t", &labels, &[7, 9, 11]).unwrap();
        let mh = MultiHead { adapter, heads: vec![head], routes: vec![] };
        let prompts = vec![vec![1, 2, 3, 4, 5], vec![1, 2, 3, 9], vec![1, 2, 8, 8, 8, 8, 8], vec![6]];
        let packed = mh.classify(&model, 0, &prompts, 0).unwrap();
        let (ids, mask) = model.pad_batch(&prompts, 0, true).unwrap();
        let h = model.hidden_states(&ids, &mask, &Forward::eval(Some(&mh.adapter)), None).unwrap();
        let logits = mh.heads[0].classify(&last_position(&h).unwrap()).unwrap();
        let padded = ops::log_softmax_last_dim(&logits).unwrap();
        assert_eq!(packed.dims(), &[4, 3]);
        assert!(crate::model::max_abs_diff(&packed, &padded).unwrap() < 1e-4);
    }
}
