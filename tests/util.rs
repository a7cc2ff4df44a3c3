use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use multitune::data::Record;
use multitune::model::{self as load, LoadedModel, ModelSource};

/// How long a test waits for something it can observe before calling it a hang: far
/// beyond what any wait in the suite takes on a machine several times slower than ours
/// (or on one core beside a CPU hog), so it bounds a hang and never races the code.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(600);

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

/// Sends `sig` to a child process of the test.
pub fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// The `multitune` binary built beside this test binary.
pub fn bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target/<profile>");
    let b = dir.join("multitune");
    assert!(b.exists(), "{} is missing: build it with `cargo build -p multitune-cli`", b.display());
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

/// A small tmpfs mounted at a fresh folder: a disk that fills up. Unmounted on drop.
/// Mounting needs root (CI runs as root).
pub struct SmallDisk {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(mib: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "the disk-full test mounts a {mib} MiB tmpfs at {}: run it as root", path.display());
        Self { path, _dir: dir }
    }

    /// Writes `name` until the disk refuses another byte; its size.
    pub fn fill(&self, name: &str) -> u64 {
        let mut f = std::fs::File::create(self.path.join(name)).unwrap();
        let mut n = 0u64;
        for chunk in [1usize << 20, 64 << 10, 4 << 10, 512] {
            let bytes = vec![7u8; chunk];
            while let Ok(w) = f.write(&bytes) {
                if w == 0 {
                    break;
                }
                n += w as u64;
            }
        }
        n
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Every file under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The most tokens one training example of these demo tasks has for the tiny model
/// (template, prompt and answer, cut at `max_tokens`): a training that ends on whole
/// examples ends less than this short of its budget.
pub fn longest_demo_example(tasks: &[&str], max_tokens: usize) -> usize {
    let (_, tok) = multitune::model::tiny_model(0, &Device::Cpu).unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo");
    tasks
        .iter()
        .flat_map(|t| {
            let d = multitune::data::load(&dir.join(format!("{t}.jsonl")), &Default::default()).unwrap();
            multitune::train::encode_all(&tok, &d.records, None, max_tokens).unwrap()
        })
        .map(|e| e.ids.len())
        .max()
        .unwrap()
}
