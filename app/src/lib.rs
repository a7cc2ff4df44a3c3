//! Multitune engine: load a Llama-family model on candle, attach LoRA adapters,
//! fine-tune them on task data, evaluate, compare multi-task strategies, and export the
//! adapters in PEFT layout. `ARCHITECTURE.md` at the repository root maps the modules.
//!
//! Dependencies point down: [`cli`] → [`strategy`] → [`train`] / [`eval`] →
//! [`adapter`] / [`model`] → [`ops`] → [`kernels`], with [`data`] beside them and
//! [`persist`], [`rng`], [`error`] at the bottom. The crate never knows about HTTP or
//! the browser: training reports progress through [`train::TrainEvent`] callbacks that
//! the CLI and the server turn into progress bars or streamed events.
#![warn(missing_docs)]

pub mod adapter;
pub mod bench;
pub mod cli;
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

pub use adapter::{LoraAdapter, LoraConfig, Target};
pub use error::{Error, Result};
pub use model::{load_model, Llama, LoadedModel, ModelSource, TextTokenizer};

/// Process-wide CPU settings; call once at start-up, before any tensor work.
///
/// candle's pool for elementwise ops spins 25 000 times before a worker parks; with as
/// many busy threads as cores, that spinning takes time from the matrix-multiply
/// threads. 1 000 measured faster here (`multitune bench`). An explicit
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is left alone.
pub fn tune_runtime() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000");
    }
}
