//! Multitune engine: load a Llama-family model on candle, attach LoRA adapters,
//! fine-tune them on task data, evaluate, compare multi-task strategies, and export the
//! adapters in PEFT layout. `ARCHITECTURE.md` at the repository root maps the modules.
//!
//! Dependencies point down the layers (`ARCHITECTURE.md` states them; a test checks
//! them): [`strategy`] / [`mod@bench`] → [`adapter`] → [`train`] / [`eval`] → [`data`] →
//! [`model`] → [`ops`] → [`kernels`], with [`persist`], [`memory`], [`rng`] and
//! [`error`] at the bottom. The crate knows nothing of the command line, HTTP or the
//! browser: training reports progress through [`train::TrainEvent`] callbacks that the
//! CLI (the `multitune-cli` crate) and the server turn into progress bars or streamed
//! events.
#![warn(missing_docs)]

pub mod adapter;
pub mod bench;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
pub mod data;
pub mod error;
pub mod eval;
pub mod kernels;
pub mod memory;
pub mod model;
pub mod ops;
pub mod persist;
pub mod rng;
pub mod strategy;
pub mod train;

pub use error::{Error, Result};
pub use model::lora::{LoraAdapter, LoraConfig, Target};
pub use model::{load_model, Llama, LoadedModel, ModelSource, TextTokenizer};

/// Process-wide CPU settings, as environment variables the thread pools read when they
/// start: call once, first thing in `main`, before any thread exists (both binaries do).
/// The thread count it fixes is read once per model after that: a matrix-product
/// selection records it and the model passes it down to the kernels (`Products`).
///
/// candle's pool for elementwise ops spins 25 000 times before a worker parks; with as
/// many busy threads as cores, that spinning takes time from the matrix-multiply
/// threads. 1 000 measured faster here (`multitune bench`). OpenBLAS (when a system BLAS
/// is used) likewise keeps its idle threads yielding for 2^28 cycles; with a timeout of
/// 2^4 they sleep at once, which measured faster on the tiny model idle (+10–20%) and
/// kept training at 82–84% of that speed under the server's load test instead of 68–74%
/// (2026-12-01, 2 cores, Debian OpenBLAS 0.3.21). Explicit settings of
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` or `OPENBLAS_THREAD_TIMEOUT` are left alone.
///
/// candle asks how many threads to use on every matrix product, and unless
/// `RAYON_NUM_THREADS` is set it finds out by reading and parsing `/proc/cpuinfo` (the
/// physical core count) each time: 15% of the wall time of evaluating the default model
/// here (`perf`, 2026-12-01). The count is worked out once and set as
/// `RAYON_NUM_THREADS` (the same number candle would pick; an explicit setting is left
/// alone).
pub fn tune_runtime() {
    let threads = candle_core::utils::get_num_threads().to_string();
    for (name, value) in [
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000"),
        ("OPENBLAS_THREAD_TIMEOUT", "4"),
        ("RAYON_NUM_THREADS", threads.as_str()),
    ] {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}
