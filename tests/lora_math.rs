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

/// `model` with every weight of `targets` replaced by `f(layer, target, weight)` (in f64
/// where the model is): the reference a method's definition gives.
fn with_weights(
    model: &multitune::model::Llama,
    targets: &[Target],
    f: &dyn Fn(usize, Target, &Tensor) -> Tensor,
) -> multitune::model::Llama {
    let mut m = model.clone();
    for (li, block) in m.blocks.iter_mut().enumerate() {
        for &t in targets {
            let w = &mut block.linears[t as usize].weight;
            *w = f(li, t, w).to_dtype(w.dtype()).unwrap().detach();
        }
    }
    m
}

/// The rows' L2 norms of `w` `(out, in)`, as `(out, 1)`.
fn row_norms(w: &Tensor) -> Tensor {
    w.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()
}

/// Every magnitude of a DoRA adapter moved off ‖W‖ (seeded), so the magnitudes matter.
fn randomize_magnitudes(ad: &LoraAdapter, seed: u64) {
    let mut r = rng::stream(seed, 78, 0);
    for m in &ad.layers {
        for p in m.values() {
            let mag = p.magnitude.as_ref().unwrap();
            let noise = rng::normal(&mut r, mag.elem_count(), 0.2);
            let scaled: Vec<f64> = mag
                .as_tensor()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .zip(noise)
                .map(|(x, z)| x * (1.0 + f64::from(z)))
                .collect();
            mag.set(&Tensor::from_vec(scaled, mag.shape(), &Device::Cpu).unwrap().to_dtype(mag.dtype()).unwrap())
                .unwrap();
        }
    }
}

/// rsLoRA scales the update by α/√r, PEFT's `use_rslora`.
#[test]
fn rslora_scales_by_alpha_over_root_rank() {
    let cfg =
        LoraConfig { rank: 16, alpha: 8.0, ..Default::default() }.with_method(multitune_api::AdapterMethod::Rslora);
    assert!(cfg.use_rslora && (cfg.scale() - 2.0).abs() < 1e-12, "8 / √16 = 2");
    assert_eq!(cfg.method(), multitune_api::AdapterMethod::Rslora);
}

/// DoRA as PEFT defines it: the layer is `m / ‖W + s·B·A‖ ⊙ (W + s·B·A)` row by row,
/// so the logits equal the base model's with every adapted weight replaced by that; it
/// starts as the base model (m = ‖W‖, B = 0); merging gives the same model.
#[test]
fn dora_forward_is_the_rescaled_adapted_weight() {
    let (model, _) = tiny_model(0, &Device::Cpu).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() }.with_method(multitune_api::AdapterMethod::Dora);
    let ad = LoraAdapter::for_model(&model, cfg.clone(), 2).unwrap();
    let (t, m) = ids();
    let base = model.forward(&t, &m, &Forward::eval(None)).unwrap();
    let start = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    assert!(max_abs_diff(&base, &start).unwrap() < 1e-4, "DoRA starts as the base model");
    randomize_b(&ad, 3);
    randomize_magnitudes(&ad, 4);
    let ours = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    let s = ad.scale();
    let reference = with_weights(&model, &cfg.targets, &|li, tg, w| {
        let p = ad.get(li, tg).unwrap();
        let w = w.to_dtype(DType::F64).unwrap();
        let ba =
            p.b.as_tensor()
                .to_dtype(DType::F64)
                .unwrap()
                .matmul(&p.a.as_tensor().to_dtype(DType::F64).unwrap())
                .unwrap();
        let adapted = (w + (ba * s).unwrap()).unwrap();
        let mag = p.magnitude.as_ref().unwrap().as_tensor().to_dtype(DType::F64).unwrap().unsqueeze(1).unwrap();
        adapted.broadcast_mul(&(mag / row_norms(&adapted)).unwrap()).unwrap()
    });
    let want = reference.forward(&t, &m, &Forward::eval(None)).unwrap();
    assert!(max_abs_diff(&ours, &base).unwrap() > 1e-2, "the adapter must change the output");
    let d = max_abs_diff(&ours, &want).unwrap();
    assert!(d < 1e-4, "DoRA logits differ from the definition by {d}");
    let merged = model.with_adapter_merged(&ad, 1.0).unwrap().forward(&t, &m, &Forward::eval(None)).unwrap();
    assert!(max_abs_diff(&merged, &want).unwrap() < 1e-4);
    assert!(model.with_adapter_merged(&ad, -1.0).is_err(), "DoRA is merged, never unmerged");
    assert!(ad.delta(0, Target::Q).is_err(), "a DoRA change needs the weight");
}

