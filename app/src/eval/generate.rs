//! Text generation with a KV cache: greedy or temperature + top-p sampling (seeded),
//! stopping at any end-of-turn id. Batches are left-padded so every row's next token
//! sits in the last column.

use candle_core::{DType, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::model::lora::LoraAdapter;
use crate::model::tokenizer::TextTokenizer;
use crate::model::{last_position, Forward, KvCache, Llama};
use crate::rng::{self, streams};
use crate::Result;

/// Decoding settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GenerateConfig {
    /// Most tokens to produce.
    pub max_new_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass kept when sampling.
    pub top_p: f64,
    /// Sampling seed.
    pub seed: u64,
    /// With references ([`generate_and_score`]): an answer ends where it leaves its
    /// reference (with the token it left by) instead of decoding on — a search's quick
    /// score: the answers that are their reference, and every reference's loss, in one
    /// pass, no decoding step.
    pub follow_only: bool,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self { max_new_tokens: 128, temperature: 0.0, top_p: 1.0, seed: 0, follow_only: false }
    }
}

/// Picks the next token from `logits` (one row).
fn pick(logits: &[f32], cfg: &GenerateConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0usize, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
            .0 as u32
    };
    if cfg.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f64)> =
        logits.iter().enumerate().map(|(i, &l)| (i as u32, (((l - max) as f64) / cfg.temperature).exp())).collect();
    let sum: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= sum);
    probs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = 0;
    let mut mass = 0.0;
    for p in &probs {
        kept += 1;
        mass += p.1;
        if mass >= cfg.top_p {
            break;
        }
    }
    let probs = &probs[..kept];
    let mut r = rng.random::<f64>() * mass;
    for p in probs {
        r -= p.1;
        if r <= 0.0 {
            return p.0;
        }
    }
    probs[kept - 1].0
}

/// The length of the prefix all `prompts` share, leaving every prompt at least one token
/// of its own.
fn shared_prefix(prompts: &[Vec<u32>]) -> usize {
    let Some(first) = prompts.first() else { return 0 };
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
    let mut n = 0;
    while n + 1 < shortest && prompts.iter().all(|p| p[n] == first[n]) {
        n += 1;
    }
    n
}

/// Continues each prompt until an id in `stop` or `max_new_tokens`; returns the new
/// tokens of each row (the stop token excluded). `on_token(row, id)` sees each token as
/// it is produced.
///
/// Two things keep the work to what the answers need: the prefix every prompt shares
/// (a chat template's system prompt and a task's instruction) runs once and its cache is
/// copied to every row, so only the rest of each prompt is prefilled; and a row that has
/// finished leaves the batch (its cache rows are dropped) instead of decoding padding.
pub fn generate_batch(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    prompts: &[Vec<u32>],
    stop: &[u32],
    pad: u32,
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Vec<Vec<u32>>> {
    let job = Job { prompts, references: None, stop, pad };
    Ok(decode(model, adapter, &job, cfg, on_token)?.0)
}

/// [`generate_batch`] that also scores a reference continuation of every prompt: the
/// negative log-likelihood of `references[i]` after `prompts[i]` (its sum and token
/// count). The references are teacher-forced in one pass after the prompts, and each
/// answer is walked along its reference from that pass's logits for as long as it picks
/// the reference's tokens (the same context a decoding step would see, so the same
/// answer); only the answers that leave their reference decode on, step by step, from
/// there. A tuned model's right answers thus cost one batched pass over the reference
/// and no decoding step, and the completion loss comes from the same logits.
pub fn generate_and_score(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    prompts: &[Vec<u32>],
    references: &[Vec<u32>],
    stop: &[u32],
    pad: u32,
    cfg: &GenerateConfig,
) -> Result<Scored> {
    if references.len() != prompts.len() || references.iter().any(Vec::is_empty) {
        return Err(crate::Error::Invalid("every prompt needs a non-empty reference to score".into()));
    }
    let job = Job { prompts, references: Some(references), stop, pad };
    decode(model, adapter, &job, cfg, &mut |_, _| {})
}

/// The new tokens of every prompt, and each reference's negative log-likelihood (sum,
/// tokens) when references were scored.
pub type Scored = (Vec<Vec<u32>>, Vec<(f64, usize)>);

/// The prompts of one decode and what goes with them.
struct Job<'a> {
    prompts: &'a [Vec<u32>],
    /// A continuation of each prompt to score before decoding.
    references: Option<&'a [Vec<u32>]>,
    stop: &'a [u32],
    pad: u32,
}

