//! The retention probe against its definition on the tiny model: the mean per-token KL
//! divergence from the base model along the base answers, computed apart (each example
//! alone through the padded path, the softmax by hand in f64), and the share of unchanged
//! greedy answers against real greedy decoding.

use candle_core::{Device, Tensor};
use multitune::data::Record;
use multitune::eval::generate::{generate_batch, GenerateConfig};
use multitune::eval::retention::{probe_prompts, Probe, ANSWER_TOKENS};
use multitune::model::lora::{LoraAdapter, LoraConfig};
use multitune::model::{tiny_model, Forward, Llama};
use multitune::train::{self, encode_all, TrainConfig};

/// Log-softmax of one row of logits, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z = row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    row.iter().map(|&x| x as f64 - z).collect()
}

/// Every position's next-token log-probabilities of `ids` (one sequence, no batching).
fn full_log_probs(model: &Llama, adapter: Option<&LoraAdapter>, ids: &[u32]) -> Vec<Vec<f64>> {
    let input = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = model.forward(&input, &[vec![1u8; ids.len()]], &Forward::eval(adapter)).unwrap();
    let rows: Vec<Vec<Vec<f32>>> = logits.to_dtype(candle_core::DType::F32).unwrap().to_vec3().unwrap();
    rows[0].iter().map(|r| log_softmax(r)).collect()
}

#[test]
fn retention_matches_a_direct_computation() {
    let prompts = probe_prompts().unwrap();
    assert!((100..=200).contains(&prompts.len()), "{} probe prompts", prompts.len());
    let (model, tok) = tiny_model(8, &Device::Cpu).unwrap();
    let some: Vec<String> = prompts.into_iter().step_by(10).collect();
    let probe = Probe::answer(&model, &tok, None, &some).unwrap();
    assert!(!probe.examples.is_empty());
    assert!(probe.examples.iter().all(|e| e.ids.len() - e.prompt_len <= ANSWER_TOKENS + 1));
    // The answers are kept in the cache folder: asked again, the same probe.
    if let Some(dir) = multitune::kernels::blas::cache_dir() {
        let kept = std::fs::read_dir(dir.join("retention")).map(|d| d.count()).unwrap_or(0);
        assert!(kept > 0, "no cached answers in {}", dir.display());
    }
    let again = Probe::answer(&model, &tok, None, &some).unwrap();
    assert_eq!((&again.examples, &again.stopped), (&probe.examples, &probe.stopped));
    // The base model keeps all of itself: every answer, and a KL of 0 up to rounding (the
    // base model's side of it is kept as a constant and a vector per position, the tuned
    // side computed from the hidden states: the same sum, in another order).
    let own = probe.measure(&model, &model, None).unwrap();
    assert_eq!((own.same_answer, own.prompts), (1.0, probe.examples.len()));
    assert!((0.0..1e-6).contains(&own.kl), "the base model against itself: KL {}", own.kl);
    // Answering the probe, billed to the next measurement (a distributed part's), once.
    assert_eq!(probe.unbilled_s(), 0.0, "a comparison's base row holds the answering");
    probe.bill_answering();
    assert!(probe.unbilled_s() == probe.answer_s && probe.answer_s > 0.0);
    let billed = probe.measure(&model, &model, None).unwrap();
    assert!(billed.seconds >= probe.answer_s, "{} s with {} s of answering billed", billed.seconds, probe.answer_s);
    assert_eq!(probe.unbilled_s(), 0.0, "billed once");
    assert_eq!((billed.kl, billed.same_answer), (own.kl, own.same_answer));

    // A briefly trained adapter moves the model a little.
    let recs: Vec<Record> = (0..8).map(|i| Record::new(format!("word {i}"), format!("w{i}"))).collect();
    let ex = encode_all(&tok, &recs, None, 64).unwrap();
    let cfg = TrainConfig {
        lora: LoraConfig { rank: 4, alpha: 8.0, ..Default::default() },
        learning_rate: 2e-2,
        batch_size: 4,
        max_steps: Some(4),
        checkpoint_every: 0,
        ..Default::default()
    };
    let mut ad = LoraAdapter::new(&model.cfg, cfg.lora.clone(), 1, &Device::Cpu).unwrap();
    train::train(&model, &mut ad, &ex, &cfg, None, None, &mut |_| {}).unwrap();
    let got = probe.measure(&model, &model, Some(&ad)).unwrap();

    // KL(base ‖ tuned) at every answer position, each example alone, by hand.
    let (mut sum, mut n) = (0.0, 0usize);
    for e in &probe.examples {
        let input = &e.ids[..e.ids.len() - 1];
        let (lb, lt) = (full_log_probs(&model, None, input), full_log_probs(&model, Some(&ad), input));
        for pos in e.prompt_len - 1..input.len() {
            sum += lb[pos].iter().zip(&lt[pos]).map(|(b, t)| b.exp() * (b - t)).sum::<f64>().max(0.0);
            n += 1;
        }
    }
    let want = sum / n as f64;
    assert!(want > 1e-4, "the adapter changed the model: KL {want}");
    assert!((got.kl - want).abs() <= 1e-3 * want.max(1e-3), "KL {} measured, {want} by hand", got.kl);

    // Greedy decoding with the adapter reproduces the base answer on the prompts the
    // teacher-forced check says it does (a near tie may fall either way between cached
    // decoding and whole-sequence scoring: at most one prompt).
    let prompt_ids: Vec<Vec<u32>> = probe.examples.iter().map(|e| e.ids[..e.prompt_len].to_vec()).collect();
    let gen = GenerateConfig { max_new_tokens: ANSWER_TOKENS, ..Default::default() };
    let tuned = generate_batch(&model, Some(&ad), &prompt_ids, &tok.eos_ids, tok.pad_id, &gen, &mut |_, _| {}).unwrap();
    let same = probe
        .examples
        .iter()
        .zip(&probe.stopped)
        .zip(&tuned)
        .filter(|((e, &ended), t)| {
            let answer: Vec<u32> = e.ids[e.prompt_len..e.ids.len() - usize::from(ended)].to_vec();
            if ended {
                **t == answer
            } else {
                t.starts_with(&answer)
            }
        })
        .count();
    let measured = (got.same_answer * probe.examples.len() as f64).round() as usize;
    assert!(measured.abs_diff(same) <= 1, "{measured} unchanged answers measured, {same} decoded");
}
