//! `multitune bench`: throughput, MFU and peak memory of training, eval and label
//! ranking, ours and PyTorch + PEFT's measured alternately in fresh child processes
//! on the same workload files; `bench-worker` is the child.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use clap::Args;

use super::{load, Cli};
use multitune::bench::{self, Measurement, Mode, Workload};
use multitune::data::{self, LoadOptions, TaskKind};
use multitune::eval;
use multitune::kernels::blas::Dims;
use multitune::model::LoadedModel;

/// `multitune bench`: ours against the reference, workload by workload.
#[derive(Args)]
pub struct BenchArgs {
    /// Models to measure, comma-separated.
    #[arg(long, default_value = "tiny,default")]
    models: String,
    /// Fixed shapes (batch x tokens) of random tokens, comma-separated.
    #[arg(long, default_value = "8x64,4x128,16x32")]
    shapes: String,
    /// Demo task folder: adds a workload of real examples (batch 8), a label-ranking
    /// workload on its classification task and a generation workload per generation task
    /// of its held-out folder (`eval/`); empty to skip.
    #[arg(long, default_value = "assets/demo")]
    demo: String,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Threads for both implementations.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Alternate ours and the reference this many times per measurement and report the
    /// median round (the machine's speed drifts; more rounds, steadier figures).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Python with torch, transformers and peft (`make bench-setup`): runs the reference,
    /// alternating with ours.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// The reference script.
    #[arg(long, default_value = "bench/reference.py")]
    reference_script: PathBuf,
    /// Modes to measure, comma-separated: train, eval, rank, generate.
    #[arg(long, default_value = "train,eval,rank,generate")]
    modes: String,
    /// The adapter method of every workload (lora, rslora or dora; PEFT's for the
    /// reference): `dora` measures DoRA against PEFT's DoRA. Workload names get the
    /// method after them unless it is lora.
    #[arg(long, default_value = "lora")]
    method: String,
    /// Also write every figure to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the workload files here (to rerun one measurement with `bench-worker`).
    #[arg(long)]
    save_workloads: Option<PathBuf>,
}

/// One measurement in a process of its own (used by `bench`).
#[derive(Args)]
pub struct BenchWorkerArgs {
    /// Model spec.
    #[arg(long)]
    model: String,
    /// Workload JSON.
    #[arg(long)]
    workload: Option<PathBuf>,
    /// train, eval, rank, generate or peak.
    #[arg(long)]
    mode: String,
}

impl BenchWorkerArgs {
    /// Measures one mode of one workload and prints the JSON line `bench` reads.
    pub(super) fn run(&self, cli: &Cli, device: &Device) -> anyhow::Result<()> {
        if self.mode == "peak" {
            // The default model's shapes choose the engines (a product's engine depends
            // on its shapes; on a GPU, cuBLAS computes them whatever the choice).
            let products = multitune::kernels::blas::select(&cli.models_dir, Dims::DEFAULT).products();
            let g = bench::matmul_peak_gflops(device, products)?;
            println!("{}", serde_json::json!({ "impl": "multitune", "matmul_gflops": g }));
            return Ok(());
        }
        let Some(mode) = Mode::parse(&self.mode) else {
            bail!("unknown bench mode `{}` (train, eval, rank, generate, peak)", self.mode)
        };
        let path = self.workload.as_ref().context("--workload is required")?;
        let w: Workload = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        let m = load(&self.model, cli, device)?;
        let r = bench::measure(&m.model, &w, mode)?;
        println!("{}", serde_json::to_string(&r)?);
        Ok(())
    }
}

