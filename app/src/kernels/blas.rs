//! An optional system BLAS for the f32 matrix products of [`crate::kernels`], loaded at run
//! time: nothing is linked at build time, and without a BLAS the `gemm` crate (candle's
//! own matmul) does the work.
//!
//! `multitune bench` measured on the 2-core development machine, same run, 2 threads:
//! candle's `gemm` (AVX-512 kernels) about 117 GFLOP/s at its best shape, Debian's
//! OpenBLAS 0.3.21 (via numpy's copy) about 155, MKL about 185. So a BLAS, when one is
//! installed, is used: `MULTITUNE_BLAS` names the library file, or `off` to keep `gemm`;
//! otherwise MKL (`libmkl_rt`) and then OpenBLAS (`libopenblas.so.0`, Debian's
//! `libopenblas0-pthread`) are looked up by the dynamic loader's usual search.

use std::ffi::c_int;
use std::sync::OnceLock;

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

/// A loaded BLAS.
pub struct Blas {
    _lib: libloading::Library,
    sgemm: Sgemm,
    /// The file it came from.
    pub name: String,
}

static BLAS: OnceLock<Option<Blas>> = OnceLock::new();

/// The BLAS in use, if any (loaded on first call).
pub fn get() -> Option<&'static Blas> {
    BLAS.get_or_init(load).as_ref()
}

/// A description for logs and the bench: the library, or `gemm (built in)`.
pub fn describe() -> String {
    get().map_or_else(|| "gemm crate (built in)".to_string(), |b| b.name.clone())
}

fn load() -> Option<Blas> {
    let wanted = std::env::var("MULTITUNE_BLAS").ok();
    let candidates: Vec<String> = match wanted.as_deref() {
        Some("off" | "none" | "gemm") => return None,
        Some(path) if !path.is_empty() && path != "auto" => vec![path.to_string()],
        _ => ["libmkl_rt.so.2", "libmkl_rt.so", "libopenblas.so.0", "libopenblas.so"].map(String::from).to_vec(),
    };
    let threads = c_int::try_from(candle_core::utils::get_num_threads()).unwrap_or(1);
    for name in candidates {
        // SAFETY: loading a BLAS runs its initialisers, which is what such libraries are for.
        let Ok(lib) = (unsafe { libloading::Library::new(&name) }) else { continue };
        // SAFETY: `cblas_sgemm` has this signature in every CBLAS.
        let Ok(sgemm) = (unsafe { lib.get::<Sgemm>(b"cblas_sgemm\0") }) else { continue };
        let sgemm = *sgemm;
        // Match the thread count to candle's, as the bench runs both on the same cores.
        // SAFETY: these setters take one int, as documented by OpenBLAS and MKL.
        unsafe {
            if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                f(threads);
            } else if let Ok(f) = lib.get::<unsafe extern "C" fn(c_int)>(b"MKL_Set_Num_Threads\0") {
                f(threads);
            }
        }
        return Some(Blas { _lib: lib, sgemm, name });
    }
    if let Some(w) = wanted.filter(|w| !w.is_empty() && w != "auto") {
        eprintln!("MULTITUNE_BLAS={w}: could not load cblas_sgemm from it; using the built-in gemm");
    }
    None
}

impl Blas {
    /// `dst (m×n, row-major) = [dst +] scale · lhs · rhs` with `lhs[i, p]` at
    /// `i·lrs + p·lcs` and `rhs[p, j]` at `p·rrs + j·rcs`; one stride of each operand
    /// must be 1. Returns `false` (doing nothing) when the shapes do not fit CBLAS.
    #[allow(clippy::too_many_arguments)] // CBLAS sgemm's operand list: dims, output, operands with strides, scale
    pub fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        dst: &mut [f32],
        accumulate: bool,
        lhs: &[f32],
        (lrs, lcs): (usize, usize),
        rhs: &[f32],
        (rrs, rcs): (usize, usize),
        scale: f32,
    ) -> bool {
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
        // SAFETY: the caller (`fused::mm`) has checked that every index the strides reach
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
