//! Model discovery: the GGUF files and Hugging Face folders in the models folder, each
//! with a stable id. The routes list them; the state resolves ids to load.

use std::path::Path;

use multitune::model::fetch;
use multitune_api::Model;

/// A stable id for a discovered model: a hash of its path.
fn path_id(path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Models found in `dir` (other than the default model's file).
pub fn discovered(dir: &Path) -> Vec<Model> {
    let default = fetch::default_model_path(dir);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        let kind = if p.is_file() && p.extension().is_some_and(|e| e == "gguf") && p != default {
            "gguf"
        } else if p.is_dir() && p.join("config.json").exists() {
            "hf"
        } else {
            continue;
        };
        out.push(Model {
            id: path_id(&p),
            name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            kind: kind.into(),
            path: Some(p.display().to_string()),
            available: true,
            source: "models folder".into(),
        });
    }
    out
}
