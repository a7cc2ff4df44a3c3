//! Checks that need an NVIDIA GPU: built only with `--features cuda` and run by
//! `make test-cuda` on a machine with one (they fail, saying so, where CUDA sees no GPU).
//! The CPU f32 path, itself checked against references in the other tests, is the
//! reference here.

use candle_core::{DType, Device, Tensor};

use crate::adapter::lora::{LoraAdapter, LoraConfig};
use crate::data::{make_batch, Example};
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
    crate::adapter::lora::randomize(&cpu, 5, 0.05);
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