/// Negative log-likelihood of each reference (sum, tokens) after its prompt: the first
/// token from the prompt's last logits, the rest teacher-forced on a copy of the cache
/// (right-padded and masked, so a row's padding changes nothing it reads).
fn score_references(
    model: &Llama,
    fwd: &Forward,
    cache: &KvCache,
    last_logits: &Tensor,
    references: &[Vec<u32>],
    pad: u32,
) -> Result<Vec<(f64, usize)>> {
    let dev = model.device();
    let b = references.len();
    let first: Vec<u32> = references.iter().map(|r| r[0]).collect();
    let first: Vec<f32> = crate::ops::token_nll(last_logits, &Tensor::from_vec(first, b, dev)?)?.to_vec1()?;
    let mut out: Vec<(f64, usize)> = first.iter().zip(references).map(|(&n, r)| (f64::from(n), r.len())).collect();
    let k = references.iter().map(|r| r.len() - 1).max().unwrap_or(0);
    if k == 0 {
        return Ok(out);
    }
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (i, r) in references.iter().enumerate() {
        rows.extend((0..r.len() - 1).map(|j| (i * k + j) as u32));
        targets.extend_from_slice(&r[1..]);
    }
    let fed: Vec<Vec<u32>> = references.iter().map(|r| r[..r.len() - 1].to_vec()).collect();
    let (ids, mask) = model.pad_batch(&fed, pad, false)?;
    let mut teacher = cache.clone();
    let hidden = model.hidden_states(&ids, &mask, fwd, Some(&mut teacher))?;
    let n = rows.len();
    let picked = hidden.reshape((b * k, model.cfg.hidden_size))?.index_select(&Tensor::from_vec(rows, n, dev)?, 0)?;
    let nll: Vec<f32> =
        model.token_nll(&picked, &Tensor::from_vec(targets, n, dev)?)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut nll = nll.into_iter();
    for (o, r) in out.iter_mut().zip(references) {
        o.0 += nll.by_ref().take(r.len() - 1).map(f64::from).sum::<f64>();
    }
    Ok(out)
}

fn decode(
    model: &Llama,
    adapter: Option<&LoraAdapter>,
    job: &Job,
    cfg: &GenerateConfig,
    on_token: &mut dyn FnMut(usize, u32),
) -> Result<Scored> {
    let (prompts, stop, pad) = (job.prompts, job.stop, job.pad);
    let b = prompts.len();
    if b == 0 {
        return Ok((vec![], vec![]));
    }
    let fwd = Forward::eval(adapter);
    let mut d = Decoding {
        model,
        fwd: &fwd,
        cfg,
        stop,
        out: vec![vec![]; b],
        rngs: (0..b).map(|i| rng::stream(cfg.seed, streams::SAMPLING, i as u64)).collect(),
        on_token,
    };
    let (mut cache, hidden) = prefill(model, &fwd, prompts, pad)?;
    let first = model.logits(&last_position(&hidden)?)?.to_dtype(DType::F32)?;
    // A sliding window counts cached positions, and the walk leaves masked ones behind:
    // there the references are teacher-forced on a copy of the prompts' cache instead.
    let walk = model.cfg.sliding_window.is_none();
    let (active, next, scores) = match job.references {
        Some(refs) if walk && cfg.follow_only => {
            let (_, _, scores) = along_references(&mut d, &mut cache, &first, refs, pad)?;
            return Ok((d.out, scores));
        }
        Some(refs) if walk => along_references(&mut d, &mut cache, &first, refs, pad)?,
        refs => {
            let scores = match refs {
                Some(refs) => score_references(model, &fwd, &cache, &first, refs, pad)?,
                None => vec![],
            };
            let (keep, next) = d.pick(&first.to_vec2()?, &(0..b).collect::<Vec<_>>());
            if keep.len() < b {
                cache.retain(&keep)?;
            }
            (keep, next, scores)
        }
    };
    d.run(cache, active, next)?;
    Ok((d.out, scores))
}

