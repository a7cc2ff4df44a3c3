//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A file or path could not be read or written, with the path that failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The path involved.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
    /// JSON could not be parsed or written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The tokenizer could not be built or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// A model configuration uses something this engine cannot run.
    #[error("unsupported model config: field `{field}`: {reason}")]
    UnsupportedConfig {
        /// The offending configuration field.
        field: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A model file lacks a tensor or has one of the wrong shape.
    #[error("model weights: {0}")]
    Weights(String),
    /// A dataset line is malformed.
    #[error("{}: line {line}: {reason}", path.display())]
    Data {
        /// The dataset file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A dataset file was rejected; every problem found is listed.
    #[error("{0}")]
    Dataset(crate::data::Rejection),
    /// An adapter or checkpoint does not match the model or is malformed.
    #[error("adapter: {0}")]
    Adapter(String),
    /// Fetching the default model failed.
    #[error("fetch model: {0}")]
    Fetch(String),
    /// A parameter is out of range or inconsistent.
    #[error("invalid parameter: {0}")]
    Invalid(String),
    /// The run was cancelled by its caller.
    #[error("cancelled")]
    Cancelled,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an io error with the path it concerns.
    pub fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::File { path: path.into(), source }
    }

    /// Whether this is the device running out of memory (CUDA's allocator or cuBLAS's):
    /// the trainer and the evaluation then go on in smaller pieces.
    pub fn is_out_of_memory(&self) -> bool {
        let text = format!("{self} {self:?}");
        text.contains("OUT_OF_MEMORY") || text.contains("out of memory") || text.contains("CUBLAS_STATUS_ALLOC_FAILED")
    }
}
