//! Scoring a model (with or without an adapter) on a task's held-out examples, with the
//! metric that fits the task:
//!
//! - classification: every label is scored by the model's log-likelihood of the label
//!   completion (optionally per token) and the best one is the prediction — no parsing
//!   of free text; accuracy, macro-F1 and the confusion matrix;
//! - generation: greedy decoding; exact match (normalised), token F1, ROUGE-L;
//! - every task: completion loss and perplexity.
//!
//! Every metric carries a seeded 95% bootstrap interval.

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::{self, Example, Record};
use crate::data::{TaskKind, TaskSpec};
use crate::eval::generate::{generate_and_score, generate_batch, GenerateConfig};
use crate::eval::metrics::bootstrap::mean_of;
use crate::eval::metrics::{bootstrap_interval, Confusion, Estimate, ExactMatch, Metric, RougeL, TokenF1};
use crate::kernels::pack::Pack;
use crate::model::lora::LoraAdapter;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{last_position, Forward, KvCache, Llama};
use crate::ops;
use crate::{Error, Result};

/// One scored example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The prompt.
    pub prompt: String,
    /// The reference completion.
    pub reference: String,
    /// The predicted label or generated text.
    pub output: String,
    /// Whether it matches (exact, after normalisation for generation).
    pub correct: bool,
    /// Per-label log-likelihood scores (classification).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_scores: Vec<f64>,
}

/// How to evaluate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalOptions {
    /// Task instruction / system prompt.
    pub system: Option<String>,
    /// Longest example, in tokens.
    pub max_seq_len: usize,
    /// Most examples per batch of label ranking and of the loss pass (fewer when they are
    /// long: a batch holds at most [`SCORING_BATCH_TOKENS`] tokens). Each batch runs the
    /// prompts' shared template once and reads every weight once, so wide batches are
    /// cheap (the README's *Evaluation throughput* has the figures).
    pub batch_size: usize,
    /// Most prompts decoded together in a generation task (fewer when they are long: a
    /// batch holds at most [`GENERATION_BATCH_TOKENS`] prompt tokens). Decoding reads
    /// every weight once per step for the whole batch, so wide batches are cheap.
    pub generation_batch: usize,
    /// Rank labels by mean (not total) log-likelihood per token.
    pub length_normalise: bool,
    /// Bootstrap resamples (0: no intervals).
    pub bootstrap: usize,
    /// Bootstrap seed.
    pub seed: u64,
    /// A search's quick score: a generation task's answers end where they leave their
    /// reference ([`GenerateConfig::follow_only`]) — one teacher-forced pass, no decoding;
    /// exact match is then a lower bound (an answer that leaves its reference's tokens
    /// is not counted right), the loss is exact. Classification is unchanged (label
    /// ranking is one pass already).
    pub follow_only: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            system: None,
            max_seq_len: multitune_api::defaults::MAX_TOKENS,
            batch_size: 128,
            generation_batch: 64,
            length_normalise: false,
            bootstrap: multitune_api::defaults::BOOTSTRAP,
            seed: 0,
            follow_only: false,
        }
    }
}

/// The most prompt tokens (rows × longest prompt) one generation batch prefills.
pub const GENERATION_BATCH_TOKENS: usize = 8192;

/// The most tokens one label-ranking or loss batch holds: every example's tokens (a
/// ranked prompt with the tokens of all its labels) before prefix sharing, or rows ×
/// longest where batches are padded.
pub const SCORING_BATCH_TOKENS: usize = 8192;

/// Scores on one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEval {
    /// Task name.
    pub task: String,
    /// Its kind.
    pub kind: TaskKind,
    /// Examples scored.
    pub examples: usize,
    /// Mean NLL per completion token, with interval.
    pub loss: Estimate,
    /// `exp(loss)`, with interval.
    pub perplexity: Estimate,
    /// The task's metrics by name (`accuracy`, `macro_f1` or `exact_match`, `token_f1`,
    /// `rouge_l`), with intervals.
    pub metrics: Vec<(String, Estimate)>,
    /// Confusion matrix (classification).
    pub confusion: Option<Confusion>,
    /// Every prediction.
    pub predictions: Vec<Prediction>,
}