/// The prompts' cache and final hidden states: the prefix every prompt shares (a chat
/// template's system prompt and a task's instruction) runs once and its cache is copied
/// to every row, then the rest of each prompt, left-padded.
fn prefill(model: &Llama, fwd: &Forward, prompts: &[Vec<u32>], pad: u32) -> Result<(KvCache, Tensor)> {
    let b = prompts.len();
    // A prefix of one token is not worth a pass of its own.
    let shared = if b > 1 { shared_prefix(prompts) } else { 0 };
    let shared = if shared >= 2 { shared } else { 0 };
    let mut cache = if shared > 0 {
        let mut one = KvCache::new(model, 1);
        let (ids, mask) = model.pad_batch(&[prompts[0][..shared].to_vec()], pad, true)?;
        model.hidden_states(&ids, &mask, fwd, Some(&mut one))?;
        one.repeated(b)?
    } else {
        KvCache::new(model, b)
    };
    let rest: Vec<Vec<u32>> = prompts.iter().map(|p| p[shared..].to_vec()).collect();
    let (ids, mask) = model.pad_batch(&rest, pad, true)?;
    let hidden = model.hidden_states(&ids, &mask, fwd, Some(&mut cache))?;
    Ok((cache, hidden))
}

/// One decode's state: every prompt's answer so far and its sampling stream.
struct Decoding<'a> {
    model: &'a Llama,
    fwd: &'a Forward<'a>,
    cfg: &'a GenerateConfig,
    stop: &'a [u32],
    out: Vec<Vec<u32>>,
    rngs: Vec<rand_chacha::ChaCha8Rng>,
    on_token: &'a mut dyn FnMut(usize, u32),
}

impl Decoding<'_> {
    /// Prompt `i` picks its next token from `logits`: `None` when it has finished (a
    /// stop token, or the cap reached with this token), else the token it goes on from.
    fn pick_one(&mut self, i: usize, logits: &[f32]) -> Option<u32> {
        let id = pick(logits, self.cfg, &mut self.rngs[i]);
        if self.stop.contains(&id) {
            return None;
        }
        self.out[i].push(id);
        (self.on_token)(i, id);
        (self.out[i].len() < self.cfg.max_new_tokens).then_some(id)
    }

    /// One step of the rows `active` (row `r` of `logits` is prompt `active[r]`): the
    /// rows that go on (indices into `active`) and their tokens.
    fn pick(&mut self, logits: &[Vec<f32>], active: &[usize]) -> (Vec<usize>, Vec<u32>) {
        let (mut keep, mut next) = (Vec::new(), Vec::new());
        for (r, &i) in active.iter().enumerate() {
            if let Some(id) = self.pick_one(i, &logits[r]) {
                keep.push(r);
                next.push(id);
            }
        }
        (keep, next)
    }

    /// Decodes the prompts `active` (row `r` of `cache` is prompt `active[r]`), each
    /// fed its token in `next` first, until every one has finished; a row that finishes
    /// leaves the batch (its cache rows are dropped) instead of decoding padding.
    fn run(&mut self, mut cache: KvCache, mut active: Vec<usize>, mut next: Vec<u32>) -> Result<()> {
        let dev = self.model.device().clone();
        while !active.is_empty() {
            let ids = Tensor::from_vec(next, (active.len(), 1), &dev)?;
            let hidden = self.model.hidden_states(&ids, &vec![vec![1u8]; active.len()], self.fwd, Some(&mut cache))?;
            let logits: Vec<Vec<f32>> = self.model.logits(&last_position(&hidden)?)?.to_dtype(DType::F32)?.to_vec2()?;
            let (keep, picked) = self.pick(&logits, &active);
            if keep.len() < active.len() && !keep.is_empty() {
                cache.retain(&keep)?;
            }
            active = keep.iter().map(|&r| active[r]).collect();
            next = picked;
        }
        Ok(())
    }
}

/// Where a prompt's answer stands in [`along_references`].
#[derive(Clone, Copy, PartialEq)]
enum Walk {
    /// Its answer has followed the reference so far.
    Following,
    /// It finished inside the reference's pass.
    Finished,
    /// It left the reference (or went past its end) after accepting `visible` of its
    /// tokens; it goes on decoding from `next`.
    Left { visible: usize, next: u32 },
}

/// The rows that go on decoding (prompt indices) with the token each is fed next, and
/// every reference's score.
type GoingOn = (Vec<usize>, Vec<u32>, Vec<(f64, usize)>);

/// Positions whose logits [`along_references`] forms at once.
const WALK_CHUNK: usize = 256;

