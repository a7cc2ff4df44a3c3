use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use multitune::data::Record;
use multitune::model::{self as load, LoadedModel, ModelSource};

/// The models folder: `$MULTITUNE_MODELS` or `models/` at the workspace root.
pub fn models_dir() -> PathBuf {
    std::env::var_os("MULTITUNE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// The default model, loaded once per test binary.
pub fn default_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = models_dir();
        assert!(
            multitune::model::fetch::default_model_path(&dir).exists(),
            "the default model is missing from {}: run `make model`",
            dir.display()
        );
        load::load_model(&ModelSource::Default, &dir, &Device::Cpu, false).expect("default model loads")
    })
}

/// The `multitune` binary built beside this test binary.
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target/<profile>");
    let b = dir.join("multitune");
    assert!(b.exists(), "{} is missing: build it with `cargo build -p multitune`", b.display());
    b
}

/// The demo sentiment task (see `multitune::data::demo`).
pub fn sentiment_task(n: usize, seed: u64) -> Vec<Record> {
    multitune::data::demo::sentiment_split(n, 0, seed).0
}

/// Writes records as JSONL.
pub fn write_jsonl(path: &std::path::Path, recs: &[Record]) {
    let text: String = recs.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}