impl TaskEval {
    /// The main metric: accuracy for classification, exact match for generation.
    pub fn headline(&self) -> (&str, Estimate) {
        let (n, e) = &self.metrics[0];
        (n.as_str(), *e)
    }

    /// A metric by name.
    pub fn metric(&self, name: &str) -> Option<Estimate> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, e)| *e)
    }
}

/// Per-example completion NLL sums and token counts, in batches. Examples are batched
/// by length (longest first) so that little compute goes to padding; the results come
/// back in the input order.
pub fn completion_nll(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    examples: &[Example],
    batch_size: usize,
) -> Result<Vec<(f64, usize)>> {
    let fwd = Forward::eval(adapter);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    if model.can_pack() {
        // Packed batches share prefixes: neighbours in token order share the most.
        order.sort_by(|&a, &b| examples[a].ids.cmp(&examples[b].ids));
    } else {
        // Padded batches waste least when rows of one batch have similar lengths.
        order.sort_by_key(|&i| std::cmp::Reverse(examples[i].ids.len()));
    }
    let mut out = vec![(0.0, 0); examples.len()];
    let fill = if model.can_pack() { Fill::Packed } else { Fill::Padded };
    for chunk in token_batches(&order, |i| examples[i].ids.len(), batch_size, SCORING_BATCH_TOKENS, fill) {
        let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
        let batch = data::make_batch(&refs, 0, model.device())?;
        if batch.loss_tokens == 0 {
            continue;
        }
        let (hidden, at) = model.batch_hidden(&batch, &fwd)?;
        let picked = hidden.index_select(&at, 0)?;
        let nll: Vec<f64> = model.token_nll(&picked, &batch.targets)?.to_dtype(DType::F64)?.to_vec1()?;
        let mut at = 0;
        for (&i, &k) in chunk.iter().zip(&batch.per_example) {
            out[i] = (nll[at..at + k].iter().sum(), k);
            at += k;
        }
    }
    Ok(out)
}

/// Mean completion-token NLL over `examples` and the token count.
pub fn completion_loss(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    examples: &[Example],
    batch_size: usize,
) -> Result<(f64, usize)> {
    let per = completion_nll(model, adapter, examples, batch_size)?;
    let (s, n) = per.iter().fold((0.0, 0), |(s, n), (a, b)| (s + a, n + b));
    Ok((if n == 0 { 0.0 } else { s / n as f64 }, n))
}

