//! The matrix product's engines: the `gemm` crate (candle's own, always there) and any
//! CBLAS found at run time — nothing is linked at build time. Which one computes a product
//! is **measured, not assumed** ([`select`]): the first time a machine runs a model, a short
//! calibration times every engine on that model's own products, separately for few rows
//! (decoding) and many (training, scoring), and the faster one wins each class. The result is
//! cached per CPU, thread count, libraries and shapes in `blas-calibration.json` under
//! [`cache_dir`], so later runs start at once.
//!
//! Libraries looked up: `MULTITUNE_BLAS=path` (only that one), or the OpenBLAS that
//! `multitune fetch-model` unpacks from PyPI's `scipy-openblas32` (the build numpy ships:
//! current, with run-time CPU detection) into `<models>/lib/`, and MKL (`libmkl_rt`), by
//! the dynamic loader's usual search. The system's OpenBLAS is not looked up (Debian's
//! 0.3.21 can deadlock at process exit). `MULTITUNE_BLAS=off` keeps `gemm` without
//! measuring.

use std::ffi::{c_char, c_int, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};

type Sgemm = unsafe extern "C" fn(
    layout: c_int,
    transa: c_int,
    transb: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// The folder `multitune fetch-model` unpacks the BLAS into, inside the models folder.
pub const LIB_DIR: &str = "lib";
/// The fetched OpenBLAS's file name.
pub const FETCHED_NAME: &str = "libscipy_openblas.so";

/// A loaded CBLAS.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: Sgemm,
    /// The file it came from, as looked up.
    pub path: String,
    /// What it says it is (`OpenBLAS 0.3.34 … Haswell`, `MKL`).
    pub label: String,
    /// Size and modification time of the file, for the calibration's cache key.
    stamp: String,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").field("path", &self.path).field("label", &self.label).finish()
    }
}

/// Products with at most this many rows form the "few rows" class (decoding batches).
pub const FEW_ROWS: usize = 64;

/// The shapes of a model's products that the calibration times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Hidden size.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Width of the key (and value) projection.
    pub kv: usize,
}

impl Dims {
    /// The default model's (SmolLM2-135M), used when no model said otherwise.
    pub const DEFAULT: Dims = Dims { hidden: 576, intermediate: 1536, kv: 192 };
}

/// An engine: the built-in `gemm` or the `i`-th loaded library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The `gemm` crate.
    Gemm,
    /// `libraries()[i]`.
    Blas(usize),
}

/// One engine's calibration figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// `gemm (built in)` or the library's label.
    pub engine: String,
    /// The library's file (`None` for gemm).
    pub path: Option<String>,
    /// GFLOP/s on few-row products (16 rows).
    pub few_rows_gflops: f64,
    /// GFLOP/s on many-row products (384 rows, forward and input-gradient layouts).
    pub many_rows_gflops: f64,
}

/// Which engine computes which products, and why.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Engine for products of at most [`FEW_ROWS`] rows.
    pub few_rows: Engine,
    /// Engine for larger products.
    pub many_rows: Engine,
    /// `MULTITUNE_BLAS=…`, `measured now`, `measured earlier (cache file)`, or why nothing
    /// was measured.
    pub how: String,
    /// The figures behind the choice (empty when nothing was measured).
    pub figures: Vec<Figure>,
    /// The shapes measured on.
    pub dims: Dims,
    /// Threads a product may use (the process's count, set once at start:
    /// `multitune::tune_runtime`), as measured with.
    pub threads: usize,
}

impl Selection {
    /// The engines this selection runs products on: the value a model carries and its
    /// kernels are given.
    pub fn products(&self) -> Products {
        let engine = |e: Engine| match e {
            Engine::Gemm => None,
            Engine::Blas(i) => libraries().get(i),
        };
        Products { few_rows: engine(self.few_rows), many_rows: engine(self.many_rows), threads: self.threads }
    }
}