/// Teacher-forces every reference after its prompt in one pass on the prompts' cache and
/// walks each answer along it: while the token the decode picks is the reference's, the
/// pass has already computed what the decoding step would (the same context), so the
/// answer moves on without a step of its own; the reference's negative log-likelihood
/// (sum, tokens) comes from the same logits. A row whose answer leaves the reference (or
/// goes past its end) keeps only the reference tokens it accepted visible in the cache
/// and goes on decoding from its own token: returns those rows (and their tokens), which
/// the cache is reduced to, and every reference's score. For a tuned model most answers
/// are their reference, so most of a generation task's answers cost one batched pass
/// instead of a decoding step per token.
fn along_references(
    d: &mut Decoding,
    cache: &mut KvCache,
    first: &Tensor,
    refs: &[Vec<u32>],
    pad: u32,
) -> Result<GoingOn> {
    let (model, dev) = (d.model, d.model.device().clone());
    let b = refs.len();
    let before: Vec<usize> = (0..b).map(|i| cache.real_len(i)).collect();
    let (ids, mask) = model.pad_batch(refs, pad, false)?;
    let k = ids.dim(1)?;
    let hidden = model.hidden_states(&ids, &mask, d.fwd, Some(cache))?.reshape((b * k, model.cfg.hidden_size))?;
    let mut walk = vec![Walk::Following; b];
    let mut nll = vec![0f64; b];
    // The logits for answer token j of prompt i: the prompt's last ones for j = 0, the
    // pass's position j - 1 after that.
    let mut see = |d: &mut Decoding, i: usize, j: usize, logits: &[f32]| {
        let r = &refs[i];
        if j < r.len() {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
            nll[i] += f64::from(max) + sum.ln() - f64::from(logits[r[j] as usize]);
        }
        if walk[i] != Walk::Following {
            return;
        }
        walk[i] = match d.pick_one(i, logits) {
            None => Walk::Finished,
            Some(id) if j < r.len() && id == r[j] => Walk::Following,
            Some(id) => Walk::Left { visible: j, next: id },
        };
    };
    for (i, row) in first.to_vec2::<f32>()?.iter().enumerate() {
        see(d, i, 0, row);
    }
    let at: Vec<(usize, usize)> = (0..b).flat_map(|i| (0..refs[i].len()).map(move |j| (i, j))).collect();
    for chunk in at.chunks(WALK_CHUNK) {
        let rows: Vec<u32> = chunk.iter().map(|&(i, j)| (i * k + j) as u32).collect();
        let n = rows.len();
        let picked = hidden.index_select(&Tensor::from_vec(rows, n, &dev)?, 0)?;
        let logits: Vec<Vec<f32>> = model.logits(&picked)?.to_dtype(DType::F32)?.to_vec2()?;
        for (&(i, j), row) in chunk.iter().zip(&logits) {
            see(d, i, j + 1, row);
        }
    }
    let scores = nll.into_iter().zip(refs).map(|(n, r)| (n, r.len())).collect();
    let (mut keep, mut next) = (Vec::new(), Vec::new());
    for (i, w) in walk.iter().enumerate() {
        if let Walk::Left { visible, next: id } = *w {
            keep.push(i);
            next.push(id);
            cache.keep_first(i, before[i] + visible);
        }
    }
    cache.retain(&keep)?;
    Ok((keep, next, scores))
}