/// Log-likelihood of each label's completion tokens after each prompt: `out[i][l]` is
/// `(sum of log-probabilities, token count)`. Each prompt runs once per batch: packed
/// with shared prefixes ([`crate::kernels::pack`]) where the model can — every label a row after
/// its prompt, the prompts' common template once as well — else through a KV cache
/// that every label continues from.
pub fn label_log_likelihoods(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    prompts: &[Vec<u32>],
    labels: &[Vec<u32>],
    pad: u32,
    batch_size: usize,
) -> Result<Vec<Vec<(f64, usize)>>> {
    let fwd = Forward::eval(adapter);
    let mut out = Vec::with_capacity(prompts.len());
    if model.can_pack() && !labels.iter().any(Vec::is_empty) {
        for chunk in prompts.chunks(batch_size.max(1)) {
            // Row (prompt, label) reads prompt + label[..k-1]; positions |prompt|-1 ..
            // predict the label's k tokens.
            let mut rows = Vec::with_capacity(chunk.len() * labels.len());
            for p in chunk {
                if p.is_empty() {
                    return Err(crate::Error::Invalid("label ranking: empty prompt".into()));
                }
                for l in labels {
                    rows.push([p.as_slice(), &l[..l.len() - 1]].concat());
                }
            }
            let pack = std::sync::Arc::new(Pack::new(&rows, true));
            let (mut at, mut targets) = (Vec::new(), Vec::new());
            for (r, row) in pack.rows.iter().enumerate() {
                let (p, l) = (&chunk[r / labels.len()], &labels[r % labels.len()]);
                at.extend(row.path[p.len() - 1..].iter().copied());
                targets.extend_from_slice(l);
            }
            let dev = model.device();
            let n = at.len();
            let hidden = model.packed_hidden_states(&pack, &fwd)?.index_select(&Tensor::from_vec(at, n, dev)?, 0)?;
            let nll: Vec<f32> = model.token_nll(&hidden, &Tensor::from_vec(targets, n, dev)?)?.to_vec1()?;
            let mut nll = nll.into_iter();
            for _ in chunk {
                out.push(
                    labels.iter().map(|l| (-nll.by_ref().take(l.len()).map(f64::from).sum::<f64>(), l.len())).collect(),
                );
            }
        }
        return Ok(out);
    }
    for chunk in prompts.chunks(batch_size.max(1)) {
        let b = chunk.len();
        let (ids, mask) = model.pad_batch(chunk, pad, true)?;
        let mut cache = KvCache::new(model, b);
        let h = model.hidden_states(&ids, &mask, &fwd, Some(&mut cache))?;
        let first = ops::log_softmax_last_dim(&model.logits(&last_position(&h)?)?.to_dtype(DType::F32)?)?; // (B, V)
        let mut rows = vec![Vec::with_capacity(labels.len()); b];
        for label in labels {
            let t0 = Tensor::from_vec(vec![label[0]; b], (b, 1), model.device())?;
            let mut total = first.gather(&t0, 1)?.squeeze(1)?.to_dtype(DType::F64)?;
            if label.len() > 1 {
                let mut c = cache.clone();
                let k = label.len() - 1;
                let input: Vec<u32> = (0..b).flat_map(|_| label[..k].iter().copied()).collect();
                let input = Tensor::from_vec(input, (b, k), model.device())?;
                let h2 = model.hidden_states(&input, &vec![vec![1u8; k]; b], &fwd, Some(&mut c))?;
                let lp = ops::log_softmax_last_dim(&model.logits(&h2)?.to_dtype(DType::F32)?)?; // (B, k, V)
                let next: Vec<u32> = (0..b).flat_map(|_| label[1..].iter().copied()).collect();
                let next = Tensor::from_vec(next, (b, k, 1), model.device())?;
                let rest = lp.gather(&next, D::Minus1)?.squeeze(D::Minus1)?.sum(1)?.to_dtype(DType::F64)?;
                total = (total + rest)?;
            }
            let v: Vec<f64> = total.to_vec1()?;
            for (row, s) in rows.iter_mut().zip(v) {
                row.push((s, label.len()));
            }
        }
        out.extend(rows);
    }
    Ok(out)
}

/// The tokens each label adds after a prompt: what training teaches as the completion
/// (the label and the end-of-turn marker of a chat template).
pub fn label_token_ids(
    tok: &TextTokenizer,
    labels: &[String],
    system: Option<&str>,
    max_len: usize,
) -> Result<Vec<Vec<u32>>> {
    labels
        .iter()
        .map(|l| {
            let e = data::encode(tok, &Record::new("x", l.clone()), system, max_len)?;
            Ok(e.ids[e.prompt_len..].to_vec())
        })
        .collect()
}

/// Accuracy and macro-F1 (with bootstrap intervals) and the confusion matrix of
/// classification predictions.
pub fn classification_metrics(
    predictions: &[Prediction],
    labels: &[String],
    opts: &EvalOptions,
) -> (Vec<(String, Estimate)>, Confusion) {
    let n = predictions.len();
    let hits: Vec<f64> = predictions.iter().map(|p| f64::from(u8::from(p.correct))).collect();
    let mut metrics = vec![("accuracy".to_string(), bootstrap_interval(n, opts.bootstrap, opts.seed, mean_of(&hits)))];
    let f1 = |idx: &[usize]| {
        let mut c = Confusion::new(labels);
        idx.iter().for_each(|&i| c.update(&predictions[i].output, &predictions[i].reference));
        c.compute()
    };
    metrics.push(("macro_f1".to_string(), bootstrap_interval(n, opts.bootstrap, opts.seed, f1)));
    let mut c = Confusion::new(labels);
    predictions.iter().for_each(|p| c.update(&p.output, &p.reference));
    (metrics, c)
}

