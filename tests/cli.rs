use std::process::{Command, Output};

use crate::util::{bin, sentiment_task, write_jsonl};

/// Every scalar of the event files in `dir`.
fn tensorboard_scalars(dir: &std::path::Path) -> Vec<multitune::train::tensorboard::Scalar> {
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].file_name().unwrap().to_str().unwrap().starts_with("events.out.tfevents."));
    multitune::train::tensorboard::read(&files[0]).unwrap()
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env("MULTITUNE_DEVICE", "cpu").output().expect("multitune runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn train_generate_eval_on_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("task.jsonl");
    write_jsonl(&data, &sentiment_task(16, 3));
    let out = dir.path().join("run");
    let (d, o) = (data.to_str().unwrap(), out.to_str().unwrap());
    let r = run(&[
        "train",
        "--model",
        "tiny",
        "--data",
        d,
        "--out",
        o,
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--checkpoint-every",
        "3",
        "--eval-data",
        d,
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("done: 6 steps") && t.contains("held-out: 16 examples"), "{t}");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "checkpoint.safetensors",
        "train_config.json",
        "train_log.jsonl",
        "summary.json",
        "eval.json",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let log = std::fs::read_to_string(out.join("train_log.jsonl")).unwrap();
    let steps = log.lines().filter(|l| l.contains("\"event\":\"step\"")).count();
    assert_eq!(steps, 6);
    assert_eq!(log.lines().filter(|l| l.contains("\"event\":\"checkpoint\"")).count(), 2);
    // The TensorBoard event file holds the same curve as train_log.jsonl (as f32) and the
    // held-out scores after the last step.
    let scalars = tensorboard_scalars(&out.join("tensorboard"));
    let jsonl: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (tag, field) in [("train/loss", "loss"), ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm")] {
        let want: Vec<(u64, f32)> = jsonl
            .iter()
            .filter(|e| e["event"] == "step")
            .map(|e| (e["step"].as_u64().unwrap(), e[field].as_f64().unwrap() as f32))
            .collect();
        let got: Vec<(u64, f32)> = scalars.iter().filter(|s| s.tag == tag).map(|s| (s.step, s.value)).collect();
        assert_eq!(got, want, "{tag}");
    }
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("eval.json")).unwrap()).unwrap();
    let acc = scalars.iter().find(|s| s.tag == "eval/task/accuracy").expect("held-out accuracy logged");
    assert_eq!((acc.step, acc.value), (6, eval["metrics"][0][1]["value"].as_f64().unwrap() as f32));

    // Training again into the same folder without --resume is refused, not clobbered.
    let again = run(&["train", "--model", "tiny", "--data", d, "--out", o, "--steps", "6"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("--resume"), "{}", text(&again));

    let g = run(&["generate", "--model", "tiny", "--adapter", o, "--prompt", "hello", "--max-new-tokens", "5"]);
    assert!(g.status.success(), "{}", text(&g));

    let e = run(&["eval", "--model", "tiny", "--adapter", o, "--data", d]);
    assert!(e.status.success(), "{}", text(&e));
    assert!(
        text(&e).contains("accuracy") && text(&e).contains("classification") && text(&e).contains("confusion"),
        "{}",
        text(&e)
    );
    // What the adapter keeps of the base model, and the probe as measured (what
    // bench/check_retention.py recomputes with transformers and PEFT).
    let probe = tempfile::NamedTempFile::new().unwrap();
    let r = run(&["retention", "--model", "tiny", "--adapter", o, "--json", probe.path().to_str().unwrap()]);
    assert!(r.status.success() && text(&r).contains("probe prompts answered as the base model does"), "{}", text(&r));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(probe.path()).unwrap()).unwrap();
    let n = v["examples"].as_array().unwrap().len();
    assert!(n > 0 && v["prompts"] == n && v["kl"].as_f64().unwrap() >= 0.0, "{v}");
    assert!(
        v["examples"][0]["ids"].as_array().unwrap().len() > v["examples"][0]["prompt_len"].as_u64().unwrap() as usize
    );
    let ej = run(&["eval", "--model", "tiny", "--data", d, "--json", "--bootstrap", "50"]);
    let v: serde_json::Value = serde_json::from_slice(&ej.stdout).unwrap();
    assert_eq!(v[0]["examples"], 16);
    assert_eq!(v[0]["kind"], "classification");
    assert!(v[0]["perplexity"]["value"].as_f64().unwrap() > 1.0);
    assert_eq!(v[0]["metrics"][0][0], "accuracy");
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\",\"answer\":\"b\"}\n").unwrap();
    let o = dir.path().join("run");
    let r = run(&["train", "--model", "tiny", "--data", data.to_str().unwrap(), "--out", o.to_str().unwrap()]);
    assert!(!r.status.success());
    assert!(text(&r).contains("line 2: field `completion`: is missing"), "{}", text(&r));
    assert!(!o.join("checkpoint.safetensors").exists());

    let r =
        run(&["train", "--model", "tiny", "--data", data.to_str().unwrap(), "--out", o.to_str().unwrap(), "--lr=-1"]);
    assert!(text(&r).contains("learning rate"), "{}", text(&r));
    let r = run(&[
        "train",
        "--model",
        "tiny",
        "--data",
        data.to_str().unwrap(),
        "--out",
        o.to_str().unwrap(),
        "--targets",
        "q,lm_head",
    ]);
    assert!(text(&r).contains("`lm_head`"), "{}", text(&r));
    // Data sizes: a share leaving a task fewer than 4 training examples is refused
    // before any model is loaded or file written, naming the flag and the task.
    let small = dir.path().join("small.jsonl");
    let lines: Vec<String> = (0..20).map(|i| format!("{{\"prompt\":\"q{i}\",\"completion\":\"a{i}\"}}")).collect();
    std::fs::write(&small, lines.join("\n")).unwrap();
    let out = dir.path().join("sizes");
    let (small_task, out_dir) = (small.to_str().unwrap(), out.to_str().unwrap());
    let compare_small = |more: &[&str]| {
        run(&[&["compare", "--model", "tiny", "--tasks", small_task, "--out", out_dir][..], more].concat())
    };
    let r = compare_small(&["--data-fractions", "0.1,0.5"]);
    assert!(!r.status.success());
    assert!(
        text(&r).contains("--data-fractions: 0.1 leaves task `small` 2 training examples of its 16"),
        "{}",
        text(&r)
    );
    assert!(!out.exists(), "nothing written");
    // A keep set that is a task's file is refused before anything is read or written.
    let r = compare_small(&["--keep", small_task]);
    assert!(!r.status.success());
    assert!(text(&r).contains(&format!("--keep {}: `small` is also a task", small.display())), "{}", text(&r));
    assert!(!out.exists(), "nothing written");
    // Searches over nothing, and adapter methods: refused at once, naming the flag.
    let r = compare_small(&["--strategies", "combined", "--tune-merges"]);
    assert!(text(&r).contains("--tune-merges: no merge to tune"), "{}", text(&r));
    let r = compare_small(&["--method", "qlora"]);
    assert!(text(&r).contains("--method `qlora`: use lora, rslora, dora, pissa"), "{}", text(&r));
    let r = compare_small(&["--lora-plus", "0"]);
    assert!(text(&r).contains("lora_plus: the B factors' learning-rate ratio must be positive, not 0"), "{}", text(&r));
    let r = compare_small(&["--method", "dora", "--strategies", "separate"]);
    assert!(text(&r).contains("merging DoRA adapters is not defined"), "{}", text(&r));
    let r = compare_small(&["--method", "pissa", "--rank", "1000", "--strategies", "combined"]);
    assert!(text(&r).contains("--rank: rank 1000 is larger than PiSSA allows"), "{}", text(&r));
    let r = compare_small(&["--methods", "lora,pissa", "--rank", "1000", "--strategies", "combined"]);
    assert!(text(&r).contains("--rank: rank 1000 is larger than PiSSA allows"), "{}", text(&r));
    let r = compare_small(&["--methods", "lora,qlora"]);
    assert!(text(&r).contains("--methods `qlora`: use lora, rslora, dora, pissa"), "{}", text(&r));
    let r = compare_small(&["--methods", "dora"]);
    assert!(text(&r).contains("--methods: dora alone compares nothing"), "{}", text(&r));
    let r = compare_small(&["--methods", "lora,dora", "--method", "pissa"]);
    assert!(text(&r).contains("so --method (pissa) is unused"), "{}", text(&r));
    let tiny_task = dir.path().join("tiny.jsonl");
    std::fs::write(&tiny_task, lines[..8].join("\n")).unwrap();
    let r = run(&[
        "compare",
        "--model",
        "tiny",
        "--tasks",
        tiny_task.to_str().unwrap(),
        "--out",
        out_dir,
        "--mixing",
        "search",
    ]);
    assert!(text(&r).contains("--mixing: task `tiny` has 6 training examples"), "{}", text(&r));
    assert!(!out.exists(), "nothing written");
    let r = run(&[
        "train",
        "--model",
        "tiny",
        "--data",
        small_task,
        "--out",
        o.to_str().unwrap(),
        "--method",
        "pissa",
        "--rank",
        "500",
    ]);
    assert!(text(&r).contains("rank 500 is larger than PiSSA allows"), "{}", text(&r));
    let r = run(&["generate", "--model", "no-such-model", "--prompt", "x"]);
    assert!(!r.status.success() && text(&r).contains("`no-such-model`"), "{}", text(&r));
    let r = run(&["generate", "--model", "tiny", "--adapter", dir.path().to_str().unwrap(), "--prompt", "x"]);
    assert!(!r.status.success() && text(&r).contains("adapter_config.json"), "{}", text(&r));
}