/// The engines a model's matrix products run on, chosen for its shapes ([`select`]) and
/// passed down to the kernels with the model: products of at most [`FEW_ROWS`] rows on
/// `few_rows`, larger ones on `many_rows` (`None`: the built-in `gemm`).
#[derive(Debug, Clone, Copy)]
pub struct Products {
    few_rows: Option<&'static Blas>,
    many_rows: Option<&'static Blas>,
    /// Threads the built-in `gemm` may use for a large product.
    pub threads: usize,
}

impl Products {
    /// Every product on the built-in `gemm` with `threads` threads (a model no selection
    /// was made for: the tiny test model, a GPU model).
    pub fn gemm(threads: usize) -> Products {
        Products { few_rows: None, many_rows: None, threads }
    }

    /// The library that computes a product of `rows` rows, or `None` for `gemm`.
    pub fn for_rows(&self, rows: usize) -> Option<&'static Blas> {
        if rows <= FEW_ROWS {
            self.few_rows
        } else {
            self.many_rows
        }
    }
}

static SEARCH_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);
static REMEASURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LIBRARIES: OnceLock<Vec<Blas>> = OnceLock::new();
/// The selections made in this process, one per shape, the latest last.
static SELECTIONS: Mutex<Vec<&'static Selection>> = Mutex::new(Vec::new());

/// Chooses the engines for a model with product shapes `dims` (measuring them unless
/// cached on disk), looking for a fetched library in `models_dir`: once per shape in a
/// process; a model of other shapes gets its own choice.
pub fn select(models_dir: &Path, dims: Dims) -> &'static Selection {
    look_in(models_dir);
    let mut made = SELECTIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = match made.iter().position(|s| s.dims == dims) {
        Some(i) => made.remove(i),
        // Leaked on purpose: a handful per process at most (one per model shape).
        None => &*Box::leak(Box::new(choose(dims))),
    };
    made.push(s);
    s
}

/// The latest selection made in this process (`/api/version` reports it), if any.
pub fn latest() -> Option<&'static Selection> {
    SELECTIONS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).last().copied()
}