/// DoRA's gradients as PEFT computes them: the row norm is a constant in the gradient
/// (the paper's section 4.3), so A, B and m get the finite-difference gradients of the
/// loss with every norm frozen at its current value.
#[test]
fn dora_gradients_treat_the_norm_as_a_constant() {
    let (model32, _) = tiny_model(4, &Device::Cpu).unwrap();
    let model = model32.to_dtype(DType::F64).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 8.0, targets: vec![Target::Q, Target::Down], ..Default::default() }
        .with_method(multitune_api::AdapterMethod::Dora);
    let ad = LoraAdapter::for_model(&model, cfg.clone(), 5).unwrap().to_dtype(DType::F64).unwrap();
    randomize_b(&ad, 6);
    randomize_magnitudes(&ad, 7);
    let ex = [
        Example { ids: vec![3, 77, 120, 9, 200, 45, 12, 5, 9], prompt_len: 4, ..Default::default() },
        Example { ids: vec![100, 101, 102, 50, 60, 70], prompt_len: 3, ..Default::default() },
    ];
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let s = ad.scale();
    // The norms now, frozen.
    let frozen: Vec<Vec<Tensor>> = (0..model.cfg.num_hidden_layers)
        .map(|li| {
            cfg.targets
                .iter()
                .map(|&t| {
                    let p = ad.get(li, t).unwrap();
                    let w = &model.blocks[li].linears[t as usize].weight;
                    row_norms(&(w + (p.b.as_tensor().matmul(p.a.as_tensor()).unwrap() * s).unwrap()).unwrap())
                })
                .collect()
        })
        .collect();
    let loss = || -> f64 {
        let m = with_weights(&model, &cfg.targets, &|li, tg, w| {
            let p = ad.get(li, tg).unwrap();
            let k = cfg.targets.iter().position(|&x| x == tg).unwrap();
            let adapted = (w + (p.b.as_tensor().matmul(p.a.as_tensor()).unwrap() * s).unwrap()).unwrap();
            let g = (p.magnitude.as_ref().unwrap().as_tensor().unsqueeze(1).unwrap() / &frozen[li][k]).unwrap();
            adapted.broadcast_mul(&g).unwrap()
        });
        batch_loss(&m, &batch, &Forward::eval(None)).unwrap().to_scalar::<f64>().unwrap()
    };
    let grads = batch_loss(&model, &batch, &Forward::train(&ad, 0, 0)).unwrap().backward().unwrap();
    let mut checked = 0;
    for (layer, target) in [(0, Target::Q), (1, Target::Down)] {
        let p = ad.get(layer, target).unwrap();
        for (var, name) in [(&p.a, "A"), (&p.b, "B"), (p.magnitude.as_ref().unwrap(), "m")] {
            let g: Vec<f64> = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let orig: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            for &i in &[0usize, 3, orig.len() / 2, orig.len() - 1] {
                let eps = 1e-6;
                let set = |v: Vec<f64>| var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
                let mut plus = orig.clone();
                plus[i] += eps;
                set(plus);
                let lp = loss();
                let mut minus = orig.clone();
                minus[i] -= eps;
                set(minus);
                let lm = loss();
                set(orig.clone());
                let fd = (lp - lm) / (2.0 * eps);
                let err = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-4));
                assert!(err < 1e-4, "layer {layer} {target} {name}[{i}]: analytic {} vs finite difference {fd}", g[i]);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

/// PiSSA as PEFT defines it: A = √(S_r/s) V_rᵀ and B = U_r √(S_r/s) from the SVD of W
/// (s·B·A is W's best rank-r approximation, here against a full eigendecomposition of
/// WᵀW), the base keeping W − s·B₀A₀: the adapter starts as the base model, and after
/// training its logits are the base's with every weight W − s·B₀A₀ + s·B·A, which its
/// plain-LoRA conversion (rank 2r, PEFT's) reproduces; its gradients are checked by
/// finite differences.
#[test]
fn pissa_starts_from_the_top_singular_vectors() {
    use multitune::model::lora::{jacobi_eigen, top_singular};
    let (model, _) = tiny_model(1, &Device::Cpu).unwrap();
    let cfg = LoraConfig { rank: 4, alpha: 8.0, ..Default::default() }.with_method(multitune_api::AdapterMethod::Pissa);
    let ad = LoraAdapter::for_model(&model, cfg.clone(), 2).unwrap();
    let s = ad.scale();
    // Layer 1's up projection (out 256, in 128): s·B·A against the best rank-4 approximation.
    let w = model.blocks[1].linears[Target::Up as usize].weight.to_dtype(DType::F64).unwrap();
    let (out, inp) = w.dims2().unwrap();
    let gram: Vec<f64> = w.t().unwrap().matmul(&w).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let (vals, vecs) = jacobi_eigen(&gram, inp);
    let v4 = Tensor::from_vec(
        (0..inp).flat_map(|i| (0..4).map(move |c| (i, c))).map(|(i, c)| vecs[i * inp + c]).collect::<Vec<f64>>(),
        (inp, 4),
        &Device::Cpu,
    )
    .unwrap();
    let best = w.matmul(&v4).unwrap().matmul(&v4.t().unwrap()).unwrap();
    let p = ad.get(1, Target::Up).unwrap();
    let sba =
        (p.b.as_tensor().to_dtype(DType::F64).unwrap().matmul(&p.a.as_tensor().to_dtype(DType::F64).unwrap()).unwrap()
            * s)
            .unwrap();
    let d = max_abs_diff(&sba, &best).unwrap();
    assert!(d < 1e-4, "s·B·A is not the best rank-4 approximation: {d}");
    // PEFT's shapes: B's columns and A's rows carry √(σ/s) each.
    let (_, sv, _) = top_singular(&w.flatten_all().unwrap().to_vec1::<f64>().unwrap(), out, inp, 4).unwrap();
    for (k, &l) in vals[..4].iter().enumerate() {
        assert!((sv[k] - l.sqrt()).abs() < 1e-6 * l.sqrt(), "σ{k}: {} vs {}", sv[k], l.sqrt());
        let col: f64 =
            p.b.as_tensor()
                .narrow(1, k, 1)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .into();
        assert!((col - sv[k] / s).abs() < 1e-3 * sv[k] / s, "‖B[:, {k}]‖² {col} vs σ/s {}", sv[k] / s);
    }
    let (t, m) = ids();
    let base = model.forward(&t, &m, &Forward::eval(None)).unwrap();
    let start = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    assert!(max_abs_diff(&base, &start).unwrap() < 1e-4, "PiSSA starts as the base model");
    randomize_b(&ad, 5);
    let ours = model.forward(&t, &m, &Forward::eval(Some(&ad))).unwrap();
    let reference = with_weights(&model, &cfg.targets, &|li, tg, w| {
        let p = ad.get(li, tg).unwrap();
        let (a0, b0) = p.start.as_ref().unwrap();
        let residual = (w - (b0.matmul(a0).unwrap() * s).unwrap()).unwrap();
        (residual + (p.b.as_tensor().matmul(p.a.as_tensor()).unwrap() * s).unwrap()).unwrap()
    });
    let want = reference.forward(&t, &m, &Forward::eval(None)).unwrap();
    assert!(max_abs_diff(&ours, &base).unwrap() > 1e-2);
    assert!(max_abs_diff(&ours, &want).unwrap() < 1e-4);
    let plain = ad.to_plain().unwrap();
    assert_eq!((plain.config.rank, plain.config.alpha, plain.config.pissa), (8, 16.0, false));
    assert!((plain.scale() - s).abs() < 1e-12);
    let converted = model.forward(&t, &m, &Forward::eval(Some(&plain))).unwrap();
    assert!(max_abs_diff(&converted, &want).unwrap() < 1e-4);
    // Too large a rank for the smallest layer (k/v: 128 → 64) is refused.
    let big = LoraConfig { rank: 65, ..cfg };
    let e = LoraAdapter::for_model(&model, big, 0).unwrap_err().to_string();
    assert!(e.contains("rank 65 is larger than PiSSA allows: `k_proj` has 64 singular vectors"), "{e}");
}

/// LoRA+: the first AdamW step moves every entry by about the learning rate (m̂/√v̂ = ±1),
/// so B's entries move `ratio` times as far as A's.
#[test]
fn lora_plus_trains_b_faster() {
    let (model, tok) = tiny_model(3, &Device::Cpu).unwrap();
    let recs: Vec<multitune::data::Record> =
        (0..8).map(|i| multitune::data::Record::new(format!("word {i}"), format!("w{i}"))).collect();
    let ex = multitune::train::encode_all(&tok, &recs, None, 64).unwrap();
    let moved = |ratio: Option<f64>| {
        let cfg = multitune::train::TrainConfig {
            lora: LoraConfig { rank: 4, alpha: 8.0, targets: vec![Target::V], ..Default::default() },
            learning_rate: 1e-3,
            warmup_ratio: 0.0,
            max_grad_norm: 0.0,
            batch_size: 8,
            max_steps: Some(1),
            checkpoint_every: 0,
            lora_plus: ratio,
            ..Default::default()
        };
        let mut ad = LoraAdapter::new(&model.cfg, cfg.lora.clone(), 1, &Device::Cpu).unwrap();
        randomize_b(&ad, 2);
        let before: Vec<Tensor> = ad.vars().iter().map(|v| v.as_tensor().copy().unwrap()).collect();
        multitune::train::train(&model, &mut ad, &ex, &cfg, None, None, &mut |_| {}).unwrap();
        let mean_move = |i: usize| {
            let d = (ad.vars()[i].as_tensor() - &before[i]).unwrap().abs().unwrap();
            d.mean_all().unwrap().to_scalar::<f32>().unwrap()
        };
        (mean_move(0), mean_move(1))
    };
    let (a, b) = moved(None);
    assert!((a / b - 1.0).abs() < 0.1, "without LoRA+ A and B move alike: {a} {b}");
    let (a16, b16) = moved(Some(16.0));
    assert!((a16 - a).abs() < 1e-9 * a.max(1.0), "A's rate is unchanged");
    assert!((b16 / a16 - 16.0).abs() < 1.6, "B moves 16 times as far: {a16} {b16}");
    let bad = multitune::train::TrainConfig { lora_plus: Some(0.0), ..Default::default() };
    assert!(bad.validate().unwrap_err().to_string().contains("lora_plus"));
}