#[test]
fn data_check_prints_a_summary_or_the_errors() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/topic.jsonl");
    let r = run(&["data", "check", demo, "--model", "tiny"]);
    assert!(r.status.success(), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("300 examples, format prompt/completion, kind classification"), "{t}");
    assert!(
        t.contains("labels (4):") && t.contains("technology") && t.contains("tokens per example") && t.contains("p90"),
        "{t}"
    );
    let bad = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/malformed/ragged_csv_00.csv");
    let r = run(&["data", "check", bad, "--no-tokens"]);
    assert_eq!(r.status.code(), Some(1));
    assert!(text(&r).contains("line 2, column 3: row has 3 fields; the header has 2"), "{}", text(&r));
}

#[test]
fn bench_prints_figures_for_the_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");
    let r = run(&[
        "bench",
        "--models",
        "tiny",
        "--shapes",
        "4x16",
        "--demo",
        demo,
        "--warmup",
        "1",
        "--steps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("matmul peak") && t.contains("ours/s") && t.contains("MFU"), "{t}");
    let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("tiny")).collect();
    // 4x16 and demo in train and eval, label ranking on the first classification task,
    // and greedy generation on each generation task's held-out prompts.
    assert_eq!(rows.len(), 7, "{t}");
    assert!(rows.iter().any(|l| l.contains("rank:sentiment")), "{t}");
    assert!(rows.iter().any(|l| l.contains("gen:arithmetic")) && t.contains("gen:dates: ours"), "{t}");
    assert!(t.lines().next().is_some_and(|l| l.contains("matmul: ")), "{t}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // Which engine computed the products, and why.
    assert!(v["matmul"]["many_rows"].is_string() && !v["matmul"]["how"].as_str().unwrap().is_empty(), "{v}");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 7);
    for row in rows {
        let secs: Vec<f64> = row["ours"]["step_secs"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect();
        assert!(!secs.is_empty() && secs.iter().all(|s| *s > 0.0), "{row}");
        assert!(row["units"].as_u64().unwrap() > 0, "{row}");
        assert!(row["reference"].is_null());
        match row["mode"].as_str().unwrap() {
            "rank" => assert!(row["flops"].is_null()),
            "generate" => {
                // Every held-out prompt answered (the demo's 100 per task), in order.
                assert!(row["flops"].is_null());
                assert_eq!(row["ours"]["outputs"].as_array().unwrap().len(), 100, "{row}");
                assert_eq!(row["units"].as_u64(), Some(100));
            }
            _ => assert!(row["flops"].as_f64().unwrap() > 0.0),
        }
    }
    // 2 timed steps of 4 rows of 16 tokens.
    assert_eq!(rows[0]["units"].as_u64(), Some(2 * 4 * 16));
    // DoRA workloads: named so, measured with the magnitudes.
    let r = run(&[
        "bench", "--models", "tiny", "--shapes", "4x16", "--demo", "", "--modes", "train", "--steps", "1", "--method",
        "dora",
    ]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).lines().any(|l| l.starts_with("tiny") && l.contains("4x16 dora")), "{}", text(&r));
    let r = run(&["bench", "--models", "tiny", "--method", "pissa"]);
    assert!(text(&r).contains("--method `pissa`: use lora, rslora or dora"), "{}", text(&r));
}

