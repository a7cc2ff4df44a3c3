//! Checks that need an NVIDIA GPU: built only with `--features cuda` and run by
//! `make test-cuda` on a machine with one (they fail, saying so, where CUDA sees no GPU).
//! The CPU f32 path, itself checked against references in the other tests, is the
//! reference here.

use candle_core::{DType, Device, Tensor};

use crate::data::{make_batch, Example};
use crate::model::lora::{LoraAdapter, LoraConfig};
use crate::model::{max_abs_diff, Forward};
use crate::model::{random_model, tiny_config};
use crate::train::batch_loss;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need CUDA device 0 (`make test-cuda` on a GPU machine)")
}

fn examples() -> Vec<Example> {
    vec![
        Example { ids: vec![3, 77, 120, 9, 200, 45, 12, 5, 9], prompt_len: 4, ..Default::default() },
        Example { ids: vec![3, 77, 120, 50, 60, 70], prompt_len: 3, ..Default::default() },
    ]
}

/// One adapter with non-zero B on both devices (same values).
fn adapters(cfg: &crate::model::config::ModelConfig, dev: &Device) -> (LoraAdapter, LoraAdapter) {
    let cpu = LoraAdapter::new(cfg, LoraConfig::default(), 1, &Device::Cpu).unwrap();
    crate::model::lora::randomize(&cpu, 5, 0.05);
    let gpu = LoraAdapter::new(cfg, LoraConfig::default(), 1, dev).unwrap();
    for (g, c) in gpu.vars().iter().zip(cpu.vars()) {
        g.set(&c.as_tensor().to_device(dev).unwrap()).unwrap();
    }
    (cpu, gpu)
}

/// f32 on the GPU (padded path, composed ops, cuBLAS) against the CPU (packed path,
/// fused kernels): the same loss and adapter gradients.
#[test]
fn gpu_f32_loss_and_gradients_match_the_cpu() {
    let dev = gpu();
    let cpu_model = random_model(tiny_config(), 7, &Device::Cpu).unwrap();
    let gpu_model = random_model(tiny_config(), 7, &dev).unwrap();
    let (ad_cpu, ad_gpu) = adapters(&cpu_model.cfg, &dev);
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let lc =
        batch_loss(&cpu_model, &make_batch(&refs, 0, &Device::Cpu).unwrap(), &Forward::eval(Some(&ad_cpu))).unwrap();
    let lg = batch_loss(&gpu_model, &make_batch(&refs, 0, &dev).unwrap(), &Forward::eval(Some(&ad_gpu))).unwrap();
    let (a, b) = (lc.to_scalar::<f32>().unwrap(), lg.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() < 1e-3, "loss {a} on the CPU, {b} on the GPU");
    let (gc, gg) = (lc.backward().unwrap(), lg.backward().unwrap());
    for (vc, vg) in ad_cpu.vars().iter().zip(ad_gpu.vars()) {
        let c = gc.get(vc.as_tensor()).unwrap();
        let g = gg.get(vg.as_tensor()).unwrap().to_device(&Device::Cpu).unwrap();
        let scale = c.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let d = max_abs_diff(c, &g).unwrap();
        assert!(d / scale < 1e-2, "gradients differ by {d} (scale {scale})");
    }
}

/// bf16 weights on the GPU (what `--device auto` loads there): logits within bf16's
/// precision of the CPU's f32 ones, and a few AdamW steps lower the loss.
#[test]
fn gpu_bf16_forward_is_close_and_training_learns() {
    let dev = gpu();
    let cpu_model = random_model(tiny_config(), 7, &Device::Cpu).unwrap();
    let gpu_model = random_model(tiny_config(), 7, &dev).unwrap().to_dtype(DType::BF16).unwrap();
    let ids = Tensor::new(&[[3u32, 77, 120, 9, 200]], &Device::Cpu).unwrap();
    let mask = vec![vec![1u8; 5]];
    let lc = cpu_model.forward(&ids, &mask, &Forward::eval(None)).unwrap();
    let lg = gpu_model.forward(&ids.to_device(&dev).unwrap(), &mask, &Forward::eval(None)).unwrap();
    let lg = lg.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let scale = lc.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let d = max_abs_diff(&lc, &lg).unwrap();
    assert!(d < 0.05 * scale.max(1.0), "bf16 logits differ by {d} (scale {scale})");

    let (_, ad) = adapters(&gpu_model.cfg, &dev);
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = make_batch(&refs, 0, &dev).unwrap();
    let vars = ad.vars();
    let mut opt = crate::train::optim::AdamW::new(&vars, crate::train::optim::AdamWConfig::default()).unwrap();
    let mut losses = Vec::new();
    for step in 0..20 {
        let loss = batch_loss(&gpu_model, &batch, &Forward::train(&ad, 0, step)).unwrap();
        losses.push(loss.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap());
        let g = loss.backward().unwrap();
        let grads: Vec<Tensor> = vars.iter().map(|v| g.get(v.as_tensor()).unwrap().clone()).collect();
        opt.step(&vars, &grads, 1e-2).unwrap();
    }
    assert!(losses[19] < 0.7 * losses[0], "loss did not fall on the GPU: {losses:?}");
}