/// Runs one measurement in a child process (so that each has its own peak memory) and
/// parses the JSON it prints last. With `gpu` (a CUDA ordinal), the GPU's used memory is
/// sampled from `nvidia-smi` every 100 ms while the child runs, and the peak above what
/// the GPU held before it started is added as `peak_device_mib` (one child runs at a time;
/// per-process figures are not used because a container's process ids are not the
/// driver's).
fn bench_child(mut cmd: std::process::Command, what: &str, gpu: Option<usize>) -> anyhow::Result<serde_json::Value> {
    use std::io::Read;
    let baseline = gpu.and_then(gpu_used_mib);
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let mut peak_mib: Option<f64> = None;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if let (Some(n), Some(base)) = (gpu, baseline) {
            if let Some(m) = gpu_used_mib(n) {
                peak_mib = Some(peak_mib.unwrap_or(0.0).max(m - base));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = reader.join().map_err(|_| anyhow::anyhow!("reading {what}"))??;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    let line = text.lines().rev().find(|l| l.starts_with('{')).with_context(|| format!("{what} printed no JSON"))?;
    let mut v: serde_json::Value = serde_json::from_str(line)?;
    if let (Some(m), Some(o)) = (peak_mib, v.as_object_mut()) {
        o.insert("peak_device_mib".into(), m.into());
    }
    Ok(v)
}

/// The memory in use on GPU `n` now, MiB, as `nvidia-smi` reports it.
fn gpu_used_mib(n: usize) -> Option<f64> {
    multitune::model::nvidia_smi(n, "memory.used")?.first()?.parse().ok()
}

#[derive(serde::Serialize)]
struct BenchRow {
    model: String,
    workload: String,
    mode: Mode,
    padding_share: f64,
    /// Useful tokens (training/eval) or prompts (ranking) of the timed steps.
    units: usize,
    flops: Option<f64>,
    ours: Measurement,
    reference: Option<Measurement>,
}

/// Starts the measuring child processes: ours (`bench-worker`) and the reference script.
struct Children<'a> {
    exe: PathBuf,
    threads: String,
    /// The CUDA device ordinal the measurements run on, if a GPU.
    gpu: Option<usize>,
    cli: &'a Cli,
    args: &'a BenchArgs,
}

impl Children<'_> {
    fn ours(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.exe);
        c.env("RAYON_NUM_THREADS", &self.threads);
        c.arg("--models-dir").arg(&self.cli.models_dir).arg("--device").arg(&self.cli.device);
        c.arg("bench-worker").args(args);
        c
    }

    fn reference(&self, py: &Path, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(py);
        c.arg(&self.args.reference_script).arg("--threads").arg(&self.threads).args(args);
        if let Some(n) = self.gpu {
            c.arg("--device").arg(format!("cuda:{n}"));
        }
        // Figures only: no progress bars or deprecation notices between the rows.
        for (k, v) in
            [("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("PYTHONWARNINGS", "ignore")]
        {
            c.env(k, v);
        }
        c
    }

    /// The best matmul rate of each implementation in the compute dtype (f32 on the CPU,
    /// bf16 on a GPU); prints them and returns (best, ours).
    fn matmul_peaks(&self) -> anyhow::Result<(f64, f64)> {
        let gpu = self.gpu.is_some();
        let peak_ours = bench_child(self.ours(&["--model", "tiny", "--mode", "peak"]), "matmul peak", self.gpu)?
            ["matmul_gflops"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let mut peak = peak_ours;
        print!("{} matmul peak: ours {peak_ours:.0} GFLOP/s", if gpu { "bf16" } else { "f32" });
        if let Some(py) = &self.args.reference {
            let v = bench_child(self.reference(py, &["--mode", "peak"]), "reference matmul peak", self.gpu)?;
            let p = v["matmul_gflops"].as_f64().unwrap_or(f64::NAN);
            let blas = if gpu { "cuBLAS" } else { "MKL" };
            print!(", torch {} ({blas}) {p:.0} GFLOP/s", v["torch"].as_str().unwrap_or("?"));
            if let Some(o) = v["openblas_gflops"].as_f64() {
                print!(", numpy (OpenBLAS) {o:.0} GFLOP/s");
            }
            peak = peak.max(p);
        }
        println!("; MFU below is against {peak:.0} GFLOP/s (the best of these)");
        Ok((peak, peak_ours))
    }

    /// One workload in one mode: `--rounds` alternations of ours and the reference,
    /// the median round of each.
    fn measure(&self, name: &str, hf_dir: &Path, file: &str, w: &Workload, mode: Mode) -> anyhow::Result<BenchRow> {
        let args = ["--model", name, "--workload", file, "--mode", mode.name()];
        let what = format!("{name} {} {}", w.name, mode.name());
        let (mut ours_all, mut ref_all) = (Vec::new(), Vec::new());
        for _ in 0..self.args.rounds.max(1) {
            ours_all.push(serde_json::from_value::<Measurement>(bench_child(self.ours(&args), &what, self.gpu)?)?);
            if let Some(py) = &self.args.reference {
                let dir = hf_dir.to_string_lossy().to_string();
                let args = ["--model-dir", dir.as_str(), "--workload", file, "--mode", mode.name()];
                let v = bench_child(self.reference(py, &args), &format!("reference {what}"), self.gpu)?;
                ref_all.push(serde_json::from_value::<Measurement>(v)?);
            }
        }
        Ok(BenchRow {
            model: name.into(),
            workload: w.name.clone(),
            mode,
            padding_share: if by_prompt(mode) { 0.0 } else { w.padding_share() },
            units: if by_prompt(mode) { w.timed_prompts() } else { w.timed_tokens() },
            flops: None,
            ours: median_round(ours_all).context("no measurement")?,
            reference: median_round(ref_all),
        })
    }
}

impl BenchArgs {
    /// The modes asked for.
    fn modes(&self) -> anyhow::Result<Vec<Mode>> {
        self.modes
            .split(',')
            .map(|m| {
                Mode::parse(m.trim())
                    .with_context(|| format!("unknown mode `{}` in --modes (train, eval, rank, generate)", m.trim()))
            })
            .collect()
    }

    /// Every workload of model `m` with the modes it is measured in: the fixed shapes,
    /// then the demo batches and the label ranking.
    fn workloads(&self, m: &LoadedModel, modes: &[Mode]) -> anyhow::Result<Vec<(Workload, Vec<Mode>)>> {
        let mut workloads: Vec<(Workload, Vec<Mode>)> = Vec::new();
        let lm_modes: Vec<Mode> = modes.iter().copied().filter(|&m| !by_prompt(m)).collect();
        for shape in self.shapes.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (b, t) = shape
                .split_once('x')
                .and_then(|(b, t)| Some((b.parse().ok()?, t.parse().ok()?)))
                .with_context(|| format!("shape `{shape}` is not BATCHxTOKENS"))?;
            workloads.push((Workload::synthetic(&m.model.cfg, b, t, self.warmup, self.steps, 0), lm_modes.clone()));
        }
        if !self.demo.is_empty() {
            let (lm, rank) = demo_workloads(m, Path::new(&self.demo), self.warmup, self.steps)?;
            if !lm_modes.is_empty() {
                workloads.push((lm, lm_modes.clone()));
            }
            if let Some(r) = rank.filter(|_| modes.contains(&Mode::Rank)) {
                workloads.push((r, vec![Mode::Rank]));
            }
            if modes.contains(&Mode::Generate) {
                for g in generation_workloads(m, &Path::new(&self.demo).join("eval"))? {
                    workloads.push((g, vec![Mode::Generate]));
                }
            }
        }
        // PiSSA changes only the start, not a step's work: nothing of its own to measure.
        let method = crate::args::adapter_method("--method", &self.method)?;
        if method == multitune_api::AdapterMethod::Pissa {
            bail!("--method `pissa`: use lora, rslora or dora (PiSSA only changes where the factors start)");
        }
        if method != multitune_api::AdapterMethod::Lora {
            for (w, _) in &mut workloads {
                w.lora.use_rslora = method == multitune_api::AdapterMethod::Rslora;
                w.lora.use_dora = method == multitune_api::AdapterMethod::Dora;
                w.name = format!("{} {}", w.name, method.name());
            }
        }
        Ok(workloads)
    }

    /// Measures every model, workload and mode, printing a row each, and writes the JSON.
    pub(super) fn run(&self, cli: &Cli) -> anyhow::Result<()> {
        let threads = self.threads.max(1).to_string();
        let gpu = match multitune::model::pick_device(&cli.device)?.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => Some(gpu_id),
            _ => None,
        };
        let children = Children { exe: std::env::current_exe()?, threads: threads.clone(), gpu, cli, args: self };
        let modes = self.modes()?;
        println!(
            "threads: {threads}, device: {}, matmul: {} (for the default model's shapes), warm-up {} + {} timed steps",
            cli.device,
            multitune::kernels::blas::describe_selection(multitune::kernels::blas::select(
                &cli.models_dir,
                Dims::DEFAULT
            )),
            self.warmup,
            self.steps
        );
        let (peak, peak_ours) = children.matmul_peaks()?;
        let width = self.models.split(',').map(|m| m.trim().len()).max().unwrap_or(0).max(8);
        println!(
            "{:<width$} {:<14} {:<6} {:>5} {:>6} {:>10} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8}",
            "model", "workload", "mode", "pad%", "saved%", "ours/s", "ref/s", "ratio", "MFU", "refMFU", "MiB", "refMiB"
        );
        let tmp = tempfile::tempdir()?;
        let mut rows = Vec::new();
        for name in self.models.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let m = load(name, cli, &Device::Cpu)?;
            let hf_dir = cli.models_dir.join("bench").join(format!("{}-hf", name.replace(':', "-")));
            if let (Some(_), multitune::model::ModelSource::Random(_)) = (&self.reference, &m.source) {
                // Random weights: the reference builds its own from the config (the same
                // shapes, so the same work), instead of reading gigabytes of noise.
                multitune::model::hf::save_hf_config(&m.model.cfg, &m.tokenizer, &hf_dir)
                    .with_context(|| format!("writing {} for the reference", hf_dir.display()))?;
            } else if self.reference.is_some() && !hf_dir.join("model.safetensors").exists() {
                multitune::model::save_hf_dir(&m.model, &m.tokenizer, &hf_dir)
                    .with_context(|| format!("writing {} for the reference", hf_dir.display()))?;
            }
            for (w, wmodes) in &self.workloads(&m, &modes)? {
                let file = match &self.save_workloads {
                    Some(d) => {
                        std::fs::create_dir_all(d)?;
                        d.join(format!("{name}-{}.json", w.name.replace(':', "-")))
                    }
                    None => tmp.path().join("workload.json"),
                };
                std::fs::write(&file, serde_json::to_string(w)?)?;
                for &mode in wmodes {
                    let mut row = children.measure(name, &hf_dir, &file.to_string_lossy(), w, mode)?;
                    row.flops = w.flops(&m.model.cfg, mode);
                    print_bench_row(&row, peak, width);
                    rows.push(row);
                }
            }
        }
        println!(
            "ours/s, ref/s: useful (non-padding) tokens per second; rank: prompts per second with every label scored; generate: held-out prompts answered per second (greedy). \
             pad%: padding the reference computes. saved%: useful tokens ours did not recompute (prefixes shared within a batch). \
             MFU: matmul FLOPs per second / matmul peak; ours counts what it ran (`multitune::bench::packed_flops`), the reference the model FLOPs of the useful tokens (`item_flops`: its padding and logits at every position uncounted)."
        );
        println!(
            "{}",
            if gpu.is_some() {
                "MiB, refMiB: peak GPU memory of each process (nvidia-smi: the GPU's used memory above its level before the process, sampled every 100 ms)."
            } else {
                "MiB, refMiB: peak resident memory of each process."
            }
        );
        if let Some(p) = &self.json {
            let sel = multitune::kernels::blas::select(&cli.models_dir, Dims::DEFAULT);
            let matmul = serde_json::json!({
                "many_rows": multitune::kernels::blas::engine_name(sel.many_rows),
                "few_rows": multitune::kernels::blas::engine_name(sel.few_rows),
                "how": sel.how,
                "calibration": sel.figures,
            });
            let all = serde_json::json!({ "threads": self.threads, "device": cli.device, "gpu": gpu, "matmul": matmul, "matmul_peak_gflops": peak, "ours_peak_gflops": peak_ours, "rows": rows });
            std::fs::write(p, serde_json::to_string_pretty(&all)?)?;
            println!("figures written to {}", p.display());
        }
        Ok(())
    }
}