/// How a batch's tokens are counted against its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Every item's own tokens (packed batches: no padding).
    Packed,
    /// Rows × the longest item (padded batches).
    Padded,
}

/// Batches over `order`: consecutive runs of at most `rows` items and `tokens` tokens
/// (`len(i)` each, counted as `fill` says); an item longer than `tokens` is a batch of
/// its own.
pub fn token_batches(
    order: &[usize],
    len: impl Fn(usize) -> usize,
    rows: usize,
    tokens: usize,
    fill: Fill,
) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    let mut cur: Vec<usize> = Vec::new();
    let (mut longest, mut sum) = (0, 0);
    for &i in order {
        let l = len(i);
        let size = match fill {
            Fill::Packed => sum + l,
            Fill::Padded => (cur.len() + 1) * longest.max(l),
        };
        if !cur.is_empty() && (cur.len() >= rows.max(1) || size > tokens) {
            out.push(std::mem::take(&mut cur));
            (longest, sum) = (0, 0);
        }
        longest = longest.max(l);
        sum += l;
        cur.push(i);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Generation batches over `order` (prompts sorted by length): consecutive runs of at
/// most `rows` prompts and [`GENERATION_BATCH_TOKENS`] padded prompt tokens.
pub fn generation_batches(order: &[usize], prompt_len: impl Fn(usize) -> usize, rows: usize) -> Vec<Vec<usize>> {
    token_batches(order, prompt_len, rows, GENERATION_BATCH_TOKENS, Fill::Padded)
}

/// Evaluates one task on `records`.
///
/// The completion loss comes from the pass that scores the task where it can: for
/// classification the reference label's log-likelihood is one the ranking computes; for
/// generation the reference is teacher-forced from each prompt's cache before decoding.
/// Only examples these cannot cover (multi-turn rows with loss on earlier turns) get a
/// loss pass of their own.
pub fn evaluate_task(
    model: &Llama,
    tok: &TextTokenizer,
    adapter: Option<&LoraAdapter>,
    task: &TaskSpec,
    records: &[Record],
    opts: &EvalOptions,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<TaskEval> {
    // Out of device memory, the task is scored again with half the batches (the scores
    // do not depend on how examples are batched), down to one example at a time.
    let mut opts = opts.clone();
    loop {
        let what = Scoring { model, tok, adapter, task, records };
        match score_task(&what, &opts, on_progress) {
            Err(e) if e.is_out_of_memory() && (opts.batch_size > 1 || opts.generation_batch > 1) => {
                opts.batch_size = (opts.batch_size / 2).max(1);
                opts.generation_batch = (opts.generation_batch / 2).max(1);
            }
            Err(e) if e.is_out_of_memory() => {
                return Err(Error::Invalid(format!(
                    "out of device memory scoring task `{}` one example at a time: lower --max-tokens (now {}) \
                     or pick a smaller model",
                    task.name, opts.max_seq_len
                )))
            }
            other => return other,
        }
    }
}

/// What [`evaluate_task`] scores: the model with its adapter, and the task's records.
#[derive(Clone, Copy)]
struct Scoring<'a> {
    model: &'a Llama,
    tok: &'a TextTokenizer,
    adapter: Option<&'a LoraAdapter>,
    task: &'a TaskSpec,
    records: &'a [Record],
}

/// [`evaluate_task`] with these batch sizes.
fn score_task(what: &Scoring, opts: &EvalOptions, on_progress: &mut dyn FnMut(usize, usize)) -> Result<TaskEval> {
    let Scoring { model, tok, adapter, task, records } = *what;
    let (kind, labels) = (task.kind, task.labels.as_slice());
    let system = opts.system.as_deref();
    let examples: Vec<Example> =
        records.iter().map(|r| data::encode(tok, r, system, opts.max_seq_len)).collect::<Result<_>>()?;
    let n = records.len();
    let bs = opts.batch_size.max(1);
    let mut nll: Vec<Option<(f64, usize)>> = vec![None; n];
    let completion = |e: &Example| e.extra_loss.is_empty().then(|| e.ids[e.prompt_len..].to_vec());
    let mut predictions = Vec::with_capacity(n);
    let mut metrics = Vec::new();
    let mut confusion = None;
    match kind {
        TaskKind::Classification => {
            // A label's tokens are what training teaches after the prompt: the label and
            // the end-of-turn marker.
            let label_ids = label_token_ids(tok, labels, system, opts.max_seq_len)?;
            // A ranked prompt brings every label's tokens along.
            let label_tokens: usize = label_ids.iter().map(Vec::len).sum();
            let fill = if model.can_pack() { Fill::Packed } else { Fill::Padded };
            let order: Vec<usize> = (0..n).collect();
            let len = |i: usize| examples[i].prompt_len + label_tokens;
            for chunk in token_batches(&order, len, bs, SCORING_BATCH_TOKENS, fill) {
                let prompts: Vec<Vec<u32>> =
                    chunk.iter().map(|&i| examples[i].ids[..examples[i].prompt_len].to_vec()).collect();
                let scores = label_log_likelihoods(model, adapter, &prompts, &label_ids, tok.pad_id, chunk.len())?;
                for (&at, row) in chunk.iter().zip(scores) {
                    let r = &records[at];
                    if let Some(c) = completion(&examples[at]) {
                        if let Some(j) = label_ids.iter().position(|l| *l == c) {
                            nll[at] = Some((-row[j].0, row[j].1));
                        }
                    }
                    let s: Vec<f64> =
                        row.iter().map(|&(s, k)| if opts.length_normalise { s / k as f64 } else { s }).collect();
                    let best = s.iter().enumerate().fold(0, |b, (j, v)| if *v > s[b] { j } else { b });
                    let output = labels[best].clone();
                    predictions.push(Prediction {
                        prompt: r.prompt.clone(),
                        reference: r.completion.clone(),
                        correct: output == r.completion,
                        output,
                        label_scores: s,
                    });
                }
                on_progress(predictions.len(), n);
            }
            let (m, c) = classification_metrics(&predictions, labels, opts);
            metrics = m;
            confusion = Some(c);
        }
        TaskKind::Generation => {
            let max_new = examples.iter().map(Example::completion_len).max().unwrap_or(1) + 16;
            let cfg = GenerateConfig { max_new_tokens: max_new, follow_only: opts.follow_only, ..Default::default() };
            // Batches of similar prompt length pad little; answers return in task order.
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| examples[i].prompt_len);
            let mut outputs: Vec<Option<String>> = vec![None; n];
            let mut done = 0;
            for chunk in generation_batches(&order, |i| examples[i].prompt_len, opts.generation_batch.max(1)) {
                let prompts: Vec<Vec<u32>> =
                    chunk.iter().map(|&i| examples[i].ids[..examples[i].prompt_len].to_vec()).collect();
                // Rows whose reference the decode scores (single-turn ones).
                let scored: Vec<usize> =
                    (0..chunk.len()).filter(|&r| completion(&examples[chunk[r]]).is_some()).collect();
                let outs = if scored.len() == chunk.len() {
                    let refs: Vec<Vec<u32>> =
                        chunk.iter().map(|&i| examples[i].ids[examples[i].prompt_len..].to_vec()).collect();
                    let (outs, scores) =
                        generate_and_score(model, adapter, &prompts, &refs, &tok.eos_ids, tok.pad_id, &cfg)?;
                    for (&i, s) in chunk.iter().zip(scores) {
                        nll[i] = Some(s);
                    }
                    outs
                } else {
                    generate_batch(model, adapter, &prompts, &tok.eos_ids, tok.pad_id, &cfg, &mut |_, _| {})?
                };
                for (&i, o) in chunk.iter().zip(outs) {
                    outputs[i] = Some(tok.decode(&o, true)?);
                }
                done += chunk.len();
                on_progress(done, n);
            }
            for (r, output) in records.iter().zip(outputs) {
                let output = output.unwrap_or_default();
                let correct = ExactMatch::score(&output, &r.completion) == 1.0;
                predictions.push(Prediction {
                    prompt: r.prompt.clone(),
                    reference: r.completion.clone(),
                    output,
                    correct,
                    label_scores: vec![],
                });
            }
            let per =
                |f: fn(&str, &str) -> f64| predictions.iter().map(|p| f(&p.output, &p.reference)).collect::<Vec<f64>>();
            for (name, scores) in [
                ("exact_match", per(ExactMatch::score)),
                ("token_f1", per(TokenF1::score)),
                ("rouge_l", per(RougeL::score)),
            ] {
                metrics.push((name.to_string(), bootstrap_interval(n, opts.bootstrap, opts.seed, mean_of(&scores))));
            }
        }
    }
    // The loss of what the scoring pass did not cover.
    let missing: Vec<usize> = (0..n).filter(|&i| nll[i].is_none()).collect();
    if !missing.is_empty() {
        let rest: Vec<Example> = missing.iter().map(|&i| examples[i].clone()).collect();
        for (&i, v) in missing.iter().zip(completion_nll(model, adapter, &rest, bs)?) {
            nll[i] = Some(v);
        }
    }
    let nll: Vec<(f64, usize)> = nll.into_iter().map(Option::unwrap_or_default).collect();
    let loss_of = |idx: &[usize]| {
        let (s, n) = idx.iter().fold((0.0, 0usize), |(s, n), &i| (s + nll[i].0, n + nll[i].1));
        if n == 0 {
            0.0
        } else {
            s / n as f64
        }
    };
    let loss = bootstrap_interval(n, opts.bootstrap, opts.seed, loss_of);
    let perplexity = Estimate { value: loss.value.exp(), lo: loss.lo.exp(), hi: loss.hi.exp() };
    Ok(TaskEval { task: task.name.clone(), kind, examples: n, loss, perplexity, metrics, confusion, predictions })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::lora::LoraConfig;
    use crate::model::tiny_model;

    /// Label ranking packed (each prompt and the shared template once) against the KV-
    /// cache path of the same model in f64, labels of one and several tokens.
    #[test]
    fn packed_label_ranking_matches_the_cached_path() {
        let (model, _) = tiny_model(4, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 2, &Device::Cpu).unwrap();
        crate::model::lora::randomize(&ad, 3, 0.1);
        let prompts = vec![vec![5u32, 6, 7, 8], vec![5, 6, 9], vec![40, 41, 42, 43, 44], vec![5, 6, 7]];
        let labels = vec![vec![100u32], vec![101, 102, 103], vec![100, 104]];
        assert!(model.can_pack());
        let packed = label_log_likelihoods(&model, Some(&ad), &prompts, &labels, 0, 3).unwrap();
        let model64 = model.to_dtype(DType::F64).unwrap();
        let ad64 = ad.to_dtype(DType::F64).unwrap();
        assert!(!model64.can_pack());
        let cached = label_log_likelihoods(&model64, Some(&ad64), &prompts, &labels, 0, 3).unwrap();
        assert_eq!(packed.len(), prompts.len());
        for (p, c) in packed.iter().flatten().zip(cached.iter().flatten()) {
            assert_eq!(p.1, c.1);
            assert!((p.0 - c.0).abs() < 1e-4 * c.0.abs().max(1.0), "{} packed, {} cached", p.0, c.0);
        }
    }

    /// The loss `evaluate_task` takes from its scoring pass (label ranking,
    /// teacher-forced references) equals a loss pass of its own, for both kinds of task.
    #[test]
    fn the_loss_from_scoring_equals_a_loss_pass() {
        let (model, tok) = tiny_model(6, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 2, &Device::Cpu).unwrap();
        crate::model::lora::randomize(&ad, 5, 0.1);
        let opts = EvalOptions { bootstrap: 0, batch_size: 3, generation_batch: 4, ..Default::default() };
        let labels = vec!["yes".to_string(), "no".to_string(), "maybe".to_string()];
        let class: Vec<Record> = (0..7).map(|i| Record::new(format!("is {i} even?"), labels[i % 3].clone())).collect();
        let gen: Vec<Record> = (0..6).map(|i| Record::new(format!("say {i}"), format!("{}", i * 7))).collect();
        for (kind, recs, labels) in
            [(TaskKind::Classification, &class, labels.clone()), (TaskKind::Generation, &gen, vec![])]
        {
            let spec = TaskSpec { name: "t".into(), kind, labels };
            let e = evaluate_task(&model, &tok, Some(&ad), &spec, recs, &opts, &mut |_, _| {}).unwrap();
            let ex: Vec<Example> =
                recs.iter().map(|r| data::encode(&tok, r, None, opts.max_seq_len).unwrap()).collect();
            let (want, _) = completion_loss(&model, Some(&ad), &ex, 2).unwrap();
            assert!((e.loss.value - want).abs() < 1e-4 * want.abs().max(1.0), "{kind:?}: {} vs {want}", e.loss.value);
        }
        assert_eq!(
            generation_batches(&[0, 1, 2, 3, 4], |i| [10, 10, 20, 20, 5000][i], 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(generation_batches(&[0, 1], |_| 5000, 64), vec![vec![0], vec![1]]);
    }

    /// Batches hold at most `rows` items and `tokens` tokens, counted packed (the sum) or
    /// padded (rows × longest); an item over the budget goes alone; order is kept.
    #[test]
    fn token_batches_respect_rows_and_tokens() {
        let lens = [30, 30, 50, 10, 200, 5];
        let order: Vec<usize> = (0..lens.len()).collect();
        let len = |i: usize| lens[i];
        assert_eq!(token_batches(&order, len, 128, 90, Fill::Packed), vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]);
        assert_eq!(
            token_batches(&order, len, 128, 90, Fill::Padded),
            vec![vec![0, 1], vec![2], vec![3], vec![4], vec![5]]
        );
        assert_eq!(token_batches(&order, len, 2, 1000, Fill::Packed), vec![vec![0, 1], vec![2, 3], vec![4, 5]]);
        assert_eq!(token_batches(&[5, 3, 0], len, 128, 1000, Fill::Packed), vec![vec![5, 3, 0]]);
        assert!(token_batches(&[], len, 4, 10, Fill::Packed).is_empty());
    }

    /// Scores do not depend on how examples are batched: one example at a time and the
    /// default (every example in one batch) give the same predictions and losses.
    #[test]
    fn scores_do_not_depend_on_batching() {
        let (model, tok) = tiny_model(6, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 2, &Device::Cpu).unwrap();
        crate::model::lora::randomize(&ad, 7, 0.1);
        let labels = vec!["yes".to_string(), "no".to_string(), "maybe".to_string()];
        let recs: Vec<Record> =
            (0..9).map(|i| Record::new(format!("is {i} a prime number?"), labels[i % 3].clone())).collect();
        let spec = TaskSpec { name: "t".into(), kind: TaskKind::Classification, labels };
        let score = |batch_size| {
            let opts = EvalOptions { bootstrap: 0, batch_size, ..Default::default() };
            evaluate_task(&model, &tok, Some(&ad), &spec, &recs, &opts, &mut |_, _| {}).unwrap()
        };
        let (one, all) = (score(1), score(EvalOptions::default().batch_size));
        assert_eq!(
            one.predictions.iter().map(|p| &p.output).collect::<Vec<_>>(),
            all.predictions.iter().map(|p| &p.output).collect::<Vec<_>>()
        );
        for (a, b) in one.predictions.iter().zip(&all.predictions) {
            for (x, y) in a.label_scores.iter().zip(&b.label_scores) {
                assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{x} one at a time, {y} batched");
            }
        }
        assert!((one.loss.value - all.loss.value).abs() < 1e-5 * one.loss.value.abs().max(1.0));
    }
}