/// Makes the coming selection measure again, replacing what the cache holds for this
/// machine (`multitune matmul --remeasure`; after a BIOS, driver or library change).
pub fn remeasure() {
    REMEASURE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Looks for a fetched library in `models_dir` (the first folder named wins; call before
/// the first product).
pub fn look_in(models_dir: &Path) {
    let mut dir = SEARCH_DIR.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if dir.is_none() {
        *dir = Some(models_dir.join(LIB_DIR));
    }
}

/// The loaded libraries (loaded on first call).
pub fn libraries() -> &'static [Blas] {
    LIBRARIES.get_or_init(load_all)
}

/// An engine's name.
pub fn engine_name(e: Engine) -> String {
    match e {
        Engine::Gemm => "gemm (built in)".into(),
        Engine::Blas(i) => libraries().get(i).map_or_else(|| "?".into(), |b| b.label.clone()),
    }
}

/// One line for logs, the bench and `/api/version`: what computes the products and why.
pub fn describe_selection(s: &Selection) -> String {
    let engines = if s.few_rows == s.many_rows {
        engine_name(s.many_rows)
    } else {
        format!(
            "{} (more than {FEW_ROWS} rows), {} (up to {FEW_ROWS})",
            engine_name(s.many_rows),
            engine_name(s.few_rows)
        )
    };
    let figures: Vec<String> =
        s.figures.iter().map(|f| format!("{} {:.0}/{:.0}", f.engine, f.many_rows_gflops, f.few_rows_gflops)).collect();
    if figures.is_empty() {
        format!("{engines}; {}", s.how)
    } else {
        format!("{engines}; {} — GFLOP/s many/few rows: {}", s.how, figures.join(", "))
    }
}

fn candidates(wanted: Option<&str>) -> Vec<String> {
    if let Some(path) = wanted {
        return vec![path.to_string()];
    }
    let mut out = Vec::new();
    let dir = SEARCH_DIR.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if let Some(p) = dir.map(|d| d.join(FETCHED_NAME)).filter(|p| p.exists()) {
        out.push(p.display().to_string());
    }
    // Not the system's `libopenblas.so.0`: Debian's 0.3.21 deadlocks at process exit
    // joining its threads (`blas_thread_shutdown_`; a finished test binary hung there),
    // and the fetched OpenBLAS measured as fast or faster wherever both were timed.
    // `MULTITUNE_BLAS=path` still loads any library asked for.
    out.extend(["libmkl_rt.so.2", "libmkl_rt.so"].map(String::from));
    out
}

/// `MULTITUNE_BLAS`: `None` when unset or `auto`.
fn wanted() -> Option<String> {
    std::env::var("MULTITUNE_BLAS").ok().filter(|w| !w.is_empty() && w != "auto")
}

fn load_all() -> Vec<Blas> {
    let wanted = wanted();
    if matches!(wanted.as_deref(), Some("off" | "none" | "gemm")) {
        return Vec::new();
    }
    let mut out: Vec<Blas> = Vec::new();
    for name in candidates(wanted.as_deref()) {
        if let Some(b) = open(&name) {
            // `libmkl_rt.so.2` and `libmkl_rt.so` are usually one library.
            if !out.iter().any(|o| o.label == b.label && o.stamp == b.stamp) {
                out.push(b);
            }
        }
    }
    if out.is_empty() {
        if let Some(w) = wanted {
            eprintln!("MULTITUNE_BLAS={w}: could not load cblas_sgemm from it; using the built-in gemm");
        }
    }
    out
}

fn open(name: &str) -> Option<Blas> {
    // SAFETY: loading a BLAS runs its initialisers, which is what such libraries are for.
    let lib = unsafe { libloading::Library::new(name) }.ok()?;
    let threads = c_int::try_from(candle_core::utils::get_num_threads()).unwrap_or(1);
    // scipy-openblas prefixes every symbol with `scipy_`.
    for prefix in ["", "scipy_"] {
        let sym = |s: &str| format!("{prefix}{s}");
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS.
        let Ok(sgemm) = (unsafe { lib.get::<Sgemm>(&sym("cblas_sgemm")) }) else { continue };
        let sgemm = *sgemm;
        // Match the thread count to candle's: both run on the same cores.
        // SAFETY: these setters take one int and the config getter returns a static C
        // string, as documented by OpenBLAS and MKL.
        let label = unsafe {
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(&sym("openblas_set_num_threads")) {
                f(threads);
            } else if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(b"MKL_Set_Num_Threads\0") {
                f(threads);
            }
            match lib.get::<unsafe extern "C" fn() -> *const c_char>(&sym("openblas_get_config")) {
                Ok(f) => {
                    let p = f();
                    let config =
                        if p.is_null() { String::new() } else { CStr::from_ptr(p).to_string_lossy().into_owned() };
                    // "OpenBLAS 0.3.34 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64" →
                    // the version and the kernel set it picked for this CPU.
                    let words: Vec<&str> = config.split_whitespace().collect();
                    let version = words.iter().take(2).copied().collect::<Vec<_>>().join(" ");
                    let core = words.iter().rev().find(|w| !w.contains('=') && w.chars().any(char::is_lowercase));
                    let origin = if prefix.is_empty() { "" } else { ", scipy-openblas" };
                    match core {
                        Some(c) if words.len() > 2 => format!("{version} ({c}{origin})"),
                        _ => format!("{version}{}", if origin.is_empty() { "" } else { " (scipy-openblas)" }),
                    }
                }
                Err(_) if name.contains("mkl") => "MKL".to_string(),
                Err(_) => name.to_string(),
            }
        };
        let stamp = stamp(sgemm, name);
        return Some(Blas { _lib: lib, sgemm, path: name.to_string(), label, stamp });
    }
    None
}

/// Size and modification time of the file a library was loaded from: the mapping of the
/// process (`/proc/self/maps`) that holds `sgemm`'s code names it, however it was looked up.
fn stamp(sgemm: Sgemm, name: &str) -> String {
    let addr = sgemm as usize;
    let resolved = std::fs::read_to_string("/proc/self/maps").ok().and_then(|maps| {
        maps.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            let (lo, hi) = f.next()?.split_once('-')?;
            let (lo, hi) = (usize::from_str_radix(lo, 16).ok()?, usize::from_str_radix(hi, 16).ok()?);
            let path = f.nth(4)?;
            (lo <= addr && addr < hi && path.starts_with('/')).then(|| PathBuf::from(path))
        })
    });
    let path = resolved.unwrap_or_else(|| PathBuf::from(name));
    match std::fs::metadata(&path) {
        Ok(m) => {
            let mtime =
                m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            format!("{}:{}:{mtime}", path.display(), m.len())
        }
        Err(_) => path.display().to_string(),
    }
}