/// f32 on the GPU: greedy generation gives the CPU's tokens and label ranking its scores
/// (same tiny model and adapter on both devices).
#[test]
fn gpu_generation_and_label_ranking_match_the_cpu() {
    let dev = gpu();
    let cpu_model = random_model(tiny_config(), 7, &Device::Cpu).unwrap();
    let gpu_model = random_model(tiny_config(), 7, &dev).unwrap();
    let (ad_cpu, ad_gpu) = adapters(&cpu_model.cfg, &dev);
    let prompts: Vec<Vec<u32>> = vec![vec![3, 77, 120, 9], vec![3, 50, 60], vec![3, 77, 120, 9, 200, 45]];
    let cfg = crate::eval::generate::GenerateConfig { max_new_tokens: 12, ..Default::default() };
    let gen = |m: &crate::model::Llama, ad: &LoraAdapter| {
        crate::eval::generate::generate_batch(m, Some(ad), &prompts, &[258], 0, &cfg, &mut |_, _| {}).unwrap()
    };
    assert_eq!(gen(&cpu_model, &ad_cpu), gen(&gpu_model, &ad_gpu), "greedy answers differ between CPU and GPU");
    let labels: Vec<Vec<u32>> = vec![vec![101, 102], vec![110], vec![120, 121, 122]];
    let rank = |m: &crate::model::Llama, ad: &LoraAdapter| {
        crate::eval::label_log_likelihoods(m, Some(ad), &prompts, &labels, 0, 2).unwrap()
    };
    let (c, g) = (rank(&cpu_model, &ad_cpu), rank(&gpu_model, &ad_gpu));
    for (rc, rg) in c.iter().zip(&g) {
        for ((lc, nc), (lg, ng)) in rc.iter().zip(rg) {
            assert_eq!(nc, ng);
            assert!(
                (lc - lg).abs() < 1e-3 * lc.abs().max(1.0),
                "label log-likelihood {lc} on the CPU, {lg} on the GPU"
            );
        }
    }
}

/// Every strategy of a comparison on the GPU in bf16 (what `--device auto` loads): each
/// run is scored on every task, merges and the multi-head model included, and the first
/// training step's loss is the CPU's within bf16 tolerance.
#[test]
fn gpu_comparison_runs_every_strategy() {
    use crate::strategy::request::strategy_specs;
    use crate::strategy::{compare, Base, CompareConfig, CompareEvent, TaskData};
    use crate::train::{TrainConfig, TrainEvent};
    let dev = gpu();
    let tasks: Vec<TaskData> = ["sentiment", "arithmetic"]
        .iter()
        .map(|t| {
            let (train, eval) = crate::data::demo::task_split(t, 40, 6, 3).unwrap();
            let text = crate::data::demo::to_jsonl(&train).unwrap();
            let d = crate::data::parse(t, text.as_bytes(), None, &Default::default()).unwrap();
            TaskData { name: t.to_string(), kind: d.kind, labels: d.labels, train, eval }
        })
        .collect();
    let cfg = CompareConfig {
        strategies: strategy_specs(&multitune_api::StrategyChoice::all(), 4),
        budget_tokens: 3_000,
        train: TrainConfig {
            lora: LoraConfig { rank: 4, alpha: 8.0, ..Default::default() },
            learning_rate: 5e-3,
            batch_size: 4,
            max_seq_len: 128,
            checkpoint_every: 0,
            ..Default::default()
        },
        eval: crate::eval::EvalOptions { max_seq_len: 128, bootstrap: 20, ..Default::default() },
        seeds: vec![],
        lr_search: None,
        retention: false,
        data_fractions: vec![],
        tune_merges: false,
        methods: vec![],
    };
    let first_loss = |device: &Device, dtype: DType| {
        let model = random_model(tiny_config(), 0, device).unwrap().to_dtype(dtype).unwrap();
        let tok = crate::model::TextTokenizer::byte_level().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut first = None;
        let report = compare(
            &Base { model: &model, tokenizer: &tok, name: "tiny" },
            &tasks,
            &[],
            &cfg,
            out.path(),
            Default::default(),
            &mut |e| {
                if let CompareEvent::Train { event: TrainEvent::Step(s), .. } = e {
                    first.get_or_insert(s.loss);
                }
            },
        )
        .unwrap();
        (report, first.unwrap())
    };
    let (cpu, cpu_first) = first_loss(&Device::Cpu, DType::F32);
    let (gpu_report, gpu_first) = first_loss(&dev, DType::BF16);
    assert!(
        (cpu_first - gpu_first).abs() < 2e-2 * cpu_first,
        "first loss {cpu_first} on the CPU, {gpu_first} on the GPU"
    );
    let names = |r: &crate::strategy::Report| r.runs.iter().map(|x| x.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&cpu), names(&gpu_report));
    for run in &gpu_report.runs {
        assert_eq!(run.scores.len(), tasks.len(), "{}", run.name);
        for s in &run.scores {
            assert!((0.0..=1.0).contains(&s.value.value) && s.loss.value.is_finite(), "{}: {s:?}", run.name);
        }
    }
}