/// Whether a mode's rate counts prompts (not tokens).
fn by_prompt(mode: Mode) -> bool {
    matches!(mode, Mode::Rank | Mode::Generate)
}

/// The round with the median total time, its peak memory the highest of all rounds.
fn median_round(mut all: Vec<Measurement>) -> Option<Measurement> {
    let peak = all.iter().filter_map(|m| m.peak_rss_mib).reduce(f64::max);
    let peak_device = all.iter().filter_map(|m| m.peak_device_mib).reduce(f64::max);
    all.sort_by(|a, b| a.total_secs().total_cmp(&b.total_secs()));
    let mut m = all.get(all.len() / 2).cloned()?;
    m.peak_rss_mib = peak;
    m.peak_device_mib = peak_device;
    Some(m)
}

fn print_bench_row(r: &BenchRow, peak: f64, width: usize) {
    let rate = |m: &Measurement| r.units as f64 / m.total_secs();
    // Each implementation's MFU counts the FLOPs it really did (ours: packed, each shared
    // prefix once) when it reports them, else the model FLOPs of the useful tokens.
    let mfu = |m: &Measurement| m.flops.or(r.flops).map(|f| format!("{:.0}%", 100.0 * f / m.total_secs() / 1e9 / peak));
    // Share of the useful tokens our forward did not have to run (shared prefixes).
    let saved = match r.ours.computed_tokens {
        Some(c) if r.mode != Mode::Rank && r.units > 0 => format!("{:.1}", 100.0 * (1.0 - c as f64 / r.units as f64)),
        _ => "-".into(),
    };
    // On a GPU the memory that limits is the GPU's.
    let mib = |m: &Measurement| m.peak_device_mib.or(m.peak_rss_mib).map_or("-".into(), |v| format!("{v:.0}"));
    let (ref_rate, ratio, ref_mfu, ref_mib) = match &r.reference {
        Some(x) => (
            format!("{:.1}", rate(x)),
            format!("{:.2}x", rate(&r.ours) / rate(x)),
            mfu(x).unwrap_or_else(|| "-".into()),
            mib(x),
        ),
        None => ("-".into(), "-".into(), "-".into(), "-".into()),
    };
    if r.mode == Mode::Generate {
        print_generation(r);
    }
    println!(
        "{:<width$} {:<14} {:<6} {:>5.1} {:>6} {:>10.1} {:>10} {:>6} {:>6} {:>6} {:>8} {:>8}",
        r.model,
        r.workload,
        r.mode.name(),
        100.0 * r.padding_share,
        saved,
        rate(&r.ours),
        ref_rate,
        ratio,
        mfu(&r.ours).unwrap_or_else(|| "-".into()),
        ref_mfu,
        mib(&r.ours),
        ref_mib
    );
}