/// An operand of a matrix product: `data[i, p]` at `i·strides.0 + p·strides.1` (row-major
/// with its leading dimension, `(ld, 1)`, or its transpose stored so, `(1, ld)`).
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Row and column strides.
    pub strides: (usize, usize),
}

impl<'a> Mat<'a> {
    /// `data` with these (row, column) strides.
    pub fn new(data: &'a [f32], strides: (usize, usize)) -> Self {
        Self { data, strides }
    }
}

impl Blas {
    /// `dst (m×n, row-major) = [dst +] scale · lhs · rhs` with `lhs[i, p]` at
    /// `i·lrs + p·lcs` and `rhs[p, j]` at `p·rrs + j·rcs`; one stride of each operand
    /// must be 1. Returns `false` (doing nothing) when the shapes do not fit CBLAS.
    pub fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: &mut [f32],
        accumulate: bool,
        lhs: Mat,
        rhs: Mat,
        scale: f32,
    ) -> bool {
        let (Mat { data: lhs, strides: (lrs, lcs) }, Mat { data: rhs, strides: (rrs, rcs) }) = (lhs, rhs);
        // Row-major `rows × cols` with leading dimension `rs`, or its transpose stored
        // row-major with leading dimension `cs`.
        let operand = |rs: usize, cs: usize, rows: usize, cols: usize| {
            if cs == 1 && rs >= cols.max(1) {
                Some((NO_TRANS, rs))
            } else if rs == 1 && cs >= rows.max(1) {
                Some((TRANS, cs))
            } else {
                None
            }
        };
        let (Some((ta, lda)), Some((tb, ldb))) = (operand(lrs, lcs, m, k), operand(rrs, rcs, k, n)) else {
            return false;
        };
        let ints = [m, n, k, lda, ldb];
        if ints.iter().any(|&v| c_int::try_from(v).is_err()) || dst.len() < m * n {
            return false;
        }
        // SAFETY: the caller (`common::mm`) has checked that every index the strides reach
        // lies inside `lhs` and `rhs`, and `dst` holds `m·n` values with row stride `n`.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                scale,
                lhs.as_ptr(),
                lda as c_int,
                rhs.as_ptr(),
                ldb as c_int,
                if accumulate { 1.0 } else { 0.0 },
                dst.as_mut_ptr(),
                n as c_int,
            );
        }
        true
    }
}

/// Where Multitune keeps per-machine files: `MULTITUNE_CACHE`, else
/// `$XDG_CACHE_HOME/multitune`, else `~/.cache/multitune`.
pub fn cache_dir() -> Option<PathBuf> {
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("MULTITUNE_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("multitune")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("multitune")))
}

/// The calibration cache's file.
pub const CACHE_FILE: &str = "blas-calibration.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    entries: Vec<CacheEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    figures: Vec<Figure>,
}

/// The first value of `name` in `/proc/cpuinfo` (empty where there is none).
pub fn cpuinfo_field(name: &str) -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// The CPU model and the vector extensions that decide which kernels a library runs.
fn cpu_key() -> String {
    let flags = cpuinfo_field("flags");
    let wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "avx_vnni"];
    let have: Vec<&str> = wanted.into_iter().filter(|f| flags.split_whitespace().any(|x| x == *f)).collect();
    format!("{} [{}] {}", cpuinfo_field("model name"), have.join(","), std::env::consts::ARCH)
}

fn cache_key(dims: Dims, libs: &[Blas]) -> String {
    let stamps: Vec<&str> = libs.iter().map(|b| b.stamp.as_str()).collect();
    format!(
        "cpu={}; threads={}; dims={}x{}x{}; libraries={}",
        cpu_key(),
        candle_core::utils::get_num_threads(),
        dims.hidden,
        dims.intermediate,
        dims.kv,
        stamps.join(",")
    )
}

