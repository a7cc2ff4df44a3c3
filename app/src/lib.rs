//! Multitune engine: load a Llama-family model on candle, attach LoRA adapters,
//! fine-tune them on task data, evaluate, and export them in PEFT layout.
//!
//! The crate never knows about HTTP or the browser: training reports progress through
//! [`train::TrainEvent`] callbacks that the CLI (and later the server) turn into
//! progress bars or streamed events.
#![warn(missing_docs)]

pub mod bench;
pub mod blas;
pub mod charts;
pub mod checkpoint;
pub mod config;
#[cfg(all(test, feature = "cuda"))]
mod cuda_tests;
pub mod data;
pub mod dataset;
pub mod demo;
pub mod error;
pub mod eval;
pub mod fetch;
pub mod fused;
pub mod generate;
pub mod heads;
pub mod loader;
pub mod lora;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod optim;
pub mod pack;
pub mod peft;
pub mod rng;
pub mod strategy;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
pub use loader::{load_model, LoadedModel, ModelSource};
pub use lora::{LoraAdapter, LoraConfig, Target};
pub use model::Llama;
pub use tokenizer::TextTokenizer;

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