/// A generation row's second line: new tokens per second of each, and how many answers
/// the two implementations agree on token for token.
fn print_generation(r: &BenchRow) {
    let new = |m: &Measurement| m.outputs.iter().map(Vec::len).sum::<usize>();
    let rate = |m: &Measurement| new(m) as f64 / m.total_secs();
    let mut line = format!("  {}: ours {} new tokens, {:.1}/s", r.workload, new(&r.ours), rate(&r.ours));
    if let Some(x) = &r.reference {
        let same = r.ours.outputs.iter().zip(&x.outputs).filter(|(a, b)| a == b).count();
        line += &format!(
            "; reference {} new tokens, {:.1}/s; identical answers {same}/{}",
            new(x),
            rate(x),
            r.ours.outputs.len()
        );
    }
    println!("{line}");
}

/// One generation workload per generation task in `dir` (held-out files): every prompt,
/// decoded as `multitune eval` does (batches of [`eval::EvalOptions::generation_batch`],
/// at most the longest reference plus 16 new tokens).
fn generation_workloads(m: &LoadedModel, dir: &Path) -> anyhow::Result<Vec<Workload>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(vec![]) };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let rows = eval::EvalOptions::default().generation_batch;
    let mut out = Vec::new();
    for f in &files {
        let d = data::load(f, &LoadOptions::default()).with_context(|| format!("loading {}", f.display()))?;
        if d.kind != TaskKind::Generation {
            continue;
        }
        let enc: Vec<_> = d
            .records
            .iter()
            .map(|r| multitune::data::encode(&m.tokenizer, r, None, 256))
            .collect::<multitune::Result<_>>()?;
        let max_new = enc.iter().map(multitune::data::Example::completion_len).max().unwrap_or(1) + 16;
        let prompts = enc.iter().map(|e| e.ids[..e.prompt_len].to_vec()).collect();
        let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let (stop, pad) = (m.tokenizer.eos_ids.clone(), m.tokenizer.pad_id);
        out.push(Workload::generation(&format!("gen:{stem}"), prompts, stop, pad, rows, max_new));
    }
    Ok(out)
}