fn choose(dims: Dims) -> Selection {
    let libs = libraries();
    let wanted = wanted();
    let off = matches!(wanted.as_deref(), Some("off" | "none" | "gemm"));
    let threads = candle_core::utils::get_num_threads();
    let single =
        |e: Engine, how: String| Selection { few_rows: e, many_rows: e, how, figures: Vec::new(), dims, threads };
    if off {
        return single(Engine::Gemm, "MULTITUNE_BLAS=off".into());
    }
    if let Some(w) = &wanted {
        return match libs.first() {
            Some(_) => single(Engine::Blas(0), format!("MULTITUNE_BLAS={w}")),
            None => single(Engine::Gemm, format!("MULTITUNE_BLAS={w} could not be loaded")),
        };
    }
    if libs.is_empty() {
        return single(Engine::Gemm, "no BLAS library found".into());
    }
    let key = cache_key(dims, libs);
    let path = cache_dir().map(|d| d.join(CACHE_FILE));
    let read = |p: &Path| -> CacheFile {
        std::fs::read(p).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    };
    let fresh = REMEASURE.load(std::sync::atomic::Ordering::Relaxed);
    let cached =
        if fresh { None } else { path.as_deref().map(read).and_then(|c| c.entries.into_iter().find(|e| e.key == key)) };
    if let Some(entry) = cached {
        let how = format!(
            "measured earlier ({})",
            path.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
        return from_figures(entry.figures, how, dims);
    }
    let figures = calibrate(dims, libs);
    if let Some(p) = &path {
        // Another process may have measured meanwhile: its figures win, so every process
        // on this machine computes the same way.
        let mut file = read(p);
        if fresh {
            file.entries.retain(|e| e.key != key);
        } else if let Some(entry) = file.entries.iter().find(|e| e.key == key) {
            return from_figures(entry.figures.clone(), format!("measured earlier ({})", p.display()), dims);
        }
        file.entries.push(CacheEntry { key, figures: figures.clone() });
        if let Ok(bytes) = serde_json::to_vec_pretty(&file) {
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = crate::persist::write_atomic(p, &bytes) {
                eprintln!("could not keep the BLAS calibration in {}: {e}", p.display());
            }
        }
    }
    from_figures(figures, "measured now".into(), dims)
}

/// The engines with the best figures (the built-in one on ties).
fn from_figures(figures: Vec<Figure>, how: String, dims: Dims) -> Selection {
    let engine = |f: &Figure| match &f.path {
        None => Some(Engine::Gemm),
        Some(p) => libraries().iter().position(|b| &b.path == p).map(Engine::Blas),
    };
    let best = |rate: fn(&Figure) -> f64| {
        let mut out = (Engine::Gemm, figures.iter().find(|f| f.path.is_none()).map_or(0.0, rate));
        for f in &figures {
            if let Some(e) = engine(f) {
                if rate(f) > out.1 {
                    out = (e, rate(f));
                }
            }
        }
        out.0
    };
    let (few_rows, many_rows) = (best(|f| f.few_rows_gflops), best(|f| f.many_rows_gflops));
    Selection { few_rows, many_rows, how, figures, dims, threads: candle_core::utils::get_num_threads() }
}

/// One product of the calibration: rows, columns, depth, and whether the right operand is
/// a weight stored `[out, in]` (the forward pass) or `[in, out]` (the input gradient).
type Product = (usize, usize, usize, bool);

/// The products of one decoder block at `rows` rows: the forward projections (q/o, k/v,
/// gate/up, down) and, for many rows, their input gradients.
fn products(dims: Dims, rows: usize, backward: bool) -> Vec<Product> {
    let Dims { hidden: d, intermediate: f, kv } = dims;
    let mut v = vec![(rows, d, d, true), (rows, kv, d, true), (rows, f, d, true), (rows, d, f, true)];
    if backward {
        v.extend([(rows, d, d, false), (rows, d, kv, false), (rows, d, f, false), (rows, f, d, false)]);
    }
    v
}

/// Times `gemm` and each library on the model's products, interleaved round by round so
/// that the machine's drift affects all alike; the median round of each counts.
fn calibrate(dims: Dims, libs: &[Blas]) -> Vec<Figure> {
    const FEW: usize = 16;
    const MANY: usize = 384;
    const ROUNDS: usize = 7;
    let threads = candle_core::utils::get_num_threads();
    let classes = [(products(dims, FEW, false), 8usize), (products(dims, MANY, true), 1usize)];
    let engines: Vec<Option<&Blas>> = std::iter::once(None).chain(libs.iter().map(Some)).collect();
    let mut rates = vec![[0f64; 2]; engines.len()];
    for (ci, (prods, repeat)) in classes.iter().enumerate() {
        let flops: f64 = prods.iter().map(|&(m, n, k, _)| 2.0 * (m * n * k) as f64).sum::<f64>() * *repeat as f64;
        let buffers: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = prods
            .iter()
            .map(|&(m, n, k, _)| {
                let fill =
                    |len: usize, seed: usize| (0..len).map(|i| ((i * 31 + seed) % 17) as f32 * 0.01 - 0.08).collect();
                (fill(m * k, 1), fill(k * n, 2), vec![0f32; m * n])
            })
            .collect();
        let mut buffers = buffers;
        let mut times = vec![Vec::new(); engines.len()];
        for round in 0..=ROUNDS {
            for (ei, engine) in engines.iter().enumerate() {
                let t0 = Instant::now();
                for _ in 0..*repeat {
                    for (&(m, n, k, weight_out_in), (a, b, c)) in prods.iter().zip(buffers.iter_mut()) {
                        let rs = if weight_out_in { (1, k) } else { (n, 1) };
                        let done = engine
                            .is_some_and(|l| l.sgemm((m, n, k), c, false, Mat::new(a, (k, 1)), Mat::new(b, rs), 1.0));
                        if !done {
                            mm_gemm((m, n, k), c, false, Mat::new(a, (k, 1)), Mat::new(b, rs), 1.0, threads);
                        }
                    }
                }
                // The first round warms caches and thread pools.
                if round > 0 {
                    times[ei].push(t0.elapsed().as_secs_f64());
                }
            }
        }
        for (ei, t) in times.iter().enumerate() {
            rates[ei][ci] = flops / median(t) / 1e9;
        }
    }
    engines
        .iter()
        .zip(rates)
        .map(|(e, [few, many])| Figure {
            engine: e.map_or_else(|| "gemm (built in)".to_string(), |b| b.label.clone()),
            path: e.map(|b| b.path.clone()),
            few_rows_gflops: (few * 10.0).round() / 10.0,
            many_rows_gflops: (many * 10.0).round() / 10.0,
        })
        .collect()
}

/// Panics unless every index the strides reach lies inside the slices (the safety
/// condition of the unsafe products); handles empty products (zeroing `dst` unless
/// accumulating) and returns whether a product remains to be computed.
pub(super) fn operands_fit(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
) -> bool {
    let (Mat { data: lhs, strides: (lrs, lcs) }, Mat { data: rhs, strides: (rrs, rcs) }) = (lhs, rhs);
    assert!(dst.len() >= m * n);
    assert!(m == 0 || k == 0 || lhs.len() > (m - 1) * lrs + (k - 1) * lcs);
    assert!(n == 0 || k == 0 || rhs.len() > (k - 1) * rrs + (n - 1) * rcs);
    if m == 0 || n == 0 || k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return false;
    }
    true
}

