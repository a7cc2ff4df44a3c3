use candle_core::{DType, Device, Tensor};
use multitune::data::{make_batch, Example};
use multitune::model::lora::{LoraAdapter, LoraConfig, Target};
use multitune::model::tiny_model;
use multitune::model::{max_abs_diff, Forward};
use multitune::rng;
use multitune::train::batch_loss;

fn ids() -> (Tensor, Vec<Vec<u8>>) {
    let rows = vec![vec![3u32, 77, 120, 9, 200, 45, 12, 5], vec![100u32, 101, 102, 103, 50, 0, 0, 0]];
    let t = Tensor::new(rows, &Device::Cpu).unwrap();
    (t, vec![vec![1; 8], vec![1, 1, 1, 1, 1, 0, 0, 0]])
}

/// Fills every B with small random values so the adapter changes the output.
fn randomize_b(ad: &LoraAdapter, seed: u64) {
    let mut r = rng::stream(seed, 77, 0);
    for m in &ad.layers {
        for p in m.values() {
            let n = p.b.elem_count();
            let vals = rng::normal(&mut r, n, 0.05);
            let t = Tensor::from_vec(vals, p.b.shape(), &Device::Cpu).unwrap().to_dtype(p.b.dtype()).unwrap();
            p.b.set(&t).unwrap();
        }
    }
}

#[test]
fn zero_b_gives_the_base_output_exactly() {
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let ad = LoraAdapter::new(&model.cfg, LoraConfig::default(), 1, &Device::Cpu).unwrap();
    let (t, m) = ids();
    let base = model.forward(&t, &m, &Forward::eval(None)).unwrap();
    let with = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    assert_eq!(max_abs_diff(&base, &with).unwrap(), 0.0);
}

#[test]
fn merged_forward_equals_unmerged_and_unmerge_restores_the_weights() {
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let ad = LoraAdapter::new(&model.cfg, LoraConfig { rank: 4, alpha: 8.0, ..Default::default() }, 2, &Device::Cpu)
        .unwrap();
    randomize_b(&ad, 3);
    let (t, m) = ids();
    let unmerged = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    let base = model.forward(&t, &m, &Forward::eval(None)).unwrap();
    assert!(
        max_abs_diff(&unmerged, &base).unwrap() > 1e-3,
        "the adapter must change the output for this test to mean anything"
    );
    let merged_model = model.with_adapter_merged(&ad, 1.0).unwrap();
    let merged = merged_model.forward(&t, &m, &Forward::eval(None)).unwrap();
    let d = max_abs_diff(&merged, &unmerged).unwrap();
    assert!(d < 1e-5, "merged vs unmerged logits differ by {d}");
    let restored = merged_model.with_adapter_merged(&ad, -1.0).unwrap();
    for ((n, a), (_, b)) in model.named_weights().iter().zip(restored.named_weights()) {
        let d = max_abs_diff(a, &b).unwrap();
        assert!(d < 1e-6, "{n}: unmerge left a difference of {d}");
    }
}

#[test]
fn scale_applies_to_the_low_rank_path_only() {
    // y = Wx + (alpha/r) B A x: doubling alpha doubles the change from the base output
    // (to first order through the network: checked on the first layer's q projection).
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 4.0, targets: vec![Target::Q], ..Default::default() };
    let ad = LoraAdapter::new(&model.cfg, cfg.clone(), 2, &Device::Cpu).unwrap();
    randomize_b(&ad, 5);
    let d1 = ad.delta(0, Target::Q).unwrap().unwrap();
    let ad2 = LoraAdapter { config: LoraConfig { alpha: 8.0, ..cfg }, layers: ad.layers.clone() };
    let d2 = ad2.delta(0, Target::Q).unwrap().unwrap();
    let ratio = max_abs_diff(&(d1 * 2.0).unwrap(), &d2).unwrap();
    assert!(ratio < 1e-6);
    // And the delta is exactly scale * B A.
    let p = ad.get(0, Target::Q).unwrap();
    let manual = (p.b.as_tensor().matmul(p.a.as_tensor()).unwrap() * 1.0).unwrap();
    assert!(max_abs_diff(&ad.delta(0, Target::Q).unwrap().unwrap(), &manual).unwrap() < 1e-7);
}

#[test]
fn gradients_of_a_and_b_match_finite_differences() {
    // f64 throughout so central differences are accurate to ~1e-9.
    let (model32, _) = tiny_model(4, &Device::Cpu).unwrap();
    let model = model32.to_dtype(DType::F64).unwrap();
    // No dropout, so the training pass (which records the graph; evaluation does not) is
    // the same function the finite differences probe.
    let cfg = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, ..Default::default() };
    let ad32 = LoraAdapter::new(&model.cfg, cfg, 5, &Device::Cpu).unwrap();
    randomize_b(&ad32, 6);
    let ad = ad32.to_dtype(DType::F64).unwrap();
    let ex = [
        Example { ids: vec![3, 77, 120, 9, 200, 45, 12, 5, 9], prompt_len: 4, ..Default::default() },
        Example { ids: vec![100, 101, 102, 50, 60, 70], prompt_len: 3, ..Default::default() },
    ];
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let loss = |ad: &LoraAdapter| -> f64 {
        batch_loss(&model, &batch, &Forward::eval(Some(ad))).unwrap().to_scalar::<f64>().unwrap()
    };
    let grads = batch_loss(&model, &batch, &Forward::train(&ad, 0, 0)).unwrap().backward().unwrap();
    let mut checked = 0;
    for (layer, target) in [(0, Target::Q), (0, Target::V), (1, Target::Down), (1, Target::O), (1, Target::Gate)] {
        let pair = ad.get(layer, target).unwrap();
        for (var, name) in [(&pair.a, "A"), (&pair.b, "B")] {
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for &i in &[0usize, 7, orig.len() / 2, orig.len() - 1] {
                let eps = 1e-6;
                let mut plus = orig.clone();
                plus[i] += eps;
                var.set(&Tensor::from_vec(plus, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let lp = loss(&ad);
                let mut minus = orig.clone();
                minus[i] -= eps;
                var.set(&Tensor::from_vec(minus, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let lm = loss(&ad);
                var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
                let fd = (lp - lm) / (2.0 * eps);
                let err = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-4));
                assert!(err < 1e-4, "layer {layer} {target} {name}[{i}]: analytic {} vs finite difference {fd}", g[i]);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 40);
}

#[test]
fn dropout_is_seeded_and_off_at_eval() {
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let ad = LoraAdapter::new(&model.cfg, LoraConfig { dropout: 0.5, ..Default::default() }, 1, &Device::Cpu).unwrap();
    randomize_b(&ad, 2);
    let (t, m) = ids();
    let eval1 = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    let eval2 = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    assert_eq!(max_abs_diff(&eval1, &eval2).unwrap(), 0.0);
    let tr1 = model.forward(&t, &m, &Forward::train(&ad, 9, 0)).unwrap();
    let tr1b = model.forward(&t, &m, &Forward::train(&ad, 9, 0)).unwrap();
    let tr2 = model.forward(&t, &m, &Forward::train(&ad, 9, 1)).unwrap();
    assert_eq!(max_abs_diff(&tr1, &tr1b).unwrap(), 0.0, "same seed and step, same masks");
    assert!(max_abs_diff(&tr1, &tr2).unwrap() > 0.0, "another step draws other masks");
    assert!(max_abs_diff(&tr1, &eval1).unwrap() > 0.0, "dropout is active in training");
}