/// Answers a user `prompt` (chat-templated for chat models) and returns the text.
pub fn generate_text(
    model: &Llama,
    tok: &TextTokenizer,
    adapter: Option<&LoraAdapter>,
    system: Option<&str>,
    prompt: &str,
    cfg: &GenerateConfig,
    on_text: &mut dyn FnMut(&str),
) -> Result<String> {
    let ids = crate::data::prompt_ids(tok, system, prompt)?;
    let mut produced: Vec<u32> = Vec::new();
    let mut shown = 0usize;
    let out = generate_batch(model, adapter, &[ids], &tok.eos_ids, tok.pad_id, cfg, &mut |_, id| {
        produced.push(id);
        // Emit only whole characters: a byte-level token may end mid-UTF-8.
        if let Ok(s) = tok.decode(&produced, true) {
            if !s.ends_with('\u{fffd}') && s.len() > shown {
                on_text(&s[shown..]);
                shown = s.len();
            }
        }
    })?;
    tok.decode(&out[0], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn greedy_picks_argmax_and_top_p_keeps_the_nucleus() {
        let mut r = rng::stream(0, 0, 0);
        assert_eq!(pick(&[0.1, 3.0, 2.9], &GenerateConfig::default(), &mut r), 1);
        // top_p tiny: only the most likely token survives, whatever the temperature.
        let cfg = GenerateConfig { temperature: 5.0, top_p: 1e-6, ..Default::default() };
        for _ in 0..20 {
            assert_eq!(pick(&[0.1, 3.0, 2.9], &cfg, &mut r), 1);
        }
        let cfg = GenerateConfig { temperature: 1.0, top_p: 1.0, ..Default::default() };
        let seen: std::collections::HashSet<u32> = (0..200).map(|_| pick(&[0.0, 0.0, 0.0], &cfg, &mut r)).collect();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn cached_decoding_matches_full_forward_and_batching() {
        let (model, _) = crate::model::tiny_model(3, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = vec![5, 17, 99, 4, 250];
        let cfg = GenerateConfig { max_new_tokens: 6, ..Default::default() };
        let got = generate_batch(&model, None, std::slice::from_ref(&prompt), &[], 0, &cfg, &mut |_, _| {}).unwrap();
        // Recompute greedily without a cache.
        let mut ids = prompt.clone();
        for _ in 0..6 {
            let (t, m) = model.pad_batch(&[ids.clone()], 0, false).unwrap();
            let l = model.forward(&t, &m, &Forward::eval(None)).unwrap();
            let last: Vec<f32> = l.squeeze(0).unwrap().get(ids.len() - 1).unwrap().to_vec1().unwrap();
            ids.push(pick(&last, &GenerateConfig::default(), &mut rng::stream(0, 0, 0)));
        }
        assert_eq!(got[0], ids[prompt.len()..]);
        // A left-padded batch gives each row what it gets alone.
        let short: Vec<u32> = vec![42, 7];
        let both =
            generate_batch(&model, None, &[prompt.clone(), short.clone()], &[], 0, &cfg, &mut |_, _| {}).unwrap();
        let alone = generate_batch(&model, None, &[short], &[], 0, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(both[0], got[0]);
        assert_eq!(both[1], alone[0]);
    }

    /// Prompts that share a prefix (run once, its cache copied to every row) and rows that
    /// finish at different steps (dropped from the batch): every row gets what it gets
    /// alone.
    #[test]
    fn shared_prefixes_and_finished_rows_change_no_answer() {
        let (model, _) = crate::model::tiny_model(5, &Device::Cpu).unwrap();
        let prefix: Vec<u32> = vec![3, 14, 15, 92, 65, 35];
        let prompts: Vec<Vec<u32>> = [vec![89u32, 79], vec![32], vec![38, 46, 26, 43], vec![89, 7]]
            .into_iter()
            .map(|s| [prefix.clone(), s].concat())
            .collect();
        assert_eq!(shared_prefix(&prompts), prefix.len());
        assert_eq!(shared_prefix(&[vec![1, 2], vec![1, 2, 3]]), 1, "each prompt keeps a token of its own");
        let cfg = GenerateConfig { max_new_tokens: 8, ..Default::default() };
        let alone: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| {
                generate_batch(&model, None, std::slice::from_ref(p), &[], 0, &cfg, &mut |_, _| {}).unwrap().remove(0)
            })
            .collect();
        let together = generate_batch(&model, None, &prompts, &[], 0, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(together, alone);
        // Stop on a token some rows produce early: those rows end there, the rest go on.
        let stop = [alone[0][2]];
        let stopped = generate_batch(&model, None, &prompts, &stop, 0, &cfg, &mut |_, _| {}).unwrap();
        for (s, a) in stopped.iter().zip(&alone) {
            let end = a.iter().position(|t| stop.contains(t)).unwrap_or(a.len());
            assert_eq!(s, &a[..end]);
        }
        assert!(stopped.iter().any(|s| s.len() < 8) && stopped.iter().any(|s| s.len() == 8), "{stopped:?}");
    }

    /// The reference scores of a decode equal the completion loss of the examples
    /// computed by the loss pass (packed, without a cache), and scoring changes no answer.
    #[test]
    fn scored_references_match_the_loss_pass() {
        let (model, _) = crate::model::tiny_model(7, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, crate::model::lora::LoraConfig::default(), 1, &Device::Cpu).unwrap();
        crate::model::lora::randomize(&ad, 2, 0.1);
        let prefix: Vec<u32> = vec![3, 14, 15, 92, 65];
        let prompts: Vec<Vec<u32>> = [vec![89u32, 79], vec![32], vec![38, 46, 26, 43]]
            .into_iter()
            .map(|s| [prefix.clone(), s].concat())
            .collect();
        let refs: Vec<Vec<u32>> = vec![vec![7], vec![8, 9, 10, 11], vec![12, 13]];
        let cfg = GenerateConfig { max_new_tokens: 5, ..Default::default() };
        let (outs, scores) = generate_and_score(&model, Some(&ad), &prompts, &refs, &[], 0, &cfg).unwrap();
        let plain = generate_batch(&model, Some(&ad), &prompts, &[], 0, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(outs, plain);
        assert_loss_pass(&model, &ad, &prompts, &refs, &scores);
        assert!(generate_and_score(&model, None, &prompts, &refs[..2], &[], 0, &cfg).is_err());
    }

    /// References the greedy answer follows — wholly, or for a while and then not — are
    /// walked along (the answer accepted from one teacher-forced pass, decoding going on
    /// where it leaves them): the same answers as a decode without references, and the
    /// completion loss of the loss pass.
    #[test]
    fn references_the_answer_follows_score_as_the_loss_pass() {
        let (model, _) = crate::model::tiny_model(7, &Device::Cpu).unwrap();
        let ad = LoraAdapter::new(&model.cfg, crate::model::lora::LoraConfig::default(), 1, &Device::Cpu).unwrap();
        crate::model::lora::randomize(&ad, 3, 0.1);
        let prefix: Vec<u32> = vec![3, 14, 15, 92, 65];
        let prompts: Vec<Vec<u32>> = [vec![89u32, 79], vec![32], vec![38, 46, 26, 43], vec![7, 7]]
            .into_iter()
            .map(|s| [prefix.clone(), s].concat())
            .collect();
        let cfg = GenerateConfig { max_new_tokens: 6, ..Default::default() };
        let plain = generate_batch(&model, Some(&ad), &prompts, &[], 0, &cfg, &mut |_, _| {}).unwrap();
        let other = |t: u32| (t + 1) % model.cfg.vocab_size as u32;
        let refs: Vec<Vec<u32>> = vec![
            plain[0].clone(),                                   // the whole answer
            vec![plain[1][0], plain[1][1], other(plain[1][2])], // leaves it at the third token
            plain[2][..3].to_vec(),                             // its start, then the answer goes on
            [plain[3].clone(), vec![plain[3][0]]].concat(),     // longer than the answer
        ];
        let (outs, scores) = generate_and_score(&model, Some(&ad), &prompts, &refs, &[], 0, &cfg).unwrap();
        assert_eq!(outs, plain);
        assert_loss_pass(&model, &ad, &prompts, &refs, &scores);
        // A stop token the answers meet inside their references, sampling (each row's
        // draws in the same order), and a model with a sliding window (references
        // teacher-forced on a copy of the prompts' cache instead): the answers of a
        // decode without references, the loss pass's scores.
        let stop = [plain[0][2]];
        let sampled = GenerateConfig { temperature: 1.0, top_p: 0.9, seed: 3, ..cfg };
        let mut windowed = model.clone();
        windowed.cfg.sliding_window = Some(64);
        for (m, stop, cfg) in [(&model, &stop[..], cfg), (&model, &[][..], sampled), (&windowed, &stop[..], cfg)] {
            let want = generate_batch(m, Some(&ad), &prompts, stop, 0, &cfg, &mut |_, _| {}).unwrap();
            let (outs, scores) = generate_and_score(m, Some(&ad), &prompts, &refs, stop, 0, &cfg).unwrap();
            assert_eq!(outs, want);
            assert_loss_pass(m, &ad, &prompts, &refs, &scores);
        }
        assert!(generate_batch(&model, Some(&ad), &prompts, &stop, 0, &cfg, &mut |_, _| {}).unwrap()[0].len() <= 2);
    }

    /// `scores` (of `refs` after `prompts`) equal the completion loss that the loss pass
    /// (packed, without a cache) computes for those examples.
    fn assert_loss_pass(
        model: &Llama,
        ad: &LoraAdapter,
        prompts: &[Vec<u32>],
        refs: &[Vec<u32>],
        scores: &[(f64, usize)],
    ) {
        let examples: Vec<crate::data::Example> = prompts
            .iter()
            .zip(refs)
            .map(|(p, r)| crate::data::Example {
                ids: [p.clone(), r.clone()].concat(),
                prompt_len: p.len(),
                ..Default::default()
            })
            .collect();
        let want = crate::eval::completion_nll(model, Some(ad), &examples, 2).unwrap();
        assert_eq!(scores.len(), want.len());
        for (i, (got, want)) in scores.iter().zip(&want).enumerate() {
            assert_eq!(got.1, want.1);
            let close = (got.0 - want.0).abs() < 1e-4 * want.0.abs().max(1.0);
            assert!(close, "row {i}: {} scored, {} loss pass", got.0, want.0);
        }
    }
}