/// `common::mm` on the `gemm` crate; a big product uses `threads` threads of the pool (1:
/// none).
pub(super) fn mm_gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: Mat,
    rhs: Mat,
    scale: f32,
    threads: usize,
) {
    if !operands_fit((m, n, k), dst, accumulate, lhs, rhs) {
        return;
    }
    let (Mat { data: lhs, strides: (lrs, lcs) }, Mat { data: rhs, strides: (rrs, rcs) }) = (lhs, rhs);
    let par = if threads > 1 && m * n * k >= 64 * 64 * 64 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above keep every index the strides reach inside the slices, and
    // `dst` does not alias `lhs` or `rhs` (it is borrowed mutably).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lcs as isize,
            lrs as isize,
            rhs.as_ptr(),
            rcs as isize,
            rrs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            par,
        );
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shape_gets_its_own_selection_once() {
        // Two models of different shapes in one process: each gets a selection measured
        // on its own shapes (the first no longer decides for the second), made once.
        let dir = tempfile::tempdir().unwrap();
        let a = Dims { hidden: 24, intermediate: 40, kv: 8 };
        let b = Dims { hidden: 32, intermediate: 48, kv: 16 };
        let sa = select(dir.path(), a);
        let sb = select(dir.path(), b);
        assert_eq!((sa.dims, sb.dims), (a, b));
        assert!(std::ptr::eq(select(dir.path(), a), sa), "a shape is selected once per process");
        assert!(latest().is_some());
        let p = sa.products();
        for rows in [1, FEW_ROWS, FEW_ROWS + 1] {
            let engine = if rows <= FEW_ROWS { sa.few_rows } else { sa.many_rows };
            assert_eq!(p.for_rows(rows).map(|l| l.path.clone()), engine_path(engine));
        }
        assert!(Products::gemm(1).for_rows(1).is_none() && Products::gemm(1).for_rows(1000).is_none());
    }

    fn engine_path(e: Engine) -> Option<String> {
        match e {
            Engine::Gemm => None,
            Engine::Blas(i) => libraries().get(i).map(|l| l.path.clone()),
        }
    }

    fn fig(path: Option<&str>, few: f64, many: f64) -> Figure {
        Figure {
            engine: path.unwrap_or("gemm").into(),
            path: path.map(String::from),
            few_rows_gflops: few,
            many_rows_gflops: many,
        }
    }

    #[test]
    fn the_faster_engine_wins_each_class_and_gemm_wins_ties() {
        let s = from_figures(vec![fig(None, 20.0, 100.0)], "t".into(), Dims::DEFAULT);
        assert_eq!((s.few_rows, s.many_rows), (Engine::Gemm, Engine::Gemm));
        // A library that is not loaded in this process is never chosen.
        let s = from_figures(
            vec![fig(None, 20.0, 100.0), fig(Some("/no/such/lib.so"), 90.0, 900.0)],
            "t".into(),
            Dims::DEFAULT,
        );
        assert_eq!((s.few_rows, s.many_rows), (Engine::Gemm, Engine::Gemm));
        if let Some(lib) = libraries().first() {
            let p = Some(lib.path.as_str());
            let s = from_figures(vec![fig(None, 20.0, 100.0), fig(p, 10.0, 150.0)], "t".into(), Dims::DEFAULT);
            assert_eq!((s.few_rows, s.many_rows), (Engine::Gemm, Engine::Blas(0)));
            let s = from_figures(vec![fig(None, 20.0, 100.0), fig(p, 20.0, 100.0)], "t".into(), Dims::DEFAULT);
            assert_eq!((s.few_rows, s.many_rows), (Engine::Gemm, Engine::Gemm));
        }
    }

    #[test]
    fn calibration_measures_every_engine_on_both_classes() {
        let dims = Dims { hidden: 64, intermediate: 128, kv: 32 };
        let figures = calibrate(dims, libraries());
        assert_eq!(figures.len(), 1 + libraries().len());
        assert_eq!(figures[0].path, None);
        for f in &figures {
            assert!(f.few_rows_gflops > 0.0 && f.many_rows_gflops > 0.0, "{f:?}");
        }
        assert!(products(dims, 384, true).contains(&(384, 64, 128, false)));
        assert_eq!(products(dims, 16, false).len(), 4);
    }

    #[test]
    fn the_cache_key_names_cpu_threads_shapes_and_libraries() {
        let k = cache_key(Dims::DEFAULT, &[]);
        assert!(k.contains("dims=576x1536x192") && k.contains("threads=") && k.contains("cpu="), "{k}");
        assert_ne!(k, cache_key(Dims { hidden: 64, intermediate: 128, kv: 32 }, &[]));
    }
}