/// The demo tasks as a training/eval workload (all tasks mixed, batch 8) and, if one
/// is a classification task, a ranking workload on its prompts.
fn demo_workloads(
    m: &LoadedModel,
    dir: &Path,
    warmup: usize,
    steps: usize,
) -> anyhow::Result<(Workload, Option<Workload>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    let mut examples = Vec::new();
    let mut rank = None;
    for f in &files {
        let d = data::load(f, &LoadOptions::default()).with_context(|| format!("loading {}", f.display()))?;
        let enc: Vec<_> = d
            .records
            .iter()
            .map(|r| multitune::data::encode(&m.tokenizer, r, None, 256))
            .collect::<multitune::Result<_>>()?;
        if d.kind == TaskKind::Classification && rank.is_none() {
            let labels = eval::label_token_ids(&m.tokenizer, &d.labels, None, 256)?;
            let prompts: Vec<Vec<u32>> =
                enc.iter().take((warmup + steps) * 8).map(|e| e.ids[..e.prompt_len].to_vec()).collect();
            let stem = f.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            rank = Some(Workload::ranking(&format!("rank:{stem}"), prompts, labels, m.tokenizer.pad_id, 8, warmup));
        }
        examples.extend(enc);
    }
    let lm = Workload::from_examples("demo", &examples, m.tokenizer.pad_id, 8, warmup, steps, 0)?;
    Ok((lm, rank))
}
