use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use multitune::data::Record;
use multitune::loader::{self, LoadedModel, ModelSource};

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
            multitune::fetch::default_model_path(&dir).exists(),
            "the default model is missing from {}: run `make model`",
            dir.display()
        );
        loader::load_model(&ModelSource::Default, &dir, &Device::Cpu, false).expect("default model loads")
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

/// A sentiment task the base model does not answer in the expected one-word form:
/// `n` reviews built from seeded word lists, labelled `positive` / `negative`.
pub fn sentiment_task(n: usize, seed: u64) -> Vec<Record> {
    const GOOD: [&str; 10] = ["wonderful", "excellent", "delightful", "superb", "fantastic", "lovely", "brilliant", "great", "charming", "perfect"];
    const BAD: [&str; 10] = ["terrible", "awful", "boring", "dreadful", "horrible", "disappointing", "poor", "dull", "broken", "useless"];
    const THINGS: [&str; 8] = ["movie", "phone", "restaurant", "book", "hotel", "laptop", "concert", "game"];
    const OPENERS: [&str; 5] = ["Honestly, the", "I thought the", "Overall the", "My friend said the", "This time the"];
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    (0..n)
        .map(|_| {
            let positive = next(2) == 0;
            let adj = if positive { GOOD[next(10)] } else { BAD[next(10)] };
            let text = format!("{} {} was {}.", OPENERS[next(5)], THINGS[next(8)], adj);
            Record {
                prompt: format!("Classify the sentiment of this review as positive or negative.\nReview: {text}"),
                completion: if positive { "positive" } else { "negative" }.into(),
            }
        })
        .collect()
}

/// Writes records as JSONL.
pub fn write_jsonl(path: &std::path::Path, recs: &[Record]) {
    let text: String = recs.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}