#[test]
fn compare_writes_a_report_and_charts_redraw_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");
    let (t1, t2) = (format!("{tasks}/sentiment.jsonl"), format!("{tasks}/topic.jsonl"));
    let out = dir.path().join("cmp");
    let o = out.to_str().unwrap();
    let r = run(&[
        "compare",
        "--model",
        "tiny",
        "--tasks",
        &t1,
        &t2,
        "--strategies",
        "combined,sequential,multi-head",
        "--budget-tokens",
        "3000",
        "--eval-limit",
        "4",
        "--bootstrap",
        "20",
        "--out",
        o,
    ]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(text(&r).contains("## Recommendation") && text(&r).contains("sequential (continue)"), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr)
            .contains("With 4 held-out examples per task (2 tasks), macro-average gaps under"),
        "the power statement comes before training: {}",
        text(&r)
    );
    assert!(out.join("report.json").exists() && out.join("charts/scores.png").exists());
    // One TensorBoard run per run of the comparison: the sequential run's two stages on
    // one step axis, each task scored after each stage.
    let seq = tensorboard_scalars(&out.join("tensorboard/sequential-continue"));
    let steps: Vec<u64> = seq.iter().filter(|s| s.tag == "train/loss").map(|s| s.step).collect();
    assert!(!steps.is_empty() && steps.windows(2).all(|w| w[1] == w[0] + 1) && steps[0] == 1, "{steps:?}");
    assert_eq!(seq.iter().filter(|s| s.tag == "eval/sentiment").count(), 2, "{seq:?}");
    assert!(out.join("tensorboard/base").is_dir() && out.join("tensorboard/multi-head").is_dir());
    // The multi-head run answers through its heads: a classifier task with its labels.
    let heads_dir = out.join("adapters/multi-head");
    let h = heads_dir.to_str().unwrap();
    let prompt = "Classify the sentiment of this review as positive or negative.\nReview: Great food.";
    let r = run(&["generate", "--model", "tiny", "--adapter", h, "--task", "sentiment", "--prompt", prompt]);
    assert!(r.status.success(), "{}", text(&r));
    let lines: Vec<String> = String::from_utf8_lossy(&r.stdout).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "one line per label: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("positive")) && lines.iter().any(|l| l.starts_with("negative")));
    let r = run(&["generate", "--model", "tiny", "--adapter", h, "--task", "nope", "--prompt", "x"]);
    assert!(!r.status.success() && text(&r).contains("no head for task `nope`"), "{}", text(&r));
    let r = run(&["generate", "--model", "tiny", "--task", "sentiment", "--prompt", "x"]);
    assert!(!r.status.success() && text(&r).contains("--task needs --adapter"), "{}", text(&r));
    let redraw = dir.path().join("again");
    let r = run(&["charts", "--report", out.join("report.json").to_str().unwrap(), "--out", redraw.to_str().unwrap()]);
    assert!(r.status.success(), "{}", text(&r));
    assert_eq!(
        std::fs::read(redraw.join("scores.svg")).unwrap(),
        std::fs::read(out.join("charts/scores.svg")).unwrap()
    );
    // Adapter methods compared: each strategy once per method, the report says which where.
    let methods = dir.path().join("methods");
    let r = run(&[
        "compare",
        "--model",
        "tiny",
        "--tasks",
        &t1,
        &t2,
        "--strategies",
        "combined",
        "--methods",
        "lora,rslora",
        "--retention",
        "--budget-tokens",
        "800",
        "--eval-limit",
        "4",
        "--bootstrap",
        "20",
        "--out",
        methods.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", text(&r));
    let t = text(&r);
    assert!(t.contains("## Adapter methods") && t.contains("| combined (proportional) | "), "{t}");
    assert!(methods.join("adapters/combined-proportional-rslora/adapter_config.json").exists(), "{t}");
    // With --retention, what it cost: in report.md and at the end, as a share of the run.
    assert!(t.contains("## What each run keeps of the base model") && t.contains("Measuring took"), "{t}");
    let cost = t.lines().find(|l| l.starts_with("retention probe: ")).unwrap_or_else(|| panic!("{t}"));
    assert!(cost.contains(" s of the comparison's ") && cost.ends_with("%)"), "{cost}");
    let r = run(&[
        "compare",
        "--model",
        "tiny",
        "--tasks",
        &t1,
        "--strategies",
        "bogus",
        "--budget-tokens",
        "10",
        "--out",
        o,
    ]);
    assert!(!r.status.success() && text(&r).contains("unknown strategy `bogus`"), "{}", text(&r));
}

#[test]
fn the_matmul_engine_is_measured_once_and_can_be_forced() {
    let cache = tempfile::tempdir().unwrap();
    let matmul = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("matmul").args(args).env("MULTITUNE_CACHE", cache.path()).env_remove("MULTITUNE_BLAS");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().expect("multitune runs");
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let file = cache.path().join("blas-calibration.json");
    let first = matmul(&[], &[]);
    assert!(first.contains("products of more than 64 rows:") && first.contains("why:"), "{first}");
    if first.contains("no BLAS library found") {
        // Nothing to choose between: the built-in gemm, nothing measured or kept.
        assert!(first.contains("gemm (built in)") && !file.exists(), "{first}");
    } else {
        // Measured now (gemm and every library found), kept, then read back.
        assert!(first.contains("measured now") && first.matches("GFLOP/s many rows").count() >= 2, "{first}");
        let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let figures = kept["entries"][0]["figures"].as_array().unwrap();
        assert_eq!(figures[0]["engine"], "gemm (built in)");
        assert!(figures.iter().all(|f| f["many_rows_gflops"].as_f64().unwrap() > 0.0), "{kept}");
        let again = matmul(&[], &[]);
        assert!(again.contains("measured earlier"), "{again}");
        // The choice is the cached one: the same engines both times.
        assert_eq!(first.lines().take(2).collect::<Vec<_>>(), again.lines().take(2).collect::<Vec<_>>());
        assert!(matmul(&[], &["--remeasure"]).contains("measured now"));
        let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(kept["entries"].as_array().unwrap().len(), 1, "{kept}");
    }
    let off = matmul(&[("MULTITUNE_BLAS", "off")], &[]);
    assert!(off.contains("rows: gemm (built in)") && off.contains("why: MULTITUNE_BLAS=off"), "{off}");
    let bad = matmul(&[("MULTITUNE_BLAS", "/no/such/libblas.so")], &[]);
    assert!(bad.contains("could not load cblas_sgemm") && bad.contains("rows: gemm (built in)"), "{bad}");
}

/// What the GPU check benches where the real weights cannot travel: random weights in the
/// default model's shape, measured like any model (here on the CPU, one short step).
#[test]
fn bench_runs_a_random_model_in_the_default_shape() {
    let r = run(&[
        "bench",
        "--models",
        "random:smollm2-135m",
        "--shapes",
        "2x16",
        "--demo",
        "",
        "--modes",
        "train",
        "--warmup",
        "1",
        "--steps",
        "1",
    ]);
    let t = text(&r);
    assert!(r.status.success(), "{t}");
    assert!(t.lines().any(|l| l.starts_with("random:smollm2-135m") && l.contains("train")), "{t}");
    let bad = run(&["bench", "--models", "random:gpt-5", "--shapes", "2x16", "--demo", ""]);
    assert!(!bad.status.success() && text(&bad).contains("random:llama-1b"), "{}", text(&bad));
}

/// The GPU check's runner (what `make gpu-bundle` packs) stops with a clear message where
/// no GPU is seen — every CI machine — and, where one is, asks for the bundle's binaries.
#[test]
fn the_gpu_check_says_when_there_is_no_gpu() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gpu-check.sh");
    let out = tempfile::tempdir().unwrap();
    let r = Command::new("sh").arg(script).env("OUT_DIR", out.path()).output().unwrap();
    let t = text(&r);
    let gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).lines().any(|l| l.starts_with("GPU ")));
    if gpu {
        assert_eq!(r.status.code(), Some(2), "{t}");
        assert!(t.contains("make gpu-bundle"), "{t}");
    } else {
        assert_eq!(r.status.code(), Some(3), "{t}");
        assert!(t.contains("no GPU seen"), "{t}");
        assert!(std::fs::read_dir(out.path()).unwrap().next().is_none(), "nothing written without a GPU");
    }
}
